//! The in-memory key table (where the current version of each key lives) and the cursors SCAN hands out.

use std::collections::HashMap;

use super::CURSOR_LEN;
use crate::format::IndexRecord;

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

/// Every key of a namespace with the location of its current version, plus the totals NSINFO reports.
#[derive(Default)]
pub(super) struct KeyTable {
    pub(super) map: HashMap<Box<[u8]>, KeyEntry, foldhash::fast::RandomState>,
    /// Live (not deleted) keys.
    pub(super) live: u64,
    /// Payload bytes of live keys.
    pub(super) datasize: u64,
    /// The next sequential id (seq mode).
    pub(super) next_seq: u64,
    /// Bytes used by the in-memory index (key + entry), as NSINFO reports.
    pub(super) memsize: u64,
}

impl KeyTable {
    /// Records `e` as the current version of `key`.
    pub(super) fn apply(&mut self, key: &[u8], e: KeyEntry) {
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
