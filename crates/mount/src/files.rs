//! Whole files assembled from cached chunks into the host cache's `files/` directory, used as FUSE
//! passthrough backing once a file is fully local. Named by a hash of the file's size and chunk list, so
//! identical files in different images share one assembled copy.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use image::ChunkRef;

use crate::cache::{
    direct_io_len, open_direct_or_buffered, AlignedBuf, CacheError, HostCache, DIRECT_IO_ALIGN,
};

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

/// Parallel copiers when assembling a file (each a read and a write in flight).
const ASSEMBLE_THREADS: usize = 4;

/// Assembles the file (`size` bytes, `chunk_size`-byte chunks) from cached chunks. Returns the path of the
/// assembled file, or `None` when a chunk is not cached (nothing is published then).
///
/// Chunks are copied by a few threads at once and read with direct I/O (no page-cache copy of the
/// entries). The assembled file is written through the page cache when it fits comfortably in memory:
/// it is assembled to be read, and its pages are then already there, in the large folios that writes
/// make (reads from them run at the speed of a local file written the same way). A bigger file is
/// written with direct I/O too, where the filesystem allows it and the chunk size is block-aligned:
/// disk to disk at about twice the speed, without pushing everything else out of the page cache.
pub fn assemble(
    cache: &HostCache,
    size: u64,
    chunk_size: u64,
    chunks: &[Option<ChunkRef>],
) -> Result<Option<PathBuf>, CacheError> {
    assemble_with(cache, size, chunk_size, chunks, !worth_page_cache(size))
}

/// [`assemble`], writing the file with direct I/O when `direct_out` (and the chunk size allows it).
fn assemble_with(
    cache: &HostCache,
    size: u64,
    chunk_size: u64,
    chunks: &[Option<ChunkRef>],
    direct_out: bool,
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
    let create = |flags: libc::c_int| {
        // Not `create_new`: a refused `O_DIRECT` open may already have created the (unique) file.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(&tmp)
    };
    let aligned = chunk_size > 0 && chunk_size % DIRECT_IO_ALIGN as u64 == 0;
    let (out, direct) = if aligned && direct_out {
        open_direct_or_buffered(create).map_err(io)?
    } else {
        (create(0).map_err(io)?, false)
    };
    let result =
        copy_chunks(cache, &out, direct, &tmp, size, chunk_size, chunks).and_then(|complete| {
            if complete {
                out.set_len(size).map_err(io)?;
                out.sync_data().map_err(io)?;
            }
            Ok(complete)
        });
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

/// Whether a file of `size` bytes should be written through the page cache: when it takes at most a
/// quarter of the memory available now.
fn worth_page_cache(size: u64) -> bool {
    let available = fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    available.is_some_and(|kib| size <= kib.saturating_mul(1024) / 4)
}

/// Copies every chunk into `out` (the file at `out_path`, open for direct I/O when `direct`) at its offset, `ASSEMBLE_THREADS` at a time. `Ok(false)` when a chunk is missing from the cache.
fn copy_chunks(
    cache: &HostCache,
    out: &File,
    direct: bool,
    out_path: &Path,
    size: u64,
    chunk_size: u64,
    chunks: &[Option<ChunkRef>],
) -> Result<bool, CacheError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let copy_one = |buf: &mut AlignedBuf, index: usize, r: &ChunkRef| -> Result<bool, CacheError> {
        let offset = index as u64 * chunk_size;
        let want = size.saturating_sub(offset).min(chunk_size) as usize;
        if (r.plain_len as usize) < want {
            return Ok(false);
        }
        let Some(bytes) = cache.read_whole(&r.id, r.plain_len, buf)? else {
            return Ok(false);
        };
        // A direct write covers whole blocks: the tail block of the last chunk is padded, and the
        // padding is cut off by the final `set_len`.
        let len = if direct { direct_io_len(want) } else { want };
        let bytes = if len <= bytes.len() {
            &bytes[..len]
        } else {
            // Same storage as the read (`len` is within its rounded-up length), so the bytes stay.
            let padded = buf.slice_mut(len);
            padded[want..].fill(0);
            &padded[..]
        };
        out.write_all_at(bytes, offset)
            .map_err(|error| CacheError::Io {
                path: out_path.to_path_buf(),
                error,
            })?;
        Ok(true)
    };
    let results: Vec<Result<bool, CacheError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..ASSEMBLE_THREADS.min(chunks.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut buf = AlignedBuf::new();
                    while !failed.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(index) else {
                            break;
                        };
                        let Some(r) = chunk else { continue };
                        match copy_one(&mut buf, index, r) {
                            Ok(true) => {}
                            other => {
                                failed.store(true, Ordering::Relaxed);
                                return other;
                            }
                        }
                    }
                    Ok(true)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(Ok(false)))
            .collect()
    });
    let mut complete = true;
    for r in results {
        complete &= r?;
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;

    /// Puts `plain` into the cache as a chunk and returns its reference.
    fn cached(cache: &HostCache, plain: &[u8]) -> ChunkRef {
        let enc = image::encode_chunk(plain, 1).expect("encode");
        cache.insert(&enc.chunk_ref.id, plain).expect("insert");
        enc.chunk_ref
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A file of whole chunks, a hole and a short tail, assembled in the cache at `dir`, must read back
    /// as the chunks laid end to end (zeros in the hole); with a chunk missing nothing is published.
    fn assemble_in(dir: &Path, chunk_size: usize, direct_out: bool) {
        let cache = HostCache::open(&CacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 30,
            durable: true,
        })
        .expect("open cache");
        let tail = 5000;
        let size = (4 * chunk_size + tail) as u64;
        let parts = [
            Some(pattern(chunk_size, 1)),
            None,
            Some(pattern(chunk_size, 2)),
            Some(pattern(chunk_size, 3)),
            Some(pattern(tail, 4)),
        ];
        let mut expected = Vec::new();
        let mut chunks = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            match part {
                Some(p) => {
                    expected.extend_from_slice(p);
                    chunks.push(Some(cached(&cache, p)));
                }
                None => {
                    expected.resize((i + 1) * chunk_size, 0);
                    chunks.push(None);
                }
            }
        }
        let path = assemble_with(&cache, size, chunk_size as u64, &chunks, direct_out)
            .expect("assemble")
            .expect("every chunk is cached");
        let got = fs::read(&path).expect("read assembled file");
        assert_eq!(got.len() as u64, size);
        assert!(
            got == expected,
            "assembled bytes differ (chunk size {chunk_size}, direct {direct_out})"
        );
        // Assembling again finds the published file.
        assert_eq!(
            assemble(&cache, size, chunk_size as u64, &chunks).expect("again"),
            Some(path)
        );

        let mut missing = chunks.clone();
        let absent = pattern(chunk_size, 9);
        missing[1] = Some(image::encode_chunk(&absent, 1).expect("encode").chunk_ref);
        assert_eq!(
            assemble_with(&cache, size, chunk_size as u64, &missing, direct_out).expect("assemble"),
            None
        );
        let leftovers = fs::read_dir(dir.join("tmp")).expect("tmp dir").count();
        assert_eq!(leftovers, 0, "a failed assembly left a temporary file");
    }

    #[test]
    fn only_files_that_fit_in_memory_go_through_the_page_cache() {
        assert!(worth_page_cache(4096));
        assert!(!worth_page_cache(u64::MAX));
    }

    #[test]
    fn assembled_file_matches_its_chunks_with_direct_and_buffered_io() {
        // Chunks are read with direct I/O; the file is written with it or through the page cache (an
        // unaligned chunk size always goes through the page cache). On disk and on tmpfs.
        for base in ["/var/tmp", "/dev/shm"] {
            if !Path::new(base).is_dir() {
                continue;
            }
            for chunk_size in [64 << 10, 10_000] {
                for direct_out in [true, false] {
                    let dir = tempfile::tempdir_in(base).expect("tempdir");
                    assemble_in(dir.path(), chunk_size, direct_out);
                }
            }
        }
    }
}
