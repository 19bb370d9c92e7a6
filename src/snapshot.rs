//! Taking a consistent copy of a live database, and inspecting a copy.
//!
//! The copy uses SQLite's online-backup API in a single `step(-1)`: one read transaction, so the
//! copy is a committed state of the database, and (in WAL mode) writers are never blocked. With
//! N-page steps, every write by another connection restarts the copy, so under steady writes it
//! may never finish (<https://www.sqlite.org/c3ref/backup_finish.html>). BUSY and LOCKED are
//! retried with backoff until a deadline. The source is opened read-only and never modified.
//!
//! This module owns SQLite access for backups, restores and drills; it knows nothing of storage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use sha2::{Digest, Sha256};

use crate::config::CheckKind;
use crate::error::{Error, Result};
use crate::manifest::Sha256Hex;

mod check;
mod read;

pub use read::ReadSnapshot;

/// How long a copy keeps retrying a source that reports BUSY or LOCKED.
pub const BUSY_DEADLINE: Duration = Duration::from_secs(120);
/// How many problems a failed check reports.
const MAX_PROBLEMS: usize = 10;

/// What a copy of a database looks like inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub sqlite_version: String,
    pub page_size: u64,
    pub page_count: u64,
    /// Rows per table (virtual tables are skipped: their modules may be absent here).
    pub tables: BTreeMap<String, u64>,
    pub schema_sha256: Sha256Hex,
}

/// The outcome of `PRAGMA quick_check` / `integrity_check`: `Ok(())` or the first problems.
pub type CheckOutcome = std::result::Result<(), Vec<String>>;

/// Check that `path` is a regular file that starts with the SQLite header, so that "not a
/// database" is a clear message instead of a SQLite error code, and so that a FIFO, socket or
/// device at the path is refused at once instead of blocking the open forever.
pub fn check_source(path: &Path) -> Result<()> {
    let not_regular = |what: &str| {
        Error::Source(format!(
            "database file {} {what}; point databases[].path at the SQLite database file",
            path.display()
        ))
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(not_regular(&format!(
                "is {}, not a regular file",
                crate::durable::kind(&m)
            )))
        }
        _ => {}
    }
    let mut f = crate::durable::open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Source(format!(
            "database file {} does not exist (check databases[].path in the config)",
            path.display()
        )),
        // Replaced by a non-regular file since the check above.
        std::io::ErrorKind::InvalidInput => not_regular(&e.to_string()),
        _ => Error::io("open database file", path, e),
    })?;
    let mut header = [0u8; 16];
    let n =
        crate::durable::read_full(&mut f, &mut header).map_err(|e| Error::io("read", path, e))?;
    if n == 0 {
        return Err(Error::NotADatabase(format!(
            "database file {} is empty (0 bytes); nothing to back up",
            path.display()
        )));
    }
    if &header[..n] != b"SQLite format 3\0" {
        return Err(Error::NotADatabase(format!(
            "{} is not a SQLite database (no \"SQLite format 3\" header; is it encrypted or the wrong file?)",
            path.display()
        )));
    }
    Ok(())
}

/// Copy the live database `src` into a new file `dst` with the online-backup API.
/// Returns the source's journal mode.
pub fn copy_live(src: &Path, dst: &Path) -> Result<String> {
    check_source(src)?;
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_error("open database", src, e))?;
    source
        .busy_timeout(Duration::from_millis(250))
        .map_err(|e| sqlite_error("configure", src, e))?;
    let mut busy = Busy {
        started: Instant::now(),
        pause: Duration::from_millis(20),
    };
    let journal_mode = read_journal_mode(&source, src, &mut busy)?;
    let mut dest = create_copy(dst)?;
    copy_pages(&source, &mut dest, src, &mut busy)?;
    dest.close()
        .map_err(|(_, e)| sqlite_error("close copy", dst, e))?;
    source
        .close()
        .map_err(|(_, e)| sqlite_error("close database", src, e))?;
    Ok(journal_mode)
}

/// When the copy started waiting on a locked source, and the next backoff pause.
struct Busy {
    started: Instant,
    pause: Duration,
}

/// The source's journal mode. A long write transaction (rollback journal mode) blocks even
/// this read: wait it out under the same deadline as the copy, instead of failing the backup
/// at once.
fn read_journal_mode(source: &Connection, src: &Path, busy: &mut Busy) -> Result<String> {
    loop {
        match source.query_row("PRAGMA journal_mode", [], |r| r.get(0)) {
            Ok(mode) => return Ok(mode),
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code: ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked,
                    ..
                },
                _,
            )) => wait_busy(src, busy.started, &mut busy.pause)?,
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::CannotOpen) && on_read_only_fs(src) =>
            {
                // SQLite needs a -shm file (or a writable folder to make one) to read a -wal;
                // opening it `immutable` would silently ignore the WAL's commits. Say so instead.
                return Err(Error::Source(format!(
                    "cannot read {}: it has a -wal file but no -shm on a read-only filesystem, \
                     which SQLite cannot open read-only; back it up from a writable mount, or \
                     checkpoint it (PRAGMA wal_checkpoint) before making it read-only",
                    src.display()
                )));
            }
            Err(e) => return Err(sqlite_error("read journal mode of", src, e)),
        }
    }
}

/// Create the copy at `dst` and open it for the page copy.
fn create_copy(dst: &Path) -> Result<Connection> {
    // Created here, empty and 0600, so that the copy (the whole database) is never readable by
    // other users, even for a moment (SQLite would create it 0644); its folder is 0700 as well.
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .map_err(|e| Error::io("create copy", dst, e))?;
    }
    let dest = Connection::open(dst).map_err(|e| sqlite_error("create copy", dst, e))?;
    // The copy is a scratch file that is hashed and thrown away: no journal, no fsync.
    dest.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(|e| sqlite_error("configure copy", dst, e))?;
    Ok(dest)
}

/// Copy every page of `source` into `dest` with SQLite's online backup, waiting out locks.
fn copy_pages(
    source: &Connection,
    dest: &mut Connection,
    src: &Path,
    busy: &mut Busy,
) -> Result<()> {
    let backup = Backup::new(source, dest).map_err(|e| sqlite_error("start backup of", src, e))?;
    loop {
        match backup.step(-1) {
            Ok(StepResult::Done) => return Ok(()),
            Ok(StepResult::More) => continue, // not expected with -1, but harmless
            Ok(StepResult::Busy | StepResult::Locked)
            | Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code: ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked,
                    ..
                },
                _,
            )) => wait_busy(src, busy.started, &mut busy.pause)?,
            Ok(other) => {
                return Err(Error::Source(format!(
                    "unexpected backup step result {other:?}"
                )));
            }
            Err(e) => return Err(sqlite_error("copy database", src, e)),
        }
    }
}

/// One backoff step while the source is locked; an error once [`BUSY_DEADLINE`] has passed.
fn wait_busy(src: &Path, started: Instant, pause: &mut Duration) -> Result<()> {
    if started.elapsed() > BUSY_DEADLINE {
        return Err(Error::Timeout(format!(
            "database {} stayed locked for {}s; is a process holding a long write lock?",
            src.display(),
            BUSY_DEADLINE.as_secs()
        )));
    }
    tracing::warn!(db = %src.display(), pause_ms = pause.as_millis() as u64, "source busy; retrying");
    std::thread::sleep(*pause);
    *pause = (*pause * 2).min(Duration::from_secs(2));
    Ok(())
}

/// Run `check` on the database at `path` (opened read-only). `integrity_check` runs split
/// over the cores where that is exact and faster (see [`check`]).
pub fn run_check(path: &Path, check: CheckKind) -> Result<CheckOutcome> {
    match check {
        CheckKind::QuickCheck => check::whole(path, check.pragma()),
        CheckKind::IntegrityCheck => check::integrity(
            path,
            std::thread::available_parallelism().map_or(1, usize::from),
        ),
    }
}

/// Run `check` as one pragma on `conn` (inside its transaction, if it has one).
fn check_with(conn: &Connection, path: &Path, check: CheckKind) -> Result<CheckOutcome> {
    check::whole_on(conn, path, check.pragma())
}

/// A drill's two SQLite verdicts, each with its seconds: `integrity_check`'s problems and
/// `foreign_key_check`'s violations.
pub type DrillChecks = ((Result<CheckOutcome>, f64), (Result<Vec<String>>, f64));

/// `PRAGMA integrity_check` and `PRAGMA foreign_key_check` of the database at `path` (a
/// drill's), each with how long it took. Where `integrity_check` is split over the cores, so is
/// `foreign_key_check`, one `foreign_key_check(T)` per table that has foreign keys, after every
/// part of the integrity check: a connection with no integrity part left takes them, so they
/// fill the core that the longest table's check would leave idle, and the integrity check's
/// own time stays what a restore's would be.
pub fn integrity_and_foreign_key_check(path: &Path) -> DrillChecks {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(both) = check::integrity_with_foreign_keys(path, threads) {
        return both;
    }
    let t = Instant::now();
    let integrity = run_check(path, CheckKind::IntegrityCheck);
    let t_int = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let fks = foreign_key_check(path);
    ((integrity, t_int), (fks, t.elapsed().as_secs_f64()))
}

/// `PRAGMA foreign_key_check`: the first violations, as `table rowid -> parent` lines.
pub fn foreign_key_check(path: &Path) -> Result<Vec<String>> {
    foreign_key_check_on(&open_read_only(path)?, path, None)
}

/// [`foreign_key_check`] on an open connection, of one table's foreign keys or of all.
fn foreign_key_check_on(
    conn: &Connection,
    path: &Path,
    table: Option<&str>,
) -> Result<Vec<String>> {
    let sql = match table {
        Some(t) => format!("PRAGMA foreign_key_check({})", check::quoted(t)),
        None => "PRAGMA foreign_key_check".to_string(),
    };
    let mut stmt = conn
        .prepare(&sql)
        .map_err(|e| sqlite_error("check foreign keys of", path, e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "{} row {} -> {}",
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?
                    .map_or("?".into(), |v| v.to_string()),
                r.get::<_, String>(2)?
            ))
        })
        .and_then(|rows| {
            rows.take(MAX_PROBLEMS)
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| sqlite_error("check foreign keys of", path, e))?;
    Ok(rows)
}

/// Read the page geometry, schema hash and row counts of the database at `path`.
pub fn inspect(path: &Path) -> Result<Inspection> {
    inspect_with(&open_read_only(path)?, path)
}

fn inspect_with(conn: &Connection, path: &Path) -> Result<Inspection> {
    let err = |e| sqlite_error("inspect", path, e);
    let sqlite_version: String = conn
        .query_row("SELECT sqlite_version()", [], |r| r.get(0))
        .map_err(err)?;
    let page_size = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .map_err(err)? as u64;
    let page_count = conn
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .map_err(err)? as u64;

    let mut schema = Sha256::new();
    let mut tables = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let fields: [String; 4] = [
                row.get(0).map_err(err)?,
                row.get(1).map_err(err)?,
                row.get(2).map_err(err)?,
                row.get(3).map_err(err)?,
            ];
            for f in &fields {
                // Length-prefixed, so field boundaries cannot be forged by their contents.
                schema.update((f.len() as u64).to_le_bytes());
                schema.update(f.as_bytes());
            }
            if fields[0] == "table" && !fields[3].to_ascii_uppercase().starts_with("CREATE VIRTUAL")
            {
                tables.push(fields[1].clone());
            }
        }
    }
    let mut counts = BTreeMap::new();
    for t in tables {
        let sql = format!("SELECT count(*) FROM \"{}\"", t.replace('"', "\"\""));
        let n = conn
            .query_row(&sql, [], |r| r.get::<_, i64>(0))
            .map_err(err)? as u64;
        counts.insert(t, n);
    }
    Ok(Inspection {
        sqlite_version,
        page_size,
        page_count,
        tables: counts,
        schema_sha256: Sha256Hex::from_digest(&schema.finalize()),
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn open_read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_error("open", path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| sqlite_error("configure", path, e))?;
    Ok(conn)
}

/// True when the folder holding `path` is on a read-only filesystem.
fn on_read_only_fs(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(crate::durable::parent_dir(path))
        .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Map a SQLite error to ours: corruption is bad data (exit 1), "not a database" and a hot
/// journal are bad input (exit 2, with what to do).
pub fn sqlite_error(op: &'static str, path: &Path, e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK {
            return hot_journal(path);
        }
    }
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) => Error::Integrity {
            what: path.display().to_string(),
            detail: format!("{op}: {e}"),
        },
        Some(ErrorCode::NotADatabase) => Error::NotADatabase(format!(
            "{} is not a SQLite database (or is encrypted): {e}",
            path.display()
        )),
        _ => Error::sqlite(op, path, e),
    }
}

/// A rollback-journal database whose writer died mid-transaction: its `-journal` holds the
/// pages to put back, and SQLite must roll it back (a write) before anyone can read the
/// database (<https://www.sqlite.org/atomiccommit.html#hot_journals>). guardian opens sources
/// read-only and never modifies them, so it says what to do instead of doing it.
fn hot_journal(path: &Path) -> Error {
    let [_, _, journal] = sidecars(path);
    Error::Source(format!(
        "database {} has a hot journal ({}): a writer was interrupted in the middle of a transaction, \
         and SQLite must roll that transaction back before the database can be read; guardian never \
         writes to a source, so: open the database once with its application, or run \
         `sqlite3 {} 'PRAGMA quick_check'` as its owner (which rolls it back), then run the backup again",
        path.display(),
        journal.display(),
        path.display()
    ))
}

/// Paths of a database's sidecar files: `-wal`, `-shm`, `-journal`.
pub fn sidecars(db: &Path) -> [PathBuf; 3] {
    let s = db.as_os_str();
    let with = |suffix: &str| {
        let mut p = s.to_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with("-wal"), with("-shm"), with("-journal")]
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_copy_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src.db"), dir.path().join("copy.db"));
        let c = rusqlite::Connection::open(&src).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::copy_live(&src, &dst).unwrap();
        let mode = std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "copy mode {mode:o}");
        let n: i64 = rusqlite::Connection::open(&dst)
            .unwrap()
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        // An existing file at the destination is never written over.
        assert!(super::copy_live(&src, &dst).is_err());
    }
}
