//! Fuzzes the config file parsers: any bytes give a config or an error that names a line,
//! never a panic.
//!
//! Run (needs cargo-fuzz): `cd fuzz && cargo fuzz run config`.

#![no_main]

use dist_traceroute::master::config::{parse_slaves, parse_targets, parse_users};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    for result in [
        parse_slaves(Path::new("s"), data).map(|_| ()),
        parse_targets(Path::new("t"), data).map(|_| ()),
        parse_users(Path::new("u"), data).map(|_| ()),
    ] {
        if let Err(e) = result {
            assert!(!e.message.is_empty());
        }
    }
});
