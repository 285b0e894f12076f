//! Results to store, for the store tests of either engine.
#![allow(dead_code)]

use dist_traceroute::master::path::{Path as NetPath, Terminal};
use dist_traceroute::master::store::{NewHop, NewResult};

/// Test times count from here (2025-11-24).
pub const T0: i64 = 1_764_000_000_000;

pub fn hop(ttl: i64, address: &str, rtt_ns: i64) -> NewHop {
    NewHop {
        ttl,
        address: address.into(),
        host: String::new(),
        rtt_ns,
        size: 56,
        kind: None,
        replies: None,
        reply_ttl: None,
        mpls: None,
    }
}

/// Result `id` of slave1 to Google at T0 + `at` ms over 10.0.0.1 and 10.0.0.3.
pub fn result(id: u32, at: i64) -> NewResult {
    let at = T0 + at;
    let mut first = hop(1, "10.0.0.1", 1000);
    first.replies = Some(vec![Some(1000), None]);
    let mut last = hop(3, "10.0.0.3", 3_000_123);
    last.host = "c.example.".into();
    last.kind = Some("reached".into());
    last.reply_ttl = Some(61);
    NewResult {
        result_id: format!("00000000-0000-4000-8000-{id:012}"),
        slave: "slave1".into(),
        target_uuid: "76d96640-d357-47b3-ba50-5248a7604bc9".into(),
        target_name: "Google".into(),
        target_address: "www.google.at".into(),
        target_known: true,
        target_selected: true,
        measured_at: at,
        date_time: chrono::DateTime::from_timestamp_millis(at)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        success: true,
        hop_count: 3,
        path: NetPath::from_hops(
            [
                (1, "10.0.0.1".parse().unwrap()),
                (3, "10.0.0.3".parse().unwrap()),
            ],
            Terminal::Reached,
        ),
        protocol: Some("udp".into()),
        flow: Some(0),
        destination: None,
        unreachable: None,
        error: None,
        agent: None,
        duration_ns: Some(2_000_000),
        rtt_alert_ns: None,
        origin: Default::default(),
        hops: vec![first, last],
        multipath: None,
        as_hops: None,
    }
}

/// The same result over another second hop.
pub fn via(mut r: NewResult, second: &str) -> NewResult {
    r.hops[0].address = second.into();
    r.path = NetPath::from_hops(
        [
            (1, second.parse().unwrap()),
            (3, "10.0.0.3".parse().unwrap()),
        ],
        Terminal::Reached,
    );
    r
}
