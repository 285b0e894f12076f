//! Enrolment end to end: a token issued on the master, a real slave enrolled with it over
//! HTTP and over HTTPS, restarted and still let in, the token refused when reused or expired
//! (tried from another address than the slave's), the slave revoked and refused at its next
//! request; the secret never in a log or on a command line, the operator's file never written.

mod util;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use util::*;

/// `dist-traceroute enroll-token ARGS` in `dir`: (exit code, token, stderr).
fn issue(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["enroll-token"];
    all.extend_from_slice(args);
    let (code, out, err) = run(dir, Path::new(BIN), &all);
    (code, out.trim().to_owned(), err)
}

/// A master on every address of this machine (so a client can come from 127.0.0.2).
fn master_everywhere(dir: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["master", "-listen", "0.0.0.0:0"];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(dir, &args);
    let addr = p.read_listen_line();
    p.addr = Some(SocketAddr::from(([127, 0, 0, 1], addr.port())));
    p
}

/// POSTs `body` to `path` from the source address `from`.
fn post_from(from: [u8; 4], addr: SocketAddr, path: &str, body: &[u8]) -> Answer {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request("POST", path, body)).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_answer(&buf).expect("an answer")
}

fn enrolled_slave(dir: &Path, master: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "slave",
        master,
        "-zDebugResults",
        "-interval=1s",
        "-config-interval=1s",
        "-retry-max=1s",
        "-spool=spool",
        "-log=slave.log",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(dir, &args)
}

fn results_of(addr: SocketAddr, slave: &str) -> usize {
    let a = get(addr, &format!("/api/v1/results?limit=1000&slave={slave}"));
    if a.status != 200 {
        return 0;
    }
    a.json()["results"].as_array().map_or(0, Vec::len)
}

fn cmdline(p: &Proc) -> String {
    std::fs::read(format!("/proc/{}/cmdline", p.child.id()))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[test]
fn a_slave_enrols_once_stays_in_after_a_restart_and_is_revoked() {
    let dir = Scratch::with_seed_config("enrol");
    let operators = std::fs::read(dir.path("dt-slaves.json")).unwrap();
    let master = master_everywhere(&dir.0, &[]);
    let addr = master.addr();
    let (code, token, err) = issue(&dir.0, &["fra1", "--tags", "eu,fra1", "--expires", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(token.len() >= 40, "{token}");
    assert!(err.contains("-enroll "), "says how to use it: {err}");
    let managed = std::fs::read_to_string(dir.path("dt-slaves.managed.json")).unwrap();
    assert!(
        !managed.contains(&token),
        "the file keeps a digest only: {managed}"
    );
    assert!(managed.contains("sha256:"), "{managed}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path("dt-slaves.managed.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the managed file is the master's user's only"
        );
    }

    let master_flag = format!("-master=http://127.0.0.1:{}", addr.port());
    let enroll = format!("-enroll={token}");
    let slave = enrolled_slave(&dir.0, &master_flag, &[&enroll]);
    wait_for(Duration::from_secs(30), || {
        (results_of(addr, "fra1") >= 2).then_some(())
    })
    .expect("the enrolled slave delivers");
    let creds: Value =
        serde_json::from_slice(&std::fs::read(dir.path("spool/credentials.json")).unwrap())
            .unwrap();
    assert_eq!(creds["Name"], "fra1");
    let secret = creds["Password"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path("spool/credentials.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!cmdline(&slave).contains(&secret));
    let managed = std::fs::read_to_string(dir.path("dt-slaves.managed.json")).unwrap();
    assert!(
        !managed.contains(&secret) && managed.contains("$argon2id$"),
        "{managed}"
    );
    // Listed by the API with its tags.
    let slaves = get(addr, "/api/v1/slaves?tag=fra1").json();
    let list = slaves["slaves"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{slaves:#}");
    assert_eq!(list[0]["name"], "fra1");
    assert_eq!(list[0]["tags"], json!(["eu", "fra1"]));
    assert!(list[0]["enrolled_at"].is_string(), "{slaves:#}");

    // Restarted with the same command line (its token used by now): still let in.
    drop(slave);
    let before = results_of(addr, "fra1");
    let slave = enrolled_slave(&dir.0, &master_flag, &[&enroll]);
    wait_for(Duration::from_secs(30), || {
        (results_of(addr, "fra1") >= before + 2).then_some(())
    })
    .expect("the restarted slave delivers");

    // The used token, from another address: refused, and says why.
    let again = json!({"Token": token, "Password": "a".repeat(64)}).to_string();
    let a = post_from([127, 0, 0, 2], addr, "/api/v1/enroll", again.as_bytes());
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("was used at"), "{}", a.text());
    // An unknown token, and one that expired.
    let unknown = json!({"Token": "x".repeat(43), "Password": "a".repeat(64)}).to_string();
    let a = post_from([127, 0, 0, 2], addr, "/api/v1/enroll", unknown.as_bytes());
    assert_eq!(a.status, 403);
    assert!(
        a.text().contains("not a token this master issued"),
        "{}",
        a.text()
    );
    let (code, short, err) = issue(&dir.0, &["ams1", "--expires", "1s"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_millis(1500));
    let late = json!({"Token": short, "Password": "b".repeat(64)}).to_string();
    let a = post_from([127, 0, 0, 2], addr, "/api/v1/enroll", late.as_bytes());
    assert_eq!(a.status, 403);
    assert!(a.text().contains("expired at"), "{}", a.text());
    let a = post_from([127, 0, 0, 2], addr, "/api/v1/enroll", b"{\"Token\": 1}");
    assert_eq!(a.status, 400, "{}", a.text());
    // The slave kept working meanwhile.
    let config = json!({"Name": "fra1", "Password": secret}).to_string();
    assert_eq!(post(addr, "/config/", config.as_bytes()).status, 200);

    // Revoked: refused from its next request on.
    let (code, _, err) = run(&dir.0, Path::new(BIN), &["revoke", "fra1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(post(addr, "/config/", config.as_bytes()).status, 401);
    drop(slave);

    // Names the operator's file has, or enrolled or waiting ones, get no token; a slave of
    // the file is not revoked by the command.
    for (args, why) in [
        (&["slave1"][..], "is in"),
        (&["ams1", "--expires", "1h"][..], ""),
        (&["ams1"][..], "still unused"),
        (&["bad name"][..], "NAME"),
    ] {
        let (code, _, err) = issue(&dir.0, args);
        if why.is_empty() {
            assert_eq!(code, 0, "{args:?}: {err}");
        } else {
            assert_ne!(code, 0, "{args:?}");
            assert!(err.contains(why), "{args:?}: {err}");
        }
    }
    let (code, _, err) = run(&dir.0, Path::new(BIN), &["revoke", "slave1"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not enrolled"), "{err}");
    assert_eq!(
        std::fs::read(dir.path("dt-slaves.json")).unwrap(),
        operators
    );

    // The secret is in no log.
    for log in ["slave.log", "dt-master.log"] {
        let text = std::fs::read_to_string(dir.path(log)).unwrap_or_default();
        assert!(!text.is_empty(), "{log} is empty");
        assert!(!text.contains(&secret), "{log} holds the secret");
    }
    let log = std::fs::read_to_string(dir.path("slave.log")).unwrap();
    assert!(
        log.contains("enrolled at") && log.contains("as slave 'fra1'"),
        "{log}"
    );
}

#[test]
fn a_slave_enrols_over_https() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = Scratch::with_seed_config("enrol-tls");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    dir.write("ca.pem", &ca.pem());
    dir.write("cert.pem", &cert.pem());
    dir.write("key.pem", &key.serialize_pem());
    // The managed file elsewhere than beside the slaves file, as a packaged master keeps it
    // (its config folder is read-only to it).
    std::fs::create_dir_all(dir.path("state")).unwrap();
    let master = Proc::master(
        &dir.0,
        &[
            "-tls-cert=cert.pem",
            "-tls-key=key.pem",
            "-managed=state/enrolled.json",
        ],
    );
    let port = master.addr().port();
    let (code, token, err) = issue(
        &dir.0,
        &[
            "tls1",
            "--tags",
            "secure",
            "--managed",
            "state/enrolled.json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let master_flag = format!("-master=https://localhost:{port}");
    // The token from the environment this time, not the command line.
    let mut cmd = std::process::Command::new(BIN);
    cmd.current_dir(&dir.0)
        .args([
            "slave",
            &master_flag,
            "-ca=ca.pem",
            "-zDebugResults",
            "-interval=1s",
            "-spool=spool",
            "-log=slave.log",
        ])
        .env("DT_ENROLL_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let creds = wait_for(Duration::from_secs(30), || {
        let text = std::fs::read(dir.path("spool/credentials.json")).ok()?;
        serde_json::from_slice::<Value>(&text).ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    let creds = creds.expect("enrolled over HTTPS");
    assert_eq!(creds["Name"], "tls1");
    let managed = std::fs::read_to_string(dir.path("state/enrolled.json")).unwrap();
    assert!(
        managed.contains("\"tls1\"") && managed.contains("\"Used\""),
        "{managed}"
    );
    assert!(!dir.path("dt-slaves.managed.json").exists());
}
