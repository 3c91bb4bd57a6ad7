//! The small tokio runtime each S3 store owns, so that the synchronous [`crate::ChunkStore`] calls can
//! drive the async client from any thread, inside another runtime or not.

use std::future::Future;

use crate::StoreError;

/// Worker threads of the runtime (requests are I/O bound; signing is cheap).
const RUNTIME_THREADS: usize = 2;

/// An owned multi-threaded runtime, shut down without waiting when dropped.
pub(super) struct StoreRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl StoreRuntime {
    /// Starts the runtime; `name` names its threads.
    pub(super) fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(StoreRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The handle to spawn tasks with.
    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `work` on the runtime and waits for it from this (synchronous) thread; `joined` turns a
    /// task that panicked or was cancelled into an error.
    pub(super) fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
        joined: impl FnOnce(&tokio::task::JoinError) -> StoreError,
    ) -> Result<T, StoreError> {
        let task = self.handle.spawn(work);
        futures::executor::block_on(task).map_err(|e| joined(&e))?
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks; inside another runtime that panics. Shut down without waiting.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
