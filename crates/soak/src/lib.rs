//! A chaos soak of the whole thinnode stack, shared by `bench/soak.sh` (15 minutes, both store kinds)
//! and the short soak in `cargo test` (crates/cli/tests/soak.rs), so both run one implementation.
//!
//! A run: zdb servers behind a `disperse:4+2` or a two-replica `route:` store; a litecoind regtest base
//! chain packed into it with `thinnode base create`; litecoind nodes provisioned from that base with
//! `thinnode node create/start` (overlay and blocks layers, the host cache on a small loop-mounted ext4),
//! each mining, sending wallet transactions and reading old blocks back under a load worker, its RPC
//! polled to measure downtime; a service manager that starts crashed nodes again; and a fault injector
//! running a seeded schedule ([`schedule`]) of the faults in [`schedule::FaultKind`]. At the end
//! ([`check`]): every node's chain and wallet, every layer, the base image, `store repair` and the
//! store's redundancy are checked, and a [`report::Report`] is printed.
//!
//! This is a test harness, not a library for users: errors are `anyhow` errors for the person running
//! it, and it needs root, /dev/fuse, loop devices and litecoind.

#![deny(missing_docs)]

pub mod cachefs;
pub mod chain;
pub mod check;
pub mod faults;
pub mod load;
pub mod nodes;
pub mod procs;
pub mod report;
pub mod rpc;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;

use crate::cachefs::CacheFs;
use crate::chain::BaseChain;
use crate::faults::DropScope;
use crate::load::{LoadSpec, NodeLoad};
use crate::nodes::{NodeCli, ServiceManager};
use crate::procs::{Log, Owner, ZdbServer};
use crate::schedule::{FaultKind, ScheduleSpec, Tolerance};

/// The store the base's chunks live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `disperse:4+2` over six servers: any two may be down.
    Disperse,
    /// `route:` with two key ranges, each on two replicas (four servers): one replica of each range may
    /// be down.
    Route,
}

impl StoreKind {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Disperse => "disperse",
            StoreKind::Route => "route",
        }
    }

    /// Number of servers.
    pub fn servers(self) -> usize {
        match self {
            StoreKind::Disperse => 6,
            StoreKind::Route => 4,
        }
    }

    /// Which servers may be impaired at once.
    pub fn tolerance(self) -> Tolerance {
        match self {
            StoreKind::Disperse => Tolerance {
                groups: vec![((0..6).collect(), 2)],
            },
            StoreKind::Route => Tolerance {
                groups: vec![(vec![0, 1], 1), (vec![2, 3], 1)],
            },
        }
    }

    /// The store URL over `members` (server URLs in index order).
    pub fn url(self, members: &[String]) -> String {
        match self {
            StoreKind::Disperse => format!("disperse:4+2 {}", members.join(" ")),
            StoreKind::Route => {
                let ranges = ["00-7f", "00-7f", "80-ff", "80-ff"];
                let entries: Vec<String> = ranges
                    .iter()
                    .zip(members)
                    .map(|(r, m)| format!("{r}={m}"))
                    .collect();
                format!("route: {}", entries.join(" "))
            }
        }
    }
}

/// Where the base chain comes from.
#[derive(Debug, Clone)]
pub enum BaseSource {
    /// Mine this many blocks with a fresh wallet (small; for tests).
    Generate(u64),
    /// A stopped litecoind regtest data directory (e.g. made by bench/litecoin-chain.py); it is used in
    /// place (litecoind runs on it once to fingerprint its blocks) and packed.
    Dir(PathBuf),
}

/// Everything a soak run is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `thinnode` binary under test.
    pub thinnode: PathBuf,
    /// The work directory (created; everything of the run lives below it).
    pub work: PathBuf,
    /// The store kind.
    pub store: StoreKind,
    /// The base chain.
    pub base: BaseSource,
    /// Layer kind of each node (`overlay` or `blocks`); one node per entry.
    pub layers: Vec<String>,
    /// Length of the soak (load and faults), after setup.
    pub duration: Duration,
    /// The fault schedule's seed.
    pub seed: u64,
    /// The fault kinds to inject.
    pub kinds: Vec<FaultKind>,
    /// Shortest and longest gap between fault starts.
    pub gap: (Duration, Duration),
    /// Shortest and longest hold of lasting faults.
    pub hold: (Duration, Duration),
    /// No fault in the first part of the soak.
    pub warmup: Duration,
    /// No fault held into the last part of the soak.
    pub cooldown: Duration,
    /// Size of the host-cache filesystem.
    pub cache_fs_bytes: u64,
    /// The nodes' `--cache-size`.
    pub cache_size: u64,
    /// Where drop-caches drops.
    pub drop_scope: DropScope,
    /// The node load.
    pub load: LoadSpec,
    /// A node that does not answer RPC this long after the soak ends fails the run.
    pub recover_timeout: Duration,
}

impl Config {
    /// The settings of `bench/soak.sh` for `duration` (overridable field by field).
    pub fn bench(
        thinnode: &Path,
        work: &Path,
        store: StoreKind,
        duration: Duration,
        seed: u64,
    ) -> Config {
        Config {
            thinnode: thinnode.to_path_buf(),
            work: work.to_path_buf(),
            store,
            base: BaseSource::Generate(200),
            layers: vec!["overlay".into(), "blocks".into(), "overlay".into()],
            duration,
            seed,
            kinds: FaultKind::ALL.to_vec(),
            gap: (Duration::from_secs(4), Duration::from_secs(14)),
            hold: (Duration::from_secs(3), Duration::from_secs(20)),
            warmup: Duration::from_secs(15),
            cooldown: Duration::from_secs(30),
            cache_fs_bytes: 128 << 20,
            cache_size: 24 << 20,
            drop_scope: DropScope::Host,
            load: LoadSpec {
                step: Duration::from_millis(700),
                flush_every: Duration::from_secs(3),
                reads_per_step: 2,
                seed,
            },
            recover_timeout: Duration::from_secs(180),
        }
    }
}

/// A running soak: what the injector, the load and the checks share.
pub struct Soak {
    /// The settings.
    pub config: Config,
    /// The work directory.
    pub work: PathBuf,
    /// The log.
    pub log: Log,
    /// What must be cleaned up.
    pub owner: Arc<Owner>,
    /// The store servers, by index.
    pub servers: Mutex<Vec<ZdbServer>>,
    /// The store URL (as recorded in the image).
    pub store_url: String,
    /// The host-cache filesystem.
    pub cachefs: CacheFs,
    /// `thinnode node` for this run's state dir.
    pub cli: NodeCli,
    /// Node names, by index.
    pub names: Vec<String>,
    /// The base image.
    pub image: PathBuf,
    /// Where drop-caches drops.
    pub drop_scope: DropScope,
}

impl Soak {
    /// Runs `thinnode ARGS`; stdout on success, the failure with both streams otherwise.
    pub fn thinnode(&self, args: &[&str]) -> anyhow::Result<String> {
        thinnode(&self.config.thinnode, args)
    }

    /// `store repair` of the base image; a summary line, or the failure (an incomplete repair is one).
    pub fn repair(&self) -> anyhow::Result<String> {
        let run = self.repair_run()?;
        if !run.complete() {
            bail!("store repair incomplete: {}", run.text());
        }
        Ok(run.summary)
    }

    /// One `store repair` of the base image, complete or not; an error only when it could not run or
    /// gave no account of what it did.
    pub fn repair_run(&self) -> anyhow::Result<RepairRun> {
        let image = self.image.to_str().context("image path is not UTF-8")?;
        let out = procs::output_within(
            Command::new(&self.config.thinnode).args(["store", "repair", image, "--json"]),
            Duration::from_secs(1800),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "store repair --json ({}) printed no summary: {}",
                out.status,
                stderr.trim()
            )
        })?;
        let strings = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let run = RepairRun {
            summary: format!(
                "{} chunks checked, {} degraded, {} rewritten",
                v["chunks_checked"], v["chunks_degraded"], v["shards_rewritten"]
            ),
            failures: strings("failures"),
            unrecoverable: strings("unrecoverable"),
        };
        if run.complete() != out.status.success() {
            bail!(
                "store repair exited with {} but its summary says {}: {}",
                out.status,
                run.text(),
                stderr.trim()
            );
        }
        Ok(run)
    }
}

/// What one `store repair` did.
#[derive(Debug, Clone)]
pub struct RepairRun {
    /// Chunks checked, degraded and rewritten.
    pub summary: String,
    /// Members that could not be read or written (`URL: error`).
    pub failures: Vec<String>,
    /// Chunks that could not be rebuilt (hex ids).
    pub unrecoverable: Vec<String>,
}

impl RepairRun {
    /// Every chunk checked and rebuilt where needed, on every member.
    pub fn complete(&self) -> bool {
        self.failures.is_empty() && self.unrecoverable.is_empty()
    }

    /// The summary with what was left undone.
    pub fn text(&self) -> String {
        let mut s = self.summary.clone();
        if !self.unrecoverable.is_empty() {
            s.push_str(&format!("; {} unrecoverable", self.unrecoverable.len()));
        }
        for f in &self.failures {
            s.push_str(&format!("; member failed: {f}"));
        }
        s
    }
}

/// Set when the soak is interrupted: nothing new is started any more (the cleanup runs).
pub static ABORT: AtomicBool = AtomicBool::new(false);

/// Runs `thinnode ARGS` (binary `bin`); stdout on success. Killed after 30 minutes.
pub fn thinnode(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = procs::output_within(Command::new(bin).args(args), Duration::from_secs(1800))?;
    if !out.status.success() {
        bail!(
            "thinnode {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a whole soak (setup, load and faults, checks) and cleans up after it, whatever happens. The
/// report says whether everything held (`Report::passed`); an error means the soak could not run.
pub fn run(config: Config) -> anyhow::Result<report::Report> {
    std::fs::create_dir_all(&config.work)?;
    let work = config.work.canonicalize()?;
    let log = Log::create(&work.join("soak.log"))?;
    let state = work.join("state");
    let owner = Owner::create(&work, &config.thinnode, &state)?;
    let result = run_owned(&config, &work, log, owner);
    if let Err(e) = &result {
        println!("soak failed: {e:#}");
    }
    result
}

/// The fault schedule of a run with `config`.
pub fn schedule_of(config: &Config) -> Vec<schedule::Fault> {
    schedule::make(&ScheduleSpec {
        seed: config.seed,
        duration: config.duration,
        warmup: config.warmup,
        cooldown: config.cooldown,
        gap: config.gap,
        hold: config.hold,
        kinds: config.kinds.clone(),
        tolerance: config.store.tolerance(),
        nodes: config.layers.len(),
        node_quiet: Duration::from_secs(20),
        server_margin: Duration::from_secs(5),
    })
}

fn run_owned(
    config: &Config,
    work: &Path,
    log: Log,
    owner: Owner,
) -> anyhow::Result<report::Report> {
    let faults = schedule_of(config);
    log.line(format!(
        "soak: seed {}, store {}, {} nodes ({}), {} s, {} faults scheduled",
        config.seed,
        config.store.name(),
        config.layers.len(),
        config.layers.join(", "),
        config.duration.as_secs(),
        faults.len()
    ));
    for f in &faults {
        log.line(format!("  scheduled {f}"));
    }
    std::fs::write(
        work.join("schedule.json"),
        serde_json::to_string_pretty(&faults)?,
    )?;

    // Everything started from here on is stopped by `owner.cleanup()` below, whatever happens.
    let owner = Arc::new(owner);
    let result =
        setup(config, work, log, owner.clone()).and_then(|soak| soak_and_check(&soak, &faults));
    println!("soak: cleaning up");
    owner.cleanup();
    result
}

fn setup(
    config: &Config,
    work: &Path,
    log: Log,
    owner: Arc<Owner>,
) -> anyhow::Result<(Soak, BaseChain)> {
    let mut servers = Vec::new();
    for i in 0..config.store.servers() {
        servers.push(ZdbServer::start(
            &config.thinnode,
            i,
            &work.join(format!("zdb{i}")),
            &owner,
        )?);
    }
    let members: Vec<String> = servers.iter().map(ZdbServer::url).collect();
    let store_url = config.store.url(&members);
    log.line(format!("store: {store_url}"));
    let cachefs = CacheFs::create(work, config.cache_fs_bytes, &owner)?;
    let (chain_dir, generate) = match &config.base {
        BaseSource::Generate(n) => (work.join("chain"), Some(*n)),
        BaseSource::Dir(d) => (d.clone(), None),
    };
    let base = chain::prepare(&chain_dir, generate, &owner, &log)?;
    let image = work.join("base.img");
    let height = base.height().to_string();
    let t = std::time::Instant::now();
    thinnode(
        &config.thinnode,
        &[
            "base",
            "create",
            chain_dir.to_str().context("chain path is not UTF-8")?,
            "--store",
            &store_url,
            "--out",
            image.to_str().context("image path is not UTF-8")?,
            "--chain",
            "litecoin-regtest",
            "--height",
            &height,
            "--block-hash",
            base.tip(),
            "--db-type",
            "leveldb",
            "--strip-secrets",
        ],
    )?;
    log.line(format!(
        "base image packed into the store in {} ms",
        t.elapsed().as_millis()
    ));
    let cli = NodeCli {
        thinnode: config.thinnode.clone(),
        state: work.join("state"),
    };
    let names: Vec<String> = (0..config.layers.len()).map(|i| format!("n{i}")).collect();
    let soak = Soak {
        config: config.clone(),
        work: work.to_path_buf(),
        log,
        owner,
        servers: Mutex::new(servers),
        store_url,
        cachefs,
        cli,
        names,
        image,
        drop_scope: config.drop_scope,
    };
    start_nodes(&soak, &base)?;
    Ok((soak, base))
}

/// Creates and starts every node, and creates its wallet (holding the base miner's key, when known).
fn start_nodes(soak: &Soak, base: &BaseChain) -> anyhow::Result<()> {
    let image = soak.image.to_str().context("image path is not UTF-8")?;
    let cache = soak.cachefs.cache_dir();
    let cache = cache.to_str().context("cache path is not UTF-8")?;
    let cache_size = soak.config.cache_size.to_string();
    let command = nodes::litecoind_command();
    for (name, kind) in soak.names.iter().zip(&soak.config.layers) {
        let t = std::time::Instant::now();
        soak.cli.run(&[
            "create",
            name,
            "--image",
            image,
            "--layer-kind",
            kind,
            "--cache",
            cache,
            "--cache-size",
            &cache_size,
        ])?;
        let mut args: Vec<&str> = vec!["start", name, "--restart", "on-failure", "--"];
        args.extend(command.iter().map(String::as_str));
        soak.cli.run(&args)?;
        let port = rpc_port(soak, name)?;
        let rpc = rpc::Rpc::new(port, Duration::from_secs(60));
        wait_rpc(&rpc, Duration::from_secs(180))
            .with_context(|| format!("{name} never answered RPC"))?;
        rpc.call("createwallet", serde_json::json!(["soak"]))?;
        if let Some(key) = &base.miner_key {
            // importprivkey rescans the chain: the base's mature coinbases become spendable.
            rpc.wallet("soak")
                .call("importprivkey", serde_json::json!([key, "base", true]))?;
        }
        soak.log.line(format!(
            "{name} ({kind} layer) created, started and answering RPC on port {port} in {} ms",
            t.elapsed().as_millis()
        ));
    }
    Ok(())
}

/// The RPC port of node `name` (`{port:2}`).
pub fn rpc_port(soak: &Soak, name: &str) -> anyhow::Result<u16> {
    soak.cli
        .entry(name)?
        .ports
        .get("2")
        .copied()
        .with_context(|| format!("{name} has no RPC port recorded"))
}

/// Waits until `rpc` answers `getblockcount`.
pub fn wait_rpc(rpc: &rpc::Rpc, timeout: Duration) -> anyhow::Result<u64> {
    let t = std::time::Instant::now();
    loop {
        match rpc.height() {
            Ok(h) => return Ok(h),
            Err(e) if t.elapsed() > timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn soak_and_check(
    soak: &(Soak, BaseChain),
    faults: &[schedule::Fault],
) -> anyhow::Result<report::Report> {
    let (soak, base) = soak;
    let loads: Vec<NodeLoad> = soak
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| rpc_port(soak, name).map(|port| NodeLoad::new(i, name, port)))
        .collect::<anyhow::Result<_>>()?;
    let manager = ServiceManager::new(soak.names.len());
    let stop = AtomicBool::new(false);
    let stop_injector = AtomicBool::new(false);
    soak.log.line(format!(
        "soak: load and faults for {} s",
        soak.config.duration.as_secs()
    ));
    let soak_start = soak.log.elapsed();
    let records = std::thread::scope(|scope| {
        for load in &loads {
            let stop = &stop;
            scope.spawn(move || load::worker(load, base, &soak.config.load, &soak.log, stop));
            scope.spawn(move || {
                load::poller(
                    load,
                    Duration::from_millis(200),
                    Duration::from_secs(2),
                    &soak.log,
                    stop,
                )
            });
        }
        let (manager, stop_ref) = (&manager, &stop);
        scope.spawn(move || manager.run(&soak.cli, &soak.names, &soak.log, stop_ref));
        // The schedule counts from the start of this phase; everything is recorded in log time.
        let injector = scope.spawn(|| faults::inject(soak, faults, soak_start, &stop_injector));
        let end = soak_start + soak.config.duration;
        while soak.log.elapsed() < end && !ABORT.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop_injector.store(true, Ordering::Relaxed);
        let records = injector.join().unwrap_or_default();
        // The load goes on until every node answers again (or the recovery timeout passes).
        soak.log
            .line("soak: time is up; waiting until every node answers");
        let t = std::time::Instant::now();
        while t.elapsed() < soak.config.recover_timeout
            && loads.iter().any(|l| !l.answering.load(Ordering::Relaxed))
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        records
    });
    check::finish(soak, base, &loads, &manager, records, soak_start)
}
