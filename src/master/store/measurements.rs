//! On-demand measurements in SQLite: the measurement, each slave's run, and which stored
//! results belong to it. Writes run on the writer thread (in its transactions), reads on the
//! reader pool.

use super::query::{self, ReadCaches};
use super::{MeasurementRecord, RunRecord, StoredResult};
use crate::proto::JobSpec;
use rusqlite::{Connection, OptionalExtension, params};

/// Stores a new measurement and its runs.
pub fn create(conn: &Connection, m: &MeasurementRecord) -> rusqlite::Result<()> {
    let spec = serde_json::to_string(&m.spec).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO measurements (id, created_at, deadline, requested_by, spec, flows)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        m.id,
        m.created_at,
        m.deadline,
        m.requested_by,
        spec,
        m.spec.flows
    ])?;
    let mut run = conn.prepare_cached(
        "INSERT INTO measurement_runs (measurement, slave, state, updated_at, reason)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in &m.runs {
        run.execute(params![m.id, r.slave, r.state, r.updated_at, r.reason])?;
    }
    if let Some(event) = m.event {
        attach(conn, event, &m.id)?;
    }
    Ok(())
}

/// The measurement `id` with its runs.
pub fn get(conn: &Connection, id: &str) -> anyhow::Result<Option<MeasurementRecord>> {
    let head = conn
        .prepare_cached(
            "SELECT created_at, deadline, requested_by, spec,
                    (SELECT min(event_id) FROM follow_ups WHERE measurement = ?1)
             FROM measurements WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    let Some((created_at, deadline, requested_by, spec, event)) = head else {
        return Ok(None);
    };
    let spec: JobSpec = serde_json::from_str(&spec)?;
    let runs = conn
        .prepare_cached(
            "SELECT slave, state, updated_at, results, reason FROM measurement_runs
             WHERE measurement = ?1 ORDER BY slave",
        )?
        .query_map([id], |r| {
            Ok(RunRecord {
                slave: r.get(0)?,
                state: r.get(1)?,
                updated_at: r.get(2)?,
                results: r.get(3)?,
                reason: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(MeasurementRecord {
        id: id.to_owned(),
        created_at,
        deadline,
        requested_by,
        event,
        spec,
        runs,
    }))
}

/// The stored results of measurement `id`, oldest first.
pub fn results(
    conn: &Connection,
    caches: &ReadCaches,
    id: &str,
) -> anyhow::Result<Vec<StoredResult>> {
    let rows = conn
        .prepare_cached(
            "SELECT r.id, r.series_id, r.route_id, r.data FROM measurement_results mr
             JOIN results r ON r.id = mr.result WHERE mr.measurement = ?1 ORDER BY r.id",
        )?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|row| query::unpack(conn, caches, row))
        .collect()
}

/// Hands out the jobs of `slave` (see `Store::take_jobs`).
pub fn take(
    conn: &Connection,
    slave: &str,
    redeliver_before: i64,
    now: i64,
) -> anyhow::Result<Vec<JobSpec>> {
    let specs = conn
        .prepare_cached(
            "SELECT m.id, m.spec FROM measurement_runs r JOIN measurements m ON m.id = r.measurement
             WHERE r.slave = ?1 AND m.deadline > ?3
               AND (r.state = 'queued' OR (r.state = 'delivered' AND r.updated_at < ?2))
             ORDER BY m.created_at",
        )?
        .query_map(params![slave, redeliver_before, now], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut mark = conn.prepare_cached(
        "UPDATE measurement_runs SET state = 'delivered', updated_at = ?3
         WHERE measurement = ?1 AND slave = ?2",
    )?;
    let mut out = Vec::with_capacity(specs.len());
    for (id, spec) in specs {
        mark.execute(params![id, slave, now])?;
        out.push(serde_json::from_str(&spec)?);
    }
    Ok(out)
}

/// Records that `slave` runs these measurements' jobs.
pub fn started(conn: &Connection, slave: &str, ids: &[String], now: i64) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "UPDATE measurement_runs SET state = 'running', updated_at = ?3
         WHERE measurement = ?1 AND slave = ?2 AND state IN ('queued', 'delivered')",
    )?;
    for id in ids {
        st.execute(params![id, slave, now])?;
    }
    Ok(())
}

/// The slaves with runs queued at or after `since`.
pub fn queued_since(conn: &Connection, since: i64) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT DISTINCT slave FROM measurement_runs WHERE state = 'queued' AND updated_at >= ?1",
    )?
    .query_map([since], |r| r.get(0))?
    .collect()
}

/// Counts a stored result (at ordering key `key`) of `slave` for measurement `id`, in the
/// writer's transaction: the run is done once every flow's result is in.
pub fn result_stored(
    conn: &Connection,
    id: &str,
    slave: &str,
    key: i64,
    now: i64,
) -> rusqlite::Result<()> {
    let changed = conn
        .prepare_cached(
            "UPDATE measurement_runs SET results = results + 1, updated_at = ?3,
                state = CASE WHEN results + 1 >= (SELECT flows FROM measurements WHERE id = ?1)
                             THEN 'done' ELSE 'running' END
             WHERE measurement = ?1 AND slave = ?2",
        )?
        .execute(params![id, slave, now])?;
    if changed > 0 {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO measurement_results (measurement, result) VALUES (?1, ?2)",
        )?
        .execute(params![id, key])?;
    }
    Ok(())
}

/// The follow-up measurements of these events.
pub fn follow_ups(
    conn: &Connection,
    events: &[i64],
) -> rusqlite::Result<std::collections::HashMap<i64, String>> {
    let mut out = std::collections::HashMap::new();
    let mut stmt = conn.prepare_cached("SELECT measurement FROM follow_ups WHERE event_id = ?1")?;
    for &e in events {
        if let Some(m) = stmt.query_row([e], |r| r.get::<_, String>(0)).optional()? {
            out.insert(e, m);
        }
    }
    Ok(out)
}

/// Records that `event` is answered by follow-up `measurement`.
pub fn attach(conn: &Connection, event: i64, measurement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO follow_ups (event_id, measurement) VALUES (?1, ?2)",
    )?
    .execute(params![event, measurement])?;
    Ok(())
}
