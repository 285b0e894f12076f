//! `GET /metrics`: the Prometheus text format 0.0.4 or OpenMetrics 1.0, as the scraper's
//! `Accept` asks, built per scrape from the store and the request counters.
//!
//! Label cardinality is bounded by the config: per (slave, target, flow) series one sample of
//! each series metric (and one `dt_path_info` with the current path ID, and with an AS table
//! one `dt_as_path_info` with its AS path), per slave one of each
//! slave metric, per route class (`config`, `results`, `batch`, `api`, `metrics`, `other`) one
//! histogram. Nothing is labelled with a remote address, a result ID or a hop address.

use super::routes::{App, Counters};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Route classes for the request-duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// `config`, `results`, `batch`, `jobs`, `api`, `metrics` or `other`.
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabel {
    slave: String,
    target: String,
    target_id: String,
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    slave: String,
    target: String,
    target_id: String,
    flow: String,
    path_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AsPathLabel {
    slave: String,
    target: String,
    target_id: String,
    flow: String,
    /// The AS numbers in order, space-separated.
    as_path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlaveLabel {
    slave: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

fn new_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Metrics that live across scrapes.
#[derive(Clone)]
pub struct Metrics {
    durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            durations: Family::new_with_constructor(new_histogram),
        }
    }
}

impl Metrics {
    /// Records how long a request to `route` took.
    pub fn observe(&self, route: &'static str, took: Duration) {
        self.durations
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }
}

/// The route class of a path, for the histogram.
pub fn route_class(path: &str) -> &'static str {
    if path.starts_with("/config") {
        "config"
    } else if path.starts_with("/results") || path == "/api/v1/results" {
        "results"
    } else if path == "/api/v1/results:batch" {
        "batch"
    } else if path == "/api/v1/jobs" {
        // Held up to 25 s for a job: a class of its own, or the API's latencies would be
        // the polls' waits.
        "jobs"
    } else if path.starts_with("/api/") {
        "api"
    } else if path == "/metrics" {
        "metrics"
    } else {
        "other"
    }
}

fn counter(reg: &mut Registry, name: &str, help: &str, value: &AtomicU64) {
    let c = Counter::<u64>::default();
    c.inc_by(value.load(Ordering::Relaxed));
    reg.register(name, help, c);
}

type FGauge = Gauge<f64, AtomicU64>;

/// The two exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain`), the default.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics when it ranks
    /// `application/openmetrics-text` above `text/plain` (by `q`, then by order), else the
    /// 0.0.4 text format, which is also the answer to no header and to `*/*`.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for item in accept.unwrap_or("").split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let format = match media.as_str() {
                "application/openmetrics-text" => Format::OpenMetrics,
                "text/plain" => Format::Text,
                _ => continue,
            };
            let q = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Text, |(_, f)| f)
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The exposition text in `format`.
pub fn render(app: &App, format: Format, only: Option<&[String]>) -> anyhow::Result<String> {
    let only: Option<std::collections::HashSet<&str>> =
        only.map(|names| names.iter().map(String::as_str).collect());
    let shown = |slave: &str| only.as_ref().is_none_or(|names| names.contains(slave));
    let mut reg = Registry::default();
    let c: &Counters = &app.counters;
    counter(
        &mut reg,
        "dt_results_received",
        "Results received on any endpoint",
        &c.results_received,
    );
    counter(
        &mut reg,
        "dt_results_stored",
        "Results stored (new IDs)",
        &c.results_stored,
    );
    counter(
        &mut reg,
        "dt_results_debug",
        "Results stored that a slave made up with -zDebugResults (also in dt_results_stored)",
        &c.results_debug,
    );
    counter(
        &mut reg,
        "dt_results_duplicate",
        "Results whose ID was stored before",
        &c.results_duplicate,
    );
    let rejected = Family::<ReasonLabel, Counter>::default();
    for (reason, v) in [
        ("decode", &c.rejected_decode),
        ("invalid", &c.rejected_invalid),
        ("storage", &c.store_errors),
    ] {
        rejected
            .get_or_create(&ReasonLabel { reason })
            .inc_by(v.load(Ordering::Relaxed));
    }
    reg.register(
        "dt_results_rejected",
        "Results not stored, by reason",
        rejected,
    );
    counter(
        &mut reg,
        "dt_auth_failures",
        "Requests with a wrong slave name or password",
        &c.auth_failures,
    );
    counter(
        &mut reg,
        "dt_auth_throttled",
        "Login attempts answered 429 while blocked",
        &c.auth_throttled,
    );
    counter(
        &mut reg,
        "dt_configs_served",
        "Targets documents served to slaves",
        &c.configs_served,
    );
    reg.register(
        "dt_http_request_duration_seconds",
        "Time to handle a request (body read to response), by route class",
        app.metrics.durations.clone(),
    );

    let polls = FGauge::default();
    polls.set(app.measure.waiting_slaves().len() as f64);
    reg.register(
        "dt_job_polls_waiting",
        "Slaves holding a job poll on this master now (connected for on-demand measurements)",
        polls,
    );

    let storage = FGauge::default();
    storage.set(app.store.storage_bytes()? as f64);
    reg.register(
        "dt_storage_bytes",
        "Size of the database file (without the WAL)",
        storage,
    );

    let reachable = Family::<SeriesLabel, FGauge>::default();
    let hops = Family::<SeriesLabel, FGauge>::default();
    let rtt = Family::<SeriesLabel, FGauge>::default();
    let changes = Family::<SeriesLabel, Counter>::default();
    let info = Family::<PathLabel, FGauge>::default();
    let as_info = Family::<AsPathLabel, FGauge>::default();
    let owners = app.owners.enabled().then(|| app.owners.get());
    for s in app.store.series(&Default::default())? {
        if !shown(&s.slave) {
            continue;
        }
        let l = SeriesLabel {
            slave: s.slave.clone(),
            target: s.target_name.clone(),
            target_id: s.target_id.clone(),
            flow: s.flow.to_string(),
        };
        let reached = s.last_success.unwrap_or(false);
        reachable
            .get_or_create(&l)
            .set(if reached { 1.0 } else { 0.0 });
        hops.get_or_create(&l)
            .set(s.current_hops.unwrap_or(0) as f64);
        if reached && let Some(ns) = s.last_rtt_ns {
            rtt.get_or_create(&l).set(ns as f64 / 1e9);
        }
        changes
            .get_or_create(&l)
            .inc_by(s.changes_total.max(0) as u64);
        if let (Some(db), Some((_, text))) = (&owners, &s.current_path)
            && let Some(path) = super::path::Path::parse_canonical(text)
        {
            let asns = super::analysis::as_numbers(&super::owners::as_hops(db, &path.hops));
            if !asns.is_empty() {
                let as_path = asns
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                as_info
                    .get_or_create(&AsPathLabel {
                        slave: s.slave.clone(),
                        target: s.target_name.clone(),
                        target_id: s.target_id.clone(),
                        flow: l.flow.clone(),
                        as_path,
                    })
                    .set(1.0);
            }
        }
        if let Some((path_id, _)) = s.current_path {
            info.get_or_create(&PathLabel {
                slave: s.slave,
                target: s.target_name,
                target_id: s.target_id,
                flow: l.flow.clone(),
                path_id,
            })
            .set(1.0);
        }
    }
    reg.register(
        "dt_target_reachable",
        "1 when the newest result reached the destination",
        reachable,
    );
    reg.register(
        "dt_path_hops",
        "Hops of the current path (to the last that answered)",
        hops,
    );
    reg.register(
        "dt_destination_rtt_seconds",
        "Destination RTT of the newest result that reached it",
        rtt,
    );
    reg.register("dt_path_changes", "Confirmed path changes", changes);
    reg.register(
        "dt_path_info",
        "The current path ID of each series (always 1)",
        info,
    );
    if owners.is_some() {
        reg.register(
            "dt_as_path_info",
            "The AS path of each series' current path, from the master's AS table (always 1)",
            as_info,
        );
    }

    let seen = Family::<SlaveLabel, FGauge>::default();
    let spool = Family::<SlaveLabel, FGauge>::default();
    let dropped = Family::<SlaveLabel, Counter>::default();
    let skew = Family::<SlaveLabel, FGauge>::default();
    for v in super::api::slave_views(app)? {
        if !shown(&v.name) {
            continue;
        }
        let l = SlaveLabel {
            slave: v.name.clone(),
        };
        if let Some(last) = v.last_seen.max(v.last_config) {
            seen.get_or_create(&l).set(last as f64 / 1000.0);
        }
        if let Some(d) = v.spool_depth {
            spool.get_or_create(&l).set(d as f64);
        }
        dropped
            .get_or_create(&l)
            .inc_by(v.dropped_total.max(0) as u64);
        if let Some(ms) = v.clock_skew_ms {
            skew.get_or_create(&l).set(ms as f64 / 1000.0);
        }
    }
    reg.register(
        "dt_slave_last_seen_timestamp_seconds",
        "When the master last heard from the slave (Unix time)",
        seen,
    );
    reg.register(
        "dt_slave_spool_depth",
        "Results waiting in the slave's spool, as it reported",
        spool,
    );
    reg.register(
        "dt_slave_dropped_results",
        "Results the slave dropped (spool full), as it reported",
        dropped,
    );
    reg.register(
        "dt_slave_clock_skew_seconds",
        "The slave's clock minus the master's (positive: ahead), from its newest result",
        skew,
    );

    let mut out = String::new();
    match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &reg)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Format::{self, OpenMetrics, Text};

    #[test]
    fn accept_chooses_the_format() {
        let cases: [(Option<&str>, Format); 9] = [
            (None, Text),
            (Some("*/*"), Text),
            (Some("text/plain;version=0.0.4"), Text),
            (
                Some("application/openmetrics-text; version=1.0.0"),
                OpenMetrics,
            ),
            // What Prometheus 2.x sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // A scraper that asks for the text format first.
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
                Text,
            ),
            (Some("application/openmetrics-text;q=0, text/plain"), Text),
            (Some("application/json"), Text),
            (Some("APPLICATION/OpenMetrics-Text"), OpenMetrics),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
