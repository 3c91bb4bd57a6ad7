//! POSIX behaviour suite for write layers: named checks, each run inside a given directory, so that a
//! plain local directory (the reference), an overlay layer and a blocks layer can be compared check by
//! check.
//!
//! Checks named `base_*` work on a base tree made by [`prepare_base`] (the `base/` directory); in a layer
//! the base tree comes from the read-only lower, so these checks exercise copy-up. The other checks work
//! in a fresh directory `fresh/<check name>/` each.

use std::ffi::CString;
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What a check returns: `Err` holds a precise description of the first deviation.
pub type CheckResult = std::result::Result<(), String>;

/// One named check.
#[derive(Clone, Copy)]
pub struct Check {
    /// Stable name, used in expected-failure lists.
    pub name: &'static str,
    /// Whether the check works on the base tree (`base/`) rather than a fresh directory.
    pub uses_base: bool,
    run: fn(&Path) -> CheckResult,
}

/// The result of one check.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The check's name.
    pub name: &'static str,
    /// Its result.
    pub result: CheckResult,
}

const BLOCK: usize = 64 * 1024;

/// Deterministic pseudo-random content (xorshift64*), so base files can be checked without a copy.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Files of the base tree: path under `base/`, content seed, length.
const BASE_FILES: &[(&str, u64, usize)] = &[
    ("read.bin", 1, 200_000),
    ("mid.bin", 2, 300_000),
    ("trunc.bin", 3, 300_000),
    ("rename_src.bin", 4, 100_000),
    ("over_a.bin", 5, 50_000),
    ("over_b.bin", 6, 60_000),
    ("dir/x.bin", 7, 10_000),
    ("dir/sub/y.bin", 8, 20_000),
    ("rmdir/a", 20, 100),
    ("rmdir/b", 21, 100),
    ("unlink.bin", 9, 70_000),
    ("chmod.bin", 10, 90_000),
    ("xattr.bin", 15, 1_000),
    ("hardlink.bin", 11, 5_000),
    ("mmap.bin", 12, 4 * BLOCK + 100),
    ("append.log", 13, 1_000),
    ("punch.bin", 14, 4 * BLOCK),
    ("concurrent.bin", 16, 8 * (BLOCK / 2 + 3)),
];

fn base_content(name: &str) -> Vec<u8> {
    BASE_FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, seed, len)| pattern(*seed, *len))
        .unwrap_or_default()
}

/// Creates the base tree in `dir/base` (files, nested directories, a symlink, a user xattr).
pub fn prepare_base(dir: &Path) -> io::Result<()> {
    let base = dir.join("base");
    for (name, seed, len) in BASE_FILES {
        let path = base.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, pattern(*seed, *len))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    }
    std::os::unix::fs::symlink("read.bin", base.join("link"))?;
    xattr::set(base.join("xattr.bin"), "user.base", b"base-value")?;
    Ok(())
}

/// All checks, in run order.
pub fn checks() -> Vec<Check> {
    macro_rules! list {
        ($($f:ident $base:literal),* $(,)?) => {
            vec![$(Check { name: stringify!($f), uses_base: $base, run: $f }),*]
        };
    }
    list![
        create_write_read false,
        unlink_open_file false,
        mkdir_rmdir_readdir false,
        rename_file false,
        rename_over_existing false,
        rename_dir_with_contents false,
        rename_dir_over_empty_dir false,
        truncate_inside_block false,
        extend_reads_zeros false,
        fallocate_modes false,
        sparse_write_seek false,
        fsync_fdatasync false,
        o_append false,
        hard_link false,
        symlink false,
        chmod_chown_utimens false,
        xattr_user false,
        mmap_shared_write false,
        concurrent_files false,
        concurrent_one_file false,
        base_read true,
        base_write_middle true,
        base_truncate_then_extend true,
        base_rename_file true,
        base_rename_over_base true,
        base_rename_dir true,
        base_rmdir_recreate true,
        base_unlink_recreate true,
        base_chmod_keeps_data true,
        base_xattr true,
        base_hard_link true,
        base_mmap_write true,
        base_append true,
        base_punch_hole true,
        base_symlink true,
        base_concurrent_writes true,
    ]
}

/// Runs every check in `dir` (which holds the base tree from [`prepare_base`], directly or via a lower
/// layer) and returns one outcome per check. A check that panics is reported as failed.
pub fn run(dir: &Path) -> Vec<Outcome> {
    checks().into_iter().map(|c| run_check(dir, &c)).collect()
}

/// Runs one check in `dir`.
pub fn run_check(dir: &Path, check: &Check) -> Outcome {
    let work = if check.uses_base {
        Ok(dir.join("base"))
    } else {
        let d = dir.join("fresh").join(check.name);
        fs::create_dir_all(&d)
            .map(|()| d)
            .map_err(|e| format!("create fresh dir: {e}"))
    };
    let result = work.and_then(|w| {
        let f = check.run;
        std::panic::catch_unwind(move || f(&w))
            .unwrap_or_else(|_| Err("check panicked".to_string()))
    });
    Outcome {
        name: check.name,
        result,
    }
}

/// Names of the failed checks.
pub fn failed(outcomes: &[Outcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.name)
        .collect()
}

trait Ctx<T> {
    fn ctx(self, what: &str) -> std::result::Result<T, String>;
}

impl<T, E: Display> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> std::result::Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CheckResult {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> CheckResult {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: length {} instead of {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!("{what}: first difference at byte {i}")),
    }
}

fn read(path: &Path) -> std::result::Result<Vec<u8>, String> {
    fs::read(path).ctx(&format!("read {}", path.display()))
}

fn cstring(p: &Path) -> std::result::Result<CString, String> {
    CString::new(p.as_os_str().as_encoded_bytes()).ctx("path")
}

fn errno_of(rc: i64) -> std::result::Result<i64, String> {
    if rc < 0 {
        Err(io::Error::last_os_error().to_string())
    } else {
        Ok(rc)
    }
}

fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> CheckResult {
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    errno_of(rc.into()).map(|_| ()).ctx("fallocate")
}

fn seek(file: &File, offset: u64, whence: i32) -> std::result::Result<i64, String> {
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, whence) };
    errno_of(rc)
}

// ---- fresh-directory checks ----

fn create_write_read(d: &Path) -> CheckResult {
    let p = d.join("f");
    let data = pattern(100, 3 * BLOCK + 17);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&p)
        .ctx("create")?;
    f.write_all(&data).ctx("write")?;
    drop(f);
    same_bytes("read back", &read(&p)?, &data)?;
    let again = OpenOptions::new().create_new(true).write(true).open(&p);
    ensure(
        again
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::AlreadyExists),
        || format!("O_EXCL on an existing file gave {again:?}"),
    )
}

fn unlink_open_file(d: &Path) -> CheckResult {
    let p = d.join("f");
    fs::write(&p, b"still here").ctx("write")?;
    let mut f = File::open(&p).ctx("open")?;
    fs::remove_file(&p).ctx("unlink")?;
    ensure(!p.exists(), || "file visible after unlink".into())?;
    let mut s = String::new();
    f.read_to_string(&mut s).ctx("read after unlink")?;
    ensure(s == "still here", || format!("open fd read {s:?}"))
}

fn mkdir_rmdir_readdir(d: &Path) -> CheckResult {
    fs::create_dir(d.join("a")).ctx("mkdir")?;
    for i in 0..50 {
        fs::write(d.join("a").join(format!("e{i}")), b"x").ctx("create entry")?;
    }
    let n = fs::read_dir(d.join("a")).ctx("readdir")?.count();
    ensure(n == 50, || format!("readdir listed {n} entries, want 50"))?;
    let err = fs::remove_dir(d.join("a"));
    ensure(
        err.as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTEMPTY)),
        || format!("rmdir of a non-empty dir gave {err:?}"),
    )?;
    for i in 0..50 {
        fs::remove_file(d.join("a").join(format!("e{i}"))).ctx("unlink entry")?;
    }
    fs::remove_dir(d.join("a")).ctx("rmdir")?;
    ensure(!d.join("a").exists(), || "dir still there".into())
}

fn rename_file(d: &Path) -> CheckResult {
    fs::write(d.join("a"), b"content").ctx("write")?;
    fs::rename(d.join("a"), d.join("b")).ctx("rename")?;
    ensure(!d.join("a").exists(), || "source still exists".into())?;
    same_bytes("target", &read(&d.join("b"))?, b"content")
}

fn rename_over_existing(d: &Path) -> CheckResult {
    fs::write(d.join("a"), b"new").ctx("write a")?;
    fs::write(d.join("b"), b"old content").ctx("write b")?;
    let held = File::open(d.join("b")).ctx("open b")?;
    fs::rename(d.join("a"), d.join("b")).ctx("rename over")?;
    same_bytes("target", &read(&d.join("b"))?, b"new")?;
    let mut old = Vec::new();
    (&held).read_to_end(&mut old).ctx("read replaced file")?;
    same_bytes("fd of replaced file", &old, b"old content")
}

fn rename_dir_with_contents(d: &Path) -> CheckResult {
    fs::create_dir_all(d.join("a/sub")).ctx("mkdir")?;
    fs::write(d.join("a/sub/f"), b"deep").ctx("write")?;
    fs::rename(d.join("a"), d.join("b")).ctx("rename dir")?;
    ensure(!d.join("a").exists(), || "source dir still exists".into())?;
    same_bytes("moved file", &read(&d.join("b/sub/f"))?, b"deep")
}

fn rename_dir_over_empty_dir(d: &Path) -> CheckResult {
    fs::create_dir(d.join("a")).ctx("mkdir a")?;
    fs::write(d.join("a/f"), b"x").ctx("write")?;
    fs::create_dir(d.join("b")).ctx("mkdir b")?;
    fs::rename(d.join("a"), d.join("b")).ctx("rename over empty dir")?;
    same_bytes("moved", &read(&d.join("b/f"))?, b"x")?;
    fs::create_dir(d.join("c")).ctx("mkdir c")?;
    fs::write(d.join("c/g"), b"y").ctx("write")?;
    let err = fs::rename(d.join("c"), d.join("b"));
    ensure(
        err.as_ref()
            .is_err_and(|e| matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST))),
        || format!("rename over a non-empty dir gave {err:?}"),
    )
}

fn truncate_inside_block(d: &Path) -> CheckResult {
    let p = d.join("f");
    let data = pattern(101, 3 * BLOCK);
    fs::write(&p, &data).ctx("write")?;
    let f = OpenOptions::new().write(true).open(&p).ctx("open")?;
    let cut = BLOCK + 1234;
    f.set_len(cut as u64).ctx("truncate")?;
    same_bytes("after shrink", &read(&p)?, &data[..cut])?;
    f.set_len(2 * BLOCK as u64).ctx("extend")?;
    let mut want = data[..cut].to_vec();
    want.resize(2 * BLOCK, 0);
    same_bytes(
        "after re-extend (old bytes must not reappear)",
        &read(&p)?,
        &want,
    )
}

fn extend_reads_zeros(d: &Path) -> CheckResult {
    let p = d.join("f");
    fs::write(&p, b"abc").ctx("write")?;
    let f = OpenOptions::new().write(true).open(&p).ctx("open")?;
    f.set_len(10 * BLOCK as u64).ctx("extend")?;
    f.write_all_at(b"end", 10 * BLOCK as u64)
        .ctx("write at end")?;
    let mut want = b"abc".to_vec();
    want.resize(10 * BLOCK, 0);
    want.extend_from_slice(b"end");
    same_bytes("extended file", &read(&p)?, &want)
}

fn fallocate_modes(d: &Path) -> CheckResult {
    let p = d.join("f");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .ctx("create")?;
    fallocate(&f, 0, 0, 4 * BLOCK as u64)?;
    let m = f.metadata().ctx("stat")?;
    ensure(m.len() == 4 * BLOCK as u64, || {
        format!("size {} after fallocate", m.len())
    })?;
    ensure(m.blocks() * 512 >= 4 * BLOCK as u64, || {
        format!("only {} bytes allocated after fallocate", m.blocks() * 512)
    })?;
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 8 * BLOCK as u64)?;
    let len = f.metadata().ctx("stat")?.len();
    ensure(len == 4 * BLOCK as u64, || {
        format!("KEEP_SIZE changed the size to {len}")
    })?;
    let data = pattern(102, 4 * BLOCK);
    f.write_all_at(&data, 0).ctx("write")?;
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        BLOCK as u64 + 100,
        BLOCK as u64,
    )?;
    let mut want = data;
    want[BLOCK + 100..2 * BLOCK + 100].fill(0);
    same_bytes("after punch hole", &read(&p)?, &want)
}

fn sparse_write_seek(d: &Path) -> CheckResult {
    let p = d.join("f");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .ctx("create")?;
    let far = 64 * BLOCK as u64;
    f.write_all_at(b"head", 0).ctx("write head")?;
    f.write_all_at(b"tail", far).ctx("write tail")?;
    f.sync_all().ctx("fsync")?;
    let m = f.metadata().ctx("stat")?;
    ensure(m.len() == far + 4, || format!("size {}", m.len()))?;
    ensure(m.blocks() * 512 < far / 2, || {
        format!("{} bytes allocated for a sparse file", m.blocks() * 512)
    })?;
    let hole = seek(&f, 0, libc::SEEK_HOLE)? as u64;
    ensure(hole >= 4 && hole <= far, || {
        format!("SEEK_HOLE from 0 gave {hole}")
    })?;
    let data = seek(&f, 4096, libc::SEEK_DATA)? as u64;
    ensure(data > 4 && data <= far, || {
        format!("SEEK_DATA from 4096 gave {data}")
    })?;
    let mut buf = vec![0xffu8; 4096];
    f.read_exact_at(&mut buf, far / 2).ctx("read hole")?;
    ensure(buf.iter().all(|&b| b == 0), || "hole reads non-zero".into())
}

fn fsync_fdatasync(d: &Path) -> CheckResult {
    let p = d.join("f");
    let mut f = File::create(&p).ctx("create")?;
    f.write_all(b"durable").ctx("write")?;
    f.sync_data().ctx("fdatasync")?;
    f.write_all(b" twice").ctx("write")?;
    f.sync_all().ctx("fsync")?;
    File::open(d).ctx("open dir")?.sync_all().ctx("fsync dir")?;
    same_bytes("read back", &read(&p)?, b"durable twice")
}

fn o_append(d: &Path) -> CheckResult {
    let p = d.join("log");
    fs::write(&p, b"start;").ctx("write")?;
    let open = || {
        OpenOptions::new()
            .append(true)
            .open(&p)
            .ctx("open O_APPEND")
    };
    let (mut a, mut b) = (open()?, open()?);
    for i in 0..10 {
        a.write_all(format!("a{i};").as_bytes()).ctx("append a")?;
        b.write_all(format!("b{i};").as_bytes()).ctx("append b")?;
    }
    let want: String = std::iter::once("start;".to_string())
        .chain((0..10).map(|i| format!("a{i};b{i};")))
        .collect();
    same_bytes("log", &read(&p)?, want.as_bytes())
}

/// Hard-links `first` as `second`, checks both names are one inode with two links, then writes
/// `bytes` at offset 0 through `second`.
fn link_then_write_through(first: &Path, second: &Path, bytes: &[u8]) -> CheckResult {
    fs::hard_link(first, second).ctx("link")?;
    let (m1, m2) = (
        fs::metadata(first).ctx("stat first name")?,
        fs::metadata(second).ctx("stat second name")?,
    );
    ensure(m1.nlink() == 2 && m1.ino() == m2.ino(), || {
        format!("nlink {} ino {} vs {}", m1.nlink(), m1.ino(), m2.ino())
    })?;
    OpenOptions::new()
        .write(true)
        .open(second)
        .ctx("open second name")?
        .write_all_at(bytes, 0)
        .ctx("write via second name")
}

fn hard_link(d: &Path) -> CheckResult {
    fs::write(d.join("a"), b"one").ctx("write")?;
    link_then_write_through(&d.join("a"), &d.join("b"), b"ONE")?;
    same_bytes("a after writing b", &read(&d.join("a"))?, b"ONE")?;
    fs::remove_file(d.join("a")).ctx("unlink a")?;
    let n = fs::metadata(d.join("b")).ctx("stat b")?.nlink();
    ensure(n == 1, || format!("nlink {n} after unlink"))
}

fn symlink(d: &Path) -> CheckResult {
    fs::write(d.join("target"), b"t").ctx("write")?;
    std::os::unix::fs::symlink("target", d.join("l")).ctx("symlink")?;
    std::os::unix::fs::symlink("/nonexistent/x", d.join("dangling")).ctx("symlink")?;
    let t = fs::read_link(d.join("l")).ctx("readlink")?;
    ensure(t == Path::new("target"), || format!("readlink {t:?}"))?;
    same_bytes("through link", &read(&d.join("l"))?, b"t")?;
    let m = fs::symlink_metadata(d.join("dangling")).ctx("lstat")?;
    ensure(m.file_type().is_symlink(), || "lstat: not a symlink".into())?;
    ensure(!d.join("dangling").exists(), || {
        "dangling link resolves".into()
    })
}

fn chmod_chown_utimens(d: &Path) -> CheckResult {
    let p = d.join("f");
    fs::write(&p, b"x").ctx("write")?;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).ctx("chmod")?;
    let mode = fs::metadata(&p).ctx("stat")?.mode() & 0o7777;
    ensure(mode == 0o640, || format!("mode {mode:o}"))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&p, Some(1234), Some(5678)).ctx("chown")?;
        let m = fs::metadata(&p).ctx("stat")?;
        ensure(m.uid() == 1234 && m.gid() == 5678, || {
            format!("owner {}:{}", m.uid(), m.gid())
        })?;
    }
    let when = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let c = cstring(&p)?;
    let ts = [
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 123_456_789,
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    errno_of(rc.into()).ctx("utimensat")?;
    let m = fs::metadata(&p).ctx("stat")?;
    let mtime = m.modified().ctx("mtime")?;
    ensure(mtime == when, || format!("mtime {mtime:?}"))?;
    ensure(m.atime() == 1_500_000_000 && m.atime_nsec() == 5, || {
        format!("atime {}.{}", m.atime(), m.atime_nsec())
    })
}

fn xattr_user(d: &Path) -> CheckResult {
    let p = d.join("f");
    fs::write(&p, b"x").ctx("write")?;
    xattr::set(&p, "user.a", b"1").ctx("setxattr a")?;
    xattr::set(&p, "user.b", &pattern(103, 2000)).ctx("setxattr b")?;
    let a = xattr::get(&p, "user.a").ctx("getxattr")?;
    ensure(a.as_deref() == Some(&b"1"[..]), || {
        format!("user.a = {a:?}")
    })?;
    let b = xattr::get(&p, "user.b")
        .ctx("getxattr")?
        .unwrap_or_default();
    same_bytes("user.b", &b, &pattern(103, 2000))?;
    let names: Vec<_> = xattr::list(&p).ctx("listxattr")?.collect();
    ensure(
        names.iter().any(|n| n == "user.a") && names.iter().any(|n| n == "user.b"),
        || format!("listxattr {names:?}"),
    )?;
    xattr::remove(&p, "user.a").ctx("removexattr")?;
    let gone = xattr::get(&p, "user.a").ctx("getxattr")?;
    ensure(gone.is_none(), || "user.a still there".into())
}

fn mmap_write_and_check(p: &Path, len: usize, want_before: &[u8]) -> CheckResult {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .ctx("open")?;
    // SAFETY: the file is not truncated while mapped by this check.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.ctx("mmap shared")?;
    same_bytes(
        "mapped bytes",
        &map[..len.min(want_before.len())],
        want_before,
    )?;
    let patch = pattern(104, BLOCK);
    let at = BLOCK + 100;
    map[at..at + BLOCK].copy_from_slice(&patch);
    map.flush().ctx("msync")?;
    let mut want = want_before.to_vec();
    want[at..at + BLOCK].copy_from_slice(&patch);
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0).ctx("pread after msync")?;
    same_bytes("read(2) after msync", &buf, &want)?;
    drop(map);
    drop(f);
    same_bytes("after reopen", &read(p)?, &want)
}

fn mmap_shared_write(d: &Path) -> CheckResult {
    let p = d.join("f");
    let len = 4 * BLOCK;
    let f = File::create(&p).ctx("create")?;
    f.set_len(len as u64).ctx("set_len")?;
    drop(f);
    mmap_write_and_check(&p, len, &vec![0u8; len])
}

fn concurrent_files(d: &Path) -> CheckResult {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                s.spawn(move || -> CheckResult {
                    let p = d.join(format!("f{t}"));
                    let data = pattern(200 + t, 2 * BLOCK + 7);
                    for _ in 0..20 {
                        fs::write(&p, &data).ctx("write")?;
                        same_bytes("read back", &read(&p)?, &data)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
    })
}

fn concurrent_one_file(d: &Path) -> CheckResult {
    let p = d.join("f");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .ctx("create")?;
    f.set_len(8 * (BLOCK / 2 + 3) as u64).ctx("set_len")?;
    write_slices_concurrently(&p, &f)
}

/// 8 threads write (20 times) and read back their own slice of `f` (slices straddle block borders),
/// then the whole file must hold every thread's slice.
fn write_slices_concurrently(p: &Path, f: &File) -> CheckResult {
    let slice = BLOCK / 2 + 3;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                s.spawn(move || -> CheckResult {
                    let data = pattern(300 + t, slice);
                    let at = t * slice as u64;
                    let mut buf = vec![0u8; slice];
                    for _ in 0..20 {
                        f.write_all_at(&data, at).ctx("pwrite")?;
                        f.read_exact_at(&mut buf, at).ctx("pread")?;
                        same_bytes("own slice", &buf, &data)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
    })?;
    let want: Vec<u8> = (0..8u64).flat_map(|t| pattern(300 + t, slice)).collect();
    same_bytes("whole file", &read(p)?, &want)
}

// ---- base-tree checks (copy-up) ----

fn base_read(b: &Path) -> CheckResult {
    same_bytes(
        "read.bin",
        &read(&b.join("read.bin"))?,
        &base_content("read.bin"),
    )?;
    same_bytes(
        "dir/sub/y.bin",
        &read(&b.join("dir/sub/y.bin"))?,
        &base_content("dir/sub/y.bin"),
    )
}

fn base_write_middle(b: &Path) -> CheckResult {
    let p = b.join("mid.bin");
    let f = OpenOptions::new().write(true).open(&p).ctx("open")?;
    let at = 2 * BLOCK - 50;
    f.write_all_at(b"0123456789", at as u64).ctx("pwrite")?;
    f.sync_data().ctx("fdatasync")?;
    let mut want = base_content("mid.bin");
    want[at..at + 10].copy_from_slice(b"0123456789");
    same_bytes("mid.bin", &read(&p)?, &want)
}

fn base_truncate_then_extend(b: &Path) -> CheckResult {
    let p = b.join("trunc.bin");
    let f = OpenOptions::new().write(true).open(&p).ctx("open")?;
    let cut = BLOCK + 999;
    f.set_len(cut as u64).ctx("truncate")?;
    f.set_len(3 * BLOCK as u64).ctx("extend")?;
    let mut want = base_content("trunc.bin");
    want.truncate(cut);
    want.resize(3 * BLOCK, 0);
    same_bytes("trunc.bin", &read(&p)?, &want)
}

/// Renames base file `from` to `to` in `b`: the source is gone and the target holds `from`'s base bytes.
fn rename_base_file(b: &Path, from: &str, to: &str) -> CheckResult {
    fs::rename(b.join(from), b.join(to)).ctx("rename")?;
    ensure(!b.join(from).exists(), || "source still there".into())?;
    same_bytes(to, &read(&b.join(to))?, &base_content(from))
}

fn base_rename_file(b: &Path) -> CheckResult {
    rename_base_file(b, "rename_src.bin", "renamed.bin")
}

fn base_rename_over_base(b: &Path) -> CheckResult {
    rename_base_file(b, "over_a.bin", "over_b.bin")
}

fn base_rename_dir(b: &Path) -> CheckResult {
    fs::rename(b.join("dir"), b.join("moved_dir")).ctx("rename base dir")?;
    ensure(!b.join("dir").exists(), || "source dir still there".into())?;
    same_bytes(
        "moved_dir/sub/y.bin",
        &read(&b.join("moved_dir/sub/y.bin"))?,
        &base_content("dir/sub/y.bin"),
    )?;
    fs::create_dir(b.join("dir")).ctx("recreate dir")?;
    let n = fs::read_dir(b.join("dir")).ctx("readdir")?.count();
    ensure(n == 0, || format!("recreated dir lists {n} entries"))
}

fn base_rmdir_recreate(b: &Path) -> CheckResult {
    fs::remove_dir_all(b.join("rmdir")).ctx("rm -r")?;
    ensure(!b.join("rmdir").exists(), || "dir still there".into())?;
    fs::create_dir(b.join("rmdir")).ctx("mkdir")?;
    let names: Vec<_> = fs::read_dir(b.join("rmdir"))
        .ctx("readdir")?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    ensure(names.is_empty(), || {
        format!("recreated dir shows old entries {names:?}")
    })
}

fn base_unlink_recreate(b: &Path) -> CheckResult {
    let p = b.join("unlink.bin");
    fs::remove_file(&p).ctx("unlink")?;
    ensure(!p.exists(), || "still visible".into())?;
    let listed = fs::read_dir(b)
        .ctx("readdir")?
        .any(|e| e.is_ok_and(|e| e.file_name() == "unlink.bin"));
    ensure(!listed, || "readdir still lists it".into())?;
    fs::write(&p, b"recreated").ctx("recreate")?;
    same_bytes("recreated", &read(&p)?, b"recreated")
}

fn base_chmod_keeps_data(b: &Path) -> CheckResult {
    let p = b.join("chmod.bin");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).ctx("chmod")?;
    let mode = fs::metadata(&p).ctx("stat")?.mode() & 0o7777;
    ensure(mode == 0o600, || format!("mode {mode:o}"))?;
    same_bytes("data after chmod", &read(&p)?, &base_content("chmod.bin"))
}

fn base_xattr(b: &Path) -> CheckResult {
    let p = b.join("xattr.bin");
    let v = xattr::get(&p, "user.base").ctx("getxattr")?;
    ensure(v.as_deref() == Some(&b"base-value"[..]), || {
        format!("user.base = {v:?}")
    })?;
    xattr::set(&p, "user.added", b"new").ctx("setxattr")?;
    let v = xattr::get(&p, "user.added").ctx("getxattr")?;
    ensure(v.as_deref() == Some(&b"new"[..]), || {
        format!("user.added = {v:?}")
    })?;
    same_bytes("data", &read(&p)?, &base_content("xattr.bin"))
}

fn base_hard_link(b: &Path) -> CheckResult {
    link_then_write_through(&b.join("hardlink.bin"), &b.join("hardlink2.bin"), b"XY")?;
    let mut want = base_content("hardlink.bin");
    want[..2].copy_from_slice(b"XY");
    same_bytes("other name", &read(&b.join("hardlink.bin"))?, &want)
}

fn base_mmap_write(b: &Path) -> CheckResult {
    let want = base_content("mmap.bin");
    mmap_write_and_check(&b.join("mmap.bin"), want.len(), &want)
}

fn base_append(b: &Path) -> CheckResult {
    let p = b.join("append.log");
    OpenOptions::new()
        .append(true)
        .open(&p)
        .ctx("open O_APPEND")?
        .write_all(b"appended")
        .ctx("append")?;
    let mut want = base_content("append.log");
    want.extend_from_slice(b"appended");
    same_bytes("log", &read(&p)?, &want)
}

fn base_punch_hole(b: &Path) -> CheckResult {
    let p = b.join("punch.bin");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(0)
        .open(&p)
        .ctx("open")?;
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        BLOCK as u64 / 2,
        2 * BLOCK as u64,
    )?;
    let mut want = base_content("punch.bin");
    want[BLOCK / 2..BLOCK / 2 + 2 * BLOCK].fill(0);
    same_bytes("after punch", &read(&p)?, &want)
}

fn base_concurrent_writes(b: &Path) -> CheckResult {
    let p = b.join("concurrent.bin");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .ctx("open")?;
    write_slices_concurrently(&p, &f)
}

fn base_symlink(b: &Path) -> CheckResult {
    let t = fs::read_link(b.join("link")).ctx("readlink")?;
    ensure(t == Path::new("read.bin"), || format!("readlink {t:?}"))?;
    same_bytes(
        "through link",
        &read(&b.join("link"))?,
        &base_content("read.bin"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_seed_dependent() {
        assert_eq!(pattern(1, 100), pattern(1, 100));
        assert_ne!(pattern(1, 100), pattern(2, 100));
        assert_eq!(pattern(3, 13).len(), 13);
    }

    #[test]
    fn check_names_are_unique() {
        let mut names: Vec<_> = checks().iter().map(|c| c.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn same_bytes_reports_first_difference() {
        assert!(same_bytes("x", b"abc", b"abc").is_ok());
        assert_eq!(
            same_bytes("x", b"abd", b"abc"),
            Err("x: first difference at byte 2".to_string())
        );
        assert!(same_bytes("x", b"ab", b"abc").is_err());
    }
}
