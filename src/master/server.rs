//! The connection layer, and the only file that knows hyper and tokio: accepts connections
//! under a cap (over TLS when configured), reads each request within time and size limits,
//! runs the synchronous handler on a bounded worker pool, and waits out a response's delay
//! and the store's commit of a request's results without holding a worker. A streamed body
//! is made one chunk at a time on the same pool and handed to the connection through a short
//! queue, so a slow reader holds back its producer and costs neither a thread nor memory.
//!
//! At the connection cap (or out of descriptors) the connection that has waited longest for
//! its next request is closed to make room, as nginx reuses idle keep-alive connections:
//! otherwise a client holding idle or half-sent connections locks every slave out.

use super::routes::{self, App, Body, Chunks, Request, Response};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST,
    HeaderValue, ORIGIN, USER_AGENT,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
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
    /// Most connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
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

/// The connections waiting for a request head, oldest first.
#[derive(Default)]
struct Waiting {
    next_id: AtomicU64,
    queue: Mutex<BTreeMap<(Instant, u64), Arc<Conn>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Waiting {
    fn open(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            since: Mutex::new(None),
            evict: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop: Notify::new(),
        });
        self.idle(&conn);
        conn
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
    let stop = stop_signal(until);
    tokio::pin!(stop);
    let mut refused: u64 = 0;
    let mut failed: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            signal = &mut stop => {
                let signal = signal?;
                let Until::Signal(grace) = until else { unreachable!("Forever never stops") };
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
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // At the cap: make room by closing the connection that waited longest for a
            // request, and take its slot when it is gone.
            Err(_) if waiting.evict_oldest() => {
                tokio::time::timeout(ADMIT_WAIT, slots.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            refused += 1;
            if refused.is_power_of_two() {
                log::warn!(
                    "connection limit {} reached and every connection busy: {refused} connections refused so far",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        let app = app.clone();
        let limits = limits.clone();
        let waiting = waiting.clone();
        let tls = tls.clone();
        let mut stop_seen = stop_seen.clone();
        tokio::spawn(async move {
            let conn = waiting.open();
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
                None => serve_connection(stream, app, limits, remote, &waiting, &conn).await,
                Some(acceptor) => {
                    // The handshake gets the time of a request's headers, and may be cut to
                    // make room like a connection waiting for its request.
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(tls_stream, app, limits, remote, &waiting, &conn).await
                            }
                            Ok(Err(e)) => log::debug!("TLS handshake with {remote} failed: {e}"),
                            Err(_) => log::debug!("TLS handshake with {remote} timed out"),
                        },
                        () = conn.evict.notified() => {}
                    }
                }
            }
            watcher.abort();
            waiting.busy(&conn);
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

/// Runs HTTP/1.1 on one accepted (plain or TLS) connection until it ends or is closed to make
/// room.
async fn serve_connection<S>(
    stream: S,
    app: Arc<App>,
    limits: Arc<Limits>,
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
        let (waiting, conn) = (w.clone(), c.clone());
        waiting.busy(&conn);
        async move {
            let (response, close) = respond(app, &limits, remote, req).await;
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
    let body = match tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes().to_vec(),
        Ok(Err(e)) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let r = if too_big {
                Response::error(413, format!("body larger than {} bytes", limits.max_body))
            } else {
                Response::error(400, format!("cannot read body: {e}"))
            };
            return (r, true);
        }
        Err(_) => return (Response::error(408, "body not received in time"), true),
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
    let response = match routed {
        Ok(routes::Reply::Now(r)) => r,
        // Results wait for the store's group commit here, holding no worker.
        Ok(routes::Reply::Later(pending)) => pending.answer(&app).await,
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
        let conn = waiting.open();
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
}
