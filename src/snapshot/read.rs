//! One committed state of a live database, read without a copy: an incremental's read
//! transaction, and more connections proven to read that very state, for its check.
//!
//! The check (`quick_check`, or `integrity_check` split over the cores as for a full) runs on
//! those other connections, on other cores, while this transaction reads the pages. SQLite pins
//! a second connection to a transaction's snapshot only with `sqlite3_snapshot_open`, which
//! rusqlite does not wrap (and guardian forbids `unsafe`). So the connections start their
//! transactions one after another, between two reads of `PRAGMA data_version` on a monitor
//! connection. That value changes whenever another connection commits
//! (<https://www.sqlite.org/pragma.html#pragma_data_version>): each statement of the monitor
//! starts a read transaction, which compares the database's commit marker with the one it saw
//! last (in WAL mode the WAL-index header, which every commit changes: its frame count and change
//! counter, and a WAL restart its salts; in rollback-journal mode the header's change counter,
//! which every commit increments), and bumps the value when it differs. The same value before
//! the first transaction started and after the last one did: no commit happened in between, so
//! they all read the same committed state. Otherwise they end and try again; a writer that
//! commits all the time (every attempt sees a commit), or a connection that cannot be opened,
//! leaves one connection only, and the caller runs the check in this transaction before its
//! reads, one after the other. (In rollback-journal mode no commit can happen anyway while the
//! first transaction holds its shared lock.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::{
    check, check_source, check_with, inspect_with, is_busy, read_journal_mode, sqlite_error,
    wait_busy, Busy, CheckOutcome, Inspection, BUSY_DEADLINE,
};
use crate::config::CheckKind;
use crate::error::{Error, Result};

/// How many times the extra connections try to start on the state of the first.
const ATTEMPTS: usize = 8;

/// One read transaction on a live database: the check, the inspection and the pages read
/// through it are all of one committed state, while (in WAL mode) writers go on. What an
/// incremental snapshot reads instead of taking a copy.
pub struct ReadSnapshot {
    conn: Connection,
    path: PathBuf,
    /// The source's journal mode.
    pub journal_mode: String,
    /// More connections in a read transaction of the same committed state (module doc).
    readers: Vec<Connection>,
}

impl ReadSnapshot {
    /// Open `src` read-only and start the read transaction, waiting out a writer's lock up to
    /// [`BUSY_DEADLINE`] as the full copy does; with up to `readers` more connections in a read
    /// transaction of the same committed state, when that can be proven (module doc), else
    /// none.
    pub fn begin_with_readers(src: &Path, readers: usize) -> Result<Self> {
        check_source(src)?;
        let conn = Connection::open_with_flags(
            src,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_error("open database", src, e))?;
        conn.busy_timeout(Duration::from_millis(250))
            .map_err(|e| sqlite_error("configure", src, e))?;
        let mut busy = Busy {
            started: Instant::now(),
            pause: Duration::from_millis(20),
        };
        let journal_mode = read_journal_mode(&conn, src, &mut busy)?;
        let mut snap = ReadSnapshot {
            conn,
            path: src.to_path_buf(),
            journal_mode,
            readers: Vec::new(),
        };
        if readers > 0 && snap.start_with_readers(readers, &mut busy)? {
            return Ok(snap);
        }
        snap.start(&mut busy)?;
        Ok(snap)
    }

    /// Start the read transaction of the first connection: from its first read on, every
    /// read sees this state.
    fn start(&self, busy: &mut Busy) -> Result<()> {
        let src = &self.path;
        self.conn
            .busy_timeout(Duration::from_millis(250))
            .map_err(|e| sqlite_error("configure", src, e))?;
        self.conn
            .execute_batch("BEGIN")
            .map_err(|e| sqlite_error("begin a read of", src, e))?;
        loop {
            match self
                .conn
                .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
            {
                Ok(_) => break,
                Err(e) if is_busy(&e) => wait_busy(src, busy.started, &mut busy.pause)?,
                Err(e) => return Err(sqlite_error("read", src, e)),
            }
        }
        self.conn
            .busy_timeout(BUSY_DEADLINE)
            .map_err(|e| sqlite_error("configure", src, e))
    }

    /// Start the first connection's transaction and `n` more between two equal reads of the
    /// monitor's `data_version`. `Ok(false)`: not proven; nothing is left started.
    fn start_with_readers(&mut self, n: usize, busy: &mut Busy) -> Result<bool> {
        let open = || -> rusqlite::Result<Connection> {
            let c = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(Duration::from_millis(50))?;
            Ok(c)
        };
        let Ok((monitor, readers)) = open().and_then(|m| {
            let readers = (0..n)
                .map(|_| open())
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((m, readers))
        }) else {
            return Ok(false);
        };
        let data_version = || {
            monitor
                .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .ok()
        };
        for attempt in 1..=ATTEMPTS {
            let Some(before) = data_version() else {
                return Ok(false);
            };
            self.start(busy)?;
            #[cfg(test)]
            if attempt == 1 {
                tests::SLOW_FIRST_START.with(|d| std::thread::sleep(d.get()));
            }
            let started = readers.iter().all(|r| {
                r.execute_batch("BEGIN").is_ok()
                    && r.query_row("PRAGMA schema_version", [], |row| row.get::<_, i64>(0))
                        .is_ok()
            });
            if started && data_version() == Some(before) {
                self.readers = readers;
                return Ok(true);
            }
            tracing::debug!(
                attempt,
                "a commit came between the read transactions; starting them again"
            );
            for c in readers.iter().chain([&self.conn]) {
                if !c.is_autocommit() {
                    c.execute_batch("ROLLBACK")
                        .map_err(|e| sqlite_error("end the read of", &self.path, e))?;
                }
            }
        }
        Ok(false)
    }

    /// The check on the extra connections, to run on other threads alongside this
    /// transaction's reads; `None` when there are none (then run [`Self::check`] here).
    pub fn take_check(&mut self, check: CheckKind) -> Option<SnapshotCheck> {
        if self.readers.is_empty() {
            return None;
        }
        Some(SnapshotCheck {
            readers: std::mem::take(&mut self.readers),
            path: self.path.clone(),
            check,
        })
    }

    /// Run `check` inside the transaction.
    pub fn check(&self, check: CheckKind) -> Result<CheckOutcome> {
        check_with(&self.conn, &self.path, check)
    }

    /// Page geometry, schema hash and row counts, inside the transaction.
    pub fn inspect(&self) -> Result<Inspection> {
        inspect_with(&self.conn, &self.path)
    }

    /// Every page, in order, as this transaction sees it (`sqlite_dbpage`; the lock-byte page
    /// of a database over 1 GiB reads as zeros, as SQLite never writes it).
    pub fn for_each_page(&self, mut f: impl FnMut(u32, &[u8]) -> Result<()>) -> Result<()> {
        let err = |e| sqlite_error("read the pages of", &self.path, e);
        let mut stmt = self
            .conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let pgno: i64 = row.get(0).map_err(err)?;
            let data = row
                .get_ref(1)
                .map_err(err)?
                .as_blob()
                .map_err(|e| Error::Source(format!("sqlite_dbpage gave no page: {e}")))?;
            f(pgno as u32, data)?;
        }
        Ok(())
    }

    /// End the transaction.
    pub fn end(self) -> Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| sqlite_error("end the read of", &self.path, e))?;
        self.conn
            .close()
            .map_err(|(_, e)| sqlite_error("close database", &self.path, e))
    }
}

/// A check of a [`ReadSnapshot`]'s state on its extra connections (`Send`: run it on another
/// thread). The connections end their transactions when it is done.
pub struct SnapshotCheck {
    readers: Vec<Connection>,
    path: PathBuf,
    check: CheckKind,
}

impl SnapshotCheck {
    /// Run the check: `integrity_check` split over the connections where that is exact,
    /// else one pragma (see [`check`]).
    pub fn run(self) -> Result<CheckOutcome> {
        check::on_connections(self.readers, &self.path, self.check.pragma())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rusqlite::Connection;

    use super::ReadSnapshot;

    std::thread_local! {
        /// A pause between the first connection's start and the others' on the first attempt,
        /// so that a writer's commits land there.
        pub(super) static SLOW_FIRST_START: std::cell::Cell<std::time::Duration> =
            const { std::cell::Cell::new(std::time::Duration::ZERO) };
    }

    /// Stops the writer however the test ends (a failed assertion too).
    struct StopOnDrop<'a>(&'a AtomicBool);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn sum(c: &Connection) -> (i64, i64) {
        c.query_row("SELECT count(*), coalesce(sum(x), 0) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    }

    /// Every connection of a `ReadSnapshot` reads one committed state, even under a writer
    /// that commits as fast as it can: the extra connections are proven to have started on
    /// the first one's state, or there are none.
    #[test]
    fn every_reader_sees_the_first_connections_state_under_a_steady_writer() {
        for wal in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("w.db");
            let w = Connection::open(&db).unwrap();
            if wal {
                w.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
            }
            w.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
                .unwrap();
            drop(w);
            let stop = AtomicBool::new(false);
            let (mut proven, mut serial, mut commits) = (0, 0, 0u64);
            std::thread::scope(|s| {
                let writer = s.spawn(|| {
                    let w = Connection::open(&db).unwrap();
                    w.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                    // Commits as fast as can be, so that some land between two starts.
                    w.execute_batch("PRAGMA synchronous = OFF;").unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        w.execute("INSERT INTO t VALUES (?1)", [n as i64 + 2])
                            .unwrap();
                        n += 1;
                        if !wal {
                            // Let the readers' shared locks in now and then.
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    }
                    n
                });
                let stopping = StopOnDrop(&stop);
                for i in 0..60 {
                    // Every other time, a commit surely lands between the starts.
                    SLOW_FIRST_START.with(|d| {
                        d.set(std::time::Duration::from_millis(if i % 2 == 0 {
                            5
                        } else {
                            0
                        }))
                    });
                    let snap = ReadSnapshot::begin_with_readers(&db, 2).unwrap();
                    let first = sum(&snap.conn);
                    if snap.readers.is_empty() {
                        serial += 1;
                    } else {
                        proven += 1;
                        assert_eq!(snap.readers.len(), 2);
                    }
                    // Let commits happen after the start: the transactions must not see them.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    for r in &snap.readers {
                        assert_eq!(sum(r), first, "wal={wal}: a reader saw another state");
                    }
                    assert_eq!(sum(&snap.conn), first, "wal={wal}");
                    snap.end().unwrap();
                }
                drop(stopping);
                commits = writer.join().unwrap();
            });
            assert!(
                commits > 100,
                "wal={wal}: the writer committed {commits} times"
            );
            assert!(proven > 0, "wal={wal}: never proven ({serial} serial)");
        }
    }

    #[test]
    fn without_a_writer_the_readers_start_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        let mut snap = ReadSnapshot::begin_with_readers(&db, 3).unwrap();
        assert_eq!(snap.readers.len(), 3);
        let check = snap
            .take_check(crate::config::CheckKind::IntegrityCheck)
            .unwrap();
        assert!(snap.readers.is_empty());
        assert_eq!(check.run().unwrap(), Ok(()));
        snap.end().unwrap();
    }
}
