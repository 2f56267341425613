//! Telemetry as a front-end sees it: charts, anomalies, alerts, silences, the health
//! score and the lookup cache's counters.

use serde::{Deserialize, Serialize};

use super::command::Command;
use super::wire::{Word, one_of};

/// What the snapshot carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryView {
    pub health: Health,
    pub alerts: Vec<Alert>,
    /// Newest first.
    pub notifications: Vec<Notification>,
    /// Newest first.
    pub anomalies: Vec<Anomaly>,
    pub open_anomalies: usize,
    pub silences: Vec<Silence>,
    pub charts: Vec<Chart>,
    pub thresholds: Vec<(String, f64)>,
    /// Thresholds set for a while (`set … for 1h`): when each comes back to its old
    /// value.
    #[serde(default)]
    pub expiring: Vec<ExpiringThreshold>,
    pub cache: CacheStats,
    pub items_per_sec: f64,
    pub invoices_per_sec: f64,
}

/// A chart's points over the three windows the console offers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    pub name: String,
    /// 60 points of 1 s.
    pub m1: Vec<Option<f64>>,
    /// 100 points of 3 s.
    pub m5: Vec<Option<f64>>,
    /// 120 points of 30 s.
    pub h1: Vec<Option<f64>>,
}

/// The upper bounds, in seconds, of the latency buckets `/metrics` exposes (a last
/// bucket, +Inf, holds the rest). Fixed, so that the buckets of several engines add up.
pub const LATENCY_BUCKETS_S: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub sum_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// How many fell in each of [`LATENCY_BUCKETS_S`] (not cumulative: the count of
    /// those above the previous bound and at most this one), then above the last.
    /// Counted exactly as recorded (not from the percentile histogram).
    #[serde(default)]
    pub buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
}

impl Summary {
    /// The bucket a duration of `secs` falls in.
    pub fn bucket_of(secs: f64) -> usize {
        LATENCY_BUCKETS_S.partition_point(|le| *le < secs)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub metric: String,
    pub value: f64,
    pub baseline: f64,
    pub score: f64,
    pub method: Method,
    pub at_ms: i64,
    /// When the metric was back to normal (None: still anomalous).
    pub ended_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Mean and standard deviation.
    ZScore,
    /// Median and median absolute deviation.
    Mad,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    pub entries: usize,
    pub capacity: usize,
    pub hits: u64,
    pub misses: u64,
    /// Misses of keys never cached before (first lookups): no cache could have hit.
    pub cold_misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub invalidations: u64,
}

impl CacheStats {
    /// Hits over lookups, in percent (None before the first lookup).
    pub fn hit_rate(&self) -> Option<f64> {
        let n = self.hits + self.misses;
        (n > 0).then(|| self.hits as f64 * 100.0 / n as f64)
    }

    /// Misses a cache could have avoided: of keys cached before, since expired,
    /// evicted or invalidated.
    pub fn warm_misses(&self) -> u64 {
        self.misses - self.cold_misses
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Firing,
    Resolved,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        })
    }
}

/// One alert (a rule on one label) as it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub rule: String,
    pub label: String,
    pub severity: Severity,
    pub phase: Phase,
    /// When the current phase began.
    pub since_ms: i64,
    pub value: f64,
    pub threshold: f64,
    pub summary: String,
    pub acked_by: Option<String>,
    pub silenced_until_ms: Option<i64>,
}

/// A notification: what the feeds push and the history keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub rule: String,
    pub label: String,
    pub severity: Severity,
    pub phase: Phase,
    pub at_ms: i64,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    /// Recorded but not sent (silenced, acknowledged or inside the cooldown), and why.
    pub quiet: Option<String>,
    /// Resolved because its series stopped reporting (no calls, no queue): `value` is
    /// the last one it read, not what resolved it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_data: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Alert ids starting with this are muted (`error_rate` or `error_rate/alegra`).
    pub matcher: String,
    pub until_ms: i64,
    pub by: String,
}

/// Something health recommends a person do, as data: the component, why, and — where
/// one command does it — that command. Each front-end words it its own way (a key
/// and a screen in the console, a path over HTTP, a line of the grammar for `ctl`);
/// the engine names none of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// What it is about: `catalog`, `compliance`, `quickbooks`, `store`, `cache`…
    pub component: String,
    /// Why, and what to look at or fix, in words that name no front-end.
    pub reason: String,
    /// The command that carries it out, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Command>,
}

impl Recommendation {
    /// A recommendation without a command.
    pub fn new(component: impl Into<String>, reason: impl Into<String>) -> Self {
        Recommendation {
            component: component.into(),
            reason: reason.into(),
            action: None,
        }
    }

    /// With the command that carries it out.
    #[must_use]
    pub fn with_action(mut self, action: Command) -> Self {
        self.action = Some(action);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub score: u8,
    pub level: Level,
    /// ok, degraded or down ([`Level::status`]).
    #[serde(deserialize_with = "health_status")]
    pub status: Word,
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    pub recommendations: Vec<Recommendation>,
    /// Problems that need a person (see [`Problem`]).
    pub problems: Vec<Problem>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            score: 100,
            level: Level::Excellent,
            status: "ok",
            checks: Vec::new(),
            warnings: Vec::new(),
            errors: Vec::new(),
            recommendations: Vec::new(),
            problems: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub score: u8,
    pub level: Level,
    /// Why it is not 100, one line per cause.
    pub notes: Vec<String>,
}

/// Something the engine cannot fix by itself: what is wrong and what a person does
/// about it. The console's Overview shows these as a banner; `/health` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub component: String,
    pub reason: String,
    pub fix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Excellent,
    Good,
    Fair,
    Poor,
    Critical,
}

impl Level {
    pub fn of(score: u8) -> Self {
        match score {
            90.. => Level::Excellent,
            75.. => Level::Good,
            50.. => Level::Fair,
            25.. => Level::Poor,
            _ => Level::Critical,
        }
    }

    /// `/health`'s status word: ok (excellent, good), degraded (fair, poor), down.
    pub fn status(self) -> &'static str {
        match self {
            Level::Excellent | Level::Good => "ok",
            Level::Fair | Level::Poor => "degraded",
            Level::Critical => "down",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Excellent => "excellent",
            Level::Good => "good",
            Level::Fair => "fair",
            Level::Poor => "poor",
            Level::Critical => "critical",
        })
    }
}

/// The words [`Health::status`] takes.
fn health_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    one_of(d, &["ok", "degraded", "down"])
}

/// A threshold set for a while: at `until_ms` it comes back to `back_to` (audited).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpiringThreshold {
    pub name: String,
    /// The value in force until then.
    pub value: f64,
    /// The value it comes back to.
    pub back_to: f64,
    pub until_ms: i64,
    /// Who set it.
    pub by: String,
}
