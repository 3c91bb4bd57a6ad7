//! Measures the manifest layout choice: builds a manifest of N files (default 1,000,000 in 1,000
//! directories) in format v1 and, for comparison, the same tree as an rfs-style SQLite database, then
//! reports open time, lookup latency and getattr/readdir cost for both.
//!
//! Run: `cargo run --release -p image --example manifest_bench -- [FILES] [DIR]`

use std::path::Path;
use std::time::{Duration, Instant};

use image::{ChunkId, ChunkRef, FileKind, ImageManifest, ManifestBuilder, NewInode, ROOT_INO};
use rand::{Rng, SeedableRng};

fn attrs(kind: FileKind, size: u64) -> NewInode {
    NewInode {
        kind,
        perm: 0o644,
        uid: 1000,
        gid: 1000,
        size,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        rdev: 0,
    }
}

fn file_name(i: u64) -> String {
    format!("{i:06}.sst")
}

fn per_op(total: Duration, ops: u64) -> String {
    format!("{:.0} ns", total.as_nanos() as f64 / ops as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let files: u64 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = match args.get(2) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir(),
    };
    let dirs = (files / 1000).max(1);
    let per_dir = files / dirs;
    let path = dir.join("manifest-bench.img");
    let key = build_manifest(&path, dirs, per_dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let queries: Vec<(String, String)> = (0..200_000)
        .map(|_| {
            (
                format!("dir{:04}", rng.random_range(0..dirs)),
                file_name(rng.random_range(0..per_dir)),
            )
        })
        .collect();
    measure_manifest(&path, &key, dirs, per_dir, &queries)?;
    std::fs::remove_file(&path)?;

    let sqlite = dir.join("manifest-bench.sqlite");
    build_sqlite(&sqlite, dirs, per_dir)?;
    measure_sqlite(&sqlite, &queries)?;
    std::fs::remove_file(&sqlite)?;
    Ok(())
}

/// Writes a signed manifest of `dirs` directories of `per_dir` files of 3 chunks each, the chunks drawn
/// from a pool of distinct ids; returns the signing key.
fn build_manifest(
    path: &Path,
    dirs: u64,
    per_dir: u64,
) -> Result<ed25519_dalek::SigningKey, Box<dyn std::error::Error>> {
    let chunk_size = 1 << 20;
    let t = Instant::now();
    let mut b = ManifestBuilder::new(chunk_size, attrs(FileKind::Directory, 0))?;
    let pool: Vec<u32> = (0..4096u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            b.add_chunk(ChunkRef {
                id: ChunkId(id),
                key: [7; 32],
                plain_len: chunk_size,
                stored_len: chunk_size + 16,
                compressed: false,
                encoding: image::ChunkEncoding::Thinnode,
            })
        })
        .collect();
    for d in 0..dirs {
        let dino = b.add_inode(attrs(FileKind::Directory, 0));
        b.add_entry(ROOT_INO, format!("dir{d:04}").as_bytes(), dino)?;
        for f in 0..per_dir {
            let ino = b.add_inode(attrs(FileKind::Regular, 3 * u64::from(chunk_size)));
            b.add_entry(dino, file_name(f).as_bytes(), ino)?;
            let slots: Vec<Option<u32>> = (0..3)
                .map(|k| Some(pool[((d * per_dir + f) * 3 + k) as usize % pool.len()]))
                .collect();
            b.set_file_chunks(ino, &slots)?;
        }
    }
    let key = image::generate_signing_key();
    b.write(path, Some(&key))?;
    drop(b);
    let size = std::fs::metadata(path)?.len();
    println!(
        "files: {}  directories: {dirs}  manifest: {:.1} MiB  build+write: {:.2} s",
        dirs * per_dir,
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    Ok(key)
}

/// Open, lookup, getattr, readdir and signature check of the manifest at `path`.
fn measure_manifest(
    path: &Path,
    key: &ed25519_dalek::SigningKey,
    dirs: u64,
    per_dir: u64,
    queries: &[(String, String)],
) -> Result<(), Box<dyn std::error::Error>> {
    // Open (page cache warm), best of 20.
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        let m = ImageManifest::open(path)?;
        std::hint::black_box(m.inode_count());
        best = best.min(t.elapsed());
    }
    println!("v1 open: {:.3} ms", best.as_secs_f64() * 1e3);

    let m = ImageManifest::open(path)?;
    // Warm up, then time a two-level lookup (root → dir → file), as FUSE does it.
    let run = |m: &ImageManifest| -> Result<Duration, image::ImageError> {
        let t = Instant::now();
        for (d, f) in queries {
            let dir = m
                .lookup(ROOT_INO, d.as_bytes())?
                .ok_or(image::ImageError::NotFound(0))?;
            let file = m.lookup(dir.ino, f.as_bytes())?;
            std::hint::black_box(file);
        }
        Ok(t.elapsed())
    };
    run(&m)?;
    let el = run(&m)?;
    println!(
        "v1 lookup: {} per lookup (2 per query, {} queries)",
        per_op(el, 2 * queries.len() as u64),
        queries.len()
    );
    let t = Instant::now();
    for i in 0..1_000_000u64 {
        std::hint::black_box(m.getattr(2 + i % (m.inode_count() - 1))?);
    }
    println!("v1 getattr: {}", per_op(t.elapsed(), 1_000_000));
    let t = Instant::now();
    let mut entries = 0;
    for d in 0..dirs.min(200) {
        entries += m.readdir(2 + d * (per_dir + 1), 0)?.len();
    }
    println!(
        "v1 readdir: {} per entry",
        per_op(t.elapsed(), entries as u64)
    );
    let t = Instant::now();
    m.verify_signature(&key.verifying_key())?;
    println!(
        "v1 verify_signature (hashes the whole manifest): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    Ok(())
}

/// The rfs-style alternative: inode(ino, parent, name, ...) with an index on (parent, name), block(ino, id,
/// key), holding the same tree as [`build_manifest`].
fn build_sqlite(path: &Path, dirs: u64, per_dir: u64) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_file(path);
    let t = Instant::now();
    {
        let mut c = rusqlite::Connection::open(path)?;
        c.execute_batch(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
             CREATE TABLE inode (ino INTEGER PRIMARY KEY, parent INTEGER, name BLOB, size INTEGER,
                 uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, mtime INTEGER);
             CREATE TABLE block (ino INTEGER, idx INTEGER, id BLOB, key BLOB);",
        )?;
        let tx = c.transaction()?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO inode (ino, parent, name, size, uid, gid, mode, rdev, mtime)
                 VALUES (?1, ?2, ?3, ?4, 1000, 1000, ?5, 0, 1700000000)",
            )?;
            let mut blk =
                tx.prepare("INSERT INTO block (ino, idx, id, key) VALUES (?1, ?2, ?3, ?4)")?;
            ins.execute(rusqlite::params![1, 0, b"".as_slice(), 0, 0o40755])?;
            let mut ino = 1i64;
            for d in 0..dirs {
                ino += 1;
                let dino = ino;
                ins.execute(rusqlite::params![
                    dino,
                    1,
                    format!("dir{d:04}").as_bytes(),
                    0,
                    0o40755
                ])?;
                for f in 0..per_dir {
                    ino += 1;
                    ins.execute(rusqlite::params![
                        ino,
                        dino,
                        file_name(f).as_bytes(),
                        3 << 20,
                        0o100644
                    ])?;
                    for k in 0..3i64 {
                        blk.execute(rusqlite::params![
                            ino,
                            k,
                            [k as u8; 32].as_slice(),
                            [7u8; 32].as_slice()
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        c.execute_batch(
            "CREATE UNIQUE INDEX inode_parent_name ON inode (parent, name);
             CREATE INDEX block_ino ON block (ino, idx);",
        )?;
    }
    let size = std::fs::metadata(path)?.len();
    println!(
        "sqlite: {:.1} MiB, build: {:.2} s",
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Open and lookup of the SQLite database at `path`.
fn measure_sqlite(
    path: &Path,
    queries: &[(String, String)],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        let c = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let n: i64 = c.query_row("SELECT ino FROM inode WHERE ino = 1", [], |r| r.get(0))?;
        std::hint::black_box(n);
        best = best.min(t.elapsed());
    }
    println!(
        "sqlite open (+ first query): {:.3} ms",
        best.as_secs_f64() * 1e3
    );
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut st = c.prepare(
        "SELECT ino, size, uid, gid, mode, rdev, mtime FROM inode WHERE parent = ?1 AND name = ?2",
    )?;
    let mut run = || -> Result<Duration, rusqlite::Error> {
        let t = Instant::now();
        for (d, f) in queries {
            let dino: i64 = st.query_row(rusqlite::params![1, d.as_bytes()], |r| r.get(0))?;
            let ino: i64 = st.query_row(rusqlite::params![dino, f.as_bytes()], |r| r.get(0))?;
            std::hint::black_box(ino);
        }
        Ok(t.elapsed())
    };
    run()?;
    let el = run()?;
    println!(
        "sqlite lookup: {} per lookup",
        per_op(el, 2 * queries.len() as u64)
    );
    Ok(())
}
