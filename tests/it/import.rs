//! `pgsluice import-pgbouncer`: the fixture that sets every PgBouncer 1.25 setting is imported
//! with nothing ignored silently (each line mapped, or reported with a reason on stderr), the
//! binary's exit codes (0 all imported, 2 some not, 1 error), the output passing
//! `check-config`, and a round trip: an imported config serves a real database, and `SHOW
//! CONFIG` on its admin console shows the ini's values for every imported setting.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pgsluice::config::Config;
use pgsluice::import::{ini, Fate};
use pgsluice::server::ServerHandle;
use pgsluice::shared::Shared;
use tokio_postgres::SimpleQueryMessage;

use crate::harness::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pgbouncer").join(name)
}

fn pgsluice(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the pgsluice binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `check-config FILE`: its exit code and stderr.
fn check_config(file: &Path) -> (Option<i32>, String) {
    let out = pgsluice(&["check-config".as_ref(), file.as_os_str()]);
    (out.status.code(), text(&out.stderr))
}

/// The value at a dotted path of a TOML table (`databases.app.hosts`); names may contain dots
/// (`databases.weird.name.hosts`), so try every split.
fn has_path(t: &toml::Table, path: &str) -> bool {
    if t.contains_key(path) {
        return true;
    }
    path.match_indices('.').any(|(i, _)| match t.get(&path[..i]) {
        Some(toml::Value::Table(sub)) => has_path(sub, &path[i + 1..]),
        _ => false,
    })
}

#[test]
fn every_pgbouncer_setting_of_the_fixture_is_imported_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("pgsluice.toml");
    let ini_file = fixture("pgbouncer.ini");
    let out = pgsluice(&["import-pgbouncer".as_ref(), ini_file.as_os_str(), "-o".as_ref(), out_file.as_os_str()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "some settings have no equivalent: exit 2\n{stderr}");

    // What the command did, from the library (the same function the binary calls).
    let imp = pgsluice::import::import(&ini_file, None, Some(&out_file)).unwrap();
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(written, imp.toml);
    let table: toml::Table = toml::from_str(&written).unwrap();

    // Every key = value line of the fixture and its includes, and every pair of a connection
    // string, has an entry; found here independently of the importer's own loop.
    let lines = ini::read(&ini_file).unwrap();
    assert_eq!(lines.len(), 110, "the fixture is read whole, the included file too: 100 + 6 + 2 + 2 lines");
    let mut expected = Vec::new();
    for l in &lines {
        match l.section.as_str() {
            "pgbouncer" => expected.push((l.origin.clone(), l.key.clone())),
            _ => {
                expected.push((l.origin.clone(), l.key.clone()));
                for (k, _) in ini::connstr(&l.value).unwrap() {
                    expected.push((l.origin.clone(), k));
                }
            }
        }
    }
    assert_eq!(imp.entries.len(), expected.len(), "one entry per setting read");
    let mut dropped = 0;
    for (origin, key) in &expected {
        let e = imp
            .entries
            .iter()
            .find(|e| &e.origin == origin && &e.key == key)
            .unwrap_or_else(|| panic!("{origin} {key}: silently ignored"));
        match &e.fate {
            Fate::Mapped(target) => {
                assert!(has_path(&table, target), "{origin} {key}: mapped to {target}, missing from the output")
            }
            Fate::Same(why) => {
                assert!(!why.is_empty());
                assert!(written.contains(&format!("# {origin} [{}] {key}: {why}", e.section)), "{origin} {key}");
            }
            Fate::Dropped(why) => {
                dropped += 1;
                let line = format!("{origin}: not imported: [{}] {key}", e.section);
                assert!(stderr.contains(&line) && stderr.contains(why.as_str()), "{line}: {why}\n{stderr}");
            }
        }
    }
    assert!(dropped >= 30, "the fixture sets many settings pgsluice lacks: {dropped}");
    assert!(stderr.contains(&format!("{dropped} not imported")), "{stderr}");

    // Each imported value names where it came from; the password is nowhere but its value.
    assert!(written.contains("# pgbouncer.ini:18 [pgbouncer] default_pool_size: superseded by pgbouncer.ini:123"));
    assert!(written.contains("# pgbouncer.ini:123 default_pool_size\ndefault_pool_size = 25\n"), "{written}");
    assert!(written.contains("# pgbouncer-databases.ini:3 host, port\nhosts = [\"db1.example.com:5433\""), "{written}");
    // Peering: peer_id and each [peers] line, a Unix socket directory and PgBouncer's port default.
    assert!(written.contains("# pgbouncer.ini:29 peer_id\npeer_id = 1\n"), "{written}");
    assert!(
        written.contains(
            "# pgbouncer.ini:132 [peers] 1\n[peers.1]\n# pgbouncer.ini:132 host, port\nhost = \"/tmp/pgbouncer1:6432\"\n\
             # pgbouncer.ini:132 pool_size\npool_size = 5\n"
        ),
        "{written}"
    );
    assert!(
        written.contains(
            "[peers.2]\n# pgbouncer.ini:133 host; port: PgBouncer's default, 6432\nhost = \"10.0.0.12:6432\"\n"
        ),
        "{written}"
    );
    assert!(!stderr.contains("[peers"), "every peer of the fixture is imported\n{stderr}");
    assert_eq!(written.matches("fixture-secret").count(), 1, "{written}");
    assert!(!stderr.contains("fixture-secret") && !stderr.contains("ldap://"), "{stderr}");

    let (code, err) = check_config(&out_file);
    assert_eq!(code, Some(0), "the imported config passes check-config\n{err}\n{written}");
}

#[test]
fn exit_codes_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.txt"), "\"app\" \"pw\"\n").unwrap();
    let clean = dir.path().join("clean.ini");
    std::fs::write(
        &clean,
        "[databases]\napp = host=127.0.0.1 port=5432\n[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_file = users.txt\n\
         unix_socket_dir =\nserver_round_robin = 0\n",
    )
    .unwrap();
    // Everything imported: exit 0, the TOML on stdout, nothing reported.
    let out = pgsluice(&["import-pgbouncer".as_ref(), clean.as_os_str()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("not imported:"), "{stderr}");
    assert!(stdout.contains("[databases.app]\n# clean.ini:2 host, port\nhosts = [\"127.0.0.1:5432\"]"), "{stdout}");
    let out_file = dir.path().join("from-stdout.toml");
    std::fs::write(&out_file, &stdout).unwrap();
    assert_eq!(check_config(&out_file).0, Some(0), "{}", check_config(&out_file).1);

    // --userlist replaces auth_file.
    let users = dir.path().join("users.txt");
    let out_file = dir.path().join("o.toml");
    let out = pgsluice(&[
        "import-pgbouncer".as_ref(),
        clean.as_os_str(),
        "--userlist".as_ref(),
        users.as_os_str(),
        "-o".as_ref(),
        out_file.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(&out_file).unwrap().contains("# --userlist "));

    // Errors: exit 1, with the place.
    let cases: [(&str, &str, &str); 4] = [
        ("missing.ini", "", "cannot read"),
        ("syntax.ini", "[pgbouncer]\nlisten_port 6432\n", "syntax.ini:2: expected '='"),
        ("cycle.ini", "[pgbouncer]\n%include cycle.ini\n", "%include cycle"),
        ("connstr.ini", "[databases]\napp = host='unterminated\n", "connstr.ini:2: unterminated quote"),
    ];
    for (name, body, needle) in cases {
        let p = dir.path().join(name);
        if !body.is_empty() {
            std::fs::write(&p, body).unwrap();
        }
        let out = pgsluice(&["import-pgbouncer".as_ref(), p.as_os_str()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing written");
    }

    // An import pgsluice cannot serve (PgBouncer's md5 needs an auth_file): written, exit 1.
    let no_auth = dir.path().join("noauth.ini");
    std::fs::write(&no_auth, "[pgbouncer]\nlisten_port = 6432\n").unwrap();
    let out_file = dir.path().join("noauth.toml");
    let out = pgsluice(&["import-pgbouncer".as_ref(), no_auth.as_os_str(), "-o".as_ref(), out_file.as_os_str()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not pass check-config") && stderr.contains("needs an auth_file"), "{stderr}");
    assert!(out_file.exists(), "written for editing");
}

/// Settings whose PgBouncer value is a number of seconds.
const DURATIONS: &[&str] = &[
    "reserve_pool_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "server_connect_timeout",
    "server_check_delay",
    "query_timeout",
    "query_wait_timeout",
    "client_idle_timeout",
    "idle_transaction_timeout",
    "client_login_timeout",
    "stats_period",
];
/// Settings whose PgBouncer value is 0/1.
const BOOLS: &[&str] = &[
    "server_reset_query_always",
    "application_name_add_host",
    "tcp_keepalive",
    "log_connections",
    "log_disconnections",
    "log_pooler_errors",
    "log_stats",
    "so_reuseport",
];
/// Settings whose PgBouncer value is a comma-separated list.
const LISTS: &[&str] = &["admin_users", "stats_users", "ignore_startup_parameters", "track_extra_parameters"];

/// A PgBouncer value and a `SHOW CONFIG` value, in one form.
fn same_value(key: &str, ini: &str, shown: &str) -> bool {
    if DURATIONS.contains(&key) {
        let secs: f64 = ini.parse().unwrap_or_else(|_| panic!("{key} = {ini}"));
        let shown = if shown == "0s" { Duration::ZERO } else { humantime::parse_duration(shown).unwrap() };
        return Duration::from_secs_f64(secs) == shown;
    }
    if BOOLS.contains(&key) {
        return (ini != "0").to_string() == shown;
    }
    if LISTS.contains(&key) {
        let items: Vec<&str> = ini.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        return items.join(",") == shown;
    }
    ini == shown
}

#[tokio::test]
async fn an_imported_config_serves_a_database_and_show_config_matches_the_ini() {
    let db = fresh_db("import_rt");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("userlist.txt"), format!("\"{}\" \"{}\"\n", db.name, db.password)).unwrap();
    let ini_file = dir.path().join("pgbouncer.ini");
    let ini_text = format!(
        "[databases]\nimported = host=127.0.0.1 port={port} dbname={db} pool_size=4 pool_mode=session\n\n\
         [peers]\n1 = host=127.0.0.1 port=16440 pool_size=3\n3 = host={sock}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 16439\nunix_socket_dir = {sock}\n\
         unix_socket_mode = 0700\nauth_type = scram-sha-256\nauth_file = userlist.txt\npool_mode = transaction\n\
         max_client_conn = 77\ndefault_pool_size = 6\nmin_pool_size = 0\nreserve_pool_size = 2\n\
         reserve_pool_timeout = 2.5\nmax_db_connections = 30\nmax_user_connections = 31\n\
         server_reset_query = DISCARD ALL\nserver_reset_query_always = 1\nserver_check_delay = 11\n\
         server_check_query = select 2\nserver_lifetime = 1800\nserver_idle_timeout = 120\n\
         server_connect_timeout = 9\nclient_login_timeout = 21\nquery_timeout = 0\nquery_wait_timeout = 33\n\
         client_idle_timeout = 0\nidle_transaction_timeout = 44\nignore_startup_parameters = extra_float_digits, options\n\
         track_extra_parameters = search_path\napplication_name_add_host = 1\ntcp_keepalive = 0\n\
         admin_users = {db}\nstats_users = someone, other\nlog_connections = 0\nlog_disconnections = 1\n\
         log_pooler_errors = 0\nlog_stats = 0\nstats_period = 30\nmax_packet_size = 65536\n\
         max_prepared_statements = 50\nso_reuseport = 0\nserver_tls_sslmode = disable\n\
         server_tls_protocols = secure\nauth_dbname = {db}\nserver_round_robin = 0\npeer_id = 3\n",
        port = pg().port(),
        db = db.name,
        sock = dir.path().display(),
    );
    std::fs::write(&ini_file, &ini_text).unwrap();
    let out_file = dir.path().join("pgsluice.toml");
    let imp = pgsluice::import::import(&ini_file, None, Some(&out_file)).unwrap();
    assert_eq!(imp.dropped().count(), 0, "{:?}", imp.dropped().collect::<Vec<_>>());
    std::fs::write(&out_file, &imp.toml).unwrap();

    let cfg = Config::load(&out_file).unwrap_or_else(|e| panic!("{e}\n{}", imp.toml));
    // The peers: this instance is 3, so its own section is ignored.
    assert_eq!(cfg.peers.keys().collect::<Vec<_>>(), [&1], "{:?}", cfg.peers);
    assert_eq!((cfg.peers[&1].addr.to_string(), cfg.peers[&1].pool_size), ("127.0.0.1:16440".to_string(), 3));
    let handle = ServerHandle::start(Shared::new(cfg), Some("127.0.0.1:0".parse().unwrap())).await.expect("start");
    let port = handle.addr.port();

    // The database serves, under its client-side name, the backend database dbname names.
    let connect = |dbname: &str| {
        format!(
            "host=127.0.0.1 port={port} user={} password={} dbname={dbname} connect_timeout=10",
            db.name, db.password
        )
    };
    let client = connect_str(&connect("imported")).await.unwrap_or_else(|e| panic!("via the import: {e}"));
    assert_eq!(scalar(&client, "SELECT current_database()").await.unwrap().as_deref(), Some(db.name.as_str()));

    // SHOW CONFIG shows the ini's value of every [pgbouncer] setting that was imported.
    let admin = connect_str(&connect("pgbouncer")).await.unwrap_or_else(|e| panic!("admin console: {e}"));
    let shown: HashMap<String, Option<String>> = admin
        .simple_query("SHOW CONFIG")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get("key").unwrap().to_string(), r.get("value").map(str::to_string))),
            _ => None,
        })
        .collect();
    let ini_values: BTreeMap<&str, &str> =
        ini_text.lines().skip_while(|l| *l != "[pgbouncer]").filter_map(|l| l.split_once(" = ")).collect();
    let mut compared = 0;
    for e in imp.entries.iter().filter(|e| e.section == "pgbouncer") {
        let Fate::Mapped(target) = &e.fate else { continue };
        let key = target.strip_prefix("general.").unwrap_or_else(|| panic!("{target}"));
        let value = shown.get(key).cloned().flatten().unwrap_or_else(|| panic!("SHOW CONFIG has no {key}"));
        let ini_value = ini_values[e.key.as_str()];
        assert!(same_value(key, ini_value, &value), "{key}: ini {ini_value:?}, SHOW CONFIG {value:?}");
        compared += 1;
    }
    assert_eq!(compared, ini_values.len() - 1, "every [pgbouncer] line but server_round_robin is compared");

    // The database's own settings.
    let dbs = admin.simple_query("SHOW DATABASES").await.unwrap();
    let row = dbs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("name") == Some("imported") => Some(r),
            _ => None,
        })
        .expect("SHOW DATABASES lists the imported database");
    assert_eq!(row.get("pool_size"), Some("4"));
    assert_eq!(row.get("pool_mode"), Some("session"));
    assert_eq!(row.get("database"), Some(db.name.as_str()));
    drop((client, admin));
    handle.shutdown(Duration::from_secs(5)).await;
}
