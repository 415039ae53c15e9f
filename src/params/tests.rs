use super::*;

fn server(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What a PostgreSQL 15 server reports at login (abridged).
fn pg15() -> Vec<(String, String)> {
    server(&[
        ("application_name", "pgsluice"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("default_transaction_read_only", "off"),
        ("IntervalStyle", "postgres"),
        ("server_version", "15.8"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ])
}

fn logged_in(tracked: &Tracked, startup: &[(&str, &str)]) -> ClientParams {
    let mut c = ClientParams::default();
    for (k, v) in startup {
        c.set(tracked.lookup(k).expect("tracked"), v);
    }
    c.complete_login(tracked, &pg15());
    c
}

#[test]
fn canonical_names_are_case_insensitive() {
    assert_eq!(canonical("datestyle"), Some("DateStyle"));
    assert_eq!(canonical("TIMEZONE"), Some("TimeZone"));
    assert_eq!(canonical("search_path"), None);
}

#[test]
fn extra_names_are_validated() {
    for ok in ["search_path", "statement_timeout", "myext.tenant_id", "_x$1", "IntervalStyle"] {
        assert_eq!(validate_extra_name(ok), Ok(()), "{ok}");
    }
    for bad in ["", "1abc", "a b", "a;b", "a'b", "a.", ".a", "a..b", "options", "USER", "all", "search-path"] {
        assert!(validate_extra_name(bad).is_err(), "{bad:?} must be refused");
    }
}

#[test]
fn tracked_set_is_case_insensitive_and_canonical() {
    let t = Tracked::new(&["Search_Path", "timezone", "search_path", "statement_timeout"]);
    assert_eq!(t.extra().iter().map(ParamName::as_str).collect::<Vec<_>>(), ["search_path", "statement_timeout"]);
    assert_eq!(t.lookup("SEARCH_PATH").unwrap().as_str(), "search_path");
    let tz = t.lookup("timezone").unwrap();
    assert!(tz.is_builtin());
    assert_eq!(tz.to_string(), "TimeZone");
    assert!(t.lookup("work_mem").is_none());
    assert!(Tracked::default().lookup("search_path").is_none());
}

#[test]
fn set_observe_and_copy_on_write() {
    let mut a = ClientParams::default();
    a.set("TimeZone", "UTC");
    let mut b = a.clone();
    b.observe("timezone", "Europe/Paris");
    b.observe("search_path", "x");
    assert_eq!(a.get("TimeZone"), Some("UTC"));
    assert_eq!(b.get("TimeZone"), Some("Europe/Paris"));
    assert_eq!(b.get("search_path"), None, "untracked ParameterStatus is ignored");
}

#[test]
fn login_fills_reported_values_and_marks_the_rest_default() {
    let t = Tracked::new(&["search_path", "default_transaction_read_only"]);
    let c = logged_in(&t, &[("timezone", "Asia/Tokyo")]);
    assert_eq!(c.get("TimeZone"), Some("Asia/Tokyo"));
    assert_eq!(c.get("DateStyle"), Some("ISO, MDY"));
    assert_eq!(c.get("default_transaction_read_only"), Some("off"), "reported extra takes the server's value");
    assert_eq!(c.get("search_path"), None, "unreported extra: server default");
    // A reported extra parameter follows the client's SETs; an untracked one does not.
    let mut c2 = c.clone();
    c2.observe("default_transaction_read_only", "on");
    c2.observe("in_hot_standby", "on");
    assert_eq!(c2.get("default_transaction_read_only"), Some("on"));
    assert_eq!(c2.get("in_hot_standby"), None);
    assert_eq!(c.get("default_transaction_read_only"), Some("off"));
}

#[test]
fn interning_shares_equal_sets_whatever_the_startup_order() {
    let t = Tracked::new(&["search_path"]);
    let interner = Interner::default();
    let mut a = logged_in(&t, &[("TimeZone", "UTC"), ("search_path", "s1")]);
    let mut b = logged_in(&t, &[("search_path", "s1"), ("timezone", "UTC")]);
    a.intern(&interner);
    b.intern(&interner);
    assert!(Arc::ptr_eq(&a.shared(), &b.shared()));
    assert!(a.is_same(&b.shared()));
    // Same pointer: nothing to compare, nothing to send.
    assert_eq!(a.sync_sql(&server(&[]), Some(&b.shared())), None);
}

#[test]
fn sync_sets_with_set_config_and_escapes_values() {
    let mut c = ClientParams::default();
    c.set("TimeZone", "UTC");
    let srv = server(&[("TimeZone", "Asia/Tokyo")]);
    assert_eq!(c.sync_sql(&srv, None).as_deref(), Some("SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false);"));
    let old = c.shared();
    c.set("TimeZone", "it's\\");
    assert_eq!(
        c.sync_sql(&srv, Some(&old)).as_deref(),
        Some("SELECT pg_catalog.set_config(E'TimeZone', E'it''s\\\\', false);")
    );
    // Values already in place: nothing to send even though the pointer differs.
    assert_eq!(c.sync_sql(&server(&[("TimeZone", "it's\\")]), Some(&old)), None);
}

#[test]
fn unreported_parameters_are_set_recorded_and_reset() {
    let t = Tracked::new(&["search_path", "statement_timeout"]);
    let a = logged_in(&t, &[("search_path", "tenant_a, public"), ("statement_timeout", "5s")]);
    let b = logged_in(&t, &[]);
    let mut srv = pg15();

    // A fresh server connection holds the defaults: B needs nothing.
    assert_eq!(b.sync_sql(&srv, None), None);
    // A needs both set, in one statement.
    let sql = a.sync_sql(&srv, None).unwrap();
    assert_eq!(
        sql,
        "SELECT pg_catalog.set_config(E'search_path', E'tenant_a, public', false), \
         pg_catalog.set_config(E'statement_timeout', E'5s', false);"
    );
    a.record_synced(&mut srv);
    assert_eq!(lookup(&srv, "search_path"), Some("tenant_a, public"));
    // Recorded: A again (a different but equal set) needs nothing.
    let a2 = logged_in(&t, &[("statement_timeout", "5s"), ("search_path", "tenant_a, public")]);
    assert_eq!(a2.sync_sql(&srv, Some(&b.shared())), None);
    // B wants the defaults back.
    assert_eq!(b.sync_sql(&srv, Some(&a.shared())).as_deref(), Some("RESET search_path;RESET statement_timeout;"));
    b.record_synced(&mut srv);
    assert_eq!(lookup(&srv, "search_path"), None);
    assert_eq!(lookup(&srv, "TimeZone"), Some("UTC"), "reported parameters stay");
    assert_eq!(b.sync_sql(&srv, Some(&a.shared())), None);

    // Mixed: set one, reset the other.
    let c = logged_in(&t, &[("statement_timeout", "1s")]);
    a.record_synced(&mut srv);
    assert_eq!(
        c.sync_sql(&srv, None).as_deref(),
        Some("SELECT pg_catalog.set_config(E'statement_timeout', E'1s', false);RESET search_path;")
    );
}

#[test]
fn reset_query_makes_unreported_values_unknown() {
    let t = Tracked::new(&["search_path", "default_transaction_read_only"]);
    let a = logged_in(&t, &[("search_path", "s1"), ("default_transaction_read_only", "on")]);
    let b = logged_in(&t, &[]);
    let mut srv = pg15();
    a.record_synced(&mut srv);
    let mut synced = Some(a.shared());
    a.forget_unreported(&mut srv, &mut synced);
    assert!(synced.is_none());
    assert_eq!(lookup(&srv, "search_path"), Some(UNKNOWN));
    assert_eq!(lookup(&srv, "default_transaction_read_only"), Some("on"), "reported: the server tells");
    // Both the same client and one that wants the default must act.
    assert_eq!(
        a.sync_sql(&srv, synced.as_ref()).as_deref(),
        Some("SELECT pg_catalog.set_config(E'search_path', E's1', false);")
    );
    assert_eq!(
        b.sync_sql(&srv, None).as_deref(),
        Some("SELECT pg_catalog.set_config(E'default_transaction_read_only', E'off', false);RESET search_path;")
    );
}

#[test]
fn options_settings_are_parsed_like_postgresql() {
    let set = |n: &str, v: &str| StartupOption::Set { name: n.into(), value: v.into() };
    assert_eq!(parse_options("-c search_path=a"), [set("search_path", "a")]);
    assert_eq!(parse_options("-csearch_path=a"), [set("search_path", "a")]);
    assert_eq!(parse_options("--search_path=a"), [set("search_path", "a")]);
    assert_eq!(parse_options("--search-path=a"), [set("search_path", "a")]);
    assert_eq!(
        parse_options(" \t-c TimeZone=UTC\n--statement_timeout=5s  -c a=b=c -c x= "),
        [set("TimeZone", "UTC"), set("statement_timeout", "5s"), set("a", "b=c"), set("x", "")]
    );
    // Backslash escapes: a space, a backslash, any other character; a trailing one is dropped.
    assert_eq!(parse_options(r"-c search_path=a,\ b"), [set("search_path", "a, b")]);
    assert_eq!(parse_options(r"-c x=a\\b -c y=\q"), [set("x", r"a\b"), set("y", "q")]);
    assert_eq!(parse_options(r"-c x=end\"), [set("x", "end")]);
    assert_eq!(parse_options(r"-c\ x=1"), [set(" x", "1")]);
    assert_eq!(parse_options("-c application_name=caf\u{e9}"), [set("application_name", "caf\u{e9}")]);
    assert!(parse_options("").is_empty());
    assert!(parse_options(" \t\r\n\x0b\x0c ").is_empty());
}

#[test]
fn options_that_are_not_settings_come_back_unsupported() {
    let bad = |s: &str| StartupOption::Unsupported(s.into());
    assert_eq!(parse_options("-B 100"), [bad("-B"), bad("100")]);
    assert_eq!(parse_options("-c"), [bad("-c")]);
    assert_eq!(parse_options("-c noequals"), [bad("-c")]);
    assert_eq!(parse_options("--=x --novalue -c=x"), [bad("--=x"), bad("--novalue"), bad("-c=x")]);
    assert_eq!(parse_options("search_path=x"), [bad("search_path=x")]);
    assert_eq!(parse_options("--"), [bad("--")]);
    // `-c` takes the next argument, whatever it looks like.
    assert_eq!(parse_options("-c --x=y -c"), [StartupOption::Set { name: "__x".into(), value: "y".into() }, bad("-c")]);
}

#[test]
fn options_parser_never_panics() {
    // A cheap deterministic fuzz over the interesting characters.
    let alphabet = ['-', 'c', '=', ' ', '\\', '\t', 'x', '\u{e9}', '\n'];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20_000 {
        let len = (seed % 12) as usize;
        let s: String = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        for item in parse_options(&s) {
            if let StartupOption::Set { name, .. } = item {
                assert!(!name.is_empty() && !name.contains('-'), "{s:?}");
            }
        }
    }
}

#[test]
fn reset_restores_only_what_the_client_chose_at_startup() {
    use crate::sql::session_state::ParamEffect::{Reset, ResetAll, Set};
    let t = Tracked::new(&["search_path"]);
    let mut c = logged_in(&t, &[("DateStyle", "SQL, DMY"), ("search_path", "app, public")]);
    assert!(c.has_startup());
    assert_eq!(c.startup_value("datestyle"), Some("SQL, DMY"));
    assert_eq!(c.startup_value("TimeZone"), None, "filled in from the server, not chosen");
    // A SET changes the wanted value, not the startup value.
    let login = c.shared();
    c.observe("DateStyle", "ISO, MDY");
    assert!(!c.is_same(&login));
    assert_eq!((c.get("DateStyle"), c.startup_value("DateStyle")), (Some("ISO, MDY"), Some("SQL, DMY")));
    c.observe("DateStyle", "German");
    assert_eq!(c.startup_value("DateStyle"), Some("SQL, DMY"), "still after a second change");

    let mut names = Vec::new();
    c.note_reset(Reset("TimeZone"), &mut names);
    assert!(names.is_empty(), "not chosen: RESET gives the server default");
    c.note_reset(Reset("datestyle"), &mut names);
    c.note_reset(Reset("DateStyle"), &mut names);
    assert_eq!(names, [ParamName::from("DateStyle")]);
    c.note_reset(Set("DATESTYLE"), &mut names);
    assert!(names.is_empty(), "a SET after the RESET wins");
    c.note_reset(ResetAll, &mut names);
    assert_eq!(names.iter().map(ParamName::as_str).collect::<Vec<_>>(), ["DateStyle", "search_path"]);
    let sql = c.restore_sql(&names).expect("two values");
    assert!(sql.contains("(VALUES (E'DateStyle', E'SQL, DMY'), (E'search_path', E'app, public'))"), "{sql}");
    assert!(sql.contains("s.source = 'session'"), "{sql}");
    assert!(c.is_reported("DateStyle") && !c.is_reported("search_path"));
    assert_eq!(c.restore_sql(&[ParamName::from("TimeZone")]), None);

    // A client that chose nothing has nothing to restore.
    let plain = logged_in(&t, &[]);
    assert!(!plain.has_startup());
    let mut names = Vec::new();
    plain.note_reset(ResetAll, &mut names);
    assert!(names.is_empty());
}
