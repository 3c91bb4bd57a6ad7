//! Server counters (INFO and `--metrics`): commands by kind, error replies, connections, bytes in and out,
//! request latency, and the per-namespace sizes, rendered as Prometheus text with `prometheus-client`.
//!
//! The hot path only bumps relaxed atomics in a per-worker shard (no lock, no cache line shared between
//! worker threads); a scrape sums the shards and reads the namespaces' totals.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cmd::COMMANDS;
use crate::db::Database;

/// Label of requests naming no supported command.
pub const UNKNOWN_COMMAND: &str = "UNKNOWN";
/// Upper bounds (seconds) of the request latency buckets: 1 µs to ~1 s, doubling (the last bucket is +Inf).
const BUCKETS: usize = 21;

fn bucket_bound(i: usize) -> f64 {
    1e-6 * (1u64 << i) as f64
}

fn bucket_of(d: Duration) -> usize {
    // Bucket i holds latencies up to 2^i µs.
    let us = d.as_nanos().div_ceil(1000).max(1) as u64;
    let i = (u64::BITS - (us - 1).leading_zeros()) as usize;
    i.min(BUCKETS)
}

/// Counters of one command kind.
#[derive(Default)]
struct CommandCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    buckets: [AtomicU64; BUCKETS + 1],
}

/// The counters one worker thread updates.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Indexed like [`COMMANDS`], then one slot for unknown commands.
    commands: Vec<CommandCounters>,
    protocol_errors: AtomicU64,
    connections_accepted: AtomicU64,
    connections_open: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    admin_denied: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Shard {
            commands: (0..=COMMANDS.len())
                .map(|_| CommandCounters::default())
                .collect(),
            ..Shard::default()
        }
    }
}

thread_local! {
    /// Which shard this thread updates (worker `i` uses shard `i + 1`; every other thread shard 0).
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Every counter of a server.
pub struct Metrics {
    shards: Box<[Shard]>,
}

/// Totals of one command kind at scrape time.
#[derive(Debug, Clone, Default)]
struct CommandTotals {
    requests: u64,
    errors: u64,
    seconds: f64,
    buckets: Vec<(f64, u64)>,
}

impl Metrics {
    /// Counters for a server with `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Metrics {
            shards: (0..=workers).map(|_| Shard::new()).collect(),
        }
    }

    /// Makes the calling thread update the shard of worker `worker`.
    pub fn bind_worker(worker: usize) {
        SHARD.with(|s| s.set(worker + 1));
    }

    fn shard(&self) -> &Shard {
        let i = SHARD.with(|s| s.get());
        &self.shards[i.min(self.shards.len() - 1)]
    }

    /// Counts a request of command `index` (into [`COMMANDS`]; `None`: unknown) that took `took`.
    pub fn request(&self, index: Option<usize>, error: bool, took: Duration) {
        let shard = self.shard();
        let c = &shard.commands[index.unwrap_or(COMMANDS.len())];
        c.requests.fetch_add(1, Relaxed);
        if error {
            c.errors.fetch_add(1, Relaxed);
        }
        c.nanos.fetch_add(took.as_nanos() as u64, Relaxed);
        c.buckets[bucket_of(took)].fetch_add(1, Relaxed);
    }

    /// Counts `n` requests of command `index` answered together (pipelined SETs) in `took`, `errors` of
    /// them with an error reply. Each is counted with the batch's mean latency.
    pub fn requests(&self, index: usize, n: u64, errors: u64, took: Duration) {
        if n == 0 {
            return;
        }
        let shard = self.shard();
        let c = &shard.commands[index];
        c.requests.fetch_add(n, Relaxed);
        c.errors.fetch_add(errors, Relaxed);
        c.nanos.fetch_add(took.as_nanos() as u64, Relaxed);
        c.buckets[bucket_of(took / n as u32)].fetch_add(n, Relaxed);
    }

    /// Counts a malformed request stream.
    pub fn protocol_error(&self) {
        self.shard().protocol_errors.fetch_add(1, Relaxed);
    }

    /// Counts a refused admin command.
    pub fn admin_denied(&self) {
        self.shard().admin_denied.fetch_add(1, Relaxed);
    }

    /// Counts a new connection.
    pub fn connection_opened(&self) {
        let s = self.shard();
        s.connections_accepted.fetch_add(1, Relaxed);
        s.connections_open.fetch_add(1, Relaxed);
    }

    /// Counts a closed connection.
    pub fn connection_closed(&self) {
        self.shard().connections_open.fetch_sub(1, Relaxed);
    }

    /// Counts bytes read from a client.
    pub fn bytes_in(&self, n: usize) {
        self.shard().bytes_in.fetch_add(n as u64, Relaxed);
    }

    /// Counts bytes written to a client.
    pub fn bytes_out(&self, n: usize) {
        self.shard().bytes_out.fetch_add(n as u64, Relaxed);
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }

    /// Connections accepted since start.
    pub fn connections_accepted(&self) -> u64 {
        self.sum(|s| s.connections_accepted.load(Relaxed))
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        let n: i64 = self
            .shards
            .iter()
            .map(|s| s.connections_open.load(Relaxed))
            .sum();
        n.max(0) as u64
    }

    /// Requests of supported commands since start.
    pub fn commands_executed(&self) -> u64 {
        (0..COMMANDS.len())
            .map(|i| self.sum(|s| s.commands[i].requests.load(Relaxed)))
            .sum()
    }

    /// Requests of unsupported commands since start.
    pub fn commands_unknown(&self) -> u64 {
        self.sum(|s| s.commands[COMMANDS.len()].requests.load(Relaxed))
    }

    /// Refused admin commands since start.
    pub fn admin_denied_total(&self) -> u64 {
        self.sum(|s| s.admin_denied.load(Relaxed))
    }

    fn command_totals(&self, i: usize) -> CommandTotals {
        let mut t = CommandTotals {
            buckets: (0..=BUCKETS)
                .map(|b| {
                    let bound = if b == BUCKETS {
                        f64::MAX
                    } else {
                        bucket_bound(b)
                    };
                    (bound, 0)
                })
                .collect(),
            ..CommandTotals::default()
        };
        for s in self.shards.iter() {
            let c = &s.commands[i];
            t.requests += c.requests.load(Relaxed);
            t.errors += c.errors.load(Relaxed);
            t.seconds += c.nanos.load(Relaxed) as f64 / 1e9;
            for (b, n) in t.buckets.iter_mut().zip(c.buckets.iter()) {
                b.1 += n.load(Relaxed);
            }
        }
        t
    }
}

/// Renders every metric of `db` in the Prometheus text format.
pub fn render(db: &Database) -> String {
    let m = &db.metrics;
    let mut commands: Vec<(&'static str, CommandTotals)> = COMMANDS
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, m.command_totals(i)))
        .collect();
    commands.push((UNKNOWN_COMMAND, m.command_totals(COMMANDS.len())));
    let snapshot = Snapshot {
        commands,
        protocol_errors: m.sum(|s| s.protocol_errors.load(Relaxed)),
        connections_accepted: m.connections_accepted(),
        connections_open: m.connections_open(),
        bytes_in: m.sum(|s| s.bytes_in.load(Relaxed)),
        bytes_out: m.sum(|s| s.bytes_out.load(Relaxed)),
        namespaces: db
            .all()
            .iter()
            .map(|ns| {
                let (keys, bytes) = ns.stats();
                (ns.name.clone(), keys, bytes, ns.index_memory_size())
            })
            .collect(),
    };
    let mut registry = Registry::with_prefix("thinnode_zdb");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// The values of one scrape.
#[derive(Debug)]
struct Snapshot {
    commands: Vec<(&'static str, CommandTotals)>,
    protocol_errors: u64,
    connections_accepted: u64,
    connections_open: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// (name, live keys, payload bytes, in-memory index bytes)
    namespaces: Vec<(String, u64, u64, u64)>,
}

/// Picks one value out of a namespace's snapshot.
type NamespaceValue = fn(&(String, u64, u64, u64)) -> u64;

type NoExemplar = Option<&'static prometheus_client::metrics::exemplar::Exemplar<NoLabelSet, u64>>;

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v as i64).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_command: [(&str, &str, MetricType); 3] = [
            (
                "commands",
                "Requests handled, by command",
                MetricType::Counter,
            ),
            (
                "command_errors",
                "Requests answered with an error reply, by command",
                MetricType::Counter,
            ),
            (
                "request_duration_seconds",
                "Time from a decoded request to its reply being ready, by command",
                MetricType::Histogram,
            ),
        ];
        for (family, help, kind) in per_command {
            let mut e = enc.encode_descriptor(family, help, None, kind)?;
            for (name, t) in &self.commands {
                let labels = [("command", *name)];
                let mut m = e.encode_family(&labels)?;
                match family {
                    "commands" => m.encode_counter(&t.requests, NoExemplar::None)?,
                    "command_errors" => m.encode_counter(&t.errors, NoExemplar::None)?,
                    _ => {
                        m.encode_histogram::<NoLabelSet>(t.seconds, t.requests, &t.buckets, None)?
                    }
                }
            }
        }
        counter(
            &mut enc,
            "protocol_errors",
            "Malformed request streams (the connection is closed)",
            self.protocol_errors,
        )?;
        counter(
            &mut enc,
            "connections_accepted",
            "Connections accepted since start",
            self.connections_accepted,
        )?;
        gauge(
            &mut enc,
            "connections_open",
            "Connections open now",
            self.connections_open,
        )?;
        counter(
            &mut enc,
            "received_bytes",
            "Bytes read from clients",
            self.bytes_in,
        )?;
        counter(
            &mut enc,
            "sent_bytes",
            "Bytes written to clients",
            self.bytes_out,
        )?;
        let per_namespace: [(&str, &str, NamespaceValue); 3] = [
            ("namespace_keys", "Live keys per namespace", |n| n.1),
            (
                "namespace_data_bytes",
                "Payload bytes of live keys per namespace",
                |n| n.2,
            ),
            (
                "namespace_index_memory_bytes",
                "In-memory index size per namespace",
                |n| n.3,
            ),
        ];
        for (name, help, value) in per_namespace {
            let mut e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ns in &self.namespaces {
                let labels = [("namespace", ns.0.as_str())];
                e.encode_family(&labels)?
                    .encode_gauge(&(value(ns) as i64))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_double_from_one_microsecond() {
        assert_eq!(bucket_of(Duration::from_nanos(1)), 0);
        assert_eq!(bucket_of(Duration::from_micros(1)), 0);
        assert_eq!(bucket_of(Duration::from_nanos(1001)), 1);
        assert_eq!(bucket_of(Duration::from_micros(2)), 1);
        assert_eq!(bucket_of(Duration::from_micros(3)), 2);
        assert_eq!(bucket_of(Duration::from_micros(1024)), 10);
        assert_eq!(bucket_of(Duration::from_secs(100)), BUCKETS);
        for i in 0..BUCKETS {
            let d = Duration::from_secs_f64(bucket_bound(i));
            assert_eq!(bucket_of(d), i, "upper bound of bucket {i} falls in it");
        }
    }
}
