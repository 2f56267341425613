//! The engine's HTTP server: Stripe webhooks, `/health`, `/metrics`, the control API
//! and its WebSocket feeds (DESIGN.md §4). It hands work to the engine as commands and
//! reads the engine's snapshots; it never touches SQL.

pub mod api;
pub mod auth;
pub mod local;
pub mod metrics;
pub mod webhook;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::engine::Mode;
use crate::engine::catalog::Catalog;
use crate::engine::ingest::{Ingested, NotNow};

#[derive(Clone)]
pub struct ServerState {
    pub catalog: Arc<Catalog>,
    pub compliance: Option<Arc<crate::engine::compliance::Compliance>>,
    pub webhook_secret: Secret,
    pub tolerance_secs: u64,
    pub mode: Mode,
    pub control: Arc<Control>,
}

/// What the API and the feeds need of the engine.
pub struct Control {
    pub commands: crate::engine::Commands,
    pub snapshot: watch::Receiver<Arc<crate::engine::Snapshot>>,
    pub events: broadcast::Sender<crate::engine::EngineEvent>,
    /// Read-only uses: the audit trail and the DIAN queue.
    pub store: crate::store::Store,
    pub auth: auth::Auth,
    pub ws: ws::Registry,
    pub heartbeat: std::time::Duration,
    /// Host names (besides IP literals and `localhost`) the engine answers to
    /// (`server.allowed_hosts`).
    pub hosts: Vec<String>,
}

/// Largest body the control API reads.
pub const API_BODY_LIMIT: usize = 64 * 1024;

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    cancel: CancellationToken,
) {
    let app = router(state);
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await
    {
        tracing::error!("engine server stopped: {e}");
    }
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
        .route("/cache/invalidate", post(api::invalidate))
        .route("/thresholds", get(api::thresholds).put(api::set_thresholds))
        .route("/pipelines/{name}/{action}", post(api::pipeline))
        .route("/events", get(api::events))
        .route("/alerts", get(api::alerts))
        .route("/alerts/ack", post(api::ack_alerts))
        .route("/alerts/silence", post(api::silence_alerts))
        .route("/anomalies", get(api::anomalies))
        .route("/profile", get(api::profile))
        .route("/snapshot", get(api::snapshot_json))
        .route("/ws/connections", get(ws::connections))
        .route("/ws/notifications", get(ws::subscribe::<false>))
        .route("/ws/alerts", get(ws::subscribe::<true>))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(API_BODY_LIMIT))
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

async fn prometheus(State(state): State<ServerState>) -> Response {
    let snap = state.control.snapshot.borrow().clone();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&snap),
    )
        .into_response()
}

/// The snapshot as JSON, for `GET /api/v1/snapshot` and `syncctl status --json`.
pub fn snapshot_value(s: &crate::engine::Snapshot) -> Value {
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
    state
        .catalog
        .metrics
        .webhooks_rejected
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!("webhook rejected: {message}");
    (
        status,
        axum::Json(json!({ "error": { "message": message } })),
    )
        .into_response()
}

/// `POST /webhooks/stripe`: verify on the raw body, then record the event id and its job
/// in one transaction; a repeated id is acknowledged and ignored.
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
    let created = event["created"].as_i64().unwrap_or(now);
    let catalog = state.catalog.clone();
    let (id, kind, object) = (
        id.to_owned(),
        kind.to_owned(),
        event["data"]["object"].clone(),
    );
    // One way in for every fact (webhook, events reconciliation, listing): the engine
    // routes it and writes its effect with its id.
    let result = tokio::task::spawn_blocking(move || {
        catalog.ingest_event(&id, &kind, created, &object, "webhook")
    })
    .await;
    let metrics = &state.catalog.metrics;
    match result {
        Ok(Ok(Ingested::New)) => {
            metrics.webhooks_accepted.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = &state.compliance
                && event["type"] == "invoice.paid"
            {
                c.metrics.webhooks.fetch_add(1, Ordering::Relaxed);
            }
            (
                StatusCode::OK,
                axum::Json(json!({ "received": true, "handled": true })),
            )
                .into_response()
        }
        Ok(Ok(Ingested::Duplicate)) => {
            metrics.webhooks_duplicate.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::OK,
                axum::Json(json!({ "received": true, "duplicate": true })),
            )
                .into_response()
        }
        Ok(Ok(Ingested::Ignored(reason))) => {
            metrics.webhooks_ignored.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::OK,
                axum::Json(json!({ "received": true, "ignored": true, "reason": reason })),
            )
                .into_response()
        }
        // Not stored: a 5xx makes Stripe deliver it again later.
        Ok(Err(e)) => {
            let message = match e.downcast_ref::<NotNow>() {
                Some(why) => format!("not taken now: {why}; retry"),
                None => {
                    tracing::error!("webhook not stored: {e:#}");
                    "could not store the event; retry".to_owned()
                }
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "error": { "message": message } })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!("webhook task failed: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /health`: the engine's one health judgement — the snapshot's, which the console
/// and `syncctl status` show too — with the queues. It never reads the store itself (a
/// second, diverging verdict): a store that cannot be read or written is a check of that
/// judgement. 503 when the status is down.
async fn health(State(state): State<ServerState>) -> Response {
    let snap = state.control.snapshot.borrow().clone();
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
        "alerts_firing": snap.telemetry.alerts.iter().filter(|a| a.phase == crate::telemetry::alerts::Phase::Firing).count(),
        "anomalies_open": snap.telemetry.open_anomalies,
        "mode": match state.mode { Mode::Live => "live", Mode::Sandbox => "sandbox" },
        "version": env!("CARGO_PKG_VERSION"),
        "warnings": h.warnings,
        "catalog": {
            "paused": c.paused,
            "synced": counts.synced, "queued": counts.queued, "in_flight": counts.in_flight,
            "failed": counts.failed, "rejected": counts.rejected, "products_seen": counts.products_seen,
            "full_sync": { "done": c.full_sync.done, "pages": c.full_sync.pages, "listed": c.full_sync.listed },
            "webhooks": {
                "accepted": state.catalog.metrics.webhooks_accepted.load(Ordering::Relaxed),
                "duplicate": state.catalog.metrics.webhooks_duplicate.load(Ordering::Relaxed),
                "ignored": state.catalog.metrics.webhooks_ignored.load(Ordering::Relaxed),
                "rejected": state.catalog.metrics.webhooks_rejected.load(Ordering::Relaxed),
            },
        },
    }));
    (code, body).into_response()
}
