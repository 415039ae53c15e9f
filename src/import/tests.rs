use std::path::Path;

use super::table::{self, Rule};
use super::*;
use crate::config::{ConfigFile, PoolMode};

const SETTINGS: &str = include_str!("../../tests/fixtures/pgbouncer/settings-1.25.txt");

fn documented(section: &str) -> Vec<&'static str> {
    SETTINGS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('.'))
        .filter(|(s, _)| *s == section)
        .map(|(_, k)| k)
        .collect()
}

#[test]
fn the_table_has_a_rule_for_every_documented_setting_and_no_other() {
    let names = documented("pgbouncer");
    assert_eq!(names.len(), 99, "PgBouncer 1.25 documents 99 [pgbouncer] settings");
    for n in &names {
        assert!(table::rule(table::PGBOUNCER, n).is_some(), "[pgbouncer] {n} has no rule");
    }
    let ours: Vec<&str> = table::PGBOUNCER.iter().map(|(k, _)| *k).collect();
    let mut sorted = ours.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ours, sorted, "PGBOUNCER is sorted and has no duplicates");
    assert_eq!(ours.len(), names.len(), "no rule for a name PgBouncer does not document");

    for k in documented("databases") {
        assert!(k == "host" || k == "port" || table::rule(table::DATABASE, k).is_some(), "[databases] {k}");
    }
    for k in documented("users") {
        assert!(table::rule(table::USER, k).is_some(), "[users] {k}");
    }
    // Every reason is a sentence someone can act on.
    for (k, r) in table::PGBOUNCER.iter().chain(table::DATABASE).chain(table::USER) {
        if let Rule::Fixed(_, why) | Rule::Drop(why) = r {
            assert!(why.len() > 20, "{k}: reason too short: {why:?}");
        }
    }
}

fn import_text(ini: &str) -> (tempfile::TempDir, Import) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pgbouncer.ini"), ini).unwrap();
    std::fs::write(dir.path().join("userlist.txt"), "\"app\" \"app-pw\"\n").unwrap();
    let out = dir.path().join("pgsluice.toml");
    let imp = import(&dir.path().join("pgbouncer.ini"), None, Some(&out)).unwrap();
    (dir, imp)
}

fn fate<'a>(imp: &'a Import, section: &str, key: &str) -> &'a Fate {
    &imp.entries.iter().find(|e| e.section == section && e.key == key).unwrap_or_else(|| panic!("{section} {key}")).fate
}

#[test]
fn imports_settings_databases_and_users_with_their_origin() {
    let (dir, imp) = import_text(
        "[pgbouncer]\nlisten_addr = *\nlisten_port = 6433\nauth_type = scram-sha-256\nauth_file = userlist.txt\n\
         pool_mode = transaction\ndefault_pool_size = 7\nserver_lifetime = 1800\nserver_idle_timeout = 2.5\n\
         admin_users = a, b\ntcp_keepalive = 0\nunix_socket_dir =\nunix_socket_mode = 0700\n\
         ignore_startup_parameters = extra_float_digits\n\
         [databases]\napp = host=10.0.0.1,10.0.0.2 port=5433 dbname=prod user=app pool_size=5 pool_mode=session\n\
         \"odd name\" = host=::1\n\
         [users]\nbob = pool_mode=statement max_user_connections=3\n",
    );
    assert_eq!(imp.dropped().count(), 0, "{:?}", imp.dropped().collect::<Vec<_>>());
    let t = &imp.toml;
    assert!(t.contains("# pgbouncer.ini:7 default_pool_size\ndefault_pool_size = 7\n"), "{t}");
    assert!(t.contains("# pgbouncer.ini:16 host, port\nhosts = [\"10.0.0.1:5433\", \"10.0.0.2:5433\"]\n"), "{t}");
    assert!(t.contains("# pgbouncer.ini:17 [databases] odd name\n[databases.\"odd name\"]\n"), "{t}");

    let file: ConfigFile = toml::from_str(t).unwrap_or_else(|e| panic!("{e}\n{t}"));
    let g = &file.general;
    assert_eq!((g.listen_addr.as_str(), g.listen_port, g.default_pool_size), ("*", 6433, 7));
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.server_lifetime, crate::config::Dur::secs(1800));
    assert_eq!(g.server_idle_timeout, crate::config::Dur::millis(2500));
    assert_eq!(g.admin_users, vec!["a", "b"]);
    assert!(!g.tcp_keepalive);
    assert_eq!(g.unix_socket_mode, "0700");
    assert_eq!(g.auth_file.as_deref(), Some("userlist.txt"), "relative to the output, which is beside the ini");
    let app = &file.databases["app"];
    assert_eq!((app.dbname.as_deref(), app.user.as_deref(), app.pool_size), (Some("prod"), Some("app"), Some(5)));
    assert_eq!(app.pool_mode, Some(PoolMode::Session));
    assert_eq!(file.databases["odd name"].hosts[0].addr(), "[::1]:5432");
    assert_eq!(file.users["bob"].pool_mode, Some(PoolMode::Statement));
    assert_eq!(file.users["bob"].max_user_connections, Some(3));

    assert_eq!(fate(&imp, "databases.app", "port"), &Fate::Mapped("databases.app.hosts".into()));
    assert_eq!(fate(&imp, "pgbouncer", "listen_port"), &Fate::Mapped("general.listen_port".into()));
    assert!(imp.notes.iter().any(|n| n.contains("databases.app") && n.contains("round-robin")), "{:?}", imp.notes);
    Config::from_str(t, &dir.path().join("pgsluice.toml")).unwrap_or_else(|e| panic!("{e}\n{t}"));
}

#[test]
fn pgbouncer_defaults_that_differ_are_written_out() {
    let (_dir, imp) = import_text("[pgbouncer]\nauth_file = userlist.txt\n[databases]\nlocal =\n");
    let file: ConfigFile = toml::from_str(&imp.toml).unwrap();
    let g = &file.general;
    assert_eq!(g.pool_mode, PoolMode::Session);
    assert_eq!(g.auth_type, crate::config::AuthType::Md5);
    assert!(g.ignore_startup_parameters.is_empty());
    assert_eq!(g.unix_socket_dir, "/tmp");
    // No host: PgBouncer's Unix socket in unix_socket_dir.
    assert_eq!(file.databases["local"].hosts[0].addr(), "/tmp:5432");
    assert!(imp.toml.contains("# PgBouncer's default (pool_mode is not set in the ini;"), "{}", imp.toml);
    assert!(imp.notes.iter().any(|n| n.contains("listen_addr is not set")));
}

#[test]
fn what_cannot_be_imported_is_reported_with_its_reason() {
    let (_dir, imp) = import_text(
        "[pgbouncer]\nauth_file = userlist.txt\nlogfile = /var/log/p.log\nserver_round_robin = 0\n\
         server_round_robin = 1\nauth_type = pam\nmax_packet_size = 2147483647\nno_such_setting = 1\n\
         peer_id = 16384\n\
         [databases]\n* = host=x\nabs = host=@sock\n[users]\nu = pool_size=3 pool_mode=session\n\
         [peers]\n20000 = host=/tmp/p1\n2 = host=@pgb\n3 = host=a,b pool_size=2\n4 = host=h pool_size=0 sslmode=x\n\
         [bogus]\nk = v\n",
    );
    let why = |s: &str, k: &str| match fate(&imp, s, k) {
        Fate::Dropped(w) => w.clone(),
        other => panic!("{s} {k}: {other:?}"),
    };
    assert!(why("pgbouncer", "logfile").contains("stderr"));
    assert!(why("pgbouncer", "auth_type").contains("\"pam\" is not one of"));
    assert!(why("pgbouncer", "max_packet_size").contains("1073741823"));
    assert!(why("pgbouncer", "no_such_setting").contains("not a PgBouncer 1.25 setting"));
    assert!(why("databases", "*").contains("fallback"));
    assert!(why("databases.*", "host").contains("fallback"));
    assert!(why("databases", "abs").contains("abstract"));
    assert!(why("users.u", "pool_size").contains("per user"));
    assert!(why("pgbouncer", "peer_id").contains("out of range (0 = off, 1 … 16383)"));
    assert!(why("peers", "20000").contains("above 16383"));
    assert!(why("peers.20000", "host").contains("peer 20000 not imported"));
    assert!(why("peers", "2").contains("abstract"));
    assert!(why("peers", "3").contains("one address per peer"));
    assert!(why("peers.3", "pool_size").contains("peer 3 not imported"));
    assert!(why("peers.4", "pool_size").contains("pgsluice needs 1 to"));
    assert!(why("peers.4", "sslmode").contains("not a PgBouncer 1.25 parameter"));
    assert!(why("bogus", "k").contains("not a PgBouncer section"));
    // server_round_robin = 0 is what pgsluice does; = 1 is not.
    let rr: Vec<&Fate> = imp.entries.iter().filter(|e| e.key == "server_round_robin").map(|e| &e.fate).collect();
    assert!(matches!(rr[..], [Fate::Same(_), Fate::Dropped(_)]), "{rr:?}");
    // An explicitly chosen auth_type that is dropped is not replaced by PgBouncer's default.
    let file: ConfigFile = toml::from_str(&imp.toml).unwrap();
    assert_eq!(file.general.auth_type, crate::config::AuthType::ScramSha256);
    assert!(file.databases.is_empty());
    assert_eq!(file.users["u"].pool_mode, Some(PoolMode::Session));
    assert_eq!(file.general.peer_id, 0, "a dropped peer_id leaves peering off");
    assert_eq!(file.peers.keys().collect::<Vec<_>>(), ["4"], "peer 4 is kept, without its pool_size");
    assert_eq!(file.peers["4"].pool_size, None);
    assert!(imp.toml.contains("# Not imported:\n# pgbouncer.ini:3 [pgbouncer] logfile: pgsluice logs to stderr only"));
}

#[test]
fn peers_are_imported_with_their_origin_and_pgbouncer_defaults() {
    let (dir, imp) = import_text(
        "[pgbouncer]\nauth_file = userlist.txt\npeer_id = 1\n[databases]\napp = host=h\n[peers]\n\
         1 = host=10.0.0.11 pool_size=5\n2 = host=/var/run/pgbouncer port=6433\n3 = host=::1 port=7000 pool_size=-1\n\
         4 = host=old\n04 = host=p4.internal pool_size=1 pool_size=2\n",
    );
    assert_eq!(imp.dropped().count(), 0, "{:?}", imp.dropped().collect::<Vec<_>>());
    let t = &imp.toml;
    assert!(t.contains("# pgbouncer.ini:3 peer_id\npeer_id = 1\n"), "{t}");
    assert!(
        t.contains(
            "# pgbouncer.ini:7 [peers] 1\n[peers.1]\n# pgbouncer.ini:7 host; port: PgBouncer's default, 6432\n\
             host = \"10.0.0.11:6432\"\n# pgbouncer.ini:7 pool_size\npool_size = 5\n"
        ),
        "{t}"
    );
    assert!(t.contains("[peers.2]\n# pgbouncer.ini:8 host, port\nhost = \"/var/run/pgbouncer:6433\"\n"), "{t}");
    assert_eq!(t.matches("\n[peers.4]\n").count(), 1, "{t}");

    let file: ConfigFile = toml::from_str(t).unwrap_or_else(|e| panic!("{e}\n{t}"));
    assert_eq!(file.general.peer_id, 1);
    assert_eq!(file.peers["3"].host, "[::1]:7000");
    assert_eq!(file.peers["3"].pool_size, None, "PgBouncer's -1: default_pool_size");
    assert_eq!((file.peers["4"].host.as_str(), file.peers["4"].pool_size), ("p4.internal:6432", Some(2)));

    // pgsluice reads it: its own section is ignored, the Unix socket is the peer's.
    let cfg = Config::from_str(t, &dir.path().join("pgsluice.toml")).unwrap_or_else(|e| panic!("{e}\n{t}"));
    let mut ids: Vec<u16> = cfg.peers.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, [2, 3, 4]);
    assert_eq!(cfg.peers[&2].addr.unix_socket_path(), "/var/run/pgbouncer/.s.PGSQL.6433");
    assert_eq!(cfg.peers[&3].pool_size, cfg.file.general.default_pool_size);

    assert_eq!(fate(&imp, "pgbouncer", "peer_id"), &Fate::Mapped("general.peer_id".into()));
    assert_eq!(fate(&imp, "peers", "1"), &Fate::Mapped("peers.1".into()));
    assert_eq!(fate(&imp, "peers.2", "port"), &Fate::Mapped("peers.2.host".into()));
    assert!(matches!(fate(&imp, "peers.3", "pool_size"), Fate::Same(w) if w.contains("default_pool_size")));
    // A later line for the same id (04 is 4, as PgBouncer reads it) replaces the earlier.
    assert!(matches!(fate(&imp, "peers", "4"), Fate::Same(w) if w.contains("superseded by pgbouncer.ini:11")));
    assert!(matches!(fate(&imp, "peers.4", "host"), Fate::Same(_)));
    let sizes: Vec<&Fate> = imp.entries.iter().filter(|e| e.section == "peers.04").map(|e| &e.fate).collect();
    assert!(matches!(sizes[..], [Fate::Mapped(_), Fate::Same(_), Fate::Mapped(_)]), "{sizes:?}");
}

#[test]
fn peers_pgbouncer_refuses_are_errors() {
    for (line, needle) in [
        ("x = host=h", "ids of peers"),
        ("0 = host=h", "ids of peers"),
        ("65536 = host=h", "ids of peers"),
        ("1 = port=6432", "host was not provided for peer 1"),
        ("1 = host=h port=0", "invalid port"),
        ("1 = host=h port=x", "invalid port"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini, format!("[peers]\n{line}\n")).unwrap();
        let err = import(&ini, None, None).expect_err(line).to_string();
        assert!(err.starts_with("pgbouncer.ini:2: ") && err.contains(needle), "{line}: {err}");
    }
}

#[test]
fn passwords_never_appear_in_comments_or_entries() {
    let (_dir, imp) = import_text(
        "[pgbouncer]\nauth_file = userlist.txt\nauth_ldap_options = ldapurl=\"ldap://x\" ldapbindpasswd=ldap-secret\n\
         [databases]\napp = host=h user=app password=db-secret connect_query='SELECT 1'\n* = password=star-secret\n",
    );
    for secret in ["ldap-secret", "db-secret", "star-secret"] {
        for line in imp.toml.lines().filter(|l| l.trim_start().starts_with('#')) {
            assert!(!line.contains(secret), "{line}");
        }
        for e in &imp.entries {
            assert!(!format!("{e:?}").contains(secret), "{e:?}");
        }
    }
    // The database's own password is imported (as a value, where pgsluice needs it).
    let file: ConfigFile = toml::from_str(&imp.toml).unwrap();
    assert!(file.databases["app"].password.is_some());
}

#[test]
fn a_later_line_wins_and_userlist_replaces_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        "[pgbouncer]\ndefault_pool_size = 5\nauth_file = old.txt\ndefault_pool_size = 6\n\
         [databases]\napp = host=h pool_size=1 reserve_pool=2 pool_size=3 reserve_pool_size=4\n",
    )
    .unwrap();
    let users = dir.path().join("users.txt");
    let imp = import(&ini, Some(&users), Some(&dir.path().join("out.toml"))).unwrap();
    let file: ConfigFile = toml::from_str(&imp.toml).unwrap();
    assert_eq!(file.general.default_pool_size, 6);
    assert_eq!(file.general.auth_file.as_deref(), Some("users.txt"));
    let sizes: Vec<&Fate> = imp.entries.iter().filter(|e| e.key == "default_pool_size").map(|e| &e.fate).collect();
    assert!(matches!(&sizes[..], [Fate::Same(w), Fate::Mapped(_)] if w.contains("pgbouncer.ini:4")), "{sizes:?}");
    assert!(matches!(fate(&imp, "pgbouncer", "auth_file"), Fate::Same(w) if w.contains("--userlist")));
    let app = &file.databases["app"];
    assert_eq!((app.pool_size, app.reserve_pool_size), (Some(3), Some(4)));
    let superseded = imp.entries.iter().filter(|e| e.section == "databases.app" && matches!(e.fate, Fate::Same(_)));
    assert_eq!(superseded.map(|e| e.key.as_str()).collect::<Vec<_>>(), ["pool_size", "reserve_pool"]);
}

#[test]
fn client_tls_needs_both_files() {
    let (_dir, imp) = import_text("[pgbouncer]\nauth_file = userlist.txt\nclient_tls_sslmode = disable\n");
    assert!(matches!(fate(&imp, "pgbouncer", "client_tls_sslmode"), Fate::Same(_)));
    assert!(!imp.toml.contains("\n[tls]\n"), "{}", imp.toml);
    let (_dir, imp) = import_text("[pgbouncer]\nauth_file = userlist.txt\nclient_tls_sslmode = require\n");
    assert!(matches!(fate(&imp, "pgbouncer", "client_tls_sslmode"), Fate::Dropped(w) if w.contains("both")));
    let (_dir, imp) = import_text(
        "[pgbouncer]\nauth_file = userlist.txt\nclient_tls_key_file = k.pem\nclient_tls_cert_file = c.pem\n",
    );
    let file: ConfigFile = toml::from_str(&imp.toml).unwrap();
    let tls = file.tls.expect("[tls]");
    assert_eq!((tls.cert_file.as_str(), tls.key_file.as_str()), ("c.pem", "k.pem"));
    assert_eq!(tls.client_tls_sslmode, crate::config::ClientTlsMode::Disable, "PgBouncer's default");
}

#[test]
fn the_fixture_is_imported_whole() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pgbouncer/pgbouncer.ini");
    let imp = import(&fixture, None, None).unwrap();
    // Every documented setting appears in the fixture, and each gets a fate.
    for (section, key) in SETTINGS.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('.')) {
        let found = imp
            .entries
            .iter()
            .any(|e| e.key == key && (e.section == section || e.section.starts_with(&format!("{section}."))));
        assert!(found, "the fixture does not use {section}.{key}");
    }
    for e in &imp.entries {
        if let Fate::Dropped(w) | Fate::Same(w) = &e.fate {
            assert!(!w.is_empty(), "{e:?}");
        }
    }
    let file: ConfigFile = toml::from_str(&imp.toml).unwrap_or_else(|e| panic!("{e}\n{}", imp.toml));
    assert_eq!(file.general.default_pool_size, 25);
    assert_eq!(file.databases["app"].hosts.len(), 2);
    assert_eq!(file.databases["local"].hosts[0].addr(), "/var/run/pgbouncer:5432");
    assert_eq!(file.databases["weird.name"].hosts[0].addr(), "/var/run/postgresql:5432");
    assert_eq!(file.databases["reports"].reserve_pool_size, Some(1));
    assert_eq!(file.general.peer_id, 1);
    assert_eq!((file.peers["1"].host.as_str(), file.peers["1"].pool_size), ("/tmp/pgbouncer1:6432", Some(5)));
    assert_eq!((file.peers["2"].host.as_str(), file.peers["2"].pool_size), ("10.0.0.12:6432", None));
    assert!(imp.entries.iter().any(|e| e.origin.file == "pgbouncer-databases.ini"));
}

#[test]
fn the_migration_guide_lists_every_setting() {
    let doc = include_str!("../../docs/migrating-from-pgbouncer.md");
    let section = |heading: &str| {
        let start = doc.find(heading).unwrap_or_else(|| panic!("{heading}"));
        let rest = &doc[start + heading.len()..];
        &rest[..rest.find("\n### ").unwrap_or(rest.len())]
    };
    for (heading, table, prefix) in [
        ("### `[pgbouncer]`", table::PGBOUNCER, "general."),
        ("### `[databases]`", table::DATABASE, "databases.NAME."),
        ("### `[users]`", table::USER, "users.NAME."),
    ] {
        let rows = section(heading);
        for (name, rule) in table {
            let row = rows
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("{heading}: no row for {name}"));
            // The row says what the importer does.
            let ok = match rule {
                Rule::Key(target, _) => row.contains(&format!("| `{prefix}{target}` |")),
                Rule::Tls(target, _) => row.contains(&format!("`[tls] {target}`")),
                Rule::Fixed(_, why) => row.contains("nothing to set") && row.contains(why),
                Rule::Drop(why) => row.contains("| dropped |") && row.contains(why),
            };
            assert!(ok, "{heading}: the row of {name} does not match the importer: {row}");
        }
    }
}
