//! What a restore may write to, and who is using it: the checks on a restore target before
//! anything is touched, in-use detection, and the staging files restores leave next to it.
//!
//! A target is a regular file or nothing. A folder, FIFO, socket or device is refused (a
//! restore swaps files by rename, which would move a folder aside and put a file in its
//! place), and so is a symlink (the rename would replace the link, not the file it points to),
//! a path that names a folder (`dir/`), `-`, and a path inside the local store. It does not
//! download, stage or swap anything: that is `restore`'s job.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::durable;
use crate::error::{Error, Result};
use crate::snapshot;

/// Refuse a restore target that is not a regular file or absent, before anything is touched.
/// `protected`: folders a restore must never write into (the local store).
///
/// # Errors
/// [`Error::Usage`] (exit 2) naming the target, what is wrong and what to give instead.
pub fn check(target: &Path, protected: &[PathBuf]) -> Result<()> {
    let shown = target.display();
    let raw = target.as_os_str().as_bytes();
    if raw == b"-" {
        return Err(Error::Usage(
            "restore target \"-\": guardian does not restore to standard output; give a file path \
             (./- for a file that is really named -)"
                .into(),
        ));
    }
    let names_folder = [&b"/"[..], b"/.", b"/.."].iter().any(|s| raw.ends_with(s))
        || raw == b"."
        || raw == b".."
        || target.file_name().is_none();
    if names_folder {
        return Err(Error::Usage(format!(
            "restore target {shown} names a folder, not a file; give the path of the database file \
             itself, e.g. {}/app.db",
            shown.to_string().trim_end_matches('/')
        )));
    }
    let dir = durable::parent_dir(target);
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "restore target folder {} does not exist; create it first (mkdir -p)",
            dir.display()
        )));
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = fs::read_link(target)
                .map(|p| format!(" (to {})", p.display()))
                .unwrap_or_default();
            return Err(Error::Usage(format!(
                "restore target {shown} is a symlink{to}; a restore replaces the file at the path \
                 it is given, which would replace the link, not what it points to: pass the real \
                 file with --to"
            )));
        }
        Ok(m) if !m.is_file() => {
            return Err(Error::Usage(format!(
                "restore target {shown} is {}, not a regular file; nothing was changed: restore to \
                 a file path (e.g. {}/app.db), or move it out of the way first",
                durable::kind(&m),
                shown.to_string().trim_end_matches('/')
            )));
        }
        _ => {}
    }
    let real_dir = fs::canonicalize(dir).map_err(|e| Error::io("resolve", dir, e))?;
    for root in protected {
        let Ok(real_root) = fs::canonicalize(root) else {
            continue; // not created yet: nothing to protect
        };
        if real_dir.starts_with(&real_root) {
            return Err(Error::Usage(format!(
                "restore target {shown} is inside the store ({}), where it could overwrite stored \
                 snapshots; restore to a path outside it",
                root.display()
            )));
        }
    }
    Ok(())
}

/// Is `db` in use? Returns who, e.g. "process 1234 (python3) has /srv/app.db open".
///
/// Two ways, so that an idle connection counts too:
/// - SQLite's POSIX advisory locks, asked with `F_GETLK` (which takes nothing): on the
///   database file at the lock bytes from 0x40000000 (<https://www.sqlite.org/lockingv3.html>,
///   `os_unix.c`), and in WAL mode on the `-shm` file at bytes 120..=128, where every open
///   connection holds a shared lock for as long as it is open.
/// - Any other process that has the database or its `-wal`/`-shm`/`-journal` open, found in
///   `/proc/*/fd` as `fuser` does. A rollback-journal database with an idle connection holds
///   no lock at all, and its application's next write would fail after the file was swapped.
///   Without root, only this user's processes can be seen there.
///
/// guardian's own process is never counted.
pub fn in_use(db: &Path) -> Option<String> {
    lock_holder(db).or_else(|| open_by_another_process(db))
}

fn lock_holder(db: &Path) -> Option<String> {
    const PENDING_BYTE: i64 = 0x4000_0000;
    let probe = |path: &Path, start: i64, len: i64, what: &str| -> Option<String> {
        let file = durable::open_regular(path).ok()?;
        let mut fl = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: start,
            l_len: len,
            l_pid: 0,
        };
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETLK(&mut fl)).ok()?;
        (fl.l_type != libc::F_UNLCK as libc::c_short)
            .then(|| format!("process {} holds a lock on its {what}", fl.l_pid))
    };
    let [_, shm, _] = snapshot::sidecars(db);
    probe(db, PENDING_BYTE, 512, "database file").or_else(|| probe(&shm, 120, 9, "-shm file"))
}

fn open_by_another_process(db: &Path) -> Option<String> {
    let real = fs::canonicalize(db).ok()?;
    let names: Vec<PathBuf> = std::iter::once(real.clone())
        .chain(snapshot::sidecars(&real))
        .collect();
    let me = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue; // gone, or another user's (without root)
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            if names.contains(&link) {
                let comm = fs::read_to_string(entry.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some(format!(
                    "process {pid} ({comm}) has {} open",
                    link.display()
                ));
            }
        }
    }
    None
}

/// The name prefix of the staging files restores create next to `target`:
/// `.{file}.guardian-restore-{pid}-{random}` (and that file's `-wal`/`-shm`/`-journal`).
pub fn staging_prefix(target: &Path) -> Option<String> {
    let name = target.file_name()?.to_str()?;
    Some(format!(".{name}.guardian-restore-"))
}

/// The staging file name tag of this process's restores.
pub fn staging_tag() -> String {
    format!("guardian-restore-{}", std::process::id())
}

/// Staging files (and their sidecars) of restores to `target` whose process is gone: what a
/// restore killed by SIGKILL or a power loss leaves. Those of live restores are not listed.
pub fn dead_staging_files(target: &Path) -> Vec<PathBuf> {
    match staging_prefix(target) {
        Some(prefix) => durable::dead_leftovers(durable::parent_dir(target), &prefix),
        None => Vec::new(),
    }
}

/// Remove [`dead_staging_files`] of `target`; returns what was removed. Never fails (a
/// read-only folder just keeps them).
pub fn sweep_dead_staging(target: &Path) -> Vec<PathBuf> {
    dead_staging_files(target)
        .into_iter()
        .filter(|p| fs::remove_file(p).is_ok())
        .inspect(|p| {
            tracing::info!(path = %p.display(), "removed staging file of an interrupted restore")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_other_process_with_the_file_open_counts_as_using_it_but_not_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        std::fs::write(&db, b"SQLite format 3\0").unwrap();
        // This process's own descriptors never count (a restore must not refuse itself).
        let _mine = std::fs::File::open(&db).unwrap();
        assert_eq!(in_use(&db), None);
        // A process that merely has it open (no lock at all), as `fuser` would see it.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&db).unwrap())
            .spawn()
            .unwrap();
        let who = in_use(&db);
        let _ = other.kill();
        let _ = other.wait();
        let who = who.expect("an open descriptor in another process is seen");
        assert!(
            who.contains(&format!("process {} (sleep)", other.id())),
            "{who}"
        );
        assert_eq!(in_use(&db), None, "a process that is gone no longer counts");
    }

    #[test]
    fn folder_like_and_special_targets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for bad in ["-", ".", ".."] {
            assert!(check(Path::new(bad), &[]).is_err(), "{bad}");
        }
        let with_slash = PathBuf::from(format!("{}/x/", d.display()));
        let e = check(&with_slash, &[]).unwrap_err().to_string();
        assert!(e.contains("names a folder"), "{e}");
        std::fs::create_dir(d.join("sub")).unwrap();
        let e = check(&d.join("sub"), &[]).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        assert!(check(&d.join("new.db"), &[]).is_ok());
        let store = d.join("store");
        std::fs::create_dir(&store).unwrap();
        let e = check(&store.join("x.db"), std::slice::from_ref(&store))
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the store"), "{e}");
    }
}
