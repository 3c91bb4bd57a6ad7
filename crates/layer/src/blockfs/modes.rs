//! How the open handles of one inode are served: by FUSE passthrough (the kernel reads and writes the
//! backing file itself) or by this process. The kernel forbids mixing the two on one inode, so each inode
//! records which one its open handles use.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::BackingId;

use super::fs::BlocksFs;
use super::state::Node;
use super::BaseFile;

/// How long an open of a base file for writing waits for read-only passthrough handles of it to close.
const PASSTHROUGH_DRAIN: Duration = Duration::from_secs(1);

/// How the open handles of a file are served (handles opened with `FOPEN_DIRECT_IO` are outside the
/// kernel's one-mode rule and not counted).
#[derive(Default)]
pub(super) enum PlainMode {
    /// No handle open.
    #[default]
    Closed,
    /// Reads and writes come to this process (`count` handles).
    Daemon { count: u32 },
    /// Reads (and, for a layer file, writes and mmap) go straight to the backing file in the kernel: the
    /// tree file of a layer file, the base's sealed host-cache file of an unwritten base file opened
    /// read-only (`count` handles).
    Passthrough { backing: Arc<BackingId>, count: u32 },
}

impl BlocksFs {
    /// Counts a new handle of layer file `node`; returns the backing to serve it with passthrough when
    /// the inode is (or may become) served that way. `open_backing` registers `file` with the kernel.
    pub(super) fn plain_open(
        &self,
        node: &Node,
        open_backing: impl FnOnce() -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut mode = node.plain_mode.lock();
        match &mut *mode {
            PlainMode::Passthrough { backing, count } => {
                *count += 1;
                Some(Arc::clone(backing))
            }
            PlainMode::Daemon { count } => {
                *count += 1;
                None
            }
            PlainMode::Closed => {
                if self.passthrough {
                    match open_backing() {
                        Ok(id) => {
                            let backing = Arc::new(id);
                            *mode = PlainMode::Passthrough {
                                backing: Arc::clone(&backing),
                                count: 1,
                            };
                            return Some(backing);
                        }
                        Err(e) => tracing::debug!("passthrough refused: {e}"),
                    }
                }
                *mode = PlainMode::Daemon { count: 1 };
                None
            }
        }
    }

    /// A counted handle of `node` was released.
    pub(super) fn plain_release(&self, node: &Node) {
        let mut mode = node.plain_mode.lock();
        let last = match &mut *mode {
            PlainMode::Daemon { count } | PlainMode::Passthrough { count, .. } => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            PlainMode::Closed => false,
        };
        if last {
            *mode = PlainMode::Closed;
        }
    }

    /// For a read-only open of base file `node`: the passthrough backing (registered by `open_backing`
    /// on the base's local copy) when the file is unwritten, its base has a sealed local copy, and no
    /// handle of it is served by this process; `None` otherwise.
    pub(super) fn base_passthrough(
        &self,
        node: &Node,
        open_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Option<(Arc<BackingId>, Arc<dyn BaseFile>)> {
        if !self.passthrough {
            return None;
        }
        let mut mode = node.plain_mode.lock();
        match &mut *mode {
            PlainMode::Passthrough { backing, count } => {
                let base = self.state.base.as_ref()?.open(node.base.as_deref()?).ok()?;
                *count += 1;
                Some((Arc::clone(backing), base))
            }
            PlainMode::Daemon { .. } => None,
            PlainMode::Closed => {
                let (base, file) = self.state.base_backing(node)?;
                match open_backing(&file) {
                    Ok(id) => {
                        let backing = Arc::new(id);
                        *mode = PlainMode::Passthrough {
                            backing: Arc::clone(&backing),
                            count: 1,
                        };
                        Some((backing, base))
                    }
                    Err(e) => {
                        tracing::debug!("passthrough refused: {e}");
                        None
                    }
                }
            }
        }
    }

    /// Counts a handle of base file `node` served by this process. While read-only handles of it are
    /// served by passthrough (the base's local copy), waits up to [`PASSTHROUGH_DRAIN`] for them to
    /// close: the kernel does not let both kinds share an inode, and those handles would not see this
    /// one's writes. Returns `false` when they stayed open: the handle is then opened with
    /// `FOPEN_DIRECT_IO` (outside the rule, not counted).
    pub(super) fn base_daemon_mode(&self, node: &Node) -> bool {
        let deadline = Instant::now() + PASSTHROUGH_DRAIN;
        loop {
            {
                let mut mode = node.plain_mode.lock();
                match &mut *mode {
                    PlainMode::Daemon { count } => {
                        *count += 1;
                        return true;
                    }
                    PlainMode::Closed => {
                        *mode = PlainMode::Daemon { count: 1 };
                        return true;
                    }
                    PlainMode::Passthrough { .. } => {}
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "base file {}: opened for writing while read-only handles of it are open; those \
                     handles keep reading the base and do not see this handle's writes",
                    node.base.as_deref().unwrap_or(Path::new("?")).display()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
