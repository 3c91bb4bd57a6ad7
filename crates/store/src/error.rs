//! The error type shared by every chunk store backend and the 0-db client.

use std::io;

/// Errors from a chunk store or the 0-db client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A chunk id in text form was not 64 hex characters.
    #[error("invalid chunk id {0:?}")]
    InvalidId(String),

    /// A store URL could not be understood. `url` never contains a password.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The offending URL with any password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A local filesystem operation of the `dir://` store failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "rename", ...).
        operation: &'static str,
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The connection to a server could not be made or broke (refused, reset, closed). Transient: the
    /// 0-db client retries these with backoff before reporting them.
    #[error("connection to {endpoint} failed: {source}")]
    Connection {
        /// The server address (`host:port` or `unix:PATH`).
        endpoint: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The server did not answer within the configured timeout. Transient, like [`StoreError::Connection`].
    #[error("timed out after {timeout_ms} ms waiting for {endpoint} to {operation}")]
    Timeout {
        /// The server address.
        endpoint: String,
        /// What was being waited for ("connect", "reply", "accept the request").
        operation: &'static str,
        /// The timeout that expired, in milliseconds.
        timeout_ms: u128,
    },

    /// The server answered with an error reply; `message` is the server's own text (for 0-db e.g.
    /// "Namespace is in read-only mode" or "Permission denied"). Never retried.
    #[error("server error: {message}")]
    Server {
        /// The error text sent by the server.
        message: String,
    },

    /// The server sent something that is not valid RESP or not the reply shape the command has.
    #[error("protocol error from {endpoint}: {reason}")]
    Protocol {
        /// The server address.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },

    /// A write to a router or dispersed store did not reach every member it had to. The message names
    /// each member that failed and why.
    #[error("{operation} failed on {} member(s): {}", failures.len(), format_failures(failures))]
    Members {
        /// What was being done ("write", "existence check", "read").
        operation: &'static str,
        /// Each member store that failed (public URL) with its error.
        failures: Vec<MemberFailure>,
    },

    /// A dispersed chunk cannot be read or written: fewer shards than needed were available.
    #[error("chunk {id}: {available} shard(s) available, {needed} needed{}", if failures.is_empty() { String::new() } else { format!(" (failed: {})", format_failures(failures)) })]
    NotEnoughShards {
        /// The chunk id in hex.
        id: String,
        /// Shards required (k for reads, k + the write minimum for writes).
        needed: usize,
        /// Shards that were actually read or stored.
        available: usize,
        /// Members that failed with an error (as opposed to not holding the shard).
        failures: Vec<MemberFailure>,
    },

    /// Stored data is inconsistent (a shard with a bad header, or a rebuilt object whose hash differs from
    /// its id).
    #[error("chunk {id} is corrupt: {reason}")]
    Corrupt {
        /// The chunk id in hex.
        id: String,
        /// What is wrong.
        reason: String,
    },

    /// The store only serves reads (`http(s)://`).
    #[error("{url} is a read-only store")]
    ReadOnly {
        /// The store's public URL.
        url: String,
    },

    /// An `s3://` store's bucket does not exist at its endpoint.
    #[error("S3 bucket {bucket:?} does not exist at {endpoint}")]
    BucketMissing {
        /// The bucket name.
        bucket: String,
        /// The endpoint asked (no credentials).
        endpoint: String,
    },

    /// An `s3://` store refused a request: wrong credentials or a missing permission. Never contains the
    /// credentials.
    #[error("S3 {operation} in bucket {bucket:?} at {endpoint} was denied: {reason}")]
    AccessDenied {
        /// The bucket name.
        bucket: String,
        /// The endpoint asked (no credentials).
        endpoint: String,
        /// What was being done ("read", "write", "existence check", "list").
        operation: &'static str,
        /// The S3 error code and what it means (e.g. "InvalidAccessKeyId: the access key id or secret
        /// key is wrong").
        reason: String,
    },

    /// An object is larger than the backend accepts.
    #[error("object of {size} bytes exceeds the {limit}-byte limit of this store")]
    ObjectTooLarge {
        /// The object's size.
        size: usize,
        /// The largest size the backend accepts.
        limit: usize,
    },
}

/// One member store's failure inside a router or dispersed store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFailure {
    /// The member's public URL.
    pub url: String,
    /// Its error, as text.
    pub error: String,
}

fn format_failures(failures: &[MemberFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("{}: {}", f.url, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl StoreError {
    /// Whether the error is a transient transport failure that a retry on a fresh connection may cure.
    /// Server error replies and protocol violations are never transient.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Connection { .. } | StoreError::Timeout { .. }
        )
    }

    /// The server's error text, when this is a server error reply.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            StoreError::Server { message } => Some(message),
            _ => None,
        }
    }
}
