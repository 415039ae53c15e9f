//! Table-driven tests of the classifier: routes, paths, transaction blocks, hints, lexical
//! edge cases, limits, a randomized no-panic run and the cache.

use super::*;

/// Which path decided a statement: fast (no parser run) or the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Parser,
}
use Path::{Fast as F, Parser as P};

fn classifier(cache_size: usize) -> Classifier {
    Classifier::new(ClassifierSettings { read_only_functions: vec![], max_parse_length: 64 * 1024, cache_size })
}

/// Classifies with the cache off and reports whether the parser ran.
fn classify_path(c: &Classifier, sql: &str) -> (Class, Path) {
    let before = c.cache_stats().1;
    let class = c.classify(sql);
    let path = if c.cache_stats().1 > before { P } else { F };
    (class, path)
}

/// (statement, read_only, path)
const ROUTES: &[(&str, bool, Path)] = &[
    // --- fast-path reads
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", true, F),
    ("select 1", true, F),
    ("  \n\t SELECT 1", true, F),
    ("SeLeCt * FrOm t WhErE a = 'x'", true, F),
    ("SELECT 1;", true, F),
    ("SELECT 1 ;  ; ", true, F),
    ("-- comment\nSELECT 1", true, F),
    ("/* c */ SELECT 1", true, F),
    ("/* outer /* nested ( */ still */ SELECT 1", true, F),
    ("SELECT 'it''s' FROM t", true, F),
    ("SELECT E'\\'', e'\\\\' FROM t", true, F),
    ("SELECT 'FOR UPDATE' FROM t", true, F),
    ("SELECT 'a(b;c INTO' FROM t", true, F),
    ("SELECT \"for\", \"into\", \"(\" FROM t", true, F),
    ("SELECT \"a\"\"b\" FROM \"T\"", true, F),
    ("SELECT $$ ; ( INSERT $$ FROM t", true, F),
    ("SELECT $tag$ ; ( INTO FOR $ $$ $tag$ FROM t", true, F),
    ("SELECT $1, $2 FROM t WHERE a = $3", true, F),
    ("SELECT a$b, c$ FROM t", true, F),
    ("SELECT x FROM t -- FOR UPDATE (", true, F),
    ("SELECT x FROM t /* ( INTO */", true, F),
    ("SELECT CURRENT_TIMESTAMP, CURRENT_USER", true, F),
    ("SELECT x::regclass, y::text[] FROM t", true, F),
    ("SELECT * FROM t ORDER BY a DESC LIMIT 10 OFFSET 5", true, F),
    ("SELECT a.b FROM s.t a JOIN u b ON a.id = b.id WHERE a.x > 1 AND b.y <> 'z'", true, F),
    ("SELECT 1e5, 1.5e-3, .5, 1_000, 0x1F", true, F),
    ("SELECT B'101', X'1F', N'x', U&'d\\0061t' FROM t", true, F),
    ("SELECT 'héllo', ünïcode FROM tàble", true, F),
    ("SELECT formatted, fork, intoxicated, analyze_me FROM t", true, F),
    ("SELECT 1; SELECT 2;", true, F),
    ("SHOW search_path", true, F),
    ("show all", true, F),
    ("SHOW TRANSACTION ISOLATION LEVEL", true, F),
    ("TABLE t", true, F),
    ("table s.t", true, F),
    ("EXPLAIN SELECT * FROM t", true, F),
    ("EXPLAIN VERBOSE SELECT 1", true, F),
    ("explain update t set a = 1", true, F), // a plan only: runs on a standby
    ("COPY t TO STDOUT", true, F),
    ("copy s.t (a, b) to stdout with (format csv)", true, F),
    ("COPY t TO STDOUT;", true, F),
    ("COMMIT", true, F),
    ("commit work", true, F),
    ("END", true, F),
    ("ROLLBACK", true, F),
    ("ABORT", true, F),
    ("SAVEPOINT s1", true, F),
    ("RELEASE SAVEPOINT s1", true, F),
    ("RELEASE s1", true, F),
    ("ROLLBACK TO SAVEPOINT s1", true, F),
    ("rollback to s1", true, F),
    ("COMMIT AND CHAIN", true, F),
    // --- parser-path reads
    ("SELECT count(*) FROM t", true, P),
    ("SELECT now()", true, P),
    ("select pg_is_in_recovery()", true, P),
    ("SELECT pg_catalog.now()", true, P),
    ("SELECT PG_CATALOG.LOWER('A')", true, P),
    ("SELECT \"now\"()", true, P),
    ("SELECT COALESCE(a, b), NULLIF(a, 1), GREATEST(1, 2), LEAST(1, 2) FROM t", true, P),
    ("SELECT EXTRACT(year FROM now()), CAST(a AS int) FROM t", true, P),
    ("SELECT POSITION('a' IN b), SUBSTRING(b FROM 1 FOR 2), TRIM(BOTH ' ' FROM b) FROM t", true, P),
    ("SELECT OVERLAY(b PLACING 'x' FROM 1 FOR 1) FROM t", true, P),
    ("SELECT ARRAY(SELECT 1), ROW(1, 2), ARRAY[1, 2]", true, P),
    ("SELECT * FROM generate_series(1, 10)", true, P),
    ("SELECT * FROM generate_series(1, 3) AS g(x)", true, P),
    ("SELECT * FROM t, LATERAL unnest(t.arr) u", true, P),
    ("SELECT * FROM unnest(ARRAY[1, 2])", true, P),
    ("SELECT sum(x) OVER (PARTITION BY y ORDER BY z), row_number() OVER () FROM t", true, P),
    ("SELECT lag(x) OVER w, rank() OVER w FROM t WINDOW w AS (ORDER BY x)", true, P),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE lower(name) = $1)", true, P),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)", true, P),
    ("SELECT * FROM t WHERE a = ANY($1)", true, P),
    ("SELECT * FROM t WHERE a = $1 AND (b = 1 OR c = 2)", true, P),
    ("WITH x AS (SELECT 1 AS a) SELECT a FROM x", true, P),
    ("with x as (select 1) select * from x", true, P),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 9) SELECT * FROM r", true, P),
    ("VALUES (1, 'a'), (2, 'b')", true, P),
    ("(SELECT 1) UNION (SELECT 2)", true, P),
    ("EXPLAIN ANALYZE SELECT * FROM t", true, P),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT 1", true, P),
    ("EXPLAIN INSERT INTO t VALUES (1)", true, P),
    ("COPY (SELECT * FROM t) TO STDOUT", true, P),
    ("SELECT jsonb_build_object('a', 1)->>'a'", true, P),
    ("SELECT to_char(now(), 'YYYY'), date_trunc('day', ts) AT TIME ZONE 'UTC' FROM t", true, P),
    ("SELECT string_agg(name, ',' ORDER BY name), count(*) FILTER (WHERE a) FROM t", true, P),
    ("SELECT pg_sleep(1), version(), pg_last_wal_replay_lsn()", true, P),
    ("SELECT 'FOR UPDATE', (1)", true, P),
    ("SELECT a FROM t ORDER BY lower(a) NULLS LAST", true, P),
    ("SELECT a FROM t GROUP BY a HAVING count(*) > 1", true, P),
    ("SELECT 1; SELECT count(*) FROM t;", true, P),
    ("SELECT now() -- FOR UPDATE", true, P),
    // --- fast-path writes: every write keyword, and anything unknown
    ("INSERT INTO t VALUES (1)", false, F),
    ("  insert into t values (1)", false, F),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", false, F),
    ("DELETE FROM t", false, F),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", false, F),
    ("CREATE TABLE t (a int)", false, F),
    ("ALTER TABLE t ADD COLUMN b int", false, F),
    ("DROP TABLE t", false, F),
    ("GRANT SELECT ON t TO u", false, F),
    ("REVOKE SELECT ON t FROM u", false, F),
    ("TRUNCATE t", false, F),
    ("VACUUM t", false, F),
    ("ANALYZE t", false, F),
    ("CLUSTER t", false, F),
    ("REINDEX TABLE t", false, F),
    ("LOCK TABLE t", false, F),
    ("CALL p()", false, F),
    ("DO $$ BEGIN PERFORM 1; END $$", false, F),
    ("NOTIFY ch", false, F),
    ("LISTEN ch", false, F),
    ("UNLISTEN *", false, F),
    ("SET search_path = x", false, F),
    ("set statement_timeout to 0", false, F),
    ("RESET ALL", false, F),
    ("PREPARE p AS SELECT 1", false, F),
    ("EXECUTE p", false, F),
    ("DEALLOCATE ALL", false, F),
    ("DISCARD ALL", false, F),
    ("DECLARE c CURSOR FOR SELECT 1", false, F),
    ("FETCH 10 FROM c", false, F),
    ("MOVE NEXT IN c", false, F),
    ("CLOSE c", false, F),
    ("COMMENT ON TABLE t IS 'x'", false, F),
    ("SECURITY LABEL ON TABLE t IS 'x'", false, F),
    ("REFRESH MATERIALIZED VIEW v", false, F),
    ("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", false, F),
    ("CHECKPOINT", false, F),
    ("LOAD 'auto_explain'", false, F),
    ("COPY t FROM STDIN", false, F),
    ("copy t (a, b) from '/tmp/x' with (format csv)", false, F),
    ("COPY t TO '/tmp/f'", false, F),
    ("COPY t TO PROGRAM 'gzip > /tmp/f'", false, F),
    ("COPY t", false, F),
    ("COMMIT PREPARED 'x'", false, F),
    ("ROLLBACK PREPARED 'x'", false, F),
    ("PREPARE TRANSACTION 'x'", false, F),
    ("SET TRANSACTION READ ONLY", false, F), // outside `BEGIN; SET TRANSACTION …`
    ("START", false, F),
    ("REPLACE INTO t VALUES (1)", false, F),
    ("foo bar", false, F),
    ("123", false, F),
    ("'str'", false, F),
    ("/* pgsluice:replica */ INSERT INTO t VALUES (1)", false, F),
    ("SELECT 1; INSERT INTO t VALUES (1); SELECT 2", false, F),
    ("SELECT 1; DELETE FROM t", false, F),
    ("SELECT now(); UPDATE t SET a = 1", false, F), // the write decides; no parse
    ("SELECT $$;$$; DROP TABLE t", false, F),
    // --- parser-path writes
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", false, P),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM u", false, P),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i", false, P),
    ("WITH x AS (SELECT 1), d AS (DELETE FROM t RETURNING 1) SELECT * FROM x", false, P),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", false, P),
    ("WITH x AS (SELECT 1) DELETE FROM t", false, P),
    ("SELECT * FROM t FOR UPDATE", false, P),
    ("select * from t where id = $1 for share", false, P),
    ("SELECT * FROM t FOR NO KEY UPDATE", false, P),
    ("SELECT * FROM t FOR KEY SHARE", false, P),
    ("SELECT * FROM t FOR UPDATE OF t SKIP LOCKED", false, P),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", false, P),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", false, P),
    ("SELECT x FROM t WHERE id = 1FOR UPDATE", false, P),
    ("SELECT nextval('s')", false, P),
    ("select setval('s', 1)", false, P),
    ("SELECT currval('s'), lastval()", false, P),
    ("select pg_advisory_lock(1)", false, P),
    ("select pg_try_advisory_xact_lock(1)", false, P),
    ("SELECT set_config('a', 'b', false)", false, P),
    ("SELECT txid_current()", false, P),
    ("SELECT pg_current_wal_lsn()", false, P),
    ("SELECT pg_notify('ch', 'x')", false, P),
    ("SELECT * INTO newtable FROM t", false, P),
    ("SELECT a INTO TEMP t2 FROM t", false, P),
    ("select my_func(1)", false, P),
    ("SELECT * FROM my_srf(1)", false, P),
    ("SELECT * FROM t, LATERAL my_f(t.x)", false, P),
    ("SELECT a FROM t ORDER BY my_rank(a)", false, P),
    ("SELECT count(*) FILTER (WHERE my_pred(a)) FROM t", false, P),
    ("SELECT sum(my_f(x)) OVER (ORDER BY y) FROM t", false, P),
    ("SELECT CAST(my_f(1) AS int)", false, P),
    ("SELECT x FROM t WHERE y = (SELECT nextval('s'))", false, P),
    ("SELECT lower(nextval('s')::text)", false, P),
    ("SELECT * FROM generate_series(1, nextval('s'))", false, P),
    ("WITH x AS (SELECT nextval('s')) SELECT * FROM x", false, P),
    ("SELECT public.now()", false, P),
    ("SELECT \"NOW\"()", false, P),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", false, P),
    ("EXPLAIN ANALYZE DELETE FROM t", false, P),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", false, P),
    ("EXPLAIN ANALYZE SELECT nextval('s')", false, P),
    ("EXPLAIN EXECUTE p(1)", false, P), // SQL-level prepared statements live on the primary
    ("COPY (SELECT nextval('s')) TO STDOUT", false, P),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", false, P),
    ("COPY (SELECT 1) TO '/tmp/x'", false, P),
    ("VALUES (nextval('s'))", false, P),
    ("SELECT 1; SELECT nextval('s')", false, P),
    ("SELECT 1; WITH d AS (DELETE FROM t RETURNING 1) SELECT 1", false, P),
    ("SELECT (", false, P),
    ("SELECT * FROM t WHERE a IN (1, 2", false, P),
    ("WITH", false, P),
    ("SELECT ((((((((((((((((((((((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))))))))))))))))))))))", false, P),
];

#[test]
fn routes() {
    let c = classifier(0);
    for &(sql, read_only, path) in ROUTES {
        let (class, got) = classify_path(&c, sql);
        assert_eq!(class.read_only, read_only, "read_only of {sql:?}");
        assert_eq!(got, path, "path of {sql:?}");
        assert_eq!(class.begin, Begin::None, "begin of {sql:?}");
    }
}

/// (text, begin, read_only)
const BEGINS: &[(&str, Begin, bool)] = &[
    ("BEGIN", Begin::Plain, false),
    ("begin", Begin::Plain, false),
    ("BEGIN;", Begin::Plain, false),
    ("  /* x */ BEGIN WORK", Begin::Plain, false),
    ("BEGIN TRANSACTION", Begin::Plain, false),
    ("BEGIN READ ONLY", Begin::ReadOnly, true),
    ("begin read only", Begin::ReadOnly, true),
    ("BEGIN TRANSACTION READ ONLY;", Begin::ReadOnly, true),
    ("BEGIN READ WRITE", Begin::ReadWrite, false),
    // A hot standby refuses SERIALIZABLE: read-only mode, but not for a replica.
    ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", Begin::ReadOnly, false),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", Begin::ReadOnly, true),
    ("BEGIN READ ONLY, ISOLATION LEVEL READ COMMITTED, NOT DEFERRABLE", Begin::ReadOnly, true),
    ("begin isolation level read uncommitted, read only deferrable", Begin::ReadOnly, true),
    ("BEGIN ISOLATION LEVEL READ UNCOMMITTED", Begin::Plain, false),
    ("BEGIN READ ONLY READ WRITE", Begin::ReadWrite, false),
    ("BEGIN READ WRITE, READ ONLY", Begin::ReadOnly, true),
    ("BEGIN ISOLATION LEVEL SNAPSHOT READ ONLY", Begin::ReadOnly, false),
    ("BEGIN FOO", Begin::Plain, false),
    ("BEGIN READ", Begin::Plain, false),
    ("BEGIN ISOLATION LEVEL; SELECT 1", Begin::Plain, false),
    ("BEGIN WORK WORK READ ONLY", Begin::ReadOnly, false),
    ("START TRANSACTION", Begin::Plain, false),
    ("START TRANSACTION READ WRITE", Begin::ReadWrite, false),
    ("start transaction read only", Begin::ReadOnly, true),
    ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", Begin::ReadOnly, true),
    ("START TRANSACTION; INSERT INTO t VALUES (1)", Begin::Plain, false),
    ("begin read only; select 1; commit", Begin::ReadOnly, true),
    ("BEGIN READ ONLY; SELECT count(*) FROM t; COMMIT;", Begin::ReadOnly, true),
    ("BEGIN READ ONLY; INSERT INTO t VALUES (1); COMMIT", Begin::ReadOnly, false),
    ("BEGIN READ ONLY; SELECT nextval('s'); COMMIT", Begin::ReadOnly, false),
    ("BEGIN; SELECT 1; COMMIT", Begin::Plain, false),
    ("BEGIN; SET TRANSACTION READ ONLY; SELECT 1; COMMIT", Begin::ReadOnly, true),
    ("begin; set transaction isolation level repeatable read, read only; select 1", Begin::ReadOnly, true),
    ("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT 1", Begin::ReadOnly, false),
    ("BEGIN; SET TRANSACTION READ WRITE", Begin::ReadWrite, false),
    ("BEGIN; SET TRANSACTION SNAPSHOT '0001'", Begin::Plain, false),
    ("BEGIN READ WRITE; SET TRANSACTION READ ONLY", Begin::ReadWrite, false),
    ("BEGIN; SELECT 1; SET TRANSACTION READ ONLY", Begin::Plain, false),
    ("/* pgsluice:replica */ BEGIN READ ONLY", Begin::ReadOnly, true),
    ("SELECT 1; BEGIN READ ONLY", Begin::None, true),
    ("SELECT 1; BEGIN", Begin::None, false),
];

#[test]
fn transaction_blocks() {
    let c = classifier(64);
    for &(sql, begin, read_only) in BEGINS {
        let class = c.classify(sql);
        assert_eq!(class.begin, begin, "begin of {sql:?}");
        assert_eq!(class.read_only, read_only, "read_only of {sql:?}");
    }
}

/// (text, hint, read_only)
const HINTS: &[(&str, Hint, bool)] = &[
    ("/* pgsluice:primary */ SELECT 1", Hint::Primary, true),
    ("/* PGSLUICE:REPLICA */ SELECT 1", Hint::Replica, true),
    ("/*pgsluice:replica*/SELECT 1", Hint::Replica, true),
    ("/*  pgsluice : Primary \n */ SELECT 1", Hint::Primary, true),
    ("-- x\n/* pgsluice:replica */ -- y\n SELECT 1", Hint::Replica, true),
    ("/* other */ /* pgsluice:primary */ SELECT 1", Hint::Primary, true),
    ("/* pgsluice:primary */ /* pgsluice:replica */ SELECT 1", Hint::Primary, true),
    ("SELECT 1 /* pgsluice:primary */", Hint::None, true),
    ("SELECT 1; /* pgsluice:primary */ SELECT 2", Hint::None, true),
    ("/* pgsluice:nowhere */ SELECT 1", Hint::None, true),
    ("/* pgsluice: replica x */ SELECT 1", Hint::None, true),
    ("/* pgsluicex:replica */ SELECT 1", Hint::None, true),
    ("/* pgsluice:replica /* nested */ */ SELECT 1", Hint::None, true),
    ("/* pgsluice:primary */", Hint::Primary, false),
    ("/* pgsluice:replica */ UPDATE t SET a = 1", Hint::Replica, false),
    ("/* pgsluice:replica */ SELECT nextval('s')", Hint::Replica, false),
    ("/* pgsluice:primary */ SELECT 'unterminated", Hint::Primary, false),
];

#[test]
fn hints() {
    let c = classifier(64);
    for &(sql, hint, read_only) in HINTS {
        let class = c.classify(sql);
        assert_eq!(class.hint, hint, "hint of {sql:?}");
        assert_eq!(class.read_only, read_only, "read_only of {sql:?}");
    }
}

/// Empty, comment-only, garbage or lexically broken text: primary, and no panic.
const NOT_ROUTABLE: &[&str] = &[
    "",
    "   \n ",
    "-- only a comment",
    "/* only */",
    ";",
    ";;  ;",
    "/* unterminated",
    "/* nested /* unterminated */",
    "SELECT 'unterminated",
    "SELECT \"unterminated",
    "SELECT $$unterminated",
    "SELECT $a$ x $b$",
    "SELECT E'\\'",
    "SELECT 1 /* unterminated",
    "garbage ~~~",
    "!!!",
    "\0",
    "(",
    ")",
    "$",
    "$$",
    "E'",
];

#[test]
fn not_routable() {
    let c = classifier(64);
    for sql in NOT_ROUTABLE {
        let class = c.classify(sql);
        assert!(!class.read_only, "{sql:?}");
        assert_eq!(class.begin, Begin::None, "{sql:?}");
    }
}

#[test]
fn settings_extend_the_allowlist() {
    let c = Classifier::new(ClassifierSettings {
        read_only_functions: vec!["my_func".into(), " MySchema.F ".into()],
        max_parse_length: 1024,
        cache_size: 0,
    });
    assert!(c.classify("select my_func(1)").read_only);
    assert!(c.classify("SELECT * FROM t WHERE a = MY_FUNC($1)").read_only);
    assert!(c.classify("select myschema.f(1)").read_only);
    assert!(!c.classify("select f(1)").read_only);
    assert!(!c.classify("select other.my_func(1)").read_only);
    assert!(!c.classify("select my_func(nextval('s'))").read_only);
    assert!(!classifier(0).classify("select my_func(1)").read_only);
}

#[test]
fn default_allowlist_is_clean() {
    let banned_prefixes = ["pg_advisory", "pg_try_advisory", "lo_", "dblink", "pg_stat_reset"];
    let banned = [
        "nextval",
        "setval",
        "currval",
        "lastval",
        "set_config",
        "txid_current",
        "txid_current_if_assigned",
        "pg_current_xact_id",
        "pg_current_wal_lsn",
        "pg_current_wal_insert_lsn",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_notify",
        "pg_logical_emit_message",
        "pg_export_snapshot",
        "pg_promote",
        "setseed",
    ];
    let mut seen = HashSet::new();
    for f in DEFAULT_READ_ONLY_FUNCTIONS {
        assert_eq!(*f, f.to_ascii_lowercase(), "{f} is not lower-case");
        assert!(seen.insert(*f), "{f} is listed twice");
        assert!(!banned.contains(f), "{f} must not be allowlisted");
        assert!(!banned_prefixes.iter().any(|p| f.starts_with(p)), "{f} must not be allowlisted");
    }
}

#[test]
fn long_text_is_not_parsed() {
    let c = Classifier::new(ClassifierSettings { read_only_functions: vec![], max_parse_length: 100, cache_size: 16 });
    let long_parse = format!("SELECT count(*) FROM t WHERE a IN ({}1)", "1, ".repeat(100));
    assert!(!c.classify(&long_parse).read_only);
    assert_eq!(c.cache_stats(), (0, 0), "must not reach the parser");
    // The fast path has no length limit: it neither allocates nor recurses.
    let long_fast = format!("SELECT a FROM t WHERE a = 1{}", " OR a = 1".repeat(10_000));
    assert!(c.classify(&long_fast).read_only);
    let long_write = format!("INSERT INTO t VALUES {}(1)", "(1), ".repeat(10_000));
    assert!(!c.classify(&long_write).read_only);
}

#[test]
fn too_many_tokens_are_not_parsed() {
    let c = Classifier::new(ClassifierSettings {
        read_only_functions: vec![],
        max_parse_length: usize::MAX,
        cache_size: 0,
    });
    let ok = format!("SELECT (x{})", " OR x".repeat(1000));
    assert!(c.classify(&ok).read_only);
    let deep = format!("SELECT (x{})", " OR x".repeat(MAX_PARSE_TOKENS));
    assert!(!c.classify(&deep).read_only);
    assert_eq!(c.cache_stats(), (0, 1), "only the short one was parsed");
}

/// Deep nesting must come back as "primary", not overflow a 2 MiB (tokio worker) stack.
#[test]
fn deep_nesting_does_not_overflow() {
    let texts = [
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}1", "(".repeat(10_000)),
        format!("SELECT ({}1)", "NOT ".repeat(10_000)),
        format!("SELECT ({}1)", "- ".repeat(10_000)),
        format!("SELECT ({}1", "ARRAY[".repeat(10_000)),
        format!("SELECT {}1", "abs(".repeat(10_000)),
        format!("SELECT {}1", "(SELECT ".repeat(10_000)),
        format!("SELECT ({}1", "CASE WHEN true THEN ".repeat(10_000)),
        format!("SELECT (x{})", "::int".repeat(4_000)),
        format!("WITH a AS ({}) SELECT 1", "SELECT 1 UNION ".repeat(4_000) + "SELECT 1"),
    ];
    let c = Classifier::new(ClassifierSettings {
        read_only_functions: vec![],
        max_parse_length: usize::MAX,
        cache_size: 16,
    });
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for (i, sql) in texts.iter().enumerate() {
                assert!(!c.classify(sql).read_only, "nesting #{i} must go to the primary");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_text_never_panics() {
    const PIECES: &[&str] = &[
        "SELECT ",
        "select ",
        "INSERT ",
        "WITH ",
        "BEGIN ",
        "READ ONLY",
        "COPY ",
        "TO ",
        "STDOUT",
        "FROM ",
        "t ",
        "x",
        "FOR ",
        "UPDATE ",
        "INTO ",
        "EXPLAIN ",
        "ANALYZE ",
        "SET ",
        "TRANSACTION ",
        "now()",
        "nextval(",
        "count(*)",
        "(",
        ")",
        ";",
        ",",
        "'",
        "''",
        "E'",
        "\\",
        "\"",
        "$",
        "$$",
        "$1",
        "$a$",
        "--",
        "\n",
        "/*",
        "*/",
        " ",
        "1",
        "1e",
        ".",
        "::",
        "é",
        "pgsluice:replica",
        "AS ",
        "[",
        "]",
        "-",
        "+",
        "*",
        "OR ",
        "NOT ",
        "\0",
    ];
    let c = classifier(256);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..100_000 {
        let mut sql = String::new();
        for _ in 0..rng.below(24) {
            sql.push_str(PIECES[rng.below(PIECES.len())]);
        }
        let class = c.classify(&sql);
        if class.read_only {
            // Whatever it was, a read-only verdict never comes with a write keyword first.
            let first = sql.trim_start().get(..6).unwrap_or("");
            assert!(!first.eq_ignore_ascii_case("INSERT"), "{sql:?}");
        }
    }
    // Arbitrary bytes, made into UTF-8.
    for _ in 0..20_000 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        c.classify(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn cache_counts_parser_path_only() {
    let c = classifier(16);
    for sql in ["SELECT 1", "INSERT INTO t VALUES (1)", "BEGIN", "COMMIT", "SHOW x"] {
        c.classify(sql);
    }
    assert_eq!(c.cache_stats(), (0, 0), "fast-path statements do not touch the cache");
    assert_eq!(c.cache_len(), 0);

    for _ in 0..3 {
        assert!(c.classify("SELECT count(*) FROM t").read_only);
    }
    assert_eq!(c.cache_stats(), (2, 1));
    for _ in 0..2 {
        assert!(!c.classify("SELECT * FROM t FOR UPDATE").read_only);
    }
    assert_eq!(c.cache_stats(), (3, 2), "negative results are cached too");
    // The key is the statement, without hint comments or the terminator around it.
    assert!(c.classify("/* pgsluice:replica */ SELECT count(*) FROM t ; ").read_only);
    assert_eq!(c.cache_stats(), (4, 2));
    // ... but exactly its text otherwise.
    assert!(c.classify("select count(*) from t").read_only);
    assert_eq!(c.cache_stats(), (4, 3));
    assert_eq!(c.cache_len(), 3);
}

#[test]
fn cache_disabled() {
    let c = classifier(0);
    for _ in 0..3 {
        assert!(c.classify("SELECT count(*) FROM t").read_only);
    }
    assert_eq!(c.cache_stats(), (0, 3), "every parse is a miss");
    assert_eq!(c.cache_len(), 0);
}

#[test]
fn cache_capacity_is_respected() {
    let c = classifier(8);
    for i in 0..500 {
        c.classify(&format!("SELECT count(*) FROM t WHERE a = {i}"));
        assert!(c.cache_len() <= 8, "{} entries after {i}", c.cache_len());
    }
    assert!(c.cache_len() > 0);
    assert_eq!(c.cache_stats(), (0, 500));
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
    let c = std::sync::Arc::new(classifier(64));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    let sql = format!("SELECT count(*) FROM t WHERE a = {}", (i + t) % 32);
                    assert!(c.classify(&sql).read_only);
                    assert!(!c.classify("SELECT nextval('s')").read_only);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (hits, misses) = c.cache_stats();
    assert_eq!(hits + misses, 4 * 2 * 2_000);
    assert!(misses < 1_000, "{misses} misses");
}

#[test]
fn the_cache_is_bounded_by_bytes_not_only_entries() {
    // 16 entries of 4 KiB would be 64 KiB; weighted, the cache keeps 16 KiB: three of them.
    let c = Classifier::new(ClassifierSettings {
        read_only_functions: vec![],
        max_parse_length: 64 * 1024,
        cache_size: 16,
    });
    for i in 0..200 {
        let sql = format!("WITH t AS (SELECT {i}) SELECT '{}' FROM t", "x".repeat(4 * 1024));
        assert!(c.classify(&sql).read_only);
    }
    assert!(c.cache_len() <= 4, "{} entries of 4 KiB kept", c.cache_len());
    assert!(c.cache_weight() <= 16 * ENTRY_WEIGHT, "{} bytes cached", c.cache_weight());
    // Small statements still fill the entries.
    for i in 0..200 {
        c.classify(&format!("WITH t AS (SELECT {i}) SELECT * FROM t"));
    }
    assert!(c.cache_len() >= 8, "{} entries", c.cache_len());
}
