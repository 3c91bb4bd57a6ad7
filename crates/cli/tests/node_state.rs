//! `thinnode base create` and `thinnode node` state handling, end to end with the real binary, a real
//! zdb server and real FUSE/overlay mounts: secret refusal with nothing uploaded, `--strip-secrets`,
//! refusal of a directory a running process holds, a fresh identity per node, restart policies, and
//! `node ls` after `kill -9` of a supervisor.

mod common;
mod node_common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ok_stdout, ok_text, run, text, BIN};
use node_common::{node, node_entry, node_ls, NodesGuard};
use testkit::{fuse_available, ZdbProcess};

/// Number of keys in the zdb server's default namespace (RESP `DBSIZE`).
fn zdb_key_count(port: u16) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect zdb");
    s.write_all(b"*1\r\n$6\r\nDBSIZE\r\n").expect("send DBSIZE");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("read DBSIZE");
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("unexpected DBSIZE reply {reply:?}"))
}

/// A Substrate-shaped data dir with a network key, a keystore, a wallet and peer state.
fn node_data_dir(root: &Path) -> PathBuf {
    let data = root.join("data");
    let chain = data.join("chains/testnet");
    fs::create_dir_all(chain.join("db/full")).expect("mkdir");
    fs::create_dir_all(chain.join("network")).expect("mkdir");
    fs::create_dir_all(chain.join("keystore")).expect("mkdir");
    fs::write(chain.join("db/full/metadata"), b"meta").expect("write");
    fs::write(chain.join("db/full/index_00_16"), vec![1u8; 300_000]).expect("write");
    fs::write(chain.join("network/secret_ed25519"), [42u8; 32]).expect("write");
    fs::write(chain.join("keystore/61757261"), b"\"0xsecretseed\"").expect("write");
    fs::create_dir_all(data.join("regtest")).expect("mkdir");
    fs::write(data.join("regtest/peers.dat"), b"peers of the base").expect("write");
    fs::write(data.join("regtest/wallet.dat"), b"wallet").expect("write");
    fs::write(data.join("operator.key"), b"key").expect("write");
    data
}

#[test]
fn base_create_refuses_secrets_and_uploads_nothing_then_strips_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zdb = ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join("zdb"), &[]);
    let data = node_data_dir(tmp.path());
    let img = tmp.path().join("base.img");
    let store = zdb.url("default");
    let data_s = data.to_str().expect("utf-8");
    let img_s = img.to_str().expect("utf-8");

    let out = run(&[
        "base",
        "create",
        data_s,
        "--store",
        &store,
        "--out",
        img_s,
        "--chain",
        "testnet",
        "--secret-path",
        "operator.key",
    ]);
    let msg = text(&out);
    println!("{msg}");
    assert!(!out.status.success(), "secrets must be refused");
    for offending in [
        "chains/testnet/keystore",
        "chains/testnet/network/secret_ed25519",
        "regtest/wallet.dat",
        "operator.key",
    ] {
        assert!(
            msg.contains(offending),
            "the error names {offending}: {msg}"
        );
    }
    assert!(!img.exists(), "no image written");
    assert_eq!(zdb_key_count(zdb.port), 0, "nothing uploaded");

    let summary = ok_stdout(&[
        "base",
        "create",
        data_s,
        "--store",
        &store,
        "--out",
        img_s,
        "--chain",
        "testnet",
        "--height",
        "7",
        "--secret-path",
        "operator.key",
        "--strip-secrets",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("json");
    assert_eq!(summary["stripped"].as_array().map(|a| a.len()), Some(4));
    assert_eq!(summary["db_type"], "paritydb");
    assert!(
        zdb_key_count(zdb.port) > 0,
        "the stripped image was uploaded"
    );
    assert!(
        data.join("chains/testnet/network/secret_ed25519").exists(),
        "the source keeps its secrets"
    );
    assert!(data.join("operator.key").exists());

    let inspect = ok_text(&["inspect", img_s]);
    assert!(
        inspect.contains("testnet") && inspect.contains("paritydb"),
        "labels: {inspect}"
    );
    let restored = tmp.path().join("restored");
    ok_text(&["unpack", img_s, restored.to_str().expect("utf-8")]);
    assert!(restored
        .join("chains/testnet/db/full/index_00_16")
        .is_file());
    assert!(restored.join("chains/testnet/network").is_dir());
    for gone in [
        "chains/testnet/network/secret_ed25519",
        "chains/testnet/keystore",
        "regtest/wallet.dat",
        "operator.key",
    ] {
        assert!(
            !restored.join(gone).exists(),
            "{gone} left out of the image"
        );
    }
    assert!(
        !tmp.path().read_dir().expect("ls").any(|e| e
            .map(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with(".thinnode-strip"))
            .unwrap_or(false)),
        "no strip view left behind"
    );
}

#[test]
fn base_create_refuses_a_directory_a_running_node_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("db");
    fs::create_dir_all(&data).expect("mkdir");
    fs::write(data.join("CURRENT"), b"MANIFEST-000001\n").expect("write");
    fs::write(data.join("MANIFEST-000001"), b"").expect("write");
    let lock = data.join("LOCK");
    fs::write(&lock, b"").expect("write");
    // A process holding the LOCK file the way LevelDB does (fcntl write lock), then sleeping.
    let script = "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)";
    let mut holder = std::process::Command::new("python3")
        .args(["-c", script, lock.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut line = [0u8; 6];
    holder
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("holder locked");
    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("x.img");
    let args = [
        "base",
        "create",
        data.to_str().expect("utf-8"),
        "--store",
        &store,
        "--out",
        img.to_str().expect("utf-8"),
        "--chain",
        "x",
    ];
    let out = run(&args);
    let _ = holder.kill();
    let _ = holder.wait();
    let msg = text(&out);
    println!("{msg}");
    assert!(!out.status.success());
    assert!(msg.contains("in use") && msg.contains("LOCK"), "{msg}");
    assert!(!img.exists());
    // Once the holder is gone the same directory packs, labelled as LevelDB.
    let summary = ok_stdout(&[&args[..], &["--json"]].concat());
    assert!(summary.contains("\"leveldb\""), "{summary}");
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
    let p = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(p.as_ref()))
}

#[test]
fn nodes_get_their_own_identity_and_ls_survives_kill_9_of_a_supervisor() {
    if !fuse_available("nodes_get_their_own_identity_and_ls_survives_kill_9_of_a_supervisor") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = node_data_dir(tmp.path());
    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("base.img");
    let img_s = img.to_str().expect("utf-8");
    ok_text(&[
        "base",
        "create",
        data.to_str().expect("utf-8"),
        "--store",
        &store,
        "--out",
        img_s,
        "--chain",
        "testnet",
        "--height",
        "7",
        "--strip-secrets",
        "--secret-path",
        "operator.key",
    ]);
    let state = tmp.path().join("state");
    let _nodes = NodesGuard::new(&state);
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().expect("utf-8");
    let given_key = tmp.path().join("given.key");
    fs::write(&given_key, [9u8; 32]).expect("write");
    node(
        &state,
        &["create", "n1", "--image", img_s, "--cache", cache_s],
    );
    node(
        &state,
        &["create", "n2", "--image", img_s, "--cache", cache_s],
    );
    node(
        &state,
        &[
            "create",
            "n3",
            "--image",
            img_s,
            "--cache",
            cache_s,
            "--identity",
            given_key.to_str().expect("utf-8"),
        ],
    );
    let listed = node_ls(&state);
    assert_eq!(listed.as_array().map(|a| a.len()), Some(3));
    assert!(listed
        .as_array()
        .expect("array")
        .iter()
        .all(|n| n["state"] == "stopped" && n["height"] == "7" && n["chain"] == "testnet"));

    let mut keys = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let started = node(&state, &["start", name, "--", "sleep", "600"]);
        println!("{started}");
        let entry = node_entry(&state, name);
        assert_eq!(entry["state"], "running", "{entry}");
        let view = PathBuf::from(entry["data_dir"].as_str().expect("data_dir"));
        let key = fs::read(view.join("chains/testnet/network/secret_ed25519")).expect("node key");
        assert_eq!(key.len(), 32);
        assert_ne!(key, vec![42u8; 32], "{name} must not have the base's key");
        assert!(
            !view.join("regtest/peers.dat").exists(),
            "{name} sees no base peers.dat"
        );
        assert!(view.join("chains/testnet/db/full/index_00_16").is_file());
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "generated identities differ per node");
    assert_eq!(
        keys[2],
        vec![9u8; 32],
        "--identity FILE copies the given key"
    );

    // kill -9 of n1's supervisor: ls says crashed at once; the command dies with it.
    let entry = node_entry(&state, "n1");
    let sup = entry["supervisor_pid"].as_u64().expect("supervisor pid") as i32;
    let child = entry["pid"].as_u64().expect("pid") as i32;
    let view = PathBuf::from(entry["data_dir"].as_str().expect("data_dir"));
    unsafe { libc::kill(sup, libc::SIGKILL) };
    wait_until("n1 crashed", Duration::from_secs(10), || {
        node_entry(&state, "n1")["state"] == "crashed"
    });
    wait_until("n1's command gone", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{child}")).exists()
            || fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| s.contains(") Z"))
    });
    let crashed = node_entry(&state, "n1");
    assert!(
        crashed["pid"].is_null() && crashed["uptime_secs"].is_null(),
        "{crashed}"
    );
    assert_eq!(node_entry(&state, "n2")["state"], "running");
    // stop cleans the stale mounts; start works again with the same identity.
    node(&state, &["stop", "n1"]);
    assert_eq!(node_entry(&state, "n1")["state"], "stopped");
    assert!(!is_mounted(&view), "stale mount cleaned");
    node(&state, &["start", "n1", "--", "sleep", "600"]);
    let key_again = fs::read(view.join("chains/testnet/network/secret_ed25519")).expect("key");
    assert_eq!(key_again, keys[0], "identity kept across restarts");

    for name in ["n1", "n2", "n3"] {
        node(&state, &["stop", name]);
    }
    assert!(node_ls(&state)
        .as_array()
        .expect("array")
        .iter()
        .all(|n| n["state"] == "stopped"));
    // promote: n2's own network key is a secret in its view, so a plain promote is refused; with
    // --strip-secrets the new image has everything but the key.
    let promoted = tmp.path().join("n2.img");
    let promoted_s = promoted.to_str().expect("utf-8");
    let state_s = state.to_str().expect("utf-8");
    let refused = run(&[
        "node",
        "--state-dir",
        state_s,
        "promote",
        "n2",
        "--out",
        promoted_s,
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("network/secret_ed25519"),
        "{}",
        text(&refused)
    );
    assert!(!promoted.exists());
    node(
        &state,
        &["promote", "n2", "--out", promoted_s, "--strip-secrets"],
    );
    let restored = tmp.path().join("n2-restored");
    ok_text(&["unpack", promoted_s, restored.to_str().expect("utf-8")]);
    assert!(restored
        .join("chains/testnet/db/full/index_00_16")
        .is_file());
    assert!(!restored
        .join("chains/testnet/network/secret_ed25519")
        .exists());
    assert!(!restored.join("regtest/peers.dat").exists());

    node(&state, &["rm", "n3"]);
    assert!(!state.join("nodes/n3").exists());
}

#[test]
fn restart_policies_and_logs() {
    if !fuse_available("restart_policies_and_logs") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).expect("mkdir");
    fs::write(data.join("height"), b"100\n").expect("write");
    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("base.img");
    let img_s = img.to_str().expect("utf-8");
    ok_text(&[
        "base",
        "create",
        data.to_str().expect("utf-8"),
        "--store",
        &store,
        "--out",
        img_s,
        "--chain",
        "t",
    ]);
    let state = tmp.path().join("state");
    let _nodes = NodesGuard::new(&state);
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().expect("utf-8");
    node(
        &state,
        &["create", "once", "--image", img_s, "--cache", cache_s],
    );
    node(
        &state,
        &["create", "flaky", "--image", img_s, "--cache", cache_s],
    );

    // --trust: an unsigned image is refused; one signed by the trusted key is accepted.
    let key = tmp.path().join("publisher.key");
    let key_s = key.to_str().expect("utf-8");
    let pub_s = format!("{key_s}.pub");
    ok_text(&["key", "gen", "--out", key_s]);
    let state_s = state.to_str().expect("utf-8");
    let unsigned = run(&[
        "node",
        "--state-dir",
        state_s,
        "create",
        "u",
        "--image",
        img_s,
        "--cache",
        cache_s,
        "--trust",
        &pub_s,
    ]);
    assert!(
        !unsigned.status.success(),
        "an unsigned image is refused under --trust"
    );
    assert!(
        text(&unsigned).contains("not signed"),
        "{}",
        text(&unsigned)
    );
    assert!(
        !state.join("nodes/u").exists(),
        "a failed create leaves nothing behind"
    );
    let signed = tmp.path().join("signed.img");
    let signed_s = signed.to_str().expect("utf-8");
    ok_text(&[
        "base",
        "create",
        data.to_str().expect("utf-8"),
        "--store",
        &store,
        "--out",
        signed_s,
        "--chain",
        "t",
        "--sign",
        key_s,
    ]);
    node(
        &state,
        &[
            "create", "s", "--image", signed_s, "--cache", cache_s, "--trust", &pub_s,
        ],
    );
    node(&state, &["rm", "s"]);

    // restart=no and a failing command: failed, with the command's output in its log.
    node(
        &state,
        &[
            "start",
            "once",
            "--",
            "sh",
            "-c",
            "echo seen {name} {port:1} $(cat {data}/height); exit 3",
        ],
    );
    wait_until("once failed", Duration::from_secs(20), || {
        node_entry(&state, "once")["state"] == "failed"
    });
    let entry = node_entry(&state, "once");
    assert!(
        entry["last_exit"]
            .as_str()
            .unwrap_or("")
            .contains("status 3"),
        "{entry}"
    );
    let port = entry["ports"]["1"].as_u64().expect("port chosen");
    let logs = node(&state, &["logs", "once", "-n", "5"]);
    assert!(logs.contains(&format!("seen once {port} 100")), "{logs}");

    // on-failure restarts a failing command (with backoff) until stopped.
    node(
        &state,
        &[
            "start",
            "flaky",
            "--restart",
            "on-failure",
            "--",
            "sh",
            "-c",
            "echo run >> {data}/runs; sleep 0.2; exit 1",
        ],
    );
    wait_until("flaky restarted", Duration::from_secs(30), || {
        node_entry(&state, "flaky")["restarts"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    assert_eq!(node_entry(&state, "flaky")["state"], "running");
    node(&state, &["stop", "flaky"]);
    assert_eq!(node_entry(&state, "flaky")["state"], "stopped");
    // Its writes stay in its layer; reset drops them.
    assert!(
        node_entry(&state, "flaky")["layer_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    node(&state, &["reset", "flaky"]);
    node(
        &state,
        &["start", "flaky", "--", "sh", "-c", "test ! -e {data}/runs"],
    );
    wait_until("flaky stopped", Duration::from_secs(20), || {
        node_entry(&state, "flaky")["state"] != "running"
    });
    assert_eq!(
        node_entry(&state, "flaky")["state"],
        "stopped",
        "the reset layer has no runs file"
    );
    // The port chosen for {port:1} is stable across starts.
    node(
        &state,
        &["start", "once", "--", "sh", "-c", "echo again {port:1}"],
    );
    wait_until("once done", Duration::from_secs(20), || {
        node_entry(&state, "once")["state"] == "stopped"
    });
    assert!(node(&state, &["logs", "once", "-n", "3"]).contains(&format!("again {port}")));
}
