//! Exports: stored results as JSON Lines, CSV, or RIPE Atlas traceroute results (so Atlas
//! tooling reads our data), and a target's paths across all slaves as a Graphviz DOT graph.

use super::api::Params;
use super::routes::{App, Request, Response};
use super::store::StoredResult;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Most results in one export; more come with the `X-Next-Cursor` of the answer.
pub const MAX_EXPORT: i64 = 100_000;

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

fn results(app: &App, req: &Request, format: Format) -> Response {
    let q = match super::api::result_query(&req.query, MAX_EXPORT, 10_000) {
        Ok(q) => q,
        Err(e) => return Response::error(400, e),
    };
    let (rows, next) = match app.store.results(&q) {
        Ok(x) => x,
        Err(e) => {
            log::error!("export failed: {e:#}");
            return Response::error(500, "export failed");
        }
    };
    let mut r = match format {
        Format::Jsonl => {
            let mut out = String::new();
            for row in &rows {
                out.push_str(&serde_json::to_string(row).unwrap_or_default());
                out.push('\n');
            }
            Response::text(200, out)
        }
        Format::Csv => match csv(&rows) {
            Ok(text) => Response::text(200, text),
            Err(e) => return Response::error(500, format!("export failed: {e}")),
        },
        Format::Atlas => Response::json(200, &rows.iter().map(atlas).collect::<Vec<_>>()),
    };
    r.content_type = match format {
        Format::Jsonl => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Atlas => "application/json",
    };
    if let Some(c) = next {
        r.headers.push(("X-Next-Cursor", c.text()));
    }
    r
}

/// One row per hop (a result without hops gets one row with the hop columns empty).
fn csv(rows: &[StoredResult]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "result_id",
        "slave",
        "target_id",
        "target_name",
        "target_address",
        "date_time",
        "success",
        "hop_count",
        "path_id",
        "protocol",
        "flow",
        "error",
        "ttl",
        "address",
        "host",
        "rtt_ms",
        "size",
    ])?;
    for r in rows {
        let head = [
            r.id.clone(),
            r.slave.clone(),
            r.target_id.clone(),
            r.target_name.clone(),
            r.target_address.clone(),
            r.date_time.clone(),
            r.success.to_string(),
            r.hop_count.to_string(),
            r.path_id.clone(),
            r.protocol.clone().unwrap_or_default(),
            r.flow.map(|f| f.to_string()).unwrap_or_default(),
            r.error.clone().unwrap_or_default(),
        ];
        if r.hops.is_empty() {
            w.write_record(
                head.iter()
                    .cloned()
                    .chain(std::iter::repeat_n(String::new(), 5)),
            )?;
        }
        for h in &r.hops {
            let hop = [
                h.ttl.to_string(),
                h.address.clone(),
                h.host.clone(),
                format!("{:.3}", h.rtt_ns as f64 / 1e6),
                h.size.to_string(),
            ];
            w.write_record(head.iter().cloned().chain(hop))?;
        }
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn ms3(ns: i64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

/// A result in the RIPE Atlas traceroute result format. The slave's name is the probe
/// identity (`from`, `prb_name`); `paris_id` is our flow number; `fw` names the result format
/// version this document follows.
pub fn atlas(r: &StoredResult) -> Value {
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
        .max(r.hop_count);
    let mut hops = Vec::new();
    for ttl in 1..=last {
        let entries: Vec<Value> = match r.hops.iter().find(|h| h.ttl == ttl) {
            None => (0..queries).map(|_| json!({"x": "*"})).collect(),
            Some(h) => {
                let reply = |rtt: i64| {
                    let mut e = json!({"from": h.address, "rtt": ms3(rtt), "size": h.size});
                    if let Some(t) = h.reply_ttl {
                        e["ttl"] = json!(t);
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
    json!({
        "fw": 5080,
        "type": "traceroute",
        "af": af,
        "dst_addr": dst.map(|d| d.to_string()).unwrap_or_default(),
        "dst_name": r.target_address,
        "src_addr": "",
        "from": r.slave,
        "prb_name": r.slave,
        "msm_name": "dist-traceroute",
        "proto": r.protocol.as_deref().unwrap_or("udp").to_ascii_uppercase(),
        "paris_id": r.flow.unwrap_or(0),
        "timestamp": timestamp,
        "endtime": endtime.max(timestamp),
        "result": hops,
    })
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `GET /api/v1/export/graph.dot?target=`: the current path of every (slave, flow) to one
/// target; silent hops are their own `*` nodes, so two slaves never seem to share one.
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
    let rows: Vec<(String, i64, String, String)> = match series {
        Ok(list) => list
            .into_iter()
            .filter_map(|s| {
                let (_, text) = s.current_path?;
                Some((s.slave, s.flow, text, s.target_name))
            })
            .collect(),
        Err(e) => {
            log::error!("graph query failed: {e:#}");
            return Response::error(500, "graph query failed");
        }
    };
    if rows.is_empty() {
        return Response::error(404, "no paths stored for that target");
    }
    let name = rows[0].3.clone();
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=ellipse];\n",
        dot_id(&name)
    );
    let mut edges = BTreeSet::new();
    let mut nodes = BTreeSet::new();
    for (slave, flow, canonical, _) in &rows {
        let Some(path) = super::path::Path::parse_canonical(canonical) else {
            continue;
        };
        let start = format!("slave {slave}");
        nodes.insert(format!(
            "  {} [shape=box, label={}];\n",
            dot_id(&start),
            dot_id(slave)
        ));
        let mut prev = start;
        for (i, hop) in path.hops.iter().enumerate() {
            let node = match hop {
                Some(a) => a.to_string(),
                None => {
                    let id = format!("* {slave} flow {flow} hop {}", i + 1);
                    nodes.insert(format!(
                        "  {} [shape=plaintext, label=\"*\"];\n",
                        dot_id(&id)
                    ));
                    id
                }
            };
            edges.insert(format!("  {} -> {};\n", dot_id(&prev), dot_id(&node)));
            prev = node;
        }
        let end = format!("{} ({})", name, path.terminal.as_text());
        nodes.insert(format!("  {} [shape=doublecircle];\n", dot_id(&end)));
        edges.insert(format!(
            "  {} -> {} [label={}];\n",
            dot_id(&prev),
            dot_id(&end),
            dot_id(&format!("flow {flow}"))
        ));
    }
    for n in nodes {
        out.push_str(&n);
    }
    for e in edges {
        out.push_str(&e);
    }
    let _ = writeln!(out, "}}");
    Response::text(200, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::store::NewHop;

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
            "dst_addr": "142.250.185.99", "dst_name": "www.google.at", "src_addr": "",
            "from": "slave1", "prb_name": "slave1", "msm_name": "dist-traceroute",
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
        let got = atlas(&r);
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
            hops: vec![],
        };
        let text = csv(std::slice::from_ref(&r)).unwrap();
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
        let text = csv(&[r]).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .ends_with(",2,10.0.0.2,,2.000,56"),
            "{text}"
        );
    }
}
