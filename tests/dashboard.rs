//! The dashboard in a real browser: Debian's Chromium, driven over the DevTools protocol,
//! against a master fed with scripted results. Every page loads without a console error
//! (a script error, a refused load, a policy violation), shows the slaves, targets, hops and
//! change marks the results say; the target graph has the nodes and edges of the current
//! paths; a result posted while the overview is open appears without a reload; a browser
//! without a login is sent to the form, refused with a wrong password and let in with the
//! right one. Screenshots of every page, at desktop and phone width, go to
//! `target/dashboard-screenshots/` (not committed).

mod util;
use headless_chrome::protocol::cdp::{Emulation, Log, Page, Runtime};
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::*;

const GOOGLE: &str = "76d96640-d357-47b3-ba50-5248a7604bc9";
const LKML: &str = "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee";
const WAIT: Duration = Duration::from_secs(15);

/// A result of `slave` for a target, `minute` minutes into a script that began 30 minutes
/// ago, over `hops` (`None`: silent); it reached when the last hop is the destination.
fn result(
    slave: &str,
    target: (&str, &str),
    minute: i64,
    hops: &[Option<&str>],
    reached: bool,
) -> Value {
    let password = if slave == "slave1" { "1234" } else { "123" };
    let at = chrono::Utc::now() - chrono::Duration::minutes(30) + chrono::Duration::minutes(minute);
    let n = hops.len();
    let hops: Vec<Value> = hops
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let a = (*a)?;
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            let rtt = 3_000_000 * (i as i64 + 1) + 100_000 * minute;
            Some(json!({
                "Success": true, "Address": ip.octets(), "Host": format!("r{}.example.net", i + 1),
                "N": 56, "ElapsedTime": rtt, "TTL": i + 1, "IP": a, "Replies": [rtt, rtt + 200_000],
                "Kind": if reached && i + 1 == n { "reached" } else { "time-exceeded" },
            }))
        })
        .collect();
    json!({
        "Creds": {"Name": slave, "Password": password},
        "ID": uuid::Uuid::new_v4().to_string(),
        "DateTime": at.to_rfc3339(),
        "Target": {"Name": target.1, "Address": if target.1 == "Google" { "www.google.at" } else { "lkml.org" }},
        "TargetID": target.0,
        "Success": reached, "HopCount": n, "Hops": hops, "Protocol": "udp", "Flow": 0, "Queries": 2,
    })
}

fn send(addr: std::net::SocketAddr, r: &Value) {
    let a = post(addr, "/api/v1/results", r.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
}

const A: [Option<&str>; 3] = [Some("10.0.0.1"), Some("10.0.0.2"), Some("10.0.0.3")];
const B: [Option<&str>; 3] = [Some("10.0.0.1"), Some("10.0.0.9"), Some("10.0.0.3")];
const C: [Option<&str>; 3] = [Some("10.0.1.1"), None, Some("10.0.0.3")];

/// Chromium, which the test script installs; without it this test fails (it never passes
/// by skipping).
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("the dashboard tests need Chromium: apt-get install chromium (scripts/test does)")
}

/// What went wrong in the page: console errors, uncaught exceptions, error log entries.
type Problems = Arc<Mutex<Vec<String>>>;

fn watch(tab: &Tab) -> Problems {
    use headless_chrome::protocol::cdp::types::Event;
    let problems: Problems = Arc::default();
    let sink = problems.clone();
    tab.enable_log().unwrap();
    tab.enable_runtime().unwrap();
    tab.add_event_listener(Arc::new(move |event: &Event| {
        let text = match event {
            Event::LogEntryAdded(e) if e.params.entry.level == Log::LogEntryLevel::Error => {
                format!("log: {} ({:?})", e.params.entry.text, e.params.entry.url)
            }
            Event::RuntimeExceptionThrown(e) => {
                format!("exception: {:?}", e.params.exception_details)
            }
            Event::RuntimeConsoleAPICalled(e)
                if e.params.Type == Runtime::ConsoleAPICalledEventTypeOption::Error =>
            {
                format!("console.error: {:?}", e.params.args)
            }
            _ => return,
        };
        sink.lock().unwrap().push(text);
    }))
    .unwrap();
    problems
}

fn eval(tab: &Tab, js: &str) -> Value {
    tab.evaluate(js, false)
        .unwrap_or_else(|e| panic!("{js}: {e}"))
        .value
        .unwrap_or(Value::Null)
}

/// An expression's value as JSON (arrays and objects come back by reference otherwise).
fn eval_json(tab: &Tab, js: &str) -> Value {
    let text = eval(tab, &format!("JSON.stringify({js})"));
    serde_json::from_str(text.as_str().unwrap_or("null")).unwrap()
}

fn eval_until(tab: &Tab, js: &str, what: &str) -> Value {
    wait_for(WAIT, || {
        let v = eval(tab, js);
        (!v.is_null() && v != Value::Bool(false)).then_some(v)
    })
    .unwrap_or_else(|| panic!("{what}: {js} stayed false"))
}

struct Shots(PathBuf);

impl Shots {
    fn new() -> Shots {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        Shots(dir)
    }

    fn take(&self, tab: &Tab, name: &str) {
        let png = tab
            .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        assert!(png.len() > 1000, "{name}: an empty screenshot");
        std::fs::write(self.0.join(format!("{name}.png")), png).unwrap();
    }
}

fn go(tab: &Tab, url: &str) {
    tab.navigate_to(url).unwrap();
    tab.wait_until_navigated().unwrap();
}

fn no_problems(problems: &Problems, page: &str) {
    let p = std::mem::take(&mut *problems.lock().unwrap());
    assert!(p.is_empty(), "{page}: {p:#?}");
}

#[test]
fn the_dashboard_shows_paths_live_behind_a_login() {
    let chromium = chromium();
    let dir = Scratch::with_seed_config("dashboard");
    dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "erin", "Password": "Erin-pw-31", "Role": "viewer"}]}"#,
    );
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let base = format!("http://{addr}");
    // slave1 → Google: three results on A, then B (a path change, confirmed by the second);
    // slave2 → Google on C (a silent hop, then the hop slave1's paths end at);
    // slave1 → LKML: not reached.
    for m in 0..3 {
        send(addr, &result("slave1", (GOOGLE, "Google"), m, &A, true));
    }
    for m in 3..6 {
        send(addr, &result("slave1", (GOOGLE, "Google"), m, &B, true));
    }
    for m in 0..3 {
        send(addr, &result("slave2", (GOOGLE, "Google"), m, &C, true));
    }
    send(
        addr,
        &result(
            "slave1",
            (LKML, "LKML"),
            1,
            &[Some("10.0.0.1"), None],
            false,
        ),
    );

    let profile = Scratch::new("dashboard-chromium");
    let browser = Browser::new(LaunchOptions {
        path: Some(chromium),
        headless: true,
        sandbox: false,
        window_size: Some((1280, 800)),
        user_data_dir: Some(profile.0.clone()),
        idle_browser_timeout: Duration::from_secs(120),
        args: vec![
            OsStr::new("--disable-gpu"),
            OsStr::new("--disable-dev-shm-usage"),
            OsStr::new("--disable-background-networking"),
            OsStr::new("--no-first-run"),
        ],
        ..LaunchOptions::default()
    })
    .expect("Chromium starts");
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(WAIT);
    let problems = watch(&tab);
    let shots = Shots::new();

    // Without a login: the form, not the page.
    go(&tab, &format!("{base}/"));
    tab.wait_for_element("input[name=password]").unwrap();
    assert!(
        tab.get_url().contains("/login?next=%2F"),
        "{}",
        tab.get_url()
    );
    assert_eq!(
        eval(&tab, "document.getElementById('matrix') === null"),
        true
    );
    shots.take(&tab, "login");
    let login = |password: &str| {
        tab.wait_for_element("input[name=name]")
            .unwrap()
            .click()
            .unwrap();
        tab.type_str("erin").unwrap();
        tab.wait_for_element("input[name=password]")
            .unwrap()
            .click()
            .unwrap();
        tab.type_str(password).unwrap();
        tab.press_key("Enter").unwrap();
    };
    login("not-her-password");
    let refused = tab
        .wait_for_element("#login-error")
        .unwrap()
        .get_inner_text()
        .unwrap();
    assert!(refused.contains("wrong name or password"), "{refused}");
    // The 401 of the refused login is the one error the console may show.
    problems.lock().unwrap().retain(|p| !p.contains("401"));
    no_problems(&problems, "login");
    login("Erin-pw-31");

    // The overview: both slaves, both targets, the change mark, reached and not.
    tab.wait_for_element("#matrix").unwrap();
    let rows = eval(
        &tab,
        "[...document.querySelectorAll('#matrix tbody tr')].map(r => r.dataset.s).join(',')",
    );
    assert_eq!(rows, "slave1,slave2");
    let cols = eval(
        &tab,
        "[...document.querySelectorAll('#matrix thead th[data-t]')].map(t => t.textContent).join(',')",
    );
    assert_eq!(cols, "Google,LKML");
    let cell = |slave: &str, col: usize| {
        eval(
            &tab,
            &format!(
                "(() => {{ const c = document.querySelector('#matrix tr[data-s={slave}]').cells[{col}]; \
                 return c.className + '|' + c.textContent; }})()"
            ),
        )
    };
    let google1 = cell("slave1", 1);
    let google1 = google1.as_str().unwrap();
    assert!(google1.starts_with("r "), "reached: {google1}");
    assert!(
        google1.contains(" c|"),
        "the path change is marked: {google1}"
    );
    assert!(google1.ends_with("|39.50"), "3 hops, 9.5 ms: {google1}");
    let lkml1 = cell("slave1", 2);
    assert!(
        lkml1.as_str().unwrap().starts_with("u|"),
        "not reached: {lkml1}"
    );
    assert_eq!(cell("slave2", 2), "|", "slave2 has no LKML result yet");
    let events = eval(&tab, "document.getElementById('events').textContent");
    assert!(events.as_str().unwrap().contains("path-change"), "{events}");
    eval_until(
        &tab,
        "document.getElementById('live').textContent === 'live'",
        "the stream opens",
    );
    shots.take(&tab, "overview");

    // A result stored while the page is open shows up in its cell, with no reload.
    eval(&tab, "window.notReloaded = true");
    send(
        addr,
        &result(
            "slave2",
            (LKML, "LKML"),
            20,
            &[Some("10.0.1.1"), Some("10.0.2.2")],
            true,
        ),
    );
    let live = eval_until(
        &tab,
        "(() => { const c = document.querySelector('#matrix tr[data-s=slave2]').cells[2]; \
         return c.textContent !== '' && c.className + '|' + c.textContent; })()",
        "the new result appears",
    );
    assert!(live.as_str().unwrap().starts_with("r "), "{live}");
    assert!(live.as_str().unwrap().ends_with("|28.00"), "{live}");
    assert_eq!(eval(&tab, "window.notReloaded === true"), true, "no reload");
    no_problems(&problems, "overview");

    // At phone width the overview still lays out (and is kept as a screenshot).
    let phone: Emulation::SetDeviceMetricsOverride = serde_json::from_value(
        json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}),
    )
    .unwrap();
    tab.call_method(phone).unwrap();
    go(&tab, &format!("{base}/"));
    tab.wait_for_element("#matrix").unwrap();
    let overflow = eval(
        &tab,
        "document.documentElement.scrollWidth <= window.innerWidth + 1",
    );
    assert_eq!(
        overflow, true,
        "the page fits the phone's width (the matrix scrolls inside)"
    );
    shots.take(&tab, "overview-phone");
    tab.call_method(Emulation::ClearDeviceMetricsOverride(None))
        .unwrap();

    // The target page: one graph of every slave's current path.
    go(&tab, &format!("{base}/ui/target?id={GOOGLE}"));
    tab.wait_for_element("#graph").unwrap();
    let nodes: BTreeSet<String> = eval_json(
        &tab,
        "[...document.querySelectorAll('#graph g.node')].map(n => n.dataset.key)",
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap().to_owned())
    .collect();
    let want_nodes: BTreeSet<String> = [
        "s:slave1",
        "s:slave2",
        "10.0.0.1",
        "10.0.0.9",
        "10.0.0.3",
        "10.0.1.1",
        "*:10.0.1.1>10.0.0.3#0",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        nodes, want_nodes,
        "A's 10.0.0.2 is no longer current; 10.0.0.3 is shared"
    );
    let edges: BTreeSet<String> = eval_json(
        &tab,
        "[...document.querySelectorAll('#graph path.edge')].map(e => e.dataset.from + '>' + e.dataset.to + '=' + e.dataset.count)",
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap().to_owned())
    .collect();
    let want_edges: BTreeSet<String> = [
        // Six results of slave1 crossed 10.0.0.1 (on A and B), three of them B's new hop.
        "s:slave1>10.0.0.1=6",
        "10.0.0.1>10.0.0.9=3",
        "10.0.0.9>10.0.0.3=3",
        "s:slave2>10.0.1.1=3",
        "10.0.1.1>*:10.0.1.1>10.0.0.3#0=3",
        "*:10.0.1.1>10.0.0.3#0>10.0.0.3=3",
    ]
    .map(String::from)
    .into();
    assert_eq!(edges, want_edges);
    let shared = eval(
        &tab,
        "document.querySelector('#graph g.node[data-key=\"10.0.0.3\"] title').textContent",
    );
    let shared = shared.as_str().unwrap();
    assert!(shared.contains("seen by slave1, slave2"), "{shared}");
    assert!(shared.contains("r3.example.net"), "{shared}");
    assert!(shared.contains("loss 0.0%"), "{shared}");
    let silent = eval(
        &tab,
        "document.querySelector('#graph g.node.silent title').textContent",
    );
    assert!(silent.as_str().unwrap().contains("no answer"), "{silent}");
    shots.take(&tab, "target");
    no_problems(&problems, "target");

    // The series page: the hop table, the chart with the change marked, the comparison.
    go(
        &tab,
        &format!("{base}/ui/series?slave=slave1&target={GOOGLE}"),
    );
    tab.wait_for_element("#hops").unwrap();
    let hops = eval(
        &tab,
        "[...document.querySelectorAll('#hops tbody tr')].map(r => r.cells[1].textContent + ' ' + r.cells[9].textContent.trim()).join(';')",
    );
    assert_eq!(
        hops,
        "10.0.0.1 10.0.0.1 100%;10.0.0.9 10.0.0.2 50% 10.0.0.9 50%;10.0.0.3 10.0.0.3 100%"
    );
    let points = eval(&tab, "document.querySelectorAll('#chart circle.pt').length");
    assert_eq!(points, 6);
    shots.take(&tab, "series");
    tab.wait_for_element("#chart a.change")
        .unwrap()
        .click()
        .unwrap();
    tab.wait_for_element("#compare-table").unwrap();
    let diff = eval(
        &tab,
        "[...document.querySelectorAll('#compare-table tr.diff')].map(r => r.textContent).join(';')",
    );
    assert_eq!(diff, "210.0.0.210.0.0.9", "only hop 2 differs");
    shots.take(&tab, "series-compare");
    no_problems(&problems, "series");

    for (page, id, want) in [
        ("/ui/slaves", "#slaves", "slave2"),
        ("/ui/targets", "#targets", "LKML"),
        ("/ui/config", ".config", "dt-targets.json"),
    ] {
        go(&tab, &format!("{base}{page}"));
        let text = tab.wait_for_element(id).unwrap().get_inner_text().unwrap();
        assert!(text.contains(want), "{page}: {text}");
        shots.take(&tab, page.trim_start_matches("/ui/"));
        no_problems(&problems, page);
    }

    // Dark, as the system asks: the same pages on a dark background.
    let light = eval(&tab, "getComputedStyle(document.body).backgroundColor");
    let media = |scheme: &str| Emulation::SetEmulatedMedia {
        media: None,
        features: Some(vec![Emulation::MediaFeature {
            name: "prefers-color-scheme".into(),
            value: scheme.into(),
        }]),
    };
    tab.call_method(media("dark")).unwrap();
    for (page, name) in [
        ("/", "overview-dark"),
        (&*format!("/ui/target?id={GOOGLE}"), "target-dark"),
    ] {
        go(&tab, &format!("{base}{page}"));
        tab.wait_for_element("main").unwrap();
        let dark = eval(&tab, "getComputedStyle(document.body).backgroundColor");
        assert_ne!(dark, light, "{page}: the dark scheme applies");
        shots.take(&tab, name);
        no_problems(&problems, page);
    }
    tab.call_method(media("light")).unwrap();
}
