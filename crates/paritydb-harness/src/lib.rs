//! A Polkadot-like ParityDB workload for thinnode's tests and benchmarks.
//!
//! It builds, extends and verifies a database with the column layout and value shapes of a Substrate
//! node (state trie nodes in a ref-counted preimage column, headers, bodies, number→hash lookups,
//! justifications), using the real `parity-db` crate. Every block's content is derived from a seed, so a
//! database can be verified key by key without keeping a copy of it.

#![deny(missing_docs)]

use std::path::Path;

use parity_db::{ColumnOptions, CompressionType, Db, Options};
use serde::{Deserialize, Serialize};

/// Column ids, in the order Substrate's ParityDB backend declares them (a subset).
pub mod column {
    /// Small metadata values (best block, harness state).
    pub const META: u8 = 0;
    /// State trie nodes: key = hash of value, ref-counted.
    pub const STATE: u8 = 1;
    /// State metadata.
    pub const STATE_META: u8 = 2;
    /// Block number → block hash.
    pub const KEY_LOOKUP: u8 = 3;
    /// Block headers by hash.
    pub const HEADER: u8 = 4;
    /// Block bodies by hash.
    pub const BODY: u8 = 5;
    /// Finality justifications by hash.
    pub const JUSTIFICATIONS: u8 = 6;
    /// Indexed transactions: key = hash of value, ref-counted.
    pub const TRANSACTION: u8 = 7;
    /// Number of columns.
    pub const COUNT: u8 = 8;
}

/// State entries written per block.
pub const STATE_ENTRIES_PER_BLOCK: u64 = 400;

const META_KEY: &[u8] = b"thinnode-harness";

/// Errors from the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The database engine failed.
    #[error("parity-db: {0}")]
    Db(#[from] parity_db::Error),
    /// The directory holds no harness metadata (not built by this harness).
    #[error(
        "{0}: no harness metadata in the database (was it built with `paritydb-harness build`?)"
    )]
    NotAHarnessDb(String),
    /// The harness metadata could not be parsed.
    #[error("harness metadata is corrupt: {0}")]
    BadMeta(#[from] serde_json::Error),
    /// Keys were missing or had wrong values.
    #[error("{bad} of {checked} keys are missing or wrong; first: {first}")]
    Mismatch {
        /// Keys checked.
        checked: u64,
        /// Keys missing or wrong.
        bad: u64,
        /// Description of the first bad key.
        first: String,
    },
}

/// What the harness records inside the database (META column) about its own content.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct HarnessMeta {
    /// Seed every block's content derives from.
    pub seed: u64,
    /// Number of blocks written (0..blocks).
    pub blocks: u64,
}

/// Counts of what a build, extend or verify touched.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct WorkloadSummary {
    /// Blocks written or checked.
    pub blocks: u64,
    /// Keys written or checked.
    pub keys: u64,
    /// Value bytes written or checked.
    pub value_bytes: u64,
}

/// The column configuration of a Substrate node's ParityDB.
pub fn options(path: &Path) -> Options {
    let mut opts = Options::with_columns(path, column::COUNT);
    for (i, c) in opts.columns.iter_mut().enumerate() {
        let i = i as u8;
        *c = ColumnOptions::default();
        match i {
            column::STATE | column::TRANSACTION => {
                c.preimage = true;
                c.uniform = true;
                c.ref_counted = true;
                c.compression = CompressionType::Lz4;
            }
            column::HEADER | column::BODY | column::JUSTIFICATIONS => {
                c.uniform = true;
                c.compression = CompressionType::Lz4;
            }
            _ => {}
        }
    }
    opts
}

/// Deterministic bytes for (seed, block, tag, index).
fn stream(seed: u64, block: u64, tag: u8, index: u64, out: &mut [u8]) {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes())
        .update(&block.to_le_bytes())
        .update(&[tag])
        .update(&index.to_le_bytes());
    h.finalize_xof().fill(out);
}

/// A value of `len` bytes: incompressible for even `index`, compressible (counters) for odd.
fn value(seed: u64, block: u64, tag: u8, index: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    if index % 2 == 0 {
        stream(seed, block, tag, index, &mut v);
    } else {
        let mut head = [0u8; 8];
        stream(seed, block, tag, index, &mut head);
        let base = u64::from_le_bytes(head);
        for (j, chunk) in v.chunks_mut(8).enumerate() {
            let x = (base.wrapping_add(j as u64 / 4)).to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
    v
}

fn len_from(seed: u64, block: u64, tag: u8, index: u64, min: usize, spread: usize) -> usize {
    let mut b = [0u8; 8];
    stream(seed, block, tag ^ 0x80, index, &mut b);
    min + (u64::from_le_bytes(b) % spread as u64) as usize
}

/// The hash identifying block `number`.
pub fn block_hash(seed: u64, number: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    stream(seed, number, b'H', 0, &mut h);
    h
}

/// Every (column, key, value) that block `number` writes.
pub fn block_entries(seed: u64, number: u64) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    let hash = block_hash(seed, number);
    let mut out = Vec::with_capacity(STATE_ENTRIES_PER_BLOCK as usize + 5);
    out.push((
        column::KEY_LOOKUP,
        number.to_be_bytes().to_vec(),
        hash.to_vec(),
    ));
    let header_len = len_from(seed, number, b'h', 0, 200, 120);
    out.push((
        column::HEADER,
        hash.to_vec(),
        value(seed, number, b'h', 0, header_len),
    ));
    let body_len = len_from(seed, number, b'b', 0, 2048, 14336);
    out.push((
        column::BODY,
        hash.to_vec(),
        value(seed, number, b'b', 1, body_len),
    ));
    if number % 10 == 0 {
        out.push((
            column::JUSTIFICATIONS,
            hash.to_vec(),
            value(seed, number, b'j', 0, 150),
        ));
    }
    for i in 0..STATE_ENTRIES_PER_BLOCK {
        let len = len_from(seed, number, b's', i, 32, 992);
        let mut v = value(seed, number, b's', i, len);
        // Make every state value unique so its preimage key is unique.
        v[..8].copy_from_slice(&number.to_le_bytes());
        if v.len() >= 16 {
            v[8..16].copy_from_slice(&i.to_le_bytes());
        }
        let key = blake3::hash(&v).as_bytes().to_vec();
        out.push((column::STATE, key, v));
    }
    out
}

/// Opens (or creates) the database at `path` with the Substrate column layout.
pub fn open(path: &Path) -> Result<Db, HarnessError> {
    Ok(Db::open_or_create(&options(path))?)
}

/// Reads the harness metadata from an open database.
pub fn read_meta(db: &Db, path: &Path) -> Result<HarnessMeta, HarnessError> {
    match db.get(column::META, META_KEY)? {
        Some(v) => Ok(serde_json::from_slice(&v)?),
        None => Err(HarnessError::NotAHarnessDb(path.display().to_string())),
    }
}

/// Appends blocks `meta.blocks .. meta.blocks + count`, one commit per block (as a node does), and
/// records the new block count. Returns what was written.
pub fn append_blocks(
    db: &Db,
    meta: &mut HarnessMeta,
    count: u64,
) -> Result<WorkloadSummary, HarnessError> {
    let mut sum = WorkloadSummary::default();
    for number in meta.blocks..meta.blocks + count {
        let entries = block_entries(meta.seed, number);
        sum.blocks += 1;
        sum.keys += entries.len() as u64;
        sum.value_bytes += entries.iter().map(|e| e.2.len() as u64).sum::<u64>();
        let next = HarnessMeta {
            seed: meta.seed,
            blocks: number + 1,
        };
        let meta_value = serde_json::to_vec(&next)?;
        let tx = entries
            .into_iter()
            .map(|(c, k, v)| (c, k, Some(v)))
            .chain(std::iter::once((
                column::META,
                META_KEY.to_vec(),
                Some(meta_value),
            )));
        db.commit(tx)?;
        *meta = next;
    }
    Ok(sum)
}

/// Builds a new database of at least `target_bytes` of values at `path`.
pub fn build(path: &Path, target_bytes: u64, seed: u64) -> Result<WorkloadSummary, HarnessError> {
    let db = open(path)?;
    let mut meta = HarnessMeta { seed, blocks: 0 };
    let mut total = WorkloadSummary::default();
    while total.value_bytes < target_bytes {
        let s = append_blocks(&db, &mut meta, 16)?;
        total.blocks += s.blocks;
        total.keys += s.keys;
        total.value_bytes += s.value_bytes;
    }
    Ok(total)
}

/// Number of blocks that add about `fraction` of the database's keys as new keys.
pub fn blocks_for_fraction(meta: &HarnessMeta, fraction: f64) -> u64 {
    let per_block = STATE_ENTRIES_PER_BLOCK as f64 + 3.1;
    let keys = meta.blocks as f64 * per_block;
    ((keys * fraction) / per_block).ceil().max(1.0) as u64
}

/// Checks that every key of every recorded block is present with its exact value.
pub fn verify(db: &Db, path: &Path) -> Result<WorkloadSummary, HarnessError> {
    let meta = read_meta(db, path)?;
    let mut sum = WorkloadSummary::default();
    let mut bad = 0u64;
    let mut first = String::new();
    for number in 0..meta.blocks {
        sum.blocks += 1;
        for (c, k, v) in block_entries(meta.seed, number) {
            sum.keys += 1;
            sum.value_bytes += v.len() as u64;
            let got = db.get(c, &k)?;
            if got.as_deref() != Some(&v[..]) {
                if bad == 0 {
                    first = format!(
                        "block {number} column {c} key {}: {}",
                        hex(&k),
                        match got {
                            None => "missing".to_string(),
                            Some(g) => format!("{} bytes, expected {}", g.len(), v.len()),
                        }
                    );
                }
                bad += 1;
            }
        }
    }
    if bad > 0 {
        return Err(HarnessError::Mismatch {
            checked: sum.keys,
            bad,
            first,
        });
    }
    Ok(sum)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_extend_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let built = build(&path, 2 << 20, 7).unwrap();
        assert!(built.value_bytes >= 2 << 20);
        {
            let db = open(&path).unwrap();
            let mut meta = read_meta(&db, &path).unwrap();
            assert_eq!(meta.blocks, built.blocks);
            let n = blocks_for_fraction(&meta, 0.1);
            append_blocks(&db, &mut meta, n).unwrap();
            let v = verify(&db, &path).unwrap();
            assert_eq!(v.blocks, built.blocks + n);
        }
        // Reopen after close: everything committed is there.
        let db = open(&path).unwrap();
        let v = verify(&db, &path).unwrap();
        assert!(v.keys > built.keys);
    }

    #[test]
    fn verify_detects_a_changed_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        build(&path, 1 << 20, 3).unwrap();
        let db = open(&path).unwrap();
        let (c, k, _) = block_entries(3, 2)
            .into_iter()
            .find(|e| e.0 == column::HEADER)
            .unwrap();
        db.commit(vec![(c, k, Some(b"tampered".to_vec()))]).unwrap();
        match verify(&db, &path) {
            Err(HarnessError::Mismatch { bad, first, .. }) => {
                assert_eq!(bad, 1);
                assert!(first.contains("block 2 column 4"), "{first}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        assert!(matches!(
            read_meta(&db, dir.path()),
            Err(HarnessError::NotAHarnessDb(_))
        ));
    }
}
