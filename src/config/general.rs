//! `[general]` settings: PgBouncer's names and meanings (its `[pgbouncer]` section), plus a
//! few of our own that are marked as such. Every field documents its default.

use serde::{Deserialize, Serialize};

use super::duration::Dur;

/// How long a client keeps a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// For the whole client session; `server_reset_query` on release.
    Session,
    /// Until the transaction ends (ReadyForQuery `I`). The default.
    #[default]
    Transaction,
    /// Until the statement ends; multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    /// Lower-case name, as in the config file and `SHOW` output.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// How clients authenticate to pgsluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AuthType {
    /// SCRAM-SHA-256 (RFC 7677). The default.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge; users whose auth_file entry is a SCRAM verifier get SCRAM instead
    /// (as in PgBouncer).
    #[serde(rename = "md5")]
    Md5,
    /// Cleartext password (use only over TLS).
    #[serde(rename = "plain")]
    Plain,
    /// A TLS client certificate whose common name is the user name.
    #[serde(rename = "cert")]
    Cert,
    /// The operating-system user of a Unix-socket client (HBA `peer` only; not a value of
    /// the setting).
    #[serde(skip)]
    Peer,
    /// No password, but the user must be in the auth_file (PgBouncer's meaning).
    #[serde(rename = "trust")]
    Trust,
    /// No password and any user name; never grants admin console access.
    #[serde(rename = "any")]
    Any,
    /// The rules of `auth_hba_file` decide, per connection.
    #[serde(rename = "hba")]
    Hba,
}

/// TLS requirement for client connections (PgBouncer's `client_tls_sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// Refuse TLS (answer `N` to SSLRequest).
    Disable,
    /// Accept TLS when the client asks.
    Allow,
    /// Accept TLS when the client asks. The default when `[tls]` is configured.
    #[default]
    Prefer,
    /// Refuse clients that do not use TLS.
    Require,
    /// Require TLS and a client certificate signed by `client_tls_ca_file`.
    VerifyCa,
    /// The same (for clients PgBouncer gives both the same meaning).
    VerifyFull,
}

impl ClientTlsMode {
    /// Whether TLS is required.
    pub fn requires_tls(self) -> bool {
        matches!(self, ClientTlsMode::Require | ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull)
    }

    /// Whether a client certificate is required.
    pub fn requires_certificate(self) -> bool {
        matches!(self, ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull)
    }
}

/// TLS toward PostgreSQL servers (PgBouncer's `server_tls_sslmode`, libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP only.
    Disable,
    /// Plain TCP; TLS only if the server refuses the plain login (`28000`).
    Allow,
    /// TLS if the server accepts it (certificate not checked), else plain TCP. The default.
    #[default]
    Prefer,
    /// TLS or nothing (certificate not checked).
    Require,
    /// TLS, with a certificate signed by `server_tls_ca_file`.
    VerifyCa,
    /// TLS, with a certificate signed by `server_tls_ca_file` and valid for the host name.
    VerifyFull,
}

impl ServerTlsMode {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Allow => "allow",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull)
    }
}

/// The `[general]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Address to listen on; `*` means all IPv4 addresses. Default `127.0.0.1`. Restart to change.
    pub listen_addr: String,
    /// TCP port. Default 6432. Restart to change.
    pub listen_port: u16,
    /// Most client connections at once; more get `53300`. Default 100.
    pub max_client_conn: u32,
    /// Default pool mode. Default `transaction`.
    pub pool_mode: PoolMode,
    /// Server connections per (database, user) pool. Default 20.
    pub default_pool_size: u32,
    /// Server connections kept open even when idle. Default 0.
    pub min_pool_size: u32,
    /// Extra connections a pool may open when a client has waited `reserve_pool_timeout`.
    /// Default 0.
    pub reserve_pool_size: u32,
    /// See `reserve_pool_size`; 0 disables the reserve (as in PgBouncer). Default 5s.
    pub reserve_pool_timeout: Dur,
    /// Most server connections per database over all its pools; 0 = unlimited. Default 0.
    pub max_db_connections: u32,
    /// Most server connections per user over all its pools; 0 = unlimited. Default 0.
    pub max_user_connections: u32,
    /// Time allowed for connecting and logging in to a server. Default 15s.
    pub server_connect_timeout: Dur,
    /// Idle server connections older than this (idle time) are closed; 0 = never. Default 600s.
    pub server_idle_timeout: Dur,
    /// Server connections older than this are closed when released; 0 = use each connection
    /// only once (PgBouncer's meaning). Default 3600s.
    pub server_lifetime: Dur,
    /// A connection idle longer than this runs `server_check_query` before reuse; 0 = always.
    /// Default 30s.
    pub server_check_delay: Dur,
    /// Query for the check above; empty disables the check. Default `select 1`.
    pub server_check_query: String,
    /// A client waiting for a server longer than this gets an error (checked once a second,
    /// as PgBouncer does); 0 = wait forever. Default 120s.
    pub query_wait_timeout: Dur,
    /// A query running longer than this is canceled and the client disconnected;
    /// 0 = disabled. Default 0.
    pub query_timeout: Dur,
    /// A client idle inside a transaction longer than this is disconnected; 0 = disabled.
    /// Default 0.
    pub idle_transaction_timeout: Dur,
    /// A client idle (no transaction) longer than this is disconnected; 0 = disabled.
    /// Default 0.
    pub client_idle_timeout: Dur,
    /// Time a client has to finish TLS + startup + authentication; 0 = no limit. Default 60s.
    pub client_login_timeout: Dur,
    /// (pgsluice) Time from accepting a connection to its first byte. Default 5s.
    pub client_first_byte_timeout: Dur,
    /// (pgsluice) Connections from one address that have not sent their first byte; a new
    /// one beyond it closes the oldest of them, once it has waited a second (slow-loris).
    /// Default 1000. Restart to change.
    pub max_login_clients_per_host: u32,
    /// (pgsluice) The same overall; beyond, the oldest is closed. Default 10000.
    /// Restart to change.
    pub max_login_clients: u32,
    /// (pgsluice) After 3 failed logins of one user from one address, that pair's next
    /// attempt waits this long, twice as long after each further failure (up to
    /// `auth_failure_max_delay`); 0 = off. Default 100ms. Restart to change.
    pub auth_failure_delay: Dur,
    /// (pgsluice) The longest such wait; an attempt whose turn is further away is refused
    /// (28000) without checking its password. Default 5s. Restart to change.
    pub auth_failure_max_delay: Dur,
    /// Run on a server connection released by a session-mode client (or always, see
    /// below). Default `DISCARD ALL`; empty disables.
    pub server_reset_query: String,
    /// Run `server_reset_query` in transaction mode too. Default false.
    pub server_reset_query_always: bool,
    /// Client authentication method. Default `scram-sha-256`.
    pub auth_type: AuthType,
    /// PgBouncer-format userlist (`"user" "password-or-verifier"`), relative to the config
    /// file. Default none.
    pub auth_file: Option<String>,
    /// pg_hba.conf-format rules for `auth_type = "hba"` (relative to the config file).
    pub auth_hba_file: Option<String>,
    /// User that runs `auth_query` for clients not in the auth_file (its password comes from
    /// the auth_file). Databases may override it. Default none (no lookup).
    pub auth_user: Option<String>,
    /// Query that returns `(name, password hash)` of a user, `$1` being the user name; run
    /// through the extended protocol. Default: PgBouncer's, schema-qualified and honouring
    /// `VALID UNTIL` ([`DEFAULT_AUTH_QUERY`]).
    pub auth_query: String,
    /// Database `auth_query` runs in. Default: the client's database's own.
    pub auth_dbname: Option<String>,
    /// (pgsluice) How long a user found by `auth_query` is trusted before it is looked up
    /// again (a changed password or expiry takes effect then). Default 60s.
    pub auth_cache_ttl: Dur,
    /// (pgsluice) How long a name `auth_query` did not find stays unknown. Default 10s.
    pub auth_negative_cache_ttl: Dur,
    /// Startup parameters accepted and ignored (others not tracked are refused), also inside
    /// `options`; listing `options` itself ignores every untracked item of `options`.
    /// Default `["extra_float_digits"]`.
    pub ignore_startup_parameters: Vec<String>,
    /// Parameters tracked per client besides the built-in six (`client_encoding`,
    /// `DateStyle`, `TimeZone`, `IntervalStyle`, `standard_conforming_strings`,
    /// `application_name`): accepted in the startup packet and in `options`, and brought to
    /// the client's value (or reset) on every server it gets. Case-insensitive identifiers.
    /// Default `[]`. PgBouncer's `track_extra_parameters`.
    pub track_extra_parameters: Vec<String>,
    /// Append ` - host:port` of the client to `application_name` sent to servers. Default false.
    pub application_name_add_host: bool,
    /// (pgsluice) Append ` #<client id>` to `application_name` sent to servers, so
    /// `pg_stat_activity` and server logs can be matched with pgsluice's logs and `SHOW
    /// CLIENTS`. Default false.
    pub application_name_add_client_id: bool,
    /// Enable TCP keepalive (OS default timings) on client and server sockets, so dead peers
    /// are eventually detected. Default true. PgBouncer's `tcp_keepalive`.
    pub tcp_keepalive: bool,
    /// (pgsluice) Longest a graceful stop waits for running transactions. Default 30s.
    pub shutdown_timeout: Dur,
    /// (pgsluice) Worker threads; 0 = one per core. Default 0. Restart to change.
    pub worker_threads: usize,
    /// Largest client message accepted, bytes (PgBouncer's `max_packet_size`). Default
    /// 1 GiB − 1, PostgreSQL's own limit.
    pub max_packet_size: u32,
    /// Prepared statements tracked per server connection in transaction and statement mode
    /// (least recently used ones are closed beyond it); 0 turns the rewriting of named
    /// prepared statements off. Default 200.
    pub max_prepared_statements: u32,
    /// (pgsluice) Named prepared statements one client may hold (pgsluice keeps them, so a
    /// client could otherwise grow its memory without bound); a Parse beyond gets `53400`.
    /// Default 5000.
    pub max_client_prepared_statements: u32,
    /// (pgsluice) Bytes of statement names and texts one client may hold; a named Parse
    /// beyond gets `53400`, and one larger than this on its own closes the client (`54000`)
    /// before it is read whole. Default 8 MiB (pgjdbc's own statement cache holds 5 MiB).
    pub max_client_prepared_bytes: u32,
    /// (pgsluice) Channels one client may `LISTEN` on in transaction and statement mode (the
    /// LISTEN hub keeps them); a `LISTEN` beyond gets `54000`. Default 1000.
    pub max_client_listen_channels: u32,
    /// (pgsluice) Bytes of notifications queued for one client that has not read them (in
    /// a long transaction, or not reading its socket); past it the client is closed with
    /// FATAL `53400`, never silently skipped. Default 1 MiB.
    pub max_client_notification_bytes: u32,
    /// (pgsluice) How often each host of a database is probed (`pg_is_in_recovery()`, WAL
    /// positions, timeline). While a database has no primary, probes run 5× as often.
    /// Default 1s.
    pub health_check_interval: Dur,
    /// (pgsluice) Time a probe has to connect or to answer. Default 2s.
    pub health_check_timeout: Dur,
    /// (pgsluice) Consecutive failed probes before a host is marked down. Default 3.
    pub health_check_fail_threshold: u32,
    /// (pgsluice) Consecutive good probes before a down host is marked up again. Default 2.
    pub health_check_success_threshold: u32,
    /// (pgsluice) User the probes log in as, unless the database sets its own; default, for a
    /// database with several hosts: its fixed `user`. A single-host database without a probe
    /// user is not probed (its host is taken as the primary); a multi-host database without
    /// one is a config error.
    pub health_check_user: Option<String>,
    /// (pgsluice) Password of `health_check_user` (plaintext or md5 hash); default: the
    /// auth_file entry, or the keys of the user's first SCRAM client login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_password: Option<SecretValue>,
    /// TLS toward servers: `disable`, `allow`, `prefer` (the default), `require`,
    /// `verify-ca`, `verify-full`, as libpq's `sslmode`. Databases may override it (and the
    /// four settings below). Health probes use the same TLS.
    pub server_tls_sslmode: ServerTlsMode,
    /// PEM file of the CA(s) that sign server certificates (`verify-ca`, `verify-full`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_ca_file: Option<String>,
    /// PEM client certificate presented to servers (with `server_tls_key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_cert_file: Option<String>,
    /// PEM private key of `server_tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_key_file: Option<String>,
    /// TLS versions toward servers: `secure` (the default: TLS 1.2 and 1.3), `all`,
    /// `tlsv1.2`, `tlsv1.3` (a comma list). pgsluice's TLS library has no TLS 1.0 or 1.1.
    pub server_tls_protocols: String,
    /// (libpq's `require_auth`) What a server may ask for when pgsluice logs in: a comma list
    /// of `password`, `md5`, `scram-sha-256`, `none`, or the same each prefixed with `!` to
    /// forbid. Empty (the default): anything but a cleartext password over a connection
    /// without TLS.
    pub server_auth_methods: String,
    /// (pgsluice) A replica whose replay is more than this behind the primary (in time) takes
    /// no reads until it catches up. Default 1s.
    pub max_replica_lag: Dur,
    /// (pgsluice) Same, in bytes of WAL; 0 = no byte bound. Default 0.
    pub max_replica_lag_bytes: u64,
    /// (pgsluice) How long a request that needs the primary waits for one to appear (during
    /// a failover) before it gets an error. Default 10s.
    pub failover_wait_timeout: Dur,
    /// (pgsluice) Consecutive failed connection attempts to a host that open its circuit
    /// breaker (no attempts for a backoff that doubles up to `circuit_breaker_max_backoff`,
    /// then one trial). Default 3.
    pub circuit_breaker_threshold: u32,
    /// (pgsluice) First breaker backoff. Default 1s.
    pub circuit_breaker_backoff: Dur,
    /// (pgsluice) Longest breaker backoff. Default 30s.
    pub circuit_breaker_max_backoff: Dur,
    /// (pgsluice) Where requests go: `auto` (reads to replicas, the rest to the primary),
    /// `primary` (everything), `replica` (everything to replicas; a read-only database).
    /// Databases and users may override it. Default `auto`.
    pub route: Route,
    /// (pgsluice) Whether reads may go to the primary: `fallback` (when no replica is
    /// eligible), `never` (error instead), `always` (the primary is one of the read
    /// candidates, balanced by its `weight`). Default `fallback`.
    pub primary_reads: PrimaryReads,
    /// (pgsluice) How a transaction opened by a plain `BEGIN` is routed: `primary`, or
    /// `first_statement` (by its first statement: pgsluice answers a lone simple-query `BEGIN`
    /// itself and sends it on with the next statement; a read-only first statement puts the
    /// whole transaction on a replica, where a later write fails with 25006). (`BEGIN READ
    /// ONLY` always goes to a replica.) Default `primary`.
    pub transaction_routing: TransactionRouting,
    /// (pgsluice) `lsn`: after a client's write, its reads go only to replicas that have
    /// replayed the primary's WAL position at the end of that write (else to the primary);
    /// `off`: only the lag bounds apply. Default `lsn`.
    pub read_your_writes: ReadYourWrites,
    /// (pgsluice) How long a read waits for a replica to catch up with the client's last
    /// write before it goes to the primary. Default 0s.
    pub read_your_writes_wait: Dur,
    /// (pgsluice) Whose writes a read must see: `client` (its own), `user` (any client of
    /// the same user and database), `database` (any client of the database). Databases and
    /// users may override it. Default `database`.
    pub read_your_writes_scope: ReadYourWritesScope,
    /// (pgsluice) Functions that may run on a replica, besides the built-in allowlist
    /// (lower case; `schema.name` allowed). Default `[]`.
    pub read_only_functions: Vec<String>,
    /// (pgsluice) Longest statement the SQL parser looks at; longer ones that the keyword
    /// scan cannot decide go to the primary. Default 16384.
    pub max_parse_length: u32,
    /// (pgsluice) Parsed statement classifications kept in memory. Default 4096.
    pub classify_cache_size: u32,
    /// Name of the admin console's virtual database. Default `pgbouncer`. Restart to change.
    pub admin_database: String,
    /// Users allowed every admin console command (they must pass `auth_type`, like any
    /// client). Default `[]`.
    pub admin_users: Vec<String>,
    /// Users allowed the admin console's read-only `SHOW` commands. Default `[]`.
    pub stats_users: Vec<String>,
    /// (pgsluice) `text` or `json` (one object per line). Default `text`. Restart to change.
    pub log_format: LogFormat,
    /// Log each client login. Default true.
    pub log_connections: bool,
    /// Log each client disconnection with its reason. Default true.
    pub log_disconnections: bool,
    /// Log errors pgsluice itself sends to clients. Default true.
    pub log_pooler_errors: bool,
    /// Log a one-line summary of traffic every `stats_period`. Default true.
    pub log_stats: bool,
    /// How often averages (`SHOW STATS` `avg_*`, `SHOW STATS_AVERAGES`) are recomputed and the
    /// `log_stats` line written. Default 60s.
    pub stats_period: Dur,
    /// (pgsluice) What a transaction-mode client that changes session state gets (see
    /// docs/session-state.md): `pin` (it keeps its server connection until the state is
    /// undone or it disconnects; the connection is reset before reuse), `reject` (an error
    /// naming the statement), `allow` (PgBouncer's behaviour: the state leaks). Databases and
    /// users may override it. Default `pin`.
    pub session_state: SessionState,
    /// Set `SO_REUSEPORT` on the listening socket, so a second pgsluice can listen on the same
    /// port during an online restart (see docs/operations.md). Default false. Restart to change.
    pub so_reuseport: bool,
    /// This process's id among peered pgsluice instances (PgBouncer's `peer_id`), 1 to
    /// 16383; 0 (the default) turns peering off. Client cancel keys carry it, and a
    /// CancelRequest that names another id is forwarded to that id's `[peers.N]` (see
    /// docs/scaling.md). The environment variable `PGSLUICE_PEER_ID` overrides the file, so
    /// instances can share one file. Restart to change.
    pub peer_id: u16,
    /// Directory for a Unix-domain listening socket `.s.PGSQL.<listen_port>`, besides TCP;
    /// empty (the default): none. Restart to change.
    pub unix_socket_dir: String,
    /// Permissions of the socket file, octal. Default `"0777"` (as PgBouncer).
    pub unix_socket_mode: String,
    /// Group owning the socket file; default: the process's.
    pub unix_socket_group: Option<String>,
}

/// The `session_state` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Keep the client on its server until the state is undone.
    #[default]
    Pin,
    /// Refuse the statement with an error.
    Reject,
    /// Let it through (the state leaks to the next client of that server).
    Allow,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A `[peers.N]` section: where pgsluice instance N (its `peer_id`) takes connections, for
/// CancelRequests that reach another instance (PgBouncer's `[peers]`). A section for the
/// instance's own id is allowed and ignored, so every instance can share the same list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// `"host:port"` (port 6432 if absent), `"[v6]:port"`, or a Unix socket directory
    /// `"/dir"` / `"/dir:port"` (the socket `.s.PGSQL.<port>` in it). Host names are
    /// resolved at each forward. Reloadable.
    pub host: String,
    /// Most CancelRequests forwarded to this peer at once (more wait their turn); default
    /// `default_pool_size`. Reloadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
}

/// The `[metrics]` section: the Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` to serve `GET /metrics` on; empty (the default) turns the endpoint off.
    /// Restart to change.
    pub listen_addr: String,
}

/// Where requests of a database or user go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Classify: reads to replicas, everything else to the primary.
    #[default]
    Auto,
    /// Everything to the primary.
    Primary,
    /// Everything to replicas (an error when none is eligible).
    Replica,
}

impl Route {
    /// `auto`, `primary` or `replica`.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Auto => "auto",
            Route::Primary => "primary",
            Route::Replica => "replica",
        }
    }

    /// A route by name, case-insensitively (a client's `pgsluice.route`).
    pub fn parse(s: &str) -> Option<Route> {
        [Route::Auto, Route::Primary, Route::Replica].into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Whether reads may use the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryReads {
    /// Only when no replica is eligible.
    #[default]
    Fallback,
    /// Never: an error when no replica is eligible.
    Never,
    /// Always a candidate, weighted like a replica.
    Always,
}

/// Routing of transactions opened by a plain `BEGIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransactionRouting {
    /// To the primary.
    #[default]
    Primary,
    /// By the transaction's first statement.
    FirstStatement,
}

/// Read-your-writes mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// Only the lag bounds.
    Off,
    /// By WAL position.
    #[default]
    Lsn,
}

/// Whose writes a read must see (with `read_your_writes = "lsn"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWritesScope {
    /// The client's own, on the same connection.
    Client,
    /// Those of every client of the same user and database.
    User,
    /// Those of every client of the database.
    #[default]
    Database,
}

impl ReadYourWritesScope {
    /// `client`, `user` or `database`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadYourWritesScope::Client => "client",
            ReadYourWritesScope::User => "user",
            ReadYourWritesScope::Database => "database",
        }
    }
}

/// PgBouncer's `auth_query` made safe: every name schema-qualified and every operator
/// spelled `OPERATOR(pg_catalog.…)`, so a hostile `search_path` cannot substitute its own,
/// and a role past its `VALID UNTIL` is not found (PgBouncer's CVE-2025-2291).
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_catalog.pg_shadow \
WHERE usename OPERATOR(pg_catalog.=) $1 \
AND (valuntil IS NULL OR valuntil OPERATOR(pg_catalog.>) pg_catalog.now())";

/// Shortest time between two probes of one host, however often they are wanted.
pub const MIN_PROBE_GAP: std::time::Duration = std::time::Duration::from_millis(50);

impl General {
    /// How often each host of a database with replicas is probed: `health_check_interval`,
    /// or a quarter of `max_replica_lag` when that is shorter (at least [`MIN_PROBE_GAP`]).
    /// A replica that falls behind the bound is then seen within a quarter of it, and its
    /// lag, interpolated between samples a quarter of the bound apart, is off by less than
    /// that: it stops taking reads within half the bound.
    pub fn replica_probe_period(&self) -> std::time::Duration {
        let interval = self.health_check_interval.0;
        if self.max_replica_lag.0.is_zero() {
            return interval;
        }
        interval.min((self.max_replica_lag.0 / 4).max(MIN_PROBE_GAP))
    }

    /// What the settings cannot honour, for `check-config` and the log at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let bound = self.max_replica_lag.0;
        if !bound.is_zero() && self.replica_probe_period() * 2 > bound {
            w.push(format!(
                "max_replica_lag = {:?} cannot be honoured: probes run at most every {:?}, so a replica may take \
                 reads until its lag reaches about {:?} (use at least {:?})",
                bound,
                self.replica_probe_period(),
                self.replica_probe_period() * 2,
                MIN_PROBE_GAP * 2
            ));
        }
        if self.max_replica_lag_bytes > 0 {
            let period = self.replica_probe_period();
            if period > std::time::Duration::from_secs(1) {
                w.push(format!(
                    "max_replica_lag_bytes is checked once per probe ({period:?}): a replica past it may take reads \
                     for up to that long (set health_check_interval or max_replica_lag lower)"
                ));
            }
        }
        w
    }
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            max_client_conn: 100,
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Dur::secs(5),
            max_db_connections: 0,
            max_user_connections: 0,
            server_connect_timeout: Dur::secs(15),
            server_idle_timeout: Dur::secs(600),
            server_lifetime: Dur::secs(3600),
            server_check_delay: Dur::secs(30),
            server_check_query: "select 1".into(),
            query_wait_timeout: Dur::secs(120),
            query_timeout: Dur::secs(0),
            idle_transaction_timeout: Dur::secs(0),
            client_idle_timeout: Dur::secs(0),
            client_login_timeout: Dur::secs(60),
            client_first_byte_timeout: Dur::secs(5),
            max_login_clients_per_host: 1000,
            max_login_clients: 10000,
            auth_failure_delay: Dur::millis(100),
            auth_failure_max_delay: Dur::secs(5),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            auth_type: AuthType::ScramSha256,
            auth_file: None,
            auth_hba_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: None,
            auth_cache_ttl: Dur::secs(60),
            auth_negative_cache_ttl: Dur::secs(10),
            ignore_startup_parameters: vec!["extra_float_digits".into()],
            track_extra_parameters: Vec::new(),
            application_name_add_host: false,
            application_name_add_client_id: false,
            tcp_keepalive: true,
            shutdown_timeout: Dur::secs(30),
            worker_threads: 0,
            max_packet_size: crate::protocol::MAX_MESSAGE_LEN as u32,
            max_prepared_statements: 200,
            max_client_prepared_statements: 5000,
            max_client_prepared_bytes: 8 << 20,
            max_client_listen_channels: 1000,
            max_client_notification_bytes: 1 << 20,
            health_check_interval: Dur::secs(1),
            health_check_timeout: Dur::secs(2),
            health_check_fail_threshold: 3,
            health_check_success_threshold: 2,
            health_check_user: None,
            health_check_password: None,
            server_tls_sslmode: ServerTlsMode::Prefer,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_protocols: "secure".into(),
            server_auth_methods: String::new(),
            max_replica_lag: Dur::secs(1),
            max_replica_lag_bytes: 0,
            failover_wait_timeout: Dur::secs(10),
            circuit_breaker_threshold: 3,
            circuit_breaker_backoff: Dur::secs(1),
            circuit_breaker_max_backoff: Dur::secs(30),
            route: Route::Auto,
            primary_reads: PrimaryReads::Fallback,
            transaction_routing: TransactionRouting::Primary,
            read_your_writes: ReadYourWrites::Lsn,
            read_your_writes_wait: Dur::secs(0),
            read_your_writes_scope: ReadYourWritesScope::Database,
            read_only_functions: Vec::new(),
            max_parse_length: 16384,
            classify_cache_size: 4096,
            admin_database: "pgbouncer".into(),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            log_format: LogFormat::Text,
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            log_stats: true,
            stats_period: Dur::secs(60),
            so_reuseport: false,
            peer_id: 0,
            unix_socket_dir: String::new(),
            unix_socket_mode: "0777".into(),
            unix_socket_group: None,
            session_state: SessionState::Pin,
        }
    }
}

/// The `[tls]` section: TLS for client connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain file, relative to the config file.
    pub cert_file: String,
    /// PEM private key file, relative to the config file.
    pub key_file: String,
    /// Default `prefer`.
    #[serde(default)]
    pub client_tls_sslmode: ClientTlsMode,
    /// PEM CA certificate(s) that sign client certificates: with it, clients may present
    /// one (`auth_type = "cert"`, HBA `cert`); `verify-ca`/`verify-full` require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls_ca_file: Option<String>,
}

/// A `[databases.NAME]` section: a client-visible database and the backend it maps to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// Backend hosts: `"host:port"` (port defaults to 5432) or
    /// `{ host = "host:port", role = "primary" | "replica" }`. Roles are discovered by the
    /// health probes; a `role` only constrains what a host may become.
    pub hosts: Vec<HostEntry>,
    /// Overrides `[general] health_check_user` for this database (the general
    /// `health_check_password` does not apply to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_user: Option<String>,
    /// Password of the probe user of this database (its own `health_check_user`, or the
    /// general one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_password: Option<SecretValue>,
    /// Backend database name; default: the section name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// Fixed backend user: all clients of this database share one pool as this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password (or verifier, or md5 hash) for the fixed `user`; else looked up in auth_file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretValue>,
    /// Overrides `default_pool_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    /// Overrides `min_pool_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pool_size: Option<u32>,
    /// Overrides `reserve_pool_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_pool_size: Option<u32>,
    /// Overrides `pool_mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    /// Overrides `max_db_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_db_connections: Option<u32>,
    /// Overrides `[general] route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// Overrides `[general] primary_reads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_reads: Option<PrimaryReads>,
    /// Overrides `[general] read_your_writes_scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_your_writes_scope: Option<ReadYourWritesScope>,
    /// Overrides `[general] session_state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_state: Option<SessionState>,
    /// Overrides `[general] auth_user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// Overrides `[general] auth_query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_query: Option<String>,
    /// Overrides `[general] auth_dbname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_dbname: Option<String>,
    /// Overrides `[general] server_tls_sslmode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls_sslmode: Option<ServerTlsMode>,
    /// Overrides `[general] server_tls_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls_ca_file: Option<String>,
    /// Overrides `[general] server_tls_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls_cert_file: Option<String>,
    /// Overrides `[general] server_tls_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls_key_file: Option<String>,
    /// Overrides `[general] server_tls_protocols`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls_protocols: Option<String>,
    /// Overrides `[general] server_auth_methods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_auth_methods: Option<String>,
}

/// One entry of `hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HostEntry {
    /// `"host:port"`.
    Addr(String),
    /// `{ host = "host:port", role = "replica" }`.
    Detailed {
        /// `host:port`.
        host: String,
        /// What the host may become; absent: either.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<RoleHint>,
        /// Share of reads relative to the other read candidates. Default 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
    },
}

impl HostEntry {
    /// The `host:port` text.
    pub fn addr(&self) -> &str {
        match self {
            HostEntry::Addr(a) | HostEntry::Detailed { host: a, .. } => a,
        }
    }

    /// The role hint, if any.
    pub fn role(&self) -> Option<RoleHint> {
        match self {
            HostEntry::Addr(_) => None,
            HostEntry::Detailed { role, .. } => *role,
        }
    }

    /// The read weight (default 1).
    pub fn weight(&self) -> u32 {
        match self {
            HostEntry::Addr(_) => 1,
            HostEntry::Detailed { weight, .. } => weight.unwrap_or(1),
        }
    }
}

/// A host's configured role constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleHint {
    /// Never used as a replica.
    Primary,
    /// Never made the primary.
    Replica,
}

/// A `[users.NAME]` section: per-user overrides.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// Overrides the database's and the general `pool_mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
    /// Overrides `max_user_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_user_connections: Option<u32>,
    /// Overrides the database's and the general `route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// Overrides the database's and the general `read_your_writes_scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_your_writes_scope: Option<ReadYourWritesScope>,
    /// Overrides the database's and the general `session_state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_state: Option<SessionState>,
}

/// A password setting: the value itself, or where to read it at load, so that the config
/// file can hold no secret: `"…"`, `{ env = "NAME" }` (an environment variable) or
/// `{ file = "/run/secrets/x" }` (the file's contents without a trailing newline; relative
/// to the config file). A literal is never serialized (`SHOW CONFIG`, `check-config`) nor
/// printed by `Debug`; the other two show where the secret comes from.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SecretValue {
    /// The secret in the file.
    Literal(String),
    /// An environment variable.
    Env {
        /// Variable name.
        env: String,
    },
    /// A file.
    File {
        /// Path (relative to the config file).
        file: String,
    },
}

impl SecretValue {
    /// The secret; `Err` names `setting` and the source, never the secret.
    pub fn resolve(&self, base: &std::path::Path, setting: &str) -> Result<String, String> {
        match self {
            SecretValue::Literal(s) => Ok(s.clone()),
            SecretValue::Env { env } => std::env::var(env)
                .map_err(|_| format!("{setting}: environment variable {env} is not set (or not valid UTF-8)")),
            SecretValue::File { file } => {
                let path = super::resolve(base, file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{setting}: cannot read {}: {}", path.display(), e.kind()))?;
                let secret = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
                if secret.is_empty() {
                    return Err(format!("{setting}: {} is empty", path.display()));
                }
                Ok(secret.to_string())
            }
        }
    }
}

impl Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            SecretValue::Literal(_) => s.serialize_str("<redacted>"),
            SecretValue::Env { env } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("env", env)?;
                m.end()
            }
            SecretValue::File { file } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("file", file)?;
                m.end()
            }
        }
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretValue::Literal(_) => f.write_str("<redacted>"),
            SecretValue::Env { env } => write!(f, "{{ env = {env:?} }}"),
            SecretValue::File { file } => write!(f, "{{ file = {file:?} }}"),
        }
    }
}
