//! Path identity: the hop address sequence of one trace, silent hops included as such,
//! plus how it ended, in one canonical text and a stable hash of it.

use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// Appends an address as `Display` writes it; IPv4 without the formatting machinery, since
/// every hop of every stored result goes through here.
pub fn push_addr(out: &mut String, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{a}");
        }
    }
}

/// An address as `Display` writes it (see [`push_addr`]).
pub fn addr_text(a: &IpAddr) -> String {
    let mut s = String::with_capacity(15);
    push_addr(&mut s, a);
    s
}

/// How a path ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Terminal {
    /// The destination answered.
    Reached,
    /// A destination-unreachable reply ended it (`!H`, `!N`, …).
    Unreachable(String),
    /// Nothing answered at the end: the trace gave up (gap or max hops).
    GaveUp,
    /// The trace could not run (name resolution, socket error).
    Error,
}

impl Terminal {
    /// The text form used in the canonical path.
    pub fn as_text(&self) -> String {
        match self {
            Terminal::Reached => "reached".into(),
            Terminal::Unreachable(a) => format!("unreachable {a}"),
            Terminal::GaveUp => "gave-up".into(),
            Terminal::Error => "error".into(),
        }
    }
}

/// A path: hop addresses by TTL from 1 (`None` = silent) and the terminal state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Address per TTL, index 0 is TTL 1, up to the last TTL that answered.
    pub hops: Vec<Option<IpAddr>>,
    /// How it ended.
    pub terminal: Terminal,
}

impl Path {
    /// Builds a path from answering hops given as (TTL, address); missing TTLs are silent.
    /// TTLs outside 1..=255 are ignored; a TTL listed twice keeps its first address.
    pub fn from_hops(hops: impl IntoIterator<Item = (i64, IpAddr)>, terminal: Terminal) -> Path {
        let mut by_ttl: Vec<Option<IpAddr>> = Vec::new();
        for (ttl, addr) in hops {
            if !(1..=255).contains(&ttl) {
                continue;
            }
            let i = (ttl - 1) as usize;
            if by_ttl.len() <= i {
                by_ttl.resize(i + 1, None);
            }
            by_ttl[i].get_or_insert(addr);
        }
        Path {
            hops: by_ttl,
            terminal,
        }
    }

    /// The canonical text: addresses joined by spaces, `*` for silence, then `| terminal`.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        for hop in &self.hops {
            match hop {
                Some(a) => push_addr(&mut s, a),
                None => s.push('*'),
            }
            s.push(' ');
        }
        s.push_str("| ");
        s.push_str(&self.terminal.as_text());
        s
    }

    /// Reads back the text [`Path::canonical`] wrote; `None` for text it did not write.
    pub fn parse_canonical(text: &str) -> Option<Path> {
        let (hops, terminal) = text.rsplit_once("| ")?;
        let hops = hops
            .split_whitespace()
            .map(|h| {
                if h == "*" {
                    Ok(None)
                } else {
                    h.parse::<IpAddr>().map(Some)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let terminal = match terminal {
            "reached" => Terminal::Reached,
            "gave-up" => Terminal::GaveUp,
            "error" => Terminal::Error,
            other => Terminal::Unreachable(other.strip_prefix("unreachable ")?.to_owned()),
        };
        Some(Path { hops, terminal })
    }

    /// A stable ID: the first 16 hex digits of the SHA-256 of the canonical text.
    pub fn hash(&self) -> String {
        Path::hash_of(&self.canonical())
    }

    /// [`Path::hash`] of a path whose canonical text is at hand.
    pub fn hash_of(canonical: &str) -> String {
        use std::fmt::Write as _;
        let digest = Sha256::digest(canonical.as_bytes());
        let mut out = String::with_capacity(16);
        for b in &digest[..8] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gaps_are_silent_hops() {
        let p = Path::from_hops(
            [(3, ip("10.0.0.3")), (1, ip("10.0.0.1"))],
            Terminal::Reached,
        );
        assert_eq!(p.canonical(), "10.0.0.1 * 10.0.0.3 | reached");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "255.255.255.255",
            "192.168.1.10",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(addr_text(&ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, 255 - n, n / 3, 100]);
            assert_eq!(addr_text(&ip), ip.to_string());
        }
    }

    #[test]
    fn hash_is_stable_and_tells_paths_apart() {
        let a = Path::from_hops([(1, ip("10.0.0.1"))], Terminal::Reached);
        let b = Path::from_hops([(1, ip("10.0.0.1"))], Terminal::GaveUp);
        let c = Path::from_hops([(1, ip("2001:db8::1"))], Terminal::Reached);
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(a.hash().len(), 16);
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(
            Path::from_hops([], Terminal::Unreachable("!H".into())).canonical(),
            "| unreachable !H"
        );
    }

    #[test]
    fn canonical_text_reads_back() {
        for p in [
            Path::from_hops(
                [(1, ip("10.0.0.1")), (3, ip("2001:db8::3"))],
                Terminal::Reached,
            ),
            Path::from_hops([], Terminal::Unreachable("!X".into())),
            Path::from_hops([(2, ip("10.0.0.2"))], Terminal::GaveUp),
            Path::from_hops([], Terminal::Error),
        ] {
            assert_eq!(Path::parse_canonical(&p.canonical()), Some(p));
        }
        assert_eq!(Path::parse_canonical("nonsense"), None);
    }

    #[test]
    fn bad_ttls_are_ignored() {
        let p = Path::from_hops(
            [
                (0, ip("1.1.1.1")),
                (300, ip("2.2.2.2")),
                (2, ip("3.3.3.3")),
                (2, ip("4.4.4.4")),
            ],
            Terminal::GaveUp,
        );
        assert_eq!(p.hops, vec![None, Some(ip("3.3.3.3"))]);
    }
}
