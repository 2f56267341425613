//! Compliance housekeeping, under the data dir:
//!
//! - `backups/invoices/<number>.json.gz`: every invoice not yet VALIDATED, its Alegra
//!   payload, compliance metadata and history, rewritten (atomically) when it changes;
//!   enough to issue it by hand if the database were lost. An invoice's backup goes the
//!   moment it is VALIDATED ([`remove_backup`], called by the pipeline), and any pass
//!   removes the backup of a record it finds VALIDATED: a file that still said PENDING
//!   or FALLBACK for an invoice DIAN accepted would have it issued twice.
//! - retention: backup files and VALIDATED records older than `retention_days` go
//!   (a tombstone keeps a purged invoice from being issued again).
//! - `reports/compliance-<day>.json`: the day's invoices by state, % validated, mean
//!   and p95 time to validation, and the oldest invoice not yet validated. Today's is
//!   rewritten on every pass; a finished day's gets its final version after midnight.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::compliance::machine::Status;
use crate::store::{InvoiceRecord, Store, private};

use super::compliance::{alegra_body, colombia_date};

const DAY_MS: i64 = 86_400_000;
const COLOMBIA_OFFSET_MS: i64 = -5 * 3_600_000;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassSummary {
    pub backed_up: usize,
    pub backups_removed: usize,
    pub records_purged: usize,
    pub reports: Vec<PathBuf>,
}

pub struct Housekeeping {
    store: Store,
    dir: PathBuf,
    retention_ms: i64,
    /// Records changed since this time are backed up on the next pass.
    backed_up_to: i64,
    report_day: Option<String>,
}

impl Housekeeping {
    pub fn new(store: Store, data_dir: &Path, retention_days: u64) -> Self {
        Self {
            store,
            dir: data_dir.to_owned(),
            retention_ms: retention_days as i64 * DAY_MS,
            backed_up_to: 0,
            report_day: None,
        }
    }

    pub fn backup_dir(&self) -> PathBuf {
        backup_dir(&self.dir)
    }

    pub fn report_path(&self, day: &str) -> PathBuf {
        self.dir
            .join("reports")
            .join(format!("compliance-{day}.json"))
    }

    /// Backs up, applies retention and writes the reports.
    pub fn pass(&mut self) -> anyhow::Result<PassSummary> {
        let now = self.store.now_ms();
        let mut summary = PassSummary {
            backed_up: self.backup(now)?,
            ..Default::default()
        };
        summary.backups_removed = self.remove_old_backups()?;
        summary.records_purged = self.store.purge_validated_before(now - self.retention_ms)?;
        let today = colombia_date(now);
        if let Some(day) = self.report_day.clone().filter(|d| *d != today) {
            summary.reports.push(self.write_report(&day, now)?);
        }
        summary.reports.push(self.write_report(&today, now)?);
        self.report_day = Some(today);
        Ok(summary)
    }

    /// Only the backups (cheap when little changed): between full passes.
    pub fn backup_pass(&mut self) -> anyhow::Result<usize> {
        let now = self.store.now_ms();
        self.backup(now)
    }

    fn backup(&mut self, now: i64) -> anyhow::Result<usize> {
        let records = self.store.invoices_changed_since(self.backed_up_to)?;
        let dir = self.backup_dir();
        private::create_dir(&dir)?;
        let mut written = 0;
        for rec in &records {
            // Under the backups' lock, the record as it is now: a validation (which
            // removes the file under this lock, after storing the state) can come
            // between the query and the write, and must not leave a stale file behind.
            let _guard = BACKUPS.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rec) = self.store.invoice(&rec.stripe_id)? else {
                continue;
            };
            let rec = &rec;
            if rec.status == Status::Validated {
                remove_backup_locked(&self.dir, &rec.number)?;
                continue;
            }
            written += 1;
            let history = self.store.invoice_history(&rec.stripe_id)?;
            let doc = json!({
                "stripe_id": rec.stripe_id,
                "number": rec.number,
                "kind": rec.kind,
                "status": rec.status.name(),
                "attempts": rec.attempts,
                "issue_date": rec.issue_date,
                "alegra_id": rec.alegra_id,
                "cufe": rec.cufe,
                "contingency": rec.contingency,
                "deadline_at_ms": rec.deadline_at_ms,
                "last_code": rec.last_code,
                "last_message": rec.last_message,
                "created_at_ms": rec.created_at_ms,
                "updated_at_ms": rec.updated_at_ms,
                "invoice": rec.invoice,
                "alegra_payload": alegra_body(rec),
                "history": history.iter().map(|h| json!({
                    "at_ms": h.at_ms, "from": h.from, "to": h.to, "attempt": h.attempt,
                    "code": h.code, "message": h.message, "actor": h.actor,
                })).collect::<Vec<_>>(),
            });
            write_gz(&dir.join(format!("{}.json.gz", rec.number)), &doc)?;
        }
        // `now` was read before the query: a change in that very millisecond is
        // written again by the next pass, never missed.
        self.backed_up_to = now;
        Ok(written)
    }

    fn remove_old_backups(&self) -> anyhow::Result<usize> {
        let cutoff = SystemTime::now() - Duration::from_millis(self.retention_ms as u64);
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(self.backup_dir()) else {
            return Ok(0);
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The report of Colombian day `day` (`YYYY-MM-DD`).
    pub fn report(&self, day: &str, now: i64) -> anyhow::Result<Value> {
        let start = day_start_ms(day)?;
        let records = self.store.invoices_created_between(start, start + DAY_MS)?;
        Ok(report(
            day,
            &records,
            self.store.oldest_unvalidated()?.as_ref(),
            now,
        ))
    }

    fn write_report(&self, day: &str, now: i64) -> anyhow::Result<PathBuf> {
        let path = self.report_path(day);
        let doc = self.report(day, now)?;
        if let Some(parent) = path.parent() {
            private::create_dir(parent)?;
        }
        private::write_atomic(&path, "json.tmp", &serde_json::to_vec_pretty(&doc)?)?;
        Ok(path)
    }
}

/// Where the invoice backups of data dir `data_dir` are.
pub fn backup_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("backups").join("invoices")
}

/// Backups are written and removed one at a time (see [`Housekeeping::backup`]).
static BACKUPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Removes invoice `number`'s backup (it is VALIDATED: nothing is to be issued from
/// it); true when there was one. Call it after the VALIDATED state is stored.
pub fn remove_backup(data_dir: &Path, number: &str) -> std::io::Result<bool> {
    let _guard = BACKUPS.lock().unwrap_or_else(|p| p.into_inner());
    remove_backup_locked(data_dir, number)
}

fn remove_backup_locked(data_dir: &Path, number: &str) -> std::io::Result<bool> {
    match std::fs::remove_file(backup_dir(data_dir).join(format!("{number}.json.gz"))) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Midnight in Colombia starting `day`, in ms since the epoch.
fn day_start_ms(day: &str) -> anyhow::Result<i64> {
    let d = time::Date::parse(
        day,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|e| anyhow::anyhow!("bad day {day:?}: {e}"))?;
    Ok(d.midnight().assume_utc().unix_timestamp() * 1000 - COLOMBIA_OFFSET_MS)
}

/// The daily report over the invoices created that day.
pub fn report(
    day: &str,
    records: &[InvoiceRecord],
    oldest: Option<&InvoiceRecord>,
    now: i64,
) -> Value {
    let by_state: serde_json::Map<String, Value> = Status::ALL
        .iter()
        .map(|s| {
            let n = records.iter().filter(|r| r.status == *s).count();
            (s.name().to_owned(), json!(n))
        })
        .collect();
    let validated = records
        .iter()
        .filter(|r| r.status == Status::Validated)
        .count();
    let mut secs: Vec<f64> = records
        .iter()
        .filter_map(|r| Some((r.validated_at_ms? - r.created_at_ms) as f64 / 1000.0))
        .collect();
    secs.sort_by(f64::total_cmp);
    let mean = (!secs.is_empty()).then(|| secs.iter().sum::<f64>() / secs.len() as f64);
    // Nearest rank: the smallest value with at least 95 % of samples at or below it.
    let p95 = (!secs.is_empty()).then(|| {
        let rank = ((0.95 * secs.len() as f64).ceil() as usize).clamp(1, secs.len());
        secs[rank - 1]
    });
    let percent = if records.is_empty() {
        None
    } else {
        Some((validated as f64 * 1000.0 / records.len() as f64).round() / 10.0)
    };
    json!({
        "day": day,
        "timezone": "UTC-05:00 (Colombia)",
        "generated_at_ms": now,
        "invoices": records.len(),
        "by_state": by_state,
        "validated_percent": percent,
        "time_to_validation_secs": {
            "samples": secs.len(),
            "mean": mean.map(|m| (m * 10.0).round() / 10.0),
            "p95": p95.map(|p| (p * 10.0).round() / 10.0),
        },
        "contingency_invoices": records.iter().filter(|r| r.contingency).count(),
        "oldest_not_validated": oldest.map(|r| json!({
            "number": r.number,
            "stripe_id": r.stripe_id,
            "status": r.status.name(),
            "created_at_ms": r.created_at_ms,
            "age_secs": (now - r.created_at_ms) / 1000,
            "last_message": r.last_message,
        })),
    })
}

fn write_gz(path: &Path, doc: &Value) -> anyhow::Result<()> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(doc)?)?;
    private::write_atomic(path, "gz.tmp", &gz.finish()?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::invoice::LocalInvoice;
    use crate::store::{Change, WallClock};
    use std::io::Read;

    fn to(s: &Store, id: &str, status: Status) {
        s.change_invoice(
            id,
            &Change {
                to: Some(status),
                message: "test",
                actor: "test",
                ..Default::default()
            },
        )
        .unwrap();
    }

    fn read_gz(path: &Path) -> Value {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn backs_up_what_is_not_validated_reports_the_day_and_keeps_purged_invoices_out() {
        let dir = tempfile::tempdir().unwrap();
        let clock = WallClock::default();
        // Noon in Colombia, so the day's invoices stay in one day.
        clock.set(day_start_ms("2026-11-20").unwrap() + 12 * 3_600_000);
        let s = Store::open_with_clock(dir.path(), clock.clone()).unwrap();
        for id in ["in_1", "in_2", "in_3", "in_4"] {
            s.ingest_invoice(
                &LocalInvoice::example(id, "invoice"),
                "2026-11-20",
                "SETP",
                1,
                None,
            )
            .unwrap();
        }
        clock.advance(10_000);
        to(&s, "in_1", Status::Validated);
        clock.advance(30_000);
        to(&s, "in_2", Status::Validated);
        to(&s, "in_3", Status::Failed);

        clock.advance(1_000);
        let mut h = Housekeeping::new(s.clone(), dir.path(), 90);
        let first = h.pass().unwrap();
        assert_eq!(first.backed_up, 2, "in_3 (FAILED) and in_4 (PENDING)");
        let files: Vec<String> = std::fs::read_dir(h.backup_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        let failed = s.invoice("in_3").unwrap().unwrap();
        let b = read_gz(&h.backup_dir().join(format!("{}.json.gz", failed.number)));
        assert_eq!(b["status"], "FAILED");
        assert_eq!(b["alegra_payload"]["anotation"], "stripe:in_3");
        assert_eq!(b["history"].as_array().unwrap().len(), 2);
        // Nothing changed: nothing rewritten.
        assert_eq!(h.pass().unwrap().backed_up, 0);

        let r: Value =
            serde_json::from_slice(&std::fs::read(h.report_path("2026-11-20")).unwrap()).unwrap();
        assert_eq!(r["invoices"], 4);
        assert_eq!(r["by_state"]["VALIDATED"], 2);
        assert_eq!(r["by_state"]["FAILED"], 1);
        assert_eq!(r["validated_percent"], 50.0);
        // Validated after 10 s and 40 s: mean 25 s, p95 (nearest rank) 40 s.
        assert_eq!(r["time_to_validation_secs"]["mean"], 25.0);
        assert_eq!(r["time_to_validation_secs"]["p95"], 40.0);
        assert_eq!(r["oldest_not_validated"]["stripe_id"], "in_3");

        // A day later the finished day's report is written once more, and today's too.
        clock.advance(DAY_MS);
        let next = h.pass().unwrap();
        assert_eq!(
            next.reports,
            vec![h.report_path("2026-11-20"), h.report_path("2026-11-21")]
        );

        // After the retention, validated records go; a purged invoice never comes back.
        let old = std::fs::File::options()
            .write(true)
            .open(h.backup_dir().join(format!("{}.json.gz", failed.number)))
            .unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(91 * 86_400))
            .unwrap();
        clock.advance(91 * DAY_MS);
        let late = h.pass().unwrap();
        assert_eq!(late.records_purged, 2);
        assert_eq!(late.backups_removed, 1);
        assert!(s.invoice("in_1").unwrap().is_none());
        assert!(
            s.invoice("in_3").unwrap().is_some(),
            "FAILED is never purged"
        );
        assert!(
            !s.ingest_invoice(
                &LocalInvoice::example("in_1", "invoice"),
                "2026-11-20",
                "SETP",
                1,
                None
            )
            .unwrap(),
            "a purged invoice is not issued again"
        );
    }

    #[test]
    fn an_empty_day_reports_no_percentages() {
        let r = report("2026-11-20", &[], None, 0);
        assert_eq!(r["invoices"], 0);
        assert!(r["validated_percent"].is_null());
        assert!(r["time_to_validation_secs"]["p95"].is_null());
    }
}
