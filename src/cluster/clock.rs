//! Read-your-writes across connections: the "last write" moment of a scope (a database, or
//! one user of it), shared by every client of that scope.
//!
//! A client's write is *in flight* from the moment its server is attached for a request
//! that may write on the primary until that server is released; at release the scope's
//! moment moves to [`Cluster::now_ms`](super::Cluster::now_ms). A read must see every write
//! acknowledged before it arrived; an acknowledgement reaches the client a moment before
//! the session notes the release, so while any write of the scope is in flight a read
//! treats the write as made *now* ([`WriteClock::requirement`]).
//!
//! Invariants: `in_flight` counts writes begun and not yet ended (every
//! [`WriteClock::begin`] is matched by exactly one [`WriteClock::end`]); `since` only grows.
//! Both are plain atomics: a write costs two atomic read-modify-writes on the scope's line,
//! a read two loads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The last write of one scope; see the module docs.
#[derive(Debug, Default)]
pub struct WriteClock {
    /// `now_ms` of the latest write released (0: none).
    since: AtomicU64,
    /// Writes in flight.
    in_flight: AtomicU32,
    /// The latest requirement resolved to a primary position ([`WriteClock::resolve`]), and
    /// that position. Once a requirement is resolved, later reads with the same one use it,
    /// not the primary's newest position, which would run ahead of the replicas for as long
    /// as others write.
    resolved_since: AtomicU64,
    resolved_lsn: AtomicU64,
}

impl WriteClock {
    /// A clock whose scope may have written at `now_ms` (a clock made while clients may
    /// already have written, e.g. after a reload rebuilt the database).
    pub fn written_at(now_ms: u64) -> WriteClock {
        WriteClock { since: AtomicU64::new(now_ms), ..WriteClock::default() }
    }

    /// A write of the scope begins (its server is attached).
    #[inline]
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// The write begun by [`WriteClock::begin`] ended at `now_ms` (its server is released,
    /// or lost, or the client left).
    #[inline]
    pub fn end(&self, now_ms: u64) {
        // (The moment first: a reader that sees the count drop sees the moment too.)
        self.since.fetch_max(now_ms, Ordering::AcqRel);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// What a read arriving at `now_ms` must see: the `now_ms` of a write it must cover
    /// (0: none). A primary position measured by a probe that started after it covers it.
    #[inline]
    pub fn requirement(&self, now_ms: u64) -> u64 {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return now_ms;
        }
        self.since.load(Ordering::Acquire)
    }

    /// The primary position that covers `requirement` (a [`WriteClock::requirement`]), by
    /// `measure(requirement)`: the primary's position from a probe started after it, `None`
    /// until there is one. Remembered for the next read with the same requirement.
    pub fn resolve(&self, requirement: u64, measure: impl FnOnce(u64) -> Option<u64>) -> Option<u64> {
        if self.resolved_since.load(Ordering::Acquire) >= requirement {
            // (A later resolution's position is at least as high: still covering.)
            return Some(self.resolved_lsn.load(Ordering::Acquire));
        }
        let lsn = measure(requirement)?;
        // (Position first: a reader that sees the moment sees at least this position.)
        self.resolved_lsn.fetch_max(lsn, Ordering::AcqRel);
        self.resolved_since.fetch_max(requirement, Ordering::AcqRel);
        Some(lsn)
    }

    /// Writes in flight now (for the console).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_in_flight_counts_as_made_now_and_a_released_one_at_its_release() {
        let c = WriteClock::default();
        assert_eq!(c.requirement(5), 0, "nothing written");
        c.begin();
        assert_eq!(c.requirement(7), 7, "in flight: the read's own arrival");
        c.begin();
        c.end(9);
        assert_eq!(c.requirement(10), 10, "another still in flight");
        c.end(8);
        assert_eq!(c.requirement(11), 9, "the latest release, not the last to end");
        assert_eq!(c.in_flight(), 0);
        assert_eq!(WriteClock::written_at(3).requirement(4), 3);
    }

    #[test]
    fn a_resolved_requirement_keeps_its_position_while_the_primary_moves_on() {
        let c = WriteClock::default();
        c.begin();
        c.end(10);
        assert_eq!(c.resolve(10, |_| None), None, "no probe after the write yet");
        assert_eq!(c.resolve(10, |since| (since == 10).then_some(500)), Some(500));
        assert_eq!(c.resolve(10, |_| Some(900)), Some(500), "not the primary's newest position");
        assert_eq!(c.resolve(12, |_| Some(900)), Some(900), "a later write needs a later position");
        assert_eq!(c.resolve(10, |_| unreachable!()), Some(900), "higher, still covering");
    }
}
