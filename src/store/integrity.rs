//! The integrity checks: a database with a damaged page must not be run on — the
//! engine would lose or repeat work in ways nobody sees.
//!
//! `PRAGMA quick_check` reads every page, so it is linear in the file's size: a second
//! or more for a few hundred megabytes of history, too slow for every start. So the
//! check is split:
//!
//! - **At start** ([`check_at_start`]), bounded whatever the history: every table that
//!   does not grow with history (cursors, tokens, invoices, numbering, counters…) gets
//!   its full `quick_check`; each history table ([`HISTORY`]: jobs, mappings, the audit
//!   trail and its text index) is probed along both edges of its b-tree (root page,
//!   first and last leaf) and through each of its indexes the same way. A damaged
//!   root, a file that is not a database, a truncated file: refused before anything runs.
//! - **In the background** ([`check_fully`]), right after start: the full table-by-table
//!   `quick_check` on a read connection. If it finds damage, the engine stops writing
//!   (the writer turns query-only), health says so with the fix, and a marker file
//!   (`syncctl.db.damaged`) makes every later start run the full check before anything
//!   else, until it passes (the file was restored or recovered).
//!
//! The audit text index's own (FTS5) consistency check is left out: it re-reads the
//! whole trail for an index that is derived data; that index's pages are still read.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// The tables that grow with history: probed at start, read whole in the background.
/// Any other table (one added later included) is read whole at start.
const HISTORY: &[&str] = &[
    "jobs",
    "item_map",
    "job_keys",
    "stripe_events",
    "audit",
    "audit_search_data",
    "audit_search_idx",
    "audit_search_docsize",
    // The text index before schema 14 (a store not yet migrated is checked first).
    "audit_text_data",
    "audit_text_idx",
    "audit_text_docsize",
];

/// Where a damage found by the background check is remembered for the next starts.
pub fn damaged_marker(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".damaged");
    PathBuf::from(name)
}

/// The refusal: names the file, what was found and what to do.
pub fn refusal(path: &Path, problems: &str) -> String {
    let p = path.display();
    format!(
        "the database {p} is damaged (PRAGMA quick_check: {problems}). syncctl will not run on it. \
         Stop here and keep a copy of the file (with its -wal file, if any); then restore {p} from a backup, \
         or salvage what is readable: `sqlite3 {p} \".recover\" | sqlite3 {p}.recovered` \
         and move {p}.recovered into place of {p}"
    )
}

/// Fails, naming the file and what to do, when `conn`'s database is damaged: in full
/// when a previous check found damage (the marker is there; removed once it passes),
/// else the bounded start-up check.
pub fn check_at_start(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let marker = damaged_marker(path);
    let full = marker.exists();
    let found = if full {
        problems(conn, &|_| true)
    } else {
        start_problems(conn)
    };
    let problems = match found {
        Ok(lines) if lines.is_empty() => {
            if full {
                tracing::info!(
                    "{}: the full integrity check passes again; {} removed",
                    path.display(),
                    marker.display()
                );
                let _ = std::fs::remove_file(&marker);
            }
            return Ok(());
        }
        Ok(lines) => lines.join("; "),
        Err(e) => e.to_string(),
    };
    let why = refusal(path, &problems);
    tracing::error!("{why}");
    anyhow::bail!(why)
}

/// The full check of every table (the background one): the problems found, none when
/// the database is sound. A damage found is remembered in the marker file.
pub fn check_fully(conn: &Connection, path: &Path) -> Result<(), String> {
    let problems = match problems(conn, &|_| true) {
        Ok(lines) if lines.is_empty() => return Ok(()),
        Ok(lines) => lines.join("; "),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::write(damaged_marker(path), format!("{problems}\n"));
    Err(problems)
}

/// The names of the tables SQLite stores (virtual tables' own shadow tables included,
/// the virtual tables themselves not).
fn tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table'
           AND sql NOT LIKE 'CREATE VIRTUAL TABLE%'",
    )?
    .query_map([], |r| r.get(0))?
    .collect()
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What `PRAGMA quick_check` finds wrong in the tables `which` selects, table by table:
/// every page of each table and its indexes.
fn problems(conn: &Connection, which: &dyn Fn(&str) -> bool) -> rusqlite::Result<Vec<String>> {
    let mut found = Vec::new();
    for t in tables(conn)?.into_iter().filter(|t| which(t)) {
        let lines: Vec<String> = conn
            .prepare(&format!("PRAGMA quick_check({})", quoted(&t)))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        found.extend(lines.into_iter().filter(|l| l != "ok"));
        if found.len() >= 20 {
            break;
        }
    }
    Ok(found)
}

/// The bounded check: the other tables in full, the history tables by their edges.
fn start_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut found = problems(conn, &|t| !HISTORY.contains(&t))?;
    let present = tables(conn)?;
    for t in HISTORY.iter().filter(|t| present.iter().any(|p| p == *t)) {
        if let Err(e) = probe(conn, t) {
            found.push(format!("{t}: {e}"));
        }
    }
    Ok(found)
}

/// Reads `table`'s b-tree from its root to its first and last leaf, and each of its
/// indexes the same way (a partial index, which a plain read cannot name, is left to
/// the background check).
fn probe(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    let t = quoted(table);
    // A read SQLite cannot plan (an index it will not name for it) proves nothing
    // either way: left to the background check. A read that fails is the damage.
    let first = |sql: &str| -> rusqlite::Result<()> {
        let Ok(mut stmt) = conn.prepare(sql) else {
            return Ok(());
        };
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    };
    let rowid = conn
        .prepare(&format!("SELECT rowid FROM {t} LIMIT 0"))
        .is_ok();
    if rowid {
        first(&format!("SELECT * FROM {t} ORDER BY rowid LIMIT 1"))?;
        first(&format!("SELECT * FROM {t} ORDER BY rowid DESC LIMIT 1"))?;
    } else {
        first(&format!("SELECT * FROM {t} LIMIT 1"))?;
    }
    let indexes: Vec<(String, bool)> = conn
        .prepare("SELECT name, partial FROM pragma_index_list(?1)")?
        .query_map([table], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?
        .collect::<rusqlite::Result<_>>()?;
    for (index, partial) in indexes {
        if partial {
            continue;
        }
        let column: Option<String> = conn
            .prepare("SELECT name FROM pragma_index_info(?1) WHERE seqno = 0")?
            .query_row([&index], |r| r.get(0))
            .ok()
            .flatten();
        let Some(column) = column else { continue };
        let (i, c) = (quoted(&index), quoted(&column));
        first(&format!(
            "SELECT {c} FROM {t} INDEXED BY {i} ORDER BY {c} LIMIT 1"
        ))?;
        first(&format!(
            "SELECT {c} FROM {t} INDEXED BY {i} ORDER BY {c} DESC LIMIT 1"
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_database_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        check_at_start(&conn, &path).unwrap();
    }

    #[test]
    fn a_damaged_page_is_refused_with_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let root: i64 = {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE t(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
                 INSERT INTO t SELECT printf('row %d with some text to fill pages', i) FROM n;",
            )
            .unwrap();
            conn.query_row(
                "SELECT rootpage FROM sqlite_master WHERE name='t'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        let at = (root as usize - 1) * page;
        bytes[at..at + page].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();
        let conn = Connection::open(&path).unwrap();
        let e = check_at_start(&conn, &path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("damaged") && e.contains(".recover"), "{e}");
    }

    /// A damaged page in the middle of a history table is not read by the bounded
    /// start-up check (so a start over a long history stays fast), but the background
    /// check finds it: the store stops writing, says why, and every later start checks
    /// in full and refuses until the file is sound again.
    #[test]
    fn damage_in_the_middle_of_history_is_found_in_the_background_and_refused_at_every_start_after()
    {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("syncctl.db");
        let leaf: i64 = {
            let store = crate::store::Store::open(dir.path()).unwrap();
            store
                .seed_history(3000, 10, crate::store::now_ms())
                .unwrap();
            drop(store);
            let c = Connection::open(&db).unwrap();
            c.query_row(
                "SELECT pageno FROM dbstat WHERE name = 'jobs' AND pagetype = 'leaf'
                   ORDER BY path LIMIT 1 OFFSET (SELECT COUNT(*) / 2 FROM dbstat
                     WHERE name = 'jobs' AND pagetype = 'leaf')",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let mut bytes = std::fs::read(&db).unwrap();
        let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
        let at = (leaf as usize - 1) * page;
        bytes[at..at + page].fill(0xA5);
        std::fs::write(&db, bytes).unwrap();

        // The bounded check passes; the full one does not.
        let store = crate::store::Store::open(dir.path()).unwrap();
        assert_eq!(store.damaged(), None);
        let why = store.check_integrity().unwrap_err();
        assert!(why.contains("damaged") && why.contains(".recover"), "{why}");
        assert_eq!(store.damaged().as_deref(), Some(why.as_str()));
        // Nothing more is written into the damaged file.
        assert!(store.audit("item", "prod_1", "engine", "after").is_err());
        assert!(store.write_health().failing_since_ms.is_some());
        drop(store);

        // Every later start checks in full and refuses.
        assert!(damaged_marker(&db).exists());
        let e = crate::store::Store::open(dir.path())
            .err()
            .expect("a damaged store is refused")
            .to_string();
        assert!(
            e.contains("damaged") && e.contains(&db.display().to_string()),
            "{e}"
        );
        assert!(crate::store::Store::open(dir.path()).is_err());
    }

    /// A sound store passes the background check, and a marker left by an earlier
    /// damage goes once the file passes the full check (it was restored).
    #[test]
    fn a_restored_file_passes_the_full_check_and_the_marker_goes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("syncctl.db");
        let store = crate::store::Store::open(dir.path()).unwrap();
        store.seed_history(500, 10, crate::store::now_ms()).unwrap();
        assert_eq!(store.check_integrity(), Ok(()));
        drop(store);
        std::fs::write(damaged_marker(&db), "earlier damage\n").unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        assert!(!damaged_marker(&db).exists());
        assert!(store.audit("item", "prod_1", "engine", "restored").is_ok());
    }
}
