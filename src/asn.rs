//! Who owns an address, offline: AS number and name from a local table the operator supplies,
//! and the special-use ranges (private, shared, link-local, documentation, …) by name, which
//! no AS owns. No network look-ups.
//!
//! The table is either
//! - a MaxMind DB file (`.mmdb`), read with the `maxminddb` crate: MaxMind's GeoLite2-ASN and
//!   DB-IP's ASN files (`autonomous_system_number`, `autonomous_system_organization`), and
//!   IPinfo's (`asn` as `"AS13335"`, `as_name` or `name`, `country`); or
//! - the plain text the public IP-to-ASN dumps use (iptoasn.com's `ip2asn-combined.tsv`): one
//!   range a line, tab-separated `range_start range_end AS_number country AS_name`, IPv4 and
//!   IPv6 mixed; AS 0 marks a range no AS announces and is skipped.
//!
//! Which one a file is, its content tells (an MMDB ends with its metadata marker), not its name.

use anyhow::{Context, bail};
use serde::Serialize;
use std::net::IpAddr;
use std::path::Path;

/// Who owns an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// An autonomous system.
    As {
        /// Its number.
        asn: u32,
        /// Its name as the table gives it.
        name: String,
        /// Its country code as the table gives it ("" when none).
        country: String,
    },
    /// A special-use range no AS owns (RFC 6890): what it is for.
    Special(&'static str),
}

impl Owner {
    /// `AS13335 CLOUDFLARENET`, or the range's use (`private (RFC 1918)`).
    pub fn label(&self) -> String {
        match self {
            Owner::As { asn, name, .. } if name.is_empty() => format!("AS{asn}"),
            Owner::As { asn, name, .. } => format!("AS{asn} {name}"),
            Owner::Special(what) => (*what).to_owned(),
        }
    }
}

/// The special-use range `a` is in, if any.
pub fn special(a: IpAddr) -> Option<&'static str> {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(match o {
                [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "private (RFC 1918)",
                [100, 64..=127, ..] => "shared, CGNAT (RFC 6598)",
                [169, 254, ..] => "link-local",
                [127, ..] => "loopback",
                [0, ..] => "this network",
                [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
                [198, 18..=19, ..] => "benchmarking (RFC 2544)",
                [192, 0, 0, _] => "IETF protocol assignments",
                [224..=239, ..] => "multicast",
                [240..=255, ..] => "reserved",
                _ => return None,
            })
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special(IpAddr::V4(v4));
            }
            let s = v6.segments();
            Some(match s {
                [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
                [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
                [0xfc00..=0xfdff, ..] => "unique local (RFC 4193)",
                [0xfe80..=0xfebf, ..] => "link-local",
                [0x2001, 0xdb8, ..] => "documentation",
                [0xff00..=0xffff, ..] => "multicast",
                _ => return None,
            })
        }
    }
}

/// A loaded table.
#[derive(Debug, Default)]
pub struct AsnDb {
    /// A MaxMind DB, when the file was one (then the ranges below are empty).
    mmdb: Option<maxminddb::Reader<Vec<u8>>>,
    /// IPv4 ranges: (first, last, index into `owners`), sorted by first.
    v4: Vec<(u32, u32, u32)>,
    /// IPv6 ranges likewise.
    v6: Vec<(u128, u128, u32)>,
    /// Distinct owners (AS number, country, name).
    owners: Vec<(u32, String, String)>,
}

impl AsnDb {
    /// Reads the table at `path`.
    pub fn load(path: &Path) -> anyhow::Result<AsnDb> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the AS table {}", path.display()))?;
        AsnDb::from_bytes(bytes).with_context(|| format!("AS table {}", path.display()))
    }

    /// A table from a file's content: a MaxMind DB when it carries the MMDB metadata marker,
    /// otherwise the tab-separated text.
    pub fn from_bytes(bytes: Vec<u8>) -> anyhow::Result<AsnDb> {
        if is_mmdb(&bytes) {
            let reader = maxminddb::Reader::from_source(bytes)
                .map_err(|e| anyhow::anyhow!("not a readable MaxMind DB: {e}"))?;
            return Ok(AsnDb {
                mmdb: Some(reader),
                ..AsnDb::default()
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "neither a MaxMind DB nor text (byte {} is not UTF-8)",
                e.utf8_error().valid_up_to()
            )
        })?;
        AsnDb::parse(&text)
    }

    /// What the table is, for the log: `12 ranges`, or the MMDB's type and build date.
    pub fn describe(&self) -> String {
        match &self.mmdb {
            Some(r) => {
                let m = r.metadata();
                let built = chrono::DateTime::from_timestamp(m.build_epoch as i64, 0)
                    .map(|t| t.format("%Y-%m-%d").to_string())
                    .unwrap_or_default();
                format!(
                    "MaxMind DB {} built {built}, IPv{}",
                    m.database_type, m.ip_version
                )
            }
            None if self.len() == 1 => "1 range".to_owned(),
            None => format!("{} ranges", self.len()),
        }
    }

    /// Parses the table's text; a line that is not a range is an error naming it.
    pub fn parse(text: &str) -> anyhow::Result<AsnDb> {
        let mut db = AsnDb::default();
        let mut index: std::collections::HashMap<(u32, String, String), u32> =
            std::collections::HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 3 {
                bail!(
                    "line {}: not `range_start range_end AS_number country AS_name` (tab-separated)",
                    n + 1
                );
            }
            let (first, last) = (f[0].trim(), f[1].trim());
            let asn: u32 = f[2]
                .trim()
                .trim_start_matches("AS")
                .parse()
                .with_context(|| format!("line {}: AS number '{}'", n + 1, f[2]))?;
            let country = f.get(3).map_or("", |c| c.trim());
            let country = if country == "None" { "" } else { country };
            let name = f.get(4).map_or("", |s| s.trim());
            let name = if name == "Not routed" { "" } else { name };
            let parse = |s: &str| -> anyhow::Result<IpAddr> {
                s.parse()
                    .with_context(|| format!("line {}: '{s}' is not an address", n + 1))
            };
            let (a, b) = (parse(first)?, parse(last)?);
            if asn == 0 {
                continue;
            }
            let key = (asn, country.to_owned(), name.to_owned());
            let next = db.owners.len() as u32;
            let owner = *index.entry(key.clone()).or_insert_with(|| {
                db.owners.push(key);
                next
            });
            match (a, b) {
                (IpAddr::V4(a), IpAddr::V4(b)) if u32::from(a) <= u32::from(b) => {
                    db.v4.push((a.into(), b.into(), owner));
                }
                (IpAddr::V6(a), IpAddr::V6(b)) if u128::from(a) <= u128::from(b) => {
                    db.v6.push((a.into(), b.into(), owner));
                }
                _ => bail!(
                    "line {}: {first} to {last} is not a range of one family, first to last",
                    n + 1
                ),
            }
        }
        db.v4.sort_unstable();
        db.v6.sort_unstable();
        Ok(db)
    }

    /// Ranges in a text table (0 for a MaxMind DB, whose ranges are a tree).
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when the table has no range.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who owns `a`: a special-use range first, then the table's range holding it.
    pub fn lookup(&self, a: IpAddr) -> Option<Owner> {
        if let Some(what) = special(a) {
            return Some(Owner::Special(what));
        }
        if let Some(r) = &self.mmdb {
            return mmdb_owner(r, a);
        }
        let owner = match a {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => find(&self.v6, u128::from(v6)),
        }?;
        let (asn, country, name) = &self.owners[owner as usize];
        Some(Owner::As {
            asn: *asn,
            name: name.clone(),
            country: country.clone(),
        })
    }
}

/// A made-up table in the TSV form, for benchmarks: `ranges` ranges, three in four IPv4 (back
/// to back over 1.0.0.0 to 223.255.255.255, one in five not routed) and the rest IPv6 (/48s in
/// 2001::/16), over 80,000 ASes, about what iptoasn.com's full dump holds at 500,000.
pub fn made_up_table(ranges: u32, seed: u64) -> String {
    use std::fmt::Write as _;
    use std::net::{Ipv4Addr, Ipv6Addr};
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut text = String::with_capacity(ranges as usize * 48);
    let v4 = (ranges * 3 / 4).max(1);
    let span = (0xe000_0000u32 - 0x0100_0000) / v4;
    for i in 0..v4 {
        let first = 0x0100_0000 + i * span;
        let asn = if i % 5 == 4 {
            0
        } else {
            1 + rng.u32(0..80_000)
        };
        let _ = writeln!(
            text,
            "{}\t{}\t{asn}\tUS\tNET-{asn}",
            Ipv4Addr::from(first),
            Ipv4Addr::from(first + span - 1)
        );
    }
    for i in 0..ranges.saturating_sub(v4) {
        let first = (0x2001_0000u128 << 96) + (u128::from(i) << 80);
        let asn = 1 + rng.u32(0..80_000);
        let _ = writeln!(
            text,
            "{}\t{}\t{asn}\tDE\tNET-{asn}",
            Ipv6Addr::from(first),
            Ipv6Addr::from(first + (1u128 << 80) - 1)
        );
    }
    text
}

/// The end of an MMDB's search tree and data is marked by these bytes, before its metadata.
const MMDB_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

/// True when `bytes` end like a MaxMind DB: the metadata marker in the last 128 KiB, where the
/// format puts it.
fn is_mmdb(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(128 * 1024)..];
    tail.windows(MMDB_MARKER.len()).any(|w| w == MMDB_MARKER)
}

/// One record of an AS database, in the field names the MMDB vendors use.
#[derive(serde::Deserialize)]
struct MmdbRecord<'a> {
    /// MaxMind GeoLite2-ASN, DB-IP.
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
    /// IPinfo: `"AS13335"`.
    #[serde(borrow)]
    asn: Option<&'a str>,
    #[serde(borrow)]
    as_name: Option<&'a str>,
    #[serde(borrow)]
    name: Option<&'a str>,
    #[serde(borrow)]
    country: Option<&'a str>,
}

/// The AS owning `a` in a MaxMind DB; none for an address not in it, a record without an AS
/// number, or a record that does not decode.
fn mmdb_owner(r: &maxminddb::Reader<Vec<u8>>, a: IpAddr) -> Option<Owner> {
    let rec: MmdbRecord = r.lookup(a).ok()?.decode().ok()??;
    let asn = match (rec.autonomous_system_number, rec.asn) {
        (Some(n), _) => n,
        (None, Some(s)) => s.trim_start_matches("AS").parse().ok()?,
        (None, None) => return None,
    };
    if asn == 0 {
        return None;
    }
    let name = rec
        .autonomous_system_organization
        .or(rec.as_name)
        .or(rec.name)
        .unwrap_or("");
    Some(Owner::As {
        asn,
        name: name.to_owned(),
        country: rec.country.unwrap_or("").to_owned(),
    })
}

/// The owner of the range holding `x`: the last range starting at or before it, if it
/// reaches that far.
fn find<T: Ord + Copy>(ranges: &[(T, T, u32)], x: T) -> Option<u32> {
    let i = ranges.partition_point(|r| r.0 <= x);
    let r = ranges.get(i.checked_sub(1)?)?;
    (x <= r.1).then_some(r.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
        1.0.1.0\t1.0.3.255\t0\tNone\tNot routed\n\
        8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n\
        8.8.4.0\t8.8.4.255\t15169\tUS\tGOOGLE\n\
        2a00:1450::\t2a00:1450:ffff:ffff:ffff:ffff:ffff:ffff\t15169\tUS\tGOOGLE\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_found_at_their_ends_and_not_beside_them() {
        let db = AsnDb::parse(TABLE).unwrap();
        assert_eq!(db.len(), 4);
        let asn = |s: &str| match db.lookup(ip(s)) {
            Some(Owner::As { asn, .. }) => Some(asn),
            _ => None,
        };
        assert_eq!(asn("1.0.0.0"), Some(13335));
        assert_eq!(asn("1.0.0.255"), Some(13335));
        assert_eq!(asn("1.0.1.7"), None, "not routed");
        assert_eq!(asn("8.8.4.4"), Some(15169));
        assert_eq!(asn("8.8.9.1"), None);
        assert_eq!(asn("0.255.255.255"), None);
        assert_eq!(asn("2a00:1450:4001::1"), Some(15169));
        assert_eq!(asn("2a00:1451::1"), None);
        assert_eq!(db.lookup(ip("8.8.8.8")).unwrap().label(), "AS15169 GOOGLE");
        // The table's owners are kept once each.
        assert_eq!(db.owners.len(), 2);
    }

    #[test]
    fn special_ranges_are_named_with_or_without_a_table() {
        let db = AsnDb::default();
        for (a, what) in [
            ("10.1.2.3", "private (RFC 1918)"),
            ("172.31.0.1", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("100.100.0.1", "shared, CGNAT (RFC 6598)"),
            ("169.254.1.1", "link-local"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("fd00:97::2", "unique local (RFC 4193)"),
            ("fe80::1", "link-local"),
            ("2001:db8::1", "documentation"),
            ("::ffff:10.0.0.1", "private (RFC 1918)"),
        ] {
            assert_eq!(db.lookup(ip(a)), Some(Owner::Special(what)), "{a}");
        }
        assert_eq!(db.lookup(ip("172.32.0.1")), None);
        assert_eq!(db.lookup(ip("100.128.0.1")), None);
    }

    #[test]
    fn the_content_tells_a_maxmind_db_from_text() {
        // Text, also one that mentions MaxMind without the marker's bytes.
        let db = AsnDb::from_bytes(b"# MaxMind.com\n8.8.8.0\t8.8.8.255\t15169\tUS\tG\n".to_vec())
            .unwrap();
        assert_eq!(db.describe(), "1 range");
        // The marker with nothing after it is a MaxMind DB that does not read.
        let mut bytes = vec![0u8; 64];
        bytes.extend_from_slice(MMDB_MARKER);
        let e = format!("{:#}", AsnDb::from_bytes(bytes).unwrap_err());
        assert!(e.starts_with("not a readable MaxMind DB"), "{e}");
        let e = format!("{:#}", AsnDb::from_bytes(vec![b'1', 0xff, 0]).unwrap_err());
        assert!(e.contains("neither a MaxMind DB nor text (byte 1"), "{e}");
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        for (text, why) in [
            ("1.0.0.0 1.0.0.255 13335 US X\n", "line 1: not `range_start"),
            ("8.8.8.0\t8.8.8.255\tAS15169x\tUS\tG\n", "line 1: AS number"),
            (
                "# comment\n8.8.8.0\t8.8.8.300\t15169\tUS\tG\n",
                "line 2: '8.8.8.300'",
            ),
            ("8.8.8.9\t8.8.8.0\t15169\tUS\tG\n", "first to last"),
            ("8.8.8.0\t2a00::\t15169\tUS\tG\n", "one family"),
        ] {
            let e = format!("{:#}", AsnDb::parse(text).unwrap_err());
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // "AS" before the number is taken, and CRLF line ends.
        let db = AsnDb::parse("8.8.8.0\t8.8.8.255\tAS15169\tUS\tGOOGLE\r\n").unwrap();
        assert_eq!(db.lookup(ip("8.8.8.8")).unwrap().label(), "AS15169 GOOGLE");
    }
}
