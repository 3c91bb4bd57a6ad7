//! Fuzz target: arbitrary bytes through the connection's request processing (RESP decoder, SET batching,
//! command dispatch) on a real temporary database. Must never panic or loop.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zdb::cmd::Session;
use zdb::connection::{process, Stop};
use zdb::db::Database;

struct Fixture {
    _dir: tempfile::TempDir,
    db: Arc<Database>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = zdb::ServerArgs::for_dirs(dir.path().join("data"), dir.path().join("index"));
        args.datasize = 64 * 1024;
        let db = zdb::server::open_database(&args).expect("open database");
        Fixture { _dir: dir, db }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some(mut session) = Session::new(&f.db) else {
        return;
    };
    let mut out = BytesMut::new();
    let mut pos = 0;
    // Feed the input in two pieces, as a socket might deliver it.
    let split = data.len() / 2;
    for end in [split, data.len()] {
        loop {
            let (n, stop) = process(&f.db, &mut session, &data[pos..end], &mut out);
            pos += n;
            match stop {
                Stop::Close => return,
                Stop::NeedMore => break,
                Stop::Wait { .. } => continue,
            }
        }
    }
});
