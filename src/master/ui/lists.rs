//! The slaves, targets and config pages, and the slave and target lists other pages share.

use super::{Nav, Page, PageError, ago, now_ms, series_href, target_href, when};
use crate::master::api::{OFFLINE_AFTER, slave_views};
use crate::master::config::FileGroup;
use crate::master::routes::App;
use maud::{Markup, html};

/// A target as the pages list it.
pub struct TargetRow {
    /// UUID ("" when the master never knew it).
    pub id: String,
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// In dt-targets.json now.
    pub configured: bool,
    /// Protocol, when configured.
    pub protocol: Option<String>,
}

/// The configured targets, then the ones only results name, each sorted by name.
pub fn all_targets(app: &App) -> anyhow::Result<Vec<TargetRow>> {
    let config = app.config.get();
    let mut list: Vec<TargetRow> = config
        .targets
        .targets
        .iter()
        .map(|(id, t)| TargetRow {
            id: id.0.clone(),
            name: t.name.0.clone(),
            address: t.address.0.clone(),
            configured: true,
            protocol: Some(t.protocol.clone().unwrap_or_else(|| "udp".into())),
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let mut gone: Vec<TargetRow> = app
        .store
        .targets()?
        .into_iter()
        .filter(|t| !config.has_target(&t.uuid))
        .map(|t| TargetRow {
            id: t.uuid,
            name: t.name,
            address: t.address,
            configured: false,
            protocol: None,
        })
        .collect();
    gone.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    list.extend(gone);
    Ok(list)
}

/// A slave as the pages list it.
pub struct SlaveRow {
    /// Name.
    pub name: String,
    /// Seen within the offline limit.
    pub online: bool,
    /// Last request, Unix ms.
    pub last_seen: Option<i64>,
    /// One line: last seen, version, spool, skew.
    pub summary: String,
    /// Everything, for a title.
    pub detail: String,
    /// The record.
    pub record: crate::master::store::SlaveRecord,
}

/// Every slave in the config or the store, by name.
pub fn slave_rows(app: &App, now: i64) -> anyhow::Result<Vec<SlaveRow>> {
    Ok(slave_views(app)?
        .into_iter()
        .map(|v| {
            let last = v.last_seen.max(v.last_config);
            let online = last.is_some_and(|l| now - l <= OFFLINE_AFTER.as_millis() as i64);
            let seen = last.map_or("never seen".to_owned(), |l| format!("{} ago", ago(l, now)));
            let mut summary = seen.clone();
            if let Some(d) = v.spool_depth.filter(|d| *d > 0) {
                summary.push_str(&format!(" · spool {d}"));
            }
            if let Some(s) = v.clock_skew_ms.filter(|s| s.abs() >= 1000) {
                summary.push_str(&format!(" · skew {:+.1} s", s as f64 / 1000.0));
            }
            let detail = format!(
                "{}: {}; last seen {}; version {}; spool depth {}; dropped {}; clock skew {}",
                v.name,
                if online { "online" } else { "offline" },
                last.map_or("never".into(), when),
                v.version.as_deref().unwrap_or("?"),
                v.spool_depth.map_or("?".into(), |d| d.to_string()),
                v.dropped_total,
                v.clock_skew_ms
                    .map_or("?".into(), |s| format!("{:+.3} s", s as f64 / 1000.0)),
            );
            SlaveRow {
                name: v.name.clone(),
                online,
                last_seen: last,
                summary,
                detail,
                record: v,
            }
        })
        .collect())
}

pub fn targets(app: &App) -> Result<Page, PageError> {
    let targets = all_targets(app)?;
    let series = app
        .store
        .series(&crate::master::store::SeriesFilter::default())?;
    let body = html! {
        table.list #targets {
            thead { tr { th { "Name" } th { "Address" } th { "Protocol" } th { "Series" } th { "Reached" } th { "Path changes" } th { "Last result" } } }
            tbody {
                @for t in &targets {
                    @let mine: Vec<_> = series.iter().filter(|s| s.target_id == t.id && (!t.id.is_empty() || s.target_name == t.name)).collect();
                    tr class=[(!t.configured).then_some("gone")] {
                        td { a href=(target_href(if t.id.is_empty() { &t.name } else { &t.id })) { (t.name) } @if !t.configured { " (not in the config)" } }
                        td.mono { (t.address) }
                        td { (t.protocol.as_deref().unwrap_or("")) }
                        td.num { (mine.len()) }
                        td.num { (mine.iter().filter(|s| s.last_success == Some(true)).count()) " / " (mine.len()) }
                        td.num { (mine.iter().map(|s| s.changes_total).sum::<i64>()) }
                        td { (mine.iter().filter_map(|s| s.last_measured).max().map(when).unwrap_or_default()) }
                    }
                }
            }
        }
    };
    Ok(Page {
        title: "Targets".into(),
        nav: Nav::Targets,
        body,
    })
}

pub fn slaves(app: &App) -> Result<Page, PageError> {
    let now = now_ms();
    let slaves = slave_rows(app, now)?;
    let series = app
        .store
        .series(&crate::master::store::SeriesFilter::default())?;
    let body = html! {
        table.list #slaves {
            thead { tr { th { "Name" } th { "Tags" } th { "State" } th { "Last seen" } th { "Address" } th { "Version" } th { "Results" } th { "Spool" } th { "Dropped" } th { "Clock skew" } th { "Series" } } }
            tbody {
                @for s in &slaves {
                    @let r = &s.record;
                    tr {
                        td { (s.name) @if !r.configured { " (not in the config)" } }
                        td { @for (i, t) in app.tags_of(&s.name).iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(format!("/?tag={}", form_urlencoded::byte_serialize(t.0.as_bytes()).collect::<String>())) { (t.0) }
                        } }
                        td { span class={ "dot " (if s.online { "on" } else { "off" }) } {} (if s.online { "online" } else { "offline" }) }
                        td { (s.last_seen.map(|l| format!("{} ({} ago)", when(l), ago(l, now))).unwrap_or_else(|| "never".into())) }
                        td.mono { (r.remote_addr.as_deref().unwrap_or("")) }
                        td { (r.version.as_deref().unwrap_or("")) }
                        td.num { (r.results_stored) }
                        td.num { (r.spool_depth.map(|d| d.to_string()).unwrap_or_default()) }
                        td.num { (r.dropped_total) }
                        td.num { (r.clock_skew_ms.map(|s| format!("{:+.3} s", s as f64 / 1000.0)).unwrap_or_default()) }
                        td {
                            @for x in series.iter().filter(|x| x.slave == s.name) {
                                a.chip href=(series_href(&x.slave, &x.target_id, Some(x.flow))) { (x.target_name) @if x.flow != 0 { "#" (x.flow) } } " "
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Page {
        title: "Slaves".into(),
        nav: Nav::Slaves,
        body,
    })
}

pub fn config(app: &App) -> Result<Page, PageError> {
    let now = now_ms();
    let (config, users) = app.reloads.get();
    let c = app.config.get();
    let users_now = app.read.users.get();
    let body = html! {
        section.config {
            h2 { "Slaves and targets" }
            p { (c.slaves.slaves.len()) " slaves, " (c.targets.targets.len()) " targets; "
                "Retries " (c.targets.retries) ", MaxHops " (c.targets.max_hops) ", TimeoutMs " (c.targets.timeout_ms) "." }
            (group(&config, now))
            h2 { "Users" }
            p {
                @if app.read.public { "Reads are public (-public-read): no login is asked for. " }
                @match &users_now {
                    Some(u) => { (u.file.users.len()) " users." }
                    None => { "No users file: reads answer clients on loopback only." }
                }
            }
            (group(&users, now))
        }
    };
    Ok(Page {
        title: "Config".into(),
        nav: Nav::Config,
        body,
    })
}

fn group(g: &FileGroup, now: i64) -> Markup {
    html! {
        dl.files {
            dt { "Files" }
            dd { @for f in &g.files { code { (f.display()) } " " } }
            dt { "In force since" }
            dd { (when(g.loaded_at)) " (" (ago(g.loaded_at, now)) " ago)" }
            dt { "Last reload" }
            dd { (g.reloaded_at.map(when).unwrap_or_else(|| "none since the start".into())) }
            dt { "Last rejected edit" }
            dd.rejected {
                @match &g.rejected {
                    Some((at, why)) => {
                        (when(*at)) ": " code { (why) }
                        @if g.rejected_now { strong { " — the files on disk are still this edit; the last good one is in force." } }
                    }
                    None => { "none" }
                }
            }
        }
    }
}
