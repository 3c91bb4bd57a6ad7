//! Nodes as services, end to end with the real binary, real FUSE and overlay mounts: a node whose mount
//! daemon is killed comes back by itself under `--restart`; logs rotate by size; the systemd units pass
//! `systemd-analyze verify`; `node enable` writes the unit link; and, running what the unit runs (as
//! systemd would: `Type=notify` with a notify socket, `Restart=on-failure`, `ExecStop=`), a node comes
//! back after `kill -9` of its supervisor and after a simulated reboot (every process of this test's
//! state directory killed, its mounts gone).

mod common;
mod node_common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok_text, BIN};
use node_common::{node, node_entry, NodesGuard};
use testkit::fuse_available;

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let prefix = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(PathBuf::from)
        .collect()
}

fn pid_of(entry: &serde_json::Value, field: &str) -> Option<u32> {
    entry[field].as_u64().and_then(|p| u32::try_from(p).ok())
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) with a pid this test read from its own node's record.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// What each node test starts from: a temporary directory with a small base image, a state directory
/// whose nodes are removed at the end, and a host cache.
struct Setup {
    tmp: tempfile::TempDir,
    img: PathBuf,
    state: PathBuf,
    cache: PathBuf,
    _nodes: NodesGuard,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = small_base(tmp.path());
    let state = tmp.path().join("state");
    let _nodes = NodesGuard::new(&state);
    let cache = tmp.path().join("cache");
    Setup {
        tmp,
        img,
        state,
        cache,
        _nodes,
    }
}

/// A base image of a small directory (a file `f` reading "base\n") in a dir store under `tmp`.
fn small_base(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    fs::create_dir_all(&data).expect("mkdir");
    fs::write(data.join("f"), b"base\n").expect("write");
    let img = tmp.join("base.img");
    ok_text(&[
        "base",
        "create",
        data.to_str().expect("utf-8"),
        "--store",
        &format!("dir://{}", tmp.join("store").display()),
        "--out",
        img.to_str().expect("utf-8"),
        "--chain",
        "t",
    ]);
    img
}

fn create(state: &Path, name: &str, img: &Path, cache: &Path) {
    node(
        state,
        &[
            "create",
            name,
            "--image",
            img.to_str().expect("utf-8"),
            "--cache",
            cache.to_str().expect("utf-8"),
        ],
    );
}

#[test]
fn a_killed_mount_daemon_is_restarted_under_restart_and_fails_the_node_without() {
    if !fuse_available(
        "a_killed_mount_daemon_is_restarted_under_restart_and_fails_the_node_without",
    ) {
        return;
    }
    let Setup {
        img, state, cache, ..
    } = &setup();
    let (img, state, cache) = (img.as_path(), state.as_path(), cache.as_path());
    for name in ["keep", "once", "chatty"] {
        create(state, name, img, cache);
    }
    // Each run appends to a file in the layer, then keeps reading the base.
    let script = "echo run >> {data}/runs; while cat {data}/f > /dev/null; do sleep 0.1; done";
    node(
        state,
        &[
            "start",
            "keep",
            "--restart",
            "on-failure",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    node(state, &["start", "once", "--", "sh", "-c", script]);

    let before = node_entry(state, "keep");
    let mount_pid = pid_of(&before, "mount_pid").expect("mount daemon pid");
    let child_pid = pid_of(&before, "pid").expect("command pid");
    let killed = Instant::now();
    kill9(mount_pid);
    wait_until("keep runs again", Duration::from_secs(30), || {
        let e = node_entry(state, "keep");
        e["state"] == "running"
            && pid_of(&e, "mount_pid").is_some_and(|p| p != mount_pid)
            && pid_of(&e, "pid").is_some_and(|p| p != child_pid)
    });
    let recovery = killed.elapsed();
    println!(
        "recovery after kill -9 of the mount daemon: {} ms (1 s of it is the first restart backoff)",
        recovery.as_millis()
    );
    let after = node_entry(state, "keep");
    assert_eq!(after["restarts"], 1, "{after}");
    assert!(
        after["last_exit"]
            .as_str()
            .unwrap_or("")
            .contains("mount daemon killed by signal 9"),
        "{after}"
    );
    let data = PathBuf::from(after["data_dir"].as_str().expect("data_dir"));
    wait_until("the second run wrote", Duration::from_secs(10), || {
        fs::read_to_string(data.join("runs")).is_ok_and(|r| r.lines().count() == 2)
    });
    assert_eq!(fs::read(data.join("f")).expect("base file"), b"base\n");
    let log = node(state, &["logs", "keep", "-n", "20"]);
    assert!(
        log.contains("the mount daemon killed by signal 9") && log.contains("restarted"),
        "{log}"
    );

    // Without --restart the node fails and nothing stays mounted.
    let once = node_entry(state, "once");
    let once_data = PathBuf::from(once["data_dir"].as_str().expect("data_dir"));
    kill9(pid_of(&once, "mount_pid").expect("mount daemon pid"));
    wait_until("once failed", Duration::from_secs(30), || {
        node_entry(state, "once")["state"] == "failed"
    });
    let once = node_entry(state, "once");
    assert!(
        once["last_exit"]
            .as_str()
            .unwrap_or("")
            .contains("mount daemon"),
        "{once}"
    );
    assert!(
        !mounts_under(&state.join("nodes/once"))
            .iter()
            .any(|m| m == &once_data),
        "the dead mounts of a failed node are cleared"
    );
    wait_until("once's mounts cleared", Duration::from_secs(10), || {
        mounts_under(&state.join("nodes/once")).is_empty()
    });

    // node.log rotates by size and keeps N files.
    node(
        state,
        &[
            "start",
            "chatty",
            "--log-size",
            "4kB",
            "--log-keep",
            "2",
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 1000 ]; do echo \"line $i of a chatty node\"; i=$((i+1)); done; exec sleep 600",
        ],
    );
    let log = state.join("nodes/chatty/node.log");
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    wait_until("chatty logged everything", Duration::from_secs(20), || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("line 999 of"))
    });
    for path in [log.clone(), rotated(1), rotated(2)] {
        let len = fs::metadata(&path).expect("log file").len();
        assert!(len <= 4000, "{} is {len} bytes", path.display());
    }
    assert!(!rotated(3).exists(), "only two rotated files are kept");
    assert!(fs::read_to_string(rotated(1))
        .expect("node.log.1")
        .contains("of a chatty node"));

    for name in ["keep", "chatty"] {
        node(state, &["stop", name]);
    }
    assert!(mounts_under(state).is_empty(), "{:?}", mounts_under(state));
}

/// The dist units with the binary under test in place of /usr/bin/thinnode, in `dir`.
fn dist_units(dir: &Path) -> Vec<PathBuf> {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd");
    fs::create_dir_all(dir).expect("mkdir");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dist).expect("dist/systemd") {
        let path = entry.expect("entry").path();
        let text = fs::read_to_string(&path).expect("unit");
        let copy = dir.join(path.file_name().expect("name"));
        fs::write(&copy, text.replace("/usr/bin/thinnode", BIN)).expect("write");
        out.push(copy);
    }
    out.sort();
    out
}

/// `systemd-analyze verify` of `units`; None when systemd-analyze is missing (outside CI).
fn verify_units(units: &[PathBuf]) -> Option<String> {
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "systemd-analyze: {e} (scripts/setup.sh installs it)"
            );
            eprintln!("SKIP systemd-analyze verify: {e}");
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    Some(text)
}

#[test]
fn dist_units_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let units = dist_units(tmp.path());
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "thinnode-mount@.service",
            "thinnode-node@.service",
            "thinnode-zdb.service"
        ]
    );
    // Templates are verified through an instance.
    let mut instances = Vec::new();
    for (template, instance) in [
        ("thinnode-node@.service", "thinnode-node@val1.service"),
        ("thinnode-mount@.service", "thinnode-mount@srv-ltc.service"),
    ] {
        let link = tmp.path().join(instance);
        std::os::unix::fs::symlink(tmp.path().join(template), &link).expect("link");
        instances.push(link);
    }
    instances.push(tmp.path().join("thinnode-zdb.service"));
    if let Some(text) = verify_units(&instances) {
        assert!(!text.contains("thinnode"), "warnings: {text}");
    }
    // A broken unit is caught: the check can fail.
    let broken = tmp.path().join("broken.service");
    fs::write(
        &broken,
        "[Service]\nType=notify\nExecStart=/nonexistent/thinnode node start x\n",
    )
    .expect("write");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&broken)
            .output()
            .expect("systemd-analyze");
        assert!(
            !out.status.success(),
            "a unit naming a missing binary fails"
        );
    }
}

/// A unit as the service manager would read it: the template plus drop-ins, for instance `name`.
struct Unit {
    environment: Vec<(String, String)>,
    exec_start: Vec<String>,
    exec_stop: Vec<String>,
    restart: String,
    restart_sec: Duration,
}

impl Unit {
    /// Reads the enabled instance `link` (in `UNIT_DIR/multi-user.target.wants`) of instance `name`.
    fn read(link: &Path, unit_dir: &Path, name: &str) -> Unit {
        let template = fs::read_link(link).expect("the instance links to its template");
        let instance = link
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let mut files = vec![template];
        let drop_ins = unit_dir.join(format!("{instance}.d"));
        if let Ok(entries) = fs::read_dir(&drop_ins) {
            let mut confs: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
            confs.sort();
            files.extend(confs);
        }
        let mut unit = Unit {
            environment: Vec::new(),
            exec_start: Vec::new(),
            exec_stop: Vec::new(),
            restart: "no".into(),
            restart_sec: Duration::from_millis(100),
        };
        for file in files {
            for line in fs::read_to_string(&file).expect("unit file").lines() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                let words = || -> Vec<String> {
                    value
                        .split_whitespace()
                        .map(|w| w.replace("%i", name))
                        .collect()
                };
                match key.trim() {
                    "Environment" => {
                        let (k, v) = value.split_once('=').expect("KEY=VALUE");
                        unit.environment.push((k.into(), v.into()));
                    }
                    "ExecStart" => unit.exec_start = words(),
                    "ExecStop" => unit.exec_stop = words(),
                    "Restart" => unit.restart = value.trim().into(),
                    "RestartSec" => {
                        let secs: f64 = value.trim().trim_end_matches('s').parse().expect("secs");
                        unit.restart_sec = Duration::from_secs_f64(secs);
                    }
                    _ => {}
                }
            }
        }
        unit
    }

    fn command(&self, argv: &[String], notify: Option<&Path>) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_remove("THINNODE_STATE_DIR")
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(sock) = notify {
            cmd.env("NOTIFY_SOCKET", sock);
        }
        cmd
    }
}

/// The notify socket a `Type=notify` service reports to.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            path: path.to_path_buf(),
            socket,
        }
    }

    /// Waits for `READY=1` while `main` runs; fails the test if it exits first.
    fn wait_ready(&self, main: &mut Child, timeout: Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]);
                if msg.lines().any(|l| l == "READY=1") {
                    return;
                }
            }
            if let Ok(Some(status)) = main.try_wait() {
                panic!("the service exited ({status}) before READY=1");
            }
            assert!(start.elapsed() < timeout, "no READY=1 within {timeout:?}");
        }
    }
}

/// Every process of this test's nodes: supervisors and mount daemons name the state directory on their
/// command line or in THINNODE_STATE_DIR (a unit's supervisor), node commands carry THINNODE_DATA
/// inside it.
fn processes_of(state: &Path) -> Vec<i32> {
    let needle = state.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |bytes: &[u8], pat: &str| {
            bytes
                .split(|b| *b == 0)
                .any(|w| String::from_utf8_lossy(w).contains(pat))
        };
        if has(&cmdline, &needle)
            || has(&environ, &format!("THINNODE_DATA={needle}"))
            || has(&environ, &format!("THINNODE_STATE_DIR={needle}"))
        {
            pids.push(pid);
        }
    }
    pids
}

/// A power cut for this test's nodes only: every process of the state directory stopped, then
/// killed, then its mounts detached (deepest first), as a reboot leaves them.
fn simulate_reboot(state: &Path) {
    let pids = processes_of(state);
    assert!(!pids.is_empty(), "the node has processes to kill");
    for pid in &pids {
        // SAFETY: signals to processes of this test's own state directory.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    for pid in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_until("the killed processes gone", Duration::from_secs(10), || {
        processes_of(state).is_empty()
    });
    let mut mounts = mounts_under(state);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path of a mount inside this test's state directory.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        assert_eq!(rc, 0, "detach {}", m.display());
    }
    assert!(mounts_under(state).is_empty());
}

#[test]
fn enabled_node_survives_kill_9_of_its_supervisor_and_a_reboot_under_its_unit() {
    if !fuse_available("enabled_node_survives_kill_9_of_its_supervisor_and_a_reboot_under_its_unit")
    {
        return;
    }
    let s = setup();
    let (tmp, img, state, cache) = (
        s.tmp.path(),
        s.img.as_path(),
        s.state.as_path(),
        s.cache.as_path(),
    );
    let units = tmp.join("units");
    let units_s = units.to_str().expect("utf-8");
    create(state, "val1", img, cache);

    // Enabling needs the node's command: it is recorded by a first start.
    let refused = common::run(&[
        "node",
        "--state-dir",
        state.to_str().expect("utf-8"),
        "enable",
        "val1",
        "--unit-dir",
        units_s,
    ]);
    assert!(!refused.status.success());
    assert!(common::text(&refused).contains("no command yet"));
    let script = "echo run >> {data}/runs; exec sleep 600";
    node(state, &["start", "val1", "--", "sh", "-c", script]);
    node(state, &["stop", "val1"]);
    let enabled = node(state, &["enable", "val1", "--unit-dir", units_s]);
    println!("{enabled}");
    let link = units.join("multi-user.target.wants/thinnode-node@val1.service");
    assert_eq!(
        fs::read_link(&link).expect("link"),
        units.join("thinnode-node@.service")
    );
    assert_eq!(node_entry(state, "val1")["enabled"], true);
    let drop_in = units.join("thinnode-node@val1.service.d/state-dir.conf");
    assert!(fs::read_to_string(&drop_in)
        .expect("drop-in")
        .contains(&format!("THINNODE_STATE_DIR={}", state.display())));
    // The written units are valid systemd units (through the instance, with its drop-in).
    let instance = units.join("thinnode-node@val1.service");
    std::os::unix::fs::symlink(units.join("thinnode-node@.service"), &instance).expect("link");
    verify_units(std::slice::from_ref(&instance));
    fs::remove_file(&instance).expect("rm");

    // Run what the unit runs, as systemd would.
    let unit = Unit::read(&link, &units, "val1");
    assert_eq!(unit.restart, "on-failure");
    assert_eq!(unit.exec_start[0], BIN);
    let notify = NotifySocket::bind(&tmp.join("notify.sock"));
    let mut main = unit
        .command(&unit.exec_start, Some(&notify.path))
        .spawn()
        .expect("ExecStart");
    notify.wait_ready(&mut main, Duration::from_secs(30));
    let entry = node_entry(state, "val1");
    assert_eq!(entry["state"], "running");
    assert_eq!(pid_of(&entry, "supervisor_pid"), Some(main.id()));
    let data = PathBuf::from(entry["data_dir"].as_str().expect("data_dir"));

    // kill -9 of the supervisor: it exits by a signal, so Restart=on-failure runs ExecStart again.
    let killed = Instant::now();
    kill9(main.id());
    let status = main.wait().expect("wait");
    assert!(!status.success());
    std::thread::sleep(unit.restart_sec);
    let mut main = unit
        .command(&unit.exec_start, Some(&notify.path))
        .spawn()
        .expect("ExecStart");
    notify.wait_ready(&mut main, Duration::from_secs(30));
    println!(
        "recovery after kill -9 of the supervisor under the unit: {} ms (RestartSec={} ms of it)",
        killed.elapsed().as_millis(),
        unit.restart_sec.as_millis()
    );
    assert_eq!(node_entry(state, "val1")["state"], "running");
    assert_eq!(
        fs::read_to_string(data.join("runs"))
            .expect("runs")
            .lines()
            .count(),
        3,
        "the layer kept every run's write"
    );

    // A reboot: every process of this node dead, its mounts gone; the record still says running.
    simulate_reboot(state);
    let _ = main.wait();
    assert_eq!(node_entry(state, "val1")["state"], "crashed");
    // Boot: systemd starts every unit wanted by multi-user.target.
    let mut booted = BTreeMap::new();
    for entry in fs::read_dir(units.join("multi-user.target.wants")).expect("wants") {
        let link = entry.expect("entry").path();
        let file = link
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let name = file
            .strip_prefix("thinnode-node@")
            .and_then(|s| s.strip_suffix(".service"))
            .expect("a node unit")
            .to_string();
        let unit = Unit::read(&link, &units, &name);
        let mut main = unit
            .command(&unit.exec_start, Some(&notify.path))
            .spawn()
            .expect("boot");
        notify.wait_ready(&mut main, Duration::from_secs(30));
        booted.insert(name, (unit, main));
    }
    assert_eq!(booted.len(), 1);
    let entry = node_entry(state, "val1");
    assert_eq!(entry["state"], "running", "{entry}");
    assert_eq!(fs::read(data.join("f")).expect("base"), b"base\n");
    assert_eq!(
        fs::read_to_string(data.join("runs"))
            .expect("runs")
            .lines()
            .count(),
        4
    );

    // systemctl stop: ExecStop, then the main process exits cleanly.
    let (unit, mut main) = booted.remove("val1").expect("val1");
    let stop = unit
        .command(&unit.exec_stop, None)
        .output()
        .expect("ExecStop");
    assert!(stop.status.success(), "{}", common::text(&stop));
    let status = main.wait().expect("wait");
    assert!(
        status.success(),
        "a stopped node's service exits 0: {status}"
    );
    assert_eq!(node_entry(state, "val1")["state"], "stopped");
    assert!(mounts_under(state).is_empty());

    // disable removes the link and the drop-in; the template stays for other nodes.
    node(state, &["disable", "val1", "--unit-dir", units_s]);
    assert!(!link.exists() && !drop_in.exists());
    assert!(units.join("thinnode-node@.service").is_file());
    assert_eq!(node_entry(state, "val1")["enabled"], false);
}
