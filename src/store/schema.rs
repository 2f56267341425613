//! Versioned migrations, applied in order; `PRAGMA user_version` records the last one.
//! A migration is never edited once shipped: add a new one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: job queue, catalog mapping, event dedupe, cursors, audit, oauth.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        payload TEXT,
        version INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('queued','leased','done','failed','rejected')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        lease_until INTEGER,
        last_error TEXT,
        idempotency_key TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE UNIQUE INDEX jobs_one_queued_per_key ON jobs(kind, key) WHERE state = 'queued';
     CREATE INDEX jobs_due ON jobs(kind, state, next_attempt_at);
     CREATE INDEX jobs_key_state ON jobs(kind, key, state);
     CREATE TABLE item_map (
        product_id TEXT PRIMARY KEY,
        item_id TEXT,
        sync_token TEXT,
        item_name TEXT,
        synced_hash TEXT,
        source_updated INTEGER,
        pending_request_id TEXT,
        pending_body TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        synced_at INTEGER
     );
     CREATE UNIQUE INDEX item_map_item ON item_map(item_id) WHERE item_id IS NOT NULL;
     CREATE TABLE stripe_events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        via TEXT NOT NULL
     );
     CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        entity TEXT NOT NULL,
        actor TEXT NOT NULL,
        message TEXT NOT NULL
     );
     CREATE INDEX audit_kind_at ON audit(kind, at);
     CREATE TABLE oauth (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        bootstrap_hash TEXT NOT NULL,
        refresh_token TEXT NOT NULL,
        access_token TEXT,
        access_expires_at INTEGER,
        updated_at INTEGER NOT NULL
     );",
    // 2: invoice compliance records and their history; named counters.
    "CREATE TABLE invoices (
        stripe_id TEXT PRIMARY KEY,
        number TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL DEFAULT 'invoice',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER,
        sending INTEGER NOT NULL DEFAULT 0,
        alegra_id TEXT,
        cufe TEXT,
        issue_date TEXT NOT NULL,
        buyer_id TEXT NOT NULL,
        buyer_name TEXT NOT NULL,
        total INTEGER NOT NULL,
        data TEXT NOT NULL,
        last_code TEXT,
        last_message TEXT,
        contingency INTEGER NOT NULL DEFAULT 0,
        deadline_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        validated_at INTEGER
     );
     CREATE INDEX invoices_due ON invoices(status, next_at);
     CREATE TABLE invoice_history (
        id INTEGER PRIMARY KEY,
        stripe_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        code TEXT,
        message TEXT NOT NULL,
        actor TEXT NOT NULL
     );
     CREATE INDEX invoice_history_of ON invoice_history(stripe_id, id);
     CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     );",
    // 3: invoices removed by retention, so a late event or listing never issues one again.
    "CREATE TABLE purged_invoices (
        stripe_id TEXT PRIMARY KEY,
        number TEXT NOT NULL,
        cufe TEXT,
        purged_at INTEGER NOT NULL
     );",
    // 4: housekeeping reads by change time (backups) and creation time (daily report).
    "CREATE INDEX invoices_updated ON invoices(updated_at);
     CREATE INDEX invoices_created ON invoices(created_at);",
    // 5: the audit trail records the trace of the work that wrote it, and is read by
    // time and by entity.
    "ALTER TABLE audit ADD COLUMN trace_id TEXT;
     CREATE INDEX audit_at ON audit(at);
     CREATE INDEX audit_entity ON audit(entity, at);",
    // 6: the store's identity (matched against the marker file beside it, so a lost or
    // emptied database is noticed), and the documents found at Alegra when a store is
    // rebuilt on purpose (each adopted by its Stripe invoice, never issued again).
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );
     INSERT INTO meta(key, value) VALUES ('store_id', lower(hex(randomblob(16))));
     CREATE TABLE alegra_documents (
        number TEXT PRIMARY KEY,
        alegra_id TEXT NOT NULL,
        stripe_id TEXT,
        legal_status TEXT,
        cufe TEXT,
        date TEXT NOT NULL DEFAULT '',
        found_at INTEGER NOT NULL
     );
     CREATE INDEX alegra_documents_stripe ON alegra_documents(stripe_id);",
    // 7: each downstream's rate limiter as the last process left it (requests in its
    // last minute, a 429's pushback still running, the learned rate and ceiling), so a
    // restart does not open with a burst the service's window cannot take.
    "CREATE TABLE limiter_state (
        service TEXT PRIMARY KEY,
        at INTEGER NOT NULL,
        recent INTEGER NOT NULL,
        paused_until INTEGER,
        factor REAL NOT NULL,
        ceiling REAL
     );",
    // 8: what operators set on the engine that must outlive a restart, as JSON by key
    // (`thresholds.expiring`: temporary thresholds and the values they return to;
    // `alerts.silences`: silences still running).
    "CREATE TABLE engine_state (
        key TEXT PRIMARY KEY,
        at INTEGER NOT NULL,
        value TEXT NOT NULL
     );",
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }
}
