//! Per-hop loss against mtr's, in one run over one lossy network: a chain of five routers
//! whose third drops 10% of everything it forwards, each way (nftables). 500 ICMP traces of
//! ours (one probe per hop, no retry round) go to a master, whose hop table is compared with
//! `mtr -r -c 500` traced beside them: the same loss at every router within 8 points, the
//! destination in its own row with no more loss than mtr's (a later TTL's answer stands in
//! for the destination's lost one), no row past it, and no `*` in the current path.

mod netns;
mod util;

use netns::{Chain, Lab};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Command;
use util::*;

const TRACES: usize = 500;

/// mtr's report: loss in percent by hop number.
fn mtr_loss(report: &str) -> Vec<(usize, String, f64)> {
    report
        .lines()
        .filter_map(|l| {
            let (hop, rest) = l.trim_start().split_once(".|--")?;
            let mut f = rest.split_whitespace();
            let addr = f.next()?.to_owned();
            let loss = f.next()?.strip_suffix('%')?.parse().ok()?;
            Some((hop.parse().ok()?, addr, loss))
        })
        .collect()
}

#[test]
fn hop_loss_is_mtrs() {
    if netns::must_skip() {
        return;
    }
    if Command::new("mtr").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mtr is missing under CI=true (scripts/test installs mtr-tiny)"
        );
        eprintln!("skipping: mtr is not installed");
        return;
    }
    let mut lab = Lab::new("loss");
    let chain = Chain::build(&mut lab, 5, &[], false);
    lab.lossy("r3", 10);
    let target = chain.target(false);
    let dir = Scratch::with_seed_config("lossmtr");
    dir.write(
        "dt-slaves.json",
        r#"{"Slaves": [{"Name": "s1", "Password": "p1"}]}"#,
    );
    const ID: &str = "0c1d2e3f-4a5b-4c6d-8e7f-90a1b2c3d4e5";
    dir.write(
        "dt-targets.json",
        &format!(
            r#"{{"ReportURL": "", "Targets": {{"{ID}": {{"Name": "Chain", "Address": "{target}"}}}},
                "Retries": 0, "MaxHops": 12, "TimeoutMs": 500}}"#
        ),
    );
    let mut master = Proc::master(&dir.0, &[]);
    let addr: SocketAddr = master.addr();
    let ns = lab.ns("h");

    // mtr and our traces side by side, over the same seconds.
    let mtr = std::thread::spawn({
        let (ns, target) = (ns.clone(), target.clone());
        move || {
            let count = TRACES.to_string();
            netns::run(&[
                "ip", "netns", "exec", &ns, "mtr", "-n", "-r", "-c", &count, "-i", "0.05", &target,
            ])
        }
    });
    let results: Vec<Value> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    (0..TRACES / 10)
                        .map(|_| {
                            let out = lab.exec(
                                "h",
                                &[
                                    BIN, "trace", "--json", "-n", "-P", "icmp", "-q", "1", "-w",
                                    "0.5", &target,
                                ],
                            );
                            let mut r: Value = serde_json::from_str(&out).unwrap();
                            r["Creds"] = json!({"Name": "s1", "Password": "p1"});
                            r["TargetID"] = json!(ID);
                            r["Target"] = json!({"Name": "Chain", "Address": target});
                            r
                        })
                        .collect::<Vec<Value>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    for chunk in results.chunks(100) {
        let body = json!({"Creds": {"Name": "s1", "Password": "p1"}, "Results": chunk});
        let a = post(addr, "/api/v1/results:batch", body.to_string().as_bytes());
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let report = mtr.join().unwrap();
    let theirs = mtr_loss(&report);
    let current = get(addr, "/api/v1/paths/current?target=Chain&window=1d").json();
    let path = &current["paths"][0];
    let ours = path["hops"].as_array().unwrap();
    eprintln!("mtr:\n{report}");
    let rows: Vec<String> = ours
        .iter()
        .map(|h| {
            format!(
                "{} {} sent {} answered {} loss {:.1}%",
                h["ttl"],
                h["address"],
                h["sent"],
                h["answered"],
                h["loss"].as_f64().unwrap() * 100.0
            )
        })
        .collect();
    eprintln!("ours:\n{}", rows.join("\n"));

    // The current path: all six hops, none silent.
    let want: Vec<String> = (1..=6).map(|k| chain.hop(k, false)).collect();
    let hops: Vec<&str> = path["path"]
        .as_str()
        .unwrap()
        .split(" | ")
        .next()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(hops, want, "{path:#}");
    // One row per hop of the route, as mtr has.
    assert_eq!(ours.len(), 6, "{rows:#?}");
    assert_eq!(theirs.len(), 6, "{report}");
    for (k, (hop, a, loss)) in theirs.iter().enumerate() {
        assert_eq!((*hop, a.as_str()), (k + 1, want[k].as_str()), "{report}");
        let mine = ours[k]["loss"].as_f64().unwrap() * 100.0;
        if k < 5 {
            assert!(
                (mine - loss).abs() <= 8.0,
                "hop {}: our loss {mine:.1}% against mtr's {loss:.1}%",
                k + 1
            );
        } else {
            assert!(
                mine <= loss + 8.0,
                "destination: our loss {mine:.1}% against mtr's {loss:.1}%"
            );
        }
    }
    // The routers past the lossy one lose about 19% (10% each way), those before it none.
    assert!(
        ours[..3].iter().all(|h| h["loss"].as_f64().unwrap() < 0.03),
        "{rows:#?}"
    );
    assert!(ours[3]["loss"].as_f64().unwrap() > 0.08, "{rows:#?}");
    master.kill();
}
