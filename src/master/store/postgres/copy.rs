//! `dist-traceroute db copy`: moves an SQLite history into PostgreSQL. Results keep their
//! packed form and their ordering keys (so cursors handed out before still point to the same
//! place); names, paths, routes and series are matched by what they are, not by row id.
//! Each batch commits with a note of how far it got, so a copy that stops (Ctrl-C, a lost
//! connection) goes on from there when run again, and a finished copy run again does nothing.

use super::super::codec;
use super::connect;
use super::schema::{self, locks};
use anyhow::Context;
use rusqlite::OpenFlags;
use std::collections::HashMap;
use std::path::Path;

/// Results per transaction.
const BATCH: usize = 5000;

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Results in the SQLite file.
    pub total: i64,
    /// Results copied by this run.
    pub copied: i64,
    /// Results an earlier run had copied.
    pub before: i64,
    /// Results that found their key taken by another result (a master already writing
    /// there) and were stored at the next free one.
    pub moved: i64,
    /// Events copied by this run.
    pub events: i64,
    /// On-demand measurements copied by this run.
    pub measurements: i64,
}

/// Copies the SQLite database `from` into the PostgreSQL database at `to`, calling
/// `progress` after each batch.
pub fn copy(
    from: &Path,
    to: &str,
    passwd_file: Option<&Path>,
    mut progress: impl FnMut(&Copied),
) -> anyhow::Result<Copied> {
    if !from.is_file() {
        anyhow::bail!("--from {}: no such file", from.display());
    }
    // Opening it as a master would brings an older file to the current schema, and fails
    // when a master is using it (a copy of a file still being written would miss results).
    drop(
        super::super::sqlite::Sqlite::open(from, 2)
            .with_context(|| format!("--from {}", from.display()))?,
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    let src = rusqlite::Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", from.display()))?;
    let source = std::fs::canonicalize(from)?.display().to_string();

    let target = connect::target(to, passwd_file)?;
    let mut pg = target
        .config
        .connect(target.tls.clone())
        .with_context(|| format!("cannot connect to {}", target.shown))?;
    schema::migrate(&mut pg).with_context(|| format!("cannot prepare {}", target.shown))?;
    let mine: bool = pg
        .query_one("SELECT pg_try_advisory_lock($1)", &[&locks::COPY])?
        .get(0);
    if !mine {
        anyhow::bail!("another db copy is writing into {}", target.shown);
    }
    // No master runs retention while the copy goes on: routes and paths it has made but no
    // copied result uses yet must not be swept away as unused.
    pg.execute("SELECT pg_advisory_lock($1)", &[&locks::RETENTION])?;

    let ids = dimensions(&src, &mut pg)?;
    let mut done = Copied {
        total: src.query_row("SELECT count(*) FROM results", [], |r| r.get(0))?,
        ..Default::default()
    };
    let (mut last_key, before, events_done) = match pg.query_opt(
        "SELECT last_key, copied, done FROM copies WHERE source = $1",
        &[&source],
    )? {
        Some(r) => (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, bool>(2)),
        None => (i64::MIN, 0, false),
    };
    done.before = before;
    let mut moved: HashMap<i64, i64> = HashMap::new();
    let mut stmt = src.prepare(
        "SELECT id, series_id, route_id, data FROM results WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    loop {
        let rows = stmt
            .query_map(rusqlite::params![last_key, BATCH as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = rows.last() else { break };
        let batch_last = last.0;
        let mut keys = Vec::with_capacity(rows.len());
        let mut series = Vec::with_capacity(rows.len());
        let mut routes = Vec::with_capacity(rows.len());
        let mut data = Vec::with_capacity(rows.len());
        let mut source_routes = Vec::with_capacity(rows.len());
        for (key, s, r, d) in rows {
            keys.push(key);
            series.push(
                *ids.series
                    .get(&s)
                    .with_context(|| format!("result {key}: series {s} unknown"))?,
            );
            routes.push(
                *ids.routes
                    .get(&r)
                    .with_context(|| format!("result {key}: route {r} unknown"))?,
            );
            source_routes.push(r);
            data.push(d);
        }
        let mut tx = pg.transaction()?;
        let inserted: std::collections::HashSet<i64> = tx
            .query(
                "INSERT INTO results (id, series_id, route_id, data)
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[])
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                &[&keys, &series, &routes, &data],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut skipped = 0;
        // Results found there already (their graphs came with them).
        let mut already = std::collections::HashSet::new();
        for i in 0..keys.len() {
            if inserted.contains(&keys[i]) {
                continue;
            }
            // The key is taken. By this very result (the same history copied from another
            // path, or merged twice)? Then it is there already.
            let uid = &data[i][..16.min(data[i].len())];
            let ms = codec::key_ms(keys[i]);
            let there = !tx
                .query(
                    "SELECT 1 FROM results WHERE series_id = $1 AND id BETWEEN $2 AND $3
                       AND substring(data from 1 for 16) = $4
                     UNION ALL SELECT 1 FROM aside WHERE uid = $4 AND series_id = $1 LIMIT 1",
                    &[
                        &series[i],
                        &codec::key(ms, 0),
                        &codec::key(ms.saturating_add(codec::SPILL_MS - 1), codec::PER_MS - 1),
                        &uid,
                    ],
                )?
                .is_empty();
            if there {
                skipped += 1;
                already.insert(keys[i]);
                continue;
            }
            // By another: store this one at the next free key (repacked when that is in a
            // later millisecond: its times are kept relative to where it is ordered).
            let new = next_free(&mut tx, keys[i])?;
            let row = if codec::key_ms(new) == ms {
                data[i].clone()
            } else {
                let body: Vec<u8> = src.query_row(
                    "SELECT body FROM routes WHERE id = ?1",
                    [source_routes[i]],
                    |r| r.get(0),
                )?;
                let route = codec::Route::parse(&body)
                    .with_context(|| format!("route {} does not decode", source_routes[i]))?;
                let (uid, mut m, date_time) = codec::unpack_row(&data[i], &route, ms)
                    .with_context(|| format!("result {} does not decode", keys[i]))?;
                m.ordered_ms = codec::key_ms(new);
                let verbatim = (m.time.style == codec::VERBATIM).then_some(date_time.as_str());
                codec::pack_row(&uid, &m, verbatim)
            };
            tx.execute(
                "INSERT INTO results (id, series_id, route_id, data) VALUES ($1, $2, $3, $4)",
                &[&new, &series[i], &routes[i], &row],
            )?;
            tx.execute(
                "INSERT INTO aside (uid, series_id, result) VALUES ($1, $2, $3)
                 ON CONFLICT (uid, series_id) DO UPDATE SET result = EXCLUDED.result",
                &[&uid, &series[i], &new],
            )?;
            // A series whose newest result this is points at its new key.
            tx.execute(
                "UPDATE series SET last_result = $3 WHERE id = $1 AND last_result = $2",
                &[&series[i], &keys[i], &new],
            )?;
            moved.insert(keys[i], new);
            done.moved += 1;
        }
        // The graphs of multipath results: each shape once (matched by its hash), the numbers
        // at the key the result landed on.
        let first = keys.first().copied().unwrap_or(i64::MIN);
        let mut with_graphs = src.prepare_cached(
            "SELECT rg.result, rg.data, g.hash, g.body FROM result_graphs rg
             JOIN graphs g ON g.id = rg.graph_id WHERE rg.result BETWEEN ?1 AND ?2",
        )?;
        let found = with_graphs
            .query_map(rusqlite::params![first, batch_last], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (key, data, hash, body) in found {
            if already.contains(&key) {
                continue;
            }
            let graph: i64 = tx
                .query_one(
                    "INSERT INTO graphs (hash, body, last_used) VALUES ($1, $2, $3)
                     ON CONFLICT (hash) DO UPDATE SET last_used = GREATEST(graphs.last_used, EXCLUDED.last_used)
                     RETURNING id",
                    &[&hash, &body, &chrono::Utc::now().timestamp_millis()],
                )?
                .get(0);
            let key = moved.get(&key).copied().unwrap_or(key);
            tx.execute(
                "INSERT INTO result_graphs (result, graph_id, data) VALUES ($1, $2, $3)
                 ON CONFLICT (result) DO NOTHING",
                &[&key, &graph, &data],
            )?;
        }
        done.before += skipped;
        done.copied -= skipped;
        done.copied += keys.len() as i64;
        tx.execute(
            "INSERT INTO copies (source, last_key, copied) VALUES ($1, $2, $3)
             ON CONFLICT (source) DO UPDATE SET last_key = EXCLUDED.last_key,
                 copied = copies.copied + $4",
            &[
                &source,
                &batch_last,
                &(before + done.copied),
                &(keys.len() as i64),
            ],
        )?;
        tx.commit()?;
        last_key = batch_last;
        progress(&done);
    }
    drop(stmt);

    if !events_done {
        let mut tx = pg.transaction()?;
        // Results kept aside in SQLite (ordered away from their own time) stay findable.
        let mut aside = src.prepare("SELECT uid, result FROM aside")?;
        for row in aside.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))? {
            let (uid, key) = row?;
            let key = moved.get(&key).copied().unwrap_or(key);
            tx.execute(
                "INSERT INTO aside (uid, series_id, result)
                 SELECT $1, series_id, id FROM results WHERE id = $2
                 ON CONFLICT (uid, series_id) DO NOTHING",
                &[&uid, &key],
            )?;
        }
        // Event IDs here → there, for the follow-ups that name them.
        let mut event_ids: HashMap<i64, i64> = HashMap::new();
        let mut events = src.prepare(
            "SELECT at, kind, series_id, from_path, to_path, first_diff_ttl, detail, id FROM events
             ORDER BY id",
        )?;
        for row in events.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })? {
            let (at, kind, series, from_path, to_path, diff, detail, old_id) = row?;
            let path = |p: Option<i64>| p.and_then(|p| ids.paths.get(&p).copied());
            // An event already there (the same history copied before, from elsewhere) is not
            // copied again.
            let new_id = tx.query_opt(
                "INSERT INTO events (at, kind, series_id, from_path, to_path, first_diff_ttl, detail)
                 SELECT $1, $2, $3, $4, $5, $6, $7
                 WHERE NOT EXISTS (SELECT 1 FROM events WHERE series_id = $3 AND at = $1
                                     AND kind = $2 AND from_path IS NOT DISTINCT FROM $4
                                     AND to_path IS NOT DISTINCT FROM $5)
                 RETURNING id",
                &[
                    &at,
                    &kind,
                    &ids.series[&series],
                    &path(from_path),
                    &path(to_path),
                    &diff,
                    &detail,
                ],
            )?;
            if let Some(row) = new_id {
                event_ids.insert(old_id, row.get::<_, i64>(0));
                done.events += 1;
            }
        }
        drop(events);
        done.measurements = measurements(&src, &mut tx, &moved, &event_ids)?;
        tx.execute(
            "INSERT INTO copies (source, last_key, copied, done) VALUES ($1, $2, $3, true)
             ON CONFLICT (source) DO UPDATE SET done = true",
            &[&source, &last_key, &(before + done.copied)],
        )?;
        tx.commit()?;
    }
    let _ = pg.execute("SELECT pg_advisory_unlock($1)", &[&locks::COPY]);
    let _ = pg.execute("SELECT pg_advisory_unlock($1)", &[&locks::RETENTION]);
    Ok(done)
}

/// Copies the on-demand measurements, their runs, which results they hold (at the keys
/// the results were stored at) and the events they follow up (those this run copied);
/// returns how many measurements were new.
fn measurements(
    src: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    moved: &HashMap<i64, i64>,
    event_ids: &HashMap<i64, i64>,
) -> anyhow::Result<i64> {
    let mut copied = 0;
    let mut stmt = src
        .prepare("SELECT id, created_at, deadline, requested_by, spec, flows FROM measurements")?;
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i32>(5)?,
        ))
    })? {
        let (id, created, deadline, by, spec, flows) = row?;
        copied += tx.execute(
            "INSERT INTO measurements (id, created_at, deadline, requested_by, spec, flows)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            &[&id, &created, &deadline, &by, &spec, &flows],
        )? as i64;
    }
    let mut stmt = src.prepare(
        "SELECT measurement, slave, state, updated_at, results, reason FROM measurement_runs",
    )?;
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i32>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })? {
        let (m, slave, state, at, results, reason) = row?;
        tx.execute(
            "INSERT INTO measurement_runs (measurement, slave, state, updated_at, results, reason)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (measurement, slave) DO NOTHING",
            &[&m, &slave, &state, &at, &results, &reason],
        )?;
    }
    let mut stmt = src.prepare("SELECT measurement, result FROM measurement_results")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (m, key) = row?;
        let key = moved.get(&key).copied().unwrap_or(key);
        tx.execute(
            "INSERT INTO measurement_results (measurement, result) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&m, &key],
        )?;
    }
    let mut stmt = src.prepare("SELECT event_id, measurement FROM follow_ups")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (event, m) = row?;
        if let Some(e) = event_ids.get(&event) {
            tx.execute(
                "INSERT INTO follow_ups (event_id, measurement) VALUES ($1, $2)
                 ON CONFLICT (event_id) DO NOTHING",
                &[e, &m],
            )?;
        }
    }
    Ok(copied)
}

/// The first key after `key` in its millisecond (or a later one) that no result has.
fn next_free(tx: &mut postgres::Transaction<'_>, key: i64) -> anyhow::Result<i64> {
    let mut at = codec::key_ms(key);
    loop {
        let top: Option<i64> = tx
            .query_one(
                "SELECT max(id) FROM results WHERE id BETWEEN $1 AND $2",
                &[&codec::key(at, 0), &codec::key(at, codec::PER_MS - 1)],
            )?
            .get(0);
        let n = top.map_or(0, |k| k - codec::key(at, 0) + 1);
        if n < codec::PER_MS {
            return Ok(codec::key(at, n));
        }
        at += 1;
    }
}

/// SQLite row ids of names, paths, routes and series, and the PostgreSQL ids of the same.
struct Ids {
    paths: HashMap<i64, i64>,
    routes: HashMap<i64, i64>,
    series: HashMap<i64, i64>,
}

/// A series row of the SQLite file.
struct SeriesState {
    id: i64,
    slave: i64,
    target: i64,
    flow: i64,
    current: Option<i64>,
    since: Option<i64>,
    candidate: Option<i64>,
    candidate_count: i64,
    candidate_since: Option<i64>,
    measured: Option<i64>,
    last: Option<i64>,
    unreached: i64,
    ever: bool,
    unreachable_alerted: bool,
    rtt_streak: i64,
    rtt_alerted: bool,
    changes: i64,
    success: Option<bool>,
    rtt: Option<i64>,
    branches: Option<String>,
    as_track: Option<String>,
}

/// Finds or makes, in PostgreSQL, every slave, target, path, route and series of the file.
fn dimensions(src: &rusqlite::Connection, pg: &mut postgres::Client) -> anyhow::Result<Ids> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = pg.transaction()?;
    let mut slaves = HashMap::new();
    let mut stmt = src.prepare(
        "SELECT id, name, first_seen, last_seen, last_config, remote_addr, agent, spool_depth,
                dropped_total, results_stored, clock_skew_ms FROM slaves",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, Option<i64>>(10)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, name, first, last, config, remote, agent, depth, dropped, stored, skew) in rows {
        tx.execute(
            "INSERT INTO slaves (name, first_seen, last_seen, last_config, remote_addr, agent,
                                 spool_depth, dropped_total, results_stored, clock_skew_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name) DO NOTHING",
            &[
                &name, &first, &last, &config, &remote, &agent, &depth, &dropped, &stored, &skew,
            ],
        )?;
        let pg_id: i64 = tx
            .query_one("SELECT id FROM slaves WHERE name = $1", &[&name])?
            .get(0);
        slaves.insert(id, pg_id);
    }
    let mut targets = HashMap::new();
    let mut stmt = src.prepare("SELECT id, uuid, name, address FROM targets")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, uuid, name, address) in rows {
        tx.execute(
            "INSERT INTO targets (uuid, name, address) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&uuid, &name, &address],
        )?;
        let pg_id: i64 = tx
            .query_one(
                "SELECT id FROM targets WHERE uuid = $1 AND name = $2 AND address = $3",
                &[&uuid, &name, &address],
            )?
            .get(0);
        targets.insert(id, pg_id);
    }
    let mut paths = HashMap::new();
    let mut stmt =
        src.prepare("SELECT id, hash, canonical, hop_count, terminal, first_seen FROM paths")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, hash, canonical, hops, terminal, first) in rows {
        tx.execute(
            "INSERT INTO paths (hash, canonical, hop_count, terminal, first_seen)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
            &[&hash, &canonical, &hops, &terminal, &first],
        )?;
        let pg_id: i64 = tx
            .query_one("SELECT id FROM paths WHERE hash = $1", &[&hash])?
            .get(0);
        paths.insert(id, pg_id);
    }
    let mut routes = HashMap::new();
    let mut stmt = src.prepare("SELECT id, hash, path_id, body FROM routes")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, hash, path, body) in rows {
        let path = paths[&path];
        let pg_id: i64 = tx
            .query_one(
                "INSERT INTO routes (hash, path_id, body, last_used) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (hash) DO UPDATE SET last_used = GREATEST(routes.last_used, EXCLUDED.last_used)
                 RETURNING id",
                &[&hash, &path, &body, &now],
            )?
            .get(0);
        routes.insert(id, pg_id);
    }
    let mut series = HashMap::new();
    let mut stmt = src.prepare(
        "SELECT id, slave_id, target_id, flow, current_path, current_since, candidate_path,
                candidate_count, candidate_since, last_measured, last_result, unreached_streak,
                ever_reached, unreachable_alerted, rtt_high_streak, rtt_alerted, changes_total,
                last_success, last_rtt_ns, branches, as_track
         FROM series",
    )?;
    let rows: Vec<SeriesState> = stmt
        .query_map([], |r| {
            Ok(SeriesState {
                id: r.get(0)?,
                slave: r.get(1)?,
                target: r.get(2)?,
                flow: r.get(3)?,
                current: r.get(4)?,
                since: r.get(5)?,
                candidate: r.get(6)?,
                candidate_count: r.get(7)?,
                candidate_since: r.get(8)?,
                measured: r.get(9)?,
                last: r.get(10)?,
                unreached: r.get(11)?,
                ever: r.get(12)?,
                unreachable_alerted: r.get(13)?,
                rtt_streak: r.get(14)?,
                rtt_alerted: r.get(15)?,
                changes: r.get(16)?,
                success: r.get(17)?,
                rtt: r.get(18)?,
                branches: r.get(19)?,
                as_track: r.get(20)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for s in rows {
        let (slave, target) = (slaves[&s.slave], targets[&s.target]);
        let path = |p: Option<i64>| p.and_then(|p| paths.get(&p).copied());
        // A series a master on this database already keeps keeps its own state.
        tx.execute(
            "INSERT INTO series (slave_id, target_id, flow, current_path, current_since,
                                 candidate_path, candidate_count, candidate_since, last_measured,
                                 last_result, unreached_streak, ever_reached, unreachable_alerted,
                                 rtt_high_streak, rtt_alerted, changes_total, last_success,
                                 last_rtt_ns, branches, as_track)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                     $19, $20)
             ON CONFLICT (slave_id, target_id, flow) DO NOTHING",
            &[
                &slave,
                &target,
                &s.flow,
                &path(s.current),
                &s.since,
                &path(s.candidate),
                &s.candidate_count,
                &s.candidate_since,
                &s.measured,
                &s.last,
                &s.unreached,
                &s.ever,
                &s.unreachable_alerted,
                &s.rtt_streak,
                &s.rtt_alerted,
                &s.changes,
                &s.success,
                &s.rtt,
                &s.branches,
                &s.as_track,
            ],
        )?;
        let pg_id: i64 = tx
            .query_one(
                "SELECT id FROM series WHERE slave_id = $1 AND target_id = $2 AND flow = $3",
                &[&slave, &target, &s.flow],
            )?
            .get(0);
        series.insert(s.id, pg_id);
    }
    tx.commit()?;
    Ok(Ids {
        paths,
        routes,
        series,
    })
}
