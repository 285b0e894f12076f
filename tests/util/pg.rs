//! A throwaway PostgreSQL server for the tests: one per test process, started on first use,
//! and gone, process and files, once the test process exits, however it exits. It speaks TLS
//! too, with a certificate from a CA of its own.

use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql` package puts each major version's `bin/`.
const INSTALL: &str = "/usr/lib/postgresql";

/// The superuser role the tests connect as.
pub const USER: &str = "dt";

/// The OS user that runs the server when the tests run as root (initdb and postgres refuse root).
const OS_USER: &str = "postgres";

/// How long the server may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Ports tried before giving up: another process may take the free port we picked first.
const PORT_ATTEMPTS: usize = 5;

/// Run by `sh` as the server's parent, in its own process group so that a Ctrl-C meant for
/// the tests does not reach it. Each line on stdin is a port to start the server on (the test
/// process sends another only once the last attempt has died); end of file on stdin means the
/// test process has exited, by any means, even SIGKILL: then stop the server and remove the
/// folder. Being the parent, it alone reaps the server, so `$pg` is never a recycled pid.
const WATCHDOG: &str = r#"
dir=$1
shift
exec 3<&0 </dev/null
pg=
while read -r port <&3; do
    if [ -n "$pg" ]; then wait "$pg"; fi
    "$@" -p "$port" 3<&- >>"$dir/log" 2>&1 &
    pg=$!
    echo "$pg"
done
exec >/dev/null 2>&1
if [ -n "$pg" ]; then
    kill -QUIT "$pg"
    wait "$pg"
fi
rm -rf "$dir"
"#;

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A running server on 127.0.0.1, reachable as superuser `USER` with `password`, over plain
/// TCP or TLS (its certificate, from the CA in `ca_file`, names `localhost` and 127.0.0.1).
pub struct Server {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The superuser's password (scram-sha-256 over TCP; the unix socket trusts).
    pub password: String,
    /// The scratch folder: `data/`, `socket/`, the server's `log` and the certificates.
    pub dir: PathBuf,
    /// The major version's `bin/`, where `psql` comes from too.
    pub bin: PathBuf,
    /// The watchdog's stdin: never written again, only closed when this process exits.
    watchdog: ChildStdin,
}

/// The test process's server, started by the first caller. Panics when it cannot start
/// (binaries missing included): a test that needs PostgreSQL fails, never skips.
pub fn server() -> &'static Server {
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(why) => panic!("no PostgreSQL server for the tests: {why}"),
    }
}

impl Server {
    /// A URL for the `postgres` crate or the master's store flag, as the superuser over TCP.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The PEM file of a CA that signed nothing the server has, for a client to distrust it.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// Creates an empty database named `prefix_N_PID` and returns the name.
    pub fn create_db(&self, prefix: &str) -> String {
        let n = DATABASES.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}_{n}_{}", std::process::id());
        // Plain lower-case names need no quoting in SQL, URLs or psql's `-d`.
        assert!(
            name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database prefix {prefix:?}: use a short name of a-z, 0-9 and _"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Runs `sql` in `db` with Debian's `psql` (unaligned, tuples only) and returns its stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.run_psql(db, sql);
        assert!(
            out.status.success(),
            "psql -d {db} -c {sql:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("psql prints UTF-8")
    }

    fn run_psql(&self, db: &str, sql: &str) -> Output {
        let mut psql = Command::new(self.bin.join("psql"));
        clean_env(&mut psql)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.join("socket"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run psql")
    }
}

/// Makes the folder, then initdb and the server under a watchdog; any error says why.
fn start() -> Result<Server, String> {
    let bin = find_bin()?;
    let root = euid_is_root();
    let password = format!("{:016x}", random());
    let dir = std::env::temp_dir().join(format!("dt-pg-{}-{:016x}", std::process::id(), random()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let watchdog =
        prepare(&dir, &bin, root, &password).and_then(|()| spawn_watchdog(&dir, &bin, root));
    let (child, stdin, stdout) = match watchdog {
        Ok(w) => w,
        Err(why) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(why);
        }
    };
    // From here the watchdog owns the folder: returning drops its stdin, and it cleans up.
    let mut server = Server {
        port: 0,
        password,
        dir,
        bin,
        watchdog: stdin,
    };
    initdb(&server, root)?;
    launch(&mut server, child, stdout)?;
    Ok(server)
}

/// The newest major version's `bin/` holding initdb, postgres and psql.
fn find_bin() -> Result<PathBuf, String> {
    let missing = || {
        format!(
            "no {INSTALL}/<major>/bin with initdb, postgres and psql: install Debian's \
             postgresql package (scripts/test does, as root)"
        )
    };
    let versions = std::fs::read_dir(INSTALL).map_err(|_| missing())?;
    let newest = versions
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            // "15", or "9.6" before PostgreSQL 10.
            let version: Vec<u32> = name
                .split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, name))
        })
        .max()
        .ok_or_else(missing)?;
    let bin = Path::new(INSTALL).join(newest.1).join("bin");
    if ["initdb", "postgres", "psql"]
        .iter()
        .all(|b| bin.join(b).is_file())
    {
        Ok(bin)
    } else {
        Err(missing())
    }
}

/// The folder's layout, owned by the server's OS user: a socket folder, an empty log, the
/// password file for initdb and the certificates.
fn prepare(dir: &Path, bin: &Path, root: bool, password: &str) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", dir.display());
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod", e))?;
    std::fs::create_dir(dir.join("socket")).map_err(|e| io("mkdir socket", e))?;
    std::fs::write(dir.join("log"), "").map_err(|e| io("create log", e))?;
    std::fs::write(dir.join("password"), password).map_err(|e| io("write password", e))?;
    let pki = pki()?;
    std::fs::write(dir.join("ca.crt"), pki.ca).map_err(|e| io("write ca.crt", e))?;
    std::fs::write(dir.join("other-ca.crt"), pki.other_ca)
        .map_err(|e| io("write other-ca.crt", e))?;
    std::fs::write(dir.join("server.crt"), pki.cert).map_err(|e| io("write server.crt", e))?;
    // PostgreSQL refuses a key file that other users may read.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("server.key"))
        .and_then(|mut f| f.write_all(pki.key.as_bytes()))
        .map_err(|e| io("write server.key", e))?;
    if root {
        let out = Command::new("chown")
            .args(["-R", &format!("{OS_USER}:{OS_USER}")])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "chown to the {OS_USER} user (made by Debian's postgresql package, binaries \
                 in {}): {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// The server's certificates, PEM.
struct Pki {
    /// The CA that signed `cert`.
    ca: String,
    /// A CA that signed nothing here.
    other_ca: String,
    /// The server's certificate, for `localhost` and 127.0.0.1.
    cert: String,
    /// The server's private key.
    key: String,
}

/// A fresh CA and a server certificate signed by it, and an unrelated CA (ECDSA P-256: quick
/// to generate).
fn pki() -> Result<Pki, String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let rcgen = |e: rcgen::Error| format!("making the test certificates: {e}");
    let ca = |name: &str| -> Result<CertifiedIssuer<'static, KeyPair>, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(rcgen)?).map_err(rcgen)
    };
    let issuer = ca("dist-traceroute test CA")?;
    let other = ca("dist-traceroute unrelated test CA")?;
    let key = KeyPair::generate().map_err(rcgen)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(rcgen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).map_err(rcgen)?;
    Ok(Pki {
        ca: issuer.pem(),
        other_ca: other.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Starts the watchdog shell that will run the server; nothing runs until it gets a port.
fn spawn_watchdog(
    dir: &Path,
    bin: &Path,
    root: bool,
) -> Result<(Child, ChildStdin, BufReader<ChildStdout>), String> {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("log"))
        .map_err(|e| format!("cannot open the log in {}: {e}", dir.display()))?;
    let mut sh = Command::new("sh");
    sh.args(["-c", WATCHDOG, "sh"]).arg(dir);
    sh.args(as_server_user(root, &bin.join("postgres")))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir.join("socket"))
        // Many masters, each with a pool, share the one server.
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
        ])
        .args(["-c", "shared_buffers=32MB"])
        .args(["-c", "ssl=on"])
        .arg("-c")
        .arg(format!(
            "ssl_cert_file={}",
            dir.join("server.crt").display()
        ))
        .arg("-c")
        .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
    let mut child = clean_env(&mut sh)
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    Ok((child, stdin, stdout))
}

/// A fresh cluster in `data/`: superuser `USER` with the password, UTF-8, C collation.
fn initdb(server: &Server, root: bool) -> Result<(), String> {
    let argv = as_server_user(root, &server.bin.join("initdb"));
    let password_file = server.dir.join("password");
    let out = clean_env(&mut Command::new(&argv[0]))
        .args(&argv[1..])
        .arg("-D")
        .arg(server.dir.join("data"))
        .args([
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .args(["--encoding=UTF8", "--locale=C"])
        .arg(format!("--pwfile={}", password_file.display()))
        .current_dir(&server.dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    let _ = std::fs::remove_file(password_file);
    if out.status.success() {
        Ok(())
    } else {
        // Run as the postgres user, initdb fails in a TMPDIR that user cannot reach.
        Err(format!(
            "initdb in {}: {}\n{}{}",
            server.dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts the server on a free port, trying another when that one was taken meanwhile,
/// and waits until it answers.
fn launch(
    server: &mut Server,
    mut watchdog: Child,
    mut stdout: BufReader<ChildStdout>,
) -> Result<(), String> {
    for _ in 0..PORT_ATTEMPTS {
        // Earlier attempts' lines stay in the log; only this one's say why it failed.
        let seen = std::fs::metadata(server.dir.join("log")).map_or(0, |m| m.len() as usize);
        server.port = free_port();
        writeln!(server.watchdog, "{}", server.port)
            .and_then(|()| server.watchdog.flush())
            .map_err(|e| format!("the watchdog is gone: {e}\n{}", log(server)))?;
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading the watchdog: {e}"))?;
        let pid: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("the watchdog said {line:?}\n{}", log(server)))?;
        let end = Instant::now() + START_LIMIT;
        loop {
            if exited(pid) || watchdog.try_wait().ok().flatten().is_some() {
                let text = std::fs::read_to_string(server.dir.join("log")).unwrap_or_default();
                if text
                    .get(seen..)
                    .is_some_and(|new| new.contains("could not bind"))
                {
                    break;
                }
                return Err(format!(
                    "the server exited on port {}:\n{}",
                    server.port,
                    log(server)
                ));
            }
            let socket = server.dir.join(format!("socket/.s.PGSQL.{}", server.port));
            if socket.exists() && server.run_psql("postgres", "SELECT 1").status.success() {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "the server did not accept connections within {START_LIMIT:?}:\n{}",
                    log(server)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(format!(
        "no free port in {PORT_ATTEMPTS} attempts:\n{}",
        log(server)
    ))
}

/// The server's log so far, for a failure message.
fn log(server: &Server) -> String {
    let path = server.dir.join("log");
    match std::fs::read_to_string(&path) {
        Ok(text) => format!("--- {} ---\n{text}", path.display()),
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// True once the process has exited: its parent, the watchdog, reaps it only at the end, so
/// until then a dead server stays a zombie.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// `program` as argv, run as the `postgres` OS user when we are root.
fn as_server_user(root: bool, program: &Path) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if root {
        for a in [
            "setpriv",
            "--reuid",
            OS_USER,
            "--regid",
            OS_USER,
            "--init-groups",
            "--",
        ] {
            argv.push(a.into());
        }
    }
    argv.push(program.into());
    argv
}

/// Drops the caller's libpq variables (PGHOST, PGPASSWORD, ...): only our flags count.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A loopback port nobody listened on a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind a loopback port")
        .port()
}

/// 64 random bits from std's hasher keys (for the password and the folder name).
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// True when this process's effective uid is 0.
fn euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap_or(false)
}
