//! Entry point: picks the subcommand from argv[0] or the first argument, runs it, prints the
//! error chain and sets the exit code.

use dist_traceroute::cli::{self, Command};
use std::process::ExitCode;

mod demo;
mod trace_cmd;

fn main() -> ExitCode {
    let cli = match cli::parse_from(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(e) => {
            // clap prints help and version to stdout with exit 0, errors with usage and 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match &cli.command {
        Command::Master(a) => dist_traceroute::master::run(a),
        Command::Slave(a) => dist_traceroute::slave::run(a),
        Command::Trace(a) => trace_cmd::run(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("dist-traceroute: {e:#}");
            ExitCode::from(1)
        }
    }
}
