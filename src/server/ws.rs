//! WebSocket feeds: `/api/v1/ws/notifications` (everything the engine reports: audit
//! entries, breaker transitions, alerts, anomalies) and `/api/v1/ws/alerts` (alert
//! notifications only). JSON text frames with a `type`; a heartbeat every 30 s;
//! `{"type":"ping"}` is answered with `{"type":"pong"}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::ServerState;
use super::api::Actor;
use crate::protocol::{AttachedConsole, EngineEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Feed {
    Notifications,
    Alerts,
    /// An attached console (see [`super::console`]).
    Console,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub id: u64,
    pub feed: Feed,
    /// The token's name.
    pub token: String,
    pub remote: String,
    pub connected_at_ms: i64,
    /// Frames sent.
    pub sent: u64,
    /// Bytes sent (consoles).
    pub bytes: u64,
    /// An attached console's person, as its hello named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<AttachedConsole>,
}

/// The open feeds, and the attached consoles as a watch every console (the one hosting
/// the engine too) follows.
pub struct Registry {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Connection>>,
    consoles: watch::Sender<Vec<AttachedConsole>>,
    /// WebSockets held now (see [`Registry::admit`]).
    held: Arc<std::sync::atomic::AtomicUsize>,
}

/// One WebSocket's place among those the server holds; freed when dropped.
pub struct WsSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for WsSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Registry {
    /// A registry publishing its attached consoles on `consoles`.
    pub fn new(consoles: watch::Sender<Vec<AttachedConsole>>) -> Self {
        Registry {
            next: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
            consoles,
            held: Arc::default(),
        }
    }

    /// A place for one more WebSocket, if fewer than `cap` are held (upgrading or
    /// open): each keeps a connection slot for as long as it lives, so they may take
    /// only part of the server's (`server.max_websockets`), never the slots `/health`
    /// and Stripe's webhooks need.
    pub fn admit(&self, cap: usize) -> Option<WsSlot> {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| WsSlot(self.held.clone()))
    }

    pub fn list(&self) -> Vec<Connection> {
        self.lock().values().cloned().collect()
    }

    /// The attached consoles, changing as they come and go.
    pub fn consoles(&self) -> watch::Receiver<Vec<AttachedConsole>> {
        self.consoles.subscribe()
    }

    fn publish_consoles(&self, open: &BTreeMap<u64, Connection>) {
        let now: Vec<AttachedConsole> = open.values().filter_map(|c| c.console.clone()).collect();
        self.consoles.send_if_modified(|list| {
            let changed = *list != now;
            *list = now;
            changed
        });
    }

    /// Registers an attached console; its number is `console.connection`.
    pub fn add_console(&self, console: &mut AttachedConsole, remote: SocketAddr) -> u64 {
        let id = self.add(Feed::Console, &console.token, remote);
        console.connection = id;
        let mut open = self.lock();
        if let Some(c) = open.get_mut(&id) {
            c.console = Some(console.clone());
        }
        self.publish_consoles(&open);
        id
    }

    /// Counts one frame of `bytes` sent on connection `id`.
    pub fn sent_bytes(&self, id: u64, bytes: usize) {
        if let Some(c) = self.lock().get_mut(&id) {
            c.sent += 1;
            c.bytes += bytes as u64;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Connection>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn add(&self, feed: Feed, token: &str, remote: SocketAddr) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(
            id,
            Connection {
                id,
                feed,
                token: token.to_owned(),
                remote: remote.to_string(),
                connected_at_ms: super::now_ms(),
                sent: 0,
                bytes: 0,
                console: None,
            },
        );
        id
    }

    fn sent(&self, id: u64) {
        if let Some(c) = self.lock().get_mut(&id) {
            c.sent += 1;
        }
    }

    pub fn remove(&self, id: u64) {
        let mut open = self.lock();
        if open.remove(&id).is_some_and(|c| c.console.is_some()) {
            self.publish_consoles(&open);
        }
    }
}

pub async fn connections(State(st): State<ServerState>) -> Response {
    let list = st.control.ws.list();
    axum::Json(json!({ "count": list.len(), "connections": list })).into_response()
}

/// `WS /api/v1/ws/notifications` (`ALERTS = false`) and `WS /api/v1/ws/alerts`.
pub async fn subscribe<const ALERTS: bool>(
    ws: WebSocketUpgrade,
    State(st): State<ServerState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Response {
    let feed = if ALERTS {
        Feed::Alerts
    } else {
        Feed::Notifications
    };
    let Some(slot) = st.control.ws.admit(st.control.max_websockets) else {
        return too_many(st.control.max_websockets);
    };
    // A feed takes only pings: nothing large is read from it.
    let max = super::console::MAX_CLIENT_FRAME;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            serve(socket, st, feed, actor, addr).await;
            drop(slot);
        })
}

/// The answer to a WebSocket over the cap: 503, try again later.
pub fn too_many(cap: usize) -> Response {
    let mut r = super::api::error(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "too_many_websockets",
        format!(
            "the engine holds {cap} WebSockets, as many as it may (server.max_websockets); close a console or feed, or raise the cap"
        ),
    );
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    r
}

/// The JSON frame for an event on a feed (None: not for this feed).
pub fn frame(feed: Feed, e: &EngineEvent) -> Option<Value> {
    match (feed, e) {
        (Feed::Console, _) => None,
        (_, EngineEvent::Alert(n)) => Some(json!({ "type": "alert", "alert": n })),
        (Feed::Alerts, _) => None,
        (_, EngineEvent::Audit(a)) => Some(json!({ "type": "audit", "entry": a })),
        (
            _,
            EngineEvent::Breaker {
                service,
                transition,
            },
        ) => Some(json!({
            "type": "breaker",
            "service": service,
            "from": transition.from,
            "to": transition.to,
            "reason": transition.reason,
        })),
        (_, EngineEvent::Anomaly(a)) => Some(json!({ "type": "anomaly", "anomaly": a })),
    }
}

async fn serve(socket: WebSocket, st: ServerState, feed: Feed, actor: Actor, addr: SocketAddr) {
    let id = st.control.ws.add(feed, &actor.caller.name, addr);
    let mut events = st.engine.events.subscribe();
    let (mut tx, mut rx) = socket.split();
    let heartbeat = st.control.heartbeat;
    let hello = {
        let snap = st.engine.latest();
        json!({
            "type": "hello",
            "feed": feed,
            "connection": id,
            "heartbeat_secs": heartbeat.as_secs_f64(),
            "active_alerts": snap.telemetry.alerts,
        })
    };
    let mut ok = tx
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_ok();
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    // Any frame from the client (a WebSocket client answers our pings by itself while
    // it reads) says it is there; one that stops reading is let go after as many
    // heartbeats as a silent console (a frame waits for it no longer either).
    let stall = heartbeat * (super::console::SILENT_BEATS + 1);
    let mut heard = tokio::time::Instant::now();
    let mut seq = 0u64;
    while ok {
        let out = tokio::select! {
            _ = beat.tick() => {
                if heard.elapsed() > stall {
                    tracing::info!("{feed:?} feed {id}: no answer for {stall:?}; dropped");
                    break;
                }
                let ping = tokio::time::timeout(stall, tx.send(Message::Ping(Vec::new().into())));
                if !matches!(ping.await, Ok(Ok(()))) {
                    break;
                }
                seq += 1;
                Some(json!({ "type": "heartbeat", "seq": seq, "at_ms": super::now_ms() }))
            }
            e = events.recv() => match e {
                Ok(e) => frame(feed, &e),
                Err(RecvError::Lagged(n)) => Some(json!({ "type": "lagged", "missed": n })),
                Err(RecvError::Closed) => break,
            },
            m = rx.next() => {
                heard = tokio::time::Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        match v.get("type").and_then(Value::as_str) {
                            Some("ping") => Some(json!({ "type": "pong", "at_ms": super::now_ms() })),
                            _ => Some(json!({ "type": "error", "message": "unknown message: send {\"type\":\"ping\"}" })),
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => None,
                }
            },
        };
        if let Some(v) = out {
            // A client that stops reading is let go once a frame waits as long as a
            // console may stay silent: it would hold its slot for ever.
            ok = match tokio::time::timeout(stall, tx.send(Message::Text(v.to_string().into())))
                .await
            {
                Ok(sent) => sent.is_ok(),
                Err(_) => {
                    tracing::info!("{feed:?} feed {id}: took no frame for {stall:?}; dropped");
                    false
                }
            };
            if ok {
                st.control.ws.sent(id);
            }
        }
    }
    st.control.ws.remove(id);
}
