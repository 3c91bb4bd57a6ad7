//! The read path of provisioned nodes: a lazy, verified, cached read-only FUSE mount of an image.
//!
//! A tour, bottom up:
//! - the host cache ([`HostCache`]): one sparse cache file per distinct file content ([`CacheFile`]),
//!   filled chunk by chunk and sealed when complete (the FUSE passthrough backing), shared by every
//!   mount on the host, LRU eviction under a size limit, a host-wide chunk index (`cache`,
//!   `cache_file`, `chunk_index`);
//! - the [`Fetcher`]: single-flight fetching from stores with retries, timeouts, readahead and rate
//!   limiting, verifying every chunk before use (`fetch`);
//! - the read engine [`BaseReader`], `read(ino, offset, len)`, independent of FUSE (`engine`);
//! - the FUSE adapter [`ImageFs`] (`fuser`), with passthrough for sealed files (`fs`);
//! - a mount served by this process, [`MountedImage`] (`daemon`), its errors ([`MountError`]), the
//!   records running mounts leave for other commands ([`MountRecord`], `records`), mountpoint state and
//!   unmounting, also used by the write layers ([`unmount_path`], `mountpoint`), shutdown signals
//!   (`signals`) and running in the background ([`spawn_detached`], `detach`);
//! - [`hydrate()`], access traces ([`TraceRecorder`]) and Prometheus [`Metrics`].
#![deny(missing_docs)]

mod cache;
mod cache_file;
mod chunk_index;
mod daemon;
mod detach;
mod engine;
mod error;
mod fetch;
mod fs;
mod hydrate;
mod metrics;
mod mountpoint;
mod records;
mod signals;
mod trace;

pub use cache::{CacheConfig, CacheError, CacheStats, HostCache};
pub use cache_file::{CacheFile, FileKey};
pub use daemon::{open_image, open_stores, MountConfig, MountedImage};
pub use detach::{notify_ready, spawn_detached, READY_FD_ENV};
pub use engine::{BaseReader, OpenFile, ReadError};
pub use error::MountError;
pub use fetch::{ChunkBytes, Dest, FetchConfig, FetchError, Fetcher};
pub use fs::{reply_xattr_bytes, ImageFs};
pub use hydrate::{hydrate, HydrateError, HydrateOptions, HydrateProgress, HydrateReport};
pub use metrics::Metrics;
pub use mountpoint::{
    absolute_mountpoint, clean_stale_mount, is_mountpoint, is_stale_mount, unescape_mount_field,
    unmount_path,
};
pub use records::{read_record, remove_record, write_record, MountRecord, RUN_DIR};
pub use signals::{install_shutdown_handler, shutdown_requested};
pub use trace::{TraceEntry, TraceError, TraceRecorder};

/// The default host cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/thinnode";
