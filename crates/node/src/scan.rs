//! What a data directory holds, found by one walk that never follows symlinks: node secrets that must
//! not go into a shared image, lock files a running node holds, and the kind of database inside.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::error::{io_err, NodeError, Result};

/// Names of lock files node databases hold while open: bitcoin/litecoin `.lock` (fcntl), LevelDB and
/// RocksDB `LOCK` (fcntl), ParityDB `lock` (flock).
const LOCK_FILE_NAMES: [&str; 3] = [".lock", "LOCK", "lock"];

/// Files litecoin/bitcoin keep about peers; a node started from a base must not inherit them.
pub const PEER_STATE_FILES: [&str; 4] = ["peers.dat", "anchors.dat", "banlist.dat", "banlist.json"];

/// Why a path counts as a node secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum SecretKind {
    /// A Substrate `keystore/` directory holding keys.
    SubstrateKeystore,
    /// A Substrate network key `network/secret_ed25519`.
    SubstrateNetworkKey,
    /// A bitcoin/litecoin `wallet.dat`.
    Wallet,
    /// A bitcoin/litecoin `wallets/` directory holding wallets.
    WalletsDir,
    /// A path named with `--secret-path`.
    Named,
}

/// One secret found in a directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Secret {
    /// Path relative to the scanned root.
    pub relative: PathBuf,
    /// Why it is a secret.
    pub kind: SecretKind,
}

/// Whether `dir` holds at least one non-empty regular file (at any depth).
fn holds_files(dir: &Path) -> bool {
    WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .any(|e| e.file_type().is_file() && e.metadata().is_ok_and(|m| m.len() > 0))
}

/// Node secrets under `root`, outermost paths only (a wallet inside a reported `wallets/` is covered by
/// it), sorted. `named` are extra paths (relative to `root`, or absolute inside it) that count as
/// secrets when they exist.
pub fn find_secrets(root: &Path, named: &[PathBuf]) -> Result<Vec<Secret>> {
    let mut found: Vec<Secret> = Vec::new();
    let mut walker = WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.map_err(|e| walk_err(root, e))?;
        let Ok(relative) = entry.path().strip_prefix(root) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy();
        let parent_name = entry
            .path()
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if entry.file_type().is_dir() {
            match name.as_ref() {
                "keystore" if holds_files(entry.path()) => Some(SecretKind::SubstrateKeystore),
                "wallets" if holds_files(entry.path()) => Some(SecretKind::WalletsDir),
                _ => None,
            }
        } else if name == "secret_ed25519" && parent_name == "network" {
            Some(SecretKind::SubstrateNetworkKey)
        } else if name == "wallet.dat" {
            Some(SecretKind::Wallet)
        } else {
            None
        };
        if let Some(kind) = kind {
            found.push(Secret {
                relative: relative.to_path_buf(),
                kind,
            });
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
        }
    }
    for path in named {
        let relative = relative_inside(root, path)?;
        if fs::symlink_metadata(root.join(&relative)).is_ok() {
            found.push(Secret {
                relative,
                kind: SecretKind::Named,
            });
        }
    }
    found.sort();
    // Keep only outermost paths.
    let mut outer: Vec<Secret> = Vec::new();
    for s in found {
        if !outer.iter().any(|o| s.relative.starts_with(&o.relative)) {
            outer.push(s);
        }
    }
    Ok(outer)
}

/// `path` as a path relative to `root` (accepts relative paths and absolute ones inside `root`); refuses
/// paths that climb out with `..`.
pub fn relative_inside(root: &Path, path: &Path) -> Result<PathBuf> {
    let rel = if path.is_absolute() {
        let root_abs = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        path.strip_prefix(&root_abs)
            .or_else(|_| path.strip_prefix(root))
            .map_err(|_| {
                NodeError::BadArgument(format!(
                    "secret path {} is not inside {}",
                    path.display(),
                    root.display()
                ))
            })?
            .to_path_buf()
    } else {
        path.to_path_buf()
    };
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
        || rel.as_os_str().is_empty()
    {
        return Err(NodeError::BadArgument(format!(
            "secret path {} must name something inside {}",
            path.display(),
            root.display()
        )));
    }
    Ok(rel)
}

fn walk_err(root: &Path, e: walkdir::Error) -> NodeError {
    let path = e.path().unwrap_or(root).to_path_buf();
    let source = e
        .into_io_error()
        .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
    NodeError::Io {
        action: "walk",
        path,
        source,
    }
}

/// Whether another process holds `path` locked, by fcntl (POSIX record lock: bitcoin, LevelDB,
/// RocksDB) or by flock (ParityDB). This process's own fcntl locks never count.
pub fn is_locked_by_other(path: &Path) -> Result<bool> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .or_else(|_| fs::File::open(path))
        .map_err(io_err("open", path))?;
    let fd = file.as_raw_fd();
    // SAFETY: an all-zero flock struct is a valid value; F_GETLK only fills it in.
    let mut query: libc::flock = unsafe { std::mem::zeroed() };
    query.l_type = libc::F_WRLCK as libc::c_short;
    query.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fd is open for the duration of the call and `query` is a valid flock struct.
    if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut query) } == 0
        && query.l_type != libc::F_UNLCK as libc::c_short
    {
        return Ok(true);
    }
    // SAFETY: flock on an owned, open descriptor.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        return Ok(err.raw_os_error() == Some(libc::EWOULDBLOCK));
    }
    // SAFETY: as above; releases the lock just taken.
    unsafe { libc::flock(fd, libc::LOCK_UN) };
    Ok(false)
}

/// Lock files under `root` that a running process holds.
pub fn held_locks(root: &Path) -> Result<Vec<PathBuf>> {
    let mut held = Vec::new();
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(|e| walk_err(root, e))?;
        let name = entry.file_name().to_string_lossy();
        if entry.file_type().is_file()
            && LOCK_FILE_NAMES.contains(&name.as_ref())
            && is_locked_by_other(entry.path())?
        {
            held.push(entry.path().to_path_buf());
        }
    }
    Ok(held)
}

/// The kinds of database found under `root`: `paritydb`, `rocksdb`, `leveldb` (a directory with
/// `metadata` and `index_*`/`table_*` files; one with `CURRENT`, `MANIFEST-*` and `OPTIONS-*`; one with
/// `CURRENT` and `MANIFEST-*` only).
pub fn detect_db_kinds(root: &Path) -> Result<BTreeSet<&'static str>> {
    let mut kinds = BTreeSet::new();
    for entry in WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| walk_err(root, e))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let Ok(read) = fs::read_dir(entry.path()) else {
            continue;
        };
        let names: Vec<String> = read
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let has = |p: &str| names.iter().any(|n| n.starts_with(p));
        if names.iter().any(|n| n == "metadata") && (has("index_") || has("table_")) {
            kinds.insert("paritydb");
        } else if names.iter().any(|n| n == "CURRENT") && has("MANIFEST-") {
            kinds.insert(if has("OPTIONS-") {
                "rocksdb"
            } else {
                "leveldb"
            });
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, body: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, body).expect("write");
    }

    #[test]
    fn finds_every_kind_of_secret_outermost_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "chains/polkadot/network/secret_ed25519", &[7; 32]);
        write(root, "chains/polkadot/keystore/6b657973", b"0xseed");
        write(root, "chains/kusama/keystore/.keep", b"");
        write(root, "regtest/wallets/w1/wallet.dat", b"wallet");
        write(root, "wallet.dat", b"old wallet");
        write(root, "regtest/blocks/blk00000.dat", b"blocks");
        write(root, "my.key", b"k");
        let found =
            find_secrets(root, &[PathBuf::from("my.key"), PathBuf::from("absent")]).expect("scan");
        let rels: Vec<_> = found
            .iter()
            .map(|s| s.relative.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            rels,
            vec![
                "chains/polkadot/keystore",
                "chains/polkadot/network/secret_ed25519",
                "my.key",
                "regtest/wallets",
                "wallet.dat",
            ]
        );
        assert!(relative_inside(root, Path::new("../x")).is_err());
    }

    /// Runs `program args` (which locks `lock` and then sleeps) until `is_locked_by_other` sees the
    /// lock; returns whether it did, after killing the holder.
    fn seen_while_held(lock: &Path, program: &str, args: &[&str]) -> bool {
        let mut holder = std::process::Command::new(program)
            .args(args)
            .spawn()
            .expect("spawn the lock holder");
        let start = std::time::Instant::now();
        let mut seen = false;
        while start.elapsed() < std::time::Duration::from_secs(10) {
            if is_locked_by_other(lock).expect("check") {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = holder.kill();
        let _ = holder.wait();
        seen
    }

    #[test]
    fn detects_a_flocked_and_a_fcntl_locked_file_of_another_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = dir.path().join("lock");
        fs::write(&lock, b"").expect("write");
        let lock_str = lock.to_string_lossy().into_owned();
        assert!(!is_locked_by_other(&lock).expect("check"));
        // flock(2), as ParityDB does; `exec` keeps the lock in the one process that is killed.
        let script = format!("exec 9>>'{lock_str}' && flock -x 9 && exec sleep 30");
        assert!(
            seen_while_held(&lock, "bash", &["-c", &script]),
            "flock held by another process"
        );
        assert!(
            !is_locked_by_other(&lock).expect("check"),
            "released once the holder is gone"
        );
        // fcntl(F_SETLK), as bitcoin, LevelDB and RocksDB do.
        let script = "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\ntime.sleep(30)";
        assert!(
            seen_while_held(&lock, "python3", &["-c", script, &lock_str]),
            "fcntl lock held by another process"
        );
        assert_eq!(held_locks(dir.path()).expect("scan"), Vec::<PathBuf>::new());
    }

    #[test]
    fn detects_database_kinds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "ldb/CURRENT", b"MANIFEST-000001\n");
        write(root, "ldb/MANIFEST-000001", b"");
        write(root, "rdb/CURRENT", b"MANIFEST-000001\n");
        write(root, "rdb/MANIFEST-000001", b"");
        write(root, "rdb/OPTIONS-000005", b"");
        write(root, "pdb/metadata", b"");
        write(root, "pdb/index_00_16", b"");
        let kinds: Vec<_> = detect_db_kinds(root).expect("scan").into_iter().collect();
        assert_eq!(kinds, vec!["leveldb", "paritydb", "rocksdb"]);
    }
}
