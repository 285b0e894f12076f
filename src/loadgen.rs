//! `dist-traceroute loadgen`: a load generator for the master's result ingest. Connection
//! threads post synthetic results shaped like our slave's; at the end it prints throughput and
//! latency, and on request bytes on disk per result and a check that every acknowledged
//! result is stored once.

use anyhow::Context;
use dist_traceroute::cli::{LoadMode, LoadgenArgs};
use dist_traceroute::proto::{
    BatchAnswer, Creds, HopResult, ItemStatus, ResultAnswer, TargetRef, TraceResult,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// TTLs of every synthetic path; the last one is the target.
const PATH_LEN: u8 = 15;
/// Requests failing in a row that end a run: the master is down or does not know the slaves.
const GIVE_UP_AFTER: u64 = 100;
/// Largest answer read (a page of the read API holds up to 1000 results with their hops).
const MAX_ANSWER: u64 = 64 << 20;
/// Results asked for per page when verifying.
const PAGE: u32 = 1000;
/// Chance that one probe's reply is lost.
const LOSS: f64 = 0.03;
/// Share of routes with one or two silent TTLs.
const SILENT_ROUTES: f64 = 0.3;
/// Share of routers with a reverse name.
const NAMED: f64 = 0.25;

/// Runs `loadgen`: writes the config, or loads the master and prints what it did.
pub fn run(a: &LoadgenArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.write_config {
        write_config(dir, a.slaves, a.targets, a.selectors)?;
        if let Some(n) = a.asn_ranges {
            let file = dir.join("asn.tsv");
            std::fs::write(&file, dist_traceroute::asn::made_up_table(n, 7))
                .with_context(|| format!("cannot write {}", file.display()))?;
            println!("wrote {}", file.display());
        }
        return Ok(());
    }
    let master = a
        .master
        .as_deref()
        .context("--master URL is needed (or --write-config DIR)")?;
    let plan = Plan::new(a, base_url(master)?);
    let run = drive(&plan, a)?;
    print!("{}", report(&plan, a, &run));
    let mut failed = Vec::new();
    if let Some(why) = &run.gave_up {
        let refused = [401, 429]
            .iter()
            .any(|s| run.all.failures.contains_key(&FailKind::Status(*s)));
        let hint = if refused {
            " (does the master know load1..loadN? start it on the files of --write-config)"
        } else {
            ""
        };
        failed.push(format!("gave up: {why}{hint}"));
    }
    if let Some(db) = &a.db {
        let stored = a.stored.unwrap_or(run.all.acked);
        let (db_bytes, wal_bytes) = disk_bytes(db)?;
        println!(
            "{}",
            disk_line(db_bytes, wal_bytes, stored, a.stored.is_some())
        );
    }
    if a.verify {
        let check = verify(&plan, &run.all.ids)?;
        println!(
            "verify: {} acknowledged, {} found, {} missing, {} duplicated",
            check.acknowledged, check.found, check.missing, check.duplicated
        );
        if check.others > 0 {
            println!(
                "        ({} other results of these slaves, from earlier runs, not counted)",
                check.others
            );
        }
        if check.missing > 0 || check.duplicated > 0 {
            failed.push(format!(
                "verify: {} missing, {} duplicated",
                check.missing, check.duplicated
            ));
        }
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}

/// `http://host:port` for `--master`, without a trailing slash; `http://` when no scheme.
fn base_url(master: &str) -> anyhow::Result<String> {
    let url = if master.contains("://") {
        master.to_owned()
    } else {
        format!("http://{master}")
    };
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "--master {master}: only http:// and https:// URLs"
    );
    Ok(url.trim_end_matches('/').to_owned())
}

/// The credentials of load slave `n` (1-based).
fn creds(n: u32) -> Creds {
    Creds {
        name: format!("load{n}"),
        password: format!("pw{n}"),
    }
}

/// One synthetic target.
#[derive(Debug, Clone)]
struct Target {
    id: String,
    name: String,
    addr: Ipv4Addr,
}

/// Target `n` (1-based): a UUID made of its number, name `tN`, an address in 198.18.0.0/15.
fn target(n: u32) -> Target {
    Target {
        id: format!("00000000-0000-4000-8000-{n:012}"),
        name: format!("t{n}"),
        addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n),
    }
}

/// Writes `dt-slaves.json` and `dt-targets.json` for the load slaves and targets.
fn write_config(dir: &Path, slaves: u32, targets: u32, selectors: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let slave_list: Vec<_> = (1..=slaves)
        .map(|n| {
            let c = creds(n);
            let mut s = serde_json::json!({ "Name": c.name, "Password": c.password });
            if selectors {
                let mut tags = vec![format!("r{}", n % 10)];
                if n % 7 == 0 {
                    tags.push("backbone".into());
                }
                s["Tags"] = serde_json::json!(tags);
            }
            s
        })
        .collect();
    let target_map: serde_json::Map<String, serde_json::Value> = (1..=targets)
        .map(|n| {
            let t = target(n);
            let mut spec = serde_json::json!({ "Name": t.name, "Address": t.addr.to_string() });
            // A third for everyone, a third for a region, a third for a region's backbone
            // slaves and one slave of the first twenty by name.
            if selectors && n % 3 == 1 {
                spec["Slaves"] = serde_json::json!({"Tags": [format!("r{}", n % 10)]});
            } else if selectors && n % 3 == 2 {
                spec["Slaves"] = serde_json::json!([
                    {"Tags": [format!("r{}", n % 10), "backbone"]},
                    {"Names": [format!("load{}", 1 + n % 20.min(slaves.max(1)))]},
                ]);
            }
            (t.id, spec)
        })
        .collect();
    let docs = [
        (
            "dt-slaves.json",
            serde_json::json!({ "Slaves": slave_list }),
        ),
        (
            "dt-targets.json",
            serde_json::json!({
                "Targets": target_map,
                "Retries": 1,
                "MaxHops": 30,
                "TimeoutMs": 500,
            }),
        ),
    ];
    for (name, doc) in docs {
        let file = dir.join(name);
        let mut text = serde_json::to_string_pretty(&doc)?;
        text.push('\n');
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        println!("wrote {}", file.display());
    }
    Ok(())
}

/// One router along a route.
#[derive(Debug, Clone)]
struct RouteHop {
    addr: Ipv4Addr,
    host: String,
    /// Typical RTT to it, in microseconds.
    base_us: f64,
}

/// A path to any target: TTL 1 to `PATH_LEN - 1` (`None` is a router that never answers),
/// then the target itself.
#[derive(Debug, Clone)]
struct Route {
    hops: Vec<Option<RouteHop>>,
    dest_base_us: f64,
}

/// Typical RTT at `ttl` on a route of this `scale`: about 0.5 ms at TTL 1 rising to about
/// 30 ms at the last TTL.
fn base_rtt_us(ttl: u8, scale: f64) -> f64 {
    let x = f64::from(ttl - 1) / f64::from(PATH_LEN - 1);
    (500.0 + 29_500.0 * x.powf(1.5)) * scale
}

/// A random route: a home router, the access network, then transit; now and then one or two
/// silent TTLs in the middle; a reverse name for some routers.
fn random_route(rng: &mut fastrand::Rng) -> Route {
    const TRANSIT: [u8; 12] = [62, 80, 84, 89, 129, 154, 185, 193, 194, 195, 212, 217];
    const CITIES: [&str; 6] = ["vie", "fra", "ams", "lon", "par", "nyc"];
    let scale = 0.8 + rng.f64() * 0.4;
    let mut silent = [false; PATH_LEN as usize];
    if rng.f64() < SILENT_ROUTES {
        for _ in 0..rng.usize(1..=2) {
            silent[rng.usize(3..=13) - 1] = true;
        }
    }
    let hops = (1..PATH_LEN)
        .map(|ttl| {
            if silent[usize::from(ttl) - 1] {
                return None;
            }
            let addr = match ttl {
                1 => Ipv4Addr::new(192, 168, rng.u8(..), 1),
                2..=4 => Ipv4Addr::new(100, rng.u8(64..128), rng.u8(..), rng.u8(1..255)),
                _ => Ipv4Addr::new(
                    TRANSIT[rng.usize(..TRANSIT.len())],
                    rng.u8(..),
                    rng.u8(..),
                    rng.u8(1..255),
                ),
            };
            let host = if ttl > 1 && rng.f64() < NAMED {
                format!(
                    "ae{}-{}.cr{}.{}{}.example.net.",
                    rng.u8(1..20),
                    rng.u8(0..4),
                    rng.u8(1..10),
                    CITIES[rng.usize(..CITIES.len())],
                    rng.u8(1..5)
                )
            } else {
                String::new()
            };
            Some(RouteHop {
                addr,
                host,
                base_us: base_rtt_us(ttl, scale),
            })
        })
        .collect();
    Route {
        hops,
        dest_base_us: base_rtt_us(PATH_LEN, scale),
    }
}

/// The shared routes; the same `n` gives the same routes in every run.
fn routes(n: u32) -> Vec<Route> {
    (0..n)
        .map(|i| random_route(&mut fastrand::Rng::with_seed(0x6c6f_6164 ^ u64::from(i))))
        .collect()
}

/// Which of `routes` the series (slave, target) follows: fixed, spread evenly.
fn series_route(slave: u32, target: u32, routes: usize) -> usize {
    // splitmix64 of the pair.
    let mut z = (u64::from(slave) << 32 | u64::from(target)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % routes as u64) as usize
}

/// Probes per hop of load slave `n`: 1 to 3.
fn queries_of(slave: u32) -> u8 {
    1 + (slave % 3) as u8
}

/// One reply's RTT in ns around `base_us`: jitter of up to a tenth, a spike now and then;
/// whole microseconds as our slave sends them, or with nanosecond digits as a Go slave does.
fn rtt_ns(base_us: f64, ns_digits: bool, rng: &mut fastrand::Rng) -> i64 {
    let mut us = base_us * (1.0 + rng.f64() * 0.1);
    if rng.f64() < 0.02 {
        us += base_us * rng.f64() * 2.0;
    }
    let us = (us.round() as i64).max(1);
    if ns_digits {
        us * 1000 - 1000 + rng.i64(1..1000)
    } else {
        us * 1000
    }
}

/// What the series sends besides its route.
struct Series<'a> {
    creds: &'a Creds,
    target: &'a Target,
    queries: u8,
    ns_rtts: bool,
}

/// A result as our slave sends it for a trace along `route`.
fn make_result(
    route: &Route,
    s: &Series,
    id: uuid::Uuid,
    date_time: String,
    rng: &mut fastrand::Rng,
) -> TraceResult {
    let dest = RouteHop {
        addr: s.target.addr,
        host: String::new(),
        base_us: route.dest_base_us,
    };
    let mut hops = Vec::with_capacity(usize::from(PATH_LEN));
    let mut slowest = 0;
    for ttl in 1..=PATH_LEN {
        let last = ttl == PATH_LEN;
        let Some(hop) = (if last {
            Some(&dest)
        } else {
            route.hops[usize::from(ttl) - 1].as_ref()
        }) else {
            continue;
        };
        let mut replies: Vec<Option<i64>> = (0..s.queries)
            .map(|_| {
                let rtt = rtt_ns(hop.base_us, s.ns_rtts, rng);
                (rng.f64() >= LOSS).then_some(rtt)
            })
            .collect();
        if replies.iter().all(Option::is_none) {
            // The hop answered (it is on the route): keep one reply.
            let n = replies.len() - 1;
            replies[n] = Some(rtt_ns(hop.base_us, s.ns_rtts, rng));
        }
        let first = replies.iter().flatten().next().copied().unwrap_or(0);
        slowest = slowest.max(replies.iter().flatten().copied().max().unwrap_or(0));
        hops.push(HopResult {
            success: true,
            address: hop.addr.octets(),
            host: hop.host.clone(),
            n: if last { 84 } else { 56 },
            elapsed_time: first,
            ttl: i64::from(ttl),
            ip: Some(hop.addr.to_string()),
            replies: Some(replies),
            kind: Some(if last { "reached" } else { "time-exceeded" }.to_owned()),
            reply_ttl: None,
            mpls: None,
        });
    }
    let silent = usize::from(PATH_LEN) - hops.len();
    // Probes go out in parallel: a trace lasts a few times its slowest reply, longer when a
    // silent hop had to be given up.
    let mut duration_ns = slowest * rng.i64(15..30) / 10 + silent as i64 * 10 * slowest + 1;
    if !s.ns_rtts {
        // Our slave rounds every duration it sends to the microsecond.
        duration_ns = (duration_ns + 500) / 1000 * 1000;
    }
    TraceResult {
        creds: s.creds.clone(),
        id: id.to_string(),
        date_time,
        target: TargetRef {
            name: s.target.name.clone(),
            address: s.target.addr.to_string(),
        },
        success: true,
        hop_count: i64::from(PATH_LEN),
        hops,
        target_id: Some(s.target.id.clone()),
        protocol: Some("udp".to_owned()),
        flow: Some(0),
        destination: Some(s.target.addr.to_string()),
        queries: Some(s.queries),
        unreachable: None,
        error: None,
        agent: Some(dist_traceroute::slave::report::agent()),
        duration_ns: Some(duration_ns),
        source_address: None,
        debug: false,
        measurement: None,
        multipath: None,
    }
}

fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// Everything the connection threads share and never change.
struct Plan {
    base: String,
    mode: LoadMode,
    connections: u32,
    slaves: u32,
    creds: Vec<Creds>,
    targets: Vec<Target>,
    routes: Vec<Route>,
    batch_size: u32,
    batch_bytes: u64,
    ns_rtts: bool,
    distinct_paths: bool,
    keep_ids: bool,
    queries: Option<u8>,
    /// The `Authorization` header of every GET (`--read-user`).
    read_auth: Option<String>,
}

impl Plan {
    fn new(a: &LoadgenArgs, base: String) -> Plan {
        Plan {
            base,
            mode: a.mode,
            connections: a.connections,
            slaves: a.slaves,
            creds: (1..=a.slaves).map(creds).collect(),
            targets: (1..=a.targets).map(target).collect(),
            routes: if a.distinct_paths {
                Vec::new()
            } else {
                routes(a.routes)
            },
            batch_size: if a.mode == LoadMode::Batch {
                a.batch_size
            } else {
                1
            },
            batch_bytes: a.batch_bytes,
            ns_rtts: a.ns_rtts,
            distinct_paths: a.distinct_paths,
            keep_ids: a.verify,
            queries: a.queries,
            read_auth: a.read_user.as_deref().map(basic_auth),
        }
    }

    /// The slaves connection `conn` (0-based) sends for, 1-based: one each while there are
    /// at least as many connections as slaves, else every `connections`-th.
    fn slaves_of(&self, conn: u32) -> Vec<u32> {
        (conn % self.slaves + 1..=self.slaves)
            .step_by(self.connections as usize)
            .take(if self.connections >= self.slaves {
                1
            } else {
                usize::MAX
            })
            .collect()
    }
}

/// When the run ends and what it has done so far, shared by the connection threads.
struct Control {
    warm_end: Instant,
    deadline: Option<Instant>,
    /// `--results`: results to be acknowledged.
    goal: Option<u64>,
    /// Results acknowledged plus in flight.
    claimed: AtomicU64,
    acked: AtomicU64,
    failing_in_a_row: AtomicU64,
    stop: AtomicBool,
    gave_up: Mutex<Option<String>>,
}

impl Control {
    /// How many results (up to `want`) to send now; 0 when the run is over.
    fn claim(&self, want: u64) -> u64 {
        loop {
            if self.stop.load(Ordering::Relaxed)
                || self.deadline.is_some_and(|d| Instant::now() >= d)
            {
                return 0;
            }
            let Some(goal) = self.goal else {
                return want;
            };
            let claimed = self.claimed.load(Ordering::Acquire);
            if claimed >= goal {
                if self.acked.load(Ordering::Acquire) >= goal {
                    return 0;
                }
                // Requests in flight may fail and hand their share back.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let n = want.min(goal - claimed);
            if self
                .claimed
                .compare_exchange(claimed, claimed + n, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return n;
            }
        }
    }

    /// `acked` of `claimed` results went through; the rest may be sent again.
    fn settle(&self, claimed: u64, acked: u64) {
        self.acked.fetch_add(acked, Ordering::AcqRel);
        if self.goal.is_some() && acked < claimed {
            self.claimed.fetch_sub(claimed - acked, Ordering::AcqRel);
        }
    }

    /// Counts failed requests in a row; too many end the run.
    fn request_done(&self, ok: bool, why: &str) {
        if ok {
            self.failing_in_a_row.store(0, Ordering::Relaxed);
        } else if self.failing_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= GIVE_UP_AFTER {
            let mut gave_up = self.gave_up.lock().unwrap_or_else(|e| e.into_inner());
            if gave_up.is_none() {
                *gave_up = Some(format!(
                    "{GIVE_UP_AFTER} requests in a row failed, the last with: {why}"
                ));
            }
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Why results or requests failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FailKind {
    /// No answer: connection refused or cut, timeout.
    Transport,
    /// An answer with another status than 200.
    Status(u16),
    /// A 200 whose body is not what the endpoint answers.
    BadAnswer,
    /// Refused for good: legacy `Success:false`, a batch item `rejected`.
    Rejected,
    /// A batch item `retry`.
    Retry,
}

impl FailKind {
    fn label(self) -> String {
        match self {
            FailKind::Transport => "no answer".into(),
            FailKind::Status(s) => format!("HTTP {s}"),
            FailKind::BadAnswer => "bad answer".into(),
            FailKind::Rejected => "rejected".into(),
            FailKind::Retry => "retry".into(),
        }
    }

    /// What a count of this kind counts.
    fn unit(self) -> &'static str {
        match self {
            FailKind::Rejected | FailKind::Retry => "results",
            _ => "requests",
        }
    }
}

/// What one answer says about the results of its request.
#[derive(Debug, Default, PartialEq)]
struct Verdict {
    /// Positions (in the request) of the results stored now or before.
    acked: Vec<usize>,
    /// Of those, stored before.
    duplicates: u64,
    /// Failures: kind, how many, the master's reason.
    failures: Vec<(FailKind, u64, String)>,
}

impl Verdict {
    fn failed(kind: FailKind, n: u64, why: impl Into<String>) -> Verdict {
        Verdict {
            failures: vec![(kind, n, why.into())],
            ..Verdict::default()
        }
    }

    /// The request itself went through (some results may still be refused).
    fn request_ok(&self) -> bool {
        !self.failures.iter().any(|(k, _, _)| k.unit() == "requests")
    }
}

fn text_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// `POST /results/`: 200 with `"Success":true`.
fn judge_legacy(status: u16, body: &[u8]) -> Verdict {
    if status != 200 {
        return Verdict::failed(FailKind::Status(status), 1, text_of(body));
    }
    match serde_json::from_slice::<ResultAnswer>(body) {
        Ok(a) if a.success => Verdict {
            acked: vec![0],
            ..Verdict::default()
        },
        Ok(a) => Verdict::failed(FailKind::Rejected, 1, a.error),
        Err(_) => Verdict::failed(FailKind::BadAnswer, 1, text_of(body)),
    }
}

/// `POST /api/v1/results`: 200 with `{"stored":true,"duplicate":…}`.
fn judge_api(status: u16, body: &[u8]) -> Verdict {
    if status != 200 {
        return Verdict::failed(FailKind::Status(status), 1, text_of(body));
    }
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if answer["stored"] != serde_json::Value::Bool(true) {
        return Verdict::failed(FailKind::BadAnswer, 1, text_of(body));
    }
    Verdict {
        acked: vec![0],
        duplicates: u64::from(answer["duplicate"] == serde_json::Value::Bool(true)),
        failures: Vec::new(),
    }
}

/// `POST /api/v1/results:batch`: one item per result sent, in order, with its ID.
fn judge_batch(status: u16, body: &[u8], ids: &[uuid::Uuid]) -> Verdict {
    let n = ids.len() as u64;
    if status != 200 {
        return Verdict::failed(FailKind::Status(status), 1, text_of(body));
    }
    let answer = match serde_json::from_slice::<BatchAnswer>(body) {
        Ok(a) if a.results.len() == ids.len() => a,
        Ok(a) => {
            let why = format!("{} items for {n} results", a.results.len());
            return Verdict::failed(FailKind::BadAnswer, 1, why);
        }
        Err(_) => return Verdict::failed(FailKind::BadAnswer, 1, text_of(body)),
    };
    let mut v = Verdict::default();
    let mut refused: BTreeMap<FailKind, (u64, String)> = BTreeMap::new();
    for (i, (item, id)) in answer.results.iter().zip(ids).enumerate() {
        if uuid::Uuid::parse_str(&item.id).ok() != Some(*id) {
            return Verdict::failed(FailKind::BadAnswer, 1, format!("item {i} has another ID"));
        }
        let kind = match item.status {
            ItemStatus::Stored => None,
            ItemStatus::Duplicate => {
                v.duplicates += 1;
                None
            }
            ItemStatus::Rejected => Some(FailKind::Rejected),
            ItemStatus::Retry => Some(FailKind::Retry),
        };
        match kind {
            None => v.acked.push(i),
            Some(k) => {
                let e = refused.entry(k).or_insert((0, item.error.clone()));
                e.0 += 1;
            }
        }
    }
    v.failures = refused
        .into_iter()
        .map(|(k, (c, why))| (k, c, why))
        .collect();
    v
}

/// `GET /`: any 200.
/// Requests, not results, are what a mode counts.
fn requests_only(mode: LoadMode) -> bool {
    matches!(mode, LoadMode::Ceiling | LoadMode::Config)
}

/// A targets document: 200 and an object with `Targets` (looked for, not parsed: a document
/// of 10,000 targets would cost loadgen more to parse than the master to send).
fn judge_config(status: u16, body: &[u8]) -> Verdict {
    let looks = body.first() == Some(&b'{') && body.windows(9).any(|w| w == b"\"Targets\"");
    if status == 200 && looks {
        Verdict::default()
    } else {
        Verdict::failed(FailKind::Status(status), 1, text_of(body))
    }
}

fn judge_ceiling(status: u16, body: &[u8]) -> Verdict {
    if status == 200 {
        Verdict::default()
    } else {
        Verdict::failed(FailKind::Status(status), 1, text_of(body))
    }
}

/// Counts of one thread, then of the whole run.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    /// Results acknowledged (stored now or before); requests in ceiling mode.
    acked: u64,
    duplicates: u64,
    failures: BTreeMap<FailKind, (u64, String)>,
    latencies_us: Vec<u64>,
    /// (slave, result ID) of every acknowledged result, with --verify.
    ids: Vec<(u32, u128)>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.acked += other.acked;
        self.duplicates += other.duplicates;
        for (k, (n, why)) in other.failures {
            self.failures.entry(k).or_insert((0, why)).0 += n;
        }
        self.latencies_us.extend(other.latencies_us);
        self.ids.extend(other.ids);
    }
}

/// One connection thread's counts: after the warm-up, and in all.
#[derive(Debug, Default)]
struct Counts {
    timed: Tally,
    all: Tally,
}

/// The figures of a whole run.
struct RunResult {
    /// Per `--probe` path: latencies of its GETs (µs) and failures.
    probes: Vec<(String, Vec<u64>, u64)>,
    timed: Tally,
    all: Tally,
    /// Timed span: from the end of the warm-up to the last answer.
    elapsed: Duration,
    /// The run ended inside the warm-up, so all of it was timed.
    short: bool,
    gave_up: Option<String>,
}

/// A keep-alive HTTP agent for one connection thread.
fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .timeout_connect(Some(Duration::from_secs(10)))
        .max_idle_connections(4)
        .max_idle_connections_per_host(4)
        .user_agent(format!(
            "dist-traceroute-loadgen/{}",
            env!("CARGO_PKG_VERSION")
        ))
        .build();
    ureq::Agent::new_with_config(config)
}

/// Reads an answer's status and whole body (so the connection can be used again).
fn answer(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Vec<u8>), String> {
    let mut resp = sent.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| format!("{url}: reading the answer: {e}"))?;
    Ok((status, body))
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let sent = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body);
    answer(url, sent)
}

/// The `Authorization` header for HTTP Basic with `NAME:PASSWORD`.
fn basic_auth(user: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user)
    )
}

/// A GET with the `--read-user` login, if one was given.
fn get_request(
    agent: &ureq::Agent,
    url: &str,
    auth: Option<&str>,
) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    let request = agent.get(url);
    match auth {
        Some(a) => request.header("Authorization", a),
        None => request,
    }
}

/// Every GET of loadgen: `GET /healthz` in ceiling mode and the read API for --verify, with the
/// `--read-user` login when one was given.
fn get(agent: &ureq::Agent, url: &str, auth: Option<&str>) -> Result<(u16, Vec<u8>), String> {
    answer(url, get_request(agent, url, auth).call())
}

/// Runs the connection threads until the run is over.
fn drive(plan: &Plan, a: &LoadgenArgs) -> anyhow::Result<RunResult> {
    let start = Instant::now();
    let warm_end = start + a.warmup;
    let duration = match (a.duration, a.results) {
        (Some(d), _) => Some(d),
        (None, None) => Some(Duration::from_secs(10)),
        (None, Some(_)) => None,
    };
    let control = Control {
        warm_end,
        deadline: duration.map(|d| warm_end + d),
        goal: a.results,
        claimed: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failing_in_a_row: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        gave_up: Mutex::new(None),
    };
    let mut timed = Tally::default();
    let mut all = Tally::default();
    let probes_done = AtomicBool::new(false);
    let mut probes = Vec::new();
    let spawned = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        let mut failed = None;
        let mut readers = Vec::new();
        for path in &a.probe {
            let (done, control, url) = (&probes_done, &control, format!("{}{path}", plan.base));
            let auth = plan.read_auth.as_deref();
            let reader = std::thread::Builder::new()
                .name("probe".into())
                .spawn_scoped(scope, move || probe(&url, auth, control, done));
            match reader {
                Ok(t) => readers.push((path.clone(), t)),
                Err(e) => failed = Some(e),
            }
        }
        for conn in 0..plan.connections {
            let control = &control;
            let thread = std::thread::Builder::new()
                .name(format!("load{conn}"))
                .spawn_scoped(scope, move || connection(plan, control, conn));
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    control.stop.store(true, Ordering::Relaxed);
                    failed = Some(e);
                    break;
                }
            }
        }
        for t in threads {
            // A thread that panicked has said so on stderr; its counts are lost.
            let counts = t.join().unwrap_or_default();
            timed.add(counts.timed);
            all.add(counts.all);
        }
        probes_done.store(true, Ordering::Relaxed);
        for (path, t) in readers {
            let (lat, failures) = t.join().unwrap_or_default();
            probes.push((path, lat, failures));
        }
        failed.map_or(Ok(()), Err)
    });
    spawned.with_context(|| format!("cannot start {} connection threads", plan.connections))?;
    let end = Instant::now();
    let short = timed.requests == 0;
    if short {
        timed = Tally {
            requests: all.requests,
            acked: all.acked,
            duplicates: all.duplicates,
            failures: all.failures.clone(),
            latencies_us: std::mem::take(&mut all.latencies_us),
            ids: Vec::new(),
        };
    }
    let gave_up = control
        .gave_up
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    Ok(RunResult {
        probes,
        timed,
        all,
        elapsed: end.saturating_duration_since(if short { start } else { warm_end }),
        short,
        gave_up,
    })
}

/// One `--probe` reader: GETs `url` back to back from the end of the warm-up until the load
/// stops; gives the latencies (µs) and how many GETs failed.
fn probe(url: &str, auth: Option<&str>, control: &Control, done: &AtomicBool) -> (Vec<u64>, u64) {
    let agent = agent();
    let mut lat = Vec::new();
    let mut failures = 0;
    while Instant::now() < control.warm_end && !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    while !done.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        // Read to the end and throw away: an export is larger than an answer is kept.
        let read = get_request(&agent, url, auth)
            .call()
            .map_err(|e| e.to_string())
            .and_then(|mut r| {
                let status = r.status().as_u16();
                let mut body = r.body_mut().with_config().limit(u64::MAX).reader();
                std::io::copy(&mut body, &mut std::io::sink())
                    .map(|_| status)
                    .map_err(|e| e.to_string())
            });
        match read {
            Ok(200) => lat.push(t0.elapsed().as_micros() as u64),
            other => {
                if failures == 0 {
                    eprintln!("loadgen: probe {url}: {other:?}");
                }
                failures += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    (lat, failures)
}

/// How a mode's answers are read: status, body, the IDs of the results sent.
type Judge = fn(u16, &[u8], &[uuid::Uuid]) -> Verdict;

/// The path a mode sends to and how its answers are read.
fn endpoint(mode: LoadMode) -> (&'static str, Judge) {
    match mode {
        LoadMode::Legacy => ("/results/", |s, b, _| judge_legacy(s, b)),
        LoadMode::Api => ("/api/v1/results", |s, b, _| judge_api(s, b)),
        LoadMode::Batch => ("/api/v1/results:batch", judge_batch),
        LoadMode::Ceiling => ("/healthz", |s, b, _| judge_ceiling(s, b)),
        LoadMode::Config => ("/config/", |s, b, _| judge_config(s, b)),
    }
}

/// One connection thread: requests one after the other over one keep-alive connection, each
/// for one slave of this connection in turn.
fn connection(plan: &Plan, control: &Control, conn: u32) -> Counts {
    let agent = agent();
    let mut rng = fastrand::Rng::with_seed(u64::from(conn) * 7919 + 1);
    let mine = plan.slaves_of(conn);
    // Per slave of this connection: its next target (0-based); connections start apart.
    let mut next_target = vec![conn % plan.targets.len() as u32; mine.len()];
    let (path, judge) = endpoint(plan.mode);
    let url = format!("{}{path}", plan.base);
    let mut counts = Counts::default();
    let mut ids = Vec::new();
    for round in 0.. {
        let want = control.claim(u64::from(plan.batch_size));
        if want == 0 {
            break;
        }
        let slot = round % mine.len();
        let slave = mine[slot];
        ids.clear();
        let body = match plan.mode {
            LoadMode::Ceiling => Vec::new(),
            LoadMode::Config => {
                let c = creds(slave);
                serde_json::to_vec(&serde_json::json!({"Name": c.name, "Password": c.password}))
                    .expect("a request encodes")
            }
            LoadMode::Batch => {
                let (body, built) = batch_body(
                    plan,
                    slave,
                    &mut next_target[slot],
                    want,
                    &mut ids,
                    &mut rng,
                );
                // The results that did not fit are not claimed any more.
                control.settle(want - built, 0);
                body
            }
            LoadMode::Legacy | LoadMode::Api => {
                let t = next_target[slot];
                next_target[slot] = (t + 1) % plan.targets.len() as u32;
                let id = uuid::Uuid::new_v4();
                ids.push(id);
                serde_json::to_vec(&one_result(plan, slave, t, id, &mut rng))
                    .expect("a result encodes")
            }
        };
        let began = Instant::now();
        let sent = if plan.mode == LoadMode::Ceiling {
            get(&agent, &url, plan.read_auth.as_deref())
        } else {
            post(&agent, &url, &body)
        };
        let took = began.elapsed().as_micros() as u64;
        let verdict = match &sent {
            Ok((status, answer)) => judge(*status, answer, &ids),
            Err(e) => Verdict::failed(FailKind::Transport, 1, e.clone()),
        };
        let (claimed, acked) = if requests_only(plan.mode) {
            (want, u64::from(verdict.request_ok()))
        } else {
            (ids.len() as u64, verdict.acked.len() as u64)
        };
        control.settle(claimed, acked);
        let why = verdict.failures.first().map_or("", |(_, _, w)| w.as_str());
        control.request_done(verdict.request_ok(), why);
        let timed = began >= control.warm_end;
        for tally in [Some(&mut counts.all), timed.then_some(&mut counts.timed)]
            .into_iter()
            .flatten()
        {
            tally.requests += 1;
            tally.acked += acked;
            tally.duplicates += verdict.duplicates;
            for (kind, n, why) in &verdict.failures {
                tally.failures.entry(*kind).or_insert((0, why.clone())).0 += n;
            }
        }
        // Latencies of the warm-up are kept apart, for a run that ends within it.
        if timed {
            counts.timed.latencies_us.push(took);
        } else {
            counts.all.latencies_us.push(took);
        }
        if plan.keep_ids {
            let acked_ids = verdict.acked.iter().map(|&i| (slave, ids[i].as_u128()));
            counts.all.ids.extend(acked_ids);
        }
    }
    counts
}

/// A result of slave `slave` (1-based) for target index `t` (0-based), on its series' route or
/// on a fresh one with --distinct-paths.
fn one_result(
    plan: &Plan,
    slave: u32,
    t: u32,
    id: uuid::Uuid,
    rng: &mut fastrand::Rng,
) -> TraceResult {
    let fresh;
    let route = if plan.distinct_paths {
        fresh = random_route(rng);
        &fresh
    } else {
        &plan.routes[series_route(slave, t + 1, plan.routes.len())]
    };
    let series = Series {
        creds: &plan.creds[slave as usize - 1],
        target: &plan.targets[t as usize],
        queries: plan.queries.unwrap_or_else(|| queries_of(slave)),
        ns_rtts: plan.ns_rtts,
    };
    make_result(route, &series, id, now_rfc3339(), rng)
}

/// The body of a batch of up to `want` results of one slave, cut short before the results
/// pass `--batch-bytes`; their IDs go to `ids`. Returns the body and how many results it holds.
fn batch_body(
    plan: &Plan,
    slave: u32,
    next_target: &mut u32,
    want: u64,
    ids: &mut Vec<uuid::Uuid>,
    rng: &mut fastrand::Rng,
) -> (Vec<u8>, u64) {
    let mut body = Vec::with_capacity(64 << 10);
    body.extend_from_slice(br#"{"Creds":"#);
    serde_json::to_writer(&mut body, &plan.creds[slave as usize - 1]).expect("creds encode");
    body.extend_from_slice(br#","Results":["#);
    let head = body.len();
    for _ in 0..want {
        let mark = body.len();
        if !ids.is_empty() {
            body.push(b',');
        }
        let id = uuid::Uuid::new_v4();
        let r = one_result(plan, slave, *next_target, id, rng);
        serde_json::to_writer(&mut body, &r).expect("a result encodes");
        if (body.len() - head) as u64 > plan.batch_bytes && !ids.is_empty() {
            body.truncate(mark);
            break;
        }
        ids.push(id);
        *next_target = (*next_target + 1) % plan.targets.len() as u32;
    }
    body.extend_from_slice(b"]}");
    (body, ids.len() as u64)
}

/// The value at quantile `q` of sorted figures (0 when there are none).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Appends `key: value` with the values in one column.
fn line(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let key = if key.is_empty() {
        String::new()
    } else {
        format!("{key}:")
    };
    let _ = writeln!(out, "{key:<14}{value}");
}

/// The figures of a run, a few aligned lines.
fn report(plan: &Plan, a: &LoadgenArgs, run: &RunResult) -> String {
    let mut out = String::new();
    let what = match plan.mode {
        LoadMode::Legacy => "legacy: one result per POST /results/".to_owned(),
        LoadMode::Api => "api: one result per POST /api/v1/results".to_owned(),
        LoadMode::Batch => format!(
            "batch: up to {} results (and {} KiB) per POST /api/v1/results:batch",
            plan.batch_size,
            plan.batch_bytes >> 10
        ),
        LoadMode::Ceiling => "ceiling: GET /healthz, nothing stored".to_owned(),
        LoadMode::Config => "config: POST /config/ as each slave in turn".to_owned(),
    };
    line(&mut out, "mode", what);
    let paths = if plan.distinct_paths {
        "a fresh path per result".to_owned()
    } else {
        let n = plan.routes.len();
        format!("{n} route{}", if n == 1 { "" } else { "s" })
    };
    let rtts = if plan.ns_rtts {
        "RTTs with ns digits"
    } else {
        "RTTs in whole µs"
    };
    line(
        &mut out,
        "connections",
        format!(
            "{} to {} ({} slaves, {} targets, {paths}, {rtts})",
            plan.connections,
            plan.base,
            plan.slaves,
            plan.targets.len()
        ),
    );
    let (t, all) = (&run.timed, &run.all);
    let (requests, acked) = if run.short {
        (
            all.requests.to_string(),
            format!("{} acknowledged", all.acked),
        )
    } else {
        (
            format!("{} timed, {} in all", t.requests, all.requests),
            format!("{} acknowledged timed, {} in all", t.acked, all.acked),
        )
    };
    line(&mut out, "requests", requests);
    if !requests_only(plan.mode) {
        let dups = all.duplicates;
        line(
            &mut out,
            "results",
            format!("{acked} ({dups} of them duplicates)"),
        );
    }
    if all.failures.is_empty() {
        line(&mut out, "failures", "none");
    } else {
        let mut first = true;
        for (kind, (n, why)) in &all.failures {
            let text = format!("{}: {n} {}, e.g. \"{why}\"", kind.label(), kind.unit());
            line(&mut out, if first { "failures" } else { "" }, text);
            first = false;
        }
    }
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    let elapsed = if run.short {
        format!("{secs:.2} s, all of it (the run ended within the warm-up)")
    } else {
        format!(
            "{secs:.2} s timed, after a {:.2} s warm-up",
            a.warmup.as_secs_f64()
        )
    };
    line(&mut out, "elapsed", elapsed);
    if !requests_only(plan.mode) {
        line(
            &mut out,
            "results/s",
            format!("{:.1}", t.acked as f64 / secs),
        );
    }
    line(
        &mut out,
        "requests/s",
        format!("{:.1}", t.requests as f64 / secs),
    );
    if plan.mode == LoadMode::Batch && t.requests > 0 {
        line(
            &mut out,
            "per request",
            format!("{:.1} results", t.acked as f64 / t.requests as f64),
        );
    }
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    line(
        &mut out,
        "latency",
        format!(
            "p50 {}, p99 {}, max {}",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or(0))
        ),
    );
    for (path, lat, failures) in &run.probes {
        let mut lat = lat.clone();
        lat.sort_unstable();
        line(
            &mut out,
            "probe",
            format!(
                "{path}: {} GETs, p50 {}, p99 {}, max {}, {failures} failed",
                lat.len(),
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or(0))
            ),
        );
    }
    out
}

/// Checkpoints the database's WAL into the main file, then returns the sizes of the file and
/// of what is left of its WAL.
fn disk_bytes(db: &Path) -> anyhow::Result<(u64, u64)> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open --db {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut complete = false;
    for _ in 0..50 {
        // The first column is 1 when a reader or writer kept the checkpoint from finishing.
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .with_context(|| format!("cannot checkpoint --db {}", db.display()))?;
        if busy == 0 {
            complete = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(conn);
    if !complete {
        eprintln!("loadgen: the master kept the WAL busy; its size counts as it is");
    }
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    Ok((size(db), size(Path::new(&wal))))
}

/// The `bytes/result` line.
fn disk_line(db: u64, wal: u64, stored: u64, given: bool) -> String {
    let mut out = String::new();
    let per = (db + wal) as f64 / stored.max(1) as f64;
    let whose = if given {
        "--stored"
    } else {
        "acknowledged in this run"
    };
    line(
        &mut out,
        "bytes/result",
        format!(
            "{per:.0} ({:.1} MiB file + {:.1} MiB WAL after a checkpoint, {stored} results {whose})",
            db as f64 / 1048576.0,
            wal as f64 / 1048576.0
        ),
    );
    out.trim_end().to_owned()
}

/// What `--verify` found.
#[derive(Debug, Default, PartialEq)]
struct Check {
    acknowledged: u64,
    found: u64,
    missing: u64,
    duplicated: u64,
    /// Results of the load slaves this run did not send.
    others: u64,
}

/// One page of the read API as JSON.
fn read_api(
    agent: &ureq::Agent,
    url: &str,
    auth: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let (status, body) = get(agent, url, auth).map_err(anyhow::Error::msg)?;
    let hint = match (status, auth) {
        (401 | 403, None) => " (a master with a users file wants --read-user NAME:PASSWORD)",
        _ => "",
    };
    anyhow::ensure!(
        status == 200,
        "GET {url}: HTTP {status}: {}{hint}",
        text_of(&body)
    );
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: the answer is not JSON"))
}

fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Pages through every result of the slaves that sent `acked` and counts how often each
/// acknowledged ID is there.
fn verify(plan: &Plan, acked: &[(u32, u128)]) -> anyhow::Result<Check> {
    let mut seen: HashMap<u128, u32> = acked.iter().map(|&(_, id)| (id, 0)).collect();
    let mut slaves: Vec<u32> = acked.iter().map(|&(s, _)| s).collect();
    slaves.sort_unstable();
    slaves.dedup();
    let agent = agent();
    let mut others = 0;
    for slave in slaves {
        let name = query_value(&plan.creds[slave as usize - 1].name);
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/api/v1/results?slave={name}&limit={PAGE}", plan.base);
            if let Some(c) = &cursor {
                let _ = write!(url, "&cursor={}", query_value(c));
            }
            let page = read_api(&agent, &url, plan.read_auth.as_deref())?;
            let results = page["results"]
                .as_array()
                .with_context(|| format!("GET {url}: no \"results\" list"))?;
            for r in results {
                let id = r["id"]
                    .as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .with_context(|| format!("GET {url}: a result without a UUID \"id\""))?;
                match seen.get_mut(&id.as_u128()) {
                    Some(n) => *n += 1,
                    None => others += 1,
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) if !results.is_empty() => cursor = Some(c.to_owned()),
                _ => break,
            }
        }
    }
    Ok(Check {
        acknowledged: acked.len() as u64,
        found: seen.values().filter(|n| **n > 0).count() as u64,
        missing: seen.values().filter(|n| **n == 0).count() as u64,
        duplicated: seen.values().filter(|n| **n > 1).count() as u64,
        others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(route: &Route, slave: u32, ns_rtts: bool, rng: &mut fastrand::Rng) -> TraceResult {
        let creds = creds(slave);
        let target = target(3);
        let series = Series {
            creds: &creds,
            target: &target,
            queries: queries_of(slave),
            ns_rtts,
        };
        make_result(route, &series, uuid::Uuid::new_v4(), now_rfc3339(), rng)
    }

    fn replies(r: &TraceResult) -> impl Iterator<Item = i64> + '_ {
        r.hops
            .iter()
            .flat_map(|h| h.replies.iter().flatten().flatten().copied())
    }

    #[test]
    fn a_route_has_15_ttls_and_ends_at_the_target() {
        for (i, route) in routes(200).iter().enumerate() {
            assert_eq!(route.hops.len(), usize::from(PATH_LEN) - 1);
            let silent = route.hops.iter().filter(|h| h.is_none()).count();
            assert!(silent <= 2, "route {i}: {silent} silent TTLs");
            let r = sample(route, 1 + i as u32, false, &mut fastrand::Rng::with_seed(9));
            assert_eq!(r.hop_count, 15);
            assert_eq!(r.hops.len(), 15 - silent);
            let last = r.hops.last().unwrap();
            assert_eq!(last.ttl, 15);
            assert_eq!(last.kind.as_deref(), Some("reached"));
            assert_eq!(last.n, 84);
            assert_eq!(last.ip.as_deref(), Some("198.18.0.3"));
            assert_eq!(last.address, [198, 18, 0, 3]);
            for h in &r.hops[..r.hops.len() - 1] {
                assert_eq!(h.kind.as_deref(), Some("time-exceeded"));
                assert_eq!(h.n, 56);
                assert_eq!(
                    h.ip.as_deref().unwrap().parse(),
                    Ok(Ipv4Addr::from(h.address))
                );
            }
            assert!(r.hops.windows(2).all(|w| w[0].ttl < w[1].ttl));
        }
        let silent_routes = routes(200)
            .iter()
            .filter(|r| r.hops.iter().any(Option::is_none))
            .count();
        assert!(
            (20..=100).contains(&silent_routes),
            "{silent_routes} of 200"
        );
    }

    #[test]
    fn elapsed_time_is_the_first_reply_and_every_hop_answers() {
        let mut rng = fastrand::Rng::with_seed(1);
        let routes = routes(20);
        let mut lost = 0;
        for i in 0..500 {
            let r = sample(&routes[i % 20], 3, i % 2 == 0, &mut rng);
            assert_eq!(r.queries, Some(1));
            for h in &r.hops {
                let replies = h.replies.as_ref().unwrap();
                assert_eq!(replies.len(), 1);
                lost += replies.iter().filter(|r| r.is_none()).count();
                assert_eq!(
                    Some(h.elapsed_time),
                    replies.iter().flatten().next().copied()
                );
            }
        }
        assert_eq!(lost, 0, "a hop with one probe keeps its reply");
        let mut lost = 0;
        for i in 0..500 {
            let r = sample(&routes[i % 20], 2, false, &mut rng);
            for h in &r.hops {
                let replies = h.replies.as_ref().unwrap();
                assert_eq!(replies.len(), 3);
                lost += replies.iter().filter(|r| r.is_none()).count();
                assert_eq!(
                    Some(h.elapsed_time),
                    replies.iter().flatten().next().copied()
                );
            }
        }
        assert!(lost > 0, "some replies are lost");
    }

    #[test]
    fn rtts_are_whole_microseconds_unless_ns_rtts() {
        let mut rng = fastrand::Rng::with_seed(2);
        let routes = routes(5);
        for route in &routes {
            let r = sample(route, 2, false, &mut rng);
            assert!(replies(&r).all(|ns| ns > 0 && ns % 1000 == 0));
            assert_eq!(r.duration_ns.unwrap() % 1000, 0);
            let r = sample(route, 2, true, &mut rng);
            assert!(replies(&r).all(|ns| ns > 0 && ns % 1000 != 0));
        }
    }

    #[test]
    fn rtts_rise_from_half_a_millisecond_to_thirty() {
        assert_eq!(base_rtt_us(1, 1.0), 500.0);
        assert_eq!(base_rtt_us(PATH_LEN, 1.0), 30_000.0);
        let mut rng = fastrand::Rng::with_seed(3);
        let route = &routes(1)[0];
        let r = sample(route, 1, false, &mut rng);
        let first = r.hops.first().unwrap().elapsed_time;
        let last = r.hops.last().unwrap().elapsed_time;
        assert!((300_000..2_000_000).contains(&first), "{first}");
        assert!((20_000_000..100_000_000).contains(&last), "{last}");
    }

    #[test]
    fn the_result_is_what_our_slave_sends() {
        let mut rng = fastrand::Rng::with_seed(4);
        let r = sample(&routes(1)[0], 7, false, &mut rng);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["Creds"],
            serde_json::json!({"Name": "load7", "Password": "pw7"})
        );
        assert_eq!(v["TargetID"], "00000000-0000-4000-8000-000000000003");
        assert_eq!(
            v["Target"],
            serde_json::json!({"Name": "t3", "Address": "198.18.0.3"})
        );
        assert_eq!(v["Protocol"], "udp");
        assert_eq!(v["Flow"], 0);
        assert_eq!(v["Destination"], "198.18.0.3");
        assert_eq!(v["Success"], true);
        assert!(v["DurationNs"].as_i64().unwrap() > 0);
        assert!(v["Agent"].as_str().unwrap().starts_with("dist-traceroute/"));
        let when = v["DateTime"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(when).is_ok());
        // Microseconds: 19 characters of date and time, a dot, six digits, then the offset.
        assert_eq!(when.as_bytes()[19], b'.');
        assert!(when[20..26].bytes().all(|b| b.is_ascii_digit()));
        assert!(!when[26..27].bytes().all(|b| b.is_ascii_digit()));
        let back: TraceResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn distinct_paths_differ_and_series_keep_their_route() {
        let mut rng = fastrand::Rng::with_seed(5);
        let a = random_route(&mut rng);
        let b = random_route(&mut rng);
        let addrs = |r: &Route| -> Vec<Option<Ipv4Addr>> {
            r.hops.iter().map(|h| h.as_ref().map(|h| h.addr)).collect()
        };
        assert_ne!(addrs(&a), addrs(&b));
        assert_eq!(addrs(&routes(3)[2]), addrs(&routes(3)[2]));
        assert_eq!(series_route(4, 9, 20), series_route(4, 9, 20));
        let mut used = vec![0; 20];
        for s in 1..=64 {
            for t in 1..=100 {
                used[series_route(s, t, 20)] += 1;
            }
        }
        assert!(used.iter().all(|n| (200..=450).contains(n)), "{used:?}");
    }

    #[test]
    fn targets_and_slaves_are_named_by_number() {
        let t = target(7);
        assert_eq!(t.id, "00000000-0000-4000-8000-000000000007");
        assert_eq!(t.name, "t7");
        assert_eq!(t.addr, Ipv4Addr::new(198, 18, 0, 7));
        assert_eq!(target(300).addr, Ipv4Addr::new(198, 18, 1, 44));
        assert_eq!(target(100_000).addr, Ipv4Addr::new(198, 19, 134, 160));
        assert!(uuid::Uuid::parse_str(&target(100_000).id).is_ok());
        let c = creds(12);
        assert_eq!((c.name.as_str(), c.password.as_str()), ("load12", "pw12"));
    }

    #[test]
    fn written_config_loads_in_the_master() {
        let dir = std::env::temp_dir().join(format!("dt-loadgen-{}", std::process::id()));
        write_config(&dir, 5, 300, false).unwrap();
        use dist_traceroute::master::config::{parse_slaves, parse_targets};
        let slaves = dir.join("dt-slaves.json");
        let targets = dir.join("dt-targets.json");
        let s = parse_slaves(&slaves, &std::fs::read(&slaves).unwrap());
        let t = parse_targets(&targets, &std::fs::read(&targets).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(s.is_ok(), "{:?}", s.err());
        assert!(t.is_ok(), "{:?}", t.err());
    }

    fn plan(connections: u32, slaves: u32, mode: LoadMode) -> Plan {
        Plan {
            base: "http://x".into(),
            mode,
            connections,
            slaves,
            creds: (1..=slaves).map(creds).collect(),
            targets: (1..=10).map(target).collect(),
            routes: routes(4),
            batch_size: 1,
            batch_bytes: 768 << 10,
            ns_rtts: false,
            distinct_paths: false,
            keep_ids: false,
            queries: None,
            read_auth: None,
        }
    }

    #[test]
    fn connections_share_out_the_slaves() {
        let p = plan(64, 64, LoadMode::Legacy);
        assert_eq!(p.slaves_of(0), [1]);
        assert_eq!(p.slaves_of(63), [64]);
        let p = plan(64, 8, LoadMode::Legacy);
        assert_eq!(p.slaves_of(9), [2]);
        let p = plan(4, 10, LoadMode::Legacy);
        let mut all: Vec<u32> = (0..4).flat_map(|c| p.slaves_of(c)).collect();
        assert_eq!(p.slaves_of(1), [2, 6, 10]);
        all.sort_unstable();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_is_one_slaves_results_within_its_byte_cap() {
        let mut p = plan(1, 3, LoadMode::Batch);
        p.batch_bytes = 20_000;
        let mut ids = Vec::new();
        let mut next = 8;
        let mut rng = fastrand::Rng::with_seed(6);
        let (body, n) = batch_body(&p, 2, &mut next, 500, &mut ids, &mut rng);
        assert!(n > 1 && n < 500, "{n} results");
        assert_eq!(ids.len() as u64, n);
        assert!(body.len() < 20_100);
        let batch: dist_traceroute::proto::BatchRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(batch.creds.name, "load2");
        assert_eq!(batch.results.len() as u64, n);
        assert!(batch.results.iter().all(|r| r.creds == batch.creds));
        assert_eq!(batch.results[0].target.name, "t9");
        assert_eq!(batch.results[2].target.name, "t1");
        assert_eq!(batch.results[1].id, ids[1].to_string());
        assert_eq!(next, (8 + n as u32) % 10);
        // One result always goes, whatever the cap.
        p.batch_bytes = 10;
        ids.clear();
        let (_, n) = batch_body(&p, 2, &mut next, 500, &mut ids, &mut rng);
        assert_eq!(n, 1);
    }

    #[test]
    fn answers_are_judged_as_the_endpoints_mean_them() {
        let ok = br#"{"Success":true,"Error":"","RetryPossible":true}"#;
        assert_eq!(judge_legacy(200, ok).acked, [0]);
        let no =
            br#"{"Success":false,"Error":"Result validation failed: x","RetryPossible":false}"#;
        let v = judge_legacy(200, no);
        assert!(v.acked.is_empty() && v.request_ok());
        assert_eq!(v.failures[0].0, FailKind::Rejected);
        let v = judge_legacy(401, br#"{"Success":false}"#);
        assert!(!v.request_ok());
        assert_eq!(v.failures[0].0, FailKind::Status(401));
        assert_eq!(
            judge_legacy(200, b"<html>").failures[0].0,
            FailKind::BadAnswer
        );

        let v = judge_api(200, br#"{"stored":true,"duplicate":true}"#);
        assert_eq!((v.acked.len(), v.duplicates), (1, 1));
        assert_eq!(judge_api(503, b"{}").failures[0].0, FailKind::Status(503));
        assert_eq!(judge_api(200, b"{}").failures[0].0, FailKind::BadAnswer);

        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::new_v4()).collect();
        let body = serde_json::json!({"Results": [
            {"ID": ids[0].to_string(), "Status": "stored"},
            {"ID": ids[1].to_string(), "Status": "duplicate"},
            {"ID": ids[2].to_string(), "Status": "rejected", "Error": "bad"},
            {"ID": ids[3].to_string(), "Status": "retry", "Error": "storage error"},
        ]});
        let v = judge_batch(200, body.to_string().as_bytes(), &ids);
        assert_eq!(v.acked, [0, 1]);
        assert_eq!(v.duplicates, 1);
        assert!(v.request_ok());
        assert_eq!(
            v.failures,
            [
                (FailKind::Rejected, 1, "bad".to_owned()),
                (FailKind::Retry, 1, "storage error".to_owned())
            ]
        );
        let v = judge_batch(200, body.to_string().as_bytes(), &ids[..3]);
        assert_eq!(v.failures[0].0, FailKind::BadAnswer);
        assert!(judge_ceiling(200, b"hi").request_ok());
    }

    fn control(goal: Option<u64>) -> Control {
        Control {
            warm_end: Instant::now(),
            deadline: None,
            goal,
            claimed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failing_in_a_row: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            gave_up: Mutex::new(None),
        }
    }

    #[test]
    fn a_results_goal_is_met_exactly_even_after_failures() {
        let c = control(Some(1200));
        assert_eq!(c.claim(500), 500);
        assert_eq!(c.claim(500), 500);
        assert_eq!(c.claim(500), 200);
        c.settle(500, 500);
        c.settle(500, 400); // 100 failed: they are sent again
        c.settle(200, 200);
        assert_eq!(c.claim(500), 100);
        c.settle(100, 100);
        assert_eq!(c.claim(500), 0);
        assert_eq!(c.acked.load(Ordering::Relaxed), 1200);
    }

    #[test]
    fn a_run_gives_up_after_failures_in_a_row() {
        let c = control(None);
        for _ in 0..GIVE_UP_AFTER - 1 {
            c.request_done(false, "refused");
        }
        c.request_done(true, "");
        for _ in 0..GIVE_UP_AFTER - 1 {
            c.request_done(false, "refused");
        }
        assert_eq!(c.claim(1), 1);
        c.request_done(false, "refused");
        assert_eq!(c.claim(1), 0);
        assert!(
            c.gave_up
                .lock()
                .unwrap()
                .as_deref()
                .unwrap()
                .contains("refused")
        );
    }

    #[test]
    fn percentiles_and_base_urls() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(base_url("127.0.0.1:8990").unwrap(), "http://127.0.0.1:8990");
        assert_eq!(base_url("https://m:1/").unwrap(), "https://m:1");
        assert!(base_url("ftp://m").is_err());
    }
}
