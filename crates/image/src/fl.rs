//! ThreeFold flists as images (docs/flist.md): an flist is read into an in-memory manifest whose chunks
//! are the flist's rfs blocks ([`ChunkEncoding::RfsBlock`]), so every command that takes an image takes an
//! flist; and a manifest whose chunks are rfs blocks of 512 KiB is written out as an flist
//! ([`write_flist`]), after checking what an flist cannot hold ([`FlistLosses`]).

use std::collections::HashMap;
use std::path::Path;

use flist::{FileType, Flist, FlistWriter, NewFlInode, Route, BLOCK_SIZE};
use store::ChunkStore;

use crate::writer::{ManifestBuilder, NewInode};
use crate::{
    ChunkEncoding, ChunkId, ChunkRef, FileKind, ImageError, ImageManifest, Ino, ManifestSource,
    ROOT_INO,
};

/// Whether the file at `path` starts like an SQLite database (then it can only be an flist; whether it
/// really is one, [`manifest_from_flist`] says with a clear error).
pub fn looks_like_flist(path: &Path) -> Result<bool, ImageError> {
    Ok(flist::starts_like_sqlite(path)?)
}

fn kind_of(t: FileType) -> FileKind {
    match t {
        FileType::Directory => FileKind::Directory,
        FileType::Regular => FileKind::Regular,
        FileType::Symlink => FileKind::Symlink,
        FileType::CharDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
    }
}

fn type_of(k: FileKind) -> FileType {
    match k {
        FileKind::Directory => FileType::Directory,
        FileKind::Regular => FileType::Regular,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::Fifo,
        FileKind::Socket => FileType::Socket,
    }
}

fn attrs_of(n: &flist::FlInode) -> Result<NewInode, ImageError> {
    let kind = n
        .file_type()
        .map(kind_of)
        .ok_or_else(|| ImageError::Invalid(format!("inode {}: unknown file type", n.ino)))?;
    Ok(NewInode {
        kind,
        perm: n.perm() as u16,
        uid: n.uid,
        gid: n.gid,
        size: match kind {
            FileKind::Regular | FileKind::Directory => n.size,
            _ => 0,
        },
        mtime_sec: n.mtime,
        mtime_nsec: 0,
        rdev: n.rdev,
    })
}

/// Reads the flist at `path` into a manifest: the same tree (inode numbers renumbered, names sorted),
/// chunk size 512 KiB, each block an rfs-block chunk (stored length unknown: 0), a full-size all-zero
/// block a hole (its key alone proves the content, so it is never fetched), the route table as the
/// manifest's store (one URL, or a `route:` URL; see [`flist::store_url_of_routes`]) and the tags as
/// labels. A route that cannot be translated is recorded as rfs wrote it, so opening the store fails
/// naming it (and `--store` still works).
pub fn manifest_from_flist(path: &Path) -> Result<ImageManifest, ImageError> {
    let b = builder_from_flist(path)?;
    Ok(ImageManifest::from_bytes(b.to_bytes(None)?)?.with_source(ManifestSource::Flist))
}

/// Writes the flist at `path` as a thinnode image at `out` that keeps the flist's blocks by reference
/// (rfs-block chunks, read from the flist's routes, which become the image's store): no block is fetched
/// or re-encoded. Signed with `signer` when given.
pub fn flist_as_image(
    path: &Path,
    out: &Path,
    signer: Option<&ed25519_dalek::SigningKey>,
) -> Result<(), ImageError> {
    let b = builder_from_flist(path)?;
    crate::writer::write_atomically(out, &b.to_bytes(signer)?)
}

/// The manifest of [`manifest_from_flist`], not yet serialised.
fn builder_from_flist(path: &Path) -> Result<ManifestBuilder, ImageError> {
    let fl = Flist::read(path)?;
    let mut b = ManifestBuilder::new(BLOCK_SIZE as u32, attrs_of(fl.root())?)?;
    let mut stack: Vec<(u64, Ino)> = vec![(flist::ROOT_INO, ROOT_INO)];
    while let Some((fl_dir, dir)) = stack.pop() {
        for n in fl.children(fl_dir) {
            let attrs = attrs_of(n)?;
            let kind = attrs.kind;
            let size = attrs.size;
            let ino = b.add_inode(attrs);
            b.add_entry(dir, &n.name, ino)?;
            match kind {
                FileKind::Directory => stack.push((n.ino, ino)),
                FileKind::Symlink => {
                    b.set_symlink_target(ino, n.target.as_deref().unwrap_or_default())?
                }
                FileKind::Regular => {
                    let mut slots = Vec::with_capacity(n.blocks.len());
                    for (i, block) in n.blocks.iter().enumerate() {
                        let plain_len =
                            (size - i as u64 * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64);
                        if flist::is_zero_block(block) && plain_len == BLOCK_SIZE as u64 {
                            slots.push(None);
                            continue;
                        }
                        slots.push(Some(b.add_chunk(ChunkRef {
                            id: ChunkId(block.id),
                            key: block.key,
                            plain_len: plain_len as u32,
                            stored_len: 0,
                            compressed: false,
                            encoding: ChunkEncoding::RfsBlock,
                        })));
                    }
                    b.set_file_chunks(ino, &slots)?;
                }
                _ => {}
            }
        }
    }
    if !fl.routes.is_empty() {
        match flist::store_url_of_routes(&fl.routes) {
            Ok(url) => b.add_store(&url),
            Err(_) => {
                for r in &fl.routes {
                    b.add_store(&r.url);
                }
            }
        }
    }
    for (k, v) in &fl.tags {
        b.add_label(k, v);
    }
    Ok(b)
}

/// What an flist cannot hold of an image (docs/flist.md, "What an flist cannot hold").
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FlistLosses {
    /// Paths of entries with extended attributes (an flist has no place for them).
    pub xattrs: Vec<String>,
    /// Extra names of hard-linked files (each becomes a file of its own, sharing blocks).
    pub hardlinks: Vec<String>,
    /// Paths whose name is not UTF-8 (rfs reads names as UTF-8 text).
    pub non_utf8_names: Vec<String>,
    /// Entries whose mtime has a sub-second part (an flist keeps whole seconds).
    pub subsecond_mtimes: u64,
    /// Whether the image is signed (an flist carries no signature).
    pub signed: bool,
}

impl FlistLosses {
    /// Examines every entry of `m`.
    pub fn of(m: &ImageManifest) -> Result<FlistLosses, ImageError> {
        let mut losses = FlistLosses {
            signed: m.is_signed(),
            ..FlistLosses::default()
        };
        let mut seen: HashMap<Ino, ()> = HashMap::new();
        let root = m.getattr(ROOT_INO)?;
        losses.subsecond_mtimes += u64::from(root.mtime_nsec != 0);
        if !m.xattrs(ROOT_INO)?.is_empty() {
            losses.xattrs.push("/".into());
        }
        let mut stack: Vec<(String, Ino)> = vec![(String::new(), ROOT_INO)];
        while let Some((dir_path, dir)) = stack.pop() {
            for e in m.readdir(dir, 0)? {
                let path = format!("{dir_path}/{}", String::from_utf8_lossy(&e.name));
                if std::str::from_utf8(&e.name).is_err() {
                    losses.non_utf8_names.push(path.clone());
                }
                if e.kind != FileKind::Directory && seen.insert(e.ino, ()).is_some() {
                    losses.hardlinks.push(path);
                    continue;
                }
                let a = m.getattr(e.ino)?;
                losses.subsecond_mtimes += u64::from(a.mtime_nsec != 0);
                if !m.xattrs(e.ino)?.is_empty() {
                    losses.xattrs.push(path.clone());
                }
                if e.kind == FileKind::Directory {
                    stack.push((path, e.ino));
                }
            }
        }
        Ok(losses)
    }

    /// Applies the policy: names that are not UTF-8 are refused (rfs would rename them), extended
    /// attributes are refused unless `drop_xattrs`; everything else is allowed with a warning. Returns
    /// the warnings.
    pub fn judge(&self, drop_xattrs: bool) -> Result<Vec<String>, ImageError> {
        let some = |v: &[String]| {
            let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(", … ({} in all)", v.len()));
            }
            s
        };
        if !self.non_utf8_names.is_empty() {
            return Err(ImageError::Invalid(format!(
                "an flist holds names as UTF-8 text and these are not: {}; rename them first",
                some(&self.non_utf8_names)
            )));
        }
        let mut warnings = Vec::new();
        if !self.xattrs.is_empty() {
            if !drop_xattrs {
                return Err(ImageError::Invalid(format!(
                    "an flist cannot hold extended attributes, which {} entr{} have ({}); pass \
                     --drop-xattrs to write the flist without them",
                    self.xattrs.len(),
                    if self.xattrs.len() == 1 { "y" } else { "ies" },
                    some(&self.xattrs)
                )));
            }
            warnings.push(format!(
                "dropped the extended attributes of {} entries ({})",
                self.xattrs.len(),
                some(&self.xattrs)
            ));
        }
        if !self.hardlinks.is_empty() {
            warnings.push(format!(
                "{} hard link(s) written as separate files with the same blocks ({})",
                self.hardlinks.len(),
                some(&self.hardlinks)
            ));
        }
        if self.subsecond_mtimes > 0 {
            warnings.push(format!(
                "the mtime of {} entries rounded down to whole seconds",
                self.subsecond_mtimes
            ));
        }
        if self.signed {
            warnings.push("the image's signature is not carried over: flists are unsigned".into());
        }
        Ok(warnings)
    }
}

/// The flist row of an inode with attributes `a` (an flist has no ctime: the mtime stands in for it;
/// directories packed by thinnode have size 0, written as 4096 as rfs records them).
fn fl_inode<'a>(
    a: &crate::Inode,
    parent: u64,
    name: &'a str,
    target: Option<&'a [u8]>,
) -> NewFlInode<'a> {
    let size = match a.kind {
        FileKind::Directory if a.size == 0 => 4096,
        FileKind::Symlink => target.map(|t| t.len() as u64).unwrap_or(0),
        FileKind::Regular | FileKind::Directory => a.size,
        _ => 0,
    };
    NewFlInode {
        parent,
        name,
        size,
        uid: a.uid,
        gid: a.gid,
        mode: type_of(a.kind).mode_bits() | u32::from(a.perm & 0o7777),
        rdev: a.rdev,
        ctime: a.mtime_sec,
        mtime: a.mtime_sec,
        target,
    }
}

/// How [`write_flist`] writes.
#[derive(Debug, Clone, Default)]
pub struct FlistWriteOptions {
    /// The route rows (see [`flist::routes_of_store_url`]).
    pub routes: Vec<Route>,
    /// Write the flist even though entries have extended attributes (they are dropped).
    pub drop_xattrs: bool,
}

/// What [`write_flist`] wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FlistWriteSummary {
    /// Inode rows (hard links count once per name).
    pub inodes: u64,
    /// Block rows.
    pub blocks: u64,
    /// Distinct all-zero blocks encoded for holes (rfs has no holes) and uploaded when missing.
    pub zero_blocks: u64,
    /// Size of the `.fl` file.
    pub flist_bytes: u64,
    /// What the flist could not hold (see [`FlistLosses::judge`]).
    pub warnings: Vec<String>,
}

/// Writes `m` as an flist at `out`. Every chunk must be an rfs block and the chunk size 512 KiB (pack
/// with rfs blocks or convert first). Holes become all-zero blocks, encoded and stored in `store` when it
/// lacks them, before the flist is written. Refuses what an flist cannot hold ([`FlistLosses::judge`]).
pub fn write_flist(
    m: &ImageManifest,
    store: &dyn ChunkStore,
    out: &Path,
    opts: &FlistWriteOptions,
) -> Result<FlistWriteSummary, ImageError> {
    if m.chunk_size() as usize != BLOCK_SIZE {
        return Err(ImageError::Invalid(format!(
            "an flist needs 512 KiB rfs blocks; this image has {} KiB chunks (convert it)",
            m.chunk_size() / 1024
        )));
    }
    m.check_structure()?;
    let warnings = FlistLosses::of(m)?.judge(opts.drop_xattrs)?;
    let mut zero_blocks = ZeroBlocks::default();
    let mut summary = FlistWriteSummary {
        warnings,
        ..FlistWriteSummary::default()
    };
    let mut w = FlistWriter::create(out)?;
    let root = m.getattr(ROOT_INO)?;
    let fl_root = w.add_inode(&fl_inode(&root, 0, "/", None))?;
    summary.inodes += 1;
    let mut stack: Vec<(Ino, u64)> = vec![(ROOT_INO, fl_root)];
    while let Some((dir, fl_dir)) = stack.pop() {
        for e in m.readdir(dir, 0)? {
            let name = std::str::from_utf8(&e.name).map_err(|_| {
                ImageError::Invalid(format!(
                    "name {:?} is not UTF-8",
                    String::from_utf8_lossy(&e.name)
                ))
            })?;
            let a = m.getattr(e.ino)?;
            let target = if a.kind == FileKind::Symlink {
                Some(m.readlink(e.ino)?)
            } else {
                None
            };
            let fl_ino = w.add_inode(&fl_inode(&a, fl_dir, name, target.as_deref()))?;
            summary.inodes += 1;
            match a.kind {
                FileKind::Directory => stack.push((e.ino, fl_ino)),
                FileKind::Regular => {
                    for block in file_blocks(m, e.ino, a.size, &mut zero_blocks)? {
                        w.add_block(fl_ino, &block)?;
                        summary.blocks += 1;
                    }
                }
                _ => {}
            }
        }
    }
    for r in &opts.routes {
        w.add_route(r)?;
    }
    let labels = m.labels();
    let mut tags: HashMap<&str, &str> = HashMap::new();
    for (k, v) in &labels {
        if tags.insert(k, v).is_some() {
            summary.warnings.push(format!(
                "label {k:?} appears more than once: the last value is kept"
            ));
        }
        w.set_tag(k, v)?;
    }
    // The blocks holes refer to must be in the store before the flist names them.
    summary.zero_blocks = zero_blocks.upload_missing(store)?;
    summary.flist_bytes = w.finish()?;
    Ok(summary)
}

/// The rfs blocks of a regular file of `m`, in order; holes become all-zero blocks from `zeros`.
fn file_blocks(
    m: &ImageManifest,
    ino: Ino,
    size: u64,
    zeros: &mut ZeroBlocks,
) -> Result<Vec<flist::Block>, ImageError> {
    let mut blocks = Vec::new();
    for (i, c) in m.file_chunks(ino)?.into_iter().enumerate() {
        blocks.push(match c {
            Some(r) if r.encoding == ChunkEncoding::RfsBlock => flist::Block {
                id: r.id.0,
                key: r.key,
            },
            Some(_) => {
                return Err(ImageError::Invalid(
                    "the image's chunks are not rfs blocks (convert it)".into(),
                ))
            }
            None => {
                let len = (size - i as u64 * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64);
                zeros.block_of_len(len)?
            }
        });
    }
    Ok(blocks)
}

/// The all-zero rfs blocks that stand for holes (an flist has no holes), one per length, encoded once.
#[derive(Default)]
struct ZeroBlocks {
    by_len: HashMap<u64, flist::Block>,
    encoded: Vec<flist::EncodedBlock>,
}

impl ZeroBlocks {
    /// The block of `len` zero bytes, encoding it the first time.
    fn block_of_len(&mut self, len: u64) -> Result<flist::Block, ImageError> {
        if let Some(b) = self.by_len.get(&len) {
            return Ok(*b);
        }
        let enc = flist::encode_block(&vec![0u8; len as usize])
            .map_err(|e| ImageError::Invalid(e.to_string()))?;
        let b = enc.block;
        self.by_len.insert(len, b);
        self.encoded.push(enc);
        Ok(b)
    }

    /// Stores the blocks `store` lacks; returns how many zero blocks there are.
    fn upload_missing(&self, store: &dyn ChunkStore) -> Result<u64, ImageError> {
        if !self.encoded.is_empty() {
            let ids: Vec<ChunkId> = self.encoded.iter().map(|e| ChunkId(e.block.id)).collect();
            let held = store.has_many(&ids)?;
            let missing: Vec<(ChunkId, &[u8])> = self
                .encoded
                .iter()
                .zip(held)
                .filter(|(_, h)| !h)
                .map(|(e, _)| (ChunkId(e.block.id), e.stored.as_slice()))
                .collect();
            store.put_many(&missing)?;
        }
        Ok(self.encoded.len() as u64)
    }
}

/// Options of [`pack_flist`] and [`convert_to_flist`].
#[derive(Debug, Clone, Default)]
pub struct FlistOptions {
    /// The store the blocks go to, as given (a single store or `route:`); its rfs form becomes the route
    /// table.
    pub store_url: String,
    /// Keep store passwords in the route table (rfs strips them by default, and so does this).
    pub keep_passwords: bool,
    /// Write the flist even though entries have extended attributes (they are dropped).
    pub drop_xattrs: bool,
}

impl FlistOptions {
    fn write_options(&self) -> Result<FlistWriteOptions, ImageError> {
        Ok(FlistWriteOptions {
            routes: flist::routes_of_store_url(&self.store_url, self.keep_passwords)?,
            drop_xattrs: self.drop_xattrs,
        })
    }
}

/// The tree a builder holds so far, as a manifest (regular files' chunk lists not set yet): enough to
/// walk names, attributes and xattrs.
fn walked_tree(b: &ManifestBuilder) -> Result<ImageManifest, ImageError> {
    ImageManifest::from_bytes(b.to_bytes(None)?)
}

/// Packs directory `src` into the flist `out` as `rfs pack` would: 512 KiB blocks encoded as rfs encodes
/// them, uploaded to `store` only when it lacks them, the route table from the store URL (passwords
/// stripped unless asked), labels as tags. What an flist cannot hold is checked right after the walk,
/// before any block is read (see [`FlistLosses::judge`]).
pub fn pack_flist(
    src: &Path,
    store: &dyn ChunkStore,
    out: &Path,
    pack: &crate::PackOptions,
    opts: &FlistOptions,
    progress: Option<&dyn crate::PackProgress>,
) -> Result<(crate::PackSummary, FlistWriteSummary), ImageError> {
    let started = std::time::Instant::now();
    let write = opts.write_options()?;
    let pack = crate::PackOptions {
        chunk_size: BLOCK_SIZE as u32,
        encoding: ChunkEncoding::RfsBlock,
        signer: None,
        ..pack.clone()
    };
    let check = |b: &ManifestBuilder| -> Result<(), ImageError> {
        FlistLosses::of(&walked_tree(b)?)?.judge(opts.drop_xattrs)?;
        Ok(())
    };
    let (builder, mut summary) = crate::pack::pack_into(src, store, &pack, progress, &check)?;
    let m = ImageManifest::from_bytes(builder.to_bytes(None)?)?;
    let written = write_flist(&m, store, out, &write)?;
    summary.manifest_bytes = written.flist_bytes;
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok((summary, written))
}

/// Converts `src` (an image, or an flist opened as one) into the flist `out`: re-encoded into 512 KiB rfs
/// blocks stored in `dst_store`, labels as tags. What an flist cannot hold is checked first.
pub fn convert_to_flist(
    src: &ImageManifest,
    src_store: &dyn ChunkStore,
    dst_store: &dyn ChunkStore,
    out: &Path,
    opts: &FlistOptions,
    threads: usize,
) -> Result<(crate::ConvertSummary, FlistWriteSummary), ImageError> {
    let started = std::time::Instant::now();
    let write = opts.write_options()?;
    src.check_structure()?;
    let warnings = FlistLosses::of(src)?.judge(opts.drop_xattrs)?;
    let convert = crate::ConvertOptions {
        chunk_size: BLOCK_SIZE as u32,
        encoding: ChunkEncoding::RfsBlock,
        threads,
        ..crate::ConvertOptions::default()
    };
    let (builder, mut summary) = crate::convert::convert_into(src, src_store, dst_store, &convert)?;
    let m = ImageManifest::from_bytes(builder.to_bytes(None)?)?;
    let mut written = write_flist(&m, dst_store, out, &write)?;
    // The source's own losses first (the signature is not in the converted manifest).
    for w in warnings.into_iter().rev() {
        if !written.warnings.contains(&w) {
            written.warnings.insert(0, w);
        }
    }
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok((summary, written))
}
