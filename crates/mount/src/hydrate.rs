//! Hydration: fetch a whole image (or some of its files) into the host cache, traced chunks first, in
//! parallel, and seal every complete file, so the image is passthrough-ready with no remount and no
//! copy. Files with the same content share one cache file; a chunk shared by several files is fetched
//! once (and reflinked where the cache's filesystem can).

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use image::{ChunkRef, FileKind, ImageError, ImageManifest, Ino, ROOT_INO};
use parking_lot::Mutex;
use store::ChunkId;

use crate::cache::CacheError;
use crate::cache_file::{CacheFile, FileKey, SealOutcome};
use crate::fetch::{Dest, FetchError, Fetcher};
use crate::trace::{self, TraceError};

/// Chunks of one file handed to a hydration thread at a time.
const UNIT_CHUNKS: u64 = 64;

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
    /// A host-cache file could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
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
}

/// Progress so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct HydrateProgress {
    /// Plaintext bytes of the file chunks handled so far (fetched, already cached, or failed).
    pub done_bytes: u64,
    /// Plaintext bytes of all file chunks to hydrate (a chunk in several files counts per file).
    pub total_bytes: u64,
}

/// The outcome of a hydration.
#[derive(Debug, Default)]
pub struct HydrateReport {
    /// Distinct chunks of the selection.
    pub chunks: u64,
    /// Plaintext bytes of those chunks.
    pub bytes: u64,
    /// Distinct chunks that were already cached (in every file holding them) before this run.
    pub already_cached: u64,
    /// Chunks that could not be fetched, with the reason (at most 20 listed).
    pub failures: Vec<(ChunkRef, FetchError)>,
    /// Number of distinct chunks that failed.
    pub failed: u64,
    /// Cache files complete and sealed (passthrough-ready) at the end, duplicate contents counted once.
    pub files_sealed: u64,
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

/// A content's open cache file and its chunk list.
type OpenContent = (Arc<CacheFile>, Arc<Vec<Option<ChunkRef>>>);

/// One distinct file content of the selection and its progress.
struct FileWork {
    ino: Ino,
    size: u64,
    key: FileKey,
    /// Work units of this file not finished yet; the last one to finish seals the file.
    units_left: AtomicU64,
    /// The open cache file and chunk list while units of the file are being worked on.
    open: Mutex<Option<OpenContent>>,
}

/// Chunks `start..end` of file `file`.
#[derive(Clone, Copy)]
struct Unit {
    file: usize,
    start: u64,
    end: u64,
}

/// Counters shared by the hydration threads.
#[derive(Default)]
struct Tally {
    progress: HydrateProgress,
    /// Distinct chunks that needed a fetch or copy, and whether that failed.
    needed: HashMap<ChunkId, bool>,
    failures: Vec<(ChunkRef, FetchError)>,
    sealed: u64,
}

/// The distinct file contents of a selection and the distinct chunks they hold.
struct Selection {
    files: Vec<FileWork>,
    /// The content (index into `files`) of every selected regular file.
    file_of_ino: HashMap<Ino, usize>,
    /// Plaintext length of every distinct chunk.
    chunk_bytes: HashMap<ChunkId, u32>,
    /// Plaintext bytes to hydrate, a chunk counted once per content holding it.
    total_bytes: u64,
}

/// The regular files `options` selects (every file of the image without paths), by distinct content.
fn select(
    manifest: &ImageManifest,
    options: &HydrateOptions,
    cs: u64,
) -> Result<Selection, HydrateError> {
    let mut inos = Vec::new();
    if options.paths.is_empty() {
        regular_files(manifest, ROOT_INO, &mut inos)?;
    } else {
        for p in &options.paths {
            let ino = resolve(manifest, p)?;
            regular_files(manifest, ino, &mut inos)?;
        }
    }
    let mut sel = Selection {
        files: Vec::new(),
        file_of_ino: HashMap::new(),
        chunk_bytes: HashMap::new(),
        total_bytes: 0,
    };
    let mut by_key: HashMap<FileKey, usize> = HashMap::new();
    for ino in inos {
        let size = manifest.getattr(ino)?.size;
        if size == 0 || sel.file_of_ino.contains_key(&ino) {
            continue;
        }
        let chunks = manifest.file_chunks(ino)?;
        let key = FileKey::of(size, cs, &chunks);
        if let Some(&n) = by_key.get(&key) {
            sel.file_of_ino.insert(ino, n);
            continue;
        }
        for r in chunks.iter().flatten() {
            sel.chunk_bytes.insert(r.id, r.plain_len);
            sel.total_bytes += u64::from(r.plain_len);
        }
        by_key.insert(key, sel.files.len());
        sel.file_of_ino.insert(ino, sel.files.len());
        sel.files.push(FileWork {
            ino,
            size,
            key,
            units_left: AtomicU64::new(0),
            open: Mutex::new(None),
        });
    }
    Ok(sel)
}

/// The units of work: the traced chunks first (each its own unit, when `options` has a trace), then
/// every file in order, `UNIT_CHUNKS` chunks at a time. Counts each file's units.
fn plan_units(
    manifest: &ImageManifest,
    options: &HydrateOptions,
    sel: &Selection,
    cs: u64,
) -> Result<Vec<Unit>, HydrateError> {
    let mut units: Vec<Unit> = Vec::new();
    if let Some(path) = &options.trace {
        let mut seen = HashSet::new();
        for entry in trace::load(path)? {
            let Some(&file) = sel.file_of_ino.get(&entry.ino) else {
                continue;
            };
            let current = manifest.chunk(entry.ino, entry.chunk_index);
            if matches!(current, Ok(Some(r)) if r.id == entry.id)
                && seen.insert((file, entry.chunk_index))
            {
                units.push(Unit {
                    file,
                    start: entry.chunk_index,
                    end: entry.chunk_index + 1,
                });
            }
        }
    }
    for (n, f) in sel.files.iter().enumerate() {
        let count = f.size.div_ceil(cs);
        let mut start = 0;
        while start < count {
            let end = (start + UNIT_CHUNKS).min(count);
            units.push(Unit {
                file: n,
                start,
                end,
            });
            start = end;
        }
    }
    for u in &units {
        if let Some(f) = sel.files.get(u.file) {
            f.units_left.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(units)
}

/// Fetches the selection into `fetcher`'s host cache and seals every complete file. `progress` is
/// called after every unit of work.
pub fn hydrate(
    manifest: &ImageManifest,
    fetcher: &Fetcher,
    options: &HydrateOptions,
    progress: &(dyn Fn(&HydrateProgress) + Sync),
) -> Result<HydrateReport, HydrateError> {
    let cs = u64::from(manifest.chunk_size()).max(1);
    let sel = select(manifest, options, cs)?;
    let units = plan_units(manifest, options, &sel, cs)?;
    let files = &sel.files;
    let tally = Mutex::new(Tally {
        progress: HydrateProgress {
            done_bytes: 0,
            total_bytes: sel.total_bytes,
        },
        ..Tally::default()
    });
    progress(&tally.lock().progress);
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<HydrateError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..options.parallel.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(unit) = units.get(i) else { return };
                let Some(file) = files.get(unit.file) else {
                    return;
                };
                if let Err(e) = work_unit(manifest, fetcher, cs, file, unit, &tally, progress) {
                    first_error.lock().get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner() {
        return Err(e);
    }
    let tally = tally.into_inner();
    let failed = tally.needed.values().filter(|failed| **failed).count() as u64;
    Ok(HydrateReport {
        chunks: sel.chunk_bytes.len() as u64,
        bytes: sel.chunk_bytes.values().map(|b| u64::from(*b)).sum(),
        already_cached: (sel.chunk_bytes.len() - tally.needed.len()) as u64,
        failures: tally.failures,
        failed,
        files_sealed: tally.sealed,
    })
}

/// Fetches the missing chunks of one unit into its file's cache file; the last unit of a file seals
/// it.
fn work_unit(
    manifest: &ImageManifest,
    fetcher: &Fetcher,
    cs: u64,
    file: &FileWork,
    unit: &Unit,
    tally: &Mutex<Tally>,
    progress: &(dyn Fn(&HydrateProgress) + Sync),
) -> Result<(), HydrateError> {
    let (cache_file, chunks) = {
        let mut open = file.open.lock();
        match open.as_ref() {
            Some((f, c)) => (Arc::clone(f), Arc::clone(c)),
            None => {
                let chunks = Arc::new(manifest.file_chunks(file.ino)?);
                let f = fetcher
                    .cache()
                    .open_file_keyed(file.key, file.size, cs, &chunks)?;
                *open = Some((Arc::clone(&f), Arc::clone(&chunks)));
                (f, chunks)
            }
        }
    };
    let mut items = Vec::new();
    let mut unit_bytes = 0u64;
    for index in unit.start..unit.end {
        let Some(Some(r)) = chunks.get(index as usize) else {
            continue;
        };
        unit_bytes += u64::from(r.plain_len);
        if !cache_file.has(index) {
            items.push((
                *r,
                Dest {
                    file: Arc::clone(&cache_file),
                    index,
                },
            ));
        }
    }
    let results = fetcher.fill(&items);
    {
        let mut t = tally.lock();
        for ((r, _), res) in items.iter().zip(results) {
            let failed = res.is_err();
            let entry = t.needed.entry(r.id).or_insert(false);
            *entry |= failed;
            if let Err(e) = res {
                if t.failures.len() < 20 {
                    t.failures.push((*r, e));
                }
            }
        }
        t.progress.done_bytes += unit_bytes;
        progress(&t.progress);
    }
    if file.units_left.fetch_sub(1, Ordering::AcqRel) == 1 {
        let sealed = match cache_file.seal_with(&chunks) {
            Ok(SealOutcome::Sealed) => true,
            Ok(SealOutcome::Incomplete { missing }) => {
                tracing::warn!(
                    "{}: {missing} chunk(s) missing after hydration",
                    cache_file.data_path().display()
                );
                false
            }
            Err(e) => {
                tracing::warn!("sealing {}: {e}", cache_file.data_path().display());
                false
            }
        };
        if sealed {
            tally.lock().sealed += 1;
        }
        *file.open.lock() = None;
    }
    Ok(())
}
