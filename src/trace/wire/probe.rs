//! Writes probe packets: transport header and payload, to which the kernel adds the
//! IPv4 header; IPv6 probes carry their own header (see [`emit_ipv6`]).
//!
//! Paris traceroute (Augustin et al., IMC 2006): routers that balance load hash the
//! addresses, the protocol and the first four transport bytes (ports, or ICMP type, code
//! and checksum). Every probe of a trace keeps those identical and carries its sequence
//! number in a field the hash does not read:
//! - UDP: the checksum field *is* the sequence; two payload bytes make it come out right.
//! - ICMP echo: the sequence field varies and two payload bytes keep the checksum constant.
//! - TCP SYN: the sequence number (upper 16 bits) varies; ports stay fixed.

use super::{checksum, icmpv4, icmpv6, ip_proto, ipv6, tcp, udp};
use crate::trace::Protocol;
use std::net::IpAddr;

/// Constant bytes after the two compensation bytes, so a capture shows whose probe it is.
pub const TAG: &[u8; 8] = b"dist-tr\0";

/// Everything that goes into one probe packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Probe kind.
    pub protocol: Protocol,
    /// Local address the kernel will send from (needed for the pseudo-header checksum).
    pub src: IpAddr,
    /// Target address.
    pub dst: IpAddr,
    /// UDP/TCP source port, or ICMP echo identifier: the per-trace flow identity.
    pub ident: u16,
    /// UDP/TCP destination port (unused for ICMP).
    pub dst_port: u16,
    /// Probe sequence number; never 0 (a UDP checksum of 0 means "no checksum").
    pub seq: u16,
}

/// The ICMP checksum every echo probe of one flow carries (kept non-zero).
pub fn icmp_checksum(ident: u16) -> u16 {
    (ident.rotate_left(8) ^ 0x5a5a).max(1)
}

/// The TCP sequence number that carries probe sequence `seq`.
pub fn tcp_seq(seq: u16) -> u32 {
    u32::from(seq) << 16
}

/// The probe sequence carried by TCP sequence number `n`, if it is one of ours.
pub fn seq_from_tcp(n: u32) -> Option<u16> {
    (n & 0xffff == 0).then_some((n >> 16) as u16)
}

/// The IPv6 flow label of every probe of the flow with this identity: routers that hash
/// the label (Linux's default L3 multipath hash does) then spread flows like ports do,
/// and keep each flow on one branch. Never 0, which would mean "no label".
pub fn flow_label(ident: u16) -> u32 {
    let mixed = u32::from(ident).wrapping_mul(0x9e37_79b1);
    (mixed >> 12).max(1)
}

/// Writes an IPv6 probe with its fixed header into `buf` (cleared first): the header
/// carries [`flow_label`] of the probe's identity, and `hop_limit`.
pub fn emit_ipv6(spec: &ProbeSpec, hop_limit: u8, buf: &mut Vec<u8>) {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (spec.src, spec.dst) else {
        return emit(spec, buf);
    };
    emit(spec, buf);
    let next = match spec.protocol {
        Protocol::Udp => ip_proto::UDP,
        Protocol::Icmp => ip_proto::ICMPV6,
        Protocol::Tcp => ip_proto::TCP,
    };
    let mut h = [0u8; ipv6::HEADER_LEN];
    ipv6::write_header(
        &mut h,
        &ipv6::Header {
            flow_label: flow_label(spec.ident),
            payload_len: buf.len() as u16,
            next_header: next,
            hop_limit,
            src,
            dst,
        },
    );
    buf.splice(0..0, h);
}

/// Writes the probe described by `spec` into `buf` (cleared first).
pub fn emit(spec: &ProbeSpec, buf: &mut Vec<u8>) {
    buf.clear();
    match spec.protocol {
        Protocol::Udp => emit_udp(spec, buf),
        Protocol::Icmp => emit_icmp(spec, buf),
        Protocol::Tcp => emit_tcp(spec, buf),
    }
}

fn emit_udp(spec: &ProbeSpec, buf: &mut Vec<u8>) {
    let len = udp::HEADER_LEN + 2 + TAG.len();
    buf.resize(len, 0);
    let mut p = udp::Packet::new_unchecked(&mut buf[..]);
    p.set_src_port(spec.ident);
    p.set_dst_port(spec.dst_port);
    p.set_len(len as u16);
    p.set_checksum(0);
    p.payload_mut()[2..].copy_from_slice(TAG);
    let acc = checksum::add(
        checksum::pseudo_header(spec.src, spec.dst, ip_proto::UDP, len as u32),
        &buf[..],
    );
    // The receiver verifies that the sum over everything, checksum included, is 0xffff:
    // so the data (without the field) must sum to !seq.
    let w = checksum::compensate(acc, !spec.seq);
    buf[udp::HEADER_LEN..udp::HEADER_LEN + 2].copy_from_slice(&w.to_be_bytes());
    udp::Packet::new_unchecked(&mut buf[..]).set_checksum(spec.seq);
}

fn emit_icmp(spec: &ProbeSpec, buf: &mut Vec<u8>) {
    let len = icmpv4::HEADER_LEN + 2 + TAG.len();
    buf.resize(len, 0);
    let v6 = spec.dst.is_ipv6();
    if v6 {
        let mut p = icmpv6::Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmpv6::Message::EchoRequest);
        p.set_echo_ident(spec.ident);
        p.set_echo_seq_no(spec.seq);
    } else {
        let mut p = icmpv4::Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmpv4::Message::EchoRequest);
        p.set_echo_ident(spec.ident);
        p.set_echo_seq_no(spec.seq);
    }
    buf[icmpv4::HEADER_LEN + 2..].copy_from_slice(TAG);
    let mut acc = checksum::add(0, &buf[..]);
    if v6 {
        // ICMPv6 sums a pseudo header too (RFC 4443 §2.3); the kernel recomputes the
        // field on raw ICMPv6 sockets, and gets this same value.
        acc = checksum::add(
            acc,
            &checksum::fold(checksum::pseudo_header(
                spec.src,
                spec.dst,
                ip_proto::ICMPV6,
                len as u32,
            ))
            .to_be_bytes(),
        );
    }
    let target = icmp_checksum(spec.ident);
    let w = checksum::compensate(acc, !target);
    buf[icmpv4::HEADER_LEN..icmpv4::HEADER_LEN + 2].copy_from_slice(&w.to_be_bytes());
    buf[2..4].copy_from_slice(&target.to_be_bytes());
}

fn emit_tcp(spec: &ProbeSpec, buf: &mut Vec<u8>) {
    // A SYN without options looks odd to some firewalls; carry the usual MSS option.
    let len = tcp::HEADER_LEN + 4;
    buf.resize(len, 0);
    let mut p = tcp::Packet::new_unchecked(&mut buf[..]);
    p.set_src_port(spec.ident);
    p.set_dst_port(spec.dst_port);
    p.set_seq_number(tcp_seq(spec.seq));
    p.set_ack_number(0);
    p.set_header_len(len);
    p.set_flags(tcp::SYN);
    p.set_window(64240);
    p.set_checksum(0);
    p.set_urgent(0);
    buf[tcp::HEADER_LEN..].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let acc = checksum::add(
        checksum::pseudo_header(spec.src, spec.dst, ip_proto::TCP, len as u32),
        &buf[..],
    );
    tcp::Packet::new_unchecked(&mut buf[..]).set_checksum(checksum::finish(acc));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(protocol: Protocol, seq: u16, v6: bool) -> ProbeSpec {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                "fd00:99::2".parse().unwrap(),
                "fd00:99:6::2".parse().unwrap(),
            )
        } else {
            ("10.99.0.2".parse().unwrap(), "10.99.6.2".parse().unwrap())
        };
        ProbeSpec {
            protocol,
            src,
            dst,
            ident: 61000,
            dst_port: 33434,
            seq,
        }
    }

    fn verifies(s: &ProbeSpec, buf: &[u8], proto: u8) -> bool {
        let acc = checksum::pseudo_header(s.src, s.dst, proto, buf.len() as u32);
        checksum::fold(checksum::add(acc, buf)) == 0xffff
    }

    #[test]
    fn udp_checksum_is_the_sequence_and_verifies() {
        let mut buf = Vec::new();
        for v6 in [false, true] {
            for seq in [1, 2, 0x7fff, 0xfffe, 0xffff] {
                let s = spec(Protocol::Udp, seq, v6);
                emit(&s, &mut buf);
                let p = udp::Packet::new_checked(&buf[..]).unwrap();
                assert_eq!(p.checksum(), seq);
                assert_eq!((p.src_port(), p.dst_port()), (61000, 33434));
                assert!(verifies(&s, &buf, ip_proto::UDP), "seq {seq} v6 {v6}");
            }
        }
    }

    #[test]
    fn icmp_checksum_is_constant_and_verifies() {
        let mut buf = Vec::new();
        for seq in [1, 2, 300, 0xffff] {
            let s = spec(Protocol::Icmp, seq, false);
            emit(&s, &mut buf);
            let p = icmpv4::Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(p.echo_seq_no(), seq);
            assert_eq!(p.checksum(), icmp_checksum(61000));
            assert!(p.verify_checksum());
            let s6 = spec(Protocol::Icmp, seq, true);
            emit(&s6, &mut buf);
            assert!(verifies(&s6, &buf, ip_proto::ICMPV6));
            assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), icmp_checksum(61000));
        }
    }

    #[test]
    fn ipv6_probes_carry_their_header_and_one_label_per_flow() {
        let mut buf = Vec::new();
        for proto in [Protocol::Udp, Protocol::Icmp, Protocol::Tcp] {
            let s = spec(proto, 9, true);
            emit_ipv6(&s, 7, &mut buf);
            let p = ipv6::Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(p.hop_limit(), 7);
            assert_eq!(p.flow_label(), flow_label(61000));
            assert_eq!(usize::from(p.payload_len()) + ipv6::HEADER_LEN, buf.len());
            assert_eq!(
                (IpAddr::V6(p.src_addr()), IpAddr::V6(p.dst_addr())),
                (s.src, s.dst)
            );
            let mut transport = Vec::new();
            emit(&s, &mut transport);
            assert_eq!(&buf[ipv6::HEADER_LEN..], &transport[..], "{proto:?}");
        }
        let labels: std::collections::HashSet<u32> = (61000..=65535).map(flow_label).collect();
        assert_eq!(labels.len(), 4536, "every flow its own label");
        assert!(labels.iter().all(|&l| l > 0 && l < 1 << 20));
    }

    #[test]
    fn tcp_syn_verifies_and_carries_sequence() {
        let mut buf = Vec::new();
        for v6 in [false, true] {
            let s = spec(Protocol::Tcp, 77, v6);
            emit(&s, &mut buf);
            let p = tcp::Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(p.flags(), tcp::SYN);
            assert_eq!(seq_from_tcp(p.seq_number()), Some(77));
            assert!(verifies(&s, &buf, ip_proto::TCP));
        }
        assert_eq!(seq_from_tcp(0x0001_0001), None);
    }
}
