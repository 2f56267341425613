//! The only place that persists engine state: SQLite in WAL mode.
//!
//! One writer connection (behind a mutex, so writes are serialised) and one reader
//! connection for snapshots. Work is a row before it is work: ingest writes a job in the
//! same transaction as what produced it (a webhook event id, a list-page cursor). Jobs
//! are claimed with a lease; leases left by a dead process are re-queued at start.
//! Nothing here knows HTTP, terminals or the sandbox.

mod integrity;
mod invoices;
pub mod pg_invoices;
pub mod pg_leader;
pub mod pg_quota;
pub mod pg_throwaway;
pub mod pg_tokens;
pub mod postgres;
pub mod private;
pub mod queue;
mod recovery;
mod schema;
mod writer;

pub use invoices::{
    Change, ComplianceCounts, HistoryEntry, InvoiceError, InvoiceRecord, InvoiceResult, Invoices,
};
pub use recovery::{FoundDocument, MARKER, Opened};

use crate::protocol::fold;
pub use crate::protocol::{AuditEntry, AuditFilter, CatalogCounts};
pub use crate::telemetry::history::SeriesPoint;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

pub use rusqlite::Error as SqlError;

pub type Result<T> = std::result::Result<T, SqlError>;

/// A job `f` (of kind `?1`) that failed past its last attempt and still stands: no
/// later job of its key succeeded, and none is queued or in flight again. Read with
/// `jobs f INDEXED BY jobs_due` (kind, state): the few failed rows, never all of a
/// kind's jobs, which the planner (with no statistics) picked to count distinct keys
/// (97 % of an idle engine's CPU over 300k done jobs).
/// Queued and leased apart: each is a lookup in its own partial index by key alone
/// (`state IN (…)` could use neither, and read every job of the key from the table).
const FAILED_STILL: &str = "f.kind = ?1 AND f.state = 'failed'
    AND NOT EXISTS (SELECT 1 FROM jobs d WHERE d.kind = f.kind AND d.key = f.key AND d.id > f.id AND d.state = 'done')
    AND NOT EXISTS (SELECT 1 FROM jobs q WHERE q.kind = f.kind AND q.key = f.key AND q.state = 'queued')
    AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.kind = f.kind AND l.key = f.key AND l.state = 'leased')";

/// The newest failed job of each key still failed (`?1` the kind, `?2` one key or
/// NULL): what an operator's retry re-queues, and what its preview counts.
fn newest_failed() -> String {
    format!(
        "SELECT MAX(f.id) FROM jobs f INDEXED BY jobs_due WHERE {FAILED_STILL} AND (?2 IS NULL OR f.key = ?2) GROUP BY f.key"
    )
}

/// The catalog's job kind, whose counts the snapshot shows.
const JOB_KIND: &str = "catalog.product";

/// A counter kept by the triggers of migration 9 (0 when never written).
/// The kinds of job ever written: the tallies' (a row per kind and state, kept by the
/// jobs' triggers, never deleted), read without a scan of the jobs.
fn job_kinds(conn: &Connection) -> Result<Vec<String>> {
    let names: Vec<String> = conn
        .prepare_cached("SELECT name FROM tallies WHERE name >= 'jobs:' AND name < 'jobs;'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_>>()?;
    // 'jobs:<kind>:<state>'
    let mut kinds: Vec<String> = names
        .iter()
        .filter_map(|n| Some(n.strip_prefix("jobs:")?.rsplit_once(':')?.0.to_owned()))
        .collect();
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

fn tally(conn: &Connection, name: &str) -> Result<u64> {
    conn.prepare_cached("SELECT n FROM tallies WHERE name = ?1")?
        .query_row(params![name], |r| r.get::<_, i64>(0))
        .optional()
        .map(|n| n.unwrap_or(0).max(0) as u64)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock time as the compliance records see it: the system's, shifted by a skew
/// tests set (DIAN's rules turn on Colombian calendar days, which a test cannot wait for).
#[derive(Clone, Default)]
pub struct WallClock {
    skew_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl WallClock {
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.skew_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// From now on the clock reads `at_ms`, then moves on with the system's.
    pub fn set(&self, at_ms: i64) {
        self.skew_ms
            .store(at_ms - now_ms(), std::sync::atomic::Ordering::SeqCst);
    }
    pub fn advance(&self, by_ms: i64) {
        self.skew_ms
            .fetch_add(by_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    /// Read connections (WAL: they read beside the writer, never waiting for it): the
    /// API, the publisher and queries each take a free one.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    path: PathBuf,
    clock: WallClock,
    writes: Mutex<WriteHealth>,
    /// Set when the background integrity check found damage (then nothing is written).
    damaged: Mutex<Option<String>>,
    /// The writer thread's inbox: claims, pending creates and finished jobs, committed
    /// in groups (see the `writer` module).
    group_writes: std::sync::mpsc::Sender<writer::GroupWrite>,
    writes_waiting: std::sync::atomic::AtomicI64,
    groups_committed: std::sync::atomic::AtomicU64,
    /// How long the writer thread holds ends nobody waits on (µs; [`writer::LINGER`]
    /// but in tests), shared with it.
    #[cfg(test)]
    linger_us: Arc<std::sync::atomic::AtomicU64>,
}

/// A job that finished: marked done with its product's mapping (if any) and its audit
/// line (if any), in the transaction of its group.
#[derive(Debug, Clone)]
pub struct Finished {
    pub job_id: i64,
    /// The lease it ran under ([`Job::lease`]): a job given to another worker since is
    /// not ended, nor its mapping or audit line written.
    pub lease: i64,
    pub mapping: Option<ItemMapping>,
    /// Kind, entity, actor, message.
    pub audit: Option<(String, String, String, String)>,
    /// The trace the audit line records (taken where the job ran: a blocking thread
    /// has none).
    pub trace_id: Option<String>,
}

/// Whether the store can write, from the outcome of its latest writes (health reads it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteHealth {
    /// When (ms since the epoch) a write last succeeded.
    pub last_ok_ms: Option<i64>,
    /// Set while writes fail: since when, and the latest error.
    pub failing_since_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Writes failed since the last one that succeeded.
    pub failures: u64,
}

/// How long a probe waits for the write lock before it counts as a failed write.
const PROBE_BUSY: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors that say the database cannot take writes (locked, full, read-only, I/O,
/// damaged), as opposed to a statement of ours being refused (a constraint).
fn storage_error(e: &SqlError) -> bool {
    use rusqlite::ErrorCode::*;
    match e {
        SqlError::SqliteFailure(f, _) => matches!(
            f.code,
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | SystemIoFailure
                | ReadOnly
                | DatabaseCorrupt
                | NotADatabase
                | CannotOpen
                | PermissionDenied
                | FileLockingProtocolFailed
                | OutOfMemory
        ),
        _ => false,
    }
}

/// A job claimed by a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub payload: Option<String>,
    pub attempts: u32,
    pub idempotency_key: String,
    /// The number of this lease of the job (SQLite, schema 19: each claim of the job
    /// counts it up; Postgres: the claim's number, in the lease's owner, see
    /// [`postgres::PgQueue`]): what ends, retries, gives back or extends the job must
    /// name it, so a worker whose lease ran out and was given again changes nothing.
    pub lease: i64,
    /// The key's Item mapping as the claim read it, in the transaction that took the
    /// lease ([`crate::store::queue::JobQueue::claim_with_mappings`]): `Some(None)` is
    /// "read: the product has none". `None`: not read with the claim (ask the store).
    pub mapping: Option<Option<ItemMapping>>,
}

impl Job {
    /// This worker's hold on the job, for writes made on its behalf mid-way.
    pub fn held(&self) -> Held {
        Held {
            job_id: self.id,
            lease: self.lease,
        }
    }
}

/// A worker's hold on a job: the job and the lease it was claimed under
/// ([`Job::lease`]). A write made on a job's behalf before its end (a pending create, an
/// Item recorded before its update) carries it and is refused once that lease no longer
/// stands (the job was claimed again, or put back): a worker whose lease ran out must
/// not write over what the job's newer holder wrote. (A lease past its time that
/// nobody has claimed again still stands, as for the job's end: nobody else writes.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub job_id: i64,
    pub lease: i64,
}

/// A create about to be sent, recorded first: a crash or a lost answer replays it with
/// the same request id.
#[derive(Debug, Clone)]
pub struct PendingCreate {
    pub product_id: String,
    pub request_id: String,
    pub body: String,
    /// The job it is made for (refused once its lease no longer stands); None: no job's.
    pub held: Option<Held>,
}

/// What a worker knows about one product's QuickBooks Item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemMapping {
    pub product_id: String,
    pub item_id: Option<String>,
    pub sync_token: Option<String>,
    pub item_name: Option<String>,
    pub synced_hash: Option<String>,
    pub source_updated: Option<i64>,
    pub pending_request_id: Option<String>,
    pub pending_body: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    /// An operator's resyncs of the product so far (each marks the mapping out of line).
    /// A mapping is written with its hash only while the count is still the one read
    /// with it: a job that read the mapping before a resync leaves it out of line, so
    /// the resync's own job writes the Item again (else the older job's end put back a
    /// hash, and the resync's job found the product in line and wrote nothing). Counted
    /// up by [`Store::mark_out_of_line`] only; a save of an existing row never changes
    /// it (a new row starts at the count read: 0, there was none).
    pub resyncs: i64,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub kind: &'a str,
    pub key: &'a str,
    pub payload: Option<&'a str>,
    /// Ordering stamp of the payload (the object's own `updated`); a queued job keeps
    /// the newest payload.
    pub version: i64,
}

/// OAuth state kept so a restart never reuses a superseded refresh token.
#[derive(Debug, Clone, Default)]
pub struct OAuthState {
    pub bootstrap_hash: String,
    pub refresh_token: String,
    pub access_token: Option<String>,
    pub access_expires_at_ms: Option<i64>,
}

/// One downstream's rate limiter as a process left it (wall-clock milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterState {
    pub service: String,
    pub at_ms: i64,
    /// Requests granted in the minute before `at_ms`.
    pub recent: u32,
    pub paused_until_ms: Option<i64>,
    /// Share of the configured rate in force.
    pub factor: f64,
    /// The rate a 429 answered, per minute.
    pub ceiling_per_min: Option<f64>,
}

impl Store {
    /// Opens (creating and migrating) the database under `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with_clock(dir, WallClock::default())
    }

    /// Opens the store whose compliance records read time from `clock`.
    pub fn open_with_clock(dir: &Path, clock: WallClock) -> anyhow::Result<Self> {
        Ok(Self::open_inner(dir, clock)?.0)
    }

    /// Opens (creating and migrating) the database; true when it was created now (the
    /// file was missing or empty).
    fn open_inner(dir: &Path, clock: WallClock) -> anyhow::Result<(Self, bool)> {
        private::create_dir(dir)?;
        let path = dir.join("syncctl.db");
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        // database file's mode.
        private::file_options()
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut writer = Connection::open(&path)?;
        configure(&writer)?;
        integrity::check_at_start(&writer, &path)?;
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        schema::migrate(&mut writer).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open(&path)?;
                configure(&reader)?;
                Ok(Mutex::new(reader))
            })
            .collect::<Result<Vec<_>>>()?;
        let (group_writes, inbox) = std::sync::mpsc::channel();
        let linger_us = Arc::new(std::sync::atomic::AtomicU64::new(
            writer::LINGER.as_micros() as u64,
        ));
        let store = Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: Default::default(),
                path,
                clock,
                writes: Mutex::new(WriteHealth::default()),
                damaged: Mutex::new(None),
                group_writes,
                writes_waiting: Default::default(),
                groups_committed: Default::default(),
                #[cfg(test)]
                linger_us: Arc::clone(&linger_us),
            }),
        };
        writer::start(Arc::downgrade(&store.inner), inbox, linger_us)?;
        Ok((store, version == 0))
    }

    /// The full integrity check (every page of every table), on a connection of its
    /// own, for the engine to run in the background after a start that checked only
    /// what is bounded (see the `integrity` module). Damage found: the writer turns
    /// query-only (nothing more is written into a damaged file), [`Store::damaged`]
    /// says why with the fix, and the next starts check in full before running.
    pub fn check_integrity(&self) -> std::result::Result<(), String> {
        let path = &self.inner.path;
        let found = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| e.to_string())
        .and_then(|conn| {
            let _ = conn.busy_timeout(WRITE_BUSY);
            integrity::check_fully(&conn, path)
        });
        let Err(problems) = found else {
            return Ok(());
        };
        let why = integrity::refusal(path, &problems);
        tracing::error!("{why}");
        let _ = self.w().pragma_update(None, "query_only", true);
        *self.inner.damaged.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        Err(why)
    }

    /// What the background integrity check found wrong, if it did (see
    /// [`Store::check_integrity`]).
    pub fn damaged(&self) -> Option<String> {
        self.inner
            .damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether writes currently succeed (see [`Store::probe_write`]).
    pub fn write_health(&self) -> WriteHealth {
        self.inner
            .writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a write and records its outcome.
    fn recorded<T>(&self, write: impl FnOnce() -> Result<T>) -> Result<T> {
        self.wrote(write())
    }

    /// Records a write's outcome; hands it back unchanged.
    fn wrote<T>(&self, r: Result<T>) -> Result<T> {
        let failed = match &r {
            Ok(_) => None,
            Err(e) if storage_error(e) => Some(e.to_string()),
            // Our statement refused (a constraint): the store itself is fine.
            Err(_) => return r,
        };
        let now = now_ms();
        let mut w = self.inner.writes.lock().unwrap_or_else(|p| p.into_inner());
        match failed {
            None => {
                if w.failing_since_ms.is_some() {
                    tracing::info!("store: writes succeed again");
                }
                w.last_ok_ms = Some(now);
                w.failing_since_ms = None;
                w.last_error = None;
                w.failures = 0;
            }
            Some(e) => {
                if w.failing_since_ms.is_none() {
                    tracing::error!("store: a write to {} failed: {e}", self.path().display());
                }
                w.failing_since_ms.get_or_insert(now);
                w.last_error = Some(e);
                w.failures += 1;
            }
        }
        r
    }

    /// A small real write (one row), so health knows whether the store can write even
    /// while nothing else writes, and sees it recover. On the writer connection (one
    /// writer: a second one would make the writer's transactions fail with
    /// SQLITE_BUSY_SNAPSHOT), waiting `PROBE_BUSY` for the lock instead of the usual 10 s.
    ///
    /// A writer busy past `PROBE_BUSY` (another statement of ours waiting for the lock,
    /// up to 10 s) must not hide a locked store: then the probe asks for the write lock
    /// on a connection of its own (`BEGIN IMMEDIATE`, nothing written, so the writer's
    /// snapshots are undisturbed) and a lock it cannot get counts as a failed write.
    pub fn probe_write(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + PROBE_BUSY;
        let conn = loop {
            match self.inner.writer.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            if std::time::Instant::now() >= deadline {
                let r = Connection::open(self.path()).and_then(|c| {
                    c.busy_timeout(PROBE_BUSY)?;
                    c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
                });
                return self.wrote(r);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let r = conn.busy_timeout(PROBE_BUSY).and_then(|_| {
            conn.prepare_cached("INSERT INTO cursors(name, value, updated_at) VALUES ('store.probe', ?1, ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")?.execute(params![now_ms()],
            )
        });
        let _ = conn.busy_timeout(WRITE_BUSY);
        drop(conn);
        let r = r.map(|_| ());
        self.wrote(r)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The compliance records' clock.
    pub fn clock(&self) -> &WallClock {
        &self.inner.clock
    }

    /// Now, by [`Store::clock`].
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    fn w(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A free read connection, else the next in turn once it is free.
    fn r(&self) -> MutexGuard<'_, Connection> {
        let readers = &self.inner.readers;
        for m in readers {
            match m.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let i = self
            .inner
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % readers.len();
        readers[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Start-up recovery: a lease held by a process that is gone goes back to the queue.
    pub fn requeue_leased(&self) -> Result<usize> {
        self.recorded(|| {
            let mut conn = self.w();
            let tx = conn.transaction()?;
            // Kind by kind, through the (kind, state, …) index: a scan of every job for
            // its state was most of a start on a long history (13 ms of 28 on 300k
            // jobs).
            let kinds = job_kinds(&tx)?;
            let mut ids: Vec<i64> = Vec::new();
            let mut leased =
                tx.prepare("SELECT id FROM jobs WHERE kind = ?1 AND state = 'leased'")?;
            for kind in &kinds {
                for id in leased.query_map([kind], |r| r.get(0))? {
                    ids.push(id?);
                }
            }
            drop(leased);
            for id in &ids {
                requeue(&tx, *id, 0, None, false)?;
            }
            tx.commit()?;
            Ok(ids.len())
        })
    }

    /// Enqueues jobs, all in one transaction together with an optional cursor write and
    /// optional Stripe event ids; returns how many events were new. An event id already
    /// seen makes the whole batch a no-op for that event (dedupe).
    pub fn ingest(
        &self,
        jobs: &[NewJob<'_>],
        cursor: Option<(&str, &str)>,
        event: Option<(&str, &str, &str)>,
    ) -> Result<bool> {
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let now = now_ms();
            if let Some((id, kind, via)) = event {
                let inserted = tx.prepare_cached("INSERT OR IGNORE INTO stripe_events(id, type, received_at, via) VALUES (?1, ?2, ?3, ?4)")?.execute(params![id, kind, now, via],
                )?;
                if inserted == 0 {
                    return Ok(false);
                }
            }
            {
                // A newer version of a job still queued replaces its payload; else a new
                // job. (Two statements, not an upsert: an upsert's update part is checked
                // with ABORT, which would make the insert keep a statement journal; `OR
                // FAIL`: see [`finish_one`].)
                let mut newer = tx.prepare_cached(
                    "UPDATE OR FAIL jobs SET
                       payload = CASE WHEN ?4 >= version THEN ?3 ELSE payload END,
                       version = CASE WHEN ?4 >= version THEN ?4 ELSE version END,
                       updated_at = ?5
                     WHERE kind = ?1 AND key = ?2 AND state = 'queued'",
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT OR FAIL INTO jobs(kind, key, payload, version, state, attempts, next_attempt_at, idempotency_key, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 'queued', 0, ?5, ?1 || ':' || ?2, ?5, ?5)",
                )?;
                for job in jobs {
                    let values = params![job.kind, job.key, job.payload, job.version, now];
                    if newer.execute(values)? == 0 {
                        insert.execute(values)?;
                    }
                }
            }
            if let Some((name, value)) = cursor {
                tx.prepare_cached("INSERT INTO cursors(name, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")?.execute(params![name, value, now],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    /// Claims up to `limit` due jobs of `kind`, never two jobs for the same key at once.
    pub fn claim(&self, kind: &str, limit: usize, lease_ms: i64) -> Result<Vec<Job>> {
        self.claim_at(kind, limit, lease_ms, now_ms())
    }

    /// [`Store::claim`] at `now` (ms): what is due, and which leases ran out, by it.
    /// Committed by the writer thread, with whatever other writes arrive meanwhile.
    pub fn claim_at(&self, kind: &str, limit: usize, lease_ms: i64, now: i64) -> Result<Vec<Job>> {
        self.write_waiting(|reply| writer::GroupWrite::Claim {
            kind: kind.to_owned(),
            limit,
            lease_ms,
            now,
            with_mappings: false,
            reply,
        })
    }

    /// [`Store::claim_at`] for a task: awaits the commit, no thread blocks.
    pub async fn claim_at_async(
        &self,
        kind: &str,
        limit: usize,
        lease_ms: i64,
        now: i64,
        with_mappings: bool,
    ) -> Result<Vec<Job>> {
        self.write_awaiting(|reply| writer::GroupWrite::Claim {
            kind: kind.to_owned(),
            limit,
            lease_ms,
            now,
            with_mappings,
            reply,
        })
        .await
    }

    /// Extends the `leases` (job id, [`Job::lease`]) that still stand to `now +
    /// lease_ms`; the ids extended, ascending (a missing one was put back, ended or
    /// handed out again meanwhile).
    pub fn heartbeat_at(&self, leases: &[(i64, i64)], lease_ms: i64, now: i64) -> Result<Vec<i64>> {
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let mut held = Vec::new();
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE jobs SET lease_until = ?2, updated_at = ?3
                     WHERE id = ?1 AND state = 'leased' AND lease_no = ?4",
                )?;
                for &(id, lease) in leases {
                    if stmt.execute(params![id, now + lease_ms, now, lease])? == 1 {
                        held.push(id);
                    }
                }
            }
            tx.commit()?;
            held.sort_unstable();
            Ok(held)
        })
    }

    /// Ends a job in one transaction of its own: marks it done, stores the product's
    /// mapping (if any) and writes the audit line (if any), as [`finish_one`] does in
    /// the writer's group. False, and nothing written, when its `lease` no longer
    /// stands.
    pub fn finish_job(
        &self,
        job_id: i64,
        lease: i64,
        mapping: Option<&ItemMapping>,
        audit: Option<(&str, &str, &str, &str)>,
    ) -> Result<bool> {
        let f = Finished {
            job_id,
            lease,
            mapping: mapping.cloned(),
            audit: audit.map(|(k, e, a, m)| (k.into(), e.into(), a.into(), m.into())),
            trace_id: crate::telemetry::trace::current_id(),
        };
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let ended = finish_one(&tx, &f, now_ms())?;
            tx.commit().map(|()| ended)
        })
    }

    /// Ends jobs, committed in groups: the caller's jobs join whatever other writes
    /// are waiting for the writer thread, which commits them all in one transaction
    /// (and, only when a statement is refused, again with each caller's writes under a
    /// savepoint of their own, so one caller's refused statement does not undo the
    /// others'). Returns once the caller's jobs are committed (or refused): durability
    /// is that of [`Store::finish_job`], with one commit for many callers instead of
    /// one each. How many ended (a job whose lease no longer stands is left as it is,
    /// its mapping and audit line unwritten).
    pub fn finish_jobs(&self, jobs: Vec<Finished>) -> Result<usize> {
        if jobs.is_empty() {
            return Ok(0);
        }
        self.write_waiting(|reply| writer::GroupWrite::Finish {
            jobs,
            lingers: false,
            reply,
        })
    }

    /// [`Store::finish_jobs`] for a task: awaits the commit, no thread blocks.
    pub async fn finish_jobs_async(&self, jobs: Vec<Finished>) -> Result<usize> {
        if jobs.is_empty() {
            return Ok(0);
        }
        self.write_awaiting(|reply| writer::GroupWrite::Finish {
            jobs,
            lingers: false,
            reply,
        })
        .await
    }

    /// [`Store::finish_jobs`] handed to the writer thread now, its commit awaited apart
    /// (the returned future): a caller with other work goes on meanwhile. The writer
    /// may hold such ends a moment ([`writer::LINGER`]) for a write someone waits on (a
    /// claim, a pending create), to commit them in its transaction instead of one of
    /// their own. The jobs count as ended only once the future says so (how many).
    pub fn finish_jobs_sent(
        &self,
        jobs: Vec<Finished>,
    ) -> impl std::future::Future<Output = Result<usize>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The store is kept open until the commit is answered (its last handle
        // dropped meanwhile would end the writer thread with the ends unwritten).
        let store = self.clone();
        match jobs.is_empty() {
            true => {
                let _ = tx.send(Ok(0));
            }
            false => self.send_write(writer::GroupWrite::Finish {
                jobs,
                lingers: true,
                reply: writer::Reply::Await(tx),
            }),
        }
        async move {
            let answer = rx.await.unwrap_or_else(|_| Err(writer::writer_gone()));
            drop(store);
            answer
        }
    }

    /// Records jobs another store ended (the shared Postgres queue): their audit lines,
    /// and their mappings mirrored here, in one transaction. No job row is touched.
    pub fn record_finished(&self, jobs: &[Finished]) -> Result<()> {
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let now = now_ms();
            for f in jobs {
                if let Some(m) = &f.mapping {
                    save_mapping(&tx, m, now, Hash::Mirrored)?;
                }
                if let Some((kind, entity, actor, message)) = &f.audit {
                    tx.prepare_cached("INSERT INTO audit(at, kind, entity, actor, message, trace_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
                        .execute(params![now, kind, entity, actor, message, f.trace_id])?;
                }
            }
            tx.commit()
        })
    }

    /// Keys of `kind` whose jobs failed past their last attempt, with no later success
    /// and not queued or in flight again: what "retry failed jobs" would touch, oldest
    /// failure first.
    pub fn failed_job_keys(&self, kind: &str) -> Result<Vec<String>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT f.key FROM jobs f INDEXED BY jobs_due WHERE {FAILED_STILL} GROUP BY f.key ORDER BY MIN(f.updated_at), f.key"
        ))?;
        stmt.query_map(params![kind], |r| r.get(0))?.collect()
    }

    /// The failed jobs [`Self::requeue_failed`] would put back (one key, or all with
    /// `None`), as (key, payload), in the order they would then run; nothing changes.
    pub fn failed_jobs_to_requeue(
        &self,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Vec<(String, Option<String>)>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT key, payload FROM jobs WHERE id IN ({}) ORDER BY id",
            newest_failed()
        ))?;
        stmt.query_map(params![kind, key], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// Queued jobs of `kind` in the order workers claim them (at most `limit`), as
    /// (key, payload).
    pub fn queued_jobs(&self, kind: &str, limit: usize) -> Result<Vec<(String, Option<String>)>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT key, payload FROM jobs WHERE kind = ?1 AND state = 'queued'
             ORDER BY next_attempt_at, id LIMIT ?2",
        )?;
        stmt.query_map(params![kind, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// Puts failed jobs of `kind` (one key, or all with `None`) back in the queue with
    /// fresh attempts, due now: the newest failed job of each key is the one re-queued.
    /// Returns the keys re-queued, in one transaction.
    pub fn requeue_failed(&self, kind: &str, key: Option<&str>) -> Result<Vec<String>> {
        self.recorded(|| {
            let now = now_ms();
            let mut conn = self.w();
            let tx = conn.transaction()?;
            let keys = {
                let mut stmt = tx.prepare_cached(&format!(
                    "UPDATE jobs SET state='queued', attempts=0, next_attempt_at=?3, lease_until=NULL,
                       last_error='retried by an operator after: ' || COALESCE(last_error, '?'), updated_at=?3
                     WHERE id IN ({})
                     RETURNING key",
                    newest_failed()
                ))?;
                stmt.query_map(params![kind, key, now], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok(keys)
        })
    }

    /// Puts a job back with a delay, or marks it failed when it has no attempts left:
    /// whether it failed, `None` (and nothing changed) when its `lease` no longer
    /// stands.
    pub fn retry_later(
        &self,
        job_id: i64,
        lease: i64,
        error: &str,
        delay_ms: i64,
        max_attempts: u32,
    ) -> Result<Option<bool>> {
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let attempts: Option<u32> = tx
                .prepare_cached(HELD)?
                .query_row(params![job_id, lease], |r| r.get(0))
                .optional()?;
            let failed = match attempts {
                Some(a) if a >= max_attempts => {
                    tx.prepare_cached("UPDATE jobs SET state='failed', lease_until=NULL, last_error=?2, updated_at=?3 WHERE id=?1")?.execute(params![job_id, error, now_ms()],
                    )?;
                    true
                }
                Some(_) => {
                    requeue(&tx, job_id, delay_ms, Some(error), false)?;
                    false
                }
                None => return Ok(None),
            };
            tx.commit()?;
            Ok(Some(failed))
        })
    }

    /// A job that can never succeed as is (invalid data): kept with its reason. False,
    /// and nothing changed, when its `lease` no longer stands.
    pub fn reject(&self, job_id: i64, lease: i64, reason: &str) -> Result<bool> {
        self.reject_marking(job_id, lease, reason, None)
    }

    /// [`Self::reject`], and the mapping of `product` (when given) marked rejected with
    /// the reason, in the same transaction: only while the lease stands, and before
    /// another worker can take the product's next job (whose pending create a later
    /// write of the mapping would have wiped). A pending create is cleared: it was this
    /// job's (the lease fences every other), and refused for good (kept, it would be
    /// replayed by each later job, and a product deleted meanwhile would be written
    /// instead of never being). Its Item and SyncToken are left as they are.
    pub fn reject_marking(
        &self,
        job_id: i64,
        lease: i64,
        reason: &str,
        product: Option<&str>,
    ) -> Result<bool> {
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let now = now_ms();
            let n = tx
                .prepare_cached(
                    "UPDATE OR FAIL jobs SET state='rejected', lease_until=NULL, last_error=?2, updated_at=?3
                     WHERE id=?1 AND state='leased' AND lease_no=?4",
                )?
                .execute(params![job_id, reason, now, lease])?;
            if n != 1 {
                return Ok(false);
            }
            if let Some(pid) = product {
                let values = params![pid, reason, now];
                let marked = tx
                    .prepare_cached(
                        "UPDATE OR FAIL item_map SET status='rejected', reason=?2, synced_at=?3,
                           pending_request_id=NULL, pending_body=NULL
                         WHERE product_id=?1",
                    )?
                    .execute(values)?;
                if marked == 0 {
                    tx.prepare_cached(
                        "INSERT OR FAIL INTO item_map(product_id, status, reason, synced_at)
                         VALUES (?1, 'rejected', ?2, ?3)",
                    )?
                    .execute(values)?;
                }
            }
            tx.commit()?;
            Ok(true)
        })
    }

    /// Puts a job back for later without counting the attempt (the call was never
    /// made: e.g. an open circuit refused it). False, and nothing changed, when its
    /// `lease` no longer stands.
    pub fn defer(&self, job_id: i64, lease: i64, reason: &str, delay_ms: i64) -> Result<bool> {
        self.give_back(job_id, lease, delay_ms, Some(reason))
    }

    /// Gives a claimed job back untouched (shutdown before it started). False, and
    /// nothing changed, when its `lease` no longer stands.
    pub fn release(&self, job_id: i64, lease: i64) -> Result<bool> {
        self.give_back(job_id, lease, 0, None)
    }

    /// A held job back in the queue, its attempt not counted.
    fn give_back(
        &self,
        job_id: i64,
        lease: i64,
        delay_ms: i64,
        reason: Option<&str>,
    ) -> Result<bool> {
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let held = tx
                .prepare_cached(HELD)?
                .query_row(params![job_id, lease], |r| r.get::<_, u32>(0))
                .optional()?;
            if held.is_none() {
                return Ok(false);
            }
            requeue(&tx, job_id, delay_ms, reason, true)?;
            tx.commit().map(|()| true)
        })
    }

    pub fn cursor(&self, name: &str) -> Result<Option<String>> {
        self.r()
            .prepare_cached("SELECT value FROM cursors WHERE name=?1")?
            .query_row(params![name], |r| r.get(0))
            .optional()
    }

    pub fn set_cursor(&self, name: &str, value: &str) -> Result<()> {
        self.ingest(&[], Some((name, value)), None).map(|_| ())
    }

    pub fn mapping(&self, product_id: &str) -> Result<Option<ItemMapping>> {
        read_mapping(&self.r(), product_id)
    }

    /// How many products have a mapping row.
    pub fn mapping_count(&self) -> Result<u64> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT COALESCE(SUM(n), 0) FROM tallies WHERE name >= 'item_map:' AND name < 'item_map;'",
        )?;
        stmt.query_row([], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
    }

    /// When a product's mapping was last brought in line with QuickBooks (ms).
    pub fn mapping_synced_at(&self, product_id: &str) -> Result<Option<i64>> {
        self.r()
            .query_row(
                "SELECT synced_at FROM item_map WHERE product_id=?1",
                params![product_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
    }

    /// The product an Item is mapped to, if any.
    pub fn product_of_item(&self, item_id: &str) -> Result<Option<String>> {
        self.r()
            .prepare_cached("SELECT product_id FROM item_map WHERE item_id=?1")?
            .query_row(params![item_id], |r| r.get(0))
            .optional()
    }

    /// Records creates about to be sent (no job's: unfenced), in one transaction
    /// (the writer thread's, shared with the other writes waiting): (product id,
    /// request id, body) each. Returns once committed.
    pub fn mark_creates_pending(&self, creates: &[(String, String, String)]) -> Result<()> {
        if creates.is_empty() {
            return Ok(());
        }
        let creates = creates
            .iter()
            .map(|(p, r, b)| PendingCreate {
                product_id: p.clone(),
                request_id: r.clone(),
                body: b.clone(),
                held: None,
            })
            .collect();
        self.write_waiting(|reply| writer::GroupWrite::Pending { creates, reply })
            .map(|_| ())
    }

    /// [`Store::mark_creates_pending`] for a task (awaits the commit, no thread blocks),
    /// each create fenced by its job's lease: whether each was recorded (false: its
    /// job's lease no longer stands, and it must not be sent).
    pub async fn mark_creates_pending_async(&self, creates: &[PendingCreate]) -> Result<Vec<bool>> {
        if creates.is_empty() {
            return Ok(Vec::new());
        }
        let creates = creates.to_vec();
        self.write_awaiting(|reply| writer::GroupWrite::Pending { creates, reply })
            .await
    }

    /// Which of `held` still stand, as the last commit left them (a read: a worker
    /// asks right before it sends a write on a job's behalf).
    pub fn holding(&self, held: &[Held]) -> Result<Vec<bool>> {
        let conn = self.r();
        held.iter().map(|h| holds(&conn, *h)).collect()
    }

    /// Marks the mappings of `products` out of line (their `synced_hash` cleared: the
    /// next job writes the Item whatever was last recorded) and counts the resync
    /// ([`ItemMapping::resyncs`]), leaving the rest of each row as it is (a worker's
    /// pending create, its newer SyncToken). How many mappings there were to mark.
    pub fn mark_out_of_line(&self, products: &[String]) -> Result<usize> {
        self.recorded(|| {
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            let mut changed = 0;
            {
                // (Counted even when already out of line: a job that read it so and is
                // under way must not mark it in line at its end either.)
                let mut stmt = tx.prepare_cached(
                    "UPDATE OR FAIL item_map SET synced_hash=NULL, resyncs=resyncs+1
                     WHERE product_id=?1",
                )?;
                for pid in products {
                    changed += stmt.execute(params![pid])?;
                }
            }
            tx.commit()?;
            Ok(changed)
        })
    }

    /// Stores the Item now mirroring the product, clearing any pending create.
    pub fn save_mapping(&self, m: &ItemMapping) -> Result<()> {
        self.save_mapping_if(m, None).map(|_| ())
    }

    /// [`Self::save_mapping`] on behalf of a job mid-way: false, and nothing written,
    /// once the job's lease no longer stands (its newer holder's mapping is the one kept).
    pub fn save_mapping_held(&self, m: &ItemMapping, held: Held) -> Result<bool> {
        self.save_mapping_if(m, Some(held))
    }

    fn save_mapping_if(&self, m: &ItemMapping, held: Option<Held>) -> Result<bool> {
        self.recorded(|| {
            // (In a transaction of its own: see [`save_mapping`] on `OR FAIL`.)
            let conn = self.w();
            let tx = Begun::begin(&conn)?;
            if let Some(h) = held
                && !holds(&tx, h)?
            {
                return Ok(false);
            }
            save_mapping(&tx, m, now_ms(), Hash::UnlessResynced)?;
            tx.commit()?;
            Ok(true)
        })
    }

    pub fn audit(&self, kind: &str, entity: &str, actor: &str, message: &str) -> Result<i64> {
        self.recorded(|| {
            let conn = self.w();
            conn.prepare_cached("INSERT INTO audit(at, kind, entity, actor, message, trace_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(params![
                    now_ms(),
                    kind,
                    entity,
                    actor,
                    message,
                    crate::telemetry::trace::current_id()
                ],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Newest audit entries first, optionally only those after `after_id`.
    pub fn recent_audit(&self, limit: usize, after_id: i64) -> Result<Vec<AuditEntry>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, kind, entity, actor, message, trace_id FROM audit WHERE id > ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        stmt.query_map(params![after_id, limit as i64], audit_row)?
            .collect()
    }

    /// Audit entries matching `f`, newest first, reading about as many rows as the page
    /// holds (see [`audit_select`]).
    pub fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let (sql, args) = audit_select(f);
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&sql)?;
        stmt.query_map(rusqlite::params_from_iter(args), audit_row)?
            .collect()
    }

    /// How many audit entries match `f` over the whole trail (its page ignored).
    pub fn audit_count(&self, f: &AuditFilter) -> Result<u64> {
        // Every word asked of the text index: with nothing else asked, the index is
        // read alone, no row checked.
        let w = audit_where_as(f, false, false);
        let alone = w.sql.is_empty() && f.kinds.is_empty();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut parts = Vec::new();
        for source in &w.sources {
            let from = if alone {
                source.count_from
            } else {
                source.from
            };
            let mut sql = format!("SELECT COUNT(*) FROM {from} WHERE 1=1{}", source.sql);
            args.extend(source.args.iter().cloned());
            if !f.kinds.is_empty() {
                sql.push_str(&format!(
                    " AND a.kind IN ({})",
                    vec!["?"; f.kinds.len()].join(",")
                ));
                args.extend(f.kinds.iter().map(|k| k.clone().into()));
            }
            sql.push_str(&w.sql);
            args.extend(w.args.iter().cloned());
            parts.push(format!("({sql})"));
        }
        let sql = format!("SELECT {}", parts.join(" + "));
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&sql)?;
        stmt.query_row(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    /// Adds up to `max_rows` audit entries not yet in the text index to it, oldest
    /// first, in one write; how many. The engine calls it every few seconds, so no
    /// audit write pays for the index (text queries scan the rows not yet indexed).
    pub fn index_audit_text(&self, max_rows: usize) -> Result<usize> {
        self.recorded(|| {
            let mut conn = self.w();
            let tx = conn.transaction()?;
            let upto: i64 =
                tx.prepare_cached("SELECT upto FROM audit_indexed")?
                    .query_row([], |r| r.get(0))?;
            let (n, last): (i64, Option<i64>) = tx
                .prepare_cached(
                    "SELECT COUNT(*), MAX(id) FROM (SELECT id FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2)",
                )?
                .query_row(params![upto, max_rows as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let Some(last) = last else {
                return Ok(0);
            };
            // Keyed by the id negated (newest first is the index's ascending order),
            // and inserted in that order: FTS5 flushes its pending segment whenever a
            // rowid is not above the last one, so ascending ids would make a segment each.
            tx.prepare_cached(
                "INSERT INTO audit_search(rowid, kind, entity, actor, message)
                 SELECT -id, kind, entity, actor, message FROM audit
                 WHERE id > ?1 AND id <= ?2 ORDER BY id DESC",
            )?
            .execute(params![upto, last])?;
            tx.prepare_cached("UPDATE audit_indexed SET upto = ?1")?
                .execute(params![last])?;
            tx.commit()?;
            Ok(n as usize)
        })
    }

    /// Starts folding the whole audit text index into one segment, when it is worth
    /// it: four segments or more, and the pages outside the largest a quarter of its
    /// or more. Then [`Self::merge_audit_text`] goes on with it a step at a time, and
    /// so do the index's own merges as entries are fed to it (FTS5's incremental
    /// optimize: `merge` with a negative count starts it). Whether it started.
    ///
    /// One segment a level is what merging by level leaves; a search reads every
    /// segment's doclist of each trigram, so that a rare word's first page on a
    /// 1M-entry trail took 2.4 ms over 8 segments and 0.8 ms over one. The size rule
    /// keeps the rewriting proportional to what was added (each entry rewritten a few
    /// times at most): a trickle of small segments, which merging by level keeps few,
    /// never sets off a rewrite of the whole index.
    pub fn optimize_audit_text(&self, pages: u32) -> Result<bool> {
        self.recorded(|| {
            let conn = self.w();
            // Each segment's leaf pages: FTS5 numbers them from its id (`segid << 37`
            // + page; a merge trims a segment's first pages as it goes). Its rows in
            // `_idx` are no measure: a page that only goes on with one trigram's list
            // has none, and most of a large segment's pages do. Read by seeks alone
            // (the segments one after the other, each edge apart): a DISTINCT over
            // `_idx` and a max() - min() over a segment's pages read every one of
            // them, 160 ms of an idle engine's every 2 s on a 1M-entry trail.
            let sizes: Vec<i64> = conn
                .prepare_cached(
                    "WITH RECURSIVE seg(id) AS (
                       SELECT (SELECT min(segid) FROM audit_search_idx)
                       UNION ALL
                       SELECT (SELECT min(segid) FROM audit_search_idx WHERE segid > seg.id)
                       FROM seg WHERE seg.id IS NOT NULL)
                     SELECT COALESCE(
                       (SELECT max(id) FROM audit_search_data
                        WHERE id BETWEEN (seg.id << 37) AND (seg.id << 37) + 2147483647)
                       - (SELECT min(id) FROM audit_search_data
                          WHERE id BETWEEN (seg.id << 37) AND (seg.id << 37) + 2147483647)
                       + 1, 0)
                     FROM seg WHERE seg.id IS NOT NULL",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_>>()?;
            let largest = sizes.iter().copied().max().unwrap_or(0);
            let others: i64 = sizes.iter().sum::<i64>() - largest;
            if sizes.len() < 4 || others * 4 < largest {
                return Ok(false);
            }
            fts_merge(&conn, -i64::from(pages.max(1)))?;
            Ok(true)
        })
    }

    /// Merges the audit text index's segments a step (about `pages` pages written) where
    /// a level holds two or more, or an optimize begun ([`Self::optimize_audit_text`]);
    /// whether there was work (an idle indexer calls it until there is none: the index
    /// then holds at most one segment a level).
    pub fn merge_audit_text(&self, pages: u32) -> Result<bool> {
        self.recorded(|| {
            let conn = self.w();
            let before = conn.total_changes();
            fts_merge(&conn, i64::from(pages))?;
            // FTS5's own signal: fewer than two rows changed means nothing was merged.
            Ok(conn.total_changes() - before >= 2)
        })
    }

    /// Removes audit entries older than `before_ms`; how many.
    pub fn purge_audit_before(&self, before_ms: i64) -> Result<usize> {
        self.recorded(|| {
            let mut conn = self.w();
            let tx = conn.transaction()?;
            let n = tx
                .prepare_cached("DELETE FROM audit WHERE at < ?1")?
                .execute(params![before_ms])?;
            // The next entries are numbered after the highest id left (from 1 again when
            // the trail is emptied; below `upto` when the newest went, as with a clock
            // stepped back): none of them is indexed.
            tx.prepare_cached(
                "UPDATE audit_indexed SET upto = min(upto, COALESCE((SELECT MAX(id) FROM audit), 0))",
            )?
            .execute([])?;
            // The time spans of the blocks of ids wholly gone go with them (those of a
            // block partly purged still cover what is left: wider, never narrower).
            tx.prepare_cached(
                "DELETE FROM audit_span WHERE NOT EXISTS (SELECT 1 FROM audit)
                   OR block < (SELECT MIN(id) FROM audit) >> 10",
            )?
            .execute([])?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// Jobs of `kind` not done: queued, leased (claimed, perhaps not yet started), or
    /// failed with no later success for their key (an operator may retry them).
    pub fn unfinished(&self, kind: &str) -> Result<u64> {
        // Queued and leased from the counters; the failed ones through `jobs_due` (the
        // few failed rows): never a count over all of a kind's jobs.
        let conn = self.r();
        let failed: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs j INDEXED BY jobs_due WHERE j.kind = ?1 AND j.state = 'failed'
                   AND NOT EXISTS (SELECT 1 FROM jobs d WHERE d.kind = j.kind AND d.key = j.key
                                     AND d.id > j.id AND d.state = 'done')",
            )?
            .query_row(params![kind], |r| r.get(0))?;
        Ok(tally(&conn, &format!("jobs:{kind}:queued"))?
            + tally(&conn, &format!("jobs:{kind}:leased"))?
            + failed as u64)
    }

    /// When a job of `kind` can next be claimed (ms since the epoch), if any: the next
    /// queued job falling due, or the next lease running out (a hung worker's). Reads
    /// only (the `jobs_due` index, and the few leased rows): an idle engine asks this
    /// instead of claiming, and takes no write lock.
    pub fn next_claimable(&self, kind: &str) -> Result<Option<i64>> {
        self.r()
            .prepare_cached(
                "SELECT MIN(at) FROM (
                   SELECT MIN(next_attempt_at) AS at FROM jobs WHERE kind = ?1 AND state = 'queued'
                   UNION ALL
                   SELECT MIN(lease_until) FROM jobs WHERE kind = ?1 AND state = 'leased')",
            )?
            .query_row(params![kind], |r| r.get(0))
    }

    /// Jobs of `kind` waiting to be claimed.
    pub fn queued(&self, kind: &str) -> Result<u64> {
        tally(&self.r(), &format!("jobs:{kind}:queued"))
    }

    /// The queue's counts for `kind`, from the counters kept with each write.
    pub fn queue_counts(&self, kind: &str) -> Result<queue::QueueCounts> {
        let conn = self.r();
        let (failed, oldest): (i64, Option<i64>) = conn
            .prepare_cached(&format!(
                "SELECT (SELECT COUNT(DISTINCT f.key) FROM jobs f INDEXED BY jobs_due WHERE {FAILED_STILL}),
                        (SELECT MIN(created_at) FROM jobs WHERE kind = ?1 AND state = 'queued')"
            ))?
            .query_row(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(queue::QueueCounts {
            keys_seen: tally(&conn, &format!("keys:{kind}"))?,
            queued: tally(&conn, &format!("jobs:{kind}:queued"))?,
            in_flight: tally(&conn, &format!("jobs:{kind}:leased"))?,
            failed: failed as u64,
            oldest_queued_ms: oldest,
        })
    }

    /// The catalog's counts, from counters kept with each write (no table is counted):
    /// only the failed keys and the oldest queued job are read, each through an index
    /// over the few rows in those states.
    pub fn catalog_counts(&self) -> Result<CatalogCounts> {
        let q = self.queue_counts(JOB_KIND)?;
        let conn = self.r();
        Ok(CatalogCounts {
            products_seen: q.keys_seen,
            synced: tally(&conn, "item_map:synced")?,
            queued: q.queued,
            in_flight: q.in_flight,
            failed: q.failed,
            rejected: tally(&conn, "item_map:rejected")?,
            oldest_queued_ms: q.oldest_queued_ms,
        })
    }

    /// Removes jobs that finished (done) before `before_ms`, and the failed jobs a done
    /// one among them had superseded; how many. In batches, so the writer is never held
    /// long. Nothing unfinished goes, and no count changes: the keys ever seen, the
    /// mappings and the audit trail stay. The newest job row stays too: SQLite gives
    /// a new row the id after the largest one, so with it kept an id is never given
    /// twice (a new job on a compacted id would start its leases at 1 again, and a
    /// worker stalled past a lease on the old one would end it).
    pub fn compact_jobs(&self, before_ms: i64) -> Result<usize> {
        let mut removed = 0;
        loop {
            let n = self.recorded(|| {
                let mut conn = self.w();
                let tx = conn.transaction()?;
                // The failed rows kind by kind, through `jobs_due`: with no index by
                // state alone, a scan of every job (schema 16 took away the key index
                // that held the state, which the scan had read instead of the table).
                let mut n = 0;
                for kind in job_kinds(&tx)? {
                    n += tx
                        .prepare_cached(
                            "DELETE FROM jobs WHERE id IN (SELECT f.id FROM jobs f INDEXED BY jobs_due
                               WHERE f.kind = ?2 AND f.state = 'failed'
                               AND EXISTS (SELECT 1 FROM jobs d WHERE d.kind = f.kind AND d.key = f.key
                                             AND d.id > f.id AND d.state = 'done' AND d.updated_at < ?1)
                               LIMIT 5000)",
                        )?
                        .execute(params![before_ms, kind])?;
                }
                n += tx
                    .prepare_cached(
                        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs
                           WHERE state = 'done' AND updated_at < ?1
                             AND id < (SELECT MAX(id) FROM jobs) LIMIT 5000)",
                    )?
                    .execute(params![before_ms])?;
                tx.commit()?;
                Ok(n)
            })?;
            removed += n;
            if n == 0 {
                return Ok(removed);
            }
        }
    }

    pub fn oauth(&self) -> Result<Option<OAuthState>> {
        self.w()
            .prepare_cached("SELECT bootstrap_hash, refresh_token, access_token, access_expires_at FROM oauth WHERE id=1")?.query_row([],
                |r| {
                    Ok(OAuthState {
                        bootstrap_hash: r.get(0)?,
                        refresh_token: r.get(1)?,
                        access_token: r.get(2)?,
                        access_expires_at_ms: r.get(3)?,
                    })
                },
            )
            .optional()
    }

    /// A downstream's rate limiter as this process leaves it (written every second and
    /// on each 429; see `limiter_state`).
    pub fn save_limiter_state(&self, s: &LimiterState) -> Result<()> {
        self.recorded(|| {
            self.w()
                .prepare_cached(
                    "INSERT INTO limiter_state(service, at, recent, paused_until, factor, ceiling)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(service) DO UPDATE SET at=excluded.at, recent=excluded.recent,
                   paused_until=excluded.paused_until, factor=excluded.factor,
                   ceiling=excluded.ceiling",
                )?
                .execute(params![
                    s.service,
                    s.at_ms,
                    s.recent,
                    s.paused_until_ms,
                    s.factor,
                    s.ceiling_per_min
                ])?;
            Ok(())
        })
    }

    /// Keeps `value` (JSON) under `key` for the next process (see `engine_state`).
    pub fn save_engine_state(&self, key: &str, value: &str) -> Result<()> {
        let at = self.now_ms();
        self.recorded(|| {
            self.w().execute(
                "INSERT INTO engine_state(key, at, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET at=excluded.at, value=excluded.value",
                params![key, at, value],
            )?;
            Ok(())
        })
    }

    /// One flush of the telemetry history, in one transaction: new series points
    /// (replacing a point of the same series and second, as a block finished since
    /// its last flush), points that start outside `keep` deleted (older than the
    /// hour kept, or ahead of now: written by a process whose clock ran ahead, they
    /// would anchor every restored hour in the future), and the `engine_state`
    /// values that changed.
    pub fn save_history(
        &self,
        points: &[SeriesPoint],
        keep: std::ops::RangeInclusive<i64>,
        state: &[(String, String)],
    ) -> Result<()> {
        let at = self.now_ms();
        self.recorded(|| {
            let mut conn = self.w();
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO series_points(at, series, secs, value)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for p in points.iter().filter(|p| keep.contains(&p.at_s)) {
                    insert.execute(params![p.at_s, p.series, p.secs, p.value])?;
                }
                tx.prepare_cached("DELETE FROM series_points WHERE at < ?1 OR at > ?2")?
                    .execute([keep.start(), keep.end()])?;
                let mut put = tx.prepare_cached(
                    "INSERT INTO engine_state(key, at, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET at=excluded.at, value=excluded.value",
                )?;
                for (key, value) in state {
                    put.execute(params![key, at, value])?;
                }
            }
            tx.commit()
        })
    }

    /// The series points a previous process kept from `since_s` on, oldest first.
    pub fn series_points(&self, since_s: i64) -> Result<Vec<SeriesPoint>> {
        self.r()
            .prepare_cached(
                "SELECT at, series, secs, value FROM series_points WHERE at >= ?1
                 ORDER BY at, series",
            )?
            .query_map([since_s], |r| {
                Ok(SeriesPoint {
                    at_s: r.get(0)?,
                    series: r.get(1)?,
                    secs: r.get(2)?,
                    value: r.get(3)?,
                })
            })?
            .collect()
    }

    /// What a previous process kept under `key`, if anything.
    pub fn engine_state(&self, key: &str) -> Result<Option<String>> {
        self.r()
            .query_row(
                "SELECT value FROM engine_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
    }

    /// The limiter a previous process left for `service`, if any.
    pub fn limiter_state(&self, service: &str) -> Result<Option<LimiterState>> {
        self.r()
            .prepare_cached(
                "SELECT service, at, recent, paused_until, factor, ceiling FROM limiter_state
                 WHERE service = ?1",
            )?
            .query_row([service], |r| {
                Ok(LimiterState {
                    service: r.get(0)?,
                    at_ms: r.get(1)?,
                    recent: r.get(2)?,
                    paused_until_ms: r.get(3)?,
                    factor: r.get(4)?,
                    ceiling_per_min: r.get(5)?,
                })
            })
            .optional()
    }

    /// Builds a long history for `syncctl bench history`: `jobs` catalog jobs finished
    /// over the last day with their synced mappings, and `audit` audit rows of several kinds spread over
    /// the 30 days before `now_ms`, oldest first. Written in large transactions.
    pub fn seed_history(&self, jobs: usize, audit: usize, now_ms: i64) -> Result<()> {
        const KINDS: [&str; 10] = [
            "item", "sync", "job", "sync", "circuit", "job", "sync", "job", "operator", "sync",
        ];
        let mut conn = self.w();
        for chunk in (0..jobs).collect::<Vec<_>>().chunks(50_000) {
            let tx = conn.transaction()?;
            {
                let mut job = tx.prepare_cached(
                    "INSERT INTO jobs(kind, key, payload, version, state, attempts, next_attempt_at,
                                      idempotency_key, created_at, updated_at)
                     VALUES ('catalog.product', ?1, NULL, 1, 'done', 1, ?2, 'catalog.product:' || ?1, ?2, ?2)",
                )?;
                let mut map = tx.prepare_cached(
                    "INSERT INTO item_map(product_id, item_id, sync_token, item_name, synced_hash,
                                          source_updated, status, synced_at)
                     VALUES (?1, ?2, '0', ?1, 'h', ?3, 'synced', ?3)",
                )?;
                for &i in chunk {
                    let key = format!("prod_{i}");
                    // Finished over the last day: within any retention, so they stay.
                    let at = now_ms - 86_400_000 + i as i64;
                    job.execute(params![key, at])?;
                    map.execute(params![key, format!("{}", i + 1), at])?;
                }
            }
            tx.commit()?;
        }
        let span = 30 * 86_400_000i64;
        for chunk in (0..audit).collect::<Vec<_>>().chunks(100_000) {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO audit(at, kind, entity, actor, message) VALUES (?1, ?2, ?3, 'engine', ?4)",
                )?;
                for &i in chunk {
                    let at = now_ms - span + (i as i64 * span) / audit.max(1) as i64;
                    let kind = KINDS[i % KINDS.len()];
                    let entity = format!("prod_{}", i % jobs.max(1));
                    let message = match kind {
                        "item" => format!("created Item {}", i + 1),
                        "circuit" => "CLOSED → OPEN".to_owned(),
                        "operator" => "pause catalog: paused catalog pipeline".to_owned(),
                        _ => format!("step {i} of the history"),
                    };
                    insert.execute(params![at, kind, entity, message])?;
                }
            }
            tx.commit()?;
        }
        drop(conn);
        while self.index_audit_text(100_000)? > 0 {}
        // As an engine that ran over this history keeps its index: merged whole (see
        // `optimize_audit_text`; an idle engine does it a step at a time).
        if self.optimize_audit_text(10_000)? {
            while self.merge_audit_text(10_000)? {}
        }
        Ok(())
    }

    /// Persists rotated tokens; called before the new access token is used.
    pub fn save_oauth(&self, s: &OAuthState) -> Result<()> {
        self.recorded(|| {
            self.w().prepare_cached("INSERT INTO oauth(id, bootstrap_hash, refresh_token, access_token, access_expires_at, updated_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET bootstrap_hash=excluded.bootstrap_hash,
                   refresh_token=excluded.refresh_token, access_token=excluded.access_token,
                   access_expires_at=excluded.access_expires_at, updated_at=excluded.updated_at")?.execute(params![
                    s.bootstrap_hash,
                    s.refresh_token,
                    s.access_token,
                    s.access_expires_at_ms,
                    now_ms()
                ],
            )?;
            Ok(())
        })
    }
}

/// Puts a job back in the queue. When a newer job for the same key was queued in the
/// meantime, the two merge: the queued one keeps the newest payload and this one ends.
fn requeue(
    tx: &Connection,
    job_id: i64,
    delay_ms: i64,
    error: Option<&str>,
    refund_attempt: bool,
) -> Result<()> {
    let now = now_ms();
    let Some((kind, key, payload, version)) = tx
        .prepare_cached("SELECT kind, key, payload, version FROM jobs WHERE id=?1")?
        .query_row(params![job_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?
    else {
        return Ok(());
    };
    let merged = tx
        .prepare_cached(
            "UPDATE jobs SET
           payload = CASE WHEN ?4 > version THEN ?3 ELSE payload END,
           version = MAX(version, ?4), updated_at = ?5
         WHERE kind=?1 AND key=?2 AND state='queued' AND id != ?6",
        )?
        .execute(params![kind, key, payload, version, now, job_id])?;
    if merged > 0 {
        tx.prepare_cached("UPDATE jobs SET state='done', lease_until=NULL, last_error='merged into a newer job', updated_at=?2 WHERE id=?1")?.execute(params![job_id, now],
        )?;
    } else {
        tx.prepare_cached(
            "UPDATE jobs SET state='queued', lease_until=NULL, next_attempt_at=?2,
               last_error=COALESCE(?3, last_error),
               attempts = CASE WHEN ?4 THEN MAX(attempts-1, 0) ELSE attempts END, updated_at=?5
             WHERE id=?1",
        )?
        .execute(params![job_id, now + delay_ms, error, refund_attempt, now])?;
    }
    Ok(())
}

/// A transaction begun and committed by statements prepared once, for the per-item
/// writes (`Connection::transaction` parses its BEGIN and its COMMIT again each time:
/// in a sync by single calls, 93 % of the statements SQLite prepared). Rolled back if
/// dropped uncommitted (a COMMIT refused included).
#[must_use = "dropped, it rolls back"]
pub(super) struct Begun<'c> {
    conn: &'c Connection,
}

impl<'c> Begun<'c> {
    pub(super) fn begin(conn: &'c Connection) -> Result<Self> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(Self { conn })
    }

    pub(super) fn commit(self) -> Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for Begun<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Begun<'_> {
    fn drop(&mut self) {
        // Still open: dropped before its COMMIT, or the COMMIT refused. (A failure that
        // ended it already, a full disk or no memory, left nothing to roll back.)
        if !self.conn.is_autocommit() {
            let _ = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
        }
    }
}

/// One finished job's writes (see [`Store::finish_jobs`]), inside the writer's
/// transaction (or a savepoint of it).
///
/// The per-item statements of the writer, of ingest and of [`save_mapping`] are `OR
/// FAIL`, and neither upsert a NOT NULL column nor fire a trigger that may fail with
/// ABORT (schema 17; all but the audit line's insert, whose span's block is an INTEGER
/// PRIMARY KEY): such a statement keeps a statement journal, a copy of every page it touches first,
/// so that it can be undone alone inside its transaction (8 % of a batched sync's
/// CPU). Each runs inside a transaction or savepoint that is rolled back whole on any
/// error, so a failing statement's partial change never stays. (A statement with no
/// journal that fails for want of disk or memory ends the whole transaction: the
/// writer's `one_by_one` then answers every write of the group with the error.)
///
/// False, and nothing written, when the job's lease no longer stands (it ran out and
/// the job was queued or handed out again: the newer holder's end is the one that
/// counts, and its mapping the one kept).
fn finish_one(conn: &Connection, f: &Finished, now: i64) -> Result<bool> {
    let ended = conn
        .prepare_cached(
            "UPDATE OR FAIL jobs SET state='done', lease_until=NULL, last_error=NULL, updated_at=?2
             WHERE id=?1 AND state='leased' AND lease_no=?3",
        )?
        .execute(params![f.job_id, now, f.lease])?;
    if ended == 0 {
        return Ok(false);
    }
    if let Some(m) = &f.mapping {
        save_mapping(conn, m, now, Hash::UnlessResynced)?;
    }
    if let Some((kind, entity, actor, message)) = &f.audit {
        conn.prepare_cached("INSERT OR FAIL INTO audit(at, kind, entity, actor, message, trace_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
            .execute(params![now, kind, entity, actor, message, f.trace_id])?;
    }
    Ok(true)
}

/// How a saved mapping's hash is written.
#[derive(Clone, Copy, PartialEq)]
enum Hash {
    /// As given, unless the product was resynced since the mapping was read
    /// ([`ItemMapping::resyncs`]): then left out of line.
    UnlessResynced,
    /// As given: a mirror of what another store (the shared queue) decided.
    Mirrored,
}

/// Writes a mapping (an update of the product's row, else a new row), clearing any
/// pending create. Not an upsert: its update part would be checked with ABORT and keep
/// a statement journal. `OR FAIL` (see [`finish_one`]): call it in a transaction.
fn save_mapping(conn: &Connection, m: &ItemMapping, now: i64, hash: Hash) -> Result<()> {
    // (A mirror's count is the other store's, never this one's: matched to itself.)
    let read = match hash {
        Hash::UnlessResynced => Some(m.resyncs),
        Hash::Mirrored => None,
    };
    let values = params![
        m.product_id,
        m.item_id,
        m.sync_token,
        m.item_name,
        m.synced_hash,
        m.source_updated,
        m.status,
        m.reason,
        now,
        read
    ];
    let updated = conn
        .prepare_cached(
            "UPDATE OR FAIL item_map SET item_id=?2, sync_token=?3, item_name=?4,
               synced_hash=CASE WHEN resyncs = coalesce(?10, resyncs) THEN ?5 END,
               source_updated=?6, pending_request_id=NULL, pending_body=NULL, status=?7,
               reason=?8, synced_at=?9
             WHERE product_id=?1",
        )?
        .execute(values)?;
    if updated == 0 {
        // (No row: never resynced.)
        conn.prepare_cached(
            "INSERT OR FAIL INTO item_map(product_id, item_id, sync_token, item_name, synced_hash,
                                          source_updated, pending_request_id, pending_body, status,
                                          reason, synced_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL, ?7, ?8, ?9)",
        )?
        .execute(&values[..9])?;
    }
    Ok(())
}

/// FTS5's `merge` of the audit text index: about `pages` pages written, going on with
/// a merge or fold under way; a negative count starts folding the whole index.
fn fts_merge(conn: &Connection, pages: i64) -> Result<()> {
    conn.prepare_cached("INSERT INTO audit_search(audit_search, rank) VALUES ('merge', ?1)")?
        .execute(params![pages])?;
    Ok(())
}

/// A product's mapping as `conn` sees it.
fn read_mapping(conn: &Connection, product_id: &str) -> Result<Option<ItemMapping>> {
    conn.prepare_cached(
        "SELECT product_id, item_id, sync_token, item_name, synced_hash, source_updated,
                pending_request_id, pending_body, status, reason, resyncs
         FROM item_map WHERE product_id=?1",
    )?
    .query_row(params![product_id], row_to_mapping)
    .optional()
}

fn row_to_mapping(r: &rusqlite::Row<'_>) -> Result<ItemMapping> {
    Ok(ItemMapping {
        product_id: r.get(0)?,
        item_id: r.get(1)?,
        sync_token: r.get(2)?,
        item_name: r.get(3)?,
        synced_hash: r.get(4)?,
        source_updated: r.get(5)?,
        pending_request_id: r.get(6)?,
        pending_body: r.get(7)?,
        status: r.get(8)?,
        reason: r.get(9)?,
        resyncs: r.get(10)?,
    })
}

/// The jobs a claim takes: up to `?3` due jobs of kind `?1` at `?2`, never of a key
/// already leased (read first, then leased one by one by [`LEASE`]: a `LIMIT` of a
/// bound value in the update itself would make it keep a statement journal, see
/// [`finish_one`]).
const CLAIMABLE: &str = "SELECT q.id, q.kind, q.key, q.payload, q.attempts, q.idempotency_key, q.lease_no FROM jobs q
       WHERE q.kind = ?1 AND q.state = 'queued' AND q.next_attempt_at <= ?2
         AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.kind = q.kind AND l.key = q.key AND l.state = 'leased')
       ORDER BY q.next_attempt_at, q.id LIMIT ?3";

/// A claimed job leased until `?3` at `?2`, its lease numbered on. (`OR FAIL`: see
/// [`finish_one`].) The job is read by [`CLAIMABLE`], not returned here: SQLite
/// gathers a `RETURNING` clause's rows in an ephemeral b-tree, a temporary database
/// opened and closed again by each lease (1 % of a batched sync's CPU).
const LEASE: &str = "UPDATE OR FAIL jobs SET state='leased', lease_until=?3, attempts=attempts+1,
       lease_no=lease_no+1, updated_at=?2
     WHERE id = ?1 AND state = 'queued'";

/// Whether lease `?2` of job `?1` still stands.
const HELD: &str = "SELECT attempts FROM jobs WHERE id = ?1 AND state = 'leased' AND lease_no = ?2";

/// Whether `held`'s lease still stands, as `conn` (in its transaction) sees it.
fn holds(conn: &Connection, held: Held) -> Result<bool> {
    Ok(conn
        .prepare_cached(HELD)?
        .query_row(params![held.job_id, held.lease], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Read connections in the pool.
const READERS: usize = 4;

/// Prepared statements each connection keeps (the store has a few dozen).
const STATEMENTS_CACHED: usize = 128;

/// Pages written to the WAL between two automatic checkpoints (32 MiB at 4 KiB pages).
const WAL_CHECKPOINT_PAGES: i64 = 8000;

/// How long a statement waits for a lock another connection holds.
const WRITE_BUSY: std::time::Duration = std::time::Duration::from_secs(10);

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(WRITE_BUSY)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode survives a process kill; only power loss can drop the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL is folded into the database every WAL_CHECKPOINT_PAGES pages written,
    // not SQLite's 1,000: a checkpoint copies each page once however often it was
    // written since the last, and the store's hot pages (the queue's, the tallies')
    // are written by nearly every commit.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Plans chosen without looking at bound values (as at a statement's first
    // preparation, so no plan changes). Without this, SQLite re-prepares a cached
    // statement whenever a new value is bound to its `LIMIT ?` (the claim's limit
    // changes from one claim to the next): a third of the claim's CPU with single calls.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // Text folded as the trigram index folds it (`protocol::casefold`; SQLite's own
    // `lower()` folds ASCII only), for the entries not yet indexed.
    conn.create_scalar_function(
        "fold",
        1,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8
            | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(ctx.get_raw(0).as_str().ok().map(fold)),
    )?;
    Ok(())
}

const AUDIT_COLUMNS: &str = "a.id, a.at, a.kind, a.entity, a.actor, a.message, a.trace_id";

/// How to read the audit rows an [`AuditFilter`] selects, besides its types.
struct AuditWhere {
    /// Where the rows are read from: one source, or with text the trigram index up to
    /// what it holds and a scan of the rows after that.
    sources: Vec<AuditSource>,
    /// ` AND …` conditions on `a`, with their arguments.
    sql: String,
    args: Vec<rusqlite::types::Value>,
}

/// One way of reading audit rows `a`.
struct AuditSource {
    /// The rows read: `audit a`, or the trigram index joined to it.
    from: &'static str,
    /// What a count reads when nothing but this source's own conditions is asked:
    /// the index alone (what it holds is what `audit` holds), else as `from`.
    count_from: &'static str,
    /// The order that reads it newest first.
    newest_first: &'static str,
    /// ` AND …` conditions this source adds (the page's among them), with their arguments.
    sql: String,
    args: Vec<rusqlite::types::Value>,
}

/// An id every audit entry stamped at or after `?` (ms) is at or above: the first id
/// of the first block (schema 15's `audit_span`) holding one stamped that late, else
/// the last id there is. One pass over the blocks (a thousandth of the trail),
/// stopping at the first.
const ID_FROM: &str =
    "coalesce((SELECT MIN(block) FROM audit_span WHERE max_at >= ?) << 10, 9223372036854775807)";

/// An id every audit entry stamped before `?` (ms) is below: past the last id of the
/// last block holding one stamped that early, else below any id.
const ID_BELOW: &str = "(coalesce(((SELECT MAX(block) FROM audit_span WHERE min_at < ?) << 10) | 1023, -9223372036854775807) + 1)";

/// The audit trail read block by block of schema 15's `audit_span` (newest first:
/// `b.block DESC, a.id DESC`).
const BY_BLOCK: &str =
    "audit_span b CROSS JOIN audit a ON a.id BETWEEN (b.block << 10) AND ((b.block << 10) | 1023)";

/// A bound on the ids read: an SQL expression, with its argument if it takes one.
type IdBound = (&'static str, Option<rusqlite::types::Value>);

impl AuditSource {
    /// Reads only rows holding each of `words` (case-insensitive), checked row by row.
    fn check_words(&mut self, words: &[&str]) {
        for w in words {
            self.sql
                .push_str(&format!(" AND instr({AUDIT_TEXT}, ?) > 0"));
            self.args.push(fold(w).into());
        }
    }

    /// Reads only ids at or above every bound of `from` and below every bound of
    /// `below`: one condition a side (of two on the rowid, SQLite seeks to one and
    /// checks the other row by row), on the id as this source holds it (the text
    /// index: negated, which FTS5 only takes as a plain `rowid` bound).
    fn ids_between(&mut self, from: &[IdBound], below: &[IdBound]) {
        let negated = self.from.starts_with("audit_search");
        for (bounds, op, most) in [(from, ">=", "max"), (below, "<", "min")] {
            let exprs: Vec<&str> = bounds.iter().map(|(e, _)| *e).collect();
            let bound = match exprs.len() {
                0 => continue,
                1 => exprs[0].to_owned(),
                _ => format!("{most}({})", exprs.join(", ")),
            };
            self.sql.push_str(&match (negated, op) {
                (false, _) => format!(" AND a.id {op} {bound}"),
                (true, ">=") => format!(" AND audit_search.rowid <= -({bound})"),
                (true, _) => format!(" AND audit_search.rowid > -({bound})"),
            });
            self.args
                .extend(bounds.iter().filter_map(|(_, v)| v.clone()));
        }
    }
}

/// What the console shows of an entry, folded as the text index folds it, for a word's
/// plain search.
const AUDIT_TEXT: &str = "fold(a.kind || ' ' || a.entity || ' ' || a.actor || ' ' || a.message)";

/// The conditions of `f` other than its types (and, unless `paged`, its page).
fn audit_where(f: &AuditFilter, paged: bool) -> AuditWhere {
    audit_where_as(f, paged, true)
}

/// As [`audit_where`]; `parts_alone`: a rare id part is asked of the text index alone
/// (see [`text_index`]).
fn audit_where_as(f: &AuditFilter, paged: bool, parts_alone: bool) -> AuditWhere {
    let before = f.before_id.filter(|_| paged);
    let mut sql = String::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(e) = &f.entity {
        sql.push_str(" AND a.entity = ?");
        args.push(e.clone().into());
    }
    // Times are checked on each row read (`+`: not through an index, whose matches
    // would have to be sorted by id), and the rows read are bounded by the ids they
    // imply (schema 15): a time range reads its own rows, not the trail's newer ones.
    if let Some(t) = f.since_ms {
        sql.push_str(" AND +a.at >= ?");
        args.push(t.into());
    }
    if let Some(t) = f.until_ms {
        sql.push_str(" AND +a.at < ?");
        args.push(t.into());
    }
    // The ids read: below the page's start and the time range's end, above the time
    // range's start (`IdBound`s, one a side).
    let mut below: Vec<IdBound> = Vec::new();
    if let Some(id) = before {
        below.push(("?", Some(id.into())));
    }
    if let Some(t) = f.until_ms {
        below.push((ID_BELOW, Some(t.into())));
    }
    let from: Vec<IdBound> = f
        .since_ms
        .map(|t| (ID_FROM, Some(t.into())))
        .into_iter()
        .collect();
    let mut long = Vec::new();
    // Each word, case-insensitive, anywhere in what the console shows of an entry: the
    // trigram index finds words of three characters or more; shorter ones are checked
    // on the rows it finds (or on every row, when all are short).
    for w in f.text.iter().flat_map(|t| t.split_whitespace()) {
        if w.chars().count() >= 3 {
            long.push(w);
        } else {
            sql.push_str(&format!(" AND instr({AUDIT_TEXT}, ?) > 0"));
            args.push(fold(w).into());
        }
    }
    // The trail itself, newest first.
    let scan = || AuditSource {
        from: "audit a",
        count_from: "audit a",
        newest_first: "a.id DESC",
        sql: String::new(),
        args: Vec::new(),
    };
    let timed = f.since_ms.is_some() || f.until_ms.is_some();
    let sources = if long.is_empty() && timed {
        // By time (and type or entity): block by block of `audit_span`, newest first,
        // reading the entries of the blocks whose times reach into the range only.
        // (One id range from the first such block to the last would also hold every
        // block in between: an entry stamped far off, as by a clock unset at a boot,
        // would stretch it over the trail.)
        let mut blocks = AuditSource {
            from: BY_BLOCK,
            count_from: BY_BLOCK,
            newest_first: "b.block DESC, a.id DESC",
            sql: String::new(),
            args: Vec::new(),
        };
        if let Some(t) = f.since_ms {
            blocks.sql.push_str(" AND b.max_at >= ?");
            blocks.args.push(t.into());
        }
        if let Some(t) = f.until_ms {
            blocks.sql.push_str(" AND b.min_at < ?");
            blocks.args.push(t.into());
        }
        if let Some(id) = before {
            // The page's start: its block and older ones, its older entries.
            blocks
                .sql
                .push_str(" AND b.block <= (? >> 10) AND a.id < ?");
            blocks.args.extend([id.into(), id.into()]);
        }
        vec![blocks]
    } else if long.is_empty() {
        let mut all = scan();
        all.ids_between(&[], &below);
        vec![all]
    } else {
        // The trigram index drives the read (in its rowid order) over what it holds;
        // the entries written since it was last fed (a few seconds' worth, or all of
        // them while a rebuilt index catches up) are scanned.
        let mut tail = scan();
        tail.check_words(&long);
        let unindexed = [("(SELECT upto FROM audit_indexed) + 1", None)];
        tail.ids_between(&[&unindexed[..], &from].concat(), &below);
        // The index is keyed by the id negated: newest first is its ascending order,
        // from the newest of what it holds (up to `upto`), the page's start and the
        // time range's end, up to the time range's start.
        let mut indexed = text_index(&long, parts_alone);
        let held = [("(SELECT upto FROM audit_indexed) + 1", None)];
        indexed.ids_between(&from, &[&held[..], &below].concat());
        vec![indexed, tail]
    };
    AuditWhere { sources, sql, args }
}

/// The trigram index's read of the entries holding every word of `long` (three
/// characters or more), joined to their rows, its id bounds still to add.
fn text_index(long: &[&str], parts_alone: bool) -> AuditSource {
    let phrase = |w: &str| format!("\"{}\"", w.replace('"', "\"\""));
    // An id's own part (`299990` of `prod_299990`, `Va5I9xQlEj6dmx` of a Stripe id):
    // its prefix's trigrams are in every entry of the kind, and FTS5 reads a phrase's
    // rarest trigram no sooner than its others. A rare part is asked of the index
    // alone, and every word is checked on the rows it finds (as on the rows not yet
    // indexed): a word as common as `created` asked beside it read its whole doclist,
    // 2.5× the time on a 1M-entry trail. Any other part is asked with the whole words
    // (both implied by them: the rows found are the same).
    let rare: Vec<String> = long
        .iter()
        .filter_map(|w| id_part(w))
        .filter(|part| parts_alone && rare_part(part))
        .map(phrase)
        .collect();
    let (matching, checked): (Vec<String>, &[&str]) = if rare.is_empty() {
        let all = long
            .iter()
            .filter_map(|w| id_part(w).map(phrase))
            .chain(long.iter().map(|w| phrase(w)))
            .collect();
        (all, &[])
    } else {
        (rare, long)
    };
    const INDEXED: &str = "audit_search CROSS JOIN audit a ON a.id = -audit_search.rowid";
    let mut indexed = AuditSource {
        from: INDEXED,
        count_from: if checked.is_empty() {
            "audit_search"
        } else {
            INDEXED
        },
        newest_first: "audit_search.rowid",
        sql: " AND audit_search MATCH ?".to_owned(),
        args: vec![matching.join(" AND ").into()],
    };
    indexed.check_words(checked);
    indexed
}

/// An id part few entries hold, worth asking of the text index alone: a generated id's
/// (letters and digits, four characters or more) or a number of six digits or more.
/// Each entry holding it is checked (about 2 µs): a shorter number, as a year or a
/// round amount, can be in very many (`x_2000`, in 5 % of a 300k-entry trail, read
/// its first page in 29 ms that way, against 0.2 ms asked with its word).
fn rare_part(part: &str) -> bool {
    let n = part.chars().count();
    let letters = part.chars().any(char::is_alphabetic);
    (letters && n >= 4) || n >= 6
}

/// The part of an id-like word after its prefix (`prod_`, `in_`, `cus_`): three
/// characters or more, a digit among them.
fn id_part(word: &str) -> Option<&str> {
    let (_, part) = word.rsplit_once(['_', '-'])?;
    (part.chars().count() >= 3 && part.chars().any(|c| c.is_ascii_digit())).then_some(part)
}

/// The statement reading the page of audit entries `f` asks for, newest first, with
/// its arguments: about as many rows read as the page holds, by type or entity
/// through their indexes in id order, by text through the trigram index in id order
/// plus a scan of the few rows not yet indexed, by time within the ids it implies
/// (several types or sources: one read each, merged).
fn audit_select(f: &AuditFilter) -> (String, Vec<rusqlite::types::Value>) {
    let limit = f.limit.clamp(1, 10_000) as i64;
    let w = audit_where(f, true);
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    // One read a type (a type named twice, as `type=sync,sync`, read once: each read's
    // entries are all kept).
    let mut kinds: Vec<Option<&str>> = Vec::new();
    for k in &f.kinds {
        if !kinds.contains(&Some(k.as_str())) {
            kinds.push(Some(k.as_str()));
        }
    }
    if kinds.is_empty() {
        kinds.push(None);
    }
    let mut parts = Vec::new();
    for source in &w.sources {
        for kind in &kinds {
            let mut sql = format!(
                "SELECT {AUDIT_COLUMNS} FROM {} WHERE 1=1{}",
                source.from, source.sql
            );
            args.extend(source.args.iter().cloned());
            if let Some(k) = kind {
                sql.push_str(" AND a.kind = ?");
                args.push(k.to_string().into());
            }
            sql.push_str(&w.sql);
            args.extend(w.args.iter().cloned());
            sql.push_str(&format!(" ORDER BY {} LIMIT ?", source.newest_first));
            args.push(limit.into());
            parts.push(sql);
        }
    }
    let sql = if parts.len() == 1 {
        parts.remove(0)
    } else {
        args.push(limit.into());
        let parts: Vec<String> = parts
            .iter()
            .map(|p| format!("SELECT * FROM ({p})"))
            .collect();
        format!("{} ORDER BY id DESC LIMIT ?", parts.join(" UNION ALL "))
    };
    (sql, args)
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        kind: r.get(2)?,
        entity: r.get(3)?,
        actor: r.get(4)?,
        message: r.get(5)?,
        trace_id: r.get(6)?,
    })
}

/// An exclusive lock on a data dir, held for the life of the process.
pub struct DataDirLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl DataDirLock {
    /// Fails with a message naming the dir when another process holds it.
    pub fn acquire(dir: &Path, what: &str) -> anyhow::Result<Self> {
        private::create_dir(dir)?;
        let path = dir.join(format!("{what}.lock"));
        let file = private::file_options().truncate(false).open(&path)?;
        match file.try_lock() {
            Ok(()) => {
                use std::io::Write;
                let mut f = &file;
                let _ = f.set_len(0);
                let _ = writeln!(f, "{}", std::process::id());
                Ok(Self { _file: file, path })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another syncctl {what} (pid {}) is already using data dir {}; stop it, attach to it (`syncctl attach`), or pass a different --data-dir",
                    pid.trim(),
                    dir.display()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    /// Issue 17 point 6: the kept series never outgrow an hour, whatever the uptime:
    /// two hours of flushes (17 series, as an engine with three downstreams charts)
    /// leave an hour's rows, and their size.
    #[test]
    fn the_kept_series_hold_one_hour_whatever_the_uptime() {
        let (_d, s) = store();
        let names: Vec<String> = ["items_per_sec", "invoices_per_sec", "queue:catalog"]
            .into_iter()
            .map(str::to_owned)
            .chain(["stripe", "quickbooks", "alegra"].iter().flat_map(|d| {
                ["latency_p50", "latency_p95", "latency_p99", "error_rate"]
                    .map(|m| format!("{m}:{d}"))
            }))
            .chain(["queue:dian".to_owned(), "cache_miss_rate".to_owned()])
            .collect();
        assert_eq!(names.len(), 17);
        let t0 = 1_800_000_000i64;
        for block in 0..720 {
            let at_s = t0 + block * 10;
            let points: Vec<SeriesPoint> = names
                .iter()
                .map(|n| SeriesPoint {
                    at_s,
                    series: n.clone(),
                    secs: 10,
                    value: 1234.5678 + block as f64,
                })
                .collect();
            s.save_history(&points, at_s + 10 - 3600..=at_s + 10, &[])
                .unwrap();
        }
        let rows = s.series_points(0).unwrap();
        assert_eq!(rows.len(), 17 * 360, "an hour of 10 s points per series");
        assert_eq!(rows[0].at_s, t0 + 360 * 10);
        // Points a process wrote with its clock an hour ahead go at the next flush of
        // a process whose clock is right (and such a flush writes none of its own).
        let last = t0 + 719 * 10;
        let ahead = |at_s| SeriesPoint {
            at_s,
            series: "queue:dian".into(),
            secs: 10,
            value: 1.0,
        };
        s.save_history(&[ahead(last + 3600)], 0..=i64::MAX, &[])
            .unwrap();
        assert_eq!(s.series_points(last + 1).unwrap().len(), 1);
        s.save_history(&[ahead(last + 3610)], last + 10 - 3600..=last + 20, &[])
            .unwrap();
        assert!(
            s.series_points(last + 1).unwrap().is_empty(),
            "none kept ahead"
        );
        assert_eq!(s.series_points(0).unwrap().len(), 17 * 360);
        let bytes: i64 = s
            .w()
            .query_row(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = 'series_points'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        eprintln!("an hour of history: {} rows, {bytes} bytes", rows.len());
        assert!(bytes < 512 * 1024, "{bytes} bytes");
    }

    #[test]
    fn the_audit_trail_filters_by_kind_entity_and_time_and_keeps_its_retention() {
        let (_d, s) = store();
        s.audit("operator", "catalog", "ana@10.0.0.7", "paused")
            .unwrap();
        s.audit("circuit", "quickbooks", "engine", "CLOSED → OPEN")
            .unwrap();
        s.audit("operator", "quickbooks", "ana", "reset").unwrap();
        let all = s
            .audit_query(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].message, "reset", "newest first");
        let q = |f: AuditFilter| s.audit_query(&f).unwrap().len();
        let kinds = |k: &[&str]| k.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            q(AuditFilter {
                kinds: kinds(&["operator"]),
                limit: 10,
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(AuditFilter {
                kinds: kinds(&["operator", "circuit"]),
                entity: Some("quickbooks".into()),
                limit: 10,
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(AuditFilter {
                before_id: Some(all[0].id),
                limit: 10,
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(AuditFilter {
                since_ms: Some(all[0].at_ms + 1),
                limit: 10,
                ..Default::default()
            }),
            0
        );
        assert_eq!(
            q(AuditFilter {
                until_ms: Some(all[2].at_ms),
                limit: 10,
                ..Default::default()
            }),
            0
        );
        assert_eq!(
            q(AuditFilter {
                limit: 1,
                ..Default::default()
            }),
            1
        );
        // Retention: everything older than the cutoff goes, the rest stays.
        assert_eq!(s.purge_audit_before(all[2].at_ms).unwrap(), 0);
        assert_eq!(s.purge_audit_before(now_ms() + 1).unwrap(), 3);
        assert!(s.recent_audit(10, 0).unwrap().is_empty());
    }

    #[test]
    fn the_audit_trail_pages_back_by_id_and_finds_text_anywhere_in_it() {
        let (_d, s) = store();
        s.audit("operator", "catalog", "ana", "the Needle in the haystack")
            .unwrap();
        for i in 0..1200 {
            let kind = ["item", "sync", "operator"][i % 3];
            s.audit(
                kind,
                &format!("prod_{i}"),
                "engine",
                &format!("Step {i} done"),
            )
            .unwrap();
        }
        let page = |f: AuditFilter| s.audit_query(&f).unwrap();
        let ids = |v: &[AuditEntry]| v.iter().map(|e| e.id).collect::<Vec<_>>();
        // Keyset paging by type: pages join up newest first, nothing skipped or repeated.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let p = page(AuditFilter {
                kinds: vec!["item".into()],
                before_id: before,
                limit: 150,
                ..Default::default()
            });
            if p.is_empty() {
                break;
            }
            assert!(p.iter().all(|e| e.kind == "item"));
            before = p.last().map(|e| e.id);
            seen.extend(ids(&p));
        }
        assert_eq!(seen.len(), 400);
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
        // Two types merged in id order.
        let two = page(AuditFilter {
            kinds: vec!["operator".into(), "item".into()],
            limit: 4,
            ..Default::default()
        });
        assert_eq!(
            two.iter().map(|e| e.entity.as_str()).collect::<Vec<_>>(),
            ["prod_1199", "prod_1197", "prod_1196", "prod_1194"]
        );
        // Text: an entry far older than the newest 500, case-insensitive, every word
        // (short ones too), with the true total: found the same before the text index
        // is fed (a just-written entry), with part of the trail in it, and all of it.
        let text = |t: &str, kinds: Vec<String>| AuditFilter {
            text: Some(t.into()),
            kinds,
            limit: 100,
            ..Default::default()
        };
        let check = |state: &str| {
            let old = page(text("needle HAY in ana", vec![]));
            assert_eq!(ids(&old), [1], "{state}: {old:?}");
            assert!(page(text("needle HAY in bob", vec![])).is_empty());
            assert_eq!(
                s.audit_count(&text("STEP 7 prod_7 d", vec![])).unwrap(),
                111,
                "{state}"
            );
            assert_eq!(s.audit_count(&text("prod_7", vec![])).unwrap(), 111);
            let items = text("prod_7", vec!["item".into()]);
            assert_eq!(s.audit_count(&items).unwrap(), 36, "{state}");
            let first = page(AuditFilter {
                limit: 30,
                ..items.clone()
            });
            let rest = page(AuditFilter {
                before_id: first.last().map(|e| e.id),
                ..items.clone()
            });
            assert_eq!(first.len() + rest.len(), 36, "{state}");
            assert!(
                first
                    .iter()
                    .chain(&rest)
                    .all(|e| e.kind == "item" && e.entity.contains("prod_7"))
            );
            let all: Vec<i64> = first.iter().chain(&rest).map(|e| e.id).collect();
            assert!(all.windows(2).all(|w| w[0] > w[1]), "{state}: newest first");
        };
        check("nothing indexed");
        assert_eq!(s.index_audit_text(600).unwrap(), 600);
        check("600 of 1201 indexed");
        assert_eq!(s.index_audit_text(10_000).unwrap(), 601);
        assert_eq!(s.index_audit_text(10_000).unwrap(), 0);
        check("all indexed");
        s.w()
            .execute_batch("INSERT INTO audit_search(audit_search) VALUES ('integrity-check')")
            .unwrap();
        // Entries purged by retention leave the text index too.
        assert_eq!(s.purge_audit_before(now_ms() + 1).unwrap(), 1201);
        assert!(page(text("prod_7", vec![])).is_empty());
        assert_eq!(s.audit_count(&text("prod_7", vec![])).unwrap(), 0);
        // The emptied trail numbers again from 1: new entries are found, then indexed.
        s.audit("item", "prod_70", "engine", "created again")
            .unwrap();
        assert_eq!(ids(&page(text("prod_7 again", vec![]))), [1]);
        assert_eq!(s.index_audit_text(10_000).unwrap(), 1);
        assert_eq!(ids(&page(text("prod_7 again", vec![]))), [1]);
        assert_eq!(s.audit_count(&text("prod_7", vec![])).unwrap(), 1);
        s.w()
            .execute_batch("INSERT INTO audit_search(audit_search) VALUES ('integrity-check')")
            .unwrap();
    }

    /// `fold` is the text index's own fold, for every code point: each one written three
    /// times is one trigram to FTS5, which `fts5vocab` shows as it was folded.
    #[test]
    fn fold_is_the_text_indexs_fold_for_every_code_point() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram');
             CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance');",
        )
        .unwrap();
        let chars: Vec<char> = (1..0x11000).filter_map(char::from_u32).collect();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO t(rowid, x) VALUES (?1, ?2)")
                .unwrap();
            for &c in &chars {
                insert
                    .execute(params![c as i64, c.to_string().repeat(3)])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        let folded: std::collections::HashMap<i64, String> = conn
            .prepare("SELECT doc, term FROM v")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut differ = Vec::new();
        for &c in &chars {
            let ours = fold(&c.to_string()).repeat(3);
            if folded.get(&(c as i64)) != Some(&ours) {
                differ.push((c, folded.get(&(c as i64)).cloned(), ours));
            }
        }
        assert!(
            differ.is_empty(),
            "{} differ, first {:?}",
            differ.len(),
            &differ[..differ.len().min(10)]
        );
        // Among them: final sigma is sigma, the micro sign mu, Cherokee left alone.
        assert_eq!(fold("ΟΔΟΣ οδος µ Ꭰ"), "οδοσ οδοσ μ Ꭰ");
    }

    /// Upper-case letters beyond ASCII are found by their lower case, indexed or not.
    #[test]
    fn words_beyond_ascii_are_found_in_any_case_before_and_after_indexing() {
        let (_d, s) = store();
        s.audit(
            "item",
            "prod_1",
            "engine",
            "created Item \"SUSCRIPCIÓN ÑANDÚ\"",
        )
        .unwrap();
        let find = |words: &str| {
            let f = AuditFilter {
                text: Some(words.into()),
                limit: 10,
                ..Default::default()
            };
            (s.audit_query(&f).unwrap().len(), s.audit_count(&f).unwrap())
        };
        // Greek capital sigma at a word's end, and Turkish dotted capital I.
        s.audit("item", "prod_2", "engine", "ΟΔΟΣΑ").unwrap();
        s.audit("item", "prod_3", "engine", "ABİ").unwrap();
        // Greek written in lower case (a final sigma), and the micro sign; a NUL, which
        // the index skips.
        s.audit("item", "prod_4", "engine", "οδος 500µg").unwrap();
        s.audit("item", "prod_5", "engine", "nee\0dle").unwrap();
        for state in ["not indexed", "indexed"] {
            assert_eq!(find("ΟΔΟΣ"), (2, 2), "{state}");
            assert_eq!(find("500μg οδοσ"), (1, 1), "{state}");
            assert_eq!(find("needle"), (1, 1), "{state}");
            assert_eq!(find("οδοσα"), (1, 1), "{state}");
            assert_eq!(find("abİ"), (1, 1), "{state}");
            assert_eq!(find("abi"), (0, 0), "{state}");
            assert_eq!(find("suscripción"), (1, 1), "{state}");
            assert_eq!(find("ñandú item"), (1, 1), "{state}");
            assert_eq!(find("Ñan"), (1, 1), "{state}");
            assert_eq!(find("suscripcion"), (0, 0), "{state}: accents count");
            s.index_audit_text(10).unwrap();
        }
    }

    /// Stamp of audit entry `i` in the time tests: a second a step, three minutes back
    /// at the 150th (a clock corrected) and a few ms of jitter (writers stamp before
    /// they commit), so ids and times disagree both ways.
    fn stepped_back(i: i64) -> i64 {
        let back = if i > 150 { 180_000 } else { 0 };
        1_000_000 + i * 1000 - back + [0, 7, -5, 3][i as usize % 4]
    }

    fn add_stamped(conn: &Connection, ids: std::ops::RangeInclusive<i64>) {
        add_spread(conn, ids, 1);
    }

    /// Entries `ids` stamped by [`stepped_back`], entry `i` at id `i * spread` (spread
    /// over many of `audit_span`'s blocks of 1024 ids).
    fn add_spread(conn: &Connection, ids: std::ops::RangeInclusive<i64>, spread: i64) {
        for i in ids {
            conn.execute(
                "INSERT INTO audit(id, at, kind, entity, actor, message) VALUES (?5, ?1, ?2, ?3, 'engine', ?4)",
                params![
                    stepped_back(i),
                    ["item", "sync", "circuit"][i as usize % 3],
                    format!("prod_{}", i % 7),
                    format!("created Item {i}"),
                    i * spread
                ],
            )
            .unwrap();
        }
    }

    /// The ids the store finds for `f`, page after page (`before_id`) to the last.
    fn every_page(s: &Store, f: &AuditFilter) -> Vec<i64> {
        let mut ids = Vec::new();
        let mut before = None;
        loop {
            let page = s
                .audit_query(&AuditFilter {
                    before_id: before,
                    ..f.clone()
                })
                .unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            ids.extend(page.iter().map(|e| e.id));
        }
        ids
    }

    /// Every time range of `times` (each end open or not) with each filter the API offers,
    /// paged and counted, against the trail filtered here; how many entries they found.
    fn check_time_ranges(s: &Store, times: &[Option<i64>]) -> usize {
        let all = s
            .r()
            .prepare(
                "SELECT id, at, kind, entity, actor, message, trace_id FROM audit ORDER BY id DESC",
            )
            .unwrap()
            .query_map([], audit_row)
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap();
        let filters = [
            AuditFilter::default(),
            AuditFilter {
                kinds: vec!["sync".into()],
                ..Default::default()
            },
            AuditFilter {
                kinds: vec!["sync".into(), "circuit".into(), "sync".into()],
                ..Default::default()
            },
            AuditFilter {
                entity: Some("prod_3".into()),
                ..Default::default()
            },
            AuditFilter {
                text: Some("item 1".into()),
                ..Default::default()
            },
            AuditFilter {
                kinds: vec!["item".into()],
                text: Some("ITEM 2".into()),
                ..Default::default()
            },
        ];
        let mut found = 0;
        for &since in times {
            for &until in times {
                for base in &filters {
                    let f = AuditFilter {
                        since_ms: since,
                        until_ms: until,
                        limit: 7,
                        ..base.clone()
                    };
                    let want: Vec<i64> = AuditFilter {
                        limit: 0,
                        ..f.clone()
                    }
                    .apply(&all)
                    .iter()
                    .map(|e| e.id)
                    .collect();
                    assert_eq!(every_page(s, &f), want, "{f:?}");
                    assert_eq!(s.audit_count(&f).unwrap(), want.len() as u64, "{f:?}");
                    found += want.len();
                }
            }
        }
        found
    }

    /// Schema 15: a time range is read through the ids it implies, and finds exactly its
    /// entries whatever the clock did: entries from before the migration and after,
    /// each filter the API offers with it, paged, counted, indexed for text or not;
    /// then with stamps far off (a clock unset, one set years ahead) and entries edited
    /// by hand (a time changed, an id reused).
    #[test]
    fn a_time_range_finds_exactly_its_entries_whatever_the_clock_did() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(dir.path().join("syncctl.db")).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &schema::MIGRATIONS[..14] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 14).unwrap();
            // Ids spread over many blocks of `audit_span`.
            add_spread(&tx, 1..=200, 97);
            tx.commit().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let blocks: i64 = s
            .r()
            .query_row("SELECT COUNT(*) FROM audit_span", [], |r| r.get(0))
            .unwrap();
        assert_eq!(blocks, 19, "the migration's pass: 200 entries 97 ids apart");
        add_spread(&s.w(), 201..=400, 97);
        assert_eq!(s.index_audit_text(250).unwrap(), 250);
        let mut times = vec![
            None,
            Some(0),
            Some(stepped_back(1)),
            Some(stepped_back(40) + 1),
            Some(stepped_back(150)),
            Some(stepped_back(151)),
            Some(stepped_back(170)),
            Some(stepped_back(300) - 2),
            Some(stepped_back(400)),
            Some(stepped_back(400) + 1),
        ];
        let found = check_time_ranges(&s, &times);
        assert!(found > 10_000, "too little found to prove much: {found}");
        // A clock unset (stamped at 0), one set a century ahead, a time changed and an
        // id reused by hand, each in an old block.
        let w = s.w();
        w.execute_batch(&format!(
            "INSERT INTO audit(at, kind, entity, actor, message) VALUES (0, 'sync', 'prod_3', 'engine', 'created Item 0');
             INSERT INTO audit(at, kind, entity, actor, message) VALUES (4102444800000, 'sync', 'prod_3', 'engine', 'created Item 2100');
             UPDATE audit SET at = {} WHERE id = 97 * 20;
             DELETE FROM audit WHERE id = 97 * 30;
             INSERT INTO audit(id, at, kind, entity, actor, message) VALUES (97 * 30, {}, 'item', 'prod_3', 'operator', 'created Item 30');",
            stepped_back(380),
            stepped_back(390) + 1
        ))
        .unwrap();
        drop(w);
        times.extend([Some(1), Some(4102444800000), Some(4102444800001)]);
        let found = check_time_ranges(&s, &times);
        assert!(found > 10_000, "too little found to prove much: {found}");
        // Purged: the spans of blocks wholly gone go; a trail emptied and written
        // again is numbered from 1, still exact.
        let spans = |s: &Store| -> i64 {
            s.r()
                .query_row("SELECT COUNT(*) FROM audit_span", [], |r| r.get(0))
                .unwrap()
        };
        s.purge_audit_before(stepped_back(200)).unwrap();
        assert!(spans(&s) < 38, "{}", spans(&s));
        s.purge_audit_before(i64::MAX).unwrap();
        assert_eq!(spans(&s), 0);
        add_stamped(&s.w(), 1..=20);
        let f = AuditFilter {
            since_ms: Some(stepped_back(5)),
            until_ms: Some(stepped_back(16)),
            limit: 100,
            ..Default::default()
        };
        let ids: Vec<i64> = s.audit_query(&f).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, (5..16).rev().collect::<Vec<_>>());
    }

    /// Rows a query reads (SQLite's virtual machine steps), against the same query with
    /// no time range: a time range reads about its page and the rest of the blocks of
    /// 1024 ids its ends fall in, not the trail between it and the newest entry; so
    /// does a page start (`before_id`) far from the range, and so it stays after stamps
    /// far off the clock (each widens its own block only).
    #[test]
    fn a_time_range_reads_its_page_not_the_trail() {
        let (_d, s) = store();
        {
            let mut conn = s.w();
            let tx = conn.transaction().unwrap();
            add_stamped(&tx, 1..=30_000);
            tx.commit().unwrap();
        }
        while s.index_audit_text(10_000).unwrap() > 0 {}
        let steps = |f: &AuditFilter| -> (i32, usize) {
            let (sql, args) = audit_select(f);
            let conn = s.r();
            let mut stmt = conn.prepare(&sql).unwrap();
            let n = stmt
                .query_map(rusqlite::params_from_iter(args), audit_row)
                .unwrap()
                .count();
            (stmt.get_status(rusqlite::StatementStatus::VmStep), n)
        };
        let old = stepped_back(1_000);
        let recent = stepped_back(29_990);
        let bases = [
            AuditFilter::default(),
            AuditFilter {
                kinds: vec!["sync".into()],
                ..Default::default()
            },
            AuditFilter {
                entity: Some("prod_3".into()),
                ..Default::default()
            },
            AuditFilter {
                text: Some("created".into()),
                ..Default::default()
            },
        ];
        let check = |bases: &[AuditFilter], far: usize| -> Vec<i32> {
            let mut read = Vec::new();
            for base in bases {
                let f = AuditFilter {
                    limit: 100,
                    ..base.clone()
                };
                let (plain, n) = steps(&f);
                assert_eq!(n, 100);
                for (since, until, before, rows) in [
                    // Before the 1000th entry: the trail's 29,000 newer ones not read.
                    (None, Some(old), None, 100),
                    // Since the 29,990th: 11 entries (and those stamped far ahead),
                    // fewer of a kind; not the rest.
                    (Some(recent), None, None, 11 + far),
                    (Some(old), Some(old + 200_000), None, 100),
                    // A page start far above the range's end.
                    (None, Some(old), Some(29_000), 100),
                ] {
                    let (timed, n) = steps(&AuditFilter {
                        since_ms: since,
                        until_ms: until,
                        before_id: before,
                        ..f.clone()
                    });
                    assert!(n <= rows, "{n} rows");
                    assert!(
                        timed < plain * 3 + 40_000,
                        "{base:?} since {since:?} until {until:?} before {before:?}: {timed} steps, {plain} without the time range"
                    );
                    read.push(timed);
                }
            }
            read
        };
        let clean = check(&bases, 0);
        // A clock unset at a boot (stamped 0) and one set a century ahead, in the
        // middle of the trail: by time with type or entity, each widens its own block
        // only (one more block read: a few thousand steps). (By text, the index reads
        // one id range, which they stretch: no further than the newest entry, where it
        // read from before schema 15.)
        s.w()
            .execute_batch(
                "UPDATE audit SET at = 0 WHERE id = 15000;
                 UPDATE audit SET at = 4102444800000 WHERE id = 15001;",
            )
            .unwrap();
        let far = check(&bases[..3], 1);
        for (i, (clean, far)) in clean.iter().zip(&far).enumerate() {
            assert!(
                far - clean < 10_000,
                "case {i}: {clean} steps, {far} once stamps far off were written"
            );
        }
    }

    /// Entries numbered again below what the index holds (the newest purged while older
    /// ones stay, as after a clock stepped back) are found by text, then indexed.
    #[test]
    fn entries_numbered_again_after_the_newest_were_purged_are_found_by_text() {
        let (_d, s) = store();
        for i in 0..10 {
            s.audit("item", &format!("prod_{i}"), "engine", "created")
                .unwrap();
        }
        // Three more stamped a day earlier (the clock stepped back), all indexed.
        let day_ago = now_ms() - 86_400_000;
        for i in 10..13 {
            s.w()
                .execute(
                    "INSERT INTO audit(at, kind, entity, actor, message) VALUES (?1, 'item', ?2, 'engine', 'created')",
                    params![day_ago, format!("prod_{i}")],
                )
                .unwrap();
        }
        assert_eq!(s.index_audit_text(100).unwrap(), 13);
        assert_eq!(s.purge_audit_before(day_ago + 1).unwrap(), 3);
        let id = s
            .audit("item", "prod_77", "engine", "created again")
            .unwrap();
        assert_eq!(id, 11, "numbered after the highest id left");
        let find = || {
            let f = AuditFilter {
                text: Some("prod_77 again".into()),
                limit: 10,
                ..Default::default()
            };
            let ids: Vec<i64> = s.audit_query(&f).unwrap().iter().map(|e| e.id).collect();
            (ids, s.audit_count(&f).unwrap())
        };
        assert_eq!(find(), (vec![11], 1), "before it is indexed");
        assert_eq!(s.index_audit_text(100).unwrap(), 1);
        assert_eq!(find(), (vec![11], 1), "once indexed");
    }

    /// Segments of the audit text index (FTS5's structure record: a 4-byte cookie, the
    /// 4-byte mark of its second format (a contentless-delete index's) if there, then
    /// the levels and the segments as varints, one byte each while under 128).
    fn text_segments(s: &Store) -> u8 {
        let block: Vec<u8> = s
            .r()
            .query_row(
                "SELECT block FROM audit_search_data WHERE id = 10",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let at = if block[4..8] == [0xff, 0, 0, 1] { 8 } else { 4 };
        assert!(block[at] < 128 && block[at + 1] < 128, "{block:?}");
        block[at + 1]
    }

    #[test]
    fn the_text_index_fed_in_batches_is_merged_to_one_segment_when_idle_and_finds_the_same() {
        let (_d, s) = store();
        for i in 0..3000 {
            s.audit(
                "item",
                &format!("prod_{i}"),
                "engine",
                &format!("created Item {i}"),
            )
            .unwrap();
            // Fed as the engine feeds it: what was written since, every so often.
            if i % 97 == 96 {
                s.index_audit_text(5000).unwrap();
            }
        }
        s.index_audit_text(5000).unwrap();
        let find = |words: &str| {
            let f = AuditFilter {
                text: Some(words.into()),
                limit: 100,
                ..Default::default()
            };
            (s.audit_query(&f).unwrap(), s.audit_count(&f).unwrap())
        };
        let before = (find("prod_299"), find("prod_2999 item"), find("created"));
        assert_eq!(before.0.1, 11);
        assert_eq!(before.1.1, 1);
        assert_eq!(before.2.1, 3000);
        let fed = text_segments(&s);
        assert!(fed > 1, "{fed} segments");
        let mut steps = 0;
        while s.merge_audit_text(50).unwrap() {
            steps += 1;
            assert!(steps < 1000, "merging never ends");
        }
        assert_eq!(
            text_segments(&s),
            1,
            "{fed} segments merged in {steps} steps"
        );
        // Idle and merged: a step is no work.
        assert!(!s.merge_audit_text(50).unwrap());
        let after = (find("prod_299"), find("prod_2999 item"), find("created"));
        let ids = |r: &(Vec<AuditEntry>, u64)| (r.0.iter().map(|e| e.id).collect::<Vec<_>>(), r.1);
        assert_eq!(ids(&after.0), ids(&before.0));
        assert_eq!(ids(&after.1), ids(&before.1));
        assert_eq!(ids(&after.2), ids(&before.2));
        s.w()
            .execute_batch("INSERT INTO audit_search(audit_search) VALUES ('integrity-check')")
            .unwrap();
    }

    /// Segments on several levels (what merging by level leaves, as on a long trail)
    /// are folded into one when the ones outside the largest add up to a quarter of
    /// it, a step at a time, finding the same; a trickle of small segments beside a
    /// large one is left to merging by level (no rewrite of the whole index).
    #[test]
    fn the_text_index_is_folded_whole_when_what_was_added_is_a_quarter_of_it() {
        let (_d, s) = store();
        let mut n = 0;
        let mut feed = |entries: usize| {
            for _ in 0..entries {
                s.audit(
                    "item",
                    &format!("prod_{n}"),
                    "engine",
                    &format!("created Item {n}"),
                )
                .unwrap();
                n += 1;
            }
            s.index_audit_text(100_000).unwrap();
        };
        // Segments left apart, as levels leave them (merging by level turned off).
        s.w()
            .execute_batch("INSERT INTO audit_search(audit_search, rank) VALUES ('automerge', 0)")
            .unwrap();
        for entries in [800, 300, 200, 100] {
            feed(entries);
        }
        let segments = |s: &Store| -> Vec<i64> {
            s.w()
                .prepare("SELECT count(*) FROM audit_search_idx GROUP BY segid")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap()
        };
        assert_eq!(segments(&s).len(), 4);
        let find = |words: &str| {
            let f = AuditFilter {
                text: Some(words.into()),
                limit: 100,
                ..Default::default()
            };
            let page: Vec<i64> = s.audit_query(&f).unwrap().iter().map(|e| e.id).collect();
            (page, s.audit_count(&f).unwrap())
        };
        let words = ["prod_1099 created", "prod_12", "created", "Item 3"];
        let before: Vec<_> = words.iter().map(|w| find(w)).collect();
        assert_eq!(before[0].1, 1);
        assert_eq!(before[1].1, 111);
        assert!(s.optimize_audit_text(50).unwrap(), "{:?}", segments(&s));
        let mut steps = 0;
        while s.merge_audit_text(50).unwrap() {
            steps += 1;
            assert!(steps < 1000, "folding never ends");
        }
        assert_eq!(segments(&s).len(), 1, "folded in {steps} steps");
        assert!(
            !s.optimize_audit_text(50).unwrap(),
            "one segment: nothing to do"
        );
        let after: Vec<_> = words.iter().map(|w| find(w)).collect();
        assert_eq!(after, before);
        // A trickle beside it: three small segments, a sliver of the large one.
        for _ in 0..3 {
            feed(5);
        }
        let sizes = segments(&s);
        assert_eq!(sizes.len(), 4, "{sizes:?}");
        assert!(!s.optimize_audit_text(50).unwrap(), "{sizes:?}");
        s.w()
            .execute_batch("INSERT INTO audit_search(audit_search) VALUES ('integrity-check')")
            .unwrap();
    }

    /// An id's own part is asked of the index first; the rows found are the same as
    /// the whole word's (it is still matched), for ids and for words that only look
    /// like one.
    #[test]
    fn an_id_is_found_by_its_own_part_first_and_the_same_rows_come_back() {
        assert_eq!(id_part("prod_299990"), Some("299990"));
        assert_eq!(id_part("in-1Pxyz"), Some("1Pxyz"));
        assert_eq!(id_part("prod_12"), None, "too short to be asked alone");
        assert_eq!(id_part("catalog_sync"), None, "no digit: not an id");
        assert_eq!(id_part("created"), None);
        let (_d, s) = store();
        for i in 0..400 {
            s.audit(
                "item",
                &format!("prod_{i}"),
                "engine",
                &format!("created Item {i}_299"),
            )
            .unwrap();
        }
        s.audit("item", "in_299", "engine", "paid").unwrap();
        s.index_audit_text(100_000).unwrap();
        let count = |words: &str| {
            s.audit_count(&AuditFilter {
                text: Some(words.into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap()
        };
        // `299` alone is in every message; the whole word narrows it.
        assert_eq!(count("prod_299"), 1);
        assert_eq!(count("in_299"), 1);
        assert_eq!(count("prod_299 created"), 1);
        assert_eq!(count("7_299"), 40, "`Item 7_299`, `Item 17_299` …");
        assert_eq!(count("PROD_29"), 11);
    }

    #[test]
    fn what_the_text_index_is_asked() {
        let asked = |words: &str| {
            let w = audit_where(
                &AuditFilter {
                    text: Some(words.into()),
                    ..Default::default()
                },
                true,
            );
            w.sources[0].args[0].clone()
        };
        assert_eq!(asked("prod_000040 created"), "\"000040\"".to_owned().into());
        assert_eq!(
            asked("prod_299 created"),
            "\"299\" AND \"prod_299\" AND \"created\"".to_owned().into(),
            "a short part is asked with the words"
        );
        let counted_alone = audit_where_as(
            &AuditFilter {
                text: Some("prod_000040 created".into()),
                ..Default::default()
            },
            false,
            false,
        );
        assert_eq!(
            counted_alone.sources[0].args[0],
            "\"000040\" AND \"prod_000040\" AND \"created\""
                .to_owned()
                .into(),
            "counted alone, the index is read alone"
        );
        assert_eq!(counted_alone.sources[0].count_from, "audit_search");
        assert_eq!(
            asked("x_2000"),
            "\"2000\" AND \"x_2000\"".to_owned().into(),
            "a short number may be in very many entries"
        );
        assert_eq!(
            asked("PROD_Va5I CAFÉ"),
            "\"Va5I\"".to_owned().into(),
            "a generated id's part"
        );
    }

    /// Audit lines naming 6-digit ids: products, invoices, a sync line in capitals, and
    /// a Stripe-like id.
    fn ids_trail(s: &Store) {
        for i in 0..600 {
            let (kind, entity, message) = match i % 4 {
                0 => (
                    "item",
                    format!("prod_{i:06}"),
                    format!("created Item {}", 10_000 + i),
                ),
                1 => (
                    "item",
                    format!("prod_{i:06}"),
                    format!("updated Item {}", 10_000 + i),
                ),
                2 => (
                    "invoice",
                    format!("in_{:06}", i / 2),
                    "paid 150000 COP".to_owned(),
                ),
                _ => (
                    "sync",
                    "catalog".to_owned(),
                    format!("PROD_{:06} Créé", i - 3),
                ),
            };
            s.audit(kind, &entity, "engine", &message).unwrap();
        }
        s.audit(
            "item",
            "prod_Va5I9xQlEj6dmx",
            "engine",
            "created Item 1 \"Café\"",
        )
        .unwrap();
    }

    /// A rare id part (six digits, or letters and digits) is the only thing asked of the index;
    /// every word is checked on the rows it finds. Pages and totals are the same as a
    /// scan of the trail finds, with the index or without it.
    #[test]
    fn a_rare_id_part_is_asked_alone_and_the_same_rows_come_back() {
        let ((_a, indexed), (_b, scanned)) = (store(), store());
        for s in [&indexed, &scanned] {
            ids_trail(s);
        }
        while indexed.index_audit_text(10_000).unwrap() > 0 {}
        for words in [
            "prod_000040",
            "prod_000040 created",
            "PROD_000044 créé",
            "000040",
            "in_000041 paid",
            "prod_00004",
            "d_00004 item",
            "prod_000040 updated",
            "prod_000040 prod_000044",
            "150000 in_000101",
            "Va5I9xQlEj6dmx",
            "prod_va5i9xqlej6dmx created café",
            "prod_00 10040",
            "\"prod_000040\"",
        ] {
            let page = |s: &Store, limit: usize, before_id: Option<i64>| {
                let f = AuditFilter {
                    text: Some(words.into()),
                    limit,
                    before_id,
                    ..Default::default()
                };
                let ids: Vec<i64> = s.audit_query(&f).unwrap().iter().map(|e| e.id).collect();
                (ids, s.audit_count(&f).unwrap())
            };
            let (all, total) = page(&scanned, 1000, None);
            assert_eq!(all.len() as u64, total, "{words}");
            assert_eq!(page(&indexed, 1000, None), (all.clone(), total), "{words}");
            // With a type too (the count reads the rows, each checked).
            let items = |s: &Store| {
                s.audit_count(&AuditFilter {
                    text: Some(words.into()),
                    kinds: vec!["item".into()],
                    ..Default::default()
                })
                .unwrap()
            };
            assert_eq!(items(&indexed), items(&scanned), "{words}");
            // Page by page, two at a time.
            let mut paged = Vec::new();
            let mut before = None;
            loop {
                let (ids, _) = page(&indexed, 2, before);
                if ids.is_empty() {
                    break;
                }
                before = ids.last().copied();
                paged.extend(ids);
            }
            assert_eq!(paged, all, "{words}");
        }
        // Each query found what it should (not nothing, everywhere).
        let found = |words: &str| {
            let f = AuditFilter {
                text: Some(words.into()),
                limit: 100,
                ..Default::default()
            };
            indexed.audit_count(&f).unwrap()
        };
        assert_eq!(
            found("prod_000040"),
            2,
            "its line and the sync line naming it"
        );
        assert_eq!(found("prod_000040 created"), 1);
        assert_eq!(found("PROD_000044 créé"), 1);
        assert_eq!(found("prod_00004"), 9, "six item lines, three sync lines");
        assert_eq!(found("prod_va5i9xqlej6dmx created café"), 1);
        assert_eq!(found("prod_000040 updated"), 0);
    }

    #[tokio::test]
    async fn an_audit_line_written_in_a_trace_records_its_id() {
        let (_d, s) = store();
        let id = crate::telemetry::trace::scope(async {
            s.audit("item", "prod_1", "engine", "created").unwrap();
            crate::telemetry::trace::current_id().unwrap()
        })
        .await;
        s.audit("operator", "catalog", "ana", "paused").unwrap();
        let e = s.recent_audit(10, 0).unwrap();
        assert_eq!(e[1].trace_id.as_deref(), Some(id.as_str()));
        assert_eq!(e[0].trace_id, None);
    }

    fn job<'a>(key: &'a str, payload: &'a str, version: i64) -> NewJob<'a> {
        NewJob {
            kind: "catalog.product",
            key,
            payload: Some(payload),
            version,
        }
    }

    /// Callers finishing at once are committed together and each returns once its
    /// own jobs are committed; one caller's refused write (an Item id another product
    /// holds) fails that caller alone and leaves its jobs leased.
    #[test]
    fn finished_jobs_are_committed_in_groups_each_caller_alone_answerable() {
        let (_dir, s) = store();
        let keys: Vec<String> = (0..64).map(|i| format!("p{i}")).collect();
        for k in &keys {
            s.ingest(&[job(k, "a", 1)], None, None).unwrap();
        }
        let jobs = s.claim("catalog.product", 64, 60_000).unwrap();
        assert_eq!(jobs.len(), 64);
        let finished = |j: &Job, item: &str| Finished {
            job_id: j.id,
            lease: j.lease,
            mapping: Some(ItemMapping {
                product_id: j.key.clone(),
                item_id: Some(item.into()),
                status: "synced".into(),
                ..Default::default()
            }),
            audit: Some((
                "item".into(),
                j.key.clone(),
                "engine".into(),
                format!("created Item {item}"),
            )),
            trace_id: Some("t".into()),
        };
        // 8 callers of 8 jobs at once; the last caller's last job takes an Item id the
        // first caller's first job holds.
        let outcomes: Vec<Result<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .chunks(8)
                .enumerate()
                .map(|(c, chunk)| {
                    let s = s.clone();
                    let batch: Vec<Finished> = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, j)| {
                            let item = if c == 7 && i == 7 {
                                "item-0-0".to_owned()
                            } else {
                                format!("item-{c}-{i}")
                            };
                            finished(j, &item)
                        })
                        .collect();
                    scope.spawn(move || {
                        if c == 7 {
                            // After the first caller's commit, whoever commits it.
                            while s.mapping("p0").unwrap().is_none() {
                                std::thread::yield_now();
                            }
                        }
                        s.finish_jobs(batch)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(outcomes[..7].iter().all(Result::is_ok), "{outcomes:?}");
        assert!(outcomes[7].is_err(), "the refused caller is told");
        // The refused caller's jobs stay leased (retried after their lease), none of its
        // mappings or audit lines went in; every other job is done and recorded.
        let c = s.catalog_counts().unwrap();
        assert_eq!((c.synced, c.in_flight, c.queued), (56, 8, 0));
        assert!(s.mapping("p56").unwrap().is_none());
        assert!(s.mapping("p55").unwrap().is_some());
        let lines = s.recent_audit(100, 0).unwrap();
        assert_eq!(lines.len(), 56);
        assert!(lines.iter().all(|e| e.trace_id.as_deref() == Some("t")));
        // The store is not failing for a refused statement.
        assert!(s.write_health().failing_since_ms.is_none());
    }

    /// Schema 16: a claim and a job's end change no entry of an index ordered by key
    /// (they did twice an item, each a leaf page at a random place): the claim's "key
    /// in flight" check reads the leased jobs' keys alone, and a key's jobs are found
    /// through `jobs_key`, whose entries never change. A key in flight is still never
    /// claimed twice, and is claimable again once its job ended.
    #[test]
    fn a_claim_reads_the_keys_in_flight_from_the_leased_jobs_alone() {
        let (_dir, s) = store();
        {
            let conn = s.w();
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {CLAIMABLE}"))
                .unwrap()
                .query_map(params!["catalog.product", 0, 8], |r| r.get(3))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            assert!(
                plan.iter().any(|l| l.contains("INDEX jobs_leased_key")),
                "{plan:#?}"
            );
            // The failed keys (counted at every snapshot) are looked up key by key in
            // the indexes, never read through the table's rows of each key.
            let failed: Vec<String> = conn
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT COUNT(DISTINCT f.key) FROM jobs f INDEXED BY jobs_due WHERE {FAILED_STILL}"
                ))
                .unwrap()
                .query_map(params!["catalog.product"], |r| r.get(3))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            for index in ["jobs_key ", "jobs_one_queued_per_key", "jobs_leased_key"] {
                assert!(
                    failed.iter().any(|l| l.contains(&format!("INDEX {index}"))),
                    "{index}: {failed:#?}"
                );
            }
            assert!(!failed.iter().any(|l| l.starts_with("SCAN")), "{failed:#?}");
            let on_jobs: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(
                on_jobs,
                [
                    "jobs_due",
                    "jobs_key",
                    "jobs_leased_key",
                    "jobs_one_queued_per_key"
                ]
            );
        }
        s.ingest(&[job("p1", "a", 1), job("p2", "a", 1)], None, None)
            .unwrap();
        let first = s.claim("catalog.product", 8, 60_000).unwrap();
        assert_eq!(first.len(), 2);
        // A newer version of p1 while p1 is in flight: queued, not claimed.
        s.ingest(&[job("p1", "b", 2)], None, None).unwrap();
        assert!(s.claim("catalog.product", 8, 60_000).unwrap().is_empty());
        let p1 = first.iter().find(|j| j.key == "p1").unwrap();
        s.finish_job(p1.id, p1.lease, None, None).unwrap();
        let again = s.claim("catalog.product", 8, 60_000).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].key, "p1");
        assert_eq!(again[0].payload.as_deref(), Some("b"));
    }

    /// `j` ended with an Item created, and `mapping`.
    fn created(j: &Job, mapping: Option<ItemMapping>) -> Finished {
        Finished {
            job_id: j.id,
            lease: j.lease,
            mapping,
            audit: Some((
                "item".into(),
                j.key.clone(),
                "engine".into(),
                "created".into(),
            )),
            trace_id: None,
        }
    }

    /// The per-item writes' transaction (prepared once): what it commits stays, what it
    /// holds when dropped goes, and the next one begins clean after either, or after a
    /// statement inside it was refused.
    #[test]
    fn a_transaction_prepared_once_commits_or_is_rolled_back_when_dropped() {
        let (_d, s) = store();
        let conn = s.w();
        let cursors = || -> Vec<String> {
            conn.prepare("SELECT name FROM cursors ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap()
        };
        let add = |tx: &Begun, name: &str| {
            tx.execute(
                "INSERT OR FAIL INTO cursors(name, value, updated_at) VALUES (?1, 'v', 0)",
                [name],
            )
        };
        let tx = Begun::begin(&conn).unwrap();
        add(&tx, "kept").unwrap();
        tx.commit().unwrap();
        let tx = Begun::begin(&conn).unwrap();
        add(&tx, "dropped").unwrap();
        drop(tx);
        assert!(conn.is_autocommit());
        assert_eq!(cursors(), ["kept"]);
        // A refused statement (a taken name) inside: the caller's error, then its
        // transaction dropped whole.
        let tx = Begun::begin(&conn).unwrap();
        add(&tx, "also dropped").unwrap();
        assert!(add(&tx, "kept").is_err());
        drop(tx);
        assert_eq!(cursors(), ["kept"]);
        // A BEGIN inside is refused and leaves the outer one as it was.
        let tx = Begun::begin(&conn).unwrap();
        add(&tx, "second").unwrap();
        assert!(Begun::begin(&conn).is_err());
        tx.commit().unwrap();
        assert_eq!(cursors(), ["kept", "second"]);
        // A COMMIT refused (a deferred foreign key broken): rolled back when dropped.
        conn.execute_batch(
            "CREATE TEMP TABLE parent(id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE child(p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let tx = Begun::begin(&conn).unwrap();
        add(&tx, "with a broken child").unwrap();
        tx.execute("INSERT INTO child(p) VALUES (1)", []).unwrap();
        assert!(tx.commit().is_err());
        assert!(conn.is_autocommit());
        assert_eq!(cursors(), ["kept", "second"]);
        // Each BEGIN and COMMIT above (the refused BEGIN and COMMIT included) ran one
        // statement prepared once.
        for (sql, runs) in [("BEGIN", 6), ("COMMIT", 3)] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::Run),
                runs,
                "{sql}"
            );
        }
    }

    /// Claims, pending creates and finished jobs that arrive while the writer is busy
    /// are committed together, in one transaction of the writer thread, and each
    /// caller is answered with its own outcome once it is committed.
    #[test]
    fn writes_waiting_for_a_busy_writer_share_one_commit() {
        let (_dir, s) = store();
        let keys: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        for k in &keys {
            s.ingest(&[job(k, "a", 1)], None, None).unwrap();
        }
        let first = s.claim("catalog.product", 4, 60_000).unwrap();
        assert_eq!(first.len(), 4);
        let before = s.groups_committed();
        let (finished, pending, claimed) = std::thread::scope(|scope| {
            // The writer is busy (its lock held here) while seven callers arrive.
            let busy = s.w();
            let finished: Vec<_> = first
                .iter()
                .map(|j| {
                    let s = s.clone();
                    let f = created(
                        j,
                        Some(ItemMapping {
                            product_id: j.key.clone(),
                            item_id: Some(format!("item-{}", j.key)),
                            status: "synced".into(),
                            ..Default::default()
                        }),
                    );
                    scope.spawn(move || s.finish_jobs(vec![f]))
                })
                .collect();
            let pending: Vec<_> = ["p4", "p5"]
                .into_iter()
                .map(|p| {
                    let s = s.clone();
                    scope.spawn(move || {
                        s.mark_creates_pending(&[(p.into(), format!("rid-{p}"), "{}".into())])
                    })
                })
                .collect();
            let claim = {
                let s = s.clone();
                scope.spawn(move || s.claim("catalog.product", 8, 60_000))
            };
            while s.writes_waiting() < 7 {
                std::thread::yield_now();
            }
            drop(busy);
            (
                finished
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>(),
                pending
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>(),
                claim.join().unwrap(),
            )
        });
        assert!(finished.iter().all(Result::is_ok), "{finished:?}");
        assert!(pending.iter().all(Result::is_ok), "{pending:?}");
        assert_eq!(claimed.unwrap().len(), 4, "the four jobs still queued");
        assert_eq!(
            s.groups_committed() - before,
            1,
            "one commit for seven callers"
        );
        let c = s.catalog_counts().unwrap();
        assert_eq!((c.synced, c.in_flight, c.queued), (4, 4, 0));
        assert_eq!(
            s.mapping("p4").unwrap().and_then(|m| m.pending_request_id),
            Some("rid-p4".into())
        );
        assert_eq!(s.recent_audit(10, 0).unwrap().len(), 4);
        assert_eq!(s.writes_waiting(), 0);
    }

    /// Ends handed over with nobody waiting on them are held for a write someone waits
    /// on, and committed in its transaction (one commit, not two); alone, they are
    /// committed once the linger is over.
    #[test]
    fn ends_nobody_waits_on_share_the_commit_of_the_next_claim() {
        let (_dir, s) = store();
        for k in ["p1", "p2"] {
            s.ingest(&[job(k, "a", 1)], None, None).unwrap();
        }
        let first = s.claim("catalog.product", 1, 60_000).unwrap();
        assert_eq!(first.len(), 1);
        let ended = |j: &Job| created(j, None);
        // A linger no test machine outlasts: only the claim can end it.
        s.set_linger(std::time::Duration::from_secs(600));
        let before = s.groups_committed();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Handed over at once (not when awaited): the writer holds it.
        let committed = s.finish_jobs_sent(vec![ended(&first[0])]);
        assert_eq!(s.writes_waiting(), 1);
        let second = s.claim("catalog.product", 8, 60_000).unwrap();
        rt.block_on(committed).unwrap();
        assert_eq!(s.groups_committed() - before, 1, "one commit for both");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].key, "p2");
        let c = s.queue_counts("catalog.product").unwrap();
        assert_eq!((c.in_flight, c.queued), (1, 0), "p1 ended, p2 leased");
        // Alone, an end waits out the linger and is committed.
        s.set_linger(std::time::Duration::from_millis(1));
        let before = s.groups_committed();
        rt.block_on(s.finish_jobs_sent(vec![ended(&second[0])]))
            .unwrap();
        assert_eq!(s.groups_committed() - before, 1);
        assert_eq!(s.queue_counts("catalog.product").unwrap().in_flight, 0);
        assert_eq!(s.recent_audit(10, 0).unwrap().len(), 2);
    }

    /// A write of a group that fails for want of disk, in a statement that keeps no
    /// journal of its own (schema 17), ends the group's whole transaction: every write
    /// of the group is refused and none is committed (the writer's savepoint-by-savepoint
    /// second pass once went on outside any transaction, committing the writes after
    /// the failed one while telling their callers they failed). With room again, the
    /// same writes go in.
    #[test]
    fn a_write_that_finds_the_disk_full_refuses_its_whole_group() {
        let (_dir, s) = store();
        for k in ["p1", "p2", "p3", "p4"] {
            s.ingest(&[job(k, "a", 1)], None, None).unwrap();
        }
        let jobs = s.claim("catalog.product", 3, 60_000).unwrap();
        assert_eq!(jobs.len(), 3);
        // The second job's mapping is 400 KiB.
        let mapped = |i: usize, j: &Job| {
            let name = match i {
                1 => "x".repeat(400 << 10),
                _ => j.key.clone(),
            };
            created(
                j,
                Some(ItemMapping {
                    product_id: j.key.clone(),
                    item_id: Some(format!("item-{}", j.key)),
                    item_name: Some(name),
                    status: "synced".into(),
                    ..Default::default()
                }),
            )
        };
        let pages: i64 = s
            .w()
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        // Room for small writes, not for a mapping of 400 KiB.
        s.w()
            .pragma_update(None, "max_page_count", pages + 20)
            .unwrap();
        // Three ends held for the claim's company, then the claim: one group.
        s.set_linger(std::time::Duration::from_secs(600));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ends: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| s.finish_jobs_sent(vec![mapped(i, j)]))
            .collect();
        let claimed = s.claim("catalog.product", 8, 60_000);
        let ended: Vec<Result<usize>> = ends.into_iter().map(|e| rt.block_on(e)).collect();
        assert!(claimed.is_err(), "{claimed:?}");
        assert!(ended.iter().all(Result::is_err), "{ended:?}");
        for k in ["p1", "p2", "p3"] {
            assert!(s.mapping(k).unwrap().is_none(), "{k} was written");
        }
        let c = s.queue_counts("catalog.product").unwrap();
        assert_eq!(
            (c.in_flight, c.queued),
            (3, 1),
            "nothing of the group stands"
        );
        // Room again: the same writes go in.
        s.w()
            .pragma_update(None, "max_page_count", 1_073_741_823)
            .unwrap();
        s.set_linger(std::time::Duration::from_millis(1));
        for (i, j) in jobs.iter().enumerate() {
            rt.block_on(s.finish_jobs_sent(vec![mapped(i, j)])).unwrap();
        }
        assert_eq!(s.claim("catalog.product", 8, 60_000).unwrap().len(), 1);
        assert!(s.mapping("p2").unwrap().is_some());
    }

    /// A claim that reads mappings returns each job's as the claim's own transaction
    /// saw it: the Item, a pending create, or none (read, and there is none).
    #[test]
    fn a_claim_with_mappings_reads_each_key_in_its_own_transaction() {
        let (_dir, s) = store();
        for k in ["p1", "p2", "p3"] {
            s.ingest(&[job(k, "a", 1)], None, None).unwrap();
        }
        s.save_mapping(&ItemMapping {
            product_id: "p1".into(),
            item_id: Some("7".into()),
            sync_token: Some("2".into()),
            status: "synced".into(),
            ..Default::default()
        })
        .unwrap();
        s.mark_creates_pending(&[("p2".into(), "rid-2".into(), "{\"Name\":\"b\"}".into())])
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let jobs = rt
            .block_on(s.claim_at_async("catalog.product", 8, 60_000, now_ms(), true))
            .unwrap();
        let of = |k: &str| jobs.iter().find(|j| j.key == k).unwrap().mapping.clone();
        let p1 = of("p1").expect("read").expect("mapped");
        assert_eq!(
            (p1.item_id.as_deref(), p1.sync_token.as_deref()),
            (Some("7"), Some("2"))
        );
        let p2 = of("p2").expect("read").expect("pending");
        assert_eq!(p2.pending_request_id.as_deref(), Some("rid-2"));
        assert_eq!(p2.pending_body.as_deref(), Some("{\"Name\":\"b\"}"));
        assert_eq!(of("p3"), Some(None), "read: no mapping");
        // Without: not read (the worker asks the store).
        s.ingest(&[job("p4", "a", 1)], None, None).unwrap();
        let plain = s.claim("catalog.product", 8, 60_000).unwrap();
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].mapping, None);
    }

    #[test]
    fn queued_job_keeps_the_newest_payload_whatever_the_arrival_order() {
        let (_d, s) = store();
        s.ingest(&[job("p1", "v2", 2)], None, None).unwrap();
        s.ingest(&[job("p1", "v1", 1)], None, None).unwrap();
        let claimed = s.claim("catalog.product", 10, 60_000).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].payload.as_deref(), Some("v2"));
    }

    #[test]
    fn repeated_event_id_enqueues_once() {
        let (_d, s) = store();
        let ev = Some(("evt_1", "product.updated", "webhook"));
        assert!(s.ingest(&[job("p1", "a", 1)], None, ev).unwrap());
        s.claim("catalog.product", 10, 60_000).unwrap();
        assert!(!s.ingest(&[job("p1", "a", 1)], None, ev).unwrap());
        assert!(s.claim("catalog.product", 10, 60_000).unwrap().is_empty());
    }

    #[test]
    fn claims_of_changing_sizes_reuse_one_prepared_statement() {
        let (_dir, store) = store();
        let keys: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
        let jobs: Vec<NewJob<'_>> = keys.iter().map(|k| job(k, "{}", 1)).collect();
        store.ingest(&jobs, None, None).unwrap();
        let mut claimed = 0;
        for limit in [1, 2, 3, 4, 5] {
            claimed += store.claim("catalog.product", limit, 60_000).unwrap().len();
        }
        assert_eq!(claimed, 15);
        // The cached claim was prepared once: a new LIMIT did not make SQLite build it
        // again (which costs as much as the claim itself).
        let conn = store.w();
        for sql in [CLAIMABLE, LEASE] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "the claim was re-prepared"
            );
        }
        // Nor does a lease open an ephemeral b-tree (a temporary database, opened and
        // closed by each run): neither for a RETURNING clause nor for the state's check.
        let ops: Vec<String> = conn
            .prepare(&format!("EXPLAIN {LEASE}"))
            .unwrap()
            .query_map(params![1, 0, 1], |r| r.get(1))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert!(ops.iter().all(|op| op != "OpenEphemeral"), "{ops:?}");
    }

    #[test]
    fn a_key_being_worked_on_is_not_claimed_twice() {
        let (_d, s) = store();
        s.ingest(&[job("p1", "a", 1)], None, None).unwrap();
        let first = s.claim("catalog.product", 10, 60_000).unwrap();
        s.ingest(&[job("p1", "b", 2)], None, None).unwrap();
        assert!(s.claim("catalog.product", 10, 60_000).unwrap().is_empty());
        s.finish_job(first[0].id, first[0].lease, None, None)
            .unwrap();
        let second = s.claim("catalog.product", 10, 60_000).unwrap();
        assert_eq!(second[0].payload.as_deref(), Some("b"));
    }

    #[test]
    fn a_claimed_job_not_yet_started_is_unfinished() {
        let (_d, s) = store();
        s.ingest(&[job("p1", "a", 1)], None, None).unwrap();
        assert_eq!(s.unfinished("catalog.product").unwrap(), 1);
        let claimed = s.claim("catalog.product", 10, 60_000).unwrap();
        // Leased: neither queued nor in a worker's hands yet, still not done.
        assert_eq!(s.queued("catalog.product").unwrap(), 0);
        assert_eq!(s.unfinished("catalog.product").unwrap(), 1);
        s.finish_job(claimed[0].id, claimed[0].lease, None, None)
            .unwrap();
        assert_eq!(s.unfinished("catalog.product").unwrap(), 0);
    }

    #[test]
    fn leased_jobs_are_requeued_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.ingest(&[job("p1", "a", 1)], Some(("full", "p1")), None)
                .unwrap();
            assert_eq!(s.claim("catalog.product", 10, 60_000).unwrap().len(), 1);
        } // dropped without completing: the "crash"
        let s = Store::open(dir.path()).unwrap();
        assert!(s.claim("catalog.product", 10, 60_000).unwrap().is_empty());
        assert_eq!(s.requeue_leased().unwrap(), 1);
        assert_eq!(s.claim("catalog.product", 10, 60_000).unwrap().len(), 1);
        assert_eq!(s.cursor("full").unwrap().as_deref(), Some("p1"));
    }

    #[test]
    fn job_fails_after_its_last_attempt() {
        let (_d, s) = store();
        s.ingest(&[job("p1", "a", 1)], None, None).unwrap();
        let j = s.claim("catalog.product", 1, 60_000).unwrap().remove(0);
        assert_eq!(
            s.retry_later(j.id, j.lease, "boom", 0, 2).unwrap(),
            Some(false)
        );
        let j = s.claim("catalog.product", 1, 60_000).unwrap().remove(0);
        assert_eq!(
            s.retry_later(j.id, j.lease, "boom", 0, 2).unwrap(),
            Some(true)
        );
        assert_eq!(s.catalog_counts().unwrap().failed, 1);
    }

    /// Rows of a name and a number.
    type Named = Vec<(String, i64)>;

    /// The tallies and the audit spans as kept, and as the tables they count say.
    fn kept_and_counted(conn: &Connection) -> [(Named, Named); 2] {
        let rows = |sql: &str| -> Named {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_>>()
                .unwrap()
        };
        [
            (
                rows("SELECT name, n FROM tallies WHERE n > 0 ORDER BY name"),
                rows(
                    "SELECT name, n FROM (
                       SELECT 'item_map:' || status AS name, COUNT(*) AS n FROM item_map GROUP BY status
                       UNION ALL SELECT 'jobs:' || kind || ':' || state, COUNT(*) FROM jobs GROUP BY kind, state
                       UNION ALL SELECT 'keys:' || kind, COUNT(DISTINCT key) FROM jobs GROUP BY kind)
                     ORDER BY name",
                ),
            ),
            (
                rows("SELECT block || ':' || min_at, max_at FROM audit_span ORDER BY block"),
                rows(
                    "SELECT (id >> 10) || ':' || MIN(at), MAX(at) FROM audit GROUP BY id >> 10
                     ORDER BY id >> 10",
                ),
            ),
        ]
    }

    /// Schema 17: the tallies (and the audit spans beside them) come through the
    /// migration as they were, and its triggers (which never fail with ABORT, so the
    /// statements firing them keep no statement journal) go on counting every write.
    #[test]
    fn schema_17_keeps_every_count_and_span_and_goes_on_counting() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let mut conn = Connection::open(dir.path().join("syncctl.db")).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &schema::MIGRATIONS[..16] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 16).unwrap();
            for (i, state) in ["queued", "leased", "done", "done", "failed"]
                .iter()
                .enumerate()
            {
                tx.execute(
                    "INSERT INTO jobs(kind, key, payload, state, next_attempt_at, idempotency_key, created_at, updated_at)
                     VALUES ('catalog.product', ?1, 'a', 'queued', 0, ?1, 0, 0)",
                    params![format!("p{i}")],
                )
                .unwrap();
                tx.execute(
                    "UPDATE jobs SET state = ?2 WHERE key = ?1",
                    params![format!("p{i}"), state],
                )
                .unwrap();
            }
            for (p, status) in [("p2", "synced"), ("p3", "pending")] {
                tx.execute(
                    "INSERT INTO item_map(product_id, status) VALUES (?1, ?2)",
                    params![p, status],
                )
                .unwrap();
            }
            add_spread(&tx, 1..=30, 97);
            tx.commit().unwrap();
            kept_and_counted(&conn)
        };
        assert_eq!(before[0].0, before[0].1, "schema 16 counted");
        assert_eq!(before[1].0, before[1].1, "schema 16 spanned");
        assert_eq!(before[1].0.len(), 3, "{:?}", before[1]);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(kept_and_counted(&s.r()), before, "as they were");
        // Every per-item write, through the store.
        s.ingest(
            &[job("p0", "newer", 2), job("p5", "a", 1), job("p6", "a", 1)],
            None,
            None,
        )
        .unwrap();
        // An older version of a job still queued changes nothing of it.
        s.ingest(&[job("p0", "older", 1)], None, None).unwrap();
        let jobs = s.claim("catalog.product", 8, 60_000).unwrap();
        let mut keys: Vec<(&str, Option<&str>)> = jobs
            .iter()
            .map(|j| (j.key.as_str(), j.payload.as_deref()))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [("p0", Some("newer")), ("p5", Some("a")), ("p6", Some("a"))]
        );
        s.mark_creates_pending(&[("p5".into(), "r5".into(), "{}".into())])
            .unwrap();
        let item = |j: &Job, n: &str| {
            Some(ItemMapping {
                product_id: j.key.clone(),
                item_id: Some(n.into()),
                status: "synced".into(),
                ..Default::default()
            })
        };
        s.finish_jobs(jobs.iter().map(|j| created(j, item(j, &j.key))).collect())
            .unwrap();
        s.save_mapping(&ItemMapping {
            product_id: "p3".into(),
            status: "rejected".into(),
            ..Default::default()
        })
        .unwrap();
        let [tallies, spans] = kept_and_counted(&s.r());
        assert_eq!(tallies.0, tallies.1);
        assert_eq!(spans.0, spans.1);
        assert!(
            tallies.0.contains(&("item_map:synced".into(), 4)),
            "{tallies:?}"
        );
        assert!(
            tallies.0.contains(&("jobs:catalog.product:done".into(), 5)),
            "{tallies:?}"
        );
        let p5 = s.mapping("p5").unwrap().unwrap();
        assert_eq!((p5.item_id.as_deref(), p5.pending_body), (Some("p5"), None));
    }

    #[test]
    fn counts_are_kept_with_each_write_and_survive_restart_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mapping = |id: &str, status: &str| ItemMapping {
            product_id: id.into(),
            status: status.into(),
            ..Default::default()
        };
        let expected = {
            let s = Store::open(dir.path()).unwrap();
            for p in ["p1", "p2", "p3", "p4", "p5"] {
                s.ingest(&[job(p, "a", 1)], None, None).unwrap();
            }
            // p1, p2 synced; p3 fails past its attempts; p4 in flight; p5 queued.
            let jobs = s.claim("catalog.product", 3, 60_000).unwrap();
            s.finish_job(
                jobs[0].id,
                jobs[0].lease,
                Some(&mapping("p1", "synced")),
                None,
            )
            .unwrap();
            s.finish_job(
                jobs[1].id,
                jobs[1].lease,
                Some(&mapping("p2", "synced")),
                None,
            )
            .unwrap();
            assert_eq!(
                s.retry_later(jobs[2].id, jobs[2].lease, "boom", 0, 1)
                    .unwrap(),
                Some(true)
            );
            s.claim("catalog.product", 1, 60_000).unwrap();
            // p1 again, and rejected this time.
            s.ingest(&[job("p1", "b", 2)], None, None).unwrap();
            let again = s.claim("catalog.product", 1, 60_000).unwrap();
            s.finish_job(
                again[0].id,
                again[0].lease,
                Some(&mapping("p1", "rejected")),
                None,
            )
            .unwrap();
            let c = s.catalog_counts().unwrap();
            assert_eq!(
                (
                    c.products_seen,
                    c.synced,
                    c.rejected,
                    c.failed,
                    c.in_flight,
                    c.queued
                ),
                (5, 1, 1, 1, 1, 1),
                "{c:?}"
            );
            assert_eq!(s.mapping_count().unwrap(), 2);
            c
        };
        // Restart: the same counts.
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.catalog_counts().unwrap(), expected);
        // p3 fails, then succeeds: its failure no longer counts.
        let p3 = s.requeue_failed("catalog.product", Some("p3")).unwrap();
        assert_eq!(p3, ["p3"]);
        let j = s.claim("catalog.product", 5, 60_000).unwrap();
        let j3 = j.iter().find(|j| j.key == "p3").unwrap();
        s.finish_job(j3.id, j3.lease, Some(&mapping("p3", "synced")), None)
            .unwrap();
        // Compaction removes every finished job, and no count moves.
        let before = s.catalog_counts().unwrap();
        assert_eq!((before.failed, before.synced), (0, 2));
        let removed = s.compact_jobs(now_ms() + 1).unwrap();
        assert!(removed >= 4, "{removed}");
        assert_eq!(s.catalog_counts().unwrap(), before);
        assert_eq!(s.unfinished("catalog.product").unwrap(), 2);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.catalog_counts().unwrap(), before);
    }

    /// Compaction keeps the newest job row, so its id is never given to a new job: a
    /// worker stalled past its lease on a compacted job would otherwise end the new
    /// job that took its id (leases counted from 1 again).
    #[test]
    fn a_compacted_jobs_id_is_never_given_again() {
        let (_d, s) = store();
        s.ingest(&[job("p1", "v1", 1)], None, None).unwrap();
        // (After the ingest, which dates the job by the real clock: due at `t`.)
        let t = now_ms();
        let stale = s
            .claim_at("catalog.product", 1, 1_000, t)
            .unwrap()
            .remove(0);
        let again = s
            .claim_at("catalog.product", 1, 1_000, t + 2_000)
            .unwrap()
            .remove(0);
        assert_eq!((again.id, again.lease), (stale.id, stale.lease + 1));
        let end = |j: &Job| Finished {
            job_id: j.id,
            lease: j.lease,
            mapping: None,
            audit: None,
            trace_id: None,
        };
        assert_eq!(s.finish_jobs(vec![end(&again)]).unwrap(), 1);
        assert_eq!(
            s.compact_jobs(now_ms() + 10).unwrap(),
            0,
            "the newest stays"
        );
        s.ingest(&[job("p2", "other", 1)], None, None).unwrap();
        let other = s
            .claim_at("catalog.product", 1, 1_000, t + 3_000)
            .unwrap()
            .remove(0);
        assert_eq!(other.key, "p2");
        assert_ne!(other.id, stale.id);
        assert_eq!(s.finish_jobs(vec![end(&stale)]).unwrap(), 0);
        assert_eq!(
            s.compact_jobs(now_ms() + 10).unwrap(),
            1,
            "no longer the newest"
        );
        assert_eq!(s.finish_jobs(vec![end(&other)]).unwrap(), 1);
    }

    #[test]
    fn compaction_keeps_a_failure_that_still_stands() {
        let (_d, s) = store();
        s.ingest(&[job("p1", "a", 1)], None, None).unwrap();
        let j = s.claim("catalog.product", 1, 60_000).unwrap().remove(0);
        s.finish_job(j.id, j.lease, None, None).unwrap();
        s.ingest(&[job("p1", "b", 2)], None, None).unwrap();
        let j = s.claim("catalog.product", 1, 60_000).unwrap().remove(0);
        assert_eq!(
            s.retry_later(j.id, j.lease, "boom", 0, 1).unwrap(),
            Some(true)
        );
        assert_eq!(s.compact_jobs(now_ms() + 1).unwrap(), 1);
        assert_eq!(s.failed_job_keys("catalog.product").unwrap(), ["p1"]);
        assert_eq!(s.catalog_counts().unwrap().failed, 1);
    }

    #[test]
    fn a_second_holder_of_the_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDirLock::acquire(dir.path(), "engine").unwrap();
        let err = DataDirLock::acquire(dir.path(), "engine")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("already using data dir"), "{err}");
    }
}
