//! The `s3://` store: objects in an S3 bucket (AWS or any S3 engine such as SeaweedFS, MinIO, Ceph RGW),
//! named by the chunk id's 64 hex digits under an optional key prefix. Built on the `object_store` crate
//! (SigV4, retries with backoff) driven by a small tokio runtime the store owns, behind the synchronous
//! [`ChunkStore`] API; batch calls keep many requests in flight. Syntax in docs/stores.md.

mod config;
mod errors;
mod requests;
mod runtime;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::{ChunkId, ChunkStore, DeliverFn, StoreError};
pub(crate) use config::SECRET_OPTIONS;
use config::{build_client, public_url_of, Resolved};
pub use config::{S3Config, DEFAULT_PARALLEL, DEFAULT_REGION};
use requests::Shared;
use runtime::StoreRuntime;

/// A [`ChunkStore`] in an S3 bucket.
pub struct S3Store {
    shared: Arc<Shared>,
    runtime: StoreRuntime,
    public_url: String,
    parallel: usize,
}

impl S3Store {
    /// A store for `config`, consulting the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_DEFAULT_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`) for what the URL leaves out. No request is made.
    pub fn new(config: S3Config) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: public_url_of(&config, None),
            reason,
        };
        let resolved = Resolved::from(&config).map_err(invalid)?;
        let public_url = public_url_of(&config, Some(&resolved));
        let endpoint_shown = resolved
            .bucket_endpoint(&config.bucket)
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", resolved.region));
        let (client, secrets) = build_client(&config, &resolved).map_err(invalid)?;
        let runtime = StoreRuntime::start("s3-store").map_err(|source| StoreError::Io {
            operation: "start the S3 runtime for",
            path: public_url.clone(),
            source,
        })?;
        Ok(S3Store {
            shared: Arc::new(Shared {
                client,
                bucket: config.bucket.clone(),
                prefix: config.prefix.clone(),
                endpoint: endpoint_shown,
                timeout: config.timeout,
                secrets,
                anonymous: resolved.anonymous,
                bucket_exists: tokio::sync::OnceCell::new(),
            }),
            runtime,
            public_url,
            parallel: config.parallel,
        })
    }

    /// Like [`S3Store::new`], then checks that the endpoint answers, the bucket exists and the
    /// credentials are accepted (one LIST request), so such mistakes fail here with a clear error.
    pub fn connect(config: S3Config) -> Result<Self, StoreError> {
        let store = S3Store::new(config)?;
        let shared = Arc::clone(&store.shared);
        store.run(async move { shared.ensure_bucket().await })?;
        Ok(store)
    }

    /// Runs `work` on the store's runtime and waits for it from this (synchronous) thread.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.runtime.run(work, |e| self.shared.task_failed(e))
    }

    /// Runs `one` for every id with up to `parallel` requests in flight; results in the order of `ids`.
    fn run_many<T, F, Fut>(&self, ids: &[ChunkId], one: F) -> Result<Vec<T>, StoreError>
    where
        T: Send + 'static,
        F: Fn(Arc<Shared>, ChunkId) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let ids = ids.to_vec();
        let shared = Arc::clone(&self.shared);
        let parallel = self.parallel;
        self.run(async move {
            stream::iter(ids)
                .map(|id| tokio::spawn(one(Arc::clone(&shared), id)))
                .buffered(parallel)
                .map(|joined| joined.map_err(|e| shared.task_failed(&e))?)
                .try_collect()
                .await
        })
    }
}

impl ChunkStore for S3Store {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let id = *id;
        self.run(async move { shared.get(id).await })
            .map(|found| found.map(Vec::from))
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let id = *id;
        let data = Bytes::copy_from_slice(data);
        self.run(async move { shared.put(id, data).await })
    }

    fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let shared = Arc::clone(&self.shared);
        let id = *id;
        self.run(async move { shared.has(id).await })
    }

    fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let found = self.run_many(ids, |shared, id| async move { shared.get(id).await })?;
        Ok(found
            .into_iter()
            .map(|value| value.map(Vec::from))
            .collect())
    }

    fn get_each(&self, ids: &[ChunkId], deliver: &mut DeliverFn<'_>) -> Result<(), StoreError> {
        // A producer on the runtime keeps `parallel` GETs in flight and hands the results over in
        // order through a bounded channel; this thread delivers them as they come.
        let (sender, mut receiver) = tokio::sync::mpsc::channel(self.parallel);
        let shared = Arc::clone(&self.shared);
        let parallel = self.parallel;
        let ids_owned = ids.to_vec();
        let producer = self.runtime.handle().spawn(async move {
            let mut results = stream::iter(ids_owned)
                .map(|id| {
                    tokio::spawn({
                        let shared = Arc::clone(&shared);
                        async move { shared.get(id).await }
                    })
                })
                .buffered(parallel);
            while let Some(joined) = results.next().await {
                let result = joined.map_err(|e| shared.task_failed(&e)).and_then(|r| r);
                let failed = result.is_err();
                if sender.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        let mut delivered = 0;
        let outcome = loop {
            match futures::executor::block_on(receiver.recv()) {
                Some(Ok(value)) => {
                    if let Err(e) = deliver(delivered, value.as_deref()) {
                        break Err(e);
                    }
                    delivered += 1;
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        drop(receiver);
        if outcome.is_ok() && delivered != ids.len() {
            return Err(StoreError::Protocol {
                endpoint: self.shared.endpoint.clone(),
                reason: format!(
                    "the S3 fetch stopped after {delivered} of {} objects",
                    ids.len()
                ),
            });
        }
        if outcome.is_err() {
            producer.abort();
        }
        outcome
    }

    fn has_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        self.run_many(ids, |shared, id| async move { shared.has(id).await })
    }

    fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        let owned: Vec<(ChunkId, Bytes)> = items
            .iter()
            .map(|(id, data)| (*id, Bytes::copy_from_slice(data)))
            .collect();
        let shared = Arc::clone(&self.shared);
        let parallel = self.parallel;
        self.run(async move {
            stream::iter(owned)
                .map(|(id, data)| {
                    tokio::spawn({
                        let shared = Arc::clone(&shared);
                        async move { shared.put(id, data).await }
                    })
                })
                .buffer_unordered(parallel)
                .map(|joined| joined.map_err(|e| shared.task_failed(&e))?)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
        })
    }

    fn public_url(&self) -> String {
        self.public_url.clone()
    }
}
