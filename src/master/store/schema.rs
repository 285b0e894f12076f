//! The schema and its forward migrations, numbered by `PRAGMA user_version`. Versions 1-3 are
//! plain SQL; version 4 repacks every result (one row with its RTTs in a blob, its shape in a
//! shared route) and needs code.

use super::AHEAD_ALLOWANCE_MS;
use super::codec::{self, Measures, Route, RouteHop, SlaveTime};
use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;

/// The versions this program writes; a newer file is refused.
pub const VERSION: i64 = 10;

/// The SQL migrations, in order; `user_version` counts how many have run.
const SQL_MIGRATIONS: &[&str] = &[
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

/// Version 4: compact results.
const V4_TABLES: &str = "
    ALTER TABLE results RENAME TO results_v3;
    CREATE TABLE routes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        hash BLOB NOT NULL UNIQUE,
        path_id INTEGER NOT NULL REFERENCES paths(id),
        body BLOB NOT NULL
    );
    CREATE INDEX routes_by_path ON routes (path_id);
    -- id: the ordering key (codec::key). No foreign keys: the writer keeps series_id and
    -- route_id right, and a key on route_id would cost an index as large as the table.
    -- data: codec::pack_row (the 16-byte ID, times and RTTs).
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        series_id INTEGER NOT NULL,
        route_id INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    -- Results not ordered at their own time (dated ahead of the master, or pushed to the next
    -- millisecond), so a resend of one is still found by its ID.
    CREATE TABLE aside (
        uid BLOB NOT NULL,
        series_id INTEGER NOT NULL,
        result INTEGER NOT NULL,
        PRIMARY KEY (uid, series_id)
    ) WITHOUT ROWID;
    CREATE INDEX aside_by_result ON aside (result);
    ALTER TABLE slaves ADD COLUMN clock_skew_ms INTEGER;
    ALTER TABLE series ADD COLUMN last_success INTEGER;
    ALTER TABLE series ADD COLUMN last_rtt_ns INTEGER;";

/// The SQL migrations after version 4, in order (the first is version 5).
const LATER_MIGRATIONS: &[&str] = &[
    // 5: secrets the masters keep, such as the key that signs the dashboard's sessions.
    "CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
    // 6: a result ID is one slave's: results kept aside are found by ID and series, so two
    // slaves that send one ID (the Go slave's debug result) do not take each other's.
    "CREATE TABLE aside_v6 (
        uid BLOB NOT NULL,
        series_id INTEGER NOT NULL,
        result INTEGER NOT NULL,
        PRIMARY KEY (uid, series_id)
     ) WITHOUT ROWID;
     INSERT OR IGNORE INTO aside_v6 (uid, series_id, result)
        SELECT a.uid, r.series_id, a.result FROM aside a JOIN results r ON r.id = a.result;
     DROP TABLE aside;
     ALTER TABLE aside_v6 RENAME TO aside;
     CREATE INDEX aside_by_result ON aside (result);",
    // 7: on-demand measurements: what was asked, each slave's run, and which stored results
    // belong to which measurement.
    "CREATE TABLE measurements (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        requested_by TEXT NOT NULL,
        spec TEXT NOT NULL,
        flows INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE measurement_runs (
        measurement TEXT NOT NULL REFERENCES measurements(id),
        slave TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        results INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        PRIMARY KEY (measurement, slave)
     ) WITHOUT ROWID;
     CREATE INDEX runs_by_slave ON measurement_runs (slave, state);
     CREATE INDEX runs_by_time ON measurement_runs (updated_at);
     CREATE TABLE measurement_results (
        measurement TEXT NOT NULL,
        result INTEGER NOT NULL,
        PRIMARY KEY (measurement, result)
     ) WITHOUT ROWID;",
    // 8: the follow-up measurement a change event started.
    "CREATE TABLE follow_ups (
        event_id INTEGER PRIMARY KEY,
        measurement TEXT NOT NULL
     );
     CREATE INDEX follow_ups_by_measurement ON follow_ups (measurement);",
    // 9: multipath graphs: each distinct shape once, each result's numbers by the result's
    // key, and a series' set of branches.
    "CREATE TABLE graphs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        hash BLOB NOT NULL UNIQUE,
        body BLOB NOT NULL
     );
     CREATE TABLE result_graphs (
        result INTEGER PRIMARY KEY,
        graph_id INTEGER NOT NULL,
        data BLOB NOT NULL
     );
     CREATE INDEX result_graphs_by_graph ON result_graphs (graph_id);
     ALTER TABLE series ADD COLUMN branches TEXT;",
    // 10: a series' AS-path detector (with an AS table).
    "ALTER TABLE series ADD COLUMN as_track TEXT;",
];

/// Brings the database to [`VERSION`]; each step is one transaction.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        anyhow::bail!(
            "schema version {version} is newer than this program knows ({VERSION}): use a newer dist-traceroute"
        );
    }
    for (i, sql) in SQL_MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {} failed", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    if version < 4 {
        let tx = conn.transaction()?;
        let n = to_v4(&tx).context("migration 4 (compact results) failed")?;
        tx.pragma_update(None, "user_version", 4)?;
        tx.commit()?;
        if n > 0 {
            log::info!(
                "database upgraded to schema 4: {n} results repacked; the space of the old tables is reused for new results"
            );
        }
    }
    for (i, sql) in LATER_MIGRATIONS
        .iter()
        .enumerate()
        .skip((version - 4).max(0) as usize)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {} failed", i + 5))?;
        tx.pragma_update(None, "user_version", (i + 5) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Inserts a result row at the first free key of `ordered_ms` (or a later millisecond when
/// that one is full); returns the key.
pub fn insert_row(
    conn: &Connection,
    next: &mut HashMap<i64, i64>,
    (series_id, route_id): (i64, i64),
    uid: &[u8; 16],
    m: &mut Measures,
    verbatim: Option<&str>,
) -> rusqlite::Result<i64> {
    let mut at = m.ordered_ms.clamp(codec::EPOCH_MS, codec::LAST_MS);
    let key = loop {
        // `next` remembers each millisecond's next counter; a millisecond it does not know
        // is looked up.
        let n = match next.get(&at) {
            Some(n) => *n,
            None => conn
                .prepare_cached("SELECT max(id) FROM results WHERE id BETWEEN ?1 AND ?2")?
                .query_row(
                    params![codec::key(at, 0), codec::key(at, codec::PER_MS - 1)],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .map_or(0, |k| k - codec::key(at, 0) + 1),
        };
        if n < codec::PER_MS {
            next.insert(at, n + 1);
            break codec::key(at, n);
        }
        at += 1;
    };
    m.ordered_ms = at;
    conn.prepare_cached(
        "INSERT INTO results (id, series_id, route_id, data) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        key,
        series_id,
        route_id,
        codec::pack_row(uid, m, verbatim)
    ])?;
    // A result moved on by a full millisecond or two is still found near its own time; one
    // ordered far from it (dated ahead of the master, or before the keys begin) is kept
    // aside so that a resend of it is found.
    if !(0..codec::SPILL_MS).contains(&(m.ordered_ms - m.time.ms)) {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO aside (uid, series_id, result) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![&uid[..], series_id, key])?;
    }
    Ok(key)
}

/// The route row of a route's stored form (`hash`: [`Route::hash`] of it) on path
/// `path_id`, made when new.
pub fn route_row(
    conn: &Connection,
    body: &[u8],
    hash: &[u8; 16],
    path_id: i64,
) -> rusqlite::Result<i64> {
    if let Some(id) = conn
        .prepare_cached("SELECT id FROM routes WHERE hash = ?1")?
        .query_row([&hash[..]], |r| r.get(0))
        .optional()?
    {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO routes (hash, path_id, body) VALUES (?1, ?2, ?3)")?
        .execute(params![&hash[..], path_id, body])?;
    Ok(conn.last_insert_rowid())
}

/// The row of a graph shape, made when new.
pub fn graph_row(conn: &Connection, body: &[u8], hash: &[u8; 16]) -> rusqlite::Result<i64> {
    if let Some(id) = conn
        .prepare_cached("SELECT id FROM graphs WHERE hash = ?1")?
        .query_row([&hash[..]], |r| r.get(0))
        .optional()?
    {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO graphs (hash, body) VALUES (?1, ?2)")?
        .execute(params![&hash[..], body])?;
    Ok(conn.last_insert_rowid())
}

/// Where a result is ordered: its own time, unless that is ahead of when it arrived by more
/// than the allowance (a slave's clock is wrong), then its arrival.
pub fn ordered_at(measured_ms: i64, received_ms: i64) -> i64 {
    if measured_ms > received_ms + AHEAD_ALLOWANCE_MS {
        received_ms
    } else {
        measured_ms.clamp(codec::EPOCH_MS, codec::LAST_MS)
    }
}

/// The 16 bytes of a result ID (validated as a UUID before it gets here).
pub fn uid_bytes(id: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(id)
        .map(|u| *u.as_bytes())
        .unwrap_or_default()
}

/// Repacks the version-3 tables `results` and `hops` into the new `results`, `routes` and
/// `aside`; returns how many results.
fn to_v4(tx: &Connection) -> anyhow::Result<u64> {
    tx.execute_batch(V4_TABLES)?;
    // Series made before migration 3 had no series_id on their results.
    tx.execute_batch(
        "INSERT OR IGNORE INTO series (slave_id, target_id, flow)
            SELECT DISTINCT slave_id, target_id, COALESCE(flow, 0) FROM results_v3
            WHERE series_id IS NULL;
         UPDATE results_v3 SET series_id = (SELECT id FROM series se
            WHERE se.slave_id = results_v3.slave_id AND se.target_id = results_v3.target_id
              AND se.flow = COALESCE(results_v3.flow, 0))
         WHERE series_id IS NULL;",
    )?;
    let last_results: HashMap<i64, i64> = {
        let mut stmt =
            tx.prepare("SELECT last_result, id FROM series WHERE last_result IS NOT NULL")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let mut hop_stmt = tx.prepare(
        "SELECT ttl, address, host, rtt_ns, size, kind, replies, reply_ttl FROM hops
         WHERE result = ?1 ORDER BY ttl",
    )?;
    let mut stmt = tx.prepare(
        "SELECT id, result_id, series_id, target_known, measured_at, date_time, received_at,
                success, hop_count, path_id, protocol, flow, destination, unreachable, error,
                agent, duration_ns
         FROM results_v3 ORDER BY measured_at, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    let mut next = HashMap::new();
    while let Some(row) = rows.next()? {
        let old_id: i64 = row.get(0)?;
        let result_id: String = row.get(1)?;
        let series_id: i64 = row.get(2)?;
        let date_time: String = row.get(5)?;
        let received_at: i64 = row.get(6)?;
        let mut hops = Vec::new();
        let mut measured_hops = Vec::new();
        for h in hop_stmt.query_map([old_id], |h| {
            let replies: Option<String> = h.get(6)?;
            Ok((
                RouteHop {
                    ttl: h.get(0)?,
                    address: h.get(1)?,
                    host: h.get(2)?,
                    size: h.get(4)?,
                    kind: h.get(5)?,
                    reply_ttl: h.get(7)?,
                    replies: None,
                    mpls: None,
                },
                h.get::<_, i64>(3)?,
                replies.and_then(|s| serde_json::from_str::<Vec<Option<i64>>>(&s).ok()),
            ))
        })? {
            let (mut hop, rtt, replies) = h?;
            hop.replies = replies.as_ref().map(Vec::len);
            hops.push(hop);
            measured_hops.push((rtt, replies));
        }
        let route = Route {
            source: None,
            seen_from: None,
            debug: false,
            measurement: None,
            multipath: false,
            target_known: row.get(3)?,
            target_selected: true,
            success: row.get(7)?,
            hop_count: row.get(8)?,
            has_flow: row.get::<_, Option<i64>>(11)?.is_some(),
            protocol: row.get(10)?,
            destination: row.get(12)?,
            unreachable: row.get(13)?,
            error: row.get(14)?,
            agent: row.get(15)?,
            hops,
        };
        let body = route.body();
        let route_id = route_row(tx, &body, &Route::hash(&body), row.get(9)?)?;
        let measured_at: i64 = row.get(4)?;
        let time = SlaveTime::parse(&date_time).unwrap_or(SlaveTime {
            ms: measured_at,
            sub_ms_ns: 0,
            offset_s: 0,
            style: codec::VERBATIM,
        });
        let mut m = Measures {
            time,
            ordered_ms: ordered_at(time.ms, received_at),
            received_at,
            duration_ns: row.get(16)?,
            hops: measured_hops,
        };
        let verbatim = (time.style == codec::VERBATIM).then_some(date_time.as_str());
        let key = insert_row(
            tx,
            &mut next,
            (series_id, route_id),
            &uid_bytes(&result_id),
            &mut m,
            verbatim,
        )?;
        if let Some(series) = last_results.get(&old_id) {
            let hops = m.hops(&route);
            tx.execute(
                "UPDATE series SET last_result = ?2, last_measured = ?3, last_success = ?4,
                        last_rtt_ns = ?5 WHERE id = ?1",
                params![
                    series,
                    key,
                    m.ordered_ms,
                    route.success,
                    super::destination_rtt_ns(route.success, &hops)
                ],
            )?;
        }
        n += 1;
        if n.is_multiple_of(100_000) {
            log::info!("upgrading the database to schema 4: {n} results repacked");
        }
    }
    drop(rows);
    drop(stmt);
    drop(hop_stmt);
    tx.execute_batch(
        "DROP TABLE hops;
         DROP TABLE results_v3;
         CREATE INDEX results_by_series ON results (series_id);",
    )?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_6_keeps_results_aside_under_their_series() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        // Back to version 5's `aside`, keyed by the ID alone, with one result in it (and no
        // tables of later versions).
        conn.execute_batch(
            "INSERT INTO slaves (name, first_seen, last_seen) VALUES ('s', 0, 0);
             INSERT INTO targets (uuid, name, address) VALUES ('t', 't', 't');
             INSERT INTO series (slave_id, target_id, flow) VALUES (1, 1, 0);
             INSERT INTO results (id, series_id, route_id, data) VALUES (77, 1, 1, x'00');
             DROP TABLE aside;
             CREATE TABLE aside (uid BLOB PRIMARY KEY, result INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX aside_by_result ON aside (result);
             INSERT INTO aside VALUES (x'0102', 77);
             ALTER TABLE series DROP COLUMN as_track;
             DROP TABLE result_graphs;
             DROP TABLE graphs;
             ALTER TABLE series DROP COLUMN branches;
             DROP TABLE follow_ups;
             DROP TABLE measurement_results;
             DROP TABLE measurement_runs;
             DROP TABLE measurements;
             PRAGMA user_version = 5;",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let row: (Vec<u8>, i64, i64) = conn
            .query_row("SELECT uid, series_id, result FROM aside", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, (vec![1, 2], 1, 77));
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        // Another series may keep the same ID aside.
        conn.execute("INSERT INTO aside VALUES (x'0102', 2, 78)", [])
            .unwrap();
    }
}
