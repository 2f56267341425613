//! Catalog sync: Stripe products → QuickBooks Items.
//!
//! Three producers write jobs (one per product, coalesced while queued): the full sync
//! (paginated, cursor checkpointed in the same transaction as the jobs it wrote, and
//! never running far ahead of the workers), verified webhooks, and a periodic read of
//! `/v1/events`. Workers claim jobs with a lease and upsert Items so that no product
//! ever gets two: a create is recorded as pending with its `requestid` before it is
//! sent, and a pending create is replayed, never re-invented.
//!
//! A worker claims up to 30 jobs at once. When two or more of them need a write, they
//! go the bulk way ([`bulk`]): the company's Items are read in pages of 1,000 (not one
//! query per product) and the creates and updates leave in one batch request; a single
//! change (a webhook) keeps the single calls, where a batch would add nothing.

mod bulk;

pub use crate::protocol::{ErrorLine, FullSyncState};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::compliance::Compliance;
use super::ingest::Ingested;
use super::item::{self, DesiredItem};
use crate::connectors::quickbooks::{QbError, QuickBooksClient};
use crate::connectors::stripe::{Cursor, Price, PriceRef, Product, StripeClient, StripeError};
use crate::resilience::autoscale::{AutoscaleConfig, Autoscaler, BatchSizer, Decision, Sample};
use crate::store::queue::{JobQueue, QueueError};
use crate::store::{Held, ItemMapping, Job, NewJob, PendingCreate, Store, now_ms};
use crate::telemetry::cache::Cache;

pub const JOB_KIND: &str = "catalog.product";
/// Jobs one claim takes at most: the dispatcher claims for every worker with room at
/// once, in whole groups of the claim batch size.
pub const CLAIM_MAX: usize = 64;
/// A full sync's lister holding back while the queue is full looks again when an item
/// completes here, or after this.
const FULL_QUEUE_LOOK_AFTER: Duration = Duration::from_millis(250);
/// ... but on a shared queue (a round trip each) at most this often.
const SHARED_QUEUE_LOOK_EVERY: Duration = Duration::from_millis(100);
/// Why a worker's end of a job was not recorded, or its lease not extended: the job
/// belongs to its newer holder (or newer payload) now.
const LEASE_LOST: &str = "the lease ran out and the job was queued or handed out again";
/// A claimed group taken later than this after its claim reads its mappings again
/// (see [`JobQueue::claim_with_mappings`]).
const CLAIMED_MAPPINGS_FRESH_MS: i64 = 50;
/// With nothing to claim, how long the dispatcher waits at most before it looks again
/// (work that arrives wakes it at once; a job or lease falling due is waited for).
const IDLE_LOOK_EVERY: Duration = Duration::from_secs(5);
const FULL_SYNC_CURSOR: &str = "catalog.full_sync";
/// How often a box on a shared store reads the full sync's cursor (see
/// [`Catalog::full_sync_loop`]).
const SHARED_CURSOR_EVERY: Duration = Duration::from_secs(5);
const EVENTS_CURSOR: &str = "catalog.events";
const PAUSED_CURSOR: &str = "catalog.paused";
/// Set while a store that started with no mapping has not finished a full sync.
const ADOPT_BY_SKU: &str = "catalog.adopt_by_sku";

#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// Workers at start; the auto-scaler moves between the bounds of `autoscale`.
    pub workers: usize,
    pub autoscale: Option<AutoscaleConfig>,
    pub claim_batch_max: u32,
    pub page_size: u32,
    pub max_attempts: u32,
    pub lease_ms: i64,
    pub reconcile_interval: Duration,
    pub income_account: String,
    /// The QuickBooks lookup cache: entries kept, and their lifetime.
    pub cache_max_entries: usize,
    pub cache_ttl_ms: i64,
}

/// Live counters the snapshot reads.
#[derive(Default)]
pub struct CatalogMetrics {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicUsize,
    /// Workers with a claim in hand (a claim can hold up to `claim_batch_max` jobs).
    pub busy_workers: AtomicUsize,
    pub webhooks_accepted: AtomicU64,
    pub webhooks_duplicate: AtomicU64,
    /// Verified and recorded, with no effect (said why in the answer and the audit).
    pub webhooks_ignored: AtomicU64,
    pub webhooks_rejected: AtomicU64,
    pub last_reconcile_ms: AtomicU64,
    /// Sum of job durations (ns) and jobs finished, for the auto-scaler's latency.
    pub busy_nanos: AtomicU64,
    pub jobs_timed: AtomicU64,
    /// Of `busy_nanos`, the time spent waiting for rate-limiter permits.
    pub permit_wait_nanos: AtomicU64,
    /// Jobs put back untouched because the QuickBooks circuit refused them.
    pub deferred: AtomicU64,
    /// Job durations (the `catalog.item_sync` operation).
    pub latency: crate::telemetry::metrics::Latency,
    pub full_sync: Mutex<FullSyncState>,
    pub recent_errors: Mutex<VecDeque<ErrorLine>>,
}

impl CatalogMetrics {
    fn error(&self, entity: &str, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut e = self.recent_errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= 50 {
            e.pop_back();
        }
        e.push_front(ErrorLine {
            at_ms: now_ms(),
            entity: entity.to_owned(),
            message: message.to_owned(),
        });
    }
}

/// What a worker did with a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created {
        item_id: String,
        name: String,
    },
    Adopted {
        item_id: String,
        name: String,
    },
    Updated {
        item_id: String,
        name: String,
    },
    Unchanged,
    Stale,
    Gone,
    /// Deleted in Stripe before any Item was written for it: nothing to do.
    DeletedUnsynced,
}

/// The Item write a job would make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The Item is in line already.
    None,
    /// The mapped Item is updated.
    Update,
    /// No Item is mapped: one is looked up by name and created.
    Create,
}

/// What one catalog job would cost ([`Catalog::job_cost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCost {
    /// Stripe reads (the product, its price).
    pub stripe: u64,
    pub write: Write,
}

/// What a job ends with: its outcome and the mapping to store, or why not.
type JobResult = Result<(Outcome, Option<ItemMapping>), JobError>;

/// A prepared job: done already, or a plan of writes.
#[expect(
    clippy::large_enum_variant,
    reason = "short-lived, one per job in hand"
)]
enum Step {
    Done(Outcome, Option<ItemMapping>),
    Write(Box<Plan>),
}

/// The writes one product needs: its desired Item, its mapping as it stands (an
/// adopted or created Item is filled in as it becomes known), the hash to record once
/// in line.
struct Plan {
    product_updated: i64,
    desired: DesiredItem,
    m: ItemMapping,
    hash: String,
    /// Created or adopted on the way (an update alone is `Updated`).
    outcome: Option<Outcome>,
    /// The job it is carried out for (None: a preview's plan, never written): what it
    /// records before its end is refused once that job's lease no longer stands.
    held: Option<Held>,
}

impl Plan {
    fn is_synced(&self) -> bool {
        self.m.synced_hash.as_deref() == Some(self.hash.as_str())
    }

    /// The outcome, and the mapping of a product now in line.
    fn done(self) -> (Outcome, Option<ItemMapping>) {
        let mut m = self.m;
        m.synced_hash = Some(self.hash);
        m.source_updated = Some(self.product_updated.max(m.source_updated.unwrap_or(0)));
        m.status = "synced".into();
        m.reason = None;
        (self.outcome.unwrap_or(Outcome::Unchanged), Some(m))
    }
}

/// Whether `item` already is what `desired` asks for (its plain or disambiguated name,
/// Sku, active flag, price, description): adopting it needs no write.
fn in_line(item: &crate::connectors::quickbooks::Item, desired: &DesiredItem) -> bool {
    let named = item.name == desired.name
        || item.name == item::disambiguated_name(&desired.name, &desired.sku);
    named
        && item.active == desired.active
        && item.unit_price.unwrap_or(0.0) == desired.unit_price.unwrap_or(0.0)
        && item.sku.as_deref() == Some(desired.sku.as_str())
        && item.description.as_deref().unwrap_or("") == desired.description.as_deref().unwrap_or("")
}

#[derive(Debug)]
enum JobError {
    Transient(String, Option<Duration>),
    Permanent(String),
    /// Not attempted (an open circuit): back to the queue without using an attempt.
    Deferred(String, Duration),
    /// The job's lease ran out mid-way and the job was claimed again (or put back): a
    /// write ahead of its end was refused, or the loss was seen right before a write to
    /// QuickBooks was to be sent. Its newer holder (or newer payload) carries on;
    /// nothing more is recorded for it, nor sent once the loss is seen (a write already
    /// on its way still lands: QuickBooks' SyncToken or request id then decides).
    LeaseLost,
}

impl JobError {
    /// A call the circuit refused: back to the queue once the circuit may admit it.
    fn deferred(e: &dyn std::fmt::Display, retry_in_ms: u64) -> Self {
        JobError::Deferred(
            e.to_string(),
            Duration::from_millis(retry_in_ms.clamp(250, 60_000)),
        )
    }
}

/// A write made on a job's behalf went through (its lease stood), or the job is lost.
fn held_or_lost(held: bool) -> Result<(), JobError> {
    if held {
        Ok(())
    } else {
        Err(JobError::LeaseLost)
    }
}

impl From<QbError> for JobError {
    fn from(e: QbError) -> Self {
        match &e {
            QbError::Rejected { retry_in_ms, .. } | QbError::AuthBlocked { retry_in_ms, .. } => {
                JobError::deferred(&e, *retry_in_ms)
            }
            QbError::Throttled { retry_after_secs } => {
                JobError::Transient(e.to_string(), Some(Duration::from_secs(*retry_after_secs)))
            }
            _ if e.is_transient() => JobError::Transient(e.to_string(), None),
            _ => JobError::Permanent(e.to_string()),
        }
    }
}

impl From<StripeError> for JobError {
    fn from(e: StripeError) -> Self {
        if let StripeError::Rejected { retry_in_ms, .. } = &e {
            return JobError::deferred(&e, *retry_in_ms);
        }
        if e.is_transient() {
            JobError::Transient(e.to_string(), None)
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl From<crate::store::SqlError> for JobError {
    fn from(e: crate::store::SqlError) -> Self {
        JobError::Transient(format!("store: {e}"), None)
    }
}

impl From<QueueError> for JobError {
    fn from(e: QueueError) -> Self {
        JobError::Transient(format!("store: {e}"), None)
    }
}

pub struct Catalog {
    /// This box's store: audit, invoices, tokens, limiter state, the pause.
    pub store: Store,
    /// The jobs, cursors and Item mappings: the store's own (SQLite), or shared by the
    /// engines of several boxes (Postgres, `store.url`).
    pub queue: JobQueue,
    /// On a shared queue, its counts as last read (the snapshot and the auto-scaler
    /// read them synchronously; [`Catalog::counts_loop`] refreshes them).
    shared_counts: Mutex<Option<crate::protocol::CatalogCounts>>,
    stripe: StripeClient,
    qb: QuickBooksClient,
    settings: CatalogSettings,
    pub metrics: CatalogMetrics,
    paused: watch::Sender<bool>,
    work: Notify,
    /// Signalled when a worker finishes a job (the full sync waits on it for room).
    progress: Notify,
    /// Jobs the dispatcher claimed so far (the full sync's lister counts the queue
    /// again once enough left it).
    claimed: AtomicU64,
    /// An operator asked for the full sync to run again (one permit kept).
    resync: Notify,
    prices: Mutex<HashMap<String, Price>>,
    /// Workers that may run now (the auto-scaler's target).
    target: watch::Sender<usize>,
    pub scaler: Mutex<Option<Autoscaler>>,
    pub claim_batch: Mutex<BatchSizer>,
    pub page: Mutex<BatchSizer>,
    /// QuickBooks Items by name and by id (`item:name:…`, `item:id:…`; tags `item` and
    /// `product:<id>`). Only Items QuickBooks returned are kept, never "not found".
    pub cache: Mutex<Cache<crate::connectors::quickbooks::Item>>,
    /// The compliance pipeline, which takes `invoice.paid` events.
    invoices: OnceLock<Arc<Compliance>>,
    /// The store held no mapping at start (a first start, or a lost store started over):
    /// before the first create, every Item is read once and those whose Sku is a
    /// product id are adopted by it — a renamed product never gets a second Item.
    adopt_by_sku: bool,
    /// The company's Items read in bulk, for batches (and the Sku adoption above).
    index: tokio::sync::Mutex<Option<bulk::ItemIndex>>,
    /// Groups the dispatcher claimed, waiting for a worker (at most one per worker),
    /// with when their claim was asked for (the queue's clock, ms).
    groups: Mutex<VecDeque<(i64, Vec<Job>)>>,
    group_ready: Notify,
}

/// A job derived from a Stripe event.
pub struct EventJob {
    pub key: String,
    pub payload: Option<String>,
    pub version: i64,
}

/// The catalog job an event calls for, if any (product.* and price.* events).
pub fn job_for_event(kind: &str, created: i64, object: &Value) -> Option<EventJob> {
    match kind {
        "product.created" | "product.updated" | "product.deleted" => {
            let mut object = object.clone();
            if kind == "product.deleted" {
                object["deleted"] = Value::Bool(true);
                object["active"] = Value::Bool(false);
            }
            let product: Product = serde_json::from_value(object.clone()).ok()?;
            Some(EventJob {
                key: product.id,
                version: product.updated.max(if kind == "product.deleted" {
                    created
                } else {
                    0
                }),
                payload: Some(object.to_string()),
            })
        }
        // A price change shows in the product; refetch it (payload None).
        "price.created" | "price.updated" | "price.deleted" => Some(EventJob {
            key: object["product"].as_str()?.to_owned(),
            payload: None,
            version: created,
        }),
        _ => None,
    }
}

impl Catalog {
    pub async fn new(
        store: Store,
        queue: JobQueue,
        stripe: StripeClient,
        qb: QuickBooksClient,
        settings: CatalogSettings,
    ) -> anyhow::Result<Self> {
        let settings_cache = (settings.cache_max_entries, settings.cache_ttl_ms);
        // Kept until a full sync completes, so a start cut short keeps adopting by Sku.
        let store_has_no_mapping =
            queue.mapping_count().await? == 0 || store.meta(ADOPT_BY_SKU)?.as_deref() == Some("1");
        if store_has_no_mapping {
            store.set_meta(ADOPT_BY_SKU, "1")?;
        }
        let paused = store.cursor(PAUSED_CURSOR)?.as_deref() == Some("true");
        let full = queue
            .cursor(FULL_SYNC_CURSOR)
            .await?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default();
        let metrics = CatalogMetrics {
            full_sync: Mutex::new(full),
            ..Default::default()
        };
        let scaler = settings
            .autoscale
            .clone()
            .map(|cfg| Autoscaler::new(cfg, settings.workers as u32));
        let initial = scaler
            .as_ref()
            .map_or(settings.workers, |s| s.target() as usize);
        let claim_batch = BatchSizer::new(
            1,
            settings.claim_batch_max,
            1,
            4.min(settings.claim_batch_max),
            Duration::from_millis(50),
        );
        let page = BatchSizer::new(
            10.min(settings.page_size),
            100,
            10,
            settings.page_size,
            Duration::from_secs(2),
        );
        // A shared queue's counts are read before the first snapshot needs them.
        let shared_counts = match queue.is_shared() {
            true => Some(queue.catalog_counts(JOB_KIND).await?),
            false => None,
        };
        Ok(Self {
            store,
            queue,
            shared_counts: Mutex::new(shared_counts),
            stripe,
            qb,
            settings,
            metrics,
            paused: watch::Sender::new(paused),
            work: Notify::new(),
            progress: Notify::new(),
            claimed: AtomicU64::new(0),
            resync: Notify::new(),
            prices: Mutex::new(HashMap::new()),
            target: watch::Sender::new(initial),
            scaler: Mutex::new(scaler),
            claim_batch: Mutex::new(claim_batch),
            page: Mutex::new(page),
            cache: Mutex::new(Cache::new(settings_cache.0, settings_cache.1)),
            invoices: OnceLock::new(),
            adopt_by_sku: store_has_no_mapping,
            index: tokio::sync::Mutex::new(None),
            groups: Mutex::new(VecDeque::new()),
            group_ready: Notify::new(),
        })
    }

    pub fn settings(&self) -> &CatalogSettings {
        &self.settings
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn qb(&self) -> &QuickBooksClient {
        &self.qb
    }

    /// Worker tasks to spawn: the upper bound (the target decides how many run).
    pub fn max_workers(&self) -> usize {
        self.settings
            .autoscale
            .as_ref()
            .map_or(self.settings.workers, |a| a.max as usize)
            .max(self.settings.workers)
            .max(1)
    }

    pub fn workers_target(&self) -> usize {
        *self.target.borrow()
    }

    /// An operator's new bounds: applied at once, audited by the caller.
    pub fn set_worker_bounds(&self, min: u32, max: u32) -> Result<Option<Decision>, String> {
        if min == 0 || max < min || max as usize > self.max_workers() {
            return Err(format!(
                "worker bounds must satisfy 1 ≤ min ≤ max ≤ {}",
                self.max_workers()
            ));
        }
        let mut s = self.scaler.lock().unwrap_or_else(|p| p.into_inner());
        let Some(scaler) = s.as_mut() else {
            return Err("auto-scaling is off (catalog.autoscale = false)".into());
        };
        let d = scaler.set_bounds(min, max, now_ms());
        self.target.send_replace(scaler.target() as usize);
        self.work.notify_waiters();
        Ok(d)
    }

    /// The auto-scaler as it stands, for the next process (None when it is off).
    pub fn saved_scaler(&self) -> Option<crate::resilience::autoscale::SavedScaler> {
        self.scaler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Autoscaler::saved)
    }

    /// Takes back the auto-scaler a previous process left (its bounds, target, baseline
    /// and decisions); the workers follow the target at once.
    pub fn restore_scaler(&self, saved: crate::resilience::autoscale::SavedScaler) {
        let mut s = self.scaler.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(scaler) = s.as_mut() {
            scaler.restore(saved);
            self.target.send_replace(scaler.target() as usize);
            self.work.notify_waiters();
        }
    }

    /// Measures the last tick and lets the auto-scaler decide; call once a second.
    pub fn autoscale_tick(&self, last: &mut AutoscaleMarks) {
        let now = self.marks();
        let elapsed = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        let done = now.jobs - last.jobs;
        let busy_ns = now.busy - last.busy;
        // Waiting for a permit is queueing in front of a quota, not the service's
        // latency.
        let waited_ns = (now.waited - last.waited).min(busy_ns);
        // The service's latency: its answers' own durations when it answered in the
        // tick (hung calls, backoff and permit waits are not its latency), else the
        // jobs' time without their permit waits.
        let answered = now.ok_calls - last.ok_calls;
        let latency = (now.ok_nanos - last.ok_nanos)
            .checked_div(answered)
            .or_else(|| (busy_ns - waited_ns).checked_div(done))
            .map(Duration::from_nanos);
        let sample = Sample {
            latency: latency.filter(|_| done > 0),
            limited: if busy_ns > 0 {
                waited_ns as f64 / busy_ns as f64
            } else {
                0.0
            },
            rate_use: if now.rate_per_sec > 0.0 {
                (now.calls - last.calls) as f64 / elapsed / now.rate_per_sec
            } else {
                0.0
            },
            completed: done,
            busy: busy_ns as f64 / 1e9 / elapsed,
            queued: self.queued_now(),
            throttled: now.throttled - last.throttled,
            timeouts: now.timeouts - last.timeouts,
            answered,
            held: self.qb.guard().and_then(|g| {
                let state = g.breaker.state();
                (!g.breaker.admits_now().0).then(|| format!("QuickBooks circuit {}", state.name()))
            }),
        };
        *last = now;
        let mut s = self.scaler.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(scaler) = s.as_mut()
            && scaler.observe(&sample, now_ms()).is_some()
        {
            self.target.send_replace(scaler.target() as usize);
            self.work.notify_waiters();
        }
        if sample.throttled > 0 || sample.timeouts > 0 {
            self.claim_batch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cut();
        }
    }

    fn marks(&self) -> AutoscaleMarks {
        let (throttled, timeouts, calls, rate_per_sec, (ok_calls, ok)) =
            self.qb
                .guard()
                .map_or((0, 0, 0, 0.0, (0, Duration::ZERO)), |g| {
                    // Cells of the rate granted (a batch takes one per operation).
                    let view = g.limiter.view();
                    (
                        g.throttled(),
                        g.timeouts(),
                        view.granted,
                        f64::from(view.effective_per_min) / 60.0,
                        g.answered(),
                    )
                });
        AutoscaleMarks {
            ok_calls,
            ok_nanos: ok.as_nanos() as u64,
            waited: self.metrics.permit_wait_nanos.load(Ordering::Relaxed),
            calls,
            rate_per_sec,
            at: tokio::time::Instant::now(),
            busy: self.metrics.busy_nanos.load(Ordering::Relaxed),
            jobs: self.metrics.jobs_timed.load(Ordering::Relaxed),
            throttled,
            timeouts,
        }
    }

    /// Runs the auto-scaler until cancelled.
    pub async fn autoscale_loop(&self, cancel: CancellationToken) {
        let mut marks = self.marks();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.is_paused() {
                marks = self.marks();
                continue;
            }
            self.autoscale_tick(&mut marks);
        }
    }

    /// While the QuickBooks circuit refuses calls, waits (rather than claiming jobs only
    /// to put them back). Returns false when cancelled.
    async fn wait_for_circuit(&self, cancel: &CancellationToken) -> bool {
        let Some(g) = self.qb.guard() else {
            return true;
        };
        loop {
            // Once OPEN's wait is over the next call is a trial: go and make it. Otherwise
            // sleep until the wait ends, or poll (FORCED_OPEN, HALF_OPEN awaiting a verdict).
            let wait = match g.breaker.admits_now() {
                (true, _) => return true,
                (false, Some(left)) => left.min(Duration::from_secs(1)) + Duration::from_millis(1),
                (false, None) => Duration::from_millis(100),
            };
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// While QuickBooks refuses our refresh token, jobs stay queued (no attempt used);
    /// when the back-off ends, the next job makes the one token request.
    async fn wait_for_authorisation(&self, cancel: &CancellationToken) -> bool {
        while let Some(left) = self.qb.tokens().blocked_for() {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
            }
        }
        true
    }

    /// Pauses or resumes claiming and listing (in-flight jobs finish). Persisted.
    pub fn set_paused(&self, paused: bool) -> anyhow::Result<()> {
        self.store
            .set_cursor(PAUSED_CURSOR, if paused { "true" } else { "false" })?;
        self.paused.send_replace(paused);
        if !paused {
            self.work.notify_waiters();
        }
        Ok(())
    }

    async fn wait_unpaused(&self, cancel: &CancellationToken) -> bool {
        let mut rx = self.paused.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => false,
            r = rx.wait_for(|p| !*p) => r.is_ok(),
        }
    }

    /// Where paid invoices go (set once by the engine when compliance is configured).
    pub fn route_invoices_to(&self, compliance: Arc<Compliance>) {
        let _ = self.invoices.set(compliance);
    }

    /// Takes one verified Stripe event, from a webhook or the events reconciliation:
    /// its effect (a catalog job, or the compliance record of a paid invoice) is written
    /// in the same transaction as its id, so an id is never seen without its effect.
    pub fn ingest_event(
        &self,
        id: &str,
        kind: &str,
        created: i64,
        object: &Value,
        via: &str,
    ) -> anyhow::Result<Ingested> {
        self.queue
            .block_on(self.take_event(id, kind, created, object, via))
    }

    /// [`Catalog::ingest_event`] from async code.
    pub async fn take_event(
        &self,
        id: &str,
        kind: &str,
        created: i64,
        object: &Value,
        via: &str,
    ) -> anyhow::Result<Ingested> {
        if kind == "invoice.paid"
            && let Some(c) = self.invoices.get()
        {
            return c.ingest(object, Some((id, kind, via)));
        }
        let job = job_for_event(kind, created, object);
        let jobs: Vec<NewJob<'_>> = job
            .iter()
            .map(|j| NewJob {
                kind: JOB_KIND,
                key: &j.key,
                payload: j.payload.as_deref(),
                version: j.version,
            })
            .collect();
        let new = self
            .queue
            .ingest(&jobs, None, Some((id, kind, via)))
            .await?;
        if !new {
            return Ok(Ingested::Duplicate);
        }
        if jobs.is_empty() {
            let why = if kind == "invoice.paid" {
                "compliance is not configured (no [alegra] section): the periodic listing takes paid invoices once it is".to_owned()
            } else {
                format!("{kind} events call for no work")
            };
            return Ok(Ingested::Ignored(why));
        }
        self.work.notify_waiters();
        Ok(Ingested::New)
    }

    /// The full sync, then again each time an operator asks for it ([`Self::resync`]),
    /// until `cancel`.
    ///
    /// On a shared store it starts from the shared cursor as it is now (a box taking
    /// over the lead resumes the walk where the last leader left it), and a resync asked
    /// on another box (the cursor starting over) is seen within [`SHARED_CURSOR_EVERY`].
    pub async fn full_sync_loop(&self, cancel: CancellationToken) {
        let shared = self.queue.is_shared();
        loop {
            if shared {
                self.reload_full_sync().await;
            }
            self.full_sync(cancel.clone()).await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.resync.notified() => break,
                    _ = tokio::time::sleep(SHARED_CURSOR_EVERY), if shared => {
                        if !self.reload_full_sync().await.done {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// What a box that does not lead does about the full sync: follows the shared
    /// cursor (its snapshot shows the leader's progress) and ends its own adoption by
    /// Sku once nothing is left, until `cancel`.
    pub async fn follow_full_sync(&self, cancel: CancellationToken) {
        let adoption = self.end_sku_adoption(&cancel);
        let follow = async {
            loop {
                self.reload_full_sync().await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(SHARED_CURSOR_EVERY) => {}
                }
            }
        };
        tokio::join!(adoption, follow);
    }

    /// The full sync's state as the store's cursor has it now (kept as this box's).
    async fn reload_full_sync(&self) -> crate::protocol::FullSyncState {
        let mut state = self
            .metrics
            .full_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Ok(Some(v)) = self.queue.cursor(FULL_SYNC_CURSOR).await
            && let Ok(stored) = serde_json::from_str(&v)
        {
            state = stored;
            *self
                .metrics
                .full_sync
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = state.clone();
        }
        state
    }

    /// An operator's re-run of the full sync: every Stripe product is listed again and
    /// queued (an Item that matches is left as it is). Refused while one is running.
    /// (The engine's command wrapper audits it.)
    pub fn resync(&self) -> Result<crate::protocol::FullSyncState, String> {
        let mut state = self
            .metrics
            .full_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !state.done {
            return Err(format!(
                "a full sync is already running ({} pages, {} products listed so far)",
                state.pages, state.listed
            ));
        }
        let previous = state.clone();
        let fresh = crate::protocol::FullSyncState::default();
        let value = serde_json::to_string(&fresh).unwrap_or_default();
        self.queue
            .block_on(self.queue.set_cursor(FULL_SYNC_CURSOR, &value))
            .map_err(|e| format!("the store: {e}"))?;
        *state = fresh;
        drop(state);
        self.resync.notify_one();
        Ok(previous)
    }

    /// Products whose job failed past its last attempt (and is not queued again).
    pub fn failed_jobs(&self) -> Vec<String> {
        self.queue
            .block_on(self.queue.failed_job_keys(JOB_KIND))
            .unwrap_or_default()
    }

    /// An operator's retry of failed jobs: one product's, or every one (`None`); they go
    /// back to the queue with fresh attempts. The products re-queued.
    pub fn retry_failed_jobs(&self, key: Option<&str>) -> Result<Vec<String>, String> {
        let keys = self
            .queue
            .block_on(self.queue.requeue_failed(JOB_KIND, key))
            .map_err(|e| format!("the store: {e}"))?;
        if !keys.is_empty() {
            self.work.notify_waiters();
        }
        Ok(keys)
    }

    /// Lists every product into jobs, resuming from the stored cursor.
    #[expect(
        clippy::too_many_lines,
        reason = "the full sync's resumable walk in one place"
    )]
    pub async fn full_sync(&self, cancel: CancellationToken) {
        let mut state = self
            .metrics
            .full_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if state.done {
            return self.end_sku_adoption(&cancel).await;
        }
        if let Err(e) = self.ensure_events_checkpoint(&cancel).await {
            tracing::warn!("could not set the events checkpoint: {e}");
        }
        if state.pages == 0 {
            let _ = self
                .store
                .audit("sync", "catalog", "engine", "full sync started");
        } else {
            let _ = self.store.audit(
                "sync",
                "catalog",
                "engine",
                &format!(
                    "full sync resumed after page {} ({} products listed)",
                    state.pages, state.listed
                ),
            );
        }
        let mut failures = 0u32;
        while !state.done {
            if !self.wait_unpaused(&cancel).await {
                return;
            }
            // Stream: do not list further ahead than the workers can drain.
            let limit = (self.settings.page_size as u64 * 4).max(100);
            loop {
                let mut progressed = std::pin::pin!(self.progress.notified());
                let looked = tokio::time::Instant::now();
                // (Read before the count: a claim the count missed is credited; one it
                // saw may be too, which only makes the next count come early.)
                let mark = self.claimed.load(Ordering::Relaxed);
                let shared = self.queue.is_shared();
                let queued = self
                    .queued_up_to(if shared { limit } else { 2 * limit })
                    .await;
                if queued < limit {
                    break;
                }
                // The queue falls below the limit only once this box has claimed this
                // many more (on its own queue; a shared one's other boxes claim too):
                // counted again then, not at every job a worker ends (a count read
                // per item was 1.5 % of a single-call sync's CPU).
                let need = queued - limit + 1;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = &mut progressed => {}
                        _ = tokio::time::sleep_until(looked + FULL_QUEUE_LOOK_AFTER) => break,
                    }
                    // Armed before the look: a job ended after it still wakes this
                    // (claims do not signal: one that reaches `need` is seen at the
                    // next job's end, or at the deadline).
                    progressed.set(self.progress.notified());
                    let claimed = self.claimed.load(Ordering::Relaxed).wrapping_sub(mark);
                    if shared || claimed >= need {
                        break;
                    }
                }
                // As often as items complete, the count was a third of the database's work.
                if !self
                    .shared_pace(looked + SHARED_QUEUE_LOOK_EVERY, &cancel)
                    .await
                {
                    return;
                }
            }
            let cursor = match &state.after {
                Some(id) => Cursor::After(id.clone()),
                None => Cursor::Start,
            };
            let size = self.page.lock().unwrap_or_else(|p| p.into_inner()).current;
            let asked = tokio::time::Instant::now();
            let page = tokio::select! {
                _ = cancel.cancelled() => return,
                p = self.stripe.list_products(&cursor, size) => p,
            };
            let page = match page {
                Ok(p) => {
                    failures = 0;
                    self.page
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(asked.elapsed());
                    p
                }
                Err(e) => {
                    if matches!(
                        e,
                        StripeError::Timeout(_)
                            | StripeError::Api {
                                status: 429 | 413,
                                ..
                            }
                    ) {
                        self.page.lock().unwrap_or_else(|p| p.into_inner()).cut();
                    }
                    failures += 1;
                    self.metrics.error("full sync", &e.to_string());
                    tracing::warn!("full sync page failed: {e}");
                    let wait = Duration::from_millis((500u64 << failures.min(6)).min(30_000));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let payloads: Vec<(String, String, i64)> = page
                .data
                .iter()
                .map(|p| {
                    (
                        p.id.clone(),
                        serde_json::to_string(p).unwrap_or_default(),
                        p.updated,
                    )
                })
                .collect();
            let jobs: Vec<NewJob<'_>> = payloads
                .iter()
                .map(|(key, payload, version)| NewJob {
                    kind: JOB_KIND,
                    key,
                    payload: Some(payload),
                    version: *version,
                })
                .collect();
            let mut next = state.clone();
            next.pages += 1;
            next.listed += jobs.len() as u64;
            next.after = page.data.last().map(|p| p.id.clone()).or(next.after);
            next.done = !page.has_more;
            let value = serde_json::to_string(&next).unwrap_or_default();
            if let Err(e) = self
                .queue
                .ingest(&jobs, Some((FULL_SYNC_CURSOR, &value)), None)
                .await
            {
                self.metrics.error("full sync", &format!("store: {e}"));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            state = next;
            *self
                .metrics
                .full_sync
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = state.clone();
            self.work.notify_waiters();
        }
        let _ = self.store.audit(
            "sync",
            "catalog",
            "engine",
            &format!(
                "full sync listed {} products in {} pages",
                state.listed, state.pages
            ),
        );
        self.end_sku_adoption(&cancel).await;
    }

    /// After a full sync every product is queued or mapped: what the Sku read was for is
    /// done once the queue has drained (a job still queued keeps it for a restart).
    async fn end_sku_adoption(&self, cancel: &CancellationToken) {
        if !self.adopt_by_sku {
            return;
        }
        loop {
            let looked = tokio::time::Instant::now();
            // Registered before the look: the last job's end between the two wakes it.
            let progressed = self.progress.notified();
            // A failed job is a product not yet created: retried, it must still adopt.
            let left = self.queue.unfinished(JOB_KIND).await.unwrap_or(1)
                + self.metrics.in_flight.load(Ordering::Relaxed) as u64;
            if left == 0 {
                let _ = self.store.set_meta(ADOPT_BY_SKU, "0");
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = progressed => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if !self
                .shared_pace(looked + Duration::from_secs(1), cancel)
                .await
            {
                return;
            }
        }
    }

    /// The reconciliation reads events after the checkpoint; set it before listing so
    /// nothing that changes during the full sync is missed.
    async fn ensure_events_checkpoint(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        if self.queue.cursor(EVENTS_CURSOR).await?.is_some() {
            return Ok(());
        }
        let page = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            p = self.stripe.list_events(&Cursor::Start, 1) => p?,
        };
        let newest = page.data.first().map(|e| e.id.clone()).unwrap_or_default();
        self.queue.set_cursor(EVENTS_CURSOR, &newest).await?;
        Ok(())
    }

    /// Periodically reads `/v1/events` after the checkpoint to catch missed webhooks.
    pub async fn reconcile_loop(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Even while the catalog is paused: paid invoices come this way too (catalog
            // jobs just wait in the queue).
            match self.reconcile_once().await {
                Ok(n) => {
                    self.metrics
                        .last_reconcile_ms
                        .store(now_ms() as u64, Ordering::Relaxed);
                    if n > 0 {
                        let _ = self.store.audit(
                            "sync",
                            "catalog",
                            "engine",
                            &format!("reconciliation found {n} events no webhook delivered"),
                        );
                    }
                }
                Err(e) => {
                    self.metrics.error("reconcile", &e.to_string());
                    tracing::warn!("reconciliation failed: {e}");
                }
            }
        }
    }

    /// One pass over new events; returns how many were not seen before.
    pub async fn reconcile_once(&self) -> anyhow::Result<usize> {
        let Some(checkpoint) = self.queue.cursor(EVENTS_CURSOR).await? else {
            return Ok(0);
        };
        let mut fresh = 0;
        if checkpoint.is_empty() {
            // No event existed at the start: read them all, oldest first.
            let mut all = Vec::new();
            let mut cursor = Cursor::Start;
            loop {
                let page = self.stripe.list_events(&cursor, 100).await?;
                let more = page.has_more;
                if let Some(last) = page.data.last() {
                    cursor = Cursor::After(last.id.clone());
                }
                all.extend(page.data);
                if !more {
                    break;
                }
            }
            for e in all.iter().rev() {
                fresh += self.ingest_reconciled(e).await? as usize;
            }
            return Ok(fresh);
        }
        let mut cursor = checkpoint;
        loop {
            let page = match self
                .stripe
                .list_events(&Cursor::Before(cursor.clone()), 100)
                .await
            {
                Ok(p) => p,
                Err(StripeError::Api {
                    code: Some(code), ..
                }) if code == "resource_missing" => {
                    // The checkpoint fell out of Stripe's 30-day window: start again from now.
                    tracing::warn!("events checkpoint expired; resetting to the newest event");
                    self.queue.set_cursor(EVENTS_CURSOR, "").await?;
                    let p = self.stripe.list_events(&Cursor::Start, 1).await?;
                    let newest = p.data.first().map(|e| e.id.clone()).unwrap_or_default();
                    self.queue.set_cursor(EVENTS_CURSOR, &newest).await?;
                    return Ok(fresh);
                }
                Err(e) => return Err(e.into()),
            };
            if page.data.is_empty() {
                return Ok(fresh);
            }
            for e in page.data.iter().rev() {
                fresh += self.ingest_reconciled(e).await? as usize;
            }
            cursor = page.data[0].id.clone();
            if !page.has_more {
                return Ok(fresh);
            }
        }
    }

    /// One event read back: taken like a webhook's, then the checkpoint moves past it
    /// (an event that could not be stored stops the pass where it is).
    async fn ingest_reconciled(
        &self,
        e: &crate::connectors::stripe::Event,
    ) -> anyhow::Result<bool> {
        let got = self
            .take_event(&e.id, &e.kind, e.created, &e.data.object, "reconcile")
            .await?;
        self.queue.set_cursor(EVENTS_CURSOR, &e.id).await?;
        Ok(got.is_new())
    }

    /// Jobs waiting to be claimed, read synchronously: the store's counter, or on a
    /// shared queue its count as last read.
    fn queued_now(&self) -> u64 {
        match self.queue.is_shared() {
            false => self.store.queued(JOB_KIND).unwrap_or(0),
            true => self
                .shared_counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or(0, |c| c.queued),
        }
    }

    /// On a shared queue, waits until `next`: a count there is a round trip to the
    /// database, asked at most that often however fast items complete. False once
    /// cancelled.
    async fn shared_pace(&self, next: tokio::time::Instant, cancel: &CancellationToken) -> bool {
        if !self.queue.is_shared() {
            return true;
        }
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep_until(next) => true,
        }
    }

    /// Jobs waiting to be claimed, counted up to `cap`.
    /// A count that fails reads as full (the lister waits and asks again, recorded as a
    /// store error): read as empty, the lister would queue page after page unchecked.
    async fn queued_up_to(&self, cap: u64) -> u64 {
        self.queue
            .queued_up_to(JOB_KIND, cap)
            .await
            .unwrap_or_else(|e| {
                self.metrics
                    .error("store", &format!("counting the queue: {e}"));
                cap
            })
    }

    /// The catalog's counts for the snapshot: the store's (SQLite), or the shared
    /// queue's as last read by [`Catalog::counts_loop`] (an error until the first read).
    pub fn counts(&self) -> anyhow::Result<crate::protocol::CatalogCounts> {
        match self.queue.is_shared() {
            false => Ok(self.store.catalog_counts()?),
            true => self
                .shared_counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| anyhow::anyhow!("the shared store's counts are not read yet")),
        }
    }

    /// On a shared queue: reads its counts once a second for [`Catalog::counts`]
    /// (a read fails: the last ones stay, the error is counted).
    pub async fn counts_loop(&self, cancel: CancellationToken) {
        if !self.queue.is_shared() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.queue.catalog_counts(JOB_KIND).await {
                Ok(c) => {
                    *self.shared_counts.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                }
                Err(e) => self.metrics.error("store", &e.to_string()),
            }
        }
    }

    /// Runs `work` on claimed `jobs`; their leases are extended every third of a lease
    /// meanwhile. A lease that runs out hands its job out again: to another box, on a
    /// shared queue (a box that died), or to another worker of this one (a claim
    /// requeues expired leases). A group held up past a lease (heavy throttling, a slow
    /// QuickBooks) would otherwise be worked on twice at once, and a second Item could
    /// be created for a product renamed meanwhile. A job whose lease was lost anyway is
    /// not ended by this worker (its finish is refused: the job's newer holder, or its
    /// newer payload, is what counts).
    async fn heartbeating<T>(&self, jobs: &[Job], work: impl std::future::Future<Output = T>) -> T {
        let lease = self.settings.lease_ms;
        let every = Duration::from_millis((lease / 3).max(100) as u64);
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = tokio::time::sleep(every) => {}
            }
            match self.queue.heartbeat(jobs, lease).await {
                Ok(held) if held.len() < jobs.len() => {
                    let lost = jobs.len() - held.len();
                    self.metrics
                        .error("catalog", &format!("{lost} job(s): {LEASE_LOST}"));
                }
                Ok(_) => {}
                Err(e) => self.metrics.error("store", &format!("heartbeat: {e}")),
            }
        }
    }

    /// Groups to claim now. Each worker the target allows may have one group in hand
    /// and one waiting for it: a worker that finishes takes its next group at once
    /// instead of waiting for a claim (a claim is a commit). The dispatcher claims at
    /// once for a worker with nothing in hand or waiting, otherwise once half the
    /// workers' waiting groups are taken: one claim serves several workers, not one
    /// each.
    ///
    /// Not on a shared queue: there a group claimed ahead is work an idle worker of
    /// another box cannot take until this box's worker is free (and its lease must be
    /// kept meanwhile), and a claim is a round trip the other boxes' claims contend with.
    fn room(&self) -> usize {
        let waiting = self.groups.lock().unwrap_or_else(|p| p.into_inner()).len();
        let target = self.workers_target();
        let busy = self.metrics.busy_workers.load(Ordering::Relaxed);
        let idle = target.saturating_sub(busy + waiting);
        if self.queue.is_shared() {
            return idle;
        }
        // One waiting group per worker at most.
        let free = (2 * target)
            .saturating_sub(busy + waiting)
            .min(target.saturating_sub(waiting));
        if idle > 0 || free >= target.div_ceil(2) {
            free
        } else {
            0
        }
    }

    /// Waiting groups beyond one per worker the target allows go back untouched (the
    /// target went down); the oldest are kept.
    async fn release_surplus_groups(&self) {
        let target = self.workers_target();
        let surplus = {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            match groups.len() > target {
                true => groups.split_off(target),
                false => return,
            }
        };
        for (_, group) in surplus {
            for job in group {
                let _ = self.queue.release(&job).await;
            }
        }
    }

    /// A group that waited for a worker keeps its lease: once it waited a third of a
    /// lease its leases are extended (a job another box took meanwhile is left out);
    /// one that waited a whole lease is dropped untouched (its leases ran out, so the
    /// queue hands its jobs out again: working on them here too could do them twice).
    async fn keep_leases(&self, claimed_ms: i64, jobs: Vec<Job>) -> Vec<Job> {
        let lease = self.settings.lease_ms;
        let waited = self.queue.clock().now_ms() - claimed_ms;
        if waited * 3 < lease {
            return jobs;
        }
        if waited >= lease {
            self.metrics.error(
                "catalog",
                &format!(
                    "{} claimed job(s) waited {waited} ms for a worker, past their lease: \
                     back to the queue",
                    jobs.len()
                ),
            );
            return Vec::new();
        }
        match self.queue.heartbeat(&jobs, lease).await {
            Ok(held) => jobs.into_iter().filter(|j| held.contains(&j.id)).collect(),
            Err(e) => {
                // Their leases still run for a while: worked on as they are.
                self.metrics.error("store", &format!("heartbeat: {e}"));
                jobs
            }
        }
    }

    /// The one dispatcher: claims up to [`CLAIM_MAX`] jobs at a time for the workers
    /// that have room (see [`Catalog::room`]: one write for several of them, not one
    /// each), and hands them out in groups of the claim batch size. With nothing
    /// claimable it waits for work to arrive, the next job to fall due, or
    /// [`IDLE_LOOK_EVERY`]: an idle engine claims nothing on a timer of its own.
    pub async fn dispatcher(self: Arc<Self>, cancel: CancellationToken) {
        let mut target = self.target.subscribe();
        // The last claim found nothing.
        let mut idle = true;
        loop {
            if !self.wait_unpaused(&cancel).await
                || !self.wait_for_circuit(&cancel).await
                || !self.wait_for_authorisation(&cancel).await
            {
                return;
            }
            // Registered before looking: a worker finishing or work arriving between the
            // look and the wait below still wakes the dispatcher.
            let progressed = self.progress.notified();
            let notified = self.work.notified();
            target.borrow_and_update();
            self.release_surplus_groups().await;
            let room = self.room();
            if room == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = progressed => {}
                    _ = target.changed() => {}
                }
                continue;
            }
            let per = (self
                .claim_batch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .current as usize)
                .max(1);
            // After an empty claim, nothing claimable yet: wait until something is (or
            // work arrives) without taking the write lock (an idle engine only reads).
            // Another box's new work wakes this one too (a shared queue).
            let wakes = self.queue.wakes_seen();
            let next = match idle {
                true => Some(self.queue.next_claimable(JOB_KIND).await),
                false => None,
            };
            let wait = match next {
                Some(Ok(Some(at))) => {
                    Duration::from_millis((at - self.queue.clock().now_ms()).max(0) as u64)
                }
                Some(Ok(None)) => IDLE_LOOK_EVERY,
                _ => Duration::ZERO,
            };
            if !wait.is_zero() {
                let wait = wait.min(IDLE_LOOK_EVERY);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = notified => {}
                    _ = self.queue.wait_for_work(wakes, wait), if self.queue.is_shared() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            // Whole groups only: a short group leaves as a short batch, and QuickBooks
            // takes few batches a minute (short ones hold a rate-bound sync below its
            // quota).
            let limit = (per * room.min((CLAIM_MAX / per).max(1))).min(CLAIM_MAX);
            let lease = self.settings.lease_ms;
            let asked = tokio::time::Instant::now();
            let asked_ms = self.queue.clock().now_ms();
            // (The embedded store's claim is awaited from its writer thread, committed
            // with the writes waiting there: no thread of the runtime blocks on it.)
            let claimed = self.queue.claim_with_mappings(JOB_KIND, limit, lease).await;
            if matches!(&claimed, Ok(jobs) if jobs.len() == limit) {
                // A full claim: grow while claiming stays quick, a step per group it
                // holds. (One step per claim would grow the groups several times slower
                // now that one claim serves several workers: a rate-bound sync's
                // batches would stay short for long, and QuickBooks takes few batches
                // a minute, so short ones held it below its quota.)
                let took = asked.elapsed();
                let mut sizer = self.claim_batch.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..limit.div_ceil(per) {
                    sizer.record(took);
                }
            }
            idle = matches!(&claimed, Ok(jobs) if jobs.is_empty());
            match claimed {
                Ok(jobs) if !jobs.is_empty() => {
                    self.claimed.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
                    for group in jobs.chunks(per) {
                        groups.push_back((asked_ms, group.to_vec()));
                        self.group_ready.notify_one();
                    }
                }
                Err(e) => {
                    self.metrics.error("store", &e.to_string());
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                _ => {
                    // Due but not claimable: its key is in flight (look again shortly,
                    // or when a worker finishes).
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = notified => {}
                        _ = progressed => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
    }

    /// Groups claimed but not taken go back to the queue untouched (a worker stopping).
    async fn release_waiting_groups(&self) {
        let groups: Vec<Vec<Job>> = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .map(|(_, g)| g)
            .collect();
        for job in groups.iter().flatten() {
            let _ = self.queue.release(job).await;
        }
    }

    /// One worker: takes a group the dispatcher claimed until cancelled; a group in
    /// hand is finished before the worker stops (drain). Its finished jobs are committed
    /// together, in the store's group commit with the other workers'.
    pub async fn worker(self: Arc<Self>, index: usize, cancel: CancellationToken) {
        let mut target = self.target.subscribe();
        // The last group's ends, handed to the store (counted by a task of their own
        // once committed; waited for before the next group's, and before stopping).
        let mut ending: Option<Ending> = None;
        loop {
            if cancel.is_cancelled() {
                self.settle(ending.take()).await;
                self.release_waiting_groups().await;
                return;
            }
            // Workers above the auto-scaler's target wait until it grows.
            if index >= *target.borrow_and_update() {
                tokio::select! {
                    _ = cancel.cancelled() => continue,
                    _ = target.changed() => continue,
                }
            }
            let ready = self.group_ready.notified();
            let taken = {
                let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
                let g = groups.pop_front();
                if g.is_some() {
                    // Counted busy under the same lock: the dispatcher's room never
                    // counts this group twice or not at all.
                    self.metrics.busy_workers.fetch_add(1, Ordering::Relaxed);
                }
                g
            };
            let Some((claimed_ms, jobs)) = taken else {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = ready => {}
                    _ = target.changed() => {}
                }
                continue;
            };
            let mut jobs = self.keep_leases(claimed_ms, jobs).await;
            // The mappings the claim read are used when the group is taken at once, on
            // a first attempt: else read again (an operator's resync, or the job of a
            // lease that ran out, may have written one since).
            let waited = self.queue.clock().now_ms() - claimed_ms;
            for job in &mut jobs {
                if waited > CLAIMED_MAPPINGS_FRESH_MS || job.attempts > 1 {
                    job.mapping = None;
                }
            }
            if jobs.is_empty() {
                self.metrics.busy_workers.fetch_sub(1, Ordering::Relaxed);
                self.progress.notify_waiters();
                continue;
            }
            // Jobs not started when a pause, shutdown or scale-down arrives, or while
            // the circuit is open, go back untouched.
            let open = self.qb.guard().is_some_and(|g| !g.breaker.admits_now().0);
            let stop =
                cancel.is_cancelled() || self.is_paused() || index >= *target.borrow() || open;
            if stop {
                for job in &jobs {
                    let _ = self.queue.release(job).await;
                }
                self.metrics.busy_workers.fetch_sub(1, Ordering::Relaxed);
                self.progress.notify_waiters();
                continue;
            }
            let n = jobs.len();
            self.metrics.in_flight.fetch_add(n, Ordering::Relaxed);
            // One trace per claim: its requests carry it, its audit lines record it.
            // (The group's future is large: boxed once, the wrappers around it move a
            // pointer instead of copying it each time they take it.)
            let finished = crate::telemetry::trace::scope(async {
                let started = tokio::time::Instant::now();
                let (results, waited) = crate::resilience::measuring_permit_wait(
                    self.heartbeating(&jobs, Box::pin(self.process_group(&jobs))),
                )
                .await;
                // Each job is charged its share of the time the group took, and of the
                // time it waited for limiter permits.
                let share = started.elapsed() / n.max(1) as u32;
                let waited = waited / n.max(1) as u32;
                let mut finished = Vec::new();
                for (job, result) in jobs.iter().zip(results) {
                    if !matches!(result, Err(JobError::Deferred(..))) {
                        self.metrics.latency.record(share);
                        self.metrics
                            .busy_nanos
                            .fetch_add(share.as_nanos() as u64, Ordering::Relaxed);
                        self.metrics
                            .permit_wait_nanos
                            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
                        self.metrics.jobs_timed.fetch_add(1, Ordering::Relaxed);
                    }
                    match result {
                        Ok((outcome, mapping)) => {
                            finished.push(finished_job(job, &outcome, mapping))
                        }
                        Err(e) => {
                            self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                            self.finish_failed(job, e).await;
                        }
                    }
                }
                finished
            })
            .await;
            // The previous group's ends first (long committed, as a rule: with this
            // group's first write), then this group's, handed over: they share the
            // commit of the next write a worker or the dispatcher waits on.
            self.settle(ending.take()).await;
            ending = Arc::clone(&self).send_finished(finished).await;
            self.metrics.busy_workers.fetch_sub(1, Ordering::Relaxed);
            self.progress.notify_waiters();
        }
    }

    /// Hands a group's finished jobs to the store (one group commit, shared with the
    /// other workers' writes); they are counted as soon as it is committed, and
    /// [`Self::settle`] waits for that.
    async fn send_finished(
        self: Arc<Self>,
        finished: Vec<crate::store::Finished>,
    ) -> Option<Ending> {
        let n = finished.len();
        if n == 0 {
            return None;
        }
        let entity = finished
            .iter()
            .find_map(|f| f.audit.as_ref().map(|a| a.1.clone()))
            .unwrap_or_else(|| "catalog".into());
        let committed = self.queue.finish_jobs_sent(finished).await;
        Some(Ending(tokio::spawn(async move {
            let r = committed.await;
            // The last in flight: whoever waits for none (the end of adoption by SKU)
            // looks now.
            if self.metrics.in_flight.fetch_sub(n, Ordering::Relaxed) == n {
                self.progress.notify_waiters();
            }
            match r {
                Ok(ended) => {
                    // A job whose lease ran out was queued or handed out again: not
                    // ended, nor counted, here.
                    if ended < n {
                        self.metrics.error(
                            "catalog",
                            &format!("{} finished job(s) not recorded: {LEASE_LOST}", n - ended),
                        );
                    }
                    self.metrics
                        .completed
                        .fetch_add(ended as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // The writes happened but were not recorded: the jobs stay leased
                    // and are retried after their lease; the retry finds the Items.
                    self.metrics.error(&entity, &format!("store: {e}"));
                }
            }
        })))
    }

    /// Waits until handed-over ends are committed and counted.
    async fn settle(&self, ending: Option<Ending>) {
        if let Some(Ending(counted)) = ending {
            let _ = counted.await;
        }
    }

    /// Brings a claimed group of products in line: each job is prepared; two or more
    /// writes go in batches ([`bulk`]), fewer as single calls. One result per job, in
    /// order.
    async fn process_group(&self, jobs: &[Job]) -> Vec<JobResult> {
        let mut results: Vec<Option<JobResult>> = jobs.iter().map(|_| None).collect();
        let mut plans = Vec::new();
        // The group's mappings: as the claim read them, else in one read (a job's key
        // is its product id).
        let keys: Vec<&str> = jobs
            .iter()
            .filter(|j| j.mapping.is_none())
            .map(|j| j.key.as_str())
            .collect();
        let mut mappings: HashMap<String, ItemMapping> = match self.queue.mappings(&keys).await {
            Ok(found) => found
                .into_iter()
                .chain(jobs.iter().filter_map(|j| j.mapping.clone().flatten()))
                .map(|m| (m.product_id.clone(), m))
                .collect(),
            Err(e) => {
                let msg = format!("store: {e}");
                return jobs
                    .iter()
                    .map(|_| Err(JobError::Transient(msg.clone(), None)))
                    .collect();
            }
        };
        for (i, job) in jobs.iter().enumerate() {
            match self.prepare(job, mappings.remove(&job.key)).await {
                Ok(Step::Done(outcome, mapping)) => results[i] = Some(Ok((outcome, mapping))),
                Ok(Step::Write(mut plan)) => {
                    plan.held = Some(job.held());
                    plans.push((i, plan));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if plans.len() >= bulk::BATCH_MIN {
            while !plans.is_empty() {
                let rest = plans.split_off(plans.len().min(bulk::BATCH_MAX));
                for (i, r) in self.write_batch(std::mem::replace(&mut plans, rest)).await {
                    results[i] = Some(r);
                }
            }
        } else {
            for (i, plan) in plans {
                results[i] = Some(self.complete(plan).await);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(JobError::Transient("not processed".into(), None))))
            .collect()
    }

    /// A job that did not finish: retried later, failed, deferred or rejected (each
    /// written on its own: these are the few).
    async fn finish_failed(&self, job: &Job, error: JobError) {
        let entity = job.key.as_str();
        match error {
            // Nothing of it is this worker's to record any more.
            JobError::LeaseLost => self
                .metrics
                .error(entity, &format!("stopped mid-way: {LEASE_LOST}")),
            JobError::Transient(msg, wait) => {
                let attempt = job.attempts.max(1);
                let backoff = wait.unwrap_or_else(|| backoff(attempt, job.id));
                let retry = self
                    .queue
                    .retry_later(
                        job,
                        &msg,
                        backoff.as_millis() as i64,
                        self.settings.max_attempts,
                    )
                    .await;
                if let Ok(crate::store::queue::Retry::LeaseLost) = retry {
                    self.metrics
                        .error(entity, &format!("{msg} (not recorded: {LEASE_LOST})"));
                    return;
                }
                self.metrics.error(entity, &msg);
                if matches!(retry, Ok(crate::store::queue::Retry::Failed)) {
                    let _ = self.store.audit(
                        "error",
                        entity,
                        "engine",
                        &format!("failed after {attempt} attempts: {msg}"),
                    );
                }
            }
            JobError::Deferred(msg, wait) => {
                match self.queue.defer(job, &msg, wait.as_millis() as i64).await {
                    Ok(true) => {
                        self.metrics.deferred.fetch_add(1, Ordering::Relaxed);
                    }
                    // Its lease ran out: the job's newer holder deals with it.
                    Ok(false) => {}
                    Err(e) => self.metrics.error(entity, &format!("store: {e}")),
                }
            }
            JobError::Permanent(reason) => {
                // The job and its product's mapping rejected at once (its refused
                // pending create cleared, its Item kept).
                match self.queue.reject_product(job, &reason).await {
                    Ok(true) => {}
                    // Its lease ran out: the job's newer holder (or newer payload)
                    // decides, not this verdict.
                    Ok(false) => return,
                    Err(e) => {
                        self.metrics
                            .error(entity, &format!("{reason} (not recorded: {e})"));
                        return;
                    }
                }
                self.metrics.error(entity, &reason);
                let _ = self.store.audit("rejected", entity, "engine", &reason);
            }
        }
    }

    async fn price(&self, id: &str) -> Result<Price, JobError> {
        if let Some(p) = self
            .prices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(p.clone());
        }
        let p = self.stripe.price(id).await?;
        let mut cache = self.prices.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        // Prices are immutable in Stripe (a change is a new price), so caching is safe.
        cache.insert(id.to_owned(), p.clone());
        Ok(p)
    }

    /// Reads what the job asks for and decides: nothing to write (done), or a plan of
    /// the Item write(s) that bring the product's Item in line.
    async fn prepare(&self, job: &Job, mapping: Option<ItemMapping>) -> Result<Step, JobError> {
        let product: Product = match &job.payload {
            Some(p) => serde_json::from_str(p)
                .map_err(|e| JobError::Permanent(format!("bad payload: {e}")))?,
            None => match self.stripe.product(&job.key).await {
                Ok(p) => p,
                Err(StripeError::Api { status: 404, .. }) => {
                    return Ok(Step::Done(Outcome::Gone, None));
                }
                Err(e) => return Err(e.into()),
            },
        };
        let price = match &product.default_price {
            Some(PriceRef::Id(id)) => Some(self.price(id).await?),
            _ => None,
        };
        // A product read by the worker is the job's key.
        let mapping = match product.id == job.key {
            true => mapping,
            false => self.queue.mapping(&product.id).await?,
        };
        self.decide(&product, price.as_ref(), mapping)
    }

    /// What a product as read asks of its Item: nothing (done), or a plan of writes.
    /// The one decision both a job ([`Self::prepare`]) and an impact preview
    /// ([`Self::job_cost`]) make.
    fn decide(
        &self,
        product: &Product,
        price: Option<&Price>,
        mapping: Option<ItemMapping>,
    ) -> Result<Step, JobError> {
        let desired = DesiredItem::from_product(product, price)
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        let mut m = mapping.unwrap_or_else(|| ItemMapping {
            product_id: product.id.clone(),
            status: "new".into(),
            ..Default::default()
        });
        if m.source_updated.is_some_and(|seen| seen > product.updated) {
            // An older version than the one already written (events arrive out of order).
            return Ok(Step::Done(Outcome::Stale, None));
        }
        if product.deleted && m.item_id.is_none() && m.pending_request_id.is_none() {
            // Never written to QuickBooks: there is no Item to deactivate, and creating
            // one for a product that no longer exists is a write no one asked for.
            m.status = "deleted".into();
            m.reason = None;
            m.source_updated = Some(product.updated.max(m.source_updated.unwrap_or(0)));
            return Ok(Step::Done(Outcome::DeletedUnsynced, Some(m)));
        }
        let plan = Plan {
            product_updated: product.updated,
            hash: desired.hash(),
            desired,
            m,
            outcome: None,
            held: None,
        };
        if plan.m.item_id.is_some() && plan.is_synced() {
            let (outcome, mapping) = plan.done();
            return Ok(Step::Done(outcome, mapping));
        }
        Ok(Step::Write(Box::new(plan)))
    }

    /// What one job would cost if a worker took it now, from what the engine holds
    /// and without calling anyone: the reads [`Self::prepare`] makes (the product when
    /// the job carries none, its price when not cached) and the write [`Self::decide`]
    /// settles on (none for an Item already in line, an update for a mapped Item, a
    /// create otherwise). A product read only by the worker is taken to need a write.
    pub fn job_cost(&self, key: &str, payload: Option<&str>) -> JobCost {
        let mapped = || {
            self.store
                .mapping(key)
                .ok()
                .flatten()
                .is_some_and(|m| m.item_id.is_some())
        };
        let unknown = |stripe| JobCost {
            stripe,
            write: if mapped() {
                Write::Update
            } else {
                Write::Create
            },
        };
        let product: Option<Product> = payload.and_then(|p| serde_json::from_str(p).ok());
        let Some(product) = product else {
            return unknown(u64::from(payload.is_none()));
        };
        let price = match &product.default_price {
            Some(PriceRef::Id(id)) => {
                let cached = self
                    .prices
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .cloned();
                match cached {
                    Some(p) => Some(p),
                    // Read by the worker: what it says is not known here.
                    None => return unknown(1),
                }
            }
            _ => None,
        };
        let decided = match self.store.mapping(&product.id) {
            Ok(mapping) => self.decide(&product, price.as_ref(), mapping),
            Err(e) => Err(e.into()),
        };
        let write = match decided {
            Ok(Step::Done(..)) | Err(_) => Write::None,
            Ok(Step::Write(plan)) if plan.m.item_id.is_some() => Write::Update,
            Ok(Step::Write(_)) => Write::Create,
        };
        let stripe = 0;
        JobCost { stripe, write }
    }

    /// Whether the workers' bulk index of Items is read and fresh (creates in a batch
    /// then cost no lookup), and how many requests reading it takes otherwise.
    pub fn index_reads(&self, items_known: u64) -> u64 {
        let fresh = self
            .index
            .try_lock()
            .ok()
            .is_some_and(|i| i.as_ref().is_some_and(bulk::ItemIndex::fresh));
        if fresh { 0 } else { items_known / 1000 + 1 }
    }

    /// Records a plan's mapping before its job ends (an Item found or created, its
    /// update still to go): refused once the job's lease no longer stands.
    async fn record_ahead(&self, p: &Plan) -> Result<(), JobError> {
        match p.held {
            Some(held) => held_or_lost(self.queue.save_mapping_held(&p.m, held).await?),
            None => Ok(self.queue.save_mapping(&p.m).await?),
        }
    }

    /// Whether the job a write is made for is still held (checked right before the
    /// write is sent); a plan of no job's always is.
    async fn still_held(&self, held: Option<Held>) -> Result<(), JobError> {
        let Some(held) = held else {
            return Ok(());
        };
        held_or_lost(self.queue.holding(&[held]).await?.first() == Some(&true))
    }

    /// Records a create about to be sent: refused once its job's lease no longer stands.
    async fn mark_pending(&self, create: PendingCreate) -> Result<(), JobError> {
        held_or_lost(self.queue.mark_creates_pending(&[create]).await?.first() == Some(&true))
    }

    /// Carries a plan out with single calls: finds or creates the Item, then updates it.
    async fn complete(&self, mut plan: Box<Plan>) -> JobResult {
        let p = &mut *plan;
        if p.m.item_id.is_none() {
            let (item, how) = self.find_or_create(&p.m, &p.desired, p.held).await?;
            p.m.item_id = Some(item.id.clone());
            p.m.sync_token = Some(item.sync_token.clone());
            p.m.item_name = Some(item.name.clone());
            if in_line(&item, &p.desired) {
                p.m.synced_hash = Some(p.hash.clone());
            }
            if !p.is_synced() {
                // An update follows: record the Item first, so a crash in between never
                // loses it. (A create alone needs no such step: its replay finds it.)
                p.m.status = "pending".into();
                self.record_ahead(p).await?;
            }
            p.outcome = Some(match how {
                "created" => Outcome::Created {
                    item_id: item.id,
                    name: item.name,
                },
                _ => Outcome::Adopted {
                    item_id: item.id,
                    name: item.name,
                },
            });
        }
        if !p.is_synced() {
            let (item_id, name) = self.update(&mut p.m, &p.desired, p.held).await?;
            if p.outcome.is_none() {
                p.outcome = Some(Outcome::Updated { item_id, name });
            }
        }
        Ok(plan.done())
    }

    fn cached(&self, key: &str) -> Option<crate::connectors::quickbooks::Item> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key, now_ms())
    }

    /// Keeps what QuickBooks just said about an Item (its name may have changed: the
    /// old name's entry goes with the product's tag).
    fn remember(&self, item: &crate::connectors::quickbooks::Item, product: &str) {
        // The bulk index too, unless a batch holds it (and records the Item itself).
        if let Ok(mut index) = self.index.try_lock()
            && let Some(index) = index.as_mut()
        {
            index.learn(item.clone());
        }
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let tag = format!("product:{product}");
        c.invalidate_tag(&tag);
        let now = now_ms();
        for key in [
            format!("item:name:{}", item.name),
            format!("item:id:{}", item.id),
        ] {
            c.put(&key, item.clone(), &["item", &tag], now);
        }
    }

    /// Replays a create recorded as pending (its answer lost, or its worker gone): the
    /// Item it made, if it made one.
    async fn replay_pending(
        &self,
        m: &ItemMapping,
        pid: &str,
        held: Option<Held>,
    ) -> Result<Option<crate::connectors::quickbooks::Item>, JobError> {
        let (Some(rid), Some(body)) = (&m.pending_request_id, &m.pending_body) else {
            return Ok(None);
        };
        // A replay is a create too (a batch's pending create was sent under the batch's
        // request id: QuickBooks has not seen this one): recorded again under this
        // job's lease first, and not sent once the job is another's.
        if held.is_some() {
            self.mark_pending(PendingCreate {
                product_id: pid.to_owned(),
                request_id: rid.clone(),
                body: body.clone(),
                held,
            })
            .await?;
        }
        let body: Value = serde_json::from_str(body)
            .map_err(|e| JobError::Permanent(format!("pending body: {e}")))?;
        match self.qb.write_item(&body, rid).await {
            Ok(item) => Ok(Some(item)),
            Err(e) if e.code() == Some("6240") => {
                // The name is taken: by this very create if its answer was lost (a
                // batch's, whose replay id is not this one), else by another Item
                // (then the lookup after this).
                let Some(name) = body["Name"].as_str() else {
                    return Ok(None);
                };
                let item = self
                    .qb
                    .find_items("Name", name)
                    .await?
                    .into_iter()
                    .find(|i| i.sku.as_deref() == Some(pid));
                if let Some(item) = &item {
                    self.remember(item, pid);
                }
                Ok(item)
            }
            Err(e) if e.is_transient() => Err(e.into()),
            Err(_) => Ok(None),
        }
    }

    /// Finds this product's Item (a pending create replayed, or one found by name that
    /// is not another product's), or creates it.
    async fn find_or_create(
        &self,
        m: &ItemMapping,
        desired: &DesiredItem,
        held: Option<Held>,
    ) -> Result<(crate::connectors::quickbooks::Item, &'static str), JobError> {
        let pid = desired.sku.as_str();
        if let Some(item) = self.replay_pending(m, pid, held).await? {
            return Ok((item, "created"));
        }
        if self.adopt_by_sku
            && let Some(item) = self.item_by_sku(pid).await?
        {
            self.remember(&item, pid);
            return Ok((item, "adopted"));
        }
        let names = [
            desired.name.clone(),
            item::disambiguated_name(&desired.name, pid),
        ];
        for name in &names {
            for attempt in 0..2 {
                // The bulk index first (no request), when read and whole; after a 6240
                // (taken since it was read) QuickBooks itself.
                let by_index = match attempt {
                    // (Boxed: the index read it may start is a deep future; inline, it
                    // overflowed a debug build's worker stack.)
                    0 => Box::pin(self.name_by_index(name, pid, held)).await?,
                    _ => None,
                };
                let reserved = matches!(by_index, Some(bulk::NameIs::Free));
                let found = match by_index {
                    Some(bulk::NameIs::Free) => Vec::new(),
                    Some(bulk::NameIs::Item(item)) => vec![item],
                    // Another product's create of it is on its way: the next name.
                    Some(bulk::NameIs::Reserved) => break,
                    None => match self.cached(&format!("item:name:{name}")) {
                        Some(item) => vec![item],
                        None => self.qb.find_items("Name", name).await?,
                    },
                };
                if let Some(item) = found.into_iter().next() {
                    self.remember(&item, pid);
                    let ours = item.sku.as_deref() == Some(pid);
                    let free = item.sku.as_deref().is_none_or(str::is_empty)
                        && self.queue.product_of_item(&item.id).await?.is_none();
                    if ours || free {
                        return Ok((item, "adopted"));
                    }
                    break; // held by another product: try the next name
                }
                let body = desired
                    .with_name(name.clone())
                    .create_body(&self.settings.income_account);
                // Written out once: hashed for the request id, kept as pending, sent.
                let text = body.to_string();
                let rid = item::create_request_id_of(pid, &text);
                // Not sent unless recorded (nor once the job is another's): the name
                // is free again.
                let pending = PendingCreate {
                    product_id: pid.to_owned(),
                    request_id: rid.clone(),
                    body: text.clone(),
                    held,
                };
                if let Err(e) = self.mark_pending(pending).await {
                    if reserved {
                        self.created_by_single(name, pid, held, None).await;
                    }
                    return Err(e);
                }
                match self.qb.write_item_json(&text, &rid).await {
                    Ok(item) => {
                        if reserved {
                            self.created_by_single(name, pid, held, Some(&item)).await;
                        }
                        self.remember(&item, pid);
                        return Ok((item, "created"));
                    }
                    // Taken between our lookup and our create: look again.
                    Err(e) if e.code() == Some("6240") => {
                        if reserved {
                            self.created_by_single(name, pid, held, None).await;
                        }
                        continue;
                    }
                    // The name stays reserved while the create may have landed (a
                    // transient failure): the retry replays it.
                    Err(e) if e.is_transient() => return Err(e.into()),
                    Err(e) => {
                        if reserved {
                            self.created_by_single(name, pid, held, None).await;
                        }
                        return Err(e.into());
                    }
                }
            }
        }
        Err(JobError::Permanent(format!(
            "no free QuickBooks name for {pid}: both {:?} and {:?} belong to other products",
            names[0], names[1]
        )))
    }

    /// Writes the desired fields to the mapped Item (5010 → re-read once; 6240 → the
    /// disambiguated name).
    async fn update(
        &self,
        m: &mut ItemMapping,
        desired: &DesiredItem,
        held: Option<Held>,
    ) -> Result<(String, String), JobError> {
        let id = m.item_id.clone().unwrap_or_default();
        let alt = item::disambiguated_name(&desired.name, &desired.sku);
        let mut name = if m.item_name.as_deref() == Some(alt.as_str()) {
            alt.clone()
        } else {
            desired.name.clone()
        };
        let mut token = m.sync_token.clone().unwrap_or_else(|| "0".into());
        let (mut reread, mut renamed) = (false, name == alt);
        loop {
            // Each send (a retry after a stale SyncToken too) only while the job is
            // held: a worker whose lease ran out would send its older version over
            // the newer holder's.
            self.still_held(held).await?;
            let text = desired
                .with_name(name.clone())
                .update_body(&id, &token)
                .to_string();
            match self
                .qb
                .write_item_json(&text, &item::update_request_id_of(&id, &text))
                .await
            {
                Ok(item) => {
                    self.remember(&item, &desired.sku);
                    m.sync_token = Some(item.sync_token);
                    m.item_name = Some(item.name.clone());
                    return Ok((id, item.name));
                }
                Err(e) if e.code() == Some("5010") && !reread => {
                    token = self.qb.read_item(&id).await?.sync_token;
                    reread = true;
                }
                Err(e) if e.code() == Some("6240") && !renamed => {
                    name = alt.clone();
                    renamed = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A group's ends handed to the store: the task that counts them once committed.
struct Ending(tokio::task::JoinHandle<()>);

/// Where the last auto-scaler tick left the counters.
pub struct AutoscaleMarks {
    at: tokio::time::Instant,
    busy: u64,
    jobs: u64,
    throttled: u64,
    timeouts: u64,
    /// Jobs' permit waits so far (ns); cells of QuickBooks' rate granted, and its rate
    /// now.
    waited: u64,
    calls: u64,
    rate_per_sec: f64,
    /// QuickBooks' answered calls and their summed durations (ns).
    ok_calls: u64,
    ok_nanos: u64,
}

/// Job-level backoff (after the per-call retries of the resilience layer gave up):
/// exponential with full jitter inside the cap.
/// A finished job as the group commit takes it: done, its mapping, and the audit line
/// its outcome calls for (in the trace it ran in).
fn finished_job(
    job: &Job,
    outcome: &Outcome,
    mapping: Option<ItemMapping>,
) -> crate::store::Finished {
    let line = match outcome {
        Outcome::Created { item_id, name } => Some(format!("created Item {item_id} \"{name}\"")),
        Outcome::Adopted { item_id, name } => {
            Some(format!("adopted existing Item {item_id} \"{name}\""))
        }
        Outcome::Updated { item_id, name } => Some(format!("updated Item {item_id} \"{name}\"")),
        Outcome::DeletedUnsynced => Some(
            "deleted in Stripe before it was ever synced: nothing to do, no Item created"
                .to_owned(),
        ),
        Outcome::Unchanged | Outcome::Stale | Outcome::Gone => None,
    };
    crate::store::Finished {
        job_id: job.id,
        lease: job.lease,
        mapping,
        audit: line.map(|l| ("item".into(), job.key.clone(), "engine".into(), l)),
        trace_id: crate::telemetry::trace::current_id(),
    }
}

fn backoff(attempt: u32, seed: i64) -> Duration {
    let cap_ms = 300_000u64;
    let expo = (1000u64 << attempt.min(20)).min(cap_ms);
    let mut x = (seed as u64 ^ (attempt as u64) << 32).wrapping_add(now_ms() as u64);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    Duration::from_millis(x % (expo + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: i64 = 60_000;

    /// A catalog on an embedded store (its clients call nowhere: no request is made),
    /// with three jobs queued (p1, p2, p3) and leases of [`LEASE`].
    struct Leased {
        _dir: tempfile::TempDir,
        store: Store,
        clock: crate::store::WallClock,
        queue: JobQueue,
        catalog: Catalog,
    }

    async fn leased() -> Leased {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let clock = crate::store::WallClock::default();
        let queue = JobQueue::sqlite(store.clone(), clock.clone());
        // Clients of nothing: no request is made.
        let http = crate::connectors::http_client().unwrap();
        let nowhere = "http://127.0.0.1:9";
        let secret = crate::config::Secret::new;
        let tokens = crate::connectors::quickbooks::TokenKeeper::new(
            http.clone(),
            nowhere,
            "id",
            secret("client secret"),
            &secret("refresh"),
            store.clone(),
        )
        .unwrap();
        let qb = QuickBooksClient::new(
            http.clone(),
            nowhere,
            "1",
            75,
            Duration::from_secs(1),
            Arc::new(tokens),
        );
        let stripe = StripeClient::new(http, nowhere, secret("sk_test"));
        let settings = CatalogSettings {
            workers: 1,
            autoscale: None,
            claim_batch_max: 30,
            page_size: 100,
            max_attempts: 5,
            lease_ms: LEASE,
            reconcile_interval: Duration::from_secs(3600),
            income_account: "1".into(),
            cache_max_entries: 10,
            cache_ttl_ms: 1_000,
        };
        let catalog = Catalog::new(store.clone(), queue.clone(), stripe, qb, settings)
            .await
            .unwrap();
        let new = |key| NewJob {
            kind: JOB_KIND,
            key,
            payload: None,
            version: 1,
        };
        queue
            .ingest(&[new("p1"), new("p2"), new("p3")], None, None)
            .await
            .unwrap();
        Leased {
            _dir: dir,
            store,
            clock,
            queue,
            catalog,
        }
    }

    /// The lease of job `id`, as the store holds it.
    fn lease_of(store: &Store, id: i64) -> i64 {
        rusqlite::Connection::open(store.path())
            .unwrap()
            .query_row("SELECT lease_until FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
    }

    /// A group claimed ahead that waited for a worker: worked on as claimed while
    /// young; once it waited a third of a lease its leases run a lease from now (a job
    /// no longer leased is left out); once it waited a whole lease it is dropped, and
    /// said so (its jobs are the queue's again).
    #[tokio::test]
    async fn a_waiting_group_keeps_its_leases_or_is_dropped_once_they_ran_out() {
        let Leased {
            _dir: _kept,
            store,
            clock,
            queue,
            catalog,
        } = leased().await;
        let claimed_ms = clock.now_ms();
        let jobs = queue.claim(JOB_KIND, 10, LEASE).await.unwrap();
        assert_eq!(jobs.len(), 3);
        let ids = |jobs: &[Job]| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
        let lease_of = |id: i64| lease_of(&store, id);
        let claimed_lease = lease_of(jobs[0].id);

        clock.advance(LEASE / 3 - 1_000);
        let young = catalog.keep_leases(claimed_ms, jobs.clone()).await;
        assert_eq!(ids(&young), ids(&jobs));
        assert_eq!(
            lease_of(jobs[0].id),
            claimed_lease,
            "a young group's leases stand"
        );

        clock.advance(2_000);
        queue.release(&jobs[2]).await.unwrap();
        let asked_ms = clock.now_ms();
        let kept = catalog.keep_leases(claimed_ms, jobs.clone()).await;
        assert_eq!(ids(&kept), ids(&jobs[..2]), "the released job is left out");
        for job in &kept {
            let until = lease_of(job.id);
            assert!(
                until >= asked_ms + LEASE && until >= claimed_lease + LEASE / 3,
                "extended a lease from when it was asked: {until} (asked at {asked_ms})"
            );
        }

        let errors = catalog.metrics.errors.load(Ordering::Relaxed);
        clock.advance(LEASE);
        assert!(catalog.keep_leases(claimed_ms, jobs).await.is_empty());
        assert_eq!(
            catalog.metrics.errors.load(Ordering::Relaxed),
            errors + 1,
            "a dropped group is said"
        );
    }

    /// A group worked on past a third of its lease keeps its leases on the embedded
    /// store too: once the lease it was claimed with would have run out, the next claim
    /// does not hand its jobs out again (another worker would have worked on them at
    /// the same time).
    #[tokio::test(start_paused = true)]
    async fn a_group_worked_on_keeps_its_leases_on_the_embedded_store_too() {
        let Leased {
            _dir: _kept,
            store,
            clock,
            queue,
            catalog,
        } = leased().await;
        let jobs = queue.claim(JOB_KIND, 2, LEASE).await.unwrap();
        assert_eq!(jobs.len(), 2);
        let claimed_lease = lease_of(&store, jobs[0].id);
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let working = catalog.heartbeating(&jobs, finished);
        let meanwhile = async {
            // A third of a lease and a second on, by both clocks.
            clock.advance(LEASE / 3 + 1_000);
            tokio::time::advance(Duration::from_millis((LEASE / 3 + 1_000) as u64)).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let asked = clock.now_ms();
            for job in &jobs {
                assert!(
                    lease_of(&store, job.id) >= asked + LEASE - 1_000,
                    "extended while worked on: {} from {claimed_lease}",
                    lease_of(&store, job.id)
                );
            }
            // Past the lease it was claimed with: only p3, never claimed, is handed out.
            clock.advance(LEASE * 2 / 3);
            assert!(clock.now_ms() > claimed_lease);
            let again = queue.claim(JOB_KIND, 10, LEASE).await.unwrap();
            let keys: Vec<&str> = again.iter().map(|j| j.key.as_str()).collect();
            assert_eq!(keys, ["p3"], "a job in hand was handed out again");
            let _ = done.send(());
        };
        let (worked, ()) = tokio::join!(working, meanwhile);
        assert!(worked.is_ok());
    }

    /// A group that ends after its leases ran out and its jobs were handed out again
    /// records nothing: no job ended, none counted, no mapping written, and the
    /// operator is told; the jobs' new holder ends them.
    #[tokio::test]
    async fn a_group_ended_after_its_leases_were_handed_out_again_records_nothing() {
        let Leased {
            _dir: _kept,
            store: _,
            clock,
            queue,
            catalog,
        } = leased().await;
        let catalog = Arc::new(catalog);
        let ids = |jobs: &[Job]| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
        let stale = queue.claim(JOB_KIND, 10, LEASE).await.unwrap();
        assert_eq!(stale.len(), 3);
        clock.advance(LEASE + 1);
        let fresh = queue.claim(JOB_KIND, 10, LEASE).await.unwrap();
        assert_eq!(ids(&fresh), ids(&stale), "handed out again");
        let created = |j: &Job| {
            let item_id = format!("{}", j.id);
            let mapping = ItemMapping {
                product_id: j.key.clone(),
                item_id: Some(item_id.clone()),
                status: "synced".into(),
                ..Default::default()
            };
            let name = j.key.clone();
            finished_job(j, &Outcome::Created { item_id, name }, Some(mapping))
        };
        let end = |jobs: &[Job]| {
            catalog
                .metrics
                .in_flight
                .fetch_add(jobs.len(), Ordering::Relaxed);
            let finished = jobs.iter().map(created).collect();
            let catalog = catalog.clone();
            async move {
                let ending = catalog.clone().send_finished(finished).await;
                catalog.settle(ending).await;
            }
        };

        let errors = catalog.metrics.errors.load(Ordering::Relaxed);
        end(&stale).await;
        assert_eq!(catalog.metrics.completed.load(Ordering::Relaxed), 0);
        assert!(
            catalog.metrics.errors.load(Ordering::Relaxed) > errors,
            "said"
        );
        for j in &stale {
            assert_eq!(queue.mapping(&j.key).await.unwrap(), None, "{}", j.key);
        }
        assert_eq!(queue.counts(JOB_KIND).await.unwrap().in_flight, 3);

        end(&fresh).await;
        assert_eq!(catalog.metrics.completed.load(Ordering::Relaxed), 3);
        let c = queue.counts(JOB_KIND).await.unwrap();
        assert_eq!((c.queued, c.in_flight), (0, 0));
        assert!(queue.mapping("p1").await.unwrap().is_some());
    }

    /// p1, p2, p3 queued with payloads (a new version of each), claimed (the stale
    /// leases), then, past their leases, claimed again (the fresh ones).
    async fn stale_and_fresh(l: &Leased) -> (Vec<Job>, Vec<Job>) {
        let product = |key: &str| {
            serde_json::json!({"id": key, "name": format!("Widget {key}"), "active": true,
                               "updated": 2})
            .to_string()
        };
        let payloads: Vec<(String, String)> = ["p1", "p2", "p3"]
            .iter()
            .map(|k| ((*k).to_owned(), product(k)))
            .collect();
        let jobs: Vec<NewJob<'_>> = payloads
            .iter()
            .map(|(k, p)| NewJob {
                kind: JOB_KIND,
                key: k,
                payload: Some(p),
                version: 2,
            })
            .collect();
        l.queue.ingest(&jobs, None, None).await.unwrap();
        let stale = l.queue.claim(JOB_KIND, 10, LEASE).await.unwrap();
        assert_eq!(stale.len(), 3);
        l.clock.advance(LEASE + 1);
        let fresh = l.queue.claim(JOB_KIND, 10, LEASE).await.unwrap();
        assert_eq!(fresh.len(), 3, "handed out again");
        (stale, fresh)
    }

    /// `key`'s Item (id `7{key}`), synced from an older version of the product.
    fn mapped(key: &str) -> ItemMapping {
        ItemMapping {
            product_id: key.into(),
            item_id: Some(format!("7{key}")),
            sync_token: Some("0".into()),
            item_name: Some(format!("Widget {key}")),
            synced_hash: Some("an older version".into()),
            source_updated: Some(1),
            status: "synced".into(),
            ..Default::default()
        }
    }

    /// Which results are lost leases (not sent), in order.
    fn lost(results: &[JobResult]) -> Vec<bool> {
        results
            .iter()
            .map(|r| matches!(r, Err(JobError::LeaseLost)))
            .collect()
    }

    /// A worker whose lease ran out mid-way sends no create: its pending creates are
    /// refused (so never sent), in a batch and as a single call, and it records
    /// nothing; the same jobs' newer holder records and sends its own. (The clients
    /// call nowhere: a create that was sent fails as a transient error, not a lost
    /// lease.)
    #[tokio::test]
    async fn a_worker_whose_lease_ran_out_mid_way_sends_no_create() {
        let l = leased().await;
        // The Item index just read and empty: every name is free, no request asked.
        *l.catalog.index.lock().await = Some(bulk::ItemIndex::whole_and_empty());
        let (stale, fresh) = stale_and_fresh(&l).await;
        // A batch of three, then one alone (a single call).
        let batch = l.catalog.process_group(&stale).await;
        assert_eq!(lost(&batch), [true; 3], "{batch:?}");
        let single = l.catalog.process_group(&stale[..1]).await;
        assert_eq!(lost(&single), [true], "{single:?}");
        for j in &stale {
            assert_eq!(l.queue.mapping(&j.key).await.unwrap(), None, "{}", j.key);
        }
        // The newer holder's creates are recorded (and sent: nowhere, so they fail).
        let held = l.catalog.process_group(&fresh).await;
        assert_eq!(lost(&held), [false; 3], "{held:?}");
        for j in &fresh {
            let m = l.queue.mapping(&j.key).await.unwrap().unwrap();
            assert!(m.pending_request_id.is_some(), "{}", j.key);
        }
        // Their names stay reserved (the creates may have landed); the stale worker's
        // next look, refused again, takes none of them from the newer holder.
        let again = l.catalog.process_group(&stale).await;
        assert_eq!(lost(&again), [true; 3], "{again:?}");
        let single = l.catalog.process_group(&stale[..1]).await;
        assert_eq!(lost(&single), [true], "{single:?}");
        let index = l.catalog.index.lock().await;
        for j in &fresh {
            let name = format!("Widget {}", j.key);
            assert!(
                index
                    .as_ref()
                    .unwrap()
                    .held_by_other(&name, "another product", ""),
                "{name} still reserved for the newer holder"
            );
        }
    }

    /// Nor does it send an update of a mapped Item (its older version would land over
    /// the newer holder's: a stale SyncToken is read again and sent once more), in a
    /// batch or alone, nor replay a create left pending (a batch's: QuickBooks never
    /// saw its request id, so a replay is a new create). The newer holder's are sent.
    #[tokio::test]
    async fn a_worker_whose_lease_ran_out_sends_no_update_and_replays_no_create() {
        let l = leased().await;
        for k in ["p1", "p2", "p3"] {
            l.store.save_mapping(&mapped(k)).unwrap();
        }
        let (stale, fresh) = stale_and_fresh(&l).await;
        let batch = l.catalog.process_group(&stale).await;
        assert_eq!(lost(&batch), [true; 3], "updates in a batch: {batch:?}");
        let single = l.catalog.process_group(&stale[..1]).await;
        assert_eq!(lost(&single), [true], "an update alone: {single:?}");
        let sent = l.catalog.process_group(&fresh).await;
        assert_eq!(lost(&sent), [false; 3], "the holder's are sent: {sent:?}");

        // A create left pending (by a batch whose answer was lost), then the lease lost.
        let l = leased().await;
        l.store
            .mark_creates_pending(&[(
                "p1".into(),
                "rid-of-a-lost-batch".into(),
                r#"{"Name":"Widget p1","Sku":"p1","Type":"Service"}"#.into(),
            )])
            .unwrap();
        let (stale, fresh) = stale_and_fresh(&l).await;
        let replay = l.catalog.process_group(&stale[..1]).await;
        assert_eq!(lost(&replay), [true], "a replay: {replay:?}");
        let replay = l.catalog.process_group(&fresh[..1]).await;
        assert_eq!(lost(&replay), [false], "the holder's replay: {replay:?}");
    }

    /// An operator's resync while a job is under way that found the product in line (it
    /// read the mapping first): the job's end leaves the mapping out of line, so the
    /// resync's own job writes the Item. (Before, the end put the hash back, and the
    /// resync's job found nothing to write.)
    #[tokio::test]
    async fn a_resync_while_a_job_is_under_way_is_not_undone_by_its_end() {
        let l = leased().await;
        let widget = r#"{"id":"p4","name":"Widget p4","active":true,"updated":2}"#;
        let product: Product = serde_json::from_str(widget).unwrap();
        let hash = DesiredItem::from_product(&product, None).unwrap().hash();
        l.store
            .save_mapping(&ItemMapping {
                synced_hash: Some(hash),
                source_updated: Some(2),
                ..mapped("p4")
            })
            .unwrap();
        // The three jobs `leased` queued are claimed and put aside: p4's alone is worked.
        l.queue.claim(JOB_KIND, 10, LEASE).await.unwrap();
        let job = NewJob {
            kind: JOB_KIND,
            key: "p4",
            payload: Some(widget),
            version: 2,
        };
        l.queue.ingest(&[job], None, None).await.unwrap();
        let claimed = l
            .queue
            .claim_with_mappings(JOB_KIND, 1, LEASE)
            .await
            .unwrap();
        l.store.mark_out_of_line(&["p4".to_owned()]).unwrap();
        let results = l.catalog.process_group(&claimed).await;
        let Some(Ok((outcome, mapping))) = results.into_iter().next() else {
            panic!("p4 not worked");
        };
        assert_eq!(outcome, Outcome::Unchanged, "in line, as read");
        let end = finished_job(&claimed[0], &outcome, mapping);
        assert_eq!(l.queue.finish_jobs(vec![end]).await.unwrap(), 1);
        let m = l.store.mapping("p4").unwrap().unwrap();
        assert_eq!((m.synced_hash, m.resyncs), (None, 1), "still out of line");
    }

    /// A batch whose pending creates cannot be recorded (the store refuses) sends
    /// nothing, and every plan of the group gets that error: the update beside the
    /// creates too (it had been left without a result: "not processed").
    #[tokio::test]
    async fn a_batch_whose_creates_cannot_be_recorded_answers_every_plan() {
        let l = leased().await;
        *l.catalog.index.lock().await = Some(bulk::ItemIndex::whole_and_empty());
        l.store.save_mapping(&mapped("p1")).unwrap();
        let (_, fresh) = stale_and_fresh(&l).await;
        // The store refuses any new mapping row (as a full disk would).
        rusqlite::Connection::open(l.store.path())
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON item_map
                 BEGIN SELECT RAISE(FAIL, 'no room'); END;",
            )
            .unwrap();
        let results = l.catalog.process_group(&fresh).await;
        let said: Vec<String> = results
            .iter()
            .map(|r| match r {
                Err(JobError::Transient(msg, _)) => msg.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert!(
            said.iter().all(|m| m.starts_with("store: ")),
            "every plan answered with the store's error: {said:?}"
        );
    }

    #[test]
    fn backoff_stays_inside_the_cap() {
        for attempt in 0..40 {
            assert!(backoff(attempt, 7) <= Duration::from_secs(300));
        }
    }

    #[test]
    fn price_events_refetch_their_product() {
        let job = job_for_event(
            "price.created",
            5,
            &serde_json::json!({"id": "price_1", "product": "prod_1"}),
        )
        .unwrap();
        assert_eq!(
            (job.key.as_str(), job.payload, job.version),
            ("prod_1", None, 5)
        );
        assert!(job_for_event("customer.created", 5, &serde_json::json!({})).is_none());
    }

    #[test]
    fn deleted_product_becomes_inactive() {
        let job = job_for_event(
            "product.deleted",
            9,
            &serde_json::json!({"id": "prod_1", "name": "x", "active": true, "updated": 3}),
        )
        .unwrap();
        let p: Product = serde_json::from_str(job.payload.as_deref().unwrap()).unwrap();
        assert!(p.deleted && !p.active);
    }
}
