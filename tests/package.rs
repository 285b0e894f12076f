//! The Debian package, installed for real on this machine (the tests run as root): built by
//! `scripts/package`, installed with dpkg, checked file by file, used as its system user
//! would use it (a trace through raw sockets in a network namespace with the capability the
//! package gives, a master started as its unit would start it, a slave stopped by SIGTERM),
//! upgraded over an edited config, and purged.

mod netns;
mod util;

use netns::{Chain, Lab, must_skip};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use util::{Scratch, get, wait_for};

fn sh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = sh(args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

/// The command line that runs `args` as the package's user with no capability of root's: only
/// what the binary's file capability gives.
fn as_user<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "setpriv",
        "--reuid=dist-traceroute",
        "--regid=dist-traceroute",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all,+net_raw",
    ];
    v.extend_from_slice(args);
    v
}

#[test]
fn the_debian_package_installs_works_as_its_user_upgrades_and_purges() {
    if must_skip() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    // From the debug build the tests already made (the release build is the same package,
    // a few minutes of LTO later).
    let built = ok(&[
        "env",
        "PROFILE=dev",
        "bash",
        &format!("{root}/scripts/package"),
    ]);
    let deb = built
        .lines()
        .last()
        .expect("scripts/package prints the .deb")
        .trim()
        .to_owned();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{built}");
    ok(&["dpkg", "-i", &deb]);
    let purge = Purge;

    // Files in place, links working, the capability on the binary.
    for f in [
        "/usr/bin/dist-traceroute",
        "/usr/lib/systemd/system/dist-traceroute-master.service",
        "/usr/lib/systemd/system/dist-traceroute-slave.service",
        "/usr/lib/systemd/system/dist-traceroute-slave@.service",
        "/etc/dist-traceroute/dt-slaves.json",
        "/etc/dist-traceroute/dt-targets.json",
        "/etc/default/dist-traceroute-slave",
        "/etc/logrotate.d/dist-traceroute",
        "/usr/share/man/man1/dist-traceroute-slave.1.gz",
        "/usr/share/bash-completion/completions/dist-traceroute",
        "/usr/share/zsh/vendor-completions/_dist-traceroute",
        "/usr/share/fish/vendor_completions.d/dist-traceroute.fish",
        "/usr/share/doc/dist-traceroute/examples/dt-slaves.json",
    ] {
        assert!(Path::new(f).exists(), "{f} is not installed");
    }
    for link in ["dist-traceroute-master", "dist-traceroute-slave"] {
        let out = ok(&[&format!("/usr/bin/{link}"), "--version"]);
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{link}: {out}");
    }
    let caps = ok(&["getcap", "/usr/bin/dist-traceroute"]);
    assert!(caps.contains("cap_net_raw"), "{caps}");
    ok(&["id", "dist-traceroute"]);
    ok(&[
        "/usr/bin/dist-traceroute",
        "check-config",
        "--config",
        "/etc/dist-traceroute/dt-slaves.json",
        "--targets",
        "/etc/dist-traceroute/dt-targets.json",
    ]);

    // The man pages render, the completions load.
    let page = Command::new("man")
        .args(["-l", "/usr/share/man/man1/dist-traceroute-slave.1.gz"])
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&page.stdout);
    assert!(page.status.success() && text.contains("--enroll"), "{text}");
    let loaded = ok(&[
        "bash",
        "-c",
        "source /usr/share/bash-completion/completions/dist-traceroute && complete -p dist-traceroute",
    ]);
    assert!(loaded.contains("dist-traceroute"), "{loaded}");

    // The units pass systemd's own checks; the exposure scores go to the log for the README.
    ok(&[
        "systemd-analyze",
        "verify",
        "/usr/lib/systemd/system/dist-traceroute-master.service",
        "/usr/lib/systemd/system/dist-traceroute-slave.service",
    ]);
    for unit in [
        "dist-traceroute-master.service",
        "dist-traceroute-slave.service",
    ] {
        let (_, out, err) = sh(&[
            "systemd-analyze",
            "security",
            "--offline=yes",
            &format!("/usr/lib/systemd/system/{unit}"),
        ]);
        let line = out
            .lines()
            .chain(err.lines())
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("{unit}: no exposure level: {out}{err}"))
            .to_owned();
        let score: f64 = line
            .split("service: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        eprintln!("systemd-analyze security {unit}: {score}");
        assert!(score < 3.0, "{unit} is exposed: {line}");
    }

    // As the package's user, with nothing but the file capability: a trace through raw
    // sockets across three routers.
    let mut lab = Lab::new("pkg");
    let chain = Chain::build(&mut lab, 3, &[], false);
    let target = chain.target(false);
    let mut cmd = vec!["ip", "netns", "exec"];
    let ns = lab.ns("h");
    cmd.push(&ns);
    let traced = as_user(&["/usr/bin/dist-traceroute", "trace", "-n", "--json", &target]);
    cmd.extend(traced);
    let out = ok(&cmd);
    let v: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .next()
        .expect("a trace")
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["Success"], true, "{out}");
    assert_eq!(v["Destination"], target.as_str(), "{out}");

    // A master started as its unit starts it: its user, a state folder of its own, the
    // config read from /etc, logs to stderr.
    let state = Scratch::new("pkg-state");
    ok(&[
        "chown",
        "dist-traceroute:dist-traceroute",
        state.0.to_str().unwrap(),
    ]);
    let db = state.path("dt-results.db");
    let managed = state.path("managed.json");
    let port = util::free_addr().port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let master_cmd = as_user(&[
        "/usr/bin/dist-traceroute",
        "master",
        "-log",
        "-",
        "-listen",
        &listen,
        "-config",
        "/etc/dist-traceroute/dt-slaves.json",
        "-targets",
        "/etc/dist-traceroute/dt-targets.json",
        "-users",
        "/etc/dist-traceroute/dt-users.json",
        "-managed",
        managed.to_str().unwrap(),
        "-db",
        db.to_str().unwrap(),
    ]);
    let mut master = Command::new(master_cmd[0])
        .args(&master_cmd[1..])
        .current_dir(&state.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let up = wait_for(Duration::from_secs(15), || {
        std::net::TcpStream::connect(addr).ok().map(|_| ())
    });
    assert!(up.is_some(), "the master as its user serves");
    assert_eq!(get(addr, "/healthz").status, 200);
    assert!(db.exists(), "its database in its state folder");

    // A slave of it (fake results), as the user; SIGTERM stops it within its bound.
    let spool = state.path("spool");
    let slave_cmd = as_user(&[
        "/usr/bin/dist-traceroute-slave",
        "-log",
        "-",
        "-master",
        "127.0.0.1",
        "-master-port",
        &port,
        "-name",
        "nobody",
        "-passwd",
        "x",
        "-zDebugResults",
        "-spool",
        spool.to_str().unwrap(),
    ]);
    let mut slave = Command::new(slave_cmd[0])
        .args(&slave_cmd[1..])
        .current_dir(&state.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(slave.try_wait().unwrap().is_none(), "the slave runs");
    let term = Instant::now();
    ok(&["kill", "-TERM", &slave.id().to_string()]);
    let code = loop {
        if let Some(s) = slave.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            term.elapsed() < Duration::from_secs(25),
            "the slave did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "slave stopped {:?} after SIGTERM, exit {code:?}",
        term.elapsed()
    );
    assert_eq!(code, Some(0));
    let _ = master.kill();
    let _ = master.wait();

    // An upgrade keeps an edited config file.
    let edited = "{\"ReportURL\": \"\", \"Targets\": {}, \"Retries\": 2, \"MaxHops\": 20, \"TimeoutMs\": 400}\n";
    std::fs::write("/etc/dist-traceroute/dt-targets.json", edited).unwrap();
    ok(&["dpkg", "--force-confold", "-i", &deb]);
    assert_eq!(
        std::fs::read_to_string("/etc/dist-traceroute/dt-targets.json").unwrap(),
        edited
    );
    drop(purge);
    for f in [
        "/usr/bin/dist-traceroute",
        "/usr/bin/dist-traceroute-master",
        "/etc/dist-traceroute/dt-targets.json",
    ] {
        assert!(!Path::new(f).exists(), "{f} is left after the purge");
    }
}

/// Purges the package however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "dist-traceroute"])
            .output();
    }
}
