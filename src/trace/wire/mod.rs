//! Packet formats the engine builds and parses: zero-copy views over byte slices, no I/O.
//!
//! Each protocol file follows smoltcp: a `Packet<T: AsRef<[u8]>>` view whose `new_checked`
//! is the only door for untrusted bytes (after it returns `Ok`, no accessor can panic).
//! [`reply`] turns a received packet into what the engine needs (who answered, what it
//! said, which probe it answers) and [`probe`] writes the probes themselves.

pub mod checksum;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod mpls;
pub mod probe;
pub mod reply;
pub mod tcp;
pub mod udp;

use std::fmt;

/// Why bytes could not be read as a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header (or than a length field says).
    Truncated,
    /// A field holds a value the format does not allow (wrong version, header too short, ...).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated packet"),
            Error::Malformed => f.write_str("malformed packet"),
        }
    }
}

impl std::error::Error for Error {}

/// Result of wire parsing.
pub type Result<T> = core::result::Result<T, Error>;

/// IANA protocol numbers the engine deals with (IPv4 protocol / IPv6 next header).
pub mod ip_proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Reads a big-endian u16 at `at`; callers have checked the length.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at`; callers have checked the length.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
