//! Every command and its 0-db reply, over TCP against the real binary.

mod common;

use common::*;
use redis_protocol::resp2::types::OwnedFrame;

#[test]
fn dataset_commands_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);

    assert_eq!(r.c(&["PING"]), simple("PONG"));
    assert_eq!(r.c(&["ping"]), simple("PONG"), "case-insensitive");
    assert_eq!(r.c(&["NOPE"]), err("Command not supported"));

    // SET returns the key; unchanged value returns nil.
    assert_eq!(r.c(&["SET", "k1", "v1"]), bulk(b"k1"));
    assert_eq!(r.c(&["SET", "k1", "v1"]), OwnedFrame::Null);
    assert_eq!(r.c(&["SETX", "k1", "v2"]), bulk(b"k1"));
    assert_eq!(r.c(&["GET", "k1"]), bulk(b"v2"));
    assert_eq!(r.c(&["GET", "missing"]), OwnedFrame::Null);
    assert_eq!(r.c(&["SET", "", "v"]), err("Invalid argument, key needed"));
    assert_eq!(r.c(&["SET", "k"]), err("Unexpected arguments"));
    assert_eq!(r.c(&["GET"]), err("Unexpected arguments"));
    assert_eq!(r.c(&["GET", ""]), err("Invalid argument"));
    let long = "x".repeat(256);
    assert_eq!(r.c(&["SET", &long, "v"]), err("Key too large"));
    assert_eq!(r.c(&["GET", &long]), err("Invalid key"));
    let max = "y".repeat(255);
    assert_eq!(r.c(&["SET", &max, "v"]), bulk(max.as_bytes()));

    // Binary-safe keys and values.
    let bkey: Vec<u8> = (0u8..=255).step_by(3).collect();
    let bval: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(r.cmd(&[b"SET", &bkey, &bval]), bulk(&bkey));
    assert_eq!(r.cmd(&[b"GET", &bkey]), bulk(&bval));
    assert_eq!(r.cmd(&[b"SET", b"empty", b""]), bulk(b"empty"));
    assert_eq!(r.c(&["GET", "empty"]), bulk(b""));

    // MGET
    assert_eq!(
        r.c(&["MGET", "k1", "missing", "empty"]),
        OwnedFrame::Array(vec![bulk(b"v2"), OwnedFrame::Null, bulk(b"")])
    );
    assert_eq!(r.c(&["MGET"]), err("Invalid arguments"));
    let many: Vec<String> = (0..1024).map(|i| format!("k{i}")).collect();
    let mut args = vec!["MGET"];
    args.extend(many.iter().map(|s| s.as_str()));
    assert_eq!(r.c(&args), err("Too many keys"));
    args.pop();
    match r.c(&args) {
        OwnedFrame::Array(v) => assert_eq!(v.len(), 1023),
        other => panic!("{other:?}"),
    }

    // EXISTS / CHECK / LENGTH / KEYTIME
    assert_eq!(r.c(&["EXISTS", "k1"]), int(1));
    assert_eq!(r.c(&["EXISTS", "missing"]), int(0));
    assert_eq!(r.c(&["CHECK", "k1"]), int(1));
    assert_eq!(r.c(&["CHECK", "missing"]), OwnedFrame::Null);
    assert_eq!(r.c(&["LENGTH", "k1"]), int(2));
    assert_eq!(r.c(&["LENGTH", "missing"]), OwnedFrame::Null);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    match r.c(&["KEYTIME", "k1"]) {
        OwnedFrame::Integer(t) => assert!((t - now).abs() < 60, "keytime {t} vs now {now}"),
        other => panic!("{other:?}"),
    }
    // Admin may set the timestamp.
    assert_eq!(r.c(&["SET", "old", "v", "1000"]), bulk(b"old"));
    assert_eq!(r.c(&["KEYTIME", "old"]), int(1000));

    // DEL
    assert_eq!(r.c(&["DEL", "k1"]), simple("OK"));
    assert_eq!(r.c(&["DEL", "k1"]), err("Key not found"));
    assert_eq!(r.c(&["GET", "k1"]), OwnedFrame::Null);
    assert_eq!(r.c(&["EXISTS", "k1"]), int(0));
    assert_eq!(
        r.c(&["SET", "k1", "v2"]),
        bulk(b"k1"),
        "re-create after delete"
    );
    assert_eq!(r.c(&["GET", "k1"]), bulk(b"v2"));

    // DBSIZE: k1, max, bkey, empty, old
    assert_eq!(r.c(&["DBSIZE"]), int(5));

    // TIME
    match r.c(&["TIME"]) {
        OwnedFrame::Array(v) => {
            assert_eq!(v.len(), 2);
            let secs: i64 = String::from_utf8(bytes_of(&v[0])).unwrap().parse().unwrap();
            assert!((secs - now).abs() < 60);
        }
        other => panic!("{other:?}"),
    }

    // INFO
    let info = String::from_utf8(bytes_of(&r.c(&["INFO"]))).unwrap();
    assert!(info.contains("# server"), "{info}");

    // AUTH without admin password
    assert_eq!(r.c(&["AUTH", "x"]), err("Authentication disabled"));

    // WAIT argument errors
    assert_eq!(r.c(&["WAIT"]), err("Invalid arguments"));
    assert_eq!(r.c(&["WAIT", "NOPE"]), err("Unknown command to watch"));
    assert_eq!(r.c(&["WAIT", "SET", "5"]), err("Invalid timeout"));
    // A WAIT that times out.
    assert_eq!(r.c(&["WAIT", "SET", "100"]), err("Timeout"));
}

#[test]
fn scan_keycur_history_and_index_commands() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["SCAN"]), err("No more data"));
    assert_eq!(r.c(&["RSCAN"]), err("No more data"));
    for i in 0..20 {
        assert_eq!(
            r.c(&["SET", &format!("key{i:02}"), &format!("value{i}")]),
            bulk(format!("key{i:02}").as_bytes())
        );
    }
    // Overwrite and delete some: SCAN lists each live key once, in write order.
    r.c(&["SET", "key03", "changed"]);
    r.c(&["DEL", "key05"]);
    let mut expected: Vec<Vec<u8>> = (0..20)
        .filter(|i| *i != 3 && *i != 5)
        .map(|i| format!("key{i:02}").into_bytes())
        .collect();
    expected.push(b"key03".to_vec());
    assert_eq!(scan_all(&mut r, "SCAN"), expected);
    assert_eq!(scan_all(&mut r, "SCANX"), expected);
    let mut rev = expected.clone();
    rev.reverse();
    assert_eq!(scan_all(&mut r, "RSCAN"), rev);

    // SCAN reply shape: [cursor, [[key, size, timestamp]]]
    match r.c(&["SCAN"]) {
        OwnedFrame::Array(parts) => {
            assert_eq!(bytes_of(&parts[0]).len(), 17, "cursor is 17 bytes");
            let OwnedFrame::Array(entries) = &parts[1] else {
                panic!()
            };
            let OwnedFrame::Array(first) = &entries[0] else {
                panic!()
            };
            assert_eq!(first[0], bulk(b"key00"));
            assert_eq!(first[1], int(6));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.c(&["SCAN", "garbage"]), err("Invalid key format"));

    // KEYCUR then SCAN from it continues after that key.
    let cur = bytes_of(&r.c(&["KEYCUR", "key10"]));
    assert_eq!(cur.len(), 17);
    let OwnedFrame::Array(parts) = r.cmd(&[b"SCAN", &cur]) else {
        panic!()
    };
    let OwnedFrame::Array(entries) = &parts[1] else {
        panic!()
    };
    let OwnedFrame::Array(first) = &entries[0] else {
        panic!()
    };
    assert_eq!(first[0], bulk(b"key11"));
    assert_eq!(r.c(&["KEYCUR", "nope"]), err("Key not found"));

    // HISTORY walks back through versions.
    let OwnedFrame::Array(h1) = r.c(&["HISTORY", "key03"]) else {
        panic!()
    };
    assert_eq!(h1[2], bulk(b"changed"));
    let pos = bytes_of(&h1[0]);
    let OwnedFrame::Array(h2) = r.cmd(&[b"HISTORY", b"key03", &pos]) else {
        panic!()
    };
    assert_eq!(h2[2], bulk(b"value3"));
    let pos2 = bytes_of(&h2[0]);
    assert_eq!(r.cmd(&[b"HISTORY", b"key03", &pos2]), OwnedFrame::Null);
    assert_eq!(r.c(&["HISTORY"]), err("Invalid arguments"));
    assert_eq!(
        r.c(&["HISTORY", "key03", "short"]),
        err("Invalid key format")
    );

    // KSCAN prefix listing.
    let OwnedFrame::Array(k) = r.c(&["KSCAN", "key1"]) else {
        panic!()
    };
    let OwnedFrame::Array(keys) = &k[1] else {
        panic!()
    };
    assert_eq!(keys.len(), 10);
    assert_eq!(r.c(&["KSCAN", "zzz"]), err("No keys match"));

    // INDEX DIRTY: the overwrite and the delete flagged records of index file 0.
    assert_eq!(r.c(&["INDEX", "DIRTY"]), OwnedFrame::Array(vec![int(0)]));
    assert_eq!(
        r.c(&["INDEX", "DIRTY", "RESET"]),
        OwnedFrame::Array(vec![int(0)])
    );
    assert_eq!(r.c(&["INDEX", "DIRTY"]), OwnedFrame::Array(vec![]));

    // DATA RAW reads the first entry (offset 28 of d0).
    let OwnedFrame::Array(raw) = r.c(&["DATA", "RAW", "0", "28"]) else {
        panic!()
    };
    assert_eq!(raw[0], bulk(b"key00"));
    assert_eq!(raw[1], bulk(b"value0"));
    assert_eq!(r.c(&["DATA", "RAW", "9", "28"]), err("Invalid offset"));
    assert_eq!(r.c(&["HOOKS"]), OwnedFrame::Array(vec![]));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend(encode(&[
            b"SET",
            format!("p{i}").as_bytes(),
            format!("v{i}").as_bytes(),
        ]));
        batch.extend(encode(&[b"GET", format!("p{i}").as_bytes()]));
    }
    batch.extend(encode(&[b"PING"]));
    r.send_raw(&batch);
    for i in 0..500 {
        assert_eq!(r.read_frame().unwrap(), bulk(format!("p{i}").as_bytes()));
        assert_eq!(r.read_frame().unwrap(), bulk(format!("v{i}").as_bytes()));
    }
    assert_eq!(r.read_frame().unwrap(), simple("PONG"));
}

#[test]
fn payload_limit_and_large_values() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    let big = vec![0xABu8; 8 * 1024 * 1024];
    assert_eq!(r.cmd(&[b"SET", b"big", &big]), bulk(b"big"));
    assert_eq!(r.cmd(&[b"GET", b"big"]), bulk(&big));
    // One byte over the limit: error, then the connection is dropped.
    r.send_raw(format!("*3\r\n$3\r\nSET\r\n$1\r\nx\r\n${}\r\n", 8 * 1024 * 1024 + 1).as_bytes());
    assert_eq!(r.read_frame(), Some(err("Payload too large")));
    assert_eq!(r.read_frame(), None);
    let mut r2 = Raw::connect(z.port);
    assert_eq!(r2.c(&["PING"]), simple("PONG"));
}

#[test]
fn redis_crate_client_works() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", z.port)).unwrap();
    let mut con = client.get_connection().unwrap();
    let key: Vec<u8> = redis::cmd("SET")
        .arg(b"a\x00b")
        .arg(b"\x01\x02")
        .query(&mut con)
        .unwrap();
    assert_eq!(key, b"a\x00b");
    let v: Vec<u8> = redis::cmd("GET").arg(b"a\x00b").query(&mut con).unwrap();
    assert_eq!(v, b"\x01\x02");
    let unchanged: Option<Vec<u8>> = redis::cmd("SET")
        .arg(b"a\x00b")
        .arg(b"\x01\x02")
        .query(&mut con)
        .unwrap();
    assert_eq!(unchanged, None);
    let e = redis::cmd("DEL")
        .arg("nope")
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let (a, b): (Vec<u8>, Vec<u8>) = redis::pipe()
        .cmd("SET")
        .arg("x")
        .arg("1")
        .cmd("GET")
        .arg("x")
        .query(&mut con)
        .unwrap();
    assert_eq!((a, b), (b"x".to_vec(), b"1".to_vec()));
}
