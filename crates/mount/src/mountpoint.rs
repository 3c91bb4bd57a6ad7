//! The state of a mountpoint and leaving it: whether something (or a dead FUSE mount) is mounted there,
//! detaching a dead mount, unmounting a thinnode mount through its daemon, the kernel readahead of a
//! mount. Used by every kind of thinnode mount (image, layers).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{io_ctx, MountError};
use crate::records::{read_record, record_path};

/// The kernel readahead set on every mount, in KiB (makes 1 MiB read requests).
pub(crate) const READ_AHEAD_KB: u32 = 1024;

/// An absolute form of `path` that works even when `path` itself is a dead mount (only the parent is
/// resolved).
pub fn absolute_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let abs = std::path::absolute(path).map_err(io_ctx(format!("resolve {}", path.display())))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = fs::canonicalize(parent)
                .map_err(io_ctx(format!("resolve {}", parent.display())))?;
            Ok(parent.join(name))
        }
        _ => Ok(abs),
    }
}

/// Decodes the octal escapes (`\040` etc.) the kernel uses in /proc mount files.
pub fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is listed as a mount point in /proc/self/mountinfo. Unlike [`is_mountpoint`] it never
/// touches the filesystem mounted there, so a hung FUSE mount (its daemon stopped) cannot block it.
pub(crate) fn listed_as_mount(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    text.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&unescape_mount_field(mp)) == path)
    })
}

/// Whether `path` is a dead FUSE mount ("Transport endpoint is not connected"). Uses `statfs`, which
/// always reaches the filesystem (a `stat` may be answered from attributes the kernel cached).
pub fn is_stale_mount(path: &Path) -> bool {
    matches!(
        nix::sys::statfs::statfs(path),
        Err(nix::errno::Errno::ENOTCONN)
    )
}

/// Whether something is mounted at `path` (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    if is_stale_mount(path) {
        return true;
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Detaches a dead mount left at `path` by a killed daemon. Returns whether one was cleaned.
pub fn clean_stale_mount(path: &Path) -> Result<bool, MountError> {
    if !is_stale_mount(path) {
        return Ok(false);
    }
    tracing::warn!(
        "{}: stale mount of a dead daemon; detaching it",
        path.display()
    );
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| io_ctx(format!("detach {}", path.display()))(io::Error::from(e)))?;
    Ok(true)
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; a zombie still counts, so also look at /proc state.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Unmounts the thinnode mount at `mountpoint`: asks its daemon to exit (SIGTERM) and waits for it, or
/// unmounts directly; a stale mount is detached. Errors when nothing is mounted there.
pub fn unmount_path(mountpoint: &Path, timeout: Duration) -> Result<(), MountError> {
    let mnt = absolute_mountpoint(mountpoint)?;
    let below = read_record(&mnt).and_then(|r| r.stacked_on);
    let result = unmount_one(&mnt, timeout);
    if let Some(below) = below {
        // The daemon unmounts it on a clean exit; after a kill it is left behind, dead or alive.
        if is_mountpoint(&below) {
            if let Err(e) = unmount_one(&below, timeout) {
                tracing::warn!("{}: {e}", below.display());
            }
        }
    }
    result
}

fn unmount_one(mnt: &Path, timeout: Duration) -> Result<(), MountError> {
    let mnt = mnt.to_path_buf();
    if clean_stale_mount(&mnt)? {
        let _ = fs::remove_file(record_path(&mnt));
        return Ok(());
    }
    if let Some(rec) = read_record(&mnt) {
        if pid_alive(rec.pid) {
            if let Ok(pid) = i32::try_from(rec.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let start = Instant::now();
            while start.elapsed() < timeout && pid_alive(rec.pid) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_file(record_path(&mnt));
        if !is_mountpoint(&mnt) {
            return Ok(());
        }
    }
    if !is_mountpoint(&mnt) {
        return Err(MountError::Mountpoint {
            path: mnt,
            reason: "nothing is mounted there".into(),
        });
    }
    match nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!("{} is busy; detaching it lazily", mnt.display());
            nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| io_ctx(format!("detach {}", mnt.display()))(io::Error::from(e)))
        }
        Err(e) => Err(io_ctx(format!("unmount {}", mnt.display()))(
            io::Error::from(e),
        )),
    }
}

/// Sets the kernel readahead of the FUSE mount at `mountpoint` (its backing-device-info in sysfs).
pub(crate) fn set_read_ahead(mountpoint: &Path, kb: u32) -> Result<(), MountError> {
    let meta =
        fs::metadata(mountpoint).map_err(io_ctx(format!("stat {}", mountpoint.display())))?;
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    fs::write(&path, kb.to_string()).map_err(io_ctx(format!("write {path}")))
}
