//! TCP header view (RFC 9293): SYN probes out, SYN-ACK / RST answers in.

use super::{Error, Result, be16, be32};

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Header length without options.
pub const HEADER_LEN: usize = 20;
/// Length of the part an ICMP error is guaranteed to quote (RFC 792: 64 bits).
pub const QUOTE_LEN: usize = 8;

/// FIN flag.
pub const FIN: u8 = 0x01;
/// SYN flag.
pub const SYN: u8 = 0x02;
/// RST flag.
pub const RST: u8 = 0x04;
/// ACK flag.
pub const ACK: u8 = 0x10;

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checking them; accessors may panic on short input.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes: the whole header, options included, must be present.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the accessors cannot panic.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < self.header_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// Flag bits (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Window size.
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW.start)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
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

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the header length in bytes (a multiple of 4).
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    /// Sets the flag bits.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the window size.
    pub fn set_window(&mut self, v: u16) {
        self.buffer.as_mut()[field::WINDOW].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the urgent pointer.
    pub fn set_urgent(&mut self, v: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&v.to_be_bytes());
    }
}

/// The first 8 bytes of a TCP header, which is all an ICMP error must quote.
#[derive(Debug, Clone, Copy)]
pub struct Quote<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Quote<T> {
    /// Wraps untrusted bytes: ports and sequence number must be present.
    pub fn new_checked(buffer: T) -> Result<Quote<T>> {
        if buffer.as_ref().len() < QUOTE_LEN {
            return Err(Error::Truncated);
        }
        Ok(Quote { buffer })
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RST+ACK from 10.99.1.2 port 80 answering a SYN probe, captured in a netns chain.
    static SEGMENT: [u8; 20] = [
        0x00, 0x50, 0xee, 0x48, 0x00, 0x00, 0x00, 0x00, 0x45, 0x23, 0x00, 0x01, 0x50, 0x14, 0x00,
        0x00, 0x66, 0x4b, 0x00, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (80, 61000));
        assert_eq!((p.seq_number(), p.ack_number()), (0, 0x4523_0001));
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.flags(), RST | ACK);
        assert_eq!((p.window(), p.checksum()), (0, 0x664b));
        let q = Quote::new_checked(&SEGMENT[..8]).unwrap();
        assert_eq!((q.src_port(), q.dst_port(), q.seq_number()), (80, 61000, 0));
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 20];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_src_port(80);
        p.set_dst_port(61000);
        p.set_seq_number(0);
        p.set_ack_number(0x4523_0001);
        p.set_header_len(20);
        p.set_flags(RST | ACK);
        p.set_window(0);
        p.set_checksum(0x664b);
        p.set_urgent(0);
        assert_eq!(b, SEGMENT);
    }

    #[test]
    fn short_buffer() {
        assert_eq!(
            Packet::new_checked(&SEGMENT[..19]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = SEGMENT;
        bad[12] = 0x40; // data offset 16 < 20
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        bad[12] = 0x60; // 24 bytes claimed, 20 present
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Truncated);
        assert_eq!(
            Quote::new_checked(&SEGMENT[..7]).unwrap_err(),
            Error::Truncated
        );
    }
}
