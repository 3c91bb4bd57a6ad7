//! The per-node supervisor: a detached process that holds the node's data directory mounted (image plus
//! write layer), runs the node command with its placeholders filled in, restarts it by policy with
//! backoff, and on SIGTERM stops the command (SIGTERM, then SIGKILL after a grace period), unmounts and
//! exits. Its state goes to the node record at every change.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use layer::stack::LayeredMount;
use mount::daemon;

use crate::error::{io_err, NodeError, Result};
use crate::process::ProcessStamp;
use crate::state::{now_secs, NodeRecord, NodeState, RestartPolicy, StateDir};

/// First delay before a restart; doubled after each quick failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest delay before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A command that ran at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How often the supervisor looks at the command and the mount.
const POLL: Duration = Duration::from_millis(50);

/// The `{port:N}` indexes a command uses, in order of appearance, without repeats.
pub fn port_placeholders(args: &[String]) -> Result<Vec<String>> {
    let mut found: Vec<String> = Vec::new();
    for arg in args {
        let mut rest = arg.as_str();
        while let Some(pos) = rest.find("{port:") {
            let after = rest.get(pos + 6..).unwrap_or("");
            let end = after.find('}').ok_or_else(|| {
                NodeError::BadArgument(format!("unterminated {{port:N}} placeholder in {arg:?}"))
            })?;
            let index = after.get(..end).unwrap_or("");
            if index.is_empty() || !index.chars().all(|c| c.is_ascii_digit()) {
                return Err(NodeError::BadArgument(format!(
                    "placeholder {{port:{index}}} in {arg:?}: N must be a number"
                )));
            }
            if !found.iter().any(|f| f == index) {
                found.push(index.to_string());
            }
            rest = after.get(end + 1..).unwrap_or("");
        }
    }
    Ok(found)
}

/// The command with `{data}`, `{name}` and `{port:N}` filled in. Every `{port:N}` must have a port.
pub fn substitute(
    args: &[String],
    data: &Path,
    name: &str,
    ports: &BTreeMap<String, u16>,
) -> Result<Vec<String>> {
    let data = data.to_string_lossy();
    args.iter()
        .map(|arg| {
            let mut out = arg.replace("{data}", &data).replace("{name}", name);
            for index in port_placeholders(std::slice::from_ref(arg))? {
                let port = ports.get(&index).ok_or_else(|| {
                    NodeError::BadArgument(format!("no port chosen for {{port:{index}}}"))
                })?;
                out = out.replace(&format!("{{port:{index}}}"), &port.to_string());
            }
            Ok(out)
        })
        .collect()
}

/// The mount settings of a node (its image, host cache, stores, and the key its image must be signed
/// by, when it has one).
pub fn mount_config(record: &NodeRecord) -> Result<daemon::MountConfig> {
    let mut config = daemon::MountConfig::new(
        record.image.clone(),
        // Replaced by LayeredMount with the mountpoint inside the layer directory.
        record.image.clone(),
        mount::CacheConfig {
            dir: record.cache_dir.clone(),
            max_bytes: record.cache_max_bytes,
            durable: true,
        },
    );
    config.store_overrides = record.stores.clone();
    if let Some(trust) = &record.trust {
        config.trusted_key = Some(image::read_verifying_key(trust)?);
    }
    Ok(config)
}

/// Appends one line from thinnode (not from the node command) to the node's log.
fn log_line(state: &StateDir, name: &str, line: &str) {
    let path = state.log_path(name);
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "[thinnode {}] {line}", now_secs());
    }
}

/// Starts the node command: own process group, stdout and stderr appended to the node log, killed by
/// the kernel if the supervisor dies.
fn spawn_command(state: &StateDir, record: &NodeRecord) -> Result<Child> {
    let data = state.data_dir(&record.name);
    let args = substitute(&record.command, &data, &record.name, &record.ports)?;
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| NodeError::BadArgument("no command given".into()))?;
    let log_path = state.log_path(&record.name);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err("open", &log_path))?;
    let log_err = log.try_clone().map_err(io_err("open", &log_path))?;
    log_line(
        state,
        &record.name,
        &format!("starting: {}", args.join(" ")),
    );
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .current_dir(state.node_dir(&record.name))
        .env("THINNODE_NODE", &record.name)
        .env("THINNODE_DATA", &data)
        .env_remove(daemon::READY_FD_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| NodeError::Supervisor {
        name: record.name.clone(),
        reason: format!("start {program:?}: {e}"),
    })
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Stops the command: SIGTERM to its process group, SIGKILL after `grace`, then reaps it.
fn stop_command(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let Ok(pid) = i32::try_from(child.id()) else {
        return None;
    };
    let group = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(POLL);
    }
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    child.wait().ok()
}

/// Sleeps `delay`, returning early (false) when a shutdown is requested.
fn sleep_unless_shutdown(delay: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < delay {
        if daemon::shutdown_requested() {
            return false;
        }
        std::thread::sleep(POLL);
    }
    !daemon::shutdown_requested()
}

/// Runs the supervisor of node `name` (in the detached process started by `node start`): reports
/// readiness to the waiting `node start` once the command is started, and returns when the node has
/// stopped and its data directory is unmounted.
pub fn run(state: &StateDir, name: &str, grace: Duration) -> Result<()> {
    let result = supervise(state, name, grace);
    if let Err(e) = &result {
        // Harmless when readiness was already reported: the pipe is gone then.
        daemon::notify_ready(Err(e.to_string()));
        if let Ok(mut record) = state.read(name) {
            record.state = NodeState::Failed;
            record.last_exit = Some(e.to_string());
            record.supervisor = None;
            record.child = None;
            let _ = state.write(&record);
        }
        log_line(state, name, &format!("supervisor failed: {e}"));
    }
    result
}

/// Marks the readiness pipe inherited from `node start` close-on-exec, so the node command does not
/// inherit it (`node start` waits until every copy of it is closed).
fn keep_ready_pipe_from_children() {
    let Some(fd) = std::env::var(daemon::READY_FD_ENV)
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

fn supervise(state: &StateDir, name: &str, grace: Duration) -> Result<()> {
    keep_ready_pipe_from_children();
    daemon::install_shutdown_handler()?;
    let started = Instant::now();
    let mut record = state.read(name)?;
    record.supervisor = ProcessStamp::current();
    record.state = NodeState::Starting;
    record.started_at = Some(now_secs());
    record.restarts = 0;
    record.child = None;
    state.write(&record)?;

    let data = state.data_dir(name);
    fs::create_dir_all(&data).map_err(io_err("create", &data))?;
    let mounted = LayeredMount::mount(
        mount_config(&record)?,
        &state.layer_dir(name),
        record.layer_kind,
        &data,
    )?;
    let mut child = match spawn_command(state, &record) {
        Ok(c) => c,
        Err(e) => {
            let _ = mounted.unmount();
            return Err(e);
        }
    };
    record.child = ProcessStamp::of(child.id());
    record.state = NodeState::Running;
    record.ready_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    state.write(&record)?;
    daemon::notify_ready(Ok(()));
    tracing::info!("node {name}: running (pid {})", child.id());

    let mut backoff = FIRST_BACKOFF;
    let mut run_started = Instant::now();
    let final_state = loop {
        if daemon::shutdown_requested() {
            let status = stop_command(&mut child, grace);
            let how = status
                .as_ref()
                .map(describe)
                .unwrap_or_else(|| "stopped".into());
            log_line(state, name, &format!("stopped on request ({how})"));
            record.last_exit = Some(format!("stopped on request ({how})"));
            break NodeState::Stopped;
        }
        if !mounted.is_running() {
            let _ = stop_command(&mut child, grace);
            let reason = "the data directory was unmounted from outside".to_string();
            log_line(state, name, &reason);
            record.last_exit = Some(reason);
            break NodeState::Failed;
        }
        let status = match child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) => {
                record.last_exit = Some(format!("waiting for the command: {e}"));
                break NodeState::Failed;
            }
        };
        let how = describe(&status);
        log_line(state, name, &format!("command {how}"));
        record.last_exit = Some(format!("command {how}"));
        let restart = match record.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        };
        if !restart {
            break if status.success() {
                NodeState::Stopped
            } else {
                NodeState::Failed
            };
        }
        if run_started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        record.child = None;
        state.write(&record)?;
        log_line(
            state,
            name,
            &format!("restarting in {} s", backoff.as_secs()),
        );
        if !sleep_unless_shutdown(backoff) {
            record.last_exit = Some(format!("command {how}; stopped on request"));
            break NodeState::Stopped;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        match spawn_command(state, &record) {
            Ok(c) => child = c,
            Err(e) => {
                record.last_exit = Some(e.to_string());
                break NodeState::Failed;
            }
        }
        run_started = Instant::now();
        record.restarts += 1;
        record.child = ProcessStamp::of(child.id());
        state.write(&record)?;
    };
    let unmounted = mounted.unmount();
    record.state = final_state;
    record.supervisor = None;
    record.child = None;
    if let Err(e) = &unmounted {
        log_line(state, name, &format!("unmount: {e}"));
    }
    state.write(&record)?;
    unmounted.map_err(NodeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_filled() {
        let args: Vec<String> = [
            "node",
            "-datadir={data}",
            "-port={port:1}",
            "-rpcport={port:2}",
            "--name={name}",
            "-x={port:1}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(port_placeholders(&args).expect("scan"), vec!["1", "2"]);
        let ports = BTreeMap::from([("1".to_string(), 4001), ("2".to_string(), 4002)]);
        let out = substitute(&args, Path::new("/d"), "n1", &ports).expect("fill");
        assert_eq!(
            out,
            vec![
                "node",
                "-datadir=/d",
                "-port=4001",
                "-rpcport=4002",
                "--name=n1",
                "-x=4001"
            ]
        );
        let missing = BTreeMap::from([("1".to_string(), 4001)]);
        assert!(substitute(&args, Path::new("/d"), "n1", &missing).is_err());
        assert!(port_placeholders(&["{port:x}".to_string()]).is_err());
        assert!(port_placeholders(&["{port:1".to_string()]).is_err());
        assert_eq!(
            port_placeholders(&["{json}".to_string()]).expect("scan"),
            Vec::<String>::new()
        );
    }
}
