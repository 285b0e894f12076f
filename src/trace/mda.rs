//! Multipath discovery: which addresses answer at each TTL over every load-balanced branch,
//! and which of them lead to which, to a stated confidence.
//!
//! It follows the stopping rule of the Multipath Detection Algorithm (Augustin, Friedman,
//! Teixeira, 2009): a node seen with `k` next hops is taken to have no more once `n_k` flows
//! have passed it, where `n_k` is the least number of flows for which the chance that `k + 1`
//! evenly loaded next hops show only `k` of themselves is at most `1 - confidence` (6, 11,
//! 16, 21, 27, … at 95%). Flows are whole Paris traces (each keeps one flow identity, so each
//! stays on one branch); more flows are added, in rounds traced at once, until every node has
//! had its `n_k` or the flow budget is spent. Where the path does not branch it stops after
//! the first `n_1` = 6 flows.

use super::{Error, Hop, Trace, TraceOptions, Tracer};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The least `n` such that `k + 1` evenly loaded next hops all show up in `n` flows with
/// probability at least `confidence` (by inclusion-exclusion over the ones missed).
pub fn flows_for(k: usize, confidence: f64) -> usize {
    let m = (k + 1) as i32;
    let miss = |n: i32| -> f64 {
        (1..=m)
            .map(|i| {
                let sign = if i % 2 == 1 { 1.0 } else { -1.0 };
                sign * binomial(m, i) * (f64::from(m - i) / f64::from(m)).powi(n)
            })
            .sum()
    };
    (1..10_000)
        .find(|&n| miss(n) <= 1.0 - confidence)
        .unwrap_or(10_000) as usize
}

fn binomial(n: i32, k: i32) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * f64::from(n - i) / f64::from(i + 1))
}

/// One address seen at one TTL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// The TTL.
    pub ttl: u8,
    /// Who answered.
    pub addr: IpAddr,
    /// The flows whose trace had it at this TTL.
    pub flows: Vec<u16>,
    /// Its RTTs over those flows, ms.
    pub rtt_ms: Vec<f64>,
}

/// Two nodes at consecutive TTLs that one or more flows went through one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The TTL of `from`.
    pub ttl: u8,
    /// The nearer node.
    pub from: IpAddr,
    /// The next one.
    pub to: IpAddr,
    /// The flows that took it.
    pub flows: Vec<u16>,
}

/// What a discovery found.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// The address traced.
    pub destination: IpAddr,
    /// Nodes by TTL, then address.
    pub nodes: Vec<Node>,
    /// Links by TTL.
    pub links: Vec<Link>,
    /// Flows traced (how many; their numbers are in the nodes and links).
    pub flows: u16,
    /// Probes sent over all of them.
    pub probes: u64,
    /// The confidence asked for.
    pub confidence: f64,
    /// True when every node had its `n_k` flows (false: the flow budget ran out first).
    pub complete: bool,
    /// True when some flow reached the destination.
    pub reached: bool,
    /// TTLs where some flow had no answer.
    pub silent_ttls: Vec<u8>,
}

/// Discovers the branches towards `dest` with up to `max_flows` flows.
pub fn discover(
    tracer: &Tracer,
    dest: IpAddr,
    opts: &TraceOptions,
    confidence: f64,
    max_flows: u16,
) -> Result<Graph, Error> {
    discover_with_traces(tracer, dest, opts, confidence, max_flows, 0).map(|(g, _)| g)
}

/// The flow number of the `i`-th flow of a discovery: flow 0 first (a monitored series keeps
/// its one flow), then flows from `rotate` on, so that a discovery repeated with another
/// `rotate` draws other flows (a branch its flows missed once is not missed every time).
pub fn flow_number(i: u16, rotate: u16) -> u16 {
    if i == 0 {
        return 0;
    }
    let span = super::tracer::FLOWS - 1;
    1 + ((u32::from(rotate) + u32::from(i) - 1) % u32::from(span)) as u16
}

/// [`discover`], also giving the traces of every flow, flow 0 first; the flows are numbered
/// by [`flow_number`] with `rotate`.
pub fn discover_with_traces(
    tracer: &Tracer,
    dest: IpAddr,
    opts: &TraceOptions,
    confidence: f64,
    max_flows: u16,
    rotate: u16,
) -> Result<(Graph, Vec<Trace>), Error> {
    let mut traces: Vec<Trace> = Vec::new();
    let mut want = flows_for(1, confidence).min(usize::from(max_flows)) as u16;
    loop {
        let from = traces.len() as u16;
        // The first round traces whole paths; later flows only the TTLs where those went
        // different ways (MDA-Lite: a hop every flow so far found at one address is taken
        // to be the same for the next flow, so it is not probed again).
        let window = (from > 0).then(|| middle(&traces)).flatten();
        let batch: Vec<Result<Trace, Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = (from..want)
                .map(|i| {
                    let mut opts = TraceOptions {
                        flow: flow_number(i, rotate),
                        ..opts.clone()
                    };
                    if let Some(w) = &window {
                        opts.first_ttl = w.first;
                        opts.max_hops = w.last.map_or(opts.max_hops, |(m, _)| m.min(opts.max_hops));
                    }
                    s.spawn(move || tracer.trace(dest, &opts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("trace thread"))
                .collect()
        });
        // A later flow that found, where the window starts, an address no flow found there
        // before may have come by a branch the first flows missed below the window: the hops
        // taken from them would be wrong for it (a false link), so it is traced again whole.
        let mut again = Vec::new();
        for (i, t) in (from..want).zip(batch) {
            let t = t?;
            match &window {
                Some(w) if w.is_new(&t) => again.push(i),
                Some(w) => traces.push(w.fill(t)),
                None => traces.push(t),
            }
        }
        let whole: Vec<Result<Trace, Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = again
                .iter()
                .map(|&i| {
                    let opts = TraceOptions {
                        flow: flow_number(i, rotate),
                        ..opts.clone()
                    };
                    s.spawn(move || tracer.trace(dest, &opts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("trace thread"))
                .collect()
        });
        for t in whole {
            traces.push(t?);
        }
        let short = flows_short(&traces, dest, confidence);
        if short == 0 || want >= max_flows {
            let g = graph(&traces, dest, confidence, short == 0);
            return Ok((g, traces));
        }
        want = (usize::from(want) + short).min(usize::from(max_flows)) as u16;
    }
}

/// The TTLs later flows probe, and what every flow so far found around them.
#[derive(Debug)]
struct Window {
    /// The lowest TTL where the flows went different ways.
    first: u8,
    /// The TTL where they met again and the one address every flow had there, when they
    /// did: the last TTL probed.
    last: Option<(u8, IpAddr)>,
    /// The hops below `first` (one address, or silent, for every flow).
    before: Vec<Hop>,
    /// The hops after `last`, and whether they reached the destination.
    after: (Vec<Hop>, bool),
    /// The addresses flows found at `first`.
    at_first: BTreeSet<IpAddr>,
}

/// Where the flows so far differ; `None` when they never do (or no flow answered anything).
fn middle(traces: &[Trace]) -> Option<Window> {
    let mut at: BTreeMap<u8, BTreeSet<Option<IpAddr>>> = BTreeMap::new();
    let deepest = traces.iter().map(|t| t.hops.len()).max()? as u8;
    for t in traces {
        for ttl in 1..=deepest {
            let addr = t.hops.iter().find(|h| h.ttl == ttl).and_then(|h| h.addr);
            at.entry(ttl).or_default().insert(addr);
        }
    }
    let differ: Vec<u8> = at
        .iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(t, _)| *t)
        .collect();
    let (&first, &widest) = (differ.first()?, differ.last()?);
    let bare = |h: &Hop| Hop {
        ttl: h.ttl,
        addr: h.addr,
        host: None,
        probes: Vec::new(),
    };
    let template = &traces[0];
    let before: Vec<Hop> = template
        .hops
        .iter()
        .filter(|h| h.ttl < first)
        .map(bare)
        .collect();
    let meet = widest.saturating_add(1);
    let shared = at
        .get(&meet)
        .filter(|a| a.len() == 1)
        .and_then(|a| a.iter().next().copied().flatten());
    let (last, after) = match shared {
        Some(addr) => {
            let end = traces
                .iter()
                .find(|t| t.hops.iter().any(|h| h.ttl == meet))
                .unwrap_or(template);
            let hops = end.hops.iter().filter(|h| h.ttl > meet).map(bare).collect();
            (Some((meet, addr)), (hops, end.reached))
        }
        None => (None, (Vec::new(), false)),
    };
    let at_first = at
        .get(&first)
        .into_iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    Some(Window {
        first,
        last,
        before,
        after,
        at_first,
    })
}

impl Window {
    /// True when `t` (a trace of the window) found at its first TTL an address no earlier
    /// flow found there.
    fn is_new(&self, t: &Trace) -> bool {
        t.hops
            .iter()
            .find(|h| h.ttl == self.first)
            .and_then(|h| h.addr)
            .is_some_and(|a| !self.at_first.contains(&a))
    }

    /// A trace of the window's TTLs completed with the hops every earlier flow shared (with
    /// no probes: none were sent there). The hops after the meeting point are added only
    /// when this flow met the others there too.
    fn fill(&self, mut t: Trace) -> Trace {
        let mut hops = self.before.clone();
        let met = self
            .last
            .is_some_and(|(m, shared)| t.hops.iter().any(|h| h.ttl == m && h.addr == Some(shared)));
        hops.append(&mut t.hops);
        if met {
            hops.extend(self.after.0.iter().cloned());
            t.reached = t.reached || self.after.1;
        }
        t.hops = hops;
        t
    }
}

/// The answered hops of a trace: TTL → address.
fn answered(t: &Trace) -> BTreeMap<u8, IpAddr> {
    t.hops
        .iter()
        .filter_map(|h| h.addr.map(|a| (h.ttl, a)))
        .collect()
}

/// How many more flows the least-covered node needs for its `n_k` (0: none is short). The
/// source counts as a node at TTL 0 whose next hops are the TTL-1 addresses.
fn flows_short(traces: &[Trace], dest: IpAddr, confidence: f64) -> usize {
    // (ttl, addr) → (flows through it, next hops seen)
    let mut seen: BTreeMap<(u8, Option<IpAddr>), (usize, BTreeSet<IpAddr>)> = BTreeMap::new();
    for t in traces {
        let hops = answered(t);
        let root = seen.entry((0, None)).or_default();
        root.0 += 1;
        if let Some(first) = hops.get(&1) {
            root.1.insert(*first);
        }
        for (&ttl, &addr) in &hops {
            let e = seen.entry((ttl, Some(addr))).or_default();
            e.0 += 1;
            if let Some(next) = hops.get(&(ttl + 1)) {
                e.1.insert(*next);
            }
        }
    }
    seen.iter()
        .filter(|((_, addr), (_, next))| *addr != Some(dest) && !next.is_empty())
        .map(|(_, (through, next))| flows_for(next.len(), confidence).saturating_sub(*through))
        .max()
        .unwrap_or(0)
}

fn graph(traces: &[Trace], dest: IpAddr, confidence: f64, complete: bool) -> Graph {
    let mut nodes: BTreeMap<(u8, IpAddr), Node> = BTreeMap::new();
    let mut links: BTreeMap<(u8, IpAddr, IpAddr), Vec<u16>> = BTreeMap::new();
    let mut silent = BTreeSet::new();
    for t in traces {
        for h in &t.hops {
            let Some(addr) = h.addr else {
                silent.insert(h.ttl);
                continue;
            };
            let n = nodes.entry((h.ttl, addr)).or_insert_with(|| Node {
                ttl: h.ttl,
                addr,
                flows: Vec::new(),
                rtt_ms: Vec::new(),
            });
            n.flows.push(t.flow);
            n.rtt_ms.extend(
                h.probes
                    .iter()
                    .filter(|p| p.from == Some(addr))
                    .filter_map(|p| p.rtt)
                    .map(|r| r.as_secs_f64() * 1e3),
            );
        }
        let hops = answered(t);
        for (&ttl, &addr) in &hops {
            if let Some(&next) = hops.get(&(ttl + 1)) {
                links.entry((ttl, addr, next)).or_default().push(t.flow);
            }
        }
    }
    Graph {
        destination: dest,
        nodes: nodes.into_values().collect(),
        links: links
            .into_iter()
            .map(|((ttl, from, to), flows)| Link {
                ttl,
                from,
                to,
                flows,
            })
            .collect(),
        flows: traces.len() as u16,
        probes: traces
            .iter()
            .flat_map(|t| &t.hops)
            .map(|h| h.probes.len() as u64)
            .sum(),
        confidence,
        complete,
        reached: traces.iter().any(|t| t.reached),
        silent_ttls: silent.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Hop, Probe, Protocol, ReplyKind};
    use std::time::{Duration, SystemTime};

    #[test]
    fn flows_start_at_zero_and_rotate_within_the_tracers_flows() {
        let plain: Vec<u16> = (0..5).map(|i| flow_number(i, 0)).collect();
        assert_eq!(plain, [0, 1, 2, 3, 4]);
        let turned: Vec<u16> = (0..4).map(|i| flow_number(i, 100)).collect();
        assert_eq!(turned, [0, 101, 102, 103]);
        let span = crate::trace::tracer::FLOWS - 1;
        // Past the last flow number it wraps to 1, never to 0 or beyond.
        assert_eq!(flow_number(2, span - 1), 1);
        assert!((0..40).all(|i| (1..=span).contains(&flow_number(i + 1, u16::MAX))));
    }

    #[test]
    fn the_stopping_rule_gives_the_mda_table() {
        // The table of Augustin et al. for 95%.
        let n: Vec<usize> = (1..=8).map(|k| flows_for(k, 0.95)).collect();
        assert_eq!(n, [6, 11, 16, 21, 27, 33, 38, 44]);
        assert_eq!(flows_for(1, 0.99), 8);
    }

    fn trace(flow: u16, path: &[&str]) -> Trace {
        Trace {
            destination: "192.0.2.9".parse().unwrap(),
            protocol: Protocol::Udp,
            flow,
            source: None,
            started: SystemTime::now(),
            duration: Duration::ZERO,
            reached: true,
            hops: path
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let addr = (*a != "*").then(|| a.parse().unwrap());
                    Hop {
                        ttl: i as u8 + 1,
                        addr,
                        host: None,
                        probes: vec![Probe {
                            rtt: addr.map(|_| Duration::from_millis(1)),
                            from: addr,
                            size: 56,
                            mpls: Vec::new(),
                            reply_ttl: None,
                            kind: addr.map(|_| ReplyKind::TimeExceeded),
                        }],
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn later_flows_probe_only_where_the_first_ones_went_different_ways() {
        let a = ["10.0.0.1", "10.0.1.1", "10.0.3.1", "192.0.2.9"];
        let b = ["10.0.0.1", "10.0.2.1", "10.0.3.1", "192.0.2.9"];
        let first: Vec<Trace> = (0..6)
            .map(|f| trace(f, if f % 2 == 0 { &a } else { &b }))
            .collect();
        let w = middle(&first).expect("a diamond");
        assert_eq!(w.first, 2);
        assert_eq!(w.last, Some((3, "10.0.3.1".parse().unwrap())));
        // A later flow probed at TTLs 2..=3 only is completed from what the others shared,
        // with no probes where none were sent.
        let mut part = trace(7, &["*", "10.0.2.1", "10.0.3.1"]);
        part.hops.remove(0);
        part.reached = false;
        let full = w.fill(part);
        let addrs: Vec<String> = full
            .hops
            .iter()
            .map(|h| h.addr.unwrap().to_string())
            .collect();
        assert_eq!(addrs, b);
        assert!(full.reached);
        assert_eq!(full.hops.iter().map(|h| h.probes.len()).sum::<usize>(), 2);
        // One that went elsewhere at the meeting TTL keeps only what it saw.
        let mut odd = trace(8, &["*", "10.0.2.1", "10.0.9.1"]);
        odd.hops.remove(0);
        odd.reached = false;
        let kept = w.fill(odd);
        assert_eq!(kept.hops.len(), 3);
        assert!(!kept.reached);
        // A flow that found something new where the window starts is traced again whole:
        // the hops before it may not be the ones the first flows shared.
        let mut fresh = trace(9, &["*", "10.0.7.1", "10.0.3.1"]);
        fresh.hops.remove(0);
        assert!(w.is_new(&fresh));
        let mut known = trace(10, &["*", "10.0.1.1", "10.0.3.1"]);
        known.hops.remove(0);
        assert!(!w.is_new(&known));
        // A straight path has no window: nothing to probe again.
        let straight: Vec<Trace> = (0..6).map(|f| trace(f, &a)).collect();
        assert!(middle(&straight).is_none());
    }

    #[test]
    fn a_diamond_needs_the_flows_of_two_next_hops_at_its_head() {
        let dest: IpAddr = "192.0.2.9".parse().unwrap();
        let a = ["10.0.0.1", "10.0.1.1", "10.0.3.1", "192.0.2.9"];
        let b = ["10.0.0.1", "10.0.2.1", "10.0.3.1", "192.0.2.9"];
        // Six flows on one straight path: done.
        let straight: Vec<Trace> = (0..6).map(|f| trace(f, &a)).collect();
        assert_eq!(flows_short(&straight, dest, 0.95), 0);
        // A second branch seen: its head needs 11 flows, and each branch's node 6.
        let mut diamond: Vec<Trace> = (0..6)
            .map(|f| trace(f, if f % 2 == 0 { &a } else { &b }))
            .collect();
        assert_eq!(flows_short(&diamond, dest, 0.95), 11 - 6);
        diamond.extend((6..12).map(|f| trace(f, if f % 2 == 0 { &a } else { &b })));
        assert_eq!(flows_short(&diamond, dest, 0.95), 0);
        let g = graph(&diamond, dest, 0.95, true);
        let at2: Vec<String> = g
            .nodes
            .iter()
            .filter(|n| n.ttl == 2)
            .map(|n| n.addr.to_string())
            .collect();
        assert_eq!(at2, ["10.0.1.1", "10.0.2.1"]);
        let into_3: Vec<(String, usize)> = g
            .links
            .iter()
            .filter(|l| l.ttl == 2)
            .map(|l| (l.from.to_string(), l.flows.len()))
            .collect();
        assert_eq!(
            into_3,
            [("10.0.1.1".to_string(), 6), ("10.0.2.1".to_string(), 6)]
        );
        assert_eq!(g.probes, 48);
        assert!(g.silent_ttls.is_empty());
    }
}
