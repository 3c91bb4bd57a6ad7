//! Flists as images: the rfs fixtures (crates/flist/tests/fixtures/rfs) open as manifests, unpack and
//! verify against the recorded tree, a corrupt block is caught, and images ↔ flists convert both ways
//! keeping every byte and mode; pack writes the blocks rfs writes, which an independent implementation
//! of the rfs encoding (in this file) decodes.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use image::{ChunkEncoding, FileKind, ImageManifest, ManifestSource, ROOT_INO};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../flist/tests/fixtures/rfs")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// path → (kind, perm, uid, gid, size, mtime seconds, symlink target) from tree.manifest.
type Want = HashMap<String, (char, u32, u32, u32, u64, i64, String)>;

fn manifest() -> Want {
    let text = std::fs::read_to_string(fixtures().join("tree.manifest")).unwrap();
    text.lines()
        .map(|line| {
            let (head, target) = line.split_once('\t').unwrap();
            let f: Vec<&str> = head.splitn(7, ' ').collect();
            (
                f[6].trim_start_matches("./")
                    .trim_start_matches('.')
                    .to_string(),
                (
                    f[0].chars().next().unwrap(),
                    u32::from_str_radix(f[1], 8).unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].split('.').next().unwrap().parse().unwrap(),
                    target.to_string(),
                ),
            )
        })
        .collect()
}

fn sums() -> HashMap<String, String> {
    std::fs::read_to_string(fixtures().join("tree.sha256"))
        .unwrap()
        .lines()
        .map(|l| {
            let (h, p) = l.split_once("  ").unwrap();
            (p.trim_start_matches("./").to_string(), h.to_string())
        })
        .collect()
}

/// What a scan records of one entry: (kind, perm, uid, gid, size, mtime, target, sha256).
type Scanned = (char, u32, u32, u32, u64, i64, String, String);

/// Every entry below `root`: relative path → what it is.
fn scan(root: &Path) -> HashMap<String, Scanned> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, target, sum) = if m.is_dir() {
                stack.push(p.clone());
                ('d', String::new(), String::new())
            } else if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                ('l', t.to_string_lossy().into_owned(), String::new())
            } else {
                ('f', String::new(), sha256_hex(&std::fs::read(&p).unwrap()))
            };
            out.insert(
                rel,
                (
                    kind,
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    if kind == 'd' { 0 } else { m.size() },
                    m.mtime(),
                    target,
                    sum,
                ),
            );
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

fn fixture_store() -> store::DirStore {
    store::DirStore::open(fixtures().join("store-dir")).unwrap()
}

#[test]
fn fixtures_open_as_manifests_with_routes_and_tags() {
    for name in [
        "tree-dir.fl",
        "tree-sharded.fl",
        "tree-zdb.fl",
        "tree-zdb-ns.fl",
        "tree-dir-tagged.fl",
    ] {
        let m = ImageManifest::open(&fixtures().join(name)).unwrap();
        assert_eq!(m.source(), ManifestSource::Flist);
        assert_eq!(m.chunk_size(), 512 * 1024);
        m.check_structure().unwrap();
        m.check_body_hash().unwrap();
        assert!(!m.is_signed());
        let stats = image::image_stats(&m).unwrap();
        assert_eq!(stats.regular_files, 14, "{name}");
        assert_eq!(stats.symlinks, 2);
        assert_eq!(stats.directories, 4);
        assert_eq!(stats.hardlinks, 0, "rfs keeps no hard links");
        // 20 distinct ids, minus the zero block served as a hole.
        assert_eq!(stats.unique_chunks, 19);
        assert_eq!(stats.stored_len_unknown, 19);
        assert_eq!(stats.sparse_bytes, 15 * 512 * 1024);
        let c = m
            .file_chunks(m.lookup(ROOT_INO, b"one-block.bin").unwrap().unwrap().ino)
            .unwrap();
        assert_eq!(c[0].unwrap().encoding, ChunkEncoding::RfsBlock);
    }
    let open = |n: &str| ImageManifest::open(&fixtures().join(n)).unwrap();
    assert_eq!(
        open("tree-dir.fl").stores(),
        vec!["dir:///tmp/rfs-fixtures/store-dir"]
    );
    assert_eq!(
        open("tree-sharded.fl").stores(),
        vec!["route: 00-7f=dir:///tmp/rfs-fixtures/store-shard-lo 80-ff=dir:///tmp/rfs-fixtures/store-shard-hi"]
    );
    assert_eq!(
        open("tree-zdb-ns.fl").stores(),
        vec!["zdb://rfs@127.0.0.1:19800/rfsns"]
    );
    let mut labels = open("tree-dir-tagged.fl").labels();
    labels.sort();
    assert_eq!(
        labels,
        vec![
            ("author".to_string(), "fixtures".to_string()),
            ("description".to_string(), "rfs fixture".to_string()),
            ("version".to_string(), "v1".to_string())
        ]
    );
}

#[test]
fn a_fixture_unpacks_and_verifies_deep() {
    let m = ImageManifest::open(&fixtures().join("tree-dir.fl")).unwrap();
    let store = fixture_store();
    let report = image::verify(
        &m,
        Some(&store),
        &image::VerifyOptions {
            deep: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.chunks_checked, 19);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    image::unpack(&m, &store, &out, &image::UnpackOptions::default()).unwrap();
    let got = scan(&out);
    let want = manifest();
    let sums = sums();
    for (path, w) in &want {
        if path.is_empty() {
            continue;
        }
        let g = got.get(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(g.0, w.0, "{path}");
        assert_eq!((g.1, g.2, g.3), (w.1, w.2, w.3), "{path}");
        assert_eq!(g.5, w.5, "{path} mtime");
        if w.0 == 'f' {
            assert_eq!(g.4, w.4, "{path}");
            assert_eq!(g.7, sums[path], "{path}");
        }
        if w.0 == 'l' {
            assert_eq!(g.6, w.6, "{path}");
        }
    }
    assert_eq!(got.len(), want.len() - 1);
    // The zero blocks were never fetched: the sparse file comes back sparse.
    let sparse = std::fs::metadata(out.join("sparse-8M.bin")).unwrap();
    assert!(
        sparse.blocks() * 512 < 2 << 20,
        "{} blocks",
        sparse.blocks()
    );
}

#[test]
fn a_corrupt_block_is_reported_by_file_and_offset_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    copy_dir(&fixtures().join("store-dir"), &store_dir);
    // random-1.6M.bin block 1 (offset 512 KiB): id b99958e4…
    let victim =
        store_dir.join("b9/b99958e43e392f1b8ed7cc687a29068b12e73258b4c5fe0ac86348eefc16e2ff");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    let store = store::DirStore::open(&store_dir).unwrap();
    let m = ImageManifest::open(&fixtures().join("tree-dir.fl")).unwrap();
    let report = image::verify(
        &m,
        Some(&store),
        &image::VerifyOptions {
            deep: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.bad_chunks, 1);
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].path, "random-1.6M.bin");
    assert_eq!(report.problems[0].offset, 512 * 1024);
    assert!(
        report.problems[0].reason.contains("BLAKE2b"),
        "{:?}",
        report.problems
    );
    let err = image::unpack(
        &m,
        &store,
        &dir.path().join("out"),
        &image::UnpackOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("random-1.6M.bin @ offset 524288"), "{err}");
}

/// Reads every file of flist `fl` with a decoder written here from the rfs definition (aes-gcm, snap and
/// blake2 crates; not the flist crate's codec): path → content.
fn decode_independently(fl: &Path, store_dir: &Path) -> HashMap<String, Vec<u8>> {
    use aes_gcm::aead::{Aead, KeyInit};
    use blake2::{digest::consts::U32, Blake2b, Digest};
    let conn =
        rusqlite::Connection::open_with_flags(fl, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let inodes: Vec<(i64, i64, String, i64)> = conn
        .prepare("SELECT ino, parent, name, mode FROM inode")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let by_ino: HashMap<i64, (i64, String)> = inodes
        .iter()
        .map(|(i, p, n, _)| (*i, (*p, n.clone())))
        .collect();
    let path = |mut ino: i64| {
        let mut parts = Vec::new();
        while let Some((p, n)) = by_ino.get(&ino).filter(|(p, _)| *p != 0) {
            parts.push(n.clone());
            ino = *p;
        }
        parts.reverse();
        parts.join("/")
    };
    let mut out = HashMap::new();
    for (ino, _, _, mode) in &inodes {
        if mode & 0o170000 != 0o100000 {
            continue;
        }
        let mut stmt = conn
            .prepare("SELECT id, key FROM block WHERE ino = ? ORDER BY rowid")
            .unwrap();
        let blocks: Vec<(Vec<u8>, Vec<u8>)> = stmt
            .query_map([ino], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut content = Vec::new();
        for (id, key) in blocks {
            let h = hex::encode(&id);
            let stored = std::fs::read(store_dir.join(&h[..2]).join(&h)).unwrap();
            assert_eq!(Blake2b::<U32>::digest(&stored).as_slice(), &id[..]);
            let compressed = aes_gcm::Aes256Gcm::new_from_slice(&key)
                .unwrap()
                .decrypt(aes_gcm::Nonce::from_slice(&key[..12]), stored.as_slice())
                .unwrap();
            let plain = snap::raw::Decoder::new()
                .decompress_vec(&compressed)
                .unwrap();
            assert_eq!(Blake2b::<U32>::digest(&plain).as_slice(), &key[..]);
            content.extend_from_slice(&plain);
        }
        out.insert(path(*ino), content);
    }
    out
}

/// Block ids per path, in order.
fn block_ids(fl: &Path) -> HashMap<String, Vec<[u8; 32]>> {
    let f = flist::Flist::read(fl).unwrap();
    f.inodes()
        .iter()
        .filter(|n| n.file_type() == Some(flist::FileType::Regular))
        .map(|n| (f.path_of(n.ino), n.blocks.iter().map(|b| b.id).collect()))
        .collect()
}

#[test]
fn flist_to_image_to_flist_keeps_every_byte_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let src = ImageManifest::open(&fixtures().join("tree-dir.fl")).unwrap();
    let images = store::DirStore::open(dir.path().join("images")).unwrap();
    let img = dir.path().join("tree.img");
    let s = image::convert_image(
        &src,
        &fixture_store(),
        &images,
        &img,
        &image::ConvertOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(s.files, 14);
    let m = ImageManifest::open(&img).unwrap();
    assert_eq!(m.source(), ManifestSource::Image);
    assert_eq!(m.labels(), src.labels());
    let blocks = dir.path().join("blocks");
    let blocks_store = store::DirStore::open(&blocks).unwrap();
    let fl = dir.path().join("back.fl");
    let (_, written) = image::fl::convert_to_flist(
        &m,
        &images,
        &blocks_store,
        &fl,
        &image::FlistOptions {
            store_url: format!("dir://{}", blocks.display()),
            ..Default::default()
        },
        0,
    )
    .unwrap();
    assert_eq!(written.inodes, 20);
    assert_eq!(written.blocks, 36);
    // The same blocks rfs made, row for row (zero blocks included).
    assert_eq!(block_ids(&fl), block_ids(&fixtures().join("tree-dir.fl")));
    let a = flist::Flist::read(&fl).unwrap();
    let b = flist::Flist::read(&fixtures().join("tree-dir.fl")).unwrap();
    type Row = (u32, u32, u32, u64, i64, Option<Vec<u8>>);
    let attrs = |f: &flist::Flist| -> HashMap<String, Row> {
        f.inodes()
            .iter()
            .map(|n| {
                (
                    f.path_of(n.ino),
                    (n.mode, n.uid, n.gid, n.size, n.mtime, n.target.clone()),
                )
            })
            .collect()
    };
    assert_eq!(attrs(&a), attrs(&b));
    assert_eq!(
        a.routes,
        vec![flist::Route {
            start: 0,
            end: 255,
            url: format!("dir://{}", blocks.display())
        }]
    );
    let decoded = decode_independently(&fl, &blocks);
    let sums = sums();
    assert_eq!(decoded.len(), sums.len());
    for (p, content) in decoded {
        assert_eq!(sha256_hex(&content), sums[&p], "{p}");
    }
}

/// A tree with what both formats hold: modes, owners, symlinks, empty and sparse files, several chunks.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    let big: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("sub/text.txt"), "node data ".repeat(100_000)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("sub/deeper/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        root.join("sub/deeper/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(b"tail", 3 << 20).unwrap();
    std::os::unix::fs::symlink("sub/text.txt", root.join("link")).unwrap();
}

#[test]
fn image_to_flist_to_image_keeps_every_byte_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let chunks = store::DirStore::open(dir.path().join("chunks")).unwrap();
    let img = dir.path().join("a.img");
    let opts = image::PackOptions {
        labels: vec![("chain".into(), "litecoin".into())],
        ..Default::default()
    };
    image::pack(&tree, &chunks, &img, &opts, None).unwrap();
    let a = ImageManifest::open(&img).unwrap();
    let blocks_dir = dir.path().join("blocks");
    let blocks = store::DirStore::open(&blocks_dir).unwrap();
    let fl = dir.path().join("a.fl");
    image::fl::convert_to_flist(
        &a,
        &chunks,
        &blocks,
        &fl,
        &image::FlistOptions {
            store_url: format!("dir://{}", blocks_dir.display()),
            ..Default::default()
        },
        0,
    )
    .unwrap();
    let f = ImageManifest::open(&fl).unwrap();
    assert_eq!(
        f.labels(),
        vec![("chain".to_string(), "litecoin".to_string())]
    );
    let img2 = dir.path().join("b.img");
    image::convert_image(
        &f,
        &blocks,
        &chunks,
        &img2,
        &image::ConvertOptions::default(),
        None,
    )
    .unwrap();
    let b = ImageManifest::open(&img2).unwrap();
    for (m, store, name) in [(&a, &chunks, "a"), (&f, &blocks, "f"), (&b, &chunks, "b")] {
        let out = dir.path().join(format!("out-{name}"));
        image::unpack(m, store, &out, &image::UnpackOptions::default()).unwrap();
    }
    let orig = scan(&tree);
    for name in ["a", "f", "b"] {
        let got = scan(&dir.path().join(format!("out-{name}")));
        assert_eq!(got.len(), orig.len(), "{name}");
        for (p, o) in &orig {
            let g = &got[p];
            assert_eq!(
                (g.0, g.1, g.2, g.3, g.6.clone(), g.7.clone()),
                (o.0, o.1, o.2, o.3, o.6.clone(), o.7.clone()),
                "{name} {p}"
            );
            if o.0 == 'f' {
                assert_eq!(g.4, o.4, "{name} {p}");
            }
        }
    }
    // The flist's blocks decode with the independent implementation too.
    let decoded = decode_independently(&fl, &blocks_dir);
    assert_eq!(
        decoded["big.bin"],
        std::fs::read(tree.join("big.bin")).unwrap()
    );
    assert_eq!(
        decoded["sparse"],
        std::fs::read(tree.join("sparse")).unwrap()
    );
}

#[test]
fn pack_writes_the_blocks_rfs_writes_and_refuses_what_an_flist_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture tree, restored from its flist.
    let tree = dir.path().join("tree");
    let m = ImageManifest::open(&fixtures().join("tree-dir.fl")).unwrap();
    image::unpack(
        &m,
        &fixture_store(),
        &tree,
        &image::UnpackOptions::default(),
    )
    .unwrap();
    let blocks_dir = dir.path().join("blocks");
    let blocks = store::DirStore::open(&blocks_dir).unwrap();
    let fl = dir.path().join("ours.fl");
    let opts = image::FlistOptions {
        store_url: format!("dir://{}", blocks_dir.display()),
        ..Default::default()
    };
    let pack = |out: &Path, opts: &image::FlistOptions| {
        image::fl::pack_flist(
            &tree,
            &blocks,
            out,
            &image::PackOptions::default(),
            opts,
            None,
        )
    };
    let (summary, written) = pack(&fl, &opts).unwrap();
    assert_eq!(written.blocks, 36);
    assert_eq!(summary.files, 14);
    assert_eq!(block_ids(&fl), block_ids(&fixtures().join("tree-dir.fl")));
    // The store holds exactly the 20 blobs rfs stored, byte for byte.
    let mut n = 0;
    for d in std::fs::read_dir(&blocks_dir).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            let theirs = fixtures().join("store-dir").join(&name[..2]).join(&name);
            assert_eq!(
                std::fs::read(f.path()).unwrap(),
                std::fs::read(theirs).unwrap()
            );
            n += 1;
        }
    }
    assert_eq!(n, 20);

    // Extended attributes: refused before any block is read, unless dropped.
    xattr::set(tree.join("xattr.txt"), "user.rfs_test", b"v1").unwrap();
    let refused = pack(&dir.path().join("x.fl"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("extended attributes") && refused.contains("/xattr.txt"),
        "{refused}"
    );
    assert!(!dir.path().join("x.fl").exists());
    let dropping = image::FlistOptions {
        drop_xattrs: true,
        ..opts.clone()
    };
    let (_, w) = pack(&dir.path().join("x.fl"), &dropping).unwrap();
    assert!(
        w.warnings.iter().any(|w| w.contains("extended attributes")),
        "{:?}",
        w.warnings
    );

    // Hard links: written as separate files, with a warning.
    std::fs::remove_file(tree.join("hardlink-to-hello.txt")).unwrap();
    std::fs::hard_link(tree.join("a/hello.txt"), tree.join("hardlink-to-hello.txt")).unwrap();
    let (_, w) = pack(&dir.path().join("h.fl"), &dropping).unwrap();
    assert!(
        w.warnings.iter().any(|w| w.contains("hard link")),
        "{:?}",
        w.warnings
    );
    let h = ImageManifest::open(&dir.path().join("h.fl")).unwrap();
    let a = h.lookup(ROOT_INO, b"a").unwrap().unwrap();
    let one = h.lookup(a.ino, b"hello.txt").unwrap().unwrap();
    let two = h
        .lookup(ROOT_INO, b"hardlink-to-hello.txt")
        .unwrap()
        .unwrap();
    assert_ne!(one.ino, two.ino);
    assert_eq!(
        h.file_chunks(one.ino).unwrap(),
        h.file_chunks(two.ino).unwrap()
    );
    assert_eq!(h.getattr(one.ino).unwrap().kind, FileKind::Regular);
}
