//! Simulated Stripe: `GET /v1/products`, `/v1/prices`, `/v1/events` (newest first, cursor
//! pagination with `starting_after` / `ending_before`, `limit` 1–100), single-object
//! reads, Bearer auth and Stripe's error shape.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Sandbox, event_json, price_json};

pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/v1/products", get(list_products))
        .route("/v1/products/{id}", get(get_product))
        .route("/v1/prices", get(list_prices))
        .route("/v1/prices/{id}", get(get_price))
        .route("/v1/invoices", get(list_invoices))
        .route("/v1/invoices/{id}", get(get_invoice))
        .route("/v1/events", get(list_events))
        .route("/v1/events/{id}", get(get_event))
}

pub fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Response {
    let body = json!({ "error": {
        "type": kind, "code": code, "message": message, "param": param,
        "doc_url": code.map(|c| format!("https://stripe.com/docs/error-codes/{c}")),
    }});
    (status, axum::Json(body)).into_response()
}

/// Checks `Authorization: Bearer <key>` and counts the request: the company whose
/// secret key it is (an unknown key is counted at company 1, and refused).
fn authorize(s: &Sandbox, headers: &HeaderMap) -> Result<usize, Response> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let company = key.and_then(|k| s.company_by_stripe_key(k));
    {
        let mut tx = s.company(company.unwrap_or(0)).lock();
        tx.world.counters.stripe_requests += 1;
    }
    match (key, company) {
        (Some(_), Some(c)) => Ok(c),
        (Some(k), None) => {
            let tail: String = k
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                &format!("Invalid API Key provided: sk_****{tail}"),
                None,
            ))
        }
        (None, _) => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            None,
        )),
    }
}

/// The list parameters Stripe accepts, from a raw query string (`expand[]` repeats).
struct ListParams {
    limit: usize,
    starting_after: Option<String>,
    ending_before: Option<String>,
    expand: Vec<String>,
    filters: Vec<(String, String)>,
}

fn parse_list(query: Option<String>) -> Result<ListParams, Response> {
    let mut p = ListParams {
        limit: 10,
        starting_after: None,
        ending_before: None,
        expand: Vec::new(),
        filters: Vec::new(),
    };
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = urlencoding::decode(k)
            .map(|c| c.into_owned())
            .unwrap_or_default();
        let v = urlencoding::decode(&v.replace('+', " "))
            .map(|c| c.into_owned())
            .unwrap_or_default();
        match k.as_str() {
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => p.limit = n,
                _ => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        Some("parameter_invalid_integer"),
                        "Invalid integer: limit must be between 1 and 100",
                        Some("limit"),
                    ));
                }
            },
            "starting_after" => p.starting_after = Some(v),
            "ending_before" => p.ending_before = Some(v),
            "expand[]" => p.expand.push(v),
            _ => p.filters.push((k, v)),
        }
    }
    if p.starting_after.is_some() && p.ending_before.is_some() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_invalid"),
            "You may only specify one of these parameters: ending_before, starting_after.",
            None,
        ));
    }
    Ok(p)
}

/// Pages `ids` (already newest first) the way Stripe does.
fn page<T>(
    items: &[T],
    id_of: impl Fn(&T) -> &str,
    p: &ListParams,
) -> Result<(Vec<usize>, bool), Response> {
    let position = |cursor: &str| {
        items
            .iter()
            .position(|x| id_of(x) == cursor)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such object: '{cursor}'"),
                    None,
                )
            })
    };
    if let Some(cursor) = &p.ending_before {
        // The page just newer than the cursor, still listed newest first.
        let end = position(cursor)?;
        let start = end.saturating_sub(p.limit);
        return Ok(((start..end).collect(), start > 0));
    }
    let start = match &p.starting_after {
        Some(cursor) => position(cursor)? + 1,
        None => 0,
    };
    let end = (start + p.limit).min(items.len());
    Ok(((start..end).collect(), end < items.len()))
}

fn list_body(url: &str, data: Vec<Value>, has_more: bool) -> Response {
    axum::Json(json!({ "object": "list", "url": url, "has_more": has_more, "data": data }))
        .into_response()
}

async fn list_products(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let p = match parse_list(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let expand = p.expand.iter().any(|e| e == "data.default_price");
    let active = p
        .filters
        .iter()
        .find(|(k, _)| k == "active")
        .map(|(_, v)| v == "true");
    let mut tx = s.company(c).lock();
    tx.world.counters.stripe_list_pages += 1;
    let w = &tx.world;
    let newest_first: Vec<&super::Product> = w
        .products
        .iter()
        .rev()
        .filter(|x| active.is_none_or(|a| x.active == a))
        .collect();
    match page(&newest_first, |x| x.id.as_str(), &p) {
        Ok((idx, more)) => {
            let data = idx
                .into_iter()
                .map(|i| w.product_json(newest_first[i], expand))
                .collect();
            list_body("/v1/products", data, more)
        }
        Err(r) => r,
    }
}

async fn get_product(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let expand = q.unwrap_or_default().contains("default_price");
    let tx = s.company(c).lock();
    match tx.world.product(&id) {
        Some(p) => axum::Json(tx.world.product_json(p, expand)).into_response(),
        None => missing(&id),
    }
}

fn missing(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such object: '{id}'"),
        Some("id"),
    )
}

async fn list_prices(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let p = match parse_list(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let product = p
        .filters
        .iter()
        .find(|(k, _)| k == "product")
        .map(|(_, v)| v.clone());
    let mut tx = s.company(c).lock();
    tx.world.counters.stripe_list_pages += 1;
    let w = &tx.world;
    let newest_first: Vec<&super::Price> = w
        .prices
        .iter()
        .rev()
        .filter(|x| product.as_ref().is_none_or(|id| &x.product == id))
        .collect();
    match page(&newest_first, |x| x.id.as_str(), &p) {
        Ok((idx, more)) => list_body(
            "/v1/prices",
            idx.into_iter()
                .map(|i| price_json(newest_first[i]))
                .collect(),
            more,
        ),
        Err(r) => r,
    }
}

async fn get_price(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let tx = s.company(c).lock();
    match tx.world.price(&id) {
        Some(p) => axum::Json(price_json(p)).into_response(),
        None => missing(&id),
    }
}

async fn list_events(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let p = match parse_list(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let kind = p
        .filters
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.clone());
    let mut tx = s.company(c).lock();
    tx.world.counters.stripe_list_pages += 1;
    let w = &tx.world;
    // Stripe keeps 30 days of events.
    let horizon = w.now() - 30 * 86_400;
    let newest_first: Vec<&super::Event> = w
        .events
        .iter()
        .rev()
        .filter(|e| e.created >= horizon)
        .filter(|e| kind.as_ref().is_none_or(|k| &e.kind == k))
        .collect();
    match page(&newest_first, |x| x.id.as_str(), &p) {
        Ok((idx, more)) => list_body(
            "/v1/events",
            idx.into_iter()
                .map(|i| event_json(newest_first[i]))
                .collect(),
            more,
        ),
        Err(r) => r,
    }
}

async fn get_event(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let tx = s.company(c).lock();
    match tx.world.events.iter().find(|e| e.id == id) {
        Some(e) => axum::Json(event_json(e)).into_response(),
        None => missing(&id),
    }
}

async fn list_invoices(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let p = match parse_list(q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let filter = |k: &str| {
        p.filters
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    // Every sandbox invoice is paid; other statuses list nothing.
    let status_ok = filter("status").is_none_or(|v| v == "paid");
    let created_gte = filter("created[gte]").and_then(|v| v.parse::<i64>().ok());
    let mut tx = s.company(c).lock();
    tx.world.counters.stripe_invoice_pages += 1;
    let w = &tx.world;
    let newest_first: Vec<&super::Invoice> = w
        .invoices
        .iter()
        .rev()
        .filter(|_| status_ok)
        .filter(|i| created_gte.is_none_or(|t| i.created >= t))
        .collect();
    match page(&newest_first, |x| x.id.as_str(), &p) {
        Ok((idx, more)) => list_body(
            "/v1/invoices",
            idx.into_iter().map(|i| newest_first[i].json()).collect(),
            more,
        ),
        Err(r) => r,
    }
}

async fn get_invoice(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let tx = s.company(c).lock();
    match tx.world.invoices.iter().find(|i| i.id == id) {
        Some(i) => axum::Json(i.json()).into_response(),
        None => missing(&id),
    }
}
