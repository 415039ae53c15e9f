//! Configuration: one TOML file (`[general]`, `[tls]`, `[databases.NAME]`, `[users.NAME]`)
//! plus a PgBouncer-format auth_file, parsed with `deny_unknown_fields` and validated once
//! into the runtime [`Config`]. Nothing downstream re-parses or re-validates settings.
//!
//! Invariants of a `Config`: every database has at least one parseable host and a pool size
//! ≥ 1 with `min_pool_size <= pool_size`; the TLS material (if any) loaded; auth_file entries
//! parsed; `track_extra_parameters` are identifiers, resolved into `Config::tracked`. Paths
//! in the file are relative to the file's directory.

mod duration;
mod general;
mod peers;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use duration::Dur;
pub use general::{
    AuthType, ClientTlsMode, DatabaseSection, General, HostEntry, LogFormat, MetricsSection, PeerSection, PoolMode,
    PrimaryReads, ReadYourWrites, ReadYourWritesScope, RoleHint, Route, SecretValue, ServerTlsMode, SessionState,
    TlsSection, TransactionRouting, UserSection, MIN_PROBE_GAP,
};
pub use peers::{Peer, MAX_PEER_ID, PEER_ID_ENV};

use crate::auth::{scram::Verifier, Secret};

/// `[general]` settings that only a restart changes (`SHOW CONFIG` `changeable = no`; `SET`
/// refuses them; a reload reports them).
pub const RESTART_ONLY: &[&str] = &[
    "listen_addr",
    "listen_port",
    "worker_threads",
    "so_reuseport",
    "unix_socket_dir",
    "max_login_clients_per_host",
    "max_login_clients",
    "auth_failure_delay",
    "auth_failure_max_delay",
    "unix_socket_mode",
    "unix_socket_group",
    "admin_database",
    "log_format",
    "max_client_conn",
    "read_only_functions",
    "max_parse_length",
    "classify_cache_size",
    "peer_id",
];

/// A config that could not be loaded, with a message precise enough to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong and where.
    pub message: String,
}

/// The file as written (plus defaults): what `check-config` prints.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Global settings.
    #[serde(default)]
    pub general: General,
    /// Client TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    /// Client-visible databases.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseSection>,
    /// Per-user overrides.
    #[serde(default)]
    pub users: BTreeMap<String, UserSection>,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Peered instances by `peer_id` (`[peers.N]`), for forwarded CancelRequests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, PeerSection>,
}

/// A backend address, `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl BackendAddr {
    /// Whether the host is a Unix socket directory (an absolute path), as in libpq.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `<dir>/.s.PGSQL.<port>` of a socket directory.
    pub fn unix_socket_path(&self) -> String {
        format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
    }

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (default port 5432).
    pub fn parse(s: &str) -> Result<BackendAddr, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| format!("invalid host {s:?}: missing ']'"))?;
            (h, after.strip_prefix(':'))
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (s, None),
            }
        };
        if host.is_empty() {
            return Err(format!("invalid host {s:?}: empty host name"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("invalid port in {s:?}"))?,
            None => 5432,
        };
        Ok(BackendAddr { host: host.to_string(), port })
    }
}

/// A validated `[databases.NAME]`.
#[derive(Debug)]
pub struct Database {
    /// Client-visible name.
    pub name: String,
    /// Backend hosts, in config order.
    pub hosts: Vec<BackendAddr>,
    /// Role hint of each host (same order as `hosts`).
    pub role_hints: Vec<Option<RoleHint>>,
    /// Read weight of each host (same order as `hosts`).
    pub weights: Vec<u32>,
    /// Default route of the database's clients.
    pub route: Route,
    /// Whether reads may use the primary.
    pub primary_reads: PrimaryReads,
    /// Whose writes its clients' reads must see, unless the user overrides it.
    pub ryw_scope: ReadYourWritesScope,
    /// Whether some client of it may need to see other clients' writes
    /// (`read_your_writes = "lsn"` and a scope other than `client` for it or for some
    /// user), so every client's writes there must be noted. Decided at load.
    pub ryw_shared: bool,
    /// How the health probes log in; `None`: the database is not probed (single host only).
    pub probe: Option<ProbeLogin>,
    /// Backend database name.
    pub dbname: String,
    /// Fixed backend user, if any.
    pub fixed_user: Option<String>,
    /// Secret for the fixed user, from the section or the auth_file.
    pub fixed_secret: Option<Secret>,
    /// Server connections per pool.
    pub pool_size: u32,
    /// Connections kept warm per pool.
    pub min_pool_size: u32,
    /// Reserve connections per pool.
    pub reserve_pool_size: u32,
    /// Pool mode unless the user overrides it.
    pub pool_mode: PoolMode,
    /// Limit over all pools of this database; 0 = none.
    pub max_db_connections: u32,
    /// TLS toward its servers (and its probes).
    pub server_tls: Arc<ServerTls>,
    /// What its servers may ask for at login (`server_auth_methods`).
    pub server_auth: crate::auth::require::ServerAuthMethods,
    /// Where users missing from the auth_file are looked up (`auth_user`).
    pub auth_lookup: Option<Arc<AuthLookup>>,
}

/// `auth_user` / `auth_query` / `auth_dbname` of a database, resolved.
#[derive(Debug)]
pub struct AuthLookup {
    /// The user the query runs as.
    pub user: String,
    /// Its secret, from the auth_file (none: the server must not ask for one).
    pub secret: Option<Secret>,
    /// The query (`$1` = the user name).
    pub query: String,
    /// The database it runs in.
    pub dbname: String,
}

/// TLS toward a database's servers, resolved at load.
#[derive(Debug)]
pub struct ServerTls {
    /// `server_tls_sslmode`.
    pub mode: ServerTlsMode,
    /// The connector's configuration (`None` with `disable`).
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// The settings it was built from: a reload keeps pools whose settings did not change.
    pub spec: String,
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls { mode: ServerTlsMode::Disable, config: None, spec: String::new() }
    }
}

/// Resolves the `server_tls_*` settings (a database's overrides over `[general]`).
fn server_tls(
    base: &Path,
    mode: ServerTlsMode,
    ca: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
    protocols: &str,
) -> Result<ServerTls, String> {
    use crate::net::tls::{client_config, protocol_versions, Verify};
    let spec = format!("{mode:?} {ca:?} {cert:?} {key:?} {protocols}");
    if mode == ServerTlsMode::Disable {
        return Ok(ServerTls { mode, config: None, spec });
    }
    let verify = match mode {
        ServerTlsMode::VerifyFull => Verify::ChainAndName,
        ServerTlsMode::VerifyCa => Verify::Chain,
        _ => Verify::Nothing,
    };
    let versions = protocol_versions(protocols).map_err(|e| format!("server_tls_protocols: {e}"))?;
    let ca = ca.map(|p| resolve(base, p));
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((resolve(base, c), resolve(base, k))),
        (None, None) => None,
        _ => return Err("server_tls_cert_file and server_tls_key_file go together".into()),
    };
    let config =
        client_config(verify, ca.as_deref(), client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())), &versions)?;
    Ok(ServerTls { mode, config: Some(config), spec })
}

/// The login of a database's health probes.
#[derive(Debug, Clone)]
pub struct ProbeLogin {
    /// Backend user.
    pub user: String,
    /// Its secret, if one is configured (else the keys of its first SCRAM client login).
    pub secret: Option<Secret>,
}

/// A user known from the auth_file.
pub struct UserAuth {
    /// Stored secret.
    pub secret: Secret,
    /// SCRAM verifier derived lazily from a plaintext secret (PBKDF2 runs once per user, not
    /// once per login).
    derived: OnceLock<Verifier>,
}

impl UserAuth {
    /// Wraps a secret.
    pub fn new(secret: Secret) -> UserAuth {
        UserAuth { secret, derived: OnceLock::new() }
    }

    /// The SCRAM verifier to check a client against, if SCRAM is possible for this secret.
    pub fn scram_verifier(&self) -> Option<&Verifier> {
        match &self.secret {
            Secret::Scram(v) => Some(v),
            Secret::Plain(p) => Some(self.derived.get_or_init(|| crate::auth::scram::verifier_for_plain(p))),
            Secret::Md5(_) => None,
        }
    }
}

/// Client TLS, loaded.
pub struct TlsSettings {
    /// Acceptor configuration.
    pub server_config: Arc<rustls::ServerConfig>,
    /// Requirement for clients.
    pub mode: ClientTlsMode,
    /// `tls-server-end-point` hash of the certificate (SCRAM-SHA-256-PLUS with clients).
    pub end_point: Option<Vec<u8>>,
    /// Client certificates are checked (`client_tls_ca_file`).
    pub client_certs: bool,
}

/// The validated runtime configuration. Shared as `Arc<Config>` and swapped whole on reload.
pub struct Config {
    /// What the file said, with defaults filled in.
    pub file: ConfigFile,
    /// Resolved listen address (the first of `listen_all`).
    pub listen: SocketAddr,
    /// Every address `listen_addr` names (a comma list: IP addresses, host names, `*`).
    pub listen_all: Vec<SocketAddr>,
    /// Client TLS, if configured and not disabled.
    pub tls: Option<TlsSettings>,
    /// `auth_hba_file`, parsed.
    pub hba: Option<Arc<crate::auth::hba::Hba>>,
    /// Databases by client-visible name.
    pub databases: HashMap<String, Arc<Database>>,
    /// auth_file users.
    pub users: HashMap<String, Arc<UserAuth>>,
    /// What the login of a user not in `users` imitates (from `users`' secrets).
    pub mock_secret: crate::auth::MockSecret,
    /// Where the file was read from.
    pub path: PathBuf,
    /// Parameters tracked per client: the built-in six plus `track_extra_parameters`.
    pub tracked: Arc<crate::params::Tracked>,
    /// Other peered instances by `peer_id` (`[peers.N]` without this instance's own).
    pub peers: HashMap<u16, Peer>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("path", &self.path).field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl Config {
    /// Reads, parses and validates the config file at `path`. The environment variable
    /// [`PEER_ID_ENV`] (`PGSLUICE_PEER_ID`), when set, overrides `[general] peer_id`, so
    /// peered instances can share one file (only here: text given to [`Config::from_str`]
    /// is taken as it is).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { path: path.into(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut file: ConfigFile = toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        if let Some(v) = std::env::var_os(PEER_ID_ENV) {
            file.general.peer_id = peers::peer_id_from_env(&v).map_err(err)?;
        }
        Config::from_file(file, path)
    }

    /// Parses and validates config text; `path` anchors relative paths and error messages.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { path: path.into(), message };
        let file: ConfigFile = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate(file, &base, path).map_err(err)
    }

    /// Validates an already parsed file (the console's `SET` edits one); `path` anchors
    /// relative paths.
    pub fn from_file(file: ConfigFile, path: &Path) -> Result<Config, ConfigError> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate(file, &base, path).map_err(|message| ConfigError { path: path.into(), message })
    }

    /// The general section.
    pub fn general(&self) -> &General {
        &self.file.general
    }

    /// Effective pool mode for `db` and `user` (user overrides database overrides general).
    pub fn pool_mode(&self, db: &Database, user: &str) -> PoolMode {
        self.file.users.get(user).and_then(|u| u.pool_mode).unwrap_or(db.pool_mode)
    }

    /// Effective route for `db` and `user` (user overrides database overrides general).
    pub fn route(&self, db: &Database, user: &str) -> Route {
        self.file.users.get(user).and_then(|u| u.route).unwrap_or(db.route)
    }

    /// Effective `read_your_writes_scope` for `db` and `user` (user overrides database
    /// overrides general).
    pub fn ryw_scope(&self, db: &Database, user: &str) -> ReadYourWritesScope {
        self.file.users.get(user).and_then(|u| u.read_your_writes_scope).unwrap_or(db.ryw_scope)
    }

    /// Effective `session_state` policy for `db` and `user` (user overrides database
    /// overrides general).
    pub fn session_state(&self, db: &str, user: &str) -> SessionState {
        self.file
            .users
            .get(user)
            .and_then(|u| u.session_state)
            .or_else(|| self.file.databases.get(db).and_then(|d| d.session_state))
            .unwrap_or(self.file.general.session_state)
    }

    /// Effective `max_user_connections` for `user`; 0 = unlimited.
    pub fn max_user_connections(&self, user: &str) -> u32 {
        self.file.users.get(user).and_then(|u| u.max_user_connections).unwrap_or(self.file.general.max_user_connections)
    }

    /// The effective configuration as TOML (secrets redacted).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.file).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The addresses of `listen_addr`: a comma list of IP addresses (IPv6 optionally in
/// brackets), host names (all their addresses) and `*` (every IPv4 and IPv6 address; empty
/// means the same), as in PgBouncer.
pub fn listen_addrs(spec: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let spec = if spec.trim().is_empty() { "*" } else { spec };
    for item in spec.split(',').map(str::trim) {
        let found: Vec<SocketAddr> = match item {
            "*" => {
                vec![SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port), SocketAddr::new(IpAddr::from([0u16; 8]), port)]
            }
            "" => return Err(format!("[general] listen_addr {spec:?}: empty item")),
            a => match a.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(a, port))
                    .map_err(|e| format!("[general] listen_addr {a:?}: cannot resolve: {e}"))?
                    .collect(),
            },
        };
        for a in found {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("[general] listen_addr {spec:?} names no address"));
    }
    Ok(out)
}

/// `unix_socket_mode` as permission bits.
pub fn unix_socket_mode(g: &General) -> Result<u32, String> {
    u32::from_str_radix(g.unix_socket_mode.trim(), 8).ok().filter(|&m| m <= 0o777).ok_or_else(|| {
        format!("[general] unix_socket_mode {:?} is not an octal mode like \"0777\"", g.unix_socket_mode)
    })
}

fn positive(d: Dur, name: &str) -> Result<Duration, String> {
    d.nonzero().ok_or_else(|| format!("[general] {name} must be greater than 0"))
}

fn validate(file: ConfigFile, base: &Path, path: &Path) -> Result<Config, String> {
    let g = &file.general;
    let listen_all = listen_addrs(&g.listen_addr, g.listen_port)?;

    if g.max_client_conn == 0 {
        return Err("[general] max_client_conn must be at least 1".into());
    }
    if g.default_pool_size == 0 {
        return Err("[general] default_pool_size must be at least 1".into());
    }
    positive(g.server_connect_timeout, "server_connect_timeout")?;
    unix_socket_mode(g)?;
    positive(g.stats_period, "stats_period")?;
    if g.admin_database.is_empty() {
        return Err("[general] admin_database must not be empty".into());
    }
    if file.databases.contains_key(&g.admin_database) {
        return Err(format!(
            "[databases.{0}] is the admin console's name (admin_database); rename the database or set admin_database",
            g.admin_database
        ));
    }
    if !file.metrics.listen_addr.is_empty() {
        file.metrics
            .listen_addr
            .parse::<SocketAddr>()
            .map_err(|_| format!("[metrics] listen_addr {:?} is not an IP:port address", file.metrics.listen_addr))?;
    }
    positive(g.shutdown_timeout, "shutdown_timeout")?;
    positive(g.health_check_interval, "health_check_interval")?;
    positive(g.health_check_timeout, "health_check_timeout")?;
    positive(g.circuit_breaker_backoff, "circuit_breaker_backoff")?;
    if g.health_check_fail_threshold == 0 || g.health_check_success_threshold == 0 || g.circuit_breaker_threshold == 0 {
        return Err(
            "[general] health_check_fail_threshold, health_check_success_threshold and circuit_breaker_threshold must be at least 1"
                .into(),
        );
    }
    if g.circuit_breaker_max_backoff.0 < g.circuit_breaker_backoff.0 {
        return Err("[general] circuit_breaker_max_backoff is shorter than circuit_breaker_backoff".into());
    }
    if g.max_packet_size < 1024 || g.max_packet_size as usize > crate::protocol::MAX_MESSAGE_LEN {
        return Err(format!("[general] max_packet_size must be between 1024 and {}", crate::protocol::MAX_MESSAGE_LEN));
    }

    for name in &g.track_extra_parameters {
        crate::params::validate_extra_name(name).map_err(|e| format!("[general] track_extra_parameters: {e}"))?;
    }
    let tracked = Arc::new(crate::params::Tracked::new(&g.track_extra_parameters));

    let mut users = HashMap::new();
    if let Some(f) = &g.auth_file {
        let p = resolve(base, f);
        let text = std::fs::read_to_string(&p).map_err(|e| format!("[general] auth_file {}: {e}", p.display()))?;
        for (name, secret) in
            crate::auth::userlist::parse(&text).map_err(|e| format!("auth_file {}: {e}", p.display()))?
        {
            users.insert(name, Arc::new(UserAuth::new(secret)));
        }
    } else if g.auth_type != AuthType::Any {
        return Err(format!("[general] auth_type {:?} needs an auth_file", g.auth_type));
    }

    let hba = match (&g.auth_hba_file, g.auth_type) {
        (Some(f), _) => {
            let path = resolve(base, f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("[general] auth_hba_file {}: {e}", path.display()))?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let include = |name: &str| {
                let p = resolve(&dir, name);
                std::fs::read_to_string(&p).map_err(|e| format!("@{name}: {}: {e}", p.display()))
            };
            let hba = crate::auth::hba::Hba::parse(&text, &include)
                .map_err(|e| format!("auth_hba_file {}: {e}", path.display()))?;
            Some(Arc::new(hba))
        }
        (None, AuthType::Hba) => return Err("[general] auth_type \"hba\" needs auth_hba_file".into()),
        (None, _) => None,
    };

    let tls = match &file.tls {
        Some(t) if t.client_tls_sslmode != ClientTlsMode::Disable => {
            let ca = t.client_tls_ca_file.as_ref().map(|f| resolve(base, f));
            use crate::net::tls::ClientCerts;
            let client_certs = match (&ca, t.client_tls_sslmode.requires_certificate()) {
                (Some(ca), true) => ClientCerts::Required(ca),
                (Some(ca), false) => ClientCerts::Optional(ca),
                (None, true) => {
                    return Err("[tls] client_tls_sslmode verify-ca/verify-full needs client_tls_ca_file".into())
                }
                (None, false) => ClientCerts::No,
            };
            let (server_config, end_point) =
                crate::net::tls::server_config(&resolve(base, &t.cert_file), &resolve(base, &t.key_file), client_certs)
                    .map_err(|e| format!("[tls] {e}"))?;
            Some(TlsSettings { server_config, mode: t.client_tls_sslmode, end_point, client_certs: ca.is_some() })
        }
        _ => None,
    };
    if g.auth_type == AuthType::Cert && !tls.as_ref().is_some_and(|t| t.client_certs) {
        return Err("[general] auth_type \"cert\" needs [tls] with client_tls_ca_file".into());
    }

    if let Some(p) = &g.health_check_password {
        // (Checked even if no database uses it: a missing secret is a load error.)
        p.resolve(base, "health_check_password").map_err(|e| format!("[general] {e}"))?;
    }
    let general_tls = Arc::new(
        server_tls(
            base,
            g.server_tls_sslmode,
            g.server_tls_ca_file.as_deref(),
            g.server_tls_cert_file.as_deref(),
            g.server_tls_key_file.as_deref(),
            &g.server_tls_protocols,
        )
        .map_err(|e| format!("[general] {e}"))?,
    );
    let general_auth =
        crate::auth::require::ServerAuthMethods::parse(&g.server_auth_methods).map_err(|e| format!("[general] {e}"))?;

    let mut databases = HashMap::new();
    // A user whose own scope is shared makes every database's writers note their writes.
    let user_shares_writes =
        file.users.values().any(|u| u.read_your_writes_scope.is_some_and(|s| s != ReadYourWritesScope::Client));
    for (name, d) in &file.databases {
        let ctx = |m: String| format!("[databases.{name}] {m}");
        let overrides_tls = d.server_tls_sslmode.is_some()
            || d.server_tls_ca_file.is_some()
            || d.server_tls_cert_file.is_some()
            || d.server_tls_key_file.is_some()
            || d.server_tls_protocols.is_some();
        let server_tls_of_db = if overrides_tls {
            Arc::new(
                server_tls(
                    base,
                    d.server_tls_sslmode.unwrap_or(g.server_tls_sslmode),
                    d.server_tls_ca_file.as_deref().or(g.server_tls_ca_file.as_deref()),
                    d.server_tls_cert_file.as_deref().or(g.server_tls_cert_file.as_deref()),
                    d.server_tls_key_file.as_deref().or(g.server_tls_key_file.as_deref()),
                    d.server_tls_protocols.as_deref().unwrap_or(&g.server_tls_protocols),
                )
                .map_err(ctx)?,
            )
        } else {
            general_tls.clone()
        };
        let auth_lookup = d.auth_user.as_ref().or(g.auth_user.as_ref()).map(|u| {
            Arc::new(AuthLookup {
                user: u.clone(),
                secret: users.get(u).map(|a| a.secret.clone()),
                query: d.auth_query.clone().unwrap_or_else(|| g.auth_query.clone()),
                dbname: d
                    .auth_dbname
                    .clone()
                    .or_else(|| g.auth_dbname.clone())
                    .unwrap_or_else(|| d.dbname.clone().unwrap_or_else(|| name.clone())),
            })
        });
        if auth_lookup.as_ref().is_some_and(|l| !l.query.contains("$1")) {
            return Err(ctx("auth_query must take the user name as $1".into()));
        }
        let server_auth = match &d.server_auth_methods {
            Some(spec) => crate::auth::require::ServerAuthMethods::parse(spec).map_err(ctx)?,
            None => general_auth,
        };
        if d.hosts.is_empty() {
            return Err(ctx("hosts must list at least one host".into()));
        }
        let hosts = d.hosts.iter().map(|h| BackendAddr::parse(h.addr())).collect::<Result<Vec<_>, _>>().map_err(ctx)?;
        if hosts.len() > 64 {
            return Err(ctx("lists more than 64 hosts".into()));
        }
        for (i, h) in hosts.iter().enumerate() {
            if hosts[..i].contains(h) {
                return Err(ctx(format!("host {h} is listed twice")));
            }
        }
        let role_hints: Vec<_> = d.hosts.iter().map(HostEntry::role).collect();
        let weights: Vec<_> = d.hosts.iter().map(HostEntry::weight).collect();
        let pool_size = d.pool_size.unwrap_or(g.default_pool_size);
        let min_pool_size = d.min_pool_size.unwrap_or(g.min_pool_size);
        if pool_size == 0 {
            return Err(ctx("pool_size must be at least 1".into()));
        }
        if min_pool_size > pool_size {
            return Err(ctx(format!("min_pool_size ({min_pool_size}) is larger than pool_size ({pool_size})")));
        }
        let fixed_secret = match (&d.user, &d.password) {
            (_, Some(p)) => {
                let p = p.resolve(base, "password").map_err(ctx)?;
                Some(Secret::parse(&p).map_err(|e| ctx(format!("password: {e}")))?)
            }
            (Some(u), None) => users.get(u).map(|a: &Arc<UserAuth>| a.secret.clone()),
            (None, None) => None,
        };
        if d.password.is_some() && d.user.is_none() {
            return Err(ctx("password is set but user is not".into()));
        }
        let probe = probe_login(base, g, d, &users, fixed_secret.as_ref()).map_err(ctx)?;
        if probe.is_none() && hosts.len() > 1 {
            return Err(ctx(format!(
                "lists {} hosts, so pgsluice must probe them: set health_check_user (here or in [general]) or a fixed user",
                hosts.len()
            )));
        }
        let ryw_scope = d.read_your_writes_scope.unwrap_or(g.read_your_writes_scope);
        databases.insert(
            name.clone(),
            Arc::new(Database {
                name: name.clone(),
                hosts,
                role_hints,
                weights,
                route: d.route.unwrap_or(g.route),
                primary_reads: d.primary_reads.unwrap_or(g.primary_reads),
                ryw_scope,
                ryw_shared: g.read_your_writes == ReadYourWrites::Lsn
                    && (ryw_scope != ReadYourWritesScope::Client || user_shares_writes),
                probe,
                dbname: d.dbname.clone().unwrap_or_else(|| name.clone()),
                fixed_user: d.user.clone(),
                fixed_secret,
                pool_size,
                min_pool_size,
                reserve_pool_size: d.reserve_pool_size.unwrap_or(g.reserve_pool_size),
                pool_mode: d.pool_mode.unwrap_or(g.pool_mode),
                max_db_connections: d.max_db_connections.unwrap_or(g.max_db_connections),
                server_tls: server_tls_of_db,
                server_auth,
                auth_lookup,
            }),
        );
    }

    let mock_secret = crate::auth::MockSecret::typical(users.values().map(|u| &u.secret));
    let peers = peers::validate(g, &file.peers)?;
    Ok(Config {
        listen: listen_all[0],
        listen_all,
        tls,
        hba,
        databases,
        users,
        mock_secret,
        path: path.into(),
        tracked,
        peers,
        file,
    })
}

/// Who the probes of database `d` log in as: `health_check_user` of the database (with its
/// `health_check_password`), else of `[general]` (with the database's or the general
/// password), else — only for a database with several hosts — the fixed user. A password
/// not given explicitly comes from the fixed user's or the auth_file. A single host with no
/// explicit probe user is not probed, so a wrong password there still fails logins at once
/// with the server's error.
fn probe_login(
    base: &Path,
    g: &General,
    d: &DatabaseSection,
    users: &HashMap<String, Arc<UserAuth>>,
    fixed_secret: Option<&Secret>,
) -> Result<Option<ProbeLogin>, String> {
    let (user, password) = if let Some(u) = &d.health_check_user {
        (u, d.health_check_password.as_ref())
    } else if let Some(u) = &g.health_check_user {
        (u, d.health_check_password.as_ref().or(g.health_check_password.as_ref()))
    } else if let (Some(u), true) = (&d.user, d.hosts.len() > 1) {
        (u, d.health_check_password.as_ref())
    } else {
        return Ok(None);
    };
    let secret = match password {
        Some(p) => {
            let p = p.resolve(base, "health_check_password")?;
            Some(Secret::parse(&p).map_err(|e| format!("health_check_password: {e}"))?)
        }
        None if d.user.as_ref() == Some(user) => fixed_secret.cloned(),
        None => users.get(user).map(|a| a.secret.clone()),
    };
    Ok(Some(ProbeLogin { user: user.clone(), secret }))
}

#[cfg(test)]
mod tests;
