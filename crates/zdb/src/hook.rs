//! The external hook (`--hook`): an executable called, without a shell, on server events with the event
//! name, the server id and event arguments.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The configured hook program and the server id passed to it.
#[derive(Debug, Clone)]
pub struct Hook {
    program: PathBuf,
    server_id: String,
}

impl Hook {
    /// A hook running `program`, identifying this server as `server_id`.
    pub fn new(program: PathBuf, server_id: String) -> Self {
        Hook { program, server_id }
    }

    /// Runs the hook for `event` in the background; the child is reaped by a helper thread.
    pub fn fire(&self, event: &str, args: &[&str]) {
        let spawned = Command::new(&self.program)
            .arg(event)
            .arg(&self.server_id)
            .args(args)
            .stdin(Stdio::null())
            .spawn();
        match spawned {
            Ok(mut child) => {
                let _ = std::thread::Builder::new()
                    .name("zdb-hook".into())
                    .spawn(move || {
                        let _ = child.wait();
                    });
            }
            Err(e) => tracing::warn!(hook = %self.program.display(), event, "cannot run hook: {e}"),
        }
    }

    /// Runs the hook for `event` and waits for it (used at shutdown).
    pub fn fire_and_wait(&self, event: &str) {
        let status = Command::new(&self.program)
            .arg(event)
            .arg(&self.server_id)
            .stdin(Stdio::null())
            .status();
        if let Err(e) = status {
            tracing::warn!(hook = %self.program.display(), event, "cannot run hook: {e}");
        }
    }
}
