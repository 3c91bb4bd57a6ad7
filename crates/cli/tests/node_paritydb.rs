//! A Polkadot-like node end to end: the ParityDB harness (`paritydb-harness extend` / `verify`) is the
//! node process of several nodes started from one base image; each node's writes stay in its own
//! layer, which stays small (block-level layer; kernel overlayfs copies ParityDB's files up whole).

mod common;
mod node_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok_text, BIN};
use node_common::{node, node_entry, NodesGuard};
use testkit::fuse_available;

/// The `paritydb-harness` binary, built next to `thinnode` (built here when missing).
fn harness_binary() -> PathBuf {
    let dir = Path::new(BIN).parent().expect("bin dir");
    let path = dir.join("paritydb-harness");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "paritydb-harness"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building paritydb-harness failed");
    }
    path
}

/// Runs `harness ARGS` as node `name`'s command and waits for it to end; returns the final state.
fn run_as_node(state: &Path, name: &str, harness: &Path, args: &[&str]) -> String {
    let mut full = vec!["start", name, "--", harness.to_str().expect("utf-8")];
    full.extend_from_slice(args);
    node(state, &full);
    let start = Instant::now();
    loop {
        let e = node_entry(state, name);
        if e["state"] != "running" {
            return e["state"].as_str().unwrap_or("").to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{name} did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn paritydb_nodes_from_one_base_keep_small_layers() {
    if !fuse_available("paritydb_nodes_from_one_base_keep_small_layers") {
        return;
    }
    let harness = harness_binary();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base_dir = tmp.path().join("polkadot");
    let db_rel = "chains/dev/db/full";
    let db = base_dir.join(db_rel);
    std::fs::create_dir_all(&db).expect("mkdir");
    let built = paritydb_harness::build(&db, 48 << 20, 5).expect("build ParityDB");
    println!("base ParityDB: {built:?}");
    let db_bytes = dir_bytes(&db);

    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("dot.img");
    let img_s = img.to_str().expect("utf-8");
    let created = ok_text(&[
        "base",
        "create",
        base_dir.to_str().expect("utf-8"),
        "--store",
        &store,
        "--out",
        img_s,
        "--chain",
        "dev",
    ]);
    assert!(created.contains("db_type=paritydb"), "{created}");

    let state = tmp.path().join("state");
    let _nodes = NodesGuard::new(&state);
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().expect("utf-8");
    // ParityDB needs the blocks layer (overlayfs would copy every table file up on open).
    let kind = "blocks";
    for name in ["p1", "p2", "p3"] {
        let out = common::run(&[
            "node",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "create",
            name,
            "--image",
            img_s,
            "--cache",
            cache_s,
            "--layer-kind",
            kind,
        ]);
        assert!(out.status.success(), "{}", common::text(&out));
    }
    let db_arg = format!("{{data}}/{db_rel}");
    for (name, fraction) in [("p1", "0.001"), ("p2", "0.002"), ("p3", "0.001")] {
        let end = run_as_node(
            &state,
            name,
            &harness,
            &["extend", &db_arg, "--fraction", fraction],
        );
        assert_eq!(end, "stopped", "{name}: extend exited 0");
        let end = run_as_node(&state, name, &harness, &["verify", &db_arg]);
        assert_eq!(
            end, "stopped",
            "{name}: every key verified through its layer"
        );
    }
    println!("{}", node(&state, &["ls"]));
    for name in ["p1", "p2", "p3"] {
        let layer = node_entry(&state, name)["layer_bytes"]
            .as_u64()
            .expect("layer bytes");
        let pct = 100.0 * layer as f64 / db_bytes as f64;
        println!("{name}: {kind} layer {layer} bytes = {pct:.1}% of the {db_bytes}-byte database");
        assert!(layer > 0, "{name}: its writes are in its layer");
        assert!(
            pct < 10.0,
            "{name}: a block layer keeps only written blocks ({pct:.1}%)"
        );
    }
    // The base database itself is untouched and still complete.
    let base = paritydb_harness::open(&db).expect("open base");
    paritydb_harness::verify(&base, &db).expect("base verifies");
}

/// Bytes allocated by the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        if let Ok(m) = entry.metadata() {
            total += if m.is_dir() {
                dir_bytes(&entry.path())
            } else {
                m.blocks() * 512
            };
        }
    }
    total
}
