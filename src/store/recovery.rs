//! A store that knows it is the one this data dir had: its id is kept in the database
//! (`meta.store_id`) and in a marker file beside it (`store.id`). A database that is
//! missing, emptied or swapped while the marker, backups or reports say there was one is
//! refused, because an engine that starts from nothing issues every invoice again.
//! Also the numbering's state: the counter the DIAN numbers come from, and the documents
//! found at Alegra when a store is rebuilt on purpose.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, WallClock};

/// The marker file beside the database.
pub const MARKER: &str = "store.id";

/// How the store was found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The database was created now (missing or empty before).
    pub created: bool,
    /// Started over on purpose (`--fresh-store`) where evidence said there was a store.
    pub rebuilt: bool,
}

/// A document found at Alegra with this engine's numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDocument {
    pub number: String,
    pub alegra_id: String,
    /// From its `stripe:<invoice id>` annotation.
    pub stripe_id: Option<String>,
    pub legal_status: Option<String>,
    pub cufe: Option<String>,
    /// The document's date (`YYYY-MM-DD`): an adopted invoice keeps it.
    pub date: String,
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .count()
    })
}

/// What in `dir` says a store was here (beside a database that is new or not the one
/// the marker names).
fn evidence(dir: &Path, db_id: &str, created: bool) -> Vec<String> {
    let mut found = Vec::new();
    let marker = dir.join(MARKER);
    if let Some(id) = read_marker(&marker) {
        let id = id.as_str();
        if id != db_id {
            found.push(format!(
                "{} names store {id}, but syncctl.db is {}",
                marker.display(),
                if created {
                    "new (it was missing or empty)".to_owned()
                } else {
                    format!("store {db_id}")
                }
            ));
        }
    }
    if created {
        for (sub, what) in [
            (PathBuf::from("backups").join("invoices"), "invoice backups"),
            (PathBuf::from("reports"), "compliance reports"),
        ] {
            let n = files_in(&dir.join(&sub));
            if n > 0 {
                found.push(format!("{what}: {n} files in {}", dir.join(sub).display()));
            }
        }
    }
    found
}

impl Store {
    /// Opens the engine's store under `dir`, refusing a database that is missing, empty
    /// or another store's where the data dir shows there was one — unless `fresh` (the
    /// operator's explicit `--fresh-store`). Writes the marker.
    pub fn open_checked(
        dir: &Path,
        clock: WallClock,
        fresh: bool,
    ) -> anyhow::Result<(Self, Opened)> {
        let (store, created) = Self::open_inner(dir, clock)?;
        let db_id = store.meta("store_id")?.unwrap_or_default();
        let found = evidence(dir, &db_id, created);
        if !found.is_empty() && !fresh {
            anyhow::bail!(
                "refusing to start: the store {} is {}, but this data dir held one:\n  - {}\n\
                 An engine that starts from nothing would number and send every paid invoice again. Nothing was sent.\n\
                 To recover: stop, restore syncctl.db (with syncctl.db-wal if there is one) from your backup into {}, and start again;\n\
                 or rebuild it from what Alegra and QuickBooks hold (documents adopted by their stripe: annotation, numbering continued after the highest used, Items found by Sku): start once with --fresh-store (e.g. `syncctl run --fresh-store`).\n\
                 QuickBooks' refresh token rotated with the lost store: if the engine then reports invalid_grant, re-authorise and set quickbooks.refresh_token.",
                store.path().display(),
                if created {
                    "missing or empty"
                } else {
                    "not the one its marker names"
                },
                found.join("\n  - "),
                dir.display(),
            );
        }
        let marker = dir.join(MARKER);
        if read_marker(&marker).as_deref() != Some(db_id.as_str()) {
            write_marker(&marker, &db_id)?;
        }
        let rebuilt = fresh && !found.is_empty();
        if rebuilt {
            store.set_meta("rebuilt_at", &store.now_ms().to_string())?;
            store.audit(
                "engine",
                "store",
                "engine",
                &format!(
                    "store started over on purpose (--fresh-store) where there was one: {}",
                    found.join("; ")
                ),
            )?;
        }
        Ok((store, Opened { created, rebuilt }))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.r()
            .query_row("SELECT value FROM meta WHERE key=?1", params![key], |r| {
                r.get(0)
            })
            .optional()
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.w().execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The sequence the next DIAN number takes (`number_start + seq`): 0 before any.
    pub fn next_number_seq(&self) -> Result<i64> {
        Ok(self
            .r()
            .query_row(
                "SELECT value + 1 FROM counters WHERE name='invoice_number'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Whether any DIAN number was ever issued from this store.
    pub fn numbering_started(&self) -> Result<bool> {
        Ok(self
            .r()
            .query_row(
                "SELECT 1 FROM counters WHERE name='invoice_number'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Makes sure sequence `seq` and every one before it count as used: the next number
    /// issued is after it. Never moves the counter back.
    pub fn reserve_numbers_through(&self, seq: i64) -> Result<()> {
        self.w().execute(
            "INSERT INTO counters(name, value) VALUES ('invoice_number', ?1)
             ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
            params![seq],
        )?;
        Ok(())
    }

    /// Keeps the documents found at Alegra, so each is adopted by its Stripe invoice.
    pub fn save_found_documents(&self, docs: &[FoundDocument]) -> Result<()> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let now = self.now_ms();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO alegra_documents(number, alegra_id, stripe_id, legal_status, cufe, date, found_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(number) DO UPDATE SET alegra_id = excluded.alegra_id,
                   stripe_id = excluded.stripe_id, legal_status = excluded.legal_status,
                   cufe = excluded.cufe, date = excluded.date, found_at = excluded.found_at",
            )?;
            for d in docs {
                insert.execute(params![
                    d.number,
                    d.alegra_id,
                    d.stripe_id,
                    d.legal_status,
                    d.cufe,
                    d.date,
                    now
                ])?;
            }
        }
        tx.commit()
    }

    /// Invoice records this store holds or held (purged by retention included).
    pub fn invoice_rows(&self) -> Result<u64> {
        self.r()
            .query_row(
                "SELECT (SELECT COUNT(*) FROM invoices) + (SELECT COUNT(*) FROM purged_invoices)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
    }

    /// A document kept for `stripe_id` (found at Alegra) whose number another invoice
    /// record of this store holds: (number, that invoice). Only two issuers of one range
    /// lead here.
    pub fn found_document_clash(&self, stripe_id: &str) -> Result<Option<(String, String)>> {
        self.r()
            .query_row(
                "SELECT d.number, i.stripe_id FROM alegra_documents d
                 JOIN invoices i ON i.number = d.number AND i.stripe_id <> d.stripe_id
                 WHERE d.stripe_id=?1 AND coalesce(d.legal_status, '') <> 'STAMPED_AND_REJECTED'
                 LIMIT 1",
                params![stripe_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Gives `stripe_id`'s record its own document found at Alegra under another number
    /// (with the document's date): read there (UNKNOWN) before anything else.
    pub fn adopt_document(&self, stripe_id: &str, doc: &FoundDocument, why: &str) -> Result<()> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let now = self.now_ms();
        let (status, attempts, date): (String, u32, String) = tx.query_row(
            "SELECT status, attempts, issue_date FROM invoices WHERE stripe_id=?1",
            params![stripe_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let date = if doc.date.is_empty() {
            date
        } else {
            doc.date.clone()
        };
        tx.execute(
            "UPDATE invoices SET number=?2, alegra_id=?3, status='UNKNOWN', next_at=?4, sending=0,
                                 cufe=NULL, issue_date=?6, last_message=?5, updated_at=?4
             WHERE stripe_id=?1",
            params![stripe_id, doc.number, doc.alegra_id, now, why, date],
        )?;
        tx.execute(
            "INSERT INTO invoice_history(stripe_id, at, from_status, to_status, attempt, code, message, actor)
             VALUES (?1, ?2, ?3, 'UNKNOWN', ?4, NULL, ?5, 'engine')",
            params![stripe_id, now, status, attempts, why],
        )?;
        tx.commit()
    }

    /// How many documents found at Alegra wait for their Stripe invoice.
    pub fn found_documents(&self) -> Result<u64> {
        self.r()
            .query_row("SELECT COUNT(*) FROM alegra_documents", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
    }
}

/// The store id a marker file names (its first line).
fn read_marker(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.lines().next()?.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

fn write_marker(path: &Path, id: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("id.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        writeln!(
            f,
            "{id}\n# syncctl: the id of syncctl.db beside this file. Do not delete: it is how a lost or emptied database is noticed."
        )?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_database_is_refused_and_a_fresh_start_needs_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (s, opened) = Store::open_checked(dir.path(), WallClock::default(), false).unwrap();
        assert!(opened.created && !opened.rebuilt);
        let id = s.meta("store_id").unwrap().unwrap();
        drop(s);
        // Restart: the same store.
        let (_, opened) = Store::open_checked(dir.path(), WallClock::default(), false).unwrap();
        assert!(!opened.created);
        // Deleted: refused, naming the marker and the way out.
        for f in ["syncctl.db", "syncctl.db-wal", "syncctl.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let e = Store::open_checked(dir.path(), WallClock::default(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&id) && e.contains("--fresh-store"), "{e}");
        // Still refused the next time (the new file is not the store either).
        assert!(Store::open_checked(dir.path(), WallClock::default(), false).is_err());
        // On purpose: started, and remembered.
        let (s, opened) = Store::open_checked(dir.path(), WallClock::default(), true).unwrap();
        assert!(opened.rebuilt);
        assert!(s.meta("rebuilt_at").unwrap().is_some());
        drop(s);
        assert!(Store::open_checked(dir.path(), WallClock::default(), false).is_ok());
    }

    #[test]
    fn an_emptied_database_with_backups_beside_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backups = dir.path().join("backups").join("invoices");
        std::fs::create_dir_all(&backups).unwrap();
        std::fs::write(backups.join("SETP990000001.json.gz"), b"x").unwrap();
        std::fs::write(dir.path().join("syncctl.db"), b"").unwrap();
        let e = Store::open_checked(dir.path(), WallClock::default(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("invoice backups: 1 files"), "{e}");
    }

    #[test]
    fn the_counter_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(!s.numbering_started().unwrap());
        assert_eq!(s.next_number_seq().unwrap(), 0);
        s.reserve_numbers_through(41).unwrap();
        s.reserve_numbers_through(7).unwrap();
        assert_eq!(s.next_number_seq().unwrap(), 42);
        assert!(s.numbering_started().unwrap());
    }
}
