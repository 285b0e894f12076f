//! Benchmark: the offline IP-to-AS table at the size of a full public dump, read and looked
//! up. Prints figures; `cargo run --release --example asn_bench [ranges] [--mmdb]`.
//!
//! The table is made up here (500,000 ranges by default, about what iptoasn.com's
//! `ip2asn-combined.tsv` holds: IPv4 and IPv6, 80,000 distinct ASes), written to a temporary
//! file and read the way `--asn-db` reads it; then a million random addresses are looked up.
//! With `--mmdb` the same table is also written as a MaxMind DB (GeoLite2-ASN fields) by the
//! Python `mmdb-writer` that `scripts/test` installs in `target/pytools`, and read and looked
//! up the same way; that writer takes about a third of a millisecond a range, so try 100,000.

use dist_traceroute::asn::{AsnDb, Owner};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

/// Converts the TSV (argv 1) to an MMDB (argv 2), each range as the CIDR blocks it covers.
const TO_MMDB: &str = r#"
import sys
from netaddr import IPSet, IPRange
from mmdb_writer import MMDBWriter, MmdbU32
w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[2] != "0":
        w.insert_network(IPSet(IPRange(f[0], f[1])), {
            "autonomous_system_number": MmdbU32(int(f[2])),
            "autonomous_system_organization": f[4]})
w.to_db_file(sys.argv[2])
"#;

/// Reads `file` as `--asn-db` does and looks every address up: (read time, lookup time, how
/// many were in an AS).
fn measure(file: &Path, addrs: &[IpAddr]) -> anyhow::Result<(AsnDb, Duration, Duration, usize)> {
    let t = Instant::now();
    let db = AsnDb::load(file)?;
    let load = t.elapsed();
    let t = Instant::now();
    let found = addrs
        .iter()
        .filter(|a| matches!(db.lookup(**a), Some(Owner::As { .. })))
        .count();
    Ok((db, load, t.elapsed(), found))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mmdb = args.iter().any(|a| a == "--mmdb");
    let ranges: u32 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500_000);
    let text = dist_traceroute::asn::made_up_table(ranges, 7);
    let mut rng = fastrand::Rng::with_seed(8);
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
    let dir = std::env::temp_dir().join(format!("asn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tsv = dir.join("table.tsv");
    std::fs::write(&tsv, &text)?;
    let (db, load, took, found) = measure(&tsv, &addrs)?;
    println!(
        "TSV: {} ranges ({:.1} MB of text) read in {:.0} ms; {n} lookups in {:.0} ms: {:.1} million/s, {found} in an AS",
        db.len(),
        text.len() as f64 / 1e6,
        load.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64() / 1e6
    );
    if mmdb {
        let file = dir.join("table.mmdb");
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pytools/bin/python");
        let t = Instant::now();
        let status = std::process::Command::new(&python)
            .args(["-c", TO_MMDB])
            .arg(&tsv)
            .arg(&file)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "{} could not write the MaxMind DB (run scripts/test once to install mmdb-writer)",
            python.display()
        );
        let written = t.elapsed();
        let size = std::fs::metadata(&file)?.len();
        let (db, load, took, found_mmdb) = measure(&file, &addrs)?;
        println!(
            "MMDB: {} ({:.1} MB, written in {:.0} s) read in {:.0} ms; {n} lookups in {:.0} ms: {:.1} million/s, {found_mmdb} in an AS",
            db.describe(),
            size as f64 / 1e6,
            written.as_secs_f64(),
            load.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3,
            n as f64 / took.as_secs_f64() / 1e6
        );
        anyhow::ensure!(
            found_mmdb == found,
            "the MaxMind DB found {found_mmdb} addresses in an AS, the TSV {found}"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
