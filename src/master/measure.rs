//! On-demand measurements: an operator asks for a trace to one target from some or all
//! slaves now (`POST /api/v1/measurements`); each of our slaves holds a long-poll
//! (`POST /api/v1/jobs`) and gets the job within a second; their results are stored like
//! any other, marked with the measurement, in a series of their own that no change detection
//! is fed from; `GET /api/v1/measurements/{id}` says how far each slave is.
//!
//! Measurements and their runs live in the store, so every master sharing a database serves
//! them: a slave may poll any of them. A master wakes its own waiting polls at once when it
//! creates a measurement, and checks the store every second for ones other masters made.

use super::config::Role;
use super::routes::{App, Reply, Request, Response};
use super::store::{MeasurementRecord, RunRecord};
use crate::proto::{JobSpec, JobsAnswer, JobsRequest};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The target UUID of on-demand results: not a UUID, so no configured target has it.
pub const ON_DEMAND: &str = "on-demand";

/// Longest a slave's poll is held open.
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// A job handed out but not confirmed running by the slave's next poll within this long is
/// handed out again (the answer may have been lost with its connection).
pub const REDELIVER_MS: i64 = 5_000;
/// A slave counts as connected when it polled for jobs this recently.
pub const ONLINE_MS: i64 = 60_000;
/// Most flows one measurement may ask for.
pub const MAX_FLOWS: u16 = 16;
/// Flows every slave traces in a follow-up: the slave that raised the event also shows
/// whether other ECMP branches still get through.
pub const FOLLOW_UP_FLOWS: u16 = 4;
/// One follow-up per target in this long: the events of other slaves in the same incident
/// attach to the one already running.
pub const FOLLOW_UP_EVERY: Duration = Duration::from_secs(300);
/// The name follow-ups are started and counted under.
pub const FOLLOW_UP_USER: &str = "follow-up";

/// The operator's limits on measurements.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Targets allowed beyond the configured ones: host names (exact, case-insensitive) and
    /// address prefixes.
    pub allow: Vec<Allowed>,
    /// Measurements one user may start per minute.
    pub per_user_per_minute: u32,
    /// Measurements all users together may start per minute.
    pub fleet_per_minute: u32,
    /// Most probes one measurement may send (slaves × flows × max hops × queries).
    pub max_probes: u64,
    /// A `path-change` or `unreachable` event starts a follow-up measurement of its target
    /// from every slave (`-measure-follow-up`).
    pub follow_up: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow: Vec::new(),
            per_user_per_minute: 10,
            fleet_per_minute: 60,
            max_probes: 50_000,
            follow_up: false,
        }
    }
}

/// `-measure-allow` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Allowed>);

/// One entry of `-measure-allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A host name.
    Name(String),
    /// An address prefix.
    Prefix(IpAddr, u8),
}

/// Parses `-measure-allow`: comma-separated host names and `ADDRESS/BITS` prefixes.
pub fn parse_allow(text: &str) -> Result<Vec<Allowed>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((addr, bits)) = item.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("'{item}' is no ADDRESS/BITS prefix"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("'{item}': the prefix length must be 0..{max}"))?;
            out.push(Allowed::Prefix(addr, bits));
        } else if let Ok(addr) = item.parse::<IpAddr>() {
            out.push(Allowed::Prefix(addr, if addr.is_ipv4() { 32 } else { 128 }));
        } else if valid_host(item) {
            out.push(Allowed::Name(item.to_ascii_lowercase()));
        } else {
            return Err(format!(
                "'{item}' is neither a host name nor an address prefix"
            ));
        }
    }
    Ok(out)
}

fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn in_prefix(a: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (a.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Which slaves a measurement asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every configured slave.
    All,
    /// These, by name.
    Names(Vec<String>),
    /// This many of the connected ones, picked at random.
    Some(usize),
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Selector, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) if s == "all" => Ok(Selector::All),
            Value::Array(items) if !items.is_empty() => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!(
                        "slaves: a list of slave names, not {other}"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Selector::Names),
            Value::Number(n) => match n.as_u64() {
                Some(n @ 1..=10_000) => Ok(Selector::Some(n as usize)),
                _ => Err(D::Error::custom("slaves: a number must be 1..10000")),
            },
            other => Err(D::Error::custom(format!(
                "slaves: \"all\", a list of slave names or a number, not {other}"
            ))),
        }
    }
}

/// The body of `POST /api/v1/measurements`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    /// Host name or address to trace.
    pub target: String,
    /// Which slaves (default all).
    #[serde(default)]
    pub slaves: Option<Selector>,
    /// `udp` (default), `icmp` or `tcp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Destination port for UDP/TCP.
    #[serde(default)]
    pub port: Option<u16>,
    /// Flows per slave (1..16, default 1).
    #[serde(default)]
    pub flows: Option<u16>,
    /// Probes per hop (1..10, default 3).
    #[serde(default)]
    pub queries: Option<u8>,
    /// Highest TTL (1..64, default the targets file's MaxHops).
    #[serde(default)]
    pub max_hops: Option<u8>,
    /// How long to wait for the slaves, seconds (5..600, default 60).
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

/// The master's side of measurements: the polls waiting for a job, and the rate counters.
#[derive(Default)]
pub struct Board {
    waiting: Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>>,
    started: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// The master is shutting down: polls are answered at once.
    stopping: std::sync::atomic::AtomicBool,
    /// Measurements this master started that are not over: their states as last told on
    /// the stream, and the events a follow-up answers.
    open: Mutex<Vec<Open>>,
    /// The latest follow-up of each target (target UUID → measurement, when).
    recent: Mutex<HashMap<String, (String, Instant)>>,
    /// Events waiting for their follow-up to start (then their alert goes out with it),
    /// off the request's thread.
    later: Mutex<VecDeque<super::store::EventRecord>>,
    later_ready: std::sync::Condvar,
    /// The limits.
    pub policy: Policy,
}

/// A measurement of this master not over yet.
struct Open {
    id: String,
    /// The states last published.
    told: Vec<String>,
    /// The change events it follows up.
    events: Vec<super::store::EventRecord>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Board {
    /// A board with these limits.
    pub fn new(policy: Policy) -> Board {
        Board {
            policy,
            ..Board::default()
        }
    }

    /// Wakes the polls `slave` holds (they then look for jobs).
    pub fn wake(&self, slave: &str) {
        if let Some(list) = lock(&self.waiting).remove(slave) {
            for tx in list {
                let _ = tx.send(());
            }
        }
    }

    /// Answers every waiting poll now, and every later one at once (the master stops).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let all: Vec<_> = lock(&self.waiting).drain().collect();
        for (_, list) in all {
            for tx in list {
                let _ = tx.send(());
            }
        }
    }

    /// Notes a measurement just started, to tell its progress on the stream.
    fn opened(&self, m: &MeasurementRecord, now: i64) {
        lock(&self.open).push(Open {
            id: m.id.clone(),
            told: m
                .runs
                .iter()
                .map(|r| state_at(r, m.deadline, now).to_owned())
                .collect(),
            events: Vec::new(),
        });
    }

    /// Takes change event `e` for a follow-up when `-measure-follow-up` wants one: it is
    /// then started, and the event's alert sent with it, on the follow-up thread. False when
    /// the event gets none (the caller alerts as ever).
    pub fn hand(&self, e: &super::store::EventRecord, debug: bool) -> bool {
        use super::analysis::Event;
        let wanted = self.policy.follow_up
            && !debug
            && matches!(
                e.event,
                Event::PathChange { .. } | Event::Unreachable { .. } | Event::BranchLost { .. }
            )
            && !e.target_id.is_empty()
            && e.target_id != ON_DEMAND;
        if wanted {
            lock(&self.later).push_back(e.clone());
            self.later_ready.notify_one();
        }
        wanted
    }

    /// Slaves holding a poll now.
    pub fn waiting_slaves(&self) -> Vec<String> {
        let mut w = lock(&self.waiting);
        w.retain(|_, list| {
            list.retain(|tx| !tx.is_closed());
            !list.is_empty()
        });
        w.keys().cloned().collect()
    }

    fn wait(&self, slave: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut w = lock(&self.waiting);
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tx.send(());
            return rx;
        }
        let list = w.entry(slave.to_owned()).or_default();
        list.retain(|tx| !tx.is_closed());
        list.push(tx);
        rx
    }

    /// Counts a measurement of `user` against the rates; `Err` says which rate is spent.
    fn admit(&self, user: &str, now: Instant) -> Result<(), String> {
        let minute = Duration::from_secs(60);
        let mut started = lock(&self.started);
        for list in started.values_mut() {
            while list
                .front()
                .is_some_and(|t| now.duration_since(*t) >= minute)
            {
                list.pop_front();
            }
        }
        started.retain(|_, l| !l.is_empty());
        let fleet: usize = started.values().map(VecDeque::len).sum();
        if fleet >= self.policy.fleet_per_minute as usize {
            return Err(format!(
                "this master started {} measurements in the last minute (-measure-fleet-rate)",
                self.policy.fleet_per_minute
            ));
        }
        let mine = started.entry(user.to_owned()).or_default();
        if mine.len() >= self.policy.per_user_per_minute as usize {
            return Err(format!(
                "user '{user}' started {} measurements in the last minute (-measure-rate)",
                self.policy.per_user_per_minute
            ));
        }
        mine.push_back(now);
        Ok(())
    }
}

/// Wakes, once a second, the polls of slaves that got a job from another master sharing the
/// database (this master's own jobs wake them at once). Ends with the master.
pub fn watch(app: std::sync::Weak<App>) {
    let mut since = now_ms();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(app) = app.upgrade() else { return };
        progress(&app);
        if app.measure.waiting_slaves().is_empty() {
            since = now_ms() - 1_000;
            continue;
        }
        let checked = now_ms();
        match app.store.queued_since(since - 1_000) {
            Ok(slaves) => {
                for s in slaves {
                    app.measure.wake(&s);
                }
                since = checked;
            }
            Err(e) => log::warn!("cannot look for new measurement jobs: {e:#}"),
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Tells on the stream each measurement of this master whose states changed; one that is
/// over is told a last time, with its results, and a follow-up's summary goes to the log and
/// the webhook with the events it answers.
fn progress(app: &App) {
    let ids: Vec<String> = lock(&app.measure.open)
        .iter()
        .map(|o| o.id.clone())
        .collect();
    let now = now_ms();
    for id in ids {
        let m = match app.store.measurement(&id) {
            Ok(Some(m)) => m,
            Ok(None) => {
                lock(&app.measure.open).retain(|o| o.id != id);
                continue;
            }
            Err(e) => {
                log::warn!("cannot read measurement {id}: {e:#}");
                continue;
            }
        };
        let states: Vec<String> = m
            .runs
            .iter()
            .map(|r| state_at(r, m.deadline, now).to_owned())
            .collect();
        let over = !states
            .iter()
            .any(|s| matches!(s.as_str(), "queued" | "delivered" | "running"));
        let (changed, events) = {
            let mut open = lock(&app.measure.open);
            let Some(o) = open.iter_mut().find(|o| o.id == id) else {
                continue;
            };
            let changed = o.told != states;
            o.told = states;
            let events = if over {
                std::mem::take(&mut o.events)
            } else {
                Vec::new()
            };
            if over {
                open.retain(|o| o.id != id);
            }
            (changed, events)
        };
        if !changed && !over {
            continue;
        }
        let results = if over {
            match app.store.measurement_results(&id) {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("cannot read the results of measurement {id}: {e:#}");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let v = view(&m, &results, now);
        app.stream.measurement(&v);
        if !events.is_empty() {
            let summary = v["summary"].as_str().unwrap_or_default().to_owned();
            log::info!("follow-up {id} of {}: {summary}", m.spec.target);
            app.alerts.follow_up(&events, &v);
        }
    }
}

/// Starts the follow-ups of the events [`Board::hand`] took and sends their alerts, naming
/// the follow-up. Ends with the master.
pub fn follow_ups(app: std::sync::Weak<App>) {
    loop {
        let next = {
            let Some(strong) = app.upgrade() else { return };
            let board = strong.measure.clone();
            drop(strong);
            let mut q = lock(&board.later);
            if q.is_empty() {
                q = board
                    .later_ready
                    .wait_timeout(q, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            q.pop_front()
        };
        let Some(e) = next else { continue };
        let Some(app) = app.upgrade() else { return };
        let id = follow_up(&app, &e);
        app.alerts.send(&e, false, id.as_deref());
    }
}

/// Starts (or joins) the follow-up of change event `e`: every slave traces the target now
/// with [`FOLLOW_UP_FLOWS`] flows. One follow-up per target runs in [`FOLLOW_UP_EVERY`];
/// the events of other slaves in that time attach to it. Returns the measurement's ID.
fn follow_up(app: &App, e: &super::store::EventRecord) -> Option<String> {
    let joined = {
        let recent = lock(&app.measure.recent);
        recent
            .get(&e.target_id)
            .filter(|(_, at)| at.elapsed() < FOLLOW_UP_EVERY)
            .map(|(id, _)| id.clone())
    };
    if let Some(id) = joined {
        if let Err(err) = app.store.attach_follow_up(e.id, &id) {
            log::warn!("cannot attach event {} to follow-up {id}: {err:#}", e.id);
            return None;
        }
        if let Some(o) = lock(&app.measure.open).iter_mut().find(|o| o.id == id) {
            o.events.push(e.clone());
        }
        return Some(id);
    }
    let mut ask = Ask {
        target: e.target_id.clone(),
        slaves: Some(Selector::All),
        protocol: None,
        port: None,
        flows: Some(FOLLOW_UP_FLOWS),
        queries: None,
        max_hops: None,
        timeout_s: None,
    };
    let mut started = start(app, &ask, FOLLOW_UP_USER, "this master", Some(e.id));
    if started.as_ref().is_err_and(|r| r.status == 400) {
        // Too many probes for four flows from every slave: one flow each.
        ask.flows = Some(1);
        started = start(app, &ask, FOLLOW_UP_USER, "this master", Some(e.id));
    }
    match started {
        Ok(m) => {
            lock(&app.measure.recent).insert(e.target_id.clone(), (m.id.clone(), Instant::now()));
            if let Some(o) = lock(&app.measure.open).iter_mut().find(|o| o.id == m.id) {
                o.events.push(e.clone());
            }
            log::info!(
                "follow-up {} of the {} of {} on {}",
                m.id,
                e.event.kind(),
                e.slave,
                e.target_name
            );
            Some(m.id)
        }
        Err(r) => {
            log::warn!(
                "no follow-up for the {} of {} on {}: {}",
                e.event.kind(),
                e.slave,
                e.target_name,
                String::from_utf8_lossy(r.body.as_bytes().unwrap_or_default())
            );
            None
        }
    }
}

/// One sentence on what a measurement found: which slaves reached the target (on how many
/// of their flows) and where the others' answers stopped; for an incident, "only s3 lost
/// it" or "no slave reached it: all stopped after hop 7".
fn summary(m: &MeasurementRecord, results: &[super::store::StoredResult]) -> String {
    let target = &m.spec.target;
    let mut reached = Vec::new();
    let mut partly = Vec::new();
    let mut lost: Vec<(String, i64)> = Vec::new();
    for run in &m.runs {
        let mine: Vec<_> = results.iter().filter(|r| r.slave == run.slave).collect();
        if mine.is_empty() {
            continue;
        }
        let ok = mine.iter().filter(|r| r.success).count();
        if ok == mine.len() {
            reached.push(run.slave.clone());
        } else if ok > 0 {
            partly.push(format!("{} on {ok} of {} flows", run.slave, mine.len()));
        } else {
            let last = mine
                .iter()
                .flat_map(|r| r.hops.iter().map(|h| h.ttl))
                .max()
                .unwrap_or(0);
            lost.push((run.slave.clone(), last));
        }
    }
    let asked = m.runs.len();
    let answered = reached.len() + partly.len() + lost.len();
    if answered == 0 {
        return format!("no slave delivered a result (of {asked} asked)");
    }
    let mut parts = Vec::new();
    if lost.is_empty() && partly.is_empty() {
        parts.push(format!(
            "every slave that answered reached {target} ({answered} of {asked})"
        ));
    } else if reached.is_empty() && partly.is_empty() {
        let first = lost[0].1;
        if lost.iter().all(|(_, l)| *l == first) {
            parts.push(format!(
                "no slave reached {target}: all stopped after hop {first}"
            ));
        } else {
            let at: Vec<String> = lost
                .iter()
                .map(|(s, l)| format!("{s} after hop {l}"))
                .collect();
            parts.push(format!("no slave reached {target}: {}", at.join(", ")));
        }
    } else {
        if let [(s, l)] = lost.as_slice() {
            parts.push(format!("only {s} lost {target} (last answer at hop {l})"));
        } else if !lost.is_empty() {
            let at: Vec<String> = lost
                .iter()
                .map(|(s, l)| format!("{s} after hop {l}"))
                .collect();
            parts.push(format!(
                "{} did not reach {target} ({})",
                lost.len(),
                at.join(", ")
            ));
        }
        if !partly.is_empty() {
            parts.push(format!("reached it on some flows: {}", partly.join(", ")));
        }
        if !reached.is_empty() {
            parts.push(format!("reached it: {}", reached.join(", ")));
        }
    }
    let paths: std::collections::HashSet<&str> =
        results.iter().map(|r| r.path_id.as_str()).collect();
    parts.push(format!(
        "{} distinct path{} in {} result{}",
        paths.len(),
        if paths.len() == 1 { "" } else { "s" },
        results.len(),
        if results.len() == 1 { "" } else { "s" }
    ));
    parts.join("; ")
}

/// `POST /api/v1/measurements` by `user` (already known to hold `role`).
pub fn create(app: &App, req: &Request, user: &str, role: Role) -> Response {
    if role == Role::Viewer {
        return Response::error(
            403,
            format!(
                "user '{user}' is a viewer: starting measurements needs the role operator or admin"
            ),
        );
    }
    let ask: Ask = match serde_json::from_slice(&req.body) {
        Ok(a) => a,
        Err(e) => return Response::error(400, format!("body is not a measurement: {e}")),
    };
    let record = match start(app, &ask, user, &req.remote.ip().to_string(), None) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let id = &record.id;
    let mut body = view(&record, &[], now_ms());
    body["url"] = json!(format!("/api/v1/measurements/{id}"));
    let mut resp = Response::json(202, &body);
    resp.headers
        .push(("Location", format!("/api/v1/measurements/{id}")));
    resp
}

/// Checks, stores and announces a measurement of `user` (asking from `from`, for the log),
/// the follow-up of change event `event` when there is one; `Err` is the refusal.
fn start(
    app: &App,
    ask: &Ask,
    user: &str,
    from: &str,
    event: Option<i64>,
) -> Result<MeasurementRecord, Response> {
    let config = app.config.get();
    let spec = job_spec(ask, &config, &app.measure.policy).map_err(|e| Response::error(400, e))?;
    let now = now_ms();
    let known: HashMap<String, super::store::SlaveRecord> = match app.store.slaves() {
        Ok(list) => list.into_iter().map(|s| (s.name.clone(), s)).collect(),
        Err(e) => return Err(Response::error(503, format!("storage error: {e:#}"))),
    };
    let mut configured: Vec<String> = config
        .slaves
        .slaves
        .iter()
        .map(|s| s.name.0.clone())
        .collect();
    for e in &app.enrolled.get().slaves {
        if !configured.contains(&e.name.0) {
            configured.push(e.name.0.clone());
        }
    }
    let chosen: Vec<String> = match ask.slaves.clone().unwrap_or(Selector::All) {
        Selector::All => configured.clone(),
        Selector::Names(asked) => {
            // `tag:eu`, or a plain `eu` that is no slave's name but some slaves' tag: those
            // slaves.
            let mut names = Vec::new();
            for n in asked {
                let tag = match n.strip_prefix("tag:") {
                    Some(t) => Some(
                        super::config::Tag::parse(t)
                            .map_err(|e| Response::error(400, format!("slaves: {e}")))?,
                    ),
                    None if !configured.contains(&n) => super::config::Tag::parse(&n).ok(),
                    None => None,
                };
                match tag.map(|t| (app.tagged(&t), t)) {
                    Some((tagged, t)) if tagged.is_empty() && n.starts_with("tag:") => {
                        return Err(Response::error(
                            400,
                            format!("slaves: no slave has the tag '{}'", t.0),
                        ));
                    }
                    Some((tagged, _)) if !tagged.is_empty() => names.extend(tagged),
                    _ => names.push(n),
                }
            }
            let unknown: Vec<&String> = names.iter().filter(|n| !configured.contains(n)).collect();
            if !unknown.is_empty() {
                return Err(Response::error(
                    400,
                    format!(
                        "slaves: no slave named {} (the slaves are: {})",
                        unknown
                            .iter()
                            .map(|n| format!("'{}'", n.escape_debug()))
                            .collect::<Vec<_>>()
                            .join(", "),
                        configured.join(", ")
                    ),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(n.clone()));
            names
        }
        Selector::Some(n) => {
            let mut online: Vec<String> = configured
                .iter()
                .filter(|s| offline_reason(known.get(*s), now).is_none())
                .cloned()
                .collect();
            if online.is_empty() {
                return Err(Response::error(
                    409,
                    "no slave is connected for on-demand jobs now",
                ));
            }
            fastrand::shuffle(&mut online);
            online.truncate(n);
            online.sort();
            online
        }
    };
    let probes = chosen.len() as u64
        * u64::from(spec.flows)
        * u64::from(spec.max_hops)
        * u64::from(spec.queries);
    if probes > app.measure.policy.max_probes {
        return Err(Response::error(
            400,
            format!(
                "this measurement would send up to {probes} probes ({} slaves × {} flows × {} hops × {} queries); the limit is {} (-measure-max-probes)",
                chosen.len(),
                spec.flows,
                spec.max_hops,
                spec.queries,
                app.measure.policy.max_probes
            ),
        ));
    }
    if let Err(e) = app.measure.admit(user, Instant::now()) {
        let mut r = Response::error(429, format!("too many measurements: {e}"));
        r.headers.push(("Retry-After", "60".into()));
        return Err(r);
    }
    let timeout_ms = i64::from(ask.timeout_s.unwrap_or(60)) * 1000;
    let runs: Vec<RunRecord> = chosen
        .iter()
        .map(|name| {
            let reason = offline_reason(known.get(name), now);
            RunRecord {
                slave: name.clone(),
                state: if reason.is_some() {
                    "offline"
                } else {
                    "queued"
                }
                .to_owned(),
                updated_at: now,
                results: 0,
                reason,
            }
        })
        .collect();
    let record = MeasurementRecord {
        id: spec.id.clone(),
        created_at: now,
        deadline: now + timeout_ms,
        requested_by: user.to_owned(),
        event,
        spec: spec.clone(),
        runs,
    };
    if let Err(e) = app.store.create_measurement(&record) {
        return Err(Response::error(503, format!("storage error: {e:#}")));
    }
    log::info!(
        "measurement {} by {user} from {from}: {} {} from {} slaves ({} queued)",
        spec.id,
        spec.protocol,
        spec.target,
        record.runs.len(),
        record.runs.iter().filter(|r| r.state == "queued").count()
    );
    for r in record.runs.iter().filter(|r| r.state == "queued") {
        app.measure.wake(&r.slave);
    }
    app.measure.opened(&record, now);
    app.stream.measurement(&view(&record, &[], now));
    Ok(record)
}

/// Why `slave` cannot take a job now, or `None` when it can.
fn offline_reason(s: Option<&super::store::SlaveRecord>, now: i64) -> Option<String> {
    let Some(s) = s else {
        return Some("never seen by the master".into());
    };
    let ours = s
        .version
        .as_deref()
        .is_some_and(|v| v.starts_with("dist-traceroute"));
    if !ours {
        return Some("not one of our slaves (an original Go slave takes no on-demand jobs)".into());
    }
    match s.last_seen {
        Some(t) if now - t <= ONLINE_MS => None,
        Some(t) => Some(format!("not seen for {} s", (now - t) / 1000)),
        None => Some("never seen by the master".into()),
    }
}

/// Checks an operator's request against the config and the policy.
fn job_spec(ask: &Ask, config: &super::config::Config, policy: &Policy) -> Result<JobSpec, String> {
    let target = ask.target.trim();
    if target.is_empty() {
        return Err("target: a host name or an address is needed".into());
    }
    let addr: Option<IpAddr> = target.parse().ok();
    if addr.is_none() && !valid_host(target) {
        return Err(format!(
            "target '{}' is neither a host name nor an address",
            super::routes::truncate(target, 64).escape_debug()
        ));
    }
    let configured = config.targets.targets.iter().find(|(id, t)| {
        id.0 == target || t.name.0 == target || t.address.0.eq_ignore_ascii_case(target)
    });
    let host = match configured {
        Some((_, t)) => t.address.0.clone(),
        None => {
            let allowed = policy.allow.iter().any(|a| match (a, addr) {
                (Allowed::Name(n), None) => n.eq_ignore_ascii_case(target),
                (Allowed::Prefix(net, bits), Some(a)) => in_prefix(a, *net, *bits),
                _ => false,
            });
            if !allowed {
                return Err(format!(
                    "target '{}' is not a configured target and not in -measure-allow: \
                     measurements go to the targets of dt-targets.json (by name, address or \
                     UUID) unless the operator allows more",
                    super::routes::truncate(target, 64).escape_debug()
                ));
            }
            target.to_owned()
        }
    };
    let protocol = match ask.protocol.as_deref() {
        None => configured
            .and_then(|(_, t)| t.protocol.clone())
            .unwrap_or_else(|| "udp".into()),
        Some(p) if crate::trace::Protocol::parse(p).is_some() => p.to_ascii_lowercase(),
        Some(p) => {
            return Err(format!(
                "protocol '{}' is not one of udp, icmp, tcp",
                super::routes::truncate(p, 16).escape_debug()
            ));
        }
    };
    let flows = ask.flows.unwrap_or(1);
    if !(1..=MAX_FLOWS).contains(&flows) {
        return Err(format!("flows must be 1..{MAX_FLOWS}"));
    }
    let queries = ask.queries.unwrap_or(3);
    if !(1..=10).contains(&queries) {
        return Err("queries must be 1..10".into());
    }
    let max_hops = ask.max_hops.unwrap_or(config.targets.max_hops.min(64));
    if !(1..=64).contains(&max_hops) {
        return Err("max_hops must be 1..64".into());
    }
    if let Some(t) = ask.timeout_s
        && !(5..=600).contains(&t)
    {
        return Err("timeout_s must be 5..600".into());
    }
    Ok(JobSpec {
        id: uuid::Uuid::new_v4().to_string(),
        target: host,
        protocol,
        port: ask.port.or(configured.and_then(|(_, t)| t.port)),
        flows,
        queries,
        max_hops,
        timeout_ms: config.targets.timeout_ms,
    })
}

/// The state of a run as of `now`: an unfinished run past the deadline timed out.
fn state_at(run: &RunRecord, deadline: i64, now: i64) -> &str {
    match run.state.as_str() {
        "queued" | "delivered" | "running" if now > deadline => "timed-out",
        // Handed out is still queued for whoever asks: the slave has not said it runs it.
        "delivered" => "queued",
        s => s,
    }
}

/// A measurement as the API shows it.
fn view(m: &MeasurementRecord, results: &[super::store::StoredResult], now: i64) -> Value {
    let iso = super::store::rfc3339_ms;
    let slaves: Vec<Value> = m
        .runs
        .iter()
        .map(|r| {
            let mine: Vec<&super::store::StoredResult> =
                results.iter().filter(|x| x.slave == r.slave).collect();
            let mut v = json!({
                "name": r.slave,
                "state": state_at(r, m.deadline, now),
                "results_expected": m.spec.flows,
                "result": mine.first(),
                "results": mine,
                "updated_at": iso(r.updated_at),
                "updated_at_ms": r.updated_at,
            });
            if let Some(why) = &r.reason {
                v["reason"] = json!(why);
            }
            v
        })
        .collect();
    let open = m.runs.iter().any(|r| {
        matches!(
            state_at(r, m.deadline, now),
            "queued" | "delivered" | "running"
        )
    });
    json!({
        "id": m.id,
        "status": if open { "running" } else { "done" },
        "target": m.spec.target,
        "protocol": m.spec.protocol,
        "port": m.spec.port,
        "flows": m.spec.flows,
        "queries": m.spec.queries,
        "max_hops": m.spec.max_hops,
        "requested_by": m.requested_by,
        "event_id": m.event,
        "summary": (!open).then(|| summary(m, results)),
        "created_at": iso(m.created_at),
        "created_at_ms": m.created_at,
        "deadline": iso(m.deadline),
        "deadline_ms": m.deadline,
        "slaves": slaves,
    })
}

/// The follow-ups of events (event id → measurement id) as the events API shows them:
/// `id`, `url`, `status` and, once over, `summary`.
pub fn briefs(app: &App, follow_ups: &HashMap<i64, String>) -> anyhow::Result<HashMap<i64, Value>> {
    let mut seen: HashMap<&str, Value> = HashMap::new();
    let now = now_ms();
    for id in follow_ups.values() {
        if seen.contains_key(id.as_str()) {
            continue;
        }
        let Some(m) = app.store.measurement(id)? else {
            continue;
        };
        let results = app.store.measurement_results(id)?;
        let v = view(&m, &results, now);
        let mut brief = super::alert::follow_up_ref(id);
        brief["status"] = v["status"].clone();
        brief["summary"] = v["summary"].clone();
        seen.insert(id, brief);
    }
    Ok(follow_ups
        .iter()
        .filter_map(|(e, id)| seen.get(id.as_str()).map(|b| (*e, b.clone())))
        .collect())
}

/// `GET /api/v1/measurements/{id}`.
pub fn status(app: &App, id: &str) -> Response {
    let found = match app.store.measurement(id) {
        Ok(f) => f,
        Err(e) => return Response::error(503, format!("storage error: {e:#}")),
    };
    let Some(m) = found else {
        return Response::error(
            404,
            format!(
                "no measurement '{}'",
                super::routes::truncate(id, 64).escape_debug()
            ),
        );
    };
    let results = match app.store.measurement_results(id) {
        Ok(r) => r,
        Err(e) => return Response::error(503, format!("storage error: {e:#}")),
    };
    Response::json(200, &view(&m, &results, now_ms()))
}

/// `POST /api/v1/jobs`: a slave (already authenticated) says which jobs it runs and asks for
/// new ones; held up to its `Wait` (at most [`MAX_WAIT`]) until there is one.
pub fn poll(app: &App, jobs: JobsRequest) -> Reply {
    let slave = jobs.creds.name.clone();
    let now = now_ms();
    if !jobs.running.is_empty()
        && let Err(e) = app.store.runs_started(&slave, &jobs.running, now)
    {
        log::warn!("cannot record the running jobs of {slave}: {e:#}");
    }
    let first = match app.store.take_jobs(&slave, now - REDELIVER_MS, now) {
        Ok(j) => j,
        Err(e) => return Reply::Now(Response::error(503, format!("storage error: {e:#}"))),
    };
    let wait = Duration::from_secs(u64::from(jobs.wait)).min(MAX_WAIT);
    let stopping = app
        .measure
        .stopping
        .load(std::sync::atomic::Ordering::SeqCst);
    if !first.is_empty() || wait.is_zero() || stopping {
        return Reply::Now(Response::json(200, &JobsAnswer { jobs: first }));
    }
    let rx = app.measure.wait(&slave);
    Reply::wait(rx, wait, move |app: &App, _woken| {
        let now = now_ms();
        match app.store.take_jobs(&slave, now - REDELIVER_MS, now) {
            Ok(jobs) => Response::json(200, &JobsAnswer { jobs }),
            Err(e) => Response::error(503, format!("storage error: {e:#}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_allow_lists_parse_or_say_why_not() {
        let sel = |v: Value| serde_json::from_value::<Selector>(v).map_err(|e| e.to_string());
        assert_eq!(sel(json!("all")), Ok(Selector::All));
        assert_eq!(
            sel(json!(["a", "b"])),
            Ok(Selector::Names(vec!["a".into(), "b".into()]))
        );
        assert_eq!(sel(json!(3)), Ok(Selector::Some(3)));
        assert!(sel(json!(0)).unwrap_err().contains("1..10000"));
        assert!(sel(json!("some")).unwrap_err().contains("\"all\""));
        assert!(sel(json!([1])).unwrap_err().contains("names"));
        let allow = parse_allow("example.net, 192.0.2.0/24,2001:db8::/32, 198.51.100.7").unwrap();
        assert_eq!(allow.len(), 4);
        let v4: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(in_prefix(v4, "192.0.2.0".parse().unwrap(), 24));
        assert!(!in_prefix(v4, "192.0.3.0".parse().unwrap(), 24));
        assert!(in_prefix(
            "2001:db8:1::1".parse().unwrap(),
            "2001:db8::".parse().unwrap(),
            32
        ));
        assert!(in_prefix(v4, "0.0.0.0".parse().unwrap(), 0));
        assert!(parse_allow("10.0.0.0/33").unwrap_err().contains("0..32"));
        assert!(parse_allow("not a host").unwrap_err().contains("neither"));
    }

    #[test]
    fn rates_count_per_user_and_for_the_fleet() {
        let board = Board::new(Policy {
            per_user_per_minute: 2,
            fleet_per_minute: 3,
            ..Policy::default()
        });
        let t = Instant::now();
        assert!(board.admit("alice", t).is_ok());
        assert!(board.admit("alice", t).is_ok());
        assert!(
            board
                .admit("alice", t)
                .unwrap_err()
                .contains("-measure-rate")
        );
        assert!(board.admit("bob", t).is_ok());
        assert!(
            board
                .admit("carol", t)
                .unwrap_err()
                .contains("-measure-fleet-rate")
        );
        // A minute later the counts start over.
        assert!(board.admit("alice", t + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn a_summary_says_who_lost_the_target_and_where() {
        use super::super::store::{NewHop, Origin, StoredResult};
        let result = |slave: &str, flow: i64, last_ttl: i64, success: bool| StoredResult {
            id: format!("{slave}-{flow}"),
            slave: slave.into(),
            target_id: ON_DEMAND.into(),
            target_name: "t".into(),
            target_address: "192.0.2.9".into(),
            target_known: true,
            target_selected: true,
            date_time: String::new(),
            measured_at: 0,
            ordered_at: None,
            duration_ns: None,
            received_at: 0,
            success,
            hop_count: last_ttl,
            path_id: format!("p{last_ttl}{success}"),
            path: String::new(),
            protocol: None,
            flow: Some(flow),
            destination: None,
            unreachable: None,
            error: None,
            origin: Origin::default(),
            multipath: None,
            hops: (1..=last_ttl)
                .map(|ttl| NewHop {
                    ttl,
                    address: format!("10.0.0.{ttl}"),
                    host: String::new(),
                    rtt_ns: 1,
                    size: 0,
                    kind: None,
                    reply_ttl: None,
                    replies: None,
                    mpls: None,
                })
                .collect(),
        };
        let m = |slaves: &[&str]| MeasurementRecord {
            id: "m".into(),
            created_at: 0,
            deadline: 0,
            requested_by: FOLLOW_UP_USER.into(),
            event: Some(1),
            spec: JobSpec {
                id: "m".into(),
                target: "192.0.2.9".into(),
                protocol: "udp".into(),
                port: None,
                flows: 2,
                queries: 3,
                max_hops: 30,
                timeout_ms: 1000,
            },
            runs: slaves
                .iter()
                .map(|s| RunRecord {
                    slave: (*s).into(),
                    state: "done".into(),
                    updated_at: 0,
                    results: 2,
                    reason: None,
                })
                .collect(),
        };
        let three = m(&["s1", "s2", "s3"]);
        let only_s3 = [
            result("s1", 0, 5, true),
            result("s2", 0, 5, true),
            result("s3", 0, 7, false),
        ];
        assert_eq!(
            summary(&three, &only_s3),
            "only s3 lost 192.0.2.9 (last answer at hop 7); reached it: s1, s2; \
             2 distinct paths in 3 results"
        );
        let all_lost = [result("s1", 0, 7, false), result("s2", 0, 7, false)];
        assert_eq!(
            summary(&three, &all_lost),
            "no slave reached 192.0.2.9: all stopped after hop 7; 1 distinct path in 2 results"
        );
        let branch = [
            result("s1", 0, 5, true),
            result("s1", 1, 4, false),
            result("s2", 0, 5, true),
        ];
        assert_eq!(
            summary(&three, &branch),
            "reached it on some flows: s1 on 1 of 2 flows; reached it: s2; \
             2 distinct paths in 3 results"
        );
        assert_eq!(
            summary(&three, &[]),
            "no slave delivered a result (of 3 asked)"
        );
    }

    #[test]
    fn a_run_past_its_deadline_timed_out_unless_it_ended() {
        let run = |state: &str| RunRecord {
            slave: "s".into(),
            state: state.into(),
            updated_at: 0,
            results: 0,
            reason: None,
        };
        assert_eq!(state_at(&run("running"), 10, 11), "timed-out");
        assert_eq!(state_at(&run("delivered"), 10, 5), "queued");
        assert_eq!(state_at(&run("done"), 10, 11), "done");
        assert_eq!(state_at(&run("offline"), 10, 11), "offline");
    }
}
