//! The settings of alerts and anomaly detection (`[alerts]`, `[anomaly]` in the config
//! file, which re-exports them): telemetry owns what it is tuned by.

use serde::{Deserialize, Serialize};

/// Alert thresholds (tunable at run time; see [`crate::protocol::THRESHOLDS`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// A condition must hold this long before its alert fires.
    pub for_secs: u64,
    /// After a notification, the same alert stays quiet this long.
    pub cooldown_secs: u64,
    /// An alert resolves when its value falls below this share of its threshold.
    pub clear_ratio: f64,
    pub error_rate_percent: f64,
    pub latency_p95_ms: f64,
    pub cache_miss_rate_percent: f64,
    pub consecutive_failures: f64,
    /// A queue at least `queue_depth` deep alerts only when it is not draining: at the
    /// current rate it would take longer than this to empty, or nothing has left it for
    /// this long (s). 0 alerts on depth alone.
    pub queue_drain_secs: f64,
    pub queue_depth: f64,
    pub dian_failure_rate_percent: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            for_secs: 30,
            cooldown_secs: 300,
            clear_ratio: 0.8,
            error_rate_percent: 10.0,
            latency_p95_ms: 5000.0,
            cache_miss_rate_percent: 50.0,
            consecutive_failures: 5.0,
            queue_depth: 100.0,
            queue_drain_secs: 600.0,
            dian_failure_rate_percent: 10.0,
        }
    }
}

/// Anomaly detection on the 1-second series.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// |z| at or above which a point is anomalous (error rate, throughput, queues).
    pub z_threshold: f64,
    /// Modified z (median/MAD) at or above which a latency point is anomalous.
    pub mad_threshold: f64,
    /// Points of baseline before any verdict.
    pub min_samples: u64,
    /// Anomalous points in a row before an anomaly is reported.
    pub consecutive: u64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            z_threshold: 3.0,
            mad_threshold: 3.5,
            min_samples: 30,
            consecutive: 3,
        }
    }
}
