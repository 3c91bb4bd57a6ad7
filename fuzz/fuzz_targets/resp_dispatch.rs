//! Fuzz target: arbitrary bytes through the RESP request decoder and, for every request it accepts, the
//! command dispatcher of a real (temporary, on-disk) database. Must never panic or loop.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zdb::cmd::{execute, Outcome, Session};
use zdb::db::Database;
use zdb::protocol::parse_request;

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
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match parse_request(&data[pos..], &mut ranges) {
            Ok(Some(n)) => {
                let args: Vec<&[u8]> = ranges
                    .iter()
                    .map(|r| &data[pos + r.start..pos + r.end])
                    .collect();
                assert!(n > 0, "decoder consumed nothing");
                pos += n;
                if execute(&f.db, &mut session, &args, &mut out) == Outcome::Close {
                    break;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
