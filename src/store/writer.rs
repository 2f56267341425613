//! The writer thread: one long-lived OS thread that commits the store's per-item writes
//! (claims, pending creates, finished jobs) in groups. Callers hand their write over a
//! channel and wait for its commit (durability is that of a write of their own); every
//! write that arrived meanwhile goes into the same transaction, so a busy engine pays
//! one commit for many items instead of one or more each, and no async worker thread
//! blocks on the writer's lock or hops through `spawn_blocking` to get there.
//!
//! It never runs anything but these writes, and never answers a caller before the
//! transaction holding its write has committed (or been refused).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Weak};

use rusqlite::{Connection, params};

use super::{
    Begun, CLAIMABLE, Finished, Inner, Job, LEASE, PendingCreate, Result, SqlError, Store,
    finish_one, holds, now_ms, read_mapping, requeue, storage_error,
};

/// Most writes one transaction takes (a bound on how long the first caller waits).
const GROUP_MAX: usize = 256;

/// How long ends of jobs nobody waits on ([`Store::finish_jobs_sent`]) are held for a
/// write someone waits on, to share its commit. A commit writes every page it changed
/// to the WAL: the queue's, the tallies', the audit trail's pages are the same for
/// every item of a group, so one commit for an end and the next item's pending create
/// writes them once instead of twice.
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// One caller's write, with where its outcome goes.
pub(super) enum GroupWrite {
    /// Jobs ended: done, with their mappings and audit lines.
    Finish {
        jobs: Vec<Finished>,
        /// Its caller does not wait on the commit: it may wait [`LINGER`] for company.
        lingers: bool,
        /// How many ended.
        reply: Reply<usize>,
    },
    /// Creates about to be sent, each fenced by its job's lease.
    Pending {
        creates: Vec<PendingCreate>,
        /// Whether each was recorded (false: its job's lease no longer stood).
        reply: Reply<Vec<bool>>,
    },
    /// Up to `limit` due jobs of `kind` at `now`, leased for `lease_ms`.
    Claim {
        kind: String,
        limit: usize,
        lease_ms: i64,
        now: i64,
        /// Each job's key is a product id: its mapping is read with the claim.
        with_mappings: bool,
        reply: Reply<Vec<Job>>,
    },
}

/// Where a caller waits: a thread (blocked on a channel) or a task (awaiting).
pub(super) enum Reply<T> {
    Wait(SyncSender<Result<T>>),
    Await(tokio::sync::oneshot::Sender<Result<T>>),
}

impl<T> Reply<T> {
    fn send(self, r: Result<T>) {
        // A caller that stopped waiting (a cancelled task) no longer cares.
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send(r);
            }
            Reply::Await(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// What a write produced, held until its transaction commits.
enum Applied {
    /// Which pending creates were recorded.
    Marked(Vec<bool>),
    /// How many of the jobs ended (their leases stood).
    Ended(usize),
    Claimed(Vec<Job>),
}

impl GroupWrite {
    /// The write's statements, inside the group's transaction (or a savepoint of it).
    fn apply(&self, conn: &Connection, now: i64) -> Result<Applied> {
        match self {
            GroupWrite::Finish { jobs, .. } => {
                let mut ended = 0;
                for f in jobs {
                    ended += usize::from(finish_one(conn, f, now)?);
                }
                Ok(Applied::Ended(ended))
            }
            GroupWrite::Pending { creates, .. } => {
                // (`OR FAIL`: see `finish_one`.)
                let mut stmt = conn.prepare_cached(
                    "INSERT OR FAIL INTO item_map(product_id, status, pending_request_id, pending_body)
                     VALUES (?1, 'pending', ?2, ?3)
                     ON CONFLICT(product_id) DO UPDATE SET pending_request_id=excluded.pending_request_id,
                       pending_body=excluded.pending_body",
                )?;
                let mut marked = Vec::with_capacity(creates.len());
                for c in creates {
                    let held = match c.held {
                        Some(h) => holds(conn, h)?,
                        None => true,
                    };
                    if held {
                        stmt.execute(params![c.product_id, c.request_id, c.body])?;
                    }
                    marked.push(held);
                }
                Ok(Applied::Marked(marked))
            }
            GroupWrite::Claim {
                kind,
                limit,
                lease_ms,
                now,
                with_mappings,
                ..
            } => {
                let mut jobs = claim(conn, kind, *limit, *lease_ms, *now)?;
                // Read here, the pages hot in the writer's cache (on a reader they are
                // read again from the WAL, which every commit invalidates).
                if *with_mappings {
                    for job in &mut jobs {
                        job.mapping = Some(read_mapping(conn, &job.key)?);
                    }
                }
                Ok(Applied::Claimed(jobs))
            }
        }
    }

    fn lingers(&self) -> bool {
        matches!(self, GroupWrite::Finish { lingers: true, .. })
    }

    fn answer(self, r: std::result::Result<Applied, Copied>) {
        let err = |e: Copied| SqlError::SqliteFailure(e.0, e.1);
        match self {
            GroupWrite::Finish { reply, .. } => reply.send(r.map_err(err).map(|a| match a {
                Applied::Ended(n) => n,
                Applied::Marked(_) | Applied::Claimed(_) => 0,
            })),
            GroupWrite::Pending { reply, .. } => reply.send(r.map_err(err).map(|a| match a {
                Applied::Marked(marked) => marked,
                Applied::Ended(_) | Applied::Claimed(_) => Vec::new(),
            })),
            GroupWrite::Claim { reply, .. } => reply.send(r.map_err(err).map(|a| match a {
                Applied::Claimed(jobs) => jobs,
                Applied::Marked(_) | Applied::Ended(_) => Vec::new(),
            })),
        }
    }
}

/// Expired leases of `kind` back to the queue, then the claim itself.
fn claim(conn: &Connection, kind: &str, limit: usize, lease_ms: i64, now: i64) -> Result<Vec<Job>> {
    // An expired lease is claimable again (its group's worker stopped extending it:
    // it ended without recording its jobs, or it hangs).
    let expired: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE kind=?1 AND state='leased' AND lease_until < ?2",
        )?
        .query_map(params![kind, now], |r| r.get(0))?
        .collect::<Result<_>>()?;
    for id in expired {
        requeue(conn, id, 0, Some("lease expired"), false)?;
    }
    let due: Vec<Job> = conn
        .prepare_cached(CLAIMABLE)?
        .query_map(params![kind, now, limit as i64], |row| {
            Ok(Job {
                id: row.get(0)?,
                kind: row.get(1)?,
                key: row.get(2)?,
                payload: row.get(3)?,
                attempts: row.get(4)?,
                idempotency_key: row.get(5)?,
                lease: row.get(6)?,
                mapping: None,
            })
        })?
        .collect::<Result<_>>()?;
    let mut lease = conn.prepare_cached(LEASE)?;
    let mut jobs = Vec::with_capacity(due.len());
    for mut job in due {
        // (Read in this transaction, by its only writer: still queued. A job that was
        // not is not claimed.)
        if lease.execute(params![job.id, now, now + lease_ms])? == 1 {
            job.attempts = job.attempts.saturating_add(1);
            job.lease += 1;
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// What a caller gets when the writer thread is gone (the store dropped under it).
pub(super) fn writer_gone() -> SqlError {
    SqlError::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some("the store's writer thread has ended".into()),
    )
}

/// A SQLite failure copied for each caller it concerns (an error is not `Clone`).
type Copied = (rusqlite::ffi::Error, Option<String>);

fn copy(e: &SqlError) -> Copied {
    match e {
        SqlError::SqliteFailure(f, m) => (*f, m.clone()),
        e => (
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(e.to_string()),
        ),
    }
}

/// Starts the writer thread of the store `inner` will be; the sender its writes go to.
/// The thread ends once the store is dropped (its sender with it).
pub(super) fn start(
    inner: Weak<Inner>,
    writes: Receiver<GroupWrite>,
    linger_us: Arc<AtomicU64>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(inner, writes, linger_us))
        .map(|_| ())
}

fn run(inner: Weak<Inner>, writes: Receiver<GroupWrite>, linger_us: Arc<AtomicU64>) {
    while let Ok(first) = writes.recv() {
        let mut group = vec![first];
        let waiting = |group: &mut Vec<GroupWrite>| {
            while group.len() < GROUP_MAX {
                match writes.try_recv() {
                    Ok(w) => group.push(w),
                    Err(_) => break,
                }
            }
        };
        // Whatever arrived while the writer was busy joins the group; ends nobody waits
        // on wait a moment for a write somebody does (before the lock is taken: the
        // store's other writers are not held up meanwhile).
        waiting(&mut group);
        let linger = std::time::Duration::from_micros(linger_us.load(Ordering::Relaxed));
        let deadline = std::time::Instant::now() + linger;
        while group.len() < GROUP_MAX && group.iter().all(GroupWrite::lingers) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match writes.recv_timeout(left) {
                Ok(w) => {
                    group.push(w);
                    waiting(&mut group);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = Store { inner };
        let mut conn = store.w();
        // ... and whatever arrived while this waited for the lock.
        waiting(&mut group);
        let now = now_ms();
        // Every write in one plain transaction first: savepoints make SQLite copy each
        // page they touch to a sub-journal (which spills to a temporary file past
        // 64 KiB). Only when a statement is refused is the group written again, each
        // write under its own savepoint, so that the refused caller alone fails.
        let all_at_once = (|| -> Result<std::result::Result<Vec<Applied>, SqlError>> {
            let tx = Begun::begin(&conn)?;
            let mut out = Vec::with_capacity(group.len());
            for w in &group {
                match w.apply(&tx, now) {
                    Ok(a) => out.push(a),
                    // Dropped: rolled back.
                    Err(refused) => return Ok(Err(refused)),
                }
            }
            tx.commit()?;
            Ok(Ok(out))
        })();
        let each: Vec<std::result::Result<Applied, Copied>> = match all_at_once {
            Ok(Ok(out)) => out.into_iter().map(Ok).collect(),
            // The transaction itself refused (begin or commit): so is every caller.
            Err(e) => group.iter().map(|_| Err(copy(&e))).collect(),
            Ok(Err(_)) => one_by_one(&mut conn, &group, now),
        };
        drop(conn);
        store
            .inner
            .groups_committed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Write health: a storage failure anywhere, else a success (a refused
        // statement says nothing about the store).
        let failed = each.iter().find_map(|r| match r {
            Err(e) if storage_error(&SqlError::SqliteFailure(e.0, e.1.clone())) => Some(e.clone()),
            _ => None,
        });
        let _ = store.wrote(match failed {
            Some(e) => Err(SqlError::SqliteFailure(e.0, e.1)),
            None => Ok(()),
        });
        store
            .inner
            .writes_waiting
            .fetch_sub(group.len() as i64, std::sync::atomic::Ordering::Relaxed);
        // The store let go before anyone is answered: a caller that then drops its
        // last handle closes the database there and then.
        drop(store);
        for (w, r) in group.into_iter().zip(each) {
            w.answer(r);
        }
    }
}

/// The group again, each write under a savepoint of its own: a refused one is undone
/// alone and its caller told.
fn one_by_one(
    conn: &mut Connection,
    group: &[GroupWrite],
    now: i64,
) -> Vec<std::result::Result<Applied, Copied>> {
    let done = (|| -> Result<Vec<std::result::Result<Applied, Copied>>> {
        let mut tx = conn.transaction()?;
        let mut each = Vec::with_capacity(group.len());
        for w in group {
            let sp = tx.savepoint()?;
            match w.apply(&sp, now) {
                Ok(a) => {
                    sp.commit()?;
                    each.push(Ok(a));
                }
                Err(e) => {
                    drop(sp);
                    if tx.is_autocommit() {
                        // The failure ended the whole transaction, not the savepoint
                        // (a full disk, no memory: SQLite rolls all of it back when
                        // the statement kept no journal of its own). Nothing of the
                        // group stands: every caller is told.
                        return Err(e);
                    }
                    each.push(Err(copy(&e)));
                }
            }
        }
        tx.commit()?;
        Ok(each)
    })();
    match done {
        Ok(each) => each,
        Err(e) => group.iter().map(|_| Err(copy(&e))).collect(),
    }
}

impl Store {
    /// Hands `w` to the writer thread.
    pub(super) fn send_write(&self, w: GroupWrite) {
        match self.sender().send(w) {
            // Counted once sent (the count may dip below zero for a moment, when the
            // writer answers before this counts it).
            Ok(()) => {
                self.inner
                    .writes_waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // The thread is gone (it cannot be while a store handle exists).
            Err(std::sync::mpsc::SendError(w)) => w.answer(Err(copy(&writer_gone()))),
        }
    }

    fn sender(&self) -> &Sender<GroupWrite> {
        &self.inner.group_writes
    }

    /// Writes handed to the writer thread and not yet answered.
    #[cfg(test)]
    pub(super) fn writes_waiting(&self) -> i64 {
        self.inner
            .writes_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long ends nobody waits on are held for company from now on.
    #[cfg(test)]
    pub(super) fn set_linger(&self, linger: std::time::Duration) {
        self.inner
            .linger_us
            .store(linger.as_micros() as u64, Ordering::Relaxed);
    }

    /// Transactions the writer thread has committed (or had refused) so far.
    #[cfg(test)]
    pub(super) fn groups_committed(&self) -> u64 {
        self.inner
            .groups_committed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs a group write from a thread, waiting for its commit.
    pub(super) fn write_waiting<T>(&self, make: impl FnOnce(Reply<T>) -> GroupWrite) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send_write(make(Reply::Wait(tx)));
        rx.recv().unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Runs a group write from a task, awaiting its commit (no thread blocks).
    pub(super) async fn write_awaiting<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> GroupWrite,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_write(make(Reply::Await(tx)));
        rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}
