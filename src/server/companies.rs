//! Which company a request is for. One server serves every company of the process:
//! each has its own routes (its engine, its webhook secret) and a request reaches them
//! by `?company=ID`, by `"company"` in the body of `POST /api/v1/commands`, or by its
//! webhook path `POST /webhooks/stripe/{company}`.
//!
//! With one company the company is optional. With several and none named, the reads
//! that make sense across companies answer for all (`GET /api/v1/companies`, `/health`,
//! `/metrics`); anything else is refused with 400 naming the choices. An unknown
//! company is a 404 naming it; a company whose engine did not start is a 503 with why.
//! Refusals of `/api` paths are answered after the token check (a caller without a
//! token learns no company ids).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::{Control, ServerState, api};
use crate::config::Secret;
use crate::engine::Frontend;

/// One company the server serves.
#[derive(Clone)]
pub struct CompanyRoute {
    /// Its id (`[[companies]]`; "default" for one company).
    pub id: String,
    pub name: String,
    /// Its engine, or why it did not start.
    pub engine: Result<Frontend, String>,
    /// Its `stripe.webhook_secret` and `stripe.webhook_tolerance_secs`.
    pub webhook_secret: Secret,
    pub webhook_tolerance_secs: u64,
}

/// Set on a `/metrics` request that is for every company.
#[derive(Clone, Copy, Debug)]
pub struct AllCompanies;

/// A refusal the routing decided, answered by [`refused`] once the token is checked.
#[derive(Clone, Debug)]
struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The companies' routes.
struct Dispatch {
    control: Arc<Control>,
    /// The running companies' states and routes, in the config's order.
    running: Vec<(ServerState, Router)>,
}

enum Found<'a> {
    Running(&'a Router),
    Failed(&'a str),
    Unknown,
}

impl Dispatch {
    fn find(&self, id: &str) -> Found<'_> {
        if let Some((_, r)) = self.running.iter().find(|(st, _)| st.company == id) {
            return Found::Running(r);
        }
        match self.control.companies.iter().find(|c| c.id == id) {
            Some(c) => Found::Failed(c.engine.as_ref().err().map_or("", String::as_str)),
            None => Found::Unknown,
        }
    }

    /// "a, b, c": the ids to choose from.
    fn choices(&self) -> String {
        self.control
            .companies
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn several(&self) -> bool {
        self.control.companies.len() > 1
    }
}

/// The server's routes: every company's, reached as the module doc says.
pub fn router(control: Arc<Control>) -> Router {
    let running = control
        .companies
        .iter()
        .filter_map(|c| {
            let st = ServerState {
                engine: c.engine.clone().ok()?,
                company: c.id.clone(),
                webhook_secret: c.webhook_secret.clone(),
                tolerance_secs: c.webhook_tolerance_secs,
                control: control.clone(),
            };
            Some((st.clone(), super::router(st)))
        })
        .collect();
    Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(Dispatch { control, running }))
}

/// A company id as shown in a message: at most 40 characters, quoted.
fn shown(id: &str) -> String {
    format!("{:?}", id.chars().take(40).collect::<String>())
}

async fn dispatch(State(d): State<Arc<Dispatch>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if let Some(id) = path.strip_prefix("/webhooks/stripe/") {
        return match d.find(id) {
            Found::Running(router) => forward(router, with_path(req, "/webhooks/stripe")).await,
            Found::Failed(why) => api::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "company_not_running",
                format!("company {} did not start: {why}", shown(id)),
            ),
            Found::Unknown => api::error(
                StatusCode::NOT_FOUND,
                "unknown_company",
                format!("no company {} (companies: {})", shown(id), d.choices()),
            ),
        };
    }
    if path == "/webhooks/stripe" && d.several() {
        return api::error(
            StatusCode::NOT_FOUND,
            "company_webhook",
            format!(
                "with several companies each has its own webhook path: /webhooks/stripe/{{company}} (companies: {})",
                d.choices()
            ),
        );
    }
    let (req, named) = match take_company(req).await {
        Ok(x) => x,
        Err((req, refusal)) => return refuse(&d, req, refusal).await,
    };
    if let Some(id) = named {
        return match d.find(&id) {
            Found::Running(router) => forward(router, req).await,
            Found::Failed(why) => {
                let refusal = Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "company_not_running",
                    message: format!("company {} did not start: {why}", shown(&id)),
                };
                refuse(&d, req, refusal).await
            }
            Found::Unknown => {
                let refusal = Refused {
                    status: StatusCode::NOT_FOUND,
                    code: "unknown_company",
                    message: format!("no company {} (companies: {})", shown(&id), d.choices()),
                };
                refuse(&d, req, refusal).await
            }
        };
    }
    if !d.several() {
        return match d.running.first() {
            Some((_, router)) => forward(router, req).await,
            None => api::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "company_not_running",
                "the engine did not start",
            ),
        };
    }
    let Some((_, first)) = d.running.first() else {
        return api::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "company_not_running",
            "no company's engine started",
        );
    };
    match path.as_str() {
        "/api/v1/companies" => forward(first, req).await,
        // A console attached without a company watches the first one; its selector
        // reaches the others (each connection is one company's: every command of it
        // goes there, and the welcome says which).
        crate::protocol::CONSOLE_PATH => forward(first, req).await,
        "/metrics" => {
            let mut req = req;
            req.extensions_mut().insert(AllCompanies);
            forward(first, req).await
        }
        "/health" => health_all(&d, req).await,
        _ => {
            let refusal = Refused {
                status: StatusCode::BAD_REQUEST,
                code: "company_required",
                message: format!(
                    "this engine serves several companies: name one with ?company=ID{} (companies: {})",
                    if path == "/api/v1/commands" {
                        " or \"company\" in the body"
                    } else {
                        ""
                    },
                    d.choices()
                ),
            };
            refuse(&d, req, refusal).await
        }
    }
}

/// Answers `refusal`: behind the token check for `/api` paths (through the first
/// running company's routes), at once for the others.
async fn refuse(d: &Dispatch, mut req: Request, refusal: Refused) -> Response {
    match d.running.first() {
        Some((_, router)) if req.uri().path().starts_with("/api/") => {
            req.extensions_mut().insert(refusal);
            forward(router, req).await
        }
        _ => api::error(refusal.status, refusal.code, refusal.message),
    }
}

/// Middleware inside the control API's guard: answers a refusal the routing decided.
pub async fn refused(req: Request, next: Next) -> Response {
    if let Some(r) = req.extensions().get::<Refused>() {
        return api::error(r.status, r.code, r.message.clone());
    }
    next.run(req).await
}

async fn forward(router: &Router, req: Request) -> Response {
    match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

fn with_path(mut req: Request, path: &str) -> Request {
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Ok(uri) = format!("{path}{query}").parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    req
}

/// The company a request names, taken out of it (`?company=`, or `"company"` in the
/// body of `POST /api/v1/commands`, which stays for the handler to ignore).
async fn take_company(req: Request) -> Result<(Request, Option<String>), (Request, Refused)> {
    let mut named = None;
    let mut req = req;
    if let Some(q) = req.uri().query() {
        let mut rest = Vec::new();
        for pair in q.split('&') {
            match pair.split_once('=') {
                Some(("company", v)) => {
                    named = Some(
                        urlencoding::decode(&v.replace('+', " "))
                            .map_or_else(|_| v.to_owned(), |s| s.into_owned()),
                    );
                }
                _ if pair == "company" => named = Some(String::new()),
                _ => rest.push(pair),
            }
        }
        if named.is_some() {
            let path = req.uri().path().to_owned();
            let uri = if rest.is_empty() {
                path
            } else {
                format!("{path}?{}", rest.join("&"))
            };
            if let Ok(uri) = uri.parse::<Uri>() {
                *req.uri_mut() = uri;
            }
        }
    }
    if req.method() == axum::http::Method::POST && req.uri().path() == "/api/v1/commands" {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, super::API_BODY_LIMIT).await {
            Ok(b) => b,
            Err(_) => {
                let req = Request::from_parts(parts, Body::empty());
                return Err((
                    req,
                    Refused {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        code: "too_large",
                        message: format!("the body is larger than {} bytes", super::API_BODY_LIMIT),
                    },
                ));
            }
        };
        let in_body = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("company").cloned());
        let req = Request::from_parts(parts, Body::from(bytes));
        match in_body {
            None => {}
            Some(Value::String(id)) => {
                if named.as_ref().is_some_and(|q| *q != id) {
                    return Err((
                        req,
                        Refused {
                            status: StatusCode::BAD_REQUEST,
                            code: "bad_request",
                            message: format!(
                                "company: the body names {} and the query {}",
                                shown(&id),
                                shown(named.as_deref().unwrap_or_default())
                            ),
                        },
                    ));
                }
                named = Some(id);
            }
            Some(_) => {
                return Err((
                    req,
                    Refused {
                        status: StatusCode::BAD_REQUEST,
                        code: "bad_request",
                        message: "company: expected a company id as text, e.g. \"co1\"".into(),
                    },
                ));
            }
        }
        return Ok((req, named));
    }
    Ok((req, named))
}

/// `GET /health` for every company: the worst status and the lowest score, and each
/// company's own `/health` (a company that did not start is down, with why).
async fn health_all(d: &Dispatch, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned());
    if !super::host_allowed(host.as_deref(), &d.control.hosts) {
        return api::error(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            "this Host is not a name of this engine",
        );
    }
    let rank = |s: &str| match s {
        "ok" => 0,
        "degraded" => 1,
        _ => 2,
    };
    let mut worst = "ok";
    let mut score = 100u64;
    let mut each = serde_json::Map::new();
    for c in &d.control.companies {
        let mut body = match d.running.iter().find(|(st, _)| st.company == c.id) {
            Some((st, _)) => {
                let r = super::health(State(st.clone())).await;
                let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)
            }
            None => json!({
                "status": "down",
                "score": 0,
                "errors": [format!(
                    "the engine did not start: {}",
                    c.engine.as_ref().err().map_or("", String::as_str)
                )],
            }),
        };
        let status = body["status"].as_str().unwrap_or("down").to_owned();
        if rank(&status) > rank(worst) {
            worst = match rank(&status) {
                1 => "degraded",
                _ => "down",
            };
        }
        score = score.min(body["score"].as_u64().unwrap_or(0));
        body["name"] = json!(c.name);
        each.insert(c.id.clone(), body);
    }
    let code = if worst == "down" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        axum::Json(json!({
            "status": worst,
            "score": score,
            "version": env!("CARGO_PKG_VERSION"),
            "companies": each,
        })),
    )
        .into_response()
}

/// `GET /api/v1/companies`: every company with its health, queues and breaker states
/// (a company that did not start: `"running": false` and why).
pub async fn list(State(st): State<ServerState>) -> Response {
    let companies: Vec<Value> = st
        .control
        .companies
        .iter()
        .map(|c| match &c.engine {
            Ok(engine) => {
                let s = engine.latest();
                let counts = &s.catalog.counts;
                json!({
                    "id": c.id,
                    "name": c.name,
                    "running": true,
                    "health": { "status": s.telemetry.health.status, "score": s.telemetry.health.score },
                    "queues": {
                        "catalog": {
                            "queued": counts.queued, "in_flight": counts.in_flight,
                            "synced": counts.synced, "failed": counts.failed,
                            "rejected": counts.rejected, "paused": s.catalog.paused,
                        },
                        "dian": s.compliance.enabled.then(|| json!({
                            "waiting": s.compliance.counts.waiting(),
                            "paused": s.compliance.paused,
                        })),
                    },
                    "circuit_breakers": s.downstreams.iter().map(|d| json!({
                        "service": d.name,
                        "state": d.breaker.state.name(),
                    })).collect::<Vec<_>>(),
                })
            }
            Err(why) => json!({
                "id": c.id,
                "name": c.name,
                "running": false,
                "error": why,
                "health": { "status": "down", "score": 0 },
            }),
        })
        .collect();
    axum::Json(json!({ "companies": companies })).into_response()
}
