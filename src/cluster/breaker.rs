//! Per-host circuit breaker for connection attempts (pools and probes alike).
//!
//! `Closed` → after `threshold` consecutive transport failures → `Open` for a backoff that
//! doubles on every failed trial up to a cap → once it has passed, `HalfOpen`: exactly one
//! attempt (the trial) is let through; its success closes the breaker, its failure opens it
//! again. Only failures to reach or talk to the host count; a server that refuses a login
//! (wrong password, missing database) is reachable and does not trip it.
//!
//! Invariant: the mutex is held only for the few instructions of a transition, never across
//! an `.await`.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub threshold: u32,
    /// First open period.
    pub backoff: Duration,
    /// Longest open period.
    pub max_backoff: Duration,
}

/// What the breaker currently allows, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts allowed.
    Closed,
    /// No attempts until the backoff has passed.
    Open {
        /// Time left.
        remaining: Duration,
    },
    /// One trial attempt allowed (or in flight).
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    failures: u32,
    open_until: Option<Instant>,
    /// Next open period.
    backoff: Duration,
    trial_in_flight: bool,
    /// Attempts refused while open (for tests and the admin console).
    refused: u64,
}

/// A circuit breaker; see the module docs.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    /// Mirror of `open_until` for [`Breaker::is_open`] (milliseconds after `created`, plus one;
    /// 0 = not open), so the router reads it per request without the mutex.
    open_until_ms: AtomicU64,
    created: Instant,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner { backoff: settings.backoff, ..Inner::default() }),
            open_until_ms: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// Whether the breaker is open now (no attempt would be allowed). Lock-free, for the
    /// router's per-request choice.
    #[inline]
    pub fn is_open(&self) -> bool {
        match self.open_until_ms.load(Ordering::Acquire) {
            0 => false,
            until => (self.created.elapsed().as_millis() as u64) < until,
        }
    }

    /// Asks to make one connection attempt now. `Err(wait)` means the breaker is open (or a
    /// trial is already in flight) and no attempt may be made for about `wait`.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut b = self.inner.lock();
        match b.open_until {
            None => Ok(()),
            Some(until) if now < until => {
                b.refused += 1;
                Err(until - now)
            }
            Some(_) if b.trial_in_flight => {
                b.refused += 1;
                Err(Duration::from_millis(100))
            }
            Some(_) => {
                b.trial_in_flight = true;
                Ok(())
            }
        }
    }

    /// Reports a successful connection: closes the breaker.
    pub fn success(&self) {
        let mut b = self.inner.lock();
        b.failures = 0;
        b.open_until = None;
        self.open_until_ms.store(0, Ordering::Release);
        b.trial_in_flight = false;
        b.backoff = self.settings.backoff;
    }

    /// Reports a failed attempt (transport failure). Returns true if this opened the breaker.
    pub fn failure(&self) -> bool {
        let mut b = self.inner.lock();
        b.failures = b.failures.saturating_add(1);
        let trial = std::mem::take(&mut b.trial_in_flight);
        if trial || (b.open_until.is_none() && b.failures >= self.settings.threshold) {
            let period = b.backoff;
            let until = Instant::now() + period;
            b.open_until = Some(until);
            let ms = until.saturating_duration_since(self.created).as_millis() as u64;
            self.open_until_ms.store(ms.max(1), Ordering::Release);
            b.backoff = (period * 2).min(self.settings.max_backoff);
            return true;
        }
        false
    }

    /// Gives back a trial that ended without telling anything about the host (e.g. the
    /// attempt was abandoned), so another one can be made.
    pub fn abandon(&self) {
        self.inner.lock().trial_in_flight = false;
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let now = Instant::now();
        let b = self.inner.lock();
        match b.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open { remaining: until - now },
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Attempts refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.lock().refused
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.inner.lock().failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings { threshold: 3, backoff: 30 * MS, max_backoff: 100 * MS })
    }

    #[test]
    fn opens_after_threshold_then_half_opens_for_one_trial() {
        let b = breaker();
        for _ in 0..2 {
            assert!(b.try_acquire().is_ok());
            assert!(!b.failure());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_ok());
        assert!(b.failure(), "third consecutive failure opens it");
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(b.is_open());
        assert!(b.try_acquire().is_err());
        assert_eq!(b.refused(), 1);
        std::thread::sleep(35 * MS);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.is_open(), "half-open lets a trial through");
        assert!(b.try_acquire().is_ok(), "one trial");
        assert!(b.try_acquire().is_err(), "only one trial at a time");
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn failed_trials_double_the_backoff_up_to_the_cap() {
        let b = breaker();
        for _ in 0..3 {
            b.failure();
        }
        let mut periods = Vec::new();
        for _ in 0..4 {
            let BreakerState::Open { remaining } = b.state() else { panic!("open expected") };
            periods.push(remaining);
            std::thread::sleep(remaining + 2 * MS);
            assert!(b.try_acquire().is_ok());
            assert!(b.failure(), "a failed trial opens it again");
        }
        // 30, 60, 100 (capped), 100 ms.
        assert!(periods[0] <= 30 * MS && periods[1] > 30 * MS && periods[1] <= 60 * MS, "{periods:?}");
        assert!(periods[2] > 60 * MS && periods[2] <= 100 * MS && periods[3] <= 100 * MS, "{periods:?}");
    }

    #[test]
    fn success_resets_the_count_and_abandon_frees_the_trial() {
        let b = breaker();
        b.failure();
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed, "failures must be consecutive");
        b.failure();
        std::thread::sleep(35 * MS);
        assert!(b.try_acquire().is_ok());
        b.abandon();
        assert!(b.try_acquire().is_ok(), "an abandoned trial can be retried");
    }
}
