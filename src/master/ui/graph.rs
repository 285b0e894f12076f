//! The target page: the current paths of every slave (and flow) to one target drawn as one
//! graph in the TraceMON way. Slaves are the sources on the left, hops go right in TTL
//! order, a router that several paths cross is one node, silent hops are hollow nodes,
//! an edge is as wide as the number of results that crossed it in the window, and a node's
//! colour is its mean RTT. The layout is ours and small: each node's column is one past its
//! furthest predecessor, and each column is ordered by the mean row of the slaves that reach
//! it, which keeps a slave's path roughly level and crossings few.

use super::lists::all_targets;
use super::{Nav, Page, PageError, latency_class, ms_f, now_ms, params, series_href, when};
use crate::master::api::hop_stats;
use crate::master::path::{Path, Terminal, addr_text};
use crate::master::routes::{App, Request};
use crate::master::store::{EventQuery, SeriesFilter};
use maud::{Markup, html};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::time::Duration;

const COL_W: f64 = 150.0;
const ROW_H: f64 = 44.0;
const MARGIN: f64 = 30.0;

/// One node of the graph.
#[derive(Default)]
struct Node {
    /// What it shows: an address, `*`, a slave's name, or how the path ended.
    label: String,
    kind: Kind,
    /// TTLs it was seen at.
    ttls: BTreeSet<i64>,
    /// Reverse name, when a hop had one.
    host: String,
    /// Probes sent and answered at it, over every series crossing it.
    sent: i64,
    answered: i64,
    /// RTT extremes and a sum for the mean, ms.
    min: f64,
    max: f64,
    sum: f64,
    /// Series (by slave row) crossing it.
    rows: Vec<usize>,
    slaves: BTreeSet<String>,
    col: usize,
    y: f64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    #[default]
    Hop,
    Silent,
    Source,
    End,
}

/// The node keys of a path from `slave`: the slave, each hop (an address, or a silent hop
/// named by the hops around it, so equal gaps merge), then how it ended unless it reached.
fn keys(slave: &str, path: &Path) -> Vec<(String, Kind, i64)> {
    let mut out = vec![(format!("s:{slave}"), Kind::Source, 0)];
    let mut last_known = format!("s:{slave}");
    for (i, hop) in path.hops.iter().enumerate() {
        let ttl = i as i64 + 1;
        match hop {
            Some(a) => {
                let k = addr_text(a);
                last_known = k.clone();
                out.push((k, Kind::Hop, ttl));
            }
            None => {
                let next = path.hops[i..]
                    .iter()
                    .flatten()
                    .next()
                    .map(addr_text)
                    .unwrap_or_default();
                let run = path.hops[..i]
                    .iter()
                    .rev()
                    .take_while(|h| h.is_none())
                    .count();
                out.push((format!("*:{last_known}>{next}#{run}"), Kind::Silent, ttl));
            }
        }
    }
    match &path.terminal {
        Terminal::Reached => {}
        t => out.push((
            format!("end:{last_known}:{}", t.as_text()),
            Kind::End,
            path.hops.len() as i64 + 1,
        )),
    }
    out
}

pub fn page(app: &App, req: &Request) -> Result<Page, PageError> {
    let p = params(req, &["id", "window"])?;
    let id = p
        .text("id")
        .ok_or_else(|| PageError::Bad("which target? /ui/target?id=UUID-or-name".into()))?;
    let window = p
        .duration("window", Duration::from_secs(3600))
        .map_err(PageError::Bad)?;
    let now = now_ms();
    let since = now - window.as_millis() as i64;
    let targets = all_targets(app)?;
    let series = app.store.series(&SeriesFilter {
        target: Some(id.to_owned()),
        ..SeriesFilter::default()
    })?;
    let target = targets
        .iter()
        .find(|t| t.id == id || t.name == id)
        .ok_or_else(|| {
            PageError::NotFound(format!("no target '{id}' in the config or the results"))
        })?;

    let mut slave_rows: BTreeMap<String, usize> = BTreeMap::new();
    for s in &series {
        let n = slave_rows.len();
        slave_rows.entry(s.slave.clone()).or_insert(n);
    }
    // Rows in name order.
    for (i, v) in slave_rows.values_mut().enumerate() {
        *v = i;
    }
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut listed = Vec::new();
    for s in &series {
        let Some((hash, text)) = &s.current_path else {
            continue;
        };
        let Some(path) = Path::parse_canonical(text) else {
            continue;
        };
        let row = slave_rows[&s.slave];
        // A multipath series: its newest graph, every branch, edges as wide as the flows
        // that took them.
        if let Some(g) = crate::master::export::newest_graph(app, s) {
            add_graph(&mut nodes, &mut edges, &s.slave, row, &g);
            listed.push((s, hash.clone(), text.clone(), path));
            continue;
        }
        let current: Vec<Option<String>> =
            path.hops.iter().map(|h| h.map(|a| a.to_string())).collect();
        let results = app.store.series_hops(s.id, since)?;
        let stats = hop_stats(&results, &current);
        let mut hosts: HashMap<&str, &str> = HashMap::new();
        for h in results.iter().flatten() {
            if !h.host.is_empty() {
                hosts.entry(h.address.as_str()).or_insert(h.host.as_str());
            }
        }
        let ks = keys(&s.slave, &path);
        for (k, kind, ttl) in &ks {
            let n = nodes.entry(k.clone()).or_insert_with(|| Node {
                label: match kind {
                    Kind::Source => s.slave.clone(),
                    Kind::Silent => "*".into(),
                    Kind::End => "…".into(),
                    Kind::Hop => k.clone(),
                },
                kind: *kind,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                ..Node::default()
            });
            if *kind == Kind::End {
                n.label = path.terminal.as_text();
            }
            n.rows.push(row);
            n.slaves.insert(s.slave.clone());
            if *kind == Kind::Hop || *kind == Kind::Silent {
                n.ttls.insert(*ttl);
                if let Some(h) = stats.get(*ttl as usize - 1) {
                    n.sent += h.sent;
                    n.answered += h.answered;
                    if let (Kind::Hop, Some(r)) = (kind, &h.rtt_ms) {
                        n.min = n.min.min(r.min);
                        n.max = n.max.max(r.max);
                        n.sum += r.avg * h.answered as f64;
                    }
                }
                if let Some(host) = hosts.get(k.as_str()) {
                    n.host = (*host).to_owned();
                }
            }
        }
        // Edges of the current path, weighed by the results of the window that crossed them
        // on any path of this series.
        let mine: Vec<(String, String)> = ks
            .windows(2)
            .map(|w| (w[0].0.clone(), w[1].0.clone()))
            .collect();
        let mut counted = false;
        for seen in app.store.path_history(s.id, since, now)? {
            let Some(old) = Path::parse_canonical(&seen.path) else {
                continue;
            };
            let theirs: BTreeSet<(String, String)> = keys(&s.slave, &old)
                .windows(2)
                .map(|w| (w[0].0.clone(), w[1].0.clone()))
                .collect();
            for e in &mine {
                if theirs.contains(e) {
                    *edges.entry(e.clone()).or_default() += seen.count;
                    counted = true;
                }
            }
        }
        if !counted {
            for e in mine {
                edges.entry(e).or_insert(1);
            }
        }
        listed.push((s, hash.clone(), text.clone(), path));
    }
    let svg = draw(&mut nodes, &edges, slave_rows.len());
    let events = app.store.events(&EventQuery {
        series: SeriesFilter {
            target: Some(id.to_owned()),
            ..SeriesFilter::default()
        },
        limit: 50,
        ..EventQuery::default()
    })?;
    let body = html! {
        p.sub {
            code { (target.address) } " · " (series.len()) " series from " (slave_rows.len()) " slaves · "
            "edge width: results in the last " (humantime::format_duration(window)) " (multipath: flows of the newest discovery) · node colour: mean RTT"
        }
        @if nodes.is_empty() {
            p.empty { "No paths to this target yet." }
        } @else {
            div.graph-wrap { (svg) }
            p.legend {
                @for (c, label) in [("l0", "< 5 ms"), ("l1", "< 20"), ("l2", "< 50"), ("l3", "< 100"), ("l4", "< 200"), ("l5", "≥ 200")] {
                    span class={ "swatch " (c) } {} (label) " "
                }
                span class="swatch silent" {} "silent"
            }
        }
        h2 { "Current paths" }
        table.list #paths {
            thead { tr { th { "Slave" } th { "Flow" } th { "Path" } th { "Since" } th { "Changes" } } }
            tbody {
                @for (s, _hash, text, _) in &listed {
                    tr {
                        td { a href=(series_href(&s.slave, &s.target_id, Some(s.flow))) { (s.slave) } }
                        td.num { (s.flow) }
                        td.mono.path { (text) }
                        td { (s.current_since.map(when).unwrap_or_default()) }
                        td.num { (s.changes_total) }
                    }
                }
            }
        }
        h2 { "Events" }
        (super::series::event_list(&events))
    };
    Ok(Page {
        title: format!("Target {}", target.name),
        nav: Nav::Targets,
        body,
    })
}

/// Adds a multipath graph from `slave` (on `row`): its nodes with their RTTs, an edge from
/// the slave to each first-TTL node and one per link, weighed by their flows.
fn add_graph(
    nodes: &mut BTreeMap<String, Node>,
    edges: &mut BTreeMap<(String, String), i64>,
    slave: &str,
    row: usize,
    g: &crate::master::store::graph::Graph,
) {
    let source = format!("s:{slave}");
    let new_node = |label: String, kind: Kind| Node {
        label,
        kind,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        ..Node::default()
    };
    let n = nodes
        .entry(source.clone())
        .or_insert_with(|| new_node(slave.to_owned(), Kind::Source));
    n.rows.push(row);
    n.slaves.insert(slave.to_owned());
    let first = g.nodes.iter().map(|n| n.ttl).min().unwrap_or(1);
    for gn in &g.nodes {
        let key = addr_text(&gn.address);
        let n = nodes
            .entry(key.clone())
            .or_insert_with(|| new_node(key.clone(), Kind::Hop));
        n.ttls.insert(i64::from(gn.ttl));
        n.rows.push(row);
        n.slaves.insert(slave.to_owned());
        n.sent += gn.rtts_ns.len().max(gn.flows.len()) as i64;
        n.answered += gn.rtts_ns.len() as i64;
        for r in &gn.rtts_ns {
            let ms = *r as f64 / 1e6;
            n.min = n.min.min(ms);
            n.max = n.max.max(ms);
            n.sum += ms;
        }
        if gn.ttl == first {
            *edges.entry((source.clone(), key)).or_default() += gn.flows.len() as i64;
        }
    }
    for l in &g.links {
        *edges
            .entry((addr_text(&l.from), addr_text(&l.to)))
            .or_default() += l.flows.len() as i64;
    }
}

/// Lays the nodes out and draws them with their edges.
fn draw(
    nodes: &mut BTreeMap<String, Node>,
    edges: &BTreeMap<(String, String), i64>,
    rows: usize,
) -> Markup {
    // Columns: sources at 0, then each node one past its furthest predecessor (bounded
    // passes, so a loop in the data cannot keep it going).
    for n in nodes.values_mut() {
        n.col = if n.kind == Kind::Source {
            0
        } else {
            n.ttls.iter().next().copied().unwrap_or(1).max(1) as usize
        };
    }
    for _ in 0..nodes.len().min(64) {
        let mut moved = false;
        for (a, b) in edges.keys() {
            let ca = nodes.get(a).map_or(0, |n| n.col);
            if let Some(nb) = nodes.get_mut(b)
                && nb.col <= ca
            {
                nb.col = ca + 1;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let cols = nodes.values().map(|n| n.col).max().unwrap_or(0) + 1;
    let mut by_col: Vec<Vec<(f64, String)>> = vec![Vec::new(); cols];
    for (k, n) in nodes.iter() {
        let bary = n.rows.iter().sum::<usize>() as f64 / n.rows.len().max(1) as f64;
        by_col[n.col].push((bary, k.clone()));
    }
    let tallest = by_col.iter().map(Vec::len).max().unwrap_or(1).max(rows);
    let height = tallest as f64 * ROW_H + 2.0 * MARGIN;
    for col in &mut by_col {
        col.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // Spread the column over the height, centred on where its slaves are.
        let n = col.len() as f64;
        let span = tallest as f64;
        for (i, (bary, k)) in col.iter().enumerate() {
            let even = (i as f64 + 0.5) * span / n;
            let want = bary + 0.5;
            let y = if n as usize == tallest {
                even
            } else {
                (want * 0.5 + even * 0.5).clamp(0.5, span - 0.5)
            };
            if let Some(node) = nodes.get_mut(k) {
                node.y = MARGIN + y * ROW_H;
            }
        }
        // Keep nodes of one column apart after the pull towards their slaves.
        let mut ys: Vec<(f64, String)> = col.iter().map(|(_, k)| (nodes[k].y, k.clone())).collect();
        ys.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut last = f64::NEG_INFINITY;
        for (y, k) in ys {
            let y = y.max(last + ROW_H * 0.8);
            last = y;
            if let Some(node) = nodes.get_mut(&k) {
                node.y = y;
            }
        }
    }
    let height = height.max(nodes.values().map(|n| n.y).fold(0.0, f64::max) + MARGIN);
    let width = cols as f64 * COL_W + 2.0 * MARGIN;
    let x = |n: &Node| MARGIN + 10.0 + n.col as f64 * COL_W;
    let edge = |a: &str, b: &str, count: i64| {
        let (na, nb) = (nodes.get(a)?, nodes.get(b)?);
        let (x1, y1, x2, y2) = (x(na), na.y, x(nb), nb.y);
        let mid = (x1 + x2) / 2.0;
        let w = (1.0 + (count as f64 + 1.0).log2()).min(10.0);
        Some(html! {
            path.edge data-from=(a) data-to=(b) data-count=(count) stroke-width=(format!("{w:.1}"))
                d=(format!("M{x1:.0} {y1:.0}C{mid:.0} {y1:.0} {mid:.0} {y2:.0} {x2:.0} {y2:.0}")) {
                title { (count) " results" }
            }
        })
    };
    html! {
        svg.graph #graph xmlns="http://www.w3.org/2000/svg" width=(format!("{width:.0}")) height=(format!("{height:.0}"))
            viewBox=(format!("0 0 {width:.0} {height:.0}")) role="img" aria-label="paths to this target" {
            @for c in 1..cols {
                text.ttl x=(format!("{:.0}", MARGIN + 10.0 + c as f64 * COL_W)) y="14" { "hop " (c) }
            }
            g.edges { @for ((a, b), count) in edges { (edge(a, b, *count).unwrap_or_default()) } }
            @for (k, n) in nodes.iter() {
                (node(k, n, x(n)))
            }
        }
    }
}

fn node(key: &str, n: &Node, x: f64) -> Markup {
    let mean = (n.answered > 0 && n.sum > 0.0).then(|| n.sum / n.answered as f64);
    let (class, radius) = match n.kind {
        Kind::Source => ("node source".to_owned(), 9.0),
        Kind::Silent => ("node silent".to_owned(), 6.0),
        Kind::End => ("node end".to_owned(), 6.0),
        Kind::Hop => (
            format!("node hop {}", mean.map_or("l-", latency_class)),
            7.0,
        ),
    };
    let loss = if n.sent > 0 {
        1.0 - n.answered as f64 / n.sent as f64
    } else {
        0.0
    };
    let ttls: Vec<String> = n.ttls.iter().map(i64::to_string).collect();
    let mut title = match n.kind {
        Kind::Source => format!("slave {}", n.label),
        Kind::Silent => format!("hop {}: no answer", ttls.join("/")),
        Kind::End => format!("the path ends here: {}", n.label),
        Kind::Hop => format!("hop {}: {}", ttls.join("/"), n.label),
    };
    if !n.host.is_empty() {
        let _ = write!(title, " ({})", n.host);
    }
    if n.kind == Kind::Hop || n.kind == Kind::Silent {
        let _ = write!(title, "\nloss {:.1}% of {} probes", loss * 100.0, n.sent);
    }
    if let Some(mean) = mean {
        let _ = write!(
            title,
            "\nRTT min {} / avg {} / max {} ms",
            ms_f(n.min),
            ms_f(mean),
            ms_f(n.max)
        );
    }
    if n.kind != Kind::Source {
        let _ = write!(
            title,
            "\nseen by {}",
            n.slaves.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let label: String = n.label.chars().take(24).collect();
    let host: String = n.host.chars().take(24).collect();
    html! {
        g class=(class) data-key=(key) data-ttl=(ttls.join(" ")) tabindex="0" {
            title { (title) }
            circle cx=(format!("{x:.0}")) cy=(format!("{:.0}", n.y)) r=(radius) {}
            text x=(format!("{x:.0}")) y=(format!("{:.0}", n.y + radius + 12.0)) { (label) }
            @if !host.is_empty() {
                text.host x=(format!("{x:.0}")) y=(format!("{:.0}", n.y + radius + 23.0)) { (host) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Path {
        Path::parse_canonical(text).unwrap()
    }

    fn names(slave: &str, text: &str) -> Vec<String> {
        keys(slave, &path(text)).into_iter().map(|k| k.0).collect()
    }

    #[test]
    fn equal_gaps_between_the_same_hops_are_one_node_and_others_are_not() {
        let a = names("a", "10.0.0.1 * * 10.0.0.4 | reached");
        let b = names("b", "10.0.0.1 * * 10.0.0.4 | reached");
        let c = names("c", "10.0.0.1 * 10.0.0.5 | reached");
        assert_eq!(
            a,
            [
                "s:a",
                "10.0.0.1",
                "*:10.0.0.1>10.0.0.4#0",
                "*:10.0.0.1>10.0.0.4#1",
                "10.0.0.4"
            ]
        );
        assert_eq!(a[1..], b[1..], "only the source differs");
        assert_eq!(
            c[2], "*:10.0.0.1>10.0.0.5#0",
            "a gap before another hop is its own"
        );
    }

    #[test]
    fn a_path_that_did_not_reach_ends_in_a_node_saying_how() {
        let k = keys("a", &path("10.0.0.1 | gave-up"));
        assert_eq!(k.last().unwrap().0, "end:10.0.0.1:gave-up");
        assert!(k.last().unwrap().1 == Kind::End);
        let reached = keys("a", &path("10.0.0.1 | reached"));
        assert!(reached.iter().all(|k| k.1 != Kind::End));
    }
}
