//! Background hydration: fetch a whole image (or some of its files) into the host cache, traced chunks
//! first, in parallel, then assemble fully cached files for passthrough.

use std::collections::HashSet;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use image::{ChunkRef, FileKind, ImageError, ImageManifest, Ino, ROOT_INO};

use crate::fetch::{FetchError, Fetcher};
use crate::files;
use crate::trace::{self, TraceError};

/// Why hydration could not run.
#[derive(Debug, thiserror::Error)]
pub enum HydrateError {
    /// The image could not be walked.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A requested path is not in the image.
    #[error("{0}: no such file in the image")]
    NoSuchPath(String),
    /// The trace file could not be read.
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// What to hydrate and how.
#[derive(Clone, Debug, Default)]
pub struct HydrateOptions {
    /// Parallel fetch threads (at least 1).
    pub parallel: usize,
    /// Paths inside the image (relative to its root) to hydrate; empty means the whole image.
    pub paths: Vec<String>,
    /// A trace recorded by `mount --record-trace`: its chunks are fetched first.
    pub trace: Option<std::path::PathBuf>,
    /// Whether to assemble fully cached files for passthrough afterwards.
    pub assemble_files: bool,
}

/// Progress so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct HydrateProgress {
    /// Plaintext bytes of the chunks handled so far (fetched, already cached, or failed).
    pub done_bytes: u64,
    /// Plaintext bytes of all chunks to hydrate.
    pub total_bytes: u64,
    /// Chunks handled so far.
    pub done_chunks: u64,
    /// Chunks to hydrate.
    pub total_chunks: u64,
}

/// The outcome of a hydration.
#[derive(Debug, Default)]
pub struct HydrateReport {
    /// Distinct chunks of the selection.
    pub chunks: u64,
    /// Plaintext bytes of those chunks.
    pub bytes: u64,
    /// Chunks that were already cached before this run.
    pub already_cached: u64,
    /// Chunks that could not be fetched, with the reason (at most 20 listed).
    pub failures: Vec<(ChunkRef, FetchError)>,
    /// Number of chunks that failed.
    pub failed: u64,
    /// Files assembled for passthrough.
    pub files_assembled: u64,
}

fn resolve(manifest: &ImageManifest, path: &str) -> Result<Ino, HydrateError> {
    let mut ino = ROOT_INO;
    for comp in Path::new(path).components() {
        match comp {
            Component::Normal(name) => {
                use std::os::unix::ffi::OsStrExt;
                ino = manifest
                    .lookup(ino, name.as_bytes())?
                    .ok_or_else(|| HydrateError::NoSuchPath(path.to_string()))?
                    .ino;
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(HydrateError::NoSuchPath(path.to_string()))
            }
        }
    }
    Ok(ino)
}

/// Regular files under `start` (itself when it is a file), depth first.
fn regular_files(
    manifest: &ImageManifest,
    start: Ino,
    out: &mut Vec<Ino>,
) -> Result<(), ImageError> {
    let mut stack = vec![start];
    let mut seen = HashSet::new();
    while let Some(ino) = stack.pop() {
        if !seen.insert(ino) {
            continue;
        }
        let inode = manifest.getattr(ino)?;
        match inode.kind {
            FileKind::Regular => out.push(ino),
            FileKind::Directory => {
                let entries = manifest.readdir(ino, 0)?;
                for e in entries.into_iter().rev() {
                    stack.push(e.ino);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Fetches the selection into `fetcher`'s host cache. `progress` is called after every batch.
pub fn hydrate(
    manifest: &ImageManifest,
    fetcher: &Fetcher,
    options: &HydrateOptions,
    progress: &(dyn Fn(&HydrateProgress) + Sync),
) -> Result<HydrateReport, HydrateError> {
    let mut files = Vec::new();
    if options.paths.is_empty() {
        regular_files(manifest, ROOT_INO, &mut files)?;
    } else {
        for p in &options.paths {
            let ino = resolve(manifest, p)?;
            regular_files(manifest, ino, &mut files)?;
        }
    }

    let mut seen = HashSet::new();
    let mut order: Vec<ChunkRef> = Vec::new();
    if let Some(path) = &options.trace {
        for entry in trace::load(path)? {
            if let Ok(Some(r)) = manifest.chunk(entry.ino, entry.chunk_index) {
                if r.id == entry.id && seen.insert(r.id) {
                    order.push(r);
                }
            }
        }
    }
    for &ino in &files {
        for r in manifest.file_chunks(ino)?.into_iter().flatten() {
            if seen.insert(r.id) {
                order.push(r);
            }
        }
    }

    let cache = fetcher.cache();
    let mut report = HydrateReport {
        chunks: order.len() as u64,
        bytes: order.iter().map(|r| u64::from(r.plain_len)).sum(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    let mut state = HydrateProgress {
        total_bytes: report.bytes,
        total_chunks: report.chunks,
        ..Default::default()
    };
    for r in order {
        if cache.contains(&r.id, r.plain_len) {
            report.already_cached += 1;
            state.done_chunks += 1;
            state.done_bytes += u64::from(r.plain_len);
        } else {
            todo.push(r);
        }
    }
    progress(&state);

    let batch = 4usize;
    let batches: Vec<&[ChunkRef]> = todo.chunks(batch).collect();
    let next = AtomicUsize::new(0);
    let shared = Mutex::new((state, Vec::new(), 0u64));
    std::thread::scope(|s| {
        for _ in 0..options.parallel.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else { return };
                let results = fetcher.fetch_into_cache(b);
                let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                for (r, res) in b.iter().zip(results) {
                    g.0.done_chunks += 1;
                    g.0.done_bytes += u64::from(r.plain_len);
                    if let Err(e) = res {
                        g.2 += 1;
                        if g.1.len() < 20 {
                            g.1.push((*r, e));
                        }
                    }
                }
                progress(&g.0);
            });
        }
    });
    let (_, failures, failed) = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    report.failures = failures;
    report.failed = failed;

    if options.assemble_files {
        let cs = u64::from(manifest.chunk_size()).max(1);
        for &ino in &files {
            let inode = manifest.getattr(ino)?;
            if inode.size == 0 {
                continue;
            }
            let chunks = manifest.file_chunks(ino)?;
            match files::assemble(cache, inode.size, cs, &chunks) {
                Ok(Some(_)) => report.files_assembled += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!("assembling inode {ino}: {e}"),
            }
        }
    }
    Ok(report)
}
