//! Prometheus metrics of the read path, and a tiny HTTP listener serving them in the text format.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric the mount keeps. Counters are cheap atomics; share with `Arc`.
pub struct Metrics {
    /// Chunks fetched from a store (after verification).
    pub chunks_fetched: Counter,
    /// Stored (encoded) bytes fetched from stores.
    pub bytes_fetched: Counter,
    /// Chunk reads answered by the host cache or the in-memory cache.
    pub cache_hits: Counter,
    /// Chunk reads that had to go to a store.
    pub cache_misses: Counter,
    /// Bytes returned to readers of the filesystem.
    pub bytes_read: Counter,
    /// Store requests that failed (each retry counts).
    pub store_errors: Counter,
    /// Chunks whose stored bytes failed verification.
    pub corrupt_chunks: Counter,
    /// Reads answered with an I/O error.
    pub read_errors: Counter,
    /// Opens served with FUSE passthrough from a sealed host-cache file.
    pub passthrough_opens: Counter,
    /// Opens of unwritten base files in a blocks write layer served with FUSE passthrough from the
    /// base's sealed host-cache file.
    pub layer_passthrough_opens: Counter,
    /// Chunks copied (or reflinked) from another host-cache file instead of fetched.
    pub local_copies: Counter,
    /// Host-cache files sealed by this process (complete and verified: passthrough-ready).
    pub files_sealed: Counter,
    /// Chunks requested by readahead.
    pub readahead_chunks: Counter,
    /// Store requests in flight.
    pub fetches_in_flight: Gauge,
    /// Latency of one store request (a batch of chunks), in seconds.
    pub fetch_latency_seconds: Histogram,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("chunks_fetched", &self.chunks_fetched.get())
            .field("cache_hits", &self.cache_hits.get())
            .field("cache_misses", &self.cache_misses.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics registered under the `thinnode_mount` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("thinnode_mount");
        let mut counter =
            |name: &str, help: &str| registered(&mut registry, name, help, Counter::default());
        let chunks_fetched = counter("chunks_fetched", "Chunks fetched from a store and verified");
        let bytes_fetched = counter("fetched_bytes", "Stored bytes fetched from stores");
        let cache_hits = counter("cache_hits", "Chunk reads served from the cache");
        let cache_misses = counter("cache_misses", "Chunk reads that went to a store");
        let bytes_read = counter("read_bytes", "Bytes returned to filesystem readers");
        let store_errors = counter("store_errors", "Failed store requests, retries included");
        let corrupt_chunks = counter("corrupt_chunks", "Chunks that failed verification");
        let read_errors = counter("read_errors", "Reads answered with EIO");
        let passthrough_opens = counter("passthrough_opens", "Opens served by FUSE passthrough");
        let layer_passthrough_opens = counter(
            "layer_passthrough_opens",
            "Opens of unwritten base files in a blocks layer served by FUSE passthrough",
        );
        let local_copies = counter(
            "local_copies",
            "Chunks copied from another host-cache file instead of fetched",
        );
        let files_sealed = counter(
            "files_sealed",
            "Host-cache files sealed (complete and verified, passthrough-ready)",
        );
        let readahead_chunks = counter("readahead_chunks", "Chunks requested by readahead");
        let fetches_in_flight = registered(
            &mut registry,
            "fetches_in_flight",
            "Store requests in flight",
            Gauge::default(),
        );
        let fetch_latency_seconds = registered(
            &mut registry,
            "fetch_latency_seconds",
            "Latency of one store request",
            Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        );
        Metrics {
            chunks_fetched,
            bytes_fetched,
            cache_hits,
            cache_misses,
            bytes_read,
            store_errors,
            corrupt_chunks,
            read_errors,
            passthrough_opens,
            layer_passthrough_opens,
            local_copies,
            files_sealed,
            readahead_chunks,
            fetches_in_flight,
            fetch_latency_seconds,
            registry,
        }
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `metric`, registered in `registry` under `name` with `help`.
fn registered<M: Clone + prometheus_client::registry::Metric>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Serves `metrics` over HTTP on `addr` (any path) from a background thread. Returns the bound address.
pub fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(&metrics, stream) {
                    tracing::debug!("metrics request failed: {e}");
                }
            }
        })?;
    Ok(bound)
}

fn answer(metrics: &Metrics, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // Read the request head; the path does not matter.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let body = metrics.render();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn serves_text_format_over_http() {
        let metrics = Arc::new(Metrics::new());
        metrics.cache_hits.inc_by(7);
        metrics.fetch_latency_seconds.observe(0.01);
        let addr =
            serve(Arc::clone(&metrics), "127.0.0.1:0".parse().expect("addr")).expect("serve");
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("thinnode_mount_cache_hits_total 7"), "{body}");
        assert!(
            body.contains("thinnode_mount_fetch_latency_seconds_count 1"),
            "{body}"
        );
    }
}
