//! One host-cache file: the plaintext of one distinct file content, filled chunk by chunk, and the small
//! sidecar that says which chunks it holds.
//!
//! - **Data** (`<key>`): a sparse file of the file's size; chunk `i` lives at `i * chunk_size`. Holes of
//!   the image are never written, so they cost nothing. Once complete and sealed it is the FUSE
//!   passthrough backing of every mount of any image holding this content.
//! - **Sidecar** (`<key>.map`): a 64-byte header (magic, chunk size, file size, chunk count, key), one
//!   presence *byte* per chunk (0 absent, 1 present, 2 hole; bytes rather than bits so that writers in
//!   several processes never lose an update to a read-modify-write), then a seal record.
//!
//! Write protocol: a chunk's plaintext is written only after [`image::decode_chunk`] (or a key check)
//! verified it, and its presence byte is set only after the data write returned (and after `fdatasync`
//! when durable), so a kill -9 never leaves a present byte without its bytes.
//!
//! Trust: this process serves a chunk from the data file only after it knows the bytes are right: it
//! wrote them, or it checked them against the chunk key recorded in the manifest
//! ([`image::check_chunk_key`]), or the file is **sealed**. Sealing happens once every chunk is present and
//! verified: the data is fsynced, then its `(dev, ino, size, ctime)` is stored in the seal record. An open
//! that finds the seal matching the data file's current `stat` trusts the whole file without hashing: any
//! write to the file after the seal changes its ctime (multigrain ctime, Linux ≥ 6.13 on
//! ext4/xfs/btrfs/tmpfs), so a modified file is re-verified chunk by chunk and sealed again.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use image::ChunkRef;
use parking_lot::Mutex;

/// Magic at the start of a sidecar.
const MAP_MAGIC: &[u8; 8] = b"TNCFILE2";
/// Bytes of the sidecar header; presence bytes follow.
const HEADER_LEN: u64 = 64;
/// Bytes of the seal record after the presence bytes.
const SEAL_LEN: usize = 48;
/// Magic of a written seal record.
const SEAL_MAGIC: &[u8; 4] = b"SEAL";
/// Presence byte of a chunk not in the data file.
const ABSENT: u8 = 0;
/// Presence byte of a chunk whose verified bytes are in the data file.
const PRESENT: u8 = 1;
/// Presence byte of a hole of the image (never written).
const HOLE: u8 = 2;
/// How often, at most, this process refreshes a file's last-use time (the sidecar's mtime).
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Alignment of buffers, offsets and lengths for direct I/O (the page size covers every block size in
/// use).
pub(crate) const DIRECT_IO_ALIGN: usize = image::DECODED_ALIGN;

/// `len` rounded up to the direct I/O alignment.
pub(crate) fn direct_io_len(len: usize) -> usize {
    len.div_ceil(DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN
}

/// A byte buffer whose usable part starts at a [`DIRECT_IO_ALIGN`]-aligned address, for direct I/O.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
}

impl AlignedBuf {
    /// An empty buffer (allocates on first use).
    pub const fn new() -> AlignedBuf {
        AlignedBuf {
            storage: Vec::new(),
        }
    }

    /// `len` aligned bytes (contents unspecified), growing the buffer when needed.
    pub fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        if self.storage.len() < len + DIRECT_IO_ALIGN {
            self.storage = vec![0; len + DIRECT_IO_ALIGN];
        }
        let start = self.storage.as_ptr().align_offset(DIRECT_IO_ALIGN);
        &mut self.storage[start..start + len]
    }
}

thread_local! {
    /// A bounce buffer for direct reads into unaligned destinations.
    static BOUNCE: std::cell::RefCell<AlignedBuf> = const { std::cell::RefCell::new(AlignedBuf::new()) };
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

/// The name of a distinct file content in the host cache: BLAKE3 of its size, chunk size and chunk
/// list, so identical files in different images share one cache file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey(pub [u8; 32]);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileKey({})", self.to_hex())
    }
}

impl FileKey {
    /// The key of a file of `size` bytes cut into `chunk_size`-byte `chunks` (`None` = hole).
    pub fn of(size: u64, chunk_size: u64, chunks: &[Option<ChunkRef>]) -> FileKey {
        let mut h = blake3::Hasher::new();
        h.update(b"thinnode cache file v2");
        h.update(&size.to_le_bytes());
        h.update(&chunk_size.to_le_bytes());
        for c in chunks {
            match c {
                None => {
                    h.update(&[0]);
                }
                Some(r) => {
                    h.update(&[1]);
                    h.update(&r.id.0);
                    h.update(&r.plain_len.to_le_bytes());
                }
            }
        }
        FileKey(*h.finalize().as_bytes())
    }

    /// The key in lowercase hex (the data file's name).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`FileKey::to_hex`] output.
    pub fn from_hex(s: &str) -> Option<FileKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(FileKey(out))
    }
}

/// Size, chunk size and chunk count of a cached file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileShape {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes (> 0).
    pub chunk_size: u64,
    /// Number of chunks (`size / chunk_size` rounded up).
    pub chunk_count: u64,
}

impl FileShape {
    /// The shape of a file of `size` bytes in `chunk_size`-byte chunks.
    pub fn new(size: u64, chunk_size: u64) -> FileShape {
        let chunk_size = chunk_size.max(1);
        FileShape {
            size,
            chunk_size,
            chunk_count: size.div_ceil(chunk_size),
        }
    }

    /// Byte length of chunk `index`.
    pub fn chunk_len(&self, index: u64) -> u64 {
        self.size
            .saturating_sub(index.saturating_mul(self.chunk_size))
            .min(self.chunk_size)
    }
}

/// Where the data file and sidecar of `key` live under the cache's files directory.
pub(crate) fn paths_of(files_dir: &Path, key: &FileKey) -> (PathBuf, PathBuf) {
    let hex = key.to_hex();
    let dir = files_dir.join(&hex[..2]);
    (dir.join(&hex), dir.join(format!("{hex}.map")))
}

/// What [`CacheFile::fill`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The chunk was written (now present and verified).
    Written,
    /// The chunk was written and was the last one missing: the file is now sealed.
    Sealed,
    /// The chunk was already present (written by this process or another); nothing written.
    AlreadyPresent,
}

/// Whether [`CacheFile::seal`] sealed the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealOutcome {
    /// The file is sealed (now or before).
    Sealed,
    /// Some chunks are missing (absent, or present with wrong bytes, which are now marked absent).
    Incomplete {
        /// Chunks missing.
        missing: u64,
    },
}

/// A bitmap of chunk flags shared between threads.
#[derive(Debug)]
struct Bits {
    words: Vec<AtomicU64>,
}

impl Bits {
    fn new(n: u64) -> Bits {
        Bits {
            words: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; returns whether it was clear before.
    fn set(&self, i: u64) -> bool {
        self.words.get((i / 64) as usize).is_some_and(|w| {
            let bit = 1 << (i % 64);
            w.fetch_or(bit, Ordering::AcqRel) & bit == 0
        })
    }

    /// Clears bit `i`; returns whether it was set before.
    fn clear(&self, i: u64) -> bool {
        self.words.get((i / 64) as usize).is_some_and(|w| {
            let bit = 1 << (i % 64);
            w.fetch_and(!bit, Ordering::AcqRel) & bit != 0
        })
    }
}

/// The seal record: the data file's identity and change time right after the last write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seal {
    dev: u64,
    ino: u64,
    size: u64,
    ctime_sec: i64,
    ctime_nsec: i64,
}

impl Seal {
    fn of(meta: &fs::Metadata) -> Seal {
        Seal {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime_sec: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }

    fn encode(&self) -> [u8; SEAL_LEN] {
        let mut out = [0u8; SEAL_LEN];
        out[0..4].copy_from_slice(SEAL_MAGIC);
        out[8..16].copy_from_slice(&self.dev.to_le_bytes());
        out[16..24].copy_from_slice(&self.ino.to_le_bytes());
        out[24..32].copy_from_slice(&self.size.to_le_bytes());
        out[32..40].copy_from_slice(&self.ctime_sec.to_le_bytes());
        out[40..44].copy_from_slice(&(self.ctime_nsec as u32).to_le_bytes());
        let crc = crc32c::crc32c(&out[..44]);
        out[44..48].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8; SEAL_LEN]) -> Option<Seal> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        if &b[0..4] != SEAL_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[44..48].try_into().ok()?);
        if crc32c::crc32c(&b[..44]) != crc {
            return None;
        }
        Some(Seal {
            dev: u64_at(8)?,
            ino: u64_at(16)?,
            size: u64_at(24)?,
            ctime_sec: u64_at(32)? as i64,
            ctime_nsec: i64::from(u32::from_le_bytes(b[40..44].try_into().ok()?)),
        })
    }
}

fn header(key: &FileKey, shape: &FileShape) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAP_MAGIC);
    h[8..16].copy_from_slice(&shape.chunk_size.to_le_bytes());
    h[16..24].copy_from_slice(&shape.size.to_le_bytes());
    h[24..32].copy_from_slice(&shape.chunk_count.to_le_bytes());
    h[32..64].copy_from_slice(&key.0);
    h
}

fn parse_header(h: &[u8; HEADER_LEN as usize]) -> Option<(FileKey, FileShape)> {
    if &h[0..8] != MAP_MAGIC {
        return None;
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(h.get(at..at + 8)?.try_into().ok()?))
    };
    let shape = FileShape {
        chunk_size: u64_at(8)?,
        size: u64_at(16)?,
        chunk_count: u64_at(24)?,
    };
    if shape.chunk_size == 0 || shape != FileShape::new(shape.size, shape.chunk_size) {
        return None;
    }
    Some((FileKey(h[32..64].try_into().ok()?), shape))
}

/// Creates the file `path` with the content `init` writes, atomically: the file is written unnamed
/// (`O_TMPFILE`, or a temporary name where the filesystem lacks it) and linked under its name only when
/// complete. Returns `false` when the name already existed (the existing file is kept).
fn create_exclusive(path: &Path, init: impl Fn(&File) -> io::Result<()>) -> io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmp {
        Ok(f) => {
            init(&f)?;
            let from = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))
                .map_err(io::Error::other)?;
            let to = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(io::Error::other)?;
            // SAFETY: both are valid NUL-terminated strings that outlive the call.
            let rc = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            if rc == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Ok(false);
            }
            Err(e)
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) =>
        {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".tmp.{}.{n}", std::process::id()));
            let tmp_path = PathBuf::from(name);
            let result = (|| {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp_path)?;
                init(&f)?;
                match fs::hard_link(&tmp_path, path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e),
                }
            })();
            let _ = fs::remove_file(&tmp_path);
            result
        }
        Err(e) => Err(e),
    }
}

/// Reads into `out` at `offset` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, out: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < out.len() {
        match file.read_at(&mut out[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A freshly allocated buffer of `len` bytes starting at an aligned address: the vector and the start.
fn aligned_vec(len: usize) -> (Vec<u8>, usize) {
    let mut v = vec![0u8; direct_io_len(len) + DIRECT_IO_ALIGN];
    let start = v.as_ptr().align_offset(DIRECT_IO_ALIGN);
    v.truncate(start + direct_io_len(len));
    (v, start)
}

/// One open host-cache file (data + sidecar) and what this process knows about it.
pub struct CacheFile {
    key: FileKey,
    shape: FileShape,
    data_path: PathBuf,
    map_path: PathBuf,
    /// The data file, open read-write, with `O_DIRECT` when `direct`.
    data: File,
    direct: bool,
    /// The data file without `O_DIRECT` (unaligned writes and reads); the same file as `data` when the
    /// filesystem refused direct I/O.
    buffered: File,
    map: File,
    durable: bool,
    /// Holes of the image (`None` when opened without the chunk list: such a handle cannot seal).
    holes: Option<Bits>,
    /// Chunks whose bytes in the data file this process knows are right (holes included).
    verified: Bits,
    verified_count: AtomicU64,
    /// Chunks a thread of this process is writing now.
    writing: Bits,
    sealed: AtomicBool,
    last_touch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for CacheFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheFile")
            .field("key", &self.key)
            .field("shape", &self.shape)
            .field("sealed", &self.sealed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CacheFile {
    /// Opens the cache file of `key` under `files_dir`, creating it (data and sidecar) when missing.
    /// `chunks` is the file's chunk list (`None` = hole), whose length is the shape's chunk count.
    pub(crate) fn open(
        files_dir: &Path,
        key: FileKey,
        shape: FileShape,
        chunks: &[Option<ChunkRef>],
        durable: bool,
    ) -> io::Result<CacheFile> {
        let (data_path, map_path) = paths_of(files_dir, &key);
        if let Some(dir) = data_path.parent() {
            fs::create_dir_all(dir)?;
        }
        let hole_bits = || {
            let holes = Bits::new(shape.chunk_count);
            for (i, c) in chunks.iter().enumerate() {
                if c.is_none() {
                    holes.set(i as u64);
                }
            }
            holes
        };
        // A concurrent eviction may unlink what was just opened: then start over.
        for _ in 0..4 {
            let holes = hole_bits();
            let (data, direct, buffered) = open_or_create_data(&data_path, shape.size)?;
            let map = open_or_create_map(&map_path, &key, &shape, &holes)?;
            let linked = |f: &File| f.metadata().map(|m| m.nlink() > 0);
            if !(linked(&buffered)? && linked(&map)?) {
                continue;
            }
            let file = CacheFile {
                key,
                shape,
                data_path,
                map_path,
                data,
                direct,
                buffered,
                map,
                durable,
                verified: Bits::new(shape.chunk_count),
                verified_count: AtomicU64::new(0),
                writing: Bits::new(shape.chunk_count),
                holes: Some(holes),
                sealed: AtomicBool::new(false),
                last_touch: Mutex::new(None),
            };
            if let Some(h) = &file.holes {
                for i in 0..shape.chunk_count {
                    if h.get(i) {
                        file.mark_verified(i);
                    }
                }
            }
            file.check_sealed();
            return Ok(file);
        }
        Err(io::Error::other(format!(
            "{} keeps disappearing while it is opened (evicted by another process)",
            data_path.display()
        )))
    }

    /// Opens the existing cache file of `key` (for reading chunks other files share), or `None` when it
    /// is not there. The handle cannot seal (it does not know the holes).
    pub(crate) fn open_existing(
        files_dir: &Path,
        key: FileKey,
        durable: bool,
    ) -> io::Result<Option<CacheFile>> {
        let (data_path, map_path) = paths_of(files_dir, &key);
        let map = match OpenOptions::new().read(true).write(true).open(&map_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut h = [0u8; HEADER_LEN as usize];
        if read_full_at(&map, &mut h, 0)? != h.len() {
            return Ok(None);
        }
        let Some((found, shape)) = parse_header(&h) else {
            return Ok(None);
        };
        if found != key {
            return Ok(None);
        }
        let (data, direct, buffered) = match open_data(&data_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if buffered.metadata()?.len() != shape.size {
            return Ok(None);
        }
        Ok(Some(CacheFile {
            key,
            shape,
            data_path,
            map_path,
            data,
            direct,
            buffered,
            map,
            durable,
            verified: Bits::new(shape.chunk_count),
            verified_count: AtomicU64::new(0),
            writing: Bits::new(shape.chunk_count),
            holes: None,
            sealed: AtomicBool::new(false),
            last_touch: Mutex::new(None),
        }))
    }

    /// The content key.
    pub fn key(&self) -> &FileKey {
        &self.key
    }

    /// Size and chunking.
    pub fn shape(&self) -> FileShape {
        self.shape
    }

    /// The data file's path.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    fn mark_verified(&self, index: u64) {
        if self.verified.set(index) {
            self.verified_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn unmark_verified(&self, index: u64) {
        if self.verified.clear(index) {
            self.verified_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether this process knows chunk `index` holds the right bytes.
    pub fn is_verified(&self, index: u64) -> bool {
        self.verified.get(index)
    }

    /// Whether every chunk is known right to this process.
    pub fn all_verified(&self) -> bool {
        self.verified_count.load(Ordering::Acquire) >= self.shape.chunk_count
    }

    /// The presence byte of chunk `index` as stored in the sidecar.
    fn presence(&self, index: u64) -> io::Result<u8> {
        let mut b = [0u8; 1];
        if read_full_at(&self.map, &mut b, HEADER_LEN + index)? != 1 {
            return Ok(ABSENT);
        }
        Ok(b[0])
    }

    fn set_presence(&self, index: u64, value: u8) -> io::Result<()> {
        self.map.write_all_at(&[value], HEADER_LEN + index)
    }

    /// Whether chunk `index` is in the data file (verified by this process, or marked present by any).
    pub fn has(&self, index: u64) -> bool {
        self.is_verified(index) || self.presence(index).is_ok_and(|p| p == PRESENT)
    }

    fn seal_offset(&self) -> u64 {
        HEADER_LEN + self.shape.chunk_count
    }

    fn read_seal(&self) -> io::Result<Option<Seal>> {
        let mut b = [0u8; SEAL_LEN];
        if read_full_at(&self.map, &mut b, self.seal_offset())? != SEAL_LEN {
            return Ok(None);
        }
        Ok(Seal::decode(&b))
    }

    /// Whether the file is sealed: known to this process, or a seal record matching the data file's
    /// current identity and change time (then every chunk counts as verified).
    pub fn check_sealed(&self) -> bool {
        if self.sealed.load(Ordering::Acquire) {
            return true;
        }
        let matches = match (self.read_seal(), self.buffered.metadata()) {
            (Ok(Some(seal)), Ok(meta)) => seal == Seal::of(&meta) && meta.nlink() > 0,
            _ => false,
        };
        if matches {
            for i in 0..self.shape.chunk_count {
                self.mark_verified(i);
            }
            self.sealed.store(true, Ordering::Release);
        }
        matches
    }

    /// Whether the sidecar marks every chunk present or a hole (any process may have written them).
    pub fn is_complete_on_disk(&self) -> io::Result<bool> {
        if self.all_verified() {
            return Ok(true);
        }
        let mut bytes = vec![0u8; self.shape.chunk_count as usize];
        let n = read_full_at(&self.map, &mut bytes, HEADER_LEN)?;
        Ok(n == bytes.len() && bytes.iter().all(|b| *b != ABSENT))
    }

    /// Reads the whole chunk `index` from the data file and checks it against `r`'s key, without
    /// looking at the presence byte. Returns the bytes (a vector and the range holding them) or `None`
    /// when they do not match.
    fn read_and_check(
        &self,
        index: u64,
        r: &ChunkRef,
    ) -> io::Result<Option<(Vec<u8>, std::ops::Range<usize>)>> {
        let len = r.plain_len as usize;
        if len as u64 != self.shape.chunk_len(index) {
            return Ok(None);
        }
        let (mut buf, start) = aligned_vec(len);
        let offset = index * self.shape.chunk_size;
        let got = if self.direct {
            read_full_at(&self.data, &mut buf[start..], offset)?
        } else {
            read_full_at(&self.buffered, &mut buf[start..start + len], offset)?
        };
        if got < len {
            return Ok(None);
        }
        let plain = &buf[start..start + len];
        if image::check_chunk_key(r, plain).is_err() {
            return Ok(None);
        }
        Ok(Some((buf, start..start + len)))
    }

    /// Chunk `index` (reference `r`) as verified plaintext when it is present in the data file: the
    /// vector and the range of the chunk's bytes in it. A present chunk whose bytes do not match is
    /// logged and marked absent (to be fetched again); `None` then, and when the chunk is absent.
    pub fn read_chunk(
        &self,
        index: u64,
        r: &ChunkRef,
    ) -> io::Result<Option<(Vec<u8>, std::ops::Range<usize>)>> {
        if !self.is_verified(index) && self.presence(index)? != PRESENT {
            return Ok(None);
        }
        match self.read_and_check(index, r)? {
            Some(found) => {
                self.mark_verified(index);
                self.touch();
                Ok(Some(found))
            }
            None => {
                tracing::warn!(
                    "host cache file {} chunk {index} does not match its key: fetching it again",
                    self.data_path.display()
                );
                self.unmark_verified(index);
                self.sealed.store(false, Ordering::Release);
                self.set_presence(index, ABSENT)?;
                Ok(None)
            }
        }
    }

    /// Reads `out.len()` bytes at `within` of chunk `index` (reference `r`) into `out` when the chunk is
    /// present with the right bytes (a chunk this process has not verified yet is read whole and
    /// checked first). `Ok(false)` when the chunk must be fetched.
    pub fn read_into(
        &self,
        index: u64,
        r: &ChunkRef,
        within: u64,
        out: &mut [u8],
    ) -> io::Result<bool> {
        if !self.is_verified(index) {
            let Some((buf, range)) = self.read_chunk(index, r)? else {
                return Ok(false);
            };
            let chunk = &buf[range];
            let start = (within as usize).min(chunk.len());
            let end = start.saturating_add(out.len()).min(chunk.len());
            if end - start != out.len() {
                return Ok(false);
            }
            out.copy_from_slice(&chunk[start..end]);
            return Ok(true);
        }
        let offset = index * self.shape.chunk_size + within;
        let got = self.read_data(offset, out)?;
        self.touch();
        Ok(got == out.len())
    }

    /// Reads data-file bytes at `offset` into `out` (direct I/O when everything is aligned, through a
    /// bounce buffer otherwise, so the cache file's pages do not fill the page cache a second time).
    fn read_data(&self, offset: u64, out: &mut [u8]) -> io::Result<usize> {
        let end = offset.saturating_add(out.len() as u64).min(self.shape.size);
        if offset >= end {
            return Ok(0);
        }
        let want = (end - offset) as usize;
        if !self.direct {
            return read_full_at(&self.buffered, &mut out[..want], offset);
        }
        let aligned = out.as_ptr().align_offset(DIRECT_IO_ALIGN) == 0
            && offset % DIRECT_IO_ALIGN as u64 == 0
            && out.len() >= direct_io_len(want);
        if aligned {
            let n = read_full_at(&self.data, &mut out[..direct_io_len(want)], offset)?;
            return Ok(n.min(want));
        }
        let head = (offset % DIRECT_IO_ALIGN as u64) as usize;
        let start = offset - head as u64;
        BOUNCE.with(|cell| {
            let mut bounce = cell.borrow_mut();
            let space = bounce.slice_mut(direct_io_len(head + want));
            let n = read_full_at(&self.data, space, start)?;
            let n = n.saturating_sub(head).min(want);
            out[..n].copy_from_slice(&space[head..head + n]);
            Ok(n)
        })
    }

    /// Stores the verified plaintext of chunk `index` (the caller checked it: decoded from the store
    /// or checked against the chunk key). Writes nothing when the chunk is already present or another
    /// thread of this process is writing it. Seals the file when it was the last missing chunk.
    pub fn fill(&self, index: u64, plain: &[u8]) -> io::Result<Filled> {
        if index >= self.shape.chunk_count || plain.len() as u64 != self.shape.chunk_len(index) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "chunk {index} of {} bytes does not fit {:?}",
                    plain.len(),
                    self.shape
                ),
            ));
        }
        if self.is_verified(index) || !self.writing.set(index) {
            return Ok(Filled::AlreadyPresent);
        }
        let result = self.fill_claimed(index, plain);
        self.writing.clear(index);
        result
    }

    fn fill_claimed(&self, index: u64, plain: &[u8]) -> io::Result<Filled> {
        if self.presence(index)? == PRESENT {
            return Ok(Filled::AlreadyPresent);
        }
        let offset = index * self.shape.chunk_size;
        let aligned_len = plain.len() % DIRECT_IO_ALIGN == 0;
        if self.direct && aligned_len {
            if plain.as_ptr().align_offset(DIRECT_IO_ALIGN) == 0 {
                self.data.write_all_at(plain, offset)?;
            } else {
                BOUNCE.with(|cell| {
                    let mut bounce = cell.borrow_mut();
                    let space = bounce.slice_mut(plain.len());
                    space.copy_from_slice(plain);
                    self.data.write_all_at(space, offset)
                })?;
            }
        } else {
            self.buffered.write_all_at(plain, offset)?;
        }
        self.after_write(index)
    }

    /// Marks chunk `index` present once its bytes are written (synced first when durable), and seals
    /// the file when that was the last chunk missing.
    fn after_write(&self, index: u64) -> io::Result<Filled> {
        if self.durable {
            self.buffered.sync_data()?;
        }
        self.set_presence(index, PRESENT)?;
        self.mark_verified(index);
        self.touch();
        if self.all_verified() && self.holes.is_some() && !self.sealed.load(Ordering::Acquire) {
            match self.seal() {
                Ok(()) if self.sealed.load(Ordering::Acquire) => return Ok(Filled::Sealed),
                Ok(()) => {}
                Err(e) => tracing::warn!("cannot seal {}: {e}", self.data_path.display()),
            }
        }
        Ok(Filled::Written)
    }

    /// Shares chunk `src_index` of `src` (already checked by the caller) as chunk `index` of this file
    /// by a reflink (`FICLONERANGE`), so the bytes are stored once. `Ok(None)` when the filesystem
    /// cannot clone this range (the caller then writes the bytes).
    pub fn reflink_from(
        &self,
        index: u64,
        src: &CacheFile,
        src_index: u64,
    ) -> io::Result<Option<Filled>> {
        let len = self.shape.chunk_len(index);
        if len != src.shape.chunk_len(src_index) || index >= self.shape.chunk_count {
            return Ok(None);
        }
        if self.is_verified(index) || !self.writing.set(index) {
            return Ok(Some(Filled::AlreadyPresent));
        }
        let result = (|| {
            if self.presence(index)? == PRESENT {
                return Ok(Some(Filled::AlreadyPresent));
            }
            let range = libc::file_clone_range {
                src_fd: i64::from(src.buffered.as_raw_fd()),
                src_offset: src_index * src.shape.chunk_size,
                src_length: len,
                dest_offset: index * self.shape.chunk_size,
            };
            // SAFETY: FICLONERANGE reads a valid file_clone_range struct; both descriptors are open.
            let rc = unsafe {
                libc::ioctl(
                    self.buffered.as_raw_fd(),
                    libc::FICLONERANGE,
                    &range as *const libc::file_clone_range,
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(
                        libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::EBADF,
                    ) => Ok(None),
                    _ => Err(e),
                };
            }
            self.after_write(index).map(Some)
        })();
        self.writing.clear(index);
        result
    }

    /// Seals the file when every chunk is present with the right bytes: chunks this process has not
    /// verified are read and checked (a mismatch is marked absent), data that is not the image's (in
    /// ranges that must be holes) is punched out, the data is fsynced, and the data file's identity and
    /// change time are recorded. Needs the chunk list (`chunks`, as given to [`CacheFile::open`]).
    pub fn seal_with(&self, chunks: &[Option<ChunkRef>]) -> io::Result<SealOutcome> {
        if self.check_sealed() {
            return Ok(SealOutcome::Sealed);
        }
        let mut missing = 0;
        for (i, c) in chunks.iter().enumerate() {
            let i = i as u64;
            let Some(r) = c else { continue };
            if self.is_verified(i) {
                continue;
            }
            if self.read_chunk(i, r)?.is_none() {
                missing += 1;
            }
        }
        if missing > 0 {
            return Ok(SealOutcome::Incomplete { missing });
        }
        self.seal()?;
        Ok(SealOutcome::Sealed)
    }

    /// Records the seal of a file every chunk of which this process has verified.
    fn seal(&self) -> io::Result<()> {
        let Some(holes) = &self.holes else {
            return Ok(());
        };
        if !self.all_verified() || self.sealed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.clear_holes(holes)?;
        self.buffered.sync_all()?;
        let meta = self.buffered.metadata()?;
        if meta.len() != self.shape.size || meta.nlink() == 0 {
            return Ok(());
        }
        self.map
            .write_all_at(&Seal::of(&meta).encode(), self.seal_offset())?;
        self.sealed.store(true, Ordering::Release);
        tracing::debug!("sealed {}", self.data_path.display());
        Ok(())
    }

    /// Punches out data found in ranges that are holes of the image (never written by thinnode, so only
    /// there if something else wrote the file), so a sealed file reads zeros there.
    fn clear_holes(&self, holes: &Bits) -> io::Result<()> {
        let mut pos = 0u64;
        let size = self.shape.size;
        let cs = self.shape.chunk_size;
        while pos < size {
            let Some(data) = seek(&self.buffered, pos, libc::SEEK_DATA)? else {
                break;
            };
            let end = seek(&self.buffered, data, libc::SEEK_HOLE)?
                .unwrap_or(size)
                .min(size);
            for i in data / cs..end.div_ceil(cs) {
                if holes.get(i) {
                    let (start, len) = (i * cs, self.shape.chunk_len(i));
                    tracing::warn!(
                        "host cache file {} has data in hole chunk {i}: clearing it",
                        self.data_path.display()
                    );
                    punch(&self.buffered, start, len)?;
                }
            }
            pos = end.max(data + 1);
        }
        Ok(())
    }

    /// A read-only descriptor of the data file (same inode), for FUSE passthrough.
    pub fn backing(&self) -> io::Result<File> {
        File::open(format!("/proc/self/fd/{}", self.buffered.as_raw_fd()))
    }

    /// Whether the data file was unlinked (evicted) since it was opened.
    pub fn is_evicted(&self) -> bool {
        self.buffered.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// Refreshes the file's last use (the sidecar's mtime; the data file's times are left alone, they
    /// are part of the seal), at most once a minute per process.
    pub fn touch(&self) {
        let now = Instant::now();
        {
            let mut last = self.last_touch.lock();
            if last.is_some_and(|t| now.duration_since(t) < TOUCH_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        let _ = self.map.set_modified(SystemTime::now());
    }

    /// Bytes the file (data and sidecar) occupies on disk.
    pub fn allocated_bytes(&self) -> u64 {
        let blocks = |f: &File| f.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        blocks(&self.buffered) + blocks(&self.map)
    }

    /// The sidecar's path.
    pub fn map_path(&self) -> &Path {
        &self.map_path
    }
}

/// Opens the data file read-write (direct I/O and buffered descriptors).
fn open_data(path: &Path) -> io::Result<(File, bool, File)> {
    let open = |flags: libc::c_int| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    let (data, direct) = open_direct_or_buffered(open)?;
    let buffered = if direct { open(0)? } else { data.try_clone()? };
    Ok((data, direct, buffered))
}

/// Opens the data file, creating it (sparse, `size` bytes) when missing; one with another length
/// (damaged) is replaced.
fn open_or_create_data(path: &Path, size: u64) -> io::Result<(File, bool, File)> {
    for _ in 0..4 {
        match open_data(path) {
            Ok(files) => {
                if files.2.metadata()?.len() == size {
                    return Ok(files);
                }
                tracing::warn!(
                    "host cache file {} has the wrong length: replacing it",
                    path.display()
                );
                let mut map = path.as_os_str().to_owned();
                map.push(".map");
                let _ = fs::remove_file(PathBuf::from(map));
                let _ = fs::remove_file(path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_exclusive(path, |f| f.set_len(size))?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "cannot create {} (it keeps changing)",
        path.display()
    )))
}

/// Opens the sidecar, creating it (all chunks absent, holes marked) when missing; one that does not
/// describe this file (damaged) is replaced.
fn open_or_create_map(
    path: &Path,
    key: &FileKey,
    shape: &FileShape,
    holes: &Bits,
) -> io::Result<File> {
    for _ in 0..4 {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => {
                let mut h = [0u8; HEADER_LEN as usize];
                let ok = read_full_at(&f, &mut h, 0)? == h.len()
                    && parse_header(&h).is_some_and(|(k, s)| k == *key && s == *shape)
                    && f.metadata()?.len() >= HEADER_LEN + shape.chunk_count + SEAL_LEN as u64;
                if ok {
                    return Ok(f);
                }
                tracing::warn!(
                    "host cache sidecar {} is damaged: replacing it",
                    path.display()
                );
                let _ = fs::remove_file(path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_exclusive(path, |f| {
                    let mut body = Vec::with_capacity(
                        HEADER_LEN as usize + shape.chunk_count as usize + SEAL_LEN,
                    );
                    body.extend_from_slice(&header(key, shape));
                    body.extend((0..shape.chunk_count).map(|i| {
                        if holes.get(i) {
                            HOLE
                        } else {
                            ABSENT
                        }
                    }));
                    body.extend_from_slice(&[0u8; SEAL_LEN]);
                    f.write_all_at(&body, 0)
                })?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "cannot create {} (it keeps changing)",
        path.display()
    )))
}

/// lseek(2) SEEK_DATA / SEEK_HOLE; `None` for ENXIO.
fn seek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: plain syscall on an open descriptor (its file offset is not used elsewhere).
    let pos = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if pos < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(u64::try_from(pos).ok())
}

/// Deallocates `len` bytes at `offset` (they read as zeros); writes zeros where punching is refused.
fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    };
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    file.write_all_at(&vec![0u8; len as usize], offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A file of 3 full chunks, a hole and a short tail; returns the chunk list and the plaintexts.
    type Sample = (FileShape, Vec<Option<ChunkRef>>, Vec<Option<Vec<u8>>>);

    fn sample(cs: usize) -> Sample {
        let parts = vec![
            Some(pattern(cs, 1)),
            Some(pattern(cs, 2)),
            None,
            Some(pattern(cs, 3)),
            Some(pattern(5000, 4)),
        ];
        let refs = parts
            .iter()
            .map(|p| {
                p.as_ref()
                    .map(|p| image::encode_chunk(p, 1).expect("encode").chunk_ref)
            })
            .collect();
        let size = (4 * cs + 5000) as u64;
        (FileShape::new(size, cs as u64), refs, parts)
    }

    fn open(dir: &Path, refs: &[Option<ChunkRef>], shape: FileShape) -> CacheFile {
        let key = FileKey::of(shape.size, shape.chunk_size, refs);
        CacheFile::open(dir, key, shape, refs, true).expect("open")
    }

    #[test]
    fn filled_file_seals_and_a_new_open_trusts_it() {
        for base in ["/var/tmp", "/dev/shm"] {
            let dir = tempfile::tempdir_in(base).expect("tempdir");
            let (shape, refs, parts) = sample(64 << 10);
            let f = open(dir.path(), &refs, shape);
            assert!(!f.check_sealed());
            for (i, p) in parts.iter().enumerate() {
                if let Some(p) = p {
                    let filled = f.fill(i as u64, p).expect("fill");
                    let want = if i == 4 {
                        Filled::Sealed
                    } else {
                        Filled::Written
                    };
                    assert_eq!(filled, want);
                }
            }
            assert!(f.check_sealed(), "the last chunk seals the file");
            let data = fs::read(f.data_path()).expect("read data");
            let mut want = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                match p {
                    Some(p) => want.extend_from_slice(p),
                    None => want.resize(want.len() + shape.chunk_len(i as u64) as usize, 0),
                }
            }
            assert!(data == want, "data file content ({base})");
            // Another opener trusts the seal without reading anything.
            let g = open(dir.path(), &refs, shape);
            assert!(g.check_sealed() && g.all_verified());
            let mut out = vec![0u8; 100];
            assert!(g
                .read_into(4, refs[4].as_ref().expect("tail"), 10, &mut out)
                .expect("read"));
            assert_eq!(&out[..], &want[4 * (64 << 10) + 10..4 * (64 << 10) + 110]);
        }
    }

    #[test]
    fn a_modified_sealed_file_is_checked_again_and_bad_chunks_refetched() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let cs = 64 << 10;
        let (shape, refs, parts) = sample(cs);
        let f = open(dir.path(), &refs, shape);
        for (i, p) in parts.iter().enumerate() {
            if let Some(p) = p {
                f.fill(i as u64, p).expect("fill");
            }
        }
        assert!(f.check_sealed());
        drop(f);
        // Corrupt chunk 1 and write garbage into the hole.
        let raw = OpenOptions::new()
            .write(true)
            .open(
                paths_of(
                    dir.path(),
                    &FileKey::of(shape.size, shape.chunk_size, &refs),
                )
                .0,
            )
            .expect("open raw");
        raw.write_all_at(b"garbage", cs as u64 + 100).expect("dd");
        raw.write_all_at(b"garbage", 2 * cs as u64 + 100)
            .expect("dd");
        drop(raw);
        let g = open(dir.path(), &refs, shape);
        assert!(!g.check_sealed(), "a write after the seal breaks it");
        let mut out = vec![0u8; 64];
        let r1 = refs[1].as_ref().expect("chunk 1");
        assert!(!g.read_into(1, r1, 100, &mut out).expect("read"));
        // The good chunk still reads.
        let r0 = refs[0].as_ref().expect("chunk 0");
        assert!(g.read_into(0, r0, 0, &mut out).expect("read"));
        assert_eq!(&out[..], &parts[0].as_ref().expect("p0")[..64]);
        assert_eq!(
            g.seal_with(&refs).expect("seal"),
            SealOutcome::Incomplete { missing: 1 }
        );
        g.fill(1, parts[1].as_ref().expect("p1")).expect("refill");
        assert!(g.check_sealed(), "refilled and resealed");
        let data = fs::read(g.data_path()).expect("read");
        assert!(data[2 * cs..3 * cs].iter().all(|b| *b == 0), "hole cleared");
        assert!(data[cs..2 * cs] == parts[1].as_ref().expect("p1")[..]);
    }

    #[test]
    fn unsealed_present_chunks_are_verified_before_use() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let cs = 64 << 10;
        let (shape, refs, parts) = sample(cs);
        let f = open(dir.path(), &refs, shape);
        f.fill(0, parts[0].as_ref().expect("p0")).expect("fill");
        f.fill(3, parts[3].as_ref().expect("p3")).expect("fill");
        drop(f);
        let key = FileKey::of(shape.size, shape.chunk_size, &refs);
        let raw = OpenOptions::new()
            .write(true)
            .open(paths_of(dir.path(), &key).0)
            .expect("raw");
        raw.write_all_at(b"X", 3 * cs as u64).expect("dd");
        drop(raw);
        let g = open(dir.path(), &refs, shape);
        assert!(g.has(0) && g.has(3) && !g.has(1));
        let mut out = vec![0u8; 16];
        assert!(g
            .read_into(0, refs[0].as_ref().expect("r0"), 0, &mut out)
            .expect("read"));
        assert!(!g
            .read_into(3, refs[3].as_ref().expect("r3"), 0, &mut out)
            .expect("read"));
        assert!(!g.has(3), "a chunk with wrong bytes is marked absent");
    }

    #[test]
    fn reflink_or_refusal_between_files() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let cs = 64 << 10;
        let (shape, refs, parts) = sample(cs);
        let a = open(dir.path(), &refs, shape);
        a.fill(0, parts[0].as_ref().expect("p0")).expect("fill");
        let other: Vec<Option<ChunkRef>> = vec![refs[0]];
        let bshape = FileShape::new(cs as u64, cs as u64);
        let b = open(dir.path(), &other, bshape);
        // ext4 has no reflinks: the clone is refused and nothing is marked present.
        if b.reflink_from(0, &a, 0).expect("clone").is_none() {
            assert!(!b.has(0));
            b.fill(0, parts[0].as_ref().expect("p0")).expect("fill");
        }
        assert!(b.check_sealed());
    }

    #[test]
    fn damaged_sidecar_is_replaced() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let (shape, refs, parts) = sample(64 << 10);
        let f = open(dir.path(), &refs, shape);
        f.fill(0, parts[0].as_ref().expect("p0")).expect("fill");
        let map = f.map_path().to_path_buf();
        drop(f);
        fs::write(&map, b"junk").expect("damage");
        let g = open(dir.path(), &refs, shape);
        assert!(!g.has(0));
        assert!(!g.check_sealed());
    }
}
