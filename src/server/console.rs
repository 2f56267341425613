//! `WS /api/v1/ws/console`: attached consoles (the protocol is in
//! [`crate::protocol::attach`]). Bearer auth as the other feeds; the console's hello
//! names its person; then the whole snapshot, and after each publish what changed.
//! Commands and queries are answered to the console that sent them, as the sender's
//! role allows: a viewer token or a console attached `--read-only` sends its commands
//! as a viewer, and the engine refuses them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::ServerState;
use super::api::Actor;
use crate::protocol::attach::{self, DEFAULT_FPS, Packer, check_version, diff};
use crate::protocol::{
    AttachedConsole, ClientFrame, CommandError, CompanyRow, CompanyTag, EngineEvent, Hello,
    PROTOCOL_VERSION, Pacer, Query, QuotaMeter, Request, Role, ServerFrame, Shown, Snapshot,
    Welcome,
};

/// How long a console has to send its hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// The console heartbeat: at most this, or the configured feed heartbeat if shorter.
const MAX_HEARTBEAT: Duration = Duration::from_secs(5);
/// A console silent for this many heartbeats is taken for gone.
pub(super) const SILENT_BEATS: u32 = 3;

/// How long a frame may wait for a console to take it before the console is taken
/// for gone: as long as it may stay silent.
fn stall_after(heartbeat: Duration) -> Duration {
    heartbeat.min(MAX_HEARTBEAT) * (SILENT_BEATS + 1)
}

/// The largest frame a console may send (a command, a query, its hello: well under a
/// kilobyte); a larger one closes the connection unread.
pub(super) const MAX_CLIENT_FRAME: usize = 64 << 10;
/// Queries of one console asked and not yet answered to it; more are refused at once
/// with why (each answer waits in memory until the console takes it).
const QUERIES_IN_FLIGHT: usize = 8;

pub async fn attach(
    ws: WebSocketUpgrade,
    State(st): State<ServerState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Response {
    let Some(slot) = st.control.ws.admit(st.control.max_websockets) else {
        return super::ws::too_many(st.control.max_websockets);
    };
    ws.max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            serve(socket, st, actor, addr).await;
            drop(slot);
        })
}

type Tx = SplitSink<WebSocket, Message>;

/// Sends one frame as plain JSON text (a refusal, before any stream began).
async fn send_plain(tx: &mut Tx, frame: &ServerFrame) {
    if let Ok(text) = String::from_utf8(attach::encode(frame)) {
        let _ = tx.send(Message::Text(text.into())).await;
    }
}

/// How the audit trail names an attached console's person: the OS user and SSH
/// address its hello gave, and the token it holds (the control file's token is this
/// machine's own operator, named as the CLI names it).
fn actor_name(hello: &Hello, token: &str, local: bool, addr: SocketAddr) -> String {
    let user = super::local::actor_from_header(&hello.user).unwrap_or_else(|| "unknown".into());
    let at = hello
        .ssh
        .as_deref()
        .and_then(super::local::actor_from_header);
    match (local, at) {
        (true, Some(at)) => format!("{user}@{at}"),
        (true, None) => user,
        (false, Some(at)) => format!("{user}@{at} via {token}"),
        (false, None) => format!("{user}@{} via {token}", addr.ip()),
    }
}

async fn read_hello(
    rx: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Result<Hello, String> {
    let first = tokio::time::timeout(HELLO_WITHIN, rx.next())
        .await
        .map_err(|_| "no hello within 10 s".to_owned())?;
    let frame: ClientFrame = match first {
        Some(Ok(Message::Text(t))) => attach::decode(t.as_bytes())?,
        Some(Ok(Message::Binary(b))) => attach::decode(&b)?,
        _ => return Err("the console left before its hello".into()),
    };
    match frame {
        ClientFrame::Hello(h) => {
            check_version(h.protocol, "console", "engine")?;
            Ok(h)
        }
        _ => Err(format!(
            "the first frame must be a hello (console protocol {PROTOCOL_VERSION})"
        )),
    }
}

async fn serve(socket: WebSocket, st: ServerState, actor: Actor, addr: SocketAddr) {
    let (mut tx, mut rx) = socket.split();
    let hello = match read_hello(&mut rx).await {
        Ok(h) => h,
        Err(message) => {
            tracing::info!("console from {} refused: {message}", addr.ip());
            send_plain(&mut tx, &ServerFrame::Refused { message }).await;
            let _ = tx.send(Message::Close(None)).await;
            return;
        }
    };
    let role = if hello.read_only {
        Role::Viewer
    } else {
        actor.caller.role
    };
    let name = actor_name(&hello, &actor.caller.name, actor.caller.local, addr);
    let mut me = AttachedConsole {
        connection: 0,
        token: actor.caller.name.clone(),
        user: super::local::actor_from_header(&hello.user).unwrap_or_else(|| "unknown".into()),
        ssh: hello
            .ssh
            .as_deref()
            .and_then(super::local::actor_from_header),
        remote: addr.to_string(),
        role,
        since_ms: super::now_ms(),
    };
    let id = st.control.ws.add_console(&mut me, addr);
    tracing::info!("console attached: {} (connection {id})", me.label());
    let mut session = Session {
        st: &st,
        id,
        name,
        role,
        caller: actor.caller,
        packer: Packer::default(),
        max_fps: hello.max_fps.unwrap_or(DEFAULT_FPS).clamp(1, 60),
        shown: Shown::default(),
        clock: None,
        stall: stall_after(st.control.heartbeat),
        queries: AtomicUsize::new(0),
    };
    session.run(&mut tx, &mut rx).await;
    st.control.ws.remove(id);
    tracing::info!("console detached: {} (connection {id})", me.label());
}

/// With several companies: each one's row, sent at once and then at most once a second
/// while one changes.
struct CompanyFeed {
    meters: Vec<QuotaMeter>,
    /// The rows sent last (None: one company, nothing to send).
    last: Option<Vec<CompanyRow>>,
    tick: tokio::time::Interval,
}

impl CompanyFeed {
    fn new(session: &Session<'_>) -> Self {
        let mut meters = Vec::new();
        let last = session.company_rows(&mut meters);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        CompanyFeed { meters, last, tick }
    }

    /// The rows as a frame.
    fn frame(&self) -> Option<ServerFrame> {
        self.last
            .clone()
            .map(|companies| ServerFrame::Companies { companies })
    }

    /// The rows now, when they changed.
    fn next(&mut self, session: &Session<'_>) -> Option<ServerFrame> {
        let now = session.company_rows(&mut self.meters);
        if now == self.last {
            return None;
        }
        self.last = now;
        self.frame()
    }
}

struct Session<'a> {
    st: &'a ServerState,
    id: u64,
    /// How the audit trail names this console's actions.
    name: String,
    role: Role,
    caller: super::auth::Caller,
    /// This connection's compressed stream.
    packer: Packer,
    /// Deltas a second, on average: the console draws no faster.
    max_fps: u32,
    /// What the console shows of the parts sent only on demand.
    shown: Shown,
    /// The engine clock the console was sent in its snapshot (it keeps time itself).
    clock: Option<i64>,
    /// How long a frame may wait for the console to take it: as long as the console
    /// may stay silent.
    stall: Duration,
    /// Its queries asked and not yet sent their answer (an answer waits in memory
    /// until the console takes it).
    queries: AtomicUsize,
}

impl Session<'_> {
    /// Sends one frame on the compressed stream; false when the console is gone, or
    /// does not take the frame within [`Session::stall`] (it stopped reading: while
    /// this waits nothing else of the connection runs, its heartbeat included).
    async fn send(&mut self, tx: &mut Tx, frame: &ServerFrame) -> bool {
        let Ok(bytes) = self.packer.pack(frame) else {
            return false;
        };
        let n = bytes.len();
        match tokio::time::timeout(self.stall, tx.send(Message::Binary(bytes.into()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                tracing::info!(
                    "console {}: took no frame for {:?}; dropped",
                    self.id,
                    self.stall
                );
                return false;
            }
        }
        self.st.control.ws.sent_bytes(self.id, n);
        true
    }

    /// The welcome, the whole view and who is attached; the view sent, or None when the
    /// console is gone.
    async fn greet(&mut self, tx: &mut Tx, heartbeat: Duration, first: &Snapshot) -> Option<Value> {
        let welcome = ServerFrame::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            engine: env!("CARGO_PKG_VERSION").into(),
            connection: self.id,
            heartbeat_secs: heartbeat.as_secs_f64(),
            role: self.role,
            actor: self.name.clone(),
            company: Some(self.company_tag()),
            companies: self
                .st
                .control
                .companies
                .iter()
                .map(|c| CompanyTag::new(&c.id, &c.name))
                .collect(),
        });
        let shown = self.view(first);
        let snapshot = ServerFrame::Snapshot {
            seq: 1,
            snapshot: Box::new(serde_json::from_value(shown.clone()).unwrap_or_default()),
        };
        let listed = self.st.control.ws.consoles().borrow().clone();
        (self.send(tx, &welcome).await
            && self.send(tx, &snapshot).await
            && self
                .send(tx, &ServerFrame::Consoles { consoles: listed })
                .await)
            .then_some(shown)
    }

    /// The company this connection shows and acts on.
    fn company_tag(&self) -> CompanyTag {
        let c = &self.st.company;
        let name = self
            .st
            .control
            .companies
            .iter()
            .find(|r| r.id == *c)
            .map_or(c.as_str(), |r| r.name.as_str());
        CompanyTag::new(c, name)
    }

    /// Every company's row now (None with one company: no selector, no rows).
    fn company_rows(&self, meters: &mut Vec<QuotaMeter>) -> Option<Vec<CompanyRow>> {
        let companies = &self.st.control.companies;
        if companies.len() < 2 {
            return None;
        }
        let now: Vec<_> = companies
            .iter()
            .map(|c| {
                let tag = CompanyTag::new(&c.id, &c.name);
                (
                    tag,
                    c.engine.as_ref().map(|e| e.latest()).map_err(Clone::clone),
                )
            })
            .collect();
        Some(crate::protocol::companies::rows(
            &now,
            meters,
            crate::protocol::companies::wall_ms(),
        ))
    }

    async fn run(&mut self, tx: &mut Tx, rx: &mut futures_util::stream::SplitStream<WebSocket>) {
        let heartbeat = self.st.control.heartbeat.min(MAX_HEARTBEAT);
        let mut snapshots = self.st.engine.snapshot.clone();
        let mut consoles = self.st.control.ws.consoles();
        consoles.borrow_and_update();
        let first = snapshots.borrow_and_update().clone();
        let Some(mut shown) = self.greet(tx, heartbeat, &first).await else {
            return;
        };
        // The console keeps the engine's clock from the snapshot: never in a delta.
        self.clock = attach::clock_ms(&shown);
        let mut seq = 1;
        let mut events = self.st.engine.events.subscribe();
        // Replies and answers come back here from the tasks awaiting them.
        let (back_tx, mut back) = mpsc::unbounded_channel::<ServerFrame>();
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut silent = 0u32;
        // A change waits for its turn: the console draws no faster (but a change
        // between two regular ones, as an operator's action, goes at once).
        let mut pace = Pacer::new(self.max_fps, tokio::time::Instant::now());
        let mut pending = false;
        let mut feed = CompanyFeed::new(self);
        if let Some(first) = feed.frame()
            && !self.send(tx, &first).await
        {
            return;
        }
        loop {
            let out = tokio::select! {
                _ = feed.tick.tick(), if feed.last.is_some() => match feed.next(self) {
                    Some(frame) => frame,
                    None => continue,
                },
                changed = snapshots.changed(), if !pending => {
                    if changed.is_err() {
                        break;
                    }
                    pending = true;
                    continue;
                }
                () = tokio::time::sleep_until(pace.next_at()), if pending => {
                    pending = false;
                    let snap = snapshots.borrow_and_update().clone();
                    let now = self.view(&snap);
                    let changes = diff(&shown, &now);
                    shown = now;
                    if changes.is_empty() {
                        continue;
                    }
                    pace.sent(tokio::time::Instant::now());
                    seq += 1;
                    ServerFrame::Delta { seq, changes }
                }
                changed = consoles.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    ServerFrame::Consoles { consoles: consoles.borrow_and_update().clone() }
                }
                e = events.recv() => match e {
                    // Audit entries reach the console in the snapshot already.
                    Ok(EngineEvent::Audit(_)) | Err(RecvError::Lagged(_)) => continue,
                    Ok(event) => ServerFrame::Event { event },
                    Err(RecvError::Closed) => break,
                },
                Some(frame) = back.recv() => {
                    if matches!(frame, ServerFrame::Answer { .. }) {
                        self.queries.fetch_sub(1, Ordering::Relaxed);
                    }
                    frame
                }
                _ = beat.tick() => {
                    silent += 1;
                    if silent > SILENT_BEATS {
                        tracing::info!("console {}: silent for {silent} heartbeats; dropped", self.id);
                        break;
                    }
                    ServerFrame::Ping
                }
                m = rx.next() => {
                    silent = 0;
                    match m {
                        Some(Ok(Message::Text(t))) if self.shows(t.as_bytes()) => {
                            // What it shows changed: the next delta brings (or drops) it.
                            pending = true;
                            continue;
                        }
                        Some(Ok(Message::Text(t))) => match self.take(t.as_bytes(), &back_tx) {
                            Some(f) => f,
                            None => continue,
                        },
                        Some(Ok(Message::Binary(b))) => match self.take(&b, &back_tx) {
                            Some(f) => f,
                            None => continue,
                        },
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    }
                }
            };
            if !self.send(tx, &out).await {
                break;
            }
        }
    }

    /// The snapshot as this console is sent it: without the parts it does not show.
    fn view(&self, snap: &crate::protocol::Snapshot) -> Value {
        let mut v = serde_json::to_value(snap).unwrap_or(Value::Null);
        self.shown.strip(&mut v);
        if let Some(ms) = self.clock {
            attach::set_clock_ms(&mut v, ms);
        }
        v
    }

    /// Takes a [`ClientFrame::Show`]: true when `bytes` was one.
    fn shows(&mut self, bytes: &[u8]) -> bool {
        match attach::decode::<ClientFrame>(bytes) {
            Ok(ClientFrame::Show(shown)) => {
                self.shown = shown;
                true
            }
            _ => false,
        }
    }

    /// Takes one frame from the console; what to answer at once (a pong, the error of
    /// a frame that does not read), or None (the answer comes later on `back`).
    fn take(&self, bytes: &[u8], back: &mpsc::UnboundedSender<ServerFrame>) -> Option<ServerFrame> {
        let frame: ClientFrame = match attach::decode(bytes) {
            Ok(f) => f,
            Err(e) => return self.unreadable(bytes, &e),
        };
        match frame {
            ClientFrame::Ping => Some(ServerFrame::Pong),
            ClientFrame::Pong | ClientFrame::Hello(_) | ClientFrame::Show(_) => None,
            ClientFrame::Command { id, command } => {
                let reply = match self.st.control.auth.admit(&self.caller, super::now_ms()) {
                    Err(_) => {
                        return Some(ServerFrame::Reply {
                            id,
                            reply: Err(CommandError::unavailable(format!(
                                "token {:?} is over its rate limit; try again in a minute",
                                self.caller.name
                            ))),
                        });
                    }
                    Ok(_) => {
                        let request = Request::new(self.name.clone(), command).with_role(self.role);
                        let engine = self.st.engine.clone();
                        async move { engine.request(request).await }
                    }
                };
                let back = back.clone();
                tokio::spawn(async move {
                    let reply = reply.await;
                    let _ = back.send(ServerFrame::Reply { id, reply });
                });
                None
            }
            ClientFrame::Query { id, mut query } => {
                // A bundle is taken by whom this connection authenticated, whatever
                // the frame says.
                if let Query::Bundle { actor, .. } = &mut query {
                    actor.clone_from(&self.name);
                }
                if self.queries.load(Ordering::Relaxed) >= QUERIES_IN_FLIGHT {
                    return Some(ServerFrame::Answer {
                        id,
                        reply: Err(CommandError::unavailable(format!(
                            "{QUERIES_IN_FLIGHT} queries of this console are in flight; \
                             ask again once they are answered"
                        ))),
                    });
                }
                self.queries.fetch_add(1, Ordering::Relaxed);
                let engine = self.st.engine.clone();
                let back = back.clone();
                tokio::spawn(async move {
                    let reply = engine.query(query).await;
                    let _ = back.send(ServerFrame::Answer { id, reply });
                });
                None
            }
        }
    }

    /// A frame that does not read: a command's reply naming why, when its id can be
    /// read, else a refusal that leaves the connection open.
    fn unreadable(&self, bytes: &[u8], why: &str) -> Option<ServerFrame> {
        tracing::debug!("console {}: unreadable frame: {why}", self.id);
        let raw: Value = attach::decode(bytes).unwrap_or(Value::Null);
        let error = CommandError::invalid("frame", why.chars().take(300).collect::<String>());
        match (
            raw.get("type").and_then(Value::as_str),
            raw.get("id").and_then(Value::as_u64),
        ) {
            (Some("command"), Some(id)) => Some(ServerFrame::Reply {
                id,
                reply: Err(error),
            }),
            (Some("query"), Some(id)) => Some(ServerFrame::Answer {
                id,
                reply: Err(error),
            }),
            _ => None,
        }
    }
}
