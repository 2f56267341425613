//! QuickBooks Online v3 client (Items) and its OAuth 2 token keeper.
//!
//! Faults can arrive with HTTP 200, so the body is always inspected. Token refresh is
//! single-flight: one refresh at a time, and a caller whose token was already replaced
//! by another caller's refresh just takes the new one. The rotated refresh token is
//! persisted before the new access token is used (two refreshes racing, or a crash
//! between refresh and persist, would otherwise lock the engine out).
//!
//! A refresh token QuickBooks refuses (`invalid_grant`: superseded or revoked) is not a
//! glitch a retry fixes: it needs a person. The keeper then stops asking — the token
//! endpoint is tried again after 15 s, 30 s, 60 s … up to 5 minutes between attempts —
//! and meanwhile every call fails at once with [`QbError::AuthBlocked`], without any
//! network. The block lives in memory: a restart (with a new `quickbooks.refresh_token`,
//! or the same one) starts with one attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sha2::Digest;

use crate::config::Secret;
use crate::resilience::clock::SharedClock;
use crate::resilience::{Class, Classify, Downstream, Limiter, Rejected};
use crate::store::{OAuthState, Store, now_ms};

#[derive(Debug, Clone, thiserror::Error)]
pub enum QbError {
    /// A Fault from QuickBooks: `code` is its error code ("5010", "6240", …).
    #[error("quickbooks {status} fault {code}: {message}: {detail}")]
    Fault {
        status: u16,
        code: String,
        message: String,
        detail: String,
    },
    #[error("quickbooks throttled (429); wait {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error("quickbooks auth: {0}")]
    Auth(String),
    /// Not sent: the refresh token was refused and an operator must re-authorise; the
    /// token endpoint is tried again in `retry_in_ms`.
    #[error("quickbooks not called: authorisation needed ({reason})")]
    AuthBlocked { reason: String, retry_in_ms: u64 },
    #[error("quickbooks {0}: server error")]
    Server(u16),
    #[error("quickbooks transport: {0}")]
    Transport(String),
    #[error("quickbooks request timed out: {0}")]
    Timeout(String),
    /// Not sent: the circuit breaker refused it.
    #[error("quickbooks not called: {message}")]
    Rejected { message: String, retry_in_ms: u64 },
    #[error("quickbooks response: {0}")]
    Decode(String),
}

impl QbError {
    pub fn code(&self) -> Option<&str> {
        match self {
            QbError::Fault { code, .. } => Some(code),
            _ => None,
        }
    }
    /// Whether trying again later may succeed without changing the request.
    pub fn is_transient(&self) -> bool {
        match self {
            QbError::Throttled { .. }
            | QbError::Server(_)
            | QbError::Transport(_)
            | QbError::Timeout(_)
            | QbError::Rejected { .. }
            | QbError::AuthBlocked { .. }
            | QbError::Auth(_) => true,
            QbError::Fault { status, .. } => *status >= 500,
            QbError::Decode(_) => false,
        }
    }
}

impl Classify for QbError {
    fn class(&self) -> Class {
        match self {
            // No Retry-After on QuickBooks' 429: the limiter's configured pause applies.
            QbError::Throttled { .. } => Class::Throttled(None),
            QbError::Server(_) | QbError::Transport(_) | QbError::Decode(_) => Class::Failure,
            QbError::Timeout(_) => Class::Timeout,
            QbError::Fault { status, .. } if *status >= 500 => Class::Failure,
            QbError::Fault { .. }
            | QbError::Auth(_)
            | QbError::AuthBlocked { .. }
            | QbError::Rejected { .. } => Class::Ignored,
        }
    }
    fn retryable(&self) -> bool {
        match self {
            QbError::Auth(_) | QbError::AuthBlocked { .. } | QbError::Rejected { .. } => false,
            _ => self.is_transient(),
        }
    }
    fn rejected(r: Rejected) -> Self {
        let retry_in_ms = r.retry_in_ms();
        QbError::Rejected {
            message: r.to_string(),
            retry_in_ms,
        }
    }
    /// Every call is safe to repeat (reads, and writes carrying their idempotency
    /// key), so a call that hangs is given up at the adaptive timeout and sent again.
    fn timed_out(after: std::time::Duration) -> Option<Self> {
        Some(QbError::Timeout(format!(
            "no answer in {} ms",
            after.as_millis()
        )))
    }
}

fn transport(e: reqwest::Error) -> QbError {
    if e.is_timeout() {
        QbError::Timeout(e.without_url().to_string())
    } else {
        QbError::Transport(e.without_url().to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Item {
    pub id: String,
    pub sync_token: String,
    pub name: String,
    #[serde(default)]
    pub sku: Option<String>,
    #[serde(default)]
    pub unit_price: Option<f64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

/// Operations at most in one batch request.
pub const BATCH_MAX: usize = 30;

/// QuickBooks' batch throttle for a company quota of `per_min` requests a minute: 40
/// batch requests a minute at the published 500, scaled the same way (0: no limit).
pub fn batch_limit_per_min(per_min: u32) -> u32 {
    if per_min == 0 {
        0
    } else {
        (u64::from(per_min) * 40 / 500).max(1) as u32
    }
}

/// An Item body written out once, as compact JSON (as `Value`'s `Display` writes it):
/// hashed for request ids, kept as a pending create and sent as the same text.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemJson(String);

impl ItemJson {
    pub fn of(body: &Value) -> Self {
        Self(body.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One operation of a batch request.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOp {
    /// An Item body without `Id`.
    Create(ItemJson),
    /// An Item body with `Id` and `SyncToken`.
    Update(ItemJson),
    Query(String),
}

/// A batch request's body, written out from its operations' texts (each Item body was
/// written out once already: it goes in as it is).
fn batch_body(ops: &[BatchOp]) -> String {
    use std::fmt::Write as _;
    let size: usize = ops
        .iter()
        .map(|op| match op {
            BatchOp::Create(b) | BatchOp::Update(b) => b.as_str().len(),
            BatchOp::Query(q) => q.len(),
        })
        .sum();
    let mut out = String::with_capacity(size + 48 * ops.len() + 24);
    out.push_str("{\"BatchItemRequest\":[");
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let bid = i + 1;
        let _ = match op {
            BatchOp::Create(b) => write!(
                out,
                "{{\"bId\":\"{bid}\",\"operation\":\"create\",\"Item\":{}}}",
                b.as_str()
            ),
            BatchOp::Update(b) => write!(
                out,
                "{{\"bId\":\"{bid}\",\"operation\":\"update\",\"Item\":{}}}",
                b.as_str()
            ),
            BatchOp::Query(q) => write!(
                out,
                "{{\"bId\":\"{bid}\",\"Query\":{}}}",
                Value::String(q.clone())
            ),
        };
    }
    out.push_str("]}");
    out
}

/// A batch answer's entry, decoded straight from the text (no JSON tree in between).
#[derive(Deserialize)]
struct TypedAnswer {
    #[serde(rename = "bId")]
    bid: Option<String>,
    #[serde(rename = "Item")]
    item: Option<Item>,
    #[serde(rename = "Fault")]
    fault: Option<Value>,
    #[serde(rename = "QueryResponse")]
    query: Option<TypedQuery>,
}

#[derive(Deserialize)]
struct TypedQuery {
    #[serde(rename = "Item")]
    item: Option<Vec<Item>>,
}

/// An answer as it comes as a rule, decoded straight from the text: an Item, or a
/// batch's entries, and no Fault around it.
#[derive(Deserialize)]
struct Plain {
    #[serde(rename = "Item")]
    item: Option<Item>,
    #[serde(rename = "BatchItemResponse")]
    answers: Option<Vec<TypedAnswer>>,
    #[serde(rename = "Fault")]
    fault: Option<serde::de::IgnoredAny>,
    #[serde(rename = "fault")]
    fault_lower: Option<serde::de::IgnoredAny>,
}

/// `text` as [`Plain`] when it is one (HTTP 2xx, no Fault, every part of the expected
/// shape); else `None`, for [`parse_response`] to read.
fn plain(status: u16, text: &str) -> Option<Plain> {
    let p = serde_json::from_str::<Plain>(text).ok()?;
    ((200..300).contains(&status) && p.fault.is_none() && p.fault_lower.is_none()).then_some(p)
}

/// What a batch request's exchange gave: its entries decoded at once, or (anything
/// else: a Fault, an entry of an unexpected shape) the whole answer as a JSON tree.
enum BatchReply {
    Typed(Vec<TypedAnswer>),
    Tree(Value),
}

fn parse_batch_response(status: u16, text: &str) -> Result<BatchReply, QbError> {
    if let Some(Plain {
        answers: Some(answers),
        ..
    }) = plain(status, text)
    {
        return Ok(BatchReply::Typed(answers));
    }
    parse_response(status, text).map(BatchReply::Tree)
}

/// One operation's own answer in a batch.
#[derive(Debug, Clone)]
pub enum BatchAnswer {
    Item(Item),
    Items(Vec<Item>),
    /// This operation failed (the others may have succeeded).
    Fault(QbError),
}

fn yes() -> bool {
    true
}

/// OAuth 2 refresh-token flow with single-flight refresh and persistence.
pub struct TokenKeeper {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    store: Store,
    state: tokio::sync::Mutex<OAuthState>,
    refreshes: AtomicU64,
    /// Requests sent to the token endpoint (refused ones included).
    attempts: AtomicU64,
    clock: SharedClock,
    /// Set while the refresh token is refused (read without the async lock).
    blocked: std::sync::Mutex<Option<Block>>,
    /// On the shared store: the company's tokens, refreshed by one box at a time.
    shared: Option<crate::store::pg_tokens::PgTokens>,
}

/// First wait after a refused refresh token, and the longest.
pub const AUTH_BACKOFF_FIRST: Duration = Duration::from_secs(15);
pub const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What the operator does about a refused refresh token.
pub const AUTH_FIX: &str = "re-authorise the app in Intuit's developer portal, put the new refresh token in quickbooks.refresh_token in the config file (or SYNCCTL_QUICKBOOKS_REFRESH_TOKEN when the file has none), then restart syncctl";

#[derive(Debug, Clone)]
struct Block {
    reason: String,
    /// Wall-clock ms of the first refusal.
    since_ms: i64,
    /// Refusals in a row.
    refusals: u32,
    /// On the keeper's clock: no token request before this.
    retry_at: Duration,
}

/// Why QuickBooks cannot be called until an operator acts (for health and the console).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuthProblem {
    pub reason: String,
    pub since_ms: i64,
    pub refusals: u32,
    /// Until the token endpoint is tried again.
    pub retry_in_ms: u64,
    pub fix: String,
}

/// The wait after `refusals` refusals in a row: 15 s, 30 s, 60 s … capped at 5 min.
pub fn auth_backoff(refusals: u32) -> Duration {
    let doublings = refusals.saturating_sub(1).min(16);
    (AUTH_BACKOFF_FIRST * 2u32.pow(doublings)).min(AUTH_BACKOFF_MAX)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
    expires_in: i64,
}

fn hash(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

impl TokenKeeper {
    /// Uses the stored (newest) refresh token, unless the config now holds a different
    /// one than the one first stored: then the operator re-authorised and it wins.
    pub fn new(
        http: reqwest::Client,
        token_url: &str,
        client_id: &str,
        client_secret: Secret,
        configured_refresh: &Secret,
        store: Store,
    ) -> anyhow::Result<Self> {
        let configured_hash = hash(configured_refresh.expose());
        let state = match store.oauth()? {
            Some(s) if s.bootstrap_hash == configured_hash => s,
            _ => {
                let s = OAuthState {
                    bootstrap_hash: configured_hash,
                    refresh_token: configured_refresh.expose().to_owned(),
                    access_token: None,
                    access_expires_at_ms: None,
                };
                store.save_oauth(&s)?;
                s
            }
        };
        Ok(Self {
            http,
            token_url: token_url.to_owned(),
            client_id: client_id.to_owned(),
            client_secret,
            store,
            state: tokio::sync::Mutex::new(state),
            refreshes: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            clock: SharedClock::tokio(),
            blocked: std::sync::Mutex::new(None),
            shared: None,
        })
    }

    /// Keeps the company's tokens on the shared store from now on: a refresh takes the
    /// company's row lock, uses the token another box got meanwhile if it is still
    /// valid, and otherwise refreshes and stores the rotated refresh token before the
    /// lock is freed. The row starts from this box's newest tokens if it has none yet
    /// (or was started from another configured refresh token: the operator
    /// re-authorised); otherwise its tokens, the newest of every box, are used.
    pub async fn shared(
        self,
        pg: crate::store::pg_tokens::PgTokens,
        configured_refresh: &Secret,
    ) -> anyhow::Result<Self> {
        let local = self.state.lock().await.clone();
        let configured = hash(configured_refresh.expose());
        let refresh = if local.bootstrap_hash == configured {
            local.refresh_token.clone()
        } else {
            configured_refresh.expose().to_owned()
        };
        let state = pg
            .bootstrap(&configured, &refresh, now_ms())
            .await
            .map_err(|e| anyhow::anyhow!("the shared store's OAuth tokens: {e}"))?;
        *self.state.lock().await = state;
        Ok(Self {
            shared: Some(pg),
            ..self
        })
    }

    /// The clock the back-off after a refused refresh token runs on (tests: a manual one).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Refreshes done by this process.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Requests this process sent to the token endpoint, refused ones included.
    pub fn refresh_attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    fn block(&self) -> std::sync::MutexGuard<'_, Option<Block>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set while QuickBooks refuses the refresh token: calls wait for an operator.
    pub fn problem(&self) -> Option<AuthProblem> {
        let now = self.clock.now();
        self.block().as_ref().map(|b| AuthProblem {
            reason: b.reason.clone(),
            since_ms: b.since_ms,
            refusals: b.refusals,
            retry_in_ms: b.retry_at.saturating_sub(now).as_millis() as u64,
            fix: self.fix(),
        })
    }

    /// [`AUTH_FIX`]; for a token endpoint on this machine (the `syncctl sandbox` of a
    /// two-process setup), also how to get the token that sandbox accepts now.
    fn fix(&self) -> String {
        let local = reqwest::Url::parse(&self.token_url).ok().and_then(|u| {
            let host = u.host_str()?.trim_matches(['[', ']']).to_owned();
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            loopback.then(|| format!("{host}:{}", u.port_or_known_default().unwrap_or(80)))
        });
        match local {
            Some(addr) => format!(
                "{AUTH_FIX}; against a syncctl sandbox at {addr}, `syncctl sandbox --listen {addr} --print-config` prints the refresh token it accepts now"
            ),
            None => AUTH_FIX.to_owned(),
        }
    }

    /// How long until the token endpoint may be asked again (None: not blocked, or the
    /// wait is over and the next caller makes the attempt).
    pub fn blocked_for(&self) -> Option<Duration> {
        let now = self.clock.now();
        self.block()
            .as_ref()
            .map(|b| b.retry_at.saturating_sub(now))
            .filter(|left| !left.is_zero())
    }

    /// A valid access token, refreshing first if there is none or it is about to expire.
    pub async fn access_token(&self) -> Result<String, QbError> {
        let mut state = self.state.lock().await;
        let fresh = state.access_token.is_some()
            && state
                .access_expires_at_ms
                .is_some_and(|exp| exp - 60_000 > now_ms());
        if fresh {
            return Ok(state.access_token.clone().unwrap_or_default());
        }
        let stale = state.access_token.clone();
        self.refresh(&mut state, stale.as_deref()).await
    }

    /// Called after a 401: refreshes unless another caller already replaced `rejected`.
    pub async fn after_rejection(&self, rejected: &str) -> Result<String, QbError> {
        let mut state = self.state.lock().await;
        if let Some(current) = &state.access_token
            && current != rejected
        {
            return Ok(current.clone());
        }
        self.refresh(&mut state, Some(rejected)).await
    }

    /// The error for a call made while blocked, if the wait is not over.
    fn still_blocked(&self) -> Option<QbError> {
        let now = self.clock.now();
        let b = self.block();
        let b = b.as_ref()?;
        (b.retry_at > now).then(|| QbError::AuthBlocked {
            reason: b.reason.clone(),
            retry_in_ms: (b.retry_at - now).as_millis() as u64,
        })
    }

    /// A new access token in place of `stale` (the one held, expiring or refused).
    async fn refresh(
        &self,
        state: &mut OAuthState,
        stale: Option<&str>,
    ) -> Result<String, QbError> {
        if let Some(e) = self.still_blocked() {
            return Err(e);
        }
        if let Some(pg) = &self.shared {
            return self.refresh_shared(pg, state, stale).await;
        }
        let t = self.exchange(&state.refresh_token).await?;
        state.refresh_token = t.refresh_token;
        state.access_token = Some(t.access_token.clone());
        state.access_expires_at_ms = Some(now_ms() + t.expires_in * 1000);
        // Persist before use: the old refresh token is dead from now on.
        self.save_local(state).await?;
        self.refreshed();
        Ok(t.access_token)
    }

    /// [`Self::refresh`] on the shared store: under the company's row lock, the token
    /// another box got meanwhile, or a refresh stored (and committed) before use.
    async fn refresh_shared(
        &self,
        pg: &crate::store::pg_tokens::PgTokens,
        state: &mut OAuthState,
        stale: Option<&str>,
    ) -> Result<String, QbError> {
        let lock = pg
            .lock()
            .await
            .map_err(|e| QbError::Auth(format!("reading the shared tokens: {e}")))?;
        let row = lock.state.clone();
        let valid = row
            .access_expires_at_ms
            .is_some_and(|exp| exp - 60_000 > now_ms());
        if let Some(access) = row
            .access_token
            .clone()
            .filter(|a| valid && Some(a.as_str()) != stale)
        {
            // Another box refreshed: its token serves this one too.
            lock.release().await;
            *state = row;
            if self.block().take().is_some() {
                tracing::info!(
                    "quickbooks: another box's token refresh was accepted: calls resume"
                );
            }
            return Ok(access);
        }
        let t = match self.exchange(&row.refresh_token).await {
            Ok(t) => t,
            Err(e) => {
                lock.release().await;
                return Err(e);
            }
        };
        let next = OAuthState {
            bootstrap_hash: row.bootstrap_hash,
            refresh_token: t.refresh_token,
            access_token: Some(t.access_token.clone()),
            access_expires_at_ms: Some(now_ms() + t.expires_in * 1000),
        };
        // Stored and committed before use: the old refresh token is dead from now on.
        if let Err(e) = lock.store(&next, now_ms()).await {
            tracing::error!(
                "quickbooks: the rotated refresh token could not be stored on the shared store ({e}); \
                 this box keeps it, the others will be refused until it is stored"
            );
            *state = next;
            return Err(QbError::Auth(format!("storing the shared tokens: {e}")));
        }
        *state = next;
        // This box's own copy, as without the shared store (best effort: the shared
        // row is the one every box reads).
        if let Err(e) = self.save_local(state).await {
            tracing::warn!("quickbooks: tokens not copied to the local store: {e}");
        }
        self.refreshed();
        Ok(t.access_token)
    }

    async fn save_local(&self, state: &OAuthState) -> Result<(), QbError> {
        let store = self.store.clone();
        let snapshot = state.clone();
        tokio::task::spawn_blocking(move || store.save_oauth(&snapshot))
            .await
            .map_err(|e| QbError::Auth(format!("persisting tokens: {e}")))?
            .map_err(|e| QbError::Auth(format!("persisting tokens: {e}")))
    }

    fn refreshed(&self) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        if self.block().take().is_some() {
            tracing::info!("quickbooks token refresh accepted again: calls resume");
        } else {
            tracing::info!("quickbooks access token refreshed");
        }
    }

    /// One request to the token endpoint with `refresh_token`.
    async fn exchange(&self, refresh_token: &str) -> Result<TokenResponse, QbError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header("Accept", "application/json")
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| QbError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        // 429 (and 408) say "not now", not "no": retried like a server error.
        if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
            // Refused: our token or client credentials are wrong. Asking again changes
            // nothing until someone acts, so stop asking (with a back-off).
            let error = body["error"].as_str().unwrap_or("unknown error");
            let reason = match error {
                "invalid_grant" => format!(
                    "token refresh refused ({} invalid_grant): the refresh token was superseded or revoked",
                    status.as_u16()
                ),
                "invalid_client" => format!(
                    "token refresh refused ({} invalid_client): check quickbooks.client_id and client_secret",
                    status.as_u16()
                ),
                other => format!("token refresh refused ({} {other})", status.as_u16()),
            };
            return Err(self.refused(reason));
        }
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or("unknown error");
            return Err(QbError::Auth(format!(
                "token refresh failed: {status} {error}"
            )));
        }
        serde_json::from_value(body).map_err(|e| QbError::Decode(e.to_string()))
    }

    /// Records a refusal: blocks calls for the next back-off step.
    fn refused(&self, reason: String) -> QbError {
        let mut b = self.block();
        let refusals = b.as_ref().map_or(0, |b| b.refusals) + 1;
        let wait = auth_backoff(refusals);
        if refusals == 1 {
            tracing::error!(
                "quickbooks: {reason}; QuickBooks calls stop until an operator acts: {AUTH_FIX}"
            );
        } else {
            tracing::warn!(
                "quickbooks: {reason} (refusal {refusals}); next attempt in {} s",
                wait.as_secs()
            );
        }
        *b = Some(Block {
            since_ms: b.as_ref().map_or_else(now_ms, |b| b.since_ms),
            reason: reason.clone(),
            refusals,
            retry_at: self.clock.now() + wait,
        });
        QbError::AuthBlocked {
            reason,
            retry_in_ms: wait.as_millis() as u64,
        }
    }
}

#[derive(Clone)]
pub struct QuickBooksClient {
    http: reqwest::Client,
    company_url: String,
    /// `{company_url}/item?minorversion=…`, read once: a write adds its `requestid`
    /// instead of having its whole address parsed again (None: an address that does
    /// not parse, which each request then reports).
    item_url: Option<reqwest::Url>,
    minor_version: u32,
    timeout: Duration,
    tokens: Arc<TokenKeeper>,
    guard: Option<Arc<Downstream>>,
    /// Paces batch requests to the company's batch throttle.
    batch_pace: Option<Arc<Limiter>>,
}

/// Quotes a value for the QuickBooks query language (`'` → `\'`, `\` → `\\`).
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl QuickBooksClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        realm_id: &str,
        minor_version: u32,
        timeout: Duration,
        tokens: Arc<TokenKeeper>,
    ) -> Self {
        let company_url = format!(
            "{}/v3/company/{}",
            base_url.trim_end_matches('/'),
            urlencoding::encode(realm_id)
        );
        let item_url = reqwest::Url::parse_with_params(
            &format!("{company_url}/item"),
            &[("minorversion", minor_version.to_string())],
        )
        .ok();
        Self {
            http,
            company_url,
            item_url,
            minor_version,
            timeout,
            tokens,
            guard: None,
            batch_pace: None,
        }
    }

    /// Batch requests wait for `pace` (the company's batches-a-minute throttle).
    pub fn with_batch_pace(mut self, pace: Arc<Limiter>) -> Self {
        self.batch_pace = Some(pace);
        self
    }

    /// Every call goes through `guard` (breaker, limits, retries).
    pub fn with_guard(mut self, guard: Arc<Downstream>) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn guard(&self) -> Option<&Arc<Downstream>> {
        self.guard.as_ref()
    }

    pub fn tokens(&self) -> &TokenKeeper {
        &self.tokens
    }

    /// Sends a request through the guard. Every QuickBooks call here is safe to repeat:
    /// reads, and writes carrying a `requestid`.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Value, QbError> {
        self.send_as(build, parse_response).await
    }

    /// [`Self::send`], its answer decoded by `decode`.
    async fn send_as<T>(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        decode: fn(u16, &str) -> Result<T, QbError>,
    ) -> Result<T, QbError> {
        match &self.guard {
            Some(g) => g.call(true, || self.send_once_as(&build, decode)).await,
            None => self.send_once_as(&build, decode).await,
        }
    }

    /// One exchange with a bearer token, its answer decoded by `decode`; on a 401
    /// refreshes (once, single-flight) and tries again.
    async fn send_once_as<T>(
        &self,
        build: &impl Fn(&str) -> reqwest::RequestBuilder,
        decode: fn(u16, &str) -> Result<T, QbError>,
    ) -> Result<T, QbError> {
        let mut token = self.tokens.access_token().await?;
        for attempt in 0..2 {
            let mut req = build(&token)
                .header("Accept", "application/json")
                .timeout(self.timeout);
            if let Some(tp) = crate::telemetry::trace::traceparent() {
                req = req.header("traceparent", tp);
            }
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status().as_u16();
            if status == 401 && attempt == 0 {
                token = self.tokens.after_rejection(&token).await?;
                continue;
            }
            let text = resp.text().await.map_err(transport)?;
            return decode(status, &text);
        }
        Err(QbError::Auth(
            "access token rejected right after a refresh".into(),
        ))
    }

    /// One page of every Item, inactive ones included (`start` from 1, at most 1,000).
    pub async fn all_items(&self, start: usize, max: usize) -> Result<Vec<Item>, QbError> {
        self.query_items(&format!(
            "select * from Item where Active in (true, false) STARTPOSITION {start} MAXRESULTS {}",
            max.min(1000)
        ))
        .await
    }

    /// Items matching `Field = 'value'`, inactive ones included.
    pub async fn find_items(&self, field: &str, value: &str) -> Result<Vec<Item>, QbError> {
        self.query_items(&format!(
            "select * from Item where {field} = {} and Active in (true, false)",
            quote(value)
        ))
        .await
    }

    async fn query_items(&self, query: &str) -> Result<Vec<Item>, QbError> {
        let url = format!("{}/query", self.company_url);
        let mv = self.minor_version.to_string();
        let v = self
            .send(|t| {
                self.http
                    .get(&url)
                    .bearer_auth(t)
                    .query(&[("query", query), ("minorversion", mv.as_str())])
            })
            .await?;
        match v["QueryResponse"].get("Item") {
            None => Ok(Vec::new()),
            Some(items) => Vec::<Item>::deserialize(items)
                .map_err(|e| QbError::Decode(format!("Item list: {e}"))),
        }
    }

    pub async fn read_item(&self, id: &str) -> Result<Item, QbError> {
        let url = format!("{}/item/{}", self.company_url, urlencoding::encode(id));
        let mv = self.minor_version.to_string();
        self.send_as(
            |t| {
                self.http
                    .get(&url)
                    .bearer_auth(t)
                    .query(&[("minorversion", mv.as_str())])
            },
            parse_item_response,
        )
        .await
    }

    /// Creates or (with `Id` + `SyncToken` in the body) updates an Item. `request_id`
    /// makes a repeat of the same write return the first answer.
    pub async fn write_item(&self, body: &Value, request_id: &str) -> Result<Item, QbError> {
        self.write_item_json(&body.to_string(), request_id).await
    }

    /// [`Self::write_item`] of a body already written out (compact JSON, as `.json()`
    /// would send it): a caller that hashed or stored the text sends it as it is.
    pub async fn write_item_json(&self, body: &str, request_id: &str) -> Result<Item, QbError> {
        let url = match &self.item_url {
            Some(u) => {
                let mut u = u.clone();
                u.query_pairs_mut().append_pair("requestid", request_id);
                Ok(u)
            }
            None => Err(format!(
                "{}/item?minorversion={}&requestid={request_id}",
                self.company_url, self.minor_version
            )),
        };
        self.send_as(
            |t| {
                match &url {
                    Ok(u) => self.http.post(u.clone()),
                    Err(unparsed) => self.http.post(unparsed),
                }
                .bearer_auth(t)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_owned())
            },
            parse_item_response,
        )
        .await
    }
}

/// Items as a read returned them, with the server's time of the answer (`time`, RFC
/// 3339): a change data capture from that time on misses nothing changed after it.
#[derive(Debug, Clone, Default)]
pub struct TimedItems {
    pub items: Vec<Item>,
    /// Each Item's `MetaData.LastUpdatedTime`, in the order of `items`.
    pub updated: Vec<Option<String>>,
    pub time: Option<String>,
}

fn timed_items(list: Option<&Value>, time: &Value) -> Result<TimedItems, QbError> {
    let list = list.and_then(Value::as_array).cloned().unwrap_or_default();
    let updated = list
        .iter()
        .map(|i| i["MetaData"]["LastUpdatedTime"].as_str().map(str::to_owned))
        .collect();
    let items = serde_json::from_value(Value::Array(list))
        .map_err(|e| QbError::Decode(format!("Item list: {e}")))?;
    Ok(TimedItems {
        items,
        updated,
        time: time.as_str().map(str::to_owned),
    })
}

impl QuickBooksClient {
    /// [`Self::all_items`] with the answer's server time.
    pub async fn all_items_timed(&self, start: usize, max: usize) -> Result<TimedItems, QbError> {
        let query = format!(
            "select * from Item where Active in (true, false) STARTPOSITION {start} MAXRESULTS {}",
            max.min(1000)
        );
        let url = format!("{}/query", self.company_url);
        let mv = self.minor_version.to_string();
        let v = self
            .send(|t| {
                self.http
                    .get(&url)
                    .bearer_auth(t)
                    .query(&[("query", query.as_str()), ("minorversion", mv.as_str())])
            })
            .await?;
        timed_items(v["QueryResponse"].get("Item"), &v["time"])
    }

    /// Change data capture: the Items changed since `since` (RFC 3339, at most 30 days
    /// back; inactive ones too), oldest change first, at most 1,000, with the answer's
    /// server time. One request, whatever the company's size.
    pub async fn changed_items(&self, since: &str) -> Result<TimedItems, QbError> {
        let url = format!("{}/cdc", self.company_url);
        let mv = self.minor_version.to_string();
        let v = self
            .send(|t| {
                self.http.get(&url).bearer_auth(t).query(&[
                    ("entities", "Item"),
                    ("changedSince", since),
                    ("minorversion", mv.as_str()),
                ])
            })
            .await?;
        let list = v["CDCResponse"]
            .get(0)
            .and_then(|r| r["QueryResponse"].get(0))
            .and_then(|q| q.get("Item"));
        timed_items(list, &v["time"])
    }
}

impl QuickBooksClient {
    /// Items named any of `names` (case-insensitively, as QuickBooks compares names),
    /// inactive ones included: one request for up to 1,000 names.
    pub async fn find_items_named(&self, names: &[String]) -> Result<Vec<Item>, QbError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = names.iter().map(|n| quote(n)).collect();
        self.query_items(&format!(
            "select * from Item where Name in ({}) and Active in (true, false) MAXRESULTS 1000",
            list.join(", ")
        ))
        .await
    }

    /// The Items with these ids (up to 1,000), inactive ones included: one request.
    pub async fn items_by_id(&self, ids: &[String]) -> Result<Vec<Item>, QbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = ids.iter().map(|n| quote(n)).collect();
        self.query_items(&format!(
            "select * from Item where Id in ({}) and Active in (true, false) MAXRESULTS 1000",
            list.join(", ")
        ))
        .await
    }

    /// Sends up to [`BATCH_MAX`] operations in one request; each gets its own answer,
    /// in the order given. `request_id` (≤ 36 characters) makes a repeat of the same
    /// batch return the first answer. The request counts as one request per operation
    /// toward the rate, and waits for the batch throttle.
    pub async fn batch(
        &self,
        ops: &[BatchOp],
        request_id: &str,
    ) -> Result<Vec<BatchAnswer>, QbError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        if ops.len() > BATCH_MAX || request_id.chars().count() > 36 {
            return Err(QbError::Decode(format!(
                "a batch takes 1 to {BATCH_MAX} operations and a requestid of at most 36 characters (got {} and {})",
                ops.len(),
                request_id.chars().count()
            )));
        }
        let body = batch_body(ops);
        let url = format!("{}/batch", self.company_url);
        let mv = self.minor_version.to_string();
        let build = |t: &str| {
            self.http
                .post(&url)
                .bearer_auth(t)
                .query(&[("requestid", request_id), ("minorversion", mv.as_str())])
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        let reply = match &self.guard {
            Some(g) => {
                g.call_weighted(ops.len() as u32, self.batch_pace.as_ref(), true, || {
                    self.send_once_as(&build, parse_batch_response)
                })
                .await?
            }
            None => {
                if let Some(pace) = &self.batch_pace {
                    drop(pace.acquire().await);
                }
                self.send_once_as(&build, parse_batch_response).await?
            }
        };
        Ok(answers_of(reply, ops.len()))
    }
}

/// The answers of a batch of `n` operations, in their order: each its own entry's, or,
/// where the answer has none, a transport error (carried out or not, nobody knows: it
/// is asked again, never given up on).
fn answers_of(reply: BatchReply, n: usize) -> Vec<BatchAnswer> {
    let mut by_bid: Vec<Option<BatchAnswer>> = (0..n).map(|_| None).collect();
    let mut place = |bid: Option<&str>, answer: BatchAnswer| {
        let slot = bid
            .and_then(|b| b.parse::<usize>().ok())
            .and_then(|b| b.checked_sub(1))
            .and_then(|i| by_bid.get_mut(i));
        // (A bId answered twice: the last answer counts.)
        if let Some(slot) = slot {
            *slot = Some(answer);
        }
    };
    match reply {
        BatchReply::Typed(answers) => {
            for a in answers {
                let answer = typed_answer(a.fault, a.query, a.item);
                place(a.bid.as_deref(), answer);
            }
        }
        BatchReply::Tree(mut v) => {
            let answers = match v.get_mut("BatchItemResponse").map(Value::take) {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            for a in answers {
                place(a["bId"].as_str(), batch_answer(&a));
            }
        }
    }
    by_bid
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.unwrap_or_else(|| {
                BatchAnswer::Fault(QbError::Transport(format!(
                    "the batch answer has no entry for bId {}",
                    i + 1
                )))
            })
        })
        .collect()
}

/// A typed `BatchItemResponse` entry's answer, as [`batch_answer`] reads a tree's.
fn typed_answer(
    fault: Option<Value>,
    query: Option<TypedQuery>,
    item: Option<Item>,
) -> BatchAnswer {
    if let Some(f) = fault {
        return batch_answer(&serde_json::json!({ "Fault": f }));
    }
    if let Some(q) = query {
        return BatchAnswer::Items(q.item.unwrap_or_default());
    }
    match item {
        Some(item) => BatchAnswer::Item(item),
        None => BatchAnswer::Fault(QbError::Decode(
            "Item: an answer with neither an Item, a query's answer nor a Fault".into(),
        )),
    }
}

/// One `BatchItemResponse` entry: an Item, a query's Items, or its own Fault.
fn batch_answer(a: &Value) -> BatchAnswer {
    if let Some(f) = a.get("Fault") {
        // A per-operation Fault carries no HTTP status of its own: its type tells a
        // refusal of this operation (try it again as it is and it fails again) from
        // QuickBooks' own failure (try again).
        let status = match f.get("type").and_then(Value::as_str) {
            Some(t)
                if t.eq_ignore_ascii_case("SystemFault")
                    || t.eq_ignore_ascii_case("ServiceFault") =>
            {
                500
            }
            _ => 400,
        };
        let body = serde_json::json!({ "Fault": f }).to_string();
        return match parse_response(status, &body) {
            Err(e) => BatchAnswer::Fault(e),
            Ok(_) => BatchAnswer::Fault(QbError::Decode("a Fault without an error".into())),
        };
    }
    if let Some(qr) = a.get("QueryResponse") {
        return match qr.get("Item") {
            None => BatchAnswer::Items(Vec::new()),
            Some(items) => match serde_json::from_value(items.clone()) {
                Ok(items) => BatchAnswer::Items(items),
                Err(e) => BatchAnswer::Fault(QbError::Decode(format!("Item list: {e}"))),
            },
        };
    }
    match item_of(a) {
        Ok(item) => BatchAnswer::Item(item),
        Err(e) => BatchAnswer::Fault(e),
    }
}

/// An answer of one Item, decoded straight from the text; anything else (a Fault, an
/// Item of an unexpected shape) as [`parse_response`] and [`item_of`] read it.
fn parse_item_response(status: u16, text: &str) -> Result<Item, QbError> {
    if let Some(Plain {
        item: Some(item), ..
    }) = plain(status, text)
    {
        return Ok(item);
    }
    item_of(&parse_response(status, text)?)
}

fn item_of(v: &Value) -> Result<Item, QbError> {
    // Read in place (a clone of the answer first was 1 % of a sync's CPU).
    Item::deserialize(&v["Item"]).map_err(|e| QbError::Decode(format!("Item: {e}")))
}

/// Maps an HTTP answer to a value or an error; Faults may come with any status.
pub fn parse_response(status: u16, text: &str) -> Result<Value, QbError> {
    if status == 429 {
        // An XML body even to a JSON request; Intuit says wait 60 s.
        return Err(QbError::Throttled {
            retry_after_secs: 60,
        });
    }
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if status >= 500 => return Err(QbError::Server(status)),
        Err(e) => return Err(QbError::Decode(format!("HTTP {status}: {e}"))),
    };
    let fault = v.get("Fault").or_else(|| v.get("fault"));
    if let Some(f) = fault {
        let err = f
            .get("Error")
            .or_else(|| f.get("error"))
            .and_then(|e| e.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        let field = |upper: &str, lower: &str| {
            err.get(upper)
                .or_else(|| err.get(lower))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let code = field("code", "code");
        if status == 401 || code == "3200" {
            return Err(QbError::Auth(field("Message", "message")));
        }
        return Err(QbError::Fault {
            status,
            code,
            message: field("Message", "message"),
            detail: field("Detail", "detail"),
        });
    }
    if status >= 500 {
        return Err(QbError::Server(status));
    }
    if !(200..300).contains(&status) {
        return Err(QbError::Decode(format!("HTTP {status} without a Fault")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fault_with_http_200_is_an_error() {
        let body = r#"{"Fault":{"Error":[{"Message":"Duplicate Name Exists Error","Detail":"x","code":"6240"}],"type":"ValidationFault"},"time":"t"}"#;
        assert_eq!(parse_response(200, body).unwrap_err().code(), Some("6240"));
    }

    #[test]
    fn lowercase_401_fault_is_an_auth_error() {
        let body = r#"{"fault":{"error":[{"message":"message=AuthenticationFailed","detail":"Token expired","code":"3200"}],"type":"AUTHENTICATION"}}"#;
        assert!(matches!(parse_response(401, body), Err(QbError::Auth(_))));
    }

    #[test]
    fn xml_429_is_throttling_with_sixty_seconds() {
        let body = r#"<IntuitResponse><Fault type="SERVICE"><Error code="3001"><Message>message=ThrottleExceeded</Message></Error></Fault></IntuitResponse>"#;
        assert!(matches!(
            parse_response(429, body),
            Err(QbError::Throttled {
                retry_after_secs: 60
            })
        ));
    }

    #[test]
    fn a_batch_body_is_the_json_of_its_operations_with_each_item_as_written() {
        let create = json!({"Name": "Café \"x\"", "Sku": "prod_1", "UnitPrice": 1.5});
        let update = json!({"Id": "7", "SyncToken": "2", "sparse": true, "Name": "b"});
        let query = "select * from Item where Name in ('O\\'Brien')".to_owned();
        let ops = [
            BatchOp::Create(ItemJson::of(&create)),
            BatchOp::Update(ItemJson::of(&update)),
            BatchOp::Query(query.clone()),
        ];
        let body: Value = serde_json::from_str(&batch_body(&ops)).unwrap();
        assert_eq!(
            body,
            json!({"BatchItemRequest": [
                {"bId": "1", "operation": "create", "Item": create},
                {"bId": "2", "operation": "update", "Item": update},
                {"bId": "3", "Query": query},
            ]})
        );
    }

    #[test]
    fn a_batch_answer_reads_the_same_decoded_at_once_or_as_a_tree() {
        let item = |id: &str| {
            json!({"Id": id, "SyncToken": "0", "Name": format!("n{id}"), "Sku": format!("p{id}"),
                   "UnitPrice": 2.5, "Active": true, "Type": "Service",
                   "MetaData": {"CreateTime": "t", "LastUpdatedTime": "t"},
                   "IncomeAccountRef": {"value": "1", "name": "Sales"}})
        };
        let fault = json!({"type": "ValidationFault",
            "Error": [{"Message": "Duplicate", "Detail": "d", "code": "6240"}]});
        let cases = [
            // As a rule: Items, a Fault of one operation, a query's answer (with Items
            // and without), a bId answered twice, one not answered, one not a number.
            (
                json!({"BatchItemResponse": [
                    {"bId": "2", "Item": item("2")},
                    {"bId": "1", "Item": item("1")},
                    {"bId": "3", "Fault": fault},
                    {"bId": "4", "QueryResponse": {"Item": [item("9")], "startPosition": 1}},
                    {"bId": "5", "QueryResponse": {}},
                    {"bId": "6", "Item": item("6")},
                    {"bId": "6", "Item": item("66")},
                    {"bId": "x", "Item": item("8")},
                ], "time": "t"}),
                true,
            ),
            // An entry of an unexpected shape: the others are read all the same.
            (
                json!({"BatchItemResponse": [
                    {"bId": "1", "Item": {"Name": "no id"}},
                    {"bId": "2", "Item": item("2")},
                    {"bId": "3"},
                ]}),
                false,
            ),
        ];
        for (answer, typed) in cases {
            let text = answer.to_string();
            let fast = parse_batch_response(200, &text).unwrap();
            assert_eq!(matches!(fast, BatchReply::Typed(_)), typed, "{text}");
            let tree = BatchReply::Tree(parse_response(200, &text).unwrap());
            let (fast, tree) = (answers_of(fast, 8), answers_of(tree, 8));
            assert_eq!(format!("{fast:?}"), format!("{tree:?}"));
        }
        // The typed reading of the first case, answer by answer.
        let text = json!({"BatchItemResponse": [
            {"bId": "1", "Item": item("1")}, {"bId": "2", "Fault": fault},
        ]})
        .to_string();
        let read = answers_of(parse_batch_response(200, &text).unwrap(), 3);
        assert!(
            matches!(&read[0], BatchAnswer::Item(i) if i.id == "1" && i.unit_price == Some(2.5))
        );
        assert!(matches!(&read[1], BatchAnswer::Fault(e) if e.code() == Some("6240")));
        assert!(matches!(
            &read[2],
            BatchAnswer::Fault(QbError::Transport(_))
        ));
        // A Fault around the whole answer, even with HTTP 200, is the batch's error.
        let whole = json!({"Fault": fault, "time": "t"}).to_string();
        assert_eq!(
            parse_batch_response(200, &whole)
                .err()
                .and_then(|e| e.code().map(str::to_owned)),
            Some("6240".into())
        );
        assert!(matches!(
            parse_batch_response(429, "<IntuitResponse/>"),
            Err(QbError::Throttled { .. })
        ));
    }

    #[test]
    fn an_item_answer_reads_the_same_decoded_at_once_or_as_a_tree() {
        let ok = json!({"Item": {"Id": "3", "SyncToken": "1", "Name": "n", "Active": false,
                                 "MetaData": {"CreateTime": "t"}}, "time": "t"})
        .to_string();
        let read = parse_item_response(200, &ok).unwrap();
        assert_eq!(read, item_of(&parse_response(200, &ok).unwrap()).unwrap());
        assert!(!read.active);
        let fault = r#"{"Fault":{"Error":[{"Message":"Stale","Detail":"x","code":"5010"}],"type":"ValidationFault"},"time":"t"}"#;
        assert_eq!(
            parse_item_response(200, fault).unwrap_err().code(),
            Some("5010")
        );
        let odd = json!({"Item": {"Name": "no id"}}).to_string();
        assert!(matches!(
            parse_item_response(200, &odd),
            Err(QbError::Decode(_))
        ));
        assert!(matches!(
            parse_item_response(503, "busy"),
            Err(QbError::Server(503))
        ));
    }

    #[test]
    fn quote_escapes_apostrophes_and_backslashes() {
        assert_eq!(quote(r"O'Brien\x"), r"'O\'Brien\\x'");
    }
}
