//! `thinnode mount IMAGE MNT --layer DIR --layer-kind overlay|blocks` end to end, on real databases: the
//! writes of a node stay in its layer, survive a remount and a killed daemon, and cost the layer only
//! what was written (blocks) or whole copied-up files (overlay). The image is intact afterwards
//! (`verify --deep`).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok_stdout, ok_text, run, text};
use testkit::fuse_available;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn is_mounted(p: &Path) -> bool {
    let parent = p.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(p), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        // A dead FUSE mount fails stat with ENOTCONN.
        (Err(e), _) => e.raw_os_error() == Some(libc::ENOTCONN),
        _ => false,
    }
}

/// A writable `thinnode mount --layer … --daemon`; unmounted with `thinnode umount` on drop.
struct NodeMount {
    mnt: PathBuf,
    layer: PathBuf,
}

impl NodeMount {
    fn start(image: &Path, mnt: &Path, layer: &Path, kind: &str, cache: &Path) -> NodeMount {
        NodeMount::start_with(image, mnt, layer, kind, cache, &[])
    }

    fn start_with(
        image: &Path,
        mnt: &Path,
        layer: &Path,
        kind: &str,
        cache: &Path,
        extra: &[&str],
    ) -> NodeMount {
        fs::create_dir_all(mnt).expect("mkdir mnt");
        let log = mnt.with_extension("log");
        let mut args = vec![
            "mount",
            s(image),
            s(mnt),
            "--layer",
            s(layer),
            "--layer-kind",
            kind,
            "--cache",
            s(cache),
            "--daemon",
            "--log",
            s(&log),
        ];
        args.extend_from_slice(extra);
        ok_text(&args);
        assert!(is_mounted(mnt), "{} is not mounted", mnt.display());
        NodeMount {
            mnt: mnt.to_path_buf(),
            layer: layer.to_path_buf(),
        }
    }

    fn lower(&self) -> PathBuf {
        self.layer.join("lower")
    }

    fn umount(self) {
        let out = run(&["umount", s(&self.mnt)]);
        assert!(out.status.success(), "umount: {}", text(&out));
        assert!(!is_mounted(&self.mnt), "top still mounted after umount");
        assert!(
            !is_mounted(&self.lower()),
            "image still mounted after umount"
        );
        std::mem::forget(self);
    }
}

impl Drop for NodeMount {
    fn drop(&mut self) {
        let _ = run(&["umount", s(&self.mnt)]);
        for p in [&self.mnt, &self.layer.join("lower")] {
            if is_mounted(p) {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

/// Bytes the layer holds on disk (`thinnode layer du --json`).
fn layer_bytes(layer: &Path) -> u64 {
    let out = ok_stdout(&["layer", "du", s(layer), "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("du json");
    v["allocated_bytes"].as_u64().expect("allocated_bytes")
}

/// Bytes a directory tree occupies on disk.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in walk(dir) {
        if let Ok(m) = fs::symlink_metadata(&entry) {
            if m.is_file() {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Source directory `name`, dir store and image file of a workload under `root`.
fn workload_paths(root: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    (root.join(name), root.join("store"), root.join("img"))
}

/// Mountpoint and layer directory of one layer kind under `root`, and the host cache the kinds share.
fn kind_paths(root: &Path, kind: &str) -> (PathBuf, PathBuf, PathBuf) {
    (
        root.join(format!("mnt-{kind}")),
        root.join(format!("layer-{kind}")),
        root.join("cache"),
    )
}

fn pack(src: &Path, store: &Path, image: &Path, extra: &[&str]) {
    let url = format!("dir://{}", store.display());
    let mut args = vec!["pack", s(src), "--store", &url, "--out", s(image)];
    args.extend_from_slice(extra);
    ok_text(&args);
}

fn verify_deep(image: &Path) {
    ok_text(&["verify", s(image), "--deep"]);
}

fn small_tree(src: &Path) {
    fs::create_dir_all(src.join("db/sub")).unwrap();
    fs::write(src.join("db/a.txt"), b"base a\n").unwrap();
    fs::write(src.join("db/sub/b.txt"), b"base b\n").unwrap();
    let big: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("db/big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("db/link")).unwrap();
}

/// Writes, renames and deletes through the mount; they persist across unmount/remount and a kill -9 of
/// the daemon (fsynced data), and `umount` cleans both mounts of the killed daemon.
fn writes_persist(kind: &str) {
    let t = tempfile::tempdir().unwrap();
    let (src, store, image) = workload_paths(t.path(), "src");
    small_tree(&src);
    pack(&src, &store, &image, &[]);
    let (mnt, layer, cache) = (
        t.path().join("mnt"),
        t.path().join("layer"),
        t.path().join("cache"),
    );

    let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
    let db = mnt.join("db");
    assert_eq!(fs::read(db.join("a.txt")).unwrap(), b"base a\n");
    fs::OpenOptions::new()
        .append(true)
        .open(db.join("a.txt"))
        .unwrap()
        .write_all(b"node a\n")
        .unwrap();
    fs::rename(db.join("sub"), db.join("sub2")).unwrap();
    fs::remove_file(db.join("link")).unwrap();
    fs::write(db.join("new.txt"), b"new\n").unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(db.join("big.bin"))
            .unwrap();
        f.write_all_at(b"XYZ", 3 * 1024 * 1024 + 5).unwrap();
        f.sync_all().unwrap();
    }
    m.umount();

    let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
    assert_eq!(fs::read(db.join("a.txt")).unwrap(), b"base a\nnode a\n");
    assert_eq!(fs::read(db.join("sub2/b.txt")).unwrap(), b"base b\n");
    assert!(!db.join("sub").exists() && !db.join("link").exists());
    assert_eq!(fs::read(db.join("new.txt")).unwrap(), b"new\n");
    let big = fs::read(db.join("big.bin")).unwrap();
    assert_eq!(&big[3 * 1024 * 1024 + 5..3 * 1024 * 1024 + 8], b"XYZ");
    assert_eq!(
        big[3 * 1024 * 1024 + 8],
        ((3 * 1024 * 1024 + 8) % 251) as u8
    );

    // An fsynced write, then kill -9 of the daemon: umount cleans up, the remount has the write.
    {
        let mut f = fs::File::create(db.join("synced.txt")).unwrap();
        f.write_all(b"durable\n").unwrap();
        f.sync_all().unwrap();
        fs::File::open(&db).unwrap().sync_all().unwrap();
    }
    let rec = ok_stdout(&["layer", "du", s(&layer)]);
    assert!(rec.contains(kind), "du names the kind: {rec}");
    let pid = daemon_pid(&mnt);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    m.umount();
    let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
    assert_eq!(fs::read(db.join("synced.txt")).unwrap(), b"durable\n");
    assert_eq!(fs::read(db.join("a.txt")).unwrap(), b"base a\nnode a\n");
    // A layer of one kind is not mounted as the other.
    let other = if kind == "blocks" {
        "overlay"
    } else {
        "blocks"
    };
    let wrong = run(&[
        "mount",
        s(&image),
        s(&t.path().join("mnt2")),
        "--layer",
        s(&layer),
        "--layer-kind",
        other,
        "--cache",
        s(&cache),
    ]);
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains(&format!("is a {kind} layer")),
        "{}",
        text(&wrong)
    );
    // reset is refused while mounted, works once unmounted.
    assert!(!run(&["layer", "reset", s(&layer)]).status.success());
    m.umount();
    ok_text(&["layer", "reset", s(&layer)]);
    let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
    assert_eq!(fs::read(db.join("a.txt")).unwrap(), b"base a\n");
    assert!(!db.join("synced.txt").exists());
    m.umount();
    verify_deep(&image);
}

/// The host-cache data file of image file `rel`.
fn cache_data_file(cache: &Path, image: &Path, rel: &str) -> PathBuf {
    let m = image::ImageManifest::open(image).expect("open image");
    let mut ino = image::ROOT_INO;
    for name in rel.split('/') {
        ino = m
            .lookup(ino, name.as_bytes())
            .expect("lookup")
            .expect("in the image")
            .ino;
    }
    let size = m.getattr(ino).expect("getattr").size;
    let chunks = m.file_chunks(ino).expect("chunks");
    let hex = mount::FileKey::of(size, u64::from(m.chunk_size()), &chunks).to_hex();
    cache.join("v2/files").join(&hex[..2]).join(hex)
}

/// A blocks layer over a hydrated image: a read-only open of an unwritten base file is passthrough to
/// the base's host-cache file (counted by the metric; its reads never reach the daemon); a read-write
/// open is not, and its writes land in the layer only: the base's cache file stays byte-identical,
/// `verify --deep` passes, and a plain mount of the image reads the original bytes.
#[test]
fn blocks_layer_passthrough_for_unwritten_base_files_and_never_writes_the_base() {
    if !fuse_available(
        "blocks_layer_passthrough_for_unwritten_base_files_and_never_writes_the_base",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, store, image) = workload_paths(t.path(), "src");
    small_tree(&src);
    pack(&src, &store, &image, &[]);
    let (mnt, layer, cache) = kind_paths(t.path(), "blocks");
    ok_text(&["hydrate", s(&image), "--cache", s(&cache), "--quiet"]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let m = NodeMount::start_with(
        &image,
        &mnt,
        &layer,
        "blocks",
        &cache,
        &["--metrics", &addr.to_string()],
    );
    let metric = |name: &str| common::mounts::metric(addr, name);
    let want = fs::read(src.join("db/big.bin")).unwrap();
    let big = mnt.join("db/big.bin");

    let read_before = metric("thinnode_mount_read_bytes_total");
    assert_eq!(fs::read(&big).unwrap(), want);
    assert_eq!(metric("thinnode_mount_layer_passthrough_opens_total"), 1.0);
    assert_eq!(
        metric("thinnode_mount_read_bytes_total"),
        read_before,
        "passthrough reads of the base never reach the daemon"
    );

    // A read-write open (no write yet) is served by the layer, reading the base in-process.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&big)
            .unwrap();
        let mut head = vec![0u8; 100_000];
        f.read_exact_at(&mut head, 5).unwrap();
        assert!(head[..] == want[5..100_005]);
        assert_eq!(metric("thinnode_mount_layer_passthrough_opens_total"), 1.0);
        assert!(metric("thinnode_mount_read_bytes_total") > read_before);
        f.write_all_at(b"node write", 2 * 1024 * 1024).unwrap();
        f.sync_all().unwrap();
    }
    let mut expected = want.clone();
    expected[2 * 1024 * 1024..2 * 1024 * 1024 + 10].copy_from_slice(b"node write");
    assert!(fs::read(&big).unwrap() == expected, "the write reads back");
    assert_eq!(
        metric("thinnode_mount_layer_passthrough_opens_total"),
        1.0,
        "a written file is no longer passthrough"
    );
    // Another unwritten base file is.
    assert_eq!(fs::read(mnt.join("db/a.txt")).unwrap(), b"base a\n");
    assert_eq!(metric("thinnode_mount_layer_passthrough_opens_total"), 2.0);
    m.umount();

    // The base is untouched: its cache file, a plain mount of the image, and the store.
    assert!(fs::read(cache_data_file(&cache, &image, "db/big.bin")).unwrap() == want);
    let m = NodeMount::start(
        &image,
        &t.path().join("mnt2"),
        &t.path().join("layer2"),
        "blocks",
        &cache,
    );
    assert!(fs::read(t.path().join("mnt2/db/big.bin")).unwrap() == want);
    m.umount();
    verify_deep(&image);
}

/// An overlay layer over a hydrated image: overlayfs opens the base files in the image mount, which
/// serves them by passthrough from the host-cache files (its read path is never used).
#[test]
fn overlay_layer_lower_reads_are_passthrough() {
    if !fuse_available("overlay_layer_lower_reads_are_passthrough") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, store, image) = workload_paths(t.path(), "src");
    small_tree(&src);
    pack(&src, &store, &image, &[]);
    let (mnt, layer, cache) = kind_paths(t.path(), "overlay");
    ok_text(&["hydrate", s(&image), "--cache", s(&cache), "--quiet"]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let m = NodeMount::start_with(
        &image,
        &mnt,
        &layer,
        "overlay",
        &cache,
        &["--metrics", &addr.to_string()],
    );
    let metric = |name: &str| common::mounts::metric(addr, name);
    assert_eq!(
        fs::read(mnt.join("db/big.bin")).unwrap(),
        fs::read(src.join("db/big.bin")).unwrap()
    );
    assert_eq!(fs::read(mnt.join("db/sub/b.txt")).unwrap(), b"base b\n");
    assert!(metric("thinnode_mount_passthrough_opens_total") >= 2.0);
    assert_eq!(
        metric("thinnode_mount_read_bytes_total"),
        0.0,
        "no read reached the daemon"
    );
    m.umount();
}

/// PID of the daemon serving `mnt` (from its mount record, via `ps`-free /proc scan).
fn daemon_pid(mnt: &Path) -> i32 {
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"thinnode"))
            && args.get(1) == Some(&&b"mount"[..])
            && args.iter().any(|a| *a == s(mnt).as_bytes())
        {
            return pid;
        }
    }
    panic!("no daemon serves {}", mnt.display());
}

#[test]
fn overlay_layer_keeps_writes_and_survives_a_killed_daemon() {
    if fuse_available("overlay_layer_keeps_writes_and_survives_a_killed_daemon") {
        writes_persist("overlay");
    }
}

#[test]
fn blocks_layer_keeps_writes_and_survives_a_killed_daemon() {
    if fuse_available("blocks_layer_keeps_writes_and_survives_a_killed_daemon") {
        writes_persist("blocks");
    }
}

/// Size of the ParityDB workload (the issue asks for ≥ 1 GB; THINNODE_TEST_PARITYDB_SIZE overrides).
fn paritydb_size() -> u64 {
    let v = std::env::var("THINNODE_TEST_PARITYDB_SIZE").unwrap_or_else(|_| "1GiB".into());
    units::parse_size(&v).expect("THINNODE_TEST_PARITYDB_SIZE")
}

/// A Substrate-like ParityDB packed into an image, then on each layer kind: open through the mount,
/// insert 0.1% new keys, commit, close, verify every key. The blocks layer keeps ≤ 1% of the DB; overlay
/// copies (nearly) everything up.
#[test]
fn paritydb_on_each_layer_kind() {
    if !fuse_available("paritydb_on_each_layer_kind") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, store, image) = workload_paths(t.path(), "db");
    let built = paritydb_harness::build(&src, paritydb_size(), 7).expect("build ParityDB");
    let db_bytes = disk_bytes(&src);
    eprintln!("ParityDB built: {built:?}, {db_bytes} bytes on disk");
    pack(&src, &store, &image, &["--chunk-size", "64KiB"]);
    let mut report = Vec::new();
    for kind in ["blocks", "overlay"] {
        let (mnt, layer, cache) = kind_paths(t.path(), kind);
        let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
        let started = Instant::now();
        let expected_blocks;
        {
            let db = paritydb_harness::open(&mnt).expect("open ParityDB through the mount");
            let mut meta = paritydb_harness::read_meta(&db, &mnt).expect("meta");
            let n = paritydb_harness::blocks_for_fraction(&meta, 0.001);
            paritydb_harness::append_blocks(&db, &mut meta, n).expect("insert 0.1% new keys");
            expected_blocks = meta.blocks;
            paritydb_harness::verify(&db, &mnt).expect("verify every key");
        }
        let took = started.elapsed();
        m.umount();
        let bytes = layer_bytes(&layer);
        let pct = bytes as f64 * 100.0 / db_bytes as f64;
        eprintln!("{kind}: layer {bytes} bytes = {pct:.2}% of the DB, open+insert+verify {took:?}");
        report.push((kind, bytes, pct));
        // Remount: the new keys are there.
        let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
        {
            let db = paritydb_harness::open(&mnt).expect("reopen");
            let meta = paritydb_harness::read_meta(&db, &mnt).expect("meta after remount");
            assert_eq!(
                meta.blocks, expected_blocks,
                "the new blocks survive a remount"
            );
            paritydb_harness::verify(&db, &mnt).expect("verify after remount");
        }
        m.umount();
    }
    let blocks = report[0].2;
    let overlay = report[1].2;
    assert!(
        blocks <= 1.0,
        "blocks layer holds {blocks:.2}% of the DB (goal ≤ 1%)"
    );
    assert!(
        overlay > 50.0,
        "overlay copies the DB up on open ({overlay:.2}%)"
    );
    verify_deep(&image);
}

fn ldb(db: &Path, args: &[&str], input: Option<&[u8]>) -> String {
    let mut cmd = Command::new("ldb");
    cmd.arg(format!("--db={}", db.display()))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run ldb (Debian rocksdb-tools)");
    if let Some(data) = input {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ldb {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rocks_lines(from: u64, to: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for i in from..to {
        let val: String = format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).repeat(16);
        writeln!(v, "key{i:09} ==> {val}").unwrap();
    }
    v
}

/// A RocksDB made with `ldb`: on each layer kind, 0.1% new keys cost the layer about what RocksDB wrote
/// (new WAL/SST/MANIFEST files), far below the DB size; every key reads back.
#[test]
fn rocksdb_on_each_layer_kind() {
    if !fuse_available("rocksdb_on_each_layer_kind") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, store, image) = workload_paths(t.path(), "rocks");
    const KEYS: u64 = 200_000;
    ldb(
        &src,
        &[
            "load",
            "--create_if_missing",
            "--disable_wal",
            "--compression_type=no",
        ],
        Some(&rocks_lines(0, KEYS)),
    );
    ldb(&src, &["compact"], None);
    let db_bytes = disk_bytes(&src);
    pack(&src, &store, &image, &[]);
    for kind in ["blocks", "overlay"] {
        let (mnt, layer, cache) = kind_paths(t.path(), kind);
        let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
        ldb(
            &mnt,
            &["load"],
            Some(&rocks_lines(KEYS, KEYS + KEYS / 1000)),
        );
        let last = ldb(
            &mnt,
            &["get", &format!("key{:09}", KEYS + KEYS / 1000 - 1)],
            None,
        );
        assert!(last.trim().len() == 256, "new key reads back: {last}");
        let first = ldb(&mnt, &["get", "key000000000"], None);
        assert!(first.trim().len() == 256, "base key reads back: {first}");
        let count = ldb(&mnt, &["scan", "--max_keys=1000000"], None)
            .lines()
            .count() as u64;
        assert_eq!(count, KEYS + KEYS / 1000);
        m.umount();
        let bytes = layer_bytes(&layer);
        let pct = bytes as f64 * 100.0 / db_bytes as f64;
        eprintln!("RocksDB {kind}: layer {bytes} bytes = {pct:.2}% of {db_bytes}");
        assert!(pct < 10.0, "{kind} layer holds {pct:.2}% of the RocksDB");
    }
    verify_deep(&image);
}

/// A litecoind regtest node: its own instance on a random port pair.
struct Litecoind {
    datadir: PathBuf,
    rpcport: u16,
}

impl Litecoind {
    fn start(datadir: &Path) -> Litecoind {
        let (port, rpcport) = (testkit::free_port(), testkit::free_port());
        let status = Command::new("litecoind")
            .args(["-regtest", "-daemon", "-listen=0", "-fallbackfee=0.0001"])
            .arg(format!("-datadir={}", datadir.display()))
            .arg(format!("-port={port}"))
            .arg(format!("-rpcport={rpcport}"))
            .stdout(Stdio::null())
            .status()
            .expect("run litecoind (Debian package litecoind)");
        assert!(status.success(), "litecoind did not start");
        let node = Litecoind {
            datadir: datadir.to_path_buf(),
            rpcport,
        };
        let start = Instant::now();
        while node.try_cli(&["getblockcount"]).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "litecoind RPC not up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("litecoin-cli")
            .arg("-regtest")
            .arg(format!("-datadir={}", self.datadir.display()))
            .arg(format!("-rpcport={}", self.rpcport))
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("litecoin-cli {args:?} failed"))
    }

    /// Mines `n` blocks to a fresh address of a wallet named `w`.
    fn mine(&self, n: u32) {
        if self.try_cli(&["loadwallet", "w"]).is_none() {
            let _ = self.try_cli(&["createwallet", "w"]);
        }
        let addr = self.cli(&["-rpcwallet=w", "getnewaddress"]);
        self.cli(&["generatetoaddress", &n.to_string(), &addr]);
    }

    /// Whether a litecoind process still runs on this data directory.
    fn running(&self) -> bool {
        let arg = format!("-datadir={}", self.datadir.display());
        fs::read_dir("/proc").unwrap().flatten().any(|e| {
            fs::read(e.path().join("cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0)
                        .next()
                        .is_some_and(|a| a.ends_with(b"litecoind"))
                        && c.split(|b| *b == 0).any(|a| a == arg.as_bytes())
                })
                .unwrap_or(false)
        })
    }

    /// Stops the node and waits until its process is gone (it flushes its state on the way out).
    fn stop(self) {
        self.shutdown();
        std::mem::forget(self);
    }

    fn shutdown(&self) {
        let _ = self.try_cli(&["stop"]);
        let start = Instant::now();
        while self.running() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "litecoind did not stop"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Litecoind {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A real litecoind chain (regtest) packed into an image; on each layer kind a node starts on the mount,
/// mines 10 blocks, stops, and restarts from its layer at its own height. The blocks layer keeps only
/// the blocks the node wrote; overlay copies every file the node changed (block, undo files) up whole.
#[test]
fn litecoind_on_each_layer_kind() {
    if !fuse_available("litecoind_on_each_layer_kind") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, store, image) = workload_paths(t.path(), "chain");
    fs::create_dir_all(&src).unwrap();
    let node = Litecoind::start(&src);
    node.mine(200);
    assert_eq!(node.cli(&["getblockcount"]), "200");
    node.stop();
    // Wallets and peer lists are per node, never part of a base.
    for p in [
        "regtest/wallets",
        "regtest/peers.dat",
        "regtest/anchors.dat",
    ] {
        let _ = fs::remove_dir_all(src.join(p));
        let _ = fs::remove_file(src.join(p));
    }
    pack(&src, &store, &image, &[]);
    let mut layers = Vec::new();
    for kind in ["blocks", "overlay"] {
        let (mnt, layer, cache) = kind_paths(t.path(), kind);
        let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
        let node = Litecoind::start(&mnt);
        assert_eq!(node.cli(&["getblockcount"]), "200", "{kind}: base height");
        node.mine(10);
        assert_eq!(node.cli(&["getblockcount"]), "210");
        node.stop();
        m.umount();
        let bytes = layer_bytes(&layer);
        eprintln!("litecoind {kind}: 10 blocks mined, layer holds {bytes} bytes");
        layers.push(bytes);
        // The node restarts from its layer at its own height.
        let m = NodeMount::start(&image, &mnt, &layer, kind, &cache);
        let node = Litecoind::start(&mnt);
        assert_eq!(
            node.cli(&["getblockcount"]),
            "210",
            "{kind}: height after remount"
        );
        node.stop();
        m.umount();
    }
    assert!(
        layers[0] < layers[1],
        "blocks layer ({}) should hold less than overlay ({})",
        layers[0],
        layers[1]
    );
    verify_deep(&image);
}
