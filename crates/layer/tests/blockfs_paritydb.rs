//! ParityDB (Polkadot's database engine) through a blocks layer: it opens every file read-write and
//! mmaps its index tables, yet the layer must hold only the blocks the new keys touch.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use layer::{BlocksLayer, BlocksOptions};
use testkit::fuse_available;

/// Allocated bytes of every entry under `dir`, recursively.
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).expect("readdir") {
        let p = e.expect("entry").path();
        let m = fs::symlink_metadata(&p).expect("stat");
        total += m.blocks() * 512;
        if m.is_dir() {
            total += allocated(&p);
        }
    }
    total
}

/// Every file's content under `dir` (flat: ParityDB keeps one directory).
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn paritydb_inserts_through_a_blocks_layer_store_little() {
    if !fuse_available("paritydb_inserts_through_a_blocks_layer_store_little") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (lower, layer_dir, mnt) = (
        tmp.path().join("lower"),
        tmp.path().join("layer"),
        tmp.path().join("mnt"),
    );
    fs::create_dir_all(&mnt).expect("mkdir");
    let db_dir = lower.join("db");
    let t = Instant::now();
    let built = paritydb_harness::build(&db_dir, 200_000_000, 42).expect("build db");
    let db_bytes = allocated(&db_dir);
    eprintln!(
        "built {} keys, {} MB on disk in {:?}",
        built.keys,
        db_bytes / 1_000_000,
        t.elapsed()
    );
    let before = contents(&db_dir);

    let layer = BlocksLayer::create(&layer_dir, BlocksOptions::default()).expect("create");
    let m = layer.mount(&lower, &mnt).expect("mount");
    let path = mnt.join("db");
    let t = Instant::now();
    let inserted = {
        let db = paritydb_harness::open(&path).expect("open through the layer");
        let mut meta = paritydb_harness::read_meta(&db, &path).expect("meta");
        let n = paritydb_harness::blocks_for_fraction(&meta, 0.001);
        let s = paritydb_harness::append_blocks(&db, &mut meta, n).expect("insert");
        drop(db);
        s
    };
    eprintln!(
        "inserted {} keys through the layer in {:?}",
        inserted.keys,
        t.elapsed()
    );
    let verified = {
        let db = paritydb_harness::open(&path).expect("reopen");
        paritydb_harness::verify(&db, &path).expect("verify through the layer")
    };
    assert_eq!(verified.keys, built.keys + inserted.keys);
    m.unmount().expect("unmount");

    let usage = layer.du().expect("du");
    let share = usage.allocated_bytes as f64 / db_bytes as f64;
    eprintln!(
        "layer holds {} bytes ({:.3}% of the {} byte DB): {usage:?}",
        usage.allocated_bytes,
        share * 100.0,
        db_bytes
    );
    eprintln!(
        "of which tree/ {} bytes, maps/ {} bytes",
        allocated(&layer_dir.join("tree")),
        allocated(&layer_dir.join("maps"))
    );
    assert!(share < 0.02, "layer holds {:.2}% of the DB", share * 100.0);
    assert!(contents(&db_dir) == before, "the base DB changed");

    // After a remount every key, old and new, is still there.
    let m = layer.mount(&lower, &mnt).expect("remount");
    {
        let db = paritydb_harness::open(&path).expect("open after remount");
        let again = paritydb_harness::verify(&db, &path).expect("verify after remount");
        assert_eq!(again.keys, verified.keys);
    }
    m.unmount().expect("unmount");
}
