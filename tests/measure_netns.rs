//! An on-demand measurement traced for real: three of our slaves run real traces (raw
//! sockets) from a host behind a chain of three routers built of network namespaces, and
//! reach the master over a veth pair. A measurement for `all` with two flows gives each slave
//! two results with the chain's exact path; the `measure` command's merged view shows every
//! hop seen by all three.

mod netns;
mod util;

use netns::{Chain, Lab};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use util::*;

#[test]
fn a_measurement_traced_for_real_through_routers() {
    if netns::must_skip() {
        return;
    }
    let mut lab = Lab::new("msr");
    let chain = Chain::build(&mut lab, 3, &[], false);
    let outer = lab.uplink("h");

    let dir = Scratch::with_seed_config("msrnetns");
    let target = chain.target(false);
    dir.write(
        "dt-slaves.json",
        r#"{"Slaves": [
            {"Name": "s1", "Password": "p1"},
            {"Name": "s2", "Password": "p2"},
            {"Name": "s3", "Password": "p3"}
        ]}"#,
    );
    dir.write(
        "dt-targets.json",
        &format!(
            r#"{{"ReportURL": "", "Targets": {{
                "4f1c2b3a-9d8e-4c7b-8a6f-5e4d3c2b1a09": {{"Name": "Chain", "Address": "{target}"}}
            }}, "Retries": 0, "MaxHops": 8, "TimeoutMs": 500}}"#
        ),
    );
    dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "olga", "Password": "Olga-op-1", "Role": "operator"}]}"#,
    );
    let mut master = Proc::spawn(&dir.0, &["master", "-listen", "0.0.0.0:0"]);
    let port = master.read_listen_line().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ns = lab.ns("h");
    let slaves: Vec<Proc> = (1..=3)
        .map(|n| {
            Proc::spawn_program(
                "ip",
                &dir.0,
                &[
                    "netns",
                    "exec",
                    &ns,
                    BIN,
                    "slave",
                    &format!("-master={outer}"),
                    &format!("-master-port={port}"),
                    &format!("-name=s{n}"),
                    &format!("-passwd=p{n}"),
                    &format!("-log=s{n}.log"),
                    &format!("-spool=s{n}.spool"),
                    "-interval=1m",
                ],
            )
        })
        .collect();
    let olga = basic("olga", "Olga-op-1");
    wait_for_our_slaves(addr, &olga, 3);

    let body = json!({"target": "Chain", "slaves": "all", "flows": 2}).to_string();
    let head = format!(
        "POST /api/v1/measurements HTTP/1.1\r\nHost: t\r\nAuthorization: {olga}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let made = raw(addr, &[head.as_bytes(), body.as_bytes()].concat()).expect("an answer");
    assert_eq!(made.status, 202, "{}", made.text());
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let done: Value = wait_for(Duration::from_secs(30), || {
        let v = get_as(addr, &format!("/api/v1/measurements/{id}"), &olga).json();
        (v["status"] == "done").then_some(v)
    })
    .expect("the measurement finished");
    let want: Vec<String> = (1..=4).map(|k| chain.hop(k, false)).collect();
    for s in done["slaves"].as_array().unwrap() {
        assert_eq!(s["state"], "done", "{s:#}");
        let results = s["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "{s:#}");
        let mut flows: Vec<i64> = results
            .iter()
            .map(|r| r["flow"].as_i64().unwrap())
            .collect();
        flows.sort();
        assert_eq!(flows, [0, 1]);
        for r in results {
            assert_eq!(r["success"], true, "{r:#}");
            assert_eq!(r["measurement"], id.as_str());
            let path: Vec<&str> = r["hops"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["address"].as_str().unwrap())
                .collect();
            assert_eq!(path, want, "{r:#}");
            assert!(r["origin"].is_null() || r["origin"]["debug"] != true);
        }
    }

    // The command's merged view: every hop of the chain, seen by all three.
    let out = std::process::Command::new(BIN)
        .args([
            "measure", "Chain", "--from", "all", "-P", "icmp", "--user", "olga",
        ])
        .arg(format!("--master={addr}"))
        .env("DT_PASSWORD", "Olga-op-1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = text
        .split_once("\nmerged: 3 results from 3 slaves\n")
        .unwrap_or_else(|| panic!("{text}"))
        .1;
    let rows: Vec<Vec<&str>> = merged
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{merged}");
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(
            row.as_slice(),
            [&(k + 1).to_string(), want[k].as_str(), "s1", "s2", "s3"],
            "{merged}"
        );
    }
    drop(slaves);
    master.kill();
}
