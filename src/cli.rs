//! Command-line flags: Go-style single-dash spellings of the seed accepted next to GNU ones,
//! parsed by clap into validated settings.

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "dist-traceroute",
    version,
    propagate_version = true,
    about = "Distributed traceroute: one master holds slaves and targets, config-less slaves trace and report",
    long_about = "Distributed traceroute and network-path monitor.\n\n\
        The master holds the allowed slaves (dt-slaves.json) and the targets (dt-targets.json), \
        serves them over HTTP on port 8990 and stores every result in SQLite; its API, exports \
        and metrics are read with the login of a user in dt-users.json (or from loopback). Slaves fetch their \
        targets from the master, trace each one every minute and post the paths back.\n\n\
        Flags take Go's spelling (-master=host, -master host) as well as GNU's (--master host). \
        Invoked through a link named dist-traceroute-master or dist-traceroute-slave, the program \
        acts as that subcommand."
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master: serve config to slaves and store their results.
    Master(Box<MasterArgs>),
    /// Run a slave: fetch targets from the master, trace them, report the paths.
    Slave(SlaveArgs),
    /// Trace one host now and print the path (like traceroute).
    Trace(TraceArgs),
    /// Ask a master's slaves to trace a host now; print each slave's path and a merged view.
    #[command(long_about = MEASURE_ABOUT)]
    Measure(MeasureArgs),
    /// Start a master on the built-in example config and a local slave, to look around.
    Demo(DemoArgs),
    /// Print an Argon2 hash of a password for PasswordHash in dt-slaves.json or dt-users.json
    /// (reads stdin).
    #[command(name = "hash-password")]
    HashPassword,
    /// Print a new random bearer token and the line of dt-users.json that lets it read.
    #[command(
        name = "new-token",
        long_about = "Print a new random bearer token (32 random bytes from the operating \
        system, URL-safe base64) on the first line, and on the second the \
        \"Tokens\": [\"sha256:…\"] entry to put in a user's entry of dt-users.json. The file \
        keeps only the token's SHA-256; give the token to the script or Prometheus, which sends \
        it as Authorization: Bearer TOKEN."
    )]
    NewToken,
    /// Load a master's result ingest with synthetic results; print throughput and latency.
    #[command(
        long_about = "Load a master's result ingest with synthetic results and print \
        throughput and latency (a benchmark, not a test).\n\n\
        Many connection threads, each with its own keep-alive connection, post realistic 15-hop \
        results as load1..loadN (passwords pw1..pwN) for targets t1..tN until --duration or \
        --results is reached. The master must know those slaves: write its config with \
        --write-config DIR and start it on DIR/dt-slaves.json and DIR/dt-targets.json. The \
        first --warmup of a run is not timed; results sent then still count for --verify and \
        --db."
    )]
    Loadgen(LoadgenArgs),
    /// Work on a master's database (copy an SQLite history into PostgreSQL).
    #[command(subcommand)]
    Db(DbCommand),
    /// On the master: print a one-time token that enrols a new slave (slave -enroll TOKEN).
    #[command(
        name = "enroll-token",
        long_about = "On the master's machine: print a one-time token that enrols a new slave named \
        NAME, and the command that runs that slave. The token's SHA-256 goes into the \
        managed file beside -config (dt-slaves.managed.json), which the master reads; \
        the operator's dt-slaves.json is never written. The new slave, run with -enroll \
        TOKEN, makes a random secret and keeps it in its spool folder; the master keeps \
        only its Argon2 hash. The token works once, until --expires. A NAME already in \
        dt-slaves.json, enrolled, or with an unused token is refused."
    )]
    EnrollToken(EnrollArgs),
    /// On the master: take an enrolled slave out; it is refused from its next request on.
    Revoke(RevokeArgs),
    /// Check the master's config files and exit 0 when they are good, 1 with each problem's
    /// file:line:column when not (for CI pipelines and package scripts).
    #[command(name = "check-config")]
    CheckConfig(CheckConfigArgs),
    /// Write the man pages (dist-traceroute.1 and one per subcommand) into a folder.
    Man(ManArgs),
    /// Print the shell completion script for bash, zsh or fish.
    Completions(CompletionsArgs),
}

/// Flags of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The folder to write the pages into (made when missing)
    pub dir: PathBuf,
}

/// Flags of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh or fish
    pub shell: clap_complete::Shell,
}

/// Writes `dist-traceroute.1` and `dist-traceroute-SUB.1` for each subcommand into `dir`,
/// from the same definitions the parser uses.
pub fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command, name: String| -> anyhow::Result<()> {
        let file = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.name(name.clone()))
            .render(&mut out)
            .with_context(|| format!("cannot render {name}.1"))?;
        std::fs::write(&file, out).with_context(|| format!("cannot write {}", file.display()))?;
        written.push(file);
        Ok(())
    };
    page(cmd.clone(), "dist-traceroute".into())?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        page(sub.clone(), format!("dist-traceroute-{}", sub.get_name()))?;
    }
    Ok(written)
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dist-traceroute", &mut out);
    out
}

/// The master's files, as `master` and `check-config` take them.
#[derive(Debug, Args)]
pub struct ConfigFiles {
    /// Allowed slaves file (seed: -config)
    #[arg(long, value_name = "filename", default_value = "./dt-slaves.json")]
    pub config: PathBuf,
    /// Targets file served to the slaves
    #[arg(long, value_name = "filename", default_value = "./dt-targets.json")]
    pub targets: PathBuf,
    /// The enrolled slaves' file, which the master writes (default: dt-slaves.managed.json
    /// beside -config; a packaged master keeps it in /var/lib/dist-traceroute)
    #[arg(long, value_name = "filename")]
    pub managed: Option<PathBuf>,
    /// Users who may read the API, exports and /metrics with HTTP Basic or a bearer token;
    /// without this file only clients on loopback may read
    #[arg(long, value_name = "filename", default_value = "./dt-users.json")]
    pub users: PathBuf,
}

/// Flags of `check-config`: the files as `master` takes them.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The files.
    #[command(flatten)]
    pub files: ConfigFiles,
}

/// Flags of `enroll-token`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The new slave's name (letters and digits)
    pub name: String,
    /// Its tags, comma-separated (e.g. eu,fra1), which target selectors go by
    #[arg(long, value_name = "list", value_delimiter = ',', value_parser = parse_tag)]
    pub tags: Vec<crate::master::config::Tag>,
    /// How long the token works
    #[arg(long, value_name = "duration", default_value = "1h", value_parser = parse_duration)]
    pub expires: Duration,
    /// The master's slaves file (the managed file is beside it)
    #[arg(long, value_name = "filename", default_value = "./dt-slaves.json")]
    pub config: PathBuf,
    /// The master's -managed file, when it is not beside -config
    #[arg(long, value_name = "filename")]
    pub managed: Option<PathBuf>,
}

/// Flags of `revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The enrolled slave's name
    pub name: String,
    /// The master's slaves file (the managed file is beside it)
    #[arg(long, value_name = "filename", default_value = "./dt-slaves.json")]
    pub config: PathBuf,
    /// The master's -managed file, when it is not beside -config
    #[arg(long, value_name = "filename")]
    pub managed: Option<PathBuf>,
}

/// `dist-traceroute db ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Copy an SQLite history (results, paths, series, events, slaves, measurements) into
    /// PostgreSQL.
    #[command(
        long_about = "Copy an SQLite history (results, paths, series, events, slaves, \
        on-demand measurements) \
        into a PostgreSQL database, creating its schema when new. Results keep their IDs, \
        times and order (cursors stay valid); a result already there is not copied twice. \
        Each batch commits with a note of how far it got: a copy that stopped goes on from \
        there when run again, and a finished one run again does nothing. Stop the master \
        that uses the SQLite file first (the copy refuses a file in use); masters may already \
        be writing to the PostgreSQL database."
    )]
    Copy(DbCopyArgs),
}

/// `dist-traceroute db copy`.
#[derive(Debug, clap::Args)]
pub struct DbCopyArgs {
    /// The SQLite file to copy from (a master's -db)
    #[arg(long, value_name = "filename")]
    pub from: PathBuf,
    /// The PostgreSQL database to copy into: postgres://USER@HOST[:PORT]/DBNAME (password
    /// from --db-passwd-file or PGPASSWORD)
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// File whose first line is the PostgreSQL password (instead of PGPASSWORD)
    #[arg(long = "db-passwd-file", value_name = "filename")]
    pub db_passwd_file: Option<PathBuf>,
}

/// Log level names of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Warnings and errors.
    Warn,
    /// Plus one line per notable event.
    Info,
    /// Everything.
    Debug,
}

impl LogLevel {
    /// The `log` crate filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

/// Flags of `master`.
#[derive(Debug, Args)]
pub struct MasterArgs {
    /// The config files.
    #[command(flatten)]
    pub files: ConfigFiles,
    /// Serve the API, exports and /metrics to anyone without a login (the slaves' addresses
    /// included)
    #[arg(long = "public-read")]
    pub public_read: bool,
    /// Logfile location
    #[arg(long, value_name = "/path/to/file", default_value = "./dt-master.log")]
    pub log: PathBuf,
    /// Log level
    #[arg(long, value_name = "warn, info, debug", default_value = "info")]
    pub loglevel: LogLevel,
    /// Address to listen on: HOST:PORT, :PORT or PORT (default: all IPv4 and IPv6 interfaces)
    #[arg(long, value_name = "addr", default_value = ":8990", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Where results are stored: an SQLite file, or a PostgreSQL database shared by several
    /// masters (postgres://USER@HOST[:PORT]/DBNAME[?sslmode=require|verify-full&sslrootcert=FILE];
    /// the password from -db-passwd-file or PGPASSWORD)
    #[arg(long, value_name = "filename|URL", default_value = "./dt-results.db")]
    pub db: PathBuf,
    /// File whose first line is the PostgreSQL password (instead of PGPASSWORD)
    #[arg(long = "db-passwd-file", value_name = "filename")]
    pub db_passwd_file: Option<PathBuf>,
    /// Load balancers in front of this master (addresses or CIDR ranges, comma-separated):
    /// for requests from them the client is the address their X-Forwarded-For names
    #[arg(long = "trusted-proxy", value_name = "addr,...", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxy: Vec<ipnet::IpNet>,
    /// An IP-to-AS table: a MaxMind DB (GeoLite2-ASN, DB-IP or IPinfo ASN .mmdb) or
    /// tab-separated `range_start range_end AS_number country AS_name` (iptoasn.com's dumps):
    /// the API then names each hop's owner and each result's AS path; checked for edits like
    /// the config files
    #[arg(long = "asn-db", value_name = "filename")]
    pub asn_db: Option<PathBuf>,
    /// How often the config files are checked for edits
    #[arg(long = "reload-interval", value_name = "duration", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Time a client has to send a request's headers; also how long an idle connection is kept
    #[arg(long = "header-timeout", value_name = "duration", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body
    #[arg(long = "body-timeout", value_name = "duration", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Largest request body in bytes; larger gets 413
    #[arg(long = "max-body", value_name = "bytes", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    pub max_body: u64,
    /// Largest request head (start line and headers) in bytes; larger gets 431
    #[arg(long = "max-header-bytes", value_name = "bytes", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(8192..=1 << 20))]
    pub max_header_bytes: u64,
    /// Most client connections open at once; at the cap a connection of the address holding
    /// the most makes room
    #[arg(long = "max-connections", value_name = "n", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Most connections open at once from one client address (IPv6: one /64); trusted proxies
    /// are not limited
    #[arg(long = "max-connections-per-address", value_name = "n", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections_per_address: u64,
    /// Memory all request bodies being received may take together, in bytes; beyond it the
    /// largest are cut, or new ones get 503 with Retry-After
    #[arg(long = "max-body-memory", value_name = "bytes", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40))]
    pub max_body_memory: u64,
    /// Slowest a body may arrive, in bytes a second after its first 5 s (0: only -body-timeout)
    #[arg(long = "min-body-rate", value_name = "bytes/s", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub min_body_rate: u64,
    /// Threads that run request handlers
    #[arg(long, value_name = "n", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub workers: u64,
    /// Serve HTTPS with this PEM certificate chain (reloaded when it changes)
    #[arg(long = "tls-cert", value_name = "file", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of -tls-cert
    #[arg(long = "tls-key", value_name = "file", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Results in a row that confirm a new path, an unreachable target or a high RTT
    #[arg(long = "path-confirm", value_name = "n", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub path_confirm: u32,
    /// POST every alert (path change, unreachable, RTT) as JSON to this URL
    #[arg(long = "alert-webhook", value_name = "url", value_parser = parse_url)]
    pub alert_webhook: Option<String>,
    /// The event kinds that alert (logged at warn and POSTed to -alert-webhook), comma-separated,
    /// or all: e.g. as-path-change,unreachable,reachable to be alerted on AS-level changes and
    /// breaks only. The others are still stored, shown and logged (at info)
    #[arg(long = "alert-kinds", value_name = "list", default_value = "all", value_parser = parse_alert_kinds)]
    pub alert_kinds: AlertKinds,
    /// Alert on the made-up results of slaves run with -zDebugResults too (by default their
    /// events are stored, marked and logged, but raise no alert)
    #[arg(long = "alert-debug-results")]
    pub alert_debug_results: bool,
    /// On-demand measurements may also go to these targets beyond the configured ones:
    /// comma-separated host names and address prefixes (e.g. example.net,192.0.2.0/24)
    #[arg(long = "measure-allow", value_name = "list", default_value = "", value_parser = parse_measure_allow)]
    pub measure_allow: crate::master::measure::AllowList,
    /// On-demand measurements one user may start per minute
    #[arg(long = "measure-rate", value_name = "n", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub measure_rate: u32,
    /// On-demand measurements all users together may start per minute (on this master)
    #[arg(long = "measure-fleet-rate", value_name = "n", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub measure_fleet_rate: u32,
    /// Most probes one on-demand measurement may send (slaves x flows x max hops x queries)
    #[arg(long = "measure-max-probes", value_name = "n", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub measure_max_probes: u64,
    /// On a path-change, unreachable or branch-lost event, ask every slave to trace that target at once
    /// (4 flows each) and attach what they found to the event: API, webhook, dashboard
    #[arg(long = "measure-follow-up")]
    pub measure_follow_up: bool,
    /// Delete results older than this (e.g. 30d); 0 keeps them forever
    #[arg(long, value_name = "duration", default_value = "30d", value_parser = parse_retention)]
    pub retention: Keep,
    /// Delete change events, and paths no result uses, older than this; 0 keeps them forever
    #[arg(long = "retention-paths", value_name = "duration", default_value = "365d", value_parser = parse_retention)]
    pub retention_paths: Keep,
}

fn parse_url(s: &str) -> Result<String, String> {
    if (s.starts_with("http://") || s.starts_with("https://")) && s.len() > 8 {
        Ok(s.to_owned())
    } else {
        Err(format!("'{s}' is not an http:// or https:// URL"))
    }
}

/// How long to keep something: `None` is forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep(pub Option<Duration>);
/// `-measure-allow`: host names and address prefixes, comma-separated.
fn parse_measure_allow(s: &str) -> Result<crate::master::measure::AllowList, String> {
    crate::master::measure::parse_allow(s).map(crate::master::measure::AllowList)
}

/// The event kinds that alert: `None` is every kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertKinds(pub Option<Vec<&'static str>>);

fn parse_alert_kinds(s: &str) -> Result<AlertKinds, String> {
    if s.trim() == "all" {
        return Ok(AlertKinds(None));
    }
    let known = crate::master::api::EVENT_KINDS;
    let mut kinds = Vec::new();
    for k in s.split(',').map(str::trim) {
        match known.iter().find(|n| **n == k) {
            Some(n) => kinds.push(*n),
            None => {
                return Err(format!(
                    "'{k}' is not an event kind (all, or a list of: {})",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(AlertKinds(Some(kinds)))
}

fn parse_retention(s: &str) -> Result<Keep, String> {
    if s == "0" {
        return Ok(Keep(None));
    }
    parse_duration(s).map(|d| Keep(Some(d)))
}

/// Flags of `slave`.
#[derive(Debug, Args)]
pub struct SlaveArgs {
    /// Set the hostname/IP of the master server (HOST:PORT or a URL carries its own port)
    #[arg(long, value_name = "hostname")]
    pub master: Option<String>,
    /// Set the listening port of the master server
    #[arg(long = "master-port", value_name = "port", default_value_t = 8990)]
    pub master_port: u16,
    /// Unique name of this slave used on master for authentication and storage of results
    #[arg(long, value_name = "name")]
    pub name: Option<String>,
    /// Shared secret for slave on master (visible in ps: prefer -passwd-file or DT_PASSWD)
    #[arg(long, value_name = "secret")]
    pub passwd: Option<String>,
    /// Read the shared secret from the first line of this file
    #[arg(long = "passwd-file", value_name = "file", conflicts_with = "passwd")]
    pub passwd_file: Option<PathBuf>,
    /// Logfile location
    #[arg(long, value_name = "/path/to/file", default_value = "./dt-slave.log")]
    pub log: PathBuf,
    /// Log level
    #[arg(long, value_name = "warn, info, debug", default_value = "info")]
    pub loglevel: LogLevel,
    /// Generate fake results, e.g. when run without root permissions
    #[arg(long = "zDebugResults")]
    pub z_debug_results: bool,
    /// Talk HTTPS to the master (also implied by -master https://…)
    #[arg(long)]
    pub tls: bool,
    /// Trust this PEM CA certificate (bundle) for the master's HTTPS instead of the public roots
    #[arg(long, value_name = "file")]
    pub ca: Option<PathBuf>,
    /// How often every target is traced
    #[arg(long, value_name = "duration", default_value = "1m", value_parser = parse_duration)]
    pub interval: Duration,
    /// How often the config is fetched from the master
    #[arg(long = "config-interval", value_name = "duration", default_value = "1m", value_parser = parse_duration)]
    pub config_interval: Duration,
    /// How many targets are traced at the same time
    #[arg(long, value_name = "n", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Folder where results wait until the master has them (default: next to -log, e.g. ./dt-slave.spool)
    #[arg(long, value_name = "dir")]
    pub spool: Option<PathBuf>,
    /// Most results kept in the spool; beyond, the oldest are dropped
    #[arg(long = "spool-max-results", value_name = "n", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max_results: u64,
    /// Most megabytes (MiB) of results kept in the spool; beyond, the oldest are dropped
    #[arg(long = "spool-max-mb", value_name = "MiB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub spool_max_mb: u64,
    /// Probes per second, about, over all traces
    #[arg(long = "max-pps", value_name = "n", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pps: u32,
    /// Longest wait between two delivery attempts while the master is away
    #[arg(long = "retry-max", value_name = "duration", default_value = "1m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Longest time one request to the master may take
    #[arg(long = "master-timeout", value_name = "duration", default_value = "30s", value_parser = parse_duration)]
    pub master_timeout: Duration,
    /// On SIGINT/SIGTERM: how long running traces may finish, then how long the spool is flushed
    #[arg(long = "shutdown-timeout", value_name = "duration", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Join the master with a one-time token from `dist-traceroute enroll-token` instead of
    /// -name/-passwd: the slave makes its own secret and keeps it in its spool folder, so later
    /// starts need neither the token nor a password (also from DT_ENROLL_TOKEN)
    #[arg(
        long,
        value_name = "token",
        env = "DT_ENROLL_TOKEN",
        hide_env_values = true
    )]
    pub enroll: Option<String>,
    /// Tags this slave gives itself, comma-separated (e.g. eu,fra1): the master shows them;
    /// which targets the slave traces is decided by the tags of the master's dt-slaves.json
    #[arg(long, value_name = "list", value_delimiter = ',', value_parser = parse_tag)]
    pub tags: Vec<crate::master::config::Tag>,
}

fn parse_tag(s: &str) -> Result<crate::master::config::Tag, String> {
    crate::master::config::Tag::parse(s.trim())
}

/// Flags of `trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Host name or address to trace
    pub host: String,
    /// Highest TTL probed
    #[arg(short = 'm', long = "max-hops", default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=255))]
    pub max_hops: u8,
    /// Probes per hop
    #[arg(short = 'q', long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub queries: u8,
    /// Wait for a reply: seconds (0.5) or a duration (500ms)
    #[arg(short = 'w', long = "wait", value_name = "timeout", default_value = "1", value_parser = parse_seconds)]
    pub wait: Duration,
    /// Probe protocol: udp, icmp or tcp
    #[arg(short = 'P', long = "protocol", default_value = "udp", value_parser = parse_protocol)]
    pub protocol: crate::trace::Protocol,
    /// Destination port (UDP base port or TCP port)
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Use IPv4
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Print addresses only, no reverse DNS
    #[arg(short = 'n')]
    pub numeric: bool,
    /// Flow number (chooses one ECMP branch)
    #[arg(long, default_value_t = 0, conflicts_with = "mda")]
    pub flow: u16,
    /// Find every load-balanced branch (MDA stopping rule, 95% confidence): per TTL every
    /// address, the links between TTLs and the flows that took them
    #[arg(long)]
    pub mda: bool,
    /// With --mda: most flows traced
    #[arg(long = "max-flows", value_name = "n", default_value_t = 64, requires = "mda", value_parser = clap::value_parser!(u16).range(6..=1024))]
    pub max_flows: u16,
    /// Print the result as the JSON a slave sends
    #[arg(long)]
    pub json: bool,
    /// Name each hop's owner from this IP-to-AS table, like mtr -z: a MaxMind DB (GeoLite2-ASN,
    /// DB-IP or IPinfo ASN .mmdb) or tab-separated `range_start range_end AS_number country
    /// AS_name` (iptoasn.com's dumps); special-use ranges (private, CGNAT, link-local,
    /// documentation) are named without one
    #[arg(long = "asn-db", value_name = "file")]
    pub asn_db: Option<PathBuf>,
}

const MEASURE_ABOUT: &str = "Ask a master's slaves to trace a host now (an on-demand \
    measurement, POST /api/v1/measurements) and print each slave's path as it arrives, like \
    traceroute, then one merged view: per TTL, which addresses which slaves saw.\n\n\
    The login is a user of the master's dt-users.json with the role operator or admin: \
    --user NAME with the password from --passwd-file or DT_PASSWORD, or a bearer token from \
    --token-file or DT_TOKEN. The host must be one of the master's targets (name, address or \
    UUID) or allowed by its -measure-allow. Only slaves of this program take part; an original \
    Go slave is shown as offline.\n\n\
    Exit status: 0 when at least one slave delivered a result, 1 when none did, 2 for a bad \
    command line.";

/// Flags of `measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Host name or address to trace (a target of the master, or one its -measure-allow allows)
    pub host: String,
    /// The master: host, host:port or an http(s):// URL
    #[arg(long, value_name = "url", default_value = "127.0.0.1:8990")]
    pub master: String,
    /// Which slaves: all, or slave names and tags separated by commas (tag:eu is always the
    /// tag; a plain eu is the tag when no slave has that name)
    #[arg(long, value_name = "all|NAMES|TAGS", default_value = "all")]
    pub from: String,
    /// At most this many of them
    #[arg(long, value_name = "n", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: Option<u32>,
    /// Probe protocol: udp, icmp or tcp (default: the target's, else udp)
    #[arg(short = 'P', long = "protocol", value_parser = parse_protocol)]
    pub protocol: Option<crate::trace::Protocol>,
    /// Destination port (UDP base port or TCP port)
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Flows (ECMP branches) each slave traces
    #[arg(long, value_name = "n", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub flows: u16,
    /// Probes per hop
    #[arg(short = 'q', long, value_name = "n", value_parser = clap::value_parser!(u8).range(1..=10))]
    pub queries: Option<u8>,
    /// Highest TTL probed
    #[arg(short = 'm', long = "max-hops", value_name = "n", value_parser = clap::value_parser!(u8).range(1..=64))]
    pub max_hops: Option<u8>,
    /// How long slaves have to deliver before they count as timed out
    #[arg(long, value_name = "duration", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// User of the master's dt-users.json (role operator or admin)
    #[arg(long, value_name = "name", conflicts_with = "token_file")]
    pub user: Option<String>,
    /// File whose first line is the user's password (instead of DT_PASSWORD)
    #[arg(long = "passwd-file", value_name = "file", requires = "user")]
    pub passwd_file: Option<PathBuf>,
    /// File whose first line is a bearer token (instead of DT_TOKEN)
    #[arg(long = "token-file", value_name = "file")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed an https:// master's certificate (instead of the
    /// system's roots)
    #[arg(long, value_name = "file")]
    pub ca: Option<PathBuf>,
    /// Print the measurement as the API answers it (JSON) once it is over, nothing else
    #[arg(long)]
    pub json: bool,
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the demo master listens on
    #[arg(long, value_name = "addr", default_value = "127.0.0.1:8990", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Folder for the demo's config files, database and logs
    #[arg(long, value_name = "dir", default_value = "./dt-demo")]
    pub dir: PathBuf,
    /// How often the demo slave traces every target
    #[arg(long, value_name = "duration", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Fake results even when real traces are possible
    #[arg(long = "zDebugResults")]
    pub z_debug_results: bool,
}

/// What `loadgen` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// One result per POST /results/, as an original Go slave sends them.
    Legacy,
    /// One result per POST /api/v1/results.
    Api,
    /// --batch-size results per POST /api/v1/results:batch, as our slave sends a backlog.
    Batch,
    /// GET /healthz only: the HTTP layer's ceiling, nothing stored.
    Ceiling,
    /// POST /config/ as each slave in turn: the targets documents, nothing stored.
    Config,
}

/// Flags of `loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// The master's base URL, e.g. http://127.0.0.1:8990 (http:// is assumed without a scheme)
    #[arg(long, value_name = "url", required_unless_present = "write_config")]
    pub master: Option<String>,
    /// What to send: legacy (POST /results/), api (POST /api/v1/results), batch (POST
    /// /api/v1/results:batch), ceiling (GET /healthz, stores nothing) or config (POST
    /// /config/ as each slave in turn, stores nothing)
    #[arg(
        long,
        value_name = "legacy|api|batch|ceiling|config",
        default_value = "legacy"
    )]
    pub mode: LoadMode,
    /// Connection threads, each with its own keep-alive connection and one request in flight
    #[arg(long, value_name = "n", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,
    /// Slaves sending, named load1..loadN with passwords pw1..pwN
    #[arg(long, value_name = "n", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub slaves: u32,
    /// Targets, named t1..tN, at addresses in 198.18.0.0/15
    #[arg(long, value_name = "n", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub targets: u32,
    /// Distinct paths: each (slave, target) follows one of them, so paths repeat
    #[arg(long, value_name = "n", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub routes: u32,
    /// How long to send after the warm-up (default 10s; with --results, a limit besides the count)
    #[arg(long, value_name = "duration", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop once this many results are acknowledged (ceiling mode: this many requests)
    #[arg(long, value_name = "n", value_parser = clap::value_parser!(u64).range(1..))]
    pub results: Option<u64>,
    /// Results per request in batch mode (the master takes up to 1000)
    #[arg(long = "batch-size", value_name = "n", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,
    /// A batch also ends before its results pass this many bytes, as our slave's do (the
    /// master's default -max-body is 1 MiB)
    #[arg(long = "batch-bytes", value_name = "bytes", default_value_t = 768 << 10, value_parser = clap::value_parser!(u64).range(4096..=1 << 30))]
    pub batch_bytes: u64,
    /// The start of the run that is not timed (its results still count for --verify and --db)
    #[arg(long, value_name = "duration", default_value = "500ms", value_parser = parse_duration_or_zero)]
    pub warmup: Duration,
    /// Send RTTs with nanosecond digits, as an original Go slave does (default: whole
    /// microseconds, as ours)
    #[arg(long = "ns-rtts")]
    pub ns_rtts: bool,
    /// Give every result a fresh random path instead of one of --routes
    #[arg(long = "distinct-paths")]
    pub distinct_paths: bool,
    /// After the run, page through GET /api/v1/results for every load slave and check that
    /// each acknowledged result is stored exactly once (non-zero exit otherwise)
    #[arg(long)]
    pub verify: bool,
    /// The master's SQLite file on this machine: checkpoint its WAL and print bytes on disk per
    /// stored result (use a fresh database)
    #[arg(long, value_name = "file")]
    pub db: Option<PathBuf>,
    /// Results stored in --db in all (default: the results this run had acknowledged)
    #[arg(long, value_name = "n", requires = "db", value_parser = clap::value_parser!(u64).range(1..))]
    pub stored: Option<u64>,
    /// Write DIR/dt-slaves.json and DIR/dt-targets.json for --slaves and --targets, and exit
    #[arg(long = "write-config", value_name = "dir")]
    pub write_config: Option<PathBuf>,
    /// With --write-config, give the slaves tags (region r0..r9; every seventh also
    /// backbone) and two targets in three a Slaves selector: a region's slaves, or a region's
    /// backbone slaves and one slave by name
    #[arg(long, requires = "write_config")]
    pub selectors: bool,
    /// With --write-config, also write DIR/asn.tsv: a made-up IP-to-AS table of this many
    /// ranges that owns the load routes' transit routers, for a master run with -asn-db
    #[arg(long = "asn-ranges", value_name = "n", requires = "write_config", value_parser = clap::value_parser!(u32).range(1..))]
    pub asn_ranges: Option<u32>,
    /// While the run goes, a thread GETs this path of the master's read API (e.g.
    /// '/api/v1/paths/current?slave=load1&target=t1&window=24h') over and over and reports its
    /// latency; repeat the flag for several readers at once
    #[arg(long, value_name = "path")]
    pub probe: Vec<String>,
    /// A user of the master's users file, NAME:PASSWORD, whose HTTP Basic login goes with every
    /// GET (--verify, --probe, ceiling mode): needed when the master has a users file
    #[arg(long = "read-user", value_name = "NAME:PASSWORD", value_parser = parse_read_user)]
    pub read_user: Option<String>,
    /// Probes per hop of every slave (1..=3); by default slave n sends 1 + n % 3
    #[arg(long, value_name = "n", value_parser = clap::value_parser!(u8).range(1..=3))]
    pub queries: Option<u8>,
}

fn parse_read_user(s: &str) -> Result<String, String> {
    match s.split_once(':') {
        Some((name, _)) if !name.is_empty() => Ok(s.to_owned()),
        _ => Err("must be NAME:PASSWORD".into()),
    }
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (try 500ms, 1s, 0)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 30s, 1m, 500ms)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 60.0 => Ok(Duration::from_secs_f64(secs)),
        Ok(_) => Err("must be between 0 and 60 seconds".into()),
        Err(_) => parse_duration(s),
    }
}

fn parse_protocol(s: &str) -> Result<crate::trace::Protocol, String> {
    crate::trace::Protocol::parse(s).ok_or_else(|| format!("'{s}' is not one of udp, icmp, tcp"))
}

/// Parses `HOST:PORT`, `[V6]:PORT`, `:PORT` or `PORT`; no host means every interface.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let any = |port: &str| -> Result<SocketAddr, String> {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{port}' is not a port number"))?;
        Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
    };
    if let Some(port) = s.strip_prefix(':') {
        return any(port);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return any(s);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("'{s}' is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

/// Which subcommand a program name stands for (`dist-traceroute-master` → `master`).
pub fn subcommand_of_program(argv0: &std::ffi::OsStr) -> Option<&'static str> {
    let name = std::path::Path::new(argv0).file_name()?.to_str()?;
    let name = name.strip_suffix(".exe").unwrap_or(name);
    match name {
        "dist-traceroute-master" => Some("master"),
        "dist-traceroute-slave" => Some("slave"),
        _ => None,
    }
}

/// Rewrites Go-style flags into GNU ones for clap.
///
/// Go's flag package takes `-name`, `-name=value` and `-name value`; a token with one dash and
/// a word that is a long flag of `sub` becomes `--word`. `-flag=true|false` of a boolean flag
/// becomes `--flag` or nothing. Short flags (`-4`, `-n`) and everything after `--` stay.
pub fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let cmd = Cli::command();
    let mut out = Vec::with_capacity(args.len());
    let mut sub: Option<clap::Command> = None;
    let mut rest_is_literal = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_is_literal {
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str().map(str::to_owned) else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            rest_is_literal = true;
            out.push(arg);
            continue;
        }
        if sub.is_none() && !text.starts_with('-') {
            sub = cmd.find_subcommand(&text).cloned();
            out.push(arg);
            continue;
        }
        let (word, value) = match text.strip_prefix("--") {
            Some(w) => (w, None::<&str>),
            None => match text.strip_prefix('-') {
                Some(w) if w.chars().count() > 1 => (w, None),
                _ => {
                    out.push(arg);
                    continue;
                }
            },
        };
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, value),
        };
        if name == "help" || name == "version" {
            out.push(OsString::from(format!("--{name}")));
            continue;
        }
        let found = sub
            .as_ref()
            .unwrap_or(&cmd)
            .get_arguments()
            .find(|a| a.get_long() == Some(name))
            .map(|a| {
                a.get_num_args().is_some_and(|n| n.takes_values()) || a.get_action().takes_values()
            });
        match (found, value) {
            (Some(false), Some(v)) if v.eq_ignore_ascii_case("true") || v == "1" => {
                out.push(OsString::from(format!("--{name}")))
            }
            (Some(false), Some(v)) if v.eq_ignore_ascii_case("false") || v == "0" => {}
            (Some(_), Some(v)) => out.push(OsString::from(format!("--{name}={v}"))),
            (Some(_), None) => out.push(OsString::from(format!("--{name}"))),
            // An unknown word: as a long flag, so clap names all of it (not its first letter
            // as a short flag) and suggests the nearest long flag.
            (None, _)
                if !text.starts_with("--")
                    && name.len() > 1
                    && is_flag_word(name)
                    && !starts_with_short(sub.as_ref().unwrap_or(&cmd), name) =>
            {
                out.push(OsString::from(match value {
                    Some(v) => format!("--{name}={v}"),
                    None => format!("--{name}"),
                }))
            }
            (None, _) => out.push(arg),
        }
    }
    out
}

/// True for a word that can name a flag: a letter, then letters, digits, `-` and `_`.
fn is_flag_word(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_alphabetic())
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// True when `word` starts with a short flag of `cmd` (`-q1` is `-q 1`).
fn starts_with_short(cmd: &clap::Command, word: &str) -> bool {
    let first = word.chars().next();
    cmd.get_arguments()
        .any(|a| a.get_short().is_some() && a.get_short() == first)
}

/// `--name` as the user spelled flags: with one dash when `args` has `-name` (or another flag)
/// that way, as the seed's README teaches.
fn spelled(flag: &str, typed: &str, args: &[OsString]) -> String {
    let name = flag.trim_start_matches('-');
    let typed_name = typed.trim_start_matches('-');
    let single = args.iter().filter_map(|a| a.to_str()).any(|a| {
        !a.starts_with("--")
            && a.strip_prefix('-')
                .is_some_and(|w| w.split('=').next() == Some(typed_name))
    });
    if single {
        format!("-{name}")
    } else {
        format!("--{name}")
    }
}

/// The one long flag of `sub` that has `name` as a dash-separated part (`port` names
/// `master-port`), if exactly one does.
fn flag_with_part(name: &str, sub: Option<&str>) -> Option<String> {
    let cmd = Cli::command();
    let cmd = match sub {
        Some(s) => cmd.find_subcommand(s)?.clone(),
        None => cmd,
    };
    let mut found = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| l.split('-').any(|part| part.eq_ignore_ascii_case(name)));
    match (found.next(), found.next()) {
        (Some(one), None) => Some(format!("--{one}")),
        _ => None,
    }
}

/// The subcommand (other than `sub`) that has the long flag `name`, if any.
fn subcommand_with_flag(name: &str, sub: Option<&str>) -> Option<String> {
    Cli::command()
        .get_subcommands()
        .filter(|c| Some(c.get_name()) != sub)
        .find(|c| c.get_arguments().any(|a| a.get_long() == Some(name)))
        .map(|c| c.get_name().to_owned())
}

/// An address (a network of one) or a CIDR range.
fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("'{text}' is not an address or a CIDR range (like 10.0.0.0/8)"))
}

/// Parses the process arguments, taking the subcommand from the program name when it names one.
pub fn parse_from(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(normalize_args(with_program_subcommand(args)))
}

fn with_program_subcommand(mut args: Vec<OsString>) -> Vec<OsString> {
    if let Some(sub) = args.first().and_then(|a| subcommand_of_program(a)) {
        args.insert(1, OsString::from(sub));
        args[0] = OsString::from("dist-traceroute");
    }
    args
}

/// The text for a parse error: clap's one-line reason, then the usage of the subcommand the
/// arguments were for (clap leaves the usage out of some errors).
pub fn error_text(err: &clap::Error, args: &[OsString]) -> String {
    let rendered = err.render().to_string();
    if rendered.contains("Usage:") && err.kind() != clap::error::ErrorKind::UnknownArgument {
        return rendered;
    }
    let args = with_program_subcommand(args.to_vec());
    let mut cmd = Cli::command();
    cmd.build();
    let sub = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| !a.starts_with('-'))
        .and_then(|name| cmd.find_subcommand(name).map(|c| c.get_name().to_owned()));
    let usage = match &sub {
        Some(name) => cmd
            .find_subcommand_mut(name)
            .map(|c| c.render_usage().to_string())
            .unwrap_or_default(),
        None => cmd.render_usage().to_string(),
    };
    let reason = match unknown_flag(err, &args, sub.as_deref()) {
        Some(r) => r,
        None => rendered
            .lines()
            .next()
            .unwrap_or("error: bad arguments")
            .to_owned(),
    };
    format!("{reason}\n\n{usage}\n\nFor more information, try '--help'.\n")
}

/// An unknown flag's error in the spelling the user typed it: the whole flag, the nearest
/// known one of the subcommand, or the subcommand it belongs to.
fn unknown_flag(err: &clap::Error, args: &[OsString], sub: Option<&str>) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(invalid)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let invalid = invalid.split('=').next().unwrap_or(invalid);
    if !invalid.starts_with("--") {
        return None;
    }
    let typed = spelled(invalid, invalid, args);
    let name = invalid.trim_start_matches('-');
    let whose = sub.map_or_else(|| "dist-traceroute".to_owned(), |s| format!("'{s}'"));
    let hint = match err.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(near)) if near.starts_with("--") => {
            format!(": did you mean '{}'?", spelled(near, invalid, args))
        }
        _ => match (flag_with_part(name, sub), subcommand_with_flag(name, sub)) {
            (Some(near), _) => format!(": did you mean '{}'?", spelled(&near, invalid, args)),
            (None, Some(other)) => format!(" ({typed} is a flag of '{other}')"),
            (None, None) => String::new(),
        },
    };
    Some(format!("error: {whose} has no flag '{typed}'{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_from(args.iter().map(OsString::from).collect())
    }

    fn slave(args: &[&str]) -> SlaveArgs {
        match parse(args).unwrap().command {
            Command::Slave(s) => s,
            other => panic!("not a slave: {other:?}"),
        }
    }

    #[test]
    fn seed_slave_line_parses() {
        let s = slave(&[
            "./dist-traceroute-slave",
            "-master=localhost",
            "-name=slave1",
            "-passwd=1234",
        ]);
        assert_eq!(s.master.as_deref(), Some("localhost"));
        assert_eq!(s.name.as_deref(), Some("slave1"));
        assert_eq!(s.passwd.as_deref(), Some("1234"));
        assert_eq!(s.master_port, 8990);
        assert!(!s.z_debug_results);
    }

    #[test]
    fn every_spelling_of_a_value_flag() {
        for args in [
            &["dt", "slave", "-master=h1"][..],
            &["dt", "slave", "-master", "h1"],
            &["dt", "slave", "--master", "h1"],
            &["dt", "slave", "--master=h1"],
        ] {
            assert_eq!(slave(args).master.as_deref(), Some("h1"), "{args:?}");
        }
    }

    #[test]
    fn boolean_flags_bare_and_with_values() {
        assert!(slave(&["dt", "slave", "-zDebugResults"]).z_debug_results);
        assert!(slave(&["dt", "slave", "--zDebugResults"]).z_debug_results);
        assert!(slave(&["dt", "slave", "-zDebugResults=true"]).z_debug_results);
        assert!(!slave(&["dt", "slave", "-zDebugResults=false"]).z_debug_results);
    }

    #[test]
    fn master_defaults_are_the_seeds() {
        let Command::Master(m) = parse(&["dist-traceroute-master"]).unwrap().command else {
            panic!("not master");
        };
        assert_eq!(m.files.config, PathBuf::from("./dt-slaves.json"));
        assert_eq!(m.files.targets, PathBuf::from("./dt-targets.json"));
        assert_eq!(m.log, PathBuf::from("./dt-master.log"));
        assert_eq!(m.loglevel, LogLevel::Info);
        assert_eq!(m.listen.port(), 8990);
        assert!(m.listen.ip().is_unspecified());
    }

    #[test]
    fn read_access_flags() {
        let master = |args: &[&str]| match parse(args).unwrap().command {
            Command::Master(m) => m,
            other => panic!("not master: {other:?}"),
        };
        let m = master(&["dist-traceroute-master"]);
        assert_eq!(m.files.users, PathBuf::from("./dt-users.json"));
        assert!(!m.public_read);
        let m = master(&["dt", "master", "-users=/etc/dt/u.json", "-public-read"]);
        assert_eq!(m.files.users, PathBuf::from("/etc/dt/u.json"));
        assert!(m.public_read);
        assert!(!master(&["dt", "master", "-public-read=false"]).public_read);
        assert!(master(&["dt", "master", "--public-read=true"]).public_read);
    }

    fn error_of(args: &[&str]) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let err = parse_from(args.clone()).expect_err("an error");
        error_text(&err, &args).lines().next().unwrap().to_owned()
    }

    #[test]
    fn unknown_flags_are_named_whole_in_the_spelling_typed() {
        let cases = [
            (
                &["dt", "slave", "-intervall=5s"][..],
                "error: 'slave' has no flag '-intervall': did you mean '-interval'?",
            ),
            (
                &["dt", "slave", "-intervall", "5s"][..],
                "error: 'slave' has no flag '-intervall': did you mean '-interval'?",
            ),
            (
                &["dt", "slave", "--intervall=5s"][..],
                "error: 'slave' has no flag '--intervall': did you mean '--interval'?",
            ),
            (
                &["dist-traceroute-slave", "-port", "8990"][..],
                "error: 'slave' has no flag '-port': did you mean '-master-port'?",
            ),
            (
                &["dt", "master", "-zDebugResults"][..],
                "error: 'master' has no flag '-zDebugResults' (-zDebugResults is a flag of 'slave')",
            ),
            (
                &["dt", "master", "-nonsense"][..],
                "error: 'master' has no flag '-nonsense'",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(error_of(args), want, "{args:?}");
        }
    }

    #[test]
    fn short_flags_are_left_alone() {
        let Command::Trace(t) = parse(&["dt", "trace", "-n", "-4", "-m", "5", "-q1", "host"])
            .unwrap()
            .command
        else {
            panic!("not trace");
        };
        assert!(t.numeric && t.ipv4);
        assert_eq!((t.max_hops, t.queries), (5, 1));
    }

    #[test]
    fn bad_values_are_errors_with_exit_code_2() {
        let err = parse(&["dt", "master", "-loglevel=loud"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["dt", "slave", "-master-port=99999"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["dt", "slave", "-nosuchflag"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen(":80").unwrap().port(), 80);
        assert_eq!(parse_listen("81").unwrap().port(), 81);
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert!(parse_listen("[::1]:82").unwrap().is_ipv6());
        assert!(parse_listen("nonsense").is_err());
    }
}
