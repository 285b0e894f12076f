//! The original wire protocol over real HTTP: a Go slave's exact bodies, every kind of bad
//! request, the Go slave's resend loop, and our slave against a stand-in for the Go master.

mod util;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::*;

#[test]
fn go_slave_fixture_is_accepted_and_stored() {
    let dir = Scratch::with_seed_config("fixture");
    let master = Proc::master(&dir.0, &[]);
    let a = post(
        master.addr(),
        "/config/",
        br#"{"Name":"slave1","Password":"1234"}"#,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), TARGETS);
    let a = post(master.addr(), "/results/", GO_RESULT.as_bytes());
    assert_eq!(a.status, 200);
    assert_eq!(
        a.text(),
        r#"{"Success":true,"Error":"","RetryPossible":true}"#
    );
    let stored = results(master.addr(), "slave=slave1&target=Google");
    assert_eq!(stored.len(), 1);
    let r = &stored[0];
    assert_eq!(r["id"], "3a1b7c55-eabe-4536-a9ed-ec6cbdaaedb0");
    assert_eq!(r["target_id"], "76d96640-d357-47b3-ba50-5248a7604bc9");
    assert_eq!(r["hop_count"], 17);
    assert_eq!(r["hops"][0]["address"], "192.168.1.1");
    assert_eq!(r["hops"][0]["host"], "modem.home.");
    assert_eq!(r["hops"][0]["rtt_ns"], 2040972);
    assert_eq!(r["hops"][0]["size"], 52);
    assert_eq!(r["path"], "192.168.1.1 | reached");
}

#[test]
fn bad_bodies_get_clear_errors_and_store_nothing() {
    let dir = Scratch::with_seed_config("badbodies");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("malformed", b"{\"Creds\": {".to_vec()),
        ("invalid utf-8", b"{\"Creds\": \"\xff\xfe\"}".to_vec()),
        (
            "wrong types",
            GO_RESULT
                .replace("\"HopCount\":17", "\"HopCount\":\"17\"")
                .into_bytes(),
        ),
        ("array", b"[1,2,3]".to_vec()),
        (
            "address as string",
            GO_RESULT
                .replace("[192,168,1,1]", "\"192.168.1.1\"")
                .into_bytes(),
        ),
        (
            "hop count zero",
            GO_RESULT
                .replace("\"HopCount\":17", "\"HopCount\":0")
                .into_bytes(),
        ),
        (
            "ID not a UUID",
            GO_RESULT.replace("3a1b7c55-eabe", "nope").into_bytes(),
        ),
        (
            "bad time",
            GO_RESULT.replace("2019-02-07T21", "yesterday").into_bytes(),
        ),
        (
            "negative RTT",
            GO_RESULT.replace("2040972", "-1").into_bytes(),
        ),
    ];
    for (what, body) in &bodies {
        let legacy = post(addr, "/results/", body);
        assert_eq!(legacy.status, 200, "{what}: {}", legacy.text());
        let j = legacy.json();
        assert_eq!(
            (j["Success"].as_bool(), j["RetryPossible"].as_bool()),
            (Some(false), Some(false)),
            "{what}"
        );
        assert!(!j["Error"].as_str().unwrap().is_empty(), "{what}");
        let new = post(addr, "/api/v1/results", body);
        assert_eq!(new.status, 400, "{what}: {}", new.text());
        assert!(new.json()["error"].as_str().unwrap().len() > 5, "{what}");
    }
    let a = post(addr, "/config/", b"{\"Name\": 5}");
    assert_eq!(
        (a.status, a.text().as_str()),
        (400, "Can't unmarshal request body")
    );
    assert!(results(addr, "").is_empty());
    // Still serving.
    assert_eq!(
        post(addr, "/results/", GO_RESULT.as_bytes()).json()["Success"],
        true
    );
}

#[test]
fn bad_multipath_graphs_are_refused_and_a_good_one_is_stored() {
    let dir = Scratch::with_seed_config("multipath");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let with = |graph: &str| -> Vec<u8> {
        let body = GO_RESULT.strip_suffix('}').unwrap();
        format!("{body},\"Multipath\":{graph}}}").into_bytes()
    };
    let node = r#"{"TTL":1,"IP":"192.168.1.1","Flows":[0,1],"RTTs":[2040000,2100000]}"#;
    let many: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                r#"{{"TTL":{},"IP":"10.0.{}.{}","Flows":[0]}}"#,
                1 + i % 30,
                i / 250,
                i % 250
            )
        })
        .collect();
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "an address that is none",
            with(
                r#"{"Confidence":0.95,"Flows":2,"Probes":2,"Complete":true,"Nodes":[{"TTL":1,"IP":"192.168.1.300"}],"Links":[]}"#,
            ),
            "is not an address",
        ),
        (
            "a link to no node",
            with(&format!(
                r#"{{"Confidence":0.95,"Flows":2,"Probes":2,"Complete":true,"Nodes":[{node}],"Links":[{{"TTL":1,"From":"192.168.1.1","To":"10.9.9.9","Flows":[0]}}]}}"#
            )),
            "not nodes at TTLs",
        ),
        (
            "2000 nodes",
            with(&format!(
                r#"{{"Confidence":0.95,"Flows":2,"Probes":2,"Complete":true,"Nodes":[{}],"Links":[]}}"#,
                many.join(",")
            )),
            "at most 1024 nodes",
        ),
        (
            "confidence 2",
            with(&format!(
                r#"{{"Confidence":2,"Flows":2,"Probes":2,"Complete":true,"Nodes":[{node}],"Links":[]}}"#
            )),
            "Confidence",
        ),
        (
            "more flows at a node than traced",
            with(&format!(
                r#"{{"Confidence":0.95,"Flows":1,"Probes":2,"Complete":true,"Nodes":[{node}],"Links":[]}}"#
            )),
            "more than the 1 traced",
        ),
        (
            "nodes of the wrong type",
            with(
                r#"{"Confidence":0.95,"Flows":2,"Probes":2,"Complete":true,"Nodes":"all","Links":[]}"#,
            ),
            "expected a sequence",
        ),
    ];
    for (what, body, why) in &bad {
        let legacy = post(addr, "/results/", body);
        let j = legacy.json();
        assert_eq!(
            (j["Success"].as_bool(), j["RetryPossible"].as_bool()),
            (Some(false), Some(false)),
            "{what}: {j}"
        );
        let new = post(addr, "/api/v1/results", body);
        assert_eq!(new.status, 400, "{what}: {}", new.text());
        let error = new.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(why), "{what}: {error}");
    }
    assert!(results(addr, "").is_empty());
    let good = with(&format!(
        r#"{{"Confidence":0.95,"Flows":2,"Probes":3,"Complete":true,"Nodes":[{node}],"Links":[]}}"#
    ));
    assert_eq!(post(addr, "/api/v1/results", &good).status, 200);
    let stored = results(addr, "");
    assert_eq!(stored.len(), 1);
    let g = &stored[0]["multipath"];
    assert_eq!(g["flows"], 2);
    assert_eq!(g["probes"], 3);
    assert_eq!(g["nodes"][0]["address"], "192.168.1.1");
    assert_eq!(
        g["nodes"][0]["rtts_ns"],
        serde_json::json!([2040000, 2100000])
    );
}

#[test]
fn mpls_labels_are_stored_and_read_back_and_bad_ones_refused() {
    let dir = Scratch::with_seed_config("mpls");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let with = |labels: &str| -> Vec<u8> {
        GO_RESULT
            .replace("\"TTL\":1}", &format!("\"TTL\":1,\"MPLS\":{labels}}}"))
            .into_bytes()
    };
    let nine = format!(
        "[{}]",
        [r#"{"Label":16,"TC":0,"S":false,"TTL":1}"#; 9].join(",")
    );
    for (what, labels) in [
        (
            "a 21-bit label",
            r#"[{"Label":1048576,"TC":0,"S":true,"TTL":1}]"#,
        ),
        ("a 4-bit TC", r#"[{"Label":16,"TC":8,"S":true,"TTL":1}]"#),
        ("nine entries", nine.as_str()),
    ] {
        let a = post(addr, "/api/v1/results", &with(labels));
        assert_eq!(a.status, 400, "{what}: {}", a.text());
        assert!(
            a.json()["error"].as_str().unwrap().contains("MPLS"),
            "{what}"
        );
    }
    assert!(results(addr, "").is_empty());
    let good =
        with(r#"[{"Label":24001,"TC":5,"S":false,"TTL":1},{"Label":16,"TC":0,"S":true,"TTL":1}]"#);
    assert_eq!(post(addr, "/api/v1/results", &good).status, 200);
    let stored = results(addr, "");
    assert_eq!(
        stored[0]["hops"][0]["mpls"],
        serde_json::json!([
            {"label": 24001, "tc": 5, "s": false, "ttl": 1},
            {"label": 16, "tc": 0, "s": true, "ttl": 1}
        ])
    );
    // A hop without labels has no key, as before.
    assert_eq!(
        post(
            addr,
            "/results/",
            GO_RESULT.replace("3a1b7c55", "4a1b7c55").as_bytes()
        )
        .status,
        200
    );
    let plain = results(addr, "");
    assert!(plain.iter().any(|r| r["hops"][0].get("mpls").is_none()));
}

#[test]
fn wrong_password_is_401_and_does_not_hold_a_worker() {
    let dir = Scratch::with_seed_config("auth");
    let master = Proc::master(&dir.0, &["-workers=1"]);
    let addr = master.addr();
    let bad = GO_RESULT.replace("\"1234\"", "\"4321\"");
    let done_bad = Arc::new(AtomicUsize::new(0));
    // Fewer than the failures that block an address (5), so each one waits its 2 s.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (bad, done_bad) = (bad.clone(), done_bad.clone());
            std::thread::spawn(move || {
                let a = post(addr, "/results/", bad.as_bytes());
                done_bad.fetch_add(1, Ordering::SeqCst);
                a.status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // With one worker, this is only answered now if the failed logins wait without it.
    let ok = post(addr, "/config/", br#"{"Name":"slave1","Password":"1234"}"#);
    assert_eq!(ok.status, 200);
    assert_eq!(
        done_bad.load(Ordering::SeqCst),
        0,
        "the good request was answered while the bad ones waited"
    );
    for t in threads {
        assert_eq!(t.join().unwrap(), 401);
    }
    // The good login cleared its failures; five failures in a row block the slave's name
    // from this address, and the sixth request gets 429 with Retry-After, after the
    // original's 2 s like every refusal, so a Go slave's resend loop keeps that pace.
    let bad_config = br#"{"Name":"slave1","Password":"nope"}"#;
    let threads: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || post(addr, "/config/", bad_config)))
        .collect();
    for t in threads {
        let a = t.join().unwrap();
        assert_eq!((a.status, a.text().as_str()), (401, "Unauthorized\n"));
    }
    assert!(results(addr, "").is_empty());
    let asked = std::time::Instant::now();
    let a = post(addr, "/config/", bad_config);
    assert_eq!(a.status, 429);
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "a 429 waits too"
    );
    assert!(
        a.head.to_ascii_lowercase().contains("retry-after:"),
        "{}",
        a.head
    );
    let log = std::fs::read_to_string(dir.path("dt-master.log")).unwrap();
    assert_eq!(
        log.matches("too many failed logins: slave 'slave1' from address 127.0.0.1 blocked")
            .count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("nope") && !log.contains("1234"),
        "no secret in the log"
    );
}

#[test]
fn go_slave_resend_loop_stops_after_one_rejected_result() {
    let dir = Scratch::with_seed_config("resend");
    let master = Proc::master(&dir.0, &[]);
    let invalid = GO_RESULT.replace("\"HopCount\":17", "\"HopCount\":0");
    // The Go slave resends at once on any status but 200.
    let mut sent = 0;
    loop {
        sent += 1;
        let a = post(master.addr(), "/results/", invalid.as_bytes());
        if a.status == 200 || sent == 50 {
            break;
        }
    }
    assert_eq!(sent, 1);
}

#[test]
fn result_for_a_removed_target_is_stored_and_marked() {
    let dir = Scratch::with_seed_config("removed");
    let master = Proc::master(&dir.0, &[]);
    let body = GO_RESULT.replace("\"Google\"", "\"OldTarget\"");
    assert_eq!(
        post(master.addr(), "/results/", body.as_bytes()).json()["Success"],
        true
    );
    let r = results(master.addr(), "target=OldTarget");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["target_known"], false);
}

#[test]
fn routes_redirects_and_unknown_paths() {
    let dir = Scratch::with_seed_config("routes");
    let master = Proc::master(&dir.0, &[]);
    let a = post(master.addr(), "/config", b"");
    assert_eq!(a.status, 301);
    assert!(
        a.head.contains("location: /config/") || a.head.contains("Location: /config/"),
        "{}",
        a.head
    );
    let a = post(master.addr(), "/results/post", GO_RESULT.as_bytes());
    assert_eq!(
        a.json()["Success"],
        true,
        "the sample ReportURL path lands on the results handler"
    );
    let a = get(master.addr(), "/status");
    assert_eq!(a.status, 404);
    assert!(!a.text().contains("1234"), "never shows passwords");
}

#[test]
fn oversized_and_slow_requests_are_cut_off() {
    let dir = Scratch::with_seed_config("limits");
    let master = Proc::master(
        &dir.0,
        &["-header-timeout=1s", "-body-timeout=1s", "-max-body=65536"],
    );
    let addr = master.addr();
    for len in ["100000000000", "18446744073709551615"] {
        let a = raw(
            addr,
            format!("POST /results/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n")
                .as_bytes(),
        );
        // hyper itself refuses a length it cannot represent; ours refuses anything over the cap.
        let status = a.map(|a| a.status).unwrap_or(0);
        assert!(
            status == 413 || (len.len() > 12 && (400..500).contains(&status)),
            "Content-Length {len}: {status}"
        );
    }
    let big = vec![b'x'; 70_000];
    assert_eq!(post(addr, "/results/", &big).status, 413);

    // Half a header, then silence: the connection is closed, not held.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"POST /results/ HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf);
    assert!(
        n.is_ok(),
        "closed by the server, not by our read timeout: {n:?}"
    );

    // A body that stalls: 408 or a close.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"POST /results/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"Cr")
        .unwrap();
    let mut buf = Vec::new();
    assert!(s.read_to_end(&mut buf).is_ok());
    if let Some(a) = parse_answer(&buf) {
        assert_eq!(a.status, 408);
    }
    assert_eq!(
        post(addr, "/results/", GO_RESULT.as_bytes()).json()["Success"],
        true,
        "still serving"
    );
}

/// A stand-in for the original Go master: decodes bodies with the Go types' rules
/// (`Address` four numbers, `HopCount` 1..100) and answers as it does.
#[test]
fn our_slave_talks_to_an_original_master() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = seen2.clone();
            std::thread::spawn(move || go_master_conn(&mut stream, &seen));
        }
    });
    let dir = Scratch::new("gomaster");
    let port = format!("-master-port={}", addr.port());
    let _slave = Proc::spawn(
        &dir.0,
        &[
            "slave",
            "-master=127.0.0.1",
            &port,
            "-name=slave1",
            "-passwd=1234",
            "-zDebugResults",
            "-interval=1s",
        ],
    );
    let got = wait_for(Duration::from_secs(20), || {
        let s = seen.lock().unwrap();
        (s.iter().filter(|(p, _)| p == "/results/").count() >= 2).then(|| s.clone())
    })
    .expect("results posted to the original master");
    // The config comes before any result (the job poll, which the original master does not
    // know, runs beside it and may come first).
    let first_config = got
        .iter()
        .position(|(p, _)| p == "/config/")
        .expect("a config fetch");
    let first_result = got.iter().position(|(p, _)| p == "/results/").unwrap();
    assert!(first_config < first_result, "{got:?}");
    // The original fields as the Go slave sends them; our status rides in extra fields,
    // which the Go master's decoder ignores.
    let config = got[first_config].1.as_object().unwrap();
    assert_eq!(config["Name"], "slave1");
    assert_eq!(config["Password"], "1234");
    assert!(
        config["Agent"]
            .as_str()
            .unwrap()
            .starts_with("dist-traceroute/")
    );
    assert_eq!(config["DroppedTotal"], 0);
    for (_, body) in got.iter().filter(|(p, _)| p == "/results/") {
        assert_eq!(body["Creds"]["Name"], "slave1");
        let hc = body["HopCount"].as_i64().unwrap();
        assert!((1..=100).contains(&hc));
        assert!(body["Target"].as_object().unwrap().contains_key("Address"));
        for hop in body["Hops"].as_array().unwrap() {
            let a = hop["Address"].as_array().expect("Address is an array");
            assert_eq!(a.len(), 4);
            assert!(a.iter().all(|n| n.as_u64().is_some_and(|n| n <= 255)));
            assert!(hop["TTL"].as_i64().unwrap() >= 1);
            assert!(hop["ElapsedTime"].as_i64().unwrap() > 0);
        }
    }
}

fn go_master_conn(stream: &mut TcpStream, seen: &Mutex<Vec<(String, serde_json::Value)>>) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    loop {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        seen.lock().unwrap().push((path.clone(), json));
        let (ctype, answer) = if path == "/config/" {
            ("text/plain; charset=utf-8", TARGETS.to_owned())
        } else {
            (
                "application/json",
                r#"{"Success":true,"Error":"","RetryPossible":true}"#.to_owned(),
            )
        };
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
