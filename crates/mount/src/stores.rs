//! Opening the stores a mount reads from. A store that cannot be reached when the mount starts is
//! retried on every use, so a node whose image is cached can start while its store is down.

use std::sync::{Arc, Mutex};

use store::{ChunkId, ChunkStore, DeliverFn, StoreError};

/// A store opened from its URL on first successful use (and reopened after opening failed).
pub struct LazyStore {
    url: String,
    public_url: String,
    inner: Mutex<Option<Arc<dyn ChunkStore>>>,
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStore")
            .field("url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl LazyStore {
    /// A store for `url`, opened now if possible and otherwise on first use.
    pub fn new(url: &str) -> LazyStore {
        let inner = match store::open(url) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("store {} unavailable for now: {e}", store::redact_url(url));
                None
            }
        };
        LazyStore {
            url: url.to_string(),
            public_url: store::redact_url(url),
            inner: Mutex::new(inner),
        }
    }

    fn get_store(&self) -> Result<Arc<dyn ChunkStore>, StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = inner.as_ref() {
            return Ok(Arc::clone(s));
        }
        let s = store::open(&self.url)?;
        *inner = Some(Arc::clone(&s));
        Ok(s)
    }
}

impl ChunkStore for LazyStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_store()?.get(id)
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        self.get_store()?.put(id, data)
    }

    fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.get_store()?.has(id)
    }

    fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.get_store()?.get_many(ids)
    }

    fn get_each(&self, ids: &[ChunkId], deliver: &mut DeliverFn<'_>) -> Result<(), StoreError> {
        self.get_store()?.get_each(ids, deliver)
    }

    fn has_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        self.get_store()?.has_many(ids)
    }

    fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        self.get_store()?.put_many(items)
    }

    fn public_url(&self) -> String {
        self.public_url.clone()
    }
}

/// Stores for a mount: `overrides` when given, else the URLs recorded in the image.
pub fn open_stores(recorded: &[String], overrides: &[String]) -> Vec<Arc<dyn ChunkStore>> {
    let urls = if overrides.is_empty() {
        recorded
    } else {
        overrides
    };
    urls.iter()
        .map(|u| Arc::new(LazyStore::new(u)) as Arc<dyn ChunkStore>)
        .collect()
}
