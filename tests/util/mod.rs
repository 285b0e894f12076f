//! Test harness: runs the real binary in a scratch folder, talks HTTP to it, cleans up on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod pg;
pub mod sse;
pub mod stored;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dist-traceroute");

/// The seed README's slaves file.
pub const SLAVES: &str = r#"{
	"Slaves":
	[
		{"Name": "slave1", "Password": "1234"},
		{"Name": "slave2", "Password": "123"}
	]
}"#;

/// A targets file with two targets.
pub const TARGETS: &str = r#"{
        "ReportURL": "http://localhost:8990/results/post",
        "Targets": {
                "76d96640-d357-47b3-ba50-5248a7604bc9": {"Name": "Google", "Address": "www.google.at"},
                "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee": {"Name": "LKML", "Address": "lkml.org"}
        },
        "Retries": 1,
        "MaxHops": 30,
        "TimeoutMs": 500
}"#;

/// An original Go slave's result body, exactly as PROTOCOL.md shows it.
pub const GO_RESULT: &str = r#"{"Creds":{"Name":"slave1","Password":"1234"},"ID":"3a1b7c55-eabe-4536-a9ed-ec6cbdaaedb0","DateTime":"2019-02-07T21:06:10.803086+01:00","Target":{"Name":"Google","Address":"www.google.at"},"Success":true,"HopCount":17,"Hops":[{"Success":true,"Address":[192,168,1,1],"Host":"modem.home.","N":52,"ElapsedTime":2040972,"TTL":1}]}"#;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("dt-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    pub fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path(file), text).unwrap();
    }

    /// The seed's two config files.
    pub fn with_seed_config(name: &str) -> Scratch {
        let s = Scratch::new(name);
        s.write("dt-slaves.json", SLAVES);
        s.write("dt-targets.json", TARGETS);
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running process of the binary, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: Option<SocketAddr>,
}

impl Proc {
    /// Runs `dist-traceroute ARGS` in `dir`.
    pub fn spawn(dir: &Path, args: &[&str]) -> Proc {
        Proc::spawn_program(BIN, dir, args)
    }

    pub fn spawn_program(program: impl AsRef<std::ffi::OsStr>, dir: &Path, args: &[&str]) -> Proc {
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the binary");
        Proc { child, addr: None }
    }

    /// A master in `dir` on a free loopback port, with extra flags; waits until it listens.
    pub fn master(dir: &Path, extra: &[&str]) -> Proc {
        let mut args = vec!["master", "-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn(dir, &args);
        p.addr = Some(p.read_listen_line());
        p
    }

    /// A master on a given address (for restarts on the same port).
    pub fn master_at(dir: &Path, addr: SocketAddr, extra: &[&str]) -> Proc {
        let listen = addr.to_string();
        let mut args = vec!["master", "-listen", listen.as_str()];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn(dir, &args);
        p.addr = Some(p.read_listen_line());
        p
    }

    pub fn read_listen_line(&mut self) -> SocketAddr {
        let out = self.child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("master did not start: {line:?}"));
        addr.parse().unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("not a master")
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run(dir: &Path, program: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes and reads the whole answer (the request should say `Connection: close`).
/// `None` when the server closed without an answer.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<Answer> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_answer(&buf)
}

/// Splits an answer into head and body, decoding a chunked body; `None` until the head is
/// whole, and for a chunked body cut short.
pub fn parse_answer(buf: &[u8]) -> Option<Answer> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let raw = &buf[split + 4..];
    let body = if is_chunked(&head) {
        dechunk(raw)?
    } else {
        raw.to_vec()
    };
    Some(Answer { status, head, body })
}

/// True when the head says `Transfer-Encoding: chunked`.
pub fn is_chunked(head: &str) -> bool {
    head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    })
}

/// The data of a chunked body; `None` when it ends before its last (empty) chunk.
pub fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            // Trailers (none expected) and the final CRLF.
            return raw.ends_with(b"\r\n").then_some(out);
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A well-formed request with a body.
pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Answer {
    raw(addr, &request("POST", path, body)).expect("no answer")
}

pub fn get(addr: SocketAddr, path: &str) -> Answer {
    raw(addr, &request("GET", path, b"")).expect("no answer")
}

/// A GET with an `Authorization` header (`basic(…)`, or `Bearer TOKEN`).
pub fn get_as(addr: SocketAddr, path: &str, authorization: &str) -> Answer {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    );
    raw(addr, head.as_bytes()).expect("no answer")
}

/// The `Authorization` header value of HTTP Basic.
pub fn basic(name: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{name}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The stored results, newest first, read with a login (`Authorization` header value).
pub fn results_as(addr: SocketAddr, query: &str, authorization: &str) -> Vec<serde_json::Value> {
    let a = get_as(
        addr,
        &format!("/api/v1/results?limit=1000&{query}"),
        authorization,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["results"].as_array().unwrap().clone()
}

/// The stored results, newest first.
pub fn results(addr: SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let a = get(addr, &format!("/api/v1/results?limit=1000&{query}"));
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["results"].as_array().unwrap().clone()
}

/// Polls `f` until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback address nobody listens on (yet): for a master started later.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A targets file with `n` targets (fake results need no real hosts).
pub fn targets_with(n: usize) -> String {
    let targets: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#""00000000-0000-4000-8000-{i:012}": {{"Name": "T{i}", "Address": "192.0.2.{}"}}"#,
                i % 250 + 1
            )
        })
        .collect();
    format!(
        r#"{{"ReportURL": "", "Targets": {{{}}}, "Retries": 1, "MaxHops": 30, "TimeoutMs": 500}}"#,
        targets.join(", ")
    )
}

/// `slave1` with fake results and debug logging (one `spooled ID` line per result) against
/// the master at `addr`, plus `extra` flags.
pub fn slave(dir: &Path, addr: SocketAddr, extra: &[&str]) -> Proc {
    let master = format!("-master={}", addr.ip());
    let port = format!("-master-port={}", addr.port());
    let mut args = vec![
        "slave",
        master.as_str(),
        port.as_str(),
        "-name=slave1",
        "-passwd=1234",
        "-zDebugResults",
        "-loglevel=debug",
        "-interval=1s",
        "-config-interval=1s",
        "-retry-max=1s",
    ];
    // A flag in `extra` replaces the default above (clap refuses a flag given twice).
    let name = |a: &str| a.split('=').next().unwrap_or(a).to_owned();
    args.retain(|a| !extra.iter().any(|e| name(e) == name(a)));
    args.extend_from_slice(extra);
    Proc::spawn(dir, &args)
}

/// IDs the slave logged as written to its spool, in order. A line cut short by `kill -9`
/// does not count: the ID must be followed by the rest of the line.
pub fn spooled_ids(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find("spooled ")? + "spooled ".len()..];
            let (id, tail) = rest.split_once(' ')?;
            (tail.starts_with("for ") && id.len() == 36).then(|| id.to_owned())
        })
        .collect()
}

/// Result IDs in the master's database, one entry per stored row.
pub fn stored_ids(db: &Path) -> Vec<String> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    // The result ID is the first 16 bytes of the row's blob.
    let Ok(mut stmt) = conn.prepare("SELECT substr(data, 1, 16) FROM results") else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| {
            let bytes: [u8; 16] = b.unwrap().try_into().expect("16-byte result ID");
            uuid::Uuid::from_bytes(bytes).to_string()
        })
        .collect()
}

/// The dropped total the master holds for `slave`.
pub fn master_dropped_total(db: &Path, slave: &str) -> Option<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row(
        "SELECT dropped_total FROM slaves WHERE name = ?1",
        [slave],
        |r| r.get::<_, i64>(0),
    )
    .ok()
    .map(|v| v as u64)
}

/// What the master holds of a slave: (agent, spool depth, dropped total).
pub fn master_slave_status(db: &Path, slave: &str) -> Option<(String, Option<i64>, i64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row(
        "SELECT agent, spool_depth, dropped_total FROM slaves WHERE name = ?1",
        [slave],
        |r| {
            Ok((
                r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                r.get(1)?,
                r.get(2)?,
            ))
        },
    )
    .ok()
}

/// Files waiting in a spool's `results/` (each checked to be a whole result).
pub fn spool_results(spool: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(spool.join("results")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let path = e.path();
            // Sent or dropped since the listing: fine.
            let body = std::fs::read(&path).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("corrupt spool entry {}: {e}", path.display()));
            assert!(v["ID"].is_string(), "{}", path.display());
            Some(path)
        })
        .collect()
}

/// Files in a spool sub-folder (`rejected`, `tmp`).
pub fn files_in(spool: &Path, sub: &str) -> usize {
    std::fs::read_dir(spool.join(sub)).map_or(0, |d| d.count())
}

/// Sends SIGTERM and waits for the exit code (None: still running after `limit`).
pub fn terminate(p: &mut Proc, limit: Duration) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when every ID of `want` is in `have`.
pub fn all_in(want: &[String], have: &[String]) -> bool {
    let have: std::collections::HashSet<&String> = have.iter().collect();
    want.iter().all(|id| have.contains(id))
}

/// Panics when an ID is listed twice.
pub fn assert_unique(ids: &[String]) {
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a result is stored twice");
}

/// True when this process may use raw sockets (euid 0). Without root a test that needs it
/// prints why it skips; under `CI=true` (CI runs as root) a skip is a failure.
pub fn have_root(what: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root: {what} must run"
        );
        eprintln!("skipped: {what} needs root");
    }
    root
}

/// Runs the binary until it exits, or kills it once `limit` has passed: (exit code, `None`
/// when it was still running or died of a signal; stdout; stderr).
pub fn run_with_timeout(
    dir: &Path,
    program: &Path,
    args: &[&str],
    limit: Duration,
) -> (Option<i32>, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the binary");
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));
    let end = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, out.join().unwrap(), err.join().unwrap())
}

/// Reads a pipe to its end on its own thread, so a chatty child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `program args` with `input` on stdin (a format's own checker); (exit code, stdout,
/// stderr).
pub fn pipe(program: &std::ffi::OsStr, args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A webhook receiver that answers 200 and keeps every body it gets, as JSON.
pub fn webhook_sink() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let keep = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= split + 4 + len {
                    let body = &buf[split + 4..split + 4 + len];
                    keep.lock()
                        .unwrap()
                        .push(serde_json::from_slice(body).unwrap_or(serde_json::Value::Null));
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    break;
                }
            }
        }
    });
    (url, seen)
}

/// Waits (up to 20 s) until `n` slaves of ours (a `dist-traceroute` version) are known to
/// the master at `addr`, read with `authorization`: they poll for on-demand jobs.
pub fn wait_for_our_slaves(addr: SocketAddr, authorization: &str, n: usize) {
    let seen = || {
        let v = get_as(addr, "/api/v1/slaves", authorization).json();
        v["slaves"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter(|s| {
                        s["version"]
                            .as_str()
                            .is_some_and(|v| v.starts_with("dist-traceroute"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(20), || (seen() == n).then_some(()))
        .unwrap_or_else(|| panic!("{} of {n} slaves of ours seen", seen()));
}
