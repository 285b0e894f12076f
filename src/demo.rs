//! `dist-traceroute demo`: a master on the built-in example config and a local slave, in one
//! process, for a first look.

use anyhow::Context;
use dist_traceroute::cli::DemoArgs;
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
    dist_traceroute::logging::init(&a.dir.join("dt-demo.log"), log::LevelFilter::Info)?;
    let master = Master::start(&Settings {
        slaves_file: slaves_file.clone(),
        targets_file: targets_file.clone(),
        db: a.dir.join("dt-results.db"),
        listen: a.listen,
        reload_interval: Duration::from_secs(2),
        limits: Limits::default(),
        tls: None,
        confirm: 2,
        alert_webhook: None,
        retention: Some(Duration::from_secs(7 * 86_400)),
        retention_paths: None,
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
    println!(
        "dist-traceroute demo\n\
         master:  http://{addr}/  (config in {dir}: dt-slaves.json, dt-targets.json; edits apply live)\n\
         slave:   slave1, tracing every {every} with {kind} results\n\
         results: curl 'http://{addr}/api/v1/results?limit=5'\n\
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
