//! `PRAGMA integrity_check` split over the cores, with the verdict of the whole check.
//!
//! What the whole check does (SQLite's `pragma.c`, `PragTyp_INTEGRITY_CHECK`, and
//! `sqlite3BtreeIntegrityCheck` in `btree.c`), and where each part runs here:
//!
//! 1. One b-tree pass over every table and index together: page structure, the freelist, every
//!    page used exactly once, the auto-vacuum pointer map, and the entry count of each tree.
//!    `quick_check` runs exactly this pass too (it skips only step 3 below); the per-table
//!    form cannot (its pass is "partial": no freelist, no page accounting, since it sees only
//!    some trees). So `quick_check` runs here, on its own connection.
//! 2. Per table: NOT NULL, column types and CHECK constraints on every row (in `quick_check`
//!    as well as in `integrity_check(T)`).
//! 3. Per table: every row has its entry in each index, no extra entries, UNIQUE holds.
//!    `PRAGMA integrity_check(T)` runs steps 2 and 3 for table `T` only, with the code the whole
//!    check generates for `T`, and a b-tree pass over `T`'s trees.
//!
//! Every problem the whole check reports therefore shows up in `quick_check` (step 1 and 2) or
//! in `integrity_check(T)` for its table (steps 2 and 3), and both report only what the whole
//! check also reports: the verdict is the same. The split is used only where it can be
//! exact and faster: two cores or more, two tables or more, no virtual table (their own
//! `xIntegrity` runs differently in `quick_check`), no table whose name the pragma would read
//! as a number (an error limit). Otherwise, and when the schema cannot even be read, the whole
//! check runs as one pragma.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{open_read_only, sqlite_error, CheckOutcome, MAX_PROBLEMS};
use crate::error::Result;

/// One part of a split check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `PRAGMA quick_check`: the b-tree pass over the whole file.
    Whole,
    /// `PRAGMA integrity_check(table)`.
    Table(String),
    /// `PRAGMA foreign_key_check(table)` (a drill's), after every part of the integrity check.
    ForeignKeys(String),
}

/// `PRAGMA integrity_check` of the database at `path`, on up to `threads` connections.
pub(super) fn integrity(path: &Path, threads: usize) -> Result<CheckOutcome> {
    let parts = match open_read_only(path).map(|conn| plan(&conn)) {
        Ok(Some(parts)) if threads >= 2 => parts,
        _ => return pragma(path, "integrity_check", None).map(outcome),
    };
    let conns = (0..threads.min(parts.len()))
        .map(|_| open_read_only(path))
        .collect::<Result<Vec<_>>>()?;
    split(conns, &parts, path)
}

/// `check` (`quick_check` or `integrity_check`) of one committed state of the database at
/// `path`, on `conns`: connections that all read that same state (an incremental's read
/// snapshot), each on its own thread. `integrity_check` is split as in [`integrity`] when
/// there are two connections or more and the split is exact; otherwise the whole check runs
/// as one pragma on the first connection.
pub(super) fn on_connections(
    conns: Vec<Connection>,
    path: &Path,
    check: &str,
) -> Result<CheckOutcome> {
    let Some(first) = conns.first() else {
        return Err(crate::error::Error::Internal(
            "a check needs a connection".into(),
        ));
    };
    match plan(first) {
        Some(parts) if check == "integrity_check" && conns.len() >= 2 => {
            let conns: Vec<Connection> = conns.into_iter().take(parts.len()).collect();
            split(conns, &parts, path)
        }
        _ => whole_on(first, path, check),
    }
}

/// `PRAGMA integrity_check` as in [`integrity`], then `PRAGMA foreign_key_check(T)` of each
/// table with foreign keys (biggest first) as the last parts of the same split, each check with
/// its seconds (from its first part's start to its last part's end). `None` where the
/// integrity check would not be split: the caller runs both whole, in turn.
pub(super) fn integrity_with_foreign_keys(
    path: &Path,
    threads: usize,
) -> Option<super::DrillChecks> {
    let (mut parts, children) = match open_read_only(path).map(|conn| (plan(&conn), conn)) {
        Ok((Some(parts), conn)) if threads >= 2 => {
            let children = with_foreign_keys(&conn, &parts)?;
            (parts, children)
        }
        _ => return None,
    };
    let conns = match (0..threads.min(parts.len()))
        .map(|_| open_read_only(path))
        .collect::<Result<Vec<_>>>()
    {
        Ok(conns) => conns,
        Err(_) => return None,
    };
    let checks = parts.len();
    let mut order = start_order(&parts, conns.len());
    order.extend(checks..checks + children.len());
    parts.extend(children.into_iter().map(Part::ForeignKeys));
    let mut ran = run_parts(conns, &parts, &order, path);
    let fk_ran = ran.split_off(checks);
    let seconds = |ran: &[(Result<Vec<String>>, Range<Duration>)]| {
        let start = ran.iter().map(|(_, t)| t.start).min().unwrap_or_default();
        let end = ran.iter().map(|(_, t)| t.end).max().unwrap_or_default();
        end.saturating_sub(start).as_secs_f64()
    };
    let (t_int, t_fk) = (seconds(&ran), seconds(&fk_ran));
    let verdict = |ran: Vec<(Result<Vec<String>>, Range<Duration>)>| {
        ran.into_iter()
            .map(|(r, _)| r)
            .collect::<Result<Vec<_>>>()
            .map(interleave)
    };
    let integrity = verdict(ran).map(outcome);
    Some(((integrity, t_int), (verdict(fk_ran), t_fk)))
}

/// The tables among `parts` that have foreign keys, in the same order (biggest first); `None`
/// when the schema cannot say.
fn with_foreign_keys(conn: &Connection, parts: &[Part]) -> Option<Vec<String>> {
    let mut stmt = conn
        .prepare("SELECT count(*) FROM pragma_foreign_key_list(?1)")
        .ok()?;
    let mut out = Vec::new();
    for part in parts {
        if let Part::Table(t) = part {
            if stmt.query_row([t], |r| r.get::<_, i64>(0)).ok()? > 0 {
                out.push(t.clone());
            }
        }
    }
    Some(out)
}

/// Run the `parts` of a split check on `conns`, one thread per connection, each taking the
/// next part in turn; the verdict of the whole check.
fn split(conns: Vec<Connection>, parts: &[Part], path: &Path) -> Result<CheckOutcome> {
    let order = start_order(parts, conns.len());
    let lists = run_parts(conns, parts, &order, path)
        .into_iter()
        .map(|(r, _)| r)
        .collect::<Result<Vec<_>>>()?;
    Ok(outcome(interleave(lists)))
}

/// Run `parts` in `order` on `conns`, one thread per connection, each taking the next part in
/// turn: each part's problems (or violations) and when it ran, from the start of the run.
fn run_parts(
    conns: Vec<Connection>,
    parts: &[Part],
    order: &[usize],
    path: &Path,
) -> Vec<(Result<Vec<String>>, Range<Duration>)> {
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<_>>> = Mutex::new((0..parts.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for conn in conns {
            let (next, results) = (&next, &results);
            s.spawn(move || {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let began = start.elapsed();
                    let problems = match &parts[i] {
                        Part::Whole => pragma_on(&conn, path, "quick_check", None),
                        Part::Table(t) => pragma_on(&conn, path, "integrity_check", Some(t)),
                        Part::ForeignKeys(t) => super::foreign_key_check_on(&conn, path, Some(t)),
                    };
                    let ran = began..start.elapsed();
                    results.lock().expect("no checker panics holding the lock")[i] =
                        Some((problems, ran));
                }
            });
        }
    });
    results
        .into_inner()
        .expect("checkers finished")
        .into_iter()
        .map(|r| r.expect("every part ran"))
        .collect()
}

/// The order the `parts` (the whole-file pass first, then the tables, biggest first) start in
/// on `conns` connections: each connection first takes one of the biggest tables, whose checks
/// (every row looked up in each index) are the longest parts, then the whole-file pass starts,
/// then the rest. With the pass first, the biggest table would start only after it: on the
/// 1 GiB bench database with two connections, 6.7 s instead of 5.0 s.
fn start_order(parts: &[Part], conns: usize) -> Vec<usize> {
    let (whole, tables): (Vec<usize>, Vec<usize>) =
        (0..parts.len()).partition(|&i| parts[i] == Part::Whole);
    let mut order = tables;
    let at = conns.min(order.len());
    for (n, i) in whole.into_iter().enumerate() {
        order.insert(at + n, i);
    }
    order
}

/// The parts of a split check, biggest first, or `None` where only the whole check is exact
/// (or no faster).
fn plan(conn: &Connection) -> Option<Vec<Part>> {
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'table'")
        .ok()?;
    let tables: Vec<(String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .ok()?;
    let virtual_table = |sql: &Option<String>| {
        sql.as_deref().is_some_and(|s| {
            s.trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE VIRTUAL")
        })
    };
    if tables.len() < 2
        || tables
            .iter()
            .any(|(name, sql)| virtual_table(sql) || reads_as_number(name))
    {
        return None;
    }
    // Biggest first, so that the longest part does not start last. The largest rowid is a
    // cheap size estimate (one descent of the b-tree); a table without one goes first.
    let mut sized: Vec<(u64, String)> = tables
        .into_iter()
        .map(|(name, _)| {
            let sql = format!("SELECT max(_rowid_) FROM {}", quoted(&name));
            let rows = conn
                .query_row(&sql, [], |r| r.get::<_, Option<i64>>(0))
                .map_or(u64::MAX, |n| n.map_or(0, |n| n.unsigned_abs()));
            (rows, name)
        })
        .collect();
    sized.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut parts = vec![Part::Whole];
    parts.extend(sized.into_iter().map(|(_, name)| Part::Table(name)));
    Some(parts)
}

/// Whether SQLite would take `name`, given as the pragma's argument, as an error limit
/// (`sqlite3GetInt32`) instead of a table name.
fn reads_as_number(name: &str) -> bool {
    let digits = name.strip_prefix(['-', '+']).unwrap_or(name);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Run `PRAGMA <pragma>(<table or the error limit>)` on a fresh read-only connection and
/// return its problems: empty when SQLite answered "ok".
fn pragma(path: &Path, pragma: &str, table: Option<&str>) -> Result<Vec<String>> {
    pragma_on(&open_read_only(path)?, path, pragma, table)
}

/// [`pragma`] on an open connection.
fn pragma_on(
    conn: &Connection,
    path: &Path,
    pragma: &str,
    table: Option<&str>,
) -> Result<Vec<String>> {
    let arg = table.map_or_else(|| MAX_PROBLEMS.to_string(), quoted);
    let sql = format!("PRAGMA {pragma}({arg})");
    let mut stmt = conn
        .prepare(&sql)
        .map_err(|e| sqlite_error("check", path, e))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| sqlite_error("check", path, e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(Vec::new());
    }
    // One problem per item, without SQLite's "*** in database main ***" banner lines.
    Ok(rows
        .iter()
        .flat_map(|r| r.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("***"))
        .take(MAX_PROBLEMS)
        .map(String::from)
        .collect())
}

/// Run `check` (`quick_check` or the whole `integrity_check`) as one pragma.
pub(super) fn whole(path: &Path, check: &str) -> Result<CheckOutcome> {
    pragma(path, check, None).map(outcome)
}

/// [`whole`] on an open connection (an incremental's read transaction).
pub(super) fn whole_on(conn: &Connection, path: &Path, check: &str) -> Result<CheckOutcome> {
    pragma_on(conn, path, check, None).map(outcome)
}

fn outcome(problems: Vec<String>) -> CheckOutcome {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The first problems of every part, taken in turn, so that each failing part is named even
/// when another one has many problems.
fn interleave(lists: Vec<Vec<String>>) -> Vec<String> {
    let mut iters: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    while out.len() < MAX_PROBLEMS {
        let before = out.len();
        for it in &mut iters {
            if let Some(p) = it.next() {
                if out.len() < MAX_PROBLEMS {
                    out.push(p);
                }
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        c
    }

    #[test]
    fn each_connection_starts_on_a_big_table_before_the_whole_file_pass() {
        let parts = [
            Part::Whole,
            Part::Table("a".into()),
            Part::Table("b".into()),
            Part::Table("c".into()),
        ];
        assert_eq!(start_order(&parts, 2), [1, 2, 0, 3]);
        assert_eq!(start_order(&parts, 1), [1, 0, 2, 3]);
        assert_eq!(start_order(&parts, 8), [1, 2, 3, 0]);
        assert_eq!(start_order(&parts[..2], 2), [1, 0]);
    }

    #[test]
    fn the_split_has_the_whole_file_pass_and_every_table_biggest_first() {
        let c = db("CREATE TABLE small(x); INSERT INTO small VALUES (1);
                    CREATE TABLE big(id INTEGER PRIMARY KEY); INSERT INTO big VALUES (500);
                    CREATE TABLE kv(k PRIMARY KEY, v) WITHOUT ROWID;
                    CREATE TABLE \"odd \"\"name\"(x);");
        let names = |parts: Vec<Part>| -> Vec<String> {
            parts
                .into_iter()
                .map(|p| match p {
                    Part::Whole => "(whole file)".to_string(),
                    Part::Table(t) => t,
                    Part::ForeignKeys(t) => format!("(foreign keys of {t})"),
                })
                .collect()
        };
        assert_eq!(
            names(plan(&c).unwrap()),
            ["(whole file)", "kv", "big", "small", "odd \"name"]
        );
    }

    #[test]
    fn the_whole_check_runs_where_a_split_would_not_be_exact() {
        // One table: nothing to split. A virtual table: its own check differs in quick_check.
        // A table named like a number: the pragma would take it as an error limit.
        for sql in [
            "CREATE TABLE only(x);",
            "CREATE TABLE a(x); CREATE VIRTUAL TABLE r USING rtree(id, x0, x1);",
            "CREATE TABLE a(x); CREATE TABLE \"42\"(x);",
        ] {
            assert_eq!(plan(&db(sql)), None, "{sql}");
        }
    }

    #[test]
    fn foreign_keys_run_per_table_as_the_last_parts_of_the_split_with_both_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fk.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE parent(id INTEGER PRIMARY KEY);
             CREATE TABLE child(id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id));
             CREATE INDEX child_p ON child(p);
             CREATE TABLE other(id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id));
             INSERT INTO parent VALUES (1);
             INSERT INTO child VALUES (1, 1), (2, 7);
             INSERT INTO other VALUES (5, 1), (6, 1), (9, 8);",
        )
        .unwrap();
        drop(c);
        let ((integrity, t_int), (fks, t_fk)) = integrity_with_foreign_keys(&path, 2).unwrap();
        assert_eq!(integrity.unwrap(), Ok(()));
        // One part per table with foreign keys (the biggest first), every violation found.
        assert_eq!(
            fks.unwrap(),
            ["other row 9 -> parent", "child row 2 -> parent"]
        );
        assert!(t_int >= 0.0 && t_fk >= 0.0);
        // One core: no split, so the caller runs both in turn.
        assert!(integrity_with_foreign_keys(&path, 1).is_none());
    }

    #[test]
    fn every_failing_part_is_named_within_the_limit() {
        let many: Vec<String> = (0..20).map(|i| format!("index problem {i}")).collect();
        let out = interleave(vec![vec!["freelist problem".into()], Vec::new(), many]);
        assert_eq!(out.len(), MAX_PROBLEMS);
        assert_eq!(out[0], "freelist problem");
        assert_eq!(out[1], "index problem 0");
    }
}
