//! The nodes under test, driven through the real `thinnode node` commands, and the service manager that
//! starts a crashed or failed node again (as systemd's `Restart=on-failure` of `thinnode-node@.service`
//! does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::procs::{output_within, Log};
use crate::rpc::{RPC_PASSWORD, RPC_USER};

/// Longest a `thinnode node` command may take (a start waits for the mount, a stop for the command's
/// grace period); one that hangs longer is killed and reported.
const CLI_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the service manager waits before starting a crashed node again (the unit's `RestartSec`).
pub const RESTART_SEC: Duration = Duration::from_secs(2);

/// A node as `node ls --json` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeEntry {
    /// Name.
    pub name: String,
    /// running, stopped, failed, crashed, created.
    pub state: String,
    /// The command's process id.
    pub pid: Option<u32>,
    /// The supervisor's process id.
    pub supervisor_pid: Option<u32>,
    /// The mount daemon's process id.
    pub mount_pid: Option<u32>,
    /// The merged data directory.
    pub data_dir: PathBuf,
    /// `{port:N}` ports.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Restarts since the last start.
    #[serde(default)]
    pub restarts: u32,
    /// How the command last ended.
    pub last_exit: Option<String>,
}

/// `thinnode node --state-dir STATE …`.
#[derive(Clone)]
pub struct NodeCli {
    /// The thinnode binary.
    pub thinnode: PathBuf,
    /// The state directory.
    pub state: PathBuf,
}

impl NodeCli {
    /// Runs `thinnode node ARGS`; returns stdout and stderr, or the failure with both.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        if crate::ABORT.load(Ordering::Relaxed) && args.first() != Some(&"rm") {
            bail!("the soak is being interrupted");
        }
        let out = output_within(
            Command::new(&self.thinnode)
                .arg("node")
                .arg("--state-dir")
                .arg(&self.state)
                .args(args),
            CLI_TIMEOUT,
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("thinnode node {}: {}", args.join(" "), text.trim());
        }
        Ok(text)
    }

    /// Every node.
    pub fn ls(&self) -> anyhow::Result<Vec<NodeEntry>> {
        let out = output_within(
            Command::new(&self.thinnode)
                .arg("node")
                .arg("--state-dir")
                .arg(&self.state)
                .args(["ls", "--json"]),
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            bail!("node ls: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).context("node ls --json")
    }

    /// Node `name`.
    pub fn entry(&self, name: &str) -> anyhow::Result<NodeEntry> {
        self.ls()?
            .into_iter()
            .find(|n| n.name == name)
            .with_context(|| format!("node {name} is not listed"))
    }
}

/// The node command: litecoind in the foreground on the node's data dir and ports, RPC with the soak's
/// user, no peers, the wallet `soak` loaded at start.
pub fn litecoind_command() -> Vec<String> {
    [
        "litecoind",
        "-regtest",
        "-datadir={data}",
        "-port={port:1}",
        "-rpcport={port:2}",
        &format!("-rpcuser={RPC_USER}"),
        &format!("-rpcpassword={RPC_PASSWORD}"),
        "-connect=0",
        "-listen=0",
        "-wallet=soak",
        "-fallbackfee=0.0001",
        "-rpcthreads=8",
        "-rpcworkqueue=64",
        "-printtoconsole",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One start of a node by the service manager.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceStart {
    /// Node index.
    pub node: usize,
    /// When the crash was seen, from the start of the soak (seconds).
    pub seen_at: f64,
    /// The state it was in and how its command last ended.
    pub found: String,
    /// Whether `node start` succeeded, or its error.
    pub result: Result<(), String>,
}

/// Watches the nodes; a node found `crashed` or `failed` is started again with `node start NAME` after
/// [`RESTART_SEC`], unless it is held (being stopped on purpose).
pub struct ServiceManager {
    /// Nodes not to restart (by index).
    pub held: Mutex<Vec<bool>>,
    /// Every start it made.
    pub starts: Mutex<Vec<ServiceStart>>,
}

impl ServiceManager {
    /// A manager for `nodes` nodes, none held.
    pub fn new(nodes: usize) -> ServiceManager {
        ServiceManager {
            held: Mutex::new(vec![false; nodes]),
            starts: Mutex::new(Vec::new()),
        }
    }

    /// Runs until `stop`.
    pub fn run(&self, cli: &NodeCli, names: &[String], log: &Log, stop: &AtomicBool) {
        let mut seen: Vec<Option<(Instant, String)>> = vec![None; names.len()];
        while !stop.load(Ordering::Relaxed) && !crate::ABORT.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            let Ok(entries) = cli.ls() else { continue };
            for (i, name) in names.iter().enumerate() {
                let Some(e) = entries.iter().find(|e| &e.name == name) else {
                    continue;
                };
                let down = matches!(e.state.as_str(), "crashed" | "failed");
                if !down || self.held.lock()[i] {
                    seen[i] = None;
                    continue;
                }
                let found = format!(
                    "{} ({})",
                    e.state,
                    e.last_exit.as_deref().unwrap_or("no exit recorded")
                );
                let (since, found) = seen[i]
                    .get_or_insert_with(|| (Instant::now(), found))
                    .clone();
                if since.elapsed() < RESTART_SEC {
                    continue;
                }
                let seen_at = log.elapsed().as_secs_f64() - since.elapsed().as_secs_f64();
                log.line(format!(
                    "service manager: {name} is {found}: node start {name}"
                ));
                let result = cli
                    .run(&["start", name])
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}"));
                match &result {
                    Ok(()) => log.line(format!("service manager: {name} started")),
                    Err(e) => log.line(format!("service manager: node start {name} failed: {e}")),
                }
                self.starts.lock().push(ServiceStart {
                    node: i,
                    seen_at,
                    found,
                    result,
                });
                seen[i] = None;
            }
        }
    }
}

/// Shared stop flag and handles of the threads of a soak.
pub type StopFlag = Arc<AtomicBool>;

/// Total bytes of the regular files below `dir`, read in full (through the node's mount when `dir` is
/// a data dir); the first failure is an error naming the file.
pub fn read_tree(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut buf = vec![0u8; 1 << 20];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read dir {}", d.display()))? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                let path = entry.path();
                let mut f = std::fs::File::open(&path)
                    .with_context(|| format!("open {}", path.display()))?;
                loop {
                    use std::io::Read;
                    let n = f
                        .read(&mut buf)
                        .with_context(|| format!("read {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                }
                files += 1;
            }
        }
    }
    Ok((files, bytes))
}
