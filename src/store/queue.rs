//! The job queue behind one interface, on either backend: SQLite (the embedded store,
//! one box) or PostgreSQL (several boxes sharing one queue).
//!
//! An enum rather than a trait: there are exactly two backends, both known here; the
//! operations are async (Postgres) and an async trait would need boxing to be used as
//! `dyn`; and the SQLite arm calls the very `Store` methods the engine uses today, so
//! the embedded path does not change. Callers hold a `JobQueue` and never match on it.
//!
//! Times that decide what is due or expired come from the queue's clock (a
//! [`WallClock`], which tests move), passed into the SQL: never the database's `now()`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::postgres::{PgError, PgQueue};
use super::{Finished, Held, ItemMapping, Job, NewJob, PendingCreate, Store, WallClock};
use crate::protocol::CatalogCounts;

/// What a queue operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("the store's task ended: {0}")]
    Task(String),
}

pub type QueueResult<T> = std::result::Result<T, QueueError>;

/// Ends of jobs handed to the store ([`JobQueue::finish_jobs_sent`]): how many ended,
/// once committed.
pub type Ending = std::pin::Pin<Box<dyn std::future::Future<Output = QueueResult<usize>> + Send>>;

/// A kind's counts as the queue keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Keys ever queued (they outlive their jobs).
    pub keys_seen: u64,
    pub queued: u64,
    /// Leased: claimed, perhaps not yet started.
    pub in_flight: u64,
    /// Keys whose latest job failed past its last attempt and still stands.
    pub failed: u64,
    pub oldest_queued_ms: Option<i64>,
}

/// How an attempt that failed was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Back in the queue, due after the delay.
    Later,
    /// No attempts left: failed (an operator may retry it).
    Failed,
    /// This holder no longer held the job (its lease ran out and another claimer has
    /// it): nothing was changed.
    LeaseLost,
}

/// One handle on the job queue.
#[derive(Clone)]
pub struct JobQueue {
    backend: Backend,
    clock: WallClock,
}

#[derive(Clone)]
enum Backend {
    /// The embedded store; its own process is the only claimer. Wake-ups come from
    /// this handle's own ingests.
    Sqlite {
        store: Store,
        wakes: Arc<watch::Sender<u64>>,
    },
    /// The shared queue and mappings; `local` is this box's SQLite store, where the
    /// audit lines of finished jobs go and their mappings are mirrored (for what still
    /// reads them locally: the chain, invoices' Item lines, previews).
    Postgres { pg: PgQueue, local: Option<Store> },
}

/// Writes `write` to a shared queue's box-local mirror (if it keeps one), off the
/// async threads; a failure is logged as `failed` (the shared queue holds the truth).
async fn on_mirror<T: Send + 'static>(
    local: &Option<Store>,
    failed: &str,
    write: impl FnOnce(&Store) -> super::Result<T> + Send + 'static,
) {
    let Some(store) = local.clone() else { return };
    let r = tokio::task::spawn_blocking(move || write(&store).map(|_| ())).await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::warn!("{failed}: {r:?}");
    }
}

impl JobQueue {
    /// The queue of the embedded store.
    pub fn sqlite(store: Store, clock: WallClock) -> Self {
        Self {
            backend: Backend::Sqlite {
                store,
                wakes: Arc::new(watch::channel(0).0),
            },
            clock,
        }
    }

    /// A handle on `company`'s queue in the Postgres database at `url`, migrating it
    /// first; `owner` names this handle's leases (unique per process). Other companies'
    /// rows in the same database are never seen through it.
    pub async fn postgres(
        url: &str,
        owner: &str,
        company: &str,
        clock: WallClock,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            backend: Backend::Postgres {
                pg: PgQueue::connect(url, owner, company).await?,
                local: None,
            },
            clock,
        })
    }

    /// On Postgres: finished jobs' audit lines are written to `store` (this box's), and
    /// their mappings mirrored there. (SQLite: the queue's own store does both already.)
    pub fn with_local(mut self, store: Store) -> Self {
        if let Backend::Postgres { local, .. } = &mut self.backend {
            *local = Some(store);
        }
        self
    }

    /// Whether other processes share this queue (Postgres): a job whose lease runs out
    /// goes to another box, and wake-ups come from other boxes too.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// Runs a queue operation from synchronous code. SQLite's operations never wait
    /// (they are the store's synchronous calls), so this is exactly the call it was —
    /// except claims, pending creates and finishes, which await the writer thread's
    /// group commit (call those from tasks);
    /// Postgres's are waited for in place (the multi-thread runtime, or a blocking
    /// thread).
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        use futures_util::FutureExt;
        let mut f = std::pin::pin!(f);
        if let Some(v) = (&mut f).now_or_never() {
            return v;
        }
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    /// The Postgres pool of a shared queue (None on SQLite): the company's other shared
    /// rows (quota, tokens) go through it.
    pub fn pg_pool(&self) -> Option<deadpool_postgres::Pool> {
        self.postgres_handle().map(|pg| pg.pool().clone())
    }

    /// The Postgres handle, when the queue is shared (its pool and lease owner serve
    /// the other shared tables: `pg_invoices`).
    pub fn postgres_handle(&self) -> Option<&PgQueue> {
        match &self.backend {
            Backend::Postgres { pg, .. } => Some(pg),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Which backend: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Enqueues jobs in one transaction with an optional cursor write and Stripe event
    /// id; false (and nothing written) when the event id was seen before. A queued job
    /// of the same key keeps the newest payload by `version`.
    pub async fn ingest(
        &self,
        jobs: &[NewJob<'_>],
        cursor: Option<(&str, &str)>,
        event: Option<(&str, &str, &str)>,
    ) -> QueueResult<bool> {
        match &self.backend {
            Backend::Sqlite { store, wakes } => {
                let new = store.ingest(jobs, cursor, event)?;
                if new && !jobs.is_empty() {
                    wakes.send_modify(|n| *n += 1);
                }
                Ok(new)
            }
            Backend::Postgres { pg, .. } => Ok(pg.ingest(jobs, cursor, event, self.now()).await?),
        }
    }

    /// Claims up to `limit` due jobs of `kind`, leased for `lease_ms`; never a key
    /// already being worked on, never a job another claimer holds. Leases that ran out
    /// are put back first.
    pub async fn claim(&self, kind: &str, limit: usize, lease_ms: i64) -> QueueResult<Vec<Job>> {
        let now = self.now();
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store
                .claim_at_async(kind, limit, lease_ms, now, false)
                .await?),
            Backend::Postgres { pg, .. } => Ok(pg.claim(kind, limit, lease_ms, now).await?),
        }
    }

    /// [`Self::claim`] of jobs keyed by product id, each with its product's mapping
    /// ([`Job::mapping`]) as it stood when the lease was taken: the embedded store
    /// reads them in the claim's own transaction, Postgres in one query after it (if
    /// that read fails, the jobs come without: their worker reads them). Another writer
    /// (an operator's resync) may change a mapping later: a caller uses these only when
    /// it starts on the job at once.
    pub async fn claim_with_mappings(
        &self,
        kind: &str,
        limit: usize,
        lease_ms: i64,
    ) -> QueueResult<Vec<Job>> {
        let now = self.now();
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store
                .claim_at_async(kind, limit, lease_ms, now, true)
                .await?),
            Backend::Postgres { pg, .. } => {
                let mut jobs = pg.claim(kind, limit, lease_ms, now).await?;
                let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
                // (The leases are taken: a failed read must not drop the jobs.)
                match pg.mappings(&keys).await {
                    Ok(found) => {
                        let mut found: HashMap<String, ItemMapping> = found
                            .into_iter()
                            .map(|m| (m.product_id.clone(), m))
                            .collect();
                        for job in &mut jobs {
                            job.mapping = Some(found.remove(&job.key));
                        }
                    }
                    Err(e) => tracing::warn!("claimed jobs' mappings not read: {e}"),
                }
                Ok(jobs)
            }
        }
    }

    /// Extends the leases of `jobs` this handle still holds by `lease_ms` from now;
    /// the ids still held, ascending (a missing one was lost: stop working on it).
    pub async fn heartbeat(&self, jobs: &[Job], lease_ms: i64) -> QueueResult<Vec<i64>> {
        let now = self.now();
        let leases: Vec<(i64, i64)> = jobs.iter().map(|j| (j.id, j.lease)).collect();
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.heartbeat_at(&leases, lease_ms, now)?),
            Backend::Postgres { pg, .. } => Ok(pg.heartbeat(&leases, lease_ms, now).await?),
        }
    }

    /// Marks a claimed job done; false when this handle no longer held it.
    pub async fn finish(&self, job: &Job) -> QueueResult<bool> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.finish_job(job.id, job.lease, None, None)?),
            Backend::Postgres { pg, .. } => Ok(pg.finish(job.id, job.lease, self.now()).await?),
        }
    }

    /// Records a failed attempt: back after `delay_ms`, or failed once `max_attempts`
    /// were made.
    pub async fn retry_later(
        &self,
        job: &Job,
        error: &str,
        delay_ms: i64,
        max_attempts: u32,
    ) -> QueueResult<Retry> {
        let outcome = match &self.backend {
            Backend::Sqlite { store, .. } => {
                store.retry_later(job.id, job.lease, error, delay_ms, max_attempts)?
            }
            Backend::Postgres { pg, .. } => {
                pg.retry_later(job.id, job.lease, error, delay_ms, max_attempts, self.now())
                    .await?
            }
        };
        Ok(match outcome {
            Some(true) => Retry::Failed,
            Some(false) => Retry::Later,
            None => Retry::LeaseLost,
        })
    }

    /// A job that can never succeed as is (invalid data), kept with its reason.
    pub async fn reject(&self, job: &Job, reason: &str) -> QueueResult<bool> {
        self.reject_marking(job, reason, None).await
    }

    /// [`Self::reject`] of a job keyed by a product: the product's mapping is marked
    /// rejected with the reason (this job's refused pending create cleared, its Item
    /// kept) in the same transaction, only while the lease stands (written after the
    /// reject, the product's next job could already have been claimed, and its pending
    /// create wiped).
    pub async fn reject_product(&self, job: &Job, reason: &str) -> QueueResult<bool> {
        self.reject_marking(job, reason, Some(&job.key)).await
    }

    async fn reject_marking(
        &self,
        job: &Job,
        reason: &str,
        product: Option<&str>,
    ) -> QueueResult<bool> {
        match &self.backend {
            Backend::Sqlite { store, .. } => {
                Ok(store.reject_marking(job.id, job.lease, reason, product)?)
            }
            Backend::Postgres { pg, .. } => Ok(pg
                .reject(job.id, job.lease, reason, product, self.now())
                .await?),
        }
    }

    /// Puts a job back for later without counting the attempt (the call was never
    /// made, e.g. an open circuit refused it).
    pub async fn defer(&self, job: &Job, reason: &str, delay_ms: i64) -> QueueResult<bool> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.defer(job.id, job.lease, reason, delay_ms)?),
            Backend::Postgres { pg, .. } => Ok(pg
                .put_back(job.id, job.lease, Some(reason), delay_ms, self.now())
                .await?),
        }
    }

    /// Gives a claimed job back untouched (shutdown before it started).
    pub async fn release(&self, job: &Job) -> QueueResult<bool> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.release(job.id, job.lease)?),
            Backend::Postgres { pg, .. } => {
                Ok(pg.put_back(job.id, job.lease, None, 0, self.now()).await?)
            }
        }
    }

    /// Start-up recovery: leases left by this process's previous life go back to the
    /// queue. SQLite: every lease (one process per data dir). Postgres: the leases of
    /// this handle's owner name only; other boxes' run out.
    pub async fn requeue_leased(&self) -> QueueResult<usize> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.requeue_leased()?),
            Backend::Postgres { pg, .. } => Ok(pg.requeue_leased(self.now()).await?),
        }
    }

    /// Keys of `kind` whose jobs failed past their last attempt and still stand.
    pub async fn failed_job_keys(&self, kind: &str) -> QueueResult<Vec<String>> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.failed_job_keys(kind)?),
            Backend::Postgres { pg, .. } => Ok(pg.failed_job_keys(kind).await?),
        }
    }

    /// Puts failed jobs (one key, or all) back with fresh attempts; the keys, sorted.
    pub async fn requeue_failed(&self, kind: &str, key: Option<&str>) -> QueueResult<Vec<String>> {
        match &self.backend {
            Backend::Sqlite { store, wakes } => {
                let mut keys = store.requeue_failed(kind, key)?;
                keys.sort();
                if !keys.is_empty() {
                    wakes.send_modify(|n| *n += 1);
                }
                Ok(keys)
            }
            Backend::Postgres { pg, .. } => Ok(pg.requeue_failed(kind, key, self.now()).await?),
        }
    }

    pub async fn counts(&self, kind: &str) -> QueueResult<QueueCounts> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.queue_counts(kind)?),
            Backend::Postgres { pg, .. } => Ok(pg.counts(kind).await?),
        }
    }

    /// Jobs of `kind` queued, counted up to `cap` at most (a shared queue's count is a
    /// round trip: a bounded one).
    pub async fn queued_up_to(&self, kind: &str, cap: u64) -> QueueResult<u64> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.queued(kind)?.min(cap)),
            Backend::Postgres { pg, .. } => Ok(pg.queued_up_to(kind, cap).await?),
        }
    }

    /// Jobs of `kind` not done: queued, leased (claimed, perhaps not yet started), or
    /// failed with no later success for their key.
    pub async fn unfinished(&self, kind: &str) -> QueueResult<u64> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.unfinished(kind)?),
            Backend::Postgres { pg, .. } => Ok(pg.unfinished(kind).await?),
        }
    }

    /// Removes jobs done before `before_ms` and the failures they superseded; how many.
    /// No count changes and nothing unfinished goes.
    pub async fn compact_jobs(&self, before_ms: i64) -> QueueResult<usize> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.compact_jobs(before_ms)?),
            Backend::Postgres { pg, .. } => Ok(pg.compact_jobs(before_ms).await?),
        }
    }

    pub async fn set_cursor(&self, name: &str, value: &str) -> QueueResult<()> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.set_cursor(name, value)?),
            Backend::Postgres { pg, .. } => Ok(pg.set_cursor(name, value, self.now()).await?),
        }
    }

    pub async fn cursor(&self, name: &str) -> QueueResult<Option<String>> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.cursor(name)?),
            Backend::Postgres { pg, .. } => Ok(pg.cursor(name).await?),
        }
    }

    /// The mappings of `product_ids` there are, in any order.
    pub async fn mappings(&self, product_ids: &[&str]) -> QueueResult<Vec<ItemMapping>> {
        match &self.backend {
            Backend::Sqlite { store, .. } => {
                let mut found = Vec::with_capacity(product_ids.len());
                for id in product_ids {
                    found.extend(store.mapping(id)?);
                }
                Ok(found)
            }
            Backend::Postgres { pg, .. } => Ok(pg.mappings(product_ids).await?),
        }
    }

    pub async fn mapping(&self, product_id: &str) -> QueueResult<Option<ItemMapping>> {
        Ok(self.mappings(&[product_id]).await?.pop())
    }

    /// The product an Item is mapped to, if any.
    pub async fn product_of_item(&self, item_id: &str) -> QueueResult<Option<String>> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.product_of_item(item_id)?),
            Backend::Postgres { pg, .. } => Ok(pg.product_of_item(item_id).await?),
        }
    }

    /// How many products have a mapping.
    pub async fn mapping_count(&self) -> QueueResult<u64> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.mapping_count()?),
            Backend::Postgres { pg, .. } => Ok(pg.mapping_counts().await?.0),
        }
    }

    /// Records creates about to be sent, in one transaction; whether each was recorded.
    /// One made for a job is refused (false) once that job's lease no longer stands: it
    /// must not be sent then (the job's newer holder decides what QuickBooks gets).
    pub async fn mark_creates_pending(&self, creates: &[PendingCreate]) -> QueueResult<Vec<bool>> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.mark_creates_pending_async(creates).await?),
            Backend::Postgres { pg, .. } => Ok(pg.mark_creates_pending(creates).await?),
        }
    }

    /// Marks the mappings of `products` out of line (the next job writes their Items
    /// whatever was last recorded) and counts the resync ([`ItemMapping::resyncs`]: a
    /// job under way that read it before ends leaving it out of line), the rest of
    /// each row as it is; how many mappings there were to mark.
    pub async fn mark_out_of_line(&self, products: &[String]) -> QueueResult<usize> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.mark_out_of_line(products)?),
            Backend::Postgres { pg, local } => {
                let marked = pg.mark_out_of_line(products).await?;
                // The box's mirror too, at once (the impact preview reads it): else it
                // said "in line" until the resync's job ended. (Its count is its own,
                // never compared: a mirror is written as the queue saved it.)
                let products = products.to_vec();
                on_mirror(
                    local,
                    "the local mirror was not marked out of line",
                    move |s| s.mark_out_of_line(&products),
                )
                .await;
                Ok(marked)
            }
        }
    }

    /// Which of `held` still stand (a read, made right before a write is sent on a
    /// job's behalf: one whose job was claimed again or put back sends nothing more).
    /// A lease past its time that nobody has claimed again still stands, as for every
    /// end: until then nobody else writes for the job.
    pub async fn holding(&self, held: &[Held]) -> QueueResult<Vec<bool>> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.holding(held)?),
            Backend::Postgres { pg, .. } => Ok(pg.holding(held).await?),
        }
    }

    /// Stores the Item now mirroring the product, clearing any pending create (not on
    /// a job's behalf: see [`Self::save_mapping_held`]).
    pub async fn save_mapping(&self, m: &ItemMapping) -> QueueResult<()> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.save_mapping(m)?),
            Backend::Postgres { pg, .. } => Ok(pg.save_mapping(m, self.now()).await?),
        }
    }

    /// [`Self::save_mapping`] on behalf of a job before its end (an Item recorded ahead
    /// of its update): false, and nothing written, once the job's lease no longer
    /// stands.
    pub async fn save_mapping_held(&self, m: &ItemMapping, held: Held) -> QueueResult<bool> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.save_mapping_held(m, held)?),
            Backend::Postgres { pg, .. } => Ok(pg.save_mapping_held(m, held, self.now()).await?),
        }
    }

    /// [`Self::finish_jobs`] handed over now, its commit awaited apart (the future it
    /// returns): the embedded store's writer commits the ends with the next write
    /// someone waits on, within a millisecond ([`Store::finish_jobs_sent`]). On
    /// Postgres the ends are committed before this returns.
    pub async fn finish_jobs_sent(&self, jobs: Vec<Finished>) -> Ending {
        match &self.backend {
            Backend::Sqlite { store, .. } => {
                let committed = store.finish_jobs_sent(jobs);
                Box::pin(async move { Ok(committed.await?) })
            }
            Backend::Postgres { .. } => Box::pin(std::future::ready(self.finish_jobs(jobs).await)),
        }
    }

    /// Ends finished jobs, each with its mapping in the same transaction; how many
    /// ended (a job whose lease this handle lost is not ended, nor its mapping
    /// written). SQLite: the store's group commit, audit lines included. Postgres: one
    /// statement, then the audit lines (and a mirror of the mappings) in this box's
    /// store.
    pub async fn finish_jobs(&self, jobs: Vec<Finished>) -> QueueResult<usize> {
        match &self.backend {
            Backend::Sqlite { store, .. } => {
                // The writer thread's group commit, awaited: no thread blocks on it.
                Ok(store.finish_jobs_async(jobs).await?)
            }
            Backend::Postgres { pg, local } => {
                let pairs: Vec<(i64, i64, Option<&ItemMapping>)> = jobs
                    .iter()
                    .map(|f| (f.job_id, f.lease, f.mapping.as_ref()))
                    .collect();
                let held = pg.finish_with(&pairs, self.now()).await?;
                // Mirrored as saved: a mapping left out of line (resynced since it was
                // read) is so here too.
                let ended: Vec<Finished> = jobs
                    .into_iter()
                    .filter_map(|mut f| {
                        let at = held.binary_search_by_key(&f.job_id, |h| h.0).ok()?;
                        if let Some(m) = f.mapping.as_mut() {
                            m.synced_hash.clone_from(&held[at].1);
                        }
                        Some(f)
                    })
                    .collect();
                let n = ended.len();
                if n > 0 {
                    on_mirror(
                        local,
                        "the local audit of finished jobs was not written",
                        move |s| s.record_finished(&ended),
                    )
                    .await;
                }
                Ok(n)
            }
        }
    }

    /// When a job of `kind` can next be claimed (ms), if any.
    pub async fn next_claimable(&self, kind: &str) -> QueueResult<Option<i64>> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.next_claimable(kind)?),
            Backend::Postgres { pg, .. } => Ok(pg.next_claimable(kind).await?),
        }
    }

    /// The catalog's counts (`kind`'s jobs and the mappings) for the snapshot.
    pub async fn catalog_counts(&self, kind: &str) -> QueueResult<CatalogCounts> {
        match &self.backend {
            Backend::Sqlite { store, .. } => Ok(store.catalog_counts()?),
            Backend::Postgres { pg, .. } => {
                let q = pg.counts(kind).await?;
                let (_, synced, rejected) = pg.mapping_counts().await?;
                Ok(CatalogCounts {
                    products_seen: q.keys_seen,
                    synced,
                    queued: q.queued,
                    in_flight: q.in_flight,
                    failed: q.failed,
                    rejected,
                    oldest_queued_ms: q.oldest_queued_ms,
                })
            }
        }
    }

    /// The wake-ups heard so far; pass it to [`JobQueue::wait_for_work`] after a claim
    /// that found nothing.
    pub fn wakes_seen(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite { wakes, .. } => *wakes.borrow(),
            Backend::Postgres { pg, .. } => pg.wakes_seen(),
        }
    }

    /// Waits for new work announced after `seen` (true), or `timeout` (false: poll
    /// anyway; an announcement can be lost).
    pub async fn wait_for_work(&self, seen: u64, timeout: Duration) -> bool {
        match &self.backend {
            Backend::Sqlite { wakes, .. } => {
                let mut rx = wakes.subscribe();
                if *rx.borrow_and_update() != seen {
                    return true;
                }
                matches!(
                    tokio::time::timeout(timeout, rx.changed()).await,
                    Ok(Ok(()))
                )
            }
            Backend::Postgres { pg, .. } => pg.wait_for_work(seen, timeout).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task waiting for the writer (held busy here by another thread) awaits it: the
    /// runtime's one thread runs other tasks meanwhile, and the write lands once the
    /// writer is free.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_waiting_for_a_busy_writer_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = JobQueue::sqlite(store.clone(), WallClock::default());
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        // Holds the writer until another task has run (or, failing that, 10 s).
        let holder = {
            let store = store.clone();
            std::thread::spawn(move || {
                let _busy = store.w();
                held_tx.send(()).unwrap();
                ran_rx.recv_timeout(Duration::from_secs(10)).is_ok()
            })
        };
        held_rx.recv().unwrap();
        let write = tokio::spawn(async move {
            q.mark_creates_pending(&[PendingCreate {
                product_id: "p1".into(),
                request_id: "r1".into(),
                body: "{}".into(),
                held: None,
            }])
            .await
        });
        // The write starts first, and waits for the writer.
        tokio::task::yield_now().await;
        tokio::spawn(async move { ran_tx.send(()).unwrap() })
            .await
            .unwrap();
        write.await.unwrap().unwrap();
        assert!(
            holder.join().unwrap(),
            "another task ran while the write waited for the writer"
        );
        let m = store.mapping("p1").unwrap().unwrap();
        assert_eq!(m.pending_request_id.as_deref(), Some("r1"));
    }
}
