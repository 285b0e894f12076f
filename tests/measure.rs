//! On-demand measurements through the real HTTP API with real slave processes: three of our
//! slaves (fake results) hold a job poll, a fourth name is an original Go slave that only
//! fetches its config. A measurement for `all` gets a result from each of ours at once and
//! `offline` for the Go one; a slave that went away times out instead of being waited for;
//! the scheduled series of the same target gets no event from it; who may ask, and for which
//! targets, is checked.

mod util;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use util::*;

const SLAVES: &str = r#"{"Slaves": [
    {"Name": "s1", "Password": "p1"},
    {"Name": "s2", "Password": "p2"},
    {"Name": "s3", "Password": "p3"},
    {"Name": "go1", "Password": "p4"}
]}"#;

const USERS: &str = r#"{"Users": [
    {"Name": "olga", "Password": "Olga-op-1", "Role": "operator"},
    {"Name": "vic", "Password": "Vic-view-1", "Role": "viewer"}
]}"#;

fn post_as(addr: SocketAddr, path: &str, body: &Value, authorization: Option<&str>) -> Answer {
    let body = body.to_string();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    raw(addr, &bytes).expect("an answer")
}

/// A reader's login (every read needs one: the master has a users file).
fn viewer() -> String {
    basic("vic", "Vic-view-1")
}

fn our_slave(dir: &std::path::Path, addr: SocketAddr, name: &str, password: &str) -> Proc {
    let log = format!("-log={name}.log");
    let spool = format!("-spool={name}.spool");
    slave(
        dir,
        addr,
        &[
            &format!("-name={name}"),
            &format!("-passwd={password}"),
            &log,
            &spool,
            "-interval=3s",
        ],
    )
}

/// The status of measurement `id` once `done` says so (or after `limit`).
fn settled(addr: SocketAddr, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/api/v1/measurements/{id}");
    wait_for(limit, || {
        let v = get_as(addr, &path, &viewer()).json();
        done(&v).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "measurement {id} never settled: {}",
            get_as(addr, &path, &viewer()).text()
        )
    })
}

fn states(v: &Value) -> Vec<(String, String)> {
    v["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_measurement_reaches_every_connected_slave_at_once() {
    let dir = Scratch::with_seed_config("measure");
    dir.write("dt-slaves.json", SLAVES);
    dir.write("dt-users.json", USERS);
    let master = Proc::master(&dir.0, &["-measure-allow=192.0.2.0/24"]);
    let addr = master.addr();
    let _s1 = our_slave(&dir.0, addr, "s1", "p1");
    let _s2 = our_slave(&dir.0, addr, "s2", "p2");
    let mut s3 = our_slave(&dir.0, addr, "s3", "p3");
    // An original Go slave only fetches its config (no Agent, no job poll).
    let go = post(addr, "/config/", br#"{"Name":"go1","Password":"p4"}"#);
    assert_eq!(go.status, 200, "{}", go.text());
    wait_for_our_slaves(addr, &viewer(), 3);
    // The metrics count the polls held.
    wait_for(Duration::from_secs(10), || {
        let m = get_as(addr, "/metrics", &viewer()).text();
        m.lines()
            .any(|l| l == "dt_job_polls_waiting 3.0")
            .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "three polls held: {}",
            get_as(addr, "/metrics", &viewer()).text()
        )
    });
    // Let the first scheduled results in, so the scheduled series exist before.
    wait_for(Duration::from_secs(20), || {
        (results_as(addr, "", &viewer()).len() >= 6).then_some(())
    })
    .expect("scheduled results");
    let events_before = get_as(addr, "/api/v1/events", &viewer()).json()["events"]
        .as_array()
        .unwrap()
        .len();

    let olga = basic("olga", "Olga-op-1");
    let ask = json!({"target": "Google", "slaves": "all", "protocol": "icmp", "flows": 2});
    let made = post_as(addr, "/api/v1/measurements", &ask, Some(&olga));
    assert_eq!(made.status, 202, "{}", made.text());
    let made = made.json();
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(
        made["target"], "www.google.at",
        "a configured target by name"
    );
    assert_eq!(made["status"], "running");
    let go1 = made["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "go1")
        .unwrap()
        .clone();
    assert_eq!(go1["state"], "offline", "{made:#}");
    assert!(
        go1["reason"].as_str().unwrap().contains("Go slave"),
        "{go1}"
    );
    // The polls are woken: well within one poll's 25 s wait every slave has both flows in.
    let done = settled(addr, &id, Duration::from_secs(15), |v| {
        v["status"] == "done"
    });
    assert_eq!(
        states(&done),
        [
            ("go1".into(), "offline".into()),
            ("s1".into(), "done".into()),
            ("s2".into(), "done".into()),
            ("s3".into(), "done".into()),
        ],
        "{done:#}"
    );
    for s in done["slaves"].as_array().unwrap().iter().skip(1) {
        let results = s["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "{s:#}");
        let mut flows: Vec<i64> = results
            .iter()
            .map(|r| r["flow"].as_i64().unwrap())
            .collect();
        flows.sort();
        assert_eq!(flows, [0, 1]);
        for r in results {
            assert_eq!(r["measurement"], id.as_str());
            assert_eq!(r["slave"], s["name"]);
            assert_eq!(r["protocol"], "icmp");
            assert_eq!(r["target_address"], "www.google.at");
        }
        assert_eq!(s["result"], results[0]);
    }
    // The answered polls are timed apart from the API's requests.
    let metrics = get_as(addr, "/metrics", &viewer()).text();
    assert!(
        metrics.contains("dt_http_request_duration_seconds_count{route=\"jobs\"}"),
        "{metrics}"
    );
    // Stored like any other result, and marked.
    let marked: Vec<Value> = results_as(addr, "", &viewer())
        .into_iter()
        .filter(|r| r["measurement"] == id.as_str())
        .collect();
    assert_eq!(marked.len(), 6);
    // The scheduled series of Google saw nothing of it: no event, no on-demand series.
    let events_after = get_as(addr, "/api/v1/events", &viewer()).json()["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(events_before, events_after);
    let current = get_as(addr, "/api/v1/paths/current", &viewer()).json();
    assert!(
        current["paths"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["target_id"] != "on-demand"),
        "{current:#}"
    );

    the_measure_command_prints_every_path_and_the_merged_view(&dir, addr);

    // A slave that went away is not waited for: its run times out at the deadline.
    s3.kill();
    let ask = json!({"target": "192.0.2.7", "slaves": ["s1", "s3"], "timeout_s": 5});
    let made = post_as(addr, "/api/v1/measurements", &ask, Some(&olga));
    assert_eq!(made.status, 202, "{}", made.text());
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let done = settled(addr, &id, Duration::from_secs(15), |v| {
        v["status"] == "done"
    });
    assert_eq!(
        states(&done),
        [
            ("s1".into(), "done".into()),
            ("s3".into(), "timed-out".into())
        ],
        "{done:#}"
    );
    // "N of them": one of the slaves still connected.
    let made = post_as(
        addr,
        "/api/v1/measurements",
        &json!({"target": "www.google.at", "slaves": 1}),
        Some(&olga),
    );
    assert_eq!(made.status, 202, "{}", made.text());
    let picked = states(&made.json());
    assert_eq!(picked.len(), 1);
    assert!(
        ["s1", "s2", "s3"].contains(&picked[0].0.as_str()),
        "{picked:?}"
    );
}

#[test]
fn only_operators_start_measurements_and_only_to_allowed_targets() {
    let dir = Scratch::with_seed_config("measureauth");
    dir.write("dt-slaves.json", SLAVES);
    dir.write("dt-users.json", USERS);
    let master = Proc::master(
        &dir.0,
        &[
            "-measure-allow=example.net,192.0.2.0/24",
            "-measure-max-probes=1000",
        ],
    );
    let addr = master.addr();
    let ask = json!({"target": "Google"});
    let none = post_as(addr, "/api/v1/measurements", &ask, None);
    assert_eq!(none.status, 401, "{}", none.text());
    let wrong = post_as(
        addr,
        "/api/v1/measurements",
        &ask,
        Some(&basic("olga", "nope")),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let as_viewer = post_as(
        addr,
        "/api/v1/measurements",
        &ask,
        Some(&basic("vic", "Vic-view-1")),
    );
    assert_eq!(as_viewer.status, 403, "{}", as_viewer.text());
    assert!(
        as_viewer.text().contains("operator"),
        "{}",
        as_viewer.text()
    );
    let olga = basic("olga", "Olga-op-1");
    for (body, status, says) in [
        (json!({"target": "198.51.100.1"}), 400, "-measure-allow"),
        (json!({"target": "evil.example"}), 400, "-measure-allow"),
        (json!({"target": "not a host"}), 400, "neither"),
        (
            json!({"target": "Google", "slaves": ["nosuch"]}),
            400,
            "nosuch",
        ),
        (json!({"target": "Google", "flows": 99}), 400, "flows"),
        (json!({"target": "Google", "protocol": "sctp"}), 400, "sctp"),
        (json!({"target": "Google", "extra": 1}), 400, "extra"),
        (json!({"target": "Google", "slaves": "some"}), 400, "all"),
        (
            json!({"target": "Google", "flows": 16}),
            400,
            "-measure-max-probes",
        ),
        (json!({"target": "example.net"}), 202, ""),
        (json!({"target": "192.0.2.200"}), 202, ""),
    ] {
        let a = post_as(addr, "/api/v1/measurements", &body, Some(&olga));
        assert_eq!(a.status, status, "{body}: {}", a.text());
        assert!(a.text().contains(says), "{body}: {}", a.text());
    }
    let unknown = get_as(addr, "/api/v1/measurements/nosuch", &viewer());
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    // The slaves' endpoint keeps its own check.
    let poll = post(
        addr,
        "/api/v1/jobs",
        br#"{"Creds":{"Name":"s1","Password":"wrong"},"Wait":0}"#,
    );
    assert_eq!(poll.status, 401, "{}", poll.text());
    let poll = post(addr, "/api/v1/jobs", b"{\"Creds\": 5}");
    assert_eq!(poll.status, 400, "{}", poll.text());
    let master_log = std::fs::read_to_string(dir.path("dt-master.log")).unwrap_or_default();
    assert!(
        master_log.contains("by olga"),
        "every measurement is logged with who asked: {master_log}"
    );
}

/// `dist-traceroute measure` against the master of the test above, with s1..s3 connected.
fn the_measure_command_prints_every_path_and_the_merged_view(dir: &Scratch, addr: SocketAddr) {
    let measure = |args: &[&str], password: &str| {
        std::process::Command::new(BIN)
            .arg("measure")
            .args(args)
            .arg(format!("--master={addr}"))
            .env("DT_PASSWORD", password)
            .current_dir(&dir.0)
            .output()
            .unwrap()
    };
    let out = measure(
        &["Google", "--from", "all", "-P", "icmp", "--user", "olga"],
        "Olga-op-1",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("measurement "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no measurement id in {text}"))
        .to_owned();
    for s in ["s1", "s2", "s3"] {
        assert!(
            text.contains(&format!("\n{s}: traceroute to www.google.at (")),
            "{text}"
        );
    }
    assert!(text.contains("\ngo1: offline ("), "{text}");
    let (_, merged) = text
        .split_once("\nmerged: 3 results from 3 slaves\n")
        .unwrap_or_else(|| panic!("no merged view: {text}"));
    // Each address every slave's stored result has at a TTL is on that TTL's lines of the
    // merged view, with the slave's name.
    let mut rows: Vec<(u64, String, Vec<String>)> = Vec::new();
    let mut ttl = 0;
    for line in merged.lines() {
        let mut words = line.split_whitespace();
        if !line.starts_with("    ") {
            ttl = words.next().unwrap().parse().unwrap();
        }
        let address = words.next().unwrap().to_owned();
        rows.push((ttl, address, words.map(str::to_owned).collect()));
    }
    let status = get_as(addr, &format!("/api/v1/measurements/{id}"), &viewer()).json();
    let mut checked = 0;
    for s in status["slaves"].as_array().unwrap() {
        for r in s["results"].as_array().unwrap() {
            for h in r["hops"].as_array().unwrap() {
                let (t, a) = (h["ttl"].as_u64().unwrap(), h["address"].as_str().unwrap());
                let name = s["name"].as_str().unwrap().to_owned();
                assert!(
                    rows.iter()
                        .any(|(rt, ra, who)| *rt == t && ra == a && who.contains(&name)),
                    "{name} saw {a} at {t}: {merged}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "{status:#}");

    // --json prints the API's answer once it is over; a viewer may not ask (exit 1, why).
    dir.write("olga.pw", "Olga-op-1\n");
    let out = measure(
        &[
            "www.google.at",
            "--from=s1,s2",
            "--json",
            "--user=olga",
            "--passwd-file=olga.pw",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["status"], "done");
    assert_eq!(
        states(&v),
        [("s1".into(), "done".into()), ("s2".into(), "done".into())]
    );
    let out = measure(&["Google", "--user", "vic"], "Vic-view-1");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the measurement (403)"), "{err}");
}

/// A result of `probe` for Google, `minute` minutes into a script that started an hour ago.
fn probe_result(minute: i64, hops: &[&str], success: bool) -> Value {
    let at = chrono::Utc::now() - chrono::Duration::minutes(60) + chrono::Duration::minutes(minute);
    let last = hops.len();
    let hops: Vec<Value> = hops
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            json!({"Success": true, "Address": ip.octets(), "Host": "", "N": 56,
                   "ElapsedTime": 2_000_000, "TTL": i + 1, "IP": a,
                   "Kind": if success && i + 1 == last { "reached" } else { "time-exceeded" }})
        })
        .collect();
    json!({
        "Creds": {"Name": "probe", "Password": "p5"},
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": at.to_rfc3339(),
        "Target": {"Name": "Google", "Address": "www.google.at"},
        "TargetID": "76d96640-d357-47b3-ba50-5248a7604bc9",
        "Success": success, "HopCount": last, "Hops": hops, "Protocol": "udp", "Flow": 0,
    })
}

#[test]
fn a_path_change_is_followed_up_by_every_slave_and_the_answer_attached() {
    let dir = Scratch::with_seed_config("followup");
    dir.write(
        "dt-slaves.json",
        r#"{"Slaves": [
            {"Name": "s1", "Password": "p1"},
            {"Name": "s2", "Password": "p2"},
            {"Name": "probe", "Password": "p5"}
        ]}"#,
    );
    dir.write("dt-users.json", USERS);
    let (hook, got) = webhook_sink();
    let master = Proc::master(
        &dir.0,
        &[
            "-measure-follow-up",
            "-path-confirm=1",
            &format!("-alert-webhook={hook}"),
        ],
    );
    let addr = master.addr();
    let _s1 = our_slave(&dir.0, addr, "s1", "p1");
    let _s2 = our_slave(&dir.0, addr, "s2", "p2");
    wait_for_our_slaves(addr, &viewer(), 2);

    let auth = format!("Authorization: {}", viewer());
    let mut stream = util::sse::Stream::open(addr, "/api/v1/stream?kind=measurement", &[&auth]);
    assert_eq!(stream.status, 200, "{}", stream.head);

    // The scripted slave's path to Google changes at hop 2.
    let send = |r: Value| {
        let a = post(addr, "/api/v1/results", r.to_string().as_bytes());
        assert_eq!(a.status, 200, "{}", a.text());
    };
    let a = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let b = ["10.0.0.1", "10.0.0.9", "10.0.0.3"];
    for m in 0..3 {
        send(probe_result(m, &a, true));
    }
    for m in 3..5 {
        send(probe_result(m, &b, true));
    }
    let probe_events = || {
        get_as(addr, "/api/v1/events?slave=probe", &viewer()).json()["events"]
            .as_array()
            .unwrap()
            .clone()
    };
    let change = wait_for(Duration::from_secs(10), || {
        probe_events()
            .into_iter()
            .find(|e| e["kind"] == "path-change" && e["follow_up"]["id"].is_string())
    })
    .unwrap_or_else(|| panic!("no path-change with a follow-up: {:#?}", probe_events()));
    let id = change["follow_up"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        change["follow_up"]["url"],
        format!("/api/v1/measurements/{id}")
    );

    // Every slave of ours traced Google at once, four flows each; the scripted one is no
    // slave of ours and is told as such, not waited for.
    let done = settled(addr, &id, Duration::from_secs(20), |v| {
        v["status"] == "done"
    });
    assert_eq!(done["requested_by"], "follow-up");
    assert_eq!(done["event_id"], change["id"]);
    assert_eq!(
        states(&done),
        [
            ("probe".into(), "offline".into()),
            ("s1".into(), "done".into()),
            ("s2".into(), "done".into()),
        ],
        "{done:#}"
    );
    for s in done["slaves"].as_array().unwrap().iter().skip(1) {
        assert_eq!(s["results"].as_array().unwrap().len(), 4, "{s:#}");
    }
    let summary = done["summary"].as_str().unwrap().to_owned();
    assert!(
        summary.starts_with("every slave that answered reached www.google.at (2 of 3)"),
        "{summary}"
    );

    // The live stream told the measurement as it went, ending with what it found.
    let mut told = Vec::new();
    while let Some(e) = stream.next(Duration::from_secs(5)) {
        assert_eq!(e.event, "measurement");
        let v = e.json();
        assert_eq!(v["id"], id.as_str());
        let over = v["status"] == "done";
        told.push(v);
        if over {
            break;
        }
    }
    assert!(told.len() >= 2, "{told:#?}");
    assert_eq!(told[0]["status"], "running");
    let last = told.last().unwrap();
    assert_eq!(last["status"], "done", "{told:#?}");
    assert_eq!(last["summary"], summary.as_str());
    assert_eq!(last["slaves"][2]["results"].as_array().unwrap().len(), 4);

    // The scripted slave's break a minute later joins the follow-up already running.
    send(probe_result(5, &["10.0.0.1"], false));
    send(probe_result(6, &["10.0.0.1"], false));
    let down = wait_for(Duration::from_secs(10), || {
        probe_events()
            .into_iter()
            .find(|e| e["kind"] == "unreachable" && e["follow_up"]["id"].is_string())
    })
    .unwrap_or_else(|| panic!("no unreachable with a follow-up: {:#?}", probe_events()));
    assert_eq!(down["follow_up"]["id"], id.as_str(), "{down:#}");
    assert_eq!(down["follow_up"]["summary"], summary.as_str());

    // The webhook got the change naming its follow-up, then what the follow-up found.
    let bodies = wait_for(Duration::from_secs(10), || {
        let g = got.lock().unwrap().clone();
        g.iter().any(|b| b["kind"] == "follow-up").then_some(g)
    })
    .expect("the follow-up reaches the webhook");
    let alert = bodies
        .iter()
        .find(|b| b["kind"] == "path-change" && b["slave"] == "probe")
        .expect("the path-change alert");
    assert_eq!(alert["follow_up"]["id"], id.as_str());
    let told = bodies.iter().find(|b| b["kind"] == "follow-up").unwrap();
    // It names every event it answers that came before it was told: the change, and the
    // break when that joined in time.
    let answered = told["events"].as_array().unwrap();
    assert_eq!(answered[0], change["id"], "{told:#}");
    assert!(answered[1..].iter().all(|e| *e == down["id"]), "{told:#}");
    assert_eq!(told["summary"], summary.as_str());
    assert_eq!(told["measurement"]["id"], id.as_str());
    assert_eq!(
        told["measurement"]["slaves"][1]["results"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // The dashboard's overview shows it under the event.
    let page = get_as(addr, "/", &viewer()).text();
    assert!(
        page.contains(&format!(
            "href=\"/api/v1/measurements/{id}\">follow-up</a>: {summary}"
        )),
        "{page}"
    );
}
