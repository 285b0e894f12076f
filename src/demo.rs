//! `dist-traceroute demo`: a master on the built-in example config and a local slave, in one
//! process, for a first look; reads need the login of a user `demo` whose password is made on
//! the first run and printed on every run.

use anyhow::Context;
use dist_traceroute::cli::DemoArgs;
use dist_traceroute::master::config::{self, Secret};
use dist_traceroute::master::{Master, Settings, server::Limits};
use dist_traceroute::proto::Creds;
use dist_traceroute::slave;
use std::time::Duration;

const SLAVES: &str = include_str!("../config/dt-slaves.json");
const TARGETS: &str = include_str!("../config/dt-targets.json");

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let slaves_file = a.dir.join("dt-slaves.json");
    let targets_file = a.dir.join("dt-targets.json");
    for (file, text) in [(&slaves_file, SLAVES), (&targets_file, TARGETS)] {
        if !file.exists() {
            std::fs::write(file, text)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
    }
    let users_file = a.dir.join("dt-users.json");
    if !users_file.exists() {
        std::fs::write(&users_file, demo_users(&random_password()?))
            .with_context(|| format!("cannot write {}", users_file.display()))?;
    }
    dist_traceroute::logging::init(&a.dir.join("dt-demo.log"), log::LevelFilter::Info)?;
    let master = Master::start(&Settings {
        managed_file: dist_traceroute::master::enrol::managed_path(&slaves_file),
        slaves_file: slaves_file.clone(),
        targets_file: targets_file.clone(),
        users_file: users_file.clone(),
        public_read: false,
        db: a.dir.join("dt-results.db"),
        db_passwd_file: None,
        listen: a.listen,
        reload_interval: Duration::from_secs(2),
        limits: Limits::default(),
        tls: None,
        confirm: 2,
        alert_webhook: None,
        alert_debug_results: false,
        alert_kinds: None,
        measure: Default::default(),
        retention: Some(Duration::from_secs(7 * 86_400)),
        retention_paths: None,
        asn_db: None,
    })?;
    let addr = master.local_addr()?;
    std::thread::Builder::new()
        .name("master".into())
        .spawn(move || {
            if let Err(e) = master.serve() {
                log::error!("master stopped: {e:#}");
            }
        })?;
    let fake = a.z_debug_results || dist_traceroute::trace::Tracer::new().is_err();
    let (login, curl_user) = match demo_password(&users_file) {
        Some(p) => (
            format!(
                "demo / {p}  (user demo in {}; every read needs a login)",
                users_file.display()
            ),
            format!("demo:{p}"),
        ),
        None => (
            format!(
                "a user of {} (it has no user demo with a Password)",
                users_file.display()
            ),
            "NAME:PASSWORD".to_owned(),
        ),
    };
    println!(
        "dist-traceroute demo\n\
         master:  http://{addr}/  (config in {dir}: dt-slaves.json, dt-targets.json, dt-users.json; edits apply live)\n\
         slave:   slave1, tracing every {every} with {kind} results\n\
         login:   {login}\n\
         results: curl -u {curl_user} 'http://{addr}/api/v1/results?limit=5'\n\
         log:     {log}\n\
         Stop with Ctrl-C.",
        dir = a.dir.display(),
        every = humantime::format_duration(a.interval),
        kind = if fake {
            "FAKE (not root: -zDebugResults)"
        } else {
            "real"
        },
        log = a.dir.join("dt-demo.log").display(),
    );
    let mut settings = slave::Settings::new(
        format!("http://{addr}"),
        Creds {
            name: "slave1".into(),
            password: "1234".into(),
        },
        a.dir.join("dt-slave.spool"),
    );
    settings.fake = fake;
    settings.interval = a.interval;
    settings.concurrency = 4;
    slave::run_with(settings)
}

/// The demo's users file: one viewer, `demo`, with a plain password so that every run can
/// print it (real users get a `PasswordHash` from `dist-traceroute hash-password`).
fn demo_users(password: &str) -> String {
    format!(
        "{{\n\t\"Users\":\n\t[\n\t\t{{\n\t\t\t\"Name\": \"demo\",\n\t\t\t\"Password\": \"{password}\",\n\t\t\t\"Role\": \"viewer\"\n\t\t}}\n\t]\n}}\n"
    )
}

/// The password of user `demo` in the demo's users file, if it has one in plain text.
fn demo_password(file: &std::path::Path) -> Option<String> {
    let text = std::fs::read(file).ok()?;
    let users = config::parse_users(file, &text).ok()?;
    users.users.into_iter().find_map(|u| match u.secret {
        Secret::Plain(p) if u.name.0 == "demo" => Some(p),
        _ => None,
    })
}

/// 20 letters and digits from the operating system's random source.
fn random_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    while out.len() < 20 {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
        // Bytes below 248 (4 × 62) map evenly onto the alphabet; the rest are dropped.
        out.extend(
            bytes
                .iter()
                .filter(|b| **b < 248)
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])),
        );
    }
    out.truncate(20);
    Ok(out)
}
