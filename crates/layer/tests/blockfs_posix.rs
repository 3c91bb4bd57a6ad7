//! The blocks layer through the real FUSE kernel interface: the POSIX suite over a plain lower
//! directory, persistence across unmount/remount, `du`/`reset`, and a base write storing only blocks.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use layer::{BlocksLayer, BlocksOptions, Error};
use layer_testkit::posix_suite::{self, pattern};
use testkit::fuse_available;

struct Setup {
    _tmp: tempfile::TempDir,
    lower: std::path::PathBuf,
    layer_dir: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lower = tmp.path().join("lower");
    let layer_dir = tmp.path().join("layer");
    let mnt = tmp.path().join("mnt");
    for d in [&lower, &mnt] {
        fs::create_dir_all(d).expect("mkdir");
    }
    Setup {
        lower,
        layer_dir,
        mnt,
        _tmp: tmp,
    }
}

/// Every file under `dir` with its content, sorted (to compare trees).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readdir") {
            let e = e.expect("entry");
            let m = fs::symlink_metadata(e.path()).expect("lstat");
            let rel = e
                .path()
                .strip_prefix(dir)
                .expect("prefix")
                .display()
                .to_string();
            if m.is_dir() {
                out.push((rel + "/", Vec::new()));
                stack.push(e.path());
            } else if m.file_type().is_symlink() {
                let t = fs::read_link(e.path()).expect("readlink");
                out.push((rel, t.as_os_str().as_encoded_bytes().to_vec()));
            } else {
                out.push((rel, fs::read(e.path()).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn posix_suite_passes_on_a_blocks_mount() {
    if !fuse_available("posix_suite_passes_on_a_blocks_mount") {
        return;
    }
    let s = setup();
    posix_suite::prepare_base(&s.lower).expect("prepare base");
    let before = snapshot(&s.lower);
    let layer = BlocksLayer::create(&s.layer_dir, BlocksOptions::default()).expect("create");
    let mounted = layer.mount(&s.lower, &s.mnt).expect("mount");
    let outcomes = posix_suite::run(&s.mnt);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.name)))
        .collect();
    let merged = snapshot(&s.mnt);
    mounted.unmount().expect("unmount");
    assert!(failures.is_empty(), "failed checks: {failures:#?}");
    assert!(snapshot(&s.lower) == before, "the lower directory changed");

    // Everything the suite left behind is there again after a remount.
    let mounted = layer.mount(&s.lower, &s.mnt).expect("remount");
    let again = snapshot(&s.mnt);
    mounted.unmount().expect("unmount");
    assert_eq!(
        merged.iter().map(|e| &e.0).collect::<Vec<_>>(),
        again.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert!(merged == again, "contents differ after remount");

    // du counts the layer, reset drops it.
    let usage = layer.du().expect("du");
    assert!(usage.files > 0 && usage.allocated_bytes > 0, "{usage:?}");
    layer::reset(&s.layer_dir).expect("reset");
    let mounted = layer.mount(&s.lower, &s.mnt).expect("mount after reset");
    let fresh = snapshot(&s.mnt);
    mounted.unmount().expect("unmount");
    assert!(
        fresh == before,
        "after reset the mount must show the lower tree"
    );
}

#[test]
fn renames_links_and_deletions_persist_across_remount() {
    if !fuse_available("renames_links_and_deletions_persist_across_remount") {
        return;
    }
    let s = setup();
    fs::create_dir_all(s.lower.join("d/e")).expect("mkdir");
    fs::write(s.lower.join("d/e/f"), pattern(1, 50_000)).expect("write");
    fs::write(s.lower.join("a"), pattern(2, 10_000)).expect("write");
    fs::write(s.lower.join("gone"), b"x").expect("write");
    let layer = BlocksLayer::create(&s.layer_dir, BlocksOptions::default()).expect("create");
    let m = layer.mount(&s.lower, &s.mnt).expect("mount");
    assert!(matches!(layer.reset(), Err(Error::Mounted { .. })));
    assert!(matches!(
        layer.mount(&s.lower, &s.mnt),
        Err(Error::Mounted { .. })
    ));
    // A base directory renamed before it was ever listed keeps showing its base entries.
    fs::rename(s.mnt.join("d"), s.mnt.join("moved")).expect("rename dir");
    // A base file written (so it has a block map) and then deleted leaves no map behind.
    fs::write(s.mnt.join("gone"), b"y").expect("write gone");
    fs::remove_file(s.mnt.join("gone")).expect("unlink");
    fs::hard_link(s.mnt.join("a"), s.mnt.join("a2")).expect("link");
    OpenOptions::new()
        .write(true)
        .open(s.mnt.join("a2"))
        .expect("open")
        .write_all_at(b"HELLO", 5000)
        .expect("write");
    fs::write(s.mnt.join("moved/new"), b"new file").expect("create");
    m.unmount().expect("unmount");
    let maps = fs::read_dir(s.layer_dir.join("maps"))
        .expect("read maps")
        .count();
    assert_eq!(maps, 1, "only the written base file `a` keeps a block map");

    let m = layer.mount(&s.lower, &s.mnt).expect("remount");
    let mut a = pattern(2, 10_000);
    a[5000..5005].copy_from_slice(b"HELLO");
    assert!(fs::read(s.mnt.join("a")).expect("read a") == a);
    assert_eq!(
        fs::metadata(s.mnt.join("a")).expect("stat").ino(),
        fs::metadata(s.mnt.join("a2")).expect("stat").ino()
    );
    assert!(fs::read(s.mnt.join("moved/e/f")).expect("read") == pattern(1, 50_000));
    assert_eq!(
        fs::read(s.mnt.join("moved/new")).expect("read"),
        b"new file"
    );
    assert!(!s.mnt.join("d").exists());
    assert!(!s.mnt.join("gone").exists());
    m.unmount().expect("unmount");
    assert!(s.lower.join("gone").exists() && s.lower.join("d/e/f").exists());
}

#[test]
fn a_write_into_a_large_base_file_stores_only_its_blocks() {
    if !fuse_available("a_write_into_a_large_base_file_stores_only_its_blocks") {
        return;
    }
    let s = setup();
    let size = 64 << 20;
    let base = pattern(7, size);
    fs::write(s.lower.join("big"), &base).expect("write base");
    let layer = BlocksLayer::create(&s.layer_dir, BlocksOptions::default()).expect("create");
    let m = layer.mount(&s.lower, &s.mnt).expect("mount");
    let patch = pattern(8, 8192);
    let at = 32 << 20;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.mnt.join("big"))
        .expect("open rw");
    f.write_all_at(&patch, at as u64).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    let mut want = base.clone();
    want[at..at + patch.len()].copy_from_slice(&patch);
    assert!(fs::read(s.mnt.join("big")).expect("read") == want);
    m.unmount().expect("unmount");
    let usage = layer.du().expect("du");
    eprintln!("layer after an 8 KiB write into a 64 MiB base file: {usage:?}");
    assert!(
        usage.allocated_bytes < 64 * 1024,
        "layer holds {} bytes",
        usage.allocated_bytes
    );
    assert!(fs::read(s.lower.join("big")).expect("read lower") == base);
}

#[test]
fn an_outside_umount_ends_the_session_and_keeps_the_writes() {
    if !fuse_available("an_outside_umount_ends_the_session_and_keeps_the_writes") {
        return;
    }
    let s = setup();
    fs::write(s.lower.join("f"), pattern(5, 20_000)).expect("write base");
    let layer = BlocksLayer::create(&s.layer_dir, BlocksOptions::default()).expect("create");
    let m = layer.mount(&s.lower, &s.mnt).expect("mount");
    assert!(m.is_running());
    OpenOptions::new()
        .write(true)
        .open(s.mnt.join("f"))
        .expect("open")
        .write_all_at(b"changed", 9000)
        .expect("write");
    nix::mount::umount2(&s.mnt, nix::mount::MntFlags::empty()).expect("umount from outside");
    let start = std::time::Instant::now();
    while m.is_running() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "session still running after umount"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    m.unmount().expect("unmount after an outside umount");
    assert!(layer.mount_points().expect("mount points").is_empty());
    let m = layer.mount(&s.lower, &s.mnt).expect("remount");
    let mut want = pattern(5, 20_000);
    want[9000..9007].copy_from_slice(b"changed");
    assert!(fs::read(s.mnt.join("f")).expect("read") == want);
    m.unmount().expect("unmount");
}

fn seek(f: &std::fs::File, at: u64, whence: i32) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor.
    let pos = unsafe { libc::lseek(f.as_raw_fd(), at as i64, whence) };
    u64::try_from(pos).ok()
}

#[test]
fn holes_of_a_sparse_base_file_show_through_the_mount() {
    if !fuse_available("holes_of_a_sparse_base_file_show_through_the_mount") {
        return;
    }
    let s = setup();
    let mib = 1u64 << 20;
    let f = fs::File::create(s.lower.join("sparse")).expect("create");
    f.write_all_at(&[1u8; 8192], 0).expect("write");
    f.write_all_at(&[2u8; 8192], 4 * mib).expect("write");
    drop(f);
    let layer = BlocksLayer::create(&s.layer_dir, BlocksOptions::default()).expect("create");
    let m = layer.mount(&s.lower, &s.mnt).expect("mount");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.mnt.join("sparse"))
        .expect("open");
    f.write_all_at(b"in the hole", 2 * mib + 100)
        .expect("write");
    let (d, h) = (libc::SEEK_DATA, libc::SEEK_HOLE);
    assert_eq!(seek(&f, 0, h), Some(8192));
    assert_eq!(seek(&f, 8192, d), Some(2 * mib));
    assert_eq!(seek(&f, 2 * mib, h), Some(2 * mib + 4096));
    assert_eq!(seek(&f, 2 * mib + 4096, d), Some(4 * mib));
    assert_eq!(seek(&f, 4 * mib, h), Some(4 * mib + 8192));
    drop(f);
    m.unmount().expect("unmount");
}
