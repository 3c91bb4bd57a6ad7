//! On-disk layout constants of manifest format version 1 (specified in docs/format.md) and the
//! little-endian field helpers shared by the reader and the writer.

use crate::FileKind;

/// The 8 bytes every manifest starts with.
pub const MAGIC: [u8; 8] = *b"THINIMG\0";
/// The manifest format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 160;
/// The 8 bytes that start the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"THINSIG\0";
/// Trailer length in bytes.
pub const TRAILER_LEN: usize = 144;
/// Trailer flag: the manifest carries a signature.
pub const TRAILER_SIGNED: u32 = 1;
/// Domain-separation prefix of the signed message (followed by the 32-byte body hash).
pub const SIGNATURE_CONTEXT: &[u8] = b"thinnode manifest v1\0";

/// Number of section slots in the header.
pub const SECTION_COUNT: usize = 8;
/// Offset of the first section descriptor in the header.
pub const SECTIONS_AT: usize = 32;

/// Section indices in the header's section table.
#[derive(Clone, Copy, Debug)]
pub enum Section {
    /// Inode records, indexed by `ino - 1`.
    Inodes = 0,
    /// Directory entry records, grouped per directory, sorted by name.
    Dirents = 1,
    /// Per-file chunk slots (u32 index into `Chunks`, or `HOLE`).
    ChunkSlots = 2,
    /// Unique chunk records.
    Chunks = 3,
    /// Extended attribute records.
    Xattrs = 4,
    /// Byte pool: names, symlink targets, xattr names and values.
    Pool = 5,
    /// Store URLs and labels.
    Meta = 6,
    /// Optional source stamps (identity and ctime of each packed file), indexed by `ino - 1`.
    SourceStamps = 7,
}

/// Inode record length.
pub const INODE_LEN: usize = 64;
/// Directory entry record length.
pub const DIRENT_LEN: usize = 24;
/// Chunk slot length.
pub const SLOT_LEN: usize = 4;
/// Unique chunk record length.
pub const CHUNK_LEN: usize = 80;
/// Extended attribute record length.
pub const XATTR_LEN: usize = 24;
/// Source stamp record length.
pub const STAMP_LEN: usize = 32;
/// The chunk slot value meaning "hole: reads as zeros, nothing stored".
pub const HOLE: u32 = u32::MAX;
/// Chunk record flag: the plaintext was zstd-compressed.
pub const CHUNK_COMPRESSED: u32 = 1;

/// Record length of each section (0: free-form).
pub const fn record_len(section: usize) -> usize {
    match section {
        0 => INODE_LEN,
        1 => DIRENT_LEN,
        2 => SLOT_LEN,
        3 => CHUNK_LEN,
        4 => XATTR_LEN,
        7 => STAMP_LEN,
        _ => 0,
    }
}

/// The on-disk code of a file kind.
pub fn kind_code(kind: FileKind) -> u8 {
    match kind {
        FileKind::Directory => 1,
        FileKind::Regular => 2,
        FileKind::Symlink => 3,
        FileKind::CharDevice => 4,
        FileKind::BlockDevice => 5,
        FileKind::Fifo => 6,
        FileKind::Socket => 7,
    }
}

/// The file kind of an on-disk code.
pub fn kind_from_code(code: u8) -> Option<FileKind> {
    Some(match code {
        1 => FileKind::Directory,
        2 => FileKind::Regular,
        3 => FileKind::Symlink,
        4 => FileKind::CharDevice,
        5 => FileKind::BlockDevice,
        6 => FileKind::Fifo,
        7 => FileKind::Socket,
        _ => return None,
    })
}

/// Reads a little-endian u16 at `at`; `None` when out of range.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Reads a little-endian u32 at `at`; `None` when out of range.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Reads a little-endian u64 at `at`; `None` when out of range.
pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Reads 32 bytes at `at`; `None` when out of range.
pub fn bytes32_at(b: &[u8], at: usize) -> Option<[u8; 32]> {
    b.get(at..at.checked_add(32)?)?.try_into().ok()
}
