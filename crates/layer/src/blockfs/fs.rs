//! The FUSE adapter of the blocks layer: every request is a plain operation on the layer tree, except
//! data operations on base-backed files, which go through their [`crate::blocks::BlockFile`]
//! (`files.rs`).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::state::{DirListing, Handle, LayerState, Node, TTL};
use super::sys::{self, errno_of, existing, file_type, layer_errno};
use super::tree;

/// The writable FUSE filesystem of a mounted blocks layer.
pub(crate) struct BlocksFs {
    pub(super) state: Arc<LayerState>,
    /// The kernel accepted FUSE passthrough (decided at init).
    pub(super) passthrough: bool,
}

impl BlocksFs {
    /// A filesystem over `state`.
    pub(crate) fn new(state: Arc<LayerState>) -> BlocksFs {
        BlocksFs {
            state,
            passthrough: false,
        }
    }

    /// Materialises `parent` and returns it.
    pub(super) fn parent_dir(&self, parent: INodeNo) -> std::result::Result<Arc<Node>, Errno> {
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

    /// The entries of directory `dir` as listed now.
    fn list_dir(&self, dir: &Node) -> io::Result<Vec<DirListing>> {
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
        self.state.forget(ino.0, nlookup);
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
        let is_symlink = node.fd.metadata().is_ok_and(|m| m.file_type().is_symlink());
        if uid.is_some() || gid.is_some() {
            tri!(
                reply,
                sys::chown_fd(&node.fd, uid, gid).map_err(|e| errno_of(&e))
            );
        }
        if let Some(mode) = mode {
            if !is_symlink {
                tri!(
                    reply,
                    fs::set_permissions(
                        node.proc_path(),
                        fs::Permissions::from_mode(mode & 0o7777)
                    )
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
            tri!(
                reply,
                sys::set_times(&node.proc_path(), atime, mtime).map_err(|e| errno_of(&e))
            );
        }
        match self.state.getattr_node(&node) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let node = tri!(reply, self.state.node(ino));
        match sys::read_link_fd(&node.fd) {
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
        let r = sys::mknod(&path, mode & !umask, u64::from(rdev))
            .and_then(|()| self.state.own_new_entry(&path, req, Some(mode & !umask)));
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
        let r = sys::rename(&from, &to, flags.bits());
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
        let r = sys::hard_link(&node.proc_path(), &dir.child(newname));
        tri!(reply, r.map_err(|e| errno_of(&e)));
        if let Err(errno) = self.reply_new_entry(&dir, newname, reply) {
            tracing::debug!("link lookup: {errno:?}");
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.open_file(ino, flags, reply);
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
        self.read_file(fh, offset, size, reply);
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
        self.write_file(fh, offset, data, reply);
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
        self.release_file(fh, reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fsync_file(fh, datasync, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let dir = tri!(reply, self.parent_dir(ino));
        let r = self.list_dir(&dir);
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
        let entries = match self.state.handles.lock().get(&fh.0) {
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
        self.state.handles.lock().remove(&fh.0);
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
                mount::reply_xattr_bytes(reply, &value, size);
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
        mount::reply_xattr_bytes(reply, &list, size);
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
        self.create_file(req, parent, name, mode, umask, flags, reply);
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
        self.fallocate_file(fh, offset, length, mode, reply);
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
        self.lseek_file(fh, offset, whence, reply);
    }
}
