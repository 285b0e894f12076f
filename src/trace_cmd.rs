//! `dist-traceroute trace HOST`: one trace now, printed like traceroute or as JSON.

use dist_traceroute::cli::TraceArgs;
use dist_traceroute::proto::{Creds, TargetRef};
use dist_traceroute::slave::report;
use dist_traceroute::trace::{self, Family, Trace, TraceOptions, Tracer};
use std::fmt::Write as _;
use std::time::Duration;

pub fn run(a: &TraceArgs) -> anyhow::Result<()> {
    // A bad table is an error before any probe goes out.
    let asn = a
        .asn_db
        .as_deref()
        .map(dist_traceroute::asn::AsnDb::load)
        .transpose()?;
    let family = match (a.ipv4, a.ipv6) {
        (true, _) => Some(Family::V4),
        (_, true) => Some(Family::V6),
        _ => None,
    };
    let dest = trace::resolve(&a.host, family).map_err(|e| anyhow::anyhow!("{e}"))?;
    let only = if dest.is_ipv6() {
        Family::V6
    } else {
        Family::V4
    };
    let tracer = Tracer::for_family(only).map_err(|e| {
        anyhow::anyhow!("{e}: run as root or give the binary CAP_NET_RAW (setcap cap_net_raw+ep)")
    })?;
    let opts = TraceOptions {
        protocol: a.protocol,
        port: a.port,
        max_hops: a.max_hops,
        queries: a.queries,
        retries: 0,
        timeout: a.wait,
        flow: a.flow,
        ..TraceOptions::default()
    };
    if a.mda {
        let g = trace::mda::discover(&tracer, dest, &opts, MDA_CONFIDENCE, a.max_flows)?;
        return if a.json {
            emit(&format!("{}\n", serde_json::to_string_pretty(&g)?))
        } else {
            emit(&diamonds(&a.host, &g, opts.protocol))
        };
    }
    let mut t = tracer.trace(dest, &opts)?;
    if !a.numeric {
        t.fill_hosts(Duration::from_millis(500));
    }
    if a.json {
        let creds = Creds {
            name: String::new(),
            password: String::new(),
        };
        let target = TargetRef {
            name: a.host.clone(),
            address: a.host.clone(),
        };
        let mut r = serde_json::to_value(report::from_trace(&t, &creds, "", &target))?;
        // A one-shot trace has no slave credentials and no target ID to show.
        if let Some(fields) = r.as_object_mut() {
            fields.remove("Creds");
            fields.remove("TargetID");
        }
        emit(&format!("{}\n", serde_json::to_string_pretty(&r)?))
    } else {
        emit(&human(&a.host, &t, a.max_hops, asn.as_ref()))
    }
}

/// The confidence `--mda` asks for.
const MDA_CONFIDENCE: f64 = 0.95;

/// The branches found, like scamper's and Dublin traceroute's output: per TTL each address
/// with the flows that saw it and its median RTT, and the addresses one TTL nearer that lead
/// to it.
pub fn diamonds(host: &str, g: &trace::mda::Graph, protocol: trace::Protocol) -> String {
    let mut out = format!(
        "multipath to {host} ({}), {protocol} probes: {} flows, {} probes, {}\n",
        g.destination,
        g.flows,
        g.probes,
        if g.complete {
            format!(
                "every branch found at {:.0}% confidence",
                g.confidence * 100.0
            )
        } else {
            format!(
                "flow budget spent before {:.0}% confidence (--max-flows)",
                g.confidence * 100.0
            )
        }
    );
    let last = g.nodes.iter().map(|n| n.ttl).max().unwrap_or(0);
    let width = g
        .nodes
        .iter()
        .map(|n| n.addr.to_string().len())
        .max()
        .unwrap_or(15);
    for ttl in 1..=last {
        let here: Vec<&trace::mda::Node> = g.nodes.iter().filter(|n| n.ttl == ttl).collect();
        if here.is_empty() {
            let _ = writeln!(out, "{ttl:2}  *");
            continue;
        }
        for (i, n) in here.iter().enumerate() {
            let head = if i == 0 {
                format!("{ttl:2}")
            } else {
                "  ".into()
            };
            let mut rtts = n.rtt_ms.clone();
            rtts.sort_by(f64::total_cmp);
            let median = rtts.get(rtts.len() / 2).copied();
            let from: Vec<String> = g
                .links
                .iter()
                .filter(|l| l.to == n.addr && l.ttl + 1 == ttl)
                .map(|l| l.from.to_string())
                .collect();
            let _ = write!(
                out,
                "{head}  {:<width$}  {:>3} flows",
                n.addr.to_string(),
                n.flows.len()
            );
            if let Some(ms) = median {
                let _ = write!(out, "  {ms:.3} ms");
            }
            if !from.is_empty() {
                let _ = write!(out, "  <- {}", from.join(", "));
            }
            out.push('\n');
        }
        if g.silent_ttls.contains(&ttl) {
            out.push_str("    *  (some flows had no answer here)\n");
        }
    }
    if !g.reached {
        out.push_str("    the destination did not answer\n");
    }
    out
}

/// Writes to stdout at once (`measure` prints as results arrive); a closed pipe (`| head`)
/// is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Traceroute-style lines: TTL, name (address), one RTT per probe or `*`, and `!H`-style notes.
pub fn human(
    host: &str,
    t: &Trace,
    max_hops: u8,
    asn: Option<&dist_traceroute::asn::AsnDb>,
) -> String {
    let mut out = format!(
        "traceroute to {host} ({}), {max_hops} hops max, {} probes, flow {}\n",
        t.destination, t.protocol, t.flow
    );
    for hop in &t.hops {
        let _ = write!(out, "{:2} ", hop.ttl);
        let mut shown: Option<std::net::IpAddr> = None;
        for p in &hop.probes {
            match (p.from, p.rtt) {
                (Some(from), Some(rtt)) => {
                    if shown != Some(from) {
                        match &hop.host {
                            Some(name) if Some(from) == hop.addr => {
                                let _ = write!(out, " {name} ({from})");
                            }
                            _ => {
                                let _ = write!(out, " {from}");
                            }
                        }
                        // Its owner, as mtr -z shows it.
                        if let Some(db) = asn {
                            match db.lookup(from) {
                                Some(o) => {
                                    let _ = write!(out, " [{}]", o.label());
                                }
                                None => out.push_str(" [AS?]"),
                            }
                        }
                        shown = Some(from);
                    }
                    let _ = write!(out, "  {:.3} ms", rtt.as_secs_f64() * 1000.0);
                    if let Some(trace::ReplyKind::Unreachable(u)) = p.kind {
                        let _ = write!(out, " {}", u.annotation());
                    }
                }
                _ => out.push_str(" *"),
            }
        }
        out.push('\n');
        // The labels the hop's reply reported, one line each, as traceroute -e prints them.
        if let Some(p) = hop.probes.iter().find(|p| !p.mpls.is_empty()) {
            for l in &p.mpls {
                let _ = writeln!(
                    out,
                    "     [MPLS: Lbl {}, TC {}, S {}, TTL {}]",
                    l.label,
                    l.tc,
                    u8::from(l.s),
                    l.ttl
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dist_traceroute::trace::wire::mpls::Label;
    use dist_traceroute::trace::{Hop, Probe, Protocol, ReplyKind};

    #[test]
    fn labels_are_printed_under_their_hop_one_line_each() {
        let probe = |mpls: Vec<Label>| Probe {
            rtt: Some(Duration::from_micros(250)),
            from: Some("10.0.0.2".parse().unwrap()),
            size: 56,
            reply_ttl: Some(254),
            kind: Some(ReplyKind::TimeExceeded),
            mpls,
        };
        let label = |label, s| Label {
            label,
            tc: 0,
            s,
            ttl: 1,
        };
        let t = Trace {
            destination: "10.0.0.9".parse().unwrap(),
            protocol: Protocol::Udp,
            flow: 0,
            source: None,
            started: std::time::SystemTime::now(),
            duration: Duration::ZERO,
            reached: false,
            hops: vec![
                Hop {
                    ttl: 1,
                    addr: Some("10.0.0.2".parse().unwrap()),
                    host: None,
                    probes: vec![probe(vec![label(24001, false), label(16, true)])],
                },
                Hop {
                    ttl: 2,
                    addr: Some("10.0.0.2".parse().unwrap()),
                    host: None,
                    probes: vec![probe(Vec::new())],
                },
            ],
        };
        let text = human("h", &t, 30, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2], "     [MPLS: Lbl 24001, TC 0, S 0, TTL 1]",
            "{text}"
        );
        assert_eq!(lines[3], "     [MPLS: Lbl 16, TC 0, S 1, TTL 1]", "{text}");
        assert!(lines[4].starts_with(" 2 "), "{text}");
        assert_eq!(lines.len(), 5, "{text}");
    }

    #[test]
    fn owners_follow_the_addresses_like_mtr_z() {
        let db =
            dist_traceroute::asn::AsnDb::parse("8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n").unwrap();
        let hop = |ttl: u8, a: &str| Hop {
            ttl,
            addr: Some(a.parse().unwrap()),
            host: None,
            probes: vec![Probe {
                rtt: Some(Duration::from_micros(250)),
                from: Some(a.parse().unwrap()),
                size: 56,
                reply_ttl: None,
                kind: Some(ReplyKind::TimeExceeded),
                mpls: Vec::new(),
            }],
        };
        let t = Trace {
            destination: "8.8.8.8".parse().unwrap(),
            protocol: Protocol::Udp,
            flow: 0,
            source: None,
            started: std::time::SystemTime::now(),
            duration: Duration::ZERO,
            reached: true,
            hops: vec![hop(1, "192.168.1.1"), hop(2, "9.9.9.9"), hop(3, "8.8.8.8")],
        };
        let text = human("h", &t, 30, Some(&db));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("192.168.1.1 [private (RFC 1918)]"),
            "{text}"
        );
        assert!(lines[2].contains("9.9.9.9 [AS?]"), "{text}");
        assert!(lines[3].contains("8.8.8.8 [AS15169 GOOGLE]"), "{text}");
        assert!(
            !human("h", &t, 30, None).contains('['),
            "no table, no owners"
        );
    }
}
