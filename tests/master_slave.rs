//! Master and slave as real processes on loopback: results arrive, are stored once, survive a
//! master restart; the config is reloaded live.

mod util;
use std::time::Duration;
use util::*;

fn slave_args(addr: std::net::SocketAddr) -> Vec<String> {
    vec![
        "slave".into(),
        format!("-master={}", addr.ip()),
        format!("-master-port={}", addr.port()),
        "-name=slave1".into(),
        "-passwd=1234".into(),
        "-zDebugResults".into(),
        "-interval=1s".into(),
        "-config-interval=1s".into(),
    ]
}

fn spawn_slave(dir: &Scratch, addr: std::net::SocketAddr) -> Proc {
    let args = slave_args(addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(&dir.0, &args)
}

fn count(addr: std::net::SocketAddr) -> usize {
    results(addr, "").len()
}

#[test]
fn results_arrive_and_survive_a_master_restart() {
    let dir = Scratch::with_seed_config("restart");
    let mut master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let _slave = spawn_slave(&dir, addr);
    let before = wait_for(Duration::from_secs(20), || {
        let n = count(addr);
        (n >= 4).then_some(n)
    })
    .expect("results arrive");
    let stored = results(addr, "");
    for r in &stored {
        assert_eq!(r["slave"], "slave1");
        assert!(r["target_known"].as_bool().unwrap());
        assert!(r["path_id"].as_str().unwrap().len() == 16);
        assert!(!r["hops"].as_array().unwrap().is_empty());
    }
    // Both targets are traced, each on a stable fake path.
    let google: Vec<_> = stored
        .iter()
        .filter(|r| r["target_name"] == "Google")
        .collect();
    assert!(!google.is_empty() && stored.iter().any(|r| r["target_name"] == "LKML"));
    assert!(google.iter().all(|r| r["path_id"] == google[0]["path_id"]));

    master.kill();
    std::thread::sleep(Duration::from_secs(2));
    let master = Proc::master_at(&dir.0, addr, &[]);
    assert!(
        count(master.addr()) >= before,
        "stored results survive the restart"
    );
    // The slave kept going while the master was away and delivers to the new one.
    wait_for(Duration::from_secs(30), || {
        (count(addr) >= before + 4).then_some(())
    })
    .expect("the slave delivers to the restarted master");
    let ids: Vec<String> = results(addr, "")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no result stored twice");
}

#[test]
fn a_repeated_result_id_is_stored_once() {
    let dir = Scratch::with_seed_config("repeat");
    let master = Proc::master(&dir.0, &[]);
    for _ in 0..3 {
        let a = post(master.addr(), "/results/", GO_RESULT.as_bytes());
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["Success"], true);
    }
    let a = post(master.addr(), "/api/v1/results", GO_RESULT.as_bytes());
    assert_eq!(a.json()["duplicate"], true);
    assert_eq!(count(master.addr()), 1);
}

#[test]
fn config_edits_apply_live_and_broken_edits_keep_the_last_good_config() {
    let dir = Scratch::with_seed_config("reload");
    let master = Proc::master(&dir.0, &["-reload-interval=200ms"]);
    let addr = master.addr();
    let creds = br#"{"Name":"slave1","Password":"1234"}"#;
    assert_eq!(post(addr, "/config/", creds).text(), TARGETS);

    let edited = TARGETS.replace("\"MaxHops\": 30", "\"MaxHops\": 12");
    dir.write("dt-targets.json", &edited);
    wait_for(Duration::from_secs(10), || {
        (post(addr, "/config/", creds).text() == edited).then_some(())
    })
    .expect("a valid edit is served");

    dir.write("dt-targets.json", "{\"Targets\": {");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        post(addr, "/config/", creds).text(),
        edited,
        "a broken edit keeps the last good one"
    );
    let log = std::fs::read_to_string(dir.path("dt-master.log")).unwrap();
    assert!(
        log.contains("config edit rejected, keeping the last good config"),
        "{log}"
    );
    // Putting the good text back is confirmed in the log, though nothing changed.
    dir.write("dt-targets.json", &edited);
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path("dt-master.log"))
            .unwrap()
            .contains("config files are good again")
            .then_some(())
    })
    .expect("the fix is confirmed in the log");

    // A new slave in the slaves file may log in without a restart; a removed one may not.
    dir.write(
        "dt-slaves.json",
        r#"{"Slaves": [{"Name": "slave3", "Password": "abc"}]}"#,
    );
    dir.write("dt-targets.json", TARGETS);
    wait_for(Duration::from_secs(10), || {
        (post(addr, "/config/", br#"{"Name":"slave3","Password":"abc"}"#).status == 200)
            .then_some(())
    })
    .expect("the new slave is accepted");
    assert_eq!(post(addr, "/config/", creds).status, 401);
}

#[test]
fn slave_survives_a_master_that_is_not_there_yet() {
    let dir = Scratch::with_seed_config("late");
    // Reserve a port, then free it for the master started later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut slave = spawn_slave(&dir, addr);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        slave.alive(),
        "the slave keeps running while the master is down"
    );
    let master = Proc::master_at(&dir.0, addr, &[]);
    wait_for(Duration::from_secs(30), || {
        (count(master.addr()) >= 2).then_some(())
    })
    .expect("results arrive once the master is up");
    let log = std::fs::read_to_string(dir.path("dt-slave.log")).unwrap();
    assert!(log.contains("cannot fetch the config"), "{log}");
}

#[test]
fn wrong_password_slave_is_refused_and_nothing_stored() {
    let dir = Scratch::with_seed_config("wrongpw");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let args = slave_args(addr);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args[4] = "-passwd=wrong";
    let mut slave = Proc::spawn(&dir.0, &args);
    std::thread::sleep(Duration::from_secs(4));
    assert!(slave.alive());
    assert_eq!(count(addr), 0);
    let log = std::fs::read_to_string(dir.path("dt-slave.log")).unwrap();
    assert!(
        log.contains("refused this slave's name or password (401)"),
        "{log}"
    );
}

/// Without -zDebugResults the slave runs real traces (as root): loopback targets in both
/// families, with the protocols the targets ask for.
#[test]
fn real_traces_without_the_debug_flag() {
    if !have_root("a real trace") {
        return;
    }
    let dir = Scratch::with_seed_config("real");
    dir.write(
        "dt-targets.json",
        r#"{"ReportURL": "", "Targets": {
            "0b5a3c1e-6f0d-4c55-9a43-2f1f4bbd8a11": {"Name": "Lo4", "Address": "127.0.0.1"},
            "5e1f7d2a-3b9c-4e8d-8a6f-1c2d3e4f5a6b": {"Name": "Lo6", "Address": "::1", "Protocol": "icmp"},
            "7d0c9a51-2f8e-4b5e-9a7c-0f3b6c2d1e4f": {"Name": "Nowhere", "Address": "no-such-host.invalid"}
        }, "Retries": 1, "MaxHops": 5, "TimeoutMs": 300}"#,
    );
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let args = slave_args(addr);
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "-zDebugResults")
        .collect();
    let _slave = Proc::spawn(&dir.0, &args);
    let got = wait_for(Duration::from_secs(20), || {
        let r = results(addr, "");
        let names: std::collections::HashSet<_> = r
            .iter()
            .map(|x| x["target_name"].as_str().unwrap().to_owned())
            .collect();
        (names.len() == 3).then_some(r)
    })
    .expect("results for all three targets");
    let lo4 = got.iter().find(|r| r["target_name"] == "Lo4").unwrap();
    assert_eq!(lo4["success"], true);
    assert_eq!(lo4["protocol"], "udp");
    assert_eq!(lo4["path"], "127.0.0.1 | reached");
    assert!(lo4["hops"][0]["rtt_ns"].as_i64().unwrap() > 0);
    let lo6 = got.iter().find(|r| r["target_name"] == "Lo6").unwrap();
    assert_eq!(lo6["protocol"], "icmp");
    assert_eq!(lo6["path"], "::1 | reached");
    let nowhere = got.iter().find(|r| r["target_name"] == "Nowhere").unwrap();
    assert_eq!(nowhere["success"], false);
    assert!(
        nowhere["error"]
            .as_str()
            .unwrap()
            .contains("cannot resolve"),
        "{nowhere}"
    );
    assert_eq!(nowhere["path"], "| error");
}

/// A target's `Flows` makes our slave trace that many flows of it each round, each flow its
/// own result and its own series on the master; a target without it stays at flow 0.
#[test]
fn a_target_of_several_flows_is_traced_on_each() {
    let dir = Scratch::with_seed_config("flows");
    dir.write(
        "dt-targets.json",
        &TARGETS.replace("\"lkml.org\"", "\"lkml.org\", \"Flows\": 3"),
    );
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let _slave = slave(&dir.0, addr, &[]);
    let flows_of = |name: &str, rs: &[serde_json::Value]| {
        let mut f: Vec<i64> = rs
            .iter()
            .filter(|r| r["target_name"] == name)
            .map(|r| r["flow"].as_i64().unwrap())
            .collect();
        f.sort();
        f.dedup();
        f
    };
    let got = wait_for(Duration::from_secs(20), || {
        let rs = results(addr, "");
        (flows_of("LKML", &rs) == [0, 1, 2]
            && rs.iter().filter(|r| r["target_name"] == "LKML").count() >= 6)
            .then_some(rs)
    })
    .expect("flows 0, 1 and 2 of LKML, twice");
    assert_eq!(flows_of("Google", &got), [0]);
    let current = get(addr, "/api/v1/paths/current?target=LKML").json();
    assert_eq!(current["paths"].as_array().unwrap().len(), 3, "{current:#}");
}
