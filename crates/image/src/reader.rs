//! Reading a manifest: memory-mapped, opened in O(1) of image size, every offset checked on access.

use std::fs::File;
use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use memmap2::Mmap;

use zerocopy::FromBytes;

use crate::format::{
    body_hash, chunk_kind, kind_from_code, parse_meta, signed_message, ChunkRecord, DirentRecord,
    Header, InodeRecord, Record, Section, SlotRecord, StampRecord, Trailer, XattrRecord,
    FORMAT_VERSION, HEADER_LEN, HOLE, MAGIC, SECTION_COUNT, TRAILER_LEN, TRAILER_MAGIC,
    TRAILER_SIGNED,
};
use crate::{
    ChunkId, ChunkRef, DirEntry, FileKind, ImageError, Ino, Inode, ManifestSource, SourceStamp,
    XattrList, ROOT_INO,
};

/// The bytes of a manifest: a read-only memory map of the file, or an owned buffer.
enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open image manifest. Cheap to share between threads (`Send + Sync`); readers never block each
/// other. The manifest file must not be modified while it is open.
pub struct ImageManifest {
    backing: Backing,
    /// `(offset, len)` of each section, validated to lie inside the body.
    sections: [(usize, usize); SECTION_COUNT],
    chunk_size: u32,
    inode_count: u64,
    body_len: usize,
    stores: Vec<String>,
    labels: Vec<(String, String)>,
    source: ManifestSource,
}

/// The decoded fixed part of an inode record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawInode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub xattr_count: u32,
    pub data_count: u32,
    pub xattr_start: u32,
    pub data_start: u64,
    pub rdev: u64,
}

fn corrupt(msg: impl Into<String>) -> ImageError {
    ImageError::CorruptManifest(msg.into())
}

impl std::fmt::Debug for ImageManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageManifest")
            .field("chunk_size", &self.chunk_size)
            .field("inode_count", &self.inode_count)
            .field("bytes", &self.backing.bytes().len())
            .finish()
    }
}

impl ImageManifest {
    /// Opens and memory-maps a manifest file. Reads only the header, trailer and the small metadata
    /// section, so the cost does not grow with the image. Does not check the signature
    /// (see [`ImageManifest::verify_signature`]). A ThreeFold flist (an SQLite file with the rfs tables,
    /// recognised by its content) is read whole and turned into a manifest in memory instead
    /// ([`crate::fl::manifest_from_flist`]).
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        if crate::fl::looks_like_flist(path)? {
            return crate::fl::manifest_from_flist(path);
        }
        let file =
            File::open(path).map_err(|e| ImageError::io(format!("open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| ImageError::io(format!("stat {}", path.display()), e))?
            .len();
        if len < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt(format!(
                "{} is too short ({len} bytes)",
                path.display()
            )));
        }
        // SAFETY: the manifest is opened read-only; images are immutable once written (writers replace
        // them by rename), which is the documented contract of this type.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ImageError::io(format!("mmap {}", path.display()), e))?;
        Self::from_backing(Backing::Mapped(map))
    }

    /// Parses a manifest held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ImageError> {
        Self::from_backing(Backing::Owned(bytes))
    }

    fn from_backing(backing: Backing) -> Result<Self, ImageError> {
        let b = backing.bytes();
        if b.len() < HEADER_LEN + TRAILER_LEN {
            return Err(corrupt(format!("too short ({} bytes)", b.len())));
        }
        let header = Header::ref_from_prefix(b)
            .map_err(|_| corrupt("short header"))?
            .0;
        if header.magic != MAGIC {
            return Err(corrupt("not a thinnode image (bad magic)"));
        }
        let version = header.version.get();
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "unsupported format version {version} (this build reads {FORMAT_VERSION})"
            )));
        }
        let header_len = header.header_len.get();
        if header_len as usize != HEADER_LEN {
            return Err(corrupt(format!(
                "header length {header_len}, expected {HEADER_LEN}"
            )));
        }
        let chunk_size = header.chunk_size.get();
        if !(crate::MIN_CHUNK_SIZE..=crate::MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(corrupt(format!("chunk size {chunk_size} out of range")));
        }
        let inode_count = header.inode_count.get();
        let body_len = b.len() - TRAILER_LEN;
        if b.get(body_len..body_len + 8) != Some(&TRAILER_MAGIC[..]) {
            return Err(corrupt("bad trailer magic (truncated file?)"));
        }
        let mut sections = [(0usize, 0usize); SECTION_COUNT];
        for ((s, entry), section) in sections.iter_mut().zip(&header.sections).zip(Section::ALL) {
            let i = section as usize;
            let (off, len) = (entry.offset.get(), entry.len.get());
            let end = off
                .checked_add(len)
                .ok_or_else(|| corrupt("section overflows"))?;
            if len > 0 && (off < HEADER_LEN as u64 || end > body_len as u64) {
                return Err(corrupt(format!(
                    "section {i} [{off}, {end}) lies outside the body"
                )));
            }
            let rec = section.record_len();
            if rec != 0 && len % rec as u64 != 0 {
                return Err(corrupt(format!(
                    "section {i} length {len} is not a multiple of {rec}"
                )));
            }
            *s = (off as usize, len as usize);
        }
        let inodes_len = sections[Section::Inodes as usize].1 as u64;
        if inode_count == 0 || inode_count.checked_mul(InodeRecord::LEN as u64) != Some(inodes_len)
        {
            return Err(corrupt(format!(
                "inode count {inode_count} does not match the inode table ({inodes_len} bytes)"
            )));
        }
        let stamps_len = sections[Section::SourceStamps as usize].1 as u64;
        if stamps_len != 0 && inode_count.checked_mul(StampRecord::LEN as u64) != Some(stamps_len) {
            return Err(corrupt(format!(
                "source stamp table ({stamps_len} bytes) does not match {inode_count} inodes"
            )));
        }
        let (stores, labels) = {
            let (off, len) = sections[Section::Meta as usize];
            parse_meta(b.get(off..off + len).unwrap_or_default())?
        };
        let m = ImageManifest {
            backing,
            sections,
            chunk_size,
            inode_count,
            body_len,
            stores,
            labels,
            source: ManifestSource::Image,
        };
        if m.raw_inode(ROOT_INO)?.kind != FileKind::Directory {
            return Err(corrupt("the root inode is not a directory"));
        }
        Ok(m)
    }

    fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    fn section(&self, s: Section) -> &[u8] {
        let (off, len) = self.sections[s as usize];
        self.bytes().get(off..off + len).unwrap_or_default()
    }

    /// Record `index` of the section holding `R`s.
    fn record<R: Record>(&self, index: u64) -> Result<&R, ImageError> {
        let out_of_range = || {
            corrupt(format!(
                "record index {index} out of range in {:?}",
                R::SECTION
            ))
        };
        let start = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(R::LEN))
            .ok_or_else(out_of_range)?;
        let end = start.checked_add(R::LEN).ok_or_else(out_of_range)?;
        let bytes = self
            .section(R::SECTION)
            .get(start..end)
            .ok_or_else(out_of_range)?;
        R::ref_from_bytes(bytes).map_err(|_| out_of_range())
    }

    fn pool(&self, off: u64, len: u64) -> Result<&[u8], ImageError> {
        let start = usize::try_from(off).map_err(|_| corrupt("pool offset out of range"))?;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| corrupt("pool length out of range"))?)
            .ok_or_else(|| corrupt("pool range overflows"))?;
        self.section(Section::Pool)
            .get(start..end)
            .ok_or_else(|| corrupt(format!("pool range [{start}, {end}) out of bounds")))
    }

    pub(crate) fn raw_inode(&self, ino: Ino) -> Result<RawInode, ImageError> {
        if ino == 0 || ino > self.inode_count {
            return Err(ImageError::NotFound(ino));
        }
        let r: &InodeRecord = self.record(ino - 1)?;
        Ok(RawInode {
            kind: kind_from_code(r.kind)
                .ok_or_else(|| corrupt(format!("inode {ino}: bad kind {}", r.kind)))?,
            perm: r.perm.get() & 0o7777,
            uid: r.uid.get(),
            gid: r.gid.get(),
            nlink: r.nlink.get(),
            size: r.size.get(),
            mtime_sec: r.mtime_sec.get(),
            mtime_nsec: r.mtime_nsec.get(),
            xattr_count: r.xattr_count.get(),
            data_count: r.data_count.get(),
            xattr_start: r.xattr_start.get(),
            data_start: r.data_start.get(),
            rdev: r.rdev.get(),
        })
    }

    /// Checks the manifest's signature against `trusted`: the signer must be `trusted`, the body must hash
    /// to the recorded hash, and the ed25519 signature over that hash must verify. Hashes the whole
    /// manifest (multi-threaded for large ones).
    pub fn verify_signature(&self, trusted: &VerifyingKey) -> Result<(), ImageError> {
        let t = self.trailer()?;
        if t.flags.get() & TRAILER_SIGNED == 0 {
            return Err(ImageError::Unsigned);
        }
        if &t.signer != trusted.as_bytes() {
            return Err(ImageError::UntrustedKey {
                found: hex::encode(t.signer),
                trusted: hex::encode(trusted.as_bytes()),
            });
        }
        let hash = self.check_body_hash()?;
        trusted
            .verify_strict(&signed_message(&hash), &Signature::from_bytes(&t.signature))
            .map_err(|e| ImageError::BadSignature(e.to_string()))
    }

    /// Recomputes the BLAKE3 hash of the manifest body and compares it with the trailer's; returns it.
    /// Detects accidental corruption of unsigned manifests too.
    pub fn check_body_hash(&self) -> Result<[u8; 32], ImageError> {
        let recorded = self.trailer()?.body_hash;
        let actual = body_hash(self.bytes().get(..self.body_len).unwrap_or_default());
        if actual.as_bytes() != &recorded {
            return Err(corrupt("manifest body does not match its recorded hash"));
        }
        Ok(recorded)
    }

    fn trailer(&self) -> Result<&Trailer, ImageError> {
        let t = self.bytes().get(self.body_len..).unwrap_or_default();
        Trailer::ref_from_bytes(t).map_err(|_| corrupt("short trailer"))
    }

    /// What file the manifest was read from (an image, or an flist turned into a manifest).
    pub fn source(&self) -> ManifestSource {
        self.source
    }

    /// Marks a manifest built in memory from another format.
    pub(crate) fn with_source(mut self, source: ManifestSource) -> Self {
        self.source = source;
        self
    }

    /// Whether the manifest carries a signature.
    pub fn is_signed(&self) -> bool {
        self.trailer()
            .is_ok_and(|t| t.flags.get() & TRAILER_SIGNED != 0)
    }

    /// The public key that signed the manifest, if signed (not yet verified: see
    /// [`ImageManifest::verify_signature`]).
    pub fn signer(&self) -> Option<VerifyingKey> {
        let t = self.trailer().ok()?;
        if t.flags.get() & TRAILER_SIGNED == 0 {
            return None;
        }
        VerifyingKey::from_bytes(&t.signer).ok()
    }

    /// The chunk size files were cut into.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of inodes; inode numbers are `1..=inode_count()`.
    pub fn inode_count(&self) -> u64 {
        self.inode_count
    }

    /// Size of the manifest file in bytes.
    pub fn manifest_len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Inode, ImageError> {
        let r = self.raw_inode(ino)?;
        Ok(Inode {
            ino,
            kind: r.kind,
            perm: r.perm,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            mtime_sec: r.mtime_sec,
            mtime_nsec: r.mtime_nsec,
            nlink: r.nlink,
            rdev: r.rdev,
        })
    }

    fn dir_range(&self, dir: Ino) -> Result<(u64, u64), ImageError> {
        let r = self.raw_inode(dir)?;
        if r.kind != FileKind::Directory {
            return Err(ImageError::WrongKind {
                ino: dir,
                expected: "directory",
            });
        }
        Ok((r.data_start, u64::from(r.data_count)))
    }

    /// Decodes dirent `index`: (name, ino, kind).
    fn dirent(&self, index: u64) -> Result<(&[u8], Ino, FileKind), ImageError> {
        let r: &DirentRecord = self.record(index)?;
        let kind = kind_from_code(r.kind)
            .ok_or_else(|| corrupt(format!("dirent {index}: bad kind {}", r.kind)))?;
        let ino = r.ino.get();
        if ino == 0 || ino > self.inode_count {
            return Err(corrupt(format!(
                "dirent {index} names inode {ino}, out of range"
            )));
        }
        Ok((
            self.pool(r.name_offset.get(), u64::from(r.name_len.get()))?,
            ino,
            kind,
        ))
    }

    /// Looks `name` up in directory `parent` (binary search over its sorted entries).
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Inode>, ImageError> {
        let (start, count) = self.dir_range(parent)?;
        let (mut lo, mut hi) = (0u64, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let idx = start
                .checked_add(mid)
                .ok_or_else(|| corrupt("dirent index overflows"))?;
            let (n, ino, _) = self.dirent(idx)?;
            match n.cmp(name) {
                std::cmp::Ordering::Equal => return self.getattr(ino).map(Some),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Entries of directory `dir` from index `offset` on, sorted by name, without "." and "..".
    pub fn readdir(&self, dir: Ino, offset: u64) -> Result<Vec<DirEntry>, ImageError> {
        self.readdir_page(dir, offset, usize::MAX)
    }

    /// Like [`ImageManifest::readdir`] but returns at most `limit` entries.
    pub fn readdir_page(
        &self,
        dir: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>, ImageError> {
        let (start, count) = self.dir_range(dir)?;
        let mut out = Vec::new();
        let mut i = offset;
        while i < count && out.len() < limit {
            let idx = start
                .checked_add(i)
                .ok_or_else(|| corrupt("dirent index overflows"))?;
            let (name, ino, kind) = self.dirent(idx)?;
            out.push(DirEntry {
                name: name.to_vec(),
                ino,
                kind,
            });
            i += 1;
        }
        Ok(out)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, ImageError> {
        let r = self.raw_inode(ino)?;
        if r.kind != FileKind::Symlink {
            return Err(ImageError::WrongKind {
                ino,
                expected: "symlink",
            });
        }
        Ok(self.pool(r.data_start, u64::from(r.data_count))?.to_vec())
    }

    /// Extended attributes of `ino` as (name, value) pairs.
    pub fn xattrs(&self, ino: Ino) -> Result<XattrList, ImageError> {
        let r = self.raw_inode(ino)?;
        let mut out = Vec::with_capacity(r.xattr_count.min(1024) as usize);
        for i in 0..u64::from(r.xattr_count) {
            let x: &XattrRecord = self.record(u64::from(r.xattr_start) + i)?;
            let name = self.pool(x.name_offset.get(), u64::from(x.name_len.get()))?;
            let value = self.pool(x.value_offset.get(), u64::from(x.value_len.get()))?;
            out.push((name.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    fn file_range(&self, ino: Ino) -> Result<(RawInode, u64), ImageError> {
        let r = self.raw_inode(ino)?;
        if r.kind != FileKind::Regular {
            return Err(ImageError::WrongKind {
                ino,
                expected: "regular file",
            });
        }
        let expected = r.size.div_ceil(u64::from(self.chunk_size));
        if u64::from(r.data_count) != expected {
            return Err(corrupt(format!(
                "inode {ino}: {} chunk slots for {} bytes",
                r.data_count, r.size
            )));
        }
        Ok((r, u64::from(r.data_count)))
    }

    /// Where file `ino` came from, when the packer recorded it (see [`SourceStamp`]).
    pub fn source_stamp(&self, ino: Ino) -> Result<Option<SourceStamp>, ImageError> {
        if ino == 0 || ino > self.inode_count {
            return Err(ImageError::NotFound(ino));
        }
        if self.section(Section::SourceStamps).is_empty() {
            return Ok(None);
        }
        let r: &StampRecord = self.record(ino - 1)?;
        let st = SourceStamp {
            dev: r.dev.get(),
            ino: r.ino.get(),
            ctime_sec: r.ctime_sec.get(),
            ctime_nsec: r.ctime_nsec.get(),
        };
        Ok((st != SourceStamp::default()).then_some(st))
    }

    /// Number of entries in the unique chunk table.
    pub fn unique_chunk_count(&self) -> u64 {
        (self.section(Section::Chunks).len() / ChunkRecord::LEN) as u64
    }

    /// Entry `index` of the unique chunk table.
    pub fn unique_chunk(&self, index: u32) -> Result<ChunkRef, ImageError> {
        let r: &ChunkRecord = self.record(u64::from(index))?;
        let (compressed, encoding) = chunk_kind(r.flags.get());
        Ok(ChunkRef {
            id: ChunkId(r.id),
            key: r.key,
            plain_len: r.plain_len.get(),
            stored_len: r.stored_len.get(),
            compressed,
            encoding,
        })
    }

    /// The unique-chunk-table index of chunk `index` of file `ino`; `None` for a hole.
    pub fn chunk_slot(&self, ino: Ino, index: u64) -> Result<Option<u32>, ImageError> {
        let (r, count) = self.file_range(ino)?;
        if index >= count {
            return Err(ImageError::Invalid(format!(
                "chunk {index} is past the end of inode {ino} ({count} chunks)"
            )));
        }
        self.slot_at(r.data_start, index)
    }

    fn slot_at(&self, start: u64, index: u64) -> Result<Option<u32>, ImageError> {
        let idx = start
            .checked_add(index)
            .ok_or_else(|| corrupt("slot index overflows"))?;
        let v = self.record::<SlotRecord>(idx)?.chunk.get();
        Ok(if v == HOLE { None } else { Some(v) })
    }

    /// Chunk `index` of file `ino` (`index * chunk_size()` is its byte offset); `None` is a hole that
    /// reads as zeros. The chunk's plaintext length is `min(chunk_size, size - offset)`.
    pub fn chunk(&self, ino: Ino, index: u64) -> Result<Option<ChunkRef>, ImageError> {
        match self.chunk_slot(ino, index)? {
            None => Ok(None),
            Some(i) => self.unique_chunk(i).map(Some),
        }
    }

    /// `lseek(SEEK_DATA)` semantics for file `ino`: the first offset at or after `offset` that lies in
    /// a stored chunk (`offset` itself when it does), or `None` when only holes follow (ENXIO). Holes are
    /// known at chunk granularity, so "data" may contain zeros, as POSIX allows.
    pub fn seek_data(&self, ino: Ino, offset: u64) -> Result<Option<u64>, ImageError> {
        let (r, count) = self.file_range(ino)?;
        if offset >= r.size {
            return Ok(None);
        }
        let cs = u64::from(self.chunk_size);
        for index in offset / cs..count {
            if self.slot_at(r.data_start, index)?.is_some() {
                return Ok(Some(offset.max(index * cs)));
            }
        }
        Ok(None)
    }

    /// `lseek(SEEK_HOLE)` semantics for file `ino`: the first offset at or after `offset` inside a
    /// hole, or the file size (the implicit hole at the end); `None` when `offset` is past the end
    /// (ENXIO).
    pub fn seek_hole(&self, ino: Ino, offset: u64) -> Result<Option<u64>, ImageError> {
        let (r, count) = self.file_range(ino)?;
        if offset >= r.size {
            return Ok(None);
        }
        let cs = u64::from(self.chunk_size);
        for index in offset / cs..count {
            if self.slot_at(r.data_start, index)?.is_none() {
                return Ok(Some(offset.max(index * cs)));
            }
        }
        Ok(Some(r.size))
    }

    /// All chunk slots of file `ino` as unique-table indices (`None` = hole).
    pub fn file_chunk_slots(&self, ino: Ino) -> Result<Vec<Option<u32>>, ImageError> {
        let (r, count) = self.file_range(ino)?;
        (0..count).map(|i| self.slot_at(r.data_start, i)).collect()
    }

    /// All chunks of file `ino` in order (`None` = hole).
    pub fn file_chunks(&self, ino: Ino) -> Result<Vec<Option<ChunkRef>>, ImageError> {
        self.file_chunk_slots(ino)?
            .into_iter()
            .map(|s| s.map(|i| self.unique_chunk(i)).transpose())
            .collect()
    }

    /// Store URLs recorded at pack time (passwords removed).
    pub fn stores(&self) -> Vec<String> {
        self.stores.clone()
    }

    /// Free-form labels recorded at pack time.
    pub fn labels(&self) -> Vec<(String, String)> {
        self.labels.clone()
    }

    /// Walks the whole tree from the root and checks every record: ranges, kinds, chunk sizes, that each
    /// directory is linked exactly once (no cycles) and that every inode is reachable. O(image size).
    pub fn check_structure(&self) -> Result<(), ImageError> {
        let n = usize::try_from(self.inode_count).map_err(|_| corrupt("inode count too large"))?;
        let mut links = vec![0u32; n];
        let unique = self.unique_chunk_count();
        for ino in 1..=self.inode_count {
            let r = self.raw_inode(ino)?;
            match r.kind {
                FileKind::Directory => {
                    let mut prev: Option<&[u8]> = None;
                    for i in 0..u64::from(r.data_count) {
                        let idx = r
                            .data_start
                            .checked_add(i)
                            .ok_or_else(|| corrupt("dirent overflow"))?;
                        let (name, child, kind) = self.dirent(idx)?;
                        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/')
                        {
                            return Err(corrupt(format!(
                                "directory {ino} has an invalid entry name"
                            )));
                        }
                        if prev.is_some_and(|p| p >= name) {
                            return Err(corrupt(format!(
                                "directory {ino} entries are not sorted/unique"
                            )));
                        }
                        prev = Some(name);
                        if self.raw_inode(child)?.kind != kind {
                            return Err(corrupt(format!("dirent kind of inode {child} disagrees")));
                        }
                        if child == ROOT_INO {
                            return Err(corrupt("the root is linked from a directory"));
                        }
                        let l = &mut links[(child - 1) as usize];
                        *l += 1;
                        if kind == FileKind::Directory && *l > 1 {
                            return Err(corrupt(format!(
                                "directory {child} is linked more than once"
                            )));
                        }
                    }
                }
                FileKind::Regular => {
                    let slots = self.file_chunk_slots(ino)?;
                    let cs = u64::from(self.chunk_size);
                    for (i, s) in slots.iter().enumerate() {
                        if let Some(u) = s {
                            if u64::from(*u) >= unique {
                                return Err(corrupt(format!("inode {ino} references chunk {u}")));
                            }
                            let want = (r.size - i as u64 * cs).min(cs);
                            let c = self.unique_chunk(*u)?;
                            if u64::from(c.plain_len) != want {
                                return Err(corrupt(format!(
                                    "inode {ino} chunk {i}: plaintext {} bytes, expected {want}",
                                    c.plain_len
                                )));
                            }
                        }
                    }
                }
                FileKind::Symlink => {
                    self.readlink(ino)?;
                }
                _ => {}
            }
            self.xattrs(ino)?;
        }
        // Reachability: every inode but the root must be linked from a directory reachable from the root.
        let mut seen = vec![false; n];
        seen[0] = true;
        let mut stack = vec![ROOT_INO];
        while let Some(d) = stack.pop() {
            for e in self.readdir(d, 0)? {
                let i = (e.ino - 1) as usize;
                if e.kind == FileKind::Directory {
                    if seen[i] {
                        return Err(corrupt(format!("directory {} reached twice", e.ino)));
                    }
                    stack.push(e.ino);
                }
                seen[i] = true;
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(corrupt(format!(
                "inode {} is not reachable from the root",
                i + 1
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{ManifestBuilder, NewInode};
    use crate::{encode_chunk, keys::generate_signing_key};

    fn attrs(kind: FileKind, perm: u16, size: u64) -> NewInode {
        NewInode {
            kind,
            perm,
            uid: 1000,
            gid: 100,
            size,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 123_456_789,
            rdev: 0,
        }
    }

    /// root/{a.txt (2 chunks, 2nd a hole), sub/{\xff\xfe raw name, link -> a.txt, hard (= a.txt)}, dev}
    fn sample() -> (ManifestBuilder, ChunkRef) {
        let cs = 64 * 1024;
        let mut b = ManifestBuilder::new(cs, attrs(FileKind::Directory, 0o755, 0)).unwrap();
        let file = b.add_inode(attrs(FileKind::Regular, 0o640, u64::from(cs) + 10));
        let sub = b.add_inode(attrs(FileKind::Directory, 0o700, 0));
        let raw = b.add_inode(attrs(FileKind::Regular, 0o600, 0));
        let link = b.add_inode(attrs(FileKind::Symlink, 0o777, 0));
        let mut dev = attrs(FileKind::CharDevice, 0o666, 0);
        dev.rdev = 0x0103;
        let dev = b.add_inode(dev);
        b.add_entry(ROOT_INO, b"a.txt", file).unwrap();
        b.add_entry(ROOT_INO, b"sub", sub).unwrap();
        b.add_entry(ROOT_INO, b"dev", dev).unwrap();
        b.add_entry(sub, b"\xff\xfe", raw).unwrap();
        b.add_entry(sub, b"link", link).unwrap();
        b.add_entry(sub, b"hard", file).unwrap();
        b.set_symlink_target(link, b"../a.txt").unwrap();
        b.set_xattrs(file, vec![(b"user.k".to_vec(), b"\x00v\xff".to_vec())])
            .unwrap();
        let enc = encode_chunk(&vec![7u8; cs as usize], 1).unwrap();
        let idx = b.add_chunk(enc.chunk_ref);
        assert_eq!(b.add_chunk(enc.chunk_ref), idx);
        b.set_file_chunks(file, &[Some(idx), None]).unwrap();
        b.add_store("zdb://127.0.0.1:9900/ns");
        b.add_label("chain", "polkadot");
        b.set_source_stamp(
            file,
            SourceStamp {
                dev: 2049,
                ino: 77,
                ctime_sec: 1_700_000_001,
                ctime_nsec: 5,
            },
        )
        .unwrap();
        (b, enc.chunk_ref)
    }

    #[test]
    fn seek_data_and_seek_hole_follow_the_chunk_holes() {
        let cs = 64 * 1024u32;
        let c = u64::from(cs);
        let mut b = ManifestBuilder::new(cs, attrs(FileKind::Directory, 0o755, 0)).unwrap();
        // [hole, data, hole, data (100 bytes)], and a file that is all hole.
        let f = b.add_inode(attrs(FileKind::Regular, 0o644, 3 * c + 100));
        let empty = b.add_inode(attrs(FileKind::Regular, 0o644, 2 * c));
        b.add_entry(ROOT_INO, b"f", f).unwrap();
        b.add_entry(ROOT_INO, b"sparse", empty).unwrap();
        let enc = encode_chunk(&vec![1u8; cs as usize], 1).unwrap();
        let i = b.add_chunk(enc.chunk_ref);
        b.set_file_chunks(f, &[None, Some(i), None, Some(i)])
            .unwrap();
        b.set_file_chunks(empty, &[None, None]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.img");
        b.write(&path, None).unwrap();
        let m = ImageManifest::open(&path).unwrap();
        assert_eq!(m.seek_data(f, 0).unwrap(), Some(c));
        assert_eq!(m.seek_data(f, c + 5).unwrap(), Some(c + 5));
        assert_eq!(m.seek_data(f, 2 * c).unwrap(), Some(3 * c));
        assert_eq!(m.seek_data(f, 3 * c + 100).unwrap(), None);
        assert_eq!(m.seek_hole(f, 0).unwrap(), Some(0));
        assert_eq!(m.seek_hole(f, c).unwrap(), Some(2 * c));
        assert_eq!(m.seek_hole(f, 3 * c).unwrap(), Some(3 * c + 100));
        assert_eq!(m.seek_hole(f, 4 * c).unwrap(), None);
        assert_eq!(m.seek_data(empty, 0).unwrap(), None);
        assert_eq!(m.seek_hole(empty, 10).unwrap(), Some(10));
        assert!(m.seek_data(ROOT_INO, 0).is_err());
    }

    #[test]
    fn manifest_round_trip() {
        let (b, cref) = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        b.write(&path, None).unwrap();
        let m = ImageManifest::open(&path).unwrap();
        m.check_structure().unwrap();
        m.check_body_hash().unwrap();
        assert!(!m.is_signed());
        assert_eq!(m.inode_count(), 6);
        assert_eq!(m.chunk_size(), 64 * 1024);
        let root = m.getattr(ROOT_INO).unwrap();
        assert_eq!(
            (root.kind, root.nlink, root.perm),
            (FileKind::Directory, 3, 0o755)
        );
        let names: Vec<Vec<u8>> = m
            .readdir(ROOT_INO, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            vec![b"a.txt".to_vec(), b"dev".to_vec(), b"sub".to_vec()]
        );
        assert_eq!(m.readdir(ROOT_INO, 2).unwrap().len(), 1);
        assert!(m.readdir(ROOT_INO, 3).unwrap().is_empty());
        let a = m.lookup(ROOT_INO, b"a.txt").unwrap().unwrap();
        assert_eq!(
            (a.kind, a.nlink, a.perm, a.uid, a.gid),
            (FileKind::Regular, 2, 0o640, 1000, 100)
        );
        assert_eq!((a.mtime_sec, a.mtime_nsec), (1_700_000_000, 123_456_789));
        assert!(m.lookup(ROOT_INO, b"nope").unwrap().is_none());
        let sub = m.lookup(ROOT_INO, b"sub").unwrap().unwrap();
        assert_eq!(m.lookup(sub.ino, b"hard").unwrap().unwrap().ino, a.ino);
        let raw = m.lookup(sub.ino, b"\xff\xfe").unwrap().unwrap();
        assert_eq!(raw.kind, FileKind::Regular);
        let link = m.lookup(sub.ino, b"link").unwrap().unwrap();
        assert_eq!(m.readlink(link.ino).unwrap(), b"../a.txt");
        assert_eq!(link.size, 8);
        let dev = m.lookup(ROOT_INO, b"dev").unwrap().unwrap();
        assert_eq!((dev.kind, dev.rdev), (FileKind::CharDevice, 0x0103));
        assert_eq!(
            m.xattrs(a.ino).unwrap(),
            vec![(b"user.k".to_vec(), b"\x00v\xff".to_vec())]
        );
        assert_eq!(m.chunk(a.ino, 0).unwrap(), Some(cref));
        assert_eq!(m.chunk(a.ino, 1).unwrap(), None);
        assert!(m.chunk(a.ino, 2).is_err());
        assert_eq!(m.file_chunks(a.ino).unwrap(), vec![Some(cref), None]);
        assert_eq!(
            m.source_stamp(a.ino).unwrap().map(|s| (s.dev, s.ino)),
            Some((2049, 77))
        );
        assert_eq!(m.source_stamp(ROOT_INO).unwrap(), None);
        assert_eq!(m.stores(), vec!["zdb://127.0.0.1:9900/ns".to_string()]);
        assert_eq!(
            m.labels(),
            vec![("chain".to_string(), "polkadot".to_string())]
        );
        assert!(matches!(m.getattr(0), Err(ImageError::NotFound(0))));
        assert!(matches!(m.getattr(7), Err(ImageError::NotFound(7))));
        assert!(matches!(
            m.readdir(a.ino, 0),
            Err(ImageError::WrongKind { .. })
        ));
        assert!(matches!(
            m.readlink(a.ino),
            Err(ImageError::WrongKind { .. })
        ));
    }

    #[test]
    fn signature_checks() {
        let (b, _) = sample();
        let key = generate_signing_key();
        let other = generate_signing_key();
        let bytes = b.to_bytes(Some(&key)).unwrap();
        let m = ImageManifest::from_bytes(bytes.clone()).unwrap();
        assert!(m.is_signed());
        assert_eq!(m.signer(), Some(key.verifying_key()));
        m.verify_signature(&key.verifying_key()).unwrap();
        assert!(matches!(
            m.verify_signature(&other.verifying_key()),
            Err(ImageError::UntrustedKey { .. })
        ));
        // A modified body no longer verifies.
        let mut tampered = bytes.clone();
        let at = HEADER_LEN + 4; // inside the root's uid
        tampered[at] ^= 1;
        let m = ImageManifest::from_bytes(tampered).unwrap();
        assert!(m.verify_signature(&key.verifying_key()).is_err());
        assert!(m.check_body_hash().is_err());
        // A forged signature does not verify.
        let mut forged = bytes;
        let n = forged.len();
        forged[n - 1] ^= 1;
        let m = ImageManifest::from_bytes(forged).unwrap();
        assert!(matches!(
            m.verify_signature(&key.verifying_key()),
            Err(ImageError::BadSignature(_))
        ));
        let unsigned = ImageManifest::from_bytes(sample().0.to_bytes(None).unwrap()).unwrap();
        assert!(matches!(
            unsigned.verify_signature(&key.verifying_key()),
            Err(ImageError::Unsigned)
        ));
    }

    #[test]
    fn corrupt_manifests_give_errors_not_panics() {
        let (b, _) = sample();
        let good = b.to_bytes(None).unwrap();
        assert!(ImageManifest::from_bytes(good[..100].to_vec()).is_err());
        assert!(ImageManifest::from_bytes(good[..good.len() - 1].to_vec()).is_err());
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(ImageManifest::from_bytes(bad_magic).is_err());
        let mut bad_version = good.clone();
        bad_version[8] = 9;
        assert!(ImageManifest::from_bytes(bad_version).is_err());
        // Every single-byte corruption of the body: open and full traversal must not panic.
        let body_len = good.len() - TRAILER_LEN;
        for pos in 0..body_len {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[pos] ^= flip;
                if let Ok(m) = ImageManifest::from_bytes(bytes) {
                    let _ = m.check_structure();
                    for ino in 0..=m.inode_count() + 1 {
                        let _ = m.getattr(ino);
                        let _ = m.readdir(ino, 0);
                        let _ = m.lookup(ino, b"a.txt");
                        let _ = m.readlink(ino);
                        let _ = m.xattrs(ino);
                        let _ = m.file_chunks(ino);
                    }
                }
            }
        }
        // Huge garbage offsets in the section table.
        let mut bytes = good.clone();
        let table = std::mem::offset_of!(Header, sections);
        bytes[table..table + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ImageManifest::from_bytes(bytes).is_err());
    }

    #[test]
    fn builder_rejects_bad_input() {
        let (mut b, _) = sample();
        assert!(b.add_entry(ROOT_INO, b"x/y", 2).is_err());
        assert!(b.add_entry(ROOT_INO, b"..", 2).is_err());
        assert!(b.add_entry(ROOT_INO, b"z", 99).is_err());
        assert!(b.set_file_chunks(2, &[None]).is_err());
        b.add_entry(ROOT_INO, b"a.txt", 3).unwrap();
        assert!(b.to_bytes(None).is_err(), "duplicate names must be refused");
        assert!(ManifestBuilder::new(1000, attrs(FileKind::Directory, 0o755, 0)).is_err());
    }
}
