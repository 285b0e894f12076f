//! Reads a received packet as an answer to a probe: who answered, what it said, and the
//! identity of the probe it answers (taken from the quoted datagram, never from timing).

use super::mpls::{LabelStack, label_stack};
use super::{Result, icmpv4, icmpv6, ip_proto, ipv4, ipv6, probe, tcp, udp};
use crate::trace::{Protocol, ReplyKind, Unreachable};
use std::net::{IpAddr, Ipv6Addr};

/// The identity of one probe as read back from a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeId {
    /// Probe kind.
    pub protocol: Protocol,
    /// Where the probe was going.
    pub dst: IpAddr,
    /// UDP/TCP source port or ICMP echo identifier.
    pub ident: u16,
    /// UDP/TCP destination port (0 for ICMP).
    pub dst_port: u16,
    /// Probe sequence number.
    pub seq: u16,
}

/// A packet that answers one of our probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Who sent it.
    pub from: IpAddr,
    /// What it says.
    pub kind: ReplyKind,
    /// Which probe it answers.
    pub probe: ProbeId,
    /// Its size: the whole IPv4 packet, or the IPv6 payload.
    pub size: u16,
    /// The TTL (hop limit) left in the probe as the error quotes it: how far it got. The
    /// destination's error quoting more than 1 says the probe reached it with TTL to spare,
    /// so the destination is nearer than the probe's TTL. `None` for echo replies and TCP.
    pub quoted_ttl: Option<u8>,
    /// The MPLS labels the probe carried where it expired (RFC 4950), when the error says.
    pub mpls: LabelStack,
}

/// Parses a whole IPv4 packet from a raw ICMP or TCP socket.
///
/// `Ok(None)` is a well-formed packet that answers no probe (an echo request, a TCP
/// segment that is not a SYN-ACK or RST, an error quoting something else).
pub fn parse_ipv4(packet: &[u8]) -> Result<Option<Reply>> {
    let ip = ipv4::Packet::new_checked(packet)?;
    let from = IpAddr::V4(ip.src_addr());
    let size = packet.len().min(usize::from(u16::MAX)) as u16;
    // Only the first fragment carries the transport header.
    if ip.frag_offset() != 0 {
        return Ok(None);
    }
    let body = &packet[ip.header_len()..];
    match ip.protocol() {
        ip_proto::ICMP => parse_icmpv4(from, body, size),
        ip_proto::TCP => parse_tcp(from, body, size),
        _ => Ok(None),
    }
}

fn parse_icmpv4(from: IpAddr, body: &[u8], size: u16) -> Result<Option<Reply>> {
    let icmp = icmpv4::Packet::new_checked(body)?;
    let code = icmp.msg_code();
    let msg = icmp.msg_type();
    if msg == icmpv4::Message::EchoReply {
        let probe = ProbeId {
            protocol: Protocol::Icmp,
            dst: from,
            ident: icmp.echo_ident(),
            dst_port: 0,
            seq: icmp.echo_seq_no(),
        };
        return Ok(Some(Reply {
            from,
            kind: ReplyKind::Reached,
            probe,
            size,
            quoted_ttl: None,
            mpls: LabelStack::default(),
        }));
    }
    if !matches!(
        msg,
        icmpv4::Message::TimeExceeded | icmpv4::Message::DstUnreachable
    ) {
        return Ok(None);
    }
    let quoted = icmp.quoted();
    let inner = ipv4::Packet::new_checked(quoted)?;
    if inner.frag_offset() != 0 {
        return Ok(None);
    }
    // The quote's total length describes the original datagram, not the quote: take
    // whatever transport bytes came back.
    let transport = &quoted[inner.header_len()..];
    let dst = IpAddr::V4(inner.dst_addr());
    let Some(probe) = quoted_probe(inner.protocol(), dst, transport)? else {
        return Ok(None);
    };
    let Some(kind) = classify_v4(msg.into(), code, probe.protocol) else {
        return Ok(None);
    };
    Ok(Some(Reply {
        from,
        kind,
        probe,
        size,
        quoted_ttl: Some(inner.ttl()),
        mpls: label_stack(icmp.data(), icmp.err_length(), 4),
    }))
}

/// Parses an ICMPv6 message as a raw ICMPv6 socket delivers it (no IPv6 header).
pub fn parse_icmpv6(from: Ipv6Addr, body: &[u8]) -> Result<Option<Reply>> {
    let icmp = icmpv6::Packet::new_checked(body)?;
    let from_ip = IpAddr::V6(from);
    let size = body.len().min(usize::from(u16::MAX)) as u16;
    let code = icmp.msg_code();
    let msg = icmp.msg_type();
    if msg == icmpv6::Message::EchoReply {
        let probe = ProbeId {
            protocol: Protocol::Icmp,
            dst: from_ip,
            ident: icmp.echo_ident(),
            dst_port: 0,
            seq: icmp.echo_seq_no(),
        };
        return Ok(Some(Reply {
            from: from_ip,
            kind: ReplyKind::Reached,
            probe,
            size,
            quoted_ttl: None,
            mpls: LabelStack::default(),
        }));
    }
    if !matches!(
        msg,
        icmpv6::Message::TimeExceeded
            | icmpv6::Message::DstUnreachable
            | icmpv6::Message::ParamProblem
    ) {
        return Ok(None);
    }
    let quoted = icmp.quoted();
    let inner = ipv6::Packet::new_checked(quoted)?;
    let transport = &quoted[ipv6::HEADER_LEN..];
    let dst = IpAddr::V6(inner.dst_addr());
    // Probes carry no extension headers, so the next header is the transport.
    let Some(probe) = quoted_probe(inner.next_header(), dst, transport)? else {
        return Ok(None);
    };
    let Some(kind) = classify_v6(msg.into(), code, probe.protocol) else {
        return Ok(None);
    };
    Ok(Some(Reply {
        from: from_ip,
        kind,
        probe,
        size,
        quoted_ttl: Some(inner.hop_limit()),
        mpls: label_stack(icmp.data(), icmp.err_length(), 8),
    }))
}

/// What an ICMP error (type, code) means for a probe of this protocol; `None` when it is
/// not about the probe's TTL or destination.
pub fn classify_v4(msg_type: u8, code: u8, protocol: Protocol) -> Option<ReplyKind> {
    let kind = match icmpv4::Message::from(msg_type) {
        icmpv4::Message::TimeExceeded if code == 0 => ReplyKind::TimeExceeded,
        // Code 1 is "fragment reassembly time exceeded": not about our TTL.
        icmpv4::Message::DstUnreachable => match code {
            // RFC 1122 §3.2.2.1: port unreachable comes from the destination host itself.
            3 if protocol == Protocol::Udp => ReplyKind::Reached,
            0 => ReplyKind::Unreachable(Unreachable::Net),
            1 => ReplyKind::Unreachable(Unreachable::Host),
            2 => ReplyKind::Unreachable(Unreachable::Protocol),
            // RFC 1812 §5.2.7.1: 9, 10 and 13 are administrative prohibitions.
            9 | 10 | 13 => ReplyKind::Unreachable(Unreachable::Prohibited),
            other => ReplyKind::Unreachable(Unreachable::Other(other)),
        },
        _ => return None,
    };
    Some(kind)
}

/// ICMPv6 counterpart of [`classify_v4`].
pub fn classify_v6(msg_type: u8, code: u8, protocol: Protocol) -> Option<ReplyKind> {
    let kind = match (icmpv6::Message::from(msg_type), code) {
        (icmpv6::Message::TimeExceeded, 0) => ReplyKind::TimeExceeded,
        (icmpv6::Message::DstUnreachable, 4) if protocol == Protocol::Udp => ReplyKind::Reached,
        // RFC 4443 §3.1: 0 no route, 1 prohibited, 3 address unreachable,
        // 5 source address failed policy, 6 reject route.
        (icmpv6::Message::DstUnreachable, 0) => ReplyKind::Unreachable(Unreachable::Net),
        (icmpv6::Message::DstUnreachable, 3) => ReplyKind::Unreachable(Unreachable::Host),
        (icmpv6::Message::DstUnreachable, 1 | 5 | 6) => {
            ReplyKind::Unreachable(Unreachable::Prohibited)
        }
        (icmpv6::Message::DstUnreachable, c) => ReplyKind::Unreachable(Unreachable::Other(c)),
        // RFC 4443 §3.4 code 1: unrecognized next header, the IPv6 protocol unreachable.
        (icmpv6::Message::ParamProblem, 1) => ReplyKind::Unreachable(Unreachable::Protocol),
        _ => return None,
    };
    Some(kind)
}

/// Parses a TCP segment as a raw IPv6 TCP socket delivers it (no IPv6 header).
pub fn parse_tcpv6(from: Ipv6Addr, body: &[u8]) -> Result<Option<Reply>> {
    let size = body.len().min(usize::from(u16::MAX)) as u16;
    parse_tcp(IpAddr::V6(from), body, size)
}

/// A SYN-ACK or RST answering a SYN probe: the destination was reached.
fn parse_tcp(from: IpAddr, body: &[u8], size: u16) -> Result<Option<Reply>> {
    let seg = tcp::Packet::new_checked(body)?;
    let flags = seg.flags();
    // Both answers to a SYN acknowledge it (RFC 9293 §3.10.7.1 for the RST of a closed port).
    if flags & tcp::ACK == 0 || flags & (tcp::SYN | tcp::RST) == 0 {
        return Ok(None);
    }
    let Some(seq) = probe::seq_from_tcp(seg.ack_number().wrapping_sub(1)) else {
        return Ok(None);
    };
    let probe = ProbeId {
        protocol: Protocol::Tcp,
        dst: from,
        ident: seg.dst_port(),
        dst_port: seg.src_port(),
        seq,
    };
    Ok(Some(Reply {
        from,
        kind: ReplyKind::Reached,
        probe,
        size,
        quoted_ttl: None,
        mpls: LabelStack::default(),
    }))
}

/// The probe identity in the transport bytes of a quoted datagram.
fn quoted_probe(proto: u8, dst: IpAddr, transport: &[u8]) -> Result<Option<ProbeId>> {
    let id = match proto {
        ip_proto::UDP => {
            let u = udp::Packet::new_checked(transport)?;
            ProbeId {
                protocol: Protocol::Udp,
                dst,
                ident: u.src_port(),
                dst_port: u.dst_port(),
                seq: u.checksum(),
            }
        }
        ip_proto::TCP => {
            let t = tcp::Quote::new_checked(transport)?;
            let Some(seq) = probe::seq_from_tcp(t.seq_number()) else {
                return Ok(None);
            };
            ProbeId {
                protocol: Protocol::Tcp,
                dst,
                ident: t.src_port(),
                dst_port: t.dst_port(),
                seq,
            }
        }
        ip_proto::ICMP if dst.is_ipv4() => {
            let e = icmpv4::Packet::new_checked(transport)?;
            if e.msg_type() != icmpv4::Message::EchoRequest {
                return Ok(None);
            }
            icmp_id(dst, e.echo_ident(), e.echo_seq_no())
        }
        ip_proto::ICMPV6 if dst.is_ipv6() => {
            let e = icmpv6::Packet::new_checked(transport)?;
            if e.msg_type() != icmpv6::Message::EchoRequest {
                return Ok(None);
            }
            icmp_id(dst, e.echo_ident(), e.echo_seq_no())
        }
        _ => return Ok(None),
    };
    Ok(Some(id))
}

fn icmp_id(dst: IpAddr, ident: u16, seq: u16) -> ProbeId {
    ProbeId {
        protocol: Protocol::Icmp,
        dst,
        ident,
        dst_port: 0,
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Error;
    use super::*;
    use std::net::Ipv4Addr;

    // Captured with a raw socket on the prober of a netns chain
    // (10.99.0.1 / fd00:99::1 -> router 10.99.0.2 / fd00:99::2 -> 10.99.1.2 / fd00:99:1::2),
    // probes sent by this engine.

    /// Time exceeded from router 10.99.0.2 quoting a UDP probe (sequence 0xd8d3).
    static V4_TE_UDP: [u8; 66] = [
        0x45, 0xc0, 0x00, 0x42, 0xa0, 0x14, 0x00, 0x00, 0x40, 0x01, 0xc5, 0x1e, 0x0a, 0x63, 0x00,
        0x02, 0x0a, 0x63, 0x00, 0x01, 0x0b, 0x00, 0x0a, 0xec, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00,
        0x00, 0x26, 0x26, 0x94, 0x40, 0x00, 0x01, 0x11, 0x3d, 0x6b, 0x0a, 0x63, 0x00, 0x01, 0x0a,
        0x63, 0x01, 0x02, 0xee, 0x48, 0x82, 0x9a, 0x00, 0x12, 0xd8, 0xd3, 0x28, 0xf8, 0x64, 0x69,
        0x73, 0x74, 0x2d, 0x74, 0x72, 0x00,
    ];

    /// Port unreachable from the destination 10.99.1.2 (sequence 0xd8d4).
    static V4_PORT_UNREACH: [u8; 66] = [
        0x45, 0xc0, 0x00, 0x42, 0x43, 0x81, 0x00, 0x00, 0x3f, 0x01, 0x21, 0xb2, 0x0a, 0x63, 0x01,
        0x02, 0x0a, 0x63, 0x00, 0x01, 0x03, 0x03, 0x12, 0xe9, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00,
        0x00, 0x26, 0x26, 0x95, 0x40, 0x00, 0x01, 0x11, 0x3d, 0x6a, 0x0a, 0x63, 0x00, 0x01, 0x0a,
        0x63, 0x01, 0x02, 0xee, 0x48, 0x82, 0x9a, 0x00, 0x12, 0xd8, 0xd4, 0x28, 0xf7, 0x64, 0x69,
        0x73, 0x74, 0x2d, 0x74, 0x72, 0x00,
    ];

    /// Time exceeded from 10.99.0.2 quoting an echo probe (id 61000, sequence 0x329d).
    static V4_TE_ICMP: [u8; 66] = [
        0x45, 0xc0, 0x00, 0x42, 0xa0, 0x1e, 0x00, 0x00, 0x40, 0x01, 0xc5, 0x14, 0x0a, 0x63, 0x00,
        0x02, 0x0a, 0x63, 0x00, 0x01, 0x0b, 0x00, 0xf4, 0xff, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00,
        0x00, 0x26, 0xfc, 0xb3, 0x40, 0x00, 0x01, 0x01, 0x67, 0x5b, 0x0a, 0x63, 0x00, 0x01, 0x0a,
        0x63, 0x01, 0x02, 0x08, 0x00, 0x12, 0xb4, 0xee, 0x48, 0x32, 0x9d, 0x4d, 0x13, 0x64, 0x69,
        0x73, 0x74, 0x2d, 0x74, 0x72, 0x00,
    ];

    /// Echo reply from the destination 10.99.1.2 (id 61000, sequence 0x329e).
    static V4_ECHO_REPLY: [u8; 38] = [
        0x45, 0x00, 0x00, 0x26, 0x43, 0xa6, 0x00, 0x00, 0x3f, 0x01, 0x22, 0x69, 0x0a, 0x63, 0x01,
        0x02, 0x0a, 0x63, 0x00, 0x01, 0x00, 0x00, 0x1a, 0xb4, 0xee, 0x48, 0x32, 0x9e, 0x4d, 0x12,
        0x64, 0x69, 0x73, 0x74, 0x2d, 0x74, 0x72, 0x00,
    ];

    /// Time exceeded from 10.99.0.2 quoting a SYN probe (port 61000 -> 80, sequence 0x4522 << 16).
    static V4_TE_TCP: [u8; 72] = [
        0x45, 0xc0, 0x00, 0x48, 0xa0, 0x20, 0x00, 0x00, 0x40, 0x01, 0xc5, 0x0c, 0x0a, 0x63, 0x00,
        0x02, 0x0a, 0x63, 0x00, 0x01, 0x0b, 0x00, 0x0a, 0xe7, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00,
        0x00, 0x2c, 0x8b, 0x77, 0x40, 0x00, 0x01, 0x06, 0xd8, 0x8c, 0x0a, 0x63, 0x00, 0x01, 0x0a,
        0x63, 0x01, 0x02, 0xee, 0x48, 0x00, 0x50, 0x45, 0x22, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x60, 0x02, 0xfa, 0xf0, 0x53, 0xb2, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];

    /// RST+ACK from the destination 10.99.1.2 (closed port 80), acknowledging 0x4523 << 16.
    static V4_TCP_RST: [u8; 40] = [
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x3f, 0x06, 0x26, 0x08, 0x0a, 0x63, 0x01,
        0x02, 0x0a, 0x63, 0x00, 0x01, 0x00, 0x50, 0xee, 0x48, 0x00, 0x00, 0x00, 0x00, 0x45, 0x23,
        0x00, 0x01, 0x50, 0x14, 0x00, 0x00, 0x66, 0x4b, 0x00, 0x00,
    ];

    /// SYN-ACK from a listening port 80 on 10.99.1.2, acknowledging 0x4a5a << 16.
    static V4_SYN_ACK: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x40, 0x00, 0x3f, 0x06, 0x26, 0x04, 0x0a, 0x63, 0x01,
        0x02, 0x0a, 0x63, 0x00, 0x01, 0x00, 0x50, 0xee, 0x48, 0x94, 0xc0, 0x2a, 0xf0, 0x4a, 0x5a,
        0x00, 0x01, 0x60, 0x12, 0xfa, 0xf0, 0x15, 0xe7, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];

    /// ICMPv6 time exceeded from fd00:99::2 quoting a UDP probe (sequence 0x5da8).
    static V6_TE_UDP: [u8; 66] = [
        0x03, 0x00, 0x5f, 0x75, 0x00, 0x00, 0x00, 0x00, 0x60, 0x04, 0x30, 0xe3, 0x00, 0x12, 0x11,
        0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0xee, 0x48, 0x82, 0x9a, 0x00, 0x12, 0x5d, 0xa8, 0xbe, 0xb4, 0x64, 0x69,
        0x73, 0x74, 0x2d, 0x74, 0x72, 0x00,
    ];

    /// ICMPv6 port unreachable from fd00:99:1::2 (sequence 0x5da9).
    static V6_PORT_UNREACH: [u8; 66] = [
        0x01, 0x04, 0x61, 0x70, 0x00, 0x00, 0x00, 0x00, 0x60, 0x04, 0x30, 0xe3, 0x00, 0x12, 0x11,
        0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0xee, 0x48, 0x82, 0x9a, 0x00, 0x12, 0x5d, 0xa9, 0xbe, 0xb3, 0x64, 0x69,
        0x73, 0x74, 0x2d, 0x74, 0x72, 0x00,
    ];

    /// ICMPv6 time exceeded from fd00:99::2 quoting an echo probe (sequence 0x9a3a).
    static V6_TE_ICMP: [u8; 66] = [
        0x03, 0x00, 0x01, 0x70, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0x66, 0x13, 0x00, 0x12, 0x3a,
        0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0x80, 0x00, 0x12, 0xb4, 0xee, 0x48, 0x9a, 0x3a, 0x71, 0xf1, 0x64, 0x69,
        0x73, 0x74, 0x2d, 0x74, 0x72, 0x00,
    ];

    /// ICMPv6 echo reply from fd00:99:1::2 (sequence 0x9a3b).
    static V6_ECHO_REPLY: [u8; 18] = [
        0x81, 0x00, 0x11, 0xb4, 0xee, 0x48, 0x9a, 0x3b, 0x71, 0xf0, 0x64, 0x69, 0x73, 0x74, 0x2d,
        0x74, 0x72, 0x00,
    ];

    /// ICMPv6 time exceeded from fd00:99::2 quoting a SYN (sequence 0x23ef << 16).
    static V6_TE_TCP: [u8; 72] = [
        0x03, 0x00, 0xe9, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x60, 0x0f, 0xb1, 0xfc, 0x00, 0x18, 0x06,
        0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0xee, 0x48, 0x00, 0x50, 0x23, 0xef, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x60, 0x02, 0xfa, 0xf0, 0x8f, 0x76, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];

    /// RST+ACK from fd00:99:1::2 acknowledging 0x23f0 << 16.
    static V6_TCP_RST: [u8; 20] = [
        0x00, 0x50, 0xee, 0x48, 0x00, 0x00, 0x00, 0x00, 0x23, 0xf0, 0x00, 0x01, 0x50, 0x14, 0x00,
        0x00, 0xfb, 0x51, 0x00, 0x00,
    ];

    /// A neighbour advertisement the raw ICMPv6 socket also sees.
    static V6_NEIGHBOR_ADV: [u8; 32] = [
        0x88, 0x00, 0x16, 0xc8, 0xe0, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x01, 0x9e, 0xd7, 0xc9, 0xb0,
        0x1d, 0x80,
    ];

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn id(protocol: Protocol, dst: IpAddr, dst_port: u16, seq: u16) -> ProbeId {
        ProbeId {
            protocol,
            dst,
            ident: 61000,
            dst_port,
            seq,
        }
    }

    /// Every captured probe was sent with just the TTL it needed, so an error quotes 1 left;
    /// echo replies and TCP answers quote nothing.
    fn quoted(kind: ReplyKind, probe: ProbeId) -> Option<u8> {
        (kind == ReplyKind::TimeExceeded || probe.protocol == Protocol::Udp).then_some(1)
    }

    #[test]
    fn parse_ipv4_table() {
        let dst = v4("10.99.1.2");
        let table: [(&[u8], &str, ReplyKind, ProbeId); 7] = [
            (
                &V4_TE_UDP,
                "10.99.0.2",
                ReplyKind::TimeExceeded,
                id(Protocol::Udp, dst, 33434, 0xd8d3),
            ),
            (
                &V4_PORT_UNREACH,
                "10.99.1.2",
                ReplyKind::Reached,
                id(Protocol::Udp, dst, 33434, 0xd8d4),
            ),
            (
                &V4_TE_ICMP,
                "10.99.0.2",
                ReplyKind::TimeExceeded,
                id(Protocol::Icmp, dst, 0, 0x329d),
            ),
            (
                &V4_ECHO_REPLY,
                "10.99.1.2",
                ReplyKind::Reached,
                id(Protocol::Icmp, dst, 0, 0x329e),
            ),
            (
                &V4_TE_TCP,
                "10.99.0.2",
                ReplyKind::TimeExceeded,
                id(Protocol::Tcp, dst, 80, 0x4522),
            ),
            (
                &V4_TCP_RST,
                "10.99.1.2",
                ReplyKind::Reached,
                id(Protocol::Tcp, dst, 80, 0x4523),
            ),
            (
                &V4_SYN_ACK,
                "10.99.1.2",
                ReplyKind::Reached,
                id(Protocol::Tcp, dst, 80, 0x4a5a),
            ),
        ];
        for (bytes, from, kind, probe) in table {
            let r = parse_ipv4(bytes).unwrap().expect("a reply");
            assert_eq!(
                r,
                Reply {
                    from: v4(from),
                    kind,
                    probe,
                    size: bytes.len() as u16,
                    quoted_ttl: quoted(kind, probe),
                    mpls: Default::default(),
                }
            );
        }
    }

    #[test]
    fn parse_ipv6_table() {
        let dst = IpAddr::V6(v6("fd00:99:1::2"));
        let table: [(&[u8], &str, ReplyKind, ProbeId); 4] = [
            (
                &V6_TE_UDP,
                "fd00:99::2",
                ReplyKind::TimeExceeded,
                id(Protocol::Udp, dst, 33434, 0x5da8),
            ),
            (
                &V6_PORT_UNREACH,
                "fd00:99:1::2",
                ReplyKind::Reached,
                id(Protocol::Udp, dst, 33434, 0x5da9),
            ),
            (
                &V6_TE_ICMP,
                "fd00:99::2",
                ReplyKind::TimeExceeded,
                id(Protocol::Icmp, dst, 0, 0x9a3a),
            ),
            (
                &V6_ECHO_REPLY,
                "fd00:99:1::2",
                ReplyKind::Reached,
                id(Protocol::Icmp, dst, 0, 0x9a3b),
            ),
        ];
        for (bytes, from, kind, probe) in table {
            let r = parse_icmpv6(v6(from), bytes).unwrap().expect("a reply");
            assert_eq!(
                r,
                Reply {
                    from: IpAddr::V6(v6(from)),
                    kind,
                    probe,
                    size: bytes.len() as u16,
                    quoted_ttl: quoted(kind, probe),
                    mpls: Default::default(),
                }
            );
        }
        let te = parse_icmpv6(v6("fd00:99::2"), &V6_TE_TCP).unwrap().unwrap();
        assert_eq!(te.probe, id(Protocol::Tcp, dst, 80, 0x23ef));
        let rst = parse_tcpv6(v6("fd00:99:1::2"), &V6_TCP_RST)
            .unwrap()
            .unwrap();
        assert_eq!(
            (rst.kind, rst.probe),
            (ReplyKind::Reached, id(Protocol::Tcp, dst, 80, 0x23f0))
        );
        assert_eq!(parse_icmpv6(v6("fd00:99::2"), &V6_NEIGHBOR_ADV), Ok(None));
    }

    #[test]
    fn rfc4884_length_limits_the_quote() {
        // Same message with an RFC 4884 length of 7 words (28 bytes: IP header + UDP
        // header) and an extension structure after it: the quote stops at 28 bytes.
        let mut b = V4_TE_UDP.to_vec();
        b[20 + 5] = 7;
        let r = parse_ipv4(&b).unwrap().unwrap();
        assert_eq!(r.probe.seq, 0xd8d3);
        let icmp = icmpv4::Packet::new_checked(&b[20..]).unwrap();
        assert_eq!(icmp.quoted().len(), 28);
        // A length beyond the buffer is ignored rather than trusted.
        b[20 + 5] = 200;
        assert_eq!(
            icmpv4::Packet::new_checked(&b[20..])
                .unwrap()
                .quoted()
                .len(),
            38
        );
        let mut c = V6_TE_UDP.to_vec();
        c[4] = 6; // 48 bytes: IPv6 header + UDP header
        assert_eq!(
            icmpv6::Packet::new_checked(&c[..]).unwrap().quoted().len(),
            48
        );
        assert_eq!(
            parse_icmpv6(v6("fd00:99::2"), &c)
                .unwrap()
                .unwrap()
                .probe
                .seq,
            0x5da8
        );
    }

    #[test]
    fn an_mpls_label_stack_comes_with_the_reply_in_both_families() {
        use crate::trace::wire::mpls::tests::structure;
        // The captured time exceeded, its quote padded to 128 bytes as RFC 4884 asks, the
        // length field saying so (32 words), and an MPLS object of two labels after it.
        let mut b = V4_TE_UDP.to_vec();
        b.resize(20 + 8 + 128, 0);
        b[20 + 5] = 32;
        b.extend(structure(&[(24001, 0, 1), (16, 0, 1)], true));
        let r = parse_ipv4(&b).unwrap().unwrap();
        assert_eq!(r.probe.seq, 0xd8d3, "the probe is still found");
        let labels: Vec<u32> = r.mpls.labels().iter().map(|l| l.label).collect();
        assert_eq!(labels, [24001, 16]);
        assert!(r.mpls.labels()[1].s);
        // The same without the length field, as routers older than RFC 4884 send it.
        b[20 + 5] = 0;
        assert_eq!(parse_ipv4(&b).unwrap().unwrap().mpls.labels().len(), 2);
        // ICMPv6: 128 bytes are 16 words of 8.
        let mut c = V6_TE_UDP.to_vec();
        c.resize(8 + 128, 0);
        c[4] = 16;
        c.extend(structure(&[(300000, 3, 1)], true));
        let r = parse_icmpv6(v6("fd00:99::2"), &c).unwrap().unwrap();
        assert_eq!(r.probe.seq, 0x5da8);
        assert_eq!(r.mpls.labels()[0].label, 300000);
        assert_eq!(r.mpls.labels()[0].tc, 3);
        // The captures themselves carry none.
        assert!(parse_ipv4(&V4_TE_UDP).unwrap().unwrap().mpls.is_empty());
    }

    #[test]
    fn truncated_and_mangled_never_panic_nor_match() {
        // Every prefix of every capture: an error or a reply, never a panic.
        for bytes in [
            &V4_TE_UDP[..],
            &V4_PORT_UNREACH,
            &V4_TE_ICMP,
            &V4_ECHO_REPLY,
            &V4_TE_TCP,
            &V4_TCP_RST,
        ] {
            for n in 0..bytes.len() {
                let _ = parse_ipv4(&bytes[..n]);
            }
        }
        for bytes in [
            &V6_TE_UDP[..],
            &V6_PORT_UNREACH,
            &V6_TE_ICMP,
            &V6_ECHO_REPLY,
            &V6_TE_TCP,
        ] {
            for n in 0..bytes.len() {
                let _ = parse_icmpv6(v6("fd00:99::2"), &bytes[..n]);
            }
        }
        // A quote cut inside the UDP header is an error, not a half-read identity.
        assert_eq!(
            parse_ipv4(&V4_TE_UDP[..20 + 8 + 20 + 6]),
            Err(Error::Truncated)
        );
        // Bytes flipped one at a time: still no panic.
        for i in 0..V4_TE_TCP.len() {
            let mut b = V4_TE_TCP;
            b[i] ^= 0xff;
            let _ = parse_ipv4(&b);
        }
        // A time exceeded "for reassembly" (code 1) is not about our TTL.
        let mut b = V4_TE_UDP;
        b[21] = 1;
        assert_eq!(parse_ipv4(&b), Ok(None));
        // An RST without ACK answers no SYN of ours.
        let mut b = V4_TCP_RST;
        b[20 + 13] = tcp::RST;
        assert_eq!(parse_ipv4(&b), Ok(None));
    }

    #[test]
    fn unreachable_codes() {
        let host = classify_v4(3, 1, Protocol::Udp);
        assert_eq!(host, Some(ReplyKind::Unreachable(Unreachable::Host)));
        assert_eq!(
            classify_v4(3, 13, Protocol::Icmp),
            Some(ReplyKind::Unreachable(Unreachable::Prohibited))
        );
        assert_eq!(
            classify_v4(3, 3, Protocol::Tcp),
            Some(ReplyKind::Unreachable(Unreachable::Other(3)))
        );
        assert_eq!(
            classify_v6(1, 3, Protocol::Udp),
            Some(ReplyKind::Unreachable(Unreachable::Host))
        );
        assert_eq!(classify_v6(1, 4, Protocol::Udp), Some(ReplyKind::Reached));
        assert_eq!(classify_v6(128, 0, Protocol::Udp), None);
    }

    #[test]
    fn random_mutations_of_captures_never_panic() {
        // A cheap stand-in for the cargo-fuzz target (fuzz/): mutate real captures.
        let mut rng = fastrand::Rng::with_seed(4884);
        let seeds: [&[u8]; 4] = [&V4_TE_UDP, &V4_TE_TCP, &V6_TE_UDP, &V6_TE_ICMP];
        for _ in 0..20_000 {
            let mut b = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
            if let Ok(Some(r)) = parse_ipv4(&b) {
                assert!(usize::from(r.size) <= b.len());
            }
            let _ = parse_icmpv6(v6("fd00:99::2"), &b);
            let _ = parse_tcpv6(v6("fd00:99::2"), &b);
        }
    }
}
