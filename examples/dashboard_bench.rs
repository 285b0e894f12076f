//! Benchmark: the dashboard's pages over a large fleet, and the live stream's delay under load.
//!
//! Stores results of 100 slaves × 100 targets (10,000 series, 30 results each a minute apart,
//! a path change in every tenth series), then times through the real router (HTML made,
//! the store read) the overview, the target page (100 slaves' paths in one graph) and a
//! series page, and prints their sizes. Then it serves the same master over HTTP on loopback,
//! keeps it ingesting batches as fast as two connections can send them, and measures how
//! long after its POST a probe result reaches a client on the unfiltered stream, as the
//! overview's browser has it.
//!
//! `cargo run --release --example dashboard_bench -- [RESULTS_PER_SERIES] [STREAM_SECONDS]`
//! (defaults 30 and 20).

#[path = "../tests/util/sse.rs"]
mod sse;

use dist_traceroute::master::config::{Config, Live, parse_slaves, parse_targets};
use dist_traceroute::master::path::{Path, Terminal};
use dist_traceroute::master::routes::{App, Request, handle};
use dist_traceroute::master::store::{self, NewHop, NewResult};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SLAVES: usize = 100;
const TARGETS: usize = 100;
const HOPS: i64 = 8;

fn target_id(t: usize) -> String {
    format!("00000000-0000-4000-9000-{t:012}")
}

/// Hop addresses of a series: a slave's own first two hops, a shared core (one of two routes
/// per target, the second taken by every tenth series from its 20th result on), the target.
fn address(slave: usize, target: usize, ttl: i64, late: bool) -> String {
    match ttl {
        1 | 2 => format!("10.{}.{}.{ttl}", slave / 250, slave % 250),
        t if t == HOPS => format!("10.200.{}.1", target),
        t => format!(
            "10.{}.{}.{}",
            100 + t,
            target,
            if late && (slave + target).is_multiple_of(10) {
                2
            } else {
                1
            } + (slave % 4) as i64 * 10
        ),
    }
}

fn result(n: usize, slave: usize, target: usize, round: usize, at: i64) -> NewResult {
    let late = round >= 20;
    let hops: Vec<NewHop> = (1..=HOPS)
        .filter(|ttl| !(*ttl == 5 && n.is_multiple_of(13)))
        .map(|ttl| {
            let rtt = 1_000_000 * ttl + (n as i64 % 997) * 1000;
            NewHop {
                ttl,
                address: address(slave, target, ttl, late),
                host: String::new(),
                rtt_ns: rtt,
                size: 56,
                mpls: None,
                kind: Some(
                    if ttl == HOPS {
                        "reached"
                    } else {
                        "time-exceeded"
                    }
                    .into(),
                ),
                replies: Some(vec![Some(rtt), Some(rtt + 100_000)]),
                reply_ttl: None,
            }
        })
        .collect();
    let path = Path::from_hops(
        hops.iter().map(|h| (h.ttl, h.address.parse().unwrap())),
        Terminal::Reached,
    );
    NewResult {
        result_id: uuid::Uuid::new_v4().to_string(),
        slave: format!("slave{slave}"),
        target_uuid: target_id(target),
        target_name: format!("target{target}"),
        target_address: format!("10.200.{target}.1"),
        target_known: true,
        target_selected: true,
        measured_at: at,
        date_time: chrono::DateTime::from_timestamp_millis(at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        success: true,
        hop_count: HOPS,
        path,
        protocol: Some("udp".into()),
        flow: Some(0),
        destination: None,
        unreachable: None,
        error: None,
        agent: None,
        duration_ns: Some(5_000_000),
        rtt_alert_ns: None,
        origin: Default::default(),
        hops,
        multipath: None,
        as_hops: None,
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `runs` GETs of `path?query` through the router: p50, p99, bytes of the last.
fn time_page(
    app: &App,
    runs: usize,
    mut query: impl FnMut(usize) -> String,
    path: &str,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    for i in 0..runs {
        let req = Request {
            path: path.into(),
            query: query(i),
            remote: "127.0.0.1:1".parse()?,
            ..Request::default()
        };
        let t = Instant::now();
        let r = handle(app, &req);
        times.push(t.elapsed());
        let body = r.body.into_bytes()?;
        anyhow::ensure!(
            r.status == 200,
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&body)
        );
        bytes = body.len();
    }
    Ok((
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.99),
        bytes,
    ))
}

/// One result in the wire format, from `slave{s}` to `target{t}`, measured now.
fn wire_result(s: usize, t: usize) -> serde_json::Value {
    let now = chrono::Utc::now();
    let hops: Vec<serde_json::Value> = (1..=HOPS)
        .map(|ttl| {
            let a: std::net::Ipv4Addr = address(s, t, ttl, false).parse().unwrap();
            json!({"Success": true, "Address": a.octets(), "Host": "", "N": 56,
                   "ElapsedTime": 1_000_000 * ttl, "TTL": ttl, "Replies": [1_000_000 * ttl]})
        })
        .collect();
    json!({
        "Creds": {"Name": format!("slave{s}"), "Password": format!("pw{s}")},
        "ID": uuid::Uuid::new_v4().to_string(), "DateTime": now.to_rfc3339(),
        "Target": {"Name": format!("target{t}"), "Address": format!("10.200.{t}.1")},
        "TargetID": target_id(t), "Success": true, "HopCount": HOPS, "Hops": hops,
        "Protocol": "udp", "Flow": 0,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let per_series: usize = args.next().map_or(Ok(30), |a| a.parse())?;
    let stream_secs: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("dt-dashboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = store::open(&dir.join("bench.db"), None, 2)?;
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - per_series as i64 * 60_000;
    let t0 = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    let mut n = 0;
    for round in 0..per_series {
        for t in 0..TARGETS {
            for s in 0..SLAVES {
                batch.push(result(
                    n,
                    s,
                    t,
                    round,
                    start + round as i64 * 60_000 + s as i64 * 10,
                ));
                n += 1;
                if batch.len() == 1000 {
                    store.insert_batch(&batch)?;
                    batch.clear();
                }
            }
        }
    }
    store.insert_batch(&batch)?;
    println!(
        "stored {n} results ({} series) in {:.1} s",
        SLAVES * TARGETS,
        t0.elapsed().as_secs_f64()
    );

    let slaves: Vec<serde_json::Value> = (0..SLAVES)
        .map(|s| json!({"Name": format!("slave{s}"), "Password": format!("pw{s}")}))
        .collect();
    let slaves_raw = serde_json::to_vec(&json!({ "Slaves": slaves }))?;
    let targets: serde_json::Map<String, serde_json::Value> = (0..TARGETS)
        .map(|t| {
            (
                target_id(t),
                json!({"Name": format!("target{t}"), "Address": format!("10.200.{t}.1")}),
            )
        })
        .collect();
    let targets_raw = serde_json::to_vec(
        &json!({"Targets": targets, "Retries": 1, "MaxHops": 30, "TimeoutMs": 500}),
    )?;
    let config = Config {
        slaves: parse_slaves(std::path::Path::new("s"), &slaves_raw)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        targets: parse_targets(std::path::Path::new("t"), &targets_raw)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        targets_raw: Arc::from(&targets_raw[..]),
        verified: Arc::default(),
        selections: Arc::default(),
        derived: Arc::default(),
    };
    let app = Arc::new(App::new("bench:8990".into(), Live::new(config), store));

    let mut rng = fastrand::Rng::with_seed(7);
    let (p50, p99, bytes) = time_page(&app, 30, |_| String::new(), "/")?;
    println!(
        "overview, {SLAVES} slaves × {TARGETS} targets: p50 {:.1} ms, p99 {:.1} ms, {:.0} KB",
        ms(p50),
        ms(p99),
        bytes as f64 / 1000.0
    );
    let (p50, p99, bytes) = time_page(
        &app,
        30,
        |_| format!("id={}", target_id(rng.usize(0..TARGETS))),
        "/ui/target",
    )?;
    println!(
        "target page, {SLAVES} slaves' paths, 1 h window: p50 {:.1} ms, p99 {:.1} ms, {:.0} KB",
        ms(p50),
        ms(p99),
        bytes as f64 / 1000.0
    );
    let (p50, p99, bytes) = time_page(
        &app,
        30,
        |_| {
            format!(
                "slave=slave{}&target={}",
                rng.usize(0..SLAVES),
                target_id(rng.usize(0..TARGETS))
            )
        },
        "/ui/series",
    )?;
    println!(
        "series page, 6 h window ({per_series} results): p50 {:.1} ms, p99 {:.1} ms, {:.0} KB",
        ms(p50),
        ms(p99),
        bytes as f64 / 1000.0
    );

    // The stream under load, over HTTP on loopback.
    let listener = dist_traceroute::master::server::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let served = app.clone();
    std::thread::spawn(move || {
        dist_traceroute::master::server::serve(
            listener,
            served,
            Default::default(),
            None,
            dist_traceroute::master::server::Until::Forever,
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut client = sse::Stream::open(addr, "/api/v1/stream", &[]);
    anyhow::ensure!(client.status == 200, "stream: {}", client.head);
    let stop = Arc::new(AtomicBool::new(false));
    let ingested = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for c in 0..2 {
        let (stop, ingested) = (stop.clone(), ingested.clone());
        loaders.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let url = format!("http://{addr}/api/v1/results:batch");
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let s = (c * 50 + round % 50) % SLAVES;
                let results: Vec<_> = (0..100).map(|t| wire_result(s, t)).collect();
                let body = json!({"Creds": {"Name": format!("slave{s}"), "Password": format!("pw{s}")}, "Results": results});
                if let Ok(r) = agent.post(&url).header("Content-Type", "application/json").send(body.to_string())
                    && r.status() == 200
                {
                    ingested.fetch_add(100, Ordering::Relaxed);
                }
                round += 1;
            }
        }));
    }
    // Probes: one result every 100 ms from slave99 → target99; each one's delay is from just
    // before its POST to its arrival on the stream.
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let probe_stop = stop.clone();
    let prober = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("http://{addr}/api/v1/results");
        while !probe_stop.load(Ordering::Relaxed) {
            let r = wire_result(SLAVES - 1, TARGETS - 1);
            let id = r["ID"].as_str().unwrap_or_default().to_owned();
            let _ = tx.send((id, Instant::now()));
            let _ = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(r.to_string());
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let began = Instant::now();
    let mut sent: std::collections::HashMap<String, Instant> = Default::default();
    let mut delays = Vec::new();
    let mut events = 0u64;
    let mut ended = false;
    let ingest_start = ingested.load(Ordering::Relaxed);
    while began.elapsed() < Duration::from_secs(stream_secs) {
        let Some(e) = client.next(Duration::from_secs(5)) else {
            ended = client.ended();
            break;
        };
        let got = Instant::now();
        while let Ok((id, at)) = rx.try_recv() {
            sent.insert(id, at);
        }
        events += 1;
        if e.event == "result"
            && e.data.contains("\"slave\":\"slave99\"")
            && e.data.contains(&target_id(TARGETS - 1))
        {
            let id = e.json()["id"].as_str().unwrap_or_default().to_owned();
            if let Some(at) = sent.remove(&id) {
                delays.push(got - at);
            }
        }
    }
    let secs = began.elapsed().as_secs_f64();
    let rate = (ingested.load(Ordering::Relaxed) - ingest_start) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    let _ = prober.join();
    anyhow::ensure!(
        !delays.is_empty(),
        "no probe result came back on the stream (ended: {ended})"
    );
    let max = *delays.iter().max().unwrap_or(&Duration::ZERO);
    println!(
        "stream at {rate:.0} results/s ingest ({events} messages read in {secs:.0} s{}): probe delay p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probes)",
        if ended { ", cut off" } else { "" },
        ms(percentile(&mut delays, 0.5)),
        ms(percentile(&mut delays, 0.99)),
        ms(max),
        delays.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
