//! Reads on PostgreSQL: the same queries as SQLite's, on pooled connections, unpacked by the
//! same code. Routes and series never change once written and their ids are never reused,
//! so the read caches hold across masters too.

use super::super::query::{
    ReadCaches, RouteInfo, SeriesIdent, cached, hops_with, key_range, merge_paths, result_bounds,
    series_clause, unpack_with,
};
use super::super::{
    Cursor, EventQuery, EventView, NewHop, PathSeen, ResultQuery, SeriesFilter, SeriesRow,
    SlaveRecord, StoredResult, StoredTarget, codec,
};
use postgres::GenericClient;
use std::sync::Arc;

fn route(
    c: &mut impl GenericClient,
    caches: &ReadCaches,
    id: i64,
) -> anyhow::Result<Arc<RouteInfo>> {
    cached(&caches.routes, id, || {
        let row = c.query_one(
            "SELECT r.body, p.hash, p.canonical FROM routes r
             JOIN paths p ON p.id = r.path_id WHERE r.id = $1",
            &[&id],
        )?;
        let body: Vec<u8> = row.get(0);
        let route = codec::Route::parse(&body)
            .ok_or_else(|| anyhow::anyhow!("route {id} does not decode"))?;
        Ok(RouteInfo {
            route,
            path_hash: row.get(1),
            path_text: row.get(2),
        })
    })
}

/// `r` (stored at `key` on `route`) with its graph, when it is a multipath result.
fn unpack_graph(
    c: &mut impl GenericClient,
    caches: &ReadCaches,
    route: &RouteInfo,
    mut r: StoredResult,
    key: i64,
) -> anyhow::Result<StoredResult> {
    if !route.route.multipath {
        return Ok(r);
    }
    let Some(row) = c.query_opt(
        "SELECT graph_id, data FROM result_graphs WHERE result = $1",
        &[&key],
    )?
    else {
        return Ok(r);
    };
    let graph_id: i64 = row.get(0);
    let data: Vec<u8> = row.get(1);
    let shape = cached(&caches.graphs, graph_id, || {
        Ok(
            c.query_one("SELECT body FROM graphs WHERE id = $1", &[&graph_id])?
                .get::<_, Vec<u8>>(0),
        )
    })?;
    r.multipath = Some(
        super::super::graph::Graph::decode(&shape, &data)
            .ok_or_else(|| anyhow::anyhow!("the graph of result {key} does not decode"))?,
    );
    Ok(r)
}

fn series_ident(
    c: &mut impl GenericClient,
    caches: &ReadCaches,
    id: i64,
) -> anyhow::Result<Arc<SeriesIdent>> {
    cached(&caches.series, id, || {
        let r = c.query_one(
            "SELECT s.name, t.uuid, t.name, t.address, se.flow FROM series se
             JOIN slaves s ON s.id = se.slave_id JOIN targets t ON t.id = se.target_id
             WHERE se.id = $1",
            &[&id],
        )?;
        Ok(SeriesIdent {
            slave: r.get(0),
            target_uuid: r.get(1),
            target_name: r.get(2),
            target_address: r.get(3),
            flow: r.get(4),
        })
    })
}

fn series_ids(c: &mut impl GenericClient, f: &SeriesFilter) -> anyhow::Result<Option<Vec<i64>>> {
    if f.slave.is_none() && f.slaves.is_none() && f.target.is_none() && f.flow.is_none() {
        return Ok(None);
    }
    let rows = c.query(
        "SELECT se.id FROM series se JOIN slaves s ON s.id = se.slave_id
         JOIN targets t ON t.id = se.target_id
         WHERE ($1::TEXT IS NULL OR s.name = $1) AND ($2::TEXT IS NULL OR t.uuid = $2 OR t.name = $2)
           AND ($3::BIGINT IS NULL OR se.flow = $3)
           AND ($4::TEXT[] IS NULL OR s.name = ANY($4))",
        &[&f.slave, &f.target, &f.flow, &f.slaves],
    )?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// Results newest first, and the cursor of the next page.
pub fn results(
    c: &mut impl GenericClient,
    caches: &ReadCaches,
    q: &ResultQuery,
) -> anyhow::Result<(Vec<StoredResult>, Option<Cursor>)> {
    let filter = SeriesFilter {
        slave: q.slave.clone(),
        slaves: q.slaves.clone(),
        target: q.target.clone(),
        flow: None,
    };
    let Some(clause) = series_clause(&series_ids(c, &filter)?) else {
        return Ok((Vec::new(), None));
    };
    let sql = format!(
        "SELECT id, series_id, route_id, data FROM results
         WHERE id < $1 AND id >= $2 AND id <= $3 {clause} ORDER BY id DESC LIMIT $4 OFFSET $5"
    );
    let (before, from, to) = result_bounds(q);
    let rows = c.query(
        &sql,
        &[
            &before,
            &from,
            &to,
            &i64::from(q.limit),
            &i64::from(q.offset),
        ],
    )?;
    let next = (rows.len() as u32 == q.limit && q.limit > 0)
        .then(|| rows.last().map(|r| Cursor(r.get(0))))
        .flatten();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let key: i64 = r.get(0);
        let route = route(c, caches, r.get(2))?;
        let series = series_ident(c, caches, r.get(1))?;
        out.push(unpack_graph(
            c,
            caches,
            &route,
            unpack_with(&route, &series, key, r.get(3))?,
            key,
        )?);
    }
    Ok((out, next))
}

/// Every slave in the store.
pub fn slaves(c: &mut impl GenericClient) -> anyhow::Result<Vec<SlaveRecord>> {
    let rows = c.query(
        "SELECT name, first_seen, last_seen, last_config, remote_addr, agent, results_stored,
                spool_depth, dropped_total, clock_skew_ms FROM slaves ORDER BY name",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| SlaveRecord {
            name: r.get(0),
            first_seen: Some(r.get(1)),
            last_seen: Some(r.get(2)),
            last_config: r.get(3),
            remote_addr: r.get(4),
            version: r.get(5),
            results_stored: r.get(6),
            spool_depth: r.get(7),
            dropped_total: r.get(8),
            clock_skew_ms: r.get(9),
            configured: false,
        })
        .collect())
}

/// Every target results named.
pub fn targets(c: &mut impl GenericClient) -> anyhow::Result<Vec<StoredTarget>> {
    let rows = c.query(
        "SELECT uuid, name, address FROM targets ORDER BY name, uuid, address",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| StoredTarget {
            uuid: r.get(0),
            name: r.get(1),
            address: r.get(2),
        })
        .collect())
}

/// The series matching `f`. Of a target whose address or name changed (one series per
/// address it had), only the current series: the one whose result came last.
pub fn series(c: &mut impl GenericClient, f: &SeriesFilter) -> anyhow::Result<Vec<SeriesRow>> {
    let rows = c.query(
        "SELECT se.id, s.name, t.uuid, t.name, t.address, se.flow, p.hash, p.canonical,
                se.current_since, se.last_measured, se.changes_total, p.hop_count,
                se.last_success, se.last_rtt_ns
         FROM series se JOIN slaves s ON s.id = se.slave_id JOIN targets t ON t.id = se.target_id
         LEFT JOIN paths p ON p.id = se.current_path
         WHERE ($1::TEXT IS NULL OR s.name = $1) AND ($2::TEXT IS NULL OR t.uuid = $2 OR t.name = $2)
           AND ($3::BIGINT IS NULL OR se.flow = $3)
           AND ($4::TEXT[] IS NULL OR s.name = ANY($4))
           -- On-demand results form series of their own that no query of paths shows.
           AND t.uuid <> 'on-demand'
           AND (t.uuid = '' OR NOT EXISTS (
                SELECT 1 FROM targets t2 JOIN series s2 ON s2.target_id = t2.id
                WHERE t2.uuid = t.uuid AND t2.id <> t.id
                  AND s2.slave_id = se.slave_id AND s2.flow = se.flow
                  AND (coalesce(s2.last_measured, -1), s2.id)
                    > (coalesce(se.last_measured, -1), se.id)))
         ORDER BY s.name, t.name, se.flow",
        &[&f.slave, &f.target, &f.flow, &f.slaves],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let hash: Option<String> = r.get(6);
            let text: Option<String> = r.get(7);
            SeriesRow {
                id: r.get(0),
                slave: r.get(1),
                target_id: r.get(2),
                target_name: r.get(3),
                target_address: r.get(4),
                flow: r.get(5),
                current_path: hash.zip(text),
                current_since: r.get(8),
                last_measured: r.get(9),
                changes_total: r.get(10),
                current_hops: r.get(11),
                last_success: r.get(12),
                last_rtt_ns: r.get(13),
            }
        })
        .collect())
}

/// The hops of each result of a series from `since` on.
pub fn series_hops(
    c: &mut impl GenericClient,
    caches: &ReadCaches,
    series: i64,
    since: i64,
) -> anyhow::Result<Vec<Vec<NewHop>>> {
    let rows = c.query(
        "SELECT id, route_id, data FROM results WHERE series_id = $1 AND id >= $2 ORDER BY id",
        &[&series, &codec::key(since, 0)],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let route = route(c, caches, r.get(1))?;
        out.push(hops_with(&route, r.get(0), r.get(2))?);
    }
    Ok(out)
}

/// The distinct paths of a series in a time range, oldest first.
pub fn path_history(
    c: &mut impl GenericClient,
    caches: &ReadCaches,
    series: i64,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<PathSeen>> {
    let (lo, hi) = key_range(from, to);
    let rows = c.query(
        "SELECT route_id, min(id), max(id), count(*) FROM results
         WHERE series_id = $1 AND id BETWEEN $2 AND $3 GROUP BY route_id",
        &[&series, &lo, &hi],
    )?;
    let mut seen = Vec::with_capacity(rows.len());
    for r in rows {
        seen.push((route(c, caches, r.get(0))?, r.get(1), r.get(2), r.get(3)));
    }
    Ok(merge_paths(seen))
}

/// Change events, newest first.
pub fn events(c: &mut impl GenericClient, q: &EventQuery) -> anyhow::Result<Vec<EventView>> {
    let rows = c.query(
        "SELECT e.id, e.at, e.kind, s.name, t.uuid, t.name, se.flow, fp.hash, fp.canonical,
                tp.hash, tp.canonical, e.first_diff_ttl, e.detail
         FROM events e JOIN series se ON se.id = e.series_id
         JOIN slaves s ON s.id = se.slave_id JOIN targets t ON t.id = se.target_id
         LEFT JOIN paths fp ON fp.id = e.from_path LEFT JOIN paths tp ON tp.id = e.to_path
         WHERE e.id < $1 AND ($2::TEXT IS NULL OR s.name = $2)
           AND ($3::TEXT IS NULL OR t.uuid = $3 OR t.name = $3)
           AND ($4::BIGINT IS NULL OR se.flow = $4) AND ($5::TEXT IS NULL OR e.kind = $5)
           AND e.at >= $6 AND e.at <= $7
           AND ($9::TEXT[] IS NULL OR s.name = ANY($9))
         ORDER BY e.id DESC LIMIT $8",
        &[
            &q.before_id.unwrap_or(i64::MAX),
            &q.series.slave,
            &q.series.target,
            &q.series.flow,
            &q.kind,
            &q.from.unwrap_or(i64::MIN),
            &q.to.unwrap_or(i64::MAX),
            &i64::from(q.limit),
            &q.series.slaves,
        ],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let fp: (Option<String>, Option<String>) = (r.get(7), r.get(8));
            let tp: (Option<String>, Option<String>) = (r.get(9), r.get(10));
            EventView {
                id: r.get(0),
                at: r.get(1),
                kind: r.get(2),
                slave: r.get(3),
                target_id: r.get(4),
                target_name: r.get(5),
                flow: r.get(6),
                from_path: fp.0.zip(fp.1),
                to_path: tp.0.zip(tp.1),
                first_diff_ttl: r.get(11),
                detail: r.get(12),
            }
        })
        .collect())
}

/// The stored results of measurement `id`, oldest first.
pub fn measurement_results(
    c: &mut impl GenericClient,
    caches: &ReadCaches,
    id: &str,
) -> anyhow::Result<Vec<StoredResult>> {
    let rows = c.query(
        "SELECT r.id, r.series_id, r.route_id, r.data FROM measurement_results mr
         JOIN results r ON r.id = mr.result WHERE mr.measurement = $1 ORDER BY r.id",
        &[&id],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let route = route(c, caches, r.get(2))?;
        let series = series_ident(c, caches, r.get(1))?;
        let key: i64 = r.get(0);
        out.push(unpack_graph(
            c,
            caches,
            &route,
            unpack_with(&route, &series, key, r.get(3))?,
            key,
        )?);
    }
    Ok(out)
}

/// The measurement `id` with its runs.
pub fn measurement(
    c: &mut impl GenericClient,
    id: &str,
) -> anyhow::Result<Option<super::super::MeasurementRecord>> {
    let Some(head) = c.query_opt(
        "SELECT created_at, deadline, requested_by, spec,
                (SELECT min(event_id) FROM follow_ups WHERE measurement = $1)
         FROM measurements WHERE id = $1",
        &[&id],
    )?
    else {
        return Ok(None);
    };
    let spec: String = head.get(3);
    let runs = c
        .query(
            "SELECT slave, state, updated_at, results, reason FROM measurement_runs
             WHERE measurement = $1 ORDER BY slave",
            &[&id],
        )?
        .iter()
        .map(|r| super::super::RunRecord {
            slave: r.get(0),
            state: r.get(1),
            updated_at: r.get(2),
            results: i64::from(r.get::<_, i32>(3)),
            reason: r.get(4),
        })
        .collect();
    Ok(Some(super::super::MeasurementRecord {
        id: id.to_owned(),
        created_at: head.get(0),
        deadline: head.get(1),
        requested_by: head.get(2),
        event: head.get(4),
        spec: serde_json::from_str(&spec)?,
        runs,
    }))
}
