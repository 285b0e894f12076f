//! The trace engine used as a library: trace hosts and print the hops.
//!
//! `cargo run --example trace -- [--json] [-p udp|icmp|tcp] [--flows N] [-q N] [-m N]
//! [--retries N] [--timeout-ms N] [--rate PPS] HOST...` traces every host (on flows 0..N) at once, one
//! thread per trace, all sharing one `Tracer` (and its probe-rate cap, `--rate`), and
//! prints the hops, or one JSON object per trace with `--json` (what the netns tests
//! read). Needs root or CAP_NET_RAW for anything but UDP.

use dist_traceroute::trace::{Protocol, TraceOptions, Tracer, resolve};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut opts = TraceOptions::default();
    let (mut json, mut flows, mut rate, mut hosts) = (false, 1, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--json" => json = true,
            "-p" => opts.protocol = Protocol::parse(&val()?).ok_or(anyhow::anyhow!("bad -p"))?,
            "--flows" => flows = val()?.parse()?,
            "-q" => opts.queries = val()?.parse()?,
            "-m" => opts.max_hops = val()?.parse()?,
            "--retries" => opts.retries = val()?.parse()?,
            "--timeout-ms" => opts.timeout = Duration::from_millis(val()?.parse()?),
            "--rate" => rate = Some(val()?.parse()?),
            _ => hosts.push(resolve(&a, None)?),
        }
    }
    let tracer = Tracer::new()?;
    if let Some(pps) = rate {
        tracer.set_probe_rate(pps);
    }
    eprintln!(
        "mode: {}, at most {} probes/s",
        tracer.mode(),
        tracer.probe_rate()
    );
    let jobs: Vec<_> = hosts
        .iter()
        .flat_map(|&h| (0..flows).map(move |f| (h, f)))
        .collect();
    let traces: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (jobs.iter())
            .map(|&(h, flow)| {
                let opts = TraceOptions {
                    flow,
                    ..opts.clone()
                };
                let tracer = &tracer;
                s.spawn(move || tracer.trace(h, &opts))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("trace thread"))
            .collect()
    });
    for t in traces {
        let mut t = t?;
        if json {
            let hops: Vec<_> = (t.hops.iter())
                .map(|h| serde_json::json!({"ttl": h.ttl, "addr": h.addr, "rtt_ns": h.first_rtt().map(|d| d.as_nanos() as u64), "reply_ttl": h.reply_ttl()}))
                .collect();
            let (dest, reached) = (t.destination, t.reached);
            let unreachable = t.unreachable().map(|u| u.annotation());
            let v = serde_json::json!({"dest": dest, "flow": t.flow, "reached": reached,
                "unreachable": unreachable, "hops": hops});
            println!("{v}");
            continue;
        }
        t.fill_hosts(Duration::from_millis(500));
        println!(
            "trace to {} ({}, flow {}): reached {}",
            t.destination, t.protocol, t.flow, t.reached
        );
        for h in &t.hops {
            let addr = match (h.addr, &h.host) {
                (Some(a), Some(name)) => format!("{name} ({a})"),
                (Some(a), None) => a.to_string(),
                (None, _) => "*".into(),
            };
            let rtt = h.first_rtt().map_or(String::new(), |d| {
                format!("{:.3} ms", d.as_secs_f64() * 1e3)
            });
            println!("{:3}  {addr}  {rtt}", h.ttl);
        }
    }
    Ok(())
}
