//! The writer thread: one long-lived OS thread that commits the store's per-item writes
//! (claims, pending creates, finished jobs) in groups. Callers hand their write over a
//! channel and wait for its commit (durability is that of a write of their own); every
//! write that arrived meanwhile goes into the same transaction, so a busy engine pays
//! one commit for many items instead of one or more each, and no async worker thread
//! blocks on the writer's lock or hops through `spawn_blocking` to get there.
//!
//! It never runs anything but these writes, and never answers a caller before the
//! transaction holding its write has committed (or been refused).

use std::sync::Weak;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use rusqlite::{Connection, params};

use super::{
    CLAIM, Finished, Inner, Job, Result, SqlError, Store, finish_one, now_ms, requeue,
    storage_error,
};

/// Most writes one transaction takes (a bound on how long the first caller waits).
const GROUP_MAX: usize = 256;

/// One caller's write, with where its outcome goes.
pub(super) enum GroupWrite {
    /// Jobs ended: done, with their mappings and audit lines.
    Finish {
        jobs: Vec<Finished>,
        reply: Reply<()>,
    },
    /// Creates about to be sent: (product id, request id, body) each.
    Pending {
        creates: Vec<(String, String, String)>,
        reply: Reply<()>,
    },
    /// Up to `limit` due jobs of `kind` at `now`, leased for `lease_ms`.
    Claim {
        kind: String,
        limit: usize,
        lease_ms: i64,
        now: i64,
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
    Written,
    Claimed(Vec<Job>),
}

impl GroupWrite {
    /// The write's statements, inside the group's transaction (or a savepoint of it).
    fn apply(&self, conn: &Connection, now: i64) -> Result<Applied> {
        match self {
            GroupWrite::Finish { jobs, .. } => {
                for f in jobs {
                    finish_one(conn, f, now)?;
                }
                Ok(Applied::Written)
            }
            GroupWrite::Pending { creates, .. } => {
                let mut stmt = conn.prepare_cached(
                    "INSERT INTO item_map(product_id, status, pending_request_id, pending_body)
                     VALUES (?1, 'pending', ?2, ?3)
                     ON CONFLICT(product_id) DO UPDATE SET pending_request_id=excluded.pending_request_id,
                       pending_body=excluded.pending_body",
                )?;
                for (pid, rid, body) in creates {
                    stmt.execute(params![pid, rid, body])?;
                }
                Ok(Applied::Written)
            }
            GroupWrite::Claim {
                kind,
                limit,
                lease_ms,
                now,
                ..
            } => claim(conn, kind, *limit, *lease_ms, *now).map(Applied::Claimed),
        }
    }

    fn answer(self, r: std::result::Result<Applied, Copied>) {
        let err = |e: Copied| SqlError::SqliteFailure(e.0, e.1);
        match self {
            GroupWrite::Finish { reply, .. } | GroupWrite::Pending { reply, .. } => {
                reply.send(r.map(|_| ()).map_err(err))
            }
            GroupWrite::Claim { reply, .. } => reply.send(r.map_err(err).map(|a| match a {
                Applied::Claimed(jobs) => jobs,
                Applied::Written => Vec::new(),
            })),
        }
    }
}

/// Expired leases of `kind` back to the queue, then the claim itself.
fn claim(conn: &Connection, kind: &str, limit: usize, lease_ms: i64, now: i64) -> Result<Vec<Job>> {
    // An expired lease (a hung worker) is claimable again.
    let expired: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE kind=?1 AND state='leased' AND lease_until < ?2",
        )?
        .query_map(params![kind, now], |r| r.get(0))?
        .collect::<Result<_>>()?;
    for id in expired {
        requeue(conn, id, 0, Some("lease expired"), false)?;
    }
    let mut stmt = conn.prepare_cached(CLAIM)?;
    stmt.query_map(params![kind, now, now + lease_ms, limit as i64], |row| {
        Ok(Job {
            id: row.get(0)?,
            kind: row.get(1)?,
            key: row.get(2)?,
            payload: row.get(3)?,
            attempts: row.get(4)?,
            idempotency_key: row.get(5)?,
        })
    })?
    .collect()
}

/// What a caller gets when the writer thread is gone (the store dropped under it).
fn writer_gone() -> SqlError {
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
pub(super) fn start(inner: Weak<Inner>, writes: Receiver<GroupWrite>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(inner, writes))
        .map(|_| ())
}

fn run(inner: Weak<Inner>, writes: Receiver<GroupWrite>) {
    while let Ok(first) = writes.recv() {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = Store { inner };
        let mut conn = store.w();
        // Whatever arrived while the writer was busy (or while this waited for its
        // lock) joins the group.
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match writes.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let now = now_ms();
        // Every write in one plain transaction first: savepoints make SQLite copy each
        // page they touch to a sub-journal (which spills to a temporary file past
        // 64 KiB). Only when a statement is refused is the group written again, each
        // write under its own savepoint, so that the refused caller alone fails.
        let all_at_once = (|| -> Result<std::result::Result<Vec<Applied>, SqlError>> {
            let tx = conn.transaction()?;
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
    fn send_write(&self, w: GroupWrite) {
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
