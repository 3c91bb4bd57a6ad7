//! The `route:` store: several member stores, each serving a range of chunk-id first bytes, with
//! replicas. Writes go to every replica of a chunk's range; reads try the healthiest replica first and
//! fail over on errors (including the members' own timeouts). Syntax in docs/stores.md.

use std::sync::Arc;
use std::time::Instant;

use crate::error::MemberFailure;
use crate::health::Health;
use crate::{open_member, ChunkId, ChunkStore, DeliverFn, RepairReport, StoreError};

/// The URL prefix of router stores.
pub const ROUTE_PREFIX: &str = "route:";

/// How many ids [`RouterStore::get_each`] fetches per batch before delivering them.
const DELIVER_BATCH: usize = 256;

/// One member store with its health record.
pub(crate) struct Member {
    /// The member's public URL (no password).
    pub(crate) url: String,
    /// The opened (lazy) store.
    pub(crate) store: Arc<dyn ChunkStore>,
    /// Recent failures and latency.
    pub(crate) health: Health,
}

impl Member {
    pub(crate) fn open(url: &str) -> Result<Self, StoreError> {
        let store = open_member(url)?;
        Ok(Member {
            url: store.public_url(),
            store,
            health: Health::default(),
        })
    }

    /// Runs `call` on the member, recording its outcome in the member's health.
    pub(crate) fn call<T>(
        &self,
        call: impl FnOnce(&dyn ChunkStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call(self.store.as_ref());
        match &result {
            Ok(_) => self.health.record_success(started.elapsed()),
            Err(_) => self.health.record_failure(),
        }
        result
    }

    pub(crate) fn failure(&self, error: &StoreError) -> MemberFailure {
        MemberFailure {
            url: self.url.clone(),
            error: error.to_string(),
        }
    }
}

/// The replicas serving chunk ids whose first byte lies in `first..=last`.
struct Route {
    first: u8,
    last: u8,
    replicas: Vec<Member>,
}

impl Route {
    fn covers(&self, byte: u8) -> bool {
        (self.first..=self.last).contains(&byte)
    }

    /// Replica indexes, healthiest and fastest first.
    fn read_order(&self) -> Vec<usize> {
        let mut order: Vec<(crate::health::HealthRank, usize)> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(i, m)| (m.health.rank(), i))
            .collect();
        order.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        order.into_iter().map(|(_, i)| i).collect()
    }
}

/// A [`ChunkStore`] that spreads chunks over member stores by the first byte of their id, with replicas.
pub struct RouterStore {
    routes: Vec<Route>,
}

fn parse_range(text: &str) -> Option<(u8, u8)> {
    let byte = |s: &str| {
        (s.len() == 2)
            .then(|| u8::from_str_radix(s, 16).ok())
            .flatten()
    };
    match text.split_once('-') {
        Some((a, b)) => Some((byte(a)?, byte(b)?)),
        None => byte(text).map(|b| (b, b)),
    }
}

/// The entries of a `route:` URL as `(first, last, member URL)`, in the order given: `route:` followed by
/// whitespace-separated `[RANGE=]URL` entries, where RANGE is `XX-YY` or `XX` (hex first bytes, inclusive)
/// and an entry without a range serves `00-ff`. Checks the syntax only (not overlaps or coverage) and
/// opens nothing.
pub fn route_entries(url: &str) -> Result<Vec<(u8, u8, String)>, StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: crate::redact_url(url),
        reason,
    };
    let spec = url
        .strip_prefix(ROUTE_PREFIX)
        .ok_or_else(|| invalid(format!("a router URL starts with {ROUTE_PREFIX:?}")))?;
    let mut entries = Vec::new();
    for entry in spec.split_whitespace() {
        let (range, member_url) = match entry.split_once('=') {
            Some((range, rest)) if !range.contains(':') => {
                let range = parse_range(range)
                    .ok_or_else(|| invalid(format!("{range:?} is not a range like 00-7f or 80")))?;
                (range, rest)
            }
            _ => ((0x00, 0xff), entry),
        };
        if range.0 > range.1 {
            return Err(invalid(format!(
                "range {:02x}-{:02x} is reversed",
                range.0, range.1
            )));
        }
        entries.push((range.0, range.1, member_url.to_string()));
    }
    Ok(entries)
}

impl RouterStore {
    /// Opens a router from its URL (syntax: [`route_entries`]). Entries with the same range are replicas.
    /// Ranges must not partly overlap and must cover `00-ff`. Members are opened lazily, so a member that
    /// is down does not stop the router from opening.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: crate::redact_url(url),
            reason,
        };
        let mut routes: Vec<Route> = Vec::new();
        for (first, last, member_url) in route_entries(url)? {
            let range = (first, last);
            let member = Member::open(&member_url)?;
            match routes
                .iter_mut()
                .find(|r| r.first == range.0 && r.last == range.1)
            {
                Some(route) => route.replicas.push(member),
                None => {
                    if let Some(other) = routes
                        .iter()
                        .find(|r| r.first <= range.1 && range.0 <= r.last)
                    {
                        return Err(invalid(format!(
                            "range {:02x}-{:02x} overlaps {:02x}-{:02x}; replicas must use the same range",
                            range.0, range.1, other.first, other.last
                        )));
                    }
                    routes.push(Route {
                        first: range.0,
                        last: range.1,
                        replicas: vec![member],
                    });
                }
            }
        }
        if routes.is_empty() {
            return Err(invalid(
                "a router needs at least one member: route: 00-7f=zdb://a/ns 80-ff=zdb://b/ns"
                    .into(),
            ));
        }
        routes.sort_by_key(|r| r.first);
        let mut next: u16 = 0;
        for r in &routes {
            if u16::from(r.first) != next {
                return Err(invalid(format!(
                    "no member serves first byte {next:02x}; ranges must cover 00-ff"
                )));
            }
            next = u16::from(r.last) + 1;
        }
        if next != 0x100 {
            return Err(invalid(format!(
                "no member serves first byte {next:02x}; ranges must cover 00-ff"
            )));
        }
        Ok(RouterStore { routes })
    }

    fn route_index(&self, id: &ChunkId) -> usize {
        let byte = id.0[0];
        self.routes
            .iter()
            .position(|r| r.covers(byte))
            .unwrap_or_default()
    }

    /// The public URL of every member, grouped by range: `(first, last, replica URLs)`.
    pub fn members(&self) -> Vec<(u8, u8, Vec<String>)> {
        self.routes
            .iter()
            .map(|r| {
                (
                    r.first,
                    r.last,
                    r.replicas.iter().map(|m| m.url.clone()).collect(),
                )
            })
            .collect()
    }

    /// Indexes of `ids` grouped by route.
    fn group(&self, ids: &[ChunkId]) -> Vec<Vec<usize>> {
        let mut groups = vec![Vec::new(); self.routes.len()];
        for (i, id) in ids.iter().enumerate() {
            if let Some(g) = groups.get_mut(self.route_index(id)) {
                g.push(i);
            }
        }
        groups
    }

    /// Reads `ids` from one route, failing over between replicas. An id is reported missing only when
    /// every replica answered that it does not hold it.
    fn read_route(
        &self,
        route: &Route,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut found: Vec<Option<Vec<u8>>> = vec![None; ids.len()];
        let mut pending: Vec<usize> = (0..ids.len()).collect();
        let mut failures = Vec::new();
        for replica in route.read_order() {
            if pending.is_empty() {
                break;
            }
            let Some(member) = route.replicas.get(replica) else {
                continue;
            };
            let want: Vec<ChunkId> = pending
                .iter()
                .filter_map(|&i| ids.get(i).copied())
                .collect();
            match member.call(|s| s.get_many(&want)) {
                Ok(values) => {
                    let mut still = Vec::new();
                    for (&i, value) in pending.iter().zip(values) {
                        match (value, found.get_mut(i)) {
                            (Some(v), Some(slot)) => *slot = Some(v),
                            _ => still.push(i),
                        }
                    }
                    pending = still;
                }
                Err(e) => failures.push(member.failure(&e)),
            }
        }
        if !pending.is_empty() && !failures.is_empty() {
            return Err(StoreError::Members {
                operation: "read",
                failures,
            });
        }
        Ok(found)
    }

    /// Runs `write` on every replica of every route that has items, in parallel; fails naming every
    /// replica that failed.
    fn write_all(
        &self,
        groups: &[Vec<usize>],
        write: impl Fn(&dyn ChunkStore, &[usize]) -> Result<(), StoreError> + Sync,
    ) -> Result<(), StoreError> {
        let failures: Vec<MemberFailure> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for (route, indexes) in self.routes.iter().zip(groups) {
                if indexes.is_empty() {
                    continue;
                }
                for member in &route.replicas {
                    let write = &write;
                    handles.push(scope.spawn(move || {
                        member
                            .call(|s| write(s, indexes))
                            .err()
                            .map(|e| member.failure(&e))
                    }));
                }
            }
            handles
                .into_iter()
                .filter_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Some(MemberFailure {
                            url: "?".into(),
                            error: "writer thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        if failures.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Members {
                operation: "write",
                failures,
            })
        }
    }
}

impl RouterStore {
    /// Reads every replica's copy of each chunk in `ids` and writes a valid copy (one whose bytes hash
    /// to its id) to every replica that lacks one or holds a corrupt one, e.g. after a replica came back
    /// empty or was replaced at the same URL. A chunk with no valid copy on any replica is
    /// unrecoverable; a replica that cannot be read is reported as a failure and left alone.
    /// `shards_rewritten` counts the copies written.
    pub fn repair(&self, ids: &[ChunkId]) -> RepairReport {
        let mut report = RepairReport::default();
        for (route, indexes) in self.routes.iter().zip(self.group(ids)) {
            let want: Vec<ChunkId> = indexes
                .iter()
                .filter_map(|&i| ids.get(i).copied())
                .collect();
            if want.is_empty() {
                continue;
            }
            // held[r][j]: replica r holds a valid copy of want[j] (true when r could not be read).
            let mut held: Vec<Vec<bool>> = Vec::new();
            let mut valid_copy: Vec<Option<Vec<u8>>> = vec![None; want.len()];
            for member in &route.replicas {
                match member.call(|s| s.get_many(&want)) {
                    Ok(values) => held.push(
                        values
                            .into_iter()
                            .zip(&want)
                            .zip(valid_copy.iter_mut())
                            .map(|((value, id), copy)| match value {
                                Some(bytes) if ChunkId::of(&bytes) == *id => {
                                    copy.get_or_insert(bytes);
                                    true
                                }
                                _ => false,
                            })
                            .collect(),
                    ),
                    Err(e) => {
                        report.failures.push(member.failure(&e));
                        held.push(vec![true; want.len()]);
                    }
                }
            }
            let mut rewrites: Vec<Vec<(ChunkId, &[u8])>> = vec![Vec::new(); route.replicas.len()];
            for (j, id) in want.iter().enumerate() {
                report.chunks_checked += 1;
                let lacking: Vec<usize> = (0..held.len()).filter(|&r| !held[r][j]).collect();
                if lacking.is_empty() {
                    continue;
                }
                report.chunks_degraded += 1;
                match valid_copy.get(j).and_then(|c| c.as_deref()) {
                    Some(bytes) => {
                        for r in lacking {
                            rewrites[r].push((*id, bytes));
                        }
                    }
                    None => report.unrecoverable.push(*id),
                }
            }
            for (member, batch) in route.replicas.iter().zip(&rewrites) {
                if batch.is_empty() {
                    continue;
                }
                match member.call(|s| s.put_many(batch)) {
                    Ok(()) => report.shards_rewritten += batch.len() as u64,
                    Err(e) => report.failures.push(member.failure(&e)),
                }
            }
        }
        report
    }
}

impl ChunkStore for RouterStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_many(std::slice::from_ref(id))?.pop().flatten())
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        self.put_many(&[(*id, data)])
    }

    /// Held by every replica of its range (so re-packing fills replicas that missed a write).
    fn has(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self
            .has_many(std::slice::from_ref(id))?
            .first()
            .copied()
            .unwrap_or(false))
    }

    fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; ids.len()];
        for (route, indexes) in self.routes.iter().zip(self.group(ids)) {
            if indexes.is_empty() {
                continue;
            }
            let want: Vec<ChunkId> = indexes
                .iter()
                .filter_map(|&i| ids.get(i).copied())
                .collect();
            for (i, value) in indexes.into_iter().zip(self.read_route(route, &want)?) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = value;
                }
            }
        }
        Ok(out)
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
        let mut out = vec![true; ids.len()];
        let mut failures = Vec::new();
        for (route, indexes) in self.routes.iter().zip(self.group(ids)) {
            if indexes.is_empty() {
                continue;
            }
            let want: Vec<ChunkId> = indexes
                .iter()
                .filter_map(|&i| ids.get(i).copied())
                .collect();
            for member in &route.replicas {
                match member.call(|s| s.has_many(&want)) {
                    Ok(held) => {
                        for (&i, h) in indexes.iter().zip(held) {
                            if let Some(slot) = out.get_mut(i) {
                                *slot &= h;
                            }
                        }
                    }
                    Err(e) => failures.push(member.failure(&e)),
                }
            }
        }
        if failures.is_empty() {
            Ok(out)
        } else {
            Err(StoreError::Members {
                operation: "existence check",
                failures,
            })
        }
    }

    fn put_many(&self, items: &[(ChunkId, &[u8])]) -> Result<(), StoreError> {
        let ids: Vec<ChunkId> = items.iter().map(|(id, _)| *id).collect();
        let groups = self.group(&ids);
        self.write_all(&groups, |store, indexes| {
            let batch: Vec<(ChunkId, &[u8])> = indexes
                .iter()
                .filter_map(|&i| items.get(i).copied())
                .collect();
            store.put_many(&batch)
        })
    }

    fn public_url(&self) -> String {
        let mut url = ROUTE_PREFIX.to_string();
        for route in &self.routes {
            for member in &route.replicas {
                url.push_str(&format!(
                    " {:02x}-{:02x}={}",
                    route.first, route.last, member.url
                ));
            }
        }
        url
    }
}
