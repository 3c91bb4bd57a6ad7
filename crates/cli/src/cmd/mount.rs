//! `thinnode mount`: lazy, verified, cached FUSE mount of an image: read-only, or writable with a write layer.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use mount::{CacheConfig, FetchConfig};
use mount::{MountConfig, MountedImage};
use units::parse_size;

/// Arguments of `thinnode mount`.
#[derive(clap::Args)]
pub struct Args {
    /// The image (manifest) file or flist (.fl, recognised by content), or an http(s):// URL of one
    /// (downloaded into CACHE/images/, kept by content hash; the last copy is used when the server is
    /// unreachable).
    image: PathBuf,
    /// An empty directory to mount it on.
    mountpoint: PathBuf,
    /// The host chunk cache, shared by every mount on the host.
    #[arg(long, env = "THINNODE_CACHE", default_value = mount::DEFAULT_CACHE_DIR)]
    cache: PathBuf,
    /// Size limit of the host cache (e.g. 50GiB, 512MiB, 100G); least recently used chunks are evicted.
    #[arg(long, default_value = "50GiB", value_parser = parse_size)]
    cache_size: u64,
    /// Require the image to be signed by this public key (file written by `thinnode key gen`).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Read chunks from this store instead of the ones recorded in the image (repeatable).
    #[arg(long = "store")]
    stores: Vec<String>,
    /// Run in the background; returns once the mount answers.
    #[arg(long)]
    daemon: bool,
    /// Log file of the background daemon (default: /var/log/thinnode/mount-<mountpoint>.log).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9101).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Record which chunks are read, in order, to this file (replay with `hydrate --trace`).
    #[arg(long)]
    record_trace: Option<PathBuf>,
    /// Seconds a read waits for the store (retries included) before failing with EIO.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Chunks prefetched ahead of a sequential reader.
    #[arg(long, default_value_t = 32)]
    readahead: u64,
    /// Threads fetching from the stores.
    #[arg(long, default_value_t = 16)]
    fetch_threads: usize,
    /// Threads answering FUSE requests.
    #[arg(long, default_value_t = 16)]
    fuse_threads: usize,
    /// Never serve files with FUSE passthrough (always read through the daemon).
    #[arg(long)]
    no_passthrough: bool,
    /// Do not fsync cache entries (faster on slow disks; entries may be lost on power failure).
    #[arg(long)]
    no_cache_sync: bool,
    /// Make the mount writable: keep this node's writes in the layer directory DIR (created if
    /// missing). The image itself is mounted read-only at DIR/lower.
    #[arg(long, value_name = "DIR")]
    layer: Option<PathBuf>,
    /// Kind of a new layer: `overlay` (kernel overlayfs; a written file is copied up whole) or `blocks`
    /// (only written blocks are kept; for databases that open files read-write, such as ParityDB).
    /// Default: the kind of the existing layer, else overlay.
    #[arg(long, value_name = "KIND", requires = "layer", value_parser = parse_layer_kind)]
    layer_kind: Option<layer::LayerKind>,
}

fn parse_layer_kind(s: &str) -> Result<layer::LayerKind, String> {
    match s {
        "overlay" => Ok(layer::LayerKind::Overlay),
        "blocks" => Ok(layer::LayerKind::Blocks),
        other => Err(format!("unknown layer kind {other:?} (overlay or blocks)")),
    }
}

/// Runs `thinnode mount`.
pub fn run(args: Args) -> anyhow::Result<()> {
    logging::init("info");

    if args.daemon {
        return run_detached(&args);
    }
    let result = mount_and_serve(args);
    if let Err(e) = &result {
        mount::notify_ready(Err(format!("{e:#}")));
    }
    result
}

fn run_detached(args: &Args) -> anyhow::Result<()> {
    let mountpoint = mount::absolute_mountpoint(&args.mountpoint)?;
    let log = args.log.clone().unwrap_or_else(|| {
        let name: String = mountpoint
            .to_string_lossy()
            .trim_matches('/')
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        PathBuf::from(format!("/var/log/thinnode/mount-{name}.log"))
    });
    let program = std::env::current_exe().context("locate the thinnode binary")?;
    let child_args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let started = Instant::now();
    let pid = mount::spawn_detached(&program, &child_args, &log)
        .with_context(|| format!("mount {}", mountpoint.display()))?;
    eprintln!(
        "mounted {} at {} (daemon pid {pid}, ready in {} ms, log {})",
        args.image.display(),
        mountpoint.display(),
        started.elapsed().as_millis(),
        log.display()
    );
    Ok(())
}

fn mount_and_serve(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    mount::install_shutdown_handler()?;
    let trusted_key = match &args.trust {
        Some(p) => Some(
            image::read_verifying_key(p)
                .with_context(|| format!("read trusted key {}", p.display()))?,
        ),
        None => None,
    };
    if !args.timeout.is_finite() || args.timeout <= 0.0 {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let image = super::remote::local_image(&args.image, &args.cache)?;
    let mut config = MountConfig::new(
        image,
        args.mountpoint.clone(),
        CacheConfig {
            dir: args.cache.clone(),
            max_bytes: args.cache_size,
            durable: !args.no_cache_sync,
        },
    );
    config.store_overrides = args.stores.clone();
    config.trusted_key = trusted_key;
    config.fetch = FetchConfig {
        workers: args.fetch_threads.max(1),
        timeout: Duration::from_secs_f64(args.timeout),
        ..FetchConfig::default()
    };
    config.readahead_chunks = args.readahead;
    config.metrics_addr = args.metrics;
    config.record_trace = args.record_trace.clone();
    config.passthrough = !args.no_passthrough;
    config.fuse_threads = args.fuse_threads.max(1);
    if let Some(layer_dir) = &args.layer {
        let kind = match (args.layer_kind, layer::LayerMetadata::read(layer_dir)) {
            (Some(k), _) => k,
            (None, Ok(meta)) => meta.kind,
            (None, Err(layer::Error::NotALayer(_))) => layer::LayerKind::Overlay,
            (None, Err(e)) => return Err(e).context("read the layer"),
        };
        let mounted = layer::LayeredMount::mount(config, layer_dir, kind, &args.mountpoint)
            .with_context(|| {
                format!(
                    "mount {} with {kind} layer {} on {}",
                    args.image.display(),
                    layer_dir.display(),
                    args.mountpoint.display()
                )
            })?;
        tracing::info!(
            "mounted {} read-write at {} ({kind} layer {}, ready in {} ms)",
            args.image.display(),
            mounted.target().display(),
            mounted.layer_dir().display(),
            started.elapsed().as_millis()
        );
        mount::notify_ready(Ok(()));
        node::notify_service_manager(true, "mounted");
        mounted.serve()?;
        return Ok(());
    }
    let mounted = MountedImage::mount(config).with_context(|| {
        format!(
            "mount {} on {}",
            args.image.display(),
            args.mountpoint.display()
        )
    })?;
    let metrics = mounted
        .metrics_addr()
        .map(|a| format!(", metrics on http://{a}/metrics"))
        .unwrap_or_default();
    tracing::info!(
        "mounted {} at {} (ready in {} ms{metrics})",
        args.image.display(),
        mounted.mountpoint().display(),
        started.elapsed().as_millis()
    );
    mount::notify_ready(Ok(()));
    node::notify_service_manager(true, "mounted");
    mounted.serve()?;
    Ok(())
}
