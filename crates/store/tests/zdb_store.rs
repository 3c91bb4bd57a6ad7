//! The 0-db client and the `zdb://` store against our real 0-db compatible server (crate `zdb`), started
//! in-process on an ephemeral port with its own temporary directories.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::zdb::{Reply, ZdbClient, ZdbConfig, ZdbStore, MAX_MGET_KEYS, MAX_PAYLOAD};
use store::{ChunkId, ChunkStore, StoreError, StoreLocation};
use zdb::{RunningServer, ServerArgs};

/// A server with its directories; restartable on the same port.
struct Server {
    running: Option<RunningServer>,
    args: ServerArgs,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(configure: impl FnOnce(&mut ServerArgs)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServerArgs::for_dirs(dir.path().join("data"), dir.path().join("index"));
        configure(&mut args);
        let running = zdb::start_background(args.clone()).expect("start zdb server");
        let port = running.tcp_addr().map_or(0, |a| a.port());
        Server {
            running: Some(running),
            args,
            port,
            _dir: dir,
        }
    }

    fn url(&self, namespace: &str) -> String {
        format!("zdb://127.0.0.1:{}/{namespace}", self.port)
    }

    fn config(&self, namespace: &str) -> ZdbConfig {
        match StoreLocation::parse(&self.url(namespace)).unwrap() {
            StoreLocation::Zdb(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }

    fn restart(&mut self) {
        self.stop();
        let mut args = self.args.clone();
        args.port = self.port;
        self.running = Some(zdb::start_background(args).expect("restart zdb server"));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deterministic pseudo-random object `n` of `len` bytes.
fn object(n: u64, len: usize) -> (ChunkId, Vec<u8>) {
    let mut state = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    (ChunkId::of(&data), data)
}

fn server_message(err: &StoreError) -> String {
    match err {
        StoreError::Server { message } => message.clone(),
        other => panic!("expected a server error reply, got {other:?}"),
    }
}

#[test]
fn put_get_has_round_trip_with_binary_ids() {
    let server = Server::start(|_| {});
    let store = store::open(&server.url("default")).unwrap();
    let (id, data) = object(1, 300_000);
    assert!(!store.has(&id).unwrap());
    assert_eq!(store.get(&id).unwrap(), None);
    store.put(&id, &data).unwrap();
    store.put(&id, &data).unwrap(); // unchanged value: not an error
    assert!(store.has(&id).unwrap());
    assert_eq!(store.get(&id).unwrap().as_deref(), Some(data.as_slice()));

    // Ids made of bytes that a text protocol would choke on.
    let awkward = [[0u8; 32], [b'\r'; 32], [b'\n'; 32], [0xff; 32], {
        let mut k = [b'$'; 32];
        k[1] = b'\r';
        k[2] = b'\n';
        k
    }];
    for (n, raw) in awkward.iter().enumerate() {
        let value = vec![n as u8; 10 + n];
        store.put(&ChunkId(*raw), &value).unwrap();
    }
    for (n, raw) in awkward.iter().enumerate() {
        assert_eq!(
            store.get(&ChunkId(*raw)).unwrap(),
            Some(vec![n as u8; 10 + n])
        );
    }
    // The key is the raw 32-byte id, as rfs stores it.
    let client = ZdbClient::connect(server.config("default")).unwrap();
    assert_eq!(client.get(&id.0).unwrap().as_deref(), Some(data.as_slice()));
    assert_eq!(client.get(id.to_hex().as_bytes()).unwrap(), None);
}

#[test]
fn batches_larger_than_one_mget_keep_order() {
    let server = Server::start(|_| {});
    let store = ZdbStore::connect(server.config("default")).unwrap();
    let count = 2 * MAX_MGET_KEYS + 100;
    let objects: Vec<_> = (0..count as u64)
        .map(|n| object(n, 16 + (n as usize % 200)))
        .collect();
    // Store every object except each seventh.
    let stored: Vec<(ChunkId, &[u8])> = objects
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 != 0)
        .map(|(_, (id, d))| (*id, d.as_slice()))
        .collect();
    store.put_many(&stored).unwrap();
    let ids: Vec<ChunkId> = objects.iter().map(|(id, _)| *id).collect();

    let present = store.has_many(&ids).unwrap();
    let fetched = store.get_many(&ids).unwrap();
    let via_mget = store
        .client()
        .mget(&ids.iter().map(|id| id.0).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(present.len(), count);
    assert_eq!(fetched.len(), count);
    assert_eq!(via_mget.len(), count);
    for (i, (_, data)) in objects.iter().enumerate() {
        let expected = (i % 7 != 0).then_some(data.as_slice());
        assert_eq!(present[i], expected.is_some(), "has_many[{i}]");
        assert_eq!(fetched[i].as_deref(), expected, "get_many[{i}]");
        assert_eq!(via_mget[i].as_deref(), expected, "mget[{i}]");
    }
    let mut streamed = 0;
    store
        .get_each(&ids, &mut |i, value| {
            assert_eq!(i, streamed);
            assert_eq!(
                value,
                (i % 7 != 0).then_some(objects[i].1.as_slice()),
                "get_each[{i}]"
            );
            streamed += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(streamed, count);
    assert_eq!(store.get_many(&[]).unwrap(), Vec::<Option<Vec<u8>>>::new());
}

#[test]
fn large_objects_and_the_payload_limit() {
    let server = Server::start(|_| {});
    let store = store::open(&server.url("default")).unwrap();
    let objects: Vec<_> = (0..6).map(|n| object(100 + n, 4 << 20)).collect();
    let items: Vec<(ChunkId, &[u8])> = objects.iter().map(|(id, d)| (*id, d.as_slice())).collect();
    store.put_many(&items).unwrap();
    let ids: Vec<ChunkId> = objects.iter().map(|(id, _)| *id).collect();
    let fetched = store.get_many(&ids).unwrap();
    for ((_, data), got) in objects.iter().zip(&fetched) {
        assert_eq!(got.as_deref(), Some(data.as_slice()));
    }
    let (big_id, big) = object(7, MAX_PAYLOAD + 1);
    match store.put(&big_id, &big) {
        Err(StoreError::ObjectTooLarge { size, limit }) => {
            assert_eq!((size, limit), (MAX_PAYLOAD + 1, MAX_PAYLOAD))
        }
        other => panic!("expected ObjectTooLarge, got {other:?}"),
    }
    // The store is still usable.
    assert!(store.has(&ids[0]).unwrap());
}

/// Creates namespace `name` with `password`, public, using an admin connection.
fn create_public_namespace(admin: &ZdbClient, name: &str, password: &str) {
    admin
        .command(&[b"NSNEW".as_slice(), name.as_bytes()])
        .unwrap();
    admin
        .command(&[
            b"NSSET".as_slice(),
            name.as_bytes(),
            b"password",
            password.as_bytes(),
        ])
        .unwrap();
    admin
        .command(&[b"NSSET".as_slice(), name.as_bytes(), b"public", b"1"])
        .unwrap();
}

#[test]
fn public_namespace_is_read_only_without_its_password() {
    let server = Server::start(|_| {});
    let admin = ZdbClient::connect(server.config("default")).unwrap();
    create_public_namespace(&admin, "pub", "s3cret");

    let writer = store::open(&format!("zdb://:s3cret@127.0.0.1:{}/pub", server.port)).unwrap();
    assert_eq!(writer.public_url(), server.url("pub"));
    let (id, data) = object(1, 1000);
    writer.put(&id, &data).unwrap();

    let reader = store::open(&server.url("pub")).unwrap();
    assert_eq!(reader.get(&id).unwrap().as_deref(), Some(data.as_slice()));
    assert!(reader.has(&id).unwrap());
    let (id2, data2) = object(2, 1000);
    let err = reader.put(&id2, &data2).unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(server_message(&err), "Namespace is in read-only mode");
    let err = reader.put_many(&[(id2, data2.as_slice())]).unwrap_err();
    assert_eq!(server_message(&err), "Namespace is in read-only mode");
    assert!(!reader.has(&id2).unwrap());

    // A wrong password is refused when the store is opened.
    let err = match store::open(&format!("zdb://:wrong@127.0.0.1:{}/pub", server.port)) {
        Err(e) => e,
        Ok(_) => panic!("a wrong password was accepted"),
    };
    assert!(matches!(err, StoreError::Server { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong"));
}

#[test]
fn secure_select_and_secure_admin_auth() {
    let server = Server::start(|args| args.admin = Some("adminpw".into()));
    // Without the admin password, namespace administration is refused.
    let anonymous = ZdbClient::connect(server.config("default")).unwrap();
    let err = anonymous
        .command(&[b"NSNEW".as_slice(), b"priv"])
        .unwrap_err();
    assert_eq!(server_message(&err), "Permission denied");

    let mut admin_config = server.config("default");
    admin_config.admin_password = Some("adminpw".into());
    admin_config.secure_auth = true;
    let admin = ZdbClient::connect(admin_config).unwrap();
    create_public_namespace(&admin, "priv", "pw-42");

    let url = format!(
        "zdb://127.0.0.1:{}/priv?secure=1&password=pw-42",
        server.port
    );
    let store = store::open(&url).unwrap();
    assert_eq!(store.public_url(), server.url("priv"));
    let (id, data) = object(3, 5000);
    store.put(&id, &data).unwrap();
    assert_eq!(store.get(&id).unwrap().as_deref(), Some(data.as_slice()));

    let bad = format!(
        "zdb://127.0.0.1:{}/priv?secure=1&password=nope",
        server.port
    );
    assert!(matches!(store::open(&bad), Err(StoreError::Server { .. })));
}

#[test]
fn protected_default_namespace_and_plain_admin_auth() {
    let server = Server::start(|args| {
        args.admin = Some("adminpw".into());
        args.protect = true;
    });
    let (id, data) = object(20, 2000);
    let anonymous = store::open(&server.url("default")).unwrap();
    let err = anonymous.put(&id, &data).unwrap_err();
    assert!(matches!(err, StoreError::Server { .. }), "{err:?}");

    // SELECT default <admin password> unlocks writes, as with 0-db's --protect.
    let unlocked =
        store::open(&format!("zdb://:adminpw@127.0.0.1:{}/default", server.port)).unwrap();
    unlocked.put(&id, &data).unwrap();
    assert_eq!(
        anonymous.get(&id).unwrap().as_deref(),
        Some(data.as_slice())
    );

    // Plain AUTH with the admin password allows namespace administration.
    let admin = ZdbClient::connect(
        match StoreLocation::parse(&format!("{}?admin=adminpw", server.url("default"))).unwrap() {
            StoreLocation::Zdb(c) => c,
            other => panic!("{other:?}"),
        },
    )
    .unwrap();
    admin
        .command(&[b"NSNEW".as_slice(), b"made-by-admin"])
        .unwrap();
    store::open(&server.url("made-by-admin")).unwrap();

    // A wrong admin password is refused when connecting; so is an unknown namespace.
    let wrong = format!("{}?admin=nope", server.url("default"));
    assert!(matches!(
        store::open(&wrong),
        Err(StoreError::Server { .. })
    ));
    assert!(matches!(
        store::open(&server.url("no-such-namespace")),
        Err(StoreError::Server { .. })
    ));
}

#[test]
fn reconnects_after_the_server_restarts() {
    let mut server = Server::start(|_| {});
    let store = ZdbStore::connect(server.config("default")).unwrap();
    let (id, data) = object(9, 100_000);
    store.put(&id, &data).unwrap();
    assert!(store.client().idle_connections() >= 1);

    server.restart();
    // The pooled connection is dead; the client notices, re-dials and retries.
    assert_eq!(store.get(&id).unwrap().as_deref(), Some(data.as_slice()));
    let (id2, data2) = object(10, 1000);
    store.put(&id2, &data2).unwrap();

    // Even with no retries allowed, a pooled connection closed by a restart is replaced transparently.
    let mut no_retries = server.config("default");
    no_retries.retries = 0;
    let strict = ZdbStore::connect(no_retries).unwrap();
    assert_eq!(strict.client().idle_connections(), 1);
    server.restart();
    assert!(strict.has(&id2).unwrap());

    // With the server gone, calls fail with a transient connection error after the retries.
    server.stop();
    let url = format!("{}?retries=0", server.url("default"));
    assert!(
        store::open(&url).is_err(),
        "open dials and must fail while the server is down"
    );
    let lazy = store::open_lazy(&url).unwrap();
    assert!(lazy.get(&id).unwrap_err().is_transient());
    server.restart();
    assert_eq!(lazy.get(&id).unwrap().as_deref(), Some(data.as_slice()));
    server.stop();
    let mut config = server.config("default");
    config.retries = 1;
    config.retry_backoff = Duration::from_millis(10);
    let down = ZdbStore::new(config);
    let err = down.get(&id).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[test]
fn times_out_against_a_listener_that_never_answers() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut config = ZdbConfig::tcp("127.0.0.1", port, "default");
    config.io_timeout = Duration::from_millis(300);
    config.retries = 1;
    config.retry_backoff = Duration::from_millis(10);
    let client = ZdbClient::new(config);
    let start = Instant::now();
    let err = client.get(b"key").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Timeout {
                operation: "reply",
                ..
            }
        ),
        "{err:?}"
    );
    // Two attempts of 300 ms each, not the default 30 s.
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(silent);
}

#[test]
fn many_threads_share_one_store() {
    let server = Server::start(|_| {});
    let store: Arc<dyn ChunkStore> =
        store::open(&format!("{}?pool=4", server.url("default"))).unwrap();
    let threads: Vec<_> = (0..12u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..40 {
                    let (id, data) = object(t * 1000 + n, 1000 + (n as usize * 997) % 70_000);
                    store.put(&id, &data).unwrap();
                    assert_eq!(store.get(&id).unwrap().as_deref(), Some(data.as_slice()));
                    if n % 10 == 0 {
                        let ids: Vec<ChunkId> =
                            (0..=n).map(|m| object(t * 1000 + m, 1).0).collect();
                        assert_eq!(store.has_many(&ids).unwrap().len(), ids.len());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..12u64 {
        let ids: Vec<ChunkId> = (0..40)
            .map(|n| object(t * 1000 + n, 1000 + (n as usize * 997) % 70_000).0)
            .collect();
        assert!(store.has_many(&ids).unwrap().into_iter().all(|p| p));
    }
}

#[test]
fn unix_socket_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("zdb.sock");
    let server = Server::start(|args| args.socket = Some(socket.clone()));
    let url = format!("zdb+unix://{}?ns=default", socket.display());
    let store = store::open(&url).unwrap();
    assert_eq!(store.public_url(), url);
    let (id, data) = object(11, 2 << 20);
    store.put(&id, &data).unwrap();
    assert_eq!(store.get_many(&[id]).unwrap(), vec![Some(data)]);
    drop(server);
}

#[test]
fn ipv6_endpoint() {
    let server = Server::start(|args| args.listen = "::1".into());
    let url = format!("zdb://[::1]:{}/default", server.port);
    let store = store::open(&url).unwrap();
    assert_eq!(store.public_url(), url);
    let (id, data) = object(12, 4096);
    store.put(&id, &data).unwrap();
    assert_eq!(store.get(&id).unwrap(), Some(data));
}

#[test]
fn raw_pipeline_keeps_error_replies_in_place() {
    let server = Server::start(|_| {});
    let client = ZdbClient::connect(server.config("default")).unwrap();
    let replies = client
        .pipeline(&[
            vec![b"SET".to_vec(), b"k1".to_vec(), b"v1".to_vec()],
            vec![b"NOSUCHCOMMAND".to_vec()],
            vec![b"GET".to_vec(), b"k1".to_vec()],
            vec![b"EXISTS".to_vec(), b"k2".to_vec()],
        ])
        .unwrap();
    assert_eq!(replies.len(), 4);
    assert_eq!(replies[0], Reply::Bulk(b"k1".to_vec()));
    assert!(replies[1].is_error(), "{:?}", replies[1]);
    assert_eq!(replies[2], Reply::Bulk(b"v1".to_vec()));
    assert_eq!(replies[3], Reply::Integer(0));
}
