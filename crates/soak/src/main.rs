//! `thinnode-soak`: runs the chaos soak of the whole stack (see the `soak` crate), or cleans up after a
//! run that was killed. Used by `bench/soak.sh`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use soak::faults::DropScope;
use soak::schedule::FaultKind;
use soak::{BaseSource, Config, StoreKind};

#[derive(Parser)]
#[command(
    about = "Chaos soak of thinnode: litecoind nodes on a multi-server store under seeded faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a soak and print its report; exit status 0 only when it passed.
    Run(RunArgs),
    /// Stop and remove everything a run in WORK started (nodes, servers, mounts, loop devices).
    Cleanup {
        /// The run's work directory.
        work: PathBuf,
    },
    /// Print the fault schedule a seed gives (nothing is run).
    Schedule(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The thinnode binary under test.
    #[arg(long)]
    thinnode: PathBuf,
    /// Work directory (everything of the run lives below it).
    #[arg(long)]
    work: PathBuf,
    /// `disperse` (disperse:4+2 over six zdb servers) or `route` (two ranges, two replicas each).
    #[arg(long, default_value = "disperse")]
    store: String,
    /// Seconds of load and faults.
    #[arg(long, default_value_t = 900)]
    duration_s: u64,
    /// Seed of the fault schedule (and of the load's choices).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A stopped litecoind regtest data dir to use as the base (used in place).
    #[arg(long)]
    base_dir: Option<PathBuf>,
    /// Without --base-dir: mine this many blocks for the base.
    #[arg(long, default_value_t = 200)]
    base_blocks: u64,
    /// Layer kinds of the nodes, comma-separated (one node each).
    #[arg(long, default_value = "overlay,blocks,overlay")]
    layers: String,
    /// Fault kinds to inject, comma-separated (default: all).
    #[arg(long)]
    kinds: Option<String>,
    /// Shortest,longest gap between fault starts in seconds.
    #[arg(long, default_value = "4,14")]
    gap_s: String,
    /// Shortest,longest hold of lasting faults in seconds (default: 3,20; 2,8 for runs under 300 s).
    #[arg(long)]
    hold_s: Option<String>,
    /// Seconds without faults at the start (default: 15; 8 for runs under 300 s).
    #[arg(long)]
    warmup_s: Option<u64>,
    /// Seconds at the end with no fault held (default: 30; 15 for runs under 300 s).
    #[arg(long)]
    cooldown_s: Option<u64>,
    /// `host` (echo 3 > /proc/sys/vm/drop_caches) or `soak` (only this run's files).
    #[arg(long, default_value = "host")]
    drop_caches: String,
    /// Size of the host-cache filesystem in MiB.
    #[arg(long, default_value_t = 128)]
    cache_fs_mib: u64,
    /// The nodes' --cache-size in MiB (below the base's size, so reads keep reaching the store).
    #[arg(long, default_value_t = 24)]
    cache_size_mib: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn pair(text: &str) -> anyhow::Result<(Duration, Duration)> {
    let (a, b) = text.split_once(',').context("expected LOW,HIGH")?;
    Ok((
        Duration::from_secs_f64(a.trim().parse()?),
        Duration::from_secs_f64(b.trim().parse()?),
    ))
}

fn config(a: &RunArgs) -> anyhow::Result<Config> {
    let store = match a.store.as_str() {
        "disperse" => StoreKind::Disperse,
        "route" => StoreKind::Route,
        other => anyhow::bail!("--store {other:?}: expected disperse or route"),
    };
    let mut c = Config::bench(
        &a.thinnode,
        &a.work,
        store,
        Duration::from_secs(a.duration_s),
        a.seed,
    );
    c.base = match &a.base_dir {
        Some(d) => BaseSource::Dir(d.clone()),
        None => BaseSource::Generate(a.base_blocks),
    };
    c.layers = a.layers.split(',').map(|s| s.trim().to_string()).collect();
    if let Some(kinds) = &a.kinds {
        c.kinds = kinds
            .split(',')
            .map(|k| {
                FaultKind::parse(k.trim()).with_context(|| format!("unknown fault kind {k:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    c.gap = pair(&a.gap_s)?;
    c.drop_scope = match a.drop_caches.as_str() {
        "host" => DropScope::Host,
        "soak" => DropScope::Soak,
        other => anyhow::bail!("--drop-caches {other:?}: expected host or soak"),
    };
    c.cache_fs_bytes = a.cache_fs_mib << 20;
    c.cache_size = a.cache_size_mib << 20;
    // Short runs: less warm-up and cool-down.
    if a.duration_s < 300 {
        c.warmup = Duration::from_secs(8);
        c.cooldown = Duration::from_secs(15);
        c.hold = (Duration::from_secs(2), Duration::from_secs(8));
    }
    if let Some(h) = &a.hold_s {
        c.hold = pair(h)?;
    }
    if let Some(w) = a.warmup_s {
        c.warmup = Duration::from_secs(w);
    }
    if let Some(w) = a.cooldown_s {
        c.cooldown = Duration::from_secs(w);
    }
    Ok(c)
}

/// Set by the SIGINT/SIGTERM handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Runs `cleanup WORK` when SIGINT or SIGTERM arrives, then exits 130. A handler, not a blocked mask
/// and `sigwait`: children inherit a blocked mask across exec, and every node, mount daemon and server
/// started from here would then ignore the SIGTERM that stops them.
fn cleanup_on_signal(work: PathBuf) -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }?;
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("thinnode-soak: interrupted: cleaning up {}", work.display());
            soak::ABORT.store(true, Ordering::SeqCst);
            // Let a node start or server restart in flight finish before cleaning up after it.
            std::thread::sleep(Duration::from_secs(2));
            if let Err(e) = soak::procs::cleanup(&work) {
                eprintln!("thinnode-soak: cleanup: {e:#}");
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thinnode-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Cleanup { work } => {
            soak::procs::cleanup(&work)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Schedule(a) => {
            let c = config(&a)?;
            for f in soak::schedule_of(&c) {
                println!("{f}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(a) => {
            let c = config(&a)?;
            std::fs::create_dir_all(&c.work)?;
            cleanup_on_signal(c.work.canonicalize()?)?;
            let report = soak::run(c)?;
            let text = report.text();
            println!("\n{text}");
            if let Some(path) = &a.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
