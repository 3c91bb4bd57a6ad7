//! The open data and index files of a namespace, and the helpers that create and read them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use crate::error::{IoContext, ZdbError};

/// Open handles of a namespace's files; index `N` holds file `dN` / `iN`.
#[derive(Default)]
pub(super) struct Files {
    /// Data files, oldest first.
    pub(super) data: Vec<Arc<File>>,
    /// Read-only maps of the data files (`None` where mapping failed: reads fall back to `pread`). The
    /// current file's map reaches past its end to the largest size it can grow to, so it never needs
    /// remapping; only bytes already written (entries the index points at) are ever read from a map.
    pub(super) maps: Vec<Option<Mmap>>,
    /// Index files, oldest first.
    pub(super) index: Vec<Arc<File>>,
}

/// Room a data file may take past `--datasize`: the entry that crosses it (at most an 8 MiB payload, a
/// key and a header), rounded up.
const DATA_FILE_OVERSHOOT: u64 = 16 * 1024 * 1024;

impl Files {
    /// Maps data file `id` for reading: `len` bytes for a closed file, or up to the largest size a data
    /// file of `datasize` can reach for the current one.
    pub(super) fn map_data(&mut self, id: usize, current: bool, datasize: u64) {
        let Some(f) = self.data.get(id) else { return };
        let len = if current {
            datasize.saturating_add(DATA_FILE_OVERSHOOT)
        } else {
            f.metadata().map(|m| m.len()).unwrap_or(0)
        };
        // SAFETY: the map is read-only and only ranges of entries already written (and indexed) are read
        // from it; data files are append-only while the server runs (a torn tail is cut before mapping,
        // RELOAD remaps with readers locked out). A program truncating a data file under a running
        // server would make such a read fault, as with any reader of a mapped file.
        let map = match usize::try_from(len) {
            Ok(len) if len > 0 => unsafe { MmapOptions::new().len(len).map(&**f) }.ok(),
            _ => None,
        };
        if self.maps.len() <= id {
            self.maps.resize_with(id + 1, || None);
        }
        self.maps[id] = map;
    }

    /// Maps every data file; the last one is the current one.
    pub(super) fn map_all_data(&mut self, datasize: u64) {
        let n = self.data.len();
        for id in 0..n {
            self.map_data(id, id + 1 == n, datasize);
        }
    }
}

/// Reads up to `buf.len()` bytes at `at`; fewer only at the end of the file.
pub(super) fn read_at_most(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Creates (truncating) a file holding `header`, synced.
pub(super) fn create_with_header(path: &Path, header: &[u8]) -> Result<File, ZdbError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    f.write_all_at(header, 0)
        .ctx(|| format!("write {}", path.display()))?;
    f.sync_all().ctx(|| format!("sync {}", path.display()))?;
    Ok(f)
}

/// Replaces `path` atomically with `bytes` (write a temporary file, fsync, rename).
pub(super) fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), ZdbError> {
    let tmp = path.with_extension("tmp");
    {
        let f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all_at(bytes, 0)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("sync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).ctx(|| format!("rename {}", path.display()))
}
