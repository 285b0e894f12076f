//! Benchmark: the master's path-statistics and path-history queries over a database holding a
//! million results. Prints insert throughput and p50/p99 query latencies.
//!
//! `cargo run --release --example query_bench -- [RESULTS]` (default 1,000,000).

use dist_traceroute::master::config::{Config, Live, parse_slaves, parse_targets};
use dist_traceroute::master::path::{Path, Terminal};
use dist_traceroute::master::routes::{App, Request, handle};
use dist_traceroute::master::store::{self, NewHop, NewResult};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SLAVES: usize = 20;
const TARGETS: usize = 50;
const HOPS: i64 = 6;

fn result(i: usize, slave: usize, target: usize, at: i64) -> NewResult {
    // Two routes per series, switching every 200 results; hop 4 silent now and then.
    let variant = (i / (SLAVES * TARGETS) / 200) % 2;
    let hops: Vec<NewHop> = (1..=HOPS)
        .filter(|ttl| !(*ttl == 4 && i.is_multiple_of(7)))
        .map(|ttl| NewHop {
            ttl,
            address: format!(
                "10.{}.{}.{}",
                target,
                ttl,
                if ttl == 3 { variant + 1 } else { slave + 1 }
            ),
            host: String::new(),
            rtt_ns: 1_000_000 * ttl + (i as i64 % 997) * 1000,
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
            replies: Some(vec![
                Some(1_000_000 * ttl + (i as i64 % 997) * 1000),
                Some(1_100_000 * ttl),
            ]),
            reply_ttl: None,
        })
        .collect();
    let path = Path::from_hops(
        hops.iter().map(|h| (h.ttl, h.address.parse().unwrap())),
        Terminal::Reached,
    );
    NewResult {
        result_id: format!("00000000-0000-4000-8000-{i:012}"),
        slave: format!("slave{slave}"),
        target_uuid: format!("00000000-0000-4000-9000-{target:012}"),
        target_name: format!("target{target}"),
        target_address: format!("10.{target}.{HOPS}.1"),
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

fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("dt-query-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("bench.db");
    let store = store::open(&db, None, 2)?;
    let start_ms =
        chrono::Utc::now().timestamp_millis() - (total / (SLAVES * TARGETS)) as i64 * 60_000;
    let t0 = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..total {
        let series = i % (SLAVES * TARGETS);
        let round = (i / (SLAVES * TARGETS)) as i64;
        batch.push(result(
            i,
            series % SLAVES,
            series / SLAVES,
            start_ms + round * 60_000,
        ));
        if batch.len() == 1000 {
            store.insert_batch(&batch)?;
            batch.clear();
        }
    }
    store.insert_batch(&batch)?;
    let took = t0.elapsed();
    println!(
        "stored {total} results ({} series, {HOPS} hops each) in {:.1} s: {:.0} results/s; database {:.0} MiB",
        SLAVES * TARGETS,
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        std::fs::metadata(&db)?.len() as f64 / (1 << 20) as f64
    );

    let slaves = parse_slaves(
        std::path::Path::new("s"),
        br#"{"Slaves":[{"Name":"slave0","Password":"x"}]}"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let targets = parse_targets(
        std::path::Path::new("t"),
        br#"{"Targets":{},"Retries":1,"MaxHops":30,"TimeoutMs":500}"#,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = App::new(
        "bench:8990".into(),
        Live::new(Config {
            slaves,
            targets,
            targets_raw: Arc::from(&b"{}"[..]),
            verified: Arc::default(),
            selections: Arc::default(),
            derived: Arc::default(),
        }),
        store,
    );
    let mut rng = fastrand::Rng::with_seed(7);
    for (name, query) in [
        (
            "current path + per-hop stats, 1 h window",
            "/api/v1/paths/current?window=1h",
        ),
        (
            "current path + per-hop stats, 24 h window",
            "/api/v1/paths/current?window=24h",
        ),
        ("path history (all time)", "/api/v1/paths/history"),
    ] {
        let mut times = Vec::new();
        for _ in 0..200 {
            let (s, t) = (rng.usize(0..SLAVES), rng.usize(0..TARGETS));
            let (path, q) = query.split_once('?').unwrap_or((query, ""));
            let q = format!(
                "{q}{}slave=slave{s}&target=target{t}",
                if q.is_empty() { "" } else { "&" }
            );
            let req = Request {
                method: "GET".into(),
                path: path.into(),
                query: q,
                remote: "127.0.0.1:1".parse()?,
                ..Request::default()
            };
            let t = Instant::now();
            let r = handle(&app, &req);
            times.push(t.elapsed());
            anyhow::ensure!(
                r.status == 200,
                "{} {}",
                r.status,
                String::from_utf8_lossy(r.body.as_bytes().unwrap_or_default())
            );
        }
        println!(
            "{name}: p50 {:.2} ms, p99 {:.2} ms (200 queries, one random series each)",
            percentile(&mut times, 0.5).as_secs_f64() * 1e3,
            percentile(&mut times, 0.99).as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
