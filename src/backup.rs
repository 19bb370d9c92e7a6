//! One backup of one database: copy → check ∥ (gzip + hash + upload) → manifest, last.
//!
//! The copy is taken into a private staging folder. Then two things run at once: the SQLite
//! check and inspection of the copy, and the [`SnapshotWriter`]'s one streaming pass that
//! hashes the copy, gzips it on every core and uploads it. The manifest, the commit marker, is written only when both
//! succeeded; a copy that fails its check is never published (its upload is aborted or its data
//! object deleted), and earlier snapshots are never touched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tracing::{info, instrument};

use crate::config::{BackupConfig, DatabaseConfig};
use crate::crypto::Keys;
use crate::durable;
use crate::error::{Error, Result, SourceChange};
use crate::incremental::Attempt;
use crate::layout::{SnapshotWriter, Written};
use crate::manifest::{CheckRecord, Manifest, SnapshotId, SnapshotKey, FORMAT_VERSION};
use crate::progress::Progress;
use crate::snapshot;
use crate::storage::NamedStore;

/// What a backup published.
#[derive(Debug)]
pub struct Backup {
    pub manifest: Manifest,
    /// Why a full was taken when an incremental was asked for (one line).
    pub full_because: Option<String>,
}

/// Take one snapshot of `db` and publish it to every store of `stores` (the database's, in
/// config order): an incremental when `incremental` and one is possible (see `incremental`),
/// else a full. A snapshot that reached some stores but not all is kept where it landed, and
/// is an [`Error::StoresMissed`].
#[instrument(skip_all, fields(db = %db.name))]
pub async fn run(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    opts: &BackupConfig,
    keys: &Keys,
    incremental: bool,
) -> Result<Backup> {
    let started = Instant::now();
    let staging_root = opts.staging_dir();
    sweep_staging(&staging_root, &db.name);
    crate::target::sweep_dead_staging(&db.path);

    let created_at = Utc::now();
    let key = SnapshotKey {
        db: db.name.clone(),
        id: SnapshotId::new(created_at),
    };
    info!(id = %key.id, source = %db.path.display(), incremental, "backup started");

    // Which file is at the path now: if it is gone or another one at the end, an operator
    // must hear of it even though the copy (through SQLite's open descriptors) is consistent.
    let source_file = file_identity(&db.path);

    let mut full_because = None;
    if incremental {
        match crate::incremental::run(stores, db, opts, keys, key.clone(), created_at).await? {
            Attempt::Done(manifest, writer) => {
                return finish(&writer, db, *manifest, None, started, source_file).await
            }
            Attempt::Full(why) => {
                tracing::info!(reason = %why, "taking a full snapshot instead of an incremental");
                full_because = Some(why);
            }
        }
    }

    // 1. The consistent copy.
    let copy = take_copy(db, &staging_root).await?;

    // 2. Check ∥ compress + upload.
    let writer = SnapshotWriter::new(stores, key.clone(), opts, keys);
    let proven = check_and_write(db, opts, &copy, &writer).await?;

    // 3. The manifest, last: from here on the snapshot exists.
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        guardian_version: env!("CARGO_PKG_VERSION").to_string(),
        db: db.name.clone(),
        id: key.id.clone(),
        created_at,
        source_path: db.path.display().to_string(),
        sqlite_version: proven.inspection.sqlite_version,
        page_size: proven.inspection.page_size,
        page_count: proven.inspection.page_count,
        journal_mode: copy.journal_mode.clone(),
        raw_len: proven.written.raw_len,
        raw_sha256: proven.written.raw_sha256,
        data: proven.written.data,
        tables: proven.inspection.tables,
        schema_sha256: proven.inspection.schema_sha256,
        check: CheckRecord {
            kind: db.check(opts).pragma().to_string(),
            result: "ok".into(),
        },
    };
    writer.publish(&manifest).await?;
    if db.incremental.is_some() || incremental {
        // The page digests, for the next incremental of each store that took the full.
        for store in writer.live_stores() {
            let cache = crate::incremental::cache_dir(opts, store.as_ref());
            let (m, path) = (manifest.clone(), copy.path.clone());
            let _ = tokio::task::spawn_blocking(move || {
                crate::incremental::cache_full(&cache, &m, &path)
            })
            .await;
        }
    }
    drop(copy);
    finish(&writer, db, manifest, full_because, started, source_file).await
}

/// After a snapshot is published: sweep leftovers of interrupted uploads, log, and say when
/// the source file was replaced or removed meanwhile, or when some stores missed it.
async fn finish(
    writer: &SnapshotWriter,
    db: &DatabaseConfig,
    manifest: Manifest,
    full_because: Option<String>,
    started: Instant,
    source_file: Option<(u64, u64)>,
) -> Result<Backup> {
    let key = manifest.key();
    // Clean up after interrupted runs once this one is safe, so that a store that is down
    // fails the backup after one round of retries, not two.
    for store in writer.live_stores() {
        if let Err(e) = store.sweep(&crate::manifest::db_prefix(&db.name)).await {
            tracing::warn!(store = %store.location(), error = %crate::error::chain(&e), "could not clean leftovers of interrupted uploads");
        }
    }
    info!(
        id = %key.id,
        kind = manifest.kind().as_str(),
        raw_bytes = manifest.raw_len,
        stored_bytes = manifest.own_stored_len(),
        seconds = format_args!("{:.2}", started.elapsed().as_secs_f64()),
        stores = %writer.landed().join(","),
        "backup finished"
    );
    if let Some(how) = source_file.and_then(|before| source_change(&db.path, before)) {
        return Err(Error::SourceGone {
            path: db.path.clone(),
            id: manifest.id.to_string(),
            how,
        });
    }
    let missed = writer.missed();
    if !missed.is_empty() {
        return Err(Error::StoresMissed {
            db: db.name.clone(),
            id: manifest.id.to_string(),
            landed: writer.landed(),
            missed,
        });
    }
    Ok(Backup {
        manifest,
        full_because,
    })
}

/// The consistent copy of a database in its private staging folder (removed on drop).
struct Copy {
    /// Holds the staging folder.
    _staging: tempfile::TempDir,
    path: PathBuf,
    /// The source's journal mode.
    journal_mode: String,
}

/// Take the online copy of `db` into a new staging folder under `staging_root`.
async fn take_copy(db: &DatabaseConfig, staging_root: &Path) -> Result<Copy> {
    std::fs::create_dir_all(staging_root)
        .map_err(|e| Error::io("create staging folder", staging_root, e))?;
    let staging = tempfile::Builder::new()
        .prefix(&staging_prefix(&db.name))
        .tempdir_in(staging_root)
        .map_err(|e| Error::io("create staging folder in", staging_root, e))?;
    let copy_path = staging.path().join("db.sqlite");
    let src = db.path.clone();
    let dst = copy_path.clone();
    let size = std::fs::metadata(&src).map(|m| m.len()).ok();
    let progress = Progress::start("copy", &db.name, size);
    let ticker = FileSizeTicker::start(dst.clone(), &progress);
    let mode = tokio::task::spawn_blocking(move || snapshot::copy_live(&src, &dst))
        .await
        .expect("copy does not panic");
    drop(ticker);
    let journal_mode = mode?;
    progress.finish(std::fs::metadata(&copy_path).map(|m| m.len()).unwrap_or(0));
    Ok(Copy {
        _staging: staging,
        path: copy_path,
        journal_mode,
    })
}

/// A copy that passed its check and whose data is stored.
struct Proven {
    written: Written,
    inspection: snapshot::Inspection,
}

/// Run the SQLite check (and inspection) of the copy while its data is written; a copy that
/// fails its check stops the upload, and whatever was stored of it is removed.
async fn check_and_write(
    db: &DatabaseConfig,
    opts: &BackupConfig,
    copy: &Copy,
    writer: &SnapshotWriter,
) -> Result<Proven> {
    let raw_len = std::fs::metadata(&copy.path)
        .map_err(|e| Error::io("stat", &copy.path, e))?
        .len();
    let check_kind = db.check(opts);
    let check_failed = Arc::new(AtomicBool::new(false));
    let checker = {
        let (path, check_failed) = (copy.path.clone(), Arc::clone(&check_failed));
        tokio::task::spawn_blocking(move || {
            let outcome = snapshot::run_check(&path, check_kind);
            if !matches!(outcome, Ok(Ok(()))) {
                check_failed.store(true, Ordering::SeqCst);
            }
            (outcome, snapshot::inspect(&path))
        })
    };
    let written = writer.write(&copy.path, raw_len, &check_failed).await;
    let (outcome, inspection) = checker.await.expect("checker does not panic");

    // The check decides first: a bad copy is a data error even if the upload also failed.
    // Whatever the check's failure (problems found, or SQLite could not even read the copy),
    // data that was stored before it is deleted: nothing was published.
    if !matches!(outcome, Ok(Ok(()))) {
        if let Ok(w) = &written {
            writer.discard(&w.data).await;
        }
    }
    // SQLite failing to read the copy at all ("database disk image is malformed", which
    // integrity_check raises where quick_check lists problems) is damage too.
    let outcome = match outcome {
        Err(e) if e.is_data_error() => Err(vec![crate::error::chain(&e)]),
        other => other?,
    };
    if let Err(problems) = outcome {
        return Err(Error::Integrity {
            what: format!("the copy of {} ({})", db.name, db.path.display()),
            detail: format!(
                "PRAGMA {} reported: {}; the source database is damaged, no snapshot was published",
                check_kind.pragma(),
                problems.join("; ")
            ),
        });
    }
    let written = written?;
    let inspection = inspection?;
    if inspection.page_size * inspection.page_count != written.raw_len {
        return Err(Error::Integrity {
            what: format!("the copy of {}", db.name),
            detail: format!(
                "copy is {} bytes but has {} pages of {}",
                written.raw_len, inspection.page_count, inspection.page_size
            ),
        });
    }
    Ok(Proven {
        written,
        inspection,
    })
}

/// The device and inode of the file at `path`, if there is one.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| identity(&m))
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// What happened to the file that was at `path` (identity `before`), if anything.
fn source_change(path: &Path, before: (u64, u64)) -> Option<SourceChange> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(SourceChange::DeletedOrRenamed),
        // Unreadable metadata says nothing about the file: the copy succeeded.
        Err(_) => None,
        Ok(m) => (identity(&m) != before).then_some(SourceChange::Replaced),
    }
}

/// Staging folders are named `guardian-{db}-{pid}-…`, so a later run can tell a dead run's
/// leftovers from a live one's.
pub(crate) fn staging_prefix(db: &str) -> String {
    format!("guardian-{db}-{}-", std::process::id())
}

/// Remove staging folders left by runs of this database whose process is gone (SIGKILL,
/// power loss). Folders of live processes are left alone. Failures are logged, never fatal.
pub fn sweep_staging(root: &Path, db: &str) {
    for path in durable::dead_leftovers(root, &format!("guardian-{db}-")) {
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed staging folder of an interrupted run")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove stale staging folder")
            }
        }
    }
}

/// Reports the growing size of a file to a [`Progress`] while a step that gives no progress of
/// its own (the one-step SQLite copy) runs.
struct FileSizeTicker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl FileSizeTicker {
    fn start(path: PathBuf, progress: &Progress) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let bar = progress.clone_bar();
        let handle = bar.map(|bar| {
            std::thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::metadata(&path) {
                        bar.set_position(m.len());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            })
        });
        FileSizeTicker { stop, handle }
    }
}

impl Drop for FileSizeTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
