//! Who may read, seen from an address that is not loopback: the master runs in a network
//! namespace and the test talks to it over a veth pair from the root namespace, so the master
//! sees a real remote address. Every read endpoint refuses without a login (403 without a users
//! file, 401 with one) and answers with HTTP Basic or a bearer token; wrong passwords get 401,
//! then 429; the slave endpoints are untouched; loopback inside the namespace still reads
//! without a users file; edits of the users file apply while the master runs.

mod netns;
mod util;

use netns::Lab;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use util::sse::Stream;
use util::*;

/// Every read: the query API, each export, the metrics.
const READS: [&str; 11] = [
    "/api/v1/slaves",
    "/api/v1/targets",
    "/api/v1/results",
    "/api/v1/paths/current",
    "/api/v1/paths/history",
    "/api/v1/events",
    "/api/v1/export/results.jsonl",
    "/api/v1/export/results.csv",
    "/api/v1/export/atlas.json",
    "/api/v1/export/graph.dot?target=Google",
    "/metrics",
];

/// The dashboard's pages: reads too, answered in HTML (a 303 to the login form instead of a
/// 401, a page saying how to add a user instead of the JSON 403).
const PAGES: [&str; 6] = [
    "/",
    "/ui/targets",
    "/ui/slaves",
    "/ui/config",
    "/ui/target?id=Google",
    "/ui/series?slave=slave1&target=Google",
];

/// A master in its own namespace, reached from the root namespace over a veth pair.
struct Site {
    /// The master's folder (config, log, database).
    dir: Scratch,
    /// The master's namespace.
    ns: String,
    /// The master's address on the veth.
    inner: IpAddr,
    /// The root namespace's address on the veth: what the master sees as the client.
    outer: IpAddr,
    /// Holds the namespace (and so the veth pair) until the site is dropped.
    _lab: Lab,
}

impl Site {
    /// `None` when the test cannot run here (not root; under CI=true that panics instead).
    fn new(tag: &str) -> Option<Site> {
        if !have_root("the read-access test (network namespaces)") {
            return None;
        }
        let mut lab = Lab::new(tag);
        let ns = lab.node("m", true);
        let root_end = lab.link_to_root("m", "up0");
        // A /30 of 198.18.0.0/15 (benchmark testing, never routed) per site, so that the
        // sites of one run, and of runs side by side, do not share addresses.
        static SITES: AtomicU32 = AtomicU32::new(0);
        let index = (std::process::id() * 8 + SITES.fetch_add(1, Ordering::Relaxed)) % 32768;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + index * 4;
        let (outer, inner) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        netns::run(&[
            "ip",
            "addr",
            "add",
            &format!("{outer}/30"),
            "dev",
            &root_end,
        ]);
        lab.ip("m", &format!("addr add {inner}/30 dev up0\n"));
        Some(Site {
            dir: Scratch::with_seed_config(tag),
            ns,
            inner: inner.into(),
            outer: outer.into(),
            _lab: lab,
        })
    }

    /// Starts the master inside the namespace, on every address, with `extra` flags; gives
    /// the process and the address the root namespace reaches it on.
    fn master(&self, extra: &[&str]) -> (Proc, SocketAddr) {
        let mut args = vec![
            "netns",
            "exec",
            &self.ns,
            BIN,
            "master",
            "-listen",
            "0.0.0.0:0",
            "-reload-interval",
            "200ms",
        ];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn_program("ip", &self.dir.0, &args);
        let bound = p.read_listen_line();
        (p, SocketAddr::new(self.inner, bound.port()))
    }

    /// A GET from inside the namespace, over its loopback (bash's /dev/tcp: no extra tool).
    fn get_on_loopback(&self, port: u16, path: &str) -> Answer {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && \
             printf 'GET {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3 && \
             cat <&3"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "bash", "-c", &script])
            .output()
            .expect("spawn bash in the namespace");
        parse_answer(&out.stdout).unwrap_or_else(|| {
            panic!(
                "no answer on loopback: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("dt-master.log")).unwrap_or_default()
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The error text of a JSON error answer.
fn error_of(a: &Answer) -> String {
    a.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text: {}", a.text()))
        .to_owned()
}

/// The seed slave's credentials work on the slave endpoints from `addr`'s client side, and
/// one result is stored (so the graph export has a path to draw).
fn slave_endpoints_work(addr: SocketAddr) {
    let a = post(addr, "/config/", br#"{"Name":"slave1","Password":"1234"}"#);
    assert_eq!(a.status, 200, "POST /config/: {}", a.text());
    assert!(a.text().contains("76d96640-d357-47b3-ba50-5248a7604bc9"));
    let a = post(addr, "/results/", GO_RESULT.as_bytes());
    assert_eq!(a.status, 200, "POST /results/: {}", a.text());
    assert_eq!(a.json()["Success"], true, "{}", a.text());
    let other = GO_RESULT.replace("3a1b7c55", "e9bbc544");
    let a = post(addr, "/api/v1/results", other.as_bytes());
    assert_eq!(a.status, 200, "POST /api/v1/results: {}", a.text());
    let a = post(addr, "/config/", br#"{"Name":"slave1","Password":"wrong"}"#);
    assert_eq!(a.status, 401, "the slave side keeps its own check");
}

fn hash(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(password.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `dist-traceroute new-token`: the token and the `"Tokens": […]` line.
fn new_token() -> (String, String) {
    let out = Command::new(BIN).arg("new-token").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let token = lines.next().unwrap().to_owned();
    let entry = lines.next().unwrap().to_owned();
    assert!(entry.starts_with("\"Tokens\": [\"sha256:"), "{entry}");
    (token, entry)
}

#[test]
fn without_a_users_file_only_loopback_reads() {
    let Some(site) = Site::new("ra") else { return };
    let (_master, addr) = site.master(&[]);
    slave_endpoints_work(addr);
    for path in READS {
        let a = get(addr, path);
        assert_eq!(a.status, 403, "{path}: {}", a.text());
        let e = error_of(&a);
        for want in [
            "./dt-users.json",
            "dist-traceroute hash-password",
            "\"Users\"",
        ] {
            assert!(e.contains(want), "{path}: {want} missing from {e}");
        }
        // A login changes nothing where there are no users.
        let a = get_as(addr, path, &basic("alice", "x"));
        assert_eq!(a.status, 403, "{path}");
    }
    for path in PAGES {
        let a = get(addr, path);
        assert_eq!(a.status, 403, "{path}: {}", a.text());
        assert!(header(&a, "Content-Type").unwrap().starts_with("text/html"));
        assert!(a.text().contains("dist-traceroute hash-password"), "{path}");
    }
    let a = Stream::open(addr, "/api/v1/stream", &[]);
    assert_eq!(a.status, 403, "the stream: {}", a.head);
    // Neither the health check nor the login form shows anything to protect.
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/login").status, 200);
    for path in READS.iter().chain(&PAGES) {
        let a = site.get_on_loopback(addr.port(), path);
        assert_eq!(a.status, 200, "{path} on loopback: {}", a.text());
    }
    let log = site.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("read refused (403") && l.contains(&site.outer.to_string()))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "one line for many refused reads from one address:\n{log}"
    );
    assert!(refusals[0].contains("INFO"), "{}", refusals[0]);
}

#[test]
fn public_read_serves_anyone() {
    let Some(site) = Site::new("rp") else { return };
    let (_master, addr) = site.master(&["-public-read"]);
    slave_endpoints_work(addr);
    for path in READS {
        let a = get(addr, path);
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    let log = site.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("-public-read")),
        "{log}"
    );
}

#[test]
fn with_a_users_file_reads_need_a_login() {
    let Some(site) = Site::new("ru") else { return };
    let (token, tokens) = new_token();
    site.dir.write(
        "dt-users.json",
        &format!(
            r#"{{"Users": [
    {{"Name": "alice", "PasswordHash": "{}", "Role": "viewer", {tokens}}},
    {{"Name": "bob", "Password": "Bob-plain-1", "Role": "operator"}}
]}}"#,
            hash("Alice-hashed-1")
        ),
    );
    let (_master, addr) = site.master(&[]);
    slave_endpoints_work(addr);
    let alice = basic("alice", "Alice-hashed-1");
    let bob = basic("bob", "Bob-plain-1");
    let bearer = format!("Bearer {token}");
    for path in READS {
        let a = get(addr, path);
        assert_eq!(a.status, 401, "{path}: {}", a.text());
        assert_eq!(
            header(&a, "WWW-Authenticate"),
            Some("Basic realm=\"dist-traceroute\""),
            "{path}"
        );
        assert!(error_of(&a).contains("login"), "{path}");
        for auth in [&alice, &bob, &bearer] {
            let a = get_as(addr, path, auth);
            assert_eq!(a.status, 200, "{path}: {}", a.text());
        }
    }
    for path in PAGES {
        let a = get(addr, path);
        assert_eq!(a.status, 303, "{path}: {}", a.text());
        let to = header(&a, "Location").unwrap();
        assert!(to.starts_with("/login?next=%2F"), "{path}: {to}");
        for auth in [&alice, &bob, &bearer] {
            let a = get_as(addr, path, auth);
            assert_eq!(a.status, 200, "{path}: {}", a.text());
        }
    }
    let a = Stream::open(addr, "/api/v1/stream", &[]);
    assert_eq!(a.status, 401, "the stream without a login: {}", a.head);
    let auth = format!("Authorization: {bearer}");
    let a = Stream::open(addr, "/api/v1/stream", &[&auth]);
    assert_eq!(a.status, 200, "the stream with a token: {}", a.head);
    drop(a);
    // Loopback needs the login too once there are users.
    assert_eq!(site.get_on_loopback(addr.port(), "/metrics").status, 401);

    // Wrong logins: 401 after the delay, five of them at once; then the address is blocked.
    let wrong = [
        basic("alice", "Alice-hashed-2"),
        basic("bob", "bob-plain-1"),
        basic("carol", "Bob-plain-1"),
        "Bearer not-a-token-of-anyone".to_owned(),
        basic("alice", ""),
    ];
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let threads: Vec<_> = wrong
            .iter()
            .map(|auth| s.spawn(move || get_as(addr, "/api/v1/results", auth)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(a.status, 401, "{}", a.text());
        assert!(header(a, "WWW-Authenticate").is_some());
    }
    // Failing for several names blocks the address for every name that never logged in
    // from it, but not for the users that did (alice, bob): they read on.
    let a = get_as(addr, "/api/v1/results", &basic("carol", "again-wrong"));
    assert_eq!(a.status, 429, "{}", a.text());
    assert!(header(&a, "Retry-After").is_some());
    let a = get_as(addr, "/api/v1/results", &basic("dave", "anything"));
    assert_eq!(a.status, 429, "a new name waits out the address's block");
    let a = get_as(addr, "/api/v1/results", &alice);
    assert_eq!(
        a.status, 200,
        "a user known at this address is not locked out"
    );

    let log = site.log();
    for secret in [
        "Alice-hashed",
        "Bob-plain",
        "bob-plain",
        token.as_str(),
        "not-a-token-of-anyone",
    ] {
        assert!(!log.contains(secret), "the log shows {secret}:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("too many failed logins") && l.contains(&site.outer.to_string())),
        "{log}"
    );
}

#[test]
fn users_file_edits_apply_while_the_master_runs() {
    let Some(site) = Site::new("re") else { return };
    let (_master, addr) = site.master(&[]);
    assert_eq!(get(addr, "/api/v1/slaves").status, 403);
    let carol = basic("carol", "Carol-1");
    let dave = basic("dave", "Dave-22");
    let reads_as = |auth: &str| {
        wait_for(Duration::from_secs(10), || {
            (get_as(addr, "/api/v1/slaves", auth).status == 200).then_some(())
        })
    };

    site.dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "carol", "Password": "Carol-1", "Role": "viewer"}]}"#,
    );
    reads_as(&carol).expect("a new users file is read while the master runs");
    assert_eq!(get(addr, "/api/v1/slaves").status, 401);

    site.dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "carol", "Password": "Carol-1", "Role": "viewer"},
                      {"Name": "dave", "Password": "Dave-22", "Role": "viewer"}]}"#,
    );
    reads_as(&dave).expect("a user added while the master runs reads");

    // A broken edit is logged and the last good users stay.
    site.dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "dave", "Password": "Dave-22", "Role": "king"}]}"#,
    );
    wait_for(Duration::from_secs(10), || {
        site.log()
            .contains("users file edit rejected")
            .then_some(())
    })
    .expect("the broken edit is logged");
    assert!(site.log().contains("Role: 'king' is not one of"));
    assert_eq!(get_as(addr, "/api/v1/slaves", &carol).status, 200);
    assert_eq!(get_as(addr, "/api/v1/slaves", &dave).status, 200);

    // No users file again: loopback only.
    std::fs::remove_file(site.dir.path("dt-users.json")).unwrap();
    wait_for(Duration::from_secs(10), || {
        (get(addr, "/api/v1/slaves").status == 403).then_some(())
    })
    .expect("without the users file, reads from elsewhere get 403 again");
    assert_eq!(
        site.get_on_loopback(addr.port(), "/api/v1/slaves").status,
        200
    );
}

/// `loadgen` reads the API of a master with a users file (on loopback, which then needs the
/// login too) when given `--read-user`, and says so when it is missing.
#[test]
fn loadgen_reads_with_read_user() {
    let dir = Scratch::new("loadgen-read");
    let shape = ["--slaves", "2", "--targets", "2"];
    let mut args = vec!["loadgen", "--write-config", "lg"];
    args.extend(shape);
    let (code, _, err) = run(&dir.0, BIN.as_ref(), &args);
    assert_eq!(code, 0, "{err}");
    dir.write(
        "lg/dt-users.json",
        r#"{"Users": [{"Name": "reader", "Password": "Reader-pw-1", "Role": "viewer"}]}"#,
    );
    let master = Proc::master(
        &dir.0,
        &[
            "-config",
            "lg/dt-slaves.json",
            "-targets",
            "lg/dt-targets.json",
            "-users",
            "lg/dt-users.json",
        ],
    );
    let url = format!("http://{}", master.addr());
    let load = |extra: &[&str]| {
        let mut args = vec![
            "loadgen",
            "--master",
            &url,
            "--connections",
            "2",
            "--results",
            "20",
            "--warmup",
            "0",
            "--verify",
        ];
        args.extend(shape);
        args.extend_from_slice(extra);
        run_with_timeout(&dir.0, BIN.as_ref(), &args, Duration::from_secs(120))
    };
    let (code, out, err) = load(&[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        err.contains("HTTP 401") && err.contains("--read-user"),
        "{err}"
    );
    let (code, out, err) = load(&[
        "--read-user",
        "reader:Reader-pw-1",
        "--probe",
        "/api/v1/slaves",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        !err.contains("loadgen: probe"),
        "the probe was refused: {err}"
    );
}

/// A request with extra header lines, as a browser would send it.
fn send(addr: SocketAddr, method: &str, path: &str, headers: &[String], body: &str) -> Answer {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    raw(addr, r.as_bytes()).expect("no answer")
}

/// The dashboard's login from another address: a form post from this master's own origin
/// sets a session cookie (HttpOnly, SameSite=Strict) that opens the pages, the API and the
/// stream; a wrong password gets the form again after the delay; a post from another origin
/// and a forged or stale cookie are refused; logging out drops the cookie.
#[test]
fn the_dashboard_login_opens_pages_api_and_stream() {
    let Some(site) = Site::new("rl") else { return };
    site.dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "erin", "Password": "Erin-pw-31", "Role": "viewer"}]}"#,
    );
    let (_master, addr) = site.master(&[]);
    slave_endpoints_work(addr);
    let origin = format!("Origin: http://{addr}");
    let form = "application/x-www-form-urlencoded";
    let login = |body: &str, origin: &str| {
        send(
            addr,
            "POST",
            "/login",
            &[origin.to_owned(), format!("Content-Type: {form}")],
            body,
        )
    };

    let a = get(addr, "/ui/slaves");
    assert_eq!(a.status, 303);
    let form_page = get(addr, header(&a, "Location").unwrap());
    assert_eq!(form_page.status, 200);
    assert!(form_page.text().contains("name=\"password\""));
    assert!(
        form_page.text().contains("value=\"/ui/slaves\""),
        "the form goes back: {}",
        form_page.text()
    );

    let started = std::time::Instant::now();
    let a = login("name=erin&password=wrong&next=%2Fui%2Fslaves", &origin);
    assert_eq!(a.status, 401, "{}", a.text());
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the failed-login delay"
    );
    assert!(a.text().contains("wrong name or password"));
    assert!(header(&a, "Set-Cookie").is_none());

    let a = login(
        "name=erin&password=Erin-pw-31&next=%2Fui%2Fslaves",
        "Origin: http://evil.example",
    );
    assert_eq!(a.status, 403, "a post from another site: {}", a.text());
    assert!(header(&a, "Set-Cookie").is_none());
    let a = login(
        "name=erin&password=Erin-pw-31&next=%2Fui%2Fslaves",
        "X-None: 1",
    );
    assert_eq!(a.status, 403, "a post without Origin");

    // A next that leaves the master goes to / instead.
    let a = login(
        "name=erin&password=Erin-pw-31&next=%2F%2Fevil.example%2F",
        &origin,
    );
    assert_eq!(a.status, 303, "{}", a.text());
    assert_eq!(header(&a, "Location"), Some("/"));
    let a = login("name=erin&password=Erin-pw-31&next=%2Fui%2Fslaves", &origin);
    assert_eq!(a.status, 303, "{}", a.text());
    assert_eq!(header(&a, "Location"), Some("/ui/slaves"));
    let set = header(&a, "Set-Cookie").unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let cookie = format!("Cookie: {}", set.split(';').next().unwrap());
    for path in PAGES.iter().chain(&READS) {
        let a = send(addr, "GET", path, std::slice::from_ref(&cookie), "");
        assert_eq!(a.status, 200, "{path} with the cookie: {}", a.text());
    }
    let a = send(addr, "GET", "/", std::slice::from_ref(&cookie), "");
    assert!(
        a.text().contains("erin (viewer)"),
        "the page names the user"
    );
    let a = Stream::open(addr, "/api/v1/stream", &[&cookie]);
    assert_eq!(a.status, 200, "the stream with the cookie: {}", a.head);
    drop(a);

    // A cookie with one character changed, or another user's name, opens nothing.
    let value = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("dt_session=");
    let (payload, mac) = value.split_once('.').unwrap();
    let flipped = if mac.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("Cookie: dt_session={payload}.{flipped}{}", &mac[1..]);
    let a = send(addr, "GET", "/ui/slaves", &[forged], "");
    assert_eq!(a.status, 303, "a forged cookie");

    // A new password ends the sessions made with the old one.
    site.dir.write(
        "dt-users.json",
        r#"{"Users": [{"Name": "erin", "Password": "Erin-pw-32", "Role": "viewer"}]}"#,
    );
    wait_for(Duration::from_secs(10), || {
        (send(
            addr,
            "GET",
            "/api/v1/slaves",
            std::slice::from_ref(&cookie),
            "",
        )
        .status
            == 401)
            .then_some(())
    })
    .expect("a password change ends the session");

    let a = send(addr, "POST", "/logout", std::slice::from_ref(&origin), "");
    assert_eq!(a.status, 303);
    assert!(header(&a, "Set-Cookie").unwrap().contains("Max-Age=0"));
    let log = site.log();
    assert!(!log.contains("Erin-pw"), "the log shows a password:\n{log}");
}
