//! dist-traceroute: a distributed traceroute and network-path monitor.
//!
//! One binary holds the master (config, HTTP server, storage), the slave (config poll,
//! scheduler, delivery) and the trace engine; this crate root declares them so tests,
//! benches, examples and fuzz targets can use them.

pub mod cli;
pub mod logging;
pub mod master;
pub mod proto;
pub mod slave;
pub mod trace;
