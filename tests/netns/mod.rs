//! A small harness that builds hosts and routers out of network namespaces and veth
//! pairs, runs the `trace` example inside one, and deletes everything on drop.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Namespaces of one test; all are deleted on drop (also when the test panics).
pub struct Lab {
    prefix: String,
    names: Vec<String>,
}

/// The sysctls every node gets; `ratelimit: false` keeps the kernel's ICMP rate limits.
fn sysctls(ratelimit: bool) -> Vec<&'static str> {
    let mut v = vec![
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.all.accept_dad=0",
    ];
    if !ratelimit {
        // Per-destination limits, and the per-namespace budget (1000/s, burst 50) that
        // a hundred concurrent traces would otherwise exhaust.
        v.extend([
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=1000000",
            "net.ipv4.icmp_msgs_burst=1000000",
        ]);
    }
    v
}

/// Runs a command; panics with its stderr when it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root: network namespaces need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is missing".into());
    }
    None
}

/// Returns true when the test must be skipped; under CI=true a skip is a failure.
pub fn must_skip() -> bool {
    let Some(reason) = skip_reason() else {
        return false;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("netns test cannot run under CI=true: {reason}");
    }
    eprintln!("skipping netns test: {reason}");
    true
}

impl Lab {
    /// A new, empty lab whose namespace names are unique to this process and test.
    pub fn new(tag: &str) -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        if N.load(Ordering::Relaxed) == 0 {
            remove_stale();
        }
        let n = N.fetch_add(1, Ordering::Relaxed);
        Lab {
            prefix: format!("dtt{}{tag}{n}", std::process::id()),
            names: Vec::new(),
        }
    }

    /// The full namespace name of node `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Creates node `name` (loopback up, forwarding on, DAD off).
    pub fn node(&mut self, name: &str, ratelimit: bool) -> String {
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns]);
        self.names.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let mut args = vec!["ip", "netns", "exec", &ns, "sysctl", "-qw"];
        let s = sysctls(ratelimit);
        args.extend(s.iter().copied());
        run(&args);
        ns
    }

    /// Runs `ip` commands (one per line) inside node `name`; a line starting with `-6 `
    /// goes to an IPv6 batch (`ip -batch` takes no per-line options).
    pub fn ip(&self, name: &str, cmds: &str) {
        let (v6, v4): (Vec<&str>, Vec<&str>) = cmds.lines().partition(|l| l.starts_with("-6 "));
        let v6: Vec<&str> = v6.iter().map(|l| &l[3..]).collect();
        for (family, lines) in [(None, v4), (Some("-6"), v6)] {
            if lines.is_empty() {
                continue;
            }
            let batch = lines.join("\n") + "\n";
            self.ip_batch(name, family, &batch);
        }
    }

    fn ip_batch(&self, name: &str, family: Option<&str>, cmds: &str) {
        let ns = self.ns(name);
        let mut child = Command::new("ip")
            .args(family)
            .args(["-n", &ns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cmds.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ip -batch in {name} failed: {}\n{cmds}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Connects `a` (interface `ia`) and `b` (interface `ib`) with a veth pair.
    pub fn link(&self, a: &str, ia: &str, b: &str, ib: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        run(&[
            "ip", "-n", &na, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", &nb,
        ]);
        run(&["ip", "-n", &na, "link", "set", ia, "up"]);
        run(&["ip", "-n", &nb, "link", "set", ib, "up"]);
    }

    /// Connects node `name` (interface `inner`) to the root namespace with a veth pair, both
    /// ends up; returns the root end's name, unique to this process. The pair goes when the
    /// node is deleted.
    pub fn link_to_root(&self, name: &str, inner: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        // Interface names have at most 15 bytes: "dtr" + a pid of up to 7 digits + "x" + n.
        let root = format!(
            "dtr{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ns = self.ns(name);
        run(&[
            "ip", "link", "add", &root, "type", "veth", "peer", "name", inner, "netns", &ns,
        ]);
        run(&["ip", "link", "set", &root, "up"]);
        run(&["ip", "-n", &ns, "link", "set", inner, "up"]);
        root
    }

    /// Connects node `name` (interface `up0`) to the root namespace on a /30 of 198.19.0.0/16
    /// (benchmark testing, never routed) of its own per process and call; returns the root
    /// side's address, which processes in the root namespace listen on for the node.
    pub fn uplink(&self, name: &str) -> std::net::Ipv4Addr {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root_end = self.link_to_root(name, "up0");
        let index =
            (std::process::id() % 4096) * 4 + (N.fetch_add(1, Ordering::Relaxed) % 4) as u32;
        let base = u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0)) + index * 4;
        let (outer, inner) = (
            std::net::Ipv4Addr::from(base + 1),
            std::net::Ipv4Addr::from(base + 2),
        );
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{outer}/30"),
            "dev",
            &root_end,
        ]);
        self.ip(name, &format!("addr add {inner}/30 dev up0\n"));
        outer
    }

    /// Runs a command inside node `name`; panics with its stderr when it fails, else gives
    /// its stdout.
    pub fn exec(&self, name: &str, args: &[&str]) -> String {
        let ns = self.ns(name);
        let mut all = vec!["ip", "netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Makes router `name` drop one in `one_in` of the packets it forwards, at random, each
    /// way (nftables; the kernel has no netem here).
    pub fn lossy(&self, name: &str, one_in: u32) {
        let drop = format!("add rule inet loss lossy numgen random mod {one_in} == 0 drop");
        for rule in [
            "add table inet loss",
            "add chain inet loss lossy { type filter hook forward priority 0; }",
            drop.as_str(),
        ] {
            self.exec(name, &["nft", rule]);
        }
    }

    /// Makes node `name` silent: its own packets (ICMP errors included) are routed into a
    /// blackhole, while forwarding still works.
    pub fn silence(&self, name: &str) {
        self.ip(
            name,
            "rule add iif lo table 100\nroute add blackhole default table 100\n\
             -6 rule add iif lo table 100\n-6 route add blackhole default table 100\n",
        );
    }

    /// Runs the `trace` example in node `name`; returns the parsed JSON lines.
    pub fn trace(&self, name: &str, args: &[&str]) -> Vec<serde_json::Value> {
        let (out, _) = self.trace_raw(name, &[], args);
        out.lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    /// Runs the `trace` example in node `name` behind `prefix` (e.g. a privilege drop);
    /// returns stdout and stderr.
    pub fn trace_raw(&self, name: &str, prefix: &[&str], args: &[&str]) -> (String, String) {
        let ns = self.ns(name);
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(prefix)
            .arg(example("trace"))
            .arg("--json")
            .args(args)
            .output()
            .expect("spawn trace example");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "trace {args:?} failed: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Deletes namespaces left by test runs that were killed before their guards ran
/// (`dtt<pid>...` whose process is gone).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("dtt") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Path of a built example, built first: `cargo test --test trace_netns` alone does not
/// build examples, and a stale one would test old code.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--example", name, "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .status()
            .expect("spawn cargo");
        assert!(status.success(), "building example {name} failed");
    });
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("examples").join(name)
}

/// The hop addresses of one JSON trace (`None` for a silent hop).
pub fn hops(trace: &serde_json::Value) -> Vec<Option<String>> {
    trace["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["addr"].as_str().map(str::to_string))
        .collect()
}

/// A linear path `h - r1 - ... - rN - t`, dual stack.
///
/// Link `i` joins node `i` and node `i+1` (node 0 is `h`, node N+1 is `t`) with the
/// networks 10.99.i.0/24 and fd00:99:i::/64; the node nearer `h` is `.1`/`::1`. A router
/// answers from the interface towards `h`, so hop `k` is `10.99.(k-1).2`.
pub struct Chain {
    /// Routers between the host and the target.
    pub routers: usize,
}

impl Chain {
    /// Builds the chain; `silent` routers (1-based) never answer; a second target `q`
    /// hangs off the last router at 10.99.200.2 / fd00:99:c8::2 and never answers.
    pub fn build(lab: &mut Lab, routers: usize, silent: &[usize], ratelimit: bool) -> Chain {
        let name = |i: usize| match i {
            0 => "h".to_string(),
            i if i == routers + 1 => "t".to_string(),
            i => format!("r{i}"),
        };
        for i in 0..=routers + 1 {
            lab.node(&name(i), ratelimit);
        }
        lab.node("q", ratelimit);
        for i in 0..=routers {
            let (a, b) = (name(i), name(i + 1));
            lab.link(&a, "right", &b, "left");
            lab.ip(&a, &format!("addr add 10.99.{i}.1/24 dev right\naddr add fd00:99:{i:x}::1/64 dev right nodad\n"));
            lab.ip(&b, &format!("addr add 10.99.{i}.2/24 dev left\naddr add fd00:99:{i:x}::2/64 dev left nodad\n"));
        }
        let last = name(routers);
        lab.link(&last, "side", "q", "left");
        lab.ip(
            &last,
            "addr add 10.99.200.1/24 dev side\naddr add fd00:99:c8::1/64 dev side nodad\n",
        );
        lab.ip(
            "q",
            "addr add 10.99.200.2/24 dev left\naddr add fd00:99:c8::2/64 dev left nodad\n\
                     route add default via 10.99.200.1\n-6 route add default via fd00:99:c8::1\n",
        );
        lab.silence("q");
        for i in 0..=routers + 1 {
            let mut cmds = String::new();
            if i <= routers {
                // Towards the target.
                cmds += &format!(
                    "route add default via 10.99.{i}.2\n-6 route add default via fd00:99:{i:x}::2\n"
                );
            } else {
                cmds += &format!(
                    "route add default via 10.99.{}.1\n-6 route add default via fd00:99:{:x}::1\n",
                    i - 1,
                    i - 1
                );
            }
            if (2..=routers).contains(&i) {
                // Back towards the host.
                let p = i - 1;
                cmds += &format!(
                    "route add 10.99.0.0/24 via 10.99.{p}.1\n-6 route add fd00:99:0::/64 via fd00:99:{p:x}::1\n"
                );
            }
            lab.ip(&name(i), &cmds);
        }
        for &s in silent {
            lab.silence(&name(s));
        }
        Chain { routers }
    }

    /// The address hop `k` answers from.
    pub fn hop(&self, k: usize, v6: bool) -> String {
        let s = if v6 {
            format!("fd00:99:{:x}::2", k - 1)
        } else {
            format!("10.99.{}.2", k - 1)
        };
        // Parsed and printed so the text matches what the tracer prints (fd00:99::2).
        s.parse::<std::net::IpAddr>().unwrap().to_string()
    }

    /// The target's address.
    pub fn target(&self, v6: bool) -> String {
        self.hop(self.routers + 1, v6)
    }
}
