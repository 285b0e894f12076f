//! The load-balancer example, run: HAProxy on `config/haproxy.cfg` (only its addresses
//! changed) in front of two masters on one PostgreSQL database. Results posted through it
//! reach both masters and are all stored; reads through it are judged by the client's
//! address, not the balancer's; with one master killed, requests go on through the other.

mod util;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::*;

fn haproxy_bin() -> String {
    for candidate in ["/usr/sbin/haproxy", "/usr/bin/haproxy"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("haproxy is not installed (apt-get install haproxy; ./scripts/test does)");
}

/// config/haproxy.cfg with its listen address and servers replaced.
fn balancer_config(listen: SocketAddr, masters: &[SocketAddr]) -> String {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/haproxy.cfg"),
    )
    .unwrap();
    let mut out = String::new();
    let mut servers = masters.iter().enumerate();
    for line in example.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind {listen}\n"));
        } else if t.starts_with("server ") {
            let (i, addr) = servers.next().expect("two servers in the example");
            out.push_str(&format!(
                "    server master{} {addr} check inter 200ms\n",
                i + 1
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        servers.next().is_none(),
        "the example has a server per master"
    );
    out
}

fn result(id: &str) -> Value {
    json!({
        "Creds": {"Name": "slave1", "Password": "1234"},
        "ID": id,
        "DateTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        "Target": {"Name": "Google", "Address": "www.google.at"},
        "TargetID": "76d96640-d357-47b3-ba50-5248a7604bc9",
        "Success": true, "HopCount": 1,
        "Hops": [{"Success": true, "Address": [192, 0, 2, 1], "Host": "", "N": 56,
                  "ElapsedTime": 1000000, "TTL": 1, "Kind": "reached"}],
        "Protocol": "udp", "Flow": 0,
    })
}

/// How many results a master took, from its own `/metrics` (read from loopback, directly).
fn received(addr: SocketAddr) -> u64 {
    let text = get(addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix("dt_results_received_total "))
        .unwrap_or_else(|| panic!("no dt_results_received_total in {text}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

#[test]
fn haproxy_example_balances_two_masters_on_one_database() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/haproxy.cfg");
    let check = Command::new(haproxy_bin())
        .args(["-c", "-f"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the example does not load: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let pg = util::pg::server();
    let db = pg.create_db("balancer");
    let url = format!("postgres://{}@127.0.0.1:{}/{db}", util::pg::USER, pg.port);
    let start = |name: &str| {
        let dir = Scratch::with_seed_config(name);
        dir.write("db-password", &pg.password);
        let p = Proc::master(
            &dir.0,
            &[
                "-db",
                &url,
                "-db-passwd-file",
                "db-password",
                "-trusted-proxy",
                "127.0.0.1",
            ],
        );
        (dir, p)
    };
    let (_d1, mut m1) = start("lb-1");
    let (_d2, m2) = start("lb-2");
    let listen = free_addr();
    let dir = Scratch::new("haproxy");
    dir.write(
        "haproxy.cfg",
        &balancer_config(listen, &[m1.addr(), m2.addr()]),
    );
    let mut haproxy = Proc {
        child: Command::new(haproxy_bin())
            .args(["-db", "-f"])
            .arg(dir.path("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        addr: None,
    };
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(listen).ok()
    });
    assert!(up.is_some(), "haproxy did not listen on {listen}");

    // Results through the balancer: all stored, and both masters took some.
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = uuid::Uuid::new_v4().to_string();
        let a = post(
            listen,
            "/api/v1/results",
            result(&id).to_string().as_bytes(),
        );
        assert_eq!(a.status, 200, "{}", a.text());
        ids.push(id);
    }
    let (r1, r2) = (received(m1.addr()), received(m2.addr()));
    assert_eq!(r1 + r2, 20);
    assert!(r1 > 0 && r2 > 0, "one master took everything: {r1} / {r2}");
    // Reads through the balancer come from this (loopback) client: allowed without a login,
    // judged by the address the balancer forwards, not its own.
    let listed = results(listen, "slave=slave1");
    assert_eq!(listed.len(), 20);

    // One master dies: the balancer sends everything to the other, without a failed request.
    m1.kill();
    for _ in 0..20 {
        let id = uuid::Uuid::new_v4().to_string();
        let a = post(
            listen,
            "/api/v1/results",
            result(&id).to_string().as_bytes(),
        );
        assert_eq!(a.status, 200, "{}", a.text());
        ids.push(id);
    }
    let listed: Vec<String> = results(listen, "slave=slave1")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), 40);
    for id in &ids {
        assert!(listed.contains(id), "{id} missing");
    }
    drop(m2);
    haproxy.kill();
}
