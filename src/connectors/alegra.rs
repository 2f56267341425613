//! Alegra REST client (e-invoicing provider, Colombia): Basic auth, create an invoice
//! with its stamp (sent to DIAN at once), read one, find one by number, stamp up to 10
//! at once; `X-Rate-Limit-*` headers read; errors mapped with the provider's code
//! (EPR503, EPR500, AEP2011, AEP6009…). Alegra has no idempotency key, so only reads
//! are ever retried by the guard; a failed send is resolved by reading first.

pub use crate::protocol::RateWindow;
use std::time::Duration;

use serde_json::Value;

use crate::config::Secret;
use crate::resilience::{Class, Classify, Downstream, Rejected, retry::parse_retry_after};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AlegraError {
    /// Alegra answered with an error; `code` is the provider's (e.g. `EPR503`).
    #[error("alegra {status}: {}", code_and_message(code, message))]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("alegra transport: {0}")]
    Transport(String),
    #[error("alegra request timed out: {0}")]
    Timeout(String),
    /// Not sent: the circuit breaker or limiter refused it.
    #[error("alegra not called: {message}")]
    Rejected { message: String, retry_in_ms: u64 },
    #[error("alegra response: {0}")]
    Decode(String),
}

/// `CODE: message`, the code said once: Alegra's own messages often start with it
/// (`EPR503: La DIAN no respondió…`).
pub fn code_and_message(code: &str, message: &str) -> String {
    let m = message.trim_start();
    let repeats = m
        .strip_prefix(code)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', ' ', '-']));
    if code.is_empty() || repeats {
        m.to_owned()
    } else {
        format!("{code}: {m}")
    }
}

impl AlegraError {
    /// The provider's code, when Alegra answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            AlegraError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the request may have had its effect at Alegra/DIAN even though it
    /// failed: the outcome is unknown and must be read before anything is sent again.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            AlegraError::Timeout(_) | AlegraError::Transport(_) | AlegraError::Decode(_) => true,
            AlegraError::Api { status, code, .. } => {
                *status >= 500 || code.starts_with("EPR") || code == "AEP2011"
            }
            AlegraError::Rejected { .. } => false,
        }
    }
}

/// The provider codes that mean DIAN itself did not answer (the document may exist at
/// Alegra unstamped): evidence for the contingency procedure.
pub fn is_dian_unavailable(code: Option<&str>) -> bool {
    matches!(code, Some("EPR503" | "EPR500"))
}

impl Classify for AlegraError {
    fn class(&self) -> Class {
        match self {
            AlegraError::Api {
                status: 429,
                retry_after,
                ..
            } => Class::Throttled(*retry_after),
            // Alegra answered; DIAN did not. DIAN's availability is the contingency
            // procedure's business, and an open Alegra circuit would stop its probes.
            AlegraError::Api { code, .. } if is_dian_unavailable(Some(code)) => Class::Ignored,
            AlegraError::Api { status, .. } if *status >= 500 => Class::Failure,
            AlegraError::Api { .. } | AlegraError::Rejected { .. } => Class::Ignored,
            AlegraError::Transport(_) | AlegraError::Decode(_) => Class::Failure,
            AlegraError::Timeout(_) => Class::Timeout,
        }
    }
    fn retryable(&self) -> bool {
        match self {
            // Not repeated within a call: the contingency procedure paces DIAN's probes.
            AlegraError::Api { code, .. } if is_dian_unavailable(Some(code)) => false,
            AlegraError::Api { status, .. } => *status == 429 || *status >= 500,
            AlegraError::Transport(_) | AlegraError::Timeout(_) => true,
            AlegraError::Rejected { .. } | AlegraError::Decode(_) => false,
        }
    }
    fn rejected(r: Rejected) -> Self {
        let retry_in_ms = r.retry_in_ms();
        AlegraError::Rejected {
            message: r.to_string(),
            retry_in_ms,
        }
    }
}

fn transport(e: reqwest::Error) -> AlegraError {
    if e.is_timeout() {
        AlegraError::Timeout(e.without_url().to_string())
    } else {
        AlegraError::Transport(e.without_url().to_string())
    }
}

/// What DIAN said of a document, from Alegra's `stamp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampInfo {
    pub legal_status: String,
    pub cufe: Option<String>,
    pub date: Option<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// An invoice document as Alegra returns it (the fields syncctl reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlegraInvoice {
    pub id: String,
    pub number: String,
    pub date: String,
    pub stamp: Option<StampInfo>,
    /// The issuer's note; syncctl writes `stripe:<invoice id>` there.
    pub anotation: Option<String>,
}

impl AlegraInvoice {
    /// Whether this document was issued for Stripe invoice `stripe_id` (its annotation).
    pub fn is_for(&self, stripe_id: &str) -> bool {
        self.anotation
            .as_deref()
            .and_then(|a| a.strip_prefix("stripe:"))
            .is_some_and(|id| id == stripe_id)
    }

    /// The Stripe invoice this document was issued for, by its annotation.
    pub fn stripe_id(&self) -> Option<&str> {
        self.anotation.as_deref()?.strip_prefix("stripe:")
    }

    pub fn accepted(&self) -> bool {
        self.stamp
            .as_ref()
            .is_some_and(|s| s.legal_status.starts_with("STAMPED_AND_ACCEPTED"))
    }

    pub fn from_json(v: &Value) -> Result<Self, AlegraError> {
        let id = match &v["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(AlegraError::Decode("invoice without id".into())),
        };
        let strings = |x: &Value| -> Vec<String> {
            x.as_array()
                .map(|a| {
                    a.iter()
                        .map(|w| {
                            w.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| w.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let stamp = v["stamp"]["legalStatus"].as_str().map(|status| StampInfo {
            legal_status: status.to_owned(),
            cufe: v["stamp"]["cufe"].as_str().map(str::to_owned),
            date: v["stamp"]["date"].as_str().map(str::to_owned),
            warnings: strings(&v["stamp"]["warnings"]),
            errors: strings(&v["stamp"]["errors"]),
        });
        Ok(Self {
            id,
            number: v["numberTemplate"]["fullNumber"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            date: v["date"].as_str().unwrap_or("").to_owned(),
            stamp,
            anotation: v["anotation"].as_str().map(str::to_owned),
        })
    }
}

/// One entry of a batch stamp answer: the invoice, or the provider's error for it.
#[derive(Debug, Clone)]
pub enum StampResult {
    Invoice(AlegraInvoice),
    Error {
        id: String,
        code: String,
        message: String,
    },
}

#[derive(Clone)]
pub struct AlegraClient {
    http: reqwest::Client,
    base: String,
    email: String,
    token: Secret,
    timeout: Duration,
    guard: Option<std::sync::Arc<Downstream>>,
    window: std::sync::Arc<std::sync::Mutex<RateWindow>>,
}

impl AlegraClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        email: &str,
        token: Secret,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            email: email.to_owned(),
            token,
            timeout,
            guard: None,
            window: Default::default(),
        }
    }

    pub fn with_guard(mut self, guard: std::sync::Arc<Downstream>) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn guard(&self) -> Option<&std::sync::Arc<Downstream>> {
        self.guard.as_ref()
    }

    /// The rate-limit window from the last response's headers.
    pub fn window(&self) -> RateWindow {
        *self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn call(
        &self,
        idempotent: bool,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, AlegraError> {
        let once = || self.once(method.clone(), path, query, body);
        match &self.guard {
            Some(g) => g.call(idempotent, once).await,
            None => once().await,
        }
    }

    async fn once(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, AlegraError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.email, Some(self.token.expose()))
            .query(query)
            .timeout(self.timeout);
        if let Some(tp) = crate::telemetry::trace::traceparent() {
            req = req.header("traceparent", tp);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let (Some(limit), Some(remaining), Some(reset)) = (
            header("x-rate-limit-limit").and_then(|v| v.parse().ok()),
            header("x-rate-limit-remaining").and_then(|v| v.parse().ok()),
            header("x-rate-limit-reset").and_then(|v| v.parse().ok()),
        ) {
            *self.window.lock().unwrap_or_else(|p| p.into_inner()) = RateWindow {
                limit,
                remaining,
                reset_secs: reset,
                seen_at_ms: crate::store::now_ms(),
            };
        }
        // A 429 without Retry-After waits for the window to reset, as Alegra says.
        let retry_after = header("retry-after")
            .and_then(|v| parse_retry_after(&v, std::time::SystemTime::now()))
            .or_else(|| {
                header("x-rate-limit-reset")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
            });
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = match &v["code"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => status.as_u16().to_string(),
            };
            let message = v["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(AlegraError::Api {
                status: status.as_u16(),
                code: provider_code(&code, &message),
                message,
                retry_after: (status.as_u16() == 429).then_some(retry_after).flatten(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| AlegraError::Decode(e.to_string()))
    }

    /// `POST /invoices` with `stamp.generateStamp`: creates the document and sends it to
    /// DIAN. Never retried: a lost answer is resolved with [`Self::find_by_number`].
    pub async fn create_and_stamp(&self, body: &Value) -> Result<AlegraInvoice, AlegraError> {
        let v = self
            .call(false, reqwest::Method::POST, "/invoices", &[], Some(body))
            .await?;
        AlegraInvoice::from_json(&v)
    }

    pub async fn invoice(&self, id: &str) -> Result<AlegraInvoice, AlegraError> {
        let v = self
            .call(
                true,
                reqwest::Method::GET,
                &format!("/invoices/{}", urlencoding::encode(id)),
                &[],
                None,
            )
            .await?;
        AlegraInvoice::from_json(&v)
    }

    /// Changes the date of a document DIAN has not stamped (the same-day rule: a new
    /// date, hence a new CUFE when it is stamped). Safe to repeat.
    pub async fn update_date(&self, id: &str, date: &str) -> Result<AlegraInvoice, AlegraError> {
        let body = serde_json::json!({ "date": date, "dueDate": date });
        let v = self
            .call(
                true,
                reqwest::Method::PUT,
                &format!("/invoices/{}", urlencoding::encode(id)),
                &[],
                Some(&body),
            )
            .await?;
        AlegraInvoice::from_json(&v)
    }

    /// The documents holding a full number (prefix + consecutive), oldest first.
    pub async fn find_by_number(&self, number: &str) -> Result<Vec<AlegraInvoice>, AlegraError> {
        self.list(&[("number", number.to_owned()), ("limit", "30".into())])
            .await
    }

    /// One page of documents (`start`, at most 30), in Alegra's order.
    pub async fn list_invoices(
        &self,
        start: usize,
        limit: usize,
    ) -> Result<Vec<AlegraInvoice>, AlegraError> {
        self.page(start, limit, &[]).await
    }

    /// One page of documents, newest first (`order_field=id`, `order_direction=DESC`).
    pub async fn newest_invoices(
        &self,
        start: usize,
        limit: usize,
    ) -> Result<Vec<AlegraInvoice>, AlegraError> {
        let order = [("order_field", "id"), ("order_direction", "DESC")];
        self.page(start, limit, &order).await
    }

    async fn page(
        &self,
        start: usize,
        limit: usize,
        more: &[(&str, &str)],
    ) -> Result<Vec<AlegraInvoice>, AlegraError> {
        let mut query = vec![
            ("start", start.to_string()),
            ("limit", limit.min(30).to_string()),
        ];
        query.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
        self.list(&query).await
    }

    async fn list(&self, query: &[(&str, String)]) -> Result<Vec<AlegraInvoice>, AlegraError> {
        let v = self
            .call(true, reqwest::Method::GET, "/invoices", query, None)
            .await?;
        v.as_array()
            .ok_or_else(|| AlegraError::Decode("expected a list of invoices".into()))?
            .iter()
            .map(AlegraInvoice::from_json)
            .collect()
    }

    /// `POST /invoices/stamp` for up to 10 documents already at Alegra. Safe to repeat
    /// (an accepted document is not transmitted again), so the guard may retry it.
    pub async fn stamp(&self, ids: &[String]) -> Result<Vec<StampResult>, AlegraError> {
        assert!(
            ids.len() <= 10,
            "Alegra stamps at most 10 invoices per call"
        );
        let body = serde_json::json!({ "ids": ids });
        let v = self
            .call(
                true,
                reqwest::Method::POST,
                "/invoices/stamp",
                &[],
                Some(&body),
            )
            .await?;
        let list = v
            .as_array()
            .ok_or_else(|| AlegraError::Decode("expected a list".into()))?;
        list.iter()
            .map(|x| {
                if x["error"].is_object() {
                    let code = x["error"]["code"].as_str().unwrap_or("").to_owned();
                    let message = x["error"]["message"].as_str().unwrap_or("").to_owned();
                    Ok(StampResult::Error {
                        id: x["id"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| x["id"].to_string()),
                        code: provider_code(&code, &message),
                        message,
                    })
                } else {
                    AlegraInvoice::from_json(x).map(StampResult::Invoice)
                }
            })
            .collect()
    }
}

/// The provider code: the `code` field when it is one (`EPR503`), else one named in the
/// message (Alegra often puts it there), else the code as given.
fn provider_code(code: &str, message: &str) -> String {
    let looks_like = |s: &str| {
        (s.starts_with("EPR") || s.starts_with("AEP"))
            && s.len() >= 6
            && s[3..].bytes().all(|b| b.is_ascii_digit())
    };
    if looks_like(code) {
        return code.to_owned();
    }
    message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| looks_like(w))
        .map(str::to_owned)
        .unwrap_or_else(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 point 10: Alegra's messages start with their code; it is said once.
    #[test]
    fn a_code_is_said_once() {
        let e = AlegraError::Api {
            status: 504,
            code: "EPR503".into(),
            message: "EPR503: La DIAN no respondió".into(),
            retry_after: None,
        };
        assert_eq!(e.to_string(), "alegra 504: EPR503: La DIAN no respondió");
        assert_eq!(code_and_message("X1", "boom"), "X1: boom");
        assert_eq!(code_and_message("X1", "X12 is not X1"), "X1: X12 is not X1");
    }

    #[test]
    fn provider_codes_come_from_the_code_or_the_message() {
        assert_eq!(provider_code("EPR503", "x"), "EPR503");
        assert_eq!(
            provider_code("400", "Error AEP6011: numeración vencida"),
            "AEP6011"
        );
        assert_eq!(provider_code("400", "El cliente es obligatorio"), "400");
    }

    #[test]
    fn a_dian_timeout_leaves_the_outcome_unknown_but_a_validation_error_does_not() {
        let api = |status, code: &str| AlegraError::Api {
            status,
            code: code.into(),
            message: String::new(),
            retry_after: None,
        };
        assert!(api(503, "EPR503").outcome_unknown());
        assert!(api(502, "EPR500").outcome_unknown());
        assert!(AlegraError::Timeout("t".into()).outcome_unknown());
        assert!(!api(400, "AEP6009").outcome_unknown());
        assert!(!api(400, "400").outcome_unknown());
        assert!(
            !AlegraError::Rejected {
                message: String::new(),
                retry_in_ms: 0
            }
            .outcome_unknown()
        );
    }
}
