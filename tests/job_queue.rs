//! The job queue's behaviour, written once and run on both backends: the embedded
//! SQLite store and a throwaway PostgreSQL server (tests/common/pg.rs). Then what only
//! Postgres does: boxes sharing one queue (SKIP LOCKED claims, leases kept by
//! heartbeats and lost without them, NOTIFY wake-ups).
//!
//! Time is the queue's injected clock ([`WallClock::advance`]), never a sleep.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::pg;
use syncctl::store::queue::{JobQueue, QueueCounts, Retry};
use syncctl::store::{NewJob, PendingCreate, Store, WallClock};

const KIND: &str = "catalog.product";
const LEASE: i64 = 60_000;

/// Where a test's queue lives; opens handles on it (a "box" each, for Postgres).
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres {
        url: String,
        _server: std::sync::Arc<pg::Postgres>,
    },
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Db {
    /// None: Postgres is not installed and not required (the harness said so loudly).
    fn new(backend: Backend) -> Option<Self> {
        Some(match backend {
            Backend::Sqlite => Db::Sqlite(tempfile::tempdir().unwrap()),
            Backend::Postgres => {
                let server = pg::server()?;
                Db::Postgres {
                    url: server.database(),
                    _server: server,
                }
            }
        })
    }

    /// A handle whose leases are `owner`'s, reading time from `clock`, on the one
    /// company of a single-company config ("default").
    async fn open(&self, owner: &str, clock: &WallClock) -> JobQueue {
        match self {
            Db::Sqlite(dir) => JobQueue::sqlite(Store::open(dir.path()).unwrap(), clock.clone()),
            Db::Postgres { url, .. } => JobQueue::postgres(url, owner, "default", clock.clone())
                .await
                .unwrap(),
        }
    }
}

fn job<'a>(key: &'a str, payload: &'a str, version: i64) -> NewJob<'a> {
    NewJob {
        kind: KIND,
        key,
        payload: Some(payload),
        version,
    }
}

/// A create about to be sent for `job`'s product, under `job`'s lease.
fn pending(job: &syncctl::store::Job, rid: &str) -> PendingCreate {
    PendingCreate {
        product_id: job.key.clone(),
        request_id: rid.into(),
        body: "{}".into(),
        held: Some(job.held()),
    }
}

/// Runs each behaviour (an `async fn(Backend)` below) as one test per backend.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $case() { super::$case(super::Backend::Postgres).await })*
        }
    };
}

on_both_backends!(
    a_queued_job_keeps_the_newest_payload_whatever_the_arrival_order,
    a_repeated_event_id_enqueues_once,
    a_key_being_worked_on_is_not_claimed_twice,
    leased_jobs_are_requeued_after_a_crash,
    leased_jobs_of_every_kind_are_requeued_and_nothing_else,
    a_lease_that_runs_out_is_claimed_again_and_a_heartbeat_keeps_it,
    a_worker_whose_lease_ran_out_changes_nothing_it_no_longer_holds,
    a_job_fails_after_its_last_attempt_and_an_operator_can_retry_it,
    counts_follow_the_jobs,
    a_deferred_job_does_not_spend_an_attempt,
    a_rejected_product_is_marked_with_its_job_only_while_the_lease_stands,
    a_resync_marks_a_mapping_out_of_line_and_keeps_the_rest,
    a_job_that_read_a_mapping_before_a_resync_leaves_it_out_of_line,
    new_work_wakes_a_waiting_claimer,
    compaction_removes_finished_jobs_and_moves_no_count,
);

async fn a_queued_job_keeps_the_newest_payload_whatever_the_arrival_order(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    // Newer first, then older; and older first, then newer.
    q.ingest(&[job("p1", "v2", 2)], None, None).await.unwrap();
    q.ingest(&[job("p1", "v1", 1)], None, None).await.unwrap();
    q.ingest(&[job("p2", "v1", 1), job("p2", "v2", 2)], None, None)
        .await
        .unwrap();
    let claimed = q.claim(KIND, 10, LEASE).await.unwrap();
    let got: Vec<(&str, Option<&str>)> = claimed
        .iter()
        .map(|j| (j.key.as_str(), j.payload.as_deref()))
        .collect();
    assert_eq!(got, [("p1", Some("v2")), ("p2", Some("v2"))]);
    assert_eq!(claimed[0].idempotency_key, "catalog.product:p1");
}

async fn a_repeated_event_id_enqueues_once(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    let ev = Some(("evt_1", "product.updated", "webhook"));
    assert!(q.ingest(&[job("p1", "a", 1)], None, ev).await.unwrap());
    let first = q.claim(KIND, 10, LEASE).await.unwrap();
    assert!(q.finish(&first[0]).await.unwrap());
    assert!(!q.ingest(&[job("p1", "a", 1)], None, ev).await.unwrap());
    assert!(q.claim(KIND, 10, LEASE).await.unwrap().is_empty());
    assert_eq!(q.counts(KIND).await.unwrap().queued, 0);
}

async fn a_key_being_worked_on_is_not_claimed_twice(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    q.ingest(&[job("p1", "a", 1)], None, None).await.unwrap();
    let first = q.claim(KIND, 10, LEASE).await.unwrap();
    q.ingest(&[job("p1", "b", 2)], None, None).await.unwrap();
    assert!(q.claim(KIND, 10, LEASE).await.unwrap().is_empty());
    assert!(q.finish(&first[0]).await.unwrap());
    let second = q.claim(KIND, 10, LEASE).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].payload.as_deref(), Some("b"));
}

async fn leased_jobs_are_requeued_after_a_crash(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    {
        let q = db.open("box-a", &clock).await;
        q.ingest(&[job("p1", "a", 1)], Some(("full", "p1")), None)
            .await
            .unwrap();
        assert_eq!(q.claim(KIND, 10, LEASE).await.unwrap().len(), 1);
    } // dropped without finishing: the "crash"
    let q = db.open("box-a", &clock).await;
    assert!(
        q.claim(KIND, 10, LEASE).await.unwrap().is_empty(),
        "still leased"
    );
    assert_eq!(q.requeue_leased().await.unwrap(), 1);
    let again = q.claim(KIND, 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(q.cursor("full").await.unwrap().as_deref(), Some("p1"));
}

/// Every kind's leased jobs come back (the store looks kind by kind), and nothing else
/// moves: done jobs stay done, queued ones queued.
async fn leased_jobs_of_every_kind_are_requeued_and_nothing_else(b: Backend) {
    const OTHER: &str = "other.kind";
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let other = |key| NewJob {
        kind: OTHER,
        key,
        payload: Some("x"),
        version: 1,
    };
    {
        let q = db.open("box-a", &clock).await;
        q.ingest(&[job("p1", "a", 1), job("p2", "a", 1)], None, None)
            .await
            .unwrap();
        let done = q.claim(KIND, 1, LEASE).await.unwrap();
        assert!(q.finish(&done[0]).await.unwrap());
        q.ingest(&[other("o1"), other("o2")], None, None)
            .await
            .unwrap();
        assert_eq!(q.claim(KIND, 10, LEASE).await.unwrap().len(), 1);
        assert_eq!(q.claim(OTHER, 1, LEASE).await.unwrap().len(), 1);
    } // the "crash": one job of each kind leased, one done, one queued
    let q = db.open("box-a", &clock).await;
    assert_eq!(q.requeue_leased().await.unwrap(), 2);
    assert_eq!(q.claim(KIND, 10, LEASE).await.unwrap().len(), 1);
    assert_eq!(q.claim(OTHER, 10, LEASE).await.unwrap().len(), 2);
    assert_eq!(q.requeue_leased().await.unwrap(), 3);
}

async fn a_lease_that_runs_out_is_claimed_again_and_a_heartbeat_keeps_it(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let q = db.open("box-a", &clock).await;
    q.ingest(&[job("p1", "a", 1), job("p2", "a", 1)], None, None)
        .await
        .unwrap();
    let held = q.claim(KIND, 10, LEASE).await.unwrap();
    let (p1, p2) = (held[0].id, held[1].id);
    // p1 is kept alive; p2's holder went quiet.
    clock.advance(LEASE / 2);
    assert_eq!(q.heartbeat(&held[..1], LEASE).await.unwrap(), [p1]);
    clock.advance(LEASE / 2 + 1);
    let again = q.claim(KIND, 10, LEASE).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|j| (j.key.as_str(), j.attempts))
            .collect::<Vec<_>>(),
        [("p2", 2)],
        "only the lease that ran out is claimed again"
    );
    clock.advance(LEASE + 1);
    let last = q.claim(KIND, 10, LEASE).await.unwrap();
    assert_eq!(last.iter().map(|j| j.id).collect::<Vec<_>>(), [p1, p2]);
    assert_eq!(q.counts(KIND).await.unwrap().in_flight, 2);
}

async fn a_job_fails_after_its_last_attempt_and_an_operator_can_retry_it(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    q.ingest(&[job("p1", "a", 1)], None, None).await.unwrap();
    let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(q.retry_later(&j, "boom", 0, 2).await.unwrap(), Retry::Later);
    assert!(q.failed_job_keys(KIND).await.unwrap().is_empty());
    let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(j.attempts, 2);
    assert_eq!(
        q.retry_later(&j, "boom", 0, 2).await.unwrap(),
        Retry::Failed
    );
    assert!(q.claim(KIND, 1, LEASE).await.unwrap().is_empty());
    assert_eq!(q.counts(KIND).await.unwrap().failed, 1);
    assert_eq!(q.failed_job_keys(KIND).await.unwrap(), ["p1"]);
    assert_eq!(q.requeue_failed(KIND, None).await.unwrap(), ["p1"]);
    let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(j.attempts, 1, "fresh attempts");
    assert!(q.finish(&j).await.unwrap());
    assert_eq!(q.counts(KIND).await.unwrap().failed, 0);
}

async fn counts_follow_the_jobs(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    for p in ["p1", "p2", "p3", "p4", "p5"] {
        q.ingest(&[job(p, "a", 1)], None, None).await.unwrap();
    }
    // p1 done, p2 rejected, p3 failed, p4 in flight, p5 queued.
    let jobs = q.claim(KIND, 4, LEASE).await.unwrap();
    assert!(q.finish(&jobs[0]).await.unwrap());
    assert!(q.reject(&jobs[1], "invalid").await.unwrap());
    assert_eq!(
        q.retry_later(&jobs[2], "boom", 0, 1).await.unwrap(),
        Retry::Failed
    );
    let c = q.counts(KIND).await.unwrap();
    assert_eq!(
        QueueCounts {
            oldest_queued_ms: None,
            ..c
        },
        QueueCounts {
            keys_seen: 5,
            queued: 1,
            in_flight: 1,
            failed: 1,
            oldest_queued_ms: None,
        }
    );
    assert!(c.oldest_queued_ms.is_some());
    // p1 again: a key seen before is not counted twice.
    q.ingest(&[job("p1", "b", 2)], None, None).await.unwrap();
    let c = q.counts(KIND).await.unwrap();
    assert_eq!((c.keys_seen, c.queued), (5, 2));
}

/// A worker whose lease ran out while it worked (a stall past the lease) ends,
/// retries, rejects, defers, gives back or extends nothing once the job was queued or
/// handed out again: its late end had marked a job done whose payload a newer event
/// had replaced meanwhile, the newer version never synced. Within one box: each lease
/// is numbered (another box's lease is another owner's, see
/// `a_box_that_stops_heartbeating_loses_its_jobs_to_the_other`).
#[expect(
    clippy::too_many_lines,
    reason = "one job's story through three leases, every write of each checked, in order"
)]
async fn a_worker_whose_lease_ran_out_changes_nothing_it_no_longer_holds(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let q = db.open("box-a", &clock).await;
    q.ingest(&[job("p1", "v1", 1)], None, None).await.unwrap();
    let stale = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(stale.payload.as_deref(), Some("v1"));
    // Its lease runs out: the job is handed out again, and ending it is refused to the
    // stale worker while the new one holds it.
    clock.advance(LEASE + 1);
    let second = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(second.id, stale.id);
    assert!(second.lease > stale.lease);
    assert!(
        !q.finish(&stale).await.unwrap(),
        "ended under another's lease"
    );
    // Nor does the stale worker record anything mid-way: a create it is about to send
    // (refused: it must not be sent) or an Item found ahead of its update, while the new
    // holder's are recorded. The same batch may carry both.
    assert_eq!(
        q.mark_creates_pending(&[pending(&stale, "stale-rid")])
            .await
            .unwrap(),
        [false],
        "a stale create is not recorded"
    );
    assert_eq!(q.mapping("p1").await.unwrap(), None);
    // Both leases of the job in one batch: only the standing one's is recorded.
    assert_eq!(
        q.holding(&[stale.held(), second.held()]).await.unwrap(),
        [false, true]
    );
    assert_eq!(
        q.mark_creates_pending(&[pending(&stale, "stale-rid"), pending(&second, "new-rid")])
            .await
            .unwrap(),
        [false, true]
    );
    let ahead = |token: &str| syncctl::store::ItemMapping {
        product_id: "p1".into(),
        item_id: Some("7".into()),
        sync_token: Some(token.into()),
        status: "pending".into(),
        ..Default::default()
    };
    assert!(
        !q.save_mapping_held(&ahead("0"), stale.held())
            .await
            .unwrap(),
        "a stale Item found ahead of its update is not recorded"
    );
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (m.pending_request_id.as_deref(), m.sync_token),
        (Some("new-rid"), None),
        "the new holder's pending create stands"
    );
    assert!(
        q.save_mapping_held(&ahead("3"), second.held())
            .await
            .unwrap()
    );
    assert_eq!(
        q.mapping("p1")
            .await
            .unwrap()
            .unwrap()
            .sync_token
            .as_deref(),
        Some("3")
    );
    // The new holder puts it back (an open circuit), and a newer event replaces its
    // payload in the queue.
    assert!(q.defer(&second, "circuit open", 0).await.unwrap());
    q.ingest(&[job("p1", "v2", 2)], None, None).await.unwrap();

    // Neither comes back to change it: every end is refused.
    for old in [&stale, &second] {
        assert!(!q.finish(old).await.unwrap(), "a late finish ends nothing");
        assert_eq!(
            q.retry_later(old, "late", 0, 5).await.unwrap(),
            Retry::LeaseLost
        );
        assert!(!q.reject(old, "late").await.unwrap());
        assert!(!q.defer(old, "late", 0).await.unwrap());
        assert!(!q.release(old).await.unwrap());
        assert!(
            q.heartbeat(std::slice::from_ref(old), LEASE)
                .await
                .unwrap()
                .is_empty()
        );
        let ended = q
            .finish_jobs(vec![syncctl::store::Finished {
                job_id: old.id,
                lease: old.lease,
                mapping: Some(syncctl::store::ItemMapping {
                    product_id: "p1".into(),
                    item_id: Some("1".into()),
                    synced_hash: Some("of v1".into()),
                    status: "synced".into(),
                    ..Default::default()
                }),
                audit: Some(("item".into(), "p1".into(), "engine".into(), "late".into())),
                trace_id: None,
            }])
            .await
            .unwrap();
        assert_eq!(ended, 0, "a late group end ends nothing");
    }
    assert_eq!(
        q.mapping("p1")
            .await
            .unwrap()
            .unwrap()
            .sync_token
            .as_deref(),
        Some("3"),
        "nor writes a mapping"
    );
    for old in [&stale, &second] {
        assert_eq!(
            q.mark_creates_pending(&[pending(old, "late-rid")])
                .await
                .unwrap(),
            [false]
        );
        assert!(!q.save_mapping_held(&ahead("9"), old.held()).await.unwrap());
    }
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (m.pending_request_id.as_deref(), m.sync_token.as_deref()),
        (None, Some("3")),
        "no late mid-way write lands"
    );
    let c = q.counts(KIND).await.unwrap();
    assert_eq!((c.queued, c.in_flight), (1, 0), "the newer version waits");

    // The newer version is claimed, under a new lease, and only that lease ends it.
    let fresh = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!((fresh.id, fresh.payload.as_deref()), (stale.id, Some("v2")));
    assert!(fresh.lease > second.lease);
    assert_eq!(
        q.heartbeat(std::slice::from_ref(&fresh), LEASE)
            .await
            .unwrap(),
        [fresh.id]
    );
    assert_eq!(
        q.holding(&[stale.held(), second.held(), fresh.held()])
            .await
            .unwrap(),
        [false, false, true]
    );
    assert!(q.finish(&fresh).await.unwrap());
    assert!(!q.finish(&fresh).await.unwrap(), "a job ends once");
    assert_eq!(q.holding(&[fresh.held()]).await.unwrap(), [false]);
    let c = q.counts(KIND).await.unwrap();
    assert_eq!((c.queued, c.in_flight), (0, 0));
}

async fn a_deferred_job_does_not_spend_an_attempt(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let q = db.open("box-a", &clock).await;
    q.ingest(&[job("p1", "a", 1)], None, None).await.unwrap();
    let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert!(q.defer(&j, "circuit open", 5_000).await.unwrap());
    assert!(
        q.claim(KIND, 1, LEASE).await.unwrap().is_empty(),
        "not due yet"
    );
    clock.advance(5_001);
    let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(j.attempts, 1);
    assert!(q.release(&j).await.unwrap());
    let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(j.attempts, 1);
}

/// A product's job rejected (invalid data) marks the product's mapping rejected in the
/// same write: the reason kept, the job's refused pending create cleared (kept, each
/// later job replayed it, and a deletion became a write). A worker whose lease ran out
/// marks nothing: the product's next job may already be another worker's, its pending
/// create recorded (a mapping written after the reject, from an earlier read, had
/// wiped it).
async fn a_rejected_product_is_marked_with_its_job_only_while_the_lease_stands(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let q = db.open("box-a", &clock).await;
    q.ingest(&[job("p1", "v1", 1), job("p2", "v1", 1)], None, None)
        .await
        .unwrap();
    let jobs = q.claim(KIND, 2, LEASE).await.unwrap();
    let (p1, p2) = (&jobs[0], &jobs[1]);
    assert_eq!((p1.key.as_str(), p2.key.as_str()), ("p1", "p2"));
    assert_eq!(
        q.mark_creates_pending(&[pending(p1, "rid-1")])
            .await
            .unwrap(),
        [true]
    );
    // p1: rejected while held, its refused create cleared. p2 (no mapping yet): a row.
    assert!(q.reject_product(p1, "no name").await.unwrap());
    assert!(q.reject_product(p2, "bad price").await.unwrap());
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (
            m.status.as_str(),
            m.reason.as_deref(),
            m.pending_request_id.as_deref()
        ),
        ("rejected", Some("no name"), None)
    );
    let m = q.mapping("p2").await.unwrap().unwrap();
    assert_eq!(
        (m.status.as_str(), m.reason.as_deref()),
        ("rejected", Some("bad price"))
    );

    // p1's next version: claimed, its lease run out, claimed again by another worker,
    // which records its create; the stale worker's reject changes nothing.
    q.ingest(&[job("p1", "v2", 2)], None, None).await.unwrap();
    let stale = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    clock.advance(LEASE + 1);
    let holder = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(holder.id, stale.id);
    assert_eq!(
        q.mark_creates_pending(&[pending(&holder, "rid-2")])
            .await
            .unwrap(),
        [true]
    );
    assert!(!q.reject_product(&stale, "late verdict").await.unwrap());
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (m.reason.as_deref(), m.pending_request_id.as_deref()),
        (Some("no name"), Some("rid-2")),
        "the late reject marks nothing, the holder's create stands"
    );
    assert_eq!(
        q.counts(KIND).await.unwrap().in_flight,
        1,
        "still the holder's"
    );
}

/// An operator's resync marks mappings out of line (the hash cleared) and nothing
/// else: a worker's pending create recorded meanwhile, its newer SyncToken, stay (a
/// resync read the mapping and wrote it back whole, wiping them).
async fn a_resync_marks_a_mapping_out_of_line_and_keeps_the_rest(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    q.save_mapping(&syncctl::store::ItemMapping {
        product_id: "p1".into(),
        item_id: Some("7".into()),
        sync_token: Some("3".into()),
        synced_hash: Some("h".into()),
        status: "synced".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    q.mark_creates_pending(&[PendingCreate {
        product_id: "p1".into(),
        request_id: "rid".into(),
        body: "{}".into(),
        held: None,
    }])
    .await
    .unwrap();
    let products = ["p1".to_owned(), "p2".to_owned()];
    assert_eq!(
        q.mark_out_of_line(&products).await.unwrap(),
        1,
        "p2 has none"
    );
    // Counted again when already out of line (a job may have read it so).
    assert_eq!(q.mark_out_of_line(&products).await.unwrap(), 1);
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (
            m.synced_hash,
            m.sync_token.as_deref(),
            m.pending_request_id.as_deref(),
            m.status.as_str(),
            m.resyncs
        ),
        (None, Some("3"), Some("rid"), "synced", 2)
    );
    assert_eq!(q.mapping("p2").await.unwrap(), None);
}

/// A job that read the mapping before an operator's resync (a webhook's, say, that
/// found the product in line) leaves it out of line at its end, whatever it writes
/// besides, mid-way or at its end: the resync's own job, which read it after, writes the
/// Item and marks it in line.
async fn a_job_that_read_a_mapping_before_a_resync_leaves_it_out_of_line(b: Backend) {
    use syncctl::store::{Finished, ItemMapping};
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    q.save_mapping(&ItemMapping {
        product_id: "p1".into(),
        item_id: Some("7".into()),
        sync_token: Some("3".into()),
        synced_hash: Some("h1".into()),
        status: "synced".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let end = |job: &syncctl::store::Job, m: ItemMapping| Finished {
        job_id: job.id,
        lease: job.lease,
        mapping: Some(m),
        audit: None,
        trace_id: None,
    };
    q.ingest(&[job("p1", "a", 1)], None, None).await.unwrap();
    let before = q.claim(KIND, 10, LEASE).await.unwrap().remove(0);
    let read = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(read.resyncs, 0);
    // The resync, while the job is under way.
    assert_eq!(q.mark_out_of_line(&["p1".to_owned()]).await.unwrap(), 1);
    // Mid-way, the Item recorded (its hash as read), then the end: in line, it says.
    let token = ItemMapping {
        sync_token: Some("4".into()),
        ..read.clone()
    };
    assert!(q.save_mapping_held(&token, before.held()).await.unwrap());
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (m.synced_hash.as_deref(), m.sync_token.as_deref()),
        (None, Some("4"))
    );
    let ended = ItemMapping {
        synced_hash: Some("h1".into()),
        sync_token: Some("5".into()),
        ..read
    };
    assert_eq!(q.finish_jobs(vec![end(&before, ended)]).await.unwrap(), 1);
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (m.synced_hash.as_deref(), m.sync_token.as_deref(), m.resyncs),
        (None, Some("5"), 1),
        "out of line still; the rest written"
    );
    // The resync's job read it after the resync: its end marks it in line.
    q.ingest(&[job("p1", "b", 2)], None, None).await.unwrap();
    let after = q.claim(KIND, 10, LEASE).await.unwrap().remove(0);
    let read = q.mapping("p1").await.unwrap().unwrap();
    let ended = ItemMapping {
        synced_hash: Some("h2".into()),
        sync_token: Some("6".into()),
        ..read
    };
    assert_eq!(q.finish_jobs(vec![end(&after, ended)]).await.unwrap(), 1);
    let m = q.mapping("p1").await.unwrap().unwrap();
    assert_eq!(
        (m.synced_hash.as_deref(), m.sync_token.as_deref(), m.resyncs),
        (Some("h2"), Some("6"), 1)
    );
}

/// A box's local mirror of the shared queue's mappings keeps what the queue saved: a
/// resync marks it out of line at once, and a job under way that read the mapping
/// before leaves it so at its end, there and here (the impact preview reads the
/// mirror).
#[tokio::test]
async fn a_local_mirror_keeps_the_hash_the_shared_queue_saved() {
    use syncctl::store::{Finished, ItemMapping};
    let Some(Db::Postgres { url, _server }) = Db::new(Backend::Postgres) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = Store::open(dir.path()).unwrap();
    let q = JobQueue::postgres(&url, "box-a", "default", WallClock::default())
        .await
        .unwrap()
        .with_local(local.clone());
    q.save_mapping(&ItemMapping {
        product_id: "p1".into(),
        item_id: Some("7".into()),
        synced_hash: Some("h1".into()),
        status: "synced".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut hashes = Vec::new();
    for (payload, resync) in [("a", false), ("b", true), ("c", false)] {
        q.ingest(&[job("p1", payload, 1)], None, None)
            .await
            .unwrap();
        let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
        let read = q.mapping("p1").await.unwrap().unwrap();
        if resync {
            q.mark_out_of_line(&["p1".to_owned()]).await.unwrap();
            // At once in the mirror too, before the job's end.
            let mirror = local.mapping("p1").unwrap().expect("mirrored");
            assert_eq!(mirror.synced_hash, None);
        }
        let end = Finished {
            job_id: j.id,
            lease: j.lease,
            mapping: Some(ItemMapping {
                synced_hash: Some(format!("hash {payload}")),
                ..read
            }),
            audit: None,
            trace_id: None,
        };
        assert_eq!(q.finish_jobs(vec![end]).await.unwrap(), 1);
        let shared = q.mapping("p1").await.unwrap().unwrap().synced_hash;
        let mirror = local.mapping("p1").unwrap().unwrap().synced_hash;
        assert_eq!(shared, mirror, "the mirror as the queue");
        hashes.push(shared);
    }
    assert_eq!(
        hashes,
        [Some("hash a".to_owned()), None, Some("hash c".to_owned())]
    );
}

async fn new_work_wakes_a_waiting_claimer(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let q = db.open("box-a", &WallClock::default()).await;
    let seen = q.wakes_seen();
    assert!(q.claim(KIND, 1, LEASE).await.unwrap().is_empty());
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.wait_for_work(seen, Duration::from_secs(30)).await }
    });
    q.ingest(&[job("p1", "a", 1)], None, None).await.unwrap();
    assert!(waiter.await.unwrap(), "woken, not timed out");
    assert_eq!(q.claim(KIND, 1, LEASE).await.unwrap().len(), 1);
}

async fn compaction_removes_finished_jobs_and_moves_no_count(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let q = db.open("box-a", &clock).await;
    // p1: failed, then done (the failure is superseded); p2: done, then failed (the
    // failure still stands); p3 queued; p4 in flight.
    for (key, outcome) in [
        ("p1", "fail"),
        ("p1", "done"),
        ("p2", "done"),
        ("p2", "fail"),
    ] {
        q.ingest(&[job(key, "a", 1)], None, None).await.unwrap();
        let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
        if outcome == "done" {
            assert!(q.finish(&j).await.unwrap());
        } else {
            assert_eq!(
                q.retry_later(&j, "boom", 0, 1).await.unwrap(),
                Retry::Failed
            );
        }
    }
    q.ingest(&[job("p4", "a", 1)], None, None).await.unwrap();
    q.claim(KIND, 1, LEASE).await.unwrap();
    q.ingest(&[job("p3", "a", 1)], None, None).await.unwrap();
    q.set_cursor("full", "page 3").await.unwrap();
    let before = q.counts(KIND).await.unwrap();
    assert_eq!(
        (
            before.keys_seen,
            before.queued,
            before.in_flight,
            before.failed
        ),
        (4, 1, 1, 1)
    );
    assert_eq!(q.unfinished(KIND).await.unwrap(), 3);
    clock.advance(1);
    // p1's failure and done job, p2's done job.
    assert_eq!(q.compact_jobs(clock.now_ms() + 1).await.unwrap(), 3);
    assert_eq!(q.compact_jobs(clock.now_ms() + 1).await.unwrap(), 0);
    assert_eq!(q.counts(KIND).await.unwrap(), before);
    assert_eq!(q.unfinished(KIND).await.unwrap(), 3);
    assert_eq!(q.failed_job_keys(KIND).await.unwrap(), ["p2"]);
    assert_eq!(q.cursor("full").await.unwrap().as_deref(), Some("page 3"));
}

// ---- Several boxes on one Postgres -------------------------------------------------

/// Two handles (two pools, two listeners): two boxes.
async fn two_boxes(clock: &WallClock) -> Option<(Db, JobQueue, JobQueue)> {
    let db = Db::new(Backend::Postgres)?;
    let a = db.open("box-a", clock).await;
    let b = db.open("box-b", clock).await;
    Some((db, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_boxes_claiming_at_once_never_get_the_same_job() {
    let Some((_db, a, b)) = two_boxes(&WallClock::default()).await else {
        return;
    };
    let keys: Vec<String> = (0..400).map(|i| format!("prod_{i}")).collect();
    let jobs: Vec<NewJob<'_>> = keys.iter().map(|k| job(k, "x", 1)).collect();
    a.ingest(&jobs, None, None).await.unwrap();
    let mut workers = Vec::new();
    for (name, q) in [("a", &a), ("b", &b)] {
        for _ in 0..4 {
            let q = q.clone();
            workers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let claimed = q.claim(KIND, 3, LEASE).await.unwrap();
                    if claimed.is_empty() {
                        return got;
                    }
                    for j in claimed {
                        assert!(q.finish(&j).await.unwrap(), "{name} held {}", j.key);
                        got.push((name, j.key));
                    }
                }
            }));
        }
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let distinct: HashSet<&str> = all.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(all.len(), 400, "each job claimed exactly once");
    assert_eq!(distinct.len(), 400);
    for name in ["a", "b"] {
        assert!(all.iter().any(|(n, _)| *n == name), "box {name} got work");
    }
}

#[tokio::test]
async fn a_claim_skips_rows_another_box_is_claiming_instead_of_waiting() {
    let Some((db, a, _b)) = two_boxes(&WallClock::default()).await else {
        return;
    };
    let Db::Postgres { url, .. } = &db else {
        unreachable!()
    };
    a.ingest(&[job("p1", "a", 1), job("p2", "a", 1)], None, None)
        .await
        .unwrap();
    // Another box in the middle of claiming p1: its row is locked, uncommitted.
    let (mut other, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "SELECT id FROM syncctl.jobs WHERE key = 'p1' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    // A claim that waited on the lock would never return while `tx` is open.
    let claimed = tokio::time::timeout(Duration::from_secs(20), a.claim(KIND, 10, LEASE))
        .await
        .expect("the claim waited on a row another box is claiming")
        .unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.key.as_str()).collect::<Vec<_>>(),
        ["p2"]
    );
    tx.rollback().await.unwrap();
    assert_eq!(a.claim(KIND, 10, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_box_that_stops_heartbeating_loses_its_jobs_to_the_other() {
    let clock = WallClock::default();
    let Some((_db, a, b)) = two_boxes(&clock).await else {
        return;
    };
    let keys = ["p1", "p2", "p3"];
    let jobs: Vec<NewJob<'_>> = keys.iter().map(|k| job(k, "x", 1)).collect();
    a.ingest(&jobs, None, None).await.unwrap();
    let held = a.claim(KIND, 10, LEASE).await.unwrap();
    let ids: Vec<i64> = held.iter().map(|j| j.id).collect();
    assert_eq!(held.len(), 3);
    // Box a heartbeats: past its first lease, box b finds nothing to take.
    clock.advance(LEASE * 2 / 3);
    assert_eq!(a.heartbeat(&held, LEASE).await.unwrap(), ids);
    clock.advance(LEASE * 2 / 3);
    assert!(b.claim(KIND, 10, LEASE).await.unwrap().is_empty());
    // Then box a goes quiet; once its lease runs out, box b takes its jobs.
    clock.advance(LEASE / 3 + 1);
    let taken = b.claim(KIND, 10, LEASE).await.unwrap();
    assert_eq!(taken.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    assert!(taken.iter().all(|j| j.attempts == 2));
    // Box a, back, finds it holds nothing and can end nothing.
    assert!(a.heartbeat(&held, LEASE).await.unwrap().is_empty());
    assert!(!a.finish(&held[0]).await.unwrap());
    assert_eq!(
        a.retry_later(&held[1], "late", 0, 5).await.unwrap(),
        Retry::LeaseLost
    );
    assert!(!a.release(&held[2]).await.unwrap());
    for j in &taken {
        assert!(b.finish(j).await.unwrap());
    }
    let c = b.counts(KIND).await.unwrap();
    assert_eq!((c.queued, c.in_flight, c.failed), (0, 0, 0));
}

#[tokio::test]
async fn a_notify_from_one_box_wakes_a_claimer_waiting_on_another() {
    let Some((_db, a, b)) = two_boxes(&WallClock::default()).await else {
        return;
    };
    let seen = b.wakes_seen();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.wait_for_work(seen, Duration::from_secs(30)).await }
    });
    a.ingest(&[job("p1", "a", 1)], None, None).await.unwrap();
    assert!(
        waiter.await.unwrap(),
        "woken by box a's NOTIFY, not timed out"
    );
    assert_eq!(b.claim(KIND, 1, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn migrations_are_versioned_and_applied_once() {
    let Some(db) = Db::new(Backend::Postgres) else {
        return;
    };
    let Db::Postgres { url, .. } = &db else {
        unreachable!()
    };
    // Two boxes starting at once, then a third later: one set of tables, one row per
    // migration.
    let clock = WallClock::default();
    let (a, b) = tokio::join!(db.open("a", &clock), db.open("b", &clock));
    drop((a, b));
    let _c = db.open("c", &clock).await;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM syncctl.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Every migration once, in order (helpers append migrations: no count here).
    let once: Vec<i32> = (1..=i32::try_from(versions.len()).unwrap()).collect();
    assert!(versions.len() >= 3, "{versions:?}");
    assert_eq!(versions, once);
    // A database from a newer syncctl is refused, not downgraded.
    client
        .execute(
            "INSERT INTO syncctl.schema_migrations(version) VALUES (99)",
            &[],
        )
        .await
        .unwrap();
    let err = JobQueue::postgres(url, "d", "default", clock)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("newer than this syncctl"), "{err}");
}

#[tokio::test]
async fn an_ingest_a_claim_a_heartbeat_and_a_finish_are_one_round_trip_each() {
    use std::sync::atomic::Ordering;
    let Some(server) = pg::server() else { return };
    let url = server.database();
    let (proxy, sent) = pg::counting_proxy(server.port()).await;
    let via_proxy = url.replace(&format!(":{}/", server.port()), &format!(":{proxy}/"));
    let q = JobQueue::postgres(&via_proxy, "box-a", "default", WallClock::default())
        .await
        .unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let one = |i: usize| vec![job(&keys[i], "x", 1)];
    // Warm up: the connection is open and each statement prepared once.
    q.ingest(&one(0), None, None).await.unwrap();
    let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
    q.heartbeat(std::slice::from_ref(&j), LEASE).await.unwrap();
    assert!(q.finish(&j).await.unwrap());
    let mut trips = Vec::new();
    for i in 1..11 {
        let before = sent.load(Ordering::SeqCst);
        q.ingest(&one(i), None, None).await.unwrap();
        let ingest = sent.load(Ordering::SeqCst);
        let j = q.claim(KIND, 1, LEASE).await.unwrap().remove(0);
        let claim = sent.load(Ordering::SeqCst);
        q.heartbeat(std::slice::from_ref(&j), LEASE).await.unwrap();
        let heartbeat = sent.load(Ordering::SeqCst);
        assert!(q.finish(&j).await.unwrap());
        let finish = sent.load(Ordering::SeqCst);
        trips.push([
            ingest - before,
            claim - ingest,
            heartbeat - claim,
            finish - heartbeat,
        ]);
    }
    assert!(trips.iter().all(|t| *t == [1, 1, 1, 1]), "{trips:?}");
}

#[tokio::test]
async fn a_dropped_handle_leaves_no_connection_behind() {
    let Some(db) = Db::new(Backend::Postgres) else {
        return;
    };
    let Db::Postgres { url, .. } = &db else {
        unreachable!()
    };
    let q = db.open("box-a", &WallClock::default()).await;
    q.ingest(&[job("p1", "a", 1)], None, None).await.unwrap();
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let others = || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert!(others().await >= 2, "a pooled and a listening connection");
    drop(q);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = others().await;
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} connections left open"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- The harness itself -------------------------------------------------------------

#[test]
fn the_throwaway_server_is_stopped_and_removed_on_drop_and_on_panic() {
    let Some(pg) = pg::own() else { return };
    let (dir, port) = (pg.dir().to_owned(), pg.port());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let started = std::sync::Mutex::new(None);
    let panicked = std::panic::catch_unwind(|| {
        let pg = pg::own().unwrap();
        *started.lock().unwrap() = Some((pg.dir().to_owned(), pg.port()));
        panic!("a test failing while it holds the server");
    });
    assert!(panicked.is_err());
    let (dir, port) = started.into_inner().unwrap().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn two_companies_on_one_database_never_see_each_others_jobs() {
    let Some(server) = pg::server() else { return };
    let url = server.database();
    let clock = WallClock::default();
    let co1 = JobQueue::postgres(&url, "box-a", "co1", clock.clone())
        .await
        .unwrap();
    let co2 = JobQueue::postgres(&url, "box-a", "co2", clock.clone())
        .await
        .unwrap();
    // The same product id, event id and cursor name in both companies: two of each.
    let ev = Some(("evt_1", "product.updated", "webhook"));
    assert!(
        co1.ingest(&[job("p1", "co1", 1)], Some(("c", "one")), ev)
            .await
            .unwrap()
    );
    assert!(
        co2.ingest(&[job("p1", "co2", 1)], Some(("c", "two")), ev)
            .await
            .unwrap(),
        "an event id of one company is not a duplicate in another"
    );
    co2.ingest(&[job("p2", "co2", 1)], None, None)
        .await
        .unwrap();
    assert_eq!(co1.cursor("c").await.unwrap().as_deref(), Some("one"));
    assert_eq!(co2.cursor("c").await.unwrap().as_deref(), Some("two"));
    assert_eq!(co1.counts(KIND).await.unwrap().queued, 1);
    assert_eq!(co2.counts(KIND).await.unwrap().keys_seen, 2);
    // Each claims its own: co1's p1 being worked on does not hold co2's p1 back.
    let one = co1.claim(KIND, 10, LEASE).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].payload.as_deref(), Some("co1"));
    let two = co2.claim(KIND, 10, LEASE).await.unwrap();
    let got: Vec<_> = two.iter().map(|j| j.payload.as_deref()).collect();
    assert_eq!(got, [Some("co2"), Some("co2")]);
    // Leases that run out go back to their own company's queue only.
    clock.advance(LEASE + 1);
    assert_eq!(co1.claim(KIND, 10, LEASE).await.unwrap().len(), 1);
    assert_eq!(co2.counts(KIND).await.unwrap().in_flight, 2);
    assert_eq!(co1.unfinished(KIND).await.unwrap(), 1);
    assert_eq!(co2.unfinished(KIND).await.unwrap(), 2);
}
