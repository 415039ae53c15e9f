//! Cost gates (issue 21): what the hot paths cost, as numbers that do not move with the load
//! of the machine, checked against the baselines in `benches/cost-baseline.txt`.
//!
//! - **Instructions** per select-only transaction (simple, extended and prepared protocol)
//!   through one session and one pooled server connection, per SCRAM login (stored verifier),
//!   and per transaction of 1,000 clients sharing one server connection (the waiter queue's
//!   check-out and check-in): pgsluice runs under `valgrind --tool=callgrind` (one worker
//!   thread) in front of a stand-in server ([`fake_pg`]); the client ([`client`]) runs
//!   natively in this process. Each path runs twice with different counts, and the
//!   difference divided by the difference of the counts is the cost of one, without
//!   start-up, logins and shutdown.
//! - **RSS per idle client**: pgsluice (natively) with 2,000 SCRAM clients logged in and idle.
//!
//! `cargo bench --bench cost` reports; `-- --check` also fails (exit 1) when an instruction
//! count is more than 10 % over its baseline or the RSS more than 25 %; `-- --update` writes
//! the measured values as the new baselines (commit them with the reason). Under `cargo test`
//! the harness runs each path once natively, a few transactions, to keep itself working.

mod client;
mod fake_pg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::Conn;

/// Instruction counts may grow this much over their baseline.
const INSTRUCTION_SLACK: f64 = 1.10;
/// RSS per idle client may grow this much over its baseline (RSS moves more).
const RSS_SLACK: f64 = 1.25;
/// Idle clients for the RSS gate.
const IDLE_CLIENTS: usize = 2000;
/// Tasks logging the idle clients in.
const LOGIN_TASKS: usize = 64;
/// Clients of the waiter path (pool of one).
const WAITERS: usize = 1000;

const BASELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/cost-baseline.txt");

/// A measured path: what one unit is, the two counts it runs with, and units per count.
#[derive(Clone, Copy)]
struct PathSpec {
    name: &'static str,
    unit: &'static str,
    counts: (usize, usize),
    units_per_count: usize,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Simple,
    Extended,
    Prepared,
    Login,
    Waiters,
    /// The exchange alone (`exchange::Sim`, no I/O): a simple and a prepared transaction.
    Exchange,
}

const PATHS: &[PathSpec] = &[
    PathSpec { name: "simple", unit: "transaction", counts: (200, 2200), units_per_count: 1, kind: Kind::Simple },
    PathSpec { name: "extended", unit: "transaction", counts: (200, 2200), units_per_count: 1, kind: Kind::Extended },
    PathSpec { name: "prepared", unit: "transaction", counts: (200, 2200), units_per_count: 1, kind: Kind::Prepared },
    PathSpec { name: "login", unit: "SCRAM login", counts: (10, 110), units_per_count: 1, kind: Kind::Login },
    // Rounds of all 1,000 clients sending one query each, over one server connection.
    PathSpec {
        name: "waiters_1000",
        unit: "transaction",
        counts: (1, 3),
        units_per_count: WAITERS,
        kind: Kind::Waiters,
    },
    // The pure core alone: a cost that a whole transaction hides among its system calls
    // shows here (an allocation per message is a large share of it).
    PathSpec {
        name: "exchange",
        unit: "simple + prepared transaction",
        counts: (1000, 11000),
        units_per_count: 1,
        kind: Kind::Exchange,
    },
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(n) = args.iter().position(|a| a == "--exchange-sim").and_then(|i| args.get(i + 1)?.parse().ok()) {
        exchange_sim(n);
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test`: the harness works (no valgrind, no numbers).
        smoke();
        return;
    }
    let check = args.iter().any(|a| a == "--check");
    let update = args.iter().any(|a| a == "--update");
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let started = Instant::now();
    let mut measured = BTreeMap::new();
    for p in PATHS.iter().filter(|p| only.is_empty() || only.iter().any(|o| o.as_str() == p.name)) {
        let per_unit = instructions_per_unit(p).unwrap_or_else(|e| fail(&format!("{}: {e}", p.name)));
        println!("{:>14}: {:>9.0} instructions per {}", p.name, per_unit, p.unit);
        measured.insert(p.name.to_string(), per_unit);
    }
    if only.is_empty() || only.iter().any(|o| o.as_str() == "rss") {
        let kib = rss_per_idle_client().unwrap_or_else(|e| fail(&format!("rss: {e}")));
        println!("{:>14}: {:>9.2} KiB RSS per idle client ({IDLE_CLIENTS} SCRAM clients)", "rss_idle_kib", kib);
        measured.insert("rss_idle_kib".to_string(), kib);
    }
    println!("(cost gates ran in {:.0} s)", started.elapsed().as_secs_f64());
    if update {
        write_baseline(&measured);
        println!("baselines written to {BASELINE}");
    }
    if check && !within_budget(&measured) {
        std::process::exit(1);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("cost gates: {msg}");
    std::process::exit(2);
}

/// Compares with the baselines; prints each and returns whether all are within budget.
fn within_budget(measured: &BTreeMap<String, f64>) -> bool {
    let base = read_baseline();
    let mut ok = true;
    for (name, &value) in measured {
        let Some(&b) = base.get(name) else {
            println!("{name}: no baseline (run with --update and commit it)");
            ok = false;
            continue;
        };
        let slack = if name.starts_with("rss") { RSS_SLACK } else { INSTRUCTION_SLACK };
        let limit = b * slack;
        let verdict = if value <= limit { "ok" } else { "OVER BUDGET" };
        println!(
            "{name}: {value:.2} against baseline {b:.2} (limit {limit:.2}, {:+.1} %): {verdict}",
            (value / b - 1.0) * 100.0
        );
        ok &= value <= limit;
    }
    ok
}

fn read_baseline() -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(BASELINE).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn write_baseline(measured: &BTreeMap<String, f64>) {
    let mut all = read_baseline();
    all.extend(measured.iter().map(|(k, v)| (k.clone(), *v)));
    let mut text = String::from(
        "# Cost baselines (benches/cost/main.rs, issue 21): instructions per unit under callgrind\n\
         # (pgsluice with one worker thread, fake server), and KiB of RSS per idle SCRAM client.\n\
         # Update on purpose with `cargo bench --bench cost -- --update`, in the commit that\n\
         # changes the cost, with the reason in its message.\n",
    );
    for (k, v) in &all {
        text.push_str(&format!("{k} {v:.2}\n"));
    }
    std::fs::write(BASELINE, text).expect("write baseline");
}

// === one pgsluice process ===

/// A pgsluice process (under callgrind or not) in front of the fake server.
struct Pooler {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Pooler {
    /// Starts pgsluice with `auth` (`trust` or `scram-sha-256`) and a pool of `pool_size`.
    fn start(auth: &str, pool_size: u32, callgrind: bool, fake_port: u16) -> Result<Pooler, String> {
        let dir = std::env::temp_dir().join(format!("pgsluice-cost-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let port = free_port();
        std::fs::write(dir.join("userlist.txt"), "\"bench\" \"bench\"\n").map_err(|e| e.to_string())?;
        let config = format!(
            "[general]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\nauth_type = \"{auth}\"\n\
             auth_file = \"userlist.txt\"\nworker_threads = 1\ndefault_pool_size = {pool_size}\n\
             max_client_conn = 10000\nlog_connections = false\nlog_disconnections = false\n\
             query_wait_timeout = \"600s\"\n\n[databases.bench]\nhosts = [\"127.0.0.1:{fake_port}\"]\n"
        );
        std::fs::write(dir.join("pgsluice.toml"), config).map_err(|e| e.to_string())?;
        let bin = env!("CARGO_BIN_EXE_pgsluice");
        let mut cmd = if callgrind {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", dir.join("callgrind.out").display()))
                .arg("--dump-instr=no")
                .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.arg("--config").arg(dir.join("pgsluice.toml")).env("RUST_LOG", "warn");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("start pgsluice{}: {e}", if callgrind { " under valgrind" } else { "" }))?;
        let p = Pooler { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("pgsluice did not listen: {}", p.stderr()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn rss_kib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops pgsluice (SIGINT: a graceful stop; every client is gone) and returns the
    /// instructions callgrind counted.
    fn stop(mut self) -> Result<u64, String> {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!("pgsluice did not stop: {}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = std::fs::read_to_string(self.dir.join("callgrind.out")).unwrap_or_default();
        let total = out
            .lines()
            .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        let _ = std::fs::remove_dir_all(&self.dir);
        total.ok_or_else(|| "no callgrind totals".to_string())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

// === paths ===

/// Runs `p` with `n` units against `port`.
async fn drive(p: &PathSpec, port: u16, n: usize) -> Result<(), String> {
    match p.kind {
        Kind::Exchange => exchange_sim(n),
        Kind::Simple | Kind::Extended | Kind::Prepared => {
            let mut c = Conn::login(port, "bench", "bench", "bench").await?;
            if p.kind == Kind::Prepared {
                c.prepare().await?;
            }
            for _ in 0..n {
                match p.kind {
                    Kind::Simple => c.simple().await?,
                    Kind::Extended => c.extended().await?,
                    _ => c.prepared().await?,
                }
            }
            c.terminate().await;
        }
        Kind::Login => {
            for _ in 0..n {
                Conn::login(port, "bench", "bench", "bench").await?.terminate().await;
            }
        }
        Kind::Waiters => {
            let mut conns = Vec::with_capacity(WAITERS);
            for _ in 0..WAITERS {
                conns.push(Conn::login(port, "bench", "bench", "bench").await?);
            }
            for _ in 0..n {
                for c in conns.iter_mut() {
                    c.send_simple().await?;
                }
                for c in conns.iter_mut() {
                    c.until_ready().await?;
                }
            }
            for c in conns {
                c.terminate().await;
            }
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn auth_of(p: &PathSpec) -> &'static str {
    if p.kind == Kind::Login {
        "scram-sha-256"
    } else {
        "trust"
    }
}

/// Instructions per unit of `p`: two callgrind runs, the difference over the difference of
/// the counts.
fn instructions_per_unit(p: &PathSpec) -> Result<f64, String> {
    if p.kind == Kind::Exchange {
        let mut totals = [0u64; 2];
        for (i, n) in [p.counts.0, p.counts.1].into_iter().enumerate() {
            totals[i] = callgrind_self(n)?;
        }
        return Ok((totals[1] as f64 - totals[0] as f64) / (p.counts.1 - p.counts.0) as f64);
    }
    let fake = fake_pg::start();
    let rt = runtime();
    let mut totals = [0u64; 2];
    for (i, n) in [p.counts.0, p.counts.1].into_iter().enumerate() {
        let pooler = Pooler::start(auth_of(p), 1, true, fake)?;
        rt.block_on(drive(p, pooler.port, n))?;
        totals[i] = pooler.stop()?;
    }
    Ok((totals[1] as f64 - totals[0] as f64) / ((p.counts.1 - p.counts.0) * p.units_per_count) as f64)
}

/// This harness under callgrind, driving the exchange `n` times (`--exchange-sim`).
fn callgrind_self(n: usize) -> Result<u64, String> {
    let dir = std::env::temp_dir().join(format!("pgsluice-cost-x-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = dir.join("callgrind.out");
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--dump-instr=no")
        .arg(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--exchange-sim")
        .arg(n.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("valgrind: {e}"))?;
    if !status.success() {
        return Err(format!("the exchange run failed: {status}"));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no callgrind totals".to_string())
}

/// `n` simple and `n` prepared select-only transactions through one exchange, as the relay
/// drives it (what `benches/codec.rs` times).
fn exchange_sim(n: usize) {
    use pgsluice::exchange::Sim;
    let msg = |tag: u8, body: &[u8]| {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    };
    let query = msg(b'Q', b"SELECT abalance FROM pgbench_accounts WHERE aid = 4242;\0");
    let mut resp = msg(b'T', b"\0\x01abalance\0\0\0\x40\x0c\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
    resp.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
    resp.extend(msg(b'C', b"SELECT 1\0"));
    let mut answer = msg(b'2', b"");
    answer.extend(&resp);
    answer.extend(msg(b'Z', b"I"));
    resp.extend(msg(b'Z', b"I"));
    let mut prepare = msg(b'P', b"P0_1\0SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0\0\0");
    prepare.extend(msg(b'S', b""));
    let mut request = msg(b'B', b"\0P0_1\0\0\x01\0\x01\0\0\0\x044242\0\x01\0\0");
    request.extend(msg(b'E', b"\0\0\0\0\0"));
    request.extend(msg(b'S', b""));
    let mut sim = Sim::default();
    sim.client(&prepare).expect("prepare");
    sim.drain(true, |_| {});
    sim.server(&[msg(b'1', b""), msg(b'Z', b"I")].concat()).expect("prepared");
    sim.drain(false, |_| {});
    for _ in 0..n {
        for (req, ans) in [(&query, &resp), (&request, &answer)] {
            sim.attach();
            sim.client(std::hint::black_box(req)).expect("client");
            sim.drain(true, |out| {
                std::hint::black_box(out);
            });
            sim.server(std::hint::black_box(ans)).expect("server");
            sim.drain(false, |out| {
                std::hint::black_box(out);
            });
            assert!(sim.releasable());
        }
    }
}

/// RSS per idle SCRAM client: pgsluice natively, before and with [`IDLE_CLIENTS`] clients.
fn rss_per_idle_client() -> Result<f64, String> {
    let fake = fake_pg::start();
    let pooler = Pooler::start("scram-sha-256", 20, false, fake)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // One client first: the pool and its server connection are not a per-client cost.
    let first = rt.block_on(Conn::login(pooler.port, "bench", "bench", "bench"))?;
    std::thread::sleep(Duration::from_millis(200));
    let before = pooler.rss_kib();
    let port = pooler.port;
    let conns = rt.block_on(async move {
        let mut tasks = Vec::new();
        // Many at a time (the client side's SCRAM work runs on both cores).
        for chunk in 0..LOGIN_TASKS {
            let n = IDLE_CLIENTS / LOGIN_TASKS + usize::from(chunk < IDLE_CLIENTS % LOGIN_TASKS);
            tasks.push(tokio::spawn(async move {
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(Conn::login(port, "bench", "bench", "bench").await?);
                }
                Ok::<_, String>(v)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(all)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let after = pooler.rss_kib();
    let per_client = (after - before) / conns.len() as f64;
    rt.block_on(async move {
        for c in conns {
            c.terminate().await;
        }
        first.terminate().await;
    });
    drop(rt);
    let _ = pooler.stop();
    Ok(per_client)
}

/// Each path once, natively, a few units: the harness and the fake server keep working.
fn smoke() {
    let fake = fake_pg::start();
    let rt = runtime();
    exchange_sim(3);
    println!("cost harness: exchange ok");
    for p in PATHS.iter().filter(|p| p.kind != Kind::Exchange) {
        let pooler = Pooler::start(auth_of(p), 1, false, fake).unwrap_or_else(|e| fail(&e));
        let n = if p.kind == Kind::Waiters { 1 } else { 3 };
        let p2 = PathSpec { counts: (n, n), ..*p };
        if p.kind == Kind::Waiters {
            // 1,000 logins are too many for a smoke run: a few waiters show the queue works.
            rt.block_on(smoke_waiters(pooler.port)).unwrap_or_else(|e| fail(&format!("{}: {e}", p.name)));
        } else {
            rt.block_on(drive(&p2, pooler.port, n)).unwrap_or_else(|e| fail(&format!("{}: {e}", p.name)));
        }
        let _ = pooler.stop();
        println!("cost harness: {} ok", p.name);
    }
    assert!(Path::new(BASELINE).exists(), "{BASELINE} is missing");
}

/// Twenty clients over a pool of one, two rounds.
async fn smoke_waiters(port: u16) -> Result<(), String> {
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(Conn::login(port, "bench", "bench", "bench").await?);
    }
    for _ in 0..2 {
        for c in conns.iter_mut() {
            c.send_simple().await?;
        }
        for c in conns.iter_mut() {
            c.until_ready().await?;
        }
    }
    for c in conns {
        c.terminate().await;
    }
    Ok(())
}
