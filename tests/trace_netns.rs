//! Real-network tests: the engine traces through routers built from network namespaces.
//! They need root (`ip netns`); without it they print why and pass, unless CI=true.
//!
//! Each test builds its own namespaces (names carry the pid and a counter), runs the
//! `trace` example inside the prober namespace, and checks every hop.

mod netns;

use netns::{Chain, Lab, hops, must_skip};
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// The hops a trace through `chain` to hop `k`'s address must show when router `silent`
/// never answers (the target is hop `k` itself).
fn expected(chain: &Chain, k: usize, silent: usize, v6: bool) -> Vec<Option<String>> {
    (1..=k)
        .map(|h| (h != silent).then(|| chain.hop(h, v6)))
        .collect()
}

#[test]
fn chain_every_protocol_both_families_with_silent_router() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("c");
    let chain = Chain::build(&mut lab, 6, &[3], false);
    for v6 in [false, true] {
        let target = chain.target(v6);
        for proto in ["udp", "icmp", "tcp"] {
            let out = lab.trace("h", &["-p", proto, &target]);
            let want = expected(&chain, 7, 3, v6);
            assert_eq!(hops(&out[0]), want, "{proto} v6={v6}: {}", out[0]);
            assert_eq!(out[0]["reached"], true, "{proto} v6={v6}");
            // Kernel-stamped RTTs on veth are well under a millisecond, and never absent
            // for an answered hop.
            let rtts = out[0]["hops"].as_array().unwrap();
            assert!(
                rtts.iter()
                    .all(|h| h["addr"].is_null() == h["rtt_ns"].is_null())
            );
            // Every node here starts its packets at TTL (hop limit) 64, and the reply from
            // hop k crosses k - 1 routers on its way back.
            let reply_ttls: Vec<Option<u64>> =
                rtts.iter().map(|h| h["reply_ttl"].as_u64()).collect();
            let want: Vec<Option<u64>> = (1..=7u64)
                .map(|k| (k != 3).then_some(64 - (k - 1)))
                .collect();
            assert_eq!(reply_ttls, want, "{proto} v6={v6}: {}", out[0]);
        }
    }
}

#[test]
fn silent_target_ends_after_gap_limit() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("s");
    let chain = Chain::build(&mut lab, 6, &[3], false);
    for (v6, q) in [(false, "10.99.200.2"), (true, "fd00:99:c8::2")] {
        let out = lab.trace("h", &["--timeout-ms", "300", q]);
        // Six routers (the third silent), then five silent hops (the gap limit), no more.
        let mut want = expected(&chain, 6, 3, v6);
        want.extend([None, None, None, None, None]);
        assert_eq!(hops(&out[0]), want, "v6={v6}: {}", out[0]);
        assert_eq!(out[0]["reached"], false);
    }
}

#[test]
fn a_tight_probe_rate_cap_slows_traces_but_loses_no_hop() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("p");
    let chain = Chain::build(&mut lab, 6, &[3], false);
    // 40 traces share 200 probes/s: each of a trace's sends waits ~0.2 s for its slot, far
    // past the 150 ms timeout, yet every reply came in time and must count.
    let target = chain.target(false);
    let out = lab.trace(
        "h",
        &[
            "--flows",
            "40",
            "--rate",
            "200",
            "--timeout-ms",
            "150",
            &target,
        ],
    );
    assert_eq!(out.len(), 40);
    for t in &out {
        assert_eq!(hops(t), expected(&chain, 7, 3, false), "{t}");
        assert_eq!(t["reached"], true, "{t}");
    }
}

#[test]
fn default_icmp_rate_limits_still_give_exact_paths() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("r");
    let chain = Chain::build(&mut lab, 6, &[], true);
    for v6 in [false, true] {
        for proto in ["udp", "icmp"] {
            let out = lab.trace("h", &["-p", proto, &chain.target(v6)]);
            assert_eq!(hops(&out[0]), expected(&chain, 7, 0, v6), "{proto} v6={v6}");
        }
    }
}

/// `h - r1 =(a|b)= r4 - t`, both families: r1 balances over a and b, IPv4 by the L4 hash
/// (addresses, protocol, ports) and IPv6 by the L3 hash (addresses, flow label, next
/// header), Linux's default for IPv6.
fn ecmp_lab(lab: &mut Lab) {
    for n in ["h", "r1", "a", "b", "r4", "t"] {
        lab.node(n, false);
    }
    for (x, ix, y, iy, net) in [
        ("h", "right", "r1", "left", "99:0"),
        ("r1", "toa", "a", "left", "98:1"),
        ("r1", "tob", "b", "left", "98:2"),
        ("a", "right", "r4", "froma", "98:3"),
        ("b", "right", "r4", "fromb", "98:4"),
        ("r4", "right", "t", "left", "98:5"),
    ] {
        lab.link(x, ix, y, iy);
        let (v4, v6) = (net.replace(':', "."), format!("fd00:{net}::"));
        lab.ip(
            x,
            &format!("addr add 10.{v4}.1/24 dev {ix}\naddr add {v6}1/64 dev {ix} nodad\n"),
        );
        lab.ip(
            y,
            &format!("addr add 10.{v4}.2/24 dev {iy}\naddr add {v6}2/64 dev {iy} nodad\n"),
        );
    }
    lab.ip(
        "h",
        "route add default via 10.99.0.2\n-6 route add default via fd00:99:0::2\n",
    );
    lab.ip(
        "r1",
        "route add default nexthop via 10.98.1.2 nexthop via 10.98.2.2\n\
         -6 route add default nexthop via fd00:98:1::2 nexthop via fd00:98:2::2\n",
    );
    netns::run(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("r1"),
        "sysctl",
        "-qw",
        "net.ipv4.fib_multipath_hash_policy=1",
        "net.ipv6.fib_multipath_hash_policy=0",
    ]);
    for (n, fwd, back) in [
        ("a", "98:3", "98:1"),
        ("b", "98:4", "98:2"),
        ("r4", "98:5", "98:3"),
    ] {
        let (f4, b4) = (fwd.replace(':', "."), back.replace(':', "."));
        lab.ip(
            n,
            &format!(
                "route add default via 10.{f4}.2\nroute add 10.99.0.0/24 via 10.{b4}.1\n\
                 -6 route add default via fd00:{fwd}::2\n-6 route add fd00:99:0::/64 via fd00:{back}::1\n"
            ),
        );
    }
    lab.ip(
        "t",
        "route add default via 10.98.5.1\n-6 route add default via fd00:98:5::1\n",
    );
}

#[test]
fn ecmp_each_flow_keeps_one_branch_and_flows_find_both() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("e");
    ecmp_lab(&mut lab);
    for (v6, proto) in [
        (false, "udp"),
        (false, "tcp"),
        (false, "icmp"),
        (true, "udp"),
        (true, "tcp"),
        (true, "icmp"),
    ] {
        let (first, a, b, dest) = if v6 {
            ("fd00:99::2", "fd00:98:1::2", "fd00:98:2::2", "fd00:98:5::2")
        } else {
            ("10.99.0.2", "10.98.1.2", "10.98.2.2", "10.98.5.2")
        };
        let mut branch: HashMap<u64, BTreeSet<Vec<Option<String>>>> = HashMap::new();
        for _run in 0..4 {
            for t in lab.trace("h", &["-p", proto, "--flows", "16", dest]) {
                let h = hops(&t);
                assert_eq!(h.len(), 4, "{t}");
                assert_eq!(h[0].as_deref(), Some(first));
                let via_a = h[1].as_deref() == Some(a);
                assert!(via_a || h[1].as_deref() == Some(b), "{t}");
                // An IPv4 router answers from its interface on the route back (via a), an
                // IPv6 router from the one the probe came in on: the branch it took.
                let r4 = match (v6, via_a) {
                    (false, _) => "10.98.3.2",
                    (true, true) => "fd00:98:3::2",
                    (true, false) => "fd00:98:4::2",
                };
                assert_eq!(h[2].as_deref(), Some(r4), "{t}");
                assert_eq!(h[3].as_deref(), Some(dest));
                branch
                    .entry(t["flow"].as_u64().unwrap())
                    .or_default()
                    .insert(h);
            }
        }
        assert_eq!(branch.len(), 16);
        for (flow, seen) in &branch {
            assert_eq!(
                seen.len(),
                1,
                "{proto} v6={v6} flow {flow} took several paths: {seen:?}"
            );
        }
        let all: BTreeSet<_> = branch.values().flatten().collect();
        if v6 || proto != "icmp" {
            assert_eq!(all.len(), 2, "{proto} v6={v6}: 16 flows all took {all:?}");
        } else {
            // Linux hashes no ICMP field into its IPv4 multipath hash, so echo probes
            // of every flow take one branch there; the ICMP id still differs per flow
            // for routers that do read it.
            assert_eq!(all.len(), 1, "{all:?}");
        }
    }
}

#[test]
fn hundred_targets_at_once_beside_other_tracers() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("m");
    let chain = Chain::build(&mut lab, 6, &[3], false);
    // Target i lives on node k = 1 + i % 7 (routers r1..r6, then t), so it is hop k.
    let node = |k: usize| {
        if k == 7 {
            "t".to_string()
        } else {
            format!("r{k}")
        }
    };
    let mut want = HashMap::new();
    for i in 0..100usize {
        let k = 1 + i % 7;
        let addr = format!("10.97.{i}.1");
        lab.ip(&node(k), &format!("addr add {addr}/32 dev lo\n"));
        let mut w = expected(&chain, k - 1, 3, false);
        if k == 3 {
            // Its router is silent, so the target is too: five silent hops, then stop.
            w.extend([None, None, None, None, None]);
        } else {
            w.push(Some(addr.clone()));
        }
        want.insert(addr, w);
    }
    let targets: Vec<String> = want.keys().cloned().collect();
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = ["--timeout-ms", "400"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(targets.iter().cloned());
        v
    };
    // Two other tracers run at the same time in other processes on the same host: one
    // pings (ICMP echo) every target, one traces them on another flow.
    let spawn = |extra: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("h")])
            .arg(netns::example("trace"))
            .arg("--json")
            .args(args(extra))
            .output()
    };
    let (main, others) = std::thread::scope(|s| {
        let icmp = s.spawn(|| spawn(&["-p", "icmp"]));
        let flow1 = s.spawn(|| spawn(&["--flows", "2"]));
        let main = spawn(&[]).unwrap();
        (
            main,
            [
                icmp.join().unwrap().unwrap(),
                flow1.join().unwrap().unwrap(),
            ],
        )
    });
    for out in std::iter::once(&main).chain(&others) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.len() == 100 || lines.len() == 200);
        for t in &lines {
            let dest = t["dest"].as_str().unwrap();
            assert_eq!(&hops(t), &want[dest], "{t}");
        }
    }
}

/// Runs the rest of a command line as user and group `nobody`, with no supplementary groups.
const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

#[test]
fn unprivileged_fallback_traces_udp_exactly() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("u");
    let chain = Chain::build(&mut lab, 6, &[3], false);
    // As `nobody` with no capabilities, raw sockets are refused.
    let (t4, t6) = (chain.target(false), chain.target(true));
    let (out, err) = lab.trace_raw("h", AS_NOBODY, &["--timeout-ms", "300", &t4, &t6]);
    assert!(err.contains("unprivileged UDP (IP_RECVERR)"), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        hops(&lines[0]),
        expected(&chain, 7, 3, false),
        "{}",
        lines[0]
    );
    assert_eq!(
        hops(&lines[1]),
        expected(&chain, 7, 3, true),
        "{}",
        lines[1]
    );
    assert_eq!(lines[0]["reached"], true);
}

#[test]
fn cap_net_raw_alone_traces_every_protocol_in_raw_mode() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("k");
    let chain = Chain::build(&mut lab, 6, &[3], false);
    // As `nobody` holding CAP_NET_RAW and nothing else (what `setcap cap_net_raw+ep` on
    // the binary gives a normal user).
    let only_net_raw = [
        AS_NOBODY,
        &["--inh-caps=-all,+net_raw", "--ambient-caps=+net_raw"],
    ]
    .concat();
    for v6 in [false, true] {
        for proto in ["udp", "icmp", "tcp"] {
            let target = chain.target(v6);
            let (out, err) = lab.trace_raw(
                "h",
                &only_net_raw,
                &["--timeout-ms", "300", "-p", proto, &target],
            );
            assert!(err.contains("mode: raw sockets"), "{err}");
            let t: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(hops(&t), expected(&chain, 7, 3, v6), "{proto} v6={v6}: {t}");
            assert_eq!(t["reached"], true);
        }
    }
}

#[test]
fn unreachable_route_ends_the_path_with_its_code() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("x");
    let chain = Chain::build(&mut lab, 6, &[], false);
    // Linux limits "unreachable"/"prohibit" route errors per source host on its own
    // (net.ipv4.route.error_burst: 5, then 1/s, not per netns), so every case gets its
    // own router: router k rejects 10.55.k.0/24.
    let cases = [
        ("udp", "unreachable", "!H"),
        ("icmp", "unreachable", "!H"),
        ("tcp", "unreachable", "!H"),
        ("udp", "prohibit", "!X"),
        ("icmp", "prohibit", "!X"),
        ("tcp", "prohibit", "!X"),
    ];
    for (i, (proto, route, code)) in cases.into_iter().enumerate() {
        let k = i + 1;
        lab.ip(
            &format!("r{k}"),
            &format!("route add {route} 10.55.{k}.0/24\n"),
        );
        let dest = format!("10.55.{k}.1");
        let out = lab.trace("h", &["-p", proto, &dest]);
        let want: Vec<_> = (1..=k).map(|h| Some(chain.hop(h, false))).collect();
        assert_eq!(hops(&out[0]), want, "{proto} {route}: {}", out[0]);
        assert_eq!(out[0]["reached"], false);
        assert_eq!(out[0]["unreachable"], code, "{proto} {route}");
    }
}

/// Loss never lengthens a path: router 3 of 5 drops 10% of what it forwards, both ways, and
/// 100 traces per protocol and family with one probe per hop and no retry round each end at
/// the destination's real distance (6) or before it, never beyond with a silent hop where the
/// destination's own answer was lost. UDP places it by the TTL its error quotes, ICMP by
/// probing the TTL below once more.
#[test]
fn loss_never_lengthens_a_path() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("l");
    let chain = Chain::build(&mut lab, 5, &[], false);
    lab.lossy("r3", 10);
    for v6 in [false, true] {
        let target = chain.target(v6);
        for proto in ["udp", "icmp"] {
            let out = lab.trace(
                "h",
                &[
                    "-p",
                    proto,
                    "-q",
                    "1",
                    "--retries",
                    "0",
                    "--flows",
                    "100",
                    "--timeout-ms",
                    "300",
                    &target,
                ],
            );
            assert_eq!(out.len(), 100);
            let mut reached = 0;
            for t in &out {
                let hops = hops(t);
                assert!(
                    hops.len() <= 6,
                    "{proto} v6={v6}: a {}-hop path: {t}",
                    hops.len()
                );
                if t["reached"] == true {
                    reached += 1;
                    assert_eq!(hops.len(), 6, "{proto} v6={v6}: {t}");
                    assert_eq!(hops[5].as_deref(), Some(target.as_str()), "{t}");
                }
            }
            // Most traces get through (each crossing loses 10% of what passes it).
            assert!(
                reached >= 60,
                "{proto} v6={v6}: only {reached} of 100 reached"
            );
        }
    }
}

/// `dist-traceroute trace --mda` finds both branches of the diamond (h - r1 - a|b - r4 - t)
/// and links each to r1 and to r4 at 95% confidence: in at least 19 of 20 runs for UDP and
/// TCP in both families, never a false link, and far below its flow budget. It prints the
/// probes spent beside a fixed 16 flows of this path.
#[test]
fn mda_finds_both_branches_of_a_diamond() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("d");
    ecmp_lab(&mut lab);
    let bin = env!("CARGO_BIN_EXE_dist-traceroute");
    let mda = |args: &[&str]| lab.exec("h", &[&[bin, "trace", "--mda", "-n"], args].concat());
    for (v6, proto) in [(false, "udp"), (false, "tcp"), (true, "udp"), (true, "tcp")] {
        let (r1, a, b, dest) = if v6 {
            ("fd00:99::2", "fd00:98:1::2", "fd00:98:2::2", "fd00:98:5::2")
        } else {
            ("10.99.0.2", "10.98.1.2", "10.98.2.2", "10.98.5.2")
        };
        // An IPv4 router answers from its interface on the route back, an IPv6 one from
        // the interface the probe came in on: r4 is one address in IPv4, one per branch in
        // IPv6.
        let r4_of = |branch: &str| -> &str {
            match (v6, branch == a) {
                (false, _) => "10.98.3.2",
                (true, true) => "fd00:98:3::2",
                (true, false) => "fd00:98:4::2",
            }
        };
        let truth: BTreeSet<(String, String)> = [
            (r1, a),
            (r1, b),
            (a, r4_of(a)),
            (b, r4_of(b)),
            (r4_of(a), dest),
            (r4_of(b), dest),
        ]
        .into_iter()
        .map(|(x, y)| (x.to_owned(), y.to_owned()))
        .collect();
        let (mut both, mut flows, mut probes) = (0, Vec::new(), Vec::new());
        // Each run hashes with another seed, as 20 different routers would: seeds 1..=20,
        // so the runs are the same on every machine with this kernel.
        for seed in 1..=20 {
            netns::run(&[
                "ip",
                "netns",
                "exec",
                &lab.ns("r1"),
                "sysctl",
                "-qw",
                &format!("net.ipv4.fib_multipath_hash_seed={seed}"),
            ]);
            let g: serde_json::Value =
                serde_json::from_str(&mda(&["--json", "-P", proto, "-q", "1", dest])).unwrap();
            let at = |ttl: u64| -> Vec<String> {
                g["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["ttl"] == ttl)
                    .map(|n| n["addr"].as_str().unwrap().to_owned())
                    .collect()
            };
            assert_eq!(at(1), [r1], "{proto} v6={v6}: {g:#}");
            assert_eq!(at(4), [dest], "{proto} v6={v6}: {g:#}");
            assert_eq!(g["reached"], true);
            assert_eq!(g["complete"], true, "{g:#}");
            let links: BTreeSet<(String, String)> = g["links"]
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
            assert!(
                links.is_subset(&truth),
                "{proto} v6={v6}: a false link in {links:?}"
            );
            if at(2) == [a, b] {
                both += 1;
                assert_eq!(links, truth, "{proto} v6={v6}");
            }
            flows.push(g["flows"].as_u64().unwrap());
            probes.push(g["probes"].as_u64().unwrap());
        }
        assert!(
            both >= 19,
            "{proto} v6={v6}: both branches in only {both} of 20 runs"
        );
        assert!(flows.iter().all(|f| *f < 64), "{flows:?}");
        flows.sort();
        probes.sort();
        eprintln!(
            "mda {proto} v6={v6}: both branches in {both}/20 runs; flows median {} (max {}), \
             probes median {} (max {}); 16 fixed flows of this path: 64 probes",
            flows[10], flows[19], probes[10], probes[19]
        );
    }
    // The text: each address under TTL 2 led to from r1, r4 from what was found at TTL 2.
    let text = mda(&["10.98.5.2"]);
    eprintln!("{text}");
    assert!(
        text.contains("every branch found at 95% confidence"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let two = lines
        .iter()
        .position(|l| l.starts_with(" 2  "))
        .expect("TTL 2");
    let three = lines
        .iter()
        .position(|l| l.starts_with(" 3  "))
        .expect("TTL 3");
    assert!(three > two);
    for l in &lines[two..three] {
        assert!(l.ends_with("<- 10.99.0.2"), "{text}");
    }
    assert!(lines[three].starts_with(" 3  10.98.3.2"), "{text}");
}

/// A stand-in for a router inside an MPLS tunnel, run in its namespace: it answers every UDP
/// probe that reaches it with a time exceeded quoting the probe (padded to 128 bytes, the
/// RFC 4884 length set) and an RFC 4950 object of two labels. Linux routers send no such
/// object, so this one is written by hand; the probe and the reply cross real sockets.
const MPLS_ROUTER: &str = r#"
import socket, struct
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def entry(label, tc, s, ttl):
    return struct.pack("!I", (label << 12) | (tc << 9) | (s << 8) | ttl)
labels = entry(24001, 5, 0, 1) + entry(16, 0, 1, 1)
obj = struct.pack("!HBB", 4 + len(labels), 1, 1) + labels
ext = bytearray(struct.pack("!BBH", 0x20, 0, 0) + obj)
ext[2:4] = struct.pack("!H", csum(bytes(ext)))
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
print("ready", flush=True)
while True:
    pkt, (src, _) = rx.recvfrom(65535)
    quote = pkt[:128].ljust(128, b"\0")
    msg = bytearray(struct.pack("!BBHBBH", 11, 0, 0, 0, 32, 0) + quote + bytes(ext))
    msg[2:4] = struct.pack("!H", csum(bytes(msg)))
    tx.sendto(bytes(msg), (src, 0))
"#;

/// The labels of a real reply reach `trace`'s output: a probe and its answer over raw
/// sockets through the tracer's receive path, one line per label under the hop.
#[test]
fn mpls_labels_of_a_real_reply_are_printed_under_the_hop() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("mpls");
    for n in ["h", "m"] {
        lab.node(n, false);
    }
    lab.link("h", "right", "m", "left");
    lab.ip("h", "addr add 10.96.1.1/24 dev right\n");
    lab.ip("m", "addr add 10.96.1.2/24 dev left\n");
    // The kernel's own port unreachable would end the trace first: only the stand-in answers.
    netns::run(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("m"),
        "nft",
        "add table inet q; add chain inet q out { type filter hook output priority 0; }; \
         add rule inet q out icmp type destination-unreachable drop",
    ]);
    /// The stand-in router, stopped however the test ends.
    struct Router(std::process::Child);
    impl Drop for Router {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut router = Router(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("m"), "python3", "-c", MPLS_ROUTER])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(router.0.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let bin = env!("CARGO_BIN_EXE_dist-traceroute");
    let text = lab.exec(
        "h",
        &[
            bin,
            "trace",
            "-n",
            "-q",
            "1",
            "-m",
            "2",
            "-w",
            "0.5",
            "10.96.1.2",
        ],
    );
    let json = lab.exec(
        "h",
        &[
            bin,
            "trace",
            "-n",
            "-q",
            "1",
            "-m",
            "1",
            "-w",
            "0.5",
            "--json",
            "10.96.1.2",
        ],
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with(" 1  10.96.1.2"), "{text}");
    assert_eq!(
        lines[2], "     [MPLS: Lbl 24001, TC 5, S 0, TTL 1]",
        "{text}"
    );
    assert_eq!(lines[3], "     [MPLS: Lbl 16, TC 0, S 1, TTL 1]", "{text}");
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        r["Hops"][0]["MPLS"],
        serde_json::json!([
            {"Label": 24001, "TC": 5, "S": false, "TTL": 1},
            {"Label": 16, "TC": 0, "S": true, "TTL": 1}
        ]),
        "{r:#}"
    );
}
