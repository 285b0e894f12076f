//! The trace engine used as a library: trace hosts and print the hops.
//!
//! `cargo run --example trace -- [--json] [-p udp|icmp|tcp] [--flow N] [-q N] HOST...`
//! traces every host at once (one thread each) and prints one line per hop, or one JSON
//! object per trace with `--json` (what the netns tests read).

use dist_traceroute::trace::{Protocol, TraceOptions, Tracer, resolve};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut opts = TraceOptions {
        timeout: Duration::from_millis(1000),
        ..TraceOptions::default()
    };
    let (mut json, mut hosts) = (false, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--json" => json = true,
            "-p" => {
                opts.protocol = Protocol::parse(&val()?).ok_or_else(|| anyhow::anyhow!("bad -p"))?
            }
            "--flow" => opts.flow = val()?.parse()?,
            "-q" => opts.queries = val()?.parse()?,
            "-m" => opts.max_hops = val()?.parse()?,
            "--port" => opts.port = Some(val()?.parse()?),
            _ => hosts.push(a),
        }
    }
    let tracer = Tracer::new()?;
    eprintln!("mode: {}", tracer.mode());
    let traces = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                s.spawn(|| -> anyhow::Result<_> { Ok(tracer.trace(resolve(h, None)?, &opts)?) })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("trace thread panicked"))
            .collect::<Vec<_>>()
    });
    for t in traces {
        let t = t?;
        if json {
            let hops: Vec<_> = t
                .hops
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "ttl": h.ttl,
                        "addr": h.addr.map(|a| a.to_string()),
                        "rtt_us": h.first_rtt().map(|d| d.as_micros() as u64),
                        "kind": h.probes.iter().find_map(|p| p.kind).map(|k| format!("{k:?}")),
                    })
                })
                .collect();
            let v = serde_json::json!({"dest": t.destination.to_string(), "reached": t.reached, "hops": hops});
            println!("{v}");
        } else {
            println!(
                "traceroute to {} ({}), reached: {}",
                t.destination, t.protocol, t.reached
            );
            for h in &t.hops {
                let rtt = h
                    .first_rtt()
                    .map_or("*".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
                let addr = h.addr.map_or("*".into(), |a| a.to_string());
                println!("{:2}  {addr}  {rtt}", h.ttl);
            }
        }
    }
    Ok(())
}
