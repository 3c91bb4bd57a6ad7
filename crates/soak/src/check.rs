//! The checks at the end of a soak. What "consistent" means here:
//!
//! - **chain**: the node answers, every block it acknowledged (mined, then reported durable by a
//!   flush) is still there with the same bytes, and `verifychain 4 0` passes at the height it reached;
//! - **wallet**: the wallet `soak` is loaded, and a rescan of the node's own blocks leaves its balance
//!   unchanged (the wallet file agrees with the chain);
//! - **layer**: `node stop` stops the node cleanly, `thinnode layer du` measures the layer (it holds
//!   files, and no more than the base's size plus what the node wrote can explain), `node start` brings
//!   it back at the same tip, and every file of the data dir reads to its end without an error;
//! - **base**: `verify --deep` fetches and checks every chunk of the base image;
//! - **redundancy**: `store repair` succeeds, a second repair finds nothing degraded, and then with any
//!   set of servers at the store's tolerance down (`Tolerance::worst_cases`: any two of six for
//!   `disperse:4+2`, one replica of each range for the route) `verify --deep` still passes.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::chain::BaseChain;
use crate::faults::FaultRecord;
use crate::load::NodeLoad;
use crate::nodes::ServiceManager;
use crate::report::{self, NodeReport, Report, StoreReport};
use crate::rpc::Rpc;
use crate::Soak;

/// Runs every end check and builds the report (`soak_start`: log time at which the soak phase began).
pub fn finish(
    soak: &Soak,
    base: &BaseChain,
    loads: &[NodeLoad],
    manager: &ServiceManager,
    records: Vec<FaultRecord>,
    soak_start: Duration,
) -> anyhow::Result<Report> {
    let mut problems: Vec<String> = Vec::new();
    {
        let mut servers = soak.servers.lock();
        for s in servers.iter_mut() {
            if !s.serving() {
                problems.push(format!(
                    "zdb{} was not serving at the end; restarted",
                    s.index
                ));
                s.restart(&soak.owner)?;
            }
        }
    }
    let base_dir_bytes = dir_bytes(&base.dir);
    let mut nodes = Vec::new();
    for load in loads {
        let (node, mut node_problems) = check_node(soak, base, load, base_dir_bytes);
        problems.append(&mut node_problems);
        nodes.push(node);
    }
    let store = check_store(soak, &mut problems);
    let report = report::build(report::Inputs {
        soak,
        base,
        loads,
        manager,
        records,
        soak_start,
        nodes,
        store,
        problems,
    });
    Ok(report)
}

/// Apparent bytes of the files below `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn check_node(
    soak: &Soak,
    base: &BaseChain,
    load: &NodeLoad,
    base_dir_bytes: u64,
) -> (NodeReport, Vec<String>) {
    let name = &load.name;
    let mut problems = Vec::new();
    let mut node = NodeReport {
        name: name.clone(),
        layer: soak
            .config
            .layers
            .get(load.index)
            .cloned()
            .unwrap_or_default(),
        ..NodeReport::default()
    };
    let rpc = Rpc::new(load.rpc_port, Duration::from_secs(60));
    let slow = Rpc::new(load.rpc_port, Duration::from_secs(1800));
    if let Err(e) = crate::wait_rpc(&rpc, Duration::from_secs(60)) {
        problems.push(format!("{name}: does not answer RPC after the soak: {e:#}"));
        return (node, problems);
    }
    let log = &soak.log;
    let mut step = |what: &str, r: anyhow::Result<()>| match r {
        Ok(()) => log.line(format!("{name}: {what}: ok")),
        Err(e) => {
            log.line(format!("{name}: {what}: FAILED: {e:#}"));
            problems.push(format!("{name}: {what}: {e:#}"));
        }
    };
    step(
        "acknowledged blocks",
        load.check_acked(&rpc, &soak.log, true).map(|_| ()),
    );
    let t = Instant::now();
    step(
        "verifychain 4 0",
        (|| {
            node.height = rpc.height()?;
            node.tip = rpc
                .call("getbestblockhash", json!([]))?
                .as_str()
                .unwrap_or("")
                .to_string();
            let ok = slow.call("verifychain", json!([4, 0]))?;
            node.verifychain = ok.as_bool() == Some(true);
            anyhow::ensure!(node.verifychain, "verifychain answered {ok}");
            Ok(())
        })(),
    );
    node.verifychain_ms = t.elapsed().as_millis() as u64;
    step(
        "wallet",
        (|| {
            let wallet = slow.wallet("soak");
            let info = wallet.call("getwalletinfo", json!([]))?;
            let before = wallet.call("getbalance", json!([]))?;
            wallet.call("rescanblockchain", json!([base.height() + 1]))?;
            let after = wallet.call("getbalance", json!([]))?;
            node.wallet = format!("{} txs, balance {before}", info["txcount"]);
            anyhow::ensure!(
                before == after,
                "balance {before} before a rescan, {after} after"
            );
            Ok(())
        })(),
    );
    load.paused
        .store(true, std::sync::atomic::Ordering::Relaxed);
    step(
        "clean stop, layer du, start at the same tip, every file read",
        (|| {
            let stopped = soak.cli.run(&["stop", name]).context("node stop")?;
            anyhow::ensure!(
                !stopped.contains("signal"),
                "the clean stop ended the node by a signal: {}",
                stopped.trim()
            );
            let layer = soak.cli.state.join("nodes").join(name).join("layer");
            let du = soak.thinnode(&["layer", "du", layer.to_str().context("UTF-8")?, "--json"])?;
            let du: serde_json::Value = serde_json::from_str(&du).context("layer du --json")?;
            node.layer_bytes = du["allocated_bytes"].as_u64().unwrap_or(0);
            node.layer_files = du["files"].as_u64().unwrap_or(0);
            let mined = load.stats.lock().bytes_acked;
            let bound = 2 * base_dir_bytes + 100 * mined + (512 << 20);
            anyhow::ensure!(
                node.layer_files > 0 && node.layer_bytes > 0,
                "layer du finds nothing in the layer: {du}"
            );
            anyhow::ensure!(
                node.layer_bytes <= bound,
                "the layer holds {} bytes, more than the base ({base_dir_bytes} bytes) and the node's writes explain",
                node.layer_bytes
            );
            let t = Instant::now();
            soak.cli
                .run(&["start", name])
                .context("node start after a clean stop")?;
            let h = crate::wait_rpc(&rpc, Duration::from_secs(180))?;
            node.restart_ms = t.elapsed().as_millis() as u64;
            let tip = rpc.call("getbestblockhash", json!([]))?;
            anyhow::ensure!(
                h == node.height && tip.as_str() == Some(node.tip.as_str()),
                "after a clean stop and start the node is at {h} {tip}, not {} {}",
                node.height,
                node.tip
            );
            rpc.wallet("soak")
                .call("getwalletinfo", json!([]))
                .context("wallet after restart")?;
            let data = soak.cli.entry(name)?.data_dir;
            let (files, bytes) = crate::nodes::read_tree(&data)?;
            node.files_read = files;
            node.bytes_read = bytes;
            let stopped = soak.cli.run(&["stop", name]).context("node stop")?;
            anyhow::ensure!(
                !stopped.contains("signal"),
                "the second clean stop ended the node by a signal: {}",
                stopped.trim()
            );
            node.layer_ok = true;
            Ok(())
        })(),
    );
    let stats = load.stats.lock();
    for p in &stats.wallet_problems {
        problems.push(format!("{name}: wallet during the soak: {p}"));
    }
    (node, problems)
}

fn verify_deep(soak: &Soak) -> anyhow::Result<(u64, u64)> {
    let image = soak.image.to_str().context("UTF-8")?;
    let out = std::process::Command::new(&soak.config.thinnode)
        .args(["verify", image, "--deep", "--json"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "verify --deep: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    Ok((
        v["chunks_checked"].as_u64().unwrap_or(0),
        v["bad_chunks"].as_u64().unwrap_or(u64::MAX),
    ))
}

fn check_store(soak: &Soak, problems: &mut Vec<String>) -> StoreReport {
    let mut store = StoreReport::default();
    match verify_deep(soak) {
        Ok((checked, bad)) => {
            store.chunks = checked;
            store.bad_chunks = bad;
            if bad != 0 {
                problems.push(format!(
                    "base: verify --deep finds {bad} bad chunks of {checked}"
                ));
            }
        }
        Err(e) => problems.push(format!("base: verify --deep: {e:#}")),
    }
    soak.log.line(format!(
        "base: verify --deep: {} chunks, {} bad",
        store.chunks, store.bad_chunks
    ));
    match soak.repair().and_then(|first| Ok((first, soak.repair()?))) {
        Ok((first, second)) => {
            soak.log
                .line(format!("store repair: {first}; again: {second}"));
            if !second.contains(" 0 degraded") {
                problems.push(format!("store repair leaves chunks degraded: {second}"));
            }
            store.repair = first;
            store.repair_again = second;
        }
        Err(e) => problems.push(format!("store repair: {e:#}")),
    }
    for down in soak.config.store.tolerance().worst_cases() {
        let names: Vec<String> = down.iter().map(|s| format!("zdb{s}")).collect();
        let names = names.join("+");
        {
            let mut servers = soak.servers.lock();
            for &s in &down {
                servers[s].kill();
            }
        }
        let result = verify_deep(soak);
        {
            let mut servers = soak.servers.lock();
            for &s in &down {
                if let Err(e) = servers[s].restart(&soak.owner) {
                    problems.push(format!("zdb{s} did not restart: {e:#}"));
                }
            }
        }
        let ok = matches!(result, Ok((c, 0)) if c > 0);
        soak.log.line(format!(
            "redundancy: {names} down: verify --deep {}",
            match &result {
                Ok((c, b)) => format!("{c} chunks, {b} bad"),
                Err(e) => format!("failed: {e:#}"),
            }
        ));
        if !ok {
            problems.push(format!(
                "redundancy: with {names} down, verify --deep fails: {result:?}"
            ));
        }
        store.redundancy.push((names, ok));
    }
    store
}
