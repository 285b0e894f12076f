//! The Internet checksum (RFC 1071) and the pseudo headers UDP, TCP and ICMPv6 fold in.

use std::net::IpAddr;

/// Adds `data` as big-endian 16-bit words (odd tail padded with zero) to `acc`, unfolded.
pub fn add(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    // Fold early so the accumulator cannot overflow however many calls are chained.
    fold_partial(acc)
}

/// Folds the carries back in (ones' complement addition), giving the 16-bit sum.
pub fn fold(acc: u32) -> u16 {
    let mut acc = fold_partial(acc);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

fn fold_partial(acc: u32) -> u32 {
    (acc & 0xffff) + (acc >> 16)
}

/// Ones' complement sum of the pseudo header of RFC 768 / RFC 8200 §8.1.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: u32) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = add(acc, &s.octets());
            acc = add(acc, &d.octets());
            acc = add(acc, &[0, protocol]);
            acc = add(acc, &(len as u16).to_be_bytes());
        }
        _ => {
            acc = add(acc, &to_v6(src));
            acc = add(acc, &to_v6(dst));
            acc = add(acc, &len.to_be_bytes());
            acc = add(acc, &[0, 0, 0, protocol]);
        }
    }
    acc
}

fn to_v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The checksum field value for data whose sum (field zeroed) is `acc`.
pub fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// The 16-bit word that, added to a message summing to `acc`, makes the message sum to
/// `target`, so a checksum field can be fixed in advance (Paris traceroute's trick).
pub fn compensate(acc: u32, target: u16) -> u16 {
    // In ones' complement arithmetic x + !x = 0xffff (negative zero), so adding
    // (target - acc) = target + !acc turns acc into target.
    fold(u32::from(target) + u32::from(!fold(acc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        assert_eq!(
            fold(add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])),
            0xddf2
        );
    }

    #[test]
    fn compensate_reaches_target() {
        for (data, target) in [
            (&b"abcdef"[..], 0x1234u16),
            (&b"\xff\xff\x00\x01"[..], 0xfffe),
        ] {
            let acc = add(0, data);
            let w = compensate(acc, target);
            assert_eq!(fold(add(acc, &w.to_be_bytes())), target);
        }
    }
}
