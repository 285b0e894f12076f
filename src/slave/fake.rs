//! Fake traces for `-zDebugResults`: no privileges needed, a stable path per target with a
//! few silent hops and realistic RTTs, returned as a real [`Trace`] so everything after the
//! trace runs the same code as for real measurements.

use crate::trace::{Hop, Probe, ReplyKind, Trace, TraceOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

fn seed_of(address: &str) -> u64 {
    let mut h = DefaultHasher::new();
    address.hash(&mut h);
    h.finish()
}

/// A plausible trace to `address`; the path depends only on `address`, the RTTs vary per call.
pub fn trace(address: &str, opts: &TraceOptions) -> Trace {
    let started = SystemTime::now();
    let path = fastrand::Rng::with_seed(seed_of(address));
    let mut path = path;
    let hops_needed = path.u8(5..=12).min(opts.max_hops.max(1));
    let destination = address
        .parse::<IpAddr>()
        .unwrap_or_else(|_| IpAddr::V4(Ipv4Addr::new(198, 51, 100, path.u8(1..=254))));
    let silent: Vec<u8> = (0..path.u8(0..=2))
        .map(|_| path.u8(2..hops_needed.max(3)))
        .collect();
    let base_ms = path.f64() * 3.0 + 0.3;
    let mut rng = fastrand::Rng::new();
    let mut hops = Vec::new();
    for ttl in 1..=hops_needed {
        let last = ttl == hops_needed;
        let addr = if last {
            Some(destination)
        } else if silent.contains(&ttl) {
            None
        } else {
            Some(IpAddr::V4(Ipv4Addr::new(
                10,
                path.u8(0..=255),
                ttl,
                path.u8(1..=254),
            )))
        };
        let probes = (0..opts.queries.max(1))
            .map(|_| {
                let ms = base_ms + f64::from(ttl) * (1.0 + path.f64() * 0.1) + rng.f64() * 0.8;
                Probe {
                    rtt: addr.map(|_| Duration::from_secs_f64(ms / 1000.0)),
                    from: addr,
                    size: if addr.is_some() { 56 } else { 0 },
                    kind: addr.map(|_| {
                        if last {
                            ReplyKind::Reached
                        } else {
                            ReplyKind::TimeExceeded
                        }
                    }),
                }
            })
            .collect();
        hops.push(Hop {
            ttl,
            addr,
            host: None,
            probes,
        });
    }
    Trace {
        destination,
        protocol: opts.protocol,
        flow: opts.flow,
        source: None,
        started,
        duration: Duration::from_millis(u64::from(hops_needed) * 3),
        reached: true,
        hops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_stable_per_target_and_ends_at_the_destination() {
        let opts = TraceOptions::default();
        let a = trace("www.example.org", &opts);
        let b = trace("www.example.org", &opts);
        let addrs = |t: &Trace| t.hops.iter().map(|h| h.addr).collect::<Vec<_>>();
        assert_eq!(addrs(&a), addrs(&b));
        assert!(a.reached);
        assert_eq!(a.hops.last().unwrap().addr, Some(a.destination));
        assert!((5..=12).contains(&a.hops.len()));
        let other = trace("192.0.2.7", &opts);
        assert_eq!(other.destination, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn some_targets_have_silent_hops() {
        let opts = TraceOptions::default();
        let with_silence = (0..50)
            .filter(|i| {
                trace(&format!("host{i}.example"), &opts)
                    .hops
                    .iter()
                    .any(Hop::is_silent)
            })
            .count();
        assert!(with_silence > 10, "{with_silence}");
    }
}
