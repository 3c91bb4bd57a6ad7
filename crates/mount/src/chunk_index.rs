//! The host-wide chunk index: which cache file holds which chunk, so a chunk already on the host (in
//! any cache file, of any image) is copied locally instead of fetched.
//!
//! 256 bucket files `index/<first two hex digits of the chunk id>` of fixed-size records (chunk id,
//! file key, chunk index, checksum), appended by every process with `O_APPEND` and read only on a
//! miss. No per-chunk file is created and nothing is held in memory. Entries can go stale (the file was
//! evicted, its bytes were damaged): a lookup's answer is only a hint, every copy is verified against
//! the chunk key before use, and eviction compacts the buckets (drops entries of evicted files,
//! duplicates and torn records).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use store::ChunkId;

use crate::cache_file::FileKey;

/// Bytes of one record.
const RECORD_LEN: usize = 80;
/// Magic of a record.
const RECORD_MAGIC: &[u8; 4] = b"TNIX";
/// Number of bucket files (the first byte of a chunk id): few enough that a small cache does not pay a
/// file-system block per record, many enough that a lookup reads ~1/256 of the index.
const BUCKETS: usize = 256;

/// One index entry: chunk `id` is chunk `index` of the cache file `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// The chunk.
    pub id: ChunkId,
    /// The cache file holding it.
    pub key: FileKey,
    /// Its chunk index in that file.
    pub index: u64,
}

impl IndexEntry {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0..32].copy_from_slice(&self.id.0);
        out[32..64].copy_from_slice(&self.key.0);
        out[64..72].copy_from_slice(&self.index.to_le_bytes());
        out[72..76].copy_from_slice(RECORD_MAGIC);
        let crc = crc32c::crc32c(&out[..76]);
        out[76..80].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<IndexEntry> {
        let b: &[u8; RECORD_LEN] = b.try_into().ok()?;
        if &b[72..76] != RECORD_MAGIC
            || crc32c::crc32c(&b[..76]) != u32::from_le_bytes(b[76..80].try_into().ok()?)
        {
            return None;
        }
        Some(IndexEntry {
            id: ChunkId(b[0..32].try_into().ok()?),
            key: FileKey(b[32..64].try_into().ok()?),
            index: u64::from_le_bytes(b[64..72].try_into().ok()?),
        })
    }
}

/// The chunk index under a cache directory.
#[derive(Debug)]
pub struct ChunkIndex {
    dir: PathBuf,
}

impl ChunkIndex {
    /// The index in `dir` (created on first append).
    pub fn new(dir: &Path) -> ChunkIndex {
        ChunkIndex {
            dir: dir.to_path_buf(),
        }
    }

    fn bucket_of(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(format!("{:02x}", id.0[0]))
    }

    /// Records that chunk `entry.id` is chunk `entry.index` of cache file `entry.key`.
    pub fn append(&self, entry: &IndexEntry) -> io::Result<()> {
        let path = self.bucket_of(&entry.id);
        let open = || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
        };
        let mut f = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir)?;
                open()?
            }
            Err(e) => return Err(e),
        };
        // One write of a whole record: appends of other processes never interleave inside it.
        f.write_all(&entry.encode())
    }

    /// The files recorded as holding chunk `id`, newest first.
    pub fn lookup(&self, id: &ChunkId) -> io::Result<Vec<IndexEntry>> {
        let bytes = match fs::read(self.bucket_of(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found: Vec<IndexEntry> = bytes
            .chunks_exact(RECORD_LEN)
            .filter_map(IndexEntry::decode)
            .filter(|e| e.id == *id)
            .collect();
        found.reverse();
        let mut seen = HashSet::new();
        found.retain(|e| seen.insert((e.key, e.index)));
        Ok(found)
    }

    /// Rewrites every bucket keeping only valid, distinct entries whose file `live` says still exists.
    /// Run under the cache's eviction lock; an entry appended meanwhile to a bucket being rewritten may
    /// be lost (a lost hint, never a wrong byte).
    pub fn compact(&self, live: &mut dyn FnMut(&FileKey) -> bool) -> io::Result<()> {
        let mut alive: HashMap<FileKey, bool> = HashMap::new();
        for n in 0..BUCKETS {
            let path = self.dir.join(format!("{n:02x}"));
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(bytes.len());
            for e in bytes
                .chunks_exact(RECORD_LEN)
                .filter_map(IndexEntry::decode)
            {
                let keep = *alive.entry(e.key).or_insert_with(|| live(&e.key));
                if keep && seen.insert(e) {
                    out.extend_from_slice(&e.encode());
                }
            }
            if out.len() == bytes.len() {
                continue;
            }
            if out.is_empty() {
                let _ = fs::remove_file(&path);
                continue;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            fs::write(&tmp, &out)?;
            fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// Bytes the index occupies.
    pub fn bytes(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_lookup_compact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = ChunkIndex::new(&dir.path().join("index"));
        let id = ChunkId::of(b"a");
        let other = ChunkId::of(b"b");
        let (k1, k2) = (FileKey([1; 32]), FileKey([2; 32]));
        assert!(index.lookup(&id).expect("lookup").is_empty());
        for (key, i) in [(k1, 3), (k2, 0), (k1, 3)] {
            index
                .append(&IndexEntry { id, key, index: i })
                .expect("append");
        }
        index
            .append(&IndexEntry {
                id: other,
                key: k2,
                index: 9,
            })
            .expect("append");
        let found = index.lookup(&id).expect("lookup");
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].key, k1);
        // A torn record at the end is ignored.
        let bucket = index.bucket_of(&id);
        let mut f = OpenOptions::new().append(true).open(&bucket).expect("open");
        f.write_all(&[7u8; 30]).expect("tear");
        assert_eq!(index.lookup(&id).expect("lookup").len(), 2);
        index.compact(&mut |k| *k != k1).expect("compact");
        let found = index.lookup(&id).expect("lookup");
        assert_eq!(
            found,
            vec![IndexEntry {
                id,
                key: k2,
                index: 0
            }]
        );
        assert_eq!(fs::metadata(&bucket).expect("bucket").len() % 80, 0);
    }
}
