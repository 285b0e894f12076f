//! A fleet: slaves with tags, targets that select their slaves by tag and by name, each
//! slave served exactly its targets (our slave and an original Go slave's plain request
//! alike), results arriving per selection, a result for a target a slave was not given
//! stored and marked, and the API filtered by tag.

mod util;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use util::*;

const SLAVES: &str = r#"{"Slaves": [
    {"Name": "eu1", "Password": "pw1", "Tags": ["eu", "fra1"]},
    {"Name": "eu2", "Password": "pw2", "Tags": ["eu", "backbone"]},
    {"Name": "us1", "Password": "pw3", "Tags": ["us", "backbone"]}
]}"#;

/// Target UUIDs by letter: A every slave, B tag eu, C tags eu and backbone, D us1 by name,
/// E tag us or eu1 by name.
fn uuid(letter: char) -> String {
    format!("00000000-0000-4000-8000-00000000000{letter}")
}

fn targets() -> String {
    let t = |letter: char, selector: Option<Value>| {
        let mut v = json!({"Name": format!("T{letter}"), "Address": format!("192.0.2.{}", letter as u8 - b'A' + 1)});
        if let Some(s) = selector {
            v["Slaves"] = s;
        }
        (uuid(letter), v)
    };
    let all: serde_json::Map<String, Value> = [
        t('A', None),
        t('B', Some(json!({"Tags": ["eu"]}))),
        t('C', Some(json!({"Tags": ["eu", "backbone"]}))),
        t('D', Some(json!({"Names": ["us1"]}))),
        t('E', Some(json!([{"Tags": ["us"]}, {"Names": ["eu1"]}]))),
    ]
    .into_iter()
    .collect();
    serde_json::to_string_pretty(&json!({
        "ReportURL": "", "Targets": all, "Retries": 1, "MaxHops": 30, "TimeoutMs": 500
    }))
    .unwrap()
}

/// What each slave is to trace.
fn expected() -> BTreeMap<&'static str, BTreeSet<String>> {
    let set = |l: &str| l.chars().map(uuid).collect::<BTreeSet<_>>();
    BTreeMap::from([
        ("eu1", set("ABE")),
        ("eu2", set("ABC")),
        ("us1", set("ADE")),
    ])
}

fn fleet_dir(name: &str) -> Scratch {
    let dir = Scratch::new(name);
    dir.write("dt-slaves.json", SLAVES);
    dir.write("dt-targets.json", &targets());
    dir
}

/// The targets document the master serves `name`, as an original Go slave asks for it.
fn config_of(addr: SocketAddr, name: &str, password: &str) -> Value {
    let a = post(
        addr,
        "/config/",
        json!({"Name": name, "Password": password})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

#[test]
fn each_slave_is_served_and_traces_exactly_its_targets() {
    let dir = fleet_dir("fleet-select");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let want = expected();
    for (name, password) in [("eu1", "pw1"), ("eu2", "pw2"), ("us1", "pw3")] {
        let doc = config_of(addr, name, password);
        let got: BTreeSet<String> = doc["Targets"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(got, want[name], "{name}: {doc:#}");
        // A valid document for the original slave: its fields, and no selectors.
        for key in ["ReportURL", "Retries", "MaxHops", "TimeoutMs"] {
            assert!(doc.get(key).is_some(), "{name}: {key} missing: {doc:#}");
        }
        assert!(
            doc["Targets"]
                .as_object()
                .unwrap()
                .values()
                .all(|t| t.get("Slaves").is_none() && t["Name"].is_string()),
            "{doc:#}"
        );
    }

    // Our slaves, one per name, with fake results: each reports its own targets only.
    let slaves: Vec<Proc> = [("eu1", "pw1"), ("eu2", "pw2"), ("us1", "pw3")]
        .iter()
        .map(|(name, password)| {
            let d = dir.0.join(name);
            std::fs::create_dir_all(&d).unwrap();
            let n = format!("-name={name}");
            let p = format!("-passwd={password}");
            let tags = format!("-tags={name}-self,lab");
            slave(&d, addr, &[&n, &p, &tags])
        })
        .collect();
    let reported = wait_for(Duration::from_secs(30), || {
        let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in results(addr, "") {
            by.entry(r["slave"].as_str().unwrap().to_owned())
                .or_default()
                .insert(r["target_id"].as_str().unwrap().to_owned());
        }
        let complete = want
            .iter()
            .all(|(name, targets)| by.get(*name).is_some_and(|got| got.is_superset(targets)));
        complete.then_some(by)
    })
    .expect("every slave reports its targets");
    for (name, targets) in &want {
        assert_eq!(&reported[*name], targets, "{name}");
    }
    assert!(
        results(addr, "")
            .iter()
            .all(|r| r.get("target_selected").is_none()),
        "a result of a selected target is not marked"
    );
    drop(slaves);

    // The slaves list shows the tags of the file, and apart from them those a slave gave
    // itself.
    let list = get(addr, "/api/v1/slaves").json();
    let eu1 = list["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "eu1")
        .unwrap();
    assert_eq!(eu1["tags"], json!(["eu", "fra1"]), "{list:#}");
    assert_eq!(eu1["reported_tags"], json!(["eu1-self", "lab"]), "{list:#}");

    // Filtered by tag: the slaves with it in the file (a tag a slave gave itself does not
    // count), and their series, results, paths, events, exports, metrics and dashboard.
    let names = |v: &Value, list: &str, key: &str| -> BTreeSet<String> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x[key].as_str().unwrap().to_owned())
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let backbone = get(addr, "/api/v1/slaves?tag=backbone").json();
    assert_eq!(names(&backbone, "slaves", "name"), set(&["eu2", "us1"]));
    let lab = get(addr, "/api/v1/slaves?tag=lab").json();
    assert_eq!(names(&lab, "slaves", "name"), set(&[]), "{lab:#}");
    let eu: BTreeSet<String> = results(addr, "tag=eu")
        .iter()
        .map(|r| r["slave"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(eu, set(&["eu1", "eu2"]));
    let us = get(addr, "/api/v1/paths/current?tag=us").json();
    assert_eq!(names(&us, "paths", "slave"), set(&["us1"]), "{us:#}");
    assert_eq!(names(&us, "paths", "target_id").len(), 3, "{us:#}");
    assert_eq!(get(addr, "/api/v1/events?tag=eu").status, 200);
    let csv = get(addr, "/api/v1/export/results.csv?tag=us").text();
    assert!(
        csv.lines().count() > 1 && csv.lines().skip(1).all(|l| l.contains(",us1,")),
        "{csv}"
    );
    let metrics = get(addr, "/metrics?tag=fra1").text();
    let info: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("dt_path_info{"))
        .collect();
    assert_eq!(info.len(), 3, "{metrics}");
    assert!(
        info.iter().all(|l| l.contains("slave=\"eu1\"")),
        "{info:#?}"
    );
    let page = get(addr, "/?tag=backbone").text();
    assert!(
        page.contains("data-s=\"eu2\"")
            && page.contains("data-s=\"us1\"")
            && !page.contains("data-s=\"eu1\""),
        "{page}"
    );
    assert!(
        page.contains("href=\"/?tag=fra1\""),
        "the tags link their views: {page}"
    );
    let list_page = get(addr, "/ui/slaves").text();
    assert!(
        list_page.contains(">backbone</a>") && list_page.contains("href=\"/?tag=us\""),
        "the slaves page shows each slave's tags: {list_page}"
    );
    for path in ["/api/v1/results?tag=a%20b", "/metrics?tag=a,b", "/?tag=%2F"] {
        assert_eq!(get(addr, path).status, 400, "{path}");
    }

    // A result for a target the slave was not given (eu1 and D): stored, and marked.
    let stray = json!({
        "Creds": {"Name": "eu1", "Password": "pw1"},
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": chrono::Utc::now().to_rfc3339(),
        "Target": {"Name": "TD", "Address": "192.0.2.4"},
        "TargetID": uuid('D'),
        "Success": true, "HopCount": 1,
        "Hops": [{"Success": true, "Address": [192, 0, 2, 4], "Host": "", "N": 56,
                  "ElapsedTime": 1_000_000, "TTL": 1, "IP": "192.0.2.4"}],
    });
    let a = post(addr, "/api/v1/results", stray.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let marked: Vec<Value> = results(addr, "slave=eu1")
        .into_iter()
        .filter(|r| r["target_id"] == uuid('D'))
        .collect();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0]["target_selected"], false, "{:#}", marked[0]);
    assert_eq!(marked[0]["target_known"], true);
}

/// A file without any selector is served to every slave byte for byte, as before.
#[test]
fn without_selectors_the_file_is_served_as_it_is() {
    let dir = Scratch::new("fleet-plain");
    dir.write("dt-slaves.json", SLAVES);
    let text = targets_with(3);
    dir.write("dt-targets.json", &text);
    let master = Proc::master(&dir.0, &[]);
    let a = post(
        master.addr(),
        "/config/",
        br#"{"Name": "eu1", "Password": "pw1"}"#,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.body, text.as_bytes());
}

/// Bad tags and selectors stop the master with the file, the place and the reason.
#[test]
fn bad_tags_and_selectors_are_refused_with_the_place() {
    let cases = [
        (
            SLAVES.replace("\"fra1\"", "\"fra 1\""),
            targets(),
            "tag 'fra 1' may hold letters, digits",
        ),
        (
            SLAVES.to_owned(),
            targets().replace(
                "\"Names\": [\n          \"us1\"",
                "\"Name\": [\n          \"us1\"",
            ),
            "unknown field `Name`",
        ),
        (
            SLAVES.to_owned(),
            targets().replace(
                "\"Slaves\": {\n        \"Tags\": [\n          \"eu\"\n        ]\n      }",
                "\"Slaves\": {}",
            ),
            "selects no slave",
        ),
        (
            SLAVES.to_owned(),
            targets().replace(
                "\"Slaves\": {\n        \"Tags\": [\n          \"eu\"\n        ]\n      }",
                "\"Slaves\": \"eu\"",
            ),
            "Slaves: must be a selector object",
        ),
    ];
    for (slaves, targets, why) in cases {
        let dir = Scratch::new("fleet-bad");
        dir.write("dt-slaves.json", &slaves);
        dir.write("dt-targets.json", &targets);
        assert!(
            slaves != SLAVES || targets != self::targets(),
            "the case changed nothing: {why}"
        );
        let (code, _, err) = run(&dir.0, std::path::Path::new(BIN), &["master"]);
        assert_ne!(code, 0, "{why}");
        assert!(err.contains(why), "{why}: {err}");
        assert!(err.contains("dt-"), "names the file: {err}");
    }
}

/// On-demand measurements pick slaves by tag: `tag:X`, or a plain `X` that is no slave's
/// name; an unknown tag is refused.
#[test]
fn a_measurement_from_a_tag_asks_the_slaves_with_it() {
    let dir = fleet_dir("fleet-measure");
    dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "olga", "Password": "Olga-op-1", "Role": "operator"}]}"#,
    );
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let auth = basic("olga", "Olga-op-1");
    let ask = |slaves: Value| {
        let body = json!({"target": "TA", "slaves": slaves}).to_string();
        let head = format!(
            "POST /api/v1/measurements HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        raw(addr, &bytes).expect("an answer")
    };
    let chosen = |a: &Answer| -> Vec<String> {
        let mut v: Vec<String> = a.json()["slaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    for (slaves, want) in [
        (json!(["tag:backbone"]), vec!["eu2", "us1"]),
        (json!(["eu"]), vec!["eu1", "eu2"]),
        (json!(["us1", "tag:eu", "eu1"]), vec!["eu1", "eu2", "us1"]),
    ] {
        let a = ask(slaves.clone());
        assert_eq!(a.status, 202, "{slaves}: {}", a.text());
        assert_eq!(chosen(&a), want, "{slaves}");
    }
    for (slaves, why) in [
        (json!(["tag:nobody"]), "no slave has the tag 'nobody'"),
        (json!(["nobody"]), "no slave named 'nobody'"),
        (json!(["tag:a b"]), "tag 'a b'"),
    ] {
        let a = ask(slaves.clone());
        assert_eq!(a.status, 400, "{slaves}: {}", a.text());
        assert!(a.text().contains(why), "{slaves}: {}", a.text());
    }
}
