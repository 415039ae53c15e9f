//! `PoolSet`: the pools of one (database, user), one per host of the database's
//! [`Cluster`]. Sessions hold a `PoolSet`; which pool a request uses is the router's
//! decision, carried out by the frontend's check-out. The set knows nothing of routing: it
//! gives out the pool of a host ([`PoolSet::pools`]) and the primary's pool.
//!
//! [`PoolSet::check_out`] follows the primary: while there is none, a request waits up to
//! `failover_wait_timeout` for one; a connection failure on the believed primary triggers a
//! probe and waits the same way for the topology to move, so a request arriving in the
//! seconds between a primary's death and the promotion of a replica is served by the new
//! primary instead of failing. During a split brain writes are refused at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Error, Pool, PoolGuard, ServerParams};
use crate::cluster::{Cluster, Primary};
use crate::stats::RouteStats;

/// Pause between attempts while waiting for a failed primary to be replaced (the wait ends
/// earlier when the primary changes).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often a request waiting for a primary looks whether the hosts refuse logins.
const REFUSAL_RECHECK: Duration = Duration::from_millis(50);

/// "No deadline" for waits that another branch bounds.
const FOREVER: Duration = Duration::from_secs(86_400);

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

    /// Whether `other` is this very set (not an equal one).
    pub fn same(&self, other: &PoolSet) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether [`PoolSet::retire`] was called.
    #[inline]
    pub fn is_retired(&self) -> bool {
        self.0.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Routing decisions so far (counted by the frontend's check-out).
    pub fn route_stats(&self) -> &RouteStats {
        &self.0.stats
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
                    // Reachable hosts that refuse the login (a missing database, a wrong
                    // password) are a configuration error, not a topology to wait out.
                    // A missing database is the client's error too (3D000); a refused probe
                    // user is pgsluice's configuration (`health_check_user`/`_password`).
                    if let Some((code, message)) = cluster.refused() {
                        return Err(Error::Connect {
                            code: "08006",
                            server_code: (code.as_ref() == "3D000").then_some(code),
                            message: format!("no primary can be found: the health check cannot log in ({message})")
                                .into(),
                        });
                    }
                    // (In steps: a refusal reported by the probes meanwhile ends the wait.)
                    let step = (Instant::now() + REFUSAL_RECHECK).min(deadline);
                    primary = cluster.wait_change(primary, step).await;
                    if primary == Primary::None && Instant::now() >= deadline {
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

    /// Sets the secret every pool of the set logs in with, where none is configured.
    pub fn learn_secret(&self, secret: &crate::auth::Secret) {
        for p in self.0.pools.iter() {
            p.learn_secret(secret);
        }
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

/// Whether an error of a pool may go away by itself on another host (a replica promoted,
/// another replica for a read): the server could not be reached (not: it refused the login,
/// or the pool is closed).
pub fn failover_may_help(e: &Error) -> bool {
    match e {
        Error::Connect { server_code, .. } => server_code.as_deref().is_none_or(|c| c == "57P03"),
        Error::Timeout(_) | Error::Closed | Error::NoPrimary { .. } | Error::SplitBrain(_) | Error::NoReplica(_) => {
            false
        }
    }
}
