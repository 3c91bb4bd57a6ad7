//! Building a manifest in memory and writing it (optionally signed) to a file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

use crate::format::{
    chunk_flags, encode_meta, kind_code, seal_body, ChunkRecord, DirentRecord, HeaderFields,
    InodeRecord, Record, SlotRecord, StampRecord, XattrRecord, HOLE, SECTION_COUNT,
};
use crate::{
    ChunkId, ChunkRef, FileKind, ImageError, Ino, SourceStamp, XattrList, MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE, ROOT_INO,
};

/// Attributes of an inode being added to a [`ManifestBuilder`]. The link count is computed by the builder.
#[derive(Clone, Debug)]
pub struct NewInode {
    /// File type.
    pub kind: FileKind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u16,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (regular files: content length; symlinks: set from the target).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number for device nodes.
    pub rdev: u64,
}

#[derive(Debug)]
enum InodeData {
    None,
    Dir(Vec<(Vec<u8>, Ino)>),
    File(Vec<u32>),
    Symlink(Vec<u8>),
}

#[derive(Debug)]
struct PendingInode {
    attrs: NewInode,
    data: InodeData,
    xattrs: XattrList,
    stamp: Option<SourceStamp>,
}

/// Collects a tree, its chunks, stores and labels, then writes a version-1 manifest.
///
/// Inode 1 (the root directory) exists from the start; add others with [`ManifestBuilder::add_inode`].
#[derive(Debug)]
pub struct ManifestBuilder {
    chunk_size: u32,
    inodes: Vec<PendingInode>,
    chunks: Vec<ChunkRef>,
    chunk_index: HashMap<ChunkId, u32>,
    stores: Vec<String>,
    labels: Vec<(String, String)>,
}

impl ManifestBuilder {
    /// A builder whose root directory has the attributes `root`.
    pub fn new(chunk_size: u32, root: NewInode) -> Result<Self, ImageError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(ImageError::Invalid(format!(
                "chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
            )));
        }
        if root.kind != FileKind::Directory {
            return Err(ImageError::Invalid("the root must be a directory".into()));
        }
        Ok(ManifestBuilder {
            chunk_size,
            inodes: vec![PendingInode {
                attrs: root,
                data: InodeData::Dir(Vec::new()),
                xattrs: Vec::new(),
                stamp: None,
            }],
            chunks: Vec::new(),
            chunk_index: HashMap::new(),
            stores: Vec::new(),
            labels: Vec::new(),
        })
    }

    /// The chunk size files are cut into.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Adds an inode (not yet linked into any directory) and returns its number.
    pub fn add_inode(&mut self, attrs: NewInode) -> Ino {
        let data = match attrs.kind {
            FileKind::Directory => InodeData::Dir(Vec::new()),
            FileKind::Regular => InodeData::File(Vec::new()),
            FileKind::Symlink => InodeData::Symlink(Vec::new()),
            _ => InodeData::None,
        };
        self.inodes.push(PendingInode {
            attrs,
            data,
            xattrs: Vec::new(),
            stamp: None,
        });
        self.inodes.len() as Ino
    }

    fn pending(&mut self, ino: Ino) -> Result<&mut PendingInode, ImageError> {
        let idx = usize::try_from(ino.wrapping_sub(1)).map_err(|_| ImageError::NotFound(ino))?;
        self.inodes.get_mut(idx).ok_or(ImageError::NotFound(ino))
    }

    /// Links `child` into directory `parent` under `name`.
    pub fn add_entry(&mut self, parent: Ino, name: &[u8], child: Ino) -> Result<(), ImageError> {
        if child == 0 || child > self.inodes.len() as Ino {
            return Err(ImageError::NotFound(child));
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(ImageError::Invalid(format!(
                "invalid entry name {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        match &mut self.pending(parent)?.data {
            InodeData::Dir(entries) => {
                entries.push((name.to_vec(), child));
                Ok(())
            }
            _ => Err(ImageError::WrongKind {
                ino: parent,
                expected: "directory",
            }),
        }
    }

    /// Sets a symlink's target.
    pub fn set_symlink_target(&mut self, ino: Ino, target: &[u8]) -> Result<(), ImageError> {
        let p = self.pending(ino)?;
        match &mut p.data {
            InodeData::Symlink(t) => {
                *t = target.to_vec();
                p.attrs.size = target.len() as u64;
                Ok(())
            }
            _ => Err(ImageError::WrongKind {
                ino,
                expected: "symlink",
            }),
        }
    }

    /// Sets an inode's extended attributes.
    pub fn set_xattrs(&mut self, ino: Ino, xattrs: XattrList) -> Result<(), ImageError> {
        self.pending(ino)?.xattrs = xattrs;
        Ok(())
    }

    /// Records where a file came from (see [`SourceStamp`]).
    pub fn set_source_stamp(&mut self, ino: Ino, stamp: SourceStamp) -> Result<(), ImageError> {
        self.pending(ino)?.stamp = Some(stamp);
        Ok(())
    }

    /// Records a chunk (deduplicated by id) and returns its index in the chunk table.
    pub fn add_chunk(&mut self, r: ChunkRef) -> u32 {
        if let Some(&i) = self.chunk_index.get(&r.id) {
            return i;
        }
        let i = self.chunks.len() as u32;
        self.chunks.push(r);
        self.chunk_index.insert(r.id, i);
        i
    }

    /// Number of distinct chunks added.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Sets a regular file's chunks: one entry per `chunk_size` slice of the file, `None` for a hole,
    /// `Some(index)` from [`ManifestBuilder::add_chunk`].
    pub fn set_file_chunks(&mut self, ino: Ino, chunks: &[Option<u32>]) -> Result<(), ImageError> {
        let chunk_count = self.chunks.len() as u32;
        let chunk_size = u64::from(self.chunk_size);
        let p = self.pending(ino)?;
        let expected = p.attrs.size.div_ceil(chunk_size);
        if chunks.len() as u64 != expected {
            return Err(ImageError::Invalid(format!(
                "inode {ino}: {} chunks given for a {}-byte file (expected {expected})",
                chunks.len(),
                p.attrs.size
            )));
        }
        let mut slots = Vec::with_capacity(chunks.len());
        for c in chunks {
            match c {
                None => slots.push(HOLE),
                Some(i) if *i < chunk_count => slots.push(*i),
                Some(i) => return Err(ImageError::Invalid(format!("unknown chunk index {i}"))),
            }
        }
        match &mut p.data {
            InodeData::File(s) => {
                *s = slots;
                Ok(())
            }
            _ => Err(ImageError::WrongKind {
                ino,
                expected: "regular file",
            }),
        }
    }

    /// Records a store URL (without password) the chunks were uploaded to.
    pub fn add_store(&mut self, url: &str) {
        if !self.stores.iter().any(|s| s == url) {
            self.stores.push(url.to_string());
        }
    }

    /// Adds a free-form label (chain, block height, block hash, database type, ...).
    pub fn add_label(&mut self, key: &str, value: &str) {
        self.labels.push((key.to_string(), value.to_string()));
    }

    /// Serialises the manifest, signed with `signer` when given.
    pub fn to_bytes(&self, signer: Option<&SigningKey>) -> Result<Vec<u8>, ImageError> {
        let nlink = self.link_counts()?;
        let mut tables = TreeTables::default();
        for (i, p) in self.inodes.iter().enumerate() {
            tables.push_inode(&self.inodes, i, p, nlink[i])?;
        }
        let chunks = self.chunk_table();
        let meta = encode_meta(&self.stores, &self.labels);
        let stamps = self.stamp_table();
        let fields = HeaderFields {
            chunk_size: self.chunk_size,
            flags: 0,
            inode_count: self.inodes.len() as u64,
        };
        let sections: [&[u8]; SECTION_COUNT] = [
            &tables.inodes,
            &tables.dirents,
            &tables.slots,
            &chunks,
            &tables.xattrs,
            &tables.pool,
            &meta,
            &stamps,
        ];
        Ok(seal_body(fields, &sections, signer))
    }

    /// Link count of every inode: directories 2 + subdirectories, others the number of names. Refuses a
    /// directory linked more than once (or the root linked at all).
    fn link_counts(&self) -> Result<Vec<u32>, ImageError> {
        let is_dir = |ino: Ino| self.inodes[(ino - 1) as usize].attrs.kind == FileKind::Directory;
        let mut nlink = vec![0u32; self.inodes.len()];
        nlink[0] = 2;
        for p in &self.inodes {
            let InodeData::Dir(entries) = &p.data else {
                continue;
            };
            for (_, child) in entries {
                let c = (*child - 1) as usize;
                if !is_dir(*child) {
                    nlink[c] = nlink[c].saturating_add(1);
                } else if nlink[c] != 0 || *child == ROOT_INO {
                    return Err(ImageError::Invalid(format!(
                        "directory inode {child} is linked more than once"
                    )));
                } else {
                    nlink[c] = 2;
                }
            }
        }
        for (i, p) in self.inodes.iter().enumerate() {
            if let InodeData::Dir(entries) = &p.data {
                let subdirs = entries.iter().filter(|(_, c)| is_dir(*c)).count() as u32;
                nlink[i] = 2u32.saturating_add(subdirs);
            }
        }
        Ok(nlink)
    }

    /// The chunk section: one [`ChunkRecord`] per distinct chunk, in the order they were added.
    fn chunk_table(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.chunks.len() * ChunkRecord::LEN);
        for c in &self.chunks {
            let rec = ChunkRecord {
                id: c.id.0,
                key: c.key,
                plain_len: c.plain_len.into(),
                stored_len: c.stored_len.into(),
                flags: U32::new(chunk_flags(c)),
                reserved: U32::ZERO,
            };
            out.extend_from_slice(rec.as_bytes());
        }
        out
    }

    /// The source stamp section: empty when no inode has a stamp, else one [`StampRecord`] per inode.
    fn stamp_table(&self) -> Vec<u8> {
        if self.inodes.iter().all(|p| p.stamp.is_none()) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.inodes.len() * StampRecord::LEN);
        for p in &self.inodes {
            let st = p.stamp.unwrap_or_default();
            let rec = StampRecord {
                dev: st.dev.into(),
                ino: st.ino.into(),
                ctime_sec: st.ctime_sec.into(),
                ctime_nsec: st.ctime_nsec.into(),
                reserved: U32::ZERO,
            };
            out.extend_from_slice(rec.as_bytes());
        }
        out
    }

    /// Writes the manifest to `path` (atomically: a temporary file renamed into place).
    pub fn write(&self, path: &Path, signer: Option<&SigningKey>) -> Result<(), ImageError> {
        write_atomically(path, &self.to_bytes(signer)?)
    }
}

fn too_big(what: &str) -> ImageError {
    ImageError::Invalid(format!("too many {what} for format v1"))
}

fn len_u32(len: usize, what: &str) -> Result<U32, ImageError> {
    u32::try_from(len).map(U32::new).map_err(|_| too_big(what))
}

/// The sections that describe the tree, filled inode by inode: each inode's data (directory entries,
/// chunk slots or symlink target) and then its xattrs go to the pool in that order.
#[derive(Default)]
struct TreeTables {
    inodes: Vec<u8>,
    dirents: Vec<u8>,
    slots: Vec<u8>,
    xattrs: Vec<u8>,
    pool: Vec<u8>,
    dirent_count: u64,
    slot_count: u64,
    xattr_count: u64,
}

impl TreeTables {
    /// Appends inode `i` (numbered `i + 1`) with its data and xattrs.
    fn push_inode(
        &mut self,
        all: &[PendingInode],
        i: usize,
        p: &PendingInode,
        nlink: u32,
    ) -> Result<(), ImageError> {
        let (data_start, data_count) = match &p.data {
            InodeData::None => (0, 0),
            InodeData::Dir(entries) => self.push_dir(all, i, entries)?,
            InodeData::File(slots) => self.push_slots(slots),
            InodeData::Symlink(target) => {
                let start = self.pool.len() as u64;
                self.pool.extend_from_slice(target);
                (start, target.len() as u64)
            }
        };
        let xattr_start = u32::try_from(self.xattr_count).map_err(|_| too_big("xattrs"))?;
        self.push_xattrs(&p.xattrs)?;
        let a = &p.attrs;
        let rec = InodeRecord {
            kind: kind_code(a.kind),
            reserved: 0,
            perm: (a.perm & 0o7777).into(),
            uid: a.uid.into(),
            gid: a.gid.into(),
            nlink: nlink.into(),
            size: a.size.into(),
            mtime_sec: a.mtime_sec.into(),
            mtime_nsec: a.mtime_nsec.into(),
            xattr_count: len_u32(p.xattrs.len(), "xattrs")?,
            data_count: u32::try_from(data_count)
                .map(U32::new)
                .map_err(|_| too_big("entries"))?,
            xattr_start: xattr_start.into(),
            data_start: data_start.into(),
            rdev: a.rdev.into(),
        };
        self.inodes.extend_from_slice(rec.as_bytes());
        Ok(())
    }

    /// Appends the entries of directory `i` sorted by name; returns (first dirent index, count).
    fn push_dir(
        &mut self,
        all: &[PendingInode],
        i: usize,
        entries: &[(Vec<u8>, Ino)],
    ) -> Result<(u64, u64), ImageError> {
        let mut sorted: Vec<&(Vec<u8>, Ino)> = entries.iter().collect();
        sorted.sort_by(|x, y| x.0.cmp(&y.0));
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ImageError::Invalid(format!(
                "duplicate entry {:?} in directory inode {}",
                String::from_utf8_lossy(&w[0].0),
                i + 1
            )));
        }
        let start = self.dirent_count;
        for (name, child) in sorted {
            let rec = DirentRecord {
                name_offset: (self.pool.len() as u64).into(),
                ino: (*child).into(),
                name_len: len_u32(name.len(), "name bytes")?,
                kind: kind_code(all[(*child - 1) as usize].attrs.kind),
                reserved: [0; 3],
            };
            self.dirents.extend_from_slice(rec.as_bytes());
            self.pool.extend_from_slice(name);
            self.dirent_count += 1;
        }
        Ok((start, entries.len() as u64))
    }

    /// Appends a file's chunk slots; returns (first slot index, count).
    fn push_slots(&mut self, slots: &[u32]) -> (u64, u64) {
        let start = self.slot_count;
        for &v in slots {
            self.slots
                .extend_from_slice(SlotRecord { chunk: v.into() }.as_bytes());
        }
        self.slot_count += slots.len() as u64;
        (start, slots.len() as u64)
    }

    fn push_xattrs(&mut self, xattrs: &XattrList) -> Result<(), ImageError> {
        for (name, value) in xattrs {
            let name_offset = self.pool.len() as u64;
            let rec = XattrRecord {
                name_offset: name_offset.into(),
                value_offset: (name_offset + name.len() as u64).into(),
                name_len: len_u32(name.len(), "xattr bytes")?,
                value_len: len_u32(value.len(), "xattr bytes")?,
            };
            self.xattrs.extend_from_slice(rec.as_bytes());
            self.pool.extend_from_slice(name);
            self.pool.extend_from_slice(value);
            self.xattr_count += 1;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced and renamed into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| ImageError::io(format!("create a temporary file in {}", dir.display()), e))?;
    tmp.write_all(bytes)
        .and_then(|_| {
            tmp.as_file()
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        })
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| ImageError::io(format!("write {}", path.display()), e))?;
    tmp.persist(path)
        .map_err(|e| ImageError::io(format!("rename into {}", path.display()), e.error))?;
    Ok(())
}
