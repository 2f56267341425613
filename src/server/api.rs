//! The control API (`/api/v1/…`, DESIGN.md §4). Reads come from the engine's latest
//! snapshot (or the store, for the audit trail and the DIAN queue); every action is a
//! [`Request`](crate::protocol::Request) sent to the engine and answered to this caller
//! with its typed reply, so it is validated and audited exactly like the same action
//! taken in the console.
//!
//! Every action's path takes `?dry_run=true`: its impact preview, nothing done
//! ([`DryRun`]).
//!
//! Errors are JSON: `{"error": {"code": "…", "message": "…"}}` (and `"field"` when a
//! value is at fault). A refused command answers its [`CommandError`]'s status: 404
//! not found, 409 conflict, 400 invalid, 403 forbidden, 503 unavailable.

use std::net::SocketAddr;
use std::sync::Arc;

use super::ServerState;
use super::auth::{Caller, Denied, Quota};
use crate::protocol::{
    AlertMatcher, BreakerAction, CacheScope, Command, CommandError, Pipeline, Service,
    ThresholdChange,
};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::protocol::shown;

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

/// The WebSocket feeds (paths as seen inside `/api/v1`): the only routes where a
/// token may come in the query string, and only on a real upgrade request.
const WS_FEEDS: &[&str] = &["/ws/notifications", "/ws/alerts", "/ws/console"];

fn is_ws_upgrade(req: &Request) -> bool {
    req.method() == Method::GET
        && WS_FEEDS.contains(&req.uri().path())
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Authentication, rate limit and role, before every `/api` path (unknown ones too: a
/// caller without a token learns nothing of which paths exist).
pub async fn guard(
    State(st): State<ServerState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    // (Nested under /api/v1: the path seen here has that prefix removed.)
    let token = super::auth::bearer(req.headers(), req.uri().query(), is_ws_upgrade(&req));
    let auth = &st.control.auth;
    let now = super::now_ms();
    let unauthorized = |m: &str| {
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", m);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    // The local CLI's token is good on this machine only (loopback).
    let identified = auth.judge(addr.ip(), addr.ip().is_loopback(), token.as_deref(), now);
    let caller = match identified {
        Ok(c) => c,
        Err(Denied::TooManyFailures(wait)) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many wrong tokens from this address; try again in {wait} s"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return r;
        }
        Err(Denied::UnknownToken) => {
            // (Counted by `judge`, before any other request was judged.)
            tracing::warn!("control API: wrong token from {}", addr.ip());
            tokio::time::sleep(super::auth::FAILURE_DELAY).await;
            return unauthorized("unknown token");
        }
        Err(Denied::Unauthenticated(m)) => return unauthorized(m),
        Err(Denied::RateLimited(_)) => return unauthorized("rate limited"),
    };
    let quota = match auth.admit(&caller, now) {
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
        Err(_) => return unauthorized("unknown token"),
    };
    // A viewer's actions reach the engine like anyone's: the engine refuses them (403),
    // the one place that decides, and audits the attempt.
    //
    // The local CLI names its person (audited as the store path would); any other
    // caller is its token and address.
    let named = req
        .headers()
        .get(super::local::ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(super::local::actor_from_header);
    let who = match named {
        Some(person) if caller.local => person,
        _ => format!("api:{}@{}", caller.name, addr.ip()),
    };
    req.extensions_mut().insert(Actor { caller, who });
    let mut resp = json_errors(next.run(req).await).await;
    if let Some(q) = quota {
        quota_headers(&mut resp, &q);
    }
    resp
}

/// Every error answer of the API in the JSON shape, including the ones axum writes as
/// plain text (a body over the size limit, a malformed query, a wrong method, a plain
/// GET on a WebSocket feed).
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "bad_request",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("body: larger than {} bytes", super::API_BODY_LIMIT)
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = error(status, code, message);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such API path")
}

/// A refused command as the API answers it: its status and `{"error": body}`.
pub fn command_error(e: &CommandError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({ "error": e.body() }))).into_response()
}

/// `?dry_run=true` on an action: answer its impact preview and change nothing.
/// Absent, `false` or `0`: the action itself; `true`, `1` or a bare `dry_run`: the
/// preview; anything else is a 400 (a typo must never run what was meant as a look).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DryRun(pub bool);

impl DryRun {
    /// The `dry_run` parameter of a query string. A near miss of its name (`dry-run`,
    /// `dryrun`, `Dry_Run`, `dry%5Frun`) or a `dry_run` given twice with different
    /// answers is a 400 too: either would otherwise run what was meant as a look.
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let decode = |s: &str| {
            urlencoding::decode(&s.replace('+', " "))
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| s.to_owned())
        };
        let mut dry: Option<bool> = None;
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k);
            if k != "dry_run" {
                let squeezed: String = k
                    .chars()
                    .filter(|c| !matches!(c, '-' | '_' | ' ' | '.'))
                    .collect();
                if squeezed.eq_ignore_ascii_case("dryrun") {
                    return Err(format!(
                        "{}: not a parameter; a dry run is `?dry_run=true` (nothing was done)",
                        shown(&k)
                    ));
                }
                continue;
            }
            let this = match decode(v).as_str() {
                "" | "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(format!(
                        "dry_run: expected true or false, got {}",
                        shown(other)
                    ));
                }
            };
            if dry.is_some_and(|d| d != this) {
                return Err(
                    "dry_run: given twice, once true and once false (nothing was done)".into(),
                );
            }
            dry = Some(this);
        }
        Ok(DryRun(dry.unwrap_or(false)))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for DryRun {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Response> {
        DryRun::parse(parts.uri.query()).map_err(bad)
    }
}

/// `?dry_run=true` on an action that has no preview: a 400, nothing done (it used to
/// be ignored, and the thresholds were changed and saved, the alerts silenced).
fn no_preview(dry: DryRun, what: &str) -> Option<Response> {
    dry.0.then(|| {
        bad(format!(
            "dry_run: {what} has no preview (previews are for bulk actions); nothing was done"
        ))
    })
}

/// An action, or its impact preview on a dry run.
async fn act_or_preview(st: &ServerState, actor: Actor, command: Command, dry: DryRun) -> Response {
    if dry.0 {
        preview(st, command).await
    } else {
        act(st, actor, command).await
    }
}

/// A dry run: `{"ok": true, "dry_run": true, "changed": false, "message": …, "preview":
/// {items, noun, calls: [{service, calls, rate_per_min, minutes, circuit}], held,
/// held_why, ahead, first, notes}}`, or the error the action itself would get. Nothing
/// changes and nothing is audited (a read, as any GET), so a viewer may ask too.
async fn preview(st: &ServerState, command: Command) -> Response {
    match st
        .engine
        .query(crate::protocol::Query::Preview { command })
        .await
    {
        Ok(crate::protocol::Answer::Preview(p)) => axum::Json(json!({
            "ok": true,
            "dry_run": true,
            "changed": false,
            "message": format!("{} — dry run: {} {}, {}, {}", p.command, p.items, p.noun, p.cost_lines().join(", "), p.held_line()),
            "preview": *p,
        }))
        .into_response(),
        Ok(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the engine answered something else",
        ),
        Err(e) => command_error(&e),
    }
}

/// Sends a command as `actor` and answers its reply: `{"ok": true, "message": …}` (with
/// the outcome's other fields), or the typed error.
async fn act(st: &ServerState, actor: Actor, command: Command) -> Response {
    let request = crate::protocol::Request::new(actor.who, command).with_role(actor.caller.role);
    match st.engine.request(request).await {
        Ok(outcome) => {
            let mut v = json!(outcome);
            v["ok"] = json!(true);
            axum::Json(v).into_response()
        }
        Err(e) => command_error(&e),
    }
}

/// A JSON object body (or an empty body, as `{}`).
fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// How a command is sent over this API, for recommendations worded for HTTP clients:
/// `POST /api/v1/compliance/retry-failed`, `POST … {"state": "CLOSED"}`.
pub fn http_form(command: &Command) -> String {
    let p = "/api/v1";
    match command {
        Command::Pause { pipeline } => format!("POST {p}/pipelines/{pipeline}/pause"),
        Command::Resume { pipeline } => format!("POST {p}/pipelines/{pipeline}/resume"),
        Command::Breaker { service, action } => match action.state_name() {
            Some(state) => {
                format!("POST {p}/resilience/circuit-breakers/{service} {{\"state\": \"{state}\"}}")
            }
            // No HTTP form yet: the command in the console's words.
            None => format!("in the console: {command}"),
        },
        Command::RetryInvoice { key } => {
            format!("POST {p}/compliance/{}/retry", urlencoding::encode(key))
        }
        Command::RetryFailed {} => format!("POST {p}/compliance/retry-failed"),
        Command::RetryJob { key } => {
            format!("POST {p}/catalog/jobs/{}/retry", urlencoding::encode(key))
        }
        Command::RetryFailedJobs {} => format!("POST {p}/pipelines/catalog/retry-failed"),
        Command::Resync {} => format!("POST {p}/pipelines/catalog/resync"),
        Command::ResyncItem { key } => {
            format!(
                "POST {p}/reconciliation/{}/resync",
                urlencoding::encode(key)
            )
        }
        Command::ResyncDrifted {} => format!("POST {p}/reconciliation/resync-drifted"),
        Command::AckAlerts { .. } => format!("POST {p}/alerts/ack"),
        Command::SilenceAlerts { .. } => format!("POST {p}/alerts/silence"),
        Command::SetThresholds { .. } => format!("PUT {p}/thresholds"),
        Command::InvalidateCache { .. } => format!("POST {p}/cache/invalidate"),
        Command::WorkerBounds { .. } | Command::Shutdown {} => format!("in the console: {command}"),
    }
}

/// A health recommendation as a line for HTTP clients: `component: reason (how)`.
pub fn recommendation_line(r: &crate::protocol::Recommendation) -> String {
    match &r.action {
        Some(c) => format!("{}: {} ({})", r.component, r.reason, http_form(c)),
        None => format!("{}: {}", r.component, r.reason),
    }
}

/// A JSON object body (an empty body reads as `{}`); anything else is a JSON 400.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonObject {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) => return Err(json_errors(e.into_response()).await),
        };
        object(&bytes).map(JsonObject).map_err(bad)
    }
}

fn object(body: &Bytes) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<UniqueKeys>(body) {
        Ok(UniqueKeys(Some(m))) => Ok(m),
        Ok(UniqueKeys(None)) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// A body's top-level object read with each key once: a key given twice is refused
/// rather than the last one kept (`{"dry_run": true, "dry_run": false}` would run the
/// action while the first reader of the body saw a dry run). `None`: not an object.
struct UniqueKeys(Option<Map<String, Value>>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut out = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "{}: given twice",
                            shown(&key)
                        )));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueKeys(Some(out)))
            }
            // Anything else is read (so it is valid JSON) and refused as not an object.
            fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(None))
            }
            fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<UniqueKeys, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(UniqueKeys(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Refuses a body with a field the action does not know: a typo must never widen an
/// action (`{"matchr": "x"}` is not "every alert").
fn only(body: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(format!(
            "{}: unknown field (expected {})",
            shown(k),
            known.join(", ")
        )),
    }
}

/// The JSON type of a value, for "expected X, got Y".
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A text field: absent → None; a string of 1 to
/// [`MAX_TEXT`](crate::protocol::command::MAX_TEXT) printable characters; anything else
/// is a 400 naming the field.
fn text_field(body: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    let Some(v) = body.get(name) else {
        return Ok(None);
    };
    let Some(t) = v.as_str() else {
        return Err(format!("{name}: expected a string, got {}", kind(v)));
    };
    if t.trim().is_empty() {
        return Err(format!("{name}: empty"));
    }
    bounded_text(name, t)?;
    Ok(Some(t.to_owned()))
}

/// At most [`MAX_TEXT`](crate::protocol::command::MAX_TEXT) characters, none a control
/// character; else a message naming it.
fn bounded_text(name: &str, t: &str) -> Result<(), String> {
    crate::protocol::command::bounded_text(name, t).map_err(|e| e.to_string())
}

/// The `matcher` of an alerts action: required, an alert id prefix, or `"*"` for
/// every alert (never by omission or by a value of the wrong type).
fn matcher(body: &Map<String, Value>) -> Result<AlertMatcher, String> {
    match text_field(body, "matcher")? {
        None => Err("matcher: required (an alert id prefix, or \"*\" for every alert)".into()),
        Some(m) if m == "*" => Ok(AlertMatcher::All),
        Some(m) => Ok(AlertMatcher::Prefix(m)),
    }
}

fn snapshot(st: &ServerState) -> Arc<crate::protocol::Snapshot> {
    st.engine.latest()
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
    dry: DryRun,
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
    if let Err(m) = only(&body, &["state"]) {
        return bad(m);
    }
    // The path names a circuit the snapshot lists, so it is a service's word.
    let Ok(service) = service.parse::<Service>() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no circuit named {service:?}"),
        );
    };
    let action = body
        .get("state")
        .and_then(Value::as_str)
        .and_then(BreakerAction::from_state_name);
    match action {
        Some(action) => act_or_preview(&st, actor, Command::Breaker { service, action }, dry).await,
        None => error(
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
    use crate::protocol::Status;
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
    let query = crate::protocol::Query::Invoices {
        status,
        search: q.q.unwrap_or_default(),
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let invoices = match st.engine.query(query).await {
        Ok(crate::protocol::Answer::Invoices { invoices }) => invoices,
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

fn invoice_json(r: &crate::protocol::InvoiceRecord) -> Value {
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
    dry: DryRun,
    Path(id): Path<String>,
) -> Response {
    act_or_preview(&st, actor, Command::RetryInvoice { key: id }, dry).await
}

pub async fn retry_job(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
    Path(product): Path<String>,
) -> Response {
    act_or_preview(&st, actor, Command::RetryJob { key: product }, dry).await
}

pub async fn retry_failed(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
) -> Response {
    act_or_preview(&st, actor, Command::RetryFailed {}, dry).await
}

// ---- reconciliation ----

#[derive(serde::Deserialize)]
pub struct ReconciliationQuery {
    limit: Option<String>,
}

/// `GET /api/v1/reconciliation?limit=N`: Stripe against QuickBooks — counts, amounts
/// and the worst `N` discrepancies (default 100, at most 10,000).
pub async fn reconciliation(
    State(st): State<ServerState>,
    Query(q): Query<ReconciliationQuery>,
) -> Response {
    let limit = match q.limit.as_deref().filter(|s| !s.is_empty()) {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("limit: expected a number from 1 to 10000, got {s:?}"),
                );
            }
        },
    };
    match st
        .engine
        .query(crate::protocol::Query::Reconciliation { limit })
        .await
    {
        Ok(crate::protocol::Answer::Reconciliation(view)) => axum::Json(*view).into_response(),
        Ok(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the engine answered something else",
        ),
        Err(e) => command_error(&e),
    }
}

/// `POST /api/v1/reconciliation/{product}/resync`: write one product's Item again.
pub async fn resync_item(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
    Path(product): Path<String>,
) -> Response {
    act_or_preview(&st, actor, Command::ResyncItem { key: product }, dry).await
}

/// `POST /api/v1/reconciliation/resync-drifted`: every drifted and missing Item.
pub async fn resync_drifted(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
) -> Response {
    act_or_preview(&st, actor, Command::ResyncDrifted {}, dry).await
}

// ---- pipelines, cache ----

pub async fn pipeline(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let pipeline = match name.as_str() {
        "catalog" => Some(Pipeline::Catalog),
        "compliance" => Some(Pipeline::Compliance),
        _ => None,
    };
    let cmd = match (pipeline, action.as_str()) {
        (Some(pipeline), "pause") => Command::Pause { pipeline },
        (Some(pipeline), "resume") => Command::Resume { pipeline },
        (Some(Pipeline::Catalog), "retry-failed") => Command::RetryFailedJobs {},
        (Some(Pipeline::Catalog), "resync") => Command::Resync {},
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "expected /api/v1/pipelines/{catalog|compliance}/{pause|resume} or /api/v1/pipelines/catalog/{retry-failed|resync}",
            );
        }
    };
    act_or_preview(&st, actor, cmd, dry).await
}

pub async fn invalidate(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
    JsonObject(body): JsonObject,
) -> Response {
    if let Err(m) = only(&body, &["pattern", "tag", "key"]) {
        return bad(m);
    }
    let field = |k: &str| text_field(&body, k);
    let (pattern, tag, key) = match (field("pattern"), field("tag"), field("key")) {
        (Ok(p), Ok(t), Ok(k)) => (p, t, k),
        (Err(m), _, _) | (_, Err(m), _) | (_, _, Err(m)) => return bad(m),
    };
    let scope = match (pattern, tag, key) {
        (None, None, None) => CacheScope::All,
        (Some(p), None, None) if p == "*" => CacheScope::All,
        (Some(p), None, None) => CacheScope::Pattern(p),
        (None, Some(t), None) => CacheScope::Tag(t),
        (None, None, Some(k)) => CacheScope::Key(k),
        _ => {
            return bad("pattern, tag, key: give one of them, or {} for all");
        }
    };
    act_or_preview(&st, actor, Command::InvalidateCache { scope }, dry).await
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
    dry: DryRun,
    JsonObject(body): JsonObject,
) -> Response {
    if let Some(refused) = no_preview(dry, "a threshold change") {
        return refused;
    }
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
            return bad(format!(
                "{}: expected a number, got {}",
                shown(name),
                kind(v)
            ));
        };
        if let Err(e) = crate::config::check_threshold(name, v) {
            // Named by the threshold, as the engine names it.
            let prefix = format!("{name}: ");
            let reason = e.strip_prefix(&prefix).unwrap_or(&e);
            return command_error(&CommandError::invalid(name.clone(), reason));
        }
        changes.push(ThresholdChange::new(name.clone(), v));
    }
    let mut full = snapshot(&st).telemetry.thresholds.clone();
    let resp = act(
        &st,
        actor,
        Command::SetThresholds {
            changes: changes.clone(),
            for_secs: None,
        },
    )
    .await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    for c in changes {
        if let Some(e) = full.iter_mut().find(|(n, _)| *n == c.name) {
            e.1 = c.value;
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
    /// Words every entry shown contains (the console's `/` filter).
    text: Option<String>,
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

/// `GET /api/v1/chain/{key}`: the entity chain of a product, Item, invoice, DIAN
/// number, CUFE or Alegra document (404 when the store knows no such thing).
pub async fn chain(State(st): State<ServerState>, Path(key): Path<String>) -> Response {
    match st.engine.query(crate::protocol::Query::Chain { key }).await {
        Ok(crate::protocol::Answer::Chain(chain)) => axum::Json(chain).into_response(),
        Ok(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the engine answered another query",
        ),
        Err(e) => command_error(&e),
    }
}

pub async fn events(State(st): State<ServerState>, Query(q): Query<EventsQuery>) -> Response {
    let (since, until) = match (
        time_param("since", q.since.as_deref()),
        time_param("until", q.until.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(m), _) | (_, Err(m)) => return bad(m),
    };
    // The words searched, held to what a text field may be (a NUL or a thousand words
    // would reach the index as a query it refuses), blank or not.
    if let Some(Err(m)) = q.text.as_deref().map(|t| bounded_text("text", t)) {
        return bad(m);
    }
    let filter = crate::protocol::AuditFilter {
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
        text: q.text.filter(|t| !t.trim().is_empty()),
    };
    match st
        .engine
        .query(crate::protocol::Query::Audit { filter })
        .await
    {
        Ok(crate::protocol::Answer::Audit { entries: events }) => {
            axum::Json(json!({ "events": events })).into_response()
        }
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

/// `POST /api/v1/commands {"command": "pause compliance"}`: any command in the text
/// grammar (`syncctl ctl`, scripts), answered like the dedicated routes; a word that
/// does not parse is a 400 naming it. With `"dry_run": true` (or `?dry_run=true`), a
/// bulk command's impact preview instead, as on the dedicated routes.
pub async fn command(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
    JsonObject(body): JsonObject,
) -> Response {
    let text = match only(&body, &["command", "dry_run", "company"])
        .and_then(|()| text_field(&body, "command"))
    {
        Ok(Some(t)) => t,
        Ok(None) => return bad("command: expected the command as text, e.g. \"pause compliance\""),
        Err(m) => return bad(m),
    };
    // `{"dry_run": true}` in the body, or `?dry_run=true`: the preview.
    let dry = match body.get("dry_run") {
        None => dry,
        Some(Value::Bool(b)) => DryRun(dry.0 || *b),
        Some(v) => return bad(format!("dry_run: expected a boolean, got {}", kind(v))),
    };
    match text.parse::<Command>() {
        Ok(command) => act_or_preview(&st, actor, command, dry).await,
        Err(e) => command_error(&e),
    }
}

pub async fn ack_alerts(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
    JsonObject(body): JsonObject,
) -> Response {
    if let Some(refused) = no_preview(dry, "an acknowledgement") {
        return refused;
    }
    let matcher = match only(&body, &["matcher"]).and_then(|()| matcher(&body)) {
        Ok(m) => m,
        Err(m) => return bad(m),
    };
    act(&st, actor, Command::AckAlerts { matcher }).await
}

pub async fn silence_alerts(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    dry: DryRun,
    JsonObject(body): JsonObject,
) -> Response {
    if let Some(refused) = no_preview(dry, "a silence") {
        return refused;
    }
    let matcher = match only(&body, &["matcher", "secs"]).and_then(|()| matcher(&body)) {
        Ok(m) => m,
        Err(m) => return bad(m),
    };
    let Some(secs) = body
        .get("secs")
        .and_then(Value::as_u64)
        .filter(|s| (1..=crate::protocol::MAX_SILENCE_SECS).contains(s))
    else {
        return bad(format!(
            "secs: expected whole seconds from 1 to {} (7 days)",
            crate::protocol::MAX_SILENCE_SECS
        ));
    };
    act(&st, actor, Command::SilenceAlerts { matcher, secs }).await
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    events: Option<usize>,
}

/// `GET /api/v1/bundle?events=N`: an incident bundle (JSON, secrets redacted) with the
/// newest N audit events (default 500); `syncctl ctl bundle` writes it to a file.
pub async fn bundle(
    State(st): State<ServerState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Query(q): Query<BundleQuery>,
) -> Response {
    let query = crate::protocol::Query::Bundle {
        events: q.events.unwrap_or(crate::protocol::BUNDLE_EVENTS),
        actor: actor.who,
    };
    match st.engine.query(query).await {
        Ok(crate::protocol::Answer::Bundle(b)) => axum::Json(b).into_response(),
        Ok(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the engine answered something else than a bundle",
        ),
        Err(e) => command_error(&e),
    }
}
