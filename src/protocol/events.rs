//! Discrete things that happened, pushed to live feeds (alongside the snapshot).

use serde::{Deserialize, Serialize};

use super::resilience::Transition;
use super::snapshot::AuditEntry;
use super::telemetry::{Anomaly, Notification};

/// Discrete things that happened, for live feeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EngineEvent {
    Audit(AuditEntry),
    Breaker {
        service: String,
        transition: Transition,
    },
    Alert(Notification),
    Anomaly(Anomaly),
}
