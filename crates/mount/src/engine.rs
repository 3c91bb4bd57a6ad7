//! The base-read engine: `read(ino, offset, len)` over an image, from cache or store, independent of
//! FUSE (the FUSE adapter in [`crate::fs`] and future write layers sit on top of it).

use std::sync::{Arc, Mutex};

use image::{ChunkRef, ImageError, ImageManifest, Ino};

use crate::fetch::{ChunkBytes, FetchError, Fetcher};
use crate::trace::TraceRecorder;

/// How far (bytes) a read may land from where the previous one ended and still count as sequential.
const SEQUENTIAL_SLACK: u64 = 4 << 20;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The image metadata could not answer (unknown inode, damaged manifest).
    #[error(transparent)]
    Image(#[from] ImageError),
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

/// Reads file bytes of one image. Share with `Arc`.
#[derive(Debug)]
pub struct BaseReader {
    manifest: Arc<ImageManifest>,
    fetcher: Arc<Fetcher>,
    chunk_size: u64,
    readahead_chunks: u64,
    trace: Option<TraceRecorder>,
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

    /// Reads up to `len` bytes at `offset` of file `ino` (fewer at end of file), without readahead.
    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<ChunkBytes, ReadError> {
        self.read_inner(ino, offset, len, None)
    }

    /// Like [`read`](Self::read), and detects sequential access in `state` (one per open file),
    /// prefetching the following chunks in the background when the reads are sequential.
    pub fn read_sequential(
        &self,
        ino: Ino,
        offset: u64,
        len: usize,
        state: &Mutex<ReadState>,
    ) -> Result<ChunkBytes, ReadError> {
        self.read_inner(ino, offset, len, Some(state))
    }

    fn read_inner(
        &self,
        ino: Ino,
        offset: u64,
        len: usize,
        state: Option<&Mutex<ReadState>>,
    ) -> Result<ChunkBytes, ReadError> {
        let size = self.manifest.getattr(ino)?.size;
        if offset >= size || len == 0 {
            return Ok(ChunkBytes::Owned(Vec::new()));
        }
        let end = offset.saturating_add(len as u64).min(size);
        let cs = self.chunk_size;
        let first = offset / cs;
        let last = (end - 1) / cs;
        let mut refs: Vec<Option<ChunkRef>> = Vec::with_capacity((last - first + 1) as usize);
        for index in first..=last {
            let r = self.manifest.chunk(ino, index)?;
            if let (Some(t), Some(r)) = (&self.trace, &r) {
                t.record(ino, index, &r.id);
            }
            refs.push(r);
        }
        if let Some(state) = state {
            // Held only while deciding what to prefetch: concurrent reads of one handle proceed.
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            self.readahead(ino, offset, end, size, &mut state);
        }
        if refs.len() > 1 {
            // Fetch every chunk of a multi-chunk read at once rather than one after another.
            let present: Vec<ChunkRef> = refs.iter().flatten().copied().collect();
            self.fetcher.prefetch(&present);
        }
        let mut pieces: Vec<ChunkBytes> = Vec::with_capacity(refs.len());
        let mut pos = offset;
        for r in refs {
            let within = pos % cs;
            let n = (cs - within).min(end - pos) as usize;
            match r {
                None => pieces.push(ChunkBytes::Owned(vec![0; n])),
                Some(r) => {
                    let bytes =
                        self.fetcher
                            .read(&r, within, n)
                            .map_err(|error| ReadError::Chunk {
                                ino,
                                offset: pos,
                                error,
                            })?;
                    if bytes.len() != n {
                        return Err(ReadError::ShortChunk { ino, offset: pos });
                    }
                    pieces.push(bytes);
                }
            }
            pos += n as u64;
        }
        self.fetcher.metrics().bytes_read.inc_by(end - offset);
        // One piece (the common case: a read inside one chunk) is handed over without copying.
        if pieces.len() == 1 {
            if let Some(piece) = pieces.pop() {
                return Ok(piece);
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for piece in &pieces {
            out.extend_from_slice(piece);
        }
        Ok(ChunkBytes::Owned(out))
    }

    fn readahead(&self, ino: Ino, offset: u64, end: u64, size: u64, state: &mut ReadState) {
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
        let chunk_count = size.div_ceil(cs);
        let from = ((end - 1) / cs + 1).max(state.prefetched_until);
        let to = ((end - 1) / cs + 1 + self.readahead_chunks).min(chunk_count);
        if from >= to {
            return;
        }
        let mut refs = Vec::new();
        for index in from..to {
            match self.manifest.chunk(ino, index) {
                Ok(Some(r)) => refs.push(r),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        state.prefetched_until = to;
        self.fetcher.prefetch(&refs);
    }

    /// The chunk size of the image in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }
}
