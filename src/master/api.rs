//! The query API (`GET /api/v1/…`): slaves, targets, results with cursor paging, the current
//! path of each (slave, target, flow) with per-hop statistics over a time window, path history
//! and change events. Read-only; every query goes through the store's interface.

use super::routes::{App, Request, Response};
use super::store::{Cursor, EventQuery, NewHop, ResultQuery, SeriesFilter, SlaveRecord};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Query parameters, checked against what an endpoint accepts.
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses `query`; a parameter not in `allowed` or given twice is an error.
    pub fn parse(query: &str, allowed: &[&str]) -> Result<Params, String> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(format!(
                    "unknown parameter '{}' (this endpoint takes: {})",
                    k.chars().take(32).collect::<String>(),
                    allowed.join(", ")
                ));
            }
            if map.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err("a parameter is given twice".into());
            }
        }
        Ok(Params(map))
    }

    /// A non-empty text parameter.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A whole number in `lo..=hi`, or `default`.
    pub fn number(&self, key: &str, lo: i64, hi: i64, default: i64) -> Result<i64, String> {
        match self.text(key) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{key} '{}' is not a number in {lo}..{hi}",
                    v.chars().take(32).collect::<String>()
                )),
            },
        }
    }

    /// A time as Unix ms: RFC 3339, or a Unix time in seconds or in milliseconds, told apart
    /// by size (see [`unix_ms`]).
    pub fn time(&self, key: &str) -> Result<Option<i64>, String> {
        let Some(v) = self.text(key) else {
            return Ok(None);
        };
        if let Ok(n) = v.parse::<i64>() {
            return unix_ms(n)
                .map(Some)
                .ok_or_else(|| format!("{key} {n} is out of range"));
        }
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|_| {
                format!(
                    "{key} '{}' is neither RFC 3339 nor a Unix time in seconds or milliseconds",
                    v.chars().take(40).collect::<String>()
                )
            })
    }

    /// A duration like `1h` or `30m`, at most a year.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, String> {
        match self.text(key) {
            None => Ok(default),
            Some(v) => match humantime::parse_duration(v) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(366 * 86_400) => Ok(d),
                _ => Err(format!(
                    "{key} '{}' is not a duration like 1h or 30m (at most a year)",
                    v.chars().take(32).collect::<String>()
                )),
            },
        }
    }
}

/// Numbers of this size and above are Unix milliseconds, smaller ones Unix seconds: 10^11
/// seconds is the year 5138, 10^11 milliseconds is March 1973, so no time a result can have
/// is read in the wrong unit.
pub const UNIX_MS_FROM: i64 = 100_000_000_000;

/// A Unix time in seconds or milliseconds (by [`UNIX_MS_FROM`]) as milliseconds; `None` past
/// what a date can be.
pub fn unix_ms(n: i64) -> Option<i64> {
    let ms = if n.unsigned_abs() >= UNIX_MS_FROM as u64 {
        n
    } else {
        n * 1000
    };
    chrono::DateTime::from_timestamp_millis(ms).map(|_| ms)
}

/// Checks that the `slave` and `target` filters name something this master knows (in its
/// config or its store): a name that matches nothing is a 404 naming what exists, not an
/// empty answer that looks like "no results yet".
pub fn check_names(app: &App, slave: Option<&str>, target: Option<&str>) -> Result<(), ApiError> {
    const SHOWN: usize = 50;
    fn listed(names: &[String]) -> String {
        let mut text = names
            .iter()
            .take(SHOWN)
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > SHOWN {
            text.push_str(&format!(" and {} more", names.len() - SHOWN));
        }
        if text.is_empty() {
            text = "none yet".into();
        }
        text
    }
    let config = app.config.get();
    if let Some(want) = slave {
        let known = config.slaves.slaves.iter().any(|s| s.name.0 == want)
            || app.enrolled.get().slave(want).is_some()
            || app.store.slaves()?.iter().any(|s| s.name == want);
        if !known {
            let mut names: Vec<String> = slave_views(app)?.into_iter().map(|v| v.name).collect();
            names.sort();
            return Err(ApiError::NotFound(format!(
                "no slave '{}'; slaves: {}",
                want.chars().take(64).collect::<String>(),
                listed(&names)
            )));
        }
    }
    if let Some(want) = target {
        let configured = config
            .targets
            .targets
            .iter()
            .any(|(id, t)| id.0.eq_ignore_ascii_case(want) || t.name.0 == want);
        if !configured {
            let stored = app.store.targets()?;
            if !stored
                .iter()
                .any(|t| t.uuid.eq_ignore_ascii_case(want) || t.name == want)
            {
                let mut names: Vec<String> = config
                    .targets
                    .targets
                    .values()
                    .map(|t| t.name.0.clone())
                    .chain(stored.into_iter().map(|t| t.name))
                    .collect();
                names.sort();
                names.dedup();
                return Err(ApiError::NotFound(format!(
                    "no target '{}' (by name or UUID); targets: {}",
                    want.chars().take(64).collect::<String>(),
                    listed(&names)
                )));
            }
        }
    }
    Ok(())
}

/// The results filters shared by `/api/v1/results` and the exports: `slave`, `target`, `from`,
/// `to`, `limit` (1..=`max_limit`) and the `cursor` of a previous page (`MEASURED_AT.ROW`).
pub fn result_query(
    app: &App,
    query: &str,
    max_limit: i64,
    default_limit: i64,
) -> Result<ResultQuery, ApiError> {
    let p = Params::parse(
        query,
        &["slave", "tag", "target", "from", "to", "limit", "cursor"],
    )?;
    check_names(app, p.text("slave"), p.text("target"))?;
    let before = match p.text("cursor") {
        None => None,
        Some(c) => {
            Some(Cursor::parse(c).ok_or_else(|| "cursor is not one this API gave".to_owned())?)
        }
    };
    Ok(ResultQuery {
        slave: p.text("slave").map(str::to_owned),
        slaves: tag_slaves(app, &p)?,
        target: p.text("target").map(str::to_owned),
        from: p.time("from")?,
        to: p.time("to")?,
        before,
        limit: p.number("limit", 1, max_limit, default_limit)? as u32,
        ..Default::default()
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix ms as RFC 3339 in UTC with milliseconds, the one time format of the API.
pub use super::store::rfc3339_ms as iso;

fn iso_opt(ms: Option<i64>) -> Option<String> {
    ms.map(iso)
}

/// Runs a query; any error becomes a 400 (bad parameter), 404 or 500.
fn answer<T: Serialize>(f: impl FnOnce() -> Result<T, ApiError>) -> Response {
    match f() {
        Ok(v) => Response::json(200, &v),
        Err(e) => e.response(),
    }
}

impl ApiError {
    /// The error answer: 400, 404 or 500 (the database's words are logged, not sent).
    pub fn response(self) -> Response {
        match self {
            ApiError::Bad(m) => Response::error(400, m),
            ApiError::NotFound(m) => Response::error(404, m),
            ApiError::Db(e) => {
                log::error!("query failed: {e:#}");
                Response::error(500, "query failed")
            }
        }
    }
}

/// Why a query failed.
pub enum ApiError {
    /// A bad parameter: 400.
    Bad(String),
    /// Nothing matched a required selection: 404.
    NotFound(String),
    /// The database failed: 500.
    Db(anyhow::Error),
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Db(e)
    }
}

impl From<String> for ApiError {
    fn from(m: String) -> Self {
        ApiError::Bad(m)
    }
}

/// Routes `GET /api/v1/...` paths this module serves; `None` for others.
pub fn handle(app: &App, req: &Request) -> Option<Response> {
    if req.method != "GET" {
        return None;
    }
    let r = match req.path.as_str() {
        "/api/v1/slaves" => slaves(app, req),
        "/api/v1/targets" => targets(app, req),
        "/api/v1/paths/current" => current_paths(app, req),
        "/api/v1/paths/history" => path_history(app, req),
        "/api/v1/events" => events(app, req),
        "/api/v1/stream" => stream(app, req),
        _ => return None,
    };
    Some(r)
}

/// Default age after which a slave counts as offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(180);

#[derive(Serialize)]
struct SlaveView {
    name: String,
    /// The slave's probe number in the Atlas export.
    prb_id: i64,
    configured: bool,
    online: bool,
    first_seen: Option<String>,
    last_seen: Option<String>,
    last_seen_age_s: Option<f64>,
    last_config: Option<String>,
    remote_addr: Option<String>,
    version: Option<String>,
    results_stored: i64,
    spool_depth: Option<i64>,
    dropped_total: i64,
    clock_skew_s: Option<f64>,
    /// Its tags in the slaves file (or from its enrolment token): what target selectors go by.
    tags: Vec<String>,
    /// Enrolled with a token (in the managed file), with when.
    #[serde(skip_serializing_if = "Option::is_none")]
    enrolled_at: Option<String>,
    /// The tags it gave itself (`-tags`), shown only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reported_tags: Vec<String>,
}

/// Every slave in the config or the store.
pub fn slave_views(app: &App) -> anyhow::Result<Vec<SlaveRecord>> {
    let config = app.config.get();
    let mut out: BTreeMap<String, SlaveRecord> = app
        .store
        .slaves()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let enrolled = app.enrolled.get();
    let allowed = config
        .slaves
        .slaves
        .iter()
        .map(|s| &s.name.0)
        .chain(enrolled.slaves.iter().map(|s| &s.name.0));
    for name in allowed {
        out.entry(name.clone())
            .or_insert_with(|| SlaveRecord {
                name: name.clone(),
                first_seen: None,
                last_seen: None,
                last_config: None,
                remote_addr: None,
                version: None,
                results_stored: 0,
                spool_depth: None,
                dropped_total: 0,
                clock_skew_ms: None,
                configured: true,
            })
            .configured = true;
    }
    Ok(out.into_values().collect())
}

fn slaves(app: &App, req: &Request) -> Response {
    answer(|| {
        let p = Params::parse(&req.query, &["offline_after", "tag"])?;
        let offline_after = p.duration("offline_after", OFFLINE_AFTER)?;
        let now = now_ms();
        let mut views = slave_views(app)?;
        let enrolled = app.enrolled.get();
        if let Some(names) = tag_slaves(app, &p)? {
            views.retain(|v| names.contains(&v.name));
        }
        let reported = app
            .reported_tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let list: Vec<SlaveView> = views
            .into_iter()
            .map(|v| {
                let last = v.last_seen.max(v.last_config);
                let age = last.map(|l| (now - l) as f64 / 1000.0);
                SlaveView {
                    online: age.is_some_and(|a| a <= offline_after.as_secs_f64()),
                    prb_id: super::export::prb_id(&v.name),
                    configured: v.configured,
                    first_seen: iso_opt(v.first_seen),
                    last_seen: iso_opt(last),
                    last_seen_age_s: age,
                    last_config: iso_opt(v.last_config),
                    remote_addr: v.remote_addr,
                    version: v.version,
                    results_stored: v.results_stored,
                    spool_depth: v.spool_depth,
                    dropped_total: v.dropped_total,
                    clock_skew_s: v.clock_skew_ms.map(|ms| ms as f64 / 1000.0),
                    tags: app.tags_of(&v.name).iter().map(|t| t.0.clone()).collect(),
                    enrolled_at: enrolled.slave(&v.name).map(|e| e.enrolled_at.clone()),
                    reported_tags: reported.get(&v.name).cloned().unwrap_or_default(),
                    name: v.name,
                }
            })
            .collect();
        Ok(serde_json::json!({ "slaves": list }))
    })
}

fn targets(app: &App, req: &Request) -> Response {
    answer(|| {
        Params::parse(&req.query, &[])?;
        let config = app.config.get();
        let mut list: Vec<serde_json::Value> = config
            .targets
            .targets
            .iter()
            .map(|(id, t)| {
                serde_json::json!({
                    "id": id.0, "name": t.name.0, "address": t.address.0, "configured": true,
                    "protocol": t.protocol.as_deref().unwrap_or("udp"), "port": t.port,
                    "interval": t.interval, "rtt_alert_ms": t.rtt_alert_ms,
                })
            })
            .collect();
        for t in app.store.targets()? {
            if !config.has_target(&t.uuid) {
                list.push(serde_json::json!({
                    "id": t.uuid, "name": t.name, "address": t.address, "configured": false,
                }));
            }
        }
        // Masters sharing the database: whose config files differ from this one's.
        let masters = app.store.master_configs()?;
        if masters.is_empty() {
            return Ok(serde_json::json!({ "targets": list }));
        }
        let mine = config.digests();
        let fresh = chrono::Utc::now().timestamp_millis() - 10 * 60 * 1000;
        let mut differs = false;
        let peers: Vec<serde_json::Value> = masters
            .iter()
            .map(|m| {
                let same = m.digests == mine;
                differs |= !same && m.seen_at >= fresh;
                serde_json::json!({
                    "name": m.name, "this": m.name == app.name, "config": m.digests,
                    "same_config": same, "seen_at": iso(m.seen_at),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "targets": list, "config": mine, "config_differs": differs, "masters": peers,
        }))
    })
}

/// The slaves of a query's `tag`, when it has one: those with that tag in the slaves file.
pub fn tag_slaves(app: &App, p: &Params) -> Result<Option<Vec<String>>, ApiError> {
    let Some(tag) = p.text("tag") else {
        return Ok(None);
    };
    let tag = super::config::Tag::parse(tag)?;
    Ok(Some(app.tagged(&tag)))
}

/// The slave, tag, target (UUID or name) and flow filters of a query.
fn series_filter(app: &App, p: &Params) -> Result<SeriesFilter, ApiError> {
    check_names(app, p.text("slave"), p.text("target"))?;
    let flow = match p.text("flow") {
        Some(_) => Some(p.number("flow", 0, 65_535, 0)?),
        None => None,
    };
    Ok(SeriesFilter {
        slave: p.text("slave").map(str::to_owned),
        slaves: tag_slaves(app, p)?,
        target: p.text("target").map(str::to_owned),
        flow,
    })
}

/// Statistics of one TTL over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HopStats {
    /// TTL.
    pub ttl: i64,
    /// The current path's address here (`null` = silent in the current path).
    pub address: Option<String>,
    /// Probes sent at this TTL in the window.
    pub sent: i64,
    /// Probes answered.
    pub answered: i64,
    /// `1 - answered / sent`.
    pub loss: f64,
    /// RTT statistics over the answered probes, ms.
    pub rtt_ms: Option<RttStats>,
    /// Every address that answered at this TTL, with its share of the answering results.
    pub addresses: Vec<AddressShare>,
}

/// min/avg/max/stddev in ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RttStats {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub avg: f64,
    /// Largest.
    pub max: f64,
    /// Population standard deviation.
    pub stddev: f64,
}

/// An address seen at a TTL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddressShare {
    /// The address.
    pub address: String,
    /// Results in which it answered.
    pub results: i64,
    /// Its share of the results that had an answer at this TTL.
    pub share: f64,
}

/// RTT statistics of a sample, ms.
pub fn rtt_stats(ns: &[i64]) -> Option<RttStats> {
    if ns.is_empty() {
        return None;
    }
    let ms: Vec<f64> = ns.iter().map(|v| *v as f64 / 1e6).collect();
    let n = ms.len() as f64;
    let avg = ms.iter().sum::<f64>() / n;
    let var = ms.iter().map(|v| (v - avg).powi(2)).sum::<f64>() / n;
    Some(RttStats {
        min: ms.iter().copied().fold(f64::INFINITY, f64::min),
        avg,
        max: ms.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        stddev: var.sqrt(),
    })
}

/// Per-hop statistics over the hops of a window's results, hops 1 up to the longer of the
/// current path and the deepest answer. A hop counts the probes its `Replies` list (one
/// without), and a TTL where a result has no hop the probes that result sent at each TTL (the
/// shortest `Replies` of its hops: a slave may probe a TTL again, never less).
pub fn hop_stats(results: &[Vec<NewHop>], current: &[Option<String>]) -> Vec<HopStats> {
    let sent_at = |h: &NewHop| -> i64 { h.replies.as_ref().map_or(1, |v| v.len().max(1) as i64) };
    let base: Vec<i64> = results
        .iter()
        .map(|hops| hops.iter().map(sent_at).min().unwrap_or(1))
        .collect();
    let deepest = results.iter().flatten().map(|h| h.ttl).max().unwrap_or(0);
    let len = deepest.max(current.len() as i64);
    let mut out = Vec::with_capacity(len as usize);
    for ttl in 1..=len {
        let (mut sent, mut answered) = (0i64, 0i64);
        let mut rtts = Vec::new();
        let mut by_addr: BTreeMap<&str, i64> = BTreeMap::new();
        let mut with_answer = 0;
        for (r, hops) in results.iter().enumerate() {
            let Some(h) = hops.iter().find(|h| h.ttl == ttl) else {
                sent += base[r];
                continue;
            };
            sent += sent_at(h);
            with_answer += 1;
            match &h.replies {
                Some(v) if !v.is_empty() => {
                    answered += v.iter().flatten().count() as i64;
                    rtts.extend(v.iter().flatten().copied());
                }
                _ => {
                    answered += 1;
                    rtts.push(h.rtt_ns);
                }
            }
            *by_addr.entry(h.address.as_str()).or_default() += 1;
        }
        let mut addresses: Vec<AddressShare> = by_addr
            .into_iter()
            .map(|(address, n)| AddressShare {
                address: address.to_owned(),
                results: n,
                share: n as f64 / with_answer.max(1) as f64,
            })
            .collect();
        addresses.sort_by(|a, b| b.results.cmp(&a.results).then(a.address.cmp(&b.address)));
        let answered = answered.min(sent);
        out.push(HopStats {
            ttl,
            address: current.get(ttl as usize - 1).cloned().flatten(),
            sent,
            answered,
            loss: if sent == 0 {
                0.0
            } else {
                1.0 - answered as f64 / sent as f64
            },
            rtt_ms: rtt_stats(&rtts),
            addresses,
        });
    }
    out
}

fn current_paths(app: &App, req: &Request) -> Response {
    answer(|| {
        let p = Params::parse(&req.query, &["slave", "tag", "target", "flow", "window"])?;
        let window = p.duration("window", Duration::from_secs(3600))?;
        let since = now_ms() - window.as_millis() as i64;
        let mut list = Vec::new();
        for s in app.store.series(&series_filter(app, &p)?)? {
            let Some((hash, text)) = s.current_path else {
                continue;
            };
            let parsed = super::path::Path::parse_canonical(&text);
            let current: Vec<Option<String>> = parsed
                .as_ref()
                .map(|p| p.hops.iter().map(|h| h.map(|a| a.to_string())).collect())
                .unwrap_or_default();
            let results = app.store.series_hops(s.id, since)?;
            let hops = hop_stats(&results, &current);
            let mut path = serde_json::json!({
                "slave": s.slave, "target_id": s.target_id, "target_name": s.target_name,
                "target_address": s.target_address, "flow": s.flow,
                "path_id": hash, "path": text,
                "terminal": parsed.map(|p| p.terminal.as_text()),
                "since": iso_opt(s.current_since), "last_measured": iso_opt(s.last_measured),
                "changes_total": s.changes_total,
                "window_s": window.as_secs(), "results_in_window": results.len(), "hops": hops,
            });
            // The owners of the current path's hops, and its AS path.
            if app.owners.enabled() {
                super::owners::enrich(&mut path, &app.owners.get());
            }
            list.push(path);
        }
        Ok(serde_json::json!({ "paths": list }))
    })
}

fn path_history(app: &App, req: &Request) -> Response {
    answer(|| {
        let p = Params::parse(
            &req.query,
            &["slave", "tag", "target", "flow", "from", "to"],
        )?;
        let from = p.time("from")?.unwrap_or(i64::MIN);
        let to = p.time("to")?.unwrap_or(i64::MAX);
        let mut list = Vec::new();
        for s in app.store.series(&series_filter(app, &p)?)? {
            let paths: Vec<serde_json::Value> = app
                .store
                .path_history(s.id, from, to)?
                .into_iter()
                .map(|h| {
                    serde_json::json!({
                        "path_id": h.path_id, "path": h.path,
                        "first_seen": iso(h.first_seen), "last_seen": iso(h.last_seen),
                        "count": h.count,
                    })
                })
                .collect();
            list.push(serde_json::json!({
                "slave": s.slave, "target_id": s.target_id, "target_name": s.target_name,
                "flow": s.flow, "current_path_id": s.current_path.map(|(h, _)| h),
                "changes_total": s.changes_total, "paths": paths,
            }));
        }
        Ok(serde_json::json!({ "series": list }))
    })
}

/// Event kinds the API filters on.
pub const EVENT_KINDS: &[&str] = &[
    "path-change",
    "unreachable",
    "reachable",
    "rtt-high",
    "rtt-normal",
    "target-change",
    "branch-lost",
    "branch-new",
    "as-path-change",
];

fn events(app: &App, req: &Request) -> Response {
    answer(|| {
        let p = Params::parse(
            &req.query,
            &[
                "slave", "tag", "target", "flow", "kind", "from", "to", "limit", "cursor",
            ],
        )?;
        if let Some(kind) = p.text("kind")
            && !EVENT_KINDS.contains(&kind)
        {
            return Err(format!(
                "kind '{}' is not one of {}",
                kind.chars().take(32).collect::<String>(),
                EVENT_KINDS.join(", ")
            )
            .into());
        }
        let limit = p.number("limit", 1, 1000, 100)?;
        let before_id = match p.text("cursor") {
            Some(c) => Some(
                c.parse::<i64>()
                    .map_err(|_| "cursor is not one this API gave".to_owned())?,
            ),
            None => None,
        };
        let rows = app.store.events(&EventQuery {
            series: series_filter(app, &p)?,
            kind: p.text("kind").map(str::to_owned),
            from: p.time("from")?,
            to: p.time("to")?,
            before_id,
            limit: limit as u32,
        })?;
        let next = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|r| r.id.to_string()))
            .flatten();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let follow_ups = super::measure::briefs(app, &app.store.follow_ups(&ids)?)?;
        let events: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|e| {
                let follow_up = follow_ups.get(&e.id);
                let (from_id, from_path) = e.from_path.unzip();
                let (to_id, to_path) = e.to_path.unzip();
                let mut v = serde_json::json!({
                    "id": e.id, "at": iso(e.at), "kind": e.kind,
                    "slave": e.slave, "target_id": e.target_id,
                    "target_name": e.target_name, "flow": e.flow,
                    "from_path_id": from_id, "from_path": from_path,
                    "to_path_id": to_id, "to_path": to_path,
                    "first_diff_ttl": e.first_diff_ttl,
                    "detail": serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or_default(),
                });
                // Only an event with a follow-up has the key: the answer is otherwise as before.
                if let Some(f) = follow_up {
                    v["follow_up"] = f.clone();
                }
                v
            })
            .collect();
        Ok(serde_json::json!({ "events": events, "next_cursor": next }))
    })
}

/// `GET /api/v1/stream?slave=&target=&kind=`: Server-Sent Events, a `result` event for each
/// stored result (the objects of `/api/v1/results`) and an `event` event for each change
/// event, from now on; `kind` takes `result` and event kinds, comma-separated. A client
/// that reconnects with `Last-Event-ID` (or `last_event_id=`) first gets what it missed, or a
/// `reset` event when that is no longer kept.
fn stream(app: &App, req: &Request) -> Response {
    let p = match Params::parse(&req.query, &["slave", "target", "kind", "last_event_id"]) {
        Ok(p) => p,
        Err(e) => return Response::error(400, e),
    };
    let mut kinds = Vec::new();
    for k in p
        .text("kind")
        .unwrap_or("")
        .split(',')
        .filter(|k| !k.is_empty())
    {
        if k != "result" && k != "measurement" && !EVENT_KINDS.contains(&k) {
            return Response::error(
                400,
                format!(
                    "kind '{}' is not one of result, measurement, {}",
                    k.chars().take(32).collect::<String>(),
                    EVENT_KINDS.join(", ")
                ),
            );
        }
        kinds.push(k.to_owned());
    }
    if let Err(e) = check_names(app, p.text("slave"), p.text("target")) {
        return e.response();
    }
    let filter = super::stream::Filter {
        slave: p.text("slave").map(str::to_owned),
        target: p.text("target").map(str::to_owned),
        kinds,
    };
    let last = req.last_event_id.as_deref().or(p.text("last_event_id"));
    match app.stream.subscribe(filter, last) {
        Ok(sub) => Response {
            body: super::routes::Body::Events(sub),
            ..Response::new(200, "text/event-stream; charset=utf-8", Vec::new())
        },
        Err(super::stream::Refused::Full) => {
            let mut r = Response::error(
                503,
                format!(
                    "{} streams are open, the most this master serves",
                    super::stream::MAX_SUBSCRIBERS
                ),
            );
            r.headers.push(("Retry-After", "10".into()));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_probed_again_counts_its_own_probes_only() {
        let hop = |ttl: i64, replies: Vec<Option<i64>>| NewHop {
            ttl,
            address: format!("10.0.0.{ttl}"),
            host: String::new(),
            rtt_ns: 1000,
            size: 56,
            kind: None,
            reply_ttl: None,
            replies: Some(replies),
            mpls: None,
        };
        // One probe a TTL; the first result probed TTL 2 three more times (its answer was
        // lost twice), the second lost TTL 2 and got no hop there.
        let results = vec![
            vec![
                hop(1, vec![Some(1000)]),
                hop(2, vec![None, None, Some(2000), None]),
                hop(3, vec![Some(3000)]),
            ],
            vec![hop(1, vec![Some(1000)]), hop(3, vec![Some(3000)])],
        ];
        let s = hop_stats(&results, &[]);
        let rows: Vec<(i64, i64)> = s.iter().map(|h| (h.sent, h.answered)).collect();
        assert_eq!(rows, [(2, 2), (5, 1), (2, 2)]);
        assert_eq!(s[0].loss, 0.0);
        assert!((s[1].loss - 0.8).abs() < 1e-9);
    }

    #[test]
    fn rtt_statistics() {
        let s = rtt_stats(&[1_000_000, 3_000_000]).unwrap();
        assert_eq!((s.min, s.avg, s.max, s.stddev), (1.0, 2.0, 3.0, 1.0));
        assert_eq!(rtt_stats(&[]), None);
    }

    #[test]
    fn parameters_are_checked() {
        assert!(Params::parse("slave=a&bogus=1", &["slave"]).is_err());
        assert!(Params::parse("slave=a&slave=b", &["slave"]).is_err());
        let p = Params::parse(
            "limit=5&from=2019-02-07T21:06:10Z&to=1549573570&window=2h",
            &["limit", "from", "to", "window"],
        )
        .unwrap();
        assert_eq!(p.number("limit", 1, 10, 3), Ok(5));
        assert_eq!(p.time("from"), Ok(Some(1_549_573_570_000)));
        assert_eq!(p.time("to"), Ok(Some(1_549_573_570_000)));
        assert_eq!(
            p.duration("window", Duration::ZERO),
            Ok(Duration::from_secs(7200))
        );
        let bad = Params::parse(
            "limit=0&from=yesterday&window=forever",
            &["limit", "from", "window"],
        )
        .unwrap();
        assert!(bad.number("limit", 1, 10, 3).is_err());
        assert!(bad.time("from").is_err());
        assert!(bad.duration("window", Duration::ZERO).is_err());
    }
}
