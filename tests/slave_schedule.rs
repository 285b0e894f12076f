//! Scheduling, seen from the spool of a slave whose master is away (it measures from its
//! saved config): a target's own `Interval` is honoured, and `-max-pps` caps the trace rate.

mod util;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use util::*;

/// A scratch folder whose slave spool already holds a saved config.
fn with_saved_config(name: &str, targets: &str) -> Scratch {
    let dir = Scratch::new(name);
    std::fs::create_dir_all(dir.path("dt-slave.spool")).unwrap();
    dir.write("dt-slave.spool/config.json", targets);
    dir
}

/// Results spooled per target name.
fn per_target(log: &std::path::Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in text.lines() {
        if let Some(i) = line.find("spooled ")
            && let Some((_, name)) = line[i..].split_once(" for ")
        {
            *counts.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn a_target_interval_overrides_the_slave_interval() {
    let dir = with_saved_config(
        "interval",
        r#"{"Targets": {
            "00000000-0000-4000-8000-000000000001": {"Name": "Fast", "Address": "192.0.2.1"},
            "00000000-0000-4000-8000-000000000002": {"Name": "Slow", "Address": "192.0.2.2", "Interval": "2s"}
        }, "Retries": 1, "MaxHops": 30, "TimeoutMs": 500}"#,
    );
    let log = dir.path("dt-slave.log");
    let mut slave = slave(&dir.0, free_addr(), &["-interval=250ms"]);
    let counts = wait_for(Duration::from_secs(30), || {
        let c = per_target(&log);
        (c.get("Fast").copied().unwrap_or(0) >= 16).then_some(c)
    })
    .expect("the fast target is traced every 250ms");
    let (fast, slow) = (counts["Fast"], counts.get("Slow").copied().unwrap_or(0));
    // Eight times the rate; whatever the machine's speed, far fewer slow ones.
    assert!(
        slow >= 1 && slow * 3 <= fast + 3,
        "fast {fast}, slow {slow}"
    );
    assert_eq!(terminate(&mut slave, Duration::from_secs(20)), Some(0));
}

#[test]
fn max_pps_caps_the_trace_rate() {
    let dir = with_saved_config("pps", &targets_with(4));
    let log = dir.path("dt-slave.log");
    let started = Instant::now();
    // MaxHops 30 counts as 30 probes: at 30 probes/s, one trace a second although four
    // targets every 250ms ask for sixteen.
    let mut slave = slave(&dir.0, free_addr(), &["-interval=250ms", "-max-pps=30"]);
    wait_for(Duration::from_secs(30), || {
        (spooled_ids(&log).len() >= 3).then_some(())
    })
    .expect("traces run");
    assert_eq!(terminate(&mut slave, Duration::from_secs(20)), Some(0));
    let traced = spooled_ids(&log).len() as f64;
    let limit = started.elapsed().as_secs_f64() + 2.0;
    assert!(traced <= limit, "{traced} traces, at most {limit} allowed");
}
