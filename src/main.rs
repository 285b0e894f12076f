//! Entry point: picks the subcommand from argv[0] or the first argument, runs it, prints the
//! error chain and sets the exit code.

use dist_traceroute::cli::{self, Command};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the master's request threads and store writer
/// allocate and free many small strings per result, and glibc's arenas made that a fifth of
/// their time (BENCHMARKS.md, master ingest).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;
mod loadgen;
mod trace_cmd;

/// Reads a password (without echo on a terminal, asked twice) and prints its Argon2 hash.
fn hash_password() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    println!(
        "{}",
        dist_traceroute::master::config::hash_password(&password)?
    );
    Ok(())
}

/// Prints a new bearer token, then the `Tokens` entry of dt-users.json that lets it read.
fn new_token() -> anyhow::Result<()> {
    use dist_traceroute::master::config;
    let token = config::new_token()?;
    println!("{token}");
    println!("\"Tokens\": [\"{}\"]", config::token_digest(&token));
    eprintln!(
        "The first line is the token: give it to the client (Authorization: Bearer TOKEN) and \
         keep it secret. The second goes into the user's entry of dt-users.json, which keeps \
         only the token's SHA-256."
    );
    Ok(())
}

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
        Command::HashPassword => hash_password(),
        Command::NewToken => new_token(),
        Command::Loadgen(a) => loadgen::run(a),
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
