//! The read-only `http://` / `https://` store: objects fetched with plain GETs from a base URL in the
//! `dir://` layout (`BASE/ab/abcdef…`), so any web server or CDN serving a dir store's directory (or
//! `thinnode serve-store`) serves an image. Syntax in docs/stores.md.

use std::io;
use std::time::Duration;

use url::Url;

use crate::{ChunkId, ChunkStore, DeliverFn, StoreError};

/// The largest object an HTTP store accepts in a response (chunks are at most a few MiB).
const MAX_OBJECT_BYTES: u64 = 64 << 20;
/// How many ids [`HttpStore::get_each`] fetches per batch before delivering them.
const DELIVER_BATCH: usize = 64;

/// A read-only [`ChunkStore`] over HTTP(S).
pub struct HttpStore {
    agent: ureq::Agent,
    /// The base URL without our options, ending in `/`.
    base: Url,
    /// Requests in flight at once in batch reads.
    parallel: usize,
    timeout: Duration,
    /// Extra attempts after a transport failure (a pooled connection the server closed, a reset).
    retries: u32,
}

impl HttpStore {
    /// Opens a store from `http(s)://host[:port]/base/path[?timeout_ms=N&parallel=N]`. No request is made
    /// here.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: crate::redact_url(url),
            reason,
        };
        let mut base = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(invalid("expected http(s)://host/path".into()));
        }
        let mut timeout = Duration::from_secs(30);
        let mut parallel = 8usize;
        let mut retries = 2u32;
        let mut kept: Vec<(String, String)> = Vec::new();
        for (key, value) in base.query_pairs() {
            match key.as_ref() {
                "timeout_ms" => {
                    let ms: u64 = value.parse().ok().filter(|&ms| ms > 0).ok_or_else(|| {
                        invalid(format!("timeout_ms={value:?} is not a positive number"))
                    })?;
                    timeout = Duration::from_millis(ms);
                }
                "parallel" => {
                    parallel = value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        invalid(format!("parallel={value:?} is not a positive number"))
                    })?;
                }
                "retries" => {
                    retries = value
                        .parse()
                        .map_err(|_| invalid(format!("retries={value:?} is not a number")))?;
                }
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        if kept.is_empty() {
            base.set_query(None);
        } else {
            base.query_pairs_mut().clear().extend_pairs(kept);
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .max_idle_connections_per_host(parallel.max(4))
            .build();
        Ok(HttpStore {
            agent: config.into(),
            base,
            parallel,
            timeout,
            retries,
        })
    }

    /// The URL of object `id`: `BASE/ab/<64 hex digits>` (the `dir://` layout).
    pub fn object_url(&self, id: &ChunkId) -> String {
        let hex = id.to_hex();
        let mut url = self.base.clone();
        let path = format!(
            "{}{}/{}",
            self.base.path(),
            hex.get(..2).unwrap_or_default(),
            hex
        );
        url.set_path(&path);
        url.to_string()
    }

    fn endpoint(&self) -> String {
        self.base
            .host_str()
            .map_or_else(String::new, |h| match self.base.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
    }

    fn transport_error(&self, error: ureq::Error) -> StoreError {
        let endpoint = self.endpoint();
        match error {
            ureq::Error::Timeout(_) => StoreError::Timeout {
                endpoint,
                operation: "answer",
                timeout_ms: self.timeout.as_millis(),
            },
            ureq::Error::Io(source) => StoreError::Connection { endpoint, source },
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => StoreError::Connection {
                endpoint,
                source: io::Error::new(io::ErrorKind::ConnectionRefused, error.to_string()),
            },
            other => StoreError::Protocol {
                endpoint,
                reason: other.to_string(),
            },
        }
    }

    fn status_error(&self, status: u16, id: &ChunkId) -> StoreError {
        StoreError::Server {
            message: format!("HTTP {status} for chunk {id} from {}", self.endpoint()),
        }
    }

    /// Runs `attempt`, retrying transient (transport) failures up to `retries` times.
    fn with_retries<T>(
        &self,
        attempt: impl Fn() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            match attempt() {
                Err(e) if e.is_transient() && tries < self.retries => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20 << tries));
                }
                other => return other,
            }
        }
    }

    fn fetch(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_retries(|| self.fetch_once(id))
    }

    fn fetch_once(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut response = self
            .agent
            .get(&self.object_url(id))
            .call()
            .map_err(|e| self.transport_error(e))?;
        match response.status().as_u16() {
            200 => response
                .body_mut()
                .with_config()
                .limit(MAX_OBJECT_BYTES)
                .read_to_vec()
                .map(Some)
                .map_err(|e| self.transport_error(e)),
            404 | 410 => Ok(None),
            status => Err(self.status_error(status, id)),
        }
    }

    fn exists(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.with_retries(|| self.exists_once(id))
    }

    fn exists_once(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let response = self
            .agent
            .head(&self.object_url(id))
            .call()
            .map_err(|e| self.transport_error(e))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 | 410 => Ok(false),
            status => Err(self.status_error(status, id)),
        }
    }

    /// Runs `one` for every id with up to `parallel` requests in flight, keeping the order of `ids`.
    fn parallel_map<T: Send>(
        &self,
        ids: &[ChunkId],
        one: impl Fn(&ChunkId) -> Result<T, StoreError> + Sync,
    ) -> Result<Vec<T>, StoreError> {
        if ids.len() <= 1 || self.parallel <= 1 {
            return ids.iter().map(&one).collect();
        }
        let per_thread = ids.len().div_ceil(self.parallel);
        std::thread::scope(|scope| {
            let handles: Vec<_> = ids
                .chunks(per_thread)
                .map(|part| {
                    let one = &one;
                    scope.spawn(move || part.iter().map(one).collect::<Result<Vec<T>, _>>())
                })
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for h in handles {
                let part = h.join().map_err(|_| StoreError::Protocol {
                    endpoint: self.endpoint(),
                    reason: "a fetch thread panicked".into(),
                })??;
                out.extend(part);
            }
            Ok(out)
        })
    }
}

impl ChunkStore for HttpStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.fetch(id)
    }

    fn put(&self, _id: &ChunkId, _data: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly {
            url: self.public_url(),
        })
    }

    fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.exists(id)
    }

    fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.parallel_map(ids, |id| self.fetch(id))
    }

    fn get_each(&self, ids: &[ChunkId], deliver: &mut DeliverFn<'_>) -> Result<(), StoreError> {
        for (batch_number, batch) in ids.chunks(DELIVER_BATCH).enumerate() {
            let base = batch_number * DELIVER_BATCH;
            for (offset, value) in self.get_many(batch)?.into_iter().enumerate() {
                deliver(base + offset, value.as_deref())?;
            }
        }
        Ok(())
    }

    fn has_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        self.parallel_map(ids, |id| self.exists(id))
    }

    fn put_many(&self, _items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly {
            url: self.public_url(),
        })
    }

    fn public_url(&self) -> String {
        let mut url = self.base.clone();
        let _ = url.set_password(None);
        let _ = url.set_username("");
        url.to_string()
    }
}
