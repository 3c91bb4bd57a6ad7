//! Building the key table from index files, and index records from data files: the index rebuild
//! (`--rebuild-index`, a missing or damaged index) and the re-indexing of entries a crash left out of it.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::files::create_with_header;
use super::keys::{KeyEntry, KeyTable};
use super::load::list_ids;
use super::now_secs;
use super::walk::walk_data_file;
use super::Mode;
use crate::error::{IoContext, ZdbError};
use crate::format::data_file::{data_file_name, DATA_ENTRY_HEADER_LEN, DATA_HEADER_LEN};
use crate::format::index_file::{index_file_name, INDEX_HEADER_LEN, INDEX_RECORD_FLAGS_AT};
use crate::format::{DataEntryHeader, IndexFileHeader, IndexRecord, FLAG_DELETED};

/// Builds the key table from index files (load) or data files (rebuild).
pub(super) struct IndexBuild<'a> {
    name: &'a str,
    index_dir: &'a Path,
    read_only: bool,
    /// The key table built so far.
    pub(super) keys: KeyTable,
    /// Open index files, oldest first.
    pub(super) index_files: Vec<Arc<File>>,
    /// Offset of the last record of each index file (0: none).
    pub(super) index_last: Vec<u32>,
    /// End of the last index file.
    pub(super) index_end: u64,
    /// Offset of the last record of the last index file.
    pub(super) index_previous: u32,
    /// The namespace mode, from the first index file's header.
    pub(super) mode: Mode,
}

impl<'a> IndexBuild<'a> {
    /// An empty build for the namespace whose index files live in `index_dir`; `mode` is the mode of a
    /// namespace whose first index file does not say.
    pub(super) fn new(name: &'a str, index_dir: &'a Path, read_only: bool, mode: Mode) -> Self {
        IndexBuild {
            name,
            index_dir,
            read_only,
            keys: KeyTable::default(),
            index_files: Vec::new(),
            index_last: Vec::new(),
            index_end: INDEX_HEADER_LEN as u64,
            index_previous: 0,
            mode,
        }
    }

    /// Loads index files 0..=max; returns the end of the last data entry indexed in data file `max`.
    pub(super) fn load_index(
        &mut self,
        max: u32,
        data: &[Arc<File>],
        data_end: u64,
    ) -> Result<u64, String> {
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
                self.start_index_file(id).map_err(|e| e.to_string())?;
                continue;
            }
            self.load_index_file(id, max, &data_lens, &mut indexed_end)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(indexed_end)
    }

    /// Creates index file `id` (header only) and makes it the current one.
    fn start_index_file(&mut self, id: u32) -> Result<(), ZdbError> {
        let path = self.index_dir.join(index_file_name(id));
        let f = create_with_header(
            &path,
            &IndexFileHeader::new(id, self.mode.byte(), now_secs()).encode(),
        )?;
        self.index_files.push(Arc::new(f));
        self.index_last.push(0);
        self.index_end = INDEX_HEADER_LEN as u64;
        self.index_previous = 0;
        Ok(())
    }

    /// Loads index file `id` into the key table, checking every record points inside the data
    /// (`data_lens`); a torn record at the end of the last file is cut off. Raises `indexed_end` to the end
    /// of the last entry of data file `max` the file indexes.
    fn load_index_file(
        &mut self,
        id: u32,
        max: u32,
        data_lens: &[u64],
        indexed_end: &mut u64,
    ) -> Result<(), String> {
        let path = self.index_dir.join(index_file_name(id));
        let f = OpenOptions::new()
            .read(true)
            .write(!self.read_only && id == max)
            .open(&path)
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        (&f).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let header = IndexFileHeader::decode(&bytes).map_err(|e| e.to_string())?;
        if header.fileid != id {
            return Err(format!("header names file {}", header.fileid));
        }
        if id == 0 {
            self.mode = Mode::from_byte(header.mode);
        }
        let mut pos = INDEX_HEADER_LEN;
        let mut last = 0u32;
        while pos < bytes.len() {
            let (rec, len) = match IndexRecord::decode(&bytes[pos..]) {
                Ok(x) => x,
                Err(e) if id == max && !self.read_only => {
                    tracing::warn!(namespace = self.name, file = %path.display(),
                        "torn index record at offset {pos} ({e}): truncating");
                    f.set_len(pos as u64).map_err(|e| e.to_string())?;
                    break;
                }
                Err(e) => return Err(format!("bad record at {pos}: {e}")),
            };
            let end = rec.offset as u64
                + DATA_ENTRY_HEADER_LEN as u64
                + rec.key.len() as u64
                + rec.length as u64;
            let dlen = data_lens.get(rec.dataid as usize).copied().unwrap_or(0);
            if rec.dataid > max || (rec.offset as usize) < DATA_HEADER_LEN || end > dlen {
                return Err(format!(
                    "record at {pos} points outside the data (file {}, offset {})",
                    rec.dataid, rec.offset
                ));
            }
            if rec.dataid == max && end > *indexed_end {
                *indexed_end = end;
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
        Ok(())
    }

    /// Appends an index record for a data entry (rebuild and tail recovery), superseding the old version.
    pub(super) fn append_for_data(
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
    pub(super) fn rebuild(
        &mut self,
        max: u32,
        data: &[Arc<File>],
        data_dir: &Path,
        data_end: u64,
    ) -> Result<(), ZdbError> {
        // Keep the mode recorded in an existing first index file, if readable.
        if let Ok(b) = fs::read(self.index_dir.join(index_file_name(0))) {
            if let Ok(h) = IndexFileHeader::decode(&b) {
                self.mode = Mode::from_byte(h.mode);
            }
        }
        for id in list_ids(self.index_dir, 'i').ctx(|| "list index files".into())? {
            let _ = fs::remove_file(self.index_dir.join(index_file_name(id)));
        }
        self.keys = KeyTable::default();
        self.index_files.clear();
        self.index_last.clear();
        for id in 0..=max {
            self.start_index_file(id)?;
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
