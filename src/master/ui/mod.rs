//! The dashboard: server-rendered pages (maud), a small script for what changes live, and a
//! stylesheet, all embedded in the binary. Nothing on a page loads from anywhere but this
//! master (the `Content-Security-Policy` says so to the browser too), so it works in closed
//! networks. The pages read the store through the same calls as the JSON API.

mod graph;
mod lists;
mod overview;
mod series;

use super::routes::{App, Request, Response};
use super::session::Session;
use maud::{DOCTYPE, Markup, html};

/// The stylesheet.
const CSS: &str = include_str!("assets/app.css");
/// The script.
const JS: &str = include_str!("assets/app.js");
/// The icon.
const ICON: &str = include_str!("assets/icon.svg");

/// What a page may load and run: only this master's own script, styles and stream.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// True for the paths of the dashboard's pages (gated like every read).
pub fn is_page(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

/// Answers a dashboard page, or `None` when `req` is not one.
pub fn handle(app: &App, req: &Request, who: Option<&Session>) -> Option<Response> {
    if req.method != "GET" && req.method != "HEAD" {
        return None;
    }
    let page = match req.path.as_str() {
        "/" => overview::page(app, req),
        "/ui/targets" => lists::targets(app),
        "/ui/slaves" => lists::slaves(app),
        "/ui/config" => lists::config(app),
        "/ui/target" => graph::page(app, req),
        "/ui/series" => series::page(app, req),
        p if p.starts_with("/ui/") => Err(PageError::NotFound(format!(
            "no such page: {}",
            p.chars().take(200).collect::<String>()
        ))),
        _ => return None,
    };
    Some(match page {
        Ok(Page { title, nav, body }) => html_response(200, layout(&title, nav, who, body)),
        Err(PageError::NotFound(what)) => html_response(
            404,
            layout("Not found", Nav::None, who, html! { p.error { (what) } }),
        ),
        Err(PageError::Bad(what)) => html_response(
            400,
            layout("Bad request", Nav::None, who, html! { p.error { (what) } }),
        ),
        Err(PageError::Store(e)) => {
            log::error!("dashboard page {} failed: {e:#}", req.path);
            html_response(
                500,
                layout(
                    "Error",
                    Nav::None,
                    who,
                    html! { p.error { "the database did not answer; see the master's log" } },
                ),
            )
        }
    })
}

/// An embedded asset, or `None`.
pub fn asset(path: &str) -> Option<Response> {
    let (body, kind) = match path {
        "/assets/app.css" => (CSS, "text/css; charset=utf-8"),
        "/assets/app.js" => (JS, "text/javascript; charset=utf-8"),
        "/assets/icon.svg" | "/favicon.ico" => (ICON, "image/svg+xml"),
        _ => return None,
    };
    let mut r = Response::new(200, kind, body);
    r.headers
        .push(("Cache-Control", "public, max-age=300".to_owned()));
    r.headers.push(("X-Content-Type-Options", "nosniff".into()));
    Some(r)
}

/// A page's content, before the layout.
pub struct Page {
    title: String,
    nav: Nav,
    body: Markup,
}

/// Why a page could not be made.
pub enum PageError {
    /// No such slave, target or series: 404.
    NotFound(String),
    /// A bad parameter: 400.
    Bad(String),
    /// The store failed: 500.
    Store(anyhow::Error),
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError::Store(e)
    }
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    None,
    Overview,
    Targets,
    Slaves,
    Config,
}

/// An HTML response with the dashboard's headers.
pub fn html_response(status: u16, page: Markup) -> Response {
    let mut r = Response::new(status, "text/html; charset=utf-8", page.into_string());
    r.headers.push(("Content-Security-Policy", CSP.to_owned()));
    r.headers.push(("X-Content-Type-Options", "nosniff".into()));
    r.headers.push(("Referrer-Policy", "same-origin".into()));
    r.headers.push(("Cache-Control", "no-store".into()));
    r
}

fn layout(title: &str, nav: Nav, who: Option<&Session>, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) class=[(nav == n).then_some("on")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · dist-traceroute" }
                link rel="stylesheet" href="/assets/app.css";
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "dist-traceroute" }
                    nav {
                        (item(Nav::Overview, "/", "Overview"))
                        (item(Nav::Targets, "/ui/targets", "Targets"))
                        (item(Nav::Slaves, "/ui/slaves", "Slaves"))
                        (item(Nav::Config, "/ui/config", "Config"))
                    }
                    @if let Some(s) = who {
                        form.logout method="post" action="/logout" {
                            span.user { (s.user) " (" (s.role.name()) ")" }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The login form; `error` says why the last try failed.
pub fn login_page(next: &str, error: Option<&str>, no_users: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { "Log in · dist-traceroute" }
                link rel="stylesheet" href="/assets/app.css";
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
            }
            body.login {
                main {
                    h1 { "dist-traceroute" }
                    @if let Some(text) = no_users {
                        p.error #no-users { (text) }
                    } @else {
                        form method="post" action="/login" {
                            @if let Some(e) = error { p.error #login-error { (e) } }
                            input type="hidden" name="next" value=(next);
                            label { "User" input name="name" autocomplete="username" required autofocus; }
                            label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                            button type="submit" { "Log in" }
                        }
                    }
                }
            }
        }
    }
}

/// The 303 that sends a browser without a session to the login form, and back here after.
pub fn to_login(req: &Request) -> Response {
    let here = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
    see_other(&format!("/login?next={next}"))
}

/// A 303 to `to` (a path of this master).
pub fn see_other(to: &str) -> Response {
    let mut r = html_response(303, html! { a href=(to) { "continue" } });
    r.headers.push(("Location", to.to_owned()));
    r
}

// ---- formatting shared by the pages ------------------------------------------------------

/// Unix ms as `2026-12-07 05:30:12Z`.
pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// How long ago `ms` was, roughly (`42 s`, `5 min`, `3 h`, `2 d`).
pub fn ago(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// An RTT in ns as milliseconds with a precision that suits it.
pub fn ms(ns: i64) -> String {
    let v = ns as f64 / 1e6;
    ms_f(v)
}

/// Milliseconds with a precision that suits them.
pub fn ms_f(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The latency class (`l0` fastest … `l5` slowest) CSS colours an RTT in ms by.
pub fn latency_class(ms: f64) -> &'static str {
    match ms {
        v if v < 5.0 => "l0",
        v if v < 20.0 => "l1",
        v if v < 50.0 => "l2",
        v if v < 100.0 => "l3",
        v if v < 200.0 => "l4",
        _ => "l5",
    }
}

/// The link of a series page.
pub fn series_href(slave: &str, target: &str, flow: Option<i64>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("slave", slave).append_pair("target", target);
    if let Some(f) = flow {
        q.append_pair("flow", &f.to_string());
    }
    format!("/ui/series?{}", q.finish())
}

/// The link of a target page.
pub fn target_href(target: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
    format!("/ui/target?id={q}")
}

/// Now, Unix ms.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The parameters of a page's query, as the API reads them (unknown ones refused).
pub fn params(req: &Request, allowed: &[&str]) -> Result<super::api::Params, PageError> {
    super::api::Params::parse(&req.query, allowed).map_err(PageError::Bad)
}
