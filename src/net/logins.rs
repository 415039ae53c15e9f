//! Connections that have not sent their first byte yet, against slow-loris: a client that
//! opens sockets and sends nothing must not take every `max_client_conn` slot. (Only this
//! phase is tracked: a registration around the whole login cost a fifth more instructions
//! per login in the cost gate; a client stalling later is bounded by
//! `client_login_timeout`.)
//!
//! Invariants: a new connection beyond `per_host` connections logging in from its address,
//! or beyond `total` overall, closes the **oldest** one over the limit, if that one has been
//! logging in for at least [`MIN_AGE`] (a burst of real logins, which take milliseconds,
//! displaces nobody); and when `max_client_conn` is full, the server makes room the same way
//! ([`Logins::evict_oldest`]). So sockets that send nothing hold their places for at most
//! `MIN_AGE` against newer arrivals. Entries leave when the login ends, however it ends.
//!
//! After its first byte, a connection still counts against its address until its login
//! ends ([`Logins::authenticating`]): one over `per_host` is refused at once (no eviction
//! there: a client that spoke may be a real one), so a host that starts logins and stalls in
//! them holds at most `per_host` places, whatever `client_login_timeout` is.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// How long a connection may log in before a newer one may displace it.
pub const MIN_AGE: Duration = Duration::from_secs(1);

/// One connection logging in.
#[derive(Debug, Default)]
pub struct Pending {
    /// Closed to make room for a newer connection.
    evicted: Notify,
}

impl Pending {
    /// Resolves when the connection must close to make room.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

/// The registry of connections logging in.
#[derive(Debug)]
pub struct Logins {
    per_host: usize,
    total: usize,
    /// Oldest first: source address, arrival, entry.
    pending: Mutex<VecDeque<(IpAddr, Instant, Arc<Pending>)>>,
    /// Connections past their first byte and not logged in yet, per source address.
    authenticating: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place among those logging in from its address; given back when dropped.
pub struct AuthSlot<'a> {
    logins: &'a Logins,
    ip: IpAddr,
}

impl Drop for AuthSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.logins.authenticating.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Removes its connection from [`Logins`] when dropped (the login ended).
pub struct LoginGuard<'a> {
    logins: &'a Logins,
    /// This connection's entry.
    pub pending: Arc<Pending>,
}

impl Drop for LoginGuard<'_> {
    fn drop(&mut self) {
        let mut q = self.logins.pending.lock();
        if let Some(i) = q.iter().position(|(_, _, p)| Arc::ptr_eq(p, &self.pending)) {
            q.remove(i);
        }
    }
}

impl Logins {
    /// At most `per_host` connections logging in per source address and `total` overall
    /// (each at least 1).
    pub fn new(per_host: usize, total: usize) -> Logins {
        Logins {
            per_host: per_host.max(1),
            total: total.max(1),
            pending: Mutex::new(VecDeque::new()),
            authenticating: Mutex::default(),
        }
    }

    /// A connection from `ip` that has sent its first byte goes on logging in, unless
    /// `per_host` from that address already are (`None`: refuse it).
    pub fn authenticating(&self, ip: IpAddr) -> Option<AuthSlot<'_>> {
        let mut m = self.authenticating.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_host {
            return None;
        }
        *n += 1;
        Some(AuthSlot { logins: self, ip })
    }

    /// A connection from `ip` starts logging in; older ones over a limit are told to close.
    pub fn enter(&self, ip: IpAddr) -> LoginGuard<'_> {
        let pending = Arc::new(Pending::default());
        let now = Instant::now();
        let old_enough = |since: &Instant| now.saturating_duration_since(*since) >= MIN_AGE;
        let mut q = self.pending.lock();
        q.push_back((ip, now, pending.clone()));
        if q.iter().filter(|(h, _, _)| *h == ip).count() > self.per_host {
            if let Some(i) = q.iter().position(|(h, since, _)| *h == ip && old_enough(since)) {
                if let Some((_, _, oldest)) = q.remove(i) {
                    oldest.evicted.notify_one();
                }
            }
        }
        if q.len() > self.total && q.front().is_some_and(|(_, since, _)| old_enough(since)) {
            if let Some((_, _, oldest)) = q.pop_front() {
                oldest.evicted.notify_one();
            }
        }
        LoginGuard { logins: self, pending }
    }

    /// Tells the oldest connection logging in to close, if it has been at it for at least
    /// [`MIN_AGE`] (`max_client_conn` is full and a new client waits for its place).
    pub fn evict_oldest(&self) -> bool {
        let mut q = self.pending.lock();
        let now = Instant::now();
        if q.front().is_none_or(|(_, since, _)| now.saturating_duration_since(*since) < MIN_AGE) {
            return false;
        }
        if let Some((_, _, oldest)) = q.pop_front() {
            oldest.evicted.notify_one();
        }
        true
    }

    /// Connections logging in now.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Whether none is logging in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_oldest_over_a_limit_is_told_to_close() {
        let logins = Logins::new(2, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = logins.enter(a);
        let second = logins.enter(a);
        // A burst displaces nobody.
        let burst = logins.enter(a);
        assert_eq!(logins.len(), 3);
        drop(burst);
        tokio::time::advance(MIN_AGE).await;
        let third = logins.enter(a);
        // (notify_one stores a permit: the evicted one sees it when it next waits.)
        tokio::time::timeout(std::time::Duration::from_millis(100), first.pending.evicted())
            .await
            .expect("the oldest from that address is evicted");
        assert_eq!(logins.len(), 2);
        let other = logins.enter(b);
        assert_eq!(logins.len(), 3, "another address has its own allowance");
        let fourth = logins.enter(b);
        // Over the total: the oldest overall (the second from a) goes.
        tokio::time::timeout(std::time::Duration::from_millis(100), second.pending.evicted()).await.expect("total");
        assert_eq!(logins.len(), 3);
        assert!(!logins.evict_oldest(), "the rest are younger than MIN_AGE");
        tokio::time::advance(MIN_AGE).await;
        assert!(logins.evict_oldest(), "max_client_conn full: room is made");
        tokio::time::timeout(std::time::Duration::from_millis(100), third.pending.evicted()).await.expect("oldest");
        drop((third, other, fourth, first, second));
        assert!(logins.is_empty(), "entries leave when their login ends");
    }

    #[test]
    fn logins_past_the_first_byte_are_capped_per_address() {
        let logins = Logins::new(2, 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = logins.authenticating(a).expect("first");
        let two = logins.authenticating(a).expect("second");
        assert!(logins.authenticating(a).is_none(), "a third from the same address is refused");
        let other = logins.authenticating(b).expect("another address has its own allowance");
        drop(one);
        let three = logins.authenticating(a).expect("a place was given back");
        drop((two, three, other));
        assert!(logins.authenticating.lock().is_empty(), "nothing left behind");
    }
}
