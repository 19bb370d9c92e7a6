//! The outcome of each database's last backup attempt, recorded where every `status` sees it.
//!
//! A failed backup publishes nothing, so the store alone cannot tell "no backup ran" from "the
//! backup failed". [`record`] writes one small record per attempt, success or failure, in two
//! places: `{db}/last-backup.json` in the store (beside the snapshots, so a `status` on any host
//! sees it) and `guardian-{db}.last-backup.json` in the staging folder (so a failure to reach
//! the store is recorded too; after a failure of the store itself only there, so that a store
//! that is down fails the backup in bounded time). [`last`] reads both and returns the newer
//! one; `status` is unhealthy while the last attempt failed and no snapshot taken after it
//! exists.
//!
//! Writing the record never changes a backup's outcome: a record that cannot be written is a
//! warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{chain, Error};
use crate::manifest::Manifest;
use crate::storage::{NamedStore, ObjectKey, PutMode, Storage};

/// The record format this guardian writes.
pub const RECORD_VERSION: u32 = 1;

/// Records larger than this are refused unread (a real one is a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// One backup attempt (the body of the record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub format_version: u32,
    pub db: String,
    /// `backup`.
    pub job: String,
    /// When the attempt ended.
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// The exit code `guardian backup` gave (0 ok, 1 bad data, 2 operational).
    pub exit_code: u8,
    /// The snapshot it published, if any.
    pub snapshot: Option<String>,
    /// Why it failed (the error chain, one line).
    pub error: Option<String>,
    pub host: String,
}

/// The key of `db`'s record in the store.
pub fn store_key(db: &str) -> ObjectKey {
    ObjectKey::new(format!("{db}/last-backup.json")).expect("validated database name")
}

/// The path of `db`'s record in the staging folder.
pub fn local_path(staging_dir: &Path, db: &str) -> PathBuf {
    staging_dir.join(format!("guardian-{db}.last-backup.json"))
}

/// Record the outcome of a backup of `db` (in each of its `stores` and in `staging_dir`);
/// never fails.
pub async fn record(
    stores: &[NamedStore],
    staging_dir: &Path,
    db: &str,
    result: Result<&Manifest, &Error>,
) {
    let attempt = Attempt {
        format_version: RECORD_VERSION,
        db: db.to_string(),
        job: "backup".into(),
        at: Utc::now(),
        ok: result.is_ok(),
        exit_code: result.map_or_else(Error::exit_code, |_| 0),
        snapshot: match result {
            Ok(m) => Some(m.id.to_string()),
            Err(Error::SourceGone { id, .. } | Error::StoresMissed { id, .. }) => Some(id.clone()),
            Err(_) => None,
        },
        error: result.err().map(|e| chain(e)),
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
    };
    let mut body = serde_json::to_vec_pretty(&attempt).expect("attempt serializes");
    body.push(b'\n');
    let path = local_path(staging_dir, db);
    if let Err(e) = write_local(&path, &body) {
        tracing::warn!(path = %path.display(), error = %e, "could not record the backup's outcome in the staging folder");
    }
    // A backup that failed because the store failed: writing there too would only wait out
    // another round of retries (a store that is down must fail the backup in bounded time);
    // the local record is what `status` on this host reads.
    if matches!(result, Err(Error::Storage(_))) {
        return;
    }
    let key = store_key(db);
    let body = Bytes::from(body);
    for s in stores {
        // A store that missed the snapshot failed on its own; the same holds for it.
        if let Err(Error::StoresMissed { missed, .. }) = result {
            if missed.iter().any(|(name, _)| name == &s.name) {
                continue;
            }
        }
        if let Err(e) = s
            .store
            .put_bytes(&key, body.clone(), PutMode::Overwrite)
            .await
        {
            tracing::warn!(store = %s.name, key = %key, error = %chain(&e), "could not record the backup's outcome in the store; `status` on this host still sees it");
        }
    }
}

fn write_local(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = crate::durable::parent_dir(path);
    std::fs::create_dir_all(dir)?;
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("last-backup");
    // The temp name carries the pid (`.{stem}.tmp{pid}-{random}`), so that what a killed
    // process left is recognised and swept here by the next record, and a live writer's
    // file never is.
    let tag = format!("tmp{}", std::process::id());
    for dead in crate::durable::dead_leftovers(dir, &format!(".{stem}.tmp")) {
        let _ = std::fs::remove_file(dead);
    }
    let (mut file, tmp) = crate::durable::create_temp(dir, stem, &tag, 0o644)?;
    let guard = crate::durable::TempGuard::new(tmp.clone());
    file.write_all(body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    guard.disarm();
    Ok(())
}

/// The newer of `db`'s two records, if any can be read. Unreadable records are ignored (and
/// logged): they say nothing of the attempt.
pub async fn last(store: &Arc<dyn Storage>, staging_dir: &Path, db: &str) -> Option<Attempt> {
    let parse = |bytes: &[u8], from: &str| match serde_json::from_slice::<Attempt>(bytes) {
        Ok(a) if a.db == db => Some(a),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(record = from, error = %e, "ignoring an unreadable backup outcome record");
            None
        }
    };
    let path = local_path(staging_dir, db);
    let local = std::fs::read(&path)
        .ok()
        .and_then(|b| parse(&b, &path.display().to_string()));
    let key = store_key(db);
    let stored = match store.get_bytes(&key, MAX_RECORD_BYTES).await {
        Ok(b) => parse(&b, key.as_str()),
        Err(_) => None,
    };
    match (local, stored) {
        (Some(a), Some(b)) => Some(if b.at > a.at { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's temp file left by a killed process is swept by the next record; one of a
    /// live process is not.
    #[test]
    fn a_killed_writers_temp_file_is_swept_by_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guardian-market.last-backup.json");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = dir.path().join(format!(
            ".guardian-market.last-backup.json.tmp{dead_pid}-0a0b0c"
        ));
        let live = dir.path().join(format!(
            ".guardian-market.last-backup.json.tmp{}-0d0e0f",
            std::process::id()
        ));
        std::fs::write(&dead, b"{").unwrap();
        std::fs::write(&live, b"{").unwrap();
        write_local(&path, b"{}\n").unwrap();
        assert!(!dead.exists(), "a dead writer's temp file stayed");
        assert!(live.exists(), "a live writer's temp file was removed");
        assert_eq!(std::fs::read(&path).unwrap(), b"{}\n");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp") && !n.ends_with("-0d0e0f"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
