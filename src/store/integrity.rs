//! The start-up integrity check: a database with a damaged page must not be run on —
//! the engine would lose or repeat work in ways nobody sees. `PRAGMA quick_check` reads
//! every page (without the index cross-checks of `integrity_check`), so it is linear in
//! the file's size: a second or so for a few hundred megabytes. It runs table by table,
//! leaving out the audit text index's own (FTS5) consistency check, which alone re-reads
//! the whole trail; that index's pages are still read.

use std::path::Path;

use rusqlite::Connection;

/// Fails, naming the file and what to do, when `conn`'s database is damaged.
pub fn check(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let problems = match problems(conn) {
        Ok(lines) if lines.is_empty() => return Ok(()),
        Ok(lines) => lines.join("; "),
        Err(e) => e.to_string(),
    };
    let p = path.display();
    tracing::error!("{p} is damaged: {problems}");
    anyhow::bail!(
        "the database {p} is damaged (PRAGMA quick_check: {problems}). syncctl will not run on it. \
         Stop here and keep a copy of the file (with its -wal file, if any); then restore {p} from a backup, \
         or salvage what is readable: `sqlite3 {p} \".recover\" | sqlite3 {p}.recovered` \
         and move {p}.recovered into place of {p}"
    )
}

/// What `PRAGMA quick_check` finds wrong, table by table: every page of every table
/// and index (the text index's too, as the tables it is stored in) — but not the text
/// index's own consistency check, which re-reads the whole audit trail (seconds over a
/// million entries) for an index that is derived data.
fn problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table'
               AND sql NOT LIKE 'CREATE VIRTUAL TABLE%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut found = Vec::new();
    for t in tables {
        let lines: Vec<String> = conn
            .prepare(&format!(
                "PRAGMA quick_check(\"{}\")",
                t.replace('"', "\"\"")
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        found.extend(lines.into_iter().filter(|l| l != "ok"));
        if found.len() >= 20 {
            break;
        }
    }
    Ok(found)
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
        check(&conn, &path).unwrap();
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
        let e = check(&conn, &path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("damaged") && e.contains(".recover"), "{e}");
    }
}
