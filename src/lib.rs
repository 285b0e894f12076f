//! dist-traceroute: a distributed traceroute and network-path monitor.
//!
//! One binary holds the master (config, HTTP server, storage), the slave (config poll,
//! scheduler, delivery) and the trace engine; this crate root declares them so tests,
//! benches, examples and fuzz targets can use them.

pub mod asn;
pub mod cli;
pub mod logging;
pub mod master;
pub mod proto;
pub mod slave;
pub mod trace;

/// The first line of a file that holds a secret (a password or token file named by `flag`),
/// without its line end; an unreadable or empty one is an error that names the flag.
pub fn secret_from_file(file: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {flag} {}", file.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    anyhow::ensure!(!line.is_empty(), "{flag} {} is empty", file.display());
    Ok(line.to_owned())
}
