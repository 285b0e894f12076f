//! Route handlers: plain synchronous functions from a request to a response, so each one is
//! tested without a socket. The connection layer (`server.rs`) calls [`handle`].

use super::access::{self, AuthHeader, Credentials};
use super::config::Live;
use super::path::{Path as NetPath, Terminal};
use super::store::{NewHop, NewResult, Outcome, Store, Stored, Ticket};
use super::throttle::Who;
use crate::proto::{
    BatchAnswer, BatchItem, BatchRequest, ConfigRequest, ItemStatus, ResultAnswer, TraceResult,
};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a failed login waits before its 401 (as the original); the server waits
/// without holding a worker.
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(2);

/// A request as the handlers see it: the body is complete and within the size cap.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method, upper case.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// The `Authorization` header, if any (reads by users).
    pub authorization: Option<AuthHeader>,
    /// Who sent it.
    pub remote: SocketAddr,
    /// The body.
    pub body: Vec<u8>,
    /// The `Cookie` header, if any (the dashboard's session).
    pub cookie: Option<String>,
    /// The `Origin` header, if any (a form's cross-site check).
    pub origin: Option<String>,
    /// The `Host` header, if any.
    pub host: Option<String>,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
    /// The `Last-Event-ID` header, if any (a stream's resume).
    pub last_event_id: Option<String>,
}

impl Default for Request {
    /// An empty `GET /` from loopback.
    fn default() -> Self {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            user_agent: None,
            authorization: None,
            remote: SocketAddr::from(([127, 0, 0, 1], 0)),
            body: Vec::new(),
            cookie: None,
            origin: None,
            host: None,
            accept: None,
            last_event_id: None,
        }
    }
}

/// The chunks of a streamed body, made one at a time (synchronously, as handlers are) while
/// the previous ones are sent; an error ends the body early.
pub type Chunks = Box<dyn Iterator<Item = anyhow::Result<Vec<u8>>> + Send>;

/// A response body: whole, or streamed in chunks so a large answer is never all in memory.
pub enum Body {
    /// The whole body, sent with its length.
    Bytes(Vec<u8>),
    /// Chunks made on demand, sent with chunked transfer encoding; an error cuts the body
    /// short where the client can tell (no last chunk).
    Stream(Chunks),
    /// Server-sent events from the live stream, for as long as the client stays.
    Events(super::stream::Subscription),
}

impl Body {
    /// The bytes of a whole body; `None` for a stream.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Body::Bytes(b) => Some(b),
            Body::Stream(_) | Body::Events(_) => None,
        }
    }

    /// The whole body, running a stream to its end (for tests and tools, not for serving).
    pub fn into_bytes(self) -> anyhow::Result<Vec<u8>> {
        match self {
            Body::Bytes(b) => Ok(b),
            Body::Stream(chunks) => {
                let mut out = Vec::new();
                for chunk in chunks {
                    out.extend_from_slice(&chunk?);
                }
                Ok(out)
            }
            Body::Events(_) => anyhow::bail!("an event stream has no end"),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Bytes({:?})", String::from_utf8_lossy(b)),
            Body::Stream(_) => f.write_str("Stream"),
            Body::Events(s) => write!(f, "{s:?}"),
        }
    }
}

/// A response, and how long the server should wait before sending it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
    /// Wait this long before answering (failed logins), without holding a worker.
    pub delay: Duration,
}

impl Response {
    /// A response with any content type.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: Body::Bytes(body.into()),
            delay: Duration::ZERO,
        }
    }

    /// A response whose body is made chunk by chunk while it is sent.
    pub fn stream(status: u16, content_type: &'static str, chunks: Chunks) -> Response {
        Response {
            body: Body::Stream(chunks),
            ..Response::new(status, content_type, Vec::new())
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// A JSON response of any serializable value.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response::new(status, "application/json", body)
    }

    /// A JSON error `{"error": "..."}`, for the new API.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }

    fn redirect(to: &str) -> Response {
        let mut r = Response::text(301, format!("Moved Permanently: {to}\n"));
        r.headers.push(("Location", to.to_owned()));
        r
    }
}

/// Counters of what the master did with requests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Results received (any endpoint).
    pub results_received: AtomicU64,
    /// Results stored now.
    pub results_stored: AtomicU64,
    /// Of those, made-up results (`-zDebugResults`).
    pub results_debug: AtomicU64,
    /// Results that were stored before (same ID).
    pub results_duplicate: AtomicU64,
    /// Results that did not decode.
    pub rejected_decode: AtomicU64,
    /// Results that failed validation.
    pub rejected_invalid: AtomicU64,
    /// Requests with wrong credentials.
    pub auth_failures: AtomicU64,
    /// Login attempts refused with 429 while their address or name was blocked.
    pub auth_throttled: AtomicU64,
    /// Config documents served.
    pub configs_served: AtomicU64,
    /// Storage errors.
    pub store_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the handlers share.
pub struct App {
    /// This master's name among masters sharing a database (host:port).
    pub name: String,
    /// The live config.
    pub config: Live,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Request counters.
    pub counters: Counters,
    /// Failed-login throttling.
    pub throttle: super::throttle::Throttle,
    /// Where events go.
    pub alerts: super::alert::Alerts,
    /// Request-duration histograms.
    pub metrics: super::metrics::Metrics,
    /// Who may read the API, the exports and the metrics.
    pub read: access::ReadAccess,
    /// The live stream of stored results and events.
    pub stream: Arc<super::stream::Hub>,
    /// The dashboard's login sessions.
    pub sessions: super::session::Sessions,
    /// Served over HTTPS (session cookies are then `Secure`).
    pub https: bool,
    /// What the config watchers did (the dashboard's config page).
    pub reloads: super::config::Reloads,
    /// On-demand measurements: the slaves' waiting polls and the limits.
    pub measure: Arc<super::measure::Board>,
    /// The IP-to-AS table (`-asn-db`), when there is one.
    pub owners: Arc<super::owners::Owners>,
    /// The tags each slave of ours gave itself (`-tags`), as its last config request said.
    pub reported_tags: Mutex<HashMap<String, Vec<String>>>,
    /// The enrolled slaves (the managed file beside `dt-slaves.json`).
    pub enrolled: Arc<super::enrol::Live>,
}

impl App {
    /// An app serving `config` from `store` as master `name`: alerts to the log only, reads
    /// from loopback only; set the other fields as needed.
    pub fn new(name: String, config: Live, store: Arc<dyn Store>) -> App {
        App {
            name,
            config,
            store,
            counters: Counters::default(),
            throttle: super::throttle::Throttle::new(),
            alerts: super::alert::Alerts::log_only(),
            metrics: super::metrics::Metrics::default(),
            read: access::ReadAccess::default(),
            stream: Arc::default(),
            sessions: super::session::Sessions::default(),
            https: false,
            reloads: super::config::Reloads::default(),
            measure: Arc::default(),
            owners: Arc::default(),
            reported_tags: Mutex::default(),
            enrolled: Arc::new(super::enrol::Live::none()),
        }
    }

    /// The tags of slave `name`: the slaves file's, or those it enrolled with.
    pub fn tags_of(&self, name: &str) -> Vec<super::config::Tag> {
        let config = self.config.get();
        if config.slave(name).is_some() {
            return config.tags_of(name).to_vec();
        }
        self.enrolled
            .get()
            .slave(name)
            .map(|s| s.tags.clone())
            .unwrap_or_default()
    }

    /// The slaves with tag `tag`, of the slaves file and enrolled.
    pub fn tagged(&self, tag: &super::config::Tag) -> Vec<String> {
        let mut names = self.config.get().tagged(tag);
        for s in &self.enrolled.get().slaves {
            if s.tags.contains(tag) && !names.contains(&s.name.0) {
                names.push(s.name.0.clone());
            }
        }
        names
    }

    /// Every tag a slave has, sorted.
    pub fn all_tags(&self) -> Vec<String> {
        let config = self.config.get();
        let enrolled = self.enrolled.get();
        let mut tags: Vec<String> = config
            .slaves
            .slaves
            .iter()
            .flat_map(|s| s.tags.iter())
            .chain(enrolled.slaves.iter().flat_map(|s| s.tags.iter()))
            .map(|t| t.0.clone())
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }
}

/// What a handler gives back: an answer now, or one that waits for the store's commit or
/// for something to happen.
pub enum Reply {
    /// The response.
    Now(Response),
    /// Results on their way to disk, and how to answer once they are there.
    Later(Pending),
    /// A long-poll: answered when woken or when its time is up.
    Wait(Waiting),
}

/// Builds a long-poll's response (on the worker pool): `true` when it was woken.
type WaitFinish = Box<dyn FnOnce(&App, bool) -> Response + Send>;

/// A request held open until it is woken or its time runs out (without holding a thread).
pub struct Waiting {
    /// Woken through this.
    pub woken: tokio::sync::oneshot::Receiver<()>,
    /// At most this long.
    pub limit: std::time::Duration,
    /// Then builds the answer.
    pub finish: WaitFinish,
}

impl Reply {
    /// A long-poll woken through `woken`, or answered after `limit`.
    pub fn wait(
        woken: tokio::sync::oneshot::Receiver<()>,
        limit: std::time::Duration,
        finish: impl FnOnce(&App, bool) -> Response + Send + 'static,
    ) -> Reply {
        Reply::Wait(Waiting {
            woken,
            limit,
            finish: Box::new(finish),
        })
    }
}

/// Builds the response once the store has answered.
type Finish = Box<dyn FnOnce(&App, anyhow::Result<Vec<Outcome>>) -> Response + Send>;

/// An answer that waits for results to be durable (without holding a thread).
pub struct Pending {
    ticket: Ticket,
    finish: Finish,
}

impl Pending {
    fn reply(
        ticket: Ticket,
        finish: impl FnOnce(&App, anyhow::Result<Vec<Outcome>>) -> Response + Send + 'static,
    ) -> Reply {
        Reply::Later(Pending {
            ticket,
            finish: Box::new(finish),
        })
    }

    /// Waits for the commit without blocking a thread, then builds the response.
    pub async fn answer(self, app: &App) -> Response {
        let outcome = self.ticket.done().await;
        (self.finish)(app, outcome)
    }

    /// Waits for the commit (blocking this thread), then builds the response.
    pub fn answer_blocking(self, app: &App) -> Response {
        let outcome = self.ticket.wait();
        (self.finish)(app, outcome)
    }
}

/// Routes one request, waits for what it stores, and records how long it took.
pub fn handle(app: &App, req: &Request) -> Response {
    let start = std::time::Instant::now();
    let r = match route(app, req) {
        Reply::Now(r) => r,
        Reply::Later(p) => p.answer_blocking(app),
        Reply::Wait(mut w) => {
            let until = std::time::Instant::now() + w.limit;
            let woken = loop {
                match w.woken.try_recv() {
                    Ok(()) => break true,
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break false,
                    Err(_) if std::time::Instant::now() >= until => break false,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            };
            (w.finish)(app, woken)
        }
    };
    app.metrics
        .observe(super::metrics::route_class(&req.path), start.elapsed());
    r
}

/// Routes one request; the caller waits for a [`Reply::Later`] and records the time.
pub fn route(app: &App, req: &Request) -> Reply {
    if let Some(refused) = read_gate(app, req) {
        return Reply::Now(refused);
    }
    if req.method == "HEAD" {
        // A HEAD is answered as its GET; the connection layer sends the head only.
        let get = Request {
            method: "GET".into(),
            ..req.clone()
        };
        return Reply::Now(route_now(app, &get));
    }
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("POST", p) if p.starts_with("/results/") => legacy_result(app, req),
        ("POST", "/api/v1/results") => api_post_result(app, req),
        ("POST", "/api/v1/results:batch") => api_post_batch(app, req),
        ("POST", "/api/v1/jobs") => jobs_poll(app, req),
        _ => Reply::Now(route_now(app, req)),
    }
}

fn route_now(app: &App, req: &Request) -> Response {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        (_, "/config") => Response::redirect("/config/"),
        (_, "/results") => Response::redirect("/results/"),
        ("POST", p) if p.starts_with("/config/") => config(app, req),
        ("GET", "/api/v1/results") => api_results(app, req),
        ("GET", "/metrics") => {
            let format = super::metrics::Format::negotiate(req.accept.as_deref());
            let only = match super::api::Params::parse(&req.query, &["tag"])
                .map_err(super::api::ApiError::from)
                .and_then(|p| super::api::tag_slaves(app, &p))
            {
                Ok(only) => only,
                Err(e) => return e.response(),
            };
            match super::metrics::render(app, format, only.as_deref()) {
                Ok(text) => {
                    let mut r = Response::new(200, format.content_type(), text);
                    r.headers.push(("Vary", "Accept".into()));
                    r
                }
                Err(e) => {
                    log::error!("metrics failed: {e:#}");
                    Response::error(500, "metrics failed")
                }
            }
        }
        ("GET" | "HEAD", "/healthz") => Response::text(200, "ok\n"),
        ("GET", "/login") => {
            let next = form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == "next")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| "/".into());
            let no_users = app
                .read
                .users
                .get()
                .is_none()
                .then(|| access::no_users_file(app.read.users.file()));
            super::ui::html_response(
                200,
                super::ui::login_page(super::session::safe_next(&next), None, no_users.as_deref()),
            )
        }
        ("POST", "/login") => login(app, req),
        ("POST", "/api/v1/enroll") => enroll(app, req),
        ("POST", "/api/v1/measurements") => match api_user(app, req) {
            Ok((user, role)) => super::measure::create(app, req, &user, role),
            Err(r) => r,
        },
        ("GET", p) if p.starts_with("/api/v1/measurements/") => {
            super::measure::status(app, &p["/api/v1/measurements/".len()..])
        }
        ("POST", "/logout") => logout(app, req),
        ("GET" | "HEAD", p) if p.starts_with("/assets/") || p == "/favicon.ico" => {
            super::ui::asset(p).unwrap_or_else(|| {
                Response::error(404, format!("no such asset: {}", truncate(p, 200)))
            })
        }
        (_, p)
            if p.starts_with("/config/")
                || p.starts_with("/results/")
                || p == "/api/v1/results"
                || p == "/api/v1/results:batch"
                || p == "/api/v1/jobs"
                || (p == "/" && req.method != "GET" && req.method != "HEAD") =>
        {
            let mut r = Response::error(405, format!("{} is not allowed here", req.method));
            let allow = if p.starts_with("/api/v1/results") {
                "GET, POST"
            } else if p == "/" {
                "GET"
            } else {
                "POST"
            };
            r.headers.push(("Allow", allow.into()));
            r
        }
        _ => super::ui::handle(app, req, current_session(app, req).as_ref())
            .or_else(|| super::api::handle(app, req))
            .or_else(|| super::export::handle(app, req))
            .unwrap_or_else(|| {
                Response::error(404, format!("no such path: {}", truncate(path, 200)))
            }),
    }
}

pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Why a login failed.
#[derive(Debug)]
enum AuthFail {
    /// Wrong name or password: 401 after a delay.
    Wrong,
    /// Too many failures lately: 429, try again after this long.
    Throttled(Duration),
}

/// Runs `check` for a login under the failed-login throttle: 429 at once while the address or
/// the name is blocked, without running `check`; a failure is counted and blocks the address
/// or name after a burst (logged once), and `wrong` runs for one that started no block.
fn throttled<T>(
    app: &App,
    req: &Request,
    who: Who<'_>,
    check: impl FnOnce() -> Option<T>,
    wrong: impl FnOnce(),
) -> Result<T, AuthFail> {
    let now = std::time::Instant::now();
    if let Some(wait) = app.throttle.blocked(req.remote.ip(), who, now) {
        bump(&app.counters.auth_throttled);
        return Err(AuthFail::Throttled(wait));
    }
    if let Some(ok) = check() {
        app.throttle.success(req.remote.ip(), who, now);
        return Ok(ok);
    }
    bump(&app.counters.auth_failures);
    let blocks = app.throttle.failure(req.remote.ip(), who, now);
    if blocks.is_empty() {
        wrong();
    }
    for b in blocks {
        log::warn!(
            "too many failed logins: {} blocked for {}s (answered 429 meanwhile)",
            b.what,
            b.duration.as_secs()
        );
    }
    Err(AuthFail::Wrong)
}

/// Checks a slave's name/password pair under the failed-login throttle.
fn authenticate(
    app: &App,
    req: &Request,
    name: &str,
    password: &str,
    what: &str,
) -> Result<(), AuthFail> {
    throttled(
        app,
        req,
        Who::Slave(name),
        || {
            // The operator's file first; an enrolled entry of the same name is never used.
            let config = app.config.get();
            let ok = if config.slave(name).is_some() {
                config.check_password(name, password)
            } else {
                app.enrolled.check(name, password)
            };
            ok.then_some(())
        },
        || {
            log::warn!(
                "{what}: wrong name or password for slave '{}' from {}",
                truncate(name, 64).escape_debug(),
                req.remote
            )
        },
    )
}

/// Checks a user's HTTP Basic login or bearer token against the users file, through the
/// failed-login throttle: the user's name and role, or why not and whom it named.
fn user_login(
    app: &App,
    req: &Request,
    users: &super::config::Users,
    credentials: &Credentials,
) -> Result<(String, super::config::Role), (AuthFail, String)> {
    match credentials {
        Credentials::Basic { name, password } => {
            let name = truncate(name, super::config::MAX_USER_NAME);
            throttled(
                app,
                req,
                Who::User(name),
                || users.check_password(name, password),
                || {},
            )
            .map(|role| (name.to_owned(), role))
            .map_err(|fail| (fail, format!("user '{}'", name.escape_debug())))
        }
        Credentials::Bearer(token) => throttled(
            app,
            req,
            Who::Token,
            || {
                users
                    .check_token(token)
                    .map(|(name, role)| (name.to_owned(), role))
            },
            || {},
        )
        .map_err(|fail| (fail, "a bearer token".to_owned())),
    }
}

/// The user a write of the API (starting a measurement) comes from, by HTTP Basic or bearer
/// token, with the failed-login throttle of reads; or the answer why not.
fn api_user(app: &App, req: &Request) -> Result<(String, super::config::Role), Response> {
    let Some(users) = app.read.users.get() else {
        return Err(Response::error(
            403,
            format!(
                "starting measurements needs a user with the role operator or admin, and this \
                 master has no users file ({}); see `dist-traceroute hash-password`",
                app.read.users.file().display()
            ),
        ));
    };
    let Some(credentials) = req
        .authorization
        .as_ref()
        .and_then(|h| access::credentials(&h.0))
    else {
        return Err(challenge(Response::error(
            401,
            "starting measurements needs a login: HTTP Basic with a user of the master's \
             users file, or Authorization: Bearer TOKEN",
        )));
    };
    user_login(app, req, &users, &credentials).map_err(|(fail, _)| {
        auth_failed(
            fail,
            challenge(Response::error(401, "wrong name, password or token")),
            Response::error(429, "too many failed logins"),
        )
    })
}

/// `POST /api/v1/jobs`: one of our slaves asks for on-demand jobs (a long-poll).
fn jobs_poll(app: &App, req: &Request) -> Reply {
    let ask: crate::proto::JobsRequest = match serde_json::from_slice(&req.body) {
        Ok(a) => a,
        Err(e) => {
            bump(&app.counters.rejected_decode);
            return Reply::Now(Response::error(400, format!("body is not a job poll: {e}")));
        }
    };
    if let Err(fail) = authenticate(app, req, &ask.creds.name, &ask.creds.password, "job poll") {
        return Reply::Now(auth_failed(
            fail,
            Response::error(401, "wrong name or password"),
            Response::error(429, "too many failed logins"),
        ));
    }
    app.store.touch_slave(
        &ask.creds.name,
        &req.remote.ip().to_canonical().to_string(),
        req.user_agent.as_deref(),
        false,
    );
    super::measure::poll(app, ask)
}

/// Lets a read through (`None`) or answers why not. With `-public-read` anyone reads; without
/// a users file only clients on loopback do, and the rest get 403 saying how to add a user;
/// with one, every read needs a user's HTTP Basic login or bearer token (401 without, 401
/// after the failed-login delay for a wrong one, 429 while the throttle blocks). Every role
/// may read. Anything but a read passes untouched: the slave endpoints keep their own
/// credentials.
fn read_gate(app: &App, req: &Request) -> Option<Response> {
    let access = &app.read;
    if access.public || !access::is_read(&req.method, &req.path) {
        return None;
    }
    let page = super::ui::is_page(&req.path);
    let Some(users) = access.users.get() else {
        if access::is_loopback(req.remote.ip()) {
            return None;
        }
        read_refused(app, req, 403, "no users file, and not on loopback");
        let why = access::no_users_file(access.users.file());
        return Some(if page {
            super::ui::html_response(403, super::ui::login_page("/", None, Some(&why)))
        } else {
            Response::error(403, why)
        });
    };
    if req.authorization.is_none() && session_of(app, req, &users).is_some() {
        return None;
    }
    let credentials = req
        .authorization
        .as_ref()
        .and_then(|h| access::credentials(&h.0));
    let login = match &credentials {
        None if page => return Some(super::ui::to_login(req)),
        None => {
            read_refused(app, req, 401, "no login");
            return Some(challenge(Response::error(
                401,
                "this read needs a login: HTTP Basic with a user of the master's users file, \
                 or Authorization: Bearer TOKEN",
            )));
        }
        Some(c) => user_login(app, req, &users, c),
    };
    match login {
        // A viewer is enough for every read today.
        Ok(_role) => None,
        Err((fail, who)) => {
            let (status, why) = match fail {
                AuthFail::Wrong => (401, "wrong password or token"),
                AuthFail::Throttled(_) => (429, "too many failed logins"),
            };
            read_refused(app, req, status, &format!("{why} for {who}"));
            Some(auth_failed(
                fail,
                challenge(Response::error(401, "wrong name, password or token")),
                Response::error(429, "too many failed logins"),
            ))
        }
    }
}

/// The logged-in user of a dashboard page, to show in its header.
fn current_session(app: &App, req: &Request) -> Option<super::session::Session> {
    if !super::ui::is_page(&req.path) {
        return None;
    }
    let users = app.read.users.get()?;
    session_of(app, req, &users)
}

/// The dashboard session a request's cookie holds, if it is valid for `users` now.
fn session_of(
    app: &App,
    req: &Request,
    users: &super::config::Users,
) -> Option<super::session::Session> {
    let value = super::session::cookie_value(req.cookie.as_deref()?)?;
    app.sessions
        .check(users, value, chrono::Utc::now().timestamp_millis())
}

/// `POST /login`: a form's user name and password; a session cookie and a 303 to where the
/// browser was going when they are right, the form again (after the failed-login delay)
/// when not. Throttled like every login, and refused when the form comes from another site.
fn login(app: &App, req: &Request) -> Response {
    use super::ui::{html_response, login_page};
    if !super::session::same_origin(req.origin.as_deref(), req.host.as_deref()) {
        read_refused(app, req, 403, "login form from another origin");
        return html_response(
            403,
            login_page(
                "/",
                Some("this form came from another site, so it was refused"),
                None,
            ),
        );
    }
    let mut name = String::new();
    let mut password = String::new();
    let mut next = String::from("/");
    for (k, v) in form_urlencoded::parse(&req.body) {
        match &*k {
            "name" => name = v.into_owned(),
            "password" => password = v.into_owned(),
            "next" => next = v.into_owned(),
            _ => {}
        }
    }
    let next = super::session::safe_next(&next).to_owned();
    let Some(users) = app.read.users.get() else {
        let why = access::no_users_file(app.read.users.file());
        return html_response(403, login_page(&next, None, Some(&why)));
    };
    let name = truncate(&name, super::config::MAX_USER_NAME).to_owned();
    let outcome = throttled(
        app,
        req,
        Who::User(&name),
        || users.check_password(&name, &password),
        || {
            log::info!(
                "dashboard login: wrong name or password for '{}' from {}",
                name.escape_debug(),
                req.remote
            )
        },
    );
    let now = chrono::Utc::now().timestamp_millis();
    match outcome {
        Ok(_role) => match app.sessions.issue(&users, &name, now) {
            Some(value) => {
                log::info!(
                    "dashboard login: {} from {}",
                    name.escape_debug(),
                    req.remote
                );
                let mut r = super::ui::see_other(&next);
                r.headers
                    .push(("Set-Cookie", super::session::set_cookie(&value, app.https)));
                r
            }
            None => html_response(
                500,
                login_page(&next, Some("the session could not be made"), None),
            ),
        },
        Err(fail) => auth_failed(
            fail,
            html_response(401, login_page(&next, Some("wrong name or password"), None)),
            html_response(
                429,
                login_page(
                    &next,
                    Some("too many failed logins: wait a little and try again"),
                    None,
                ),
            ),
        ),
    }
}

/// `POST /logout`: ends the browser's session (the cookie goes; its signature stays valid
/// until it expires, as nothing is kept per session) and shows the login form.
fn logout(app: &App, req: &Request) -> Response {
    if !super::session::same_origin(req.origin.as_deref(), req.host.as_deref()) {
        return super::ui::html_response(
            403,
            super::ui::login_page(
                "/",
                Some("this form came from another site, so it was refused"),
                None,
            ),
        );
    }
    let mut r = super::ui::see_other("/login");
    r.headers
        .push(("Set-Cookie", super::session::clear_cookie(app.https)));
    r
}

/// Adds the Basic challenge a 401 on a read carries.
fn challenge(mut r: Response) -> Response {
    r.headers
        .push(("WWW-Authenticate", access::CHALLENGE.to_owned()));
    r
}

/// Logs a refused read at info level, at most once a minute per address.
fn read_refused(app: &App, req: &Request, status: u16, why: &str) {
    app.read
        .refusals
        .note(req.remote.ip(), std::time::Instant::now(), || {
            format!(
                "read refused ({status}, {why}): {} {} from {}",
                req.method,
                truncate(&req.path, 100).escape_debug(),
                req.remote
            )
        });
}

/// The answer for a failed login: `wrong` delayed for a 401, or 429 with `Retry-After`.
fn auth_failed(fail: AuthFail, wrong: Response, throttled: Response) -> Response {
    match fail {
        AuthFail::Wrong => Response {
            delay: FAILED_LOGIN_DELAY,
            ..wrong
        },
        AuthFail::Throttled(wait) => {
            let mut r = throttled;
            r.status = 429;
            r.headers
                .push(("Retry-After", (wait.as_secs() + 1).to_string()));
            r
        }
    }
}

/// The answer for a failed login on the original's endpoints (`/config/`, `/results/`):
/// like [`auth_failed`], and a 429 also waits [`FAILED_LOGIN_DELAY`]. The original Go slave
/// resends at once on any answer but 200; the original master's 2 s before each refusal is
/// what paced it, so every refusal here keeps that pace (the wait holds no worker).
fn legacy_auth_failed(fail: AuthFail, wrong: Response, throttled: Response) -> Response {
    let r = auth_failed(fail, wrong, throttled);
    Response {
        delay: FAILED_LOGIN_DELAY,
        ..r
    }
}

fn config(app: &App, req: &Request) -> Response {
    let Ok(creds) = serde_json::from_slice::<ConfigRequest>(&req.body) else {
        return Response::text(400, "Can't unmarshal request body");
    };
    if let Err(fail) = authenticate(app, req, &creds.name, &creds.password, "config request") {
        return legacy_auth_failed(
            fail,
            Response::text(401, "Unauthorized\n"),
            Response::text(429, "Too Many Requests\n"),
        );
    }
    let config = app.config.get();
    bump(&app.counters.configs_served);
    // Behind a trusted proxy the client's port is unknown (0): keep the address alone.
    let remote = match req.remote.port() {
        0 => req.remote.ip().to_string(),
        _ => req.remote.to_string(),
    };
    app.store.touch_slave(
        &creds.name,
        &remote,
        creds.agent.as_deref().or(req.user_agent.as_deref()),
        true,
    );
    if creds.spool_depth.is_some() || creds.dropped_total.is_some() {
        app.store
            .slave_status(&creds.name, creds.spool_depth, creds.dropped_total);
    }
    note_reported_tags(app, &creds.name, &creds.tags);
    let doc = match config.targets_for(&creds.name, &app.tags_of(&creds.name)) {
        Ok(doc) => doc,
        Err(e) => {
            log::error!("cannot make the targets of {}: {e:#}", creds.name);
            return Response::text(500, "Internal Server Error\n");
        }
    };
    log::debug!("config served to {} at {}", creds.name, req.remote);
    Response::text(200, doc.to_vec())
}

/// `POST /api/v1/enroll` with `{"Token": …, "Password": …}`: a new slave exchanges its
/// one-time token for its place in the managed file, the secret it made kept as an Argon2
/// hash. 200 `{"Name", "Tags"}`; 403 with the reason for a token used, expired, unknown or
/// whose name was taken since; every refusal counts as a failed login of the address.
fn enroll(app: &App, req: &Request) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct EnrollRequest {
        token: String,
        password: String,
    }
    let body: EnrollRequest = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, format!("not an enrolment request: {e}")),
    };
    if body.token.len() > 128 {
        return Response::error(400, "Token: too long to be one of this master's");
    }
    if !(32..=128).contains(&body.password.len())
        || !body.password.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Response::error(400, "Password: 32 to 128 letters and digits");
    }
    let config = app.config.get();
    let listed = |name: &str| config.slave(name).is_some();
    let mut refusal = None;
    let outcome = throttled(
        app,
        req,
        Who::Token,
        || match app.enrolled.enrol(&body.token, &body.password, listed) {
            Ok(Ok(who)) => Some(Ok(who)),
            Ok(Err(why)) => {
                refusal = Some(why.to_string());
                None
            }
            Err(e) => Some(Err(e)),
        },
        || {},
    );
    match outcome {
        Ok(Ok((name, tags))) => {
            log::info!("slave '{name}' enrolled from {}", req.remote);
            Response::json(200, &serde_json::json!({"Name": name, "Tags": tags}))
        }
        Ok(Err(e)) => {
            log::error!("enrolment failed: {e:#}");
            Response::error(500, "enrolment failed")
        }
        Err(AuthFail::Throttled(wait)) => {
            let mut r = Response::error(429, "too many refused enrolments from this address");
            r.headers
                .push(("Retry-After", (wait.as_secs() + 1).to_string()));
            r
        }
        Err(AuthFail::Wrong) => {
            let why = refusal.unwrap_or_else(|| "refused".into());
            log::warn!("enrolment from {} refused: {why}", req.remote);
            Response::error(403, why)
        }
    }
}

/// Keeps the tags a slave gave itself, the valid ones and at most 32, to show.
fn note_reported_tags(app: &App, name: &str, tags: &[String]) {
    let tags: Vec<String> = tags
        .iter()
        .filter(|t| super::config::Tag::parse(t).is_ok())
        .take(32)
        .cloned()
        .collect();
    let mut all = app.reported_tags.lock().unwrap_or_else(|p| p.into_inner());
    if tags.is_empty() {
        all.remove(name);
    } else {
        all.insert(name.to_owned(), tags);
    }
}

/// Why a result was not stored.
#[derive(Debug)]
enum Reject {
    Decode(String),
    Auth(AuthFail),
    Invalid(String),
    Store(String),
}

/// Decodes, authenticates and checks one result: what the store should keep.
fn accept_result(app: &App, req: &Request) -> Result<NewResult, Reject> {
    bump(&app.counters.results_received);
    let result: TraceResult = serde_json::from_slice(&req.body).map_err(|e| {
        bump(&app.counters.rejected_decode);
        Reject::Decode(e.to_string())
    })?;
    authenticate(
        app,
        req,
        &result.creds.name,
        &result.creds.password,
        "result",
    )
    .map_err(Reject::Auth)?;
    let config = app.config.get();
    let mut new = check_result(&result, &config).map_err(|e| {
        bump(&app.counters.rejected_invalid);
        log::warn!(
            "result {} from {} rejected: {e}",
            truncate(&result.id, 64).escape_debug(),
            result.creds.name
        );
        Reject::Invalid(e)
    })?;
    received(app, req, &mut new);
    if !new.target_known {
        log::info!(
            "result {} from {} is for target '{}' ({}) that is not in the config: stored and marked so",
            new.result_id,
            new.slave,
            new.target_name.escape_debug(),
            new.target_address.escape_debug()
        );
    }
    Ok(new)
}

/// Hands one accepted result to the store; `answer` turns its fate into the response.
fn store_one(
    app: &App,
    new: NewResult,
    answer: impl FnOnce(Result<Stored, Reject>) -> Response + Send + 'static,
) -> Reply {
    let (id, slave, debug) = (new.result_id.clone(), new.slave.clone(), new.origin.debug);
    let shown = app.stream.wanted().then(|| new.clone());
    let ticket = app.store.submit(vec![new]);
    Pending::reply(ticket, move |app, outcome| {
        answer(stored_one(
            app,
            (&id, &slave, debug),
            shown.as_ref(),
            outcome,
        ))
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Counts, logs, streams (`shown`: the result, when the stream wants it) and alerts on the
/// fate of one stored result.
fn stored_one(
    app: &App,
    (id, slave, debug): (&str, &str, bool),
    shown: Option<&NewResult>,
    outcome: anyhow::Result<Vec<Outcome>>,
) -> Result<Stored, Reject> {
    let outcome = outcome.and_then(|mut v| {
        v.pop()
            .ok_or_else(|| anyhow::anyhow!("the store gave no answer"))
    });
    match outcome {
        Ok((Stored::New(row), events)) => {
            match shown {
                Some(r) => app.stream.result(r, row, now_ms()),
                None => app.stream.skip(),
            }
            for e in &events {
                if !app.measure.hand(e, debug) {
                    app.alerts.send(e, debug, None);
                }
                app.stream.event(e);
            }
            bump(&app.counters.results_stored);
            if debug {
                bump(&app.counters.results_debug);
            }
            log::debug!("result {id} from {slave} stored as {row}");
            Ok(Stored::New(row))
        }
        Ok((Stored::Duplicate, _)) => {
            bump(&app.counters.results_duplicate);
            log::info!("result {id} from {slave} was stored before");
            Ok(Stored::Duplicate)
        }
        Err(e) => {
            bump(&app.counters.store_errors);
            log::error!("cannot store result {id}: {e:#}");
            Err(Reject::Store(format!("{e:#}")))
        }
    }
}

/// Checks a decoded result and turns it into what the store keeps.
pub fn check_result(r: &TraceResult, config: &super::config::Config) -> Result<NewResult, String> {
    uuid::Uuid::parse_str(&r.id)
        .map_err(|_| format!("ID '{}' is not a UUID", truncate(&r.id, 64)))?;
    let when = chrono::DateTime::parse_from_rfc3339(&r.date_time).map_err(|e| {
        format!(
            "DateTime '{}' is not RFC 3339: {e}",
            truncate(&r.date_time, 64)
        )
    })?;
    if r.target.name.is_empty() || r.target.name.len() > 255 {
        return Err("Target.Name must be 1 to 255 bytes".into());
    }
    if r.target.address.is_empty() || r.target.address.len() > 255 {
        return Err("Target.Address must be 1 to 255 bytes".into());
    }
    if !(1..=255).contains(&r.hop_count) {
        return Err(format!("HopCount {} is out of range 1..255", r.hop_count));
    }
    // A NUL character is no part of any name, and PostgreSQL cannot store one in text.
    let texts = [
        ("Target.Name", Some(&r.target.name)),
        ("Target.Address", Some(&r.target.address)),
        ("TargetID", r.target_id.as_ref()),
        ("Protocol", r.protocol.as_ref()),
        ("Destination", r.destination.as_ref()),
        ("Unreachable", r.unreachable.as_ref()),
        ("Error", r.error.as_ref()),
        ("Agent", r.agent.as_ref()),
    ];
    let hop_texts = r.hops.iter().flat_map(|h| {
        [
            ("hop Host", Some(&h.host)),
            ("hop IP", h.ip.as_ref()),
            ("hop Kind", h.kind.as_ref()),
        ]
    });
    for (field, text) in texts.into_iter().chain(hop_texts) {
        if text.is_some_and(|t| t.contains('\0')) {
            return Err(format!("{field} contains a NUL character"));
        }
    }
    if r.hops.len() > 255 {
        return Err(format!("{} hops is more than 255", r.hops.len()));
    }
    let mut hops = Vec::with_capacity(r.hops.len());
    let mut addrs = Vec::with_capacity(r.hops.len());
    for h in &r.hops {
        if !(1..=255).contains(&h.ttl) {
            return Err(format!("hop TTL {} is out of range 1..255", h.ttl));
        }
        if h.elapsed_time < 0 || h.n < 0 {
            return Err(format!(
                "hop {}: ElapsedTime and N must not be negative",
                h.ttl
            ));
        }
        // One parse a hop: the address for the path, and its text for the store.
        let (addr, address) = match &h.ip {
            Some(ip) => match ip.parse::<std::net::IpAddr>() {
                // std takes only the dotted quad it would print, so the text is kept.
                Ok(a @ std::net::IpAddr::V4(_)) => (a, ip.clone()),
                Ok(a) => (a, a.to_string()),
                Err(_) => {
                    return Err(format!(
                        "hop {}: IP '{}' is not an address",
                        h.ttl,
                        truncate(ip, 64)
                    ));
                }
            },
            None => {
                let a = std::net::IpAddr::from(h.address);
                (a, super::path::addr_text(&a))
            }
        };
        if h.host.len() > 255 {
            return Err(format!("hop {}: Host is longer than 255 bytes", h.ttl));
        }
        if let Some(replies) = &h.replies
            && (replies.len() > 32 || replies.iter().flatten().any(|v| *v < 0))
        {
            return Err(format!(
                "hop {}: Replies must be at most 32 non-negative RTTs",
                h.ttl
            ));
        }
        let mpls = match &h.mpls {
            None => None,
            Some(labels) => {
                if labels.len() > crate::trace::wire::mpls::MAX_LABELS
                    || labels.iter().any(|l| l.label > 0xf_ffff || l.tc > 7)
                {
                    return Err(format!(
                        "hop {}: MPLS must be at most {} entries of a 20-bit Label and a 3-bit TC",
                        h.ttl,
                        crate::trace::wire::mpls::MAX_LABELS
                    ));
                }
                Some(
                    labels
                        .iter()
                        .map(|l| crate::trace::wire::mpls::Label {
                            label: l.label,
                            tc: l.tc,
                            s: l.s,
                            ttl: l.ttl,
                        })
                        .collect(),
                )
            }
        };
        addrs.push((h.ttl, addr));
        hops.push(NewHop {
            ttl: h.ttl,
            address,
            host: h.host.clone(),
            rtt_ns: h.elapsed_time,
            size: h.n,
            kind: h.kind.clone(),
            replies: h.replies.clone(),
            reply_ttl: h.reply_ttl.map(i64::from),
            mpls,
        });
    }
    for text in [
        &r.protocol,
        &r.destination,
        &r.unreachable,
        &r.error,
        &r.agent,
        &r.target_id,
    ]
    .into_iter()
    .flatten()
    {
        if text.len() > 1024 {
            return Err("an extension field is longer than 1024 bytes".into());
        }
    }
    let source = match &r.source_address {
        None => None,
        Some(text) => match text.parse::<std::net::IpAddr>() {
            Ok(a) => Some(a.to_string()),
            Err(_) => {
                return Err(format!(
                    "SourceAddress '{}' is not an address",
                    truncate(text, 64)
                ));
            }
        },
    };
    let measurement = match &r.measurement {
        None => None,
        Some(m) => match uuid::Uuid::parse_str(m) {
            Ok(u) => Some(u.to_string()),
            Err(_) => {
                return Err(format!(
                    "Measurement '{}' is not a measurement ID",
                    truncate(m, 64)
                ));
            }
        },
    };
    let (target_uuid, target_known) = match (&measurement, &r.target_id) {
        // An on-demand result: a series of its own, apart from the scheduled ones.
        (Some(_), _) => (super::measure::ON_DEMAND.to_owned(), true),
        (None, Some(id)) => (id.clone(), config.has_target(id)),
        (None, None) => match config.target_uuid(&r.target.name, &r.target.address) {
            Some(id) => (id.to_owned(), true),
            None => (String::new(), false),
        },
    };
    let terminal = if r.success {
        Terminal::Reached
    } else if let Some(u) = &r.unreachable {
        Terminal::Unreachable(u.clone())
    } else if r.error.is_some() {
        Terminal::Error
    } else {
        Terminal::GaveUp
    };
    let path = NetPath::from_hops(addrs, terminal);
    let multipath = r
        .multipath
        .as_ref()
        .map(super::store::graph::Graph::from_wire)
        .transpose()?;
    let rtt_alert_ns = config
        .target(&target_uuid)
        .and_then(|t| t.rtt_alert_ms)
        .map(|ms| i64::from(ms) * 1_000_000);
    Ok(NewResult {
        result_id: r.id.clone(),
        slave: r.creds.name.clone(),
        target_uuid,
        target_name: r.target.name.clone(),
        target_address: r.target.address.clone(),
        target_known,
        target_selected: true,
        measured_at: when.timestamp_millis(),
        date_time: r.date_time.clone(),
        success: r.success,
        hop_count: r.hop_count,
        path,
        protocol: r.protocol.clone(),
        flow: r.flow.map(i64::from),
        destination: r.destination.clone(),
        unreachable: r.unreachable.clone(),
        error: r.error.clone(),
        agent: r.agent.clone(),
        duration_ns: r.duration_ns.filter(|d| *d >= 0),
        rtt_alert_ns,
        origin: super::store::Origin {
            source,
            seen_from: None,
            // The Go slave's made-up result has no Debug field; its fixed ID tells it.
            debug: r.debug || r.id == crate::proto::GO_DEBUG_RESULT_ID,
            measurement,
        },
        hops,
        multipath,
        as_hops: None,
    })
}

/// What the master adds to a checked result on its arrival: the address it came from and,
/// with an AS table, its AS path.
fn received(app: &App, req: &Request, new: &mut NewResult) {
    new.origin.seen_from = Some(req.remote.ip().to_canonical().to_string());
    // A known target the config does not give this slave: stored, and marked so.
    if new.target_known && new.origin.measurement.is_none() {
        new.target_selected =
            app.config
                .get()
                .selects(&new.target_uuid, &new.slave, &app.tags_of(&new.slave));
    }
    if app.owners.enabled() {
        new.as_hops = Some(super::owners::as_hops(&app.owners.get(), &new.path.hops));
    }
}

/// `POST /results/`: the original endpoint. A result that can never be accepted gets 200 with
/// `RetryPossible: false`, since an original Go slave resends on any other status at once.
fn legacy_result(app: &App, req: &Request) -> Reply {
    match accept_result(app, req) {
        Ok(new) => store_one(app, new, |fate| match fate {
            Ok(_) => Response::json(200, &ResultAnswer::stored()),
            Err(e) => legacy_rejected(e),
        }),
        Err(e) => Reply::Now(legacy_rejected(e)),
    }
}

/// The original endpoint's answer for a result it did not store.
fn legacy_rejected(e: Reject) -> Response {
    match e {
        Reject::Decode(e) => {
            log::warn!("result does not decode: {e}");
            Response::json(
                200,
                &ResultAnswer::rejected(format!("Couldn't decode request body into JSON: {e}")),
            )
        }
        Reject::Auth(fail) => {
            let answer = |error: &str| ResultAnswer {
                success: false,
                error: error.into(),
                retry_possible: true,
            };
            legacy_auth_failed(
                fail,
                Response::json(401, &answer("Unauthorized")),
                Response::json(429, &answer("Too many failed logins")),
            )
        }
        Reject::Invalid(e) => Response::json(
            200,
            &ResultAnswer::rejected(format!("Result validation failed: {e}")),
        ),
        Reject::Store(e) => {
            // Retry is possible; the delay keeps a Go slave's immediate resend loop slow.
            let mut r = Response::json(
                503,
                &ResultAnswer {
                    success: false,
                    error: format!("storage error: {e}"),
                    retry_possible: true,
                },
            );
            r.delay = Duration::from_secs(1);
            r
        }
    }
}

/// `POST /api/v1/results`: the same body, with plain HTTP status codes.
fn api_post_result(app: &App, req: &Request) -> Reply {
    let answer = |fate: Result<Stored, Reject>| match fate {
        Ok(stored) => Response::json(
            200,
            &serde_json::json!({ "stored": true, "duplicate": stored == Stored::Duplicate }),
        ),
        Err(Reject::Decode(e)) => Response::error(400, format!("body is not a result: {e}")),
        Err(Reject::Auth(fail)) => auth_failed(
            fail,
            Response::error(401, "wrong name or password"),
            Response::error(429, "too many failed logins"),
        ),
        Err(Reject::Invalid(e)) => Response::error(400, format!("result validation failed: {e}")),
        Err(Reject::Store(e)) => Response::error(503, format!("storage error: {e}")),
    };
    match accept_result(app, req) {
        Ok(new) => store_one(app, new, answer),
        Err(e) => Reply::Now(answer(Err(e))),
    }
}

/// Most results in one batch.
pub const MAX_BATCH: usize = 1000;

/// `POST /api/v1/results:batch`: many results of one slave, stored in one transaction; the
/// answer says per result whether it is stored, was stored before, or is refused for good.
fn api_post_batch(app: &App, req: &Request) -> Reply {
    let batch: BatchRequest = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => {
            bump(&app.counters.rejected_decode);
            return Reply::Now(Response::error(
                400,
                format!("body is not a batch of results: {e}"),
            ));
        }
    };
    if let Err(fail) = authenticate(
        app,
        req,
        &batch.creds.name,
        &batch.creds.password,
        "result batch",
    ) {
        return Reply::Now(auth_failed(
            fail,
            Response::error(401, "wrong name or password"),
            Response::error(429, "too many failed logins"),
        ));
    }
    let config = app.config.get();
    if batch.results.len() > MAX_BATCH {
        return Reply::Now(Response::error(
            413,
            format!("more than {MAX_BATCH} results in one batch"),
        ));
    }
    app.counters
        .results_received
        .fetch_add(batch.results.len() as u64, Ordering::Relaxed);
    let mut items: Vec<BatchItem> = Vec::with_capacity(batch.results.len());
    let mut valid = Vec::new();
    let mut slot_of_valid = Vec::new();
    for r in &batch.results {
        let checked = if r.creds != batch.creds {
            Err("the result's Creds differ from the batch's".to_owned())
        } else {
            check_result(r, &config)
        };
        match checked {
            Ok(mut new) => {
                received(app, req, &mut new);
                slot_of_valid.push(items.len());
                valid.push(new);
                items.push(BatchItem {
                    id: r.id.clone(),
                    status: ItemStatus::Retry,
                    error: String::new(),
                });
            }
            Err(e) => {
                bump(&app.counters.rejected_invalid);
                log::warn!(
                    "result {} from {} rejected: {e}",
                    truncate(&r.id, 64).escape_debug(),
                    batch.creds.name
                );
                items.push(BatchItem {
                    id: r.id.clone(),
                    status: ItemStatus::Rejected,
                    error: e,
                });
            }
        }
    }
    if batch.spool_depth.is_some() || batch.dropped_total.is_some() {
        app.store
            .slave_status(&batch.creds.name, batch.spool_depth, batch.dropped_total);
    }
    if let Some(dropped) = batch.dropped_total.filter(|d| *d > 0) {
        log::debug!(
            "slave {} reports {dropped} results dropped in all",
            batch.creds.name
        );
    }
    let count = valid.len();
    let debug: Vec<bool> = valid.iter().map(|r| r.origin.debug).collect();
    let shown = app.stream.wanted().then(|| valid.clone());
    let ticket = app.store.submit(valid);
    Pending::reply(ticket, move |app, outcome| {
        match outcome {
            Ok(stored) => {
                let now = now_ms();
                for (n, (slot, (s, events))) in slot_of_valid.into_iter().zip(stored).enumerate() {
                    if let Stored::New(key) = s {
                        match shown.as_ref().and_then(|v| v.get(n)) {
                            Some(r) => app.stream.result(r, key, now),
                            None => app.stream.skip(),
                        }
                    }
                    for e in &events {
                        if !app.measure.hand(e, debug[n]) {
                            app.alerts.send(e, debug[n], None);
                        }
                        app.stream.event(e);
                    }
                    items[slot].status = match s {
                        Stored::New(_) => {
                            bump(&app.counters.results_stored);
                            if debug[n] {
                                bump(&app.counters.results_debug);
                            }
                            ItemStatus::Stored
                        }
                        Stored::Duplicate => {
                            bump(&app.counters.results_duplicate);
                            ItemStatus::Duplicate
                        }
                    };
                }
            }
            Err(e) => {
                bump(&app.counters.store_errors);
                log::error!("cannot store a batch of {count} results: {e:#}");
                for slot in slot_of_valid {
                    items[slot].error = "storage error".into();
                }
            }
        }
        Response::json(200, &BatchAnswer { results: items })
    })
}

/// `GET /api/v1/results?slave=&target=&from=&to=&limit=&cursor=`: newest first; a full page
/// carries `next_cursor` for the next, older page.
fn api_results(app: &App, req: &Request) -> Response {
    let q = match super::api::result_query(app, &req.query, 1000, 100) {
        Ok(q) => q,
        Err(e) => return e.response(),
    };
    match app.store.results(&q) {
        Ok((results, next)) => {
            let mut results = serde_json::to_value(results).unwrap_or_default();
            if app.owners.enabled() {
                let db = app.owners.get();
                for r in results.as_array_mut().into_iter().flatten() {
                    super::owners::enrich(r, &db);
                }
            }
            Response::json(
                200,
                &serde_json::json!({
                    "results": results,
                    "next_cursor": next.map(|c| c.text()),
                }),
            )
        }
        Err(e) => {
            log::error!("results query failed: {e:#}");
            Response::error(500, "results query failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::config::{Config, parse_slaves, parse_targets};
    use crate::master::store::ResultQuery;
    use std::path::Path;

    const GO_RESULT: &str = r#"{"Creds":{"Name":"slave1","Password":"1234"},"ID":"3a1b7c55-eabe-4536-a9ed-ec6cbdaaedb0","DateTime":"2019-02-07T21:06:10.803086+01:00","Target":{"Name":"Google","Address":"www.google.at"},"Success":true,"HopCount":17,"Hops":[{"Success":true,"Address":[192,168,1,1],"Host":"modem.home.","N":52,"ElapsedTime":2040972,"TTL":1}]}"#;

    fn app() -> App {
        let slaves = parse_slaves(
            Path::new("s"),
            br#"{"Slaves":[{"Name":"slave1","Password":"1234"}]}"#,
        )
        .unwrap();
        let raw = br#"{"ReportURL":"","Targets":{"76d96640-d357-47b3-ba50-5248a7604bc9":{"Name":"Google","Address":"www.google.at"}},"Retries":1,"MaxHops":30,"TimeoutMs":500}"#;
        let targets = parse_targets(Path::new("t"), raw).unwrap();
        App::new(
            "test:8990".into(),
            Live::new(Config {
                slaves,
                targets,
                targets_raw: Arc::from(&raw[..]),
                verified: Arc::default(),
                selections: Arc::default(),
                derived: Arc::default(),
            }),
            Arc::new(crate::master::store::sqlite::Sqlite::open_temp(2).unwrap()),
        )
    }

    fn post(path: &str, body: &[u8]) -> Request {
        Request {
            method: "POST".into(),
            path: path.into(),
            query: String::new(),
            remote: "127.0.0.1:5000".parse().unwrap(),
            body: body.to_vec(),
            ..Request::default()
        }
    }

    fn answer(r: &Response) -> ResultAnswer {
        serde_json::from_slice(body(r)).unwrap()
    }

    fn body(r: &Response) -> &[u8] {
        r.body.as_bytes().expect("a whole body")
    }

    #[test]
    fn config_serves_the_raw_targets_file() {
        let app = app();
        let r = handle(
            &app,
            &post("/config/", br#"{"Name":"slave1","Password":"1234"}"#),
        );
        assert_eq!(r.status, 200);
        assert_eq!(body(&r), &app.config.get().targets_raw[..]);
        let r = handle(
            &app,
            &post("/config/", br#"{"Name":"slave1","Password":"nope"}"#),
        );
        assert_eq!((r.status, body(&r)), (401, &b"Unauthorized\n"[..]));
        assert_eq!(r.delay, FAILED_LOGIN_DELAY);
        let r = handle(&app, &post("/config/", b"{"));
        assert_eq!(
            (r.status, body(&r)),
            (400, &b"Can't unmarshal request body"[..])
        );
    }

    #[test]
    fn repeated_failures_get_429_without_a_password_check() {
        let app = app();
        let bad = post("/config/", br#"{"Name":"slave1","Password":"nope"}"#);
        for _ in 0..super::super::throttle::BY_PAIR.max_failures {
            assert_eq!(handle(&app, &bad).status, 401);
        }
        let r = handle(&app, &bad);
        assert_eq!(r.status, 429);
        assert_eq!(
            r.delay, FAILED_LOGIN_DELAY,
            "the original's endpoints keep its pace"
        );
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| *k == "Retry-After" && v.parse::<u64>().unwrap() > 0)
        );
        // Even the right password waits out the block of that name from that address; another
        // name from it is checked, not blocked (a 401 here: this config has no slave2).
        let good = post("/config/", br#"{"Name":"slave1","Password":"1234"}"#);
        assert_eq!(handle(&app, &good).status, 429);
        let other = post("/config/", br#"{"Name":"slave2","Password":"123"}"#);
        assert_eq!(handle(&app, &other).status, 401);
        let mut elsewhere = good.clone();
        elsewhere.remote = "127.0.0.2:1".parse().unwrap();
        assert_eq!(handle(&app, &elsewhere).status, 200);
        assert_eq!(app.counters.auth_throttled.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn go_result_is_stored_once_and_matched_to_its_target() {
        let app = app();
        for _ in 0..2 {
            let r = handle(&app, &post("/results/post", GO_RESULT.as_bytes()));
            assert_eq!(r.status, 200);
            assert_eq!(answer(&r), ResultAnswer::stored());
        }
        let got = app
            .store
            .results(&ResultQuery {
                limit: 5,
                ..Default::default()
            })
            .unwrap()
            .0;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].target_id, "76d96640-d357-47b3-ba50-5248a7604bc9");
        assert!(got[0].target_known);
        assert_eq!(got[0].hops[0].address, "192.168.1.1");
        assert_eq!(app.counters.results_duplicate.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn legacy_rejections_stop_a_go_slave_resending() {
        let app = app();
        let bad: [&[u8]; 5] = [
            b"",
            b"{not json",
            b"\xff\xfe",
            br#"{"Creds":{"Name":"slave1","Password":"1234"},"ID":5}"#,
            GO_RESULT
                .replace("\"HopCount\":17", "\"HopCount\":0")
                .as_bytes()
                .to_vec()
                .leak(),
        ];
        for body in bad {
            let r = handle(&app, &post("/results/", body));
            assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(body));
            let a = answer(&r);
            assert!(!a.success && !a.retry_possible, "{a:?}");
        }
        assert_eq!(app.store.count_results().unwrap(), 0);
        let r = handle(
            &app,
            &post("/results/", GO_RESULT.replace("1234", "x").as_bytes()),
        );
        assert_eq!(r.status, 401);
        assert_eq!(app.store.count_results().unwrap(), 0);
    }

    #[test]
    fn new_endpoint_answers_400_for_bad_bodies() {
        let app = app();
        for body in [&b""[..], b"[]", b"\xff", br#"{"Creds":1}"#] {
            assert_eq!(handle(&app, &post("/api/v1/results", body)).status, 400);
        }
        let r = handle(&app, &post("/api/v1/results", GO_RESULT.as_bytes()));
        assert_eq!(r.status, 200);
        assert_eq!(app.store.count_results().unwrap(), 1);
    }

    #[test]
    fn a_nul_character_in_any_text_is_refused_for_good() {
        let app = app();
        let good: TraceResult = serde_json::from_str(GO_RESULT).unwrap();
        let mut bad = good.clone();
        bad.target.name = "Goo\0gle".into();
        let e = check_result(&bad, &app.config.get()).unwrap_err();
        assert!(e.contains("Target.Name contains a NUL"), "{e}");
        let mut bad = good.clone();
        bad.hops[0].host = "a\0b".into();
        let e = check_result(&bad, &app.config.get()).unwrap_err();
        assert!(e.contains("hop Host contains a NUL"), "{e}");
        assert!(check_result(&good, &app.config.get()).is_ok());
    }

    #[test]
    fn batch_stores_each_result_once_and_says_which() {
        let app = app();
        let good: TraceResult = serde_json::from_str(GO_RESULT).unwrap();
        let mut bad = good.clone();
        bad.id = "not-a-uuid".into();
        let mut other = good.clone();
        other.id = "5b0f0d3e-1c1a-4a43-9d6e-0e8e3bb0f3a1".into();
        let batch = BatchRequest {
            creds: good.creds.clone(),
            results: vec![good.clone(), bad, other, good.clone()],
            spool_depth: Some(7),
            dropped_total: Some(3),
        };
        let r = handle(
            &app,
            &post(
                "/api/v1/results:batch",
                &serde_json::to_vec(&batch).unwrap(),
            ),
        );
        assert_eq!(r.status, 200);
        let a: BatchAnswer = serde_json::from_slice(body(&r)).unwrap();
        let statuses: Vec<ItemStatus> = a.results.iter().map(|i| i.status).collect();
        assert_eq!(
            statuses,
            vec![
                ItemStatus::Stored,
                ItemStatus::Rejected,
                ItemStatus::Stored,
                ItemStatus::Duplicate
            ]
        );
        assert!(a.results[1].error.contains("not a UUID"));
        assert_eq!(app.store.count_results().unwrap(), 2);
        let mut wrong = batch.clone();
        wrong.creds.password = "x".into();
        let r = handle(
            &app,
            &post(
                "/api/v1/results:batch",
                &serde_json::to_vec(&wrong).unwrap(),
            ),
        );
        assert_eq!(r.status, 401);
        assert_eq!(
            handle(&app, &post("/api/v1/results:batch", b"{}")).status,
            400
        );
    }

    #[test]
    fn unknown_target_is_stored_and_marked() {
        let app = app();
        let body = GO_RESULT.replace("\"Google\"", "\"Gone\"");
        assert_eq!(
            answer(&handle(&app, &post("/results/", body.as_bytes()))),
            ResultAnswer::stored()
        );
        let got = app
            .store
            .results(&ResultQuery {
                limit: 5,
                ..Default::default()
            })
            .unwrap()
            .0;
        assert!(!got[0].target_known);
        assert_eq!(got[0].target_name, "Gone");
    }

    #[test]
    fn paths_without_slash_redirect_and_unknown_paths_are_404() {
        let app = app();
        let r = handle(&app, &post("/results", b""));
        assert_eq!(r.status, 301);
        assert_eq!(r.headers, vec![("Location", "/results/".to_string())]);
        assert_eq!(handle(&app, &post("/nope", b"")).status, 404);
        let mut get = post("/config/", b"");
        get.method = "GET".into();
        assert_eq!(handle(&app, &get).status, 405);
    }

    #[test]
    fn results_query_checks_its_parameters() {
        let app = app();
        let mut get = post("/api/v1/results", b"");
        get.method = "GET".into();
        get.query = "limit=0".into();
        assert_eq!(handle(&app, &get).status, 400);
        get.query = "bogus=1".into();
        assert_eq!(handle(&app, &get).status, 400);
        get.query = "cursor=nonsense".into();
        assert_eq!(handle(&app, &get).status, 400);
        get.query = "slave=slave1&limit=3".into();
        let r = handle(&app, &get);
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(body(&r)).unwrap();
        assert_eq!(v["results"], serde_json::json!([]));
    }

    // ---- who may read ------------------------------------------------------------------

    /// A token of `alice` in `users_text`.
    const TOKEN: &str = "k7Vb0Qe1-test-token-of-alice_9fZ";

    fn users_text() -> String {
        format!(
            r#"{{"Users":[{{"Name":"alice","Password":"wonder land","Role":"viewer","Tokens":["{}"]}},{{"Name":"ops.1","Password":"x","Role":"operator"}}]}}"#,
            crate::master::config::token_digest(TOKEN)
        )
    }

    /// The test app with a users file.
    fn app_with_users() -> App {
        use crate::master::config::{LiveUsers, Users, parse_users};
        let users = parse_users(Path::new("u.json"), users_text().as_bytes()).unwrap();
        let mut app = app();
        app.read = access::ReadAccess::new(
            LiveUsers::new("u.json".into(), Some(Users::new(users))),
            false,
        );
        app
    }

    fn read(path: &str, from: &str, auth: Option<String>) -> Request {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Request {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            authorization: auth.map(AuthHeader),
            remote: from.parse().unwrap(),
            ..Request::default()
        }
    }

    fn basic(name: &str, password: &str) -> Option<String> {
        use base64::Engine;
        let pair = format!("{name}:{password}");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
    }

    fn bearer(token: &str) -> Option<String> {
        Some(format!("Bearer {token}"))
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    const READS: [&str; 11] = [
        "/api/v1/slaves",
        "/api/v1/targets",
        "/api/v1/results",
        "/api/v1/paths/current",
        "/api/v1/paths/history",
        "/api/v1/events",
        "/api/v1/export/results.jsonl",
        "/api/v1/export/results.csv",
        "/api/v1/export/atlas.json",
        "/api/v1/export/graph.dot?target=Google",
        "/metrics",
    ];

    const AWAY: &str = "192.0.2.7:40000";

    #[test]
    fn without_a_users_file_loopback_reads_and_others_get_403() {
        let app = app();
        for from in [
            "127.0.0.1:1",
            "127.3.2.1:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            for path in ["/api/v1/results", "/api/v1/slaves", "/metrics"] {
                assert_eq!(handle(&app, &read(path, from, None)).status, 200, "{from}");
            }
        }
        for from in [AWAY, "[::ffff:192.0.2.7]:1", "[2001:db8::7]:1"] {
            for path in READS {
                let r = handle(&app, &read(path, from, None));
                assert_eq!(r.status, 403, "{path} from {from}");
                assert_eq!(r.delay, Duration::ZERO);
                let v: serde_json::Value = serde_json::from_slice(body(&r)).unwrap();
                let m = v["error"].as_str().unwrap();
                assert!(
                    m.contains("./dt-users.json") && m.contains("dist-traceroute hash-password"),
                    "{m}"
                );
            }
            // A login does not help where there are no users.
            let r = handle(&app, &read("/metrics", from, basic("alice", "wonder land")));
            assert_eq!(r.status, 403);
        }
        let mut head = read("/metrics", AWAY, None);
        head.method = "HEAD".into();
        assert_eq!(handle(&app, &head).status, 403);
        // The dashboard is a read too; the health check and the login form are not.
        let page = handle(&app, &read("/", AWAY, None));
        assert_eq!(page.status, 403);
        assert!(String::from_utf8_lossy(body(&page)).contains("dist-traceroute hash-password"));
        assert_eq!(handle(&app, &read("/healthz", AWAY, None)).status, 200);
        assert_eq!(handle(&app, &read("/login", AWAY, None)).status, 200);
    }

    #[test]
    fn with_a_users_file_no_login_gets_401_with_a_challenge() {
        let app = app_with_users();
        for from in [AWAY, "127.0.0.1:1"] {
            for path in READS {
                let r = handle(&app, &read(path, from, None));
                assert_eq!(r.status, 401, "{path} from {from}");
                assert_eq!(
                    header(&r, "WWW-Authenticate"),
                    Some("Basic realm=\"dist-traceroute\"")
                );
                assert_eq!(r.delay, Duration::ZERO, "no login is not a failed one");
                let v: serde_json::Value = serde_json::from_slice(body(&r)).unwrap();
                assert!(v["error"].as_str().unwrap().contains("login"), "{v}");
            }
        }
        for malformed in ["Basic !!!", "Digest x", "Bearer"] {
            let r = handle(&app, &read("/metrics", AWAY, Some(malformed.into())));
            assert_eq!((r.status, r.delay), (401, Duration::ZERO), "{malformed}");
        }
        assert_eq!(app.counters.auth_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn with_a_users_file_basic_and_bearer_logins_read() {
        let app = app_with_users();
        // The graph needs a stored path.
        assert_eq!(
            handle(&app, &post("/results/", GO_RESULT.as_bytes())).status,
            200
        );
        for path in READS {
            for auth in [
                basic("alice", "wonder land"),
                basic("ops.1", "x"),
                bearer(TOKEN),
            ] {
                let r = handle(&app, &read(path, AWAY, auth));
                assert_eq!(r.status, 200, "{path}");
            }
        }
        let mut head = read("/metrics", AWAY, bearer(TOKEN));
        head.method = "HEAD".into();
        assert_ne!(handle(&app, &head).status, 401);
    }

    #[test]
    fn a_wrong_login_gets_401_after_the_delay_then_429() {
        let app = app_with_users();
        for auth in [
            basic("alice", "wonder"),
            basic("nobody", "wonder land"),
            bearer("not-a-token"),
        ] {
            let r = handle(&app, &read("/api/v1/slaves", AWAY, auth));
            assert_eq!(r.status, 401);
            assert_eq!(r.delay, FAILED_LOGIN_DELAY);
            assert!(header(&r, "WWW-Authenticate").is_some());
        }
        assert_eq!(app.counters.auth_failures.load(Ordering::Relaxed), 3);
        // Three names among five failures: the address is a sprayer, blocked for every name
        // it never logged in as; a 429 on a read comes at once.
        let wrong = read("/metrics", AWAY, basic("alice", "nope"));
        for _ in 3..super::super::throttle::SPRAY_FAILURES {
            assert_eq!(handle(&app, &wrong).status, 401);
        }
        let r = handle(&app, &wrong);
        assert_eq!((r.status, r.delay), (429, Duration::ZERO));
        assert!(header(&r, "Retry-After").is_some());
        // The address waits out its block, even with the right password or token...
        let right = read("/metrics", AWAY, basic("alice", "wonder land"));
        assert_eq!(handle(&app, &right).status, 429);
        assert_eq!(
            handle(&app, &read("/metrics", AWAY, bearer(TOKEN))).status,
            429
        );
        // ...and other addresses read on.
        let mut elsewhere = right.clone();
        elsewhere.remote = "198.51.100.1:1".parse().unwrap();
        assert_eq!(handle(&app, &elsewhere).status, 200);
    }

    #[test]
    fn public_read_serves_anyone_without_a_login() {
        for mut app in [app(), app_with_users()] {
            app.read.public = true;
            for path in ["/api/v1/results", "/api/v1/slaves", "/metrics"] {
                assert_eq!(handle(&app, &read(path, AWAY, None)).status, 200, "{path}");
            }
        }
    }

    #[test]
    fn slave_endpoints_keep_their_own_credentials() {
        let app = app_with_users();
        let from = |mut r: Request| {
            r.remote = AWAY.parse().unwrap();
            r
        };
        let config = from(post("/config/", br#"{"Name":"slave1","Password":"1234"}"#));
        assert_eq!(handle(&app, &config).status, 200);
        assert_eq!(
            handle(&app, &from(post("/results/", GO_RESULT.as_bytes()))).status,
            200
        );
        let api = GO_RESULT.replace("3a1b7c55", "e9bbc544");
        assert_eq!(
            handle(&app, &from(post("/api/v1/results", api.as_bytes()))).status,
            200
        );
        let batch = format!(
            r#"{{"Creds":{{"Name":"slave1","Password":"1234"}},"Results":[{}]}}"#,
            GO_RESULT.replace("3a1b7c55", "f9bbc544")
        );
        assert_eq!(
            handle(&app, &from(post("/api/v1/results:batch", batch.as_bytes()))).status,
            200
        );
        assert_eq!(app.store.count_results().unwrap(), 3);
        // A slave is no user: its pair does not read.
        let r = handle(&app, &read("/metrics", AWAY, basic("slave1", "1234")));
        assert_eq!(r.status, 401);
    }
}
