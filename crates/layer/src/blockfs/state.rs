//! The inode and handle tables of a mounted blocks layer, and the per-inode [`BlockFile`]s.
//!
//! Inodes are the tree's inodes (FUSE inode = tree st_ino; the tree root is FUSE inode 1), each held by
//! an `O_PATH` descriptor so renames and hard links need no path bookkeeping; operations reach them
//! through `/proc/self/fd/N`. A base-backed inode has one [`BlockFile`] shared by all its handles,
//! loaded at the first open and made durable at the last release.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, Request};
use parking_lot::{Mutex, RwLock};

use super::modes::PlainMode;
use super::sys::{file_type, open_path, proc_fd_path, time_of};
use super::tree::{self, Materialiser};
use super::{BaseFile, BaseFiles};
use crate::blocks::{BaseReader, BlockFile};
use crate::{io_err, Error, Result};

/// How long the kernel may cache attributes and entries. Every change goes through this filesystem, so
/// the kernel's view stays right; the TTL only bounds how stale a hard link's sibling name may look.
pub(super) const TTL: Duration = Duration::from_secs(1);
/// FUSE inode number of the root.
pub(super) const ROOT_INO: u64 = 1;

/// The base file behind a base-backed tree file, opened once per [`BlockFile`]: the lower directory's
/// file, or the image's file read in-process.
pub(super) enum LowerFile {
    /// A file of the lower directory.
    Dir(File),
    /// A base file read in-process ([`BaseFiles`]).
    Image(Arc<dyn BaseFile>),
}

impl BaseReader for LowerFile {
    fn size(&self, _path: &Path) -> io::Result<u64> {
        match self {
            LowerFile::Dir(f) => Ok(f.metadata()?.len()),
            LowerFile::Image(f) => Ok(f.size()),
        }
    }

    fn read_at(&self, _path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            LowerFile::Dir(f) => f.read_at(buf, offset),
            LowerFile::Image(f) => f.read_at(offset, buf),
        }
    }

    fn seek(&self, _path: &Path, offset: u64, whence: i32) -> io::Result<Option<u64>> {
        match self {
            LowerFile::Dir(f) => crate::blocks::seek_file(f, offset, whence),
            LowerFile::Image(f) => f.seek(offset, whence),
        }
    }
}

/// The [`BlockFile`] of one inode, shared by its handles (reads in parallel, writes exclusive).
pub(super) type SharedBlockFile = Arc<RwLock<BlockFile<LowerFile>>>;

/// The loaded [`BlockFile`] of one inode and how many users hold it.
#[derive(Default)]
pub(super) struct BlockSlot {
    file: Option<SharedBlockFile>,
    users: u32,
}

/// One tree inode known to the kernel.
pub(super) struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor of the tree inode.
    pub(super) fd: File,
    pub(super) st_ino: u64,
    pub(super) is_dir: bool,
    /// For a regular file backed by a base file: that file, relative to the lower root.
    pub(super) base: Option<PathBuf>,
    nlookup: AtomicU64,
    /// A directory known to have no lower marker left.
    materialised: AtomicBool,
    blocks: Mutex<BlockSlot>,
    /// How the open handles of the inode are served.
    pub(super) plain_mode: Mutex<PlainMode>,
}

impl Node {
    fn new(fd: File, meta: &fs::Metadata, base: Option<PathBuf>) -> Node {
        Node {
            fd,
            st_ino: meta.ino(),
            is_dir: meta.is_dir(),
            base,
            nlookup: AtomicU64::new(1),
            materialised: AtomicBool::new(false),
            blocks: Mutex::new(BlockSlot::default()),
            plain_mode: Mutex::new(PlainMode::Closed),
        }
    }

    /// The `/proc/self/fd/N` path of the inode.
    pub(super) fn proc_path(&self) -> PathBuf {
        proc_fd_path(&self.fd)
    }

    /// The path of entry `name` of this directory.
    pub(super) fn child(&self, name: &OsStr) -> PathBuf {
        self.proc_path().join(name)
    }
}

/// What an open file handle serves.
pub(super) enum Handle {
    /// A file created in the layer: the tree file itself.
    Plain { node: Arc<Node>, file: Arc<File> },
    /// A base-backed file served by this process (`counted` in the node's mode unless it was opened
    /// with `FOPEN_DIRECT_IO`).
    Blocks {
        node: Arc<Node>,
        file: SharedBlockFile,
        counted: bool,
    },
    /// An unwritten base file opened read-only and served by passthrough from the base's local copy.
    BasePassthrough {
        node: Arc<Node>,
        base: Arc<dyn BaseFile>,
    },
    /// A directory: the entries listed at opendir.
    Dir { entries: Arc<Vec<DirListing>> },
}

/// One entry of a directory listing.
pub(super) struct DirListing {
    pub(super) ino: u64,
    pub(super) kind: FileType,
    pub(super) name: OsString,
}

/// The file behind an open file handle, for data operations.
pub(super) enum HandleIo {
    /// A file created in the layer.
    Plain(Arc<File>),
    /// A base-backed file served by this process.
    Blocks(SharedBlockFile),
    /// An unwritten base file opened read-only (its reads normally stay in the kernel).
    Base(Arc<dyn BaseFile>),
}

/// State shared by the FUSE threads and the [`super::BlocksMount`] handle.
pub(crate) struct LayerState {
    pub(super) tree_root: PathBuf,
    root_st_ino: u64,
    maps_dir: PathBuf,
    lower_root: PathBuf,
    /// Base files read in-process instead of through `lower_root`, when the image runs in this process.
    pub(super) base: Option<Arc<dyn BaseFiles>>,
    block_size: u32,
    nodes: Mutex<HashMap<u64, Arc<Node>>>,
    pub(super) handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Serialises materialisation of lower directories (rare: once per directory).
    materialising: Mutex<()>,
}

impl LayerState {
    /// State over the tree at `tree_root`, maps in `maps_dir`, base files under `lower_root`.
    pub(crate) fn open(
        tree_root: &Path,
        maps_dir: &Path,
        lower_root: &Path,
        base: Option<Arc<dyn BaseFiles>>,
        block_size: u32,
    ) -> Result<LayerState> {
        let fd = open_path(tree_root).map_err(io_err("open layer tree", tree_root))?;
        let meta = fd.metadata().map_err(io_err("stat", tree_root))?;
        let root = Arc::new(Node::new(fd, &meta, None));
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, root);
        Ok(LayerState {
            tree_root: tree_root.to_path_buf(),
            root_st_ino: meta.ino(),
            maps_dir: maps_dir.to_path_buf(),
            lower_root: lower_root.to_path_buf(),
            base,
            block_size,
            nodes: Mutex::new(nodes),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            materialising: Mutex::new(()),
        })
    }

    /// The FUSE inode number of tree inode `st_ino` (the tree root and inode 1 swap places).
    pub(super) fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_st_ino {
            ROOT_INO
        } else if st_ino == ROOT_INO {
            self.root_st_ino
        } else {
            st_ino
        }
    }

    /// The known inode `ino` (ESTALE if the kernel forgot it).
    pub(super) fn node(&self, ino: INodeNo) -> std::result::Result<Arc<Node>, Errno> {
        self.nodes.lock().get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    /// The kernel dropped `nlookup` references to `ino`; the inode is forgotten at zero.
    pub(super) fn forget(&self, ino: u64, nlookup: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.nodes.lock();
        let gone = nodes.get(&ino).is_some_and(|n| {
            let left = n.nlookup.load(Ordering::Relaxed).saturating_sub(nlookup);
            n.nlookup.store(left, Ordering::Relaxed);
            left == 0
        });
        if gone {
            nodes.remove(&ino);
        }
    }

    fn map_path(&self, st_ino: u64) -> PathBuf {
        self.maps_dir.join(st_ino.to_string())
    }

    /// Makes sure directory `node` shows its lower entries.
    pub(super) fn materialise(&self, node: &Node) -> io::Result<()> {
        if !node.is_dir || node.materialised.load(Ordering::Acquire) {
            return Ok(());
        }
        self.materialise_path(&node.proc_path())?;
        node.materialised.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes sure the tree directory at `dir` shows its lower entries.
    pub(super) fn materialise_path(&self, dir: &Path) -> io::Result<()> {
        let _guard = self.materialising.lock();
        Materialiser {
            lower_root: &self.lower_root,
            maps_dir: &self.maps_dir,
        }
        .materialise(dir)
    }

    /// Looks `name` up in directory `parent` and registers the inode (one more kernel reference).
    pub(super) fn lookup_node(
        &self,
        parent: &Node,
        name: &OsStr,
    ) -> io::Result<(Arc<Node>, FileAttr)> {
        let fd = open_path(&parent.child(name))?;
        let meta = fd.metadata()?;
        let ino = self.fuse_ino(meta.ino());
        let node = {
            let mut nodes = self.nodes.lock();
            match nodes.get(&ino) {
                Some(n) if n.st_ino == meta.ino() => {
                    n.nlookup.fetch_add(1, Ordering::Relaxed);
                    Arc::clone(n)
                }
                _ => {
                    let base = if meta.is_file() {
                        tree::base_marker(&proc_fd_path(&fd))?
                    } else {
                        None
                    };
                    let node = Arc::new(Node::new(fd, &meta, base));
                    nodes.insert(ino, Arc::clone(&node));
                    node
                }
            }
        };
        let attr = self.attr_of(&node, &meta);
        Ok((node, attr))
    }

    fn attr_of(&self, node: &Node, meta: &fs::Metadata) -> FileAttr {
        let mut blocks = meta.blocks();
        if node.base.is_some() {
            // Base bytes are part of the file even though the layer does not hold them.
            blocks = blocks.max(meta.size().div_ceil(512));
        }
        FileAttr {
            ino: INodeNo(self.fuse_ino(meta.ino())),
            size: meta.size(),
            blocks,
            atime: time_of(meta.atime(), meta.atime_nsec()),
            mtime: time_of(meta.mtime(), meta.mtime_nsec()),
            ctime: time_of(meta.ctime(), meta.ctime_nsec()),
            crtime: time_of(meta.ctime(), meta.ctime_nsec()),
            kind: file_type(meta),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: u32::try_from(meta.rdev()).unwrap_or(u32::MAX),
            blksize: 4096,
            flags: 0,
        }
    }

    /// The attributes of `node` as the mount shows them.
    pub(super) fn getattr_node(&self, node: &Node) -> io::Result<FileAttr> {
        let meta = node.fd.metadata()?;
        Ok(self.attr_of(node, &meta))
    }

    /// The shared [`BlockFile`] of base-backed `node`, loaded if needed; one more user.
    pub(super) fn acquire_blocks(&self, node: &Node) -> Result<SharedBlockFile> {
        let base = node.base.as_deref().ok_or_else(|| Error::BadMetadata {
            path: node.proc_path(),
            reason: "not a base-backed file".into(),
        })?;
        let mut slot = node.blocks.lock();
        if let Some(f) = &slot.file {
            let f = Arc::clone(f);
            slot.users += 1;
            return Ok(f);
        }
        let lower_path = self.lower_root.join(base);
        let lower = match &self.base {
            Some(files) => LowerFile::Image(
                files
                    .open(base)
                    .map_err(io_err("open base file", &lower_path))?,
            ),
            None => LowerFile::Dir(
                File::open(&lower_path).map_err(io_err("open base file", &lower_path))?,
            ),
        };
        let file = BlockFile::open(
            lower,
            base,
            &node.proc_path(),
            &self.map_path(node.st_ino),
            self.block_size,
        )?;
        let shared = Arc::new(RwLock::new(file));
        slot.file = Some(Arc::clone(&shared));
        slot.users = 1;
        Ok(shared)
    }

    /// For an unwritten base file (no block written, size unchanged) whose base has a complete local
    /// copy: the base file and a descriptor of that copy for passthrough.
    pub(super) fn base_backing(&self, node: &Node) -> Option<(Arc<dyn BaseFile>, File)> {
        let files = self.base.as_ref()?;
        let rel = node.base.as_deref()?;
        if self.map_path(node.st_ino).exists() {
            return None;
        }
        if let Some(f) = &node.blocks.lock().file {
            let f = f.read();
            if f.local_blocks() > 0 || f.is_dirty() {
                return None;
            }
        }
        let base = files.open(rel).ok()?;
        if node.fd.metadata().ok()?.len() != base.size() {
            return None;
        }
        let backing = base.passthrough_backing()?;
        Some((base, backing))
    }

    /// One user of `node`'s [`BlockFile`] is done; the last one makes the map durable (or drops it
    /// when the file has no name left).
    pub(super) fn release_blocks(&self, node: &Node) -> Result<()> {
        let mut slot = node.blocks.lock();
        slot.users = slot.users.saturating_sub(1);
        if slot.users > 0 {
            return Ok(());
        }
        let Some(file) = slot.file.take() else {
            return Ok(());
        };
        let unlinked = node.fd.metadata().map(|m| m.nlink() == 0).unwrap_or(false);
        if unlinked {
            drop(file);
            return self.remove_map(node.st_ino);
        }
        let mut f = file.write();
        if f.is_dirty() {
            f.sync()?;
        }
        Ok(())
    }

    fn remove_map(&self, st_ino: u64) -> Result<()> {
        let p = self.map_path(st_ino);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove block map", &p)(e)),
        }
    }

    /// After the last name of tree inode `st_ino` went away: drops its map unless it is still open
    /// (then the last release drops it).
    pub(super) fn forget_map_if_gone(&self, st_ino: u64, nlink_before: u64) {
        if nlink_before > 1 {
            return;
        }
        let ino = self.fuse_ino(st_ino);
        let in_use = self
            .nodes
            .lock()
            .get(&ino)
            .filter(|n| n.st_ino == st_ino)
            .is_some_and(|n| n.blocks.lock().users > 0);
        if !in_use {
            if let Err(e) = self.remove_map(st_ino) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Makes every loaded block file durable (data, then map).
    pub(crate) fn sync_all(&self) -> Result<()> {
        let nodes: Vec<Arc<Node>> = self.nodes.lock().values().cloned().collect();
        let mut result = Ok(());
        for node in nodes {
            let file = node.blocks.lock().file.clone();
            if let Some(file) = file {
                let mut f = file.write();
                if f.is_dirty() {
                    if let Err(e) = f.sync() {
                        tracing::error!("sync {}: {e}", self.tree_root.display());
                        result = Err(e);
                    }
                }
            }
        }
        result
    }

    /// Registers an open handle; returns its number.
    pub(super) fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle);
        fh
    }

    /// The plain file or block file behind handle `fh`.
    pub(super) fn handle_io(&self, fh: FileHandle) -> std::result::Result<HandleIo, Errno> {
        match self.handles.lock().get(&fh.0) {
            Some(Handle::Plain { file, .. }) => Ok(HandleIo::Plain(Arc::clone(file))),
            Some(Handle::Blocks { file, .. }) => Ok(HandleIo::Blocks(Arc::clone(file))),
            Some(Handle::BasePassthrough { base, .. }) => Ok(HandleIo::Base(Arc::clone(base))),
            Some(Handle::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::EBADF),
        }
    }

    /// Sets the size of regular-file `node` (through its handle's file when given).
    pub(super) fn set_size(&self, node: &Node, fh: Option<FileHandle>, size: u64) -> Result<()> {
        if node.base.is_some() {
            let file = self.acquire_blocks(node)?;
            let result = file.write().truncate(size);
            let released = self.release_blocks(node);
            return result.and(released);
        }
        if let Some(HandleIo::Plain(file)) = fh.and_then(|fh| self.handle_io(fh).ok()) {
            return file
                .set_len(size)
                .map_err(io_err("truncate", &node.proc_path()));
        }
        let path = node.proc_path();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(size))
            .map_err(io_err("truncate", &path))
    }

    /// Gives a new entry the requester's ownership and the exact requested mode.
    pub(super) fn own_new_entry(
        &self,
        path: &Path,
        req: &Request,
        mode: Option<u32>,
    ) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid()))?;
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        Ok(())
    }
}
