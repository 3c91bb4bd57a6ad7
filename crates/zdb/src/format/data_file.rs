//! Data files `<data>/<ns>/d<N>`: a 28-byte header ("DAT0", version 3) followed by entries, each an 18-byte
//! header, the key and the payload.

use super::{le_u32, le_u64, need, FormatError, FLAG_DELETED};

/// Magic bytes opening every data file.
pub const DATA_MAGIC: [u8; 4] = *b"DAT0";
/// The data file version 0-db 2.0 writes.
pub const DATA_VERSION: u32 = 3;
/// Size of [`DataFileHeader`] on disk.
pub const DATA_HEADER_LEN: usize = 28;
/// Size of [`DataEntryHeader`] on disk (the key and payload follow it).
pub const DATA_ENTRY_HEADER_LEN: usize = 18;

/// The file name of data file `fileid`.
pub fn data_file_name(fileid: u32) -> String {
    format!("d{fileid}")
}

/// Header of a data file: `{magic[4], u32 version, u64 created, u64 opened, u32 fileid}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFileHeader {
    /// File format version (3).
    pub version: u32,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Last open time, unix seconds.
    pub opened: u64,
    /// This file's id (the N of `dN`).
    pub fileid: u32,
}

impl DataFileHeader {
    /// A fresh header for file `fileid` created at `now`.
    pub fn new(fileid: u32, now: u64) -> Self {
        DataFileHeader {
            version: DATA_VERSION,
            created: now,
            opened: now,
            fileid,
        }
    }

    /// The 28 bytes on disk.
    pub fn encode(&self) -> [u8; DATA_HEADER_LEN] {
        let mut b = [0u8; DATA_HEADER_LEN];
        b[0..4].copy_from_slice(&DATA_MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.created.to_le_bytes());
        b[16..24].copy_from_slice(&self.opened.to_le_bytes());
        b[24..28].copy_from_slice(&self.fileid.to_le_bytes());
        b
    }

    /// Parses a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        need(buf, DATA_HEADER_LEN)?;
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&buf[0..4]);
        if magic != DATA_MAGIC {
            return Err(FormatError::BadMagic {
                found: magic,
                expected: DATA_MAGIC,
            });
        }
        let version = le_u32(buf, 4);
        if version != DATA_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        Ok(DataFileHeader {
            version,
            created: le_u64(buf, 8),
            opened: le_u64(buf, 16),
            fileid: le_u32(buf, 24),
        })
    }
}

/// Header of one data entry: `{u8 idlength, u32 datalength, u32 previous, u32 crc, u8 flags,
/// u32 timestamp}`, followed on disk by `idlength` key bytes and `datalength` payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEntryHeader {
    /// Key length.
    pub idlength: u8,
    /// Payload length.
    pub datalength: u32,
    /// Offset of the previous entry in this file (0 for the first).
    pub previous: u32,
    /// [`super::zdb_crc32`] of the payload.
    pub crc: u32,
    /// [`FLAG_DELETED`], [`super::FLAG_TRUNCATED`].
    pub flags: u8,
    /// Write time, unix seconds.
    pub timestamp: u32,
}

impl DataEntryHeader {
    /// The 18 bytes on disk.
    pub fn encode(&self) -> [u8; DATA_ENTRY_HEADER_LEN] {
        let mut b = [0u8; DATA_ENTRY_HEADER_LEN];
        b[0] = self.idlength;
        b[1..5].copy_from_slice(&self.datalength.to_le_bytes());
        b[5..9].copy_from_slice(&self.previous.to_le_bytes());
        b[9..13].copy_from_slice(&self.crc.to_le_bytes());
        b[13] = self.flags;
        b[14..18].copy_from_slice(&self.timestamp.to_le_bytes());
        b
    }

    /// Parses an entry header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        need(buf, DATA_ENTRY_HEADER_LEN)?;
        Ok(DataEntryHeader {
            idlength: buf[0],
            datalength: le_u32(buf, 1),
            previous: le_u32(buf, 5),
            crc: le_u32(buf, 9),
            flags: buf[13],
            timestamp: le_u32(buf, 14),
        })
    }

    /// Whether this entry records a deletion.
    pub fn is_deleted(&self) -> bool {
        self.flags & FLAG_DELETED != 0
    }

    /// Total bytes of this entry on disk: header, key and payload.
    pub fn total_len(&self) -> u64 {
        DATA_ENTRY_HEADER_LEN as u64 + self.idlength as u64 + self.datalength as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = DataFileHeader::new(7, 0x0102_0304_0506_0708);
        let b = h.encode();
        assert_eq!(&b[0..4], b"DAT0");
        assert_eq!(&b[4..8], &[3, 0, 0, 0]);
        assert_eq!(&b[24..28], &[7, 0, 0, 0]);
        assert_eq!(DataFileHeader::decode(&b), Ok(h));
        assert!(DataFileHeader::decode(&b[..27]).is_err());
        let mut bad = b;
        bad[0] = b'X';
        assert!(matches!(
            DataFileHeader::decode(&bad),
            Err(FormatError::BadMagic { .. })
        ));
    }

    #[test]
    fn entry_round_trip_and_layout() {
        let e = DataEntryHeader {
            idlength: 3,
            datalength: 0x0A0B0C0D,
            previous: 28,
            crc: 0xDEADBEEF,
            flags: FLAG_DELETED,
            timestamp: 1_700_000_000,
        };
        let b = e.encode();
        assert_eq!(b[0], 3);
        assert_eq!(&b[1..5], &[0x0D, 0x0C, 0x0B, 0x0A]);
        assert_eq!(&b[9..13], &[0xEF, 0xBE, 0xAD, 0xDE]);
        assert_eq!(b[13], 1);
        assert_eq!(DataEntryHeader::decode(&b), Ok(e));
        assert!(e.is_deleted());
        assert_eq!(e.total_len(), 18 + 3 + 0x0A0B0C0D);
    }
}
