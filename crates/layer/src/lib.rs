//! Write layers: a node's own writes kept apart from the read-only base image, in one of two kinds.
//!
//! - **overlay** ([`OverlayLayer`]): kernel overlayfs, the image mount as the lower dir; good for
//!   databases that write new files (RocksDB, LevelDB).
//! - **blocks** ([`BlocksLayer`]): block-level copy-on-write in thinnode's own writable FUSE filesystem;
//!   a write to a base file stores only the blocks it touches (ParityDB opens every file read-write).
//!
//! A layer lives in one directory. Its kind and options are recorded in `DIR/layer.json`
//! ([`LayerMetadata`]) so that any tool (`thinnode layer du|reset`, the mount daemon) can recognise the
//! layer and mount it the same way again; [`du`] and [`reset`] work on either kind. [`LayeredMount`] is
//! what a node runs: the image mounted read-only inside the layer directory and the layer on top, served
//! by one process.
//!
//! Layout: `lib.rs` (metadata, errors, dispatch), `overlay.rs`, `blocks.rs` (the per-file block engine,
//! independent of FUSE), `blockfs/` (the blocks layer's filesystem: `mod.rs` the layer directory,
//! `mounted.rs` the FUSE session, `state.rs` the inode and handle tables, `fs.rs` the request handlers,
//! `files.rs` open files, `modes.rs` passthrough or daemon per inode, `tree.rs` the on-disk tree and its
//! materialisation, `sys.rs` system calls), `stack.rs` ([`LayeredMount`]), `usage.rs` ([`du`]).

#![deny(missing_docs)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod blockfs;
mod blocks;
mod overlay;
mod stack;
mod usage;

pub use blockfs::{BaseFile, BaseFiles, BlocksLayer, BlocksMount, BlocksOptions};
pub use overlay::{OverlayLayer, OverlayOptions};
pub use stack::{LayeredMount, LOWER_DIR};
pub use usage::LayerUsage;

/// Name of the metadata file inside a layer directory.
pub const METADATA_FILE: &str = "layer.json";

/// Version of the metadata format written by this build.
pub const METADATA_VERSION: u32 = 1;

/// Errors of the layer library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path of the layer.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The directory holds no layer metadata.
    #[error("{0} is not a thinnode layer directory (no {METADATA_FILE})")]
    NotALayer(PathBuf),
    /// The metadata file cannot be parsed.
    #[error("layer metadata {path} is invalid: {reason}")]
    BadMetadata {
        /// The metadata file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The layer exists but has a different kind than requested.
    #[error("{path} is a {found} layer, not a {wanted} layer")]
    WrongKind {
        /// The layer directory.
        path: PathBuf,
        /// The kind recorded in the metadata.
        found: LayerKind,
        /// The kind the caller asked for.
        wanted: LayerKind,
    },
    /// The layer is mounted, so the operation is refused.
    #[error("layer {layer} is mounted at {}; unmount it first", .mounts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Mounted {
        /// The layer directory.
        layer: PathBuf,
        /// Where it is mounted.
        mounts: Vec<PathBuf>,
    },
    /// A path cannot be passed to overlayfs' option string.
    #[error(
        "path {0} cannot be used by overlayfs: it contains ',', ':' or a newline, or is not UTF-8"
    )]
    UnsupportedPath(PathBuf),
    /// A precondition of mount(2) does not hold; the message says which.
    #[error("cannot mount overlay: {0}")]
    MountPrecondition(String),
    /// mount(2) or umount(2) failed; the message explains the errno.
    #[error("{syscall} {target}: {errno}: {explanation}")]
    Syscall {
        /// `mount` or `umount`.
        syscall: &'static str,
        /// The mount target.
        target: PathBuf,
        /// The errno returned.
        errno: nix::errno::Errno,
        /// What this errno means here.
        explanation: String,
    },
}

/// Result type of the layer library.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The kind of a write layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Kernel overlayfs: the read-only mount is the lower dir, `DIR/upper` and `DIR/work` hold the writes.
    Overlay,
    /// Block-level copy-on-write inside thinnode's own writable FUSE filesystem (`DIR/tree`, `DIR/maps`).
    Blocks,
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerKind::Overlay => "overlay",
            LayerKind::Blocks => "blocks",
        })
    }
}

/// The content of `DIR/layer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMetadata {
    /// Metadata format version ([`METADATA_VERSION`]).
    pub version: u32,
    /// The layer kind.
    pub kind: LayerKind,
    /// Options of an overlay layer (present iff `kind` is overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayOptions>,
    /// Options of a blocks layer (present iff `kind` is blocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<BlocksOptions>,
}

impl LayerMetadata {
    /// Reads the metadata of the layer in `dir`.
    pub fn read(dir: &Path) -> Result<LayerMetadata> {
        let path = dir.join(METADATA_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotALayer(dir.to_path_buf()))
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let meta: LayerMetadata = serde_json::from_str(&text).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if meta.version != METADATA_VERSION {
            return Err(Error::BadMetadata {
                path,
                reason: format!(
                    "version {} (this build reads version {METADATA_VERSION})",
                    meta.version
                ),
            });
        }
        Ok(meta)
    }

    /// Reads the metadata of the layer in `dir`, which must be a layer of `kind` ([`Error::WrongKind`]
    /// otherwise).
    pub fn read_kind(dir: &Path, kind: LayerKind) -> Result<LayerMetadata> {
        let meta = LayerMetadata::read(dir)?;
        if meta.kind != kind {
            return Err(Error::WrongKind {
                path: dir.to_path_buf(),
                found: meta.kind,
                wanted: kind,
            });
        }
        Ok(meta)
    }

    /// Writes the metadata durably (temporary file, fsync, rename, fsync of the directory).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(METADATA_FILE);
        let tmp = dir.join(format!("{METADATA_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        io::Write::write_all(&mut &file, text.as_bytes()).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", dir))?;
        Ok(())
    }
}

/// Creates `dir` if missing for a new layer, refusing a directory that already holds one; returns the
/// directory's canonical path.
pub(crate) fn new_layer_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    match LayerMetadata::read(dir) {
        Err(Error::NotALayer(_)) => {}
        Ok(meta) => {
            return Err(Error::BadMetadata {
                path: dir.join(METADATA_FILE),
                reason: format!("a {} layer already exists here", meta.kind),
            })
        }
        Err(e) => return Err(e),
    }
    fs::canonicalize(dir).map_err(io_err("resolve", dir))
}

/// Bytes used by the layer in `dir`, whatever its kind.
pub fn du(dir: &Path) -> Result<LayerUsage> {
    let meta = LayerMetadata::read(dir)?;
    match meta.kind {
        LayerKind::Overlay => OverlayLayer::open(dir)?.du(),
        LayerKind::Blocks => BlocksLayer::open(dir)?.du(),
    }
}

/// Drops the contents of the layer in `dir`, whatever its kind; refused while the layer is mounted.
pub fn reset(dir: &Path) -> Result<()> {
    let meta = LayerMetadata::read(dir)?;
    match meta.kind {
        LayerKind::Overlay => OverlayLayer::open(dir)?.reset(),
        LayerKind::Blocks => BlocksLayer::open(dir)?.reset(),
    }
}
