//! The connection layer, and the only file that knows hyper and tokio: accepts connections
//! under a cap (over TLS when configured), reads each request within time and size limits,
//! runs the synchronous handler on a bounded worker pool, and waits out a response's delay
//! and the store's commit of a request's results without holding a worker. A streamed body
//! is made one chunk at a time on the same pool and handed to the connection through a short
//! queue, so a slow reader holds back its producer and costs neither a thread nor memory.
//!
//! Connections are counted per client address (IPv6 by /64), each address under its own
//! limit. At the global cap a newcomer from an address holding few makes room by closing a
//! connection of the address holding the most (the one that waited longest for a request,
//! else its oldest, in a request or not), and a newcomer from an address holding many is
//! refused: a flood sheds itself and never locks a slave out. Out of descriptors, the
//! connection idle longest is closed. Request bodies are read against a memory budget that
//! all of them share (the largest are cut first when it is spent) and a minimum rate, so
//! neither many large bodies nor many slow ones can take the memory or the slots.

use super::routes::{self, App, Body, Chunks, Request, Response};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST,
    HeaderValue, ORIGIN, USER_AGENT,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc};

/// Descriptors kept for everything but client connections (database, log, config reads).
const RESERVED_FDS: u64 = 64;
/// How long a connection closed to make room may take to finish writing a response.
const EVICT_GRACE: Duration = Duration::from_millis(250);
/// How long a new connection at the cap waits for the slot freed for it.
const ADMIT_WAIT: Duration = Duration::from_millis(500);
/// Most new connections waiting for a slot at once; beyond it only an address holding fewer
/// than [`FEW`] may still make room.
const MAX_ADMITTING: usize = 64;
/// Connections an address may hold and still count as holding few.
const FEW: usize = 8;

/// How a new connection gets its slot.
enum Admit {
    /// There was one free.
    Now(tokio::sync::OwnedSemaphorePermit),
    /// A connection was told to close for it: wait for its slot.
    Wait,
}
/// Largest piece of a streamed body handed to the connection at once: the stall limit
/// applies per piece, so a slow but steady reader is never taken for one that stopped.
const STREAM_PIECE: usize = 64 * 1024;
/// Pieces of a streamed body queued ahead of the connection.
const STREAM_QUEUE: usize = 4;

/// The limits every connection and request is held to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed to send a request's headers (also how long an idle keep-alive connection
    /// may wait for its next request).
    pub header_timeout: Duration,
    /// Time allowed to send a request's body; also how long a streamed response waits for a
    /// client that reads none of it before the connection is closed.
    pub body_timeout: Duration,
    /// Largest request body; larger gets 413.
    pub max_body: usize,
    /// Largest request head (start line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Most connections open at once; at the cap a connection of the address holding the
    /// most is closed to make room, or the new one is.
    pub max_connections: usize,
    /// Most connections open at once from one address (IPv6: one /64); trusted proxies are
    /// not limited.
    pub max_connections_per_address: usize,
    /// Memory all bodies being received may take together.
    pub max_body_memory: usize,
    /// Slowest a body may arrive after its first [`BODY_RATE_GRACE`], bytes a second (0: no
    /// limit but the body timeout).
    pub min_body_rate: usize,
    /// Threads running handlers.
    pub workers: usize,
    /// Load balancers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            max_connections_per_address: 256,
            max_body_memory: 64 << 20,
            min_body_rate: 1024,
            workers: 8,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Binds the listening socket; an unspecified IPv6 address also takes IPv4 (dual stack), and
/// falls back to IPv4 alone where the host has no IPv6.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match listen(addr) {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            log::warn!("cannot listen on {addr} ({e}); trying {v4}");
            listen(v4).with_context(|| format!("cannot listen on {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// Connections the kernel may hold for `accept`. std's 128 overflows under a burst of
/// connects (1,000 from one attacker), and a dropped SYN costs a good client a 1 s
/// retransmission; the kernel caps this at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // [::] takes IPv4 too, whatever the system default.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// When to stop serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Never: the process ends some other way.
    Forever,
    /// At SIGTERM or SIGINT: stop accepting, let the requests in flight finish (at most
    /// this long), then return.
    Signal(Duration),
}

/// Serves `listener` until `until` says; over TLS when `tls` is given.
pub fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    until: Until,
) -> anyhow::Result<()> {
    let limits = fit_descriptor_limit(limits);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(limits.workers.max(1))
        .thread_name("http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listening socket non-blocking")?;
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    runtime.block_on(accept_loop(listener, app, Arc::new(limits), tls, until))
}

/// Resolves with the signal's name at the first SIGTERM or SIGINT; never for
/// [`Until::Forever`].
async fn stop_signal(until: Until) -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    if until == Until::Forever {
        return std::future::pending().await;
    }
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Raises the soft descriptor limit to the hard one, and lowers the connection cap to fit under
/// it: a cap above the limit would make `accept` fail instead of the cap doing its work.
fn fit_descriptor_limit(mut limits: Limits) -> Limits {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return limits;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let fit = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    if limits.max_connections > fit {
        log::warn!(
            "-max-connections {} does not fit the descriptor limit {soft}; using {fit}",
            limits.max_connections
        );
        limits.max_connections = fit;
    }
    limits
}

/// One open connection as the eviction queue sees it.
struct Conn {
    id: u64,
    /// Its client's address as limits count it (IPv6: the /64); `None` for a trusted proxy.
    key: Option<IpAddr>,
    /// Told to close to make room already (not picked again).
    evicted: std::sync::atomic::AtomicBool,
    /// Since when it waits for a request head; `None` while a request is served.
    since: Mutex<Option<Instant>>,
    /// Told to close to make room, or because the server stops.
    evict: Notify,
    /// The server stops: finish the response in flight (however long it takes, within the
    /// shutdown's grace), then close.
    stopping: std::sync::atomic::AtomicBool,
    /// Wakes a live stream's feed when the server stops.
    stop: Notify,
}

/// The connections waiting for a request head, oldest first; and every open connection by
/// its client's address.
#[derive(Default)]
struct Waiting {
    next_id: AtomicU64,
    queue: Mutex<BTreeMap<(Instant, u64), Arc<Conn>>>,
    by_addr: Mutex<HashMap<IpAddr, Vec<Arc<Conn>>>>,
}

/// An address as the connection limits count it: IPv6 by /64 (one customer's network).
fn addr_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Waiting {
    fn open(&self, key: Option<IpAddr>) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key,
            evicted: std::sync::atomic::AtomicBool::new(false),
            since: Mutex::new(None),
            evict: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop: Notify::new(),
        });
        if let Some(k) = key {
            lock(&self.by_addr).entry(k).or_default().push(conn.clone());
        }
        self.idle(&conn);
        conn
    }

    /// `conn` has ended.
    fn close(&self, conn: &Conn) {
        self.busy(conn);
        if let Some(k) = conn.key {
            let mut by_addr = lock(&self.by_addr);
            if let Some(list) = by_addr.get_mut(&k) {
                list.retain(|c| c.id != conn.id);
                if list.is_empty() {
                    by_addr.remove(&k);
                }
            }
        }
    }

    /// Connections open from `key` now.
    fn holding(&self, key: IpAddr) -> usize {
        lock(&self.by_addr).get(&key).map_or(0, Vec::len)
    }

    /// At the cap, the connection to close for a newcomer from `key`: one of the address
    /// holding the most, the one that waited longest for a request, else its oldest; it is
    /// marked as told to close. `None` when the newcomer is the one to refuse: its address
    /// already holds at least half of what the address holding the most does (so a flood,
    /// however it is spread, sheds its own newcomers and never the connections of an
    /// address holding few), or only proxies' connections are open.
    fn victim(&self, key: Option<IpAddr>) -> Option<Arc<Conn>> {
        let by_addr = lock(&self.by_addr);
        let live = |list: &Vec<Arc<Conn>>| {
            list.iter()
                .filter(|c| !c.evicted.load(Ordering::Relaxed))
                .count()
        };
        let mine = key.and_then(|k| by_addr.get(&k)).map_or(0, &live);
        let (top, list) = by_addr
            .iter()
            .filter(|(k, _)| Some(**k) != key)
            .map(|(_, list)| (live(list), list))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)?;
        if (mine + 1) * 2 > top {
            return None;
        }
        let candidates = list.iter().filter(|c| !c.evicted.load(Ordering::Relaxed));
        let idle = candidates
            .clone()
            .filter_map(|c| lock(&c.since).map(|t| (t, c)))
            .min_by_key(|(t, _)| *t)
            .map(|(_, c)| c.clone());
        let chosen = idle.or_else(|| candidates.clone().next().cloned())?;
        chosen.evicted.store(true, Ordering::Relaxed);
        Some(chosen)
    }

    /// `conn` waits for its next request from now on.
    fn idle(&self, conn: &Arc<Conn>) {
        let mut queue = lock(&self.queue);
        let mut since = lock(&conn.since);
        if let Some(t) = since.take() {
            queue.remove(&(t, conn.id));
        }
        let now = Instant::now();
        *since = Some(now);
        queue.insert((now, conn.id), conn.clone());
    }

    /// `conn` is serving a request, or closed: not a candidate for eviction.
    fn busy(&self, conn: &Conn) {
        let mut queue = lock(&self.queue);
        if let Some(t) = lock(&conn.since).take() {
            queue.remove(&(t, conn.id));
        }
    }

    /// Tells the connection that has waited longest to close; false when none waits.
    fn evict_oldest(&self) -> bool {
        let mut queue = lock(&self.queue);
        let Some((_, conn)) = queue.pop_first() else {
            return false;
        };
        *lock(&conn.since) = None;
        conn.evicted.store(true, Ordering::Relaxed);
        conn.evict.notify_one();
        true
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    limits: Arc<Limits>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    until: Until,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Waiting::default());
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let budget = BodyBudget::new(limits.max_body_memory);
    let admitting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = stop_signal(until);
    tokio::pin!(stop);
    let mut refused: u64 = 0;
    let mut over_address: u64 = 0;
    let mut failed: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            signal = &mut stop => {
                let signal = signal?;
                let Until::Signal(grace) = until else { unreachable!("Forever never stops") };
                // Slaves' job polls are answered now, not at the end of their wait.
                app.measure.stop();
                return shut_down(signal, listener, &slots, &limits, &stopping, grace).await;
            }
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors or memory: free a descriptor by closing the
                // connection idle longest, and go on accepting; connections already open keep
                // being served.
                failed += 1;
                if failed.is_power_of_two() {
                    log::warn!("accept failed: {e} ({failed} times so far)");
                }
                if !waiting.evict_oldest() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        let trusted = limits
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&remote.ip()));
        let key = (!trusted).then(|| addr_key(remote.ip()));
        if let Some(k) = key
            && waiting.holding(k) >= limits.max_connections_per_address
        {
            over_address += 1;
            if over_address.is_power_of_two() {
                log::warn!(
                    "{k} holds {} connections (-max-connections-per-address): {over_address} new ones from over-limit addresses refused so far",
                    limits.max_connections_per_address
                );
            }
            drop(stream);
            continue;
        }
        // At the cap: make room by closing a connection of the address holding the most,
        // and let the newcomer wait for its slot in its own task, so the accept loop goes on
        // at once; a newcomer from the address holding the most is refused instead.
        let admit = match slots.clone().try_acquire_owned() {
            Ok(p) => Some(Admit::Now(p)),
            // Many waiting already: only addresses holding few may still make room.
            Err(_)
                if admitting.load(Ordering::Relaxed) >= MAX_ADMITTING
                    && key.is_none_or(|k| waiting.holding(k) >= FEW) =>
            {
                None
            }
            Err(_) => match waiting.victim(key) {
                Some(victim) => {
                    victim.evict.notify_one();
                    Some(Admit::Wait)
                }
                // Only proxies hold connections: the one idle longest makes room.
                None if lock(&waiting.by_addr).is_empty() && waiting.evict_oldest() => {
                    Some(Admit::Wait)
                }
                None => None,
            },
        };
        let Some(admit) = admit else {
            refused += 1;
            if refused.is_power_of_two() {
                log::warn!(
                    "connection limit {} reached: {refused} connections of the addresses holding the most refused so far",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let limits = limits.clone();
        let waiting = waiting.clone();
        let tls = tls.clone();
        let mut stop_seen = stop_seen.clone();
        let budget = budget.clone();
        let (slots, admitting) = (slots.clone(), admitting.clone());
        tokio::spawn(async move {
            let permit = match admit {
                Admit::Now(p) => p,
                Admit::Wait => {
                    admitting.fetch_add(1, Ordering::Relaxed);
                    let got = tokio::time::timeout(ADMIT_WAIT, slots.acquire_owned()).await;
                    admitting.fetch_sub(1, Ordering::Relaxed);
                    match got {
                        Ok(Ok(p)) => p,
                        _ => return,
                    }
                }
            };
            let conn = waiting.open(key);
            // Shutting down: the connection finishes what it serves, then closes.
            let told = conn.clone();
            let watcher = tokio::spawn(async move {
                if stop_seen.wait_for(|s| *s).await.is_ok() {
                    told.stopping.store(true, Ordering::Relaxed);
                    told.evict.notify_one();
                    told.stop.notify_waiters();
                }
            });
            match tls {
                None => {
                    serve_connection(stream, app, limits, budget, remote, &waiting, &conn).await
                }
                Some(acceptor) => {
                    // The handshake gets the time of a request's headers, and may be cut to
                    // make room like a connection waiting for its request.
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(tls_stream, app, limits, budget, remote, &waiting, &conn).await
                            }
                            Ok(Err(e)) => log::debug!("TLS handshake with {remote} failed: {e}"),
                            Err(_) => log::debug!("TLS handshake with {remote} timed out"),
                        },
                        () = conn.evict.notified() => {}
                    }
                }
            }
            watcher.abort();
            waiting.close(&conn);
            drop(permit);
        });
    }
}

/// Stops accepting, tells every connection to close once its response is out (idle ones at
/// once, live streams with their next frame), and waits up to `grace` for them.
async fn shut_down(
    signal: &str,
    listener: tokio::net::TcpListener,
    slots: &Semaphore,
    limits: &Limits,
    stopping: &tokio::sync::watch::Sender<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    drop(listener);
    let open = limits.max_connections - slots.available_permits();
    log::info!(
        "{signal}: stopping; no new connections, {open} open ones finish what they serve (at most {}s)",
        grace.as_secs_f64()
    );
    let _ = stopping.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, slots.acquire_many(all)).await {
        Ok(_) => log::info!("every connection closed"),
        Err(_) => log::warn!(
            "{} connections still open after {}s: closed",
            limits.max_connections - slots.available_permits(),
            grace.as_secs_f64()
        ),
    }
    Ok(())
}

/// How long a body may arrive at any pace before [`Limits::min_body_rate`] applies.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);
/// How long a body waits for room in the body memory budget before 503.
const BUDGET_WAIT: Duration = Duration::from_millis(500);

/// The memory all bodies being received may take together. A body reserves its declared
/// length (or what has arrived, for a chunked one) before it is read; when the budget is
/// spent, the largest body in flight that is larger than the newcomer's is cut to make room
/// (a flood of large bodies sheds itself, never a slave's small one), else the newcomer waits
/// briefly, then gets 503.
struct BodyBudget {
    limit: usize,
    state: Mutex<BudgetState>,
    /// Told when room is freed.
    freed: Notify,
}

#[derive(Default)]
struct BudgetState {
    used: usize,
    next_id: u64,
    /// Bodies in flight.
    bodies: HashMap<u64, Held>,
}

/// A body in flight, as the budget sees it.
struct Held {
    bytes: usize,
    since: Instant,
    /// How to cut it.
    shed: Arc<Notify>,
    /// Cut already; its bytes come back when its reader lets go.
    cut: bool,
}

/// One body's share of the budget, given back when dropped.
struct Reservation {
    budget: Arc<BodyBudget>,
    id: u64,
    bytes: usize,
    /// Told when this body is cut to make room.
    shed: Arc<Notify>,
}

impl BodyBudget {
    fn new(limit: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit,
            state: Mutex::new(BudgetState::default()),
            freed: Notify::new(),
        })
    }

    /// An empty reservation for a new body.
    fn start(self: &Arc<Self>) -> Reservation {
        let mut st = lock(&self.state);
        st.next_id += 1;
        let id = st.next_id;
        let shed = Arc::new(Notify::new());
        st.bodies.insert(
            id,
            Held {
                bytes: 0,
                since: Instant::now(),
                shed: shed.clone(),
                cut: false,
            },
        );
        Reservation {
            budget: self.clone(),
            id,
            bytes: 0,
            shed,
        }
    }

    /// Grows `r` to `want` bytes if the budget has room; else cuts the largest body in flight
    /// that is larger than `want` (the oldest of equals) and says so. `Err(())` when there is
    /// neither room nor a larger body to cut.
    fn try_grow(&self, r: &mut Reservation, want: usize) -> Result<bool, ()> {
        let mut st = lock(&self.state);
        let extra = want.saturating_sub(r.bytes);
        if st.used + extra <= self.limit {
            st.used += extra;
            r.bytes = want;
            if let Some(b) = st.bodies.get_mut(&r.id) {
                b.bytes = want;
            }
            return Ok(true);
        }
        let coming_back: usize = st.bodies.values().filter(|b| b.cut).map(|b| b.bytes).sum();
        if st.used + extra <= self.limit + coming_back {
            // Bodies cut already free enough once their readers let go.
            return Ok(false);
        }
        let victim = st
            .bodies
            .iter_mut()
            .filter(|(id, b)| **id != r.id && !b.cut && b.bytes > want)
            .max_by(|a, b| a.1.bytes.cmp(&b.1.bytes).then(b.1.since.cmp(&a.1.since)));
        match victim {
            Some((_, b)) => {
                b.cut = true;
                b.shed.notify_one();
                Ok(false)
            }
            None if coming_back > 0 => Ok(false),
            None => Err(()),
        }
    }

    /// Grows `r` to `want` bytes, cutting larger bodies or waiting up to [`BUDGET_WAIT`] for
    /// room; `false` when none came.
    async fn grow(&self, r: &mut Reservation, want: usize) -> bool {
        let until = Instant::now() + BUDGET_WAIT;
        loop {
            let freed = self.freed.notified();
            match self.try_grow(r, want) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(()) if Instant::now() >= until => return false,
                Err(()) => {}
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.try_grow(r, want) == Ok(true);
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), freed).await;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = lock(&self.budget.state);
        st.used -= self.bytes.min(st.used);
        st.bodies.remove(&self.id);
        drop(st);
        self.budget.freed.notify_waiters();
    }
}

/// Why a body could not be read.
enum BodyFail {
    TooLarge,
    Broken(String),
    Slow,
    TimedOut,
    NoRoom,
    Shed,
}

/// Reads a body within the size cap, the body timeout, the minimum rate and the memory
/// budget; the reservation goes with it and is to be held until the request is done with.
async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    limits: &Limits,
    budget: &Arc<BodyBudget>,
) -> Result<(Vec<u8>, Reservation), BodyFail> {
    let mut r = budget.start();
    let first = declared.map_or(0, |n| n as usize).min(limits.max_body);
    if first > 0 && !budget.grow(&mut r, first).await {
        return Err(BodyFail::NoRoom);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(first);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shed = r.shed.clone();
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                None => break,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let len = buf.len() + data.len();
                    if len > limits.max_body {
                        return Err(BodyFail::TooLarge);
                    }
                    if len > r.bytes {
                        let want = len.max(r.bytes * 2).min(limits.max_body);
                        if !budget.grow(&mut r, want).await {
                            return Err(BodyFail::NoRoom);
                        }
                    }
                    buf.extend_from_slice(&data);
                }
                Some(Err(e)) => return Err(BodyFail::Broken(e.to_string())),
            },
            () = shed.notified() => return Err(BodyFail::Shed),
            () = tokio::time::sleep_until(deadline) => return Err(BodyFail::TimedOut),
            _ = tick.tick() => {
                let late = start.elapsed().saturating_sub(BODY_RATE_GRACE);
                if limits.min_body_rate > 0
                    && !late.is_zero()
                    && (buf.len() as f64) < limits.min_body_rate as f64 * late.as_secs_f64()
                {
                    return Err(BodyFail::Slow);
                }
            }
        }
    }
    Ok((buf, r))
}

/// Runs HTTP/1.1 on one accepted (plain or TLS) connection until it ends or is closed to make
/// room.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<S>(
    stream: S,
    app: Arc<App>,
    limits: Arc<Limits>,
    budget: Arc<BodyBudget>,
    remote: SocketAddr,
    waiting: &Arc<Waiting>,
    conn: &Arc<Conn>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = limits.header_timeout;
    let buf = limits.max_header_bytes.max(8192);
    let (w, c) = (waiting.clone(), conn.clone());
    let service = service_fn(move |req| {
        let app = app.clone();
        let limits = limits.clone();
        let budget = budget.clone();
        let (waiting, conn) = (w.clone(), c.clone());
        waiting.busy(&conn);
        async move {
            let (response, close) = respond(app, &limits, &budget, remote, req).await;
            let link = Link {
                waiting,
                conn,
                remote,
                stall: limits.body_timeout,
            };
            Ok::<_, std::convert::Infallible>(reply(response, close, link))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper needs at least 8 KiB of read buffer.
        .max_buf_size(buf)
        .max_headers(100)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = conn.evict.notified() => {
            // Closes an idle connection at once, lets a response in flight finish;
            // a half-sent head is simply dropped after the grace. At shutdown the response
            // in flight gets the shutdown's whole grace (the server stops waiting then).
            connection.as_mut().graceful_shutdown();
            if conn.stopping.load(Ordering::Relaxed) {
                connection.as_mut().await
            } else {
                tokio::time::timeout(EVICT_GRACE, connection.as_mut())
                    .await
                    .unwrap_or(Ok(()))
            }
        }
    };
    if let Err(e) = ended {
        log::debug!("connection from {remote} ended: {e}");
    }
}

/// The connection a response goes out on.
struct Link {
    waiting: Arc<Waiting>,
    conn: Arc<Conn>,
    remote: SocketAddr,
    /// How long a streamed body waits for a client that reads nothing.
    stall: Duration,
}

impl Link {
    /// The response is handed over: the connection waits for its next request from now on.
    fn done(self) {
        self.waiting.idle(&self.conn);
    }
}

/// A response body as hyper sends it: whole (with its length), or pieces from a queue that a
/// producer fills (chunked). The queue closing before its end marker means the producer
/// failed or gave up, and the body ends in an error, so hyper closes the connection without
/// the last chunk and the client can tell the body is cut short.
enum Out {
    Whole(Option<Bytes>),
    Stream {
        queue: mpsc::Receiver<Piece>,
        /// Called at the end of a complete stream.
        done: Option<Link>,
    },
}

/// What a streamed body's producer hands to the connection.
enum Piece {
    Data(Bytes),
    End,
}

impl hyper::body::Body for Out {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match this {
            Out::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Out::Stream { queue, done } => match ready!(queue.poll_recv(cx)) {
                Some(Piece::Data(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Piece::End) => {
                    if let Some(link) = done.take() {
                        link.done();
                    }
                    *this = Out::Whole(None);
                    Poll::Ready(None)
                }
                None => Poll::Ready(Some(Err(std::io::Error::other(
                    "the response body was cut short",
                )))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Out::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Out::Stream { .. } => SizeHint::default(),
        }
    }
}

/// Runs a streamed body's producer one chunk at a time on the blocking pool (so no thread
/// waits while the client reads) and queues each chunk in pieces for the connection. A client
/// that takes no piece for `link.stall` gets its connection closed; a producer that fails or
/// panics is logged and leaves the queue without its end marker.
fn feed(mut chunks: Chunks, link: &Link) -> mpsc::Receiver<Piece> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let (conn, remote, stall) = (link.conn.clone(), link.remote, link.stall);
    tokio::spawn(async move {
        loop {
            let made = tokio::task::spawn_blocking(move || {
                let next = chunks.next();
                (chunks, next)
            })
            .await;
            let mut chunk = match made {
                Ok((rest, Some(Ok(chunk)))) => {
                    chunks = rest;
                    Bytes::from(chunk)
                }
                Ok((_, None)) => {
                    if queue(&tx, Piece::End, stall, &conn, remote).await {
                        drain(&tx, stall, &conn, remote).await;
                    }
                    return;
                }
                Ok((_, Some(Err(e)))) => {
                    log::error!("response to {remote} cut short: {e:#}");
                    return;
                }
                Err(e) => {
                    log::error!("response to {remote} cut short: its producer failed: {e}");
                    return;
                }
            };
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(STREAM_PIECE));
                if !queue(&tx, Piece::Data(piece), stall, &conn, remote).await {
                    return;
                }
            }
        }
    });
    rx
}

/// Sends a live stream's frames as they come, and a comment after every quiet
/// [`HEARTBEAT`](super::stream::HEARTBEAT), until the client goes, stops reading for
/// `link.stall`, or falls so far behind that the hub ends its subscription (then the body
/// ends cleanly and the client reconnects with its `Last-Event-ID`).
fn feed_events(sub: super::stream::Subscription, link: &Link) -> mpsc::Receiver<Piece> {
    use super::stream::Next;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let (conn, remote, stall) = (link.conn.clone(), link.remote, link.stall);
    let ready = Arc::new(Notify::new());
    let wake = ready.clone();
    sub.on_ready(Arc::new(move || wake.notify_one()));
    tokio::spawn(async move {
        loop {
            let piece = match sub.next() {
                Next::Frames(f) => Piece::Data(Bytes::from(f)),
                Next::Ended => {
                    log::info!("stream to {remote} fell behind: ended, the client may resume");
                    if queue(&tx, Piece::End, stall, &conn, remote).await {
                        drain(&tx, stall, &conn, remote).await;
                    }
                    return;
                }
                Next::Empty if conn.stopping.load(Ordering::Relaxed) => {
                    // The server stops: end the body cleanly; the client reconnects (to
                    // another master, or this one when it is back) with its Last-Event-ID.
                    let _ = queue(&tx, Piece::End, stall, &conn, remote).await;
                    return;
                }
                Next::Empty => {
                    tokio::select! {
                        () = ready.notified() => continue,
                        () = conn.stop.notified() => continue,
                        () = tokio::time::sleep(super::stream::HEARTBEAT) => {
                            Piece::Data(Bytes::from_static(b": keep-alive\n\n"))
                        }
                        () = tx.closed() => return,
                    }
                }
            };
            if !queue(&tx, piece, stall, &conn, remote).await {
                return;
            }
        }
    });
    rx
}

/// Queues one piece; false when the client has gone, or took nothing for `stall` (its
/// connection is then closed: hyper would wait on a client that stopped reading for ever).
async fn queue(
    tx: &mpsc::Sender<Piece>,
    piece: Piece,
    stall: Duration,
    conn: &Conn,
    remote: SocketAddr,
) -> bool {
    match tokio::time::timeout(stall, tx.send(piece)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            stalled(conn, remote, stall);
            false
        }
    }
}

/// Waits until the connection has taken the last pieces queued, closing it when a wait of
/// `stall` brings no progress: the end of a body is held to the same rule as the rest.
async fn drain(tx: &mpsc::Sender<Piece>, stall: Duration, conn: &Conn, remote: SocketAddr) {
    let mut free = tx.capacity();
    while tokio::time::timeout(stall, tx.closed()).await.is_err() {
        if tx.capacity() <= free {
            stalled(conn, remote, stall);
            return;
        }
        free = tx.capacity();
    }
}

fn stalled(conn: &Conn, remote: SocketAddr, stall: Duration) {
    log::warn!(
        "{remote} took nothing more of its response for {}s: connection closed",
        stall.as_secs_f64()
    );
    conn.evict.notify_one();
}

/// Turns a handler's response into hyper's; a whole body leaves the connection waiting for
/// its next request at once, a streamed one when its last piece is taken.
fn reply(r: Response, close: bool, link: Link) -> hyper::Response<Out> {
    let body = match r.body {
        Body::Bytes(b) => {
            link.done();
            Out::Whole((!b.is_empty()).then(|| Bytes::from(b)))
        }
        Body::Stream(chunks) => Out::Stream {
            queue: feed(chunks, &link),
            done: Some(link),
        },
        Body::Events(sub) => Out::Stream {
            queue: feed_events(sub, &link),
            done: Some(link),
        },
    };
    let mut out = hyper::Response::new(body);
    *out.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    for (name, value) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if r.content_type.starts_with("text/event-stream") {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    out
}

/// Who sent a request: the peer, or when the peer is a trusted proxy, the address its
/// `X-Forwarded-For` names (read from the right: the first address that is not itself a
/// trusted proxy). Headers from any other peer are ignored, so a client cannot pose as
/// another address.
fn client_of(peer: SocketAddr, headers: &hyper::HeaderMap, trusted: &[ipnet::IpNet]) -> SocketAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(&ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            // Garbage in the header: stop at the proxy that passed it on.
            break;
        };
        let ip = ip.to_canonical();
        if !is_trusted(ip) {
            return SocketAddr::new(ip, 0);
        }
    }
    peer
}

/// A header's value as text (the first, when given twice), at most 8 KiB.
fn header(headers: &hyper::HeaderMap, name: impl hyper::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 8192)
        .map(str::to_owned)
}

async fn respond(
    app: Arc<App>,
    limits: &Limits,
    budget: &Arc<BodyBudget>,
    remote: SocketAddr,
    req: hyper::Request<Incoming>,
) -> (Response, bool) {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return (
            Response::error(413, format!("body larger than {} bytes", limits.max_body)),
            true,
        );
    }
    let (parts, body) = req.into_parts();
    let (body, reservation) = match read_body(body, declared, limits, budget).await {
        Ok(x) => x,
        Err(fail) => {
            let r = match fail {
                BodyFail::TooLarge => {
                    Response::error(413, format!("body larger than {} bytes", limits.max_body))
                }
                BodyFail::Broken(e) => Response::error(400, format!("cannot read body: {e}")),
                BodyFail::TimedOut => Response::error(408, "body not received in time"),
                BodyFail::Slow => Response::error(
                    408,
                    format!(
                        "body arriving slower than {} bytes a second",
                        limits.min_body_rate
                    ),
                ),
                BodyFail::NoRoom | BodyFail::Shed => {
                    let mut r = Response::error(
                        503,
                        "the master has no memory free for request bodies now; retry",
                    );
                    r.headers.push(("Retry-After", "1".into()));
                    r
                }
            };
            return (r, true);
        }
    };
    let request = Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        user_agent: parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(200).collect()),
        authorization: parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|s| super::access::AuthHeader(s.to_owned())),
        remote: client_of(remote, &parts.headers, &limits.trusted_proxies),
        body,
        cookie: header(&parts.headers, COOKIE),
        origin: header(&parts.headers, ORIGIN),
        host: header(&parts.headers, HOST),
        accept: header(&parts.headers, ACCEPT),
        last_event_id: header(&parts.headers, "last-event-id"),
    };
    let start = Instant::now();
    let class = super::metrics::route_class(&request.path);
    let worker_app = app.clone();
    let routed = tokio::task::spawn_blocking(move || routes::route(&worker_app, &request)).await;
    // The body is gone with the request: its memory is free for others.
    drop(reservation);
    let response = match routed {
        Ok(routes::Reply::Now(r)) => r,
        // Results wait for the store's group commit here, holding no worker.
        Ok(routes::Reply::Later(pending)) => pending.answer(&app).await,
        // A long-poll waits here holding no worker, then builds its answer on the pool.
        Ok(routes::Reply::Wait(w)) => {
            let woken = matches!(tokio::time::timeout(w.limit, w.woken).await, Ok(Ok(())));
            let worker_app = app.clone();
            match tokio::task::spawn_blocking(move || (w.finish)(&worker_app, woken)).await {
                Ok(r) => r,
                Err(e) => {
                    log::error!("handler failed: {e}");
                    Response::error(500, "internal error")
                }
            }
        }
        Err(e) => {
            log::error!("handler failed: {e}");
            Response::error(500, "internal error")
        }
    };
    app.metrics.observe(class, start.elapsed());
    if !response.delay.is_zero() {
        tokio::time::sleep(response.delay).await;
    }
    (response, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection serving a request, and its link.
    fn serving(stall: Duration) -> (Link, Arc<Waiting>, Arc<Conn>) {
        let waiting = Arc::new(Waiting::default());
        let conn = waiting.open(None);
        waiting.busy(&conn);
        let link = Link {
            waiting: waiting.clone(),
            conn: conn.clone(),
            remote: "127.0.0.1:1".parse().unwrap(),
            stall,
        };
        (link, waiting, conn)
    }

    fn streamed(
        chunks: impl Iterator<Item = anyhow::Result<Vec<u8>>> + Send + 'static,
    ) -> Response {
        Response::stream(200, "text/plain", Box::new(chunks))
    }

    async fn read(r: hyper::Response<Out>) -> Result<Vec<u8>, std::io::Error> {
        Ok(r.into_body().collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_stream_arrives_whole_and_in_order_then_its_connection_waits() {
        let (link, waiting, _) = serving(Duration::from_secs(30));
        let big = vec![7u8; STREAM_PIECE * 2 + 5];
        let chunks = vec![Ok(b"a".to_vec()), Ok(big.clone()), Ok(b"z".to_vec())];
        let r = reply(streamed(chunks.into_iter()), false, link);
        assert!(r.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(read(r).await.unwrap(), [&b"a"[..], &big, b"z"].concat());
        assert_eq!(lock(&waiting.queue).len(), 1, "waits for its next request");
    }

    #[tokio::test]
    async fn a_failing_or_panicking_producer_cuts_the_body_short() {
        let (link, waiting, _) = serving(Duration::from_secs(30));
        let chunks = vec![
            Ok(b"a".to_vec()),
            Err(anyhow::anyhow!("the disk is gone")),
            Ok(b"never".to_vec()),
        ];
        assert!(
            read(reply(streamed(chunks.into_iter()), false, link))
                .await
                .is_err()
        );
        assert!(lock(&waiting.queue).is_empty(), "not reused");

        let (link, _, _) = serving(Duration::from_secs(30));
        let mut n = 0;
        let panics = std::iter::from_fn(move || {
            n += 1;
            assert!(n < 3, "a bug in the producer");
            Some(Ok(b"x".to_vec()))
        });
        assert!(read(reply(streamed(panics), false, link)).await.is_err());
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_has_its_connection_closed() {
        let (link, _, conn) = serving(Duration::from_millis(50));
        let endless = std::iter::repeat_with(|| Ok(vec![0u8; 1024]));
        // Nobody reads the body: the queue fills and the producer waits, then gives up.
        let r = reply(streamed(endless), false, link);
        tokio::time::timeout(Duration::from_secs(60), conn.evict.notified())
            .await
            .expect("the connection is told to close");
        drop(r);
    }

    #[tokio::test]
    async fn the_budget_cuts_the_largest_body_for_a_smaller_one_and_refuses_an_equal_one() {
        let budget = BodyBudget::new(3000);
        let mut big = budget.start();
        let mut mid = budget.start();
        assert!(budget.grow(&mut big, 2000).await);
        assert!(budget.grow(&mut mid, 1000).await);
        // Full: an equal or larger newcomer waits, then is refused; nothing is cut for it.
        let mut same = budget.start();
        assert!(!budget.grow(&mut same, 2000).await);
        assert!(!lock(&budget.state).bodies.values().any(|b| b.cut));
        // A small one cuts the largest, and gets its room once that reader lets go.
        let shed = big.shed.clone();
        let budget2 = budget.clone();
        let small = tokio::spawn(async move {
            let mut small = budget2.start();
            let ok = budget2.grow(&mut small, 100).await;
            (ok, small.bytes)
        });
        tokio::time::timeout(Duration::from_secs(5), shed.notified())
            .await
            .expect("the largest body is told to stop");
        drop(big);
        assert_eq!(small.await.unwrap(), (true, 100));
        assert_eq!(
            lock(&budget.state).used,
            1000,
            "mid's 1000; small gave its 100 back"
        );
        drop(mid);
        assert_eq!(lock(&budget.state).used, 0);
    }

    #[test]
    fn at_the_cap_the_address_holding_the_most_makes_room() {
        let waiting = Waiting::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let flood: Vec<_> = (0..5).map(|_| waiting.open(Some(a))).collect();
        let few = waiting.open(Some(b));
        for c in &flood[..4] {
            waiting.busy(c);
        }
        // The flood's one idle connection goes first, then its busy ones; never b's.
        let v = waiting.victim(Some(b)).unwrap();
        assert_eq!(v.id, flood[4].id);
        assert!(v.evicted.load(Ordering::Relaxed));
        // a holds 4, then 3 live ones; b with its newcomer 2: a gives way while it holds
        // more than twice b's.
        assert_eq!(waiting.victim(Some(b)).unwrap().key, Some(a));
        // a 3 against b's 2: the newcomer is refused.
        assert!(waiting.victim(Some(b)).is_none());
        // A newcomer from the flood's own address is refused too.
        assert!(waiting.victim(Some(a)).is_none());
        assert!(!few.evicted.load(Ordering::Relaxed));
        assert_eq!(waiting.holding(a), 5, "cut ones count until they close");
        for c in &flood {
            waiting.close(c);
        }
        assert_eq!(waiting.holding(a), 0);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(addr_key(v6), addr_key("2001:db8::ffff:1".parse().unwrap()));
    }
}
