//! Benchmark: one process traces many targets at once and checks every hop against the
//! known topology. Run by `scripts/bench-trace` inside a namespace network; prints figures.
//!
//! `trace_bench [--rate PPS] [--concurrency N] [--timeout-ms N] [--retries N] [-q N]
//! --path HOP,HOP,... GROUP...` where `--path` lists the router answering at TTL 1, 2, ...
//! (`*` for a silent one) and each `GROUP` is `PREFIX/LEN:COUNT:reached|silent:TTL`: COUNT
//! addresses from PREFIX+1 up, each the destination at TTL (`reached`: it answers there;
//! `silent`: it never answers and nothing at or past TTL may either).
//!
//! A hop whose address differs from the topology's is *mis-attributed* (the number that
//! must be 0); a hop the topology says answers but that came back silent is *lost*
//! (a dropped reply, not a wrong one).

use anyhow::{Context, anyhow, bail};
use dist_traceroute::trace::{Trace, TraceOptions, Tracer};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Targets of one kind, all behind the same routers.
struct Group {
    kind: &'static str,
    ttl: u8,
    addrs: Vec<IpAddr>,
}

/// What checking one trace found.
#[derive(Default, Debug)]
struct Tally {
    traces: usize,
    reached: usize,
    hops: usize,
    misattributed: usize,
    lost: usize,
    wrong_end: usize,
    errors: usize,
    probes: usize,
}

fn main() -> anyhow::Result<()> {
    let mut opts = TraceOptions {
        timeout: Duration::from_secs(1),
        ..TraceOptions::default()
    };
    let (mut rate, mut concurrency, mut path, mut groups) = (None, 0usize, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--rate" => rate = Some(val()?.parse().context("--rate")?),
            "--concurrency" => concurrency = val()?.parse().context("--concurrency")?,
            "--timeout-ms" => opts.timeout = Duration::from_millis(val()?.parse()?),
            "--retries" => opts.retries = val()?.parse()?,
            "-q" => opts.queries = val()?.parse()?,
            "--path" => path = Some(parse_path(&val()?)?),
            _ => groups.push(parse_group(&a)?),
        }
    }
    let path = path.ok_or_else(|| anyhow!("--path is required"))?;
    let jobs: Vec<(usize, IpAddr)> = (groups.iter().enumerate())
        .flat_map(|(g, grp)| grp.addrs.iter().map(move |&a| (g, a)))
        .collect();
    if jobs.is_empty() {
        bail!("no targets: give at least one PREFIX/LEN:COUNT:reached|silent:TTL");
    }
    if concurrency == 0 {
        concurrency = jobs.len();
    }

    let tracer = Tracer::new()?;
    if let Some(r) = rate {
        tracer.set_probe_rate(r);
    }
    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally::default());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.min(jobs.len()) {
            // Small stacks: a thread per concurrent trace must not dominate the memory figure.
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn_scoped(s, || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(g, dest)) = jobs.get(i) else { break };
                        let result = tracer.trace(dest, &opts);
                        let mut t = tally.lock().unwrap();
                        match result {
                            Ok(trace) => check(&trace, &groups[g], &path, &mut t),
                            Err(e) => {
                                eprintln!("{dest}: {e}");
                                t.errors += 1;
                            }
                        }
                    }
                })
                .expect("spawn trace thread");
        }
    });
    let wall = t0.elapsed();
    let t = tally.into_inner().unwrap();
    let (unmatched, malformed) = tracer.ignored();
    println!(
        "targets={} concurrency={} rate_cap={}/s timeout={}ms retries={} queries={}",
        jobs.len(),
        concurrency,
        tracer.probe_rate(),
        opts.timeout.as_millis(),
        opts.retries,
        opts.queries
    );
    println!(
        "wall_s={:.2} traces={} reached={} hops={} probes={} probes_per_s={:.0}",
        wall.as_secs_f64(),
        t.traces,
        t.reached,
        t.hops,
        t.probes,
        t.probes as f64 / wall.as_secs_f64()
    );
    println!(
        "misattributed_hops={} lost_hops={} wrong_ends={} errors={} ignored_packets={} malformed={}",
        t.misattributed, t.lost, t.wrong_end, t.errors, unmatched, malformed
    );
    println!("peak_rss_kib={}", status_kib("VmHWM").unwrap_or(0));
    if t.misattributed > 0 || t.wrong_end > 0 || t.errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Compares one trace hop by hop with what the topology says it must show.
fn check(trace: &Trace, g: &Group, path: &[Option<IpAddr>], t: &mut Tally) {
    t.traces += 1;
    t.reached += usize::from(trace.reached);
    for hop in &trace.hops {
        t.hops += 1;
        t.probes += hop.probes.len();
        let want = match usize::from(hop.ttl) {
            k if k < usize::from(g.ttl) => path.get(k - 1).copied().flatten(),
            k if k == usize::from(g.ttl) && g.kind == "reached" => Some(trace.destination),
            _ => None,
        };
        match (hop.addr, want) {
            (Some(got), Some(w)) if got != w => t.misattributed += 1,
            (Some(_), None) => t.misattributed += 1,
            (None, Some(_)) => t.lost += 1,
            _ => {}
        }
    }
    let ends_right = match g.kind {
        "reached" => trace.reached && trace.hops.len() == usize::from(g.ttl),
        _ => !trace.reached,
    };
    if !ends_right {
        t.wrong_end += 1;
        eprintln!(
            "{}: expected {} at TTL {}, got reached={} after {} hops",
            trace.destination,
            g.kind,
            g.ttl,
            trace.reached,
            trace.hops.len()
        );
        if t.wrong_end <= 3 {
            for h in &trace.hops {
                let p: Vec<_> = h.probes.iter().map(|p| (p.from, p.rtt)).collect();
                eprintln!("  {:2} {:?}", h.ttl, p);
            }
        }
    }
}

fn parse_path(s: &str) -> anyhow::Result<Vec<Option<IpAddr>>> {
    s.split(',')
        .map(|h| match h {
            "*" => Ok(None),
            a => Ok(Some(a.parse().with_context(|| format!("--path: {a}"))?)),
        })
        .collect()
}

fn parse_group(s: &str) -> anyhow::Result<Group> {
    let bad = || anyhow!("group {s:?}: want PREFIX/LEN:COUNT:reached|silent:TTL");
    let f: Vec<&str> = s.split(':').collect();
    let [net, count, kind, ttl] = f[..] else {
        return Err(bad());
    };
    let (base, len) = net.split_once('/').ok_or_else(bad)?;
    let base: Ipv4Addr = base.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    let count: u32 = count.parse().map_err(|_| bad())?;
    if len > 30 || count >= 1 << (32 - len) {
        bail!("group {s:?}: {count} addresses do not fit in /{len}");
    }
    let kind = match kind {
        "reached" => "reached",
        "silent" => "silent",
        _ => return Err(bad()),
    };
    let base = u32::from(base);
    Ok(Group {
        kind,
        ttl: ttl.parse().map_err(|_| bad())?,
        addrs: (1..=count)
            .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
            .collect(),
    })
}

/// A `kB` line of /proc/self/status, e.g. VmHWM (peak resident set).
fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
