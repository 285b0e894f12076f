//! One store test suite, run against both engines: every test below runs once on a fresh
//! SQLite file and once on a fresh database of a throwaway PostgreSQL server (started by
//! the harness; a machine without PostgreSQL fails these tests, it does not skip them).

mod util;

use util::stored::{T0, result, via};

use dist_traceroute::master::path::{Path as NetPath, Terminal};
use dist_traceroute::master::store::{
    EventQuery, MeasurementRecord, NewResult, ResultQuery, RunRecord, SeriesFilter, Store, Stored,
    codec, postgres::Postgres, sqlite::Sqlite,
};
use dist_traceroute::proto::JobSpec;
use std::sync::Arc;

#[derive(Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh, empty store of `engine`, confirming paths after `confirm` results.
fn open(engine: Engine, confirm: u32) -> Arc<dyn Store> {
    match engine {
        Engine::Sqlite => Arc::new(Sqlite::open_temp(confirm).unwrap()),
        Engine::Postgres => {
            let pg = util::pg::server();
            let db = pg.create_db("suite");
            Arc::new(Postgres::open(&pg.url(&db), None, confirm).unwrap())
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn all(store: &dyn Store) -> Vec<dist_traceroute::master::store::StoredResult> {
    store
        .results(&ResultQuery {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
        .0
}

/// Runs each named test on both engines.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::Engine::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::Engine::Postgres) } )*
        }
    };
}

suite!(
    a_result_id_is_stored_once_and_reads_back_exactly,
    pages_and_filters_walk_every_result_once,
    concurrent_submissions_each_get_their_own_answer,
    a_full_millisecond_spills_into_the_next_and_dedup_still_works,
    a_result_dated_ahead_is_ordered_at_its_arrival_and_still_a_duplicate,
    a_confirmed_path_change_gives_one_event_and_a_late_backlog_none,
    series_hops_and_path_history_follow_the_series,
    slaves_merge_what_every_request_reported,
    retention_keeps_the_newest_of_a_series,
    reopening_keeps_everything_and_migrates_nothing_twice,
    a_secret_is_kept_once_and_the_first_one_wins,
    a_target_whose_address_changes_keeps_one_current_series,
    a_measurement_hands_out_its_jobs_once_and_counts_its_results,
    the_current_path_is_filled_in_by_later_answers,
    a_multipath_series_tells_lost_and_new_branches_and_no_rehash,
    an_as_path_change_is_told_and_a_change_inside_one_as_is_not,
    a_list_of_slaves_filters_series_results_and_events,
);

fn a_secret_is_kept_once_and_the_first_one_wins(engine: Engine) {
    let store = open(engine, 2);
    let first = store.secret("session-key", b"first-value").unwrap();
    assert_eq!(first, b"first-value");
    // Another master (or a restart) with its own fresh value gets the kept one.
    assert_eq!(
        store.secret("session-key", b"second").unwrap(),
        b"first-value"
    );
    assert_eq!(store.secret("other", b"x").unwrap(), b"x");
    // Many at once: one value for all of them.
    let got: Vec<Vec<u8>> = (0..6u8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || store.secret("raced", &[i; 8]).unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(got.iter().all(|v| *v == got[0] && v.len() == 8), "{got:?}");
}

fn a_result_id_is_stored_once_and_reads_back_exactly(engine: Engine) {
    let store = open(engine, 2);
    let first = result(1, 1_000);
    assert!(matches!(store.insert(&first).unwrap().0, Stored::New(_)));
    assert_eq!(store.insert(&first).unwrap().0, Stored::Duplicate);
    // A duplicate inside a batch, next to a new one.
    let answers = store
        .insert_batch(&[first.clone(), result(2, 2_000)])
        .unwrap();
    assert_eq!(answers[0].0, Stored::Duplicate);
    assert!(matches!(answers[1].0, Stored::New(_)));
    assert_eq!(store.count_results().unwrap(), 2);
    let got = all(&*store);
    assert_eq!(got.len(), 2);
    let back = &got[1];
    assert_eq!(back.id, first.result_id);
    assert_eq!(back.slave, "slave1");
    assert_eq!(back.target_id, first.target_uuid);
    assert_eq!(back.target_name, "Google");
    assert_eq!(back.target_address, "www.google.at");
    assert_eq!(back.date_time, first.date_time);
    assert_eq!(back.measured_at, first.measured_at);
    assert_eq!(back.ordered_at, None);
    assert_eq!(back.duration_ns, Some(2_000_000));
    assert_eq!(back.hops, first.hops);
    assert_eq!(back.path, "10.0.0.1 * 10.0.0.3 | reached");
    assert_eq!(back.protocol.as_deref(), Some("udp"));
    assert_eq!(back.flow, Some(0));
    assert!(back.success);
    assert_eq!(back.hop_count, 3);
}

fn pages_and_filters_walk_every_result_once(engine: Engine) {
    let store = open(engine, 2);
    let mut batch: Vec<NewResult> = (0..25).map(|i| result(i, i as i64 * 1_000)).collect();
    for i in 0..5 {
        let mut r = result(100 + i, i as i64 * 1_000 + 500);
        r.slave = "slave2".into();
        batch.push(r);
    }
    store.insert_batch(&batch).unwrap();
    // Pages of 7, newest first, each result once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = store
            .results(&ResultQuery {
                slave: Some("slave1".into()),
                before: cursor,
                limit: 7,
                ..Default::default()
            })
            .unwrap();
        seen.extend(page.iter().map(|r| r.measured_at));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<i64> = (0..25).rev().map(|i| T0 + i * 1_000).collect();
    assert_eq!(seen, expected);
    // Time range, target by name and by UUID, and an unknown slave.
    let ranged = store
        .results(&ResultQuery {
            from: Some(T0 + 3_000),
            to: Some(T0 + 5_000),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .0;
    let times: Vec<i64> = ranged.iter().map(|r| r.measured_at - T0).collect();
    assert_eq!(times, vec![5_000, 4_500, 4_000, 3_500, 3_000]);
    for target in ["Google", "76d96640-d357-47b3-ba50-5248a7604bc9"] {
        let n = store
            .results(&ResultQuery {
                target: Some(target.into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .0
            .len();
        assert_eq!(n, 30, "{target}");
    }
    let none = store
        .results(&ResultQuery {
            slave: Some("nobody".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .0;
    assert!(none.is_empty());
    // Offset: the n-th newest alone.
    let third = store
        .results(&ResultQuery {
            slave: Some("slave2".into()),
            offset: 2,
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .0;
    assert_eq!(third[0].measured_at, T0 + 2_500);
    // Series and targets as stored.
    let series = store.series(&SeriesFilter::default()).unwrap();
    let names: Vec<&str> = series.iter().map(|s| s.slave.as_str()).collect();
    assert_eq!(names, vec!["slave1", "slave2"]);
    assert_eq!(store.targets().unwrap().len(), 1);
}

fn concurrent_submissions_each_get_their_own_answer(engine: Engine) {
    let store = open(engine, 2);
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..40u32)
                    .map(|i| store.submit(vec![result(t * 1000 + i, 1_000 + i as i64)]))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|ticket| ticket.wait().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut stored = 0;
    for t in threads {
        for answer in t.join().unwrap() {
            assert_eq!(answer.len(), 1);
            assert!(matches!(answer[0].0, Stored::New(_)));
            stored += 1;
        }
    }
    assert_eq!(stored, 320);
    assert_eq!(store.count_results().unwrap(), 320);
    // Eight results share each millisecond: each got a key of its own.
    let page = store
        .results(&ResultQuery {
            from: Some(T0 + 1_039),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .0;
    assert_eq!(page.len(), 8);
    assert!(page.iter().all(|r| r.measured_at == T0 + 1_039));
    // No millisecond was full, so none was moved to a later one.
    let moved: Vec<_> = all(&*store)
        .into_iter()
        .filter(|r| r.ordered_at.is_some())
        .map(|r| (r.measured_at - T0, r.ordered_at))
        .collect();
    assert!(moved.is_empty(), "results moved on: {moved:?}");
}

fn a_full_millisecond_spills_into_the_next_and_dedup_still_works(engine: Engine) {
    let store = open(engine, 2);
    let n = codec::PER_MS as u32 + 6;
    let batch: Vec<NewResult> = (0..n).map(|i| result(i, 5_000)).collect();
    store.insert_batch(&batch).unwrap();
    let again = store.insert_batch(&batch).unwrap();
    assert!(again.iter().all(|o| o.0 == Stored::Duplicate));
    let got = all(&*store);
    assert_eq!(got.len(), n as usize);
    assert!(got.iter().all(|r| r.measured_at == T0 + 5_000));
    let moved: Vec<_> = got.iter().filter_map(|r| r.ordered_at).collect();
    assert_eq!(moved, vec![T0 + 5_001; 6]);
}

fn a_result_dated_ahead_is_ordered_at_its_arrival_and_still_a_duplicate(engine: Engine) {
    let store = open(engine, 1);
    let now = now_ms();
    let ahead = result(7, now - T0 + 10 * 365 * 86_400_000);
    store.insert(&ahead).unwrap();
    assert_eq!(store.insert(&ahead).unwrap().0, Stored::Duplicate);
    let got = all(&*store);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].measured_at, ahead.measured_at);
    assert_eq!(got[0].date_time, ahead.date_time);
    let ordered = got[0].ordered_at.expect("ordered elsewhere");
    assert!((now..now + 60_000).contains(&ordered), "{ordered} vs {now}");
    let skew = store.slaves().unwrap()[0].clock_skew_ms.unwrap();
    assert!(skew > 9 * 365 * 86_400_000, "{skew}");
}

fn a_confirmed_path_change_gives_one_event_and_a_late_backlog_none(engine: Engine) {
    let store = open(engine, 2);
    let mut id = 0;
    let mut next = |at: i64, second: &str| {
        id += 1;
        via(result(id, at), second)
    };
    let mut events = Vec::new();
    for (at, second) in [
        (1_000, "10.0.0.1"),
        (2_000, "10.0.0.1"),
        // One result on another path is not yet a change...
        (3_000, "10.0.9.1"),
        (4_000, "10.0.0.1"),
        // ...two in a row are.
        (5_000, "10.0.9.1"),
        (6_000, "10.0.9.1"),
    ] {
        events.extend(store.insert(&next(at, second)).unwrap().1);
    }
    let changes: Vec<_> = events
        .iter()
        .filter(|e| e.event.kind() == "path-change")
        .collect();
    assert_eq!(changes.len(), 1, "{events:?}");
    assert_eq!(
        changes[0].from.as_deref(),
        Some("10.0.0.1 * 10.0.0.3 | reached")
    );
    assert_eq!(
        changes[0].to.as_deref(),
        Some("10.0.9.1 * 10.0.0.3 | reached")
    );
    assert_eq!(changes[0].slave, "slave1");
    // A late backlog on the old path is stored but does not flip the path back.
    for at in [1_500, 1_600, 1_700] {
        assert!(store.insert(&next(at, "10.0.0.1")).unwrap().1.is_empty());
    }
    let series = store.series(&SeriesFilter::default()).unwrap();
    assert_eq!(series.len(), 1);
    let s = &series[0];
    assert_eq!(s.changes_total, 1);
    assert_eq!(
        s.current_path.as_ref().map(|p| p.1.as_str()),
        Some("10.0.9.1 * 10.0.0.3 | reached")
    );
    assert_eq!(s.last_measured, Some(T0 + 6_000));
    assert_eq!(s.last_success, Some(true));
    assert_eq!(s.last_rtt_ns, Some(3_000_123));
    // Silent TTL 2 counts: the path is three hops long.
    assert_eq!(s.current_hops, Some(3));
    // The events as the query shows them, filtered by kind.
    let stored = store
        .events(&EventQuery {
            kind: Some("path-change".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, changes[0].id);
    assert_eq!(stored[0].at, changes[0].at);
    assert_eq!(stored[0].target_name, "Google");
    assert!(stored[0].first_diff_ttl.is_some());
    assert_eq!(
        stored[0].to_path.as_ref().map(|p| p.1.as_str()),
        Some("10.0.9.1 * 10.0.0.3 | reached")
    );
    let other = store
        .events(&EventQuery {
            series: SeriesFilter {
                slave: Some("slave2".into()),
                ..Default::default()
            },
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(other.is_empty());
}

fn a_target_whose_address_changes_keeps_one_current_series(engine: Engine) {
    let store = open(engine, 2);
    let mut id = 0;
    // The target's address in the config: results name it, and the new address is reached
    // over another last hop.
    let mut next = |at: i64, address: &str| {
        id += 1;
        let mut r = result(id, at);
        r.target_address = address.into();
        if address != "www.google.at" {
            r = via(r, "10.0.0.1");
            r.hops[1].address = "10.0.7.3".into();
            r.path = NetPath::from_hops(
                [
                    (1, "10.0.0.1".parse().unwrap()),
                    (3, "10.0.7.3".parse().unwrap()),
                ],
                Terminal::Reached,
            );
        }
        r
    };
    let current = |store: &dyn Store| -> Vec<(String, Option<String>)> {
        store
            .series(&SeriesFilter::default())
            .unwrap()
            .into_iter()
            .map(|s| (s.target_address, s.current_path.map(|p| p.1)))
            .collect()
    };
    let old_path = "10.0.0.1 * 10.0.0.3 | reached";
    let new_path = "10.0.0.1 * 10.0.7.3 | reached";
    let mut events = Vec::new();
    for at in [1_000, 2_000] {
        events.extend(store.insert(&next(at, "www.google.at")).unwrap().1);
    }
    // The address is edited: the first result names the new one and tells so; the series
    // of the new address is the one current series, still on the confirmed old path.
    let first = store.insert(&next(3_000, "142.250.0.1")).unwrap().1;
    let kinds: Vec<&str> = first.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds, ["target-change"], "{first:?}");
    let detail = serde_json::to_value(&first[0].event).unwrap();
    assert_eq!(detail["from_address"], "www.google.at");
    assert_eq!(detail["to_address"], "142.250.0.1");
    assert_eq!(
        current(&*store),
        [("142.250.0.1".to_owned(), Some(old_path.to_owned()))]
    );
    // Confirmed like any other change: the route to the new address against the old one.
    let second = store.insert(&next(4_000, "142.250.0.1")).unwrap().1;
    let change = second
        .iter()
        .find(|e| e.event.kind() == "path-change")
        .unwrap_or_else(|| panic!("no path change in {second:?}"));
    assert_eq!(change.from.as_deref(), Some(old_path));
    assert_eq!(change.to.as_deref(), Some(new_path));
    assert_eq!(
        current(&*store),
        [("142.250.0.1".to_owned(), Some(new_path.to_owned()))]
    );
    // A late result of the old address (a slave's backlog) is stored, changes nothing.
    assert!(
        store
            .insert(&next(2_500, "www.google.at"))
            .unwrap()
            .1
            .is_empty()
    );
    assert_eq!(current(&*store).len(), 1);
    // Edited back: the old address' series takes over again, with the state it is given.
    let back = store.insert(&next(5_000, "www.google.at")).unwrap().1;
    let kinds: Vec<&str> = back.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds, ["target-change"], "{back:?}");
    assert_eq!(
        current(&*store),
        [("www.google.at".to_owned(), Some(new_path.to_owned()))]
    );
    store.insert(&next(6_000, "www.google.at")).unwrap();
    assert_eq!(
        current(&*store),
        [("www.google.at".to_owned(), Some(old_path.to_owned()))]
    );
    assert_eq!(all(&*store).len(), 7);
    // The events stay with the series they happened on, all found by the target.
    let stored = store
        .events(&EventQuery {
            series: SeriesFilter {
                target: Some("Google".into()),
                ..Default::default()
            },
            limit: 20,
            ..Default::default()
        })
        .unwrap();
    let kinds: Vec<&str> = stored.iter().rev().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "target-change",
            "path-change",
            "target-change",
            "path-change"
        ]
    );
}

fn a_measurement_hands_out_its_jobs_once_and_counts_its_results(engine: Engine) {
    let store = open(engine, 2);
    let spec = JobSpec {
        id: "8d0c5c1e-2b7a-4a3e-9a51-2f0e6f7b1c11".into(),
        target: "192.0.2.7".into(),
        protocol: "icmp".into(),
        port: None,
        flows: 2,
        queries: 1,
        max_hops: 8,
        timeout_ms: 500,
    };
    let run = |slave: &str, state: &str| RunRecord {
        slave: slave.into(),
        state: state.into(),
        updated_at: T0,
        results: 0,
        reason: (state == "offline").then(|| "never seen".into()),
    };
    store
        .create_measurement(&MeasurementRecord {
            id: spec.id.clone(),
            created_at: T0,
            deadline: T0 + 60_000,
            requested_by: "olga".into(),
            event: Some(41),
            spec: spec.clone(),
            runs: vec![run("slave1", "queued"), run("slave2", "offline")],
        })
        .unwrap();
    assert_eq!(store.queued_since(T0).unwrap(), ["slave1"]);
    assert!(store.queued_since(T0 + 1).unwrap().is_empty());
    // A follow-up is found from its event, and says which event it follows.
    assert_eq!(
        store.follow_ups(&[40, 41]).unwrap(),
        std::collections::HashMap::from([(41, spec.id.clone())])
    );
    assert_eq!(
        store.measurement(&spec.id).unwrap().unwrap().event,
        Some(41)
    );
    // Handed out once; again only when the slave did not confirm it in time.
    assert_eq!(
        store.take_jobs("slave1", T0, T0 + 10).unwrap(),
        std::slice::from_ref(&spec)
    );
    assert!(store.take_jobs("slave1", T0, T0 + 20).unwrap().is_empty());
    assert!(store.take_jobs("slave2", T0, T0 + 20).unwrap().is_empty());
    assert_eq!(
        store.take_jobs("slave1", T0 + 11, T0 + 6_000).unwrap(),
        std::slice::from_ref(&spec)
    );
    store
        .runs_started("slave1", std::slice::from_ref(&spec.id), T0 + 6_001)
        .unwrap();
    assert!(
        store
            .take_jobs("slave1", T0 + 60_000, T0 + 7_000)
            .unwrap()
            .is_empty()
    );
    let m = store.measurement(&spec.id).unwrap().unwrap();
    assert_eq!(m.spec, spec);
    assert_eq!(m.requested_by, "olga");
    let states: Vec<(&str, &str)> = m
        .runs
        .iter()
        .map(|r| (r.slave.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(states, [("slave1", "running"), ("slave2", "offline")]);
    // Its results: stored, marked, counted; the run is done with the second flow.
    let on_demand = |id: u32, flow: i64| {
        let mut r = result(id, 7_000 + i64::from(id));
        r.target_uuid = "on-demand".into();
        r.target_name = "192.0.2.7".into();
        r.target_address = "192.0.2.7".into();
        r.flow = Some(flow);
        r.origin.measurement = Some(spec.id.clone());
        r
    };
    let (stored, events) = store.insert(&on_demand(1, 0)).unwrap();
    assert!(matches!(stored, Stored::New(_)) && events.is_empty());
    let m = store.measurement(&spec.id).unwrap().unwrap();
    assert_eq!(
        (m.runs[0].state.as_str(), m.runs[0].results),
        ("running", 1)
    );
    store.insert(&on_demand(2, 1)).unwrap();
    // A resend is stored once and counted once.
    store.insert(&on_demand(2, 1)).unwrap();
    let m = store.measurement(&spec.id).unwrap().unwrap();
    assert_eq!((m.runs[0].state.as_str(), m.runs[0].results), ("done", 2));
    let got = store.measurement_results(&spec.id).unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|r| r.origin.measurement.as_deref() == Some(spec.id.as_str()))
    );
    // No series of it among the current ones.
    assert!(store.series(&SeriesFilter::default()).unwrap().is_empty());
    assert!(store.measurement("nosuch").unwrap().is_none());
    // Retention takes the measurement with the history before its cutoff.
    store.delete_history_before(T0).unwrap();
    assert!(store.measurement(&spec.id).unwrap().is_some());
    store.delete_history_before(T0 + 1).unwrap();
    assert!(store.measurement(&spec.id).unwrap().is_none());
    assert!(store.follow_ups(&[41]).unwrap().is_empty());
}

/// The first result of a series lost hop 2's reply; the next has it: that fuller variant of
/// the same route becomes the current path, without an event and keeping its `since`; a hole
/// again does not undo it.
fn the_current_path_is_filled_in_by_later_answers(engine: Engine) {
    let store = open(engine, 2);
    let full = |id: u32, at: i64| {
        let mut r = result(id, at);
        r.hops.insert(1, util::stored::hop(2, "10.0.0.2", 2_000));
        r.path = NetPath::from_hops(
            [
                (1, "10.0.0.1".parse().unwrap()),
                (2, "10.0.0.2".parse().unwrap()),
                (3, "10.0.0.3".parse().unwrap()),
            ],
            Terminal::Reached,
        );
        r
    };
    let mut events = store.insert(&result(1, 0)).unwrap().1;
    events.extend(store.insert(&full(2, 1_000)).unwrap().1);
    events.extend(store.insert(&result(3, 2_000)).unwrap().1);
    assert!(events.is_empty(), "{events:?}");
    let series = store.series(&SeriesFilter::default()).unwrap();
    assert_eq!(
        series[0].current_path.as_ref().map(|p| p.1.as_str()),
        Some("10.0.0.1 10.0.0.2 10.0.0.3 | reached")
    );
    assert_eq!(series[0].current_since, Some(T0));
    assert_eq!(series[0].changes_total, 0);
}

fn series_hops_and_path_history_follow_the_series(engine: Engine) {
    let store = open(engine, 2);
    for i in 0..4u32 {
        let second = if i < 2 { "10.0.0.1" } else { "10.0.5.1" };
        store
            .insert(&via(result(i, i as i64 * 1_000), second))
            .unwrap();
    }
    let series = store.series(&SeriesFilter::default()).unwrap();
    let id = series[0].id;
    let hops = store.series_hops(id, T0 + 1_000).unwrap();
    assert_eq!(hops.len(), 3);
    assert_eq!(hops[0][0].address, "10.0.0.1");
    assert_eq!(hops[2][0].address, "10.0.5.1");
    let history = store.path_history(id, T0, T0 + 10_000).unwrap();
    let seen: Vec<(&str, i64, i64, i64)> = history
        .iter()
        .map(|p| {
            (
                p.path.as_str(),
                p.first_seen - T0,
                p.last_seen - T0,
                p.count,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("10.0.0.1 * 10.0.0.3 | reached", 0, 1_000, 2),
            ("10.0.5.1 * 10.0.0.3 | reached", 2_000, 3_000, 2),
        ]
    );
}

fn slaves_merge_what_every_request_reported(engine: Engine) {
    let store = open(engine, 2);
    store.touch_slave("slave1", "192.0.2.7", Some("dist-traceroute/0.1.0"), true);
    store.slave_status("slave1", Some(12), Some(3));
    store.insert(&result(1, 1_000)).unwrap();
    store.insert(&result(2, 2_000)).unwrap();
    store.slave_status("slave1", Some(4), None);
    store.touch_slave("slave2", "198.51.100.1", None, false);
    // Jobs are written in order: one more insert makes sure the status above is stored.
    store.insert(&result(3, 3_000)).unwrap();
    let slaves = store.slaves().unwrap();
    let names: Vec<&str> = slaves.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["slave1", "slave2"]);
    let s1 = &slaves[0];
    assert_eq!(s1.remote_addr.as_deref(), Some("192.0.2.7"));
    assert_eq!(s1.version.as_deref(), Some("dist-traceroute/0.1.0"));
    assert_eq!(s1.results_stored, 3);
    assert_eq!(s1.spool_depth, Some(4));
    assert_eq!(s1.dropped_total, 3);
    assert!(s1.last_config.is_some());
    assert!(s1.last_seen >= s1.last_config);
    // The results are a year old: the slave's clock looks that far behind.
    assert!(s1.clock_skew_ms.unwrap() < -86_400_000);
    assert_eq!(slaves[1].results_stored, 0);
    assert_eq!(slaves[1].last_config, None);
}

fn retention_keeps_the_newest_of_a_series(engine: Engine) {
    let store = open(engine, 1);
    for (i, at) in [1_000, 2_000, 3_000].into_iter().enumerate() {
        let second = if i < 2 { "10.0.0.1" } else { "10.0.7.1" };
        store.insert(&via(result(i as u32, at), second)).unwrap();
    }
    let mut other = result(50, 500);
    other.slave = "slave2".into();
    store.insert(&other).unwrap();
    let mut deleted = 0;
    loop {
        match store.delete_results_before(T0 + 10_000).unwrap() {
            0 => break,
            n => deleted += n,
        }
    }
    // Each series keeps its newest result, however old.
    assert_eq!(deleted, 2);
    let left: Vec<i64> = all(&*store).iter().map(|r| r.measured_at - T0).collect();
    assert_eq!(left, vec![3_000, 500]);
    assert!(
        !store
            .events(&EventQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .is_empty()
    );
    let (events, _) = store.delete_history_before(T0 + 10_000).unwrap();
    assert!(events >= 1);
    assert!(
        store
            .events(&EventQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .is_empty()
    );
    // Results still read back, and new ones still go in.
    store.insert(&result(9, 4_000)).unwrap();
    assert_eq!(all(&*store).len(), 3);
    assert_eq!(
        store.insert(&result(9, 4_000)).unwrap().0,
        Stored::Duplicate
    );
}

fn reopening_keeps_everything_and_migrates_nothing_twice(engine: Engine) {
    match engine {
        Engine::Sqlite => {
            let dir = util::Scratch::new("suite-reopen");
            let file = dir.path("t.db");
            {
                let first = Sqlite::open(&file, 2).unwrap();
                first.insert(&result(1, 1_000)).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            let again = Sqlite::open(&file, 2).unwrap();
            assert_eq!(again.count_results().unwrap(), 1);
            assert_eq!(
                again.insert(&result(1, 1_000)).unwrap().0,
                Stored::Duplicate
            );
        }
        Engine::Postgres => {
            let pg = util::pg::server();
            let db = pg.create_db("reopen");
            let url = pg.url(&db);
            // Several masters starting at once: one creates the schema, the others wait.
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let url = url.clone();
                    std::thread::spawn(move || Postgres::open(&url, None, 2).map(|_| ()))
                })
                .collect();
            for o in openers {
                o.join().unwrap().unwrap();
            }
            assert_eq!(
                pg.psql(&db, "SELECT version FROM dt_schema").trim(),
                dist_traceroute::master::store::postgres::schema::VERSION.to_string()
            );
            {
                let first = Postgres::open(&url, None, 2).unwrap();
                first.insert(&result(1, 1_000)).unwrap();
            }
            let again = Postgres::open(&url, None, 2).unwrap();
            assert_eq!(again.count_results().unwrap(), 1);
            assert_eq!(
                again.insert(&result(1, 1_000)).unwrap().0,
                Stored::Duplicate
            );
            assert_eq!(pg.psql(&db, "SELECT count(*) FROM dt_schema").trim(), "1");
        }
    }
}

/// Several masters share a PostgreSQL database: while one runs a retention step (it holds
/// the retention lock), another deletes nothing, and goes ahead once the lock is free.
#[test]
fn postgres_retention_runs_on_one_master_at_a_time() {
    let pg = util::pg::server();
    let db = pg.create_db("retention_lock");
    let url = pg.url(&db);
    let store = Postgres::open(&url, None, 2).unwrap();
    for i in 0..3 {
        store.insert(&result(i, i as i64 * 1_000)).unwrap();
    }
    let mut other = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    other
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&dist_traceroute::master::store::postgres::schema::locks::RETENTION],
        )
        .unwrap();
    assert_eq!(store.delete_results_before(T0 + 10_000).unwrap(), 0);
    assert_eq!(store.delete_history_before(T0 + 10_000).unwrap(), (0, 0));
    assert_eq!(store.count_results().unwrap(), 3);
    other
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&dist_traceroute::master::store::postgres::schema::locks::RETENTION],
        )
        .unwrap();
    assert_eq!(store.delete_results_before(T0 + 10_000).unwrap(), 2);
    assert_eq!(store.count_results().unwrap(), 1);
}

/// Two masters on one PostgreSQL database storing results of the same milliseconds at the
/// same time: every result gets a key of its own (a master that finds its key taken moves
/// on), none is lost or stored twice.
#[test]
fn postgres_two_masters_fill_the_same_milliseconds() {
    let pg = util::pg::server();
    let db = pg.create_db("shared_ms");
    let url = pg.url(&db);
    let stores: Vec<Arc<dyn Store>> = (0..2)
        .map(|_| Arc::new(Postgres::open(&url, None, 2).unwrap()) as Arc<dyn Store>)
        .collect();
    let writers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, store)| {
            let store = store.clone();
            std::thread::spawn(move || {
                for batch in 0..10u32 {
                    let results: Vec<NewResult> = (0..10u32)
                        .map(|i| {
                            let mut r = result(n as u32 * 1000 + batch * 10 + i, 5_000);
                            r.slave = format!("slave{}", n + 1);
                            r
                        })
                        .collect();
                    for o in store.insert_batch(&results).unwrap() {
                        assert!(matches!(o.0, Stored::New(_)), "{o:?}");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let got = all(&*stores[0]);
    assert_eq!(got.len(), 200);
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 200);
    assert!(got.iter().all(|r| r.measured_at == T0 + 5_000));
    // 64 keys a millisecond: the rest moved on to the next ones.
    // (At least: a result whose place the other master drew takes the next key after the
    // highest, which may be in the next millisecond though an earlier place is free.)
    let moved = got.iter().filter(|r| r.ordered_at.is_some()).count();
    assert!(moved >= 200 - codec::PER_MS as usize, "{moved}");
    // Each master sees them all.
    assert_eq!(all(&*stores[1]).len(), 200);
}

/// Result `id` at `at` whose flows `paths` took the second hop of each (`0` = 10.0.1.1,
/// `1` = 10.0.2.1) of a diamond 10.0.0.1 → {10.0.1.1, 10.0.2.1} → 10.0.0.3; flow 0's path
/// is the result's own.
fn multipath(id: u32, at: i64, paths: &[usize]) -> NewResult {
    use dist_traceroute::proto::{Multipath, MultipathLink, MultipathNode};
    let mids = ["10.0.1.1", "10.0.2.1"];
    let mut nodes = vec![MultipathNode {
        ttl: 1,
        ip: "10.0.0.1".into(),
        flows: (0..paths.len() as u16).collect(),
        rtts: paths.iter().map(|_| 1_000_000).collect(),
    }];
    let mut links = Vec::new();
    for (i, mid) in mids.iter().enumerate() {
        let flows: Vec<u16> = (0..paths.len() as u16)
            .filter(|f| paths[*f as usize] == i)
            .collect();
        if flows.is_empty() {
            continue;
        }
        nodes.push(MultipathNode {
            ttl: 2,
            ip: (*mid).into(),
            flows: flows.clone(),
            rtts: flows
                .iter()
                .map(|f| 2_000_000 + i64::from(*f) * 1000)
                .collect(),
        });
        links.push(MultipathLink {
            ttl: 1,
            from: "10.0.0.1".into(),
            to: (*mid).into(),
            flows: flows.clone(),
        });
        links.push(MultipathLink {
            ttl: 2,
            from: (*mid).into(),
            to: "10.0.0.3".into(),
            flows,
        });
    }
    nodes.push(MultipathNode {
        ttl: 3,
        ip: "10.0.0.3".into(),
        flows: (0..paths.len() as u16).collect(),
        rtts: paths.iter().map(|_| 3_000_000).collect(),
    });
    let wire = Multipath {
        confidence: 0.95,
        flows: paths.len() as u16,
        probes: 3 * paths.len() as u64,
        complete: true,
        nodes,
        links,
    };
    let mut r = via(result(id, at), mids[paths[0]]);
    r.multipath = Some(dist_traceroute::master::store::graph::Graph::from_wire(&wire).unwrap());
    r
}

fn a_multipath_series_tells_lost_and_new_branches_and_no_rehash(engine: Engine) {
    let store = open(engine, 2);
    let mut id = 0;
    let mut feed = |paths: &[usize]| {
        id += 1;
        let r = multipath(id, i64::from(id) * 1000, paths);
        let (_, events) = store.insert(&r).unwrap();
        (r, events.into_iter().map(|e| e.event).collect::<Vec<_>>())
    };
    let both = [0, 1, 0, 1, 1, 0];
    let (first, events) = feed(&both);
    assert!(events.is_empty(), "{events:?}");
    // Flows re-hash: flow 0 takes the other branch, twice in a row (which for a single
    // path would be a confirmed change), and the others move about. No event.
    for paths in [[1, 0, 1, 0, 0, 1], [1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 1, 0]] {
        let (_, events) = feed(&paths);
        assert!(events.is_empty(), "{paths:?}: {events:?}");
    }
    // One branch gone: one event after two results without it, none after.
    let (_, events) = feed(&[0; 6]);
    assert!(events.is_empty(), "{events:?}");
    let (_, events) = feed(&[0; 6]);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind(), "branch-lost");
    let text = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(
        text["branches"],
        serde_json::json!(["1 10.0.0.1>10.0.2.1", "2 10.0.2.1", "2 10.0.2.1>10.0.0.3"])
    );
    let (_, events) = feed(&[0; 6]);
    assert!(events.is_empty(), "{events:?}");
    // It comes back: one event.
    let (_, events) = feed(&both);
    assert!(events.is_empty(), "{events:?}");
    let (_, events) = feed(&both);
    assert_eq!(
        events.iter().map(|e| e.kind()).collect::<Vec<_>>(),
        ["branch-new"]
    );
    let (_, events) = feed(&both);
    assert!(events.is_empty(), "{events:?}");
    // The stored events, and each result's graph read back as it was sent.
    let kinds: Vec<String> = store
        .events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["branch-new", "branch-lost"]);
    let results = all(&*store);
    assert_eq!(results.len(), 10);
    let oldest = results.last().unwrap();
    assert_eq!(oldest.multipath, first.multipath);
    assert!(results.iter().all(|r| r.multipath.is_some()));
    let json = serde_json::to_value(oldest).unwrap();
    assert_eq!(json["multipath"]["nodes"][1]["address"], "10.0.1.1");
    assert_eq!(
        json["multipath"]["nodes"][2]["rtts_ns"],
        serde_json::json!([2_001_000, 2_003_000, 2_004_000])
    );
    // A result without a graph reads back without one.
    store.insert(&result(99, 99_000)).unwrap();
    assert!(all(&*store)[0].multipath.is_none());
}

/// A result of slave1 to Google whose TTL i+1 answered from `hops[i]` (`*`: silent), reaching
/// the last one, with its AS path from `db` as the master computes it on arrival.
fn over(id: u32, at: i64, hops: &[&str], db: &dist_traceroute::asn::AsnDb) -> NewResult {
    let mut r = result(id, at);
    let answering: Vec<(i64, std::net::IpAddr)> = hops
        .iter()
        .enumerate()
        .filter(|(_, h)| **h != "*")
        .map(|(i, h)| (i as i64 + 1, h.parse().unwrap()))
        .collect();
    let template = r.hops[1].clone();
    r.hops = answering
        .iter()
        .map(|(ttl, a)| {
            let mut h = template.clone();
            h.ttl = *ttl;
            h.address = a.to_string();
            h
        })
        .collect();
    r.hop_count = hops.len() as i64;
    r.path = NetPath::from_hops(answering, Terminal::Reached);
    r.as_hops = Some(dist_traceroute::master::owners::as_hops(db, &r.path.hops));
    r
}

fn an_as_path_change_is_told_and_a_change_inside_one_as_is_not(engine: Engine) {
    let store = open(engine, 2);
    let db = dist_traceroute::asn::AsnDb::parse(
        "64.0.0.0\t64.0.255.255\t64500\tDE\tCARRIER\n\
         65.0.0.0\t65.0.255.255\t64501\tUS\tTRANSIT\n\
         66.0.0.0\t66.0.255.255\t64502\tUS\tOTHER\n\
         8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n",
    )
    .unwrap();
    let first = ["10.0.0.1", "64.0.0.1", "64.0.1.1", "65.0.0.1", "8.8.8.8"];
    // Another interface inside AS 64500: an IP-level change only.
    let inside = ["10.0.0.1", "64.0.0.1", "64.0.2.9", "65.0.0.1", "8.8.8.8"];
    // A silent hop between two ASes, and one not in the table: either may hide an AS.
    let silent = ["10.0.0.1", "64.0.0.1", "*", "65.0.0.1", "8.8.8.8"];
    let unknown = ["10.0.0.1", "64.0.0.1", "9.9.9.9", "65.0.0.1", "8.8.8.8"];
    // Through another AS.
    let other = ["10.0.0.1", "64.0.0.1", "66.0.0.1", "8.8.8.8"];
    let mut id = 0;
    let mut kinds = Vec::new();
    let mut as_events = Vec::new();
    for hops in [
        &first[..],
        &first,
        &inside,
        &inside,
        &silent,
        &unknown,
        &inside,
        // Once through the other AS is not yet a change; then twice in a row.
        &other,
        &inside,
        &other,
        &other,
        &other,
    ] {
        id += 1;
        let r = over(id, i64::from(id) * 1000, hops, &db);
        for e in store.insert(&r).unwrap().1 {
            kinds.push((id, e.event.kind()));
            if e.event.kind() == "as-path-change" {
                as_events.push(e);
            }
        }
    }
    assert_eq!(
        kinds,
        [
            (4, "path-change"),
            (11, "path-change"),
            (11, "as-path-change")
        ]
    );
    assert_eq!(
        serde_json::to_value(&as_events[0].event).unwrap(),
        serde_json::json!({"kind": "as-path-change", "from": [64500, 64501, 15169],
                           "to": [64500, 64502, 15169], "since": T0 + 10_000})
    );
    // A break is `unreachable`'s to tell: a result that did not reach, on a shorter AS
    // path, raises no AS-path change however often it comes.
    for _ in 0..3 {
        id += 1;
        let mut r = over(id, i64::from(id) * 1000, &["10.0.0.1", "64.0.0.1"], &db);
        r.success = false;
        r.path.terminal = Terminal::GaveUp;
        r.hops[1].kind = None;
        let events = store.insert(&r).unwrap().1;
        assert!(
            events.iter().all(|e| e.event.kind() != "as-path-change"),
            "{events:?}"
        );
    }
    // Stored, and found by its kind.
    let stored = store
        .events(&EventQuery {
            kind: Some("as-path-change".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, as_events[0].id);
    // Without an AS table (no AS path given), nothing of the kind.
    let plain = open(engine, 2);
    for (n, hops) in [&first[..], &other, &other, &other].iter().enumerate() {
        let mut r = over(100 + n as u32, (100 + n as i64) * 1000, hops, &db);
        r.as_hops = None;
        let events = plain.insert(&r).unwrap().1;
        assert!(
            events.iter().all(|e| e.event.kind() != "as-path-change"),
            "{events:?}"
        );
    }
}

fn a_list_of_slaves_filters_series_results_and_events(engine: Engine) {
    let store = open(engine, 1);
    let mut batch = Vec::new();
    for (n, slave) in ["eu1", "eu2", "us1"].iter().enumerate() {
        for i in 0..3u32 {
            let mut r = result(n as u32 * 10 + i, i64::from(i) * 1000);
            r.slave = (*slave).into();
            // The last result of each slave on another route: one path change each.
            if i == 2 {
                r = via(r, "10.0.7.1");
            }
            batch.push(r);
        }
    }
    store.insert_batch(&batch).unwrap();
    let only = |names: &[&str]| Some(names.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let filter = |names: &[&str]| SeriesFilter {
        slaves: only(names),
        ..Default::default()
    };
    let slaves_of = |rows: Vec<String>| {
        let mut v = rows;
        v.sort();
        v.dedup();
        v
    };
    let series = store.series(&filter(&["eu1", "us1"])).unwrap();
    assert_eq!(
        slaves_of(series.into_iter().map(|s| s.slave).collect()),
        ["eu1", "us1"]
    );
    let (results, _) = store
        .results(&ResultQuery {
            slaves: only(&["eu2"]),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.slave == "eu2"));
    let events = store
        .events(&EventQuery {
            series: filter(&["eu1", "eu2"]),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        slaves_of(events.into_iter().map(|e| e.slave).collect()),
        ["eu1", "eu2"]
    );
    // An empty list (a tag no slave has) matches nothing; none filters nothing.
    assert!(store.series(&filter(&[])).unwrap().is_empty());
    assert_eq!(store.series(&SeriesFilter::default()).unwrap().len(), 3);
}
