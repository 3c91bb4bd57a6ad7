//! The host cache: one sparse cache file per distinct file content ([`CacheFile`]), shared by every
//! mount of every image on the host, plus a host-wide chunk index ([`ChunkIndex`]).
//!
//! Layout under the cache root:
//! - `VERSION`: `thinnode host cache 2`. A cache of an older layout (v1: `chunks/`, `files/`, `tmp/`)
//!   is cleared when the cache is opened, with a log line;
//! - `v2/files/<k[0..2]>/<key>` and `<key>.map`: cache files (see [`crate::cache_file`]);
//! - `v2/index/<nn>`: the chunk index (see [`crate::chunk_index`]);
//! - `evict.lock`: `flock`ed while one process evicts, so processes sharing the cache do not race.
//!
//! Eviction keeps the bytes on disk under the size limit: whole cache files, least recently used first
//! (by the sidecar's mtime, which every user refreshes; the data file's times belong to its seal), are
//! unlinked, sidecar first. Nothing is ever punched out of a file another process may be serving by
//! passthrough: a process holding an evicted file keeps reading its unlinked inode; new opens start a
//! new file. The state is the directory itself, so it survives crashes and restarts.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use image::ChunkRef;
use parking_lot::Mutex;

use crate::cache_file::{paths_of, CacheFile, FileKey, FileShape};
use crate::chunk_index::{ChunkIndex, IndexEntry};

/// Eviction brings the cache down to this fraction (in percent) of its limit.
const LOW_WATERMARK_PERCENT: u64 = 90;
/// Content of the `VERSION` file of this layout.
const VERSION_TEXT: &str = "thinnode host cache 2\n";
/// Directories of the previous layout (per-chunk entries and assembled files).
const V1_DIRS: [&str; 3] = ["chunks", "files", "tmp"];

/// Errors from the host cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation on the cache directory failed.
    #[error("cache {path}: {error}")]
    Io {
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

fn io_err(path: &Path, error: io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Settings of a [`HostCache`].
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The cache root directory (created if missing).
    pub dir: PathBuf,
    /// Size limit in bytes of everything the cache holds on disk; eviction keeps the total under it.
    pub max_bytes: u64,
    /// Whether chunk data is `fdatasync`ed before it is marked present (survives power loss).
    pub durable: bool,
}

/// Counters the cache keeps about itself.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Cache files removed by eviction since this process opened the cache.
    pub evicted_files: AtomicU64,
    /// Bytes removed by eviction since this process opened the cache.
    pub evicted_bytes: AtomicU64,
}

/// The host cache. Cheap to share (`Arc`); safe to use from many threads and processes at once.
#[derive(Debug)]
pub struct HostCache {
    root: PathBuf,
    files_dir: PathBuf,
    index: ChunkIndex,
    max_bytes: u64,
    durable: bool,
    /// Estimated bytes on disk: the last scan's total plus what this process added since.
    estimated_bytes: AtomicU64,
    /// Serialises this process's evictions (the lock file serialises processes).
    evicting: Mutex<()>,
    /// Bytes this process added, ever (to tell what was added while the cache was measured).
    added_total: AtomicU64,
    /// A background eviction of this process is running.
    evicting_in_background: AtomicBool,
    /// Cache files open in this process, so every user of one content shares one [`CacheFile`].
    open_files: Mutex<HashMap<FileKey, Weak<CacheFile>>>,
    /// Eviction counters.
    pub stats: CacheStats,
}

impl HostCache {
    /// Opens (creating if needed) the cache at `config.dir`. A cache of an older layout is cleared (in
    /// the background, after a fast rename). The size of the existing content is measured by a
    /// background scan so opening never waits on a large cache.
    pub fn open(config: &CacheConfig) -> Result<Arc<HostCache>, CacheError> {
        let root = config.dir.clone();
        fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
        let trash = clear_old_layout(&root)?;
        let files_dir = root.join("v2").join("files");
        fs::create_dir_all(&files_dir).map_err(|e| io_err(&files_dir, e))?;
        let cache = Arc::new(HostCache {
            index: ChunkIndex::new(&root.join("v2").join("index")),
            files_dir,
            root,
            max_bytes: config.max_bytes,
            durable: config.durable,
            estimated_bytes: AtomicU64::new(0),
            evicting: Mutex::new(()),
            added_total: AtomicU64::new(0),
            evicting_in_background: AtomicBool::new(false),
            open_files: Mutex::new(HashMap::new()),
            stats: CacheStats::default(),
        });
        let scanner = Arc::clone(&cache);
        let spawned = std::thread::Builder::new()
            .name("cache-scan".into())
            .spawn(move || {
                if let Some(trash) = trash {
                    let _ = fs::remove_dir_all(&trash);
                }
                if let Err(e) = scanner.enforce_limit() {
                    tracing::warn!("cache scan failed: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start cache scan thread: {e}");
        }
        Ok(cache)
    }

    /// The cache root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The configured size limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The chunk index.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// Opens (creating if needed) the cache file of the content `size` bytes in `chunk_size`-byte
    /// `chunks` (`None` = hole). Users of the same content in this process share one [`CacheFile`]; one
    /// that was evicted since it was opened is replaced for new users.
    pub fn open_file(
        &self,
        size: u64,
        chunk_size: u64,
        chunks: &[Option<ChunkRef>],
    ) -> Result<Arc<CacheFile>, CacheError> {
        let key = FileKey::of(size, chunk_size, chunks);
        self.open_file_keyed(key, size, chunk_size, chunks)
    }

    /// [`HostCache::open_file`] when the key is already known.
    pub fn open_file_keyed(
        &self,
        key: FileKey,
        size: u64,
        chunk_size: u64,
        chunks: &[Option<ChunkRef>],
    ) -> Result<Arc<CacheFile>, CacheError> {
        let mut open = self.open_files.lock();
        if let Some(f) = open.get(&key).and_then(Weak::upgrade) {
            if !f.is_evicted() {
                return Ok(f);
            }
        }
        let shape = FileShape::new(size, chunk_size);
        let file = CacheFile::open(&self.files_dir, key, shape, chunks, self.durable)
            .map(Arc::new)
            .map_err(|e| io_err(&paths_of(&self.files_dir, &key).0, e))?;
        if open.len() > 4096 {
            open.retain(|_, w| w.strong_count() > 0);
        }
        open.insert(key, Arc::downgrade(&file));
        Ok(file)
    }

    /// The cache file `key` as it is on disk, for reading chunks it shares with another file: the one
    /// open in this process, else opened now; `None` when it is not in the cache.
    pub fn existing_file(&self, key: &FileKey) -> Option<Arc<CacheFile>> {
        if let Some(f) = self.open_files.lock().get(key).and_then(Weak::upgrade) {
            return Some(f);
        }
        match CacheFile::open_existing(&self.files_dir, *key, self.durable) {
            Ok(f) => f.map(Arc::new),
            Err(e) => {
                tracing::debug!("cache file {}: {e}", key.to_hex());
                None
            }
        }
    }

    /// Records in the chunk index that chunk `r` is chunk `index` of `file`, and counts `bytes` newly
    /// stored (evicting in the background when the cache went over its limit).
    pub fn stored(self: &Arc<Self>, r: &ChunkRef, file: &CacheFile, index: u64, bytes: u64) {
        let entry = IndexEntry {
            id: r.id,
            key: *file.key(),
            index,
        };
        if let Err(e) = self.index.append(&entry) {
            tracing::debug!("cannot index chunk {}: {e}", r.id);
        }
        self.added(bytes + 80);
    }

    /// Total bytes on disk as last measured plus what this process added since.
    pub fn estimated_bytes(&self) -> u64 {
        self.estimated_bytes.load(Ordering::Relaxed)
    }

    fn added(self: &Arc<Self>, bytes: u64) {
        self.added_total.fetch_add(bytes, Ordering::Relaxed);
        let total = self.estimated_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total <= self.max_bytes || self.evicting_in_background.swap(true, Ordering::AcqRel) {
            return;
        }
        // Evicting walks the cache: not on the read path. One thread per eviction run, which is rare
        // (each run frees a tenth of the cache).
        let cache = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("cache-evict".into())
            .spawn(move || {
                loop {
                    if let Err(e) = cache.enforce_limit() {
                        tracing::warn!("cache eviction failed: {e}");
                        break;
                    }
                    if cache.estimated_bytes() <= cache.max_bytes {
                        break;
                    }
                }
                cache.evicting_in_background.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start cache eviction: {e}");
            self.evicting_in_background.store(false, Ordering::Release);
        }
    }

    /// Measures the cache and, when it is over its limit, removes least-recently-used cache files until
    /// it is under the low watermark, then compacts the chunk index. Coordinated between processes
    /// with an exclusive `flock`.
    pub fn enforce_limit(&self) -> Result<(), CacheError> {
        let _local = self.evicting.lock();
        let added_before = self.added_total.load(Ordering::Relaxed);
        let outcome = evict(&self.root, &self.files_dir, &self.index, self.max_bytes)?;
        self.stats
            .evicted_files
            .fetch_add(outcome.files, Ordering::Relaxed);
        self.stats
            .evicted_bytes
            .fetch_add(outcome.bytes, Ordering::Relaxed);
        // What this process added while the cache was being measured is not in the measurement.
        let added_during = self
            .added_total
            .load(Ordering::Relaxed)
            .saturating_sub(added_before);
        self.estimated_bytes
            .store(outcome.total + added_during, Ordering::Relaxed);
        Ok(())
    }
}

/// What one eviction run did.
#[derive(Debug, Default)]
struct Eviction {
    files: u64,
    bytes: u64,
    total: u64,
}

/// One cache file as the eviction sees it.
struct Entry {
    last_use: SystemTime,
    bytes: u64,
    data: PathBuf,
    map: PathBuf,
}

fn evict(
    root: &Path,
    files_dir: &Path,
    index: &ChunkIndex,
    max_bytes: u64,
) -> Result<Eviction, CacheError> {
    let lock_path = root.join("evict.lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err(&lock_path, e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err(&lock_path, io::Error::from(errno)))?;

    let mut entries = collect(files_dir);
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum::<u64>() + index.bytes();
    let mut outcome = Eviction::default();
    if total > max_bytes {
        let target = max_bytes / 100 * LOW_WATERMARK_PERCENT;
        entries.sort_by_key(|e| e.last_use);
        for e in entries {
            if total <= target {
                break;
            }
            // Sidecar first: a data file without a sidecar is harmless (its bytes are never trusted).
            if fs::remove_file(&e.map).is_ok() || !e.map.exists() {
                let _ = fs::remove_file(&e.data);
                total = total.saturating_sub(e.bytes);
                outcome.files += 1;
                outcome.bytes += e.bytes;
            }
        }
        if outcome.files > 0 {
            let before = index.bytes();
            if let Err(e) = index.compact(&mut |key| paths_of(files_dir, key).1.exists()) {
                tracing::warn!("cannot compact the chunk index: {e}");
            }
            total = total.saturating_sub(before.saturating_sub(index.bytes()));
            tracing::info!(
                "host cache: evicted {} file(s), {} bytes; {} bytes left (limit {max_bytes})",
                outcome.files,
                outcome.bytes,
                total
            );
        }
    }
    outcome.total = total;
    Ok(outcome)
}

/// Every cache file under `files_dir` with its last use and bytes on disk. Data files without a
/// sidecar (left by a crash) are collected as the oldest.
fn collect(files_dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let Ok(dirs) = fs::read_dir(files_dir) else {
        return out;
    };
    for dir in dirs.flatten() {
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        let mut maps: HashMap<String, (SystemTime, u64)> = HashMap::new();
        let mut datas: Vec<(String, u64)> = Vec::new();
        for f in files.flatten() {
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = f.file_name().to_string_lossy().into_owned();
            let bytes = meta.blocks() * 512;
            if let Some(stem) = name.strip_suffix(".map") {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                maps.insert(stem.to_string(), (mtime, bytes));
            } else if name.contains(".tmp.") {
                // A creation interrupted by a crash (filesystems without O_TMPFILE).
                datas.push((name, bytes));
            } else {
                datas.push((name, bytes));
            }
        }
        for (name, bytes) in datas {
            let (last_use, map_bytes) = maps.remove(&name).unwrap_or((SystemTime::UNIX_EPOCH, 0));
            out.push(Entry {
                last_use,
                bytes: bytes + map_bytes,
                data: dir.path().join(&name),
                map: dir.path().join(format!("{name}.map")),
            });
        }
        // Sidecars without data: the data will be created again on the next open.
        for (stem, (last_use, bytes)) in maps {
            out.push(Entry {
                last_use,
                bytes,
                data: dir.path().join(&stem),
                map: dir.path().join(format!("{stem}.map")),
            });
        }
    }
    out
}

/// Moves a cache of an older layout out of the way (into `trash/`, to be deleted in the background)
/// and writes the `VERSION` file. Returns the directory to delete, if any.
fn clear_old_layout(root: &Path) -> Result<Option<PathBuf>, CacheError> {
    let version = root.join("VERSION");
    let current = fs::read_to_string(&version).ok();
    if current.as_deref() == Some(VERSION_TEXT) {
        return Ok(None);
    }
    let trash = root.join("trash");
    let mut moved = Vec::new();
    let mut old_dirs: Vec<String> = V1_DIRS.iter().map(|s| s.to_string()).collect();
    if current.is_some() {
        // An unknown (newer or damaged) layout: start over entirely.
        old_dirs.push("v2".into());
    }
    for name in &old_dirs {
        let from = root.join(name);
        if !from.exists() {
            continue;
        }
        fs::create_dir_all(&trash).map_err(|e| io_err(&trash, e))?;
        let to = trash.join(format!("{name}.{}", std::process::id()));
        match fs::rename(&from, &to) {
            Ok(()) => moved.push(name.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&from, e)),
        }
    }
    if !moved.is_empty() {
        tracing::warn!(
            "host cache {}: clearing a cache of an older layout ({}); it is refilled as needed",
            root.display(),
            moved.join(", ")
        );
    }
    let tmp = root.join(format!("VERSION.tmp{}", std::process::id()));
    fs::write(&tmp, VERSION_TEXT).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &version).map_err(|e| io_err(&version, e))?;
    Ok(trash.exists().then_some(trash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open(dir: &Path, max: u64) -> Arc<HostCache> {
        let cache = HostCache::open(&CacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: max,
            durable: false,
        })
        .expect("open cache");
        cache.enforce_limit().expect("scan");
        cache
    }

    fn one_chunk_file(seed: u8, len: usize) -> (Vec<Option<ChunkRef>>, Vec<u8>) {
        let plain = vec![seed; len];
        let r = image::encode_chunk(&plain, 1).expect("encode").chunk_ref;
        (vec![Some(r)], plain)
    }

    #[test]
    fn a_v1_cache_is_cleared_with_a_log_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("chunks/ab")).expect("mkdir");
        fs::write(dir.path().join("chunks/ab/abcd"), b"old").expect("write");
        fs::create_dir_all(dir.path().join("files")).expect("mkdir");
        let cache = open(dir.path(), 1 << 30);
        assert!(!dir.path().join("chunks").exists());
        assert!(!dir.path().join("files").exists());
        assert_eq!(
            fs::read_to_string(dir.path().join("VERSION")).expect("version"),
            VERSION_TEXT
        );
        let (chunks, plain) = one_chunk_file(1, 10_000);
        let f = cache
            .open_file(10_000, 64 << 10, &chunks)
            .expect("open file");
        f.fill(0, &plain).expect("fill");
        drop(f);
        drop(cache);
        // Opening again keeps the v2 content.
        let cache = open(dir.path(), 1 << 30);
        let f = cache
            .open_file(10_000, 64 << 10, &chunks)
            .expect("open file");
        assert!(f.check_sealed());
    }

    #[test]
    fn eviction_keeps_total_under_limit_and_drops_least_recently_used() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let cache = open(dir.path(), 200_000);
        let mut files = Vec::new();
        for i in 0..20u8 {
            let (chunks, plain) = one_chunk_file(i + 1, 16_384);
            let f = cache.open_file(16_384, 64 << 10, &chunks).expect("open");
            f.fill(0, &plain).expect("fill");
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + u64::from(i));
            fs::File::options()
                .write(true)
                .open(f.map_path())
                .expect("map")
                .set_modified(when)
                .expect("mtime");
            files.push((chunks, f.data_path().to_path_buf()));
        }
        cache.enforce_limit().expect("evict");
        assert!(
            cache.estimated_bytes() <= 200_000,
            "{}",
            cache.estimated_bytes()
        );
        assert!(files[19].1.exists(), "newest survives");
        assert!(!files[0].1.exists(), "oldest evicted");
        // An evicted file still open here reads on; a new open starts a fresh file.
        let (chunks, _) = &files[0];
        let again = cache.open_file(16_384, 64 << 10, chunks).expect("reopen");
        assert!(!again.check_sealed());
    }
}
