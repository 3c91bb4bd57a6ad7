//! The FUSE adapter of the blocks layer: every request is a plain operation on the layer tree, except
//! reads and writes of base-backed files, which go through [`BlockFile`].
//!
//! Inodes are the tree's inodes (FUSE inode = tree st_ino; the tree root is FUSE inode 1), each held by
//! an `O_PATH` descriptor so renames and hard links need no path bookkeeping; operations reach them
//! through `/proc/self/fd/N`.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::tree::{self, Materialiser};
use super::{BaseFile, BaseFiles};
use crate::blocks::{BaseReader, BlockFile};
use crate::{io_err, Error, Result};

/// How long the kernel may cache attributes and entries. Every change goes through this filesystem, so
/// the kernel's view stays right; the TTL only bounds how stale a hard link's sibling name may look.
const TTL: Duration = Duration::from_secs(1);
/// FUSE inode number of the root.
const ROOT_INO: u64 = 1;
/// How long an open of a base file for writing waits for read-only passthrough handles of it to close.
const PASSTHROUGH_DRAIN: Duration = Duration::from_secs(1);
/// Largest piece of zeros written at once when punching a hole in a base-backed file.
const ZERO_PIECE: u64 = 1 << 20;

/// The base file behind a base-backed tree file, opened once per [`BlockFile`]: the lower directory's
/// file, or the image's file read in-process.
pub(crate) enum LowerFile {
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

type SharedBlockFile = Arc<RwLock<BlockFile<LowerFile>>>;

/// The loaded [`BlockFile`] of one inode and how many users hold it.
#[derive(Default)]
struct BlockSlot {
    file: Option<SharedBlockFile>,
    users: u32,
}

/// How the open handles of a file are served; the kernel forbids mixing the two on one inode (handles
/// opened with `FOPEN_DIRECT_IO` are outside this rule and not counted).
#[derive(Default)]
enum PlainMode {
    /// No handle open.
    #[default]
    Closed,
    /// Reads and writes come to this process (`count` handles).
    Daemon { count: u32 },
    /// Reads (and, for a layer file, writes and mmap) go straight to the backing file in the kernel: the
    /// tree file of a layer file, the base's sealed host-cache file of an unwritten base file opened
    /// read-only (`count` handles).
    Passthrough { backing: Arc<BackingId>, count: u32 },
}

/// One tree inode known to the kernel.
struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor of the tree inode.
    fd: File,
    st_ino: u64,
    is_dir: bool,
    /// For a regular file backed by a base file: that file, relative to the lower root.
    base: Option<PathBuf>,
    nlookup: AtomicU64,
    /// A directory known to have no lower marker left.
    materialised: AtomicBool,
    blocks: Mutex<BlockSlot>,
    plain_mode: Mutex<PlainMode>,
}

impl Node {
    fn proc_path(&self) -> PathBuf {
        proc_fd_path(&self.fd)
    }

    fn child(&self, name: &OsStr) -> PathBuf {
        self.proc_path().join(name)
    }
}

fn proc_fd_path(fd: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// What an open file handle serves.
enum Handle {
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

struct DirListing {
    ino: u64,
    kind: FileType,
    name: OsString,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn layer_errno(e: &Error) -> Errno {
    match e {
        Error::Io { source, .. } => errno_of(source),
        _ => Errno::EIO,
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn file_type(meta: &fs::Metadata) -> FileType {
    let t = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

fn time_of(sec: i64, nsec: i64) -> SystemTime {
    let nanos = Duration::new(0, u32::try_from(nsec.clamp(0, 999_999_999)).unwrap_or(0));
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec.unsigned_abs()) + nanos
    } else {
        (UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs())) + nanos
    }
}

fn timespec_of(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-i64::try_from(d.as_secs()).unwrap_or(i64::MAX), 0i64);
                if d.subsec_nanos() > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - i64::from(d.subsec_nanos());
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// State shared by the FUSE threads and the [`super::BlocksMount`] handle.
pub(crate) struct LayerState {
    tree_root: PathBuf,
    root_st_ino: u64,
    maps_dir: PathBuf,
    lower_root: PathBuf,
    /// Base files read in-process instead of through `lower_root`, when the image runs in this process.
    base: Option<Arc<dyn BaseFiles>>,
    block_size: u32,
    nodes: Mutex<HashMap<u64, Arc<Node>>>,
    handles: Mutex<HashMap<u64, Handle>>,
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
        let root = Arc::new(Node {
            fd,
            st_ino: meta.ino(),
            is_dir: true,
            base: None,
            nlookup: AtomicU64::new(1),
            materialised: AtomicBool::new(false),
            blocks: Mutex::new(BlockSlot::default()),
            plain_mode: Mutex::new(PlainMode::Closed),
        });
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

    fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_st_ino {
            ROOT_INO
        } else if st_ino == ROOT_INO {
            self.root_st_ino
        } else {
            st_ino
        }
    }

    fn node(&self, ino: INodeNo) -> std::result::Result<Arc<Node>, Errno> {
        lock(&self.nodes).get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    fn map_path(&self, st_ino: u64) -> PathBuf {
        self.maps_dir.join(st_ino.to_string())
    }

    /// Makes sure directory `node` shows its lower entries.
    fn materialise(&self, node: &Node) -> io::Result<()> {
        if !node.is_dir || node.materialised.load(Ordering::Acquire) {
            return Ok(());
        }
        self.materialise_path(&node.proc_path())?;
        node.materialised.store(true, Ordering::Release);
        Ok(())
    }

    fn materialise_path(&self, dir: &Path) -> io::Result<()> {
        let _guard = lock(&self.materialising);
        Materialiser {
            lower_root: &self.lower_root,
            maps_dir: &self.maps_dir,
        }
        .materialise(dir)
    }

    /// Looks `name` up in directory `parent` and registers the inode (one more kernel reference).
    fn lookup_node(&self, parent: &Node, name: &OsStr) -> io::Result<(Arc<Node>, FileAttr)> {
        let fd = open_path(&parent.child(name))?;
        let meta = fd.metadata()?;
        let ino = self.fuse_ino(meta.ino());
        let node = {
            let mut nodes = lock(&self.nodes);
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
                    let node = Arc::new(Node {
                        fd,
                        st_ino: meta.ino(),
                        is_dir: meta.is_dir(),
                        base,
                        nlookup: AtomicU64::new(1),
                        materialised: AtomicBool::new(false),
                        blocks: Mutex::new(BlockSlot::default()),
                        plain_mode: Mutex::new(PlainMode::Closed),
                    });
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

    fn getattr_node(&self, node: &Node) -> io::Result<FileAttr> {
        let meta = node.fd.metadata()?;
        Ok(self.attr_of(node, &meta))
    }

    /// The shared [`BlockFile`] of base-backed `node`, loaded if needed; one more user.
    fn acquire_blocks(&self, node: &Node) -> Result<SharedBlockFile> {
        let base = node.base.as_deref().ok_or_else(|| Error::BadMetadata {
            path: node.proc_path(),
            reason: "not a base-backed file".into(),
        })?;
        let mut slot = lock(&node.blocks);
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
    fn base_backing(&self, node: &Node) -> Option<(Arc<dyn BaseFile>, File)> {
        let files = self.base.as_ref()?;
        let rel = node.base.as_deref()?;
        if self.map_path(node.st_ino).exists() {
            return None;
        }
        if let Some(f) = &lock(&node.blocks).file {
            let f = f.read().unwrap_or_else(|p| p.into_inner());
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
    fn release_blocks(&self, node: &Node) -> Result<()> {
        let mut slot = lock(&node.blocks);
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
        let mut f = file.write().unwrap_or_else(|p| p.into_inner());
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
    fn forget_map_if_gone(&self, st_ino: u64, nlink_before: u64) {
        if nlink_before > 1 {
            return;
        }
        let ino = self.fuse_ino(st_ino);
        let in_use = lock(&self.nodes)
            .get(&ino)
            .filter(|n| n.st_ino == st_ino)
            .is_some_and(|n| lock(&n.blocks).users > 0);
        if !in_use {
            if let Err(e) = self.remove_map(st_ino) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Makes every loaded block file durable (data, then map).
    pub(crate) fn sync_all(&self) -> Result<()> {
        let nodes: Vec<Arc<Node>> = lock(&self.nodes).values().cloned().collect();
        let mut result = Ok(());
        for node in nodes {
            let file = lock(&node.blocks).file.clone();
            if let Some(file) = file {
                let mut f = file.write().unwrap_or_else(|p| p.into_inner());
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

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, handle);
        fh
    }

    /// The plain file or block file behind handle `fh`.
    fn handle_io(&self, fh: FileHandle) -> std::result::Result<HandleIo, Errno> {
        match lock(&self.handles).get(&fh.0) {
            Some(Handle::Plain { file, .. }) => Ok(HandleIo::Plain(Arc::clone(file))),
            Some(Handle::Blocks { file, .. }) => Ok(HandleIo::Blocks(Arc::clone(file))),
            Some(Handle::BasePassthrough { base, .. }) => Ok(HandleIo::Base(Arc::clone(base))),
            Some(Handle::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::EBADF),
        }
    }

    /// Sets the size of regular-file `node` (through its handle's file when given).
    fn set_size(&self, node: &Node, fh: Option<FileHandle>, size: u64) -> Result<()> {
        if node.base.is_some() {
            let file = self.acquire_blocks(node)?;
            let result = file
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .truncate(size);
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
    fn own_new_entry(&self, path: &Path, req: &Request, mode: Option<u32>) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid()))?;
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        Ok(())
    }
}

enum HandleIo {
    Plain(Arc<File>),
    Blocks(SharedBlockFile),
    /// An unwritten base file opened read-only (its reads normally stay in the kernel).
    Base(Arc<dyn BaseFile>),
}

fn open_path(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `(st_ino, nlink, is_dir)` of `path` if it exists.
fn existing(path: &Path) -> io::Result<Option<(u64, u64, bool)>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some((m.ino(), m.nlink(), m.is_dir()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The writable FUSE filesystem of a mounted blocks layer.
pub(crate) struct BlocksFs {
    state: Arc<LayerState>,
    /// The kernel accepted FUSE passthrough (decided at init).
    passthrough: bool,
}

impl BlocksFs {
    /// A filesystem over `state`.
    pub(crate) fn new(state: Arc<LayerState>) -> BlocksFs {
        BlocksFs {
            state,
            passthrough: false,
        }
    }

    /// Counts a new handle of layer file `node`; returns the backing to serve it with passthrough when
    /// the inode is (or may become) served that way. `open_backing` registers `file` with the kernel.
    fn plain_open(
        &self,
        node: &Node,
        open_backing: impl FnOnce() -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut mode = lock(&node.plain_mode);
        match &mut *mode {
            PlainMode::Passthrough { backing, count } => {
                *count += 1;
                Some(Arc::clone(backing))
            }
            PlainMode::Daemon { count } => {
                *count += 1;
                None
            }
            PlainMode::Closed => {
                if self.passthrough {
                    match open_backing() {
                        Ok(id) => {
                            let backing = Arc::new(id);
                            *mode = PlainMode::Passthrough {
                                backing: Arc::clone(&backing),
                                count: 1,
                            };
                            return Some(backing);
                        }
                        Err(e) => tracing::debug!("passthrough refused: {e}"),
                    }
                }
                *mode = PlainMode::Daemon { count: 1 };
                None
            }
        }
    }

    /// A handle of layer file `node` was released.
    fn plain_release(&self, node: &Node) {
        let mut mode = lock(&node.plain_mode);
        let last = match &mut *mode {
            PlainMode::Daemon { count } | PlainMode::Passthrough { count, .. } => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            PlainMode::Closed => false,
        };
        if last {
            *mode = PlainMode::Closed;
        }
    }

    /// For a read-only open of base file `node`: the passthrough backing (registered by `open_backing`
    /// on the base's local copy) when the file is unwritten, its base has a sealed local copy, and no
    /// handle of it is served by this process; `None` otherwise.
    fn base_passthrough(
        &self,
        node: &Node,
        open_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Option<(Arc<BackingId>, Arc<dyn BaseFile>)> {
        if !self.passthrough {
            return None;
        }
        let mut mode = lock(&node.plain_mode);
        match &mut *mode {
            PlainMode::Passthrough { backing, count } => {
                let base = self.state.base.as_ref()?.open(node.base.as_deref()?).ok()?;
                *count += 1;
                Some((Arc::clone(backing), base))
            }
            PlainMode::Daemon { .. } => None,
            PlainMode::Closed => {
                let (base, file) = self.state.base_backing(node)?;
                match open_backing(&file) {
                    Ok(id) => {
                        let backing = Arc::new(id);
                        *mode = PlainMode::Passthrough {
                            backing: Arc::clone(&backing),
                            count: 1,
                        };
                        Some((backing, base))
                    }
                    Err(e) => {
                        tracing::debug!("passthrough refused: {e}");
                        None
                    }
                }
            }
        }
    }

    /// Counts a handle of base file `node` served by this process. While read-only handles of it are
    /// served by passthrough (the base's local copy), waits up to [`PASSTHROUGH_DRAIN`] for them to
    /// close: the kernel does not let both kinds share an inode, and those handles would not see this
    /// one's writes. Returns `false` when they stayed open: the handle is then opened with
    /// `FOPEN_DIRECT_IO` (outside the rule, not counted).
    fn base_daemon_mode(&self, node: &Node) -> bool {
        let deadline = std::time::Instant::now() + PASSTHROUGH_DRAIN;
        loop {
            {
                let mut mode = lock(&node.plain_mode);
                match &mut *mode {
                    PlainMode::Daemon { count } => {
                        *count += 1;
                        return true;
                    }
                    PlainMode::Closed => {
                        *mode = PlainMode::Daemon { count: 1 };
                        return true;
                    }
                    PlainMode::Passthrough { .. } => {}
                }
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    "base file {}: opened for writing while read-only handles of it are open; those \
                     handles keep reading the base and do not see this handle's writes",
                    node.base.as_deref().unwrap_or(Path::new("?")).display()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Materialises `parent` and returns it.
    fn parent_dir(&self, parent: INodeNo) -> std::result::Result<Arc<Node>, Errno> {
        let node = self.state.node(parent)?;
        if !node.is_dir {
            return Err(Errno::ENOTDIR);
        }
        self.state.materialise(&node).map_err(|e| {
            tracing::error!("materialise a lower directory: {e}");
            errno_of(&e)
        })?;
        Ok(node)
    }

    fn reply_new_entry(
        &self,
        parent: &Node,
        name: &OsStr,
        reply: ReplyEntry,
    ) -> std::result::Result<(), Errno> {
        let (_, attr) = self
            .state
            .lookup_node(parent, name)
            .map_err(|e| errno_of(&e))?;
        reply.entry(&TTL, &attr, Generation(0));
        Ok(())
    }
}

macro_rules! tri {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(errno) => return $reply.error(errno),
        }
    };
}

impl Filesystem for BlocksFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Files created in the layer are served by the kernel from the tree file (FUSE passthrough);
        // the tree is on a local filesystem, so a stack depth of 1 suffices.
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough = true;
        }
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.state.sync_all() {
            tracing::error!("flushing block maps at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let dir = tri!(reply, self.parent_dir(parent));
        match self.state.lookup_node(&dir, name) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino.0 == ROOT_INO {
            return;
        }
        let mut nodes = lock(&self.state.nodes);
        let gone = nodes.get(&ino.0).is_some_and(|n| {
            let left = n.nlookup.load(Ordering::Relaxed).saturating_sub(nlookup);
            n.nlookup.store(left, Ordering::Relaxed);
            left == 0
        });
        if gone {
            nodes.remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let node = tri!(reply, self.state.node(ino));
        match self.state.getattr_node(&node) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let node = tri!(reply, self.state.node(ino));
        let path = node.proc_path();
        let is_symlink = node.fd.metadata().is_ok_and(|m| m.file_type().is_symlink());
        if uid.is_some() || gid.is_some() {
            let r = (|| -> io::Result<()> {
                let empty = cpath(Path::new(""))?;
                let to_id = |v: Option<u32>| v.unwrap_or(u32::MAX);
                // SAFETY: valid descriptor and C string; AT_EMPTY_PATH acts on the descriptor itself.
                check(unsafe {
                    libc::fchownat(
                        node.fd.as_raw_fd(),
                        empty.as_ptr(),
                        to_id(uid),
                        to_id(gid),
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                })
            })();
            tri!(reply, r.map_err(|e| errno_of(&e)));
        }
        if let Some(mode) = mode {
            if !is_symlink {
                tri!(
                    reply,
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(|e| errno_of(&e))
                );
            }
        }
        if let Some(size) = size {
            if node.is_dir {
                return reply.error(Errno::EISDIR);
            }
            tri!(
                reply,
                self.state
                    .set_size(&node, fh, size)
                    .map_err(|e| layer_errno(&e))
            );
        }
        if (atime.is_some() || mtime.is_some()) && !is_symlink {
            let r = (|| -> io::Result<()> {
                let c = cpath(&path)?;
                let times = [timespec_of(atime), timespec_of(mtime)];
                // SAFETY: valid C string and a two-element timespec array.
                check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) })
            })();
            tri!(reply, r.map_err(|e| errno_of(&e)));
        }
        match self.state.getattr_node(&node) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let node = tri!(reply, self.state.node(ino));
        // readlinkat with an empty path reads the link the descriptor itself refers to.
        let r = (|| -> io::Result<Vec<u8>> {
            let empty = cpath(Path::new(""))?;
            let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
            // SAFETY: valid descriptor, C string and buffer.
            let n = unsafe {
                libc::readlinkat(
                    node.fd.as_raw_fd(),
                    empty.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            buf.truncate(n as usize);
            Ok(buf)
        })();
        match r {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let dir = tri!(reply, self.parent_dir(parent));
        let path = dir.child(name);
        let r = (|| -> io::Result<()> {
            let c = cpath(&path)?;
            // SAFETY: valid C string.
            check(unsafe { libc::mknod(c.as_ptr(), mode & !umask, u64::from(rdev)) })?;
            self.state.own_new_entry(&path, req, Some(mode & !umask))
        })();
        tri!(reply, r.map_err(|e| errno_of(&e)));
        if let Err(errno) = self.reply_new_entry(&dir, name, reply) {
            tracing::debug!("mknod lookup: {errno:?}");
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let dir = tri!(reply, self.parent_dir(parent));
        let path = dir.child(name);
        let r = fs::create_dir(&path)
            .and_then(|()| self.state.own_new_entry(&path, req, Some(mode & !umask)));
        tri!(reply, r.map_err(|e| errno_of(&e)));
        if let Err(errno) = self.reply_new_entry(&dir, name, reply) {
            tracing::debug!("mkdir lookup: {errno:?}");
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let dir = tri!(reply, self.parent_dir(parent));
        let path = dir.child(name);
        let before = tri!(reply, existing(&path).map_err(|e| errno_of(&e)));
        tri!(reply, fs::remove_file(&path).map_err(|e| errno_of(&e)));
        if let Some((st_ino, nlink, _)) = before {
            self.state.forget_map_if_gone(st_ino, nlink);
        }
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let dir = tri!(reply, self.parent_dir(parent));
        let path = dir.child(name);
        // A directory that still shows lower entries is not empty.
        if let Ok(Some((_, _, true))) = existing(&path) {
            tri!(
                reply,
                self.state.materialise_path(&path).map_err(|e| errno_of(&e))
            );
        }
        tri!(reply, fs::remove_dir(&path).map_err(|e| errno_of(&e)));
        reply.ok();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let dir = tri!(reply, self.parent_dir(parent));
        let path = dir.child(link_name);
        let r = std::os::unix::fs::symlink(target, &path)
            .and_then(|()| self.state.own_new_entry(&path, req, None));
        tri!(reply, r.map_err(|e| errno_of(&e)));
        if let Err(errno) = self.reply_new_entry(&dir, link_name, reply) {
            tracing::debug!("symlink lookup: {errno:?}");
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let from_dir = tri!(reply, self.parent_dir(parent));
        let to_dir = tri!(reply, self.parent_dir(newparent));
        let from = from_dir.child(name);
        let to = to_dir.child(newname);
        let source = tri!(reply, existing(&from).map_err(|e| errno_of(&e)));
        let target = tri!(reply, existing(&to).map_err(|e| errno_of(&e)));
        if let Some((_, _, true)) = target {
            // Renaming over a directory needs it empty, lower entries included.
            tri!(
                reply,
                self.state.materialise_path(&to).map_err(|e| errno_of(&e))
            );
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            if let Some((_, _, true)) = source {
                tri!(
                    reply,
                    self.state.materialise_path(&from).map_err(|e| errno_of(&e))
                );
            }
        }
        let r = (|| -> io::Result<()> {
            let (a, b) = (cpath(&from)?, cpath(&to)?);
            // SAFETY: valid C strings; renameat2 with the kernel's own flags.
            check(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    flags.bits(),
                )
            })
        })();
        tri!(reply, r.map_err(|e| errno_of(&e)));
        if let (Some((src_ino, _, _)), Some((dst_ino, nlink, false))) = (source, target) {
            if src_ino != dst_ino && !flags.contains(RenameFlags::RENAME_EXCHANGE) {
                self.state.forget_map_if_gone(dst_ino, nlink);
            }
        }
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let node = tri!(reply, self.state.node(ino));
        let dir = tri!(reply, self.parent_dir(newparent));
        let r = (|| -> io::Result<()> {
            let (a, b) = (cpath(&node.proc_path())?, cpath(&dir.child(newname))?);
            // SAFETY: valid C strings; AT_SYMLINK_FOLLOW resolves the /proc magic link to the inode.
            check(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })
        })();
        tri!(reply, r.map_err(|e| errno_of(&e)));
        if let Err(errno) = self.reply_new_entry(&dir, newname, reply) {
            tracing::debug!("link lookup: {errno:?}");
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let node = tri!(reply, self.state.node(ino));
        if node.is_dir {
            return reply.error(Errno::EISDIR);
        }
        if node.base.is_some() {
            let read_only =
                flags.acc_mode() == OpenAccMode::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
            if read_only {
                if let Some((backing, base)) =
                    self.base_passthrough(&node, |f| reply.open_backing(f))
                {
                    if let Some(files) = &self.state.base {
                        files.passthrough_opened();
                    }
                    let fh = self
                        .state
                        .new_handle(Handle::BasePassthrough { node, base });
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
                    return;
                }
            }
            let counted = self.base_daemon_mode(&node);
            let file = match self.state.acquire_blocks(&node) {
                Ok(f) => f,
                Err(e) => {
                    if counted {
                        self.plain_release(&node);
                    }
                    return reply.error(layer_errno(&e));
                }
            };
            if flags.0 & libc::O_TRUNC != 0 {
                let r = file.write().unwrap_or_else(|p| p.into_inner()).truncate(0);
                if let Err(e) = r {
                    let _ = self.state.release_blocks(&node);
                    if counted {
                        self.plain_release(&node);
                    }
                    return reply.error(layer_errno(&e));
                }
            }
            let fh = self.state.new_handle(Handle::Blocks {
                node,
                file,
                counted,
            });
            let open_flags = if counted {
                FopenFlags::empty()
            } else {
                FopenFlags::FOPEN_DIRECT_IO
            };
            reply.opened(FileHandle(fh), open_flags);
            return;
        }
        {
            let path = node.proc_path();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .or_else(|_| OpenOptions::new().read(true).open(&path));
            let file = tri!(reply, file.map_err(|e| errno_of(&e)));
            if flags.0 & libc::O_TRUNC != 0 {
                tri!(reply, file.set_len(0).map_err(|e| errno_of(&e)));
            }
            let backing = self.plain_open(&node, || reply.open_backing(&file));
            let fh = self.state.new_handle(Handle::Plain {
                node,
                file: Arc::new(file),
            });
            match backing {
                Some(b) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b),
                None => reply.opened(FileHandle(fh), FopenFlags::empty()),
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let io = tri!(reply, self.state.handle_io(fh));
        let mut buf = vec![0u8; size as usize];
        let n = match io {
            HandleIo::Plain(file) => {
                let mut done = 0;
                while done < buf.len() {
                    match file.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return reply.error(errno_of(&e)),
                    }
                }
                done
            }
            HandleIo::Blocks(file) => {
                let f = file.read().unwrap_or_else(|p| p.into_inner());
                tri!(
                    reply,
                    f.read_at(offset, &mut buf).map_err(|e| layer_errno(&e))
                )
            }
            HandleIo::Base(base) => tri!(
                reply,
                base.read_at(offset, &mut buf).map_err(|e| errno_of(&e))
            ),
        };
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let io = tri!(reply, self.state.handle_io(fh));
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let r = match io {
            HandleIo::Plain(file) => file.write_all_at(data, offset).map_err(|e| errno_of(&e)),
            HandleIo::Blocks(file) => file
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .write_at(offset, data)
                .map_err(|e| layer_errno(&e)),
            HandleIo::Base(_) => Err(Errno::EBADF),
        };
        match r {
            Ok(()) => reply.written(len),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = lock(&self.state.handles).remove(&fh.0);
        match &handle {
            Some(Handle::Plain { node, .. })
            | Some(Handle::BasePassthrough { node, .. })
            | Some(Handle::Blocks {
                node,
                counted: true,
                ..
            }) => self.plain_release(node),
            _ => {}
        }
        if let Some(Handle::Blocks { node, file, .. }) = handle {
            drop(file);
            if let Err(e) = self.state.release_blocks(&node) {
                tracing::error!("flushing a block map on release: {e}");
                return reply.error(layer_errno(&e));
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let io = tri!(reply, self.state.handle_io(fh));
        let r = match io {
            HandleIo::Plain(file) => if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(|e| errno_of(&e)),
            HandleIo::Blocks(file) => file
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .sync()
                .map_err(|e| layer_errno(&e)),
            HandleIo::Base(_) => Ok(()),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let dir = tri!(reply, self.parent_dir(ino));
        let r = (|| -> io::Result<Vec<DirListing>> {
            let mut entries = Vec::new();
            for entry in fs::read_dir(dir.proc_path())? {
                let entry = entry?;
                let kind = entry.file_type()?;
                let kind = if kind.is_dir() {
                    FileType::Directory
                } else if kind.is_symlink() {
                    FileType::Symlink
                } else if kind.is_file() {
                    FileType::RegularFile
                } else {
                    match entry.metadata() {
                        Ok(m) => file_type(&m),
                        Err(_) => FileType::RegularFile,
                    }
                };
                entries.push(DirListing {
                    ino: self.state.fuse_ino(entry.ino()),
                    kind,
                    name: entry.file_name(),
                });
            }
            Ok(entries)
        })();
        let entries = tri!(reply, r.map_err(|e| errno_of(&e)));
        let fh = self.state.new_handle(Handle::Dir {
            entries: Arc::new(entries),
        });
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match lock(&self.state.handles).get(&fh.0) {
            Some(Handle::Dir { entries }) => Arc::clone(entries),
            _ => return reply.error(Errno::EBADF),
        };
        // Offsets: 0 ".", 1 "..", 2 + i the i-th listed entry; each entry carries the next offset.
        let mut next = offset;
        if next == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            if reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            next = 2;
        }
        let skip = usize::try_from(next - 2).unwrap_or(usize::MAX);
        for e in entries.iter().skip(skip) {
            next += 1;
            if reply.add(INodeNo(e.ino), next, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.state.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let node = tri!(reply, self.state.node(ino));
        match File::open(node.proc_path()).and_then(|d| d.sync_all()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.state.tree_root) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                u32::try_from(s.block_size()).unwrap_or(4096),
                u32::try_from(s.name_max()).unwrap_or(255),
                u32::try_from(s.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if tree::is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::EPERM);
        }
        let node = tri!(reply, self.state.node(ino));
        match tree::set_xattr(&node.proc_path(), name.as_bytes(), value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if tree::is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let node = tri!(reply, self.state.node(ino));
        match tree::get_xattr(&node.proc_path(), name.as_bytes()) {
            Ok(Some(value)) => {
                mount::fs::reply_xattr_bytes(reply, &value, size);
            }
            Ok(None) => reply.error(Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let node = tri!(reply, self.state.node(ino));
        let raw = tri!(
            reply,
            tree::list_xattr(&node.proc_path()).map_err(|e| errno_of(&e))
        );
        let mut list = Vec::with_capacity(raw.len());
        for name in raw.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if !tree::is_private_xattr(name) {
                list.extend_from_slice(name);
                list.push(0);
            }
        }
        mount::fs::reply_xattr_bytes(reply, &list, size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if tree::is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let node = tri!(reply, self.state.node(ino));
        match tree::remove_xattr(&node.proc_path(), name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let dir = tri!(reply, self.parent_dir(parent));
        let path = dir.child(name);
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let existed = path.exists();
        let file = tri!(
            reply,
            options
                .mode(mode & !umask & 0o7777)
                .open(&path)
                .map_err(|e| errno_of(&e))
        );
        if !existed {
            tri!(
                reply,
                self.state
                    .own_new_entry(&path, req, Some(mode & !umask))
                    .map_err(|e| errno_of(&e))
            );
        }
        let (node, attr) = tri!(
            reply,
            self.state.lookup_node(&dir, name).map_err(|e| errno_of(&e))
        );
        let mut open_flags = FopenFlags::empty();
        let handle = if node.base.is_some() {
            // O_CREAT without O_EXCL on an existing base-backed file.
            drop(file);
            let file = match self.state.acquire_blocks(&node) {
                Ok(file) => file,
                Err(e) => return reply.error(layer_errno(&e)),
            };
            if flags & libc::O_TRUNC != 0 {
                let r = file.write().unwrap_or_else(|p| p.into_inner()).truncate(0);
                if let Err(e) = r {
                    let _ = self.state.release_blocks(&node);
                    return reply.error(layer_errno(&e));
                }
            }
            let counted = self.base_daemon_mode(&node);
            if !counted {
                open_flags = FopenFlags::FOPEN_DIRECT_IO;
            }
            Handle::Blocks {
                node,
                file,
                counted,
            }
        } else {
            if flags & libc::O_TRUNC != 0 && existed {
                tri!(reply, file.set_len(0).map_err(|e| errno_of(&e)));
            }
            let backing = self.plain_open(&node, || reply.open_backing(&file));
            let fh = self.state.new_handle(Handle::Plain {
                node,
                file: Arc::new(file),
            });
            let fh = FileHandle(fh);
            match backing {
                Some(b) => reply.created_passthrough(
                    &TTL,
                    &attr,
                    Generation(0),
                    fh,
                    FopenFlags::empty(),
                    &b,
                ),
                None => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
            }
            return;
        };
        let fh = self.state.new_handle(handle);
        reply.created(&TTL, &attr, Generation(0), FileHandle(fh), open_flags);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let io = tri!(reply, self.state.handle_io(fh));
        let r = match io {
            HandleIo::Plain(file) => {
                let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
                    return reply.error(Errno::EFBIG);
                };
                // SAFETY: plain syscall on an open descriptor.
                check(unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) })
                    .map_err(|e| errno_of(&e))
            }
            HandleIo::Blocks(file) => {
                let mut f = file.write().unwrap_or_else(|p| p.into_inner());
                fallocate_blocks(&mut f, offset, length, mode)
            }
            HandleIo::Base(_) => Err(Errno::EBADF),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let io = tri!(reply, self.state.handle_io(fh));
        match io {
            HandleIo::Plain(file) => {
                // SAFETY: plain syscall on an open descriptor (its own offset is not used by us).
                let pos = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
                if pos < 0 {
                    reply.error(errno_of(&io::Error::last_os_error()));
                } else {
                    reply.offset(pos);
                }
            }
            HandleIo::Blocks(_) | HandleIo::Base(_) => {
                let Ok(off) = u64::try_from(offset) else {
                    return reply.error(Errno::ENXIO);
                };
                if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
                    return reply.error(Errno::EINVAL);
                }
                let found = match io {
                    HandleIo::Blocks(file) => file
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .seek(off, whence)
                        .map_err(|e| layer_errno(&e)),
                    HandleIo::Base(base) => base.seek(off, whence).map_err(|e| errno_of(&e)),
                    HandleIo::Plain(_) => Err(Errno::EBADF),
                };
                match found {
                    Ok(Some(pos)) => match i64::try_from(pos) {
                        Ok(p) => reply.offset(p),
                        Err(_) => reply.error(Errno::EOVERFLOW),
                    },
                    Ok(None) => reply.error(Errno::ENXIO),
                    Err(errno) => reply.error(errno),
                }
            }
        }
    }
}

/// fallocate on a base-backed file: allocation only changes the size; punching or zeroing a range
/// stores zero blocks in the layer (the base below must not show through).
fn fallocate_blocks(
    f: &mut BlockFile<LowerFile>,
    offset: u64,
    length: u64,
    mode: i32,
) -> std::result::Result<(), Errno> {
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let zeroing = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
    let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
    if mode & !known != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
    if zeroing {
        let stop = if keep_size { end.min(f.size()) } else { end };
        let mut pos = offset;
        let zeros = vec![0u8; ZERO_PIECE as usize];
        while pos < stop {
            let n = (stop - pos).min(ZERO_PIECE) as usize;
            f.write_at(pos, &zeros[..n]).map_err(|e| layer_errno(&e))?;
            pos += n as u64;
        }
    } else if !keep_size && end > f.size() {
        f.truncate(end).map_err(|e| layer_errno(&e))?;
    }
    Ok(())
}
