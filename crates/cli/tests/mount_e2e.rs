//! End-to-end tests of `thinnode mount`, `umount` and `hydrate`: real images packed by `thinnode pack`
//! into our zdb server or a dir store, mounted through the real FUSE kernel interface.

mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mounts::{
    disk_usage, force_unmount, is_mounted, is_stale, pack, read_all_files, read_at_full,
    DetachOnDrop, Mounted,
};
use common::{ok_text as run_ok, BIN};
use rand::{Rng, RngCore, SeedableRng};
use testkit::{fuse_available, ZdbProcess};

const CHUNK: u64 = 128 * 1024;

/// Builds a source tree exercising every kind of content the mount must reproduce.
fn make_tree(root: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    fs::create_dir_all(root.join("db/sst")).expect("mkdir");
    fs::create_dir_all(root.join("empty_dir")).expect("mkdir");
    let mut big = vec![0u8; (5 * CHUNK + 12_345) as usize];
    rng.fill_bytes(&mut big);
    fs::write(root.join("db/big.bin"), &big).expect("write");
    // Repeated content: dedups to shared chunks.
    let block = vec![0xabu8; CHUNK as usize];
    let mut rep = Vec::new();
    for _ in 0..3 {
        rep.extend_from_slice(&block);
    }
    fs::write(root.join("db/repeated.bin"), &rep).expect("write");
    for i in 0..20 {
        let mut small = vec![0u8; rng.random_range(0..5000)];
        rng.fill_bytes(&mut small);
        fs::write(root.join(format!("db/sst/{i:04}.sst")), &small).expect("write");
    }
    // More entries than one readdir page.
    fs::create_dir_all(root.join("many")).expect("mkdir");
    for i in 0..1300 {
        fs::write(root.join(format!("many/entry-{i:05}")), i.to_string()).expect("write");
    }
    fs::write(root.join("empty"), b"").expect("write");
    // A sparse file: data, a hole of several chunks, data.
    let sparse = File::create(root.join("sparse.bin")).expect("create");
    sparse.write_all_at(b"head", 0).expect("write");
    sparse.write_all_at(b"tail", 6 * CHUNK + 10).expect("write");
    drop(sparse);
    fs::write(root.join("victim.bin"), {
        let mut v = vec![0u8; (2 * CHUNK) as usize];
        rng.fill_bytes(&mut v);
        v
    })
    .expect("write");
    std::os::unix::fs::symlink("db/big.bin", root.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).expect("symlink");
    fs::hard_link(root.join("db/big.bin"), root.join("big-hardlink.bin")).expect("hardlink");
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o640)).expect("chmod");
    xattr::set(root.join("db/big.bin"), "user.thinnode.test", b"value-1").expect("xattr");
    xattr::set(root.join("db"), "user.dir", b"d").expect("xattr");
}

/// A temporary directory holding the test tree (`src`) packed into a dir store (`store`) as `img`.
fn tree_packed_to_dir_store() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_tree(&src);
    let img = tmp.path().join("img");
    pack(
        &src,
        &format!("dir://{}", tmp.path().join("store").display()),
        &img,
    );
    (tmp, src, img)
}

/// Compares every entry under `src` with the same path under `mnt`: type, mode, owner, size, mtime,
/// link count, symlink target, xattrs, content; and that the directory listings agree.
fn assert_same_tree(src: &Path, mnt: &Path) {
    let mut stack = vec![PathBuf::new()];
    let mut checked = 0;
    while let Some(rel) = stack.pop() {
        let (a, b) = (src.join(&rel), mnt.join(&rel));
        let (ma, mb) = (
            fs::symlink_metadata(&a).expect("lstat src"),
            fs::symlink_metadata(&b).unwrap_or_else(|e| panic!("lstat {}: {e}", b.display())),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", rel.display());
        assert_eq!(ma.mode(), mb.mode(), "mode of {}", rel.display());
        assert_eq!(
            (ma.uid(), ma.gid()),
            (mb.uid(), mb.gid()),
            "{}",
            rel.display()
        );
        assert_eq!(ma.mtime(), mb.mtime(), "mtime of {}", rel.display());
        assert_eq!(
            ma.mtime_nsec(),
            mb.mtime_nsec(),
            "mtime ns of {}",
            rel.display()
        );
        if !ma.is_dir() {
            assert_eq!(ma.nlink(), mb.nlink(), "nlink of {}", rel.display());
            assert_eq!(ma.len(), mb.len(), "size of {}", rel.display());
        }
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&a).expect("readlink"),
                fs::read_link(&b).expect("readlink")
            );
        } else {
            let xa: Vec<_> = xattr::list(&a).expect("listxattr").collect();
            let xb: Vec<_> = xattr::list(&b).expect("listxattr").collect();
            assert_eq!(xa, xb, "xattr names of {}", rel.display());
            for name in xa {
                assert_eq!(
                    xattr::get(&a, &name).expect("getxattr"),
                    xattr::get(&b, &name).expect("getxattr"),
                    "xattr {name:?} of {}",
                    rel.display()
                );
            }
        }
        if ma.is_file() {
            assert!(
                fs::read(&a).expect("read") == fs::read(&b).expect("read via mount"),
                "content of {}",
                rel.display()
            );
        }
        if ma.is_dir() {
            let names = |d: &Path| {
                let mut v: Vec<_> = fs::read_dir(d)
                    .expect("readdir")
                    .map(|e| e.expect("entry").file_name())
                    .collect();
                v.sort();
                v
            };
            let (na, nb) = (names(&a), names(&b));
            assert_eq!(na, nb, "listing of {}", rel.display());
            for n in na {
                stack.push(rel.join(n));
            }
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} entries compared");
}

#[test]
fn mount_from_zdb_matches_source_tree_and_random_reads() {
    if !fuse_available("mount_from_zdb_matches_source_tree_and_random_reads") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_tree(&src);
    let zdb = ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join("zdb"), &[]);
    let img = tmp.path().join("img");
    pack(&src, &zdb.url("default"), &img);
    let mut m = Mounted::start(
        &img,
        &tmp.path().join("mnt"),
        &tmp.path().join("cache"),
        &[],
    );
    let mnt = m.mnt.clone();

    assert_same_tree(&src, &mnt);
    // Hardlinks keep one inode.
    let (a, b) = (
        fs::metadata(mnt.join("db/big.bin")).expect("stat"),
        fs::metadata(mnt.join("big-hardlink.bin")).expect("stat"),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);

    // Random-offset reads, each through a fresh open so the kernel page cache is not the only source.
    let want = fs::read(src.join("db/big.bin")).expect("read");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let f = File::open(mnt.join("db/big.bin")).expect("open");
    for _ in 0..300 {
        let off = rng.random_range(0..want.len() as u64 + 100);
        let len = rng.random_range(1..300_000usize);
        let mut buf = vec![0u8; len];
        let n = read_at_full(&f, &mut buf, off);
        let start = (off as usize).min(want.len());
        let end = (start + len).min(want.len());
        assert_eq!(&buf[..n], &want[start..end], "read at {off} len {len}");
    }
    // The sparse file's hole reads as zeros.
    let sparse = fs::read(mnt.join("sparse.bin")).expect("read sparse");
    assert_eq!(&sparse[..4], b"head");
    assert!(sparse[4..(6 * CHUNK + 10) as usize].iter().all(|&b| b == 0));
    // SEEK_DATA / SEEK_HOLE see the hole (chunk granularity): data in chunk 0, hole from chunk 1,
    // data again in chunk 6, the implicit hole at the end.
    let sf = File::open(mnt.join("sparse.bin")).expect("open sparse");
    let seek = |off: u64, whence: i32| unsafe { libc::lseek(sf.as_raw_fd(), off as i64, whence) };
    assert_eq!(seek(0, libc::SEEK_DATA), 0);
    assert_eq!(seek(0, libc::SEEK_HOLE), CHUNK as i64);
    assert_eq!(seek(CHUNK, libc::SEEK_DATA), (6 * CHUNK) as i64);
    assert_eq!(seek(6 * CHUNK, libc::SEEK_HOLE), (6 * CHUNK + 14) as i64);
    assert_eq!(seek(6 * CHUNK + 14, libc::SEEK_DATA), -1);
    drop(sf);

    // Writes are refused.
    let err = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("empty"))
        .expect_err("write open must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(m.metric("thinnode_mount_chunks_fetched_total") > 0.0);
    drop(f);
    assert!(m.stop(), "SIGTERM must unmount cleanly: {}", m.log_text());
}

#[test]
fn remount_reuses_cache_with_zero_store_reads_then_passthrough() {
    if !fuse_available("remount_reuses_cache_with_zero_store_reads_then_passthrough") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = format!("dir://{}", tmp.path().join("store").display());
    let img = tmp.path().join("img");
    pack(&src, &store, &img);
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    let want = read_all_files(&src);

    let mut first = Mounted::start(&img, &mnt, &cache, &[]);
    assert_eq!(read_all_files(&mnt), want);
    assert!(first.metric("thinnode_mount_chunks_fetched_total") > 0.0);
    assert!(first.stop(), "{}", first.log_text());

    // Every file the first mount read whole was sealed in the host cache: the second mount serves
    // each from its first open by passthrough, with no store read.
    let mut second = Mounted::start(&img, &mnt, &cache, &[]);
    assert_eq!(read_all_files(&mnt), want);
    assert_eq!(second.metric("thinnode_mount_chunks_fetched_total"), 0.0);
    let non_empty = want.values().filter(|v| !v.is_empty()).count() as f64;
    assert!(
        second.metric("thinnode_mount_passthrough_opens_total") >= non_empty,
        "{}",
        second.log_text()
    );
    assert!(second.stop(), "{}", second.log_text());

    // Without passthrough the daemon serves the same bytes from the cache files, still with no store
    // read.
    let second = Mounted::start(&img, &mnt, &cache, &["--no-passthrough"]);
    assert_eq!(read_all_files(&mnt), want);
    assert_eq!(second.metric("thinnode_mount_chunks_fetched_total"), 0.0);
    assert!(second.metric("thinnode_mount_cache_hits_total") > 0.0);
    assert_eq!(second.metric("thinnode_mount_passthrough_opens_total"), 0.0);
    drop(second);
    let _third = Mounted::start(&img, &mnt, &cache, &[]);
    // Random reads through the passthrough file are still exact.
    let f = File::open(mnt.join("db/big.bin")).expect("open");
    let mut buf = vec![0u8; 10_000];
    let n = read_at_full(&f, &mut buf, 300_001);
    assert_eq!(&buf[..n], &want[Path::new("db/big.bin")][300_001..310_001]);
}

#[test]
fn corrupt_stored_chunk_gives_eio_not_data() {
    if !fuse_available("corrupt_stored_chunk_gives_eio_not_data") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_tree(&src);
    let store_dir = tmp.path().join("store");
    let img = tmp.path().join("img");
    pack(&src, &format!("dir://{}", store_dir.display()), &img);

    // Flip one byte of the stored object holding the second chunk of victim.bin.
    let manifest = image::ImageManifest::open(&img).expect("open image");
    let victim = manifest
        .lookup(image::ROOT_INO, b"victim.bin")
        .expect("lookup")
        .expect("victim exists");
    let r = manifest
        .chunk(victim.ino, 1)
        .expect("chunk")
        .expect("not a hole");
    let hex = r.id.to_hex();
    let object = store_dir.join(&hex[..2]).join(&hex);
    let mut bytes = fs::read(&object).expect("stored object");
    bytes[10] ^= 0x55;
    fs::write(&object, &bytes).expect("corrupt");

    let m = Mounted::start(
        &img,
        &tmp.path().join("mnt"),
        &tmp.path().join("cache"),
        &["--timeout", "2"],
    );
    let f = File::open(m.mnt.join("victim.bin")).expect("open");
    let mut buf = vec![0u8; 4096];
    // The first chunk is intact.
    assert_eq!(read_at_full(&f, &mut buf, 0), 4096);
    let err = f
        .read_at(&mut buf, CHUNK + 100)
        .expect_err("corrupt chunk must not read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(m.metric("thinnode_mount_corrupt_chunks_total") >= 1.0);
    // The failure is logged with the file and offset; the mount stays up.
    let log = m.log_text();
    assert!(
        log.contains("/victim.bin") && log.contains(&format!("offset {}", CHUNK)),
        "{log}"
    );
    assert_eq!(
        fs::read(m.mnt.join("db/big.bin")).expect("other files still readable"),
        fs::read(src.join("db/big.bin")).expect("read")
    );
}

#[test]
fn store_killed_mid_read_gives_eio_then_recovers() {
    if !fuse_available("store_killed_mid_read_gives_eio_then_recovers") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_tree(&src);
    let mut zdb = ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join("zdb"), &[]);
    let img = tmp.path().join("img");
    pack(&src, &zdb.url("default"), &img);
    let m = Mounted::start(
        &img,
        &tmp.path().join("mnt"),
        &tmp.path().join("cache"),
        &["--timeout", "1", "--readahead", "0"],
    );
    let want = fs::read(src.join("db/big.bin")).expect("read");

    // Read the first chunk, then kill the store and read further.
    let f = File::open(m.mnt.join("db/big.bin")).expect("open");
    let mut buf = vec![0u8; 1000];
    assert_eq!(read_at_full(&f, &mut buf, 0), 1000);
    assert_eq!(&buf[..], &want[..1000]);
    zdb.child.kill();
    let started = Instant::now();
    let err = f
        .read_at(&mut buf, 4 * CHUNK + 7)
        .expect_err("a read needing the dead store must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(started.elapsed() < Duration::from_secs(30));
    // The mount is still up and answers metadata.
    assert!(fs::metadata(m.mnt.join("db")).expect("stat").is_dir());
    assert!(m.metric("thinnode_mount_store_errors_total") >= 1.0);

    zdb.restart();
    // The store client reconnects on its own schedule: allow a few attempts (bounded) before the read
    // must succeed.
    let mut attempts = 0;
    while f.read_at(&mut buf, 4 * CHUNK + 7).is_err() {
        attempts += 1;
        assert!(
            attempts < 20,
            "the mount did not recover after the store came back"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let n = read_at_full(&f, &mut buf, 4 * CHUNK + 7);
    assert_eq!(
        &buf[..n],
        &want[(4 * CHUNK + 7) as usize..(4 * CHUNK + 7) as usize + n]
    );
    assert_eq!(fs::read(m.mnt.join("db/big.bin")).expect("read all"), want);
}

#[test]
fn eviction_keeps_cache_under_limit() {
    if !fuse_available("eviction_keeps_cache_under_limit") {
        return;
    }
    let (tmp, src, img) = tree_packed_to_dir_store();
    let cache = tmp.path().join("cache");
    let limit = 3 * CHUNK;
    let m = Mounted::start(
        &img,
        &tmp.path().join("mnt"),
        &cache,
        &["--cache-size", &limit.to_string()],
    );
    let want = read_all_files(&src);
    assert_eq!(read_all_files(&m.mnt), want);
    let start = Instant::now();
    let mut size = disk_usage(&cache.join("v2"));
    while size > limit && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        size = disk_usage(&cache.join("v2"));
    }
    assert!(size <= limit, "cache holds {size} bytes, limit {limit}");
    assert!(size > 0, "the cache should keep the most recent chunks");
    // Still correct after eviction (evicted chunks are fetched again).
    assert_eq!(read_all_files(&m.mnt), want);
}

#[test]
fn sigkill_leaves_stale_mount_that_mount_and_umount_clean() {
    if !fuse_available("sigkill_leaves_stale_mount_that_mount_and_umount_clean") {
        return;
    }
    let (tmp, src, img) = tree_packed_to_dir_store();
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    let _cleanup = DetachOnDrop(mnt.clone());

    let mut m = Mounted::start(&img, &mnt, &cache, &[]);
    m.child.kill();
    assert!(is_stale(&mnt), "a killed daemon leaves a dead mount");
    drop(m);
    // `drop` detached it; make it stale again for the real check.
    let mut m = Mounted::start(&img, &mnt, &cache, &[]);
    m.child.kill();
    assert!(is_stale(&mnt));
    std::mem::forget(m);

    // The next mount cleans the stale mount and serves.
    let m2 = Mounted::start(&img, &mnt, &cache, &[]);
    assert!(m2.log_text().contains("stale mount"), "{}", m2.log_text());
    assert_eq!(
        fs::read(mnt.join("link")).expect("read"),
        fs::read(src.join("db/big.bin")).expect("read")
    );
    let mut m2 = m2;
    m2.child.kill();
    assert!(is_stale(&mnt));
    std::mem::forget(m2);

    // umount cleans a stale mount too.
    run_ok(&["umount", mnt.to_str().expect("utf8")]);
    assert!(!is_mounted(&mnt));
    assert!(fs::metadata(&mnt).expect("plain dir again").is_dir());
}

#[test]
fn daemon_mode_is_ready_on_return_and_umount_stops_it() {
    if !fuse_available("daemon_mode_is_ready_on_return_and_umount_stops_it") {
        return;
    }
    let (tmp, src, img) = tree_packed_to_dir_store();
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let log = tmp.path().join("daemon.log");
    let out = run_ok(&[
        "mount",
        img.to_str().expect("utf8"),
        mnt.to_str().expect("utf8"),
        "--cache",
        tmp.path().join("cache").to_str().expect("utf8"),
        "--daemon",
        "--log",
        log.to_str().expect("utf8"),
    ]);
    // Ready the moment the command returns: no polling here.
    let ready = is_mounted(&mnt);
    if !ready {
        force_unmount(&mnt);
    }
    assert!(ready, "not mounted when `mount --daemon` returned: {out}");
    let pid: i32 = out
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out}"));
    assert_eq!(
        fs::read(mnt.join("db/big.bin")).expect("read"),
        fs::read(src.join("db/big.bin")).expect("read")
    );
    // A second mount on the same mountpoint is refused.
    let again = Command::new(BIN)
        .args([
            "mount",
            img.to_str().expect("utf8"),
            mnt.to_str().expect("utf8"),
            "--daemon",
            "--log",
        ])
        .arg(&log)
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .output()
        .expect("run");
    assert!(!again.status.success(), "double mount must fail");

    run_ok(&["umount", mnt.to_str().expect("utf8")]);
    assert!(!is_mounted(&mnt));
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "daemon {pid} still running"
    );

    // A failing daemon reports its error to the caller.
    let bad = Command::new(BIN)
        .args([
            "mount",
            "/nonexistent.img",
            mnt.to_str().expect("utf8"),
            "--daemon",
            "--log",
        ])
        .arg(&log)
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("nonexistent.img"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn trace_then_hydrate_serves_everything_without_the_store() {
    if !fuse_available("trace_then_hydrate_serves_everything_without_the_store") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_tree(&src);
    let store_dir = tmp.path().join("store");
    let store = format!("dir://{}", store_dir.display());
    let img = tmp.path().join("img");
    pack(&src, &store, &img);
    let trace = tmp.path().join("trace");
    let mnt = tmp.path().join("mnt");

    let mut m = Mounted::start(
        &img,
        &mnt,
        &tmp.path().join("cache1"),
        &["--record-trace", trace.to_str().expect("utf8")],
    );
    fs::read(mnt.join("victim.bin")).expect("read");
    fs::read(mnt.join("db/sst/0003.sst")).expect("read");
    assert!(m.stop());
    let traced = fs::read_to_string(&trace).expect("trace");
    assert!(traced.lines().count() >= 2, "{traced}");

    // Hydrate a fresh cache from the image file, trace first, with a bandwidth cap.
    let cache2 = tmp.path().join("cache2");
    let out = run_ok(&[
        "hydrate",
        img.to_str().expect("utf8"),
        "--cache",
        cache2.to_str().expect("utf8"),
        "--trace",
        trace.to_str().expect("utf8"),
        "--rate",
        "500MB/s",
        "--quiet",
    ]);
    assert!(out.contains("0 failed"), "{out}");

    // Without the store at all, every file still reads correctly from the hydrated cache.
    fs::rename(&store_dir, tmp.path().join("store-gone")).expect("hide store");
    let m2 = Mounted::start(&img, &mnt, &cache2, &["--timeout", "1"]);
    assert_eq!(read_all_files(&mnt), read_all_files(&src));
    assert_eq!(m2.metric("thinnode_mount_chunks_fetched_total"), 0.0);
    assert_eq!(m2.metric("thinnode_mount_read_errors_total"), 0.0);

    // `--file` limits hydration to the given paths: victim.bin is exactly two chunks.
    let out = run_ok(&[
        "hydrate",
        img.to_str().expect("utf8"),
        "--cache",
        tmp.path().join("cache3").to_str().expect("utf8"),
        "--store",
        &format!("dir://{}", tmp.path().join("store-gone").display()),
        "--file",
        "victim.bin",
        "--quiet",
    ]);
    assert!(out.contains("hydrated 2 chunks"), "{out}");

    // `hydrate MOUNTPOINT` finds the running mount's image and cache: nothing left to fetch.
    let out = run_ok(&["hydrate", mnt.to_str().expect("utf8"), "--quiet"]);
    assert!(
        out.contains("0 fetched") && out.contains("0 failed"),
        "{out}"
    );
}

#[test]
fn trust_rejects_an_image_signed_by_another_key() {
    if !fuse_available("trust_rejects_an_image_signed_by_another_key") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("f"), b"data").expect("write");
    let (k1, k2) = (tmp.path().join("k1"), tmp.path().join("k2"));
    run_ok(&["key", "gen", "--out", k1.to_str().expect("utf8")]);
    run_ok(&["key", "gen", "--out", k2.to_str().expect("utf8")]);
    let img = tmp.path().join("img");
    run_ok(&[
        "pack",
        src.to_str().expect("utf8"),
        "--store",
        &format!("dir://{}", tmp.path().join("store").display()),
        "--out",
        img.to_str().expect("utf8"),
        "--sign",
        k1.to_str().expect("utf8"),
    ]);
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let refused = Command::new(BIN)
        .args([
            "mount",
            img.to_str().expect("utf8"),
            mnt.to_str().expect("utf8"),
            "--trust",
        ])
        .arg(format!("{}.pub", k2.display()))
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(!is_mounted(&mnt));
    let m = Mounted::start(
        &img,
        &mnt,
        &tmp.path().join("cache"),
        &["--trust", &format!("{}.pub", k1.display())],
    );
    assert_eq!(fs::read(m.mnt.join("f")).expect("read"), b"data");
}

#[test]
fn sigterm_with_open_files_detaches_and_exits() {
    if !fuse_available("sigterm_with_open_files_detaches_and_exits") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("f"), vec![7u8; 300_000]).expect("write");
    let img = tmp.path().join("img");
    pack(
        &src,
        &format!("dir://{}", tmp.path().join("store").display()),
        &img,
    );
    let mnt = tmp.path().join("mnt");
    let _cleanup = DetachOnDrop(mnt.clone());
    let mut m = Mounted::start(&img, &mnt, &tmp.path().join("cache"), &[]);
    let open_file = File::open(mnt.join("f")).expect("open");
    let status = m.child.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon must exit on SIGTERM even with open files: {}",
        m.log_text()
    );
    assert!(
        !is_mounted(&mnt),
        "the mountpoint must be free after SIGTERM"
    );
    drop(open_file);
}
