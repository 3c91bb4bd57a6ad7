//! Index files `<index>/<ns>/i<N>`: a 29-byte header ("IDX0", version 4, with the namespace mode)
//! followed by records, each a 34-byte header and the key. Index file N describes data file N.

use super::{le_u32, le_u64, need, FormatError, FLAG_DELETED};

/// Magic bytes opening every index file.
pub const INDEX_MAGIC: [u8; 4] = *b"IDX0";
/// The index file version 0-db 2.0 writes.
pub const INDEX_VERSION: u32 = 4;
/// Size of [`IndexFileHeader`] on disk.
pub const INDEX_HEADER_LEN: usize = 29;
/// Size of an [`IndexRecord`] on disk without its key.
pub const INDEX_RECORD_LEN: usize = 34;
/// Offset of the flags byte inside a record (updated in place when a key is overwritten or deleted).
pub const INDEX_RECORD_FLAGS_AT: u64 = 13;
/// Mode byte of the header: user keys.
pub const MODE_USER: u8 = 0;
/// Mode byte of the header: sequential ids.
pub const MODE_SEQ: u8 = 1;

/// The file name of index file `fileid`.
pub fn index_file_name(fileid: u32) -> String {
    format!("i{fileid}")
}

/// Header of an index file: `{magic[4], u32 version, u64 created, u64 opened, u32 fileid, u8 mode}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFileHeader {
    /// File format version (4).
    pub version: u32,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Last open time, unix seconds.
    pub opened: u64,
    /// This file's id (the N of `iN`).
    pub fileid: u32,
    /// Namespace mode: [`MODE_USER`] or [`MODE_SEQ`].
    pub mode: u8,
}

impl IndexFileHeader {
    /// A fresh header for file `fileid` in `mode`, created at `now`.
    pub fn new(fileid: u32, mode: u8, now: u64) -> Self {
        IndexFileHeader {
            version: INDEX_VERSION,
            created: now,
            opened: now,
            fileid,
            mode,
        }
    }

    /// The 29 bytes on disk.
    pub fn encode(&self) -> [u8; INDEX_HEADER_LEN] {
        let mut b = [0u8; INDEX_HEADER_LEN];
        b[0..4].copy_from_slice(&INDEX_MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.created.to_le_bytes());
        b[16..24].copy_from_slice(&self.opened.to_le_bytes());
        b[24..28].copy_from_slice(&self.fileid.to_le_bytes());
        b[28] = self.mode;
        b
    }

    /// Parses a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        need(buf, INDEX_HEADER_LEN)?;
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&buf[0..4]);
        if magic != INDEX_MAGIC {
            return Err(FormatError::BadMagic {
                found: magic,
                expected: INDEX_MAGIC,
            });
        }
        let version = le_u32(buf, 4);
        if version != INDEX_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        Ok(IndexFileHeader {
            version,
            created: le_u64(buf, 8),
            opened: le_u64(buf, 16),
            fileid: le_u32(buf, 24),
            mode: buf[28],
        })
    }
}

/// One index record: `{u8 idlength, u32 offset, u32 length, u32 previous, u8 flags, u32 dataid,
/// u32 timestamp, u32 crc, u32 parentid, u32 parentoff}` followed by the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    /// Offset of the data entry in data file `dataid`.
    pub offset: u32,
    /// Payload length.
    pub length: u32,
    /// Offset of the previous record in this index file (0 for the first).
    pub previous: u32,
    /// [`FLAG_DELETED`] when the key was deleted or this version superseded.
    pub flags: u8,
    /// Data file holding the payload.
    pub dataid: u32,
    /// Write time, unix seconds.
    pub timestamp: u32,
    /// [`super::zdb_crc32`] of the payload.
    pub crc: u32,
    /// Index file of the previous version of this key (history), 0 with `parentoff` 0 when none.
    pub parentid: u32,
    /// Offset of the previous version's record in index file `parentid`.
    pub parentoff: u32,
    /// The key (at most 255 bytes).
    pub key: Vec<u8>,
}

/// The fixed part of an index record (everything but the key), to encode a record without owning its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Offset of the data entry in data file `dataid`.
    pub offset: u32,
    /// Payload length.
    pub length: u32,
    /// Offset of the previous record in this index file (0 for the first).
    pub previous: u32,
    /// [`FLAG_DELETED`] when the key was deleted or this version superseded.
    pub flags: u8,
    /// Data file holding the payload.
    pub dataid: u32,
    /// Write time, unix seconds.
    pub timestamp: u32,
    /// [`super::zdb_crc32`] of the payload.
    pub crc: u32,
    /// Index file of the previous version of this key.
    pub parentid: u32,
    /// Offset of the previous version's record in index file `parentid`.
    pub parentoff: u32,
}

impl RecordHeader {
    /// Appends the record's bytes (these fields, then `key`, at most 255 bytes of it) to `out`.
    pub fn encode_into(&self, key: &[u8], out: &mut Vec<u8>) {
        let key = &key[..key.len().min(255)];
        out.reserve(INDEX_RECORD_LEN + key.len());
        out.push(key.len() as u8);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.previous.to_le_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.dataid.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.parentid.to_le_bytes());
        out.extend_from_slice(&self.parentoff.to_le_bytes());
        out.extend_from_slice(key);
    }
}

impl IndexRecord {
    /// Appends the record's bytes (header and key) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        RecordHeader {
            offset: self.offset,
            length: self.length,
            previous: self.previous,
            flags: self.flags,
            dataid: self.dataid,
            timestamp: self.timestamp,
            crc: self.crc,
            parentid: self.parentid,
            parentoff: self.parentoff,
        }
        .encode_into(&self.key, out);
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(INDEX_RECORD_LEN + self.key.len());
        self.encode_into(&mut v);
        v
    }

    /// Parses a record from the start of `buf`; returns it and its size on disk.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), FormatError> {
        need(buf, INDEX_RECORD_LEN)?;
        let idlength = buf[0] as usize;
        let total = INDEX_RECORD_LEN + idlength;
        need(buf, total)?;
        Ok((
            IndexRecord {
                offset: le_u32(buf, 1),
                length: le_u32(buf, 5),
                previous: le_u32(buf, 9),
                flags: buf[13],
                dataid: le_u32(buf, 14),
                timestamp: le_u32(buf, 18),
                crc: le_u32(buf, 22),
                parentid: le_u32(buf, 26),
                parentoff: le_u32(buf, 30),
                key: buf[INDEX_RECORD_LEN..total].to_vec(),
            },
            total,
        ))
    }

    /// Whether the record is flagged deleted (deleted key or superseded version).
    pub fn is_deleted(&self) -> bool {
        self.flags & FLAG_DELETED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = IndexFileHeader::new(2, MODE_SEQ, 99);
        let b = h.encode();
        assert_eq!(&b[0..4], b"IDX0");
        assert_eq!(&b[4..8], &[4, 0, 0, 0]);
        assert_eq!(&b[24..28], &[2, 0, 0, 0]);
        assert_eq!(b[28], 1);
        assert_eq!(IndexFileHeader::decode(&b), Ok(h));
    }

    #[test]
    fn record_layout() {
        let r = IndexRecord {
            offset: 28,
            length: 5,
            previous: 29,
            flags: 1,
            dataid: 3,
            timestamp: 10,
            crc: 0x11223344,
            parentid: 1,
            parentoff: 63,
            key: b"abc".to_vec(),
        };
        let b = r.encode();
        assert_eq!(b.len(), 37);
        assert_eq!(b[0], 3);
        assert_eq!(b[INDEX_RECORD_FLAGS_AT as usize], 1);
        assert_eq!(&b[14..18], &[3, 0, 0, 0]);
        assert_eq!(&b[34..], b"abc");
        assert_eq!(IndexRecord::decode(&b), Ok((r, 37)));
        assert!(IndexRecord::decode(&b[..36]).is_err());
    }
}
