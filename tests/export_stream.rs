//! Exports stream through the real binary: a large export goes out chunked, page by page,
//! every result once and newest first, with the cursor where it ended; a client that stops
//! reading holds neither a worker nor much of the master's memory, and is cut off in time.

mod util;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use util::*;

/// Results stored for the exports.
const N: usize = 3000;
/// The export size asked for; the rest comes with the cursor.
const LIMIT: usize = 2500;
/// The Unix second result 0 was measured at; result `i` at `BASE + i`.
const BASE: i64 = 1_700_000_000;

/// Result `i`: Google over 12 hops, measured at second `BASE + i`, its number in its ID.
fn result(i: usize) -> Value {
    let hops: Vec<Value> = (1..=12u8)
        .map(|ttl| {
            let rtt = 1_000_000 * i64::from(ttl);
            json!({
                "Success": true, "Address": [10, 0, ttl, 1], "Host": "", "N": 56,
                "ElapsedTime": rtt, "TTL": ttl, "IP": format!("10.0.{ttl}.1"),
                "Replies": [rtt, rtt + 1000], "Kind": if ttl == 12 { "reached" } else { "time-exceeded" },
            })
        })
        .collect();
    let at = chrono::DateTime::from_timestamp(BASE + i as i64, 0).unwrap();
    json!({
        "Creds": {"Name": "slave1", "Password": "1234"},
        "ID": id(i),
        "DateTime": at.to_rfc3339(),
        "Target": {"Name": "Google", "Address": "10.0.12.1"},
        "TargetID": "76d96640-d357-47b3-ba50-5248a7604bc9",
        "Success": true, "HopCount": 12, "Hops": hops,
        "Protocol": "udp", "Flow": 0, "Queries": 2,
    })
}

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Stores results 0..N through the batch endpoint.
fn store_all(addr: SocketAddr) {
    let all: Vec<usize> = (0..N).collect();
    for part in all.chunks(200) {
        let batch = json!({
            "Creds": {"Name": "slave1", "Password": "1234"},
            "Results": part.iter().map(|&i| result(i)).collect::<Vec<_>>(),
        });
        let a = post(addr, "/api/v1/results:batch", batch.to_string().as_bytes());
        assert_eq!(a.status, 200, "{}", a.text());
        for item in a.json()["Results"].as_array().unwrap() {
            assert_eq!(item["Status"], "stored", "{item}");
        }
    }
}

/// The value of a header of the answer, if present.
fn header(a: &Answer, name: &str) -> Option<String> {
    a.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Result numbers from newest to oldest: `from` down to `to`, both included.
fn newest_first(from: usize, to: usize) -> Vec<usize> {
    (to..=from).rev().collect()
}

/// The result numbers of a JSON Lines export, in order.
fn jsonl_numbers(a: &Answer) -> Vec<usize> {
    a.text()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["id"].as_str().unwrap()[24..].parse().unwrap()
        })
        .collect()
}

#[test]
fn large_exports_stream_every_result_once_newest_first() {
    let dir = Scratch::with_seed_config("export-stream");
    let master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    store_all(addr);

    let path = format!("/api/v1/export/results.jsonl?limit={LIMIT}");
    let jsonl = get(addr, &path);
    assert_eq!(jsonl.status, 200, "{}", jsonl.text());
    assert!(is_chunked(&jsonl.head), "{}", jsonl.head);
    assert_eq!(jsonl_numbers(&jsonl), newest_first(N - 1, N - LIMIT));
    let cursor = header(&jsonl, "X-Next-Cursor").expect("a full export names the next page");

    let rest = get(addr, &format!("{path}&cursor={cursor}"));
    assert_eq!(rest.status, 200, "{}", rest.text());
    assert_eq!(jsonl_numbers(&rest), newest_first(N - LIMIT - 1, 0));
    assert_eq!(header(&rest, "X-Next-Cursor"), None, "nothing is left");

    let csv = get(addr, &format!("/api/v1/export/results.csv?limit={LIMIT}"));
    assert_eq!(csv.status, 200);
    assert!(is_chunked(&csv.head), "{}", csv.head);
    assert_eq!(header(&csv, "X-Next-Cursor").as_ref(), Some(&cursor));
    let text = csv.text();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("result_id,")).count(),
        1,
        "one header line"
    );
    let mut rows: Vec<usize> = Vec::new();
    for line in text.lines().skip(1) {
        let n = line[24..36].parse().unwrap();
        assert_eq!(&line[..24], &id(n)[..24], "{line}");
        rows.push(n);
    }
    assert_eq!(rows.len(), LIMIT * 12, "a row per hop");
    rows.dedup();
    assert_eq!(rows, newest_first(N - 1, N - LIMIT));

    let atlas = get(addr, &format!("/api/v1/export/atlas.json?limit={LIMIT}"));
    assert_eq!(atlas.status, 200);
    assert!(is_chunked(&atlas.head), "{}", atlas.head);
    assert_eq!(header(&atlas, "X-Next-Cursor").as_ref(), Some(&cursor));
    let docs = atlas.json();
    let times: Vec<usize> = docs
        .as_array()
        .expect("one JSON array")
        .iter()
        .map(|d| (d["timestamp"].as_i64().unwrap() - BASE) as usize)
        .collect();
    assert_eq!(times, newest_first(N - 1, N - LIMIT));
}

/// The master's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Sends an export request over a connection with a small receive buffer and reads its head
/// and a few KB of its body, then leaves it unread.
fn stall(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&request("GET", path, b"")).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < 4096 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    (s, got)
}

fn log_mentions(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

#[test]
fn a_client_that_stops_reading_holds_no_worker_and_little_memory() {
    const STALLED: usize = 4;
    let dir = Scratch::with_seed_config("export-stall");
    // Fewer workers than stalled clients: a stream that held a worker would lock everyone out.
    let master = Proc::master(&dir.0, &["-workers", "2", "-body-timeout", "5s"]);
    let addr = master.addr();
    store_all(addr);
    let path = format!("/api/v1/export/atlas.json?limit={N}");
    let whole = get(addr, &path);
    assert_eq!(whole.json().as_array().unwrap().len(), N);
    // As many whole exports at once as will stall, first: the threads that make their pages
    // start, with their allocator heaps, before the measure, which then counts what the
    // stalled exports hold and not what starting those threads costs.
    let warm: Vec<_> = (0..STALLED)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || get(addr, &path).json().as_array().unwrap().len())
        })
        .collect();
    for w in warm {
        assert_eq!(w.join().unwrap(), N);
    }
    let before = rss_kib(master.child.id());

    let stalled: Vec<(TcpStream, Vec<u8>)> = (0..STALLED).map(|_| stall(addr, &path)).collect();
    for (_, got) in &stalled {
        let head = String::from_utf8_lossy(got);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(is_chunked(&head), "{head}");
    }
    // Meanwhile the master serves everyone else.
    assert_eq!(results(addr, "slave=slave1").len(), 1000);
    let mut late = result(N);
    late["DateTime"] = json!("2023-11-14T21:00:00Z");
    let a = post(addr, "/api/v1/results", late.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let small = get(addr, "/api/v1/export/results.jsonl?limit=3");
    assert_eq!(jsonl_numbers(&small), newest_first(N - 1, N - 3));
    let during = rss_kib(master.child.id());
    eprintln!(
        "master RSS: {before} KiB after one whole {N}-result Atlas export, {during} KiB with {STALLED} such exports stalled"
    );
    // Built whole, these four exports grew the master by about 120 MiB; streamed, each
    // stalled one holds about a page.
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );

    // Past the body timeout the master gives up on them: each body ends cut short.
    let log = dir.path("dt-master.log");
    let closed = wait_for(Duration::from_secs(60), || {
        (log_mentions(&log, "more of its response for") >= STALLED).then_some(())
    });
    assert!(closed.is_some(), "the stalled connections were not closed");
    for (mut s, mut got) in stalled {
        let _ = s.read_to_end(&mut got);
        assert!(
            parse_answer(&got).is_none(),
            "a stalled body must end cut short, {} bytes read",
            got.len()
        );
    }
    assert_eq!(results(addr, "slave=slave1").len(), 1000, "still serving");
}
