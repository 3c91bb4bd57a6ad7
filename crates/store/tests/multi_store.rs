//! The `route:` and `disperse:` stores against several of our real 0-db servers (crate `zdb`), started
//! in-process on loopback ports and stopped (killed) and restarted by the tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use store::{ChunkId, ChunkStore, StoreError};
use zdb::{RunningServer, ServerArgs};

/// One server with its directories; stoppable, restartable and replaceable on the same port.
struct Server {
    running: Option<RunningServer>,
    args: ServerArgs,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let args = ServerArgs::for_dirs(dir.path().join("data"), dir.path().join("index"));
        let running = zdb::start_background(args.clone()).expect("start zdb server");
        let port = running.tcp_addr().map_or(0, |a| a.port());
        let mut args = args;
        args.port = port;
        Server {
            running: Some(running),
            args,
            port,
            dir,
        }
    }

    /// Member URL: fail fast (no client retries, short timeouts) so failover is what the test sees.
    fn url(&self) -> String {
        format!(
            "zdb://127.0.0.1:{}/default?retries=0&timeout_ms=3000&connect_timeout_ms=500",
            self.port
        )
    }

    fn kill(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.running = Some(zdb::start_background(self.args.clone()).expect("restart zdb"));
    }

    /// Replaces the server by a new, empty one on the same port (a returned or replaced machine).
    fn replace_with_empty(&mut self) {
        self.kill();
        self.dir = tempfile::tempdir().unwrap();
        let mut args =
            ServerArgs::for_dirs(self.dir.path().join("data"), self.dir.path().join("index"));
        args.port = self.port;
        self.args = args;
        self.running = Some(zdb::start_background(self.args.clone()).expect("start empty zdb"));
    }

    fn direct(&self) -> Arc<dyn ChunkStore> {
        store::open(&self.url()).unwrap()
    }
}

/// `count` objects of varied sizes (including empty and odd lengths), keyed by their BLAKE3 hash.
fn objects(count: usize, seed: u64) -> Vec<(ChunkId, Vec<u8>)> {
    let sizes = [0usize, 1, 63, 64, 1000, 4097, 70_000];
    (0..count)
        .map(|i| {
            let len = sizes[i % sizes.len()] + i;
            let data: Vec<u8> = (0..len)
                .map(|j| {
                    ((j as u64)
                        .wrapping_mul(31)
                        .wrapping_add(seed + i as u64 * 7)
                        % 251) as u8
                })
                .collect();
            (ChunkId::of(&data), data)
        })
        .collect()
}

fn put_all(store: &dyn ChunkStore, objs: &[(ChunkId, Vec<u8>)]) -> Result<(), StoreError> {
    let items: Vec<(ChunkId, &[u8])> = objs.iter().map(|(id, d)| (*id, d.as_slice())).collect();
    store.put_many(&items)
}

fn assert_all_read(store: &dyn ChunkStore, objs: &[(ChunkId, Vec<u8>)]) {
    let ids: Vec<ChunkId> = objs.iter().map(|(id, _)| *id).collect();
    for (batch_ids, batch_objs) in ids.chunks(32).zip(objs.chunks(32)) {
        let got = store.get_many(batch_ids).expect("batch read");
        for ((id, want), got) in batch_objs.iter().zip(got) {
            assert_eq!(got.as_deref(), Some(want.as_slice()), "chunk {id}");
        }
    }
    let mut delivered = 0;
    store
        .get_each(&ids, &mut |i, bytes| {
            assert_eq!(bytes, Some(objs[i].1.as_slice()), "get_each {i}");
            delivered += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(delivered, objs.len());
}

#[test]
fn router_splits_by_range_replicates_and_survives_a_replica_killed_mid_read() {
    let mut servers: Vec<Server> = (0..4).map(|_| Server::start()).collect();
    let url = format!(
        "route: 00-7f={} 00-7f={} 80-ff={} 80-ff={}",
        servers[0].url(),
        servers[1].url(),
        servers[2].url(),
        servers[3].url()
    );
    let router = store::open(&url).unwrap();
    assert!(router
        .public_url()
        .starts_with("route: 00-7f=zdb://127.0.0.1:"));
    let objs = objects(300, 1);
    put_all(router.as_ref(), &objs).unwrap();

    // Every replica of a range holds exactly that range's chunks.
    for (s, low) in servers.iter().zip([true, true, false, false]) {
        let direct = s.direct();
        for (id, data) in &objs {
            let in_range = id.0[0] < 0x80;
            let got = direct.get(id).unwrap();
            assert_eq!(got.as_deref(), (in_range == low).then_some(data.as_slice()));
        }
    }
    assert!(router
        .has_many(&objs.iter().map(|o| o.0).collect::<Vec<_>>())
        .unwrap()
        .iter()
        .all(|h| *h));
    assert_all_read(router.as_ref(), &objs);

    // Readers run continuously while one replica of each range is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let objs = Arc::new(objs);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (router, objs, stop, rounds) =
                (router.clone(), objs.clone(), stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    assert_all_read(router.as_ref(), &objs);
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while rounds.load(Ordering::SeqCst) < 2 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    servers[0].kill();
    servers[3].kill();
    let after_kill = rounds.load(Ordering::SeqCst);
    while rounds.load(Ordering::SeqCst) < after_kill + 6 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().expect("a reader saw a wrong or failed read");
    }

    // Writes now fail, naming exactly the dead replicas; the live ones still got the data.
    let extra = objects(40, 99);
    let err = put_all(router.as_ref(), &extra).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", servers[0].port)),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}", servers[3].port)),
        "{text}"
    );
    assert!(
        !text.contains(&format!("127.0.0.1:{}/", servers[1].port)),
        "{text}"
    );
    assert_all_read(router.as_ref(), &extra);

    // A chunk only one replica holds is still found; one that nobody holds is missing (all answered).
    servers[0].restart();
    servers[3].restart();
    let lone = b"a chunk only one replica holds".to_vec();
    let lone_id = ChunkId::of(&lone);
    let holder = if lone_id.0[0] < 0x80 {
        &servers[1]
    } else {
        &servers[2]
    };
    holder.direct().put(&lone_id, &lone).unwrap();
    assert_eq!(router.get(&lone_id).unwrap(), Some(lone.clone()));
    assert!(
        !router.has(&lone_id).unwrap(),
        "has means held by every replica"
    );
    assert_eq!(router.get(&ChunkId::of(b"absent")).unwrap(), None);
}

#[test]
fn router_urls_are_checked() {
    for bad in [
        "route:",
        "route: 00-7f=zdb://127.0.0.1:1/x",
        "route: 00-7f=dir:///tmp/a 40-ff=dir:///tmp/b",
        "route: 7f-00=dir:///tmp/a",
        "route: zz=dir:///tmp/a",
        "route: route:x",
    ] {
        match store::open(bad) {
            Err(StoreError::InvalidUrl { .. }) => {}
            Err(other) => panic!("{bad}: expected InvalidUrl, got {other}"),
            Ok(_) => panic!("{bad}: accepted"),
        }
    }
}

fn disperse_url(servers: &[Server]) -> String {
    let members: Vec<String> = servers.iter().map(Server::url).collect();
    format!("disperse:4+2 {}", members.join(" "))
}

#[test]
fn dispersed_4_plus_2_survives_any_two_down_fails_on_three_and_repairs() {
    let mut servers: Vec<Server> = (0..6).map(|_| Server::start()).collect();
    let dispersed = store::open(&disperse_url(&servers)).unwrap();
    let objs = objects(120, 7);
    put_all(dispersed.as_ref(), &objs).unwrap();
    let ids: Vec<ChunkId> = objs.iter().map(|o| o.0).collect();

    // Every server holds one self-describing shard per chunk, never the chunk itself.
    for (index, s) in servers.iter().enumerate() {
        let direct = s.direct();
        for (id, data) in &objs {
            let shard = direct.get(id).unwrap().expect("shard present");
            let (header, payload) = store::ShardHeader::parse(&shard).expect("valid shard");
            assert_eq!((header.data_shards, header.parity_shards), (4, 2));
            assert_eq!(usize::from(header.index), index);
            assert_eq!(header.original_len, data.len() as u64);
            assert!(payload.len() < data.len().max(64) || data.len() < 256);
        }
    }
    assert_all_read(dispersed.as_ref(), &objs);

    // Any two down (every pair): the whole set still reads.
    for a in 0..6 {
        for b in a + 1..6 {
            servers[a].kill();
            servers[b].kill();
            let fresh = store::open(&disperse_url(&servers)).unwrap();
            assert_all_read(fresh.as_ref(), &objs);
            servers[a].restart();
            servers[b].restart();
        }
    }

    // Three down: reads fail with an error saying how many shards were needed.
    for i in [0, 2, 5] {
        servers[i].kill();
    }
    let fresh = store::open(&disperse_url(&servers)).unwrap();
    let err = fresh.get_many(&ids[..4]).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::NotEnoughShards {
                needed: 4,
                available: 3,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("3 shard(s) available, 4 needed"), "{text}");
    // Writes need k + write_extra = 5 stored shards: 3 live servers are not enough.
    assert!(matches!(
        put_all(fresh.as_ref(), &objects(2, 300)),
        Err(StoreError::NotEnoughShards { needed: 5, .. })
    ));
    for i in [0, 2, 5] {
        servers[i].restart();
    }

    // Two servers come back empty (replaced); repair re-creates exactly their shards.
    servers[1].replace_with_empty();
    servers[4].replace_with_empty();
    let dispersed = store::DispersedStore::open(&disperse_url(&servers)).unwrap();
    let report = dispersed.repair(&ids);
    assert_eq!(report.chunks_checked, ids.len() as u64);
    assert_eq!(report.chunks_degraded, ids.len() as u64);
    assert_eq!(report.shards_rewritten, 2 * ids.len() as u64);
    assert!(
        report.unrecoverable.is_empty() && report.failures.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        dispersed.repair(&ids).chunks_degraded,
        0,
        "second repair finds nothing"
    );

    // Full redundancy again: with two *other* servers down, everything reads.
    servers[0].kill();
    servers[5].kill();
    let fresh = store::open(&disperse_url(&servers)).unwrap();
    assert_all_read(fresh.as_ref(), &objs);
}

#[test]
fn dispersed_write_quorum_and_url_checks() {
    let mut servers: Vec<Server> = (0..4).map(|_| Server::start()).collect();
    let members: Vec<String> = servers.iter().map(Server::url).collect();
    let strict = store::open(&format!("disperse:2+2 {}", members.join(" "))).unwrap();
    let lenient =
        store::open(&format!("disperse:2+2 write_extra=0 {}", members.join(" "))).unwrap();
    servers[3].kill();
    let objs = objects(20, 3);
    put_all(strict.as_ref(), &objs).expect("3 stored >= k + write_extra = 3");
    assert!(strict
        .has_many(&objs.iter().map(|o| o.0).collect::<Vec<_>>())
        .unwrap()
        .iter()
        .all(|h| *h));
    servers[2].kill();
    let more = objects(5, 40);
    match put_all(strict.as_ref(), &more) {
        Err(StoreError::NotEnoughShards {
            needed: 3,
            available: 2,
            failures,
            ..
        }) => {
            assert_eq!(failures.len(), 2, "{failures:?}");
        }
        other => panic!("expected a quorum failure, got {other:?}"),
    }
    put_all(lenient.as_ref(), &more).expect("write_extra=0 needs only k = 2");
    assert_all_read(lenient.as_ref(), &more);
    assert_all_read(strict.as_ref(), &objs);

    for bad in [
        "disperse:",
        "disperse:4 dir:///tmp/a",
        "disperse:0+2 dir:///tmp/a dir:///tmp/b",
        "disperse:1+1 dir:///tmp/a",
        "disperse:1+1 dir:///tmp/a dir:///tmp/a",
        "disperse:1+1 write_extra=2 dir:///tmp/a dir:///tmp/b",
    ] {
        match store::open(bad) {
            Err(StoreError::InvalidUrl { .. }) => {}
            Err(other) => panic!("{bad}: expected InvalidUrl, got {other}"),
            Ok(_) => panic!("{bad}: accepted"),
        }
    }
}
