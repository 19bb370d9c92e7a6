//! What is in the store for a database: snapshots with their manifests and drill results,
//! damaged snapshots, and orphans (data without a manifest). Free functions over a store, as
//! litestream's `FindLTXFiles`; the store itself knows nothing of snapshots.
//!
//! A snapshot exists only if its manifest does. A manifest that cannot be read or fails its
//! checks makes the snapshot `failed` (listed with the problem), never usable.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::CheckKind;
use crate::damage::Damage;
use crate::error::Result;
use crate::human::rfc3339;
use crate::manifest::{self, Manifest, ObjectRole, SnapshotKey, MAX_MANIFEST_BYTES};
use crate::storage::{ObjectKey, ObjectMeta, Storage, StorageError};

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

/// How a snapshot's data is known to pass `PRAGMA integrity_check` (the proof retention needs
/// before it deletes anything older).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The copy passed `integrity_check` before it was published (`check.kind` in the manifest).
    Backup,
    /// A drill at this time restored it and passed every check.
    Drill(DateTime<Utc>),
    /// A restore at this time passed `integrity_check` on these bytes.
    Restore(DateTime<Utc>),
}

impl std::fmt::Display for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Backup => f.write_str("integrity_check at backup"),
            Proof::Drill(t) => write!(f, "drill at {}", rfc3339(*t)),
            Proof::Restore(t) => write!(f, "restore at {}", rfc3339(*t)),
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
    pub problem: Option<Damage>,
    /// Dated more than [`SKEW_TOLERANCE`] ahead of this host's clock: listed and flagged,
    /// never picked by `--latest`/`--before` (only by `--snapshot`).
    pub skewed: bool,
    /// How its data is known to pass `integrity_check`, if it is.
    pub proof: Option<Proof>,
    /// Records in its folder that were refused (unreadable, about other data), with why.
    pub ignored_records: Vec<String>,
    /// When prune marked it for deletion (a tombstone), if it did.
    pub marked_at: Option<DateTime<Utc>>,
}

/// A snapshot folder with objects but no manifest: an interrupted backup (or one in progress),
/// or what a deleted snapshot left. Objects that a manifest names (a deleted full's data object
/// that incrementals still build on) are not in it: they are kept as long as they are named.
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
    /// Bytes the store holds for the snapshots that are not failed, each object counted once
    /// (incrementals share their base's object and their parents' page sets).
    pub stored_bytes: u64,
}

impl Catalog {
    /// The newest usable snapshot of `kind`.
    pub fn newest_usable(&self, kind: crate::manifest::SnapshotKind) -> Option<&SnapshotEntry> {
        self.usable()
            .find(|s| s.manifest.as_ref().is_some_and(|m| m.kind() == kind))
    }

    /// Snapshots that `--latest` may pick, newest first: not failed, not dated in the future.
    pub fn usable(&self) -> impl Iterator<Item = &SnapshotEntry> {
        self.snapshots
            .iter()
            .filter(|s| s.status != SnapshotStatus::Failed && !s.skewed)
    }

    /// Find a snapshot by full id or unique id prefix. A damaged snapshot is found too (its
    /// `problem` says what is wrong): the caller decides what to do with it.
    pub fn find(&self, id: &str) -> std::result::Result<&SnapshotEntry, FindError> {
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
            [] => Err(FindError::NotFound {
                id: id.to_string(),
                db: self.db.clone(),
            }),
            many => Err(FindError::Ambiguous {
                id: id.to_string(),
                matches: many.len(),
            }),
        }
    }
}

/// Why [`Catalog::find`] found no snapshot: the command line named one that is not there
/// (a usage error, see [`Error::Usage`](crate::error::Error::Usage)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("no snapshot {id:?} for database {db:?} (see `guardian list --db {db}`)")]
    NotFound { id: String, db: String },
    #[error("snapshot id {id:?} is ambiguous ({matches} match); give more of it")]
    Ambiguous { id: String, matches: usize },
}

impl From<FindError> for crate::error::Error {
    /// A snapshot named on the command line that is not there (or not one) is a usage error.
    fn from(e: FindError) -> Self {
        crate::error::Error::Usage(e.to_string())
    }
}

/// Snapshots dated more than this ahead of the clock are flagged (clock skew) and never picked
/// by `--latest`/`--before`; closer than this is ordinary skew between hosts.
pub const SKEW_TOLERANCE: chrono::Duration = chrono::Duration::minutes(10);

/// Drill and restore records read per snapshot at most, newest first, looking for one that
/// parses (a folder full of junk must not make listing slow).
const MAX_RECORDS_READ: usize = 8;

/// Records (drill verdicts, restore proofs, tombstones) larger than this are refused unread.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// List and read everything stored for database `db`.
pub async fn load(store: &Arc<dyn Storage>, db: &str) -> Result<Catalog> {
    let objects = store.list(&manifest::db_prefix(db)).await?;
    let listed: BTreeMap<ObjectKey, ObjectMeta> =
        objects.iter().map(|o| (o.key.clone(), o.clone())).collect();
    let mut folders: BTreeMap<SnapshotKey, Vec<(ObjectMeta, ObjectRole)>> = BTreeMap::new();
    for obj in objects {
        match manifest::parse_key(&obj.key) {
            Some((sk, role)) if sk.db == db => folders.entry(sk).or_default().push((obj, role)),
            _ => tracing::debug!(key = %obj.key, "ignoring object outside the snapshot layout"),
        }
    }

    let mut without_manifest = Vec::new();
    let mut with_manifest = Vec::new();
    for (sk, objs) in folders {
        if objs.iter().any(|(_, r)| *r == ObjectRole::Manifest) {
            with_manifest.push((sk, objs));
        } else {
            without_manifest.push((sk, objs));
        }
    }

    // Fetch manifests (and the records that vouch for them) concurrently, a bounded number
    // at a time.
    let sem = Arc::new(tokio::sync::Semaphore::new(FETCH_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (sk, objs)) in with_manifest.iter().enumerate() {
        let store = Arc::clone(store);
        let sem = Arc::clone(&sem);
        let sk = sk.clone();
        let objs = objs.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore is never closed");
            (i, read_folder(&store, &sk, &objs).await)
        });
    }
    let mut read: Vec<Option<Option<Folder>>> = vec![None; with_manifest.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, f) = done.expect("manifest fetch does not panic");
        read[i] = Some(f?);
    }

    let now = Utc::now();
    let mut snapshots = Vec::with_capacity(with_manifest.len());
    for ((sk, _), folder) in with_manifest.into_iter().zip(read) {
        // `None`: deleted between the listing and the read (a concurrent prune).
        let Some(folder) = folder.expect("every task reported") else {
            continue;
        };
        snapshots.push(entry(sk, &listed, folder, now));
    }
    let named = named_objects(&snapshots);
    let stored_bytes = named_objects(
        snapshots
            .iter()
            .filter(|s| s.status != SnapshotStatus::Failed),
    )
    .iter()
    .filter_map(|k| listed.get(k).map(|o| o.size))
    .sum();
    let orphans = without_manifest
        .into_iter()
        .filter_map(|(sk, objs)| {
            let objects: Vec<ObjectMeta> = objs
                .into_iter()
                .map(|(o, _)| o)
                .filter(|o| !named.contains(&o.key))
                .collect();
            (!objects.is_empty()).then_some(Orphan { key: sk, objects })
        })
        .collect();
    snapshots.sort_by(|a, b| (b.created_at, &b.key.id).cmp(&(a.created_at, &a.key.id)));
    Ok(Catalog {
        db: db.to_string(),
        snapshots,
        orphans,
        stored_bytes,
    })
}

/// What was read from one snapshot folder.
#[derive(Debug, Clone)]
struct Folder {
    manifest: std::result::Result<Manifest, Damage>,
    /// The newest drill verdict that parsed and vouches for this snapshot's data.
    last_drill: Option<DrillMark>,
    /// The newest restore record that parsed (read only when no other proof exists).
    restored_at: Option<DateTime<Utc>>,
    /// Records that were read and refused, with the reason.
    ignored: Vec<String>,
    /// When prune marked the snapshot for deletion.
    marked_at: Option<DateTime<Utc>>,
}

/// Read the manifest of `sk` and the records that say what is known of its data.
///
/// `None` when the manifest was deleted since the listing (a concurrent prune): not a snapshot.
///
/// # Errors
/// Only when the store cannot be read: damage is a finding, not an error.
async fn read_folder(
    store: &Arc<dyn Storage>,
    sk: &SnapshotKey,
    objs: &[(ObjectMeta, ObjectRole)],
) -> Result<Option<Folder>> {
    // Damage (too large) makes the snapshot `failed`; a store that cannot be read is an
    // operational error for the whole listing, never a verdict on the snapshot.
    let manifest = match store.get_bytes(&sk.manifest(), MAX_MANIFEST_BYTES).await {
        Ok(bytes) => Manifest::parse(&bytes, sk).map_err(Damage::from),
        Err(e @ StorageError::TooLarge { .. }) => Err(Damage::ManifestUnreadable(e.to_string())),
        // Deleted between the listing and the read (a concurrent prune): not a snapshot.
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut folder = Folder {
        manifest,
        last_drill: None,
        restored_at: None,
        ignored: Vec::new(),
        marked_at: None,
    };
    if let Some((o, _)) = objs.iter().find(|(_, r)| *r == ObjectRole::Tombstone) {
        folder.marked_at = Some(read_tombstone(store, o).await?);
    }
    let Ok(m) = &folder.manifest else {
        return Ok(Some(folder));
    };
    // The first verdict, newest first, that parses and names this data is the verdict.
    for d in drills_newest_first(objs).into_iter().take(MAX_RECORDS_READ) {
        match read_record(store, &d.key, sk, m, d.ok).await? {
            Some(Ok(())) => {
                folder.last_drill = Some(d);
                break;
            }
            Some(Err(why)) => folder.ignored.push(format!("{}: {why}", d.key)),
            None => {}
        }
    }
    let proven = m.check.kind == CheckKind::IntegrityCheck.pragma()
        || folder.last_drill.as_ref().is_some_and(|d| d.ok);
    if !proven {
        let mut restores: Vec<(DateTime<Utc>, &ObjectKey)> = objs
            .iter()
            .filter_map(|(o, r)| match r {
                ObjectRole::Restore { at } => Some((*at, &o.key)),
                _ => None,
            })
            .collect();
        restores.sort_by_key(|(at, k)| std::cmp::Reverse((*at, (*k).clone())));
        for (at, key) in restores.into_iter().take(MAX_RECORDS_READ) {
            match read_record(store, key, sk, m, true).await? {
                Some(Ok(())) => {
                    folder.restored_at = Some(at);
                    break;
                }
                Some(Err(why)) => folder.ignored.push(format!("{key}: {why}")),
                None => {}
            }
        }
    }
    Ok(Some(folder))
}

/// The drill records of a folder, newest first; of two in the same second the failed one comes
/// first (record times have second precision, and a pass must never hide a failure).
fn drills_newest_first(objs: &[(ObjectMeta, ObjectRole)]) -> Vec<DrillMark> {
    let mut drills: Vec<DrillMark> = objs
        .iter()
        .filter_map(|(o, r)| match r {
            ObjectRole::Drill { at, ok } => Some(DrillMark {
                at: *at,
                ok: *ok,
                key: o.key.clone(),
            }),
            _ => None,
        })
        .collect();
    drills.sort_by_key(|d| std::cmp::Reverse((d.at, !d.ok, d.key.clone())));
    drills
}

/// The fields every record in a snapshot folder carries (drill reports, restore records).
#[derive(Debug, Deserialize)]
struct RecordBody {
    db: String,
    snapshot: String,
    ok: bool,
    stored_sha256: Option<String>,
}

/// Read the record at `key` and check that it vouches for this snapshot's data: it parses,
/// names this database and snapshot and the stored SHA-256 of its manifest, and its verdict
/// agrees with its name. `None` when it vanished since the listing.
async fn read_record(
    store: &Arc<dyn Storage>,
    key: &ObjectKey,
    sk: &SnapshotKey,
    m: &Manifest,
    ok_by_name: bool,
) -> Result<Option<std::result::Result<(), String>>> {
    let bytes = match store.get_bytes(key, MAX_RECORD_BYTES).await {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e @ StorageError::TooLarge { .. }) => return Ok(Some(Err(e.to_string()))),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(check_record(&bytes, sk, m, ok_by_name)))
}

/// See [`read_record`].
fn check_record(
    bytes: &[u8],
    sk: &SnapshotKey,
    m: &Manifest,
    ok_by_name: bool,
) -> std::result::Result<(), String> {
    let b: RecordBody = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a guardian record ({e}); ignored"))?;
    if b.db != sk.db || b.snapshot != sk.id.as_str() {
        return Err(format!(
            "names snapshot {}/{}, not this one; ignored",
            b.db, b.snapshot
        ));
    }
    if b.ok != ok_by_name {
        return Err(format!(
            "says ok = {}, but its name says the opposite; ignored",
            b.ok
        ));
    }
    match b.stored_sha256 {
        None => Err(
            "names no stored_sha256 (written by an older guardian); ignored: run `guardian drill` again"
                .into(),
        ),
        Some(h) if h != m.stored_sha256().as_str() => Err(format!(
            "is about other data (stored_sha256 {h}, the manifest says {}); ignored",
            m.stored_sha256()
        )),
        Some(_) => Ok(()),
    }
}

/// When prune marked a snapshot: the later of the time in the tombstone and the time the
/// store wrote it (an unreadable tombstone counts from when it was written, else from now:
/// a damaged mark may delay a deletion, never hasten one).
async fn read_tombstone(store: &Arc<dyn Storage>, o: &ObjectMeta) -> Result<DateTime<Utc>> {
    #[derive(Deserialize)]
    struct Body {
        marked_at: DateTime<Utc>,
    }
    let body = match store.get_bytes(&o.key, MAX_RECORD_BYTES).await {
        Ok(b) => serde_json::from_slice::<Body>(&b).ok().map(|b| b.marked_at),
        Err(StorageError::NotFound { .. } | StorageError::TooLarge { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let now = Utc::now();
    Ok(match (body, o.modified) {
        (Some(b), Some(m)) => b.max(m).min(now),
        (Some(t), None) | (None, Some(t)) => t.min(now),
        (None, None) => now,
    })
}

/// Every object the readable manifests name: what no prune may delete while they stay.
pub fn named_objects<'a>(
    snapshots: impl IntoIterator<Item = &'a SnapshotEntry>,
) -> std::collections::BTreeSet<ObjectKey> {
    snapshots
        .into_iter()
        .filter_map(|s| s.manifest.as_ref())
        .flat_map(|m| m.objects().into_iter().map(|o| o.key))
        .collect()
}

fn entry(
    key: SnapshotKey,
    listed: &BTreeMap<ObjectKey, ObjectMeta>,
    folder: Folder,
    now: DateTime<Utc>,
) -> SnapshotEntry {
    let Folder {
        manifest: parsed,
        last_drill,
        restored_at,
        ignored,
        marked_at,
    } = folder;
    let (manifest, problem) = match parsed {
        Ok(m) => {
            let problem = missing_or_truncated(&m, listed);
            (Some(m), problem)
        }
        Err(e) => (None, Some(e)),
    };
    // What the listing says the data objects take (`None` when one is missing).
    let data_size = manifest.as_ref().and_then(|m| {
        m.objects()
            .iter()
            .map(|want| listed.get(&want.key).map(|o| o.size))
            .sum::<Option<u64>>()
    });
    let status = match (&problem, &last_drill) {
        (Some(_), _) => SnapshotStatus::Failed,
        (None, Some(d)) if d.ok => SnapshotStatus::Verified,
        (None, Some(_)) => SnapshotStatus::Failed,
        (None, None) => SnapshotStatus::Unverified,
    };
    let problem = problem.or_else(|| {
        last_drill
            .as_ref()
            .filter(|d| !d.ok)
            .map(|d| Damage::DrillFailed {
                at: d.at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                record: d.key.to_string(),
            })
    });
    let proof = match (&manifest, &last_drill) {
        _ if status == SnapshotStatus::Failed => None,
        (_, Some(d)) if d.ok => Some(Proof::Drill(d.at)),
        (Some(m), _) if m.check.kind == CheckKind::IntegrityCheck.pragma() => Some(Proof::Backup),
        _ => restored_at.map(Proof::Restore),
    };
    let created_at = manifest
        .as_ref()
        .map_or_else(|| key.id.time(), |m| m.created_at);
    SnapshotEntry {
        created_at,
        skewed: created_at > now + SKEW_TOLERANCE,
        key,
        manifest,
        data_size,
        last_drill,
        status,
        problem,
        proof,
        ignored_records: ignored,
        marked_at,
    }
}

/// Is every data object `m` names listed (in its folder or, for an incremental, its base's and
/// parents'), with the size it records?
fn missing_or_truncated(m: &Manifest, listed: &BTreeMap<ObjectKey, ObjectMeta>) -> Option<Damage> {
    let own = m.key();
    m.objects()
        .into_iter()
        .find_map(|want| match listed.get(&want.key) {
            // Objects in other folders are named by their folder too.
            None if manifest::parse_key(&want.key).is_some_and(|(sk, _)| sk != own) => {
                Some(Damage::ObjectMissing(
                    want.key
                        .as_str()
                        .split_once('/')
                        .map_or_else(|| want.key.to_string(), |(_, rest)| rest.to_string()),
                ))
            }
            None => Some(Damage::ObjectMissing(want.key.file_name().to_string())),
            Some(o) if o.size != want.len => Some(Damage::ObjectTruncated {
                expected: want.len,
                actual: o.size,
            }),
            Some(_) => None,
        })
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
    /// Bytes the snapshot added to the store (an incremental: its page set; a restore also
    /// reads its base's and parents' objects).
    pub stored_bytes: Option<u64>,
    /// SHA-256 of the raw database.
    pub sha256: Option<&'a str>,
    pub stored_sha256: Option<&'a str>,
    pub status: SnapshotStatus,
    pub last_drill_at: Option<String>,
    pub problem: Option<String>,
    /// Dated more than 10 minutes ahead of this host's clock (clock skew): never picked by
    /// `restore --latest`/`--before`.
    pub future: bool,
    /// How its data is known to pass `integrity_check` (`integrity_check at backup`,
    /// `drill at …`, `restore at …`), or null.
    pub integrity_proof: Option<String>,
    /// Records in its folder that were refused, with why.
    pub ignored_records: &'a [String],
    /// When prune marked it for deletion, and when prune may delete it.
    pub marked_at: Option<String>,
    /// `full` or `incremental` (null when the manifest cannot be read).
    pub kind: Option<&'static str>,
    /// An incremental's full snapshot (the base of its chain); null for a full.
    pub base: Option<&'a str>,
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
            stored_bytes: m.map(|m| m.own_stored_len()),
            sha256: m.map(|m| m.raw_sha256.as_str()),
            stored_sha256: m.map(|m| m.stored_sha256().as_str()),
            status: self.status,
            last_drill_at: self.last_drill.as_ref().map(|d| rfc3339(d.at)),
            problem: self.problem.as_ref().map(ToString::to_string),
            future: self.skewed,
            integrity_proof: self.proof.map(|p| p.to_string()),
            ignored_records: &self.ignored_records,
            marked_at: self.marked_at.map(rfc3339),
            kind: m.map(|m| m.kind().as_str()),
            base: m.and_then(|m| m.base()).map(|b| b.as_str()),
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
            assert!(!drills_newest_first(&objs)[0].ok);
        }
        // A later pass does replace an earlier failure.
        let objs = [
            drill_object(&sk, "2026-11-24T04:00:00Z", false),
            drill_object(&sk, "2026-11-24T04:00:01Z", true),
        ];
        assert!(drills_newest_first(&objs)[0].ok);
    }

    #[test]
    fn a_record_counts_only_when_it_names_this_snapshot_and_its_data() {
        let m = crate::manifest::tests::sample();
        let sk = SnapshotKey {
            db: m.db.clone(),
            id: m.id.clone(),
        };
        let good = serde_json::json!({
            "db": m.db, "snapshot": m.id.as_str(), "ok": true,
            "stored_sha256": m.stored_sha256().as_str(),
        });
        assert_eq!(
            check_record(good.to_string().as_bytes(), &sk, &m, true),
            Ok(())
        );
        let mut cases = vec![
            ("junk", "junk\n".to_string()),
            ("name says failed", good.to_string()),
        ];
        for (field, value) in [
            ("snapshot", serde_json::json!("20261124T030000Z-00000000")),
            ("db", serde_json::json!("shop")),
            ("stored_sha256", serde_json::json!("0".repeat(64))),
            ("stored_sha256", serde_json::Value::Null),
            ("ok", serde_json::json!(false)),
        ] {
            let mut v = good.clone();
            v[field] = value;
            cases.push((field, v.to_string()));
        }
        for (i, (what, text)) in cases.iter().enumerate() {
            let ok_by_name = i != 1;
            assert!(
                check_record(text.as_bytes(), &sk, &m, ok_by_name).is_err(),
                "{what} accepted"
            );
        }
    }
}
