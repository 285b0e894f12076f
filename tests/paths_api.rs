//! Paths over time through the real HTTP API: a master fed scripted results must report the
//! exact change events, per-hop statistics, history, metrics and webhook alerts.

mod util;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::*;

const GOOGLE: &str = "76d96640-d357-47b3-ba50-5248a7604bc9";
const LKML: &str = "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee";

/// A result of slave1 for `target` measured `minute` minutes into the script (40 min ago + m).
fn result(
    target: (&str, &str, &str),
    minute: i64,
    hops: &[&str],
    success: bool,
    dest_rtt_ms: f64,
) -> Value {
    let at = chrono::Utc::now() - chrono::Duration::minutes(40) + chrono::Duration::minutes(minute);
    let last = hops.len();
    let hops: Vec<Value> = hops
        .iter()
        .enumerate()
        .filter(|(_, a)| **a != "*")
        .map(|(i, a)| {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            let reached = success && i + 1 == last;
            let (r1, r2) = if reached {
                (dest_rtt_ms, dest_rtt_ms)
            } else {
                (1.0, 3.0)
            };
            json!({
                "Success": true, "Address": ip.octets(), "Host": "", "N": 56,
                "ElapsedTime": (r1 * 1e6) as i64, "TTL": i + 1, "IP": a,
                "Replies": [(r1 * 1e6) as i64, (r2 * 1e6) as i64],
                "Kind": if reached { "reached" } else { "time-exceeded" },
            })
        })
        .collect();
    json!({
        "Creds": {"Name": "slave1", "Password": "1234"},
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": at.to_rfc3339(),
        "Target": {"Name": target.1, "Address": target.2},
        "TargetID": target.0,
        "Success": success, "HopCount": last, "Hops": hops, "Protocol": "udp", "Flow": 0, "Queries": 2,
    })
}

fn send(addr: std::net::SocketAddr, r: &Value) {
    let a = post(addr, "/api/v1/results", r.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["stored"], true);
}

/// What the webhook receiver got: the status it answered and the body.
type Received = Arc<Mutex<Vec<(u16, Value)>>>;

/// A webhook receiver that answers 500 to the first request and 200 after.
fn webhook() -> (String, Received) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let seen: Received = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = s.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= split + 4 + len {
                        break Some(buf[split + 4..split + 4 + len].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            let mut seen = seen2.lock().unwrap();
            let status = if seen.is_empty() { 500 } else { 200 };
            seen.push((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            let _ = s.write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (url, seen)
}

#[test]
fn scripted_paths_give_exact_events_statistics_and_metrics() {
    let dir = Scratch::with_seed_config("pathsapi");
    dir.write(
        "dt-targets.json",
        &TARGETS.replace(
            "\"Address\": \"lkml.org\"",
            "\"Address\": \"lkml.org\", \"RttAlertMs\": 50",
        ),
    );
    let (hook, received) = webhook();
    let hook_flag = format!("-alert-webhook={hook}");
    let master = Proc::master(&dir.0, &[&hook_flag]);
    let addr = master.addr();
    let google = (GOOGLE, "Google", "www.google.at");
    let a = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let b = ["10.0.0.1", "10.0.0.9", "10.0.0.3"];
    let b_silent = ["10.0.0.1", "*", "10.0.0.3"];
    let down = ["10.0.0.1"];
    let mut minute = 0;
    let mut feed = |hops: &[&str], success: bool, times: usize| {
        for _ in 0..times {
            send(addr, &result(google, minute, hops, success, 20.0));
            minute += 1;
        }
    };
    feed(&a, true, 5);
    feed(&b, true, 1);
    let events = |q: &str| {
        get(addr, &format!("/api/v1/events?{q}")).json()["events"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(events("").is_empty(), "one B is not a change");
    feed(&b, true, 3);
    let ev = events("");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["kind"], "path-change");
    assert_eq!(ev[0]["from_path"], "10.0.0.1 10.0.0.2 10.0.0.3 | reached");
    assert_eq!(ev[0]["to_path"], "10.0.0.1 10.0.0.9 10.0.0.3 | reached");
    assert_eq!(ev[0]["first_diff_ttl"], 2);
    feed(&b_silent, true, 2);
    assert_eq!(events("").len(), 1, "silent-hop variants are no change");
    feed(&down, false, 2);
    let kinds: Vec<String> = events("")
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    // One incident, one alert: the break is told by `unreachable` alone, not also as a
    // path change to the broken route.
    assert_eq!(kinds, ["unreachable", "path-change"], "newest first");
    assert_eq!(events("kind=unreachable").len(), 1);
    assert_eq!(events("slave=slave2").len(), 0);

    // Current path and per-hop statistics over the 13 results (26 probes per TTL).
    let cur = get(
        addr,
        "/api/v1/paths/current?slave=slave1&target=Google&window=2h",
    )
    .json();
    let p = &cur["paths"][0];
    assert_eq!(
        p["path"], "10.0.0.1 10.0.0.9 10.0.0.3 | reached",
        "the route before the break stays current"
    );
    assert_eq!(p["changes_total"], 1);
    assert_eq!(p["results_in_window"], 13);
    let hops = p["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 3);
    assert_eq!(
        (hops[0]["sent"].as_i64(), hops[0]["answered"].as_i64()),
        (Some(26), Some(26))
    );
    assert_eq!(hops[0]["loss"], 0.0);
    assert_eq!(
        hops[0]["rtt_ms"],
        json!({"min": 1.0, "avg": 2.0, "max": 3.0, "stddev": 1.0})
    );
    assert_eq!(hops[1]["answered"], 18);
    assert!((hops[1]["loss"].as_f64().unwrap() - 8.0 / 26.0).abs() < 1e-9);
    assert_eq!(hops[1]["address"], "10.0.0.9", "the current path's hop");
    let shares: Vec<(String, i64)> = hops[1]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["address"].as_str().unwrap().to_owned(),
                a["results"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shares,
        [("10.0.0.2".to_owned(), 5), ("10.0.0.9".to_owned(), 4)]
    );
    assert!((hops[1]["addresses"][0]["share"].as_f64().unwrap() - 5.0 / 9.0).abs() < 1e-9);
    assert_eq!(hops[2]["rtt_ms"]["avg"], 20.0, "destination RTT");

    // History: each distinct path once, with its count.
    let hist = get(addr, "/api/v1/paths/history?slave=slave1&target=Google").json();
    let counts: Vec<(String, i64)> = hist["series"][0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_owned(),
                p["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("10.0.0.1 10.0.0.2 10.0.0.3 | reached".to_owned(), 5),
            ("10.0.0.1 10.0.0.9 10.0.0.3 | reached".to_owned(), 4),
            ("10.0.0.1 * 10.0.0.3 | reached".to_owned(), 2),
            ("10.0.0.1 | gave-up".to_owned(), 2),
        ]
    );

    // RTT over LKML's 50 ms threshold twice: one rtt-high alert, delivered to the webhook
    // although it failed the first time.
    let lkml = (LKML, "LKML", "lkml.org");
    for m in 0..2 {
        send(
            addr,
            &result(lkml, 20 + m, &["10.1.0.1", "10.1.0.2"], true, 120.0),
        );
    }
    assert_eq!(events("kind=rtt-high").len(), 1);
    let delivered = wait_for(Duration::from_secs(15), || {
        let r = received.lock().unwrap();
        r.iter()
            .find(|(s, b)| *s == 200 && b["kind"] == "rtt-high")
            .cloned()
    })
    .expect("the rtt-high alert reaches the webhook");
    assert_eq!(delivered.1["target_name"], "LKML");
    assert_eq!(delivered.1["threshold_ns"], 50_000_000);
    assert_eq!(
        received.lock().unwrap()[0].0,
        500,
        "the first delivery failed and was retried"
    );

    // Metrics.
    let m = get(addr, "/metrics").text();
    let line = |prefix: &str| -> String {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
            .to_owned()
    };
    let google_labels =
        format!("slave=\"slave1\",target=\"Google\",target_id=\"{GOOGLE}\",flow=\"0\"");
    assert!(line(&format!("dt_path_changes_total{{{google_labels}}}")).ends_with(" 1"));
    assert!(line(&format!("dt_target_reachable{{{google_labels}}}")).ends_with(" 0.0"));
    assert!(line(&format!("dt_path_hops{{{google_labels}}}")).ends_with(" 3.0"));
    let lkml_labels = format!("slave=\"slave1\",target=\"LKML\",target_id=\"{LKML}\",flow=\"0\"");
    assert!(line(&format!("dt_destination_rtt_seconds{{{lkml_labels}}}")).ends_with(" 0.12"));
    assert!(line("dt_results_stored_total").ends_with(" 15"));
    assert!(line("dt_path_info{").contains("path_id=\""));
    assert!(
        m.contains("dt_http_request_duration_seconds_bucket{"),
        "histogram"
    );

    // Slaves and paged results.
    let slaves = get(addr, "/api/v1/slaves").json();
    let s1 = slaves["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "slave1")
        .unwrap()
        .clone();
    assert_eq!(
        (s1["results_stored"].as_i64(), s1["online"].as_bool()),
        (Some(15), Some(true))
    );
    let s2 = slaves["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "slave2")
        .unwrap()
        .clone();
    assert_eq!(
        (s2["configured"].as_bool(), s2["online"].as_bool()),
        (Some(true), Some(false))
    );
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = get(addr, &format!("/api/v1/results?limit=4{cursor}")).json();
        for r in page["results"].as_array().unwrap() {
            assert!(
                seen.insert(r["id"].as_str().unwrap().to_owned()),
                "no result twice across pages"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 15);
}

#[test]
fn exports_over_http() {
    let dir = Scratch::with_seed_config("exports");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let google = (GOOGLE, "Google", "www.google.at");
    for m in 0..3 {
        send(
            addr,
            &result(google, m, &["10.0.0.1", "*", "10.0.0.3"], true, 20.0),
        );
    }
    let jsonl = get(addr, "/api/v1/export/results.jsonl?target=Google");
    assert_eq!(jsonl.status, 200);
    let lines: Vec<Value> = jsonl
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["path"], "10.0.0.1 * 10.0.0.3 | reached");

    let csv = get(addr, "/api/v1/export/results.csv").text();
    assert!(csv.starts_with("result_id,slave,target_id,"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 3 * 2, "a row per answering hop");

    let atlas = get(addr, "/api/v1/export/atlas.json?limit=2");
    assert!(
        atlas.head.to_ascii_lowercase().contains("x-next-cursor:"),
        "{}",
        atlas.head
    );
    let docs = atlas.json();
    assert_eq!(docs.as_array().unwrap().len(), 2);
    assert_eq!(docs[0]["dt_slave"], "slave1");
    assert_eq!(docs[0]["from"], "127.0.0.1", "the address the master saw");
    assert_eq!(
        docs[0]["result"][1]["result"],
        json!([{"x": "*"}, {"x": "*"}])
    );

    let answer = get(addr, "/api/v1/export/graph.dot?target=Google");
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/vnd.graphviz"),
        "{}",
        answer.head
    );
    let dot = answer.text();
    assert!(dot.starts_with("digraph \"Google\""), "{dot}");
    assert!(dot.contains("{ rank=source; \"slave slave1\"; }"), "{dot}");
    assert!(
        dot.contains("label=\"Google (www.google.at): current paths, "),
        "{dot}"
    );
    // Graphviz itself draws it, and the drawing is taller than wide (top to bottom).
    let (code, svg, err) = pipe("dot".as_ref(), &["-Tsvg"], dot.as_bytes());
    assert!(code == 0 && err.is_empty(), "Graphviz's dot: {code} {err}");
    let size = |attr: &str| -> f64 {
        let at = svg.find(&format!("{attr}=\"")).unwrap() + attr.len() + 2;
        svg[at..]
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(size("height") > size("width"), "{svg}");
    assert!(dot.contains("\"slave slave1\" -> \"10.0.0.1\""), "{dot}");
    assert!(
        dot.contains("\"* slave1 flow 0 hop 2\" -> \"10.0.0.3\""),
        "{dot}"
    );
    assert_eq!(get(addr, "/api/v1/export/graph.dot").status, 400);
    assert_eq!(
        get(addr, "/api/v1/export/graph.dot?target=Nope").status,
        404
    );
    assert_eq!(get(addr, "/api/v1/export/results.csv?limit=0").status, 400);
}

/// With an AS table, a series also tracks its AS path: another interface inside one AS is a
/// `path-change` only, another AS is also an `as-path-change`; with `-alert-kinds
/// as-path-change` only that one reaches the webhook, the rest is stored and shown.
#[test]
fn as_path_changes_alone_are_alerted_with_alert_kinds() {
    let dir = Scratch::with_seed_config("aspath");
    dir.write(
        "asn.tsv",
        "64.0.0.0\t64.0.255.255\t64500\tDE\tCARRIER\n\
         65.0.0.0\t65.0.255.255\t64501\tUS\tTRANSIT\n\
         66.0.0.0\t66.0.255.255\t64502\tUS\tOTHER\n\
         8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n",
    );
    let (hook, received) = webhook();
    let hook_flag = format!("-alert-webhook={hook}");
    let master = Proc::master(
        &dir.0,
        &[
            "-asn-db",
            "asn.tsv",
            "-alert-kinds",
            "as-path-change",
            &hook_flag,
        ],
    );
    let addr = master.addr();
    let google = (GOOGLE, "Google", "www.google.at");
    let first = ["192.168.1.1", "64.0.0.1", "64.0.1.1", "65.0.0.1", "8.8.8.8"];
    let inside = ["192.168.1.1", "64.0.0.1", "64.0.2.9", "65.0.0.1", "8.8.8.8"];
    let other = ["192.168.1.1", "64.0.0.1", "66.0.0.1", "8.8.8.8"];
    for (minute, hops) in [&first[..], &first, &inside, &inside, &other, &other]
        .iter()
        .enumerate()
    {
        send(addr, &result(google, minute as i64, hops, true, 20.0));
    }
    let events = get(addr, "/api/v1/events?target=Google").json();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["path-change", "path-change", "as-path-change"],
        "{events:#}"
    );
    let change = &events["events"][0];
    assert_eq!(change["detail"]["from"], json!([64500, 64501, 15169]));
    assert_eq!(change["detail"]["to"], json!([64500, 64502, 15169]));
    let only = get(addr, "/api/v1/events?kind=as-path-change").json();
    assert_eq!(only["events"].as_array().unwrap().len(), 1, "{only:#}");
    // The webhook gets the AS-level change and nothing else (its first answer is a 500, so
    // the alert comes twice).
    let delivered = wait_for(Duration::from_secs(10), || {
        let r = received.lock().unwrap();
        r.iter()
            .any(|(status, _)| *status == 200)
            .then(|| r.clone())
    })
    .expect("the as-path-change alert reaches the webhook");
    std::thread::sleep(Duration::from_millis(500));
    let all = received.lock().unwrap().clone();
    assert!(all.len() >= delivered.len());
    for (_, body) in &all {
        assert_eq!(body["kind"], "as-path-change", "{body:#}");
        assert_eq!(
            body["message"],
            "slave slave1 target Google flow 0: AS path changed: AS64500 AS64501 AS15169 -> AS64500 AS64502 AS15169"
        );
    }
    // The series page shows both AS paths of the change.
    let page = get(addr, "/ui/series?slave=slave1&target=Google").text();
    assert!(
        page.contains("AS64500 AS64501 AS15169 → AS64500 AS64502 AS15169"),
        "{page}"
    );
    drop(master);
    // An unknown kind stops the master with the list of the known ones.
    let (code, _, err) = run(
        &dir.0,
        std::path::Path::new(BIN),
        &["master", "-alert-kinds", "as-path-change,path-changes"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("'path-changes' is not an event kind") && err.contains("as-path-change"),
        "{err}"
    );
}

#[test]
fn an_edited_target_address_leaves_one_current_path_and_says_so() {
    let dir = Scratch::with_seed_config("retarget");
    let (hook, received) = webhook();
    let hook_flag = format!("-alert-webhook={hook}");
    let master = Proc::master(&dir.0, &[&hook_flag]);
    let addr = master.addr();
    let path = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    // The slave names the address its config gave it: edited from www.google.at to an
    // address (the way an operator pins a target), and back.
    let mut minute = 0;
    for address in ["www.google.at", "142.250.0.1", "www.google.at"] {
        for _ in 0..3 {
            send(
                addr,
                &result((GOOGLE, "Google", address), minute, &path, true, 20.0),
            );
            minute += 1;
        }
    }
    let cur = get(addr, "/api/v1/paths/current?target=Google").json();
    let paths = cur["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 1, "{cur:#}");
    assert_eq!(paths[0]["target_address"], "www.google.at", "{cur:#}");
    let m = get(addr, "/metrics").text();
    let info: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("dt_path_info{") && l.contains("target=\"Google\""))
        .collect();
    assert_eq!(info.len(), 1, "{info:#?}");
    let events = get(addr, "/api/v1/events?target=Google").json();
    let told: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["detail"]["to_address"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        told,
        [
            ("target-change".to_owned(), "142.250.0.1".to_owned()),
            ("target-change".to_owned(), "www.google.at".to_owned()),
        ],
        "{events:#}"
    );
    // The operator's own edit is told in the events, not sent as an alert.
    std::thread::sleep(Duration::from_millis(500));
    let alerted: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1.clone())
        .collect();
    assert!(alerted.is_empty(), "{alerted:#?}");
}

/// With `-asn-db`, the results and the current paths name each hop's owner and give the AS
/// path; an edit of the table is taken without a restart, and without the flag nothing is
/// added. A table that does not read stops the master with the reason.
#[test]
fn owners_and_as_paths_from_the_as_table() {
    let dir = Scratch::with_seed_config("asn");
    dir.write(
        "asn.tsv",
        "8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n1.1.1.0\t1.1.1.255\t13335\tUS\tCLOUDFLARENET\n",
    );
    let master = Proc::master(&dir.0, &["-asn-db", "asn.tsv", "-reload-interval", "100ms"]);
    let addr = master.addr();
    let google = (GOOGLE, "Google", "www.google.at");
    send(
        addr,
        &result(
            google,
            1,
            &["192.168.1.1", "1.1.1.1", "*", "8.8.8.8"],
            true,
            20.0,
        ),
    );
    let r = &results(addr, "")[0];
    assert_eq!(
        r["hops"][0]["owner"],
        json!({"special": "private (RFC 1918)"})
    );
    assert_eq!(
        r["hops"][1]["owner"],
        json!({"asn": 13335, "name": "CLOUDFLARENET", "country": "US"})
    );
    assert_eq!(r["as_path"], json!([13335, 15169]));
    let current = get(addr, "/api/v1/paths/current").json();
    let path = &current["paths"][0];
    assert_eq!(path["as_path"], json!([13335, 15169]), "{path:#}");
    assert_eq!(path["hops"][3]["owner"]["asn"], 15169, "{path:#}");
    // The table is edited: 1.1.1.0/24 moves to another AS.
    std::thread::sleep(Duration::from_millis(1100));
    dir.write(
        "asn.tsv",
        "8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n1.1.1.0\t1.1.1.255\t64500\tZZ\tEXAMPLE\n",
    );
    let moved = wait_for(Duration::from_secs(10), || {
        let r = &results(addr, "")[0];
        (r["as_path"] == json!([64500, 15169])).then_some(())
    });
    assert!(moved.is_some(), "{:#}", results(addr, "")[0]);
    // The exports: CSV columns, the JSON Lines objects as the API's, the graph grouped by AS
    // (which Graphviz draws), and the AS path info series.
    let csv = get(addr, "/api/v1/export/results.csv").text();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].ends_with(",asn,as_name"), "{csv}");
    assert!(
        rows.iter()
            .any(|r| r.contains(",1.1.1.1,") && r.ends_with(",64500,EXAMPLE")),
        "{csv}"
    );
    assert!(
        rows.iter().any(|r| r.ends_with(",private (RFC 1918)")),
        "{csv}"
    );
    let jsonl = get(addr, "/api/v1/export/results.jsonl").text();
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["as_path"], json!([64500, 15169]), "{jsonl}");
    let dot = get(addr, "/api/v1/export/graph.dot?target=Google").text();
    assert!(
        dot.contains("subgraph \"cluster AS64500\"") && dot.contains("label=\"AS64500 EXAMPLE\""),
        "{dot}"
    );
    let (code, svg, err) = pipe("dot".as_ref(), &["-Tsvg"], dot.as_bytes());
    assert_eq!(code, 0, "{err}\n{dot}");
    assert!(
        svg.contains("AS15169 GOOGLE") && svg.contains("8.8.8.8"),
        "{svg}"
    );
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dt_as_path_info{") && l.contains("as_path=\"64500 15169\"")),
        "{metrics}"
    );
    drop(master);

    let plain = Proc::master(&dir.0, &[]);
    send(
        plain.addr(),
        &result(google, 2, &["192.168.1.1", "8.8.8.8"], true, 20.0),
    );
    let r = &results(plain.addr(), "")[0];
    assert!(
        r.get("as_path").is_none() && r["hops"][0].get("owner").is_none(),
        "{r:#}"
    );
    assert!(
        !get(plain.addr(), "/metrics")
            .text()
            .contains("dt_as_path_info")
    );
    assert!(
        !get(plain.addr(), "/api/v1/export/graph.dot?target=Google")
            .text()
            .contains("cluster")
    );
    drop(plain);

    dir.write("bad.tsv", "8.8.8.0\t8.8.8.255\tGOOGLE\n");
    let (code, _, err) = run(
        &dir.0,
        std::path::Path::new(BIN),
        &["master", "-asn-db", "bad.tsv"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("-asn-db") && err.contains("line 1: AS number"),
        "{err}"
    );
}
