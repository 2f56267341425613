//! The downstreams as a front-end sees them: breaker, limiter and call counters, and
//! the breaker's states and transitions.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownstreamView {
    pub name: String,
    pub breaker: BreakerView,
    pub limiter: LimiterView,
    pub calls: u64,
    pub successes: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub ignored: u64,
    pub throttled: u64,
    pub rejected: u64,
    pub retries: u64,
    pub budget_exhausted: u64,
    pub budget_available: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub consecutive_failures: u64,
    pub rejection_p99_us: Option<f64>,
}

/// What the console and the API show of one breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerView {
    pub name: String,
    pub state: State,
    pub calls: u32,
    pub failures: u32,
    pub slow_calls: u32,
    /// None below the minimum number of calls ("not enough data").
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub failure_threshold: f64,
    pub slow_call_threshold: f64,
    pub minimum_calls: u32,
    pub rejections: u64,
    pub half_open_permits: u32,
    pub half_open_in_use: u32,
    /// Until the next trial (OPEN only).
    pub until_half_open_ms: Option<u64>,
    pub open_wait_ms: u64,
    pub last_transition: Option<TransitionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionView {
    pub from: State,
    pub to: State,
    pub at_ms: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimiterView {
    pub rate_per_min: u32,
    pub effective_per_min: u32,
    pub max_concurrent: u32,
    pub effective_concurrent: u32,
    pub in_flight: u32,
    pub paused_for_ms: u64,
    pub throttles: u64,
    pub rate_waits: u64,
    pub granted: u64,
    /// The rate (per minute) the last 429 answered: the quota as learned, remembered
    /// across restarts (None before any 429).
    #[serde(default)]
    pub ceiling_per_min: Option<u32>,
    /// The company's quota is shared with the engines of other boxes (a Postgres
    /// store): this box's part of it. None: this box alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedQuotaView>,
}

/// A quota shared by several boxes, as one box sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedQuotaView {
    /// Boxes holding in-flight slots of the company now, this one included (1 for a
    /// downstream without an in-flight cap).
    pub boxes: u32,
    /// The company's in-flight slots this box holds.
    pub slots: u32,
    /// Tokens of the shared bucket this box has leased (requests and batch units).
    pub leased: u64,
    /// Of those, the tokens that ran out unspent (lost to every box: the bucket counted
    /// them when they were leased).
    #[serde(default)]
    pub unspent: u64,
    /// Why the shared quota cannot be taken (the store), if so: the box sends nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
    MetricsOnly,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
            State::ForcedOpen => "FORCED_OPEN",
            State::Disabled => "DISABLED",
            State::MetricsOnly => "METRICS_ONLY",
        }
    }
    /// A symbol, so state is readable without colour.
    pub fn symbol(self) -> &'static str {
        match self {
            State::Closed => "●",
            State::Open => "✖",
            State::HalfOpen => "◐",
            State::ForcedOpen => "⊘",
            State::Disabled => "○",
            State::MetricsOnly => "◇",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
            State::MetricsOnly,
        ]
        .into_iter()
        .find(|st| st.name().eq_ignore_ascii_case(s.trim()))
    }
    /// Whether `self → to` is a legal transition (self-transitions are no-ops, not errors).
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        match (self, to) {
            (a, b) if a == b => true,
            (_, ForcedOpen | Disabled | MetricsOnly) => true,
            (_, Closed) => true,
            (Closed | HalfOpen, Open) => true,
            (Open, HalfOpen) => true,
            _ => false,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One change of a breaker's state, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// Clock time of the transition.
    pub at: Duration,
    /// Wall time (ms since the epoch), for display.
    pub at_ms: i64,
    pub reason: String,
}
