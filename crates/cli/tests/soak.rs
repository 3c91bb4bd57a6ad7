//! The short chaos soak (the same injector and checks as `bench/soak.sh`, crate `soak`): three
//! litecoind nodes (overlay and blocks layers) from one base on a `disperse:4+2` store over six zdb
//! servers, a fixed seed whose schedule holds every fault kind — zdb servers killed, hung and replaced
//! (then repaired), a supervisor and a mount daemon killed, the page cache of the run dropped, the
//! host-cache filesystem filled to ENOSPC — while the nodes mine and read their blocks back. Every fault
//! must be survived, nothing lost, and the end checks (chains, wallets, layers, base, redundancy) pass.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::BIN;
use soak::faults::DropScope;
use soak::schedule::FaultKind;
use soak::{BaseSource, Config, StoreKind};
use testkit::fuse_available;

/// A seed whose short schedule holds every fault kind and kills both the supervisor and the mount
/// daemon of the blocks-layer node (checked below).
const SEED: u64 = 3;

fn short_config(work: &std::path::Path) -> Config {
    let mut c = Config::bench(
        std::path::Path::new(BIN),
        work,
        StoreKind::Disperse,
        Duration::from_secs(60),
        SEED,
    );
    c.base = BaseSource::Generate(200);
    c.warmup = Duration::from_secs(6);
    c.cooldown = Duration::from_secs(12);
    c.gap = (Duration::from_secs(4), Duration::from_secs(6));
    c.hold = (Duration::from_secs(2), Duration::from_secs(5));
    c.cache_fs_bytes = 64 << 20;
    c.cache_size = 16 << 20;
    // Tests share the machine: only this run's page cache is dropped.
    c.drop_scope = DropScope::Soak;
    c.recover_timeout = Duration::from_secs(120);
    c
}

#[test]
fn short_soak_survives_every_fault_kind_and_loses_nothing() {
    if !fuse_available("short_soak_survives_every_fault_kind_and_loses_nothing") {
        return;
    }
    let have = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !have("litecoind", "-version") || !have("mkfs.ext4", "-V") || !have("losetup", "--version") {
        assert!(
            std::env::var("CI").map(|v| v != "true").unwrap_or(true),
            "litecoind, mkfs.ext4 or losetup is missing and CI=true forbids skipping (scripts/setup.sh)"
        );
        eprintln!(
            "SKIP: litecoind, mkfs.ext4 or losetup is missing (scripts/setup.sh installs them)"
        );
        return;
    }
    // Under /var/tmp: the loop-mounted cache filesystem and the nodes' layers live in it.
    let tmp = tempfile::Builder::new()
        .prefix("thinnode-soak-test.")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let config = short_config(tmp.path());
    let schedule = soak::schedule_of(&config);
    for kind in FaultKind::ALL {
        assert!(
            schedule.iter().any(|f| f.kind == kind),
            "seed {SEED} schedules no {kind}: pick another seed"
        );
    }
    for kind in [FaultKind::SupervisorKill, FaultKind::MountKill] {
        assert!(
            schedule
                .iter()
                .any(|f| f.kind == kind
                    && f.node.map(|n| config.layers[n].as_str()) == Some("blocks")),
            "seed {SEED} does not hit the blocks-layer node with {kind}"
        );
    }
    assert_eq!(
        schedule,
        soak::schedule_of(&config),
        "same seed, same schedule"
    );
    let report = soak::run(config).expect("the soak runs");
    println!("{}", report.text());
    assert_eq!(report.injected(), schedule.len(), "every fault injected");
    assert_eq!(report.bytes_lost.total, 0, "nothing lost");
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.load.blocks_acked > 0 && n.load.reads > 0),
        "every node mined, acknowledged and read blocks"
    );
    assert!(report.passed, "the soak failed:\n{}", report.text());
}
