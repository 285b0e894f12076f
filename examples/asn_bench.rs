//! Benchmark: the offline IP-to-AS table at the size of a full public dump, read and looked
//! up. Prints figures; `cargo run --release --example asn_bench [ranges]`.
//!
//! The table is made up here (500,000 ranges by default, about what iptoasn.com's
//! `ip2asn-combined.tsv` holds: IPv4 and IPv6, 80,000 distinct ASes), written to a temporary
//! file and read the way `--asn-db` reads it; then a million random addresses are looked up.

use dist_traceroute::asn::{AsnDb, Owner};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let ranges: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500_000);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut text = String::with_capacity(ranges as usize * 48);
    // IPv4: consecutive ranges over 1.0.0.0..224.0.0.0, four of five announced.
    let v4 = ranges * 3 / 4;
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
    for i in 0..ranges - v4 {
        let first = (0x2001_0000u128 << 96) + (u128::from(i) << 80);
        let asn = 1 + rng.u32(0..80_000);
        let _ = writeln!(
            text,
            "{}\t{}\t{asn}\tDE\tNET-{asn}",
            Ipv6Addr::from(first),
            Ipv6Addr::from(first + (1u128 << 80) - 1)
        );
    }
    let path = std::env::temp_dir().join(format!("asn-bench-{}.tsv", std::process::id()));
    std::fs::write(&path, &text)?;
    let t = Instant::now();
    let db = AsnDb::load(&path)?;
    let load = t.elapsed();
    std::fs::remove_file(&path)?;
    let n = 1_000_000;
    let addrs: Vec<IpAddr> = (0..n)
        .map(|i| {
            if i % 4 == 3 {
                IpAddr::V6(Ipv6Addr::from(
                    (0x2001_0000u128 << 96) + (u128::from(rng.u32(..)) << 64),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.u32(0x0100_0000..0xe000_0000)))
            }
        })
        .collect();
    let t = Instant::now();
    let mut found = 0usize;
    for a in &addrs {
        if matches!(db.lookup(*a), Some(Owner::As { .. })) {
            found += 1;
        }
    }
    let took = t.elapsed();
    println!(
        "table: {} ranges ({:.1} MB of text) read in {:.0} ms; {n} lookups in {:.0} ms: {:.1} million/s, {found} in an AS",
        db.len(),
        text.len() as f64 / 1e6,
        load.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64() / 1e6
    );
    Ok(())
}
