//! Versioned migrations, applied in order; `PRAGMA user_version` records the last one.
//! A migration is never edited once shipped: add a new one.

use rusqlite::Connection;

pub(super) const MIGRATIONS: &[&str] = &[
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
    // 9: counts kept as counters with each write (triggers in the writing transaction),
    // so nothing counts a whole table on a timer: jobs by kind and state, the keys ever
    // queued per kind (which outlive compacted jobs), mappings and invoices by status.
    "CREATE TABLE tallies (
        name TEXT PRIMARY KEY,
        n INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE job_keys (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (kind, key)
     ) WITHOUT ROWID;
     INSERT INTO job_keys(kind, key) SELECT DISTINCT kind, key FROM jobs;
     INSERT INTO tallies(name, n) SELECT 'jobs:' || kind || ':' || state, COUNT(*) FROM jobs GROUP BY kind, state;
     INSERT INTO tallies(name, n) SELECT 'keys:' || kind, COUNT(*) FROM job_keys GROUP BY kind;
     INSERT INTO tallies(name, n) SELECT 'item_map:' || status, COUNT(*) FROM item_map GROUP BY status;
     INSERT INTO tallies(name, n) SELECT 'invoices:' || status, COUNT(*) FROM invoices GROUP BY status;
     CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO tallies(name, n) VALUES ('jobs:' || NEW.kind || ':' || NEW.state, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
        INSERT INTO job_keys(kind, key) VALUES (NEW.kind, NEW.key) ON CONFLICT DO NOTHING;
     END;
     CREATE TRIGGER jobs_tally_state AFTER UPDATE OF state ON jobs WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'jobs:' || OLD.kind || ':' || OLD.state;
        INSERT INTO tallies(name, n) VALUES ('jobs:' || NEW.kind || ':' || NEW.state, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'jobs:' || OLD.kind || ':' || OLD.state;
     END;
     CREATE TRIGGER job_keys_tally AFTER INSERT ON job_keys BEGIN
        INSERT INTO tallies(name, n) VALUES ('keys:' || NEW.kind, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER item_map_tally_insert AFTER INSERT ON item_map BEGIN
        INSERT INTO tallies(name, n) VALUES ('item_map:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER item_map_tally_status AFTER UPDATE OF status ON item_map
       WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'item_map:' || OLD.status;
        INSERT INTO tallies(name, n) VALUES ('item_map:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER item_map_tally_delete AFTER DELETE ON item_map BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'item_map:' || OLD.status;
     END;
     CREATE TRIGGER invoices_tally_insert AFTER INSERT ON invoices BEGIN
        INSERT INTO tallies(name, n) VALUES ('invoices:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER invoices_tally_status AFTER UPDATE OF status ON invoices
       WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'invoices:' || OLD.status;
        INSERT INTO tallies(name, n) VALUES ('invoices:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER invoices_tally_delete AFTER DELETE ON invoices BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'invoices:' || OLD.status;
     END;",
    // 10: the audit trail read newest first by type and by entity without sorting every
    // match (the rowid follows each index's key), and searched by text (the console's
    // `/` filter: any substring of three characters or more, case-insensitive) through a
    // trigram index kept by triggers.
    "CREATE INDEX audit_kind_id ON audit(kind);
     CREATE INDEX audit_entity_id ON audit(entity);
     CREATE VIRTUAL TABLE audit_text USING fts5(kind, entity, actor, message,
        content='audit', content_rowid='id', tokenize='trigram');
     INSERT INTO audit_text(audit_text) VALUES ('rebuild');
     CREATE TRIGGER audit_text_insert AFTER INSERT ON audit BEGIN
        INSERT INTO audit_text(rowid, kind, entity, actor, message)
          VALUES (NEW.id, NEW.kind, NEW.entity, NEW.actor, NEW.message);
     END;
     CREATE TRIGGER audit_text_delete AFTER DELETE ON audit BEGIN
        INSERT INTO audit_text(audit_text, rowid, kind, entity, actor, message)
          VALUES ('delete', OLD.id, OLD.kind, OLD.entity, OLD.actor, OLD.message);
     END;",
    // 11: the text index is filled off the write path: an insert trigger made every audit
    // line (one per item, each its own commit) write an FTS5 segment, about half of an
    // item's store time. The engine indexes new rows in batches (`Store::index_audit_text`)
    // up to `audit_indexed.upto`; text queries read the index up to there and scan the
    // few rows after it. What migration 10 indexed is all of the trail.
    "DROP TRIGGER audit_text_insert;
     CREATE TABLE audit_indexed (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        upto INTEGER NOT NULL
     );
     INSERT INTO audit_indexed(one, upto) SELECT 1, COALESCE(MAX(id), 0) FROM audit;
     DROP TRIGGER audit_text_delete;
     CREATE TRIGGER audit_text_delete AFTER DELETE ON audit
       WHEN OLD.id <= (SELECT upto FROM audit_indexed) BEGIN
        INSERT INTO audit_text(audit_text, rowid, kind, entity, actor, message)
          VALUES ('delete', OLD.id, OLD.kind, OLD.entity, OLD.actor, OLD.message);
     END;",
    // 12: the metric series downsampled for the next process, so a restarted engine's
    // charts show the last hour as it was: one point per series per 10 s (its mean, or
    // its max for the series charted by their max), `at` the first second it covers
    // (seconds since the epoch) and `secs` how many. The engine keeps the last hour and
    // deletes older points in the transaction that adds new ones.
    "CREATE TABLE series_points (
        at INTEGER NOT NULL,
        series TEXT NOT NULL,
        secs INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (at, series)
     ) WITHOUT ROWID;",
    // 13: the text index kept in few segments: a query reads every segment's list for
    // each of its trigrams, and FTS5 merges a level only once it holds 4 (a 1M-row trail
    // fed in batches had 10; a rare word's newest-first page read 2-3x the time it does
    // from one). Merged at 2 a level, as the index is fed and when it is idle
    // (`Store::merge_audit_text`).
    "INSERT INTO audit_text(audit_text, rank) VALUES ('automerge', 2);
     INSERT INTO audit_text(audit_text, rank) VALUES ('usermerge', 2);",
    // 14: the text index keyed by the entry's id negated, so newest first is FTS5's
    // ascending order. Read backwards (`ORDER BY rowid DESC`) FTS5 re-walks each page's
    // doclist index at every step: on a 1M-entry trail a rare word's newest page took
    // 15 ms that way, 1 ms ascending (SQLite 3.54). Contentless (the entries are read
    // from `audit`), deletes by rowid; under a new name, so that an older syncctl run on
    // this store fails loudly at text search instead of feeding it entries by their
    // plain ids. The engine's indexer fills it again from the oldest entry in batches
    // (`Store::index_audit_text`); text queries scan the entries not yet indexed
    // meanwhile, so nothing goes unfound.
    "DROP TRIGGER audit_text_delete;
     DROP TABLE audit_text;
     CREATE VIRTUAL TABLE audit_search USING fts5(kind, entity, actor, message,
        content='', contentless_delete=1, tokenize='trigram');
     INSERT INTO audit_search(audit_search, rank) VALUES ('automerge', 2);
     INSERT INTO audit_search(audit_search, rank) VALUES ('usermerge', 2);
     UPDATE audit_indexed SET upto = 0;
     CREATE TRIGGER audit_search_delete AFTER DELETE ON audit
       WHEN OLD.id <= (SELECT upto FROM audit_indexed) BEGIN
        DELETE FROM audit_search WHERE rowid = -OLD.id;
     END;",
    // 15: the audit trail read by time through its ids. Ids follow the order entries
    // were written and times nearly do (writers stamp before they commit; a clock may
    // step back or be wrong for a while), so `audit_span` keeps, for each block of
    // 1024 ids (`id >> 10`), the earliest and latest time ever written there: an entry
    // at or after `t` is in a block whose latest is at or after `t`, one before `t` in
    // a block whose earliest is before `t`, so a time range is an id range
    // (`audit_where`) whatever the clock did: read block by block, where a stamp far
    // off widens its own block only, or as one id range (by text). Kept by
    // triggers on every write of an entry's id or time (an operator's by hand
    // included); filled by one pass over the trail. The indexes by type and by entity
    // with time go: no read uses them any more (each was written with every entry).
    "DROP INDEX audit_kind_at;
     DROP INDEX audit_entity;
     CREATE TABLE audit_span (
        block INTEGER PRIMARY KEY,
        min_at INTEGER NOT NULL,
        max_at INTEGER NOT NULL
     );
     INSERT INTO audit_span(block, min_at, max_at)
        SELECT id >> 10, MIN(at), MAX(at) FROM audit GROUP BY id >> 10;
     CREATE TRIGGER audit_span_insert AFTER INSERT ON audit BEGIN
        INSERT INTO audit_span(block, min_at, max_at) VALUES (NEW.id >> 10, NEW.at, NEW.at)
          ON CONFLICT(block) DO UPDATE SET min_at = min(min_at, excluded.min_at),
            max_at = max(max_at, excluded.max_at);
     END;
     CREATE TRIGGER audit_span_update AFTER UPDATE OF id, at ON audit BEGIN
        INSERT INTO audit_span(block, min_at, max_at) VALUES (NEW.id >> 10, NEW.at, NEW.at)
          ON CONFLICT(block) DO UPDATE SET min_at = min(min_at, excluded.min_at),
            max_at = max(max_at, excluded.max_at);
     END;",
    // 16: a job's claim and its end no longer move an entry of an index ordered by
    // product id. `jobs_key_state` (kind, key, state) changed with each state change:
    // twice an item, each a leaf page at a place the product id sets (random), written
    // to the WAL by the commit. Its readers use `jobs_key` (kind, key), whose entries
    // never change, and the claim's "is this key in flight" reads the leased jobs'
    // keys alone (`jobs_leased_key`, a few rows: its pages are shared by every claim
    // and end of a commit).
    "DROP INDEX jobs_key_state;
     CREATE INDEX jobs_key ON jobs(kind, key);
     CREATE INDEX jobs_leased_key ON jobs(kind, key) WHERE state = 'leased';",
    // 17: the tallies' triggers, which every write of a job or a mapping fires, never
    // fail with ABORT. One that may (here: an upsert's update of a NOT NULL column)
    // made each statement that fires it keep a statement journal: a copy of every
    // page it touched first, made so the statement alone could be undone (8 % of a
    // batched sync's CPU, with the audit spans'). The counts are no longer NOT NULL
    // (each is written from itself, or as 1). The statements that fire them are `OR
    // FAIL`, each inside a transaction that is rolled back whole on any error. (The
    // audit spans' trigger still may: its block is an INTEGER PRIMARY KEY, and kept
    // WITHOUT ROWID instead the time-range reads sorted their pages again.)
    "DROP TRIGGER jobs_tally_insert;
     DROP TRIGGER jobs_tally_state;
     DROP TRIGGER jobs_tally_delete;
     DROP TRIGGER job_keys_tally;
     DROP TRIGGER item_map_tally_insert;
     DROP TRIGGER item_map_tally_status;
     DROP TRIGGER item_map_tally_delete;
     DROP TRIGGER invoices_tally_insert;
     DROP TRIGGER invoices_tally_status;
     DROP TRIGGER invoices_tally_delete;
     CREATE TABLE tallies_17 (
        name TEXT PRIMARY KEY,
        n INTEGER
     ) WITHOUT ROWID;
     INSERT INTO tallies_17(name, n) SELECT name, n FROM tallies;
     DROP TABLE tallies;
     ALTER TABLE tallies_17 RENAME TO tallies;
     CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO tallies(name, n) VALUES ('jobs:' || NEW.kind || ':' || NEW.state, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
        INSERT INTO job_keys(kind, key) VALUES (NEW.kind, NEW.key) ON CONFLICT DO NOTHING;
     END;
     CREATE TRIGGER jobs_tally_state AFTER UPDATE OF state ON jobs WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'jobs:' || OLD.kind || ':' || OLD.state;
        INSERT INTO tallies(name, n) VALUES ('jobs:' || NEW.kind || ':' || NEW.state, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'jobs:' || OLD.kind || ':' || OLD.state;
     END;
     CREATE TRIGGER job_keys_tally AFTER INSERT ON job_keys BEGIN
        INSERT INTO tallies(name, n) VALUES ('keys:' || NEW.kind, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER item_map_tally_insert AFTER INSERT ON item_map BEGIN
        INSERT INTO tallies(name, n) VALUES ('item_map:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER item_map_tally_status AFTER UPDATE OF status ON item_map
       WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'item_map:' || OLD.status;
        INSERT INTO tallies(name, n) VALUES ('item_map:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER item_map_tally_delete AFTER DELETE ON item_map BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'item_map:' || OLD.status;
     END;
     CREATE TRIGGER invoices_tally_insert AFTER INSERT ON invoices BEGIN
        INSERT INTO tallies(name, n) VALUES ('invoices:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER invoices_tally_status AFTER UPDATE OF status ON invoices
       WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'invoices:' || OLD.status;
        INSERT INTO tallies(name, n) VALUES ('invoices:' || NEW.status, 1)
          ON CONFLICT(name) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER invoices_tally_delete AFTER DELETE ON invoices BEGIN
        UPDATE tallies SET n = n - 1 WHERE name = 'invoices:' || OLD.status;
     END;",
    // 18: a job's state checked by comparisons, not by an IN list. SQLite checks `x IN
    // (5 constants)` by building an ephemeral b-tree of the constants, a temporary
    // database with its own pager and page cache opened and closed again by each
    // statement that writes a state: each job's insert, claim and end (4 b-trees per
    // item, 6 % of a batched sync's CPU). The same rule, every state accepted and
    // every other refused, is now a chain of `=`. The table's definition is rewritten
    // in place (SQLite's own procedure for changing a CHECK: every row already
    // satisfies it; `migrate` then moves the schema cookie on, so every connection
    // reads it again); a definition not as migration 1 wrote it is left as it is.
    "PRAGMA writable_schema = ON;
     UPDATE sqlite_schema
        SET sql = replace(sql, 'CHECK (state IN (''queued'',''leased'',''done'',''failed'',''rejected''))',
          'CHECK (state = ''queued'' OR state = ''leased'' OR state = ''done'' OR state = ''failed'' OR state = ''rejected'')')
      WHERE type = 'table' AND name = 'jobs';
     PRAGMA writable_schema = OFF;",
    // 19: each lease of a job numbered. A worker ends, retries, defers, gives back or
    // extends a job only while the lease it was given still stands (`state = 'leased'`
    // and the same number): one whose lease ran out, the job handed out again or
    // queued again with a newer payload meanwhile, changes nothing (it had marked the
    // newer version done unsynced). Counted up by each claim and never reset (unlike
    // `attempts`, which an operator's retry sets back to 0), so a number is never
    // given twice (nor a job's id: compaction keeps the newest row).
    "ALTER TABLE jobs ADD COLUMN lease_no INTEGER NOT NULL DEFAULT 0;",
    // 20: an operator's resyncs of each product counted. A job that read the mapping
    // before a resync ended by writing the hash it computed, marking the product in
    // line again: the resync's own job then found nothing to write, and the Item stayed
    // as the reconciliation had found it. A mapping's hash is now written only while
    // the count is the one read with it (`save_mapping`).
    "ALTER TABLE item_map ADD COLUMN resyncs INTEGER NOT NULL DEFAULT 0;",
];

/// Brings the database to the schema this syncctl knows; refuses one a newer syncctl
/// has migrated (it would read and write it by rules it does not know).
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current as usize > MIGRATIONS.len() {
        anyhow::bail!(
            "the database is at schema version {current}, newer than this syncctl knows ({}): a newer syncctl has run on it; run that one (or a later one), or restore a backup taken before it ran",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // The schema cookie moved on after each migration, so that every connection
        // (this one included) reads the schema again: a migration may rewrite a
        // definition in place (18), which SQLite's own DDL would have announced.
        let cookie: i64 = tx.pragma_query_value(None, "schema_version", |r| r.get(0))?;
        tx.pragma_update(None, "schema_version", cookie + 1)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        // Read now (a statement that reads the database checks the cookie; one only
        // prepared, as an EXPLAIN, would still be compiled from the schema read before).
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })?;
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

    /// A store a newer syncctl migrated is refused, not read by older rules (as an older
    /// text index fed entries by keys the newer one does not use), and left as it was.
    #[test]
    fn a_store_of_a_newer_syncctl_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let newer = MIGRATIONS.len() as i64 + 1;
        Connection::open(dir.path().join("syncctl.db"))
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        let e = crate::store::Store::open(dir.path())
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains(&format!("schema version {newer}, newer than this syncctl")),
            "{e}"
        );
        let v: i64 = Connection::open(dir.path().join("syncctl.db"))
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, newer);
    }

    #[test]
    fn a_store_indexed_by_the_old_trigger_counts_as_indexed_to_its_last_entry() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..10] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 10).unwrap();
        conn.execute_batch(
            "INSERT INTO audit(at, kind, entity, actor, message)
               VALUES (1, 'item', 'prod_1', 'engine', 'created'),
                      (2, 'item', 'prod_2', 'engine', 'created');",
        )
        .unwrap();
        // Migration 11 alone (14 re-keys the index and starts it again from nothing).
        conn.execute_batch(MIGRATIONS[10]).unwrap();
        let upto: i64 = conn
            .query_row("SELECT upto FROM audit_indexed", [], |r| r.get(0))
            .unwrap();
        assert_eq!(upto, 2);
        // A new entry no longer reaches the index; purging an indexed one still leaves it.
        conn.execute_batch(
            "INSERT INTO audit(at, kind, entity, actor, message) VALUES (3, 'item', 'prod_3', 'engine', 'created');
             DELETE FROM audit WHERE id IN (1, 3);",
        )
        .unwrap();
        let found: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM audit_text WHERE audit_text MATCH '\"prod\"'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 1);
        conn.execute_batch("INSERT INTO audit_text(audit_text) VALUES ('integrity-check')")
            .unwrap();
    }

    /// Migration 14: a trail indexed by id (as migration 13 left it) is found whole while
    /// the re-keyed index is filled again, and after; paging holds across the two parts.
    #[test]
    fn a_trail_indexed_by_id_is_found_whole_while_and_after_it_is_indexed_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(dir.path().join("syncctl.db")).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..13] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 13).unwrap();
            for i in 0..300 {
                tx.execute(
                    "INSERT INTO audit(at, kind, entity, actor, message) VALUES (?1, 'item', ?2, 'engine', ?3)",
                    rusqlite::params![i, format!("prod_{}", i % 30), format!("created Item {i}")],
                )
                .unwrap();
            }
            tx.execute_batch(
                "INSERT INTO audit_text(rowid, kind, entity, actor, message)
                   SELECT id, kind, entity, actor, message FROM audit;
                 UPDATE audit_indexed SET upto = (SELECT MAX(id) FROM audit);",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = crate::store::Store::open(dir.path()).unwrap();
        let filter = |before_id| crate::protocol::AuditFilter {
            text: Some("rod_2 item".into()),
            limit: 4,
            before_id,
            ..Default::default()
        };
        let all = |s: &crate::store::Store| {
            let mut ids = Vec::new();
            let mut before = None;
            loop {
                let page = s.audit_query(&filter(before)).unwrap();
                let Some(last) = page.last() else { break };
                before = Some(last.id);
                ids.extend(page.iter().map(|e| e.id));
            }
            (ids, s.audit_count(&filter(None)).unwrap())
        };
        // prod_2 and prod_20 to prod_29, ten entries each.
        let want: Vec<i64> = (1..=300)
            .rev()
            .filter(|id| matches!((id - 1) % 30, 2 | 20..=29))
            .collect();
        assert_eq!(want.len(), 110);
        assert_eq!(all(&s), (want.clone(), 110), "nothing indexed yet");
        assert_eq!(s.index_audit_text(120).unwrap(), 120);
        assert_eq!(all(&s), (want.clone(), 110), "the oldest 120 indexed");
        while s.index_audit_text(100).unwrap() > 0 {}
        assert_eq!(all(&s), (want, 110), "all indexed");
        s.w()
            .execute_batch("INSERT INTO audit_search(audit_search) VALUES ('integrity-check')")
            .unwrap();
    }

    /// Migration 18 rewrites the jobs' state check in place: the rows stay, the same
    /// states are accepted and refused (by the migrating connection and a new one), and
    /// a job's writes no longer build an ephemeral b-tree for the check's IN list.
    #[test]
    fn the_job_state_check_is_rewritten_in_place_and_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syncctl.db");
        let mut conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..17] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 17).unwrap();
        let insert = |conn: &Connection, key: &str, state: &str| {
            conn.execute(
                "INSERT INTO jobs(kind, key, state, next_attempt_at, idempotency_key, created_at, updated_at)
                   VALUES ('catalog.product', ?1, ?2, 0, ?1, 0, 0)",
                [key, state],
            )
        };
        let ephemeral = |conn: &Connection, sql: &str| -> usize {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let ops: Vec<String> = stmt
                .query_map([], |r| r.get(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            ops.iter().filter(|op| *op == "OpenEphemeral").count()
        };
        let writes = [
            "UPDATE jobs SET state = 'leased' WHERE id = 1",
            "UPDATE jobs SET state = 'done' WHERE id = 1",
            "INSERT INTO jobs(kind, key, state, next_attempt_at, idempotency_key, created_at, updated_at)
               VALUES ('catalog.product', 'x', 'queued', 0, 'x', 0, 0)",
        ];
        for w in writes {
            assert_eq!(ephemeral(&conn, w), 1, "before 18, the IN list: {w}");
        }
        for (i, state) in ["queued", "leased", "done", "failed", "rejected"]
            .iter()
            .enumerate()
        {
            insert(&conn, &format!("p{i}"), state).unwrap();
        }
        migrate(&mut conn).unwrap();
        for w in writes {
            assert_eq!(ephemeral(&conn, w), 0, "{w}");
        }
        let other = Connection::open(&path).unwrap();
        let rows: i64 = other
            .query_row("SELECT count(*) FROM jobs WHERE key LIKE 'p_'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows, 5);
        for c in [&conn, &other] {
            for state in ["queued", "leased", "done", "failed", "rejected"] {
                insert(c, &format!("{state}-{:p}", c), state).unwrap();
            }
            for state in ["bogus", "Done", ""] {
                let e = insert(c, "refused", state).unwrap_err();
                assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
            }
            let e = c
                .execute("UPDATE jobs SET state = 'paused' WHERE id = 1", [])
                .unwrap_err();
            assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
        }
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        assert_eq!(
            conn.query_row(
                "SELECT n FROM tallies WHERE name = 'jobs:catalog.product:queued'",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
            3
        );
    }

    #[test]
    fn the_counters_start_from_what_an_older_store_holds() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        conn.execute_batch(
            "INSERT INTO jobs(kind, key, state, next_attempt_at, idempotency_key, created_at, updated_at)
               VALUES ('catalog.product', 'p1', 'done', 0, 'a', 0, 0),
                      ('catalog.product', 'p1', 'queued', 0, 'b', 0, 0),
                      ('catalog.product', 'p2', 'failed', 0, 'c', 0, 0);
             INSERT INTO item_map(product_id, status) VALUES ('p1', 'synced'), ('p2', 'rejected');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let tally = |name: &str| -> i64 {
            conn.query_row("SELECT n FROM tallies WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .unwrap_or(0)
        };
        assert_eq!(tally("jobs:catalog.product:done"), 1);
        assert_eq!(tally("jobs:catalog.product:queued"), 1);
        assert_eq!(tally("jobs:catalog.product:failed"), 1);
        assert_eq!(tally("keys:catalog.product"), 2);
        assert_eq!(tally("item_map:synced"), 1);
        assert_eq!(tally("item_map:rejected"), 1);
        // And they follow writes from then on.
        conn.execute_batch(
            "UPDATE jobs SET state = 'leased' WHERE state = 'queued';
             INSERT INTO jobs(kind, key, state, next_attempt_at, idempotency_key, created_at, updated_at)
               VALUES ('catalog.product', 'p3', 'queued', 0, 'd', 0, 0);
             UPDATE item_map SET status = 'synced' WHERE product_id = 'p2';
             DELETE FROM jobs WHERE state = 'done';",
        )
        .unwrap();
        assert_eq!(tally("jobs:catalog.product:done"), 0);
        assert_eq!(tally("jobs:catalog.product:leased"), 1);
        assert_eq!(tally("jobs:catalog.product:queued"), 1);
        assert_eq!(tally("keys:catalog.product"), 3);
        assert_eq!(tally("item_map:synced"), 2);
        assert_eq!(tally("item_map:rejected"), 0);
    }
}
