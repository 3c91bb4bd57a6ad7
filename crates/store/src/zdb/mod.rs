//! A blocking client for 0-db (and our compatible server) and the `zdb://` chunk store built on it.
//!
//! [`ZdbClient`] pools connections ([`Connection`]), authenticates (`AUTH`, `SELECT ns pwd`, or the
//! `AUTH SECURE CHALLENGE` / `SECURE sha1` exchange), pipelines commands, batches MGET, applies
//! connect/read timeouts and retries transient connection failures with backoff. RESP framing uses the
//! `redis-protocol` crate.

mod client;
mod config;
mod connection;
mod reply;
mod store;

pub use client::ZdbClient;
pub use config::{
    Endpoint, ZdbConfig, DEFAULT_NAMESPACE, DEFAULT_PORT, MAX_KEY_LEN, MAX_MGET_KEYS, MAX_PAYLOAD,
};
pub use connection::{secure_hash, ArrayStart, Connection};
pub use reply::Reply;
pub use store::ZdbStore;
