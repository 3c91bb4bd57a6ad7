//! Errors of the node library.

use std::io;
use std::path::PathBuf;

/// Errors of the node library.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An I/O operation on a path failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The directory holds node secrets that must never go into a shared image.
    #[error(
        "{root} holds node secrets that must not be shared (nothing was uploaded):\n  {}\nremove them, or pass --strip-secrets to leave them out of the image",
        .paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n  ")
    )]
    SecretsFound {
        /// The directory scanned.
        root: PathBuf,
        /// Every offending path (absolute).
        paths: Vec<PathBuf>,
    },
    /// A node process still holds the data directory (a lock file is locked).
    #[error(
        "{root} is in use by a running node (locked: {}); stop the node first",
        .locks.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    InUse {
        /// The data directory.
        root: PathBuf,
        /// The lock files held by another process.
        locks: Vec<PathBuf>,
    },
    /// A node name is not usable.
    #[error("invalid node name {0:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.', not starting with '.' or '-'")]
    InvalidName(String),
    /// No node of that name exists.
    #[error("no node named {0:?}")]
    NoSuchNode(String),
    /// A node of that name already exists.
    #[error("a node named {0:?} already exists")]
    NodeExists(String),
    /// The operation needs a stopped node.
    #[error("node {0:?} is running; stop it first")]
    Running(String),
    /// The operation needs a running node, or the node could not be started.
    #[error("node {name:?}: {reason}")]
    Invalid {
        /// The node.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad argument (command line, placeholder, identity file).
    #[error("{0}")]
    BadArgument(String),
    /// The node record cannot be read.
    #[error("node record {path} is invalid: {reason}")]
    BadRecord {
        /// The record file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Packing or reading an image failed.
    #[error(transparent)]
    Image(Box<image::ImageError>),
    /// Opening a store failed.
    #[error(transparent)]
    Store(Box<store::StoreError>),
    /// Mounting failed.
    #[error(transparent)]
    Mount(Box<mount::MountError>),
    /// A write layer operation failed.
    #[error(transparent)]
    Layer(Box<layer::Error>),
    /// The supervisor could not be started or reported an error.
    #[error("supervisor of node {name:?}: {reason}")]
    Supervisor {
        /// The node.
        name: String,
        /// What happened.
        reason: String,
    },
}

/// Result type of the node library.
pub type Result<T> = std::result::Result<T, NodeError>;

/// Maps an `io::Error` on `path` to [`NodeError::Io`].
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(io::Error) -> NodeError + 'a {
    move |source| NodeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl From<image::ImageError> for NodeError {
    fn from(e: image::ImageError) -> Self {
        NodeError::Image(Box::new(e))
    }
}

impl From<store::StoreError> for NodeError {
    fn from(e: store::StoreError) -> Self {
        NodeError::Store(Box::new(e))
    }
}

impl From<mount::MountError> for NodeError {
    fn from(e: mount::MountError) -> Self {
        NodeError::Mount(Box::new(e))
    }
}

impl From<layer::Error> for NodeError {
    fn from(e: layer::Error) -> Self {
        NodeError::Layer(Box::new(e))
    }
}
