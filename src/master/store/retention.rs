//! Retention: old results go in small batches (the writer commits between them, so ingestion
//! waits a few milliseconds at most), then old events and the routes and paths nothing uses.

use super::Store;
use super::codec;
use super::ingest::Caches;
use rusqlite::{Connection, params};
use std::collections::HashSet;
use std::sync::Arc;

/// Deletes the measurements made before `$1` (Unix ms), their runs and links, and the links
/// of events that are gone; the same SQL for both engines.
pub const MEASUREMENTS_BEFORE: &str = "
    DELETE FROM measurement_results WHERE measurement IN
        (SELECT id FROM measurements WHERE created_at < $1);
    DELETE FROM measurement_runs WHERE measurement IN
        (SELECT id FROM measurements WHERE created_at < $1);
    DELETE FROM follow_ups WHERE measurement IN
        (SELECT id FROM measurements WHERE created_at < $1);
    DELETE FROM measurements WHERE created_at < $1;
    DELETE FROM follow_ups WHERE NOT EXISTS (SELECT 1 FROM events WHERE id = follow_ups.event_id);";

/// Deletes the graph numbers of results gone below `?1`.
const RESULT_GRAPHS_GONE_SQLITE: &str = "DELETE FROM result_graphs WHERE result < ?1
       AND NOT EXISTS (SELECT 1 FROM results WHERE id = result_graphs.result)";

/// The same for PostgreSQL.
pub const RESULT_GRAPHS_GONE: &str = "DELETE FROM result_graphs WHERE result < $1
       AND NOT EXISTS (SELECT 1 FROM results WHERE id = result_graphs.result)";

/// Rows deleted per retention step.
pub const BATCH: i64 = 500;

/// Deletes up to a batch of results ordered before `cutoff`, never a series' newest.
pub fn delete_results(conn: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
    let below = codec::key(cutoff, 0);
    let n = conn.execute(
        "DELETE FROM results WHERE id IN
            (SELECT id FROM results WHERE id < ?1 ORDER BY id LIMIT ?2)
           AND id NOT IN (SELECT last_result FROM series WHERE last_result IS NOT NULL)",
        params![below, BATCH],
    )?;
    conn.execute(
        "DELETE FROM aside WHERE result < ?1
           AND NOT EXISTS (SELECT 1 FROM results WHERE id = aside.result)",
        [below],
    )?;
    conn.execute(RESULT_GRAPHS_GONE_SQLITE, [below])?;
    Ok(n)
}

/// The routes some result uses (a full scan: run it on a reader), and the highest route id.
pub fn routes_in_use(conn: &Connection) -> rusqlite::Result<(HashSet<i64>, i64)> {
    let top: i64 = conn.query_row("SELECT COALESCE(max(id), 0) FROM routes", [], |r| r.get(0))?;
    let mut stmt = conn.prepare("SELECT DISTINCT route_id FROM results")?;
    let used = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<HashSet<i64>, _>>()?;
    Ok((used, top))
}

/// Deletes events before `cutoff`, routes no result uses (`used` from a scan, plus those the
/// writer saw used since the sweep began; none newer than `top`), and paths first seen
/// before `cutoff` that nothing uses; returns (events, paths).
pub fn delete_history(
    conn: &Connection,
    caches: &mut Caches,
    cutoff: i64,
    mut used: HashSet<i64>,
    top: i64,
) -> rusqlite::Result<(usize, usize)> {
    let events = conn.execute("DELETE FROM events WHERE at < ?1", [cutoff])?;
    // Measurements made before the cutoff, with their runs and links (their results go
    // with the results).
    conn.execute_batch(&MEASUREMENTS_BEFORE.replace("$1", &cutoff.to_string()))?;
    used.extend(caches.routes_used.take().unwrap_or_default());
    let mut unused = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT id FROM routes WHERE id <= ?1")?;
        for id in stmt.query_map([top], |r| r.get::<_, i64>(0))? {
            let id = id?;
            if !used.contains(&id) {
                unused.push(id);
            }
        }
    }
    {
        let mut del = conn.prepare("DELETE FROM routes WHERE id = ?1")?;
        for id in &unused {
            del.execute([id])?;
        }
    }
    // Graph shapes no result uses (the writer runs this, so none is being written).
    let graphs = conn.execute(
        "DELETE FROM graphs WHERE NOT EXISTS
            (SELECT 1 FROM result_graphs WHERE graph_id = graphs.id)",
        [],
    )?;
    let paths = conn.execute(
        "DELETE FROM paths WHERE first_seen < ?1
           AND NOT EXISTS (SELECT 1 FROM routes WHERE path_id = paths.id)
           AND NOT EXISTS (SELECT 1 FROM series WHERE current_path = paths.id OR candidate_path = paths.id)
           AND NOT EXISTS (SELECT 1 FROM events WHERE from_path = paths.id OR to_path = paths.id)",
        [cutoff],
    )?;
    if !unused.is_empty() || paths > 0 || graphs > 0 {
        caches.clear();
    }
    Ok((events, paths))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Starts the retention thread: every minute it deletes results older than `results` in
/// small batches; hourly, old events and unused routes and paths.
pub fn spawn_retention(
    store: Arc<dyn Store>,
    results: Option<std::time::Duration>,
    history: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    if results.is_none() && history.is_none() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            // The history sweep scans every result for the routes in use: hourly is plenty.
            let mut last_sweep: Option<std::time::Instant> = None;
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
                if let Some(age) = history
                    && last_sweep
                        .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600))
                {
                    last_sweep = Some(std::time::Instant::now());
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
