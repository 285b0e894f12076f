//! The PostgreSQL writer: as with SQLite, one thread per master takes the results of every
//! request from a queue and commits them in groups. What differs is that other masters
//! write the same tables at the same time:
//!
//! - the names, paths, routes and series a group needs are made first, in a short
//!   transaction of their own, so the group's transaction takes no lock on them;
//! - the group's transaction locks its series rows (in id order) before it reads their
//!   change-detection state, so results of one series reaching two masters are fed one after
//!   the other, exactly as one master would; then the slaves' rows, also in id order, so
//!   two masters' groups never wait on each other in a cycle;
//! - a result's ordering key is claimed with `ON CONFLICT DO NOTHING`, moving on when
//!   another master took it;
//! - a group that fails (a deadlock the server broke, a row retention removed under a
//!   cached id) is retried with cold caches, then job by job, so one bad job fails alone.

use super::super::codec;
use super::super::ingest::{
    Prepared, PreparedGraph, Queue, Reply, Status, Takeover, Touch, advance, event_paths, gather,
    takeover,
};
use super::super::{EventRecord, Outcome, Stored};
use crate::master::analysis::{Candidate, Event, State};
use crate::master::path::Path as NetPath;
use postgres::{Client, GenericClient, Statement};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::Receiver;

/// Most results committed in one transaction.
const MAX_GROUP: usize = 2000;
/// Cached names, paths and routes kept before the caches start over.
const MAX_CACHED: usize = 100_000;
/// How stale a route's `last_used` may be before this master refreshes it.
pub const ROUTE_TOUCH_MS: i64 = 10 * 60 * 1000;
/// Tries of a whole group before its jobs are tried one by one.
const GROUP_TRIES: usize = 3;

/// Work for the writer.
pub enum Job {
    /// Store these results; answer when durable.
    Insert(Vec<Prepared>, Reply),
    /// A slave was seen.
    Touch(Touch),
    /// A slave reported its spool.
    Status(Status),
}

impl Job {
    fn results(&self) -> Option<usize> {
        match self {
            Job::Insert(r, _) => Some(r.len()),
            _ => None,
        }
    }

    fn slave(&self) -> Option<&str> {
        match self {
            Job::Insert(..) => None,
            Job::Touch(Touch { name, .. }) | Job::Status(Status { name, .. }) => Some(name),
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
    /// Graph shape id and the `last_used` this master last wrote.
    graphs: HashMap<[u8; 16], (i64, i64)>,
    series: HashMap<(i64, i64, i64), i64>,
    /// The other series of a series' target UUID for the same slave and flow (a target whose
    /// address or name changed), by series id; forgotten whenever a series is looked up.
    siblings: HashMap<i64, Vec<i64>>,
}

impl Caches {
    fn trim(&mut self) {
        if self.paths.len() > MAX_CACHED
            || self.routes.len() > MAX_CACHED
            || self.graphs.len() > MAX_CACHED
            || self.series.len() > MAX_CACHED
            || self.targets.len() > MAX_CACHED
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
    /// A multipath result's graph shape.
    graph: Option<i64>,
}

/// A series while a group holds its row lock.
struct Live {
    /// The target's name and address.
    target: (String, String),
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
            let (group, results) = gather(first, &jobs, Job::results, MAX_GROUP);
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
        // Without a connection every job would fail the same way: answer them all now (the
        // slaves send again) instead of trying each alone.
        if group.len() == 1 || self.client.as_ref().is_none_or(Client::is_closed) {
            log::error!("store: {last}");
            let n = group.len();
            answer(group, (0..n).map(|_| Err(last.clone())).collect());
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
        // Names, paths, routes and series first, in a short transaction of their own (one
        // commit for all that are new, and the group's transaction locks none of them).
        let mut ids: Vec<Vec<Ids>> = Vec::with_capacity(jobs.len());
        let mut slave_ids: HashMap<String, i64> = HashMap::new();
        let mut names = client.transaction()?;
        for job in jobs {
            let mut these = Vec::new();
            match job {
                Job::Insert(results, _) => {
                    for r in results {
                        these.push(resolve(&mut names, statements, caches, r, now)?);
                    }
                }
                _ => {
                    let name = job.slave().unwrap_or_default();
                    let id = slave_id(&mut names, statements, caches, name, now)?;
                    slave_ids.insert(name.to_owned(), id);
                }
            }
            ids.push(these);
        }
        names.commit()?;
        let mut tx = client.transaction()?;
        // Lock the series in id order and read their state.
        let mut series_ids: Vec<i64> = ids.iter().flatten().map(|i| i.series).collect();
        // A target's other series (one per address it had) too: a result may take one over.
        let with_siblings: Vec<i64> = series_ids
            .iter()
            .filter_map(|id| caches.siblings.get(id))
            .flatten()
            .copied()
            .collect();
        series_ids.extend(with_siblings);
        series_ids.sort_unstable();
        series_ids.dedup();
        let mut live: HashMap<i64, Live> = HashMap::with_capacity(series_ids.len());
        if !series_ids.is_empty() {
            let st = prepare(
                &mut tx,
                statements,
                "SELECT se.id, se.last_measured, se.current_path, se.candidate_path,
                        se.candidate_count, se.candidate_since, se.unreached_streak,
                        se.ever_reached, se.unreachable_alerted, se.rtt_high_streak,
                        se.rtt_alerted, se.current_since, se.last_result, se.last_success,
                        se.last_rtt_ns, t.name, t.address, se.branches, se.as_track
                 FROM series se JOIN targets t ON t.id = se.target_id
                 WHERE se.id = ANY($1) ORDER BY se.id FOR UPDATE OF se",
            )?;
            let rows = tx.query(&st, &[&series_ids])?;
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
                        target: (r.get(15), r.get(16)),
                        state: State {
                            current,
                            candidate,
                            unreached_streak: r.get::<_, i64>(6) as u32,
                            ever_reached: r.get(7),
                            unreachable_alerted: r.get(8),
                            rtt_high_streak: r.get::<_, i64>(9) as u32,
                            rtt_alerted: r.get(10),
                            branches: super::super::ingest::branches_of(
                                r.get::<_, Option<String>>(17).as_deref(),
                            ),
                            as_path: super::super::ingest::as_track_of(
                                r.get::<_, Option<String>>(18).as_deref(),
                            ),
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
        // Every result of the group at once: which are stored already, their keys, one
        // insert; then each is fed to its series in order.
        let items: Vec<(&Prepared, Ids)> = jobs
            .iter()
            .zip(&ids)
            .filter_map(|(job, ids)| match job {
                Job::Insert(results, _) => Some(results.iter().zip(ids.iter().copied())),
                _ => None,
            })
            .flatten()
            .collect();
        let mut stored =
            store_all(&mut tx, statements, caches, &mut live, &items, *confirm)?.into_iter();
        let mut slaves: BTreeMap<i64, SlaveUpdate> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (job, ids) in jobs.iter().zip(&ids) {
            let mut out = Vec::new();
            match job {
                Job::Insert(..) => {
                    for ids in ids {
                        let (outcome, skew) = stored
                            .next()
                            .ok_or_else(|| anyhow::anyhow!("a result went missing"))?;
                        if matches!(outcome.0, Stored::New(_)) {
                            let u = slaves.entry(ids.slave).or_default();
                            u.stored += 1;
                            u.skew = Some(skew);
                            u.last_seen = u.last_seen.max(Some(now));
                        }
                        out.push(outcome);
                    }
                }
                Job::Touch(Touch {
                    name,
                    remote,
                    agent,
                    config,
                    at,
                }) => {
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
                Job::Status(Status {
                    name,
                    spool_depth,
                    dropped_total,
                    at,
                }) => {
                    let u = slaves.entry(slave_ids[name.as_str()]).or_default();
                    // Field by field, as SQLite keeps them: a report without a figure leaves
                    // the last one.
                    let (depth, dropped) = u.status.map_or((None, None), |s| (s.0, s.1));
                    u.status = Some((spool_depth.or(depth), dropped_total.or(dropped), *at));
                }
            }
            outcomes.push(out);
        }
        update_series(&mut tx, statements, &live)?;
        update_slaves(&mut tx, statements, &slaves)?;
        tx.commit()?;
        Ok(outcomes)
    }
}

/// Writes back the state of every series the group fed (their rows are locked).
fn update_series(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    live: &HashMap<i64, Live>,
) -> anyhow::Result<()> {
    let mut dirty: Vec<(&i64, &Live)> = live.iter().filter(|(_, s)| s.dirty).collect();
    if dirty.is_empty() {
        return Ok(());
    }
    dirty.sort_unstable_by_key(|(id, _)| **id);
    let col =
        |f: &dyn Fn(&Live) -> Option<i64>| dirty.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
    let ids: Vec<i64> = dirty.iter().map(|(id, _)| **id).collect();
    let current = col(&|s| s.state.current.as_ref().map(|c| c.0));
    let since = col(&|s| s.current_since);
    let candidate = col(&|s| s.state.candidate.as_ref().map(|c| c.path_id));
    let count = col(&|s| Some(s.state.candidate.as_ref().map_or(0, |c| i64::from(c.count))));
    let candidate_since = col(&|s| s.state.candidate.as_ref().map(|c| c.since));
    let measured = col(&|s| s.last_ordered);
    let last = col(&|s| s.last_result);
    let unreached = col(&|s| Some(i64::from(s.state.unreached_streak)));
    let rtt_streak = col(&|s| Some(i64::from(s.state.rtt_high_streak)));
    let changes = col(&|s| Some(s.changes));
    let rtt = col(&|s| s.last_rtt_ns);
    let flag =
        |f: &dyn Fn(&Live) -> Option<bool>| dirty.iter().map(|(_, s)| f(s)).collect::<Vec<_>>();
    let ever = flag(&|s| Some(s.state.ever_reached));
    let unreachable = flag(&|s| Some(s.state.unreachable_alerted));
    let rtt_alerted = flag(&|s| Some(s.state.rtt_alerted));
    let success = flag(&|s| s.last_success);
    let branches: Vec<Option<String>> = dirty
        .iter()
        .map(|(_, s)| super::super::ingest::branches_text(&s.state.branches))
        .collect();
    let as_tracks: Vec<Option<String>> = dirty
        .iter()
        .map(|(_, s)| super::super::ingest::as_track_text(&s.state.as_path))
        .collect();
    let st = prepare(
        tx,
        statements,
        "UPDATE series AS s SET
            current_path = u.cp, current_since = u.cs,
            candidate_path = u.cand, candidate_count = u.cc, candidate_since = u.csi,
            last_measured = u.lm, last_result = u.lr,
            unreached_streak = u.us, ever_reached = u.er, unreachable_alerted = u.ua,
            rtt_high_streak = u.rs, rtt_alerted = u.ra, changes_total = s.changes_total + u.ch,
            last_success = u.ls, last_rtt_ns = u.lt, branches = u.br, as_track = u.at
         FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[],
                     $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BOOLEAN[],
                     $11::BOOLEAN[], $12::BIGINT[], $13::BOOLEAN[], $14::BIGINT[],
                     $15::BOOLEAN[], $16::BIGINT[], $17::TEXT[], $18::TEXT[])
              AS u(id, cp, cs, cand, cc, csi, lm, lr, us, er, ua, rs, ra, ch, ls, lt, br, at)
         WHERE s.id = u.id",
    )?;
    tx.execute(
        &st,
        &[
            &ids,
            &current,
            &since,
            &candidate,
            &count,
            &candidate_since,
            &measured,
            &last,
            &unreached,
            &ever,
            &unreachable,
            &rtt_streak,
            &rtt_alerted,
            &changes,
            &success,
            &rtt,
            &branches,
            &as_tracks,
        ],
    )?;
    Ok(())
}

/// Writes what the group saw of each slave. Their rows are locked in id order first, so two
/// masters' groups never wait on each other in a cycle. A slave's row takes the newest of
/// what every master saw: `last_seen` and `last_config` only grow, the address and the spool
/// figures are those of the latest report.
fn update_slaves(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    slaves: &BTreeMap<i64, SlaveUpdate>,
) -> anyhow::Result<()> {
    if slaves.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = slaves.keys().copied().collect();
    let st = prepare(
        tx,
        statements,
        "SELECT id FROM slaves WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )?;
    tx.query(&st, &[&ids])?;
    let u: Vec<&SlaveUpdate> = slaves.values().collect();
    let seen: Vec<Option<i64>> = u.iter().map(|u| u.last_seen).collect();
    let stored: Vec<i64> = u.iter().map(|u| u.stored).collect();
    let skew: Vec<Option<i64>> = u.iter().map(|u| u.skew).collect();
    let remote: Vec<Option<&str>> = u
        .iter()
        .map(|u| u.remote.as_ref().map(|r| r.0.as_str()))
        .collect();
    let remote_at: Vec<Option<i64>> = u.iter().map(|u| u.remote.as_ref().map(|r| r.1)).collect();
    let agent: Vec<Option<&str>> = u.iter().map(|u| u.agent.as_deref()).collect();
    let config: Vec<Option<i64>> = u.iter().map(|u| u.last_config).collect();
    let depth: Vec<Option<i64>> = u.iter().map(|u| u.status.and_then(|s| s.0)).collect();
    let dropped: Vec<Option<i64>> = u.iter().map(|u| u.status.and_then(|s| s.1)).collect();
    let status_at: Vec<Option<i64>> = u.iter().map(|u| u.status.map(|s| s.2)).collect();
    let st = prepare(
        tx,
        statements,
        "UPDATE slaves AS s SET
            last_seen = GREATEST(s.last_seen, u.seen),
            results_stored = s.results_stored + u.stored,
            clock_skew_ms = COALESCE(u.skew, s.clock_skew_ms),
            remote_addr = CASE WHEN u.remote_at IS NOT NULL AND u.remote_at >= COALESCE(s.last_config, 0)
                               THEN COALESCE(u.remote, s.remote_addr) ELSE s.remote_addr END,
            agent = COALESCE(u.agent, s.agent),
            last_config = GREATEST(s.last_config, u.config),
            spool_depth = CASE WHEN u.status_at IS NOT NULL AND u.status_at >= COALESCE(s.status_at, 0)
                               THEN COALESCE(u.depth, s.spool_depth) ELSE s.spool_depth END,
            dropped_total = CASE WHEN u.status_at IS NOT NULL AND u.status_at >= COALESCE(s.status_at, 0)
                                 THEN COALESCE(u.dropped, s.dropped_total) ELSE s.dropped_total END,
            status_at = GREATEST(s.status_at, u.status_at)
         FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[],
                     $6::BIGINT[], $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[],
                     $11::BIGINT[])
              AS u(id, seen, stored, skew, remote, remote_at, agent, config, depth, dropped, status_at)
         WHERE s.id = u.id",
    )?;
    tx.execute(
        &st,
        &[
            &ids, &seen, &stored, &skew, &remote, &remote_at, &agent, &config, &depth, &dropped,
            &status_at,
        ],
    )?;
    Ok(())
}

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
    client: &mut impl GenericClient,
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
    client: &mut impl GenericClient,
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
            caches.siblings.clear();
            id
        }
    };
    if !r.target.0.is_empty() && r.measurement.is_none() && !caches.siblings.contains_key(&series) {
        let st = prepare(
            client,
            statements,
            "SELECT se.id FROM series se JOIN targets t ON t.id = se.target_id
             WHERE se.slave_id = $1 AND se.flow = $2 AND t.uuid = $3 AND se.id <> $4",
        )?;
        let found: Vec<i64> = client
            .query(&st, &[&slave, &r.flow, &r.target.0, &series])?
            .iter()
            .map(|row| row.get(0))
            .collect();
        caches.siblings.insert(series, found);
    }
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
    let graph = match &r.graph {
        Some(g) => Some(graph_id(client, statements, caches, g, now)?),
        None => None,
    };
    Ok(Ids {
        slave,
        series,
        path,
        route,
        graph,
    })
}

/// The row of a graph shape, like [`route_id`]: cached, `last_used` refreshed when stale.
fn graph_id(
    client: &mut impl GenericClient,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    g: &PreparedGraph,
    now: i64,
) -> anyhow::Result<i64> {
    if let Some(&(id, used)) = caches.graphs.get(&g.hash) {
        if now - used < ROUTE_TOUCH_MS {
            return Ok(id);
        }
        let st = prepare(
            client,
            statements,
            "UPDATE graphs SET last_used = GREATEST(last_used, $2) WHERE id = $1",
        )?;
        if client.execute(&st, &[&id, &now])? == 1 {
            caches.graphs.insert(g.hash, (id, now));
            return Ok(id);
        }
        caches.graphs.remove(&g.hash);
    }
    let st = prepare(
        client,
        statements,
        "INSERT INTO graphs (hash, body, last_used) VALUES ($1, $2, $3)
         ON CONFLICT (hash) DO UPDATE SET last_used = GREATEST(graphs.last_used, EXCLUDED.last_used)
         RETURNING id",
    )?;
    let id: i64 = client
        .query_one(&st, &[&&g.hash[..], &g.shape, &now])?
        .get(0);
    caches.graphs.insert(g.hash, (id, now));
    Ok(id)
}

/// The route of a result: cached, with its `last_used` refreshed when stale (a route gone
/// meanwhile is made again), or made.
fn route_id(
    client: &mut impl GenericClient,
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

/// The slave's clock against ours by result `r`: the end of its trace against its arrival.
fn skew(r: &Prepared) -> i64 {
    let m = &r.measures;
    m.time.ms + m.duration_ns.unwrap_or(0) / 1_000_000 - m.received_at
}

/// Stores the results of a group (each ID once) under their series' locks and feeds them
/// to their series in order; gives each one's outcome and the slave's clock skew by it.
/// A few statements for the whole group: which IDs are stored already, the free keys of
/// the milliseconds it needs, one insert; results whose key another master took meanwhile
/// are then placed one by one.
fn store_all(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    live: &mut HashMap<i64, Live>,
    items: &[(&Prepared, Ids)],
    confirm: u32,
) -> anyhow::Result<Vec<(Outcome, i64)>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // A resend has the same series and time; one ordered elsewhere is in `aside`. The series
    // locks make the answer final: no other master can store the same result meanwhile.
    let idx: Vec<i64> = (0..items.len() as i64).collect();
    let series: Vec<i64> = items.iter().map(|(_, i)| i.series).collect();
    let lo: Vec<i64> = items
        .iter()
        .map(|(r, _)| codec::key(r.measures.time.ms, 0))
        .collect();
    let hi: Vec<i64> = items
        .iter()
        .map(|(r, _)| {
            codec::key(
                r.measures.time.ms.saturating_add(codec::SPILL_MS - 1),
                codec::PER_MS - 1,
            )
        })
        .collect();
    let uids: Vec<&[u8]> = items.iter().map(|(r, _)| &r.uid[..]).collect();
    let st = prepare(
        tx,
        statements,
        "SELECT q.i FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BYTEA[])
              AS q(i, s, lo, hi, uid)
         WHERE EXISTS (SELECT 1 FROM results r WHERE r.series_id = q.s
                          AND r.id BETWEEN q.lo AND q.hi
                          AND substring(r.data from 1 for 16) = q.uid)
            OR EXISTS (SELECT 1 FROM aside a WHERE a.uid = q.uid AND a.series_id = q.s)",
    )?;
    let stored_before: std::collections::HashSet<i64> = tx
        .query(&st, &[&idx, &series, &lo, &hi, &uids])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The rest get keys, in order; a result twice in the group is stored once.
    let mut in_group = std::collections::HashSet::new();
    let mut fresh: Vec<usize> = Vec::new();
    for (i, (r, _)) in items.iter().enumerate() {
        if !stored_before.contains(&(i as i64)) && in_group.insert(r.uid) {
            fresh.push(i);
        }
    }
    // Keys: each result's millisecond, and a place in it from the shared sequence.
    let st = prepare(
        tx,
        statements,
        "SELECT nextval('result_keys') FROM generate_series(1, $1::BIGINT)",
    )?;
    let places: Vec<i64> = tx
        .query(&st, &[&(fresh.len() as i64)])?
        .iter()
        .map(|r| r.get::<_, i64>(0).rem_euclid(codec::PER_MS))
        .collect();
    let mut taken = std::collections::HashSet::new();
    let mut placed: Vec<(usize, codec::Measures, i64)> = Vec::with_capacity(fresh.len());
    for (&i, &place) in fresh.iter().zip(&places) {
        let mut m = items[i].0.measures.clone();
        let mut at = m.ordered_ms.clamp(codec::EPOCH_MS, codec::LAST_MS);
        let mut n = place;
        let mut tries = 0;
        // Within the group a millisecond's places are used once; past 64 the result moves on
        // to the next millisecond.
        while !taken.insert(codec::key(at, n)) {
            tries += 1;
            n = (n + 1) % codec::PER_MS;
            if tries == codec::PER_MS {
                tries = 0;
                at += 1;
            }
        }
        m.ordered_ms = at;
        placed.push((i, m, codec::key(at, n)));
    }
    // Rows go in key order: two masters inserting into the same milliseconds then wait for
    // each other's keys in one order, never in a cycle.
    let mut by_key: Vec<&(usize, codec::Measures, i64)> = placed.iter().collect();
    by_key.sort_unstable_by_key(|p| p.2);
    let keys: Vec<i64> = by_key.iter().map(|p| p.2).collect();
    let series_of: Vec<i64> = by_key.iter().map(|p| items[p.0].1.series).collect();
    let routes: Vec<i64> = by_key.iter().map(|p| items[p.0].1.route).collect();
    let data: Vec<Vec<u8>> = by_key
        .iter()
        .map(|(i, m, _)| {
            let r = items[*i].0;
            codec::pack_row(&r.uid, m, r.verbatim.as_deref())
        })
        .collect();
    let st = prepare(
        tx,
        statements,
        "INSERT INTO results (id, series_id, route_id, data)
         SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[])
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )?;
    let inserted: std::collections::HashSet<i64> = tx
        .query(&st, &[&keys, &series_of, &routes, &data])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (i, m, key) in &mut placed {
        if !inserted.contains(key) {
            // Taken (the millisecond had more results than places, or another master drew
            // the same place): the next free key, for this result alone.
            let r = items[*i].0;
            *key = claim_key(
                tx,
                statements,
                items[*i].1,
                &r.uid,
                m,
                r.verbatim.as_deref(),
            )?;
        }
        // A result moved on by a full millisecond or two is still found near its own time;
        // one ordered far from it is kept aside so that a resend of it is found.
        if !(0..codec::SPILL_MS).contains(&(m.ordered_ms - m.time.ms)) {
            let st = prepare(
                tx,
                statements,
                "INSERT INTO aside (uid, series_id, result) VALUES ($1, $2, $3)
                 ON CONFLICT (uid, series_id) DO UPDATE SET result = EXCLUDED.result",
            )?;
            tx.execute(&st, &[&&items[*i].0.uid[..], &items[*i].1.series, &*key])?;
        }
        if let (Some(g), Some(graph)) = (&items[*i].0.graph, items[*i].1.graph) {
            let st = prepare(
                tx,
                statements,
                "INSERT INTO result_graphs (result, graph_id, data) VALUES ($1, $2, $3)
                 ON CONFLICT (result) DO NOTHING",
            )?;
            tx.execute(&st, &[&*key, &graph, &g.data])?;
        }
    }
    let mut out: Vec<(Outcome, i64)> = items
        .iter()
        .map(|(r, _)| ((Stored::Duplicate, Vec::new()), skew(r)))
        .collect();
    for (i, m, key) in placed {
        let (r, ids) = items[i];
        // An on-demand result is counted for its measurement and fed to nothing.
        if let Some(mid) = &r.measurement {
            let st = prepare(
                tx,
                statements,
                "UPDATE measurement_runs SET results = results + 1, updated_at = $3,
                    state = CASE WHEN results + 1 >= (SELECT flows FROM measurements WHERE id = $1)
                                 THEN 'done' ELSE 'running' END
                 WHERE measurement = $1 AND slave = $2",
            )?;
            if tx.execute(&st, &[mid, &r.slave, &r.measures.received_at])? > 0 {
                let st = prepare(
                    tx,
                    statements,
                    "INSERT INTO measurement_results (measurement, result) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                )?;
                tx.execute(&st, &[mid, &key])?;
            }
            out[i].0 = (Stored::New(key), Vec::new());
            continue;
        }
        let own = live
            .get(&ids.series)
            .ok_or_else(|| anyhow::anyhow!("series {} vanished", ids.series))?;
        let mut head = None;
        if own.last_ordered.is_none_or(|last| m.ordered_ms >= last) {
            let others = caches.siblings.get(&ids.series).into_iter().flatten();
            let others = others.filter_map(|id| live.get(id).map(|l| (*id, l.last_ordered)));
            match takeover((ids.series, own.last_ordered), others, m.ordered_ms) {
                Takeover::Current => {}
                Takeover::Late => {
                    out[i].0 = (Stored::New(key), Vec::new());
                    continue;
                }
                Takeover::From(id) => {
                    let old = &live[&id];
                    let state = old.state.clone();
                    head = Some(Event::TargetChange {
                        from_name: old.target.0.clone(),
                        from_address: old.target.1.clone(),
                        to_name: r.target.1.clone(),
                        to_address: r.target.2.clone(),
                    });
                    let s = live.get_mut(&ids.series).expect("looked up above");
                    s.state = state;
                    s.current_since = Some(m.ordered_ms);
                }
            }
        }
        let s = live.get_mut(&ids.series).expect("looked up above");
        let events = feed(
            tx,
            statements,
            caches,
            s,
            r,
            ids,
            (key, m.ordered_ms, head),
            confirm,
        )?;
        out[i].0 = (Stored::New(key), events);
    }
    Ok(out)
}

/// Feeds a stored result (at `key`, ordered at `at`) to its series, whose row the group has
/// locked, and records the events. A result ordered before the series' newest is stored but
/// not fed (a late backlog must not flip the current path back).
#[allow(clippy::too_many_arguments)]
fn feed(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    caches: &mut Caches,
    s: &mut Live,
    r: &Prepared,
    ids: Ids,
    (key, at, head): (i64, i64, Option<Event>),
    confirm: u32,
) -> anyhow::Result<Vec<EventRecord>> {
    if s.last_ordered.is_some_and(|last| at < last) {
        return Ok(Vec::new());
    }
    let old_current = s.state.current.as_ref().map(|c| c.0);
    let mut step = advance(&mut s.state, r, ids.path, at, confirm);
    if let Some(e) = head {
        step.events.insert(0, e);
    }
    if s.state.current.as_ref().map(|c| c.0) != old_current && !step.filled {
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
    Ok(records)
}

/// Inserts a result row at the first free place of its millisecond (or of a later one when
/// that is full), one statement at a time; returns the key and leaves the millisecond used in
/// `m`. The first free place, not the one after the highest taken: places come from a shared
/// sequence, so a millisecond holding a few results may hold one at its last place.
fn claim_key(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    ids: Ids,
    uid: &[u8; 16],
    m: &mut codec::Measures,
    verbatim: Option<&str>,
) -> anyhow::Result<i64> {
    let mut at = m.ordered_ms.clamp(codec::EPOCH_MS, codec::LAST_MS);
    loop {
        let st = prepare(
            tx,
            statements,
            "SELECT id FROM results WHERE id BETWEEN $1 AND $2",
        )?;
        let taken: std::collections::HashSet<i64> = tx
            .query(
                &st,
                &[&codec::key(at, 0), &codec::key(at, codec::PER_MS - 1)],
            )?
            .iter()
            .map(|r| r.get::<_, i64>(0) - codec::key(at, 0))
            .collect();
        let Some(n) = (0..codec::PER_MS).find(|n| !taken.contains(n)) else {
            at += 1;
            continue;
        };
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
            return Ok(key);
        }
        // Another master took this key meanwhile: look again.
    }
}
