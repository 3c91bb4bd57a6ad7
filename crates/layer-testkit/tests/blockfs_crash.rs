//! The blocks layer under failure: the serving process killed with SIGKILL after fsync (every fsynced
//! byte survives a remount), and a full layer filesystem (the writer gets ENOSPC, the layer stays
//! consistent).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use layer::BlocksLayer;
use layer_testkit::posix_suite::pattern;
use testkit::{fuse_available, ChildGuard};

const SERVER: &str = env!("CARGO_BIN_EXE_blocks-mount");

/// Detaches whatever is left mounted at the path when dropped (a killed server's dead mount).
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn start_server(layer_dir: &Path, lower: &Path, mnt: &Path) -> ChildGuard {
    let mut child = Command::new(SERVER)
        .arg(layer_dir)
        .arg(lower)
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn blocks-mount");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard::new(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read READY");
    assert_eq!(line.trim(), "READY", "server did not come up");
    guard
}

#[test]
fn fsynced_writes_survive_sigkill_of_the_server() {
    if !fuse_available("fsynced_writes_survive_sigkill_of_the_server") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (lower, layer_dir, mnt) = (
        tmp.path().join("lower"),
        tmp.path().join("layer"),
        tmp.path().join("mnt"),
    );
    fs::create_dir_all(lower.join("db")).expect("mkdir");
    fs::create_dir_all(&mnt).expect("mkdir");
    let _detach = DetachOnDrop(mnt.clone());
    let base = pattern(1, 1 << 20);
    fs::write(lower.join("db/table"), &base).expect("write base");

    let mut server = start_server(&layer_dir, &lower, &mnt);
    let table = mnt.join("db/table");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&table)
        .expect("open table");
    let mut want = base.clone();
    for (i, at) in [10usize, 200_000, 200_100, 700_000].into_iter().enumerate() {
        let data = pattern(100 + i as u64, 3000);
        f.write_all_at(&data, at as u64).expect("write");
        want[at..at + data.len()].copy_from_slice(&data);
    }
    f.sync_data().expect("fdatasync");
    // Grows the file, then fsync.
    let tail = pattern(200, 5000);
    f.write_all_at(&tail, base.len() as u64).expect("append");
    want.extend_from_slice(&tail);
    f.sync_all().expect("fsync");
    let mut new = File::create(mnt.join("db/new.log")).expect("create");
    new.write_all(b"fsynced line\n").expect("write");
    new.sync_all().expect("fsync new");
    File::open(mnt.join("db"))
        .expect("open dir")
        .sync_all()
        .expect("fsync dir");
    drop(new);
    drop(f);

    server.kill();
    assert!(
        mount::is_stale_mount(&mnt),
        "the killed server should leave a dead mount"
    );

    // mount() detaches the dead mount at its target itself.
    let layer = BlocksLayer::open(&layer_dir).expect("open layer");
    let m = layer.mount(&lower, &mnt).expect("remount");
    let got = fs::read(&table).expect("read table");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "fsynced bytes lost after SIGKILL");
    assert_eq!(
        fs::read(mnt.join("db/new.log")).expect("read new"),
        b"fsynced line\n"
    );
    m.unmount().expect("unmount");
    assert!(fs::read(lower.join("db/table")).expect("lower") == base);
}

/// A tmpfs of `size` mounted at the path, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).expect("mkdir");
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount tmpfs");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

#[test]
fn a_full_layer_gives_enospc_and_stays_consistent() {
    if !fuse_available("a_full_layer_gives_enospc_and_stays_consistent") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (lower, mnt) = (tmp.path().join("lower"), tmp.path().join("mnt"));
    fs::create_dir_all(&lower).expect("mkdir");
    fs::create_dir_all(&mnt).expect("mkdir");
    let small = Tmpfs::mount(&tmp.path().join("small"), "4m");
    let layer_dir = small.0.join("layer");
    let size = 16 << 20;
    let base = pattern(3, size);
    fs::write(lower.join("big"), &base).expect("write base");

    let layer = BlocksLayer::create(&layer_dir, Default::default()).expect("create");
    let m = layer.mount(&lower, &mnt).expect("mount");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("big"))
        .expect("open");
    let chunk = 256 * 1024;
    let mut good = 0usize;
    let err = loop {
        assert!(good < size, "16 MiB fitted into a 4 MiB layer");
        let data = pattern(4 + good as u64, chunk);
        if let Err(e) = f.write_all_at(&data, good as u64) {
            break e;
        }
        if let Err(e) = f.sync_data() {
            break e;
        }
        good += chunk;
    };
    assert!(is_enospc(&err), "writer got {err:?}, not ENOSPC");
    assert!(good > 0, "nothing fitted");
    let check = |got: &[u8]| {
        for at in (0..good).step_by(chunk) {
            assert!(
                got[at..at + chunk] == pattern(4 + at as u64, chunk)[..],
                "written chunk at {at} reads back wrong"
            );
        }
        let after = good + chunk;
        assert!(
            got[after..] == base[after..],
            "base bytes after the full point changed"
        );
    };
    check(&fs::read(mnt.join("big")).expect("read back"));
    // A new file in the full layer: ENOSPC too.
    let mut n = File::create(mnt.join("new")).expect("create new");
    let e = (0..64)
        .find_map(|_| n.write_all(&[7u8; 128 * 1024]).err())
        .expect("a 8 MiB new file should not fit");
    assert!(is_enospc(&e), "new file writer got {e:?}, not ENOSPC");
    drop(n);
    drop(f);
    fs::remove_file(mnt.join("new")).expect("remove new");
    let _ = m.unmount();

    let m = layer.mount(&lower, &mnt).expect("remount");
    let got = fs::read(mnt.join("big")).expect("read after remount");
    assert_eq!(got.len(), size);
    check(&got);
    m.unmount().expect("unmount");
    assert!(fs::read(lower.join("big")).expect("lower") == base);
}
