//! Mount records: what a running mount leaves in [`RUN_DIR`] (its process, image, cache and stores), so
//! that `umount`, `hydrate` and a later `mount` can find it.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{io_ctx, MountError};
use crate::mountpoint::{listed_as_mount, pid_alive};

/// Where running mounts leave their records.
pub const RUN_DIR: &str = "/run/thinnode/mounts";

/// What a running mount leaves in [`RUN_DIR`] so other commands can find it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// The serving process.
    pub pid: u32,
    /// The image file (absolute).
    pub image: PathBuf,
    /// The mountpoint (absolute).
    pub mountpoint: PathBuf,
    /// The host cache directory.
    pub cache_dir: PathBuf,
    /// The host cache limit in bytes.
    pub cache_max_bytes: u64,
    /// The store URLs given on the command line (empty: the image's).
    pub store_overrides: Vec<String>,
    /// Where metrics are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Another mount of the same process that this one is stacked on (the read-only image below a
    /// write layer); unmounting this mount unmounts that one too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacked_on: Option<PathBuf>,
}

pub(crate) fn record_path(mountpoint: &Path) -> PathBuf {
    let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    Path::new(RUN_DIR).join(format!("{}.json", &hash.to_hex()[..32]))
}

/// The record of the mount at `mountpoint` (absolute), if one was left.
pub fn read_record(mountpoint: &Path) -> Option<MountRecord> {
    let text = fs::read(record_path(mountpoint)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes records left by mount processes that no longer run (killed daemons) and whose mount is gone.
pub(crate) fn prune_dead_records() {
    let Ok(entries) = fs::read_dir(RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let dead = fs::read(&path)
            .ok()
            .and_then(|text| serde_json::from_slice::<MountRecord>(&text).ok())
            // A dead daemon's record stays while its mount is still there: `umount` needs it to find
            // the mount stacked below.
            .is_some_and(|rec| !pid_alive(rec.pid) && !listed_as_mount(&rec.mountpoint));
        if dead {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Writes the record of a mount served by this process, so `unmount_path` can find its daemon.
pub fn write_record(rec: &MountRecord) -> Result<(), MountError> {
    fs::create_dir_all(RUN_DIR).map_err(io_ctx(format!("create {RUN_DIR}")))?;
    let path = record_path(&rec.mountpoint);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let body = serde_json::to_vec_pretty(rec).map_err(|e| MountError::Io {
        context: "encode mount record".into(),
        error: io::Error::other(e),
    })?;
    fs::write(&tmp, body).map_err(io_ctx(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io_ctx(format!("write {}", path.display())))
}

/// Removes the record of the mount at `mountpoint` if process `pid` wrote it.
pub fn remove_record(mountpoint: &Path, pid: u32) {
    if read_record(mountpoint).is_some_and(|r| r.pid == pid) {
        let _ = fs::remove_file(record_path(mountpoint));
    }
}
