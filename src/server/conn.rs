//! The engine server's connections: its own accept loop over hyper, so that no client
//! can hold the engine's file descriptors. Every connection is a descriptor, and the
//! one process also needs them for its database, its outbound calls and its logs: a
//! few hundred clients that open a connection and never finish their request must not
//! take `/health` and Stripe's webhooks down with them.
//!
//! - A request's headers must arrive within `header_timeout` of the connection waiting
//!   for them (an idle keep-alive connection waits as long for its next request), and
//!   its body within `body_timeout` of its headers (408 after).
//! - A connection with no request being handled and no byte read or written for
//!   `idle_timeout` is closed (a client that stopped reading its response).
//! - At most `max_connections` at once. A connection above it closes the one that has
//!   waited longest without sending a whole request (a stalled client, not a busy one);
//!   when every connection is busy with a request, the new one is answered 503 with
//!   `Retry-After` and closed — load is shed before descriptors run out.
//!
//! A WebSocket keeps its slot (and its descriptor) while it is open; its own heartbeat
//! ends it. Nothing here knows the routes: it serves a [`Router`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest request body read (the control API keeps its own, smaller limit).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// How long open connections get to finish once the server stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The server's connection limits (`[server]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// WebSockets at most (0: half the connections), so that feeds and consoles, which
    /// hold their slot while open, never take the slots `/health` and webhooks need.
    pub max_websockets: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_websockets: 0,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// WebSockets held at once, at most: `max_websockets`, or half the connections;
    /// always fewer than the connections.
    pub fn websockets(&self) -> usize {
        let half = self.max_connections / 2;
        match self.max_websockets {
            0 => half,
            n => n.min(self.max_connections.saturating_sub(1)),
        }
        .max(1)
    }

    /// The cap kept under the process's open-file limit `files` (the database, the
    /// outbound calls and the logs need descriptors too).
    pub fn within(mut self, files: Option<u64>) -> Self {
        if let Some(files) = files {
            let room = files.saturating_sub(RESERVED_FILES).max(8);
            self.max_connections = self.max_connections.min(room as usize);
        }
        self
    }
}

/// The soft limit on open files now (None: unlimited or unknown).
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    None
}

/// Descriptors kept for everything but the server's connections.
const RESERVED_FILES: u64 = 128;

/// What the connections did, for `/health`.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicU64,
    max: AtomicU64,
    accepted: AtomicU64,
    /// Closed to make room: the one waiting longest without a whole request.
    evicted: AtomicU64,
    /// Answered 503 at the cap (every connection busy).
    shed: AtomicU64,
    /// Closed for sending headers or a body too slowly, or for idling.
    timed_out: AtomicU64,
}

/// [`ConnStats`] as numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnCounts {
    pub open: u64,
    pub max: u64,
    pub accepted: u64,
    pub evicted: u64,
    pub shed: u64,
    pub timed_out: u64,
}

impl ConnStats {
    pub fn counts(&self) -> ConnCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnCounts {
            open: l(&self.open),
            max: l(&self.max),
            accepted: l(&self.accepted),
            evicted: l(&self.evicted),
            shed: l(&self.shed),
            timed_out: l(&self.timed_out),
        }
    }
}

/// Where a connection stands.
const WAITING: u8 = 0;
const READING_BODY: u8 = 1;
const HANDLING: u8 = 2;
const UPGRADED: u8 = 3;

/// One open connection's state, shared by its task, its I/O and the table.
struct Slot {
    id: u64,
    phase: AtomicU8,
    /// When its phase began (ms since the server started).
    since: AtomicU64,
    /// When a byte last moved either way (ms since the server started).
    last_io: AtomicU64,
    evict: CancellationToken,
    table: Arc<Table>,
}

impl Slot {
    fn set(&self, phase: u8) {
        self.since.store(self.table.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.last_io.store(self.table.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections.
struct Table {
    started: Instant,
    next: AtomicU64,
    slots: Mutex<HashMap<u64, std::sync::Weak<Slot>>>,
    stats: Arc<ConnStats>,
}

impl Table {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::sync::Weak<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(self: &Arc<Self>) -> Arc<Slot> {
        let now = self.now_ms();
        let slot = Arc::new(Slot {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            phase: AtomicU8::new(WAITING),
            since: AtomicU64::new(now),
            last_io: AtomicU64::new(now),
            evict: CancellationToken::new(),
            table: self.clone(),
        });
        self.lock().insert(slot.id, Arc::downgrade(&slot));
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        slot
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection that has waited longest without a whole request being
    /// handled; false when every connection is busy.
    fn evict_one(&self) -> bool {
        let mut slots = self.lock();
        let victim = slots
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|s| {
                !s.evict.is_cancelled()
                    && matches!(s.phase.load(Ordering::Relaxed), WAITING | READING_BODY)
            })
            .min_by_key(|s| s.since.load(Ordering::Relaxed));
        match victim {
            Some(v) => {
                v.evict.cancel();
                slots.remove(&v.id);
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// The connection's socket, noting when bytes move; the slot goes with it (a
/// WebSocket's upgraded stream keeps it).
struct Tracked {
    stream: TcpStream,
    slot: Arc<Slot>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.slot.table.close(self.slot.id);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.slot.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `app` on `listener` until `cancel`; then open connections get a few seconds
/// to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    cancel: CancellationToken,
) {
    stats
        .max
        .store(limits.max_connections as u64, Ordering::Relaxed);
    let table = Arc::new(Table {
        started: Instant::now(),
        next: AtomicU64::new(0),
        slots: Mutex::new(HashMap::new()),
        stats: stats.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or a connection reset before it was taken): wait a
                // little instead of spinning.
                tracing::warn!("engine server: accepting a connection failed: {e}");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        if table.len() >= limits.max_connections && !table.evict_one() {
            stats.shed.fetch_add(1, Ordering::Relaxed);
            if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(10)) {
                warned = Some(Instant::now());
                tracing::warn!(
                    "engine server: {} connections open, all busy: new connections are answered 503 (server.max_connections)",
                    limits.max_connections
                );
            }
            tasks.spawn(shed(stream));
            continue;
        }
        let slot = table.open();
        tasks.spawn(connection(
            stream,
            peer,
            app.clone(),
            slot,
            limits,
            cancel.clone(),
        ));
    }
    // Stopping: connections finish what they are doing (each was told), for a while.
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
    }
}

/// Serves one connection until it ends, times out, idles, or is evicted.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: Arc<Slot>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let evict = slot.evict.clone();
    let io = TokioIo::new(Tracked {
        stream,
        slot: slot.clone(),
    });
    let svc_slot = slot.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let slot = svc_slot.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, app, &slot, limits).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        slot.table.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!("connection from {peer}: {e}");
                }
                break;
            }
            () = evict.cancelled() => {
                tracing::debug!("connection from {peer} closed to make room");
                return;
            }
            () = cancel.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let now = slot.table.now_ms();
                let idle = now.saturating_sub(slot.last_io.load(Ordering::Relaxed));
                if slot.phase.load(Ordering::Relaxed) == WAITING
                    && idle > limits.idle_timeout.as_millis() as u64
                {
                    slot.table.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("connection from {peer} idle for {idle} ms: closed");
                    return;
                }
            }
        }
    }
    // Upgraded (a WebSocket): its stream holds the slot until it closes.
    slot.set(UPGRADED);
}

/// One request: its body read within the body timeout, then the router.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    app: Router,
    slot: &Slot,
    limits: Limits,
) -> Response<Body> {
    slot.set(READING_BODY);
    let (mut parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        limits.body_timeout,
        http_body_util::Limited::new(body, MAX_BODY).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            slot.set(WAITING);
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the request body is larger than {MAX_BODY} bytes"),
            );
        }
        Ok(Err(e)) => {
            slot.set(WAITING);
            return refusal(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("the request body could not be read: {e}"),
            );
        }
        Err(_) => {
            slot.table.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            slot.set(WAITING);
            let mut r = refusal(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!(
                    "the request body did not arrive within {} s (server.body_timeout_secs)",
                    limits.body_timeout.as_secs()
                ),
            );
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    slot.set(HANDLING);
    parts.extensions.insert(ConnectInfo(peer));
    let req = Request::from_parts(parts, Body::from(bytes));
    let response = match tower::ServiceExt::oneshot(app, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    slot.set(WAITING);
    response
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Answers a connection over the cap with 503 and closes it: its request's head is
/// read first (for a second at most: a client that has not sent one does not get an
/// answer it did not ask for), then what else it sent meanwhile (closing on unread
/// bytes would reset the connection before the answer is read).
async fn shed(mut stream: TcpStream) {
    let body = r#"{"error":{"code":"overloaded","message":"the engine is serving as many connections as it may (server.max_connections); retry shortly"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
