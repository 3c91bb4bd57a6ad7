//! Crash safety under load: clients run SET/GET/DEL over several namespaces against a `--sync` server that
//! is killed with SIGKILL at a fixed interval and restarted. Every reply is checked against a model of
//! what was acknowledged; at the end the server is killed once more and every key is read back. Zero
//! acknowledged writes may be lost.
//!
//! Knobs (the defaults are the short run of `cargo test`; `bench/zdb-crash.sh` runs 10 minutes):
//! `ZDB_CRASH_SECS` (25), `ZDB_CRASH_KILL_EVERY_SECS` (5), `ZDB_CRASH_CLIENTS` (4).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

const NAMESPACES: [&str; 4] = ["default", "crash1", "crash2", "crash3"];
const KEYS_PER_CLIENT: usize = 200;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A client connection that reports a dead server instead of panicking.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16, namespace: &str) -> Option<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        stream.set_nodelay(true).ok()?;
        let mut c = Client {
            stream,
            buf: Vec::new(),
        };
        if namespace != "default" {
            match c.cmd(&[b"SELECT", namespace.as_bytes()])? {
                OwnedFrame::SimpleString(s) if s == b"OK" => {}
                other => panic!("SELECT {namespace}: {other:?}"),
            }
        }
        Some(c)
    }

    /// Sends one request and reads its reply; `None` when the connection died (the server was killed).
    fn cmd(&mut self, args: &[&[u8]]) -> Option<OwnedFrame> {
        self.stream.write_all(&encode(args)).ok()?;
        loop {
            match decode(&self.buf) {
                Ok(Some((frame, n))) => {
                    self.buf.drain(..n);
                    return Some(frame);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent invalid RESP: {e:?}"),
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }
}

/// What the server may hold for a key: the acknowledged state, plus the state an unanswered request
/// (in flight at a kill) would have left, until a read tells which one happened.
#[derive(Clone, Default)]
struct KeyModel {
    acked: Option<Vec<u8>>,
    /// States left by unanswered requests since the last acknowledged one (none, one or several kills).
    in_doubt: Vec<Option<Vec<u8>>>,
}

impl KeyModel {
    fn allows(&self, found: &Option<Vec<u8>>) -> bool {
        *found == self.acked || self.in_doubt.contains(found)
    }
}

#[derive(Default)]
struct Counts {
    acked_sets: AtomicU64,
    acked_dels: AtomicU64,
    verified_reads: AtomicU64,
    in_doubt: AtomicU64,
    lost: AtomicU64,
}

fn value(rng: &mut StdRng, client: usize, key: usize, version: u64) -> Vec<u8> {
    let len = if rng.random_bool(0.02) {
        rng.random_range(64 * 1024..256 * 1024)
    } else {
        rng.random_range(1..8 * 1024)
    };
    let tag = format!("c{client}k{key}v{version}:");
    tag.bytes().cycle().take(len.max(tag.len())).collect()
}

fn found_of(frame: &OwnedFrame) -> Option<Vec<u8>> {
    match frame {
        OwnedFrame::BulkString(v) => Some(v.clone()),
        OwnedFrame::Null => None,
        other => panic!("unexpected GET reply {other:?}"),
    }
}

/// Checks a read against the model; resolves a doubt. Returns false on a loss.
fn check_read(model: &mut KeyModel, found: Option<Vec<u8>>, what: &str, counts: &Counts) -> bool {
    if !model.allows(&found) {
        counts.lost.fetch_add(1, Relaxed);
        eprintln!(
            "LOST: {what}: found {:?}, acknowledged {:?}",
            found
                .as_ref()
                .map(|v| String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned()),
            model
                .acked
                .as_ref()
                .map(|v| String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned()),
        );
        return false;
    }
    model.acked = found;
    model.in_doubt.clear();
    counts.verified_reads.fetch_add(1, Relaxed);
    true
}

fn run_client(id: usize, port: u16, stop: &AtomicBool, counts: &Counts, models: &mut [KeyModel]) {
    let ns = NAMESPACES[id % NAMESPACES.len()];
    let mut rng = StdRng::seed_from_u64(0x5eed + id as u64);
    let mut version = 0u64;
    let mut conn: Option<Client> = None;
    while !stop.load(Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = Client::connect(port, ns);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        let k = rng.random_range(0..models.len());
        let key = format!("c{id}-{k}");
        let model = &mut models[k];
        let op = rng.random_range(0..100);
        if op < 50 {
            version += 1;
            let v = value(&mut rng, id, k, version);
            match c.cmd(&[b"SET", key.as_bytes(), &v]) {
                Some(OwnedFrame::BulkString(r)) if r == key.as_bytes() => {
                    model.acked = Some(v);
                    model.in_doubt.clear();
                    counts.acked_sets.fetch_add(1, Relaxed);
                }
                Some(other) => panic!("SET {key}: {other:?}"),
                None => {
                    model.in_doubt.push(Some(v));
                    counts.in_doubt.fetch_add(1, Relaxed);
                    conn = None;
                }
            }
        } else if op < 85 {
            match c.cmd(&[b"GET", key.as_bytes()]) {
                Some(f) => {
                    check_read(model, found_of(&f), &format!("{ns}/{key}"), counts);
                }
                None => conn = None,
            }
        } else {
            match c.cmd(&[b"DEL", key.as_bytes()]) {
                Some(OwnedFrame::SimpleString(s)) if s == b"OK" => {
                    model.acked = None;
                    model.in_doubt.clear();
                    counts.acked_dels.fetch_add(1, Relaxed);
                }
                Some(OwnedFrame::Error(e)) if e == "Key not found" => {
                    check_read(model, None, &format!("{ns}/{key} (DEL)"), counts);
                }
                Some(other) => panic!("DEL {key}: {other:?}"),
                None => {
                    model.in_doubt.push(None);
                    counts.in_doubt.fetch_add(1, Relaxed);
                    conn = None;
                }
            }
        }
    }
}

#[test]
fn kill_9_under_mixed_load_loses_no_acknowledged_write() {
    let secs = knob("ZDB_CRASH_SECS", 25);
    let every = knob("ZDB_CRASH_KILL_EVERY_SECS", 5).max(1);
    let clients = knob("ZDB_CRASH_CLIENTS", 4) as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &["--sync", "--datasize", "1048576"]);
    let port = z.port;
    {
        let mut r = Raw::connect(port);
        for ns in &NAMESPACES[1..] {
            assert_eq!(r.c(&["NSNEW", ns]), simple("OK"));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let threads: Vec<_> = (0..clients)
        .map(|id| {
            let stop = stop.clone();
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut models = vec![KeyModel::default(); KEYS_PER_CLIENT];
                run_client(id, port, &stop, &counts, &mut models);
                models
            })
        })
        .collect();
    let started = Instant::now();
    let mut kills = 0u32;
    let mut restart_ms = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        let left = Duration::from_secs(secs).saturating_sub(started.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(every)));
        if started.elapsed() >= Duration::from_secs(secs) {
            break;
        }
        z.child.signal(libc::SIGKILL);
        kills += 1;
        let t = Instant::now();
        z.restart();
        restart_ms.push(t.elapsed().as_millis());
    }
    stop.store(true, Relaxed);
    let models: Vec<Vec<KeyModel>> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    // A last kill, then every key of every client is read back.
    z.child.signal(libc::SIGKILL);
    kills += 1;
    z.restart();
    let mut final_checked = 0u64;
    for (id, mut keys) in models.into_iter().enumerate() {
        let ns = NAMESPACES[id % NAMESPACES.len()];
        let mut c = Client::connect(z.port, ns).expect("connect after the last restart");
        for (k, model) in keys.iter_mut().enumerate() {
            let key = format!("c{id}-{k}");
            let f = c.cmd(&[b"GET", key.as_bytes()]).expect("GET after restart");
            check_read(model, found_of(&f), &format!("final {ns}/{key}"), &counts);
            final_checked += 1;
        }
    }

    let acked = counts.acked_sets.load(Relaxed) + counts.acked_dels.load(Relaxed);
    let lost = counts.lost.load(Relaxed);
    restart_ms.sort_unstable();
    println!(
        "zdb crash test: {secs} s, {clients} clients over {} namespaces, kill -9 every {every} s: {kills} kills, \
         {acked} acknowledged writes ({} SET, {} DEL), {} reads verified ({final_checked} after the last kill), \
         {} requests in flight at a kill (either outcome accepted), restart median {} ms; lost: {lost}",
        NAMESPACES.len().min(clients),
        counts.acked_sets.load(Relaxed),
        counts.acked_dels.load(Relaxed),
        counts.verified_reads.load(Relaxed),
        counts.in_doubt.load(Relaxed),
        restart_ms.get(restart_ms.len() / 2).copied().unwrap_or(0),
    );
    assert!(kills >= 2, "the run must kill the server more than once");
    assert!(acked > 100, "only {acked} writes acknowledged");
    assert_eq!(lost, 0, "acknowledged writes lost");
}

/// The model itself: a read of an in-doubt key accepts either outcome, anything else is a loss.
#[test]
fn crash_model_accepts_only_acknowledged_or_in_doubt_states() {
    let counts = Counts::default();
    let mut m = KeyModel {
        acked: Some(b"old".to_vec()),
        in_doubt: vec![Some(b"new".to_vec())],
    };
    assert!(m.allows(&Some(b"old".to_vec())));
    assert!(m.allows(&Some(b"new".to_vec())));
    assert!(!m.allows(&None));
    assert!(check_read(&mut m, Some(b"new".to_vec()), "k", &counts));
    assert_eq!(m.acked, Some(b"new".to_vec()));
    assert!(!check_read(
        &mut m,
        Some(b"old".to_vec()),
        "self-test, a loss is expected here",
        &counts
    ));
    assert_eq!(counts.lost.load(Relaxed), 1);
}
