//! A console's connection to an engine in another process: [`RemoteEngine`], the
//! [`Link`] over `WS /api/v1/ws/console` (the protocol is in
//! [`crate::protocol::attach`]). It speaks the protocol only — it knows nothing of the
//! engine's insides — so the console drives it exactly as it drives an engine in its
//! own process.
//!
//! The first connection is made by [`RemoteEngine::connect`], so a wrong token, another
//! protocol version or an engine that is not there are errors before any console
//! opens. After that a background task keeps the link: it applies the engine's deltas
//! to its copy of the snapshot, matches replies to the commands that asked them, and
//! when the connection drops it says so ([`LinkState::Reconnecting`]) and tries again
//! by itself, asking its [`Resolve`] where the engine is each time (a restarted engine
//! writes a new control file with a new token).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::protocol::attach::{self, Shown, Unpacker, lost_reply};
use crate::protocol::{
    Attached, AttachedConsole, ClientFrame, CommandError, CompanyRow, CompanyTag, Disconnected,
    Hello, Link, LinkState, PROTOCOL_VERSION, Query, QueryReply, Reply, Request, ServerFrame,
    Snapshot,
};

/// Where the engine is and the token to show it.
#[derive(Clone)]
pub struct Endpoint {
    /// `ws://127.0.0.1:9870/api/v1/ws/console`.
    pub url: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

/// Finds the engine, each time the link (re)connects.
pub type Resolve = Arc<dyn Fn() -> Result<Endpoint, String> + Send + Sync>;

/// The console URL of an engine given as `host:port`, `http://host:port`,
/// `ws://host:port` (with or without a path; `https`/`wss` keep their TLS scheme).
pub fn console_url(given: &str) -> Result<String, String> {
    let given = given.trim().trim_end_matches('/');
    let (scheme, rest) = match given.split_once("://") {
        Some(("http" | "ws", rest)) => ("ws", rest),
        Some(("https" | "wss", rest)) => ("wss", rest),
        Some((other, _)) => {
            return Err(format!(
                "{other:?}: not an engine URL (use http://HOST:PORT or ws://HOST:PORT)"
            ));
        }
        None => ("ws", given),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(format!("{given:?}: no host in the engine URL"));
    }
    Ok(format!("{scheme}://{authority}{}", attach::CONSOLE_PATH))
}

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Nothing answers there (exit 3 for the CLI).
    #[error("no engine reachable at {0}")]
    Unreachable(String),
    /// The engine answered and said no: a token, a protocol version.
    #[error("{0}")]
    Refused(String),
    /// Where the engine is could not be found.
    #[error("{0}")]
    NotFound(String),
}

/// Commands and queries the console hands the link, with where their answers go.
enum Outgoing {
    Command(Request, oneshot::Sender<Reply>),
    Query(Query, oneshot::Sender<QueryReply>),
    Show(Shown),
    /// Watch another company: a connection of its own (`?company=ID`).
    Switch(String, oneshot::Sender<Result<(), String>>),
}

/// An engine in another process, attached over its console WebSocket.
pub struct RemoteEngine {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    state: watch::Receiver<LinkState>,
    consoles: watch::Receiver<Vec<AttachedConsole>>,
    /// The company the connection shows, as the engine's welcome said.
    company: watch::Receiver<Option<CompanyTag>>,
    /// Every company's row, when the engine serves several.
    rows: watch::Receiver<Vec<CompanyRow>>,
    out: mpsc::UnboundedSender<Outgoing>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    received: Arc<AtomicU64>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connection that has said hello and holds the first snapshot.
struct Session {
    socket: Socket,
    /// The engine's compressed stream, read.
    unpacker: Unpacker,
    welcome: crate::protocol::Welcome,
    doc: Value,
    snapshot: Snapshot,
    seq: u64,
    to: String,
    /// The engine's clock as its snapshot gave it: the console keeps the engine's time
    /// from there (deltas never carry it).
    clock: Option<EngineClock>,
}

/// The engine's time as this console keeps it: what the snapshot said, and how long
/// ago that arrived.
#[derive(Debug, Clone, Copy)]
struct EngineClock {
    ms: i64,
    at: tokio::time::Instant,
}

impl EngineClock {
    fn starting(ms: i64) -> Self {
        Self {
            ms,
            at: tokio::time::Instant::now(),
        }
    }

    /// The engine's time now, in whole seconds as the engine gives it.
    fn now_ms(self) -> i64 {
        let elapsed = i64::try_from(self.at.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.ms.saturating_add(elapsed / 1000 * 1000)
    }
}

impl Session {
    /// The whole view arrived: the engine clock starts from it.
    fn whole(&mut self, seq: u64, snapshot: Snapshot) {
        self.doc = serde_json::to_value(&snapshot).unwrap_or(Value::Null);
        self.clock = attach::clock_ms(&self.doc).map(EngineClock::starting);
        self.snapshot = snapshot;
        self.seq = seq;
    }

    /// Brings the view's clock to the engine's time; true when it moved.
    fn keep_time(&mut self) -> bool {
        let Some(now) = self.clock.map(EngineClock::now_ms) else {
            return false;
        };
        if attach::clock_ms(&self.doc) == Some(now) {
            return false;
        }
        attach::set_clock_ms(&mut self.doc, now);
        self.snapshot.compliance.now_ms = now;
        true
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `host:port` of a console URL (what the header shows).
fn authority(url: &str) -> String {
    url.split_once("://")
        .map_or(url, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn send_frame(socket: &mut Socket, frame: &ClientFrame) -> Result<(), String> {
    let text = String::from_utf8(attach::encode(frame)).map_err(|e| e.to_string())?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())
}

/// Bytes a WebSocket frame of `payload` bytes takes on the wire from the server (its
/// header: 2 bytes, 4 from 126 bytes, 10 from 64 KiB; server frames are not masked).
fn wire_bytes(payload: usize) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload + header) as u64
}

/// The next frame from the engine (an error: the connection ended, and why); counts
/// the bytes received.
async fn next_frame(
    socket: &mut Socket,
    unpacker: &mut Unpacker,
    received: &AtomicU64,
) -> Result<ServerFrame, String> {
    loop {
        let m = socket.next().await;
        if let Some(Ok(m)) = &m {
            received.fetch_add(wire_bytes(m.len()), Ordering::Relaxed);
        }
        match m {
            Some(Ok(Message::Text(t))) => return attach::decode(t.as_bytes()),
            Some(Ok(Message::Binary(b))) => return unpacker.unpack(&b),
            Some(Ok(Message::Close(c))) => {
                return Err(match c {
                    Some(c) if !c.reason.is_empty() => format!("the engine closed: {}", c.reason),
                    _ => "the engine closed the connection".into(),
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connection lost: {e}")),
            None => return Err("connection lost".into()),
        }
    }
}

/// Connects, says hello, and reads the welcome and the first snapshot.
async fn open(
    endpoint: &Endpoint,
    company: Option<&str>,
    hello: &Hello,
    received: &AtomicU64,
) -> Result<Session, AttachError> {
    let to = authority(&endpoint.url);
    let url = match company {
        Some(id) => format!("{}?company={}", endpoint.url, urlencoding::encode(id)),
        None => endpoint.url.clone(),
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| AttachError::NotFound(format!("{}: {e}", endpoint.url)))?;
    if let Some(token) = &endpoint.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| AttachError::Refused("the token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(s) => s,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(AttachError::Refused(format!(
                "the engine at {to} refused the console: {status}{}{body}",
                if body.is_empty() { "" } else { ": " }
            )));
        }
        Err(e) => return Err(AttachError::Unreachable(format!("{to} ({e})"))),
    };
    let mut unpacker = Unpacker::default();
    send_frame(&mut socket, &ClientFrame::Hello(hello.clone()))
        .await
        .map_err(|e| AttachError::Unreachable(format!("{to} ({e})")))?;
    let welcome = match next_frame(&mut socket, &mut unpacker, received)
        .await
        .map_err(AttachError::Refused)?
    {
        ServerFrame::Welcome(w) => w,
        ServerFrame::Refused { message } => return Err(AttachError::Refused(message)),
        other => {
            return Err(AttachError::Refused(format!(
                "the engine at {to} did not welcome the console (first frame: {other:?})"
            )));
        }
    };
    attach::check_version(welcome.protocol, "engine", "console").map_err(AttachError::Refused)?;
    match next_frame(&mut socket, &mut unpacker, received)
        .await
        .map_err(AttachError::Refused)?
    {
        ServerFrame::Snapshot { seq, snapshot } => {
            let mut session = Session {
                socket,
                unpacker,
                welcome,
                doc: Value::Null,
                snapshot: Snapshot::default(),
                seq,
                to,
                clock: None,
            };
            session.whole(seq, *snapshot);
            Ok(session)
        }
        other => Err(AttachError::Refused(format!(
            "the engine at {to} sent no snapshot (got {other:?})"
        ))),
    }
}

impl RemoteEngine {
    /// Attaches to the engine `resolve` names, as `hello` says; the error says why not.
    pub async fn connect(resolve: Resolve, hello: Hello) -> Result<Self, AttachError> {
        Self::connect_to(resolve, hello, None).await
    }

    /// [`RemoteEngine::connect`] to company `company` of an engine serving several
    /// (None: the one the engine gives, its first).
    pub async fn connect_to(
        resolve: Resolve,
        hello: Hello,
        company: Option<String>,
    ) -> Result<Self, AttachError> {
        let endpoint = resolve().map_err(AttachError::NotFound)?;
        let received = Arc::new(AtomicU64::new(0));
        let session = open(&endpoint, company.as_deref(), &hello, &received).await?;
        let attached = attached(&session);
        let (snap_tx, snapshots) = watch::channel(Arc::new(session.snapshot.clone()));
        let (state_tx, state) = watch::channel(LinkState::Attached(attached));
        let (consoles_tx, consoles) = watch::channel(Vec::new());
        let (company_tx, company_rx) = watch::channel(session.welcome.company.clone());
        let (rows_tx, rows) = watch::channel(Vec::new());
        let (out, out_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let keeper = Keeper {
            resolve,
            hello,
            snapshots: snap_tx,
            state: state_tx,
            consoles: consoles_tx,
            company: company_tx,
            rows: rows_tx,
            watching: company.or_else(|| session.welcome.company.as_ref().map(|c| c.id.clone())),
            out: out_rx,
            cancel: cancel.clone(),
            received: received.clone(),
            shown: Shown::default(),
        };
        let task = tokio::spawn(keeper.run(session));
        Ok(RemoteEngine {
            snapshots,
            state,
            consoles,
            company: company_rx,
            rows,
            out,
            cancel,
            task: Some(task),
            received,
        })
    }

    /// Where the engine is (`127.0.0.1:9870`).
    pub fn to(&self) -> String {
        match &*self.state.borrow() {
            LinkState::Attached(a) | LinkState::Reconnecting { was: a, .. } => a.to.clone(),
            LinkState::Hosted | LinkState::Bundle { .. } => String::new(),
        }
    }

    /// Bytes received from the engine so far (WebSocket frames, headers included).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Closes the connection (the engine keeps running).
    pub async fn detach(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn attached(session: &Session) -> Attached {
    Attached {
        to: session.to.clone(),
        role: session.welcome.role,
        actor: session.welcome.actor.clone(),
        connection: session.welcome.connection,
    }
}

impl Drop for RemoteEngine {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Link for RemoteEngine {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    fn send(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<oneshot::Receiver<Reply>, Disconnected>> + Send {
        let (tx, rx) = oneshot::channel();
        let sent = self.out.send(Outgoing::Command(request, tx));
        async move { sent.map(|()| rx).map_err(|_| Disconnected) }
    }

    fn query(
        &self,
        query: Query,
    ) -> impl Future<Output = Result<oneshot::Receiver<QueryReply>, Disconnected>> + Send {
        let (tx, rx) = oneshot::channel();
        let sent = self.out.send(Outgoing::Query(query, tx));
        async move { sent.map(|()| rx).map_err(|_| Disconnected) }
    }

    /// An attached console does not stop the engine: it detaches.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send {
        self.detach()
    }

    fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    fn show(&self, shown: Shown) {
        let _ = self.out.send(Outgoing::Show(shown));
    }

    fn consoles(&self) -> watch::Receiver<Vec<AttachedConsole>> {
        self.consoles.clone()
    }

    fn companies(&self) -> watch::Receiver<Vec<CompanyRow>> {
        self.rows.clone()
    }

    fn company(&self) -> Option<CompanyTag> {
        self.company.borrow().clone()
    }

    /// A connection of its own to company `id`; the one watched now stays until it is
    /// open (and stays when it cannot be: the error says why).
    fn watch_company(&mut self, id: &str) -> impl Future<Output = Result<(), String>> + Send {
        let (tx, rx) = oneshot::channel();
        let sent = self.out.send(Outgoing::Switch(id.to_owned(), tx));
        async move {
            sent.map_err(|_| "the connection to the engine is closed".to_owned())?;
            rx.await
                .unwrap_or_else(|_| Err("the connection to the engine is closed".into()))
        }
    }
}

/// How a connection served by [`Keeper::serve`] ended.
enum End {
    /// The console detached.
    Detached,
    /// The connection was lost, and why.
    Lost(String),
    /// The console watches another company now: its connection, and who asked (told
    /// once the link shows it).
    Switched(Box<Session>, oneshot::Sender<Result<(), String>>),
}

/// The background task keeping the link.
struct Keeper {
    resolve: Resolve,
    hello: Hello,
    snapshots: watch::Sender<Arc<Snapshot>>,
    state: watch::Sender<LinkState>,
    consoles: watch::Sender<Vec<AttachedConsole>>,
    company: watch::Sender<Option<CompanyTag>>,
    rows: watch::Sender<Vec<CompanyRow>>,
    /// The company asked for (`--company`, the selector): each reconnect asks for it.
    watching: Option<String>,
    out: mpsc::UnboundedReceiver<Outgoing>,
    cancel: CancellationToken,
    received: Arc<AtomicU64>,
    /// What the console shows of the parts sent on demand (said again after a
    /// reconnect).
    shown: Shown,
}

/// Waits between attempts: 0.25 s, doubling to at most 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((250u64 << attempt.min(5)).min(5_000))
}

fn not_connected(why: &str) -> CommandError {
    CommandError::unavailable(format!(
        "not connected to the engine ({why}); reconnecting — nothing was sent"
    ))
}

impl Keeper {
    async fn run(mut self, mut session: Session) {
        loop {
            let was = attached(&session);
            let why = match self.serve(session).await {
                End::Detached => return,
                End::Switched(s, asked) => {
                    session = *s;
                    self.snapshots
                        .send_replace(Arc::new(session.snapshot.clone()));
                    self.company.send_replace(session.welcome.company.clone());
                    self.state
                        .send_replace(LinkState::Attached(attached(&session)));
                    let _ = asked.send(Ok(()));
                    continue;
                }
                End::Lost(why) => why,
            };
            let since_ms = now_ms();
            let mut attempt = 0u32;
            session = loop {
                self.state.send_replace(LinkState::Reconnecting {
                    was: was.clone(),
                    since_ms,
                    attempt,
                    why: why.clone(),
                });
                if !self.wait(backoff(attempt), &why).await {
                    return;
                }
                attempt += 1;
                let opened = match (self.resolve)() {
                    Ok(endpoint) => {
                        open(
                            &endpoint,
                            self.watching.as_deref(),
                            &self.hello,
                            &self.received,
                        )
                        .await
                    }
                    Err(e) => Err(AttachError::NotFound(e)),
                };
                match opened {
                    Ok(s) => break s,
                    Err(e) => {
                        self.state.send_replace(LinkState::Reconnecting {
                            was: was.clone(),
                            since_ms,
                            attempt,
                            why: e.to_string(),
                        });
                    }
                }
            };
            self.snapshots
                .send_replace(Arc::new(session.snapshot.clone()));
            self.company.send_replace(session.welcome.company.clone());
            self.state
                .send_replace(LinkState::Attached(attached(&session)));
        }
    }

    /// Waits `gap`, answering what the console sends meanwhile (nothing can be sent);
    /// false when the console detached.
    async fn wait(&mut self, gap: Duration, why: &str) -> bool {
        let until = tokio::time::Instant::now() + gap;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                o = self.out.recv() => match o {
                    Some(Outgoing::Command(_, tx)) => { let _ = tx.send(Err(not_connected(why))); }
                    Some(Outgoing::Query(_, tx)) => { let _ = tx.send(Err(not_connected(why))); }
                    Some(Outgoing::Show(shown)) => self.shown = shown,
                    Some(Outgoing::Switch(id, tx)) => {
                        // Asked for again at the next attempt.
                        self.watching = Some(id);
                        let _ = tx.send(Err(format!("not connected to the engine ({why}); that company is shown once reconnected")));
                    }
                    None => return false,
                },
            }
        }
    }

    /// Serves one connection until it ends: the console detached, it was lost (why),
    /// or the console watches another company (its new connection).
    async fn serve(&mut self, mut s: Session) -> End {
        let heartbeat = Duration::from_secs_f64(s.welcome.heartbeat_secs.clamp(0.1, 300.0));
        let mut commands: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
        let mut queries: HashMap<u64, oneshot::Sender<QueryReply>> = HashMap::new();
        let mut next_id = 0u64;
        let mut heard = tokio::time::Instant::now();
        // The engine's clock, kept here between deltas (countdowns, ages).
        let mut second = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        if self.shown != Shown::default()
            && let Err(e) = send_frame(&mut s.socket, &ClientFrame::Show(self.shown)).await
        {
            return End::Lost(format!("connection lost: {e}"));
        }
        let end = loop {
            let silence = heard + heartbeat * 3;
            tokio::select! {
                () = self.cancel.cancelled() => {
                    let _ = s.socket.close(None).await;
                    return End::Detached;
                }
                _ = second.tick() => {
                    if s.keep_time() {
                        self.snapshots.send_replace(Arc::new(s.snapshot.clone()));
                    }
                }
                () = tokio::time::sleep_until(silence) => {
                    break End::Lost(format!("no word from the engine for {} s", (heartbeat * 3).as_secs()));
                }
                o = self.out.recv() => {
                    let Some(o) = o else {
                        let _ = s.socket.close(None).await;
                        return End::Detached;
                    };
                    next_id += 1;
                    let frame = match o {
                        Outgoing::Command(request, tx) => {
                            // Never to a company the console is not looking at.
                            if let Some(why) = elsewhere(&s, request.company.as_deref()) {
                                let _ = tx.send(Err(CommandError::unavailable(why)));
                                continue;
                            }
                            commands.insert(next_id, tx);
                            ClientFrame::Command { id: next_id, command: request.command }
                        }
                        Outgoing::Switch(id, tx) => {
                            match self.switch(&id).await {
                                Ok(new) => {
                                    let _ = s.socket.close(None).await;
                                    break End::Switched(Box::new(new), tx);
                                }
                                Err(e) => {
                                    let _ = tx.send(Err(e));
                                    continue;
                                }
                            }
                        }
                        Outgoing::Query(query, tx) => {
                            queries.insert(next_id, tx);
                            ClientFrame::Query { id: next_id, query }
                        }
                        Outgoing::Show(shown) => {
                            self.shown = shown;
                            ClientFrame::Show(shown)
                        }
                    };
                    if let Err(e) = send_frame(&mut s.socket, &frame).await {
                        break End::Lost(format!("connection lost: {e}"));
                    }
                }
                f = next_frame(&mut s.socket, &mut s.unpacker, &self.received) => {
                    heard = tokio::time::Instant::now();
                    let frame = match f {
                        Ok(f) => f,
                        Err(e) => break End::Lost(e),
                    };
                    // A view that arrived brought the clock along: the next tick of
                    // our own is a second from now (no extra frame while deltas flow).
                    if matches!(frame, ServerFrame::Delta { .. } | ServerFrame::Snapshot { .. }) {
                        second.reset();
                    }
                    if let Err(e) = self.take(&mut s, frame, &mut commands, &mut queries).await {
                        break End::Lost(e);
                    }
                }
            }
        };
        // What was asked and not answered: say so, never leave it waiting.
        for (_, tx) in commands {
            let _ = tx.send(Err(lost_reply()));
        }
        for (_, tx) in queries {
            let _ = tx.send(Err(CommandError::unavailable(
                "the connection to the engine dropped",
            )));
        }
        end
    }

    /// A connection to company `id`, said hello to, holding its first snapshot; the
    /// error says why not.
    async fn switch(&mut self, id: &str) -> Result<Session, String> {
        let endpoint = (self.resolve)()?;
        let new = open(&endpoint, Some(id), &self.hello, &self.received)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(c) = &new.welcome.company
            && c.id != id
        {
            return Err(format!("the engine gave company {:?}, not {id:?}", c.id));
        }
        self.watching = Some(id.to_owned());
        Ok(new)
    }

    async fn take(
        &self,
        s: &mut Session,
        frame: ServerFrame,
        commands: &mut HashMap<u64, oneshot::Sender<Reply>>,
        queries: &mut HashMap<u64, oneshot::Sender<QueryReply>>,
    ) -> Result<(), String> {
        match frame {
            ServerFrame::Snapshot { seq, snapshot } => {
                s.whole(seq, *snapshot);
                self.snapshots.send_replace(Arc::new(s.snapshot.clone()));
            }
            ServerFrame::Delta { seq, changes } => {
                if seq != s.seq + 1 {
                    return Err(format!("out of step: delta {seq} after {}", s.seq));
                }
                attach::apply(&mut s.doc, &changes).map_err(|e| e.to_string())?;
                s.keep_time();
                s.snapshot = serde_json::from_value(s.doc.clone())
                    .map_err(|e| format!("bad snapshot: {e}"))?;
                s.seq = seq;
                self.snapshots.send_replace(Arc::new(s.snapshot.clone()));
            }
            ServerFrame::Reply { id, reply } => {
                if let Some(tx) = commands.remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            ServerFrame::Answer { id, reply } => {
                if let Some(tx) = queries.remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            ServerFrame::Consoles { consoles } => {
                self.consoles.send_replace(consoles);
            }
            ServerFrame::Companies { companies } => {
                self.rows.send_replace(companies);
            }
            ServerFrame::Ping => {
                send_frame(&mut s.socket, &ClientFrame::Pong).await?;
            }
            ServerFrame::Refused { message } => return Err(format!("refused: {message}")),
            ServerFrame::Welcome(_) | ServerFrame::Event { .. } | ServerFrame::Pong => {}
        }
        Ok(())
    }
}

/// Why a command for `company` must not go on connection `s` (another company's), or
/// None when it may.
fn elsewhere(s: &Session, company: Option<&str>) -> Option<String> {
    let to = s.welcome.company.as_ref()?;
    let asked = company?;
    (asked != to.id).then(|| {
        format!(
            "not sent: this connection shows company {:?}, the command was for {asked:?}",
            to.id
        )
    })
}

/// The hello of a console run by this process's user (`SSH_CONNECTION`/`SSH_CLIENT`
/// name the SSH address), drawing at most `max_fps` frames a second.
pub fn hello(read_only: bool, max_fps: u32) -> Hello {
    let ssh = std::env::var("SSH_CONNECTION")
        .or_else(|_| std::env::var("SSH_CLIENT"))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned));
    let user = crate::protocol::operator();
    let user = user.split('@').next().unwrap_or(&user).to_owned();
    Hello {
        protocol: PROTOCOL_VERSION,
        client: env!("CARGO_PKG_VERSION").into(),
        user,
        ssh,
        read_only,
        max_fps: Some(max_fps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_engine_clock_is_kept_in_whole_seconds_from_the_snapshot() {
        let clock = EngineClock::starting(1_796_123_535_000);
        assert_eq!(clock.now_ms(), 1_796_123_535_000);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(clock.now_ms(), 1_796_123_535_000);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(clock.now_ms(), 1_796_123_536_000);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now_ms(), 1_796_127_136_000);
    }
}
