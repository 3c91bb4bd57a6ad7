//! The thinnode image format: manifest, chunking, chunk encoding, and pack/unpack/verify/inspect.
//!
//! An image is a signed, memory-mapped manifest (see docs/format.md) describing a directory tree whose file
//! contents are cut into fixed-size chunks; each chunk is compressed, encrypted under a key derived from its
//! plaintext and stored in a [`store::ChunkStore`] under the BLAKE3 hash of the stored object.
//!
//! Where things are: the byte layout of a manifest is defined once in `format` (one record type per
//! section, header, trailer, sealing); [`ManifestBuilder`] writes a manifest and [`ImageManifest`] reads
//! one in place. [`encode_chunk`] and [`decode_chunk`] are the chunk codec. [`pack`], [`unpack`],
//! [`verify`] and [`image_stats`] are the engines of the commands of the same names;
//! [`manifest_with_stores`] rewrites the store list for `store copy`.

#![deny(missing_docs)]

mod codec;
mod convert;
pub mod fl;
mod format;
mod keys;
mod pack;
mod reader;
mod restore_urls;
mod stats;
mod tree;
mod unpack;
mod verify;
mod writer;

use std::path::PathBuf;

pub use codec::{
    check_chunk_key, chunk_key, decode_chunk, encode_chunk, encode_chunk_as, DecodedChunk,
    EncodedChunk, CHUNK_KEY_CONTEXT, DECODED_ALIGN, DEFAULT_ZSTD_LEVEL, TAG_LEN,
};
pub use convert::{convert_image, ConvertOptions, ConvertSummary};
/// The ed25519 secret key that signs a manifest (from `read_signing_key` or `generate_signing_key`).
pub use ed25519_dalek::SigningKey;
pub use fl::{FlistLosses, FlistOptions, FlistWriteOptions, FlistWriteSummary};
pub use format::{FORMAT_VERSION, MAGIC};
pub use keys::{
    generate_signing_key, read_signing_key, read_verifying_key, write_key_pair, write_signing_key,
    write_verifying_key,
};
pub use pack::{pack, PackOptions, PackProgress, PackSummary};
pub use reader::ImageManifest;
pub use restore_urls::manifest_with_stores;
pub use stats::{image_stats, ImageStats};
pub use store::ChunkId;
pub use unpack::{unpack, UnpackOptions, UnpackSummary};
pub use verify::{verify, ChunkProblem, VerifyOptions, VerifyReport};
pub use writer::{ManifestBuilder, NewInode};

/// An inode number inside an image: `1..=inode_count()`.
pub type Ino = u64;

/// The inode number of the image's root directory.
pub const ROOT_INO: Ino = 1;

/// Smallest chunk size pack accepts (64 KiB).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size pack accepts (4 MiB).
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Default chunk size (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;

/// Extended attributes as (name, value) pairs of raw bytes.
pub type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

/// The type of a file in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A regular file.
    Regular,
    /// A symbolic link.
    Symlink,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A unix socket (recorded, never restored as a live socket).
    Socket,
}

/// Attributes of one inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Inode number in the image.
    pub ino: Ino,
    /// File type.
    pub kind: FileKind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u16,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (regular files: content length; symlinks: target length).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds part.
    pub mtime_nsec: u32,
    /// Number of directory entries naming this inode (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Device number for device nodes, else 0.
    pub rdev: u64,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name as raw bytes.
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: Ino,
    /// The inode's type.
    pub kind: FileKind,
}

/// Identity and change time of a packed file on the machine it was packed from. `pack --base` reuses the
/// old image's chunks for a file whose path, size, mtime and stamp are all unchanged, without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceStamp {
    /// `st_dev` of the source file.
    pub dev: u64,
    /// `st_ino` of the source file.
    pub ino: u64,
    /// `st_ctime` seconds.
    pub ctime_sec: i64,
    /// `st_ctime` nanoseconds.
    pub ctime_nsec: u32,
}

/// How a chunk's stored object is made from its plaintext (docs/format.md, "Chunk encoding").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ChunkEncoding {
    /// thinnode's own: zstd when it shrinks, AES-256-GCM with a zero nonce under
    /// `BLAKE3.derive_key(plaintext)`, id = BLAKE3 of the stored object.
    #[default]
    Thinnode,
    /// An rfs block (ThreeFold flists): snappy, AES-256-GCM with nonce = key[0..12] under
    /// key = BLAKE2b-256(plaintext), id = BLAKE2b-256 of the stored object (see crate `flist`).
    RfsBlock,
}

/// Everything needed to fetch and decode one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// BLAKE3 of the stored object; the store key.
    pub id: ChunkId,
    /// The convergent AES-256-GCM key (derived from the plaintext).
    pub key: [u8; 32],
    /// Plaintext length in bytes.
    pub plain_len: u32,
    /// Stored object length in bytes; 0 when unknown (flists do not record it).
    pub stored_len: u32,
    /// Whether the plaintext was zstd-compressed before encryption (thinnode encoding only).
    pub compressed: bool,
    /// How the stored object is encoded.
    pub encoding: ChunkEncoding,
}

impl ChunkRef {
    /// The stored length, or when the manifest does not know it (rfs blocks read from an flist) an
    /// upper bound from the plaintext length: what rate limits and batch sizes count.
    pub fn stored_len_estimate(&self) -> u64 {
        if self.stored_len != 0 || self.plain_len == 0 {
            return u64::from(self.stored_len);
        }
        // snappy's worst case is 32 + n + n/6; the GCM tag adds 16.
        let n = u64::from(self.plain_len);
        32 + n + n / 6 + TAG_LEN as u64
    }
}

/// What file an [`ImageManifest`] was read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum ManifestSource {
    /// A thinnode image manifest.
    #[default]
    Image,
    /// A ThreeFold flist (`.fl`), turned into a manifest in memory.
    Flist,
}

/// Errors from reading, writing and using images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (usually naming the path).
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The inode number does not exist in this image.
    #[error("no inode {0} in the image")]
    NotFound(Ino),
    /// The inode exists but has the wrong type for the request.
    #[error("inode {ino} is not a {expected}")]
    WrongKind {
        /// The inode asked about.
        ino: Ino,
        /// What the request needed ("directory", "regular file", "symlink").
        expected: &'static str,
    },
    /// The manifest is malformed: bad magic, unsupported version, an offset or length out of range.
    #[error("corrupt manifest: {0}")]
    CorruptManifest(String),
    /// A stored chunk object failed verification.
    #[error("corrupt chunk {id}: {reason}")]
    CorruptChunk {
        /// The chunk's id.
        id: ChunkId,
        /// What did not match.
        reason: String,
    },
    /// The store does not hold a chunk the image needs.
    #[error("chunk {0} is missing from the store")]
    MissingChunk(ChunkId),
    /// A chunk of a file could not be restored (names the file and the byte offset).
    #[error("{path} @ offset {offset}: {source}")]
    FileChunk {
        /// Path of the file inside the image.
        path: String,
        /// Byte offset of the chunk in the file.
        offset: u64,
        /// Why.
        source: Box<ImageError>,
    },
    /// The manifest is not signed but a signature was required.
    #[error("the image is not signed")]
    Unsigned,
    /// The manifest is signed by a key other than the trusted one.
    #[error("the image is signed by {found}, not by the trusted key {trusted}")]
    UntrustedKey {
        /// Hex of the key that signed the image.
        found: String,
        /// Hex of the trusted key.
        trusted: String,
    },
    /// The signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A key file is malformed.
    #[error("bad key file {path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A chunk store operation failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// Reading or writing a ThreeFold flist failed.
    #[error("{0}")]
    Flist(#[from] flist::FlistError),
    /// Invalid input or options (bad chunk size, duplicate names, unsupported file, ...).
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A thread pool for work that waits on a store (fetching chunks): `threads` workers, or when 0, twice
/// the cores and at least 4, so store latency overlaps with decoding.
pub(crate) fn store_io_pool(threads: usize) -> Result<rayon::ThreadPool, ImageError> {
    let threads = if threads == 0 {
        (std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            * 2)
        .max(4)
    } else {
        threads
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| ImageError::Invalid(format!("cannot start worker threads: {e}")))
}
