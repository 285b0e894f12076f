//! IPv6 fixed header (RFC 8200): a view of the one quoted inside ICMPv6 errors, and
//! the writer of our own probes' header.

use super::{Error, Result, be16};
use std::net::Ipv6Addr;

mod field {
    use std::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// A read-only view of an IPv6 packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checking them; accessors may panic on short input.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes: checks version and that the fixed header is present.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the accessors cannot panic.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    /// IP version (6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    /// Flow label (20 bits); routers may hash on it, so probes keep it constant.
    pub fn flow_label(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]])
    }

    /// Payload length field.
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Next header (protocol of the payload when there are no extension headers).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        Ipv6Addr::from(a)
    }

    /// The payload present in the buffer (up to the payload length, less when truncated).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(b.len());
        &b[HEADER_LEN..end]
    }
}

/// The fields of a fixed header this program writes (traffic class 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flow label; only its low 20 bits are written.
    pub flow_label: u32,
    /// Bytes after the fixed header.
    pub payload_len: u16,
    /// Protocol of the payload.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
}

/// Writes `h` as a fixed header into the first [`HEADER_LEN`] bytes of `buf`.
pub fn write_header(buf: &mut [u8; HEADER_LEN], h: &Header) {
    let first = (6u32 << 28) | (h.flow_label & 0x000f_ffff);
    buf[field::VER_TC_FLOW].copy_from_slice(&first.to_be_bytes());
    buf[field::LENGTH].copy_from_slice(&h.payload_len.to_be_bytes());
    buf[field::NXT_HDR] = h.next_header;
    buf[field::HOP_LIMIT] = h.hop_limit;
    buf[field::SRC].copy_from_slice(&h.src.octets());
    buf[field::DST].copy_from_slice(&h.dst.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    // The header of a UDP probe fd00:99::1 -> fd00:99:1::2 (hop limit 1) and its UDP
    // header, as quoted by an ICMPv6 time exceeded captured in a netns chain.
    static PACKET: [u8; 48] = [
        0x60, 0x04, 0x30, 0xe3, 0x00, 0x12, 0x11, 0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x99, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xee, 0x48, 0x82, 0x9a, 0x00,
        0x12, 0x5d, 0xa8,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        // The kernel's automatic flow label: constant for every probe of a trace.
        assert_eq!(p.flow_label(), 0x430e3);
        assert_eq!(p.payload_len(), 18);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 1);
        assert_eq!(p.src_addr(), "fd00:99::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "fd00:99:1::2".parse::<Ipv6Addr>().unwrap());
        // 18 bytes were sent, 8 came back in this quote.
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn written_header_reads_back_as_the_captured_one() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        let mut buf = [0u8; HEADER_LEN];
        write_header(
            &mut buf,
            &Header {
                flow_label: p.flow_label(),
                payload_len: p.payload_len(),
                next_header: p.next_header(),
                hop_limit: p.hop_limit(),
                src: p.src_addr(),
                dst: p.dst_addr(),
            },
        );
        assert_eq!(buf[..], PACKET[..HEADER_LEN]);
    }

    #[test]
    fn short_buffer() {
        assert_eq!(
            Packet::new_checked(&PACKET[..39]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = PACKET;
        bad[0] = 0x40;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
    }
}
