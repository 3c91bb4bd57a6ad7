//! Where encoded chunks live.
//!
//! A chunk store maps a [`ChunkId`] (the BLAKE3 hash of the stored, encoded object) to the object's bytes.
//! Stores know nothing about images: they move opaque, already-encrypted objects. Backends are chosen by
//! URL (see [`open`]): `dir://PATH` ([`DirStore`]) and `zdb://…` / `zdb+unix://…` ([`ZdbStore`], built on
//! the 0-db client in [`zdb`]), and the multi-store kinds built from those: `route:` ([`RouterStore`]: key
//! ranges and replicas with failover) and `disperse:` ([`DispersedStore`]: Reed–Solomon shards over
//! several servers), plus the read-only `http(s)://` store ([`HttpStore`]) and `s3://` buckets ([`S3Store`]).
//! The URL syntax is documented in docs/stores.md.

#![deny(missing_docs)]

mod dir;
mod dispersed;
mod error;
mod health;
mod http;
mod location;
mod router;
mod s3;
pub mod zdb;

use std::fmt;
use std::sync::Arc;

pub use dir::DirStore;
pub use dispersed::{DispersedStore, RepairReport, ShardHeader, DISPERSE_PREFIX, SHARD_HEADER_LEN};
pub use error::{MemberFailure, StoreError};
pub use http::HttpStore;
pub use location::{redact_url, StoreLocation};
pub use router::{route_entries, RouterStore, ROUTE_PREFIX};
pub use s3::{
    S3Config, S3Store, DEFAULT_PARALLEL as S3_DEFAULT_PARALLEL, DEFAULT_REGION as S3_DEFAULT_REGION,
};
pub use zdb::ZdbStore;

/// The id of a stored chunk object: BLAKE3 of the stored (encoded) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `stored`, an encoded chunk object.
    pub fn of(stored: &[u8]) -> Self {
        ChunkId(*blake3::hash(stored).as_bytes())
    }

    /// Lower-case hex form, as used in file names and logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the 64-character hex form.
    pub fn from_hex(s: &str) -> Result<Self, StoreError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| StoreError::InvalidId(s.to_string()))?;
        Ok(ChunkId(out))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The callback of [`ChunkStore::get_each`]: receives each object's index in the request and its bytes
/// (`None` when missing), borrowed for the duration of the call.
pub type DeliverFn<'a> = dyn FnMut(usize, Option<&[u8]>) -> Result<(), StoreError> + 'a;

/// A place that holds encoded chunk objects by id. Implementations are cheap to share between threads
/// and do their own connection pooling.
pub trait ChunkStore: Send + Sync {
    /// Fetches one object; `Ok(None)` when the store does not hold it.
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores one object under `id`. Storing an object that is already there is not an error.
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError>;

    /// Whether the store holds `id`.
    fn has(&self, id: &ChunkId) -> Result<bool, StoreError>;

    /// Fetches many objects, in the order of `ids`. Backends override this to batch or pipeline.
    fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        ids.iter().map(|id| self.get(id)).collect()
    }

    /// Fetches many objects and hands each to `deliver(index, bytes)` in the order of `ids` (`None` when
    /// the store does not hold it), without keeping them all in memory: the bytes are only valid during
    /// the call. Backends override this to stream from a reused buffer. An error from `deliver` stops
    /// the fetch and is returned.
    fn get_each(&self, ids: &[ChunkId], deliver: &mut DeliverFn<'_>) -> Result<(), StoreError> {
        for (index, id) in ids.iter().enumerate() {
            let value = self.get(id)?;
            deliver(index, value.as_deref())?;
        }
        Ok(())
    }

    /// Existence of many objects, in the order of `ids`. Backends override this to batch or pipeline.
    fn has_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        ids.iter().map(|id| self.has(id)).collect()
    }

    /// Stores many objects. Backends override this to batch or pipeline.
    fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        items.iter().try_for_each(|(id, data)| self.put(id, data))
    }

    /// The store's URL with any password removed, as recorded in image manifests and logs.
    fn public_url(&self) -> String;
}

/// Opens a `route:`, `disperse:` (members always open lazily) or `http(s)://` store (no request until
/// first use); `None` for other URLs.
fn open_composite(url: &str) -> Result<Option<Arc<dyn ChunkStore>>, StoreError> {
    if url.starts_with(ROUTE_PREFIX) {
        Ok(Some(Arc::new(RouterStore::open(url)?)))
    } else if url.starts_with(DISPERSE_PREFIX) {
        Ok(Some(Arc::new(DispersedStore::open(url)?)))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        Ok(Some(Arc::new(HttpStore::open(url)?)))
    } else {
        Ok(None)
    }
}

/// Opens one member of a router or dispersed store: a single-backend URL, opened lazily.
pub(crate) fn open_member(url: &str) -> Result<Arc<dyn ChunkStore>, StoreError> {
    if url.starts_with(ROUTE_PREFIX) || url.starts_with(DISPERSE_PREFIX) {
        return Err(StoreError::InvalidUrl {
            url: redact_url(url),
            reason: "members of route: and disperse: stores must be single stores (dir://, zdb://, http(s)://, s3://)".into(),
        });
    }
    open_lazy(url)
}

/// Opens the store a URL names (`route:…` and `disperse:…` are described in docs/stores.md): `dir://PATH` or `zdb://[user:pass@]host[:port][/namespace]` or
/// `zdb+unix:///socket/path?ns=NAME&password=PWD` or `s3://BUCKET[/PREFIX]?endpoint=…`. A `dir://` store's
/// directory is created if missing; a `zdb` store dials one connection, so a wrong address or password
/// fails here; an `s3` store lists its bucket once, so an unreachable endpoint, a missing bucket or
/// rejected credentials fail here.
pub fn open(url: &str) -> Result<Arc<dyn ChunkStore>, StoreError> {
    if let Some(store) = open_composite(url)? {
        return Ok(store);
    }
    match StoreLocation::parse(url)? {
        StoreLocation::Dir(path) => Ok(Arc::new(DirStore::open(path)?)),
        StoreLocation::Zdb(config) => Ok(Arc::new(ZdbStore::connect(config)?)),
        StoreLocation::S3(config) => Ok(Arc::new(S3Store::connect(*config)?)),
    }
}

/// Like [`open`], but a `zdb` or `s3` store makes no request until first used, so opening succeeds while
/// the server is down (each call then fails, or succeeds once the server is back). The URL is still fully
/// checked.
pub fn open_lazy(url: &str) -> Result<Arc<dyn ChunkStore>, StoreError> {
    if let Some(store) = open_composite(url)? {
        return Ok(store);
    }
    match StoreLocation::parse(url)? {
        StoreLocation::Dir(path) => Ok(Arc::new(DirStore::open(path)?)),
        StoreLocation::Zdb(config) => Ok(Arc::new(ZdbStore::new(config))),
        StoreLocation::S3(config) => Ok(Arc::new(S3Store::new(*config)?)),
    }
}
