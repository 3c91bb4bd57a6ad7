//! Restart, reload, rotation, kill -9 recovery, torn tails, index rebuild and read-only mode.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use redis_protocol::resp2::types::OwnedFrame;

/// Writes acknowledged by the server: (key, value).
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Sets keys `k0` .. `k{n-1}` to `value_for(i)`, the content the checks below expect.
fn set_keys(r: &mut Raw, n: usize) {
    for i in 0..n {
        r.cmd(&[b"SET", format!("k{i}").as_bytes(), &value_for(i)]);
    }
}

fn value_for(i: usize) -> Vec<u8> {
    format!("value-{i}-").repeat(1 + i % 13).into_bytes()
}

#[test]
fn rotation_scan_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &["--datasize", "4096"]);
    let mut r = Raw::connect(z.port);
    for i in 0..300 {
        assert_eq!(
            r.cmd(&[b"SET", format!("k{i}").as_bytes(), &value_for(i)]),
            bulk(format!("k{i}").as_bytes())
        );
    }
    for i in (0..300).step_by(7) {
        r.cmd(&[b"SET", format!("k{i}").as_bytes(), b"overwritten"]);
    }
    for i in (0..300).step_by(11) {
        assert_eq!(r.c(&["DEL", &format!("k{i}")]), simple("OK"));
    }
    let data_files = std::fs::read_dir(dir.path().join("data/default"))
        .unwrap()
        .count();
    assert!(
        data_files > 5,
        "expected many rotated data files, got {data_files}"
    );
    for f in std::fs::read_dir(dir.path().join("data/default")).unwrap() {
        let len = f.unwrap().metadata().unwrap().len();
        assert!(
            len <= 4096 + 300,
            "data file of {len} bytes exceeds --datasize"
        );
    }

    let expected_live = |i: usize| i % 11 != 0;
    let mut expected: Vec<Vec<u8>> = (0..300)
        .filter(|i| expected_live(*i) && i % 7 != 0)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    expected.extend(
        (0..300)
            .step_by(7)
            .filter(|i| expected_live(*i))
            .map(|i| format!("k{i}").into_bytes()),
    );
    let scanned = scan_all(&mut r, "SCAN");
    assert_eq!(scanned, expected);
    let mut rev = expected.clone();
    rev.reverse();
    assert_eq!(scan_all(&mut r, "RSCAN"), rev);

    let check_all = |r: &mut Raw| {
        for i in 0..300 {
            let got = r.cmd(&[b"GET", format!("k{i}").as_bytes()]);
            if !expected_live(i) {
                assert_eq!(got, OwnedFrame::Null, "k{i}");
            } else if i % 7 == 0 {
                assert_eq!(got, bulk(b"overwritten"), "k{i}");
            } else {
                assert_eq!(got, bulk(&value_for(i)), "k{i}");
            }
        }
        assert_eq!(r.c(&["DBSIZE"]), int(expected.len() as i64));
    };
    check_all(&mut r);
    drop(r);
    z.restart();
    let mut r = Raw::connect(z.port);
    check_all(&mut r);
    assert_eq!(scan_all(&mut r, "SCAN"), expected);
    assert_eq!(scan_all(&mut r, "RSCAN"), rev);
    // HISTORY crosses files after a restart.
    let OwnedFrame::Array(h) = r.c(&["HISTORY", "k14"]) else {
        panic!()
    };
    assert_eq!(h[2], bulk(b"overwritten"));
    let OwnedFrame::Array(h) = r.cmd(&[b"HISTORY", b"k14", &bytes_of(&h[0])]) else {
        panic!()
    };
    assert_eq!(h[2], bulk(&value_for(14)));
    // Writing continues in the last file.
    assert_eq!(r.c(&["SET", "after", "restart"]), bulk(b"after"));
    assert_eq!(r.c(&["GET", "after"]), bulk(b"restart"));
}

#[test]
fn kill_9_during_write_storm_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &["--sync", "--datasize", "65536"]);
    let port = z.port;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let acked = acked.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut r = Raw::connect(port);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("t{t}-{i}");
                    let val = value_for(i * 4 + t);
                    r.send_raw(&encode(&[b"SET", key.as_bytes(), &val]));
                    match r.read_frame() {
                        Some(OwnedFrame::BulkString(k)) if k == key.as_bytes() => {
                            acked.lock().unwrap().push((key, val))
                        }
                        Some(other) => panic!("unexpected reply {other:?}"),
                        None => return,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    z.child.signal(libc::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "only {} writes acknowledged", acked.len());
    z.restart();
    let mut r = Raw::connect(z.port);
    for (k, v) in &acked {
        assert_eq!(
            r.cmd(&[b"GET", k.as_bytes()]),
            bulk(v),
            "acknowledged {k} lost"
        );
        assert_eq!(r.cmd(&[b"CHECK", k.as_bytes()]), int(1));
    }
}

#[test]
fn torn_tail_is_cut_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    set_keys(&mut r, 10);
    drop(r);
    z.child.kill();
    let d0 = dir.path().join("data/default/d0");
    let good_len = std::fs::metadata(&d0).unwrap().len();
    // A complete-looking entry whose payload does not match its checksum, then half a header.
    let mut torn = Vec::new();
    torn.push(4u8); // idlength
    torn.extend(5u32.to_le_bytes()); // datalength
    torn.extend(0u32.to_le_bytes()); // previous
    torn.extend(0xDEADBEEFu32.to_le_bytes()); // crc (wrong)
    torn.push(0); // flags
    torn.extend(1u32.to_le_bytes()); // timestamp
    torn.extend(b"torn");
    torn.extend(b"hello");
    torn.extend([1, 2, 3]);
    OpenOptions::new()
        .append(true)
        .open(&d0)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    let l = start_logged(dir.path(), "torn", &[]);
    let log = l.log_text();
    assert!(
        log.contains("torn tail entry"),
        "no log line about the torn tail: {log}"
    );
    assert_eq!(
        std::fs::metadata(&d0).unwrap().len(),
        good_len,
        "torn tail not truncated"
    );
    let mut r = Raw::connect(l.port);
    assert_eq!(r.c(&["GET", "torn"]), OwnedFrame::Null);
    for i in 0..10 {
        assert_eq!(
            r.cmd(&[b"GET", format!("k{i}").as_bytes()]),
            bulk(&value_for(i))
        );
    }
    assert_eq!(r.c(&["SET", "next", "ok"]), bulk(b"next"));
    assert_eq!(r.c(&["GET", "next"]), bulk(b"ok"));
}

#[test]
fn data_without_index_entries_is_recovered() {
    // Simulates a crash after the data entry was written but before its index record.
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    set_keys(&mut r, 5);
    drop(r);
    z.child.kill();
    let i0 = dir.path().join("index/default/i0");
    let len = std::fs::metadata(&i0).unwrap().len();
    // Drop the last two index records (each 34 + 2 bytes).
    let f = OpenOptions::new().write(true).open(&i0).unwrap();
    f.set_len(len - 2 * 36).unwrap();
    drop(f);
    let l = start_logged(dir.path(), "recover", &[]);
    assert!(
        l.log_text().contains("recovered 2 entries"),
        "{}",
        l.log_text()
    );
    let mut r = Raw::connect(l.port);
    for i in 0..5 {
        assert_eq!(
            r.cmd(&[b"GET", format!("k{i}").as_bytes()]),
            bulk(&value_for(i))
        );
    }
    assert_eq!(scan_all(&mut r, "SCAN").len(), 5);
}

#[test]
fn lost_or_damaged_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &["--datasize", "2048"]);
    let mut r = Raw::connect(z.port);
    set_keys(&mut r, 60);
    r.c(&["SET", "k3", "new3"]);
    r.c(&["DEL", "k4"]);
    let before = scan_all(&mut r, "SCAN");
    drop(r);
    z.child.kill();
    let idx = dir.path().join("index/default");
    let check = |port: u16| {
        let mut r = Raw::connect(port);
        for i in 0..60 {
            let got = r.cmd(&[b"GET", format!("k{i}").as_bytes()]);
            match i {
                3 => assert_eq!(got, bulk(b"new3")),
                4 => assert_eq!(got, OwnedFrame::Null),
                _ => assert_eq!(got, bulk(&value_for(i)), "k{i}"),
            }
        }
        assert_eq!(scan_all(&mut r, "SCAN"), before);
    };

    // 1. Index files deleted.
    for f in std::fs::read_dir(&idx).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap().to_str().unwrap().starts_with('i') {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut l = start_logged(dir.path(), "lost", &[]);
    assert!(
        l.log_text().contains("rebuilding it from the data files"),
        "{}",
        l.log_text()
    );
    check(l.port);
    l.child.kill();

    // 2. Index file damaged (garbage over its header).
    std::fs::write(idx.join("i1"), b"garbage garbage garbage garbage garbage").unwrap();
    let mut l = start_logged(dir.path(), "damaged", &[]);
    assert!(
        l.log_text().contains("rebuilding it from the data files"),
        "{}",
        l.log_text()
    );
    check(l.port);
    l.child.kill();

    // 3. Explicit --rebuild-index.
    let l = start_logged(dir.path(), "explicit", &["--rebuild-index"]);
    assert!(l.log_text().contains("--rebuild-index"), "{}", l.log_text());
    check(l.port);
}

#[test]
fn read_only_filesystem_serves_existing_data() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "read-only mount test needs root under CI"
        );
        eprintln!("SKIP read_only_filesystem_serves_existing_data: not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut z = start(&src, &["--datasize", "1024"]);
    let mut r = Raw::connect(z.port);
    set_keys(&mut r, 30);
    drop(r);
    z.terminate_or_kill();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let run = |args: &[&str]| {
        let st = std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "mount {args:?}");
    };
    run(&["--bind", src.to_str().unwrap(), ro.to_str().unwrap()]);
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Umount(ro.clone());
    run(&["-o", "remount,bind,ro", ro.to_str().unwrap()]);
    assert!(
        std::fs::write(ro.join("probe"), b"x").is_err(),
        "mount is not read-only"
    );

    let l = start_logged(&ro, "../ro", &[]);
    let mut r = Raw::connect(l.port);
    for i in 0..30 {
        assert_eq!(
            r.cmd(&[b"GET", format!("k{i}").as_bytes()]),
            bulk(&value_for(i))
        );
    }
    assert_eq!(scan_all(&mut r, "SCAN").len(), 30);
    assert_eq!(
        r.c(&["SET", "k1", "x"]),
        err("Namespace is in read-only mode")
    );
    assert_eq!(r.c(&["DEL", "k1"]), err("Namespace is in read-only mode"));
    drop(r);
    drop(l);
}

trait TerminateOrKill {
    fn terminate_or_kill(&mut self);
}

impl TerminateOrKill for testkit::ZdbProcess {
    fn terminate_or_kill(&mut self) {
        if self.child.terminate(Duration::from_secs(10)).is_none() {
            self.child.kill();
        }
    }
}

#[test]
fn pipelined_set_batches_with_duplicates_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &["--datasize", "3000"]);
    let mut r = Raw::connect(z.port);
    // One pipeline: new keys, the same key several times (overwrite inside the batch), an unchanged value,
    // an empty key (error), an oversized key (error), enough bytes to rotate data files mid-batch.
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for round in 0..4 {
        for i in 0..20 {
            let k = format!("b{i}");
            let v = format!("r{round}-{}", "x".repeat(i * 10));
            batch.extend(encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
            expected.push(bulk(k.as_bytes()));
        }
        batch.extend(encode(&[b"SET", b"b0", format!("r{round}-").as_bytes()]));
        expected.push(OwnedFrame::Null);
        batch.extend(encode(&[b"SET", b"", b"v"]));
        expected.push(err("Invalid argument, key needed"));
        batch.extend(encode(&[b"SET", "k".repeat(300).as_bytes(), b"v"]));
        expected.push(err("Key too large"));
    }
    batch.extend(encode(&[b"GET", b"b19"]));
    let last19 = format!("r3-{}", "x".repeat(190));
    expected.push(bulk(last19.as_bytes()));
    r.send_raw(&batch);
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&r.read_frame().unwrap(), want, "reply {i}");
    }
    let files = std::fs::read_dir(dir.path().join("data/default"))
        .unwrap()
        .count();
    assert!(
        files > 3,
        "expected rotation inside the batch, got {files} data files"
    );
    let check = |r: &mut Raw| {
        for i in 0..20 {
            let v = format!("r3-{}", "x".repeat(i * 10));
            assert_eq!(
                r.cmd(&[b"GET", format!("b{i}").as_bytes()]),
                bulk(v.as_bytes()),
                "b{i}"
            );
            assert_eq!(r.cmd(&[b"CHECK", format!("b{i}").as_bytes()]), int(1));
        }
        assert_eq!(r.c(&["DBSIZE"]), int(20));
        let keys = scan_all(r, "SCAN");
        assert_eq!(keys.len(), 20, "each live key once: {keys:?}");
        // HISTORY: four versions of b5, newest first.
        let OwnedFrame::Array(mut h) = r.c(&["HISTORY", "b5"]) else {
            panic!()
        };
        for round in (0..4).rev() {
            assert_eq!(
                h[2],
                bulk(format!("r{round}-{}", "x".repeat(50)).as_bytes())
            );
            if round > 0 {
                let OwnedFrame::Array(next) = r.cmd(&[b"HISTORY", b"b5", &bytes_of(&h[0])]) else {
                    panic!()
                };
                h = next;
            }
        }
    };
    check(&mut r);
    drop(r);
    z.restart();
    let mut r = Raw::connect(z.port);
    check(&mut r);
    let l = {
        z.child.kill();
        start_logged(dir.path(), "rebuilt", &["--rebuild-index"])
    };
    check(&mut Raw::connect(l.port));
}
