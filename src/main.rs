//! Entry point: picks the subcommand from argv[0] or the first argument, runs it, prints the
//! error chain and sets the exit code.

use dist_traceroute::cli::{self, Command};
use std::process::ExitCode;

mod demo;
mod trace_cmd;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let cli = match cli::parse_from(args.clone()) {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            eprint!("{}", cli::error_text(&e, &args));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version: printed to stdout, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
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
