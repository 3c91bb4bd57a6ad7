//! The read path of provisioned nodes: a lazy, verified, cached read-only FUSE mount of an image.
//!
//! Layers, bottom up:
//! - [`cache`], [`cache_file`], [`chunk_index`]: the host cache: one sparse cache file per distinct
//!   file content, filled chunk by chunk and sealed when complete (the FUSE passthrough backing), shared
//!   by every mount on the host, LRU eviction under a size limit, a host-wide chunk index;
//! - [`fetch`]: single-flight fetching from stores with retries, timeouts, readahead and rate limiting,
//!   verifying every chunk before use;
//! - [`engine`]: the base-read engine, `read(ino, offset, len)`, independent of FUSE;
//! - [`fs`]: the FUSE adapter (`fuser`), with passthrough for sealed files;
//! - [`daemon`]: mount lifecycle (readiness, signals, stale mounts, mount records);
//! - [`hydrate`], [`trace`], [`metrics`]: background hydration, access traces, Prometheus metrics.

pub mod cache;
pub mod cache_file;
pub mod chunk_index;
pub mod daemon;
pub mod engine;
pub mod fetch;
pub mod fs;
pub mod hydrate;
pub mod metrics;
pub mod stores;
pub mod trace;

pub use cache::{CacheConfig, HostCache};
pub use cache_file::{CacheFile, FileKey};
pub use daemon::{MountConfig, MountError, MountedImage};
pub use engine::{BaseReader, OpenFile, ReadError};
pub use fetch::{ChunkBytes, Dest, FetchConfig, FetchError, Fetcher};
pub use metrics::Metrics;

/// The default host cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/thinnode";
/// The default host cache size limit (50 GB).
pub const DEFAULT_CACHE_BYTES: u64 = 50_000_000_000;
