//! One job per database at a time across processes: a backup, a drill and a prune of the same
//! database never overlap, whichever guardian runs them (the service, a one-shot command, a cron
//! job, a second service by mistake). Inside one process the service also serialises its jobs
//! with a mutex; this lock is what another process sees.
//!
//! It is an advisory `flock(2)` on `{staging_dir}/guardian-{db}.lock`. The kernel releases it
//! when its process exits, however it exits (SIGKILL, power loss), so a lock can never be left
//! behind by a dead run: there is nothing to clear. The file itself only says who holds it (pid
//! and job), for the message of the run that finds it taken. It never matches the staging
//! sweep's `guardian-{db}-{pid}-…` names.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// A held lock on one database's jobs; released when dropped.
#[derive(Debug)]
pub struct DbLock {
    _file: Flock<File>,
}

impl DbLock {
    /// Take the lock of `db` for `job` ("backup", "drill", "prune"), without waiting.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds it (exit code 3), naming that process;
    /// [`Error::Io`] when the lock file cannot be created.
    pub fn acquire(staging_dir: &Path, db: &str, job: &str) -> Result<DbLock> {
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
                Ok(DbLock { _file: held })
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
        let held = DbLock::acquire(dir.path(), "market", "backup").unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts as another process's would.
        let e = DbLock::acquire(dir.path(), "market", "drill").unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {} (backup)", std::process::id())) && msg.contains("market"),
            "{msg}"
        );
        // Another database is independent.
        let _other = DbLock::acquire(dir.path(), "shop", "backup").unwrap();
        drop(held);
        let _again = DbLock::acquire(dir.path(), "market", "prune").unwrap();
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
