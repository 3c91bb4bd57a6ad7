//! Building a manifest in memory and writing it (optionally signed) to a file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};

use crate::format::*;
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

    /// The chunk-table index of `id`, if already added.
    pub fn chunk_index_of(&self, id: &ChunkId) -> Option<u32> {
        self.chunk_index.get(id).copied()
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
        let n = self.inodes.len();
        let too_big = |what: &str| ImageError::Invalid(format!("too many {what} for format v1"));
        let mut nlink = vec![0u32; n];
        nlink[0] = 2;
        for p in &self.inodes {
            if let InodeData::Dir(entries) = &p.data {
                for (_, child) in entries {
                    let c = (*child - 1) as usize;
                    if self.inodes[c].attrs.kind == FileKind::Directory {
                        if nlink[c] != 0 || *child == ROOT_INO {
                            return Err(ImageError::Invalid(format!(
                                "directory inode {child} is linked more than once"
                            )));
                        }
                        nlink[c] = 2;
                    } else {
                        nlink[c] = nlink[c].saturating_add(1);
                    }
                }
            }
        }
        // Directory link counts: 2 + number of subdirectories.
        for (i, p) in self.inodes.iter().enumerate() {
            if let InodeData::Dir(entries) = &p.data {
                let subdirs = entries
                    .iter()
                    .filter(|(_, c)| {
                        self.inodes[(*c - 1) as usize].attrs.kind == FileKind::Directory
                    })
                    .count() as u32;
                nlink[i] = 2u32.saturating_add(subdirs);
            }
        }

        let mut inodes = Vec::with_capacity(n * INODE_LEN);
        let mut dirents = Vec::new();
        let mut slots: Vec<u8> = Vec::new();
        let mut xattrs = Vec::new();
        let mut pool: Vec<u8> = Vec::new();
        let mut dirent_count: u64 = 0;
        let mut slot_count: u64 = 0;
        let mut xattr_count: u64 = 0;

        for (i, p) in self.inodes.iter().enumerate() {
            let a = &p.attrs;
            let (data_start, data_count): (u64, u64) = match &p.data {
                InodeData::None => (0, 0),
                InodeData::Dir(entries) => {
                    let mut sorted: Vec<&(Vec<u8>, Ino)> = entries.iter().collect();
                    sorted.sort_by(|x, y| x.0.cmp(&y.0));
                    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                        return Err(ImageError::Invalid(format!(
                            "duplicate entry {:?} in directory inode {}",
                            String::from_utf8_lossy(&w[0].0),
                            i + 1
                        )));
                    }
                    let start = dirent_count;
                    for (name, child) in sorted {
                        let kind = self.inodes[(*child - 1) as usize].attrs.kind;
                        dirents.extend_from_slice(&(pool.len() as u64).to_le_bytes());
                        dirents.extend_from_slice(&child.to_le_bytes());
                        dirents.extend_from_slice(
                            &u32::try_from(name.len())
                                .map_err(|_| too_big("name bytes"))?
                                .to_le_bytes(),
                        );
                        dirents.extend_from_slice(&[kind_code(kind), 0, 0, 0]);
                        pool.extend_from_slice(name);
                        dirent_count += 1;
                    }
                    (start, entries.len() as u64)
                }
                InodeData::File(s) => {
                    let start = slot_count;
                    for v in s {
                        slots.extend_from_slice(&v.to_le_bytes());
                    }
                    slot_count += s.len() as u64;
                    (start, s.len() as u64)
                }
                InodeData::Symlink(t) => {
                    let start = pool.len() as u64;
                    pool.extend_from_slice(t);
                    (start, t.len() as u64)
                }
            };
            let xattr_start = u32::try_from(xattr_count).map_err(|_| too_big("xattrs"))?;
            for (name, value) in &p.xattrs {
                xattrs.extend_from_slice(&(pool.len() as u64).to_le_bytes());
                xattrs.extend_from_slice(&(pool.len() as u64 + name.len() as u64).to_le_bytes());
                xattrs.extend_from_slice(
                    &u32::try_from(name.len())
                        .map_err(|_| too_big("xattr bytes"))?
                        .to_le_bytes(),
                );
                xattrs.extend_from_slice(
                    &u32::try_from(value.len())
                        .map_err(|_| too_big("xattr bytes"))?
                        .to_le_bytes(),
                );
                pool.extend_from_slice(name);
                pool.extend_from_slice(value);
                xattr_count += 1;
            }
            let mut rec = [0u8; INODE_LEN];
            rec[0] = kind_code(a.kind);
            rec[2..4].copy_from_slice(&(a.perm & 0o7777).to_le_bytes());
            rec[4..8].copy_from_slice(&a.uid.to_le_bytes());
            rec[8..12].copy_from_slice(&a.gid.to_le_bytes());
            rec[12..16].copy_from_slice(&nlink[i].to_le_bytes());
            rec[16..24].copy_from_slice(&a.size.to_le_bytes());
            rec[24..32].copy_from_slice(&a.mtime_sec.to_le_bytes());
            rec[32..36].copy_from_slice(&a.mtime_nsec.to_le_bytes());
            rec[36..40].copy_from_slice(
                &u32::try_from(p.xattrs.len())
                    .map_err(|_| too_big("xattrs"))?
                    .to_le_bytes(),
            );
            rec[40..44].copy_from_slice(
                &u32::try_from(data_count)
                    .map_err(|_| too_big("entries"))?
                    .to_le_bytes(),
            );
            rec[44..48].copy_from_slice(&xattr_start.to_le_bytes());
            rec[48..56].copy_from_slice(&data_start.to_le_bytes());
            rec[56..64].copy_from_slice(&a.rdev.to_le_bytes());
            inodes.extend_from_slice(&rec);
        }

        let mut chunks = Vec::with_capacity(self.chunks.len() * CHUNK_LEN);
        for c in &self.chunks {
            chunks.extend_from_slice(&c.id.0);
            chunks.extend_from_slice(&c.key);
            chunks.extend_from_slice(&c.plain_len.to_le_bytes());
            chunks.extend_from_slice(&c.stored_len.to_le_bytes());
            let flags = if c.compressed { CHUNK_COMPRESSED } else { 0 };
            chunks.extend_from_slice(&flags.to_le_bytes());
            chunks.extend_from_slice(&0u32.to_le_bytes());
        }

        let mut meta = Vec::new();
        let put_str = |meta: &mut Vec<u8>, s: &str| {
            meta.extend_from_slice(&(s.len() as u32).to_le_bytes());
            meta.extend_from_slice(s.as_bytes());
        };
        meta.extend_from_slice(&(self.stores.len() as u32).to_le_bytes());
        for s in &self.stores {
            put_str(&mut meta, s);
        }
        meta.extend_from_slice(&(self.labels.len() as u32).to_le_bytes());
        for (k, v) in &self.labels {
            put_str(&mut meta, k);
            put_str(&mut meta, v);
        }

        let mut stamps = Vec::new();
        if self.inodes.iter().any(|p| p.stamp.is_some()) {
            stamps.reserve(n * STAMP_LEN);
            for p in &self.inodes {
                let st = p.stamp.unwrap_or_default();
                stamps.extend_from_slice(&st.dev.to_le_bytes());
                stamps.extend_from_slice(&st.ino.to_le_bytes());
                stamps.extend_from_slice(&st.ctime_sec.to_le_bytes());
                stamps.extend_from_slice(&st.ctime_nsec.to_le_bytes());
                stamps.extend_from_slice(&0u32.to_le_bytes());
            }
        }

        let sections: [&[u8]; 8] = [
            &inodes, &dirents, &slots, &chunks, &xattrs, &pool, &meta, &stamps,
        ];
        let body_len: usize = HEADER_LEN + sections.iter().map(|s| s.len()).sum::<usize>();
        let mut out = Vec::with_capacity(body_len + TRAILER_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        let mut at = HEADER_LEN as u64;
        for i in 0..SECTION_COUNT {
            let len = sections.get(i).map(|s| s.len() as u64).unwrap_or(0);
            let off = if len == 0 { 0 } else { at };
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            at += len;
        }
        debug_assert_eq!(out.len(), HEADER_LEN);
        for s in sections {
            out.extend_from_slice(s);
        }

        let body_hash = if out.len() > 8 << 20 {
            let mut h = blake3::Hasher::new();
            h.update_rayon(&out);
            h.finalize()
        } else {
            blake3::hash(&out)
        };
        out.extend_from_slice(&TRAILER_MAGIC);
        let mut sig_part = [0u8; 96];
        let flags = match signer {
            Some(key) => {
                let mut msg = SIGNATURE_CONTEXT.to_vec();
                msg.extend_from_slice(body_hash.as_bytes());
                sig_part[..32].copy_from_slice(key.verifying_key().as_bytes());
                sig_part[32..].copy_from_slice(&key.sign(&msg).to_bytes());
                TRAILER_SIGNED
            }
            None => 0,
        };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(body_hash.as_bytes());
        out.extend_from_slice(&sig_part);
        Ok(out)
    }

    /// Writes the manifest to `path` (atomically: a temporary file renamed into place).
    pub fn write(&self, path: &Path, signer: Option<&SigningKey>) -> Result<(), ImageError> {
        write_atomically(path, &self.to_bytes(signer)?)
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
