//! What the soak starts and must stop: a log with timestamps, the record of owned processes, mounts and
//! loop devices (so a separate `thinnode-soak cleanup` can undo a run that was killed), and the zdb
//! servers.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The soak's log: each line stamped with the seconds since the soak started, printed and kept in
/// `WORK/soak.log`.
pub struct Log {
    start: Instant,
    file: Mutex<File>,
}

impl Log {
    /// A log appending to `path`, its clock starting now.
    pub fn create(path: &Path) -> anyhow::Result<Log> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(Log {
            start: Instant::now(),
            file: Mutex::new(file),
        })
    }

    /// Time since the soak started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The instant the soak started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Logs one line.
    pub fn line(&self, msg: impl Display) {
        let line = format!("[{:8.2}s] {msg}", self.elapsed().as_secs_f64());
        println!("{line}");
        let _ = writeln!(self.file.lock(), "{line}");
    }
}

/// A process identified by its PID and its start time (so a reused PID is never signalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl Owned {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<Owned> {
        start_time(pid).map(|start| Owned { pid, start })
    }

    /// Whether this very process still exists.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// Sends `signal` if this very process still exists.
    pub fn signal(&self, signal: i32) {
        if self.alive() {
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }
}

/// Start time of process `pid` (`/proc/PID/stat` field 22), if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Everything a soak run owns outside its work directory's files, kept in `WORK/owned.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Registry {
    /// The run's work directory: nothing outside it is ever unmounted or detached.
    pub work: PathBuf,
    /// The thinnode binary (for `node rm`).
    pub thinnode: PathBuf,
    /// The node state directory (inside `work`).
    pub state_dir: PathBuf,
    /// Processes started directly (servers, the base chain's litecoind).
    pub processes: Vec<Owned>,
    /// Filesystems mounted by the soak itself (not the nodes'), in mount order.
    pub mounts: Vec<PathBuf>,
    /// Loop devices attached.
    pub loops: Vec<String>,
}

/// The registry of a run, saved on every change.
pub struct Owner {
    path: PathBuf,
    registry: Mutex<Registry>,
}

impl Owner {
    /// A new registry in `work` (an absolute path at least two directories deep).
    pub fn create(work: &Path, thinnode: &Path, state_dir: &Path) -> anyhow::Result<Owner> {
        if !deep_enough(work) {
            bail!(
                "work directory {} must be an absolute path at least two levels deep",
                work.display()
            );
        }
        let owner = Owner {
            path: work.join("owned.json"),
            registry: Mutex::new(Registry {
                work: work.to_path_buf(),
                thinnode: thinnode.to_path_buf(),
                state_dir: state_dir.to_path_buf(),
                ..Registry::default()
            }),
        };
        owner.save()?;
        Ok(owner)
    }

    fn save(&self) -> anyhow::Result<()> {
        save_registry(&self.path, &self.registry.lock())
    }

    /// Changes the registry and saves it.
    pub fn update(&self, change: impl FnOnce(&mut Registry)) -> anyhow::Result<()> {
        change(&mut self.registry.lock());
        self.save()
    }

    /// Records a process.
    pub fn add_process(&self, pid: u32) -> anyhow::Result<()> {
        match Owned::of(pid) {
            Some(p) => self.update(|r| r.processes.push(p)),
            None => Ok(()),
        }
    }

    /// Undoes everything recorded (see [`cleanup`]).
    pub fn cleanup(&self) {
        let mut registry = self.registry.lock();
        cleanup_registry(&registry);
        registry.processes.clear();
        registry.mounts.clear();
        registry.loops.clear();
        let _ = save_registry(&self.path, &registry);
    }
}

fn save_registry(path: &Path, registry: &Registry) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(registry)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {}", tmp.display()))?;
    Ok(())
}

/// An absolute path with at least two normal components (`/var/tmp/x`, not `/` or `/var`).
fn deep_enough(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count()
            >= 2
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Whether `path` lies strictly inside `work` (which must itself be [`deep_enough`]).
fn inside(path: &Path, work: &Path) -> bool {
    deep_enough(work) && deep_enough(path) && path != work && path.starts_with(work)
}

/// Undoes what the run in `work` left: removes its nodes (supervisors, commands, mount daemons and
/// their mounts), stops its processes (by PID and start time), unmounts what it mounted and detaches its
/// loop devices. Nothing outside `work` is unmounted or detached. Safe to run twice, and on a run still
/// going (it then ends it).
pub fn cleanup(work: &Path) -> anyhow::Result<()> {
    let path = work.join("owned.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut registry: Registry = serde_json::from_str(&text)?;
    if registry.work != work {
        bail!(
            "{} belongs to work directory {}, not {}",
            path.display(),
            registry.work.display(),
            work.display()
        );
    }
    cleanup_registry(&registry);
    registry.processes.clear();
    registry.mounts.clear();
    registry.loops.clear();
    save_registry(&path, &registry)
}

fn cleanup_registry(r: &Registry) {
    let work = &r.work;
    let remove_nodes = || {
        if inside(&r.state_dir, work) && r.state_dir.is_dir() && r.thinnode.is_file() {
            for name in node_names(&r.state_dir) {
                let _ = output_within(
                    Command::new(&r.thinnode)
                        .args(["node", "--state-dir"])
                        .arg(&r.state_dir)
                        .args(["rm", "--force", &name]),
                    Duration::from_secs(150),
                );
            }
        }
    };
    remove_nodes();
    // A node whose mount daemon hangs (or died without its FUSE connection being closed) keeps its
    // processes blocked in the kernel: abort those connections, then remove the nodes again.
    if inside(&r.state_dir, work) && abort_fuse_below(&r.state_dir, &work.join("fusectl")) > 0 {
        remove_nodes();
    }
    for p in &r.processes {
        // SIGKILL ends a stopped process too; SIGCONT first all the same, so it is reaped at once.
        p.signal(libc::SIGCONT);
        p.signal(libc::SIGKILL);
    }
    for p in &r.processes {
        let t = Instant::now();
        while p.alive() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The nodes' own mounts are gone with `node rm`; a FUSE or overlay mount still below the state
    // directory is a leftover of ours.
    if inside(&r.state_dir, work) {
        for m in mounts_below(&r.state_dir) {
            if m.is_fuse_or_overlay() {
                unmount(&m.point);
            }
        }
    }
    for m in r.mounts.iter().rev() {
        if inside(m, work) {
            unmount(m);
        }
    }
    for dev in &r.loops {
        let backing = Command::new("losetup")
            .args(["--list", "--noheadings", "--output", "BACK-FILE", dev])
            .output()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default();
        if inside(&backing, work) {
            let _ = Command::new("losetup")
                .args(["-d", dev])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Aborts the FUSE connections of the FUSE mounts strictly below `dir` through the FUSE control
/// filesystem, mounted for the moment at `ctl` (inside the run's work directory): requests waiting on
/// a dead or hung daemon then fail at once. Returns the number of connections aborted.
fn abort_fuse_below(dir: &Path, ctl: &Path) -> usize {
    let fuse: Vec<MountEntry> = mounts_below(dir)
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse"))
        .collect();
    if fuse.is_empty() || std::fs::create_dir_all(ctl).is_err() {
        return 0;
    }
    let mounted = Command::new("mount")
        .args(["-t", "fusectl", "fusectl"])
        .arg(ctl)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return 0;
    }
    let mut aborted = 0;
    for m in &fuse {
        if let Some(minor) = m.device.split(':').nth(1) {
            if std::fs::write(ctl.join(minor).join("abort"), "1").is_ok() {
                aborted += 1;
            }
        }
    }
    unmount(ctl);
    aborted
}

/// Names of the nodes recorded in a state directory.
fn node_names(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("nodes"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount point.
    pub point: PathBuf,
    /// The filesystem type (`fuse`, `overlay`, `ext4`, …).
    pub fstype: String,
    /// The device, `major:minor` (the minor is a FUSE connection's number).
    pub device: String,
}

impl MountEntry {
    /// FUSE (any subtype) or overlayfs: the kinds of mounts a node has.
    pub fn is_fuse_or_overlay(&self) -> bool {
        self.fstype.starts_with("fuse") || self.fstype == "overlay"
    }
}

/// Mounts strictly below `dir` (which must be [`deep_enough`]), deepest first.
pub fn mounts_below(dir: &Path) -> Vec<MountEntry> {
    if !deep_enough(dir) {
        return Vec::new();
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<MountEntry> = info
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let device = fields.nth(2)?.to_string();
            let point = PathBuf::from(fields.nth(1)?.replace("\\040", " "));
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?.to_string();
            Some(MountEntry {
                point,
                fstype,
                device,
            })
        })
        .filter(|m| m.point != dir && m.point.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.point.components().count()));
    out.dedup();
    out
}

/// Unmounts `path`, lazily when it is busy.
fn unmount(path: &Path) {
    let ok = Command::new("umount")
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(path)
            .stderr(Stdio::null())
            .status();
    }
}

/// Sends `signal` to `pid` if it still has start time `start`.
pub fn signal_if_same(pid: u32, start: u64, signal: i32) -> bool {
    if start_time(pid) == Some(start) {
        unsafe { libc::kill(pid as i32, signal) == 0 }
    } else {
        false
    }
}

/// One of the soak's zdb servers (`thinnode zdb`), on a fixed loopback port with its own data.
pub struct ZdbServer {
    /// Its index in the store (shard or replica position).
    pub index: usize,
    /// Directory holding `data/`, `index/` and `zdb.log`.
    pub dir: PathBuf,
    /// Its TCP port (fixed after the first start).
    pub port: u16,
    thinnode: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl ZdbServer {
    /// Starts server `index` with its data in `dir` on a port it picks.
    pub fn start(
        thinnode: &Path,
        index: usize,
        dir: &Path,
        owner: &Owner,
    ) -> anyhow::Result<ZdbServer> {
        let mut s = ZdbServer {
            index,
            dir: dir.to_path_buf(),
            port: 0,
            thinnode: thinnode.to_path_buf(),
            child: None,
            stopped: false,
        };
        s.restart(owner)?;
        Ok(s)
    }

    /// The member URL of this server: short timeouts and no retries inside the member, so a dead or
    /// hung server costs a read little before the store uses the others (as docs/stores.md advises).
    pub fn url(&self) -> String {
        format!(
            "zdb://127.0.0.1:{}/default?retries=0&timeout_ms=3000&connect_timeout_ms=500",
            self.port
        )
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the server (again, on the same port and data, after [`kill`](Self::kill)); returns once
    /// it accepts connections.
    pub fn restart(&mut self, owner: &Owner) -> anyhow::Result<()> {
        self.kill();
        if crate::ABORT.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("the soak is being interrupted");
        }
        std::fs::create_dir_all(&self.dir)?;
        let log_path = self.dir.join("zdb.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let offset = log.metadata()?.len();
        let child = Command::new(&self.thinnode)
            .arg("zdb")
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--index")
            .arg(self.dir.join("index"))
            .args(["--listen", "127.0.0.1", "--port", &self.port.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn thinnode zdb")?;
        owner.add_process(child.id())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let fresh = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default())
                .into_owned();
            if let Some(port) = fresh
                .split_once("listening on 127.0.0.1:")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<u16>().ok())
            {
                if self.port != 0 && port != self.port {
                    bail!(
                        "zdb{} listens on {port}, expected {}",
                        self.index,
                        self.port
                    );
                }
                self.port = port;
                break;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!(
                        "zdb{} exited at start ({status}); see {}",
                        self.index,
                        log_path.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "zdb{} did not start within 60 s; see {}",
                    self.index,
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        testkit::wait_for_tcp(([127, 0, 0, 1], self.port).into(), Duration::from_secs(30));
        Ok(())
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            if self.stopped {
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            }
            let _ = c.wait();
        }
        self.stopped = false;
    }

    /// Empties the server's data and index (after [`kill`](Self::kill)): a replaced disk.
    pub fn wipe(&mut self) -> anyhow::Result<()> {
        for sub in ["data", "index"] {
            let p = self.dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("remove {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// SIGSTOP: the server hangs (connections are accepted by the kernel, nothing is answered).
    pub fn hang(&mut self) {
        if let Some(pid) = self.pid() {
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            self.stopped = true;
        }
    }

    /// SIGCONT after [`hang`](Self::hang).
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
        self.stopped = false;
    }

    /// Whether the server process runs (and is not stopped).
    pub fn serving(&mut self) -> bool {
        !self.stopped
            && self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ZdbServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` (stdout and stderr captured) and waits at most `timeout`; a command still running then
/// is killed and the run is an error (a command stuck on a hung mount must not hang the soak).
pub fn output_within(cmd: &mut Command, timeout: Duration) -> anyhow::Result<std::process::Output> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        readers.push(std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        }));
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            // A process stuck in the kernel (a hung FUSE request) may not die: do not wait for it.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            bail!(
                "{cmd:?} did not finish within {} s (killed)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Ok(std::process::Output {
        status,
        stdout: outputs.next().unwrap_or_default(),
        stderr: outputs.next().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_a_deep_work_dir_are_ours() {
        for p in ["", "/", "/var", "relative/dir", "/var/tmp/../etc"] {
            assert!(!deep_enough(Path::new(p)), "{p:?}");
        }
        assert!(deep_enough(Path::new("/var/tmp")));
        let work = Path::new("/var/tmp/soak-run");
        assert!(inside(Path::new("/var/tmp/soak-run/state"), work));
        for p in [
            "",
            "/",
            "/proc",
            "/var/tmp/soak-run",
            "/var/tmp/soak-runner/x",
            "/var/tmp/other",
        ] {
            assert!(!inside(Path::new(p), work), "{p:?}");
        }
        assert!(!inside(Path::new("/var/x/y"), Path::new("/var")));
        assert!(mounts_below(Path::new("")).is_empty());
        assert!(mounts_below(Path::new("/")).is_empty());
    }

    #[test]
    fn a_command_past_its_time_is_killed() {
        let err = output_within(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .expect_err("sleep 30 outlives 300 ms");
        assert!(format!("{err}").contains("did not finish"), "{err}");
        let out = output_within(Command::new("echo").arg("hi"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }
}
