//! The node command: its `{data}`, `{name}` and `{port:N}` placeholders, starting it (own process
//! group, output into the node log through a pipe, killed by the kernel if the supervisor dies) and
//! stopping it (SIGTERM to its group, SIGKILL after a grace period).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, NodeError, Result};
use crate::logs::{pump, SharedLog};
use crate::state::{NodeRecord, StateDir};

/// How often a stopping command is checked.
const POLL: Duration = Duration::from_millis(50);

/// The `{port:N}` indexes a command uses, in order of appearance, without repeats.
pub(crate) fn port_placeholders(args: &[String]) -> Result<Vec<String>> {
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
pub(crate) fn substitute(
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

/// Starts the node command: its own process group, in the node's directory, stdout and stderr into
/// `log` (through a pipe the supervisor reads), killed by the kernel if the supervisor dies.
pub(crate) fn spawn(state: &StateDir, record: &NodeRecord, log: &SharedLog) -> Result<Child> {
    let data = state.data_dir(&record.name);
    let args = substitute(&record.command, &data, &record.name, &record.ports)?;
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| NodeError::BadArgument("no command given".into()))?;
    let log_path = state.log_path(&record.name);
    let (reader, writer) =
        crate::logs::output_pipe().map_err(io_err("create a pipe for", &log_path))?;
    let writer_err = writer
        .try_clone()
        .map_err(io_err("create a pipe for", &log_path))?;
    log.lock().line(&format!("starting: {}", args.join(" ")))?;
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .current_dir(state.node_dir(&record.name))
        .env("THINNODE_NODE", &record.name)
        .env("THINNODE_DATA", &data)
        .env_remove(mount::READY_FD_ENV)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_err))
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| NodeError::Supervisor {
        name: record.name.clone(),
        reason: format!("start {program:?}: {e}"),
    })?;
    // The Command held the write ends; with it gone, the pipe closes when the command's group does.
    drop(cmd);
    pump(reader, log.clone(), "node");
    Ok(child)
}

/// How a process ended, in words ("exited with status 3", "killed by signal 9").
pub(crate) fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Stops the command: SIGTERM to its process group, SIGKILL after `grace`, then reaps it.
pub(crate) fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
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
