//! The layer tree on disk: markers (trusted xattrs) and lazy materialisation of lower directories.

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::sys::{copy_times, cpath, mknod};

/// Xattr on a tree directory whose lower entries are not created yet; value: the lower directory,
/// relative to the lower root ([`LOWER_ROOT`] for the root).
pub(super) const LOWER_XATTR: &str = "trusted.thinnode.lower";
/// Xattr on a tree regular file backed by a base file; value: the base file, relative to the lower root.
pub(super) const BASE_XATTR: &str = "trusted.thinnode.base";
/// Prefix of the layer's own xattrs, hidden from and refused to users of the mount.
pub(super) const PRIVATE_XATTR_PREFIX: &[u8] = b"trusted.thinnode.";
/// Marker value naming the lower root.
pub(super) const LOWER_ROOT: &str = ".";
/// Name under which an entry is prepared during materialisation before it is renamed into place.
const MATERIALISE_TMP: &str = ".thinnode-materialise.tmp";

/// getxattr(2) (follows symlinks, so `/proc/self/fd/N` paths work); `None` when the attribute is absent.
pub(super) fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: valid C strings; a null buffer of size 0 asks for the value's size.
        let size = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is valid for `buf.len()` bytes.
        let got =
            unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => continue,
            Some(libc::ENODATA) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// setxattr(2) with `flags` (XATTR_CREATE / XATTR_REPLACE), following symlinks.
pub(super) fn set_xattr(path: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings and a buffer valid for `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// removexattr(2), following symlinks.
pub(super) fn remove_xattr(path: &Path, name: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings.
    if unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// listxattr(2) following symlinks: the raw NUL-separated name list.
pub(super) fn list_xattr(path: &Path) -> io::Result<Vec<u8>> {
    let p = cpath(path)?;
    loop {
        // SAFETY: a null buffer of size 0 asks for the list's size.
        let size = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is valid for `buf.len()` bytes.
        let got = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// Whether an xattr name belongs to the layer itself.
pub(super) fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(PRIVATE_XATTR_PREFIX)
}

/// Marks the tree directory `dir` as showing the lower directory `lower_rel` (not materialised yet).
pub(super) fn set_lower_marker(dir: &Path, lower_rel: &Path) -> io::Result<()> {
    set_xattr(
        dir,
        LOWER_XATTR.as_bytes(),
        lower_rel.as_os_str().as_bytes(),
        0,
    )
}

/// The lower directory a tree directory still has to show, if it is not materialised yet.
pub(super) fn lower_marker(dir: &Path) -> io::Result<Option<PathBuf>> {
    Ok(get_xattr(dir, LOWER_XATTR.as_bytes())?.map(|v| PathBuf::from(OsStr::from_bytes(&v))))
}

/// The base file a tree regular file is backed by, if any.
pub(super) fn base_marker(file: &Path) -> io::Result<Option<PathBuf>> {
    Ok(get_xattr(file, BASE_XATTR.as_bytes())?.map(|v| PathBuf::from(OsStr::from_bytes(&v))))
}

/// `rel/name` relative to the lower root.
pub(super) fn lower_child(rel: &Path, name: &OsStr) -> PathBuf {
    if rel == Path::new(LOWER_ROOT) || rel.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        rel.join(name)
    }
}

/// Copies the xattrs of `from` (not following symlinks) onto `to`, except the layer's own; attributes
/// the tree's filesystem refuses are skipped.
fn copy_xattrs(from: &Path, to: &Path) {
    let Ok(names) = xattr::list(from) else {
        return;
    };
    for name in names {
        let bytes = name.as_bytes();
        if is_private_xattr(bytes) {
            continue;
        }
        if let Ok(Some(value)) = xattr::get(from, &name) {
            if let Err(e) = xattr::set(to, &name, &value) {
                tracing::debug!(
                    "copy xattr {:?} to {}: {e}",
                    name.to_string_lossy(),
                    to.display()
                );
            }
        }
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Where materialisation finds the lower tree and the block maps.
pub(super) struct Materialiser<'a> {
    /// The lower root.
    pub(super) lower_root: &'a Path,
    /// The block-map directory (stale maps of reused inode numbers are removed).
    pub(super) maps_dir: &'a Path,
}

impl Materialiser<'_> {
    /// Creates the lower entries of tree directory `dir` (if it still carries a marker) and drops the
    /// marker. Entries already present in the tree win. Crash-safe: each entry is prepared under a
    /// temporary name and renamed into place, and the marker goes only after the directory is fsynced.
    /// The caller serialises materialisations.
    pub(super) fn materialise(&self, dir: &Path) -> io::Result<()> {
        let Some(rel) = lower_marker(dir)? else {
            return Ok(());
        };
        let lower_dir = self.lower_root.join(&rel);
        let tmp = dir.join(MATERIALISE_TMP);
        remove_any(&tmp)?;
        let entries = match fs::read_dir(&lower_dir) {
            Ok(e) => e.collect::<io::Result<Vec<_>>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry.file_name();
            let dest = dir.join(&name);
            match fs::symlink_metadata(&dest) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let src = entry.path();
            let meta = fs::symlink_metadata(&src)?;
            let child_rel = lower_child(&rel, &name);
            let kind = meta.file_type();
            if kind.is_dir() {
                fs::create_dir(&tmp)?;
                set_lower_marker(&tmp, &child_rel)?;
            } else if kind.is_file() {
                let file = File::create_new(&tmp)?;
                file.set_len(meta.len())?;
                set_xattr(
                    &tmp,
                    BASE_XATTR.as_bytes(),
                    child_rel.as_os_str().as_bytes(),
                    0,
                )?;
                // A map left by a deleted file whose inode number was reused must not apply here.
                let stale = self.maps_dir.join(file.metadata()?.ino().to_string());
                match fs::remove_file(&stale) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            } else if kind.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src)?, &tmp)?;
            } else if kind.is_fifo()
                || kind.is_socket()
                || kind.is_char_device()
                || kind.is_block_device()
            {
                mknod(&tmp, meta.mode(), meta.rdev())?;
            } else {
                continue;
            }
            if !kind.is_symlink() {
                copy_xattrs(&src, &tmp);
                fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            }
            std::os::unix::fs::lchown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
            if !kind.is_symlink() {
                // chown may clear set-id bits; restore the exact mode.
                fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            }
            copy_times(&tmp, &meta)?;
            fs::rename(&tmp, &dest)?;
        }
        File::open(dir)?.sync_all()?;
        match remove_xattr(dir, LOWER_XATTR.as_bytes()) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e),
            _ => {}
        }
        if let Ok(meta) = fs::metadata(&lower_dir) {
            let _ = copy_times(dir, &meta);
        }
        Ok(())
    }
}
