//! Benchmark: on-demand measurements through a master in this process.
//!
//! Part 1: 100 simulated slaves (threads of this process, each with its own keep-alive
//! connection) hold a job poll; rounds of `POST /api/v1/measurements` for all of them are
//! timed from the POST to each slave holding its job, and to every result stored (each slave
//! answers at once with a fake result, as `-zDebugResults` makes them).
//!
//! Part 2: a master in a child process (this program run again with `--serve N`) has
//! 10,000 slaves each hold a poll on its own connection (raw sockets, nothing read until the
//! end); the master's resident memory and threads are read before and after, then one
//! measurement for all of them is timed until every poll has its answer.
//!
//! ```sh
//! cargo run --release --example measure_bench              # 30 rounds, 10000 polls
//! cargo run --release --example measure_bench -- 10 2000   # other sizes
//! ```

use base64::Engine as _;
use dist_traceroute::master::measure::Policy;
use dist_traceroute::master::{Master, Settings, server::Limits};
use dist_traceroute::proto::{Creds, JobsRequest, TargetRef};
use dist_traceroute::slave::client::{Client, Outcome};
use dist_traceroute::slave::{fake, jobs, report};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TARGETS: &str = r#"{"ReportURL": "", "Targets": {
  "00000000-0000-4000-8000-000000000001": {"Name": "Doc", "Address": "192.0.2.1"}},
  "Retries": 0, "MaxHops": 16, "TimeoutMs": 500}"#;
const USERS: &str =
    r#"{"Users": [{"Name": "olga", "Password": "bench-op-1", "Role": "operator"}]}"#;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        // The child of part 2: a master for N slaves until the parent closes stdin.
        let n: usize = args.nth(1).unwrap_or_default().parse()?;
        raise_fd_limit(n as u64 + 1024)?;
        let (addr, dir) = master("h", n)?;
        println!("{}", addr.port());
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    let polls: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    raise_fd_limit(polls as u64 + 1024)?;
    delivery(100, rounds)?;
    held_polls(polls)?;
    Ok(())
}

/// A master on a free loopback port in a fresh folder with `slaves` slaves named
/// `{prefix}1..` (password `pw`); returns its address and folder.
fn master(prefix: &str, slaves: usize) -> anyhow::Result<(SocketAddr, std::path::PathBuf)> {
    let dir =
        std::env::temp_dir().join(format!("dt-measure-bench-{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let list: Vec<String> = (1..=slaves)
        .map(|n| format!(r#"{{"Name": "{prefix}{n}", "Password": "pw"}}"#))
        .collect();
    std::fs::write(
        dir.join("dt-slaves.json"),
        format!(r#"{{"Slaves": [{}]}}"#, list.join(",")),
    )?;
    std::fs::write(dir.join("dt-targets.json"), TARGETS)?;
    std::fs::write(dir.join("dt-users.json"), USERS)?;
    let master = Master::start(&Settings {
        slaves_file: dir.join("dt-slaves.json"),
        managed_file: dir.join("dt-slaves.managed.json"),
        targets_file: dir.join("dt-targets.json"),
        users_file: dir.join("dt-users.json"),
        public_read: false,
        db: dir.join("dt-results.db"),
        db_passwd_file: None,
        listen: "127.0.0.1:0".parse()?,
        reload_interval: Duration::from_secs(60),
        limits: Limits {
            max_connections: slaves + 1024,
            max_connections_per_address: slaves + 1024,
            ..Limits::default()
        },
        tls: None,
        confirm: 2,
        alert_webhook: None,
        alert_debug_results: false,
        alert_kinds: None,
        measure: Policy {
            per_user_per_minute: 10_000,
            fleet_per_minute: 10_000,
            max_probes: u64::MAX,
            ..Policy::default()
        },
        retention: None,
        retention_paths: None,
        asn_db: None,
    })?;
    let addr = master.local_addr()?;
    std::thread::spawn(move || master.serve());
    Ok((addr, dir))
}

fn operator() -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode("olga:bench-op-1");
    format!("Basic {pair}")
}

/// Starts a measurement of Doc from every slave; returns its ID.
fn start(agent: &ureq::Agent, addr: SocketAddr) -> anyhow::Result<String> {
    let mut resp = agent
        .post(format!("http://{addr}/api/v1/measurements"))
        .header("Authorization", operator())
        .header("Content-Type", "application/json")
        .send(r#"{"target": "Doc", "slaves": "all", "flows": 1, "queries": 1}"#)?;
    let body: serde_json::Value = resp.body_mut().read_json()?;
    anyhow::ensure!(resp.status() == 202, "measurement refused: {body}");
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}

fn status(agent: &ureq::Agent, addr: SocketAddr, id: &str) -> anyhow::Result<serde_json::Value> {
    Ok(agent
        .get(format!("http://{addr}/api/v1/measurements/{id}"))
        .header("Authorization", operator())
        .call()?
        .body_mut()
        .read_json()?)
}

/// Part 1.
fn delivery(slaves: usize, rounds: usize) -> anyhow::Result<()> {
    let (addr, dir) = master("d", slaves)?;
    // When each slave got each measurement's job.
    let got: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for n in 1..=slaves {
        let (got, stop) = (got.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let creds = Creds {
                name: format!("d{n}"),
                password: "pw".into(),
            };
            let client = Client::new(
                format!("http://{addr}"),
                creds.clone(),
                None,
                Duration::from_secs(40),
            );
            let mut running = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let ask = JobsRequest {
                    creds: creds.clone(),
                    wait: 2,
                    running: std::mem::take(&mut running),
                };
                let Outcome::Ok(specs) = client.poll_jobs(&ask) else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let at = Instant::now();
                for spec in specs {
                    got.lock()
                        .unwrap()
                        .entry(spec.id.clone())
                        .or_default()
                        .push(at);
                    running.push(spec.id.clone());
                    let target = TargetRef {
                        name: spec.target.clone(),
                        address: spec.target.clone(),
                    };
                    let trace = fake::trace(&spec.target, &jobs::options(&spec, 0));
                    let mut r = report::from_trace(&trace, &creds, "", &target);
                    r.debug = true;
                    r.target_id = None;
                    r.measurement = Some(spec.id.clone());
                    let _ = client.post_result(&r);
                }
            }
        }));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // Every slave polling (and so known as one of ours) before the first round.
    std::thread::sleep(Duration::from_secs(3));
    let mut reach: Vec<f64> = Vec::new();
    let mut all_reached: Vec<f64> = Vec::new();
    let mut stored: Vec<f64> = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let id = start(&agent, addr)?;
        loop {
            let v = status(&agent, addr, &id)?;
            if v["status"] == "done" {
                let states: Vec<&str> = v["slaves"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["state"].as_str())
                    .collect();
                anyhow::ensure!(
                    states.iter().all(|s| *s == "done"),
                    "not every slave delivered: {states:?}"
                );
                stored.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "round never ended");
            std::thread::sleep(Duration::from_millis(2));
        }
        let times = got.lock().unwrap().remove(&id).unwrap_or_default();
        anyhow::ensure!(
            times.len() == slaves,
            "{} of {slaves} got the job",
            times.len()
        );
        let ms: Vec<f64> = times
            .iter()
            .map(|t| t.duration_since(t0).as_secs_f64() * 1e3)
            .collect();
        all_reached.push(ms.iter().copied().fold(0.0, f64::max));
        reach.extend(ms);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!("{slaves} slaves holding a poll, {rounds} measurements for all of them:");
    println!(
        "  POST to a slave holding its job: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries)",
        pct(&mut reach, 50.0),
        pct(&mut reach, 99.0),
        pct(&mut reach, 100.0),
        reach.len()
    );
    println!(
        "  POST to the last slave holding it: p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut all_reached, 50.0),
        pct(&mut all_reached, 99.0)
    );
    println!(
        "  POST to all {slaves} results stored (status done): p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut stored, 50.0),
        pct(&mut stored, 99.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Part 2.
fn held_polls(polls: usize) -> anyhow::Result<()> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--serve", &polls.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut line,
    )?;
    let port: u16 = line.trim().parse()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, threads0) = status_of(pid);
    let started = Instant::now();
    let mut streams = Vec::with_capacity(polls);
    for n in 1..=polls {
        let body = format!(r#"{{"Creds": {{"Name": "h{n}", "Password": "pw"}}, "Wait": 25}}"#);
        let mut s = TcpStream::connect(addr)?;
        write!(
            s,
            "POST /api/v1/jobs HTTP/1.1\r\nHost: m\r\nUser-Agent: dist-traceroute/bench\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        streams.push(s);
    }
    let opened = started.elapsed();
    // Let the master read, authenticate and park every poll.
    std::thread::sleep(Duration::from_secs(4));
    let (rss1, threads1) = status_of(pid);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let t0 = Instant::now();
    let id = start(&agent, addr)?;
    let posted = t0.elapsed();
    let mut with_job = 0;
    let mut buf = vec![0u8; 4096];
    for s in &mut streams {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut seen = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(id.len()).any(|w| w == id.as_bytes()) {
                with_job += 1;
                break;
            }
        }
    }
    let answered = t0.elapsed();
    println!(
        "{polls} slaves holding a poll, each on its own connection, to a master in its own process:"
    );
    println!(
        "  opened in {:.2} s; resident memory {:.1} MiB before, {:.1} MiB with them held \
         ({:.1} KiB per poll); threads {threads0} before, {threads1} with them",
        opened.as_secs_f64(),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1.saturating_sub(rss0)) as f64 / polls as f64
    );
    println!(
        "  one measurement for all: POST answered in {:.0} ms, {with_job} of {polls} polls had \
         the job {:.2} s after the POST",
        posted.as_secs_f64() * 1e3,
        answered.as_secs_f64()
    );
    drop(streams);
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

/// A process's resident memory (KiB) and threads.
fn status_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

fn raise_fd_limit(want: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // Root may raise the hard limit too (up to fs.nr_open).
    setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).map_err(|e| {
        anyhow::anyhow!(
            "needs {want} open files (both ends of each poll), the hard limit is {hard}: {e}"
        )
    })?;
    Ok(())
}

/// The `p`th percentile (nearest rank) of `v`.
fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
