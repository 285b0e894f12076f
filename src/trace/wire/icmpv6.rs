//! ICMPv6 (RFC 4443, RFC 4884): echo for probes, time exceeded / unreachable replies.

use super::{Error, Result, be16};

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    /// RFC 4884 §4.5: length of the original datagram in 64-bit words, first byte after
    /// the checksum.
    pub const ERR_LENGTH: usize = 4;
    pub const DATA: usize = 8;
}

/// Length of the fixed part of every message we handle.
pub const HEADER_LEN: usize = 8;

/// ICMPv6 message types the engine cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Destination unreachable (1).
    DstUnreachable,
    /// Packet too big (2).
    PacketTooBig,
    /// Time exceeded (3).
    TimeExceeded,
    /// Parameter problem (4).
    ParamProblem,
    /// Echo request (128).
    EchoRequest,
    /// Echo reply (129).
    EchoReply,
    /// Anything else (neighbour discovery, MLD, ...).
    Unknown(u8),
}

impl From<u8> for Message {
    fn from(v: u8) -> Message {
        match v {
            1 => Message::DstUnreachable,
            2 => Message::PacketTooBig,
            3 => Message::TimeExceeded,
            4 => Message::ParamProblem,
            128 => Message::EchoRequest,
            129 => Message::EchoReply,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(m: Message) -> u8 {
        match m {
            Message::DstUnreachable => 1,
            Message::PacketTooBig => 2,
            Message::TimeExceeded => 3,
            Message::ParamProblem => 4,
            Message::EchoRequest => 128,
            Message::EchoReply => 129,
            Message::Unknown(v) => v,
        }
    }
}

/// A view of an ICMPv6 message.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checking them; accessors may panic on short input.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes: at least the 8-byte header must be present.
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

    /// Message type.
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code.
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Identifier of an echo request or reply.
    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    /// Sequence number of an echo request or reply.
    pub fn echo_seq_no(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_SEQNO.start)
    }

    /// Everything after the 8-byte header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    /// The RFC 4884 length field of an error message: the quoted datagram's size in
    /// 8-byte words, 0 when the sender did not set it.
    pub fn err_length(&self) -> u8 {
        self.buffer.as_ref()[field::ERR_LENGTH]
    }

    /// The original datagram quoted by an error message.
    ///
    /// RFC 4884 §4.5: a non-zero length field gives the quoted datagram's size in 64-bit
    /// words, and ICMP extensions (MPLS labels, interface info) follow it; without the
    /// field everything after the header is the quote. A length that overruns the buffer
    /// is not trusted and the whole data is used.
    pub fn quoted(&self) -> &[u8] {
        let data = self.data();
        let words = usize::from(self.buffer.as_ref()[field::ERR_LENGTH]);
        if words != 0 && words * 8 <= data.len() {
            &data[..words * 8]
        } else {
            data
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, m: Message) {
        self.buffer.as_mut()[field::TYPE] = m.into();
    }

    /// Sets the code.
    pub fn set_msg_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::ECHO_IDENT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.buffer.as_mut()[field::ECHO_SEQNO].copy_from_slice(&v.to_be_bytes());
    }

    /// The bytes after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Echo reply from fd00:99:1::2, captured in a netns chain.
    static ECHO_REPLY: [u8; 18] = [
        0x81, 0x00, 0x11, 0xb4, 0xee, 0x48, 0x9a, 0x3b, 0x71, 0xf0, 0x64, 0x69, 0x73, 0x74, 0x2d,
        0x74, 0x72, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&ECHO_REPLY[..]).unwrap();
        assert_eq!(p.msg_type(), Message::EchoReply);
        assert_eq!(p.checksum(), 0x11b4);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (61000, 0x9a3b));
        assert_eq!(p.data().len(), 10);
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 18];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(Message::EchoReply);
        p.set_checksum(0x11b4);
        p.set_echo_ident(61000);
        p.set_echo_seq_no(0x9a3b);
        p.data_mut().copy_from_slice(&ECHO_REPLY[8..]);
        assert_eq!(b, ECHO_REPLY);
    }

    #[test]
    fn short_buffer() {
        assert_eq!(
            Packet::new_checked(&ECHO_REPLY[..3]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(Message::from(136), Message::Unknown(136));
    }
}
