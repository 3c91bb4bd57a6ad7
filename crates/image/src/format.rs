//! The byte layout of manifest format version 1, defined once: the header, one record type per
//! fixed-record section, the meta section's encoding and the trailer (specified in docs/format.md).
//! The writer and the reader both go through these types, so a format change touches this file only.
//!
//! Records are `#[repr(C)]` structs of byte arrays and little-endian integers (alignment 1, no padding):
//! they are read in place from the memory-mapped manifest and written with [`IntoBytes::as_bytes`].

use ed25519_dalek::{Signer, SigningKey};
use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::{FileKind, ImageError};

/// The 8 bytes every manifest starts with.
pub const MAGIC: [u8; 8] = *b"THINIMG\0";
/// The manifest format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = size_of::<Header>();
/// The 8 bytes that start the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"THINSIG\0";
/// Trailer length in bytes.
pub const TRAILER_LEN: usize = size_of::<Trailer>();
/// Trailer flag: the manifest carries a signature.
pub const TRAILER_SIGNED: u32 = 1;
/// Domain-separation prefix of the signed message (followed by the 32-byte body hash).
pub const SIGNATURE_CONTEXT: &[u8] = b"thinnode manifest v1\0";
/// Number of section slots in the header.
pub const SECTION_COUNT: usize = 8;
/// The chunk slot value meaning "hole: reads as zeros, nothing stored".
pub const HOLE: u32 = u32::MAX;
/// Chunk record flag: the plaintext was zstd-compressed.
pub const CHUNK_COMPRESSED: u32 = 1;
/// Chunk record flag: the stored object is an rfs block (snappy, AES-256-GCM with nonce = key[0..12],
/// BLAKE2b-256 key and id; see docs/flist.md) rather than thinnode's encoding.
pub const CHUNK_RFS_BLOCK: u32 = 2;

/// The chunk record flags of `c`.
pub fn chunk_flags(c: &crate::ChunkRef) -> u32 {
    let mut flags = if c.compressed { CHUNK_COMPRESSED } else { 0 };
    if c.encoding == crate::ChunkEncoding::RfsBlock {
        flags |= CHUNK_RFS_BLOCK;
    }
    flags
}

/// Whether a chunk record's `flags` say zstd-compressed, and its encoding.
pub fn chunk_kind(flags: u32) -> (bool, crate::ChunkEncoding) {
    let encoding = if flags & CHUNK_RFS_BLOCK != 0 {
        crate::ChunkEncoding::RfsBlock
    } else {
        crate::ChunkEncoding::Thinnode
    };
    (flags & CHUNK_COMPRESSED != 0, encoding)
}

/// The sections of a manifest, in the order of the header's section table and of the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Inode records ([`InodeRecord`]), indexed by `ino - 1`.
    Inodes = 0,
    /// Directory entry records ([`DirentRecord`]), grouped per directory, sorted by name.
    Dirents = 1,
    /// Per-file chunk slots ([`SlotRecord`]: an index into `Chunks`, or [`HOLE`]).
    ChunkSlots = 2,
    /// Unique chunk records ([`ChunkRecord`]).
    Chunks = 3,
    /// Extended attribute records ([`XattrRecord`]).
    Xattrs = 4,
    /// Byte pool: names, symlink targets, xattr names and values.
    Pool = 5,
    /// Store URLs and labels ([`encode_meta`]).
    Meta = 6,
    /// Optional source stamps ([`StampRecord`]), indexed by `ino - 1`.
    SourceStamps = 7,
}

impl Section {
    /// Every section, in table order.
    pub const ALL: [Section; SECTION_COUNT] = [
        Section::Inodes,
        Section::Dirents,
        Section::ChunkSlots,
        Section::Chunks,
        Section::Xattrs,
        Section::Pool,
        Section::Meta,
        Section::SourceStamps,
    ];

    /// Record length of the section; 0 for the free-form pool and meta sections.
    pub const fn record_len(self) -> usize {
        match self {
            Section::Inodes => InodeRecord::LEN,
            Section::Dirents => DirentRecord::LEN,
            Section::ChunkSlots => SlotRecord::LEN,
            Section::Chunks => ChunkRecord::LEN,
            Section::Xattrs => XattrRecord::LEN,
            Section::SourceStamps => StampRecord::LEN,
            Section::Pool | Section::Meta => 0,
        }
    }
}

/// A fixed-length record of one section, read in place from the manifest's bytes.
pub trait Record: Sized + FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned {
    /// The section holding records of this type.
    const SECTION: Section;
    /// Record length in bytes.
    const LEN: usize = size_of::<Self>();
}

/// One entry of the header's section table.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SectionEntry {
    /// Offset of the section from the start of the file; 0 when the section is empty.
    pub offset: U64,
    /// Length in bytes.
    pub len: U64,
}

/// The header at offset 0.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`].
    pub version: U32,
    /// [`HEADER_LEN`].
    pub header_len: U32,
    /// Chunk size in bytes.
    pub chunk_size: U32,
    /// Flags (none defined in version 1: 0).
    pub flags: U32,
    /// Number of inodes.
    pub inode_count: U64,
    /// Offset and length of each [`Section`], in [`Section::ALL`] order.
    pub sections: [SectionEntry; SECTION_COUNT],
}

/// An inode: record `ino - 1` of [`Section::Inodes`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeRecord {
    /// [`kind_code`] of the file type.
    pub kind: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Permission bits (`mode & 0o7777`).
    pub perm: U16,
    /// Owner user id.
    pub uid: U32,
    /// Owner group id.
    pub gid: U32,
    /// Link count.
    pub nlink: U32,
    /// Size in bytes.
    pub size: U64,
    /// Modification time, seconds.
    pub mtime_sec: I64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: U32,
    /// Number of xattr records.
    pub xattr_count: U32,
    /// Directory: entries; regular file: chunk slots; symlink: target length; else 0.
    pub data_count: U32,
    /// Index of the first xattr record.
    pub xattr_start: U32,
    /// Directory: first dirent index; regular file: first slot index; symlink: pool offset of the target.
    pub data_start: U64,
    /// Device number of device nodes.
    pub rdev: U64,
}

impl Record for InodeRecord {
    const SECTION: Section = Section::Inodes;
}

/// A directory entry: a record of [`Section::Dirents`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DirentRecord {
    /// Pool offset of the name.
    pub name_offset: U64,
    /// The inode the entry names.
    pub ino: U64,
    /// Name length in bytes.
    pub name_len: U32,
    /// [`kind_code`] of the named inode.
    pub kind: u8,
    /// Reserved, 0.
    pub reserved: [u8; 3],
}

impl Record for DirentRecord {
    const SECTION: Section = Section::Dirents;
}

/// A chunk slot of a file: a record of [`Section::ChunkSlots`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SlotRecord {
    /// Index into the chunk table, or [`HOLE`].
    pub chunk: U32,
}

impl Record for SlotRecord {
    const SECTION: Section = Section::ChunkSlots;
}

/// A unique chunk: a record of [`Section::Chunks`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkRecord {
    /// BLAKE3 of the stored object.
    pub id: [u8; 32],
    /// The convergent AES-256-GCM key.
    pub key: [u8; 32],
    /// Plaintext length.
    pub plain_len: U32,
    /// Stored object length.
    pub stored_len: U32,
    /// [`CHUNK_COMPRESSED`], [`CHUNK_RFS_BLOCK`] or 0.
    pub flags: U32,
    /// Reserved, 0.
    pub reserved: U32,
}

impl Record for ChunkRecord {
    const SECTION: Section = Section::Chunks;
}

/// An extended attribute: a record of [`Section::Xattrs`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrRecord {
    /// Pool offset of the name.
    pub name_offset: U64,
    /// Pool offset of the value.
    pub value_offset: U64,
    /// Name length.
    pub name_len: U32,
    /// Value length.
    pub value_len: U32,
}

impl Record for XattrRecord {
    const SECTION: Section = Section::Xattrs;
}

/// A source stamp: record `ino - 1` of [`Section::SourceStamps`]; all zeros = not recorded.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct StampRecord {
    /// `st_dev` of the source file.
    pub dev: U64,
    /// `st_ino` of the source file.
    pub ino: U64,
    /// `st_ctime` seconds.
    pub ctime_sec: I64,
    /// `st_ctime` nanoseconds.
    pub ctime_nsec: U32,
    /// Reserved, 0.
    pub reserved: U32,
}

impl Record for StampRecord {
    const SECTION: Section = Section::SourceStamps;
}

/// The trailer: the last [`TRAILER_LEN`] bytes of the file.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Trailer {
    /// [`TRAILER_MAGIC`].
    pub magic: [u8; 8],
    /// [`TRAILER_SIGNED`] or 0.
    pub flags: U32,
    /// Reserved, 0.
    pub reserved: U32,
    /// BLAKE3 of the body (everything before the trailer).
    pub body_hash: [u8; 32],
    /// ed25519 public key of the signer; zeros when unsigned.
    pub signer: [u8; 32],
    /// ed25519 signature over [`SIGNATURE_CONTEXT`] ‖ body hash; zeros when unsigned.
    pub signature: [u8; 64],
}

// The sizes docs/format.md specifies.
const _: () = {
    assert!(HEADER_LEN == 160);
    assert!(InodeRecord::LEN == 64);
    assert!(DirentRecord::LEN == 24);
    assert!(SlotRecord::LEN == 4);
    assert!(ChunkRecord::LEN == 80);
    assert!(XattrRecord::LEN == 24);
    assert!(StampRecord::LEN == 32);
    assert!(TRAILER_LEN == 144);
};

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

/// Store URLs and labels, the content of [`Section::Meta`].
pub type Meta = (Vec<String>, Vec<(String, String)>);

/// Encodes the meta section: `u32 count, {u32 len, URL}*, u32 count, {u32 len, key, u32 len, value}*`.
pub fn encode_meta(stores: &[String], labels: &[(String, String)]) -> Vec<u8> {
    fn put_str(meta: &mut Vec<u8>, s: &str) {
        meta.extend_from_slice(&(s.len() as u32).to_le_bytes());
        meta.extend_from_slice(s.as_bytes());
    }
    let mut meta = Vec::new();
    meta.extend_from_slice(&(stores.len() as u32).to_le_bytes());
    for s in stores {
        put_str(&mut meta, s);
    }
    meta.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    for (k, v) in labels {
        put_str(&mut meta, k);
        put_str(&mut meta, v);
    }
    meta
}

/// Decodes the meta section written by [`encode_meta`]; an empty section has no stores and no labels.
pub fn parse_meta(b: &[u8]) -> Result<Meta, ImageError> {
    let corrupt = |m: &str| ImageError::CorruptManifest(m.to_string());
    let mut at = 0usize;
    let take_u32 = |at: &mut usize| -> Result<u32, ImageError> {
        let v = b
            .get(*at..*at + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| corrupt("short metadata"))?;
        *at += 4;
        Ok(v)
    };
    let take_str = |at: &mut usize| -> Result<String, ImageError> {
        let len = take_u32(at)? as usize;
        let end = at
            .checked_add(len)
            .ok_or_else(|| corrupt("metadata overflow"))?;
        let s = b
            .get(*at..end)
            .ok_or_else(|| corrupt("short metadata string"))?;
        *at = end;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt("metadata string is not UTF-8"))
    };
    if b.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut stores = Vec::new();
    for _ in 0..take_u32(&mut at)? {
        stores.push(take_str(&mut at)?);
    }
    let mut labels = Vec::new();
    for _ in 0..take_u32(&mut at)? {
        let k = take_str(&mut at)?;
        let v = take_str(&mut at)?;
        labels.push((k, v));
    }
    Ok((stores, labels))
}

/// BLAKE3 of a manifest body (multi-threaded above 8 MiB; the hash is the same either way).
pub fn body_hash(body: &[u8]) -> blake3::Hash {
    if body.len() > 8 << 20 {
        let mut h = blake3::Hasher::new();
        h.update_rayon(body);
        h.finalize()
    } else {
        blake3::hash(body)
    }
}

/// The fields of the header that are not derived from the sections.
#[derive(Clone, Copy, Debug)]
pub struct HeaderFields {
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Header flags.
    pub flags: u32,
    /// Number of inodes.
    pub inode_count: u64,
}

/// A whole manifest: the header (with the section table laid out for `sections`, each following the
/// previous one), the sections in [`Section::ALL`] order, and the trailer carrying the body hash and,
/// when `signer` is given, the signature.
pub fn seal_body(
    fields: HeaderFields,
    sections: &[&[u8]; SECTION_COUNT],
    signer: Option<&SigningKey>,
) -> Vec<u8> {
    let mut header = Header {
        magic: MAGIC,
        version: FORMAT_VERSION.into(),
        header_len: (HEADER_LEN as u32).into(),
        chunk_size: fields.chunk_size.into(),
        flags: fields.flags.into(),
        inode_count: fields.inode_count.into(),
        sections: [SectionEntry::default(); SECTION_COUNT],
    };
    let mut at = HEADER_LEN as u64;
    for (entry, section) in header.sections.iter_mut().zip(sections) {
        let len = section.len() as u64;
        entry.offset = U64::new(if len == 0 { 0 } else { at });
        entry.len = len.into();
        at += len;
    }
    let body_len = HEADER_LEN + sections.iter().map(|s| s.len()).sum::<usize>();
    let mut out = Vec::with_capacity(body_len + TRAILER_LEN);
    out.extend_from_slice(header.as_bytes());
    for s in sections {
        out.extend_from_slice(s);
    }
    let hash = body_hash(&out);
    let mut trailer = Trailer {
        magic: TRAILER_MAGIC,
        flags: U32::ZERO,
        reserved: U32::ZERO,
        body_hash: *hash.as_bytes(),
        signer: [0; 32],
        signature: [0; 64],
    };
    if let Some(key) = signer {
        trailer.flags = TRAILER_SIGNED.into();
        trailer.signer = key.verifying_key().to_bytes();
        trailer.signature = key.sign(&signed_message(hash.as_bytes())).to_bytes();
    }
    out.extend_from_slice(trailer.as_bytes());
    out
}

/// The message a manifest's signature covers.
pub fn signed_message(body_hash: &[u8; 32]) -> Vec<u8> {
    let mut msg = SIGNATURE_CONTEXT.to_vec();
    msg.extend_from_slice(body_hash);
    msg
}
