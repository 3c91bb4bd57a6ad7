//! A pooled, retrying, pipelining 0-db client.

use parking_lot::Mutex;
use std::cell::Cell;
use std::time::Duration;

use super::config::{ZdbConfig, MAX_MGET_KEYS, MAX_PAYLOAD};
use super::connection::{ArrayStart, Connection};
use super::reply::Reply;
use crate::StoreError;

/// MGET commands kept in flight (each already carries up to [`MAX_MGET_KEYS`] keys).
const MGET_WINDOW: usize = 2;

thread_local! {
    /// Each thread's buffer for values read by [`ZdbClient::get_each`], kept between calls so a
    /// chunk-sized value is not allocated and zeroed again for every request.
    static VALUE_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Reply bytes a value fetch aims to keep in flight. Small values need many requests in flight to hide
/// round trips; large ones gain nothing from more than one, and lose when the server answers a batch of
/// pipelined requests with one large write (its buffers then no longer fit in the CPU caches): measured
/// with bench/store-fetch.sh, 4 MiB in flight fetched 1 MiB values slower than one request at a time.
const FETCH_BYTES_IN_FLIGHT: u64 = 1024 * 1024;

/// GETs in flight before any value size is known.
const INITIAL_FETCH_WINDOW: usize = 2;

/// A GET pipeline window sized from the mean size of the values received so far: about
/// [`FETCH_BYTES_IN_FLIGHT`] bytes in flight, between 1 and `max` requests.
struct FetchWindow {
    max: usize,
    bytes: Cell<u64>,
    replies: Cell<u64>,
}

impl FetchWindow {
    fn new(max: usize) -> Self {
        FetchWindow {
            max: max.max(1),
            bytes: Cell::new(0),
            replies: Cell::new(0),
        }
    }

    fn record(&self, len: usize) {
        self.bytes.set(self.bytes.get().saturating_add(len as u64));
        self.replies.set(self.replies.get() + 1);
    }

    fn current(&self) -> usize {
        let replies = self.replies.get();
        if replies == 0 {
            return INITIAL_FETCH_WINDOW.min(self.max);
        }
        let mean = (self.bytes.get() / replies).max(1);
        usize::try_from(FETCH_BYTES_IN_FLIGHT / mean)
            .unwrap_or(usize::MAX)
            .clamp(1, self.max)
    }
}

/// Longest pause between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A blocking 0-db client for one namespace. Cheap to share between threads (`&ZdbClient` is `Sync`):
/// each call borrows a pooled connection, or dials a new one, and returns it afterwards. A connection
/// that failed is dropped, together with all idle ones (a server restart breaks them all), and the call
/// is retried with exponential backoff when the failure was transient ([`StoreError::is_transient`]);
/// a pooled connection found closed is replaced at once without counting as a retry.
/// Every command this client sends on its own (GET, SET, EXISTS, MGET) is idempotent, so a retried
/// pipeline is safe. Server error replies are never retried.
pub struct ZdbClient {
    config: ZdbConfig,
    idle: Mutex<Vec<Connection>>,
}

impl ZdbClient {
    /// A client that dials lazily, on first use.
    pub fn new(config: ZdbConfig) -> Self {
        ZdbClient {
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A client with one connection already open, so that a wrong address or password fails here.
    pub fn connect(config: ZdbConfig) -> Result<Self, StoreError> {
        let client = Self::new(config);
        client.run(|conn| {
            let reply = conn.command(&[b"PING".as_slice()])?;
            conn.expect_ok("PING", reply)
        })?;
        Ok(client)
    }

    /// A client with one connection already open (dialled, authenticated, namespace selected) but
    /// without the extra PING of [`ZdbClient::connect`].
    pub fn connect_without_ping(config: ZdbConfig) -> Result<Self, StoreError> {
        let client = Self::new(config);
        client.run(|_| Ok(()))?;
        Ok(client)
    }

    /// The configuration this client uses.
    pub fn config(&self) -> &ZdbConfig {
        &self.config
    }

    /// Number of idle pooled connections (for tests and diagnostics).
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().len()
    }

    /// Runs `op` on a pooled connection, retrying transient failures on fresh connections. `op` may run
    /// more than once, so it must be idempotent.
    pub fn run<T>(
        &self,
        mut op: impl FnMut(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0u32;
        let mut replaced_stale = false;
        loop {
            let pooled = self.idle.lock().pop();
            let reused = pooled.is_some();
            let result = match pooled {
                Some(conn) => Ok(conn),
                None => Connection::open(&self.config),
            }
            .and_then(|mut conn| op(&mut conn).map(|value| (value, conn)));
            match result {
                Ok((value, conn)) => {
                    let mut idle = self.idle.lock();
                    if idle.len() < self.config.pool_size {
                        idle.push(conn);
                    }
                    return Ok(value);
                }
                // A pooled connection the server closed meanwhile (restart, idle timeout): drop the pool
                // and dial afresh at once, without using up a retry.
                Err(StoreError::Connection { .. }) if reused && !replaced_stale => {
                    self.idle.lock().clear();
                    replaced_stale = true;
                }
                Err(e) if e.is_transient() && attempt < self.config.retries => {
                    // The failed connection is gone; idle ones probably share its fate.
                    self.idle.lock().clear();
                    let backoff = self
                        .config
                        .retry_backoff
                        .saturating_mul(1u32 << attempt.min(16))
                        .min(MAX_BACKOFF);
                    std::thread::sleep(backoff);
                    attempt += 1;
                }
                Err(e) => {
                    if e.is_transient() {
                        self.idle.lock().clear();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Sends one command; an error reply becomes [`StoreError::Server`] with the server's text.
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Reply, StoreError> {
        self.run(|conn| conn.command(args))
            .and_then(|reply| match reply {
                Reply::Error(message) => Err(StoreError::Server { message }),
                other => Ok(other),
            })
    }

    /// Pipelines `commands` on one connection and returns every reply in order; error replies stay
    /// [`Reply::Error`] so the caller sees which command failed.
    pub fn pipeline<C, A>(&self, commands: &[C]) -> Result<Vec<Reply>, StoreError>
    where
        C: AsRef<[A]>,
        A: AsRef<[u8]>,
    {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        self.run(|conn| conn.pipeline(commands, self.config.pipeline_window))
    }

    /// PING.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.command(&[b"PING".as_slice()]).map(|_| ())
    }

    /// GET: the value, or `None` when the key is absent or deleted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|conn| {
            let reply = conn.command(&[b"GET".as_slice(), key])?;
            value_of(conn.endpoint(), "GET", reply)
        })
    }

    /// SET: stores `value` under `key` (an unchanged value is not an error).
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_payload(value)?;
        self.run(|conn| {
            let reply = conn.command(&[b"SET".as_slice(), key, value])?;
            set_value(conn.endpoint(), reply)
        })
    }

    /// EXISTS.
    pub fn exists(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.run(|conn| {
            let reply = conn.command(&[b"EXISTS".as_slice(), key])?;
            exists_value(conn.endpoint(), reply)
        })
    }

    /// Values of many keys, in order, fetched with pipelined MGETs of at most [`MAX_MGET_KEYS`] keys.
    /// 0-db streams an MGET reply as an array whose elements are exactly GET replies (value, nil, or an
    /// error line such as "-Internal Error"); an error element fails the whole call with its text.
    pub fn mget<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let batches: Vec<&[K]> = keys.chunks(MAX_MGET_KEYS).collect();
        self.run(|conn| {
            let mut values = Vec::with_capacity(keys.len());
            conn.pipeline_with(
                batches.len(),
                &|| MGET_WINDOW,
                |i, conn| {
                    let batch = batches.get(i).copied().unwrap_or_default();
                    let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() + 1);
                    args.push(b"MGET");
                    args.extend(batch.iter().map(|k| k.as_ref()));
                    conn.queue(&args)
                },
                |i, conn| {
                    let expected = batches.get(i).map_or(0, |b| b.len());
                    match conn.read_array_start()? {
                        ArrayStart::Len(n) if n == expected => {
                            for _ in 0..n {
                                let reply = conn.read_reply()?;
                                values.push(value_of(conn.endpoint(), "MGET", reply)?);
                            }
                            Ok(())
                        }
                        ArrayStart::Other(Reply::Error(message)) => {
                            Err(StoreError::Server { message })
                        }
                        other => Err(StoreError::Protocol {
                            endpoint: conn.endpoint().to_string(),
                            reason: format!("MGET of {expected} keys answered with {other:?}"),
                        }),
                    }
                },
            )?;
            Ok(values)
        })
    }

    /// Values of many keys, in order, fetched with pipelined GETs (one reply per key, so large values
    /// stream without waiting for a whole batch).
    pub fn get_pipelined<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let fetch_window = FetchWindow::new(self.config.pipeline_window);
        self.run(|conn| {
            let mut values = Vec::with_capacity(keys.len());
            conn.pipeline_with(
                keys.len(),
                &|| fetch_window.current(),
                |i, conn| match keys.get(i) {
                    Some(key) => conn.queue(&[b"GET".as_slice(), key.as_ref()]),
                    None => Ok(()),
                },
                |_, conn| {
                    let reply = conn.read_reply()?;
                    if let Reply::Bulk(v) = &reply {
                        fetch_window.record(v.len());
                    }
                    values.push(value_of(conn.endpoint(), "GET", reply)?);
                    Ok(())
                },
            )?;
            Ok(values)
        })
    }

    /// Fetches many keys with pipelined GETs and hands each value to `deliver(index, value)` in key order
    /// (`None` for a missing key), from a buffer reused between values: no allocation per value, so a
    /// long stream of large values does not churn memory. After a transient failure the fetch resumes on
    /// a fresh connection at the first key not yet delivered; an error from `deliver` stops the fetch.
    pub fn get_each<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        mut deliver: impl FnMut(usize, Option<&[u8]>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut delivered = 0usize;
        let mut buffer = VALUE_BUFFER.take();
        let fetch_window = FetchWindow::new(self.config.pipeline_window);
        let result = self.run(|conn| {
            let rest = keys.get(delivered..).unwrap_or_default();
            conn.pipeline_with(
                rest.len(),
                &|| fetch_window.current(),
                |i, conn| match rest.get(i) {
                    Some(key) => conn.queue(&[b"GET".as_slice(), key.as_ref()]),
                    None => Ok(()),
                },
                |_, conn| {
                    let found = conn.read_value_into("GET", &mut buffer)?;
                    fetch_window.record(if found { buffer.len() } else { 0 });
                    deliver(delivered, found.then_some(buffer.as_slice()))?;
                    delivered += 1;
                    Ok(())
                },
            )
        });
        VALUE_BUFFER.set(buffer);
        result
    }

    /// Existence of many keys, in order, with pipelined EXISTS.
    pub fn exists_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<bool>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(|conn| {
            let mut found = Vec::with_capacity(keys.len());
            conn.pipeline_with(
                keys.len(),
                &|| self.config.pipeline_window.max(256),
                |i, conn| match keys.get(i) {
                    Some(key) => conn.queue(&[b"EXISTS".as_slice(), key.as_ref()]),
                    None => Ok(()),
                },
                |_, conn| {
                    let reply = conn.read_reply()?;
                    found.push(exists_value(conn.endpoint(), reply)?);
                    Ok(())
                },
            )?;
            Ok(found)
        })
    }

    /// Stores many values with pipelined SETs.
    pub fn set_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        for (_, value) in items {
            check_payload(value.as_ref())?;
        }
        self.run(|conn| {
            conn.pipeline_with(
                items.len(),
                &|| self.config.pipeline_window,
                |i, conn| match items.get(i) {
                    Some((key, value)) => {
                        conn.queue(&[b"SET".as_slice(), key.as_ref(), value.as_ref()])
                    }
                    None => Ok(()),
                },
                |_, conn| {
                    let reply = conn.read_reply()?;
                    set_value(conn.endpoint(), reply)
                },
            )
        })
    }
}

fn check_payload(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_PAYLOAD {
        return Err(StoreError::ObjectTooLarge {
            size: value.len(),
            limit: MAX_PAYLOAD,
        });
    }
    Ok(())
}

fn unexpected(endpoint: &str, command: &str, reply: &Reply) -> StoreError {
    StoreError::Protocol {
        endpoint: endpoint.to_string(),
        reason: format!("unexpected {} reply to {command}", reply.kind()),
    }
}

/// The value in a GET (or MGET element) reply.
fn value_of(endpoint: &str, command: &str, reply: Reply) -> Result<Option<Vec<u8>>, StoreError> {
    match reply {
        Reply::Bulk(v) => Ok(Some(v)),
        Reply::Nil => Ok(None),
        Reply::Error(message) => Err(StoreError::Server { message }),
        other => Err(unexpected(endpoint, command, &other)),
    }
}

fn set_value(endpoint: &str, reply: Reply) -> Result<(), StoreError> {
    match reply {
        // 0-db answers SET with the key, or nil when the stored value is already identical.
        Reply::Bulk(_) | Reply::Nil | Reply::Status(_) => Ok(()),
        Reply::Error(message) => Err(StoreError::Server { message }),
        other => Err(unexpected(endpoint, "SET", &other)),
    }
}

fn exists_value(endpoint: &str, reply: Reply) -> Result<bool, StoreError> {
    match reply {
        Reply::Integer(n) => Ok(n > 0),
        Reply::Error(message) => Err(StoreError::Server { message }),
        other => Err(unexpected(endpoint, "EXISTS", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_window_keeps_about_one_mib_in_flight() {
        let window = FetchWindow::new(64);
        assert_eq!(window.current(), INITIAL_FETCH_WINDOW);
        window.record(256 << 10);
        assert_eq!(window.current(), 4);
        window.record(256 << 10);
        window.record(512 << 10);
        assert_eq!(window.current(), 3); // mean 341 KiB
        let small = FetchWindow::new(64);
        for _ in 0..10 {
            small.record(100);
        }
        assert_eq!(small.current(), 64);
        let huge = FetchWindow::new(64);
        huge.record(8 << 20);
        assert_eq!(huge.current(), 1);
        let missing = FetchWindow::new(8);
        missing.record(0);
        assert_eq!(missing.current(), 8);
    }
}
