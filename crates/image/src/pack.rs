//! Packing a directory into an image: walk the tree, cut files into chunks, encode them on all cores,
//! upload only the chunks the store lacks, and write the (optionally signed) manifest.
//!
//! Memory is bounded by a fixed number of chunks in flight, independent of file sizes: 2 per encoding
//! thread queued for encoding, 2 per encoding thread encoded and waiting, one being encoded per thread, and
//! at most `2 × upload_threads + 1` upload batches of ≤ `batch_bytes` (queued, uploading, filling).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use ed25519_dalek::SigningKey;
use parking_lot::Mutex;
use store::ChunkStore;

use crate::codec::{encode_chunk_as, EncodedChunk};
use crate::writer::{ManifestBuilder, NewInode};
use crate::{
    ChunkEncoding, ChunkId, ChunkRef, FileKind, ImageError, ImageManifest, Ino, SourceStamp,
    XattrList, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, ROOT_INO,
};

/// Options of [`pack`].
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Chunk size in bytes (64 KiB to 4 MiB).
    pub chunk_size: u32,
    /// zstd level for chunk compression.
    pub zstd_level: i32,
    /// Key to sign the manifest with.
    pub signer: Option<SigningKey>,
    /// A previous image whose chunks the store is known to hold: their ids skip the existence check, and
    /// files unchanged since it (same path, size, mtime, device, inode number and ctime) are not re-read.
    pub base: Option<PathBuf>,
    /// With `base`: read every file even when it looks unchanged.
    pub reread: bool,
    /// Free-form labels recorded in the manifest.
    pub labels: Vec<(String, String)>,
    /// Encoding threads (0: one per core).
    pub threads: usize,
    /// Threads uploading batches to the store.
    pub upload_threads: usize,
    /// Chunks per existence-check/upload batch (at most).
    pub batch_chunks: usize,
    /// Stored bytes per upload batch (at most, give or take one chunk).
    pub batch_bytes: usize,
    /// Paths relative to the packed directory that are left out of the image, with everything below
    /// them (e.g. node secrets). A listed path that does not exist is ignored.
    pub exclude: Vec<PathBuf>,
    /// How chunks are encoded (rfs blocks for flists, see [`crate::fl::pack_flist`]).
    pub encoding: ChunkEncoding,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            signer: None,
            base: None,
            reread: false,
            labels: Vec::new(),
            threads: 0,
            upload_threads: 4,
            batch_chunks: 64,
            batch_bytes: 16 << 20,
            exclude: Vec::new(),
            encoding: ChunkEncoding::Thinnode,
        }
    }
}

/// Receives progress reports from [`pack`] (from several threads).
pub trait PackProgress: Sync {
    /// The walk is done: `total_bytes` of file content in `files` regular files will be processed.
    fn start(&self, total_bytes: u64, files: u64);
    /// `bytes` more of file content were processed.
    fn advance(&self, bytes: u64);
}

/// What [`pack`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PackSummary {
    /// Regular files (hardlinked files counted once).
    pub files: u64,
    /// Directories, including the root.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets.
    pub special_files: u64,
    /// Extra names of hardlinked files.
    pub hardlinks: u64,
    /// Entries left out by [`PackOptions::exclude`] (each counted once, with what is below it).
    pub excluded: u64,
    /// Files taken from the base image without reading them (unchanged since it).
    pub files_unchanged: u64,
    /// Sum of regular file sizes.
    pub logical_bytes: u64,
    /// Bytes in holes (sparse regions and all-zero chunks), not stored.
    pub hole_bytes: u64,
    /// Non-hole chunk slots across all files.
    pub chunks_total: u64,
    /// Distinct chunks in the image.
    pub chunks_unique: u64,
    /// Distinct chunks uploaded because the store lacked them.
    pub chunks_new: u64,
    /// Distinct chunks the store already held (or the base image listed).
    pub chunks_reused: u64,
    /// Stored bytes uploaded.
    pub bytes_uploaded: u64,
    /// Stored bytes of all distinct chunks.
    pub bytes_stored: u64,
    /// Size of the written manifest.
    pub manifest_bytes: u64,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
}

/// A regular file whose content still has to be chunked.
struct FileToChunk {
    ino: Ino,
    path: PathBuf,
    /// Path relative to the packed directory, as raw bytes per component.
    rel: Vec<Vec<u8>>,
    size: u64,
    mtime: (i64, u32),
    stamp: SourceStamp,
    /// Chunks taken from the base image: the file is not read.
    from_base: bool,
}

/// One chunk to read and encode.
struct ChunkJob {
    file_idx: usize,
    chunk_idx: u64,
    file: Arc<File>,
    offset: u64,
    len: usize,
}

/// The result of one chunk job: `None` when the chunk is all zeros (recorded as a hole).
struct ChunkDone {
    file_idx: usize,
    chunk_idx: u64,
    encoded: Option<EncodedChunk>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ImageError {
    ImageError::io(format!("{what} {}", path.display()), e)
}

fn read_xattrs(path: &Path) -> Result<XattrList, ImageError> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list xattrs of", path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(v)) => out.push((name.as_bytes().to_vec(), v)),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(io_err("read xattr of", path, e)),
        }
    }
    out.sort();
    Ok(out)
}

fn attrs_of(meta: &fs::Metadata, kind: FileKind) -> NewInode {
    NewInode {
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        uid: meta.uid(),
        gid: meta.gid(),
        size: if kind == FileKind::Regular {
            meta.size()
        } else {
            0
        },
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        rdev: meta.rdev(),
    }
}

fn kind_of(ft: &fs::FileType) -> Option<FileKind> {
    use std::os::unix::fs::FileTypeExt;
    Some(if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_file() {
        FileKind::Regular
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else {
        return None;
    })
}

/// Walks `src` into `builder`; returns the regular files to chunk.
fn walk(
    src: &Path,
    exclude: &[PathBuf],
    builder: &mut ManifestBuilder,
    summary: &mut PackSummary,
) -> Result<Vec<FileToChunk>, ImageError> {
    let excluded: HashSet<PathBuf> = exclude
        .iter()
        .map(|p| src.join(p.strip_prefix("/").unwrap_or(p)))
        .collect();
    let mut files = Vec::new();
    let mut hardlinks: HashMap<(u64, u64), Ino> = HashMap::new();
    builder.set_xattrs(ROOT_INO, read_xattrs(src)?)?;
    summary.directories += 1;
    let mut stack: Vec<(PathBuf, Vec<Vec<u8>>, Ino)> =
        vec![(src.to_path_buf(), Vec::new(), ROOT_INO)];
    while let Some((dir, dir_rel, dir_ino)) = stack.pop() {
        let mut entries = fs::read_dir(&dir)
            .and_then(|rd| rd.collect::<Result<Vec<_>, _>>())
            .map_err(|e| io_err("read directory", &dir, e))?;
        // Name order makes inode numbering, and so the manifest bytes, reproducible.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if excluded.contains(&path) {
                summary.excluded += 1;
                continue;
            }
            let name = entry.file_name();
            let mut rel = dir_rel.clone();
            rel.push(name.as_bytes().to_vec());
            let meta = fs::symlink_metadata(&path).map_err(|e| io_err("stat", &path, e))?;
            let kind = kind_of(&meta.file_type()).ok_or_else(|| {
                ImageError::Invalid(format!("{}: unsupported file type", path.display()))
            })?;
            if kind != FileKind::Directory && meta.nlink() > 1 {
                if let Some(&ino) = hardlinks.get(&(meta.dev(), meta.ino())) {
                    builder.add_entry(dir_ino, name.as_bytes(), ino)?;
                    summary.hardlinks += 1;
                    continue;
                }
            }
            let ino = builder.add_inode(attrs_of(&meta, kind));
            builder.add_entry(dir_ino, name.as_bytes(), ino)?;
            if kind != FileKind::Directory && meta.nlink() > 1 {
                hardlinks.insert((meta.dev(), meta.ino()), ino);
            }
            builder.set_xattrs(ino, read_xattrs(&path)?)?;
            match kind {
                FileKind::Directory => {
                    summary.directories += 1;
                    stack.push((path, rel, ino));
                }
                FileKind::Regular => {
                    summary.files += 1;
                    summary.logical_bytes += meta.size();
                    let stamp = SourceStamp {
                        dev: meta.dev(),
                        ino: meta.ino(),
                        ctime_sec: meta.ctime(),
                        ctime_nsec: meta.ctime_nsec().clamp(0, 999_999_999) as u32,
                    };
                    builder.set_source_stamp(ino, stamp)?;
                    files.push(FileToChunk {
                        ino,
                        path,
                        rel,
                        size: meta.size(),
                        mtime: (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32),
                        stamp,
                        from_base: false,
                    });
                }
                FileKind::Symlink => {
                    summary.symlinks += 1;
                    let target = fs::read_link(&path).map_err(|e| io_err("read link", &path, e))?;
                    builder.set_symlink_target(ino, target.as_os_str().as_bytes())?;
                }
                _ => summary.special_files += 1,
            }
        }
    }
    Ok(files)
}

/// Data extents `[start, end)` of an open file via SEEK_DATA/SEEK_HOLE; the whole file when the
/// filesystem does not support them.
fn data_extents(file: &File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let start = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            // No more data after `pos`.
            Err(nix::errno::Errno::ENXIO) => break,
            // SEEK_DATA unsupported: treat everything as data.
            Err(_) => return vec![(0, size)],
        };
        if start >= size {
            break;
        }
        let end = match lseek(file, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(size),
            Err(_) => size,
        };
        if end <= start {
            return vec![(0, size)];
        }
        out.push((start, end));
        pos = end;
    }
    out
}

fn is_all_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(16);
    let mut acc = 0u128;
    for w in words.by_ref() {
        let mut a = [0u8; 16];
        a.copy_from_slice(w);
        acc |= u128::from_ne_bytes(a);
    }
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

/// A batch of new chunks to check and upload.
type UploadBatch = Vec<(ChunkId, Vec<u8>)>;

#[derive(Default)]
struct UploadCounts {
    chunks_new: u64,
    bytes_uploaded: u64,
}

fn upload_batch(store: &dyn ChunkStore, batch: &UploadBatch) -> Result<UploadCounts, ImageError> {
    let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
    let present = store.has_many(&ids)?;
    if present.len() != ids.len() {
        return Err(ImageError::Invalid(format!(
            "store answered {} existence checks for {} ids",
            present.len(),
            ids.len()
        )));
    }
    let missing: Vec<(ChunkId, &[u8])> = batch
        .iter()
        .zip(&present)
        .filter(|(_, p)| !**p)
        .map(|((id, data), _)| (*id, data.as_slice()))
        .collect();
    let counts = UploadCounts {
        chunks_new: missing.len() as u64,
        bytes_uploaded: missing.iter().map(|(_, d)| d.len() as u64).sum(),
    };
    if !missing.is_empty() {
        store.put_many(&missing)?;
    }
    Ok(counts)
}

/// Records the first error and tells every thread to stop.
#[derive(Default)]
struct Failure {
    abort: AtomicBool,
    error: Mutex<Option<ImageError>>,
}

impl Failure {
    fn set(&self, e: ImageError) {
        self.error.lock().get_or_insert(e);
        self.abort.store(true, Ordering::SeqCst);
    }
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// Distinct chunks in the order they were first seen, each with its index.
#[derive(Default)]
struct ChunkTable {
    chunks: Vec<ChunkRef>,
    seen: HashMap<ChunkId, u32>,
}

impl ChunkTable {
    /// The index of `r`, and whether it was new to the table.
    fn insert(&mut self, r: ChunkRef) -> (u32, bool) {
        if let Some(&i) = self.seen.get(&r.id) {
            return (i, false);
        }
        let i = self.chunks.len() as u32;
        self.chunks.push(r);
        self.seen.insert(r.id, i);
        (i, true)
    }
}

/// Packs directory `src` into the image `out`, uploading chunks to `store`.
pub fn pack(
    src: &Path,
    store: &dyn ChunkStore,
    out: &Path,
    opts: &PackOptions,
    progress: Option<&dyn PackProgress>,
) -> Result<PackSummary, ImageError> {
    let started = Instant::now();
    let (builder, mut summary) = pack_into(src, store, opts, progress, &|_| Ok(()))?;
    let bytes = builder.to_bytes(opts.signer.as_ref())?;
    summary.manifest_bytes = bytes.len() as u64;
    crate::writer::write_atomically(out, &bytes)?;
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Checks the walked tree before any chunk is read (e.g. what an flist cannot hold).
pub(crate) type TreeCheck<'a> = &'a dyn Fn(&ManifestBuilder) -> Result<(), ImageError>;

/// The work of [`pack`] up to the manifest: walks `src`, runs `check_tree` on the walked tree, chunks,
/// encodes and uploads; returns the filled builder and the summary (without manifest size and time).
pub(crate) fn pack_into(
    src: &Path,
    store: &dyn ChunkStore,
    opts: &PackOptions,
    progress: Option<&dyn PackProgress>,
    check_tree: TreeCheck<'_>,
) -> Result<(ManifestBuilder, PackSummary), ImageError> {
    let root_meta = fs::symlink_metadata(src).map_err(|e| io_err("stat", src, e))?;
    if !root_meta.is_dir() {
        return Err(ImageError::Invalid(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    let mut builder =
        ManifestBuilder::new(opts.chunk_size, attrs_of(&root_meta, FileKind::Directory))?;
    builder.add_store(&store.public_url());
    for (k, v) in &opts.labels {
        builder.add_label(k, v);
    }
    let (base, base_ids) = open_base(opts)?;

    let mut summary = PackSummary::default();
    let mut files = walk(src, &opts.exclude, &mut builder, &mut summary)?;
    check_tree(&builder)?;
    if let Some(p) = progress {
        p.start(summary.logical_bytes, summary.files);
    }

    let cs = u64::from(opts.chunk_size);
    let mut slots: Vec<Vec<Option<u32>>> = files
        .iter()
        .map(|f| vec![None; f.size.div_ceil(cs) as usize])
        .collect();
    // Distinct chunks in arrival order; renumbered in file order below so the manifest is reproducible.
    let mut table = ChunkTable::default();
    if let Some(base) = base
        .as_ref()
        .filter(|b| !opts.reread && b.chunk_size() == opts.chunk_size)
    {
        let reuse = Reuse {
            slots: &mut slots,
            table: &mut table,
            summary: &mut summary,
        };
        reuse_unchanged(base, &mut files, reuse, progress)?;
    }
    let chunking = Chunking {
        files: &files,
        store,
        opts,
        progress,
        base_ids: &base_ids,
    };
    let reuse = Reuse {
        slots: &mut slots,
        table: &mut table,
        summary: &mut summary,
    };
    let totals = chunking.run(reuse)?;

    for (f, s) in files.iter().zip(&slots) {
        let canonical: Vec<Option<u32>> = s
            .iter()
            .map(|slot| {
                slot.and_then(|i| table.chunks.get(i as usize))
                    .map(|r| builder.add_chunk(*r))
            })
            .collect();
        builder.set_file_chunks(f.ino, &canonical)?;
        let holes = s.iter().enumerate().filter(|(_, c)| c.is_none());
        summary.hole_bytes += holes
            .map(|(i, _)| (f.size - i as u64 * cs).min(cs))
            .sum::<u64>();
    }
    summary.chunks_unique = builder.chunk_count() as u64;
    summary.chunks_new = totals.chunks_new;
    summary.chunks_reused = summary.chunks_unique - totals.chunks_new.min(summary.chunks_unique);
    summary.bytes_uploaded = totals.bytes_uploaded;
    Ok((builder, summary))
}

/// The base image of [`PackOptions::base`], checked intact (its chunk references are copied into the
/// new image), and the ids of its chunks.
fn open_base(opts: &PackOptions) -> Result<(Option<ImageManifest>, HashSet<ChunkId>), ImageError> {
    let Some(path) = opts.base.as_deref() else {
        return Ok((None, HashSet::new()));
    };
    let base = ImageManifest::open(path)?;
    base.check_body_hash()?;
    base.check_structure()?;
    let ids = (0..base.unique_chunk_count())
        .map(|i| base.unique_chunk(i as u32).map(|c| c.id))
        .collect::<Result<_, _>>()?;
    Ok((Some(base), ids))
}

/// What chunking fills in: each file's slots (indices into `table`), the table, the counts.
struct Reuse<'a> {
    slots: &'a mut [Vec<Option<u32>>],
    table: &'a mut ChunkTable,
    summary: &'a mut PackSummary,
}

/// Files unchanged since the base image take its chunk list instead of being read.
fn reuse_unchanged(
    base: &ImageManifest,
    files: &mut [FileToChunk],
    out: Reuse<'_>,
    progress: Option<&dyn PackProgress>,
) -> Result<(), ImageError> {
    for (f, file_slots) in files.iter_mut().zip(out.slots.iter_mut()) {
        let Some(refs) = unchanged_in_base(base, f)? else {
            continue;
        };
        if refs.len() != file_slots.len() {
            continue;
        }
        for (slot, r) in file_slots.iter_mut().zip(refs) {
            let Some(r) = r else { continue };
            out.summary.chunks_total += 1;
            let (i, new) = out.table.insert(r);
            if new {
                out.summary.bytes_stored += u64::from(r.stored_len);
            }
            *slot = Some(i);
        }
        f.from_base = true;
        out.summary.files_unchanged += 1;
        if let Some(p) = progress {
            p.advance(f.size);
        }
    }
    Ok(())
}

/// The chunking pipeline: one producer thread (opens files, finds holes), encoder threads (read,
/// zero check, encode), the calling thread as collector (dedup, slot filling, upload batches) and
/// upload threads (existence check, then upload of the missing chunks).
struct Chunking<'a> {
    files: &'a [FileToChunk],
    store: &'a dyn ChunkStore,
    opts: &'a PackOptions,
    progress: Option<&'a dyn PackProgress>,
    /// Chunks the store is known to hold: never uploaded.
    base_ids: &'a HashSet<ChunkId>,
}

impl Chunking<'_> {
    /// Chunks every file not taken from the base; returns what the uploads did.
    fn run(&self, out: Reuse<'_>) -> Result<UploadCounts, ImageError> {
        let threads = if self.opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            self.opts.threads
        };
        let upload_threads = self.opts.upload_threads.max(1);
        let cs = u64::from(self.opts.chunk_size);
        let failure = Failure::default();
        let totals = Mutex::new(UploadCounts::default());
        let (job_tx, job_rx) = bounded::<ChunkJob>(threads * 2);
        let (done_tx, done_rx) = bounded::<ChunkDone>(threads * 2);
        let (batch_tx, batch_rx) = bounded::<UploadBatch>(upload_threads);
        std::thread::scope(|scope| {
            let failure = &failure;
            scope.spawn(move || produce_jobs(self.files, cs, job_tx, failure, self.progress));
            for _ in 0..threads {
                let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
                scope.spawn(move || self.encode_jobs(job_rx, done_tx, failure));
            }
            drop((job_rx, done_tx));
            for _ in 0..upload_threads {
                let batch_rx = batch_rx.clone();
                let totals = &totals;
                scope.spawn(move || self.upload_batches(batch_rx, totals, failure));
            }
            drop(batch_rx);
            self.collect(done_rx, batch_tx, out, failure);
        });
        if let Some(e) = failure.error.into_inner() {
            return Err(e);
        }
        Ok(totals.into_inner())
    }

    fn encode_jobs(&self, jobs: Receiver<ChunkJob>, done: Sender<ChunkDone>, failure: &Failure) {
        let mut buf = Vec::new();
        for job in jobs {
            if failure.aborted() {
                continue;
            }
            match encode_job(&job, self.opts, &mut buf, self.files) {
                Ok(encoded) => {
                    if let Some(p) = self.progress {
                        p.advance(job.len as u64);
                    }
                    let result = ChunkDone {
                        file_idx: job.file_idx,
                        chunk_idx: job.chunk_idx,
                        encoded,
                    };
                    if done.send(result).is_err() {
                        break;
                    }
                }
                Err(e) => failure.set(e),
            }
        }
    }

    fn upload_batches(
        &self,
        batches: Receiver<UploadBatch>,
        totals: &Mutex<UploadCounts>,
        failure: &Failure,
    ) {
        for batch in batches {
            if failure.aborted() {
                continue;
            }
            match upload_batch(self.store, &batch) {
                Ok(c) => {
                    let mut t = totals.lock();
                    t.chunks_new += c.chunks_new;
                    t.bytes_uploaded += c.bytes_uploaded;
                }
                Err(e) => failure.set(e),
            }
        }
    }

    /// Records each encoded chunk in its file's slot and the table, and batches the new ones for upload.
    fn collect(
        &self,
        done: Receiver<ChunkDone>,
        batches: Sender<UploadBatch>,
        out: Reuse<'_>,
        failure: &Failure,
    ) {
        let batch_chunks = self.opts.batch_chunks.max(1);
        let mut pending: UploadBatch = Vec::with_capacity(batch_chunks);
        let mut pending_bytes = 0usize;
        for done in done {
            let Some(file_slots) = out.slots.get_mut(done.file_idx) else {
                continue;
            };
            let Some(slot) = file_slots.get_mut(done.chunk_idx as usize) else {
                continue;
            };
            let Some(enc) = done.encoded else {
                continue;
            };
            out.summary.chunks_total += 1;
            let (i, new) = out.table.insert(enc.chunk_ref);
            *slot = Some(i);
            if !new {
                continue;
            }
            out.summary.bytes_stored += u64::from(enc.chunk_ref.stored_len);
            if self.base_ids.contains(&enc.chunk_ref.id) {
                continue;
            }
            pending_bytes += enc.stored.len();
            pending.push((enc.chunk_ref.id, enc.stored));
            if pending.len() >= batch_chunks || pending_bytes >= self.opts.batch_bytes {
                pending_bytes = 0;
                let batch = std::mem::replace(&mut pending, Vec::with_capacity(batch_chunks));
                if batches.send(batch).is_err() {
                    break;
                }
            }
        }
        if !pending.is_empty() && !failure.aborted() {
            let _ = batches.send(pending);
        }
    }
}

/// The base image's chunks for `f` when the file is unchanged since the base was packed: same path, kind,
/// size, mtime and source stamp (device, inode number, ctime). `None` otherwise.
fn unchanged_in_base(
    base: &ImageManifest,
    f: &FileToChunk,
) -> Result<Option<Vec<Option<ChunkRef>>>, ImageError> {
    let mut cur = ROOT_INO;
    let mut found = None;
    for name in &f.rel {
        match base.lookup(cur, name) {
            Ok(Some(i)) => {
                cur = i.ino;
                found = Some(i);
            }
            Ok(None) | Err(ImageError::WrongKind { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let Some(old) = found else { return Ok(None) };
    if old.kind != FileKind::Regular
        || old.size != f.size
        || (old.mtime_sec, old.mtime_nsec) != f.mtime
        || base.source_stamp(old.ino)? != Some(f.stamp)
    {
        return Ok(None);
    }
    base.file_chunks(old.ino).map(Some)
}

fn produce_jobs(
    files: &[FileToChunk],
    cs: u64,
    job_tx: Sender<ChunkJob>,
    failure: &Failure,
    progress: Option<&dyn PackProgress>,
) {
    for (file_idx, f) in files.iter().enumerate() {
        if failure.aborted() {
            return;
        }
        if f.size == 0 || f.from_base {
            continue;
        }
        let file = match File::open(&f.path) {
            Ok(file) => Arc::new(file),
            Err(e) => return failure.set(io_err("open", &f.path, e)),
        };
        let extents = data_extents(&file, f.size);
        let mut ext = extents.iter().peekable();
        let chunk_count = f.size.div_ceil(cs);
        for chunk_idx in 0..chunk_count {
            let offset = chunk_idx * cs;
            let end = (offset + cs).min(f.size);
            while ext.peek().is_some_and(|(_, e)| *e <= offset) {
                ext.next();
            }
            let has_data = ext.peek().is_some_and(|(s, _)| *s < end);
            if !has_data {
                if let Some(p) = progress {
                    p.advance(end - offset);
                }
                continue;
            }
            let job = ChunkJob {
                file_idx,
                chunk_idx,
                file: Arc::clone(&file),
                offset,
                len: (end - offset) as usize,
            };
            if job_tx.send(job).is_err() {
                return;
            }
        }
    }
}

fn encode_job(
    job: &ChunkJob,
    opts: &PackOptions,
    buf: &mut Vec<u8>,
    files: &[FileToChunk],
) -> Result<Option<EncodedChunk>, ImageError> {
    buf.resize(job.len, 0);
    let path = files
        .get(job.file_idx)
        .map(|f| f.path.as_path())
        .unwrap_or(Path::new("?"));
    let mut filled = 0;
    while filled < job.len {
        let n = job
            .file
            .read_at(&mut buf[filled..], job.offset + filled as u64)
            .map_err(|e| io_err("read", path, e))?;
        if n == 0 {
            return Err(ImageError::Invalid(format!(
                "{} shrank while being packed",
                path.display()
            )));
        }
        filled += n;
    }
    if is_all_zero(buf) {
        return Ok(None);
    }
    encode_chunk_as(opts.encoding, buf, opts.zstd_level).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1001];
        v[1000] = 1;
        assert!(!is_all_zero(&v));
        v[1000] = 0;
        v[3] = 9;
        assert!(!is_all_zero(&v));
        assert!(is_all_zero(&[]));
    }

    #[test]
    fn extents_of_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = File::create(&path).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.write_at(b"world", 10 << 20).unwrap();
        f.set_len(20 << 20).unwrap();
        let size = 20 << 20;
        let ext = data_extents(&f, size);
        assert!(!ext.is_empty());
        let covered: u64 = ext.iter().map(|(s, e)| e - s).sum();
        assert!(ext.iter().any(|(s, e)| *s <= 10 << 20 && *e > 10 << 20));
        // tmpfs/ext4/xfs/btrfs all report the 10 MiB gap as a hole.
        assert!(covered < size, "no hole found: {ext:?}");
    }

    #[test]
    fn excluded_paths_are_left_out_with_their_subtrees() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("chains/dot/network")).unwrap();
        fs::create_dir_all(src.join("keystore/sub")).unwrap();
        fs::write(src.join("chains/dot/network/secret_ed25519"), b"secret").unwrap();
        fs::write(src.join("chains/dot/db"), b"data").unwrap();
        fs::write(src.join("keystore/sub/key"), b"key").unwrap();
        fs::write(src.join("wallet.dat"), b"wallet").unwrap();
        let store = store::DirStore::open(dir.path().join("store")).unwrap();
        let out = dir.path().join("img");
        let opts = PackOptions {
            exclude: vec![
                PathBuf::from("chains/dot/network/secret_ed25519"),
                PathBuf::from("/keystore"),
                PathBuf::from("missing"),
            ],
            ..PackOptions::default()
        };
        let summary = pack(&src, &store, &out, &opts, None).unwrap();
        assert_eq!(summary.excluded, 2);
        let m = crate::ImageManifest::open(&out).unwrap();
        let chains = m.lookup(crate::ROOT_INO, b"chains").unwrap().unwrap();
        let dot = m.lookup(chains.ino, b"dot").unwrap().unwrap();
        let network = m.lookup(dot.ino, b"network").unwrap().unwrap();
        assert!(m.lookup(network.ino, b"secret_ed25519").unwrap().is_none());
        assert!(m.lookup(dot.ino, b"db").unwrap().is_some());
        assert!(m.lookup(crate::ROOT_INO, b"keystore").unwrap().is_none());
        assert!(m.lookup(crate::ROOT_INO, b"wallet.dat").unwrap().is_some());
    }
}
