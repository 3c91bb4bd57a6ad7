//! Measuring the bytes a layer really uses on disk.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{io_err, Result};

/// Space used by a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerUsage {
    /// Bytes allocated on disk (st_blocks × 512), each inode counted once.
    pub allocated_bytes: u64,
    /// Sum of apparent sizes of regular files (st_size), each inode counted once.
    pub apparent_bytes: u64,
    /// Regular files (distinct inodes).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries: symlinks, whiteouts (character devices), fifos, sockets.
    pub others: u64,
}

/// Measures the trees under `roots` (each root included), without following symlinks or crossing into
/// other filesystems.
pub(crate) fn measure(roots: &[PathBuf]) -> Result<LayerUsage> {
    let mut usage = LayerUsage::default();
    let mut seen = HashSet::new();
    for root in roots {
        let meta = fs::symlink_metadata(root).map_err(io_err("stat", root))?;
        walk(root, &meta, meta.dev(), &mut seen, &mut usage)?;
    }
    Ok(usage)
}

fn walk(
    path: &Path,
    meta: &fs::Metadata,
    dev: u64,
    seen: &mut HashSet<(u64, u64)>,
    usage: &mut LayerUsage,
) -> Result<()> {
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    usage.allocated_bytes += meta.blocks() * 512;
    let kind = meta.file_type();
    if kind.is_file() {
        usage.files += 1;
        usage.apparent_bytes += meta.size();
    } else if kind.is_dir() {
        usage.dirs += 1;
        if meta.dev() != dev {
            return Ok(());
        }
        for entry in fs::read_dir(path).map_err(io_err("read directory", path))? {
            let entry = entry.map_err(io_err("read directory", path))?;
            let child = entry.path();
            let child_meta = fs::symlink_metadata(&child).map_err(io_err("stat", &child))?;
            walk(&child, &child_meta, dev, seen, usage)?;
        }
    } else {
        usage.others += 1;
    }
    Ok(())
}
