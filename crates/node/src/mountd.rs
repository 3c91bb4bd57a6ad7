//! A node's mount daemon: the `thinnode mount IMAGE DATA --layer LAYER` process that serves the node's
//! data directory (the image read-only below, the node's write layer on top). It runs apart from the
//! supervisor so the supervisor outlives it: when the mount daemon dies (killed, out of memory, a
//! crash), the supervisor sees it exit, stops the command, clears the dead mounts and starts both again.
//! It gets SIGTERM from the kernel when the supervisor dies, and then unmounts cleanly.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, NodeError, Result};
use crate::process::ProcessStamp;
use crate::state::{NodeRecord, StateDir};

/// How long unmounting a leftover mount may take.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a mount daemon gets to unmount and flush its cache writes after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running mount daemon, child of this process.
#[derive(Debug)]
pub(crate) struct MountDaemon {
    child: Child,
}

/// The `thinnode mount` arguments that serve `record`'s data directory.
fn mount_args(state: &StateDir, record: &NodeRecord) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "mount".into(),
        record.image.clone().into(),
        state.data_dir(&record.name).into(),
        "--layer".into(),
        state.layer_dir(&record.name).into(),
        "--layer-kind".into(),
        record.layer_kind.to_string().into(),
        "--cache".into(),
        record.cache_dir.clone().into(),
        "--cache-size".into(),
        record.cache_max_bytes.to_string().into(),
    ];
    for store in &record.stores {
        args.push("--store".into());
        args.push(store.into());
    }
    if let Some(trust) = &record.trust {
        args.push("--trust".into());
        args.push(trust.clone().into());
    }
    args
}

impl MountDaemon {
    /// Clears what an earlier mount daemon left, starts `exe mount …` for node `record` (output
    /// copied to this process's stderr) and returns once it reports the data directory mounted, or
    /// with its error.
    pub(crate) fn start(state: &StateDir, record: &NodeRecord, exe: &Path) -> Result<MountDaemon> {
        let name = &record.name;
        clear_mounts(state, name)?;
        let data = state.data_dir(name);
        std::fs::create_dir_all(&data).map_err(io_err("create", &data))?;
        let failed = |reason: String| NodeError::Supervisor {
            name: name.clone(),
            reason,
        };
        let (ready_read, ready_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
                failed(format!(
                    "create the readiness pipe: {}",
                    std::io::Error::from(e)
                ))
            })?;
        let (out_read, out_write) =
            crate::logs::output_pipe().map_err(io_err("create a pipe for", &data))?;
        let out_err = out_write
            .try_clone()
            .map_err(io_err("create a pipe for", &data))?;
        let ready_fd = ready_write.as_raw_fd();
        let mut cmd = Command::new(exe);
        cmd.args(mount_args(state, record))
            .env(mount::READY_FD_ENV, ready_fd.to_string())
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(out_err))
            // Not in the terminal's process group: a Ctrl-C reaches the supervisor, which stops the
            // command before the mount goes away.
            .process_group(0);
        // SAFETY: prctl and fcntl are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The readiness pipe is close-on-exec everywhere else; this child keeps it.
                libc::fcntl(ready_fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| failed(format!("start {}: {e}", exe.display())))?;
        drop(cmd);
        drop(ready_write);
        copy_to_stderr(out_read);
        let mut mounted = MountDaemon { child };
        let mut answer = String::new();
        let _ = BufReader::new(std::fs::File::from(ready_read)).read_line(&mut answer);
        let answer = answer.trim();
        if answer == "READY" {
            return Ok(mounted);
        }
        let status = mounted.stop();
        let _ = clear_mounts(state, name);
        Err(failed(if answer.is_empty() {
            format!(
                "the mount daemon {} before it was ready",
                status
                    .as_ref()
                    .map(crate::command::describe)
                    .unwrap_or_else(|| "ended".into())
            )
        } else {
            format!("mount: {answer}")
        }))
    }

    /// The daemon's process stamp (for the node record).
    pub(crate) fn stamp(&self) -> Option<ProcessStamp> {
        ProcessStamp::of(self.child.id())
    }

    /// How it ended, once it has.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the daemon to unmount and exit (SIGTERM), waits for it (SIGKILL after a minute) and
    /// returns how it ended.
    pub(crate) fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("the mount daemon did not exit in {STOP_TIMEOUT:?}; killing it");
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

/// Copies a child's output into this process's stderr (the supervisor's log) on its own thread.
fn copy_to_stderr(source: std::fs::File) {
    let spawned = std::thread::Builder::new()
        .name("log-mount".into())
        .spawn(move || {
            let mut reader = BufReader::new(source);
            let mut line = Vec::with_capacity(1024);
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(b"[mount] ");
                let _ = err.write_all(&line);
                line.clear();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the mount log thread: {e}");
    }
}

/// Unmounts whatever a dead mount daemon left at the node's data directory and image mount (a dead
/// FUSE mount, an overlay on top of one).
pub(crate) fn clear_mounts(state: &StateDir, name: &str) -> Result<()> {
    let data = state.data_dir(name);
    let lower = state.layer_dir(name).join(layer::LOWER_DIR);
    for path in [data, lower] {
        if (path.exists() || mount::is_stale_mount(&path)) && mount::is_mountpoint(&path) {
            mount::unmount_path(&path, UNMOUNT_TIMEOUT)?;
        }
    }
    Ok(())
}
