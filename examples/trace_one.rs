//! The trace engine as a library, in brief: trace one host and print its hops.
//!
//! `sudo cargo run --example trace_one -- example.org` (root or CAP_NET_RAW; without them
//! the tracer falls back to unprivileged UDP). `examples/trace.rs` traces many at once.

use dist_traceroute::trace::{TraceOptions, Tracer, resolve};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let host = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1".into());
    let dest = resolve(&host, None)?;
    // One Tracer per process: it owns the sockets, and every thread may share it.
    let tracer = Tracer::new()?;
    let opts = TraceOptions {
        queries: 3,
        timeout: Duration::from_secs(1),
        ..TraceOptions::default()
    };
    let mut trace = tracer.trace(dest, &opts)?;
    trace.fill_hosts(Duration::from_millis(500));
    let end = if trace.reached {
        "reached"
    } else {
        "not reached"
    };
    println!("{host} ({dest}), {}: {end}", tracer.mode());
    for hop in &trace.hops {
        let who = match (&hop.host, hop.addr) {
            (Some(name), Some(addr)) => format!("{name} ({addr})"),
            (None, Some(addr)) => addr.to_string(),
            (_, None) => "*".into(),
        };
        let rtts: Vec<String> = (hop.probes.iter())
            .map(|p| {
                p.rtt
                    .map_or("*".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
            })
            .collect();
        println!("{:2}  {who}  {}", hop.ttl, rtts.join("  "));
    }
    Ok(())
}
