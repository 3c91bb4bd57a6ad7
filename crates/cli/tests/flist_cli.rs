//! ThreeFold flists end to end with the real binary: the rfs fixtures (made by real rfs, see
//! crates/flist/tests/fixtures/rfs) mounted through our FUSE mount from their own routes, a `--store`
//! override, our zdb server (including a password namespace whose route lacks the password), unpacked,
//! verified and inspected; a corrupt block is EIO with a log line naming file and offset; flists we pack
//! and convert mount back byte for byte; and hub-style mounts of an http URL, also once the server is
//! gone.

mod common;

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok_text, run, text, BIN};
use testkit::{free_port, fuse_available, ChildGuard, ZdbProcess};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../flist/tests/fixtures/rfs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Copies the fixture block store to `to` (writable), optionally only blobs whose id starts in
/// `first..=last`.
fn copy_store(to: &Path, range: (u8, u8)) {
    for d in fs::read_dir(fixtures().join("store-dir")).expect("store") {
        let d = d.expect("entry");
        let byte = u8::from_str_radix(&d.file_name().to_string_lossy(), 16).expect("hex dir");
        if byte < range.0 || byte > range.1 {
            continue;
        }
        fs::create_dir_all(to.join(d.file_name())).expect("mkdir");
        for f in fs::read_dir(d.path()).expect("dir") {
            let f = f.expect("entry");
            let dst = to.join(d.file_name()).join(f.file_name());
            fs::write(&dst, fs::read(f.path()).expect("read")).expect("write");
        }
    }
}

/// A writable copy of fixture `name` at `to` with its route table replaced by `routes`.
fn with_routes(name: &str, to: &Path, routes: &[(u8, u8, String)]) {
    fs::write(to, fs::read(fixtures().join(name)).expect("read fixture")).expect("copy");
    let conn = rusqlite::Connection::open(to).expect("open copy");
    conn.execute("DELETE FROM route", [])
        .expect("delete routes");
    for (a, b, url) in routes {
        conn.execute(
            "INSERT INTO route (start, \"end\", url) VALUES (?, ?, ?)",
            rusqlite::params![a, b, url],
        )
        .expect("insert route");
    }
}

/// Checks the tree at `root` against the fixture's tree.manifest and tree.sha256 (what rfs keeps: type,
/// mode, owner, size, mtime seconds, symlink target, content).
fn assert_fixture_tree(root: &Path) {
    let manifest = fs::read_to_string(fixtures().join("tree.manifest")).expect("manifest");
    let sums: HashMap<String, String> = fs::read_to_string(fixtures().join("tree.sha256"))
        .expect("sums")
        .lines()
        .map(|l| {
            let (h, p) = l.split_once("  ").expect("line");
            (p.to_string(), h.to_string())
        })
        .collect();
    let mut n = 0;
    for line in manifest.lines() {
        let (head, target) = line.split_once('\t').expect("tab");
        let f: Vec<&str> = head.splitn(7, ' ').collect();
        let p = root.join(f[6]);
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", f[6]));
        let kind = if m.is_dir() {
            "d"
        } else if m.file_type().is_symlink() {
            "l"
        } else {
            "f"
        };
        assert_eq!(kind, f[0], "{}", f[6]);
        assert_eq!(format!("{:o}", m.mode() & 0o7777), f[1], "{} mode", f[6]);
        assert_eq!(
            (m.uid().to_string(), m.gid().to_string()),
            (f[2].into(), f[3].into()),
            "{}",
            f[6]
        );
        assert_eq!(
            m.mtime().to_string(),
            f[5].split('.').next().expect("secs"),
            "{} mtime",
            f[6]
        );
        match kind {
            "f" => {
                assert_eq!(m.size().to_string(), f[4], "{} size", f[6]);
                let data = fs::read(&p).expect("read");
                let h = hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
                assert_eq!(&h, &sums[f[6]], "{} content", f[6]);
            }
            "l" => assert_eq!(
                fs::read_link(&p).expect("readlink").to_string_lossy(),
                target
            ),
            _ => {}
        }
        n += 1;
    }
    assert_eq!(n, 20);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_mounted(mnt: &Path) -> bool {
    match (fs::metadata(mnt), mnt.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// A foreground `thinnode mount` with its log; stopped (SIGTERM) on drop.
struct Mount {
    child: ChildGuard,
    mnt: PathBuf,
    log: PathBuf,
}

impl Mount {
    fn start(image: &str, mnt: &Path, cache: &Path, extra: &[&str]) -> Mount {
        fs::create_dir_all(mnt).expect("mkdir");
        let log = mnt.with_extension("log");
        let child = Command::new(BIN)
            .args(["mount", image, s(mnt), "--cache", s(cache)])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).expect("log")))
            .spawn()
            .expect("spawn mount");
        let mut m = Mount {
            child: ChildGuard::new(child),
            mnt: mnt.to_path_buf(),
            log,
        };
        let started = Instant::now();
        while !(m.log_text().contains("ready in") && is_mounted(mnt)) {
            if m.child.try_wait().is_some() || started.elapsed() > Duration::from_secs(30) {
                m.child.kill();
                panic!("mount did not come up: {}", m.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.child.terminate(Duration::from_secs(10));
        if is_mounted(&self.mnt) {
            let _ = run(&["umount", s(&self.mnt)]);
        }
    }
}

#[test]
fn rfs_fixtures_mount_unpack_verify_and_inspect() {
    if !fuse_available("rfs_fixtures_mount_unpack_verify_and_inspect") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let store = t.join("store");
    copy_store(&store, (0, 255));
    // The all-zero block is never fetched: the mount serves it as a hole, so the store need not hold it.
    let zero = "e8fd6b2d9a2e8851d12163c43f3024c31fcac6b486bceacf042d323f8e6f6640";
    fs::remove_file(store.join(&zero[..2]).join(zero)).expect("remove zero block");
    let cache = t.join("cache");

    // 1. tree-dir.fl as rfs wrote it (its route names /tmp/rfs-fixtures/…), with --store instead.
    let fl = fixtures().join("tree-dir.fl");
    let store_url = format!("dir://{}", store.display());
    {
        let _m = Mount::start(s(&fl), &t.join("m1"), &cache, &["--store", &store_url]);
        assert_fixture_tree(&t.join("m1"));
    }

    // 2. tree-sharded.fl from its own two routes (our route: store, split by id[0]).
    let (lo, hi) = (t.join("lo"), t.join("hi"));
    copy_store(&lo, (0x00, 0x7f));
    copy_store(&hi, (0x80, 0xff));
    let sharded = t.join("sharded.fl");
    with_routes(
        "tree-sharded.fl",
        &sharded,
        &[
            (0, 127, format!("dir://{}", lo.display())),
            (128, 255, format!("dir://{}", hi.display())),
        ],
    );
    {
        let _m = Mount::start(s(&sharded), &t.join("m2"), &t.join("cache2"), &[]);
        assert_fixture_tree(&t.join("m2"));
    }

    // 3. unpack, verify --deep, inspect --json of the same flist.
    ok_text(&["unpack", s(&sharded), s(&t.join("out"))]);
    assert_fixture_tree(&t.join("out"));
    let verify = ok_text(&["verify", s(&sharded), "--deep"]);
    assert!(verify.contains("19 checked, 0 bad"), "{verify}");
    let inspect: serde_json::Value =
        serde_json::from_str(&common::ok_stdout(&["inspect", s(&sharded), "--json"]))
            .expect("json");
    assert_eq!(inspect["source"], "Flist");
    assert_eq!(inspect["unique_chunks"], 19);
    assert_eq!(inspect["stored_len_unknown"], 19);
    let refused = run(&["verify", s(&sharded), "--trust", s(&fl)]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("carries no signature"),
        "{}",
        text(&refused)
    );
}

#[test]
fn rfs_fixtures_read_through_our_zdb_including_a_password_namespace() {
    if !fuse_available("rfs_fixtures_read_through_our_zdb_including_a_password_namespace") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let zdb = ZdbProcess::start(&[BIN, "zdb"], &t.join("zdb"), &[]);
    let port = zdb.port;
    let admin = store::zdb::ZdbClient::connect(
        match store::StoreLocation::parse(&zdb.url("default")).expect("url") {
            store::StoreLocation::Zdb(c) => c,
            other => panic!("{other:?}"),
        },
    )
    .expect("connect");
    for cmd in [
        vec!["NSNEW", "rfsns"],
        vec!["NSSET", "rfsns", "password", "s3cret"],
        vec!["NSSET", "rfsns", "public", "0"],
    ] {
        admin.command(&cmd).expect("namespace setup");
    }
    // Load the fixture's blobs under their raw 32-byte ids, as rfs stored them.
    let dir = store::DirStore::open(fixtures().join("store-dir")).expect("dir store");
    let ns_url = format!("zdb://:s3cret@127.0.0.1:{port}/rfsns");
    for url in [zdb.url("default"), ns_url.clone()] {
        let target = store::open(&url).expect("open zdb");
        for d in fs::read_dir(fixtures().join("store-dir")).expect("store") {
            for f in fs::read_dir(d.expect("d").path()).expect("dir") {
                let id = store::ChunkId::from_hex(&f.expect("f").file_name().to_string_lossy())
                    .expect("id");
                use store::ChunkStore;
                let data = dir.get(&id).expect("get").expect("held");
                target.put(&id, &data).expect("put");
            }
        }
    }
    let zfl = t.join("zdb.fl");
    with_routes(
        "tree-zdb.fl",
        &zfl,
        &[(0, 255, format!("zdb://127.0.0.1:{port}/default"))],
    );
    {
        let _m = Mount::start(s(&zfl), &t.join("m1"), &t.join("cache1"), &[]);
        assert_fixture_tree(&t.join("m1"));
    }
    // The namespace flist's route carries no password (rfs strips it): reading fails until --store
    // gives the password.
    let nsfl = t.join("ns.fl");
    with_routes(
        "tree-zdb-ns.fl",
        &nsfl,
        &[(0, 255, format!("zdb://rfs@127.0.0.1:{port}/rfsns"))],
    );
    let denied = run(&["unpack", s(&nsfl), s(&t.join("denied"))]);
    assert!(!denied.status.success(), "{}", text(&denied));
    {
        let _m = Mount::start(
            s(&nsfl),
            &t.join("m2"),
            &t.join("cache2"),
            &["--store", &ns_url],
        );
        assert_fixture_tree(&t.join("m2"));
    }
}

#[test]
fn a_corrupt_block_is_eio_and_a_log_line_naming_file_and_offset() {
    if !fuse_available("a_corrupt_block_is_eio_and_a_log_line_naming_file_and_offset") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let store = t.join("store");
    copy_store(&store, (0, 255));
    // Block 1 of random-1.6M.bin (bytes 524288..1048576).
    let victim = store.join("b9/b99958e43e392f1b8ed7cc687a29068b12e73258b4c5fe0ac86348eefc16e2ff");
    let mut bytes = fs::read(&victim).expect("read");
    bytes[4096] ^= 0x01;
    fs::write(&victim, bytes).expect("write");
    let url = format!("dir://{}", store.display());
    let fl = fixtures().join("tree-dir.fl");
    let m = Mount::start(
        s(&fl),
        &t.join("mnt"),
        &t.join("cache"),
        &["--store", &url, "--timeout", "2"],
    );
    let err =
        fs::read(t.join("mnt/random-1.6M.bin")).expect_err("corrupt block must not be served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The blocks around it are served.
    let f = File::open(t.join("mnt/random-1.6M.bin")).expect("open");
    let mut head = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).expect("block 0 reads");
    assert!(fs::read(t.join("mnt/text-3M.txt")).is_ok());
    let log = m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("random-1.6M.bin") && l.contains("offset"))
        .unwrap_or_else(|| panic!("no log line names the file and offset:\n{log}"));
    assert!(line.contains("corrupt"), "{line}");
}

#[test]
fn flists_we_pack_and_convert_mount_back_byte_for_byte() {
    if !fuse_available("flists_we_pack_and_convert_mount_back_byte_for_byte") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    // The fixture tree (from its flist), plus an xattr and a hard link.
    let tree = t.join("tree");
    ok_text(&[
        "unpack",
        s(&fixtures().join("tree-dir.fl")),
        s(&tree),
        "--store",
        &format!("dir://{}", fixtures().join("store-dir").display()),
    ]);
    xattr::set(tree.join("xattr.txt"), "user.rfs_test", b"v1").expect("xattr");
    fs::remove_file(tree.join("hardlink-to-hello.txt")).expect("rm");
    fs::hard_link(tree.join("a/hello.txt"), tree.join("hardlink-to-hello.txt")).expect("link");
    // Those changes touched the root's mtime: put back the packed one.
    let root_mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_796_317_192);
    File::open(&tree)
        .and_then(|d| d.set_modified(root_mtime))
        .expect("restore the root's mtime");
    let blocks = format!("dir://{}", t.join("blocks").display());
    let fl = t.join("ours.fl");
    let pack = |extra: &[&str]| {
        let mut args = vec![
            "pack",
            s(&tree),
            "--format",
            "fl",
            "--store",
            &blocks,
            "--out",
            s(&fl),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let refused = pack(&[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("--drop-xattrs"),
        "{}",
        text(&refused)
    );
    let packed = pack(&["--drop-xattrs", "--label", "version=v2"]);
    assert!(packed.status.success(), "{}", text(&packed));
    let out = text(&packed);
    assert!(
        out.contains("hard link") && out.contains("extended attributes"),
        "{out}"
    );
    {
        let _m = Mount::start(s(&fl), &t.join("m1"), &t.join("cache"), &[]);
        assert_fixture_tree(&t.join("m1"));
    }
    // flist → image → flist.
    let chunks = format!("dir://{}", t.join("chunks").display());
    let img = t.join("ours.img");
    ok_text(&[
        "convert",
        s(&fl),
        "--to",
        "image",
        "--store",
        &chunks,
        "--out",
        s(&img),
    ]);
    let inspect = ok_text(&["inspect", s(&img)]);
    assert!(inspect.contains("label:        version=v2"), "{inspect}");
    let back = t.join("back.fl");
    ok_text(&[
        "convert",
        s(&img),
        "--to",
        "fl",
        "--store",
        &blocks,
        "--out",
        s(&back),
    ]);
    {
        let _m = Mount::start(s(&back), &t.join("m2"), &t.join("cache"), &[]);
        assert_fixture_tree(&t.join("m2"));
    }
    // An image that keeps the flist's blocks by reference: nothing fetched, same tree.
    let byref = t.join("byref.img");
    ok_text(&[
        "convert",
        s(&fl),
        "--to",
        "image",
        "--by-reference",
        "--out",
        s(&byref),
    ]);
    let inspect = ok_text(&["inspect", s(&byref)]);
    assert!(inspect.contains("thinnode image"), "{inspect}");
    {
        let _m = Mount::start(s(&byref), &t.join("m3"), &t.join("cache3"), &[]);
        assert_fixture_tree(&t.join("m3"));
    }
    let tags: String = rusqlite::Connection::open(&back)
        .expect("open")
        .query_row("SELECT value FROM tag WHERE key = 'version'", [], |r| {
            r.get(0)
        })
        .expect("tag");
    assert_eq!(tags, "v2");
}

#[test]
fn hub_style_mount_of_an_http_url_also_when_the_server_is_gone() {
    if !fuse_available("hub_style_mount_of_an_http_url_also_when_the_server_is_gone") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let store = t.join("store");
    copy_store(&store, (0, 255));
    let site = t.join("site");
    fs::create_dir_all(&site).expect("mkdir");
    with_routes(
        "tree-dir.fl",
        &site.join("tree.fl"),
        &[(0, 255, format!("dir://{}", store.display()))],
    );
    let port = free_port();
    let mut server = ChildGuard::new(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server"),
    );
    testkit::wait_for_tcp(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(20),
    );
    let url = format!("http://127.0.0.1:{port}/tree.fl");
    let cache = t.join("cache");
    {
        let _m = Mount::start(&url, &t.join("m1"), &cache, &[]);
        assert_fixture_tree(&t.join("m1"));
    }
    let cached: Vec<PathBuf> = fs::read_dir(cache.join("images"))
        .expect("images")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fl"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let want = blake3::hash(&fs::read(site.join("tree.fl")).expect("read"))
        .to_hex()
        .to_string();
    assert!(cached[0].to_string_lossy().contains(&want), "{cached:?}");
    server.kill();
    {
        let m = Mount::start(&url, &t.join("m2"), &cache, &[]);
        assert_fixture_tree(&t.join("m2"));
        assert!(
            m.log_text().contains("using the copy downloaded before"),
            "{}",
            m.log_text()
        );
    }
    // A URL never downloaded, with no server: a clear error.
    let never = Command::new(BIN)
        .args(["inspect", &format!("http://127.0.0.1:{port}/other.fl")])
        .env("THINNODE_CACHE", &cache)
        .output()
        .expect("run");
    assert!(!never.status.success());
    assert!(
        text(&never).contains("no copy downloaded before"),
        "{}",
        text(&never)
    );
}
