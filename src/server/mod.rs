//! The engine's HTTP server: Stripe webhooks, `/health`, `/metrics`, the control API
//! and its WebSocket feeds (DESIGN.md §4). It serves an engine through its
//! [`Frontend`]: it hands work to the engine as commands, verified events and queries,
//! and reads the engine's snapshots; it never touches SQL nor the pipelines.

pub mod api;
pub mod auth;
pub mod companies;
pub mod conn;
pub mod console;
pub mod local;
pub mod metrics;
pub mod webhook;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret, TokenConfig};
use crate::engine::{Frontend, IngestError, Ingested, VerifiedEvent};
use crate::protocol::{Mode, Phase, Snapshot};

/// What the server needs besides the engine: who may call it, which host names it
/// answers to, and how Stripe's webhooks are verified.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `server.tokens`.
    pub tokens: Vec<TokenConfig>,
    /// Host names (besides IP literals and `localhost`) the engine answers to
    /// (`server.allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    /// `server.ws_heartbeat_secs`.
    pub ws_heartbeat: Duration,
    /// The token of the data dir's control file (see [`local`]), for the CLI on this
    /// machine; None: no local access.
    pub local_token: Option<Secret>,
    /// Where the server publishes the consoles attached to it (the hosting console
    /// follows it; see [`ws::Registry::consoles`]).
    pub consoles: tokio::sync::watch::Sender<Vec<crate::protocol::AttachedConsole>>,
    /// Connection cap and timeouts (`server.max_connections`, `…_timeout_secs`).
    pub limits: conn::Limits,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        Ok(Settings {
            tokens: cfg.server.tokens.clone(),
            allowed_hosts: cfg.server.allowed_hosts.clone(),
            ws_heartbeat: Duration::from_secs(cfg.server.ws_heartbeat_secs),
            local_token: None,
            consoles: tokio::sync::watch::Sender::new(Vec::new()),
            limits: conn::Limits {
                max_connections: cfg.server.max_connections,
                max_websockets: cfg.server.max_websockets,
                header_timeout: Duration::from_secs(cfg.server.header_timeout_secs),
                body_timeout: Duration::from_secs(cfg.server.body_timeout_secs),
                idle_timeout: Duration::from_secs(cfg.server.idle_timeout_secs),
            },
        })
    }
}

/// One company's routes: its engine, its webhook's secret, and the server's shared
/// [`Control`].
#[derive(Clone)]
pub struct ServerState {
    /// The engine served.
    pub engine: Frontend,
    /// Its company's id ("default" for one company).
    pub company: String,
    pub webhook_secret: Secret,
    pub tolerance_secs: u64,
    pub control: Arc<Control>,
}

/// The server's own state: callers, feeds, host names.
pub struct Control {
    pub auth: auth::Auth,
    pub ws: ws::Registry,
    pub heartbeat: Duration,
    /// Host names (besides IP literals and `localhost`) the engine answers to
    /// (`server.allowed_hosts`).
    pub hosts: Vec<String>,
    /// What the server's connections did (shown in `/health`).
    pub connections: Arc<conn::ConnStats>,
    /// WebSockets held at once, at most (part of the connection cap).
    pub max_websockets: usize,
    /// Every company served, in the config's order (those that did not start too).
    pub companies: Vec<companies::CompanyRoute>,
}

impl Control {
    pub fn new(settings: Settings, companies: Vec<companies::CompanyRoute>) -> Self {
        Control {
            auth: match settings.local_token {
                Some(token) => auth::Auth::new(settings.tokens).with_local(token),
                None => auth::Auth::new(settings.tokens),
            },
            ws: ws::Registry::new(settings.consoles),
            heartbeat: settings.ws_heartbeat,
            hosts: settings.allowed_hosts,
            connections: Arc::default(),
            max_websockets: settings.limits.websockets(),
            companies,
        }
    }
}

/// Milliseconds since the epoch (the feeds' stamps, the API's quota windows).
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Largest body the control API reads.
pub const API_BODY_LIMIT: usize = 64 * 1024;

/// Serves the `companies`' engines on `listener` until `cancel`, then lets open requests
/// finish (see [`conn`] for the connection cap and timeouts, [`companies`] for how a
/// request finds its company).
pub async fn serve(
    listener: tokio::net::TcpListener,
    companies: Vec<companies::CompanyRoute>,
    settings: Settings,
    cancel: CancellationToken,
) {
    let files = conn::open_files_limit();
    let limits = settings.limits.within(files);
    if limits.max_connections < settings.limits.max_connections {
        tracing::warn!(
            "server.max_connections {} lowered to {}: the process may open {} files",
            settings.limits.max_connections,
            limits.max_connections,
            files.unwrap_or_default()
        );
    }
    let control = Arc::new(Control::new(Settings { limits, ..settings }, companies));
    let stats = control.connections.clone();
    conn::serve(listener, companies::router(control), limits, stats, cancel).await;
}

pub fn router(state: ServerState) -> Router {
    let api = Router::new()
        .route("/resilience/circuit-breakers", get(api::breakers))
        .route(
            "/resilience/circuit-breakers/{service}",
            get(api::breaker).post(api::set_breaker),
        )
        .route("/compliance", get(api::compliance))
        .route("/compliance/retry-failed", post(api::retry_failed))
        .route("/compliance/{id}/retry", post(api::retry_invoice))
        .route("/catalog/jobs/{product}/retry", post(api::retry_job))
        .route("/reconciliation", get(api::reconciliation))
        .route("/reconciliation/resync-drifted", post(api::resync_drifted))
        .route("/reconciliation/{product}/resync", post(api::resync_item))
        .route("/cache/invalidate", post(api::invalidate))
        .route("/thresholds", get(api::thresholds).put(api::set_thresholds))
        .route("/pipelines/{name}/{action}", post(api::pipeline))
        .route("/events", get(api::events))
        .route("/chain/{key}", get(api::chain))
        .route("/alerts", get(api::alerts))
        .route("/companies", get(companies::list))
        .route("/commands", post(api::command))
        .route("/alerts/ack", post(api::ack_alerts))
        .route("/alerts/silence", post(api::silence_alerts))
        .route("/anomalies", get(api::anomalies))
        .route("/profile", get(api::profile))
        .route("/snapshot", get(api::snapshot_json))
        .route("/bundle", get(api::bundle))
        .route("/ws/connections", get(ws::connections))
        .route("/ws/notifications", get(ws::subscribe::<false>))
        .route("/ws/alerts", get(ws::subscribe::<true>))
        .route("/ws/console", get(console::attach))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(API_BODY_LIMIT))
        // Inside the guard: a request the company routing refused is answered only to
        // a caller with a token.
        .layer(axum::middleware::from_fn(companies::refused))
        // `layer`, not `route_layer`: unknown paths are behind the token too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::guard,
        ));
    // What a web page could read by DNS rebinding checks the Host header first; the
    // webhook does not (Stripe names the public host, and the signature guards it).
    let local = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .nest("/api/v1", api)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            host_guard,
        ));
    Router::new()
        .route("/webhooks/stripe", post(stripe_webhook))
        .merge(local)
        .with_state(state)
}

/// Whether a `Host` header names this engine: an IP literal, `localhost`, or a name
/// listed in `server.allowed_hosts` (no header at all: not a browser).
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host.map(str::trim) else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

async fn host_guard(
    State(st): State<ServerState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if host_allowed(host.as_deref(), &st.control.hosts) {
        return next.run(req).await;
    }
    let shown: String = host.unwrap_or_default().chars().take(60).collect();
    api::error(
        StatusCode::MISDIRECTED_REQUEST,
        "unknown_host",
        format!(
            "Host {shown:?} is not a name of this engine: use its address, localhost, \
             or list the name in server.allowed_hosts"
        ),
    )
}

/// `GET /metrics`: this company's series, or every company's when the routing asked for
/// all ([`companies::AllCompanies`]); each labelled with its company.
async fn prometheus(
    State(state): State<ServerState>,
    all: Option<axum::Extension<companies::AllCompanies>>,
) -> Response {
    let snaps: Vec<(String, Arc<Snapshot>)> = if all.is_some() {
        state
            .control
            .companies
            .iter()
            .filter_map(|c| Some((c.id.clone(), c.engine.as_ref().ok()?.latest())))
            .collect()
    } else {
        vec![(state.company.clone(), state.engine.latest())]
    };
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&snaps),
    )
        .into_response()
}

/// The snapshot as JSON, for `GET /api/v1/snapshot` and `syncctl status --json`.
pub fn snapshot_value(s: &Snapshot) -> Value {
    let c = &s.catalog;
    let t = &s.telemetry;
    json!({
        "mode": match s.mode { Mode::Live => "live", Mode::Sandbox => "sandbox" },
        "health": t.health,
        "catalog": {
            "paused": c.paused,
            "synced": c.counts.synced, "queued": c.counts.queued, "in_flight": c.counts.in_flight,
            "failed": c.counts.failed, "rejected": c.counts.rejected,
            "workers": c.workers_target, "workers_min": c.workers_min, "workers_max": c.workers_max,
            "completed": c.completed, "errors": c.errors,
            "items_per_sec": t.items_per_sec,
        },
        "compliance": {
            "enabled": s.compliance.enabled,
            "paused": s.compliance.paused,
            "counts": s.compliance.counts.by_name(),
            "contingency": s.compliance.contingency.phase,
            "invoices_per_sec": t.invoices_per_sec,
        },
        "circuit_breakers": s.downstreams,
        "alerts": t.alerts,
        "anomalies": t.anomalies.iter().filter(|a| a.ended_ms.is_none()).collect::<Vec<_>>(),
        "cache": t.cache,
        "thresholds": t.thresholds.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "profile": s.profile,
    })
}

fn reject(state: &ServerState, status: StatusCode, message: &str) -> Response {
    state.engine.webhook_rejected();
    tracing::warn!("webhook rejected: {message}");
    (
        status,
        axum::Json(json!({ "error": { "message": message } })),
    )
        .into_response()
}

/// `POST /webhooks/stripe`: verify on the raw body, then hand the event to the engine,
/// which records its id and its effect in one transaction; a repeated id is
/// acknowledged and ignored.
async fn stripe_webhook(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(header) = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return reject(
            &state,
            StatusCode::BAD_REQUEST,
            "missing Stripe-Signature header",
        );
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(e) = webhook::verify(
        header,
        &body,
        state.webhook_secret.expose(),
        state.tolerance_secs,
        now,
    ) {
        return reject(&state, StatusCode::BAD_REQUEST, &e.to_string());
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return reject(
                &state,
                StatusCode::BAD_REQUEST,
                &format!("body is not JSON: {e}"),
            );
        }
    };
    let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
        return reject(&state, StatusCode::BAD_REQUEST, "event has no id or type");
    };
    let verified = VerifiedEvent {
        id: id.to_owned(),
        kind: kind.to_owned(),
        created: event["created"].as_i64().unwrap_or(now),
        object: event["data"]["object"].clone(),
    };
    // One way in for every fact (webhook, events reconciliation, listing): the engine
    // routes it, writes its effect with its id, and counts it.
    match state.engine.ingest(verified).await {
        Ok(Ingested::New) => (
            StatusCode::OK,
            axum::Json(json!({ "received": true, "handled": true })),
        )
            .into_response(),
        Ok(Ingested::Duplicate) => (
            StatusCode::OK,
            axum::Json(json!({ "received": true, "duplicate": true })),
        )
            .into_response(),
        Ok(Ingested::Ignored(reason)) => (
            StatusCode::OK,
            axum::Json(json!({ "received": true, "ignored": true, "reason": reason })),
        )
            .into_response(),
        // Not stored: a 5xx makes Stripe deliver it again later.
        Err(e @ (IngestError::NotNow(_) | IngestError::Store)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": { "message": e.to_string() } })),
        )
            .into_response(),
        Err(IngestError::Failed) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET /health`: the engine's one health judgement — the snapshot's, which the console
/// and `syncctl status` show too — with the queues. It never reads the store itself (a
/// second, diverging verdict): a store that cannot be read or written is a check of that
/// judgement. 503 when the status is down.
async fn health(State(state): State<ServerState>) -> Response {
    let snap = state.engine.latest();
    let webhooks = state.engine.webhooks();
    let h = &snap.telemetry.health;
    let c = &snap.catalog;
    let counts = &c.counts;
    let code = if h.status == "down" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = axum::Json(json!({
        "status": h.status,
        "score": h.score,
        "level": h.level,
        "checks": h.checks,
        "problems": h.problems,
        "errors": h.errors,
        // Worded for HTTP clients; the same as data (component, reason, command) in
        // `recommended`.
        "recommendations": h.recommendations.iter().map(api::recommendation_line).collect::<Vec<_>>(),
        "recommended": h.recommendations.iter().map(|r| json!({
            "component": r.component,
            "reason": r.reason,
            "command": r.action.as_ref().map(ToString::to_string),
            "action": r.action,
        })).collect::<Vec<_>>(),
        "queues": {
            "catalog": counts.queued,
            "dian": snap.compliance.enabled.then(|| snap.compliance.counts.waiting()),
        },
        "compliance": {
            "enabled": snap.compliance.enabled,
            "paused": snap.compliance.paused,
            "counts": snap.compliance.counts.by_name(),
            "contingency": snap.compliance.contingency.phase,
        },
        "alerts_firing": snap.telemetry.alerts.iter().filter(|a| a.phase == Phase::Firing).count(),
        "anomalies_open": snap.telemetry.open_anomalies,
        "mode": match snap.mode { Mode::Live => "live", Mode::Sandbox => "sandbox" },
        "version": env!("CARGO_PKG_VERSION"),
        "connections": state.control.connections.counts(),
        "warnings": h.warnings,
        "catalog": {
            "paused": c.paused,
            "synced": counts.synced, "queued": counts.queued, "in_flight": counts.in_flight,
            "failed": counts.failed, "rejected": counts.rejected, "products_seen": counts.products_seen,
            "full_sync": { "done": c.full_sync.done, "pages": c.full_sync.pages, "listed": c.full_sync.listed },
            "webhooks": {
                "accepted": webhooks.accepted,
                "duplicate": webhooks.duplicate,
                "ignored": webhooks.ignored,
                "rejected": webhooks.rejected,
            },
        },
    }));
    (code, body).into_response()
}
