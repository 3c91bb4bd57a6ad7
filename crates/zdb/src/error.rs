//! The crate's error type.

use std::path::PathBuf;

use crate::format::FormatError;

/// Errors of the server and its storage.
#[derive(Debug, thiserror::Error)]
pub enum ZdbError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file does not have 0-db's layout.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: FormatError,
    },
    /// A command-line flag or setting is invalid.
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// A namespace could not be opened.
    #[error("namespace {name}: {reason}")]
    Namespace {
        /// Namespace name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The server thread could not be started or stopped.
    #[error("server thread: {0}")]
    Thread(String),
}

impl ZdbError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ZdbError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to I/O results.
pub(crate) trait IoContext<T> {
    /// Maps an I/O error to [`ZdbError::Io`] with `context`.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ZdbError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ZdbError> {
        self.map_err(|e| ZdbError::io(context(), e))
    }
}
