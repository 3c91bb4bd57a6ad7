//! The mount lifecycle: mounting (ready only when the mountpoint answers), kernel readahead, serving until
//! SIGTERM/SIGINT or an external unmount, clean unmount, stale-mount cleanup, and the per-mount record
//! that `umount` and `hydrate` use to find a running mount.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use image::{ImageError, ImageManifest};

use crate::cache::{CacheConfig, CacheError, HostCache};
use crate::engine::BaseReader;
use crate::fetch::{FetchConfig, Fetcher};
use crate::fs::ImageFs;
use crate::metrics::{self, Metrics};
use crate::stores::open_stores;
use crate::trace::{TraceError, TraceRecorder};

/// Where running mounts leave their records.
pub const RUN_DIR: &str = "/run/thinnode/mounts";
/// How long an unmount waits for the FUSE session of a busy (lazily detached) mount to end.
const SESSION_END_GRACE: Duration = Duration::from_secs(5);
/// The kernel readahead set on every mount, in KiB (makes 1 MiB read requests).
pub const READ_AHEAD_KB: u32 = 1024;

/// Errors of the mount lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The image could not be opened or failed signature verification.
    #[error("image {path}: {error}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why.
        error: ImageError,
    },
    /// The host cache could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The access trace could not be created.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The image records no store and none was given.
    #[error("the image records no store; pass --store")]
    NoStore,
    /// Something is wrong with the mountpoint.
    #[error("mountpoint {path}: {reason}")]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A background daemon failed before it was ready (its own error message).
    #[error("{0}")]
    Daemon(String),
    /// A system call failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        error: io::Error,
    },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    let context = context.into();
    move |error| MountError::Io { context, error }
}

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

/// What a running mount leaves in [`RUN_DIR`] so other commands can find it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// The serving process.
    pub pid: u32,
    /// The image file (absolute).
    pub image: PathBuf,
    /// The mountpoint (absolute).
    pub mountpoint: PathBuf,
    /// The host cache directory.
    pub cache_dir: PathBuf,
    /// The host cache limit in bytes.
    pub cache_max_bytes: u64,
    /// The store URLs given on the command line (empty: the image's).
    pub store_overrides: Vec<String>,
    /// Where metrics are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Another mount of the same process that this one is stacked on (the read-only image below a
    /// write layer); unmounting this mount unmounts that one too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacked_on: Option<PathBuf>,
}

/// An absolute form of `path` that works even when `path` itself is a dead mount (only the parent is
/// resolved).
pub fn absolute_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let abs = std::path::absolute(path).map_err(io_ctx(format!("resolve {}", path.display())))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = fs::canonicalize(parent)
                .map_err(io_ctx(format!("resolve {}", parent.display())))?;
            Ok(parent.join(name))
        }
        _ => Ok(abs),
    }
}

fn record_path(mountpoint: &Path) -> PathBuf {
    let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    Path::new(RUN_DIR).join(format!("{}.json", &hash.to_hex()[..32]))
}

/// The record of the mount at `mountpoint` (absolute), if one was left.
pub fn read_record(mountpoint: &Path) -> Option<MountRecord> {
    let text = fs::read(record_path(mountpoint)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Decodes the octal escapes (`\040` etc.) the kernel uses in /proc mount files.
pub fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is listed as a mount point in /proc/self/mountinfo. Unlike [`is_mountpoint`] it never
/// touches the filesystem mounted there, so a hung FUSE mount (its daemon stopped) cannot block it.
fn listed_as_mount(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    text.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&unescape_mount_field(mp)) == path)
    })
}

/// Removes records left by mount processes that no longer run (killed daemons) and whose mount is gone.
pub fn prune_dead_records() {
    let Ok(entries) = fs::read_dir(RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let dead = fs::read(&path)
            .ok()
            .and_then(|text| serde_json::from_slice::<MountRecord>(&text).ok())
            // A dead daemon's record stays while its mount is still there: `umount` needs it to find
            // the mount stacked below.
            .is_some_and(|rec| !pid_alive(rec.pid) && !listed_as_mount(&rec.mountpoint));
        if dead {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Writes the record of a mount served by this process, so `unmount_path` can find its daemon.
pub fn write_record(rec: &MountRecord) -> Result<(), MountError> {
    fs::create_dir_all(RUN_DIR).map_err(io_ctx(format!("create {RUN_DIR}")))?;
    let path = record_path(&rec.mountpoint);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let body = serde_json::to_vec_pretty(rec).map_err(|e| MountError::Io {
        context: "encode mount record".into(),
        error: io::Error::other(e),
    })?;
    fs::write(&tmp, body).map_err(io_ctx(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io_ctx(format!("write {}", path.display())))
}

/// Removes the record of the mount at `mountpoint` if process `pid` wrote it.
pub fn remove_record(mountpoint: &Path, pid: u32) {
    if read_record(mountpoint).is_some_and(|r| r.pid == pid) {
        let _ = fs::remove_file(record_path(mountpoint));
    }
}

/// Whether `path` is a dead FUSE mount ("Transport endpoint is not connected"). Uses `statfs`, which
/// always reaches the filesystem (a `stat` may be answered from attributes the kernel cached).
pub fn is_stale_mount(path: &Path) -> bool {
    matches!(
        nix::sys::statfs::statfs(path),
        Err(nix::errno::Errno::ENOTCONN)
    )
}

/// Whether something is mounted at `path` (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    if is_stale_mount(path) {
        return true;
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Detaches a dead mount left at `path` by a killed daemon. Returns whether one was cleaned.
pub fn clean_stale_mount(path: &Path) -> Result<bool, MountError> {
    if !is_stale_mount(path) {
        return Ok(false);
    }
    tracing::warn!(
        "{}: stale mount of a dead daemon; detaching it",
        path.display()
    );
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| io_ctx(format!("detach {}", path.display()))(io::Error::from(e)))?;
    Ok(true)
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; a zombie still counts, so also look at /proc state.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Unmounts the thinnode mount at `mountpoint`: asks its daemon to exit (SIGTERM) and waits for it, or
/// unmounts directly; a stale mount is detached. Errors when nothing is mounted there.
pub fn unmount_path(mountpoint: &Path, timeout: Duration) -> Result<(), MountError> {
    let mnt = absolute_mountpoint(mountpoint)?;
    let below = read_record(&mnt).and_then(|r| r.stacked_on);
    let result = unmount_one(&mnt, timeout);
    if let Some(below) = below {
        // The daemon unmounts it on a clean exit; after a kill it is left behind, dead or alive.
        if is_mountpoint(&below) {
            if let Err(e) = unmount_one(&below, timeout) {
                tracing::warn!("{}: {e}", below.display());
            }
        }
    }
    result
}

fn unmount_one(mnt: &Path, timeout: Duration) -> Result<(), MountError> {
    let mnt = mnt.to_path_buf();
    if clean_stale_mount(&mnt)? {
        let _ = fs::remove_file(record_path(&mnt));
        return Ok(());
    }
    if let Some(rec) = read_record(&mnt) {
        if pid_alive(rec.pid) {
            if let Ok(pid) = i32::try_from(rec.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let start = Instant::now();
            while start.elapsed() < timeout && pid_alive(rec.pid) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_file(record_path(&mnt));
        if !is_mountpoint(&mnt) {
            return Ok(());
        }
    }
    if !is_mountpoint(&mnt) {
        return Err(MountError::Mountpoint {
            path: mnt,
            reason: "nothing is mounted there".into(),
        });
    }
    match nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!("{} is busy; detaching it lazily", mnt.display());
            nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| io_ctx(format!("detach {}", mnt.display()))(io::Error::from(e)))
        }
        Err(e) => Err(io_ctx(format!("unmount {}", mnt.display()))(
            io::Error::from(e),
        )),
    }
}

/// Sets the kernel readahead of the FUSE mount at `mountpoint` (its backing-device-info in sysfs).
pub fn set_read_ahead(mountpoint: &Path, kb: u32) -> Result<(), MountError> {
    let meta =
        fs::metadata(mountpoint).map_err(io_ctx(format!("stat {}", mountpoint.display())))?;
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    fs::write(&path, kb.to_string()).map_err(io_ctx(format!("write {path}")))
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

static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_shutdown_signal(_: libc::c_int) {
    SHUTDOWN_REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes the C allocator keep freed chunk-sized buffers for reuse instead of returning them to the
/// kernel: every fetched chunk is decoded into a fresh 1 MiB-scale buffer, and with glibc's adaptive
/// defaults those buffers are often unmapped and mapped again, so each chunk paid page faults and
/// page zeroing (a measured cost on a cold read; see docs/benchmarks.md, mount section).
fn keep_freed_chunk_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tunables; it is called before the mount's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Whether a shutdown signal arrived since [`install_shutdown_handler`] (for processes that run their
/// own serving loop, such as a node supervisor).
pub fn shutdown_requested() -> bool {
    SHUTDOWN_REQUESTED.load(Ordering::SeqCst)
}

/// Makes SIGTERM, SIGINT and SIGHUP request a clean shutdown (see [`MountedImage::serve`]).
pub fn install_shutdown_handler() -> Result<(), MountError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_shutdown_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| io_ctx(format!("install {sig} handler"))(io::Error::from(e)))?;
    }
    Ok(())
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
        clean_stale_mount(&mountpoint)?;
        let meta = fs::metadata(&mountpoint).map_err(|e| MountError::Mountpoint {
            path: mountpoint.clone(),
            reason: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(MountError::Mountpoint {
                path: mountpoint,
                reason: "not a directory".into(),
            });
        }
        if let Some(rec) = read_record(&mountpoint) {
            if pid_alive(rec.pid) && is_mountpoint(&mountpoint) {
                return Err(MountError::Mountpoint {
                    path: mountpoint,
                    reason: format!("already mounted by process {}", rec.pid),
                });
            }
        }
        let image = std::path::absolute(&config.image)
            .map_err(io_ctx(format!("resolve {}", config.image.display())))?;
        let manifest = Arc::new(open_image(&image, config.trusted_key.as_ref())?);
        let stores = open_stores(&manifest.stores(), &config.store_overrides);
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
            Arc::clone(&fetcher),
            config.readahead_chunks,
            trace,
        ));
        let fs = ImageFs::new(Arc::clone(&reader), config.passthrough);

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
        fuse_config.n_threads = Some(config.fuse_threads.max(1));
        fuse_config.clone_fd = true;
        let mut session = Session::new(fs, &mountpoint, &fuse_config)
            .map_err(io_ctx(format!("mount {}", mountpoint.display())))?;
        let unmounter = session.unmount_callable();
        let handle = std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || session.run())
            .map_err(io_ctx("start the FUSE session"))?;
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

    /// Serves until a shutdown signal arrives (see [`install_shutdown_handler`]) or the filesystem is
    /// unmounted from outside, then unmounts cleanly.
    pub fn serve(mut self) -> Result<(), MountError> {
        loop {
            if SHUTDOWN_REQUESTED.load(Ordering::SeqCst) {
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
