//! `Limit`: a lock-free counter capping server connections across pools (PgBouncer's
//! `max_db_connections` and `max_user_connections`). A maximum of 0 means unlimited.

//! When the cap is reached, a pool that needs a connection may close an *idle* connection
//! of another pool sharing the cap (PgBouncer does the same), so one user's idle servers do
//! not starve another user of the same database.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::Inner;

/// A shared cap on open server connections.
#[derive(Default)]
pub struct Limit {
    max: AtomicU32,
    current: AtomicU32,
    /// Pools sharing this cap.
    members: Mutex<Vec<Weak<Inner>>>,
}

impl Limit {
    /// A limit of `max` connections (0 = unlimited).
    pub fn new(max: u32) -> Limit {
        Limit { max: AtomicU32::new(max), current: AtomicU32::new(0), members: Mutex::new(Vec::new()) }
    }

    /// Changes the cap (a reload); connections over a lower cap close as they are released.
    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Release);
    }

    /// Records a pool sharing this cap.
    pub(super) fn register(&self, pool: &Arc<Inner>) {
        let mut m = self.members.lock();
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(pool));
    }

    /// Whether the cap is reached.
    pub fn at_max(&self) -> bool {
        {
            let max = self.max.load(Ordering::Acquire);
            max != 0 && self.current.load(Ordering::Acquire) >= max
        }
    }

    /// Closes one idle connection of another pool sharing this cap (one whose clients are not
    /// waiting). Returns whether one was closed; its slot frees a unit of the cap.
    pub(super) fn evict_idle_from_others(&self, me: &Arc<Inner>) -> bool {
        let members: Vec<Arc<Inner>> = self.members.lock().iter().filter_map(Weak::upgrade).collect();
        for m in members {
            if Arc::ptr_eq(&m, me) {
                continue;
            }
            let victim = {
                let mut st = m.state.lock();
                if st.waiters.is_empty() {
                    st.idle.pop()
                } else {
                    None
                }
            };
            if let Some(v) = victim {
                tracing::debug!("closing an idle server connection of another pool to honour a connection limit");
                drop(v);
                return true;
            }
        }
        false
    }

    /// Takes one unit if below the maximum.
    pub fn try_acquire(&self) -> bool {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                let max = self.max.load(Ordering::Acquire);
                (max == 0 || c < max).then_some(c + 1)
            })
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
