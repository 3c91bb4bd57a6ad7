//! Walking an image's tree into a flat list of paths (pre-order), shared by unpack, verify and stats.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::{FileKind, ImageError, ImageManifest, Ino, ROOT_INO};

/// One name in the image.
#[derive(Debug, Clone)]
pub(crate) struct TreeEntry {
    /// Path relative to the image root (empty for the root).
    pub path: PathBuf,
    /// The inode it names.
    pub ino: Ino,
    /// Its type.
    pub kind: FileKind,
    /// Whether this is the first name of the inode in walk order (later names are hardlinks).
    pub first: bool,
}

/// All names of the image in pre-order (a directory before its entries), root first. Call
/// [`ImageManifest::check_structure`] first: it guarantees the walk terminates.
pub(crate) fn walk_tree(m: &ImageManifest) -> Result<Vec<TreeEntry>, ImageError> {
    let n = usize::try_from(m.inode_count())
        .map_err(|_| ImageError::CorruptManifest("inode count too large".into()))?;
    let mut seen = vec![false; n + 1];
    let mut out = vec![TreeEntry {
        path: PathBuf::new(),
        ino: ROOT_INO,
        kind: FileKind::Directory,
        first: true,
    }];
    if let Some(s) = seen.get_mut(ROOT_INO as usize) {
        *s = true;
    }
    let mut stack = vec![(PathBuf::new(), ROOT_INO)];
    while let Some((dir_path, dir)) = stack.pop() {
        for e in m.readdir(dir, 0)? {
            let path = dir_path.join(OsStr::from_bytes(&e.name));
            let slot = seen
                .get_mut(e.ino as usize)
                .ok_or(ImageError::NotFound(e.ino))?;
            let first = !*slot;
            *slot = true;
            if e.kind == FileKind::Directory {
                if !first {
                    return Err(ImageError::CorruptManifest(format!(
                        "directory inode {} is linked twice",
                        e.ino
                    )));
                }
                stack.push((path.clone(), e.ino));
            }
            out.push(TreeEntry {
                path,
                ino: e.ino,
                kind: e.kind,
                first,
            });
        }
    }
    Ok(out)
}
