//! The slave: fetches its targets from the master, traces each one every interval on a
//! worker pool, writes every result to the disk spool and delivers it from there, backing off
//! while the master is away; stops cleanly on SIGINT/SIGTERM.

pub mod client;
pub mod deliver;
pub mod enrol;
pub mod fake;
pub mod jobs;
pub mod report;
pub mod schedule;
pub mod shutdown;
pub mod spool;

use crate::cli::SlaveArgs;
use crate::proto::{Creds, TargetRef, TargetsDoc, TraceResult};
use crate::trace::{Protocol, TraceOptions, Tracer};
use anyhow::{Context, bail};
use client::{Client, Outcome, Status};
use deliver::{Deliverer, Stats};
use schedule::{Bucket, Next, Plan};
use shutdown::Stop;
use spool::{Caps, Spool};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a slave needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://host:port` of the master.
    pub master: String,
    /// Name and secret.
    pub creds: Creds,
    /// Fake traces instead of real ones.
    pub fake: bool,
    /// How often each target is traced (unless the target has its own `Interval`).
    pub interval: Duration,
    /// How often the config is fetched.
    pub config_interval: Duration,
    /// Traces at once.
    pub concurrency: usize,
    /// The spool folder.
    pub spool: PathBuf,
    /// How much the spool keeps before it drops the oldest results.
    pub caps: Caps,
    /// Probes per second, about, over all traces.
    pub max_pps: u32,
    /// Longest wait between delivery attempts.
    pub retry_max: Duration,
    /// Longest time one request to the master may take.
    pub master_timeout: Duration,
    /// On SIGINT/SIGTERM: time for running traces to finish, then again to flush the spool.
    pub shutdown_timeout: Duration,
    /// CA certificates to trust for HTTPS instead of the public roots.
    pub ca: Option<Vec<ureq::tls::Certificate<'static>>>,
    /// The tags this slave gives itself (`-tags`), told to the master with each config request.
    pub tags: Vec<String>,
    /// A one-time token to enrol with before anything else (`-enroll`): the credentials are
    /// then the ones the enrolment makes.
    pub enroll: Option<String>,
}

impl Settings {
    /// Defaults for everything but the master and the credentials.
    pub fn new(master: String, creds: Creds, spool: PathBuf) -> Settings {
        Settings {
            master,
            creds,
            fake: false,
            interval: Duration::from_secs(60),
            config_interval: Duration::from_secs(60),
            concurrency: 16,
            spool,
            caps: Caps {
                max_results: 200_000,
                max_bytes: 512 << 20,
            },
            max_pps: 500,
            retry_max: Duration::from_secs(60),
            master_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            ca: None,
            tags: Vec::new(),
            enroll: None,
        }
    }

    /// Checks the flags a slave cannot run without.
    pub fn from_args(a: &SlaveArgs) -> anyhow::Result<Settings> {
        let Some(master) = a.master.as_deref().filter(|m| !m.is_empty()) else {
            bail!("-master is required: the hostname or IP of the master server");
        };
        let spool = a.spool.clone().unwrap_or_else(|| default_spool(&a.log));
        let name = a.name.as_deref().filter(|n| !n.is_empty());
        let token = a.enroll.as_deref().filter(|t| !t.is_empty());
        // Credentials an enrolment saved come first: a restart with the same command line
        // (its token used by now) goes on as the enrolled slave.
        let (creds, enroll) = match (enrol::saved(&spool)?, name, token) {
            (Some(saved), Some(name), _) if saved.name != name => bail!(
                "{} holds the credentials of enrolled slave '{}', not of -name {name}",
                enrol::file(&spool).display(),
                saved.name
            ),
            (Some(saved), _, _) => (saved, None),
            (None, Some(_), Some(_)) => {
                bail!(
                    "give -name and -passwd, or -enroll TOKEN (the token names the slave), not both"
                )
            }
            (None, Some(name), None) => (
                Creds {
                    name: name.to_owned(),
                    password: secret(a)?,
                },
                None,
            ),
            (None, None, Some(token)) => (
                Creds {
                    name: String::new(),
                    password: String::new(),
                },
                Some(token.to_owned()),
            ),
            (None, None, None) => bail!(
                "-name is required: this slave's name as listed in the master's dt-slaves.json (or -enroll TOKEN from `dist-traceroute enroll-token` on the master)"
            ),
        };
        Ok(Settings {
            master: client::base_url(master, a.master_port, a.tls),
            creds,
            enroll,
            fake: a.z_debug_results,
            interval: a.interval,
            config_interval: a.config_interval,
            concurrency: usize::from(a.concurrency),
            spool,
            caps: Caps {
                max_results: a.spool_max_results,
                max_bytes: a.spool_max_mb.saturating_mul(1 << 20),
            },
            max_pps: a.max_pps,
            retry_max: a.retry_max,
            master_timeout: a.master_timeout,
            shutdown_timeout: a.shutdown_timeout,
            ca: a.ca.as_deref().map(client::load_ca).transpose()?,
            tags: a.tags.iter().map(|t| t.0.clone()).collect(),
        })
    }
}

/// The spool next to the log: `./dt-slave.log` → `./dt-slave.spool` (with `-log -`, logging
/// to stderr only, `./dt-slave.spool`).
pub fn default_spool(log: &std::path::Path) -> PathBuf {
    if log == std::path::Path::new("-") {
        return PathBuf::from("./dt-slave.spool");
    }
    log.with_extension("spool")
}

/// The slave's secret: `-passwd`, else the first line of `-passwd-file`, else `DT_PASSWD`.
fn secret(a: &SlaveArgs) -> anyhow::Result<String> {
    if let Some(p) = a.passwd.as_deref().filter(|p| !p.is_empty()) {
        return Ok(p.to_owned());
    }
    if let Some(file) = &a.passwd_file {
        return crate::secret_from_file(file, "-passwd-file");
    }
    match std::env::var("DT_PASSWD") {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => bail!(
            "-passwd is required (or -passwd-file FILE, or the DT_PASSWD environment variable): this slave's secret as listed in the master's dt-slaves.json"
        ),
    }
}

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The next wait: the current step ±20 %, then the step doubles.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(0.8 + fastrand::f64() * 0.4)
    }

    /// Back to the shortest wait after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

type Doc = Arc<Mutex<Option<Arc<TargetsDoc>>>>;
type Busy = Arc<Mutex<HashSet<String>>>;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One trace to run: a configured target's (`id` is its UUID) or an on-demand job's flow.
#[derive(Clone)]
struct Job {
    id: String,
    target: TargetRef,
    options: TraceOptions,
    /// The on-demand measurement it is for.
    measurement: Option<String>,
    /// Flows traced, 0..flows, each its own result (a configured target's `Flows`).
    flows: u16,
    /// Multipath discovery to this confidence (0..1) instead: one result with the graph.
    multipath: Option<f64>,
}

/// Most flows one multipath discovery traces, as `trace --mda`: a 4-way split at 95% takes
/// 32 in the median and up to 48 (every branch needs its own 6 beside the split's 21).
pub const MDA_MAX_FLOWS: u16 = 64;

/// The confidence of a multipath discovery when the target names none.
pub const MDA_CONFIDENCE: f64 = 0.95;

/// `dist-traceroute slave`.
pub fn run(args: &SlaveArgs) -> anyhow::Result<()> {
    crate::logging::init(&args.log, args.loglevel.filter())?;
    run_with(Settings::from_args(args)?)
}

/// Runs a slave until SIGINT or SIGTERM.
pub fn run_with(s: Settings) -> anyhow::Result<()> {
    let stop = Arc::new(Stop::default());
    shutdown::on_signals(stop.clone())?;
    let tracer = if s.fake {
        log::warn!("-zDebugResults: sending FAKE results, no real traces");
        None
    } else {
        let t = Tracer::new().context(
            "cannot trace: run as root, give the binary CAP_NET_RAW (setcap cap_net_raw+ep), or use -zDebugResults for fake results",
        )?;
        // The engine paces the probes themselves at the same cap the scheduler plans with.
        t.set_probe_rate(s.max_pps);
        log::info!("tracing with {}, at most {} probes/s", t.mode(), s.max_pps);
        Some(Arc::new(t))
    };
    std::fs::create_dir_all(&s.spool)
        .with_context(|| format!("cannot create the spool {}", s.spool.display()))?;
    let spool = Arc::new(Spool::open(&s.spool, s.caps)?);
    let mut s = s;
    if let Some(token) = s.enroll.take() {
        let asker = Client::new(
            s.master.clone(),
            s.creds.clone(),
            s.ca.clone(),
            s.master_timeout,
        );
        s.creds = enrol::enrol(&asker, &token, &s.spool, s.retry_max, &stop)?;
    }
    log::info!(
        "slave '{}' of master {}: every target every {}; spool {} holds {} results ({} dropped in all)",
        s.creds.name,
        s.master,
        humantime::format_duration(s.interval),
        s.spool.display(),
        spool.depth(),
        spool.dropped_total()
    );
    let client = Arc::new(
        Client::new(
            s.master.clone(),
            s.creds.clone(),
            s.ca.clone(),
            s.master_timeout,
        )
        .with_tags(s.tags.clone()),
    );
    let stats = Arc::new(Stats::default());
    let doc: Doc = Arc::new(Mutex::new(cached_config(&spool)));
    spawn("config", {
        let (client, doc, spool, stop, every) = (
            client.clone(),
            doc.clone(),
            spool.clone(),
            stop.clone(),
            s.config_interval,
        );
        move || poll_config(&client, &doc, &spool, &stop, every)
    })?;
    let finish = Arc::new(Stop::default());
    let deliverer = spawn("deliver", {
        let (client, spool, stats, finish) =
            (client.clone(), spool.clone(), stats.clone(), finish.clone());
        let (retry_max, flush_for) = (s.retry_max, s.shutdown_timeout);
        move || Deliverer::new(&client, &spool, &stats, retry_max).run(&finish, flush_for)
    })?;
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(s.concurrency);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let busy: Busy = Arc::default();
    let mut workers = Vec::new();
    for i in 0..s.concurrency {
        let (job_rx, tracer, busy, creds, spool, stats) = (
            job_rx.clone(),
            tracer.clone(),
            busy.clone(),
            s.creds.clone(),
            spool.clone(),
            stats.clone(),
        );
        workers.push(spawn(&format!("trace-{i}"), move || {
            loop {
                let Ok(job) = locked(&job_rx).recv() else {
                    return;
                };
                // A target of several flows: each flow traced at once, one result each (a
                // multipath one is one discovery, one result).
                let n = if job.multipath.is_some() {
                    1
                } else {
                    job.flows.max(1)
                };
                let flows: Vec<Job> = (0..n)
                    .map(|flow| Job {
                        options: TraceOptions {
                            flow,
                            ..job.options.clone()
                        },
                        ..job.clone()
                    })
                    .collect();
                std::thread::scope(|scope| {
                    for one in &flows {
                        let (tracer, creds, spool, stats) = (&tracer, &creds, &spool, &stats);
                        let run = move || {
                            let mut result = measure(tracer.as_deref(), one, creds);
                            // The password is added when the result is sent: it has no
                            // place in the spool.
                            result.creds.password.clear();
                            stats.traced.fetch_add(1, Ordering::Relaxed);
                            keep(spool, stats, &result);
                        };
                        if flows.len() == 1 {
                            run();
                        } else {
                            scope.spawn(run);
                        }
                    }
                });
                locked(&busy).remove(&job.id);
            }
        })?);
    }
    // On-demand jobs: a long-poll of its own (its requests may take the wait and the master
    // timeout), each job's flows traced at once beside the schedule.
    spawn("jobs", {
        let poller = Client::new(
            s.master.clone(),
            s.creds.clone(),
            s.ca.clone(),
            s.master_timeout + jobs::WAIT,
        );
        let (tracer, creds, spool, stats, stop) = (
            tracer.clone(),
            s.creds.clone(),
            spool.clone(),
            stats.clone(),
            stop.clone(),
        );
        move || {
            jobs::poll(&poller, &stop, |job| {
                let (tracer, creds, spool, stats) =
                    (tracer.clone(), creds.clone(), spool.clone(), stats.clone());
                let started = spawn(&format!("measure-{}", job.id), move || {
                    let mut result = measure(tracer.as_deref(), &job, &creds);
                    result.creds.password.clear();
                    stats.traced.fetch_add(1, Ordering::Relaxed);
                    keep(&spool, &stats, &result);
                });
                if let Err(e) = started {
                    log::warn!("{e:#}");
                }
            })
        }
    })?;
    schedule(&s, &doc, &job_tx, &busy, &stop, &spool, &stats);
    drop(job_tx);
    let deadline = Instant::now() + s.shutdown_timeout;
    if !wait_threads(&workers, deadline) {
        log::warn!(
            "traces still running after {}: stopping without them",
            humantime::format_duration(s.shutdown_timeout)
        );
    }
    finish.stop();
    // The flush has its own bound; a request in flight may add the master timeout.
    wait_threads(
        std::slice::from_ref(&deliverer),
        Instant::now() + s.shutdown_timeout + s.master_timeout,
    );
    log::info!(
        "stopped after tracing {}, spooling {}, delivering {}, rejected {}, dropped {}; {} results wait in {}",
        stats.traced.load(Ordering::Relaxed),
        stats.spooled.load(Ordering::Relaxed),
        stats.delivered.load(Ordering::Relaxed),
        stats.rejected.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        spool.depth(),
        s.spool.display()
    );
    Ok(())
}

/// Writes a finished result to the spool; it is sent from there.
fn keep(spool: &Spool, stats: &Stats, result: &TraceResult) {
    match spool.put(result) {
        Ok(put) => {
            stats.spooled.fetch_add(1, Ordering::Relaxed);
            log::debug!("spooled {} for {}", result.id, result.target.name);
            if put.dropped > 0 {
                stats.dropped.fetch_add(put.dropped, Ordering::Relaxed);
                log::warn!(
                    "spool full ({} results): dropped the oldest {} ({} in all since the spool was made)",
                    spool.depth(),
                    put.dropped,
                    spool.dropped_total()
                );
            }
        }
        Err(e) => log::error!(
            "result {} for {} is lost: {e:#}",
            result.id,
            result.target.name
        ),
    }
}

/// True when every thread ended before `deadline`.
fn wait_threads(threads: &[JoinHandle<()>], deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if threads.iter().all(JoinHandle::is_finished) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    threads.iter().all(JoinHandle::is_finished)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .with_context(|| format!("cannot start thread {name}"))
}

/// The targets document saved by an earlier run, so a slave restarted while the master is
/// down keeps measuring.
fn cached_config(spool: &Spool) -> Option<Arc<TargetsDoc>> {
    let raw = spool.load_config()?;
    match serde_json::from_slice::<TargetsDoc>(&raw) {
        Ok(doc) => {
            log::info!(
                "using the saved config ({} targets) until the master answers",
                doc.targets.len()
            );
            Some(Arc::new(doc))
        }
        Err(e) => {
            log::warn!("the saved config does not decode ({e}); waiting for the master");
            None
        }
    }
}

/// Fetches the config now and every `every`; keeps the last good one when the master is away.
fn poll_config(client: &Client, doc: &Doc, spool: &Spool, stop: &Stop, every: Duration) {
    let mut backoff = Backoff::new(Duration::from_secs(1), every.min(Duration::from_secs(60)));
    let mut last_raw: Vec<u8> = spool.load_config().unwrap_or_default();
    loop {
        let status = Status {
            spool_depth: spool.depth(),
            dropped_total: spool.dropped_total(),
        };
        let wait = match client.fetch_config(status) {
            Outcome::Ok((new, raw)) => {
                backoff.reset();
                if raw != last_raw || locked(doc).is_none() {
                    log::info!(
                        "config from {}: {} targets, MaxHops {}, TimeoutMs {}, Retries {}",
                        client.base(),
                        new.targets.len(),
                        new.max_hops,
                        new.timeout_ms,
                        new.retries
                    );
                    for spec in new.targets.values() {
                        if let Err(e) = schedule::target_interval(spec) {
                            log::warn!("{e}; using -interval");
                        }
                    }
                    if let Err(e) = spool.save_config(&raw) {
                        log::warn!("cannot save the config for a restart: {e:#}");
                    }
                    *locked(doc) = Some(Arc::new(new));
                    last_raw = raw;
                }
                every
            }
            Outcome::Unauthorized => {
                log::error!(
                    "the master {} refused this slave's name or password (401): check -name and -passwd against its dt-slaves.json",
                    client.base()
                );
                backoff.next_wait().max(Duration::from_secs(10).min(every))
            }
            Outcome::Rejected(e) | Outcome::Retry(e) => {
                log::warn!("cannot fetch the config: {e}; keeping the last one");
                backoff.next_wait()
            }
        };
        if stop.sleep(wait) {
            return;
        }
    }
}

/// The trace options for one target under a targets document.
/// The confidence (0..1) of a target's multipath discovery, `None` when it has none (a
/// `Multipath` this slave does not know is traced as one flow, with a warning).
fn multipath_of(t: &crate::proto::TargetSpec) -> Option<f64> {
    match t.multipath.as_deref()? {
        "mda" => Some(
            t.confidence
                .filter(|c| (50.0..=99.9).contains(c))
                .map_or(MDA_CONFIDENCE, |c| c / 100.0),
        ),
        other => {
            log::warn!(
                "{}: Multipath '{other}' is not known here; tracing one flow",
                t.name
            );
            None
        }
    }
}

pub fn options_for(doc: &TargetsDoc, target: &crate::proto::TargetSpec) -> TraceOptions {
    TraceOptions {
        protocol: target
            .protocol
            .as_deref()
            .and_then(Protocol::parse)
            .unwrap_or_default(),
        port: target.port,
        max_hops: doc.max_hops.clamp(1, 255),
        queries: 1,
        retries: doc.retries,
        timeout: Duration::from_millis(u64::from(doc.timeout_ms.clamp(1, 60_000))),
        ..TraceOptions::default()
    }
}

fn measure(tracer: Option<&Tracer>, job: &Job, creds: &Creds) -> TraceResult {
    let mut r = trace_job(tracer, job, creds);
    if job.measurement.is_some() {
        r.measurement = job.measurement.clone();
        r.target_id = None;
    }
    r
}

fn trace_job(tracer: Option<&Tracer>, job: &Job, creds: &Creds) -> TraceResult {
    let started = std::time::SystemTime::now();
    let Some(tracer) = tracer else {
        let trace = fake::trace(&job.target.address, &job.options);
        let mut r = report::from_trace(&trace, creds, &job.id, &job.target);
        r.debug = true;
        return r;
    };
    if let Some(confidence) = job.multipath {
        return discover(tracer, job, creds, confidence, started);
    }
    let outcome = crate::trace::resolve(&job.target.address, None)
        .map_err(|e| (e.to_string(), None))
        .and_then(|addr| {
            tracer
                .trace(addr, &job.options)
                .map_err(|e| (format!("trace to {addr} failed: {e}"), Some(addr)))
        });
    match outcome {
        Ok(mut trace) => {
            trace.fill_hosts(Duration::from_millis(300));
            report::from_trace(&trace, creds, &job.id, &job.target)
        }
        Err((e, resolved)) => {
            log::warn!("{}: {e}", job.target.name);
            report::from_error(&e, resolved, started, creds, &job.id, &job.target)
        }
    }
}

/// One multipath discovery: flow 0's path as the result's hops, the graph beside them.
fn discover(
    tracer: &Tracer,
    job: &Job,
    creds: &Creds,
    confidence: f64,
    started: std::time::SystemTime,
) -> TraceResult {
    let outcome = crate::trace::resolve(&job.target.address, None)
        .map_err(|e| (e.to_string(), None))
        .and_then(|addr| {
            crate::trace::mda::discover_with_traces(
                tracer,
                addr,
                &job.options,
                confidence,
                MDA_MAX_FLOWS,
                // Other flows each round beside flow 0: a branch one round's flows missed
                // is found by the next.
                fastrand::u16(..),
            )
            .map_err(|e| {
                (
                    format!("multipath discovery to {addr} failed: {e}"),
                    Some(addr),
                )
            })
        });
    match outcome {
        Ok((graph, mut traces)) => {
            let mut first = traces.swap_remove(0);
            first.fill_hosts(Duration::from_millis(300));
            let mut r = report::from_trace(&first, creds, &job.id, &job.target);
            r.multipath = Some(report::multipath(&graph));
            r
        }
        Err((e, resolved)) => {
            log::warn!("{}: {e}", job.target.name);
            report::from_error(&e, resolved, started, creds, &job.id, &job.target)
        }
    }
}

/// The counters at the last status line.
#[derive(Debug, Default)]
struct StatusLine {
    traced: u64,
    spooled: u64,
    delivered: u64,
    rejected: u64,
    dropped: u64,
}

/// One line: what happened since the last line, and what waits.
fn log_status(stats: &Stats, spool: &Spool, last: &mut StatusLine) {
    let now = StatusLine {
        traced: stats.traced.load(Ordering::Relaxed),
        spooled: stats.spooled.load(Ordering::Relaxed),
        delivered: stats.delivered.load(Ordering::Relaxed),
        rejected: stats.rejected.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed),
    };
    log::info!(
        "status: traced {}, spooled {}, delivered {}, rejected {}, dropped {} ({} in all); {} waiting in the spool",
        now.traced - last.traced,
        now.spooled - last.spooled,
        now.delivered - last.delivered,
        now.rejected - last.rejected,
        now.dropped - last.dropped,
        spool.dropped_total(),
        spool.depth()
    );
    *last = now;
}

/// Hands due targets to the workers (see [`schedule::Plan`]) within the concurrency and
/// probe-rate caps, logs the status line every interval, until `stop`.
fn schedule(
    s: &Settings,
    doc: &Doc,
    jobs: &mpsc::SyncSender<Job>,
    busy: &Busy,
    stop: &Stop,
    spool: &Spool,
    stats: &Stats,
) {
    let mut plan = Plan::new(s.interval);
    let mut bucket = Bucket::new(s.max_pps, Instant::now());
    let mut warned_empty = false;
    let mut last = StatusLine::default();
    let mut next_status = Instant::now() + s.interval;
    loop {
        let now = Instant::now();
        if now >= next_status {
            log_status(stats, spool, &mut last);
            next_status = now + s.interval;
        }
        let current = locked(doc).clone();
        let Some(current) = current else {
            if stop.sleep(Duration::from_millis(200)) {
                return;
            }
            continue;
        };
        if current.targets.is_empty() && !warned_empty {
            log::warn!("the master gave this slave no targets");
            warned_empty = true;
        }
        plan.update(&current, now);
        let pause = loop {
            if locked(busy).len() >= s.concurrency {
                break Duration::from_millis(20);
            }
            let snapshot = locked(busy).clone();
            match plan.next(Instant::now(), &snapshot) {
                Next::WaitUntil(t) => {
                    break t
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(250));
                }
                Next::Run(id) => {
                    let spec = current.targets.get(&id);
                    let multipath = spec.and_then(multipath_of);
                    let flows = spec.and_then(|t| t.flows).unwrap_or(1).clamp(1, 16);
                    // A discovery costs at least its first round of flows up front; the
                    // tracer's pacer holds any more it adds to the same cap.
                    let charged = if multipath.is_some() {
                        crate::trace::mda::flows_for(1, multipath.unwrap_or(MDA_CONFIDENCE)) as u16
                    } else {
                        flows
                    };
                    let cost = schedule::probe_cost(&current) * f64::from(charged);
                    if !bucket.take(cost, Instant::now()) {
                        plan.retry_now(&id, Instant::now());
                        break Duration::from_millis(20);
                    }
                    let Some(spec) = current.targets.get(&id) else {
                        continue;
                    };
                    locked(busy).insert(id.clone());
                    let job = Job {
                        id,
                        target: TargetRef {
                            name: spec.name.clone(),
                            address: spec.address.clone(),
                        },
                        options: options_for(&current, spec),
                        measurement: None,
                        flows,
                        multipath,
                    };
                    if jobs.send(job).is_err() {
                        return;
                    }
                }
            }
        };
        if stop.sleep(pause.max(Duration::from_millis(1))) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let waits: Vec<f64> = (0..4).map(|_| b.next_wait().as_secs_f64()).collect();
        assert!((0.8..=1.2).contains(&waits[0]), "{waits:?}");
        assert!((1.6..=2.4).contains(&waits[1]), "{waits:?}");
        assert!((3.2..=4.8).contains(&waits[2]), "{waits:?}");
        assert!((3.2..=4.8).contains(&waits[3]), "{waits:?}");
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(1200));
    }

    #[test]
    fn options_follow_the_document() {
        let doc: TargetsDoc = serde_json::from_str(
            r#"{"ReportURL":"","Targets":{},"Retries":2,"MaxHops":12,"TimeoutMs":250}"#,
        )
        .unwrap();
        let spec = crate::proto::TargetSpec {
            name: "x".into(),
            address: "h".into(),
            protocol: Some("tcp".into()),
            port: Some(443),
            interval: None,
            flows: None,
            multipath: None,
            confidence: None,
        };
        let o = options_for(&doc, &spec);
        assert_eq!(
            (o.max_hops, o.retries, o.protocol, o.port),
            (12, 2, Protocol::Tcp, Some(443))
        );
        assert_eq!(o.timeout, Duration::from_millis(250));
    }
}
