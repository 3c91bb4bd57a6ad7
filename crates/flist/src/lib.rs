//! ThreeFold flists (the `.fl` files of threefoldtech/rfs) as a library: the SQLite file ([`Flist`] to
//! read one, [`FlistWriter`] to write one, [`is_flist`] to recognise one by content), the rfs block codec
//! ([`encode_block`], [`decode_block`]: 512 KiB blocks, snappy, AES-256-GCM under a key derived from the
//! plaintext, BLAKE2b-256 ids), and the route table ([`Route`]) with its translation to and from thinnode
//! store URLs. How blocks travel and are served (stores, caches, the mount) is not here: crate `image`
//! turns an flist into an image manifest so every command reads flists. Format facts: docs/flist.md.

#![deny(missing_docs)]

mod codec;
mod db;
mod routes;

use std::path::PathBuf;

pub use codec::{
    blake2b_256, check_id, check_key, decode_block, decompress_into, decompressed_len,
    decrypt_in_place, encode_block, is_zero_block, Block, BlockError, EncodedBlock, BLOCK_SIZE,
    TAG_LEN, ZERO_BLOCK_KEY,
};
pub use db::{
    is_flist, is_sqlite, starts_like_sqlite, FileType, FlInode, Flist, FlistWriter, NewFlInode,
    ROOT_INO, SCHEMA, SQLITE_HEADER, TABLES,
};
pub use routes::{
    has_password, rfs_url_from_store, routes_of_store_url, store_url_from_rfs, store_url_of_routes,
    strip_password, Route,
};

/// Errors from reading and writing flists.
#[derive(Debug, thiserror::Error)]
pub enum FlistError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// SQLite refused the file or a statement.
    #[error("{}: {source}", path.display())]
    Sqlite {
        /// The flist file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file is not an flist.
    #[error("{} is not an flist: {reason}", path.display())]
    NotAnFlist {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// The flist is malformed (a broken tree, a bad block row, a bad route).
    #[error("{}: bad flist: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A route URL cannot be used or translated.
    #[error("store route {url}: {reason}")]
    Url {
        /// The URL (password hidden).
        url: String,
        /// Why.
        reason: String,
    },
}

impl FlistError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FlistError::Io {
            context: context.into(),
            source,
        }
    }
}
