//! The fetcher: turns a [`ChunkRef`] into verified plaintext and stores it in the host-cache files that
//! want it.
//!
//! - Single flight: concurrent misses on one chunk (from any file) share one store request; every
//!   cache file waiting for the chunk ([`Dest`]) gets it written, the first by a write and the others
//!   by a reflink of the first where the filesystem has them.
//! - Local copies first: a chunk that another host-cache file holds (the host-wide chunk index says
//!   where) is read from there, checked against its key and copied, instead of fetched.
//! - Worker pool: store requests run on worker threads, demand reads before readahead; a reader waits at
//!   most the configured timeout, so a hung store yields `Timeout` (EIO) instead of a hung read.
//! - Retries with exponential backoff while the store errors, bounded by the timeout.
//! - Every fetched object is verified and decoded by [`image::decode_chunk`] before anyone sees it or it
//!   enters the cache.
//! - An optional token-bucket limit on fetched bytes per second (for background hydration).
//!
//! Readers get the decoded chunk as soon as it is verified; the cache writes follow on the worker
//! thread, and the flight stays registered until they are done, so a reader arriving meanwhile joins
//! it instead of fetching again. No decoded chunk is kept once its flight is over: the cache file is
//! the buffer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select_biased, unbounded, Receiver, Sender};
use image::{ChunkRef, DecodedChunk};
use parking_lot::{Condvar, Mutex};
use store::{ChunkId, ChunkStore};

use crate::cache::HostCache;
use crate::cache_file::{CacheFile, Filled};
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
            rate_limit: None,
        }
    }
}

/// Where a chunk goes: chunk `index` of the host-cache file `file`.
#[derive(Clone, Debug)]
pub struct Dest {
    /// The cache file.
    pub file: Arc<CacheFile>,
    /// The chunk's index in it.
    pub index: u64,
}

type FlightResult = Result<Arc<DecodedChunk>, FetchError>;

/// Bytes read from a chunk: owned, or a range of a decoded chunk shared with a flight.
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
    /// The outcome is final and, when it is a success, every destination was written.
    settled: bool,
    /// Cache files waiting for the chunk.
    dests: Vec<Dest>,
    /// The worker took `dests`: later joiners write their destination themselves.
    dests_taken: bool,
}

/// One in-progress fetch of one chunk; every reader that misses on the chunk waits on it.
#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
}

impl Flight {
    /// Publishes the outcome to readers (the cache files may not be written yet).
    fn complete(&self, r: FlightResult) {
        let mut st = self.state.lock();
        if st.result.is_none() {
            st.result = Some(r);
        }
        self.changed.notify_all();
    }

    /// Marks the flight finished, publishing `r` if nothing was yet.
    fn settle(&self, r: FlightResult) {
        let mut st = self.state.lock();
        if st.result.is_none() {
            st.result = Some(r);
        }
        st.settled = true;
        st.dests_taken = true;
        self.changed.notify_all();
    }

    /// The destinations to write, once (later joiners write their own).
    fn take_dests(&self) -> Vec<Dest> {
        let mut st = self.state.lock();
        st.dests_taken = true;
        std::mem::take(&mut st.dests)
    }

    /// Waits for the outcome (or until it is settled, with `settled`), at most `timeout`.
    fn wait_for(&self, id: ChunkId, timeout: Duration, settled: bool) -> FlightResult {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        loop {
            if st.settled || !settled {
                if let Some(r) = st.result.as_ref() {
                    return r.clone();
                }
            }
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                if st.settled || !settled {
                    if let Some(r) = st.result.as_ref() {
                        return r.clone();
                    }
                }
                return Err(FetchError::Timeout { id, after: timeout });
            }
        }
    }
}

/// How a caller joined a flight.
struct Joined {
    flight: Arc<Flight>,
    /// The caller created the flight and must get it fetched.
    new: bool,
    /// The caller's destination, when the flight's writes were already handed out: the caller writes
    /// it from the result.
    late: Option<Dest>,
}

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
            let mut st = self.state.lock();
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
    flights: Mutex<HashMap<ChunkId, Arc<Flight>>>,
    limiter: Option<RateLimiter>,
    /// Chunks delivered whose cache writes are not done yet.
    writing: AtomicUsize,
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
    /// A fetcher reading from `stores` (tried in order) into `cache`, starting its worker threads.
    pub fn new(
        stores: Vec<Arc<dyn ChunkStore>>,
        cache: Arc<HostCache>,
        metrics: Arc<Metrics>,
        config: FetchConfig,
    ) -> Fetcher {
        let limiter = config.rate_limit.map(RateLimiter::new);
        let core = Arc::new(Core {
            stores,
            cache,
            metrics,
            config,
            flights: Mutex::new(HashMap::new()),
            limiter,
            writing: AtomicUsize::new(0),
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

    /// The metrics this fetcher updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    /// Waits (at most `timeout`) until every delivered chunk is written to its cache files. Returns
    /// whether they all were. Call before exiting so fetched chunks are not lost.
    pub fn flush_cache_writes(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.core.writing.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The whole verified plaintext of chunk `r`, fetched from a store (or copied from another cache
    /// file), and written into `dest` on the way when given. The caller found it missing from `dest`.
    pub fn get(&self, r: &ChunkRef, dest: Option<Dest>) -> FlightResult {
        self.core.metrics.cache_misses.inc();
        let joined = self.core.join_flight(r, dest);
        if joined.new && self.demand.send(vec![*r]).is_err() {
            self.core.finish_flight(&r.id, Err(FetchError::Stopped));
        }
        let result = joined
            .flight
            .wait_for(r.id, self.core.config.timeout, false);
        if let (Ok(plain), Some(late)) = (&result, joined.late) {
            self.core.write_late(r, plain, late);
        }
        result
    }

    /// Starts background fetches of those `items` whose destination lacks them and that are not in
    /// flight yet.
    pub fn prefetch(&self, items: &[(ChunkRef, Dest)]) {
        let mut todo = Vec::new();
        for (r, dest) in items {
            if dest.file.has(dest.index) {
                continue;
            }
            let joined = self.core.join_flight(r, Some(dest.clone()));
            if joined.new {
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

    /// Makes sure every chunk of `items` is in its destination, fetching the missing ones in this
    /// thread (in batches of `batch_chunks`). Returns one result per item.
    pub fn fill(&self, items: &[(ChunkRef, Dest)]) -> Vec<Result<(), FetchError>> {
        let mut mine = Vec::new();
        let mut joined = Vec::with_capacity(items.len());
        for (r, dest) in items {
            if dest.file.has(dest.index) {
                joined.push(None);
                continue;
            }
            let j = self.core.join_flight(r, Some(dest.clone()));
            if j.new {
                mine.push(*r);
            }
            joined.push(Some(j));
        }
        for batch in mine.chunks(self.core.config.batch_chunks.max(1)) {
            self.core.run_job(batch);
        }
        items
            .iter()
            .zip(joined)
            .map(|((r, _), j)| {
                let Some(j) = j else { return Ok(()) };
                let result = j.flight.wait_for(r.id, self.core.config.timeout, true);
                if let (Ok(plain), Some(late)) = (&result, j.late) {
                    self.core.write_late(r, plain, late);
                }
                result.map(|_| ())
            })
            .collect()
    }
}

impl Core {
    /// The flight for `r` (created when there is none), with `dest` added to its destinations.
    fn join_flight(&self, r: &ChunkRef, dest: Option<Dest>) -> Joined {
        let mut flights = self.flights.lock();
        if let Some(f) = flights.get(&r.id) {
            let flight = Arc::clone(f);
            drop(flights);
            let mut late = None;
            if let Some(d) = dest {
                let mut st = flight.state.lock();
                if st.dests_taken {
                    late = Some(d);
                } else {
                    st.dests.push(d);
                }
            }
            return Joined {
                flight,
                new: false,
                late,
            };
        }
        let flight = Arc::new(Flight::default());
        if let Some(d) = dest {
            flight.state.lock().dests.push(d);
        }
        flights.insert(r.id, Arc::clone(&flight));
        Joined {
            flight,
            new: true,
            late: None,
        }
    }

    fn finish_flight(&self, id: &ChunkId, result: FlightResult) {
        let flight = self.flights.lock().remove(id);
        if let Some(f) = flight {
            f.settle(result);
        }
    }

    fn flight(&self, id: &ChunkId) -> Option<Arc<Flight>> {
        self.flights.lock().get(id).cloned()
    }

    /// Hands verified plaintext `plain` of `r` to its waiters, writes it into every destination, then
    /// ends the flight. `source` is a cache file already holding it (a local copy), if any.
    fn deliver(
        &self,
        r: &ChunkRef,
        plain: Arc<DecodedChunk>,
        source: Option<(Arc<CacheFile>, u64)>,
    ) {
        let Some(flight) = self.flight(&r.id) else {
            return;
        };
        self.writing.fetch_add(1, Ordering::SeqCst);
        flight.complete(Ok(Arc::clone(&plain)));
        let dests = flight.take_dests();
        self.write_dests(r, &plain, dests, source);
        self.finish_flight(&r.id, Ok(plain));
        self.writing.fetch_sub(1, Ordering::SeqCst);
    }

    /// Writes verified `plain` of `r` into `dests`: reflinked from `source` (or from the first
    /// destination written) where the filesystem can, else written.
    fn write_dests(
        &self,
        r: &ChunkRef,
        plain: &[u8],
        dests: Vec<Dest>,
        mut source: Option<(Arc<CacheFile>, u64)>,
    ) {
        for d in dests {
            let cloned = match &source {
                Some((src, si)) if !Arc::ptr_eq(src, &d.file) => {
                    d.file.reflink_from(d.index, src, *si).unwrap_or_else(|e| {
                        tracing::debug!("reflink into {}: {e}", d.file.data_path().display());
                        None
                    })
                }
                _ => None,
            };
            let outcome = match cloned {
                Some(filled) => Ok(filled),
                None => d.file.fill(d.index, plain),
            };
            match outcome {
                Ok(Filled::AlreadyPresent) => {}
                Ok(filled) => {
                    let new_bytes = if cloned.is_some() {
                        0
                    } else {
                        plain.len() as u64
                    };
                    self.cache.stored(r, &d.file, d.index, new_bytes);
                    if filled == Filled::Sealed {
                        self.metrics.files_sealed.inc();
                    }
                    if source.is_none() {
                        source = Some((Arc::clone(&d.file), d.index));
                    }
                }
                Err(e) => tracing::warn!(
                    "cannot store chunk {} in {}: {e}",
                    r.id,
                    d.file.data_path().display()
                ),
            }
        }
    }

    /// Another host-cache file holding `r` with the right bytes (the chunk index says where; the bytes
    /// are read and checked): the file, the chunk's index in it, and the bytes.
    fn local_source(&self, r: &ChunkRef) -> Option<(Arc<CacheFile>, u64, Vec<u8>)> {
        let entries = match self.cache.index().lookup(&r.id) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("chunk index lookup of {}: {e}", r.id);
                return None;
            }
        };
        for e in entries.into_iter().take(4) {
            let Some(src) = self.cache.existing_file(&e.key) else {
                continue;
            };
            match src.read_chunk(e.index, r) {
                Ok(Some((buf, range))) => return Some((src, e.index, buf[range].to_vec())),
                Ok(None) => {}
                Err(err) => tracing::debug!("reading {}: {err}", src.data_path().display()),
            }
        }
        None
    }

    /// Writes `late` (a destination that joined a flight after its writes were handed out) once the
    /// flight settled: reflinked from a cache file holding the chunk where possible.
    fn write_late(&self, r: &ChunkRef, plain: &[u8], late: Dest) {
        if late.file.has(late.index) {
            return;
        }
        let source = self.local_source(r).map(|(file, index, _)| (file, index));
        self.write_dests(r, plain, vec![late], source);
    }

    /// Fetches, verifies, stores and completes the flights of `job`.
    fn run_job(&self, job: &[ChunkRef]) {
        let mut pending: Vec<ChunkRef> = Vec::with_capacity(job.len());
        for r in job {
            match self.local_source(r) {
                Some((src, index, plain)) => {
                    self.metrics.local_copies.inc();
                    self.deliver(r, Arc::new(DecodedChunk::from(plain)), Some((src, index)));
                }
                None => pending.push(*r),
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

    /// Verifies and decodes one fetched object, then delivers it.
    fn accept(&self, r: &ChunkRef, stored: &[u8]) {
        self.metrics.bytes_fetched.inc_by(stored.len() as u64);
        match image::decode_chunk(r, stored) {
            Ok(plain) => {
                self.metrics.chunks_fetched.inc();
                self.deliver(r, Arc::new(plain), None);
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
    use std::sync::atomic::AtomicU32;
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
            Ok(self.objects.lock().get(id).cloned())
        }
        fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
            self.objects.lock().insert(*id, data.to_vec());
            Ok(())
        }
        fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
            Ok(self.objects.lock().contains_key(id))
        }
        fn public_url(&self) -> String {
            "test://".into()
        }
    }

    const LEN: usize = 65_536;

    fn chunk(seed: u8) -> (ChunkRef, Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..LEN as u32).map(|i| (i as u8) ^ seed).collect();
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
                ..FetchConfig::default()
            },
        )
    }

    /// A cache file made of `refs` (each a full chunk) and a destination per chunk.
    fn dests(f: &Fetcher, refs: &[ChunkRef]) -> (Arc<CacheFile>, Vec<(ChunkRef, Dest)>) {
        let chunks: Vec<Option<ChunkRef>> = refs.iter().copied().map(Some).collect();
        let file = f
            .cache()
            .open_file((refs.len() * LEN) as u64, LEN as u64, &chunks)
            .expect("cache file");
        let items = refs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    *r,
                    Dest {
                        file: Arc::clone(&file),
                        index: i as u64,
                    },
                )
            })
            .collect();
        (file, items)
    }

    #[test]
    fn concurrent_misses_fetch_once_then_the_cache_file_serves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore {
            delay: Duration::from_millis(200),
            ..Default::default()
        });
        let (r, stored, plain) = chunk(1);
        store.put(&r.id, &stored).expect("put");
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_secs(10));
        let (file, items) = dests(&f, &[r]);
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (f, item, plain) = (&f, &items[0], &plain);
                s.spawn(move || {
                    let got = f.get(&item.0, Some(item.1.clone())).expect("get");
                    assert!(**got == plain[..]);
                });
            }
        });
        assert!(f.flush_cache_writes(Duration::from_secs(5)));
        assert_eq!(store.requests.load(Ordering::SeqCst), 1);
        assert_eq!(f.metrics().chunks_fetched.get(), 1);
        // The cache file now answers without the store.
        let mut out = vec![0u8; 100];
        assert!(file.read_into(0, &r, 1000, &mut out).expect("read"));
        assert_eq!(&out[..], &plain[1000..1100]);
        assert!(file.check_sealed(), "its only chunk landed: sealed");
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
        assert!(**f.get(&r, None).expect("get after retries") == plain[..]);
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
        let err = f.get(&r, None).expect_err("outage");
        assert!(
            matches!(
                err,
                FetchError::Unavailable { .. } | FetchError::Timeout { .. }
            ),
            "{err}"
        );
        // A failed flight is forgotten: the next read asks the store again.
        let before = store.requests.load(Ordering::SeqCst);
        let _ = f.get(&r, None);
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
        let err = f.get(&r, None).expect_err("hung store");
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
        let (file, items) = dests(&f, &[r, missing]);
        let results = f.fill(&items);
        assert!(matches!(results[0], Err(FetchError::Corrupt { .. })));
        assert!(matches!(results[1], Err(FetchError::Missing(_))));
        assert!(!file.has(0), "corrupt data must not be cached");
        assert_eq!(f.metrics().corrupt_chunks.get(), 1);
    }

    #[test]
    fn prefetch_and_fill_write_each_chunk_once_and_share_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(TestStore::default());
        let chunks: Vec<_> = (10..20).map(chunk).collect();
        for (r, stored, _) in &chunks {
            store.put(&r.id, stored).expect("put");
        }
        let f = fetcher(Arc::clone(&store), dir.path(), Duration::from_secs(5));
        let refs: Vec<ChunkRef> = chunks.iter().map(|c| c.0).collect();
        let (file, items) = dests(&f, &refs);
        f.prefetch(&items[..5]);
        let results = f.fill(&items);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(f.flush_cache_writes(Duration::from_secs(5)));
        assert!(file.check_sealed());
        assert_eq!(
            store.requests.load(Ordering::SeqCst),
            10,
            "each chunk fetched once"
        );
        // Another file made of some of the same chunks is filled from the first one, not the store.
        let (other, other_items) = dests(&f, &refs[2..4]);
        assert!(f.fill(&other_items).iter().all(Result::is_ok));
        assert_eq!(store.requests.load(Ordering::SeqCst), 10);
        assert_eq!(f.metrics().local_copies.get(), 2);
        let mut out = vec![0u8; LEN];
        assert!(other.read_into(1, &refs[3], 0, &mut out).expect("read"));
        assert!(out == chunks[3].2);
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
