//! A multipath result's graph as the master checks, stores and compares it.
//!
//! The graph is stored in two parts, like a path: its **shape** (the nodes and the links
//! between them, no numbers) once per distinct shape in `graphs`, found again by its hash, and
//! per result only the numbers (which flows reached each node and took each link, the nodes'
//! RTTs, the probe count) as a few varints in `result_graphs`. A diamond that stays as it is
//! costs its shape once however often it is measured.

use super::codec::{self, Reader, put};
use crate::proto::{Multipath, MultipathLink, MultipathNode};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Most nodes one graph may have (a 4-way diamond over 30 TTLs has 120).
pub const MAX_NODES: usize = 1024;
/// Most links one graph may have.
pub const MAX_LINKS: usize = 4096;
/// Most flows one graph may say it traced.
pub const MAX_FLOWS: u16 = 256;
/// Most RTTs one node may carry.
pub const MAX_RTTS: usize = 256;

/// One node: an address answering at one TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The TTL.
    pub ttl: u8,
    /// The address.
    pub address: IpAddr,
    /// Flows (their numbers) that found it there.
    pub flows: Vec<u16>,
    /// Its RTTs, ns.
    pub rtts_ns: Vec<i64>,
}

/// One link: two nodes at consecutive TTLs some flows went through one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The TTL of `from`.
    pub ttl: u8,
    /// The nearer address.
    pub from: IpAddr,
    /// The next one.
    pub to: IpAddr,
    /// Flows that took it.
    pub flows: Vec<u16>,
}

/// A checked multipath graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    /// The confidence asked for, 0..1.
    pub confidence: f64,
    /// Flows traced.
    pub flows: u16,
    /// Probes sent.
    pub probes: u64,
    /// The stopping rule was met everywhere.
    pub complete: bool,
    /// Nodes by TTL, then address.
    pub nodes: Vec<Node>,
    /// Links by TTL, then addresses.
    pub links: Vec<Link>,
}

/// One branch element, what change detection compares: a node `(ttl, None, addr)` or a
/// link `(ttl, Some(from), to)`.
pub type Element = (u8, Option<IpAddr>, IpAddr);

/// A node's or link's flow numbers, sorted, each once, at most as many as were traced.
fn flow_list(what: &str, flows: &[u16], traced: u16) -> Result<Vec<u16>, String> {
    let mut sorted = flows.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() > usize::from(traced) {
        return Err(format!(
            "{what}: {} flows, more than the {traced} traced",
            sorted.len()
        ));
    }
    Ok(sorted)
}

fn address(what: &str, text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        format!("{what}: '{shown}' is not an address")
    })
}

impl Graph {
    /// Checks a result's `Multipath`: sizes within bounds, addresses that parse, flows below
    /// the count traced, each node once, and links only between nodes at consecutive TTLs.
    pub fn from_wire(m: &Multipath) -> Result<Graph, String> {
        if !(m.confidence > 0.0 && m.confidence < 1.0) {
            return Err(format!(
                "Multipath: Confidence {} is not between 0 and 1",
                m.confidence
            ));
        }
        if m.flows == 0 || m.flows > MAX_FLOWS {
            return Err(format!(
                "Multipath: Flows {} is out of range 1..{MAX_FLOWS}",
                m.flows
            ));
        }
        if m.nodes.len() > MAX_NODES || m.links.len() > MAX_LINKS {
            return Err(format!(
                "Multipath: at most {MAX_NODES} nodes and {MAX_LINKS} links"
            ));
        }
        let mut nodes = BTreeMap::new();
        for n in &m.nodes {
            let what = format!("Multipath node at TTL {}", n.ttl);
            if n.ttl == 0 {
                return Err("Multipath: a node has TTL 0".into());
            }
            let addr = address(&what, &n.ip)?;
            if n.rtts.len() > MAX_RTTS || n.rtts.iter().any(|r| *r < 0) {
                return Err(format!(
                    "{what}: RTTs must be at most {MAX_RTTS} non-negative numbers"
                ));
            }
            let node = Node {
                ttl: n.ttl,
                address: addr,
                flows: flow_list(&what, &n.flows, m.flows)?,
                rtts_ns: n.rtts.clone(),
            };
            if nodes.insert((n.ttl, addr), node).is_some() {
                return Err(format!("{what}: {addr} is listed twice"));
            }
        }
        let mut links = BTreeMap::new();
        for l in &m.links {
            let what = format!("Multipath link at TTL {}", l.ttl);
            let (from, to) = (address(&what, &l.from)?, address(&what, &l.to)?);
            let next = l.ttl.checked_add(1).ok_or(format!("{what}: no next TTL"))?;
            if !nodes.contains_key(&(l.ttl, from)) || !nodes.contains_key(&(next, to)) {
                return Err(format!(
                    "{what}: {from} → {to} joins addresses that are not nodes at TTLs {} and {next}",
                    l.ttl
                ));
            }
            let link = Link {
                ttl: l.ttl,
                from,
                to,
                flows: flow_list(&what, &l.flows, m.flows)?,
            };
            if links.insert((l.ttl, from, to), link).is_some() {
                return Err(format!("{what}: {from} → {to} is listed twice"));
            }
        }
        Ok(Graph {
            confidence: m.confidence,
            flows: m.flows,
            probes: m.probes,
            complete: m.complete,
            nodes: nodes.into_values().collect(),
            links: links.into_values().collect(),
        })
    }

    /// The wire form again (as the slave sent it, ordered).
    pub fn to_wire(&self) -> Multipath {
        Multipath {
            confidence: self.confidence,
            flows: self.flows,
            probes: self.probes,
            complete: self.complete,
            nodes: self
                .nodes
                .iter()
                .map(|n| MultipathNode {
                    ttl: n.ttl,
                    ip: n.address.to_string(),
                    flows: n.flows.clone(),
                    rtts: n.rtts_ns.clone(),
                })
                .collect(),
            links: self
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

    /// Its branch elements: every node and every link.
    pub fn elements(&self) -> BTreeSet<Element> {
        let nodes = self.nodes.iter().map(|n| (n.ttl, None, n.address));
        let links = self.links.iter().map(|l| (l.ttl, Some(l.from), l.to));
        nodes.chain(links).collect()
    }

    /// The stored shape: the nodes' TTLs and addresses, then the links as node indexes.
    pub fn shape(&self) -> Vec<u8> {
        let mut out = vec![SHAPE_FORMAT];
        put(&mut out, self.nodes.len() as u64);
        for n in &self.nodes {
            out.push(n.ttl);
            match n.address {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
        }
        let index: BTreeMap<(u8, IpAddr), usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| ((n.ttl, n.address), i))
            .collect();
        put(&mut out, self.links.len() as u64);
        for l in &self.links {
            put(&mut out, index[&(l.ttl, l.from)] as u64);
            put(&mut out, index[&(l.ttl + 1, l.to)] as u64);
        }
        out
    }

    /// The stored numbers of one result, in the shape's order.
    pub fn data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.nodes.len());
        put(&mut out, (self.confidence * 1e6).round() as u64);
        put(&mut out, u64::from(self.flows));
        put(&mut out, self.probes);
        out.push(u8::from(self.complete));
        for n in &self.nodes {
            put_flows(&mut out, &n.flows);
            put(&mut out, n.rtts_ns.len() as u64);
            let mut last_us = 0;
            for r in &n.rtts_ns {
                put(&mut out, codec::rtt_code(*r, &mut last_us));
            }
        }
        for l in &self.links {
            put_flows(&mut out, &l.flows);
        }
        out
    }

    /// Reads a graph back from its shape and one result's numbers; `None` for bytes this
    /// code did not write.
    pub fn decode(shape: &[u8], data: &[u8]) -> Option<Graph> {
        let (&format, rest) = shape.split_first()?;
        if format != SHAPE_FORMAT {
            return None;
        }
        let mut s = Reader(rest);
        let n_nodes = usize::try_from(s.get()?).ok()?.min(MAX_NODES);
        let mut places = Vec::with_capacity(n_nodes);
        for _ in 0..n_nodes {
            let ttl = s.byte()?;
            let address = match s.byte()? {
                4 => IpAddr::from(<[u8; 4]>::try_from(s.bytes(4)?).ok()?),
                6 => IpAddr::from(<[u8; 16]>::try_from(s.bytes(16)?).ok()?),
                _ => return None,
            };
            places.push((ttl, address));
        }
        let n_links = usize::try_from(s.get()?).ok()?.min(MAX_LINKS);
        let mut ends = Vec::with_capacity(n_links);
        for _ in 0..n_links {
            let from = *places.get(usize::try_from(s.get()?).ok()?)?;
            let to = *places.get(usize::try_from(s.get()?).ok()?)?;
            ends.push((from, to));
        }
        let mut d = Reader(data);
        let confidence = d.get()? as f64 / 1e6;
        let flows = u16::try_from(d.get()?).ok()?;
        let probes = d.get()?;
        let complete = d.byte()? != 0;
        let mut nodes = Vec::with_capacity(places.len());
        for (ttl, address) in places {
            let node_flows = get_flows(&mut d)?;
            let n = usize::try_from(d.get()?).ok()?.min(MAX_RTTS);
            let mut last_us = 0;
            let rtts_ns = (0..n)
                .map(|_| codec::code_rtt(d.get()?, &mut last_us))
                .collect::<Option<Vec<i64>>>()?;
            nodes.push(Node {
                ttl,
                address,
                flows: node_flows,
                rtts_ns,
            });
        }
        let mut links = Vec::with_capacity(ends.len());
        for ((ttl, from), (_, to)) in ends {
            links.push(Link {
                ttl,
                from,
                to,
                flows: get_flows(&mut d)?,
            });
        }
        Some(Graph {
            confidence,
            flows,
            probes,
            complete,
            nodes,
            links,
        })
    }
}

/// The first byte of a stored shape.
const SHAPE_FORMAT: u8 = 1;

/// A sorted flow list as its count and the gaps between its numbers.
fn put_flows(out: &mut Vec<u8>, flows: &[u16]) {
    put(out, flows.len() as u64);
    let mut last = 0u16;
    for (i, f) in flows.iter().enumerate() {
        put(out, u64::from(if i == 0 { *f } else { f - last }));
        last = *f;
    }
}

fn get_flows(r: &mut Reader<'_>) -> Option<Vec<u16>> {
    let n = usize::try_from(r.get()?).ok()?.min(usize::from(MAX_FLOWS));
    let mut out = Vec::with_capacity(n);
    let mut last = 0u16;
    for i in 0..n {
        let gap = u16::try_from(r.get()?).ok()?;
        last = if i == 0 { gap } else { last.checked_add(gap)? };
        out.push(last);
    }
    Some(out)
}

/// What the branch detector remembers of one series between results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Branches {
    /// The confirmed elements (see [`Element`]), as text.
    pub known: BTreeSet<String>,
    /// Known elements missing from the last results: rounds in a row.
    pub missing: BTreeMap<String, u32>,
    /// Elements not known, present in the last results: rounds in a row.
    pub fresh: BTreeMap<String, u32>,
    /// Rounds seen, counted up to `confirm`: while it is below, what a round finds joins
    /// the set without an event (one round at 95% may miss a branch; the set is learnt over
    /// the first `confirm` rounds, as a change is confirmed over as many).
    #[serde(default)]
    pub rounds: u32,
}

/// An element as text: `"3 10.0.1.1"` for a node, `"3 10.0.0.1>10.0.1.1"` for a link.
pub fn element_text(e: &Element) -> String {
    match e.1 {
        None => format!("{} {}", e.0, e.2),
        Some(from) => format!("{} {from}>{}", e.0, e.2),
    }
}

/// What one result changed in the confirmed set of branches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BranchChange {
    /// Elements confirmed gone (missing from `confirm` results in a row).
    pub lost: Vec<String>,
    /// Elements confirmed new (present in `confirm` results in a row).
    pub new: Vec<String>,
}

impl Branches {
    /// Feeds one result's graph. A flow moving to another branch changes no element, so
    /// it changes nothing here. An incomplete graph (the flow budget ran out) counts for
    /// what it found but not against what it did not.
    pub fn observe(&mut self, g: &Graph, confirm: u32) -> BranchChange {
        let confirm = confirm.max(1);
        let seen: BTreeSet<String> = g.elements().iter().map(element_text).collect();
        let mut change = BranchChange::default();
        if self.known.is_empty() {
            self.rounds = 0;
        }
        if self.rounds < confirm {
            self.rounds += 1;
            self.known.extend(seen);
            self.fresh.clear();
            return change;
        }
        for e in &self.known {
            if seen.contains(e) {
                self.missing.remove(e);
            } else if g.complete {
                let n = self.missing.entry(e.clone()).or_insert(0);
                *n += 1;
                if *n >= confirm {
                    change.lost.push(e.clone());
                }
            }
        }
        self.fresh.retain(|e, _| seen.contains(e));
        for e in &seen {
            if self.known.contains(e) {
                continue;
            }
            let n = self.fresh.entry(e.clone()).or_insert(0);
            *n += 1;
            if *n >= confirm {
                change.new.push(e.clone());
            }
        }
        // One incident, one event: elements that went missing (or came) a round later than
        // the ones confirmed now go with them, rather than in an event of their own next
        // round (a route changed in the middle of a discovery round splits its elements).
        if !change.lost.is_empty() {
            for e in self.missing.keys() {
                if !change.lost.contains(e) {
                    change.lost.push(e.clone());
                }
            }
            change.lost.sort();
        }
        if !change.new.is_empty() {
            for e in self.fresh.keys() {
                if !change.new.contains(e) {
                    change.new.push(e.clone());
                }
            }
            change.new.sort();
        }
        for e in &change.lost {
            self.known.remove(e);
            self.missing.remove(e);
        }
        for e in &change.new {
            self.known.insert(e.clone());
            self.fresh.remove(e);
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph whose flows take the given paths (addresses 10.0.0.x by last number).
    fn graph(paths: &[&[u8]], complete: bool) -> Graph {
        let mut nodes: BTreeMap<(u8, IpAddr), Node> = BTreeMap::new();
        let mut links: BTreeMap<(u8, IpAddr, IpAddr), Link> = BTreeMap::new();
        let a = |x: u8| IpAddr::from([10, 0, 0, x]);
        for (flow, p) in paths.iter().enumerate() {
            for (i, x) in p.iter().enumerate() {
                let ttl = i as u8 + 1;
                let n = nodes.entry((ttl, a(*x))).or_insert(Node {
                    ttl,
                    address: a(*x),
                    flows: vec![],
                    rtts_ns: vec![],
                });
                n.flows.push(flow as u16);
                n.rtts_ns.push(1_000_000 * i64::from(ttl) + 17_000);
                if let Some(next) = p.get(i + 1) {
                    links
                        .entry((ttl, a(*x), a(*next)))
                        .or_insert(Link {
                            ttl,
                            from: a(*x),
                            to: a(*next),
                            flows: vec![],
                        })
                        .flows
                        .push(flow as u16);
                }
            }
        }
        Graph {
            confidence: 0.95,
            flows: paths.len() as u16,
            probes: 4 * paths.len() as u64,
            complete,
            nodes: nodes.into_values().collect(),
            links: links.into_values().collect(),
        }
    }

    const A: &[u8] = &[1, 2, 4, 9];
    const B: &[u8] = &[1, 3, 4, 9];

    #[test]
    fn a_graph_round_trips_through_its_wire_form_and_its_stored_parts() {
        let g = graph(&[A, B, A, B, B, A], true);
        let back = Graph::from_wire(&g.to_wire()).unwrap();
        assert_eq!(back, g);
        let stored = Graph::decode(&g.shape(), &g.data()).unwrap();
        assert_eq!(stored, g);
        // Same shape, other numbers: one stored shape serves both.
        let h = graph(&[B, B, A, A, B, A, A], true);
        assert_eq!(h.shape(), g.shape());
        assert_ne!(h.data(), g.data());
        assert_eq!(Graph::decode(&g.shape(), &h.data()).unwrap(), h);
        assert!(Graph::decode(&g.shape(), &g.data()[..5]).is_none());
    }

    #[test]
    fn bad_graphs_are_refused_with_a_reason() {
        let good = graph(&[A, B], true).to_wire();
        let mut m = good.clone();
        m.nodes[0].ip = "10.0.0.300".into();
        assert!(
            Graph::from_wire(&m)
                .unwrap_err()
                .contains("is not an address")
        );
        let mut m = good.clone();
        m.links[0].to = "10.0.0.77".into();
        assert!(
            Graph::from_wire(&m)
                .unwrap_err()
                .contains("not nodes at TTLs")
        );
        let mut m = good.clone();
        m.nodes[1].flows.extend([5, 6]);
        assert!(
            Graph::from_wire(&m)
                .unwrap_err()
                .contains("3 flows, more than the 2 traced")
        );
        let mut m = good.clone();
        m.nodes.push(m.nodes[0].clone());
        assert!(Graph::from_wire(&m).unwrap_err().contains("listed twice"));
        let mut m = good.clone();
        m.confidence = 1.5;
        assert!(Graph::from_wire(&m).is_err());
        let mut m = good;
        m.nodes[0].rtts.push(-1);
        assert!(Graph::from_wire(&m).unwrap_err().contains("non-negative"));
    }

    #[test]
    fn flows_rehashing_inside_an_unchanged_diamond_change_nothing() {
        let mut b = Branches::default();
        assert_eq!(
            b.observe(&graph(&[A, B, A, B], true), 3),
            BranchChange::default()
        );
        for _ in 0..10 {
            let change = b.observe(&graph(&[B, A, B, B, A, A], true), 3);
            assert_eq!(change, BranchChange::default());
        }
    }

    #[test]
    fn the_set_is_learnt_over_the_first_confirm_rounds() {
        let mut b = Branches::default();
        // The first round missed branch B; the second finds it: no event, it is known.
        assert_eq!(b.observe(&graph(&[A, A], true), 2), BranchChange::default());
        assert_eq!(b.observe(&graph(&[A, B], true), 2), BranchChange::default());
        assert_eq!(b.known.len(), 10);
        for _ in 0..3 {
            assert_eq!(b.observe(&graph(&[B, A], true), 2), BranchChange::default());
        }
    }

    #[test]
    fn a_lost_branch_is_told_once_after_confirm_results_and_its_return_once() {
        let mut b = Branches::default();
        for _ in 0..3 {
            b.observe(&graph(&[A, B], true), 3);
        }
        let only_a = graph(&[A, A, A], true);
        assert!(b.observe(&only_a, 3).lost.is_empty());
        assert!(b.observe(&only_a, 3).lost.is_empty());
        let change = b.observe(&only_a, 3);
        assert_eq!(
            change.lost,
            ["1 10.0.0.1>10.0.0.3", "2 10.0.0.3", "2 10.0.0.3>10.0.0.4"]
        );
        assert!(change.new.is_empty());
        for _ in 0..5 {
            assert_eq!(b.observe(&only_a, 3), BranchChange::default());
        }
        let both = graph(&[A, B], true);
        assert!(b.observe(&both, 3).new.is_empty());
        assert!(b.observe(&both, 3).new.is_empty());
        assert_eq!(b.observe(&both, 3).new.len(), 3);
        assert_eq!(b.observe(&both, 3), BranchChange::default());
    }

    #[test]
    fn a_branch_whose_parts_go_a_round_apart_is_one_event() {
        let mut b = Branches::default();
        for _ in 0..2 {
            b.observe(&graph(&[A, B], true), 2);
        }
        // The route changed mid-round: this round still saw B's first link and node, not
        // its link on to 10.0.0.4.
        let partial = graph(&[A, &[1, 3]], true);
        assert!(b.observe(&partial, 2).lost.is_empty());
        let only_a = graph(&[A, A], true);
        let change = b.observe(&only_a, 2);
        assert_eq!(
            change.lost,
            ["1 10.0.0.1>10.0.0.3", "2 10.0.0.3", "2 10.0.0.3>10.0.0.4"]
        );
        for _ in 0..4 {
            assert_eq!(b.observe(&only_a, 2), BranchChange::default());
        }
    }

    #[test]
    fn one_miss_among_complete_rounds_and_misses_of_incomplete_rounds_are_no_change() {
        let mut b = Branches::default();
        b.observe(&graph(&[A, B], true), 2);
        b.observe(&graph(&[B, A], true), 2);
        // Missed once, then seen again: the count starts over.
        assert!(b.observe(&graph(&[A], true), 2).lost.is_empty());
        assert!(b.observe(&graph(&[A, B], true), 2).lost.is_empty());
        assert!(b.observe(&graph(&[A], true), 2).lost.is_empty());
        // A round that ran out of flows says nothing about what it did not see.
        for _ in 0..5 {
            assert!(b.observe(&graph(&[A], false), 2).lost.is_empty());
        }
        assert_eq!(b.observe(&graph(&[A], true), 2).lost.len(), 3);
    }
}
