//! Compliance records (invoices, their history, the DIAN number counter) on PostgreSQL,
//! so engines on several boxes share each company's invoices.
//!
//! An invoice is worked on by one box at a time: a claim takes due rows with
//! `FOR UPDATE SKIP LOCKED` and leases them to its handle (`lease_owner`,
//! `lease_until`), extended by heartbeats while a send or read is under way. Every
//! write the holder makes while working on one (the send's durable mark, the state
//! machine's transitions, a postponement) checks it still holds an unexpired lease: a
//! box that lost its invoice changes nothing. A send is marked (`sending`) before the
//! request leaves; a box that dies mid-send leaves the mark, and the first claim after
//! its lease ran out turns the invoice UNKNOWN (read at Alegra before anything is sent
//! again), as SQLite's start-up recovery does for one box.
//!
//! Time is a parameter from the caller's clock, never `now()` in SQL. Every row carries
//! its company.

use std::sync::Arc;

use deadpool_postgres::Pool;

use super::invoices::Change;
use super::postgres::{PgQueue, PgResult};
use crate::protocol::{ComplianceCounts, HistoryEntry, InvoiceRecord, LocalInvoice, Status};

/// The migration appended to `postgres::MIGRATIONS`: the compliance records per company.
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE syncctl.invoices (
        company TEXT NOT NULL,
        stripe_id TEXT NOT NULL,
        number TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'invoice',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at BIGINT,
        sending BOOLEAN NOT NULL DEFAULT FALSE,
        alegra_id TEXT,
        cufe TEXT,
        issue_date TEXT NOT NULL,
        buyer_id TEXT NOT NULL,
        buyer_name TEXT NOT NULL,
        total BIGINT NOT NULL,
        data TEXT NOT NULL,
        last_code TEXT,
        last_message TEXT,
        contingency BOOLEAN NOT NULL DEFAULT FALSE,
        deadline_at BIGINT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        validated_at BIGINT,
        lease_owner TEXT,
        lease_until BIGINT,
        PRIMARY KEY (company, stripe_id)
    );
    CREATE UNIQUE INDEX invoices_number ON syncctl.invoices(company, number);
    CREATE INDEX invoices_due ON syncctl.invoices(company, status, next_at);
    CREATE INDEX invoices_sending ON syncctl.invoices(company, lease_until) WHERE sending;
    CREATE TABLE syncctl.invoice_history (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        company TEXT NOT NULL,
        stripe_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        code TEXT,
        message TEXT NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE INDEX invoice_history_of ON syncctl.invoice_history(company, stripe_id, id);
    CREATE TABLE syncctl.purged_invoices (
        company TEXT NOT NULL,
        stripe_id TEXT NOT NULL,
        number TEXT NOT NULL,
        cufe TEXT,
        purged_at BIGINT NOT NULL,
        PRIMARY KEY (company, stripe_id)
    );
    -- The DIAN number counter per company: the last sequence used.
    CREATE TABLE syncctl.invoice_counters (
        company TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
"#;

const COLUMNS: &str = "stripe_id, number, kind, status, attempts, next_at, sending, alegra_id, cufe, issue_date,
    buyer_id, buyer_name, total, data, last_code, last_message, contingency, deadline_at, created_at, updated_at, validated_at";

/// `COLUMNS` qualified by `i.` (for statements joining another table).
fn columns_of(alias: &str) -> String {
    COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statuses the engine works on by itself, as an SQL list (as SQLite's).
fn active(reads_only: bool) -> &'static str {
    if reads_only {
        "'UNKNOWN','SENT'"
    } else {
        "'PENDING','RETRY','UNKNOWN','SENT','FALLBACK'"
    }
}

/// The message of a send a box began and never recorded, found after its lease ran out.
pub const CUT_SHORT: &str = "the box sending it stopped (its lease ran out mid-send): outcome unknown, read at Alegra before anything is sent again";

fn row(r: &tokio_postgres::Row) -> PgResult<InvoiceRecord> {
    let status: String = r.get(3);
    let data: String = r.get(13);
    let invoice: LocalInvoice = serde_json::from_str(&data)
        .map_err(|e| super::postgres::PgError::Pool(format!("invoice data unreadable: {e}")))?;
    Ok(InvoiceRecord {
        stripe_id: r.get(0),
        number: r.get(1),
        kind: r.get(2),
        status: Status::parse(&status).unwrap_or(Status::Unknown),
        attempts: r.get::<_, i32>(4).max(0) as u32,
        next_at_ms: r.get(5),
        sending: r.get(6),
        alegra_id: r.get(7),
        cufe: r.get(8),
        issue_date: r.get(9),
        buyer_id: r.get(10),
        buyer_name: r.get(11),
        total: r.get(12),
        invoice,
        last_code: r.get(14),
        last_message: r.get(15),
        contingency: r.get(16),
        deadline_at_ms: r.get(17),
        created_at_ms: r.get(18),
        updated_at_ms: r.get(19),
        validated_at_ms: r.get(20),
    })
}

fn rows(rs: &[tokio_postgres::Row]) -> PgResult<Vec<InvoiceRecord>> {
    rs.iter().map(row).collect()
}

/// One box's handle on a company's invoices in the shared database.
#[derive(Clone)]
pub struct PgInvoices {
    pool: Pool,
    owner: Arc<str>,
    company: Arc<str>,
}

impl PgInvoices {
    /// The invoices of `queue`'s company, through its pool, leased as its owner.
    pub fn of(queue: &PgQueue) -> Self {
        Self {
            pool: queue.pool().clone(),
            owner: queue.owner().into(),
            company: queue.company().into(),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    async fn client(&self) -> PgResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// As `Store::ingest_invoice`: PENDING with the company's next DIAN number, with its
    /// Stripe event id in one transaction; false when either was known. Two boxes taking
    /// the same invoice at once give it one number (the loser's counter step is rolled
    /// back with its transaction: no gap).
    pub async fn ingest(
        &self,
        inv: &LocalInvoice,
        issue_date: &str,
        number_prefix: &str,
        number_start: u64,
        event: Option<(&str, &str, &str)>,
        now: i64,
    ) -> PgResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let company = &*self.company;
        let via = match event {
            Some((id, kind, via)) => {
                let n = tx
                    .execute(
                        "INSERT INTO syncctl.stripe_events(company, id, type, received_at, via)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (company, id) DO NOTHING",
                        &[&company, &id, &kind, &now, &via],
                    )
                    .await?;
                if n == 0 {
                    return Ok(false);
                }
                via
            }
            None => "list",
        };
        let known = tx
            .query_opt(
                "SELECT 1 FROM syncctl.invoices WHERE company = $1 AND stripe_id = $2
                 UNION ALL SELECT 1 FROM syncctl.purged_invoices WHERE company = $1 AND stripe_id = $2",
                &[&company, &inv.stripe_id],
            )
            .await?
            .is_some();
        if known {
            tx.commit().await?;
            return Ok(false);
        }
        // The counter's row lock orders concurrent ingests of the company.
        let seq: i64 = tx
            .query_one(
                "INSERT INTO syncctl.invoice_counters(company, value) VALUES ($1, 0)
                 ON CONFLICT (company) DO UPDATE SET value = syncctl.invoice_counters.value + 1
                 RETURNING value",
                &[&company],
            )
            .await?
            .get(0);
        let number = format!("{number_prefix}{}", number_start + seq as u64);
        let data = serde_json::to_string(inv)
            .map_err(|e| super::postgres::PgError::Pool(format!("invoice data: {e}")))?;
        let n = tx
            .execute(
                "INSERT INTO syncctl.invoices(company, stripe_id, number, kind, status, attempts, next_at,
                        issue_date, buyer_id, buyer_name, total, data, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'PENDING', 0, $5, $6, $7, $8, $9, $10, $5, $5)
                 ON CONFLICT (company, stripe_id) DO NOTHING",
                &[
                    &company,
                    &inv.stripe_id,
                    &number,
                    &inv.kind,
                    &now,
                    &issue_date,
                    &inv.buyer_id,
                    &inv.buyer_name,
                    &inv.total,
                    &data,
                ],
            )
            .await?;
        if n == 0 {
            // Another box recorded it meanwhile: nothing of this attempt stays (its
            // number goes back with the rollback; its event id too: the event is known
            // to the other box by its invoice).
            tx.rollback().await?;
            return Ok(false);
        }
        let name = inv.stripe_number.as_deref().unwrap_or(&inv.stripe_id);
        let message = format!("paid invoice {name} received via {via}; DIAN number {number}");
        tx.execute(
            "INSERT INTO syncctl.invoice_history(company, stripe_id, at, from_status, to_status, attempt, code, message, actor)
             VALUES ($1, $2, $3, NULL, 'PENDING', 0, NULL, $4, 'engine')",
            &[&company, &inv.stripe_id, &now, &message],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Takes up to `limit` due invoices for this handle, leased until `now + lease_ms`:
    /// never one another box holds (SKIP LOCKED, unexpired lease). Sends whose box's
    /// lease ran out mid-send turn UNKNOWN first (read at Alegra before any resend).
    /// Oldest deadline first, then oldest due.
    pub async fn claim(
        &self,
        now: i64,
        limit: usize,
        reads_only: bool,
        lease_ms: i64,
    ) -> PgResult<Vec<InvoiceRecord>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let company = &*self.company;
        recover_expired(&tx, company, now).await?;
        let limit = limit as i64;
        let found = tx
            .query(
                &format!(
                    "UPDATE syncctl.invoices i SET lease_owner = $3, lease_until = $2::bigint + $4::bigint
                      WHERE i.company = $1 AND i.stripe_id IN (
                        SELECT q.stripe_id FROM syncctl.invoices q
                         WHERE q.company = $1 AND q.status IN ({}) AND NOT q.sending
                           AND q.next_at IS NOT NULL AND q.next_at <= $2
                           AND (q.lease_until IS NULL OR q.lease_until < $2)
                         ORDER BY q.deadline_at IS NULL, q.deadline_at, q.next_at
                         LIMIT $5 FOR UPDATE SKIP LOCKED)
                     RETURNING {}",
                    active(reads_only),
                    columns_of("i")
                ),
                &[&company, &now, &&*self.owner, &lease_ms, &limit],
            )
            .await?;
        tx.commit().await?;
        let mut found = rows(&found)?;
        found.sort_by_key(|r| (r.deadline_at_ms.is_none(), r.deadline_at_ms, r.next_at_ms));
        Ok(found)
    }

    /// Invoices waiting to be sent or read (due or not, whoever holds them), in the
    /// order they run. Claims nothing.
    pub async fn waiting(&self, limit: usize) -> PgResult<Vec<InvoiceRecord>> {
        let c = self.client().await?;
        let r = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM syncctl.invoices
                      WHERE company = $1 AND status IN ({}) AND next_at IS NOT NULL
                      ORDER BY deadline_at IS NULL, deadline_at, next_at LIMIT $2",
                    active(false)
                ),
                &[&&*self.company, &(limit as i64)],
            )
            .await?;
        rows(&r)
    }

    /// A contingency probe: the oldest in `statuses` (one with a document at Alegra
    /// first), leased like a claim.
    pub async fn claim_probe(
        &self,
        statuses: &[Status],
        now: i64,
        lease_ms: i64,
    ) -> PgResult<Option<InvoiceRecord>> {
        let list: Vec<&str> = statuses.iter().map(|s| s.name()).collect();
        let c = self.client().await?;
        let found = c
            .query_opt(
                &format!(
                    "UPDATE syncctl.invoices i SET lease_owner = $3, lease_until = $2::bigint + $4::bigint
                      WHERE i.company = $1 AND i.stripe_id IN (
                        SELECT q.stripe_id FROM syncctl.invoices q
                         WHERE q.company = $1 AND q.status = ANY($5) AND q.kind <> 'credit_note'
                           AND NOT q.sending AND (q.lease_until IS NULL OR q.lease_until < $2)
                         ORDER BY q.alegra_id IS NULL, q.created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING {}",
                    columns_of("i")
                ),
                &[&&*self.company, &now, &&*self.owner, &lease_ms, &list],
            )
            .await?;
        found.as_ref().map(row).transpose()
    }

    /// Extends the unexpired leases this handle holds among `ids`; the ids still held.
    pub async fn heartbeat(
        &self,
        ids: &[String],
        lease_ms: i64,
        now: i64,
    ) -> PgResult<Vec<String>> {
        let c = self.client().await?;
        let held = c
            .query(
                "UPDATE syncctl.invoices SET lease_until = $3::bigint + $4::bigint
                  WHERE company = $1 AND stripe_id = ANY($2) AND lease_owner = $5 AND lease_until >= $3
                  RETURNING stripe_id",
                &[&&*self.company, &ids, &now, &lease_ms, &&*self.owner],
            )
            .await?;
        Ok(held.iter().map(|r| r.get(0)).collect())
    }

    /// Gives back the lease of `id` (the work on it ended). A send still marked stays
    /// leased: its lease runs out and the next claim reads it at Alegra.
    pub async fn release(&self, id: &str) -> PgResult<()> {
        let c = self.client().await?;
        c.execute(
            "UPDATE syncctl.invoices SET lease_owner = NULL, lease_until = NULL
              WHERE company = $1 AND stripe_id = $2 AND lease_owner = $3 AND NOT sending",
            &[&&*self.company, &id, &&*self.owner],
        )
        .await?;
        Ok(())
    }

    /// Marks a send begun (before the request leaves) and counts it, only while this
    /// handle holds an unexpired lease on it. None: the lease was lost, send nothing.
    pub async fn begin_send(&self, id: &str, now: i64) -> PgResult<Option<u32>> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                "UPDATE syncctl.invoices SET sending = TRUE, attempts = attempts + 1, updated_at = $3
                  WHERE company = $1 AND stripe_id = $2 AND lease_owner = $4 AND lease_until >= $3
                  RETURNING attempts",
                &[&&*self.company, &id, &now, &&*self.owner],
            )
            .await?;
        Ok(r.map(|r| r.get::<_, i32>(0).max(0) as u32))
    }

    /// Applies `change` with its history line in one transaction. `leased`: a write of
    /// the box working on it, made only while it holds an unexpired lease (false: not
    /// held, nothing changed); otherwise (an operator's) applied as it stands.
    pub async fn change(
        &self,
        id: &str,
        change: &Change<'_>,
        leased: bool,
        now: i64,
    ) -> PgResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let company = &*self.company;
        let found = tx
            .query_opt(
                "SELECT status, attempts FROM syncctl.invoices
                  WHERE company = $1 AND stripe_id = $2
                    AND (NOT $3 OR (lease_owner = $4 AND lease_until >= $5)) FOR UPDATE",
                &[&company, &id, &leased, &&*self.owner, &now],
            )
            .await?;
        let Some(found) = found else {
            return Ok(false);
        };
        let from: String = found.get(0);
        let attempts = found.get::<_, i32>(1).max(0);
        let attempts = if change.reset_attempts {
            0
        } else if change.refund_attempt {
            (attempts - 1).max(0)
        } else {
            attempts
        };
        let to = change
            .to
            .map(Status::name)
            .unwrap_or(from.as_str())
            .to_owned();
        let validated = change.to == Some(Status::Validated);
        let next_at = change.next_at_ms.flatten().map(|after| now + after);
        let deadline = change.deadline_at_ms.flatten();
        tx.execute(
            "UPDATE syncctl.invoices SET status = $3, attempts = $4, sending = FALSE,
               next_at = CASE WHEN $5 THEN $6 ELSE next_at END,
               last_code = $7, last_message = $8,
               alegra_id = COALESCE($9, alegra_id), cufe = COALESCE($10, cufe),
               issue_date = COALESCE($11, issue_date),
               contingency = COALESCE($12, contingency),
               deadline_at = CASE WHEN $13 THEN $14 ELSE deadline_at END,
               validated_at = CASE WHEN $15 THEN $16 ELSE validated_at END,
               updated_at = $16
             WHERE company = $1 AND stripe_id = $2",
            &[
                &company,
                &id,
                &to,
                &attempts,
                &change.next_at_ms.is_some(),
                &next_at,
                &change.code,
                &change.message,
                &change.alegra_id,
                &change.cufe,
                &change.issue_date,
                &change.contingency,
                &change.deadline_at_ms.is_some(),
                &deadline,
                &validated,
                &now,
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO syncctl.invoice_history(company, stripe_id, at, from_status, to_status, attempt, code, message, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &company,
                &id,
                &now,
                &from,
                &to,
                &attempts,
                &change.code,
                &change.message,
                &change.actor,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Looks again after `after_ms` without a history line; lease-checked as
    /// [`Self::change`]. False: not held.
    pub async fn postpone(
        &self,
        id: &str,
        after_ms: i64,
        why: &str,
        leased: bool,
        now: i64,
    ) -> PgResult<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE syncctl.invoices SET next_at = $3::bigint + $4::bigint, sending = FALSE,
                        last_message = $5, updated_at = $3
                  WHERE company = $1 AND stripe_id = $2
                    AND (NOT $6 OR (lease_owner = $7 AND lease_until >= $3))",
                &[
                    &&*self.company,
                    &id,
                    &now,
                    &after_ms,
                    &why,
                    &leased,
                    &&*self.owner,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// As `Store::renumber_invoice`, lease-checked. None: not held.
    pub async fn renumber(
        &self,
        id: &str,
        number_prefix: &str,
        number_start: u64,
        why: &str,
        now: i64,
    ) -> PgResult<Option<String>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let company = &*self.company;
        let Some(r) = tx
            .query_opt(
                "SELECT number, status, attempts FROM syncctl.invoices
                  WHERE company = $1 AND stripe_id = $2 AND lease_owner = $3 AND lease_until >= $4
                  FOR UPDATE",
                &[&company, &id, &&*self.owner, &now],
            )
            .await?
        else {
            return Ok(None);
        };
        let (old, status, attempts): (String, String, i32) = (r.get(0), r.get(1), r.get(2));
        let seq: i64 = tx
            .query_one(
                "INSERT INTO syncctl.invoice_counters(company, value) VALUES ($1, 0)
                 ON CONFLICT (company) DO UPDATE SET value = syncctl.invoice_counters.value + 1
                 RETURNING value",
                &[&company],
            )
            .await?
            .get(0);
        let number = format!("{number_prefix}{}", number_start + seq as u64);
        tx.execute(
            "UPDATE syncctl.invoices SET number = $3, status = 'PENDING', next_at = $4, sending = FALSE,
                    alegra_id = NULL, cufe = NULL, last_code = NULL, last_message = $5, updated_at = $4
              WHERE company = $1 AND stripe_id = $2",
            &[&company, &id, &number, &now, &why],
        )
        .await?;
        tx.execute(
            "INSERT INTO syncctl.invoice_history(company, stripe_id, at, from_status, to_status, attempt, code, message, actor)
             VALUES ($1, $2, $3, $4, 'PENDING', $5, NULL, $6, 'engine')",
            &[
                &company,
                &id,
                &now,
                &status,
                &attempts,
                &format!("renumbered {old} → {number}: {why}"),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(number))
    }

    /// As `Store::release_held`.
    pub async fn release_held(&self, held: &str, why: &str, now: i64) -> PgResult<usize> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE syncctl.invoices SET next_at = $4, last_message = $3, updated_at = $4
                  WHERE company = $1 AND starts_with(last_message, $2) AND NOT sending
                    AND next_at IS NOT NULL AND next_at > $4",
                &[&&*self.company, &held, &why, &now],
            )
            .await?;
        Ok(n as usize)
    }

    /// As `Store::enter_fallback`.
    pub async fn enter_fallback(&self, message: &str, now: i64) -> PgResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let company = &*self.company;
        let which = "company = $1 AND status IN ('PENDING','RETRY') AND kind <> 'credit_note' AND NOT sending";
        tx.execute(
            &format!(
                "INSERT INTO syncctl.invoice_history(company, stripe_id, at, from_status, to_status, attempt, code, message, actor)
                 SELECT company, stripe_id, $2, status, 'FALLBACK', attempts, last_code, $3, 'engine'
                   FROM syncctl.invoices WHERE {which}"
            ),
            &[&company, &now, &message],
        )
        .await?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE syncctl.invoices SET status = 'FALLBACK', contingency = TRUE, deadline_at = NULL,
                            next_at = NULL, last_message = $3, updated_at = $2 WHERE {which}"
                ),
                &[&company, &now, &message],
            )
            .await?;
        tx.execute(
            "UPDATE syncctl.invoices SET contingency = TRUE WHERE company = $1 AND sending
               AND kind <> 'credit_note' AND status IN ('PENDING','RETRY','UNKNOWN')",
            &[&company],
        )
        .await?;
        tx.commit().await?;
        Ok(n as usize)
    }

    /// As `Store::restore_fallback`.
    pub async fn restore_fallback(
        &self,
        deadline_ms: i64,
        message: &str,
        now: i64,
    ) -> PgResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let company = &*self.company;
        let which = "company = $1 AND contingency AND deadline_at IS NULL
            AND status IN ('PENDING','RETRY','UNKNOWN','SENT','FALLBACK')";
        tx.execute(
            &format!(
                "INSERT INTO syncctl.invoice_history(company, stripe_id, at, from_status, to_status, attempt, code, message, actor)
                 SELECT company, stripe_id, $2, status, status, attempts, last_code, $3, 'engine'
                   FROM syncctl.invoices WHERE {which}"
            ),
            &[&company, &now, &message],
        )
        .await?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE syncctl.invoices SET deadline_at = $4, last_message = $3, updated_at = $2,
                            next_at = CASE WHEN status = 'FALLBACK' THEN $2 ELSE next_at END WHERE {which}"
                ),
                &[&company, &now, &message, &deadline_ms],
            )
            .await?;
        tx.commit().await?;
        Ok(n as usize)
    }

    pub async fn unfinished_outage(&self) -> PgResult<Option<i64>> {
        let c = self.client().await?;
        Ok(c.query_one(
            "SELECT MIN(created_at) FROM syncctl.invoices
              WHERE company = $1 AND status = 'FALLBACK' AND deadline_at IS NULL",
            &[&&*self.company],
        )
        .await?
        .get(0))
    }

    /// When something next becomes claimable by this box: an invoice another box holds
    /// counts from its lease's end (not as due now: that would poll the database
    /// while the other box works on it).
    pub async fn next_due(&self, reads_only: bool, now: i64) -> PgResult<Option<i64>> {
        let c = self.client().await?;
        Ok(c.query_one(
            &format!(
                "SELECT MIN(CASE WHEN lease_until >= $2 THEN GREATEST(next_at, lease_until + 1) ELSE next_at END)
                   FROM syncctl.invoices WHERE company = $1 AND status IN ({})",
                active(reads_only)
            ),
            &[&&*self.company, &now],
        )
        .await?
        .get(0))
    }

    pub async fn invoice(&self, key: &str) -> PgResult<Option<InvoiceRecord>> {
        let c = self.client().await?;
        let r = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM syncctl.invoices
                      WHERE company = $1 AND (stripe_id = $2 OR number = $2 OR cufe = $2) LIMIT 1"
                ),
                &[&&*self.company, &key],
            )
            .await?;
        r.first().map(row).transpose()
    }

    pub async fn invoices(
        &self,
        status: Option<Status>,
        search: &str,
        limit: usize,
    ) -> PgResult<Vec<InvoiceRecord>> {
        let c = self.client().await?;
        let like = format!("%{}%", search.trim().to_lowercase());
        let r = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM syncctl.invoices
                      WHERE company = $1 AND ($2::text IS NULL OR status = $2)
                        AND ($3 = '%%' OR strpos(lower(number), $4) > 0 OR strpos(lower(stripe_id), $4) > 0
                             OR strpos(lower(COALESCE(cufe, '')), $4) > 0)
                      ORDER BY created_at DESC, number DESC LIMIT $5"
                ),
                &[
                    &&*self.company,
                    &status.map(Status::name),
                    &like,
                    &search.trim().to_lowercase(),
                    &(limit as i64),
                ],
            )
            .await?;
        rows(&r)
    }

    pub async fn invoice_of_alegra_document(
        &self,
        alegra_id: &str,
    ) -> PgResult<Option<InvoiceRecord>> {
        let c = self.client().await?;
        let r = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM syncctl.invoices WHERE company = $1 AND alegra_id = $2 LIMIT 1"
                ),
                &[&&*self.company, &alegra_id],
            )
            .await?;
        r.first().map(row).transpose()
    }

    pub async fn invoices_using(
        &self,
        product_id: &str,
        limit: usize,
    ) -> PgResult<(Vec<InvoiceRecord>, u64)> {
        let needle = format!("\"product\":{}", serde_json::Value::from(product_id));
        let c = self.client().await?;
        let total: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM syncctl.invoices WHERE company = $1 AND strpos(data, $2) > 0",
                &[&&*self.company, &needle],
            )
            .await?
            .get(0);
        let r = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM syncctl.invoices WHERE company = $1 AND strpos(data, $2) > 0
                      ORDER BY created_at DESC, number DESC LIMIT $3"
                ),
                &[&&*self.company, &needle, &(limit as i64)],
            )
            .await?;
        Ok((rows(&r)?, total.max(0) as u64))
    }

    pub async fn history(&self, id: &str) -> PgResult<Vec<HistoryEntry>> {
        let c = self.client().await?;
        let r = c
            .query(
                "SELECT at, from_status, to_status, attempt, code, message, actor
                   FROM syncctl.invoice_history WHERE company = $1 AND stripe_id = $2 ORDER BY id",
                &[&&*self.company, &id],
            )
            .await?;
        Ok(r.iter()
            .map(|r| HistoryEntry {
                at_ms: r.get(0),
                from: r.get(1),
                to: r.get(2),
                attempt: r.get::<_, i32>(3).max(0) as u32,
                code: r.get(4),
                message: r.get(5),
                actor: r.get(6),
            })
            .collect())
    }

    pub async fn invoices_in(&self, status: Status) -> PgResult<Vec<String>> {
        let c = self.client().await?;
        let r = c
            .query(
                "SELECT stripe_id FROM syncctl.invoices WHERE company = $1 AND status = $2 ORDER BY created_at",
                &[&&*self.company, &status.name()],
            )
            .await?;
        Ok(r.iter().map(|r| r.get(0)).collect())
    }

    pub async fn counts(&self) -> PgResult<ComplianceCounts> {
        let c = self.client().await?;
        let r = c
            .query(
                "SELECT status, COUNT(*) FROM syncctl.invoices WHERE company = $1 GROUP BY status",
                &[&&*self.company],
            )
            .await?;
        let mut by: Vec<(Status, u64)> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        let mut total = 0;
        for r in &r {
            let (s, n): (String, i64) = (r.get(0), r.get(1));
            let n = n.max(0) as u64;
            total += n;
            if let Some(e) = Status::parse(&s).and_then(|s| by.iter_mut().find(|(x, _)| *x == s)) {
                e.1 = n;
            }
        }
        let r = c
            .query_one(
                "SELECT MIN(created_at), MIN(deadline_at) FROM syncctl.invoices
                  WHERE company = $1 AND status IN ('PENDING','RETRY','UNKNOWN','SENT','FALLBACK')",
                &[&&*self.company],
            )
            .await?;
        Ok(ComplianceCounts {
            by_status: by,
            total,
            oldest_active_ms: r.get(0),
            earliest_deadline_ms: r.get(1),
        })
    }

    /// Invoice records the company holds or held.
    pub async fn rows_ever(&self) -> PgResult<u64> {
        let c = self.client().await?;
        let n: i64 = c
            .query_one(
                "SELECT (SELECT COUNT(*) FROM syncctl.invoices WHERE company = $1)
                      + (SELECT COUNT(*) FROM syncctl.purged_invoices WHERE company = $1)",
                &[&&*self.company],
            )
            .await?
            .get(0);
        Ok(n.max(0) as u64)
    }

    /// The sequence the next DIAN number takes: 0 before any.
    pub async fn next_number_seq(&self) -> PgResult<i64> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT value + 1 FROM syncctl.invoice_counters WHERE company = $1",
            &[&&*self.company],
        )
        .await?
        .map_or(0, |r| r.get(0)))
    }

    /// Sequence `seq` and every one before it count as used. Never moves back.
    pub async fn reserve_numbers_through(&self, seq: i64) -> PgResult<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO syncctl.invoice_counters(company, value) VALUES ($1, $2)
             ON CONFLICT (company) DO UPDATE SET value = GREATEST(syncctl.invoice_counters.value, excluded.value)",
            &[&&*self.company, &seq],
        )
        .await?;
        Ok(())
    }
}

/// Sends whose box's lease ran out mid-send (it died or hung): UNKNOWN, due now, lease
/// dropped, each with its history line. Rows another claimer is recovering are skipped.
async fn recover_expired(
    tx: &deadpool_postgres::Transaction<'_>,
    company: &str,
    now: i64,
) -> PgResult<u64> {
    let n = tx
        .execute(
            "WITH x AS (
                SELECT stripe_id, status, attempts, last_code FROM syncctl.invoices
                 WHERE company = $1 AND sending AND lease_until < $2 FOR UPDATE SKIP LOCKED),
             u AS (
                UPDATE syncctl.invoices i SET status = 'UNKNOWN', sending = FALSE, next_at = $2,
                       lease_owner = NULL, lease_until = NULL, last_message = $3, updated_at = $2
                  FROM x WHERE i.company = $1 AND i.stripe_id = x.stripe_id RETURNING i.stripe_id)
             INSERT INTO syncctl.invoice_history(company, stripe_id, at, from_status, to_status, attempt, code, message, actor)
             SELECT $1, x.stripe_id, $2, x.status, 'UNKNOWN', x.attempts, x.last_code, $3, 'engine'
               FROM x JOIN u ON u.stripe_id = x.stripe_id",
            &[&company, &now, &CUT_SHORT],
        )
        .await?;
    Ok(n)
}
