//! Durable storage in one SQLite file (WAL): slaves, targets, distinct paths and every
//! accepted result with its hops, stored once per result ID. Schema changes are forward
//! migrations numbered by `PRAGMA user_version`.

use super::analysis::{self, Candidate, Event, Observation, State};
use super::path::Path as NetPath;
use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

/// The migrations, in order; `user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the foundation schema.
    "CREATE TABLE slaves (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        last_config INTEGER,
        remote_addr TEXT,
        agent TEXT
     );
     CREATE TABLE targets (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL,
        name TEXT NOT NULL,
        address TEXT NOT NULL,
        UNIQUE (uuid, name, address)
     );
     CREATE TABLE paths (
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        canonical TEXT NOT NULL,
        hop_count INTEGER NOT NULL,
        terminal TEXT NOT NULL,
        first_seen INTEGER NOT NULL
     );
     CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        result_id TEXT NOT NULL UNIQUE,
        slave_id INTEGER NOT NULL REFERENCES slaves(id),
        target_id INTEGER NOT NULL REFERENCES targets(id),
        target_known INTEGER NOT NULL,
        measured_at INTEGER NOT NULL,
        date_time TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        success INTEGER NOT NULL,
        hop_count INTEGER NOT NULL,
        path_id INTEGER NOT NULL REFERENCES paths(id),
        protocol TEXT,
        flow INTEGER,
        destination TEXT,
        unreachable TEXT,
        error TEXT,
        agent TEXT
     );
     CREATE INDEX results_by_slave_target_time ON results (slave_id, target_id, measured_at);
     CREATE INDEX results_by_target_time ON results (target_id, measured_at);
     CREATE TABLE hops (
        result INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
        ttl INTEGER NOT NULL,
        address TEXT NOT NULL,
        host TEXT NOT NULL,
        rtt_ns INTEGER NOT NULL,
        size INTEGER NOT NULL,
        kind TEXT,
        replies TEXT,
        PRIMARY KEY (result, ttl)
     ) WITHOUT ROWID;",
    // 2: what slaves report of themselves.
    "ALTER TABLE slaves ADD COLUMN spool_depth INTEGER;
     ALTER TABLE slaves ADD COLUMN dropped_total INTEGER NOT NULL DEFAULT 0;",
    // 3: paths over time: one series per (slave, target, flow), change events, durations.
    "CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        slave_id INTEGER NOT NULL REFERENCES slaves(id),
        target_id INTEGER NOT NULL REFERENCES targets(id),
        flow INTEGER NOT NULL,
        current_path INTEGER REFERENCES paths(id),
        current_since INTEGER,
        candidate_path INTEGER REFERENCES paths(id),
        candidate_count INTEGER NOT NULL DEFAULT 0,
        candidate_since INTEGER,
        last_measured INTEGER,
        last_result INTEGER,
        unreached_streak INTEGER NOT NULL DEFAULT 0,
        ever_reached INTEGER NOT NULL DEFAULT 0,
        unreachable_alerted INTEGER NOT NULL DEFAULT 0,
        rtt_high_streak INTEGER NOT NULL DEFAULT 0,
        rtt_alerted INTEGER NOT NULL DEFAULT 0,
        changes_total INTEGER NOT NULL DEFAULT 0,
        UNIQUE (slave_id, target_id, flow)
     );
     CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        series_id INTEGER NOT NULL REFERENCES series(id),
        from_path INTEGER REFERENCES paths(id),
        to_path INTEGER REFERENCES paths(id),
        first_diff_ttl INTEGER,
        detail TEXT NOT NULL
     );
     CREATE INDEX events_by_time ON events (at);
     CREATE INDEX events_by_series ON events (series_id, at);
     ALTER TABLE slaves ADD COLUMN results_stored INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE results ADD COLUMN duration_ns INTEGER;
     ALTER TABLE results ADD COLUMN series_id INTEGER REFERENCES series(id);
     ALTER TABLE hops ADD COLUMN reply_ttl INTEGER;
     CREATE INDEX results_by_time ON results (measured_at);
     CREATE INDEX results_by_series_time ON results (series_id, measured_at);",
];

/// One hop of a result to store.
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
    /// Answering hops.
    pub hops: Vec<NewHop>,
}

impl NewResult {
    /// The destination's RTT: the hop that reached it, when the trace did.
    pub fn destination_rtt_ns(&self) -> Option<i64> {
        if !self.success {
            return None;
        }
        let reached = self
            .hops
            .iter()
            .find(|h| h.kind.as_deref() == Some("reached"));
        reached
            .or_else(|| self.hops.iter().max_by_key(|h| h.ttl))
            .map(|h| h.rtt_ns)
    }
}

/// An event recorded while storing a result, with what an alert needs to say.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Row id.
    pub id: i64,
    /// When it happened (the result's measurement time), Unix ms.
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

/// Filters of the results query.
#[derive(Debug, Clone, Default)]
pub struct ResultQuery {
    /// Slave name.
    pub slave: Option<String>,
    /// Target UUID or name.
    pub target: Option<String>,
    /// Measured at or after, Unix ms.
    pub from: Option<i64>,
    /// Measured at or before, Unix ms.
    pub to: Option<i64>,
    /// Only results older than this (measured_at, row id): the cursor of the previous page.
    pub before: Option<(i64, i64)>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// A stored result as the read API shows it.
#[derive(Debug, Clone, Serialize)]
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
    /// The slave's time of the measurement.
    pub date_time: String,
    /// The same as Unix ms.
    pub measured_at: i64,
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
    /// Answering hops.
    pub hops: Vec<NewHop>,
}

/// The database: one connection writes, another reads (WAL lets them run side by side).
pub struct Store {
    conn: Mutex<Connection>,
    reader: Mutex<Connection>,
    confirm: u32,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        let writer = Store::init(conn)
            .with_context(|| format!("cannot prepare database {}", path.display()))?;
        let reader = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Store {
            conn: Mutex::new(writer),
            reader: Mutex::new(reader),
            confirm: 2,
        })
    }

    /// An in-memory database, for tests of the handlers.
    pub fn open_in_memory() -> anyhow::Result<Store> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let uri = format!(
            "file:dt-mem-{}-{}?mode=memory&cache=shared",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let writer = Store::init(Connection::open_with_flags(&uri, flags)?)?;
        let reader = Connection::open_with_flags(&uri, flags)?;
        Ok(Store {
            conn: Mutex::new(writer),
            reader: Mutex::new(reader),
            confirm: 2,
        })
    }

    /// Sets how many results in a row confirm a new path (and unreachability, RTT alerts).
    pub fn with_confirm(mut self, confirm: u32) -> Store {
        self.confirm = confirm.max(1);
        self
    }

    fn init(mut conn: Connection) -> anyhow::Result<Connection> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a result the master answered 200 for survives power loss; the slave deletes
        // its copy on that answer.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            anyhow::bail!(
                "schema version {version} is newer than this program knows ({}): use a newer dist-traceroute",
                MIGRATIONS.len()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)
                .with_context(|| format!("migration {} failed", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read connection, for queries.
    pub(crate) fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a slave was seen (config fetch when `config` is true).
    pub fn touch_slave(
        &self,
        name: &str,
        remote: &str,
        agent: Option<&str>,
        config: bool,
    ) -> anyhow::Result<()> {
        let conn = self.lock();
        let now = now_ms();
        upsert_slave(&conn, name, now)?;
        conn.execute(
            "UPDATE slaves SET remote_addr = ?2, agent = COALESCE(?3, agent),
                    last_config = CASE WHEN ?4 THEN ?5 ELSE last_config END
             WHERE name = ?1",
            params![name, remote, agent, config, now],
        )?;
        Ok(())
    }

    /// Records what a slave reports of itself: spool depth now, results dropped in all (the
    /// latest report wins: a slave corrects its count when a result it dropped on its way
    /// arrived after all).
    pub fn slave_status(
        &self,
        name: &str,
        spool_depth: Option<u64>,
        dropped_total: Option<u64>,
    ) -> anyhow::Result<()> {
        let conn = self.lock();
        upsert_slave(&conn, name, now_ms())?;
        conn.execute(
            "UPDATE slaves SET spool_depth = COALESCE(?2, spool_depth),
                    dropped_total = COALESCE(?3, dropped_total)
             WHERE name = ?1",
            params![
                name,
                spool_depth.map(|v| v.min(i64::MAX as u64) as i64),
                dropped_total.map(|v| v.min(i64::MAX as u64) as i64)
            ],
        )?;
        Ok(())
    }

    /// Stores one result and its hops in one transaction, once per result ID, and feeds it to
    /// its series' change detection; returns the events that caused.
    pub fn insert(&self, r: &NewResult) -> anyhow::Result<(Stored, Vec<EventRecord>)> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let stored = insert_in(&tx, r, self.confirm)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Stores many results in one transaction (one disk sync for the lot), each once per ID.
    pub fn insert_batch(
        &self,
        results: &[NewResult],
    ) -> anyhow::Result<Vec<(Stored, Vec<EventRecord>)>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let stored = results
            .iter()
            .map(|r| insert_in(&tx, r, self.confirm))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(stored)
    }

    /// Results matching `q`, newest first, and the cursor of the next page when this one is full.
    #[allow(clippy::type_complexity)]
    pub fn results(
        &self,
        q: &ResultQuery,
    ) -> anyhow::Result<(Vec<StoredResult>, Option<(i64, i64)>)> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT r.id, r.result_id, s.name, t.uuid, t.name, t.address, r.target_known,
                    r.date_time, r.received_at, r.success, r.hop_count, p.hash, p.canonical,
                    r.protocol, r.flow, r.destination, r.unreachable, r.error, r.measured_at,
                    r.duration_ns
             FROM results r
             JOIN slaves s ON s.id = r.slave_id
             JOIN targets t ON t.id = r.target_id
             JOIN paths p ON p.id = r.path_id
             WHERE (?1 IS NULL OR s.name = ?1)
               AND (?2 IS NULL OR t.uuid = ?2 OR t.name = ?2)
               AND r.measured_at >= ?4 AND r.measured_at <= ?5
               AND (r.measured_at, r.id) < (?6, ?7)
             ORDER BY r.measured_at DESC, r.id DESC
             LIMIT ?3",
        )?;
        let (before_t, before_id) = q.before.unwrap_or((i64::MAX, i64::MAX));
        let rows = stmt.query_map(
            params![
                q.slave,
                q.target,
                q.limit,
                q.from.unwrap_or(i64::MIN),
                q.to.unwrap_or(i64::MAX),
                before_t,
                before_id
            ],
            |row| {
                Ok((
                    (row.get::<_, i64>(0)?, row.get::<_, i64>(18)?),
                    StoredResult {
                        id: row.get(1)?,
                        slave: row.get(2)?,
                        target_id: row.get(3)?,
                        target_name: row.get(4)?,
                        target_address: row.get(5)?,
                        target_known: row.get(6)?,
                        date_time: row.get(7)?,
                        received_at: row.get(8)?,
                        success: row.get(9)?,
                        hop_count: row.get(10)?,
                        path_id: row.get(11)?,
                        path: row.get(12)?,
                        protocol: row.get(13)?,
                        flow: row.get(14)?,
                        destination: row.get(15)?,
                        unreachable: row.get(16)?,
                        error: row.get(17)?,
                        measured_at: row.get(18)?,
                        duration_ns: row.get(19)?,
                        hops: Vec::new(),
                    },
                ))
            },
        )?;
        let mut out = Vec::new();
        let mut last = None;
        let mut hop_stmt = conn.prepare_cached(
            "SELECT ttl, address, host, rtt_ns, size, kind, replies, reply_ttl FROM hops
             WHERE result = ?1 ORDER BY ttl",
        )?;
        for row in rows {
            let ((id, measured_at), mut result) = row?;
            last = Some((measured_at, id));
            let hops = hop_stmt.query_map([id], |h| {
                let replies: Option<String> = h.get(6)?;
                Ok(NewHop {
                    ttl: h.get(0)?,
                    address: h.get(1)?,
                    host: h.get(2)?,
                    rtt_ns: h.get(3)?,
                    size: h.get(4)?,
                    kind: h.get(5)?,
                    replies: replies.and_then(|s| serde_json::from_str(&s).ok()),
                    reply_ttl: h.get(7)?,
                })
            })?;
            result.hops = hops.collect::<Result<_, _>>()?;
            out.push(result);
        }
        let next = if out.len() as u32 == q.limit {
            last
        } else {
            None
        };
        Ok((out, next))
    }

    /// How many results are stored.
    pub fn count_results(&self) -> anyhow::Result<i64> {
        Ok(self
            .lock()
            .query_row("SELECT COUNT(*) FROM results", [], |r| r.get(0))?)
    }
}

fn insert_in(
    tx: &rusqlite::Transaction<'_>,
    r: &NewResult,
    confirm: u32,
) -> anyhow::Result<(Stored, Vec<EventRecord>)> {
    let exists: Option<i64> = tx
        .query_row(
            "SELECT id FROM results WHERE result_id = ?1",
            [&r.result_id],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_some() {
        return Ok((Stored::Duplicate, Vec::new()));
    }
    let now = now_ms();
    let slave_id = upsert_slave(tx, &r.slave, now)?;
    tx.execute(
        "INSERT OR IGNORE INTO targets (uuid, name, address) VALUES (?1, ?2, ?3)",
        params![r.target_uuid, r.target_name, r.target_address],
    )?;
    let target_id: i64 = tx.query_row(
        "SELECT id FROM targets WHERE uuid = ?1 AND name = ?2 AND address = ?3",
        params![r.target_uuid, r.target_name, r.target_address],
        |row| row.get(0),
    )?;
    let hash = r.path.hash();
    tx.execute(
        "INSERT OR IGNORE INTO paths (hash, canonical, hop_count, terminal, first_seen)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            hash,
            r.path.canonical(),
            r.path.hops.len() as i64,
            r.path.terminal.as_text(),
            now
        ],
    )?;
    let path_id: i64 = tx.query_row("SELECT id FROM paths WHERE hash = ?1", [&hash], |row| {
        row.get(0)
    })?;
    tx.execute(
        "INSERT INTO results (result_id, slave_id, target_id, target_known, measured_at,
                date_time, received_at, success, hop_count, path_id, protocol, flow, destination,
                unreachable, error, agent, duration_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            r.result_id,
            slave_id,
            target_id,
            r.target_known,
            r.measured_at,
            r.date_time,
            now,
            r.success,
            r.hop_count,
            path_id,
            r.protocol,
            r.flow,
            r.destination,
            r.unreachable,
            r.error,
            r.agent,
            r.duration_ns
        ],
    )?;
    let row = tx.last_insert_rowid();
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO hops (result, ttl, address, host, rtt_ns, size, kind, replies, reply_ttl)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for h in &r.hops {
            let replies = h
                .replies
                .as_ref()
                .map(|v| serde_json::to_string(v).unwrap_or_default());
            stmt.execute(params![
                row,
                h.ttl,
                h.address,
                h.host,
                h.rtt_ns,
                h.size,
                h.kind,
                replies,
                h.reply_ttl
            ])?;
        }
    }
    tx.execute(
        "UPDATE slaves SET last_seen = ?2, results_stored = results_stored + 1 WHERE id = ?1",
        params![slave_id, now],
    )?;
    let events = track(tx, r, slave_id, target_id, path_id, row, confirm)?;
    Ok((Stored::New(row), events))
}

/// Feeds a stored result to its series: loads the detector's state, observes, saves it and
/// records the events. A result older than the series' newest is stored but not fed (a late
/// backlog must not flip the current path back).
fn track(
    tx: &rusqlite::Transaction<'_>,
    r: &NewResult,
    slave_id: i64,
    target_id: i64,
    path_id: i64,
    row: i64,
    confirm: u32,
) -> anyhow::Result<Vec<EventRecord>> {
    let flow = r.flow.unwrap_or(0);
    tx.execute(
        "INSERT OR IGNORE INTO series (slave_id, target_id, flow) VALUES (?1, ?2, ?3)",
        params![slave_id, target_id, flow],
    )?;
    let (series_id, last_measured): (i64, Option<i64>) = tx.query_row(
        "SELECT id, last_measured FROM series WHERE slave_id = ?1 AND target_id = ?2 AND flow = ?3",
        params![slave_id, target_id, flow],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    tx.execute(
        "UPDATE results SET series_id = ?2 WHERE id = ?1",
        params![row, series_id],
    )?;
    if last_measured.is_some_and(|last| r.measured_at < last) {
        return Ok(Vec::new());
    }
    let mut state = load_state(tx, series_id)?;
    let events = analysis::observe(
        &mut state,
        &Observation {
            path_id,
            path: r.path.clone(),
            at: r.measured_at,
            rtt_ns: r.destination_rtt_ns(),
            rtt_alert_ns: r.rtt_alert_ns,
        },
        confirm,
    );
    let changes = events.iter().filter(|e| e.kind() == "path-change").count() as i64;
    let current_changed = changes > 0 || state.current.as_ref().is_some_and(|c| c.0 == path_id);
    tx.execute(
        "UPDATE series SET
            current_path = ?2,
            current_since = CASE WHEN current_path IS ?2 THEN current_since ELSE ?3 END,
            candidate_path = ?4, candidate_count = ?5, candidate_since = ?6,
            last_measured = ?7, last_result = ?8,
            unreached_streak = ?9, ever_reached = ?10, unreachable_alerted = ?11,
            rtt_high_streak = ?12, rtt_alerted = ?13, changes_total = changes_total + ?14
         WHERE id = ?1",
        params![
            series_id,
            state.current.as_ref().map(|c| c.0),
            if current_changed {
                events
                    .iter()
                    .find_map(|e| match e {
                        Event::PathChange { since, .. } => Some(*since),
                        _ => None,
                    })
                    .unwrap_or(r.measured_at)
            } else {
                r.measured_at
            },
            state.candidate.as_ref().map(|c| c.path_id),
            state.candidate.as_ref().map_or(0, |c| c.count),
            state.candidate.as_ref().map(|c| c.since),
            r.measured_at,
            row,
            state.unreached_streak,
            state.ever_reached,
            state.unreachable_alerted,
            state.rtt_high_streak,
            state.rtt_alerted,
            changes
        ],
    )?;
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        let (from_path, to_path, first_diff) = match &event {
            Event::PathChange {
                from_path,
                to_path,
                first_diff_ttl,
                ..
            } => (Some(*from_path), Some(*to_path), Some(*first_diff_ttl)),
            _ => (None, None, None),
        };
        tx.execute(
            "INSERT INTO events (at, kind, series_id, from_path, to_path, first_diff_ttl, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.measured_at,
                event.kind(),
                series_id,
                from_path,
                to_path,
                first_diff,
                serde_json::to_string(&event).unwrap_or_default()
            ],
        )?;
        let text = |id: Option<i64>| -> rusqlite::Result<Option<String>> {
            id.map(|id| {
                tx.query_row("SELECT canonical FROM paths WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
            })
            .transpose()
        };
        records.push(EventRecord {
            id: tx.last_insert_rowid(),
            at: r.measured_at,
            slave: r.slave.clone(),
            target_id: r.target_uuid.clone(),
            target_name: r.target_name.clone(),
            flow,
            from: text(from_path)?,
            to: text(to_path)?,
            event,
        });
    }
    Ok(records)
}

fn path_of(tx: &Connection, id: Option<i64>) -> rusqlite::Result<Option<(i64, NetPath)>> {
    let Some(id) = id else { return Ok(None) };
    let text: String = tx.query_row("SELECT canonical FROM paths WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    Ok(NetPath::parse_canonical(&text).map(|p| (id, p)))
}

fn load_state(tx: &Connection, series_id: i64) -> rusqlite::Result<State> {
    let row = tx.query_row(
        "SELECT current_path, candidate_path, candidate_count, candidate_since, unreached_streak,
                ever_reached, unreachable_alerted, rtt_high_streak, rtt_alerted
         FROM series WHERE id = ?1",
        [series_id],
        |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, bool>(6)?,
                r.get::<_, u32>(7)?,
                r.get::<_, bool>(8)?,
            ))
        },
    )?;
    let candidate = path_of(tx, row.1)?.map(|(path_id, path)| Candidate {
        path_id,
        path,
        count: row.2,
        since: row.3.unwrap_or(0),
    });
    Ok(State {
        current: path_of(tx, row.0)?,
        candidate,
        unreached_streak: row.4,
        ever_reached: row.5,
        unreachable_alerted: row.6,
        rtt_high_streak: row.7,
        rtt_alerted: row.8,
    })
}

/// Rows deleted per retention step; small so ingestion waits at most a few milliseconds.
const RETENTION_BATCH: i64 = 500;

impl Store {
    /// Deletes up to one batch of results measured before `cutoff` (Unix ms), with their hops;
    /// returns how many.
    pub fn delete_results_before(&self, cutoff: i64) -> anyhow::Result<usize> {
        let conn = self.lock();
        let n = conn.execute(
            "DELETE FROM results WHERE id IN
                (SELECT id FROM results WHERE measured_at < ?1 ORDER BY measured_at LIMIT ?2)
               AND id NOT IN (SELECT last_result FROM series WHERE last_result IS NOT NULL)",
            params![cutoff, RETENTION_BATCH],
        )?;
        Ok(n)
    }

    /// Deletes events before `cutoff`, and paths first seen before it that nothing uses.
    pub fn delete_history_before(&self, cutoff: i64) -> anyhow::Result<(usize, usize)> {
        let conn = self.lock();
        let events = conn.execute("DELETE FROM events WHERE at < ?1", [cutoff])?;
        let paths = conn.execute(
            "DELETE FROM paths WHERE first_seen < ?1
               AND NOT EXISTS (SELECT 1 FROM results WHERE path_id = paths.id)
               AND NOT EXISTS (SELECT 1 FROM series WHERE current_path = paths.id OR candidate_path = paths.id)
               AND NOT EXISTS (SELECT 1 FROM events WHERE from_path = paths.id OR to_path = paths.id)",
            [cutoff],
        )?;
        Ok((events, paths))
    }
}

/// Starts the retention thread: every minute it deletes results older than `results` in small
/// batches (the store's lock is released between batches, so ingestion goes on), then old
/// events and unused paths.
pub fn spawn_retention(
    store: std::sync::Arc<Store>,
    results: Option<std::time::Duration>,
    history: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    if results.is_none() && history.is_none() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            loop {
                let now = now_ms();
                if let Some(age) = results {
                    let cutoff = now - age.as_millis() as i64;
                    let mut total = 0;
                    loop {
                        match store.delete_results_before(cutoff) {
                            Ok(0) => break,
                            Ok(n) => total += n,
                            Err(e) => {
                                log::error!("retention: {e:#}");
                                break;
                            }
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    if total > 0 {
                        log::info!(
                            "retention: deleted {total} results older than {}",
                            humantime::format_duration(age)
                        );
                    }
                }
                if let Some(age) = history {
                    match store.delete_history_before(now - age.as_millis() as i64) {
                        Ok((0, 0)) => {}
                        Ok((e, p)) => {
                            log::info!("retention: deleted {e} events and {p} unused paths")
                        }
                        Err(e) => log::error!("retention: {e:#}"),
                    }
                }
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        })?;
    Ok(())
}

fn upsert_slave(conn: &Connection, name: &str, now: i64) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO slaves (name, first_seen, last_seen) VALUES (?1, ?2, ?2)
         ON CONFLICT (name) DO NOTHING",
        params![name, now],
    )?;
    conn.query_row("SELECT id FROM slaves WHERE name = ?1", [name], |r| {
        r.get(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::path::{Path as NetPath, Terminal};

    fn result(id: &str) -> NewResult {
        NewResult {
            result_id: id.into(),
            slave: "slave1".into(),
            target_uuid: "76d96640-d357-47b3-ba50-5248a7604bc9".into(),
            target_name: "Google".into(),
            target_address: "www.google.at".into(),
            target_known: true,
            measured_at: 1_000,
            date_time: "2019-02-07T21:06:10.803086+01:00".into(),
            success: true,
            hop_count: 3,
            path: NetPath::from_hops(
                [
                    (1, "10.0.0.1".parse().unwrap()),
                    (3, "10.0.0.3".parse().unwrap()),
                ],
                Terminal::Reached,
            ),
            protocol: Some("udp".into()),
            flow: Some(0),
            destination: None,
            unreachable: None,
            error: None,
            agent: None,
            duration_ns: None,
            rtt_alert_ns: None,
            hops: vec![NewHop {
                ttl: 1,
                address: "10.0.0.1".into(),
                host: String::new(),
                rtt_ns: 1000,
                size: 56,
                kind: None,
                replies: Some(vec![Some(1000), None]),
                reply_ttl: None,
            }],
        }
    }

    #[test]
    fn a_result_id_is_stored_once_and_paths_are_shared() {
        let store = Store::open_in_memory().unwrap();
        assert!(matches!(
            store.insert(&result("a")).unwrap().0,
            Stored::New(_)
        ));
        assert_eq!(store.insert(&result("a")).unwrap().0, Stored::Duplicate);
        store.insert(&result("b")).unwrap();
        assert_eq!(store.count_results().unwrap(), 2);
        let paths: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM paths", [], |r| r.get(0))
            .unwrap();
        assert_eq!(paths, 1);
        let got = store
            .results(&ResultQuery {
                slave: Some("slave1".into()),
                target: Some("Google".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .0;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].path, "10.0.0.1 * 10.0.0.3 | reached");
        assert_eq!(got[0].hops[0].replies, Some(vec![Some(1000), None]));
        let none = store
            .results(&ResultQuery {
                slave: Some("other".into()),
                ..Default::default()
            })
            .unwrap()
            .0;
        assert!(none.is_empty());
    }

    #[test]
    fn retention_deletes_old_results_with_their_hops_but_keeps_the_newest_of_a_series() {
        let store = Store::open_in_memory().unwrap();
        for (i, at) in [1_000, 2_000, 3_000].into_iter().enumerate() {
            let mut r = result(&format!("r{i}"));
            r.measured_at = at;
            store.insert(&r).unwrap();
        }
        // Everything is older than the cutoff, but the series' newest result stays.
        assert_eq!(store.delete_results_before(10_000).unwrap(), 2);
        assert_eq!(store.delete_results_before(10_000).unwrap(), 0);
        assert_eq!(store.count_results().unwrap(), 1);
        let hops: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM hops", [], |r| r.get(0))
            .unwrap();
        assert_eq!(hops, 1, "the deleted results' hops went with them");
        // The path is still used by the remaining result, so history retention keeps it.
        assert_eq!(store.delete_history_before(i64::MAX).unwrap().1, 0);
    }

    #[test]
    fn reopening_a_file_keeps_results_and_schema() {
        let dir = std::env::temp_dir().join(format!("dt-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.db");
        let _ = std::fs::remove_file(&file);
        Store::open(&file).unwrap().insert(&result("x")).unwrap();
        let again = Store::open(&file).unwrap();
        assert_eq!(again.count_results().unwrap(), 1);
        assert_eq!(again.insert(&result("x")).unwrap().0, Stored::Duplicate);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
