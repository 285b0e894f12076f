//! The slave × target page: an mtr-like hop table over a window, the destination's latency
//! over time with the path changes marked on it (a click on a mark shows the two paths side
//! by side), the path history and each recent trace's hops.

use super::{
    Nav, Page, PageError, latency_class, ms, ms_f, now_ms, params, series_href, target_href, when,
};
use crate::master::api::{HopStats, hop_stats};
use crate::master::path::Path;
use crate::master::routes::{App, Request};
use crate::master::store::{EventQuery, EventView, ResultQuery, SeriesFilter, StoredResult};
use maud::{Markup, html};
use std::collections::HashMap;
use std::time::Duration;

/// Most results the chart draws (the newest ones of the window).
const CHART_RESULTS: u32 = 2000;
/// Recent traces listed with their hops.
const TRACES: usize = 20;

pub fn page(app: &App, req: &Request) -> Result<Page, PageError> {
    let p = params(req, &["slave", "target", "flow", "window", "change"])?;
    let (Some(slave), Some(target)) = (p.text("slave"), p.text("target")) else {
        return Err(PageError::Bad(
            "which series? /ui/series?slave=NAME&target=UUID-or-name[&flow=N]".into(),
        ));
    };
    let window = p
        .duration("window", Duration::from_secs(6 * 3600))
        .map_err(PageError::Bad)?;
    let flow = match p.text("flow") {
        Some(_) => Some(p.number("flow", 0, 65_535, 0).map_err(PageError::Bad)?),
        None => None,
    };
    let change = match p.text("change") {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| PageError::Bad("change is an event id".into()))?,
        ),
        None => None,
    };
    let now = now_ms();
    let since = now - window.as_millis() as i64;
    let all = app.store.series(&SeriesFilter {
        slave: Some(slave.to_owned()),
        slaves: None,
        target: Some(target.to_owned()),
        flow,
    })?;
    // Without a flow: the series measured last.
    let Some(s) = all.iter().max_by_key(|s| s.last_measured) else {
        return Err(PageError::NotFound(format!(
            "no results from slave '{slave}' for target '{target}' yet"
        )));
    };
    let flows: Vec<i64> = app
        .store
        .series(&SeriesFilter {
            slave: Some(slave.to_owned()),
            slaves: None,
            target: Some(target.to_owned()),
            flow: None,
        })?
        .iter()
        .map(|s| s.flow)
        .collect();
    let current_path = s
        .current_path
        .as_ref()
        .and_then(|(_, t)| Path::parse_canonical(t));
    let current: Vec<Option<String>> = current_path
        .as_ref()
        .map(|p| p.hops.iter().map(|h| h.map(|a| a.to_string())).collect())
        .unwrap_or_default();
    let hops = app.store.series_hops(s.id, since)?;
    let mut hosts: HashMap<String, String> = HashMap::new();
    for h in hops.iter().flatten() {
        if !h.host.is_empty() {
            hosts
                .entry(h.address.clone())
                .or_insert_with(|| h.host.clone());
        }
    }
    let stats = hop_stats(&hops, &current);
    let (mut results, _) = app.store.results(&ResultQuery {
        slave: Some(s.slave.clone()),
        target: Some(s.target_id.clone()),
        from: Some(since),
        limit: CHART_RESULTS,
        ..ResultQuery::default()
    })?;
    results.retain(|r| r.flow.unwrap_or(0) == s.flow);
    let events = app.store.events(&EventQuery {
        series: SeriesFilter {
            slave: Some(s.slave.clone()),
            slaves: None,
            target: Some(s.target_id.clone()),
            flow: Some(s.flow),
        },
        limit: 200,
        ..EventQuery::default()
    })?;
    let changes: Vec<&EventView> = events.iter().filter(|e| e.kind == "path-change").collect();
    let shown =
        match change {
            Some(id) => Some(*changes.iter().find(|e| e.id == id).ok_or_else(|| {
                PageError::NotFound(format!("no path change {id} in this series"))
            })?),
            None => changes.first().copied(),
        };
    let history = app.store.path_history(s.id, i64::MIN, i64::MAX)?;
    let here = |extra: &str| {
        let mut h = series_href(&s.slave, &s.target_id, Some(s.flow));
        if p.text("window").is_some() {
            h.push_str(&format!("&window={}", humantime::format_duration(window)));
        }
        h.push_str(extra);
        h
    };
    let body = html! {
        p.sub {
            "From slave " b { (s.slave) } " to " a href=(target_href(&s.target_id)) { (s.target_name) }
            " (" code { (s.target_address) } ") · flow " (s.flow)
            @if flows.len() > 1 {
                " · flows: "
                @for f in &flows { a.chip href=(series_href(&s.slave, &s.target_id, Some(*f))) { (f) } " " }
            }
            " · window " (humantime::format_duration(window)) " ("
            @for w in ["1h", "6h", "24h", "7d"] {
                a href=(format!("{}&window={w}", series_href(&s.slave, &s.target_id, Some(s.flow)))) { (w) } " "
            }
            ")"
        }
        h2 { "Hops" }
        (hop_table(&stats, &hosts, hops.len()))
        h2 { "Destination RTT" }
        (chart(&results, &changes, chart_start(&results, since, now), now, &here))
        @if let Some(e) = shown {
            h2 #compare { "Path change at " (when(e.at)) }
            (compare(e))
        }
        h2 { "Path history" }
        table.list #history {
            thead { tr { th { "Path" } th { "First seen" } th { "Last seen" } th { "Results" } } }
            tbody {
                @for h in &history {
                    tr class=[(s.current_path.as_ref().is_some_and(|(id, _)| *id == h.path_id)).then_some("current")] {
                        td.mono.path { (h.path) }
                        td { (when(h.first_seen)) }
                        td { (when(h.last_seen)) }
                        td.num { (h.count) }
                    }
                }
            }
        }
        h2 { "Events" }
        (event_list_linked(&events, &here))
        h2 { "Recent traces" }
        div #traces {
            @for r in results.iter().take(TRACES) { (trace(r)) }
        }
    };
    Ok(Page {
        title: format!("{} → {}", s.slave, s.target_name),
        nav: Nav::None,
        body,
    })
}

fn hop_table(stats: &[HopStats], hosts: &HashMap<String, String>, results: usize) -> Markup {
    html! {
        p.sub { (results) " results in the window" }
        table.list.hops #hops {
            thead { tr { th { "Hop" } th { "Address" } th { "Name" } th { "Loss" } th { "Sent" } th { "Min" } th { "Avg" } th { "Max" } th { "StDev" } th { "Addresses seen" } } }
            tbody {
                @for h in stats {
                    tr class=[h.address.is_none().then_some("silent")] {
                        td.num { (h.ttl) }
                        td.mono { (h.address.as_deref().unwrap_or("*")) }
                        td { (h.address.as_ref().and_then(|a| hosts.get(a)).map(String::as_str).unwrap_or("")) }
                        td class={ "num" @if h.loss > 0.0 { " lossy" } } { (format!("{:.1}%", h.loss * 100.0)) }
                        td.num { (h.sent) }
                        @match &h.rtt_ms {
                            Some(r) => {
                                td.num { (ms_f(r.min)) } td class={ "num " (latency_class(r.avg)) } { (ms_f(r.avg)) }
                                td.num { (ms_f(r.max)) } td.num { (ms_f(r.stddev)) }
                            }
                            None => { td {} td {} td {} td {} }
                        }
                        td {
                            @for a in &h.addresses {
                                span.mono { (a.address) } " " (format!("{:.0}%", a.share * 100.0)) " "
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Where the chart's time axis starts: the window's start, or a little before the oldest
/// result when the results fill only the end of the window.
fn chart_start(results: &[StoredResult], since: i64, now: i64) -> i64 {
    let oldest = results.iter().map(|r| r.measured_at).min().unwrap_or(since);
    let pad = ((now - oldest) / 20).max(60_000);
    (oldest - pad).max(since)
}

/// The latency chart: a point per result at its destination RTT (a cross along the bottom
/// when it did not reach), a line per path change linking to the comparison.
fn chart(
    results: &[StoredResult],
    changes: &[&EventView],
    from: i64,
    to: i64,
    here: &dyn Fn(&str) -> String,
) -> Markup {
    const W: f64 = 900.0;
    const H: f64 = 220.0;
    const L: f64 = 48.0;
    const B: f64 = 24.0;
    let rtts: Vec<(i64, Option<f64>)> = results
        .iter()
        .map(|r| {
            let ms = crate::master::store::destination_rtt_ns(r.success, &r.hops)
                .map(|ns| ns as f64 / 1e6);
            (r.measured_at, ms)
        })
        .collect();
    let top = rtts.iter().filter_map(|r| r.1).fold(1.0, f64::max) * 1.1;
    let span = (to - from).max(1) as f64;
    let x = |t: i64| L + (t - from).clamp(0, to - from) as f64 / span * (W - L - 8.0);
    let y = |v: f64| 8.0 + (1.0 - v / top) * (H - B - 8.0);
    let mut line = String::new();
    for (t, v) in rtts.iter().rev() {
        if let Some(v) = v {
            line.push_str(&format!(
                "{}{:.1} {:.1}",
                if line.is_empty() { "M" } else { "L" },
                x(*t),
                y(*v)
            ));
        }
    }
    let ticks: Vec<f64> = (0..=4).map(|i| top / 1.1 * i as f64 / 4.0).collect();
    html! {
        svg.chart #chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {H}")) role="img" aria-label="destination RTT over time" {
            @for v in &ticks {
                line.grid x1=(L) x2=(W - 8.0) y1=(format!("{:.1}", y(*v))) y2=(format!("{:.1}", y(*v))) {}
                text.axis x=(L - 4.0) y=(format!("{:.1}", y(*v) + 4.0)) text-anchor="end" { (ms_f(*v)) }
            }
            text.axis x="4" y="12" text-anchor="start" { "ms" }
            text.axis x=(L) y=(H - 6.0) text-anchor="start" { (when(from)) }
            text.axis x=(W - 8.0) y=(H - 6.0) text-anchor="end" { (when(to)) }
            path.rtt d=(line) {}
            @for (t, v) in &rtts {
                @match v {
                    Some(v) => { circle.pt cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="2.5" { title { (when(*t)) ": " (ms_f(*v)) " ms" } } }
                    None => { text.miss x=(format!("{:.1}", x(*t))) y=(H - B + 4.0) text-anchor="middle" { "×" title { (when(*t)) ": not reached" } } }
                }
            }
            @for e in changes.iter().filter(|e| e.at >= from) {
                a.change href=(here(&format!("&change={}#compare", e.id))) data-event=(e.id) {
                    line.change x1=(format!("{:.1}", x(e.at))) x2=(format!("{:.1}", x(e.at))) y1="4" y2=(H - B) {}
                    title { "path change at " (when(e.at)) @if let Some(t) = e.first_diff_ttl { ", from hop " (t) } " (click to compare)" }
                }
            }
        }
    }
}

/// The two paths of a change side by side, the hops that differ marked.
fn compare(e: &EventView) -> Markup {
    let parse = |p: &Option<(String, String)>| {
        p.as_ref()
            .and_then(|(_, t)| Path::parse_canonical(t))
            .map(|p| {
                (
                    p.hops
                        .iter()
                        .map(|h| h.map(|a| a.to_string()).unwrap_or("*".into()))
                        .collect::<Vec<_>>(),
                    p.terminal.as_text(),
                )
            })
            .unwrap_or_default()
    };
    let (a, at) = parse(&e.from_path);
    let (b, bt) = parse(&e.to_path);
    let n = a.len().max(b.len());
    html! {
        table.list.compare #compare-table {
            thead { tr { th { "Hop" } th { "Before" } th { "After" } } }
            tbody {
                @for i in 0..n {
                    @let (x, y) = (a.get(i).map(String::as_str).unwrap_or(""), b.get(i).map(String::as_str).unwrap_or(""));
                    tr class=[(x != y).then_some("diff")] {
                        td.num { (i + 1) } td.mono { (x) } td.mono { (y) }
                    }
                }
                tr class=[(at != bt).then_some("diff")] { td { "end" } td { (at) } td { (bt) } }
            }
        }
    }
}

/// A list of change events.
pub fn event_list(events: &[EventView]) -> Markup {
    event_list_linked(events, &|_| String::new())
}

/// What an event names beyond its kind, as one line: the nodes and links of a `branch-lost`
/// or `branch-new`, the AS paths before and after an `as-path-change`.
fn detail_line(e: &EventView) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&e.detail).ok()?;
    if let (Some(from), Some(to)) = (v["from"].as_array(), v["to"].as_array()) {
        let show = |p: &[serde_json::Value]| {
            p.iter()
                .filter_map(|a| a.as_u64())
                .map(|a| format!("AS{a}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Some(format!("{} → {}", show(from), show(to)));
    }
    let list: Vec<&str> = v["branches"]
        .as_array()?
        .iter()
        .filter_map(|b| b.as_str())
        .collect();
    (!list.is_empty()).then(|| list.join(", "))
}

fn event_list_linked(events: &[EventView], here: &dyn Fn(&str) -> String) -> Markup {
    html! {
        ol.events-list {
            @for e in events {
                li class={ "ev " (e.kind) } {
                    time { (when(e.at)) } " " b { (e.kind) } " " (e.slave) " → " (e.target_name)
                    @if e.flow != 0 { " flow " (e.flow) }
                    @if let Some(t) = e.first_diff_ttl { " from hop " (t) }
                    @if let Some(b) = detail_line(e) { " " span.mono { (b) } }
                    @if e.kind == "path-change" && !here("").is_empty() {
                        " " a href=(here(&format!("&change={}#compare", e.id))) { "compare" }
                    }
                }
            }
            @if events.is_empty() { li.none { "No events." } }
        }
    }
}

fn trace(r: &StoredResult) -> Markup {
    html! {
        details.trace {
            summary {
                time { (when(r.measured_at)) } " · "
                (if r.success { "reached" } else { "not reached" }) " · " (r.hop_count) " hops"
                @if let Some(ns) = crate::master::store::destination_rtt_ns(r.success, &r.hops) { " · " (ms(ns)) " ms" }
                @if let Some(e) = &r.error { " · error: " (e) }
            }
            table.list.hops {
                thead { tr { th { "Hop" } th { "Address" } th { "Name" } th { "RTT" } th { "Replies" } } }
                tbody {
                    @for h in &r.hops {
                        tr {
                            td.num { (h.ttl) } td.mono { (h.address) } td { (h.host) } td.num { (ms(h.rtt_ns)) }
                            td { @if let Some(v) = &h.replies { @for x in v { (x.map(ms).unwrap_or("*".into())) " " } } }
                        }
                    }
                }
            }
            p.sub { "result " code { (r.id) } " · path " code { (r.path) } }
        }
    }
}
