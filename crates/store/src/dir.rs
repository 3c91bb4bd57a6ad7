//! The `dir://` chunk store: one file per object under a two-level fan-out (`ROOT/ab/abcdef…`).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::{ChunkId, ChunkStore, StoreError};

/// Objects stored as files `ROOT/<first two hex digits>/<64 hex digits>`.
///
/// Writes go to a temporary file in the same directory, are flushed to disk, and are then renamed into
/// place, so a crash never leaves a partial object under its final name (at worst a stray `.tmp*` file,
/// which is never read). Concurrent writers of the same id each write their own temporary file; the last
/// rename wins and both carry the same bytes.
pub struct DirStore {
    root: PathBuf,
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        operation,
        path: path.display().to_string(),
        source,
    }
}

impl DirStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_error("create directory", &root, e))?;
        Ok(DirStore { root })
    }

    /// The directory holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `data` to a new temporary file beside `path` (not yet flushed to disk, not yet renamed).
    fn write_temp(&self, path: &Path, data: &[u8]) -> Result<NamedTempFile, StoreError> {
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, e))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp.")
            .tempfile_in(dir)
            .map_err(|e| io_error("create temporary file in", dir, e))?;
        temp.write_all(data)
            .map_err(|e| io_error("write", temp.path(), e))?;
        Ok(temp)
    }

    /// The file an object with `id` lives in.
    pub fn object_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        let fan_out = hex.get(..2).unwrap_or_default();
        self.root.join(fan_out).join(&hex)
    }
}

impl ChunkStore for DirStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.object_path(id);
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path, e)),
        }
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        if self.has(id)? {
            return Ok(());
        }
        let path = self.object_path(id);
        let temp = self.write_temp(&path, data)?;
        temp.as_file()
            .sync_data()
            .map_err(|e| io_error("write", temp.path(), e))?;
        temp.persist(&path)
            .map_err(|e| io_error("rename into place", &path, e.error))?;
        Ok(())
    }

    /// Writes every missing object to a temporary file, starting its writeback at once
    /// (`sync_file_range`), then waits for each (`fdatasync`, by then mostly done), renames them into
    /// place and makes the renames durable (one `fsync` per fan-out directory): a final name only ever
    /// points at complete data, and the disk writes of a batch overlap instead of running one by one.
    /// Only the store's own files are flushed, whatever else is dirty on the filesystem.
    fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let mut pending = Vec::new();
        for (id, data) in items {
            if !seen.insert(*id) || self.has(id)? {
                continue;
            }
            let path = self.object_path(id);
            let temp = self.write_temp(&path, data)?;
            // SAFETY: the descriptor stays open (owned by `temp`) for the call. A failure only means
            // writeback starts later; the fdatasync below still makes the data durable.
            unsafe {
                libc::sync_file_range(
                    temp.as_file().as_raw_fd(),
                    0,
                    0,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            pending.push((temp, path));
        }
        let mut dirs = HashSet::new();
        for (temp, _) in &pending {
            temp.as_file()
                .sync_data()
                .map_err(|e| io_error("write", temp.path(), e))?;
        }
        for (temp, path) in pending {
            temp.persist(&path)
                .map_err(|e| io_error("rename into place", &path, e.error))?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("sync directory", &dir, e))?;
        }
        Ok(())
    }

    fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let path = self.object_path(id);
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("stat", &path, e)),
        }
    }

    fn public_url(&self) -> String {
        format!("dir://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn object(n: u32, len: usize) -> (ChunkId, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(31).wrapping_add(n) as u8)
            .collect();
        (ChunkId::of(&data), data)
    }

    #[test]
    fn put_get_has_round_trip_with_fan_out_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path().join("objects")).unwrap();
        let (id, data) = object(1, 100_000);
        assert!(!store.has(&id).unwrap());
        assert_eq!(store.get(&id).unwrap(), None);
        store.put(&id, &data).unwrap();
        store.put(&id, &data).unwrap(); // again: not an error
        assert!(store.has(&id).unwrap());
        assert_eq!(store.get(&id).unwrap().as_deref(), Some(data.as_slice()));
        let hex = id.to_hex();
        let expected = tmp.path().join("objects").join(&hex[..2]).join(&hex);
        assert_eq!(store.object_path(&id), expected);
        assert_eq!(fs::read(expected).unwrap(), data);
        // No temporary files remain.
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("objects").join(&hex[..2]))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn many_operations_keep_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let objects: Vec<_> = (0..20).map(|n| object(n, 1000 + n as usize)).collect();
        let items: Vec<(ChunkId, &[u8])> = objects
            .iter()
            .step_by(2)
            .map(|(id, d)| (*id, d.as_slice()))
            .collect();
        store.put_many(&items).unwrap();
        let ids: Vec<ChunkId> = objects.iter().map(|(id, _)| *id).collect();
        let present = store.has_many(&ids).unwrap();
        let fetched = store.get_many(&ids).unwrap();
        for (i, (_, data)) in objects.iter().enumerate() {
            assert_eq!(present[i], i % 2 == 0);
            assert_eq!(
                fetched[i].as_deref(),
                (i % 2 == 0).then_some(data.as_slice())
            );
        }
    }

    #[test]
    fn concurrent_writers_of_the_same_id() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::open(tmp.path()).unwrap());
        let (id, data) = object(7, 3 << 20);
        let data = Arc::new(data);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, data) = (store.clone(), data.clone());
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        store.put(&id, &data).unwrap();
                        let read = store.get(&id).unwrap().unwrap();
                        assert_eq!(read.len(), data.len(), "saw a partial object");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.get(&id).unwrap().as_deref(), Some(data.as_slice()));
    }

    #[test]
    fn public_url_names_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        assert_eq!(
            store.public_url(),
            format!("dir://{}", tmp.path().display())
        );
    }
}
