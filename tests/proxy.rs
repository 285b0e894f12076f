//! A master behind a load balancer (`-trusted-proxy`): the client is the address the
//! balancer's `X-Forwarded-For` names, for the read gate and for a slave's recorded address;
//! the header from anyone else is ignored, so no client can pose as another.

mod util;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use util::*;

/// Sends `method path` with `body` and an `X-Forwarded-For` header (when given); the status.
fn send(addr: SocketAddr, method: &str, path: &str, forwarded: Option<&str>, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let xff = forwarded.map_or(String::new(), |f| format!("X-Forwarded-For: {f}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{xff}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    parse_answer(&answer).expect("an HTTP answer").status
}

fn read_slaves(addr: SocketAddr, forwarded: Option<&str>) -> u16 {
    send(addr, "GET", "/api/v1/slaves", forwarded, "")
}

#[test]
fn a_trusted_proxy_names_the_client_and_nobody_else_can() {
    // No users file: reads answer loopback clients only.
    let dir = Scratch::with_seed_config("proxy");
    let behind = Proc::master(&dir.0, &["-trusted-proxy", "127.0.0.0/8,10.9.9.9"]);
    let addr = behind.addr();
    // The balancer's own requests (no header) are from loopback.
    assert_eq!(read_slaves(addr, None), 200);
    // A client on the internet, through the balancer, is not on loopback.
    assert_eq!(read_slaves(addr, Some("203.0.113.9")), 403);
    // Read from the right, past the trusted hops.
    assert_eq!(read_slaves(addr, Some("198.51.100.7, 127.0.0.1")), 403);
    assert_eq!(
        read_slaves(addr, Some("198.51.100.7, 10.9.9.9, 127.0.0.2")),
        403
    );
    // A client that says it is on loopback, behind the balancer, is believed only as far as
    // the balancer vouches: the balancer appends the address it saw.
    assert_eq!(read_slaves(addr, Some("127.0.0.1, 203.0.113.9")), 403);
    // A header the balancer would never write: the balancer itself is the client.
    assert_eq!(read_slaves(addr, Some("not-an-address")), 200);

    // The slave's address as the master records it is the one the balancer names.
    let config = r#"{"Name":"slave1","Password":"1234"}"#;
    assert_eq!(
        send(addr, "POST", "/config/", Some("192.0.2.44"), config),
        200
    );
    // (The balancer's own read, from loopback; the address is written after the answer.)
    let s1 = wait_for(Duration::from_secs(10), || {
        let slaves = get(addr, "/api/v1/slaves").json();
        slaves["slaves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "slave1" && !s["remote_addr"].is_null())
            .cloned()
    })
    .expect("slave1's address is recorded");
    assert_eq!(s1["remote_addr"], "192.0.2.44", "{s1}");

    // A master that trusts no proxy ignores the header: a loopback client stays one.
    let plain = Proc::master(&dir.0, &["-db", "other.db"]);
    assert_eq!(read_slaves(plain.addr(), Some("203.0.113.9")), 200);
}
