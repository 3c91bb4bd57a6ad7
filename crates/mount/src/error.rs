//! The errors of mounting, serving and unmounting an image.

use std::io;
use std::path::PathBuf;

use image::ImageError;

use crate::cache::CacheError;
use crate::trace::TraceError;

/// Errors of the mount lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The image could not be opened or failed signature verification.
    #[error("image {path}: {error}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why.
        error: ImageError,
    },
    /// The host cache could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The access trace could not be created.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// A store URL that cannot be used (it does not parse, or a directory store cannot be created).
    #[error("store {url}: {error}")]
    Store {
        /// The URL, without its password.
        url: String,
        /// Why.
        error: store::StoreError,
    },
    /// The image records no store and none was given.
    #[error("the image records no store; pass --store")]
    NoStore,
    /// Something is wrong with the mountpoint.
    #[error("mountpoint {path}: {reason}")]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A background daemon failed before it was ready (its own error message).
    #[error("{0}")]
    Daemon(String),
    /// A system call failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        error: io::Error,
    },
}

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    let context = context.into();
    move |error| MountError::Io { context, error }
}
