//! End-to-end tests of multi-server stores through the real binary: `pack` into a `disperse:4+2` store
//! over six `thinnode zdb` servers on loopback, `unpack` / `verify --deep` / `mount` with servers
//! killed, `store repair` after servers come back empty, and `pack`/`unpack`/`store repair` through a
//! `route:` store.

mod common;

use std::fs;
use std::path::Path;

use common::{ok_text as ok, run, text, BIN};
use rand::{RngCore, SeedableRng};
use testkit::ZdbProcess;

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "thinnode {args:?} should fail:\n{}",
        text(&out)
    );
    text(&out)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A small tree: a few MiB of random data in several files, one empty file, one sparse-ish file.
fn make_tree(root: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    fs::create_dir_all(root.join("db/sub")).unwrap();
    for (name, len) in [
        ("db/a.bin", 1_500_000usize),
        ("db/sub/b.bin", 700_000),
        ("c.txt", 3),
    ] {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        fs::write(root.join(name), data).unwrap();
    }
    fs::write(root.join("db/empty"), b"").unwrap();
    let mut zeros = vec![0u8; 600_000];
    zeros[300_000] = 1;
    fs::write(root.join("db/mostly-zero"), zeros).unwrap();
}

fn assert_same_tree(a: &Path, b: &Path) {
    for name in [
        "db/a.bin",
        "db/sub/b.bin",
        "c.txt",
        "db/empty",
        "db/mostly-zero",
    ] {
        assert_eq!(
            fs::read(a.join(name)).unwrap(),
            fs::read(b.join(name)).unwrap(),
            "{name} differs"
        );
    }
}

/// Kills the server and empties its directories, then starts it again on the same port: a replaced
/// machine.
fn replace_with_empty(server: &mut ZdbProcess) {
    server.child.kill();
    for sub in ["data", "index"] {
        let _ = fs::remove_dir_all(server.dir.join(sub));
    }
    server.restart();
}

fn member_url(server: &ZdbProcess) -> String {
    format!(
        "{}?retries=0&timeout_ms=3000&connect_timeout_ms=500",
        server.url("default")
    )
}

#[test]
fn dispersed_4_plus_2_pack_unpack_verify_with_servers_down_and_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let mut servers: Vec<ZdbProcess> = (0..6)
        .map(|i| {
            let dir = tmp.path().join(format!("zdb{i}"));
            ZdbProcess::start(&[BIN, "zdb"], &dir, &[])
        })
        .collect();
    let members: Vec<String> = servers.iter().map(member_url).collect();
    let url = format!("disperse:4+2 {}", members.join(" "));
    let src = tmp.path().join("src");
    make_tree(&src);
    let image = tmp.path().join("image.tni");
    ok(&[
        "pack",
        p(&src),
        "--store",
        &url,
        "--out",
        p(&image),
        "--chunk-size",
        "128KiB",
    ]);
    let inspect = ok(&["inspect", p(&image)]);
    assert!(
        inspect.contains("disperse:4+2"),
        "the image records the dispersed store:\n{inspect}"
    );

    // Every pair of servers down: unpack restores the tree exactly; verify --deep checks every chunk.
    for (n, (a, b)) in [(0, 1), (2, 5), (3, 4)].into_iter().enumerate() {
        servers[a].child.kill();
        servers[b].child.kill();
        let out = tmp.path().join(format!("out{n}"));
        ok(&["unpack", p(&image), p(&out)]);
        assert_same_tree(&src, &out);
        ok(&["verify", p(&image), "--deep"]);
        servers[a].restart();
        servers[b].restart();
    }

    // Three down: a clear error naming the shard shortfall.
    for i in [1, 2, 4] {
        servers[i].child.kill();
    }
    let err = fails(&["unpack", p(&image), p(&tmp.path().join("out-fail"))]);
    assert!(err.contains("3 shard(s) available, 4 needed"), "{err}");
    for i in [1, 2, 4] {
        servers[i].restart();
    }

    // Two servers replaced by empty ones: repair rewrites their shards; then two others may die.
    replace_with_empty(&mut servers[0]);
    replace_with_empty(&mut servers[3]);
    let report = ok(&["store", "repair", p(&image), "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&report).expect("repair --json");
    let checked = summary["chunks_checked"].as_u64().unwrap();
    assert!(checked > 10, "{summary}");
    assert_eq!(
        summary["chunks_degraded"].as_u64(),
        Some(checked),
        "{summary}"
    );
    assert_eq!(
        summary["shards_rewritten"].as_u64(),
        Some(2 * checked),
        "{summary}"
    );
    let again = ok(&["store", "repair", p(&image)]);
    assert!(again.contains("0 degraded, 0 shards rewritten"), "{again}");
    servers[1].child.kill();
    servers[5].child.kill();
    ok(&["verify", p(&image), "--deep"]);
    let out = tmp.path().join("out-after-repair");
    ok(&["unpack", p(&image), p(&out)]);
    assert_same_tree(&src, &out);

    // A mount reads the whole tree with two servers still down.
    if testkit::fuse_available("dispersed mount with two servers down") {
        let mnt = tmp.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let log = tmp.path().join("mount.log");
        ok(&[
            "mount",
            p(&image),
            p(&mnt),
            "--cache",
            p(&tmp.path().join("cache")),
            "--daemon",
            "--log",
            p(&log),
        ]);
        let read = std::panic::catch_unwind(|| assert_same_tree(&src, &mnt));
        ok(&["umount", p(&mnt)]);
        if let Err(e) = read {
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn router_with_two_replicas_packs_unpacks_and_repairs_with_one_replica_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut servers: Vec<ZdbProcess> = (0..3)
        .map(|i| ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join(format!("zdb{i}")), &[]))
        .collect();
    let url = format!(
        "route: 00-7f={} 00-7f={} 80-ff={}",
        member_url(&servers[0]),
        member_url(&servers[1]),
        member_url(&servers[2])
    );
    let src = tmp.path().join("src");
    make_tree(&src);
    let image = tmp.path().join("image.tni");
    ok(&[
        "pack",
        p(&src),
        "--store",
        &url,
        "--out",
        p(&image),
        "--chunk-size",
        "128KiB",
    ]);
    servers[0].child.kill();
    let out = tmp.path().join("out");
    ok(&["unpack", p(&image), p(&out)]);
    assert_same_tree(&src, &out);
    // A write with a replica down fails and names it.
    let src2 = tmp.path().join("src2");
    fs::create_dir_all(&src2).unwrap();
    let mut data = vec![0u8; 2_000_000];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
    fs::write(src2.join("new.bin"), data).unwrap();
    let err = fails(&[
        "pack",
        p(&src2),
        "--store",
        &url,
        "--out",
        p(&tmp.path().join("image2.tni")),
        "--chunk-size",
        "128KiB",
    ]);
    assert!(
        err.contains(&format!("127.0.0.1:{}", servers[0].port)),
        "{err}"
    );
    servers[0].restart();

    // A replica replaced by an empty server: `store repair` copies the range's chunks back to it, after
    // which the other replica may die.
    replace_with_empty(&mut servers[1]);
    let report = ok(&["store", "repair", p(&image), "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&report).expect("repair --json");
    let degraded = summary["chunks_degraded"].as_u64().unwrap();
    assert!(degraded > 0, "the emptied replica lacked chunks: {summary}");
    assert_eq!(
        summary["shards_rewritten"].as_u64(),
        Some(degraded),
        "one copy written per chunk of its range: {summary}"
    );
    let again = ok(&["store", "repair", p(&image)]);
    assert!(again.contains("0 degraded, 0 copies rewritten"), "{again}");
    servers[0].child.kill();
    let out = tmp.path().join("out-after-repair");
    ok(&["unpack", p(&image), p(&out)]);
    assert_same_tree(&src, &out);
}
