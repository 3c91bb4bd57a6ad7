//! The `blocks` layer: a writable FUSE filesystem that presents a read-only lower directory (in
//! production thinnode's FUSE mount of the image) merged with the node's own writes, where a write to a
//! base file stores only the blocks it touches (see [`crate::blocks`]).
//!
//! Layer directory:
//!
//! ```text
//! DIR/layer.json   {"version": 1, "kind": "blocks", "blocks": {"block_size": 4096}}
//! DIR/tree/        the merged namespace as a real directory tree, materialised lazily per directory
//! DIR/maps/<ino>   block map of the base-backed tree file whose st_ino is <ino>
//! ```
//!
//! A tree directory not yet materialised carries the xattr `trusted.thinnode.lower` naming its lower
//! directory; its first use creates the lower entries in the tree (regular files as sparse files of the
//! base size marked with `trusted.thinnode.base`), then drops the marker. From then on the tree is the
//! truth: unlink, rename, link, chmod ... are plain operations on it, and a renamed directory that was
//! never materialised keeps its marker, so it still shows its base entries.

mod files;
mod fs;
mod modes;
mod mounted;
mod state;
mod sys;
mod tree;

pub use mounted::BlocksMount;

use mount::unescape_mount_field;
use serde::{Deserialize, Serialize};
use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blocks::DEFAULT_BLOCK_SIZE;
use crate::usage::{self, LayerUsage};
use crate::{io_err, Error, LayerKind, LayerMetadata, Result, METADATA_FILE, METADATA_VERSION};

/// Name of the merged tree inside a blocks layer directory.
pub const TREE_DIR: &str = "tree";
/// Name of the block-map directory inside a blocks layer directory.
pub const MAPS_DIR: &str = "maps";
/// Prefix of the FUSE source name (`thinnode-blocks:<layer dir>`), used to find the layer's mounts.
pub const FSNAME_PREFIX: &str = "thinnode-blocks:";

/// Base files read in-process instead of through the lower directory: the image's read engine, when the
/// image mount and the layer run in one process ([`crate::LayeredMount`]). Base reads then take no
/// second FUSE hop, and an unwritten base file opened read-only can be served by passthrough straight to
/// the base's local copy.
pub trait BaseFiles: Send + Sync {
    /// Opens the base file at `rel` (relative to the lower root).
    fn open(&self, rel: &Path) -> io::Result<Arc<dyn BaseFile>>;

    /// Counts an open served by passthrough from a base file's local copy (metrics).
    fn passthrough_opened(&self) {}
}

/// One base file opened through [`BaseFiles`].
pub trait BaseFile: Send + Sync {
    /// The file's size.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; returns the bytes read (0 at end of file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// lseek(2) SEEK_DATA / SEEK_HOLE (`whence`); `None` past the last data (ENXIO).
    fn seek(&self, offset: u64, whence: i32) -> io::Result<Option<u64>>;
    /// A read-only descriptor of a complete, verified local copy of the file, which the kernel may read
    /// directly (FUSE passthrough); `None` when there is none. Never to be written.
    fn passthrough_backing(&self) -> Option<stdfs::File>;
}

/// Options of a blocks layer, recorded in `layer.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksOptions {
    /// Size of the blocks a base file is copied up in (bytes, > 0).
    pub block_size: u32,
}

impl Default for BlocksOptions {
    /// [`DEFAULT_BLOCK_SIZE`] (4 KiB, measured on ParityDB).
    fn default() -> Self {
        BlocksOptions {
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// A blocks layer directory: `DIR/layer.json`, `DIR/tree`, `DIR/maps`.
#[derive(Debug, Clone)]
pub struct BlocksLayer {
    dir: PathBuf,
    options: BlocksOptions,
}

impl BlocksLayer {
    /// Creates a blocks layer in `dir` (created if missing; must not already hold a layer).
    pub fn create(dir: &Path, options: BlocksOptions) -> Result<BlocksLayer> {
        if options.block_size == 0 {
            return Err(Error::BadMetadata {
                path: dir.join(METADATA_FILE),
                reason: "block size 0".into(),
            });
        }
        let dir = crate::new_layer_dir(dir)?;
        let layer = BlocksLayer { dir, options };
        layer.make_empty_tree()?;
        LayerMetadata {
            version: METADATA_VERSION,
            kind: LayerKind::Blocks,
            overlay: None,
            blocks: Some(options),
        }
        .write(&layer.dir)?;
        Ok(layer)
    }

    /// Opens the existing blocks layer in `dir`.
    pub fn open(dir: &Path) -> Result<BlocksLayer> {
        let meta = LayerMetadata::read_kind(dir, LayerKind::Blocks)?;
        let options = meta.blocks.unwrap_or_default();
        if options.block_size == 0 {
            return Err(Error::BadMetadata {
                path: dir.join(METADATA_FILE),
                reason: "block size 0".into(),
            });
        }
        let dir = stdfs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        Ok(BlocksLayer { dir, options })
    }

    /// Opens the blocks layer in `dir`, creating it with `options` if the directory holds no layer.
    pub fn open_or_create(dir: &Path, options: BlocksOptions) -> Result<BlocksLayer> {
        match BlocksLayer::open(dir) {
            Err(Error::NotALayer(_)) => BlocksLayer::create(dir, options),
            other => other,
        }
    }

    /// The layer directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options recorded with the layer.
    pub fn options(&self) -> BlocksOptions {
        self.options
    }

    /// The merged tree (`DIR/tree`).
    pub fn tree_dir(&self) -> PathBuf {
        self.dir.join(TREE_DIR)
    }

    /// The block maps (`DIR/maps`).
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join(MAPS_DIR)
    }

    /// The FUSE source name of this layer's mounts.
    fn fsname(&self) -> String {
        format!("{FSNAME_PREFIX}{}", self.dir.display())
    }

    /// Where this layer is currently mounted (from /proc/self/mountinfo).
    pub fn mount_points(&self) -> Result<Vec<PathBuf>> {
        let path = Path::new("/proc/self/mountinfo");
        let text = stdfs::read_to_string(path).map_err(io_err("read", path))?;
        Ok(fuse_mounts_with_source(&text, &self.fsname()))
    }

    /// Mounts lower+layer at `target`; the FUSE session runs on threads of this process; returns once
    /// the mount answers. Refused while the layer is mounted elsewhere.
    pub fn mount(&self, lower: &Path, target: &Path) -> Result<BlocksMount> {
        self.mount_with_base(lower, target, None)
    }

    /// [`BlocksLayer::mount`], reading base file contents through `base` (in-process) instead of the
    /// files of `lower`, which still provides the namespace and metadata.
    pub fn mount_with_base(
        &self,
        lower: &Path,
        target: &Path,
        base: Option<Arc<dyn BaseFiles>>,
    ) -> Result<BlocksMount> {
        let (lower, target) = self.check_mount_paths(lower, target)?;
        let maps = self.maps_dir();
        stdfs::create_dir_all(&maps).map_err(io_err("create directory", &maps))?;
        let state = state::LayerState::open(
            &self.tree_dir(),
            &maps,
            &lower,
            base,
            self.options.block_size,
        )?;
        BlocksMount::start(state, self.fsname(), target)
    }

    /// Resolves `lower` and `target` (detaching a dead mount left at the target) and checks that they
    /// can serve a mount of this layer: directories, apart from what the layer writes, the layer not
    /// mounted yet.
    fn check_mount_paths(&self, lower: &Path, target: &Path) -> Result<(PathBuf, PathBuf)> {
        let lower = stdfs::canonicalize(lower).map_err(io_err("resolve lower dir", lower))?;
        // A dead mount left at the target by a killed server ("Transport endpoint is not connected").
        let target_abs = std::path::absolute(target).map_err(io_err("resolve", target))?;
        match mount::clean_stale_mount(&target_abs) {
            Ok(true) => tracing::warn!(
                "{}: detached the dead mount of a killed server",
                target_abs.display()
            ),
            Ok(false) => {}
            Err(e) => return Err(Error::MountPrecondition(e.to_string())),
        }
        let target = stdfs::canonicalize(target).map_err(io_err("resolve mount target", target))?;
        for (what, p) in [("lower", &lower), ("target", &target)] {
            let meta = stdfs::metadata(p).map_err(io_err("stat", p))?;
            if !meta.is_dir() {
                return Err(Error::MountPrecondition(format!(
                    "{what} {} is not a directory",
                    p.display()
                )));
            }
        }
        // The lower may live inside the layer directory (LayeredMount mounts the image at DIR/lower),
        // but not inside what this filesystem writes, nor contain it.
        let (tree, maps) = (self.tree_dir(), self.maps_dir());
        if [&tree, &maps]
            .iter()
            .any(|d| lower.starts_with(d) || d.starts_with(&lower))
        {
            return Err(Error::MountPrecondition(format!(
                "layer dir {} and lower dir {} must not contain each other",
                self.dir.display(),
                lower.display()
            )));
        }
        if target.starts_with(&self.dir) {
            return Err(Error::MountPrecondition(format!(
                "mount target {} is inside the layer dir {}",
                target.display(),
                self.dir.display()
            )));
        }
        let mounts = self.mount_points()?;
        if !mounts.is_empty() {
            return Err(Error::Mounted {
                layer: self.dir.clone(),
                mounts,
            });
        }
        Ok((lower, target))
    }

    /// Bytes the layer really holds: allocated blocks of `tree/` (sparse base files count only the
    /// blocks written) and `maps/`; apparent sizes are reported apart.
    pub fn du(&self) -> Result<LayerUsage> {
        let mut roots = vec![self.tree_dir()];
        if self.maps_dir().exists() {
            roots.push(self.maps_dir());
        }
        usage::measure(&roots)
    }

    /// Drops every change in the layer (the tree goes back to the lower's content). Refused while
    /// mounted.
    pub fn reset(&self) -> Result<()> {
        let mounts = self.mount_points()?;
        if !mounts.is_empty() {
            return Err(Error::Mounted {
                layer: self.dir.clone(),
                mounts,
            });
        }
        for sub in [self.tree_dir(), self.maps_dir()] {
            match stdfs::remove_dir_all(&sub) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &sub)(e)),
            }
        }
        self.make_empty_tree()
    }

    /// Creates `tree/` (marked to show the lower's root) and `maps/`, durably.
    fn make_empty_tree(&self) -> Result<()> {
        let tree = self.tree_dir();
        let maps = self.maps_dir();
        stdfs::create_dir_all(&maps).map_err(io_err("create directory", &maps))?;
        let tmp = self.dir.join("tree.tmp");
        match stdfs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &tmp)(e)),
        }
        stdfs::create_dir(&tmp).map_err(io_err("create directory", &tmp))?;
        tree::set_lower_marker(&tmp, Path::new(tree::LOWER_ROOT)).map_err(io_err(
            "set the lower-directory marker (needs root: trusted.* xattrs) on",
            &tmp,
        ))?;
        stdfs::rename(&tmp, &tree).map_err(io_err("rename", &tmp))?;
        stdfs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &self.dir))
    }
}

/// Mount points of FUSE mounts in `mountinfo` whose source is `source`.
fn fuse_mounts_with_source(mountinfo: &str, source: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(fstype), Some(src)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 2))
        else {
            continue;
        };
        if (*fstype == "fuse" || fstype.starts_with("fuse.")) && unescape_mount_field(src) == source
        {
            found.push(PathBuf::from(unescape_mount_field(mount_point)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_matched_by_source() {
        let text = "\
36 25 0:32 / /mnt/a\\040b rw,relatime - fuse.thinnode-blocks thinnode-blocks:/x/l\\040y rw,user_id=0
37 25 0:33 / /mnt/c rw - fuse.thinnode-blocks thinnode-blocks:/other rw
38 25 0:34 / /mnt/d rw - ext4 thinnode-blocks:/x/l\\040y rw
garbage line";
        assert_eq!(
            fuse_mounts_with_source(text, "thinnode-blocks:/x/l y"),
            vec![PathBuf::from("/mnt/a b")]
        );
        assert!(fuse_mounts_with_source(text, "thinnode-blocks:/nope").is_empty());
    }

    #[test]
    fn options_default_to_the_measured_block_size() {
        assert_eq!(BlocksOptions::default().block_size, DEFAULT_BLOCK_SIZE);
        let meta: LayerMetadata =
            serde_json::from_str(r#"{"version":1,"kind":"blocks","blocks":{"block_size":8192}}"#)
                .expect("parse");
        assert_eq!(meta.blocks, Some(BlocksOptions { block_size: 8192 }));
        let text = serde_json::to_string(&LayerMetadata {
            version: 1,
            kind: LayerKind::Overlay,
            overlay: None,
            blocks: None,
        })
        .expect("serialize");
        assert!(!text.contains("blocks\":"), "{text}");
    }
}
