//! One namespace: its files on disk, its in-memory key table, and the read and write paths.
//!
//! Reads never take the writer lock: a GET copies the key's location out of a read-locked table, clones the
//! data file handle out of a read-locked list, and reads the payload with a positional read. Writes are
//! serialized per namespace by `writer`; they append the data entry, then the index record, then publish the
//! new location in the key table.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, ZdbError};
use crate::format::data_file::{data_file_name, DATA_ENTRY_HEADER_LEN, DATA_HEADER_LEN};
use crate::format::index_file::{
    index_file_name, INDEX_HEADER_LEN, INDEX_RECORD_FLAGS_AT, INDEX_RECORD_LEN, MODE_SEQ, MODE_USER,
};
use crate::format::namespace_file::{NAMESPACE_FILE_NAME, NS_FLAG_PUBLIC, NS_FLAG_WORM};
use crate::format::{
    zdb_crc32, DataEntryHeader, DataFileHeader, IndexFileHeader, IndexRecord, NamespaceDescriptor,
    FLAG_DELETED,
};
use crate::hook::Hook;

/// Name of the namespace every client starts in.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// Size of a SCAN/KEYCUR cursor: `{u8 idlength, u32 indexid, u32 length, u32 idxoffset, u32 crc}`.
pub const CURSOR_LEN: usize = 17;

/// How keys are chosen in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Clients choose keys.
    User,
    /// The server assigns 8-byte little-endian sequential ids.
    Seq,
}

impl Mode {
    fn byte(self) -> u8 {
        match self {
            Mode::User => MODE_USER,
            Mode::Seq => MODE_SEQ,
        }
    }

    /// The name NSINFO prints.
    pub fn name(self) -> &'static str {
        match self {
            Mode::User => "userkey",
            Mode::Seq => "sequential",
        }
    }
}

/// Settings shared by every namespace of a server.
#[derive(Debug)]
pub struct StoreConfig {
    /// Root of the index directories.
    pub index_root: PathBuf,
    /// Root of the data directories.
    pub data_root: PathBuf,
    /// Data file rotation size.
    pub datasize: u64,
    /// Fsync each write.
    pub sync: bool,
    /// Forced fsync interval in seconds without `sync` (0: never).
    pub synctime: u64,
    /// Mode forced for every namespace (`None`: mixed).
    pub fixed_mode: Option<Mode>,
    /// Rebuild indexes from data files when opening.
    pub rebuild_index: bool,
    /// The external hook, if any.
    pub hook: Option<Hook>,
}

/// Where the current version of a key lives, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    /// Data file id.
    pub dataid: u32,
    /// Offset of the data entry header in the data file.
    pub offset: u32,
    /// Payload length.
    pub length: u32,
    /// Payload checksum.
    pub crc: u32,
    /// Write time.
    pub timestamp: u32,
    /// Index file holding the record.
    pub idxid: u32,
    /// Offset of the record in the index file.
    pub idxoffset: u32,
    /// The key was deleted.
    pub deleted: bool,
}

impl KeyEntry {
    /// The SCAN/KEYCUR cursor of this entry.
    pub fn cursor(&self, keylen: usize) -> [u8; CURSOR_LEN] {
        encode_cursor(
            keylen as u8,
            self.idxid,
            self.length,
            self.idxoffset,
            self.crc,
        )
    }
}

/// Builds a cursor from its fields.
pub fn encode_cursor(
    idlength: u8,
    indexid: u32,
    length: u32,
    idxoffset: u32,
    crc: u32,
) -> [u8; CURSOR_LEN] {
    let mut c = [0u8; CURSOR_LEN];
    c[0] = idlength;
    c[1..5].copy_from_slice(&indexid.to_le_bytes());
    c[5..9].copy_from_slice(&length.to_le_bytes());
    c[9..13].copy_from_slice(&idxoffset.to_le_bytes());
    c[13..17].copy_from_slice(&crc.to_le_bytes());
    c
}

/// Runtime-changeable settings (persisted in the descriptor, except the mode which lives in index headers).
#[derive(Debug, Clone)]
pub struct NsSettings {
    /// Password, if any.
    pub password: Option<String>,
    /// Data size limit (0: none).
    pub maxsize: u64,
    /// Readable (read-only) without the password.
    pub public: bool,
    /// Write-once: no overwrite, no delete.
    pub worm: bool,
    /// Key mode.
    pub mode: Mode,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The files are on a read-only filesystem.
    #[error("Namespace is in read-only mode")]
    ReadOnlyFilesystem,
    /// The namespace's maxsize would be exceeded.
    #[error("No space left on this namespace")]
    NoSpace,
    /// Overwrite refused by worm mode.
    #[error("Namespace is protected by worm mode")]
    Worm,
    /// Delete refused by worm mode.
    #[error("Cannot delete a key when namespace is in worm mode")]
    WormDelete,
    /// User mode needs a non-empty key.
    #[error("Invalid argument, key needed")]
    KeyNeeded,
    /// Seq mode: a given key must exist.
    #[error("Invalid key, only update authorized")]
    OnlyUpdate,
    /// DEL of a missing key.
    #[error("Key not found")]
    KeyNotFound,
    /// The data entry could not be written.
    #[error("Cannot write data right now")]
    Data(#[source] io::Error),
    /// The index record could not be written.
    #[error("Cannot write index right now")]
    Index(#[source] io::Error),
    /// Mode change on a used namespace.
    #[error("Cannot change mode of used namespace")]
    NotFresh,
}

/// Result of a SET.
#[derive(Debug, PartialEq, Eq)]
pub enum SetOutcome {
    /// Stored under this key (the generated id in seq mode).
    Stored(Vec<u8>),
    /// Same payload as the current value: nothing written.
    Unchanged,
}

/// An index record found while walking the index, with its location.
#[derive(Debug, Clone)]
pub struct LocatedRecord {
    /// The record.
    pub record: IndexRecord,
    /// Index file id.
    pub idxid: u32,
    /// Offset in the index file.
    pub idxoffset: u32,
}

impl LocatedRecord {
    /// The cursor pointing at this record.
    pub fn cursor(&self) -> [u8; CURSOR_LEN] {
        encode_cursor(
            self.record.key.len() as u8,
            self.idxid,
            self.record.length,
            self.idxoffset,
            self.record.crc,
        )
    }
}

/// A raw data entry (DATA RAW).
#[derive(Debug)]
pub struct RawEntry {
    /// Entry header.
    pub header: DataEntryHeader,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

#[derive(Default)]
struct KeyTable {
    map: HashMap<Box<[u8]>, KeyEntry>,
    live: u64,
    datasize: u64,
    next_seq: u64,
    /// Bytes used by the in-memory index (key + entry), as NSINFO reports.
    memsize: u64,
}

impl KeyTable {
    fn apply(&mut self, key: &[u8], e: KeyEntry) {
        let entry_size = (std::mem::size_of::<KeyEntry>() + key.len()) as u64;
        match self.map.get_mut(key) {
            Some(old) => {
                if !old.deleted {
                    self.live -= 1;
                    self.datasize -= old.length as u64;
                }
                *old = e;
            }
            None => {
                self.map.insert(key.into(), e);
                self.next_seq += 1;
                self.memsize += entry_size;
            }
        }
        if !e.deleted {
            self.live += 1;
            self.datasize += e.length as u64;
        }
    }
}

#[derive(Default)]
struct Files {
    data: Vec<Arc<File>>,
    index: Vec<Arc<File>>,
}

struct WriterState {
    fileid: u32,
    data_end: u64,
    index_end: u64,
    data_previous: u32,
    index_previous: u32,
    /// Offset of the last record of each index file (0: none).
    index_last: Vec<u32>,
    last_sync: Instant,
    dirty: BTreeSet<u32>,
}

/// Writer positions saved before staging, to roll back a failed write.
#[derive(Default)]
struct SavedPositions {
    data_end: u64,
    data_previous: u32,
    index_end: u64,
    index_previous: u32,
    index_last: u32,
}

/// Entries staged for one write: the bytes to append to the current data and index files.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    index: Vec<u8>,
    data_start: u64,
    index_start: u64,
    /// Records in earlier index files (or committed earlier) to flag deleted once the data is written.
    flags: Vec<(u32, u32)>,
    entries: Vec<(Vec<u8>, KeyEntry)>,
    saved: SavedPositions,
}

impl Batch {
    fn new(w: &WriterState) -> Self {
        Batch {
            data_start: w.data_end,
            index_start: w.index_end,
            saved: SavedPositions {
                data_end: w.data_end,
                data_previous: w.data_previous,
                index_end: w.index_end,
                index_previous: w.index_previous,
                index_last: w.index_last.get(w.fileid as usize).copied().unwrap_or(0),
            },
            ..Batch::default()
        }
    }
}

/// One namespace.
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    index_dir: PathBuf,
    data_dir: PathBuf,
    cfg: Arc<StoreConfig>,
    settings: RwLock<NsSettings>,
    locked: AtomicBool,
    frozen: AtomicBool,
    removed: AtomicBool,
    read_only: AtomicBool,
    keys: RwLock<KeyTable>,
    files: RwLock<Files>,
    writer: Mutex<WriterState>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Current unix time as 0-db stores it (u32 seconds).
pub fn now_timestamp() -> u32 {
    now_secs() as u32
}

fn rl<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn wl<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Lists the ids N of files named `<prefix>N` in `dir`.
fn list_ids(dir: &Path, prefix: char) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name.strip_prefix(prefix) {
            if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = num.parse::<u32>() {
                    ids.push(n);
                }
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// State built when opening a namespace's files.
struct Loaded {
    settings: NsSettings,
    read_only: bool,
    files: Files,
    keys: KeyTable,
    writer: WriterState,
}

/// Outcome of walking one data file.
struct DataWalk {
    /// End of the last valid entry.
    valid_end: u64,
    /// Why the walk stopped early, if it did.
    torn: Option<String>,
}

/// Walks the entries of a data file from `start`, verifying every checksum; calls `each` on valid entries.
fn walk_data_file(
    file: &File,
    start: u64,
    mut each: impl FnMut(u64, &DataEntryHeader, &[u8]) -> Result<(), ZdbError>,
) -> Result<DataWalk, ZdbError> {
    let len = file.metadata().ctx(|| "stat data file".into())?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut pos = start;
    {
        use std::io::Seek;
        reader
            .seek(io::SeekFrom::Start(start))
            .ctx(|| "seek data file".into())?;
    }
    let mut hdr = [0u8; DATA_ENTRY_HEADER_LEN];
    let mut key = Vec::new();
    let mut payload = Vec::new();
    loop {
        if pos == len {
            return Ok(DataWalk {
                valid_end: pos,
                torn: None,
            });
        }
        if pos + DATA_ENTRY_HEADER_LEN as u64 > len {
            return Ok(DataWalk {
                valid_end: pos,
                torn: Some(format!("incomplete entry header at offset {pos}")),
            });
        }
        reader
            .read_exact(&mut hdr)
            .ctx(|| "read data file".into())?;
        let h = DataEntryHeader::decode(&hdr).map_err(|e| ZdbError::Namespace {
            name: String::new(),
            reason: e.to_string(),
        })?;
        if pos + h.total_len() > len || pos + h.total_len() > u32::MAX as u64 + 1 {
            return Ok(DataWalk {
                valid_end: pos,
                torn: Some(format!(
                    "entry at offset {pos} claims {} bytes, file ends at {len}",
                    h.total_len()
                )),
            });
        }
        key.resize(h.idlength as usize, 0);
        reader
            .read_exact(&mut key)
            .ctx(|| "read data file".into())?;
        payload.resize(h.datalength as usize, 0);
        reader
            .read_exact(&mut payload)
            .ctx(|| "read data file".into())?;
        if zdb_crc32(&payload) != h.crc {
            return Ok(DataWalk {
                valid_end: pos,
                torn: Some(format!("checksum mismatch of entry at offset {pos}")),
            });
        }
        each(pos, &h, &key)?;
        pos += h.total_len();
    }
}

impl Namespace {
    /// Opens (and with `create`, creates) namespace `name` under the configured roots.
    pub fn open(name: &str, cfg: Arc<StoreConfig>, create: bool) -> Result<Arc<Self>, ZdbError> {
        let index_dir = cfg.index_root.join(name);
        let data_dir = cfg.data_root.join(name);
        let loaded = Self::load(name, &index_dir, &data_dir, &cfg, create)?;
        Ok(Arc::new(Namespace {
            name: name.to_string(),
            index_dir,
            data_dir,
            cfg,
            settings: RwLock::new(loaded.settings),
            locked: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            read_only: AtomicBool::new(loaded.read_only),
            keys: RwLock::new(loaded.keys),
            files: RwLock::new(loaded.files),
            writer: Mutex::new(loaded.writer),
        }))
    }

    fn load(
        name: &str,
        index_dir: &Path,
        data_dir: &Path,
        cfg: &StoreConfig,
        create: bool,
    ) -> Result<Loaded, ZdbError> {
        let ns_err = |reason: String| ZdbError::Namespace {
            name: name.to_string(),
            reason,
        };
        if create {
            for d in [index_dir, data_dir] {
                if let Err(e) = fs::create_dir_all(d) {
                    if !d.is_dir() {
                        return Err(ZdbError::io(format!("create {}", d.display()), e));
                    }
                }
            }
        }
        if !index_dir.is_dir() || !data_dir.is_dir() {
            return Err(ns_err("index or data directory missing".into()));
        }
        let read_only = !writable_dir(index_dir) || !writable_dir(data_dir);
        if read_only {
            tracing::warn!(
                namespace = name,
                "files are read-only: serving existing data, refusing writes"
            );
        }

        // Descriptor.
        let desc_path = index_dir.join(NAMESPACE_FILE_NAME);
        let descriptor = match fs::read(&desc_path) {
            Ok(b) => NamespaceDescriptor::decode(&b).map_err(|source| ZdbError::Format {
                path: desc_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let d = NamespaceDescriptor {
                    name: name.to_string(),
                    password: None,
                    maxsize: 0,
                    flags: NS_FLAG_PUBLIC,
                };
                if !read_only {
                    write_file_synced(&desc_path, &d.encode())?;
                }
                d
            }
            Err(e) => return Err(ZdbError::io(format!("read {}", desc_path.display()), e)),
        };

        // Data files.
        let mut data_ids =
            list_ids(data_dir, 'd').ctx(|| format!("list {}", data_dir.display()))?;
        if data_ids.is_empty() {
            if read_only {
                return Err(ns_err(
                    "no data files and the filesystem is read-only".into(),
                ));
            }
            let path = data_dir.join(data_file_name(0));
            create_with_header(&path, &DataFileHeader::new(0, now_secs()).encode())?;
            let ipath = index_dir.join(index_file_name(0));
            if !ipath.exists() {
                let mode = cfg.fixed_mode.unwrap_or(Mode::User);
                create_with_header(
                    &ipath,
                    &IndexFileHeader::new(0, mode.byte(), now_secs()).encode(),
                )?;
            }
            data_ids.push(0);
        }
        let max = data_ids.last().copied().unwrap_or(0);
        if data_ids.len() as u64 != max as u64 + 1 {
            return Err(ns_err(format!(
                "data files are not contiguous (d0..d{max})"
            )));
        }
        let mut files = Files::default();
        for &id in &data_ids {
            let path = data_dir.join(data_file_name(id));
            let f = OpenOptions::new()
                .read(true)
                .write(!read_only && id == max)
                .open(&path)
                .ctx(|| format!("open {}", path.display()))?;
            let mut h = [0u8; DATA_HEADER_LEN];
            f.read_exact_at(&mut h, 0)
                .ctx(|| format!("read header of {}", path.display()))?;
            DataFileHeader::decode(&h).map_err(|source| ZdbError::Format {
                path: path.clone(),
                source,
            })?;
            files.data.push(Arc::new(f));
        }

        // Verify the tail of the last data file; cut a torn entry.
        let last_data = files
            .data
            .last()
            .cloned()
            .ok_or_else(|| ns_err("no data file".into()))?;
        let last_path = data_dir.join(data_file_name(max));
        let walk = walk_data_file(&last_data, DATA_HEADER_LEN as u64, |_, _, _| Ok(()))?;
        let mut data_end = walk.valid_end;
        if let Some(why) = walk.torn {
            let len = last_data.metadata().map(|m| m.len()).unwrap_or(data_end);
            if read_only {
                tracing::warn!(namespace = name, file = %last_path.display(),
                    "torn tail entry ({why}): {} bytes ignored (read-only)", len - data_end);
            } else {
                tracing::warn!(namespace = name, file = %last_path.display(),
                    "torn tail entry ({why}): truncating {} bytes at offset {data_end}", len - data_end);
                last_data
                    .set_len(data_end)
                    .ctx(|| format!("truncate {}", last_path.display()))?;
                last_data
                    .sync_all()
                    .ctx(|| format!("sync {}", last_path.display()))?;
            }
        }
        if data_end == 0 {
            data_end = DATA_HEADER_LEN as u64;
        }

        let default_mode = cfg.fixed_mode.unwrap_or(Mode::User);
        let mut state = IndexBuild {
            name,
            index_dir,
            read_only,
            keys: KeyTable::default(),
            index_files: Vec::new(),
            index_last: Vec::new(),
            index_end: INDEX_HEADER_LEN as u64,
            index_previous: 0,
            dirty: BTreeSet::new(),
            mode: default_mode,
        };

        let mut loaded_ok = false;
        if cfg.rebuild_index {
            tracing::warn!(
                namespace = name,
                "--rebuild-index: rebuilding the index from the data files"
            );
        } else {
            match state.load_index(max, &files.data, data_end) {
                Ok(indexed_end) => {
                    loaded_ok = true;
                    if indexed_end < data_end {
                        let mut recovered = 0u64;
                        if read_only {
                            tracing::warn!(namespace = name,
                                "data file d{max} holds entries past the index (offset {indexed_end}); read-only, not indexed");
                        } else {
                            walk_data_file(&last_data, indexed_end, |pos, h, key| {
                                state.append_for_data(max, pos, h, key)?;
                                recovered += 1;
                                Ok(())
                            })?;
                            tracing::warn!(
                                namespace = name,
                                "recovered {recovered} entries of d{max} missing from the index"
                            );
                        }
                    }
                }
                Err(reason) => {
                    if read_only {
                        return Err(ns_err(format!(
                            "index unusable ({reason}) and the filesystem is read-only"
                        )));
                    }
                    tracing::warn!(
                        namespace = name,
                        "index missing or damaged ({reason}): rebuilding it from the data files"
                    );
                }
            }
        }
        if !loaded_ok {
            if read_only {
                return Err(ns_err(
                    "cannot rebuild the index on a read-only filesystem".into(),
                ));
            }
            state.rebuild(max, &files.data, data_dir, data_end)?;
            tracing::info!(
                namespace = name,
                keys = state.keys.live,
                "index rebuilt from data files"
            );
        }

        // Previous data entry offset in the last data file (needed for the next append).
        let mut data_previous = 0u32;
        if data_end > DATA_HEADER_LEN as u64 {
            // The last entry of the last data file is the last one indexed.
            for e in state.keys.map.values() {
                if e.dataid == max && e.offset > data_previous {
                    data_previous = e.offset;
                }
            }
        }
        files.index = state.index_files;
        let mode = state.mode;
        let settings = NsSettings {
            password: descriptor.password.clone(),
            maxsize: descriptor.maxsize,
            public: descriptor.public(),
            worm: descriptor.worm(),
            mode,
        };
        Ok(Loaded {
            settings,
            read_only,
            files,
            writer: WriterState {
                fileid: max,
                data_end,
                index_end: state.index_end,
                data_previous,
                index_previous: state.index_previous,
                index_last: state.index_last,
                last_sync: Instant::now(),
                dirty: state.dirty,
            },
            keys: state.keys,
        })
    }

    /// Whether the namespace was removed (NSDEL); sessions in it must be disconnected.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Whether writes are refused because the files are read-only.
    pub fn is_read_only_fs(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    /// Whether the namespace is locked (read-only) at runtime.
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    /// Whether the namespace is frozen (no reads, no writes) at runtime.
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Relaxed)
    }

    /// Sets the runtime lock flag.
    pub fn set_locked(&self, v: bool) {
        self.locked.store(v, Ordering::Relaxed)
    }

    /// Sets the runtime freeze flag.
    pub fn set_frozen(&self, v: bool) {
        self.frozen.store(v, Ordering::Relaxed)
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> NsSettings {
        rl(&self.settings).clone()
    }

    /// Whether the namespace has a password.
    pub fn has_password(&self) -> bool {
        rl(&self.settings).password.is_some()
    }

    /// Changes settings with `f` and persists the descriptor.
    pub fn update_settings(&self, f: impl FnOnce(&mut NsSettings)) -> Result<(), ZdbError> {
        let snapshot = {
            let mut s = wl(&self.settings);
            f(&mut s);
            s.clone()
        };
        self.commit_descriptor(&snapshot)
    }

    /// Sets the password in memory only (the default namespace under --protect).
    pub fn set_runtime_password(&self, password: Option<String>) {
        wl(&self.settings).password = password;
    }

    /// Sets the maxsize in memory only (the default namespace under --maxsize).
    pub fn set_runtime_maxsize(&self, maxsize: u64) {
        wl(&self.settings).maxsize = maxsize;
    }

    fn commit_descriptor(&self, s: &NsSettings) -> Result<(), ZdbError> {
        if self.is_read_only_fs() {
            return Ok(());
        }
        let mut flags = 0;
        if s.public {
            flags |= NS_FLAG_PUBLIC;
        }
        if s.worm {
            flags |= NS_FLAG_WORM;
        }
        let d = NamespaceDescriptor {
            name: self.name.clone(),
            password: s.password.clone(),
            maxsize: s.maxsize,
            flags,
        };
        write_file_synced(&self.index_dir.join(NAMESPACE_FILE_NAME), &d.encode())
    }

    /// Number of live keys and their total payload size.
    pub fn stats(&self) -> (u64, u64) {
        let k = rl(&self.keys);
        (k.live, k.datasize)
    }

    /// In-memory index size in bytes.
    pub fn index_memory_size(&self) -> u64 {
        rl(&self.keys).memsize
    }

    /// The next sequential id.
    pub fn next_seq(&self) -> u64 {
        rl(&self.keys).next_seq
    }

    /// Directory of the index files.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    /// Directory of the data files.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The current data/index file id.
    pub fn current_fileid(&self) -> u32 {
        lock(&self.writer).fileid
    }

    /// Looks a key up, including deleted ones.
    pub fn lookup(&self, key: &[u8]) -> Option<KeyEntry> {
        rl(&self.keys).map.get(key).copied()
    }

    /// Looks a live key up.
    pub fn get_entry(&self, key: &[u8]) -> Option<KeyEntry> {
        self.lookup(key).filter(|e| !e.deleted)
    }

    fn data_file(&self, id: u32) -> Option<Arc<File>> {
        rl(&self.files).data.get(id as usize).cloned()
    }

    fn index_file(&self, id: u32) -> Option<Arc<File>> {
        rl(&self.files).index.get(id as usize).cloned()
    }

    /// Reads the payload of `e` into `out` (which must be `e.length` bytes).
    pub fn read_payload(&self, key_len: usize, e: &KeyEntry, out: &mut [u8]) -> io::Result<()> {
        // Read under the (shared) files lock rather than cloning the handle: fewer atomic operations on the
        // hot path; only a file rotation waits for it.
        let files = rl(&self.files);
        let f = files
            .data
            .get(e.dataid as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "data file missing"))?;
        let at = e.offset as u64 + DATA_ENTRY_HEADER_LEN as u64 + key_len as u64;
        f.read_exact_at(out, at)
    }

    /// Reads the payload of a data entry located by an index record.
    pub fn read_record_payload(&self, r: &IndexRecord) -> io::Result<Vec<u8>> {
        let f = self
            .data_file(r.dataid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "data file missing"))?;
        let mut out = vec![0u8; r.length as usize];
        let at = r.offset as u64 + DATA_ENTRY_HEADER_LEN as u64 + r.key.len() as u64;
        f.read_exact_at(&mut out, at)?;
        Ok(out)
    }

    /// Verifies the stored payload of `e` against its checksum (CHECK).
    pub fn check(&self, key: &[u8], e: &KeyEntry) -> io::Result<bool> {
        let f = self
            .data_file(e.dataid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "data file missing"))?;
        let mut hdr = [0u8; DATA_ENTRY_HEADER_LEN];
        if f.read_exact_at(&mut hdr, e.offset as u64).is_err() {
            return Ok(false);
        }
        let Ok(h) = DataEntryHeader::decode(&hdr) else {
            return Ok(false);
        };
        if h.idlength as usize != key.len() || h.datalength != e.length {
            return Ok(false);
        }
        let mut payload = vec![0u8; e.length as usize];
        if self.read_payload(key.len(), e, &mut payload).is_err() {
            return Ok(false);
        }
        Ok(zdb_crc32(&payload) == h.crc && h.crc == e.crc)
    }

    /// Reads a raw data entry (DATA RAW).
    pub fn data_raw(&self, fileid: u32, offset: u64) -> Option<RawEntry> {
        let f = self.data_file(fileid)?;
        let len = f.metadata().ok()?.len();
        if offset < DATA_HEADER_LEN as u64 || offset + DATA_ENTRY_HEADER_LEN as u64 > len {
            return None;
        }
        let mut hdr = [0u8; DATA_ENTRY_HEADER_LEN];
        f.read_exact_at(&mut hdr, offset).ok()?;
        let header = DataEntryHeader::decode(&hdr).ok()?;
        if offset + header.total_len() > len {
            return None;
        }
        let mut key = vec![0u8; header.idlength as usize];
        f.read_exact_at(&mut key, offset + DATA_ENTRY_HEADER_LEN as u64)
            .ok()?;
        let mut payload = vec![0u8; header.datalength as usize];
        f.read_exact_at(
            &mut payload,
            offset + DATA_ENTRY_HEADER_LEN as u64 + header.idlength as u64,
        )
        .ok()?;
        Some(RawEntry {
            header,
            key,
            payload,
        })
    }

    /// Stores `value` (SET). `key` is the user key, or in seq mode empty for a new id or an existing id.
    pub fn set(&self, key: &[u8], value: &[u8], timestamp: u32) -> Result<SetOutcome, WriteError> {
        self.set_many(&[(key, value)], timestamp)
            .pop()
            .unwrap_or(Err(WriteError::Data(io::Error::other("empty batch"))))
    }

    /// Stores several values in order (pipelined SETs): one data write and one index write for the whole
    /// batch (more when a data file fills up). Results are in the order of `items`.
    pub fn set_many(
        &self,
        items: &[(&[u8], &[u8])],
        timestamp: u32,
    ) -> Vec<Result<SetOutcome, WriteError>> {
        if self.is_read_only_fs() {
            return items
                .iter()
                .map(|_| Err(WriteError::ReadOnlyFilesystem))
                .collect();
        }
        let (mode, worm, maxsize) = {
            let s = rl(&self.settings);
            (s.mode, s.worm, s.maxsize)
        };
        let mut w = lock(&self.writer);
        let mut batch = Batch::new(&w);
        let mut results: Vec<Result<SetOutcome, WriteError>> = Vec::with_capacity(items.len());
        // Indexes into `results` of the items staged in `batch`.
        let mut staged: Vec<usize> = Vec::new();
        let (mut next_seq, mut datasize) = {
            let k = rl(&self.keys);
            (k.next_seq, k.datasize)
        };
        for &(key, value) in items {
            let existing = if key.is_empty() {
                None
            } else {
                self.lookup_staged(&batch, key)
            };
            let live = existing.filter(|e| !e.deleted);
            let key: Vec<u8> = match mode {
                Mode::User if key.is_empty() => {
                    results.push(Err(WriteError::KeyNeeded));
                    continue;
                }
                Mode::User => key.to_vec(),
                Mode::Seq if key.is_empty() => next_seq.to_le_bytes().to_vec(),
                Mode::Seq if existing.is_none() => {
                    results.push(Err(WriteError::OnlyUpdate));
                    continue;
                }
                Mode::Seq => key.to_vec(),
            };
            let crc = zdb_crc32(value);
            if let Some(e) = live {
                if e.crc == crc && e.length as usize == value.len() {
                    results.push(Ok(SetOutcome::Unchanged));
                    continue;
                }
                if worm {
                    results.push(Err(WriteError::Worm));
                    continue;
                }
            }
            let floating = live.map(|e| e.length as u64).unwrap_or(0);
            if maxsize > 0 && datasize + value.len() as u64 > maxsize + floating {
                results.push(Err(WriteError::NoSpace));
                continue;
            }
            if w.data_end > DATA_HEADER_LEN as u64
                && w.data_end + value.len() as u64 > self.cfg.datasize
            {
                let outcome = self.commit(&mut w, std::mem::take(&mut batch));
                Self::settle(&mut results, &mut staged, outcome);
                let jumped = self.jump_locked(&mut w);
                batch = Batch::new(&w);
                if let Err(e) = jumped {
                    results.push(Err(WriteError::Data(io_of(e))));
                    continue;
                }
            }
            if existing.is_none() {
                next_seq += 1;
            }
            datasize = datasize + value.len() as u64 - floating;
            self.stage(&mut w, &mut batch, &key, value, crc, 0, timestamp, existing);
            staged.push(results.len());
            results.push(Ok(SetOutcome::Stored(key)));
        }
        let outcome = self.commit(&mut w, batch);
        Self::settle(&mut results, &mut staged, outcome);
        results
    }

    /// Replaces the results of staged items by the commit error, if the commit failed.
    fn settle(
        results: &mut [Result<SetOutcome, WriteError>],
        staged: &mut Vec<usize>,
        outcome: Result<(), WriteError>,
    ) {
        if let Err(e) = outcome {
            for &i in staged.iter() {
                if let Some(r) = results.get_mut(i) {
                    *r = Err(match &e {
                        WriteError::Index(io) => {
                            WriteError::Index(io::Error::new(io.kind(), io.to_string()))
                        }
                        other => WriteError::Data(io::Error::other(other.to_string())),
                    });
                }
            }
        }
        staged.clear();
    }

    /// A key's entry, looking at entries staged in `batch` first.
    fn lookup_staged(&self, batch: &Batch, key: &[u8]) -> Option<KeyEntry> {
        batch
            .entries
            .iter()
            .rev()
            .find(|(k, _)| k.as_slice() == key)
            .map(|(_, e)| *e)
            .or_else(|| self.lookup(key))
    }

    /// Deletes a key (DEL).
    pub fn delete(&self, key: &[u8]) -> Result<(), WriteError> {
        if self.is_read_only_fs() {
            return Err(WriteError::ReadOnlyFilesystem);
        }
        let worm = rl(&self.settings).worm;
        let mut w = lock(&self.writer);
        let existing = self.get_entry(key).ok_or(WriteError::KeyNotFound)?;
        if worm {
            return Err(WriteError::WormDelete);
        }
        let mut batch = Batch::new(&w);
        self.stage(
            &mut w,
            &mut batch,
            key,
            &[],
            0,
            FLAG_DELETED,
            now_timestamp(),
            Some(existing),
        );
        self.commit(&mut w, batch)
    }

    /// Adds one data entry and its index record to `batch`, advancing the writer's positions.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        w: &mut WriterState,
        batch: &mut Batch,
        key: &[u8],
        value: &[u8],
        crc: u32,
        flags: u8,
        timestamp: u32,
        existing: Option<KeyEntry>,
    ) {
        let data_off = w.data_end;
        let header = DataEntryHeader {
            idlength: key.len() as u8,
            datalength: value.len() as u32,
            previous: w.data_previous,
            crc,
            flags,
            timestamp,
        };
        batch.data.extend_from_slice(&header.encode());
        batch.data.extend_from_slice(key);
        batch.data.extend_from_slice(value);

        // The previous version gets the deleted flag: in the batch buffer if it was staged here, on disk
        // (after the data is written) otherwise.
        if let Some(e) = existing.filter(|e| !e.deleted) {
            if e.idxid == w.fileid && e.idxoffset as u64 >= batch.index_start {
                let at = (e.idxoffset as u64 - batch.index_start + INDEX_RECORD_FLAGS_AT) as usize;
                if let Some(b) = batch.index.get_mut(at) {
                    *b |= FLAG_DELETED;
                }
                if let Some((_, staged)) = batch
                    .entries
                    .iter_mut()
                    .rev()
                    .find(|(_, s)| s.idxid == e.idxid && s.idxoffset == e.idxoffset)
                {
                    staged.deleted = true;
                }
            } else {
                batch.flags.push((e.idxid, e.idxoffset));
            }
        }

        let idx_off = w.index_end;
        let (parentid, parentoff) = existing.map(|e| (e.idxid, e.idxoffset)).unwrap_or((0, 0));
        let rec = IndexRecord {
            offset: data_off as u32,
            length: value.len() as u32,
            previous: w.index_previous,
            flags,
            dataid: w.fileid,
            timestamp,
            crc,
            parentid,
            parentoff,
            key: key.to_vec(),
        };
        let before = batch.index.len();
        rec.encode_into(&mut batch.index);
        w.data_previous = data_off as u32;
        w.data_end += (DATA_ENTRY_HEADER_LEN + key.len() + value.len()) as u64;
        w.index_previous = idx_off as u32;
        w.index_end += (batch.index.len() - before) as u64;
        if let Some(l) = w.index_last.get_mut(w.fileid as usize) {
            *l = idx_off as u32;
        }
        batch.entries.push((
            key.to_vec(),
            KeyEntry {
                dataid: w.fileid,
                offset: data_off as u32,
                length: value.len() as u32,
                crc,
                timestamp,
                idxid: w.fileid,
                idxoffset: idx_off as u32,
                deleted: flags & FLAG_DELETED != 0,
            },
        ));
    }

    /// Writes a staged batch: data first, then the in-place flags of superseded records, then the index
    /// records (so a crash never leaves an index record without its data); fsyncs when configured; then
    /// publishes the new locations to readers.
    fn commit(&self, w: &mut WriterState, batch: Batch) -> Result<(), WriteError> {
        if batch.entries.is_empty() {
            return Ok(());
        }
        let (data, index) = {
            let f = rl(&self.files);
            (
                f.data.get(w.fileid as usize).cloned(),
                f.index.get(w.fileid as usize).cloned(),
            )
        };
        let missing = || io::Error::new(io::ErrorKind::NotFound, "current file missing");
        let rollback = |w: &mut WriterState, b: &Batch| {
            w.data_end = b.saved.data_end;
            w.data_previous = b.saved.data_previous;
            w.index_end = b.saved.index_end;
            w.index_previous = b.saved.index_previous;
            if let Some(l) = w.index_last.get_mut(w.fileid as usize) {
                *l = b.saved.index_last;
            }
        };
        let (Some(data), Some(index)) = (data, index) else {
            rollback(w, &batch);
            return Err(WriteError::Data(missing()));
        };
        if let Err(e) = data.write_all_at(&batch.data, batch.data_start) {
            rollback(w, &batch);
            return Err(WriteError::Data(e));
        }
        if self.cfg.sync && !batch.flags.is_empty() {
            // The old versions are flagged only once the new data is durable.
            data.sync_data().map_err(WriteError::Data)?;
        }
        for &(idxid, idxoffset) in &batch.flags {
            if let Some(old) = self.index_file_rw(idxid, w.fileid, &index) {
                old.write_all_at(&[FLAG_DELETED], idxoffset as u64 + INDEX_RECORD_FLAGS_AT)
                    .map_err(WriteError::Index)?;
                if idxid != w.fileid {
                    let _ = old.sync_data();
                }
                w.dirty.insert(idxid);
            }
        }
        if let Err(e) = index.write_all_at(&batch.index, batch.index_start) {
            // The data is on disk; the next start-up re-indexes it from the data file.
            w.index_end = batch.saved.index_end;
            w.index_previous = batch.saved.index_previous;
            return Err(WriteError::Index(e));
        }
        if self.cfg.sync
            || (self.cfg.synctime > 0 && w.last_sync.elapsed().as_secs() >= self.cfg.synctime)
        {
            data.sync_data().map_err(WriteError::Data)?;
            index.sync_data().map_err(WriteError::Index)?;
            w.last_sync = Instant::now();
        }
        let mut keys = wl(&self.keys);
        for (key, entry) in &batch.entries {
            keys.apply(key, *entry);
        }
        Ok(())
    }

    /// An index file opened for writing: the current one, or an older one reopened read-write.
    fn index_file_rw(&self, id: u32, current: u32, current_file: &Arc<File>) -> Option<Arc<File>> {
        if id == current {
            return Some(current_file.clone());
        }
        let path = self.index_dir.join(index_file_name(id));
        OpenOptions::new().write(true).open(path).ok().map(Arc::new)
    }

    /// Starts the next data and index files (NSJUMP, or when the data file is full).
    pub fn jump(&self) -> Result<u32, ZdbError> {
        if self.is_read_only_fs() {
            return Err(ZdbError::InvalidSetting("namespace is read-only".into()));
        }
        let mut w = lock(&self.writer);
        self.jump_locked(&mut w)?;
        Ok(w.fileid)
    }

    fn jump_locked(&self, w: &mut WriterState) -> Result<(), ZdbError> {
        let old = w.fileid;
        let new = old + 1;
        let mode = rl(&self.settings).mode;
        let dpath = self.data_dir.join(data_file_name(new));
        let ipath = self.index_dir.join(index_file_name(new));
        let now = now_secs();
        let d = create_with_header(&dpath, &DataFileHeader::new(new, now).encode())?;
        let i = create_with_header(
            &ipath,
            &IndexFileHeader::new(new, mode.byte(), now).encode(),
        )?;
        {
            let f = rl(&self.files);
            if let Some(x) = f.data.get(old as usize) {
                let _ = x.sync_data();
            }
            if let Some(x) = f.index.get(old as usize) {
                let _ = x.sync_data();
            }
        }
        {
            let mut f = wl(&self.files);
            f.data.push(Arc::new(d));
            f.index.push(Arc::new(i));
        }
        w.fileid = new;
        w.data_end = DATA_HEADER_LEN as u64;
        w.index_end = INDEX_HEADER_LEN as u64;
        w.data_previous = 0;
        w.index_previous = 0;
        w.index_last.push(0);
        tracing::debug!(namespace = %self.name, fileid = new, "jumped to next data/index file");
        if let Some(h) = &self.cfg.hook {
            h.fire(
                "jump",
                &[
                    &self.name,
                    &ipath
                        .with_file_name(index_file_name(old))
                        .display()
                        .to_string(),
                    &ipath.display().to_string(),
                ],
            );
        }
        Ok(())
    }

    /// Reads the index record at (`idxid`, `offset`), if there is a complete one.
    pub fn read_index_record(&self, idxid: u32, offset: u32) -> Option<IndexRecord> {
        if (offset as usize) < INDEX_HEADER_LEN {
            return None;
        }
        let f = self.index_file(idxid)?;
        let mut buf = [0u8; INDEX_RECORD_LEN + MAX_KEY_LEN];
        let n = read_at_most(&f, &mut buf, offset as u64).ok()?;
        IndexRecord::decode(&buf[..n]).ok().map(|(r, _)| r)
    }

    fn index_files_count(&self) -> u32 {
        rl(&self.files).index.len() as u32
    }

    /// Resolves a cursor to the record it names; `None` when it is malformed or does not match.
    pub fn resolve_cursor(&self, cursor: &[u8]) -> Option<LocatedRecord> {
        if cursor.len() != CURSOR_LEN {
            return None;
        }
        let idlength = cursor[0];
        let idxid = crate::format::le_u32(cursor, 1);
        let length = crate::format::le_u32(cursor, 5);
        let idxoffset = crate::format::le_u32(cursor, 9);
        let crc = crate::format::le_u32(cursor, 13);
        let record = self.read_index_record(idxid, idxoffset)?;
        (record.key.len() == idlength as usize && record.length == length && record.crc == crc)
            .then_some(LocatedRecord {
                record,
                idxid,
                idxoffset,
            })
    }

    /// The first live record at or after (`idxid`, `offset`), walking forward over index files.
    pub fn first_live_from(&self, mut idxid: u32, mut offset: u32) -> Option<LocatedRecord> {
        let count = self.index_files_count();
        while idxid < count {
            match self.read_index_record(idxid, offset) {
                Some(record) => {
                    let len = (INDEX_RECORD_LEN + record.key.len()) as u32;
                    if !record.is_deleted() {
                        return Some(LocatedRecord {
                            record,
                            idxid,
                            idxoffset: offset,
                        });
                    }
                    offset += len;
                }
                None => {
                    idxid += 1;
                    offset = INDEX_HEADER_LEN as u32;
                }
            }
        }
        None
    }

    /// The live record following `after` (SCAN).
    pub fn next_live(&self, after: &LocatedRecord) -> Option<LocatedRecord> {
        let len = (INDEX_RECORD_LEN + after.record.key.len()) as u32;
        self.first_live_from(after.idxid, after.idxoffset + len)
    }

    /// The last live record of the namespace (RSCAN start).
    pub fn last_live(&self) -> Option<LocatedRecord> {
        let last = lock(&self.writer).index_last.clone();
        let mut idxid = last.len().checked_sub(1)? as u32;
        loop {
            let off = last.get(idxid as usize).copied().unwrap_or(0);
            if off != 0 {
                if let Some(r) = self.live_at_or_before(&last, idxid, off) {
                    return Some(r);
                }
                return None;
            }
            idxid = idxid.checked_sub(1)?;
        }
    }

    /// The live record preceding `before` (RSCAN).
    pub fn prev_live(&self, before: &LocatedRecord) -> Option<LocatedRecord> {
        let last = lock(&self.writer).index_last.clone();
        let (id, off) = self.step_back(&last, before.idxid, before.idxoffset, &before.record)?;
        self.live_at_or_before(&last, id, off)
    }

    fn step_back(
        &self,
        last: &[u32],
        idxid: u32,
        offset: u32,
        rec: &IndexRecord,
    ) -> Option<(u32, u32)> {
        if offset as usize > INDEX_HEADER_LEN
            && rec.previous >= INDEX_HEADER_LEN as u32
            && rec.previous < offset
        {
            return Some((idxid, rec.previous));
        }
        // First record of its file: continue with the last record of an earlier file.
        let mut id = idxid;
        loop {
            id = id.checked_sub(1)?;
            let off = last.get(id as usize).copied().unwrap_or(0);
            if off != 0 {
                return Some((id, off));
            }
        }
    }

    fn live_at_or_before(
        &self,
        last: &[u32],
        mut idxid: u32,
        mut offset: u32,
    ) -> Option<LocatedRecord> {
        loop {
            let record = self.read_index_record(idxid, offset)?;
            if !record.is_deleted() {
                return Some(LocatedRecord {
                    record,
                    idxid,
                    idxoffset: offset,
                });
            }
            let (i, o) = self.step_back(last, idxid, offset, &record)?;
            idxid = i;
            offset = o;
        }
    }

    /// Index files changed in place since start or the last reset (INDEX DIRTY).
    pub fn dirty_files(&self, reset: bool) -> Vec<u32> {
        let mut w = lock(&self.writer);
        let v = w.dirty.iter().copied().collect();
        if reset {
            w.dirty.clear();
        }
        v
    }

    /// Total bytes of index files on disk.
    pub fn index_disk_size(&self) -> u64 {
        rl(&self.files)
            .index
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Whether nothing was ever written (NSSET mode is allowed only then).
    pub fn is_fresh(&self) -> bool {
        let w = lock(&self.writer);
        w.fileid == 0 && w.data_end == DATA_HEADER_LEN as u64
    }

    /// Switches the mode of an empty namespace (NSSET mode).
    pub fn set_mode(&self, mode: Mode) -> Result<(), WriteError> {
        let w = lock(&self.writer);
        if !(w.fileid == 0 && w.data_end == DATA_HEADER_LEN as u64) {
            return Err(WriteError::NotFresh);
        }
        let f = self.index_file(0).ok_or(WriteError::NotFresh)?;
        f.write_all_at(&[mode.byte()], INDEX_HEADER_LEN as u64 - 1)
            .map_err(WriteError::Index)?;
        wl(&self.settings).mode = mode;
        drop(w);
        Ok(())
    }

    /// Empties the namespace (FLUSH): deletes its files and starts fresh ones.
    pub fn flush(&self) -> Result<(), ZdbError> {
        let mut w = lock(&self.writer);
        let mode = rl(&self.settings).mode;
        let count = rl(&self.files).data.len() as u32;
        for id in 0..count {
            let _ = fs::remove_file(self.data_dir.join(data_file_name(id)));
            let _ = fs::remove_file(self.index_dir.join(index_file_name(id)));
        }
        let now = now_secs();
        let d = create_with_header(
            &self.data_dir.join(data_file_name(0)),
            &DataFileHeader::new(0, now).encode(),
        )?;
        let i = create_with_header(
            &self.index_dir.join(index_file_name(0)),
            &IndexFileHeader::new(0, mode.byte(), now).encode(),
        )?;
        *wl(&self.files) = Files {
            data: vec![Arc::new(d)],
            index: vec![Arc::new(i)],
        };
        *wl(&self.keys) = KeyTable::default();
        *w = WriterState {
            fileid: 0,
            data_end: DATA_HEADER_LEN as u64,
            index_end: INDEX_HEADER_LEN as u64,
            data_previous: 0,
            index_previous: 0,
            index_last: vec![0],
            last_sync: Instant::now(),
            dirty: BTreeSet::new(),
        };
        Ok(())
    }

    /// Re-reads the namespace from disk (RELOAD).
    pub fn reload(&self) -> Result<(), ZdbError> {
        let mut w = lock(&self.writer);
        let loaded = Self::load(
            &self.name,
            &self.index_dir,
            &self.data_dir,
            &self.cfg,
            false,
        )?;
        *wl(&self.settings) = loaded.settings;
        self.read_only.store(loaded.read_only, Ordering::Relaxed);
        *wl(&self.files) = loaded.files;
        *wl(&self.keys) = loaded.keys;
        *w = loaded.writer;
        Ok(())
    }

    /// Flushes files to disk.
    pub fn sync_all(&self) {
        let _w = lock(&self.writer);
        let f = rl(&self.files);
        if let Some(d) = f.data.last() {
            let _ = d.sync_all();
        }
        if let Some(i) = f.index.last() {
            let _ = i.sync_all();
        }
    }

    /// Marks the namespace removed and deletes its files (NSDEL).
    pub fn remove(&self) -> Result<(), ZdbError> {
        let _w = lock(&self.writer);
        self.removed.store(true, Ordering::Release);
        fs::remove_dir_all(&self.data_dir).ctx(|| format!("remove {}", self.data_dir.display()))?;
        fs::remove_dir_all(&self.index_dir)
            .ctx(|| format!("remove {}", self.index_dir.display()))?;
        Ok(())
    }

    /// Live keys starting with `prefix` (KSCAN).
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        rl(&self.keys)
            .map
            .iter()
            .filter(|(k, e)| !e.deleted && k.starts_with(prefix))
            .map(|(k, _)| k.to_vec())
            .collect()
    }

    /// All live entries in index order, for `--dump`.
    pub fn dump(&self) -> Vec<LocatedRecord> {
        let mut out = Vec::new();
        let mut cur = self.first_live_from(0, INDEX_HEADER_LEN as u32);
        while let Some(r) = cur {
            cur = self.next_live(&r);
            out.push(r);
        }
        out
    }
}

fn io_of(e: ZdbError) -> io::Error {
    match e {
        ZdbError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn create_with_header(path: &Path, header: &[u8]) -> Result<File, ZdbError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    f.write_all_at(header, 0)
        .ctx(|| format!("write {}", path.display()))?;
    f.sync_all().ctx(|| format!("sync {}", path.display()))?;
    Ok(f)
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), ZdbError> {
    let tmp = path.with_extension("tmp");
    {
        let f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all_at(bytes, 0)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("sync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).ctx(|| format!("rename {}", path.display()))
}

/// Builds the key table from index files (load) or data files (rebuild).
struct IndexBuild<'a> {
    name: &'a str,
    index_dir: &'a Path,
    read_only: bool,
    keys: KeyTable,
    index_files: Vec<Arc<File>>,
    index_last: Vec<u32>,
    index_end: u64,
    index_previous: u32,
    dirty: BTreeSet<u32>,
    mode: Mode,
}

impl IndexBuild<'_> {
    /// Loads index files 0..=max; returns the end of the last data entry indexed in data file `max`.
    fn load_index(&mut self, max: u32, data: &[Arc<File>], data_end: u64) -> Result<u64, String> {
        let ids = list_ids(self.index_dir, 'i').map_err(|e| e.to_string())?;
        if ids.is_empty() {
            return Err("no index files".into());
        }
        let data_lens: Vec<u64> = data
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i as u32 == max {
                    data_end
                } else {
                    f.metadata().map(|m| m.len()).unwrap_or(0)
                }
            })
            .collect();
        let mut indexed_end = DATA_HEADER_LEN as u64;
        for id in 0..=max {
            let path = self.index_dir.join(index_file_name(id));
            if !path.exists() && id == max && !self.read_only {
                // Crash between creating the data file and its index: start the index file now.
                let mode = self.mode;
                let f = create_with_header(
                    &path,
                    &IndexFileHeader::new(id, mode.byte(), now_secs()).encode(),
                )
                .map_err(|e| e.to_string())?;
                self.index_files.push(Arc::new(f));
                self.index_last.push(0);
                self.index_end = INDEX_HEADER_LEN as u64;
                self.index_previous = 0;
                continue;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(!self.read_only && id == max)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut bytes = Vec::new();
            (&f).read_to_end(&mut bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let header =
                IndexFileHeader::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            if header.fileid != id {
                return Err(format!(
                    "{}: header names file {}",
                    path.display(),
                    header.fileid
                ));
            }
            if id == 0 {
                self.mode = if header.mode == MODE_SEQ {
                    Mode::Seq
                } else {
                    Mode::User
                };
            }
            let mut pos = INDEX_HEADER_LEN;
            let mut last = 0u32;
            while pos < bytes.len() {
                let (rec, len) = match IndexRecord::decode(&bytes[pos..]) {
                    Ok(x) => x,
                    Err(e) => {
                        if id == max && !self.read_only {
                            tracing::warn!(namespace = self.name, file = %path.display(),
                                "torn index record at offset {pos} ({e}): truncating");
                            f.set_len(pos as u64).map_err(|e| e.to_string())?;
                            break;
                        }
                        return Err(format!("{}: bad record at {pos}: {e}", path.display()));
                    }
                };
                let dlen = data_lens.get(rec.dataid as usize).copied().unwrap_or(0);
                let end = rec.offset as u64
                    + DATA_ENTRY_HEADER_LEN as u64
                    + rec.key.len() as u64
                    + rec.length as u64;
                if rec.dataid > max || (rec.offset as usize) < DATA_HEADER_LEN || end > dlen {
                    return Err(format!(
                        "{}: record at {pos} points outside the data (file {}, offset {})",
                        path.display(),
                        rec.dataid,
                        rec.offset
                    ));
                }
                if rec.dataid == max && end > indexed_end {
                    indexed_end = end;
                }
                let entry = KeyEntry {
                    dataid: rec.dataid,
                    offset: rec.offset,
                    length: rec.length,
                    crc: rec.crc,
                    timestamp: rec.timestamp,
                    idxid: id,
                    idxoffset: pos as u32,
                    deleted: rec.is_deleted(),
                };
                self.keys.apply(&rec.key, entry);
                last = pos as u32;
                pos += len;
            }
            self.index_files.push(Arc::new(f));
            self.index_last.push(last);
            self.index_end = pos as u64;
            self.index_previous = last;
        }
        Ok(indexed_end)
    }

    /// Appends an index record for a data entry (rebuild and tail recovery), superseding the old version.
    fn append_for_data(
        &mut self,
        dataid: u32,
        pos: u64,
        h: &DataEntryHeader,
        key: &[u8],
    ) -> Result<(), ZdbError> {
        let file = self
            .index_files
            .get(dataid as usize)
            .cloned()
            .ok_or_else(|| ZdbError::Namespace {
                name: self.name.to_string(),
                reason: format!("index file {dataid} missing"),
            })?;
        let existing = self.keys.map.get(key).copied();
        if let Some(e) = existing.filter(|e| !e.deleted) {
            let f = if e.idxid == dataid {
                Some(file.clone())
            } else {
                self.index_files
                    .get(e.idxid as usize)
                    .cloned()
                    .and_then(|_| {
                        OpenOptions::new()
                            .write(true)
                            .open(self.index_dir.join(index_file_name(e.idxid)))
                            .ok()
                            .map(Arc::new)
                    })
            };
            if let Some(f) = f {
                f.write_all_at(&[FLAG_DELETED], e.idxoffset as u64 + INDEX_RECORD_FLAGS_AT)
                    .ctx(|| "flag superseded index record".into())?;
            }
        }
        let (parentid, parentoff) = existing.map(|e| (e.idxid, e.idxoffset)).unwrap_or((0, 0));
        let rec = IndexRecord {
            offset: pos as u32,
            length: h.datalength,
            previous: self.index_previous,
            flags: h.flags & FLAG_DELETED,
            dataid,
            timestamp: h.timestamp,
            crc: h.crc,
            parentid,
            parentoff,
            key: key.to_vec(),
        };
        let bytes = rec.encode();
        let at = self.index_end;
        file.write_all_at(&bytes, at)
            .ctx(|| "write index record".into())?;
        self.keys.apply(
            key,
            KeyEntry {
                dataid,
                offset: pos as u32,
                length: h.datalength,
                crc: h.crc,
                timestamp: h.timestamp,
                idxid: dataid,
                idxoffset: at as u32,
                deleted: h.is_deleted(),
            },
        );
        if let Some(l) = self.index_last.get_mut(dataid as usize) {
            *l = at as u32;
        }
        self.index_previous = at as u32;
        self.index_end += bytes.len() as u64;
        Ok(())
    }

    /// Rebuilds every index file from the data files.
    fn rebuild(
        &mut self,
        max: u32,
        data: &[Arc<File>],
        data_dir: &Path,
        data_end: u64,
    ) -> Result<(), ZdbError> {
        // Keep the mode recorded in an existing first index file, if readable.
        if let Ok(b) = fs::read(self.index_dir.join(index_file_name(0))) {
            if let Ok(h) = IndexFileHeader::decode(&b) {
                self.mode = if h.mode == MODE_SEQ {
                    Mode::Seq
                } else {
                    Mode::User
                };
            }
        }
        for id in list_ids(self.index_dir, 'i').ctx(|| "list index files".into())? {
            let _ = fs::remove_file(self.index_dir.join(index_file_name(id)));
        }
        self.keys = KeyTable::default();
        self.index_files.clear();
        self.index_last.clear();
        for id in 0..=max {
            let path = self.index_dir.join(index_file_name(id));
            let f = create_with_header(
                &path,
                &IndexFileHeader::new(id, self.mode.byte(), now_secs()).encode(),
            )?;
            self.index_files.push(Arc::new(f));
            self.index_last.push(0);
            self.index_end = INDEX_HEADER_LEN as u64;
            self.index_previous = 0;
            let dfile = data
                .get(id as usize)
                .cloned()
                .ok_or_else(|| ZdbError::Namespace {
                    name: self.name.to_string(),
                    reason: format!("data file {id} missing"),
                })?;
            let walk = walk_data_file(&dfile, DATA_HEADER_LEN as u64, |pos, h, key| {
                if id == max && pos >= data_end {
                    return Ok(());
                }
                self.append_for_data(id, pos, h, key)
            })?;
            if let Some(why) = walk.torn {
                if id != max {
                    tracing::warn!(namespace = self.name, file = %data_dir.join(data_file_name(id)).display(),
                        "damaged entry in a closed data file ({why}); entries after it are not indexed");
                }
            }
            if let Some(f) = self.index_files.last() {
                f.sync_all().ctx(|| "sync rebuilt index".into())?;
            }
        }
        Ok(())
    }
}
