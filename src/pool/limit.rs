//! `Limit`: a lock-free counter capping server connections across pools (PgBouncer's
//! `max_db_connections` and `max_user_connections`). A maximum of 0 means unlimited.

use std::sync::atomic::{AtomicU32, Ordering};

/// A shared cap on open server connections.
#[derive(Debug, Default)]
pub struct Limit {
    max: u32,
    current: AtomicU32,
}

impl Limit {
    /// A limit of `max` connections (0 = unlimited).
    pub fn new(max: u32) -> Limit {
        Limit { max, current: AtomicU32::new(0) }
    }

    /// Takes one unit if below the maximum.
    pub fn try_acquire(&self) -> bool {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| (self.max == 0 || c < self.max).then_some(c + 1))
            .is_ok()
    }

    /// Returns one unit taken with `try_acquire`.
    pub fn release(&self) {
        let _ = self.current.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    }

    /// Units currently taken.
    pub fn current(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let l = Limit::new(2);
        assert!(l.try_acquire() && l.try_acquire());
        assert!(!l.try_acquire());
        l.release();
        assert!(l.try_acquire());
        let unlimited = Limit::new(0);
        assert!((0..1000).all(|_| unlimited.try_acquire()));
    }
}
