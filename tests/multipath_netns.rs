//! Multipath discovery through real load balancers: routers in network namespaces with ECMP
//! routes and an L4 hash, a 4-way diamond and a nested one (a 2-way split whose one branch
//! splits again), each router hashing with a seed of its own.
//!
//! - `dist-traceroute trace --mda` finds every branch at 95% confidence in at least 19 of 20
//!   runs (seeds 1..20, as 20 different sets of routers would hash) for UDP and TCP in both
//!   families, and never a false link; its probe count is printed beside a fixed 16 flows.
//!   ICMP probes are hashed on addresses only by Linux, so they see one branch: the test
//!   asks for no false link there.
//! - A slave of ours with a `"Multipath": "mda"` target sends one result per round with the
//!   graph; the master stores it, a branch taken away gives exactly one `branch-lost` and its
//!   return one `branch-new`, and flow 0 moving between branches gives no event.

mod netns;
mod util;

use netns::Lab;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use util::*;

/// A topology: its forward links in order (the first is the host's to the first router);
/// link `i` is 10.97.i.0/24 and fd00:97:i::/64, `.1` on the nearer node, `.2` on the other.
struct Topology {
    links: &'static [(&'static str, &'static str)],
}

const FOUR_WAY: Topology = Topology {
    links: &[
        ("h", "r1"),
        ("r1", "a"),
        ("r1", "b"),
        ("r1", "c"),
        ("r1", "d"),
        ("a", "r6"),
        ("b", "r6"),
        ("c", "r6"),
        ("d", "r6"),
        ("r6", "t"),
    ],
};

const NESTED: Topology = Topology {
    links: &[
        ("h", "r1"),
        ("r1", "a"),
        ("r1", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "e"),
        ("c", "r6"),
        ("d", "r6"),
        ("e", "r6"),
        ("r6", "t"),
    ],
};

fn ip_of(link: usize, side: u8, v6: bool) -> String {
    if v6 {
        // As the tools print it (`fd00:97::2` for link 0).
        let a: std::net::Ipv6Addr = format!("fd00:97:{link}::{side}").parse().unwrap();
        a.to_string()
    } else {
        format!("10.97.{link}.{side}")
    }
}

impl Topology {
    fn nodes(&self) -> Vec<&'static str> {
        let mut out = vec!["h"];
        for (_, y) in self.links {
            if !out.contains(y) {
                out.push(y);
            }
        }
        out
    }

    fn out_of(&self, node: &str) -> Vec<usize> {
        (0..self.links.len())
            .filter(|i| self.links[*i].0 == node)
            .collect()
    }

    fn first_in(&self, node: &str) -> usize {
        (0..self.links.len())
            .find(|i| self.links[*i].1 == node)
            .expect("a link into it")
    }

    /// The routers that split.
    fn splitting(&self) -> Vec<&'static str> {
        self.nodes()
            .into_iter()
            .filter(|n| self.out_of(n).len() > 1)
            .collect()
    }

    fn build(&self, lab: &mut Lab) {
        for n in self.nodes() {
            lab.node(n, false);
        }
        for (i, (x, y)) in self.links.iter().enumerate() {
            lab.link(x, &format!("o{i}"), y, &format!("i{i}"));
            for (node, side, dev) in [(x, 1, format!("o{i}")), (y, 2, format!("i{i}"))] {
                lab.ip(
                    node,
                    &format!(
                        "addr add {}/24 dev {dev}\n-6 addr add {}/64 dev {dev} nodad\n",
                        ip_of(i, side, false),
                        ip_of(i, side, true)
                    ),
                );
            }
        }
        for n in self.nodes() {
            let out = self.out_of(n);
            let mut cmds = String::new();
            for v6 in [false, true] {
                let family = if v6 { "-6 " } else { "" };
                match out.len() {
                    0 => {
                        let up = self.first_in(n);
                        cmds += &format!("{family}route add default via {}\n", ip_of(up, 1, v6));
                    }
                    1 => {
                        cmds += &format!("{family}route add default via {}\n", ip_of(out[0], 2, v6))
                    }
                    _ => {
                        let hops: Vec<String> = out
                            .iter()
                            .map(|i| format!("nexthop via {}", ip_of(*i, 2, v6)))
                            .collect();
                        cmds += &format!("{family}route add default {}\n", hops.join(" "));
                    }
                }
                // The way back to the host, over the first link in.
                if n != "h" && !out.is_empty() {
                    let up = self.first_in(n);
                    if up != 0 {
                        let net = if v6 { "fd00:97:0::/64" } else { "10.97.0.0/24" };
                        cmds += &format!("{family}route add {net} via {}\n", ip_of(up, 1, v6));
                    }
                }
            }
            lab.ip(n, &cmds);
        }
        for n in self.splitting() {
            netns::run(&[
                "ip",
                "netns",
                "exec",
                &lab.ns(n),
                "sysctl",
                "-qw",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=0",
            ]);
        }
    }

    /// Gives every splitting router a hash seed of its own for run `seed`.
    fn seed(&self, lab: &Lab, seed: u32) {
        for (k, n) in self.splitting().into_iter().enumerate() {
            netns::run(&[
                "ip",
                "netns",
                "exec",
                &lab.ns(n),
                "sysctl",
                "-qw",
                &format!(
                    "net.ipv4.fib_multipath_hash_seed={}",
                    seed * 31 + k as u32 * 7919
                ),
            ]);
        }
    }

    fn target(&self, v6: bool) -> String {
        ip_of(self.first_in("t"), 2, v6)
    }

    /// Every path from the host, as the addresses that answer at TTL 1, 2, …: an IPv4 router
    /// answers from its interface on the way back, an IPv6 one from the one the probe came
    /// in on.
    fn paths(&self, v6: bool) -> Vec<Vec<String>> {
        let mut done = Vec::new();
        let mut open = vec![(0usize, Vec::new())];
        while let Some((link, mut path)) = open.pop() {
            let node = self.links[link].1;
            path.push(if node == "t" {
                self.target(v6)
            } else if v6 {
                ip_of(link, 2, true)
            } else {
                ip_of(self.first_in(node), 2, false)
            });
            let out = self.out_of(node);
            for next in &out {
                open.push((*next, path.clone()));
            }
            if out.is_empty() {
                done.push(path);
            }
        }
        done
    }

    /// The true nodes (TTL → addresses) and links.
    fn truth(&self, v6: bool) -> (Nodes, Links) {
        let mut nodes: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        let mut links = BTreeSet::new();
        for p in self.paths(v6) {
            for (i, a) in p.iter().enumerate() {
                nodes.entry(i as u64 + 1).or_default().insert(a.clone());
                if let Some(b) = p.get(i + 1) {
                    links.insert((a.clone(), b.clone()));
                }
            }
        }
        (nodes, links)
    }
}

/// Addresses by TTL.
type Nodes = BTreeMap<u64, BTreeSet<String>>;
/// Links as (from, to).
type Links = BTreeSet<(String, String)>;

/// Nodes and links of a graph in either form (the `trace --mda` JSON or the API's).
fn seen(g: &Value, addr_key: &str) -> (Nodes, Links) {
    let mut nodes = Nodes::new();
    for n in g["nodes"].as_array().unwrap() {
        nodes
            .entry(n["ttl"].as_u64().unwrap())
            .or_default()
            .insert(n[addr_key].as_str().unwrap().to_owned());
    }
    let links = g["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["from"].as_str().unwrap().to_owned(),
                l["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (nodes, links)
}

fn mda(lab: &Lab, args: &[&str]) -> Value {
    let out = lab.exec(
        "h",
        &[&[BIN, "trace", "--mda", "-n", "--json"], args].concat(),
    );
    serde_json::from_str(&out).unwrap()
}

/// Our slave `s1` in node h, reporting to the master on `outer`:`port`.
fn slave_in_h(lab: &Lab, dir: &std::path::Path, outer: std::net::Ipv4Addr, port: u16) -> Proc {
    Proc::spawn_program(
        "ip",
        dir,
        &[
            "netns",
            "exec",
            &lab.ns("h"),
            BIN,
            "slave",
            &format!("-master={outer}"),
            &format!("-master-port={port}"),
            "-name=s1",
            "-passwd=p1",
            "-log=s1.log",
            "-spool=s1.spool",
        ],
    )
}

fn every_branch_in_19_of_20_runs(name: &str, topo: &Topology) {
    if netns::must_skip() {
        return;
    }
    let mut lab = Lab::new(&name[..1]);
    topo.build(&mut lab);
    let hops = topo.paths(false)[0].len();
    for (v6, proto) in [(false, "udp"), (false, "tcp"), (true, "udp"), (true, "tcp")] {
        let (nodes, links) = topo.truth(v6);
        let dest = topo.target(v6);
        let (mut all, mut flows, mut probes) = (0, Vec::new(), Vec::new());
        for seed in 1..=20 {
            topo.seed(&lab, seed);
            let g = mda(&lab, &["-P", proto, "-q", "1", &dest]);
            let (got_nodes, got_links) = seen(&g, "addr");
            assert!(
                got_links.is_subset(&links),
                "{name} {proto} v6={v6} seed {seed}: a false link in {got_links:?}"
            );
            for (ttl, addrs) in &got_nodes {
                assert!(
                    nodes.get(ttl).is_some_and(|t| addrs.is_subset(t)),
                    "{name} {proto} v6={v6} seed {seed}: TTL {ttl} has {addrs:?}"
                );
            }
            assert_eq!(g["reached"], true, "{g:#}");
            if got_nodes == nodes {
                all += 1;
                assert_eq!(got_links, links, "{name} {proto} v6={v6} seed {seed}");
            }
            flows.push(g["flows"].as_u64().unwrap());
            probes.push(g["probes"].as_u64().unwrap());
        }
        flows.sort();
        probes.sort();
        eprintln!(
            "mda {name} {proto} v6={v6}: every branch in {all}/20 runs; flows median {} (max {}), \
             probes median {} (max {}); 16 fixed flows of this path: {} probes",
            flows[10],
            flows[19],
            probes[10],
            probes[19],
            16 * hops
        );
        assert!(
            all >= 19,
            "{name} {proto} v6={v6}: every branch in only {all} of 20 runs"
        );
    }
    // ICMP: Linux hashes it on addresses alone, so every flow takes one branch; what is
    // found must still be true.
    for v6 in [false, true] {
        let (nodes, links) = topo.truth(v6);
        let g = mda(&lab, &["-P", "icmp", "-q", "1", &topo.target(v6)]);
        let (got_nodes, got_links) = seen(&g, "addr");
        assert!(got_links.is_subset(&links), "icmp v6={v6}: {got_links:?}");
        assert!(
            got_nodes
                .iter()
                .all(|(ttl, a)| nodes.get(ttl).is_some_and(|t| a.is_subset(t))),
            "icmp v6={v6}: {got_nodes:?}"
        );
        assert_eq!(g["reached"], true, "{g:#}");
    }
}

#[test]
fn mda_finds_every_branch_of_a_four_way_diamond() {
    every_branch_in_19_of_20_runs("four-way", &FOUR_WAY);
}

#[test]
fn mda_finds_every_branch_of_a_nested_diamond() {
    every_branch_in_19_of_20_runs("nested", &NESTED);
}

/// A slave with a multipath target, through the nested diamond, against a real master: one
/// result per round with the graph; a branch removed gives one `branch-lost`, its return one
/// `branch-new`, and nothing else is told.
#[test]
fn a_slave_monitors_every_branch_and_the_master_tells_a_lost_one_once() {
    if netns::must_skip() {
        return;
    }
    let mut lab = Lab::new("mps");
    NESTED.build(&mut lab);
    NESTED.seed(&lab, 3);
    let outer = lab.uplink("h");

    let dir = Scratch::with_seed_config("mpnetns");
    let target = NESTED.target(false);
    dir.write(
        "dt-slaves.json",
        r#"{"Slaves": [{"Name": "s1", "Password": "p1"}]}"#,
    );
    dir.write(
        "dt-targets.json",
        &format!(
            r#"{{"ReportURL": "", "Targets": {{
                "6a1c2b3a-9d8e-4c7b-8a6f-5e4d3c2b1a77": {{"Name": "Nested", "Address": "{target}",
                    "Multipath": "mda", "Interval": "1s"}}
            }}, "Retries": 0, "MaxHops": 8, "TimeoutMs": 500}}"#
        ),
    );
    dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "vera", "Password": "Vera-view-1", "Role": "viewer"}]}"#,
    );
    let mut master = Proc::spawn(
        &dir.0,
        &["master", "-listen", "0.0.0.0:0", "-path-confirm", "2"],
    );
    let port = master.read_listen_line().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let _slave = slave_in_h(&lab, &dir.0, outer, port);
    let vera = basic("vera", "Vera-view-1");
    let (nodes, links) = NESTED.truth(false);
    let paths = NESTED.paths(false);
    let results_after = |n: usize| -> Vec<Value> {
        wait_for(Duration::from_secs(60), || {
            let r = results_as(addr, "target=Nested", &vera);
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|| panic!("{n} results of Nested"))
    };
    let events = || -> Vec<String> {
        let v = get_as(addr, "/api/v1/events?limit=100", &vera).json();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };

    // Six rounds: each one result, flow 0's path one of the true ones, the graph true.
    let first = results_after(6);
    let mut union: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for r in &first {
        assert_eq!(r["success"], true, "{r:#}");
        assert_eq!(r["flow"], 0, "{r:#}");
        let path: Vec<String> = r["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["address"].as_str().unwrap().to_owned())
            .collect();
        assert!(paths.contains(&path), "flow 0 went {path:?}");
        let g = &r["multipath"];
        assert!(g["flows"].as_u64().unwrap() >= 6, "{g:#}");
        let (got_nodes, got_links) = seen(g, "address");
        assert!(got_links.is_subset(&links), "a false link: {got_links:?}");
        for (ttl, a) in got_nodes {
            union.entry(ttl).or_default().extend(a);
        }
    }
    assert_eq!(union, nodes, "six rounds together see every branch");
    assert!(events().is_empty(), "{:?}", events());

    // The DOT export draws the diamonds (Graphviz draws the DOT): the newest graph's links,
    // each with its share of the flows.
    let dot = wait_for(Duration::from_secs(30), || {
        let dot = get_as(addr, "/api/v1/export/graph.dot?target=Nested", &vera).text();
        let all = links
            .iter()
            .all(|(a, b)| dot.contains(&format!("\"{a}\" -> \"{b}\" [color=")));
        all.then_some(dot)
    })
    .expect("a graph with every link");
    assert!(dot.contains(" flows\""), "{dot}");
    assert!(dot.contains("\"slave s1\" -> \"10.97.0.2\""), "{dot}");
    let (code, svg, err) = pipe("dot".as_ref(), &["-Tsvg"], dot.as_bytes());
    assert!(code == 0 && err.is_empty(), "Graphviz's dot: {code} {err}");
    assert!(svg.contains("10.97.5.2"), "{svg}");
    // The dashboard's target page draws every branch too.
    let page = wait_for(Duration::from_secs(30), || {
        let page = get_as(addr, "/ui/target?id=Nested", &vera).text();
        nodes
            .values()
            .flatten()
            .all(|a| page.contains(&format!(">{a}<")))
            .then_some(page)
    })
    .expect("a target page with every node");
    assert!(
        page.contains("multipath: flows of the newest discovery"),
        "{page}"
    );

    // Branch b (and e behind it) taken away at r1: one branch-lost, naming them.
    lab.ip(
        "r1",
        &format!("route replace default via {}\n", ip_of(1, 2, false)),
    );
    let lost = wait_for(Duration::from_secs(60), || {
        let e = events();
        (!e.is_empty()).then_some(e)
    })
    .expect("a branch-lost event");
    assert_eq!(lost, ["branch-lost"]);
    let v = get_as(addr, "/api/v1/events?limit=10", &vera).json();
    let gone = v["events"][0]["detail"]["branches"].clone();
    let gone: Vec<&str> = gone
        .as_array()
        .unwrap_or_else(|| panic!("{v:#}"))
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    for want in ["2 10.97.2.2", "3 10.97.5.2"] {
        assert!(gone.contains(&want), "{gone:?}");
    }
    // The dashboard lists the event with what went.
    let page = get_as(addr, "/ui/target?id=Nested", &vera).text();
    assert!(page.contains("branch-lost"), "{page}");
    assert!(page.contains("2 10.97.2.2"), "{page}");
    // A few more rounds without it tell nothing more.
    let n = results_as(addr, "target=Nested", &vera).len();
    results_after(n + 3);
    assert_eq!(events(), ["branch-lost"]);

    // Back again: one branch-new.
    lab.ip(
        "r1",
        &format!(
            "route replace default nexthop via {} nexthop via {}\n",
            ip_of(1, 2, false),
            ip_of(2, 2, false)
        ),
    );
    let back = wait_for(Duration::from_secs(60), || {
        let e = events();
        (e.len() >= 2).then_some(e)
    })
    .expect("a branch-new event");
    assert_eq!(back, ["branch-new", "branch-lost"]);
    let n = results_as(addr, "target=Nested", &vera).len();
    results_after(n + 3);
    assert_eq!(events(), ["branch-new", "branch-lost"]);
    master.kill();
}

/// A benchmark, not a test (`cargo test --test multipath_netns -- --ignored --nocapture`, as
/// root): one slave at the default probe-rate cap (500/s) and concurrency (16) traces 100
/// targets behind the four-way diamond, every one due each second, for 30 s with one flow
/// each and then for 30 s with `"Multipath": "mda"`, side by side in one run; prints the
/// targets traced per minute and the probes each took.
#[test]
#[ignore]
fn slave_targets_per_minute_with_multipath() {
    if netns::must_skip() {
        return;
    }
    let mut lab = Lab::new("mpb");
    FOUR_WAY.build(&mut lab);
    FOUR_WAY.seed(&lab, 5);
    let mut extra = String::new();
    for i in 1..=100 {
        extra += &format!("addr add 10.96.0.{i}/32 dev lo\n");
    }
    lab.ip("t", &extra);
    let outer = lab.uplink("h");
    for multipath in [false, true] {
        let dir = Scratch::with_seed_config(if multipath { "mpb-mda" } else { "mpb-one" });
        let extra = if multipath {
            r#", "Multipath": "mda""#
        } else {
            ""
        };
        let targets: Vec<String> = (1..=100)
            .map(|i| {
                format!(
                    r#""{}": {{"Name": "T{i}", "Address": "10.96.0.{i}", "Interval": "1s"{extra}}}"#,
                    uuid::Uuid::new_v4()
                )
            })
            .collect();
        dir.write(
            "dt-targets.json",
            &format!(
                r#"{{"ReportURL": "", "Targets": {{{}}}, "Retries": 0, "MaxHops": 8, "TimeoutMs": 500}}"#,
                targets.join(",")
            ),
        );
        dir.write(
            "dt-slaves.json",
            r#"{"Slaves": [{"Name": "s1", "Password": "p1"}]}"#,
        );
        dir.write(
            "dt-users.json",
            r#"{"Users": [{"Name": "vera", "Password": "Vera-view-1", "Role": "viewer"}]}"#,
        );
        let mut master = Proc::spawn(&dir.0, &["master", "-listen", "0.0.0.0:0"]);
        let port = master.read_listen_line().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let vera = basic("vera", "Vera-view-1");
        let stored = || -> u64 {
            let m = get_as(addr, "/metrics", &vera).text();
            m.lines()
                .find_map(|l| {
                    l.strip_prefix("dt_results_stored_total ")
                        .or_else(|| l.strip_prefix("dt_results_stored "))
                })
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        let mut slave = slave_in_h(&lab, &dir.0, outer, port);
        wait_for(Duration::from_secs(30), || (stored() > 0).then_some(())).expect("a first result");
        let (from, t0) = (stored(), std::time::Instant::now());
        std::thread::sleep(Duration::from_secs(30));
        let (to, secs) = (stored(), t0.elapsed().as_secs_f64());
        let per_min = (to - from) as f64 * 60.0 / secs;
        let probes: Vec<u64> = results_as(addr, "", &vera)
            .iter()
            .map(|r| match r["multipath"]["probes"].as_u64() {
                Some(p) => p,
                None => r["hops"].as_array().map_or(0, |h| h.len() as u64),
            })
            .collect();
        let mean = probes.iter().sum::<u64>() as f64 / probes.len().max(1) as f64;
        eprintln!(
            "slave, 100 targets behind a 4-way diamond, -max-pps 500: {}: {per_min:.0} targets/min, \
             {mean:.1} probes each (about {:.0} probes/s)",
            if multipath {
                "Multipath mda"
            } else {
                "one flow"
            },
            per_min * mean / 60.0
        );
        slave.kill();
        master.kill();
    }
}
