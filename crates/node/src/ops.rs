//! The node lifecycle: create, start (a detached supervisor), stop, list, reset, promote, remove.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use layer::{LayerKind, LayeredMount};

use crate::base;
use crate::command::port_placeholders;
use crate::error::{io_err, NodeError, Result};
use crate::identity::{self, NetworkKey, SUBSTRATE_KEY_FILE};
use crate::logs::LogLimits;
use crate::mountd::clear_mounts;
use crate::scan;
use crate::state::{
    check_name, now_secs, IdentityMode, NodeRecord, NodeState, RestartPolicy, StateDir, Status,
    RECORD_VERSION,
};
use crate::supervisor::{supervise, SuperviseOptions};

/// Default time the node command gets after SIGTERM before SIGKILL.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);

/// What `node create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The node's name.
    pub name: String,
    /// The base image.
    pub image: PathBuf,
    /// The kind of write layer.
    pub layer_kind: LayerKind,
    /// The network identity: `None` generates one; `Some(file)` copies that key.
    pub identity_file: Option<PathBuf>,
    /// The host chunk cache.
    pub cache_dir: PathBuf,
    /// The host cache's size limit in bytes.
    pub cache_max_bytes: u64,
    /// Stores to read from instead of the image's.
    pub stores: Vec<String>,
    /// The public key the image must be signed by (checked at create and at every mount).
    pub trust: Option<PathBuf>,
}

/// What `node ls` shows about one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its state now.
    pub state: Status,
    /// The base image.
    pub image: PathBuf,
    /// The base image's chain label.
    pub chain: Option<String>,
    /// The base image's height label.
    pub height: Option<String>,
    /// The layer kind.
    pub layer_kind: String,
    /// Bytes the write layer uses on disk (None when it cannot be measured).
    pub layer_bytes: Option<u64>,
    /// Seconds since the supervisor started, while running.
    pub uptime_secs: Option<u64>,
    /// The node command's process id, while running.
    pub pid: Option<u32>,
    /// The supervisor's process id, while running.
    pub supervisor_pid: Option<u32>,
    /// The merged data directory.
    pub data_dir: PathBuf,
    /// Ports chosen for `{port:N}`.
    pub ports: BTreeMap<String, u16>,
    /// Restarts since the last start.
    pub restarts: u32,
    /// How the command last ended, or why the node failed.
    pub last_exit: Option<String>,
    /// Milliseconds from `node start` to the command being started.
    pub ready_ms: Option<u64>,
    /// The mount daemon's process id, while running.
    pub mount_pid: Option<u32>,
    /// Whether the node starts at boot (`node enable`).
    pub enabled: bool,
}

/// After a supervisor died (kill -9, reboot): ends the command it left (if it still runs) and the
/// mounts, and records the node as crashed-then-stopped. Does nothing to a running node.
fn clean_after_crash(state: &StateDir, record: &mut NodeRecord) -> Result<()> {
    if record.status() == Status::Running {
        return Ok(());
    }
    if let Some(child) = record.child.take() {
        if child.is_alive() {
            child.terminate(Duration::from_secs(10));
        }
    }
    // The kernel sends a mount daemon SIGTERM when its supervisor dies; it may still be unmounting.
    if let Some(mount) = record.mount.take() {
        if mount.is_alive() && !mount.wait_gone(Duration::from_secs(30)) {
            mount.signal(nix::sys::signal::Signal::SIGKILL);
            mount.wait_gone(Duration::from_secs(5));
        }
    }
    clear_mounts(state, &record.name)?;
    if record.status() == Status::Crashed {
        record.state = NodeState::Stopped;
        record.last_exit = Some("the supervisor died; cleaned up".into());
        record.supervisor = None;
        state.write(record)?;
    }
    Ok(())
}

/// The mount settings of a node (its image, host cache, stores, and the key its image must be signed
/// by, when it has one), for mounts made in this process.
fn mount_config(record: &NodeRecord) -> Result<mount::MountConfig> {
    let mut config = mount::MountConfig::new(
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

/// Mounts the node's data directory in this process (for create, reset and promote).
fn mount_here(state: &StateDir, record: &NodeRecord) -> Result<LayeredMount> {
    let data = state.data_dir(&record.name);
    fs::create_dir_all(&data).map_err(io_err("create", &data))?;
    Ok(LayeredMount::mount(
        mount_config(record)?,
        &state.layer_dir(&record.name),
        record.layer_kind,
        &data,
    )?)
}

/// The node's identity key file (in its state directory).
fn identity_key_path(state: &StateDir, name: &str) -> PathBuf {
    state.identity_dir(name).join(SUBSTRATE_KEY_FILE)
}

/// Gives the mounted node its identity (see [`identity::apply`]).
fn apply_identity(
    state: &StateDir,
    record: &NodeRecord,
    data: &Path,
) -> Result<identity::IdentityReport> {
    let key = NetworkKey::read(&identity_key_path(state, &record.name))?;
    identity::apply(data, &key)
}

/// Creates a node: its record, its identity key, and its write layer with the identity applied (the
/// data directory is mounted once for that and unmounted again).
pub fn create(
    state: &StateDir,
    opts: &CreateOptions,
) -> Result<(NodeRecord, identity::IdentityReport)> {
    check_name(&opts.name)?;
    let _lock = state.lock(&opts.name)?;
    if state.exists(&opts.name) {
        return Err(NodeError::NodeExists(opts.name.clone()));
    }
    let created = create_locked(state, opts);
    if created.is_err() && !state.exists(&opts.name) {
        // Leave nothing half-made behind (only once nothing is mounted inside).
        if clear_mounts(state, &opts.name).is_ok() {
            let _ = fs::remove_dir_all(state.node_dir(&opts.name));
        }
    }
    created
}

fn create_locked(
    state: &StateDir,
    opts: &CreateOptions,
) -> Result<(NodeRecord, identity::IdentityReport)> {
    let image_path = fs::canonicalize(&opts.image).map_err(io_err("resolve", &opts.image))?;
    let manifest = image::ImageManifest::open(&image_path)?;
    let trust = match &opts.trust {
        Some(path) => {
            let key = image::read_verifying_key(path)?;
            manifest.verify_signature(&key)?;
            Some(fs::canonicalize(path).map_err(io_err("resolve", path))?)
        }
        None => None,
    };
    let key = match &opts.identity_file {
        Some(file) => NetworkKey::read(file)?,
        None => NetworkKey::generate(),
    };
    let record = NodeRecord {
        version: RECORD_VERSION,
        name: opts.name.clone(),
        image: image_path,
        labels: manifest.labels().into_iter().collect(),
        layer_kind: opts.layer_kind,
        cache_dir: std::path::absolute(&opts.cache_dir).unwrap_or(opts.cache_dir.clone()),
        cache_max_bytes: opts.cache_max_bytes,
        stores: opts.stores.clone(),
        trust,
        identity: match &opts.identity_file {
            Some(f) => IdentityMode::File(std::path::absolute(f).unwrap_or(f.clone())),
            None => IdentityMode::Generate,
        },
        command: Vec::new(),
        restart: RestartPolicy::No,
        ports: BTreeMap::new(),
        state: NodeState::Created,
        supervisor: None,
        child: None,
        mount: None,
        enabled: false,
        logs: LogLimits::default(),
        stop_grace_secs: DEFAULT_STOP_GRACE.as_secs(),
        started_at: None,
        ready_ms: None,
        restarts: 0,
        last_exit: None,
        created_at: now_secs(),
    };
    key.write(&identity_key_path(state, &opts.name))?;
    let mounted = mount_here(state, &record)?;
    let report = apply_identity(state, &record, mounted.target());
    let unmounted = mounted.unmount();
    let report = report?;
    unmounted?;
    state.write(&record)?;
    Ok((record, report))
}

/// A free TCP port on the loopback interface that no other node has recorded.
fn choose_port(taken: &[u16]) -> Result<u16> {
    for _ in 0..100 {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(io_err("bind", Path::new("127.0.0.1:0")))?;
        let port = listener
            .local_addr()
            .map_err(io_err("bind", Path::new("127.0.0.1:0")))?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err(NodeError::BadArgument("no free TCP port found".into()))
}

/// What `node start` is asked to do. Everything left `None` is taken from the node's last start.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The node command (placeholders not yet filled in); empty: the recorded one.
    pub command: Vec<String>,
    /// The restart policy; `None`: the recorded one.
    pub restart: Option<RestartPolicy>,
    /// How long the command gets after SIGTERM before SIGKILL; `None`: the recorded one.
    pub stop_grace: Option<Duration>,
    /// Rotation of `node.log` and `supervisor.log`; `None`: the recorded one.
    pub logs: Option<LogLimits>,
    /// Run the supervisor in this process (for a service manager) instead of detached.
    pub foreground: bool,
}

/// Starts node `name`: records the command and settings (choosing ports for new `{port:N}`
/// placeholders), then runs its supervisor. Detached (`exe node --state-dir S supervise NAME`, output to
/// `supervisor.log`), it returns once the supervisor reports the data directory mounted and the command
/// started, or with its error. In the foreground it returns when the node has stopped, with the final
/// record.
pub fn start(state: &StateDir, name: &str, opts: &StartOptions, exe: &Path) -> Result<NodeRecord> {
    let lock = state.lock(name)?;
    let mut record = state.read(name)?;
    if record.status() == Status::Running {
        return Err(NodeError::Running(name.to_string()));
    }
    clean_after_crash(state, &mut record)?;
    record_start(state, &mut record, opts)?;
    let grace = Duration::from_secs(record.stop_grace_secs);
    if opts.foreground {
        // `node stop` takes the lock: it must be free while the supervisor runs.
        drop(lock);
        let supervise_opts = SuperviseOptions {
            exe: exe.to_path_buf(),
            grace,
            owns_supervisor_log: false,
        };
        return supervise(state, name, &supervise_opts);
    }
    let args: Vec<OsString> = vec![
        "node".into(),
        "--state-dir".into(),
        state.root().as_os_str().to_owned(),
        "supervise".into(),
        name.into(),
    ];
    let started = Instant::now();
    if let Err(e) = mount::spawn_detached(exe, &args, &state.supervisor_log_path(name)) {
        let mut record = state.read(name)?;
        if record.state != NodeState::Failed {
            record.state = NodeState::Failed;
            record.last_exit = Some(e.to_string());
            state.write(&record)?;
        }
        return Err(NodeError::Supervisor {
            name: name.to_string(),
            reason: e.to_string(),
        });
    }
    let mut record = state.read(name)?;
    record.ready_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    Ok(record)
}

/// Writes what a start was given (command, ports, policy, limits) into the record, state `Starting`.
fn record_start(state: &StateDir, record: &mut NodeRecord, opts: &StartOptions) -> Result<()> {
    if !opts.command.is_empty() {
        record.command = opts.command.clone();
    }
    if record.command.is_empty() {
        return Err(NodeError::BadArgument(
            "no command given: node start NAME -- COMMAND ARGS…".into(),
        ));
    }
    let mut taken: Vec<u16> = Vec::new();
    for other in state.names()? {
        if other != record.name {
            if let Ok(r) = state.read(&other) {
                taken.extend(r.ports.values());
            }
        }
    }
    for index in port_placeholders(&record.command)? {
        if let std::collections::btree_map::Entry::Vacant(slot) = record.ports.entry(index) {
            let port = choose_port(&taken)?;
            taken.push(port);
            slot.insert(port);
        }
    }
    if let Some(restart) = opts.restart {
        record.restart = restart;
    }
    if let Some(grace) = opts.stop_grace {
        record.stop_grace_secs = grace.as_secs();
    }
    if let Some(logs) = opts.logs {
        record.logs = logs;
    }
    record.state = NodeState::Starting;
    record.supervisor = None;
    record.child = None;
    record.mount = None;
    record.last_exit = None;
    state.write(record)
}

/// Stops node `name`: asks its supervisor to stop the command and unmount, waits for it (SIGKILL
/// after `timeout`), and cleans up after a supervisor that died. Returns the final record.
pub fn stop(state: &StateDir, name: &str, timeout: Duration) -> Result<NodeRecord> {
    let _lock = state.lock(name)?;
    let mut record = state.read(name)?;
    if let Some(sup) = record.supervisor.clone() {
        if record.status() == Status::Running {
            sup.signal(nix::sys::signal::Signal::SIGTERM);
            if !sup.wait_gone(timeout) {
                tracing::warn!("supervisor of {name} did not stop in {timeout:?}; killing it");
                sup.signal(nix::sys::signal::Signal::SIGKILL);
                sup.wait_gone(Duration::from_secs(5));
            }
            record = state.read(name)?;
        }
    }
    clean_after_crash(state, &mut record)?;
    if matches!(record.state, NodeState::Running | NodeState::Starting) {
        record.state = NodeState::Stopped;
        record.supervisor = None;
        record.child = None;
        state.write(&record)?;
    }
    Ok(record)
}

/// The pid of a recorded process of a running node, while that process lives.
fn live_pid(running: bool, process: &Option<crate::process::ProcessStamp>) -> Option<u32> {
    process
        .as_ref()
        .filter(|p| running && p.is_alive())
        .map(|p| p.pid)
}

/// What `node ls` shows about node `name`.
pub fn info(state: &StateDir, record: &NodeRecord) -> NodeInfo {
    let status = record.status();
    let running = status == Status::Running;
    NodeInfo {
        name: record.name.clone(),
        state: status,
        image: record.image.clone(),
        chain: record.labels.get("chain").cloned(),
        height: record.labels.get("height").cloned(),
        layer_kind: record.layer_kind.to_string(),
        layer_bytes: layer::du(&state.layer_dir(&record.name))
            .ok()
            .map(|u| u.allocated_bytes),
        uptime_secs: record.uptime_secs(),
        pid: live_pid(running, &record.child),
        supervisor_pid: if running {
            record.supervisor.as_ref().map(|s| s.pid)
        } else {
            None
        },
        data_dir: state.data_dir(&record.name),
        ports: record.ports.clone(),
        restarts: record.restarts,
        last_exit: record.last_exit.clone(),
        ready_ms: record.ready_ms,
        mount_pid: live_pid(running, &record.mount),
        enabled: record.enabled,
    }
}

/// Every node, as `node ls` shows them.
pub fn list(state: &StateDir) -> Result<Vec<NodeInfo>> {
    let mut out = Vec::new();
    for name in state.names()? {
        let record = state.read(&name)?;
        out.push(info(state, &record));
    }
    Ok(out)
}

/// Reads a stopped node's record (cleaning up after a dead supervisor); errors when it runs.
fn stopped_record(state: &StateDir, name: &str) -> Result<NodeRecord> {
    let mut record = state.read(name)?;
    if record.status() == Status::Running {
        return Err(NodeError::Running(name.to_string()));
    }
    clean_after_crash(state, &mut record)?;
    Ok(record)
}

/// Drops a stopped node's write layer (back to the base), then gives it its identity again.
pub fn reset(state: &StateDir, name: &str) -> Result<identity::IdentityReport> {
    let _lock = state.lock(name)?;
    let record = stopped_record(state, name)?;
    let layer_dir = state.layer_dir(name);
    if layer::LayerMetadata::read(&layer_dir).is_ok() {
        layer::reset(&layer_dir)?;
    }
    let mounted = mount_here(state, &record)?;
    let report = apply_identity(state, &record, mounted.target());
    let unmounted = mounted.unmount();
    let report = report?;
    unmounted?;
    Ok(report)
}

/// What `node promote` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct PromoteOptions {
    /// The new image file.
    pub out: PathBuf,
    /// Where chunks go (default: the base image's store).
    pub store_url: Option<String>,
    /// Key to sign the new image with.
    pub signer: Option<SigningKey>,
    /// Labels to set (replacing the base's of the same key); the base's height and block hash are
    /// dropped unless given here.
    pub labels: Vec<(String, String)>,
    /// Leave node secrets (the node's own network key, wallets, …) out of the new image instead of
    /// refusing.
    pub strip_secrets: bool,
}

/// What `node promote` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PromoteSummary {
    /// The pack summary (`chunks_new` / `bytes_uploaded`: only what the store lacked).
    pub pack: image::PackSummary,
    /// The store the chunks went to.
    pub store: String,
    /// The labels recorded.
    pub labels: Vec<(String, String)>,
    /// Secrets left out (with `strip_secrets`).
    pub stripped: Vec<scan::Secret>,
}

/// Packs a stopped node's base plus layer (its merged view, mounted here) into a new image, uploading
/// only the chunks the store lacks. Refuses when the merged view holds node secrets, unless
/// `strip_secrets` (then they are left out).
pub fn promote(
    state: &StateDir,
    name: &str,
    opts: &PromoteOptions,
    progress: Option<&dyn image::PackProgress>,
) -> Result<PromoteSummary> {
    let _lock = state.lock(name)?;
    let record = stopped_record(state, name)?;
    let manifest = image::ImageManifest::open(&record.image)?;
    let image_stores = if record.stores.is_empty() {
        manifest.stores()
    } else {
        record.stores.clone()
    };
    let store_url = match &opts.store_url {
        Some(url) => url.clone(),
        None => match image_stores.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(NodeError::BadArgument(
                    "the base image does not record exactly one store; pass --store".into(),
                ))
            }
        },
    };
    let mut labels: BTreeMap<String, String> = record.labels.clone();
    labels.remove("height");
    labels.remove("block_hash");
    labels.insert("promoted_from".into(), name.to_string());
    labels.extend(opts.labels.iter().cloned());
    let labels: Vec<(String, String)> = labels.into_iter().collect();
    let store = store::open(&store_url)?;
    let mounted = mount_here(state, &record)?;
    let packed = (|| -> Result<(image::PackSummary, Vec<scan::Secret>)> {
        let data = mounted.target();
        let secrets = scan::find_secrets(data, &[])?;
        if !opts.strip_secrets {
            base::refuse_secrets(data, &secrets)?;
        }
        let pack_opts = image::PackOptions {
            exclude: secrets.iter().map(|s| s.relative.clone()).collect(),
            signer: opts.signer.clone(),
            labels: labels.clone(),
            // The base's chunks are known to be in its store: skip their existence checks there.
            base: image_stores
                .iter()
                .any(|s| *s == store.public_url())
                .then(|| record.image.clone()),
            ..Default::default()
        };
        let pack = image::pack(data, store.as_ref(), &opts.out, &pack_opts, progress)?;
        Ok((pack, secrets))
    })();
    let unmounted = mounted.unmount();
    let (pack, stripped) = packed?;
    unmounted?;
    Ok(PromoteSummary {
        pack,
        store: store.public_url(),
        labels,
        stripped,
    })
}

/// Removes a node (its layer, identity and logs). A running node is refused unless `force`, which
/// stops it first.
pub fn remove(state: &StateDir, name: &str, force: bool, timeout: Duration) -> Result<()> {
    let record = state.read(name)?;
    if record.status() == Status::Running {
        if !force {
            return Err(NodeError::Running(name.to_string()));
        }
        stop(state, name, timeout)?;
    }
    let _lock = state.lock(name)?;
    let mut record = state.read(name)?;
    clean_after_crash(state, &mut record)?;
    let data = state.data_dir(name);
    let lower = state.layer_dir(name).join(layer::LOWER_DIR);
    for path in [&data, &lower] {
        if mount::is_mountpoint(path) {
            return Err(NodeError::Invalid {
                name: name.to_string(),
                reason: format!("{} is still mounted; not removing anything", path.display()),
            });
        }
    }
    let dir = state.node_dir(name);
    fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))
}
