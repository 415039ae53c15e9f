//! Carrying out a routing decision: the server connection for one request, from the
//! client's pools ([`PoolSet`]), counted in the set's [`RouteStats`].
//!
//! Writes (and everything of a client whose requests are not classified) go to the
//! primary's pool, which follows the topology ([`PoolSet::check_out`]). Reads go where
//! [`Router::pick`] says: a replica, retried on another host when the connection cannot be
//! made (nothing has reached the client yet); after a short wait when only replicas behind
//! the client's last write are eligible (`read_your_writes_wait`); or the primary as a
//! fallback per `primary_reads`.
//!
//! Invariant: a request is served by at most one server connection; a failed attempt
//! returns its connection's slot to its pool before the next one.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Primary;
use crate::pool::{self, failover_may_help, PoolGuard, PoolSet};
use crate::router::{Decision, Pick, Router, Want};
use crate::stats::RouteStats;

/// How often a read waiting for a replica to catch up looks again.
const RYW_POLL: Duration = Duration::from_millis(10);

/// A server for the request `d` describes (`router` is `None` for a client whose
/// requests all go to the primary).
///
/// # Cancel safety
/// Cancel-safe: a connection handed over meanwhile goes back to its pool.
pub async fn check_out(set: &PoolSet, router: Option<&mut Router>, d: &Decision) -> Result<PoolGuard, pool::Error> {
    let stats = set.route_stats();
    let Some(router) = router.filter(|_| d.want == Want::Read) else {
        if d.classified {
            RouteStats::bump(&stats.writes);
        }
        return primary(set).await;
    };
    let cluster = set.cluster();
    let wait_until = Instant::now() + router.policy().ryw_wait;
    let arrived = cluster.now_ms();
    let mut exclude = d.exclude;
    let mut waited = false;
    loop {
        // (Again each time: a write pending when the read arrived resolves with a probe.)
        let ryw = router.ryw(d, cluster, Some(arrived));
        let load = |i: usize| set.pools()[i].in_use();
        match router.pick(cluster, load, ryw, exclude, Instant::now() < wait_until) {
            Pick::Host(i) => {
                let to_primary = cluster.primary() == Primary::Host(i);
                let pool = &set.pools()[i];
                let got = match pool.try_check_out() {
                    Some(g) => Ok(g),
                    None => pool.check_out().await,
                };
                match got {
                    Ok(g) => {
                        RouteStats::bump(if to_primary { &stats.reads_primary } else { &stats.reads_replica });
                        router.resolve_ryw(cluster);
                        return Ok(g);
                    }
                    Err(e) if failover_may_help(&e) => {
                        // Nothing reached the client: try another host.
                        RouteStats::bump(&stats.retries);
                        cluster.request_probe();
                        exclude |= 1 << i.min(63);
                    }
                    Err(e) => return Err(e),
                }
            }
            Pick::WaitForReplay => {
                if !waited {
                    RouteStats::bump(&stats.ryw_waits);
                    waited = true;
                }
                cluster.request_probe();
                tokio::time::sleep(RYW_POLL.min(wait_until.saturating_duration_since(Instant::now()))).await;
            }
            Pick::NoReplica => return Err(pool::Error::NoReplica(cluster.name().into())),
            Pick::Fallback { behind } => {
                // A change of topology while this read waits for the primary (the primary
                // declared down, a failover) may make a replica eligible: pick again then.
                let seen = cluster.primary();
                let changed = async {
                    // (A stopped cluster — retired by a reload — answers at once without a
                    // change: wait for the primary then, or this would spin.)
                    if cluster.wait_change(seen, Instant::now() + Duration::from_secs(86_400)).await == seen {
                        std::future::pending::<()>().await;
                    }
                };
                let g = tokio::select! {
                    g = primary(set) => g,
                    _ = changed => continue,
                };
                RouteStats::bump(&stats.fallbacks);
                if behind {
                    RouteStats::bump(&stats.ryw_fallbacks);
                    // Measure the replicas again now (rate-capped), so the reads after
                    // this one find them caught up without waiting for the next interval.
                    cluster.request_probe();
                }
                RouteStats::bump(&stats.reads_primary);
                router.resolve_ryw(cluster);
                return g;
            }
        }
    }
}

/// The fast path of [`check_out`]: an idle connection where `d` sends the request, taken
/// without waiting. `None`: nothing is idle there, or the read needs the slow path's
/// choices (a wait for replay, a fallback); take [`check_out`] (nothing was counted).
pub fn try_check_out(set: &PoolSet, router: Option<&mut Router>, d: &Decision) -> Option<PoolGuard> {
    let stats = set.route_stats();
    let Some(router) = router.filter(|_| d.want == Want::Read) else {
        let g = set.try_check_out()?;
        if d.classified {
            RouteStats::bump(&stats.writes);
        }
        return Some(g);
    };
    let cluster = set.cluster();
    let ryw = router.ryw(d, cluster, None);
    let load = |i: usize| set.pools()[i].in_use();
    let Pick::Host(i) = router.pick(cluster, load, ryw, d.exclude, false) else { return None };
    let g = set.pools()[i].try_check_out()?;
    let to_primary = cluster.primary() == Primary::Host(i);
    RouteStats::bump(if to_primary { &stats.reads_primary } else { &stats.reads_replica });
    router.resolve_ryw(cluster);
    Some(g)
}

/// A connection to the primary: an idle one at once if there is one, else waiting.
async fn primary(set: &PoolSet) -> Result<PoolGuard, pool::Error> {
    match set.try_check_out() {
        Some(g) => Ok(g),
        None => set.check_out().await,
    }
}
