//! Secrets: hashed passwords in dt-slaves.json, the slave's secret from a file or the
//! environment, and no secret in any log.

mod util;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::*;

fn hash(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn hashed_passwords_and_secrets_kept_out_of_ps_and_logs() {
    let dir = Scratch::with_seed_config("secrets");
    let h = hash("Wombat42");
    assert!(h.starts_with("$argon2id$"), "{h}");
    dir.write(
        "dt-slaves.json",
        &format!(r#"{{"Slaves": [{{"Name": "fileslave", "PasswordHash": "{h}"}}, {{"Name": "envslave", "PasswordHash": "{h}"}}]}}"#),
    );
    let master = Proc::master(&dir.0, &["-loglevel=debug"]);
    let addr = master.addr();
    assert_eq!(
        post(
            addr,
            "/config/",
            br#"{"Name":"fileslave","Password":"Wombat42"}"#
        )
        .status,
        200
    );
    assert_eq!(
        post(
            addr,
            "/config/",
            br#"{"Name":"fileslave","Password":"Wombat43"}"#
        )
        .status,
        401
    );

    dir.write("secret.txt", "Wombat42\n");
    let port = format!("-master-port={}", addr.port());
    let common = [
        "slave",
        "-master=127.0.0.1",
        &port,
        "-zDebugResults",
        "-interval=1s",
        "-loglevel=debug",
    ];
    let mut args = common.to_vec();
    args.extend([
        "-name=fileslave",
        "-passwd-file=secret.txt",
        "-log=file.log",
    ]);
    let _file_slave = Proc::spawn(&dir.0, &args);
    let env_slave = Command::new(BIN)
        .args(common)
        .args(["-name=envslave", "-log=env.log"])
        .env("DT_PASSWD", "Wombat42")
        .current_dir(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _env_slave = Proc {
        child: env_slave,
        addr: None,
    };
    wait_for(Duration::from_secs(20), || {
        let a = results(addr, "slave=fileslave").len();
        let b = results(addr, "slave=envslave").len();
        (a >= 2 && b >= 2).then_some(())
    })
    .expect("both slaves log in with their hashed passwords");
    for log in ["dt-master.log", "file.log", "env.log"] {
        let text = std::fs::read_to_string(dir.path(log)).unwrap();
        assert!(!text.is_empty());
        assert!(!text.contains("Wombat4"), "{log} shows a secret:\n{text}");
    }
}
