//! Micro-benchmarks of the statement classifier: the keyword fast path for pgbench's read
//! and write, the sqlparser path without and with the cache, and the cache hit rate over
//! pgbench's tpcb-like transaction (printed once before the measurements).

use criterion::{criterion_group, criterion_main, Criterion};
use pgsluice::sql::classify::{Classifier, ClassifierSettings};
use std::hint::black_box;

/// pgbench -S.
const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
/// pgbench tpcb-like, first statement.
const UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
/// Needs the parser: a function call (allowlisted, so read-only).
const PARSED: &str = "SELECT count(*), max(abalance) FROM pgbench_accounts WHERE bid = $1";

/// The statements of one pgbench tpcb-like transaction.
const TPCB: &[&str] = &[
    "BEGIN",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "END",
];

fn classifier(cache_size: usize) -> Classifier {
    Classifier::new(ClassifierSettings { read_only_functions: vec![], max_parse_length: 64 * 1024, cache_size })
}

/// Which path each tpcb-like statement takes, and the cache hit rate over 10 000
/// transactions (plus the same with one parser-path statement added per transaction).
fn report_hit_rate() {
    let probe = classifier(0);
    for sql in TPCB {
        let before = probe.cache_stats().1;
        let class = probe.classify(sql);
        let path = if probe.cache_stats().1 > before { "parser" } else { "fast" };
        println!("tpcb-like {path:>6} path  read_only={:<5} {sql}", class.read_only);
    }
    for (name, extra) in [("tpcb-like", None), ("tpcb-like + 1 parsed", Some(PARSED))] {
        let c = classifier(1024);
        for _ in 0..10_000 {
            for sql in TPCB.iter().copied().chain(extra) {
                black_box(c.classify(black_box(sql)));
            }
        }
        let (hits, misses) = c.cache_stats();
        let lookups = hits + misses;
        let rate = if lookups == 0 {
            "n/a: every statement took the fast path".to_owned()
        } else {
            format!("{:.2}% of parser-path lookups", 100.0 * hits as f64 / lookups as f64)
        };
        println!("{name}: cache hits {hits}, misses {misses}, hit rate {rate}");
    }
}

fn bench_classify(c: &mut Criterion) {
    report_hit_rate();
    let uncached = classifier(0);
    let cached = classifier(1024);
    let mut g = c.benchmark_group("classify");
    g.bench_function("fast_read_pgbench_select", |b| b.iter(|| cached.classify(black_box(SELECT))));
    g.bench_function("fast_write_pgbench_update", |b| b.iter(|| cached.classify(black_box(UPDATE))));
    g.bench_function("fast_begin", |b| b.iter(|| cached.classify(black_box("BEGIN"))));
    g.bench_function("parser_uncached", |b| b.iter(|| uncached.classify(black_box(PARSED))));
    g.bench_function("parser_cached", |b| b.iter(|| cached.classify(black_box(PARSED))));
    g.bench_function("tpcb_like_transaction", |b| {
        b.iter(|| {
            for sql in TPCB {
                black_box(cached.classify(black_box(sql)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_classify);
criterion_main!(benches);
