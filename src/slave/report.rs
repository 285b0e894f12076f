//! Turns a finished trace into the result a slave posts: the original fields, with our
//! additions in new fields only.

use crate::proto::{
    Creds, HopResult, Multipath, MultipathLink, MultipathNode, TargetRef, TraceResult,
};
use crate::trace::{ReplyKind, Trace};
use std::net::IpAddr;

/// The `Agent` field: program and version.
pub fn agent() -> String {
    format!("dist-traceroute/{}", env!("CARGO_PKG_VERSION"))
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// A duration in ns, rounded to the whole microsecond: a reply's timestamp is the kernel's,
/// but the send time is taken in user space before `sendmsg`, so digits below a microsecond
/// are noise (traceroute and mtr print microseconds too), and whole microseconds pack into
/// half the bytes in the master's store.
fn nanos(d: std::time::Duration) -> i64 {
    let us = d.as_nanos().saturating_add(500) / 1000;
    i64::try_from(us.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn kind_text(k: ReplyKind) -> String {
    match k {
        ReplyKind::TimeExceeded => "time-exceeded".into(),
        ReplyKind::Reached => "reached".into(),
        ReplyKind::Unreachable(u) => u.annotation(),
    }
}

/// The result of a trace that ran.
pub fn from_trace(
    trace: &Trace,
    creds: &Creds,
    target_id: &str,
    target: &TargetRef,
) -> TraceResult {
    let hops = trace
        .hops
        .iter()
        .filter_map(|h| {
            let addr = h.addr?;
            Some(HopResult {
                success: true,
                address: match addr {
                    IpAddr::V4(v4) => v4.octets(),
                    IpAddr::V6(_) => [0; 4],
                },
                host: h.host.clone().unwrap_or_default(),
                n: i64::from(h.reply_size()),
                elapsed_time: h.first_rtt().map_or(0, nanos),
                ttl: i64::from(h.ttl),
                ip: Some(addr.to_string()),
                replies: Some(h.probes.iter().map(|p| p.rtt.map(nanos)).collect()),
                kind: h
                    .terminal()
                    .or(h.probes.iter().find_map(|p| p.kind))
                    .map(kind_text),
                reply_ttl: h.reply_ttl(),
                mpls: h.probes.iter().find(|p| !p.mpls.is_empty()).map(|p| {
                    p.mpls
                        .iter()
                        .map(|l| crate::proto::MplsLabel {
                            label: l.label,
                            tc: l.tc,
                            s: l.s,
                            ttl: l.ttl,
                        })
                        .collect()
                }),
            })
        })
        .collect();
    let queries = trace.hops.iter().map(|h| h.probes.len()).max().unwrap_or(0);
    TraceResult {
        creds: creds.clone(),
        id: uuid::Uuid::new_v4().to_string(),
        date_time: rfc3339(trace.started),
        target: target.clone(),
        success: trace.reached,
        hop_count: trace.hops.len().clamp(1, 255) as i64,
        hops,
        target_id: Some(target_id.to_owned()),
        protocol: Some(trace.protocol.name().to_owned()),
        flow: Some(trace.flow),
        destination: Some(trace.destination.to_string()),
        queries: u8::try_from(queries).ok().filter(|q| *q > 0),
        unreachable: trace.unreachable().map(|u| u.annotation()),
        error: None,
        agent: Some(agent()),
        duration_ns: Some(nanos(trace.duration)),
        source_address: trace.source.map(|a| a.to_string()),
        debug: false,
        measurement: None,
        multipath: None,
    }
}

/// The multipath graph of a discovery in its wire form, RTTs rounded like a hop's.
pub fn multipath(g: &crate::trace::mda::Graph) -> Multipath {
    Multipath {
        confidence: g.confidence,
        flows: g.flows,
        probes: g.probes,
        complete: g.complete,
        nodes: g
            .nodes
            .iter()
            .map(|n| MultipathNode {
                ttl: n.ttl,
                ip: n.addr.to_string(),
                flows: n.flows.clone(),
                rtts: n
                    .rtt_ms
                    .iter()
                    .map(|ms| nanos(std::time::Duration::from_secs_f64(ms.max(0.0) / 1e3)))
                    .collect(),
            })
            .collect(),
        links: g
            .links
            .iter()
            .map(|l| MultipathLink {
                ttl: l.ttl,
                from: l.from.to_string(),
                to: l.to.to_string(),
                flows: l.flows.clone(),
            })
            .collect(),
    }
}

/// The result of a trace that could not run (the name did not resolve, no socket): stored by
/// the master like any other, so a gap in the data has a reason. `destination` is the address
/// the name resolved to, `None` when it did not resolve (the master tells the two apart).
pub fn from_error(
    error: &str,
    destination: Option<std::net::IpAddr>,
    started: std::time::SystemTime,
    creds: &Creds,
    target_id: &str,
    target: &TargetRef,
) -> TraceResult {
    TraceResult {
        creds: creds.clone(),
        id: uuid::Uuid::new_v4().to_string(),
        date_time: rfc3339(started),
        target: target.clone(),
        success: false,
        hop_count: 1,
        hops: Vec::new(),
        target_id: Some(target_id.to_owned()),
        protocol: None,
        flow: None,
        destination: destination.map(|a| a.to_string()),
        queries: None,
        unreachable: None,
        error: Some(error.to_owned()),
        agent: Some(agent()),
        duration_ns: None,
        source_address: None,
        debug: false,
        measurement: None,
        multipath: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Hop, Probe, Protocol, Unreachable};
    use std::time::{Duration, SystemTime};

    fn hop(ttl: u8, addr: Option<&str>, kind: Option<ReplyKind>) -> Hop {
        let addr = addr.map(|a| a.parse().unwrap());
        Hop {
            ttl,
            addr,
            host: None,
            probes: vec![Probe {
                rtt: addr.map(|_| Duration::from_micros(1500)),
                from: addr,
                size: 56,
                mpls: Vec::new(),
                reply_ttl: addr.map(|_| 65 - ttl),
                kind,
            }],
        }
    }

    #[test]
    fn silent_hops_are_left_out_and_v6_goes_in_ip() {
        let trace = Trace {
            destination: "2001:db8::9".parse().unwrap(),
            protocol: Protocol::Udp,
            flow: 2,
            source: None,
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_549_569_970),
            duration: Duration::from_millis(40),
            reached: false,
            hops: vec![
                hop(1, Some("2001:db8::1"), Some(ReplyKind::TimeExceeded)),
                hop(2, None, None),
                hop(
                    3,
                    Some("2001:db8::3"),
                    Some(ReplyKind::Unreachable(Unreachable::Host)),
                ),
            ],
        };
        let creds = Creds {
            name: "s".into(),
            password: "p".into(),
        };
        let target = TargetRef {
            name: "T".into(),
            address: "h".into(),
        };
        let r = from_trace(&trace, &creds, "id", &target);
        assert_eq!(r.hop_count, 3);
        assert_eq!(r.hops.len(), 2);
        assert_eq!(r.hops[0].address, [0; 4]);
        assert_eq!(r.hops[1].ip.as_deref(), Some("2001:db8::3"));
        assert_eq!(r.hops[1].ttl, 3);
        assert_eq!(r.hops[1].elapsed_time, 1_500_000);
        assert_eq!(nanos(std::time::Duration::from_nanos(1_234_567)), 1_235_000);
        assert_eq!(nanos(std::time::Duration::from_nanos(1_234_499)), 1_234_000);
        assert_eq!(r.hops[1].kind.as_deref(), Some("!H"));
        assert_eq!(
            (r.hops[0].reply_ttl, r.hops[1].reply_ttl),
            (Some(64), Some(62))
        );
        assert_eq!(r.unreachable.as_deref(), Some("!H"));
        assert!(chrono::DateTime::parse_from_rfc3339(&r.date_time).is_ok());
        assert!(uuid::Uuid::parse_str(&r.id).is_ok());
        assert!(r.hops.iter().all(|h| h.mpls.is_none()));
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["Hops"][0].get("MPLS").is_none(), "no key without labels");
    }

    #[test]
    fn a_hops_label_stack_goes_in_mpls_and_in_the_text() {
        let mut h = hop(2, Some("10.0.0.2"), Some(ReplyKind::TimeExceeded));
        h.probes[0].mpls = vec![crate::trace::wire::mpls::Label {
            label: 24001,
            tc: 5,
            s: true,
            ttl: 1,
        }];
        let trace = Trace {
            destination: "10.0.0.9".parse().unwrap(),
            protocol: Protocol::Udp,
            flow: 0,
            source: None,
            started: SystemTime::now(),
            duration: Duration::from_millis(1),
            reached: false,
            hops: vec![hop(1, Some("10.0.0.1"), Some(ReplyKind::TimeExceeded)), h],
        };
        let target = TargetRef {
            name: "T".into(),
            address: "h".into(),
        };
        let creds = Creds {
            name: "s".into(),
            password: String::new(),
        };
        let v = serde_json::to_value(from_trace(&trace, &creds, "id", &target)).unwrap();
        assert_eq!(
            v["Hops"][1]["MPLS"],
            serde_json::json!([{"Label": 24001, "TC": 5, "S": true, "TTL": 1}])
        );
        assert!(v["Hops"][0].get("MPLS").is_none());
    }
}
