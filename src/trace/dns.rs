//! Name lookups around a trace: host name to address, and time-bounded, cached reverse
//! names for the hops.

use super::Error;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// An address family, to restrict name resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl Family {
    /// True when `addr` belongs to this family.
    pub fn matches(self, addr: IpAddr) -> bool {
        matches!(
            (self, addr),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// Turns a host name or address literal into one address, of `family` when given.
///
/// With no family the system resolver's first answer wins (its order follows RFC 6724,
/// as configured in gai.conf).
pub fn resolve(host: &str, family: Option<Family>) -> Result<IpAddr, Error> {
    let fail = |reason: String| Error::Resolve {
        host: host.to_string(),
        reason,
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(a) = literal.parse::<IpAddr>() {
        return match family {
            Some(f) if !f.matches(a) => Err(fail(format!("{a} is not an {f} address"))),
            _ => Ok(a),
        };
    }
    if host.is_empty() {
        return Err(fail("empty host name".into()));
    }
    let addrs = (host, 0)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?;
    let mut any = false;
    for a in addrs {
        any = true;
        if family.is_none_or(|f| f.matches(a.ip())) {
            return Ok(a.ip());
        }
    }
    Err(fail(match (any, family) {
        (true, Some(f)) => format!("no {f} address"),
        _ => "no address".into(),
    }))
}

/// How long a reverse name (or its absence) is remembered.
const CACHE_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
enum Entry {
    Done(Option<String>, Instant),
    Pending(Instant),
}

fn cache() -> &'static Mutex<HashMap<IpAddr, Entry>> {
    static CACHE: OnceLock<Mutex<HashMap<IpAddr, Entry>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The reverse DNS name of `addr`, waiting at most `timeout`; cached for an hour.
///
/// The lookup runs on its own thread, so a slow resolver costs the caller only the
/// timeout; its answer still lands in the cache for the next trace. At most one lookup
/// per address is in flight.
pub fn reverse_name(addr: IpAddr, timeout: Duration) -> Option<String> {
    let now = Instant::now();
    {
        let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
        match c.get(&addr) {
            Some(Entry::Done(name, at)) if now.duration_since(*at) < CACHE_TTL => {
                return name.clone();
            }
            // Somebody else is asking; don't pile up threads on a hanging resolver.
            Some(Entry::Pending(at)) if now.duration_since(*at) < Duration::from_secs(30) => {
                return None;
            }
            _ => {}
        }
        c.insert(addr, Entry::Pending(now));
    }
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new().name("rdns".into()).spawn(move || {
        // NI_NAMEREQD: fail instead of returning the address as text.
        let name = dns_lookup::getnameinfo(&SocketAddr::new(addr, 0), nix::libc::NI_NAMEREQD)
            .ok()
            .map(|(host, _)| host);
        cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, Entry::Done(name.clone(), Instant::now()));
        let _ = tx.send(name);
    });
    if spawned.is_err() {
        cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        return None;
    }
    rx.recv_timeout(timeout).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_family_filter() {
        assert_eq!(
            resolve("192.0.2.1", None).unwrap(),
            IpAddr::from([192, 0, 2, 1])
        );
        assert_eq!(
            resolve("[2001:db8::1]", Some(Family::V6))
                .unwrap()
                .to_string(),
            "2001:db8::1"
        );
        assert!(matches!(
            resolve("192.0.2.1", Some(Family::V6)),
            Err(Error::Resolve { .. })
        ));
        assert!(matches!(resolve("", None), Err(Error::Resolve { .. })));
        assert!(
            resolve("localhost", Some(Family::V4))
                .unwrap()
                .is_loopback()
        );
    }

    #[test]
    fn reverse_name_of_loopback_is_cached() {
        let a = IpAddr::from([127, 0, 0, 1]);
        let first = reverse_name(a, Duration::from_secs(5));
        assert_eq!(reverse_name(a, Duration::from_millis(1)), first);
    }
}
