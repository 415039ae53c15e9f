//! Micro-benchmarks of the hot-path framing: scanning a typical pgbench -S response batch
//! and a client request, the way the relay does (headers only, `Z` status byte).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgsluice::frontend::relay::{scan_client, Half, ScanPos, Txn};
use pgsluice::protocol::{split_frame, Header};
use std::hint::black_box;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// What Postgres answers to `SELECT abalance FROM pgbench_accounts WHERE aid = $1`.
fn select_response() -> Vec<u8> {
    let mut v = msg(b'T', b"\0\x01abalance\0\0\0\x40\x0c\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
    v.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
    v.extend(msg(b'C', b"SELECT 1\0"));
    v.extend(msg(b'Z', b"I"));
    v
}

fn bench_framing(c: &mut Criterion) {
    let resp = select_response();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(resp.len() as u64));
    g.bench_function("split_frames_select_response", |b| {
        b.iter(|| {
            let mut rest: &[u8] = black_box(&resp);
            let mut status = 0u8;
            while let Ok(Some((tag, body, r))) = split_frame(rest, 1 << 30) {
                if tag == b'Z' {
                    status = body[0];
                }
                rest = r;
            }
            status
        })
    });
    g.bench_function("header_parse", |b| b.iter(|| Header::parse(black_box(&resp), 1 << 30)));
    let query = msg(b'Q', b"SELECT abalance FROM pgbench_accounts WHERE aid = 4242;\0");
    let mut buf = BytesMut::with_capacity(4096);
    g.bench_function("scan_client_simple_query", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(&query));
            let mut pos = ScanPos::default();
            let mut txn = Txn::new();
            scan_client(&mut Half { buf: &mut buf, pos: &mut pos }, &mut txn, 1 << 30).unwrap();
            txn.pending
        })
    });
    g.finish();
}

criterion_group!(benches, bench_framing);
criterion_main!(benches);
