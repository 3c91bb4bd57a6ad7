//! Walks over the index in write order (SCAN, `--dump`) and backwards (RSCAN), and reads of single index
//! records (cursors, HISTORY).

use super::files::read_at_most;
use super::{LocatedRecord, Namespace, CURSOR_LEN, MAX_KEY_LEN};
use crate::format::index_file::{INDEX_HEADER_LEN, INDEX_RECORD_LEN};
use crate::format::IndexRecord;

impl Namespace {
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
        self.files.read().index.len() as u32
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
        let last = self.writer.lock().index_last.clone();
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
        let last = self.writer.lock().index_last.clone();
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
