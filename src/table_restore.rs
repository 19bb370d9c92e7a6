//! `guardian restore --table T...`: put some tables back from a snapshot, in the live database.
//!
//! The snapshot is rebuilt in a scratch folder through the `SnapshotReader` (as a drill does)
//! and checked with SQLite as a full restore checks it. Then, before anything changes, the whole
//! database is kept aside as `<name>.pre-restore-<UTC time>`: an online-backup copy (one
//! committed state, the `-wal` included), written under a staging name and renamed when
//! complete. Then one transaction replaces the tables' rows with the snapshot's (their triggers
//! dropped and re-created around it, so none fires; foreign keys not enforced while it runs)
//! and `PRAGMA foreign_key_check` runs on those tables and on the tables that refer to them:
//! on any violation, or on SIGINT/SIGTERM/SIGHUP, the transaction is rolled back and nothing
//! has changed. SQLite's own journal makes the commit all-or-nothing on a crash too.
//!
//! With several stores, the snapshot is chosen and read as a full restore does (`restore.rs`):
//! over every store that can be read, each candidate from its stores in config order, the
//! next store's copy when one fails its checks or cannot be read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use tracing::{info, warn};

use crate::catalog::SnapshotStatus;
use crate::config::{CheckKind, DatabaseConfig};
use crate::crypto::Keys;
use crate::drill::Scratch;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::restore::{RestoreCheck, Selector};
use crate::storage::NamedStore;
use crate::stores::Merged;
use crate::{durable, snapshot, target};

/// What to put back, from which snapshot.
#[derive(Debug, Clone)]
pub struct TableRestoreOptions {
    pub selector: Selector,
    pub tables: Vec<String>,
    pub force: bool,
    pub dry_run: bool,
    pub keys: Keys,
    pub protected: Vec<PathBuf>,
    pub check: Option<RestoreCheck>,
    pub staging_dir: PathBuf,
}

/// One table put back: its rows before, and after (the snapshot's).
#[derive(Debug, Clone)]
pub struct TableRows {
    pub name: String,
    pub before: u64,
    pub after: u64,
}

/// What a table restore did (or, with `dry_run`, would do).
#[derive(Debug, Clone)]
pub struct TableRestoreReport {
    pub db: String,
    pub manifest: Manifest,
    pub target: PathBuf,
    pub tables: Vec<TableRows>,
    /// The whole database as it was before, kept aside (none for a dry run).
    pub kept_aside: Option<PathBuf>,
    /// Newer candidates passed over, with why.
    pub skipped: Vec<(String, String)>,
    /// The store the snapshot was read from.
    pub store: NamedStore,
    /// Copies passed over for another store's copy: (store, snapshot id, why).
    pub copies_skipped: Vec<(String, String, String)>,
    /// Stores of the database that could not be read at all: (store, why).
    pub stores_unreadable: Vec<(String, String)>,
    pub forced_over: Option<String>,
    pub dry_run: bool,
}

/// Put `opts.tables` of `db` back from the snapshot `opts.selector` picks.
///
/// # Errors
/// A target that is missing, in use (without `--force`) or not a file; a table that is not in
/// both or whose columns differ; no good snapshot; [`Error::ForeignKeys`] when the restored rows
/// break a foreign key (nothing changed); [`Error::Cancelled`] on a signal (nothing changed).
pub async fn run(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    opts: &TableRestoreOptions,
) -> Result<TableRestoreReport> {
    let target = db.path.clone();
    target::check(&target, &opts.protected)?;
    if !target.is_file() {
        return Err(Error::Usage(format!(
            "database {} does not exist, so there are no tables to put back; restore the whole database with `guardian restore --latest --db {}`",
            target.display(),
            db.name
        )));
    }
    snapshot::check_source(&target)?;
    let holder = target::in_use(&target);
    if let (Some(who), false) = (&holder, opts.force) {
        return Err(Error::InUse(format!(
            "database {} is in use ({who}); stop the application first, or pass --force to replace the tables' rows anyway",
            target.display()
        )));
    }
    let merged = Merged::load(stores, &db.name).await.require_readable()?;
    let stores_unreadable: Vec<(String, String)> = merged
        .unreadable()
        .into_iter()
        .map(|(s, e)| (s.name.clone(), crate::error::chain(e)))
        .collect();
    let mut copies_skipped: Vec<(String, String, String)> = Vec::new();
    let catalog = merged.combined();
    let (candidates, mut skipped) = crate::restore::select(&catalog, &opts.selector)?;
    let named = matches!(opts.selector, Selector::Snapshot(_));
    let several = stores.len() > 1;
    for cand in candidates {
        let id = cand.key.id.to_string();
        let mut holders = merged.holders(&id, true);
        if holders.is_empty() {
            holders = merged.holders(&id, false);
        }
        let mut bad: Vec<String> = Vec::new();
        let mut failed_store: Option<(String, Error)> = None;
        for (store, cand) in holders {
            let Some(m) = cand.manifest.clone() else {
                let why = cand
                    .problem
                    .as_ref()
                    .map_or_else(|| "manifest is unreadable".into(), ToString::to_string);
                if named {
                    return Err(Error::Usage(format!(
                        "snapshot {} cannot be read: {why}",
                        cand.key.id
                    )));
                }
                bad.push(why);
                continue;
            };
            let scratch = Scratch::create(&opts.staging_dir, &db.name, "table-restore")?;
            let check = match opts.check {
                Some(c) => c.kind(),
                None if cand.status == SnapshotStatus::Verified => Some(CheckKind::QuickCheck),
                None => Some(CheckKind::IntegrityCheck),
            };
            let read = match scratch.read_snapshot(&store.store, &m, &opts.keys).await {
                Ok(r) => r,
                // This store failed while the copy was read: the next store's copy may do.
                Err(e @ Error::Storage(_)) if several => {
                    let why = crate::error::chain(&e);
                    warn!(store = %store.name, id = %m.id, error = %why, "could not read this store's copy; trying another store's");
                    copies_skipped.push((store.name.clone(), id.clone(), why));
                    failed_store.get_or_insert((store.name.clone(), e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let why = match read {
                Err(damage) => Some(damage.to_string()),
                Ok(_) => checked(&scratch.path, check).await?,
            };
            if let Some(why) = why {
                if several {
                    copies_skipped.push((store.name.clone(), id.clone(), why.clone()));
                }
                bad.push(why);
                continue;
            }
            let mut report = TableRestoreReport {
                db: db.name.clone(),
                manifest: m,
                target: target.clone(),
                tables: Vec::new(),
                kept_aside: None,
                skipped,
                forced_over: holder,
                dry_run: opts.dry_run,
                store,
                copies_skipped,
                stores_unreadable,
            };
            let snap = scratch.path.clone();
            let (t, tables) = (target.clone(), opts.tables.clone());
            let names = blocking(move || plan(&t, &snap, &tables)).await?;
            if opts.dry_run {
                report.tables = names;
                return Ok(report);
            }
            let aside = keep_aside(&target).await?;
            report.kept_aside = Some(aside.clone());
            report.tables = apply(&target, &scratch.path, names, &aside).await?;
            info!(id = %report.manifest.id, store = %report.store.name, tables = ?opts.tables, "table restore finished");
            return Ok(report);
        }
        if let Some((store, e)) = failed_store {
            // An older snapshot would not fix a store that fails: stop, as with one store.
            return Err(Error::InStore {
                store,
                source: Box::new(e),
            });
        }
        let Some(why) = bad.first() else {
            continue;
        };
        if named {
            // Bad data, as in a full restore of the named snapshot: exit 1.
            return Err(Error::Integrity {
                what: format!("snapshot {id}"),
                detail: format!("{why}; no table was restored from it"),
            });
        }
        warn!(id = %id, reason = %why, "snapshot failed verification; trying an older one");
        skipped.push((id, bad.join("; ")));
    }
    Err(Error::NoGoodSnapshot(format!(
        "no good snapshot of {} to restore tables from{}",
        db.name,
        if skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; skipped {}",
                skipped
                    .iter()
                    .map(|(i, w)| format!("{i}: {w}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    )))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("table restore worker: {e}")))?
}

/// The SQLite check of the rebuilt snapshot: `Some(why)` when it fails.
async fn checked(path: &Path, check: Option<CheckKind>) -> Result<Option<String>> {
    let Some(check) = check else {
        return Ok(None);
    };
    let p = path.to_path_buf();
    blocking(move || {
        Ok(match snapshot::run_check(&p, check) {
            Ok(Ok(())) => None,
            Ok(Err(problems)) => Some(format!(
                "PRAGMA {} failed: {}",
                check.pragma(),
                problems.join("; ")
            )),
            Err(e) if e.is_data_error() || e.is_not_a_database() => Some(crate::error::chain(&e)),
            Err(e) => return Err(e),
        })
    })
    .await
}

/// The tables as they are named in the database, with their row counts there (`before`) and in
/// the snapshot (`after`); refuses a table missing on either side, virtual, or whose stored
/// columns differ.
fn plan(target: &Path, snap: &Path, wanted: &[String]) -> Result<Vec<TableRows>> {
    let live = open_read_only(target)?;
    let old = open_read_only(snap)?;
    let mut out = Vec::new();
    for w in wanted {
        let name = table_name(&live, w, target)?.ok_or_else(|| {
            Error::Usage(format!(
                "--table {w}: no such table in {}",
                target.display()
            ))
        })?;
        if table_name(&old, &name, snap)?.is_none() {
            return Err(Error::Usage(format!(
                "--table {w}: the snapshot has no table {name} (it was created after the snapshot); nothing was changed"
            )));
        }
        let (a, b) = (columns(&live, &name, target)?, columns(&old, &name, snap)?);
        if a != b {
            return Err(Error::Usage(format!(
                "--table {name}: its columns differ between the snapshot ({}) and the database ({}); a table restore copies rows into the same columns: migrate first, or restore the whole database; nothing was changed",
                b.join(", "),
                a.join(", ")
            )));
        }
        if out.iter().any(|t: &TableRows| t.name == name) {
            continue;
        }
        out.push(TableRows {
            before: count(&live, &name, target)?,
            after: count(&old, &name, snap)?,
            name,
        });
    }
    Ok(out)
}

fn open_read_only(p: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(
        p,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| snapshot::sqlite_error("open", p, e))?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| snapshot::sqlite_error("configure", p, e))?;
    Ok(c)
}

/// The table's own name (case as stored) if it is an ordinary table in `c`.
fn table_name(c: &Connection, name: &str, p: &Path) -> Result<Option<String>> {
    let mut s = c
        .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1 COLLATE NOCASE AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
        .map_err(|e| snapshot::sqlite_error("read the schema of", p, e))?;
    let mut rows = s
        .query_map([name], |r| r.get::<_, String>(0))
        .map_err(|e| snapshot::sqlite_error("read the schema of", p, e))?;
    rows.next()
        .transpose()
        .map_err(|e| snapshot::sqlite_error("read the schema of", p, e))
}

/// Stored columns (not generated, not hidden), in order.
fn columns(c: &Connection, table: &str, p: &Path) -> Result<Vec<String>> {
    c.prepare("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid")
        .and_then(|mut s| s.query_map([table], |r| r.get(0))?.collect())
        .map_err(|e| snapshot::sqlite_error("read the columns of", p, e))
}

fn count(c: &Connection, table: &str, p: &Path) -> Result<u64> {
    c.query_row(&format!("SELECT count(*) FROM {}", quote(table)), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n.unsigned_abs())
    .map_err(|e| snapshot::sqlite_error("count rows of", p, e))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copy the whole database aside (online backup: one committed state, its `-wal` included),
/// under a staging name first, so an interrupted copy never looks like a kept-aside file.
async fn keep_aside(target: &Path) -> Result<PathBuf> {
    let t = target.to_path_buf();
    blocking(move || {
        let dir = durable::parent_dir(&t).to_path_buf();
        let prefix = target::staging_prefix(&t).unwrap_or_else(|| ".guardian-restore-".into());
        let tmp = dir.join(format!(
            "{prefix}{}-aside-{}",
            std::process::id(),
            durable::random_hex(4)
        ));
        let done = snapshot::copy_live(&t, &tmp).and_then(|_| {
            let aside = crate::restore::aside_name(&t);
            std::fs::rename(&tmp, &aside).map_err(|e| Error::io("keep aside as", &aside, e))?;
            durable::sync_dir(&dir).map_err(|e| Error::io("fsync folder", &dir, e))?;
            Ok(aside)
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done
    })
    .await
}

/// Replace the tables' rows in one transaction, unless a signal comes first or a foreign key
/// breaks; returns the row counts after.
async fn apply(
    target: &Path,
    snap: &Path,
    tables: Vec<TableRows>,
    aside: &Path,
) -> Result<Vec<TableRows>> {
    let interrupted = crate::service::first_interrupt()?;
    let conn = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| snapshot::sqlite_error("open", target, e))?;
    let interrupt = conn.get_interrupt_handle();
    let stop = Arc::new(AtomicBool::new(false));
    let (t, s, flag) = (target.to_path_buf(), snap.to_path_buf(), Arc::clone(&stop));
    let a = aside.to_path_buf();
    let mut work = tokio::task::spawn_blocking(move || replace(&conn, &t, &s, tables, &flag, &a));
    let sig = tokio::select! {
        r = &mut work => return r.map_err(|e| Error::Internal(format!("table restore worker: {e}")))?,
        sig = interrupted => sig,
    };
    stop.store(true, Ordering::SeqCst);
    STOPPED.store(true, Ordering::SeqCst);
    interrupt.interrupt();
    // Wait for the rollback (or a commit that won the race): say what really happened.
    match work.await.map_err(|e| Error::Internal(format!("table restore worker: {e}")))? {
        Ok(done) => Ok(done),
        Err(_) => Err(Error::Cancelled(format!(
            "table restore of {} interrupted by {sig}; the transaction was rolled back and nothing changed (the copy kept aside at {} stays)",
            target.display(),
            aside.display()
        ))),
    }
}

/// Set on a signal: a wait for another writer's lock gives up at once (`sqlite3_interrupt`
/// does not end a busy wait).
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Busy handler: wait for another writer for up to 10 s, unless a signal came.
fn wait_busy(attempt: i32) -> bool {
    if STOPPED.load(Ordering::SeqCst) || attempt >= 500 {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    true
}

/// The transaction itself (blocking).
fn replace(
    conn: &Connection,
    target: &Path,
    snap: &Path,
    tables: Vec<TableRows>,
    stop: &AtomicBool,
    aside: &Path,
) -> Result<Vec<TableRows>> {
    let sql_err = |op| move |e| snapshot::sqlite_error(op, target, e);
    STOPPED.store(false, Ordering::SeqCst);
    conn.busy_handler(Some(wait_busy))
        .map_err(sql_err("configure"))?;
    // Checked below, before the commit, on exactly the tables concerned.
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(sql_err("configure"))?;
    let uri = format!("file:{}?immutable=1", crate::diff::uri_path(snap));
    conn.execute("ATTACH DATABASE ?1 AS snap", [uri])
        .map_err(sql_err("attach the snapshot to"))?;
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_err("begin a transaction in"))?;
    let result = (|| -> Result<Vec<TableRows>> {
        let mut done = Vec::new();
        for t in tables {
            if stop.load(Ordering::SeqCst) {
                return Err(Error::Cancelled("stopped".into()));
            }
            let q = quote(&t.name);
            let triggers: Vec<(String, String)> = conn
                .prepare("SELECT name, sql FROM main.sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1")
                .and_then(|mut s| s.query_map([&t.name], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(sql_err("read the triggers of"))?;
            for (name, _) in &triggers {
                conn.execute_batch(&format!("DROP TRIGGER main.{}", quote(name)))
                    .map_err(sql_err("drop a trigger in"))?;
            }
            let wr: bool = conn
                .query_row(
                    "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                    [&t.name],
                    |r| r.get(0),
                )
                .map_err(sql_err("read the schema of"))?;
            let raw = columns(conn, &t.name, target)?;
            let cols: Vec<String> = raw.iter().map(|c| quote(c)).collect();
            let cols = if wr {
                cols.join(", ")
            } else {
                // Rowids kept as they were: rows are the same rows, and tables without a key
                // are addressed by them.
                match crate::diff::rowid_alias(&raw) {
                    Some(r) => format!("{r}, {}", cols.join(", ")),
                    None => cols.join(", "),
                }
            };
            conn.execute_batch(&format!(
                "DELETE FROM main.{q}; INSERT INTO main.{q} ({cols}) SELECT {cols} FROM snap.{q};"
            ))
            .map_err(sql_err("replace the rows of a table in"))?;
            for (_, sql) in &triggers {
                conn.execute_batch(sql)
                    .map_err(sql_err("re-create a trigger in"))?;
            }
            let after = count(conn, &t.name, target)?;
            done.push(TableRows { after, ..t });
        }
        let violations = foreign_key_violations(conn, &done, target)?;
        if !violations.is_empty() {
            return Err(Error::ForeignKeys {
                violations,
                aside: Some(aside.to_path_buf()),
            });
        }
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Cancelled("stopped".into()));
        }
        conn.execute_batch("COMMIT").map_err(sql_err("commit"))?;
        Ok(done)
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let _ = conn.execute_batch("DETACH DATABASE snap");
    result
}

/// `PRAGMA foreign_key_check` of the restored tables and of every table referring to them:
/// the violations, one line each (the first 20).
fn foreign_key_violations(
    conn: &Connection,
    done: &[TableRows],
    target: &Path,
) -> Result<Vec<String>> {
    let err = |e| snapshot::sqlite_error("check foreign keys of", target, e);
    let restored: Vec<&str> = done.iter().map(|t| t.name.as_str()).collect();
    let mut check: Vec<String> = restored.iter().map(|s| (*s).to_string()).collect();
    let all: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(err)?;
    for child in all {
        let parents: Vec<String> = conn
            .prepare("SELECT \"table\" FROM pragma_foreign_key_list(?1)")
            .and_then(|mut s| s.query_map([&child], |r| r.get(0))?.collect())
            .map_err(err)?;
        if parents
            .iter()
            .any(|p| restored.iter().any(|r| r.eq_ignore_ascii_case(p)))
            && !check.contains(&child)
        {
            check.push(child);
        }
    }
    const SHOWN: usize = 5;
    let mut out = Vec::new();
    let mut total = 0usize;
    for t in check {
        let mut s = conn
            .prepare(&format!("PRAGMA main.foreign_key_check({})", quote(&t)))
            .map_err(err)?;
        let rows = s
            .query_map([], |r| {
                Ok(format!(
                    "{} row {} -> {} (foreign key {})",
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?
                        .map_or("?".into(), |v| v.to_string()),
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?
                ))
            })
            .map_err(err)?;
        for v in rows {
            let v = v.map_err(err)?;
            total += 1;
            if out.len() < SHOWN {
                out.push(v);
            }
        }
    }
    if total > SHOWN {
        out.push(format!("and {} more", total - SHOWN));
    }
    Ok(out)
}
