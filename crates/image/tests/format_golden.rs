//! Pins manifest format version 1 to committed files: the builder must write exactly the bytes in
//! `tests/golden/*.img`, and the reader must read from them exactly what `tests/golden/*.txt` records.
//! A third-party implementation can test itself against the same files.
//!
//! To regenerate after an intended format change (which is a new format version), run the test with
//! `THINNODE_BLESS_GOLDEN=1` and review the diff.

use std::fmt::Write as _;
use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use image::manifest_with_stores;
use image::{
    ChunkId, ChunkRef, FileKind, ImageManifest, ManifestBuilder, NewInode, SourceStamp, ROOT_INO,
};

const CHUNK_SIZE: u32 = 64 * 1024;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn attrs(kind: FileKind, perm: u16, size: u64, mtime_sec: i64) -> NewInode {
    NewInode {
        kind,
        perm,
        uid: 1000,
        gid: 100,
        size,
        mtime_sec,
        mtime_nsec: 123_456_789,
        rdev: 0,
    }
}

/// A chunk reference with recognisable, made-up bytes (the manifest does not check them against data).
fn chunk(n: u8, plain_len: u32, compressed: bool) -> ChunkRef {
    ChunkRef {
        id: ChunkId([n; 32]),
        key: [n.wrapping_add(0x80); 32],
        plain_len,
        stored_len: plain_len / 2 + 16,
        compressed,
        encoding: image::ChunkEncoding::Thinnode,
    }
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// A tree with every kind of record: holes, shared chunks, hard links, symlinks, device nodes, a fifo
/// and a socket, xattrs (several, binary values), a non-UTF-8 name, empty files and directories, source
/// stamps on some inodes, two stores and labels (one non-ASCII).
fn tree() -> ManifestBuilder {
    let cs = u64::from(CHUNK_SIZE);
    let mut root = attrs(FileKind::Directory, 0o755, 4096, 1_700_000_000);
    root.uid = 0;
    root.gid = 0;
    let mut b = ManifestBuilder::new(CHUNK_SIZE, root).unwrap();
    let db = b.add_inode(attrs(FileKind::Directory, 0o700, 4096, 1_700_000_100));
    let empty_dir = b.add_inode(attrs(FileKind::Directory, 0o755, 4096, 1_700_000_101));
    // [data, hole, data(shared), partial last chunk]
    let table = b.add_inode(attrs(
        FileKind::Regular,
        0o644,
        3 * cs + 1000,
        1_700_000_200,
    ));
    // All holes.
    let sparse = b.add_inode(attrs(FileKind::Regular, 0o600, 2 * cs, -5));
    let empty = b.add_inode(attrs(FileKind::Regular, 0o444, 0, 0));
    let mut setuid = attrs(FileKind::Regular, 0o4755, 10, 1_700_000_300);
    setuid.mtime_nsec = 0;
    let setuid = b.add_inode(setuid);
    let link = b.add_inode(attrs(FileKind::Symlink, 0o777, 0, 1_700_000_400));
    let abs_link = b.add_inode(attrs(FileKind::Symlink, 0o777, 0, 1_700_000_401));
    let mut chr = attrs(FileKind::CharDevice, 0o666, 0, 1);
    chr.rdev = 0x0103;
    let chr = b.add_inode(chr);
    let mut blk = attrs(FileKind::BlockDevice, 0o660, 0, 2);
    blk.rdev = 0x0800;
    let blk = b.add_inode(blk);
    let fifo = b.add_inode(attrs(FileKind::Fifo, 0o600, 0, 3));
    let sock = b.add_inode(attrs(FileKind::Socket, 0o755, 0, 4));
    let raw = b.add_inode(attrs(FileKind::Regular, 0o640, 5, 5));

    b.add_entry(ROOT_INO, b"db", db).unwrap();
    b.add_entry(ROOT_INO, b"empty-dir", empty_dir).unwrap();
    b.add_entry(ROOT_INO, b"run", setuid).unwrap();
    b.add_entry(ROOT_INO, b"dev-null", chr).unwrap();
    b.add_entry(ROOT_INO, b"sda", blk).unwrap();
    b.add_entry(ROOT_INO, b"pipe", fifo).unwrap();
    b.add_entry(ROOT_INO, b"sock", sock).unwrap();
    b.add_entry(db, b"table.dat", table).unwrap();
    b.add_entry(db, b"sparse", sparse).unwrap();
    b.add_entry(db, b"empty", empty).unwrap();
    b.add_entry(db, b"current", link).unwrap();
    b.add_entry(db, b"abs", abs_link).unwrap();
    b.add_entry(db, b"\xff\xfe-raw", raw).unwrap();
    // Hard links: two more names of table.dat, one in another directory.
    b.add_entry(db, b"table.bak", table).unwrap();
    b.add_entry(ROOT_INO, b"table-link", table).unwrap();

    b.set_symlink_target(link, b"table.dat").unwrap();
    b.set_symlink_target(abs_link, b"/var/lib/node/db").unwrap();
    b.set_xattrs(
        table,
        vec![
            (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 0xff]),
            (b"user.empty".to_vec(), Vec::new()),
            (b"user.k".to_vec(), b"\x00v\xff".to_vec()),
        ],
    )
    .unwrap();
    b.set_xattrs(ROOT_INO, vec![(b"user.root".to_vec(), b"r".to_vec())])
        .unwrap();
    b.set_xattrs(
        link,
        vec![(b"trusted.x".to_vec(), b"on a symlink".to_vec())],
    )
    .unwrap();

    let c1 = b.add_chunk(chunk(1, CHUNK_SIZE, true));
    let c2 = b.add_chunk(chunk(2, CHUNK_SIZE, false));
    let c3 = b.add_chunk(chunk(3, 1000, true));
    let c4 = b.add_chunk(chunk(4, 10, false));
    let c5 = b.add_chunk(chunk(5, 5, true));
    assert_eq!(b.add_chunk(chunk(1, CHUNK_SIZE, true)), c1, "dedup by id");
    b.set_file_chunks(table, &[Some(c1), None, Some(c2), Some(c3)])
        .unwrap();
    b.set_file_chunks(sparse, &[None, None]).unwrap();
    b.set_file_chunks(empty, &[]).unwrap();
    b.set_file_chunks(setuid, &[Some(c4)]).unwrap();
    b.set_file_chunks(raw, &[Some(c5)]).unwrap();

    let stamp = |ino: u64| SourceStamp {
        dev: 2049,
        ino: 1000 + ino,
        ctime_sec: 1_700_000_000 + ino as i64,
        ctime_nsec: ino as u32,
    };
    for ino in [table, sparse, empty, setuid, raw] {
        b.set_source_stamp(ino, stamp(ino)).unwrap();
    }
    b.add_store("zdb://127.0.0.1:9900/images");
    b.add_store("dir:///srv/chunks");
    b.add_store("zdb://127.0.0.1:9900/images");
    b.add_label("chain", "polkadot");
    b.add_label("height", "26500000");
    b.add_label("note", "réseau ✓");
    b.add_label("empty", "");
    b
}

/// The smallest image: a root directory only, no stores, labels or stamps.
fn minimal() -> ManifestBuilder {
    ManifestBuilder::new(
        1024 * 1024,
        attrs(FileKind::Directory, 0o755, 0, 1_600_000_000),
    )
    .unwrap()
}

/// Everything the reader returns for `m`, as text.
fn dump(m: &ImageManifest) -> String {
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "chunk_size {}", m.chunk_size()).unwrap();
    writeln!(w, "inode_count {}", m.inode_count()).unwrap();
    writeln!(w, "manifest_len {}", m.manifest_len()).unwrap();
    writeln!(w, "signed {}", m.is_signed()).unwrap();
    writeln!(
        w,
        "signer {:?}",
        m.signer().map(|k| hex::encode(k.as_bytes()))
    )
    .unwrap();
    writeln!(w, "body_hash {:?}", m.check_body_hash().map(hex::encode)).unwrap();
    writeln!(w, "structure {:?}", m.check_structure()).unwrap();
    writeln!(w, "stores {:?}", m.stores()).unwrap();
    writeln!(w, "labels {:?}", m.labels()).unwrap();
    for i in 0..m.unique_chunk_count() {
        let c = m.unique_chunk(i as u32).unwrap();
        writeln!(
            w,
            "chunk {i} id {} key {} plain {} stored {} compressed {}",
            c.id,
            hex::encode(c.key),
            c.plain_len,
            c.stored_len,
            c.compressed
        )
        .unwrap();
    }
    for ino in 1..=m.inode_count() {
        let a = m.getattr(ino).unwrap();
        writeln!(w, "inode {a:?}").unwrap();
        for (name, value) in m.xattrs(ino).unwrap() {
            writeln!(
                w,
                "  xattr \"{}\" = \"{}\"",
                name.escape_ascii(),
                value.escape_ascii()
            )
            .unwrap();
        }
        writeln!(w, "  stamp {:?}", m.source_stamp(ino).unwrap()).unwrap();
        match a.kind {
            FileKind::Directory => {
                for e in m.readdir(ino, 0).unwrap() {
                    let found = m.lookup(ino, &e.name).unwrap().map(|i| i.ino);
                    writeln!(
                        w,
                        "  entry \"{}\" ino {} {:?} lookup {found:?}",
                        e.name.escape_ascii(),
                        e.ino,
                        e.kind
                    )
                    .unwrap();
                }
                let missing = m.lookup(ino, b"no such name").unwrap();
                writeln!(w, "  lookup-missing {missing:?}").unwrap();
            }
            FileKind::Regular => {
                writeln!(w, "  slots {:?}", m.file_chunk_slots(ino).unwrap()).unwrap();
                let ids: Vec<Option<String>> = m
                    .file_chunks(ino)
                    .unwrap()
                    .into_iter()
                    .map(|c| c.map(|c| c.id.to_string()))
                    .collect();
                writeln!(w, "  chunks {ids:?}").unwrap();
                let cs = u64::from(m.chunk_size());
                for off in [0, 1, cs, 2 * cs + 7, a.size] {
                    writeln!(
                        w,
                        "  seek {off}: data {:?} hole {:?}",
                        m.seek_data(ino, off).unwrap(),
                        m.seek_hole(ino, off).unwrap()
                    )
                    .unwrap();
                }
            }
            FileKind::Symlink => {
                let t = m.readlink(ino).unwrap();
                writeln!(w, "  target \"{}\"", t.escape_ascii()).unwrap();
            }
            _ => {}
        }
    }
    s
}

/// The golden images: (file stem, bytes written by this build).
fn images() -> Vec<(&'static str, Vec<u8>)> {
    let key = signing_key();
    let signed = tree().to_bytes(Some(&key)).unwrap();
    let copied = manifest_with_stores(
        &signed,
        &["zdb://10.0.0.1:9900/copy".to_string()],
        Some(&key),
    )
    .unwrap();
    let copied_unsigned = manifest_with_stores(&signed, &[], None).unwrap();
    vec![
        ("tree", tree().to_bytes(None).unwrap()),
        ("tree-signed", signed),
        ("tree-copied", copied),
        ("tree-copied-unsigned", copied_unsigned),
        ("minimal", minimal().to_bytes(None).unwrap()),
    ]
}

#[test]
fn the_writer_writes_the_golden_bytes_and_the_reader_reads_them_back() {
    let dir = golden_dir();
    let bless = std::env::var_os("THINNODE_BLESS_GOLDEN").is_some();
    for (name, bytes) in images() {
        let img = dir.join(format!("{name}.img"));
        let txt = dir.join(format!("{name}.txt"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&img, &bytes).unwrap();
            let m = ImageManifest::open(&img).unwrap();
            std::fs::write(&txt, dump(&m)).unwrap();
            continue;
        }
        let golden = std::fs::read(&img).unwrap();
        assert!(
            golden == bytes,
            "{name}: the builder no longer writes the bytes of {}",
            img.display()
        );
        let m = ImageManifest::open(&img).unwrap();
        let expected = std::fs::read_to_string(&txt).unwrap();
        assert_eq!(
            dump(&m),
            expected,
            "{name}: the reader reads something else"
        );
    }
}

#[test]
fn the_golden_signatures_verify() {
    let key = signing_key().verifying_key();
    for name in ["tree-signed", "tree-copied"] {
        let m = ImageManifest::open(&golden_dir().join(format!("{name}.img"))).unwrap();
        m.verify_signature(&key).unwrap();
    }
}
