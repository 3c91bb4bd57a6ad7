//! Process identity that survives PID reuse: a PID plus the process start time (`/proc/PID/stat` field
//! 22, clock ticks since boot) and the boot id, so a record left by a killed supervisor, or from before
//! a reboot, never mistakes an unrelated process for the node.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process as recorded in a node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStamp {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` when the process was recorded.
    pub boot_id: String,
}

/// The running kernel's boot id (empty when unreadable).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// State letter and start ticks of `pid` from `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 are skipped: the next one after them is field 22, the start time.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcessStamp {
    /// The stamp of the running process `pid`, if it exists.
    pub fn of(pid: u32) -> Option<ProcessStamp> {
        let (_, start_ticks) = stat_of(pid)?;
        Some(ProcessStamp {
            pid,
            start_ticks,
            boot_id: boot_id(),
        })
    }

    /// The stamp of this process.
    pub fn current() -> Option<ProcessStamp> {
        ProcessStamp::of(std::process::id())
    }

    /// Whether this exact process still runs (same boot, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        match stat_of(self.pid) {
            Some((state, start)) => start == self.start_ticks && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Sends `sig` to the process if it is still this process. Returns whether it was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        self.is_alive() && signal::kill(Pid::from_raw(pid), sig).is_ok()
    }

    /// Sends `sig` to the process group this process leads (and to the process itself), if it is still
    /// this process. Returns whether it was sent.
    pub fn signal_group(&self, sig: Signal) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        if !self.is_alive() {
            return false;
        }
        let group = signal::killpg(Pid::from_raw(pid), sig).is_ok();
        let own = signal::kill(Pid::from_raw(pid), sig).is_ok();
        group || own
    }

    /// Waits up to `timeout` for the process to end; returns whether it did.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if !self.is_alive() {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the process group, then SIGKILL after `grace`; returns once the process is gone (or
    /// after a further second of waiting for the kill).
    pub fn terminate(&self, grace: Duration) -> bool {
        if !self.signal_group(Signal::SIGTERM) {
            return !self.is_alive();
        }
        if self.wait_gone(grace) {
            return true;
        }
        self.signal_group(Signal::SIGKILL);
        self.wait_gone(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stamp_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessStamp::current().expect("own /proc entry");
        assert!(me.is_alive());
        let reused = ProcessStamp {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive(), "same pid, other start time");
        let other_boot = ProcessStamp {
            boot_id: "not-this-boot".into(),
            ..me
        };
        assert!(!other_boot.is_alive(), "a record from before a reboot");
    }

    #[test]
    fn exited_child_is_not_alive() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let stamp = ProcessStamp::of(child.id());
        child.wait().expect("wait");
        if let Some(stamp) = stamp {
            assert!(!stamp.is_alive());
        }
    }
}
