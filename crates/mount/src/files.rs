//! Whole files assembled from cached chunks into the host cache's `files/` directory, used as FUSE
//! passthrough backing once a file is fully local. Named by a hash of the file's size and chunk list, so
//! identical files in different images share one assembled copy.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use image::ChunkRef;

use crate::cache::{CacheError, HostCache};

/// The name of the assembled file with `size` bytes made of `chunks` (`None` = hole).
pub fn file_key(size: u64, chunks: &[Option<ChunkRef>]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"thinnode assembled file v1");
    h.update(&size.to_le_bytes());
    for c in chunks {
        match c {
            None => {
                h.update(&[0]);
            }
            Some(r) => {
                h.update(&[1]);
                h.update(&r.id.0);
                h.update(&r.plain_len.to_le_bytes());
            }
        }
    }
    h.finalize().to_hex().to_string()
}

/// Whether every chunk of the file is in the host cache.
pub fn fully_cached(cache: &HostCache, chunks: &[Option<ChunkRef>]) -> bool {
    chunks
        .iter()
        .flatten()
        .all(|r| cache.contains(&r.id, r.plain_len))
}

/// Assembles the file (`size` bytes, `chunk_size`-byte chunks) from cached chunks. Returns the path of the
/// assembled file, or `None` when a chunk is not cached (nothing is published then).
pub fn assemble(
    cache: &HostCache,
    size: u64,
    chunk_size: u64,
    chunks: &[Option<ChunkRef>],
) -> Result<Option<PathBuf>, CacheError> {
    let key = file_key(size, chunks);
    if cache.open_file(&key, size).is_some() {
        return Ok(Some(cache.file_path(&key)));
    }
    let tmp = cache.temp_path(&key);
    let io = |e: std::io::Error| CacheError::Io {
        path: tmp.clone(),
        error: e,
    };
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io)?;
    let result = (|| -> Result<bool, CacheError> {
        for (index, chunk) in chunks.iter().enumerate() {
            let Some(r) = chunk else { continue };
            let offset = index as u64 * chunk_size;
            let want = size.saturating_sub(offset).min(chunk_size) as usize;
            let Some(bytes) = cache.read(&r.id, r.plain_len, 0, want)? else {
                return Ok(false);
            };
            if bytes.len() != want {
                return Ok(false);
            }
            out.write_all_at(&bytes, offset).map_err(io)?;
        }
        out.set_len(size).map_err(io)?;
        out.sync_data().map_err(io)?;
        Ok(true)
    })();
    match result {
        Ok(true) => cache.publish_file(&tmp, &key).map(Some),
        Ok(false) => {
            let _ = fs::remove_file(&tmp);
            Ok(None)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}
