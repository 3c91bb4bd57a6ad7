//! One namespace: its files on disk, its in-memory key table, and the read and write paths.
//!
//! Reads never take the writer lock: a GET copies the key's location out of a read-locked table and reads
//! the payload with a positional read on a shared file handle. Writes are serialized per namespace by
//! `writer`; they append the data entry, then the index record, then publish the new location in the key
//! table.
//!
//! Layout: [`load`] opens the files and recovers from a crash (a torn tail, entries missing from the
//! index), [`index_build`] rebuilds or extends the index from the data files, [`write`] is the write path
//! (SET, DEL, file rotation, FLUSH), [`read`] the read path (GET, CHECK, DATA RAW), [`cursor`] the walks in
//! index order (SCAN, RSCAN, HISTORY), [`keys`] the in-memory key table and [`files`] the file helpers.

mod cursor;
mod files;
mod index_build;
mod keys;
mod load;
mod read;
mod walk;
mod write;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::error::{IoContext, ZdbError};
use crate::format::index_file::{MODE_SEQ, MODE_USER};
use crate::format::namespace_file::{NAMESPACE_FILE_NAME, NS_FLAG_PUBLIC, NS_FLAG_WORM};
use crate::format::NamespaceDescriptor;
use crate::hook::Hook;

pub use keys::{KeyEntry, LocatedRecord};
pub use write::{SetOutcome, WriteError};

use files::{write_file_synced, Files};
use keys::KeyTable;
use write::WriterState;

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
    /// The mode byte of an index file header.
    fn byte(self) -> u8 {
        match self {
            Mode::User => MODE_USER,
            Mode::Seq => MODE_SEQ,
        }
    }

    /// The mode an index file header's byte names (anything but seq is user, as 0-db reads it).
    fn from_byte(b: u8) -> Self {
        if b == MODE_SEQ {
            Mode::Seq
        } else {
            Mode::User
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

impl Namespace {
    /// Opens (and with `create`, creates) namespace `name` under the configured roots.
    pub fn open(name: &str, cfg: Arc<StoreConfig>, create: bool) -> Result<Arc<Self>, ZdbError> {
        let index_dir = cfg.index_root.join(name);
        let data_dir = cfg.data_root.join(name);
        let loaded = load::load(name, &index_dir, &data_dir, &cfg, create)?;
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

    /// Re-reads the namespace from disk (RELOAD).
    pub fn reload(&self) -> Result<(), ZdbError> {
        let mut w = self.writer.lock();
        // Readers wait: loading may cut a torn tail off a data file the current maps cover.
        let mut files = self.files.write();
        let loaded = load::load(
            &self.name,
            &self.index_dir,
            &self.data_dir,
            &self.cfg,
            false,
        )?;
        *self.settings.write() = loaded.settings;
        self.read_only.store(loaded.read_only, Ordering::Relaxed);
        *files = loaded.files;
        drop(files);
        *self.keys.write() = loaded.keys;
        *w = loaded.writer;
        Ok(())
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
        self.settings.read().clone()
    }

    /// Changes settings with `f` and persists the descriptor.
    pub fn update_settings(&self, f: impl FnOnce(&mut NsSettings)) -> Result<(), ZdbError> {
        let snapshot = {
            let mut s = self.settings.write();
            f(&mut s);
            s.clone()
        };
        self.commit_descriptor(&snapshot)
    }

    /// Sets the password in memory only (the default namespace under --protect).
    pub fn set_runtime_password(&self, password: Option<String>) {
        self.settings.write().password = password;
    }

    /// Sets the maxsize in memory only (the default namespace under --maxsize).
    pub fn set_runtime_maxsize(&self, maxsize: u64) {
        self.settings.write().maxsize = maxsize;
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
        let k = self.keys.read();
        (k.live, k.datasize)
    }

    /// In-memory index size in bytes.
    pub fn index_memory_size(&self) -> u64 {
        self.keys.read().memsize
    }

    /// The next sequential id.
    pub fn next_seq(&self) -> u64 {
        self.keys.read().next_seq
    }

    /// Directory of the index files.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    /// Directory of the data files.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Index files changed in place since start or the last reset (INDEX DIRTY).
    pub fn dirty_files(&self, reset: bool) -> Vec<u32> {
        let mut w = self.writer.lock();
        let v = w.dirty.iter().copied().collect();
        if reset {
            w.dirty.clear();
        }
        v
    }

    /// Flushes files to disk.
    pub fn sync_all(&self) {
        let _w = self.writer.lock();
        let f = self.files.read();
        if let Some(d) = f.data.last() {
            let _ = d.sync_all();
        }
        if let Some(i) = f.index.last() {
            let _ = i.sync_all();
        }
    }

    /// Marks the namespace removed and deletes its files (NSDEL).
    pub fn remove(&self) -> Result<(), ZdbError> {
        let _w = self.writer.lock();
        self.removed.store(true, Ordering::Release);
        fs::remove_dir_all(&self.data_dir).ctx(|| format!("remove {}", self.data_dir.display()))?;
        fs::remove_dir_all(&self.index_dir)
            .ctx(|| format!("remove {}", self.index_dir.display()))?;
        Ok(())
    }

    /// Live keys starting with `prefix` (KSCAN).
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.keys
            .read()
            .map
            .iter()
            .filter(|(k, e)| !e.deleted && k.starts_with(prefix))
            .map(|(k, _)| k.to_vec())
            .collect()
    }
}
