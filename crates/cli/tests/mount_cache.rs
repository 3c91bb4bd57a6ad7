//! The host cache under real mounts: a file turns passthrough the moment its last chunk lands, hydrate
//! stores each byte once, a kill -9 mid-fill plus on-disk corruption never yields wrong bytes, eviction
//! under a small limit keeps two mounts correct, an old cache layout is cleared, and an ioctl is
//! refused without a log line.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mounts::{is_mounted, read_all_files, read_at_full, DetachOnDrop, Mounted};
use common::ok_text as run_ok;
use rand::{RngCore, SeedableRng};
use testkit::fuse_available;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A tree whose image has a file duplicated (`dup.bin` = `big.bin`) and a chunk shared by two distinct
/// files (`shares.bin` starts with `big.bin`'s first chunk), packed with `chunk`-byte chunks into a dir
/// store. Returns (temp dir, source, image, store dir).
fn sharing_image(chunk: usize) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    let big = random(8 * chunk + 12_345, 1);
    fs::write(src.join("big.bin"), &big).expect("write");
    fs::write(src.join("dup.bin"), &big).expect("write");
    let mut shares = big[..chunk].to_vec();
    shares.extend_from_slice(&random(2 * chunk, 2));
    fs::write(src.join("shares.bin"), &shares).expect("write");
    fs::write(src.join("small.bin"), random(chunk / 2, 3)).expect("write");
    let store = tmp.path().join("store");
    let img = tmp.path().join("img");
    run_ok(&[
        "pack",
        s(&src),
        "--store",
        &format!("dir://{}", store.display()),
        "--out",
        s(&img),
        "--chunk-size",
        &chunk.to_string(),
    ]);
    (tmp, src, img, store)
}

/// Plaintext bytes of the image's distinct chunks.
fn unique_chunk_bytes(img: &Path) -> u64 {
    let m = image::ImageManifest::open(img).expect("open image");
    (0..m.unique_chunk_count() as u32)
        .map(|i| u64::from(m.unique_chunk(i).expect("chunk").plain_len))
        .sum()
}

/// The host-cache data file of image file `name`.
fn cache_data_file(cache: &Path, img: &Path, name: &str) -> PathBuf {
    let m = image::ImageManifest::open(img).expect("open image");
    let inode = m
        .lookup(image::ROOT_INO, name.as_bytes())
        .expect("lookup")
        .expect("in the image");
    let chunks = m.file_chunks(inode.ino).expect("chunks");
    let key = mount::FileKey::of(inode.size, u64::from(m.chunk_size()), &chunks);
    let hex = key.to_hex();
    cache.join("v2/files").join(&hex[..2]).join(hex)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_file_becomes_passthrough_on_the_next_open_after_its_last_chunk_lands() {
    if !fuse_available("a_file_becomes_passthrough_on_the_next_open_after_its_last_chunk_lands") {
        return;
    }
    let (tmp, src, img, _) = sharing_image(128 << 10);
    let m = Mounted::start(
        &img,
        &tmp.path().join("mnt"),
        &tmp.path().join("cache"),
        &[],
    );
    let want = fs::read(src.join("big.bin")).expect("read");
    // The first open finds nothing cached: the daemon serves it.
    assert_eq!(fs::read(m.mnt.join("big.bin")).expect("read"), want);
    assert_eq!(m.metric("thinnode_mount_passthrough_opens_total"), 0.0);
    // Its last chunk landed: the next open (no handle of it open) is passthrough, in the same mount.
    wait_for("the file to be sealed", Duration::from_secs(10), || {
        m.metric("thinnode_mount_files_sealed_total") >= 1.0
    });
    let f = File::open(m.mnt.join("big.bin")).expect("open");
    assert_eq!(m.metric("thinnode_mount_passthrough_opens_total"), 1.0);
    let mut buf = vec![0u8; 200_000];
    let n = read_at_full(&f, &mut buf, 777);
    assert_eq!(&buf[..n], &want[777..777 + n]);
    let reads_before = m.metric("thinnode_mount_read_bytes_total");
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut all).expect("read");
    assert_eq!(
        m.metric("thinnode_mount_read_bytes_total"),
        reads_before,
        "passthrough reads never reach the daemon"
    );
}

/// Used bytes of the filesystem holding `path`.
fn fs_used(path: &Path) -> u64 {
    let c = std::ffi::CString::new(s(path)).expect("path");
    // SAFETY: a valid path and a zeroed statvfs for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// A loop-mounted XFS (reflinks) in `dir/xfs`, unmounted on drop.
struct LoopXfs {
    mnt: PathBuf,
}

impl LoopXfs {
    fn new(dir: &Path) -> Option<LoopXfs> {
        let image = dir.join("xfs.img");
        let mnt = dir.join("xfs");
        fs::create_dir_all(&mnt).expect("mkdir");
        File::create(&image)
            .and_then(|f| f.set_len(400 << 20))
            .expect("image file");
        let mkfs = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image)
            .status();
        if !mkfs.is_ok_and(|s| s.success()) {
            return None;
        }
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .status();
        mounted
            .is_ok_and(|s| s.success())
            .then_some(LoopXfs { mnt })
    }
}

impl Drop for LoopXfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// After `hydrate`, the host cache holds no byte twice: a duplicated file is one cache file, and a chunk
/// shared by two distinct files is stored once (a reflink). Measured as the growth of the used bytes of
/// a dedicated XFS (reflinked extents are counted once there; `du` would count them per file). On the
/// default filesystem (ext4 here: no reflinks) only the shared chunk is held twice.
#[test]
fn hydrate_stores_each_byte_once() {
    if !fuse_available("hydrate_stores_each_byte_once") {
        return;
    }
    let (tmp, src, img, _) = sharing_image(1 << 20);
    let unique = unique_chunk_bytes(&img);
    let Some(xfs) = LoopXfs::new(tmp.path()) else {
        assert!(
            std::env::var("CI").is_err(),
            "mkfs.xfs or a loop mount is not available (scripts/setup.sh installs xfsprogs)"
        );
        eprintln!("skipping hydrate_stores_each_byte_once: no loop-mounted XFS");
        return;
    };
    let before = fs_used(&xfs.mnt);
    let cache = xfs.mnt.join("cache");
    let out = run_ok(&["hydrate", s(&img), "--cache", s(&cache), "--quiet"]);
    assert!(
        out.contains("0 failed") && out.contains("3 files sealed"),
        "{out}"
    );
    Command::new("sync").status().expect("sync");
    let used = fs_used(&xfs.mnt) - before;
    let ratio = used as f64 / unique as f64;
    eprintln!("XFS: host cache uses {used} bytes for {unique} unique chunk bytes ({ratio:.3}x)");
    assert!(
        ratio <= 1.05,
        "host cache holds {ratio:.3}x the unique bytes"
    );

    // The hydrated image is passthrough-ready: every open of a mount is passthrough, no store read.
    let m = Mounted::start(&img, &tmp.path().join("mnt"), &cache, &[]);
    assert_eq!(read_all_files(&m.mnt), read_all_files(&src));
    assert_eq!(m.metric("thinnode_mount_passthrough_opens_total"), 4.0);
    assert_eq!(m.metric("thinnode_mount_chunks_fetched_total"), 0.0);
    drop(m);

    // On the default filesystem the duplicated file is still one cache file; the one chunk shared by
    // two distinct files is the only byte stored twice.
    let cache2 = tmp.path().join("cache2");
    run_ok(&["hydrate", s(&img), "--cache", s(&cache2), "--quiet"]);
    let du = common::mounts::disk_usage(&cache2.join("v2/files"));
    let ratio = du as f64 / (unique + (1 << 20)) as f64;
    eprintln!(
        "default filesystem: cache files use {du} bytes ({ratio:.3}x unique + one shared chunk)"
    );
    assert!(ratio <= 1.05, "{ratio:.3}x");
}

/// Kill -9 while the daemon fills a cache file, then damage cached bytes on disk, of an unsealed and
/// of a sealed file: reads give the right bytes (fetched again) or EIO (store gone), never wrong ones.
#[test]
fn crash_mid_fill_and_corrupted_cache_bytes_are_never_served() {
    if !fuse_available("crash_mid_fill_and_corrupted_cache_bytes_are_never_served") {
        return;
    }
    let chunk = 128usize << 10;
    let (tmp, src, img, store) = sharing_image(chunk);
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    let _cleanup = DetachOnDrop(mnt.clone());
    let big = fs::read(src.join("big.bin")).expect("read");
    let small = fs::read(src.join("small.bin")).expect("read");

    let mut m = Mounted::start(&img, &mnt, &cache, &["--readahead", "0"]);
    // small.bin whole (sealed); big.bin's first three chunks only (unsealed), then kill -9.
    assert_eq!(fs::read(mnt.join("small.bin")).expect("read"), small);
    wait_for("small.bin to be sealed", Duration::from_secs(10), || {
        m.metric("thinnode_mount_files_sealed_total") >= 1.0
    });
    let f = File::open(mnt.join("big.bin")).expect("open");
    let mut buf = vec![0u8; 3 * chunk];
    assert_eq!(read_at_full(&f, &mut buf, 0), 3 * chunk);
    assert!(buf[..] == big[..3 * chunk]);
    drop(f);
    m.child.kill();
    drop(m);

    // Damage a chunk of each: inside big.bin's second chunk, and small.bin's sealed bytes.
    let big_data = cache_data_file(&cache, &img, "big.bin");
    let small_data = cache_data_file(&cache, &img, "small.bin");
    let raw = fs::OpenOptions::new()
        .write(true)
        .open(&big_data)
        .expect("big data file");
    raw.write_all_at(b"wrong bytes", chunk as u64 + 500)
        .expect("damage");
    let raw = fs::OpenOptions::new()
        .write(true)
        .open(&small_data)
        .expect("small data file");
    raw.write_all_at(b"wrong bytes", 100).expect("damage");
    drop(raw);

    // With the store gone, damaged chunks are EIO; intact cached chunks still read.
    let hidden = tmp.path().join("store-gone");
    fs::rename(&store, &hidden).expect("hide store");
    let m = Mounted::start(&img, &mnt, &cache, &["--timeout", "1", "--readahead", "0"]);
    let f = File::open(mnt.join("big.bin")).expect("open");
    let mut piece = vec![0u8; 4096];
    assert_eq!(read_at_full(&f, &mut piece, 0), 4096);
    assert!(piece[..] == big[..4096], "an intact cached chunk reads");
    let err = f
        .read_at(&mut piece, chunk as u64)
        .expect_err("a damaged chunk must not be served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let g = File::open(mnt.join("small.bin")).expect("open");
    let err = g
        .read_at(&mut piece, 0)
        .expect_err("a damaged sealed file must not be served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(m.metric("thinnode_mount_passthrough_opens_total"), 0.0);
    assert!(
        m.log_text().contains("does not match its key"),
        "{}",
        m.log_text()
    );
    drop((f, g));
    drop(m);

    // With the store back, the damaged chunks are fetched again and every byte is right.
    fs::rename(&hidden, &store).expect("restore store");
    let m = Mounted::start(&img, &mnt, &cache, &[]);
    assert_eq!(fs::read(mnt.join("big.bin")).expect("read"), big);
    assert_eq!(fs::read(mnt.join("small.bin")).expect("read"), small);
    assert!(m.metric("thinnode_mount_chunks_fetched_total") >= 2.0);
    assert_eq!(m.metric("thinnode_mount_read_errors_total"), 0.0);
}

/// Two mounts of one image share a host cache far smaller than the image; both read every file
/// several times, concurrently, while eviction removes cache files under them.
#[test]
fn eviction_under_a_small_cache_keeps_two_mounts_correct() {
    if !fuse_available("eviction_under_a_small_cache_keeps_two_mounts_correct") {
        return;
    }
    let chunk = 128usize << 10;
    let (tmp, src, img, _) = sharing_image(chunk);
    let cache = tmp.path().join("cache");
    let limit = (3 * chunk).to_string();
    let a = Mounted::start(
        &img,
        &tmp.path().join("a"),
        &cache,
        &["--cache-size", &limit],
    );
    let b = Mounted::start(
        &img,
        &tmp.path().join("b"),
        &cache,
        &["--cache-size", &limit],
    );
    let want = read_all_files(&src);
    std::thread::scope(|sc| {
        for m in [&a, &b] {
            let want = &want;
            sc.spawn(move || {
                for _ in 0..4 {
                    assert!(
                        read_all_files(&m.mnt) == *want,
                        "{} read wrong bytes",
                        m.mnt.display()
                    );
                }
            });
        }
    });
    let fetched = a.metric("thinnode_mount_chunks_fetched_total")
        + b.metric("thinnode_mount_chunks_fetched_total");
    let unique = unique_chunk_bytes(&img) / chunk as u64;
    assert!(
        fetched > unique as f64,
        "eviction made the mounts fetch again ({fetched} fetches, {unique} chunks)"
    );
    wait_for(
        "the cache to shrink under its limit",
        Duration::from_secs(10),
        || common::mounts::disk_usage(&cache.join("v2")) <= 3 * chunk as u64,
    );
    assert_eq!(a.metric("thinnode_mount_read_errors_total"), 0.0);
    assert_eq!(b.metric("thinnode_mount_read_errors_total"), 0.0);
}

/// A cache directory of the previous layout (per-chunk entries, assembled files) is cleared with a log
/// line, and the mount works from an empty cache.
#[test]
fn an_old_cache_layout_is_cleared_with_a_log_line() {
    if !fuse_available("an_old_cache_layout_is_cleared_with_a_log_line") {
        return;
    }
    let (tmp, src, img, _) = sharing_image(128 << 10);
    let cache = tmp.path().join("cache");
    for d in ["chunks/ab", "files", "tmp"] {
        fs::create_dir_all(cache.join(d)).expect("mkdir");
    }
    fs::write(cache.join("chunks/ab/ab01"), b"v1 chunk").expect("write");
    fs::write(cache.join("files/0123"), b"v1 file").expect("write");
    let m = Mounted::start(&img, &tmp.path().join("mnt"), &cache, &[]);
    assert!(m.log_text().contains("older layout"), "{}", m.log_text());
    assert!(!cache.join("chunks").exists() && !cache.join("files").exists());
    assert_eq!(read_all_files(&m.mnt), read_all_files(&src));
    assert!(is_mounted(&m.mnt));
}

/// An ioctl (overlayfs asks for the inode flags of every file it copies up) is refused quietly: the
/// caller gets "not supported", the mount's log gets no line for it.
#[test]
fn an_ioctl_is_refused_without_a_log_line() {
    if !fuse_available("an_ioctl_is_refused_without_a_log_line") {
        return;
    }
    let (tmp, _, img, _) = sharing_image(128 << 10);
    let m = Mounted::start(
        &img,
        &tmp.path().join("mnt"),
        &tmp.path().join("cache"),
        &[],
    );
    let out = Command::new("lsattr")
        .arg(m.mnt.join("small.bin"))
        .output()
        .expect("run lsattr");
    assert!(!out.status.success(), "FS_IOC_GETFLAGS succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !m.log_text().contains("ioctl"),
        "the ioctl was logged: {}",
        m.log_text()
    );
}
