//! The master: loads the config files, keeps them live, stores results, serves slaves and
//! answers reads (for users with a login, or on loopback).

pub mod access;
pub mod alert;
pub mod analysis;
pub mod api;
pub mod config;
pub mod enrol;
pub mod export;
pub mod measure;
pub mod metrics;
pub mod owners;
pub mod path;
pub mod routes;
pub mod server;
pub mod session;
pub mod store;
pub mod stream;
pub mod throttle;
pub mod tls;
pub mod ui;

use crate::cli::MasterArgs;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a master needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `dt-slaves.json`.
    pub slaves_file: PathBuf,
    /// The managed file of enrolled slaves.
    pub managed_file: PathBuf,
    /// `dt-targets.json`.
    pub targets_file: PathBuf,
    /// `dt-users.json`: who may read (a missing file means loopback reads only).
    pub users_file: PathBuf,
    /// Serve reads to anyone, without a login.
    pub public_read: bool,
    /// The SQLite file, or a `postgres://` URL.
    pub db: PathBuf,
    /// The PostgreSQL password's file.
    pub db_passwd_file: Option<PathBuf>,
    /// Listen address.
    pub listen: SocketAddr,
    /// How often the config files are checked for edits.
    pub reload_interval: Duration,
    /// Connection and request limits.
    pub limits: server::Limits,
    /// Certificate and key files for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Results in a row that confirm a change.
    pub confirm: u32,
    /// Where alerts are POSTed.
    pub alert_webhook: Option<String>,
    /// Alert on made-up results (`-zDebugResults`) too.
    pub alert_debug_results: bool,
    /// The event kinds that alert (`None`: all).
    pub alert_kinds: Option<Vec<&'static str>>,
    /// The limits on on-demand measurements.
    pub measure: measure::Policy,
    /// Age after which results are deleted.
    pub retention: Option<Duration>,
    /// Age after which events and unused paths are deleted.
    pub retention_paths: Option<Duration>,
    /// The IP-to-AS table that names each hop's owner in the API.
    pub asn_db: Option<PathBuf>,
}

impl From<&MasterArgs> for Settings {
    fn from(a: &MasterArgs) -> Self {
        Settings {
            slaves_file: a.files.config.clone(),
            managed_file: a
                .files
                .managed
                .clone()
                .unwrap_or_else(|| enrol::managed_path(&a.files.config)),
            targets_file: a.files.targets.clone(),
            users_file: a.files.users.clone(),
            public_read: a.public_read,
            db: a.db.clone(),
            db_passwd_file: a.db_passwd_file.clone(),
            listen: a.listen,
            reload_interval: a.reload_interval,
            limits: server::Limits {
                header_timeout: a.header_timeout,
                body_timeout: a.body_timeout,
                max_body: usize::try_from(a.max_body).unwrap_or(usize::MAX),
                max_header_bytes: usize::try_from(a.max_header_bytes).unwrap_or(16 * 1024),
                max_connections: usize::try_from(a.max_connections).unwrap_or(usize::MAX),
                max_connections_per_address: usize::try_from(a.max_connections_per_address)
                    .unwrap_or(usize::MAX),
                max_body_memory: usize::try_from(a.max_body_memory).unwrap_or(usize::MAX),
                min_body_rate: usize::try_from(a.min_body_rate).unwrap_or(usize::MAX),
                workers: usize::try_from(a.workers).unwrap_or(8),
                trusted_proxies: a.trusted_proxy.clone(),
            },
            tls: a.tls_cert.clone().zip(a.tls_key.clone()),
            confirm: a.path_confirm,
            alert_webhook: a.alert_webhook.clone(),
            alert_debug_results: a.alert_debug_results,
            alert_kinds: a.alert_kinds.0.clone(),
            measure: measure::Policy {
                allow: a.measure_allow.0.clone(),
                per_user_per_minute: a.measure_rate,
                fleet_per_minute: a.measure_fleet_rate,
                max_probes: a.measure_max_probes,
                follow_up: a.measure_follow_up,
            },
            retention: a.retention.0,
            retention_paths: a.retention_paths.0,
            asn_db: a.asn_db.clone(),
        }
    }
}

/// A master that has loaded its config and bound its socket, ready to serve.
pub struct Master {
    app: Arc<routes::App>,
    listener: std::net::TcpListener,
    limits: server::Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Master {
    /// Loads and checks the config, opens the database, binds the socket and starts watching
    /// the config files. Every problem here is a startup error.
    pub fn start(s: &Settings) -> anyhow::Result<Master> {
        let config = config::load(&s.slaves_file, &s.targets_file)?;
        log::info!(
            "config: {} slaves from {}, {} targets from {}",
            config.slaves.slaves.len(),
            s.slaves_file.display(),
            config.targets.targets.len(),
            s.targets_file.display()
        );
        let users = config::load_users(&s.users_file)?;
        log_read_access(s, users.as_ref());
        let store = store::open(&s.db, s.db_passwd_file.as_deref(), s.confirm)?;
        store::spawn_retention(store.clone(), s.retention, s.retention_paths)?;
        let mut alerts = match &s.alert_webhook {
            Some(url) => alert::Alerts::with_webhook(url.clone())?,
            None => alert::Alerts::log_only(),
        };
        alerts.debug_too = s.alert_debug_results;
        alerts.kinds = s.alert_kinds.clone();
        let live = config::Live::new(config);
        let reloads = config::Reloads::new(
            vec![s.slaves_file.clone(), s.targets_file.clone()],
            s.users_file.clone(),
        );
        config::watch(
            live.clone(),
            s.slaves_file.clone(),
            s.targets_file.clone(),
            s.reload_interval,
            reloads.clone(),
        )?;
        let users = config::LiveUsers::new(s.users_file.clone(), users);
        config::watch_users(users.clone(), s.reload_interval, reloads.clone())?;
        // One key for every master on this database, so any of them takes a session cookie.
        let session_key = store
            .secret("session-key", &session::fresh_key())
            .context("cannot read or create the session key in the database")?;
        let tls = match &s.tls {
            Some((cert, key)) => Some(tls::server_config(
                cert.clone(),
                key.clone(),
                s.reload_interval,
            )?),
            None => None,
        };
        let owners = Arc::new(match &s.asn_db {
            Some(file) => owners::Owners::open(file).context("-asn-db")?,
            None => owners::Owners::default(),
        });
        let enrolled = enrol::Live::open(&s.managed_file)?;
        // A name in both files: the operator's file wins, and says so.
        let config_now = live.get();
        for e in &enrolled.get().slaves {
            if config_now.slaves.slaves.iter().any(|s| s.name == e.name) {
                log::warn!(
                    "slave '{}' is in {} and in {}: the entry of {} is used",
                    e.name.0,
                    s.slaves_file.display(),
                    enrolled.file().display(),
                    s.slaves_file.display()
                );
            }
        }
        let listener = server::bind(s.listen)?;
        let name = master_name(listener.local_addr()?.port());
        publish_config(store.clone(), live.clone(), name.clone(), s.reload_interval)?;
        let app = Arc::new(routes::App {
            alerts,
            read: access::ReadAccess::new(users, s.public_read),
            sessions: session::Sessions::new(session_key),
            https: tls.is_some(),
            reloads,
            measure: Arc::new(measure::Board::new(s.measure.clone())),
            owners: owners.clone(),
            enrolled: Arc::new(enrolled),
            ..routes::App::new(name, live, store)
        });
        if owners.enabled() {
            std::thread::Builder::new()
                .name("asn-watch".into())
                .spawn({
                    let (owners, every) = (Arc::downgrade(&owners), s.reload_interval);
                    move || owners::Owners::watch(owners, every)
                })
                .context("cannot start the AS table watcher")?;
        }
        std::thread::Builder::new()
            .name("measure-watch".into())
            .spawn({
                let app = Arc::downgrade(&app);
                move || measure::watch(app)
            })
            .context("cannot start the measurement watcher")?;
        std::thread::Builder::new()
            .name("follow-ups".into())
            .spawn({
                let app = Arc::downgrade(&app);
                move || measure::follow_ups(app)
            })
            .context("cannot start the follow-up thread")?;
        Ok(Master {
            app,
            listener,
            limits: s.limits.clone(),
            tls,
        })
    }

    /// The address actually bound (port 0 becomes the real port).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("cannot read the bound address")
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until the process ends.
    pub fn serve(self) -> anyhow::Result<()> {
        server::serve(
            self.listener,
            self.app,
            self.limits,
            self.tls,
            server::Until::Forever,
        )
    }

    /// Serves until SIGTERM or SIGINT, then stops accepting, lets the requests in flight
    /// finish within `grace`, and waits until the store has written everything it was given.
    pub fn serve_until_signal(self, grace: Duration) -> anyhow::Result<()> {
        let store = self.app.store.clone();
        server::serve(
            self.listener,
            self.app,
            self.limits,
            self.tls,
            server::Until::Signal(grace),
        )?;
        store
            .flush()
            .context("the database did not take the last results")?;
        log::info!("stopped: every result taken in is stored");
        Ok(())
    }
}

/// This master's name among masters sharing a database: its host name and port.
fn master_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{port}")
}

/// Tells the store which config files this master serves: at start, after each reload, and
/// every minute (so the others see it is alive).
fn publish_config(
    store: Arc<dyn store::Store>,
    live: config::Live,
    name: String,
    every: std::time::Duration,
) -> anyhow::Result<()> {
    let publish = move |digests: &serde_json::Value| {
        if let Err(e) = store.publish_config(&name, digests) {
            log::warn!("cannot record this master's config in the database: {e:#}");
        }
    };
    let mut last = live.get().digests();
    publish(&last);
    std::thread::Builder::new()
        .name("config-publish".into())
        .spawn(move || {
            let mut published = std::time::Instant::now();
            loop {
                std::thread::sleep(every.max(std::time::Duration::from_millis(100)));
                let now = live.get().digests();
                if now != last || published.elapsed() >= std::time::Duration::from_secs(60) {
                    publish(&now);
                    published = std::time::Instant::now();
                    last = now;
                }
            }
        })?;
    Ok(())
}

/// Says at start who may read.
fn log_read_access(s: &Settings, users: Option<&config::Users>) {
    let file = s.users_file.display();
    if s.public_read {
        log::warn!(
            "-public-read: every client that reaches this master reads its API, exports and \
             metrics without a login, the slaves' names and addresses included{}",
            if users.is_some() {
                format!(" (the users in {file} are not asked for one)")
            } else {
                String::new()
            }
        );
        return;
    }
    match users {
        Some(u) => log::info!(
            "users: {} from {file}; reads need a login (HTTP Basic or a bearer token)",
            u.file.users.len()
        ),
        None => log::info!(
            "no users file {file}: reads answer clients on loopback only (add users there to \
             read from elsewhere)"
        ),
    }
}

/// `dist-traceroute master`.
pub fn run(args: &MasterArgs) -> anyhow::Result<()> {
    crate::logging::init(&args.log, args.loglevel.filter())?;
    let master = Master::start(&Settings::from(args))?;
    let addr = master.local_addr()?;
    log::info!(
        "dist-traceroute master {} listening on {addr}",
        env!("CARGO_PKG_VERSION")
    );
    println!("listening on http://{addr}");
    master.serve_until_signal(SHUTDOWN_GRACE)
}

/// How long the requests in flight at SIGTERM may take to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
