//! `dist-traceroute trace`: human and JSON output of a real trace of loopback (needs root).

mod util;
use std::path::Path;
use util::*;

#[test]
fn trace_prints_like_traceroute_and_as_json() {
    if !have_root("a real trace") {
        return;
    }
    let dir = Scratch::new("tracecli");
    let (code, out, err) = run(
        &dir.0,
        Path::new(BIN),
        &["trace", "-n", "-q", "2", "127.0.0.1"],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("traceroute to 127.0.0.1 (127.0.0.1), 30 hops max, udp probes"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(" 1  127.0.0.1  ") && lines[1].matches(" ms").count() == 2,
        "{out}"
    );

    let (code, out, err) = run(
        &dir.0,
        Path::new(BIN),
        &["trace", "--json", "-P", "icmp", "-6", "-q1", "::1"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["Success"].as_bool(), v["Protocol"].as_str()),
        (Some(true), Some("icmp"))
    );
    assert_eq!(v["Hops"][0]["IP"], "::1");
    assert_eq!(v["Hops"][0]["Address"], serde_json::json!([0, 0, 0, 0]));
    assert!(v.get("Creds").is_none());

    let (code, _, err) = run(&dir.0, Path::new(BIN), &["trace", "no-such-host.invalid"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot resolve \"no-such-host.invalid\""),
        "{err}"
    );
    let (code, _, err) = run(
        &dir.0,
        Path::new(BIN),
        &["trace", "-P", "sctp", "127.0.0.1"],
    );
    assert_eq!(code, 2, "{err}");
}
