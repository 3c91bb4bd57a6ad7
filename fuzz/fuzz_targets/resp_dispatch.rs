//! Fuzz target: arbitrary bytes through the connection's request processing (RESP decoder, SET batching,
//! command dispatch) on a real temporary database. Must never panic or loop.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zdb::fuzzing::Harness;

struct Fixture {
    _dir: tempfile::TempDir,
    harness: Harness,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let harness = Harness::open(dir.path()).expect("open database");
        Fixture { _dir: dir, harness }
    })
}

fuzz_target!(|data: &[u8]| {
    fixture().harness.feed(data);
});
