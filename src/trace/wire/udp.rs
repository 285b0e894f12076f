//! UDP header view (RFC 768): written for probes, read back from ICMP quotes.

use super::{Error, Result, be16};

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// Header length.
pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram (or of the 8 bytes of it an ICMP error quotes).
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checking them; accessors may panic on short input.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes: the 8-byte header must be present (a quote may stop there).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the accessors cannot panic.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Length field (header plus payload).
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// True when the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN as u16
    }

    /// Checksum field; the engine stores the probe sequence here (Paris traceroute).
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The payload bytes present.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the length field.
    pub fn set_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A UDP probe as quoted back by a router: ports 61000 -> 33434, checksum = sequence.
    static PROBE: [u8; 18] = [
        0xee, 0x48, 0x82, 0x9a, 0x00, 0x12, 0xd8, 0xd3, 0x28, 0xf8, 0x64, 0x69, 0x73, 0x74, 0x2d,
        0x74, 0x72, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PROBE[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (61000, 33434, 18));
        assert_eq!(p.checksum(), 0xd8d3);
        assert_eq!(&p.payload()[2..], b"dist-tr\0");
        assert!(!p.is_empty());
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 18];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_src_port(61000);
        p.set_dst_port(33434);
        p.set_len(18);
        p.set_checksum(0xd8d3);
        p.payload_mut().copy_from_slice(&PROBE[8..]);
        assert_eq!(b, PROBE);
    }

    #[test]
    fn short_buffer() {
        assert_eq!(
            Packet::new_checked(&PROBE[..7]).unwrap_err(),
            Error::Truncated
        );
    }
}
