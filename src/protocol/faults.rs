//! The sandbox's fault settings, and the patch a console sends to change them (the
//! demo's outage toggle).

use serde::{Deserialize, Serialize};

/// The services the sandbox can break (`[sandbox.faults.<service>]`, the fault patch).
pub const FAULT_SERVICES: [&str; 4] = ["stripe", "quickbooks", "alegra", "dian"];

/// A partial update: fields left out keep their value.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPatch {
    pub service: String,
    pub outage: Option<bool>,
    pub error_rate: Option<f64>,
    pub latency_ms: Option<u64>,
    pub latency_jitter_ms: Option<u64>,
    pub latency_distribution: Option<Distribution>,
    pub timeout_rate: Option<f64>,
    pub reset_rate: Option<f64>,
    pub rate_limit_per_min: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl FaultPatch {
    pub fn apply(&self, s: &mut FaultSettings) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { s.$f = v; } )* };
        }
        set!(
            outage,
            error_rate,
            latency_ms,
            latency_jitter_ms,
            latency_distribution,
            timeout_rate,
            reset_rate,
            rate_limit_per_min,
            max_concurrent
        );
    }
}

/// One service's faults; also the shape of `[sandbox.faults.<service>]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    /// Every request fails with 503.
    pub outage: bool,
    /// Share of requests answered with a 500 (0.0–1.0).
    pub error_rate: f64,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    pub latency_distribution: Distribution,
    /// Share of requests that hang until the client gives up (0.0–1.0).
    pub timeout_rate: f64,
    /// Share of requests whose connection is cut mid-response (0.0–1.0).
    pub reset_rate: f64,
    /// Requests per minute before 429 (0 = the service's own default, none here).
    pub rate_limit_per_min: u32,
    /// Requests in flight before 429 (0 = no cap).
    pub max_concurrent: u32,
}

impl FaultSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("reset_rate", self.reset_rate),
        ] {
            if !(0.0..=1.0).contains(&v) || v.is_nan() {
                return Err(format!("{name} must be between 0.0 and 1.0, got {v}"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Exactly `latency_ms`.
    #[default]
    Fixed,
    /// Normal around `latency_ms` with standard deviation `latency_jitter_ms`.
    Normal,
    /// `latency_ms` plus a Pareto tail scaled by `latency_jitter_ms` (rare, very slow).
    LongTail,
}
