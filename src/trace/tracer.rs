//! The shared tracer: opens the sockets once, runs one receive thread per raw socket, and
//! routes each reply to the trace whose flow identity it quotes.
//!
//! Concurrent traces are told apart by their flow identity (protocol, destination, source
//! port or ICMP id, destination port). Two traces with the same identity would be
//! indistinguishable on the wire, so the second waits for the first to finish. Replies to
//! other programs' probes carry other identities (or sequences we never sent) and are
//! dropped.

use super::engine::{self, Network, Response, Seq, Ttl};
use super::pace::{DEFAULT_PROBE_RATE, Pacer};
use super::socket::{self, DgramSocket, RawSocket, Transport};
use super::wire::probe::{self, ProbeSpec};
use super::wire::reply::{self, ProbeId};
use super::{Error, Family, Protocol, Trace, TraceOptions};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// First source port / ICMP id; flows count up from here. Linux hands out ephemeral ports
/// from 32768..=60999, so ours never collide with a local client's.
pub const IDENT_BASE: u16 = 61000;
/// How many flows fit above [`IDENT_BASE`]; larger flow numbers wrap around.
pub const FLOWS: u16 = u16::MAX - IDENT_BASE + 1;
/// Default destination port of UDP probes.
pub const UDP_PORT: u16 = 33434;
/// Default destination port of TCP probes.
pub const TCP_PORT: u16 = 80;

/// How the tracer sends probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Raw sockets (root or CAP_NET_RAW): every protocol, shared receive sockets.
    Raw,
    /// Connected UDP sockets with `IP_RECVERR`: UDP only, no privilege needed.
    Unprivileged,
}

/// The flow identity a reply is routed by (a [`ProbeId`] without the sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    protocol: Protocol,
    dst: IpAddr,
    ident: u16,
    dst_port: u16,
}

impl From<&ProbeId> for FlowKey {
    fn from(p: &ProbeId) -> FlowKey {
        FlowKey {
            protocol: p.protocol,
            dst: p.dst,
            ident: p.ident,
            dst_port: p.dst_port,
        }
    }
}

/// The raw sockets of one address family.
struct RawFamily {
    icmp: Arc<Inbox>,
    /// Send only. IPv4: a raw UDP socket. IPv6: an `IPPROTO_RAW` socket that sends every
    /// protocol's probes with a header we write, flow label included.
    send: RawSocket,
    /// Opened on the first TCP trace: a raw TCP socket copies every segment the host receives.
    tcp: Mutex<Option<Arc<Inbox>>>,
}

/// A receive socket and how far its thread has got with what the kernel queued.
struct Inbox {
    sock: RawSocket,
    /// True while the thread holds a packet it took off the socket and has not routed yet.
    busy: AtomicBool,
    /// Arrival time of the last packet routed, in nanoseconds after [`Shared::epoch`].
    routed_upto: AtomicU64,
}

impl Inbox {
    fn new(sock: RawSocket) -> Inbox {
        Inbox {
            sock,
            busy: AtomicBool::new(false),
            routed_upto: AtomicU64::new(0),
        }
    }

    /// True when every packet that arrived before `t` has been routed to its trace.
    fn caught_up(&self, epoch: Instant, t: Instant) -> bool {
        if self.routed_upto.load(Ordering::SeqCst) >= nanos_since(epoch, t) {
            return true;
        }
        // An empty queue, read before the busy flag: a packet taken off the queue was
        // taken after the thread raised the flag, so a lowered flag means it was routed.
        let queued = self.sock.readable(Duration::ZERO).unwrap_or(false);
        !queued && !self.busy.load(Ordering::SeqCst)
    }
}

fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// The longest a trace waits for the receive threads to catch up before it ends; only a
/// starved machine comes near it.
const SETTLE_MAX: Duration = Duration::from_millis(100);

struct Shared {
    /// The zero of every [`Inbox::routed_upto`].
    epoch: Instant,
    routes: Mutex<HashMap<FlowKey, Sender<Response>>>,
    busy: Mutex<HashSet<FlowKey>>,
    freed: Condvar,
    stop: AtomicBool,
    /// Packets that parsed but answered no running trace, and packets that did not parse.
    unmatched: AtomicU64,
    malformed: AtomicU64,
}

/// Runs traces; one per process is enough, and it is shared by all threads.
pub struct Tracer {
    shared: Arc<Shared>,
    mode: Mode,
    /// The probe-rate cap shared by every trace of this tracer.
    pacer: Pacer,
    v4: Option<RawFamily>,
    v6: Option<RawFamily>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data that is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tracer {
    /// Opens raw sockets for both families (or the unprivileged fallback) and starts the
    /// receive threads.
    pub fn new() -> Result<Tracer, Error> {
        Tracer::open(None)
    }

    /// Like [`Tracer::new`], but opens the sockets of one address family only: a one-shot
    /// trace spends no start-up time on the family it does not use.
    pub fn for_family(family: Family) -> Result<Tracer, Error> {
        Tracer::open(Some(family))
    }

    fn open(family: Option<Family>) -> Result<Tracer, Error> {
        match Tracer::with_mode_for(Mode::Raw, family) {
            Err(e) if socket::is_permission(&e) => {
                log::info!("raw sockets refused ({e}); falling back to unprivileged UDP");
                Tracer::with_mode_for(Mode::Unprivileged, family).map_err(|e| match e {
                    Error::Socket { source, .. } => Error::NotPermitted { source },
                    other => other,
                })
            }
            other => other,
        }
    }

    /// Opens a tracer in the given mode, without falling back.
    pub fn with_mode(mode: Mode) -> Result<Tracer, Error> {
        Tracer::with_mode_for(mode, None)
    }

    fn with_mode_for(mode: Mode, family: Option<Family>) -> Result<Tracer, Error> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            routes: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            freed: Condvar::new(),
            stop: AtomicBool::new(false),
            unmatched: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        });
        let mut t = Tracer {
            shared,
            mode,
            pacer: Pacer::new(DEFAULT_PROBE_RATE),
            v4: None,
            v6: None,
        };
        if mode == Mode::Unprivileged {
            // Prove the fallback works now rather than on the first trace.
            let loopback = match family {
                Some(Family::V6) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                _ => IpAddr::from([127, 0, 0, 1]),
            };
            DgramSocket::open(loopback, 0, UDP_PORT)?;
            return Ok(t);
        }
        match family {
            Some(Family::V4) => t.v4 = Some(t.open_family(false)?),
            Some(Family::V6) => t.v6 = Some(t.open_family(true)?),
            None => {
                t.v4 = Some(t.open_family(false)?);
                // A host without IPv6 still traces IPv4; trace() reports the missing family.
                match t.open_family(true) {
                    Ok(f) => t.v6 = Some(f),
                    Err(e) => log::warn!("IPv6 raw sockets unavailable: {e}"),
                }
            }
        }
        Ok(t)
    }

    fn open_family(&self, v6: bool) -> Result<RawFamily, Error> {
        let icmp = Arc::new(Inbox::new(RawSocket::open(v6, Transport::Icmp, true)?));
        let send = if v6 {
            RawSocket::open(v6, Transport::IpHeader, false)?
        } else {
            RawSocket::open(v6, Transport::Udp, false)?
        };
        self.spawn_receiver(icmp.clone(), v6, Transport::Icmp)?;
        Ok(RawFamily {
            icmp,
            send,
            tcp: Mutex::new(None),
        })
    }

    fn spawn_receiver(&self, sock: Arc<Inbox>, v6: bool, t: Transport) -> Result<(), Error> {
        let shared = self.shared.clone();
        let name = format!("trace-rx-{}-{:?}", if v6 { 6 } else { 4 }, t).to_lowercase();
        thread::Builder::new()
            .name(name)
            .spawn(move || receive_loop(&shared, &sock, v6, t))
            .map(drop)
            .map_err(|source| Error::Socket {
                op: "spawn receive thread",
                source,
            })
    }

    /// How probes are sent, for the log.
    pub fn mode(&self) -> String {
        match self.mode {
            Mode::Raw => "raw sockets".into(),
            Mode::Unprivileged => "unprivileged UDP (IP_RECVERR)".into(),
        }
    }

    /// Caps the probes all traces of this tracer send together, in probes per second
    /// (0: no cap; the default is [`DEFAULT_PROBE_RATE`]). A probe over the cap waits
    /// for its slot; bursts of a tenth of a second's worth (at least 32) leave at once.
    pub fn set_probe_rate(&self, per_second: u32) {
        self.pacer.set(per_second);
    }

    /// The probe-rate cap in probes per second (0: none).
    pub fn probe_rate(&self) -> u32 {
        self.pacer.rate()
    }

    /// Counts of received packets that matched no running trace and that did not parse.
    pub fn ignored(&self) -> (u64, u64) {
        (
            self.shared.unmatched.load(Ordering::Relaxed),
            self.shared.malformed.load(Ordering::Relaxed),
        )
    }

    /// Traces the path to `dest`; blocks until done. Safe to call from many threads.
    pub fn trace(&self, dest: IpAddr, opts: &TraceOptions) -> Result<Trace, Error> {
        engine::validate(opts)?;
        let started = SystemTime::now();
        let t0 = Instant::now();
        let dst_port = match opts.protocol {
            Protocol::Udp => opts.port.unwrap_or(UDP_PORT),
            Protocol::Tcp => opts.port.unwrap_or(TCP_PORT),
            Protocol::Icmp => 0,
        };
        let ident = IDENT_BASE + opts.flow % FLOWS;
        let key = FlowKey {
            protocol: opts.protocol,
            dst: dest,
            ident,
            dst_port,
        };
        let _busy = self.claim(key);
        let src = socket::source_for(dest)?;
        // A random start makes it unlikely that another process tracing the same flow at
        // the same moment uses the same sequence numbers.
        let first_seq = fastrand::u16(1..);
        let outcome = match self.mode {
            Mode::Raw => {
                let sock = self.sockets(dest, opts.protocol)?;
                let (tx, rx) = mpsc::channel();
                let _route = Route::add(&self.shared, key, tx);
                let spec = ProbeSpec {
                    protocol: opts.protocol,
                    src,
                    dst: dest,
                    ident,
                    dst_port,
                    seq: 0,
                };
                let mut net = RawNet {
                    shared: &self.shared,
                    sock: &sock,
                    pacer: &self.pacer,
                    spec,
                    rx,
                    buf: Vec::with_capacity(64),
                };
                engine::run(&mut net, opts, first_seq)?
            }
            Mode::Unprivileged => {
                if opts.protocol != Protocol::Udp {
                    return Err(Error::Unsupported(format!(
                        "{} probes need raw sockets (root or CAP_NET_RAW); unprivileged mode sends UDP only",
                        opts.protocol
                    )));
                }
                let sock = DgramSocket::open(dest, ident, dst_port)?;
                let mut net = DgramNet {
                    sock,
                    dst: dest,
                    pacer: &self.pacer,
                };
                engine::run(&mut net, opts, first_seq)?
            }
        };
        Ok(Trace {
            destination: dest,
            protocol: opts.protocol,
            flow: opts.flow,
            source: Some(src),
            started,
            duration: t0.elapsed(),
            reached: outcome.reached,
            hops: outcome.hops,
        })
    }

    /// Waits until no other trace uses this flow identity, then holds it.
    fn claim(&self, key: FlowKey) -> Claim<'_> {
        let mut busy = lock(&self.shared.busy);
        while busy.contains(&key) {
            busy = self
                .shared
                .freed
                .wait(busy)
                .unwrap_or_else(|e| e.into_inner());
        }
        busy.insert(key);
        Claim {
            shared: &self.shared,
            key,
        }
    }

    fn sockets(&self, dest: IpAddr, p: Protocol) -> Result<Sockets<'_>, Error> {
        let v6 = dest.is_ipv6();
        let fam = if v6 {
            self.v6.as_ref()
        } else {
            self.v4.as_ref()
        };
        let fam = fam.ok_or_else(|| {
            Error::Unsupported(format!(
                "no raw sockets for {}",
                if v6 { "IPv6" } else { "IPv4" }
            ))
        })?;
        // Replies come in on the ICMP socket (time exceeded, unreachable, echo reply) and,
        // for TCP probes, on the TCP socket (SYN-ACK, RST).
        let mut inboxes = vec![fam.icmp.clone()];
        if p == Protocol::Tcp {
            let mut tcp = lock(&fam.tcp);
            if tcp.is_none() {
                let s = Arc::new(Inbox::new(RawSocket::open(v6, Transport::Tcp, true)?));
                self.spawn_receiver(s.clone(), v6, Transport::Tcp)?;
                *tcp = Some(s);
            }
            inboxes.push(tcp.as_ref().expect("just set").clone());
        }
        // IPv6 probes all leave through the header-writing socket, IPv4 UDP probes through
        // the raw UDP one; IPv4 ICMP and TCP probes through the socket their replies use.
        let send = (v6 || p == Protocol::Udp).then_some(&fam.send);
        Ok(Sockets { send, inboxes })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Receive threads notice within one poll interval and close their sockets.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The sockets one trace uses.
struct Sockets<'a> {
    /// The socket probes leave through; `None`: the last of `inboxes` (a raw ICMP or TCP
    /// socket both sends and receives).
    send: Option<&'a RawSocket>,
    /// Every receive socket a reply to this trace can arrive on.
    inboxes: Vec<Arc<Inbox>>,
}

impl Sockets<'_> {
    fn send(&self) -> &RawSocket {
        match self.send {
            Some(s) => s,
            None => &self.inboxes.last().expect("at least the ICMP inbox").sock,
        }
    }
}

/// Holds a flow identity for one trace; frees it on drop (also on error or panic).
struct Claim<'a> {
    shared: &'a Shared,
    key: FlowKey,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.shared.busy).remove(&self.key);
        self.shared.freed.notify_all();
    }
}

/// Routes replies of one flow to one trace while it runs.
struct Route<'a> {
    shared: &'a Shared,
    key: FlowKey,
}

impl<'a> Route<'a> {
    fn add(shared: &'a Shared, key: FlowKey, tx: Sender<Response>) -> Route<'a> {
        lock(&shared.routes).insert(key, tx);
        Route { shared, key }
    }
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        lock(&self.shared.routes).remove(&self.key);
    }
}

fn receive_loop(shared: &Shared, inbox: &Inbox, v6: bool, t: Transport) {
    let mut buf = vec![0u8; 4096];
    while !shared.stop.load(Ordering::Relaxed) {
        match inbox.sock.readable(socket::RECV_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                log::warn!("trace receive: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        // Raised before the packet leaves the queue, lowered once it is routed: see
        // `Inbox::caught_up`.
        inbox.busy.store(true, Ordering::SeqCst);
        match inbox.sock.recv(&mut buf) {
            Ok(Some(rx)) => {
                route(shared, &buf[..rx.len.min(buf.len())], &rx, v6, t);
                let at = nanos_since(shared.epoch, rx.at);
                inbox.routed_upto.fetch_max(at, Ordering::SeqCst);
            }
            Ok(None) => {}
            Err(e) => log::warn!("trace receive: {e}"),
        }
        inbox.busy.store(false, Ordering::SeqCst);
    }
}

/// Hands one received packet to the trace whose probe it answers, or counts it.
fn route(shared: &Shared, bytes: &[u8], rx: &socket::Received, v6: bool, t: Transport) {
    let parsed = match (rx.from, t) {
        (IpAddr::V4(_), _) if !v6 => reply::parse_ipv4(bytes),
        (IpAddr::V6(from), Transport::Icmp) => reply::parse_icmpv6(from, bytes),
        (IpAddr::V6(from), Transport::Tcp) => reply::parse_tcpv6(from, bytes),
        _ => Ok(None),
    };
    let r = match parsed {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(_) => {
            shared.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let resp = Response {
        seq: Seq(r.probe.seq),
        from: r.from,
        kind: r.kind,
        size: r.size,
        ttl: rx.ttl,
        quoted_ttl: r.quoted_ttl,
        mpls: r.mpls,
        received: rx.at,
    };
    let routes = lock(&shared.routes);
    match routes.get(&FlowKey::from(&r.probe)) {
        // A send fails only when the trace just ended; the reply is then moot.
        Some(tx) => drop(tx.send(resp)),
        None => {
            shared.unmatched.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One raw-mode trace's view of the network.
struct RawNet<'a> {
    shared: &'a Shared,
    sock: &'a Sockets<'a>,
    pacer: &'a Pacer,
    spec: ProbeSpec,
    rx: Receiver<Response>,
    buf: Vec<u8>,
}

impl Network for RawNet<'_> {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn send(&mut self, ttl: Ttl, seq: Seq) -> Result<Instant, Error> {
        let spec = ProbeSpec {
            seq: seq.0,
            ..self.spec
        };
        if spec.dst.is_ipv6() {
            probe::emit_ipv6(&spec, ttl.0, &mut self.buf);
        } else {
            probe::emit(&spec, &mut self.buf);
        }
        self.pacer.wait();
        let at = Instant::now();
        let sock = self.sock.send();
        match (spec.dst, spec.src) {
            (IpAddr::V6(dst), _) => sock.send_packet(&self.buf, dst)?,
            (IpAddr::V4(dst), IpAddr::V4(src)) => sock.send(&self.buf, dst, ttl.0, src)?,
            (IpAddr::V4(_), IpAddr::V6(_)) => {
                return Err(Error::Unsupported(
                    "source and destination families differ".into(),
                ));
            }
        }
        Ok(at)
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Response>, Error> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(r) => Ok(Some(r)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Stopped),
        }
    }

    fn settle(&mut self) {
        let now = Instant::now();
        let limit = now + SETTLE_MAX;
        for inbox in &self.sock.inboxes {
            while !inbox.caught_up(self.shared.epoch, now) && Instant::now() < limit {
                thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

/// One unprivileged trace: its own UDP socket, errors from its error queue.
struct DgramNet<'a> {
    sock: DgramSocket,
    dst: IpAddr,
    pacer: &'a Pacer,
}

impl Network for DgramNet<'_> {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn send(&mut self, ttl: Ttl, seq: Seq) -> Result<Instant, Error> {
        // The payload starts with the sequence; the error queue hands it back. The UDP
        // checksum varies with it, and routers do not hash the checksum.
        let mut payload = [0u8; 2 + probe::TAG.len()];
        payload[..2].copy_from_slice(&seq.0.to_be_bytes());
        payload[2..].copy_from_slice(probe::TAG);
        self.pacer.wait();
        let at = Instant::now();
        self.sock.send(&payload, ttl.0)?;
        Ok(at)
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Response>, Error> {
        while let Some(e) = self.sock.recv_error(deadline)? {
            let (Some(seq), Some(from)) = (e.seq, e.offender) else {
                continue;
            };
            let kind = if self.dst.is_ipv6() {
                reply::classify_v6(e.icmp_type, e.icmp_code, Protocol::Udp)
            } else {
                reply::classify_v4(e.icmp_type, e.icmp_code, Protocol::Udp)
            };
            let Some(kind) = kind else {
                continue;
            };
            // The error queue gives the probe back, not the reply: its size is unknown.
            return Ok(Some(Response {
                seq: Seq(seq),
                from,
                kind,
                size: 0,
                ttl: None,
                quoted_ttl: None,
                mpls: Default::default(),
                received: e.at,
            }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracer_can_be_shared_by_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Tracer>();
    }

    #[test]
    fn flows_map_to_distinct_identities() {
        let ids: HashSet<u16> = (0..FLOWS).map(|f| IDENT_BASE + f % FLOWS).collect();
        assert_eq!(ids.len(), usize::from(FLOWS));
        assert!(ids.iter().all(|&i| i >= IDENT_BASE));
    }
}
