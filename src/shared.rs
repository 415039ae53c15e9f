//! `Shared`: the one piece of state every task sees, built in `main` (or a test) and passed
//! down as `Arc<Shared>`. No global statics. The config is swapped whole through `ArcSwap`,
//! and so is the set of database topologies (`clusters`); pools live in a registry keyed by
//! (database, backend user), one pool per host, and are looked up at client login only,
//! never per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::backend::Credential;
use crate::cancel::CancelRegistry;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{Config, Database};
use crate::pool::{Limit, Pool, PoolSet, PoolSettings};

/// The topology of every configured database, by client-visible name.
pub type ClusterSet = HashMap<String, Arc<Cluster>>;

/// State shared by the listener, sessions and background tasks.
pub struct Shared {
    /// Current configuration.
    pub config: ArcSwap<Config>,
    /// Database topologies (probes start with [`Shared::start_probes`]).
    pub clusters: ArcSwap<ClusterSet>,
    /// Server pools.
    pub pools: PoolRegistry,
    /// Statement classifier of the router (one per process; its cache is shared).
    pub classifier: Arc<crate::router::classify::Classifier>,
    /// Client cancel keys.
    pub cancel: Arc<CancelRegistry>,
    next_client_id: AtomicU64,
    /// Per-process key for mock SCRAM salts of unknown users.
    mock_key: [u8; 32],
}

impl Shared {
    /// Builds the shared state for `config`.
    pub fn new(config: Config) -> Arc<Shared> {
        let settings = ClusterSettings::from_general(config.general());
        let clusters: ClusterSet =
            config.databases.iter().map(|(name, db)| (name.clone(), Cluster::new(db, settings.clone()))).collect();
        let g = config.general();
        let classifier =
            Arc::new(crate::router::classify::Classifier::new(crate::router::classify::ClassifierSettings {
                read_only_functions: g.read_only_functions.clone(),
                max_parse_length: g.max_parse_length as usize,
                cache_size: g.classify_cache_size as usize,
            }));
        Arc::new(Shared {
            classifier,
            clusters: ArcSwap::from_pointee(clusters),
            config: ArcSwap::from_pointee(config),
            pools: PoolRegistry::default(),
            cancel: Arc::new(CancelRegistry::default()),
            next_client_id: AtomicU64::new(1),
            mock_key: rand::random(),
        })
    }

    /// Starts the health probes of every probed database (inside the runtime).
    pub fn start_probes(&self) {
        for c in self.clusters.load().values() {
            c.start();
        }
    }

    /// Stops every probe.
    pub fn stop_probes(&self) {
        for c in self.clusters.load().values() {
            c.stop();
        }
    }

    /// The topology of database `name`.
    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// The SCRAM verifier presented for a user that does not exist (see `startup`).
    pub fn mock_verifier(&self, user: &str) -> crate::auth::scram::Verifier {
        crate::frontend::startup::mock_verifier(&self.mock_key, user)
    }

    /// A process-unique id for a new client session (logs, admin console).
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// All pools, plus the database- and user-wide connection limits they share.
#[derive(Default)]
pub struct PoolRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    pools: HashMap<(String, String), PoolSet>,
    db_limits: HashMap<String, Arc<Limit>>,
    user_limits: HashMap<String, Arc<Limit>>,
}

impl PoolRegistry {
    /// The pools serving `client_user` on `db` (one per host of `cluster`), created on first
    /// use. The backend user is the database's fixed user if it has one.
    pub fn get_or_create(
        &self,
        cfg: &Config,
        cluster: &Arc<Cluster>,
        db: &Arc<Database>,
        client_user: &str,
    ) -> PoolSet {
        let user = db.fixed_user.as_deref().unwrap_or(client_user);
        let mut inner = self.inner.lock();
        if let Some(p) = inner.pools.get(&(db.name.clone(), user.to_string())) {
            return p.clone();
        }
        let g = cfg.general();
        let db_limit = inner
            .db_limits
            .entry(db.name.clone())
            .or_insert_with(|| Arc::new(Limit::new(db.max_db_connections)))
            .clone();
        let user_limit = inner
            .user_limits
            .entry(user.to_string())
            .or_insert_with(|| Arc::new(Limit::new(cfg.max_user_connections(user))))
            .clone();
        let secret = match &db.fixed_user {
            Some(_) => db.fixed_secret.clone(),
            None => cfg.users.get(user).map(|u| u.secret.clone()),
        };
        let pools = cluster
            .hosts()
            .iter()
            .map(|host| {
                let settings = PoolSettings {
                    size: db.pool_size,
                    min_size: db.min_pool_size,
                    reserve_size: db.reserve_pool_size,
                    reserve_timeout: g.reserve_pool_timeout.0,
                    wait_timeout: g.query_wait_timeout.nonzero(),
                    connect_timeout: g.server_connect_timeout.0,
                    idle_timeout: g.server_idle_timeout.nonzero(),
                    lifetime: Some(g.server_lifetime.0),
                    check_delay: g.server_check_delay.0,
                    check_query: g.server_check_query.clone(),
                    host: host.clone(),
                    dbname: db.dbname.clone(),
                    user: user.to_string(),
                    application_name: "pgsluice".into(),
                    keepalive: g.tcp_keepalive,
                };
                Pool::new(
                    settings,
                    Credential { secret: secret.clone(), keys: None },
                    db_limit.clone(),
                    user_limit.clone(),
                )
            })
            .collect();
        let set = PoolSet::new(cluster.clone(), pools);
        inner.pools.insert((db.name.clone(), user.to_string()), set.clone());
        set
    }

    /// A snapshot of all pool sets with their (database, user) keys.
    pub fn sets(&self) -> Vec<((String, String), PoolSet)> {
        self.inner.lock().pools.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// Every pool (all hosts of all sets).
    pub fn all(&self) -> Vec<Pool> {
        self.inner.lock().pools.values().flat_map(|s| s.pools().iter().cloned()).collect()
    }
}
