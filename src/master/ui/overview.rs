//! `/`: every slave against every target in one matrix, with the recent events beside it.
//! Each cell is a few bytes (its row and column say which series it is, so it carries no
//! link); the script opens a cell's series on a click and keeps cells current from the
//! stream.

use super::lists::{TargetRow, all_targets, slave_rows};
use super::{Nav, Page, PageError, latency_class, ms, now_ms, target_href, when};
use crate::master::routes::{App, Request};
use crate::master::store::{EventQuery, SeriesFilter, SeriesRow};
use maud::{Markup, html};
use std::collections::HashMap;

/// A path change this recent marks its cell.
pub const RECENT_CHANGE_MS: i64 = 3600 * 1000;

/// How many events the overview lists.
const EVENTS: u32 = 30;

pub fn page(app: &App, req: &Request) -> Result<Page, PageError> {
    let p = super::params(req, &["tag"])?;
    // `?tag=`: the slaves with that tag only (the matrix, the events).
    let tag = p.text("tag").map(str::to_owned);
    let only = match &tag {
        Some(t) => Some(app.tagged(&crate::master::config::Tag::parse(t).map_err(PageError::Bad)?)),
        None => None,
    };
    let shown = |slave: &str| {
        only.as_ref()
            .is_none_or(|names| names.iter().any(|n| n == slave))
    };
    let now = now_ms();
    let mut slaves = slave_rows(app, now)?;
    slaves.retain(|s| shown(&s.name));
    let targets = all_targets(app)?;
    let tags = app.all_tags();
    // The newest series of each (slave, target): one cell, whichever flow it measured.
    let mut cells: HashMap<(&str, &str), &SeriesRow> = HashMap::new();
    let mut changed: HashMap<(&str, &str), bool> = HashMap::new();
    let series = app.store.series(&SeriesFilter {
        slaves: only.clone(),
        ..SeriesFilter::default()
    })?;
    for s in &series {
        let key = (s.slave.as_str(), s.target_id.as_str());
        let recent =
            s.changes_total > 0 && s.current_since.is_some_and(|t| now - t < RECENT_CHANGE_MS);
        *changed.entry(key).or_default() |= recent;
        let newer = cells
            .get(&key)
            .is_none_or(|old| s.last_measured > old.last_measured);
        if newer {
            cells.insert(key, s);
        }
    }
    let events = app.store.events(&EventQuery {
        limit: EVENTS,
        series: SeriesFilter {
            slaves: only.clone(),
            ..SeriesFilter::default()
        },
        ..EventQuery::default()
    })?;
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let follow_ups = crate::master::measure::briefs(app, &app.store.follow_ups(&ids)?)?;
    let body = html! {
        div.overview {
            section.matrix-wrap {
                @if !tags.is_empty() {
                    nav.tags {
                        "Slaves: "
                        @if tag.is_none() { b { "all" } } @else { a href="/" { "all" } }
                        @for t in &tags {
                            " · "
                            @if tag.as_deref() == Some(t.as_str()) { b { (t) } }
                            @else { a href=(format!("/?tag={}", form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>())) { (t) } }
                        }
                    }
                }
                @if targets.is_empty() || slaves.is_empty() {
                    p.empty { "No slaves or no targets yet: add them to dt-slaves.json and dt-targets.json." }
                }
                table #matrix.matrix data-now=(now) {
                    thead { tr {
                        th.corner { "slave \\ target" }
                        @for t in &targets { (target_head(t)) }
                    } }
                    tbody {
                        @for s in &slaves {
                            tr data-s=(s.name) {
                                th.slave title=(s.detail) {
                                    span class={ "dot " (if s.online { "on" } else { "off" }) } {}
                                    (s.name)
                                    small { (s.summary) }
                                }
                                @for t in &targets {
                                    (cell(cells.get(&(s.name.as_str(), t.id.as_str())).copied(),
                                        changed.get(&(s.name.as_str(), t.id.as_str())).copied().unwrap_or(false)))
                                }
                            }
                        }
                    }
                }
                p.legend {
                    "Each cell: hops · destination RTT in ms. "
                    span.cell-key.r { "reached" } " "
                    span.cell-key.u { "not reached" } " "
                    span.cell-key.c { "path changed in the last hour" }
                    " · "
                    span #live.live { "live: connecting" }
                }
            }
            aside.events {
                h2 { "Recent events and alerts" }
                ol #events {
                    @for e in &events {
                        li class={ "ev " (e.kind) } {
                            time { (when(e.at)) } " "
                            b { (e.kind) } " "
                            (e.slave) " → " (e.target_name)
                            @if let Some(ttl) = e.first_diff_ttl { " at hop " (ttl) }
                            @if let Some(f) = follow_ups.get(&e.id) {
                                br;
                                small.follow-up {
                                    a href=(f["url"].as_str().unwrap_or_default()) { "follow-up" } ": "
                                    (f["summary"].as_str().unwrap_or("the slaves are tracing it now"))
                                }
                            }
                        }
                    }
                    @if events.is_empty() { li.none { "No events yet." } }
                }
                p.ago { "as of " (when(now)) }
            }
        }
    };
    Ok(Page {
        title: "Overview".into(),
        nav: Nav::Overview,
        body,
    })
}

fn target_head(t: &TargetRow) -> Markup {
    html! {
        th data-t=(t.id) title=(t.address) {
            a href=(target_href(if t.id.is_empty() { &t.name } else { &t.id })) { (t.name) }
        }
    }
}

/// One cell: `r` reached / `u` not, a latency class, `c` for a recent change; hops and RTT.
fn cell(s: Option<&SeriesRow>, changed: bool) -> Markup {
    let Some(s) = s else {
        return html! { td {} };
    };
    let reached = s.last_success.unwrap_or(false);
    let rtt = s.last_rtt_ns.filter(|_| reached);
    let mut class = String::from(if reached { "r" } else { "u" });
    if let Some(ns) = rtt {
        class.push(' ');
        class.push_str(latency_class(ns as f64 / 1e6));
    }
    if changed {
        class.push_str(" c");
    }
    html! {
        td class=(class) {
            (s.current_hops.unwrap_or(0))
            @if let Some(ns) = rtt { i { (ms(ns)) } }
        }
    }
}
