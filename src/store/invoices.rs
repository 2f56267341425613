//! Compliance records: one row per Stripe invoice (its DIAN number, status, attempts,
//! Alegra id, CUFE, the data to send it again) and its history, every change written
//! with its history line in one transaction.

pub use crate::protocol::{ComplianceCounts, HistoryEntry, InvoiceRecord};
use rusqlite::{OptionalExtension, params};

use super::pg_invoices::PgInvoices;
use super::postgres::PgError;
use super::{Begun, Result, Store, WallClock};
use crate::protocol::{LocalInvoice, Status};

/// A change of a record, written with its history line.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    pub to: Option<Status>,
    pub next_at_ms: Option<Option<i64>>,
    pub code: Option<&'a str>,
    pub message: &'a str,
    pub actor: &'a str,
    pub alegra_id: Option<&'a str>,
    pub cufe: Option<&'a str>,
    pub issue_date: Option<&'a str>,
    pub refund_attempt: bool,
    /// An operator's retry starts the schedule afresh.
    pub reset_attempts: bool,
    pub contingency: Option<bool>,
    pub deadline_at_ms: Option<Option<i64>>,
}

const COLUMNS: &str = "stripe_id, number, kind, status, attempts, next_at, sending, alegra_id, cufe, issue_date,
    buyer_id, buyer_name, total, data, last_code, last_message, contingency, deadline_at, created_at, updated_at, validated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InvoiceRecord> {
    let status: String = r.get(3)?;
    let data: String = r.get(13)?;
    Ok(InvoiceRecord {
        stripe_id: r.get(0)?,
        number: r.get(1)?,
        kind: r.get(2)?,
        status: Status::parse(&status).unwrap_or(Status::Unknown),
        attempts: r.get(4)?,
        next_at_ms: r.get(5)?,
        sending: r.get(6)?,
        alegra_id: r.get(7)?,
        cufe: r.get(8)?,
        issue_date: r.get(9)?,
        buyer_id: r.get(10)?,
        buyer_name: r.get(11)?,
        total: r.get(12)?,
        invoice: serde_json::from_str(&data).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Text, Box::new(e))
        })?,
        last_code: r.get(14)?,
        last_message: r.get(15)?,
        contingency: r.get(16)?,
        deadline_at_ms: r.get(17)?,
        created_at_ms: r.get(18)?,
        updated_at_ms: r.get(19)?,
        validated_at_ms: r.get(20)?,
    })
}

/// The statuses the engine works on by itself, as an SQL list.
fn active(reads_only: bool) -> &'static str {
    if reads_only {
        "'UNKNOWN','SENT'"
    } else {
        "'PENDING','RETRY','UNKNOWN','SENT','FALLBACK'"
    }
}

/// Takes the next DIAN number of the range from the counter.
fn next_number(tx: &Begun<'_>, prefix: &str, start: u64) -> Result<String> {
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO counters(name, value) VALUES ('invoice_number', 0)
         ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(format!("{prefix}{}", start + seq as u64))
}

impl Store {
    /// Records a paid invoice as PENDING with the next DIAN number of the range, in one
    /// transaction with its Stripe event id (when it came as an event). Returns false
    /// when the event or the invoice was already known (nothing changes).
    pub fn ingest_invoice(
        &self,
        inv: &LocalInvoice,
        issue_date: &str,
        number_prefix: &str,
        number_start: u64,
        event: Option<(&str, &str, &str)>,
    ) -> Result<bool> {
        let conn = self.w();
        let tx = Begun::begin(&conn)?;
        let now = self.now_ms();
        let via = match event {
            Some((id, kind, via)) => {
                let n = tx.prepare_cached("INSERT OR IGNORE INTO stripe_events(id, type, received_at, via) VALUES (?1, ?2, ?3, ?4)")?.execute(params![id, kind, now, via],
                )?;
                if n == 0 {
                    return Ok(false);
                }
                via
            }
            None => "list",
        };
        let known: bool = tx
            .prepare_cached(
                "SELECT 1 FROM invoices WHERE stripe_id=?1
                 UNION ALL SELECT 1 FROM purged_invoices WHERE stripe_id=?1",
            )?
            .query_row(params![inv.stripe_id], |_| Ok(true))
            .optional()?
            .unwrap_or(false);
        if known {
            tx.commit()?;
            return Ok(false);
        }
        let name = inv.stripe_number.as_deref().unwrap_or(&inv.stripe_id);
        // A document found at Alegra for this invoice when the store was rebuilt: adopted
        // (read there before anything is sent), never given a second number.
        let found: Option<(String, String, String)> = tx
            .prepare_cached(
                "SELECT number, alegra_id, date FROM alegra_documents
                 WHERE stripe_id=?1 AND coalesce(legal_status, '') <> 'STAMPED_AND_REJECTED'
                 ORDER BY (legal_status LIKE 'STAMPED_AND_ACCEPTED%') DESC, number LIMIT 1",
            )?
            .query_row(params![inv.stripe_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let mut issue_date = issue_date.to_owned();
        let (number, status, alegra_id, message) = match found {
            Some((number, alegra_id, date)) => {
                if !date.is_empty() {
                    issue_date = date;
                }
                tx.prepare_cached("DELETE FROM alegra_documents WHERE stripe_id=?1")?
                    .execute(params![inv.stripe_id])?;
                let message = format!(
                    "paid invoice {name} received via {via}; its document {number} (Alegra {alegra_id}) was found at Alegra when this store was checked against it: adopted with its number, read there before anything is sent"
                );
                (number, Status::Unknown, Some(alegra_id), message)
            }
            None => {
                let number = next_number(&tx, number_prefix, number_start)?;
                let message =
                    format!("paid invoice {name} received via {via}; DIAN number {number}");
                (number, Status::Pending, None, message)
            }
        };
        let data = serde_json::to_string(inv)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.prepare_cached("INSERT INTO invoices(stripe_id, number, kind, status, attempts, next_at, alegra_id, issue_date,
                                  buyer_id, buyer_name, total, data, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?5, ?5)")?.execute(params![
                inv.stripe_id,
                number,
                inv.kind,
                status.name(),
                now,
                alegra_id,
                issue_date,
                inv.buyer_id,
                inv.buyer_name,
                inv.total,
                data
            ],
        )?;
        tx.prepare_cached("INSERT INTO invoice_history(stripe_id, at, from_status, to_status, attempt, code, message, actor)
             VALUES (?1, ?2, NULL, ?3, 0, NULL, ?4, 'engine')")?.execute(params![inv.stripe_id, now, status.name(), message],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Gives an invoice whose number turned out to be another document's at Alegra the
    /// next number of the range; it is sent afresh (nothing of ours holds the old number
    /// but, at most, a document DIAN rejected). Returns the new number.
    pub fn renumber_invoice(
        &self,
        stripe_id: &str,
        number_prefix: &str,
        number_start: u64,
        why: &str,
    ) -> Result<String> {
        let conn = self.w();
        let tx = Begun::begin(&conn)?;
        let now = self.now_ms();
        let (old, status, attempts): (String, String, u32) = tx
            .prepare_cached("SELECT number, status, attempts FROM invoices WHERE stripe_id=?1")?
            .query_row(params![stripe_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let number = next_number(&tx, number_prefix, number_start)?;
        tx.prepare_cached("UPDATE invoices SET number=?2, status='PENDING', next_at=?3, sending=0, alegra_id=NULL,
                                 cufe=NULL, last_code=NULL, last_message=?4, updated_at=?3
             WHERE stripe_id=?1")?.execute(params![stripe_id, number, now, why],
        )?;
        tx.prepare_cached("INSERT INTO invoice_history(stripe_id, at, from_status, to_status, attempt, code, message, actor)
             VALUES (?1, ?2, ?3, 'PENDING', ?4, NULL, ?5, 'engine')")?.execute(params![
                stripe_id,
                now,
                status,
                attempts,
                format!("renumbered {old} → {number}: {why}")
            ],
        )?;
        tx.commit()?;
        Ok(number)
    }

    /// Invoices the engine should act on now (due, not being sent), oldest deadline
    /// first, then oldest due. `reads_only`: only those whose next step is a read at
    /// Alegra (UNKNOWN, SENT), while sends are held.
    pub fn due_invoices(
        &self,
        now: i64,
        limit: usize,
        skip: &[String],
        reads_only: bool,
    ) -> Result<Vec<InvoiceRecord>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invoices
             WHERE status IN ({}) AND next_at IS NOT NULL AND next_at <= ?1
             ORDER BY deadline_at IS NULL, deadline_at, next_at LIMIT ?2",
            active(reads_only)
        ))?;
        let rows = stmt
            .query_map(params![now, (limit + skip.len()) as i64], row)?
            .collect::<Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .filter(|r| !skip.contains(&r.stripe_id))
            .take(limit)
            .collect())
    }

    /// The earliest time something becomes due (to sleep until it).
    pub fn next_invoice_due(&self, reads_only: bool) -> Result<Option<i64>> {
        self.r().query_row(
            &format!(
                "SELECT MIN(next_at) FROM invoices WHERE status IN ({})",
                active(reads_only)
            ),
            [],
            |r| r.get(0),
        )
    }

    /// The invoice a contingency probe transmits: the oldest in `statuses`, one with a
    /// document at Alegra first (a probe then creates nothing new).
    pub fn probe_candidate(
        &self,
        statuses: &[Status],
        skip: &[String],
    ) -> Result<Option<InvoiceRecord>> {
        let list = statuses
            .iter()
            .map(|s| format!("'{}'", s.name()))
            .collect::<Vec<_>>()
            .join(",");
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invoices WHERE status IN ({list}) AND kind != 'credit_note'
             ORDER BY alegra_id IS NULL, created_at LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map(params![(1 + skip.len()) as i64], row)?
            .collect::<Result<Vec<_>>>()?;
        Ok(rows.into_iter().find(|r| !skip.contains(&r.stripe_id)))
    }

    /// A confirmed DIAN outage: every invoice waiting to be sent (PENDING, RETRY; never
    /// a credit note) takes the contingency path, held until DIAN is back. One
    /// transaction, a history line each. Returns how many.
    pub fn enter_fallback(&self, message: &str) -> Result<usize> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let now = self.now_ms();
        let which = "status IN ('PENDING','RETRY') AND kind != 'credit_note' AND sending = 0";
        tx.execute(
            &format!(
                "INSERT INTO invoice_history(stripe_id, at, from_status, to_status, attempt, code, message, actor)
                 SELECT stripe_id, ?1, status, 'FALLBACK', attempts, last_code, ?2, 'engine' FROM invoices WHERE {which}"
            ),
            params![now, message],
        )?;
        let n = tx.execute(
            &format!(
                "UPDATE invoices SET status='FALLBACK', contingency=1, deadline_at=NULL, next_at=NULL,
                   last_message=?2, updated_at=?1 WHERE {which}"
            ),
            params![now, message],
        )?;
        // A send in flight now is a contingency invoice too if DIAN does not stamp it.
        tx.prepare_cached(
            "UPDATE invoices SET contingency=1 WHERE sending=1 AND kind != 'credit_note'
               AND status IN ('PENDING','RETRY','UNKNOWN')",
        )?
        .execute([])?;
        tx.commit()?;
        Ok(n)
    }

    /// DIAN is back: contingency invoices without a deadline get `deadline_ms`, and
    /// those in FALLBACK are due now. Returns how many.
    pub fn restore_fallback(&self, deadline_ms: i64, message: &str) -> Result<usize> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let now = self.now_ms();
        // Every unfinished contingency invoice gets the deadline, the one a probe is
        // reading back included; those held in FALLBACK are due now.
        let which = "contingency=1 AND deadline_at IS NULL
            AND status IN ('PENDING','RETRY','UNKNOWN','SENT','FALLBACK')";
        tx.execute(
            &format!(
                "INSERT INTO invoice_history(stripe_id, at, from_status, to_status, attempt, code, message, actor)
                 SELECT stripe_id, ?1, status, status, attempts, last_code, ?2, 'engine' FROM invoices WHERE {which}"
            ),
            params![now, message],
        )?;
        let n = tx.execute(
            &format!(
                "UPDATE invoices SET deadline_at=?2, last_message=?3, updated_at=?1,
                   next_at = CASE WHEN status='FALLBACK' THEN ?1 ELSE next_at END WHERE {which}"
            ),
            params![now, deadline_ms, message],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// When the oldest contingency invoice still waiting for DIAN's return was made
    /// (None: no outage left unfinished).
    pub fn unfinished_outage(&self) -> Result<Option<i64>> {
        self.r().prepare_cached("SELECT MIN(created_at) FROM invoices WHERE status='FALLBACK' AND deadline_at IS NULL")?.query_row([],
            |r| r.get(0),
        )
    }

    pub fn invoice(&self, key: &str) -> Result<Option<InvoiceRecord>> {
        self.r()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM invoices WHERE stripe_id=?1 OR number=?1 OR cufe=?1"
                ),
                params![key],
                row,
            )
            .optional()
    }

    /// Invoices newest first, optionally of one status and matching `search` (number,
    /// CUFE or Stripe id, case-insensitive substring).
    pub fn invoices(
        &self,
        status: Option<Status>,
        search: &str,
        limit: usize,
    ) -> Result<Vec<InvoiceRecord>> {
        let conn = self.r();
        // A substring, as Postgres reads it (`strpos`): in a LIKE pattern the `_` of
        // every Stripe id matched any character, so `n_1` found `inX1` too.
        let search = search.trim().to_lowercase();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invoices
             WHERE (?1 IS NULL OR status = ?1)
               AND (?2 = '' OR instr(lower(number), ?2) > 0 OR instr(lower(stripe_id), ?2) > 0
                    OR instr(lower(COALESCE(cufe, '')), ?2) > 0)
             ORDER BY created_at DESC, number DESC LIMIT ?3"
        ))?;
        stmt.query_map(params![status.map(Status::name), search, limit as i64], row)?
            .collect()
    }

    /// Invoices with a line of `product_id`, newest first, at most `limit`; and how
    /// many there are in all.
    pub fn invoices_using(
        &self,
        product_id: &str,
        limit: usize,
    ) -> Result<(Vec<InvoiceRecord>, u64)> {
        // The lines are JSON in `data`: an exact substring, never a LIKE pattern (`_`
        // in product ids is a LIKE wildcard).
        let needle = format!("\"product\":{}", serde_json::Value::from(product_id));
        let conn = self.r();
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM invoices WHERE instr(data, ?1) > 0",
            params![needle],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invoices WHERE instr(data, ?1) > 0
             ORDER BY created_at DESC, number DESC LIMIT ?2"
        ))?;
        let found = stmt
            .query_map(params![needle, limit as i64], row)?
            .collect::<Result<Vec<_>>>()?;
        Ok((found, total as u64))
    }

    /// The invoice sent to Alegra as document `alegra_id`, if any.
    pub fn invoice_of_alegra_document(&self, alegra_id: &str) -> Result<Option<InvoiceRecord>> {
        self.r()
            .query_row(
                &format!("SELECT {COLUMNS} FROM invoices WHERE alegra_id=?1"),
                params![alegra_id],
                row,
            )
            .optional()
    }

    pub fn invoice_history(&self, stripe_id: &str) -> Result<Vec<HistoryEntry>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT at, from_status, to_status, attempt, code, message, actor FROM invoice_history
             WHERE stripe_id=?1 ORDER BY id",
        )?;
        stmt.query_map(params![stripe_id], |r| {
            Ok(HistoryEntry {
                at_ms: r.get(0)?,
                from: r.get(1)?,
                to: r.get(2)?,
                attempt: r.get(3)?,
                code: r.get(4)?,
                message: r.get(5)?,
                actor: r.get(6)?,
            })
        })?
        .collect()
    }

    /// Marks a send as begun (durably, before the request leaves) and counts it.
    pub fn begin_send(&self, stripe_id: &str) -> Result<u32> {
        self.w().prepare_cached("UPDATE invoices SET sending=1, attempts=attempts+1, updated_at=?2 WHERE stripe_id=?1 RETURNING attempts")?.query_row(params![stripe_id, self.now_ms()],
            |r| r.get(0),
        )
    }

    /// Applies `change` and writes its history line, in one transaction.
    pub fn change_invoice(&self, stripe_id: &str, change: &Change<'_>) -> Result<()> {
        let conn = self.w();
        let tx = Begun::begin(&conn)?;
        let now = self.now_ms();
        let Some((from, attempts)) = tx
            .prepare_cached("SELECT status, attempts FROM invoices WHERE stripe_id=?1")?
            .query_row(params![stripe_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
            })
            .optional()?
        else {
            return Ok(());
        };
        let attempts = if change.reset_attempts {
            0
        } else if change.refund_attempt {
            attempts.saturating_sub(1)
        } else {
            attempts
        };
        let to = change
            .to
            .map(Status::name)
            .unwrap_or(from.as_str())
            .to_owned();
        let validated = change.to == Some(Status::Validated);
        tx.prepare_cached(
            "UPDATE invoices SET status=?2, attempts=?3, sending=0,
               next_at = CASE WHEN ?4 THEN ?5 ELSE next_at END,
               last_code=?6, last_message=?7,
               alegra_id=COALESCE(?8, alegra_id), cufe=COALESCE(?9, cufe),
               issue_date=COALESCE(?10, issue_date),
               contingency=COALESCE(?11, contingency),
               deadline_at = CASE WHEN ?12 THEN ?13 ELSE deadline_at END,
               validated_at = CASE WHEN ?14 THEN ?15 ELSE validated_at END,
               updated_at=?15
             WHERE stripe_id=?1",
        )?
        .execute(params![
            stripe_id,
            to,
            attempts,
            change.next_at_ms.is_some(),
            change.next_at_ms.flatten().map(|after| now + after),
            change.code,
            change.message,
            change.alegra_id,
            change.cufe,
            change.issue_date,
            change.contingency,
            change.deadline_at_ms.is_some(),
            change.deadline_at_ms.flatten(),
            validated,
            now,
        ])?;
        tx.prepare_cached("INSERT INTO invoice_history(stripe_id, at, from_status, to_status, attempt, code, message, actor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?.execute(params![stripe_id, now, from, to, attempts, change.code, change.message, change.actor],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Looks again later without a history line (waiting on a breaker or a read that
    /// failed); the reason stays visible as the last message.
    pub fn postpone_invoice(&self, stripe_id: &str, after_ms: i64, why: &str) -> Result<()> {
        let now = self.now_ms();
        self.w().prepare_cached("UPDATE invoices SET next_at=?2, sending=0, last_message=?3, updated_at=?4 WHERE stripe_id=?1")?.execute(params![stripe_id, now + after_ms, why, now],
        )?;
        Ok(())
    }

    /// Makes due at once every invoice held back with a last message starting with `held` (and
    /// not being sent), saying `why`; how many. (A hold is a wait, not a verdict: when
    /// what held it changes, what it held is looked at again.)
    pub fn release_held(&self, held: &str, why: &str) -> Result<usize> {
        let now = self.now_ms();
        let n = self.w().prepare_cached("UPDATE invoices SET next_at=?3, last_message=?2, updated_at=?3
             WHERE substr(last_message, 1, length(?1)) = ?1 AND sending=0 AND next_at IS NOT NULL AND next_at > ?3")?.execute(params![held, why, now],
        )?;
        Ok(n)
    }

    /// Start-up recovery: a send the previous process began and never recorded has an
    /// unknown outcome; it is read at the provider before anything is sent again.
    pub fn recover_sending(&self) -> Result<usize> {
        let ids: Vec<String> = {
            let conn = self.r();
            let mut stmt = conn.prepare("SELECT stripe_id FROM invoices WHERE sending=1")?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_>>()?
        };
        for id in &ids {
            self.change_invoice(
                id,
                &Change {
                    to: Some(Status::Unknown),
                    next_at_ms: Some(Some(0)),
                    message: "the engine stopped during a send: outcome unknown, will read it at Alegra first",
                    actor: "engine",
                    ..Default::default()
                },
            )?;
        }
        Ok(ids.len())
    }

    pub fn compliance_counts(&self) -> Result<ComplianceCounts> {
        let conn = self.r();
        // Counters kept with each write (migration 9), not a count of the table.
        let mut stmt = conn.prepare_cached(
            "SELECT substr(name, 10), n FROM tallies WHERE name >= 'invoices:' AND name < 'invoices;'",
        )?;
        let mut by: Vec<(Status, u64)> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        let mut total = 0;
        for r in stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })? {
            let (s, n) = r?;
            total += n;
            if let Some(e) = Status::parse(&s).and_then(|s| by.iter_mut().find(|(x, _)| *x == s)) {
                e.1 = n;
            }
        }
        let (oldest, deadline): (Option<i64>, Option<i64>) = conn
            .prepare_cached(
                "SELECT MIN(created_at), MIN(deadline_at) FROM invoices
             WHERE status IN ('PENDING','RETRY','UNKNOWN','SENT','FALLBACK')",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(ComplianceCounts {
            by_status: by,
            total,
            oldest_active_ms: oldest,
            earliest_deadline_ms: deadline,
        })
    }

    /// Records changed at or after `since_ms` (to back up, or to drop the backup of once
    /// VALIDATED).
    pub fn invoices_changed_since(&self, since_ms: i64) -> Result<Vec<InvoiceRecord>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invoices WHERE updated_at >= ?1 ORDER BY updated_at"
        ))?;
        stmt.query_map(params![since_ms], row)?.collect()
    }

    /// Records created in `[from_ms, to_ms)`, for the daily report.
    pub fn invoices_created_between(&self, from_ms: i64, to_ms: i64) -> Result<Vec<InvoiceRecord>> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invoices WHERE created_at >= ?1 AND created_at < ?2"
        ))?;
        stmt.query_map(params![from_ms, to_ms], row)?.collect()
    }

    /// The oldest invoice the engine still works on (PENDING, SENT, UNKNOWN, RETRY,
    /// FALLBACK) or that waits for a person (FAILED, REJECTED).
    pub fn oldest_unvalidated(&self) -> Result<Option<InvoiceRecord>> {
        self.r()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM invoices WHERE status != 'VALIDATED' ORDER BY created_at LIMIT 1"
                ),
                [],
                row,
            )
            .optional()
    }

    /// Retention: VALIDATED records (and their history) validated before `before_ms`
    /// are deleted, leaving a tombstone (Stripe id, number, CUFE) so the invoice is
    /// never issued again. Nothing that still needs DIAN or a person is ever removed.
    pub fn purge_validated_before(&self, before_ms: i64) -> Result<usize> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        tx.prepare_cached("INSERT OR IGNORE INTO purged_invoices(stripe_id, number, cufe, purged_at)
             SELECT stripe_id, number, cufe, ?2 FROM invoices WHERE status='VALIDATED' AND validated_at < ?1")?.execute(params![before_ms, self.now_ms()],
        )?;
        tx.prepare_cached(
            "DELETE FROM invoice_history WHERE stripe_id IN
               (SELECT stripe_id FROM invoices WHERE status='VALIDATED' AND validated_at < ?1)",
        )?
        .execute(params![before_ms])?;
        let n = tx
            .prepare_cached("DELETE FROM invoices WHERE status='VALIDATED' AND validated_at < ?1")?
            .execute(params![before_ms])?;
        tx.commit()?;
        Ok(n)
    }

    /// Stripe ids of every invoice in `status`.
    pub fn invoices_in(&self, status: Status) -> Result<Vec<String>> {
        let conn = self.r();
        let mut stmt = conn
            .prepare_cached("SELECT stripe_id FROM invoices WHERE status=?1 ORDER BY created_at")?;
        stmt.query_map(params![status.name()], |r| r.get(0))?
            .collect()
    }
}

/// What an invoice-store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// A recovery step the shared (Postgres) store does not take yet.
    #[error("{0}")]
    NotShared(&'static str),
}

pub type InvoiceResult<T> = std::result::Result<T, InvoiceError>;

/// The compliance records behind one interface, on either backend: the data dir's
/// SQLite (one box) or PostgreSQL (several boxes sharing each company's invoices, each
/// invoice leased to one box at a time). An enum like [`super::queue::JobQueue`]: two
/// backends, both known here, and the SQLite arm is the very `Store` calls the engine
/// made before. The methods are synchronous, as the engine's callers are: SQLite's
/// never wait; Postgres's are waited for in place (`block_in_place`: a multi-thread
/// runtime).
///
/// The engine's own writes on an invoice it works on go through the `*_leased`
/// methods: on Postgres they change nothing unless this box still holds an unexpired
/// lease on it (false). An operator's writes (retry) apply as they stand.
#[derive(Clone)]
pub enum Invoices {
    Sqlite(Store),
    Postgres { pg: PgInvoices, clock: WallClock },
}

/// Runs a future to its end from synchronous code (see [`Invoices`]).
fn wait<T>(f: impl std::future::Future<Output = T>) -> T {
    use futures_util::FutureExt;
    let mut f = std::pin::pin!(f);
    if let Some(v) = (&mut f).now_or_never() {
        return v;
    }
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl Invoices {
    pub fn sqlite(store: Store) -> Self {
        Self::Sqlite(store)
    }

    pub fn postgres(pg: PgInvoices, clock: WallClock) -> Self {
        Self::Postgres { pg, clock }
    }

    /// Whether other boxes share these invoices (claims are leases, heartbeats needed).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }

    /// Which backend: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Self::Sqlite(s) => s.now_ms(),
            Self::Postgres { clock, .. } => clock.now_ms(),
        }
    }

    pub fn ingest_invoice(
        &self,
        inv: &LocalInvoice,
        issue_date: &str,
        number_prefix: &str,
        number_start: u64,
        event: Option<(&str, &str, &str)>,
    ) -> InvoiceResult<bool> {
        match self {
            Self::Sqlite(s) => {
                Ok(s.ingest_invoice(inv, issue_date, number_prefix, number_start, event)?)
            }
            Self::Postgres { pg, clock } => Ok(wait(pg.ingest(
                inv,
                issue_date,
                number_prefix,
                number_start,
                event,
                clock.now_ms(),
            ))?),
        }
    }

    /// Takes up to `limit` due invoices to work on (see `Store::due_invoices`; `skip`:
    /// this box's own in flight). On Postgres they are leased to this box for
    /// `lease_ms`, and never one another box holds.
    pub fn claim_due(
        &self,
        now: i64,
        limit: usize,
        skip: &[String],
        reads_only: bool,
        lease_ms: i64,
    ) -> InvoiceResult<Vec<InvoiceRecord>> {
        match self {
            Self::Sqlite(s) => Ok(s.due_invoices(now, limit, skip, reads_only)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.claim(now, limit, reads_only, lease_ms))?),
        }
    }

    /// Invoices waiting to be sent or read (due or not), in the order they run: a read,
    /// nothing claimed.
    pub fn waiting(&self, limit: usize) -> InvoiceResult<Vec<InvoiceRecord>> {
        match self {
            Self::Sqlite(s) => Ok(s.due_invoices(i64::MAX, limit, &[], false)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.waiting(limit))?),
        }
    }

    /// The invoice a contingency probe transmits (see `Store::probe_candidate`), leased
    /// on Postgres.
    pub fn claim_probe(
        &self,
        statuses: &[Status],
        skip: &[String],
        lease_ms: i64,
    ) -> InvoiceResult<Option<InvoiceRecord>> {
        match self {
            Self::Sqlite(s) => Ok(s.probe_candidate(statuses, skip)?),
            Self::Postgres { pg, clock } => {
                Ok(wait(pg.claim_probe(statuses, clock.now_ms(), lease_ms))?)
            }
        }
    }

    /// Extends this box's leases on `ids`; the ids still held (SQLite: all).
    pub fn heartbeat(&self, ids: &[String], lease_ms: i64) -> InvoiceResult<Vec<String>> {
        match self {
            Self::Sqlite(_) => Ok(ids.to_vec()),
            Self::Postgres { pg, clock } => Ok(wait(pg.heartbeat(ids, lease_ms, clock.now_ms()))?),
        }
    }

    /// The work on `id` ended: its lease goes back (a send still marked keeps it until
    /// it runs out, and is then read at Alegra by whichever box claims it).
    pub fn release(&self, id: &str) -> InvoiceResult<()> {
        match self {
            Self::Sqlite(_) => Ok(()),
            Self::Postgres { pg, .. } => Ok(wait(pg.release(id))?),
        }
    }

    /// Marks a send as begun (durably, before the request leaves) and counts it. None:
    /// this box no longer holds the invoice (Postgres): nothing may be sent.
    pub fn begin_send_leased(&self, stripe_id: &str) -> InvoiceResult<Option<u32>> {
        match self {
            Self::Sqlite(s) => Ok(Some(s.begin_send(stripe_id)?)),
            Self::Postgres { pg, clock } => Ok(wait(pg.begin_send(stripe_id, clock.now_ms()))?),
        }
    }

    /// The engine's transition of an invoice it works on; false (nothing written) when
    /// this box no longer holds it.
    pub fn change_leased(&self, stripe_id: &str, change: &Change<'_>) -> InvoiceResult<bool> {
        match self {
            Self::Sqlite(s) => s
                .change_invoice(stripe_id, change)
                .map(|()| true)
                .map_err(Into::into),
            Self::Postgres { pg, clock } => {
                Ok(wait(pg.change(stripe_id, change, true, clock.now_ms()))?)
            }
        }
    }

    /// A change not made by the box working on it (an operator's), applied as it stands.
    pub fn change_invoice(&self, stripe_id: &str, change: &Change<'_>) -> InvoiceResult<()> {
        match self {
            Self::Sqlite(s) => Ok(s.change_invoice(stripe_id, change)?),
            Self::Postgres { pg, clock } => {
                wait(pg.change(stripe_id, change, false, clock.now_ms()))?;
                Ok(())
            }
        }
    }

    /// Looks again later (see `Store::postpone_invoice`); false when this box no longer
    /// holds it.
    pub fn postpone_leased(
        &self,
        stripe_id: &str,
        after_ms: i64,
        why: &str,
    ) -> InvoiceResult<bool> {
        match self {
            Self::Sqlite(s) => s
                .postpone_invoice(stripe_id, after_ms, why)
                .map(|()| true)
                .map_err(Into::into),
            Self::Postgres { pg, clock } => Ok(wait(pg.postpone(
                stripe_id,
                after_ms,
                why,
                true,
                clock.now_ms(),
            ))?),
        }
    }

    /// See `Store::renumber_invoice`; None when this box no longer holds it.
    pub fn renumber_leased(
        &self,
        stripe_id: &str,
        number_prefix: &str,
        number_start: u64,
        why: &str,
    ) -> InvoiceResult<Option<String>> {
        match self {
            Self::Sqlite(s) => Ok(Some(s.renumber_invoice(
                stripe_id,
                number_prefix,
                number_start,
                why,
            )?)),
            Self::Postgres { pg, clock } => Ok(wait(pg.renumber(
                stripe_id,
                number_prefix,
                number_start,
                why,
                clock.now_ms(),
            ))?),
        }
    }

    pub fn release_held(&self, held: &str, why: &str) -> InvoiceResult<usize> {
        match self {
            Self::Sqlite(s) => Ok(s.release_held(held, why)?),
            Self::Postgres { pg, clock } => Ok(wait(pg.release_held(held, why, clock.now_ms()))?),
        }
    }

    pub fn enter_fallback(&self, message: &str) -> InvoiceResult<usize> {
        match self {
            Self::Sqlite(s) => Ok(s.enter_fallback(message)?),
            Self::Postgres { pg, clock } => Ok(wait(pg.enter_fallback(message, clock.now_ms()))?),
        }
    }

    pub fn restore_fallback(&self, deadline_ms: i64, message: &str) -> InvoiceResult<usize> {
        match self {
            Self::Sqlite(s) => Ok(s.restore_fallback(deadline_ms, message)?),
            Self::Postgres { pg, clock } => Ok(wait(pg.restore_fallback(
                deadline_ms,
                message,
                clock.now_ms(),
            ))?),
        }
    }

    pub fn unfinished_outage(&self) -> InvoiceResult<Option<i64>> {
        match self {
            Self::Sqlite(s) => Ok(s.unfinished_outage()?),
            Self::Postgres { pg, .. } => Ok(wait(pg.unfinished_outage())?),
        }
    }

    /// When this box should look again (see `Store::next_invoice_due`).
    pub fn next_invoice_due(&self, reads_only: bool) -> InvoiceResult<Option<i64>> {
        match self {
            Self::Sqlite(s) => Ok(s.next_invoice_due(reads_only)?),
            Self::Postgres { pg, clock } => Ok(wait(pg.next_due(reads_only, clock.now_ms()))?),
        }
    }

    /// Start-up: sends the previous process began and never recorded are read at
    /// Alegra first. (Postgres: those of a box whose lease ran out, at each claim.)
    pub fn recover_sending(&self) -> InvoiceResult<usize> {
        match self {
            Self::Sqlite(s) => Ok(s.recover_sending()?),
            Self::Postgres { .. } => Ok(0),
        }
    }

    pub fn invoice(&self, key: &str) -> InvoiceResult<Option<InvoiceRecord>> {
        match self {
            Self::Sqlite(s) => Ok(s.invoice(key)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.invoice(key))?),
        }
    }

    pub fn invoices(
        &self,
        status: Option<Status>,
        search: &str,
        limit: usize,
    ) -> InvoiceResult<Vec<InvoiceRecord>> {
        match self {
            Self::Sqlite(s) => Ok(s.invoices(status, search, limit)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.invoices(status, search, limit))?),
        }
    }

    pub fn invoice_of_alegra_document(
        &self,
        alegra_id: &str,
    ) -> InvoiceResult<Option<InvoiceRecord>> {
        match self {
            Self::Sqlite(s) => Ok(s.invoice_of_alegra_document(alegra_id)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.invoice_of_alegra_document(alegra_id))?),
        }
    }

    pub fn invoices_using(
        &self,
        product_id: &str,
        limit: usize,
    ) -> InvoiceResult<(Vec<InvoiceRecord>, u64)> {
        match self {
            Self::Sqlite(s) => Ok(s.invoices_using(product_id, limit)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.invoices_using(product_id, limit))?),
        }
    }

    pub fn invoice_history(&self, stripe_id: &str) -> InvoiceResult<Vec<HistoryEntry>> {
        match self {
            Self::Sqlite(s) => Ok(s.invoice_history(stripe_id)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.history(stripe_id))?),
        }
    }

    pub fn invoices_in(&self, status: Status) -> InvoiceResult<Vec<String>> {
        match self {
            Self::Sqlite(s) => Ok(s.invoices_in(status)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.invoices_in(status))?),
        }
    }

    pub fn compliance_counts(&self) -> InvoiceResult<ComplianceCounts> {
        match self {
            Self::Sqlite(s) => Ok(s.compliance_counts()?),
            Self::Postgres { pg, .. } => Ok(wait(pg.counts())?),
        }
    }

    /// Invoice records held or ever held (the numbering check).
    pub fn invoice_rows(&self) -> InvoiceResult<u64> {
        match self {
            Self::Sqlite(s) => Ok(s.invoice_rows()?),
            Self::Postgres { pg, .. } => Ok(wait(pg.rows_ever())?),
        }
    }

    pub fn next_number_seq(&self) -> InvoiceResult<i64> {
        match self {
            Self::Sqlite(s) => Ok(s.next_number_seq()?),
            Self::Postgres { pg, .. } => Ok(wait(pg.next_number_seq())?),
        }
    }

    pub fn reserve_numbers_through(&self, seq: i64) -> InvoiceResult<()> {
        match self {
            Self::Sqlite(s) => Ok(s.reserve_numbers_through(seq)?),
            Self::Postgres { pg, .. } => Ok(wait(pg.reserve_numbers_through(seq))?),
        }
    }

    /// Keeps documents found at Alegra for adoption (SQLite). The shared store does not
    /// keep them yet: with any to keep it refuses, so nothing is numbered over them.
    pub fn save_found_documents(&self, docs: &[super::FoundDocument]) -> InvoiceResult<()> {
        match self {
            Self::Sqlite(s) => Ok(s.save_found_documents(docs)?),
            Self::Postgres { .. } if docs.is_empty() => Ok(()),
            Self::Postgres { .. } => Err(InvoiceError::NotShared(
                "the shared (postgres) store does not adopt documents found at Alegra yet: numbering stays held",
            )),
        }
    }

    pub fn adopt_document(
        &self,
        stripe_id: &str,
        doc: &super::FoundDocument,
        why: &str,
    ) -> InvoiceResult<()> {
        match self {
            Self::Sqlite(s) => Ok(s.adopt_document(stripe_id, doc, why)?),
            Self::Postgres { .. } => Err(InvoiceError::NotShared(
                "the shared (postgres) store does not adopt documents found at Alegra yet",
            )),
        }
    }

    pub fn found_document_clash(&self, stripe_id: &str) -> InvoiceResult<Option<(String, String)>> {
        match self {
            Self::Sqlite(s) => Ok(s.found_document_clash(stripe_id)?),
            Self::Postgres { .. } => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_falls_back_invoices_but_never_credit_notes_and_drains_oldest_deadline_first() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::store::WallClock::default();
        let s = Store::open_with_clock(dir.path(), clock.clone()).unwrap();
        for (id, kind) in [
            ("in_a", "invoice"),
            ("cn_1", "credit_note"),
            ("in_b", "invoice"),
        ] {
            assert!(
                s.ingest_invoice(
                    &LocalInvoice::example(id, kind),
                    "2026-11-22",
                    "SETP",
                    1,
                    None
                )
                .unwrap()
            );
        }
        assert_eq!(s.enter_fallback("outage").unwrap(), 2);
        let status = |id: &str| s.invoice(id).unwrap().unwrap();
        assert_eq!(status("cn_1").status, Status::Pending);
        assert!(!status("cn_1").contingency);
        let a = status("in_a");
        assert_eq!(
            (a.status, a.contingency, a.next_at_ms),
            (Status::Fallback, true, None)
        );
        assert_eq!(s.unfinished_outage().unwrap(), Some(a.created_at_ms));
        // Held: nothing in FALLBACK is due until DIAN is back.
        let due = s.due_invoices(clock.now_ms() + 1, 10, &[], false).unwrap();
        assert_eq!(
            due.iter().map(|r| r.stripe_id.as_str()).collect::<Vec<_>>(),
            ["cn_1"]
        );

        // B gets an earlier deadline (an earlier outage) than A: B drains first.
        s.change_invoice(
            "in_b",
            &Change {
                deadline_at_ms: Some(Some(1_000)),
                message: "earlier outage",
                actor: "test",
                ..Default::default()
            },
        )
        .unwrap();
        let deadline = clock.now_ms() + 48 * 3_600_000;
        assert_eq!(s.restore_fallback(deadline, "DIAN is back").unwrap(), 1);
        assert_eq!(status("in_a").deadline_at_ms, Some(deadline));
        assert_eq!(s.unfinished_outage().unwrap(), None);
        s.postpone_invoice("in_b", 0, "due").unwrap();
        let due = s.due_invoices(clock.now_ms() + 1, 10, &[], false).unwrap();
        let order: Vec<&str> = due.iter().map(|r| r.stripe_id.as_str()).collect();
        assert_eq!(order, ["in_b", "in_a", "cn_1"]);
        // While sends are held only reads are due.
        assert!(
            s.due_invoices(clock.now_ms() + 1, 10, &[], true)
                .unwrap()
                .is_empty()
        );
        let h = s.invoice_history("in_a").unwrap();
        assert_eq!(
            h.iter().map(|e| e.message.as_str()).collect::<Vec<_>>()[1..],
            ["outage", "DIAN is back"]
        );
    }
}
