//! 0-db 2.0's on-disk format: data files, index files and the namespace descriptor.
//!
//! Every structure is little-endian and packed, exactly as 0-db writes it. This module only converts
//! between bytes and structs; it does no I/O, so the layout is testable on its own.

pub(crate) mod data_file;
pub(crate) mod index_file;
pub(crate) mod namespace_file;

pub use data_file::{DataEntryHeader, DataFileHeader};
pub use index_file::{IndexFileHeader, IndexRecord};
pub use namespace_file::{NamespaceDescriptor, NS_FLAG_EXTENDED, NS_FLAG_PUBLIC, NS_FLAG_WORM};

/// Entry flag (data and index): the key was deleted (or, on an index record, superseded).
pub const FLAG_DELETED: u8 = 1;
/// Data entry flag set by compaction tools: the payload was truncated.
pub const FLAG_TRUNCATED: u8 = 2;

/// Errors found while decoding on-disk structures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The file does not start with the expected magic.
    #[error("bad magic {found:?}, expected {expected:?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
        /// The four bytes expected.
        expected: [u8; 4],
    },
    /// A version this implementation does not read.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
}

/// 0-db's checksum: CRC32C (Castagnoli) started from 0 with no final XOR, as computed by the SSE 4.2
/// `crc32` instruction from a zero seed. This is not the standard CRC-32C value (which starts from and ends
/// with an all-ones XOR).
pub fn zdb_crc32(data: &[u8]) -> u32 {
    // crc32c_append(c, d) computes !raw(!c, d); with c = !0 that is !raw(0, d).
    !crc32c::crc32c_append(!0, data)
}

/// Reads a little-endian u32 at `at` (caller guarantees bounds via a prior length check).
pub(crate) fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = buf.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// Reads a little-endian u64 at `at` (caller guarantees bounds via a prior length check).
pub(crate) fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = buf.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// Checks that `buf` holds at least `need` bytes.
pub(crate) fn need(buf: &[u8], need: usize) -> Result<(), FormatError> {
    if buf.len() < need {
        Err(FormatError::Truncated {
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit CRC32C (reflected polynomial 0x82F63B78), seed 0, no final XOR: the reference.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = 0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc_matches_zero_seed_no_xor_reference() {
        for data in [
            &b""[..],
            b"a",
            b"123456789",
            &[0u8; 37][..],
            &[0xffu8; 4096][..],
        ] {
            assert_eq!(zdb_crc32(data), reference(data), "data len {}", data.len());
        }
        // Differs from the standard CRC-32C check value of "123456789" (0xE3069283).
        assert_ne!(zdb_crc32(b"123456789"), 0xE306_9283);
        assert_eq!(zdb_crc32(b""), 0);
    }
}
