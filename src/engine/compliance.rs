//! The invoice compliance pipeline: paid Stripe invoices (webhooks and a periodic
//! listing) become durable records; workers send them to Alegra/DIAN and follow the
//! answers through the state machine in `compliance::machine`. A send is marked in the
//! store before it leaves, so a crash mid-send leaves an UNKNOWN record that is read at
//! Alegra before anything is sent again (Alegra has no idempotency key).

mod numbering;

pub use numbering::Numbering;

pub use crate::protocol::ContingencyView;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ingest::{Ingested, NotNow};
use crate::compliance::contingency::{self, ContingencyConfig, Event, Monitor, Phase};
use crate::compliance::invoice::{self, AlegraBody, LocalInvoice};
use crate::compliance::machine::{Decision, Policy, Status};
use crate::connectors::alegra::{AlegraClient, AlegraError, AlegraInvoice, StampResult};
use crate::connectors::stripe::{Cursor, StripeClient};
use crate::store::{Change, InvoiceRecord, Invoices, Store};

/// The paid-invoice listing's durable cursor: the newest `created` (unix seconds) of a
/// walk that was stored whole.
const LIST_CURSOR: &str = "compliance.list_created";
/// Each walk reads back this far before the cursor.
const LIST_OVERLAP_SECS: i64 = 86_400;
/// The operator's pause (`"true"` / `"false"`), kept across restarts like the catalog's.
const PAUSED_CURSOR: &str = "compliance.paused";
/// The message of an invoice held (no attempt spent) while the Alegra circuit refuses.
pub const HELD_BY_CIRCUIT: &str = "held: the Alegra circuit is open";

#[derive(Debug, Clone)]
pub struct ComplianceSettings {
    pub workers: usize,
    pub list_interval: Duration,
    pub number_prefix: String,
    pub number_start: u64,
    pub policy: Policy,
    pub contingency: ContingencyConfig,
    /// Started over on purpose (`--fresh-store`): a store with no invoice records adopts
    /// the documents of the range found at Alegra instead of refusing to number.
    pub adopt_documents: bool,
    /// How long a claim of an invoice on the shared store lasts without a heartbeat
    /// (heartbeats every third of it while a send or read is under way).
    pub lease_ms: i64,
}

#[derive(Debug, Default)]
pub struct ComplianceMetrics {
    pub sends: AtomicU64,
    pub validated: AtomicU64,
    pub checks: AtomicU64,
    pub webhooks: AtomicU64,
    pub listed: AtomicU64,
    /// Sends that did not end accepted (rejected, an error, no answer).
    pub dian_failures: AtomicU64,
    /// Duration of each send (the `compliance.send` operation).
    pub send_latency: crate::telemetry::metrics::Latency,
}

pub struct Compliance {
    /// This box's store: audit, cursors, mappings (and the invoices on SQLite).
    pub store: Store,
    /// The compliance records: `store`'s, or the shared ones on Postgres.
    pub invoices: Invoices,
    alegra: AlegraClient,
    stripe: StripeClient,
    settings: ComplianceSettings,
    work: Notify,
    in_flight: Mutex<HashSet<String>>,
    paused: AtomicBool,
    /// Bumped on every change of a record, so readers rebuild views only then.
    version: AtomicU64,
    monitor: Mutex<Monitor>,
    pub metrics: ComplianceMetrics,
    numbering: tokio::sync::watch::Sender<Numbering>,
    /// Listed invoices that cannot be e-invoices, said once per run.
    ignored: Mutex<HashSet<String>>,
}

/// Today in Colombia (UTC−5), `YYYY-MM-DD`, at `now_ms`.
pub fn colombia_date(now_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(time::macros::offset!(-5));
    format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day())
}

/// The body Alegra is sent for `rec`: its number split into prefix and consecutive.
pub fn alegra_body(rec: &InvoiceRecord) -> Value {
    let (prefix, consecutive) = split_number(&rec.number);
    rec.invoice
        .alegra_body(prefix, consecutive, &rec.issue_date)
}

/// DIAN's same-day rule: an invoice not yet signed whose date is no longer today in
/// Colombia must be regenerated — unless it is on the contingency path, whose invoices
/// keep the date they were issued with.
pub fn needs_regeneration(rec: &InvoiceRecord, today: &str) -> bool {
    !rec.contingency && rec.cufe.is_none() && rec.issue_date.as_str() != today
}

/// A time as an operator in Colombia reads it: `2026-11-22 14:05:09 COT`.
pub fn clock_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(time::macros::offset!(-5));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} COT",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A DIAN answer of rule 90: some document with this number was accepted before.
fn says_rule_90(d: &AlegraInvoice) -> bool {
    d.stamp.as_ref().is_some_and(|s| {
        s.legal_status == "STAMPED_AND_REJECTED"
            && s.errors
                .iter()
                .any(|e| crate::compliance::machine::is_rule_90(e))
    })
}

/// `SETP990000001` → (`SETP`, `990000001`).
fn split_number(number: &str) -> (&str, &str) {
    let at = number
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(number.len());
    number.split_at(at)
}

impl Compliance {
    pub fn new(
        store: Store,
        invoices: Invoices,
        alegra: AlegraClient,
        stripe: StripeClient,
        settings: ComplianceSettings,
    ) -> anyhow::Result<Self> {
        let recovered = invoices.recover_sending()?;
        if recovered > 0 {
            store.audit(
                "sync",
                "compliance",
                "engine",
                &format!("{recovered} invoice sends were cut short by the previous run; each is read at Alegra before any resend"),
            )?;
        }
        let monitor = match invoices.unfinished_outage()? {
            Some(since) => {
                store.audit(
                    "compliance",
                    "dian",
                    "engine",
                    "contingency invoices from the previous run still wait for DIAN: probing for its return",
                )?;
                Monitor::resume_outage(settings.contingency, since, store.now_ms())
            }
            None => Monitor::new(settings.contingency),
        };
        let numbering = Numbering::Checking(
            "no invoice is numbered until Alegra confirms the numbering range".into(),
        );
        let paused = store.cursor(PAUSED_CURSOR)?.as_deref() == Some("true");
        Ok(Self {
            numbering: tokio::sync::watch::Sender::new(numbering),
            ignored: Mutex::new(HashSet::new()),
            monitor: Mutex::new(monitor),
            store,
            invoices,
            alegra,
            stripe,
            settings,
            work: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            paused: AtomicBool::new(paused),
            version: AtomicU64::new(0),
            metrics: ComplianceMetrics::default(),
        })
    }

    pub fn alegra(&self) -> &AlegraClient {
        &self.alegra
    }

    pub fn settings(&self) -> &ComplianceSettings {
        &self.settings
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Pauses or resumes sending to DIAN (sends under way finish). Persisted first, so
    /// a store that refuses the write leaves the pipeline as it was. Paid invoices are
    /// still taken while paused: they wait as records until the pipeline resumes.
    pub fn set_paused(&self, paused: bool) -> anyhow::Result<()> {
        self.store
            .set_cursor(PAUSED_CURSOR, if paused { "true" } else { "false" })?;
        self.paused.store(paused, Ordering::Relaxed);
        self.work.notify_waiters();
        Ok(())
    }

    /// The Alegra circuit changed state (any transition: an operator's CLOSE, a trip,
    /// a half-open): what its OPEN state held is looked at again now, not when the old
    /// OPEN timer would have ended. Still refused, it is held again with the new wait.
    pub fn circuit_changed(&self, to: crate::resilience::breaker::State) {
        let why = format!("released: the Alegra circuit became {to}; looked at again now");
        match self.invoices.release_held(HELD_BY_CIRCUIT, &why) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("{n} invoices held by the Alegra circuit released ({to})");
                self.changed();
            }
            Err(e) => tracing::error!("releasing invoices held by the circuit: {e}"),
        }
    }

    /// Changes with every record change (for caching what is read from the store).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// A record changed: wake the dispatcher and invalidate readers' copies.
    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
        self.work.notify_waiters();
    }

    fn monitor(&self) -> std::sync::MutexGuard<'_, Monitor> {
        self.monitor.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn contingency_view(&self) -> ContingencyView {
        let m = self.monitor();
        let cfg = m.config();
        let mut v = ContingencyView {
            phase: m.phase().name(),
            probes: cfg.probes,
            probe_interval_ms: cfg.probe_interval_ms,
            next_probe_ms: m.next_probe_at(),
            restored_at_ms: m.restored_at(),
            evidence: m.evidence().cloned().collect(),
            ..Default::default()
        };
        match m.phase() {
            Phase::Normal => {}
            Phase::Probing {
                failures, first_at, ..
            } => {
                v.failures = failures;
                v.since_ms = Some(first_at);
            }
            Phase::Outage {
                since,
                confirmed_at,
                ..
            } => {
                v.failures = cfg.probes;
                v.since_ms = Some(since);
                v.confirmed_at_ms = Some(confirmed_at);
            }
        }
        v
    }

    /// A transmission failed because DIAN did not answer.
    fn dian_failed(&self, e: &AlegraError) {
        let now = self.store.now_ms();
        let code = e.code().unwrap_or_default();
        let event = self.monitor().dian_failed(now, code, &e.to_string());
        if let Some(ev) = event {
            self.on_contingency(ev, Some(e));
        }
    }

    /// A transmission reached DIAN.
    fn dian_answered(&self) {
        let now = self.store.now_ms();
        let event = self.monitor().dian_answered(now);
        if let Some(ev) = event {
            self.on_contingency(ev, None);
        }
    }

    /// Writes what the contingency procedure decided: audit lines with the evidence,
    /// and the records' moves into and out of FALLBACK.
    fn on_contingency(&self, ev: Event, e: Option<&AlegraError>) {
        let cfg = self.settings.contingency;
        let evidence = e.map(|e| format!(" ({e})")).unwrap_or_default();
        let line = match &ev {
            Event::Suspected => format!(
                "DIAN did not answer a transmission{evidence}: sends held; probing every {} s to confirm an outage (1 of {})",
                cfg.probe_interval_ms / 1000,
                cfg.probes
            ),
            Event::ProbeFailed { failures } => {
                format!("DIAN probe failed{evidence}: {failures} of {}", cfg.probes)
            }
            Event::Confirmed { since } => {
                let hours = cfg.deadline_ms / 3_600_000;
                let message = format!(
                    "DIAN outage confirmed ({} failed transmissions {} s apart, since {}): contingency invoice, to be transmitted within {hours} h after DIAN is back",
                    cfg.probes,
                    cfg.probe_interval_ms / 1000,
                    clock_time(*since)
                );
                let moved = self.invoices.enter_fallback(&message).unwrap_or_else(|e| {
                    tracing::error!("moving invoices to contingency: {e}");
                    0
                });
                format!(
                    "DIAN outage confirmed after {} failed transmissions {} s apart{evidence}, since {}: {moved} invoices take the contingency path (FALLBACK)",
                    cfg.probes,
                    cfg.probe_interval_ms / 1000,
                    clock_time(*since)
                )
            }
            Event::Cleared => {
                "DIAN answered again before an outage was confirmed: sends resume".to_owned()
            }
            Event::Restored { at, deadline } => {
                let message = format!(
                    "DIAN is back at {}: transmit by {} ({} h)",
                    clock_time(*at),
                    clock_time(*deadline),
                    cfg.deadline_ms / 3_600_000
                );
                let n = self
                    .invoices
                    .restore_fallback(*deadline, &message)
                    .unwrap_or_else(|e| {
                        tracing::error!("scheduling contingency invoices: {e}");
                        0
                    });
                format!(
                    "DIAN is back at {}: {n} contingency invoices to transmit by {}, oldest deadline first",
                    clock_time(*at),
                    clock_time(*deadline)
                )
            }
        };
        match ev {
            Event::Confirmed { .. } | Event::Suspected => tracing::warn!("{line}"),
            _ => tracing::info!("{line}"),
        }
        let _ = self.store.audit("compliance", "dian", "engine", &line);
        self.changed();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn local(&self, object: &Value) -> Result<LocalInvoice, String> {
        invoice::from_stripe(object, |product| {
            self.store
                .mapping(product)
                .ok()
                .flatten()
                .and_then(|m| m.item_id)
        })
    }

    /// Records one Stripe invoice (from an event or a list page) as a compliance record,
    /// in one transaction with the event id when it came as an event. An invoice that
    /// cannot be an e-invoice is Ignored (its event recorded, the reason audited).
    pub fn ingest(
        &self,
        object: &Value,
        event: Option<(&str, &str, &str)>,
    ) -> anyhow::Result<Ingested> {
        if let Some(why) = self.numbering_hold() {
            return Err(NotNow(why).into());
        }
        let inv = match self.local(object) {
            Ok(i) => i,
            Err(why) => {
                let new = match event {
                    // Remember the event so it is not read again, then say why.
                    Some((id, kind, via)) => self.store.ingest(&[], None, Some((id, kind, via)))?,
                    None => !self.ignored_seen(object),
                };
                if !new {
                    return Ok(Ingested::Duplicate);
                }
                self.store.audit(
                    "sync",
                    "compliance",
                    "engine",
                    &format!("not sent to DIAN: {why}"),
                )?;
                return Ok(Ingested::Ignored(why));
            }
        };
        if let Some(why) = self.refuse_on_clash(&inv.stripe_id) {
            return Err(NotNow(why).into());
        }
        let new = self.invoices.ingest_invoice(
            &inv,
            &colombia_date(self.store.now_ms()),
            &self.settings.number_prefix,
            self.settings.number_start,
            event,
        )?;
        if new {
            self.changed();
            Ok(Ingested::New)
        } else {
            Ok(Ingested::Duplicate)
        }
    }

    /// A listing meets the same unusable invoice on every walk: say why once per run.
    fn ignored_seen(&self, object: &Value) -> bool {
        let id = object["id"].as_str().unwrap_or_default().to_owned();
        !self
            .ignored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    /// Lists Stripe's paid invoices now and then (webhooks and events can be missed).
    pub async fn list_loop(&self, cancel: CancellationToken) {
        loop {
            let walk = tokio::select! {
                _ = cancel.cancelled() => return,
                w = self.list_once() => w,
            };
            match walk {
                Ok(0) => {}
                Ok(n) => {
                    let _ = self.store.audit(
                        "sync",
                        "compliance",
                        "engine",
                        &format!("the paid-invoice listing found {n} invoices no event delivered"),
                    );
                }
                Err(e) => tracing::warn!("listing Stripe's paid invoices: {e}"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.settings.list_interval) => {}
            }
        }
    }

    /// Walks every page of paid invoices created since the durable cursor (less an
    /// overlap, for invoices created just before it and listed late), taking each one.
    /// The cursor moves only when the whole walk was stored: an invoice that could not
    /// be written (disk full, store refusing writes) is met again on the next walk.
    /// Returns how many invoices were new.
    pub async fn list_once(&self) -> anyhow::Result<u64> {
        let since = self
            .store
            .cursor(LIST_CURSOR)?
            .and_then(|v| v.parse::<i64>().ok());
        let from = since.map(|s| s - LIST_OVERLAP_SECS);
        let mut cursor = Cursor::Start;
        let mut newest = since;
        let mut fresh = 0;
        let mut failed: Option<anyhow::Error> = None;
        loop {
            let page = self.stripe.list_paid_invoices(&cursor, 100, from).await?;
            let before = fresh;
            for inv in &page.data {
                match self.ingest(inv, None) {
                    Ok(Ingested::New) => fresh += 1,
                    Ok(_) => {}
                    Err(e) => {
                        failed.get_or_insert(e);
                        continue;
                    }
                }
                if let Some(created) = inv["created"].as_i64() {
                    newest = newest.max(Some(created));
                }
            }
            self.metrics
                .listed
                .fetch_add(fresh - before, Ordering::Relaxed);
            match page.data.last().and_then(|v| v["id"].as_str()) {
                Some(last) if page.has_more => cursor = Cursor::After(last.to_owned()),
                _ => break,
            }
        }
        if let Some(e) = failed {
            return Err(
                e.context("some paid invoices were not stored; the next walk takes them again")
            );
        }
        if let Some(newest) = newest.filter(|n| Some(*n) != since) {
            self.store.set_cursor(LIST_CURSOR, &newest.to_string())?;
        }
        Ok(fresh)
    }

    /// Sends and follows invoices until cancelled, at most `workers` at once.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let tasks = tokio_util::task::TaskTracker::new();
        let mut fallback_checked = u64::MAX;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let now = self.store.now_ms();
            let (holds, outage, probe_at) = {
                let m = self.monitor();
                (m.holds_sends(), m.in_outage(), m.next_probe_at())
            };
            // New invoices, and those read back unstamped, join the contingency (looked
            // for only when a record changed).
            if outage && self.version() != fallback_checked {
                fallback_checked = self.version();
                match self.invoices.enter_fallback(
                    "DIAN is down (outage confirmed): issued in contingency, to be transmitted within the deadline after DIAN is back",
                ) {
                    Ok(0) => {}
                    Ok(_) => self.changed(),
                    Err(e) => tracing::error!("moving invoices to contingency: {e}"),
                }
            }
            let free = self.settings.workers.saturating_sub(self.in_flight());
            let skip: Vec<String> = self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            // Until Alegra confirms the numbering (or while it is refused) nothing is sent:
            // a store behind Alegra would send what a newer copy already issued. Reads go on.
            let numbering_ok = self.numbering() == Numbering::Ready;
            let mut due = if self.is_paused() || free == 0 {
                Vec::new()
            } else {
                self.claim_due(now, free, &skip, holds || !numbering_ok)
            };
            // While DIAN is suspected down, one transmission per interval probes it.
            if holds
                && numbering_ok
                && !self.is_paused()
                && due.len() < free
                && probe_at.is_some_and(|at| now >= at)
            {
                let statuses: &[Status] = if outage {
                    &[Status::Fallback]
                } else {
                    &[Status::Retry, Status::Pending]
                };
                match self
                    .invoices
                    .claim_probe(statuses, &skip, self.settings.lease_ms)
                {
                    Ok(Some(rec)) => {
                        self.monitor().probe_sent(now);
                        due.push(rec);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!("choosing a probe: {e}"),
                }
            }
            for rec in due {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rec.stripe_id.clone());
                let me = self.clone();
                tasks.spawn(async move {
                    let id = rec.stripe_id.clone();
                    me.work_on(rec).await;
                    me.in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    me.changed();
                });
            }
            // Sleep until something is due, new work arrives, or a send ends.
            let next = self
                .invoices
                .next_invoice_due(holds || !numbering_ok)
                .ok()
                .flatten();
            let next = match (next, self.monitor().next_probe_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = next.map_or(1000, |at| (at - self.store.now_ms()).clamp(10, 1000) as u64);
            let notified = self.work.notified();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Takes up to `free` due invoices to work on (leased to this box on Postgres).
    fn claim_due(
        &self,
        now: i64,
        free: usize,
        skip: &[String],
        reads_only: bool,
    ) -> Vec<InvoiceRecord> {
        let lease = self.settings.lease_ms;
        self.invoices
            .claim_due(now, free, skip, reads_only, lease)
            .unwrap_or_else(|e| {
                tracing::error!("reading due invoices: {e}");
                Vec::new()
            })
    }

    fn apply(&self, rec: &InvoiceRecord, d: &Decision, found: Option<&AlegraInvoice>) {
        let cufe = found
            .and_then(|f| f.stamp.as_ref())
            .and_then(|s| s.cufe.as_deref());
        let change = Change {
            to: Some(d.to),
            next_at_ms: Some(d.after_ms),
            code: d.code.as_deref(),
            message: &d.message,
            actor: "engine",
            alegra_id: found.map(|f| f.id.as_str()),
            cufe,
            refund_attempt: d.refund_attempt,
            contingency: (d.to == Status::Fallback).then_some(true),
            ..Default::default()
        };
        match self.invoices.change_leased(&rec.stripe_id, &change) {
            Ok(true) => {}
            Ok(false) => return self.lost(rec, "its outcome"),
            Err(e) => {
                tracing::error!("recording invoice {}: {e}", rec.number);
                return;
            }
        }
        if d.to == Status::Validated {
            self.metrics.validated.fetch_add(1, Ordering::Relaxed);
            self.drop_backup(&rec.number);
        }
        if matches!(d.to, Status::Failed | Status::Rejected) && d.to != rec.status {
            let _ = self.store.audit(
                "compliance",
                &rec.number,
                "engine",
                &format!("invoice {} {}: {}", rec.number, d.to, d.message),
            );
        }
    }

    /// A VALIDATED invoice's backup goes at once: issuing it again by hand from a file
    /// that says it is not validated would duplicate an accepted invoice.
    fn drop_backup(&self, number: &str) {
        let Some(dir) = self.store.path().parent() else {
            return;
        };
        if let Err(e) = super::housekeeping::remove_backup(dir, number) {
            tracing::error!("removing the backup of validated invoice {number}: {e}");
        }
    }

    async fn process(&self, rec: InvoiceRecord) {
        match rec.status {
            Status::Pending | Status::Retry | Status::Fallback => self.send(&rec).await,
            Status::Unknown => self.check(&rec).await,
            Status::Sent => match &rec.alegra_id {
                Some(id) => match self.alegra.invoice(id).await {
                    Ok(found) if says_rule_90(&found) => self.check(&rec).await,
                    Ok(found) => {
                        let d = match &found.stamp {
                            Some(s) => self.settings.policy.on_stamp(s),
                            None => self.settings.policy.on_check(rec.attempts, None, true),
                        };
                        self.apply(&rec, &d, Some(&found));
                    }
                    Err(e) => self.postpone(&rec, &e),
                },
                None => self.check(&rec).await,
            },
            _ => {}
        }
    }

    /// Works on one claimed invoice; on the shared store its lease is kept alive
    /// meanwhile (every third of it) and given back at the end.
    async fn work_on(&self, rec: InvoiceRecord) {
        let id = rec.stripe_id.clone();
        if self.invoices.is_shared() {
            let lease = self.settings.lease_ms.max(3);
            let beat = Duration::from_millis((lease / 3) as u64);
            let work = crate::telemetry::trace::scope(self.process(rec));
            tokio::pin!(work);
            loop {
                tokio::select! {
                    () = &mut work => break,
                    () = tokio::time::sleep(beat) => {
                        let ids = std::slice::from_ref(&id);
                        match self.invoices.heartbeat(ids, lease) {
                            Ok(held) if held.is_empty() => tracing::warn!(
                                "invoice {id}: this box's lease ran out; nothing it learns is recorded (the box that takes it reads it at Alegra)"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!("invoice {id}: heartbeat: {e}"),
                        }
                    }
                }
            }
            if let Err(e) = self.invoices.release(&id) {
                tracing::warn!("invoice {id}: giving back its lease: {e}");
            }
        } else {
            crate::telemetry::trace::scope(self.process(rec)).await;
        }
    }

    /// This box no longer holds `rec` (its lease ran out and another box may have it):
    /// `what` is not recorded, and nothing more is done with it here.
    fn lost(&self, rec: &InvoiceRecord, what: &str) {
        tracing::warn!(
            "invoice {}: not recording {what}: this box no longer holds it (its lease ran out)",
            rec.number
        );
    }

    fn postpone(&self, rec: &InvoiceRecord, e: &AlegraError) {
        let (after, why) = match e {
            // The circuit refused the read: held like a send (released when it changes).
            AlegraError::Rejected { retry_in_ms, .. } => (
                (*retry_in_ms as i64).max(1000),
                format!("{HELD_BY_CIRCUIT}: reading it at Alegra waits ({e})"),
            ),
            _ => (self.settings.policy.poll_ms, format!("waiting: {e}")),
        };
        let _ = self.invoices.postpone_leased(&rec.stripe_id, after, &why);
    }

    /// Sends: stamps the document already at Alegra, or creates it with its stamp.
    async fn send(&self, rec: &InvoiceRecord) {
        // While the circuit refuses calls, hold the invoice without spending an attempt.
        if let Some(g) = self.alegra.guard() {
            let (admits, wait) = g.breaker.admits_now();
            if !admits {
                let after = wait.map_or(1000, |w| w.as_millis() as i64).max(250);
                let _ = self
                    .invoices
                    .postpone_leased(&rec.stripe_id, after, HELD_BY_CIRCUIT);
                return;
            }
        }
        // The same-day rule: generated and signed the same day in Colombia.
        let today = colombia_date(self.store.now_ms());
        let regenerated;
        let rec = if needs_regeneration(rec, &today) {
            match self.regenerate(rec, &today).await {
                Some(r) => {
                    regenerated = r;
                    &regenerated
                }
                None => return,
            }
        } else {
            rec
        };
        let attempts = match self.invoices.begin_send_leased(&rec.stripe_id) {
            Ok(Some(n)) => n,
            Ok(None) => return self.lost(rec, "a send"),
            Err(e) => {
                tracing::error!("marking a send of {}: {e}", rec.number);
                return;
            }
        };
        self.metrics.sends.fetch_add(1, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let result = match &rec.alegra_id {
            Some(id) => match self.alegra.stamp(std::slice::from_ref(id)).await {
                Ok(mut list) => match list.pop() {
                    Some(StampResult::Invoice(inv)) => Ok(inv),
                    Some(StampResult::Error { code, message, .. }) => Err(AlegraError::Api {
                        status: 400,
                        code,
                        message,
                        retry_after: None,
                    }),
                    None => Err(AlegraError::Decode("empty stamp answer".into())),
                },
                Err(e) => Err(e),
            },
            None => {
                let (prefix, consecutive) = split_number(&rec.number);
                let body = rec
                    .invoice
                    .alegra_body(prefix, consecutive, &rec.issue_date);
                self.alegra.create_and_stamp(&body).await
            }
        };
        self.metrics.send_latency.record(started.elapsed());
        let policy = &self.settings.policy;
        match result {
            Ok(found) if says_rule_90(&found) => {
                // "Processed before": by this invoice's document, or another's with the
                // same number? Read at Alegra before anything is recorded as accepted.
                self.dian_answered();
                let d = Decision::new(
                    Status::Unknown,
                    Some(0),
                    Some("90"),
                    "DIAN answered rule 90 (a document with this number was processed before): which document holds it is read at Alegra".into(),
                );
                self.apply(rec, &d, Some(&found));
            }
            Ok(found) => {
                let d = match &found.stamp {
                    Some(s) => {
                        // DIAN answered (contingency records get their deadline first).
                        self.dian_answered();
                        policy.on_stamp(s)
                    }
                    None => self.unstamped(rec, attempts, None),
                };
                if d.to != Status::Validated {
                    self.metrics.dian_failures.fetch_add(1, Ordering::Relaxed);
                }
                self.apply(rec, &d, Some(&found));
            }
            Err(e) => {
                self.metrics.dian_failures.fetch_add(1, Ordering::Relaxed);
                if contingency::is_dian_unavailable(e.code()) {
                    self.dian_failed(&e);
                }
                let d = policy.on_send_error(&e);
                self.apply(rec, &d, None);
            }
        }
    }

    /// UNKNOWN now: read at Alegra before anything else is sent.
    fn read_first(&self, rec: &InvoiceRecord, why: &str) {
        let message = format!("{why}: read at Alegra before anything else");
        let _ = self.invoices.change_leased(
            &rec.stripe_id,
            &Change {
                to: Some(Status::Unknown),
                next_at_ms: Some(Some(0)),
                message: &message,
                actor: "engine",
                ..Default::default()
            },
        );
        self.changed();
    }

    /// Gives an invoice still unsent after local midnight today's date (at Alegra too
    /// when its document is there), so it is signed the day it is dated: a new CUFE.
    /// None: Alegra could not be told; it is looked at again later.
    async fn regenerate(&self, rec: &InvoiceRecord, today: &str) -> Option<InvoiceRecord> {
        if let Some(id) = &rec.alegra_id {
            match self.alegra.update_date(id, today).await {
                Ok(doc) if doc.stamp.is_some() => {
                    // Stamped after all (a late answer): read it, never resend.
                    self.read_first(rec, "its document turned out stamped");
                    return None;
                }
                Ok(_) => {}
                Err(AlegraError::Api { status: 400, .. }) => {
                    self.read_first(rec, "Alegra would not change its date (already stamped?)");
                    return None;
                }
                Err(e) => {
                    self.postpone(rec, &e);
                    return None;
                }
            }
        }
        let message = format!(
            "regenerated with date {today} (was {}): still unsent at local midnight (UTC−5), and DIAN requires the generation and signing dates to be the same day; new date, new CUFE",
            rec.issue_date
        );
        match self.invoices.change_leased(
            &rec.stripe_id,
            &Change {
                issue_date: Some(today),
                code: rec.last_code.as_deref(),
                message: &message,
                actor: "engine",
                ..Default::default()
            },
        ) {
            Ok(true) => {}
            Ok(false) => {
                self.lost(rec, "its new date");
                return None;
            }
            Err(e) => {
                tracing::error!("regenerating {}: {e}", rec.number);
                return None;
            }
        }
        self.changed();
        Some(InvoiceRecord {
            issue_date: today.to_owned(),
            ..rec.clone()
        })
    }

    /// Resolves an UNKNOWN send by reading Alegra before anything is sent again. Only a
    /// document issued for this invoice (its `stripe:` annotation) counts as ours: a
    /// number held by another invoice's document is never taken for this one's.
    async fn check(&self, rec: &InvoiceRecord) {
        self.metrics.checks.fetch_add(1, Ordering::Relaxed);
        let found = match &rec.alegra_id {
            Some(id) => self.alegra.invoice(id).await.map(|d| vec![d]),
            None => self.alegra.find_by_number(&rec.number).await,
        };
        let mut docs = match found {
            Ok(d) => d,
            Err(e) => return self.postpone(rec, &e),
        };
        // DIAN's rule 90 ("processed before") says some document with this number was
        // accepted: which one is read at Alegra.
        if rec.alegra_id.is_some() && docs.iter().any(says_rule_90) {
            docs = match self.alegra.find_by_number(&rec.number).await {
                Ok(d) => d,
                Err(e) => return self.postpone(rec, &e),
            };
        }
        let (ours, theirs): (Vec<&AlegraInvoice>, Vec<&AlegraInvoice>) =
            docs.iter().partition(|d| d.is_for(&rec.stripe_id));
        // The accepted one if any (a duplicate made elsewhere must not hide it).
        let best = ours
            .iter()
            .find(|d| d.accepted())
            .or_else(|| ours.iter().find(|d| !says_rule_90(d)))
            .or_else(|| ours.first())
            .copied();
        if best.is_none_or(|b| !b.accepted())
            && let Some(holder) = theirs.iter().find(|d| d.accepted())
        {
            // Another invoice's document holds the number at DIAN.
            let holder = holder
                .anotation
                .clone()
                .unwrap_or_else(|| "no annotation".into());
            return self.number_taken(rec, &holder).await;
        }
        let d = match best.and_then(|b| b.stamp.as_ref().map(|s| (b, s))) {
            Some((b, stamp)) if !says_rule_90(b) => {
                // DIAN stamped what we sent: it was answering, whatever we were told.
                self.dian_answered();
                self.settings.policy.on_stamp(stamp)
            }
            _ => self.unstamped(rec, rec.attempts, best),
        };
        self.apply(rec, &d, best);
    }

    /// DIAN has not stamped the invoice (its document, `found`, is unstamped or absent).
    /// While an outage is suspected or confirmed the attempt is given back and the
    /// invoice is held (or takes the contingency path); otherwise the schedule runs.
    fn unstamped(
        &self,
        rec: &InvoiceRecord,
        attempts: u32,
        found: Option<&AlegraInvoice>,
    ) -> Decision {
        let (holds, outage, restored) = {
            let m = self.monitor();
            (m.holds_sends(), m.in_outage(), m.restored_at())
        };
        let failed_in_outage = contingency::is_dian_unavailable(rec.last_code.as_deref())
            && restored.is_some_and(|at| rec.updated_at_ms <= at);
        if failed_in_outage && !holds {
            // Its send failed during the outage that has since ended: again now.
            Decision {
                refund_attempt: true,
                ..self
                    .settings
                    .policy
                    .retry_now("DIAN is back: the send that failed in the outage goes again (no attempt spent)")
            }
        } else if holds {
            self.settings.policy.on_dian_down(
                outage,
                rec.kind == "credit_note",
                rec.last_code.as_deref(),
                self.settings.contingency.probe_interval_ms,
            )
        } else {
            self.settings.policy.on_check(
                attempts,
                None,
                found.is_some() || rec.alegra_id.is_some(),
            )
        }
    }

    /// An invoice by Stripe id, DIAN number or CUFE.
    pub fn find(&self, key: &str) -> Result<InvoiceRecord, CommandError> {
        find_invoice(&self.invoices, key)
    }

    /// An operator's retry of one invoice (FAILED, REJECTED or RETRY): a document
    /// already at Alegra is read first, otherwise it is sent afresh. (The engine's
    /// command wrapper audits it.)
    pub fn retry(&self, rec: &InvoiceRecord, actor: &str) -> Result<Outcome, CommandError> {
        let result = operator_retry(&self.invoices, rec, actor);
        self.changed();
        result
    }

    /// Alegra calls the pipeline would make for `rec` from its state now (`retried`:
    /// after an operator's retry, which reads it at Alegra first), as [`Self::process`]
    /// spends them when all goes well: a read for an UNKNOWN or SENT one, a send
    /// (create-and-stamp, or stamp), and a date update first when the same-day rule
    /// makes it regenerate. A DIAN that answers later costs more reads.
    pub fn send_cost(&self, rec: &InvoiceRecord, retried: bool) -> u64 {
        let status = if retried { Status::Unknown } else { rec.status };
        let today = colombia_date(self.store.now_ms());
        let regenerate = u64::from(needs_regeneration(rec, &today));
        match status {
            Status::Pending | Status::Retry | Status::Fallback => 1 + regenerate,
            Status::Unknown => 2 + regenerate,
            Status::Sent => 1,
            _ => 0,
        }
    }

    /// Invoices waiting to be sent or read (due or not), in the order they run.
    pub fn backlog(&self) -> Vec<InvoiceRecord> {
        self.invoices.waiting(100_000).unwrap_or_default()
    }

    /// The guard (breaker, limiter) of every Alegra call.
    pub fn alegra_guard(&self) -> Option<&Arc<crate::resilience::Downstream>> {
        self.alegra.guard()
    }

    /// How many invoices "retry all failed" would touch.
    pub fn failed_count(&self) -> usize {
        self.invoices
            .invoices_in(Status::Failed)
            .map_or(0, |v| v.len())
    }

    /// Retries every FAILED invoice. (The engine's command wrapper audits it.)
    pub fn retry_failed(&self, actor: &str) -> Result<Outcome, CommandError> {
        let outcome = retry_each_failed(&self.invoices, actor)?;
        self.changed();
        Ok(outcome)
    }
}

// Operator commands on the DIAN queue (kept together, apart from the pipeline above).
use super::commands::audit_command;
use crate::protocol::{Command, CommandError, Outcome};

fn store_error(e: impl std::fmt::Display) -> CommandError {
    CommandError::unavailable(format!("the store: {e}"))
}

/// An invoice by Stripe id, DIAN number or CUFE; [`CommandError::NotFound`] if none.
pub fn find_invoice(store: &Invoices, key: &str) -> Result<InvoiceRecord, CommandError> {
    store
        .invoice(key)
        .map_err(store_error)?
        .ok_or_else(|| CommandError::not_found(format!("invoice {key:?}")))
}

/// An operator's retry of `rec` (FAILED, REJECTED or RETRY), written to the store (the
/// engine, running or next started, acts on it): a document already at Alegra is read
/// first, otherwise it is sent afresh; the schedule starts again.
pub fn operator_retry(
    store: &Invoices,
    rec: &InvoiceRecord,
    actor: &str,
) -> Result<Outcome, CommandError> {
    if !rec.status.is_retryable_by_operator() {
        return Err(CommandError::conflict(format!(
            "it is {}; only FAILED, REJECTED or RETRY invoices are retried",
            rec.status
        )));
    }
    // Read at Alegra first even without a document id: a copy of this store (a restored
    // backup) may not know the document a newer copy sent for this number.
    let (to, how) = (Status::Unknown, "read at Alegra, then sent if needed");
    let message = format!("operator {actor} retried it: {how}");
    store
        .change_invoice(
            &rec.stripe_id,
            &Change {
                to: Some(to),
                next_at_ms: Some(Some(0)),
                message: &message,
                actor,
                reset_attempts: true,
                ..Default::default()
            },
        )
        .map_err(store_error)?;
    Ok(Outcome::new(format!(
        "retrying invoice {} ({how})",
        rec.number
    )))
}

/// [`operator_retry`] audited as the engine audits the command `retry <number>` (for
/// the CLI, acting on the store when no engine runs).
pub fn retry_audited(
    store: &Store,
    invoices: &Invoices,
    rec: &InvoiceRecord,
    actor: &str,
) -> Result<Outcome, CommandError> {
    let result = operator_retry(invoices, rec, actor);
    let command = Command::RetryInvoice {
        key: rec.number.clone(),
    };
    audit_command(store, &rec.number, actor, &command, &result);
    result
}

/// Retries every FAILED invoice in `store`; the outcome counts them.
pub fn retry_each_failed(store: &Invoices, actor: &str) -> Result<Outcome, CommandError> {
    let ids = store.invoices_in(Status::Failed).map_err(store_error)?;
    let mut done = 0;
    for id in &ids {
        if let Ok(Some(rec)) = store.invoice(id)
            && operator_retry(store, &rec, actor).is_ok()
        {
            done += 1;
        }
    }
    let line = format!("retried {done} of {} FAILED invoices", ids.len());
    Ok(Outcome::new(line).with_count(done))
}

/// [`retry_each_failed`] audited as the engine audits the command `retry-failed` (for
/// the CLI).
pub fn retry_all_failed(
    store: &Store,
    invoices: &Invoices,
    actor: &str,
) -> Result<Outcome, CommandError> {
    let result = retry_each_failed(invoices, actor);
    audit_command(
        store,
        "compliance",
        actor,
        &Command::RetryFailed {},
        &result,
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colombia_date_turns_at_five_utc() {
        // 2026-11-22 04:59:59 UTC is still the 21st in Bogotá; 05:00:00 is the 22nd.
        let t = time::macros::datetime!(2026-11-22 04:59:59 UTC).unix_timestamp() * 1000;
        assert_eq!(colombia_date(t), "2026-11-21");
        assert_eq!(colombia_date(t + 1000), "2026-11-22");
    }

    #[test]
    fn only_unsigned_non_contingency_invoices_of_an_earlier_day_are_regenerated() {
        let inv = crate::compliance::invoice::LocalInvoice::example("in_1", "invoice");
        let rec = InvoiceRecord {
            stripe_id: "in_1".into(),
            number: "SETP1".into(),
            kind: "invoice".into(),
            status: Status::Retry,
            attempts: 1,
            next_at_ms: None,
            sending: false,
            alegra_id: None,
            cufe: None,
            issue_date: "2026-11-21".into(),
            buyer_id: "1".into(),
            buyer_name: "B".into(),
            total: 0,
            invoice: inv,
            last_code: None,
            last_message: None,
            contingency: false,
            deadline_at_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            validated_at_ms: None,
        };
        assert!(needs_regeneration(&rec, "2026-11-22"));
        assert!(!needs_regeneration(&rec, "2026-11-21"), "same day");
        let contingency = InvoiceRecord {
            contingency: true,
            ..rec.clone()
        };
        assert!(
            !needs_regeneration(&contingency, "2026-11-22"),
            "contingency keeps its date"
        );
        let signed = InvoiceRecord {
            cufe: Some("c".into()),
            ..rec
        };
        assert!(!needs_regeneration(&signed, "2026-11-22"));
    }

    #[test]
    fn numbers_split_into_prefix_and_consecutive() {
        assert_eq!(split_number("SETP990000001"), ("SETP", "990000001"));
        assert_eq!(split_number("12"), ("", "12"));
    }
}
