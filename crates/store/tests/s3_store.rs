//! The `s3://` store against a real S3 engine (SeaweedFS `weed mini` on loopback, started and killed
//! by the test): single and batch calls, missing objects, prefixes, and clear errors for rejected
//! credentials, a missing bucket and an unreachable endpoint, none of which show the credentials.

use std::collections::HashSet;

use store::{ChunkId, ChunkStore, StoreError};
use testkit::SeaweedProcess;

const BUCKET: &str = "thinnode-chunks";

/// A deterministic object of `len` bytes for seed `seed`.
fn object(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn open(url: &str) -> std::sync::Arc<dyn ChunkStore> {
    match store::open(url) {
        Ok(s) => s,
        Err(e) => panic!("open {}: {e}", store::redact_url(url)),
    }
}

#[test]
fn s3_store_on_seaweedfs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(server) = SeaweedProcess::start("s3_store_on_seaweedfs", tmp.path(), &[BUCKET]) else {
        return;
    };
    let credentials = SeaweedProcess::credentials_query();
    let url = format!("{}{credentials}", server.url(BUCKET, "images/a"));
    let s3 = open(&url);

    // The URL recorded in images names the place, never the credentials.
    let public = s3.public_url();
    assert!(
        public.starts_with("s3://thinnode-chunks/images/a?"),
        "{public}"
    );
    assert!(
        public.contains("endpoint=") && public.contains("region=us-east-1"),
        "{public}"
    );
    for secret in [SeaweedProcess::ACCESS_KEY, SeaweedProcess::SECRET_KEY] {
        assert!(!public.contains(secret), "{public}");
        assert!(!store::redact_url(&url).contains(secret));
    }
    // The public URL plus credentials reopens the same store.
    let reopened = open(&format!("{public}{credentials}"));

    // Single calls, a missing object.
    let one = object(1, 70_000);
    let one_id = ChunkId::of(&one);
    let absent = ChunkId::of(b"never stored");
    assert!(!s3.has(&one_id).unwrap());
    assert_eq!(s3.get(&one_id).unwrap(), None);
    s3.put(&one_id, &one).unwrap();
    s3.put(&one_id, &one).unwrap(); // storing again is fine
    assert!(s3.has(&one_id).unwrap());
    assert_eq!(reopened.get(&one_id).unwrap().as_deref(), Some(&one[..]));
    assert_eq!(s3.get(&absent).unwrap(), None);
    assert!(!s3.has(&absent).unwrap());
    let empty_id = ChunkId::of(b"");
    s3.put(&empty_id, b"").unwrap();
    assert_eq!(s3.get(&empty_id).unwrap().as_deref(), Some(&b""[..]));

    // Batches: 300 objects from 0 bytes to 1.2 MiB, then mixed present/missing lookups in order.
    let objects: Vec<Vec<u8>> = (0..300u32)
        .map(|i| object(100 + i, (i as usize * 4_099) % 1_250_000))
        .collect();
    let ids: Vec<ChunkId> = objects.iter().map(|o| ChunkId::of(o)).collect();
    let items: Vec<(ChunkId, &[u8])> = ids
        .iter()
        .copied()
        .zip(objects.iter().map(|o| &o[..]))
        .collect();
    s3.put_many(&items).unwrap();
    let mut mixed = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        mixed.push(*id);
        if i % 7 == 0 {
            mixed.push(ChunkId::of(format!("missing {i}").as_bytes()));
        }
    }
    let present: HashSet<ChunkId> = ids.iter().copied().collect();
    let exists = s3.has_many(&mixed).unwrap();
    for (id, exists) in mixed.iter().zip(&exists) {
        assert_eq!(*exists, present.contains(id), "{id}");
    }
    let fetched = s3.get_many(&mixed).unwrap();
    assert_eq!(fetched.len(), mixed.len());
    for (id, value) in mixed.iter().zip(&fetched) {
        match value {
            Some(bytes) => assert_eq!(ChunkId::of(bytes), *id),
            None => assert!(
                !present.contains(id),
                "{id} is stored but came back missing"
            ),
        }
    }
    let mut delivered = Vec::new();
    reopened
        .get_each(&mixed, &mut |index, value| {
            assert_eq!(
                value.map(ChunkId::of).is_some_and(|id| id == mixed[index]),
                present.contains(&mixed[index])
            );
            delivered.push(index);
            Ok(())
        })
        .unwrap();
    assert_eq!(delivered, (0..mixed.len()).collect::<Vec<_>>());
    // A delivery error stops the fetch and is returned.
    let mut calls = 0;
    let stopped = s3.get_each(&ids, &mut |_, _| {
        calls += 1;
        if calls == 5 {
            Err(StoreError::InvalidId("stop".into()))
        } else {
            Ok(())
        }
    });
    assert!(
        matches!(stopped, Err(StoreError::InvalidId(_))),
        "{stopped:?}"
    );
    assert_eq!(calls, 5);

    // Objects live under the prefix: another prefix of the same bucket does not see them.
    let other = open(&format!("{}{credentials}", server.url(BUCKET, "images/b")));
    assert!(!other.has(&one_id).unwrap());
    assert_eq!(other.get(&ids[1]).unwrap(), None);

    // Wrong secret: a clear error naming bucket and endpoint, at open and on every call.
    let wrong = format!(
        "{}&access_key_id={}&secret_access_key=not-the-secret",
        server.url(BUCKET, ""),
        SeaweedProcess::ACCESS_KEY
    );
    let error = store::open(&wrong)
        .err()
        .expect("a wrong secret must fail at open");
    check_denied(&error, &server.endpoint());
    let lazy = store::open_lazy(&wrong).unwrap();
    for error in [
        lazy.get(&one_id).unwrap_err(),
        lazy.has(&one_id).unwrap_err(),
        lazy.put(&one_id, &one).unwrap_err(),
    ] {
        check_denied(&error, &server.endpoint());
    }
    // No credentials at all: unsigned requests, refused by this server.
    let anonymous =
        store::open_lazy(&format!("{}&anonymous=true", server.url(BUCKET, ""))).unwrap();
    check_denied(&anonymous.get(&one_id).unwrap_err(), &server.endpoint());

    // Missing bucket: named, at open and on reads, existence checks and writes.
    let missing_url = format!("{}{credentials}", server.url("no-such-bucket", ""));
    let error = store::open(&missing_url)
        .err()
        .expect("a missing bucket must fail at open");
    check_missing(&error, &server.endpoint());
    let lazy = store::open_lazy(&missing_url).unwrap();
    for error in [
        lazy.get(&one_id).unwrap_err(),
        lazy.has(&one_id).unwrap_err(),
        lazy.put(&one_id, &one).unwrap_err(),
        lazy.has_many(&ids[..3]).unwrap_err(),
    ] {
        check_missing(&error, &server.endpoint());
    }

    // A batch through a route: over two prefixes of the bucket (one per half of the id space).
    let routed = open(&format!(
        "route: 00-7f={} 80-ff={}",
        format_args!("{}{credentials}", server.url(BUCKET, "routed/low")),
        format_args!("{}{credentials}", server.url(BUCKET, "routed/high")),
    ));
    routed.put_many(&items[..40]).unwrap();
    assert_eq!(routed.has_many(&ids[..40]).unwrap(), vec![true; 40]);
    let low = open(&format!(
        "{}{credentials}",
        server.url(BUCKET, "routed/low")
    ));
    for id in &ids[..40] {
        assert_eq!(low.has(id).unwrap(), id.0[0] < 0x80, "{id}");
    }
    drop(server);
}

fn check_denied(error: &StoreError, endpoint: &str) {
    let text = error.to_string();
    assert!(
        matches!(error, StoreError::AccessDenied { .. }),
        "{error:?}"
    );
    assert!(text.contains(BUCKET) && text.contains(endpoint), "{text}");
    assert!(
        !text.contains(SeaweedProcess::SECRET_KEY) && !text.contains("not-the-secret"),
        "{text}"
    );
    assert!(!text.contains(SeaweedProcess::ACCESS_KEY), "{text}");
}

fn check_missing(error: &StoreError, endpoint: &str) {
    let text = error.to_string();
    assert!(
        matches!(error, StoreError::BucketMissing { .. }),
        "{error:?}"
    );
    assert!(
        text.contains("no-such-bucket") && text.contains(endpoint),
        "{text}"
    );
    assert!(!text.contains(SeaweedProcess::SECRET_KEY), "{text}");
}

#[test]
fn unreachable_endpoint_is_a_clear_connection_error_after_retries() {
    let port = testkit::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let url = format!(
        "s3://some-bucket?endpoint={endpoint}&retries=2&access_key_id=AKIDSECRET&secret_access_key=SECRETKEY"
    );
    let error = store::open(&url).err().expect("nothing listens there");
    assert!(error.is_transient(), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains(&endpoint) && text.contains("some-bucket"),
        "{text}"
    );
    assert!(
        !text.contains("AKIDSECRET") && !text.contains("SECRETKEY"),
        "{text}"
    );
    // Lazily opened: opening succeeds, each call fails the same way.
    let lazy = store::open_lazy(&url).unwrap();
    assert!(lazy.get(&ChunkId::of(b"x")).unwrap_err().is_transient());
}

/// A loopback HTTP server that answers every request with `503 SlowDown` and counts the requests.
fn always_slow_down() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let counter = std::sync::Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                let mut line = String::new();
                loop {
                    // One request: headers up to the empty line (GET and HEAD carry no body).
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line != "\r\n" {
                        continue;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body =
                        "<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>";
                    let reply = format!(
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nContent-Type: application/xml\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, requests)
}

#[test]
fn server_errors_are_retried_with_backoff_then_reported() {
    let (port, requests) = always_slow_down();
    let url = format!(
        "s3://busy-bucket?endpoint=http://127.0.0.1:{port}&retries=2&access_key_id=AK&secret_access_key=SK"
    );
    let s3 = store::open_lazy(&url).unwrap();
    let error = s3.get(&ChunkId::of(b"x")).unwrap_err();
    // The first request and two retries.
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    let text = error.to_string();
    assert!(
        text.contains("busy-bucket") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("SlowDown"), "{text}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    // Connections are accepted (by the kernel's backlog) but nothing is ever sent back.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!(
        "s3://silent-bucket?endpoint=http://127.0.0.1:{port}&timeout_ms=300&retries=0&access_key_id=AK&secret_access_key=SK"
    );
    let s3 = store::open_lazy(&url).unwrap();
    let error = s3.has(&ChunkId::of(b"x")).unwrap_err();
    assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    drop(listener);
}
