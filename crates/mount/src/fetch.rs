//! The fetcher: turns a [`ChunkRef`] into verified plaintext, from memory, the host cache or a store.
//!
//! - Single flight: concurrent misses on one chunk share one store request.
//! - Worker pool: store requests run on worker threads, demand reads before readahead; a reader waits at
//!   most the configured timeout, so a hung store yields `Timeout` (EIO) instead of a hung read.
//! - Retries with exponential backoff while the store errors, bounded by the timeout.
//! - Every fetched object is verified and decoded by [`image::decode_chunk`] before anyone sees it or it
//!   enters the cache.
//! - An optional token-bucket limit on fetched bytes per second (for background hydration).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select_biased, unbounded, Receiver, Sender};
use image::{ChunkRef, DecodedChunk};
use store::{ChunkId, ChunkStore};

use crate::cache::HostCache;
use crate::metrics::Metrics;

/// Why a chunk could not be produced. Cloneable: one failure is handed to every waiter of a flight.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    /// No store holds the chunk.
    #[error("chunk {0} is in no store")]
    Missing(ChunkId),
    /// The stored object failed verification or decoding.
    #[error("chunk {id} is corrupt: {reason}")]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// What did not match.
        reason: String,
    },
    /// Every store failed, retries included.
    #[error("chunk {id}: store unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// The chunk.
        id: ChunkId,
        /// How many rounds over the stores were tried.
        attempts: u32,
        /// The last store error.
        last: String,
    },
    /// No answer within the timeout.
    #[error("chunk {id}: no answer from the store within {after:?}")]
    Timeout {
        /// The chunk.
        id: ChunkId,
        /// The timeout that expired.
        after: Duration,
    },
    /// The fetcher is shutting down.
    #[error("fetcher stopped")]
    Stopped,
    /// The host cache failed to read.
    #[error("{0}")]
    Cache(String),
}

/// Settings of a [`Fetcher`].
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Worker threads issuing store requests.
    pub workers: usize,
    /// How long a read waits for a chunk (and how long a worker keeps retrying) before giving up.
    pub timeout: Duration,
    /// First retry delay; doubles per attempt.
    pub initial_backoff: Duration,
    /// Chunks per store request for readahead and hydration.
    pub batch_chunks: usize,
    /// Decoded chunks kept in memory (most recent first).
    pub memory_chunks: usize,
    /// Cap on fetched (stored) bytes per second; `None` for no cap.
    pub rate_limit: Option<u64>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            workers: 16,
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(50),
            batch_chunks: 4,
            memory_chunks: 32,
            rate_limit: None,
        }
    }
}

type FlightResult = Result<Arc<DecodedChunk>, FetchError>;

/// Bytes read from a chunk: owned, or a range of a decoded chunk shared with the fetcher's memory.
#[derive(Clone, Debug)]
pub enum ChunkBytes {
    /// Bytes of their own.
    Owned(Vec<u8>),
    /// A range of a shared decoded chunk.
    Shared(Arc<DecodedChunk>, std::ops::Range<usize>),
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Owned(v) => v,
            ChunkBytes::Shared(data, range) => data.get(range.clone()).unwrap_or_default(),
        }
    }
}

impl ChunkBytes {
    /// The bytes as an owned vector (copies shared bytes).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ChunkBytes::Owned(v) => v,
            ChunkBytes::Shared(..) => self.to_vec(),
        }
    }
}

#[derive(Default)]
struct FlightState {
    result: Option<FlightResult>,
    /// The outcome is final and, when it is a success, the chunk is in the host cache.
    settled: bool,
}

/// One in-progress fetch of one chunk; every reader that misses on the chunk waits on it.
#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
}

impl Flight {
    /// Publishes the outcome to readers (the chunk may not be cached yet).
    fn complete(&self, r: FlightResult) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.result.is_none() {
            st.result = Some(r);
        }
        self.changed.notify_all();
    }

    /// Marks the flight finished (chunk cached on success), publishing `r` if nothing was yet.
    fn settle(&self, r: FlightResult) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.result.is_none() {
            st.result = Some(r);
        }
        st.settled = true;
        self.changed.notify_all();
    }

    /// Waits for the outcome (or until it is settled, with `settled`), at most `timeout`.
    fn wait_for(&self, id: ChunkId, timeout: Duration, settled: bool) -> FlightResult {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.settled || !settled {
                if let Some(r) = st.result.as_ref() {
                    return r.clone();
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FetchError::Timeout { id, after: timeout });
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wait(&self, id: ChunkId, timeout: Duration) -> FlightResult {
        self.wait_for(id, timeout, false)
    }

    fn wait_settled(&self, id: ChunkId, timeout: Duration) -> FlightResult {
        self.wait_for(id, timeout, true)
    }
}

type FlightTable = Arc<Mutex<HashMap<ChunkId, Arc<Flight>>>>;

/// Decoded chunks handed to the cache writers and not yet written.
type PendingWrites = Arc<std::sync::atomic::AtomicUsize>;

/// Removes the flight of `id` from `flights` and settles it with `result`.
fn settle_flight(flights: &FlightTable, id: &ChunkId, result: FlightResult) {
    let flight = flights.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    if let Some(f) = flight {
        f.settle(result);
    }
}

/// Chunks waiting to be written to the host cache, at most this many (back-pressure on fetching).
const CACHE_WRITE_QUEUE: usize = 64;
/// Threads writing fetched chunks to the host cache (16 measured best on a cold read: fewer let fetched
/// chunks queue behind the writers; see docs/benchmarks.md, mount section).
const CACHE_WRITERS: usize = 16;

/// Token bucket over bytes.
struct RateLimiter {
    bytes_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Takes `bytes` tokens, sleeping as long as the bucket is in debt.
    fn acquire(&self, bytes: u64) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let burst = self.bytes_per_sec / 4.0;
            let refill = now.duration_since(st.1).as_secs_f64() * self.bytes_per_sec;
            st.0 = (st.0 + refill).min(burst) - bytes as f64;
            st.1 = now;
            if st.0 < 0.0 {
                Duration::from_secs_f64(-st.0 / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

struct Core {
    stores: Vec<Arc<dyn ChunkStore>>,
    cache: Arc<HostCache>,
    metrics: Arc<Metrics>,
    config: FetchConfig,
    flights: FlightTable,
    recent: Mutex<VecDeque<(ChunkId, Arc<DecodedChunk>)>>,
    limiter: Option<RateLimiter>,
    /// Hands decoded chunks to the cache writers, so fetch workers do not wait on the disk.
    cache_writes: Option<Sender<(ChunkRef, Arc<DecodedChunk>)>>,
    pending_writes: PendingWrites,
}

/// Produces verified plaintext chunks; see the module docs. Share with `Arc`.
pub struct Fetcher {
    core: Arc<Core>,
    demand: Sender<Vec<ChunkRef>>,
    prefetch: Sender<Vec<ChunkRef>>,
    _workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("stores", &self.core.stores.len())
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher reading from `stores` (tried in order) through `cache`, starting its worker threads.
    pub fn new(
        stores: Vec<Arc<dyn ChunkStore>>,
        cache: Arc<HostCache>,
        metrics: Arc<Metrics>,
        config: FetchConfig,
    ) -> Fetcher {
        let limiter = config.rate_limit.map(RateLimiter::new);
        let flights: FlightTable = Arc::new(Mutex::new(HashMap::new()));
        let (write_tx, write_rx) =
            crossbeam_channel::bounded::<(ChunkRef, Arc<DecodedChunk>)>(CACHE_WRITE_QUEUE);
        let pending_writes: PendingWrites = Arc::default();
        let mut writers = 0;
        for i in 0..CACHE_WRITERS {
            let (cache, flights, rx) = (Arc::clone(&cache), Arc::clone(&flights), write_rx.clone());
            let pending = Arc::clone(&pending_writes);
            let spawned = std::thread::Builder::new()
                .name(format!("cache-write-{i}"))
                .spawn(move || {
                    for (r, plain) in rx {
                        if let Err(e) = cache.insert(&r.id, &plain) {
                            tracing::warn!("cannot cache chunk {}: {e}", r.id);
                        }
                        settle_flight(&flights, &r.id, Ok(plain));
                        pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            match spawned {
                Ok(_) => writers += 1,
                Err(e) => tracing::error!("cannot start cache writer: {e}"),
            }
        }
        let core = Arc::new(Core {
            stores,
            cache,
            metrics,
            config,
            flights,
            recent: Mutex::new(VecDeque::new()),
            limiter,
            cache_writes: (writers > 0).then_some(write_tx),
            pending_writes,
        });
        let (demand_tx, demand_rx) = unbounded::<Vec<ChunkRef>>();
        let (prefetch_tx, prefetch_rx) = unbounded::<Vec<ChunkRef>>();
        let mut workers = Vec::new();
        for i in 0..core.config.workers.max(1) {
            let core = Arc::clone(&core);
            let demand_rx: Receiver<Vec<ChunkRef>> = demand_rx.clone();
            let prefetch_rx: Receiver<Vec<ChunkRef>> = prefetch_rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fetch-{i}"))
                .spawn(move || loop {
                    let job = select_biased! {
                        recv(demand_rx) -> j => j,
                        recv(prefetch_rx) -> j => j,
                    };
                    match job {
                        Ok(job) => core.run_job(&job),
                        Err(_) => return,
                    }
                });
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => tracing::error!("cannot start fetch worker: {e}"),
            }
        }
        Fetcher {
            core,
            demand: demand_tx,
            prefetch: prefetch_tx,
            _workers: workers,
        }
    }

    /// The host cache this fetcher fills.
    pub fn cache(&self) -> &Arc<HostCache> {
        &self.core.cache
    }

    /// Waits (at most `timeout`) until every fetched chunk handed to the cache writers is written.
    /// Returns whether the queue drained. Call before exiting so fetched chunks are not lost.
    pub fn flush_cache_writes(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self
                .core
                .pending_writes
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The metrics this fetcher updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    /// Reads `len` bytes at `offset` within chunk `r` (fewer at the chunk's end). Bytes of a chunk held in
    /// memory are shared, not copied.
    pub fn read(&self, r: &ChunkRef, offset: u64, len: usize) -> Result<ChunkBytes, FetchError> {
        let shared = |data: Arc<DecodedChunk>| -> ChunkBytes {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let end = start.saturating_add(len).min(data.len());
            ChunkBytes::Shared(data, start..end)
        };
        if let Some(data) = self.core.recent_get(&r.id) {
            self.core.metrics.cache_hits.inc();
            return Ok(shared(data));
        }
        match self.core.cache.read(&r.id, r.plain_len, offset, len) {
            Ok(Some(bytes)) => {
                self.core.metrics.cache_hits.inc();
                return Ok(ChunkBytes::Owned(bytes));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}; fetching chunk {} from the store", r.id),
        }
        let data = self.fetch(r)?;
        Ok(shared(data))
    }

    /// The whole plaintext of chunk `r`.
    pub fn get(&self, r: &ChunkRef) -> Result<Arc<DecodedChunk>, FetchError> {
        if let Some(data) = self.core.recent_get(&r.id) {
            self.core.metrics.cache_hits.inc();
            return Ok(data);
        }
        if let Ok(Some(bytes)) = self
            .core
            .cache
            .read(&r.id, r.plain_len, 0, r.plain_len as usize)
        {
            self.core.metrics.cache_hits.inc();
            return Ok(Arc::new(bytes.into()));
        }
        self.fetch(r)
    }

    /// Fetches `r` from a store (joining an in-flight fetch of it) and waits for the result.
    fn fetch(&self, r: &ChunkRef) -> FlightResult {
        self.core.metrics.cache_misses.inc();
        let (flight, new) = self.core.join_flight(r);
        if new && self.demand.send(vec![*r]).is_err() {
            self.core.finish_flight(&r.id, Err(FetchError::Stopped));
        }
        flight.wait(r.id, self.core.config.timeout)
    }

    /// Starts background fetches of those of `refs` that are neither cached nor in flight.
    pub fn prefetch(&self, refs: &[ChunkRef]) {
        let mut todo = Vec::new();
        for r in refs {
            if self.core.recent_has(&r.id) || self.core.cache.contains(&r.id, r.plain_len) {
                continue;
            }
            if let (_, true) = self.core.join_flight(r) {
                todo.push(*r);
            }
        }
        self.core.metrics.readahead_chunks.inc_by(todo.len() as u64);
        for batch in todo.chunks(self.core.config.batch_chunks.max(1)) {
            if self.prefetch.send(batch.to_vec()).is_err() {
                for r in batch {
                    self.core.finish_flight(&r.id, Err(FetchError::Stopped));
                }
            }
        }
    }

    /// Makes sure every chunk of `refs` is in the host cache, fetching the missing ones in this thread
    /// (in batches of `batch_chunks`). Returns one result per chunk.
    pub fn fetch_into_cache(&self, refs: &[ChunkRef]) -> Vec<Result<(), FetchError>> {
        let mut mine = Vec::new();
        let mut flights = Vec::with_capacity(refs.len());
        for r in refs {
            if self.core.cache.contains(&r.id, r.plain_len) {
                flights.push(None);
                continue;
            }
            let (flight, new) = self.core.join_flight(r);
            if new {
                mine.push(*r);
            }
            flights.push(Some(flight));
        }
        for batch in mine.chunks(self.core.config.batch_chunks.max(1)) {
            self.core.run_job(batch);
        }
        refs.iter()
            .zip(flights)
            .map(|(r, flight)| match flight {
                None => Ok(()),
                Some(f) => f.wait_settled(r.id, self.core.config.timeout).map(|_| ()),
            })
            .collect()
    }
}

impl Core {
    fn recent_get(&self, id: &ChunkId) -> Option<Arc<DecodedChunk>> {
        let recent = self.recent.lock().ok()?;
        recent
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| Arc::clone(v))
    }

    fn recent_has(&self, id: &ChunkId) -> bool {
        self.recent
            .lock()
            .map(|r| r.iter().any(|(k, _)| k == id))
            .unwrap_or(false)
    }

    fn recent_put(&self, id: ChunkId, data: Arc<DecodedChunk>) {
        if self.config.memory_chunks == 0 {
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.iter().any(|(k, _)| *k == id) {
                return;
            }
            recent.push_front((id, data));
            recent.truncate(self.config.memory_chunks);
        }
    }

    /// The flight for `r`, and whether the caller created it (and so must get it fetched).
    fn join_flight(&self, r: &ChunkRef) -> (Arc<Flight>, bool) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = flights.get(&r.id) {
            return (Arc::clone(f), false);
        }
        let f = Arc::new(Flight::default());
        flights.insert(r.id, Arc::clone(&f));
        (f, true)
    }

    fn finish_flight(&self, id: &ChunkId, result: FlightResult) {
        settle_flight(&self.flights, id, result);
    }

    fn flight(&self, id: &ChunkId) -> Option<Arc<Flight>> {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Fetches, verifies, caches and completes the flights of `job`.
    fn run_job(&self, job: &[ChunkRef]) {
        // A chunk may have reached the cache since the flight was created (another process).
        let mut pending: Vec<ChunkRef> = Vec::with_capacity(job.len());
        for r in job {
            match self.cache.read(&r.id, r.plain_len, 0, r.plain_len as usize) {
                Ok(Some(bytes)) => self.finish_flight(&r.id, Ok(Arc::new(bytes.into()))),
                _ => pending.push(*r),
            }
        }
        if pending.is_empty() {
            return;
        }
        if let Some(l) = &self.limiter {
            l.acquire(pending.iter().map(|r| r.stored_len_estimate()).sum());
        }
        let deadline = Instant::now() + self.config.timeout;
        let mut backoff = self.config.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let mut failed: Vec<ChunkRef> = Vec::new();
            let mut last_error = String::new();
            let mut missing_everywhere: Vec<ChunkRef> = pending.clone();
            for store in &self.stores {
                if missing_everywhere.is_empty() {
                    break;
                }
                let ids: Vec<ChunkId> = missing_everywhere.iter().map(|r| r.id).collect();
                let started = Instant::now();
                self.metrics.fetches_in_flight.inc();
                // Objects are verified and handed on as they stream in, from the store's reused
                // buffer; `delivered` says which arrived before any error.
                let mut delivered = vec![false; ids.len()];
                let answer = store.get_each(&ids, &mut |i, object| {
                    if let (Some(r), Some(stored)) = (missing_everywhere.get(i), object) {
                        self.accept(r, stored);
                        if let Some(d) = delivered.get_mut(i) {
                            *d = true;
                        }
                    }
                    Ok(())
                });
                self.metrics.fetches_in_flight.dec();
                self.metrics
                    .fetch_latency_seconds
                    .observe(started.elapsed().as_secs_f64());
                let undelivered = missing_everywhere
                    .iter()
                    .zip(&delivered)
                    .filter(|(_, d)| !**d)
                    .map(|(r, _)| *r);
                match answer {
                    Ok(()) => missing_everywhere = undelivered.collect(),
                    Err(e) => {
                        self.metrics.store_errors.inc();
                        last_error = format!("{}: {e}", store.public_url());
                        tracing::debug!("store request failed: {last_error}");
                        failed.extend(undelivered);
                        missing_everywhere.clear();
                    }
                }
            }
            for r in &missing_everywhere {
                self.finish_flight(&r.id, Err(FetchError::Missing(r.id)));
            }
            if failed.is_empty() {
                return;
            }
            let now = Instant::now();
            if now + backoff >= deadline {
                tracing::warn!(
                    "giving up on {} chunk(s) after {attempts} attempts: {last_error}",
                    failed.len()
                );
                for r in &failed {
                    self.finish_flight(
                        &r.id,
                        Err(FetchError::Unavailable {
                            id: r.id,
                            attempts,
                            last: last_error.clone(),
                        }),
                    );
                }
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
            pending = failed;
        }
    }

    /// Verifies and decodes one fetched object, publishes it to its waiters, then caches it.
    fn accept(&self, r: &ChunkRef, stored: &[u8]) {
        self.metrics.bytes_fetched.inc_by(stored.len() as u64);
        match image::decode_chunk(r, stored) {
            Ok(plain) => {
                self.metrics.chunks_fetched.inc();
                let plain = Arc::new(plain);
                // Waiters get the bytes now; the flight stays registered until the cache has them so a
                // late reader joins it instead of fetching again.
                if let Some(f) = self.flight(&r.id) {
                    f.complete(Ok(Arc::clone(&plain)));
                }
                self.recent_put(r.id, Arc::clone(&plain));
                self.pending_writes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let queued = self
                    .cache_writes
                    .as_ref()
                    .is_some_and(|w| w.send((*r, Arc::clone(&plain))).is_ok());
                if !queued {
                    self.pending_writes
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
                if !queued {
                    if let Err(e) = self.cache.insert(&r.id, &plain) {
                        tracing::warn!("cannot cache chunk {}: {e}", r.id);
                    }
                    self.finish_flight(&r.id, Ok(plain));
                }
            }
            Err(e) => {
                self.metrics.corrupt_chunks.inc();
                tracing::error!("chunk {} from the store failed verification: {e}", r.id);
                self.finish_flight(
                    &r.id,
                    Err(FetchError::Corrupt {
                        id: r.id,
                        reason: e.to_string(),
                    }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use store::StoreError;

    /// An in-memory store that counts requests, can fail its first `fail_first` requests, and can
    /// delay every answer.
    #[derive(Default)]
    struct TestStore {
        objects: Mutex<HashMap<ChunkId, Vec<u8>>>,
        requests: AtomicU32,
        fail_first: u32,
        delay: Duration,
    }

    impl ChunkStore for TestStore {
        fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
            let n = self.requests.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            if n < self.fail_first {
                return Err(StoreError::InvalidId("simulated outage".into()));
            }
            Ok(self.objects.lock().expect("lock").get(id).cloned())
        }
        fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
            self.objects
                .lock()
                .expect("lock")
                .insert(*id, data.to_vec());
            Ok(())
        }
        fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
            Ok(self.objects.lock().expect("lock").contains_key(id))
        }
        fn public_url(&self) -> String {
            "test://".into()
        }
    }

    fn chunk(seed: u8) -> (ChunkRef, Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i as u8) ^ seed).collect();
        let enc = image::encode_chunk(&plain, 1).expect("encode");
        (enc.chunk_ref, enc.stored, plain)
    }

    fn fetcher(store: Arc<TestStore>, dir: &std::path::Path, timeout: Duration) -> Fetcher {
        let cache = HostCache::open(&CacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 30,
            durable: false,
        })
        .expect("cache");
        Fetcher::new(
            vec![store as Arc<dyn ChunkStore>],
            cache,
            Arc::new(Metrics::new()),
            FetchConfig {
                timeout,
                initial_backoff: Duration::from_millis(10),
                memory_chunks: 0,
                ..FetchConfig::default()
            },
        )
    }

    #[test]
    fn concurrent_misses_fetch_once_then_cache_serves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore {
            delay: Duration::from_millis(200),
            ..Default::default()
        });
        let (r, stored, plain) = chunk(1);
        store.put(&r.id, &stored).expect("put");
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_secs(10));
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let (f, r, plain) = (&f, &r, &plain);
                s.spawn(move || {
                    let got = f.read(r, i * 1000, 500).expect("read");
                    assert_eq!(
                        &*got,
                        &plain[(i * 1000) as usize..(i * 1000 + 500) as usize]
                    );
                });
            }
        });
        assert_eq!(store.requests.load(Ordering::SeqCst), 1);
        assert_eq!(f.metrics().chunks_fetched.get(), 1);
        // The cache now answers without the store.
        assert_eq!(&*f.read(&r, 99_990, 100).expect("read"), &plain[99_990..]);
        assert_eq!(store.requests.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn store_errors_are_retried_until_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore {
            fail_first: 3,
            ..Default::default()
        });
        let (r, stored, plain) = chunk(2);
        store.put(&r.id, &stored).expect("put");
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_secs(10));
        assert_eq!(*f.get(&r).expect("get after retries"), plain);
        assert_eq!(store.requests.load(Ordering::SeqCst), 4);
        assert_eq!(f.metrics().store_errors.get(), 3);
    }

    #[test]
    fn persistent_outage_fails_within_the_timeout_then_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore {
            fail_first: u32::MAX,
            ..Default::default()
        });
        let (r, stored, _) = chunk(3);
        store.put(&r.id, &stored).expect("put");
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_millis(300));
        let err = f.get(&r).expect_err("outage");
        assert!(
            matches!(
                err,
                FetchError::Unavailable { .. } | FetchError::Timeout { .. }
            ),
            "{err}"
        );
        // A failed flight is forgotten: the next read asks the store again.
        let before = store.requests.load(Ordering::SeqCst);
        let _ = f.get(&r);
        assert!(store.requests.load(Ordering::SeqCst) > before);
    }

    #[test]
    fn hung_store_gives_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore {
            delay: Duration::from_secs(2),
            ..Default::default()
        });
        let (r, stored, _) = chunk(4);
        store.put(&r.id, &stored).expect("put");
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_millis(200));
        let err = f.get(&r).expect_err("hung store");
        assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    }

    #[test]
    fn corrupt_and_missing_objects_are_errors_never_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore::default());
        let (r, mut stored, _) = chunk(5);
        stored[7] ^= 1;
        store.put(&r.id, &stored).expect("put");
        let (missing, _, _) = chunk(6);
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_secs(5));
        assert!(matches!(f.get(&r), Err(FetchError::Corrupt { .. })));
        assert!(
            !f.cache().contains(&r.id, r.plain_len),
            "corrupt data must not be cached"
        );
        assert!(matches!(f.get(&missing), Err(FetchError::Missing(_))));
        assert_eq!(f.metrics().corrupt_chunks.get(), 1);
    }

    #[test]
    fn prefetch_and_fetch_into_cache_fill_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore::default());
        let chunks: Vec<_> = (10..20).map(chunk).collect();
        for (r, stored, _) in &chunks {
            store.put(&r.id, stored).expect("put");
        }
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_secs(5));
        let refs: Vec<ChunkRef> = chunks.iter().map(|c| c.0).collect();
        f.prefetch(&refs[..5]);
        let results = f.fetch_into_cache(&refs);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for (r, _, plain) in &chunks {
            assert!(f.cache().contains(&r.id, r.plain_len));
            assert_eq!(&*f.get(r).expect("get"), plain);
        }
        assert_eq!(
            store.requests.load(Ordering::SeqCst),
            10,
            "each chunk fetched once"
        );
    }

    #[test]
    fn rate_limiter_paces_bytes() {
        let limiter = RateLimiter::new(1_000_000);
        let start = Instant::now();
        for _ in 0..6 {
            limiter.acquire(100_000);
        }
        // 600 kB at 1 MB/s with a 250 kB burst takes at least ~0.35 s.
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
}
