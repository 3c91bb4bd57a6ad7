//! The fault injector: runs a schedule (see [`crate::schedule`]) against the running soak, logging
//! every action with its fault's number, and records what each fault did.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::schedule::{Fault, FaultKind};
use crate::Soak;

/// Where `drop-caches` drops the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropScope {
    /// `echo 3 > /proc/sys/vm/drop_caches`: every page, dentry and inode of the host (benchmarks).
    Host,
    /// `POSIX_FADV_DONTNEED` on every file of this soak (its store, cache, layers and the nodes' data
    /// dirs): nobody else's cache is touched (tests on a shared machine).
    Soak,
}

/// What one fault did.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// The fault as scheduled.
    pub fault: Fault,
    /// When it was injected (seconds since the soak started).
    pub started: Option<f64>,
    /// When it was undone (faults with a hold).
    pub ended: Option<f64>,
    /// What was done, for the log and the report.
    pub notes: Vec<String>,
    /// Actions that failed (a fault whose injection or undoing failed is not survived).
    pub errors: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    // Undo before inject at the same instant: an impairment ending frees its servers first.
    End,
    Start,
}

/// Runs `faults` (their times counted from log time `offset`) until they are all done or `stop` is
/// set; returns what each did.
pub fn inject(
    soak: &Soak,
    faults: &[Fault],
    offset: Duration,
    stop: &AtomicBool,
) -> Vec<FaultRecord> {
    let mut records: Vec<FaultRecord> = faults
        .iter()
        .map(|f| FaultRecord {
            fault: f.clone(),
            started: None,
            ended: None,
            notes: Vec::new(),
            errors: Vec::new(),
        })
        .collect();
    let mut timeline: Vec<(Duration, Phase, usize)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        timeline.push((offset + f.at, Phase::Start, i));
        if !f.hold.is_zero() {
            timeline.push((offset + f.end(), Phase::End, i));
        }
    }
    timeline.sort();
    // Replaced servers whose repair could not finish because another server was down at the time:
    // repaired again once every server serves (the replaced one counts as repaired only then).
    let mut awaiting_repair: Vec<usize> = Vec::new();
    'timeline: for (at, phase, i) in timeline {
        while soak.log.elapsed() < at {
            if stop.load(Ordering::Relaxed) || crate::ABORT.load(Ordering::Relaxed) {
                break 'timeline;
            }
            std::thread::sleep((at - soak.log.elapsed()).min(Duration::from_millis(100)));
        }
        let record = &mut records[i];
        let result = match phase {
            Phase::Start => {
                record.started = Some(soak.log.elapsed().as_secs_f64());
                soak.log.line(format!("FAULT {} (soak time)", record.fault));
                start(soak, record)
            }
            Phase::End => match end(soak, record) {
                Ok(Ended::AwaitingRepair(note)) => {
                    awaiting_repair.push(i);
                    Ok(note)
                }
                result => {
                    record.ended = Some(soak.log.elapsed().as_secs_f64());
                    result.map(|(Ended::Done(note) | Ended::AwaitingRepair(note))| note)
                }
            },
        };
        note_result(soak, record, result);
        if !awaiting_repair.is_empty() && every_server_serves(soak) {
            retry_repairs(soak, &mut records, &mut awaiting_repair);
        }
    }
    if !awaiting_repair.is_empty() && !crate::ABORT.load(Ordering::Relaxed) {
        // The cool-down holds no fault: every server is back by now.
        retry_repairs(soak, &mut records, &mut awaiting_repair);
    }
    records
}

fn note_result(soak: &Soak, record: &mut FaultRecord, result: anyhow::Result<String>) {
    match result {
        Ok(note) => {
            soak.log.line(format!("fault #{}: {note}", record.fault.id));
            record.notes.push(note);
        }
        Err(e) => {
            let e = format!("{e:#}");
            soak.log
                .line(format!("fault #{}: FAILED: {e}", record.fault.id));
            record.errors.push(e);
        }
    }
}

/// How undoing a fault went.
enum Ended {
    /// Undone.
    Done(String),
    /// The `store repair` after a `zdb-replace` could not reach a server that another fault holds
    /// down: to be run again once every server serves.
    AwaitingRepair(String),
}

fn every_server_serves(soak: &Soak) -> bool {
    soak.servers.lock().iter_mut().all(|s| s.serving())
}

/// `store repair` after a replaced server came back empty. An incomplete repair is a failure, unless
/// what it could not reach is a server another fault holds down right now (a second server down while
/// a disk is replaced, within the store's tolerance): then it waits for that server to come back.
fn repair_after_replace(soak: &Soak, record: &FaultRecord) -> anyhow::Result<Ended> {
    let names = servers_named(&record.fault.servers);
    let t = Instant::now();
    let run = soak.repair_run()?;
    if run.complete() {
        return Ok(Ended::Done(format!(
            "store repair after replacing {names}: {} in {} ms",
            run.summary,
            t.elapsed().as_millis()
        )));
    }
    let down: Vec<String> = soak
        .servers
        .lock()
        .iter_mut()
        .filter_map(|s| (!s.serving()).then(|| format!("zdb{}", s.index)))
        .collect();
    if run.unrecoverable.is_empty() && !down.is_empty() {
        return Ok(Ended::AwaitingRepair(format!(
            "store repair after replacing {names} incomplete while {} {} down ({}); it runs again once every server serves",
            down.join("+"),
            if down.len() == 1 { "is" } else { "are" },
            run.text()
        )));
    }
    bail!(
        "store repair after replacing {names} incomplete: {}",
        run.text()
    )
}

/// Runs `store repair` again for the replaced servers in `waiting` (every server serves now): a
/// complete repair ends those faults, an incomplete one fails them.
fn retry_repairs(soak: &Soak, records: &mut [FaultRecord], waiting: &mut Vec<usize>) {
    let t = Instant::now();
    let result = soak.repair_run();
    let now = soak.log.elapsed().as_secs_f64();
    for i in waiting.drain(..) {
        let record = &mut records[i];
        let names = servers_named(&record.fault.servers);
        record.ended = Some(now);
        let result = match &result {
            Ok(run) if run.complete() => Ok(format!(
                "store repair after replacing {names}, run again once every server served: {} in {} ms",
                run.summary,
                t.elapsed().as_millis()
            )),
            Ok(run) => Err(anyhow::anyhow!(
                "store repair after replacing {names}, run again once every server served, incomplete: {}",
                run.text()
            )),
            Err(e) => Err(anyhow::anyhow!("store repair after replacing {names}: {e:#}")),
        };
        note_result(soak, record, result);
    }
}

fn servers_named(servers: &[usize]) -> String {
    servers
        .iter()
        .map(|s| format!("zdb{s}"))
        .collect::<Vec<_>>()
        .join("+")
}

fn start(soak: &Soak, record: &mut FaultRecord) -> anyhow::Result<String> {
    let f = &record.fault;
    let names = servers_named(&f.servers);
    match f.kind {
        FaultKind::ZdbKill => {
            let mut servers = soak.servers.lock();
            for &s in &f.servers {
                servers[s].kill();
            }
            Ok(format!("{names} killed (-9)"))
        }
        FaultKind::ZdbHang => {
            let mut servers = soak.servers.lock();
            for &s in &f.servers {
                servers[s].hang();
            }
            Ok(format!("{names} stopped (SIGSTOP)"))
        }
        FaultKind::ZdbReplace => {
            let mut servers = soak.servers.lock();
            for &s in &f.servers {
                servers[s].kill();
                servers[s].wipe()?;
                servers[s].restart(&soak.owner)?;
            }
            Ok(format!("{names} killed, emptied and started again"))
        }
        FaultKind::SupervisorKill | FaultKind::MountKill => {
            let node = f.node.context("a node fault without a node")?;
            let name = &soak.names[node];
            // A node still coming back from an earlier fault is waited for (up to 60 s).
            let t = Instant::now();
            let entry = loop {
                let entry = soak.cli.entry(name)?;
                if entry.state == "running" || t.elapsed() > Duration::from_secs(60) {
                    break entry;
                }
                std::thread::sleep(Duration::from_millis(250));
            };
            let (what, pid) = if f.kind == FaultKind::SupervisorKill {
                ("supervisor", entry.supervisor_pid)
            } else {
                ("mount daemon", entry.mount_pid)
            };
            let Some(pid) = pid else {
                bail!("{name} has no {what} to kill (state {})", entry.state);
            };
            let stamp = crate::procs::start_time(pid).context("the process is gone")?;
            if !crate::procs::signal_if_same(pid, stamp, libc::SIGKILL) {
                bail!("{name}'s {what} (pid {pid}) could not be killed");
            }
            Ok(format!("{name}'s {what} (pid {pid}) killed (-9)"))
        }
        FaultKind::DropCaches => drop_caches(soak),
        FaultKind::CacheFull => {
            let t = Instant::now();
            let bytes = soak.cachefs.fill()?;
            Ok(format!(
                "host-cache filesystem filled with {} MiB in {} ms ({} bytes free)",
                bytes >> 20,
                t.elapsed().as_millis(),
                soak.cachefs.free_bytes()
            ))
        }
    }
}

fn end(soak: &Soak, record: &mut FaultRecord) -> anyhow::Result<Ended> {
    let f = &record.fault;
    let names = servers_named(&f.servers);
    let done = match f.kind {
        FaultKind::ZdbKill => {
            let t = Instant::now();
            let mut servers = soak.servers.lock();
            for &s in &f.servers {
                servers[s].restart(&soak.owner)?;
            }
            format!("{names} restarted in {} ms", t.elapsed().as_millis())
        }
        FaultKind::ZdbHang => {
            let mut servers = soak.servers.lock();
            for &s in &f.servers {
                servers[s].resume();
            }
            format!("{names} resumed (SIGCONT)")
        }
        FaultKind::ZdbReplace => return repair_after_replace(soak, record),
        FaultKind::CacheFull => {
            soak.cachefs.free()?;
            format!(
                "host-cache filesystem freed ({} MiB free)",
                soak.cachefs.free_bytes() >> 20
            )
        }
        FaultKind::SupervisorKill | FaultKind::MountKill | FaultKind::DropCaches => {
            "nothing to undo".into()
        }
    };
    Ok(Ended::Done(done))
}

fn drop_caches(soak: &Soak) -> anyhow::Result<String> {
    let t = Instant::now();
    match soak.drop_scope {
        DropScope::Host => {
            let _ = Command::new("sync").status();
            std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("write drop_caches")?;
            Ok(format!(
                "host page cache, dentries and inodes dropped in {} ms",
                t.elapsed().as_millis()
            ))
        }
        DropScope::Soak => {
            // FUSE mounts are left out: opening their files can hang on a dead or hung daemon.
            let fuse: Vec<std::path::PathBuf> = crate::procs::mounts_below(&soak.work)
                .into_iter()
                .filter(|m| m.is_fuse_or_overlay())
                .map(|m| m.point)
                .collect();
            let mut files = 0;
            let mut dirs = vec![soak.work.clone()];
            while let Some(d) = dirs.pop() {
                if fuse.contains(&d) {
                    continue;
                }
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in entries.flatten() {
                    let Ok(ft) = e.file_type() else { continue };
                    if ft.is_dir() {
                        dirs.push(e.path());
                    } else if ft.is_file() {
                        if let Ok(file) = std::fs::File::open(e.path()) {
                            use std::os::fd::AsRawFd;
                            unsafe {
                                libc::posix_fadvise(
                                    file.as_raw_fd(),
                                    0,
                                    0,
                                    libc::POSIX_FADV_DONTNEED,
                                )
                            };
                            files += 1;
                        }
                    }
                }
            }
            Ok(format!(
                "page cache of {files} soak files dropped in {} ms",
                t.elapsed().as_millis()
            ))
        }
    }
}
