//! The soak report: faults injected and survived, node downtime per fault kind (from RPC polling),
//! bytes lost, and every end check.
//!
//! **Downtime** is an interval in which a node's RPC (`getblockcount`, polled every 200 ms with a 2 s
//! timeout) did not answer. It is charged to the latest fault that hit that node (node faults hit one
//! node, every other kind hits all) and started at most 0.5 s after the interval began, if the interval
//! began before that fault was over plus 30 s; otherwise it is "not caused by a fault".
//!
//! **Bytes lost** (must be 0) is the sum of: the bytes of blocks a node acknowledged (mined, then
//! reported durable by `gettxoutsetinfo`, which makes litecoind flush its block index and chainstate)
//! that were missing or different afterwards; the bytes of blocks read back (base blocks and
//! acknowledged ones, `getblock`) whose content differed from what was written; and the chunks
//! `verify --deep` found unreadable in the base, counted at the image's average chunk size.
//!
//! A fault is **survived** when its injection and undoing worked, every node it took down answered
//! again, and no loss or wrong read is charged to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::chain::BaseChain;
use crate::faults::FaultRecord;
use crate::load::{Down, LoadStats, Loss, NodeLoad, WrongRead};
use crate::nodes::{ServiceManager, ServiceStart};
use crate::schedule::FaultKind;
use crate::Soak;

/// Window after a fault's end in which an outage is still charged to it.
const CHARGE_WINDOW: f64 = 30.0;

/// The end checks of one node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeReport {
    /// Name.
    pub name: String,
    /// Layer kind.
    pub layer: String,
    /// Height reached.
    pub height: u64,
    /// Tip hash.
    pub tip: String,
    /// `verifychain 4 0` passed.
    pub verifychain: bool,
    /// How long it took.
    pub verifychain_ms: u64,
    /// Wallet summary.
    pub wallet: String,
    /// Bytes the layer holds (`layer du`, allocated).
    pub layer_bytes: u64,
    /// Files in the layer.
    pub layer_files: u64,
    /// Clean stop, `layer du`, start at the same tip and full read of the data dir all passed.
    pub layer_ok: bool,
    /// Milliseconds from `node start` to RPC after the clean stop.
    pub restart_ms: u64,
    /// Files of the data dir read in full.
    pub files_read: u64,
    /// Their bytes.
    pub bytes_read: u64,
    /// Load counters.
    pub load: LoadStats,
    /// Outages.
    pub downs: Vec<Down>,
    /// Acknowledged blocks lost.
    pub losses: Vec<Loss>,
    /// Blocks read back wrong.
    pub wrong_reads: Vec<WrongRead>,
}

/// The end checks of the store and the base.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreReport {
    /// Chunks `verify --deep` checked.
    pub chunks: u64,
    /// Chunks it found bad.
    pub bad_chunks: u64,
    /// First `store repair`.
    pub repair: String,
    /// Second `store repair` (must find nothing degraded).
    pub repair_again: String,
    /// `verify --deep` with each worst-case set of servers down: (servers, passed).
    pub redundancy: Vec<(String, bool)>,
}

/// One fault, with what it caused.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    /// What the injector did.
    pub record: FaultRecord,
    /// Outages charged to it: (node, seconds; `None` if the node never answered again).
    pub downtime: Vec<(String, Option<f64>)>,
    /// Bytes of losses and wrong reads charged to it.
    pub bytes_lost: u64,
    /// Survived (see the module doc).
    pub survived: bool,
}

/// Per fault kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindSummary {
    /// The kind.
    pub kind: String,
    /// Faults injected.
    pub injected: usize,
    /// Faults survived.
    pub survived: usize,
    /// Node outages charged to faults of this kind.
    pub outages: usize,
    /// Total node downtime (seconds, summed over nodes).
    pub downtime_s: f64,
    /// Median outage (seconds).
    pub median_s: f64,
    /// Longest outage (seconds).
    pub max_s: f64,
}

/// Bytes lost (must be 0).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BytesLost {
    /// Acknowledged blocks missing or different afterwards.
    pub acknowledged_blocks: u64,
    /// Blocks read back with wrong content.
    pub wrong_reads: u64,
    /// Unreadable base chunks at the average chunk size.
    pub base_chunks: u64,
    /// The sum.
    pub total: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The store kind.
    pub store: String,
    /// Seconds of load and faults.
    pub duration_s: u64,
    /// The base chain's height and bytes of blocks.
    pub base_height: u64,
    /// Bytes of the base's blocks.
    pub base_block_bytes: u64,
    /// Every fault.
    pub faults: Vec<FaultOutcome>,
    /// Per kind, in [`FaultKind::ALL`] order.
    pub kinds: Vec<KindSummary>,
    /// Outages not charged to any fault: (node, from, seconds).
    pub uncharged_downtime: Vec<(String, f64, Option<f64>)>,
    /// Nodes.
    pub nodes: Vec<NodeReport>,
    /// Starts by the service manager.
    pub service_starts: Vec<ServiceStart>,
    /// Store and base.
    pub store_checks: StoreReport,
    /// Bytes lost.
    pub bytes_lost: BytesLost,
    /// Everything that failed.
    pub problems: Vec<String>,
    /// Nothing failed, nothing lost, every fault survived.
    pub passed: bool,
}

/// What [`build`] needs.
pub struct Inputs<'a> {
    /// The soak.
    pub soak: &'a Soak,
    /// The base chain.
    pub base: &'a BaseChain,
    /// The nodes' load records.
    pub loads: &'a [NodeLoad],
    /// The service manager.
    pub manager: &'a ServiceManager,
    /// What the injector did.
    pub records: Vec<FaultRecord>,
    /// Log time at which the soak phase began.
    pub soak_start: Duration,
    /// End checks of the nodes.
    pub nodes: Vec<NodeReport>,
    /// End checks of the store.
    pub store: StoreReport,
    /// Problems found so far.
    pub problems: Vec<String>,
}

/// Whether fault `r` hits node `node`.
fn hits(r: &FaultRecord, node: usize) -> bool {
    r.fault.node.is_none_or(|n| n == node)
}

/// The fault charged for something on `node` at log time `at` (see the module doc).
fn charged(records: &[FaultRecord], node: usize, at: f64) -> Option<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| hits(r, node))
        .filter_map(|(i, r)| r.started.map(|s| (i, s, r.ended.unwrap_or(s))))
        .filter(|&(_, start, end)| start <= at + 0.5 && at <= end + CHARGE_WINDOW)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _, _)| i)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Builds the report: charges outages, losses and wrong reads to faults, sums per kind.
pub fn build(inputs: Inputs<'_>) -> Report {
    let Inputs {
        soak,
        base,
        loads,
        manager,
        records,
        soak_start,
        mut nodes,
        store,
        mut problems,
    } = inputs;
    let shift = soak_start.as_secs_f64();
    let mut outcomes: Vec<FaultOutcome> = records
        .iter()
        .map(|r| FaultOutcome {
            record: r.clone(),
            downtime: Vec::new(),
            bytes_lost: 0,
            survived: false,
        })
        .collect();
    let mut uncharged = Vec::new();
    let mut lost = BytesLost::default();
    for (load, node) in loads.iter().zip(nodes.iter_mut()) {
        let downs = load.downs.lock().clone();
        for d in &downs {
            let secs = d.to.map(|t| t - d.from);
            match charged(&records, load.index, d.from) {
                Some(i) => outcomes[i].downtime.push((load.name.clone(), secs)),
                None => uncharged.push((load.name.clone(), d.from - shift, secs)),
            }
        }
        let losses = load.losses.lock().clone();
        for l in &losses {
            lost.acknowledged_blocks += l.bytes;
            if let Some(i) = charged(&records, load.index, l.found_at) {
                outcomes[i].bytes_lost += l.bytes;
            }
            problems.push(format!(
                "{}: acknowledged block {} at height {} lost (now {})",
                load.name, l.hash, l.height, l.now
            ));
        }
        let wrong = load.wrong_reads.lock().clone();
        for w in &wrong {
            lost.wrong_reads += w.bytes;
            if let Some(i) = charged(&records, load.index, w.at) {
                outcomes[i].bytes_lost += w.bytes;
            }
            problems.push(format!(
                "{}: {} block at height {} read wrong: {}",
                load.name, w.source, w.height, w.what
            ));
        }
        node.downs = downs
            .iter()
            .map(|d| Down {
                from: d.from - shift,
                to: d.to.map(|t| t - shift),
            })
            .collect();
        node.losses = losses;
        node.wrong_reads = wrong;
        node.load = load.stats.lock().clone();
    }
    if store.bad_chunks > 0 && store.chunks > 0 {
        let avg = base.bytes() / store.chunks.max(1);
        lost.base_chunks = store.bad_chunks.saturating_mul(avg.max(1));
    }
    lost.total = lost.acknowledged_blocks + lost.wrong_reads + lost.base_chunks;
    for o in &mut outcomes {
        o.survived = o.record.started.is_some()
            && o.record.errors.is_empty()
            && o.downtime.iter().all(|(_, s)| s.is_some())
            && o.bytes_lost == 0;
        // Report times from the start of the soak phase, as scheduled.
        o.record.started = o.record.started.map(|s| s - shift);
        o.record.ended = o.record.ended.map(|s| s - shift);
        if !o.survived {
            problems.push(format!(
                "fault {} not survived: {}",
                o.record.fault,
                if !o.record.errors.is_empty() {
                    o.record.errors.join("; ")
                } else if o.record.started.is_none() {
                    "never injected".to_string()
                } else if o.bytes_lost > 0 {
                    format!("{} bytes lost", o.bytes_lost)
                } else {
                    "a node did not come back".to_string()
                }
            ));
        }
    }
    let kinds = FaultKind::ALL
        .iter()
        .filter(|k| outcomes.iter().any(|o| o.record.fault.kind == **k))
        .map(|k| {
            let of_kind: Vec<&FaultOutcome> = outcomes
                .iter()
                .filter(|o| o.record.fault.kind == *k)
                .collect();
            let outages: Vec<f64> = of_kind
                .iter()
                .flat_map(|o| o.downtime.iter().map(|(_, s)| s.unwrap_or(f64::INFINITY)))
                .collect();
            KindSummary {
                kind: k.name().to_string(),
                injected: of_kind
                    .iter()
                    .filter(|o| o.record.started.is_some())
                    .count(),
                survived: of_kind.iter().filter(|o| o.survived).count(),
                outages: outages.len(),
                downtime_s: outages.iter().fold(0.0, |a, b| a + b),
                median_s: median(outages.clone()),
                max_s: outages.iter().copied().fold(0.0, f64::max),
            }
        })
        .collect();
    for s in manager.starts.lock().iter() {
        if let Err(e) = &s.result {
            problems.push(format!(
                "service manager could not start node {}: {e}",
                s.node
            ));
        }
    }
    let passed = problems.is_empty() && lost.total == 0;
    Report {
        seed: soak.config.seed,
        store: soak.config.store.name().to_string(),
        duration_s: soak.config.duration.as_secs(),
        base_height: base.height(),
        base_block_bytes: base.bytes(),
        faults: outcomes,
        kinds,
        uncharged_downtime: uncharged,
        nodes,
        service_starts: manager.starts.lock().clone(),
        store_checks: store,
        bytes_lost: lost,
        problems,
        passed,
    }
}

impl Report {
    /// Faults injected.
    pub fn injected(&self) -> usize {
        self.faults
            .iter()
            .filter(|f| f.record.started.is_some())
            .count()
    }

    /// Faults survived.
    pub fn survived(&self) -> usize {
        self.faults.iter().filter(|f| f.survived).count()
    }

    /// The report as text (Markdown tables).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "soak report: store {}, seed {}, {} s of load and faults, base height {} ({} KiB of blocks)",
            self.store,
            self.seed,
            self.duration_s,
            self.base_height,
            self.base_block_bytes >> 10
        );
        let _ = writeln!(
            s,
            "faults injected {}, survived {}; bytes lost {} (acknowledged blocks {}, wrong reads {}, base chunks {}); {}",
            self.injected(),
            self.survived(),
            self.bytes_lost.total,
            self.bytes_lost.acknowledged_blocks,
            self.bytes_lost.wrong_reads,
            self.bytes_lost.base_chunks,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| fault kind | injected | survived | node outages | downtime total s | median s | max s |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for k in &self.kinds {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                k.kind, k.injected, k.survived, k.outages, k.downtime_s, k.median_s, k.max_s
            );
        }
        let uncharged: f64 = self
            .uncharged_downtime
            .iter()
            .map(|(_, _, d)| d.unwrap_or(f64::INFINITY))
            .fold(0.0, |a, b| a + b);
        let _ = writeln!(
            s,
            "| (not caused by a fault) | | | {} | {:.1} | | |",
            self.uncharged_downtime.len(),
            uncharged
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| node | layer | height | mined | acked | txs | blocks read back | verifychain 4 0 | wallet | layer du | restart ms | data dir read | service restarts |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"
        );
        let mut restarts: BTreeMap<usize, usize> = BTreeMap::new();
        for st in &self.service_starts {
            *restarts.entry(st.node).or_default() += 1;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} ({} MiB) | {} ({} ms) | {} | {} MiB, {} files | {} | {} files, {} MiB | {} |",
                n.name,
                n.layer,
                n.height,
                n.load.blocks_mined,
                n.load.blocks_acked,
                n.load.txs_sent,
                n.load.reads,
                n.load.read_bytes >> 20,
                if n.verifychain { "ok" } else { "FAILED" },
                n.verifychain_ms,
                n.wallet,
                n.layer_bytes >> 20,
                n.layer_files,
                n.restart_ms,
                n.files_read,
                n.bytes_read >> 20,
                restarts.get(&i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "faults (seconds from the start of the soak):");
        for f in &self.faults {
            let down: Vec<String> = f
                .downtime
                .iter()
                .map(|(n, d)| match d {
                    Some(d) => format!("{n} down {d:.1}s"),
                    None => format!("{n} never back"),
                })
                .collect();
            let _ = writeln!(
                s,
                "- {}{}{}: {}",
                f.record.fault,
                if down.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", down.join(", "))
                },
                if f.record.errors.is_empty() {
                    String::new()
                } else {
                    format!(" errors: {}", f.record.errors.join("; "))
                },
                if f.survived {
                    "survived"
                } else {
                    "NOT SURVIVED"
                }
            );
        }
        let _ = writeln!(s);
        let red_ok = self
            .store_checks
            .redundancy
            .iter()
            .filter(|(_, ok)| *ok)
            .count();
        let _ = writeln!(
            s,
            "base: verify --deep {} chunks, {} bad; store repair: {}; again: {}; with servers down at the tolerance ({} cases): verify --deep passed {}",
            self.store_checks.chunks,
            self.store_checks.bad_chunks,
            self.store_checks.repair,
            self.store_checks.repair_again,
            self.store_checks.redundancy.len(),
            red_ok
        );
        if !self.problems.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "problems:");
            for p in &self.problems {
                let _ = writeln!(s, "- {p}");
            }
        }
        s
    }
}
