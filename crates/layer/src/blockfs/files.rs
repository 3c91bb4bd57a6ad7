//! Open files of the blocks filesystem: open and create pick how a handle is served (passthrough, the
//! tree file, or the file's [`BlockFile`]); reads, writes, fsync, fallocate and lseek act on what the
//! handle serves.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, OpenAccMode, OpenFlags, ReplyCreate,
    ReplyData, ReplyEmpty, ReplyLseek, ReplyOpen, ReplyWrite, Request,
};

use super::fs::BlocksFs;
use super::state::{Handle, HandleIo, LowerFile, Node, SharedBlockFile, TTL};
use super::sys::{self, errno_of, layer_errno};
use crate::blocks::BlockFile;

/// Largest piece of zeros written at once when punching a hole in a base-backed file.
const ZERO_PIECE: u64 = 1 << 20;

type Reply<T> = std::result::Result<T, Errno>;

impl BlocksFs {
    /// FUSE open of a regular file.
    pub(super) fn open_file(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let node = match self.state.node(ino) {
            Ok(n) => n,
            Err(errno) => return reply.error(errno),
        };
        if node.is_dir {
            return reply.error(Errno::EISDIR);
        }
        if node.base.is_some() {
            return self.open_base_file(node, flags, reply);
        }
        let path = node.proc_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| OpenOptions::new().read(true).open(&path));
        let file = match file {
            Ok(f) => f,
            Err(e) => return reply.error(errno_of(&e)),
        };
        if flags.0 & libc::O_TRUNC != 0 {
            if let Err(e) = file.set_len(0) {
                return reply.error(errno_of(&e));
            }
        }
        let backing = self.plain_open(&node, || reply.open_backing(&file));
        let fh = FileHandle(self.state.new_handle(Handle::Plain {
            node,
            file: Arc::new(file),
        }));
        match backing {
            Some(b) => reply.opened_passthrough(fh, FopenFlags::empty(), &b),
            None => reply.opened(fh, FopenFlags::empty()),
        }
    }

    /// Open of a base-backed file: passthrough to the base's local copy when read-only and unwritten,
    /// else served by this process through the file's [`BlockFile`].
    fn open_base_file(&self, node: Arc<Node>, flags: OpenFlags, reply: ReplyOpen) {
        let read_only = flags.acc_mode() == OpenAccMode::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        if read_only {
            if let Some((backing, base)) = self.base_passthrough(&node, |f| reply.open_backing(f)) {
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
        let file = match self.blocks_file(&node, flags.0 & libc::O_TRUNC != 0) {
            Ok(f) => f,
            Err(errno) => {
                if counted {
                    self.plain_release(&node);
                }
                return reply.error(errno);
            }
        };
        let fh = self.state.new_handle(Handle::Blocks {
            node,
            file,
            counted,
        });
        reply.opened(FileHandle(fh), open_flags(counted));
    }

    /// One more user of `node`'s [`BlockFile`], truncated first when `truncate` (given back if that
    /// fails).
    fn blocks_file(&self, node: &Node, truncate: bool) -> Reply<SharedBlockFile> {
        let file = self
            .state
            .acquire_blocks(node)
            .map_err(|e| layer_errno(&e))?;
        if truncate {
            if let Err(e) = file.write().truncate(0) {
                let _ = self.state.release_blocks(node);
                return Err(layer_errno(&e));
            }
        }
        Ok(file)
    }

    /// FUSE create: a new layer file (served like an opened layer file), or `O_CREAT` without `O_EXCL`
    /// on an existing file.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (node, attr, file, existed) =
            match self.create_entry(req, parent, name, mode, umask, flags) {
                Ok(created) => created,
                Err(errno) => return reply.error(errno),
            };
        let truncate = flags & libc::O_TRUNC != 0;
        if node.base.is_some() {
            drop(file);
            let file = match self.blocks_file(&node, truncate) {
                Ok(f) => f,
                Err(errno) => return reply.error(errno),
            };
            let counted = self.base_daemon_mode(&node);
            let fh = self.state.new_handle(Handle::Blocks {
                node,
                file,
                counted,
            });
            return reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                open_flags(counted),
            );
        }
        if truncate && existed {
            if let Err(e) = file.set_len(0) {
                return reply.error(errno_of(&e));
            }
        }
        let backing = self.plain_open(&node, || reply.open_backing(&file));
        let fh = FileHandle(self.state.new_handle(Handle::Plain {
            node,
            file: Arc::new(file),
        }));
        match backing {
            Some(b) => {
                reply.created_passthrough(&TTL, &attr, Generation(0), fh, FopenFlags::empty(), &b)
            }
            None => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
        }
    }

    /// Creates (or opens) the tree file `name` in `parent` for [`BlocksFs::create_file`]; returns its
    /// inode, attributes, the open tree file and whether it existed before.
    fn create_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Reply<(Arc<Node>, fuser::FileAttr, File, bool)> {
        let dir = self.parent_dir(parent)?;
        let path = dir.child(name);
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let existed = path.exists();
        let file = options
            .mode(mode & !umask & 0o7777)
            .open(&path)
            .map_err(|e| errno_of(&e))?;
        if !existed {
            self.state
                .own_new_entry(&path, req, Some(mode & !umask))
                .map_err(|e| errno_of(&e))?;
        }
        let (node, attr) = self
            .state
            .lookup_node(&dir, name)
            .map_err(|e| errno_of(&e))?;
        Ok((node, attr, file, existed))
    }

    /// FUSE read.
    pub(super) fn read_file(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let mut buf = vec![0u8; size as usize];
        let read = self.state.handle_io(fh).and_then(|io| match io {
            HandleIo::Plain(file) => {
                read_full_at(&file, offset, &mut buf).map_err(|e| errno_of(&e))
            }
            HandleIo::Blocks(file) => file
                .read()
                .read_at(offset, &mut buf)
                .map_err(|e| layer_errno(&e)),
            HandleIo::Base(base) => base.read_at(offset, &mut buf).map_err(|e| errno_of(&e)),
        });
        match read {
            Ok(n) => reply.data(&buf[..n]),
            Err(errno) => reply.error(errno),
        }
    }

    /// FUSE write.
    pub(super) fn write_file(&self, fh: FileHandle, offset: u64, data: &[u8], reply: ReplyWrite) {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let r = self.state.handle_io(fh).and_then(|io| match io {
            HandleIo::Plain(file) => file.write_all_at(data, offset).map_err(|e| errno_of(&e)),
            HandleIo::Blocks(file) => file
                .write()
                .write_at(offset, data)
                .map_err(|e| layer_errno(&e)),
            HandleIo::Base(_) => Err(Errno::EBADF),
        });
        match r {
            Ok(()) => reply.written(len),
            Err(errno) => reply.error(errno),
        }
    }

    /// FUSE release: the handle goes; the last user of a [`BlockFile`] makes its map durable.
    pub(super) fn release_file(&self, fh: FileHandle, reply: ReplyEmpty) {
        let handle = self.state.handles.lock().remove(&fh.0);
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

    /// FUSE fsync: of a layer file, the tree file; of a base-backed one, [`BlockFile::sync`].
    pub(super) fn fsync_file(&self, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let r = self.state.handle_io(fh).and_then(|io| match io {
            HandleIo::Plain(file) => if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(|e| errno_of(&e)),
            HandleIo::Blocks(file) => file.write().sync().map_err(|e| layer_errno(&e)),
            HandleIo::Base(_) => Ok(()),
        });
        match r {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    /// FUSE fallocate.
    pub(super) fn fallocate_file(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.state.handle_io(fh).and_then(|io| match io {
            HandleIo::Plain(file) => {
                sys::fallocate(&file, mode, offset, length).map_err(|e| errno_of(&e))
            }
            HandleIo::Blocks(file) => fallocate_blocks(&mut file.write(), offset, length, mode),
            HandleIo::Base(_) => Err(Errno::EBADF),
        });
        match r {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    /// FUSE lseek (SEEK_DATA / SEEK_HOLE; the kernel answers the others itself).
    pub(super) fn lseek_file(&self, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let io = match self.state.handle_io(fh) {
            Ok(io) => io,
            Err(errno) => return reply.error(errno),
        };
        if let HandleIo::Plain(file) = &io {
            return match sys::lseek(file, offset, whence) {
                Ok(pos) => reply.offset(pos),
                Err(e) => reply.error(errno_of(&e)),
            };
        }
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return reply.error(Errno::EINVAL);
        }
        let found = match io {
            HandleIo::Blocks(file) => file.read().seek(off, whence).map_err(|e| layer_errno(&e)),
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

/// Open flags of a base-backed handle: direct I/O when it could not be counted in the inode's mode.
fn open_flags(counted: bool) -> FopenFlags {
    if counted {
        FopenFlags::empty()
    } else {
        FopenFlags::FOPEN_DIRECT_IO
    }
}

/// Reads `buf.len()` bytes at `offset`, fewer only at end of file; returns the bytes read.
fn read_full_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// fallocate on a base-backed file: allocation only changes the size; punching or zeroing a range
/// stores zero blocks in the layer (the base below must not show through).
fn fallocate_blocks(
    f: &mut BlockFile<LowerFile>,
    offset: u64,
    length: u64,
    mode: i32,
) -> Reply<()> {
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
