//! Builds [`Snapshot`]s from the engine's parts and publishes them when they changed,
//! and runs the once-a-second telemetry tick: a sample of every counter, the signals
//! health is judged on (scored in [`crate::telemetry::health`]), alerts, anomalies and
//! StatsD.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use super::catalog::Catalog;
use super::compliance;
use super::{CatalogView, ComplianceView, EngineEvent, Mode, Operation, Snapshot};
use crate::compliance::machine::Status;
use crate::config::Config;
use crate::resilience::{Downstream, DownstreamView, State as BreakerState};
use crate::store::{AuditEntry, CatalogCounts};

/// Builds snapshots from the engine's parts and publishes them when they changed.
pub(super) struct Publisher {
    catalog: Arc<Catalog>,
    compliance: Option<Arc<compliance::Compliance>>,
    compliance_key: Option<u64>,
    compliance_cache: ComplianceView,
    downstreams: Vec<Arc<Downstream>>,
    mode: Mode,
    server_addr: String,
    last_completed: u64,
    per_second: std::collections::VecDeque<u64>,
    second_started: tokio::time::Instant,
    audit: std::collections::VecDeque<AuditEntry>,
    last_audit_id: i64,
    pub(super) telemetry: crate::telemetry::Telemetry,
    /// The telemetry as the snapshot shows it, rebuilt on each tick and after an
    /// operator changed alerts or thresholds (not on every publish).
    telemetry_view: crate::telemetry::TelemetryView,
    ticked: bool,
    /// Connected to `server.statsd` when set.
    statsd: Option<std::net::UdpSocket>,
    /// The thresholds in force, and the file they are saved to.
    pub(super) config: Config,
    /// Thresholds set for a while: each comes back to its old value at its time.
    pub(super) expiring: Vec<crate::protocol::ExpiringThreshold>,
    /// Audit lines written off the publisher's task (a store that cannot write must not
    /// stop snapshots): kind, entity, message.
    audit_tx: mpsc::UnboundedSender<(String, String, String)>,
    /// The last catalog counts read, kept while the store cannot be read.
    counts: CatalogCounts,
    /// Set while the store cannot be read.
    read_error: Option<String>,
    catalog_progress: crate::telemetry::health::Progress,
    compliance_progress: crate::telemetry::health::Progress,
    /// REJECTED invoices by rule, re-read when a record changed: (version, count, groups).
    rejected: (u64, u64, Vec<crate::telemetry::health::RejectedByRule>),
    /// Stripe against QuickBooks (set once the engine has built it).
    pub(super) reconciler: Option<Arc<super::reconcile::Reconciler>>,
    /// Where the telemetry history goes to be written (None: not kept, or closed).
    pub(super) history_tx: Option<mpsc::Sender<super::periodic::HistoryBatch>>,
    /// What the writer could not take yet (it is writing the previous flush): sent
    /// with the next one. Never more than an hour of points and one value per key.
    history_pending: Option<super::periodic::HistoryBatch>,
    /// The alert and anomaly state last sent to be kept (its version), and when (ms).
    saved_telemetry: Option<(u64, u64)>,
    saved_telemetry_at: i64,
    /// The auto-scaler state last sent to be kept.
    saved_scaler: Option<crate::resilience::autoscale::SavedScaler>,
}

const SERIES_SECONDS: usize = 120;
/// `engine_state` keys.
const EXPIRING: &str = "thresholds.expiring";
const SILENCES: &str = "alerts.silences";
const TELEMETRY_STATE: &str = "telemetry.alerts";
const SCALER_STATE: &str = "catalog.autoscaler";
/// On a tick, the alerts and anomalies are written at most this often (an operator's
/// acknowledgement and the last flush, at once).
const TELEMETRY_STATE_EVERY_MS: i64 = 5000;

/// Why the history is flushed (see [`Publisher::flush_history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    /// The once-a-second tick.
    Tick,
    /// An operator changed what is kept (an acknowledgement, worker bounds).
    Operator,
    /// The engine stops: the block being filled too.
    Last,
}
const AUDIT_KEPT: usize = 500;

const INVOICES_SHOWN: usize = 300;

impl Publisher {
    /// The REJECTED invoices grouped by the DIAN rule that rejected them (re-read from
    /// the store only when a record changed).
    fn rejected_by_rule(
        cache: &mut (u64, u64, Vec<crate::telemetry::health::RejectedByRule>),
        c: &compliance::Compliance,
        count: u64,
    ) -> Vec<crate::telemetry::health::RejectedByRule> {
        let version = c.version();
        if count == 0 {
            *cache = (version, 0, Vec::new());
        } else if cache.0 != version || cache.1 != count {
            let recs = c
                .invoices
                .invoices(Some(Status::Rejected), "", 1000)
                .unwrap_or_default();
            let groups = crate::telemetry::health::RejectedByRule::group(recs.iter().map(|r| {
                (
                    r.number.as_str(),
                    r.last_message.as_deref().unwrap_or_default(),
                )
            }));
            *cache = (version, count, groups);
        }
        cache.2.clone()
    }

    /// The DIAN queue view. What comes from the store is re-read only when a record
    /// changed, not on every publish tick.
    fn compliance_view(&mut self) -> ComplianceView {
        let Some(c) = self.compliance.clone() else {
            return ComplianceView::default();
        };
        let key = c.version();
        if self.compliance_key != Some(key) {
            self.compliance_cache = self.read_compliance(&c);
            self.compliance_key = Some(key);
        }
        ComplianceView {
            enabled: true,
            paused: c.is_paused(),
            sends: c.metrics.sends.load(Ordering::Relaxed),
            validated: c.metrics.validated.load(Ordering::Relaxed),
            in_flight: c.in_flight(),
            window: c.alegra().window(),
            contingency: c.contingency_view(),
            now_ms: c.store.now_ms() / 1000 * 1000,
            numbering_hold: c.numbering_hold(),
            ..self.compliance_cache.clone()
        }
    }

    fn read_compliance(&self, c: &compliance::Compliance) -> ComplianceView {
        let store = &c.invoices;
        let mut invoices = store.invoices(None, "", INVOICES_SHOWN).unwrap_or_default();
        // Everything needing attention is listed even when older than the newest few.
        for s in [
            Status::Failed,
            Status::Rejected,
            Status::Fallback,
            Status::Unknown,
        ] {
            for r in store
                .invoices(Some(s), "", INVOICES_SHOWN)
                .unwrap_or_default()
            {
                if !invoices.iter().any(|x| x.stripe_id == r.stripe_id) {
                    invoices.push(r);
                }
            }
        }
        invoices.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then(b.number.cmp(&a.number))
        });
        ComplianceView {
            counts: store.compliance_counts().unwrap_or_default(),
            invoices,
            ..Default::default()
        }
    }

    pub(super) fn new(
        catalog: Arc<Catalog>,
        compliance: Option<Arc<compliance::Compliance>>,
        downstreams: Vec<Arc<Downstream>>,
        mode: Mode,
        server_addr: String,
        config: Config,
        audit_tx: mpsc::UnboundedSender<(String, String, String)>,
    ) -> Self {
        Self {
            audit_tx,
            counts: CatalogCounts::default(),
            read_error: None,
            catalog_progress: Default::default(),
            compliance_progress: Default::default(),
            rejected: (u64::MAX, 0, Vec::new()),
            reconciler: None,
            history_tx: None,
            history_pending: None,
            saved_telemetry: None,
            saved_telemetry_at: 0,
            saved_scaler: None,
            telemetry: crate::telemetry::Telemetry::new(
                config.alerts.clone(),
                config.anomaly.clone(),
            ),
            statsd: config.server.statsd.as_deref().and_then(|addr| {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                match sock.connect(addr).and_then(|_| sock.set_nonblocking(true)) {
                    Ok(()) => Some(sock),
                    Err(e) => {
                        tracing::warn!("server.statsd = {addr:?}: {e}; StatsD off");
                        None
                    }
                }
            }),
            telemetry_view: Default::default(),
            config,
            expiring: Vec::new(),
            ticked: false,
            catalog,
            compliance,
            compliance_key: None,
            compliance_cache: ComplianceView::default(),
            downstreams,
            mode,
            server_addr,
            last_completed: 0,
            // Only the seconds there were: a chart one second old says "1 s".
            per_second: std::collections::VecDeque::with_capacity(SERIES_SECONDS),
            second_started: tokio::time::Instant::now(),
            audit: std::collections::VecDeque::new(),
            last_audit_id: 0,
        }
    }

    /// One second of telemetry: a sample of every counter, then series, anomalies,
    /// alerts and health. What fired goes to the feeds and the audit trail.
    #[expect(
        clippy::too_many_lines,
        reason = "one snapshot assembled field by field"
    )]
    fn telemetry_tick(
        &mut self,
        compliance: &ComplianceView,
        counts: &CatalogCounts,
        views: &[DownstreamView],
        events: &broadcast::Sender<EngineEvent>,
    ) {
        use crate::telemetry::health;
        let store = &self.catalog.store;
        let m = &self.catalog.metrics;
        let now = store.now_ms();
        let qb_view = views.iter().find(|v| v.name == "quickbooks");
        let auth = self.catalog.qb().tokens().problem();
        let circuit_open = |v: Option<&DownstreamView>| {
            v.is_some_and(|v| {
                matches!(
                    v.breaker.state,
                    BreakerState::Open | BreakerState::ForcedOpen
                )
            })
        };
        // Work waiting and nothing finished for 5 minutes, with no reason already said
        // (paused, an open circuit, refused credentials): stalled.
        let waiting = counts.queued + counts.in_flight > 0
            && !self.catalog.is_paused()
            && !circuit_open(qb_view)
            && auth.is_none();
        let finished = m.completed.load(Ordering::Relaxed) + counts.failed + counts.rejected;
        let catalog = health::CatalogSignals {
            failed: counts.failed,
            rejected: counts.rejected,
            paused: self.catalog.is_paused(),
            queued: counts.queued,
            in_flight: counts.in_flight,
            stalled_ms: self.catalog_progress.stalled(now, finished, waiting),
        };
        let wh = store.write_health();
        let store_signals = health::StoreSignals {
            path: store.path().display().to_string(),
            write_failing: wh.failing_since_ms.map(|since| {
                (
                    crate::store::now_ms() - since,
                    wh.last_error.clone().unwrap_or_default(),
                )
            }),
            // A damage the background integrity check found is the first thing said.
            read_error: store.damaged().or_else(|| self.read_error.clone()),
        };
        let compliance_signals = match &self.compliance {
            Some(c) if compliance.enabled => {
                let due = c
                    .invoices
                    .next_invoice_due(false)
                    .ok()
                    .flatten()
                    .is_some_and(|at| at <= now);
                let alegra_open = circuit_open(views.iter().find(|v| v.name == "alegra"));
                let waiting = due
                    && !compliance.paused
                    && compliance.contingency.phase != "OUTAGE"
                    && !alegra_open;
                let numbering = match c.numbering() {
                    compliance::Numbering::Ready => health::NumberingSignal::Ready,
                    compliance::Numbering::Checking(why) => health::NumberingSignal::Checking(why),
                    compliance::Numbering::Refused { why, fix } => {
                        health::NumberingSignal::Refused { why, fix }
                    }
                };
                let progressed = c.version() + c.metrics.sends.load(Ordering::Relaxed);
                Some(health::ComplianceSignals {
                    failed: compliance.counts.get(Status::Failed),
                    rejected: Self::rejected_by_rule(
                        &mut self.rejected,
                        c,
                        compliance.counts.get(Status::Rejected),
                    ),
                    contingency: compliance.contingency.phase.to_string(),
                    paused: compliance.paused,
                    numbering,
                    stalled_ms: self.compliance_progress.stalled(now, progressed, waiting),
                })
            }
            _ => None,
        };
        let health::PipelineVerdict {
            checks,
            warnings,
            errors,
            recommendations,
            problems,
        } = health::pipelines(&health::PipelineSignals {
            catalog,
            quickbooks_auth: auth.as_ref().map(|p| health::AuthSignal {
                reason: p.reason.clone(),
                fix: p.fix.to_owned(),
                retry_in_ms: p.retry_in_ms,
            }),
            store: store_signals,
            compliance: compliance_signals,
        });
        let dian_queue = compliance.enabled.then(|| compliance.counts.waiting());
        let downstreams = self
            .downstreams
            .iter()
            .zip(views)
            .map(|(_, v)| crate::telemetry::DownstreamSample {
                auth: (v.name == "quickbooks")
                    .then(|| auth.as_ref().map(|p| p.reason.clone()))
                    .flatten(),
                ..crate::telemetry::DownstreamSample::from_view(v)
            })
            .collect();
        let cache = self
            .catalog
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats();
        let sample = crate::telemetry::Sample {
            now_ms: store.now_ms(),
            items_done: m.completed.load(Ordering::Relaxed),
            invoices_validated: self
                .compliance
                .as_ref()
                .map_or(0, |c| c.metrics.validated.load(Ordering::Relaxed)),
            dian_sends: self
                .compliance
                .as_ref()
                .map_or(0, |c| c.metrics.sends.load(Ordering::Relaxed)),
            dian_failures: self
                .compliance
                .as_ref()
                .map_or(0, |c| c.metrics.dian_failures.load(Ordering::Relaxed)),
            downstreams,
            catalog_queue: counts.queued,
            catalog_in_flight: m.in_flight.load(Ordering::Relaxed) as u64,
            catalog_paused: self.catalog.is_paused(),
            dian_queue,
            cache,
            checks,
            warnings,
            errors,
            recommendations,
            problems,
        };
        let prev = self.telemetry.last_sample().cloned();
        let sample_copy = self.statsd.is_some().then(|| sample.clone());
        for signal in self.telemetry.tick(sample) {
            match signal {
                crate::telemetry::Signal::Alert(n) => {
                    // An info rule firing is news, not a warning.
                    let firing = n.phase == crate::telemetry::alerts::Phase::Firing;
                    if firing && n.severity == crate::protocol::Severity::Critical {
                        tracing::error!("alert: {}", n.message);
                    } else if firing && n.severity == crate::protocol::Severity::Warning {
                        tracing::warn!("alert: {}", n.message);
                    } else {
                        tracing::info!("alert: {}", n.message);
                    }
                    let _ = self
                        .audit_tx
                        .send(("alert".into(), n.id.clone(), n.message.clone()));
                    let _ = events.send(EngineEvent::Alert(n));
                }
                crate::telemetry::Signal::Anomaly(a) => {
                    let line = format!(
                        "anomaly on {}: {:.2} against a baseline of {:.2} (score {:.1})",
                        a.metric, a.value, a.baseline, a.score
                    );
                    tracing::info!("{line}");
                    let _ = self
                        .audit_tx
                        .send(("anomaly".into(), a.metric.clone(), line));
                    let _ = events.send(EngineEvent::Anomaly(a));
                }
            }
        }
        self.refresh_view();
        if let Some(sample) = sample_copy {
            self.send_statsd(&sample, prev.as_ref());
        }
        self.flush_history(Flush::Tick);
    }

    /// Sends what changed of the history to be kept: the series blocks finished since
    /// the last flush (every 10 s), the alerts and anomalies when they changed (at
    /// most every [`TELEMETRY_STATE_EVERY_MS`] on a tick: their history is up to a few
    /// hundred kB of JSON), the auto-scaler with the blocks or when its bounds or
    /// target moved; for the last flush, the block being filled and everything as it
    /// is. Nothing new: nothing sent. The writing is
    /// [`super::periodic::history_writer`]'s.
    pub(super) fn flush_history(&mut self, why: Flush) {
        use crate::telemetry::history::{BLOCK_SECS, KEPT_SECS};
        if self.history_tx.is_none() {
            return;
        }
        let everything = why == Flush::Last;
        let now = self.now_ms();
        let points = self.telemetry.take_points(everything);
        let mut state = Vec::new();
        let version = self.telemetry.saved_version();
        let due = why != Flush::Tick || now - self.saved_telemetry_at >= TELEMETRY_STATE_EVERY_MS;
        if self.saved_telemetry != Some(version) && due {
            match serde_json::to_string(&self.telemetry.saved()) {
                Ok(v) => {
                    state.push((TELEMETRY_STATE.to_owned(), v));
                    self.saved_telemetry = Some(version);
                    self.saved_telemetry_at = now;
                }
                Err(e) => tracing::warn!("{TELEMETRY_STATE}: not kept: {e}"),
            }
        }
        if let Some(scaler) = self.catalog.saved_scaler() {
            let moved = self.saved_scaler.as_ref().is_none_or(|s| {
                (s.min, s.max, s.target) != (scaler.min, scaler.max, scaler.target)
            });
            if (moved || everything || !points.is_empty())
                && self.saved_scaler.as_ref() != Some(&scaler)
            {
                match serde_json::to_string(&scaler) {
                    Ok(v) => {
                        state.push((SCALER_STATE.to_owned(), v));
                        self.saved_scaler = Some(scaler);
                    }
                    Err(e) => tracing::warn!("{SCALER_STATE}: not kept: {e}"),
                }
            }
        }
        if points.is_empty() && state.is_empty() && self.history_pending.is_none() {
            return;
        }
        let mut batch = super::periodic::HistoryBatch {
            points,
            keep_from_s: now.div_euclid(1000) - KEPT_SECS - BLOCK_SECS,
            keep_until_s: now.div_euclid(1000) + BLOCK_SECS,
            state,
        };
        if let Some(mut pending) = self.history_pending.take() {
            pending.absorb(batch);
            batch = pending;
        }
        let Some(tx) = &self.history_tx else { return };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => self.history_pending = Some(batch),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("telemetry history: the writer stopped; not kept");
                self.history_tx = None;
            }
        }
    }

    /// The last flush (the block being filled included), waiting for the writer to
    /// take it; then nothing more is sent.
    pub(super) async fn close_history(&mut self) {
        self.flush_history(Flush::Last);
        if let (Some(tx), Some(batch)) = (self.history_tx.take(), self.history_pending.take()) {
            let _ = tx.send(batch).await;
        }
    }

    /// Takes back the history a previous process kept ([`Publisher::flush_history`]):
    /// the series of the last hour (the downtime stays a gap), the alerts and
    /// anomalies, the auto-scaler.
    fn restore_history(&mut self) {
        use crate::telemetry::history::{BLOCK_SECS, KEPT_SECS};
        let store = self.catalog.store.clone();
        let now = self.now_ms();
        match store.series_points(now.div_euclid(1000) - KEPT_SECS - BLOCK_SECS) {
            Ok(points) => self.telemetry.restore_series(&points, now),
            Err(e) => tracing::warn!("telemetry history: unreadable, not restored: {e}"),
        }
        let read = |key: &str| match store.engine_state(key) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("{key}: unreadable, not restored: {e}");
                None
            }
        };
        if let Some(v) = read(TELEMETRY_STATE) {
            match serde_json::from_str(&v) {
                Ok(saved) => self.telemetry.restore(saved, now),
                Err(e) => tracing::warn!("{TELEMETRY_STATE}: not restored: {e}"),
            }
        }
        self.saved_telemetry = Some(self.telemetry.saved_version());
        if let Some(v) = read(SCALER_STATE) {
            match serde_json::from_str(&v) {
                Ok(saved) => self.catalog.restore_scaler(saved),
                Err(e) => tracing::warn!("{SCALER_STATE}: not restored: {e}"),
            }
        }
        self.saved_scaler = self.catalog.saved_scaler();
    }

    /// Rebuilds the telemetry the snapshot carries (charts, alerts, thresholds…).
    pub(super) fn refresh_view(&mut self) {
        self.telemetry_view = crate::telemetry::TelemetryView {
            thresholds: self
                .config
                .thresholds()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            expiring: self.expiring.clone(),
            ..self.telemetry.view(self.catalog.store.now_ms())
        };
    }

    /// Keeps what operators set that must outlive a restart: temporary thresholds and
    /// running silences (a store that cannot write is logged; the engine goes on).
    pub(super) fn persist_operator_state(&self) {
        let silences = self.telemetry.alerts.silences(self.now_ms());
        let store = &self.catalog.store;
        for (key, value) in [
            (EXPIRING, serde_json::to_string(&self.expiring)),
            (SILENCES, serde_json::to_string(&silences)),
        ] {
            let saved = value
                .map_err(|e| e.to_string())
                .and_then(|v| store.save_engine_state(key, &v).map_err(|e| e.to_string()));
            if let Err(e) = saved {
                tracing::warn!("{key}: not kept for the next start: {e}");
            }
        }
    }

    /// Takes back what the previous process kept ([`Publisher::persist_operator_state`],
    /// [`Publisher::flush_history`]): temporary thresholds return to their old values at
    /// their time (at once if it passed while the engine was down), silences run to
    /// their end, and the history of the last hour comes back.
    pub(super) fn restore_operator_state(&mut self) {
        self.restore_history();
        let store = self.catalog.store.clone();
        let read = |key: &str| match store.engine_state(key) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("{key}: unreadable, not restored: {e}");
                None
            }
        };
        if let Some(v) = read(EXPIRING) {
            match serde_json::from_str(&v) {
                Ok(expiring) => self.expiring = expiring,
                Err(e) => tracing::warn!("{EXPIRING}: not restored: {e}"),
            }
        }
        if let Some(v) = read(SILENCES) {
            match serde_json::from_str::<Vec<crate::protocol::Silence>>(&v) {
                Ok(silences) => {
                    let now = self.now_ms();
                    for s in silences.iter().filter(|s| s.until_ms > now) {
                        self.telemetry.alerts.silence(&s.matcher, s.until_ms, &s.by);
                    }
                }
                Err(e) => tracing::warn!("{SILENCES}: not restored: {e}"),
            }
        }
        self.refresh_view();
    }

    /// The engine's wall clock (the store's: tests move it).
    pub(super) fn now_ms(&self) -> i64 {
        self.catalog.store.now_ms()
    }

    /// Brings back the old value of every temporary threshold whose time is over
    /// (audited as the engine's doing, naming whose change expired). Called on every
    /// publish; nothing to do most of the time.
    fn expire_thresholds(&mut self) {
        let now = self.catalog.store.now_ms();
        if !self.expiring.iter().any(|e| e.until_ms <= now) {
            return;
        }
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.expiring)
            .into_iter()
            .partition(|e| e.until_ms <= now);
        self.expiring = kept;
        let back: Vec<crate::protocol::ThresholdChange> = due
            .iter()
            .map(|e| crate::protocol::ThresholdChange::new(e.name.clone(), e.back_to))
            .collect();
        let line = due
            .iter()
            .map(|e| {
                format!(
                    "{} back to {} (set to {} by {} until {})",
                    e.name,
                    e.back_to,
                    e.value,
                    e.by,
                    crate::protocol::utc_time(e.until_ms)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let message = match self.set_thresholds(&back) {
            Ok(outcome) => format!("temporary thresholds expired: {line} — {outcome}"),
            Err(e) => {
                // Tried again on the next publish.
                self.expiring.extend(due);
                format!("temporary thresholds expired but could not be restored: {line}: {e}")
            }
        };
        let _ = self
            .audit_tx
            .send(("thresholds".into(), "thresholds".into(), message));
        self.persist_operator_state();
        self.refresh_view();
    }

    /// StatsD: one datagram (or a few, each under 1400 bytes) a second; a lost one is
    /// just lost (UDP), never an error for the engine.
    fn send_statsd(
        &self,
        sample: &crate::telemetry::Sample,
        prev: Option<&crate::telemetry::Sample>,
    ) {
        let Some(sock) = &self.statsd else { return };
        let mut packet = String::new();
        for line in crate::telemetry::statsd_lines(sample, prev, &self.telemetry_view) {
            if packet.len() + line.len() + 1 > 1400 {
                let _ = sock.send(packet.as_bytes());
                packet.clear();
            }
            if !packet.is_empty() {
                packet.push('\n');
            }
            packet.push_str(&line);
        }
        if !packet.is_empty() {
            let _ = sock.send(packet.as_bytes());
        }
    }

    /// Operations by p95 since start, slowest first.
    fn profile(&self) -> Vec<Operation> {
        let mut ops: Vec<Operation> = self
            .downstreams
            .iter()
            .map(|d| Operation {
                name: format!("http.{}", d.name()),
                summary: d.latency.summary(),
            })
            .collect();
        ops.push(Operation {
            name: "catalog.item_sync".into(),
            summary: self.catalog.metrics.latency.summary(),
        });
        if let Some(c) = &self.compliance {
            ops.push(Operation {
                name: "compliance.send".into(),
                summary: c.metrics.send_latency.summary(),
            });
        }
        ops.retain(|o| o.summary.count > 0);
        ops.sort_by(|a, b| b.summary.p95_ms.total_cmp(&a.summary.p95_ms));
        ops
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one snapshot assembled field by field"
    )]
    pub(super) fn publish(
        &mut self,
        tx: &watch::Sender<Arc<Snapshot>>,
        events: &broadcast::Sender<EngineEvent>,
        draining: bool,
    ) {
        self.expire_thresholds();
        let compliance = self.compliance_view();
        let completed = self.catalog.metrics.completed.load(Ordering::Relaxed);
        // A store that cannot be read keeps the last counts and says so in health.
        let counts = match self.catalog.counts() {
            Ok(c) => {
                self.read_error = None;
                self.counts = c.clone();
                c
            }
            Err(e) => {
                if self.read_error.is_none() {
                    tracing::error!(
                        "store: cannot read {}: {e}",
                        self.catalog.store.path().display()
                    );
                }
                self.read_error = Some(e.to_string());
                self.counts.clone()
            }
        };
        let downstreams: Vec<DownstreamView> = self.downstreams.iter().map(|d| d.view()).collect();
        if !self.ticked {
            // Health and thresholds from the first snapshot on.
            self.ticked = true;
            self.telemetry_tick(&compliance, &counts, &downstreams, events);
        }
        while self.second_started.elapsed() >= Duration::from_secs(1) {
            self.second_started += Duration::from_secs(1);
            if self.per_second.len() >= SERIES_SECONDS {
                self.per_second.pop_front();
            }
            self.per_second.push_back(completed - self.last_completed);
            self.last_completed = completed;
            self.telemetry_tick(&compliance, &counts, &downstreams, events);
        }
        let m = &self.catalog.metrics;
        let store = &self.catalog.store;
        if let Ok(mut fresh) = store.recent_audit(AUDIT_KEPT, self.last_audit_id) {
            fresh.reverse();
            for e in fresh {
                self.last_audit_id = e.id;
                let _ = events.send(EngineEvent::Audit(e.clone()));
                if self.audit.len() >= AUDIT_KEPT {
                    self.audit.pop_back();
                }
                self.audit.push_front(e);
            }
        }
        let scaler = self
            .catalog
            .scaler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let last_reconcile = m.last_reconcile_ms.load(Ordering::Relaxed);
        let snap = Snapshot {
            mode: self.mode,
            server_addr: self.server_addr.clone(),
            catalog: CatalogView {
                paused: self.catalog.is_paused(),
                counts,
                full_sync: m
                    .full_sync
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                workers: self.catalog.max_workers(),
                in_flight: m.in_flight.load(Ordering::Relaxed),
                workers_busy: m.busy_workers.load(Ordering::Relaxed),
                per_second: self.per_second.iter().copied().collect(),
                completed,
                errors: m.errors.load(Ordering::Relaxed),
                webhooks_accepted: m.webhooks_accepted.load(Ordering::Relaxed),
                webhooks_duplicate: m.webhooks_duplicate.load(Ordering::Relaxed),
                webhooks_ignored: m.webhooks_ignored.load(Ordering::Relaxed),
                webhooks_rejected: m.webhooks_rejected.load(Ordering::Relaxed),
                last_reconcile_ms: (last_reconcile > 0).then_some(last_reconcile as i64),
                workers_target: self.catalog.workers_target(),
                workers_min: scaler
                    .as_ref()
                    .map_or(self.catalog.settings().workers, |s| s.config().min as usize),
                workers_max: scaler
                    .as_ref()
                    .map_or(self.catalog.settings().workers, |s| s.config().max as usize),
                autoscale: scaler.is_some(),
                autoscale_status: scaler.as_ref().map_or_else(
                    || "fixed (catalog.autoscale = false)".to_owned(),
                    |s| s.status.clone(),
                ),
                decisions: scaler
                    .as_ref()
                    .map_or_else(Vec::new, |s| s.decisions().take(10).cloned().collect()),
                claim_batch: self
                    .catalog
                    .claim_batch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .current,
                page_size: self
                    .catalog
                    .page
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .current,
                deferred: m.deferred.load(Ordering::Relaxed),
            },
            recent_errors: m
                .recent_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .take(20)
                .cloned()
                .collect(),
            audit: self.audit.iter().cloned().collect(),
            token_refreshes: self.catalog.qb().tokens().refreshes(),
            draining,
            downstreams,
            telemetry: crate::telemetry::TelemetryView {
                // Live: an invalidation shows at once, not at the next tick.
                cache: self
                    .catalog
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .stats(),
                ..self.telemetry_view.clone()
            },
            profile: self.profile(),
            config_file: self
                .config
                .source
                .as_ref()
                .map(|p| match &self.config.company {
                    Some(id) => format!("{} ([[companies]] {id})", p.display()),
                    None => p.display().to_string(),
                }),
            compliance,
            reconciliation: self
                .reconciler
                .as_ref()
                .map(|r| r.snapshot_view())
                .unwrap_or_default(),
        };
        tx.send_if_modified(|current| {
            if **current == snap {
                false
            } else {
                *current = Arc::new(snap);
                true
            }
        });
    }
}
