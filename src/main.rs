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
mod measure_cmd;
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

/// `enroll-token`: the token on stdout, how to use it on stderr.
fn enroll_token(a: &cli::EnrollArgs) -> anyhow::Result<()> {
    use dist_traceroute::master::enrol;
    let managed = a
        .managed
        .clone()
        .unwrap_or_else(|| enrol::managed_path(&a.config));
    let token = enrol::issue(&a.config, &managed, &a.name, a.tags.clone(), a.expires)?;
    println!("{token}");
    eprintln!(
        "Token for slave '{}' (works once, for {}; its SHA-256 is in {}). On the new machine:\n  \
         dist-traceroute slave -master MASTER -enroll {token}\n\
         (or DT_ENROLL_TOKEN={token} dist-traceroute slave -master MASTER)",
        a.name,
        humantime::format_duration(a.expires),
        managed.display()
    );
    Ok(())
}

/// `check-config`: every file read as the master reads it; each problem on a line of its own.
fn check_config(a: &cli::CheckConfigArgs) -> ExitCode {
    use dist_traceroute::master::{config, enrol};
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    match config::load(&a.files.config, &a.files.targets) {
        Ok(c) => {
            summary.push(format!("{} slaves", c.slaves.slaves.len()));
            summary.push(format!("{} targets", c.targets.targets.len()));
        }
        Err(e) => problems.push(e.to_string()),
    }
    match config::load_users(&a.files.users) {
        Ok(Some(u)) => summary.push(format!("{} users", u.file.users.len())),
        Ok(None) => summary.push(format!("no users file ({})", a.files.users.display())),
        Err(e) => problems.push(e.to_string()),
    }
    let managed = a
        .files
        .managed
        .clone()
        .unwrap_or_else(|| enrol::managed_path(&a.files.config));
    match enrol::Managed::read(&managed) {
        Ok(m) if !m.slaves.is_empty() => {
            summary.push(format!("{} enrolled slaves", m.slaves.len()))
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("{e:#}")),
    }
    if problems.is_empty() {
        println!("ok: {}", summary.join(", "));
        ExitCode::SUCCESS
    } else {
        for p in problems {
            eprintln!("{p}");
        }
        ExitCode::from(1)
    }
}

/// `revoke`: an enrolled slave out of the managed file.
fn revoke(a: &cli::RevokeArgs) -> anyhow::Result<()> {
    use dist_traceroute::master::enrol;
    let managed = a
        .managed
        .clone()
        .unwrap_or_else(|| enrol::managed_path(&a.config));
    if !enrol::revoke(&managed, &a.name)? {
        anyhow::bail!(
            "slave '{}' is not enrolled (in {}); a slave of dt-slaves.json is taken out by editing that file",
            a.name,
            managed.display()
        );
    }
    eprintln!(
        "slave '{}' revoked: the master refuses it from its next request on",
        a.name
    );
    Ok(())
}

/// `db copy`: an SQLite history into PostgreSQL, with progress on stderr.
fn db_copy(a: &cli::DbCopyArgs) -> anyhow::Result<()> {
    use dist_traceroute::master::store::postgres::{connect, copy};
    anyhow::ensure!(
        connect::is_url(&a.to),
        // (Not echoed: it may hold a password.)
        "--to is not a postgres:// or postgresql:// URL"
    );
    let started = std::time::Instant::now();
    let mut shown = std::time::Instant::now();
    let done = copy::copy(&a.from, &a.to, a.db_passwd_file.as_deref(), |p| {
        if shown.elapsed() >= std::time::Duration::from_secs(1) {
            shown = std::time::Instant::now();
            let all = (p.before + p.copied).min(p.total.max(1));
            eprintln!(
                "copied {} of {} results ({:.0}%)",
                p.before + p.copied,
                p.total,
                100.0 * all as f64 / p.total.max(1) as f64
            );
        }
    })?;
    eprintln!(
        "done in {:.1} s: {} results copied now, {} by an earlier run, {} stored at the next free key \
         (theirs was taken), {} events, {} measurements",
        started.elapsed().as_secs_f64(),
        done.copied,
        done.before,
        done.moved,
        done.events,
        done.measurements
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
        Command::Measure(a) => measure_cmd::run(a),
        Command::Demo(a) => demo::run(a),
        Command::HashPassword => hash_password(),
        Command::NewToken => new_token(),
        Command::Loadgen(a) => loadgen::run(a),
        Command::Db(cli::DbCommand::Copy(a)) => db_copy(a),
        Command::EnrollToken(a) => enroll_token(a),
        Command::Revoke(a) => revoke(a),
        Command::CheckConfig(a) => return check_config(a),
        Command::Man(a) => cli::write_man_pages(&a.dir).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
        Command::Completions(a) => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&cli::completions(a.shell))
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once logging is up the error goes to stderr and the log file in one line;
            // before that (a log file that cannot be opened, say) it is printed here.
            if dist_traceroute::logging::on_stderr() {
                log::error!("{e:#}");
            } else {
                eprintln!("dist-traceroute: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}
