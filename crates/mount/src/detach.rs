//! Running in the background: a parent starts the daemon detached from its terminal and waits until the
//! daemon reports that its mount answers (or why it failed) through a pipe.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{io_ctx, MountError};

/// The environment variable through which a detached child learns its readiness pipe.
pub const READY_FD_ENV: &str = "THINNODE_READY_FD";

const READY_LINE: &str = "READY";

/// Starts `program args` detached from this terminal (new session, output appended to `log`) and waits
/// until it reports readiness through a pipe (see [`notify_ready`]). Returns the child's PID, or the
/// child's error when it failed or died before becoming ready.
pub fn spawn_detached(
    program: &Path,
    args: &[std::ffi::OsString],
    log: &Path,
) -> Result<u32, MountError> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(io_ctx(format!("create {}", dir.display())))?;
    }
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_ctx(format!("open {}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(io_ctx(format!("open {}", log.display())))?;
    let (read_end, write_end) =
        nix::unistd::pipe().map_err(|e| io_ctx("create a pipe")(io::Error::from(e)))?;
    nix::fcntl::fcntl(
        &read_end,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| io_ctx("set close-on-exec")(io::Error::from(e)))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(READY_FD_ENV, write_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io_ctx(format!("start {}", program.display())))?;
    drop(write_end);
    let mut answer = String::new();
    let mut reader = fs::File::from(read_end);
    let _ = reader.read_to_string(&mut answer);
    let answer = answer.trim();
    if answer == READY_LINE {
        return Ok(child.id());
    }
    let reason = if answer.is_empty() {
        format!(
            "the daemon exited before it was ready; see {}",
            log.display()
        )
    } else {
        answer.to_string()
    };
    Err(MountError::Daemon(reason))
}

/// In a child started by [`spawn_detached`]: reports readiness (`Ok`) or the failure to the waiting
/// parent. Does nothing when this process was not started that way.
pub fn notify_ready(result: Result<(), String>) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // The fd is validated with fcntl before it is owned, so a bogus value cannot close a foreign fd.
    // SAFETY: F_GETFD only inspects the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return;
    }
    // SAFETY: the parent passed this pipe end to us for exactly this purpose; nothing else owns it.
    let mut pipe = unsafe { fs::File::from_raw_fd(fd) };
    let line = match result {
        Ok(()) => READY_LINE.to_string(),
        Err(e) => e,
    };
    let _ = writeln!(pipe, "{line}");
}
