//! The flist library against flists and blocks made by the real rfs (tests/fixtures/rfs, see its README):
//! every row read as rfs wrote it, every block decoded and re-encoded to the same bytes, an flist written
//! back with the same schema, and bad flists refused with a reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flist::{FileType, Flist, FlistError, FlistWriter, NewFlInode, Route, BLOCK_SIZE};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rfs")
}

/// One line of tree.manifest.
#[derive(Debug)]
struct Entry {
    kind: char,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    target: Option<String>,
}

fn manifest() -> HashMap<String, Entry> {
    let text = std::fs::read_to_string(fixtures().join("tree.manifest")).unwrap();
    let mut out = HashMap::new();
    for line in text.lines() {
        let (head, target) = line.split_once('\t').unwrap();
        let f: Vec<&str> = head.splitn(7, ' ').collect();
        let path = f[6].trim_start_matches('.').to_string();
        let path = if path.is_empty() { "/".into() } else { path };
        out.insert(
            path,
            Entry {
                kind: f[0].chars().next().unwrap(),
                perm: u32::from_str_radix(f[1], 8).unwrap(),
                uid: f[2].parse().unwrap(),
                gid: f[3].parse().unwrap(),
                size: f[4].parse().unwrap(),
                mtime: f[5].split('.').next().unwrap().parse().unwrap(),
                target: (!target.is_empty()).then(|| target.to_string()),
            },
        );
    }
    out
}

fn sha256s() -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("tree.sha256")).unwrap();
    text.lines()
        .map(|l| {
            let (h, p) = l.split_once("  ").unwrap();
            (p.trim_start_matches('.').to_string(), h.to_string())
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

fn stored(id: &[u8; 32]) -> Vec<u8> {
    let h = hex::encode(id);
    std::fs::read(fixtures().join("store-dir").join(&h[..2]).join(&h)).unwrap()
}

const FIXTURES: [&str; 5] = [
    "tree-dir.fl",
    "tree-sharded.fl",
    "tree-zdb.fl",
    "tree-zdb-ns.fl",
    "tree-dir-tagged.fl",
];

#[test]
fn every_fixture_reads_as_the_packed_tree() {
    let want = manifest();
    for name in FIXTURES {
        let path = fixtures().join(name);
        assert!(flist::is_flist(&path).unwrap(), "{name}");
        let fl = Flist::read(&path).unwrap();
        assert_eq!(fl.inodes().len(), want.len(), "{name}");
        for n in fl.inodes() {
            let p = fl.path_of(n.ino);
            let e = want
                .get(&p)
                .unwrap_or_else(|| panic!("{name}: unexpected {p}"));
            let kind = match n.file_type().unwrap() {
                FileType::Directory => 'd',
                FileType::Regular => 'f',
                FileType::Symlink => 'l',
                other => panic!("{p}: {other:?}"),
            };
            assert_eq!(kind, e.kind, "{name} {p}");
            assert_eq!(
                (n.perm(), n.uid, n.gid, n.size, n.mtime),
                (e.perm, e.uid, e.gid, e.size, e.mtime),
                "{name} {p}"
            );
            assert_eq!(
                n.target
                    .as_deref()
                    .map(|t| String::from_utf8_lossy(t).into_owned()),
                e.target,
                "{name} {p}"
            );
        }
        let blocks: usize = fl.inodes().iter().map(|n| n.blocks.len()).sum();
        assert_eq!(blocks, 36, "{name}");
    }
}

#[test]
fn every_block_decodes_to_the_files_and_re_encodes_to_the_same_bytes() {
    let sums = sha256s();
    let fl = Flist::read(&fixtures().join("tree-dir.fl")).unwrap();
    let mut zero_blocks = 0;
    let mut checked = 0;
    for n in fl.inodes() {
        if n.file_type() != Some(FileType::Regular) {
            continue;
        }
        let mut content = Vec::with_capacity(n.size as usize);
        for (i, b) in n.blocks.iter().enumerate() {
            let len = (n.size as usize - i * BLOCK_SIZE).min(BLOCK_SIZE);
            let data = stored(&b.id);
            let plain = flist::decode_block(b, &data, len).unwrap();
            let again = flist::encode_block(&plain).unwrap();
            assert_eq!(again.block, *b, "{} block {i}", fl.path_of(n.ino));
            assert_eq!(again.stored, data, "{} block {i}", fl.path_of(n.ino));
            if flist::is_zero_block(b) {
                assert!(plain.iter().all(|&x| x == 0));
                zero_blocks += 1;
            }
            content.extend_from_slice(&plain);
            checked += 1;
        }
        let p = fl.path_of(n.ino);
        assert_eq!(sha256_hex(&content), sums[&p], "{p}");
    }
    assert_eq!((checked, zero_blocks), (36, 15));
}

#[test]
fn routes_and_tags_are_read_as_rfs_wrote_them() {
    let read = |name: &str| Flist::read(&fixtures().join(name)).unwrap();
    let r = |start, end, url: &str| Route {
        start,
        end,
        url: url.into(),
    };
    assert_eq!(
        read("tree-dir.fl").routes,
        vec![r(0, 255, "dir:///tmp/rfs-fixtures/store-dir")]
    );
    let sharded = read("tree-sharded.fl").routes;
    assert_eq!(
        sharded,
        vec![
            r(0, 127, "dir:///tmp/rfs-fixtures/store-shard-lo"),
            r(128, 255, "dir:///tmp/rfs-fixtures/store-shard-hi")
        ]
    );
    assert_eq!(
        flist::store_url_of_routes(&sharded).unwrap(),
        "route: 00-7f=dir:///tmp/rfs-fixtures/store-shard-lo 80-ff=dir:///tmp/rfs-fixtures/store-shard-hi"
    );
    let ns = read("tree-zdb-ns.fl").routes;
    assert_eq!(ns, vec![r(0, 255, "zdb://rfs@127.0.0.1:19800/rfsns")]);
    assert!(!flist::has_password(&ns[0].url));
    assert_eq!(
        read("tree-zdb.fl").routes,
        vec![r(0, 255, "zdb://127.0.0.1:19800/default")]
    );
    assert!(read("tree-dir.fl").tags.is_empty());
    assert_eq!(
        read("tree-dir-tagged.fl").tags,
        vec![
            ("author".to_string(), "fixtures".to_string()),
            ("description".to_string(), "rfs fixture".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]
    );
}

fn schema_of(path: &Path) -> Vec<(String, String, Option<String>)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pragmas(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    [
        "page_size",
        "journal_mode",
        "user_version",
        "encoding",
        "auto_vacuum",
    ]
    .iter()
    .map(|p| {
        conn.query_row(&format!("PRAGMA {p}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| format!("{p}={v:?}"))
        .unwrap()
    })
    .collect()
}

/// Writes `fl` again with [`FlistWriter`] (same inode numbering: parents before children, in ino order).
fn rewrite(fl: &Flist, out: &Path) {
    let mut w = FlistWriter::create(out).unwrap();
    for n in fl.inodes() {
        let name = String::from_utf8(n.name.clone()).unwrap();
        let ino = w
            .add_inode(&NewFlInode {
                parent: n.parent,
                name: &name,
                size: n.size,
                uid: n.uid,
                gid: n.gid,
                mode: n.mode,
                rdev: n.rdev,
                ctime: n.ctime,
                mtime: n.mtime,
                target: n.target.as_deref(),
            })
            .unwrap();
        assert_eq!(ino, n.ino);
        for b in &n.blocks {
            w.add_block(ino, b).unwrap();
        }
    }
    for r in &fl.routes {
        w.add_route(r).unwrap();
    }
    for (k, v) in &fl.tags {
        w.set_tag(k, v).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn a_written_flist_has_the_rfs_schema_and_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tree-dir.fl", "tree-dir-tagged.fl", "tree-sharded.fl"] {
        let src = fixtures().join(name);
        let fl = Flist::read(&src).unwrap();
        let out = dir.path().join(name);
        rewrite(&fl, &out);
        assert_eq!(schema_of(&out), schema_of(&src), "{name}");
        assert_eq!(pragmas(&out), pragmas(&src), "{name}");
        let back = Flist::read(&out).unwrap();
        assert_eq!(back.inodes(), fl.inodes(), "{name}");
        assert_eq!(back.routes, fl.routes);
        assert_eq!(back.tags, fl.tags);
        // Blobs, not text, as rfs writes them.
        let conn = rusqlite::Connection::open(&out).unwrap();
        let types: Vec<(String, String, i64)> = conn
            .prepare("SELECT DISTINCT typeof(id), typeof(key), length(id) FROM block")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(types, vec![("blob".into(), "blob".into(), 32)]);
        let extra: Vec<String> = conn
            .prepare("SELECT DISTINCT typeof(data) FROM extra")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(extra, vec!["blob".to_string()]);
        let seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'inode'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 20);
    }
}

/// A copy of tree-dir.fl changed by `sql`, and the error reading it.
fn broken(sql: &str) -> FlistError {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.fl");
    std::fs::copy(fixtures().join("tree-dir.fl"), &p).unwrap();
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&p, perm).unwrap();
    rusqlite::Connection::open(&p)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    Flist::read(&p).unwrap_err()
}

#[test]
fn bad_flists_are_refused_with_the_reason() {
    let cases = [
        (
            "DELETE FROM block WHERE rowid = 8",
            "has 3 blocks, its size needs 4",
        ),
        (
            "UPDATE block SET id = x'00' WHERE rowid = 1",
            "32-byte id and key",
        ),
        (
            "UPDATE inode SET parent = 99 WHERE ino = 5",
            "parent 99, which is absent",
        ),
        (
            "UPDATE inode SET parent = 5 WHERE ino = 6",
            "not a directory",
        ),
        (
            "UPDATE inode SET name = 'run.sh' WHERE ino = 4",
            "two entries named",
        ),
        (
            "UPDATE inode SET name = 'a/b' WHERE ino = 4",
            "invalid name",
        ),
        (
            "UPDATE inode SET parent = 19 WHERE ino = 16",
            "not reachable from the root",
        ),
        (
            "UPDATE inode SET mode = 0 WHERE ino = 4",
            "unknown file type",
        ),
        ("DELETE FROM extra WHERE ino = 3", "has no target"),
        ("DELETE FROM inode WHERE ino = 1", "no root inode"),
        ("UPDATE route SET start = 300", "not a range of bytes"),
        (
            "INSERT INTO block VALUES (16, zeroblob(32), zeroblob(32))",
            "not a regular file",
        ),
    ];
    for (sql, want) in cases {
        let e = broken(sql).to_string();
        assert!(e.contains(want), "{sql}: {e}");
    }
    let missing = broken("DROP TABLE route").to_string();
    assert!(missing.contains("is not an flist"), "{missing}");

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.fl");
    std::fs::write(&text, b"just text").unwrap();
    assert!(!flist::is_flist(&text).unwrap());
    assert!(matches!(
        Flist::read(&text),
        Err(FlistError::NotAnFlist { .. })
    ));
    let gz = dir.path().join("old.flist");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let e = Flist::read(&gz).unwrap_err().to_string();
    assert!(e.contains("legacy"), "{e}");
}
