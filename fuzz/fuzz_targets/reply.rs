//! Fuzzes the reply parser: any bytes, as a raw IPv4 packet or as an ICMPv6 / TCP body,
//! must parse to a value or an error, never panic; and as the data of an ICMP error with
//! any RFC 4884 length, the MPLS label stack reader must give at most its cap of entries.
//!
//! Run (needs nightly and cargo-fuzz): `cd fuzz && cargo +nightly fuzz run reply`.

#![no_main]

use dist_traceroute::trace::wire::{mpls, reply};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv6Addr;

fuzz_target!(|data: &[u8]| {
    let from = Ipv6Addr::LOCALHOST;
    if let Ok(Some(r)) = reply::parse_ipv4(data) {
        // A reply's size is what was received, never more.
        assert!(usize::from(r.size) <= data.len());
    }
    let _ = reply::parse_icmpv6(from, data);
    let _ = reply::parse_tcpv6(from, data);
    if let Some((&length, rest)) = data.split_first() {
        for word in [4, 8] {
            assert!(mpls::label_stack(rest, length, word).labels().len() <= mpls::MAX_LABELS);
        }
    }
});
