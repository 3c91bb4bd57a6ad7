//! --hook, --dump, --background, and many concurrent readers with a writer.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use redis_protocol::resp2::types::OwnedFrame;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hook_is_called_on_events() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hook.log");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let z = start(
        dir.path(),
        &["--hook", script.to_str().unwrap(), "--datasize", "100"],
    );
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["NSNEW", "hooked"]), simple("OK"));
    r.c(&["SET", "a", &"x".repeat(80)]);
    r.c(&["SET", "b", &"y".repeat(80)]);
    wait_until("hook calls", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("ready") && t.contains("namespace-created") && t.contains("jump")
    });
    let t = std::fs::read_to_string(&log).unwrap();
    let id = format!("tcp://127.0.0.1:{}", z.port);
    assert!(
        t.lines()
            .any(|l| l == format!("namespace-created {id} hooked")),
        "{t}"
    );
}

#[test]
fn dump_prints_keys_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    r.c(&["SET", "dumped-key", "v"]);
    drop(r);
    z.child.kill();
    let out = std::process::Command::new(zdb_bin())
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--index")
        .arg(dir.path().join("index"))
        .arg("--dump")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&hex::encode("dumped-key")), "{text}");
    assert!(text.contains("namespace default: 1 keys"), "{text}");
}

/// PIDs of processes whose command line contains `needle`.
fn pids_with_arg(needle: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

#[test]
fn background_daemon_serves_after_parent_exits() {
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let logfile = dir.path().join("daemon.log");
    let data = dir.path().join("daemon-data");
    let status = std::process::Command::new(zdb_bin())
        .arg("--data")
        .arg(&data)
        .arg("--index")
        .arg(dir.path().join("index"))
        .args(["--port", &port.to_string(), "--background", "--logfile"])
        .arg(&logfile)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "parent must exit 0 once the daemon is ready"
    );
    let pids = pids_with_arg(data.to_str().unwrap());
    assert_eq!(pids.len(), 1, "exactly one daemon expected: {pids:?}");
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGTERM) };
        }
    }
    let daemon = Kill(pids[0]);
    let mut r = Raw::connect(port);
    assert_eq!(r.c(&["PING"]), simple("PONG"));
    assert!(std::fs::read_to_string(&logfile)
        .unwrap()
        .contains("listening on"));
    drop(r);
    drop(daemon);
    wait_until("daemon exit", || {
        pids_with_arg(data.to_str().unwrap()).is_empty()
    });
}

#[test]
fn many_readers_with_a_writer_see_whole_values() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &["--datasize", "1000000"]);
    let port = z.port;
    let mut w = Raw::connect(port);
    // Every value is its key repeated: a torn or misplaced read is detectable.
    let val = |k: &str, gen: usize| format!("{k}:{gen}|").repeat(200).into_bytes();
    for i in 0..100 {
        let k = format!("k{i}");
        w.cmd(&[b"SET", k.as_bytes(), &val(&k, 0)]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut r = Raw::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("k{}", (n as usize * 7 + t) % 100);
                    match r.cmd(&[b"GET", k.as_bytes()]) {
                        OwnedFrame::BulkString(v) => {
                            let s = String::from_utf8(v).unwrap();
                            let unit = s.split('|').next().unwrap().to_string() + "|";
                            assert!(unit.starts_with(&format!("{k}:")), "{k} got {unit}");
                            assert_eq!(s, unit.repeat(200), "torn value for {k}");
                        }
                        other => panic!("{k}: {other:?}"),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for gen in 1..30 {
        for i in 0..100 {
            let k = format!("k{i}");
            w.cmd(&[b"SET", k.as_bytes(), &val(&k, gen)]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(total > 0);
}

#[test]
fn warns_when_every_client_is_admin() {
    let dir = tempfile::tempdir().unwrap();
    let open = start_logged(dir.path(), "open", &[]);
    let mut r = Raw::connect(open.port);
    assert_eq!(
        r.c(&["NSNEW", "anyone"]),
        simple("OK"),
        "no --admin: every client is admin"
    );
    assert!(
        open.log_text()
            .contains("no --admin password: every client is admin"),
        "{}",
        open.log_text()
    );
    drop(open);
    let dir2 = tempfile::tempdir().unwrap();
    let closed = start_logged(dir2.path(), "closed", &["--admin", "pw"]);
    let mut r = Raw::connect(closed.port);
    assert_eq!(r.c(&["NSNEW", "anyone"]), err("Permission denied"));
    assert!(!closed.log_text().contains("every client is admin"));
}

#[test]
fn sigterm_stops_cleanly_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["SET", "kept", "yes"]), bulk(b"kept"));
    let status = z
        .child
        .terminate(Duration::from_secs(10))
        .expect("server did not stop on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(r.read_frame(), None, "connections are closed at shutdown");
    z.restart();
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["GET", "kept"]), bulk(b"yes"));
}
