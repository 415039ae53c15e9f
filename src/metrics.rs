//! The Prometheus endpoint: `GET /metrics` in the text exposition format 0.0.4.
//!
//! A scrape reads the pooler's existing state and turns it into metric families built with
//! `prometheus::proto`, encoded by `prometheus::TextEncoder`. There is no metrics registry
//! and no second set of counters: the relay keeps counting into the atomics the admin
//! console already reads ([`crate::stats`], the route counters, the breakers), and the
//! endpoint samples them when asked.
//!
//! - `pgbouncer`: the families prometheus-community/pgbouncer_exporter (v0.11+) builds from
//!   `SHOW LISTS`, `CONFIG`, `CLIENTS`, `DATABASES`, `POOLS` and `STATS_TOTALS`, with its names,
//!   labels and unit conversions, so its Grafana dashboards work unchanged. The v0.10 names
//!   of the `SHOW STATS` counters are emitted too, for older dashboards.
//! - `sluice`: pgsluice's own `pgsluice_*` families: host health and roles, failovers,
//!   routing decisions, the transaction, query and check-out wait latency histograms,
//!   pinned clients and login counters.
//! - `http`: the hyper server ([`serve`]).
//!
//! Invariants:
//! - Every value is computed by the same code as the matching admin console column
//!   ([`crate::admin::show`]), so a scrape and a `SHOW` taken at the same moment agree.
//! - A scrape only copies out of short critical sections (the same ones `SHOW` uses); it
//!   never holds a lock across an `.await` (rendering is synchronous) and never blocks clients.
//! - Within a family every label set is unique (a duplicate makes Prometheus reject the
//!   whole scrape). Keys of the maps the values come from guarantee it; the admin console's
//!   own row cannot collide with a database because the config forbids a database named
//!   like `admin_database`.
//! - Families without a series are left out (the text format has no empty families).
//!   Metric names and help texts are `&'static str`; nothing is formatted to name a metric.
//! - Every family is declared once, as a `Spec` constant listed by its module's `specs()`;
//!   [`family_names`] is their union (docs/metrics.md and docs/grafana-dashboard.json are
//!   checked against it).

mod http;
mod pgbouncer;
mod sluice;
#[cfg(test)]
mod tests;

use prometheus::proto::{self, MetricFamily, MetricType};

use crate::admin::show;
use crate::shared::Shared;
use crate::stats::{HistogramSnapshot, LATENCY_BUCKETS_US};

pub use http::{serve, serve_on};

/// `Content-Type` of a scrape response (text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Path of the endpoint; every other path is a 404.
pub const PATH: &str = "/metrics";

/// The text exposition of every metric family, as `GET /metrics` returns it.
pub fn render(shared: &Shared) -> String {
    let families = gather(shared);
    let mut out = String::with_capacity(16 * 1024);
    // Fails only on a family without series or name, which `Families::push` never keeps.
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

/// Every metric family, sampled now (PgBouncer-compatible families first, then pgsluice's).
pub fn gather(shared: &Shared) -> Vec<MetricFamily> {
    let mut out = Families::default();
    // One look at the pools (`SHOW POOLS`' rows) for the exporter's pool gauges and
    // pgsluice's pinned-client gauge, so they agree with each other.
    let pools = show::pool_rows(shared);
    pgbouncer::collect(shared, &pools, &mut out);
    sluice::collect(shared, &pools, &mut out);
    out.0
}

/// The name of every metric family a scrape can have, in output order (a family without a
/// series at the moment, e.g. replication lag before the first probe, is left out of the
/// scrape but listed here).
pub fn family_names() -> Vec<&'static str> {
    pgbouncer::specs().chain(sluice::specs()).map(|s| s.name).collect()
}

/// Kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonically increasing total (resets only when the process or pool does).
    Counter,
    /// Cumulative buckets, sum and count.
    Histogram,
}

/// The fixed part of a metric family: name, help, type and label names.
#[derive(Debug)]
struct Spec {
    /// Full metric name.
    name: &'static str,
    /// `# HELP` text.
    help: &'static str,
    /// Type.
    kind: Kind,
    /// Label names, in the order values are given.
    labels: &'static [&'static str],
}

impl Spec {
    /// A gauge.
    const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
        Spec { name, help, kind: Kind::Gauge, labels }
    }

    /// A counter.
    const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
        Spec { name, help, kind: Kind::Counter, labels }
    }

    /// A histogram.
    const fn histogram(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
        Spec { name, help, kind: Kind::Histogram, labels }
    }
}

// === impl Family ===

/// The series of one family being sampled.
struct Family {
    spec: &'static Spec,
    metrics: Vec<proto::Metric>,
}

impl Family {
    /// An empty family.
    fn new(spec: &'static Spec) -> Family {
        Family { spec, metrics: Vec::new() }
    }

    /// Adds a gauge or counter series; `labels` are the values of `spec.labels`, in order.
    fn add(&mut self, labels: &[&str], value: f64) {
        let mut m = self.series(labels);
        match self.spec.kind {
            Kind::Gauge => {
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            Kind::Counter => {
                let mut c = proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            Kind::Histogram => unreachable!("{}: a histogram takes add_histogram", self.spec.name),
        }
        self.metrics.push(m);
    }

    /// Adds a histogram series of microsecond observations, in seconds.
    fn add_histogram(&mut self, labels: &[&str], h: &HistogramSnapshot) {
        debug_assert_eq!(self.spec.kind, Kind::Histogram, "{}", self.spec.name);
        let mut m = self.series(labels);
        let mut hist = proto::Histogram::default();
        // `+Inf` (the last cumulative count) is written by the encoder from the count.
        let buckets = LATENCY_BUCKETS_US
            .iter()
            .enumerate()
            .map(|(i, &le)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(le as f64 / 1e6);
                b.set_cumulative_count(h.cumulative.get(i).copied().unwrap_or(0));
                b
            })
            .collect();
        hist.set_bucket(buckets);
        hist.set_sample_count(h.count());
        hist.set_sample_sum(h.sum_us as f64 / 1e6);
        m.set_histogram(hist);
        self.metrics.push(m);
    }

    fn series(&self, labels: &[&str]) -> proto::Metric {
        debug_assert_eq!(labels.len(), self.spec.labels.len(), "label values of {}", self.spec.name);
        let pairs = self
            .spec
            .labels
            .iter()
            .zip(labels)
            .map(|(n, v)| {
                let mut p = proto::LabelPair::default();
                p.set_name(n.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect();
        proto::Metric::from_label(pairs)
    }
}

/// The families of one scrape, in output order.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    /// Appends `f`, unless it has no series.
    fn push(&mut self, f: Family) {
        if f.metrics.is_empty() {
            return;
        }
        let mut mf = MetricFamily::default();
        mf.set_name(f.spec.name.to_string());
        mf.set_help(f.spec.help.to_string());
        mf.set_field_type(match f.spec.kind {
            Kind::Gauge => MetricType::GAUGE,
            Kind::Counter => MetricType::COUNTER,
            Kind::Histogram => MetricType::HISTOGRAM,
        });
        mf.set_metric(f.metrics);
        self.0.push(mf);
    }

    /// A family with a single unlabelled series.
    fn single(&mut self, spec: &'static Spec, value: f64) {
        let mut f = Family::new(spec);
        f.add(&[], value);
        self.push(f);
    }
}
