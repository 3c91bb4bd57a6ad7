//! The write path: SET (one by one or a pipelined batch), DEL, file rotation (NSJUMP), mode switch and
//! FLUSH. A write appends the data entry, then flags superseded index records in place, then appends the
//! index record, so a crash never leaves an index record without its data.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use super::files::{create_with_header, Files};
use super::keys::{KeyEntry, KeyTable};
use super::{now_secs, now_timestamp, Mode, Namespace};
use crate::error::ZdbError;
use crate::format::data_file::{data_file_name, DATA_ENTRY_HEADER_LEN, DATA_HEADER_LEN};
use crate::format::index_file::{
    index_file_name, RecordHeader, INDEX_HEADER_LEN, INDEX_RECORD_FLAGS_AT,
};
use crate::format::{zdb_crc32, DataEntryHeader, DataFileHeader, IndexFileHeader, FLAG_DELETED};

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

/// Where the next write goes; held under the namespace's writer lock.
pub(super) struct WriterState {
    /// Id of the current data and index files.
    pub(super) fileid: u32,
    /// End of the current data file.
    pub(super) data_end: u64,
    /// End of the current index file.
    pub(super) index_end: u64,
    /// Offset of the last entry of the current data file.
    pub(super) data_previous: u32,
    /// Offset of the last record of the current index file.
    pub(super) index_previous: u32,
    /// Offset of the last record of each index file (0: none).
    pub(super) index_last: Vec<u32>,
    /// When data and index were last fsynced (`--synctime`).
    pub(super) last_sync: Instant,
    /// Index files changed in place (INDEX DIRTY).
    pub(super) dirty: BTreeSet<u32>,
    /// The data and index buffers of the last batch, kept for the next one (no allocation per write).
    pub(super) buffers: (Vec<u8>, Vec<u8>),
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
    /// Each staged entry: where its key lies in `data`, and its new location.
    entries: Vec<(Range<usize>, KeyEntry)>,
    saved: SavedPositions,
}

impl Batch {
    fn new(w: &mut WriterState) -> Self {
        let (mut data, mut index) = std::mem::take(&mut w.buffers);
        data.clear();
        index.clear();
        Batch {
            data,
            index,
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

    /// The key of staged entry `range`.
    fn key(&self, range: &Range<usize>) -> &[u8] {
        self.data.get(range.clone()).unwrap_or_default()
    }
}

impl Namespace {
    /// Stores `value` (SET). `key` is the user key, or in seq mode empty for a new id or an existing id.
    pub fn set(&self, key: &[u8], value: &[u8], timestamp: u32) -> Result<SetOutcome, WriteError> {
        self.set_many(&[(key, value)], timestamp)
            .pop()
            .unwrap_or_else(|| Err(WriteError::Data(io::Error::other("empty batch"))))
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
            let s = self.settings.read();
            (s.mode, s.worm, s.maxsize)
        };
        let mut w = self.writer.lock();
        let mut batch = Batch::new(&mut w);
        let mut results: Vec<Result<SetOutcome, WriteError>> = Vec::with_capacity(items.len());
        // Indexes into `results` of the items staged in `batch`.
        let mut staged: SmallVec<[usize; 8]> = SmallVec::new();
        let (mut next_seq, mut datasize) = {
            let k = self.keys.read();
            (k.next_seq, k.datasize)
        };
        for &(key, value) in items {
            let existing = if key.is_empty() {
                None
            } else {
                self.lookup_staged(&batch, key)
            };
            let live = existing.filter(|e| !e.deleted);
            let id;
            let key: &[u8] = match mode {
                Mode::User if key.is_empty() => {
                    results.push(Err(WriteError::KeyNeeded));
                    continue;
                }
                Mode::Seq if key.is_empty() => {
                    id = next_seq.to_le_bytes();
                    &id
                }
                Mode::Seq if existing.is_none() => {
                    results.push(Err(WriteError::OnlyUpdate));
                    continue;
                }
                Mode::User | Mode::Seq => key,
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
                batch = Batch::new(&mut w);
                if let Err(e) = jumped {
                    results.push(Err(WriteError::Data(io_of(e))));
                    continue;
                }
            }
            if existing.is_none() {
                next_seq += 1;
            }
            datasize = datasize + value.len() as u64 - floating;
            self.stage(&mut w, &mut batch, key, value, crc, 0, timestamp, existing);
            staged.push(results.len());
            results.push(Ok(SetOutcome::Stored(key.to_vec())));
        }
        let outcome = self.commit(&mut w, batch);
        Self::settle(&mut results, &mut staged, outcome);
        results
    }

    /// Replaces the results of staged items by the commit error, if the commit failed.
    fn settle(
        results: &mut [Result<SetOutcome, WriteError>],
        staged: &mut SmallVec<[usize; 8]>,
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
            .find(|(k, _)| batch.key(k) == key)
            .map(|(_, e)| *e)
            .or_else(|| self.lookup(key))
    }

    /// Deletes a key (DEL).
    pub fn delete(&self, key: &[u8]) -> Result<(), WriteError> {
        if self.is_read_only_fs() {
            return Err(WriteError::ReadOnlyFilesystem);
        }
        let worm = self.settings.read().worm;
        let mut w = self.writer.lock();
        let existing = self.get_entry(key).ok_or(WriteError::KeyNotFound)?;
        if worm {
            return Err(WriteError::WormDelete);
        }
        let mut batch = Batch::new(&mut w);
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
        batch
            .data
            .reserve(DATA_ENTRY_HEADER_LEN + key.len() + value.len());
        batch.data.extend_from_slice(&header.encode());
        let key_at = batch.data.len()..batch.data.len() + key.len();
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
        let rec = RecordHeader {
            offset: data_off as u32,
            length: value.len() as u32,
            previous: w.index_previous,
            flags,
            dataid: w.fileid,
            timestamp,
            crc,
            parentid,
            parentoff,
        };
        let before = batch.index.len();
        rec.encode_into(key, &mut batch.index);
        w.data_previous = data_off as u32;
        w.data_end += (DATA_ENTRY_HEADER_LEN + key.len() + value.len()) as u64;
        w.index_previous = idx_off as u32;
        w.index_end += (batch.index.len() - before) as u64;
        if let Some(l) = w.index_last.get_mut(w.fileid as usize) {
            *l = idx_off as u32;
        }
        batch.entries.push((
            key_at,
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
            let f = self.files.read();
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
        let mut keys = self.keys.write();
        for (key, entry) in &batch.entries {
            keys.apply(batch.key(key), *entry);
        }
        drop(keys);
        w.buffers = (batch.data, batch.index);
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
        let mut w = self.writer.lock();
        self.jump_locked(&mut w)?;
        Ok(w.fileid)
    }

    fn jump_locked(&self, w: &mut WriterState) -> Result<(), ZdbError> {
        let old = w.fileid;
        let new = old + 1;
        let mode = self.settings.read().mode;
        let dpath = self.data_dir.join(data_file_name(new));
        let ipath = self.index_dir.join(index_file_name(new));
        let now = now_secs();
        let d = create_with_header(&dpath, &DataFileHeader::new(new, now).encode())?;
        let i = create_with_header(
            &ipath,
            &IndexFileHeader::new(new, mode.byte(), now).encode(),
        )?;
        {
            let f = self.files.read();
            if let Some(x) = f.data.get(old as usize) {
                let _ = x.sync_data();
            }
            if let Some(x) = f.index.get(old as usize) {
                let _ = x.sync_data();
            }
        }
        {
            let mut f = self.files.write();
            f.data.push(Arc::new(d));
            f.index.push(Arc::new(i));
            // The old file is closed: map exactly its length; the new one is the current file.
            f.map_data(old as usize, false, self.cfg.datasize);
            f.map_data(new as usize, true, self.cfg.datasize);
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

    /// Switches the mode of an empty namespace (NSSET mode).
    pub fn set_mode(&self, mode: Mode) -> Result<(), WriteError> {
        let w = self.writer.lock();
        if !(w.fileid == 0 && w.data_end == DATA_HEADER_LEN as u64) {
            return Err(WriteError::NotFresh);
        }
        let f = self.index_file(0).ok_or(WriteError::NotFresh)?;
        f.write_all_at(&[mode.byte()], INDEX_HEADER_LEN as u64 - 1)
            .map_err(WriteError::Index)?;
        self.settings.write().mode = mode;
        drop(w);
        Ok(())
    }

    /// Empties the namespace (FLUSH): deletes its files and starts fresh ones.
    pub fn flush(&self) -> Result<(), ZdbError> {
        let mut w = self.writer.lock();
        let mode = self.settings.read().mode;
        let count = self.files.read().data.len() as u32;
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
        let mut files = Files {
            data: vec![Arc::new(d)],
            maps: Vec::new(),
            index: vec![Arc::new(i)],
        };
        files.map_all_data(self.cfg.datasize);
        *self.files.write() = files;
        *self.keys.write() = KeyTable::default();
        *w = WriterState {
            fileid: 0,
            data_end: DATA_HEADER_LEN as u64,
            index_end: INDEX_HEADER_LEN as u64,
            data_previous: 0,
            index_previous: 0,
            index_last: vec![0],
            last_sync: Instant::now(),
            dirty: BTreeSet::new(),
            buffers: Default::default(),
        };
        Ok(())
    }
}

fn io_of(e: ZdbError) -> io::Error {
    match e {
        ZdbError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}
