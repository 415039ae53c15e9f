//! Read/write routing: which host a request goes to.
//!
//! [`crate::sql::classify`] decides what a statement may do (read-only or not, whether it opens a
//! transaction, a hint comment). [`want`] turns that, the client's policy and its
//! `default_transaction_read_only` into what the request needs: the primary or a read
//! candidate. `pool::PoolSet` then picks the host with [`pick_read`] (least outstanding
//! requests per unit of weight among eligible replicas, random among equals) and counts the
//! decision in [`RouteStats`].
//!
//! Invariants: routing happens only when a client has no server, i.e. at the start of a
//! transaction (or of a request outside one), so a transaction never moves between servers;
//! a server attached for a read takes one request at a time outside a transaction (the relay
//! holds back the next request until it is routed on its own).

use std::time::Duration;

use crate::cluster::{Cluster, Primary};
use crate::config::{PrimaryReads, ReadYourWrites, Route, TransactionRouting};
use crate::sql::classify::{Begin, Class, Hint};

/// The routing policy of one client, fixed at login.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `route` of the database/user (`auto` classifies).
    pub route: Route,
    /// Whether reads may use the primary.
    pub primary_reads: PrimaryReads,
    /// Plain `BEGIN` routing.
    pub transaction_routing: TransactionRouting,
    /// Read-your-writes mode.
    pub read_your_writes: ReadYourWrites,
    /// `read_your_writes_wait`.
    pub ryw_wait: Duration,
}

impl Policy {
    /// Whether requests are classified at all (else everything goes to the primary without
    /// looking, as before routing existed).
    pub fn classifies(&self) -> bool {
        self.route == Route::Auto
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// It writes, may write, or opens a read-write transaction.
    Primary,
    /// It only reads: a replica if one is eligible.
    Read,
}

/// What the request needs, from its class (`None`: no statement text to judge, e.g. a
/// FunctionCall or a Bind of an unknown statement) and the client's
/// `default_transaction_read_only`.
pub fn want(policy: &Policy, class: Option<Class>, client_read_only: bool) -> Want {
    match policy.route {
        Route::Primary => return Want::Primary,
        Route::Replica => return Want::Read,
        Route::Auto => {}
    }
    let Some(class) = class else { return Want::Primary };
    match class.hint {
        Hint::Primary => return Want::Primary,
        Hint::Replica => return Want::Read,
        Hint::None => {}
    }
    if client_read_only {
        // Every transaction of this client is read-only (a write fails on the primary too),
        // so a plain BEGIN opens a read-only one; but what a standby refuses and the primary
        // allows in a read-only transaction (SERIALIZABLE, functions not on the allowlist)
        // stays on the primary.
        return if class.read_only || class.begin == Begin::Plain { Want::Read } else { Want::Primary };
    }
    match class.begin {
        // (`read_only` is false for e.g. SERIALIZABLE, which a hot standby refuses.)
        Begin::ReadOnly if class.read_only => Want::Read,
        Begin::ReadOnly => Want::Primary,
        Begin::ReadWrite => Want::Primary,
        Begin::Plain => match policy.transaction_routing {
            TransactionRouting::Primary => Want::Primary,
            // `BEGIN; SELECT …` in one string: by what follows the BEGIN.
            TransactionRouting::FirstStatement if class.read_only => Want::Read,
            TransactionRouting::FirstStatement => Want::Primary,
        },
        Begin::None if class.read_only => Want::Read,
        Begin::None => Want::Primary,
    }
}

/// Combines the classes of several statements of one request: read-only only if all are;
/// the transaction start and hint of the first that has one.
pub fn combine(acc: Option<Class>, next: Class) -> Class {
    match acc {
        None => next,
        Some(a) => Class {
            read_only: a.read_only && next.read_only,
            begin: if a.begin == Begin::None { next.begin } else { a.begin },
            hint: if a.hint == Hint::None { next.hint } else { a.hint },
        },
    }
}

/// Picks a host for a read among the database's eligible replicas (and the primary when
/// `with_primary`): up, within the lag bounds, breaker not open, weight > 0, not in
/// `exclude` (a bit per host index), and, when `min_lsn` > 0, known to have replayed it.
/// Lowest `load(i) / weight` wins; ties are broken at random.
pub fn pick_read(
    cluster: &Cluster,
    load: impl Fn(usize) -> u32,
    min_lsn: u64,
    with_primary: bool,
    exclude: u64,
) -> Option<usize> {
    let primary = match cluster.primary() {
        Primary::Host(p) => Some(p),
        _ => None,
    };
    let mut best: Option<(usize, u64, u64)> = None; // (host, load, weight)
    let mut ties = 0u32;
    for h in cluster.hosts() {
        let i = h.index;
        if i < 64 && exclude & (1 << i) != 0 || h.weight == 0 {
            continue;
        }
        let is_primary = primary == Some(i);
        if is_primary {
            if !with_primary {
                continue;
            }
        } else if !h.serves_read(min_lsn) {
            continue;
        }
        if h.breaker.is_open() {
            continue;
        }
        let (l, w) = (u64::from(load(i)), u64::from(h.weight));
        match best {
            // l / w < bl / bw
            Some((_, bl, bw)) if l * bw > bl * w => {}
            Some((_, bl, bw)) if l * bw == bl * w => {
                ties += 1;
                if rand::random_range(0..=ties) == 0 {
                    best = Some((i, l, w));
                }
            }
            _ => {
                best = Some((i, l, w));
                ties = 0;
            }
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(route: Route) -> Policy {
        Policy {
            route,
            primary_reads: PrimaryReads::Fallback,
            transaction_routing: TransactionRouting::Primary,
            read_your_writes: ReadYourWrites::Lsn,
            ryw_wait: Duration::ZERO,
        }
    }

    fn class(read_only: bool, begin: Begin, hint: Hint) -> Option<Class> {
        Some(Class { read_only, begin, hint })
    }

    #[test]
    fn wants() {
        let auto = policy(Route::Auto);
        assert_eq!(want(&auto, class(true, Begin::None, Hint::None), false), Want::Read);
        assert_eq!(want(&auto, class(false, Begin::None, Hint::None), false), Want::Primary);
        assert_eq!(want(&auto, None, false), Want::Primary, "nothing to judge: primary");
        assert_eq!(want(&auto, class(true, Begin::ReadOnly, Hint::None), false), Want::Read);
        assert_eq!(want(&auto, class(false, Begin::ReadOnly, Hint::None), false), Want::Primary, "serializable");
        assert_eq!(want(&auto, class(true, Begin::Plain, Hint::None), false), Want::Primary);
        assert_eq!(want(&auto, class(false, Begin::ReadWrite, Hint::None), false), Want::Primary);
        assert_eq!(want(&auto, class(false, Begin::Plain, Hint::None), true), Want::Read, "default read only");
        assert_eq!(want(&auto, class(false, Begin::ReadOnly, Hint::None), true), Want::Primary, "serializable");
        assert_eq!(want(&auto, class(false, Begin::None, Hint::None), true), Want::Primary);
        assert_eq!(want(&auto, class(true, Begin::None, Hint::Primary), false), Want::Primary);
        assert_eq!(want(&auto, class(false, Begin::None, Hint::Replica), false), Want::Read);
        assert_eq!(want(&policy(Route::Primary), class(true, Begin::None, Hint::Replica), false), Want::Primary);
        assert_eq!(want(&policy(Route::Replica), class(false, Begin::None, Hint::None), false), Want::Read);
    }

    #[test]
    fn combining_statements() {
        let r = Class { read_only: true, ..Class::default() };
        let w = Class { read_only: false, ..Class::default() };
        let b = Class { read_only: true, begin: Begin::ReadOnly, hint: Hint::None };
        assert_eq!(combine(None, r), r);
        assert!(!combine(Some(r), w).read_only);
        assert_eq!(combine(Some(b), r).begin, Begin::ReadOnly);
        assert_eq!(combine(Some(r), b).begin, Begin::ReadOnly);
    }
}
