//! The requests of one object (GET, HEAD, PUT) and the bucket check, as async tasks on the store's
//! runtime.

use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::time::Duration;

use super::errors::{error_chain_text, s3_error_code, BAD_CREDENTIAL_CODES};
use crate::{ChunkId, StoreError};

/// A key under the prefix that is never written: listing it tells whether the bucket exists.
const BUCKET_PROBE: &str = ".thinnode-bucket-probe/";

/// What every request task shares: the client and what error messages need.
pub(super) struct Shared {
    pub(super) client: AmazonS3,
    pub(super) bucket: String,
    pub(super) prefix: String,
    /// The endpoint as shown in messages (no credentials).
    pub(super) endpoint: String,
    pub(super) timeout: Duration,
    /// Credentials to scrub from any text that reaches an error message.
    pub(super) secrets: Vec<String>,
    /// Requests are unsigned (no credentials were found, or `anonymous=true`).
    pub(super) anonymous: bool,
    /// Set once the bucket is known to exist (a 404 can then only mean a missing object).
    pub(super) bucket_exists: tokio::sync::OnceCell<()>,
}

impl Shared {
    fn key(&self, id: &ChunkId) -> String {
        if self.prefix.is_empty() {
            id.to_hex()
        } else {
            format!("{}/{}", self.prefix, id.to_hex())
        }
    }

    fn path(&self, id: &ChunkId) -> ObjectPath {
        ObjectPath::from(self.key(id))
    }

    /// Confirms (once per store) that the bucket exists by listing a key range that is never written:
    /// an existing bucket answers with an empty list. A refusal for lack of the list permission is
    /// not an error here (reads may still be allowed); rejected credentials are.
    pub(super) async fn ensure_bucket(&self) -> Result<(), StoreError> {
        self.bucket_exists
            .get_or_try_init(|| async {
                let probe = if self.prefix.is_empty() {
                    ObjectPath::from(BUCKET_PROBE)
                } else {
                    ObjectPath::from(format!("{}/{BUCKET_PROBE}", self.prefix))
                };
                match self.client.list_with_delimiter(Some(&probe)).await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let not_found = matches!(e, object_store::Error::NotFound { .. });
                        let code = s3_error_code(&error_chain_text(&e)).map(str::to_string);
                        let credentials_rejected = code
                            .as_deref()
                            .is_some_and(|c| BAD_CREDENTIAL_CODES.contains(&c));
                        match self.error("list", e) {
                            StoreError::AccessDenied { .. } if !credentials_rejected => Ok(()),
                            // Some engines answer a LIST of a missing bucket with a bare 404.
                            _ if not_found => Err(self.bucket_missing()),
                            other => Err(other),
                        }
                    }
                }
            })
            .await
            .map(|_| ())
    }

    pub(super) async fn get(&self, id: ChunkId) -> Result<Option<Bytes>, StoreError> {
        match self.client.get(&self.path(&id)).await {
            Ok(found) => found
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.error("read", e)),
            Err(e @ object_store::Error::NotFound { .. }) => {
                if let StoreError::BucketMissing { .. } = self.error("read", e) {
                    return Err(self.bucket_missing());
                }
                self.ensure_bucket().await?;
                Ok(None)
            }
            Err(e) => Err(self.error("read", e)),
        }
    }

    pub(super) async fn has(&self, id: ChunkId) -> Result<bool, StoreError> {
        match self.client.head(&self.path(&id)).await {
            Ok(_) => Ok(true),
            // HEAD answers carry no body: a 404 may also mean the bucket is missing.
            Err(object_store::Error::NotFound { .. }) => {
                self.ensure_bucket().await?;
                Ok(false)
            }
            Err(e) => Err(self.error("existence check", e)),
        }
    }

    pub(super) async fn put(&self, id: ChunkId, data: Bytes) -> Result<(), StoreError> {
        self.client
            .put(&self.path(&id), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.error("write", e))
    }
}
