//! The restore drill: prove a snapshot restores, by restoring it.
//!
//! A snapshot (the newest usable one, or a named one) is downloaded into a private scratch
//! folder under the staging folder (never the live path), both SHA-256s are checked on the way,
//! then `PRAGMA integrity_check` and `PRAGMA foreign_key_check` run on it, and its page size,
//! page count, schema hash and per-table row counts are compared with the manifest. Every step
//! is timed. The result is a [`DrillReport`]: data, not an error, when the snapshot is bad.
//!
//! The report is stored next to the snapshot as `drill-{time}-{ok|failed}.json`, so every
//! guardian looking at the store sees it: `list` shows the snapshot `verified` or `failed`, and
//! `restore --latest` never picks a failed one. The record names its database, snapshot and
//! the stored SHA-256 it checked; `catalog` parses it and ignores (and reports) one that does
//! not, so a file named `drill-…-ok.json` proves nothing by its name alone.
//!
//! Rotation ([`run_with_rotation`], what `guardian drill` and the scheduled drill do): besides
//! the newest usable snapshot, each drill reads one older usable snapshot, the one that went
//! longest without a drill (counting from its backup when it never had one), as
//! [`pick_rotation`] decides from the drill records in the store. So with K older snapshots
//! retained, K drills read every one of them, on any host, with no state outside the store: bit
//! rot in an old snapshot is found by a drill, not by the restore that needed it.
//!
//! Several stores (`stores.rs`): the snapshot is drilled from the first store, in config
//! order, that holds a good copy of it (a store that fails while its copy is read is reported,
//! exit 2, and the next store's copy is drilled). Then every other store's copy is read in full and its
//! stored objects checked against their SHA-256s in the manifest ([`SnapshotReader::verify_stored`]):
//! a copy with the same stored SHA-256 as the drilled one, whose bytes match, holds the very
//! bytes the drill restored, and gets the same verdict recorded in its store. A copy that does
//! not match gets a failed verdict saying so (so `restore` passes over it, and `guardian sync`
//! can replace it), and fails the drill. When the drilled copy's own bytes were bad, the
//! verdict is about that copy alone: the others are checked and reported, and nothing is
//! recorded for them.
//!
//! Foreign-key violations are warnings, not failures: the online backup copies pages exactly,
//! so violations were in the source when the copy was taken, and marking the snapshot failed
//! would only stop `restore --latest` from restoring a faithful copy.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, instrument};

use crate::catalog;
use crate::config::DatabaseConfig;
use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::layout::SnapshotReader;
use crate::manifest::{Manifest, SnapshotKey};
use crate::snapshot;
use crate::storage::{NamedStore, PutMode, Storage};
use crate::stores::Merged;

/// The drill record format this guardian writes.
pub const RECORD_VERSION: u32 = 1;

/// One timed step of a drill.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `download`, `integrity_check`, `foreign_key_check`, `compare`.
    pub name: &'static str,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

/// One comparison of what was restored with what was promised.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub expected: String,
    pub actual: String,
    /// A failed required check fails the drill; others are warnings.
    pub required: bool,
}

/// Why a drill read the snapshot it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The newest usable snapshot.
    Latest,
    /// The older snapshot whose turn it was (see [`pick_rotation`]).
    Rotation,
    /// Named with `--snapshot`.
    Requested,
}

/// The outcome of one drill (also the body of the stored drill record).
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub format_version: u32,
    pub guardian_version: String,
    /// The host that ran the drill.
    pub host: String,
    pub db: String,
    pub snapshot: String,
    /// The stored SHA-256 of the snapshot's data, from its manifest: the verdict is about
    /// these bytes (a record that does not name them is ignored; see `catalog`).
    pub stored_sha256: Option<String>,
    pub snapshot_created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub seconds: f64,
    /// How long the part of the drill that `guardian restore` also does took: download,
    /// decompression, both SHA-256s and `integrity_check` (the proven restore time; absent
    /// when the drill stopped before `integrity_check`).
    pub restore_seconds: Option<f64>,
    /// True when every required check passed.
    pub ok: bool,
    pub steps: Vec<Step>,
    pub checks: Vec<Check>,
    /// Why the drill failed (empty when ok).
    pub problems: Vec<String>,
    /// Findings that do not fail the drill (foreign-key violations).
    pub warnings: Vec<String>,
    /// Why this snapshot was drilled.
    pub selected_by: Selection,
    /// When this snapshot was last drilled before, if ever.
    pub previous_drill_at: Option<DateTime<Utc>>,
    /// The store the drilled copy was read from (its name).
    pub store: String,
    /// The copies of the snapshot in the database's other stores, checked against this drill
    /// (see the module doc).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyCheck>,
    /// Where the record was stored, or why it could not be (not part of the record).
    #[serde(skip)]
    pub record: std::result::Result<String, String>,
}

/// Another store's copy of a drilled snapshot, read in full and checked (JSON: `store`,
/// `state`, `detail`, `record`: the key of the verdict recorded there, and `record_error`).
#[derive(Debug, Clone)]
pub struct CopyCheck {
    pub store: String,
    /// `same` (its stored bytes are the drilled ones: the verdict is recorded there too),
    /// `differs` (damaged or other bytes: a failed verdict is recorded there), `intact` (its
    /// bytes match its manifest, but the drilled copy was bad: not judged), `unreadable` (the
    /// store failed while it was read), `missing` (the store lacks the snapshot).
    pub state: &'static str,
    pub detail: String,
    /// Where the verdict was recorded in that store, or why it could not be.
    pub record: Option<std::result::Result<String, String>>,
}

impl Serialize for CopyCheck {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("CopyCheck", 5)?;
        st.serialize_field("store", &self.store)?;
        st.serialize_field("state", self.state)?;
        st.serialize_field("detail", &self.detail)?;
        st.serialize_field(
            "record",
            &self.record.as_ref().and_then(|r| r.as_ref().ok()),
        )?;
        st.serialize_field(
            "record_error",
            &self.record.as_ref().and_then(|r| r.as_ref().err()),
        )?;
        st.end()
    }
}

impl CopyCheck {
    /// A copy whose data is bad: the drill fails for it (exit 1).
    pub fn differs(&self) -> bool {
        self.state == "differs"
    }

    /// The copy could not be checked, or its verdict not recorded (exit 2).
    pub fn failed_to_check(&self) -> bool {
        self.state == "unreadable" || matches!(self.record, Some(Err(_)))
    }
}

/// Drill `db`'s newest usable snapshot, or `snapshot` (an id or unique prefix), from the first
/// of `stores` holding a good copy, and record the result there and in every other store whose
/// copy holds the same bytes (see the module doc). The scratch copy lives under `staging_dir`;
/// `keys` decrypt encrypted snapshots (a missing identity is an operational error, not a
/// failed drill).
///
/// # Errors
/// Operational failures (store unreachable, disk full) and "nothing to drill". A snapshot that
/// fails its checks is `Ok` with `ok == false`.
#[instrument(skip_all, fields(db = %db.name))]
pub async fn run(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    staging_dir: &Path,
    snapshot: Option<&str>,
    keys: &Keys,
) -> Result<DrillReport> {
    let merged = load(stores, db).await?;
    let catalog = merged.combined();
    let (entry, selected_by) = match snapshot {
        Some(id) => (catalog.find(id)?, Selection::Requested),
        None => (latest(stores, db, &catalog)?, Selection::Latest),
    };
    let ctx = Ctx {
        merged: &merged,
        db,
        staging_dir,
        keys,
    };
    drill_copies(&ctx, entry, selected_by, Utc::now()).await
}

/// The merged catalogs of `db`'s stores; a store that cannot be read is logged and left out.
async fn load(stores: &[NamedStore], db: &DatabaseConfig) -> Result<Merged> {
    let merged = Merged::load(stores, &db.name).await.require_readable()?;
    for (s, e) in merged.unreadable() {
        tracing::warn!(store = %s.name, error = %crate::error::chain(e), "this store could not be read; drilling from the others");
    }
    Ok(merged)
}

/// What every drill of one run works with.
struct Ctx<'a> {
    merged: &'a Merged,
    db: &'a DatabaseConfig,
    staging_dir: &'a Path,
    keys: &'a Keys,
}

/// Drill the first good copy of `entry`'s snapshot, then check the other stores' copies
/// against it (see the module doc).
async fn drill_copies(
    ctx: &Ctx<'_>,
    entry: &catalog::SnapshotEntry,
    selected_by: Selection,
    run_at: DateTime<Utc>,
) -> Result<DrillReport> {
    let id = entry.key.id.to_string();
    let mut holders = ctx.merged.holders(&id, true);
    if holders.is_empty() {
        holders = ctx.merged.holders(&id, false);
    }
    let several = holders.len() > 1;
    let mut holders = holders.into_iter();
    // The first copy whose store answers: a store that fails while its copy is read is
    // reported, and the next store's copy is drilled (a store error says nothing of the data).
    let mut unreachable: Vec<CopyCheck> = Vec::new();
    let (store, first, mut r) = loop {
        let Some((store, first)) = holders.next() else {
            return Err(Error::Internal(format!("snapshot {id} has no copy")));
        };
        match drill_one(
            &store,
            ctx.db,
            ctx.staging_dir,
            &first,
            selected_by,
            run_at,
            ctx.keys,
        )
        .await
        {
            Ok(r) => break (store, first, r),
            Err(e @ Error::Storage(_)) if several && !holders.as_slice().is_empty() => {
                tracing::warn!(store = %store.name, error = %crate::error::chain(&e), "could not read this store's copy; drilling the next store's");
                unreachable.push(CopyCheck {
                    store: store.name.clone(),
                    state: "unreadable",
                    detail: crate::error::chain(&e),
                    record: None,
                });
            }
            Err(e) => return Err(e),
        }
    };
    r.copies.append(&mut unreachable);
    // A store that could not be read at all: its copy, if any, is unchecked.
    for (s, e) in ctx.merged.unreadable() {
        r.copies.push(CopyCheck {
            store: s.name.clone(),
            state: "unreadable",
            detail: format!("the store could not be read: {}", crate::error::chain(e)),
            record: None,
        });
    }
    // A readable store that lacks the snapshot: nothing to check there (`guardian sync` copies
    // it; `status` and `verify --all` report it).
    if let Some(snap) = ctx.merged.snapshots.iter().find(|s| s.id == id) {
        for (st, copy) in ctx.merged.copies(snap) {
            if matches!(copy, crate::stores::Copy::Missing) {
                r.copies.push(CopyCheck {
                    store: st.name.clone(),
                    state: "missing",
                    detail: format!(
                        "this store lacks the snapshot: `guardian sync --db {}` copies it",
                        ctx.db.name
                    ),
                    record: None,
                });
            }
        }
    }
    let mut seen: std::collections::BTreeSet<String> =
        r.copies.iter().map(|c| c.store.clone()).collect();
    let downloaded = r.steps.iter().any(|s| s.name == "download" && s.ok);
    let drilled_sha = first.manifest.as_ref().map(|m| m.stored_sha256().clone());
    // Copies in the other stores (damaged ones too: a damaged copy is found and reported).
    let others: Vec<(NamedStore, catalog::SnapshotEntry)> = holders
        .chain(
            ctx.merged
                .holders(&id, false)
                .into_iter()
                .filter(|(s, _)| s.name != store.name),
        )
        .collect();
    for (other, copy) in others {
        if !seen.insert(other.name.clone()) {
            continue;
        }
        let check = check_copy(
            ctx,
            &other,
            &copy,
            drilled_sha.as_ref(),
            first.manifest.as_ref(),
            downloaded,
        )
        .await;
        let check = match check {
            Err(e) => CopyCheck {
                store: other.name.clone(),
                state: "unreadable",
                detail: crate::error::chain(&e),
                record: None,
            },
            Ok((state, detail)) => {
                let record = match state {
                    "same" => Some(record(&other.store, &entry.key, run_at, &r).await),
                    "differs" => {
                        let mut failed = r.clone();
                        failed.ok = false;
                        // The verdict is about that copy: it names that copy's own stored
                        // SHA-256, so that its store's catalog takes it.
                        if let Some(m) = &copy.manifest {
                            failed.stored_sha256 = Some(m.stored_sha256().to_string());
                        }
                        failed.store = other.name.clone();
                        failed.problems = vec![format!(
                            "its copy in store {} is not the drilled data: {detail}",
                            other.name
                        )];
                        Some(record(&other.store, &entry.key, run_at, &failed).await)
                    }
                    _ => None,
                };
                CopyCheck {
                    store: other.name.clone(),
                    state,
                    detail,
                    record,
                }
            }
        };
        info!(id = %id, store = %check.store, state = check.state, "checked another store's copy");
        r.copies.push(check);
    }
    Ok(r)
}

/// Read `copy` (in store `other`) in full and compare it with the drilled copy: `same`,
/// `differs` or `intact` (when the drilled copy's own bytes were bad), with a detail line.
async fn check_copy(
    ctx: &Ctx<'_>,
    other: &NamedStore,
    copy: &catalog::SnapshotEntry,
    drilled_sha: Option<&crate::manifest::Sha256Hex>,
    first_manifest: Option<&crate::manifest::Manifest>,
    downloaded: bool,
) -> Result<(&'static str, String)> {
    let Some(m) = &copy.manifest else {
        let why = copy
            .problem
            .as_ref()
            .map_or_else(|| "manifest is unreadable".into(), ToString::to_string);
        return Ok(("differs", why));
    };
    if downloaded
        && first_manifest.is_some_and(|f| f != m)
        && drilled_sha.is_some_and(|h| h == m.stored_sha256())
    {
        return Ok((
            "differs",
            "its manifest differs from the drilled copy's (same stored data, other \
             metadata): one copy was changed"
                .into(),
        ));
    }
    if downloaded && drilled_sha.is_some_and(|h| h != m.stored_sha256()) {
        return Ok((
            "differs",
            format!(
                "its manifest names other stored data (stored sha256 {}, the drilled copy's {})",
                m.stored_sha256(),
                drilled_sha.map_or_else(String::new, ToString::to_string)
            ),
        ));
    }
    Ok(
        match SnapshotReader::new(&other.store, m, ctx.keys)
            .verify_stored()
            .await?
        {
            Ok(()) if downloaded => (
                "same",
                format!(
                    "read in full: every stored object matches the manifest's sha256 {}",
                    m.stored_sha256()
                ),
            ),
            Ok(()) => (
                "intact",
                "read in full: its stored objects match the manifest, but the drilled copy's \
                 did not, so this verdict is not about it: drill it from this store with \
                 `guardian drill --snapshot` after repairing the other (`guardian sync`)"
                    .into(),
            ),
            Err(damage) => ("differs", damage.to_string()),
        },
    )
}

/// The drills of one [`run_with_rotation`].
#[derive(Debug)]
pub struct Rotation {
    /// The drill of the newest usable snapshot.
    pub latest: DrillReport,
    /// The drill of the older snapshot whose turn it was: `None` when there is no older usable
    /// snapshot, an error when it could not run (the store failed mid-way, say).
    pub older: Option<Result<DrillReport>>,
    /// How many older usable snapshots take turns (so `older_count` drills read them all).
    pub older_count: usize,
}

/// Drill the newest usable snapshot of `db`, then the older one whose turn it is (see the
/// module doc), and record both verdicts.
///
/// # Errors
/// As [`run`], for the newest snapshot; a failure of the older one's drill is in
/// [`Rotation::older`].
#[instrument(skip_all, fields(db = %db.name))]
pub async fn run_with_rotation(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    staging_dir: &Path,
    keys: &Keys,
) -> Result<Rotation> {
    let merged = load(stores, db).await?;
    let catalog = merged.combined();
    let newest = latest(stores, db, &catalog)?;
    let turns: Vec<Turn> = catalog
        .usable()
        .map(|s| Turn {
            id: s.key.id.to_string(),
            created_at: s.created_at,
            last_drill: s.last_drill.as_ref().map(|d| d.at),
        })
        .collect();
    let older = pick_rotation(&turns, newest.key.id.as_str())
        .and_then(|t| catalog.usable().find(|s| s.key.id.as_str() == t.id));
    // Both verdicts are recorded under the time the run began: one run, one time, so that
    // `status` and the metrics judge the run as a whole (a pass of one snapshot must not hide
    // the failure of the other).
    let run_at = Utc::now();
    let ctx = Ctx {
        merged: &merged,
        db,
        staging_dir,
        keys,
    };
    let latest = drill_copies(&ctx, newest, Selection::Latest, run_at).await?;
    let older = match older {
        Some(entry) => {
            info!(id = %entry.key.id, "drilling an older snapshot in rotation");
            Some(drill_copies(&ctx, entry, Selection::Rotation, run_at).await)
        }
        None => None,
    };
    Ok(Rotation {
        latest,
        older,
        older_count: turns.len().saturating_sub(1),
    })
}

/// One usable snapshot as the rotation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// When it was last drilled (its newest drill record), if ever.
    pub last_drill: Option<DateTime<Utc>>,
}

/// The older snapshot a drill reads besides `latest`: the one whose contents were last proven
/// longest ago, by its last drill or, if it was never drilled, by the check of the backup that
/// made it; the older snapshot first on ties. A drill makes its pick the most recently proven,
/// so over K drills the K older snapshots are each read once. `None` when `latest` is the only
/// one.
///
/// Why a never-drilled snapshot counts from its creation rather than going first: with daily
/// backups and a weekly drill, new never-drilled dailies would otherwise always jump the queue,
/// and a monthly snapshot drilled once would never be read again in the year it is kept.
pub fn pick_rotation<'a>(snapshots: &'a [Turn], latest: &str) -> Option<&'a Turn> {
    snapshots
        .iter()
        .filter(|t| t.id != latest)
        .min_by_key(|t| (t.last_drill.unwrap_or(t.created_at), t.created_at, &t.id))
}

fn latest<'a>(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    catalog: &'a catalog::Catalog,
) -> Result<&'a catalog::SnapshotEntry> {
    catalog.usable().next().ok_or_else(|| {
        Error::NoGoodSnapshot(format!(
            "no usable snapshot of {} to drill in {}; take one with `guardian backup --db {}`",
            db.name,
            match stores {
                [one] => one.store.location(),
                several => crate::stores::names(several),
            },
            db.name
        ))
    })
}

#[allow(clippy::too_many_arguments)] // the one place a drill is assembled from its parts
async fn drill_one(
    named: &NamedStore,
    db: &DatabaseConfig,
    staging_dir: &Path,
    entry: &catalog::SnapshotEntry,
    selected_by: Selection,
    run_at: DateTime<Utc>,
    keys: &Keys,
) -> Result<DrillReport> {
    let store = &named.store;
    let started_at = Utc::now();
    let t0 = Instant::now();
    info!(id = %entry.key.id, "drill started");
    let mut r = DrillReport {
        format_version: RECORD_VERSION,
        guardian_version: env!("CARGO_PKG_VERSION").to_string(),
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        db: db.name.clone(),
        snapshot: entry.key.id.to_string(),
        stored_sha256: entry
            .manifest
            .as_ref()
            .map(|m| m.stored_sha256().to_string()),
        snapshot_created_at: entry.created_at,
        started_at,
        finished_at: started_at,
        seconds: 0.0,
        restore_seconds: None,
        ok: false,
        steps: Vec::new(),
        checks: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
        selected_by,
        previous_drill_at: entry.last_drill.as_ref().map(|d| d.at),
        store: named.name.clone(),
        copies: Vec::new(),
        record: Err("not recorded".into()),
    };
    match &entry.manifest {
        Some(m) => run_steps(store, m, staging_dir, keys, &mut r).await?,
        None => r.problems.push(
            entry
                .problem
                .as_ref()
                .map_or_else(|| "manifest is unreadable".into(), ToString::to_string),
        ),
    }
    r.ok = r.problems.is_empty() && r.checks.iter().all(|c| c.ok || !c.required);
    r.finished_at = Utc::now();
    r.seconds = t0.elapsed().as_secs_f64();
    if !r.ok {
        still_there(store, &entry.key).await?;
    }
    r.record = record(store, &entry.key, run_at, &r).await;
    info!(id = %entry.key.id, ok = r.ok, seconds = format_args!("{:.2}", r.seconds), "drill finished");
    Ok(r)
}

/// A failure because a concurrent prune deleted the snapshot says nothing about its data:
/// report it as an operational error and record nothing.
async fn still_there(store: &Arc<dyn Storage>, key: &SnapshotKey) -> Result<()> {
    match store.get_bytes(&key.manifest(), crate::manifest::MAX_MANIFEST_BYTES).await {
        Err(e) if e.is_not_found() => Err(Error::Gone(format!(
            "snapshot {}/{} was deleted while the drill ran (a prune?); nothing was recorded, run the drill again",
            key.db, key.id
        ))),
        _ => Ok(()),
    }
}

/// Store the report as `drill-{run_at}-{ok|failed}.json` next to the snapshot.
async fn record(
    store: &Arc<dyn Storage>,
    key: &SnapshotKey,
    run_at: DateTime<Utc>,
    r: &DrillReport,
) -> std::result::Result<String, String> {
    let rk = key.drill(run_at, r.ok);
    let mut body = serde_json::to_vec_pretty(r).expect("drill report serializes");
    body.push(b'\n');
    match store
        .put_bytes(&rk, Bytes::from(body), PutMode::Overwrite)
        .await
    {
        Ok(()) => Ok(rk.to_string()),
        Err(e) => Err(format!(
            "could not store the drill record {rk}: {}",
            crate::error::chain(&e)
        )),
    }
}

async fn run_steps(
    store: &Arc<dyn Storage>,
    m: &Manifest,
    staging_dir: &Path,
    keys: &Keys,
    r: &mut DrillReport,
) -> Result<()> {
    let scratch = Scratch::create(staging_dir, &m.db, "drill")?;
    // 1. Download, decompress, both SHA-256s.
    if !download(store, m, keys, &scratch, r).await? {
        return Ok(());
    }
    // 2-4. SQLite checks on the scratch copy, off the async threads.
    let path = scratch.path.clone();
    let results = tokio::task::spawn_blocking(move || SqliteResults::run(&path))
        .await
        .expect("drill checks do not panic");
    let downloaded = r.steps.iter().find(|s| s.name == "download");
    r.restore_seconds = downloaded.map(|d| d.seconds + results.seconds[0]);
    integrity(r, results.integrity, results.seconds[0])?;
    foreign_keys(r, results.fks, results.seconds[1])?;
    compare(r, m, results.inspection, results.seconds[2])
}

/// A private scratch folder under the staging folder holding one snapshot's rebuilt file (a
/// drill's, a diff's): the folder is removed on drop.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
    pub(crate) path: std::path::PathBuf,
    file: std::fs::File,
}

impl Scratch {
    /// A new scratch folder for `purpose` (`drill`, `diff`) of `db`, with an empty file in it.
    pub(crate) fn create(staging_dir: &Path, db: &str, purpose: &str) -> Result<Scratch> {
        std::fs::create_dir_all(staging_dir)
            .map_err(|e| Error::io("create staging folder", staging_dir, e))?;
        // Named like backup staging folders, so a later run removes it if this process dies.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}{purpose}-", crate::backup::staging_prefix(db)))
            .tempdir_in(staging_dir)
            .map_err(|e| Error::io("create scratch folder in", staging_dir, e))?;
        let path = dir.path().join("db.sqlite");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("create scratch file", &path, e))?;
        Ok(Scratch { dir, path, file })
    }

    /// The scratch folder (room for more files of the same job).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Rebuild snapshot `m` into the scratch file through the [`SnapshotReader`] (both
    /// SHA-256s proven); `Ok(Err(damage))` when its data is bad.
    pub(crate) async fn read_snapshot(
        &self,
        store: &Arc<dyn Storage>,
        m: &Manifest,
        keys: &Keys,
    ) -> Result<std::result::Result<crate::archive::Digests, crate::damage::Damage>> {
        SnapshotReader::new(store, m, keys)
            .read_into(&self.file, &self.path)
            .await
    }
}

/// Read the snapshot into the scratch file through the [`SnapshotReader`]; false (with the
/// problem recorded) when its data is bad.
async fn download(
    store: &Arc<dyn Storage>,
    m: &Manifest,
    keys: &Keys,
    scratch: &Scratch,
    r: &mut DrillReport,
) -> Result<bool> {
    let t = Instant::now();
    let fetched = scratch.read_snapshot(store, m, keys).await?;
    let secs = t.elapsed().as_secs_f64();
    match fetched {
        Ok(d) => {
            r.checks.push(check(
                "stored_sha256",
                m.stored_sha256(),
                &d.stored_sha256,
                true,
            ));
            r.checks
                .push(check("raw_sha256", &m.raw_sha256, &d.raw_sha256, true));
            r.steps.push(step(
                "download",
                true,
                secs,
                format!(
                    "{} stored, {} raw; both sha256 match the manifest",
                    crate::human::human_bytes(d.stored_len),
                    crate::human::human_bytes(d.raw_len)
                ),
            ));
            Ok(true)
        }
        Err(damage) => {
            let why = damage.to_string();
            r.checks.push(Check {
                name: "sha256".into(),
                ok: false,
                expected: format!("stored {} / raw {}", m.stored_sha256(), m.raw_sha256),
                actual: why.clone(),
                required: true,
            });
            r.steps.push(step("download", false, secs, why.clone()));
            r.problems.push(why);
            Ok(false)
        }
    }
}

/// What SQLite said about the scratch copy, and how long each step took.
struct SqliteResults {
    integrity: Result<snapshot::CheckOutcome>,
    fks: Result<Vec<String>>,
    inspection: Result<snapshot::Inspection>,
    seconds: [f64; 3],
}

impl SqliteResults {
    /// integrity_check, foreign_key_check and inspection of the file at `path` (blocking).
    fn run(path: &Path) -> SqliteResults {
        let ((integrity, t_int), (fks, t_fk)) = snapshot::integrity_and_foreign_key_check(path);
        let t = Instant::now();
        let inspection = snapshot::inspect(path);
        let t_cmp = t.elapsed().as_secs_f64();
        for p in snapshot::sidecars(path) {
            let _ = std::fs::remove_file(p);
        }
        SqliteResults {
            integrity,
            fks,
            inspection,
            seconds: [t_int, t_fk, t_cmp],
        }
    }
}

/// A SQLite result on the scratch copy: `Err(text)` when the copy's data is at fault (it is
/// damaged or not a database), the error itself when the machine is.
fn data_or_fail<T>(res: Result<T>) -> Result<std::result::Result<T, String>> {
    match res {
        Ok(v) => Ok(Ok(v)),
        Err(e) if e.is_data_error() || e.is_not_a_database() => Ok(Err(crate::error::chain(&e))),
        Err(e) => Err(e),
    }
}

fn integrity(
    r: &mut DrillReport,
    outcome: Result<snapshot::CheckOutcome>,
    seconds: f64,
) -> Result<()> {
    let integrity = data_or_fail(outcome.map(|o| match o {
        Ok(()) => "ok".to_string(),
        Err(problems) => problems.join("; "),
    }))?;
    let int_ok = matches!(&integrity, Ok(s) if s == "ok");
    let int_text = integrity.unwrap_or_else(|e| e);
    r.checks.push(Check {
        name: "integrity_check".into(),
        ok: int_ok,
        expected: "ok".into(),
        actual: int_text.clone(),
        required: true,
    });
    r.steps
        .push(step("integrity_check", int_ok, seconds, int_text.clone()));
    if !int_ok {
        r.problems
            .push(format!("PRAGMA integrity_check: {int_text}"));
    }
    Ok(())
}

fn foreign_keys(r: &mut DrillReport, fks: Result<Vec<String>>, seconds: f64) -> Result<()> {
    let (fk_ok, fk_text) = match data_or_fail(fks.map(|v| v.join("; ")))? {
        Ok(v) if v.is_empty() => (true, "no violations".to_string()),
        Ok(v) => (false, v),
        Err(e) => (false, e),
    };
    r.checks.push(Check {
        name: "foreign_key_check".into(),
        ok: fk_ok,
        expected: "no violations".into(),
        actual: fk_text.clone(),
        required: false,
    });
    r.steps
        .push(step("foreign_key_check", fk_ok, seconds, fk_text.clone()));
    if !fk_ok {
        r.warnings.push(format!(
            "PRAGMA foreign_key_check: {fk_text} (present in the source when the backup ran)"
        ));
    }
    Ok(())
}

/// Compare page size, page count, schema hash and row counts with the manifest.
fn compare(
    r: &mut DrillReport,
    m: &Manifest,
    inspection: Result<snapshot::Inspection>,
    seconds: f64,
) -> Result<()> {
    let i = match data_or_fail(inspection)? {
        Ok(i) => i,
        Err(why) => {
            r.steps.push(step("compare", false, seconds, why.clone()));
            r.problems.push(format!("inspect: {why}"));
            return Ok(());
        }
    };
    let before = r.checks.len();
    r.checks
        .push(check("page_size", m.page_size, i.page_size, true));
    r.checks
        .push(check("page_count", m.page_count, i.page_count, true));
    r.checks.push(check(
        "schema_sha256",
        &m.schema_sha256,
        &i.schema_sha256,
        true,
    ));
    let names: std::collections::BTreeSet<&String> =
        m.tables.keys().chain(i.tables.keys()).collect();
    for t in names {
        let show = |v: Option<&u64>| v.map_or("absent".to_string(), u64::to_string);
        r.checks.push(Check {
            name: format!("rows.{t}"),
            ok: m.tables.get(t) == i.tables.get(t),
            expected: show(m.tables.get(t)),
            actual: show(i.tables.get(t)),
            required: true,
        });
    }
    let bad: Vec<String> = r.checks[before..]
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: expected {}, got {}", c.name, c.expected, c.actual))
        .collect();
    let detail = if bad.is_empty() {
        format!(
            "page size, {} pages, schema and {} tables match the manifest",
            i.page_count,
            i.tables.len()
        )
    } else {
        bad.join("; ")
    };
    r.steps
        .push(step("compare", bad.is_empty(), seconds, detail));
    r.problems.extend(bad);
    Ok(())
}

fn step(name: &'static str, ok: bool, seconds: f64, detail: String) -> Step {
    Step {
        name,
        ok,
        seconds,
        detail,
    }
}

fn check<T: PartialEq + std::fmt::Display>(
    name: &str,
    expected: T,
    actual: T,
    required: bool,
) -> Check {
    Check {
        name: name.to_string(),
        ok: expected == actual,
        expected: expected.to_string(),
        actual: actual.to_string(),
        required,
    }
}
