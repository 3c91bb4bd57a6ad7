//! The host chunk cache: decoded (plaintext) chunks stored content-addressed by [`ChunkId`], shared by
//! every mount of every image on the host, plus assembled whole files used as FUSE passthrough backing.
//!
//! Layout under the cache root:
//! - `chunks/<first two hex digits>/<chunk id hex>`: one verified plaintext chunk per file;
//! - `files/<file key>`: a regular file assembled from cached chunks (passthrough backing);
//! - `tmp/`: assembled files being written (chunks are written as unnamed `O_TMPFILE` files in their
//!   own directory instead); an entry becomes visible only by `linkat`/`rename` after its bytes were
//!   verified and synced, so a crash mid-write never leaves a partial entry that looks valid;
//! - `evict.lock`: `flock`ed while one process evicts, so processes sharing the cache do not race.
//!
//! Eviction is least-recently-used by file modification time: a cache hit refreshes the entry's mtime
//! (at most once a minute per entry and process), so the order survives restarts and is shared by every
//! process using the cache.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use store::ChunkId;

/// How often, at most, one process refreshes the access time of one entry.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Temporary files older than this are leftovers of crashed writers and are removed.
const STALE_TMP_AGE: Duration = Duration::from_secs(600);
/// Eviction brings the cache down to this fraction (in percent) of its limit.
const LOW_WATERMARK_PERCENT: u64 = 90;

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

/// Alignment of buffers, offsets and lengths for direct I/O (the page size covers every block size
/// in use).
pub(crate) const DIRECT_IO_ALIGN: usize = image::DECODED_ALIGN;

/// `len` rounded up to the direct I/O alignment.
pub(crate) fn direct_io_len(len: usize) -> usize {
    len.div_ceil(DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN
}

/// A reusable byte buffer whose usable part starts at a [`DIRECT_IO_ALIGN`]-aligned address, for direct
/// I/O. Its pages stay mapped between uses.
#[derive(Debug, Default)]
pub(crate) struct AlignedBuf {
    storage: Vec<u8>,
}

impl AlignedBuf {
    /// An empty buffer (allocates on first use).
    pub(crate) const fn new() -> AlignedBuf {
        AlignedBuf {
            storage: Vec::new(),
        }
    }

    /// `len` aligned bytes (contents unspecified), growing the buffer when needed.
    pub(crate) fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        if self.storage.len() < len + DIRECT_IO_ALIGN {
            self.storage = vec![0; len + DIRECT_IO_ALIGN];
        }
        let start = self.storage.as_ptr().align_offset(DIRECT_IO_ALIGN);
        &mut self.storage[start..start + len]
    }
}

thread_local! {
    /// Each writer thread's staging buffer for direct I/O.
    static DIRECT_IO_BUFFER: std::cell::RefCell<AlignedBuf> = const { std::cell::RefCell::new(AlignedBuf::new()) };
}

/// Writes `bytes` at offset 0 of `file`, opened with `O_DIRECT`: directly when they are aligned in
/// memory and in length, otherwise through an aligned staging buffer, padded to the alignment and then
/// truncated to the real length. Direct I/O keeps cache writes out of
/// the page cache: a cold read then fills one set of pages (the mount's), not two.
fn write_direct(file: &File, bytes: &[u8]) -> io::Result<()> {
    if bytes.as_ptr().align_offset(DIRECT_IO_ALIGN) == 0 && bytes.len() % DIRECT_IO_ALIGN == 0 {
        // Already aligned (a whole chunk decoded by `image::decode_chunk`): written as it is.
        return file.write_all_at(bytes, 0);
    }
    let padded = direct_io_len(bytes.len());
    DIRECT_IO_BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        let staged = buf.slice_mut(padded);
        let (data, pad) = staged.split_at_mut(bytes.len());
        data.copy_from_slice(bytes);
        pad.fill(0);
        file.write_all_at(staged, 0)
    })?;
    if padded != bytes.len() {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(())
}

/// Opens a file with `O_DIRECT` (`open` gets the extra open flags), or again without it where the
/// filesystem refuses direct I/O (`EINVAL`). The flag says whether the file is open for direct I/O.
pub(crate) fn open_direct_or_buffered(
    open: impl Fn(libc::c_int) -> io::Result<File>,
) -> io::Result<(File, bool)> {
    match open(libc::O_DIRECT) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(0)?, false)),
        Err(e) => Err(e),
    }
}

/// Settings of a [`HostCache`].
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The cache root directory (created if missing).
    pub dir: PathBuf,
    /// Size limit in bytes for chunks plus assembled files; eviction keeps the total under it.
    pub max_bytes: u64,
    /// Whether entries are `fdatasync`ed before they become visible (survive power loss).
    pub durable: bool,
}

/// Counters the cache keeps about itself.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Entries removed by eviction since this process opened the cache.
    pub evicted_entries: AtomicU64,
    /// Bytes removed by eviction since this process opened the cache.
    pub evicted_bytes: AtomicU64,
}

/// The host chunk cache. Cheap to share (`Arc`); safe to use from many threads and processes at once.
#[derive(Debug)]
pub struct HostCache {
    root: PathBuf,
    max_bytes: u64,
    durable: bool,
    /// Estimated total bytes: the last scan's total plus what this process added since.
    estimated_bytes: AtomicU64,
    /// Serialises this process's evictions (the lock file serialises processes).
    evicting: Mutex<()>,
    /// Last time this process refreshed each entry's mtime.
    touched: Mutex<HashMap<ChunkId, Instant>>,
    temp_counter: AtomicU64,
    /// Eviction counters.
    pub stats: CacheStats,
}

impl HostCache {
    /// Opens (creating if needed) the cache at `config.dir`. Cheap: the size of the existing content is
    /// measured by a background scan so opening never waits on a large cache.
    pub fn open(config: &CacheConfig) -> Result<Arc<HostCache>, CacheError> {
        let root = config.dir.clone();
        for sub in ["chunks", "files", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
        let cache = Arc::new(HostCache {
            root,
            max_bytes: config.max_bytes,
            durable: config.durable,
            estimated_bytes: AtomicU64::new(0),
            evicting: Mutex::new(()),
            touched: Mutex::new(HashMap::new()),
            temp_counter: AtomicU64::new(0),
            stats: CacheStats::default(),
        });
        let scanner = Arc::clone(&cache);
        let spawned = std::thread::Builder::new()
            .name("cache-scan".into())
            .spawn(move || {
                scanner.remove_stale_temp_files();
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

    /// Where the chunk `id` lives (whether or not it is present).
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("chunks").join(&hex[..2]).join(hex)
    }

    /// Where the assembled file named `key` lives (whether or not it is present).
    pub fn file_path(&self, key: &str) -> PathBuf {
        self.root.join("files").join(key)
    }

    /// Whether the chunk `id` is present with exactly `expected_len` bytes.
    pub fn contains(&self, id: &ChunkId, expected_len: u32) -> bool {
        fs::metadata(self.chunk_path(id)).is_ok_and(|m| m.len() == u64::from(expected_len))
    }

    /// Opens the cached chunk `id` for reading (with direct I/O when asked and the filesystem allows it;
    /// the flag says whether it did). `None` when the chunk is absent, or has a length other than
    /// `expected_len`, in which case the damaged entry is removed.
    fn open_entry(
        &self,
        id: &ChunkId,
        expected_len: u32,
        direct: bool,
    ) -> Result<Option<(PathBuf, File, bool)>, CacheError> {
        let path = self.chunk_path(id);
        let opened = if direct {
            use std::os::unix::fs::OpenOptionsExt;
            open_direct_or_buffered(|flags| {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(&path)
            })
        } else {
            File::open(&path).map(|f| (f, false))
        };
        let (file, direct) = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        let actual_len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        if actual_len != u64::from(expected_len) {
            tracing::warn!(
                "cache entry {} has {actual_len} bytes, expected {expected_len}: removing it",
                id
            );
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some((path, file, direct)))
    }

    /// Reads `len` bytes at `offset` of the cached chunk `id`, whose full length must be `expected_len`.
    /// `Ok(None)` when the chunk is absent (or has the wrong length, in which case it is removed).
    pub fn read(
        &self,
        id: &ChunkId,
        expected_len: u32,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let Some((path, file, _)) = self.open_entry(id, expected_len, false)? else {
            return Ok(None);
        };
        let end = offset
            .saturating_add(len as u64)
            .min(u64::from(expected_len));
        let want = end.saturating_sub(offset) as usize;
        let mut buf = vec![0u8; want];
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => {}
            // Evicted and truncated under us cannot happen (eviction unlinks), but a short read is a miss.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        }
        self.touch(id, &file);
        Ok(Some(buf))
    }

    /// Reads the whole cached chunk `id` (of `expected_len` bytes) into `buf` with direct I/O, so the
    /// copy leaves the page cache alone (assembling a big file would otherwise fill it twice).
    /// Returns the chunk's bytes (a prefix of `buf`'s aligned part), or `None` when the chunk is absent
    /// or has the wrong length (then it is removed).
    pub(crate) fn read_whole<'b>(
        &self,
        id: &ChunkId,
        expected_len: u32,
        buf: &'b mut AlignedBuf,
    ) -> Result<Option<&'b [u8]>, CacheError> {
        let Some((path, file, direct)) = self.open_entry(id, expected_len, true)? else {
            return Ok(None);
        };
        let len = expected_len as usize;
        let space = buf.slice_mut(direct_io_len(len));
        let mut got = 0;
        while got < len {
            // Direct reads ask for whole aligned blocks; the last one comes back short at end of file.
            let want = if direct { space.len() } else { len };
            match file.read_at(&mut space[got..want], got as u64) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        self.touch(id, &file);
        Ok(Some(&space[..len]))
    }

    /// Stores the verified plaintext of chunk `id`. The entry is written unnamed, synced (when durable) and
    /// only then named, so readers see either nothing or the whole entry.
    pub fn insert(&self, id: &ChunkId, plaintext: &[u8]) -> Result<(), CacheError> {
        let path = self.chunk_path(id);
        if fs::metadata(&path).is_ok_and(|m| m.len() == plaintext.len() as u64) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        match self.insert_unnamed(&path, plaintext) {
            Ok(()) => {}
            // Filesystems without O_TMPFILE: a named temporary file, then rename.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
                ) =>
            {
                self.insert_renamed(id, &path, plaintext)?
            }
            Err(e) => return Err(io_err(&path, e)),
        }
        self.added(plaintext.len() as u64);
        Ok(())
    }

    /// Writes the entry as an unnamed file in its final directory (`O_TMPFILE`), syncs it when durable,
    /// then gives it its name with `linkat`: no temporary name, no cross-directory rename (which the
    /// kernel serialises filesystem-wide), and a crash leaves nothing behind.
    fn insert_unnamed(&self, path: &Path, plaintext: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let dir = path.parent().unwrap_or(Path::new("."));
        let open = |flags: libc::c_int| {
            OpenOptions::new()
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_TMPFILE | flags)
                .open(dir)
        };
        let f = match open_direct_or_buffered(open)? {
            (f, true) => {
                write_direct(&f, plaintext)?;
                f
            }
            // Filesystems without direct I/O: through the page cache.
            (mut f, false) => {
                f.write_all(plaintext)?;
                f
            }
        };
        if self.durable {
            f.sync_data()?;
        }
        let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .map_err(io::Error::other)?;
        let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc_path.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
        // Another writer (thread or process) linked the chunk first: the same verified bytes, unless
        // the entry there is damaged (wrong length), which is replaced.
        if fs::metadata(path).is_ok_and(|m| m.len() == plaintext.len() as u64) {
            return Ok(());
        }
        fs::remove_file(path)?;
        // SAFETY: as above.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc_path.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        Err(io::Error::last_os_error())
    }

    /// The fallback of [`Self::insert_unnamed`]: a temporary file in `tmp/`, then `rename`.
    fn insert_renamed(
        &self,
        id: &ChunkId,
        path: &Path,
        plaintext: &[u8],
    ) -> Result<(), CacheError> {
        let tmp = self.temp_path(&id.to_hex());
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(plaintext)?;
            if self.durable {
                f.sync_data()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp, e));
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(path, e));
        }
        Ok(())
    }

    /// A fresh temporary path in `tmp/` (unique per process and call).
    pub fn temp_path(&self, stem: &str) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{stem}.{}.{n}", std::process::id()))
    }

    /// Publishes a fully written and synced temporary file as the assembled file `key`.
    pub fn publish_file(&self, tmp: &Path, key: &str) -> Result<PathBuf, CacheError> {
        let dest = self.file_path(key);
        let len = fs::metadata(tmp).map_err(|e| io_err(tmp, e))?.len();
        fs::rename(tmp, &dest).map_err(|e| io_err(&dest, e))?;
        self.added(len);
        Ok(dest)
    }

    /// Opens the assembled file `key` if present with exactly `expected_len` bytes, refreshing its
    /// access time.
    pub fn open_file(&self, key: &str, expected_len: u64) -> Option<File> {
        let path = self.file_path(key);
        let file = File::open(&path).ok()?;
        if file.metadata().ok()?.len() != expected_len {
            return None;
        }
        let _ = file.set_modified(SystemTime::now());
        Some(file)
    }

    /// Total bytes of chunks and assembled files as last measured plus what this process added since.
    pub fn estimated_bytes(&self) -> u64 {
        self.estimated_bytes.load(Ordering::Relaxed)
    }

    fn added(&self, bytes: u64) {
        let total = self.estimated_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > self.max_bytes {
            if let Err(e) = self.enforce_limit() {
                tracing::warn!("cache eviction failed: {e}");
            }
        }
    }

    fn touch(&self, id: &ChunkId, file: &File) {
        let now = Instant::now();
        let Ok(mut touched) = self.touched.lock() else {
            return;
        };
        if touched
            .get(id)
            .is_some_and(|t| now.duration_since(*t) < TOUCH_INTERVAL)
        {
            return;
        }
        if touched.len() > 1_000_000 {
            touched.clear();
        }
        touched.insert(*id, now);
        drop(touched);
        let _ = file.set_modified(SystemTime::now());
    }

    /// Measures the cache and, when it is over its limit, removes least-recently-used entries until it
    /// is under the low watermark. Coordinated between processes with an exclusive `flock`.
    pub fn enforce_limit(&self) -> Result<(), CacheError> {
        let _local = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        let lock_path = self.root.join("evict.lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err(&lock_path, io::Error::from(errno)))?;

        let mut entries = Vec::new();
        let mut total = 0u64;
        self.collect_entries(&self.root.join("chunks"), 2, &mut entries, &mut total);
        self.collect_entries(&self.root.join("files"), 1, &mut entries, &mut total);
        if total > self.max_bytes {
            let target = self.max_bytes / 100 * LOW_WATERMARK_PERCENT;
            entries.sort_by_key(|(mtime, _, _)| *mtime);
            for (_, size, path) in entries {
                if total <= target {
                    break;
                }
                if fs::remove_file(&path).is_ok() {
                    total = total.saturating_sub(size);
                    self.stats.evicted_entries.fetch_add(1, Ordering::Relaxed);
                    self.stats.evicted_bytes.fetch_add(size, Ordering::Relaxed);
                }
            }
        }
        self.estimated_bytes.store(total, Ordering::Relaxed);
        Ok(())
    }

    /// Walks `dir` down `depth` levels collecting (mtime, size, path) of regular files.
    fn collect_entries(
        &self,
        dir: &Path,
        depth: u32,
        out: &mut Vec<(SystemTime, u64, PathBuf)>,
        total: &mut u64,
    ) {
        let Ok(rd) = fs::read_dir(dir) else {
            return;
        };
        for entry in rd.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                if depth > 1 {
                    self.collect_entries(&entry.path(), depth - 1, out, total);
                }
            } else if meta.is_file() {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                *total += meta.len();
                out.push((mtime, meta.len(), entry.path()));
            }
        }
    }

    fn remove_stale_temp_files(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        let now = SystemTime::now();
        for entry in rd.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max: u64) -> Arc<HostCache> {
        let cache = HostCache::open(&CacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: max,
            durable: false,
        })
        .expect("open cache");
        // Let the initial scan finish so it does not race with the test's own accounting.
        cache.enforce_limit().expect("scan");
        cache
    }

    #[test]
    fn aligned_and_unaligned_entries_are_written_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1 << 30);
        // A whole decoded chunk (page-aligned, written without staging), a partial last chunk and a
        // buffer at an odd address (both staged and padded, then truncated).
        let plain: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
        let enc = image::encode_chunk(&plain, 1).expect("encode");
        let decoded = image::decode_chunk(&enc.chunk_ref, &enc.stored).expect("decode");
        let entries: [&[u8]; 3] = [&decoded, &plain[..5000], &plain[1..8193]];
        for (n, bytes) in entries.into_iter().enumerate() {
            let id = ChunkId::of(&[n as u8]);
            cache.insert(&id, bytes).expect("insert");
            let len = bytes.len() as u32;
            assert!(cache.contains(&id, len));
            assert_eq!(
                fs::metadata(cache.chunk_path(&id)).expect("entry").len(),
                u64::from(len)
            );
            let got = cache
                .read(&id, len, 0, bytes.len())
                .expect("read")
                .expect("hit");
            assert_eq!(got, bytes, "entry {n}");
        }
    }

    #[test]
    fn insert_then_read_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1 << 30);
        let id = ChunkId::of(b"stored");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert!(cache.read(&id, 10_000, 0, 10).expect("read").is_none());
        cache.insert(&id, &data).expect("insert");
        assert!(cache.contains(&id, 10_000));
        assert!(!cache.contains(&id, 9_999));
        let got = cache
            .read(&id, 10_000, 500, 100)
            .expect("read")
            .expect("hit");
        assert_eq!(got, &data[500..600]);
        let tail = cache
            .read(&id, 10_000, 9_990, 100)
            .expect("read")
            .expect("hit");
        assert_eq!(tail, &data[9_990..]);
    }

    #[test]
    fn inserts_leave_no_temporary_files_and_replace_a_damaged_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1 << 30);
        let id = ChunkId::of(b"y");
        // A damaged entry (wrong length) already in place is replaced by the verified bytes.
        let path = cache.chunk_path(&id);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, b"torn").expect("write");
        cache.insert(&id, b"whole entry").expect("insert");
        assert_eq!(fs::read(&path).expect("read"), b"whole entry");
        // Inserting the same chunk again (another writer) is a no-op.
        cache.insert(&id, b"whole entry").expect("insert again");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("tmp"))
            .expect("tmp dir")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("chunk dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the entry itself: {names:?}");
    }

    #[test]
    fn wrong_length_entry_is_a_miss_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1 << 30);
        let id = ChunkId::of(b"x");
        cache.insert(&id, &[1, 2, 3]).expect("insert");
        assert!(cache.read(&id, 4, 0, 4).expect("read").is_none());
        assert!(!cache.chunk_path(&id).exists());
    }

    #[test]
    fn eviction_keeps_total_under_limit_and_drops_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 100_000);
        let mut ids = Vec::new();
        for i in 0..30u32 {
            let id = ChunkId::of(&i.to_le_bytes());
            cache.insert(&id, &vec![i as u8; 10_000]).expect("insert");
            // Distinct, increasing mtimes so LRU order is well defined.
            let f = File::options()
                .write(true)
                .open(cache.chunk_path(&id))
                .expect("open");
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + u64::from(i)))
                .expect("set mtime");
            ids.push(id);
        }
        cache.enforce_limit().expect("evict");
        assert!(cache.estimated_bytes() <= 100_000);
        let present: Vec<bool> = ids.iter().map(|id| cache.contains(id, 10_000)).collect();
        assert!(present[29], "newest entry must survive");
        assert!(!present[0], "oldest entry must be evicted");
        let on_disk: u64 = ids
            .iter()
            .filter_map(|id| fs::metadata(cache.chunk_path(id)).ok())
            .map(|m| m.len())
            .sum();
        assert!(on_disk <= 100_000, "{on_disk} bytes left");
    }
}
