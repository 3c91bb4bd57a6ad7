//! Restoring an image into a directory: parallel chunk fetch and decode, holes kept sparse, ownership,
//! modes, xattrs and times restored (directories last).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};
use rayon::prelude::*;
use store::ChunkStore;

use crate::codec::decode_chunk;
use crate::tree::{walk_tree, TreeEntry};
use crate::{ChunkId, FileKind, ImageError, ImageManifest, Inode};

/// Options of [`unpack`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Worker threads fetching and writing chunks (0: twice the core count, at least 4).
    pub threads: usize,
    /// Restore owners (uid/gid); needs root. Default: when running as root.
    pub restore_owner: bool,
    /// Chunks fetched per store request.
    pub batch_chunks: usize,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            threads: 0,
            restore_owner: nix::unistd::geteuid().is_root(),
            batch_chunks: 16,
        }
    }
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UnpackSummary {
    /// Regular files written (hardlinks counted once).
    pub files: u64,
    /// Directories created, including the destination root.
    pub directories: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets created.
    pub special_files: u64,
    /// Extra hardlinked names created.
    pub hardlinks: u64,
    /// Content bytes written (holes excluded).
    pub bytes_written: u64,
    /// Chunks fetched from the store.
    pub chunks_fetched: u64,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ImageError {
    ImageError::io(format!("{what} {}", path.display()), e)
}

fn nix_err(what: &str, path: &Path, e: nix::errno::Errno) -> ImageError {
    io_err(what, path, std::io::Error::from(e))
}

/// A run of chunks of one file fetched in one store request.
struct ChunkRun<'a> {
    entry: &'a TreeEntry,
    size: u64,
    first_chunk: u64,
    chunk_count: u64,
}

/// Restores image `m` into `dest` (created if missing; must be empty), fetching chunks from `store`.
pub fn unpack(
    m: &ImageManifest,
    store: &dyn ChunkStore,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ImageError> {
    let started = Instant::now();
    m.check_structure()?;
    let tree = walk_tree(m)?;
    prepare_destination(dest)?;
    let mut summary = UnpackSummary::default();
    create_tree(m, &tree, dest, &mut summary)?;
    let (bytes_written, chunks_fetched) = restore_contents(m, store, &tree, dest, opts)?;
    summary.bytes_written = bytes_written;
    summary.chunks_fetched = chunks_fetched;
    // Non-directories first, then directories deepest first (so writing into a directory does not
    // disturb its restored mtime).
    for e in tree
        .iter()
        .filter(|e| e.first && e.kind != FileKind::Directory)
    {
        restore_metadata(
            m,
            &full_path(dest, e),
            &m.getattr(e.ino)?,
            opts.restore_owner,
        )?;
    }
    for e in tree.iter().rev().filter(|e| e.kind == FileKind::Directory) {
        restore_metadata(
            m,
            &full_path(dest, e),
            &m.getattr(e.ino)?,
            opts.restore_owner,
        )?;
    }
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Creates `dest`, or checks that it is an empty directory.
fn prepare_destination(dest: &Path) -> Result<(), ImageError> {
    if dest.exists() {
        let mut rd = fs::read_dir(dest).map_err(|e| io_err("read directory", dest, e))?;
        if rd.next().is_some() {
            return Err(ImageError::Invalid(format!(
                "{} is not empty",
                dest.display()
            )));
        }
    } else {
        fs::create_dir_all(dest).map_err(|e| io_err("create directory", dest, e))?;
    }
    Ok(())
}

/// Where tree entry `e` goes under `dest`.
fn full_path(dest: &Path, e: &TreeEntry) -> PathBuf {
    if e.path.as_os_str().is_empty() {
        dest.to_path_buf()
    } else {
        dest.join(&e.path)
    }
}

/// Creates every name of the tree (pre-order, so parents exist): directories, regular files at full
/// length, symlinks, device nodes, fifos and sockets, and hard links to names already created.
fn create_tree(
    m: &ImageManifest,
    tree: &[TreeEntry],
    dest: &Path,
    summary: &mut UnpackSummary,
) -> Result<(), ImageError> {
    let mut first_path: Vec<Option<PathBuf>> = vec![None; m.inode_count() as usize + 1];
    for e in tree {
        let path = full_path(dest, e);
        let attrs = m.getattr(e.ino)?;
        if !e.first {
            let target = first_path
                .get(e.ino as usize)
                .cloned()
                .flatten()
                .ok_or(ImageError::NotFound(e.ino))?;
            fs::hard_link(&target, &path).map_err(|err| io_err("hard link", &path, err))?;
            summary.hardlinks += 1;
            continue;
        }
        if let Some(slot) = first_path.get_mut(e.ino as usize) {
            *slot = Some(path.clone());
        }
        match e.kind {
            FileKind::Directory => {
                if !e.path.as_os_str().is_empty() {
                    fs::create_dir(&path).map_err(|err| io_err("create directory", &path, err))?;
                }
                summary.directories += 1;
            }
            FileKind::Regular => {
                let f = File::create(&path).map_err(|err| io_err("create", &path, err))?;
                f.set_len(attrs.size)
                    .map_err(|err| io_err("set length of", &path, err))?;
                summary.files += 1;
            }
            FileKind::Symlink => {
                let target = m.readlink(e.ino)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|err| io_err("create symlink", &path, err))?;
                summary.symlinks += 1;
            }
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo | FileKind::Socket => {
                let kind = match e.kind {
                    FileKind::CharDevice => SFlag::S_IFCHR,
                    FileKind::BlockDevice => SFlag::S_IFBLK,
                    FileKind::Fifo => SFlag::S_IFIFO,
                    _ => SFlag::S_IFSOCK,
                };
                mknod(
                    &path,
                    kind,
                    Mode::from_bits_truncate(u32::from(attrs.perm)),
                    attrs.rdev as libc::dev_t,
                )
                .map_err(|err| nix_err("mknod", &path, err))?;
                summary.special_files += 1;
            }
        }
    }
    Ok(())
}

/// Fetches and writes the content of every regular file in runs of chunks on a thread pool; returns
/// (bytes written, chunks fetched).
fn restore_contents(
    m: &ImageManifest,
    store: &dyn ChunkStore,
    tree: &[TreeEntry],
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<(u64, u64), ImageError> {
    let mut runs = Vec::new();
    let batch = opts.batch_chunks.max(1) as u64;
    for e in tree
        .iter()
        .filter(|e| e.first && e.kind == FileKind::Regular)
    {
        let size = m.getattr(e.ino)?.size;
        let count = size.div_ceil(u64::from(m.chunk_size()));
        let mut first_chunk = 0;
        while first_chunk < count {
            let chunk_count = batch.min(count - first_chunk);
            runs.push(ChunkRun {
                entry: e,
                size,
                first_chunk,
                chunk_count,
            });
            first_chunk += chunk_count;
        }
    }
    let pool = crate::store_io_pool(opts.threads)?;
    let bytes_written = AtomicU64::new(0);
    let chunks_fetched = AtomicU64::new(0);
    pool.install(|| {
        runs.par_iter().try_for_each(|run| {
            let (b, c) = restore_run(m, store, dest, run)?;
            bytes_written.fetch_add(b, Ordering::Relaxed);
            chunks_fetched.fetch_add(c, Ordering::Relaxed);
            Ok::<(), ImageError>(())
        })
    })?;
    Ok((bytes_written.into_inner(), chunks_fetched.into_inner()))
}

/// Fetches, verifies and writes one run of chunks; returns (bytes written, chunks fetched).
fn restore_run(
    m: &ImageManifest,
    store: &dyn ChunkStore,
    dest: &Path,
    run: &ChunkRun<'_>,
) -> Result<(u64, u64), ImageError> {
    let path = dest.join(&run.entry.path);
    let display = run.entry.path.display().to_string();
    let cs = u64::from(m.chunk_size());
    let mut wanted = Vec::new();
    for i in run.first_chunk..run.first_chunk + run.chunk_count {
        if let Some(r) = m.chunk(run.entry.ino, i)? {
            wanted.push((i, r));
        }
    }
    if wanted.is_empty() {
        return Ok((0, 0));
    }
    let ids: Vec<ChunkId> = wanted.iter().map(|(_, r)| r.id).collect();
    let fetched = store.get_many(&ids).map_err(|e| ImageError::FileChunk {
        path: display.clone(),
        offset: run.first_chunk * cs,
        source: Box::new(e.into()),
    })?;
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| io_err("open", &path, e))?;
    let mut written = 0;
    for ((i, r), data) in wanted
        .iter()
        .zip(fetched.into_iter().chain(std::iter::repeat(None)))
    {
        let offset = i * cs;
        let chunk_err = |source: ImageError| ImageError::FileChunk {
            path: display.clone(),
            offset,
            source: Box::new(source),
        };
        let stored = data.ok_or_else(|| chunk_err(ImageError::MissingChunk(r.id)))?;
        let plain = decode_chunk(r, &stored).map_err(chunk_err)?;
        let expected = (run.size - offset).min(cs);
        if plain.len() as u64 != expected {
            return Err(chunk_err(ImageError::CorruptManifest(format!(
                "chunk holds {} bytes, file needs {expected}",
                plain.len()
            ))));
        }
        file.write_all_at(&plain, offset)
            .map_err(|e| io_err("write", &path, e))?;
        written += plain.len() as u64;
    }
    Ok((written, wanted.len() as u64))
}

fn restore_metadata(
    m: &ImageManifest,
    path: &Path,
    attrs: &Inode,
    restore_owner: bool,
) -> Result<(), ImageError> {
    let is_link = attrs.kind == FileKind::Symlink;
    if restore_owner {
        fchownat(
            AT_FDCWD,
            path,
            Some(Uid::from_raw(attrs.uid)),
            Some(Gid::from_raw(attrs.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| nix_err("chown", path, e))?;
    }
    if !is_link {
        fs::set_permissions(path, fs::Permissions::from_mode(u32::from(attrs.perm)))
            .map_err(|e| io_err("chmod", path, e))?;
    }
    for (name, value) in m.xattrs(attrs.ino)? {
        match xattr::set(path, OsStr::from_bytes(&name), &value) {
            Ok(()) => {}
            // Without root, trusted.* and security.* cannot be set: skip them rather than fail.
            Err(e) if !restore_owner && e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(io_err("set xattr on", path, e)),
        }
    }
    let t = TimeSpec::new(attrs.mtime_sec, i64::from(attrs.mtime_nsec));
    utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| nix_err("set times of", path, e))?;
    Ok(())
}
