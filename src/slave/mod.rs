//! The slave: fetches its targets from the master, traces each one every interval on a
//! worker pool and delivers the results, backing off while the master is away.

pub mod client;
pub mod fake;
pub mod report;

use crate::cli::SlaveArgs;
use crate::proto::{Creds, TargetRef, TargetsDoc, TraceResult};
use crate::trace::{Protocol, TraceOptions, Tracer};
use anyhow::{Context, bail};
use client::{Client, Outcome};
use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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
    /// How often each target is traced.
    pub interval: Duration,
    /// How often the config is fetched.
    pub config_interval: Duration,
    /// Traces at once.
    pub concurrency: usize,
    /// CA certificates to trust for HTTPS instead of the public roots.
    pub ca: Option<Vec<ureq::tls::Certificate<'static>>>,
}

impl Settings {
    /// Checks the flags a slave cannot run without.
    pub fn from_args(a: &SlaveArgs) -> anyhow::Result<Settings> {
        let Some(master) = a.master.as_deref().filter(|m| !m.is_empty()) else {
            bail!("-master is required: the hostname or IP of the master server");
        };
        let Some(name) = a.name.as_deref().filter(|n| !n.is_empty()) else {
            bail!("-name is required: this slave's name as listed in the master's dt-slaves.json");
        };
        let passwd = secret(a)?;
        Ok(Settings {
            master: client::base_url(master, a.master_port, a.tls),
            creds: Creds {
                name: name.to_owned(),
                password: passwd,
            },
            fake: a.z_debug_results,
            interval: a.interval,
            config_interval: a.config_interval,
            concurrency: usize::from(a.concurrency),
            ca: a.ca.as_deref().map(client::load_ca).transpose()?,
        })
    }
}

/// The slave's secret: `-passwd`, else the first line of `-passwd-file`, else `DT_PASSWD`.
fn secret(a: &SlaveArgs) -> anyhow::Result<String> {
    if let Some(p) = a.passwd.as_deref().filter(|p| !p.is_empty()) {
        return Ok(p.to_owned());
    }
    if let Some(file) = &a.passwd_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read -passwd-file {}", file.display()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            bail!("-passwd-file {} is empty", file.display());
        }
        return Ok(line.to_owned());
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

type Doc = Arc<Mutex<Option<TargetsDoc>>>;

/// One trace to run.
struct Job {
    id: String,
    target: TargetRef,
    options: TraceOptions,
}

/// `dist-traceroute slave`.
pub fn run(args: &SlaveArgs) -> anyhow::Result<()> {
    crate::logging::init(&args.log, args.loglevel.filter())?;
    run_with(Settings::from_args(args)?)
}

/// Runs a slave until the process ends.
pub fn run_with(s: Settings) -> anyhow::Result<()> {
    let tracer = if s.fake {
        log::warn!("-zDebugResults: sending FAKE results, no real traces");
        None
    } else {
        let t = Tracer::new().context(
            "cannot trace: run as root, give the binary CAP_NET_RAW (setcap cap_net_raw+ep), or use -zDebugResults for fake results",
        )?;
        log::info!("tracing with {}", t.mode());
        Some(Arc::new(t))
    };
    log::info!(
        "slave '{}' of master {}: every target every {}",
        s.creds.name,
        s.master,
        humantime::format_duration(s.interval)
    );
    let client = Arc::new(Client::new(s.master.clone(), s.creds.clone(), s.ca.clone()));
    let doc: Doc = Arc::new(Mutex::new(None));
    spawn("config", {
        let (client, doc, every) = (client.clone(), doc.clone(), s.config_interval);
        move || poll_config(&client, &doc, every)
    })?;
    let (result_tx, result_rx) = mpsc::channel::<TraceResult>();
    spawn("deliver", {
        let client = client.clone();
        move || deliver(&client, result_rx)
    })?;
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(s.concurrency * 4);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    for i in 0..s.concurrency {
        let (job_rx, result_tx, tracer, in_flight, creds) = (
            job_rx.clone(),
            result_tx.clone(),
            tracer.clone(),
            in_flight.clone(),
            s.creds.clone(),
        );
        spawn(&format!("trace-{i}"), move || {
            loop {
                let job = {
                    let rx = job_rx.lock().unwrap_or_else(|p| p.into_inner());
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                };
                let result = measure(tracer.as_deref(), &job, &creds);
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&job.id);
                if result_tx.send(result).is_err() {
                    return;
                }
            }
        })?;
    }
    schedule(&s, &doc, &job_tx, &in_flight);
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .with_context(|| format!("cannot start thread {name}"))?;
    Ok(())
}

/// Fetches the config now and every `every`; keeps the last good one when the master is away.
fn poll_config(client: &Client, doc: &Doc, every: Duration) {
    let mut backoff = Backoff::new(Duration::from_secs(1), every.min(Duration::from_secs(60)));
    let mut last_raw: Vec<u8> = Vec::new();
    loop {
        let wait = match client.fetch_config() {
            Outcome::Ok((new, raw)) => {
                backoff.reset();
                if raw != last_raw {
                    log::info!(
                        "config from {}: {} targets, MaxHops {}, TimeoutMs {}, Retries {}",
                        client.base(),
                        new.targets.len(),
                        new.max_hops,
                        new.timeout_ms,
                        new.retries
                    );
                    *doc.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
                    last_raw = raw;
                }
                every
            }
            Outcome::Unauthorized => {
                log::error!(
                    "the master {} refused this slave's name or password (401): check -name and -passwd against its dt-slaves.json",
                    client.base()
                );
                backoff.next_wait().max(Duration::from_secs(10))
            }
            Outcome::Rejected(e) | Outcome::Retry(e) => {
                log::warn!("cannot fetch the config: {e}; keeping the last one");
                backoff.next_wait()
            }
        };
        std::thread::sleep(wait);
    }
}

/// Posts results in order, retrying each until the master stores or refuses it for good.
fn deliver(client: &Client, results: mpsc::Receiver<TraceResult>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    for result in results {
        loop {
            match client.post_result(&result) {
                Outcome::Ok(()) => {
                    backoff.reset();
                    log::debug!("result {} for {} delivered", result.id, result.target.name);
                    break;
                }
                Outcome::Rejected(e) => {
                    log::error!(
                        "the master refused result {} for {} for good: {e}",
                        result.id,
                        result.target.name
                    );
                    break;
                }
                Outcome::Unauthorized => {
                    log::error!(
                        "the master refused this slave's name or password (401) for a result; will retry"
                    );
                    std::thread::sleep(backoff.next_wait().max(Duration::from_secs(10)));
                }
                Outcome::Retry(e) => {
                    let wait = backoff.next_wait();
                    log::warn!(
                        "cannot deliver result {}: {e}; retry in {:.1}s",
                        result.id,
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// The trace options for one target under a targets document.
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
    let started = std::time::SystemTime::now();
    let Some(tracer) = tracer else {
        let trace = fake::trace(&job.target.address, &job.options);
        return report::from_trace(&trace, creds, &job.id, &job.target);
    };
    let outcome = crate::trace::resolve(&job.target.address, None)
        .map_err(|e| e.to_string())
        .and_then(|addr| {
            tracer
                .trace(addr, &job.options)
                .map_err(|e| format!("trace to {addr} failed: {e}"))
        });
    match outcome {
        Ok(mut trace) => {
            trace.fill_hosts(Duration::from_millis(300));
            report::from_trace(&trace, creds, &job.id, &job.target)
        }
        Err(e) => {
            log::warn!("{}: {e}", job.target.name);
            report::from_error(&e, started, creds, &job.id, &job.target)
        }
    }
}

/// Every interval, hands each target to the workers, spread over the interval; a target whose
/// last trace still runs is skipped this round.
fn schedule(
    s: &Settings,
    doc: &Doc,
    jobs: &mpsc::SyncSender<Job>,
    in_flight: &Mutex<HashSet<String>>,
) {
    let mut warned_empty = false;
    loop {
        let round = Instant::now();
        let current = doc.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(current) = current else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if current.targets.is_empty() && !warned_empty {
            log::warn!("the master gave this slave no targets");
            warned_empty = true;
        }
        let step = s.interval / u32::try_from(current.targets.len().max(1)).unwrap_or(u32::MAX);
        for (i, (id, spec)) in current.targets.iter().enumerate() {
            let due = round + step * u32::try_from(i).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if !in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone())
            {
                log::warn!(
                    "{}: the previous trace still runs; skipping this round",
                    spec.name
                );
                continue;
            }
            let job = Job {
                id: id.clone(),
                target: TargetRef {
                    name: spec.name.clone(),
                    address: spec.address.clone(),
                },
                options: options_for(&current, spec),
            };
            if jobs.send(job).is_err() {
                return;
            }
        }
        if let Some(wait) = (round + s.interval).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
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
        };
        let o = options_for(&doc, &spec);
        assert_eq!(
            (o.max_hops, o.retries, o.protocol, o.port),
            (12, 2, Protocol::Tcp, Some(443))
        );
        assert_eq!(o.timeout, Duration::from_millis(250));
    }
}
