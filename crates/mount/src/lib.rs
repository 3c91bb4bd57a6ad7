//! The read path of provisioned nodes: a lazy, verified, cached read-only FUSE mount of an image.
//!
//! Layers, bottom up:
//! - [`cache`]: the host chunk cache (content-addressed plaintext chunks shared by every mount, LRU
//!   eviction under a size limit, crash-safe writes);
//! - [`fetch`]: single-flight fetching from stores with retries, timeouts, readahead and rate limiting,
//!   verifying every chunk before use;
//! - [`engine`]: the base-read engine, `read(ino, offset, len)`, independent of FUSE;
//! - [`fs`]: the FUSE adapter (`fuser`), with passthrough for fully cached files;
//! - [`daemon`]: mount lifecycle (readiness, signals, stale mounts, mount records);
//! - [`hydrate`], [`trace`], [`metrics`]: background hydration, access traces, Prometheus metrics.

pub mod cache;
pub mod daemon;
pub mod engine;
pub mod fetch;
pub mod files;
pub mod fs;
pub mod hydrate;
pub mod metrics;
pub mod stores;
pub mod trace;
pub mod units;

pub use cache::{CacheConfig, HostCache};
pub use daemon::{MountConfig, MountError, MountedImage};
pub use engine::{BaseReader, ReadError};
pub use fetch::{ChunkBytes, FetchConfig, FetchError, Fetcher};
pub use metrics::Metrics;

/// The default host cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/thinnode";
/// The default host cache size limit (50 GB).
pub const DEFAULT_CACHE_BYTES: u64 = 50_000_000_000;
