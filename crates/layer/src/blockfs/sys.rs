//! The system calls the blocks filesystem makes on tree paths and descriptors, and the conversions
//! between the kernel's representations and FUSE's (errnos, file types, times).
//!
//! Tree inodes are reached through `/proc/self/fd/N` paths of `O_PATH` descriptors, so most calls take
//! a path and follow its final link; the ones that act on the link itself say so.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileType, TimeOrNow};

use crate::Error;

/// The errno of an I/O error (EIO when it carries none).
pub(super) fn errno_of(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The errno of a layer error: its I/O cause's, EIO for anything else.
pub(super) fn layer_errno(e: &Error) -> Errno {
    match e {
        Error::Io { source, .. } => errno_of(source),
        _ => Errno::EIO,
    }
}

/// `p` as a C string (EINVAL if it holds a NUL byte).
pub(super) fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The error of a libc call that returned `rc`.
pub(super) fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An `O_PATH | O_NOFOLLOW` descriptor of `path`: holds the inode without opening its contents.
pub(super) fn open_path(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The `/proc/self/fd/N` path of an open descriptor.
pub(super) fn proc_fd_path(fd: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `(st_ino, nlink, is_dir)` of `path` if it exists (not following a final symlink).
pub(super) fn existing(path: &Path) -> io::Result<Option<(u64, u64, bool)>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some((m.ino(), m.nlink(), m.is_dir()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The FUSE file type of `meta`.
pub(super) fn file_type(meta: &fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

/// A stat time (`sec`, `nsec`) as a `SystemTime`.
pub(super) fn time_of(sec: i64, nsec: i64) -> SystemTime {
    let nanos = Duration::new(0, u32::try_from(nsec.clamp(0, 999_999_999)).unwrap_or(0));
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec.unsigned_abs()) + nanos
    } else {
        (UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs())) + nanos
    }
}

/// A FUSE time change as utimensat(2) takes it (`None`: leave the time alone).
fn timespec_of(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-i64::try_from(d.as_secs()).unwrap_or(i64::MAX), 0i64);
                if d.subsec_nanos() > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - i64::from(d.subsec_nanos());
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// Sets the access and modification times of `path` (following a final link).
pub(super) fn set_times(
    path: &Path,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
) -> io::Result<()> {
    let c = cpath(path)?;
    let times = [timespec_of(atime), timespec_of(mtime)];
    // SAFETY: valid C string and a two-element timespec array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) })
}

/// Sets the access and modification times of `path` itself (not following a final symlink) to those
/// of `meta`.
pub(super) fn copy_times(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let p = cpath(path)?;
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Changes the owner of the inode `fd` holds (an `O_PATH` descriptor, symlinks included); `None`
/// leaves that id alone.
pub(super) fn chown_fd(fd: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let empty = cpath(Path::new(""))?;
    let to_id = |v: Option<u32>| v.unwrap_or(u32::MAX);
    // SAFETY: valid descriptor and C string; AT_EMPTY_PATH acts on the descriptor itself.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            to_id(uid),
            to_id(gid),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// The target of the symlink `fd` holds (an `O_PATH` descriptor of the link itself).
pub(super) fn read_link_fd(fd: &File) -> io::Result<Vec<u8>> {
    let empty = cpath(Path::new(""))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid descriptor, C string and buffer; an empty path reads the link the descriptor is.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n.unsigned_abs());
    Ok(buf)
}

/// mknod(2) at `path`.
pub(super) fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mknod(p.as_ptr(), mode, rdev) })
}

/// renameat2(2) of `from` to `to` with the kernel's rename flags.
pub(super) fn rename(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cpath(from)?, cpath(to)?);
    // SAFETY: valid C strings.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

/// A new name `to` for the inode at `from` (a `/proc/self/fd/N` link, which is followed to the inode).
pub(super) fn hard_link(from: &Path, to: &Path) -> io::Result<()> {
    let (a, b) = (cpath(from)?, cpath(to)?);
    // SAFETY: valid C strings; AT_SYMLINK_FOLLOW resolves the /proc magic link to the inode.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
}

/// fallocate(2) on an open file.
pub(super) fn fallocate(file: &File, mode: i32, offset: u64, length: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: plain syscall on an open descriptor.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) })
}

/// lseek(2) on an open file (whose own offset this process never uses).
pub(super) fn lseek(file: &File, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on an open descriptor.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if pos < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pos)
    }
}
