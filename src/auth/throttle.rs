//! Failed-login throttling per (source address, user name): after [`FREE_FAILURES`] failed
//! logins, each further attempt for that pair waits, `delay` after the fourth failure and
//! twice as long after each one more, up to `max_delay`. Attempts that arrive together queue
//! behind each other (each reserves its turn), so parallel connections gain nothing; one
//! that would wait longer than `max_delay` is refused at once without its password being
//! looked at. A successful login clears the pair.
//!
//! Pure: the caller passes the time and does the waiting.
//!
//! Invariants:
//! * Other addresses and other users are never slowed: the key is the pair. (IPv6 addresses
//!   count per /64, the block one host usually has.)
//! * Memory is bounded: at most [`MAX_ENTRIES`] pairs (a fixed-size key: the user name is
//!   hashed with a per-process key); beyond, pairs idle for [`FORGET_AFTER`] are dropped, and
//!   if none is, a new pair is not tracked (counted in `untracked`).
//! * Unknown and known users are treated alike, so throttling tells nothing about which
//!   users exist.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failed logins of a pair that cost nothing (typing mistakes).
pub const FREE_FAILURES: u32 = 3;
/// Pairs tracked at most.
pub const MAX_ENTRIES: usize = 100_000;
/// A pair with no failure for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// What an attempt must do before it may authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go on now.
    Now,
    /// Wait this long, then go on.
    After(Duration),
    /// Refuse: the pair's turn is further away than `max_delay`.
    Refuse(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// The address, IPv6 cut to its /64.
    net: IpAddr,
    user: u64,
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    /// The earliest moment the pair's next attempt may authenticate.
    next: Instant,
    last_failure: Instant,
}

/// The failed-login table.
#[derive(Debug)]
pub struct Throttle {
    delay: Duration,
    max_delay: Duration,
    hasher: RandomState,
    entries: Mutex<Table>,
    /// Pairs in the table (read without the lock on every login).
    len: AtomicUsize,
    /// Attempts that waited for their turn.
    pub delayed: AtomicU64,
    /// Attempts refused because their turn was too far away.
    pub refused: AtomicU64,
    /// Failures not tracked because the table was full.
    pub untracked: AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<Key, Entry>,
    last_purge: Option<Instant>,
}

impl Throttle {
    /// A table with the first delay `delay` (zero: throttling off) and the longest `max_delay`.
    pub fn new(delay: Duration, max_delay: Duration) -> Throttle {
        Throttle {
            delay,
            max_delay: max_delay.max(delay),
            hasher: RandomState::new(),
            entries: Mutex::default(),
            len: AtomicUsize::new(0),
            delayed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    fn key(&self, addr: IpAddr, user: &str) -> Key {
        let net = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        };
        Key { net, user: self.hasher.hash_one(user) }
    }

    /// The wait after `failures` failures (zero up to [`FREE_FAILURES`]).
    fn delay_after(&self, failures: u32) -> Duration {
        let Some(over) = failures.checked_sub(FREE_FAILURES + 1) else { return Duration::ZERO };
        self.delay.saturating_mul(1u32 << over.min(30)).min(self.max_delay)
    }

    /// Whether an attempt of `user` from `addr` arriving at `now` may authenticate, and
    /// when. An admitted attempt reserves its turn: the next one of the pair comes after it.
    pub fn admit(&self, addr: IpAddr, user: &str, now: Instant) -> Admit {
        if self.delay.is_zero() || self.len.load(Ordering::Relaxed) == 0 {
            return Admit::Now;
        }
        let key = self.key(addr, user);
        let mut t = self.entries.lock();
        let Some(e) = t.map.get_mut(&key) else { return Admit::Now };
        if now.saturating_duration_since(e.last_failure) >= FORGET_AFTER {
            // Quiet long enough: forgotten (the table is purged only when full).
            t.map.remove(&key);
            self.len.store(t.map.len(), Ordering::Relaxed);
            return Admit::Now;
        }
        if e.failures <= FREE_FAILURES {
            return Admit::Now;
        }
        let start = e.next.max(now);
        let wait = start - now;
        if wait > self.max_delay {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Admit::Refuse(wait);
        }
        e.next = start + self.delay_after(e.failures);
        if wait.is_zero() {
            Admit::Now
        } else {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            Admit::After(wait)
        }
    }

    /// Records a failed login of `user` from `addr` at `now`.
    pub fn failed(&self, addr: IpAddr, user: &str, now: Instant) {
        if self.delay.is_zero() {
            return;
        }
        let key = self.key(addr, user);
        let mut t = self.entries.lock();
        if !t.map.contains_key(&key) && t.map.len() >= MAX_ENTRIES {
            // Purge at most once a second: a flood of new pairs cannot make every failure
            // walk the whole table.
            if t.last_purge.is_none_or(|p| now.saturating_duration_since(p) >= Duration::from_secs(1)) {
                t.last_purge = Some(now);
                t.map.retain(|_, e| now.saturating_duration_since(e.last_failure) < FORGET_AFTER);
            }
            if t.map.len() >= MAX_ENTRIES {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let e = t.map.entry(key).or_insert(Entry { failures: 0, next: now, last_failure: now });
        if now.saturating_duration_since(e.last_failure) >= FORGET_AFTER {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        e.next = e.next.max(now + self.delay_after(e.failures));
        self.len.store(t.map.len(), Ordering::Relaxed);
    }

    /// Records a successful login: the pair starts afresh.
    pub fn succeeded(&self, addr: IpAddr, user: &str) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let key = self.key(addr, user);
        let mut t = self.entries.lock();
        t.map.remove(&key);
        self.len.store(t.map.len(), Ordering::Relaxed);
    }

    /// Pairs tracked now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no pair is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn free_failures_then_doubling_delays_up_to_the_limit() {
        let t = Throttle::new(100 * MS, 1000 * MS);
        let a = ip("10.0.0.1");
        let mut now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.admit(a, "u", now), Admit::Now);
            t.failed(a, "u", now);
        }
        // The fourth failure costs the first delay, then each one doubles it.
        assert_eq!(t.admit(a, "u", now), Admit::Now);
        t.failed(a, "u", now);
        let mut waits = Vec::new();
        for _ in 0..6 {
            match t.admit(a, "u", now) {
                Admit::After(w) => {
                    waits.push(w.as_millis());
                    now += w;
                }
                other => panic!("expected a wait, got {other:?}"),
            }
            t.failed(a, "u", now);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn parallel_attempts_queue_and_the_far_ones_are_refused() {
        let t = Throttle::new(100 * MS, 1000 * MS);
        let a = ip("10.0.0.1");
        let now = Instant::now();
        for _ in 0..=FREE_FAILURES {
            t.failed(a, "u", now);
        }
        // 20 attempts at the same moment: each waits one more turn; past 1 s they are refused.
        let outcomes: Vec<Admit> = (0..20).map(|_| t.admit(a, "u", now)).collect();
        let waits: Vec<u128> =
            outcomes.iter().filter_map(|o| if let Admit::After(w) = o { Some(w.as_millis()) } else { None }).collect();
        assert_eq!(waits, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
        assert_eq!(outcomes.iter().filter(|o| matches!(o, Admit::Refuse(_))).count(), 10);
        assert_eq!(t.refused.load(Ordering::Relaxed), 10);
        assert_eq!(t.delayed.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn other_users_and_addresses_are_not_slowed_and_success_clears() {
        let t = Throttle::new(100 * MS, 1000 * MS);
        let now = Instant::now();
        for _ in 0..10 {
            t.failed(ip("10.0.0.1"), "u", now);
        }
        assert!(matches!(t.admit(ip("10.0.0.1"), "u", now), Admit::After(_)));
        assert_eq!(t.admit(ip("10.0.0.1"), "v", now), Admit::Now);
        assert_eq!(t.admit(ip("10.0.0.2"), "u", now), Admit::Now);
        // The same /64 is one host; the next /64 is another.
        for _ in 0..10 {
            t.failed(ip("2001:db8::1"), "u", now);
        }
        assert!(matches!(t.admit(ip("2001:db8::ffff"), "u", now), Admit::After(_)));
        assert_eq!(t.admit(ip("2001:db8:0:1::1"), "u", now), Admit::Now);
        t.succeeded(ip("10.0.0.1"), "u");
        assert_eq!(t.admit(ip("10.0.0.1"), "u", now + 5000 * MS), Admit::Now);
    }

    #[test]
    fn forgotten_after_a_quiet_period_and_zero_delay_is_off() {
        let t = Throttle::new(100 * MS, 1000 * MS);
        let now = Instant::now();
        for _ in 0..10 {
            t.failed(ip("10.0.0.1"), "u", now);
        }
        let later = now + FORGET_AFTER + 1000 * MS;
        assert_eq!(t.admit(ip("10.0.0.1"), "u", later), Admit::Now);
        assert!(t.is_empty(), "a quiet pair is dropped when it is next seen");
        // Its next attempts are not queued behind a turn the old failures would reserve.
        assert_eq!(t.admit(ip("10.0.0.1"), "u", later), Admit::Now);
        t.failed(ip("10.0.0.1"), "u", later);
        assert_eq!(t.admit(ip("10.0.0.1"), "u", later), Admit::Now, "the count started again");

        let off = Throttle::new(Duration::ZERO, Duration::ZERO);
        for _ in 0..100 {
            off.failed(ip("10.0.0.1"), "u", now);
        }
        assert_eq!(off.admit(ip("10.0.0.1"), "u", now), Admit::Now);
        assert!(off.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Throttle::new(100 * MS, 1000 * MS);
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            t.failed(IpAddr::V4(i.into()), "u", now);
        }
        assert_eq!(t.len(), MAX_ENTRIES);
        assert_eq!(t.untracked.load(Ordering::Relaxed), 10);
        // Once the old pairs are quiet long enough, new ones take their place.
        let later = now + FORGET_AFTER;
        t.failed(ip("192.0.2.1"), "u", later);
        assert_eq!(t.len(), 1);
    }
}
