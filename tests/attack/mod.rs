//! Tools of the hostile-client battery: a master whose stderr is kept (to catch panics), a
//! well-behaved slave that records its latency while an attack runs, a sampler of the master's
//! memory, threads and descriptors, and attacker sockets that come from another loopback
//! address than the good slave (as they would from another host).
#![allow(dead_code)]

use crate::util::{BIN, GO_RESULT, Proc, Scratch, parse_answer};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where attacks come from; the good slave uses 127.0.0.1.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Raises this process's soft descriptor limit to the hard limit (thousands of sockets).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

/// A master under attack: the process, its folder, and its stderr file.
pub struct Target {
    pub proc: Proc,
    pub dir: Scratch,
}

impl Target {
    /// Starts a master with `flags`; with `nofile`, under that descriptor limit (soft and hard).
    pub fn start(name: &str, flags: &[&str], nofile: Option<u64>) -> Target {
        let dir = Scratch::with_seed_config(name);
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let stderr = std::fs::File::create(dir.path("stderr")).unwrap();
        let child = cmd
            .args(["master", "-listen", "127.0.0.1:0", "-loglevel", "warn"])
            .args(flags)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the master");
        let mut proc = Proc { child, addr: None };
        proc.addr = Some(proc.read_listen_line());
        Target { proc, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc.addr()
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Panics unless the master still runs and has printed no panic.
    pub fn assert_survived(&mut self, attack: &str) {
        assert!(self.proc.alive(), "{attack}: the master exited");
        let stderr = std::fs::read_to_string(self.dir.path("stderr")).unwrap_or_default();
        assert!(
            !stderr.contains("panicked"),
            "{attack}: the master panicked:\n{stderr}"
        );
    }
}

/// A TCP connection from [`ATTACKER`].
pub fn attacker(to: SocketAddr) -> std::io::Result<TcpStream> {
    attacker_from(ATTACKER, to)
}

/// A TCP connection from `from` (any 127.0.0.0/8 address is local on Linux).
pub fn attacker_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// What a single exchange ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete answer with this status.
    Status(u16),
    /// The server closed (or reset) the connection without an answer.
    Closed,
    /// Nothing came back within the wait.
    Silent,
}

/// Sends `bytes` from [`ATTACKER`] and reads the first answer (or the close), waiting at most
/// `wait`. A write the server cuts off (it closed early) is not an error.
pub fn exchange(to: SocketAddr, bytes: &[u8], wait: Duration) -> Outcome {
    let Ok(mut s) = attacker(to) else {
        return Outcome::Closed;
    };
    s.set_read_timeout(Some(wait)).unwrap();
    s.set_write_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    read_outcome(&mut s)
}

/// [`exchange`] from another address.
pub fn exchange_from(from: Ipv4Addr, to: SocketAddr, bytes: &[u8], wait: Duration) -> Outcome {
    let Ok(mut s) = attacker_from(from, to) else {
        return Outcome::Closed;
    };
    s.set_read_timeout(Some(wait)).unwrap();
    s.set_write_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    read_outcome(&mut s)
}

/// One login of the good slave, so that the master knows its address for its name.
pub fn good_login(master: SocketAddr) {
    assert!(
        good_exchange(
            master,
            "/config/",
            br#"{"Name":"slave1","Password":"1234"}"#,
            "ReportURL"
        ),
        "the good slave's first login"
    );
}

/// Reads until a complete head arrives, the peer closes, or the read timeout passes.
pub fn read_outcome(s: &mut TcpStream) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(a) = parse_answer(&buf) {
            return Outcome::Status(a.status);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Outcome::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Silent;
            }
            Err(_) => return Outcome::Closed,
        }
    }
}

/// The well-behaved slave: fetches its config and posts a fresh result, over and over, each
/// on a new connection, and records how long each exchange took.
pub struct GoodSlave {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    took: Duration,
    ok: bool,
}

/// What the good slave saw.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub requests: usize,
    pub failures: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl GoodSlave {
    pub fn start(master: SocketAddr) -> GoodSlave {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (st, sa) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let id = uuid::Uuid::new_v4().to_string();
                let result = GO_RESULT.replace("3a1b7c55-eabe-4536-a9ed-ec6cbdaaedb0", &id);
                for (path, body, want) in [
                    (
                        "/config/",
                        r#"{"Name":"slave1","Password":"1234"}"#.to_owned(),
                        "ReportURL",
                    ),
                    ("/results/", result, r#""Success":true"#),
                ] {
                    let start = Instant::now();
                    let ok = good_exchange(master, path, body.as_bytes(), want);
                    sa.lock().unwrap().push(Sample {
                        took: start.elapsed(),
                        ok,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        GoodSlave {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops the slave and sums up; a failed exchange counts as slower than any answer.
    pub fn finish(mut self) -> Latency {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let samples = self.samples.lock().unwrap();
        let failures = samples.iter().filter(|s| !s.ok).count();
        let mut took: Vec<Duration> = samples
            .iter()
            .map(|s| if s.ok { s.took } else { Duration::MAX })
            .collect();
        took.sort();
        let pick = |q: f64| {
            if took.is_empty() {
                return Duration::MAX;
            }
            took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1]
        };
        Latency {
            requests: took.len(),
            failures,
            p50: pick(0.50),
            p99: pick(0.99),
            max: took.last().copied().unwrap_or(Duration::MAX),
        }
    }
}

fn good_exchange(master: SocketAddr, path: &str, body: &[u8], want: &str) -> bool {
    let t0 = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&master, Duration::from_secs(5)) else {
        eprintln!("good slave: connect failed after {:?}", t0.elapsed());
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(&crate::util::request("POST", path, body))
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    let ok = parse_answer(&buf).is_some_and(|a| a.status == 200 && a.text().contains(want));
    if !ok {
        eprintln!(
            "good slave: {path} failed ({r:?}) after {:?}: {:?}",
            t0.elapsed(),
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        );
    }
    ok
}

/// Peaks of the master's resource use, sampled every 50 ms.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Usage>>,
}

/// The master's resource use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident memory (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Highest resident memory seen (VmRSS), KiB.
    pub rss_kib: u64,
    /// Most threads seen.
    pub threads: u64,
    /// Most open descriptors seen.
    pub fds: u64,
}

/// One reading of /proc/PID.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Usage {
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Usage::default();
            loop {
                let u = usage(pid);
                peak.hwm_kib = peak.hwm_kib.max(u.hwm_kib);
                peak.rss_kib = peak.rss_kib.max(u.rss_kib);
                peak.threads = peak.threads.max(u.threads);
                peak.fds = peak.fds.max(u.fds);
                if st.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Largest peak resident memory any attack may drive the master to: a generous ceiling that
/// still catches buffering an attacker's bytes (the attacks send hundreds of MB).
pub const RSS_CEILING_KIB: u64 = 256 * 1024;

/// Runs `attack` against `target` while a good slave works and the sampler watches, then
/// prints the figures and asserts the pass criteria (alive, no panic, memory bound, p99 < 1 s).
pub fn under_attack<T>(name: &str, target: &mut Target, attack: impl FnOnce(SocketAddr) -> T) -> T {
    under_attack_strict(name, target, attack).0
}

/// [`under_attack`], also handing back what the good slave saw (to count its refusals).
pub fn under_attack_strict<T>(
    name: &str,
    target: &mut Target,
    attack: impl FnOnce(SocketAddr) -> T,
) -> (T, Latency) {
    let addr = target.addr();
    let before = usage(target.pid());
    let sampler = Sampler::start(target.pid());
    let slave = GoodSlave::start(addr);
    let started = Instant::now();
    let out = attack(addr);
    let took = started.elapsed();
    let latency = slave.finish();
    let peak = sampler.finish();
    let after = usage(target.pid());
    println!(
        "HOSTILE {name:<28} | {:>5.1} s | good slave {:>4} req, {} failed, p50 {:>6.1} ms, p99 {:>6.1} ms, max {:>6.1} ms | peak RSS {:>6.1} MiB (before {:.1}) | threads {:>3} (before {}) | fds {:>5} (before {}, after {})",
        took.as_secs_f64(),
        latency.requests,
        latency.failures,
        ms(latency.p50),
        ms(latency.p99),
        ms(latency.max),
        peak.hwm_kib as f64 / 1024.0,
        before.rss_kib as f64 / 1024.0,
        peak.threads,
        before.threads,
        peak.fds,
        before.fds,
        after.fds,
    );
    target.assert_survived(name);
    assert!(
        peak.hwm_kib < RSS_CEILING_KIB,
        "{name}: peak RSS {} KiB over the {} KiB ceiling",
        peak.hwm_kib,
        RSS_CEILING_KIB
    );
    assert!(latency.requests > 0, "{name}: the good slave sent nothing");
    assert!(
        latency.p99 < Duration::from_secs(1),
        "{name}: the good slave's p99 is {:?} ({} of {} failed)",
        latency.p99,
        latency.failures,
        latency.requests
    );
    (out, latency)
}

fn ms(d: Duration) -> f64 {
    if d == Duration::MAX {
        f64::INFINITY
    } else {
        d.as_secs_f64() * 1000.0
    }
}
