//! One job per database at a time across processes: a backup, a drill and a prune of the same
//! database never overlap, whichever guardian runs them (the service, a one-shot command, a cron
//! job, a second service by mistake, with another config or staging folder). Inside one process
//! the service also serialises its jobs with a mutex; these locks are what another process sees.
//!
//! Two advisory `flock(2)` locks, both taken without waiting:
//! - on the database file itself (its device and inode), opened read-only: every guardian that
//!   can read the database takes the same lock, whatever its user, config or `staging_dir`, and
//!   no file is created next to the database (its folder may be read-only). SQLite locks with
//!   `fcntl`, which is independent of `flock` on local filesystems, so the application never
//!   notices. On NFS the kernel emulates `flock` with `fcntl` locks over the whole file, which
//!   would block the application's writes: there this lock is skipped. It is also skipped when
//!   the file is absent or not a regular file (the job itself reports that).
//! - on `{staging_dir}/guardian-{db}.lock`, which also says who holds it (pid and job) for the
//!   message of the run that finds it taken, and covers a database whose file is absent here
//!   (a drill or prune on another host). It never matches the staging sweep's
//!   `guardian-{db}-{pid}-…` names.
//!
//! The kernel releases both when their process exits, however it exits (SIGKILL, power loss),
//! so a lock can never be left behind by a dead run: there is nothing to clear.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::config::DatabaseConfig;
use crate::error::{Error, Result};

/// A held lock on one database's jobs; released when dropped.
#[derive(Debug)]
pub struct DbLock {
    _file: Flock<File>,
    /// The lock on the database file itself (`None` where it is skipped, see the module doc).
    _db_file: Option<Flock<File>>,
}

impl DbLock {
    /// Take the lock of `db` for `job` ("backup", "drill", "prune"), without waiting.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds it (exit code 3), naming that process;
    /// [`Error::Io`] when the lock file cannot be created.
    pub fn acquire(staging_dir: &Path, db: &DatabaseConfig, job: &str) -> Result<DbLock> {
        let staging = Self::acquire_staging(staging_dir, &db.name, job)?;
        let db_file = lock_db_file(db)?;
        Ok(DbLock {
            _file: staging._file,
            _db_file: db_file,
        })
    }

    /// The lock file under the staging folder only.
    fn acquire_staging(staging_dir: &Path, db: &str, job: &str) -> Result<DbLock> {
        std::fs::create_dir_all(staging_dir)
            .map_err(|e| Error::io("create staging folder", staging_dir, e))?;
        let path = lock_path(staging_dir, db);
        // World-readable (it holds a pid, nothing secret), so that a guardian running as another
        // user (root once by hand, the service's own user) can still take the lock, read-only.
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .create(write)
                .truncate(false)
                .mode(0o644)
                .open(&path)
        };
        let (file, writable) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => (
                open(false).map_err(|e| Error::io("open lock file", &path, e))?,
                false,
            ),
            Err(e) => return Err(Error::io("open lock file", &path, e)),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut held) => {
                if writable {
                    // Who holds it, for the message of whoever finds it taken.
                    let who = format!("{} {job}\n", std::process::id());
                    let _ = held
                        .set_len(0)
                        .and_then(|()| held.rewind())
                        .and_then(|()| held.write_all(who.as_bytes()));
                }
                Ok(DbLock {
                    _file: held,
                    _db_file: None,
                })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Err(Error::Busy(format!(
                    "another guardian ({}) is working on {db} (lock {}); nothing was done: try again when it has finished",
                    holder(&text),
                    path.display()
                )))
            }
            Err((_, errno)) => Err(Error::io("lock", &path, errno.into())),
        }
    }
}

/// Take the `flock` on `db`'s file, where it applies (see the module doc).
fn lock_db_file(db: &DatabaseConfig) -> Result<Option<Flock<File>>> {
    // Never open a FIFO or a device, even without blocking: the job reports what it is.
    if !std::fs::metadata(&db.path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let Ok(file) = crate::durable::open_regular(&db.path) else {
        return Ok(None);
    };
    if nix::sys::statfs::fstatfs(&file)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NFS_SUPER_MAGIC)
    {
        tracing::debug!(path = %db.path.display(), "database on NFS: no flock on the file itself");
        return Ok(None);
    }
    let identity = file.metadata().ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    });
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(Some(held)),
        Err((_, Errno::EWOULDBLOCK)) => Err(Error::Busy(format!(
            "another guardian ({}) is working on {} (it holds the lock on the database file {}, \
             perhaps with another config or staging_dir); nothing was done: try again when it has finished",
            identity
                .and_then(flock_holder)
                .map_or("a process".to_string(), |pid| format!("pid {pid}")),
            db.name,
            db.path.display()
        ))),
        Err((_, errno)) => Err(Error::io("lock", &db.path, errno.into())),
    }
}

/// The pid holding a `flock` on the file with this device and inode, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`, device as hex major:minor).
fn flock_holder((dev, ino): (u64, u64)) -> Option<i32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// "pid N (job)" from the lock file's `N job` line, when that process is alive (the line may
/// be older than the lock, if the holder could only open the file read-only).
fn holder(text: &str) -> String {
    let mut words = text.split_whitespace();
    match (
        words.next().and_then(|p| p.parse::<i32>().ok()),
        words.next(),
    ) {
        (Some(pid), Some(job)) if crate::durable::pid_alive(pid) => format!("pid {pid} ({job})"),
        _ => "a process".to_string(),
    }
}

/// The lock file of `db` under `staging_dir`.
pub fn lock_path(staging_dir: &Path, db: &str) -> PathBuf {
    staging_dir.join(format!("guardian-{db}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_per_database_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = DbLock::acquire_staging(dir.path(), "market", "backup").unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts as another process's would.
        let e = DbLock::acquire_staging(dir.path(), "market", "drill").unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {} (backup)", std::process::id())) && msg.contains("market"),
            "{msg}"
        );
        // Another database is independent.
        let _other = DbLock::acquire_staging(dir.path(), "shop", "backup").unwrap();
        drop(held);
        let _again = DbLock::acquire_staging(dir.path(), "market", "prune").unwrap();
        // The holder is named only while that process lives (the line may be stale).
        assert_eq!(
            holder(&format!("{} drill\n", std::process::id())),
            format!("pid {} (drill)", std::process::id())
        );
        assert_eq!(holder("2147483646 backup\n"), "a process");
        assert_eq!(holder(""), "a process");
        // Never swept as a staging leftover.
        assert!(crate::durable::dead_leftovers(dir.path(), "guardian-market-").is_empty());
    }
}
