//! `dist-traceroute demo`: one command starts a master and a local slave whose results land,
//! and prints a login that reads them.

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
    let mut login = None;
    for _ in 0..10 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(rest) = line.strip_prefix("master:  http://") {
            addr = rest
                .split('/')
                .next()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        }
        // results: curl -u demo:PASSWORD 'http://…'
        if let Some(rest) = line.strip_prefix("results: curl -u ") {
            login = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let addr = addr.expect("the demo prints where its master is");
    let login = login.expect("the demo prints a curl line with a login");
    let (name, password) = login.split_once(':').expect("NAME:PASSWORD");
    assert_eq!(name, "demo");
    assert!(password.len() >= 16, "{password}");
    let auth = basic(name, password);
    let got = wait_for(Duration::from_secs(20), || {
        let r = results_as(addr, "slave=slave1", &auth);
        (r.len() >= 4).then_some(r)
    })
    .expect("the demo slave's results are stored and read with the printed login");
    // With its users file, the demo's master wants the login even on loopback.
    let refused = get(addr, "/api/v1/results");
    assert_eq!(refused.status, 401, "{}", refused.text());
    let wrong = get_as(addr, "/api/v1/results", &basic("demo", "wrong"));
    assert_eq!(wrong.status, 401);
    let names: std::collections::HashSet<_> = got
        .iter()
        .map(|r| r["target_name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 2, "{names:?}");
    for file in [
        "dt-slaves.json",
        "dt-targets.json",
        "dt-users.json",
        "dt-results.db",
        "dt-demo.log",
    ] {
        assert!(dir.path("demo").join(file).exists(), "{file}");
    }
    let log = std::fs::read_to_string(dir.path("demo").join("dt-demo.log")).unwrap();
    assert!(!log.contains(password), "the demo log shows the password");
    assert!(p.alive());
}
