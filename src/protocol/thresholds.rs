//! The thresholds an operator may tune at run time, with their bounds: the table every
//! front-end checks a value against before it sends it (the engine checks again).

use serde::{Deserialize, Serialize};

/// A threshold the operator may tune at run time: its config key, its bounds, and
/// what it means. `PUT /api/v1/thresholds`, `:set` and the Settings view use these names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Threshold {
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    /// Whole numbers only.
    pub integer: bool,
    pub help: &'static str,
}

pub const THRESHOLDS: &[Threshold] = &[
    Threshold {
        name: "alerts.error_rate_percent",
        min: 0.1,
        max: 100.0,
        integer: false,
        help: "error rate of a downstream over the last minute (%)",
    },
    Threshold {
        name: "alerts.latency_p95_ms",
        min: 1.0,
        max: 600_000.0,
        integer: false,
        help: "p95 latency of a downstream (ms)",
    },
    Threshold {
        name: "alerts.cache_miss_rate_percent",
        min: 0.1,
        max: 100.0,
        integer: false,
        help: "avoidable cache misses over the last minute (%)",
    },
    Threshold {
        name: "alerts.consecutive_failures",
        min: 1.0,
        max: 10_000.0,
        integer: true,
        help: "failed calls in a row to one downstream",
    },
    Threshold {
        name: "alerts.queue_depth",
        min: 1.0,
        max: 10_000_000.0,
        integer: true,
        help: "jobs or invoices waiting in a queue that is not draining",
    },
    Threshold {
        name: "alerts.queue_drain_secs",
        min: 0.0,
        max: 86_400.0,
        integer: true,
        help: "a queue is not draining past this time to empty (s)",
    },
    Threshold {
        name: "alerts.dian_failure_rate_percent",
        min: 0.1,
        max: 100.0,
        integer: false,
        help: "DIAN sends not accepted over 5 minutes (%)",
    },
    Threshold {
        name: "alerts.for_secs",
        min: 0.0,
        max: 86_400.0,
        integer: true,
        help: "how long a condition holds before firing (s)",
    },
    Threshold {
        name: "alerts.cooldown_secs",
        min: 0.0,
        max: 86_400.0,
        integer: true,
        help: "quiet time after a notification (s)",
    },
    Threshold {
        name: "alerts.clear_ratio",
        min: 0.1,
        max: 1.0,
        integer: false,
        help: "resolve below this share of the threshold",
    },
    Threshold {
        name: "anomaly.z_threshold",
        min: 1.0,
        max: 100.0,
        integer: false,
        help: "|z| that marks a point anomalous",
    },
    Threshold {
        name: "anomaly.mad_threshold",
        min: 1.0,
        max: 100.0,
        integer: false,
        help: "modified z (MAD) for latency",
    },
    Threshold {
        name: "anomaly.min_samples",
        min: 3.0,
        max: 3600.0,
        integer: true,
        help: "baseline points before any verdict",
    },
    Threshold {
        name: "anomaly.consecutive",
        min: 1.0,
        max: 600.0,
        integer: true,
        help: "anomalous points in a row to report",
    },
];

/// Checks one threshold's name and value against [`THRESHOLDS`].
pub fn check_threshold(name: &str, v: f64) -> Result<&'static Threshold, String> {
    let Some(t) = THRESHOLDS.iter().find(|t| t.name == name) else {
        return Err(format!(
            "unknown threshold {name:?} (known: {})",
            THRESHOLDS
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if !v.is_finite() || v < t.min || v > t.max {
        return Err(format!(
            "{name}: {v} is out of range ({} to {})",
            t.min, t.max
        ));
    }
    if t.integer && v.fract() != 0.0 {
        return Err(format!("{name}: {v} must be a whole number"));
    }
    Ok(t)
}

/// A threshold spec travels as its data; on arrival it resolves by name to this build's
/// [`THRESHOLDS`] entry (its text is `'static`), and one this build does not know is an error.
impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            name: String,
        }
        let w = Wire::deserialize(d)?;
        THRESHOLDS
            .iter()
            .find(|t| t.name == w.name)
            .copied()
            .ok_or_else(|| serde::de::Error::custom(format!("unknown threshold {:?}", w.name)))
    }
}

/// What a threshold would have done: the firings a replay of the recorded history
/// gives under the value in force and under a proposed one
/// ([`Query::WhatIf`](super::Query::WhatIf)), before the operator applies it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct WhatIf {
    pub name: String,
    pub current: f64,
    pub proposed: f64,
    /// What is counted: `error_rate alerts`, `alerts`, `anomalies`.
    pub counts: String,
    /// The last hour (or as much of it as the engine has run).
    pub hour: WhatIfWindow,
    /// The last 24 hours, where that much history exists (None: it does not).
    pub day: Option<WhatIfWindow>,
}

/// A what-if over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WhatIfWindow {
    /// Seconds of history replayed.
    pub secs: u64,
    /// Times it went firing (alerts) or opened (anomalies) under the value in force…
    pub current: u64,
    /// …and under the proposed value.
    pub proposed: u64,
    /// Of those, how many were notified (not quiet: cooldown); alerts only.
    pub current_notified: u64,
    pub proposed_notified: u64,
}

impl WhatIf {
    /// One line: `last 1h: 3 → 7 error_rate alerts fired (12 → 5)`.
    pub fn summary(&self) -> String {
        let fmt = |v: f64| {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                format!("{v}")
            }
        };
        let window = |w: &WhatIfWindow| {
            let span = if w.secs >= 3600 {
                format!("{}h", w.secs / 3600)
            } else {
                format!("{}m", w.secs.div_ceil(60))
            };
            format!("last {span}: {} → {}", w.current, w.proposed)
        };
        let mut line = format!(
            "what-if {} {} → {}: {} {} would have fired",
            self.name,
            fmt(self.current),
            fmt(self.proposed),
            window(&self.hour),
            self.counts
        );
        match &self.day {
            Some(d) => line.push_str(&format!("; {}", window(d))),
            None => line.push_str("; 24h: no history"),
        }
        line
    }
}
