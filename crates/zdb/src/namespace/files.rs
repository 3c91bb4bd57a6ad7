//! The open data and index files of a namespace, and the helpers that create and read them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{IoContext, ZdbError};

/// Open handles of a namespace's files; index `N` holds file `dN` / `iN`.
#[derive(Default)]
pub(super) struct Files {
    /// Data files, oldest first.
    pub(super) data: Vec<Arc<File>>,
    /// Index files, oldest first.
    pub(super) index: Vec<Arc<File>>,
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
