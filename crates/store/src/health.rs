//! Per-member health shared by the router and the dispersed store: recent failures put a member in a
//! back-off window during which it is tried last (or skipped), and a moving average of call latency
//! orders healthy members.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// The first back-off after a failure; doubled per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest a failing member is kept in back-off before it is tried first again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct HealthState {
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
    latency_ewma_micros: f64,
}

/// The health record of one member store.
#[derive(Debug, Default)]
pub(crate) struct Health {
    state: Mutex<HealthState>,
}

/// A snapshot used to order members: lower sorts first.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub(crate) struct HealthRank {
    in_backoff: bool,
    consecutive_failures: u32,
    latency_ewma_micros: f64,
}

impl Health {
    /// Records a successful call that took `elapsed`.
    pub(crate) fn record_success(&self, elapsed: Duration) {
        let mut s = self.state.lock();
        s.consecutive_failures = 0;
        s.backoff_until = None;
        let micros = elapsed.as_secs_f64() * 1e6;
        s.latency_ewma_micros = if s.latency_ewma_micros == 0.0 {
            micros
        } else {
            0.8 * s.latency_ewma_micros + 0.2 * micros
        };
    }

    /// Records a failed call: the member enters (a longer) back-off.
    pub(crate) fn record_failure(&self) {
        let mut s = self.state.lock();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let shift = s.consecutive_failures.saturating_sub(1).min(16);
        let backoff = FIRST_BACKOFF.saturating_mul(1u32 << shift).min(MAX_BACKOFF);
        s.backoff_until = Some(Instant::now() + backoff);
    }

    /// Whether the member failed recently and is still in its back-off window.
    pub(crate) fn in_backoff(&self) -> bool {
        self.state
            .lock()
            .backoff_until
            .is_some_and(|t| Instant::now() < t)
    }

    /// The member's current rank for ordering (healthy and fast first).
    pub(crate) fn rank(&self) -> HealthRank {
        let s = self.state.lock();
        HealthRank {
            in_backoff: s.backoff_until.is_some_and(|t| Instant::now() < t),
            consecutive_failures: s.consecutive_failures,
            latency_ewma_micros: s.latency_ewma_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_rank_after_successes_and_recover() {
        let good = Health::default();
        let bad = Health::default();
        good.record_success(Duration::from_millis(5));
        bad.record_success(Duration::from_millis(1));
        assert!(bad.rank() < good.rank(), "faster member ranks first");
        bad.record_failure();
        assert!(bad.in_backoff());
        assert!(good.rank() < bad.rank(), "failed member ranks last");
        bad.record_success(Duration::from_millis(1));
        assert!(!bad.in_backoff());
    }
}
