//! The fault schedule: every fault of a soak, decided up front from a seed, so the same seed (and the
//! same settings) always gives the same faults at the same offsets against the same targets.

use std::fmt;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// A kind of fault the injector causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of store servers (up to the store's tolerance at once), restarted on the same data
    /// after the hold time.
    ZdbKill,
    /// SIGSTOP of a store server (a hung store: it accepts connections and never answers), SIGCONT
    /// after the hold time.
    ZdbHang,
    /// A store server killed and started again empty (a replaced disk); `store repair` runs after the
    /// hold time, as an operator would.
    ZdbReplace,
    /// `kill -9` of a node's supervisor; the service manager runs `node start` again.
    SupervisorKill,
    /// `kill -9` of a node's mount daemon under the running node; the supervisor restarts it.
    MountKill,
    /// The page cache dropped (all of it, or this soak's files only).
    DropCaches,
    /// The host-cache filesystem filled to ENOSPC, freed after the hold time.
    CacheFull,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::ZdbKill,
        FaultKind::ZdbHang,
        FaultKind::ZdbReplace,
        FaultKind::SupervisorKill,
        FaultKind::MountKill,
        FaultKind::DropCaches,
        FaultKind::CacheFull,
    ];

    /// The kind's name as printed and accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ZdbKill => "zdb-kill",
            FaultKind::ZdbHang => "zdb-hang",
            FaultKind::ZdbReplace => "zdb-replace",
            FaultKind::SupervisorKill => "supervisor-kill",
            FaultKind::MountKill => "mount-kill",
            FaultKind::DropCaches => "drop-caches",
            FaultKind::CacheFull => "cache-full",
        }
    }

    /// Parses a kind's name.
    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the fault impairs store servers (and so counts against the store's tolerance).
    pub fn impairs_servers(self) -> bool {
        matches!(
            self,
            FaultKind::ZdbKill | FaultKind::ZdbHang | FaultKind::ZdbReplace
        )
    }

    /// Whether the fault hits one node (the others are not touched).
    pub fn hits_one_node(self) -> bool {
        matches!(self, FaultKind::SupervisorKill | FaultKind::MountKill)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Groups of store servers and how many of each group may be impaired at once without losing data or
/// availability: a `disperse:K+M` store is one group of K+M servers that tolerates M; a `route:` store is
/// one group per key range, each tolerating all its replicas but one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tolerance {
    /// (server indexes, most of them impaired at once).
    pub groups: Vec<(Vec<usize>, usize)>,
}

impl Tolerance {
    /// Whether `impaired` (server indexes, possibly repeated) stays within every group's tolerance.
    pub fn allows(&self, impaired: &[usize]) -> bool {
        self.groups.iter().all(|(members, most)| {
            let mut hit: Vec<usize> = impaired
                .iter()
                .copied()
                .filter(|s| members.contains(s))
                .collect();
            hit.sort_unstable();
            hit.dedup();
            hit.len() <= *most
        })
    }

    /// Every set of servers that can be impaired at once at the limit: the subsets taking exactly each
    /// group's tolerance (used to prove redundancy after repair).
    pub fn worst_cases(&self) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = vec![Vec::new()];
        for (members, most) in &self.groups {
            let subsets = combinations(members, *most);
            out = out
                .iter()
                .flat_map(|prefix| {
                    subsets.iter().map(move |s| {
                        let mut v = prefix.clone();
                        v.extend(s);
                        v
                    })
                })
                .collect();
        }
        out
    }
}

/// Every `k`-element subset of `items`, in order.
fn combinations(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        for mut rest in combinations(&items[i + 1..], k - 1) {
            rest.insert(0, first);
            out.push(rest);
        }
    }
    out
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// Its number in the schedule (1-based).
    pub id: usize,
    /// When it starts, from the start of the soak.
    #[serde(serialize_with = "as_secs")]
    pub at: Duration,
    /// What it is.
    pub kind: FaultKind,
    /// The store servers it impairs (store faults).
    pub servers: Vec<usize>,
    /// The node it hits (node faults).
    pub node: Option<usize>,
    /// How long it lasts before it is undone (servers restarted or resumed, the cache freed, the
    /// repair run); zero for faults that are over at once.
    #[serde(serialize_with = "as_secs")]
    pub hold: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Fault {
    /// When the fault is undone.
    pub fn end(&self) -> Duration {
        self.at + self.hold
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} at {:.1}s {}",
            self.id,
            self.at.as_secs_f64(),
            self.kind
        )?;
        if !self.servers.is_empty() {
            let s: Vec<String> = self.servers.iter().map(|s| format!("zdb{s}")).collect();
            write!(f, " {}", s.join("+"))?;
        }
        if let Some(n) = self.node {
            write!(f, " node {n}")?;
        }
        if !self.hold.is_zero() {
            write!(f, " for {:.1}s", self.hold.as_secs_f64())?;
        }
        Ok(())
    }
}

/// What a schedule is made from.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// The seed: the same seed and spec give the same schedule.
    pub seed: u64,
    /// Length of the soak.
    pub duration: Duration,
    /// No fault before this (the nodes settle).
    pub warmup: Duration,
    /// No fault starts, and none is still held, after `duration - cooldown` (the nodes recover
    /// before the end checks).
    pub cooldown: Duration,
    /// Shortest and longest gap between two fault starts.
    pub gap: (Duration, Duration),
    /// Shortest and longest hold of a fault that lasts.
    pub hold: (Duration, Duration),
    /// The kinds to inject; each round of the schedule takes every kind once, in a seeded order.
    pub kinds: Vec<FaultKind>,
    /// Number of store servers and how many may be impaired at once.
    pub tolerance: Tolerance,
    /// Number of nodes.
    pub nodes: usize,
    /// A node fault does not hit a node hit by a node fault less than this long ago (its recovery is
    /// measured on its own).
    pub node_quiet: Duration,
    /// Extra time a server counts as impaired after its hold (restart, repair).
    pub server_margin: Duration,
}

/// Makes the fault schedule of `spec`, in time order. Kinds that cannot be placed at a moment (store
/// faults while the tolerance is used up, node faults while every node is recovering) are tried again
/// at the next gap.
pub fn make(spec: &ScheduleSpec) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut faults: Vec<Fault> = Vec::new();
    let mut round: Vec<FaultKind> = Vec::new();
    let mut t = spec.warmup;
    let last_start = spec.duration.saturating_sub(spec.cooldown);
    // Kinds that could not be placed yet, oldest first; each gap places at most one fault.
    let mut pending: Vec<FaultKind> = Vec::new();
    while t < last_start {
        if round.is_empty() {
            round = spec.kinds.clone();
            round.shuffle(&mut rng);
        }
        if let Some(kind) = round.pop() {
            pending.push(kind);
        }
        for i in 0..pending.len() {
            let kind = pending[i];
            let hold = match kind {
                FaultKind::SupervisorKill | FaultKind::MountKill | FaultKind::DropCaches => {
                    Duration::ZERO
                }
                _ => random_between(&mut rng, spec.hold),
            };
            let hold = hold.min(last_start.saturating_sub(t));
            let placed = if kind.impairs_servers() {
                pick_servers(&mut rng, spec, &faults, kind, t, hold).map(|s| (s, None))
            } else if kind.hits_one_node() {
                pick_node(&mut rng, spec, &faults, t).map(|n| (vec![], Some(n)))
            } else {
                Some((vec![], None))
            };
            if let Some((servers, node)) = placed {
                faults.push(Fault {
                    id: faults.len() + 1,
                    at: t,
                    kind,
                    servers,
                    node,
                    hold,
                });
                pending.remove(i);
                break;
            }
        }
        t += random_between(&mut rng, spec.gap);
    }
    faults
}

fn random_between(rng: &mut ChaCha8Rng, (low, high): (Duration, Duration)) -> Duration {
    let (low, high) = (low.as_millis() as u64, high.as_millis() as u64);
    Duration::from_millis(if high > low {
        rng.random_range(low..=high)
    } else {
        low
    })
}

/// Servers impaired at some moment of `[from, to]` by faults already placed.
fn impaired_during(
    spec: &ScheduleSpec,
    faults: &[Fault],
    from: Duration,
    to: Duration,
) -> Vec<usize> {
    faults
        .iter()
        .filter(|f| f.kind.impairs_servers())
        .filter(|f| f.at <= to && f.end() + spec.server_margin >= from)
        .flat_map(|f| f.servers.iter().copied())
        .collect()
}

/// Servers for a store fault at `t` lasting `hold`: a seeded choice among those that keep every group
/// within its tolerance for the whole fault; kills take up to the tolerance left, other kinds one.
fn pick_servers(
    rng: &mut ChaCha8Rng,
    spec: &ScheduleSpec,
    faults: &[Fault],
    kind: FaultKind,
    t: Duration,
    hold: Duration,
) -> Option<Vec<usize>> {
    let busy = impaired_during(spec, faults, t, t + hold + spec.server_margin);
    let servers: usize = spec.tolerance.groups.iter().map(|(m, _)| m.len()).sum();
    let mut candidates: Vec<usize> = (0..servers).filter(|s| !busy.contains(s)).collect();
    candidates.shuffle(rng);
    let mut chosen: Vec<usize> = Vec::new();
    for s in candidates {
        let mut trial = busy.clone();
        trial.extend(&chosen);
        trial.push(s);
        if spec.tolerance.allows(&trial) {
            chosen.push(s);
        }
    }
    if chosen.is_empty() {
        return None;
    }
    let take = match kind {
        FaultKind::ZdbKill => rng.random_range(1..=chosen.len()),
        _ => 1,
    };
    chosen.truncate(take);
    chosen.sort_unstable();
    Some(chosen)
}

/// A node for a node fault at `t`: one not hit by a node fault within `node_quiet`.
fn pick_node(
    rng: &mut ChaCha8Rng,
    spec: &ScheduleSpec,
    faults: &[Fault],
    t: Duration,
) -> Option<usize> {
    let free: Vec<usize> = (0..spec.nodes)
        .filter(|&n| {
            !faults
                .iter()
                .any(|f| f.node == Some(n) && f.at + spec.node_quiet > t)
        })
        .collect();
    if free.is_empty() {
        return None;
    }
    Some(free[rng.random_range(0..free.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64, tolerance: Tolerance) -> ScheduleSpec {
        ScheduleSpec {
            seed,
            duration: Duration::from_secs(900),
            warmup: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            gap: (Duration::from_secs(3), Duration::from_secs(12)),
            hold: (Duration::from_secs(2), Duration::from_secs(20)),
            kinds: FaultKind::ALL.to_vec(),
            tolerance,
            nodes: 3,
            node_quiet: Duration::from_secs(15),
            server_margin: Duration::from_secs(5),
        }
    }

    fn disperse() -> Tolerance {
        Tolerance {
            groups: vec![((0..6).collect(), 2)],
        }
    }

    fn route() -> Tolerance {
        Tolerance {
            groups: vec![(vec![0, 1], 1), (vec![2, 3], 1)],
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other() {
        let a = make(&spec(7, disperse()));
        assert_eq!(a, make(&spec(7, disperse())));
        assert_ne!(a, make(&spec(8, disperse())));
        assert!(a.len() > 50, "{}", a.len());
    }

    #[test]
    fn every_kind_appears_and_nothing_runs_into_the_cooldown() {
        for tol in [disperse(), route()] {
            let s = spec(3, tol);
            let faults = make(&s);
            for k in FaultKind::ALL {
                assert!(faults.iter().any(|f| f.kind == k), "{k} missing");
            }
            for f in &faults {
                assert!(
                    f.at >= s.warmup && f.end() <= s.duration - s.cooldown,
                    "{f}"
                );
            }
        }
    }

    #[test]
    fn store_faults_never_exceed_the_tolerance() {
        for (tol, seed) in [(disperse(), 1), (disperse(), 2), (route(), 1), (route(), 5)] {
            let s = spec(seed, tol.clone());
            let faults = make(&s);
            let mut t = Duration::ZERO;
            while t < s.duration {
                let down: Vec<usize> = faults
                    .iter()
                    .filter(|f| f.kind.impairs_servers() && f.at <= t && t <= f.end())
                    .flat_map(|f| f.servers.clone())
                    .collect();
                assert!(tol.allows(&down), "at {t:?}: {down:?}");
                t += Duration::from_millis(250);
            }
            assert!(
                faults
                    .iter()
                    .any(|f| f.kind == FaultKind::ZdbKill && f.servers.len() > 1)
                    || tol.groups.len() > 1,
                "a dispersed store sees two servers killed at once"
            );
        }
    }

    #[test]
    fn worst_cases_of_each_store() {
        assert_eq!(disperse().worst_cases().len(), 15);
        assert_eq!(
            route().worst_cases(),
            vec![vec![0, 2], vec![0, 3], vec![1, 2], vec![1, 3]]
        );
    }
}
