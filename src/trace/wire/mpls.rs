//! ICMP extension structures (RFC 4884) and the MPLS label stack object in them (RFC 4950):
//! a router inside an MPLS tunnel tells, in its time exceeded or unreachable message, the
//! labels the probe carried when it expired.
//!
//! The extension structure follows the quoted datagram. An RFC 4884 message gives the
//! quote's length (32-bit words in ICMPv4, 64-bit words in ICMPv6), padded to at least 128
//! bytes; routers older than RFC 4884 send no length and put the structure at byte 128 of
//! the data. What does not check out (another version, a bad checksum, an object running
//! past the end) is no label stack: the reply itself still counts.

use serde::Serialize;

/// Most label stack entries kept per reply (stacks are seldom deeper than three).
pub const MAX_LABELS: usize = 8;

/// Where the original datagram ends at least, when an extension follows (RFC 4884 §4.1).
const MIN_QUOTE: usize = 128;

/// One label stack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Label {
    /// The label (20 bits).
    pub label: u32,
    /// Traffic class (3 bits, formerly EXP).
    pub tc: u8,
    /// Bottom of stack.
    pub s: bool,
    /// The entry's TTL.
    pub ttl: u8,
}

/// A reply's label stack, top first (empty: none reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LabelStack {
    entries: [Label; MAX_LABELS],
    len: u8,
}

impl LabelStack {
    /// The entries, top first.
    pub fn labels(&self) -> &[Label] {
        &self.entries[..usize::from(self.len)]
    }

    /// A stack of these entries (the first [`MAX_LABELS`]).
    pub fn from_labels(labels: &[Label]) -> LabelStack {
        let mut s = LabelStack::default();
        for l in labels {
            s.push(*l);
        }
        s
    }

    /// True when the reply reported no labels.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, l: Label) {
        if usize::from(self.len) < MAX_LABELS {
            self.entries[usize::from(self.len)] = l;
            self.len += 1;
        }
    }
}

/// The label stack of an ICMP error whose data (everything after its 8-byte header) is
/// `data`, with the header's length field `length` counted in `word`-byte words (4 for
/// ICMPv4, 8 for ICMPv6).
pub fn label_stack(data: &[u8], length: u8, word: usize) -> LabelStack {
    let start = match usize::from(length) * word {
        // No length: an extension is at 128 if anything is (RFC 4884 §5.5).
        0 => MIN_QUOTE,
        n => n,
    };
    data.get(start..)
        .map(|ext| parse_structure(ext).unwrap_or_default())
        .unwrap_or_default()
}

fn parse_structure(ext: &[u8]) -> Option<LabelStack> {
    // The header: version 2 in the top four bits, 12 reserved bits, a checksum over the
    // whole structure (0: not computed).
    if ext.len() < 4 || ext[0] >> 4 != 2 {
        return None;
    }
    let sum = u16::from_be_bytes([ext[2], ext[3]]);
    if sum != 0 && super::checksum::fold(super::checksum::add(0, ext)) != 0xffff {
        return None;
    }
    let mut stack = LabelStack::default();
    let mut rest = &ext[4..];
    while rest.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let (class, ctype) = (rest[2], rest[3]);
        if len < 4 || len > rest.len() {
            return None;
        }
        if class == 1 && ctype == 1 {
            for e in rest[4..len].chunks_exact(4) {
                let v = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
                stack.push(Label {
                    label: v >> 12,
                    tc: ((v >> 9) & 0x7) as u8,
                    s: (v >> 8) & 1 == 1,
                    ttl: (v & 0xff) as u8,
                });
            }
        }
        rest = &rest[len..];
    }
    Some(stack)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An extension structure with one MPLS object of `labels` (label, tc, ttl); the last
    /// has S set. `checksum`: computed, or left 0.
    pub fn structure(labels: &[(u32, u8, u8)], checksum: bool) -> Vec<u8> {
        let mut obj = Vec::new();
        obj.extend_from_slice(&((4 + 4 * labels.len()) as u16).to_be_bytes());
        obj.extend_from_slice(&[1, 1]);
        for (i, (label, tc, ttl)) in labels.iter().enumerate() {
            let s = u32::from(i + 1 == labels.len());
            let v = (label << 12) | (u32::from(*tc) << 9) | (s << 8) | u32::from(*ttl);
            obj.extend_from_slice(&v.to_be_bytes());
        }
        let mut ext = vec![0x20, 0, 0, 0];
        ext.extend(obj);
        if checksum {
            let sum = !super::super::checksum::fold(super::super::checksum::add(0, &ext));
            ext[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        ext
    }

    fn data(quote: usize, ext: &[u8]) -> Vec<u8> {
        let mut d = vec![0x45; quote];
        d.extend_from_slice(ext);
        d
    }

    #[test]
    fn one_label_is_read_with_its_fields() {
        let d = data(128, &structure(&[(24001, 5, 1)], true));
        let s = label_stack(&d, 32, 4);
        assert_eq!(
            s.labels(),
            [Label {
                label: 24001,
                tc: 5,
                s: true,
                ttl: 1
            }]
        );
    }

    #[test]
    fn a_stack_of_three_keeps_its_order_and_the_bottom_bit() {
        let d = data(
            136,
            &structure(&[(16, 0, 254), (300000, 1, 254), (1048575, 7, 1)], true),
        );
        // ICMPv6 counts 64-bit words: 136 bytes is 17.
        let s = label_stack(&d, 17, 8);
        let got: Vec<(u32, u8, bool, u8)> = s
            .labels()
            .iter()
            .map(|l| (l.label, l.tc, l.s, l.ttl))
            .collect();
        assert_eq!(
            got,
            [
                (16, 0, false, 254),
                (300000, 1, false, 254),
                (1048575, 7, true, 1)
            ]
        );
    }

    #[test]
    fn an_extension_without_the_length_field_is_found_at_128() {
        // Routers older than RFC 4884: no length, the structure after 128 bytes of quote,
        // often with no checksum.
        let d = data(128, &structure(&[(42, 0, 1)], false));
        assert_eq!(label_stack(&d, 0, 4).labels().len(), 1);
        // A plain quote of 128 bytes and nothing after it: no labels.
        assert!(label_stack(&[0; 128], 0, 4).is_empty());
        assert!(label_stack(&[0; 60], 0, 4).is_empty());
    }

    #[test]
    fn malformed_structures_give_no_labels() {
        let good = structure(&[(24001, 0, 1)], true);
        // An object length past the end.
        let mut long = good.clone();
        long[5] = 200;
        // An object length below its own header.
        let mut short = good.clone();
        short[4..6].copy_from_slice(&2u16.to_be_bytes());
        // A wrong checksum.
        let mut bad_sum = good.clone();
        bad_sum[9] ^= 0xff;
        // Another version.
        let mut v1 = good.clone();
        v1[0] = 0x10;
        // A length field past the data.
        for ext in [long, short, bad_sum, v1] {
            assert!(label_stack(&data(128, &ext), 32, 4).is_empty(), "{ext:?}");
        }
        assert!(label_stack(&data(128, &good), 60, 4).is_empty());
        // More entries than kept: the first eight.
        let many: Vec<(u32, u8, u8)> = (0..12).map(|i| (i, 0, 1)).collect();
        let s = label_stack(&data(128, &structure(&many, true)), 32, 4);
        assert_eq!(s.labels().len(), MAX_LABELS);
        assert_eq!(s.labels()[7].label, 7);
    }
}
