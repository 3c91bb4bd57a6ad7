//! Converting an image to another chunk size and chunk encoding (thinnode chunks ↔ rfs blocks) while
//! keeping its tree, metadata and labels: the chunk work behind `thinnode convert` (images ↔ flists).
//!
//! Files are cut into units of whole target chunks (at least 4 MiB and one source chunk); units are
//! converted in parallel, a window of them at a time (memory stays bounded), each fetching the source
//! chunks it overlaps once, verifying and decoding them, cutting the bytes into target chunks and encoding
//! those. After each window the new distinct chunks are checked against the target store and only the
//! missing ones are uploaded.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use rayon::prelude::*;
use store::ChunkStore;

use crate::codec::{decode_chunk, encode_chunk_as, EncodedChunk};
use crate::writer::{write_atomically, ManifestBuilder, NewInode};
use crate::{
    ChunkEncoding, ChunkId, ChunkRef, FileKind, ImageError, ImageManifest, Ino, Inode,
    DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, ROOT_INO,
};

/// Smallest amount of a file converted as one unit.
const UNIT_MIN: u64 = 4 << 20;

/// Options of [`convert_image`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Chunk size of the result.
    pub chunk_size: u32,
    /// Chunk encoding of the result.
    pub encoding: ChunkEncoding,
    /// zstd level (thinnode encoding).
    pub zstd_level: i32,
    /// Worker threads (0: twice the cores, at least 4).
    pub threads: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            encoding: ChunkEncoding::Thinnode,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            threads: 0,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConvertSummary {
    /// Regular files (hard links counted once).
    pub files: u64,
    /// Sum of regular file sizes.
    pub logical_bytes: u64,
    /// Bytes in holes of the result (all-zero chunks are holes).
    pub hole_bytes: u64,
    /// Non-hole chunk slots of the result.
    pub chunks_total: u64,
    /// Distinct chunks of the result.
    pub chunks_unique: u64,
    /// Distinct chunks uploaded because the target store lacked them.
    pub chunks_new: u64,
    /// Stored bytes uploaded.
    pub bytes_uploaded: u64,
    /// Stored bytes of all distinct chunks of the result.
    pub bytes_stored: u64,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
}

fn new_inode(a: &Inode) -> NewInode {
    NewInode {
        kind: a.kind,
        perm: a.perm,
        uid: a.uid,
        gid: a.gid,
        size: match a.kind {
            FileKind::Regular | FileKind::Directory => a.size,
            _ => 0,
        },
        mtime_sec: a.mtime_sec,
        mtime_nsec: a.mtime_nsec,
        rdev: a.rdev,
    }
}

/// A regular file of the source and its place in the result.
struct File {
    src: Ino,
    dst: Ino,
    size: u64,
    path: String,
}

/// `[start, end)` of one file, a whole number of target chunks.
struct Unit {
    file: usize,
    start: u64,
    end: u64,
}

/// One converted target chunk: its file, its index, and the encoded chunk (`None`: all zeros, a hole).
type Piece = (usize, u64, Option<EncodedChunk>);

/// Copies the tree of `src` (entries, attributes, xattrs, symlinks, hard links, labels) into a new
/// builder with `chunk_size`; returns it and the regular files.
fn copy_tree(
    src: &ImageManifest,
    chunk_size: u32,
) -> Result<(ManifestBuilder, Vec<File>), ImageError> {
    let mut b = ManifestBuilder::new(chunk_size, new_inode(&src.getattr(ROOT_INO)?))?;
    b.set_xattrs(ROOT_INO, src.xattrs(ROOT_INO)?)?;
    let mut done: HashMap<Ino, Ino> = HashMap::new();
    let mut files = Vec::new();
    let mut stack: Vec<(String, Ino, Ino)> = vec![(String::new(), ROOT_INO, ROOT_INO)];
    while let Some((dir_path, dir, new_dir)) = stack.pop() {
        for e in src.readdir(dir, 0)? {
            if let Some(&linked) = done.get(&e.ino) {
                b.add_entry(new_dir, &e.name, linked)?;
                continue;
            }
            let a = src.getattr(e.ino)?;
            let ino = b.add_inode(new_inode(&a));
            b.add_entry(new_dir, &e.name, ino)?;
            b.set_xattrs(ino, src.xattrs(e.ino)?)?;
            let path = format!("{dir_path}/{}", String::from_utf8_lossy(&e.name));
            match a.kind {
                FileKind::Directory => stack.push((path, e.ino, ino)),
                FileKind::Symlink => b.set_symlink_target(ino, &src.readlink(e.ino)?)?,
                FileKind::Regular => {
                    done.insert(e.ino, ino);
                    files.push(File {
                        src: e.ino,
                        dst: ino,
                        size: a.size,
                        path,
                    });
                }
                _ => {
                    done.insert(e.ino, ino);
                }
            }
        }
    }
    for (k, v) in src.labels() {
        b.add_label(&k, &v);
    }
    Ok((b, files))
}

/// Converts one unit: fetches and decodes the source chunks it overlaps, cuts and encodes target chunks.
fn convert_unit(
    src: &ImageManifest,
    src_store: &dyn ChunkStore,
    files: &[File],
    unit: &Unit,
    opts: &ConvertOptions,
) -> Result<Vec<Piece>, ImageError> {
    let f = files
        .get(unit.file)
        .ok_or_else(|| ImageError::Invalid("unit names no file".into()))?;
    let s = u64::from(src.chunk_size());
    let len = usize::try_from(unit.end - unit.start)
        .map_err(|_| ImageError::Invalid("unit too large".into()))?;
    let mut buf = vec![0u8; len];
    let mut wanted: Vec<(u64, ChunkRef)> = Vec::new();
    for i in unit.start / s..=(unit.end - 1) / s {
        if let Some(r) = src.chunk(f.src, i)? {
            wanted.push((i, r));
        }
    }
    let chunk_err = |offset: u64, source: ImageError| ImageError::FileChunk {
        path: f.path.clone(),
        offset,
        source: Box::new(source),
    };
    if !wanted.is_empty() {
        let ids: Vec<ChunkId> = wanted.iter().map(|(_, r)| r.id).collect();
        let fetched = src_store
            .get_many(&ids)
            .map_err(|e| chunk_err(wanted[0].0 * s, e.into()))?;
        for ((i, r), data) in wanted
            .iter()
            .zip(fetched.into_iter().chain(std::iter::repeat(None)))
        {
            let offset = i * s;
            let stored = data.ok_or_else(|| chunk_err(offset, ImageError::MissingChunk(r.id)))?;
            let plain = decode_chunk(r, &stored).map_err(|e| chunk_err(offset, e))?;
            // The overlap of [offset, offset + len) with the unit.
            let from = offset.max(unit.start);
            let to = (offset + plain.len() as u64).min(unit.end);
            if from < to {
                let src_part = plain
                    .get((from - offset) as usize..(to - offset) as usize)
                    .unwrap_or_default();
                if let Some(dst) =
                    buf.get_mut((from - unit.start) as usize..(to - unit.start) as usize)
                {
                    dst.copy_from_slice(src_part);
                }
            }
        }
    }
    let t = u64::from(opts.chunk_size);
    let mut out = Vec::new();
    let mut at = unit.start;
    while at < unit.end {
        let end = (at + t).min(unit.end);
        let piece = buf
            .get((at - unit.start) as usize..(end - unit.start) as usize)
            .unwrap_or_default();
        let encoded = if piece.iter().all(|&b| b == 0) {
            None
        } else {
            Some(encode_chunk_as(opts.encoding, piece, opts.zstd_level)?)
        };
        out.push((unit.file, at / t, encoded));
        at = end;
    }
    Ok(out)
}

/// Converts the chunks of `src` (read from `src_store`) to `opts`' chunk size and encoding, uploading
/// them to `dst_store`; returns the new manifest (tree and labels of `src`, no store recorded yet) and
/// what was done.
pub(crate) fn convert_into(
    src: &ImageManifest,
    src_store: &dyn ChunkStore,
    dst_store: &dyn ChunkStore,
    opts: &ConvertOptions,
) -> Result<(ManifestBuilder, ConvertSummary), ImageError> {
    let started = Instant::now();
    src.check_structure()?;
    let (mut builder, files) = copy_tree(src, opts.chunk_size)?;
    let t = u64::from(opts.chunk_size);
    let unit_len = t * UNIT_MIN.max(u64::from(src.chunk_size())).div_ceil(t);
    let mut units = Vec::new();
    let mut summary = ConvertSummary::default();
    for (i, f) in files.iter().enumerate() {
        summary.files += 1;
        summary.logical_bytes += f.size;
        let mut start = 0;
        while start < f.size {
            let end = (start + unit_len).min(f.size);
            units.push(Unit {
                file: i,
                start,
                end,
            });
            start = end;
        }
    }
    let mut slots: Vec<Vec<Option<u32>>> = files
        .iter()
        .map(|f| vec![None; f.size.div_ceil(t) as usize])
        .collect();
    let mut chunks: Vec<ChunkRef> = Vec::new();
    let mut seen: HashMap<ChunkId, u32> = HashMap::new();
    let pool = crate::store_io_pool(opts.threads)?;
    let window = pool.current_num_threads().max(1) * 2;
    for batch in units.chunks(window) {
        let results: Vec<Result<Vec<Piece>, ImageError>> = pool.install(|| {
            batch
                .par_iter()
                .map(|u| convert_unit(src, src_store, &files, u, opts))
                .collect()
        });
        let mut new: Vec<(ChunkId, Vec<u8>)> = Vec::new();
        for pieces in results {
            for (file, index, encoded) in pieces? {
                let Some(enc) = encoded else { continue };
                summary.chunks_total += 1;
                let id = enc.chunk_ref.id;
                let i = match seen.get(&id) {
                    Some(&i) => i,
                    None => {
                        let i = chunks.len() as u32;
                        chunks.push(enc.chunk_ref);
                        seen.insert(id, i);
                        summary.bytes_stored += enc.stored.len() as u64;
                        new.push((id, enc.stored));
                        i
                    }
                };
                if let Some(slot) = slots.get_mut(file).and_then(|s| s.get_mut(index as usize)) {
                    *slot = Some(i);
                }
            }
        }
        if !new.is_empty() {
            let ids: Vec<ChunkId> = new.iter().map(|(id, _)| *id).collect();
            let held = dst_store.has_many(&ids)?;
            let missing: Vec<(ChunkId, &[u8])> = new
                .iter()
                .zip(held)
                .filter(|(_, h)| !h)
                .map(|((id, data), _)| (*id, data.as_slice()))
                .collect();
            summary.chunks_new += missing.len() as u64;
            summary.bytes_uploaded += missing.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
            dst_store.put_many(&missing)?;
        }
    }
    for (f, s) in files.iter().zip(&slots) {
        let canonical: Vec<Option<u32>> = s
            .iter()
            .map(|slot| {
                slot.and_then(|i| chunks.get(i as usize))
                    .map(|r| builder.add_chunk(*r))
            })
            .collect();
        builder.set_file_chunks(f.dst, &canonical)?;
        summary.hole_bytes += s
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_none())
            .map(|(i, _)| (f.size - i as u64 * t).min(t))
            .sum::<u64>();
    }
    summary.chunks_unique = builder.chunk_count() as u64;
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok((builder, summary))
}

/// Converts `src` (an image or an flist opened as one) into a thinnode image at `out` whose chunks are
/// re-encoded with `opts` and stored in `dst_store` (recorded as the image's store), signed with `signer`
/// when given. Labels (an flist's tags) are kept.
pub fn convert_image(
    src: &ImageManifest,
    src_store: &dyn ChunkStore,
    dst_store: &dyn ChunkStore,
    out: &Path,
    opts: &ConvertOptions,
    signer: Option<&SigningKey>,
) -> Result<ConvertSummary, ImageError> {
    let started = Instant::now();
    let (mut builder, mut summary) = convert_into(src, src_store, dst_store, opts)?;
    builder.add_store(&dst_store.public_url());
    write_atomically(out, &builder.to_bytes(signer)?)?;
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}
