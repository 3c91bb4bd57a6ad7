//! Opening a namespace's files, in named stages: directories, descriptor, data files, the torn tail of the
//! last data file, then the index (loaded, extended with entries it lacks, or rebuilt from the data).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::files::{create_with_header, write_file_synced, Files};
use super::index_build::IndexBuild;
use super::keys::KeyTable;
use super::walk::walk_data_file;
use super::write::WriterState;
use super::{now_secs, Mode, NsSettings, StoreConfig};
use crate::error::{IoContext, ZdbError};
use crate::format::data_file::{data_file_name, DATA_HEADER_LEN};
use crate::format::index_file::index_file_name;
use crate::format::namespace_file::{NAMESPACE_FILE_NAME, NS_FLAG_PUBLIC};
use crate::format::{DataFileHeader, IndexFileHeader, NamespaceDescriptor};

/// State built when opening a namespace's files.
pub(super) struct Loaded {
    pub(super) settings: NsSettings,
    pub(super) read_only: bool,
    pub(super) files: Files,
    pub(super) keys: KeyTable,
    pub(super) writer: WriterState,
}

/// What every stage needs to know about the namespace being opened.
struct Opening<'a> {
    name: &'a str,
    index_dir: &'a Path,
    data_dir: &'a Path,
    cfg: &'a StoreConfig,
    read_only: bool,
}

impl Opening<'_> {
    fn error(&self, reason: impl Into<String>) -> ZdbError {
        ZdbError::Namespace {
            name: self.name.to_string(),
            reason: reason.into(),
        }
    }
}

/// Opens (with `create`, creates) the files of namespace `name` and builds its in-memory state.
pub(super) fn load(
    name: &str,
    index_dir: &Path,
    data_dir: &Path,
    cfg: &StoreConfig,
    create: bool,
) -> Result<Loaded, ZdbError> {
    let read_only = prepare_dirs(name, index_dir, data_dir, create)?;
    let o = Opening {
        name,
        index_dir,
        data_dir,
        cfg,
        read_only,
    };
    let descriptor = read_descriptor(&o)?;
    let (mut files, max) = open_data_files(&o)?;
    let last_data = files
        .data
        .last()
        .cloned()
        .ok_or_else(|| o.error("no data file"))?;
    let data_end = cut_torn_tail(&o, &last_data, max)?;
    let index = build_index(&o, &files.data, &last_data, max, data_end)?;
    let data_previous = last_entry_offset(&index.keys, max, data_end);
    files.index = index.index_files;
    files.map_all_data(cfg.datasize);
    Ok(Loaded {
        settings: NsSettings {
            password: descriptor.password.clone(),
            maxsize: descriptor.maxsize,
            public: descriptor.public(),
            worm: descriptor.worm(),
            mode: index.mode,
        },
        read_only,
        files,
        writer: WriterState {
            fileid: max,
            data_end,
            index_end: index.index_end,
            data_previous,
            index_previous: index.index_previous,
            index_last: index.index_last,
            last_sync: Instant::now(),
            dirty: BTreeSet::new(),
            buffers: Default::default(),
        },
        keys: index.keys,
    })
}

/// Creates the directories when asked; returns whether the files are read-only (then the namespace is
/// served without writes).
fn prepare_dirs(
    name: &str,
    index_dir: &Path,
    data_dir: &Path,
    create: bool,
) -> Result<bool, ZdbError> {
    if create {
        for d in [index_dir, data_dir] {
            if let Err(e) = fs::create_dir_all(d) {
                if !d.is_dir() {
                    return Err(ZdbError::io(format!("create {}", d.display()), e));
                }
            }
        }
    }
    if !index_dir.is_dir() || !data_dir.is_dir() {
        return Err(ZdbError::Namespace {
            name: name.to_string(),
            reason: "index or data directory missing".into(),
        });
    }
    let read_only = !writable_dir(index_dir) || !writable_dir(data_dir);
    if read_only {
        tracing::warn!(
            namespace = name,
            "files are read-only: serving existing data, refusing writes"
        );
    }
    Ok(read_only)
}

fn writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Reads the namespace descriptor, writing a default one (public, no password) when there is none.
fn read_descriptor(o: &Opening<'_>) -> Result<NamespaceDescriptor, ZdbError> {
    let path = o.index_dir.join(NAMESPACE_FILE_NAME);
    match fs::read(&path) {
        Ok(b) => {
            NamespaceDescriptor::decode(&b).map_err(|source| ZdbError::Format { path, source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let d = NamespaceDescriptor {
                name: o.name.to_string(),
                password: None,
                maxsize: 0,
                flags: NS_FLAG_PUBLIC,
            };
            if !o.read_only {
                write_file_synced(&path, &d.encode())?;
            }
            Ok(d)
        }
        Err(e) => Err(ZdbError::io(format!("read {}", path.display()), e)),
    }
}

/// Lists the ids N of files named `<prefix>N` in `dir`.
pub(super) fn list_ids(dir: &Path, prefix: char) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name.strip_prefix(prefix) {
            if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = num.parse::<u32>() {
                    ids.push(n);
                }
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Opens every data file (checking each header), creating the first data and index files of a new
/// namespace. Returns the files and the id of the last one (the only one opened for writing).
fn open_data_files(o: &Opening<'_>) -> Result<(Files, u32), ZdbError> {
    let mut ids = list_ids(o.data_dir, 'd').ctx(|| format!("list {}", o.data_dir.display()))?;
    if ids.is_empty() {
        if o.read_only {
            return Err(o.error("no data files and the filesystem is read-only"));
        }
        let path = o.data_dir.join(data_file_name(0));
        create_with_header(&path, &DataFileHeader::new(0, now_secs()).encode())?;
        let ipath = o.index_dir.join(index_file_name(0));
        if !ipath.exists() {
            let mode = o.cfg.fixed_mode.unwrap_or(Mode::User);
            create_with_header(
                &ipath,
                &IndexFileHeader::new(0, mode.byte(), now_secs()).encode(),
            )?;
        }
        ids.push(0);
    }
    let max = ids.last().copied().unwrap_or(0);
    if ids.len() as u64 != max as u64 + 1 {
        return Err(o.error(format!("data files are not contiguous (d0..d{max})")));
    }
    let mut files = Files::default();
    for &id in &ids {
        let path = o.data_dir.join(data_file_name(id));
        let f = OpenOptions::new()
            .read(true)
            .write(!o.read_only && id == max)
            .open(&path)
            .ctx(|| format!("open {}", path.display()))?;
        let mut h = [0u8; DATA_HEADER_LEN];
        f.read_exact_at(&mut h, 0)
            .ctx(|| format!("read header of {}", path.display()))?;
        DataFileHeader::decode(&h).map_err(|source| ZdbError::Format {
            path: path.clone(),
            source,
        })?;
        files.data.push(Arc::new(f));
    }
    Ok((files, max))
}

/// Verifies every entry of the last data file and cuts off a torn or corrupt tail (only logged on a
/// read-only filesystem). Returns the end of the last valid entry.
fn cut_torn_tail(o: &Opening<'_>, last_data: &File, max: u32) -> Result<u64, ZdbError> {
    let path = o.data_dir.join(data_file_name(max));
    let walk = walk_data_file(last_data, DATA_HEADER_LEN as u64, |_, _, _| Ok(()))?;
    let data_end = walk.valid_end;
    if let Some(why) = walk.torn {
        let len = last_data.metadata().map(|m| m.len()).unwrap_or(data_end);
        if o.read_only {
            tracing::warn!(namespace = o.name, file = %path.display(),
                "torn tail entry ({why}): {} bytes ignored (read-only)", len - data_end);
        } else {
            tracing::warn!(namespace = o.name, file = %path.display(),
                "torn tail entry ({why}): truncating {} bytes at offset {data_end}", len - data_end);
            last_data
                .set_len(data_end)
                .ctx(|| format!("truncate {}", path.display()))?;
            last_data
                .sync_all()
                .ctx(|| format!("sync {}", path.display()))?;
        }
    }
    Ok(data_end.max(DATA_HEADER_LEN as u64))
}

/// Loads the index files, re-indexes data entries the index lacks (a crash between the two appends), or
/// rebuilds the whole index from the data files when it is missing, damaged or `--rebuild-index` asks.
fn build_index<'a>(
    o: &Opening<'a>,
    data: &[Arc<File>],
    last_data: &File,
    max: u32,
    data_end: u64,
) -> Result<IndexBuild<'a>, ZdbError> {
    let mut build = IndexBuild::new(
        o.name,
        o.index_dir,
        o.read_only,
        o.cfg.fixed_mode.unwrap_or(Mode::User),
    );
    if o.cfg.rebuild_index {
        tracing::warn!(
            namespace = o.name,
            "--rebuild-index: rebuilding the index from the data files"
        );
    } else {
        match build.load_index(max, data, data_end) {
            Ok(indexed_end) => {
                if indexed_end < data_end {
                    recover_unindexed(o, &mut build, last_data, max, indexed_end)?;
                }
                return Ok(build);
            }
            Err(reason) => {
                if o.read_only {
                    return Err(o.error(format!(
                        "index unusable ({reason}) and the filesystem is read-only"
                    )));
                }
                tracing::warn!(
                    namespace = o.name,
                    "index missing or damaged ({reason}): rebuilding it from the data files"
                );
            }
        }
    }
    if o.read_only {
        return Err(o.error("cannot rebuild the index on a read-only filesystem"));
    }
    build.rebuild(max, data, o.data_dir, data_end)?;
    tracing::info!(
        namespace = o.name,
        keys = build.keys.live,
        "index rebuilt from data files"
    );
    Ok(build)
}

/// Indexes the entries of the last data file written after `indexed_end` but missing from the index.
fn recover_unindexed(
    o: &Opening<'_>,
    build: &mut IndexBuild<'_>,
    last_data: &File,
    max: u32,
    indexed_end: u64,
) -> Result<(), ZdbError> {
    if o.read_only {
        tracing::warn!(namespace = o.name,
            "data file d{max} holds entries past the index (offset {indexed_end}); read-only, not indexed");
        return Ok(());
    }
    let mut recovered = 0u64;
    walk_data_file(last_data, indexed_end, |pos, h, key| {
        build.append_for_data(max, pos, h, key)?;
        recovered += 1;
        Ok(())
    })?;
    tracing::warn!(
        namespace = o.name,
        "recovered {recovered} entries of d{max} missing from the index"
    );
    Ok(())
}

/// Offset of the last entry of data file `max` (the `previous` field of the next append); 0 when empty.
fn last_entry_offset(keys: &KeyTable, max: u32, data_end: u64) -> u32 {
    if data_end <= DATA_HEADER_LEN as u64 {
        return 0;
    }
    // The last entry of the last data file is the last one indexed.
    keys.map
        .values()
        .filter(|e| e.dataid == max)
        .map(|e| e.offset)
        .max()
        .unwrap_or(0)
}
