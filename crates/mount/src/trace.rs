//! Access traces: which chunks a workload read, in first-access order, so hydration can fetch them
//! first next time.
//!
//! Format: one line per chunk, `<inode> <chunk index> <chunk id hex>`, in the order the chunks were first
//! read. Lines that do not parse are skipped when a trace is loaded.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use image::Ino;
use parking_lot::Mutex;
use store::ChunkId;

/// Errors reading or writing a trace file.
#[derive(Debug, thiserror::Error)]
#[error("trace {path}: {error}")]
pub struct TraceError {
    /// The trace file.
    pub path: PathBuf,
    /// The underlying error.
    pub error: io::Error,
}

/// One traced chunk access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// The file read.
    pub ino: Ino,
    /// The chunk's index within the file.
    pub chunk_index: u64,
    /// The chunk read.
    pub id: ChunkId,
}

/// Appends first accesses of chunks to a trace file. Safe to share between threads.
#[derive(Debug)]
pub struct TraceRecorder {
    path: PathBuf,
    state: Mutex<(File, HashSet<ChunkId>)>,
}

impl TraceRecorder {
    /// Creates (truncating) the trace file at `path`.
    pub fn create(path: &Path) -> Result<TraceRecorder, TraceError> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|error| TraceError {
                path: path.to_path_buf(),
                error,
            })?;
        Ok(TraceRecorder {
            path: path.to_path_buf(),
            state: Mutex::new((file, HashSet::new())),
        })
    }

    /// Records an access; only the first access of each chunk is written.
    pub fn record(&self, ino: Ino, chunk_index: u64, id: &ChunkId) {
        let mut state = self.state.lock();
        if !state.1.insert(*id) {
            return;
        }
        let line = format!("{ino} {chunk_index} {}\n", id.to_hex());
        if let Err(e) = state.0.write_all(line.as_bytes()) {
            tracing::warn!("trace {}: {e}", self.path.display());
        }
    }
}

/// Loads a trace file written by [`TraceRecorder`].
pub fn load(path: &Path) -> Result<Vec<TraceEntry>, TraceError> {
    let file = File::open(path).map_err(|error| TraceError {
        path: path.to_path_buf(),
        error,
    })?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|error| TraceError {
            path: path.to_path_buf(),
            error,
        })?;
        let mut parts = line.split_ascii_whitespace();
        let (Some(ino), Some(index), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(ino), Ok(chunk_index), Ok(id)) =
            (ino.parse(), index.parse(), ChunkId::from_hex(id))
        {
            out.push(TraceEntry {
                ino,
                chunk_index,
                id,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_access_in_order_and_loads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trace");
        let rec = TraceRecorder::create(&path).expect("create");
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        rec.record(5, 1, &b);
        rec.record(2, 0, &a);
        rec.record(5, 1, &b);
        drop(rec);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("garbage line\n");
        std::fs::write(&path, text).expect("write");
        let loaded = load(&path).expect("load");
        assert_eq!(
            loaded,
            vec![
                TraceEntry {
                    ino: 5,
                    chunk_index: 1,
                    id: b
                },
                TraceEntry {
                    ino: 2,
                    chunk_index: 0,
                    id: a
                },
            ]
        );
    }
}
