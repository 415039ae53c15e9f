//! `Shared`: the one piece of state every task sees, built in `main` (or a test) and passed
//! down as `Arc<Shared>`. No global statics. The config is swapped whole through `ArcSwap`,
//! and so is the set of database topologies (`clusters`); pools live in a registry keyed by
//! (database, backend user), one pool per host, and are looked up at client login only,
//! never per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::backend::Credential;
use crate::cancel::CancelRegistry;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{Config, Database};
use crate::pool::{Limit, Pool, PoolSet, PoolSettings};
use crate::stats::{ClientRegistry, Clock};

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
    pub classifier: Arc<crate::sql::classify::Classifier>,
    /// Client cancel keys.
    pub cancel: Arc<CancelRegistry>,
    /// Logged-in clients (admin console, KILL).
    pub clients: Arc<ClientRegistry>,
    /// Process clock of all statistics.
    pub clock: Clock,
    /// Admin-console state per database (PAUSE, DISABLE).
    controls: Mutex<HashMap<String, Arc<DbControl>>>,
    /// `PAUSE` without a database is in effect (`SHOW STATE`).
    pub paused_all: AtomicBool,
    /// Connections between accept and the end of login (`SHOW LISTS` `login_clients`).
    pub logging_in: AtomicU64,
    /// Failed client authentications (`pgsluice_auth_failures_total`).
    pub auth_failures: AtomicU64,
    /// Failed logins per (source address, user), and the waits they impose.
    pub throttle: crate::auth::throttle::Throttle,
    /// Connections logging in (slow-loris limits).
    pub logins: crate::net::logins::Logins,
    /// Users looked up with `auth_query`, and the lookups' limit.
    pub auth_query: crate::auth_query::AuthQuery,
    /// Per-database rates over the last `stats_period`, with the totals they were taken
    /// from (`SHOW STATS` `avg_*`).
    pub averages: Mutex<HashMap<String, crate::stats::Averages>>,
    /// Stop requests from the admin console (`SHUTDOWN`), read by whoever runs the process.
    stop_tx: tokio::sync::mpsc::UnboundedSender<crate::shutdown::StopMode>,
    stop_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::shutdown::StopMode>>>,
    next_client_id: AtomicU64,
    /// Per-process key for mock SCRAM salts of unknown users.
    mock_key: [u8; 32],
    /// LISTEN hubs, one per (database, user) with listening clients (`crate::notify`).
    pub hubs: crate::notify::Hubs,
}

impl Shared {
    /// Builds the shared state for `config`.
    pub fn new(config: Config) -> Arc<Shared> {
        let settings = ClusterSettings::from_general(config.general());
        let clusters: ClusterSet =
            config.databases.iter().map(|(name, db)| (name.clone(), Cluster::new(db, settings.clone()))).collect();
        let g = config.general();
        let peer_id = g.peer_id;
        let classifier = Arc::new(crate::sql::classify::Classifier::new(crate::sql::classify::ClassifierSettings {
            read_only_functions: g.read_only_functions.clone(),
            max_parse_length: g.max_parse_length as usize,
            cache_size: g.classify_cache_size as usize,
        }));
        let clock = Clock::default();
        let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Shared {
            clients: Arc::default(),
            hubs: crate::notify::Hubs::default(),
            controls: Mutex::default(),
            paused_all: AtomicBool::new(false),
            logging_in: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            auth_query: crate::auth_query::AuthQuery::default(),
            throttle: crate::auth::throttle::Throttle::new(g.auth_failure_delay.0, g.auth_failure_max_delay.0),
            logins: crate::net::logins::Logins::new(
                config.general().max_login_clients_per_host as usize,
                config.general().max_login_clients as usize,
            ),
            averages: Mutex::default(),
            stop_tx,
            stop_rx: Mutex::new(Some(stop_rx)),
            clock,
            classifier,
            clusters: ArcSwap::from_pointee(clusters),
            config: ArcSwap::from_pointee(config),
            pools: PoolRegistry::new(clock),
            cancel: Arc::new(CancelRegistry::new(peer_id)),
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

    /// Asks the process to stop (admin `SHUTDOWN`).
    pub fn request_stop(&self, mode: crate::shutdown::StopMode) {
        let _ = self.stop_tx.send(mode);
    }

    /// The receiver of [`Shared::request_stop`] requests (once).
    pub fn take_stop_requests(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::shutdown::StopMode>> {
        self.stop_rx.lock().take()
    }

    /// The admin-console state of database `name` (created on first use).
    pub fn control(&self, name: &str) -> Arc<DbControl> {
        self.controls.lock().entry(name.to_string()).or_default().clone()
    }

    /// The topology of database `name`.
    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// The SCRAM verifier presented for a user that does not exist (see `startup`).
    /// Its salt is the same at every login and across RELOAD (the key lives as long as the
    /// process); its iteration count is the one most configured users have.
    pub fn mock_verifier(&self, user: &str, iterations: u32) -> crate::auth::scram::Verifier {
        crate::auth::scram::mock_verifier(&self.mock_key, user, iterations)
    }

    /// Totals per database: every configured database (zeros before any traffic) and any
    /// database that still has pools.
    pub fn totals_by_database(&self) -> std::collections::BTreeMap<String, crate::stats::Totals> {
        let cfg = self.config.load();
        let mut by_db: std::collections::BTreeMap<String, crate::stats::Totals> =
            cfg.databases.keys().map(|k| (k.clone(), crate::stats::Totals::default())).collect();
        for ((db, _), set) in self.pools.sets() {
            let e = by_db.entry(db).or_default();
            for p in set.pools() {
                *e += p.stats().totals();
            }
        }
        by_db
    }

    /// Handles a client's CancelRequest: forwards it to the server the client holds right
    /// now, if any, or to the peered instance its key names. Returns whether a cancel was sent.
    pub async fn cancel_request(&self, pid: i32, secret: &[u8]) -> bool {
        let info = match self.cancel.route(pid, secret) {
            crate::cancel::Routed::Client(info) => info,
            crate::cancel::Routed::Forward(f) => return self.cancel.forward(&self.config.load_full().peers, f).await,
            crate::cancel::Routed::Nobody => return false,
        };
        let (server, _) = info.link();
        // (The server must still be this client's: it may have moved on since the link was read.)
        let Some(meta) =
            (server != 0).then(|| self.pools.server(server)).flatten().filter(|m| m.linked_client() == info.id)
        else {
            return false;
        };
        let Some(target) = meta.cancel.clone() else { return false };
        // The same assignment (client and moment) once connected: the server was not
        // released, and perhaps given to another client, while pgsluice connected to it.
        let (client, assigned) = (info.id, meta.request_us());
        crate::cancel::send_cancel_if(target, || meta.linked_client() == client && meta.request_us() == assigned).await
    }

    /// A process-unique id for a new client session (logs, admin console).
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// All pools, plus the database- and user-wide connection limits they share.
pub struct PoolRegistry {
    inner: Mutex<RegistryInner>,
    clock: Clock,
    server_ids: Arc<AtomicU64>,
}

#[derive(Default)]
struct RegistryInner {
    pools: HashMap<(String, String), PoolSet>,
    /// Sets replaced or removed by a reload that still have connections or waiters: upkeep
    /// keeps serving them (idle expiry, `query_wait_timeout`) until they are empty.
    retired: Vec<PoolSet>,
    db_limits: HashMap<String, Arc<Limit>>,
    user_limits: HashMap<String, Arc<Limit>>,
}

impl PoolRegistry {
    /// An empty registry whose connections are timed by `clock`.
    pub fn new(clock: Clock) -> PoolRegistry {
        PoolRegistry { inner: Mutex::default(), clock, server_ids: Arc::new(AtomicU64::new(1)) }
    }

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
        let secret = secret_for(cfg, db, user);
        let pools = cluster
            .hosts()
            .iter()
            .map(|host| {
                Pool::new(
                    self.settings_for(cfg, db, user, host),
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

    /// The settings a pool of `user` on `db` at `host` gets under `cfg`.
    pub fn settings_for(
        &self,
        cfg: &Config,
        db: &Database,
        user: &str,
        host: &Arc<crate::cluster::Host>,
    ) -> PoolSettings {
        let g = cfg.general();
        PoolSettings {
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
            tls: db.server_tls.clone(),
            auth: db.server_auth,
            clock: self.clock,
            server_ids: self.server_ids.clone(),
        }
    }

    /// Removes the set of (`db`, `user`) from the registry (a reload retires it); it stays
    /// among [`PoolRegistry::all`] until its last connection and waiter are gone.
    pub fn remove(&self, db: &str, user: &str) -> Option<PoolSet> {
        let mut inner = self.inner.lock();
        let set = inner.pools.remove(&(db.to_string(), user.to_string()))?;
        inner.retired.push(set.clone());
        Some(set)
    }

    /// Applies `cfg`'s `max_db_connections` and `max_user_connections` to the shared caps.
    pub fn set_limits(&self, cfg: &Config) {
        let inner = self.inner.lock();
        for (db, l) in &inner.db_limits {
            l.set_max(cfg.databases.get(db).map_or(0, |d| d.max_db_connections));
        }
        for (user, l) in &inner.user_limits {
            l.set_max(cfg.max_user_connections(user));
        }
    }

    /// A snapshot of all pool sets with their (database, user) keys.
    pub fn sets(&self) -> Vec<((String, String), PoolSet)> {
        self.inner.lock().pools.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// The open server connection with id `id` (a linked client's, for its CancelRequest).
    pub fn server(&self, id: u64) -> Option<Arc<crate::stats::ServerMeta>> {
        let sets: Vec<PoolSet> = {
            let inner = self.inner.lock();
            inner.pools.values().chain(inner.retired.iter()).cloned().collect()
        };
        sets.iter().flat_map(|s| s.pools().iter()).find_map(|p| p.server(id))
    }

    /// Every pool (all hosts of all sets).
    pub fn all(&self) -> Vec<Pool> {
        let mut inner = self.inner.lock();
        inner.retired.retain(|s| s.pools().iter().any(|p| !p.is_empty()));
        let current = inner.pools.values().flat_map(|s| s.pools().iter().cloned());
        let retired = inner.retired.iter().flat_map(|s| s.pools().iter().cloned());
        current.chain(retired).collect()
    }
}

/// The secret pools of `user` on `db` log in with: the database's fixed user's, else the
/// auth_file's entry for `user`.
pub fn secret_for(cfg: &Config, db: &Database, user: &str) -> Option<crate::auth::Secret> {
    match &db.fixed_user {
        Some(_) => db.fixed_secret.clone(),
        None => cfg.users.get(user).map(|u| u.secret.clone()),
    }
}

/// Admin-console state of one database: `PAUSE`/`RESUME` (and `KILL`, which pauses too)
/// and `DISABLE`/`ENABLE`. Sessions read it with one atomic load per request.
#[derive(Debug, Default)]
pub struct DbControl {
    paused: AtomicBool,
    disabled: AtomicBool,
    resumed: tokio::sync::Notify,
}

impl DbControl {
    /// Whether new requests must wait.
    #[inline]
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// New requests wait until [`DbControl::resume`].
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// Lets waiting requests go on.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }

    /// Whether new logins are refused.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// `DISABLE` (true) / `ENABLE` (false).
    pub fn set_disabled(&self, v: bool) {
        self.disabled.store(v, Ordering::Release);
    }

    /// Resolves once the database is not paused.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn wait_resumed(&self) {
        loop {
            let notified = self.resumed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }
}
