//! Shared helpers for thinnode's tests: start real servers as child processes (stopped by PID), pick free
//! ports, and decide whether tests that need root and /dev/fuse may run here.
//!
//! Only tests depend on this crate.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether tests that need root, /dev/fuse and kernel overlayfs can run on this machine.
///
/// Returns `false` and prints the reason when they cannot. Under `CI=true` a skip is a failure, so this
/// panics instead of returning `false`.
pub fn fuse_available(test: &str) -> bool {
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing")
    } else {
        None
    };
    match reason {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: cannot run ({why}) and CI=true forbids skipping");
            }
            eprintln!("SKIP {test}: {why}");
            false
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released, so a child can take it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Waits until something accepts TCP connections on `addr`, or panics after `timeout`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {addr} after {timeout:?}");
}

/// A child process owned by a test: killed (by PID) and reaped when dropped.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Wraps a spawned child.
    pub fn new(child: Child) -> Self {
        ChildGuard { child: Some(child) }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends `signal` to the child (e.g. `libc::SIGKILL`).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Kills the child with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the child to exit; returns its exit status if it did.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 0-db compatible server started from a binary (ours: `zdb` or `thinnode zdb`) on a free loopback port
/// with its own data and index directories.
pub struct ZdbProcess {
    /// The running server.
    pub child: ChildGuard,
    /// The TCP port it listens on.
    pub port: u16,
    /// Directory holding `data/` and `index/`.
    pub dir: PathBuf,
    program: Vec<String>,
    extra: Vec<String>,
}

impl ZdbProcess {
    /// Starts `program` (the binary followed by any leading arguments, such as `["thinnode", "zdb"]`)
    /// with `--data DIR/data --index DIR/index --listen 127.0.0.1 --port P` plus `extra`, and waits until it
    /// accepts connections.
    pub fn start(program: &[&str], dir: &Path, extra: &[&str]) -> Self {
        let mut z = ZdbProcess {
            child: ChildGuard { child: None },
            port: free_port(),
            dir: dir.to_path_buf(),
            program: program.iter().map(|s| s.to_string()).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        z.restart();
        z
    }

    /// (Re)starts the server on the same port and directories (after `kill`).
    pub fn restart(&mut self) {
        self.child.kill();
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--index")
            .arg(self.dir.join("index"))
            .args(["--listen", "127.0.0.1", "--port", &self.port.to_string()])
            .args(&self.extra)
            .stdin(Stdio::null());
        self.child = ChildGuard::new(cmd.spawn().expect("spawn zdb server"));
        wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(20),
        );
    }

    /// `zdb://127.0.0.1:PORT/namespace` for this server.
    pub fn url(&self, namespace: &str) -> String {
        format!("zdb://127.0.0.1:{}/{}", self.port, namespace)
    }
}
