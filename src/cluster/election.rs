//! Role decisions, as pure functions over what the probes saw (unit-tested without a
//! server): up/down hysteresis per host, who is the primary, who is fenced, replica lag and
//! read eligibility.
//!
//! Rules (see `docs/failover.md`):
//! - A host is *writable* when its latest probe succeeded and said it is not in recovery.
//! - Exactly one writable host (allowed to be primary, and up) → it is the primary, as soon
//!   as it is seen: a promoted replica takes over without waiting for the old primary to be
//!   declared down.
//! - Two or more writable hosts (split brain) → the one on the strictly highest timeline is
//!   the primary; if timelines are equal or unknown there is no primary and writes are
//!   refused. Writable hosts that are not the primary are fenced.
//! - No writable host → the current primary stays while its probes fail but it is not yet
//!   down (a blip is not a failover); otherwise there is none.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::lag::{History, Lag};
use crate::config::RoleHint;

/// One successful probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` (primary only).
    pub current_lsn: Option<u64>,
    /// `pg_last_wal_receive_lsn()` (replica).
    pub receive_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()` (replica).
    pub replay_lsn: Option<u64>,
    /// `pg_is_wal_replay_paused()` (replica).
    pub replay_paused: bool,
    /// Timeline (primary: of its WAL insert position; replica: received, if visible).
    pub timeline: Option<u32>,
}

/// Thresholds and bounds the decisions use.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Failed probes before down; they must also span `fail_threshold - 1` intervals, so
    /// that the faster probing of a failover does not shorten the tolerance for a blip.
    pub fail_threshold: u32,
    /// `health_check_interval`.
    pub interval: Duration,
    /// Good probes before a down host is up.
    pub success_threshold: u32,
    /// Lag bound in time.
    pub max_lag: Duration,
    /// Lag bound in bytes; 0 = none.
    pub max_lag_bytes: u64,
}

/// Who the primary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// None known (failover in progress, or no host accepts writes).
    None,
    /// This host.
    Host(usize),
    /// Several hosts accept writes and timelines do not say which is right: writes are
    /// refused.
    SplitBrain,
}

/// What the coordinator knows of one host (written only by it).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Configured constraint.
    pub hint: Option<RoleHint>,
    /// Latest successful probe.
    pub last: Option<Probe>,
    /// Whether the latest probe succeeded.
    pub reachable: bool,
    /// Up per the hysteresis (initially down, up at the first success).
    pub up: bool,
    /// Whether any probe result came in yet.
    pub seen: bool,
    /// Consecutive failures.
    pub fails: u32,
    /// When the current run of failures started.
    pub failing_since: Option<Instant>,
    /// Consecutive successes.
    pub successes: u32,
    /// Wall-clock time of the latest probe result.
    pub last_probe: Option<SystemTime>,
    /// Error of the latest failed probe.
    pub last_error: Option<String>,
    /// SQLSTATE of the server's refusal of the latest probe's login, if it refused it.
    pub refused: Option<std::sync::Arc<str>>,
}

impl Tracker {
    /// Applies one probe result. Returns true when `up` changed.
    pub fn observe(&mut self, result: Result<Probe, String>, rules: &Rules) -> bool {
        let was_up = self.up;
        let first = !self.seen;
        self.seen = true;
        self.last_probe = Some(SystemTime::now());
        match result {
            Ok(p) => {
                self.reachable = true;
                self.fails = 0;
                self.failing_since = None;
                self.successes = self.successes.saturating_add(1);
                self.last = Some(p);
                self.last_error = None;
                if first || self.successes >= rules.success_threshold {
                    self.up = true;
                }
            }
            Err(e) => {
                self.reachable = false;
                self.successes = 0;
                self.fails = self.fails.saturating_add(1);
                self.last_error = Some(e);
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                let span = rules.interval * rules.fail_threshold.saturating_sub(1);
                if self.fails >= rules.fail_threshold && since.elapsed() >= span {
                    self.up = false;
                }
            }
        }
        was_up != self.up
    }

    /// Latest probe succeeded and the host is not in recovery.
    pub fn writable(&self) -> bool {
        self.reachable && self.last.as_ref().is_some_and(|p| !p.in_recovery)
    }

    /// Latest probe succeeded and the host is in recovery.
    pub fn in_recovery(&self) -> bool {
        self.reachable && self.last.as_ref().is_some_and(|p| p.in_recovery)
    }

    fn timeline(&self) -> Option<u32> {
        self.last.as_ref().and_then(|p| p.timeline)
    }
}

/// The primary decided from `hosts`, given the current one.
/// `floor` is the highest timeline a primary of this database was elected on: a writable host
/// on a lower (or unknown) timeline is an old primary that came back, never a candidate, even
/// while the real primary's probes fail.
pub fn elect(hosts: &[Tracker], current: Primary, floor: Option<u32>) -> Primary {
    let writable: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].writable() && hosts[i].hint != Some(RoleHint::Replica) && !behind(&hosts[i], floor))
        .collect();
    match writable.as_slice() {
        [] => match current {
            // Unreachable but not yet down: a blip, not a failover.
            Primary::Host(c) if !hosts[c].reachable && hosts[c].up => current,
            _ => Primary::None,
        },
        &[only] => {
            if hosts[only].up {
                Primary::Host(only)
            } else {
                Primary::None
            }
        }
        several => {
            let best = several.iter().copied().max_by_key(|&i| hosts[i].timeline());
            let Some(best) = best else { return Primary::None };
            let tl = hosts[best].timeline();
            let known = several.iter().all(|&i| hosts[i].timeline().is_some());
            let unique = known && several.iter().filter(|&&i| hosts[i].timeline() == tl).count() == 1;
            match (unique, hosts[best].up) {
                (true, true) => Primary::Host(best),
                (true, false) => Primary::None,
                (false, _) => Primary::SplitBrain,
            }
        }
    }
}

/// Whether host `i` must take no traffic: it accepts writes but another host is the
/// primary, or the primary is undecidable (split brain), or it must never be the primary.
/// A writable host waiting for its success threshold while there is no primary (a primary
/// restarting without a failover) is a candidate, not fenced.
pub fn fenced(hosts: &[Tracker], primary: Primary, floor: Option<u32>, i: usize) -> bool {
    hosts[i].writable()
        && match primary {
            Primary::Host(p) => p != i,
            Primary::SplitBrain => true,
            Primary::None => hosts[i].hint == Some(RoleHint::Replica) || behind(&hosts[i], floor),
        }
}

/// On a timeline below `floor` (or an unknown one while a floor is known).
fn behind(h: &Tracker, floor: Option<u32>) -> bool {
    floor.is_some_and(|f| h.timeline().is_none_or(|t| t < f))
}

/// Lag of host `i` if it is a replica with a known replay position and the primary was
/// sampled.
pub fn lag(hosts: &[Tracker], history: &History, i: usize, now: Instant) -> Option<Lag> {
    let p = hosts[i].last.as_ref().filter(|_| hosts[i].in_recovery())?;
    history.lag(p.replay_lsn?, now)
}

/// Whether replica `i` may take reads: up, in recovery, allowed to be a replica, not
/// fenced, not known to be on an older timeline than the primary (still following a
/// replaced primary), and within both lag bounds. With no primary ever sampled, lag cannot
/// be measured and is not held against it.
pub fn eligible(hosts: &[Tracker], history: &History, rules: &Rules, primary: Primary, i: usize, now: Instant) -> bool {
    let h = &hosts[i];
    if !h.up || !h.in_recovery() || h.hint == Some(RoleHint::Primary) {
        return false;
    }
    if let (Primary::Host(p), Some(tl)) = (primary, h.timeline()) {
        if hosts[p].timeline().is_some_and(|ptl| tl < ptl) {
            return false;
        }
    }
    // With no primary (down, or split brain) its position is unknown: lag is not held against
    // a replica (docs/failover.md#lag), whatever the last primary's samples say.
    let has_primary = matches!(primary, Primary::Host(_));
    match lag(hosts, history, i, now).filter(|_| has_primary) {
        Some(l) => l.time <= rules.max_lag && (rules.max_lag_bytes == 0 || l.bytes <= rules.max_lag_bytes),
        None => (history.latest().is_none() || !has_primary) && h.last.as_ref().is_some_and(|p| p.replay_lsn.is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        fail_threshold: 3,
        interval: Duration::ZERO,
        success_threshold: 2,
        max_lag: Duration::from_secs(1),
        max_lag_bytes: 0,
    };

    fn primary(tl: u32) -> Result<Probe, String> {
        Ok(Probe { in_recovery: false, current_lsn: Some(1000), timeline: Some(tl), ..Probe::default() })
    }

    fn replica(replay: u64) -> Result<Probe, String> {
        Ok(Probe { in_recovery: true, replay_lsn: Some(replay), receive_lsn: Some(replay), ..Probe::default() })
    }

    fn down() -> Result<Probe, String> {
        Err("connection refused".into())
    }

    fn hosts(n: usize) -> Vec<Tracker> {
        vec![Tracker::default(); n]
    }

    #[test]
    fn down_needs_the_failures_to_span_the_threshold_in_intervals() {
        let rules = Rules { interval: Duration::from_millis(40), ..RULES };
        let mut h = hosts(1);
        h[0].observe(primary(1), &rules);
        for _ in 0..5 {
            h[0].observe(down(), &rules);
        }
        assert!(h[0].up, "five quick failures are still a blip");
        std::thread::sleep(Duration::from_millis(85));
        h[0].observe(down(), &rules);
        assert!(!h[0].up, "failures over two intervals: down");
    }

    #[test]
    fn roles_found_in_any_order() {
        for p in 0..3 {
            let mut h = hosts(3);
            for (i, t) in h.iter_mut().enumerate() {
                t.observe(if i == p { primary(1) } else { replica(10) }, &RULES);
            }
            assert_eq!(elect(&h, Primary::None, None), Primary::Host(p));
            assert!((0..3).all(|i| !fenced(&h, Primary::Host(p), None, i)));
        }
    }

    #[test]
    fn promoted_replica_takes_over_before_the_old_primary_is_down() {
        let mut h = hosts(3);
        h[0].observe(primary(1), &RULES);
        h[1].observe(replica(10), &RULES);
        h[2].observe(replica(10), &RULES);
        let mut cur = elect(&h, Primary::None, None);
        assert_eq!(cur, Primary::Host(0));
        // One failed probe of the primary: still the primary (blip).
        h[0].observe(down(), &RULES);
        cur = elect(&h, cur, None);
        assert_eq!(cur, Primary::Host(0));
        // Host 2 promoted: it is writable and up, so it takes over right away.
        h[2].observe(primary(2), &RULES);
        cur = elect(&h, cur, None);
        assert_eq!(cur, Primary::Host(2));
    }

    #[test]
    fn dead_primary_without_promotion_leaves_no_primary_after_the_threshold() {
        let mut h = hosts(2);
        h[0].observe(primary(1), &RULES);
        h[1].observe(replica(10), &RULES);
        let mut cur = elect(&h, Primary::None, None);
        for n in 1..=3 {
            h[0].observe(down(), &RULES);
            cur = elect(&h, cur, None);
            assert_eq!(cur == Primary::None, n == 3, "after {n} failures");
        }
        // It comes back: up only after the success threshold, and not fenced meanwhile.
        h[0].observe(primary(1), &RULES);
        assert_eq!(elect(&h, cur, None), Primary::None);
        assert!(!fenced(&h, Primary::None, None, 0));
        h[0].observe(primary(1), &RULES);
        assert_eq!(elect(&h, cur, None), Primary::Host(0));
    }

    #[test]
    fn split_brain_higher_timeline_wins_equal_refuses() {
        let mut h = hosts(2);
        h[0].observe(primary(1), &RULES);
        h[1].observe(primary(2), &RULES);
        let cur = elect(&h, Primary::Host(0), None);
        assert_eq!(cur, Primary::Host(1));
        assert!(fenced(&h, cur, None, 0));
        assert!(!fenced(&h, cur, None, 1));

        let mut h = hosts(2);
        h[0].observe(primary(3), &RULES);
        h[1].observe(primary(3), &RULES);
        assert_eq!(elect(&h, Primary::Host(0), None), Primary::SplitBrain);
        assert!(fenced(&h, Primary::SplitBrain, None, 0) && fenced(&h, Primary::SplitBrain, None, 1));

        let mut h = hosts(2);
        h[0].observe(primary(3), &RULES);
        h[1].observe(Ok(Probe { in_recovery: false, ..Probe::default() }), &RULES);
        assert_eq!(elect(&h, Primary::None, None), Primary::SplitBrain, "unknown timeline cannot decide");
    }

    #[test]
    fn old_primary_back_on_an_older_timeline_is_fenced() {
        let mut h = hosts(2);
        h[0].observe(primary(1), &RULES);
        h[1].observe(replica(5), &RULES);
        let mut cur = elect(&h, Primary::None, None);
        for _ in 0..3 {
            h[0].observe(down(), &RULES);
        }
        h[1].observe(primary(2), &RULES);
        cur = elect(&h, cur, None);
        assert_eq!(cur, Primary::Host(1));
        for _ in 0..3 {
            h[0].observe(primary(1), &RULES);
            cur = elect(&h, cur, None);
            assert_eq!(cur, Primary::Host(1));
            assert!(fenced(&h, cur, None, 0));
        }
    }

    #[test]
    fn fenced_old_primary_is_not_elected_when_the_new_one_blips() {
        let mut h = hosts(2);
        h[0].observe(primary(1), &RULES);
        h[1].observe(primary(2), &RULES);
        let cur = elect(&h, Primary::Host(0), Some(1));
        assert_eq!(cur, Primary::Host(1));
        let floor = Some(2);
        // One failed probe of the new primary: the old one is the only writable host left.
        h[1].observe(down(), &RULES);
        assert_eq!(elect(&h, cur, floor), Primary::Host(1), "a blip keeps the new primary");
        assert!(fenced(&h, cur, floor, 0));
        // The new primary really dies: still not the old one, which stays fenced.
        for _ in 0..3 {
            h[1].observe(down(), &RULES);
        }
        assert_eq!(elect(&h, cur, floor), Primary::None);
        assert!(fenced(&h, Primary::None, floor, 0), "an older timeline is fenced even without a primary");
        // A host on the floor's timeline or later can be elected.
        h[1].observe(primary(2), &RULES);
        h[1].observe(primary(2), &RULES);
        assert_eq!(elect(&h, Primary::None, floor), Primary::Host(1));
    }

    #[test]
    fn role_hints_constrain() {
        let mut h = hosts(2);
        h[0].hint = Some(RoleHint::Replica);
        h[0].observe(primary(1), &RULES);
        h[1].observe(replica(5), &RULES);
        assert_eq!(elect(&h, Primary::None, None), Primary::None);
        assert!(fenced(&h, Primary::None, None, 0), "a writable host that must not be primary is fenced");

        let mut h = hosts(2);
        h[0].hint = Some(RoleHint::Primary);
        h[0].observe(replica(5), &RULES);
        h[1].observe(replica(5), &RULES);
        let hist = History::default();
        let now = Instant::now();
        assert!(!eligible(&h, &hist, &RULES, Primary::None, 0, now));
        assert!(eligible(&h, &hist, &RULES, Primary::None, 1, now));
    }

    #[test]
    fn eligibility_follows_lag_bounds() {
        let t0 = Instant::now();
        let mut hist = History::default();
        hist.record(t0, 100);
        hist.record(t0 + Duration::from_secs(1), 200);
        let mut h = hosts(2);
        h[0].observe(primary(1), &RULES);
        h[1].observe(replica(200), &RULES);
        let now = t0 + Duration::from_secs(5);
        let p = Primary::Host(0);
        assert!(eligible(&h, &hist, &RULES, p, 1, now));
        h[1].observe(replica(150), &RULES);
        // (The primary passed 150 half way between its samples at 100 and 200.)
        assert_eq!(lag(&h, &hist, 1, now).unwrap().time, Duration::from_millis(4500));
        assert!(!eligible(&h, &hist, &RULES, p, 1, now));
        // With the primary lost (declared down, or split brain) its position is unknown: lag
        // is not held against the replica.
        assert!(eligible(&h, &hist, &RULES, Primary::None, 1, now));
        assert!(eligible(&h, &hist, &RULES, Primary::SplitBrain, 1, now));
        assert!(eligible(&h, &hist, &RULES, p, 1, t0 + Duration::from_millis(1500)));
        let bytes = Rules { max_lag_bytes: 10, ..RULES };
        assert!(!eligible(&h, &hist, &bytes, p, 1, t0 + Duration::from_millis(1500)));
        assert!(!eligible(&h, &hist, &RULES, p, 0, now), "the primary is not a replica");
        // Still following a replaced primary: an older timeline than the primary's.
        h[1].observe(
            Ok(Probe { in_recovery: true, replay_lsn: Some(999), timeline: Some(0), ..Probe::default() }),
            &RULES,
        );
        assert!(!eligible(&h, &hist, &RULES, p, 1, now), "older timeline");
        h[1].observe(down(), &RULES);
        assert!(!eligible(&h, &hist, &RULES, p, 1, t0 + Duration::from_millis(1500)), "unreachable");
    }
}
