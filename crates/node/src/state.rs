//! The state directory: one directory per node holding its JSON record (written atomically), its write
//! layer, the merged data directory its process sees, its identity and its logs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use layer::LayerKind;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, NodeError, Result};
use crate::logs::LogLimits;
use crate::process::ProcessStamp;

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/thinnode";
/// The environment variable that overrides the state directory.
pub const STATE_DIR_ENV: &str = "THINNODE_STATE_DIR";
/// Version of the node record format written by this build.
pub const RECORD_VERSION: u32 = 1;

/// What the node's supervisor does when the command exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart: the node is stopped (exit status 0) or failed.
    #[default]
    No,
    /// Restart (with backoff) when the command exits with a non-zero status or a signal.
    OnFailure,
    /// Always restart (with backoff).
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = NodeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "no" => Ok(RestartPolicy::No),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            other => Err(NodeError::BadArgument(format!(
                "restart policy {other:?}: use no, on-failure or always"
            ))),
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        })
    }
}

/// The state a node's record says it is in (what the last writer knew).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Created, never started.
    Created,
    /// A supervisor is being started.
    Starting,
    /// The supervisor runs the command.
    Running,
    /// Stopped on request, or the command exited with status 0 under restart policy `no`.
    Stopped,
    /// The command failed and is not restarted, or the supervisor could not start it.
    Failed,
}

/// The state of a node as observed now: the record checked against the processes that really run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The supervisor runs.
    Running,
    /// Not running, by request or a clean exit.
    Stopped,
    /// The command failed and is not restarted.
    Failed,
    /// The record says running, but the supervisor is gone (killed, or the host rebooted).
    Crashed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
            Status::Crashed => "crashed",
        })
    }
}

/// How the node gets its network identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "path")]
pub enum IdentityMode {
    /// A fresh key generated for this node (kept in the node's state directory).
    Generate,
    /// A key copied from this file (kept in the node's state directory).
    File(PathBuf),
}

/// Everything known about one node, as stored in `NODE_DIR/node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Record format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The node's name.
    pub name: String,
    /// The base image (absolute path).
    pub image: PathBuf,
    /// The base image's labels.
    pub labels: BTreeMap<String, String>,
    /// The kind of write layer.
    pub layer_kind: LayerKind,
    /// The host chunk cache.
    pub cache_dir: PathBuf,
    /// The host cache's size limit in bytes.
    pub cache_max_bytes: u64,
    /// Stores to read from instead of the image's (empty: the image's).
    pub stores: Vec<String>,
    /// The public key file the image must be signed by (checked at every mount).
    #[serde(default)]
    pub trust: Option<PathBuf>,
    /// How the network identity is set.
    pub identity: IdentityMode,
    /// The command last started (placeholders not yet substituted).
    pub command: Vec<String>,
    /// The restart policy of the last start.
    pub restart: RestartPolicy,
    /// Ports chosen for `{port:N}` placeholders, by N; stable once chosen.
    pub ports: BTreeMap<String, u16>,
    /// The last known state.
    pub state: NodeState,
    /// The supervisor process, while one was started.
    pub supervisor: Option<ProcessStamp>,
    /// The node command's process, while it runs.
    pub child: Option<ProcessStamp>,
    /// The mount daemon serving the node's data directory, while it runs.
    #[serde(default)]
    pub mount: Option<ProcessStamp>,
    /// Whether `node enable` marked the node to start at boot.
    #[serde(default)]
    pub enabled: bool,
    /// Size limit and rotated files kept of `node.log` and `supervisor.log`.
    #[serde(default)]
    pub logs: LogLimits,
    /// Seconds the command gets after SIGTERM before SIGKILL.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_secs: u64,
    /// When the supervisor started (seconds since the epoch).
    pub started_at: Option<u64>,
    /// Milliseconds from `node start` to the command being started (data directory mounted).
    pub ready_ms: Option<u64>,
    /// Restarts since the last start.
    pub restarts: u32,
    /// How the command last ended, or why the node failed.
    pub last_exit: Option<String>,
    /// When the node was created (seconds since the epoch).
    pub created_at: u64,
}

impl NodeRecord {
    /// The state as observed now (see [`Status`]).
    pub fn status(&self) -> Status {
        let supervisor_alive = self.supervisor.as_ref().is_some_and(|s| s.is_alive());
        match self.state {
            NodeState::Running | NodeState::Starting if supervisor_alive => Status::Running,
            NodeState::Running | NodeState::Starting => Status::Crashed,
            NodeState::Failed => Status::Failed,
            NodeState::Created | NodeState::Stopped => {
                if supervisor_alive {
                    Status::Running
                } else {
                    Status::Stopped
                }
            }
        }
    }

    /// Seconds since the supervisor started, while running.
    pub fn uptime_secs(&self) -> Option<u64> {
        match self.status() {
            Status::Running => self.started_at.map(|t| now_secs().saturating_sub(t)),
            _ => None,
        }
    }
}

fn default_stop_grace() -> u64 {
    30
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks that `name` can be a node name (it becomes a directory name).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NodeError::InvalidName(name.to_string()))
    }
}

/// The state directory holding every node.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// An exclusive lock on one node's state, held while a command changes it.
pub struct NodeLock {
    _lock: Flock<fs::File>,
}

impl StateDir {
    /// The state directory at `root` (created when missing).
    pub fn open(root: &Path) -> Result<StateDir> {
        fs::create_dir_all(root.join("nodes")).map_err(io_err("create", root))?;
        let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        Ok(StateDir { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of node `name`.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.root.join("nodes").join(name)
    }

    /// The record file of node `name`.
    pub fn record_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.json")
    }

    /// The layer directory of node `name`.
    pub fn layer_dir(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("layer")
    }

    /// The merged data directory node `name`'s process sees.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("data")
    }

    /// The log of node `name`'s command (stdout and stderr, appended).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.log")
    }

    /// The log of node `name`'s supervisor.
    pub fn supervisor_log_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("supervisor.log")
    }

    /// Where node `name` keeps its identity key.
    pub fn identity_dir(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("identity")
    }

    /// Whether node `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.record_path(name).is_file()
    }

    /// Takes the exclusive lock of node `name` (waits for another command holding it).
    pub fn lock(&self, name: &str) -> Result<NodeLock> {
        check_name(name)?;
        let dir = self.node_dir(name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = dir.join("node.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| NodeError::Io {
            action: "lock",
            path,
            source: std::io::Error::from(e),
        })?;
        Ok(NodeLock { _lock: lock })
    }

    /// Reads node `name`'s record.
    pub fn read(&self, name: &str) -> Result<NodeRecord> {
        check_name(name)?;
        let path = self.record_path(name);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeError::NoSuchNode(name.to_string()))
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let record: NodeRecord =
            serde_json::from_slice(&text).map_err(|e| NodeError::BadRecord {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if record.version != RECORD_VERSION {
            return Err(NodeError::BadRecord {
                path,
                reason: format!(
                    "version {} (this build reads {RECORD_VERSION})",
                    record.version
                ),
            });
        }
        Ok(record)
    }

    /// Writes node `name`'s record atomically and durably (temporary file, fsync, rename, fsync of the
    /// directory).
    pub fn write(&self, record: &NodeRecord) -> Result<()> {
        check_name(&record.name)?;
        let dir = self.node_dir(&record.name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = self.record_path(&record.name);
        let tmp = dir.join(format!("node.json.tmp{}", std::process::id()));
        let body = serde_json::to_vec_pretty(record).map_err(|e| NodeError::BadRecord {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // 0600: the record may hold store URLs with passwords.
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(&body).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &dir))?;
        Ok(())
    }

    /// Every node's name, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let dir = self.root.join("nodes");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_ok() && self.exists(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> NodeRecord {
        NodeRecord {
            version: RECORD_VERSION,
            name: name.into(),
            image: "/x.img".into(),
            labels: BTreeMap::new(),
            layer_kind: LayerKind::Overlay,
            cache_dir: "/c".into(),
            cache_max_bytes: 1,
            stores: vec![],
            trust: None,
            identity: IdentityMode::Generate,
            command: vec![],
            restart: RestartPolicy::No,
            ports: BTreeMap::new(),
            state: NodeState::Created,
            supervisor: None,
            child: None,
            mount: None,
            enabled: false,
            logs: LogLimits::default(),
            stop_grace_secs: 30,
            started_at: None,
            ready_ms: None,
            restarts: 0,
            last_exit: None,
            created_at: 0,
        }
    }

    #[test]
    fn records_round_trip_and_liveness_comes_from_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("open");
        let mut r = record("val-1");
        state.write(&r).expect("write");
        assert_eq!(state.read("val-1").expect("read"), r);
        assert_eq!(state.names().expect("names"), vec!["val-1".to_string()]);
        assert_eq!(r.status(), Status::Stopped);
        // Running with a live supervisor (this process) is running; with a dead one, crashed.
        r.state = NodeState::Running;
        r.supervisor = ProcessStamp::current();
        assert_eq!(r.status(), Status::Running);
        if let Some(s) = r.supervisor.as_mut() {
            s.start_ticks += 1;
        }
        assert_eq!(r.status(), Status::Crashed);
        assert!(matches!(state.read("nope"), Err(NodeError::NoSuchNode(_))));
        assert!(check_name("../x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("node-1.a_b").is_ok());
    }
}
