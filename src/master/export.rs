//! Exports: stored results as JSON Lines, CSV, or RIPE Atlas traceroute results (so Atlas
//! tooling reads our data), and a target's paths across all slaves as a Graphviz DOT graph.

use super::api::Params;
use super::routes::{App, Request, Response};
use super::store::{Cursor, ResultQuery, Store, StoredResult};
use crate::asn::{AsnDb, Owner};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

/// Most results in one export; more come with the `X-Next-Cursor` of the answer.
pub const MAX_EXPORT: i64 = 100_000;

/// Results per page of an export: one store query and one chunk of the body, so an export
/// holds one page in memory and a read connection only while it reads a page.
pub const EXPORT_PAGE: u32 = 1000;

/// Routes `GET /api/v1/export/...`; `None` for other paths.
pub fn handle(app: &App, req: &Request) -> Option<Response> {
    if req.method != "GET" {
        return None;
    }
    let r = match req.path.as_str() {
        "/api/v1/export/results.jsonl" => results(app, req, Format::Jsonl),
        "/api/v1/export/results.csv" => results(app, req, Format::Csv),
        "/api/v1/export/atlas.json" => results(app, req, Format::Atlas),
        "/api/v1/export/graph.dot" => graph(app, req),
        _ => return None,
    };
    Some(r)
}

#[derive(Clone, Copy)]
enum Format {
    Jsonl,
    Csv,
    Atlas,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Atlas => "application/json",
        }
    }
}

fn results(app: &App, req: &Request, format: Format) -> Response {
    let q = match super::api::result_query(app, &req.query, MAX_EXPORT, 10_000) {
        Ok(q) => q,
        Err(e) => return e.response(),
    };
    let owners = app.owners.enabled().then(|| app.owners.get());
    match export(app.store.clone(), q, format, EXPORT_PAGE, owners) {
        Ok(r) => r,
        Err(e) => {
            log::error!("export failed: {e:#}");
            Response::error(500, "export failed")
        }
    }
}

/// The export `q` asks for, in pages of `page` results. What fits in the first page is
/// answered whole; a longer export streams the rest page by page.
///
/// The `X-Next-Cursor` header goes before the body, so where the export ends is looked up
/// first: the cursor of its `limit`-th result (an offset query that unpacks one result). The
/// walk then stops at that cursor rather than after `limit` results, so a result that
/// arrives inside the exported range meanwhile is sent (the body may hold a few more than
/// `limit`) and the next export, from the header's cursor, neither repeats nor skips one.
/// Failures before the first byte is sent (both lookups) are errors here, hence a 500.
fn export(
    store: Arc<dyn Store>,
    q: ResultQuery,
    format: Format,
    page: u32,
    owners: Option<Arc<AsnDb>>,
) -> anyhow::Result<Response> {
    let limit = q.limit;
    let page = page.max(1);
    let end = if limit > page {
        let last = ResultQuery {
            offset: limit - 1,
            limit: 1,
            ..q.clone()
        };
        store.results(&last)?.1
    } else {
        None
    };
    let first = ResultQuery {
        until: end,
        limit: limit.min(page),
        ..q
    };
    let (rows, after) = store.results(&first)?;
    let mut writer = Writer::new(format, owners);
    let mut chunk = writer.page(&rows)?;
    let next_cursor = if limit > page { end } else { after };
    let more = limit > page && after.is_some() && after != end;
    let mut r = if more {
        let left = end.is_none().then(|| limit - rows.len() as u32);
        let walk = Pages {
            store,
            next: Some(ResultQuery {
                before: after,
                ..first
            }),
            page,
            left,
            writer,
            ready: Some(chunk),
        };
        Response::stream(200, format.content_type(), Box::new(walk))
    } else {
        writer.finish(&mut chunk);
        Response::new(200, format.content_type(), chunk)
    };
    if let Some(c) = next_cursor {
        r.headers.push(("X-Next-Cursor", c.text()));
    }
    Ok(r)
}

/// An export's pages after the first, read and formatted one at a time as the body is sent.
struct Pages {
    store: Arc<dyn Store>,
    /// The query of the next page; `None` once the last chunk is out.
    next: Option<ResultQuery>,
    page: u32,
    /// Results still to send when no cursor bounds the walk (fewer than `limit` existed).
    left: Option<u32>,
    writer: Writer,
    /// A chunk made before the body started (the first page).
    ready: Option<Vec<u8>>,
}

impl Pages {
    fn read(&mut self, mut q: ResultQuery) -> anyhow::Result<Vec<u8>> {
        q.limit = self.left.map_or(self.page, |left| left.min(self.page));
        let (rows, after) = self
            .store
            .results(&q)
            .context("cannot read the next page of the export")?;
        if let Some(left) = &mut self.left {
            *left = left.saturating_sub(rows.len() as u32);
        }
        let mut chunk = self.writer.page(&rows)?;
        let at_end = |c: Cursor| Some(c) == q.until || self.left == Some(0);
        match after {
            Some(c) if !at_end(c) => {
                q.before = Some(c);
                self.next = Some(q);
            }
            _ => self.writer.finish(&mut chunk),
        }
        Ok(chunk)
    }
}

impl Iterator for Pages {
    type Item = anyhow::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(chunk) = self.ready.take() {
            return Some(Ok(chunk));
        }
        let q = self.next.take()?;
        Some(self.read(q))
    }
}

/// Formats results into body chunks, keeping what a format needs from chunk to chunk.
struct Writer {
    format: Format,
    /// The AS table, when the master has one: each hop's owner and the AS path are added.
    owners: Option<Arc<AsnDb>>,
    /// The first chunk (header line, opening bracket) is out.
    opened: bool,
    /// Results written so far.
    written: usize,
}

impl Writer {
    fn new(format: Format, owners: Option<Arc<AsnDb>>) -> Writer {
        Writer {
            format,
            owners,
            opened: false,
            written: 0,
        }
    }

    /// The chunk of one page (the first also opens the document).
    fn page(&mut self, rows: &[StoredResult]) -> anyhow::Result<Vec<u8>> {
        let first = !self.opened;
        self.opened = true;
        let mut out = Vec::new();
        match self.format {
            Format::Jsonl => {
                for r in rows {
                    match &self.owners {
                        // As `/api/v1/results` shows it.
                        Some(db) => {
                            let mut v = serde_json::to_value(r)?;
                            super::owners::enrich(&mut v, db);
                            serde_json::to_writer(&mut out, &v)?;
                        }
                        None => serde_json::to_writer(&mut out, r)?,
                    }
                    out.push(b'\n');
                }
            }
            Format::Csv => out = csv(rows, first, self.owners.as_deref())?,
            Format::Atlas => {
                if first {
                    out.push(b'[');
                }
                for (i, r) in rows.iter().enumerate() {
                    if self.written + i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, &atlas(r, prb_id(&r.slave)))?;
                }
            }
        }
        self.written += rows.len();
        Ok(out)
    }

    /// Closes the document at the end of the last chunk.
    fn finish(&self, chunk: &mut Vec<u8>) {
        if let Format::Atlas = self.format {
            chunk.push(b']');
        }
    }
}

/// One row per hop (a result without hops gets one row with the hop columns empty), after
/// the header line when `header`. With an AS table, each hop's owner fills `asn` and
/// `as_name` (a special-use range: `asn` empty, `as_name` its use).
fn csv(rows: &[StoredResult], header: bool, owners: Option<&AsnDb>) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if header {
        w.write_record([
            "result_id",
            "slave",
            "target_id",
            "target_name",
            "target_address",
            "measured_at",
            "measured_at_ms",
            "success",
            "hop_count",
            "path_id",
            "protocol",
            "flow",
            "error",
            "debug",
            "ttl",
            "address",
            "host",
            "rtt_ms",
            "size",
            "asn",
            "as_name",
        ])?;
    }
    for r in rows {
        let head = [
            r.id.clone(),
            r.slave.clone(),
            r.target_id.clone(),
            r.target_name.clone(),
            r.target_address.clone(),
            super::store::rfc3339_ms(r.measured_at),
            r.measured_at.to_string(),
            r.success.to_string(),
            r.hop_count.to_string(),
            r.path_id.clone(),
            r.protocol.clone().unwrap_or_default(),
            r.flow.map(|f| f.to_string()).unwrap_or_default(),
            r.error.clone().unwrap_or_default(),
            r.origin.debug.to_string(),
        ];
        if r.hops.is_empty() {
            w.write_record(
                head.iter()
                    .cloned()
                    .chain(std::iter::repeat_n(String::new(), 7)),
            )?;
        }
        for h in &r.hops {
            let owner = owners.and_then(|db| db.lookup(h.address.parse().ok()?));
            let (asn, as_name) = match owner {
                Some(Owner::As { asn, name, .. }) => (asn.to_string(), name),
                Some(Owner::Special(what)) => (String::new(), what.to_owned()),
                None => (String::new(), String::new()),
            };
            let hop = [
                h.ttl.to_string(),
                h.address.clone(),
                h.host.clone(),
                format!("{:.3}", h.rtt_ns as f64 / 1e6),
                h.size.to_string(),
                asn,
                as_name,
            ];
            w.write_record(head.iter().cloned().chain(hop))?;
        }
    }
    Ok(w.into_inner().map_err(|e| e.into_error())?)
}

fn ms3(ns: i64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

/// The Atlas `msm_id` of a target: the first 31 bits of its UUID (or, for a target the
/// master does not know by UUID, of the SHA-256 of its name and address), so it is the same on
/// every master and never changes.
pub fn msm_id(target_id: &str, name: &str, address: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let bytes: [u8; 4] = match uuid::Uuid::parse_str(target_id) {
        Ok(u) => u.as_bytes()[..4].try_into().expect("4 bytes"),
        Err(_) => {
            let d = Sha256::digest(format!("{name}\n{address}"));
            d[..4].try_into().expect("4 bytes")
        }
    };
    i64::from(u32::from_be_bytes(bytes) >> 1)
}

/// The Atlas `prb_id` of a slave: the first 31 bits of the SHA-256 of its name, so it is the
/// same on every master, after a `db copy`, and for as long as the slave keeps its name.
pub fn prb_id(slave: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(slave.as_bytes());
    i64::from(u32::from_be_bytes(d[..4].try_into().expect("4 bytes")) >> 1)
}

/// An unreachable annotation as an Atlas reply's `err`: `N`, `H`, `A` (administratively
/// prohibited: `!X`, `!A`, `!C`), `P`, `p`, else the ICMP code the annotation carries
/// (`!<n>`) as a number.
fn atlas_err(annotation: &str) -> Option<Value> {
    let code = annotation.strip_prefix('!')?;
    Some(match code {
        "N" => json!("N"),
        "H" => json!("H"),
        "X" | "A" | "C" => json!("A"),
        "P" => json!("P"),
        "p" => json!("p"),
        n => match n.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => json!(code),
        },
    })
}

/// A result in the RIPE Atlas traceroute result format, as RIPE's own parser
/// (`ripe.atlas.sagan`) reads it. `prb_id` is the slave's ([`prb_id`]) and `msm_id` the
/// target's ([`msm_id`]); `from` is the address the master received the result from and
/// `src_addr` the probes' source address as the slave reported it. A trace that could not run
/// carries `dnserr` (the name did not resolve) or `err`, with no hops. What Atlas has no field
/// for goes in `dt_…` fields: the slave's name, the target's, the result ID and `dt_debug`
/// for a made-up result.
pub fn atlas(r: &StoredResult, prb_id: i64) -> Value {
    let dst: Option<IpAddr> = r
        .destination
        .as_deref()
        .or(Some(r.target_address.as_str()))
        .and_then(|a| a.parse().ok());
    let af = match dst.or_else(|| r.hops.first().and_then(|h| h.address.parse().ok())) {
        Some(IpAddr::V6(_)) => 6,
        _ => 4,
    };
    let queries = r
        .hops
        .iter()
        .filter_map(|h| h.replies.as_ref().map(Vec::len))
        .max()
        .unwrap_or(1)
        .max(1);
    let last = r
        .hops
        .iter()
        .map(|h| h.ttl)
        .max()
        .unwrap_or(0)
        .max(if r.error.is_some() { 0 } else { r.hop_count });
    let mut hops = Vec::new();
    for ttl in 1..=last {
        let entries: Vec<Value> = match r.hops.iter().find(|h| h.ttl == ttl) {
            None => (0..queries).map(|_| json!({"x": "*"})).collect(),
            Some(h) => {
                let err = h
                    .kind
                    .as_deref()
                    .filter(|k| k.starts_with('!'))
                    .and_then(atlas_err);
                let reply = |rtt: i64| {
                    let mut e = json!({"from": h.address, "rtt": ms3(rtt), "size": h.size});
                    if let Some(t) = h.reply_ttl {
                        e["ttl"] = json!(t);
                    }
                    if let Some(err) = &err {
                        e["err"] = err.clone();
                    }
                    // RFC 4950 labels as Atlas writes them (whether the RFC 4884 length was
                    // set is not kept, so `rfc4884` is left out).
                    if let Some(labels) = h.mpls.as_ref().filter(|l| !l.is_empty()) {
                        let mpls: Vec<Value> = labels
                            .iter()
                            .map(|l| {
                                json!({"label": l.label, "exp": l.tc, "s": u8::from(l.s), "ttl": l.ttl})
                            })
                            .collect();
                        e["icmpext"] =
                            json!({"version": 2, "obj": [{"class": 1, "type": 1, "mpls": mpls}]});
                    }
                    e
                };
                match &h.replies {
                    Some(v) if !v.is_empty() => v
                        .iter()
                        .map(|x| x.map_or_else(|| json!({"x": "*"}), reply))
                        .collect(),
                    _ => vec![reply(h.rtt_ns)],
                }
            }
        };
        hops.push(json!({"hop": ttl, "result": entries}));
    }
    let timestamp = r.measured_at.div_euclid(1000);
    let endtime = (r.measured_at + r.duration_ns.unwrap_or(0) / 1_000_000 + 999).div_euclid(1000);
    let mut out = json!({
        "fw": 5080,
        "type": "traceroute",
        // An on-demand result is its measurement's, as in Atlas.
        "msm_id": match &r.origin.measurement {
            Some(m) => msm_id(m, "", ""),
            None => msm_id(&r.target_id, &r.target_name, &r.target_address),
        },
        "prb_id": prb_id,
        "af": af,
        "dst_addr": dst.map(|d| d.to_string()).unwrap_or_default(),
        "dst_name": r.target_address,
        "src_addr": r.origin.source.as_deref().unwrap_or_default(),
        "from": r.origin.seen_from.as_deref().unwrap_or_default(),
        "msm_name": "Traceroute",
        "proto": r.protocol.as_deref().unwrap_or("udp").to_ascii_uppercase(),
        "paris_id": r.flow.unwrap_or(0),
        "timestamp": timestamp,
        "endtime": endtime.max(timestamp),
        "result": hops,
        "dt_slave": r.slave,
        "dt_target": r.target_name,
        "dt_result_id": r.id,
    });
    if let Some(e) = &r.error {
        // A name that did not resolve has no destination address; any other failure does.
        let key = if r.destination.is_none() && dst.is_none() {
            "dnserr"
        } else {
            "err"
        };
        out[key] = json!(e);
    }
    if r.origin.debug {
        out["dt_debug"] = json!(true);
    }
    if let Some(m) = &r.origin.measurement {
        out["dt_measurement"] = json!(m);
    }
    out
}

/// The graph of a series' newest result, when it is a multipath one.
pub(crate) fn newest_graph(
    app: &App,
    s: &super::store::SeriesRow,
) -> Option<super::store::graph::Graph> {
    let (rows, _) = app
        .store
        .results(&ResultQuery {
            slave: Some(s.slave.clone()),
            target: Some(s.target_id.clone()).filter(|t| !t.is_empty()),
            limit: 1,
            ..Default::default()
        })
        .ok()?;
    let r = rows.into_iter().next()?;
    (r.flow.unwrap_or(0) == s.flow && r.target_address == s.target_address)
        .then_some(r.multipath)
        .flatten()
}

/// Draws a multipath graph from `start` (the slave) to `end` (the destination) in `colour`:
/// the slave to every node at the first TTL, every link, and the last TTL's nodes to the end.
fn draw_graph(
    g: &super::store::graph::Graph,
    (start, end, colour): (&str, &str, &str),
    nodes: &mut BTreeSet<String>,
    edges: &mut BTreeSet<String>,
) {
    let share = |flows: usize| format!("{flows}/{} flows", g.flows);
    let first = g.nodes.iter().map(|n| n.ttl).min().unwrap_or(1);
    let last = g.nodes.iter().map(|n| n.ttl).max().unwrap_or(1);
    for n in &g.nodes {
        let id = n.address.to_string();
        if n.ttl == first {
            edges.insert(format!(
                "  {} -> {} [color={}, label={}];\n",
                dot_id(start),
                dot_id(&id),
                dot_id(colour),
                dot_id(&share(n.flows.len()))
            ));
        }
        if n.ttl == last {
            nodes.insert(format!("  {} [shape=doublecircle];\n", dot_id(end)));
            edges.insert(format!(
                "  {} -> {} [color={}];\n",
                dot_id(&id),
                dot_id(end),
                dot_id(colour)
            ));
        }
    }
    for l in &g.links {
        edges.insert(format!(
            "  {} -> {} [color={}, label={}];\n",
            dot_id(&l.from.to_string()),
            dot_id(&l.to.to_string()),
            dot_id(colour),
            dot_id(&share(l.flows.len()))
        ));
    }
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One colour per slave in the graph, in the order of their names (and round again).
const SLAVE_COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// `GET /api/v1/export/graph.dot?target=`: the current path of every (slave, flow) to one
/// target, drawn top to bottom from the slaves (one rank at the top, each in its own colour,
/// its edges labelled with its name) to the destination, under a title with the target and
/// the time. Only current paths: of a target whose address or name changed, only the series
/// of the target as configured now; of a target no longer configured, the newest series of
/// each (slave, flow). Silent hops are their own `*` nodes, so two slaves never seem to share
/// one.
fn graph(app: &App, req: &Request) -> Response {
    let p = match Params::parse(&req.query, &["target"]) {
        Ok(p) => p,
        Err(e) => return Response::error(400, e),
    };
    let Some(target) = p.text("target") else {
        return Response::error(400, "target is required (UUID or name)");
    };
    let series = app.store.series(&super::store::SeriesFilter {
        target: Some(target.to_owned()),
        ..Default::default()
    });
    let mut list = match series {
        Ok(list) => list,
        Err(e) => {
            log::error!("graph query failed: {e:#}");
            return Response::error(500, "graph query failed");
        }
    };
    let config = app.config.get();
    list.retain(|s| s.current_path.is_some());
    list.retain(|s| match config.target(&s.target_id) {
        Some(t) => t.address.0 == s.target_address && t.name.0 == s.target_name,
        None => true,
    });
    // Of what is left, the newest series of each (slave, flow).
    list.sort_by(|a, b| {
        (&a.slave, a.flow, std::cmp::Reverse(a.last_measured)).cmp(&(
            &b.slave,
            b.flow,
            std::cmp::Reverse(b.last_measured),
        ))
    });
    list.dedup_by(|b, a| a.slave == b.slave && a.flow == b.flow);
    if list.is_empty() {
        return Response::error(404, "no paths stored for that target");
    }
    let (name, address) = (list[0].target_name.clone(), list[0].target_address.clone());
    let title = format!(
        "{name} ({address}): current paths, {}",
        super::store::rfc3339_ms(chrono::Utc::now().timestamp_millis())
    );
    let mut out = format!(
        "digraph {} {{\n  label={};\n  labelloc=t;\n  rankdir=TB;\n  node [shape=ellipse];\n",
        dot_id(&name),
        dot_id(&title)
    );
    let slaves: Vec<&str> = {
        let mut v: Vec<&str> = list.iter().map(|s| s.slave.as_str()).collect();
        v.dedup();
        v
    };
    let colour = |slave: &str| {
        let i = slaves.iter().position(|s| *s == slave).unwrap_or(0);
        SLAVE_COLOURS[i % SLAVE_COLOURS.len()]
    };
    let flows_of = |slave: &str| list.iter().filter(|s| s.slave == slave).count();
    let _ = write!(out, "  {{ rank=source;");
    for slave in &slaves {
        let _ = write!(out, " {};", dot_id(&format!("slave {slave}")));
    }
    let _ = writeln!(out, " }}");
    let mut edges = BTreeSet::new();
    let mut nodes = BTreeSet::new();
    // Every router and destination drawn, to group by AS.
    let mut addrs: BTreeSet<IpAddr> = BTreeSet::new();
    for s in &list {
        let Some(path) = s
            .current_path
            .as_ref()
            .and_then(|(_, text)| super::path::Path::parse_canonical(text))
        else {
            continue;
        };
        let (slave, flow) = (s.slave.as_str(), s.flow);
        let c = colour(slave);
        let start = format!("slave {slave}");
        nodes.insert(format!(
            "  {} [shape=box, style=bold, color={}, label={}];\n",
            dot_id(&start),
            dot_id(c),
            dot_id(slave)
        ));
        // A multipath series is drawn as its newest graph: every branch, each link
        // labelled with the share of the flows that took it.
        if let Some(g) = newest_graph(app, s) {
            addrs.extend(g.nodes.iter().map(|n| n.address));
            let end = format!("{} ({})", name, path.terminal.as_text());
            draw_graph(&g, (&start, &end, c), &mut nodes, &mut edges);
            continue;
        }
        let label = if flows_of(slave) > 1 {
            format!("{slave} flow {flow}")
        } else {
            slave.to_owned()
        };
        let mut prev = start;
        let hops = path.hops.iter().enumerate();
        for (i, hop) in hops {
            let node = match hop {
                Some(a) => {
                    addrs.insert(*a);
                    a.to_string()
                }
                None => {
                    let id = format!("* {slave} flow {flow} hop {}", i + 1);
                    nodes.insert(format!(
                        "  {} [shape=plaintext, label=\"*\"];\n",
                        dot_id(&id)
                    ));
                    id
                }
            };
            let first = i == 0;
            edges.insert(format!(
                "  {} -> {} [color={}{}];\n",
                dot_id(&prev),
                dot_id(&node),
                dot_id(c),
                if first {
                    format!(", label={}", dot_id(&label))
                } else {
                    String::new()
                }
            ));
            prev = node;
        }
        let end = format!("{} ({})", name, path.terminal.as_text());
        nodes.insert(format!("  {} [shape=doublecircle];\n", dot_id(&end)));
        edges.insert(format!(
            "  {} -> {} [color={}];\n",
            dot_id(&prev),
            dot_id(&end),
            dot_id(c)
        ));
    }
    for n in nodes {
        out.push_str(&n);
    }
    // With an AS table, each AS is a box around its routers, under its number and name.
    if app.owners.enabled() {
        let db = app.owners.get();
        let mut by_as: std::collections::BTreeMap<(u32, String), Vec<IpAddr>> = Default::default();
        for a in addrs {
            if let Some(Owner::As { asn, name, .. }) = db.lookup(a) {
                by_as.entry((asn, name)).or_default().push(a);
            }
        }
        for ((asn, as_name), members) in by_as {
            let label = Owner::As {
                asn,
                name: as_name,
                country: String::new(),
            }
            .label();
            let _ = write!(
                out,
                "  subgraph {} {{\n    label={};\n    style=rounded;\n   ",
                dot_id(&format!("cluster AS{asn}")),
                dot_id(&label)
            );
            for a in members {
                let _ = write!(out, " {};", dot_id(&a.to_string()));
            }
            let _ = writeln!(out, "\n  }}");
        }
    }
    for e in edges {
        out.push_str(&e);
    }
    let _ = writeln!(out, "}}");
    Response::new(200, "text/vnd.graphviz; charset=utf-8", out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::path::{Path as NetPath, Terminal};
    use crate::master::routes::Body;
    use crate::master::store::{NewHop, NewResult};

    fn hop(ttl: i64, address: &str, rtt_ns: i64, replies: Option<Vec<Option<i64>>>) -> NewHop {
        NewHop {
            ttl,
            address: address.into(),
            host: String::new(),
            rtt_ns,
            size: 56,
            kind: None,
            replies,
            reply_ttl: Some(64 - ttl),
            mpls: None,
        }
    }

    /// A known result and the Atlas document written by hand from Atlas' documentation.
    #[test]
    fn atlas_export_matches_the_hand_written_document() {
        let r = StoredResult {
            id: "d9bbc544-eabe-4536-a9ed-ec6cbdaaedb0".into(),
            slave: "slave1".into(),
            target_id: "76d96640-d357-47b3-ba50-5248a7604bc9".into(),
            target_name: "Google".into(),
            target_address: "www.google.at".into(),
            target_known: true,
            target_selected: true,
            date_time: "2019-02-07T21:06:10.803+01:00".into(),
            measured_at: 1_549_569_970_803,
            ordered_at: None,
            duration_ns: Some(1_500_000_000),
            received_at: 0,
            success: true,
            hop_count: 3,
            path_id: "x".into(),
            path: "x".into(),
            protocol: Some("udp".into()),
            flow: Some(2),
            destination: Some("142.250.185.99".into()),
            unreachable: None,
            error: None,
            origin: crate::master::store::Origin {
                source: Some("192.168.1.20".into()),
                seen_from: Some("203.0.113.5".into()),
                debug: false,
                measurement: None,
            },
            multipath: None,
            hops: vec![
                hop(
                    1,
                    "192.168.1.1",
                    1_234_567,
                    Some(vec![Some(1_234_567), None]),
                ),
                hop(
                    3,
                    "142.250.185.99",
                    12_000_400,
                    Some(vec![Some(12_000_400), Some(11_999_600)]),
                ),
            ],
        };
        let expected = json!({
            "fw": 5080, "type": "traceroute", "af": 4,
            "msm_id": 0x76d9_6640_u32 >> 1, "prb_id": 7,
            "dst_addr": "142.250.185.99", "dst_name": "www.google.at",
            "src_addr": "192.168.1.20", "from": "203.0.113.5", "msm_name": "Traceroute",
            "dt_slave": "slave1", "dt_target": "Google", "dt_result_id": r.id,
            "proto": "UDP", "paris_id": 2,
            "timestamp": 1_549_569_970, "endtime": 1_549_569_973,
            "result": [
                {"hop": 1, "result": [
                    {"from": "192.168.1.1", "rtt": 1.235, "size": 56, "ttl": 63},
                    {"x": "*"}
                ]},
                {"hop": 2, "result": [{"x": "*"}, {"x": "*"}]},
                {"hop": 3, "result": [
                    {"from": "142.250.185.99", "rtt": 12.0, "size": 56, "ttl": 61},
                    {"from": "142.250.185.99", "rtt": 12.0, "size": 56, "ttl": 61}
                ]}
            ]
        });
        let got = atlas(&r, 7);
        for (field, want) in expected.as_object().unwrap() {
            assert_eq!(&got[field], want, "field {field}");
        }
        assert_eq!(
            got.as_object().unwrap().len(),
            expected.as_object().unwrap().len()
        );
    }

    #[test]
    fn csv_has_a_row_per_hop_and_quotes_what_needs_it() {
        let mut r = StoredResult {
            id: "i".into(),
            slave: "s".into(),
            target_id: "t".into(),
            target_name: "T".into(),
            target_address: "a,b".into(),
            target_known: true,
            target_selected: true,
            date_time: "d".into(),
            measured_at: 0,
            ordered_at: None,
            duration_ns: None,
            received_at: 0,
            success: false,
            hop_count: 1,
            path_id: "p".into(),
            path: "p".into(),
            protocol: None,
            flow: None,
            destination: None,
            unreachable: None,
            error: Some("cannot resolve \"x\"".into()),
            origin: Default::default(),
            multipath: None,
            hops: vec![],
        };
        let text = String::from_utf8(csv(std::slice::from_ref(&r), true, None).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].contains("\"a,b\"") && lines[1].contains("\"cannot resolve \"\"x\"\"\""),
            "{text}"
        );
        r.hops = vec![
            hop(1, "10.0.0.1", 1_500_000, None),
            hop(2, "10.0.0.2", 2_000_000, None),
        ];
        let text = String::from_utf8(csv(std::slice::from_ref(&r), true, None).unwrap()).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with(",rtt_ms,size,asn,as_name"),
            "{text}"
        );
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .ends_with(",false,2,10.0.0.2,,2.000,56,,"),
            "{text}"
        );
        // With an AS table: the owner of each hop.
        r.hops[1].address = "8.8.8.8".into();
        let db = AsnDb::parse("8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE LLC\n").unwrap();
        let text = String::from_utf8(csv(&[r], true, Some(&db)).unwrap()).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert!(
            rows[1].ends_with(",10.0.0.1,,1.500,56,,private (RFC 1918)"),
            "{text}"
        );
        assert!(
            rows[2].ends_with(",8.8.8.8,,2.000,56,15169,GOOGLE LLC"),
            "{text}"
        );
    }

    /// A stored result measured at second `n` of a fixed day, with an ID naming `n`.
    fn stored(n: i64) -> NewResult {
        let at = 1_700_000_000_000 + n * 1000;
        NewResult {
            result_id: format!("00000000-0000-4000-8000-{n:012}"),
            slave: "slave1".into(),
            target_uuid: "76d96640-d357-47b3-ba50-5248a7604bc9".into(),
            target_name: "Google".into(),
            target_address: "192.0.2.1".into(),
            target_known: true,
            target_selected: true,
            measured_at: at,
            date_time: chrono::DateTime::from_timestamp_millis(at)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            success: true,
            hop_count: 2,
            path: NetPath::from_hops(
                [
                    (1, "10.0.0.1".parse().unwrap()),
                    (2, "192.0.2.1".parse().unwrap()),
                ],
                Terminal::Reached,
            ),
            protocol: Some("udp".into()),
            flow: Some(0),
            destination: Some("192.0.2.1".into()),
            unreachable: None,
            error: None,
            agent: None,
            duration_ns: None,
            rtt_alert_ns: None,
            origin: Default::default(),
            hops: vec![
                hop(1, "10.0.0.1", 1_000_000, None),
                hop(2, "192.0.2.1", 2_000_000, None),
            ],
            multipath: None,
            as_hops: None,
        }
    }

    fn store_of(ns: impl IntoIterator<Item = i64>) -> Arc<dyn Store> {
        let store = crate::master::store::sqlite::Sqlite::open_temp(2).unwrap();
        let batch: Vec<NewResult> = ns.into_iter().map(stored).collect();
        store.insert_batch(&batch).unwrap();
        Arc::new(store)
    }

    fn cursor(r: &Response) -> Option<String> {
        r.headers
            .iter()
            .find(|(k, _)| *k == "X-Next-Cursor")
            .map(|(_, v)| v.clone())
    }

    /// The `n` of each result in a JSON Lines body, in order.
    fn numbers(body: &[u8]) -> Vec<i64> {
        std::str::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["id"].as_str().unwrap()[24..].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn pages_join_into_the_same_export_and_cursor_as_one_query() {
        let store = store_of(0..10);
        for format in [Format::Jsonl, Format::Csv, Format::Atlas] {
            for limit in [1, 2, 3, 4, 6, 7, 9, 10, 11, 30] {
                let q = ResultQuery {
                    limit,
                    ..Default::default()
                };
                let whole = export(store.clone(), q.clone(), format, EXPORT_PAGE, None).unwrap();
                assert!(matches!(whole.body, Body::Bytes(_)));
                let paged = export(store.clone(), q.clone(), format, 3, None).unwrap();
                assert_eq!(
                    matches!(paged.body, Body::Stream(_)),
                    limit > 3,
                    "limit {limit}: streamed only when more than a page"
                );
                assert_eq!(cursor(&paged), cursor(&whole), "limit {limit}");
                let expected = store.results(&q).unwrap().1.map(|c| c.text());
                assert_eq!(cursor(&paged), expected, "limit {limit}");
                assert_eq!(
                    paged.body.into_bytes().unwrap(),
                    whole.body.into_bytes().unwrap(),
                    "limit {limit}"
                );
            }
        }
        let atlas = export(
            store.clone(),
            ResultQuery {
                limit: 8,
                ..Default::default()
            },
            Format::Atlas,
            3,
            None,
        )
        .unwrap();
        let docs: Value = serde_json::from_slice(&atlas.body.into_bytes().unwrap()).unwrap();
        assert_eq!(docs.as_array().unwrap().len(), 8);
        let empty = export(
            store_of([]),
            ResultQuery {
                limit: 5,
                ..Default::default()
            },
            Format::Atlas,
            3,
            None,
        )
        .unwrap();
        assert_eq!(empty.body.into_bytes().unwrap(), b"[]");
    }

    #[test]
    fn a_result_arriving_mid_stream_is_sent_once_and_the_cursor_still_holds() {
        let store = store_of(0..10);
        let q = ResultQuery {
            limit: 6,
            ..Default::default()
        };
        let r = export(store.clone(), q, Format::Jsonl, 3, None).unwrap();
        let next = cursor(&r).unwrap();
        let Body::Stream(mut chunks) = r.body else {
            panic!("not streamed")
        };
        let mut got = numbers(&chunks.next().unwrap().unwrap());
        assert_eq!(got, [9, 8, 7]);
        // One result lands inside the range still to send, one above everything sent.
        let mut late = stored(100);
        late.measured_at = 1_700_000_000_000 + 5_500;
        late.date_time = "2023-11-14T22:13:25.500Z".into();
        store.insert_batch(&[late, stored(20)]).unwrap();
        for chunk in chunks {
            got.extend(numbers(&chunk.unwrap()));
        }
        assert_eq!(got, [9, 8, 7, 6, 100, 5, 4]);
        let rest = export(
            store.clone(),
            ResultQuery {
                before: Cursor::parse(&next),
                limit: 100,
                ..Default::default()
            },
            Format::Jsonl,
            3,
            None,
        )
        .unwrap();
        assert_eq!(numbers(&rest.body.into_bytes().unwrap()), [3, 2, 1, 0]);
    }
}
