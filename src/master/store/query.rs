//! Reads: each runs on a connection of its own from a small pool (WAL lets readers go on
//! while the writer commits), and unpacks results through caches of the routes and series
//! they name (both are never changed once written).

use super::codec::{self, Route};
use super::graph::Graph;
use super::{
    Cursor, EventQuery, EventView, NewHop, PathSeen, ResultQuery, SeriesFilter, SeriesRow,
    SlaveRecord, StoredResult, StoredTarget,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// Idle read connections kept for the next reader.
const IDLE_READERS: usize = 8;

/// Read connections, opened on demand and kept for reuse; a reader never waits for another.
pub struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Routes and series by row id.
    pub caches: ReadCaches,
}

/// A connection on loan from the pool.
pub struct Reader<'a> {
    pool: &'a Pool,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(c);
            }
        }
    }
}

impl Pool {
    /// A pool over the database file at `path`.
    pub fn new(path: PathBuf) -> Pool {
        Pool {
            path,
            idle: Mutex::new(Vec::new()),
            caches: ReadCaches::default(),
        }
    }

    /// A read connection.
    pub fn get(&self) -> rusqlite::Result<Reader<'_>> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c
            }
        };
        Ok(Reader {
            pool: self,
            conn: Some(conn),
        })
    }
}

/// A route with its path, as results are shown.
pub struct RouteInfo {
    pub(super) route: Route,
    pub(super) path_hash: String,
    pub(super) path_text: String,
}

/// Who a series is.
pub struct SeriesIdent {
    pub(super) slave: String,
    pub(super) target_uuid: String,
    pub(super) target_name: String,
    pub(super) target_address: String,
    pub(super) flow: i64,
}

/// Routes and series by id, shared by every reader.
#[derive(Default)]
pub struct ReadCaches {
    pub(super) routes: RwLock<HashMap<i64, Arc<RouteInfo>>>,
    pub(super) series: RwLock<HashMap<i64, Arc<SeriesIdent>>>,
    /// Graph shapes by id.
    pub(super) graphs: RwLock<HashMap<i64, Arc<Vec<u8>>>>,
}

/// Most entries a read cache keeps before it starts over.
const MAX_CACHED: usize = 100_000;

/// The entry `id` of `map`, loaded (and kept) when missing.
pub(super) fn cached<T>(
    map: &RwLock<HashMap<i64, Arc<T>>>,
    id: i64,
    load: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<Arc<T>> {
    if let Some(v) = map.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
        return Ok(v.clone());
    }
    let v = Arc::new(load()?);
    let mut w = map.write().unwrap_or_else(|p| p.into_inner());
    if w.len() > MAX_CACHED {
        w.clear();
    }
    w.insert(id, v.clone());
    Ok(v)
}

impl ReadCaches {
    fn route(&self, conn: &Connection, id: i64) -> anyhow::Result<Arc<RouteInfo>> {
        cached(&self.routes, id, || {
            let (body, path_hash, path_text): (Vec<u8>, String, String) = conn
                .prepare_cached(
                    "SELECT r.body, p.hash, p.canonical FROM routes r
                     JOIN paths p ON p.id = r.path_id WHERE r.id = ?1",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let route =
                Route::parse(&body).ok_or_else(|| anyhow::anyhow!("route {id} does not decode"))?;
            Ok(RouteInfo {
                route,
                path_hash,
                path_text,
            })
        })
    }

    /// The graph of the multipath result at `key` (`None` when it has none stored).
    fn graph(&self, conn: &Connection, key: i64) -> anyhow::Result<Option<Graph>> {
        let Some((graph_id, data)): Option<(i64, Vec<u8>)> = conn
            .prepare_cached("SELECT graph_id, data FROM result_graphs WHERE result = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
        else {
            return Ok(None);
        };
        let shape = cached(&self.graphs, graph_id, || {
            Ok(conn
                .prepare_cached("SELECT body FROM graphs WHERE id = ?1")?
                .query_row([graph_id], |r| r.get(0))?)
        })?;
        Graph::decode(&shape, &data)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("the graph of result {key} does not decode"))
    }

    fn series(&self, conn: &Connection, id: i64) -> anyhow::Result<Arc<SeriesIdent>> {
        cached(&self.series, id, || {
            Ok(conn
                .prepare_cached(
                    "SELECT s.name, t.uuid, t.name, t.address, se.flow FROM series se
                     JOIN slaves s ON s.id = se.slave_id JOIN targets t ON t.id = se.target_id
                     WHERE se.id = ?1",
                )?
                .query_row([id], |r| {
                    Ok(SeriesIdent {
                        slave: r.get(0)?,
                        target_uuid: r.get(1)?,
                        target_name: r.get(2)?,
                        target_address: r.get(3)?,
                        flow: r.get(4)?,
                    })
                })?)
        })
    }
}

/// One stored row, unpacked for the API.
pub(super) fn unpack(
    conn: &Connection,
    caches: &ReadCaches,
    (key, series_id, route_id, data): Row,
) -> anyhow::Result<StoredResult> {
    let route = caches.route(conn, route_id)?;
    let series = caches.series(conn, series_id)?;
    let mut r = unpack_with(&route, &series, key, &data)?;
    if route.route.multipath {
        r.multipath = caches.graph(conn, key)?;
    }
    Ok(r)
}

/// A stored row (`key`, `data`) of a series on a route, as the API shows it.
pub(super) fn unpack_with(
    route: &RouteInfo,
    series: &SeriesIdent,
    key: i64,
    data: &[u8],
) -> anyhow::Result<StoredResult> {
    let ordered = codec::key_ms(key);
    let (uid, m, date_time) = codec::unpack_row(data, &route.route, ordered)
        .ok_or_else(|| anyhow::anyhow!("result {key} does not decode"))?;
    let r = &route.route;
    Ok(StoredResult {
        id: uuid::Uuid::from_bytes(uid).to_string(),
        slave: series.slave.clone(),
        target_id: series.target_uuid.clone(),
        target_name: series.target_name.clone(),
        target_address: series.target_address.clone(),
        target_known: r.target_known,
        target_selected: r.target_selected,
        date_time,
        measured_at: m.time.ms,
        ordered_at: (ordered != m.time.ms).then_some(ordered),
        duration_ns: m.duration_ns,
        received_at: m.received_at,
        success: r.success,
        hop_count: r.hop_count,
        path_id: route.path_hash.clone(),
        path: route.path_text.clone(),
        protocol: r.protocol.clone(),
        flow: r.has_flow.then_some(series.flow),
        destination: r.destination.clone(),
        unreachable: r.unreachable.clone(),
        error: r.error.clone(),
        origin: super::Origin {
            source: r.source.clone(),
            seen_from: r.seen_from.clone(),
            debug: r.debug,
            measurement: r.measurement.clone(),
        },
        hops: m.hops(r),
        multipath: None,
    })
}

/// The hops of a stored row (`key`, `data`) on a route.
pub(super) fn hops_with(route: &RouteInfo, key: i64, data: &[u8]) -> anyhow::Result<Vec<NewHop>> {
    let (_, m, _) = codec::unpack_row(data, &route.route, codec::key_ms(key))
        .ok_or_else(|| anyhow::anyhow!("result {key} does not decode"))?;
    Ok(m.hops(&route.route))
}

/// The key range of results ordered between `from` and `to` (Unix ms), both included.
pub(super) fn key_range(from: i64, to: i64) -> (i64, i64) {
    let hi = if to < codec::EPOCH_MS {
        -1
    } else {
        codec::key(to, codec::PER_MS - 1)
    };
    (codec::key(from, 0), hi)
}

/// The bounds (below `before`, from, to) of a results query on keys.
pub(super) fn result_bounds(q: &ResultQuery) -> (i64, i64, i64) {
    let before = q.before.map_or(i64::MAX, |c| c.0);
    let from = q.from.map_or(0, |t| codec::key(t, 0));
    let from = q.until.map_or(from, |c| from.max(c.0));
    let to = q.to.map_or(i64::MAX, |t| {
        if t < codec::EPOCH_MS {
            -1
        } else {
            codec::key(t, codec::PER_MS - 1)
        }
    });
    (before, from, to)
}

/// Paths seen by a series, from (route, first key, last key, count) per route: merged by
/// path, oldest first, keys turned into times.
pub(super) fn merge_paths(rows: Vec<(Arc<RouteInfo>, i64, i64, i64)>) -> Vec<PathSeen> {
    let mut by_path: HashMap<String, PathSeen> = HashMap::new();
    for (route, first, last, count) in rows {
        let e = by_path
            .entry(route.path_hash.clone())
            .or_insert_with(|| PathSeen {
                path_id: route.path_hash.clone(),
                path: route.path_text.clone(),
                first_seen: i64::MAX,
                last_seen: i64::MIN,
                count: 0,
            });
        e.first_seen = e.first_seen.min(first);
        e.last_seen = e.last_seen.max(last);
        e.count += count;
    }
    let mut out: Vec<PathSeen> = by_path.into_values().collect();
    out.sort_by_key(|p| p.first_seen);
    for p in &mut out {
        p.first_seen = codec::key_ms(p.first_seen);
        p.last_seen = codec::key_ms(p.last_seen);
    }
    out
}

pub(super) type Row = (i64, i64, i64, Vec<u8>);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// A filter's list of slaves as the JSON array `json_each` reads.
fn names_json(f: &SeriesFilter) -> Option<String> {
    f.slaves
        .as_ref()
        .map(|n| serde_json::to_string(n).unwrap_or_default())
}

/// The series ids a slave/target/flow filter names; `None` when nothing filters.
fn series_ids(conn: &Connection, f: &SeriesFilter) -> rusqlite::Result<Option<Vec<i64>>> {
    if f.slave.is_none() && f.slaves.is_none() && f.target.is_none() && f.flow.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT se.id FROM series se JOIN slaves s ON s.id = se.slave_id
         JOIN targets t ON t.id = se.target_id
         WHERE (?1 IS NULL OR s.name = ?1) AND (?2 IS NULL OR t.uuid = ?2 OR t.name = ?2)
           AND (?3 IS NULL OR se.flow = ?3)
           AND (?4 IS NULL OR s.name IN (SELECT value FROM json_each(?4)))",
    )?;
    let ids = stmt
        .query_map(params![f.slave, f.target, f.flow, names_json(f)], |r| {
            r.get(0)
        })?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(Some(ids))
}

/// The SQL condition on `series_id` of a series filter's ids; `None` when none match.
pub(super) fn series_clause(ids: &Option<Vec<i64>>) -> Option<String> {
    match ids {
        None => Some(String::new()),
        Some(ids) if ids.is_empty() => None,
        Some(ids) if ids.len() == 1 => Some(format!("AND series_id = {}", ids[0])),
        Some(ids) => Some(format!(
            "AND series_id IN ({})",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        )),
    }
}

/// Results newest first, and the cursor of the next page.
pub fn results(
    conn: &Connection,
    caches: &ReadCaches,
    q: &ResultQuery,
) -> anyhow::Result<(Vec<StoredResult>, Option<Cursor>)> {
    let filter = SeriesFilter {
        slave: q.slave.clone(),
        slaves: q.slaves.clone(),
        target: q.target.clone(),
        flow: None,
    };
    let Some(clause) = series_clause(&series_ids(conn, &filter)?) else {
        return Ok((Vec::new(), None));
    };
    let sql = format!(
        "SELECT id, series_id, route_id, data FROM results
         WHERE id < ?1 AND id >= ?2 AND id <= ?3 {clause} ORDER BY id DESC LIMIT ?4 OFFSET ?5"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let (before, from, to) = result_bounds(q);
    let rows = stmt
        .query_map(params![before, from, to, q.limit, q.offset], row)?
        .collect::<Result<Vec<_>, _>>()?;
    let next = (rows.len() as u32 == q.limit && q.limit > 0)
        .then(|| rows.last().map(|r| Cursor(r.0)))
        .flatten();
    let out = rows
        .into_iter()
        .map(|r| unpack(conn, caches, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((out, next))
}

/// Every slave in the store (not marked configured: the caller knows the config).
pub fn slaves(conn: &Connection) -> rusqlite::Result<Vec<SlaveRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, first_seen, last_seen, last_config, remote_addr, agent, results_stored,
                spool_depth, dropped_total, clock_skew_ms FROM slaves ORDER BY name",
    )?;
    stmt.query_map([], |r| {
        Ok(SlaveRecord {
            name: r.get(0)?,
            first_seen: Some(r.get(1)?),
            last_seen: Some(r.get(2)?),
            last_config: r.get(3)?,
            remote_addr: r.get(4)?,
            version: r.get(5)?,
            results_stored: r.get(6)?,
            spool_depth: r.get(7)?,
            dropped_total: r.get(8)?,
            clock_skew_ms: r.get(9)?,
            configured: false,
        })
    })?
    .collect()
}

/// Every target results named.
pub fn targets(conn: &Connection) -> rusqlite::Result<Vec<StoredTarget>> {
    let mut stmt = conn
        .prepare_cached("SELECT uuid, name, address FROM targets ORDER BY name, uuid, address")?;
    stmt.query_map([], |r| {
        Ok(StoredTarget {
            uuid: r.get(0)?,
            name: r.get(1)?,
            address: r.get(2)?,
        })
    })?
    .collect()
}

/// The series matching `f`. Of a target whose address or name changed (one series per
/// address it had), only the current series: the one whose result came last.
pub fn series(conn: &Connection, f: &SeriesFilter) -> rusqlite::Result<Vec<SeriesRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT se.id, s.name, t.uuid, t.name, t.address, se.flow, p.hash, p.canonical,
                se.current_since, se.last_measured, se.changes_total, p.hop_count,
                se.last_success, se.last_rtt_ns
         FROM series se JOIN slaves s ON s.id = se.slave_id JOIN targets t ON t.id = se.target_id
         LEFT JOIN paths p ON p.id = se.current_path
         WHERE (?1 IS NULL OR s.name = ?1) AND (?2 IS NULL OR t.uuid = ?2 OR t.name = ?2)
           AND (?3 IS NULL OR se.flow = ?3)
           AND (?4 IS NULL OR s.name IN (SELECT value FROM json_each(?4)))
           -- On-demand results form series of their own that no query of paths shows.
           AND t.uuid <> 'on-demand'
           AND (t.uuid = '' OR NOT EXISTS (
                -- Targets first (few share a UUID), then the series by its unique key.
                SELECT 1 FROM targets t2 CROSS JOIN series s2
                WHERE t2.uuid = t.uuid AND t2.id <> t.id
                  AND s2.slave_id = se.slave_id AND s2.target_id = t2.id AND s2.flow = se.flow
                  AND (coalesce(s2.last_measured, -1), s2.id)
                    > (coalesce(se.last_measured, -1), se.id)))
         ORDER BY s.name, t.name, se.flow",
    )?;
    stmt.query_map(params![f.slave, f.target, f.flow, names_json(f)], |r| {
        let hash: Option<String> = r.get(6)?;
        let text: Option<String> = r.get(7)?;
        Ok(SeriesRow {
            id: r.get(0)?,
            slave: r.get(1)?,
            target_id: r.get(2)?,
            target_name: r.get(3)?,
            target_address: r.get(4)?,
            flow: r.get(5)?,
            current_path: hash.zip(text),
            current_since: r.get(8)?,
            last_measured: r.get(9)?,
            changes_total: r.get(10)?,
            current_hops: r.get(11)?,
            last_success: r.get(12)?,
            last_rtt_ns: r.get(13)?,
        })
    })?
    .collect()
}

/// The hops of each result of a series from `since` on.
pub fn series_hops(
    conn: &Connection,
    caches: &ReadCaches,
    series: i64,
    since: i64,
) -> anyhow::Result<Vec<Vec<NewHop>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, route_id, data FROM results WHERE series_id = ?1 AND id >= ?2 ORDER BY id",
    )?;
    let rows = stmt
        .query_map(params![series, codec::key(since, 0)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(key, route_id, data)| hops_with(&*caches.route(conn, route_id)?, key, &data))
        .collect()
}

/// The distinct paths of a series in a time range, oldest first.
pub fn path_history(
    conn: &Connection,
    caches: &ReadCaches,
    series: i64,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<PathSeen>> {
    let mut stmt = conn.prepare_cached(
        "SELECT route_id, min(id), max(id), count(*) FROM results
         WHERE series_id = ?1 AND id BETWEEN ?2 AND ?3 GROUP BY route_id",
    )?;
    let (lo, hi) = key_range(from, to);
    let rows = stmt
        .query_map(params![series, lo, hi], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let rows = rows
        .into_iter()
        .map(|(route_id, first, last, count)| {
            Ok((caches.route(conn, route_id)?, first, last, count))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(merge_paths(rows))
}

/// Change events, newest first.
pub fn events(conn: &Connection, q: &EventQuery) -> rusqlite::Result<Vec<EventView>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.id, e.at, e.kind, s.name, t.uuid, t.name, se.flow, fp.hash, fp.canonical,
                tp.hash, tp.canonical, e.first_diff_ttl, e.detail
         FROM events e JOIN series se ON se.id = e.series_id
         JOIN slaves s ON s.id = se.slave_id JOIN targets t ON t.id = se.target_id
         LEFT JOIN paths fp ON fp.id = e.from_path LEFT JOIN paths tp ON tp.id = e.to_path
         WHERE e.id < ?1 AND (?2 IS NULL OR s.name = ?2) AND (?3 IS NULL OR t.uuid = ?3 OR t.name = ?3)
           AND (?4 IS NULL OR se.flow = ?4) AND (?5 IS NULL OR e.kind = ?5)
           AND e.at >= ?6 AND e.at <= ?7
           AND (?9 IS NULL OR s.name IN (SELECT value FROM json_each(?9)))
         ORDER BY e.id DESC LIMIT ?8",
    )?;
    stmt.query_map(
        params![
            q.before_id.unwrap_or(i64::MAX),
            q.series.slave,
            q.series.target,
            q.series.flow,
            q.kind,
            q.from.unwrap_or(i64::MIN),
            q.to.unwrap_or(i64::MAX),
            q.limit,
            names_json(&q.series)
        ],
        |r| {
            let fp: (Option<String>, Option<String>) = (r.get(7)?, r.get(8)?);
            let tp: (Option<String>, Option<String>) = (r.get(9)?, r.get(10)?);
            Ok(EventView {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                slave: r.get(3)?,
                target_id: r.get(4)?,
                target_name: r.get(5)?,
                flow: r.get(6)?,
                from_path: fp.0.zip(fp.1),
                to_path: tp.0.zip(tp.1),
                first_diff_ttl: r.get(11)?,
                detail: r.get(12)?,
            })
        },
    )?
    .collect()
}

/// Database size in bytes (without the WAL).
pub fn storage_bytes(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        [],
        |r| r.get(0),
    )
}
