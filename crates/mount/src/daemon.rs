//! A mounted image served by this process: mounting (ready only when the mountpoint answers), kernel
//! readahead, serving until a shutdown signal or an external unmount, and a clean unmount.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use image::ImageManifest;
use store::ChunkStore;

use crate::cache::{CacheConfig, HostCache};
use crate::engine::BaseReader;
use crate::error::{io_ctx, MountError};
use crate::fetch::{FetchConfig, Fetcher};
use crate::fs::ImageFs;
use crate::metrics::{self, Metrics};
use crate::mountpoint::{
    absolute_mountpoint, clean_stale_mount, is_mountpoint, pid_alive, set_read_ahead, READ_AHEAD_KB,
};
use crate::records::{prune_dead_records, read_record, remove_record, write_record, MountRecord};
use crate::signals::shutdown_requested;
use crate::trace::TraceRecorder;

/// How long an unmount waits for the FUSE session of a busy (lazily detached) mount to end.
const SESSION_END_GRACE: Duration = Duration::from_secs(5);

/// Everything `mount` needs.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The image file.
    pub image: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// The host cache.
    pub cache: CacheConfig,
    /// Store URLs to use instead of the ones recorded in the image (empty: use the recorded ones).
    pub store_overrides: Vec<String>,
    /// When given, the image must carry a valid signature by this key.
    pub trusted_key: Option<VerifyingKey>,
    /// Fetcher settings.
    pub fetch: FetchConfig,
    /// Chunks prefetched ahead of a sequential reader.
    pub readahead_chunks: u64,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// Record an access trace here.
    pub record_trace: Option<PathBuf>,
    /// Serve sealed (complete, verified) files with FUSE passthrough.
    pub passthrough: bool,
    /// FUSE request threads (each can wait on one fetch).
    pub fuse_threads: usize,
}

impl MountConfig {
    /// Defaults for everything but the image, mountpoint and cache.
    pub fn new(image: PathBuf, mountpoint: PathBuf, cache: CacheConfig) -> MountConfig {
        MountConfig {
            image,
            mountpoint,
            cache,
            store_overrides: Vec::new(),
            trusted_key: None,
            fetch: FetchConfig::default(),
            readahead_chunks: 32,
            metrics_addr: None,
            record_trace: None,
            passthrough: true,
            fuse_threads: 16,
        }
    }
}

/// Opens the image at `path`, verifying its signature against `trusted` when given.
pub fn open_image(
    path: &Path,
    trusted: Option<&VerifyingKey>,
) -> Result<ImageManifest, MountError> {
    let image_err = |error| MountError::Image {
        path: path.to_path_buf(),
        error,
    };
    let manifest = ImageManifest::open(path).map_err(image_err)?;
    if let Some(key) = trusted {
        manifest.verify_signature(key).map_err(image_err)?;
    }
    Ok(manifest)
}

/// The stores a mount reads from: `overrides` when given, else the URLs recorded in the image. A store
/// that cannot be reached now is opened anyway and tried on each use (`store::open_lazy`), so a node
/// whose image is cached starts while its store is down; a URL that does not parse is an error.
pub fn open_stores(
    recorded: &[String],
    overrides: &[String],
) -> Result<Vec<Arc<dyn ChunkStore>>, MountError> {
    let urls = if overrides.is_empty() {
        recorded
    } else {
        overrides
    };
    urls.iter()
        .map(|url| {
            store::open_lazy(url).map_err(|error| MountError::Store {
                url: store::redact_url(url),
                error,
            })
        })
        .collect()
}

/// Makes the C allocator keep freed chunk-sized buffers for reuse instead of returning them to the
/// kernel: every fetched chunk is decoded into a fresh 1 MiB-scale buffer, and with glibc's adaptive
/// defaults those buffers are often unmapped and mapped again, so each chunk paid page faults and
/// page zeroing (a measured cost on a cold read; docs/notes/2026-12-03-mount-history.md).
fn keep_freed_chunk_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tunables; it is called before the mount's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Refuses a mountpoint that is not a directory or is served by a live thinnode mount; detaches a dead
/// mount left there.
fn check_mountpoint(mountpoint: &Path) -> Result<(), MountError> {
    clean_stale_mount(mountpoint)?;
    let meta = fs::metadata(mountpoint).map_err(|e| MountError::Mountpoint {
        path: mountpoint.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(MountError::Mountpoint {
            path: mountpoint.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    if let Some(rec) = read_record(mountpoint) {
        if pid_alive(rec.pid) && is_mountpoint(mountpoint) {
            return Err(MountError::Mountpoint {
                path: mountpoint.to_path_buf(),
                reason: format!("already mounted by process {}", rec.pid),
            });
        }
    }
    Ok(())
}

/// The read engine of a mount of `image` (stores, host cache, fetcher, trace), and where its metrics
/// are served.
fn read_engine(
    image: &Path,
    config: &MountConfig,
) -> Result<(Arc<BaseReader>, Option<SocketAddr>), MountError> {
    let manifest = Arc::new(open_image(image, config.trusted_key.as_ref())?);
    let stores = open_stores(&manifest.stores(), &config.store_overrides)?;
    if stores.is_empty() {
        return Err(MountError::NoStore);
    }
    let cache = HostCache::open(&config.cache)?;
    let metrics = Arc::new(Metrics::new());
    let metrics_addr = match config.metrics_addr {
        Some(addr) => Some(
            metrics::serve(Arc::clone(&metrics), addr)
                .map_err(io_ctx(format!("serve metrics on {addr}")))?,
        ),
        None => None,
    };
    let fetcher = Arc::new(Fetcher::new(
        stores,
        cache,
        Arc::clone(&metrics),
        config.fetch.clone(),
    ));
    let trace = match &config.record_trace {
        Some(p) => Some(TraceRecorder::create(p)?),
        None => None,
    };
    let reader = Arc::new(BaseReader::new(
        manifest,
        fetcher,
        config.readahead_chunks,
        trace,
    ));
    Ok((reader, metrics_addr))
}

/// Mounts `fs` at `mountpoint` and serves it on a session thread with `threads` request threads.
fn start_session(
    fs: ImageFs,
    image: &Path,
    mountpoint: &Path,
    threads: usize,
) -> Result<(SessionUnmounter, JoinHandle<io::Result<()>>), MountError> {
    let mut fuse_config = Config::default();
    fuse_config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("thinnode:{}", image.display())),
        MountOption::Subtype("thinnode".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    fuse_config.acl = SessionACL::All;
    fuse_config.n_threads = Some(threads.max(1));
    fuse_config.clone_fd = true;
    let mut session = Session::new(fs, mountpoint, &fuse_config)
        .map_err(io_ctx(format!("mount {}", mountpoint.display())))?;
    let unmounter = session.unmount_callable();
    let handle = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || session.run())
        .map_err(io_ctx("start the FUSE session"))?;
    Ok((unmounter, handle))
}

/// A mounted image being served by this process.
pub struct MountedImage {
    mountpoint: PathBuf,
    unmounter: SessionUnmounter,
    session: Option<JoinHandle<io::Result<()>>>,
    metrics: Arc<Metrics>,
    metrics_addr: Option<SocketAddr>,
    fetcher: Arc<Fetcher>,
    reader: Arc<BaseReader>,
}

impl std::fmt::Debug for MountedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedImage")
            .field("mountpoint", &self.mountpoint)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl MountedImage {
    /// Mounts the image and returns once the mountpoint answers (kernel readahead already set).
    pub fn mount(config: MountConfig) -> Result<MountedImage, MountError> {
        let mountpoint = absolute_mountpoint(&config.mountpoint)?;
        keep_freed_chunk_memory();
        prune_dead_records();
        check_mountpoint(&mountpoint)?;
        let image = std::path::absolute(&config.image)
            .map_err(io_ctx(format!("resolve {}", config.image.display())))?;
        let (reader, metrics_addr) = read_engine(&image, &config)?;
        let fetcher = Arc::clone(reader.fetcher());
        let metrics = Arc::clone(fetcher.metrics());
        let fs = ImageFs::new(Arc::clone(&reader), config.passthrough);
        let (unmounter, handle) = start_session(fs, &image, &mountpoint, config.fuse_threads)?;
        let mut mounted = MountedImage {
            mountpoint: mountpoint.clone(),
            unmounter,
            session: Some(handle),
            metrics,
            metrics_addr,
            fetcher,
            reader,
        };
        if let Err(e) = mounted.wait_ready(Duration::from_secs(10)) {
            let _ = mounted.stop();
            return Err(e);
        }
        if let Err(e) = set_read_ahead(&mountpoint, READ_AHEAD_KB) {
            tracing::warn!("cannot raise kernel readahead: {e}");
        }
        write_record(&MountRecord {
            pid: std::process::id(),
            image,
            mountpoint,
            cache_dir: std::path::absolute(&config.cache.dir)
                .unwrap_or_else(|_| config.cache.dir.clone()),
            cache_max_bytes: config.cache.max_bytes,
            store_overrides: config.store_overrides.clone(),
            metrics_addr,
            stacked_on: None,
        })?;
        Ok(mounted)
    }

    /// Waits until a stat of the mountpoint is answered by this filesystem.
    fn wait_ready(&self, timeout: Duration) -> Result<(), MountError> {
        let parent = self.mountpoint.parent().unwrap_or(Path::new("/"));
        let parent_dev = fs::metadata(parent)
            .map_err(io_ctx(format!("stat {}", parent.display())))?
            .dev();
        let start = Instant::now();
        loop {
            if let Ok(m) = fs::metadata(&self.mountpoint) {
                if m.dev() != parent_dev {
                    return Ok(());
                }
            }
            if self.session.as_ref().is_none_or(|h| h.is_finished()) {
                return Err(MountError::Mountpoint {
                    path: self.mountpoint.clone(),
                    reason: "the FUSE session ended before the mount answered".into(),
                });
            }
            if start.elapsed() > timeout {
                return Err(MountError::Mountpoint {
                    path: self.mountpoint.clone(),
                    reason: format!("the mount did not answer within {timeout:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The mountpoint (absolute).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The mount's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where metrics are served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The fetcher serving this mount.
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// The read engine serving this mount (for in-process readers of the same image, such as a blocks
    /// write layer stacked on it).
    pub fn reader(&self) -> &Arc<BaseReader> {
        &self.reader
    }

    /// Serves until a shutdown signal arrives (see [`crate::install_shutdown_handler`]) or the filesystem is
    /// unmounted from outside, then unmounts cleanly.
    pub fn serve(mut self) -> Result<(), MountError> {
        loop {
            if shutdown_requested() {
                tracing::info!(
                    "shutdown requested; unmounting {}",
                    self.mountpoint.display()
                );
                break;
            }
            if self.session.as_ref().is_none_or(|h| h.is_finished()) {
                tracing::info!("{} was unmounted", self.mountpoint.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.stop()
    }

    /// Unmounts and waits for the FUSE session to end.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), MountError> {
        remove_record(&self.mountpoint, std::process::id());
        let mut result = Ok(());
        if let Some(handle) = self.session.take() {
            if !handle.is_finished() {
                if let Err(e) = self.unmounter.unmount() {
                    // Busy (open files): detach lazily so the mountpoint is free and the session ends
                    // once the last user goes away.
                    tracing::warn!("unmount {}: {e}; detaching", self.mountpoint.display());
                    if let Err(e) =
                        nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    {
                        result = Err(io_ctx(format!("detach {}", self.mountpoint.display()))(
                            io::Error::from(e),
                        ));
                    }
                }
            }
            // A detached mount's session ends when its last open file is closed; do not wait for that
            // forever (a supervisor's SIGTERM expects the process to exit).
            let start = Instant::now();
            while !handle.is_finished() && start.elapsed() < SESSION_END_GRACE {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !self.fetcher.flush_cache_writes(Duration::from_secs(30)) {
                tracing::warn!("some fetched chunks were not written to the host cache");
            }
            if handle.is_finished() {
                match handle.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("FUSE session ended with: {e}"),
                    Err(_) => tracing::error!("FUSE session thread panicked"),
                }
            } else {
                tracing::warn!(
                    "{}: files are still open on the detached mount; exiting anyway",
                    self.mountpoint.display()
                );
            }
        }
        result
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        if self.session.is_some() {
            if let Err(e) = self.stop() {
                tracing::warn!("{e}");
            }
        }
    }
}
