//! The base-read engine: reads of an image's files, from their host-cache files or the stores,
//! independent of FUSE (the FUSE adapter in [`crate::fs`] and the blocks write layer sit on top of it).
//!
//! A file is opened once per user ([`BaseReader::open`] → [`OpenFile`]): that finds (or creates) its
//! host-cache file. A read takes present chunks from the cache file (one `pread`, direct I/O) and asks the
//! [`Fetcher`] for the others, which writes them into the cache file on the way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image::{ChunkRef, FileKind, ImageError, ImageManifest, Ino};
use parking_lot::Mutex;

use crate::cache::CacheError;
use crate::cache_file::{AlignedBuf, CacheFile, SealOutcome};
use crate::fetch::{ChunkBytes, Dest, FetchError, Fetcher};
use crate::trace::TraceRecorder;

/// How far (bytes) a read may land from where the previous one ended and still count as sequential.
const SEQUENTIAL_SLACK: u64 = 4 << 20;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The image metadata could not answer (unknown inode, damaged manifest).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The file's host-cache file could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A path is not in the image.
    #[error("{0}: no such file in the image")]
    NoSuchPath(String),
    /// A chunk could not be produced.
    #[error("inode {ino} offset {offset}: {error}")]
    Chunk {
        /// The file.
        ino: Ino,
        /// The file offset of the chunk's part that was being read.
        offset: u64,
        /// Why.
        error: FetchError,
    },
    /// A chunk decoded to fewer bytes than the manifest says the file has there.
    #[error("inode {ino} offset {offset}: chunk shorter than the file")]
    ShortChunk {
        /// The file.
        ino: Ino,
        /// The file offset where bytes were missing.
        offset: u64,
    },
}

/// Per-open-file state for sequential-read detection and readahead.
#[derive(Debug, Default, Clone)]
pub struct ReadState {
    next_offset: u64,
    sequential_reads: u32,
    /// Chunk indices below this were already handed to readahead.
    prefetched_until: u64,
}

/// A regular file of the image opened for reading: its size and its host-cache file.
#[derive(Debug)]
pub struct OpenFile {
    ino: Ino,
    size: u64,
    /// `None` for an empty file (nothing to cache).
    cache: Option<Arc<CacheFile>>,
}

impl OpenFile {
    /// The file's inode in the image.
    pub fn ino(&self) -> Ino {
        self.ino
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's host-cache file (none for an empty file).
    pub fn cache_file(&self) -> Option<&Arc<CacheFile>> {
        self.cache.as_ref()
    }

    /// Whether the whole file is in its host-cache file, verified and sealed (passthrough-ready).
    pub fn is_sealed(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.check_sealed())
    }
}

/// Reads file bytes of one image. Share with `Arc`.
#[derive(Debug)]
pub struct BaseReader {
    manifest: Arc<ImageManifest>,
    fetcher: Arc<Fetcher>,
    chunk_size: u64,
    readahead_chunks: u64,
    trace: Option<TraceRecorder>,
    sealer: Arc<Sealer>,
}

impl BaseReader {
    /// A reader of `manifest` fetching through `fetcher`; sequential readers get `readahead_chunks`
    /// chunks prefetched ahead; accesses are recorded to `trace` when given.
    pub fn new(
        manifest: Arc<ImageManifest>,
        fetcher: Arc<Fetcher>,
        readahead_chunks: u64,
        trace: Option<TraceRecorder>,
    ) -> BaseReader {
        let chunk_size = u64::from(manifest.chunk_size()).max(1);
        BaseReader {
            manifest,
            fetcher,
            chunk_size,
            readahead_chunks,
            trace,
            sealer: Arc::new(Sealer::default()),
        }
    }

    /// The image.
    pub fn manifest(&self) -> &Arc<ImageManifest> {
        &self.manifest
    }

    /// The fetcher.
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// The chunk size of the image in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Opens regular file `ino` for reading (finds or creates its host-cache file). A file whose
    /// chunks are all present but not sealed yet is verified and sealed in the background, so a later
    /// open can use passthrough.
    pub fn open(&self, ino: Ino) -> Result<Arc<OpenFile>, ReadError> {
        let inode = self.manifest.getattr(ino)?;
        if inode.kind != FileKind::Regular {
            return Err(ReadError::Image(ImageError::WrongKind {
                ino,
                expected: "regular file",
            }));
        }
        if inode.size == 0 {
            return Ok(Arc::new(OpenFile {
                ino,
                size: 0,
                cache: None,
            }));
        }
        let chunks = self.manifest.file_chunks(ino)?;
        let cache = self
            .fetcher
            .cache()
            .open_file(inode.size, self.chunk_size, &chunks)?;
        if !cache.check_sealed() && cache.is_complete_on_disk().unwrap_or(false) {
            self.sealer.queue(
                Arc::clone(&cache),
                chunks,
                Arc::clone(self.fetcher.metrics()),
            );
        }
        Ok(Arc::new(OpenFile {
            ino,
            size: inode.size,
            cache: Some(cache),
        }))
    }

    /// The inode of `path` (relative to the image root; `.`, empty and `/` components are skipped).
    pub fn lookup_path(&self, path: &std::path::Path) -> Result<Ino, ReadError> {
        use std::os::unix::ffi::OsStrExt;
        let mut ino = image::ROOT_INO;
        for comp in path.components() {
            match comp {
                std::path::Component::Normal(name) => {
                    ino = self
                        .manifest
                        .lookup(ino, name.as_bytes())?
                        .ok_or_else(|| ReadError::NoSuchPath(path.display().to_string()))?
                        .ino;
                }
                std::path::Component::CurDir | std::path::Component::RootDir => {}
                _ => return Err(ReadError::NoSuchPath(path.display().to_string())),
            }
        }
        Ok(ino)
    }

    /// lseek(2) SEEK_DATA (`data`) or SEEK_HOLE in file `ino`, from the image's recorded holes; `None`
    /// past the last data.
    pub fn seek(&self, ino: Ino, offset: u64, data: bool) -> Result<Option<u64>, ReadError> {
        Ok(if data {
            self.manifest.seek_data(ino, offset)?
        } else {
            self.manifest.seek_hole(ino, offset)?
        })
    }

    /// Reads up to `len` bytes at `offset` of file `ino` (fewer at end of file), without readahead.
    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<ChunkBytes, ReadError> {
        let file = self.open(ino)?;
        let mut buf = AlignedBuf::new();
        let len = len.min(file.size.saturating_sub(offset) as usize);
        let space = &mut buf.slice_mut(crate::cache_file::direct_io_len(len))[..len];
        let n = self.read_into(&file, offset, space, None)?;
        Ok(ChunkBytes::Owned(space[..n].to_vec()))
    }

    /// Reads bytes of `file` at `offset` into `buf` (fewer at end of file; returns how many). With a
    /// `state` (one per open file), sequential reads get the following chunks prefetched. An aligned
    /// `buf` whose length is a multiple of the page size is read into with direct I/O.
    pub fn read_into(
        &self,
        file: &OpenFile,
        offset: u64,
        buf: &mut [u8],
        state: Option<&Mutex<ReadState>>,
    ) -> Result<usize, ReadError> {
        let (ino, size) = (file.ino, file.size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let Some(cache) = &file.cache else {
            return Ok(0);
        };
        let end = offset.saturating_add(buf.len() as u64).min(size);
        let total = (end - offset) as usize;
        let cs = self.chunk_size;
        let (first, last) = (offset / cs, (end - 1) / cs);
        if let Some(state) = state {
            // Held only while deciding what to prefetch: concurrent reads of one handle proceed.
            let mut state = state.lock();
            self.readahead(file, cache, offset, end, &mut state);
        }
        if last > first {
            // Fetch every missing chunk of a multi-chunk read at once rather than one after another.
            let mut items = Vec::new();
            for index in first..=last {
                if let Ok(Some(r)) = self.manifest.chunk(ino, index) {
                    items.push((r, dest(cache, index)));
                }
            }
            self.fetcher.prefetch(&items);
        }
        let metrics = self.fetcher.metrics();
        let mut pos = offset;
        let mut done = 0usize;
        while done < total {
            let index = pos / cs;
            let within = pos % cs;
            let n = ((cs - within).min(end - pos)) as usize;
            let out = &mut buf[done..done + n];
            match self.manifest.chunk(ino, index)? {
                None => out.fill(0),
                Some(r) => {
                    if let Some(t) = &self.trace {
                        t.record(ino, index, &r.id);
                    }
                    self.read_chunk(cache, ino, index, &r, pos, within, out)?;
                }
            }
            pos += n as u64;
            done += n;
        }
        metrics.bytes_read.inc_by(total as u64);
        Ok(total)
    }

    /// Fills `out` with the bytes at `within` of chunk `index` (reference `r`, at file offset `pos`):
    /// from the cache file, else fetched into it.
    #[allow(clippy::too_many_arguments)]
    fn read_chunk(
        &self,
        cache: &Arc<CacheFile>,
        ino: Ino,
        index: u64,
        r: &ChunkRef,
        pos: u64,
        within: u64,
        out: &mut [u8],
    ) -> Result<(), ReadError> {
        match cache.read_into(index, r, within, out) {
            Ok(true) => {
                self.fetcher.metrics().cache_hits.inc();
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "reading {}: {e}; fetching chunk {index} again",
                cache.data_path().display()
            ),
        }
        let plain = self
            .fetcher
            .get(r, Some(dest(cache, index)))
            .map_err(|error| ReadError::Chunk {
                ino,
                offset: pos,
                error,
            })?;
        let start = within as usize;
        let piece = plain.get(start..start + out.len());
        match piece {
            Some(piece) => {
                out.copy_from_slice(piece);
                Ok(())
            }
            None => Err(ReadError::ShortChunk { ino, offset: pos }),
        }
    }

    fn readahead(
        &self,
        file: &OpenFile,
        cache: &Arc<CacheFile>,
        offset: u64,
        end: u64,
        state: &mut ReadState,
    ) {
        // The kernel issues readahead asynchronously, so sequential reads may arrive slightly out of
        // order: anything near the expected offset counts as sequential.
        if offset.abs_diff(state.next_offset) <= SEQUENTIAL_SLACK {
            state.sequential_reads = state.sequential_reads.saturating_add(1);
            state.next_offset = state.next_offset.max(end);
        } else {
            state.sequential_reads = 0;
            state.prefetched_until = 0;
            state.next_offset = end;
        }
        // A read from the start of the file or a second contiguous read counts as sequential.
        if self.readahead_chunks == 0 || (offset != 0 && state.sequential_reads < 1) {
            return;
        }
        let cs = self.chunk_size;
        let chunk_count = file.size.div_ceil(cs);
        let from = ((end - 1) / cs + 1).max(state.prefetched_until);
        let to = ((end - 1) / cs + 1 + self.readahead_chunks).min(chunk_count);
        if from >= to {
            return;
        }
        let mut items = Vec::new();
        for index in from..to {
            match self.manifest.chunk(file.ino, index) {
                Ok(Some(r)) => items.push((r, dest(cache, index))),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        state.prefetched_until = to;
        self.fetcher.prefetch(&items);
    }
}

fn dest(cache: &Arc<CacheFile>, index: u64) -> Dest {
    Dest {
        file: Arc::clone(cache),
        index,
    }
}

/// A cache file to seal and its chunk list.
type SealJob = (Arc<CacheFile>, Vec<Option<ChunkRef>>);

/// Verifies and seals complete cache files in the background, one thread at a time (started when
/// there is work, gone when there is none).
#[derive(Debug, Default)]
struct Sealer {
    queue: Mutex<VecDeque<SealJob>>,
    running: AtomicBool,
}

impl Sealer {
    fn queue(
        self: &Arc<Self>,
        file: Arc<CacheFile>,
        chunks: Vec<Option<ChunkRef>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        {
            let mut q = self.queue.lock();
            if q.iter().any(|(f, _)| Arc::ptr_eq(f, &file)) {
                return;
            }
            q.push_back((file, chunks));
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("cache-seal".into())
            .spawn(move || loop {
                let next = me.queue.lock().pop_front();
                let Some((file, chunks)) = next else {
                    me.running.store(false, Ordering::Release);
                    // Work queued between the pop and the store would be left behind: look again.
                    if me.queue.lock().is_empty() || me.running.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                };
                match file.seal_with(&chunks) {
                    Ok(SealOutcome::Sealed) => {
                        metrics.files_sealed.inc();
                    }
                    Ok(SealOutcome::Incomplete { missing }) => tracing::info!(
                        "{}: {missing} chunk(s) did not verify; they are fetched again on use",
                        file.data_path().display()
                    ),
                    Err(e) => tracing::warn!("sealing {}: {e}", file.data_path().display()),
                }
            });
        if spawned.is_err() {
            self.running.store(false, Ordering::Release);
        }
    }
}
