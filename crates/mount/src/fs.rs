//! The FUSE adapter: a read-only [`fuser::Filesystem`] over a [`BaseReader`].
//!
//! The base is immutable, so attributes and entries get long TTLs and opens keep the kernel page cache
//! (`FOPEN_KEEP_CACHE`). A file whose host-cache file is complete and sealed is served with FUSE
//! passthrough from the moment it is sealed: the next open of it (when no handle of it is open) gets the
//! cache file as backing, and the kernel then reads it directly.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use image::{FileKind, ImageError, Ino, Inode};
use parking_lot::Mutex;

use crate::cache_file::{direct_io_len, AlignedBuf};
use crate::engine::{BaseReader, OpenFile, ReadError, ReadState};

/// How long the kernel may cache attributes and entries (the base never changes).
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Directory entries read from the image per readdir request.
const READDIR_PAGE: usize = 512;
/// Readahead the filesystem asks the kernel for at init (the bdi setting raises it further).
const MAX_READAHEAD: u32 = 1 << 20;
/// Flags of every file open. `FOPEN_NOFLUSH`: a read-only file has nothing to flush, and without it
/// every close of a file of this mount waits for this daemon's FLUSH answer, so a process exiting with
/// files of the mount open (a layered daemon holding base files, or this daemon itself being killed)
/// would wait forever on a daemon that is gone or is itself.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// How the open handles of one inode are served; the kernel forbids mixing the two on one inode.
enum OpenMode {
    /// Reads come to this process (`count` handles open).
    Daemon { count: u32 },
    /// Reads go to `backing` in the kernel (`count` handles open).
    Passthrough { backing: Arc<BackingId>, count: u32 },
}

/// One open file handle.
struct Handle {
    file: Arc<OpenFile>,
    state: Mutex<ReadState>,
}

thread_local! {
    /// Each FUSE thread's read buffer (aligned, for direct reads of the cache file).
    static READ_BUFFER: std::cell::RefCell<AlignedBuf> = const { std::cell::RefCell::new(AlignedBuf::new()) };
}

/// The read-only FUSE filesystem of one mounted image.
pub struct ImageFs {
    reader: Arc<BaseReader>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Parent and name of inodes seen by lookup, for log lines and "..".
    names: Mutex<HashMap<Ino, (Ino, Vec<u8>)>>,
    want_passthrough: bool,
    passthrough: AtomicBool,
    modes: Mutex<HashMap<Ino, OpenMode>>,
}

impl std::fmt::Debug for ImageFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFs")
            .field("passthrough", &self.passthrough.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::Regular => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn mtime(inode: &Inode) -> SystemTime {
    let nanos = Duration::new(0, inode.mtime_nsec.min(999_999_999));
    if inode.mtime_sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(inode.mtime_sec.unsigned_abs()) + nanos
    } else {
        (UNIX_EPOCH - Duration::from_secs(inode.mtime_sec.unsigned_abs())) + nanos
    }
}

/// Answers a getxattr/listxattr request with `bytes` under the kernel's size protocol: a request of size 0
/// asks for the length, a buffer that is too small gets ERANGE. Shared by every thinnode filesystem.
pub fn reply_xattr_bytes(reply: ReplyXattr, bytes: &[u8], size: u32) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(bytes);
    }
}

/// The FUSE attributes of `inode`.
pub(crate) fn file_attr(inode: &Inode) -> FileAttr {
    let t = mtime(inode);
    FileAttr {
        ino: INodeNo(inode.ino),
        size: inode.size,
        blocks: inode.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(inode.kind),
        perm: inode.perm,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: u32::try_from(inode.rdev).unwrap_or(u32::MAX),
        blksize: 4096,
        flags: 0,
    }
}

fn image_errno(e: &ImageError) -> Errno {
    match e {
        ImageError::NotFound(_) => Errno::ENOENT,
        _ => Errno::EIO,
    }
}

impl ImageFs {
    /// A filesystem serving `reader`; `passthrough` enables FUSE passthrough for fully cached files.
    pub fn new(reader: Arc<BaseReader>, passthrough: bool) -> ImageFs {
        ImageFs {
            reader,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            names: Mutex::new(HashMap::new()),
            want_passthrough: passthrough,
            passthrough: AtomicBool::new(false),
            modes: Mutex::new(HashMap::new()),
        }
    }

    /// A printable path of `ino` as far as lookups have revealed it.
    fn path_of(&self, ino: Ino) -> String {
        let names = self.names.lock();
        let mut parts = Vec::new();
        let mut cur = ino;
        while let Some((parent, name)) = names.get(&cur) {
            parts.push(String::from_utf8_lossy(name).into_owned());
            if *parent == cur || parts.len() > 4096 {
                break;
            }
            cur = *parent;
        }
        if parts.is_empty() && ino != image::ROOT_INO {
            return format!("<inode {ino}>");
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn remember(&self, parent: Ino, name: &[u8], ino: Ino) {
        let mut names = self.names.lock();
        names.entry(ino).or_insert_with(|| (parent, name.to_vec()));
    }

    /// Tries to serve an open of `file` with passthrough from its sealed host-cache file.
    fn try_backing(&self, file: &OpenFile, reply: &ReplyOpen) -> Option<BackingId> {
        if !self.passthrough.load(Ordering::Relaxed) || !file.is_sealed() {
            return None;
        }
        let backing = file.cache_file()?.backing();
        match backing.and_then(|b| reply.open_backing(&b)) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!("passthrough for {}: {e}", self.path_of(file.ino()));
                None
            }
        }
    }

    fn read_error(&self, ino: Ino, offset: u64, e: &ReadError) -> Errno {
        self.reader.fetcher().metrics().read_errors.inc();
        tracing::error!("read {} at offset {offset}: {e}", self.path_of(ino));
        match e {
            ReadError::Image(ie) => image_errno(ie),
            _ => Errno::EIO,
        }
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READAHEAD);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        if self.want_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.reader.manifest().lookup(parent.0, name.as_bytes()) {
            Ok(Some(inode)) => {
                self.remember(parent.0, name.as_bytes(), inode.ino);
                reply.entry(&TTL, &file_attr(&inode), Generation(0));
            }
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(image_errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.reader.manifest().getattr(ino.0) {
            Ok(inode) => reply.attr(&TTL, &file_attr(&inode)),
            Err(e) => reply.error(image_errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.reader.manifest().readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(image_errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let inode = match self.reader.manifest().getattr(ino.0) {
            Ok(i) => i,
            Err(e) => return reply.error(image_errno(&e)),
        };
        if inode.kind == FileKind::Directory {
            return reply.error(Errno::EISDIR);
        }
        let file = match self.reader.open(inode.ino) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("open {}: {e}", self.path_of(inode.ino));
                return reply.error(Errno::EIO);
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(
            fh,
            Arc::new(Handle {
                file: Arc::clone(&file),
                state: Mutex::new(ReadState::default()),
            }),
        );

        // Reuse the inode's current mode; only a first open may choose passthrough.
        let mut modes = self.modes.lock();
        match modes.get_mut(&inode.ino) {
            Some(OpenMode::Passthrough { backing, count }) => {
                *count += 1;
                let backing = Arc::clone(backing);
                drop(modes);
                self.reader.fetcher().metrics().passthrough_opens.inc();
                reply.opened_passthrough(FileHandle(fh), OPEN_FLAGS, &backing);
                return;
            }
            Some(OpenMode::Daemon { count }) => {
                *count += 1;
                drop(modes);
                reply.opened(FileHandle(fh), OPEN_FLAGS | FopenFlags::FOPEN_KEEP_CACHE);
                return;
            }
            None => {}
        }
        if inode.kind == FileKind::Regular {
            if let Some(backing) = self.try_backing(&file, &reply) {
                let backing = Arc::new(backing);
                modes.insert(
                    inode.ino,
                    OpenMode::Passthrough {
                        backing: Arc::clone(&backing),
                        count: 1,
                    },
                );
                drop(modes);
                self.reader.fetcher().metrics().passthrough_opens.inc();
                reply.opened_passthrough(FileHandle(fh), OPEN_FLAGS, &backing);
                return;
            }
        }
        modes.insert(inode.ino, OpenMode::Daemon { count: 1 });
        drop(modes);
        reply.opened(FileHandle(fh), OPEN_FLAGS | FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handle = self.handles.lock().get(&fh.0).cloned();
        let file = match handle.as_ref() {
            Some(h) => Arc::clone(&h.file),
            None => match self.reader.open(ino.0) {
                Ok(f) => f,
                Err(e) => return reply.error(self.read_error(ino.0, offset, &e)),
            },
        };
        READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            let space = &mut buf.slice_mut(direct_io_len(size as usize))[..size as usize];
            let state = handle.as_ref().map(|h| &h.state);
            match self.reader.read_into(&file, offset, space, state) {
                Ok(n) => reply.data(&space[..n]),
                Err(e) => reply.error(self.read_error(ino.0, offset, &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().remove(&fh.0);
        let mut modes = self.modes.lock();
        let last = match modes.get_mut(&ino.0) {
            Some(OpenMode::Daemon { count }) | Some(OpenMode::Passthrough { count, .. }) => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            None => false,
        };
        if last {
            modes.remove(&ino.0);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Opens carry FOPEN_NOFLUSH, so this only comes from a kernel that ignores it; ENOSYS makes
        // the kernel stop sending FLUSH on this connection altogether.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.reader.manifest().getattr(ino.0) {
            Ok(i) if i.kind == FileKind::Directory => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(image_errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Offsets: 0 ".", 1 "..", 2 + i the image's i-th entry; each entry carries the next offset.
        let mut next = offset;
        if next == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            let parent = self
                .names
                .lock()
                .get(&ino.0)
                .map(|(p, _)| *p)
                .unwrap_or(ino.0);
            if reply.add(INodeNo(parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            next = 2;
        }
        // One reply buffer holds at most a few hundred entries: read a page, not the whole rest of a
        // possibly huge directory.
        let entries = match self
            .reader
            .manifest()
            .readdir_page(ino.0, next - 2, READDIR_PAGE)
        {
            Ok(e) => e,
            Err(e) => return reply.error(image_errno(&e)),
        };
        for entry in entries {
            next += 1;
            if reply.add(
                INodeNo(entry.ino),
                next,
                file_type(entry.kind),
                OsStr::from_bytes(&entry.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    /// SEEK_DATA / SEEK_HOLE from the image's recorded holes (the kernel answers the other `whence`
    /// values itself), so `cp --sparse`, tar and overlayfs copy-up keep sparse files sparse.
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let m = self.reader.manifest();
        let found = match whence {
            libc::SEEK_DATA => m.seek_data(ino.0, offset),
            libc::SEEK_HOLE => m.seek_hole(ino.0, offset),
            _ => return reply.error(Errno::EINVAL),
        };
        match found {
            Ok(Some(pos)) => match i64::try_from(pos) {
                Ok(pos) => reply.offset(pos),
                Err(_) => reply.error(Errno::EOVERFLOW),
            },
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(image_errno(&e)),
        }
    }

    /// No ioctl applies to an image file. Overlayfs asks for the inode flags (`FS_IOC_GETFLAGS`) of every
    /// file it copies up and takes ENOTTY as "none"; answered here so that fuser does not log each one
    /// as not implemented.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.reader.manifest().inode_count();
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let attrs = match self.reader.manifest().xattrs(ino.0) {
            Ok(a) => a,
            Err(e) => return reply.error(image_errno(&e)),
        };
        match attrs.iter().find(|(k, _)| k.as_slice() == name.as_bytes()) {
            None => reply.error(Errno::from_i32(libc::ENODATA)),
            Some((_, value)) => {
                reply_xattr_bytes(reply, value, size);
            }
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let attrs = match self.reader.manifest().xattrs(ino.0) {
            Ok(a) => a,
            Err(e) => return reply.error(image_errno(&e)),
        };
        let mut list = Vec::new();
        for (k, _) in &attrs {
            list.extend_from_slice(k);
            list.push(0);
        }
        reply_xattr_bytes(reply, &list, size);
    }
}
