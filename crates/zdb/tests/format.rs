//! The on-disk format, built and parsed by hand from the documented layout (not with the crate's own
//! format code): files we write by hand are served, and files the server writes parse back.

mod common;

use std::path::Path;

use common::*;
use redis_protocol::resp2::types::OwnedFrame;

/// CRC32C, reflected polynomial 0x82F63B78, seed 0, no final XOR, bit by bit.
fn crc(data: &[u8]) -> u32 {
    let mut c = 0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    c
}

fn u32le(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn u64le(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Data header "DAT0" v3: magic, u32 version, u64 created, u64 opened, u32 fileid = 28 bytes.
fn data_header(fileid: u32) -> Vec<u8> {
    let mut v = b"DAT0".to_vec();
    u32le(&mut v, 3);
    u64le(&mut v, 1_600_000_000);
    u64le(&mut v, 1_600_000_000);
    u32le(&mut v, fileid);
    assert_eq!(v.len(), 28);
    v
}

/// Index header "IDX0" v4: magic, u32 version, u64 created, u64 opened, u32 fileid, u8 mode = 29 bytes.
fn index_header(fileid: u32, mode: u8) -> Vec<u8> {
    let mut v = b"IDX0".to_vec();
    u32le(&mut v, 4);
    u64le(&mut v, 1_600_000_000);
    u64le(&mut v, 1_600_000_000);
    u32le(&mut v, fileid);
    v.push(mode);
    assert_eq!(v.len(), 29);
    v
}

/// Data entry: u8 idlen, u32 datalen, u32 previous, u32 crc, u8 flags, u32 timestamp, key, payload.
fn data_entry(key: &[u8], payload: &[u8], previous: u32, flags: u8, ts: u32) -> Vec<u8> {
    let mut v = vec![key.len() as u8];
    u32le(&mut v, payload.len() as u32);
    u32le(&mut v, previous);
    u32le(&mut v, crc(payload));
    v.push(flags);
    u32le(&mut v, ts);
    assert_eq!(v.len(), 18);
    v.extend_from_slice(key);
    v.extend_from_slice(payload);
    v
}

/// Index record: u8 idlen, u32 offset, u32 length, u32 previous, u8 flags, u32 dataid, u32 timestamp,
/// u32 crc, u32 parentid, u32 parentoff, key.
#[allow(clippy::too_many_arguments)]
fn index_record(
    key: &[u8],
    offset: u32,
    length: u32,
    previous: u32,
    flags: u8,
    dataid: u32,
    ts: u32,
    crc: u32,
    parent: (u32, u32),
) -> Vec<u8> {
    let mut v = vec![key.len() as u8];
    u32le(&mut v, offset);
    u32le(&mut v, length);
    u32le(&mut v, previous);
    v.push(flags);
    u32le(&mut v, dataid);
    u32le(&mut v, ts);
    u32le(&mut v, crc);
    u32le(&mut v, parent.0);
    u32le(&mut v, parent.1);
    assert_eq!(v.len(), 34);
    v.extend_from_slice(key);
    v
}

/// Namespace descriptor: u32 version=1, u8 namelen, u8 passlen, u64 maxsize, u8 flags, name, password.
fn descriptor(name: &str, password: &str, maxsize: u64, flags: u8) -> Vec<u8> {
    let mut v = Vec::new();
    u32le(&mut v, 1);
    v.push(name.len() as u8);
    v.push(password.len() as u8);
    u64le(&mut v, maxsize);
    v.push(flags);
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(password.as_bytes());
    v
}

#[test]
fn crc_is_castagnoli_seed_zero_no_final_xor() {
    // Standard CRC-32C("123456789") is 0xE3069283; without the init/final inversions it differs.
    assert_ne!(crc(b"123456789"), 0xE306_9283);
    assert_eq!(zdb::format::zdb_crc32(b"123456789"), crc(b"123456789"));
    assert_eq!(zdb::format::zdb_crc32(&[7u8; 1000]), crc(&[7u8; 1000]));
}

#[test]
fn hand_built_files_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let ns_index = dir.path().join("index/hand");
    let ns_data = dir.path().join("data/hand");
    std::fs::create_dir_all(&ns_index).unwrap();
    std::fs::create_dir_all(&ns_data).unwrap();

    // d0: alpha=one, beta=two, alpha=uno (overwrite); d1: gamma=three, beta deleted.
    let mut d0 = data_header(0);
    let e1 = d0.len() as u32;
    d0.extend(data_entry(b"alpha", b"one", 0, 0, 100));
    let e2 = d0.len() as u32;
    d0.extend(data_entry(b"beta", b"two", e1, 0, 101));
    let e3 = d0.len() as u32;
    d0.extend(data_entry(b"alpha", b"uno", e2, 0, 102));
    let mut d1 = data_header(1);
    let f1 = d1.len() as u32;
    d1.extend(data_entry(b"gamma", b"three", 0, 0, 103));
    let f2 = d1.len() as u32;
    d1.extend(data_entry(b"beta", b"", f1, 1, 104));

    let mut i0 = index_header(0, 0);
    let r1 = i0.len() as u32;
    // alpha's first version is superseded: flagged deleted in place.
    i0.extend(index_record(
        b"alpha",
        e1,
        3,
        0,
        1,
        0,
        100,
        crc(b"one"),
        (0, 0),
    ));
    let r2 = i0.len() as u32;
    i0.extend(index_record(
        b"beta",
        e2,
        3,
        r1,
        1,
        0,
        101,
        crc(b"two"),
        (0, 0),
    ));
    let r3 = i0.len() as u32;
    i0.extend(index_record(
        b"alpha",
        e3,
        3,
        r2,
        0,
        0,
        102,
        crc(b"uno"),
        (0, r1),
    ));
    let _ = r3;
    let mut i1 = index_header(1, 0);
    let s1 = i1.len() as u32;
    i1.extend(index_record(
        b"gamma",
        f1,
        5,
        0,
        0,
        1,
        103,
        crc(b"three"),
        (0, 0),
    ));
    i1.extend(index_record(b"beta", f2, 0, s1, 1, 1, 104, 0, (0, r2)));

    std::fs::write(ns_data.join("d0"), &d0).unwrap();
    std::fs::write(ns_data.join("d1"), &d1).unwrap();
    std::fs::write(ns_index.join("i0"), &i0).unwrap();
    std::fs::write(ns_index.join("i1"), &i1).unwrap();
    std::fs::write(
        ns_index.join("zdb-namespace"),
        descriptor("hand", "pw", 0, 1),
    )
    .unwrap();

    let l = start_logged(dir.path(), "hand", &[]);
    assert!(
        !l.log_text().contains("rebuilding"),
        "hand-built index was rejected: {}",
        l.log_text()
    );
    let mut r = Raw::connect(l.port);
    assert_eq!(
        r.c(&["SELECT", "hand"]),
        simple("OK"),
        "public namespace with password: read-only select"
    );
    assert_eq!(
        r.c(&["SET", "x", "y"]),
        err("Namespace is in read-only mode")
    );
    assert_eq!(r.c(&["SELECT", "hand", "pw"]), simple("OK"));
    assert_eq!(r.c(&["GET", "alpha"]), bulk(b"uno"));
    assert_eq!(r.c(&["GET", "beta"]), OwnedFrame::Null);
    assert_eq!(r.c(&["GET", "gamma"]), bulk(b"three"));
    assert_eq!(
        r.c(&["CHECK", "alpha"]),
        int(1),
        "checksum agrees with the hand-computed CRC"
    );
    assert_eq!(r.c(&["CHECK", "gamma"]), int(1));
    assert_eq!(r.c(&["KEYTIME", "alpha"]), int(102));
    assert_eq!(r.c(&["DBSIZE"]), int(2));
    assert_eq!(
        scan_all(&mut r, "SCAN"),
        vec![b"alpha".to_vec(), b"gamma".to_vec()]
    );
    let OwnedFrame::Array(h) = r.c(&["HISTORY", "alpha"]) else {
        panic!()
    };
    let OwnedFrame::Array(h) = r.cmd(&[b"HISTORY", b"alpha", &bytes_of(&h[0])]) else {
        panic!()
    };
    assert_eq!(h[2], bulk(b"one"));
    // Appends continue in d1/i1.
    assert_eq!(r.c(&["SET", "delta", "four"]), bulk(b"delta"));
    let d1_after = std::fs::read(ns_data.join("d1")).unwrap();
    assert_eq!(&d1_after[..d1.len()], &d1[..], "existing bytes untouched");
    assert_eq!(
        &d1_after[d1.len()..],
        &data_entry(b"delta", b"four", f2, 0, rd32(&d1_after, d1.len() + 14))[..]
    );
}

/// A parsed data entry: (offset, flags, key, payload, previous).
type ParsedEntry = (u32, u8, Vec<u8>, Vec<u8>, u32);

fn parse_data(file: &Path, fileid: u32) -> Vec<ParsedEntry> {
    let b = std::fs::read(file).unwrap();
    assert_eq!(&b[0..4], b"DAT0");
    assert_eq!(rd32(&b, 4), 3, "data version");
    assert_eq!(rd32(&b, 24), fileid, "data fileid");
    let mut out = Vec::new();
    let mut pos = 28;
    let mut prev_entry = 0u32;
    while pos < b.len() {
        let idlen = b[pos] as usize;
        let datalen = rd32(&b, pos + 1) as usize;
        let previous = rd32(&b, pos + 5);
        let c = rd32(&b, pos + 9);
        let flags = b[pos + 13];
        let key = b[pos + 18..pos + 18 + idlen].to_vec();
        let payload = b[pos + 18 + idlen..pos + 18 + idlen + datalen].to_vec();
        assert_eq!(c, crc(&payload), "entry crc at {pos}");
        if !out.is_empty() {
            assert_eq!(previous, prev_entry, "previous pointer at {pos}");
        }
        out.push((pos as u32, flags, key, payload, previous));
        prev_entry = pos as u32;
        pos += 18 + idlen + datalen;
    }
    assert_eq!(pos, b.len());
    out
}

#[test]
fn server_written_files_parse_with_documented_layout() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["NSNEW", "fmt"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "fmt", "password", "secret"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "fmt", "maxsize", "4096"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "fmt", "worm", "1"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "fmt", "worm", "0"]), simple("OK"));
    assert_eq!(r.c(&["SET", "a", "first"]), bulk(b"a"));
    assert_eq!(r.c(&["SET", "b", "second"]), bulk(b"b"));
    assert_eq!(r.c(&["SET", "a", "third"]), bulk(b"a"));
    assert_eq!(r.c(&["DEL", "b"]), simple("OK"));
    drop(r);
    z.child.kill();

    let entries = parse_data(&dir.path().join("data/default/d0"), 0);
    let summary: Vec<(u8, &[u8], &[u8])> = entries
        .iter()
        .map(|(_, f, k, p, _)| (*f, k.as_slice(), p.as_slice()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, &b"a"[..], &b"first"[..]),
            (0, b"b", b"second"),
            (0, b"a", b"third"),
            (1, b"b", b"")
        ]
    );

    let b = std::fs::read(dir.path().join("index/default/i0")).unwrap();
    assert_eq!(&b[0..4], b"IDX0");
    assert_eq!(rd32(&b, 4), 4, "index version");
    assert_eq!(rd32(&b, 24), 0, "index fileid");
    assert_eq!(b[28], 0, "user mode");
    let mut pos = 29;
    let mut recs = Vec::new();
    while pos < b.len() {
        let idlen = b[pos] as usize;
        recs.push((
            pos as u32,
            rd32(&b, pos + 1),  // offset
            rd32(&b, pos + 5),  // length
            rd32(&b, pos + 9),  // previous
            b[pos + 13],        // flags
            rd32(&b, pos + 14), // dataid
            rd32(&b, pos + 22), // crc
            rd32(&b, pos + 26), // parentid
            rd32(&b, pos + 30), // parentoff
            b[pos + 34..pos + 34 + idlen].to_vec(),
        ));
        pos += 34 + idlen;
    }
    assert_eq!(pos, b.len());
    assert_eq!(recs.len(), 4);
    for (i, rec) in recs.iter().enumerate() {
        assert_eq!(rec.1, entries[i].0, "record {i} points at its data entry");
        assert_eq!(rec.2 as usize, entries[i].3.len());
        assert_eq!(rec.5, 0);
        assert_eq!(rec.6, crc(&entries[i].3));
        assert_eq!(rec.9, entries[i].2);
        if i > 0 {
            assert_eq!(rec.3, recs[i - 1].0, "previous record pointer");
        }
    }
    // Superseded "a" and deleted "b" are flagged in place; the new "a" and the deletion point back.
    assert_eq!(
        recs.iter().map(|r| r.4).collect::<Vec<_>>(),
        vec![1, 1, 0, 1]
    );
    assert_eq!((recs[2].7, recs[2].8), (0, recs[0].0));
    assert_eq!((recs[3].7, recs[3].8), (0, recs[1].0));

    let d = std::fs::read(dir.path().join("index/fmt/zdb-namespace")).unwrap();
    assert_eq!(rd32(&d, 0), 1, "descriptor version");
    assert_eq!(d[4] as usize, 3);
    assert_eq!(d[5] as usize, 6);
    assert_eq!(u64::from_le_bytes(d[6..14].try_into().unwrap()), 4096);
    assert_eq!(d[14], 1, "public, not worm");
    assert_eq!(&d[15..], b"fmtsecret");
    // Fresh data/index files of the new namespace have headers only.
    assert_eq!(
        std::fs::read(dir.path().join("data/fmt/d0")).unwrap().len(),
        28
    );
    assert_eq!(
        std::fs::read(dir.path().join("index/fmt/i0"))
            .unwrap()
            .len(),
        29
    );
}
