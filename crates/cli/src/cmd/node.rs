//! `thinnode node`: provision and run blockchain nodes from a base image (create, start, stop, ls, logs,
//! reset, promote, rm, enable, disable), each with its own write layer, identity, ports, logs and
//! supervisor.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use node::{
    LogLimits, NodeState, RestartPolicy, StateDir, DEFAULT_STATE_DIR, DEFAULT_UNIT_DIR,
    STATE_DIR_ENV, UNIT_DIR_ENV,
};

/// Arguments of `thinnode node`.
#[derive(clap::Args)]
pub struct Args {
    /// Where node state lives (records, layers, data directories, logs).
    #[arg(long, env = STATE_DIR_ENV, default_value = DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum LayerKindArg {
    /// Block-level copy-on-write (only written blocks are kept; needed for ParityDB).
    Blocks,
    /// Kernel overlayfs (whole files copied up on first write; good for RocksDB/LevelDB).
    Overlay,
}

impl From<LayerKindArg> for layer::LayerKind {
    fn from(k: LayerKindArg) -> Self {
        match k {
            LayerKindArg::Blocks => layer::LayerKind::Blocks,
            LayerKindArg::Overlay => layer::LayerKind::Overlay,
        }
    }
}

#[derive(clap::Subcommand)]
enum NodeCommand {
    /// Create a node from a base image: its write layer and its own network identity.
    Create(CreateArgs),
    /// Start a node: mount its data directory and run COMMAND under a supervisor.
    ///
    /// Placeholders in COMMAND: {data} (the merged data directory), {name}, {port:N} (a free TCP port
    /// chosen for this node, stable once chosen). Output goes to the node's log (`node logs`).
    /// Without COMMAND (and without --restart, --stop-grace, --log-size, --log-keep), the node starts
    /// with what it was last started with.
    Start(StartArgs),
    /// Stop a node: the command (SIGTERM, SIGKILL after the grace period), then its mounts.
    Stop {
        /// The node's name.
        name: String,
        /// Seconds to wait for the supervisor before killing it.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// List nodes: state, image, chain, height, layer kind and bytes, uptime, pid.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a node's log (its command's stdout and stderr).
    Logs {
        /// The node's name.
        name: String,
        /// Lines to show.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing what is appended.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Drop a stopped node's write layer: back to the base (its identity is kept).
    Reset {
        /// The node's name.
        name: String,
    },
    /// Pack a stopped node's base plus layer into a new image, uploading only new chunks.
    Promote(PromoteArgs),
    /// Remove a node (layer, identity, logs).
    Rm {
        /// The node's name.
        name: String,
        /// Stop it first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// Start a node at boot: link its systemd unit `thinnode-node@NAME.service` into
    /// multi-user.target.wants (writing the template unit when none is installed).
    Enable(UnitArgs),
    /// Stop starting a node at boot: remove its systemd unit link (a running node keeps running).
    Disable(UnitArgs),
    /// Run a node's supervisor (started by `node start`).
    #[command(hide = true)]
    Supervise {
        /// The node's name.
        name: String,
    },
}

/// Arguments of `thinnode node create`.
#[derive(clap::Args)]
struct CreateArgs {
    /// The node's name.
    name: String,
    /// The base image: an image or flist file, or an http(s):// URL of one (downloaded once into the
    /// cache; the node keeps that copy).
    #[arg(long)]
    image: PathBuf,
    /// The write layer kind.
    #[arg(long, value_enum, default_value = "overlay")]
    layer_kind: LayerKindArg,
    /// `generate` (a fresh network key for this node) or a key FILE to copy (32 raw bytes or 64 hex).
    #[arg(long, default_value = "generate")]
    identity: String,
    /// The host chunk cache, shared by every node on the host.
    #[arg(long, env = "THINNODE_CACHE", default_value = mount::DEFAULT_CACHE_DIR)]
    cache: PathBuf,
    /// Size limit of the host cache (e.g. 50GiB, 100G).
    #[arg(long, default_value = "50GiB", value_parser = units::parse_size)]
    cache_size: u64,
    /// Read chunks from this store instead of the ones recorded in the image (repeatable).
    #[arg(long = "store")]
    stores: Vec<String>,
    /// Require the image to be signed by this public key (checked now and at every mount).
    #[arg(long)]
    trust: Option<PathBuf>,
}

/// Arguments of `thinnode node start`.
#[derive(clap::Args)]
struct StartArgs {
    /// The node's name.
    name: String,
    /// When to restart the command: no, on-failure, always (with backoff). Under on-failure and
    /// always, a dead mount daemon is restarted too. Default: the last start's, else no.
    #[arg(long)]
    restart: Option<RestartPolicy>,
    /// Seconds the command gets to exit after SIGTERM before SIGKILL. Default: the last start's,
    /// else 30.
    #[arg(long)]
    stop_grace: Option<u64>,
    /// Size at which node.log and supervisor.log are rotated (e.g. 10MB). Default: the last
    /// start's, else 10MB.
    #[arg(long, value_parser = units::parse_size)]
    log_size: Option<u64>,
    /// Rotated log files kept (node.log.1 …). Default: the last start's, else 5.
    #[arg(long)]
    log_keep: Option<u32>,
    /// Run the supervisor in the foreground (for systemd: `Type=notify`, READY=1 once the command
    /// started) until the node stops; its log goes to stderr.
    #[arg(long)]
    foreground: bool,
    /// The node command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Arguments of `thinnode node promote`.
#[derive(clap::Args)]
struct PromoteArgs {
    /// The node's name.
    name: String,
    /// The new image file.
    #[arg(long)]
    out: PathBuf,
    /// Where chunks go (default: the base image's store).
    #[arg(long)]
    store: Option<String>,
    /// Sign the new image with this secret key.
    #[arg(long)]
    sign: Option<PathBuf>,
    /// Block height of the new image (label `height`).
    #[arg(long)]
    height: Option<u64>,
    /// Block hash at that height (label `block_hash`).
    #[arg(long)]
    block_hash: Option<String>,
    /// Leave node secrets (e.g. the node's own network key) out of the image instead of refusing.
    #[arg(long)]
    strip_secrets: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `thinnode node enable` and `disable`.
#[derive(clap::Args)]
struct UnitArgs {
    /// The node's name.
    name: String,
    /// The systemd unit directory to write to.
    #[arg(long, env = UNIT_DIR_ENV, default_value = DEFAULT_UNIT_DIR)]
    unit_dir: PathBuf,
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Prints what is appended to the log at `path` after `offset`, until interrupted (follows a
/// rotation: a file shorter than what was read is read from its start).
fn follow_log(path: &Path, mut offset: u64) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        let len = f.metadata()?.len();
        if len < offset {
            offset = 0;
        }
        if len > offset {
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            offset += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
}

/// Logging of `thinnode node`: a supervisor logs its life (to supervisor.log, or to stderr — the
/// journal — in the foreground); other commands print their own results and only warn.
fn init_logging(command: &NodeCommand) {
    let default_filter = match command {
        NodeCommand::Supervise { .. } => "info,fuser=error",
        NodeCommand::Start(a) if a.foreground => "info,fuser=error",
        _ => "warn,fuser=error",
    };
    logging::init(default_filter);
}

fn thinnode_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locate the thinnode binary")
}

/// Runs `thinnode node`.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging(&args.command);
    let state = StateDir::open(&args.state_dir)
        .with_context(|| format!("state directory {}", args.state_dir.display()))?;
    match args.command {
        NodeCommand::Create(a) => create(&state, a),
        NodeCommand::Start(a) => start(&state, a),
        NodeCommand::Stop { name, timeout } => stop(&state, &name, timeout),
        NodeCommand::Ls { json } => ls(&state, json),
        NodeCommand::Logs {
            name,
            lines,
            follow,
        } => logs(&state, &name, lines, follow),
        NodeCommand::Reset { name } => reset(&state, &name),
        NodeCommand::Promote(a) => promote(&state, a),
        NodeCommand::Rm { name, force } => {
            node::remove(&state, &name, force, Duration::from_secs(60))
                .with_context(|| format!("node rm {name}"))?;
            println!("node {name} removed");
            Ok(())
        }
        NodeCommand::Enable(a) => enable(&state, a),
        NodeCommand::Disable(a) => disable(&state, a),
        NodeCommand::Supervise { name } => {
            let opts = node::SuperviseOptions {
                exe: thinnode_exe()?,
                // The record holds the grace `node start` was given.
                grace: Duration::from_secs(state.read(&name)?.stop_grace_secs),
                owns_supervisor_log: true,
            };
            node::supervise(&state, &name, &opts)?;
            Ok(())
        }
    }
}

fn create(state: &StateDir, a: CreateArgs) -> anyhow::Result<()> {
    let name = a.name;
    let image = super::remote::local_image(&a.image, &a.cache)?;
    let opts = node::CreateOptions {
        name: name.clone(),
        image,
        layer_kind: a.layer_kind.into(),
        identity_file: (a.identity != "generate").then(|| PathBuf::from(&a.identity)),
        cache_dir: a.cache,
        cache_max_bytes: a.cache_size,
        stores: a.stores,
        trust: a.trust,
    };
    let (record, report) =
        node::create(state, &opts).with_context(|| format!("node create {name}"))?;
    println!(
        "node {name} created from {} ({} layer)",
        record.image.display(),
        record.layer_kind
    );
    for k in &report.keys_written {
        println!("  identity: new network key at {}", k.display());
    }
    for p in &report.peer_files_removed {
        println!("  identity: base peer state hidden: {}", p.display());
    }
    Ok(())
}

fn start(state: &StateDir, a: StartArgs) -> anyhow::Result<()> {
    let name = a.name;
    let logs = match (a.log_size, a.log_keep) {
        (None, None) => None,
        (size, keep) => {
            let recorded = state.read(&name).map(|r| r.logs).unwrap_or_default();
            Some(LogLimits {
                max_bytes: size.unwrap_or(recorded.max_bytes),
                keep: keep.unwrap_or(recorded.keep),
            })
        }
    };
    let opts = node::StartOptions {
        command: a.command,
        restart: a.restart,
        stop_grace: a.stop_grace.map(Duration::from_secs),
        logs,
        foreground: a.foreground,
    };
    let record = node::start(state, &name, &opts, &thinnode_exe()?)
        .with_context(|| format!("node start {name}"))?;
    if a.foreground {
        let how = record.last_exit.as_deref().unwrap_or("stopped");
        if record.state == NodeState::Failed {
            anyhow::bail!("node {name} failed: {how}");
        }
        eprintln!("node {name} stopped ({how})");
        return Ok(());
    }
    let pid = record.child.as_ref().map(|c| c.pid).unwrap_or(0);
    let ports: Vec<String> = record
        .ports
        .iter()
        .map(|(k, v)| format!("port:{k}={v}"))
        .collect();
    println!(
        "node {name} running (pid {pid}, data {}, ready in {} ms{}{})",
        state.data_dir(&name).display(),
        record.ready_ms.unwrap_or(0),
        if ports.is_empty() { "" } else { ", " },
        ports.join(" ")
    );
    Ok(())
}

fn stop(state: &StateDir, name: &str, timeout: u64) -> anyhow::Result<()> {
    let record = node::stop(state, name, Duration::from_secs(timeout))
        .with_context(|| format!("node stop {name}"))?;
    println!(
        "node {name} stopped ({})",
        record.last_exit.as_deref().unwrap_or("not running")
    );
    Ok(())
}

fn ls(state: &StateDir, json: bool) -> anyhow::Result<()> {
    let nodes = node::list(state)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:<24} {:<16} {:>8} {:<8} {:>11} {:>8} {:>8}",
        "NAME", "STATE", "IMAGE", "CHAIN", "HEIGHT", "LAYER", "LAYER BYTES", "UPTIME", "PID"
    );
    for n in nodes {
        let image = n
            .image
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{:<16} {:<8} {:<24} {:<16} {:>8} {:<8} {:>11} {:>8} {:>8}",
            n.name,
            n.state.to_string(),
            image,
            n.chain.as_deref().unwrap_or("-"),
            n.height.as_deref().unwrap_or("-"),
            n.layer_kind,
            n.layer_bytes
                .map(units::format_size)
                .unwrap_or_else(|| "-".into()),
            n.uptime_secs
                .map(human_duration)
                .unwrap_or_else(|| "-".into()),
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

fn logs(state: &StateDir, name: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
    state.read(name)?;
    let path = state.log_path(name);
    let (text, offset) = node::tail(&path, lines)?;
    let mut out = std::io::stdout();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    if follow {
        follow_log(&path, offset)?;
    }
    Ok(())
}

fn reset(state: &StateDir, name: &str) -> anyhow::Result<()> {
    let report = node::reset(state, name).with_context(|| format!("node reset {name}"))?;
    println!(
        "node {name} reset to its base ({} identity keys re-applied)",
        report.keys_written.len()
    );
    Ok(())
}

fn promote(state: &StateDir, a: PromoteArgs) -> anyhow::Result<()> {
    let name = a.name;
    let signer = super::key::read_signer(a.sign.as_deref())?;
    let mut labels = Vec::new();
    if let Some(h) = a.height {
        labels.push(("height".to_string(), h.to_string()));
    }
    if let Some(h) = a.block_hash {
        labels.push(("block_hash".to_string(), h));
    }
    let opts = node::PromoteOptions {
        out: a.out.clone(),
        store_url: a.store,
        signer,
        labels,
        strip_secrets: a.strip_secrets,
    };
    let progress = crate::cmd::base::progress_bar();
    let summary = node::promote(state, &name, &opts, Some(&progress))
        .with_context(|| format!("node promote {name}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let p = &summary.pack;
        println!(
            "image {} from node {name}: {} of {} logical uploaded ({} new chunks of {}) to {}",
            a.out.display(),
            units::format_size(p.bytes_uploaded),
            units::format_size(p.logical_bytes),
            p.chunks_new,
            p.chunks_unique,
            summary.store
        );
    }
    Ok(())
}

/// Whether systemd runs this host (then `systemctl` picks up what `enable` wrote).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn enable(state: &StateDir, a: UnitArgs) -> anyhow::Result<()> {
    let name = a.name;
    let change = node::enable(state, &name, &a.unit_dir, &thinnode_exe()?)
        .with_context(|| format!("node enable {name}"))?;
    if change.template_written {
        println!("wrote {}", change.template.display());
    }
    if let Some(d) = &change.drop_in {
        println!("wrote {}", d.display());
    }
    println!(
        "node {name} enabled: {} -> {}",
        change.link.display(),
        change.template.display()
    );
    if systemd_running() {
        println!("run `systemctl daemon-reload` to load it now (it starts at the next boot)");
    }
    Ok(())
}

fn disable(state: &StateDir, a: UnitArgs) -> anyhow::Result<()> {
    let name = a.name;
    let change =
        node::disable(state, &name, &a.unit_dir).with_context(|| format!("node disable {name}"))?;
    println!("node {name} disabled: removed {}", change.link.display());
    if systemd_running() {
        println!("run `systemctl daemon-reload`; a running node keeps running until `node stop`");
    }
    Ok(())
}
