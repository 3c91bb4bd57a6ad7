//! A mounted blocks layer: the FUSE session serving it on threads of this process, how it starts
//! (returning once the mount answers) and how it stops (maps made durable, unmount, session joined).

use std::fs as stdfs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};

use super::fs::BlocksFs;
use super::state::LayerState;
use crate::{io_err, Error, Result};

/// FUSE worker threads serving one mount.
const FUSE_THREADS: usize = 4;
/// How long [`BlocksMount::start`] waits for the kernel to answer on the new mount.
const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`BlocksMount::unmount`] waits for the session to end after the unmount.
const SESSION_END_GRACE: Duration = Duration::from_secs(10);

/// A mounted blocks layer served by threads of this process.
pub struct BlocksMount {
    target: PathBuf,
    unmounter: SessionUnmounter,
    session: Option<JoinHandle<io::Result<()>>>,
    state: Arc<LayerState>,
}

impl std::fmt::Debug for BlocksMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlocksMount")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl BlocksMount {
    /// Mounts the filesystem over `state` at `target` (a checked, absolute directory) with source name
    /// `fsname`, serves it on threads of this process, and returns once the mount answers.
    pub(super) fn start(state: LayerState, fsname: String, target: PathBuf) -> Result<BlocksMount> {
        raise_open_file_limit();
        let state = Arc::new(state);
        let filesystem = BlocksFs::new(Arc::clone(&state));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(fsname),
            MountOption::Subtype("thinnode-blocks".into()),
            MountOption::DefaultPermissions,
            MountOption::RW,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let mut session =
            Session::new(filesystem, &target, &config).map_err(io_err("mount FUSE at", &target))?;
        let unmounter = session.unmount_callable();
        let handle = std::thread::Builder::new()
            .name("blocks-fuse".into())
            .spawn(move || session.run())
            .map_err(io_err("start the FUSE session for", &target))?;
        let mut mount = BlocksMount {
            target,
            unmounter,
            session: Some(handle),
            state,
        };
        if let Err(e) = mount.wait_ready(MOUNT_READY_TIMEOUT) {
            let _ = mount.stop();
            return Err(e);
        }
        Ok(mount)
    }

    /// The mount point (absolute).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Whether the FUSE session still serves the mount (false once unmounted from outside, e.g. by
    /// `umount`).
    pub fn is_running(&self) -> bool {
        self.session.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Makes every open file's writes and block map durable, without unmounting.
    pub fn sync(&self) -> Result<()> {
        self.state.sync_all()
    }

    /// Flushes every open file's map, unmounts, and waits for the FUSE session to end.
    pub fn unmount(mut self) -> Result<()> {
        self.stop()
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let parent = self.target.parent().unwrap_or(Path::new("/"));
        let parent_dev = stdfs::metadata(parent)
            .map_err(io_err("stat", parent))?
            .dev();
        let start = Instant::now();
        loop {
            if let Ok(m) = stdfs::metadata(&self.target) {
                if m.dev() != parent_dev {
                    return Ok(());
                }
            }
            if !self.is_running() {
                return Err(Error::MountPrecondition(format!(
                    "the FUSE session for {} ended before the mount answered",
                    self.target.display()
                )));
            }
            if start.elapsed() > timeout {
                return Err(Error::MountPrecondition(format!(
                    "the mount at {} did not answer within {timeout:?}",
                    self.target.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop(&mut self) -> Result<()> {
        let mut result = self.state.sync_all();
        if let Some(handle) = self.session.take() {
            if !handle.is_finished() {
                if let Err(e) = self.unmounter.unmount() {
                    tracing::warn!("unmount {}: {e}; detaching", self.target.display());
                    if let Err(errno) =
                        nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH)
                    {
                        result = result.and(Err(Error::Syscall {
                            syscall: "umount",
                            target: self.target.clone(),
                            errno,
                            explanation: "lazy unmount of a busy mount failed".into(),
                        }));
                    }
                }
            }
            let start = Instant::now();
            while !handle.is_finished() && start.elapsed() < SESSION_END_GRACE {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                match handle.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("FUSE session ended with: {e}"),
                    Err(_) => tracing::error!("FUSE session thread panicked"),
                }
            } else {
                tracing::warn!(
                    "{}: files are still open on the detached mount",
                    self.target.display()
                );
            }
        }
        // Files released while unmounting were synced on release; this catches the rest.
        result.and(self.state.sync_all())
    }
}

impl Drop for BlocksMount {
    fn drop(&mut self) {
        if self.session.is_some() {
            if let Err(e) = self.stop() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// The filesystem holds one descriptor per inode the kernel knows; a node database can have thousands of
/// files, beyond the usual soft limit of 1024. Raises the soft limit to the hard one.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    "cannot raise the open file limit: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}
