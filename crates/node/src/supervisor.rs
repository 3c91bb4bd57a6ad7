//! The per-node supervisor: the process that keeps a node running. It starts the node's mount daemon
//! (see `mountd`) and the node command, records both, reports readiness (to a waiting `node start`, or
//! to systemd with `READY=1`), and then watches them:
//!
//! - the command exits: restarted by the node's restart policy, with backoff;
//! - the mount daemon dies: the command (now on a dead data directory) is stopped, the dead mounts are
//!   cleared, and under `on-failure` or `always` both are started again, with the same backoff; under
//!   `no` the node is failed;
//! - SIGTERM/SIGINT/SIGHUP: the command is stopped (SIGTERM, SIGKILL after the grace period), then the
//!   mount daemon (which unmounts), and the supervisor exits.
//!
//! Its state goes to the node record at every change; the command's output goes to the size-rotated
//! `node.log`, and, when detached, its own to the size-rotated `supervisor.log`.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::command;
use crate::error::{NodeError, Result};
use crate::logs::{RotatingLog, SharedLog};
use crate::mountd::{self, MountDaemon};
use crate::process::ProcessStamp;
use crate::service;
use crate::state::{now_secs, NodeRecord, NodeState, RestartPolicy, StateDir};

/// First delay before a restart; doubled after each quick failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest delay before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How often the supervisor looks at the command and the mount daemon.
const POLL: Duration = Duration::from_millis(50);
/// How often the supervisor's own log is checked for rotation.
const OWN_LOG_CHECK: Duration = Duration::from_secs(5);

/// How a supervisor runs.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// The thinnode binary, which runs the mount daemon (`thinnode mount … --layer …`).
    pub exe: PathBuf,
    /// How long the command gets after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// Whether this process's stdout and stderr are the node's `supervisor.log` (a detached
    /// supervisor), which it then rotates; false in the foreground (a terminal or the journal).
    pub owns_supervisor_log: bool,
}

/// What woke the supervisor up.
enum Event {
    Shutdown,
    MountDied(String),
    CommandExited(ExitStatus),
}

/// Runs the supervisor of node `name` (in the process `node start` started, or in the foreground under
/// a service manager): returns the final record once the node has stopped and its data directory is
/// unmounted. A node that failed is returned with state `Failed`.
pub fn supervise(state: &StateDir, name: &str, opts: &SuperviseOptions) -> Result<NodeRecord> {
    keep_ready_pipe_from_children();
    let result = mount::install_shutdown_handler()
        .map_err(NodeError::from)
        .and_then(|()| Supervisor::open(state, name, opts))
        .and_then(|mut s| s.run());
    if let Err(e) = &result {
        // Harmless when readiness was already reported: the pipe is gone then.
        mount::notify_ready(Err(e.to_string()));
        service::notify_service_manager(false, &format!("failed: {e}"));
        if let Ok(mut record) = state.read(name) {
            record.state = NodeState::Failed;
            record.last_exit = Some(e.to_string());
            record.supervisor = None;
            record.child = None;
            record.mount = None;
            let _ = state.write(&record);
        }
        if let Ok(mut log) = RotatingLog::open(&state.log_path(name), Default::default()) {
            let _ = log.line(&format!("supervisor failed: {e}"));
        }
    }
    service::notify_stopping();
    result
}

/// Marks the readiness pipe inherited from `node start` close-on-exec, so neither the node command nor
/// the mount daemon inherits it (`node start` waits until every copy of it is closed).
fn keep_ready_pipe_from_children() {
    let Some(fd) = std::env::var(mount::READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: F_GETFD/F_SETFD only change the descriptor's flags; an invalid fd just fails.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Sleeps `delay`, returning early (false) when a shutdown is requested.
fn sleep_unless_shutdown(delay: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < delay {
        if mount::shutdown_requested() {
            return false;
        }
        std::thread::sleep(POLL);
    }
    !mount::shutdown_requested()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Supervisor<'a> {
    state: &'a StateDir,
    opts: &'a SuperviseOptions,
    record: NodeRecord,
    node_log: SharedLog,
    own_log: Option<RotatingLog>,
    own_log_checked: Instant,
    backoff: Duration,
}

impl<'a> Supervisor<'a> {
    fn open(state: &'a StateDir, name: &str, opts: &'a SuperviseOptions) -> Result<Self> {
        let record = state.read(name)?;
        let node_log = Arc::new(Mutex::new(RotatingLog::open(
            &state.log_path(name),
            record.logs,
        )?));
        let own_log = if opts.owns_supervisor_log {
            Some(RotatingLog::open(
                &state.supervisor_log_path(name),
                record.logs,
            )?)
        } else {
            None
        };
        let s = Supervisor {
            state,
            opts,
            record,
            node_log,
            own_log,
            own_log_checked: Instant::now(),
            backoff: FIRST_BACKOFF,
        };
        // A supervisor.log found over its limit was rotated at open: write to the new file.
        s.redirect_own_output();
        Ok(s)
    }

    fn log(&self, line: &str) {
        tracing::info!("node {}: {line}", self.record.name);
        if let Err(e) = self.node_log.lock().line(line) {
            tracing::warn!("node log: {e}");
        }
    }

    fn save(&self) -> Result<()> {
        self.state.write(&self.record)
    }

    /// Rotates `supervisor.log` when it is full and points stdout and stderr (this process's and, via
    /// the pipes, the mount daemon's output) at the new file.
    fn rotate_own_log(&mut self) {
        if self.own_log_checked.elapsed() < OWN_LOG_CHECK {
            return;
        }
        self.own_log_checked = Instant::now();
        let rotated = match self.own_log.as_mut().map(|l| l.rotate_if_full()) {
            Some(Ok(rotated)) => rotated,
            Some(Err(e)) => {
                tracing::warn!("supervisor log: {e}");
                false
            }
            None => false,
        };
        if rotated {
            self.redirect_own_output();
        }
    }

    fn redirect_own_output(&self) {
        let Some(log) = &self.own_log else {
            return;
        };
        let fd = log.file().as_raw_fd();
        // SAFETY: dup2 onto stdout and stderr replaces them with the log file; both stay valid.
        unsafe {
            libc::dup2(fd, libc::STDOUT_FILENO);
            libc::dup2(fd, libc::STDERR_FILENO);
        }
    }

    /// Starts the mount daemon and the command, records both.
    fn start_both(&mut self) -> Result<(MountDaemon, Child)> {
        let mut mount = MountDaemon::start(self.state, &self.record, &self.opts.exe)?;
        let child = match command::spawn(self.state, &self.record, &self.node_log) {
            Ok(c) => c,
            Err(e) => {
                mount.stop();
                return Err(e);
            }
        };
        self.record.mount = mount.stamp();
        self.record.child = ProcessStamp::of(child.id());
        Ok((mount, child))
    }

    fn run(&mut self) -> Result<NodeRecord> {
        let started = Instant::now();
        self.record.supervisor = ProcessStamp::current();
        self.record.state = NodeState::Starting;
        self.record.started_at = Some(now_secs());
        self.record.restarts = 0;
        self.record.child = None;
        self.record.mount = None;
        self.save()?;
        let (mut mount, mut child) = self.start_both()?;
        self.record.state = NodeState::Running;
        self.record.ready_ms = Some(millis(started.elapsed()));
        self.save()?;
        mount::notify_ready(Ok(()));
        service::notify_service_manager(true, "running");
        self.log(&format!(
            "running (pid {}, mount daemon pid {})",
            child.id(),
            self.record.mount.as_ref().map(|m| m.pid).unwrap_or(0)
        ));

        let mut run_started = Instant::now();
        let final_state = loop {
            let event = match self.wait_event(&mut mount, &mut child) {
                Ok(e) => e,
                Err(reason) => {
                    self.record.last_exit = Some(reason);
                    break NodeState::Failed;
                }
            };
            let restart = match self.decide(event, &mut child) {
                Ok(restart) => restart,
                Err(end) => break end,
            };
            if run_started.elapsed() >= HEALTHY_RUN {
                self.backoff = FIRST_BACKOFF;
            }
            match self.restart(restart, &mut mount, &mut child) {
                Ok(true) => {}
                Ok(false) => {
                    let how = self.record.last_exit.take().unwrap_or_default();
                    self.record.last_exit = Some(format!("{how}; stopped on request"));
                    break NodeState::Stopped;
                }
                Err(e) => {
                    self.record.last_exit = Some(e.to_string());
                    break NodeState::Failed;
                }
            }
            run_started = Instant::now();
        };
        self.finish(final_state, &mut mount, &mut child)
    }

    /// What to do about `event`: what to restart, or the state the node ends in (`Err`).
    fn decide(
        &mut self,
        event: Event,
        child: &mut Child,
    ) -> std::result::Result<Restart, NodeState> {
        match event {
            Event::Shutdown => {
                let how = command::stop(child, self.opts.grace)
                    .as_ref()
                    .map(command::describe)
                    .unwrap_or_else(|| "stopped".into());
                let line = format!("stopped on request ({how})");
                self.log(&line);
                self.record.last_exit = Some(line);
                Err(NodeState::Stopped)
            }
            Event::MountDied(how) => {
                // The command now sees a dead data directory: stop it before anything else.
                command::stop(child, self.opts.grace);
                self.log(&how);
                if let Err(e) = mountd::clear_mounts(self.state, &self.record.name) {
                    self.log(&format!("clearing the dead mounts: {e}"));
                }
                self.record.last_exit = Some(how);
                if self.record.restart == RestartPolicy::No {
                    return Err(NodeState::Failed);
                }
                Ok(Restart::Both)
            }
            Event::CommandExited(status) => {
                let how = format!("command {}", command::describe(&status));
                self.log(&how);
                self.record.last_exit = Some(how);
                let again = match self.record.restart {
                    RestartPolicy::No => false,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Always => true,
                };
                match (again, status.success()) {
                    (true, _) => Ok(Restart::Command),
                    (false, true) => Err(NodeState::Stopped),
                    (false, false) => Err(NodeState::Failed),
                }
            }
        }
    }

    /// Stops what still runs, unmounts, and records the final state.
    fn finish(
        &mut self,
        final_state: NodeState,
        mount: &mut MountDaemon,
        child: &mut Child,
    ) -> Result<NodeRecord> {
        if let Ok(None) = child.try_wait() {
            command::stop(child, self.opts.grace);
        }
        let already_dead = mount.exited().is_some();
        let unmounted = match mount.stop() {
            _ if already_dead => Ok(()),
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!("the mount daemon {}", command::describe(&status))),
            None => Err("the mount daemon could not be waited for".to_string()),
        };
        if let Err(e) = unmounted {
            self.log(&format!("unmount: {e}"));
        }
        if let Err(e) = mountd::clear_mounts(self.state, &self.record.name) {
            self.log(&format!("unmount: {e}"));
        }
        self.record.state = final_state;
        self.record.supervisor = None;
        self.record.child = None;
        self.record.mount = None;
        self.save()?;
        Ok(self.record.clone())
    }

    /// Waits for the next thing to act on. An error is a failure to watch the command.
    fn wait_event(
        &mut self,
        mount: &mut MountDaemon,
        child: &mut Child,
    ) -> std::result::Result<Event, String> {
        loop {
            if mount::shutdown_requested() {
                return Ok(Event::Shutdown);
            }
            self.rotate_own_log();
            if let Some(status) = mount.exited() {
                return Ok(Event::MountDied(format!(
                    "the mount daemon {}",
                    command::describe(&status)
                )));
            }
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Event::CommandExited(status)),
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => return Err(format!("waiting for the command: {e}")),
            }
        }
    }

    /// Waits out the backoff, then starts the command again (and the mount daemon first, for
    /// [`Restart::Both`], retrying it with growing backoff while it fails). Returns false when a
    /// shutdown was requested meanwhile.
    fn restart(
        &mut self,
        what: Restart,
        mount: &mut MountDaemon,
        child: &mut Child,
    ) -> Result<bool> {
        self.record.child = None;
        if what == Restart::Both {
            self.record.mount = None;
        }
        self.save()?;
        loop {
            self.log(&format!("restarting in {} s", self.backoff.as_secs()));
            service::notify_service_manager(false, "restarting");
            if !sleep_unless_shutdown(self.backoff) {
                return Ok(false);
            }
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            match what {
                Restart::Command => {
                    // A command that cannot be started (gone from PATH, …) fails the node.
                    let c = command::spawn(self.state, &self.record, &self.node_log)?;
                    self.record.child = ProcessStamp::of(c.id());
                    *child = c;
                }
                Restart::Both => match self.start_both() {
                    Ok((m, c)) => {
                        *mount = m;
                        *child = c;
                    }
                    // The store or the cache may be back in a moment: keep trying.
                    Err(e) => {
                        self.log(&format!("start after the mount died: {e}"));
                        continue;
                    }
                },
            }
            self.record.restarts += 1;
            self.save()?;
            self.log(&format!(
                "restarted (pid {}, mount daemon pid {})",
                child.id(),
                self.record.mount.as_ref().map(|m| m.pid).unwrap_or(0)
            ));
            service::notify_service_manager(false, "running");
            return Ok(true);
        }
    }
}

/// What a restart starts again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    Command,
    Both,
}
