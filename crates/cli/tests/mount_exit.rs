//! A mount daemon that dies or exits while files of its mount are open never waits on itself: killed
//! with SIGKILL it is reaped at once, its mountpoint reports ENOTCONN (it does not hang), and
//! `thinnode umount` clears it; on SIGTERM it detaches the busy mount and exits. Every wait has a
//! deadline and a hung FUSE connection is aborted on the way out, so a regression fails the test
//! instead of hanging it. (The layered variant lives in mount_layers.rs.)

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mounts::{
    abort_fuse_connection, exits_within, fuse_connection, is_mounted, statfs_within, Mounted,
};
use common::ok_text as run_ok;
use rand::{RngCore, SeedableRng};
use testkit::{fuse_available, ChildGuard};

/// Long enough for any healthy exit on a loaded machine; a daemon stuck in its exit never gets there.
const DEADLINE: Duration = Duration::from_secs(30);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// An image of three random files in a dir store. Returns (temp dir, image).
fn image_of_three_files() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (name, len) in [("a.bin", 900_000), ("b.bin", 300_000), ("c.bin", 500_000)] {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        fs::write(src.join(name), data).expect("write");
    }
    let img = tmp.path().join("img");
    common::mounts::pack(
        &src,
        &format!("dir://{}", tmp.path().join("store").display()),
        &img,
    );
    (tmp, img)
}

/// A process that opens `files` of `mnt` (reading a little of each) and holds them open until killed.
fn reader_holding(mnt: &Path, files: &[&str]) -> ChildGuard {
    let mut script = String::new();
    for (i, f) in files.iter().enumerate() {
        let fd = i + 3;
        script.push_str(&format!(
            "exec {fd}<'{}' || exit 1; head -c 4096 <&{fd} >/dev/null || exit 1; ",
            mnt.join(f).display()
        ));
    }
    script.push_str("echo ready; exec sleep 600");
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn reader");
    let stdout = child.stdout.take().expect("piped stdout");
    let child = ChildGuard::new(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read from the reader");
    assert_eq!(line.trim(), "ready", "the reader could not open {files:?}");
    child
}

/// A mount of a fresh image of three files (`mount` options `extra`), with its FUSE connection; with
/// `sealed`, c.bin is read whole first, so that its next open is served by passthrough.
fn mount_three_files(extra: &[&str], sealed: bool) -> (tempfile::TempDir, Mounted, u32) {
    let (tmp, img) = image_of_three_files();
    let m = Mounted::start(
        &img,
        &tmp.path().join("mnt"),
        &tmp.path().join("cache"),
        extra,
    );
    let conn = fuse_connection(&m.mnt).expect("the mount's FUSE connection");
    if sealed {
        fs::read(m.mnt.join("c.bin")).expect("read c.bin whole");
        let start = Instant::now();
        while m.metric("thinnode_mount_files_sealed_total") < 1.0 {
            assert!(start.elapsed() < DEADLINE, "c.bin was not sealed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (tmp, m, conn)
}

/// Fails the test on a hung mount, after aborting its FUSE connection so that nothing the test started
/// (the daemon, the reader) stays blocked on it.
fn hung(conn: u32, what: &str) -> ! {
    abort_fuse_connection(conn);
    panic!("{what}");
}

/// Kills the daemon of `m` with SIGKILL while `reader` holds files of the mount open, then checks: the
/// daemon is reaped, the mountpoint answers ENOTCONN, the reader can be killed, `umount` clears it.
fn kill_daemon_under_open_files(mut m: Mounted, mut reader: ChildGuard, conn: u32) {
    m.child.signal(libc::SIGKILL);
    if !exits_within(&mut m.child, DEADLINE) {
        hung(
            conn,
            "the killed daemon was not reaped: its exit waits on its own mount",
        );
    }
    m.child.kill(); // already reaped: only forgets it
    match statfs_within(&m.mnt, DEADLINE) {
        None => hung(conn, "statfs of the dead mount hung"),
        Some(Ok(())) => panic!("the dead mount still answers statfs"),
        Some(Err(e)) => assert!(e.contains("Transport endpoint is not connected"), "{e}"),
    }
    reader.signal(libc::SIGKILL);
    if !exits_within(&mut reader, DEADLINE) {
        hung(conn, "a reader of the dead mount could not exit");
    }
    run_ok(&["umount", s(&m.mnt)]);
    assert!(!is_mounted(&m.mnt), "umount left the dead mount");
}

#[test]
fn a_killed_daemon_with_files_open_on_its_mount_is_reaped_and_the_mount_reports_enotconn() {
    if !fuse_available("a_killed_daemon_with_files_open_on_its_mount_is_reaped") {
        return;
    }
    let (_tmp, m, conn) = mount_three_files(&["--no-passthrough"], false);
    let reader = reader_holding(&m.mnt, &["a.bin", "b.bin", "c.bin"]);
    assert_eq!(m.metric("thinnode_mount_passthrough_opens_total"), 0.0);
    kill_daemon_under_open_files(m, reader, conn);
}

#[test]
fn a_killed_daemon_with_a_passthrough_file_open_is_reaped_and_the_mount_reports_enotconn() {
    if !fuse_available("a_killed_daemon_with_a_passthrough_file_open_is_reaped") {
        return;
    }
    let (_tmp, m, conn) = mount_three_files(&[], true);
    // c.bin is served by passthrough from its sealed cache file, a.bin by the daemon.
    let reader = reader_holding(&m.mnt, &["c.bin", "a.bin"]);
    assert_eq!(m.metric("thinnode_mount_passthrough_opens_total"), 1.0);
    kill_daemon_under_open_files(m, reader, conn);
}

/// SIGTERM while a reader holds files open: the daemon detaches the busy mount (the mountpoint is free
/// at once), gives the open files their grace period and exits; the reader's files then fail.
#[test]
fn a_daemon_asked_to_exit_with_files_open_detaches_its_mount_and_exits() {
    if !fuse_available("a_daemon_asked_to_exit_with_files_open_detaches_its_mount_and_exits") {
        return;
    }
    let (_tmp, mut m, conn) = mount_three_files(&[], true);
    let mnt = m.mnt.clone();
    let mut reader = reader_holding(&mnt, &["a.bin", "c.bin"]);
    let Some(status) = m.child.terminate(DEADLINE) else {
        hung(conn, "the daemon did not exit after SIGTERM");
    };
    assert!(status.success(), "{status:?}: {}", m.log_text());
    assert!(
        m.log_text().contains("detaching"),
        "the busy mount was not detached: {}",
        m.log_text()
    );
    assert!(!is_mounted(&mnt), "the mountpoint is still a mount");
    assert_eq!(fuse_connection(&mnt), None);
    reader.signal(libc::SIGKILL);
    if !exits_within(&mut reader, DEADLINE) {
        hung(conn, "a reader of the detached mount could not exit");
    }
}
