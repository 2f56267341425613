//! Stripe REST client: lists (cursor pagination), single reads, error mapping.
//! Knows nothing of retries or breakers; those wrap it from outside.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::Secret;
use crate::resilience::{Class, Classify, Downstream, Rejected, retry::parse_retry_after};

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("stripe {status}: {kind}: {message}")]
    Api {
        status: u16,
        kind: String,
        code: Option<String>,
        message: String,
        should_retry: Option<bool>,
        retry_after: Option<Duration>,
    },
    #[error("stripe transport: {0}")]
    Transport(String),
    #[error("stripe request timed out: {0}")]
    Timeout(String),
    /// Not sent: the circuit breaker refused it.
    #[error("stripe not called: {message}")]
    Rejected { message: String, retry_in_ms: u64 },
    #[error("stripe response: {0}")]
    Decode(String),
}

impl StripeError {
    /// Whether a retry may succeed (Stripe-Should-Retry wins; else 409, 429, 5xx, transport).
    pub fn is_transient(&self) -> bool {
        match self {
            StripeError::Api {
                status,
                should_retry,
                ..
            } => should_retry.unwrap_or(*status == 409 || *status == 429 || *status >= 500),
            StripeError::Transport(_) | StripeError::Timeout(_) | StripeError::Rejected { .. } => {
                true
            }
            StripeError::Decode(_) => false,
        }
    }
}

impl Classify for StripeError {
    fn class(&self) -> Class {
        match self {
            StripeError::Api {
                status: 429,
                retry_after,
                ..
            } => Class::Throttled(*retry_after),
            StripeError::Api { status, .. } if *status >= 500 => Class::Failure,
            StripeError::Api { .. } | StripeError::Rejected { .. } => Class::Ignored,
            StripeError::Transport(_) | StripeError::Decode(_) => Class::Failure,
            StripeError::Timeout(_) => Class::Timeout,
        }
    }
    fn retryable(&self) -> bool {
        !matches!(self, StripeError::Rejected { .. }) && self.is_transient()
    }
    fn rejected(r: Rejected) -> Self {
        let retry_in_ms = r.retry_in_ms();
        StripeError::Rejected {
            message: r.to_string(),
            retry_in_ms,
        }
    }
    /// Every call is safe to repeat (reads, and writes carrying their idempotency
    /// key), so a call that hangs is given up at the adaptive timeout and sent again.
    fn timed_out(after: std::time::Duration) -> Option<Self> {
        Some(StripeError::Timeout(format!(
            "no answer in {} ms",
            after.as_millis()
        )))
    }
}

fn transport(e: reqwest::Error) -> StripeError {
    if e.is_timeout() {
        StripeError::Timeout(e.without_url().to_string())
    } else {
        StripeError::Transport(e.without_url().to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Price {
    pub id: String,
    pub product: String,
    pub unit_amount: Option<i64>,
    pub currency: String,
    #[serde(default)]
    pub active: bool,
}

/// `default_price` is an id, or the object itself when expanded.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum PriceRef {
    Id(String),
    Expanded(Box<Price>),
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Product {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub default_price: Option<PriceRef>,
    #[serde(default)]
    pub updated: i64,
    #[serde(default)]
    pub created: i64,
    /// Set by `product.deleted` events.
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// Where a list page starts.
#[derive(Debug, Clone)]
pub enum Cursor {
    Start,
    After(String),
    Before(String),
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
    timeout: Duration,
    guard: Option<std::sync::Arc<Downstream>>,
}

impl StripeClient {
    pub fn new(http: reqwest::Client, base_url: &str, key: Secret) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            key,
            timeout: Duration::from_secs(30),
            guard: None,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Every call goes through `guard` (breaker, limits, retries).
    pub fn with_guard(mut self, guard: std::sync::Arc<Downstream>) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn guard(&self) -> Option<&std::sync::Arc<Downstream>> {
        self.guard.as_ref()
    }

    /// Reads are idempotent: the guard may retry them.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, StripeError> {
        match &self.guard {
            Some(g) => g.call(true, || self.get_once(path, query)).await,
            None => self.get_once(path, query).await,
        }
    }

    async fn get_once<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, StripeError> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.key.expose())
            .query(query)
            .timeout(self.timeout);
        if let Some(tp) = crate::telemetry::trace::traceparent() {
            req = req.header("traceparent", tp);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let should_retry = resp
            .headers()
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let e = &v["error"];
            return Err(StripeError::Api {
                status: status.as_u16(),
                kind: e["type"].as_str().unwrap_or("api_error").to_owned(),
                code: e["code"].as_str().map(str::to_owned),
                message: e["message"]
                    .as_str()
                    .unwrap_or("no error message")
                    .to_owned(),
                should_retry,
                retry_after,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| StripeError::Decode(e.to_string()))
    }

    fn cursor_params(cursor: &Cursor, limit: u32) -> Vec<(&'static str, String)> {
        let mut q = vec![("limit", limit.to_string())];
        match cursor {
            Cursor::Start => {}
            Cursor::After(id) => q.push(("starting_after", id.clone())),
            Cursor::Before(id) => q.push(("ending_before", id.clone())),
        }
        q
    }

    /// One page of products, newest first, default prices expanded.
    pub async fn list_products(
        &self,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<List<Product>, StripeError> {
        let mut q = Self::cursor_params(cursor, limit);
        q.push(("expand[]", "data.default_price".into()));
        self.get("/v1/products", &q).await
    }

    pub async fn product(&self, id: &str) -> Result<Product, StripeError> {
        self.get(
            &format!("/v1/products/{}", urlencoding::encode(id)),
            &[("expand[]", "default_price".into())],
        )
        .await
    }

    pub async fn price(&self, id: &str) -> Result<Price, StripeError> {
        self.get(&format!("/v1/prices/{}", urlencoding::encode(id)), &[])
            .await
    }

    /// One page of events, newest first.
    pub async fn list_events(
        &self,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<List<Event>, StripeError> {
        self.get("/v1/events", &Self::cursor_params(cursor, limit))
            .await
    }

    /// One page of paid invoices, newest first, created at or after `created_gte` (unix
    /// seconds) when given (raw: the compliance pipeline reads them).
    pub async fn list_paid_invoices(
        &self,
        cursor: &Cursor,
        limit: u32,
        created_gte: Option<i64>,
    ) -> Result<List<Value>, StripeError> {
        let mut q = Self::cursor_params(cursor, limit);
        q.push(("status", "paid".into()));
        if let Some(t) = created_gte {
            q.push(("created[gte]", t.to_string()));
        }
        q.push(("expand[]", "data.total_tax_amounts.tax_rate".into()));
        self.get("/v1/invoices", &q).await
    }
}
