//! Benchmark: how fast a slave drains a backlog into our master.
//!
//! Fills a fresh spool with fake results (100,000 by default), starts a master in this
//! process on a free loopback port, runs the slave's delivery until the spool is empty and
//! prints results per second. Then does the same for a smaller backlog one result per request,
//! as against an original master, and times 1000 spool writes as a slave makes them (fsync).
//!
//! ```sh
//! cargo run --release --example drain_bench            # 100000 results
//! cargo run --release --example drain_bench -- 20000   # another size
//! ```

use dist_traceroute::master::{Master, Settings, server::Limits};
use dist_traceroute::proto::{Creds, TargetRef};
use dist_traceroute::slave::client::Client;
use dist_traceroute::slave::deliver::{Deliverer, Round, Stats};
use dist_traceroute::slave::spool::{Caps, Spool};
use dist_traceroute::slave::{fake, options_for, report};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const TARGETS: &str = r#"{"ReportURL": "", "Targets": {
  "76d96640-d357-47b3-ba50-5248a7604bc9": {"Name": "Google", "Address": "www.google.at"},
  "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee": {"Name": "LKML", "Address": "lkml.org"},
  "00000000-0000-4000-8000-000000000001": {"Name": "Doc", "Address": "192.0.2.1"}},
  "Retries": 1, "MaxHops": 30, "TimeoutMs": 500}"#;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("dt-drain-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("dt-slaves.json"),
        r#"{"Slaves": [{"Name": "slave1", "Password": "1234"}]}"#,
    )?;
    std::fs::write(dir.join("dt-targets.json"), TARGETS)?;
    let master = Master::start(&Settings {
        slaves_file: dir.join("dt-slaves.json"),
        managed_file: dir.join("dt-slaves.managed.json"),
        targets_file: dir.join("dt-targets.json"),
        users_file: dir.join("dt-users.json"),
        public_read: false,
        db: dir.join("dt-results.db"),
        db_passwd_file: None,
        listen: "127.0.0.1:0".parse()?,
        reload_interval: Duration::from_secs(60),
        limits: Limits::default(),
        tls: None,
        confirm: 2,
        alert_webhook: None,
        alert_debug_results: false,
        alert_kinds: None,
        measure: Default::default(),
        retention: None,
        retention_paths: None,
        asn_db: None,
    })?;
    let addr = master.local_addr()?;
    std::thread::spawn(move || master.serve());
    let creds = Creds {
        name: "slave1".into(),
        password: "1234".into(),
    };
    let client = Client::new(
        format!("http://{addr}"),
        creds.clone(),
        None,
        Duration::from_secs(30),
    );

    let synced = spool_writes(&dir.join("spool-synced"), 1000, &creds)?;
    let batch = drain(&dir.join("spool-batch"), n, &creds, &client, false)?;
    let legacy_n = (n / 10).max(1);
    let legacy = drain(&dir.join("spool-legacy"), legacy_n, &creds, &client, true)?;
    println!(
        "batches:     {n} results in {:.2} s = {:.0} results/s ({} requests)",
        batch.0.as_secs_f64(),
        n as f64 / batch.0.as_secs_f64(),
        batch.1
    );
    println!(
        "one by one:  {legacy_n} results in {:.2} s = {:.0} results/s ({} requests)",
        legacy.0.as_secs_f64(),
        legacy_n as f64 / legacy.0.as_secs_f64(),
        legacy.1
    );
    println!(
        "spool writes: 1000 results with fsync in {:.2} s = {:.0} results/s",
        synced.as_secs_f64(),
        1000.0 / synced.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The cost of spooling as a slave does it (file and folder fsynced per result).
fn spool_writes(spool_dir: &std::path::Path, n: usize, creds: &Creds) -> anyhow::Result<Duration> {
    let caps = Caps {
        max_results: u64::MAX,
        max_bytes: u64::MAX,
    };
    let spool = Spool::open(spool_dir, caps)?;
    let doc: dist_traceroute::proto::TargetsDoc = serde_json::from_str(TARGETS)?;
    let (id, spec) = doc.targets.iter().next().expect("a target");
    let target = TargetRef {
        name: spec.name.clone(),
        address: spec.address.clone(),
    };
    let results: Vec<_> = (0..n)
        .map(|_| {
            let trace = fake::trace(&spec.address, &options_for(&doc, spec));
            report::from_trace(&trace, creds, id, &target)
        })
        .collect();
    let start = Instant::now();
    for r in &results {
        spool.put(r)?;
    }
    Ok(start.elapsed())
}

/// Fills a spool with `n` fake results, then delivers them all: (time, requests).
fn drain(
    spool_dir: &std::path::Path,
    n: usize,
    creds: &Creds,
    client: &Client,
    one_by_one: bool,
) -> anyhow::Result<(Duration, u64)> {
    let caps = Caps {
        max_results: u64::MAX,
        max_bytes: u64::MAX,
    };
    let spool = Spool::open(spool_dir, caps)?;
    let doc: dist_traceroute::proto::TargetsDoc = serde_json::from_str(TARGETS)?;
    let specs: Vec<_> = doc.targets.iter().collect();
    let filled = Instant::now();
    for i in 0..n {
        let (id, spec) = specs[i % specs.len()];
        let target = TargetRef {
            name: spec.name.clone(),
            address: spec.address.clone(),
        };
        let trace = fake::trace(&spec.address, &options_for(&doc, spec));
        spool.put_unsynced(&report::from_trace(&trace, creds, id, &target))?;
    }
    let bytes: u64 = spool
        .oldest(usize::MAX, u64::MAX)
        .iter()
        .map(|e| e.size)
        .sum();
    eprintln!(
        "{}: filled with {n} results ({:.1} MiB) in {:.2} s",
        spool_dir.display(),
        bytes as f64 / f64::from(1 << 20),
        filled.elapsed().as_secs_f64()
    );
    // Reopen, as a restarted slave would: listing the backlog is part of draining it.
    drop(spool);
    let start = Instant::now();
    let spool = Spool::open(spool_dir, caps)?;
    let stats = Stats::default();
    let mut d = Deliverer::new(client, &spool, &stats, Duration::from_secs(1));
    if one_by_one {
        d.one_result_per_request();
    }
    loop {
        match d.round() {
            Round::Idle => break,
            Round::Progress => {}
            Round::Failed => anyhow::bail!("the master did not take a batch"),
        }
    }
    let took = start.elapsed();
    let delivered = stats.delivered.load(Ordering::Relaxed);
    anyhow::ensure!(delivered == n as u64, "delivered {delivered} of {n}");
    Ok((took, stats.requests.load(Ordering::Relaxed)))
}
