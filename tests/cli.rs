//! The seed's command lines, GNU spellings, symlink invocation and argument errors, run on the
//! real binary.

mod util;
use std::path::Path;
use std::time::Duration;
use util::*;

fn link(dir: &Scratch, name: &str) -> std::path::PathBuf {
    let p = dir.path(name);
    std::os::unix::fs::symlink(BIN, &p).unwrap();
    p
}

#[test]
fn seed_help_lines_through_symlinks() {
    let dir = Scratch::new("help");
    let master = link(&dir, "dist-traceroute-master");
    let (code, out, _) = run(&dir.0, &master, &["-help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--log",
        "--loglevel",
        "--targets",
        "--listen",
        "--db",
    ] {
        assert!(out.contains(flag), "master help lacks {flag}:\n{out}");
    }
    assert!(out.contains("./dt-slaves.json") && out.contains("./dt-master.log"));
    let slave = link(&dir, "dist-traceroute-slave");
    let (code, out, _) = run(&dir.0, &slave, &["-help"]);
    assert_eq!(code, 0);
    for flag in [
        "--master",
        "--master-port",
        "--name",
        "--passwd",
        "--zDebugResults",
        "./dt-slave.log",
    ] {
        assert!(out.contains(flag), "slave help lacks {flag}:\n{out}");
    }
}

#[test]
fn version_and_top_level_help() {
    let dir = Scratch::new("version");
    let (code, out, _) = run(&dir.0, Path::new(BIN), &["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("dist-traceroute "), "{out}");
    let (code, out, _) = run(&dir.0, Path::new(BIN), &["--help"]);
    assert_eq!(code, 0);
    for sub in [
        "master",
        "slave",
        "trace",
        "demo",
        "check-config",
        "enroll-token",
    ] {
        assert!(out.contains(sub), "{out}");
    }
    // Every subcommand, and the links, tell the version too.
    for args in [
        &["master", "--version"][..],
        &["slave", "-version"],
        &["check-config", "--version"],
    ] {
        let (code, out, err) = run(&dir.0, Path::new(BIN), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.starts_with("dist-traceroute"), "{args:?}: {out}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{args:?}: {out}");
    }
    let slave = link(&dir, "dist-traceroute-slave");
    let (code, out, _) = run(&dir.0, &slave, &["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

/// `check-config` reads the files as the master does: 0 and a summary when they are good, 1
/// and each problem with its file:line:column when not.
#[test]
fn check_config_exits_0_or_1_with_the_place() {
    let dir = Scratch::with_seed_config("checkconfig");
    let (code, out, err) = run(&dir.0, Path::new(BIN), &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ok: 2 slaves, 2 targets, no users file"),
        "{out}"
    );
    dir.write(
        "dt-targets.json",
        &TARGETS.replace("\"MaxHops\": 30", "\"MaxHops\": 300"),
    );
    dir.write("users.json", "{\"Users\": [{\"Name\": \"u\"}]}");
    let (code, out, err) = run(
        &dir.0,
        Path::new(BIN),
        &[
            "check-config",
            "-targets",
            "./dt-targets.json",
            "-users",
            "users.json",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("./dt-targets.json:8:") && err.contains("MaxHops: 300"),
        "{err}"
    );
    assert!(
        err.contains("users.json:1:"),
        "both problems are told: {err}"
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn bad_arguments_exit_2_with_reason_and_usage() {
    let dir = Scratch::new("badargs");
    for args in [
        &["master", "-loglevel=loud"][..],
        &["slave", "-master-port", "notaport"],
        &["master", "-nosuchflag"],
        &["nosuchcommand"],
    ] {
        let (code, _, err) = run(&dir.0, Path::new(BIN), args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.lines().next().unwrap().starts_with("error:"), "{err}");
        assert!(err.contains("Usage:"), "{err}");
    }
}

#[test]
fn slave_without_master_name_or_password_says_which() {
    let dir = Scratch::new("slaveflags");
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &["slave", "-name=a", "-passwd=b", "-zDebugResults"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("-master is required"), "{err}");
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &["slave", "--master", "h", "-passwd=b"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("-name is required"), "{err}");
}

#[test]
fn log_file_that_cannot_be_opened_is_a_startup_error() {
    let dir = Scratch::with_seed_config("badlog");
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &[
            "master",
            "-log",
            "/nonexistent-dir/x.log",
            "-listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot open log file /nonexistent-dir/x.log"),
        "{err}"
    );
}

#[test]
fn invalid_config_names_file_line_column_and_rule() {
    let dir = Scratch::with_seed_config("badconfig");
    dir.write(
        "dt-targets.json",
        &TARGETS.replace("\"MaxHops\": 30", "\"MaxHops\": 300"),
    );
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &["master", "-listen", "127.0.0.1:0"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("./dt-targets.json:8:") && err.contains("MaxHops: 300 is out of range 1..100"),
        "{err}"
    );
    dir.write(
        "dt-slaves.json",
        "{\"Slaves\": [{\"Name\": \"a\", \"Pasword\": \"x\"}]}",
    );
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &["master", "-listen", "127.0.0.1:0"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("./dt-slaves.json:1:") && err.contains("unknown field `Pasword`"),
        "{err}"
    );
}

/// The seed README's exact lines: `./dist-traceroute-master` in a folder holding the config,
/// and `./dist-traceroute-slave -master=localhost -name=slave1 -passwd=1234` (with
/// -zDebugResults and the port of this test's master).
#[test]
fn seed_command_lines_work_as_written() {
    let dir = Scratch::with_seed_config("seedlines");
    link(&dir, "dist-traceroute-master");
    link(&dir, "dist-traceroute-slave");
    // The seed master line takes no flags; this test adds only a free port.
    let master = Proc::spawn_program(
        dir.path("dist-traceroute-master"),
        &dir.0,
        &["-listen=127.0.0.1:0"],
    );
    let mut master = master;
    let addr = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(master.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim()
            .trim_start_matches("listening on http://")
            .parse::<std::net::SocketAddr>()
            .unwrap()
    };
    assert!(dir.path("dt-master.log").exists(), "default log file");
    assert!(dir.path("dt-results.db").exists(), "default database");
    let port = format!("-master-port={}", addr.port());
    let _slave = Proc::spawn_program(
        dir.path("dist-traceroute-slave"),
        &dir.0,
        &[
            "-master=localhost",
            "-name=slave1",
            "-passwd=1234",
            &port,
            "-zDebugResults",
            "-interval=1s",
        ],
    );
    let got = wait_for(std::time::Duration::from_secs(20), || {
        let r = results(addr, "slave=slave1");
        (r.len() >= 2).then_some(r)
    })
    .expect("the slave's results reach the master");
    assert!(got.iter().all(|r| r["target_known"] == true));
    assert!(dir.path("dt-slave.log").exists(), "default slave log file");
}

/// `-config`, `-targets`, `-db`, `-log` and `-loglevel` name other files and a quieter log.
#[test]
fn master_file_flags_name_other_files() {
    let dir = Scratch::new("fileflags");
    dir.write("allowed.json", SLAVES);
    dir.write("where.json", TARGETS);
    let master = Proc::master(
        &dir.0,
        &[
            "-config=allowed.json",
            "--targets",
            "where.json",
            "-db",
            "store.db",
            "--log=quiet.log",
            "-loglevel",
            "warn",
        ],
    );
    let a = post(
        master.addr(),
        "/config/",
        br#"{"Name":"slave2","Password":"123"}"#,
    );
    assert_eq!((a.status, a.text()), (200, TARGETS.to_owned()));
    assert_eq!(
        post(master.addr(), "/results/", GO_RESULT.as_bytes()).status,
        200
    );
    assert!(dir.path("store.db").exists());
    assert!(!dir.path("dt-results.db").exists() && !dir.path("dt-master.log").exists());
    // At warn level the startup info lines stay out of the log; a failed login is a warning.
    assert_eq!(
        post(
            master.addr(),
            "/config/",
            br#"{"Name":"slave2","Password":"x"}"#
        )
        .status,
        401
    );
    let log = std::fs::read_to_string(dir.path("quiet.log")).unwrap();
    assert!(!log.contains("[INFO]"), "{log}");
    assert!(
        log.contains("[WARN]") && log.contains("wrong name or password"),
        "{log}"
    );
}

/// With no host in `-listen` the master takes IPv4 and IPv6 on one port.
#[test]
fn listening_on_all_interfaces_takes_both_families() {
    let dir = Scratch::with_seed_config("dualstack");
    let mut master = Proc::spawn(&dir.0, &["master", "-listen", ":0"]);
    let addr = master.read_listen_line();
    for ip in ["127.0.0.1", "::1"] {
        let a = get(
            std::net::SocketAddr::new(ip.parse().unwrap(), addr.port()),
            "/",
        );
        assert_eq!(a.status, 200, "{ip}");
    }
}

#[test]
fn a_bad_as_table_stops_trace_before_any_probe() {
    let dir = Scratch::new("asndb");
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &["trace", "--asn-db", "no-such-table.tsv", "127.0.0.1"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot read the AS table no-such-table.tsv"),
        "{err}"
    );
    dir.write("bad.tsv", "8.8.8.0\t8.8.8.255\tGOOGLE\n");
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &["trace", "--asn-db", "bad.tsv", "127.0.0.1"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("bad.tsv") && err.contains("line 1: AS number"),
        "{err}"
    );
}

/// The man pages and completions come from the parser's own definitions: `man -l` renders
/// every page with the flags the parser takes, and bash loads the completions.
#[test]
fn man_pages_render_and_completions_load() {
    let dir = Scratch::new("manpages");
    let (code, out, err) = run(&dir.0, Path::new(BIN), &["man", "pages"]);
    assert_eq!(code, 0, "{err}");
    let pages: Vec<&str> = out.lines().collect();
    assert!(pages.len() >= 10, "{out}");
    for (page, flag) in [
        ("dist-traceroute.1", "master"),
        ("dist-traceroute-master.1", "--asn-db"),
        ("dist-traceroute-slave.1", "--enroll"),
        ("dist-traceroute-enroll-token.1", "--expires"),
        ("dist-traceroute-check-config.1", "--targets"),
    ] {
        let listed = format!("pages/{page}");
        assert!(pages.contains(&listed.as_str()), "{page}: {out}");
        let file = dir.path(&listed);
        let shown = std::process::Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man runs (scripts/test installs man-db)");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.status.success(),
            "{page}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
        assert!(text.contains(flag), "{page} lacks {flag}: {text}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&dir.0, Path::new(BIN), &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("enroll-token"), "{shell}: {out}");
    }
    let script = dir.path("dt.bash");
    let (_, bash, _) = run(&dir.0, Path::new(BIN), &["completions", "bash"]);
    std::fs::write(&script, bash).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p dist-traceroute",
            script.display()
        ))
        .output()
        .expect("bash runs");
    let said = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(
        said.starts_with("complete ") && said.contains("-F _dist__traceroute dist-traceroute"),
        "{said}"
    );
    let (code, _, err) = run(&dir.0, Path::new(BIN), &["completions", "tcsh"]);
    assert_eq!(code, 2, "{err}");
}

/// SIGHUP reopens the log file under its name, as logrotate needs; `-log -` logs to stderr
/// only and writes no file.
#[test]
fn sighup_reopens_the_log_and_a_dash_logs_to_stderr_only() {
    let dir = Scratch::with_seed_config("logrotate");
    let master = Proc::master(&dir.0, &["-log", "m.log"]);
    let addr = master.addr();
    let rotated = dir.path("m.log.1");
    std::fs::rename(dir.path("m.log"), &rotated).unwrap();
    let pid = nix::unistd::Pid::from_raw(master.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let fresh = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path("m.log"))
            .ok()
            .filter(|t| t.contains("SIGHUP: log file reopened"))
    })
    .expect("a new log file after SIGHUP");
    assert!(
        !fresh.contains("listening"),
        "only lines after the reopen: {fresh}"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!old.is_empty() && !old.contains("SIGHUP"), "{old}");
    assert_eq!(get(addr, "/healthz").status, 200, "the master lives on");
    drop(master);

    let quiet = Scratch::with_seed_config("logdash");
    let mut p = std::process::Command::new(BIN)
        .current_dir(&quiet.0)
        .args(["master", "-listen", "127.0.0.1:0", "-log", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = p.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    std::thread::sleep(Duration::from_millis(800));
    // SIGHUP with no file to reopen (systemctl reload) leaves the master running.
    let pid = nix::unistd::Pid::from_raw(p.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.try_wait().unwrap().is_none(), "SIGHUP stopped the master");
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = p.wait();
    let text = reader.join().unwrap();
    assert!(text.contains("targets"), "logged to stderr: {text}");
    assert!(text.contains("nothing to reopen"), "{text}");
    let files: Vec<String> = std::fs::read_dir(&quiet.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files.iter().any(|f| f == "-" || f.ends_with(".log")),
        "no log file: {files:?}"
    );
}
