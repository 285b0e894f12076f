//! IPv4 header view (RFC 791): the outer header of raw replies and the header quoted in
//! ICMP errors.

use super::{Error, Result, be16};
use std::net::Ipv4Addr;

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// A read-only view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checking them; accessors may panic on short input.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes: checks version and that the whole header is present.
    ///
    /// The total length is *not* required to fit: a header quoted in an ICMP error
    /// describes a datagram of which only the first bytes came back (RFC 792).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the accessors cannot panic.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        // RFC 791: IHL counts 32-bit words and the minimum value is 5.
        if self.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if b.len() < self.header_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// IP version (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Total length field (header plus payload) as sent.
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Identification field.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT.start)
    }

    /// Fragment offset in 8-byte units; non-zero means this is not the first fragment.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLG_OFF.start) & 0x1fff
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol number of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The payload present in the buffer: up to the total length, or less when truncated.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = usize::from(self.total_len()).clamp(self.header_len(), b.len());
        &b[self.header_len()..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Outer header of an ICMP time exceeded from router 10.99.0.2 to the prober 10.99.0.1,
    // captured in a netns chain (66-byte packet, header only kept here).
    static PACKET: [u8; 20] = [
        0x45, 0xc0, 0x00, 0x42, 0xa0, 0x14, 0x00, 0x00, 0x40, 0x01, 0xc5, 0x1e, 0x0a, 0x63, 0x00,
        0x02, 0x0a, 0x63, 0x00, 0x01,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 66);
        assert_eq!(p.ident(), 0xa014);
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 1);
        assert_eq!(p.checksum(), 0xc51e);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 99, 0, 1));
        // The header verifies: the sum over it, checksum included, is 0xffff.
        assert_eq!(
            super::super::checksum::fold(super::super::checksum::add(0, &PACKET)),
            0xffff
        );
        // Only the header was kept: the payload is what is present, not what total_len says.
        assert!(p.payload().is_empty());
    }

    #[test]
    fn short_buffer() {
        assert_eq!(
            Packet::new_checked(&PACKET[..19]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = PACKET;
        bad[0] = 0x44; // IHL 4 < 5
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        bad[0] = 0x46; // IHL 6 needs 24 bytes
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Truncated);
        bad[0] = 0x65;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
    }
}
