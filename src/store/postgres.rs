//! The job queue on PostgreSQL, so engines on several boxes share one queue.
//!
//! Claims take rows with `FOR UPDATE SKIP LOCKED` (two boxes never wait on, nor take,
//! the same job); a claim is a lease owned by one handle, extended by its heartbeat;
//! a lease that ran out (a box that crashed or hung) is put back in the queue by the
//! next claim of any box. Every write a holder makes checks it still holds the lease,
//! so a box that lost its job cannot end it under the box that now has it. New work
//! sends a NOTIFY; each handle LISTENs on a connection of its own and wakes its
//! claimers, and claimers poll all the same (a NOTIFY nobody listens to is lost).
//!
//! Time is always a parameter from the handle's clock, never `now()` in SQL, so tests
//! move it. Each operation is one statement (server-side functions for the multi-step
//! ones): one round trip per claim, heartbeat or finish.
//!
//! Every row carries its company (migration 2): one database serves many companies,
//! and a handle sees only its own. Here so far: the queue (jobs, Stripe event ids,
//! cursors) and the catalog's Item mapping, written with the job's finish in one
//! statement. Invoices, audit, tokens and limiter state are still each box's SQLite
//! (see `Store`).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::{Held, ItemMapping, Job, NewJob, PendingCreate};

/// The channel new work is announced on (payload: the job kind).
const CHANNEL: &str = "syncctl_jobs";

/// Versioned migrations, applied in order under an advisory lock (boxes starting at
/// once migrate once); `syncctl.schema_migrations` records each. Never edit a shipped
/// one: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the job queue, Stripe event ids (dedupe), cursors, and the queue's functions.
    r#"
    CREATE TABLE syncctl.jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        payload TEXT,
        version BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('queued','leased','done','failed','rejected')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        lease_until BIGINT,
        lease_owner TEXT,
        last_error TEXT,
        idempotency_key TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    -- One queued job per key (a newer payload merges into it), and, enforced by the
    -- database whatever the boxes race, one leased job per key.
    CREATE UNIQUE INDEX jobs_one_queued_per_key ON syncctl.jobs(kind, key) WHERE state = 'queued';
    CREATE UNIQUE INDEX jobs_one_leased_per_key ON syncctl.jobs(kind, key) WHERE state = 'leased';
    CREATE INDEX jobs_due ON syncctl.jobs(kind, next_attempt_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_leases ON syncctl.jobs(kind, lease_until) WHERE state = 'leased';
    CREATE INDEX jobs_failed ON syncctl.jobs(kind, key) WHERE state = 'failed';
    CREATE INDEX jobs_key_state ON syncctl.jobs(kind, key, state);
    -- The keys ever queued (outlive their jobs).
    CREATE TABLE syncctl.job_keys (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE TABLE syncctl.stripe_events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        via TEXT NOT NULL
    );
    CREATE TABLE syncctl.cursors (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );

    -- Puts job p_id back in the queue (when p_owner is set: only while p_owner holds
    -- its lease). When a newer job of its key was queued meanwhile, the two merge: the
    -- queued one keeps the newest payload and this one ends. False: not held.
    CREATE FUNCTION syncctl.requeue(p_id BIGINT, p_now BIGINT, p_delay BIGINT, p_error TEXT,
                                    p_refund BOOLEAN, p_owner TEXT) RETURNS BOOLEAN
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    DECLARE j jobs%ROWTYPE;
    BEGIN
        SELECT * INTO j FROM jobs WHERE id = p_id FOR UPDATE;
        IF NOT FOUND OR (p_owner IS NOT NULL
                         AND (j.state <> 'leased' OR j.lease_owner IS DISTINCT FROM p_owner)) THEN
            RETURN FALSE;
        END IF;
        UPDATE jobs SET payload = CASE WHEN j.version > version THEN j.payload ELSE payload END,
                        version = GREATEST(version, j.version), updated_at = p_now
         WHERE kind = j.kind AND key = j.key AND state = 'queued' AND id <> p_id;
        IF NOT FOUND THEN
            BEGIN
                UPDATE jobs SET state = 'queued', lease_until = NULL, lease_owner = NULL,
                       next_attempt_at = p_now + p_delay, last_error = COALESCE(p_error, last_error),
                       attempts = CASE WHEN p_refund THEN GREATEST(attempts - 1, 0) ELSE attempts END,
                       updated_at = p_now
                 WHERE id = p_id;
                IF p_delay <= 0 THEN
                    PERFORM pg_notify('syncctl_jobs', j.kind);
                END IF;
                RETURN TRUE;
            EXCEPTION WHEN unique_violation THEN
                -- A newer job of the key was queued at the same moment: merge into it.
                UPDATE jobs SET payload = CASE WHEN j.version > version THEN j.payload ELSE payload END,
                                version = GREATEST(version, j.version), updated_at = p_now
                 WHERE kind = j.kind AND key = j.key AND state = 'queued' AND id <> p_id;
                IF NOT FOUND THEN
                    -- ...and already claimed again: leave this one as it was (its lease
                    -- runs out and a later claim puts it back).
                    RETURN FALSE;
                END IF;
            END;
        END IF;
        UPDATE jobs SET state = 'done', lease_until = NULL, lease_owner = NULL,
               last_error = 'merged into a newer job', updated_at = p_now
         WHERE id = p_id;
        RETURN TRUE;
    END $$;

    -- Claims up to p_limit due jobs of p_kind for p_owner, never two of one key at
    -- once, never a row another box is claiming (SKIP LOCKED). Leases that ran out go
    -- back to the queue first.
    CREATE FUNCTION syncctl.claim(p_kind TEXT, p_limit INTEGER, p_now BIGINT, p_lease_ms BIGINT,
                                  p_owner TEXT)
    RETURNS TABLE (id BIGINT, kind TEXT, key TEXT, payload TEXT, attempts INTEGER, idempotency_key TEXT)
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    DECLARE e BIGINT;
    BEGIN
        FOR e IN SELECT x.id FROM jobs x
                  WHERE x.kind = p_kind AND x.state = 'leased' AND x.lease_until < p_now
                  ORDER BY x.lease_until LIMIT 100 FOR UPDATE SKIP LOCKED LOOP
            PERFORM requeue(e, p_now, 0, 'lease expired', FALSE, NULL);
        END LOOP;
        RETURN QUERY
        UPDATE jobs j SET state = 'leased', lease_until = p_now + p_lease_ms, lease_owner = p_owner,
               attempts = j.attempts + 1, updated_at = p_now
         WHERE j.id IN (
               SELECT q.id FROM jobs q
                WHERE q.kind = p_kind AND q.state = 'queued' AND q.next_attempt_at <= p_now
                  AND NOT EXISTS (SELECT 1 FROM jobs l
                                   WHERE l.kind = q.kind AND l.key = q.key AND l.state = 'leased')
                ORDER BY q.next_attempt_at, q.id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED)
        RETURNING j.id, j.kind, j.key, j.payload, j.attempts, j.idempotency_key;
    END $$;

    -- Enqueues jobs with an optional cursor and Stripe event id, in one transaction; an
    -- event id already seen makes it a no-op (false).
    CREATE FUNCTION syncctl.ingest(p_now BIGINT, p_event_id TEXT, p_event_type TEXT, p_via TEXT,
                                   p_kinds TEXT[], p_keys TEXT[], p_payloads TEXT[],
                                   p_versions BIGINT[], p_cursor TEXT, p_cursor_value TEXT)
    RETURNS BOOLEAN
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    DECLARE i INTEGER; k TEXT;
    BEGIN
        IF p_event_id IS NOT NULL THEN
            INSERT INTO stripe_events(id, type, received_at, via)
            VALUES (p_event_id, p_event_type, p_now, p_via) ON CONFLICT (id) DO NOTHING;
            IF NOT FOUND THEN
                RETURN FALSE;
            END IF;
        END IF;
        FOR i IN 1 .. COALESCE(array_length(p_kinds, 1), 0) LOOP
            INSERT INTO jobs(kind, key, payload, version, state, attempts, next_attempt_at,
                             idempotency_key, created_at, updated_at)
            VALUES (p_kinds[i], p_keys[i], p_payloads[i], p_versions[i], 'queued', 0, p_now,
                    p_kinds[i] || ':' || p_keys[i], p_now, p_now)
            ON CONFLICT (kind, key) WHERE state = 'queued' DO UPDATE SET
                payload = CASE WHEN excluded.version >= jobs.version THEN excluded.payload
                               ELSE jobs.payload END,
                version = GREATEST(excluded.version, jobs.version),
                updated_at = excluded.updated_at;
            INSERT INTO job_keys(kind, key) VALUES (p_kinds[i], p_keys[i]) ON CONFLICT DO NOTHING;
        END LOOP;
        IF p_cursor IS NOT NULL THEN
            INSERT INTO cursors(name, value, updated_at) VALUES (p_cursor, p_cursor_value, p_now)
            ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;
        END IF;
        FOR k IN SELECT DISTINCT unnest(p_kinds) LOOP
            PERFORM pg_notify('syncctl_jobs', k);
        END LOOP;
        RETURN TRUE;
    END $$;

    -- Ends a failed attempt: failed past the last one, else back in the queue after
    -- p_delay. NULL: p_owner no longer holds the lease (nothing changed).
    CREATE FUNCTION syncctl.retry_later(p_id BIGINT, p_error TEXT, p_delay BIGINT,
                                        p_max_attempts INTEGER, p_now BIGINT, p_owner TEXT)
    RETURNS BOOLEAN
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    BEGIN
        UPDATE jobs SET state = 'failed', lease_until = NULL, lease_owner = NULL,
               last_error = p_error, updated_at = p_now
         WHERE id = p_id AND state = 'leased' AND lease_owner = p_owner
           AND attempts >= p_max_attempts;
        IF FOUND THEN
            RETURN TRUE;
        END IF;
        IF requeue(p_id, p_now, p_delay, p_error, FALSE, p_owner) THEN
            RETURN FALSE;
        END IF;
        RETURN NULL;
    END $$;
    "#,
    // 2: every row carries its company (one database, many companies: the same product
    // id, event id or cursor name in two companies are two rows), in every unique and
    // partial index, and the claim and ingest take it.
    r#"
    ALTER TABLE syncctl.jobs ADD COLUMN company TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE syncctl.jobs ALTER COLUMN company DROP DEFAULT;
    ALTER TABLE syncctl.job_keys ADD COLUMN company TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE syncctl.job_keys ALTER COLUMN company DROP DEFAULT;
    ALTER TABLE syncctl.job_keys DROP CONSTRAINT job_keys_pkey, ADD PRIMARY KEY (company, kind, key);
    ALTER TABLE syncctl.stripe_events ADD COLUMN company TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE syncctl.stripe_events ALTER COLUMN company DROP DEFAULT;
    ALTER TABLE syncctl.stripe_events DROP CONSTRAINT stripe_events_pkey, ADD PRIMARY KEY (company, id);
    ALTER TABLE syncctl.cursors ADD COLUMN company TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE syncctl.cursors ALTER COLUMN company DROP DEFAULT;
    ALTER TABLE syncctl.cursors DROP CONSTRAINT cursors_pkey, ADD PRIMARY KEY (company, name);
    DROP INDEX syncctl.jobs_one_queued_per_key, syncctl.jobs_one_leased_per_key, syncctl.jobs_due,
               syncctl.jobs_leases, syncctl.jobs_failed, syncctl.jobs_key_state;
    CREATE UNIQUE INDEX jobs_one_queued_per_key ON syncctl.jobs(company, kind, key) WHERE state = 'queued';
    CREATE UNIQUE INDEX jobs_one_leased_per_key ON syncctl.jobs(company, kind, key) WHERE state = 'leased';
    CREATE INDEX jobs_due ON syncctl.jobs(company, kind, next_attempt_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_leases ON syncctl.jobs(company, kind, lease_until) WHERE state = 'leased';
    CREATE INDEX jobs_failed ON syncctl.jobs(company, kind, key) WHERE state = 'failed';
    CREATE INDEX jobs_key_state ON syncctl.jobs(company, kind, key, state);
    DROP FUNCTION syncctl.claim(TEXT, INTEGER, BIGINT, BIGINT, TEXT);
    DROP FUNCTION syncctl.ingest(BIGINT, TEXT, TEXT, TEXT, TEXT[], TEXT[], TEXT[], BIGINT[], TEXT, TEXT);

    -- As in 1, merging only within the job's own company.
    CREATE OR REPLACE FUNCTION syncctl.requeue(p_id BIGINT, p_now BIGINT, p_delay BIGINT, p_error TEXT,
                                               p_refund BOOLEAN, p_owner TEXT) RETURNS BOOLEAN
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    DECLARE j jobs%ROWTYPE;
    BEGIN
        SELECT * INTO j FROM jobs WHERE id = p_id FOR UPDATE;
        IF NOT FOUND OR (p_owner IS NOT NULL
                         AND (j.state <> 'leased' OR j.lease_owner IS DISTINCT FROM p_owner)) THEN
            RETURN FALSE;
        END IF;
        UPDATE jobs SET payload = CASE WHEN j.version > version THEN j.payload ELSE payload END,
                        version = GREATEST(version, j.version), updated_at = p_now
         WHERE company = j.company AND kind = j.kind AND key = j.key AND state = 'queued' AND id <> p_id;
        IF NOT FOUND THEN
            BEGIN
                UPDATE jobs SET state = 'queued', lease_until = NULL, lease_owner = NULL,
                       next_attempt_at = p_now + p_delay, last_error = COALESCE(p_error, last_error),
                       attempts = CASE WHEN p_refund THEN GREATEST(attempts - 1, 0) ELSE attempts END,
                       updated_at = p_now
                 WHERE id = p_id;
                IF p_delay <= 0 THEN
                    PERFORM pg_notify('syncctl_jobs', j.kind);
                END IF;
                RETURN TRUE;
            EXCEPTION WHEN unique_violation THEN
                UPDATE jobs SET payload = CASE WHEN j.version > version THEN j.payload ELSE payload END,
                                version = GREATEST(version, j.version), updated_at = p_now
                 WHERE company = j.company AND kind = j.kind AND key = j.key AND state = 'queued' AND id <> p_id;
                IF NOT FOUND THEN
                    RETURN FALSE;
                END IF;
            END;
        END IF;
        UPDATE jobs SET state = 'done', lease_until = NULL, lease_owner = NULL,
               last_error = 'merged into a newer job', updated_at = p_now
         WHERE id = p_id;
        RETURN TRUE;
    END $$;

    -- As in 1, within p_company.
    CREATE FUNCTION syncctl.claim(p_company TEXT, p_kind TEXT, p_limit INTEGER, p_now BIGINT,
                                  p_lease_ms BIGINT, p_owner TEXT)
    RETURNS TABLE (id BIGINT, kind TEXT, key TEXT, payload TEXT, attempts INTEGER, idempotency_key TEXT)
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    DECLARE e BIGINT;
    BEGIN
        FOR e IN SELECT x.id FROM jobs x
                  WHERE x.company = p_company AND x.kind = p_kind AND x.state = 'leased'
                    AND x.lease_until < p_now
                  ORDER BY x.lease_until LIMIT 100 FOR UPDATE SKIP LOCKED LOOP
            PERFORM requeue(e, p_now, 0, 'lease expired', FALSE, NULL);
        END LOOP;
        RETURN QUERY
        UPDATE jobs j SET state = 'leased', lease_until = p_now + p_lease_ms, lease_owner = p_owner,
               attempts = j.attempts + 1, updated_at = p_now
         WHERE j.id IN (
               SELECT q.id FROM jobs q
                WHERE q.company = p_company AND q.kind = p_kind AND q.state = 'queued'
                  AND q.next_attempt_at <= p_now
                  AND NOT EXISTS (SELECT 1 FROM jobs l
                                   WHERE l.company = q.company AND l.kind = q.kind AND l.key = q.key
                                     AND l.state = 'leased')
                ORDER BY q.next_attempt_at, q.id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED)
        RETURNING j.id, j.kind, j.key, j.payload, j.attempts, j.idempotency_key;
    END $$;

    -- As in 1, within p_company.
    CREATE FUNCTION syncctl.ingest(p_company TEXT, p_now BIGINT, p_event_id TEXT, p_event_type TEXT,
                                   p_via TEXT, p_kinds TEXT[], p_keys TEXT[], p_payloads TEXT[],
                                   p_versions BIGINT[], p_cursor TEXT, p_cursor_value TEXT)
    RETURNS BOOLEAN
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    DECLARE i INTEGER; k TEXT;
    BEGIN
        IF p_event_id IS NOT NULL THEN
            INSERT INTO stripe_events(company, id, type, received_at, via)
            VALUES (p_company, p_event_id, p_event_type, p_now, p_via) ON CONFLICT (company, id) DO NOTHING;
            IF NOT FOUND THEN
                RETURN FALSE;
            END IF;
        END IF;
        FOR i IN 1 .. COALESCE(array_length(p_kinds, 1), 0) LOOP
            INSERT INTO jobs(company, kind, key, payload, version, state, attempts, next_attempt_at,
                             idempotency_key, created_at, updated_at)
            VALUES (p_company, p_kinds[i], p_keys[i], p_payloads[i], p_versions[i], 'queued', 0, p_now,
                    p_kinds[i] || ':' || p_keys[i], p_now, p_now)
            ON CONFLICT (company, kind, key) WHERE state = 'queued' DO UPDATE SET
                payload = CASE WHEN excluded.version >= jobs.version THEN excluded.payload
                               ELSE jobs.payload END,
                version = GREATEST(excluded.version, jobs.version),
                updated_at = excluded.updated_at;
            INSERT INTO job_keys(company, kind, key) VALUES (p_company, p_kinds[i], p_keys[i])
            ON CONFLICT DO NOTHING;
        END LOOP;
        IF p_cursor IS NOT NULL THEN
            INSERT INTO cursors(company, name, value, updated_at)
            VALUES (p_company, p_cursor, p_cursor_value, p_now)
            ON CONFLICT (company, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;
        END IF;
        FOR k IN SELECT DISTINCT unnest(p_kinds) LOOP
            PERFORM pg_notify('syncctl_jobs', k);
        END LOOP;
        RETURN TRUE;
    END $$;
    "#,
    // 3: the Item mapping (Stripe product <-> QuickBooks Item) per company, so every box
    // sees the Items the others created (and their pending creates, replayed with the
    // same request id, never made twice). Written with the job's finish in one
    // statement.
    r#"
    CREATE TABLE syncctl.item_map (
        company TEXT NOT NULL,
        product_id TEXT NOT NULL,
        item_id TEXT,
        sync_token TEXT,
        item_name TEXT,
        synced_hash TEXT,
        source_updated BIGINT,
        pending_request_id TEXT,
        pending_body TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        synced_at BIGINT,
        PRIMARY KEY (company, product_id)
    );
    CREATE UNIQUE INDEX item_map_item ON syncctl.item_map(company, item_id) WHERE item_id IS NOT NULL;
    CREATE INDEX item_map_status ON syncctl.item_map(company, status);
    "#,
    // The per-company quota every box shares (see pg_quota.rs) and the company's OAuth
    // tokens, refreshed by one box at a time (see pg_tokens.rs).
    super::pg_quota::MIGRATION,
    // The compliance records (invoices, history, tombstones, DIAN counter) per company,
    // with leases: see `pg_invoices`.
    super::pg_invoices::MIGRATION,
    // An operator's resyncs of each product counted: a mapping's hash is written only
    // while the count is the one read with it (as SQLite's migration 20).
    "ALTER TABLE syncctl.item_map ADD COLUMN resyncs BIGINT NOT NULL DEFAULT 0;",
];

/// The upsert of a mapping (`$1` company, `$2..$9` the mapping, `$10` now), clearing
/// any pending create: as SQLite's `save_mapping`.
/// `$11`/`$12`: the job (id, lease owner) it is written for, whose lease must stand
/// (its row locked until commit); NULL: no job's. `$13`: the resyncs counted when the
/// mapping was read ([`ItemMapping::resyncs`]): another count since, and the hash is
/// left out of line.
const SAVE_MAPPING: &str = "WITH held AS (SELECT 1 FROM syncctl.jobs
            WHERE company = $1 AND id = $11::bigint AND state = 'leased' AND lease_owner = $12::text
            FOR SHARE)
    INSERT INTO syncctl.item_map(company, product_id, item_id, sync_token, item_name,
        synced_hash, source_updated, pending_request_id, pending_body, status, reason, synced_at)
    SELECT $1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8, $9, $10
     WHERE $11::bigint IS NULL OR EXISTS (SELECT 1 FROM held)
    ON CONFLICT (company, product_id) DO UPDATE SET item_id = excluded.item_id,
        sync_token = excluded.sync_token, item_name = excluded.item_name,
        synced_hash = CASE WHEN item_map.resyncs = $13::bigint THEN excluded.synced_hash END,
        source_updated = excluded.source_updated,
        pending_request_id = NULL, pending_body = NULL, status = excluded.status,
        reason = excluded.reason, synced_at = excluded.synced_at";

/// Ends the jobs whose leases still stand and, in the same statement (one
/// transaction), stores the mappings of those jobs: a job is never done without its
/// mapping, nor a mapping of a job whose lease was lost written. `$1` company, `$2`
/// each job's lease (see [`PgQueue::lease_owner`]), `$3` now, `$4` job ids, `$5..$12`
/// the mappings' columns (a NULL product id: no mapping), `$13` the resyncs each was
/// read with (see [`SAVE_MAPPING`]). The ids ended, each with the hash its mapping was
/// saved with (NULL: none, or left out of line).
const FINISH: &str = "WITH done AS (
        UPDATE syncctl.jobs SET state = 'done', lease_until = NULL, lease_owner = NULL,
               last_error = NULL, updated_at = $3
         WHERE id = ANY($4) AND company = $1 AND state = 'leased'
           AND (id, lease_owner) IN (SELECT * FROM unnest($4::bigint[], $2::text[]))
        RETURNING id),
     m AS (SELECT * FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
                                $9::text[], $10::bigint[], $11::text[], $12::text[], $13::bigint[])
                      AS u(job_id, product_id, item_id, sync_token, item_name, synced_hash,
                           source_updated, status, reason, resyncs)),
     saved AS (
        INSERT INTO syncctl.item_map(company, product_id, item_id, sync_token, item_name,
               synced_hash, source_updated, pending_request_id, pending_body, status, reason,
               synced_at, resyncs)
        SELECT $1, m.product_id, m.item_id, m.sync_token, m.item_name, m.synced_hash,
               m.source_updated, NULL, NULL, m.status, m.reason, $3, m.resyncs
          FROM m JOIN done ON done.id = m.job_id WHERE m.product_id IS NOT NULL
        ON CONFLICT (company, product_id) DO UPDATE SET item_id = excluded.item_id,
            sync_token = excluded.sync_token, item_name = excluded.item_name,
            -- (`excluded.resyncs`: the count read; a new row starts at it, 0 as there
            -- was none, and an existing row's is never written over.)
            synced_hash = CASE WHEN item_map.resyncs = excluded.resyncs
                               THEN excluded.synced_hash END,
            source_updated = excluded.source_updated,
            pending_request_id = NULL, pending_body = NULL, status = excluded.status,
            reason = excluded.reason, synced_at = excluded.synced_at
        RETURNING product_id, synced_hash)
    SELECT done.id, s.synced_hash FROM done
      LEFT JOIN m ON m.job_id = done.id
      LEFT JOIN saved s ON s.product_id = m.product_id";

/// A job (`f`, of company `$1` and kind `$2`) that failed past its last attempt and
/// still stands.
const FAILED_STILL: &str = "f.company = $1 AND f.kind = $2 AND f.state = 'failed'
    AND NOT EXISTS (SELECT 1 FROM syncctl.jobs d WHERE d.company = f.company AND d.kind = f.kind AND d.key = f.key AND d.id > f.id AND d.state = 'done')
    AND NOT EXISTS (SELECT 1 FROM syncctl.jobs q WHERE q.company = f.company AND q.kind = f.kind AND q.key = f.key AND q.state IN ('queued', 'leased'))";

/// `n` answers from the rows' first column, each an ordinal (from 1) of `unnest …
/// WITH ORDINALITY`: true where a row names it.
fn by_ordinal(n: usize, rows: &[tokio_postgres::Row]) -> Vec<bool> {
    let mut found = vec![false; n];
    for r in rows {
        let k: i64 = r.get(0);
        if let Some(slot) = usize::try_from(k - 1).ok().and_then(|i| found.get_mut(i)) {
            *slot = true;
        }
    }
    found
}

/// What went wrong talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres connection pool: {0}")]
    Pool(String),
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Self::Db(e),
            other => Self::Pool(other.to_string()),
        }
    }
}

pub type PgResult<T> = std::result::Result<T, PgError>;

/// One box's handle on the shared queue: a connection pool, a listening connection,
/// and the owner name its leases carry.
///
/// Each claim's leases carry the owner name and the claim's number (`owner#n`,
/// [`PgQueue::lease_owner`]; [`Job::lease`] is `n`): a worker of this box whose lease
/// ran out, the job then claimed again by this same box, no longer holds it (its end
/// had marked done a job claimed again, or queued again with a newer payload).
#[derive(Clone)]
pub struct PgQueue {
    pool: Pool,
    owner: Arc<str>,
    /// The company whose rows this handle reads and writes (never another's).
    company: Arc<str>,
    /// Bumped on each NOTIFY heard (and when the listener reconnects: it may have
    /// missed some); claimers wait on it.
    wakes: watch::Receiver<u64>,
    /// The listening task, stopped when the last handle goes.
    _listener: Arc<AbortOnDrop>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The number of this process's next claim on the shared queue (see [`PgQueue`]).
static NEXT_LEASE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

/// Connections a handle's pool keeps.
const POOL_SIZE: usize = 8;

impl PgQueue {
    /// Connects to `url`, migrates, and listens for new work. `owner` names this
    /// handle's leases: unique per process (a restart under the same name may take back
    /// its leases at once with [`PgQueue::requeue_leased`]).
    pub async fn connect(url: &str, owner: &str, company: &str) -> anyhow::Result<Self> {
        let config = parse_url(url)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| anyhow::anyhow!("postgres connection pool: {e}"))?;
        migrate(&pool).await?;
        let (tx, rx) = watch::channel(0u64);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(listen(config, tx, Some(ready_tx)));
        // Listening before the first claim, so no NOTIFY sent after `connect` is missed.
        ready_rx
            .await
            .map_err(|_| anyhow::anyhow!("postgres: the listening connection ended"))?
            .map_err(|e| anyhow::anyhow!("postgres: cannot listen for new work: {e}"))?;
        Ok(Self {
            pool,
            owner: owner.into(),
            company: company.into(),
            wakes: rx,
            _listener: Arc::new(AbortOnDrop(task)),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// What a job's `lease_owner` holds while lease `lease` of this box stands.
    fn lease_owner(&self, lease: i64) -> String {
        format!("{}#{lease}", self.owner)
    }

    /// The connection pool, for the company's other shared tables (quota, tokens,
    /// invoices).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn company(&self) -> &str {
        &self.company
    }

    /// How many wake-ups this handle has heard (see [`PgQueue::wait_for_work`]).
    pub fn wakes_seen(&self) -> u64 {
        *self.wakes.borrow()
    }

    /// Waits until a wake-up after `seen` arrives (true) or `timeout` passes (false:
    /// poll anyway).
    pub async fn wait_for_work(&self, seen: u64, timeout: Duration) -> bool {
        let mut rx = self.wakes.clone();
        if *rx.borrow_and_update() != seen {
            return true;
        }
        matches!(
            tokio::time::timeout(timeout, rx.changed()).await,
            Ok(Ok(()))
        )
    }

    async fn client(&self) -> PgResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    pub async fn ingest(
        &self,
        jobs: &[NewJob<'_>],
        cursor: Option<(&str, &str)>,
        event: Option<(&str, &str, &str)>,
        now_ms: i64,
    ) -> PgResult<bool> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT syncctl.ingest($1, $2, $3, $4, $5, $6::text[], $7::text[], $8::text[], $9::bigint[], $10, $11)",
            )
            .await?;
        let kinds: Vec<&str> = jobs.iter().map(|j| j.kind).collect();
        let keys: Vec<&str> = jobs.iter().map(|j| j.key).collect();
        let payloads: Vec<Option<&str>> = jobs.iter().map(|j| j.payload).collect();
        let versions: Vec<i64> = jobs.iter().map(|j| j.version).collect();
        let row = c
            .query_one(
                &stmt,
                &[
                    &&*self.company,
                    &now_ms,
                    &event.map(|e| e.0),
                    &event.map(|e| e.1),
                    &event.map(|e| e.2),
                    &kinds,
                    &keys,
                    &payloads,
                    &versions,
                    &cursor.map(|c| c.0),
                    &cursor.map(|c| c.1),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn claim(
        &self,
        kind: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> PgResult<Vec<Job>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT * FROM syncctl.claim($1, $2, $3, $4, $5, $6)")
            .await?;
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        // Numbered in this process (its owner name is its own): never given twice.
        let lease = NEXT_LEASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = c
            .query(
                &stmt,
                &[
                    &&*self.company,
                    &kind,
                    &limit,
                    &now_ms,
                    &lease_ms,
                    &self.lease_owner(lease),
                ],
            )
            .await?;
        let mut jobs: Vec<Job> = rows
            .iter()
            .map(|r| Job {
                id: r.get(0),
                kind: r.get(1),
                key: r.get(2),
                payload: r.get(3),
                attempts: r.get::<_, i32>(4).max(0) as u32,
                idempotency_key: r.get(5),
                lease,
                mapping: None,
            })
            .collect();
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Extends the `leases` (job id, [`Job::lease`]) that still stand to `now +
    /// lease_ms`; the ids still held (a missing one was lost, to another box or
    /// another claim).
    pub async fn heartbeat(
        &self,
        leases: &[(i64, i64)],
        lease_ms: i64,
        now_ms: i64,
    ) -> PgResult<Vec<i64>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE syncctl.jobs SET lease_until = $2::bigint + $3::bigint, updated_at = $2
                  WHERE id = ANY($1) AND state = 'leased'
                    AND (id, lease_owner) IN (SELECT * FROM unnest($1::bigint[], $4::text[]))
                 RETURNING id",
            )
            .await?;
        let ids: Vec<i64> = leases.iter().map(|l| l.0).collect();
        let owners: Vec<String> = leases.iter().map(|l| self.lease_owner(l.1)).collect();
        let rows = c.query(&stmt, &[&ids, &now_ms, &lease_ms, &owners]).await?;
        let mut held: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        held.sort_unstable();
        Ok(held)
    }

    /// Marks the mappings of `products` out of line, as SQLite's
    /// [`super::Store::mark_out_of_line`]; how many mappings there were to mark.
    pub async fn mark_out_of_line(&self, products: &[String]) -> PgResult<usize> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE syncctl.item_map SET synced_hash = NULL, resyncs = resyncs + 1
                  WHERE company = $1 AND product_id = ANY($2)",
            )
            .await?;
        let n = c.execute(&stmt, &[&&*self.company, &products]).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Which of `held` still stand (a read).
    pub async fn holding(&self, held: &[Held]) -> PgResult<Vec<bool>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT u.k FROM unnest($2::bigint[], $3::text[]) WITH ORDINALITY AS u(id, owner, k)
                   JOIN syncctl.jobs j ON j.id = u.id AND j.lease_owner = u.owner
                  WHERE j.company = $1 AND j.state = 'leased'",
            )
            .await?;
        let ids: Vec<i64> = held.iter().map(|h| h.job_id).collect();
        let owners: Vec<String> = held.iter().map(|h| self.lease_owner(h.lease)).collect();
        let rows = c.query(&stmt, &[&&*self.company, &ids, &owners]).await?;
        Ok(by_ordinal(held.len(), &rows))
    }

    /// Marks a job done; false when this handle no longer holds it.
    pub async fn finish(&self, job_id: i64, lease: i64, now_ms: i64) -> PgResult<bool> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "UPDATE syncctl.jobs SET state = 'done', lease_until = NULL, lease_owner = NULL,
                        last_error = NULL, updated_at = $2
                  WHERE id = $1 AND state = 'leased' AND lease_owner = $3",
            )
            .await?;
        Ok(
            c.execute(&stmt, &[&job_id, &now_ms, &self.lease_owner(lease)])
                .await?
                == 1,
        )
    }

    /// Some(true): failed past its last attempt; Some(false): queued again after
    /// `delay_ms`; None: no longer this handle's.
    pub async fn retry_later(
        &self,
        job_id: i64,
        lease: i64,
        error: &str,
        delay_ms: i64,
        max_attempts: u32,
        now_ms: i64,
    ) -> PgResult<Option<bool>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT syncctl.retry_later($1, $2, $3, $4, $5, $6)")
            .await?;
        let max = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        let row = c
            .query_one(
                &stmt,
                &[
                    &job_id,
                    &error,
                    &delay_ms,
                    &max,
                    &now_ms,
                    &self.lease_owner(lease),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// A job that can never succeed as is; false when no longer this handle's. With
    /// `product`, its mapping is marked rejected in the same statement, only if the
    /// lease stood, as SQLite's [`super::Store::reject_marking`] does.
    pub async fn reject(
        &self,
        job_id: i64,
        lease: i64,
        reason: &str,
        product: Option<&str>,
        now_ms: i64,
    ) -> PgResult<bool> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "WITH r AS (
                    UPDATE syncctl.jobs SET state = 'rejected', lease_until = NULL, lease_owner = NULL,
                           last_error = $2, updated_at = $3
                     WHERE id = $1 AND state = 'leased' AND lease_owner = $4
                    RETURNING id),
                  m AS (
                    INSERT INTO syncctl.item_map(company, product_id, status, reason, synced_at)
                    SELECT $5, $6::text, 'rejected', $2, $3 FROM r WHERE $6::text IS NOT NULL
                    ON CONFLICT (company, product_id) DO UPDATE SET status = 'rejected',
                        reason = excluded.reason, synced_at = excluded.synced_at,
                        pending_request_id = NULL, pending_body = NULL)
                 SELECT count(*) FROM r",
            )
            .await?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &job_id,
                    &reason,
                    &now_ms,
                    &self.lease_owner(lease),
                    &&*self.company,
                    &product,
                ],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// Puts a held job back without counting the attempt, due after `delay_ms` (with
    /// `reason`) or at once (none); false when no longer this handle's.
    pub async fn put_back(
        &self,
        job_id: i64,
        lease: i64,
        reason: Option<&str>,
        delay_ms: i64,
        now_ms: i64,
    ) -> PgResult<bool> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT syncctl.requeue($1, $2, $3, $4, TRUE, $5)")
            .await?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &job_id,
                    &now_ms,
                    &delay_ms,
                    &reason,
                    &self.lease_owner(lease),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Puts back every lease this handle's owner name holds (a box restarting under the
    /// same name), by any claim (and as leases were written before they were numbered);
    /// how many. Other boxes' leases are left to run out.
    pub async fn requeue_leased(&self, now_ms: i64) -> PgResult<usize> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT count(*) FILTER (WHERE syncctl.requeue(id, $1, 0, NULL, FALSE, NULL))
                   FROM (SELECT id FROM syncctl.jobs WHERE state = 'leased'
                          AND (lease_owner = $2 OR starts_with(lease_owner, $2 || '#'))
                          AND company = $3 ORDER BY id FOR UPDATE SKIP LOCKED) held",
            )
            .await?;
        let row = c
            .query_one(&stmt, &[&now_ms, &&*self.owner, &&*self.company])
            .await?;
        Ok(row.get::<_, i64>(0).max(0) as usize)
    }

    /// Keys of `kind` failed past their last attempt and still standing, oldest first.
    pub async fn failed_job_keys(&self, kind: &str) -> PgResult<Vec<String>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT f.key FROM syncctl.jobs f WHERE {FAILED_STILL} GROUP BY f.key ORDER BY MIN(f.updated_at), f.key"
            ))
            .await?;
        Ok(c.query(&stmt, &[&&*self.company, &kind])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Puts failed jobs (of one key, or all) back with fresh attempts; the keys.
    pub async fn requeue_failed(
        &self,
        kind: &str,
        key: Option<&str>,
        now_ms: i64,
    ) -> PgResult<Vec<String>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "UPDATE syncctl.jobs SET state = 'queued', attempts = 0, next_attempt_at = $4,
                        lease_until = NULL, lease_owner = NULL,
                        last_error = 'retried by an operator after: ' || COALESCE(last_error, '?'),
                        updated_at = $4
                  WHERE id IN (SELECT MAX(f.id) FROM syncctl.jobs f WHERE {FAILED_STILL}
                                 AND ($3::text IS NULL OR f.key = $3) GROUP BY f.key)
                 RETURNING key"
            ))
            .await?;
        let rows = c
            .query(&stmt, &[&&*self.company, &kind, &key, &now_ms])
            .await?;
        let mut keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        keys.sort();
        if !keys.is_empty() {
            c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &kind])
                .await?;
        }
        Ok(keys)
    }

    /// The queue's counts for `kind`, read from partial indexes (no counter rows: one
    /// every claim updates would serialise all boxes on it).
    pub async fn counts(&self, kind: &str) -> PgResult<super::queue::QueueCounts> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT (SELECT count(*) FROM syncctl.job_keys WHERE company = $1 AND kind = $2),
                        (SELECT count(*) FROM syncctl.jobs WHERE company = $1 AND kind = $2 AND state = 'queued'),
                        (SELECT count(*) FROM syncctl.jobs WHERE company = $1 AND kind = $2 AND state = 'leased'),
                        (SELECT count(DISTINCT f.key) FROM syncctl.jobs f WHERE {FAILED_STILL}),
                        (SELECT min(created_at) FROM syncctl.jobs WHERE company = $1 AND kind = $2 AND state = 'queued')"
            ))
            .await?;
        let r = c.query_one(&stmt, &[&&*self.company, &kind]).await?;
        let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
        Ok(super::queue::QueueCounts {
            keys_seen: n(0),
            queued: n(1),
            in_flight: n(2),
            failed: n(3),
            oldest_queued_ms: r.get(4),
        })
    }

    /// Jobs of `kind` queued, counted up to `cap` at most: a walk of at most `cap`
    /// entries of the queued-per-key index, for a lister holding back while the queue
    /// is full (the full [`PgQueue::counts`] costs a millisecond and more of the
    /// server's time, and the lister asks as often as items complete).
    pub async fn queued_up_to(&self, kind: &str, cap: u64) -> PgResult<u64> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM syncctl.jobs
                   WHERE company = $1 AND kind = $2 AND state = 'queued' LIMIT $3) q",
            )
            .await?;
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        Ok(c.query_one(&stmt, &[&&*self.company, &kind, &cap])
            .await?
            .get::<_, i64>(0)
            .max(0) as u64)
    }

    /// Jobs of `kind` not done: queued, leased, or failed with no later success.
    pub async fn unfinished(&self, kind: &str) -> PgResult<u64> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT count(*) FROM syncctl.jobs j WHERE j.company = $1 AND j.kind = $2
                   AND (j.state IN ('queued', 'leased')
                   OR (j.state = 'failed' AND NOT EXISTS (SELECT 1 FROM syncctl.jobs d
                        WHERE d.company = j.company AND d.kind = j.kind AND d.key = j.key
                          AND d.id > j.id AND d.state = 'done')))",
            )
            .await?;
        Ok(c.query_one(&stmt, &[&&*self.company, &kind])
            .await?
            .get::<_, i64>(0)
            .max(0) as u64)
    }

    /// Removes jobs done before `before_ms`, and the failed ones a done one among them
    /// superseded, in batches; how many. Nothing unfinished goes; the keys seen stay.
    pub async fn compact_jobs(&self, before_ms: i64) -> PgResult<usize> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "WITH superseded AS (
                    DELETE FROM syncctl.jobs WHERE id IN (
                      SELECT f.id FROM syncctl.jobs f WHERE f.company = $2 AND f.state = 'failed'
                         AND EXISTS (SELECT 1 FROM syncctl.jobs d WHERE d.company = f.company
                                       AND d.kind = f.kind AND d.key = f.key
                                       AND d.id > f.id AND d.state = 'done' AND d.updated_at < $1)
                       LIMIT 5000) RETURNING 1),
                 finished AS (
                    DELETE FROM syncctl.jobs WHERE id IN (
                      SELECT id FROM syncctl.jobs WHERE company = $2 AND state = 'done'
                         AND updated_at < $1 LIMIT 5000)
                    RETURNING 1)
                 SELECT (SELECT count(*) FROM superseded) + (SELECT count(*) FROM finished)",
            )
            .await?;
        let mut removed = 0;
        loop {
            let n = c
                .query_one(&stmt, &[&before_ms, &&*self.company])
                .await?
                .get::<_, i64>(0)
                .max(0) as usize;
            removed += n;
            if n == 0 {
                return Ok(removed);
            }
        }
    }

    pub async fn set_cursor(&self, name: &str, value: &str, now_ms: i64) -> PgResult<()> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO syncctl.cursors(company, name, value, updated_at) VALUES ($4, $1, $2, $3)
                 ON CONFLICT (company, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .await?;
        c.execute(&stmt, &[&name, &value, &now_ms, &&*self.company])
            .await?;
        Ok(())
    }

    pub async fn cursor(&self, name: &str) -> PgResult<Option<String>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT value FROM syncctl.cursors WHERE company = $2 AND name = $1")
            .await?;
        Ok(c.query_opt(&stmt, &[&name, &&*self.company])
            .await?
            .map(|r| r.get(0)))
    }
}

impl PgQueue {
    /// The mappings of `product_ids` there are (one round trip for all).
    pub async fn mappings(&self, product_ids: &[&str]) -> PgResult<Vec<ItemMapping>> {
        if product_ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT product_id, item_id, sync_token, item_name, synced_hash, source_updated,
                        pending_request_id, pending_body, status, reason, resyncs
                   FROM syncctl.item_map WHERE company = $1 AND product_id = ANY($2)",
            )
            .await?;
        let rows = c.query(&stmt, &[&&*self.company, &product_ids]).await?;
        Ok(rows
            .iter()
            .map(|r| ItemMapping {
                product_id: r.get(0),
                item_id: r.get(1),
                sync_token: r.get(2),
                item_name: r.get(3),
                synced_hash: r.get(4),
                source_updated: r.get(5),
                pending_request_id: r.get(6),
                pending_body: r.get(7),
                status: r.get(8),
                reason: r.get(9),
                resyncs: r.get(10),
            })
            .collect())
    }

    /// The product an Item is mapped to, if any.
    pub async fn product_of_item(&self, item_id: &str) -> PgResult<Option<String>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT product_id FROM syncctl.item_map WHERE company = $1 AND item_id = $2",
            )
            .await?;
        Ok(c.query_opt(&stmt, &[&&*self.company, &item_id])
            .await?
            .map(|r| r.get(0)))
    }

    /// Mappings by status: (all, synced, rejected).
    pub async fn mapping_counts(&self) -> PgResult<(u64, u64, u64)> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT count(*), count(*) FILTER (WHERE status = 'synced'),
                        count(*) FILTER (WHERE status = 'rejected')
                   FROM syncctl.item_map WHERE company = $1",
            )
            .await?;
        let r = c.query_one(&stmt, &[&&*self.company]).await?;
        let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
        Ok((n(0), n(1), n(2)))
    }

    /// Records creates about to be sent, in one statement: a box that dies before the
    /// answer leaves them for whoever takes the job next, who replays them (a single
    /// create's with its request id; a batch's went out under the batch's id, so its
    /// replay is a create of its own, found by name if the batch's landed).
    ///
    /// A create made for a job ([`PendingCreate::held`]) is recorded only while that
    /// exact lease stands: the job's row is locked (`FOR SHARE`) until the statement
    /// commits, so a claim skips it meanwhile (`SKIP LOCKED`: it takes it at a later
    /// claim), and a claim that took it first leaves the create unrecorded. Two creates
    /// of one product: the later is kept. Whether each was recorded.
    pub async fn mark_creates_pending(&self, creates: &[PendingCreate]) -> PgResult<Vec<bool>> {
        if creates.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "WITH u AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
                              WITH ORDINALITY AS u(p, r, b, job_id, owner, k)),
                      held AS (SELECT j.id, j.lease_owner FROM syncctl.jobs j
                                WHERE j.company = $1 AND j.id = ANY($5) AND j.state = 'leased'
                                  AND (j.id, j.lease_owner) IN (SELECT job_id, owner FROM u WHERE job_id IS NOT NULL)
                                ORDER BY j.id
                                FOR SHARE),
                      ok AS (SELECT u.* FROM u
                              WHERE u.job_id IS NULL OR (u.job_id, u.owner) IN (SELECT id, lease_owner FROM held)),
                      marked AS (
                        INSERT INTO syncctl.item_map(company, product_id, status, pending_request_id, pending_body)
                        SELECT DISTINCT ON (p) $1, p, 'pending', r, b FROM ok ORDER BY p, k DESC
                        ON CONFLICT (company, product_id) DO UPDATE SET
                           pending_request_id = excluded.pending_request_id, pending_body = excluded.pending_body)
                 SELECT k FROM ok",
            )
            .await?;
        let pids: Vec<&str> = creates.iter().map(|c| c.product_id.as_str()).collect();
        let rids: Vec<&str> = creates.iter().map(|c| c.request_id.as_str()).collect();
        let bodies: Vec<&str> = creates.iter().map(|c| c.body.as_str()).collect();
        let jobs: Vec<Option<i64>> = creates.iter().map(|c| c.held.map(|h| h.job_id)).collect();
        let owners: Vec<Option<String>> = creates
            .iter()
            .map(|c| c.held.map(|h| self.lease_owner(h.lease)))
            .collect();
        let rows = c
            .query(
                &stmt,
                &[&&*self.company, &pids, &rids, &bodies, &jobs, &owners],
            )
            .await?;
        Ok(by_ordinal(creates.len(), &rows))
    }

    /// Stores a mapping, clearing any pending create.
    pub async fn save_mapping(&self, m: &ItemMapping, now_ms: i64) -> PgResult<()> {
        self.save_mapping_if(m, None, now_ms).await.map(|_| ())
    }

    /// [`Self::save_mapping`] on behalf of a job mid-way: false, and nothing written,
    /// once the job's lease no longer stands (the row locked as for
    /// [`Self::mark_creates_pending`]).
    pub async fn save_mapping_held(
        &self,
        m: &ItemMapping,
        held: Held,
        now_ms: i64,
    ) -> PgResult<bool> {
        self.save_mapping_if(m, Some(held), now_ms).await
    }

    async fn save_mapping_if(
        &self,
        m: &ItemMapping,
        held: Option<Held>,
        now_ms: i64,
    ) -> PgResult<bool> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(SAVE_MAPPING).await?;
        let job_id = held.map(|h| h.job_id);
        let owner = held.map(|h| self.lease_owner(h.lease));
        let saved = c
            .execute(
                &stmt,
                &[
                    &&*self.company,
                    &m.product_id,
                    &m.item_id,
                    &m.sync_token,
                    &m.item_name,
                    &m.synced_hash,
                    &m.source_updated,
                    &m.status,
                    &m.reason,
                    &now_ms,
                    &job_id,
                    &owner,
                    &m.resyncs,
                ],
            )
            .await?;
        Ok(saved > 0)
    }

    /// Ends the jobs whose leases (job id, [`Job::lease`], mapping) still stand, each
    /// with its mapping, in one statement; the ids ended (a missing one was lost, to
    /// another box or another claim: nothing of it written), in order, each with the
    /// hash its mapping was saved with (none where a resync came since it was read).
    pub async fn finish_with(
        &self,
        jobs: &[(i64, i64, Option<&ItemMapping>)],
        now_ms: i64,
    ) -> PgResult<Vec<(i64, Option<String>)>> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(FINISH).await?;
        let ids: Vec<i64> = jobs.iter().map(|j| j.0).collect();
        let owners: Vec<String> = jobs.iter().map(|j| self.lease_owner(j.1)).collect();
        let col = |f: fn(&ItemMapping) -> Option<&str>| -> Vec<Option<&str>> {
            jobs.iter().map(|j| j.2.and_then(f)).collect()
        };
        let products = col(|m| Some(m.product_id.as_str()));
        let items = col(|m| m.item_id.as_deref());
        let tokens = col(|m| m.sync_token.as_deref());
        let names = col(|m| m.item_name.as_deref());
        let hashes = col(|m| m.synced_hash.as_deref());
        let statuses = col(|m| Some(m.status.as_str()));
        let reasons = col(|m| m.reason.as_deref());
        let sources: Vec<Option<i64>> = jobs
            .iter()
            .map(|j| j.2.and_then(|m| m.source_updated))
            .collect();
        let resyncs: Vec<Option<i64>> = jobs.iter().map(|j| j.2.map(|m| m.resyncs)).collect();
        let rows = c
            .query(
                &stmt,
                &[
                    &&*self.company,
                    &owners,
                    &now_ms,
                    &ids,
                    &products,
                    &items,
                    &tokens,
                    &names,
                    &hashes,
                    &sources,
                    &statuses,
                    &reasons,
                    &resyncs,
                ],
            )
            .await?;
        let mut held: Vec<(i64, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        held.sort_unstable();
        Ok(held)
    }

    /// When a job of `kind` can next be claimed (ms), if any: the next queued job
    /// falling due or the next lease running out.
    pub async fn next_claimable(&self, kind: &str) -> PgResult<Option<i64>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT LEAST((SELECT min(next_attempt_at) FROM syncctl.jobs
                                WHERE company = $1 AND kind = $2 AND state = 'queued'),
                              (SELECT min(lease_until) FROM syncctl.jobs
                                WHERE company = $1 AND kind = $2 AND state = 'leased'))",
            )
            .await?;
        Ok(c.query_one(&stmt, &[&&*self.company, &kind]).await?.get(0))
    }
}

/// Applies the migrations not yet applied, each in its own transaction, under an
/// advisory lock so boxes starting together migrate once.
async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    let mut c = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => {
            anyhow::anyhow!("postgres: cannot connect: {e}")
        }
        other => anyhow::anyhow!("postgres: cannot connect: {other}"),
    })?;
    let tx = c.transaction().await?;
    // An arbitrary constant: syncctl's migration lock.
    tx.execute("SELECT pg_advisory_xact_lock(7318120427)", &[])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS syncctl;
         CREATE TABLE IF NOT EXISTS syncctl.schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let done: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM syncctl.schema_migrations",
            &[],
        )
        .await?
        .get(0);
    if done as usize > MIGRATIONS.len() {
        anyhow::bail!(
            "postgres: the database is at schema version {done}, newer than this syncctl knows ({}): upgrade syncctl",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("postgres: migration {version} failed: {e}"))?;
        tx.execute(
            "INSERT INTO syncctl.schema_migrations(version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The name this process's connections carry in `pg_stat_activity` (unless the URL names
/// one): which box holds which connection, for an operator; and, once a box is gone, that
/// its connections are closed (everything it sent has been taken).
pub fn application_name() -> String {
    format!("syncctl pid {} on {}", std::process::id(), hostname())
}

/// This machine's name ("host" where it cannot be read): in lease owners and connection
/// names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}

/// `store.url` as a connection config, named by [`application_name`] unless it names
/// itself.
pub(crate) fn parse_url(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| anyhow::anyhow!("store.url is not a valid postgres:// URL"))?;
    if config.get_application_name().is_none() {
        config.application_name(application_name());
    }
    Ok(config)
}

/// The listening connection: LISTENs, bumps `wakes` on each NOTIFY, reconnects when
/// the connection drops (bumping `wakes` then too: a NOTIFY may have been missed).
async fn listen(
    config: tokio_postgres::Config,
    wakes: watch::Sender<u64>,
    mut ready: Option<tokio::sync::oneshot::Sender<Result<(), tokio_postgres::Error>>>,
) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = config.connect(NoTls).await;
        let (client, mut connection) = match connected {
            Ok(c) => c,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                tracing::warn!(
                    "store: the postgres listening connection failed: {e}; claims poll meanwhile"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
        // Aborted with this task too (a handle dropped while the connection is idle).
        let pump = AbortOnDrop(tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(m) => {
                        if msg_tx.send(m).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }));
        match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                } else {
                    wakes.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                drop(pump);
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        while let Some(m) = msg_rx.recv().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                wakes.send_modify(|n| *n += 1);
            }
        }
        drop(client);
        drop(pump);
        tracing::warn!("store: the postgres listening connection dropped; reconnecting");
        tokio::time::sleep(backoff).await;
    }
}
