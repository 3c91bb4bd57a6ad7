//! Checking an image: signature, structure, and (deep) every stored chunk.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use rayon::prelude::*;
use store::ChunkStore;

use crate::codec::{check_chunk_key, decode_chunk};
use crate::tree::walk_tree;
use crate::{ChunkId, FileKind, ImageError, ImageManifest};

/// Options of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// When set, the manifest must carry a valid signature by this key.
    pub trusted: Option<VerifyingKey>,
    /// Fetch and decode every chunk.
    pub deep: bool,
    /// Worker threads for the deep check (0: twice the core count, at least 4).
    pub threads: usize,
    /// Chunks fetched per store request.
    pub batch_chunks: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            trusted: None,
            deep: false,
            threads: 0,
            batch_chunks: 32,
        }
    }
}

/// A chunk that is missing or corrupt, named by a file that uses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChunkProblem {
    /// Path of the file inside the image.
    pub path: String,
    /// Byte offset of the chunk in the file.
    pub offset: u64,
    /// Hex id of the chunk.
    pub chunk: String,
    /// What is wrong ("missing from the store", "corrupt: ...").
    pub reason: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Whether the manifest carries a signature.
    pub signed: bool,
    /// Hex public key of the signer, when signed.
    pub signer: Option<String>,
    /// Whether the signature was checked against a trusted key (and passed: a failure is an error).
    pub signature_trusted: bool,
    /// Whether the body matches its recorded hash.
    pub body_hash_ok: bool,
    /// The structural problem found, if any.
    pub structure_error: Option<String>,
    /// Whether chunks were fetched and checked.
    pub deep: bool,
    /// Distinct chunks fetched and checked.
    pub chunks_checked: u64,
    /// Distinct chunks found missing or corrupt.
    pub bad_chunks: u64,
    /// Every use of a missing or corrupt chunk, by file and offset.
    pub problems: Vec<ChunkProblem>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.body_hash_ok
            && self.structure_error.is_none()
            && self.problems.is_empty()
            && self.bad_chunks == 0
    }
}

/// Verifies image `m`: with a trusted key, the signature must be valid (an error otherwise); the body hash
/// and structure are checked; with `deep`, every distinct chunk is fetched from `store` and decoded, and
/// each use of a bad one is reported by file and offset.
pub fn verify(
    m: &ImageManifest,
    store: Option<&dyn ChunkStore>,
    opts: &VerifyOptions,
) -> Result<VerifyReport, ImageError> {
    let mut report = VerifyReport {
        signed: m.is_signed(),
        signer: m.signer().map(|k| hex::encode(k.as_bytes())),
        deep: opts.deep,
        ..Default::default()
    };
    if let Some(trusted) = &opts.trusted {
        m.verify_signature(trusted)?;
        report.signature_trusted = true;
    }
    report.body_hash_ok = m.check_body_hash().is_ok();
    if let Err(e) = m.check_structure() {
        report.structure_error = Some(e.to_string());
        return Ok(report);
    }
    if !opts.deep {
        return Ok(report);
    }
    let store = store.ok_or_else(|| ImageError::Invalid("a deep verify needs a store".into()))?;
    let unique = m.unique_chunk_count();
    let indices: Vec<u32> = (0..unique as u32).collect();
    let pool = crate::store_io_pool(opts.threads)?;
    let bad: Vec<(u32, ChunkId, String)> = pool.install(|| {
        indices
            .par_chunks(opts.batch_chunks.max(1))
            .map(|batch| -> Result<Vec<(u32, ChunkId, String)>, ImageError> {
                let refs = batch
                    .iter()
                    .map(|i| m.unique_chunk(*i))
                    .collect::<Result<Vec<_>, _>>()?;
                let ids: Vec<ChunkId> = refs.iter().map(|r| r.id).collect();
                let fetched = store.get_many(&ids)?;
                let mut bad = Vec::new();
                for ((i, r), data) in batch
                    .iter()
                    .zip(&refs)
                    .zip(fetched.iter().map(Some).chain(std::iter::repeat(None)))
                {
                    match data.and_then(|d| d.as_ref()) {
                        None => bad.push((*i, r.id, "missing from the store".to_string())),
                        Some(stored) => {
                            if let Err(e) =
                                decode_chunk(r, stored).and_then(|p| check_chunk_key(r, &p))
                            {
                                let reason = match e {
                                    ImageError::CorruptChunk { reason, .. } => {
                                        format!("corrupt: {reason}")
                                    }
                                    other => other.to_string(),
                                };
                                bad.push((*i, r.id, reason));
                            }
                        }
                    }
                }
                Ok(bad)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    report.chunks_checked = unique;
    report.bad_chunks = bad.len() as u64;
    if bad.is_empty() {
        return Ok(report);
    }
    let bad: HashMap<u32, (ChunkId, String)> =
        bad.into_iter().map(|(i, id, r)| (i, (id, r))).collect();
    let cs = u64::from(m.chunk_size());
    for e in walk_tree(m)? {
        if e.kind != FileKind::Regular {
            continue;
        }
        for (n, slot) in m.file_chunk_slots(e.ino)?.into_iter().enumerate() {
            if let Some((id, reason)) = slot.and_then(|s| bad.get(&s)) {
                report.problems.push(ChunkProblem {
                    path: e.path.display().to_string(),
                    offset: n as u64 * cs,
                    chunk: id.to_hex(),
                    reason: reason.clone(),
                });
            }
        }
    }
    Ok(report)
}
