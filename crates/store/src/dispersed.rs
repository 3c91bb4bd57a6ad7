//! The `disperse:` store: each chunk is Reed–Solomon encoded into k data and m parity shards, shard `i`
//! stored on member `i` under the chunk's id. Any k shards rebuild the chunk; a write succeeds only when
//! at least k + `write_extra` shards were stored. Chunks are already encrypted, so one member holds
//! nothing readable. Syntax in docs/stores.md.

use std::collections::HashMap;

use crate::error::MemberFailure;
use crate::router::Member;
use crate::{ChunkId, ChunkStore, DeliverFn, StoreError};

/// The URL prefix of dispersed stores.
pub const DISPERSE_PREFIX: &str = "disperse:";

/// First bytes of every shard.
const SHARD_MAGIC: [u8; 4] = *b"TNRS";
/// Shard header format version.
const SHARD_VERSION: u8 = 1;
/// Header length: magic, version, k, m, index, 4 reserved bytes, original length (u64 LE), padded to 24.
pub const SHARD_HEADER_LEN: usize = 24;
/// Shard payloads are padded to a multiple of this (the Reed–Solomon engine works on 64-byte blocks).
const SHARD_ALIGN: usize = 64;
/// How many ids [`DispersedStore::get_each`] fetches per batch before delivering them.
const DELIVER_BATCH: usize = 128;

/// A decoded shard header: shards say which chunk geometry they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Data shards per chunk.
    pub data_shards: u8,
    /// Parity shards per chunk.
    pub parity_shards: u8,
    /// This shard's index: `0..k` data, `k..k+m` parity.
    pub index: u8,
    /// The chunk object's length before splitting and padding.
    pub original_len: u64,
}

impl ShardHeader {
    fn encode(&self) -> [u8; SHARD_HEADER_LEN] {
        let mut h = [0u8; SHARD_HEADER_LEN];
        h[..4].copy_from_slice(&SHARD_MAGIC);
        h[4] = SHARD_VERSION;
        h[5] = self.data_shards;
        h[6] = self.parity_shards;
        h[7] = self.index;
        h[12..20].copy_from_slice(&self.original_len.to_le_bytes());
        h
    }

    /// Splits a stored shard into its header and payload; `None` when it is not a valid shard.
    pub fn parse(shard: &[u8]) -> Option<(ShardHeader, &[u8])> {
        let header = shard.get(..SHARD_HEADER_LEN)?;
        if header.get(..4)? != SHARD_MAGIC || *header.get(4)? != SHARD_VERSION {
            return None;
        }
        let len_bytes: [u8; 8] = header.get(12..20)?.try_into().ok()?;
        Some((
            ShardHeader {
                data_shards: *header.get(5)?,
                parity_shards: *header.get(6)?,
                index: *header.get(7)?,
                original_len: u64::from_le_bytes(len_bytes),
            },
            shard.get(SHARD_HEADER_LEN..)?,
        ))
    }
}

/// What [`DispersedStore::repair`] or [`crate::RouterStore::repair`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Chunks examined.
    pub chunks_checked: u64,
    /// Chunks that had at least one missing or invalid shard (or replica copy).
    pub chunks_degraded: u64,
    /// Shards (or replica copies) written back.
    pub shards_rewritten: u64,
    /// Chunks with fewer than k valid shards (or no valid copy): they cannot be rebuilt.
    pub unrecoverable: Vec<ChunkId>,
    /// Members that failed during the repair (reads or rewrites), with their errors.
    pub failures: Vec<MemberFailure>,
}

/// A [`ChunkStore`] that disperses each chunk as k + m Reed–Solomon shards over k + m member stores.
pub struct DispersedStore {
    data_shards: usize,
    parity_shards: usize,
    write_extra: usize,
    members: Vec<Member>,
}

/// Every shard of one chunk as fetched: `None` where missing, unreadable or invalid.
type ShardSet = Vec<Option<Vec<u8>>>;
/// One member's answer to a batch read: its shard of each requested chunk.
type MemberValues = Vec<Option<Vec<u8>>>;

impl DispersedStore {
    /// Opens a dispersed store from its URL: `disperse:K+M [write_extra=N] URL_1 … URL_{K+M}`
    /// (whitespace-separated). Members are opened lazily, so members that are down do not stop it
    /// opening. `write_extra` (default 1, at most M) is how many shards beyond K a write must store.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: crate::redact_url(url),
            reason,
        };
        let spec = url
            .strip_prefix(DISPERSE_PREFIX)
            .ok_or_else(|| invalid(format!("a dispersed URL starts with {DISPERSE_PREFIX:?}")))?;
        let mut tokens = spec.split_whitespace();
        let geometry = tokens.next().unwrap_or_default();
        let (k, m) = geometry
            .split_once('+')
            .and_then(|(k, m)| Some((k.parse::<usize>().ok()?, m.parse::<usize>().ok()?)))
            .ok_or_else(|| invalid(format!("{geometry:?} is not a K+M geometry such as 4+2")))?;
        if k == 0 || m == 0 || k + m > 255 {
            return Err(invalid(format!(
                "geometry {k}+{m}: need K >= 1, M >= 1 and K + M <= 255"
            )));
        }
        let mut write_extra = 1usize.min(m);
        let mut members = Vec::new();
        for token in tokens {
            if let Some(value) = token.strip_prefix("write_extra=") {
                write_extra = value
                    .parse()
                    .ok()
                    .filter(|&n| n <= m)
                    .ok_or_else(|| invalid(format!("write_extra={value:?}: need 0..={m}")))?;
            } else {
                members.push(Member::open(token)?);
            }
        }
        if members.len() != k + m {
            return Err(invalid(format!(
                "geometry {k}+{m} needs {} member URLs, got {}",
                k + m,
                members.len()
            )));
        }
        for (i, a) in members.iter().enumerate() {
            if members.iter().skip(i + 1).any(|b| b.url == a.url) {
                return Err(invalid(format!(
                    "member {} appears twice; shards must land on distinct stores",
                    a.url
                )));
            }
        }
        Ok(DispersedStore {
            data_shards: k,
            parity_shards: m,
            write_extra,
            members,
        })
    }

    fn shard_count(&self) -> usize {
        self.data_shards + self.parity_shards
    }

    /// Encodes `object` into its k + m stored shards (header + payload).
    pub fn encode_shards(&self, object: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let k = self.data_shards;
        let per_shard = object.len().div_ceil(k).max(1).div_ceil(SHARD_ALIGN) * SHARD_ALIGN;
        let mut padded = object.to_vec();
        padded.resize(per_shard * k, 0);
        let parity = reed_solomon_simd::encode(k, self.parity_shards, padded.chunks(per_shard))
            .map_err(|e| StoreError::Corrupt {
                id: ChunkId::of(object).to_hex(),
                reason: format!("Reed-Solomon encoding failed: {e}"),
            })?;
        let header = |index: usize| {
            ShardHeader {
                data_shards: k as u8,
                parity_shards: self.parity_shards as u8,
                index: index as u8,
                original_len: object.len() as u64,
            }
            .encode()
        };
        Ok(padded
            .chunks(per_shard)
            .chain(parity.iter().map(Vec::as_slice))
            .enumerate()
            .map(|(index, payload)| {
                let mut shard = Vec::with_capacity(SHARD_HEADER_LEN + payload.len());
                shard.extend_from_slice(&header(index));
                shard.extend_from_slice(payload);
                shard
            })
            .collect())
    }

    /// Rebuilds a chunk from its shards (any k valid ones). Returns `Ok(None)` when no shard exists at
    /// all, and an error when some exist but fewer than k are valid.
    fn decode_shards(
        &self,
        id: &ChunkId,
        shards: &ShardSet,
        failures: &[MemberFailure],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.data_shards;
        let mut valid: Vec<(usize, &[u8])> = Vec::new();
        let mut original_len = None;
        for (slot, shard) in shards.iter().enumerate() {
            let Some((header, payload)) = shard.as_deref().and_then(ShardHeader::parse) else {
                continue;
            };
            let geometry_ok = usize::from(header.data_shards) == k
                && usize::from(header.parity_shards) == self.parity_shards
                && usize::from(header.index) == slot;
            let consistent = original_len.is_none_or(|l| l == header.original_len)
                && valid.first().is_none_or(|(_, p)| p.len() == payload.len());
            if geometry_ok && consistent && !payload.is_empty() {
                original_len = Some(header.original_len);
                valid.push((slot, payload));
            }
        }
        if valid.is_empty() && failures.is_empty() && shards.iter().all(Option::is_none) {
            return Ok(None);
        }
        let (Some(original_len), true) = (original_len, valid.len() >= k) else {
            return Err(StoreError::NotEnoughShards {
                id: id.to_hex(),
                needed: k,
                available: valid.len(),
                failures: failures.to_vec(),
            });
        };
        let per_shard = valid.first().map_or(0, |(_, p)| p.len());
        let corrupt = |reason: String| StoreError::Corrupt {
            id: id.to_hex(),
            reason,
        };
        let original_len = usize::try_from(original_len)
            .ok()
            .filter(|&l| l <= per_shard * k)
            .ok_or_else(|| corrupt("shard header length exceeds the shard payloads".into()))?;
        let mut data: Vec<Option<&[u8]>> = vec![None; k];
        for (slot, payload) in &valid {
            if let Some(d) = data.get_mut(*slot) {
                *d = Some(payload);
            }
        }
        let mut object = Vec::with_capacity(per_shard * k);
        if data.iter().all(Option::is_some) {
            data.iter()
                .flatten()
                .for_each(|p| object.extend_from_slice(p));
        } else {
            let originals = valid.iter().filter(|(s, _)| *s < k).copied();
            let recovery = valid
                .iter()
                .filter(|(s, _)| *s >= k)
                .map(|(s, p)| (s - k, *p));
            let restored = reed_solomon_simd::decode(k, self.parity_shards, originals, recovery)
                .map_err(|e| corrupt(format!("Reed-Solomon decoding failed: {e}")))?;
            for (slot, payload) in data.iter().enumerate() {
                match payload {
                    Some(p) => object.extend_from_slice(p),
                    None => object.extend_from_slice(
                        restored
                            .get(&slot)
                            .ok_or_else(|| corrupt(format!("data shard {slot} not restored")))?,
                    ),
                }
            }
        }
        object.truncate(original_len);
        Ok(Some(object))
    }

    /// Fetches shards `slots` of `ids` from their members in parallel and returns the slots actually
    /// asked. Members in back-off are skipped (their shards count as missing) unless `include_backoff`.
    fn fetch_shards(
        &self,
        ids: &[ChunkId],
        slots: &[usize],
        sets: &mut [ShardSet],
        failures: &mut Vec<MemberFailure>,
        include_backoff: bool,
    ) -> Vec<usize> {
        let results: Vec<(usize, Result<MemberValues, StoreError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = slots
                .iter()
                .filter_map(|&slot| self.members.get(slot).map(|m| (slot, m)))
                .filter(|(_, m)| include_backoff || !m.health.in_backoff())
                .map(|(slot, member)| scope.spawn(move || (slot, member.call(|s| s.get_many(ids)))))
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let attempted = results.iter().map(|(slot, _)| *slot).collect();
        for (slot, result) in results {
            match result {
                Ok(values) => {
                    for (set, value) in sets.iter_mut().zip(values) {
                        if let Some(s) = set.get_mut(slot) {
                            *s = value;
                        }
                    }
                }
                Err(e) => {
                    if let Some(member) = self.members.get(slot) {
                        failures.push(member.failure(&e));
                    }
                }
            }
        }
        attempted
    }

    /// Fetches what is needed to rebuild `ids`: the data shards first, then parity (and members in
    /// back-off) only for chunks that still lack k valid shards. With `all` every shard is fetched.
    fn fetch(&self, ids: &[ChunkId], all: bool) -> (Vec<ShardSet>, Vec<MemberFailure>) {
        let n = self.shard_count();
        let k = self.data_shards;
        let mut sets: Vec<ShardSet> = vec![vec![None; n]; ids.len()];
        let mut failures = Vec::new();
        let first: Vec<usize> = if all {
            (0..n).collect()
        } else {
            (0..k).collect()
        };
        let attempted = self.fetch_shards(ids, &first, &mut sets, &mut failures, all);
        let short: Vec<usize> = sets
            .iter()
            .enumerate()
            .filter(|(_, set)| set.iter().filter(|s| s.is_some()).count() < k)
            .map(|(i, _)| i)
            .collect();
        if short.is_empty() {
            return (sets, failures);
        }
        // Second round for the chunks still short: every member not yet asked for them.
        let short_ids: Vec<ChunkId> = short.iter().filter_map(|&i| ids.get(i).copied()).collect();
        let mut short_sets: Vec<ShardSet> =
            short.iter().filter_map(|&i| sets.get(i).cloned()).collect();
        let rest: Vec<usize> = (0..n).filter(|slot| !attempted.contains(slot)).collect();
        self.fetch_shards(&short_ids, &rest, &mut short_sets, &mut failures, true);
        for (i, set) in short.into_iter().zip(short_sets) {
            if let Some(s) = sets.get_mut(i) {
                *s = set;
            }
        }
        (sets, failures)
    }

    /// Checks every shard of `ids` and re-creates missing or invalid ones on their members (a member that
    /// came back empty, or a replacement at the same URL), as long as k valid shards remain.
    pub fn repair(&self, ids: &[ChunkId]) -> RepairReport {
        let mut report = RepairReport::default();
        let (sets, failures) = self.fetch(ids, true);
        report.failures = failures;
        let mut rewrites: HashMap<usize, Vec<(ChunkId, Vec<u8>)>> = HashMap::new();
        for (id, set) in ids.iter().zip(&sets) {
            report.chunks_checked += 1;
            let valid_slots: Vec<bool> = set
                .iter()
                .enumerate()
                .map(|(slot, s)| {
                    s.as_deref()
                        .and_then(ShardHeader::parse)
                        .is_some_and(|(h, _)| usize::from(h.index) == slot)
                })
                .collect();
            if valid_slots.iter().all(|v| *v) {
                continue;
            }
            report.chunks_degraded += 1;
            let rebuilt = match self.decode_shards(id, set, &[]) {
                Ok(Some(object)) if ChunkId::of(&object) == *id => object,
                _ => {
                    report.unrecoverable.push(*id);
                    continue;
                }
            };
            let Ok(shards) = self.encode_shards(&rebuilt) else {
                report.unrecoverable.push(*id);
                continue;
            };
            for (slot, shard) in shards.into_iter().enumerate() {
                if !valid_slots.get(slot).copied().unwrap_or(true) {
                    rewrites.entry(slot).or_default().push((*id, shard));
                }
            }
        }
        for (slot, items) in rewrites {
            let Some(member) = self.members.get(slot) else {
                continue;
            };
            let batch: Vec<(ChunkId, &[u8])> =
                items.iter().map(|(id, s)| (*id, s.as_slice())).collect();
            match member.call(|s| s.put_many(&batch)) {
                Ok(()) => report.shards_rewritten += batch.len() as u64,
                Err(e) => report.failures.push(member.failure(&e)),
            }
        }
        report
    }
}

impl ChunkStore for DispersedStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_many(std::slice::from_ref(id))?.pop().flatten())
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        self.put_many(&[(*id, data)])
    }

    /// At least k + `write_extra` members hold a shard of the chunk (what a successful write leaves).
    fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self
            .has_many(std::slice::from_ref(id))?
            .first()
            .copied()
            .unwrap_or(false))
    }

    fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let (sets, failures) = self.fetch(ids, false);
        ids.iter()
            .zip(&sets)
            .map(|(id, set)| self.decode_shards(id, set, &failures))
            .collect()
    }

    fn get_each(&self, ids: &[ChunkId], deliver: &mut DeliverFn<'_>) -> Result<(), StoreError> {
        for (batch_number, batch) in ids.chunks(DELIVER_BATCH).enumerate() {
            let base = batch_number * DELIVER_BATCH;
            for (offset, value) in self.get_many(batch)?.into_iter().enumerate() {
                deliver(base + offset, value.as_deref())?;
            }
        }
        Ok(())
    }

    fn has_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let needed = self.data_shards + self.write_extra;
        let counts: Vec<Option<Vec<bool>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .members
                .iter()
                .map(|m| scope.spawn(move || m.call(|s| s.has_many(ids)).ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect()
        });
        Ok((0..ids.len())
            .map(|i| {
                counts
                    .iter()
                    .flatten()
                    .filter(|held| held.get(i).copied().unwrap_or(false))
                    .count()
                    >= needed
            })
            .collect())
    }

    fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        let n = self.shard_count();
        let mut per_member: Vec<Vec<(ChunkId, Vec<u8>)>> = vec![Vec::with_capacity(items.len()); n];
        for (id, data) in items {
            for (slot, shard) in self.encode_shards(data)?.into_iter().enumerate() {
                if let Some(list) = per_member.get_mut(slot) {
                    list.push((*id, shard));
                }
            }
        }
        let outcomes: Vec<Result<(), MemberFailure>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .members
                .iter()
                .zip(&per_member)
                .map(|(member, shards)| {
                    scope.spawn(move || {
                        let batch: Vec<(ChunkId, &[u8])> =
                            shards.iter().map(|(id, s)| (*id, s.as_slice())).collect();
                        member
                            .call(|s| s.put_many(&batch))
                            .map_err(|e| member.failure(&e))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(MemberFailure {
                            url: "?".into(),
                            error: "writer thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let stored = outcomes.iter().filter(|o| o.is_ok()).count();
        let needed = self.data_shards + self.write_extra;
        if stored >= needed {
            return Ok(());
        }
        let failures = outcomes.into_iter().filter_map(Result::err).collect();
        Err(StoreError::NotEnoughShards {
            id: items.first().map(|(id, _)| id.to_hex()).unwrap_or_default(),
            needed,
            available: stored,
            failures,
        })
    }

    fn public_url(&self) -> String {
        let mut url = format!(
            "{DISPERSE_PREFIX}{}+{} write_extra={}",
            self.data_shards, self.parity_shards, self.write_extra
        );
        for member in &self.members {
            url.push(' ');
            url.push_str(&member.url);
        }
        url
    }
}
