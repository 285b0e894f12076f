//! Two master processes on one PostgreSQL database, through their HTTP APIs: a scripted
//! series posted alternately to both, and the same results posted to both at once, give
//! exactly the events one master gives for it (checked against a master on SQLite), one
//! alert per event; both answer the same; one killed with `kill -9` under load loses no
//! acknowledged result and the other keeps serving.

mod util;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;
use util::*;

const GOOGLE: &str = "76d96640-d357-47b3-ba50-5248a7604bc9";

/// A result of `slave` for Google on `flow` along `route` (the last address answered),
/// measured `ago_ms` ago, with result ID `id`.
fn result(slave: &str, flow: i64, route: &[&str], ago_ms: i64, id: &str) -> Value {
    let password = if slave == "slave1" { "1234" } else { "123" };
    let hops: Vec<Value> = route
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let ip: Ipv4Addr = a.parse().unwrap();
            let reached = i + 1 == route.len();
            let rtt = 1_000_000 * (i as i64 + 1);
            json!({
                "Success": true, "Address": ip.octets(), "Host": "", "N": 56,
                "ElapsedTime": rtt, "TTL": i + 1, "IP": a, "Replies": [rtt],
                "Kind": if reached { "reached" } else { "time-exceeded" },
            })
        })
        .collect();
    let at = Utc::now() - chrono::Duration::milliseconds(ago_ms);
    json!({
        "Creds": {"Name": slave, "Password": password},
        "ID": id,
        "DateTime": at.to_rfc3339_opts(SecondsFormat::Micros, false),
        "Target": {"Name": "Google", "Address": "www.google.at"},
        "TargetID": GOOGLE,
        "Success": true, "HopCount": route.len(), "Hops": hops,
        "Protocol": "udp", "Flow": flow, "Queries": 1,
    })
}

/// The scripted series: which route each result takes (A, B or C), oldest first. With
/// `-path-confirm 2` it changes path three times and has candidates that do not stick.
const SCRIPT: &[char] = &[
    'A', 'A', 'A', 'B', 'A', 'B', 'B', 'B', 'C', 'A', 'C', 'C', 'C', 'A', 'A', 'A',
];

fn route(c: char) -> Vec<&'static str> {
    match c {
        'A' => vec!["10.1.0.1", "10.1.0.2", "192.0.2.1"],
        'B' => vec!["10.1.0.1", "10.2.0.2", "192.0.2.1"],
        _ => vec!["10.3.0.1", "10.3.0.2", "10.3.0.3", "192.0.2.1"],
    }
}

/// The script's results for `slave` on `flow`: one second apart, ending a minute ago.
fn script(slave: &str, flow: i64) -> Vec<Value> {
    let n = SCRIPT.len() as i64;
    SCRIPT
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ago = 60_000 + (n - i as i64) * 1_000;
            result(
                slave,
                flow,
                &route(*c),
                ago,
                &uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect()
}

fn store(addr: SocketAddr, r: &Value) {
    let a = post(addr, "/api/v1/results", r.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["stored"], true, "{}", a.text());
}

fn get_json(addr: SocketAddr, query: &str) -> Value {
    let a = get(addr, query);
    assert_eq!(a.status, 200, "{query}: {}", a.text());
    a.json()
}

/// The events of `slave` as (kind, at, flow, from, to), oldest first: what must be the same
/// whichever masters stored the results.
fn events(addr: SocketAddr, slave: &str) -> Vec<(String, String, i64, Value, Value)> {
    let all = get_json(addr, &format!("/api/v1/events?slave={slave}&limit=1000"));
    let mut out: Vec<_> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["at"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no at: {e}"))
                    .to_owned(),
                e["flow"].as_i64().unwrap(),
                e["from_path"].clone(),
                e["to_path"].clone(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// A master on `db` (PostgreSQL URL, password in a file) in a config folder of its own.
fn master(name: &str, url: &str, extra: &[&str]) -> (Scratch, Proc) {
    let dir = Scratch::with_seed_config(name);
    dir.write("db-password", &util::pg::server().password);
    let mut args = vec!["-db", url, "-db-passwd-file", "db-password"];
    args.extend_from_slice(extra);
    let p = Proc::master(&dir.0, &args);
    (dir, p)
}

#[test]
fn two_masters_on_one_database_give_the_events_of_one() {
    let pg = util::pg::server();
    let db = pg.create_db("two_masters");
    let url = format!("postgres://{}@127.0.0.1:{}/{db}", util::pg::USER, pg.port);
    let (hook, alerts) = webhook_sink();
    let common = ["-path-confirm", "2", "-alert-webhook", hook.as_str()];
    let (_a_dir, a) = master("mm-a", &url, &common);
    let (_b_dir, b) = master("mm-b", &url, &common);
    // The reference: one master on SQLite, given every result once, in order.
    let one_dir = Scratch::with_seed_config("mm-one");
    let one = Proc::master(&one_dir.0, &["-path-confirm", "2"]);

    // slave1: the script, each result to the other master than the one before.
    let alternate = script("slave1", 0);
    for (i, r) in alternate.iter().enumerate() {
        store(if i % 2 == 0 { a.addr() } else { b.addr() }, r);
        store(one.addr(), r);
    }
    // slave2: every result to both masters at the same moment.
    let both = script("slave2", 0);
    for r in &both {
        let barrier = Arc::new(Barrier::new(2));
        let posts: Vec<_> = [a.addr(), b.addr()]
            .into_iter()
            .map(|addr| {
                let (barrier, r) = (barrier.clone(), r.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    post(addr, "/api/v1/results", r.to_string().as_bytes())
                })
            })
            .collect();
        let answers: Vec<Value> = posts
            .into_iter()
            .map(|p| {
                let a = p.join().unwrap();
                assert_eq!(a.status, 200, "{}", a.text());
                a.json()
            })
            .collect();
        // Both acknowledge it (the slave may delete it); one stored it, the other found
        // it a duplicate.
        assert!(answers.iter().all(|a| a["stored"] == true), "{answers:?}");
        let new = answers.iter().filter(|a| a["duplicate"] == false).count();
        assert_eq!(new, 1, "one result stored {new} times: {answers:?}");
        store(one.addr(), r);
    }
    // Many series at once on both masters (flows 1-8 of slave1), in parallel: no request
    // fails, whatever order the masters take their locks in.
    let posters: Vec<_> = (1..=8)
        .map(|flow| {
            let (a, b) = (a.addr(), b.addr());
            std::thread::spawn(move || {
                for (i, r) in script("slave1", flow).iter().enumerate() {
                    store(
                        if (i + flow as usize).is_multiple_of(2) {
                            a
                        } else {
                            b
                        },
                        r,
                    );
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }

    for slave in ["slave1", "slave2"] {
        let reference: Vec<_> = events(one.addr(), slave)
            .into_iter()
            .filter(|e| e.2 == 0)
            .collect();
        let changes = reference.iter().filter(|e| e.0 == "path-change").count();
        assert_eq!(changes, 3, "the script has three changes: {reference:#?}");
        for m in [&a, &b] {
            let got: Vec<_> = events(m.addr(), slave)
                .into_iter()
                .filter(|e| e.2 == 0)
                .collect();
            assert_eq!(got, reference, "{slave} on {}", m.addr());
        }
    }
    // Flows 1-8 each changed path three times too, and only three times.
    let flows = events(a.addr(), "slave1");
    for flow in 1..=8 {
        let n = flows
            .iter()
            .filter(|e| e.2 == flow && e.0 == "path-change")
            .count();
        assert_eq!(n, 3, "flow {flow}");
    }
    // Both masters answer the same.
    for query in [
        "/api/v1/results?limit=1000",
        "/api/v1/events?limit=1000",
        "/api/v1/paths/current",
    ] {
        assert_eq!(
            get_json(a.addr(), query),
            get_json(b.addr(), query),
            "{query}"
        );
    }
    // The metrics drawn from the store read the same from both, and count every change.
    let store_metrics = |addr| -> Vec<String> {
        get(addr, "/metrics")
            .text()
            .lines()
            .filter(|l| {
                [
                    "dt_path_changes",
                    "dt_path_hops",
                    "dt_target_reachable",
                    "dt_path_info",
                ]
                .iter()
                .any(|m| l.starts_with(m))
            })
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect()
    };
    let (ma, mb) = (store_metrics(a.addr()), store_metrics(b.addr()));
    assert_eq!(ma, mb);
    let changes: f64 = ma
        .iter()
        .filter(|l| l.starts_with("dt_path_changes_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(changes, 30.0, "{ma:#?}");
    let targets = |addr| get_json(addr, "/api/v1/targets");
    assert_eq!(targets(a.addr())["targets"], targets(b.addr())["targets"]);
    assert_eq!(targets(a.addr())["config_differs"], false);
    let count = |addr| {
        let mut n = 0;
        let mut cursor = String::new();
        loop {
            let page = get_json(addr, &format!("/api/v1/results?limit=1000{cursor}"));
            n += page["results"].as_array().unwrap().len();
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break n,
            }
        }
    };
    assert_eq!(count(a.addr()), SCRIPT.len() * 10);
    // The slaves as both masters see them: every result counted once.
    let slaves = get_json(b.addr(), "/api/v1/slaves");
    let s2 = slaves["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "slave2")
        .unwrap_or_else(|| panic!("{slaves}"));
    assert_eq!(s2["results_stored"], SCRIPT.len(), "{s2}");
    // One alert per event, whichever master stored it.
    let all_events = get_json(a.addr(), "/api/v1/events?limit=1000");
    let n_events = all_events["events"].as_array().unwrap().len();
    let delivered = wait_for(Duration::from_secs(20), || {
        let n = alerts.lock().unwrap().len();
        (n >= n_events).then_some(n)
    });
    std::thread::sleep(Duration::from_millis(500));
    let n_alerts = alerts.lock().unwrap().len();
    assert_eq!(delivered, Some(n_events));
    assert_eq!(n_alerts, n_events, "alerts: {n_alerts}, events: {n_events}");
}

#[test]
fn a_master_killed_under_load_loses_nothing_and_the_other_serves_on() {
    let pg = util::pg::server();
    let db = pg.create_db("kill_one");
    let url = format!("postgres://{}@127.0.0.1:{}/{db}", util::pg::USER, pg.port);
    let (_a_dir, mut a) = master("kill-a", &url, &[]);
    let (_b_dir, b) = master("kill-b", &url, &[]);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posters: Vec<_> = (0..8)
        .map(|n| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let targets = [a.addr(), b.addr()];
            std::thread::spawn(move || {
                let slave = if n % 2 == 0 { "slave1" } else { "slave2" };
                let mut i = 0usize;
                let mut a_alive = true;
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(10)))
                        .build(),
                );
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let to = if a_alive && i.is_multiple_of(2) {
                        targets[0]
                    } else {
                        targets[1]
                    };
                    let id = uuid::Uuid::new_v4().to_string();
                    let r = result(slave, n, &route('A'), 0, &id);
                    let sent = agent
                        .post(format!("http://{to}/api/v1/results"))
                        .header("Content-Type", "application/json")
                        .send(r.to_string());
                    let Ok(mut answer) = sent else {
                        // The killed master: go on with the other.
                        a_alive = false;
                        continue;
                    };
                    let answer = Answer {
                        status: answer.status().as_u16(),
                        head: String::new(),
                        body: answer.body_mut().read_to_vec().unwrap_or_default(),
                    };
                    let stored = serde_json::from_slice::<Value>(&answer.body)
                        .is_ok_and(|v| v["stored"] == true);
                    if answer.status == 200 && stored {
                        acked.lock().unwrap().push(id);
                    } else if to == targets[0] {
                        a_alive = false;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    a.kill();
    let at_kill = acked.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in posters {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        at_kill > 50,
        "only {at_kill} results acknowledged before the kill"
    );
    assert!(
        acked.len() > at_kill + 50,
        "the other master stored only {} after the kill",
        acked.len() - at_kill
    );
    // Every acknowledged result is there exactly once, read through the survivor.
    let mut listed = std::collections::HashMap::new();
    let mut cursor = String::new();
    loop {
        let page = get_json(b.addr(), &format!("/api/v1/results?limit=1000{cursor}"));
        for r in page["results"].as_array().unwrap() {
            *listed
                .entry(r["id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    for id in &acked {
        assert_eq!(listed.get(id), Some(&1), "acknowledged result {id}");
    }
    // And psql, PostgreSQL's own client, counts the same rows.
    let rows: usize = pg
        .psql(&db, "SELECT count(*) FROM results")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rows, listed.len());
}

#[test]
fn masters_whose_config_files_differ_say_so() {
    let pg = util::pg::server();
    let db = pg.create_db("configs");
    let url = format!("postgres://{}@127.0.0.1:{}/{db}", util::pg::USER, pg.port);
    let quick = ["-reload-interval", "100ms"];
    let (_a_dir, a) = master("cfg-a", &url, &quick);
    let (b_dir, b) = master("cfg-b", &url, &quick);
    // B serves another targets file.
    let seed = std::fs::read_to_string(b_dir.path("dt-targets.json")).unwrap();
    b_dir.write("dt-targets.json", &targets_with(3));
    let differ = |addr, want: bool| {
        wait_for(Duration::from_secs(10), || {
            let t = get_json(addr, "/api/v1/targets");
            (t["config_differs"] == want).then_some(t)
        })
        .unwrap_or_else(|| panic!("config_differs never became {want} on {addr}"))
    };
    for m in [&a, &b] {
        let t = differ(m.addr(), true);
        let masters = t["masters"].as_array().unwrap();
        assert_eq!(masters.len(), 2, "{t}");
        let this: Vec<&Value> = masters.iter().filter(|m| m["this"] == true).collect();
        assert_eq!(this.len(), 1, "{t}");
        assert_eq!(this[0]["same_config"], true, "{t}");
        let other = masters.iter().find(|m| m["this"] == false).unwrap();
        assert_eq!(other["same_config"], false, "{t}");
        assert_ne!(other["config"]["targets"], this[0]["config"]["targets"]);
        assert_eq!(other["config"]["slaves"], this[0]["config"]["slaves"]);
    }
    // Put B's file back: both agree again.
    b_dir.write("dt-targets.json", &seed);
    for m in [&a, &b] {
        differ(m.addr(), false);
    }
}
