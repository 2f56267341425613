//! The snapshot: the view model the engine publishes a few times a second, everything a
//! front-end draws, cheap to compare and serializable (a remote console receives it as
//! JSON). The DIAN queue's parts are in [`super::invoices`], the downstreams' in
//! [`super::resilience`], series, alerts and health in [`super::telemetry`].

use serde::{Deserialize, Serialize};

use super::invoices::ComplianceView;
use super::resilience::DownstreamView;
use super::telemetry::{Summary, TelemetryView};

/// The view model: everything the console draws, cheap to compare.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub mode: Mode,
    pub server_addr: String,
    pub catalog: CatalogView,
    pub recent_errors: Vec<ErrorLine>,
    /// Newest first.
    pub audit: Vec<AuditEntry>,
    pub token_refreshes: u64,
    pub draining: bool,
    /// stripe, quickbooks, alegra — in that order.
    pub downstreams: Vec<DownstreamView>,
    pub compliance: ComplianceView,
    /// Series, anomalies, alerts, health, thresholds, cache.
    pub telemetry: TelemetryView,
    /// Operations by p95, slowest first (since start).
    pub profile: Vec<Operation>,
    /// Where tuned thresholds are saved (None: no config file, they last until exit).
    pub config_file: Option<String>,
    /// Stripe against QuickBooks, kept live (counts, amounts, the worst rows).
    #[serde(default)]
    pub reconciliation: super::reconcile::ReconciliationView,
}

/// Which services the engine talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Mode {
    #[default]
    Live,
    Sandbox,
}

/// One operation's latency since start (the profile summary).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub name: String,
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogView {
    pub paused: bool,
    pub counts: CatalogCounts,
    pub full_sync: FullSyncState,
    pub workers: usize,
    /// Jobs claimed and not yet finished.
    pub in_flight: usize,
    /// Workers with a claim in hand (each claim holds up to `claim_batch` jobs).
    #[serde(default)]
    pub workers_busy: usize,
    /// Jobs completed per second, oldest first, one entry per second.
    pub per_second: Vec<u64>,
    pub completed: u64,
    pub errors: u64,
    pub webhooks_accepted: u64,
    pub webhooks_duplicate: u64,
    /// Verified, recorded, and of no effect (the reason is in the audit trail).
    pub webhooks_ignored: u64,
    pub webhooks_rejected: u64,
    pub last_reconcile_ms: Option<i64>,
    pub workers_target: usize,
    pub workers_min: usize,
    pub workers_max: usize,
    pub autoscale: bool,
    /// Why the target is what it is.
    pub autoscale_status: String,
    /// Newest first.
    pub decisions: Vec<ScaleDecision>,
    pub claim_batch: u32,
    pub page_size: u32,
    /// Jobs put back because the circuit refused them (no attempt used).
    pub deferred: u64,
}

impl CatalogView {
    /// Items per second over the last complete second.
    pub fn rate(&self) -> u64 {
        self.per_second.last().copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorLine {
    pub at_ms: i64,
    pub entity: String,
    pub message: String,
}

/// Progress of the full sync, stored as the cursor's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullSyncState {
    pub after: Option<String>,
    pub pages: u64,
    pub listed: u64,
    pub done: bool,
}

/// Counts for the console and /health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogCounts {
    pub products_seen: u64,
    pub synced: u64,
    pub queued: u64,
    pub in_flight: u64,
    pub failed: u64,
    pub rejected: u64,
    /// When the oldest queued job was written (ms since the epoch).
    pub oldest_queued_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub kind: String,
    pub entity: String,
    pub actor: String,
    pub message: String,
    /// The W3C trace of the work that wrote it (its outbound requests carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// One change of the auto-scaler's worker target, and why.
pub struct ScaleDecision {
    pub at_ms: i64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}
