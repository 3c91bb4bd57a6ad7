//! Malformed and random byte streams (seeded): the decoder agrees with `redis-protocol` on valid input and
//! rejects the rest; a live server answers with an error or closes, never crashes or hangs.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use zdb::protocol::parse_request;

fn valid_request(rng: &mut StdRng) -> Vec<u8> {
    let cmds: [&[u8]; 8] = [
        b"GET", b"SET", b"PING", b"SCAN", b"DEL", b"NSINFO", b"MGET", b"HISTORY",
    ];
    let n = rng.random_range(1..5);
    let mut args: Vec<Vec<u8>> = vec![cmds[rng.random_range(0..cmds.len())].to_vec()];
    for _ in 1..n {
        let len = rng.random_range(0..40);
        args.push((0..len).map(|_| rng.random()).collect());
    }
    let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    encode(&refs)
}

fn mutate(rng: &mut StdRng, mut v: Vec<u8>) -> Vec<u8> {
    let specials: &[u8] = b"*$\r\n-:+0123456789";
    for _ in 0..rng.random_range(1..4) {
        if v.is_empty() {
            break;
        }
        let at = rng.random_range(0..v.len());
        match rng.random_range(0..4) {
            0 => v[at] = rng.random(),
            1 => v[at] = specials[rng.random_range(0..specials.len())],
            2 => v.truncate(at),
            _ => v.insert(at, specials[rng.random_range(0..specials.len())]),
        }
    }
    v
}

fn random_stream(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..5) {
        0 => (0..rng.random_range(0..200))
            .map(|_| rng.random())
            .collect(),
        1 => {
            let v = valid_request(rng);
            mutate(rng, v)
        }
        2 => {
            let mut v = valid_request(rng);
            let w = valid_request(rng);
            v.extend(mutate(rng, w));
            v
        }
        3 => format!("*{}\r\n", rng.random_range(-5i64..100_000)).into_bytes(),
        _ => {
            let depth = rng.random_range(1..2000);
            "*1\r\n".repeat(depth).into_bytes()
        }
    }
}

#[test]
fn decoder_agrees_with_redis_protocol() {
    let mut rng = StdRng::seed_from_u64(0x2db);
    let mut ranges = Vec::new();
    for _ in 0..50_000 {
        let input = if rng.random_bool(0.5) {
            valid_request(&mut rng)
        } else {
            random_stream(&mut rng)
        };
        match parse_request(&input, &mut ranges) {
            Ok(Some(n)) => {
                let reference = decode(&input[..n]).expect("reference rejects what we accepted");
                let (frame, m) = reference.expect("reference wants more bytes than we consumed");
                assert_eq!(m, n);
                let OwnedFrame::Array(items) = frame else {
                    panic!("not an array")
                };
                assert_eq!(items.len(), ranges.len());
                for (item, r) in items.iter().zip(&ranges) {
                    assert_eq!(item, &OwnedFrame::BulkString(input[r.clone()].to_vec()));
                }
            }
            Ok(None) => assert!(input.len() < 64 * 1024),
            Err(_) => {}
        }
    }
}

#[test]
fn live_server_survives_malformed_streams() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..300 {
        let input = random_stream(&mut rng);
        let mut s = TcpStream::connect(("127.0.0.1", z.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&input);
        let _ = s.shutdown(Shutdown::Write);
        let mut reply = Vec::new();
        // Must end (server closes after our EOF or after a protocol error) well before the timeout.
        match s.read_to_end(&mut reply) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("stream {i} ({input:?}): server hung or failed: {e}"),
        }
        // Whatever came back is valid RESP.
        let mut rest = &reply[..];
        while !rest.is_empty() {
            match decode(rest) {
                Ok(Some((_, n))) => rest = &rest[n..],
                other => panic!("stream {i}: invalid reply bytes {other:?}: {reply:?}"),
            }
        }
        if i % 50 == 0 {
            let mut r = Raw::connect(z.port);
            assert_eq!(r.c(&["PING"]), simple("PONG"));
        }
    }
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["PING"]), simple("PONG"));
}
