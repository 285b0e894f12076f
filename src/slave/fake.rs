//! Fake traces for `-zDebugResults`: no privileges needed, a stable path per target with a
//! few silent hops and realistic RTTs, returned as a real [`Trace`] so everything after the
//! trace runs the same code as for real measurements (the result is marked `Debug`).
//!
//! The addresses are plausible and can never be mistaken for real ones: an IPv4 target is
//! reached over hops in 10.0.0.0/8 and an IPv6 one over hops in 2001:db8::/32 (documentation);
//! a name stands for an address in 198.51.100.0/24 (documentation), or `::1`/127.0.0.1 for
//! `localhost`; a loopback target is reached at once, in one hop.

use crate::trace::{Hop, Probe, ReplyKind, Trace, TraceOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    let destination = match address.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) if address.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Err(_) => IpAddr::V4(Ipv4Addr::new(198, 51, 100, path.u8(1..=254))),
    };
    let hops_needed = if destination.is_loopback() {
        1
    } else {
        path.u8(5..=12).min(opts.max_hops.max(1))
    };
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
        } else if destination.is_ipv6() {
            Some(IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                path.u16(..),
                u16::from(ttl),
                0,
                0,
                0,
                path.u16(1..),
            )))
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
                    mpls: Vec::new(),
                    // Routers start their replies at 255, hosts at 64, as most do.
                    reply_ttl: addr.map(|_| (if last { 64 } else { 255 }) - (ttl - 1)),
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
    fn addresses_are_plausible_for_the_target() {
        let opts = TraceOptions::default();
        let v6 = trace("2001:db8:ffff::9", &opts);
        assert!(v6.hops.iter().filter_map(|h| h.addr).all(|a| a.is_ipv6()));
        assert!(v6.hops.len() >= 5);
        for local in ["::1", "127.0.0.1", "localhost", "LOCALHOST"] {
            let t = trace(local, &opts);
            assert_eq!(t.hops.len(), 1, "{local}");
            assert!(t.destination.is_loopback(), "{local}");
            assert_eq!(t.hops[0].addr, Some(t.destination), "{local}");
        }
        let v4 = trace("192.0.2.7", &opts);
        assert!(v4.hops.iter().filter_map(|h| h.addr).all(|a| a.is_ipv4()));
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
