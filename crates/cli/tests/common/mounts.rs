//! Helpers of the mount tests: packing, a foreground `thinnode mount` child with its metrics, mount
//! state checks and whole-tree reads.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::ChildGuard;

use super::{ok_text as run_ok, BIN};

pub fn pack(src: &Path, store: &str, out: &Path) {
    run_ok(&[
        "pack",
        src.to_str().expect("utf8"),
        "--store",
        store,
        "--out",
        out.to_str().expect("utf8"),
        "--chunk-size",
        "128KiB",
    ]);
}

/// The value of metric `name` served at `addr` (Prometheus text).
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{body}"))
}

pub fn is_mounted(mnt: &Path) -> bool {
    let parent = mnt.parent().expect("parent");
    match (fs::metadata(mnt), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        (Err(e), _) => e.raw_os_error() == Some(libc::ENOTCONN),
        _ => false,
    }
}

/// Whether the mount at `mnt` lost its daemon (statfs always reaches the filesystem; stat may be cached).
pub fn is_stale(mnt: &Path) -> bool {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).expect("path");
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

pub fn force_unmount(mnt: &Path) {
    if let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()) {
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A foreground `thinnode mount` child; SIGTERMed (and the mount detached if still there) on drop.
pub struct Mounted {
    pub child: ChildGuard,
    pub mnt: PathBuf,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl Mounted {
    pub fn start(image: &Path, mnt: &Path, cache: &Path, extra: &[&str]) -> Mounted {
        fs::create_dir_all(mnt).expect("mkdir mnt");
        let metrics: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
            .parse()
            .expect("addr");
        let log = mnt.with_extension("log");
        let log_file = File::create(&log).expect("log");
        let child = Command::new(BIN)
            .arg("mount")
            .arg(image)
            .arg(mnt)
            .arg("--cache")
            .arg(cache)
            .arg("--metrics")
            .arg(metrics.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn mount");
        let mut m = Mounted {
            child: ChildGuard::new(child),
            mnt: mnt.to_path_buf(),
            metrics,
            log,
        };
        let start = Instant::now();
        // Foreground mode logs "ready in" once the mount answers (the mountpoint may still hold a stale
        // mount before that, which looks mounted to stat).
        while !(m.log_text().contains("ready in") && is_mounted(mnt) && !is_stale(mnt)) {
            let exited =
                unsafe { libc::waitpid(m.child.pid() as i32, std::ptr::null_mut(), libc::WNOHANG) };
            if exited != 0 || start.elapsed() > Duration::from_secs(20) {
                m.child.kill();
                panic!("mount did not come up: {}", m.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric(self.metrics, name)
    }

    /// SIGTERM; returns whether the daemon exited successfully and the mount is gone.
    pub fn stop(&mut self) -> bool {
        let status = self.child.terminate(Duration::from_secs(10));
        let ok = status.is_some_and(|s| s.success()) && !is_mounted(&self.mnt);
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
        ok
    }
}

/// Detaches whatever is mounted at the path when dropped (cleanup for tests that leave stale mounts).
pub struct DetachOnDrop(pub PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            force_unmount(&self.0);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn read_all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("readdir") {
            let p = e.expect("entry").path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
                out.insert(rel, fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

/// Bytes the files under `dir` occupy on disk (allocated blocks: cache files are sparse).
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

pub fn read_at_full(f: &File, buf: &mut [u8], off: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f
            .read_at(&mut buf[done..], off + done as u64)
            .expect("pread")
        {
            0 => break,
            n => done += n,
        }
    }
    done
}

/// The FUSE connection of the mount at `mnt` (its device minor: the name of its directory in
/// /sys/fs/fuse/connections), read from /proc/self/mountinfo, which never waits on the filesystem.
pub fn fuse_connection(mnt: &Path) -> Option<u32> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = mount::unescape_mount_field(fields.get(4)?);
        let (major, minor) = fields.get(2)?.split_once(':')?;
        (Path::new(&point) == mnt && major == "0")
            .then(|| minor.parse().ok())
            .flatten()
    })
}

/// Aborts FUSE connection `conn` (`/sys/fs/fuse/connections/N/abort`): every process waiting on that
/// mount, its daemon's own exit included, then gets ENOTCONN. The cleanup of a test whose mount hung;
/// only for a connection known to be the test's and still in use (numbers are reused once a connection
/// is gone), e.g. while its daemon or a process with a file of the mount open is not yet reaped.
pub fn abort_fuse_connection(conn: u32) {
    let abort = format!("/sys/fs/fuse/connections/{conn}/abort");
    match fs::write(&abort, "1") {
        Ok(()) => eprintln!("aborted FUSE connection {conn}"),
        Err(e) => eprintln!("cannot abort FUSE connection {conn}: {e}"),
    }
}

/// `statfs` of `mnt`, run in a child process so that a hung FUSE mount cannot hang the test: `None`
/// when it did not answer within `deadline` (the child is killed), else `Ok` or the error it printed.
pub fn statfs_within(mnt: &Path, deadline: Duration) -> Option<Result<(), String>> {
    let mut child = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stat");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut child = ChildGuard::new(child);
    if !exits_within(&mut child, deadline) {
        return None;
    }
    let status = child.try_wait()?;
    if status.success() {
        return Some(Ok(()));
    }
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    Some(Err(err))
}

/// Waits up to `deadline` for `child` to exit (and reaps it); whether it did.
pub fn exits_within(child: &mut ChildGuard, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if child.try_wait().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
