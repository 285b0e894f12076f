//! The PostgreSQL writer: as with SQLite, one thread per master takes the results of every
//! request from a queue and commits them in groups. What differs is that other masters
//! write the same tables at the same time:
//!
//! - the names, paths, routes and series a group needs are made first, each in its own
//!   short statement, so a group's transaction takes no lock on them;
//! - the group's transaction locks its series rows (in id order) before it reads their
//!   change-detection state, so results of one series reaching two masters are fed one after
//!   the other, exactly as one master would; then the slaves' rows, also in id order, so
//!   two masters' groups never wait on each other in a cycle;
//! - a result's ordering key is claimed with `ON CONFLICT DO NOTHING`, moving on when
//!   another master took it;
//! - a group that fails (a deadlock the server broke, a row retention removed under a
//!   cached id) is retried with cold caches, then job by job, so one bad job fails alone.

use super::super::codec;
use super::super::ingest::{Prepared, Queue, advance, event_paths};
use super::super::{EventRecord, Outcome, Stored};
use crate::master::analysis::{Candidate, State};
use crate::master::path::Path as NetPath;
use postgres::{Client, GenericClient, Statement};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};

/// Most results committed in one transaction.
const MAX_GROUP: usize = 2000;
/// Cached names, paths and routes kept before the caches start over.
const MAX_CACHED: usize = 100_000;
/// How stale a route's `last_used` may be before this master refreshes it.
pub const ROUTE_TOUCH_MS: i64 = 10 * 60 * 1000;
/// Tries of a whole group before its jobs are tried one by one.
const GROUP_TRIES: usize = 3;

type Reply = tokio::sync::oneshot::Sender<Result<Vec<Outcome>, String>>;

/// Work for the writer.
pub enum Job {
    /// Store these results; answer when durable.
    Insert(Vec<Prepared>, Reply),
    /// A slave was seen.
    Touch {
        /// Its name.
        name: String,
        /// Its address.
        remote: String,
        /// What it said it runs.
        agent: Option<String>,
        /// It fetched its config.
        config: bool,
        /// When, Unix ms.
        at: i64,
    },
    /// A slave reported its spool.
    Status {
        /// Its name.
        name: String,
        /// Results waiting there.
        spool_depth: Option<i64>,
        /// Results it dropped in all.
        dropped_total: Option<i64>,
        /// When, Unix ms.
        at: i64,
    },
}

impl Job {
    fn results(&self) -> usize {
        match self {
            Job::Insert(r, _) => r.len().max(1),
            _ => 1,
        }
    }

    fn slave(&self) -> Option<&str> {
        match self {
            Job::Insert(..) => None,
            Job::Touch { name, .. } | Job::Status { name, .. } => Some(name),
        }
    }
}

/// Ids this master has looked up; every one can be looked up again.
#[derive(Default)]
struct Caches {
    slaves: HashMap<String, i64>,
    targets: HashMap<(String, String, String), i64>,
    paths: HashMap<String, i64>,
    path_text: HashMap<i64, NetPath>,
    /// Route id and the `last_used` this master last wrote.
    routes: HashMap<[u8; 16], (i64, i64)>,
    series: HashMap<(i64, i64, i64), i64>,
    /// The next counter of recent milliseconds (a hint: other masters take keys too).
    keys: HashMap<i64, i64>,
}

impl Caches {
    fn trim(&mut self) {
        if self.paths.len() > MAX_CACHED
            || self.routes.len() > MAX_CACHED
            || self.series.len() > MAX_CACHED
            || self.targets.len() > MAX_CACHED
            || self.keys.len() > MAX_CACHED
        {
            *self = Caches::default();
        }
    }
}

/// The writer's connection and what it keeps.
pub struct Writer {
    connect: Box<dyn FnMut() -> anyhow::Result<Client> + Send>,
    client: Option<Client>,
    statements: HashMap<&'static str, Statement>,
    caches: Caches,
    confirm: u32,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Ids of one result, made before its group's transaction.
#[derive(Clone, Copy)]
struct Ids {
    slave: i64,
    series: i64,
    path: i64,
    route: i64,
}

/// A series while a group holds its row lock.
struct Live {
    state: State,
    last_ordered: Option<i64>,
    current_since: Option<i64>,
    last_result: Option<i64>,
    last_success: Option<bool>,
    last_rtt_ns: Option<i64>,
    changes: i64,
    dirty: bool,
}

/// What a group does to a slave's row, summed over its jobs.
#[derive(Default)]
struct SlaveUpdate {
    last_seen: Option<i64>,
    stored: i64,
    skew: Option<i64>,
    remote: Option<(String, i64)>,
    agent: Option<String>,
    last_config: Option<i64>,
    status: Option<(Option<i64>, Option<i64>, i64)>,
}

impl Writer {
    /// A writer that connects with `connect` (now, and again whenever the connection is lost).
    pub fn new(
        mut connect: Box<dyn FnMut() -> anyhow::Result<Client> + Send>,
        confirm: u32,
    ) -> anyhow::Result<Writer> {
        let client = connect()?;
        Ok(Writer {
            connect,
            client: Some(client),
            statements: HashMap::new(),
            caches: Caches::default(),
            confirm: confirm.max(1),
        })
    }

    /// Runs until every sender is gone.
    pub fn run(mut self, jobs: Receiver<Job>, queue: Arc<Queue>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            let mut n = group[0].results();
            while n < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => {
                        n += job.results();
                        group.push(job);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let results: usize = group
                .iter()
                .map(|j| match j {
                    Job::Insert(r, _) => r.len(),
                    _ => 0,
                })
                .sum();
            self.write_group(group);
            queue.done(results);
            self.caches.trim();
        }
    }

    /// Commits a group, retrying it and then its jobs alone; answers every insert.
    fn write_group(&mut self, group: Vec<Job>) {
        let mut last = String::new();
        for attempt in 0..GROUP_TRIES {
            match self.try_jobs(&group) {
                Ok(outcomes) => {
                    answer(group, outcomes.into_iter().map(Ok).collect());
                    return;
                }
                Err(e) => {
                    last = format!("{e:#}");
                    log::warn!(
                        "store: a group of {} jobs failed (try {}): {last}",
                        group.len(),
                        attempt + 1
                    );
                    self.recover();
                }
            }
        }
        if group.len() == 1 {
            log::error!("store: {last}");
            answer(group, vec![Err(last)]);
            return;
        }
        let mut outcomes = Vec::with_capacity(group.len());
        for job in &group {
            let one = std::slice::from_ref(job);
            let mut done = self.try_jobs(one);
            if done.is_err() {
                self.recover();
                done = self.try_jobs(one);
            }
            outcomes.push(match done {
                Ok(mut o) => Ok(o.pop().unwrap_or_default()),
                Err(e) => {
                    log::error!("store: {e:#}");
                    self.recover();
                    Err(format!("{e:#}"))
                }
            });
        }
        answer(group, outcomes);
    }

    /// After a failure: forget every cached id, and reconnect when the connection is gone.
    fn recover(&mut self) {
        self.caches = Caches::default();
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.statements.clear();
            match (self.connect)() {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    log::error!("store: cannot reconnect to the database: {e:#}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    /// One transaction for `jobs`; each job's outcomes (empty for non-inserts), in order.
    fn try_jobs(&mut self, jobs: &[Job]) -> anyhow::Result<Vec<Vec<Outcome>>> {
        let Writer {
            client,
            statements,
            caches,
            confirm,
            ..
        } = self;
        let client = client
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection to the database"))?;
        let now = now_ms();
        // Names, paths, routes and series first, outside the transaction.
        let mut ids: Vec<Vec<Ids>> = Vec::with_capacity(jobs.len());
        let mut slave_ids: HashMap<String, i64> = HashMap::new();
        for job in jobs {
            let mut these = Vec::new();
            match job {
                Job::Insert(results, _) => {
                    for r in results {
                        these.push(resolve(client, statements, caches, r, now)?);
                    }
                }
                _ => {
                    let name = job.slave().unwrap_or_default();
                    let id = slave_id(client, statements, caches, name, now)?;
                    slave_ids.insert(name.to_owned(), id);
                }
            }
            ids.push(these);
        }
        let mut tx = client.transaction()?;
        // Lock the series in id order and read their state.
        let mut series_ids: Vec<i64> = ids.iter().flatten().map(|i| i.series).collect();
        series_ids.sort_unstable();
        series_ids.dedup();
        let mut live: HashMap<i64, Live> = HashMap::with_capacity(series_ids.len());
        if !series_ids.is_empty() {
            let rows = tx.query(
                "SELECT id, last_measured, current_path, candidate_path, candidate_count,
                        candidate_since, unreached_streak, ever_reached, unreachable_alerted,
                        rtt_high_streak, rtt_alerted, current_since, last_result, last_success,
                        last_rtt_ns
                 FROM series WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&series_ids],
            )?;
            for r in rows {
                let current = path_by_id(&mut tx, statements, caches, r.get(2))?;
                let candidate =
                    path_by_id(&mut tx, statements, caches, r.get(3))?.map(|(path_id, path)| {
                        Candidate {
                            path_id,
                            path,
                            count: r.get::<_, i64>(4) as u32,
                            since: r.get::<_, Option<i64>>(5).unwrap_or(0),
                        }
                    });
                live.insert(
                    r.get(0),
                    Live {
                        state: State {
                            current,
                            candidate,
                            unreached_streak: r.get::<_, i64>(6) as u32,
                            ever_reached: r.get(7),
                            unreachable_alerted: r.get(8),
                            rtt_high_streak: r.get::<_, i64>(9) as u32,
                            rtt_alerted: r.get(10),
                        },
                        last_ordered: r.get(1),
                        current_since: r.get(11),
                        last_result: r.get(12),
                        last_success: r.get(13),
                        last_rtt_ns: r.get(14),
                        changes: 0,
                        dirty: false,
                    },
                );
            }
        }
        let mut slaves: BTreeMap<i64, SlaveUpdate> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (job, ids) in jobs.iter().zip(&ids) {
            let mut out = Vec::new();
            match job {
                Job::Insert(results, _) => {
                    for (r, ids) in results.iter().zip(ids) {
                        let s = live
                            .get_mut(&ids.series)
                            .ok_or_else(|| anyhow::anyhow!("series {} vanished", ids.series))?;
                        let (outcome, skew) =
                            insert(&mut tx, statements, caches, s, r, *ids, *confirm)?;
                        if matches!(outcome.0, Stored::New(_)) {
                            let u = slaves.entry(ids.slave).or_default();
                            u.stored += 1;
                            u.skew = Some(skew);
                            u.last_seen = u.last_seen.max(Some(now));
                        }
                        out.push(outcome);
                    }
                }
                Job::Touch {
                    name,
                    remote,
                    agent,
                    config,
                    at,
                } => {
                    let u = slaves.entry(slave_ids[name.as_str()]).or_default();
                    u.last_seen = u.last_seen.max(Some(*at));
                    u.remote = Some((remote.clone(), *at));
                    if agent.is_some() {
                        u.agent = agent.clone();
                    }
                    if *config {
                        u.last_config = u.last_config.max(Some(*at));
                    }
                }
                Job::Status {
                    name,
                    spool_depth,
                    dropped_total,
                    at,
                } => {
                    let u = slaves.entry(slave_ids[name.as_str()]).or_default();
                    u.status = Some((*spool_depth, *dropped_total, *at));
                }
            }
            outcomes.push(out);
        }
        // Write back the series (in id order), then the slaves (in id order).
        let mut dirty: Vec<(&i64, &Live)> = live.iter().filter(|(_, s)| s.dirty).collect();
        dirty.sort_unstable_by_key(|(id, _)| **id);
        for (id, s) in dirty {
            let st = prepare(&mut tx, statements, UPDATE_SERIES)?;
            let state = &s.state;
            tx.execute(
                &st,
                &[
                    id,
                    &state.current.as_ref().map(|c| c.0),
                    &s.current_since,
                    &state.candidate.as_ref().map(|c| c.path_id),
                    &state.candidate.as_ref().map_or(0, |c| i64::from(c.count)),
                    &state.candidate.as_ref().map(|c| c.since),
                    &s.last_ordered,
                    &s.last_result,
                    &i64::from(state.unreached_streak),
                    &state.ever_reached,
                    &state.unreachable_alerted,
                    &i64::from(state.rtt_high_streak),
                    &state.rtt_alerted,
                    &s.changes,
                    &s.last_success,
                    &s.last_rtt_ns,
                ],
            )?;
        }
        for (id, u) in &slaves {
            let st = prepare(&mut tx, statements, UPDATE_SLAVE)?;
            let (remote, remote_at) = u
                .remote
                .as_ref()
                .map_or((None, None), |(r, at)| (Some(r.as_str()), Some(*at)));
            let (depth, dropped, status_at) = u
                .status
                .map_or((None, None, None), |(d, t, at)| (d, t, Some(at)));
            tx.execute(
                &st,
                &[
                    id,
                    &u.last_seen,
                    &u.stored,
                    &u.skew,
                    &remote,
                    &remote_at,
                    &u.agent,
                    &u.last_config,
                    &depth,
                    &dropped,
                    &status_at,
                ],
            )?;
        }
        tx.commit()?;
        Ok(outcomes)
    }
}

const UPDATE_SERIES: &str = "UPDATE series SET
    current_path = $2, current_since = $3,
    candidate_path = $4, candidate_count = $5, candidate_since = $6,
    last_measured = $7, last_result = $8,
    unreached_streak = $9, ever_reached = $10, unreachable_alerted = $11,
    rtt_high_streak = $12, rtt_alerted = $13, changes_total = changes_total + $14,
    last_success = $15, last_rtt_ns = $16
 WHERE id = $1";

/// A slave's row takes the newest of what every master saw: `last_seen` and `last_config`
/// only grow, the address and the spool figures are those of the latest report.
const UPDATE_SLAVE: &str = "UPDATE slaves SET
    last_seen = GREATEST(last_seen, $2),
    results_stored = results_stored + $3,
    clock_skew_ms = COALESCE($4, clock_skew_ms),
    remote_addr = CASE WHEN $6::BIGINT IS NOT NULL AND $6 >= COALESCE(last_config, 0)
                       THEN COALESCE($5, remote_addr) ELSE remote_addr END,
    agent = COALESCE($7, agent),
    last_config = GREATEST(last_config, $8),
    spool_depth = CASE WHEN $11::BIGINT IS NOT NULL AND $11 >= COALESCE(status_at, 0)
                       THEN COALESCE($9, spool_depth) ELSE spool_depth END,
    dropped_total = CASE WHEN $11::BIGINT IS NOT NULL AND $11 >= COALESCE(status_at, 0)
                         THEN COALESCE($10, dropped_total) ELSE dropped_total END,
    status_at = GREATEST(status_at, $11)
 WHERE id = $1";

/// Answers each job: inserts with their outcomes (or error), after the commit.
fn answer(group: Vec<Job>, outcomes: Vec<Result<Vec<Outcome>, String>>) {
    for (job, out) in group.into_iter().zip(outcomes) {
        if let Job::Insert(_, reply) = job {
            let _ = reply.send(out);
        }
    }
}

/// The statement for `sql`, prepared once per connection.
fn prepare(
    client: &mut impl GenericClient,
    statements: &mut HashMap<&'static str, Statement>,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(st) = statements.get(sql) {
        return Ok(st.clone());
    }
    let st = client.prepare(sql)?;
    statements.insert(sql, st.clone());
    Ok(st)
}

fn slave_id(
    client: &mut Client,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    name: &str,
    now: i64,
) -> anyhow::Result<i64> {
    if let Some(id) = caches.slaves.get(name) {
        return Ok(*id);
    }
    let st = prepare(
        client,
        statements,
        "INSERT INTO slaves (name, first_seen, last_seen) VALUES ($1, $2, $2)
         ON CONFLICT (name) DO NOTHING",
    )?;
    client.execute(&st, &[&name, &now])?;
    let st = prepare(client, statements, "SELECT id FROM slaves WHERE name = $1")?;
    let id: i64 = client.query_one(&st, &[&name])?.get(0);
    caches.slaves.insert(name.to_owned(), id);
    Ok(id)
}

/// The ids of a result's slave, series, path and route, made when new.
fn resolve(
    client: &mut Client,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    r: &Prepared,
    now: i64,
) -> anyhow::Result<Ids> {
    let slave = slave_id(client, statements, caches, &r.slave, now)?;
    let target = match caches.targets.get(&r.target) {
        Some(id) => *id,
        None => {
            let st = prepare(
                client,
                statements,
                "INSERT INTO targets (uuid, name, address) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )?;
            client.execute(&st, &[&r.target.0, &r.target.1, &r.target.2])?;
            let st = prepare(
                client,
                statements,
                "SELECT id FROM targets WHERE uuid = $1 AND name = $2 AND address = $3",
            )?;
            let id: i64 = client
                .query_one(&st, &[&r.target.0, &r.target.1, &r.target.2])?
                .get(0);
            caches.targets.insert(r.target.clone(), id);
            id
        }
    };
    let key = (slave, target, r.flow);
    let series = match caches.series.get(&key) {
        Some(id) => *id,
        None => {
            let st = prepare(
                client,
                statements,
                "INSERT INTO series (slave_id, target_id, flow) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )?;
            client.execute(&st, &[&slave, &target, &r.flow])?;
            let st = prepare(
                client,
                statements,
                "SELECT id FROM series WHERE slave_id = $1 AND target_id = $2 AND flow = $3",
            )?;
            let id: i64 = client.query_one(&st, &[&slave, &target, &r.flow])?.get(0);
            caches.series.insert(key, id);
            id
        }
    };
    let path = match caches.paths.get(&r.path_hash) {
        Some(id) => *id,
        None => {
            let st = prepare(
                client,
                statements,
                "INSERT INTO paths (hash, canonical, hop_count, terminal, first_seen)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
            )?;
            client.execute(
                &st,
                &[
                    &r.path_hash,
                    &r.path_text,
                    &(r.path.hops.len() as i64),
                    &r.path.terminal.as_text(),
                    &now,
                ],
            )?;
            let st = prepare(client, statements, "SELECT id FROM paths WHERE hash = $1")?;
            let id: i64 = client.query_one(&st, &[&r.path_hash])?.get(0);
            caches.paths.insert(r.path_hash.clone(), id);
            caches.path_text.insert(id, r.path.clone());
            id
        }
    };
    let route = route_id(client, statements, caches, r, path, now)?;
    Ok(Ids {
        slave,
        series,
        path,
        route,
    })
}

/// The route of a result: cached, with its `last_used` refreshed when stale (a route gone
/// meanwhile is made again), or made.
fn route_id(
    client: &mut Client,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    r: &Prepared,
    path: i64,
    now: i64,
) -> anyhow::Result<i64> {
    if let Some(&(id, used)) = caches.routes.get(&r.route_hash) {
        if now - used < ROUTE_TOUCH_MS {
            return Ok(id);
        }
        let st = prepare(
            client,
            statements,
            "UPDATE routes SET last_used = GREATEST(last_used, $2) WHERE id = $1",
        )?;
        if client.execute(&st, &[&id, &now])? == 1 {
            caches.routes.insert(r.route_hash, (id, now));
            return Ok(id);
        }
        caches.routes.remove(&r.route_hash);
    }
    let st = prepare(
        client,
        statements,
        "INSERT INTO routes (hash, path_id, body, last_used) VALUES ($1, $2, $3, $4)
         ON CONFLICT (hash) DO UPDATE SET last_used = GREATEST(routes.last_used, EXCLUDED.last_used)
         RETURNING id",
    )?;
    let id: i64 = client
        .query_one(&st, &[&&r.route_hash[..], &path, &r.route_body, &now])?
        .get(0);
    caches.routes.insert(r.route_hash, (id, now));
    Ok(id)
}

fn path_by_id(
    client: &mut impl GenericClient,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    id: Option<i64>,
) -> anyhow::Result<Option<(i64, NetPath)>> {
    let Some(id) = id else { return Ok(None) };
    if let Some(p) = caches.path_text.get(&id) {
        return Ok(Some((id, p.clone())));
    }
    let st = prepare(
        client,
        statements,
        "SELECT canonical FROM paths WHERE id = $1",
    )?;
    let text: String = client.query_one(&st, &[&id])?.get(0);
    let Some(path) = NetPath::parse_canonical(&text) else {
        return Ok(None);
    };
    caches.path_text.insert(id, path.clone());
    Ok(Some((id, path)))
}

/// Stores one result (once per ID) under its series' lock and feeds it to the series;
/// also gives the slave's clock skew by this result.
#[allow(clippy::too_many_arguments)]
fn insert(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    s: &mut Live,
    r: &Prepared,
    ids: Ids,
    confirm: u32,
) -> anyhow::Result<(Outcome, i64)> {
    let time = r.measures.time;
    let skew = time.ms + r.measures.duration_ns.unwrap_or(0) / 1_000_000 - r.measures.received_at;
    let uid = &r.uid[..];
    // A resend has the same series and time; one ordered elsewhere is in `aside`. The series
    // lock makes this answer final: no other master can store the same result meanwhile.
    let st = prepare(
        tx,
        statements,
        "SELECT 1 FROM results WHERE series_id = $1 AND id BETWEEN $2 AND $3
           AND substring(data from 1 for 16) = $4
         UNION ALL SELECT 1 FROM aside WHERE uid = $4 LIMIT 1",
    )?;
    let lo = codec::key(time.ms, 0);
    let hi = codec::key(
        time.ms.saturating_add(codec::SPILL_MS - 1),
        codec::PER_MS - 1,
    );
    if !tx.query(&st, &[&ids.series, &lo, &hi, &uid])?.is_empty() {
        return Ok(((Stored::Duplicate, Vec::new()), skew));
    }
    let mut m = r.measures.clone();
    let key = claim_key(
        tx,
        statements,
        caches,
        ids,
        &r.uid,
        &mut m,
        r.verbatim.as_deref(),
    )?;
    let at = m.ordered_ms;
    // A result ordered before the series' newest is stored but not fed (a late backlog must
    // not flip the current path back).
    if s.last_ordered.is_some_and(|last| at < last) {
        return Ok(((Stored::New(key), Vec::new()), skew));
    }
    let old_current = s.state.current.as_ref().map(|c| c.0);
    let step = advance(&mut s.state, r, ids.path, at, confirm);
    if s.state.current.as_ref().map(|c| c.0) != old_current {
        s.current_since = Some(step.since);
    }
    s.last_ordered = Some(at);
    s.last_result = Some(key);
    s.last_success = Some(r.success);
    s.last_rtt_ns = r.destination_rtt_ns;
    s.changes += step.changes;
    s.dirty = true;
    let mut records = Vec::with_capacity(step.events.len());
    for event in step.events {
        let (from_path, to_path, first_diff) = event_paths(&event);
        let st = prepare(
            tx,
            statements,
            "INSERT INTO events (at, kind, series_id, from_path, to_path, first_diff_ttl, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )?;
        let detail = serde_json::to_string(&event).unwrap_or_default();
        let id: i64 = tx
            .query_one(
                &st,
                &[
                    &at,
                    &event.kind(),
                    &ids.series,
                    &from_path,
                    &to_path,
                    &first_diff,
                    &detail,
                ],
            )?
            .get(0);
        let from = path_by_id(tx, statements, caches, from_path)?.map(|(_, p)| p.canonical());
        let to = path_by_id(tx, statements, caches, to_path)?.map(|(_, p)| p.canonical());
        records.push(EventRecord {
            id,
            at,
            slave: r.slave.clone(),
            target_id: r.target.0.clone(),
            target_name: r.target.1.clone(),
            flow: r.flow,
            from,
            to,
            event,
        });
    }
    Ok(((Stored::New(key), records), skew))
}

/// Inserts a result row at the first free key of its millisecond (or a later one when that
/// is full); returns the key and leaves the millisecond used in `m`.
fn claim_key(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    ids: Ids,
    uid: &[u8; 16],
    m: &mut codec::Measures,
    verbatim: Option<&str>,
) -> anyhow::Result<i64> {
    let mut at = m.ordered_ms.clamp(codec::EPOCH_MS, codec::LAST_MS);
    loop {
        let n = match caches.keys.get(&at) {
            Some(n) => *n,
            None => {
                let st = prepare(
                    tx,
                    statements,
                    "SELECT max(id) FROM results WHERE id BETWEEN $1 AND $2",
                )?;
                let top: Option<i64> = tx
                    .query_one(
                        &st,
                        &[&codec::key(at, 0), &codec::key(at, codec::PER_MS - 1)],
                    )?
                    .get(0);
                top.map_or(0, |k| k - codec::key(at, 0) + 1)
            }
        };
        if n >= codec::PER_MS {
            at += 1;
            continue;
        }
        m.ordered_ms = at;
        let key = codec::key(at, n);
        let st = prepare(
            tx,
            statements,
            "INSERT INTO results (id, series_id, route_id, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING",
        )?;
        let data = codec::pack_row(uid, m, verbatim);
        if tx.execute(&st, &[&key, &ids.series, &ids.route, &data])? == 1 {
            caches.keys.insert(at, n + 1);
            if !(0..codec::SPILL_MS).contains(&(m.ordered_ms - m.time.ms)) {
                let st = prepare(
                    tx,
                    statements,
                    "INSERT INTO aside (uid, result) VALUES ($1, $2)
                     ON CONFLICT (uid) DO UPDATE SET result = EXCLUDED.result",
                )?;
                tx.execute(&st, &[&&uid[..], &key])?;
            }
            return Ok(key);
        }
        // Another master took this key: look again.
        caches.keys.remove(&at);
    }
}
