//! `dist-traceroute db copy`: an SQLite history moved into PostgreSQL answers every query the
//! same through a master on PostgreSQL; copying again adds nothing; a copy cut off between
//! batches goes on where it stopped; a result whose key a PostgreSQL master already took is
//! still copied, once.

mod util;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use util::*;

const GOOGLE: &str = "76d96640-d357-47b3-ba50-5248a7604bc9";

fn password(slave: &str) -> &'static str {
    if slave == "slave1" { "1234" } else { "123" }
}

/// A result of `slave` on `flow` along `route`, measured at `at_ms` (Unix ms).
fn result(slave: &str, flow: i64, route: &[&str], at_ms: i64) -> Value {
    let hops: Vec<Value> = route
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let ip: Ipv4Addr = a.parse().unwrap();
            let rtt = 1_000_000 * (i as i64 + 1) + at_ms % 977;
            json!({
                "Success": true, "Address": ip.octets(), "Host": "", "N": 56,
                "ElapsedTime": rtt, "TTL": i + 1, "IP": a, "Replies": [rtt, null],
                "Kind": if i + 1 == route.len() { "reached" } else { "time-exceeded" },
            })
        })
        .collect();
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap();
    json!({
        "Creds": {"Name": slave, "Password": password(slave)},
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": at.to_rfc3339_opts(SecondsFormat::Micros, false),
        "Target": {"Name": "Google", "Address": "www.google.at"},
        "TargetID": GOOGLE,
        "Success": true, "HopCount": route.len(), "Hops": hops,
        "Protocol": "udp", "Flow": flow, "Queries": 2,
    })
}

/// `r` as a multipath result: flow 0 on its own route, flow 1 on the other branch of the
/// 10.1.0.1 → {10.1.0.2, 10.2.0.2} → 192.0.2.1 diamond.
fn with_graph(mut r: Value, at_ms: i64) -> Value {
    let mine = r["Hops"][1]["IP"].as_str().unwrap().to_owned();
    let other = if mine == "10.1.0.2" {
        "10.2.0.2"
    } else {
        "10.1.0.2"
    };
    let rtt = 1_000_000 + at_ms % 977 * 1000;
    r["Multipath"] = json!({
        "Confidence": 0.95, "Flows": 2, "Probes": 7, "Complete": at_ms % 2 == 0,
        "Nodes": [
            {"TTL": 1, "IP": "10.1.0.1", "Flows": [0, 1], "RTTs": [rtt, rtt + 3000]},
            {"TTL": 2, "IP": mine, "Flows": [0], "RTTs": [rtt * 2]},
            {"TTL": 2, "IP": other, "Flows": [1], "RTTs": [rtt * 2 + 5000]},
            {"TTL": 3, "IP": "192.0.2.1", "Flows": [0, 1], "RTTs": [rtt * 3, rtt * 3]},
        ],
        "Links": [
            {"TTL": 1, "From": "10.1.0.1", "To": mine, "Flows": [0]},
            {"TTL": 1, "From": "10.1.0.1", "To": other, "Flows": [1]},
            {"TTL": 2, "From": mine, "To": "192.0.2.1", "Flows": [0]},
            {"TTL": 2, "From": other, "To": "192.0.2.1", "Flows": [1]},
        ],
    });
    r
}

fn batch(addr: SocketAddr, slave: &str, results: &[Value]) {
    let body = json!({
        "Creds": {"Name": slave, "Password": password(slave)},
        "Results": results,
    });
    let a = post(addr, "/api/v1/results:batch", body.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
}

fn get_json(addr: SocketAddr, query: &str) -> Value {
    let a = get(addr, query);
    assert_eq!(a.status, 200, "{query}: {}", a.text());
    a.json()
}

/// Every result, page by page, newest first.
fn all_results(addr: SocketAddr) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get_json(addr, &format!("/api/v1/results?limit=1000{cursor}"));
        out.extend(page["results"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break out,
        }
    }
}

/// What must read the same from the SQLite master and the PostgreSQL one. Results are
/// sorted by time and ID: one stored at the next free key moves within its millisecond.
fn view(addr: SocketAddr) -> Vec<(String, Value)> {
    let mut results = all_results(addr);
    results.sort_by_key(|r| {
        (
            r["measured_at_ms"].as_i64(),
            r["id"].as_str().map(str::to_owned),
        )
    });
    let mut v = vec![("results".to_owned(), Value::Array(results))];
    for q in [
        "/api/v1/events?limit=1000",
        "/api/v1/paths/current",
        "/api/v1/targets",
        "/api/v1/paths/history?slave=slave1&target=Google&flow=1&from=2020-01-01T00:00:00Z",
    ] {
        let mut got = get_json(addr, q);
        if q == "/api/v1/targets" {
            // Masters on PostgreSQL also list each other: the targets must match.
            got = got["targets"].take();
        }
        // Event ids are row ids of each database; everything else must match.
        if let Some(events) = got.get_mut("events").and_then(Value::as_array_mut) {
            for e in events {
                e.as_object_mut().unwrap().remove("id");
            }
            got.as_object_mut().unwrap().remove("next_cursor");
        }
        v.push((q.to_owned(), got));
    }
    // The exports of slave2's results, byte for byte (slave1's include the one result that
    // moved within its millisecond, see above).
    for q in [
        "/api/v1/export/results.jsonl?slave=slave2",
        "/api/v1/export/results.csv?slave=slave2",
        "/api/v1/export/atlas.json?slave=slave2",
    ] {
        let a = get(addr, q);
        assert_eq!(a.status, 200, "{q}: {}", a.text());
        v.push((q.to_owned(), Value::String(a.text())));
    }
    v
}

fn copy(dir: &Scratch, url: &str) -> (i32, String) {
    let (code, out, err) = run(
        &dir.0,
        std::path::Path::new(BIN),
        &[
            "db",
            "copy",
            "--from",
            "dt-results.db",
            "--to",
            url,
            "--db-passwd-file",
            "db-password",
        ],
    );
    (code, format!("{out}{err}"))
}

#[test]
fn an_sqlite_history_copied_into_postgresql_reads_the_same() {
    let pg = util::pg::server();
    let db = pg.create_db("copy");
    let url = format!("postgres://{}@127.0.0.1:{}/{db}", util::pg::USER, pg.port);
    let dir = Scratch::with_seed_config("db-copy");
    dir.write("db-password", &pg.password);

    // An SQLite history: 12,000 results over 8 series, several to a millisecond, with path
    // changes, ending a day ago.
    let start = Utc::now().timestamp_millis() - 86_400_000 - 12_000 * 50;
    let a = ["10.1.0.1", "10.1.0.2", "192.0.2.1"];
    let b = ["10.1.0.1", "10.2.0.2", "192.0.2.1"];
    let mut sqlite = Proc::master(&dir.0, &["-path-confirm", "2"]);
    for slave in ["slave1", "slave2"] {
        for chunk in 0..6 {
            let results: Vec<Value> = (0..1000)
                .map(|i| {
                    let n = chunk * 1000 + i;
                    let flow = n % 4;
                    // Every result to the same millisecond as the one before it on another flow.
                    let at = start + (n / 4) * 200;
                    let route = if (n / 400) % 2 == 0 { &a } else { &b };
                    // slave2's flow 0 is a multipath series in part of the history.
                    if slave == "slave2" && flow == 0 && chunk < 2 {
                        with_graph(result(slave, flow, route, at), at)
                    } else {
                        result(slave, flow, route, at)
                    }
                })
                .collect();
            batch(sqlite.addr(), slave, &results);
        }
    }
    let before = view(sqlite.addr());
    assert_eq!(before[0].1.as_array().unwrap().len(), 12_000);
    let graphs = before[0]
        .1
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("multipath").is_some());
    assert_eq!(graphs.count(), 500);
    let events = before[1].1["events"].as_array().unwrap().len();
    assert!(events >= 16, "only {events} events");
    // The copy refuses the file while its master runs.
    let (code, out) = copy(&dir, &url);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("in use by another master"), "{out}");
    sqlite.kill();
    // An on-demand measurement holding one of the results, the follow-up of the first event.
    const MEASUREMENT: &str = "5b0c8d2e-1f3a-4e6b-9c7d-8a9b0c1d2e3f";
    {
        let c = rusqlite::Connection::open(dir.path("dt-results.db")).unwrap();
        let one = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        let result = one(
            "SELECT r.id FROM results r JOIN series s ON s.id = r.series_id
             JOIN slaves sl ON sl.id = s.slave_id WHERE sl.name = 'slave1'
             ORDER BY r.id LIMIT 1 OFFSET 7",
        );
        let event = one("SELECT id FROM events ORDER BY id LIMIT 1");
        let spec = json!({"ID": MEASUREMENT, "Target": "192.0.2.1", "Protocol": "udp",
                          "Port": null, "Flows": 1, "Queries": 3, "MaxHops": 30, "TimeoutMs": 500});
        c.execute_batch(&format!(
            "INSERT INTO measurements (id, created_at, deadline, requested_by, spec, flows)
                VALUES ('{MEASUREMENT}', {start}, {start} + 60000, 'follow-up', '{spec}', 1);
             INSERT INTO measurement_runs (measurement, slave, state, updated_at, results, reason)
                VALUES ('{MEASUREMENT}', 'slave1', 'done', {start}, 1, NULL),
                       ('{MEASUREMENT}', 'slave2', 'offline', {start}, 0, 'never seen by the master');
             INSERT INTO measurement_results (measurement, result) VALUES ('{MEASUREMENT}', {result});
             INSERT INTO follow_ups (event_id, measurement) VALUES ({event}, '{MEASUREMENT}');"
        ))
        .unwrap();
    }

    // A master on PostgreSQL already stores a result in a millisecond the history used:
    // that key is taken, so the copy stores the other result at the next free one.
    let pg_dir = Scratch::with_seed_config("db-copy-pg");
    pg_dir.write("db-password", &pg.password);
    let pg_args = [
        "-path-confirm",
        "2",
        "-db",
        url.as_str(),
        "-db-passwd-file",
        "db-password",
    ];
    let early = result("slave1", 9, &a, start);
    {
        let m = Proc::master(&pg_dir.0, &pg_args);
        let got = post(m.addr(), "/api/v1/results", early.to_string().as_bytes());
        assert_eq!(got.status, 200, "{}", got.text());
    }

    let (code, out) = copy(&dir, &url);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12000 results copied now"), "{out}");
    assert!(out.contains("1 stored at the next free key"), "{out}");
    assert!(out.contains(", 1 measurements"), "{out}");

    let sqlite = Proc::master(&dir.0, &["-path-confirm", "2"]);
    let master = Proc::master(&pg_dir.0, &pg_args);
    // The measurement reads the same from both, its result included; its event names it.
    let path = format!("/api/v1/measurements/{MEASUREMENT}");
    let (here, there) = (get(sqlite.addr(), &path), get(master.addr(), &path));
    assert_eq!(here.status, 200, "{}", here.text());
    assert_eq!(here.json(), there.json());
    assert_eq!(
        here.json()["slaves"][0]["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let before = view(sqlite.addr());
    assert_eq!(
        before[1].1["events"].as_array().unwrap().last().unwrap()["follow_up"]["id"],
        MEASUREMENT
    );
    let mut after = view(master.addr());
    // Apart from the PostgreSQL master's own result, every query answers the same.
    let results = after[0].1.as_array_mut().unwrap();
    let own = results
        .iter()
        .position(|r| r["id"] == early["ID"])
        .expect("its own result");
    results.remove(own);
    let targets_before = &before[3].1;
    for ((q, want), (_, got)) in before.iter().zip(&after) {
        if q == "/api/v1/paths/current" {
            // The PostgreSQL master's flow 9 is a series of its own.
            let got: Vec<&Value> = got["paths"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["flow"] != 9)
                .collect();
            let want: Vec<&Value> = want["paths"].as_array().unwrap().iter().collect();
            assert_eq!(got, want, "{q}");
            continue;
        }
        assert_eq!(got, want, "{q}");
    }
    assert_eq!(&after[3].1, targets_before);
    // A resend of a copied result is a duplicate; so is a resend of the one moved aside.
    let resend = &before[0].1[11_999];
    let id = resend["id"].as_str().unwrap();
    let n: i64 = pg
        .psql(&db, "SELECT count(*) FROM aside")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, 1, "the moved result is kept aside");
    drop(sqlite);

    // Copying again adds nothing.
    let (code, out) = copy(&dir, &url);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 results copied now, 12000 by an earlier run"),
        "{out}"
    );
    assert!(out.contains(", 0 events"), "{out}");
    assert_eq!(all_results(master.addr()).len(), 12_001);
    // So does copying the same history from another path (a backup of the file).
    std::fs::copy(dir.path("dt-results.db"), dir.path("backup.db")).unwrap();
    let (code, out, err) = run(
        &dir.0,
        std::path::Path::new(BIN),
        &[
            "db",
            "copy",
            "--from",
            "backup.db",
            "--to",
            &url,
            "--db-passwd-file",
            "db-password",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("0 results copied now, 12000 by an earlier run"),
        "{err}"
    );
    assert!(err.contains(", 0 events"), "{err}");
    assert_eq!(all_results(master.addr()).len(), 12_001);

    // A copy cut off after its first batch (each batch is one transaction) goes on from
    // there: undo everything after it, as if the run had stopped.
    let cut: i64 = pg
        .psql(&db, "SELECT id FROM results WHERE series_id IN (SELECT id FROM series WHERE flow < 9) ORDER BY id LIMIT 1 OFFSET 4999")
        .trim()
        .parse()
        .unwrap();
    pg.psql(
        &db,
        &format!(
            "DELETE FROM results WHERE id > {cut} AND series_id IN (SELECT id FROM series WHERE flow < 9);
             DELETE FROM events WHERE series_id IN (SELECT id FROM series WHERE flow < 9);
             UPDATE copies SET last_key = {cut}, copied = 5000, done = false"
        ),
    );
    let (code, out) = copy(&dir, &url);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("7000 results copied now, 5000 by an earlier run"),
        "{out}"
    );
    let mut again = view(master.addr());
    let results = again[0].1.as_array_mut().unwrap();
    let own = results.iter().position(|r| r["id"] == early["ID"]).unwrap();
    results.remove(own);
    assert_eq!(again[0], after[0]);
    assert_eq!(again[1], after[1]);
    // The slave's resend of any copied result is found, not stored again.
    let mut r = result("slave2", 0, &a, 0);
    r["ID"] = json!(id);
    r["DateTime"] = json!(resend["measured_at"]);
    r["Creds"] =
        json!({"Name": resend["slave"], "Password": password(resend["slave"].as_str().unwrap())});
    r["Flow"] = resend["flow"].clone();
    let got = post(master.addr(), "/api/v1/results", r.to_string().as_bytes());
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["duplicate"], true, "{}", got.text());
}
