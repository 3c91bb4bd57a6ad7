//! The load on each node while faults hit it: a worker that mines, sends wallet transactions, makes the
//! node flush (and then counts its blocks as acknowledged), and reads old blocks back to check every
//! byte; and a poller that measures when the node does not answer RPC.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};

use crate::chain::{BaseChain, BlockPrint};
use crate::procs::Log;
use crate::rpc::{block_bytes, Rpc};

/// Litecoin regtest: MWEB activates at this height, and the next block needs a peg-in (a payment to an
/// MWEB address) after the block before it.
const MWEB_PEGIN_HEIGHT: u64 = 431;

/// A block the node mined and then reported durable, now missing or different.
#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    /// When it was found missing (seconds since the soak started).
    pub found_at: f64,
    /// Height.
    pub height: u64,
    /// The acknowledged hash.
    pub hash: String,
    /// What the node has there now.
    pub now: String,
    /// The block's size.
    pub bytes: u64,
}

/// A block read back whose bytes were not the ones the node wrote or the base holds.
#[derive(Debug, Clone, Serialize)]
pub struct WrongRead {
    /// When (seconds since the soak started).
    pub at: f64,
    /// Height.
    pub height: u64,
    /// Base block or a block this node mined.
    pub source: &'static str,
    /// What differed.
    pub what: String,
    /// The block's size.
    pub bytes: u64,
}

/// An interval in which a node did not answer RPC.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Down {
    /// First unanswered poll (seconds since the soak started).
    pub from: f64,
    /// First answered poll after it; `None` if the node never answered again.
    pub to: Option<f64>,
}

/// Counters of a node's load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadStats {
    /// Blocks mined (answered by `generatetoaddress`).
    pub blocks_mined: u64,
    /// Blocks acknowledged durable.
    pub blocks_acked: u64,
    /// Bytes of those blocks.
    pub bytes_acked: u64,
    /// Wallet transactions sent.
    pub txs_sent: u64,
    /// Blocks read back and checked.
    pub reads: u64,
    /// Bytes of those blocks.
    pub read_bytes: u64,
    /// Checks of every acknowledged block after the node came back.
    pub rechecks: u64,
    /// Failed RPC calls of the worker.
    pub rpc_errors: u64,
    /// The last worker error, if any.
    pub last_error: Option<String>,
    /// Problems with the wallet (not loadable after a fault).
    pub wallet_problems: Vec<String>,
}

/// Everything the soak knows about one node while it runs.
pub struct NodeLoad {
    /// Index.
    pub index: usize,
    /// Name.
    pub name: String,
    /// RPC port.
    pub rpc_port: u16,
    /// Blocks this node mined and then reported durable, by height.
    pub acked: Mutex<BTreeMap<u64, BlockPrint>>,
    /// Acknowledged blocks found missing.
    pub losses: Mutex<Vec<Loss>>,
    /// Blocks read back wrong.
    pub wrong_reads: Mutex<Vec<WrongRead>>,
    /// RPC outages seen by the poller.
    pub downs: Mutex<Vec<Down>>,
    /// Counters.
    pub stats: Mutex<LoadStats>,
    /// Set while the node is deliberately stopped (the worker and poller pause).
    pub paused: AtomicBool,
    /// Whether the node answered the poller's last call.
    pub answering: AtomicBool,
}

impl NodeLoad {
    /// A node's load record.
    pub fn new(index: usize, name: &str, rpc_port: u16) -> NodeLoad {
        NodeLoad {
            index,
            name: name.to_string(),
            rpc_port,
            acked: Mutex::new(BTreeMap::new()),
            losses: Mutex::new(Vec::new()),
            wrong_reads: Mutex::new(Vec::new()),
            downs: Mutex::new(Vec::new()),
            stats: Mutex::new(LoadStats::default()),
            paused: AtomicBool::new(false),
            answering: AtomicBool::new(true),
        }
    }

    /// Compares every acknowledged block with what the node has at its height now (hash, and with
    /// `bytes` the block's bytes too); records and returns the losses.
    pub fn check_acked(&self, rpc: &Rpc, log: &Log, bytes: bool) -> anyhow::Result<Vec<Loss>> {
        let acked: Vec<(u64, BlockPrint)> = self
            .acked
            .lock()
            .iter()
            .map(|(h, b)| (*h, b.clone()))
            .collect();
        let tip = rpc.height()?;
        let mut lost = Vec::new();
        for group in acked.chunks(200) {
            let in_chain: Vec<&(u64, BlockPrint)> =
                group.iter().filter(|(h, _)| *h <= tip).collect();
            let params: Vec<Value> = in_chain.iter().map(|(h, _)| json!([h])).collect();
            let hashes = rpc.batch("getblockhash", &params)?;
            let mut now: BTreeMap<u64, String> = BTreeMap::new();
            for ((h, _), hash) in in_chain.iter().zip(&hashes) {
                now.insert(*h, hash.as_str().unwrap_or("?").to_string());
            }
            let mut same = Vec::new();
            for (h, print) in group {
                match now.get(h) {
                    Some(hash) if *hash == print.hash => same.push((*h, print)),
                    other => lost.push(Loss {
                        found_at: log.elapsed().as_secs_f64(),
                        height: *h,
                        hash: print.hash.clone(),
                        now: other
                            .cloned()
                            .unwrap_or_else(|| format!("nothing (tip {tip})")),
                        bytes: print.size,
                    }),
                }
            }
            if bytes && !same.is_empty() {
                let params: Vec<Value> = same.iter().map(|(_, p)| json!([p.hash, 0])).collect();
                let raws = rpc.batch("getblock", &params)?;
                for ((h, print), raw) in same.iter().zip(&raws) {
                    let got = BlockPrint::of(&print.hash, &block_bytes(raw)?);
                    if got != **print {
                        self.wrong_reads.lock().push(WrongRead {
                            at: log.elapsed().as_secs_f64(),
                            height: *h,
                            source: "mined",
                            what: format!(
                                "{} bytes differ from the {} acknowledged",
                                got.size, print.size
                            ),
                            bytes: print.size,
                        });
                    }
                }
            }
        }
        if !lost.is_empty() {
            // A lost block is counted once: it is no longer expected.
            let mut acked = self.acked.lock();
            for l in &lost {
                acked.remove(&l.height);
                log.line(format!(
                    "LOSS {}: acknowledged block {} at height {} is gone (now {})",
                    self.name, l.hash, l.height, l.now
                ));
            }
            self.losses.lock().extend(lost.iter().cloned());
        }
        self.stats.lock().rechecks += 1;
        Ok(lost)
    }
}

/// How the worker loads a node.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Pause between steps (one block mined per step).
    pub step: Duration,
    /// The node is made to flush (and its blocks acknowledged) at most this often.
    pub flush_every: Duration,
    /// Blocks read back and checked per step.
    pub reads_per_step: u32,
    /// Seed of the load's own choices.
    pub seed: u64,
}

/// The worker of one node: runs until `stop`.
pub fn worker(node: &NodeLoad, base: &BaseChain, spec: &LoadSpec, log: &Log, stop: &AtomicBool) {
    let rpc = Rpc::new(node.rpc_port, Duration::from_secs(60));
    let wallet = rpc.wallet("soak");
    let mut rng =
        ChaCha8Rng::seed_from_u64(spec.seed ^ (node.index as u64).wrapping_mul(0x9e37_79b9));
    let mut w = Worker {
        node,
        base,
        rpc: &rpc,
        wallet: &wallet,
        log,
        address: None,
        pending: Vec::new(),
        last_flush: Instant::now(),
        needs_recheck: true,
        wallet_ok: false,
    };
    while !stop.load(Ordering::Relaxed) {
        if node.paused.load(Ordering::Relaxed) {
            w.needs_recheck = true;
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match w.step(&mut rng, spec) {
            Ok(()) => std::thread::sleep(spec.step),
            Err(e) => {
                let mut stats = node.stats.lock();
                stats.rpc_errors += 1;
                stats.last_error = Some(format!("{e:#}"));
                drop(stats);
                w.needs_recheck = true;
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

struct Worker<'a> {
    node: &'a NodeLoad,
    base: &'a BaseChain,
    rpc: &'a Rpc,
    wallet: &'a Rpc,
    log: &'a Log,
    address: Option<String>,
    /// Blocks mined since the last flush: (height, hash).
    pending: Vec<(u64, String)>,
    last_flush: Instant,
    needs_recheck: bool,
    /// Whether the wallet is loaded (sends and the peg-in need it).
    wallet_ok: bool,
}

impl Worker<'_> {
    fn step(&mut self, rng: &mut ChaCha8Rng, spec: &LoadSpec) -> anyhow::Result<()> {
        if self.needs_recheck {
            self.recheck()?;
        }
        let height = self.rpc.height()?;
        let addr = self.address()?;
        if self.wallet_ok && height == MWEB_PEGIN_HEIGHT {
            let mweb = self.wallet.call("getnewaddress", json!(["", "mweb"]))?;
            self.wallet.call("sendtoaddress", json!([mweb, 1]))?;
            self.log.line(format!(
                "{}: MWEB peg-in at height {height}",
                self.node.name
            ));
        } else if self.wallet_ok
            && (self.base.miner_key.is_some() || height > self.base.height() + 101)
        {
            // Mature coins (the base's, or this node's own first coinbases): spend some of them.
            for _ in 0..rng.random_range(0..=3) {
                let amount = f64::from(rng.random_range(1..=50u32)) / 100.0;
                self.wallet.call("sendtoaddress", json!([addr, amount]))?;
                self.node.stats.lock().txs_sent += 1;
            }
        }
        let mined = self.rpc.call("generatetoaddress", json!([1, addr]))?;
        let hash = mined
            .get(0)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("generatetoaddress returned no block"))?;
        self.pending.push((height + 1, hash.to_string()));
        self.node.stats.lock().blocks_mined += 1;
        if self.last_flush.elapsed() >= spec.flush_every {
            self.flush()?;
        }
        for _ in 0..spec.reads_per_step {
            self.read_back(rng)?;
        }
        Ok(())
    }

    fn address(&mut self) -> anyhow::Result<String> {
        if let Some(a) = &self.address {
            return Ok(a.clone());
        }
        let a = self
            .wallet
            .call("getnewaddress", json!([]))?
            .as_str()
            .context("getnewaddress: not a string")?
            .to_string();
        self.address = Some(a.clone());
        Ok(a)
    }

    /// After the node was unreachable: its wallet loaded again, and every acknowledged block still there.
    fn recheck(&mut self) -> anyhow::Result<()> {
        self.rpc.height()?;
        let wallets = self.rpc.call("listwallets", json!([]))?;
        let loaded = wallets
            .as_array()
            .is_some_and(|w| w.iter().any(|n| n == "soak"));
        self.wallet_ok = loaded;
        if !loaded {
            match self.rpc.call("loadwallet", json!(["soak"])) {
                Ok(_) => self.wallet_ok = true,
                Err(e) => {
                    // Mining goes on without the wallet's transactions; the problem is reported.
                    let problem = format!("loadwallet soak: {e:#}");
                    self.log
                        .line(format!("{}: wallet: {problem}", self.node.name));
                    self.node.stats.lock().wallet_problems.push(problem);
                }
            }
        }
        self.pending.clear();
        self.node.check_acked(self.rpc, self.log, false)?;
        self.needs_recheck = false;
        Ok(())
    }

    /// Makes the node flush its block index and chainstate to disk (`gettxoutsetinfo` forces it), then
    /// acknowledges the blocks mined before the flush that it still holds.
    fn flush(&mut self) -> anyhow::Result<()> {
        let info = self.rpc.call("gettxoutsetinfo", json!(["none"]))?;
        let flushed = info["height"]
            .as_u64()
            .context("gettxoutsetinfo: no height")?;
        self.last_flush = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let covered: Vec<&(u64, String)> = pending.iter().filter(|(h, _)| *h <= flushed).collect();
        let params: Vec<Value> = covered.iter().map(|(_, hash)| json!([hash, 0])).collect();
        let raws = self.rpc.batch("getblock", &params)?;
        let hashes = self.rpc.batch(
            "getblockhash",
            &covered.iter().map(|(h, _)| json!([h])).collect::<Vec<_>>(),
        )?;
        let mut acked = self.node.acked.lock();
        let mut stats = self.node.stats.lock();
        for (((h, hash), raw), now) in covered.iter().zip(&raws).zip(&hashes) {
            if now.as_str() != Some(hash.as_str()) {
                continue;
            }
            let print = BlockPrint::of(hash, &block_bytes(raw)?);
            stats.blocks_acked += 1;
            stats.bytes_acked += print.size;
            acked.insert(*h, print);
        }
        Ok(())
    }

    /// Reads a random base block (and, once there are some, a random acknowledged block) and checks it
    /// byte for byte.
    fn read_back(&mut self, rng: &mut ChaCha8Rng) -> anyhow::Result<()> {
        let h = rng.random_range(0..self.base.blocks.len());
        let expected = self.base.blocks[h].clone();
        self.read_check(h as u64, &expected, "base")?;
        let mined = {
            let acked = self.node.acked.lock();
            if acked.is_empty() {
                None
            } else {
                let i = rng.random_range(0..acked.len());
                acked.iter().nth(i).map(|(h, p)| (*h, p.clone()))
            }
        };
        if let Some((h, print)) = mined {
            self.read_check(h, &print, "mined")?;
        }
        Ok(())
    }

    fn read_check(
        &self,
        height: u64,
        expected: &BlockPrint,
        source: &'static str,
    ) -> anyhow::Result<()> {
        let raw = self.rpc.call("getblock", json!([expected.hash, 0]))?;
        let got = BlockPrint::of(&expected.hash, &block_bytes(&raw)?);
        let mut stats = self.node.stats.lock();
        stats.reads += 1;
        stats.read_bytes += got.size;
        drop(stats);
        if got != *expected {
            self.log.line(format!(
                "WRONG BYTES {}: {source} block {} at height {height}: {} bytes, expected {}",
                self.node.name, expected.hash, got.size, expected.size
            ));
            self.node.wrong_reads.lock().push(WrongRead {
                at: self.log.elapsed().as_secs_f64(),
                height,
                source,
                what: format!(
                    "{} bytes with another digest, expected {}",
                    got.size, expected.size
                ),
                bytes: expected.size,
            });
        }
        Ok(())
    }
}

/// The poller of one node: `getblockcount` every `every`, each with a `timeout`; records outages.
pub fn poller(node: &NodeLoad, every: Duration, timeout: Duration, log: &Log, stop: &AtomicBool) {
    let rpc = Rpc::new(node.rpc_port, timeout);
    let mut down_since: Option<f64> = None;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        if node.paused.load(Ordering::Relaxed) {
            std::thread::sleep(every);
            continue;
        }
        let at = log.elapsed().as_secs_f64();
        let ok = rpc.height().is_ok();
        node.answering.store(ok, Ordering::Relaxed);
        match (ok, down_since) {
            (false, None) => {
                down_since = Some(at);
                log.line(format!("{}: RPC not answering", node.name));
            }
            (true, Some(from)) => {
                node.downs.lock().push(Down { from, to: Some(at) });
                log.line(format!(
                    "{}: RPC answering again after {:.1}s",
                    node.name,
                    at - from
                ));
                down_since = None;
            }
            _ => {}
        }
        if let Some(rest) = every.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    if let Some(from) = down_since {
        node.downs.lock().push(Down { from, to: None });
    }
}
