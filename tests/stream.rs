//! The live stream over real HTTP: a client connected to `GET /api/v1/stream` gets every
//! stored result (the same object `/api/v1/results` returns) and every change event as they
//! are stored, filtered as asked; one that reconnects with `Last-Event-ID` gets what it
//! missed, in order, or a `reset` when the master no longer has it.

mod util;
use serde_json::{Value, json};
use std::time::Duration;
use util::sse::Stream;
use util::*;

const GOOGLE: &str = "76d96640-d357-47b3-ba50-5248a7604bc9";
const WAIT: Duration = Duration::from_secs(10);

/// A result of `slave` to Google `minute` minutes into the script, on `hops`.
fn result(slave: &str, password: &str, minute: i64, hops: &[&str]) -> Value {
    let at = chrono::Utc::now() - chrono::Duration::minutes(30) + chrono::Duration::minutes(minute);
    let n = hops.len();
    let hops: Vec<Value> = hops
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            json!({
                "Success": true, "Address": ip.octets(), "Host": "", "N": 56,
                "ElapsedTime": 1_000_000 * (i as i64 + 1), "TTL": i + 1, "IP": a,
                "Replies": [1_000_000 * (i as i64 + 1)],
                "Kind": if i + 1 == n { "reached" } else { "time-exceeded" },
            })
        })
        .collect();
    json!({
        "Creds": {"Name": slave, "Password": password},
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": at.to_rfc3339(),
        "Target": {"Name": "Google", "Address": "www.google.at"},
        "TargetID": GOOGLE,
        "Success": true, "HopCount": n, "Hops": hops, "Protocol": "udp", "Flow": 0, "Queries": 1,
    })
}

fn send(addr: std::net::SocketAddr, r: &Value) {
    let a = post(addr, "/api/v1/results", r.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
}

const A: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
const B: [&str; 3] = ["10.0.0.1", "10.0.0.9", "10.0.0.3"];

#[test]
fn a_connected_client_gets_each_stored_result_and_event_as_its_filter_says() {
    let dir = Scratch::with_seed_config("stream");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let mut all = Stream::open(addr, "/api/v1/stream", &[]);
    assert_eq!(all.status, 200, "{}", all.head);
    assert!(all.head.to_ascii_lowercase().contains("text/event-stream"));
    let mut changes = Stream::open(addr, "/api/v1/stream?kind=path-change", &[]);
    let mut slave2 = Stream::open(addr, "/api/v1/stream?slave=slave2&kind=result", &[]);
    // The head is out before anything happens, so a browser's EventSource opens at once.
    assert!(all.next(Duration::from_millis(300)).is_none());

    let mut sent = Vec::new();
    for (minute, hops) in [(0, A), (1, A), (2, A), (3, B), (4, B)] {
        let r = result("slave1", "1234", minute, &hops);
        send(addr, &r);
        sent.push(r["ID"].as_str().unwrap().to_owned());
    }
    let other = result("slave2", "123", 5, &A);
    send(addr, &other);

    // Every result in the order stored, each the object the results API returns.
    let stored = results(addr, "");
    let mut seen = Vec::new();
    let mut change = None;
    while seen.len() < 6 || change.is_none() {
        let e = all.next(WAIT).expect("the stream goes on");
        match e.event.as_str() {
            "result" => seen.push(e.json()),
            "event" => change = Some(e.json()),
            other => panic!("unexpected event {other}"),
        }
        assert!(e.id.contains('.'), "{e:?}");
    }
    let ids: Vec<&str> = seen.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = sent.iter().map(String::as_str).collect();
    want.push(other["ID"].as_str().unwrap());
    assert_eq!(ids, want);
    for r in &seen {
        let twin = stored.iter().find(|s| s["id"] == r["id"]).unwrap();
        let (mut a, mut b) = (r.clone(), twin.clone());
        // The stream says when this master took it; the store, when its writer did.
        let gap = a["received_at_ms"].as_i64().unwrap() - b["received_at_ms"].as_i64().unwrap();
        assert!((0..5_000).contains(&gap), "received_at {gap} ms apart");
        for field in ["received_at", "received_at_ms"] {
            a[field] = Value::Null;
            b[field] = Value::Null;
        }
        assert_eq!(a, b);
    }
    let change = change.unwrap();
    assert_eq!(change["kind"], "path-change");
    assert_eq!(change["slave"], "slave1");
    assert_eq!(change["target_id"], GOOGLE);
    assert_eq!(change["from"], "10.0.0.1 10.0.0.2 10.0.0.3 | reached");
    assert_eq!(change["to"], "10.0.0.1 10.0.0.9 10.0.0.3 | reached");
    assert!(change["message"].as_str().unwrap().contains("path changed"));

    // The filtered streams got their share only.
    let e = changes.next(WAIT).expect("the path change");
    assert_eq!(
        (e.event.as_str(), e.json()["kind"].clone()),
        ("event", json!("path-change"))
    );
    assert!(changes.next(Duration::from_millis(300)).is_none());
    let e = slave2.next(WAIT).expect("slave2's result");
    assert_eq!(e.json()["id"], other["ID"]);
    assert!(slave2.next(Duration::from_millis(300)).is_none());

    // A bad filter is refused with a reason, before any stream opens.
    let bad = get(addr, "/api/v1/stream?kind=everything");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("kind 'everything'"), "{}", bad.text());
}

#[test]
fn a_client_that_reconnects_gets_what_it_missed_or_a_reset() {
    let dir = Scratch::with_seed_config("streamresume");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let mut s = Stream::open(addr, "/api/v1/stream?kind=result", &[]);
    send(addr, &result("slave1", "1234", 0, &A));
    let first = s.next(WAIT).expect("the first result");
    drop(s);

    // Three results while it is away.
    let mut missed = Vec::new();
    for minute in 1..4 {
        let r = result("slave1", "1234", minute, &A);
        send(addr, &r);
        missed.push(r["ID"].as_str().unwrap().to_owned());
    }
    let header = format!("Last-Event-ID: {}", first.id);
    let mut back = Stream::open(addr, "/api/v1/stream?kind=result", &[&header]);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            back.next(WAIT).expect("a missed result").json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(got, missed, "the missed ones, in order");
    let live = result("slave1", "1234", 5, &A);
    send(addr, &live);
    assert_eq!(back.next(WAIT).expect("then live").json()["id"], live["ID"]);

    // The same resume through the query (for clients that cannot set headers).
    let path = format!("/api/v1/stream?kind=result&last_event_id={}", first.id);
    let mut q = Stream::open(addr, &path, &[]);
    assert_eq!(
        q.next(WAIT).unwrap().json()["id"].as_str().unwrap(),
        missed[0]
    );

    // An ID of another run (a restarted master): a reset first, saying to reload.
    let mut stale = Stream::open(addr, "/api/v1/stream", &["Last-Event-ID: 0badc0de.7"]);
    let e = stale.next(WAIT).expect("a reset");
    assert_eq!(e.event, "reset");
    assert!(e.json()["reason"].as_str().unwrap().contains("reload"));
}
