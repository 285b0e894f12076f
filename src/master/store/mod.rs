//! The master's storage: the only place that speaks SQL. Handlers, the API, exports, metrics
//! and retention see the [`Store`] trait and the plain types here; each database engine is one
//! implementation of it: [`sqlite`] (one file, one master) and [`postgres`] (one database,
//! any number of masters).

pub mod codec;
pub mod graph;
mod ingest;
mod measurements;
pub mod postgres;
mod query;
mod retention;
mod schema;
pub mod sqlite;

use super::analysis::Event;
use super::path::Path as NetPath;
use serde::Serialize;
use std::sync::Arc;

pub use retention::spawn_retention;

/// How far ahead of the master's clock a result may be dated and still be ordered by its
/// own time; a result dated later is ordered by when it arrived.
pub const AHEAD_ALLOWANCE_MS: i64 = 30_000;

/// One hop of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewHop {
    /// TTL.
    pub ttl: i64,
    /// Address as text.
    pub address: String,
    /// Reverse name or "".
    pub host: String,
    /// RTT in ns.
    pub rtt_ns: i64,
    /// Reply size.
    pub size: i64,
    /// Reply kind, when the slave said.
    pub kind: Option<String>,
    /// TTL of the reply packet, when the slave said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_ttl: Option<i64>,
    /// Per-probe RTTs in ns (null = lost), when the slave sent them.
    pub replies: Option<Vec<Option<i64>>>,
    /// The MPLS label stack the hop's reply reported (RFC 4950), top first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mpls: Option<Vec<crate::trace::wire::mpls::Label>>,
}

/// A checked result ready to store.
#[derive(Debug, Clone)]
pub struct NewResult {
    /// The result's UUID.
    pub result_id: String,
    /// Slave name.
    pub slave: String,
    /// Target UUID, "" when the master does not know it.
    pub target_uuid: String,
    /// Target name.
    pub target_name: String,
    /// Target address.
    pub target_address: String,
    /// True when the target is in the current config.
    pub target_known: bool,
    /// False when the config does not select the slave for this target (`Slaves`).
    pub target_selected: bool,
    /// Measurement time, Unix ms.
    pub measured_at: i64,
    /// The slave's RFC 3339 text.
    pub date_time: String,
    /// Destination answered.
    pub success: bool,
    /// The slave's hop count.
    pub hop_count: i64,
    /// The path this result took.
    pub path: NetPath,
    /// Probe protocol.
    pub protocol: Option<String>,
    /// Flow number.
    pub flow: Option<i64>,
    /// Resolved destination.
    pub destination: Option<String>,
    /// Unreachable annotation.
    pub unreachable: Option<String>,
    /// Why the trace could not run.
    pub error: Option<String>,
    /// Sending program.
    pub agent: Option<String>,
    /// How long the trace took, ns.
    pub duration_ns: Option<i64>,
    /// The target's destination-RTT alert threshold, ns.
    pub rtt_alert_ns: Option<i64>,
    /// Where it was measured from, and whether it is real.
    pub origin: Origin,
    /// Answering hops.
    pub hops: Vec<NewHop>,
    /// A multipath result's graph.
    pub multipath: Option<graph::Graph>,
    /// Its AS path for the AS-path change detection, when the master has an AS table.
    pub as_hops: Option<crate::master::analysis::AsHops>,
}

/// Where a result came from: the probes' source address as the slave reported it, the
/// address the master saw the result come from, and whether the slave made it up
/// (`-zDebugResults`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The local address the probes left from, as the slave reported it.
    #[serde(rename = "src_addr")]
    pub source: Option<String>,
    /// The address the master received the result from (behind a trusted proxy, the
    /// client's address it forwarded).
    #[serde(rename = "from_addr")]
    pub seen_from: Option<String>,
    /// A fake result of a slave run with `-zDebugResults`: not a measurement.
    pub debug: bool,
    /// The on-demand measurement it belongs to (its series is fed to no change detection);
    /// absent from the JSON of a scheduled result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
}

impl NewResult {
    /// The destination's RTT: the hop that reached it, when the trace did.
    pub fn destination_rtt_ns(&self) -> Option<i64> {
        destination_rtt_ns(self.success, &self.hops)
    }
}

/// The destination's RTT of a result: the hop that reached it, when the trace did.
pub fn destination_rtt_ns(success: bool, hops: &[NewHop]) -> Option<i64> {
    if !success {
        return None;
    }
    let reached = hops.iter().find(|h| h.kind.as_deref() == Some("reached"));
    reached
        .or_else(|| hops.iter().max_by_key(|h| h.ttl))
        .map(|h| h.rtt_ns)
}

/// An event recorded while storing a result, with what an alert needs to say.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Row id.
    pub id: i64,
    /// When it happened (the result's time), Unix ms.
    pub at: i64,
    /// Slave name.
    pub slave: String,
    /// Target UUID.
    pub target_id: String,
    /// Target name.
    pub target_name: String,
    /// Flow number.
    pub flow: i64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// Old path as text, for path changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// New path as text, for path changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// What storing a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now, with this row id.
    New(i64),
    /// A result with this ID was stored before; nothing changed.
    Duplicate,
}

/// What storing one result gave: its fate and the events it caused.
pub type Outcome = (Stored, Vec<EventRecord>);

/// A submission on its way to disk: resolves once its transaction is durable.
pub struct Ticket(tokio::sync::oneshot::Receiver<Result<Vec<Outcome>, String>>);

impl Ticket {
    /// Waits (blocking the thread) until the results are durable.
    pub fn wait(self) -> anyhow::Result<Vec<Outcome>> {
        match self.0.blocking_recv() {
            Ok(r) => r.map_err(anyhow::Error::msg),
            Err(_) => anyhow::bail!("the store's writer stopped"),
        }
    }

    /// Waits without blocking a thread (for the connection layer).
    pub async fn done(self) -> anyhow::Result<Vec<Outcome>> {
        match self.0.await {
            Ok(r) => r.map_err(anyhow::Error::msg),
            Err(_) => anyhow::bail!("the store's writer stopped"),
        }
    }

    fn channel() -> (
        tokio::sync::oneshot::Sender<Result<Vec<Outcome>, String>>,
        Ticket,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (tx, Ticket(rx))
    }
}

/// Filters of the results query.
#[derive(Debug, Clone, Default)]
pub struct ResultQuery {
    /// Slave name.
    pub slave: Option<String>,
    /// One of these slaves (a tag's); an empty list matches none.
    pub slaves: Option<Vec<String>>,
    /// Target UUID or name.
    pub target: Option<String>,
    /// Ordered at or after, Unix ms.
    pub from: Option<i64>,
    /// Ordered at or before, Unix ms.
    pub to: Option<i64>,
    /// Only results older than this cursor of a previous page.
    pub before: Option<Cursor>,
    /// Only results down to this cursor, its own result included: a walk over many pages
    /// ends where a cursor handed out beforehand says, whatever arrives meanwhile.
    pub until: Option<Cursor>,
    /// Skip this many matching results first (with `limit: 1`: where the n-th result is,
    /// without unpacking the ones before it).
    pub offset: u32,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Where a page of results ended: the next page starts below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    /// The text the API hands out.
    pub fn text(&self) -> String {
        format!("{}.{}", codec::key_ms(self.0), self.0)
    }

    /// Reads [`Cursor::text`]; also takes the `MEASURED_AT.ROW` cursors of earlier releases
    /// as far as they go (their row part is no longer a position, so the page restarts at
    /// that time).
    pub fn parse(text: &str) -> Option<Cursor> {
        let (t, id) = text.split_once('.')?;
        let t: i64 = t.parse().ok()?;
        let id: i64 = id.parse().ok()?;
        if codec::key_ms(id) == t {
            Some(Cursor(id))
        } else {
            Some(Cursor(codec::key(t, codec::PER_MS - 1)))
        }
    }
}

/// A stored result as the read API shows it (times as Unix ms here; [`StoredResult`]'s JSON
/// gives each as RFC 3339 and as `…_ms`).
#[derive(Debug, Clone)]
pub struct StoredResult {
    /// The result's UUID.
    pub id: String,
    /// Slave name.
    pub slave: String,
    /// Target UUID ("" when unknown to the master).
    pub target_id: String,
    /// Target name.
    pub target_name: String,
    /// Target address.
    pub target_address: String,
    /// False when the target was not in the config when the result arrived.
    pub target_known: bool,
    /// False when the config did not select the slave for the target (`Slaves`).
    pub target_selected: bool,
    /// The slave's time of the measurement.
    pub date_time: String,
    /// The same as Unix ms.
    pub measured_at: i64,
    /// Where the result is ordered, Unix ms, when that is not its own time: it was dated
    /// ahead of the master's clock, so it is ordered at its arrival.
    pub ordered_at: Option<i64>,
    /// How long the trace took, ns, when the slave said.
    pub duration_ns: Option<i64>,
    /// When the master received it, Unix ms.
    pub received_at: i64,
    /// Destination answered.
    pub success: bool,
    /// Hop count as sent.
    pub hop_count: i64,
    /// Path ID (hash).
    pub path_id: String,
    /// Canonical path text.
    pub path: String,
    /// Probe protocol.
    pub protocol: Option<String>,
    /// Flow number.
    pub flow: Option<i64>,
    /// Resolved destination.
    pub destination: Option<String>,
    /// Unreachable annotation.
    pub unreachable: Option<String>,
    /// Why the trace could not run.
    pub error: Option<String>,
    /// Where it was measured from, and whether it is real.
    pub origin: Origin,
    /// Answering hops.
    pub hops: Vec<NewHop>,
    /// A multipath result's graph.
    pub multipath: Option<graph::Graph>,
}

/// Unix ms as the API writes every time: RFC 3339 in UTC with milliseconds and `Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The JSON of a stored result: every time in one format (RFC 3339, UTC, milliseconds, `Z`)
/// with its Unix ms beside it under `…_ms`.
#[derive(Serialize)]
struct StoredResultJson<'a> {
    id: &'a str,
    slave: &'a str,
    target_id: &'a str,
    target_name: &'a str,
    target_address: &'a str,
    target_known: bool,
    #[serde(skip_serializing_if = "is_true")]
    target_selected: bool,
    measured_at: String,
    measured_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordered_at_ms: Option<i64>,
    duration_ns: Option<i64>,
    received_at: String,
    received_at_ms: i64,
    success: bool,
    hop_count: i64,
    path_id: &'a str,
    path: &'a str,
    protocol: &'a Option<String>,
    flow: Option<i64>,
    destination: &'a Option<String>,
    unreachable: &'a Option<String>,
    error: &'a Option<String>,
    #[serde(flatten)]
    origin: &'a Origin,
    hops: &'a [NewHop],
    #[serde(skip_serializing_if = "Option::is_none")]
    multipath: &'a Option<graph::Graph>,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Serialize for StoredResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredResultJson {
            id: &self.id,
            slave: &self.slave,
            target_id: &self.target_id,
            target_name: &self.target_name,
            target_address: &self.target_address,
            target_known: self.target_known,
            target_selected: self.target_selected,
            measured_at: rfc3339_ms(self.measured_at),
            measured_at_ms: self.measured_at,
            ordered_at: self.ordered_at.map(rfc3339_ms),
            ordered_at_ms: self.ordered_at,
            duration_ns: self.duration_ns,
            received_at: rfc3339_ms(self.received_at),
            received_at_ms: self.received_at,
            success: self.success,
            hop_count: self.hop_count,
            path_id: &self.path_id,
            path: &self.path,
            protocol: &self.protocol,
            flow: self.flow,
            destination: &self.destination,
            unreachable: &self.unreachable,
            error: &self.error,
            origin: &self.origin,
            hops: &self.hops,
            multipath: &self.multipath,
        }
        .serialize(s)
    }
}

impl StoredResult {
    /// A result just stored at ordering key `key`, received at `received_at` (Unix ms), as a
    /// read would return it.
    pub fn of_new(r: &NewResult, key: i64, received_at: i64) -> StoredResult {
        let ordered = codec::key_ms(key);
        let path = r.path.canonical();
        StoredResult {
            id: r.result_id.clone(),
            slave: r.slave.clone(),
            target_id: r.target_uuid.clone(),
            target_name: r.target_name.clone(),
            target_address: r.target_address.clone(),
            target_known: r.target_known,
            target_selected: r.target_selected,
            date_time: r.date_time.clone(),
            measured_at: r.measured_at,
            ordered_at: (ordered != r.measured_at).then_some(ordered),
            duration_ns: r.duration_ns,
            received_at,
            success: r.success,
            hop_count: r.hop_count,
            path_id: NetPath::hash_of(&path),
            path,
            protocol: r.protocol.clone(),
            flow: r.flow,
            destination: r.destination.clone(),
            unreachable: r.unreachable.clone(),
            error: r.error.clone(),
            origin: r.origin.clone(),
            hops: r.hops.clone(),
            multipath: r.multipath.clone(),
        }
    }
}

/// What the store knows of a slave.
#[derive(Debug, Clone)]
pub struct SlaveRecord {
    /// Name.
    pub name: String,
    /// First seen, Unix ms.
    pub first_seen: Option<i64>,
    /// Last request, Unix ms.
    pub last_seen: Option<i64>,
    /// Last config fetch, Unix ms.
    pub last_config: Option<i64>,
    /// Remote address of its last config fetch.
    pub remote_addr: Option<String>,
    /// Program and version it reported.
    pub version: Option<String>,
    /// Results stored.
    pub results_stored: i64,
    /// Spool depth it reported.
    pub spool_depth: Option<i64>,
    /// Results it dropped in all.
    pub dropped_total: i64,
    /// Its clock minus the master's, ms (positive: ahead), from its newest result.
    pub clock_skew_ms: Option<i64>,
    /// Listed in dt-slaves.json now.
    pub configured: bool,
}

/// A target as stored (results name it; the config may no longer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTarget {
    /// UUID ("" when unknown).
    pub uuid: String,
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
}

/// Which series a query is about.
#[derive(Debug, Clone, Default)]
pub struct SeriesFilter {
    /// Slave name.
    pub slave: Option<String>,
    /// One of these slaves (a tag's, as the API resolves it); an empty list matches none.
    pub slaves: Option<Vec<String>>,
    /// Target UUID or name.
    pub target: Option<String>,
    /// Flow number.
    pub flow: Option<i64>,
}

/// One (slave, target, flow).
#[derive(Debug, Clone)]
pub struct SeriesRow {
    /// Row id.
    pub id: i64,
    /// Slave name.
    pub slave: String,
    /// Target UUID.
    pub target_id: String,
    /// Target name.
    pub target_name: String,
    /// Target address.
    pub target_address: String,
    /// Flow.
    pub flow: i64,
    /// Current path: its ID (hash) and canonical text.
    pub current_path: Option<(String, String)>,
    /// Since when, Unix ms.
    pub current_since: Option<i64>,
    /// Newest result, Unix ms.
    pub last_measured: Option<i64>,
    /// Path changes so far.
    pub changes_total: i64,
    /// Hop count of the current path.
    pub current_hops: Option<i64>,
    /// The newest result reached the destination.
    pub last_success: Option<bool>,
    /// The newest result's destination RTT, ns.
    pub last_rtt_ns: Option<i64>,
}

/// One distinct path of a series over a time range.
#[derive(Debug, Clone)]
pub struct PathSeen {
    /// Path ID (hash).
    pub path_id: String,
    /// Canonical text.
    pub path: String,
    /// First result on it, Unix ms.
    pub first_seen: i64,
    /// Last result on it, Unix ms.
    pub last_seen: i64,
    /// Results on it.
    pub count: i64,
}

/// Filters of the events query.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Which series.
    pub series: SeriesFilter,
    /// Event kind.
    pub kind: Option<String>,
    /// At or after, Unix ms.
    pub from: Option<i64>,
    /// At or before, Unix ms.
    pub to: Option<i64>,
    /// Only events with a smaller id (the cursor of the previous page).
    pub before_id: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// A stored change event.
#[derive(Debug, Clone)]
pub struct EventView {
    /// Row id.
    pub id: i64,
    /// When, Unix ms.
    pub at: i64,
    /// Kind.
    pub kind: String,
    /// Slave name.
    pub slave: String,
    /// Target UUID.
    pub target_id: String,
    /// Target name.
    pub target_name: String,
    /// Flow.
    pub flow: i64,
    /// Old path (ID, text), for path changes.
    pub from_path: Option<(String, String)>,
    /// New path (ID, text), for path changes.
    pub to_path: Option<(String, String)>,
    /// First TTL where they differ.
    pub first_diff_ttl: Option<i64>,
    /// The event as JSON.
    pub detail: String,
}

/// What a master sharing the database published of its config.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Its name (host and port).
    pub name: String,
    /// A digest per config file.
    pub digests: serde_json::Value,
    /// When it last published, Unix ms.
    pub seen_at: i64,
}

/// An on-demand measurement as stored: what was asked, by whom, and each slave's run.
#[derive(Debug, Clone)]
pub struct MeasurementRecord {
    /// Its ID (a UUID).
    pub id: String,
    /// When it was made, Unix ms.
    pub created_at: i64,
    /// When unfinished runs time out, Unix ms.
    pub deadline: i64,
    /// The user who asked (`follow-up` for one the master started itself).
    pub requested_by: String,
    /// The change event that started it, for a follow-up.
    pub event: Option<i64>,
    /// The job the slaves get.
    pub spec: crate::proto::JobSpec,
    /// One per slave asked.
    pub runs: Vec<RunRecord>,
}

/// One slave's part of a measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The slave.
    pub slave: String,
    /// `queued`, `delivered` (handed out, not yet confirmed), `running`, `done` or `offline`.
    pub state: String,
    /// When the state last changed, Unix ms.
    pub updated_at: i64,
    /// Results stored so far.
    pub results: i64,
    /// Why it is offline.
    pub reason: Option<String>,
}

/// The storage interface; every method is synchronous and safe to call from any thread.
pub trait Store: Send + Sync {
    /// Hands results to the writer; the ticket resolves when they are durable, with each
    /// result's fate in order. Results of all concurrent submissions share transactions.
    fn submit(&self, results: Vec<NewResult>) -> Ticket;

    /// Records that a slave was seen (a config fetch when `config` is true).
    fn touch_slave(&self, name: &str, remote: &str, agent: Option<&str>, config: bool);

    /// Records what a slave reports of itself: spool depth now, results dropped in all.
    fn slave_status(&self, name: &str, spool_depth: Option<u64>, dropped_total: Option<u64>);

    /// Results matching `q`, newest first, and the cursor of the next page when this one is
    /// full.
    fn results(&self, q: &ResultQuery) -> anyhow::Result<(Vec<StoredResult>, Option<Cursor>)>;

    /// How many results are stored.
    fn count_results(&self) -> anyhow::Result<i64>;

    /// Every slave the store knows.
    fn slaves(&self) -> anyhow::Result<Vec<SlaveRecord>>;

    /// Every target results named.
    fn targets(&self) -> anyhow::Result<Vec<StoredTarget>>;

    /// The series matching `f`, by slave, target and flow: one per (slave, target, flow), for
    /// a target whose address changed the series of its newest result.
    fn series(&self, f: &SeriesFilter) -> anyhow::Result<Vec<SeriesRow>>;

    /// The hops of each result of a series ordered at or after `since` (Unix ms).
    fn series_hops(&self, series: i64, since: i64) -> anyhow::Result<Vec<Vec<NewHop>>>;

    /// The distinct paths of a series between `from` and `to` (Unix ms), oldest first.
    fn path_history(&self, series: i64, from: i64, to: i64) -> anyhow::Result<Vec<PathSeen>>;

    /// Change events, newest first.
    fn events(&self, q: &EventQuery) -> anyhow::Result<Vec<EventView>>;

    /// Size of the database, bytes.
    fn storage_bytes(&self) -> anyhow::Result<i64>;

    /// Deletes up to one batch of results ordered before `cutoff` (Unix ms), never the newest
    /// of a series; returns how many.
    fn delete_results_before(&self, cutoff: i64) -> anyhow::Result<usize>;

    /// Deletes events before `cutoff`, and paths first seen before it that nothing uses;
    /// returns (events, paths).
    fn delete_history_before(&self, cutoff: i64) -> anyhow::Result<(usize, usize)>;

    /// Records which config files master `master` serves now (`digests`: a digest per
    /// file), for masters sharing a database to compare. Engines of one master keep nothing.
    fn publish_config(&self, master: &str, digests: &serde_json::Value) -> anyhow::Result<()> {
        let _ = (master, digests);
        Ok(())
    }

    /// What every master sharing this database last published, by name.
    fn master_configs(&self) -> anyhow::Result<Vec<MasterConfig>> {
        Ok(Vec::new())
    }

    /// The secret kept under `name`; when there is none yet, `fresh` is kept and returned
    /// (of several masters storing one at once, the first wins and all get its value).
    fn secret(&self, name: &str, fresh: &[u8]) -> anyhow::Result<Vec<u8>>;

    /// Stores a new measurement and its runs.
    fn create_measurement(&self, m: &MeasurementRecord) -> anyhow::Result<()>;

    /// The measurement `id` with its runs.
    fn measurement(&self, id: &str) -> anyhow::Result<Option<MeasurementRecord>>;

    /// Records that change event `event` is answered by the follow-up `measurement`.
    fn attach_follow_up(&self, event: i64, measurement: &str) -> anyhow::Result<()>;

    /// The follow-up measurements these change events started: event id → measurement id.
    fn follow_ups(&self, events: &[i64]) -> anyhow::Result<std::collections::HashMap<i64, String>>;

    /// The stored results of measurement `id`, oldest first.
    fn measurement_results(&self, id: &str) -> anyhow::Result<Vec<StoredResult>>;

    /// Hands out the jobs of `slave`: runs queued, or handed out before `redeliver_before`
    /// without the slave confirming them, of measurements not past their deadline at `now`;
    /// they are marked handed out at `now`.
    fn take_jobs(
        &self,
        slave: &str,
        redeliver_before: i64,
        now: i64,
    ) -> anyhow::Result<Vec<crate::proto::JobSpec>>;

    /// Records that `slave` runs the jobs of these measurements.
    fn runs_started(&self, slave: &str, ids: &[String], now: i64) -> anyhow::Result<()>;

    /// The slaves with runs queued at or after `since` (Unix ms).
    fn queued_since(&self, since: i64) -> anyhow::Result<Vec<String>>;

    /// Waits until everything handed to the writer before this call is written (an empty
    /// submission goes through the writer after them).
    fn flush(&self) -> anyhow::Result<()> {
        self.submit(Vec::new()).wait().map(|_| ())
    }

    /// Stores one result and waits until it is durable.
    fn insert(&self, r: &NewResult) -> anyhow::Result<Outcome> {
        self.submit(vec![r.clone()])
            .wait()?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("the writer gave no answer"))
    }

    /// Stores many results and waits until they are durable.
    fn insert_batch(&self, results: &[NewResult]) -> anyhow::Result<Vec<Outcome>> {
        self.submit(results.to_vec()).wait()
    }
}

/// Opens the database `db`: a `postgres://` or `postgresql://` URL (its password from
/// `passwd_file`, the URL or `PGPASSWORD`), or else the path of an SQLite file; confirms
/// paths after `confirm` results.
pub fn open(
    db: &std::path::Path,
    passwd_file: Option<&std::path::Path>,
    confirm: u32,
) -> anyhow::Result<Arc<dyn Store>> {
    match db.to_str() {
        Some(url) if postgres::is_url(url) => Ok(Arc::new(postgres::Postgres::open(
            url,
            passwd_file,
            confirm,
        )?)),
        Some(text) if text.contains("://") => {
            // (Not echoed: a mistyped URL may hold a password.)
            anyhow::bail!(
                "-db: only postgres:// and postgresql:// URLs, or the path of an SQLite file"
            )
        }
        _ => {
            if passwd_file.is_some() {
                anyhow::bail!(
                    "-db-passwd-file is for a PostgreSQL -db (postgres://...), not an SQLite file"
                );
            }
            Ok(Arc::new(sqlite::Sqlite::open(db, confirm)?))
        }
    }
}
