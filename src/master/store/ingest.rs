//! The writer: one thread owns the write connection and takes the results of every request
//! from a queue, so concurrent requests share a transaction and its one disk sync (group
//! commit). A request is answered only after the commit that holds its results. Each job runs
//! in its own savepoint, so one that fails leaves the others of its group stored.

use super::codec::{self, Measures, Route, SlaveTime};
use super::graph::{Branches, Graph};
use super::schema;
use super::{EventRecord, NewResult, Outcome, Stored};
/// Where a submission's answer goes.
pub type Reply = tokio::sync::oneshot::Sender<Result<Vec<Outcome>, String>>;
use crate::master::analysis::{self, AsHops, AsTrack, Candidate, Event, Observation, State};
use crate::master::path::Path as NetPath;
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};

/// Most results committed in one transaction.
const MAX_GROUP: usize = 4000;
/// Cached names, paths and routes kept before the caches start over.
const MAX_CACHED: usize = 100_000;

/// Work run on the writer's connection.
pub type Exec = Box<dyn FnOnce(&Connection, &mut Caches) + Send>;

/// Work for the writer.
pub enum Job {
    /// Store these results; answer when durable.
    Insert(
        Vec<Prepared>,
        tokio::sync::oneshot::Sender<Result<Vec<Outcome>, String>>,
    ),
    /// A slave was seen.
    Touch(Touch),
    /// A slave reported its spool.
    Status(Status),
    /// Anything else that writes (retention), inside the group's transaction; answered
    /// (with no outcomes) after the commit.
    Exec(
        Exec,
        tokio::sync::oneshot::Sender<Result<Vec<Outcome>, String>>,
    ),
}

impl Job {
    fn results(&self) -> Option<usize> {
        match self {
            Job::Insert(r, _) => Some(r.len()),
            _ => None,
        }
    }
}

/// A slave was seen (the same for every engine's writer).
pub struct Touch {
    /// Its name.
    pub name: String,
    /// Its address.
    pub remote: String,
    /// What it said it runs.
    pub agent: Option<String>,
    /// It fetched its config.
    pub config: bool,
    /// When, Unix ms.
    pub at: i64,
}

impl Touch {
    /// `name` seen now from `remote`.
    pub fn now(name: &str, remote: &str, agent: Option<&str>, config: bool) -> Touch {
        Touch {
            name: name.to_owned(),
            remote: remote.to_owned(),
            agent: agent.map(str::to_owned),
            config,
            at: now_ms(),
        }
    }
}

/// A slave reported its spool (the same for every engine's writer).
pub struct Status {
    /// Its name.
    pub name: String,
    /// Results waiting there.
    pub spool_depth: Option<i64>,
    /// Results it dropped in all.
    pub dropped_total: Option<i64>,
    /// When, Unix ms.
    pub at: i64,
}

impl Status {
    /// What `name` reports now.
    pub fn now(name: &str, spool_depth: Option<u64>, dropped_total: Option<u64>) -> Status {
        let clamp = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
        Status {
            name: name.to_owned(),
            spool_depth: clamp(spool_depth),
            dropped_total: clamp(dropped_total),
            at: now_ms(),
        }
    }
}

/// Takes `results` apart on the calling thread and hands them to a writer with `send`
/// (false: the writer has stopped), waiting first for room in `queue`.
pub fn submit(
    queue: &Queue,
    results: Vec<NewResult>,
    send: impl FnOnce(Vec<Prepared>, Reply) -> bool,
) -> super::Ticket {
    let (tx, ticket) = super::Ticket::channel();
    let now = now_ms();
    match results
        .into_iter()
        .map(|r| Prepared::new(r, now))
        .collect::<Result<Vec<_>, String>>()
    {
        Ok(p) => {
            let n = p.len();
            queue.enter(n);
            if !send(p, tx) {
                queue.done(n);
            }
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    }
    ticket
}

/// The next group for a writer: `first` and whatever else waits, up to `max` results
/// (`results` counts a job's results, `None` for other work, which counts as one); also how
/// many results the group holds.
pub fn gather<J>(
    first: J,
    jobs: &Receiver<J>,
    results: impl Fn(&J) -> Option<usize>,
    max: usize,
) -> (Vec<J>, usize) {
    let weight = |j: &J| results(j).map_or(1, |n| n.max(1));
    let mut held = results(&first).unwrap_or(0);
    let mut n = weight(&first);
    let mut group = vec![first];
    while n < max {
        match jobs.try_recv() {
            Ok(job) => {
                n += weight(&job);
                held += results(&job).unwrap_or(0);
                group.push(job);
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    (group, held)
}

/// A result made ready for the writer on the submitting thread: parsing, hashing and packing
/// happen there, in parallel, so the one writer thread only runs SQL.
pub struct Prepared {
    pub(super) uid: [u8; 16],
    pub(super) slave: String,
    pub(super) target: (String, String, String),
    pub(super) flow: i64,
    pub(super) path: NetPath,
    pub(super) path_hash: String,
    pub(super) path_text: String,
    pub(super) route_body: Vec<u8>,
    pub(super) route_hash: [u8; 16],
    pub(super) measures: Measures,
    pub(super) verbatim: Option<String>,
    pub(super) success: bool,
    pub(super) destination_rtt_ns: Option<i64>,
    pub(super) rtt_alert_ns: Option<i64>,
    /// The on-demand measurement it belongs to: counted there, fed to no change detection.
    pub(super) measurement: Option<String>,
    /// A multipath result's graph, with its stored parts.
    pub(super) graph: Option<PreparedGraph>,
    /// Its AS path, when the master has an AS table.
    pub(super) as_hops: Option<AsHops>,
}

/// A graph made ready to store: its shape (stored once, by hash) and its numbers.
pub struct PreparedGraph {
    pub(super) graph: Graph,
    pub(super) shape: Vec<u8>,
    pub(super) hash: [u8; 16],
    pub(super) data: Vec<u8>,
}

impl PreparedGraph {
    fn new(graph: Graph) -> PreparedGraph {
        let shape = graph.shape();
        PreparedGraph {
            hash: Route::hash(&shape),
            data: graph.data(),
            shape,
            graph,
        }
    }
}

impl Prepared {
    /// Takes `r` apart, received at `now` (Unix ms).
    pub fn new(r: NewResult, now: i64) -> Result<Prepared, String> {
        let time = SlaveTime::parse(&r.date_time).ok_or("DateTime is not RFC 3339")?;
        let route_body = Route::of(&r).body();
        let measurement = r.origin.measurement.clone();
        let graph = r.multipath.clone().map(PreparedGraph::new);
        let destination_rtt_ns = r.destination_rtt_ns();
        let path_text = r.path.canonical();
        let measures = Measures {
            time,
            ordered_ms: schema::ordered_at(time.ms, now),
            received_at: now,
            duration_ns: r.duration_ns,
            hops: r.hops.into_iter().map(|h| (h.rtt_ns, h.replies)).collect(),
        };
        Ok(Prepared {
            measurement,
            graph,
            uid: schema::uid_bytes(&r.result_id),
            slave: r.slave,
            target: (r.target_uuid, r.target_name, r.target_address),
            flow: r.flow.unwrap_or(0),
            path_hash: NetPath::hash_of(&path_text),
            path_text,
            path: r.path,
            route_hash: Route::hash(&route_body),
            route_body,
            measures,
            verbatim: (time.style == codec::VERBATIM).then_some(r.date_time),
            success: r.success,
            destination_rtt_ns,
            rtt_alert_ns: r.rtt_alert_ns,
            as_hops: r.as_hops,
        })
    }
}

/// A series as the writer keeps it between results.
struct Series {
    id: i64,
    state: State,
    last_ordered: Option<i64>,
}

/// What the writer remembers to spare lookups; all of it can be reloaded from the database.
#[derive(Default)]
pub struct Caches {
    slaves: HashMap<String, i64>,
    targets: HashMap<(String, String, String), i64>,
    paths: HashMap<String, i64>,
    path_text: HashMap<i64, NetPath>,
    /// The next free counter of each recent millisecond (only the writer inserts results).
    keys: HashMap<i64, i64>,
    routes: HashMap<[u8; 16], i64>,
    graphs: HashMap<[u8; 16], i64>,
    series: HashMap<(i64, i64, i64), Series>,
    /// The other target rows with a series' target UUID (a target whose address or name
    /// changed), by series key; forgotten whenever a series is made.
    siblings: HashMap<(i64, i64, i64), Vec<i64>>,
    /// Routes results used since retention began a sweep (kept when the rest is cleared).
    pub routes_used: Option<std::collections::HashSet<i64>>,
}

impl Caches {
    /// Forgets everything (after a rollback, or when rows were deleted).
    pub fn clear(&mut self) {
        let used = self.routes_used.take();
        *self = Caches::default();
        self.routes_used = used;
    }

    fn trim(&mut self) {
        if self.paths.len() > MAX_CACHED
            || self.routes.len() > MAX_CACHED
            || self.graphs.len() > MAX_CACHED
            || self.series.len() > MAX_CACHED
            || self.targets.len() > MAX_CACHED
            || self.keys.len() > MAX_CACHED
        {
            self.clear();
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs the writer until every sender is gone.
pub fn run(mut conn: Connection, jobs: Receiver<Job>, confirm: u32, queue: Arc<Queue>) {
    let mut caches = Caches::default();
    while let Ok(first) = jobs.recv() {
        let (group, results) = gather(first, &jobs, Job::results, MAX_GROUP);
        write_group(&mut conn, group, &mut caches, confirm);
        queue.done(results);
        caches.trim();
    }
}

/// Most results waiting for the writer: beyond, submitters wait (on their worker thread, so
/// the HTTP layer slows down) instead of the queue growing without bound when the disk is
/// slower than the slaves.
pub const MAX_QUEUED: usize = 20_000;

/// How many results are on their way to the writer.
#[derive(Default)]
pub struct Queue {
    queued: Mutex<usize>,
    room: Condvar,
}

impl Queue {
    /// Waits until `n` more results fit (a submission larger than the whole queue goes in
    /// alone), then counts them.
    pub fn enter(&self, n: usize) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        while *q > 0 && *q + n > MAX_QUEUED {
            q = self.room.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        *q += n;
    }

    /// `n` results are written (or failed).
    pub fn done(&self, n: usize) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        *q = q.saturating_sub(n);
        self.room.notify_all();
    }
}

/// One transaction for a group of jobs; each job answers after the commit.
fn write_group(conn: &mut Connection, group: Vec<Job>, caches: &mut Caches, confirm: u32) {
    let mut answers = Vec::new();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        fail_all(group, &format!("cannot begin a transaction: {e}"));
        return;
    }
    for job in group {
        let done = in_savepoint(conn, caches, |conn, caches| match job {
            Job::Insert(results, reply) => {
                let now = now_ms();
                let mut out = Vec::with_capacity(results.len());
                let mut seen: HashMap<i64, (i64, i64)> = HashMap::new();
                for r in results {
                    match insert(conn, caches, r, now, confirm) {
                        Ok((o, slave, skew)) => {
                            if matches!(o.0, Stored::New(_)) {
                                let e = seen.entry(slave).or_default();
                                e.0 += 1;
                                e.1 = skew;
                            }
                            out.push(o);
                        }
                        Err(e) => return Err((format!("{e:#}"), Some(reply))),
                    }
                }
                // One update a slave for the whole job.
                for (slave, (stored, skew)) in seen {
                    let r = conn
                        .prepare_cached(
                            "UPDATE slaves SET last_seen = max(last_seen, ?2),
                                    results_stored = results_stored + ?3, clock_skew_ms = ?4
                             WHERE id = ?1",
                        )
                        .and_then(|mut st| st.execute(params![slave, now, stored, skew]));
                    if let Err(e) = r {
                        return Err((e.to_string(), Some(reply)));
                    }
                }
                Ok(Some((reply, out)))
            }
            Job::Touch(Touch {
                name,
                remote,
                agent,
                config,
                at,
            }) => {
                let id = slave_id(conn, caches, &name, at).map_err(|e| (e.to_string(), None))?;
                conn.prepare_cached(
                    "UPDATE slaves SET remote_addr = ?2, agent = COALESCE(?3, agent),
                            last_config = CASE WHEN ?4 THEN ?5 ELSE last_config END,
                            last_seen = max(last_seen, ?5)
                     WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, remote, agent, config, at]))
                .map_err(|e| (e.to_string(), None))?;
                Ok(None)
            }
            Job::Status(Status {
                name,
                spool_depth,
                dropped_total,
                at,
            }) => {
                let id = slave_id(conn, caches, &name, at).map_err(|e| (e.to_string(), None))?;
                conn.prepare_cached(
                    "UPDATE slaves SET spool_depth = COALESCE(?2, spool_depth),
                            dropped_total = COALESCE(?3, dropped_total) WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, spool_depth, dropped_total]))
                .map_err(|e| (e.to_string(), None))?;
                Ok(None)
            }
            Job::Exec(f, reply) => {
                f(conn, caches);
                Ok(Some((reply, Vec::new())))
            }
        });
        match done {
            Ok(Some(answer)) => answers.push(Ok(answer)),
            Ok(None) => {}
            Err((e, reply)) => {
                log::error!("store: {e}");
                if let Some(reply) = reply {
                    answers.push(Err((reply, e)));
                }
            }
        }
    }
    let committed = conn.execute_batch("COMMIT");
    if let Err(e) = &committed {
        log::error!("store: commit failed: {e}");
        let _ = conn.execute_batch("ROLLBACK");
        caches.clear();
    }
    for a in answers {
        match (a, &committed) {
            (Ok((reply, out)), Ok(())) => {
                let _ = reply.send(Ok(out));
            }
            (Ok((reply, _)), Err(e)) => {
                let _ = reply.send(Err(format!("commit failed: {e}")));
            }
            (Err((reply, e)), _) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

type JobError = (String, Option<Reply>);

/// Runs `f` in a savepoint: kept when it succeeds, undone (and the caches, which may hold
/// its rows, forgotten) when it fails.
fn in_savepoint<T>(
    conn: &Connection,
    caches: &mut Caches,
    f: impl FnOnce(&Connection, &mut Caches) -> Result<T, JobError>,
) -> Result<T, JobError> {
    conn.execute_batch("SAVEPOINT job")
        .map_err(|e| (format!("savepoint: {e}"), None))?;
    match f(conn, caches) {
        Ok(v) => {
            conn.execute_batch("RELEASE job")
                .map_err(|e| (format!("release: {e}"), None))?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            caches.clear();
            Err(e)
        }
    }
}

fn fail_all(group: Vec<Job>, why: &str) {
    log::error!("store: {why}");
    for job in group {
        if let Job::Insert(_, reply) | Job::Exec(_, reply) = job {
            let _ = reply.send(Err(why.to_owned()));
        }
    }
}

fn slave_id(conn: &Connection, caches: &mut Caches, name: &str, now: i64) -> rusqlite::Result<i64> {
    if let Some(id) = caches.slaves.get(name) {
        return Ok(*id);
    }
    conn.prepare_cached(
        "INSERT INTO slaves (name, first_seen, last_seen) VALUES (?1, ?2, ?2)
         ON CONFLICT (name) DO NOTHING",
    )?
    .execute(params![name, now])?;
    let id = conn
        .prepare_cached("SELECT id FROM slaves WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    caches.slaves.insert(name.to_owned(), id);
    Ok(id)
}

fn target_id(
    conn: &Connection,
    caches: &mut Caches,
    key: &(String, String, String),
) -> rusqlite::Result<i64> {
    if let Some(id) = caches.targets.get(key) {
        return Ok(*id);
    }
    conn.prepare_cached("INSERT OR IGNORE INTO targets (uuid, name, address) VALUES (?1, ?2, ?3)")?
        .execute(params![key.0, key.1, key.2])?;
    let id = conn
        .prepare_cached("SELECT id FROM targets WHERE uuid = ?1 AND name = ?2 AND address = ?3")?
        .query_row(params![key.0, key.1, key.2], |row| row.get(0))?;
    caches.targets.insert(key.clone(), id);
    Ok(id)
}

fn path_id(
    conn: &Connection,
    caches: &mut Caches,
    p: &Prepared,
    now: i64,
) -> rusqlite::Result<i64> {
    if let Some(id) = caches.paths.get(&p.path_hash) {
        return Ok(*id);
    }
    conn.prepare_cached(
        "INSERT OR IGNORE INTO paths (hash, canonical, hop_count, terminal, first_seen)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        p.path_hash,
        p.path_text,
        p.path.hops.len() as i64,
        p.path.terminal.as_text(),
        now
    ])?;
    let id: i64 = conn
        .prepare_cached("SELECT id FROM paths WHERE hash = ?1")?
        .query_row([&p.path_hash], |row| row.get(0))?;
    caches.path_text.insert(id, p.path.clone());
    caches.paths.insert(p.path_hash.clone(), id);
    Ok(id)
}

fn path_by_id(
    conn: &Connection,
    caches: &mut Caches,
    id: Option<i64>,
) -> rusqlite::Result<Option<(i64, NetPath)>> {
    let Some(id) = id else { return Ok(None) };
    if let Some(p) = caches.path_text.get(&id) {
        return Ok(Some((id, p.clone())));
    }
    let text: String = conn
        .prepare_cached("SELECT canonical FROM paths WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    let Some(path) = NetPath::parse_canonical(&text) else {
        return Ok(None);
    };
    caches.path_text.insert(id, path.clone());
    Ok(Some((id, path)))
}

fn route_id(
    conn: &Connection,
    caches: &mut Caches,
    p: &Prepared,
    path_id: i64,
) -> rusqlite::Result<i64> {
    if let Some(id) = caches.routes.get(&p.route_hash) {
        return Ok(*id);
    }
    let id = schema::route_row(conn, &p.route_body, &p.route_hash, path_id)?;
    caches.routes.insert(p.route_hash, id);
    Ok(id)
}

/// The series of (slave, target, flow), loaded into the cache when new to it.
fn series<'c>(
    conn: &Connection,
    caches: &'c mut Caches,
    key: (i64, i64, i64),
) -> rusqlite::Result<&'c mut Series> {
    if !caches.series.contains_key(&key) {
        let made = conn
            .prepare_cached(
                "INSERT OR IGNORE INTO series (slave_id, target_id, flow) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key.0, key.1, key.2])?;
        if made > 0 {
            caches.siblings.clear();
        }
        let row = conn
            .prepare_cached(
                "SELECT id, last_measured, current_path, candidate_path, candidate_count,
                        candidate_since, unreached_streak, ever_reached, unreachable_alerted,
                        rtt_high_streak, rtt_alerted, branches, as_track
                 FROM series WHERE slave_id = ?1 AND target_id = ?2 AND flow = ?3",
            )?
            .query_row(params![key.0, key.1, key.2], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, u32>(6)?,
                    r.get::<_, bool>(7)?,
                    r.get::<_, bool>(8)?,
                    r.get::<_, u32>(9)?,
                    r.get::<_, bool>(10)?,
                    r.get::<_, Option<String>>(11)?,
                    r.get::<_, Option<String>>(12)?,
                ))
            })?;
        let current = path_by_id(conn, caches, row.2)?;
        let candidate = path_by_id(conn, caches, row.3)?.map(|(path_id, path)| Candidate {
            path_id,
            path,
            count: row.4,
            since: row.5.unwrap_or(0),
        });
        caches.series.insert(
            key,
            Series {
                id: row.0,
                last_ordered: row.1,
                state: State {
                    current,
                    candidate,
                    unreached_streak: row.6,
                    ever_reached: row.7,
                    unreachable_alerted: row.8,
                    rtt_high_streak: row.9,
                    rtt_alerted: row.10,
                    branches: branches_of(row.11.as_deref()),
                    as_path: as_track_of(row.12.as_deref()),
                },
            },
        );
    }
    Ok(caches.series.get_mut(&key).expect("inserted above"))
}

/// A series' stored set of branches (none: no multipath result yet, or unreadable, which
/// only starts the set over).
pub(super) fn branches_of(text: Option<&str>) -> Branches {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// The stored form of a series' set of branches: NULL while it has none.
pub(super) fn branches_text(b: &Branches) -> Option<String> {
    (*b != Branches::default()).then(|| serde_json::to_string(b).unwrap_or_default())
}

/// A series' stored AS-path detector (none yet, or unreadable, which starts it over).
pub(super) fn as_track_of(text: Option<&str>) -> AsTrack {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// The stored form of a series' AS-path detector: NULL while it has seen no AS path.
pub(super) fn as_track_text(t: &AsTrack) -> Option<String> {
    (*t != AsTrack::default()).then(|| serde_json::to_string(t).unwrap_or_default())
}

/// Is a result with this ID already stored? A resend has the same series and time, so the
/// series index finds it (within the spill of a full millisecond); results ordered elsewhere
/// are found in `aside`.
fn stored_before(
    conn: &Connection,
    series_id: i64,
    measured_ms: i64,
    uid: &[u8; 16],
) -> rusqlite::Result<bool> {
    let at = measured_ms;
    let mut stmt = conn.prepare_cached(
        "SELECT 1 FROM results WHERE series_id = ?1 AND id BETWEEN ?2 AND ?3
           AND substr(data, 1, 16) = ?4",
    )?;
    if stmt.exists(params![
        series_id,
        codec::key(at, 0),
        codec::key(at.saturating_add(codec::SPILL_MS - 1), codec::PER_MS - 1),
        &uid[..]
    ])? {
        return Ok(true);
    }
    conn.prepare_cached("SELECT 1 FROM aside WHERE uid = ?1 AND series_id = ?2")?
        .exists(params![&uid[..], series_id])
}

/// Stores one result (once per ID) and feeds it to its series; also gives the slave's row
/// and its clock skew (ms) by this result.
fn insert(
    conn: &Connection,
    caches: &mut Caches,
    mut p: Prepared,
    now: i64,
    confirm: u32,
) -> anyhow::Result<(Outcome, i64, i64)> {
    let slave = slave_id(conn, caches, &p.slave, now)?;
    let target = target_id(conn, caches, &p.target)?;
    let series_id = series(conn, caches, (slave, target, p.flow))?.id;
    let time = p.measures.time;
    // The slave's clock against ours: the end of its trace against the arrival.
    let skew = time.ms + p.measures.duration_ns.unwrap_or(0) / 1_000_000 - p.measures.received_at;
    if stored_before(conn, series_id, time.ms, &p.uid)? {
        return Ok(((Stored::Duplicate, Vec::new()), slave, skew));
    }
    let path = path_id(conn, caches, &p, now)?;
    let route = route_id(conn, caches, &p, path)?;
    if let Some(used) = &mut caches.routes_used {
        used.insert(route);
    }
    let key = schema::insert_row(
        conn,
        &mut caches.keys,
        (series_id, route),
        &p.uid,
        &mut p.measures,
        p.verbatim.as_deref(),
    )?;
    if let Some(m) = &p.measurement {
        super::measurements::result_stored(conn, m, &p.slave, key, now)?;
    }
    if let Some(g) = &p.graph {
        let id = match caches.graphs.get(&g.hash) {
            Some(id) => *id,
            None => {
                let id = schema::graph_row(conn, &g.shape, &g.hash)?;
                caches.graphs.insert(g.hash, id);
                id
            }
        };
        conn.prepare_cached(
            "INSERT INTO result_graphs (result, graph_id, data) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![key, id, &g.data])?;
    }
    let events = track(
        conn,
        caches,
        &p,
        (slave, target, p.flow),
        (path, key),
        confirm,
    )?;
    Ok(((Stored::New(key), events), slave, skew))
}

/// Feeds a stored result to its series' change detection and records the events. A result
/// ordered before the series' newest is stored but not fed (a late backlog must not flip the
/// current path back).
fn track(
    conn: &Connection,
    caches: &mut Caches,
    r: &Prepared,
    key: (i64, i64, i64),
    (path_id, row): (i64, i64),
    confirm: u32,
) -> anyhow::Result<Vec<EventRecord>> {
    let at = r.measures.ordered_ms;
    // On-demand results change no series' state: they only have to be found.
    if r.measurement.is_some() {
        return Ok(Vec::new());
    }
    let s = series(conn, caches, key)?;
    if s.last_ordered.is_some_and(|last| at < last) {
        return Ok(Vec::new());
    }
    let mut taken_over = None;
    if !r.target.0.is_empty() {
        let own = (s.id, s.last_ordered);
        let mut others = Vec::new();
        for t in siblings(conn, caches, key, &r.target.0)? {
            let sib = series(conn, caches, (key.0, t, key.2))?;
            others.push((t, sib.id, sib.last_ordered));
        }
        match takeover(own, others.iter().map(|o| (o.1, o.2)), at) {
            Takeover::Current => {}
            Takeover::Late => return Ok(Vec::new()),
            Takeover::From(id) => {
                let t = others.iter().find(|o| o.1 == id).map_or(0, |o| o.0);
                let state = series(conn, caches, (key.0, t, key.2))?.state.clone();
                let (name, address) = conn
                    .prepare_cached("SELECT name, address FROM targets WHERE id = ?1")?
                    .query_row([t], |row| Ok((row.get(0)?, row.get(1)?)))?;
                taken_over = Some((state, name, address));
            }
        }
    }
    let s = series(conn, caches, key)?;
    let series_id = s.id;
    let mut head = Vec::new();
    if let Some((state, from_name, from_address)) = taken_over {
        s.state = state;
        head.push(Event::TargetChange {
            from_name,
            from_address,
            to_name: r.target.1.clone(),
            to_address: r.target.2.clone(),
        });
    }
    let Advance {
        mut events,
        changes,
        since,
        filled,
    } = advance(&mut s.state, r, path_id, at, confirm);
    if !head.is_empty() {
        head.append(&mut events);
        events = head;
    }
    s.last_ordered = Some(at);
    let state = s.state.clone();
    conn.prepare_cached(
        "UPDATE series SET
            current_path = ?2,
            current_since = CASE WHEN current_path IS ?2 OR ?17 THEN current_since ELSE ?3 END,
            candidate_path = ?4, candidate_count = ?5, candidate_since = ?6,
            last_measured = ?7, last_result = ?8,
            unreached_streak = ?9, ever_reached = ?10, unreachable_alerted = ?11,
            rtt_high_streak = ?12, rtt_alerted = ?13, changes_total = changes_total + ?14,
            last_success = ?15, last_rtt_ns = ?16, branches = ?18, as_track = ?19
         WHERE id = ?1",
    )?
    .execute(params![
        series_id,
        state.current.as_ref().map(|c| c.0),
        since,
        state.candidate.as_ref().map(|c| c.path_id),
        state.candidate.as_ref().map_or(0, |c| c.count),
        state.candidate.as_ref().map(|c| c.since),
        at,
        row,
        state.unreached_streak,
        state.ever_reached,
        state.unreachable_alerted,
        state.rtt_high_streak,
        state.rtt_alerted,
        changes,
        r.success,
        r.destination_rtt_ns,
        filled,
        branches_text(&state.branches),
        as_track_text(&state.as_path)
    ])?;
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        let (from_path, to_path, first_diff) = event_paths(&event);
        conn.prepare_cached(
            "INSERT INTO events (at, kind, series_id, from_path, to_path, first_diff_ttl, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            at,
            event.kind(),
            series_id,
            from_path,
            to_path,
            first_diff,
            serde_json::to_string(&event).unwrap_or_default()
        ])?;
        let id = conn.last_insert_rowid();
        let from = path_by_id(conn, caches, from_path)?.map(|(_, p)| p.canonical());
        let to = path_by_id(conn, caches, to_path)?.map(|(_, p)| p.canonical());
        records.push(EventRecord {
            id,
            at,
            slave: r.slave.clone(),
            target_id: r.target.0.clone(),
            target_name: r.target.1.clone(),
            flow: key.2,
            from,
            to,
            event,
        });
    }
    Ok(records)
}

/// The other target rows of a series' target UUID for the same slave and flow.
fn siblings(
    conn: &Connection,
    caches: &mut Caches,
    key: (i64, i64, i64),
    uuid: &str,
) -> rusqlite::Result<Vec<i64>> {
    if let Some(s) = caches.siblings.get(&key) {
        return Ok(s.clone());
    }
    let found = conn
        .prepare_cached(
            "SELECT t.id FROM targets t CROSS JOIN series se
             WHERE t.uuid = ?3 AND t.id <> ?4
               AND se.slave_id = ?1 AND se.target_id = t.id AND se.flow = ?2",
        )?
        .query_map(params![key.0, key.2, uuid, key.1], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    caches.siblings.insert(key, found.clone());
    Ok(found)
}

/// What a result fed to one of a target's series makes of the target's other series (one
/// per address it had). The current one is the one whose result came last (the newest
/// `last_ordered`, then the highest id), as the queries see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Takeover {
    /// This series is the current one (or the only one): feed it.
    Current,
    /// Another series is current and newer than this result (a late result of the old
    /// address): store it, do not feed it.
    Late,
    /// The series with this id was current until now: this one takes over its state.
    From(i64),
}

/// Decides the [`Takeover`] of a result ordered at `at` for series `own` (id, newest
/// ordered) among `others`.
pub(super) fn takeover(
    own: (i64, Option<i64>),
    others: impl Iterator<Item = (i64, Option<i64>)>,
    at: i64,
) -> Takeover {
    let rank = |(id, last): (i64, Option<i64>)| (last.unwrap_or(i64::MIN), id);
    let Some(newest) = others.filter(|o| o.1.is_some()).max_by_key(|o| rank(*o)) else {
        return Takeover::Current;
    };
    if rank(own) > rank(newest) {
        Takeover::Current
    } else if newest.1.is_some_and(|last| at <= last) {
        Takeover::Late
    } else {
        Takeover::From(newest.0)
    }
}

/// What feeding one result to its series' change detection gave.
pub(super) struct Advance {
    /// The events, in order.
    pub events: Vec<Event>,
    /// How many of them are path changes.
    pub changes: i64,
    /// Since when the current path holds, should it be new (the result's time otherwise).
    pub since: i64,
    /// The current path was swapped for a variant of the same route with more hops
    /// answering: no change, its `since` stays.
    pub filled: bool,
}

/// Feeds result `r` (on path row `path_id`) to a series' state: the step both engines share.
/// `at`: where the result is ordered.
pub(super) fn advance(
    state: &mut State,
    r: &Prepared,
    path_id: i64,
    at: i64,
    confirm: u32,
) -> Advance {
    let before = state.current.clone();
    let mut events = analysis::observe(
        state,
        &Observation {
            path_id,
            path: r.path.clone(),
            at,
            rtt_ns: r.destination_rtt_ns,
            rtt_alert_ns: r.rtt_alert_ns,
        },
        confirm,
    );
    let mut changes = events.iter().filter(|e| e.kind() == "path-change").count() as i64;
    let current_changed = changes > 0 || state.current.as_ref().is_some_and(|c| c.0 == path_id);
    if let Some(g) = &r.graph {
        // A multipath target's route is its set of branches: flow 0 moving to another
        // branch of it is no change, a branch gone or new is. A round that did not reach
        // the destination is told by `unreachable`, not by every branch beyond the break.
        events.retain(|e| !matches!(e, Event::PathChange { .. }));
        changes = 0;
        if r.success {
            let change = state.branches.observe(&g.graph, confirm);
            if !change.lost.is_empty() {
                events.push(Event::BranchLost {
                    branches: change.lost,
                });
                changes += 1;
            }
            if !change.new.is_empty() {
                events.push(Event::BranchNew {
                    branches: change.new,
                });
                changes += 1;
            }
        }
    }
    // The AS path, when the master has an AS table: of reached results only (a break is
    // `unreachable`'s to tell, and would cut the AS path short).
    if let Some(hops) = &r.as_hops
        && r.success
        && let Some(e) = analysis::observe_as(&mut state.as_path, hops, at, confirm)
    {
        events.push(e);
    }
    let since = if current_changed {
        events
            .iter()
            .find_map(|e| match e {
                Event::PathChange { since, .. } => Some(*since),
                _ => None,
            })
            .unwrap_or(at)
    } else {
        at
    };
    let filled = changes == 0
        && matches!((&before, &state.current), (Some((a, pa)), Some((b, pb)))
            if a != b && analysis::same_route(pa, pb));
    Advance {
        events,
        changes,
        since,
        filled,
    }
}

/// The path columns of an event: (from, to, first differing TTL) for path changes.
pub(super) fn event_paths(event: &Event) -> (Option<i64>, Option<i64>, Option<i64>) {
    match event {
        Event::PathChange {
            from_path,
            to_path,
            first_diff_ttl,
            ..
        } => (
            Some(*from_path),
            Some(*to_path),
            Some(*first_diff_ttl as i64),
        ),
        _ => (None, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_whose_result_came_last_is_current() {
        let t = |own, others: &[(i64, Option<i64>)], at| takeover(own, others.iter().copied(), at);
        // Alone, or the newest: fed as usual.
        assert_eq!(t((1, None), &[], 5), Takeover::Current);
        assert_eq!(t((2, Some(9)), &[(1, Some(4))], 10), Takeover::Current);
        // A sibling that never got a result does not count.
        assert_eq!(t((2, None), &[(1, None)], 10), Takeover::Current);
        // The first result of a new address takes over the newest sibling...
        assert_eq!(
            t((3, None), &[(1, Some(4)), (2, Some(7))], 8),
            Takeover::From(2)
        );
        // ...unless it is older than that sibling's newest: a late result of the old address.
        assert_eq!(t((1, Some(4)), &[(2, Some(7))], 6), Takeover::Late);
        assert_eq!(t((1, Some(4)), &[(2, Some(7))], 7), Takeover::Late);
        // Equal times: the higher id is current, as the queries say.
        assert_eq!(t((2, Some(7)), &[(1, Some(7))], 7), Takeover::Current);
        assert_eq!(t((1, Some(7)), &[(2, Some(7))], 8), Takeover::From(2));
    }

    #[test]
    fn a_full_queue_holds_submitters_until_the_writer_catches_up() {
        let queue = Arc::new(Queue::default());
        queue.enter(MAX_QUEUED - 10);
        // A submission larger than the room left waits...
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                queue.enter(500);
                tx.send(()).unwrap();
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "entered a full queue");
        // ...until the writer has written enough.
        queue.done(1000);
        rx.recv().unwrap();
        waiting.join().unwrap();
        assert_eq!(*queue.queued.lock().unwrap(), MAX_QUEUED - 10 - 1000 + 500);
        // One submission larger than the whole queue goes in when the queue is empty.
        queue.done(MAX_QUEUED);
        queue.enter(MAX_QUEUED * 2);
        assert_eq!(*queue.queued.lock().unwrap(), MAX_QUEUED * 2);
    }
}
