//! The master's SQLite store through the real binary: no acknowledged result lost to
//! `kill -9`, a future-dated result neither freezes its series nor hides a slave's clock skew,
//! one master per database, a schema-3 database upgraded in place, and every stored field
//! returned exactly as the slave sent it.

mod util;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::*;

const GOOGLE: &str = "76d96640-d357-47b3-ba50-5248a7604bc9";
const LKML: &str = "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee";

fn creds(slave: &str) -> Value {
    let password = if slave == "slave1" { "1234" } else { "123" };
    json!({"Name": slave, "Password": password})
}

/// A time as our slave writes it.
fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Our slave's result for Google on flow 0 along `route` (IPv4, `*` for a silent hop; the
/// last address is the destination, which answered).
fn ours(slave: &str, date_time: &str, route: &[&str]) -> Value {
    let hops: Vec<Value> = route
        .iter()
        .enumerate()
        .filter(|(_, a)| **a != "*")
        .map(|(i, a)| {
            let ip: Ipv4Addr = a.parse().unwrap();
            let reached = i + 1 == route.len();
            let rtt = 1_000_000 * (i as i64 + 1);
            json!({
                "Success": true, "Address": ip.octets(), "Host": "", "N": if reached { 84 } else { 56 },
                "ElapsedTime": rtt, "TTL": i + 1, "IP": a, "Replies": [rtt, rtt + 1000],
                "Kind": if reached { "reached" } else { "time-exceeded" },
            })
        })
        .collect();
    json!({
        "Creds": creds(slave),
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": date_time,
        "Target": {"Name": "Google", "Address": "www.google.at"},
        "TargetID": GOOGLE,
        "Success": true, "HopCount": route.len(), "Hops": hops,
        "Protocol": "udp", "Flow": 0, "Queries": 2,
    })
}

/// The canonical path text of a route that reached its destination.
fn reached(route: &[&str]) -> String {
    format!("{} | reached", route.join(" "))
}

/// Posts one result to `/api/v1/results` and checks it was stored.
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

/// Every result ID of `slave`, following `next_cursor` page by page.
fn all_result_ids(addr: SocketAddr, slave: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get_json(
            addr,
            &format!("/api/v1/results?slave={slave}&limit=1000{cursor}"),
        );
        ids.extend(
            page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => {
                let c: String = form_urlencoded::byte_serialize(c.as_bytes()).collect();
                cursor = format!("&cursor={c}");
            }
            None => break,
        }
    }
    ids
}

/// Where two JSON values first differ, as a path like `q.results[3].hops[0].rtt_ns`; a key
/// that is missing on one side differs from `null`.
fn difference(want: &Value, got: &Value, at: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            w.keys()
                .chain(g.keys())
                .find_map(|k| match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) => difference(a, b, &format!("{at}.{k}")),
                    (a, b) => Some(format!("{at}.{k}: want {a:?}, got {b:?}")),
                })
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (a, b))| difference(a, b, &format!("{at}[{i}]"))),
        (Value::Array(w), Value::Array(g)) => {
            Some(format!("{at}: want {} entries, got {}", w.len(), g.len()))
        }
        _ => (want != got).then(|| format!("{at}: want {want}, got {got}")),
    }
}

fn assert_same(want: &Value, got: &Value, what: &str) {
    if let Some(d) = difference(want, got, what) {
        panic!("{d}");
    }
}

#[test]
fn kill_9_during_full_rate_ingest_loses_no_acknowledged_result() {
    let dir = Scratch::with_seed_config("kill9");
    let mut master = Proc::master(&dir.0, &[]);
    let url = format!("http://{}/results/", master.addr());
    let route: Vec<String> = (1..=15).map(|i| format!("10.7.0.{i}")).collect();
    // (slave, ID) of every result the master answered 200 and Success:true for.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let posters: Vec<_> = (0..16)
        .map(|n| {
            let (url, route, acked) = (url.clone(), route.clone(), acked.clone());
            std::thread::spawn(move || {
                let slave = if n % 2 == 0 { "slave1" } else { "slave2" };
                let route: Vec<&str> = route.iter().map(String::as_str).collect();
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(10)))
                        .build(),
                );
                loop {
                    let r = ours(slave, &text(Utc::now()), &route);
                    let sent = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(r.to_string());
                    let Ok(mut answer) = sent else { break };
                    if answer.status() != 200 {
                        break;
                    }
                    let Ok(body) = answer.body_mut().read_to_string() else {
                        break;
                    };
                    let stored =
                        serde_json::from_str::<Value>(&body).is_ok_and(|v| v["Success"] == true);
                    if !stored {
                        break;
                    }
                    let id = r["ID"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push((slave.to_owned(), id));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    master.kill(); // Child::kill: SIGKILL, while the posters are mid-request.
    for p in posters {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} results acknowledged before the kill",
        acked.len()
    );

    let mut again = Proc::master(&dir.0, &[]);
    let mut times_listed: HashMap<String, usize> = HashMap::new();
    for slave in ["slave1", "slave2"] {
        for id in all_result_ids(again.addr(), slave) {
            *times_listed.entry(id).or_default() += 1;
        }
    }
    for (slave, id) in &acked {
        assert_eq!(
            times_listed.get(id).copied().unwrap_or(0),
            1,
            "acknowledged result {id} of {slave} is not listed exactly once"
        );
    }
    if terminate(&mut again, Duration::from_secs(10)).is_none() {
        again.kill();
    }
    drop(again);
    let db = rusqlite::Connection::open_with_flags(
        dir.path("dt-results.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let verdict: Vec<String> = db
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(verdict, ["ok"]);
}

#[test]
fn a_result_dated_in_the_future_does_not_freeze_its_series() {
    let dir = Scratch::with_seed_config("future");
    let master = Proc::master(&dir.0, &["-path-confirm", "1"]);
    let addr = master.addr();
    let a = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let b = ["10.0.0.1", "10.0.0.9", "10.0.0.3"];
    let now = Utc::now();
    let secs = chrono::Duration::seconds;
    // The series starts on A from an honest clock, so a change to B is a change whatever the
    // master makes of the future result.
    store(addr, &ours("slave1", &text(now - secs(4)), &a));
    let future = ours("slave1", &text(now + chrono::Duration::days(3652)), &a);
    store(addr, &future);
    // The slave's clock is right again: its next traces are dated after the bad one arrived.
    let after = Utc::now();
    for ms in [10, 20, 30] {
        store(
            addr,
            &ours(
                "slave1",
                &text(after + chrono::Duration::milliseconds(ms)),
                &b,
            ),
        );
    }

    let events = get_json(addr, "/api/v1/events?kind=path-change");
    let to_b = events["events"].as_array().unwrap().iter().any(|e| {
        e["slave"] == "slave1"
            && e["target_id"] == GOOGLE
            && e["flow"] == 0
            && e["to_path"] == reached(&b)
    });
    assert!(to_b, "no path-change to B: {events:#}");

    let current = get_json(
        addr,
        "/api/v1/paths/current?slave=slave1&target=Google&flow=0",
    );
    let paths = current["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 1, "{current:#}");
    assert_eq!(paths[0]["path"], reached(&b), "{current:#}");
    let last = paths[0]["last_measured"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no last_measured time: {current:#}"));
    assert!(
        last <= Utc::now() + chrono::Duration::minutes(1),
        "last_measured {last} is in the future"
    );

    let kept = results(addr, "slave=slave1");
    let kept = kept
        .iter()
        .find(|r| r["id"] == future["ID"])
        .expect("the future-dated result is stored");
    let sent = DateTime::parse_from_rfc3339(future["DateTime"].as_str().unwrap()).unwrap();
    assert_eq!(
        kept["measured_at_ms"],
        sent.timestamp_millis(),
        "the slave's time"
    );
}

#[test]
fn clock_skew_is_shown_per_slave() {
    let dir = Scratch::with_seed_config("skew");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let route = ["10.0.0.1", "10.0.0.2"];
    let ahead = Utc::now() + chrono::Duration::hours(1);
    store(addr, &ours("slave1", &text(ahead), &route));
    store(addr, &ours("slave2", &text(Utc::now()), &route));

    let slaves = get_json(addr, "/api/v1/slaves");
    let skew = |name: &str| {
        slaves["slaves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["clock_skew_s"].as_f64())
            .unwrap_or_else(|| panic!("no clock_skew_s for {name}: {slaves:#}"))
    };
    let (fast, honest) = (skew("slave1"), skew("slave2"));
    assert!((fast - 3600.0).abs() <= 120.0, "slave1 skew {fast}");
    assert!(honest.abs() < 60.0, "slave2 skew {honest}");

    let metrics = get(addr, "/metrics").text();
    let sample = metrics
        .lines()
        .find(|l| l.starts_with("dt_slave_clock_skew_seconds{slave=\"slave1\"} "))
        .unwrap_or_else(|| panic!("no clock skew sample for slave1:\n{metrics}"));
    let value: f64 = sample.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((value - 3600.0).abs() <= 120.0, "{sample}");
}

#[test]
fn a_second_master_on_the_same_database_refuses_to_start() {
    let dir = Scratch::with_seed_config("twomasters");
    let mut first = Proc::master(&dir.0, &[]);
    // The same file, spelled another way.
    let db = dir.path("dt-results.db");
    let db = db.to_str().unwrap();
    let (code, out, err) = run_with_timeout(
        &dir.0,
        Path::new(BIN),
        &["master", "-listen", "127.0.0.1:0", "-db", db],
        Duration::from_secs(5),
    );
    let said = format!("stdout:\n{out}\nstderr:\n{err}");
    assert!(
        code.is_some_and(|c| c != 0),
        "the second master must exit non-zero at once, got {code:?}\n{said}"
    );
    assert!(!out.contains("listening on"), "{said}");
    assert!(!err.contains("listening on"), "{said}");
    assert!(err.contains("dt-results.db"), "names the database: {said}");
    assert!(
        err.to_lowercase().contains("another master"),
        "says why: {said}"
    );

    assert!(first.alive(), "the first master keeps running");
    let addr = first.addr();
    assert_eq!(get(addr, "/").status, 200);
    let r = ours("slave1", &text(Utc::now()), &["10.0.0.1"]);
    store(addr, &r);

    first.kill();
    let next = Proc::master(&dir.0, &[]);
    assert_eq!(get(next.addr(), "/").status, 200);
    assert!(
        results(next.addr(), "").iter().any(|s| s["id"] == r["ID"]),
        "the first master's result is still there"
    );
}

/// The targets file the schema-3 fixture was made with (make-v3-fixture.py).
const V3_TARGETS: &str = r#"{"ReportURL": "", "Retries": 1, "MaxHops": 30, "TimeoutMs": 500, "Targets": {
    "76d96640-d357-47b3-ba50-5248a7604bc9": {"Name": "Google", "Address": "www.google.at"},
    "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee": {"Name": "LKML", "Address": "lkml.org", "Protocol": "icmp"},
    "5e1f7d2a-3b9c-4e8d-8a6f-1c2d3e4f5a6b": {"Name": "V6", "Address": "2001:db8::99"}}}"#;

/// The fixture asked `paths/current` over a year back from the day it was made; the per-hop
/// figures depend on that day, so ask over a year back from today and keep what does not.
const CURRENT: &str = "/api/v1/paths/current?window=366d";

fn what_does_not_age(current: &Value) -> Value {
    let keys = [
        "slave",
        "target_id",
        "target_name",
        "flow",
        "path_id",
        "path",
        "terminal",
        "since",
        "changes_total",
    ];
    let entries = current["paths"].as_array().unwrap().iter().map(|p| {
        keys.iter()
            .map(|k| (k.to_string(), p.get(*k).cloned().unwrap_or(Value::Null)))
            .collect::<Map<String, Value>>()
    });
    Value::Array(entries.map(Value::Object).collect())
}

/// The answer to one fixture query, as the fixture's answer is compared with it.
fn ask(addr: SocketAddr, query: &str) -> Value {
    if query.starts_with("/api/v1/paths/current") {
        get_json(addr, CURRENT)
    } else {
        get_json(addr, query)
    }
}

/// Every fixture query answered as the schema-3 release answered it.
/// A result as the v3 fixture recorded it, in the API's form of today: every time as RFC 3339
/// (UTC, ms, `Z`) with its Unix ms in `…_ms` (the slave's own `date_time` text is no longer
/// shown), and the origin fields, unknown for results stored before them.
fn in_todays_form(mut answer: Value) -> Value {
    let iso = |ms: i64| {
        DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    };
    for r in answer["results"].as_array_mut().unwrap() {
        let r = r.as_object_mut().unwrap();
        r.remove("date_time");
        for field in ["measured_at", "received_at", "ordered_at"] {
            if let Some(ms) = r.get(field).and_then(Value::as_i64) {
                r.insert(field.into(), json!(iso(ms)));
                r.insert(format!("{field}_ms"), json!(ms));
            }
        }
        r.insert("src_addr".into(), Value::Null);
        r.insert("from_addr".into(), Value::Null);
        r.insert("debug".into(), json!(false));
    }
    answer
}

fn assert_answers_as_v3(addr: SocketAddr, fixture: &Map<String, Value>) {
    for (query, want) in fixture {
        let got = ask(addr, query);
        if query.starts_with("/api/v1/paths/current") {
            assert_same(&what_does_not_age(want), &what_does_not_age(&got), query);
        } else if query.starts_with("/api/v1/results") {
            let cursor = |v: &Value| v.get("next_cursor").is_some_and(|c| !c.is_null());
            assert_eq!(cursor(want), cursor(&got), "{query}: next_cursor");
            let mut want = in_todays_form(want.clone());
            let mut got = got.clone();
            want.as_object_mut().unwrap().remove("next_cursor");
            got.as_object_mut().unwrap().remove("next_cursor");
            assert_same(&want, &got, query);
        } else {
            assert_same(want, &got, query);
        }
    }
}

#[test]
fn a_database_of_schema_version_3_is_upgraded_in_place() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let fixture: Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(data.join("v3-answers.json")).unwrap())
            .unwrap();
    let dir = Scratch::new("v3");
    dir.write("dt-slaves.json", SLAVES);
    dir.write("dt-targets.json", V3_TARGETS);
    std::fs::copy(data.join("v3.db"), dir.path("dt-results.db")).unwrap();
    let flags = ["-retention", "0"];

    let mut master = Proc::master(&dir.0, &flags);
    let addr = master.addr();
    assert_answers_as_v3(addr, &fixture);

    // The upgraded file takes new results, listed next to the old ones.
    let old: Vec<Value> = fixture["/api/v1/results?limit=1000"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    let new = ours("slave2", &text(Utc::now()), &["10.3.0.1", "10.3.0.2"]);
    store(addr, &new);
    let listed: Vec<Value> = results(addr, "").iter().map(|r| r["id"].clone()).collect();
    assert_eq!(listed.len(), old.len() + 1);
    assert!(listed.contains(&new["ID"]), "the new result is listed");
    assert!(old.iter().all(|id| listed.contains(id)), "old results kept");
    let answers: Vec<(String, Value)> = fixture.keys().map(|q| (q.clone(), ask(addr, q))).collect();

    // A second start finds the file already upgraded and answers the same.
    master.kill();
    let again = Proc::master(&dir.0, &flags);
    for (query, want) in &answers {
        assert_same(want, &ask(again.addr(), query), query);
    }
}

/// `t` written in the zone `zone` (`Z` or `±HH:MM`) with `fraction` after the seconds, as
/// various slaves spell it.
fn spelled(t: DateTime<Utc>, zone: &str, fraction: &str) -> String {
    let offset = match zone {
        "Z" => 0,
        z => {
            let minutes = z[1..3].parse::<i32>().unwrap() * 60 + z[4..6].parse::<i32>().unwrap();
            if z.starts_with('-') {
                -minutes * 60
            } else {
                minutes * 60
            }
        }
    };
    let local = t.with_timezone(&FixedOffset::east_opt(offset).unwrap());
    format!("{}{fraction}{zone}", local.format("%Y-%m-%dT%H:%M:%S"))
}

/// A result of slave1 with `fields` set (or replaced) on the common ones.
fn result_with(date_time: String, fields: Value) -> Value {
    let mut r = json!({
        "Creds": creds("slave1"),
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": date_time,
        "Target": {"Name": "Google", "Address": "www.google.at"},
    });
    for (k, v) in fields.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

/// What was sent under `key`, `null` when it was not sent.
fn sent(v: &Value, key: &str) -> Value {
    v.get(key).cloned().unwrap_or(Value::Null)
}

/// Checks a stored result against the body that was sent for it.
fn assert_round_trip(body: &Value, got: &Value) {
    let id = body["ID"].as_str().unwrap();
    let fields = [
        ("duration_ns", "DurationNs"),
        ("protocol", "Protocol"),
        ("flow", "Flow"),
        ("destination", "Destination"),
        ("unreachable", "Unreachable"),
        ("error", "Error"),
        ("success", "Success"),
        ("hop_count", "HopCount"),
    ];
    for (ours, theirs) in fields {
        assert_eq!(sent(got, ours), sent(body, theirs), "result {id}: {ours}");
    }
    let when = DateTime::parse_from_rfc3339(body["DateTime"].as_str().unwrap()).unwrap();
    assert_eq!(
        got["measured_at_ms"],
        when.timestamp_millis(),
        "result {id}"
    );
    // Every time in one format: RFC 3339, UTC, milliseconds, Z.
    let utc = chrono::DateTime::from_timestamp_millis(when.timestamp_millis()).unwrap();
    assert_eq!(
        got["measured_at"],
        utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "result {id}"
    );
    let want_hops = body["Hops"].as_array().unwrap();
    let got_hops = got["hops"].as_array().unwrap();
    assert_eq!(got_hops.len(), want_hops.len(), "result {id}: hops");
    for (want, got) in want_hops.iter().zip(got_hops) {
        let ttl = &want["TTL"];
        let address = match want.get("IP") {
            Some(ip) => ip.clone(),
            None => {
                let o: Vec<String> = want["Address"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(Value::to_string)
                    .collect();
                Value::String(o.join("."))
            }
        };
        let hop_fields = [
            ("ttl", sent(want, "TTL")),
            ("address", address),
            ("host", sent(want, "Host")),
            ("rtt_ns", sent(want, "ElapsedTime")),
            ("size", sent(want, "N")),
            ("kind", sent(want, "Kind")),
            ("reply_ttl", sent(want, "ReplyTTL")),
            ("replies", sent(want, "Replies")),
        ];
        for (ours, value) in hop_fields {
            assert_eq!(sent(got, ours), value, "result {id} hop {ttl}: {ours}");
        }
    }
}

#[test]
fn every_reply_comes_back_exactly() {
    let dir = Scratch::with_seed_config("roundtrip");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let at = |minute: i64| t0 + chrono::Duration::minutes(minute);
    let bodies = [
        // UDP, three probes a hop: nanosecond and whole-microsecond RTTs, lost replies, a
        // silent TTL 2, a hop whose ElapsedTime is not its first reply.
        result_with(
            spelled(at(0), "Z", ""),
            json!({
                "TargetID": GOOGLE, "Success": true, "HopCount": 4, "Protocol": "udp", "Flow": 0,
                "Destination": "192.0.2.77", "Queries": 3, "Agent": "dist-traceroute/0.1.0",
                "DurationNs": 123_456_789,
                "Hops": [
                    {"Success": true, "Address": [10, 0, 0, 1], "Host": "r1.example.", "N": 56,
                     "ElapsedTime": 1_234_567, "TTL": 1, "IP": "10.0.0.1", "Kind": "time-exceeded",
                     "Replies": [1_234_567, 1_234_000, null], "ReplyTTL": 255},
                    {"Success": true, "Address": [10, 0, 0, 3], "Host": "", "N": 56,
                     "ElapsedTime": 2_999_999, "TTL": 3, "IP": "10.0.0.3", "Kind": "time-exceeded",
                     "Replies": [3_000_000, null, 3_000_001], "ReplyTTL": 253},
                    {"Success": true, "Address": [192, 0, 2, 77], "Host": "dst.example.", "N": 84,
                     "ElapsedTime": 4_000_000, "TTL": 4, "IP": "192.0.2.77", "Kind": "reached",
                     "Replies": [4_000_000, 4_000_000, 4_001_000], "ReplyTTL": 60},
                ],
            }),
        ),
        // ICMP, one probe a hop, ended by a host unreachable.
        result_with(
            spelled(at(1), "+01:00", ".123"),
            json!({
                "Target": {"Name": "LKML", "Address": "lkml.org"}, "TargetID": LKML,
                "Success": false, "HopCount": 2, "Protocol": "icmp", "Flow": 3,
                "Destination": "192.0.2.88", "Queries": 1, "Unreachable": "!H", "DurationNs": 5,
                "Hops": [
                    {"Success": true, "Address": [10, 1, 0, 1], "Host": "", "N": 56,
                     "ElapsedTime": 555_555, "TTL": 1, "IP": "10.1.0.1", "Kind": "time-exceeded",
                     "Replies": [555_555], "ReplyTTL": 64},
                    {"Success": true, "Address": [10, 9, 0, 1], "Host": "gw9.example.", "N": 56,
                     "ElapsedTime": 777_000, "TTL": 2, "IP": "10.9.0.1", "Kind": "!H",
                     "Replies": [777_000], "ReplyTTL": 62},
                ],
            }),
        ),
        // TCP over IPv6 on the highest flow number.
        result_with(
            spelled(at(2), "Z", ".123456"),
            json!({
                "TargetID": GOOGLE, "Success": true, "HopCount": 3, "Protocol": "tcp",
                "Flow": 65_535, "Destination": "2001:db8::99", "Queries": 3,
                "Hops": [
                    {"Success": true, "Address": [0, 0, 0, 0], "Host": "r6.example.", "N": 60,
                     "ElapsedTime": 900_001, "TTL": 1, "IP": "2001:db8::1", "Kind": "time-exceeded",
                     "Replies": [900_001, null, 950_000], "ReplyTTL": 64},
                    {"Success": true, "Address": [0, 0, 0, 0], "Host": "", "N": 60,
                     "ElapsedTime": 1_900_000, "TTL": 3, "IP": "2001:db8::99", "Kind": "reached",
                     "Replies": [1_900_000, 1_950_000, 2_000_000]},
                ],
            }),
        ),
        // An original Go slave: no extensions, no Replies, a trimmed fraction.
        result_with(
            spelled(at(3), "+02:00", ".5"),
            json!({
                "Success": true, "HopCount": 17,
                "Hops": [
                    {"Success": true, "Address": [192, 168, 1, 1], "Host": "modem.home.", "N": 52,
                     "ElapsedTime": 2_040_972, "TTL": 1},
                    {"Success": true, "Address": [10, 0, 0, 2], "Host": "", "N": 56,
                     "ElapsedTime": 9_000_000, "TTL": 2},
                ],
            }),
        ),
        // A trace that could not run: no hops at all.
        result_with(
            spelled(at(4), "-05:00", ".123456789"),
            json!({
                "TargetID": GOOGLE, "Success": false, "HopCount": 1, "Hops": [],
                "Protocol": "udp", "Flow": 0, "Queries": 3,
                "Error": "cannot resolve www.google.at: Temporary failure in name resolution",
            }),
        ),
        // Trailing zeros kept, a half-hour zone, a multi-second reply and whole microseconds.
        result_with(
            spelled(at(5), "+05:30", ".120000"),
            json!({
                "TargetID": GOOGLE, "Success": true, "HopCount": 2, "Protocol": "udp", "Flow": 1,
                "Destination": "192.0.2.77", "Queries": 1, "DurationNs": 0,
                "Hops": [
                    {"Success": true, "Address": [10, 0, 0, 1], "Host": "", "N": 56,
                     "ElapsedTime": 15_000, "TTL": 1, "IP": "10.0.0.1", "Kind": "time-exceeded",
                     "Replies": [15_000]},
                    {"Success": true, "Address": [192, 0, 2, 77], "Host": "", "N": 84,
                     "ElapsedTime": 2_999_999_999_u64, "TTL": 2, "IP": "192.0.2.77",
                     "Kind": "reached", "Replies": [2_999_999_999_u64], "ReplyTTL": 1},
                ],
            }),
        ),
    ];
    let batch = json!({"Creds": creds("slave1"), "Results": bodies});
    let a = post(addr, "/api/v1/results:batch", batch.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let fates = a.json();
    for (body, fate) in bodies.iter().zip(fates["Results"].as_array().unwrap()) {
        assert_eq!(fate["ID"], body["ID"]);
        assert_eq!(fate["Status"], "stored", "{fate}");
    }

    let stored = results(addr, "");
    assert_eq!(stored.len(), bodies.len());
    for body in &bodies {
        let got = stored
            .iter()
            .find(|r| r["id"] == body["ID"])
            .unwrap_or_else(|| panic!("result {} is not listed", body["ID"]));
        assert_round_trip(body, got);
    }
}
