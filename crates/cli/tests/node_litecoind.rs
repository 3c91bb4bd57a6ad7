//! A real node end to end: litecoind (Debian's, regtest) builds a chain, stops, becomes a base image in
//! our zdb server, and two nodes provisioned from it each mine further on their own ports: both reach
//! their heights, their chains diverge, and the base image still verifies, byte-identical. `node reset`
//! brings a node back to the base height; `node promote` makes an image a third node starts from at the
//! promoted height.

mod common;
mod node_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok_text, BIN};
use node_common::{node, NodesGuard};
use testkit::{free_port, fuse_available, ChildGuard, ZdbProcess};

const BASE_HEIGHT: u64 = 200;

/// litecoin-cli against the node whose data dir is `data` and RPC port `rpc`.
fn cli(data: &Path, rpc: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("litecoin-cli")
        .arg("-regtest")
        .arg(format!("-datadir={}", data.display()))
        .arg(format!("-rpcport={rpc}"))
        .args(args)
        .output()
        .map_err(|e| format!("run litecoin-cli: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn cli_ok(data: &Path, rpc: u16, args: &[&str]) -> String {
    cli(data, rpc, args).unwrap_or_else(|e| panic!("litecoin-cli {args:?}: {e}"))
}

/// Waits until the node answers RPC; returns its block count.
fn wait_rpc(data: &Path, rpc: u16) -> u64 {
    let start = Instant::now();
    loop {
        if let Ok(h) = cli(data, rpc, &["getblockcount"]) {
            return h.parse().expect("block count");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "node on RPC port {rpc} never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The data dir and RPC port of a running node, from `node ls --json`.
fn node_endpoint(state: &Path, name: &str) -> (PathBuf, u16) {
    let ls: serde_json::Value =
        serde_json::from_str(&node(state, &["ls", "--json"])).expect("json");
    let entry = ls
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .expect("listed");
    assert_eq!(entry["state"], "running", "{entry}");
    let data = PathBuf::from(entry["data_dir"].as_str().expect("data_dir"));
    let rpc = entry["ports"]["2"].as_u64().expect("rpc port") as u16;
    (data, rpc)
}

const LITECOIND: [&str; 7] = [
    "litecoind",
    "-regtest",
    "-datadir={data}",
    "-port={port:1}",
    "-rpcport={port:2}",
    "-disablewallet",
    "-connect=0",
];

fn start_node(state: &Path, name: &str) -> (PathBuf, u16) {
    let mut args = vec!["start", name, "--"];
    args.extend_from_slice(&LITECOIND);
    args.push("-printtoconsole");
    println!("{}", node(state, &args));
    let (data, rpc) = node_endpoint(state, name);
    let t = Instant::now();
    let h = wait_rpc(&data, rpc);
    println!(
        "{name}: RPC answered in {} ms at height {h}",
        t.elapsed().as_millis()
    );
    (data, rpc)
}

fn file_hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).expect("read image"))
}

#[test]
fn litecoind_nodes_from_one_base_diverge_reset_and_promote() {
    if !fuse_available("litecoind_nodes_from_one_base_diverge_reset_and_promote")
        || !litecoind_available()
    {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let zdb = ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join("zdb"), &[]);

    // 1. A regtest chain of BASE_HEIGHT blocks, then stop it.
    let chain = tmp.path().join("chain");
    let (addr1, addr2, base_tip) = regtest_chain(&chain, BASE_HEIGHT);

    // 2. The base image: the wallet is a secret, so it is refused, then stripped.
    let img = tmp.path().join("ltc.img");
    let img_s = img.to_str().expect("utf-8");
    let store = zdb.url("default");
    let height = BASE_HEIGHT.to_string();
    let base_args = [
        "base",
        "create",
        chain.to_str().expect("utf-8"),
        "--store",
        &store,
        "--out",
        img_s,
        "--chain",
        "litecoin-regtest",
        "--height",
        &height,
        "--block-hash",
        &base_tip,
    ];
    let refused = common::run(&base_args);
    assert!(
        !refused.status.success(),
        "a data dir with a wallet is refused"
    );
    assert!(
        common::text(&refused).contains("wallets"),
        "{}",
        common::text(&refused)
    );
    println!(
        "{}",
        ok_text(&[&base_args[..], &["--strip-secrets"]].concat())
    );
    let inspect = ok_text(&["inspect", img_s]);
    assert!(inspect.contains("leveldb"), "db kind detected: {inspect}");
    let image_hash = file_hash(&img);

    // 3. Two nodes, each on its own ports, mining to different addresses.
    let state = tmp.path().join("state");
    let _nodes = NodesGuard::new(&state);
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().expect("utf-8");
    let mut tips = Vec::new();
    for (name, blocks, addr) in [("n1", 10u64, &addr1), ("n2", 15, &addr2)] {
        let created = node(
            &state,
            &["create", name, "--image", img_s, "--cache", cache_s],
        );
        assert!(
            created.contains("peers.dat"),
            "the base's peers.dat is hidden: {created}"
        );
        let (data, rpc) = start_node(&state, name);
        assert_eq!(
            cli_ok(&data, rpc, &["getblockcount"]),
            height,
            "{name} starts at the base height"
        );
        cli_ok(
            &data,
            rpc,
            &["generatetoaddress", &blocks.to_string(), addr],
        );
        let h: u64 = cli_ok(&data, rpc, &["getblockcount"])
            .parse()
            .expect("height");
        assert_eq!(h, BASE_HEIGHT + blocks, "{name} reached its new height");
        tips.push(cli_ok(
            &data,
            rpc,
            &["getblockhash", &(BASE_HEIGHT + 1).to_string()],
        ));
    }
    assert_ne!(tips[0], tips[1], "the two chains diverge after the base");
    println!("{}", node(&state, &["ls"]));

    // 4. The base image is untouched and still verifies chunk by chunk.
    for name in ["n1", "n2"] {
        node(&state, &["stop", name]);
    }
    assert_eq!(file_hash(&img), image_hash, "base image byte-identical");
    println!("{}", ok_text(&["verify", img_s, "--deep"]));

    // 5. reset: n1 is back at the base height.
    node(&state, &["reset", "n1"]);
    let (data, rpc) = start_node(&state, "n1");
    assert_eq!(
        cli_ok(&data, rpc, &["getblockcount"]),
        height,
        "n1 back at the base height"
    );
    assert_eq!(cli_ok(&data, rpc, &["getbestblockhash"]), base_tip);
    node(&state, &["stop", "n1"]);

    // 6. promote n2 (base + its 15 blocks) into a new image; n3 starts from it at that height.
    let promoted = tmp.path().join("ltc-215.img");
    let promoted_height = (BASE_HEIGHT + 15).to_string();
    let summary = node(
        &state,
        &[
            "promote",
            "n2",
            "--out",
            promoted.to_str().expect("utf-8"),
            "--height",
            &promoted_height,
            "--json",
        ],
    );
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("json");
    let uploaded = summary["pack"]["bytes_uploaded"]
        .as_u64()
        .expect("uploaded");
    let stored = summary["pack"]["bytes_stored"].as_u64().expect("stored");
    println!("promote uploaded {uploaded} of {stored} stored bytes");
    assert!(
        uploaded < stored,
        "only chunks the store lacked were uploaded"
    );
    node(
        &state,
        &[
            "create",
            "n3",
            "--image",
            promoted.to_str().expect("utf-8"),
            "--cache",
            cache_s,
        ],
    );
    let (data, rpc) = start_node(&state, "n3");
    assert_eq!(
        cli_ok(&data, rpc, &["getblockcount"]),
        promoted_height,
        "n3 at the promoted height"
    );
    node(&state, &["stop", "n3"]);
    println!("{}", node(&state, &["ls"]));
    for name in ["n1", "n2", "n3"] {
        node(&state, &["rm", name]);
    }
}

/// Builds a stopped regtest chain of `height` blocks in `chain` (with a wallet `miner`); returns two of
/// its addresses (blocks were mined to the first) and the tip's hash.
fn regtest_chain(chain: &Path, height: u64) -> (String, String, String) {
    std::fs::create_dir_all(chain).expect("mkdir");
    let rpc = free_port();
    let mut litecoind = ChildGuard::new(
        Command::new("litecoind")
            .arg("-regtest")
            .arg(format!("-datadir={}", chain.display()))
            .arg(format!("-port={}", free_port()))
            .arg(format!("-rpcport={rpc}"))
            .arg("-fallbackfee=0.0001")
            .stdout(Stdio::null())
            .spawn()
            .expect("start litecoind"),
    );
    wait_rpc(chain, rpc);
    cli_ok(chain, rpc, &["createwallet", "miner"]);
    let addr1 = cli_ok(chain, rpc, &["getnewaddress"]);
    let addr2 = cli_ok(chain, rpc, &["getnewaddress"]);
    cli_ok(
        chain,
        rpc,
        &["generatetoaddress", &height.to_string(), &addr1],
    );
    let tip = cli_ok(chain, rpc, &["getbestblockhash"]);
    cli_ok(chain, rpc, &["stop"]);
    assert!(
        litecoind.terminate(Duration::from_secs(60)).is_some(),
        "litecoind stopped"
    );
    (addr1, addr2, tip)
}

/// Whether litecoind can run here (a missing one fails under CI=true).
fn litecoind_available() -> bool {
    if Command::new("litecoind")
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var("CI").map(|v| v != "true").unwrap_or(true),
        "litecoind is missing and CI=true forbids skipping (scripts/setup.sh installs it)"
    );
    eprintln!("SKIP: litecoind is not installed (scripts/setup.sh installs it)");
    false
}

/// A regtest chain packed as a ThreeFold flist (`pack --format fl` into our zdb server) provisions a node
/// on each layer kind: each starts at the packed height and mines on.
#[test]
fn litecoind_nodes_from_an_flist_on_each_layer_kind() {
    if !fuse_available("litecoind_nodes_from_an_flist_on_each_layer_kind") || !litecoind_available()
    {
        return;
    }
    const HEIGHT: u64 = 60;
    let tmp = tempfile::tempdir().expect("tempdir");
    let zdb = ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join("zdb"), &[]);
    let chain = tmp.path().join("chain");
    let (addr, _, _) = regtest_chain(&chain, HEIGHT);
    // The wallet is the packer's secret; the nodes run without one.
    std::fs::remove_dir_all(chain.join("regtest/wallets")).expect("remove wallets");
    let fl = tmp.path().join("ltc.fl");
    let fl_s = fl.to_str().expect("utf-8");
    println!(
        "{}",
        ok_text(&[
            "pack",
            chain.to_str().expect("utf-8"),
            "--format",
            "fl",
            "--store",
            &zdb.url("default"),
            "--out",
            fl_s,
            "--label",
            "chain=litecoin-regtest",
        ])
    );
    let inspect = ok_text(&["inspect", fl_s]);
    assert!(inspect.contains("rfs flist"), "{inspect}");

    let state = tmp.path().join("state");
    let _nodes = NodesGuard::new(&state);
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().expect("utf-8");
    for (name, kind) in [("fl-overlay", "overlay"), ("fl-blocks", "blocks")] {
        node(
            &state,
            &[
                "create",
                name,
                "--image",
                fl_s,
                "--layer-kind",
                kind,
                "--cache",
                cache_s,
            ],
        );
        let (data, rpc) = start_node(&state, name);
        assert_eq!(
            cli_ok(&data, rpc, &["getblockcount"]),
            HEIGHT.to_string(),
            "{name} starts at the flist's height"
        );
        cli_ok(&data, rpc, &["generatetoaddress", "5", &addr]);
        assert_eq!(
            cli_ok(&data, rpc, &["getblockcount"]),
            (HEIGHT + 5).to_string(),
            "{name} mines on"
        );
        node(&state, &["stop", name]);
        node(&state, &["rm", name]);
    }
    println!("{}", ok_text(&["verify", fl_s, "--deep"]));
}
