//! End-to-end tests of `thinnode key / pack / unpack / verify / inspect`, running the real binary
//! against a `dir://` store and against our 0-db server (`thinnode zdb`).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, RngCore, SeedableRng};

const THINNODE: &str = env!("CARGO_BIN_EXE_thinnode");

fn thinnode(args: &[&OsStr]) -> Output {
    Command::new(THINNODE)
        .args(args)
        .output()
        .expect("run thinnode")
}

/// Runs thinnode and asserts success; returns stdout.
fn ok(args: &[&str]) -> String {
    let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = thinnode(&os);
    assert!(
        out.status.success(),
        "thinnode {args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs thinnode and asserts failure; returns stdout + stderr.
fn fails(args: &[&str]) -> String {
    let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = thinnode(&os);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "thinnode {args:?} should fail\n{text}"
    );
    text
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `pack --json` and parse the summary.
fn pack_json(src: &Path, store: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["pack", p(src), "--store", store, "--out", p(out), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).expect("pack --json output")
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn random_bytes(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A tree exercising every feature: content (random, compressible, duplicate), modes, owners, times
/// with nanoseconds, xattrs, symlinks (dangling, raw names), hardlinks, sparse holes, fifos, devices.
fn make_tree(root: &Path, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    fs::create_dir_all(root.join("db/sst")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("deep/a/b/c/d")).unwrap();
    // Random and compressible content, sizes around chunk boundaries (chunk size 64 KiB in the tests).
    for (i, size) in [0usize, 1, 65535, 65536, 65537, 300_000, 1_000_000]
        .iter()
        .enumerate()
    {
        fs::write(
            root.join(format!("db/sst/{i:06}.sst")),
            random_bytes(&mut rng, *size),
        )
        .unwrap();
    }
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("block {i} hash {:x}\n", i.wrapping_mul(2654435761)).into_bytes())
        .take(700_000)
        .collect();
    fs::write(root.join("db/LOG"), &text).unwrap();
    // Duplicate content (dedups), not a hardlink.
    fs::write(root.join("db/LOG.old"), &text).unwrap();
    // Hardlinks.
    fs::write(root.join("db/CURRENT"), b"MANIFEST-000042\n").unwrap();
    fs::hard_link(root.join("db/CURRENT"), root.join("deep/a/CURRENT-link")).unwrap();
    fs::hard_link(root.join("db/CURRENT"), root.join("deep/a/b/CURRENT-link2")).unwrap();
    // Sparse file: data, a 5 MiB hole, data, trailing hole.
    let sparse = fs::File::create(root.join("db/sparse.tbl")).unwrap();
    sparse
        .write_all_at(&random_bytes(&mut rng, 100_000), 0)
        .unwrap();
    sparse
        .write_all_at(&random_bytes(&mut rng, 70_000), 5 << 20)
        .unwrap();
    sparse.set_len(9 << 20).unwrap();
    drop(sparse);
    // Symlinks: relative, absolute, dangling, with a raw non-UTF-8 target.
    std::os::unix::fs::symlink("LOG", root.join("db/LOG.link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"raw\xff\xfe"), root.join("rawlink")).unwrap();
    // Non-UTF-8 names.
    fs::write(
        root.join(OsStr::from_bytes(b"name-\xff\xfe\x80")),
        b"raw name",
    )
    .unwrap();
    fs::create_dir(root.join(OsStr::from_bytes(b"dir-\xc3\x28"))).unwrap();
    fs::write(
        root.join(OsStr::from_bytes(b"dir-\xc3\x28")).join("inner"),
        random_bytes(&mut rng, 5000),
    )
    .unwrap();
    // Modes.
    for (name, mode) in [
        ("mode-600", 0o600),
        ("mode-4755", 0o4755),
        ("mode-2711", 0o2711),
        ("mode-000", 0o000),
    ] {
        let path = root.join(name);
        fs::write(&path, name.as_bytes()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    // xattrs (user.* everywhere; trusted.* needs root).
    xattr::set(root.join("db/LOG"), "user.checksum", b"\x00\x01binary\xff").unwrap();
    xattr::set(root.join("db"), "user.dir", b"yes").unwrap();
    if is_root() {
        xattr::set(root.join("db/CURRENT"), "trusted.overlay.opaque", b"y").unwrap();
        // Owners.
        std::os::unix::fs::chown(root.join("db/LOG"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("dangling"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::chown(root.join("deep/a"), Some(1000), Some(1000)).unwrap();
        // Device nodes.
        let c = CString::new(root.join("null-dev").as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o640, libc::makedev(1, 3)) },
            0
        );
        let c = CString::new(root.join("blk-dev").as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 200)) },
            0
        );
    }
    let c = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A unix socket file (the listener is dropped at once; the file stays).
    drop(std::os::unix::net::UnixListener::bind(root.join("db/node.sock")).unwrap());
    // Times with nanoseconds on everything, directories last.
    let mut all: Vec<PathBuf> = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in all.iter().enumerate() {
        set_mtime(
            path,
            1_600_000_000 + rng.random_range(0..10_000_000),
            (i as i64 * 7919) % 1_000_000_000,
        );
    }
    set_mtime(root, 1_650_000_000, 123_456_789);
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            collect(&path, out);
        }
        out.push(path);
    }
}

/// Everything that must survive a round trip, per path.
#[derive(Debug, PartialEq)]
struct Desc {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    nlink: u64,
    content: Option<[u8; 32]>,
    link: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first path (in sorted order) sharing this inode: hardlink structure.
    link_group: Vec<u8>,
}

fn describe(root: &Path) -> BTreeMap<Vec<u8>, Desc> {
    let mut paths = vec![root.to_path_buf()];
    collect(root, &mut paths);
    paths.sort();
    let mut first_of_ino: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for path in paths {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let m = fs::symlink_metadata(&path).unwrap();
        let group = first_of_ino
            .entry(m.ino())
            .or_insert_with(|| rel.clone())
            .clone();
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&path)
            .unwrap()
            .map(|n| {
                let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                (n.as_bytes().to_vec(), v)
            })
            .collect();
        xattrs.sort();
        out.insert(
            rel,
            Desc {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: if m.is_dir() { 0 } else { m.size() },
                mtime: (m.mtime(), m.mtime_nsec()),
                rdev: m.rdev(),
                nlink: m.nlink(),
                content: m
                    .is_file()
                    .then(|| *blake3::hash(&fs::read(&path).unwrap()).as_bytes()),
                link: m.file_type().is_symlink().then(|| {
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                xattrs,
                link_group: group,
            },
        );
    }
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let da = describe(a);
    let db = describe(b);
    assert_eq!(
        da.keys().collect::<Vec<_>>(),
        db.keys().collect::<Vec<_>>(),
        "different names"
    );
    for (k, va) in &da {
        assert_eq!(va, &db[k], "{} differs", String::from_utf8_lossy(k));
    }
}

#[test]
fn generated_tree_round_trips_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 1);
    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("tree.img");
    let s = pack_json(
        &src,
        &store,
        &img,
        &[
            "--chunk-size",
            "64KiB",
            "--chain",
            "test",
            "--label",
            "db=rocksdb",
        ],
    );
    // LOG.old duplicates LOG: 11 chunks of 64 KiB deduplicated; hardlinks counted once.
    assert_eq!(n(&s, "hardlinks"), 2);
    assert!(n(&s, "chunks_total") >= n(&s, "chunks_unique") + 11, "{s}");
    assert_eq!(n(&s, "chunks_new"), n(&s, "chunks_unique"));
    assert!(
        n(&s, "hole_bytes") >= 8 << 20,
        "sparse holes not recorded: {s}"
    );

    let out = tmp.path().join("out");
    ok(&["unpack", p(&img), p(&out)]);
    assert_same_tree(&src, &out);
    // Sparse files stay sparse.
    let m = fs::metadata(out.join("db/sparse.tbl")).unwrap();
    assert_eq!(m.len(), 9 << 20);
    assert!(
        m.blocks() * 512 < 2 << 20,
        "unpacked sparse file allocates {} bytes",
        m.blocks() * 512
    );

    // Inspect reports the same counts.
    let i: serde_json::Value = serde_json::from_str(&ok(&["inspect", p(&img), "--json"])).unwrap();
    assert_eq!(n(&i, "unique_chunks"), n(&s, "chunks_unique"));
    assert_eq!(n(&i, "chunk_refs"), n(&s, "chunks_total"));
    assert_eq!(n(&i, "hardlinks"), 2);
    assert_eq!(n(&i, "logical_bytes"), n(&s, "logical_bytes"));
    assert!(i["dedup_ratio"].as_f64().unwrap() > 1.0);
    assert!(i["compression_ratio"].as_f64().unwrap() > 1.0);
    assert_eq!(i["labels"]["chain"], "test");
    assert_eq!(i["labels"]["db"], "rocksdb");
    assert_eq!(i["stores"][0], store.as_str());
    let text = ok(&["inspect", p(&img)]);
    assert!(text.contains("dedup ratio"), "{text}");

    // Packing the same tree with the same options gives the same manifest bytes (reproducible).
    let same = tmp.path().join("same.img");
    pack_json(
        &src,
        &store,
        &same,
        &[
            "--chunk-size",
            "64KiB",
            "--chain",
            "test",
            "--label",
            "db=rocksdb",
        ],
    );
    assert!(
        fs::read(&same).unwrap() == fs::read(&img).unwrap(),
        "manifest not reproducible"
    );

    // Packing the same tree again uploads nothing.
    let again = pack_json(
        &src,
        &store,
        &tmp.path().join("again.img"),
        &["--chunk-size", "64KiB"],
    );
    assert_eq!(n(&again, "chunks_new"), 0);
    assert_eq!(n(&again, "bytes_uploaded"), 0);
    assert_eq!(n(&again, "chunks_reused"), n(&s, "chunks_unique"));
}

#[test]
fn one_percent_change_uploads_about_one_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let file_size: usize = 8 << 20;
    for i in 0..8 {
        fs::write(
            src.join(format!("table{i}")),
            random_bytes(&mut rng, file_size),
        )
        .unwrap();
    }
    let total = 8 * file_size as u64;
    // Two stores holding the first image: one for a plain re-pack, one for a re-pack with --base.
    let stores: Vec<String> = ["store-a", "store-b"]
        .iter()
        .map(|d| format!("dir://{}", tmp.path().join(d).display()))
        .collect();
    let base = tmp.path().join("v1.img");
    for store in &stores {
        let first = pack_json(&src, store, &base, &["--chunk-size", "64KiB"]);
        assert!(n(&first, "bytes_uploaded") >= total);
    }

    // Change 1% of the bytes in place, as a database does: 4 runs of 160 KiB at unaligned offsets.
    let run = 160 * 1024;
    let changed = 4 * run as u64;
    assert_eq!((changed + 6) * 100 / total, 0, "more than 1% changed");
    let mut touched = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let t = rng.random_range(0..7);
        touched.insert(t);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(src.join(format!("table{t}")))
            .unwrap();
        let off = rng.random_range(0..(file_size - run) as u64);
        f.write_all_at(&random_bytes(&mut rng, run), off).unwrap();
    }
    // table7 changes too, but its mtime is put back: its ctime still tells --base to re-read it.
    let t7 = src.join("table7");
    let m7 = fs::metadata(&t7).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&t7)
        .unwrap()
        .write_all_at(b"sneaky", 4096)
        .unwrap();
    set_mtime(&t7, m7.mtime(), m7.mtime_nsec());
    touched.insert(7);
    // Each run touches at most 4 chunks of 64 KiB: at most 1 MiB (1.6%) plus AEAD tags is uploaded.
    let max_upload = 4 * 4 * 65536 + 65536 + 17 * 16;
    for (store, extra) in stores.iter().zip([vec![], vec!["--base", p(&base)]]) {
        let mut args = vec!["--chunk-size", "64KiB"];
        args.extend_from_slice(&extra);
        let out = tmp.path().join(format!("v2-{}.img", extra.len()));
        let second = pack_json(&src, store, &out, &args);
        let uploaded = n(&second, "bytes_uploaded");
        assert!(
            uploaded >= changed && uploaded <= max_upload,
            "{extra:?}: uploaded {uploaded} bytes for {changed} changed of {total}: {second}"
        );
        assert!(n(&second, "chunks_new") <= 17, "{second}");
        if extra.is_empty() {
            assert_eq!(n(&second, "files_unchanged"), 0);
        } else {
            // Untouched files are taken from the base without reading them.
            assert_eq!(
                n(&second, "files_unchanged"),
                8 - touched.len() as u64,
                "{second}"
            );
        }
        assert_eq!(
            n(&second, "chunks_new") + n(&second, "chunks_reused"),
            n(&second, "chunks_unique")
        );
        println!(
            "1% change {extra:?}: uploaded {uploaded} bytes = {:.2}% of {total}",
            uploaded as f64 * 100.0 / total as f64
        );
        // The new image restores the modified tree.
        let restored = tmp.path().join(format!("restored-{}", extra.len()));
        ok(&["unpack", p(&out), p(&restored)]);
        for i in 0..8 {
            let name = format!("table{i}");
            assert!(
                fs::read(src.join(&name)).unwrap() == fs::read(restored.join(&name)).unwrap(),
                "{name} differs"
            );
        }
    }
}

/// The dir store's object file for `id`.
fn object_path(store_dir: &Path, id: &str) -> PathBuf {
    store_dir.join(&id[..2]).join(id)
}

#[test]
fn corrupt_chunk_is_reported_by_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("chains")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    fs::write(
        src.join("chains/blocks.dat"),
        random_bytes(&mut rng, 4 * 65536),
    )
    .unwrap();
    fs::write(src.join("other.dat"), random_bytes(&mut rng, 65536)).unwrap();
    let store_dir = tmp.path().join("store");
    let store = format!("dir://{}", store_dir.display());
    let img = tmp.path().join("c.img");
    pack_json(&src, &store, &img, &["--chunk-size", "64KiB"]);
    ok(&["verify", p(&img), "--deep"]);

    // Find chunk 2 of chains/blocks.dat through the library and flip one byte of its stored object.
    let m = image::ImageManifest::open(&img).unwrap();
    let dir = m.lookup(image::ROOT_INO, b"chains").unwrap().unwrap();
    let file = m.lookup(dir.ino, b"blocks.dat").unwrap().unwrap();
    let chunk = m.chunk(file.ino, 2).unwrap().unwrap();
    let obj = object_path(&store_dir, &chunk.id.to_hex());
    let mut bytes = fs::read(&obj).unwrap();
    bytes[100] ^= 0x40;
    fs::write(&obj, bytes).unwrap();

    let report = fails(&["verify", p(&img), "--deep"]);
    assert!(
        report.contains("chains/blocks.dat @ 131072: corrupt"),
        "verify output does not name the file and offset:\n{report}"
    );
    assert!(report.contains("1 bad"), "{report}");
    let json: serde_json::Value = {
        let out = Command::new(THINNODE)
            .args(["verify", p(&img), "--deep", "--json"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(json["problems"].as_array().unwrap().len(), 1);
    assert_eq!(json["problems"][0]["offset"], 131072);

    let err = fails(&["unpack", p(&img), p(&tmp.path().join("out"))]);
    assert!(
        err.contains("chains/blocks.dat @ offset 131072") && err.contains("corrupt chunk"),
        "unpack error does not name the file:\n{err}"
    );

    // A missing object is reported too.
    fs::remove_file(&obj).unwrap();
    let report = fails(&["verify", p(&img), "--deep"]);
    assert!(
        report.contains("chains/blocks.dat @ 131072: missing"),
        "{report}"
    );
    let err = fails(&["unpack", p(&img), p(&tmp.path().join("out2"))]);
    assert!(
        err.contains("chains/blocks.dat") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn signed_images_verify_only_with_the_right_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let key = tmp.path().join("signing.key");
    let other = tmp.path().join("other.key");
    ok(&["key", "gen", "--out", p(&key)]);
    ok(&["key", "gen", "--out", p(&other)]);
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pubkey = tmp.path().join("signing.key.pub");
    let other_pub = tmp.path().join("other.key.pub");
    // The public key file format and `key show`.
    let shown = ok(&["key", "show", p(&key)]);
    let pub_text = fs::read_to_string(&pubkey).unwrap();
    assert!(pub_text.starts_with("thinnode-ed25519-public-key-v1\n"));
    assert!(pub_text.contains(shown.trim()));
    fails(&["key", "gen", "--out", p(&key)]);

    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("s.img");
    ok(&[
        "pack",
        p(&src),
        "--store",
        &store,
        "--out",
        p(&img),
        "--sign",
        p(&key),
    ]);
    let out = ok(&["verify", p(&img), "--trust", p(&pubkey), "--deep"]);
    assert!(out.contains("signature: valid"), "{out}");
    let out = ok(&["verify", p(&img)]);
    assert!(out.contains("not checked"), "{out}");
    let err = fails(&["verify", p(&img), "--trust", p(&other_pub)]);
    assert!(err.contains("not by the trusted key"), "{err}");
    fails(&[
        "unpack",
        p(&img),
        p(&tmp.path().join("o1")),
        "--trust",
        p(&other_pub),
    ]);
    ok(&[
        "unpack",
        p(&img),
        p(&tmp.path().join("o2")),
        "--trust",
        p(&pubkey),
    ]);

    // Tampering with the manifest breaks the signature.
    let mut bytes = fs::read(&img).unwrap();
    bytes[170] ^= 1;
    let bad = tmp.path().join("tampered.img");
    fs::write(&bad, bytes).unwrap();
    fails(&["verify", p(&bad), "--trust", p(&pubkey)]);
    fails(&["verify", p(&bad)]);

    // An unsigned image fails a --trust check.
    let unsigned = tmp.path().join("u.img");
    ok(&["pack", p(&src), "--store", &store, "--out", p(&unsigned)]);
    let err = fails(&["verify", p(&unsigned), "--trust", p(&pubkey)]);
    assert!(err.contains("not signed"), "{err}");

    // Refusals with clear errors: a non-empty destination, a source that is not a directory, a bad size.
    let err = fails(&["unpack", p(&img), p(&src)]);
    assert!(err.contains("is not empty"), "{err}");
    let err = fails(&[
        "pack",
        p(&src.join("f")),
        "--store",
        &store,
        "--out",
        p(&tmp.path().join("x.img")),
    ]);
    assert!(err.contains("is not a directory"), "{err}");
    let err = fails(&[
        "pack",
        p(&src),
        "--store",
        &store,
        "--out",
        p(&tmp.path().join("x.img")),
        "--chunk-size",
        "8M",
    ]);
    assert!(err.contains("between 64KiB and 4MiB"), "{err}");

    // Garbage is not an image.
    let junk = tmp.path().join("junk.img");
    fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = fails(&["inspect", p(&junk)]);
    assert!(err.contains("not a thinnode image"), "{err}");
}

#[test]
fn paritydb_directory_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("paritydb");
    let built = paritydb_harness::build(&src, 24 << 20, 11).unwrap();
    assert!(built.keys > 0);
    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("pdb.img");
    let s = pack_json(&src, &store, &img, &["--db-type", "paritydb"]);
    assert!(n(&s, "files") > 5, "{s}");
    let out = tmp.path().join("restored");
    ok(&["unpack", p(&img), p(&out)]);
    assert_same_tree(&src, &out);
    let db = paritydb_harness::open(&out).unwrap();
    let checked = paritydb_harness::verify(&db, &out).unwrap();
    assert_eq!(checked.keys, built.keys);
}

#[test]
fn zdb_store_round_trip_and_dedup() {
    let tmp = tempfile::tempdir().unwrap();
    let zdb = testkit::ZdbProcess::start(&[THINNODE, "zdb"], &tmp.path().join("zdb"), &[]);
    let src = tmp.path().join("src");
    make_tree(&src, 2);
    let store = zdb.url("default");
    let img = tmp.path().join("z.img");
    let s = pack_json(&src, &store, &img, &["--chunk-size", "64KiB"]);
    assert_eq!(n(&s, "chunks_new"), n(&s, "chunks_unique"));
    let again = pack_json(
        &src,
        &store,
        &tmp.path().join("z2.img"),
        &["--chunk-size", "64KiB"],
    );
    assert_eq!(n(&again, "chunks_new"), 0);
    ok(&["verify", p(&img), "--deep"]);
    let out = tmp.path().join("out");
    ok(&["unpack", p(&img), p(&out)]);
    assert_same_tree(&src, &out);
    // The image records the store, so a dir:// override is needed only to switch stores.
    let i: serde_json::Value = serde_json::from_str(&ok(&["inspect", p(&img), "--json"])).unwrap();
    assert_eq!(i["stores"][0], store.as_str());
}
