//! Placeholder for the raw-socket engine while it is built on its own branch.

use super::{Trace, TraceOptions};
use std::net::IpAddr;
use std::time::Duration;

/// Address family filter for name resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// Errors of the engine.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Error {}

/// The engine.
pub struct Tracer;

impl Tracer {
    /// Not available yet.
    pub fn new() -> Result<Tracer, Error> {
        Err(Error("the raw-socket engine is not built yet".into()))
    }
    /// Mode.
    pub fn mode(&self) -> String {
        String::new()
    }
    /// Trace.
    pub fn trace(&self, _dest: IpAddr, _opts: &TraceOptions) -> Result<Trace, Error> {
        Err(Error("the raw-socket engine is not built yet".into()))
    }
}

/// Resolves a name or literal.
pub fn resolve(host: &str, family: Option<Family>) -> Result<IpAddr, Error> {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .map_err(|e| Error(e.to_string()))?
        .map(|a| a.ip())
        .find(|ip| match family {
            Some(Family::V4) => ip.is_ipv4(),
            Some(Family::V6) => ip.is_ipv6(),
            None => true,
        })
        .ok_or_else(|| Error(format!("{host} has no address of that family")))
}

/// Reverse name (none yet).
pub fn reverse_name(_addr: IpAddr, _timeout: Duration) -> Option<String> {
    None
}
