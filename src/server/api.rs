//! The control API (`/api/v1/…`, DESIGN.md §4). Reads come from the engine's latest
//! snapshot (or the store, for the audit trail and the DIAN queue); every action is a
//! [`Command`] sent to the engine and answered with its result, so it is audited
//! exactly like the same action taken in the console.
//!
//! Errors are JSON: `{"error": {"code": "…", "message": "…"}}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::ServerState;
use super::auth::{Caller, Denied, Quota};
use crate::config::Role;
use crate::engine::{CacheScope, Command};
use crate::resilience::State as BreakerState;

/// Who is calling: the token's name and the client's address, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    pub caller: Caller,
    pub who: String,
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message.into() } })),
    )
        .into_response()
}

fn quota_headers(resp: &mut Response, q: &Quota) {
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(q.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(q.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(q.reset_secs));
}

/// Authentication, rate limit and role, before every `/api` route.
pub async fn guard(
    State(st): State<ServerState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    // (Nested under /api/v1: the path seen here has that prefix removed.)
    let path = req.uri().path();
    let ws = path.contains("/ws/") && !path.ends_with("/ws/connections");
    let token = super::auth::bearer(req.headers(), req.uri().query(), ws);
    let auth = &st.control.auth;
    let caller = match auth.identify(token.as_deref()) {
        Ok(c) => c,
        Err(denied) => {
            let m = match denied {
                Denied::Unauthenticated(m) => m,
                Denied::RateLimited(_) => "rate limited",
            };
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", m);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    let quota = match auth.admit(&caller, crate::store::now_ms()) {
        Ok(q) => q,
        Err(Denied::RateLimited(q)) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "token {:?} is limited to {} requests a minute; try again in {} s",
                    caller.name, q.limit, q.reset_secs
                ),
            );
            quota_headers(&mut r, &q);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(q.reset_secs));
            return r;
        }
        Err(Denied::Unauthenticated(m)) => {
            return error(StatusCode::UNAUTHORIZED, "unauthorized", m);
        }
    };
    let mut resp = if req.method() != Method::GET && caller.role != Role::Operator {
        error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} is a viewer: it may read, not act", caller.name),
        )
    } else {
        let who = format!("api:{}@{}", caller.name, addr.ip());
        req.extensions_mut().insert(Actor { caller, who });
        next.run(req).await
    };
    if let Some(q) = quota {
        quota_headers(&mut resp, &q);
    }
    resp
}

pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such API path")
}

/// Sends a command and answers its result.
async fn act(st: &ServerState, command: Command) -> Response {
    let (tx, rx) = oneshot::channel();
    let sent = st
        .control
        .commands
        .send(Command::Reply {
            command: Box::new(command),
            reply: tx,
        })
        .await;
    if sent.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the engine is stopping",
        );
    }
    match rx.await {
        Ok(Ok(message)) => axum::Json(json!({ "ok": true, "message": message })).into_response(),
        Ok(Err(message)) => error(StatusCode::CONFLICT, "refused", message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the engine is stopping",
        ),
    }
}

/// A JSON object body (or an empty body, as `{}`).
fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A JSON object body (an empty body reads as `{}`); anything else is a JSON 400.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonObject {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        object(&bytes).map(JsonObject).map_err(bad)
    }
}

fn object(body: &Bytes) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// The `matcher` of an alerts action ("" matches every alert).
fn matcher(body: &Map<String, Value>) -> String {
    body.get("matcher")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn snapshot(st: &ServerState) -> Arc<crate::engine::Snapshot> {
    st.control.snapshot.borrow().clone()
}

// ---- resilience ----

pub async fn breakers(State(st): State<ServerState>) -> Response {
    axum::Json(json!({ "circuit_breakers": snapshot(&st).downstreams })).into_response()
}

pub async fn breaker(State(st): State<ServerState>, Path(service): Path<String>) -> Response {
    match snapshot(&st).downstreams.iter().find(|d| d.name == service) {
        Some(d) => axum::Json(json!(d)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no circuit named {service:?}"),
        ),
    }
}

pub async fn set_breaker(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(service): Path<String>,
    JsonObject(body): JsonObject,
) -> Response {
    if !snapshot(&st).downstreams.iter().any(|d| d.name == service) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no circuit named {service:?}"),
        );
    }
    let state = body
        .get("state")
        .and_then(Value::as_str)
        .and_then(BreakerState::parse);
    match state {
        Some(
            s @ (BreakerState::Closed
            | BreakerState::ForcedOpen
            | BreakerState::Disabled
            | BreakerState::MetricsOnly),
        ) => {
            act(
                &st,
                Command::SetBreaker {
                    service,
                    state: s,
                    actor: actor.who,
                },
            )
            .await
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "state: expected \"CLOSED\", \"FORCED_OPEN\", \"DISABLED\" or \"METRICS_ONLY\"",
        ),
    }
}

// ---- compliance ----

#[derive(serde::Deserialize)]
pub struct ComplianceQuery {
    status: Option<String>,
    q: Option<String>,
    limit: Option<usize>,
}

pub async fn compliance(
    State(st): State<ServerState>,
    Query(q): Query<ComplianceQuery>,
) -> Response {
    use crate::compliance::machine::Status;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "status: unknown {s:?} (one of {})",
                        Status::ALL
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        },
    };
    let snap = snapshot(&st);
    if !snap.compliance.enabled {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            crate::engine::COMPLIANCE_OFF,
        );
    }
    let store = st.control.store.clone();
    let (search, limit) = (
        q.q.unwrap_or_default(),
        q.limit.unwrap_or(100).clamp(1, 1000),
    );
    let read = tokio::task::spawn_blocking(move || store.invoices(status, &search, limit)).await;
    let invoices = match read {
        Ok(Ok(v)) => v,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store",
                "the store could not be read",
            );
        }
    };
    axum::Json(json!({
        "counts": snap.compliance.counts.by_name(),
        "contingency": { "phase": snap.compliance.contingency.phase },
        "invoices": invoices.iter().map(invoice_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

fn invoice_json(r: &crate::store::InvoiceRecord) -> Value {
    json!({
        "stripe_id": r.stripe_id,
        "number": r.number,
        "kind": r.kind,
        "status": r.status.name(),
        "attempts": r.attempts,
        "next_at_ms": r.next_at_ms,
        "alegra_id": r.alegra_id,
        "cufe": r.cufe,
        "issue_date": r.issue_date,
        "buyer_id": r.buyer_id,
        "buyer_name": r.buyer_name,
        "total": r.total,
        "last_code": r.last_code,
        "last_message": r.last_message,
        "contingency": r.contingency,
        "deadline_at_ms": r.deadline_at_ms,
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
        "validated_at_ms": r.validated_at_ms,
    })
}

pub async fn retry_invoice(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    act(
        &st,
        Command::RetryInvoice {
            key: id,
            actor: actor.who,
        },
    )
    .await
}

pub async fn retry_failed(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Response {
    act(&st, Command::RetryFailedInvoices { actor: actor.who }).await
}

// ---- pipelines, cache ----

pub async fn pipeline(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let actor = actor.who;
    let cmd = match (name.as_str(), action.as_str()) {
        ("catalog", "pause") => Command::PauseCatalog { actor },
        ("catalog", "resume") => Command::ResumeCatalog { actor },
        ("compliance", "pause") => Command::PauseCompliance { actor },
        ("compliance", "resume") => Command::ResumeCompliance { actor },
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "expected /api/v1/pipelines/{catalog|compliance}/{pause|resume}",
            );
        }
    };
    act(&st, cmd).await
}

pub async fn invalidate(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    JsonObject(body): JsonObject,
) -> Response {
    let text = |k: &'static str| body.get(k).map(|v| v.as_str().map(str::to_owned).ok_or(k));
    let scope = match (text("pattern"), text("tag"), text("key")) {
        (None, None, None) if body.is_empty() => CacheScope::All,
        (Some(Ok(p)), None, None) if p == "*" => CacheScope::All,
        (Some(Ok(p)), None, None) => CacheScope::Pattern(p),
        (None, Some(Ok(t)), None) => CacheScope::Tag(t),
        (None, None, Some(Ok(k))) => CacheScope::Key(k),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected one of {\"pattern\": \"…\"}, {\"tag\": \"…\"}, {\"key\": \"…\"}, or {} for all",
            );
        }
    };
    act(
        &st,
        Command::InvalidateCache {
            scope,
            actor: actor.who,
        },
    )
    .await
}

// ---- thresholds ----

fn thresholds_json(values: &[(String, f64)]) -> Value {
    Value::Object(values.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

pub async fn thresholds(State(st): State<ServerState>) -> Response {
    axum::Json(thresholds_json(&snapshot(&st).telemetry.thresholds)).into_response()
}

pub async fn set_thresholds(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    JsonObject(body): JsonObject,
) -> Response {
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "no threshold given: send {\"name\": value, …}",
        );
    }
    let mut changes = Vec::new();
    for (name, v) in &body {
        let Some(v) = v.as_f64() else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{name}: expected a number, got {v}"),
            );
        };
        if let Err(e) = crate::config::check_threshold(name, v) {
            return error(StatusCode::BAD_REQUEST, "bad_request", e);
        }
        changes.push((name.clone(), v));
    }
    let mut full = snapshot(&st).telemetry.thresholds.clone();
    let resp = act(
        &st,
        Command::SetThresholds {
            changes: changes.clone(),
            actor: actor.who,
        },
    )
    .await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    for (k, v) in changes {
        if let Some(e) = full.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        }
    }
    axum::Json(thresholds_json(&full)).into_response()
}

// ---- events, alerts, anomalies, snapshot ----

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    entity: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<i64>,
    limit: Option<usize>,
}

/// Milliseconds since the epoch, or an RFC 3339 time.
fn time_param(name: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
        .map_err(|_| {
            format!("{name}: expected milliseconds since the epoch or an RFC 3339 time, got {v:?}")
        })
}

pub async fn events(State(st): State<ServerState>, Query(q): Query<EventsQuery>) -> Response {
    let (since, until) = match (
        time_param("since", q.since.as_deref()),
        time_param("until", q.until.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(m), _) | (_, Err(m)) => return bad(m),
    };
    let filter = crate::store::AuditFilter {
        kinds: q
            .kind
            .map(|k| {
                k.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        entity: q.entity.filter(|e| !e.is_empty()),
        since_ms: since,
        until_ms: until,
        before_id: q.before,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let store = st.control.store.clone();
    match tokio::task::spawn_blocking(move || store.audit_query(&filter)).await {
        Ok(Ok(events)) => axum::Json(json!({ "events": events })).into_response(),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store",
            "the store could not be read",
        ),
    }
}

pub async fn alerts(State(st): State<ServerState>) -> Response {
    let t = &snapshot(&st).telemetry;
    axum::Json(json!({
        "active": t.alerts,
        "history": t.notifications,
        "silences": t.silences,
    }))
    .into_response()
}

pub async fn ack_alerts(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    JsonObject(body): JsonObject,
) -> Response {
    let matcher = matcher(&body);
    act(
        &st,
        Command::AckAlerts {
            matcher,
            actor: actor.who,
        },
    )
    .await
}

pub async fn silence_alerts(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    JsonObject(body): JsonObject,
) -> Response {
    let matcher = matcher(&body);
    let Some(secs) = body
        .get("secs")
        .and_then(Value::as_u64)
        .filter(|s| (1..=7 * 86_400).contains(s))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "secs: expected 1 to 604800 seconds",
        );
    };
    act(
        &st,
        Command::SilenceAlerts {
            matcher,
            secs,
            actor: actor.who,
        },
    )
    .await
}

pub async fn anomalies(State(st): State<ServerState>) -> Response {
    let t = &snapshot(&st).telemetry;
    axum::Json(json!({
        "open": t.anomalies.iter().filter(|a| a.ended_ms.is_none()).collect::<Vec<_>>(),
        "recent": t.anomalies,
    }))
    .into_response()
}

pub async fn profile(State(st): State<ServerState>) -> Response {
    axum::Json(json!({ "operations": snapshot(&st).profile })).into_response()
}

/// The JSON snapshot: everything the console shows, for scripts.
pub async fn snapshot_json(State(st): State<ServerState>) -> Response {
    axum::Json(super::snapshot_value(&snapshot(&st))).into_response()
}
