//! What becomes of each PgBouncer 1.25 setting: the `[pgbouncer]` section (all 99 settings of
//! its `doc/config.md`, which match `src/main.c`), the `[databases]` connection-string keys
//! and the `[users]` keys. Every name has exactly one [`Rule`]; a name missing here is
//! reported as unknown, never skipped. (`[peers]` lines have three keys, `host`, `port` and
//! `pool_size`, converted together in `Builder::peer_line`.)

/// How a PgBouncer value is written as a pgsluice value.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A non-negative integer.
    Int,
    /// `0`/`1` (any integer; also `on`/`off`, `true`/`false`, `yes`/`no`) → `false`/`true`.
    Bool,
    /// Seconds, possibly fractional → a duration (a TOML number of seconds).
    Secs,
    /// Any text.
    Str,
    /// A comma-separated list → an array of strings.
    List,
    /// A file name, resolved against the file it was read from.
    Path,
    /// An integer in C syntax (`0777` is octal) → an octal string (`"0777"`).
    Octal,
    /// One of these (case-insensitive), written in lower case.
    OneOf(&'static [&'static str]),
    /// `max_packet_size`: only up to PostgreSQL's own limit.
    PacketSize,
    /// `server_tls_protocols`: what pgsluice's TLS library speaks.
    TlsProtocols,
    /// `server_check_query`: PgBouncer's `<empty>` (an empty query) becomes `select 1`.
    CheckQuery,
    /// `unix_socket_dir`: an abstract-namespace socket (`@name`) has no equivalent.
    SocketDir,
    /// `peer_id`: 0 (off) to 16383.
    PeerId,
}

/// What becomes of one setting.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// A key of pgsluice's section (`[general]`, a database's, a user's).
    Key(&'static str, Kind),
    /// A key of pgsluice's `[tls]` section.
    Tls(&'static str, Kind),
    /// pgsluice always behaves as these values say (nothing to set); any other value is not
    /// imported. The text says why, in both cases.
    Fixed(&'static [&'static str], &'static str),
    /// Not imported, for the reason given.
    Drop(&'static str),
}

use Kind::*;
use Rule::*;

const POOL_MODES: &[&str] = &["session", "transaction", "statement"];
const SSLMODES: &[&str] = &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];
const AUTH_TYPES: &[&str] = &["cert", "md5", "scram-sha-256", "plain", "trust", "any", "hba"];
const OPENSSL_DEFAULT: &[&str] = &["default", "secure", "fast", "normal"];
const NO_SYSLOG: &str = "pgsluice logs to stderr only (no syslog); a service manager collects it";
const NO_DNS_CACHE: &str = "pgsluice resolves host names on every server connect (no DNS cache)";
const OS_KEEPALIVE: &str = "pgsluice uses the operating system's keepalive timings (tcp_keepalive only)";
const NO_WINDOWS: &str = "a Windows service name; pgsluice has no Windows service";

/// The `[pgbouncer]` section, sorted by name.
pub const PGBOUNCER: &[(&str, Rule)] = &[
    ("admin_users", Key("admin_users", List)),
    ("application_name_add_host", Key("application_name_add_host", Bool)),
    ("auth_dbname", Key("auth_dbname", Str)),
    ("auth_file", Key("auth_file", Path)),
    ("auth_hba_file", Key("auth_hba_file", Path)),
    (
        "auth_ident_file",
        Drop("pgsluice has no ident maps: an HBA `peer` or `cert` rule needs the PostgreSQL user name itself"),
    ),
    ("auth_ldap_options", Drop("pgsluice has no LDAP authentication")),
    ("auth_query", Key("auth_query", Str)),
    ("auth_type", Key("auth_type", OneOf(AUTH_TYPES))),
    ("auth_user", Key("auth_user", Str)),
    ("autodb_idle_timeout", Drop("pgsluice has no `*` fallback database, so it creates no databases to free")),
    (
        "cancel_wait_timeout",
        Drop("pgsluice forwards a CancelRequest at once on a connection of its own; nothing queues to time out"),
    ),
    ("client_idle_timeout", Key("client_idle_timeout", Secs)),
    ("client_login_timeout", Key("client_login_timeout", Secs)),
    ("client_tls13_ciphers", Fixed(&[""], "pgsluice uses rustls's TLS 1.3 cipher suites; no setting")),
    ("client_tls_ca_file", Tls("client_tls_ca_file", Path)),
    ("client_tls_cert_file", Tls("cert_file", Path)),
    ("client_tls_ciphers", Fixed(OPENSSL_DEFAULT, "pgsluice uses rustls's default cipher suites; no setting")),
    ("client_tls_dheparams", Fixed(&["none"], "rustls offers no finite-field Diffie-Hellman (ECDHE only)")),
    ("client_tls_ecdhcurve", Fixed(&["auto"], "pgsluice uses rustls's default key-exchange groups; no setting")),
    ("client_tls_key_file", Tls("key_file", Path)),
    (
        "client_tls_protocols",
        Fixed(
            &["secure", "tlsv1.2,tlsv1.3", "tlsv1.3,tlsv1.2"],
            "pgsluice accepts TLS 1.2 and 1.3 from clients (PgBouncer's `secure`); no setting",
        ),
    ),
    ("client_tls_sslmode", Tls("client_tls_sslmode", OneOf(SSLMODES))),
    ("conffile", Drop("pgsluice serves the file it was started with (`-c`)")),
    ("default_pool_size", Key("default_pool_size", Int)),
    ("disable_pqexec", Fixed(&["0"], "pgsluice always accepts the simple query protocol")),
    ("dns_max_ttl", Drop(NO_DNS_CACHE)),
    ("dns_nxdomain_ttl", Drop(NO_DNS_CACHE)),
    ("dns_zone_check_period", Fixed(&["0"], NO_DNS_CACHE)),
    ("idle_transaction_timeout", Key("idle_transaction_timeout", Secs)),
    ("ignore_startup_parameters", Key("ignore_startup_parameters", List)),
    ("job_name", Drop(NO_WINDOWS)),
    ("listen_addr", Key("listen_addr", Str)),
    ("listen_backlog", Fixed(&["1024"], "pgsluice listens with a backlog of 1024; no setting")),
    ("listen_port", Key("listen_port", Int)),
    ("log_connections", Key("log_connections", Bool)),
    ("log_disconnections", Key("log_disconnections", Bool)),
    ("log_pooler_errors", Key("log_pooler_errors", Bool)),
    ("log_stats", Key("log_stats", Bool)),
    ("logfile", Drop("pgsluice logs to stderr only; redirect it or let the service manager collect it")),
    ("max_client_conn", Key("max_client_conn", Int)),
    ("max_db_client_connections", Fixed(&["0"], "pgsluice has no per-database client limit (max_client_conn only)")),
    ("max_db_connections", Key("max_db_connections", Int)),
    ("max_packet_size", Key("max_packet_size", PacketSize)),
    ("max_prepared_statements", Key("max_prepared_statements", Int)),
    ("max_user_client_connections", Fixed(&["0"], "pgsluice has no per-user client limit (max_client_conn only)")),
    ("max_user_connections", Key("max_user_connections", Int)),
    ("min_pool_size", Key("min_pool_size", Int)),
    ("peer_id", Key("peer_id", PeerId)),
    ("pidfile", Drop("pgsluice writes no PID file: it does not daemonize (run it under a service manager)")),
    ("pkt_buf", Drop("pgsluice's buffers grow with the messages they hold; no setting")),
    ("pool_mode", Key("pool_mode", OneOf(POOL_MODES))),
    ("query_timeout", Key("query_timeout", Secs)),
    ("query_wait_notify", Fixed(&["0"], "pgsluice sends no notice to a client that waits for a server")),
    ("query_wait_timeout", Key("query_wait_timeout", Secs)),
    ("reserve_pool_size", Key("reserve_pool_size", Int)),
    ("reserve_pool_timeout", Key("reserve_pool_timeout", Secs)),
    ("resolv_conf", Fixed(&[""], "pgsluice resolves names through the operating system's resolver")),
    (
        "sbuf_loopcnt",
        Drop("pgsluice relays whole runs of messages per read and its runtime schedules connections fairly"),
    ),
    (
        "scram_iterations",
        Fixed(&["4096"], "pgsluice derives SCRAM verifiers of plaintext passwords with 4096 iterations; no setting"),
    ),
    ("server_check_delay", Key("server_check_delay", Secs)),
    ("server_check_query", Key("server_check_query", CheckQuery)),
    ("server_connect_timeout", Key("server_connect_timeout", Secs)),
    ("server_fast_close", Fixed(&["0"], "pgsluice has no fast close of session-mode servers")),
    ("server_idle_timeout", Key("server_idle_timeout", Secs)),
    ("server_lifetime", Key("server_lifetime", Secs)),
    (
        "server_login_retry",
        Drop("after a failed server login pgsluice backs off 100 ms, doubling up to 5 s, per pool; no setting"),
    ),
    ("server_reset_query", Key("server_reset_query", Str)),
    ("server_reset_query_always", Key("server_reset_query_always", Bool)),
    ("server_round_robin", Fixed(&["0"], "pgsluice reuses server connections last-in first-out only")),
    ("server_tls13_ciphers", Fixed(&[""], "pgsluice uses rustls's TLS 1.3 cipher suites; no setting")),
    ("server_tls_ca_file", Key("server_tls_ca_file", Path)),
    ("server_tls_cert_file", Key("server_tls_cert_file", Path)),
    ("server_tls_ciphers", Fixed(OPENSSL_DEFAULT, "pgsluice uses rustls's default cipher suites; no setting")),
    ("server_tls_key_file", Key("server_tls_key_file", Path)),
    ("server_tls_protocols", Key("server_tls_protocols", TlsProtocols)),
    ("server_tls_sslmode", Key("server_tls_sslmode", OneOf(SSLMODES))),
    ("service_name", Drop(NO_WINDOWS)),
    ("so_reuseport", Key("so_reuseport", Bool)),
    ("stats_period", Key("stats_period", Secs)),
    ("stats_users", Key("stats_users", List)),
    ("suspend_timeout", Drop("pgsluice has no SUSPEND and no online restart with -R")),
    ("syslog", Fixed(&["0"], NO_SYSLOG)),
    ("syslog_facility", Drop(NO_SYSLOG)),
    ("syslog_ident", Drop(NO_SYSLOG)),
    ("tcp_defer_accept", Fixed(&["0"], "pgsluice does not set TCP_DEFER_ACCEPT")),
    ("tcp_keepalive", Key("tcp_keepalive", Bool)),
    ("tcp_keepcnt", Fixed(&["0"], OS_KEEPALIVE)),
    ("tcp_keepidle", Fixed(&["0"], OS_KEEPALIVE)),
    ("tcp_keepintvl", Fixed(&["0"], OS_KEEPALIVE)),
    ("tcp_socket_buffer", Fixed(&["0"], "pgsluice leaves socket buffer sizes to the operating system")),
    ("tcp_user_timeout", Fixed(&["0"], "pgsluice does not set TCP_USER_TIMEOUT")),
    ("track_extra_parameters", Key("track_extra_parameters", List)),
    (
        "transaction_timeout",
        Fixed(&["0"], "pgsluice has no transaction_timeout (idle_transaction_timeout and query_timeout exist)"),
    ),
    ("unix_socket_dir", Key("unix_socket_dir", SocketDir)),
    ("unix_socket_group", Key("unix_socket_group", Str)),
    ("unix_socket_mode", Key("unix_socket_mode", Octal)),
    ("user", Drop("pgsluice does not switch users: start it as that user (systemd `User=`)")),
    ("verbose", Fixed(&["0"], "pgsluice's log detail is set with RUST_LOG (e.g. RUST_LOG=debug)")),
];

const NO_PER_DB_SESSION: &str =
    "pgsluice has no per-database session defaults yet; set them on the role or database in PostgreSQL (ALTER DATABASE … SET)";

/// Connection-string keys of a `[databases]` entry (PgBouncer 1.25's `src/loader.c`).
/// `host` and `port` are handled together (they make `hosts`).
pub const DATABASE: &[(&str, Rule)] = &[
    ("application_name", Drop(NO_PER_DB_SESSION)),
    ("auth_dbname", Key("auth_dbname", Str)),
    ("auth_query", Key("auth_query", Str)),
    ("auth_user", Key("auth_user", Str)),
    ("client_encoding", Drop(NO_PER_DB_SESSION)),
    ("connect_query", Drop("pgsluice has no connect_query yet")),
    ("datestyle", Drop(NO_PER_DB_SESSION)),
    ("dbname", Key("dbname", Str)),
    (
        "load_balance_hosts",
        Drop("pgsluice never spreads connections over hosts: a host list is one replication cluster (the probes find the primary)"),
    ),
    ("max_db_client_connections", Drop("pgsluice has no per-database client limit (max_client_conn only)")),
    ("max_db_connections", Key("max_db_connections", Int)),
    ("min_pool_size", Key("min_pool_size", Int)),
    ("password", Key("password", Str)),
    ("pool_mode", Key("pool_mode", OneOf(POOL_MODES))),
    ("pool_size", Key("pool_size", Int)),
    ("reserve_pool", Key("reserve_pool_size", Int)),
    ("reserve_pool_size", Key("reserve_pool_size", Int)),
    ("server_lifetime", Drop("pgsluice's server_lifetime is global ([general]) only")),
    ("timezone", Drop(NO_PER_DB_SESSION)),
    ("user", Key("user", Str)),
];

const GLOBAL_ONLY: &str = "pgsluice has this timeout in [general] only, not per user";

/// Keys of a `[users]` entry.
pub const USER: &[(&str, Rule)] = &[
    ("client_idle_timeout", Drop(GLOBAL_ONLY)),
    ("idle_transaction_timeout", Drop(GLOBAL_ONLY)),
    ("max_user_client_connections", Drop("pgsluice has no per-user client limit (max_client_conn only)")),
    ("max_user_connections", Key("max_user_connections", Int)),
    ("pool_mode", Key("pool_mode", OneOf(POOL_MODES))),
    ("pool_size", Drop("pgsluice sizes pools per database (pool_size) or globally (default_pool_size), not per user")),
    ("query_timeout", Drop(GLOBAL_ONLY)),
    ("reserve_pool_size", Drop("pgsluice sets reserve_pool_size per database or globally, not per user")),
    ("transaction_timeout", Drop("pgsluice has no transaction_timeout")),
];

/// The rule for `key` in `table`.
pub fn rule(table: &[(&str, Rule)], key: &str) -> Option<Rule> {
    table.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// Whether `value` is one of `fixed` (numbers compare as numbers, text case-insensitively
/// and without spaces).
pub fn matches_fixed(fixed: &[&str], value: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    let v = norm(value);
    fixed.iter().any(|f| match (f.parse::<f64>(), v.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => norm(f) == v,
    })
}
