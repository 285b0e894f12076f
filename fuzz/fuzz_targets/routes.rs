//! Fuzzes the route handlers with untrusted bodies: whatever the bytes, each endpoint that
//! takes a body answers with a status (never a panic), and a non-2xx answer stores nothing.
//!
//! Run (needs cargo-fuzz): `cd fuzz && cargo fuzz run routes`.

#![no_main]

use dist_traceroute::master::config::{parse_slaves, parse_targets, Config, Live};
use dist_traceroute::master::routes::{handle, App, Counters, Request};
use dist_traceroute::master::store::sqlite::Sqlite;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let raw = br#"{"ReportURL":"","Targets":{"76d96640-d357-47b3-ba50-5248a7604bc9":{"Name":"Google","Address":"www.google.at"}},"Retries":1,"MaxHops":30,"TimeoutMs":500}"#;
        App {
            config: Live::new(Config {
                slaves: parse_slaves(Path::new("s"), br#"{"Slaves":[{"Name":"slave1","Password":"1234"}]}"#).unwrap(),
                targets: parse_targets(Path::new("t"), raw).unwrap(),
                targets_raw: Arc::from(&raw[..]),
                verified: Arc::default(),
            }),
            store: Arc::new(Sqlite::open_temp(2).unwrap()),
            counters: Counters::default(),
            throttle: Default::default(),
            alerts: Default::default(),
            metrics: Default::default(),
            read: Default::default(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let path = match selector % 4 {
        0 => "/results/",
        1 => "/config/",
        2 => "/api/v1/results",
        _ => "/api/v1/results:batch",
    };
    let app = app();
    let before = app.store.count_results().unwrap();
    let r = handle(
        app,
        &Request {
            method: "POST".into(),
            path: path.into(),
            query: String::new(),
            user_agent: None,
            authorization: None,
            // A fresh address per input keeps the login throttle out of the way.
            remote: std::net::SocketAddr::from(([10, selector, body.len() as u8, 1], 1)),
            body: body.to_vec(),
        },
    );
    assert!((200..600).contains(&r.status));
    if r.status >= 300 {
        assert_eq!(app.store.count_results().unwrap(), before, "{path} {} stored something", r.status);
    }
});
