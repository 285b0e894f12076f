//! The connection layer, and the only file that knows hyper and tokio: accepts connections
//! under a cap, reads each request within time and size limits, runs the synchronous handler
//! on a bounded worker pool, and waits out a response's delay without holding a worker.

use super::routes::{self, App, Request, Response};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The limits every connection and request is held to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed to send a request's headers (also how long an idle keep-alive connection
    /// may wait for its next request).
    pub header_timeout: Duration,
    /// Time allowed to send a request's body.
    pub body_timeout: Duration,
    /// Largest request body; larger gets 413.
    pub max_body: usize,
    /// Largest request head (start line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Most connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Threads running handlers.
    pub workers: usize,
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
        }
    }
}

/// Binds the listening socket; an unspecified IPv6 address also takes IPv4 (dual stack), and
/// falls back to IPv4 alone where the host has no IPv6.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr) {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            log::warn!("cannot listen on {addr} ({e}); trying {v4}");
            TcpListener::bind(v4).with_context(|| format!("cannot listen on {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// Serves `listener` until the process ends; over TLS when `tls` is given.
pub fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
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
    runtime.block_on(accept_loop(listener, app, Arc::new(limits), tls))
}

async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    limits: Arc<Limits>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors or memory: wait a little and go on accepting;
                // connections already open keep being served.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                log::warn!(
                    "connection limit {} reached: {refused} connections refused so far",
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
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, app, limits, remote).await,
                Some(acceptor) => {
                    // The handshake gets the same time as a request's headers.
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, app, limits, remote).await
                        }
                        Ok(Err(e)) => log::debug!("TLS handshake with {remote} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {remote} timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Runs HTTP/1.1 on one accepted (plain or TLS) connection until it ends.
async fn serve_connection<S>(stream: S, app: Arc<App>, limits: Arc<Limits>, remote: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = limits.header_timeout;
    let buf = limits.max_header_bytes.max(8192);
    let service = service_fn(move |req| {
        let app = app.clone();
        let limits = limits.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(app, &limits, remote, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper needs at least 8 KiB of read buffer.
        .max_buf_size(buf)
        .max_headers(100)
        .keep_alive(true);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("connection from {remote} ended: {e}");
    }
}

fn reply(r: Response, close: bool) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body)));
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
    out
}

async fn respond(
    app: Arc<App>,
    limits: &Limits,
    remote: SocketAddr,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return reply(
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
            return reply(r, true);
        }
        Err(_) => return reply(Response::error(408, "body not received in time"), true),
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
        remote,
        body,
    };
    let response = match tokio::task::spawn_blocking(move || routes::handle(&app, &request)).await {
        Ok(r) => r,
        Err(e) => {
            log::error!("handler failed: {e}");
            Response::error(500, "internal error")
        }
    };
    if !response.delay.is_zero() {
        tokio::time::sleep(response.delay).await;
    }
    reply(response, false)
}
