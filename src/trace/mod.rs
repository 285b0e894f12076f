//! The trace engine: probes a path hop by hop and reports what answered.
//!
//! The data model below is what the rest of the program sees. Behind it:
//! - [`engine`]: the TTL logic of one trace (what to send, when a hop is done, when to
//!   stop), over the narrow [`engine::Network`] trait, unit-tested with a scripted fake;
//! - `tracer`: [`Tracer`], shared raw sockets and receive threads, routing each reply to
//!   its trace by flow identity (or the unprivileged `IP_RECVERR` fallback);
//! - `pace`: the probe-rate cap, one token bucket per [`Tracer`];
//! - `socket`: every system call (the only `nix` user);
//! - [`wire`]: zero-copy packet views, probe construction and reply parsing (no I/O);
//! - `dns`: [`resolve`] and [`reverse_name`].
//!
//! The reply parser is fuzzed by `fuzz/` (`cd fuzz && cargo +nightly fuzz run reply`).

mod dns;
pub mod engine;
mod error;
pub mod mda;
mod pace;
mod socket;
mod tracer;
pub mod wire;

pub use dns::{Family, resolve, reverse_name};
pub use error::Error;
pub use pace::DEFAULT_PROBE_RATE;
pub use tracer::{Mode, Tracer};

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Which kind of probe packet is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// UDP datagrams to a high port (the seed's default).
    #[default]
    Udp,
    /// ICMP / ICMPv6 echo requests.
    Icmp,
    /// TCP SYN segments (port 80 by default).
    Tcp,
}

impl Protocol {
    /// The lower-case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Tcp => "tcp",
        }
    }

    /// Parses a name as written by [`Protocol::name`] (case-insensitive).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            "tcp" => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one trace is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceOptions {
    /// Probe kind.
    pub protocol: Protocol,
    /// Destination port for UDP/TCP; `None` picks the protocol's default.
    pub port: Option<u16>,
    /// Lowest TTL probed (1: from the first router; more skips the hops before it, whose
    /// answers a multipath discovery already has).
    pub first_ttl: u8,
    /// Highest TTL / hop limit probed.
    pub max_hops: u8,
    /// Probes sent per hop in each round (statistics); at least 1.
    pub queries: u8,
    /// Extra rounds that re-probe only the hops still unanswered (the seed's `Retries`).
    pub retries: u8,
    /// How long to wait for one probe's reply.
    pub timeout: Duration,
    /// Flow number: chooses the flow identity (Paris traceroute) of every probe of this trace.
    pub flow: u16,
    /// Give up after this many consecutive silent hops beyond the last answer.
    pub gap_limit: u8,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            protocol: Protocol::Udp,
            port: None,
            first_ttl: 1,
            max_hops: 30,
            queries: 1,
            retries: 1,
            timeout: Duration::from_millis(500),
            flow: 0,
            gap_limit: 5,
        }
    }
}

/// What a reply to one probe said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// ICMP time exceeded from a router on the way.
    TimeExceeded,
    /// The destination itself answered (port unreachable for UDP, echo reply, SYN-ACK or RST).
    Reached,
    /// Destination unreachable with a code other than "port unreachable" (`!H`, `!N`, `!X`, …).
    Unreachable(Unreachable),
}

/// Why a destination-unreachable reply ended the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Host unreachable (`!H`).
    Host,
    /// Network unreachable (`!N`).
    Net,
    /// Protocol unreachable (`!P`).
    Protocol,
    /// Administratively prohibited (`!X`).
    Prohibited,
    /// Any other code, as received (ICMP type 3 or ICMPv6 type 1 code).
    Other(u8),
}

impl Unreachable {
    /// The traceroute-style annotation, e.g. `!H`.
    pub fn annotation(self) -> String {
        match self {
            Unreachable::Host => "!H".into(),
            Unreachable::Net => "!N".into(),
            Unreachable::Protocol => "!P".into(),
            Unreachable::Prohibited => "!X".into(),
            Unreachable::Other(code) => format!("!<{code}>"),
        }
    }
}

/// One probe sent at a hop and what came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Round-trip time; `None` when no reply arrived in time.
    pub rtt: Option<Duration>,
    /// Who replied.
    pub from: Option<IpAddr>,
    /// Size in bytes of the reply packet (IP header included for IPv4, payload for IPv6).
    pub size: u16,
    /// The TTL (IPv4) or hop limit (IPv6) the reply arrived with; `None` without a reply or
    /// when the socket cannot tell (the error queue of unprivileged UDP).
    pub reply_ttl: Option<u8>,
    /// What the reply said; `None` without a reply.
    pub kind: Option<ReplyKind>,
    /// The MPLS label stack the reply reported (RFC 4950), top first; empty when none.
    pub mpls: Vec<wire::mpls::Label>,
}

/// One TTL of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// TTL / hop limit of the probes (1-based).
    pub ttl: u8,
    /// Address that answered (the first one, should several have); `None` for a silent hop.
    pub addr: Option<IpAddr>,
    /// Reverse DNS name of `addr`, when looked up and found.
    pub host: Option<String>,
    /// Every probe sent at this TTL, answered or not.
    pub probes: Vec<Probe>,
}

impl Hop {
    /// True when no probe at this TTL was answered.
    pub fn is_silent(&self) -> bool {
        self.addr.is_none()
    }

    /// The RTT of the first answered probe.
    pub fn first_rtt(&self) -> Option<Duration> {
        self.probes.iter().find_map(|p| p.rtt)
    }

    /// The TTL the first answered probe's reply arrived with, when known.
    pub fn reply_ttl(&self) -> Option<u8> {
        self.probes.iter().find(|p| p.rtt.is_some())?.reply_ttl
    }

    /// The size of the first answered probe's reply.
    pub fn reply_size(&self) -> u16 {
        self.probes
            .iter()
            .find(|p| p.rtt.is_some())
            .map_or(0, |p| p.size)
    }

    /// The end-of-path kind of this hop's replies (reached or unreachable), if any.
    pub fn terminal(&self) -> Option<ReplyKind> {
        self.probes
            .iter()
            .filter_map(|p| p.kind)
            .find(|k| *k != ReplyKind::TimeExceeded)
    }
}

/// A finished trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The address traced.
    pub destination: IpAddr,
    /// The probe kind used.
    pub protocol: Protocol,
    /// The flow number used.
    pub flow: u16,
    /// The local source address of the probes, when known.
    pub source: Option<IpAddr>,
    /// Wall-clock time the trace started.
    pub started: SystemTime,
    /// How long the trace took.
    pub duration: Duration,
    /// True when the destination itself answered.
    pub reached: bool,
    /// Hops by TTL, from 1 up to the last TTL probed that matters (trailing silence trimmed
    /// to the gap that ended the trace).
    pub hops: Vec<Hop>,
}

impl Trace {
    /// Fills [`Hop::host`] with reverse names, looked up in parallel, each waiting at
    /// most `timeout` (see [`reverse_name`]).
    pub fn fill_hosts(&mut self, timeout: Duration) {
        std::thread::scope(|s| {
            for hop in &mut self.hops {
                if let Some(addr) = hop.addr {
                    s.spawn(move || hop.host = reverse_name(addr, timeout));
                }
            }
        });
    }

    /// The unreachable code that ended the path, if one did.
    pub fn unreachable(&self) -> Option<Unreachable> {
        self.hops.iter().rev().find_map(|h| match h.terminal() {
            Some(ReplyKind::Unreachable(u)) => Some(u),
            _ => None,
        })
    }
}
