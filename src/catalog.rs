//! What is in the store for a database: snapshots with their manifests and drill results,
//! damaged snapshots, and orphans (data without a manifest). Free functions over a store, as
//! litestream's `FindLTXFiles`; the store itself knows nothing of snapshots.
//!
//! A snapshot exists only if its manifest does. A manifest that cannot be read or fails its
//! checks makes the snapshot `failed` (listed with the problem), never usable.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::human::rfc3339;
use crate::manifest::{self, Manifest, ObjectRole, SnapshotKey, MAX_MANIFEST_BYTES};
use crate::storage::{ObjectKey, ObjectMeta, Storage, StorageError};

/// Marks a manifest that vanished between listing and reading.
const GONE: &str = "manifest deleted while listing";

/// Manifests fetched at once when listing.
const FETCH_CONCURRENCY: usize = 16;

/// How trustworthy a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Complete and checked at backup time; no drill has run on it yet.
    Unverified,
    /// Its latest drill restored it and passed every check.
    Verified,
    /// Damaged: its latest drill failed, its manifest is unreadable, or its data is missing.
    Failed,
}

impl SnapshotStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotStatus::Unverified => "unverified",
            SnapshotStatus::Verified => "verified",
            SnapshotStatus::Failed => "failed",
        }
    }
}

/// A drill result as recorded next to a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillMark {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub key: ObjectKey,
}

/// One snapshot folder that has a manifest object.
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    pub key: SnapshotKey,
    /// The parsed manifest; `None` when it could not be read or failed its checks.
    pub manifest: Option<Manifest>,
    /// From the manifest (authenticated by its checks), else from the id.
    pub created_at: DateTime<Utc>,
    /// Size of the data object as listed, if present.
    pub data_size: Option<u64>,
    /// The newest drill result, if any.
    pub last_drill: Option<DrillMark>,
    pub status: SnapshotStatus,
    /// Why the snapshot is `failed`.
    pub problem: Option<String>,
}

/// A snapshot folder with objects but no manifest: an interrupted backup (or one in progress).
#[derive(Debug, Clone)]
pub struct Orphan {
    pub key: SnapshotKey,
    pub objects: Vec<ObjectMeta>,
}

/// Everything stored for one database.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub db: String,
    /// Newest first (by `created_at`, then id).
    pub snapshots: Vec<SnapshotEntry>,
    pub orphans: Vec<Orphan>,
}

impl Catalog {
    /// Snapshots that may be restored, newest first: not failed.
    pub fn usable(&self) -> impl Iterator<Item = &SnapshotEntry> {
        self.snapshots
            .iter()
            .filter(|s| s.status != SnapshotStatus::Failed)
    }

    /// Find a snapshot by full id or unique id prefix.
    pub fn find(&self, id: &str) -> std::result::Result<&SnapshotEntry, String> {
        if let Some(s) = self.snapshots.iter().find(|s| s.key.id.as_str() == id) {
            return Ok(s);
        }
        let hits: Vec<&SnapshotEntry> = self
            .snapshots
            .iter()
            .filter(|s| !id.is_empty() && s.key.id.as_str().starts_with(id))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no snapshot {id:?} for database {:?} (see `guardian list --db {}`)",
                self.db, self.db
            )),
            many => Err(format!(
                "snapshot id {id:?} is ambiguous ({} match); give more of it",
                many.len()
            )),
        }
    }
}

/// List and read everything stored for database `db`.
pub async fn load(store: &Arc<dyn Storage>, db: &str) -> Result<Catalog> {
    let objects = store.list(&manifest::db_prefix(db)).await?;
    let mut folders: BTreeMap<SnapshotKey, Vec<(ObjectMeta, ObjectRole)>> = BTreeMap::new();
    for obj in objects {
        match manifest::parse_key(&obj.key) {
            Some((sk, role)) if sk.db == db => folders.entry(sk).or_default().push((obj, role)),
            _ => tracing::debug!(key = %obj.key, "ignoring object outside the snapshot layout"),
        }
    }

    let mut orphans = Vec::new();
    let mut with_manifest = Vec::new();
    for (sk, objs) in folders {
        if objs.iter().any(|(_, r)| *r == ObjectRole::Manifest) {
            with_manifest.push((sk, objs));
        } else {
            orphans.push(Orphan {
                key: sk,
                objects: objs.into_iter().map(|(o, _)| o).collect(),
            });
        }
    }

    // Fetch manifests concurrently, a bounded number at a time.
    let sem = Arc::new(tokio::sync::Semaphore::new(FETCH_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (sk, _)) in with_manifest.iter().enumerate() {
        let store = Arc::clone(store);
        let sem = Arc::clone(&sem);
        let sk = sk.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore is never closed");
            // Damage (too large) makes the snapshot `failed`; a store that cannot be read is an
            // operational error for the whole listing, never a verdict on the snapshot.
            let parsed = match store.get_bytes(&sk.manifest(), MAX_MANIFEST_BYTES).await {
                Ok(bytes) => Ok(Manifest::parse(&bytes, &sk)),
                Err(e @ StorageError::TooLarge { .. }) => {
                    Ok(Err(format!("manifest unreadable: {e}")))
                }
                // Deleted between the listing and the read (a concurrent prune): not a snapshot.
                Err(StorageError::NotFound { .. }) => Ok(Err(GONE.to_string())),
                Err(e) => Err(e),
            };
            (i, parsed)
        });
    }
    let mut parsed: Vec<Option<std::result::Result<Manifest, String>>> =
        vec![None; with_manifest.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, p) = done.expect("manifest fetch does not panic");
        parsed[i] = Some(p?);
    }

    let mut snapshots = Vec::with_capacity(with_manifest.len());
    for ((sk, objs), parsed) in with_manifest.into_iter().zip(parsed) {
        let parsed = parsed.expect("every task reported");
        if matches!(&parsed, Err(e) if e == GONE) {
            continue;
        }
        snapshots.push(entry(sk, &objs, parsed));
    }
    snapshots.sort_by(|a, b| (b.created_at, &b.key.id).cmp(&(a.created_at, &a.key.id)));
    Ok(Catalog {
        db: db.to_string(),
        snapshots,
        orphans,
    })
}

fn entry(
    key: SnapshotKey,
    objs: &[(ObjectMeta, ObjectRole)],
    parsed: std::result::Result<Manifest, String>,
) -> SnapshotEntry {
    let last_drill = objs
        .iter()
        .filter_map(|(o, r)| match r {
            ObjectRole::Drill { at, ok } => Some(DrillMark {
                at: *at,
                ok: *ok,
                key: o.key.clone(),
            }),
            _ => None,
        })
        // Record times have second precision: of two verdicts in the same second, the failed
        // one counts (a pass must never hide a failure).
        .max_by_key(|d| (d.at, !d.ok, d.key.clone()));
    let (manifest, problem) = match parsed {
        Ok(m) => {
            let data = objs.iter().find(|(o, _)| o.key.file_name() == m.object);
            let problem = match data {
                None => Some(format!("data object {} is missing", m.object)),
                Some((o, _)) if o.size != m.stored_len => Some(format!(
                    "data object is {} bytes, manifest says {}",
                    o.size, m.stored_len
                )),
                Some(_) => None,
            };
            (Some(m), problem)
        }
        Err(e) => (None, Some(e)),
    };
    let data_size = manifest
        .as_ref()
        .and_then(|m| objs.iter().find(|(o, _)| o.key.file_name() == m.object))
        .map(|(o, _)| o.size);
    let status = match (&problem, &last_drill) {
        (Some(_), _) => SnapshotStatus::Failed,
        (None, Some(d)) if d.ok => SnapshotStatus::Verified,
        (None, Some(_)) => SnapshotStatus::Failed,
        (None, None) => SnapshotStatus::Unverified,
    };
    let problem = problem.or_else(|| {
        last_drill.as_ref().filter(|d| !d.ok).map(|d| {
            format!(
                "drill failed at {} (see {})",
                d.at.format("%Y-%m-%dT%H:%M:%SZ"),
                d.key
            )
        })
    });
    SnapshotEntry {
        created_at: manifest
            .as_ref()
            .map_or_else(|| key.id.time(), |m| m.created_at),
        key,
        manifest,
        data_size,
        last_drill,
        status,
        problem,
    }
}

/// The `list --json` view of a snapshot (a contract: fields are only ever added).
#[derive(Debug, Serialize)]
pub struct SnapshotView<'a> {
    pub id: &'a str,
    pub db: &'a str,
    pub created_at: String,
    pub age_seconds: i64,
    /// Size of the raw database.
    pub size_bytes: Option<u64>,
    /// Size of the stored object.
    pub stored_bytes: Option<u64>,
    /// SHA-256 of the raw database.
    pub sha256: Option<&'a str>,
    pub stored_sha256: Option<&'a str>,
    pub status: SnapshotStatus,
    pub last_drill_at: Option<String>,
    pub problem: Option<&'a str>,
}

impl SnapshotEntry {
    pub fn view(&self, now: DateTime<Utc>) -> SnapshotView<'_> {
        let m = self.manifest.as_ref();
        SnapshotView {
            id: self.key.id.as_str(),
            db: &self.key.db,
            created_at: rfc3339(self.created_at),
            age_seconds: (now - self.created_at).num_seconds(),
            size_bytes: m.map(|m| m.raw_len),
            stored_bytes: m.map(|m| m.stored_len),
            sha256: m.map(|m| m.raw_sha256.as_str()),
            stored_sha256: m.map(|m| m.stored_sha256.as_str()),
            status: self.status,
            last_drill_at: self.last_drill.as_ref().map(|d| rfc3339(d.at)),
            problem: self.problem.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill_object(sk: &SnapshotKey, at: &str, ok: bool) -> (ObjectMeta, ObjectRole) {
        let at: DateTime<Utc> = at.parse().unwrap();
        (
            ObjectMeta {
                key: sk.drill(at, ok),
                size: 10,
                modified: None,
            },
            ObjectRole::Drill { at, ok },
        )
    }

    #[test]
    fn a_failed_drill_in_the_same_second_as_a_passed_one_wins() {
        let sk = SnapshotKey {
            db: "market".into(),
            id: manifest::SnapshotId::new("2026-11-24T03:00:00Z".parse().unwrap()),
        };
        let objs = [
            drill_object(&sk, "2026-11-24T04:00:00Z", true),
            drill_object(&sk, "2026-11-24T04:00:00Z", false),
        ];
        for order in [[0, 1], [1, 0]] {
            let objs: Vec<_> = order.iter().map(|&i| objs[i].clone()).collect();
            let e = entry(sk.clone(), &objs, Err("no manifest in this test".into()));
            assert_eq!(e.last_drill.map(|d| d.ok), Some(false));
        }
        // A later pass does replace an earlier failure.
        let objs = [
            drill_object(&sk, "2026-11-24T04:00:00Z", false),
            drill_object(&sk, "2026-11-24T04:00:01Z", true),
        ];
        let e = entry(sk, &objs, Err("no manifest in this test".into()));
        assert_eq!(e.last_drill.map(|d| d.ok), Some(true));
    }
}
