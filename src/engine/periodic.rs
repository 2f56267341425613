//! The engine's periodic and background tasks: audit retention, compliance
//! housekeeping (backups, retention, the daily report), the store's write probe, and
//! the writers that turn breaker transitions and the publisher's lines into audit
//! entries off the callers' paths.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::housekeeping;
use crate::protocol::EngineEvent;
use crate::resilience::State as BreakerState;
use crate::resilience::breaker::Transition;
use crate::store::{SeriesPoint, Store};

/// Gives each downstream's limiter what the previous process left of it (see
/// [`limiter_state_loop`]); a state the store cannot read is left alone.
pub(super) fn restore_limiters(store: &Store, downstreams: &[Arc<crate::resilience::Downstream>]) {
    let now = crate::store::now_ms();
    for d in downstreams {
        match store.limiter_state(d.name()) {
            Ok(Some(s)) => {
                let p = crate::resilience::limiter::Persisted {
                    at_ms: s.at_ms,
                    recent: s.recent,
                    paused_until_ms: s.paused_until_ms,
                    factor: s.factor,
                    ceiling_per_min: s.ceiling_per_min,
                };
                if let Some(left) = d.limiter.restore(&p, now) {
                    tracing::info!(
                        "{}: the previous run's 429 pushback holds {} ms more",
                        d.name(),
                        left.as_millis()
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{}: limiter state unreadable: {e}", d.name()),
        }
    }
}

/// Writes one downstream's limiter state every second, at once after a 429, and once
/// more when the engine stops: what the next process starts its limiter from.
pub(super) async fn limiter_state_loop(
    store: Store,
    d: Arc<crate::resilience::Downstream>,
    cancel: CancellationToken,
) {
    let mut last: Option<crate::resilience::limiter::Persisted> = None;
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = d.limiter.throttled() => false,
        };
        let p = d.limiter.persisted(crate::store::now_ms());
        // Idle and unchanged since the last write: nothing new to keep.
        let idle = |x: &crate::resilience::limiter::Persisted| {
            x.recent == 0
                && x.paused_until_ms.is_none()
                && x.factor == p.factor
                && x.ceiling_per_min == p.ceiling_per_min
        };
        if !stop && idle(&p) && last.as_ref().is_some_and(idle) {
            continue;
        }
        last = Some(p.clone());
        let row = crate::store::LimiterState {
            service: d.name().to_owned(),
            at_ms: p.at_ms,
            recent: p.recent,
            paused_until_ms: p.paused_until_ms,
            factor: p.factor,
            ceiling_per_min: p.ceiling_per_min,
        };
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.save_limiter_state(&row)).await {
            Ok(Err(e)) => tracing::warn!("{}: limiter state not saved: {e}", d.name()),
            Err(e) => tracing::warn!("{}: limiter state not saved: {e}", d.name()),
            Ok(Ok(())) => {}
        }
        if stop {
            return;
        }
    }
}

/// Removes audit entries older than `audit.retention_days`, and jobs finished more than
/// `catalog.done_retention_days` ago, 5 minutes after start and hourly.
pub(super) async fn audit_retention_loop(
    store: Store,
    queue: crate::store::queue::JobQueue,
    days: u64,
    done_days: u64,
    cancel: CancellationToken,
) {
    // Not on the start's path: compaction reads the done jobs (a few hundred ms over
    // 300k of them) holding the writer.
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = tokio::time::sleep(RETENTION_FIRST_AFTER) => {}
    }
    loop {
        let s = store.clone();
        let cutoff = store.now_ms() - days as i64 * 86_400_000;
        match tokio::task::spawn_blocking(move || s.purge_audit_before(cutoff)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!("audit retention: {n} entries older than {days} days removed")
            }
            Ok(Err(e)) => tracing::error!("audit retention: {e}"),
            _ => {}
        }
        let q = queue.clone();
        let cutoff = store.now_ms() - done_days as i64 * 86_400_000;
        let compacted = match queue.is_shared() {
            true => Ok(queue.compact_jobs(cutoff).await),
            false => tokio::task::spawn_blocking(move || q.block_on(q.compact_jobs(cutoff))).await,
        };
        match compacted {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(
                    "job retention: {n} jobs finished over {done_days} days ago compacted"
                )
            }
            Ok(Err(e)) => tracing::error!("job retention: {e}"),
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(AUDIT_RETENTION_EVERY) => {}
        }
    }
}

const AUDIT_RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// The first retention pass, after start.
const RETENTION_FIRST_AFTER: Duration = Duration::from_secs(300);

/// Feeds the audit trail's text index with what was written since, in batches, off
/// every write's path (text queries scan the rows not yet indexed: a few seconds' worth,
/// or the whole trail while a rebuilt index catches up).
pub(super) async fn audit_index_loop(store: Store, cancel: CancellationToken) {
    loop {
        let (s, stop) = (store.clone(), cancel.clone());
        let caught_up = tokio::task::spawn_blocking(move || -> crate::store::Result<()> {
            let mut indexed = 0;
            loop {
                let took = std::time::Instant::now();
                let n = s.index_audit_text(AUDIT_INDEX_BATCH)?;
                indexed += n;
                if n < AUDIT_INDEX_BATCH {
                    if indexed > n {
                        tracing::info!("audit text index: caught up, {indexed} entries indexed");
                    }
                    break;
                }
                // (A stop does not wait for a long catch-up: the next start goes on.)
                if stop.is_cancelled() {
                    tracing::info!(
                        "audit text index: stopped after {indexed} entries; the next start goes on"
                    );
                    break;
                }
                // Catching up (a long trail, or the index rebuilt): the writer's lock is
                // let go as long as the batch held it, so the engine's own writes wait
                // at most a batch and the catch-up takes at most half of the writer.
                std::thread::sleep(took.elapsed().max(AUDIT_CATCH_UP_PAUSE));
            }
            // Nothing new: a step of merging the index's segments, if any level has
            // two (a no-op read of its structure otherwise); with none, the whole index
            // folded into one when what was added since is a quarter of it.
            if indexed == 0 && !s.merge_audit_text(AUDIT_MERGE_PAGES)? {
                s.optimize_audit_text(AUDIT_MERGE_PAGES)?;
            }
            Ok(())
        })
        .await;
        match caught_up {
            Ok(Err(e)) => tracing::error!("audit text index: {e}"),
            Err(e) => tracing::error!("audit text index stopped: {e}"),
            Ok(Ok(())) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(AUDIT_INDEX_EVERY) => {}
        }
    }
}

const AUDIT_INDEX_EVERY: Duration = Duration::from_secs(2);
/// Entries indexed in one write (a long catch-up: 0.1-0.2 s each on this class of
/// machine, with as long a pause between them).
const AUDIT_INDEX_BATCH: usize = 5000;
/// The shortest pause between two catch-up batches.
const AUDIT_CATCH_UP_PAUSE: Duration = Duration::from_millis(20);
/// Pages of the text index merged in one idle step, every AUDIT_INDEX_EVERY while there
/// is merging to do (about 0.8 MB of writing; at 500 pages an idle engine merging a
/// 1M-entry trail's index used 2.5 % of a core, 0.4 % of it not merging).
const AUDIT_MERGE_PAGES: u32 = 200;

/// Backups every few seconds; retention and the daily report at start, then every
/// minute (written off the async threads).
pub(super) async fn housekeeping_loop(
    house: housekeeping::Housekeeping,
    cancel: CancellationToken,
) {
    let house = Arc::new(std::sync::Mutex::new(house));
    let full_every = (HOUSEKEEPING_EVERY.as_secs() / BACKUP_EVERY.as_secs()).max(1);
    for round in 0u64.. {
        let h = house.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
            if round % full_every == 0 {
                h.pass()
            } else {
                h.backup_pass().map(|n| housekeeping::PassSummary {
                    backed_up: n,
                    ..Default::default()
                })
            }
        })
        .await;
        match pass {
            Ok(Ok(s)) if s.records_purged > 0 || s.backups_removed > 0 => tracing::info!(
                "retention: {} validated records and {} backups older than the retention removed",
                s.records_purged,
                s.backups_removed
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("compliance housekeeping: {e:#}"),
            Err(e) => tracing::error!("compliance housekeeping stopped: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(BACKUP_EVERY) => {}
        }
    }
}

const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
const BACKUP_EVERY: Duration = Duration::from_secs(5);

/// How often the store's write probe runs.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(3);

/// Health must know the store cannot write even when nothing else writes, and see it
/// recover: a one-row write every few seconds.
pub(super) async fn store_probe_loop(store: Store, cancel: CancellationToken) {
    let mut every = tokio::time::interval(STORE_PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || store.probe_write()).await;
    }
}

/// Breaker transitions become audit entries and live events (written off the caller's
/// path: the listener runs under the breaker's lock).
pub(super) async fn transitions_loop(
    store: Store,
    events: broadcast::Sender<EngineEvent>,
    mut transitions: mpsc::UnboundedReceiver<(String, Transition)>,
    compliance: Option<Arc<super::compliance::Compliance>>,
) {
    while let Some((service, t)) = transitions.recv().await {
        if service == "alegra"
            && let Some(c) = &compliance
        {
            c.circuit_changed(t.to);
        }
        let line = format!("circuit {} → {}: {}", t.from, t.to, t.reason);
        if t.to == BreakerState::Open {
            tracing::warn!("{service}: {line}");
        } else {
            tracing::info!("{service}: {line}");
        }
        let _ = store.audit("circuit", &service, "engine", &line);
        let _ = events.send(EngineEvent::Breaker {
            service,
            transition: t,
        });
    }
}

/// The publisher's audit lines (alerts, anomalies): kind, entity, message, written in
/// order off its task.
pub(super) async fn audit_writer(
    store: Store,
    mut lines: mpsc::UnboundedReceiver<(String, String, String)>,
) {
    while let Some((kind, entity, message)) = lines.recv().await {
        let store = store.clone();
        let _ =
            tokio::task::spawn_blocking(move || store.audit(&kind, &entity, "engine", &message))
                .await;
    }
}

/// One flush of the telemetry history (see [`Store::save_history`]): downsampled
/// points, the seconds outside which points are dropped (before the hour kept, or
/// ahead of now: left by a process whose clock ran ahead), and changed
/// `engine_state` values.
#[derive(Debug, Default)]
pub(super) struct HistoryBatch {
    pub points: Vec<SeriesPoint>,
    pub keep_from_s: i64,
    pub keep_until_s: i64,
    pub state: Vec<(String, String)>,
}

impl HistoryBatch {
    /// `later` folded in: its points after these (none older than the hour kept), its
    /// values over these.
    pub fn absorb(&mut self, later: HistoryBatch) {
        self.points.extend(later.points);
        self.keep_from_s = self.keep_from_s.max(later.keep_from_s);
        self.keep_until_s = later.keep_until_s;
        let keep = self.keep_from_s..=self.keep_until_s;
        self.points.retain(|p| keep.contains(&p.at_s));
        for (key, value) in later.state {
            match self.state.iter_mut().find(|(k, _)| *k == key) {
                Some(kept) => kept.1 = value,
                None => self.state.push((key, value)),
            }
        }
    }
}

/// Writes the publisher's history flushes off its loop, one transaction each (the
/// publisher folds what it flushes while one is being written into the next). Ends
/// when the publisher lets go of its sender, after writing everything it sent.
pub(super) async fn history_writer(store: Store, mut batches: mpsc::Receiver<HistoryBatch>) {
    while let Some(mut batch) = batches.recv().await {
        while let Ok(later) = batches.try_recv() {
            batch.absorb(later);
        }
        let s = store.clone();
        let n = batch.points.len();
        let written = tokio::task::spawn_blocking(move || {
            s.save_history(
                &batch.points,
                batch.keep_from_s..=batch.keep_until_s,
                &batch.state,
            )
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("telemetry history: {n} points not kept: {e}"),
            Err(e) => tracing::warn!("telemetry history: {n} points not kept: {e}"),
        }
    }
}

/// Runs `lead` while this box leads its company, and `follow` while it does not (each
/// with a token cancelled when the role changes or the engine stops), until `cancel`.
/// On SQLite the box always leads: `lead` runs once, as it did before leaders existed.
pub(super) async fn by_role<L, LF, F, FF>(
    mut leadership: crate::store::pg_leader::Leadership,
    what: &'static str,
    cancel: CancellationToken,
    mut lead: L,
    mut follow: F,
) where
    L: FnMut(CancellationToken) -> LF,
    LF: std::future::Future<Output = ()>,
    F: FnMut(CancellationToken) -> FF,
    FF: std::future::Future<Output = ()>,
{
    use futures_util::future::Either;
    loop {
        let leading = leadership.is_leader();
        let role = cancel.child_token();
        let run = if leading {
            Either::Left(lead(role.clone()))
        } else {
            tracing::info!("{what}: another box leads this company; this one follows");
            Either::Right(follow(role.clone()))
        };
        tokio::pin!(run);
        // Until the role changes (or the engine stops): a task that ends by itself
        // leaves the role as it is.
        let (still, ended) = tokio::select! {
            _ = cancel.cancelled() => (false, false),
            still = leadership.until(!leading) => (still, false),
            () = &mut run => (true, true),
        };
        let still = if ended {
            tokio::select! {
                _ = cancel.cancelled() => false,
                still = leadership.until(!leading) => still,
            }
        } else {
            still
        };
        role.cancel();
        if !ended {
            run.await;
        }
        if !still || cancel.is_cancelled() {
            return;
        }
    }
}
