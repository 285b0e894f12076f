//! `dist-traceroute demo`: one command starts a master and a local slave whose results land.

mod util;
use std::io::BufRead;
use std::time::Duration;
use util::*;

#[test]
fn demo_starts_a_master_and_a_slave_that_reports() {
    let dir = Scratch::new("demo");
    let mut p = Proc::spawn(
        &dir.0,
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--zDebugResults",
            "--interval",
            "1s",
            "--dir",
            "demo",
        ],
    );
    let mut out = std::io::BufReader::new(p.child.stdout.take().unwrap());
    let mut addr = None;
    for _ in 0..10 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(rest) = line.strip_prefix("master:  http://") {
            addr = rest
                .split('/')
                .next()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
            break;
        }
    }
    let addr = addr.expect("the demo prints where its master is");
    let got = wait_for(Duration::from_secs(20), || {
        let r = results(addr, "slave=slave1");
        (r.len() >= 4).then_some(r)
    })
    .expect("the demo slave's results are stored");
    let names: std::collections::HashSet<_> = got
        .iter()
        .map(|r| r["target_name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 2, "{names:?}");
    for file in [
        "dt-slaves.json",
        "dt-targets.json",
        "dt-results.db",
        "dt-demo.log",
    ] {
        assert!(dir.path("demo").join(file).exists(), "{file}");
    }
    assert!(p.alive());
}
