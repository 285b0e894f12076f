//! The slave never loses a result it took: the master away for a while, the slave killed
//! with -9 again and again, the master killed during delivery, a full spool, a restart with
//! the master down. Results come from `-zDebugResults`; the slave logs each spooled ID, and
//! every one of them must end up in the master's database, once.

mod util;
use std::time::Duration;
use util::*;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn results_taken_while_the_master_is_down_all_arrive_once() {
    let dir = Scratch::with_seed_config("down");
    let (db, log) = (dir.path("dt-results.db"), dir.path("dt-slave.log"));
    let mut master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let mut slave = slave(&dir.0, addr, &[]);
    wait_for(LONG, || (stored_ids(&db).len() >= 2).then_some(())).expect("first results");

    master.kill();
    let before = spooled_ids(&log).len();
    // Several intervals without a master: the slave keeps measuring into its spool.
    wait_for(LONG, || {
        (spooled_ids(&log).len() >= before + 6
            && spool_results(&dir.path("dt-slave.spool")).len() >= 4)
            .then_some(())
    })
    .expect("the slave keeps measuring while the master is away");
    assert!(slave.alive());
    for file in spool_results(&dir.path("dt-slave.spool")) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert!(
            v.is_null() || v["Creds"]["Password"] == "",
            "no password in the spool: {text}"
        );
    }

    let _master = Proc::master_at(&dir.0, addr, &[]);
    wait_for(LONG, || {
        all_in(&spooled_ids(&log), &stored_ids(&db)).then_some(())
    })
    .expect("every spooled result reaches the master");
    // The slave reported its version and spool depth with its config requests.
    let (agent, depth, dropped) = master_slave_status(&db, "slave1").unwrap();
    assert!(agent.starts_with("dist-traceroute/"), "{agent}");
    assert!(depth.is_some());
    assert_eq!(dropped, 0);
    assert_eq!(
        terminate(&mut slave, LONG),
        Some(0),
        "SIGTERM ends the slave cleanly"
    );

    let spooled = spooled_ids(&log);
    let stored = stored_ids(&db);
    assert!(
        all_in(&spooled, &stored),
        "the shutdown flush delivered the rest"
    );
    assert_unique(&stored);
    assert_eq!(
        stored.len(),
        spooled.len(),
        "nothing stored that was not spooled"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("status: traced"),
        "a status line each interval"
    );
    assert!(text.contains("; 0 results wait in"), "{text}");
}

#[test]
fn kill_9_at_random_instants_loses_and_doubles_nothing() {
    let dir = Scratch::new("kill9");
    dir.write("dt-slaves.json", SLAVES);
    dir.write("dt-targets.json", &targets_with(12));
    let (db, log, spool) = (
        dir.path("dt-results.db"),
        dir.path("dt-slave.log"),
        dir.path("dt-slave.spool"),
    );
    let master = Proc::master(&dir.0, &[]);
    let fast = ["-interval=300ms", "-retry-max=200ms", "-max-pps=100000"];
    let mut kills = 0;
    let mut rng = fastrand::Rng::with_seed(7);
    while kills < 60 {
        let mut s = slave(&dir.0, master.addr(), &fast);
        std::thread::sleep(Duration::from_millis(rng.u64(20..250)));
        s.kill(); // SIGKILL
        kills += 1;
    }
    let taken = spooled_ids(&log);
    assert!(
        taken.len() >= 20,
        "results were spooled between kills: {}",
        taken.len()
    );
    // Whatever a kill cut short is either whole in the spool or absent, never torn.
    spool_results(&spool);
    assert_eq!(files_in(&spool, "rejected"), 0, "no corrupt spool entry");

    let starts = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("' of master ")
            .count()
    };
    let started_before = starts(&log);
    let mut last = slave(&dir.0, master.addr(), &fast);
    wait_for(LONG, || all_in(&taken, &stored_ids(&db)).then_some(()))
        .expect("every result spooled before a kill reaches the master");
    // The earlier slaves may have delivered everything already: SIGTERM only once this one is
    // running (before its start line it has no signal handler, and the signal kills it).
    wait_for(LONG, || (starts(&log) > started_before).then_some(()))
        .expect("the last slave starts");
    assert_eq!(terminate(&mut last, LONG), Some(0));
    let stored = stored_ids(&db);
    assert_unique(&stored);
    assert!(all_in(&spooled_ids(&log), &stored));
    eprintln!(
        "{kills} kills; {} results spooled before the last start, {} stored in all",
        taken.len(),
        stored.len()
    );
    assert_eq!(files_in(&spool, "rejected"), 0);
    assert_eq!(files_in(&spool, "tmp"), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("corrupt spool entry"),
        "no corrupt spool entry"
    );
}

#[test]
fn master_killed_during_delivery_loses_and_doubles_nothing() {
    let dir = Scratch::new("masterkill");
    dir.write("dt-slaves.json", SLAVES);
    dir.write("dt-targets.json", &targets_with(20));
    let (db, log) = (dir.path("dt-results.db"), dir.path("dt-slave.log"));
    // A backlog first: the slave measures with the master away.
    let mut master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let mut slave = slave(
        &dir.0,
        addr,
        &["-interval=200ms", "-retry-max=300ms", "-max-pps=100000"],
    );
    wait_for(LONG, || (!stored_ids(&db).is_empty()).then_some(())).expect("config fetched");
    master.kill();
    wait_for(LONG, || (spooled_ids(&log).len() >= 300).then_some(())).expect("a backlog");
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..6 {
        let mut m = Proc::master_at(&dir.0, addr, &[]);
        std::thread::sleep(Duration::from_millis(rng.u64(50..600)));
        m.kill(); // SIGKILL, mid-batch at times
    }
    let _master = Proc::master_at(&dir.0, addr, &[]);
    wait_for(LONG, || {
        all_in(&spooled_ids(&log), &stored_ids(&db)).then_some(())
    })
    .expect("everything arrives after the master's crashes");
    assert_eq!(terminate(&mut slave, LONG), Some(0));
    let stored = stored_ids(&db);
    assert_unique(&stored);
    assert!(all_in(&spooled_ids(&log), &stored));
}

#[test]
fn a_full_spool_drops_the_oldest_and_tells_the_master() {
    let dir = Scratch::with_seed_config("full");
    let (db, log, spool) = (
        dir.path("dt-results.db"),
        dir.path("dt-slave.log"),
        dir.path("dt-slave.spool"),
    );
    let mut master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let mut slave = slave(
        &dir.0,
        addr,
        &[
            "-interval=200ms",
            "-spool-max-results=5",
            "-retry-max=300ms",
        ],
    );
    wait_for(LONG, || (!stored_ids(&db).is_empty()).then_some(())).expect("config fetched");
    master.kill();
    let first_offline = spooled_ids(&log).len();
    wait_for(LONG, || {
        (spooled_ids(&log).len() >= first_offline + 15).then_some(())
    })
    .expect("results pile up");
    assert!(spool_results(&spool).len() <= 5, "the cap holds");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("spool full (5 results): dropped the oldest 1"),
        "{text}"
    );

    let _master = Proc::master_at(&dir.0, addr, &[]);
    let state = || -> u64 {
        let s = std::fs::read(spool.join("state.json")).unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&s)
            .ok()
            .and_then(|v| v["DroppedTotal"].as_u64())
            .unwrap_or(0)
    };
    wait_for(LONG, || {
        let dropped = state();
        (dropped >= 10 && master_dropped_total(&db, "slave1") == Some(dropped)).then_some(())
    })
    .expect("the master learns the dropped total");
    assert_eq!(terminate(&mut slave, LONG), Some(0));
    let spooled = spooled_ids(&log);
    let stored = stored_ids(&db);
    assert_unique(&stored);
    // The oldest results of the outage were dropped; the newest arrived.
    assert!(!stored.contains(&spooled[first_offline]));
    assert!(stored.contains(spooled.last().unwrap()));
    assert_eq!(
        (spooled.len() - stored.len()) as u64,
        state(),
        "exactly the dropped ones are missing"
    );
    // The total is kept across restarts.
    let dropped = state();
    let mut again = util::slave(&dir.0, addr, &["-spool-max-results=5"]);
    wait_for(LONG, || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains(&format!("({dropped} dropped in all)"))
            .then_some(())
    })
    .expect("a restarted slave reads its dropped total");
    again.kill();
}

#[test]
fn a_slave_restarted_while_the_master_is_down_measures_from_its_saved_config() {
    let dir = Scratch::with_seed_config("cache");
    let (db, log) = (dir.path("dt-results.db"), dir.path("dt-slave.log"));
    let mut master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let mut first = slave(&dir.0, addr, &[]);
    wait_for(LONG, || (!stored_ids(&db).is_empty()).then_some(())).expect("results");
    assert_eq!(terminate(&mut first, LONG), Some(0));
    master.kill();

    let before = spooled_ids(&log).len();
    let mut second = slave(&dir.0, addr, &[]);
    wait_for(LONG, || {
        (spooled_ids(&log).len() >= before + 3).then_some(())
    })
    .expect("measuring without a master");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("using the saved config (2 targets)"),
        "{text}"
    );

    let _master = Proc::master_at(&dir.0, addr, &[]);
    wait_for(LONG, || {
        all_in(&spooled_ids(&log), &stored_ids(&db)).then_some(())
    })
    .expect("they arrive once the master is back");
    assert_eq!(terminate(&mut second, LONG), Some(0));
    assert_unique(&stored_ids(&db));
}
