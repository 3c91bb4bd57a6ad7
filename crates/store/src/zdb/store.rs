//! The `zdb://` chunk store: chunk objects in a 0-db namespace (user mode), keyed by the raw 32-byte id.

use super::client::ZdbClient;
use super::config::ZdbConfig;
use crate::{ChunkId, ChunkStore, DeliverFn, StoreError};

/// A [`ChunkStore`] backed by a 0-db namespace. Objects are stored under the raw 32-byte chunk id, as
/// threefoldtech/rfs does, so the namespace must be in user (or mixed) mode.
pub struct ZdbStore {
    client: ZdbClient,
}

impl ZdbStore {
    /// Connects (dialling one connection to check address and credentials) and returns the store.
    pub fn connect(config: ZdbConfig) -> Result<Self, StoreError> {
        Ok(ZdbStore {
            client: ZdbClient::connect(config)?,
        })
    }

    /// A store that dials on first use.
    pub fn new(config: ZdbConfig) -> Self {
        ZdbStore {
            client: ZdbClient::new(config),
        }
    }

    /// The underlying client (for namespace administration and diagnostics).
    pub fn client(&self) -> &ZdbClient {
        &self.client
    }
}

impl ChunkStore for ZdbStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.client.get(&id.0)
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        self.client.set(&id.0, data)
    }

    fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.client.exists(&id.0)
    }

    fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.0.as_slice()).collect();
        self.client.get_pipelined(&keys)
    }

    fn get_each(&self, ids: &[ChunkId], deliver: &mut DeliverFn<'_>) -> Result<(), StoreError> {
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.0.as_slice()).collect();
        self.client.get_each(&keys, deliver)
    }

    fn has_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<&[u8]> = ids.iter().map(|id| id.0.as_slice()).collect();
        self.client.exists_many(&keys)
    }

    fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        let pairs: Vec<(&[u8], &[u8])> = items
            .iter()
            .map(|(id, data)| (id.0.as_slice(), *data))
            .collect();
        self.client.set_many(&pairs)
    }

    fn public_url(&self) -> String {
        self.client.config().public_url()
    }
}
