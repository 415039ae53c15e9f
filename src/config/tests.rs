use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("/nonexistent/pgsluice.toml"))
}

const TRUST: &str = "[general]\nauth_type = \"any\"\n";

#[test]
fn defaults_follow_pgbouncer() {
    let c = load(TRUST).unwrap();
    let g = c.general();
    assert_eq!(c.listen, "127.0.0.1:6432".parse().unwrap());
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.default_pool_size, 20);
    assert_eq!(g.server_reset_query, "DISCARD ALL");
    assert_eq!(g.query_wait_timeout, Dur::secs(120));
    assert_eq!(g.server_lifetime, Dur::secs(3600));
    assert_eq!(g.query_timeout.nonzero(), None);
    assert!(g.tcp_keepalive);
    assert!(c.databases.is_empty());
}

#[test]
fn databases_and_overrides() {
    let c = load(&format!(
        "{TRUST}default_pool_size = 7\npool_mode = \"session\"\n\
         [databases.app]\nhosts = [\"db1:5433\", \"[::1]\", {{ host = \"10.0.0.3\", role = \"replica\" }}]\npool_size = 3\n\
         health_check_user = \"probe\"\nhealth_check_password = \"pw\"\n\
         [databases.other]\nhosts = [\"h\"]\ndbname = \"real\"\npool_mode = \"statement\"\n\
         [users.batch]\npool_mode = \"transaction\"\nmax_user_connections = 4\n"
    ))
    .unwrap();
    let app = &c.databases["app"];
    assert_eq!(app.hosts[0], BackendAddr { host: "db1".into(), port: 5433 });
    assert_eq!(app.hosts[1], BackendAddr { host: "::1".into(), port: 5432 });
    assert_eq!(app.hosts[1].to_string(), "[::1]:5432");
    assert_eq!(app.role_hints, vec![None, None, Some(crate::config::RoleHint::Replica)]);
    let probe = app.probe.as_ref().unwrap();
    assert_eq!(probe.user, "probe");
    assert!(matches!(&probe.secret, Some(crate::auth::Secret::Plain(p)) if p == "pw"));
    assert!(c.databases["other"].probe.is_none(), "single host, no probe user: not probed");
    // A fixed user is the default probe user only for several hosts; a database-level probe
    // user does not take the general password.
    let c2 = load(&format!(
        "{TRUST}health_check_password = \"general-pw\"\n\
         [databases.one]\nhosts = [\"h\"]\nuser = \"u\"\npassword = \"p\"\n\
         [databases.two]\nhosts = [\"h1\", \"h2\"]\nuser = \"u\"\npassword = \"p\"\n\
         [databases.own]\nhosts = [\"h\"]\nhealth_check_user = \"mon\"\n"
    ))
    .unwrap();
    assert!(c2.databases["one"].probe.is_none());
    let two = c2.databases["two"].probe.as_ref().unwrap();
    assert!(two.user == "u" && matches!(&two.secret, Some(crate::auth::Secret::Plain(p)) if p == "p"));
    let own = c2.databases["own"].probe.as_ref().unwrap();
    assert!(own.user == "mon" && own.secret.is_none(), "no general password for a database's own probe user");
    assert_eq!((app.pool_size, app.dbname.as_str()), (3, "app"));
    let other = &c.databases["other"];
    assert_eq!((other.pool_size, other.dbname.as_str()), (7, "real"));
    assert_eq!(c.pool_mode(app, "someone"), PoolMode::Session);
    assert_eq!(c.pool_mode(other, "someone"), PoolMode::Statement);
    assert_eq!(c.pool_mode(other, "batch"), PoolMode::Transaction);
    assert_eq!(c.max_user_connections("batch"), 4);
    assert_eq!(c.max_user_connections("someone"), 0);
}

#[test]
fn errors_are_precise() {
    let e = |t: &str| load(t).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e(&format!("{TRUST}bogus_setting = 1\n")).contains("unknown field `bogus_setting`"));
    assert!(e(&format!("{TRUST}query_wait_timeout = \"soon\"\n")).contains("invalid duration"));
    assert!(e(&format!("{TRUST}pool_mode = \"sometimes\"\n")).contains("unknown variant"));
    assert!(
        e(&format!("{TRUST}[databases.a]\nhosts = []\n")).contains("[databases.a] hosts must list at least one host")
    );
    assert!(e(&format!("{TRUST}[databases.a]\nhosts = [\"h:0\"]\n")).contains("invalid port"));
    assert!(e(&format!("{TRUST}[databases.a]\nhosts = [\"h\"]\nmin_pool_size = 30\n")).contains("min_pool_size (30)"));
    assert!(e(&format!("{TRUST}listen_addr = \"not-an-ip\"\n")).contains("listen_addr"));
    assert!(e("[general]\nauth_type = \"md5\"\n").contains("needs an auth_file"));
    assert!(e("[general]\nauth_file = \"missing.txt\"\n").contains("missing.txt"));
    assert!(e(&format!("{TRUST}[databases.a]\nhosts = [\"h\"]\npassword = \"x\"\n"))
        .contains("password is set but user is not"));
    assert!(e(&format!("{TRUST}[databases.a]\nhosts = [\"h1\", \"h2\"]\n")).contains("set health_check_user"));
    assert!(e(&format!("{TRUST}[databases.a]\nhosts = [\"h1\", \"h1:5432\"]\nuser = \"u\"\n")).contains("listed twice"));
    assert!(e(&format!("{TRUST}[databases.a]\nhosts = [{{ host = \"h\", role = \"leader\" }}]\n")).contains("hosts"));
    assert!(e(&format!("{TRUST}health_check_interval = \"0s\"\n")).contains("health_check_interval"));
    assert!(e(&format!("{TRUST}health_check_fail_threshold = 0\n")).contains("at least 1"));
    assert!(e(&format!("{TRUST}circuit_breaker_max_backoff = \"1s\"\ncircuit_breaker_backoff = \"2s\"\n"))
        .contains("circuit_breaker_max_backoff"));
    // Line numbers from the TOML parser reach the message.
    assert!(e("[general]\nlisten_port = \"x\"\n").contains("line 2"));
}

#[test]
fn auth_file_is_resolved_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("pgsluice-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("users.txt"), "\"alice\" \"secret\"\n\"bob\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n")
        .unwrap();
    let path = dir.join("p.toml");
    std::fs::write(&path, "[general]\nauth_file = \"users.txt\"\n[databases.d]\nhosts = [\"h\"]\nuser = \"alice\"\n")
        .unwrap();
    let c = Config::load(&path).unwrap();
    assert!(matches!(c.users["alice"].secret, Secret::Plain(_)));
    assert!(matches!(c.users["bob"].secret, Secret::Md5(_)));
    assert!(c.users["bob"].scram_verifier().is_none());
    assert!(c.users["alice"].scram_verifier().is_some());
    assert!(matches!(c.databases["d"].fixed_secret, Some(Secret::Plain(_))));
    // The effective config round-trips and never prints secrets.
    let printed = c.to_toml();
    assert!(!printed.contains("secret"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn effective_config_redacts_passwords_and_round_trips() {
    let c = load(&format!("{TRUST}[databases.a]\nhosts = [\"h\"]\nuser = \"u\"\npassword = \"hunter2\"\n")).unwrap();
    let printed = c.to_toml();
    assert!(printed.contains("<redacted>") && !printed.contains("hunter2"));
    let again = toml::from_str::<ConfigFile>(&printed.replace("<redacted>", "x")).unwrap();
    assert_eq!(again.general.default_pool_size, c.general().default_pool_size);
}

#[test]
fn track_extra_parameters_are_validated_and_resolved() {
    let c = load(TRUST).unwrap();
    assert!(c.general().track_extra_parameters.is_empty());
    assert!(c.tracked.extra().is_empty());
    assert!(c.tracked.lookup("IntervalStyle").is_some(), "built in");
    let c = load(&format!(
        "{TRUST}track_extra_parameters = [\"Search_Path\", \"statement_timeout\", \"TimeZone\", \"myext.tenant\"]\n"
    ))
    .unwrap();
    let names: Vec<&str> = c.tracked.extra().iter().map(|n| n.as_str()).collect();
    assert_eq!(names, ["search_path", "statement_timeout", "myext.tenant"]);
    assert_eq!(c.tracked.lookup("SEARCH_PATH").map(|n| n.to_string()).as_deref(), Some("search_path"));
    // The effective config prints the list as written.
    assert!(c.to_toml().contains("Search_Path"));
    let e = |t: &str| load(t).err().map(|e| e.to_string()).unwrap_or_default();
    for bad in ["\"\"", "\"search path\"", "\"x;drop\"", "\"options\""] {
        let m = e(&format!("{TRUST}track_extra_parameters = [{bad}]\n"));
        assert!(m.contains("[general] track_extra_parameters"), "{bad}: {m}");
    }
    assert!(e(&format!("{TRUST}track_extra_parameters = \"search_path\"\n")).contains("invalid type"));
}

#[test]
fn replica_probes_follow_the_lag_bound_and_impossible_bounds_are_warned() {
    let ms = std::time::Duration::from_millis;
    let g = |extra: &str| load(&format!("{TRUST}{extra}")).unwrap().general().clone();
    // Default: max_replica_lag 1s, health_check_interval 1s: a quarter of the bound.
    assert_eq!(g("").replica_probe_period(), ms(250));
    assert!(g("").warnings().is_empty());
    assert_eq!(g("max_replica_lag = \"200ms\"\n").replica_probe_period(), ms(50));
    assert!(g("max_replica_lag = \"200ms\"\n").warnings().is_empty());
    // A bound far above the interval: the interval.
    assert_eq!(g("max_replica_lag = \"1h\"\n").replica_probe_period(), ms(1000));
    assert_eq!(g("max_replica_lag = \"0s\"\n").replica_probe_period(), ms(1000));
    // Below twice the floor: probes cannot keep up.
    let tight = g("max_replica_lag = \"60ms\"\n");
    assert_eq!(tight.replica_probe_period(), MIN_PROBE_GAP);
    let w = tight.warnings();
    assert!(w.len() == 1 && w[0].contains("cannot be honoured") && w[0].contains("100ms"), "{w:?}");
    // A byte bound checked only every few seconds.
    let w = g("max_replica_lag = \"1h\"\nhealth_check_interval = \"5s\"\nmax_replica_lag_bytes = 1000\n").warnings();
    assert!(w.len() == 1 && w[0].contains("max_replica_lag_bytes"), "{w:?}");
}

#[test]
fn trust_needs_an_auth_file_and_any_does_not() {
    let e = load("[general]\nauth_type = \"trust\"\n").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("needs an auth_file"), "{e}");
    assert!(load("[general]\nauth_type = \"any\"\n").is_ok());
}

#[test]
fn server_tls_settings_are_checked_at_load() {
    let e = |t: &str| load(&format!("{TRUST}{t}")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e("server_tls_sslmode = \"verify-full\"\n").contains("need server_tls_ca_file"));
    assert!(e("server_tls_protocols = \"tlsv1.1\"\n").contains("not supported"));
    assert!(e("server_tls_ca_file = \"/nonexistent/ca.pem\"\n").contains("/nonexistent/ca.pem"));
    assert!(e("server_tls_cert_file = \"c.pem\"\n").contains("go together"));
    assert!(e("server_auth_methods = \"md5,!none\"\n").contains("cannot be mixed"));
    assert!(e("server_tls_sslmode = \"sometimes\"\n").contains("unknown variant"));
    let db = "[databases.app]\nhosts = [\"h\"]\nserver_tls_sslmode = \"verify-ca\"\n";
    assert!(e(db).contains("[databases.app]") && e(db).contains("server_tls_ca_file"));
    // The default is PgBouncer's: prefer, and disable needs no files.
    let c = load(&format!("{TRUST}[databases.app]\nhosts = [\"h\"]\n")).unwrap();
    assert_eq!(c.databases["app"].server_tls.mode, ServerTlsMode::Prefer);
    let c = load(&format!("{TRUST}server_tls_sslmode = \"disable\"\n[databases.app]\nhosts = [\"h\"]\n")).unwrap();
    assert!(c.databases["app"].server_tls.config.is_none());
}

#[test]
fn passwords_come_from_the_environment_or_files_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("probe.secret"), "file-secret-1\n").unwrap();
    // (The crate has no unsafe code, so no set_var: PATH stands in for a secret variable.)
    let path_value = std::env::var("PATH").expect("PATH is set");
    let text = format!(
        "{TRUST}health_check_user = \"probe\"\nhealth_check_password = {{ file = \"probe.secret\" }}\n\
         [databases.app]\nhosts = [\"h1\", \"h2\"]\nuser = \"app\"\npassword = {{ env = \"PATH\" }}\n\
         [databases.lit]\nhosts = [\"h\"]\nuser = \"lit\"\npassword = \"literal-secret-3\"\n"
    );
    let path = dir.path().join("pgsluice.toml");
    std::fs::write(&path, &text).unwrap();
    let c = Config::load(&path).unwrap();
    let app = &c.databases["app"];
    assert_eq!(app.fixed_secret, Some(Secret::Plain(path_value.clone())));
    assert_eq!(app.probe.as_ref().unwrap().secret, Some(Secret::Plain("file-secret-1".into())));
    // Neither check-config's output nor Debug shows a secret; the sources are shown.
    let shown = format!("{}\n{:?}", c.to_toml(), c.file);
    for secret in ["file-secret-1", path_value.as_str(), "literal-secret-3"] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(shown.contains("env = \"PATH\"") && shown.contains("probe.secret"));
    // A missing source is a load error naming the setting, not the secret.
    let e = |t: &str| load(&format!("{TRUST}{t}")).err().map(|e| e.to_string()).unwrap_or_default();
    let missing = e("health_check_password = { env = \"PGSLUICE_TEST_UNSET_VARIABLE\" }\n");
    assert!(missing.contains("health_check_password") && missing.contains("PGSLUICE_TEST_UNSET_VARIABLE"), "{missing}");
    let missing = e("[databases.app]\nhosts = [\"h\"]\nuser = \"u\"\npassword = { file = \"/nonexistent/secret\" }\n");
    assert!(missing.contains("[databases.app] password") && missing.contains("/nonexistent/secret"), "{missing}");
}

#[test]
fn listen_addr_takes_lists_ipv6_names_and_star() {
    let a = |s: &str| listen_addrs(s, 6432).map(|v| v.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    assert_eq!(a("*").unwrap(), ["0.0.0.0:6432", "[::]:6432"]);
    assert_eq!(a("").unwrap(), ["0.0.0.0:6432", "[::]:6432"], "empty: as *");
    assert_eq!(a("127.0.0.1, ::1").unwrap(), ["127.0.0.1:6432", "[::1]:6432"]);
    assert_eq!(a("[::1],127.0.0.1,::1").unwrap(), ["[::1]:6432", "127.0.0.1:6432"], "duplicates dropped");
    assert!(a("localhost").unwrap().contains(&"127.0.0.1:6432".to_string()));
    assert!(a("no-such-host.invalid").unwrap_err().contains("cannot resolve"));
    assert!(a("127.0.0.1,").unwrap_err().contains("empty item"));
    let c = load(&format!("{TRUST}listen_addr = \"127.0.0.1,::1\"\nlisten_port = 7000\n")).unwrap();
    assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(c.listen_all.len(), 2);
}
