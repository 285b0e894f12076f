//! The ecosystem's own tools read what the master writes: RIPE's `ripe.atlas.sagan` parses
//! every object of the Atlas export, `promtool` checks `/metrics` in the Prometheus text format
//! and Prometheus' Python client parses its OpenMetrics form. Also: one time format in the
//! API, time filters in seconds and milliseconds, 404s for unknown names, `HEAD`, debug marks
//! and result IDs that belong to one slave.
//!
//! The tools are installed by `scripts/test` (promtool from Debian's prometheus, the Python
//! parsers in `target/pytools`); without them these tests fail, they never skip.

mod util;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use util::*;

const GOOGLE: &str = "76d96640-d357-47b3-ba50-5248a7604bc9";
const LKML: &str = "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee";

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pytools/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs ripe.atlas.sagan and prometheus-client there",
        p.display()
    );
    p
}

fn hop(ttl: i64, ip: &str, rtts_ms: &[Option<f64>], kind: &str) -> Value {
    let first = rtts_ms.iter().flatten().next().copied().unwrap_or(0.0);
    let v4: Option<std::net::Ipv4Addr> = ip.parse().ok();
    json!({
        "Success": true, "Address": v4.map_or([0; 4], |a| a.octets()), "Host": "", "N": 56,
        "ElapsedTime": (first * 1e6) as i64, "TTL": ttl, "IP": ip,
        "Replies": rtts_ms.iter().map(|r| r.map(|ms| (ms * 1e6) as i64)).collect::<Vec<_>>(),
        "Kind": kind,
    })
}

/// `h` inside an MPLS tunnel: its replies carry a label stack of two.
fn mpls(mut h: Value) -> Value {
    h["MPLS"] = json!([
        {"Label": 24001, "TC": 5, "S": false, "TTL": 1},
        {"Label": 16, "TC": 0, "S": true, "TTL": 1},
    ]);
    h
}

/// A result of our slave's form.
fn ours(slave: &str, target: (&str, &str, &str), date_time: &str, extra: Value) -> Value {
    let password = if slave == "slave1" { "1234" } else { "123" };
    let mut r = json!({
        "Creds": {"Name": slave, "Password": password},
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": date_time,
        "Target": {"Name": target.1, "Address": target.2},
        "TargetID": target.0,
        "Success": false, "HopCount": 1, "Hops": [], "Protocol": "udp", "Flow": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn send(addr: std::net::SocketAddr, r: &Value) {
    let a = post(addr, "/api/v1/results", r.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["stored"], true, "{}", a.text());
}

/// The scripted results: reached with three replies a hop and a +01:00 time, a silent hop, a
/// host-unreachable end, a name that did not resolve, IPv6, and a Go slave's result.
fn scripted() -> Vec<Value> {
    let google = (GOOGLE, "Google", "www.google.at");
    let lkml = (LKML, "LKML", "lkml.org");
    let now = chrono::Utc::now();
    let at = |min: i64, offset_h: i32| {
        (now - chrono::Duration::minutes(min))
            .with_timezone(&chrono::FixedOffset::east_opt(offset_h * 3600).unwrap())
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    };
    vec![
        ours(
            "slave1",
            google,
            &at(30, 1),
            json!({
                "Success": true, "HopCount": 3, "Destination": "142.250.185.99",
                "SourceAddress": "192.168.1.20", "Queries": 3, "DurationNs": 1_500_000_000_i64,
                "Hops": [
                    hop(1, "192.168.1.1", &[Some(1.2), Some(1.3), None], "time-exceeded"),
                    mpls(hop(2, "10.1.0.1", &[Some(5.0), Some(5.5), Some(6.0)], "time-exceeded")),
                    hop(3, "142.250.185.99", &[Some(12.0), Some(12.5), Some(11.9)], "reached"),
                ],
            }),
        ),
        ours(
            "slave2",
            google,
            &at(29, 0),
            json!({
                "Success": true, "HopCount": 3, "Destination": "142.250.185.99",
                "SourceAddress": "10.9.9.9",
                "Hops": [
                    hop(1, "10.9.9.1", &[Some(0.5)], "time-exceeded"),
                    hop(3, "142.250.185.99", &[Some(14.0)], "reached"),
                ],
            }),
        ),
        ours(
            "slave1",
            lkml,
            &at(28, 0),
            json!({
                "HopCount": 2, "Destination": "198.145.29.72", "Unreachable": "!H",
                "Hops": [
                    hop(1, "192.168.1.1", &[Some(1.0)], "time-exceeded"),
                    hop(2, "10.1.0.1", &[Some(4.0)], "!H"),
                ],
            }),
        ),
        ours(
            "slave2",
            lkml,
            &at(27, 0),
            json!({
                "Error": "cannot resolve lkml.org: no such host", "Protocol": null, "Flow": null,
            }),
        ),
        ours(
            "slave1",
            (GOOGLE, "Google", "www.google.at"),
            &at(26, 0),
            json!({
                "Success": true, "HopCount": 2, "Destination": "2001:db8::99",
                "SourceAddress": "2001:db8:1::20",
                "Hops": [
                    hop(1, "2001:db8:1::1", &[Some(2.0), Some(2.1)], "time-exceeded"),
                    hop(2, "2001:db8::99", &[Some(9.0), Some(9.2)], "reached"),
                ],
            }),
        ),
    ]
}

/// What sagan makes of each exported object.
const SAGAN: &str = r#"
import json, sys
from ripe.atlas.sagan import Result
out = []
for raw in json.load(sys.stdin):
    r = Result.get(raw, on_error=Result.ACTION_IGNORE, on_malformation=Result.ACTION_FAIL)
    out.append({
        "id": raw["dt_result_id"], "type": type(r).__name__, "malformed": r.is_malformed,
        "prb_id": r.probe_id, "msm_id": r.measurement_id, "af": r.af,
        "from": r.origin, "src_addr": r.source_address, "dst_addr": r.destination_address,
        "error": r.error_message, "success": r.is_success, "paris_id": r.paris_id,
        "timestamp": r.created_timestamp,
        "hops": [[[p.origin, p.rtt, p.ttl, p.error_message,
                   p.icmp_header.objects if p.icmp_header else None,
                   p.icmp_header.version if p.icmp_header else None] for p in h.packets]
                 for h in r.hops],
    })
print(json.dumps(out))
"#;

#[test]
fn ripe_atlas_tools_read_the_atlas_export() {
    let dir = Scratch::with_seed_config("atlas");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let sent = scripted();
    for r in &sent {
        send(addr, r);
    }
    // A Go slave's result, on the original endpoint.
    let go = post(addr, "/results/", GO_RESULT.as_bytes());
    assert_eq!(go.status, 200);
    let export = get(addr, "/api/v1/export/atlas.json?limit=100");
    assert_eq!(export.status, 200, "{}", export.text());
    let (code, out, err) = pipe(python().as_os_str(), &["-c", SAGAN], &export.body);
    assert_eq!(code, 0, "sagan failed: {err}\n{}", export.text());
    let parsed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed.len(), sent.len() + 1, "{out}");
    let by_id: HashMap<String, &Value> = parsed
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p))
        .collect();
    let slaves = get(addr, "/api/v1/slaves").json();
    let prb: HashMap<&str, i64> = slaves["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?, s["prb_id"].as_i64()?)))
        .collect();
    assert_eq!(prb.len(), 2, "{slaves:#}");
    assert_ne!(prb["slave1"], prb["slave2"]);
    // The same after a restart (and on every master).
    drop(master);
    let master = Proc::master(&dir.0, &[]);
    let again = get(master.addr(), "/api/v1/slaves").json();
    let first = &again["slaves"][0];
    assert_eq!(first["prb_id"], prb[first["name"].as_str().unwrap()]);
    // A restart keeps them (they are the same on every master).
    drop(master);
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let again = get(addr, "/api/v1/slaves").json();
    assert_eq!(
        again["slaves"][0]["prb_id"],
        prb[again["slaves"][0]["name"].as_str().unwrap()]
    );
    let msm = |uuid: &str| i64::from(u32::from_str_radix(&uuid[..8], 16).unwrap() >> 1);

    for r in sent
        .iter()
        .chain([&serde_json::from_str::<Value>(GO_RESULT).unwrap()])
    {
        let id = r["ID"].as_str().unwrap();
        let p = by_id[id];
        let slave = r["Creds"]["Name"].as_str().unwrap();
        assert_eq!(p["type"], "TracerouteResult", "{p}");
        assert_eq!(p["malformed"], false, "{p}");
        assert_eq!(p["prb_id"], prb[slave], "{p}");
        // The Go result names Google by name and address, which the master maps to its UUID.
        let target = r.get("TargetID").and_then(Value::as_str).unwrap_or(GOOGLE);
        assert_eq!(p["msm_id"], msm(target), "{p}");
        assert_eq!(p["from"], "127.0.0.1", "the address the master saw: {p}");
        assert_eq!(
            p["src_addr"],
            r.get("SourceAddress").cloned().unwrap_or(json!("")),
            "{p}"
        );
        let when = chrono::DateTime::parse_from_rfc3339(r["DateTime"].as_str().unwrap()).unwrap();
        assert_eq!(p["timestamp"], when.timestamp(), "{p}");
        if let Some(e) = r.get("Error") {
            assert_eq!(
                p["error"], *e,
                "a name that did not resolve is a dnserr: {p}"
            );
            assert_eq!(p["hops"], json!([]), "{p}");
            continue;
        }
        assert_eq!(p["error"], Value::Null, "{p}");
        let dest = r.get("Destination").cloned().unwrap_or(Value::Null);
        assert_eq!(
            p["dst_addr"],
            if dest.is_null() {
                json!("")
            } else {
                dest.clone()
            },
            "{p}"
        );
        let v6 = dest.as_str().is_some_and(|d| d.contains(':'));
        assert_eq!(p["af"], if v6 { 6 } else { 4 }, "{p}");
        if !dest.is_null() {
            // (The Go sample lists only its first hop, so Atlas sees no reply at its end.)
            assert_eq!(p["success"], r["Success"], "{p}");
        }
        // Hop by hop: every reply the slave sent, `None` for lost ones (Atlas `x: *`), the
        // silent TTL as stars, `!H` as Atlas' `err: H`.
        let hops = p["hops"].as_array().unwrap();
        let last = r["Hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["TTL"].as_i64().unwrap())
            .max()
            .unwrap();
        assert_eq!(
            hops.len() as i64,
            last.max(r["HopCount"].as_i64().unwrap()),
            "{p}"
        );
        for h in r["Hops"].as_array().unwrap() {
            let ttl = h["TTL"].as_i64().unwrap() as usize;
            let got = hops[ttl - 1].as_array().unwrap();
            let want: Vec<Value> = match h.get("Replies") {
                Some(rs) => rs.as_array().unwrap().clone(),
                None => vec![h["ElapsedTime"].clone()],
            };
            assert_eq!(got.len(), want.len(), "ttl {ttl}: {p}");
            for (g, w) in got.iter().zip(&want) {
                match w.as_i64() {
                    None => assert_eq!(g[0], Value::Null, "lost reply: {p}"),
                    Some(ns) => {
                        let ip = h
                            .get("IP")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| {
                                let a: Vec<String> = h["Address"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|o| o.to_string())
                                    .collect();
                                a.join(".")
                            });
                        assert_eq!(g[0], json!(ip), "{p}");
                        let rtt = g[1].as_f64().unwrap();
                        assert!(
                            (rtt - ns as f64 / 1e6).abs() < 0.001,
                            "rtt {rtt} vs {ns} ns: {p}"
                        );
                        let err = if h["Kind"] == "!H" {
                            json!("Destination unreachable")
                        } else {
                            Value::Null
                        };
                        assert_eq!(g[3], err, "{p}");
                        // RFC 4950 labels as Atlas' icmpext: version 2, one MPLS object.
                        let icmpext = match h.get("MPLS") {
                            Some(labels) => json!([{"class": 1, "type": 1, "mpls": labels
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|l| json!({"label": l["Label"], "exp": l["TC"],
                                    "s": u8::from(l["S"] == true), "ttl": l["TTL"]}))
                                .collect::<Vec<_>>()}]),
                            None => Value::Null,
                        };
                        assert_eq!(g[4], icmpext, "{p}");
                        if !icmpext.is_null() {
                            assert_eq!(g[5], 2, "{p}");
                        }
                    }
                }
            }
        }
        for (i, h) in hops.iter().enumerate() {
            if !r["Hops"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["TTL"] == i + 1)
            {
                assert!(
                    h.as_array().unwrap().iter().all(|p| p[0].is_null()),
                    "silent hop {}: {p}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn promtool_and_the_openmetrics_parser_accept_the_metrics() {
    let dir = Scratch::with_seed_config("prom");
    // With an AS table, so the AS path info series is checked too.
    dir.write(
        "asn.tsv",
        "142.250.0.0\t142.251.255.255\t15169\tUS\tGOOGLE\n",
    );
    let master = Proc::master(&dir.0, &["-asn-db", "asn.tsv"]);
    let addr = master.addr();
    for r in scripted() {
        send(addr, &r);
    }
    let text = get(addr, "/metrics");
    assert_eq!(text.status, 200);
    assert!(
        text.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        text.head
    );
    let body = text.text();
    assert!(
        body.contains("# TYPE dt_results_stored_total counter"),
        "{body}"
    );
    assert!(
        body.contains("dt_slave_last_seen_timestamp_seconds{slave=\"slave1\"}"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE dt_as_path_info gauge")
            && body.lines().any(|l| l.starts_with("dt_as_path_info{")
                && l.contains("slave=\"slave1\"")
                && l.contains("as_path=\"15169\"")),
        "{body}"
    );
    let (code, out, err) = pipe("promtool".as_ref(), &["check", "metrics"], &text.body);
    assert_eq!(code, 0, "promtool: {out}{err}\n{body}");
    assert_eq!(out.trim(), "", "promtool lint: {out}");

    let om = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
    )
    .expect("an answer");
    assert!(
        om.head
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{}",
        om.head
    );
    let parse = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as f\nfams = list(f(sys.stdin.read()))\nprint(len(fams))\nprint(next(m for m in fams if m.name == 'dt_results_stored').type)";
    let (code, out, err) = pipe(python().as_os_str(), &["-c", parse], &om.body);
    assert_eq!(code, 0, "OpenMetrics parser: {err}\n{}", om.text());
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap().parse::<usize>().unwrap() >= 10,
        "{out}"
    );
    assert_eq!(lines.next(), Some("counter"), "{out}");
}

/// Every string in `v` that reads as a time is RFC 3339 in UTC with milliseconds and `Z`.
fn times_are_one_format(v: &Value, where_: &str, seen: &mut usize) {
    match v {
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
            *seen += 1;
            let ok = s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.';
            assert!(ok, "{where_}: time {s:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
        }
        Value::Array(a) => a.iter().for_each(|x| times_are_one_format(x, where_, seen)),
        Value::Object(o) => o
            .values()
            .for_each(|x| times_are_one_format(x, where_, seen)),
        _ => {}
    }
}

#[test]
fn one_time_format_filters_in_any_unit_and_unknown_names_are_404() {
    let dir = Scratch::with_seed_config("times");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let sent = scripted();
    for r in &sent {
        send(addr, r);
    }
    let mut seen = 0;
    for path in [
        "/api/v1/results",
        "/api/v1/slaves",
        "/api/v1/paths/current",
        "/api/v1/paths/history",
        "/api/v1/events",
    ] {
        let a = get(addr, path);
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        times_are_one_format(&a.json(), path, &mut seen);
    }
    assert!(seen >= 3 * sent.len(), "only {seen} times seen");
    // The CSV's time is the same format, with its Unix ms beside it.
    let csv = get(addr, "/api/v1/export/results.csv").text();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "measured_at").unwrap();
    assert_eq!(header[col + 1], "measured_at_ms");
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let mut n = 0;
        times_are_one_format(&json!(cells[col]), "csv", &mut n);
        assert_eq!(n, 1, "{line}");
    }

    // from= in milliseconds, seconds and RFC 3339 select the same results.
    let first =
        chrono::DateTime::parse_from_rfc3339(sent[2]["DateTime"].as_str().unwrap()).unwrap();
    let want = sent.len() - 2;
    for from in [
        first.timestamp_millis().to_string(),
        first.timestamp().to_string(),
        first.to_rfc3339().replace('+', "%2B"),
    ] {
        let got = results(addr, &format!("from={from}"));
        assert_eq!(got.len(), want, "from={from}");
    }

    for (path, word) in [
        ("/api/v1/results?slave=nosuch", "slave1"),
        ("/api/v1/results?target=nosuch", "Google"),
        ("/api/v1/paths/current?slave=nosuch", "slave2"),
        ("/api/v1/events?target=nosuch", "LKML"),
        ("/api/v1/export/results.csv?slave=nosuch", "slave1"),
    ] {
        let a = get(addr, path);
        assert_eq!(a.status, 404, "{path}: {}", a.text());
        let e = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(e.contains("nosuch") && e.contains(word), "{path}: {e}");
    }

    // HEAD answers as GET does, without a body.
    let head = raw(
        addr,
        b"HEAD /api/v1/results HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("an answer");
    assert!(head.head.starts_with("HTTP/1.1 200"), "{}", head.head);
    assert!(head.body.is_empty(), "{}", head.text());
}

#[test]
fn debug_results_are_marked_and_ids_belong_to_one_slave() {
    let dir = Scratch::with_seed_config("debugmark");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let soon = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let google = (GOOGLE, "Google", "www.google.at");
    let mut fake = ours(
        "slave1",
        google,
        &soon,
        json!({"Debug": true, "Success": true}),
    );
    send(addr, &fake);
    // The same ID from another slave (the Go slave's debug result is one fixed ID) is that
    // slave's own result, dated ahead of the master as it is.
    fake["Creds"] = json!({"Name": "slave2", "Password": "123"});
    fake.as_object_mut().unwrap().remove("Debug");
    send(addr, &fake);
    fake["Creds"] = json!({"Name": "slave1", "Password": "1234"});
    let again = post(addr, "/api/v1/results", fake.to_string().as_bytes());
    assert_eq!(again.json()["duplicate"], true, "{}", again.text());

    let got = results(addr, "");
    assert_eq!(got.len(), 2, "{got:#?}");
    let marked: HashMap<&str, bool> = got
        .iter()
        .map(|r| (r["slave"].as_str().unwrap(), r["debug"].as_bool().unwrap()))
        .collect();
    assert_eq!(marked, HashMap::from([("slave1", true), ("slave2", false)]));
    let atlas: Value = get(addr, "/api/v1/export/atlas.json").json();
    let flags: Vec<(String, bool)> = atlas
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["dt_slave"].as_str().unwrap().to_owned(),
                a["dt_debug"] == true,
            )
        })
        .collect();
    assert!(
        flags.contains(&("slave1".into(), true)) && flags.contains(&("slave2".into(), false)),
        "{flags:?}"
    );
    let csv = get(addr, "/api/v1/export/results.csv").text();
    assert!(
        csv.lines()
            .any(|l| l.contains(",slave1,") && l.contains(",true,")),
        "{csv}"
    );
    let m = get(addr, "/metrics").text();
    assert!(m.lines().any(|l| l == "dt_results_debug_total 1"), "{m}");
}

#[test]
fn the_go_slaves_made_up_result_is_marked_for_each_slave() {
    let dir = Scratch::with_seed_config("godebug");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    // The body the original slave sends under -zDebugResults: one fixed ID, no Debug field.
    let fake = GO_RESULT.replace("3a1b7c55", "d9bbc544");
    for (name, password) in [("slave1", "1234"), ("slave2", "123")] {
        let body = fake.replace(
            r#"{"Name":"slave1","Password":"1234"}"#,
            &format!(r#"{{"Name":"{name}","Password":"{password}"}}"#),
        );
        let a = post(addr, "/results/", body.as_bytes());
        assert_eq!(a.json()["Success"], true, "{name}: {}", a.text());
    }
    // A real result of the Go slave (a fresh ID) stays a measurement.
    let real = post(addr, "/results/", GO_RESULT.as_bytes());
    assert_eq!(real.json()["Success"], true, "{}", real.text());

    let got = results(addr, "");
    let mut marked: Vec<(String, String, bool)> = got
        .iter()
        .map(|r| {
            (
                r["slave"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap()[..8].to_owned(),
                r["debug"].as_bool().unwrap(),
            )
        })
        .collect();
    marked.sort();
    assert_eq!(
        marked,
        [
            ("slave1".into(), "3a1b7c55".into(), false),
            ("slave1".into(), "d9bbc544".into(), true),
            ("slave2".into(), "d9bbc544".into(), true),
        ],
        "{got:#?}"
    );
    let m = get(addr, "/metrics").text();
    assert!(m.lines().any(|l| l == "dt_results_debug_total 2"), "{m}");
}

/// Builds MaxMind DB files with the Python `mmdb-writer`, one per vendor's field names.
const MMDB_WRITER: &str = r#"
import sys
from netaddr import IPSet
from mmdb_writer import MMDBWriter, MmdbU32
# MaxMind's GeoLite2-ASN and DB-IP: one IPv6 tree that holds IPv4 too.
w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
w.insert_network(IPSet(["1.1.1.0/24", "2606:4700::/32"]), {
    "autonomous_system_number": MmdbU32(13335),
    "autonomous_system_organization": "CLOUDFLARENET"})
w.insert_network(IPSet(["142.250.0.0/15"]), {
    "autonomous_system_number": MmdbU32(15169),
    "autonomous_system_organization": "GOOGLE"})
w.to_db_file(sys.argv[1] + "/geolite.mmdb")
# IPinfo: the number as a string with its "AS", and a country.
w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="ipinfo country_asn")
w.insert_network(IPSet(["142.250.0.0/15"]), {
    "asn": "AS64500", "as_name": "EXAMPLE", "country": "ZZ"})
w.to_db_file(sys.argv[1] + "/ipinfo.mmdb")
"#;

/// A master given a MaxMind DB (built by another project's writer) names each hop's owner from
/// it, IPv4 and IPv6, takes a replaced file of another vendor's field names without a restart,
/// and refuses to start on a file that is cut short.
#[test]
fn maxmind_dbs_built_by_another_writer_name_the_owners() {
    let dir = Scratch::with_seed_config("mmdb");
    let (code, _, err) = pipe(
        python().as_os_str(),
        &["-c", MMDB_WRITER, dir.0.to_str().unwrap()],
        b"",
    );
    assert_eq!(code, 0, "mmdb-writer failed: {err}");
    std::fs::copy(dir.path("geolite.mmdb"), dir.path("asn.mmdb")).unwrap();
    let master = Proc::master(
        &dir.0,
        &["-asn-db", "asn.mmdb", "-reload-interval", "100ms"],
    );
    let addr = master.addr();
    let google = (GOOGLE, "Google", "www.google.at");
    let now = chrono::Utc::now().to_rfc3339();
    send(
        addr,
        &ours(
            "slave1",
            google,
            &now,
            json!({
                "Success": true, "HopCount": 4, "Destination": "142.250.185.99",
                "Hops": [
                    hop(1, "192.168.1.1", &[Some(1.0)], "time-exceeded"),
                    hop(2, "1.1.1.1", &[Some(3.0)], "time-exceeded"),
                    hop(3, "9.9.9.9", &[Some(5.0)], "time-exceeded"),
                    hop(4, "142.250.185.99", &[Some(9.0)], "reached"),
                ],
            }),
        ),
    );
    let r = &results(addr, "")[0];
    assert_eq!(
        r["hops"][0]["owner"],
        json!({"special": "private (RFC 1918)"})
    );
    assert_eq!(
        r["hops"][1]["owner"],
        json!({"asn": 13335, "name": "CLOUDFLARENET", "country": ""}),
        "{r:#}"
    );
    assert!(r["hops"][2].get("owner").is_none(), "not in the DB: {r:#}");
    assert_eq!(r["as_path"], json!([13335, 15169]), "{r:#}");
    let mut v6 = hop(2, "2001:db8::99", &[Some(9.0)], "reached");
    v6["IP"] = json!("2606:4700::6810:84e5");
    send(
        addr,
        &ours(
            "slave2",
            google,
            &now,
            json!({"Success": true, "HopCount": 1, "Destination": "2606:4700::6810:84e5",
                   "Hops": [v6]}),
        ),
    );
    let r = &results(addr, "slave=slave2")[0];
    assert_eq!(r["hops"][0]["owner"]["asn"], 13335, "{r:#}");

    // The file is replaced by IPinfo's kind; a new modification time is what tells.
    std::fs::copy(dir.path("ipinfo.mmdb"), dir.path("asn.mmdb")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(dir.path("asn.mmdb"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let moved = wait_for(Duration::from_secs(10), || {
        let r = &results(addr, "slave=slave1")[0];
        (r["as_path"] == json!([64500])).then(|| r.clone())
    })
    .unwrap_or_else(|| panic!("{:#}", results(addr, "slave=slave1")[0]));
    assert_eq!(
        moved["hops"][3]["owner"],
        json!({"asn": 64500, "name": "EXAMPLE", "country": "ZZ"})
    );
    drop(master);

    // Cut inside its metadata: the marker is there, what it marks is not.
    let whole = std::fs::read(dir.path("geolite.mmdb")).unwrap();
    let marker = b"\xab\xcd\xefMaxMind.com";
    let at = whole
        .windows(marker.len())
        .rposition(|w| w == marker)
        .unwrap();
    std::fs::write(dir.path("cut.mmdb"), &whole[..at + marker.len() + 8]).unwrap();
    let (code, _, err) = run(
        &dir.0,
        std::path::Path::new(BIN),
        &["master", "-asn-db", "cut.mmdb"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("-asn-db") && err.contains("not a readable MaxMind DB"),
        "{err}"
    );
}
