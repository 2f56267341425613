//! The engine's HTTP server: Stripe webhooks and health. (The control API, metrics and
//! WebSocket feeds join it later.) It hands work to the engine and never touches SQL.

pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::engine::Mode;
use crate::engine::catalog::Catalog;

#[derive(Clone)]
pub struct ServerState {
    pub catalog: Arc<Catalog>,
    pub compliance: Option<Arc<crate::engine::compliance::Compliance>>,
    pub webhook_secret: Secret,
    pub tolerance_secs: u64,
    pub mode: Mode,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/webhooks/stripe", post(stripe_webhook))
        .route("/health", get(health))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
    {
        tracing::error!("engine server stopped: {e}");
    }
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
    let compliance = state.compliance.clone().filter(|_| kind == "invoice.paid");
    let handled = compliance.is_some()
        || crate::engine::catalog::job_for_event(&kind, created, &object).is_some();
    let result = tokio::task::spawn_blocking(move || match compliance {
        // A paid invoice becomes a compliance record, with its event id, in one step.
        Some(c) => {
            let new = c.ingest(&object, Some((&id, &kind, "webhook")))?;
            if new {
                c.metrics.webhooks.fetch_add(1, Ordering::Relaxed);
            }
            // A known event or an invoice already listed: a duplicate either way.
            Ok(new)
        }
        None => catalog.ingest_event(&id, &kind, created, &object, "webhook"),
    })
    .await;
    match result {
        Ok(Ok(true)) => {
            state
                .catalog
                .metrics
                .webhooks_accepted
                .fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::OK,
                axum::Json(json!({ "received": true, "handled": handled })),
            )
                .into_response()
        }
        Ok(Ok(false)) => {
            state
                .catalog
                .metrics
                .webhooks_duplicate
                .fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::OK,
                axum::Json(json!({ "received": true, "duplicate": true })),
            )
                .into_response()
        }
        // Not stored: a 5xx makes Stripe deliver it again later.
        Ok(Err(e)) => {
            tracing::error!("webhook not stored: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "error": { "message": "could not store the event; retry" } })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!("webhook task failed: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /health`: a first version — pipeline state and queue counts. (Scores,
/// per-component checks and recommendations come with the telemetry work.)
async fn health(State(state): State<ServerState>) -> Response {
    let catalog = state.catalog.clone();
    let counts = match tokio::task::spawn_blocking(move || catalog.store.catalog_counts()).await {
        Ok(Ok(c)) => c,
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "status": "down", "errors": ["store unreadable"] })),
            )
                .into_response();
        }
    };
    let full = state
        .catalog
        .metrics
        .full_sync
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut warnings = Vec::new();
    if counts.failed > 0 {
        warnings.push(format!("{} catalog jobs failed", counts.failed));
    }
    if counts.rejected > 0 {
        warnings.push(format!("{} products rejected as invalid", counts.rejected));
    }
    if state.catalog.is_paused() {
        warnings.push("catalog pipeline paused".to_owned());
    }
    let status = if counts.failed > 0 { "degraded" } else { "ok" };
    axum::Json(json!({
        "status": status,
        "mode": match state.mode { Mode::Live => "live", Mode::Sandbox => "sandbox" },
        "version": env!("CARGO_PKG_VERSION"),
        "warnings": warnings,
        "catalog": {
            "paused": state.catalog.is_paused(),
            "synced": counts.synced, "queued": counts.queued, "in_flight": counts.in_flight,
            "failed": counts.failed, "rejected": counts.rejected, "products_seen": counts.products_seen,
            "full_sync": { "done": full.done, "pages": full.pages, "listed": full.listed },
            "webhooks": {
                "accepted": state.catalog.metrics.webhooks_accepted.load(Ordering::Relaxed),
                "duplicate": state.catalog.metrics.webhooks_duplicate.load(Ordering::Relaxed),
                "rejected": state.catalog.metrics.webhooks_rejected.load(Ordering::Relaxed),
            },
        },
    }))
    .into_response()
}
