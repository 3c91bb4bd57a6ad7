//! Image statistics for `thinnode inspect`.

use std::collections::BTreeMap;

use crate::tree::walk_tree;
use crate::{FileKind, ImageError, ImageManifest, ManifestSource, FORMAT_VERSION};

/// Sizes, counts and ratios of an image.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImageStats {
    /// What the file is: a thinnode image, or an flist read as one.
    pub source: ManifestSource,
    /// Manifest format version.
    pub format_version: u32,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Whether the manifest is signed.
    pub signed: bool,
    /// Hex public key of the signer (not verified here).
    pub signer: Option<String>,
    /// Store URLs recorded at pack time.
    pub stores: Vec<String>,
    /// Labels recorded at pack time.
    pub labels: BTreeMap<String, String>,
    /// Manifest size in bytes.
    pub manifest_bytes: u64,
    /// Number of inodes.
    pub inodes: u64,
    /// Directories (including the root).
    pub directories: u64,
    /// Regular files (hardlinked files counted once).
    pub regular_files: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets.
    pub special_files: u64,
    /// Extra names of hardlinked files.
    pub hardlinks: u64,
    /// Sum of regular file sizes.
    pub logical_bytes: u64,
    /// Bytes of files in holes (not stored).
    pub sparse_bytes: u64,
    /// Non-hole chunk references across files.
    pub chunk_refs: u64,
    /// Distinct chunks.
    pub unique_chunks: u64,
    /// Plaintext bytes of the distinct chunks.
    pub unique_bytes: u64,
    /// Stored (compressed, encrypted) bytes of the distinct chunks whose stored length is recorded.
    pub stored_bytes: u64,
    /// Distinct chunks whose stored length the manifest does not record (an flist's blocks): not in
    /// `stored_bytes` nor in the compression ratio.
    pub stored_len_unknown: u64,
    /// Referenced plaintext bytes / distinct plaintext bytes.
    pub dedup_ratio: f64,
    /// Distinct plaintext bytes / stored bytes, over the chunks whose stored length is known.
    pub compression_ratio: f64,
}

/// Computes the statistics of `m` (reads the whole manifest).
pub fn image_stats(m: &ImageManifest) -> Result<ImageStats, ImageError> {
    let mut s = ImageStats {
        source: m.source(),
        format_version: FORMAT_VERSION,
        chunk_size: m.chunk_size(),
        signed: m.is_signed(),
        signer: m.signer().map(|k| hex::encode(k.as_bytes())),
        stores: m.stores(),
        labels: m.labels().into_iter().collect(),
        manifest_bytes: m.manifest_len(),
        inodes: m.inode_count(),
        ..Default::default()
    };
    m.check_structure()?;
    let cs = u64::from(m.chunk_size());
    let mut referenced_bytes = 0u64;
    for e in walk_tree(m)? {
        if !e.first {
            s.hardlinks += 1;
            continue;
        }
        match e.kind {
            FileKind::Directory => s.directories += 1,
            FileKind::Symlink => s.symlinks += 1,
            FileKind::Regular => {
                s.regular_files += 1;
                let size = m.getattr(e.ino)?.size;
                s.logical_bytes += size;
                for (i, slot) in m.file_chunk_slots(e.ino)?.into_iter().enumerate() {
                    let len = (size - i as u64 * cs).min(cs);
                    match slot {
                        None => s.sparse_bytes += len,
                        Some(_) => {
                            s.chunk_refs += 1;
                            referenced_bytes += len;
                        }
                    }
                }
            }
            _ => s.special_files += 1,
        }
    }
    s.unique_chunks = m.unique_chunk_count();
    let mut known_plain = 0u64;
    for i in 0..s.unique_chunks {
        let c = m.unique_chunk(i as u32)?;
        s.unique_bytes += u64::from(c.plain_len);
        if c.stored_len == 0 && c.plain_len != 0 {
            s.stored_len_unknown += 1;
        } else {
            s.stored_bytes += u64::from(c.stored_len);
            known_plain += u64::from(c.plain_len);
        }
    }
    s.dedup_ratio = if s.unique_bytes == 0 {
        1.0
    } else {
        referenced_bytes as f64 / s.unique_bytes as f64
    };
    s.compression_ratio = if s.stored_bytes == 0 {
        1.0
    } else {
        known_plain as f64 / s.stored_bytes as f64
    };
    Ok(s)
}
