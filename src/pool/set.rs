//! `PoolSet`: the pools of one (database, user), one per host of the database's
//! [`Cluster`], and the choice among them. Sessions hold a `PoolSet`; the pool they check
//! out from is decided per request from the topology and the router's verdict.
//!
//! Reads ([`PoolSet::check_out_read`]) go to an eligible replica picked by
//! [`router::pick_read`], are retried on another host when the connection cannot be made
//! (nothing has reached the client yet), may wait `read_your_writes_wait` for a replica to
//! replay the client's last write, and otherwise fall back to the primary per
//! `primary_reads`. Writes go to the primary. While there is none, a request waits
//! up to `failover_wait_timeout` for one; a connection failure on the believed primary
//! triggers a probe and waits the same way for the topology to move, so a request arriving
//! in the seconds between a primary's death and the promotion of a replica is served by the
//! new primary instead of failing. During a split brain writes are refused at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Error, Pool, PoolGuard, ServerParams};
use crate::cluster::{Cluster, Primary};
use crate::config::{PrimaryReads, Route};
use crate::router::{self, Policy};
use crate::stats::RouteStats;

/// Pause between attempts while waiting for a failed primary to be replaced (the wait ends
/// earlier when the primary changes).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often a read waiting for a replica to catch up looks again.
const RYW_POLL: Duration = Duration::from_millis(10);

/// "No deadline" for waits that another branch bounds.
const FOREVER: Duration = Duration::from_secs(86_400);

/// What a read must see (read-your-writes): a primary position to cover, or the time of a
/// write whose position the probes have not measured yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ryw {
    /// Primary WAL position the replica must have replayed (0: none).
    pub lsn: u64,
    /// `Cluster::now_ms` when the client's last write ended, if not yet covered by `lsn`
    /// (0: none).
    pub since: u64,
}

/// The pools of one (database, user); see the module docs.
#[derive(Clone)]
pub struct PoolSet(Arc<Inner>);

struct Inner {
    cluster: Arc<Cluster>,
    /// One per host, same order as `cluster.hosts()`.
    pools: Box<[Pool]>,
    /// Routing decisions.
    stats: RouteStats,
    /// Replaced or removed by a reload: sessions look their pools up again before their
    /// next request.
    retired: std::sync::atomic::AtomicBool,
}

impl PoolSet {
    /// A set over `pools` (one per host of `cluster`, in order).
    pub fn new(cluster: Arc<Cluster>, pools: Vec<Pool>) -> PoolSet {
        debug_assert_eq!(pools.len(), cluster.hosts().len());
        PoolSet(Arc::new(Inner {
            cluster,
            pools: pools.into(),
            stats: RouteStats::default(),
            retired: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Marks the set replaced (a reload): its idle connections close now, busy ones when
    /// released, and sessions move to the registry's current set at their next request.
    pub fn retire(&self) {
        self.0.retired.store(true, std::sync::atomic::Ordering::Release);
        for p in self.0.pools.iter() {
            p.retire();
        }
    }

    /// Whether [`PoolSet::retire`] was called.
    #[inline]
    pub fn is_retired(&self) -> bool {
        self.0.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Routing decisions so far.
    pub fn route_stats(&self) -> &RouteStats {
        &self.0.stats
    }

    /// Checks out a connection to the primary for a request that needs it (counted as a
    /// write).
    pub async fn check_out_write(&self) -> Result<PoolGuard, Error> {
        RouteStats::bump(&self.0.stats.writes);
        match self.try_check_out() {
            Some(g) => Ok(g),
            None => self.check_out().await,
        }
    }

    /// Checks out a connection for a read: an eligible replica (or the primary as a read
    /// candidate with `primary_reads = "always"`) whose replay position is known to cover
    /// the client's last write (`ryw`), else the primary as a fallback; see the module docs.
    pub async fn check_out_read(&self, policy: &Policy, ryw: Ryw) -> Result<PoolGuard, Error> {
        let cluster = &self.0.cluster;
        let stats = &self.0.stats;
        let replicas_only = policy.route == Route::Replica || policy.primary_reads == PrimaryReads::Never;
        let with_primary = policy.primary_reads == PrimaryReads::Always && policy.route != Route::Replica;
        let wait_until = Instant::now() + policy.ryw_wait;
        let mut exclude = 0u64;
        let mut waited = false;
        loop {
            // A write not yet covered by a primary measurement: no replica can prove it has it.
            let min_lsn = match ryw.since {
                0 => ryw.lsn,
                since => cluster.primary_lsn_after(since).unwrap_or(u64::MAX),
            };
            let load = |i: usize| self.0.pools[i].in_use();
            if let Some(i) = router::pick_read(cluster, load, min_lsn, with_primary, exclude) {
                let to_primary = cluster.primary() == Primary::Host(i);
                let pool = &self.0.pools[i];
                let got = match pool.try_check_out() {
                    Some(g) => Ok(g),
                    None => pool.check_out().await,
                };
                match got {
                    Ok(g) => {
                        RouteStats::bump(if to_primary { &stats.reads_primary } else { &stats.reads_replica });
                        return Ok(g);
                    }
                    Err(e) if failover_may_help(&e) => {
                        // Nothing reached the client: try another host.
                        RouteStats::bump(&stats.retries);
                        cluster.request_probe();
                        exclude |= 1 << i;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            // None eligible. Behind the client's last write only? Then maybe wait.
            // (A pending write resolves with the next probe of the primary, which is asked for.)
            if min_lsn > 0
                && (min_lsn != u64::MAX || ryw.since != 0)
                && Instant::now() < wait_until
                && router::pick_read(cluster, load, 0, false, exclude).is_some()
            {
                if !waited {
                    RouteStats::bump(&stats.ryw_waits);
                    waited = true;
                }
                cluster.request_probe();
                tokio::time::sleep(RYW_POLL.min(wait_until - Instant::now())).await;
                continue;
            }
            if replicas_only {
                return Err(Error::NoReplica(cluster.name().into()));
            }
            RouteStats::bump(&stats.fallbacks);
            RouteStats::bump(&stats.reads_primary);
            return match self.try_check_out() {
                Some(g) => Ok(g),
                None => self.check_out().await,
            };
        }
    }

    /// The database's topology.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.0.cluster
    }

    /// All pools, one per host.
    pub fn pools(&self) -> &[Pool] {
        &self.0.pools
    }

    /// The primary's pool right now, without waiting.
    #[inline]
    pub fn current_primary(&self) -> Option<&Pool> {
        match self.0.cluster.primary() {
            Primary::Host(i) => self.0.pools.get(i),
            _ => None,
        }
    }

    /// Fast path: an idle, ready connection of the primary's pool.
    #[inline]
    pub fn try_check_out(&self) -> Option<PoolGuard> {
        self.current_primary()?.try_check_out()
    }

    /// Checks out a connection to the primary, waiting for one to be elected (and, after a
    /// connection failure, for the topology to change) up to `failover_wait_timeout`.
    pub async fn check_out(&self) -> Result<PoolGuard, Error> {
        let cluster = &self.0.cluster;
        let started = Instant::now();
        let deadline = started + cluster.settings().failover_wait;
        let mut primary = cluster.primary();
        loop {
            let i = match primary {
                Primary::Host(i) => i,
                Primary::SplitBrain => return Err(Error::SplitBrain(cluster.name().into())),
                Primary::None => {
                    primary = cluster.wait_change(primary, deadline).await;
                    if primary == Primary::None {
                        return Err(self.no_primary(started, ""));
                    }
                    continue;
                }
            };
            let attempt = self.0.pools[i].check_out();
            let err = if cluster.is_probed() {
                // A primary that stops answering can hold a connect for server_connect_timeout:
                // if another host is elected meanwhile, go there (check_out is cancel-safe).
                let moved = cluster.wait_change(primary, Instant::now() + FOREVER);
                tokio::select! {
                    r = attempt => match r {
                        Ok(g) => return Ok(g),
                        Err(e) => e,
                    },
                    p = moved => {
                        primary = p;
                        continue;
                    }
                }
            } else {
                match attempt.await {
                    Ok(g) => return Ok(g),
                    Err(e) => e,
                }
            };
            if !cluster.is_probed() || !failover_may_help(&err) || Instant::now() >= deadline {
                return Err(err);
            }
            // The primary may be gone: look, and wait for the topology to move.
            cluster.request_probe();
            let pause = (Instant::now() + RETRY_PAUSE).min(deadline);
            primary = cluster.wait_change(primary, pause).await;
            if Instant::now() >= deadline && primary == Primary::Host(i) {
                return Err(self.no_primary(started, &format!(", last error: {err}")));
            }
        }
    }

    fn no_primary(&self, started: Instant, detail: &str) -> Error {
        let mut detail = detail.to_string();
        if detail.is_empty() {
            // Say what the probes see, e.g. a wrong health_check_password.
            for h in self.0.cluster.hosts() {
                if let Some(e) = &h.status().last_error {
                    detail.push_str(&format!("; {}: {e}", h.addr));
                }
            }
        }
        Error::NoPrimary { db: self.0.cluster.name().into(), waited: started.elapsed(), detail: detail.into() }
    }

    /// Remembers SCRAM keys recovered from a client login, for passthrough (every host).
    pub fn learn_scram_keys(&self, keys: crate::auth::scram::ClientKeys) {
        for p in self.0.pools.iter() {
            p.learn_scram_keys(keys.clone());
        }
    }

    /// The ParameterStatus set the servers report (what a client is told at login): any
    /// host's that is known, else the primary's (connecting once).
    pub async fn server_params(&self) -> Result<ServerParams, Error> {
        if let Some(p) = self.0.pools.iter().find_map(Pool::cached_server_params) {
            return Ok(p);
        }
        let guard = self.check_out().await?;
        let pool = guard.pool().clone();
        guard.check_in();
        pool.cached_server_params().ok_or(Error::Closed)
    }

    /// The pool whose interner de-duplicates client parameter sets (any one will do; the
    /// first is stable).
    pub fn interner(&self) -> &crate::params::Interner {
        self.0.pools[0].interner()
    }
}

/// Whether an error of the primary's pool may go away by itself when a replica is promoted:
/// the server could not be reached (not: it refused the login, or the pool is closed).
fn failover_may_help(e: &Error) -> bool {
    match e {
        Error::Connect { server_code, .. } => server_code.as_deref().is_none_or(|c| c == "57P03"),
        Error::Timeout(_) | Error::Closed | Error::NoPrimary { .. } | Error::SplitBrain(_) | Error::NoReplica(_) => {
            false
        }
    }
}
