//! The probe task of each host and the coordinator task of each database.
//!
//! A probe task keeps one connection to its host (opened through the host's circuit
//! breaker, re-opened after any failure), runs [`PROBE_SQL`] every `health_check_interval`
//! (5× as often while the database has no usable primary, and at once on request), and sends
//! each result to the coordinator. The coordinator is the single writer of the topology: it
//! updates the trackers, elects, records the primary's WAL positions, bumps drain epochs and
//! publishes each host's status.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::election::{self, Primary, Probe, Tracker};
use super::lag::{parse_lsn, History};
use super::{encode, Cluster, HostStatus, Role};
use crate::backend::{self, LoginParams, ServerConn};

/// One round trip: recovery state, WAL positions, replay pause and timeline. The primary's
/// position is its *insert* position (`pg_current_wal_lsn` is the write position, which with
/// `synchronous_commit = off` can be behind a commit already acknowledged): read-your-writes
/// relies on it covering every commit made before the probe started. The primary's
/// timeline is read from the name of its current WAL file (`pg_walfile_name` refuses to run
/// during recovery, hence the CASE); a replica's is its WAL receiver's (NULL unless the probe
/// user may read `pg_stat_wal_receiver`, e.g. as a member of `pg_monitor`).
pub const PROBE_SQL: &str = "SELECT r, \
CASE WHEN r THEN NULL ELSE pg_current_wal_insert_lsn() END, \
pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
CASE WHEN r THEN pg_is_wal_replay_paused() END, \
CASE WHEN r THEN (SELECT received_tli FROM pg_stat_wal_receiver) \
ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END \
FROM pg_is_in_recovery() AS r";

/// Shortest time between two scheduled probes of a host (the fast schedule while there is
/// no usable primary).
const MIN_GAP: Duration = crate::config::MIN_PROBE_GAP;

/// Shortest time between two probes of a host made on request (a read waiting for a
/// replica to replay a write, a read sent to the primary for that reason, a failed
/// connection): at most 100 requested probes per second and host, so a read's wait is
/// bounded by the replication lag plus about this, not by `health_check_interval`.
pub const REQUEST_GAP: Duration = Duration::from_millis(10);

/// Host, result, when the probe's query was about to be sent, and the SQLSTATE if the
/// server refused the probe's login for good (`pool::refusal_code`'s classes).
type Report = (usize, Result<Probe, String>, Instant, Option<Arc<str>>);

/// Probes host `i` until the cluster stops or the coordinator is gone.
pub(super) async fn run(cluster: Arc<Cluster>, i: usize, tx: UnboundedSender<Report>) {
    let mut conn: Option<ServerConn> = None;
    let signals = cluster.signals.clone();
    loop {
        if signals.stopped.load(Ordering::Acquire) {
            break;
        }
        let started = Instant::now();
        let requests = signals.reprobe_requests.load(Ordering::Acquire);
        let mut refused = None;
        let result = probe_once(&cluster, i, &mut conn, &mut refused).await;
        if tx.send((i, result, started, refused)).is_err() {
            break;
        }
        let s = &cluster.settings;
        let period = if signals.urgent.load(Ordering::Acquire) { (s.period / 5).max(MIN_GAP) } else { s.period };
        // Every host of the database on the same ticks: the primary's position and the
        // replicas' replay positions come from the same moment.
        let next = next_tick(cluster.created, started, period);
        let reprobe = signals.reprobe.notified();
        tokio::pin!(reprobe);
        reprobe.as_mut().enable();
        if signals.reprobe_requests.load(Ordering::Acquire) != requests {
            // Asked while this probe ran: its answer may predate the reason.
            tokio::time::sleep_until(started + REQUEST_GAP).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = reprobe => tokio::time::sleep_until(started + REQUEST_GAP).await,
            _ = signals.stop.notified() => break,
        }
    }
    if let Some(c) = conn {
        c.terminate().await;
    }
}

/// The first multiple of `period` after `base` that is later than `after`.
fn next_tick(base: Instant, after: Instant, period: Duration) -> Instant {
    let period_ns = period.as_nanos().max(1);
    let elapsed = after.saturating_duration_since(base).as_nanos();
    let ticks = elapsed / period_ns + 1;
    base + Duration::from_nanos((ticks * period_ns).min(u128::from(u64::MAX)) as u64)
}

/// One probe of host `i`, connecting first if needed.
async fn probe_once(
    cluster: &Cluster,
    i: usize,
    conn: &mut Option<ServerConn>,
    refused: &mut Option<Arc<str>>,
) -> Result<Probe, String> {
    let host = &cluster.hosts[i];
    let s = &cluster.settings;
    if conn.is_none() {
        if let Err(wait) = host.breaker.try_acquire() {
            return Err(format!("circuit breaker open (next attempt in {} ms)", wait.as_millis()));
        }
        let cred = cluster.probe_cred.lock().clone();
        if cred.secret.is_none() && cred.keys.is_none() {
            host.breaker.abandon();
            return Err(format!(
                "no password for health_check_user {:?}: set health_check_password, or log in once as that user with SCRAM",
                cluster.probe_user.as_deref().unwrap_or_default()
            ));
        }
        let login = LoginParams {
            user: cluster.probe_user.as_deref().unwrap_or_default(),
            database: &cluster.dbname,
            application_name: "pgsluice health check",
            keepalive: s.keepalive,
            tls: &cluster.probe_tls,
            auth: cluster.probe_auth,
        };
        match ServerConn::connect(&host.addr, &login, &cred, s.timeout).await {
            Ok(c) => {
                host.breaker.success();
                *conn = Some(c);
            }
            Err(e) => {
                if host_unreachable(&e) {
                    host.breaker.failure();
                } else {
                    // Reachable, but it refused us (password, database): not the breaker's
                    // business, and not a healthy probe either.
                    host.breaker.success();
                    *refused = match &e {
                        backend::Error::Server { code, .. } if super::refusal_code(code) => Some(code.as_str().into()),
                        backend::Error::Auth(_) => Some("28000".into()),
                        // (TLS that cannot be set up as configured is as final.)
                        backend::Error::Tls(_) => Some("08006".into()),
                        _ => None,
                    };
                }
                return Err(e.to_string());
            }
        }
    }
    let c = conn.as_mut().ok_or("no probe connection")?;
    host.probes.fetch_add(1, Ordering::Relaxed);
    let res = match tokio::time::timeout(s.timeout, c.query_row(PROBE_SQL)).await {
        Ok(Ok(row)) => parse_probe(&row),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", s.timeout)),
    };
    if res.is_err() {
        *conn = None;
    }
    res
}

/// Whether a connection error says the host itself is unavailable (what counts for the
/// circuit breaker): no TCP connection, a timeout, a lost connection, or a server not
/// accepting connections yet (`57P03`: starting up, shutting down, in crash recovery).
pub fn host_unreachable(e: &backend::Error) -> bool {
    match e {
        backend::Error::Server { code, .. } => code == "57P03",
        backend::Error::Auth(_) | backend::Error::Tls(_) => false,
        _ => true,
    }
}

fn parse_probe(row: &[Option<String>]) -> Result<Probe, String> {
    let get = |i: usize| row.get(i).and_then(|v| v.as_deref());
    let in_recovery = match get(0) {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("unexpected probe answer {other:?}")),
    };
    Ok(Probe {
        in_recovery,
        current_lsn: get(1).and_then(parse_lsn).map(super::lag::record_boundary),
        receive_lsn: get(2).and_then(parse_lsn),
        replay_lsn: get(3).and_then(parse_lsn),
        replay_paused: get(4) == Some("t"),
        timeline: get(5).and_then(|t| t.parse().ok()),
    })
}

/// The coordinator: the only writer of the cluster's topology state.
pub(super) async fn coordinate(cluster: Arc<Cluster>, mut rx: UnboundedReceiver<Report>) {
    let rules = cluster.settings.rules;
    let mut hosts: Vec<Tracker> =
        cluster.hosts.iter().map(|h| Tracker { hint: h.hint, ..Tracker::default() }).collect();
    let mut history = History::default();
    let mut current = Primary::None;
    // The last host elected (kept while there is none): a failover is a *different* host.
    let mut last_elected: Option<usize> = None;
    // The highest timeline a primary was elected on: hosts behind it are old primaries.
    let mut floor: Option<u32> = None;
    let mut fenced = vec![false; hosts.len()];
    loop {
        let (i, result, started, refused) = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = cluster.signals.stop.notified() => return,
        };
        let now = Instant::now();
        let up_changed = hosts[i].observe(result, &rules);
        hosts[i].refused = refused;
        let host = &cluster.hosts[i];
        if up_changed {
            if hosts[i].up {
                tracing::info!(db = %cluster.name, host = %host.addr, "host is up");
            } else {
                tracing::warn!(db = %cluster.name, host = %host.addr, error = ?hosts[i].last_error, "host is down");
                host.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        let next = election::elect(&hosts, current, floor);
        if next != current {
            announce(&cluster, current, next, last_elected);
            if let Primary::Host(old) = current {
                cluster.hosts[old].epoch.fetch_add(1, Ordering::AcqRel);
            }
            if let Primary::Host(new) = next {
                if last_elected.is_some_and(|l| l != new) {
                    cluster.failovers.fetch_add(1, Ordering::Relaxed);
                    history.clear();
                }
                last_elected = Some(new);
            }
            current = next;
            cluster.clear_primary_lsn();
            cluster.primary.store(encode(next), Ordering::Release);
            cluster.signals.changed.notify_waiters();
        }
        if current == Primary::Host(i) {
            if let Some(lsn) = hosts[i].last.as_ref().and_then(|p| p.current_lsn) {
                // (When the probe was sent: the position read is at least what the primary
                // had then, so a replica's lag is over-estimated by a round trip at most.)
                history.record(started, lsn);
                cluster.publish_primary_lsn(lsn, started);
            }
            if let Some(tl) = hosts[i].last.as_ref().and_then(|p| p.timeline) {
                floor = floor.max(Some(tl));
            }
        }
        for (j, was) in fenced.iter_mut().enumerate() {
            let is = election::fenced(&hosts, current, floor, j);
            if is && !*was {
                cluster.hosts[j].epoch.fetch_add(1, Ordering::AcqRel);
            }
            if is && j == i {
                tracing::error!(
                    db = %cluster.name,
                    host = %cluster.hosts[j].addr,
                    timeline = ?hosts[j].last.as_ref().and_then(|p| p.timeline),
                    "host accepts writes but is not the primary: fenced, it gets no traffic (demote or stop it)"
                );
            }
            *was = is;
        }
        let primary_ok = matches!(current, Primary::Host(p) if hosts[p].reachable);
        if !cluster.signals.urgent.swap(!primary_ok, Ordering::AcqRel) && !primary_ok {
            // Sleeping probes would see the faster period only after their next probe.
            cluster.signals.request_probe();
        }
        for (j, h) in cluster.hosts.iter().enumerate() {
            h.status.store(Arc::new(status_of(&hosts, &history, &rules, current, j, now, fenced[j])));
        }
    }
}

fn announce(cluster: &Cluster, from: Primary, to: Primary, last_elected: Option<usize>) {
    let addr = |p: Primary| match p {
        Primary::Host(i) => cluster.hosts[i].addr.to_string(),
        Primary::None => "none".into(),
        Primary::SplitBrain => "none (split brain)".into(),
    };
    match to {
        Primary::Host(i) if last_elected.is_none_or(|l| l == i) => {
            tracing::info!(db = %cluster.name, primary = %addr(to), "primary found")
        }
        Primary::Host(_) => {
            tracing::warn!(db = %cluster.name, old = %addr(from), new = %addr(to), "primary changed (failover)")
        }
        Primary::None => tracing::warn!(db = %cluster.name, old = %addr(from), "no primary: writes wait for one"),
        Primary::SplitBrain => tracing::error!(
            db = %cluster.name,
            "split brain: several hosts accept writes and their timelines do not tell which is the primary; writes are refused"
        ),
    }
}

fn status_of(
    hosts: &[Tracker],
    history: &History,
    rules: &election::Rules,
    primary: Primary,
    j: usize,
    now: Instant,
    fenced: bool,
) -> HostStatus {
    let t = &hosts[j];
    let role = if primary == Primary::Host(j) {
        Role::Primary
    } else if t.in_recovery() || (!t.reachable && t.up && t.last.as_ref().is_some_and(|p| p.in_recovery)) {
        Role::Replica
    } else {
        Role::Unknown
    };
    let last = t.last.as_ref();
    HostStatus {
        role,
        up: t.up,
        seen: t.seen,
        fenced,
        eligible: !fenced && election::eligible(hosts, history, rules, primary, j, now),
        in_recovery: last.filter(|_| t.reachable).map(|p| p.in_recovery),
        replay_paused: last.is_some_and(|p| p.replay_paused),
        lag: election::lag(hosts, history, j, now),
        timeline: last.and_then(|p| p.timeline),
        lsn: last.and_then(|p| if p.in_recovery { p.replay_lsn } else { p.current_lsn }),
        last_probe: t.last_probe,
        last_error: t.last_error.clone(),
        refused: t.refused.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|x| x.map(str::to_string)).collect()
    }

    #[test]
    fn ticks_are_shared_multiples_of_the_period() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_tick(base, base, ms(250)), base + ms(250));
        assert_eq!(next_tick(base, base + ms(10), ms(250)), base + ms(250));
        assert_eq!(next_tick(base, base + ms(250), ms(250)), base + ms(500));
        assert_eq!(next_tick(base, base + ms(1_100), ms(250)), base + ms(1_250));
    }

    #[test]
    fn parses_primary_and_replica_rows() {
        let p = parse_probe(&row(&[Some("f"), Some("0/3000060"), None, None, None, Some("2")])).unwrap();
        assert_eq!(
            p,
            Probe { in_recovery: false, current_lsn: Some(0x3000060), timeline: Some(2), ..Probe::default() }
        );
        let r = parse_probe(&row(&[Some("t"), None, Some("0/5"), Some("0/4"), Some("t"), None])).unwrap();
        assert!(r.in_recovery && r.replay_paused);
        assert_eq!((r.receive_lsn, r.replay_lsn, r.timeline), (Some(5), Some(4), None));
        assert!(parse_probe(&row(&[])).is_err());
        assert!(parse_probe(&row(&[Some("maybe")])).is_err());
    }
}
