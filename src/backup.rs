//! One backup of one database: copy → check ∥ (gzip + hash + upload) → manifest, last.
//!
//! The copy is taken into a private staging folder. Then two things run at once: the SQLite
//! check and inspection of the copy, and one streaming pass that hashes the copy, gzips it on
//! every core and uploads it. The manifest, the commit marker, is written only when both
//! succeeded; a copy that fails its check is never published (its upload is aborted or its data
//! object deleted), and earlier snapshots are never touched.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use tracing::{info, instrument};

use crate::archive;
use crate::config::{BackupConfig, DatabaseConfig};
use crate::crypto::Keys;
use crate::durable;
use crate::error::{Error, Result, SourceChange};
use crate::manifest::{
    CheckRecord, Manifest, SnapshotId, SnapshotKey, DATA_OBJECT, DATA_OBJECT_AGE, FORMAT_VERSION,
};
use crate::progress::Progress;
use crate::snapshot;
use crate::storage::{body_channel, PutMode, Storage};

/// Take one snapshot of `db` and publish it to `store`.
#[instrument(skip_all, fields(db = %db.name))]
pub async fn run(
    store: &Arc<dyn Storage>,
    db: &DatabaseConfig,
    opts: &BackupConfig,
    keys: &Keys,
) -> Result<Manifest> {
    let started = Instant::now();
    let staging_root = opts.staging_dir();
    sweep_staging(&staging_root, &db.name);
    crate::target::sweep_dead_staging(&db.path);

    let created_at = Utc::now();
    let key = SnapshotKey {
        db: db.name.clone(),
        id: SnapshotId::new(created_at),
    };
    info!(id = %key.id, source = %db.path.display(), "backup started");

    // Which file is at the path now: if it is gone or another one at the end, an operator
    // must hear of it even though the copy (through SQLite's open descriptors) is consistent.
    let source_file = file_identity(&db.path);

    // 1. The consistent copy.
    std::fs::create_dir_all(&staging_root)
        .map_err(|e| Error::io("create staging folder", &staging_root, e))?;
    let staging = tempfile::Builder::new()
        .prefix(&staging_prefix(&db.name))
        .tempdir_in(&staging_root)
        .map_err(|e| Error::io("create staging folder in", &staging_root, e))?;
    let copy_path = staging.path().join("db.sqlite");
    let journal_mode = {
        let src = db.path.clone();
        let dst = copy_path.clone();
        let size = std::fs::metadata(&src).map(|m| m.len()).ok();
        let progress = Progress::start("copy", &db.name, size);
        let ticker = FileSizeTicker::start(dst.clone(), &progress);
        let mode = tokio::task::spawn_blocking(move || snapshot::copy_live(&src, &dst))
            .await
            .expect("copy does not panic");
        drop(ticker);
        let mode = mode?;
        progress.finish(std::fs::metadata(&copy_path).map(|m| m.len()).unwrap_or(0));
        mode
    };

    // 2. Check ∥ compress + upload.
    let raw_len = std::fs::metadata(&copy_path)
        .map_err(|e| Error::io("stat", &copy_path, e))?
        .len();
    let check_kind = db.check(opts);
    let level = opts.compression_level();
    let threads = opts.threads();
    let (tx, rx) = body_channel();
    let encryptor = keys.encryptor();
    let object = if encryptor.is_some() {
        DATA_OBJECT_AGE
    } else {
        DATA_OBJECT
    };
    let check_failed = Arc::new(AtomicBool::new(false));
    let pipeline = {
        let copy_path = copy_path.clone();
        let check_failed = Arc::clone(&check_failed);
        let name = db.name.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                let checker = s.spawn(|| {
                    let outcome = snapshot::run_check(&copy_path, check_kind);
                    if !matches!(outcome, Ok(Ok(()))) {
                        check_failed.store(true, Ordering::SeqCst);
                    }
                    let inspection = snapshot::inspect(&copy_path);
                    (outcome, inspection)
                });
                let progress = Progress::start("compress+upload", &name, Some(raw_len));
                let digests = File::open(&copy_path)
                    .map_err(|e| Error::io("open copy", &copy_path, e))
                    .and_then(|f| {
                        archive::compress(
                            f,
                            level,
                            threads,
                            &|n| progress.set(n),
                            encryptor,
                            |chunk: Bytes| {
                                if check_failed.load(Ordering::SeqCst) {
                                    return Err(std::io::Error::other("the copy failed its check"));
                                }
                                tx.blocking_send(Ok(chunk))
                                    .map_err(|_| std::io::Error::other("upload stopped"))
                            },
                        )
                        .map_err(|e| Error::io("compress copy", &copy_path, e))
                    });
                match &digests {
                    Ok(d) => progress.finish(d.raw_len),
                    // Tell the store the body is incomplete, so that nothing is published.
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    }
                }
                drop(tx);
                let (outcome, inspection) = checker.join().expect("checker does not panic");
                (digests, outcome, inspection)
            })
        })
    };
    let data_key = key.object(object);
    let (upload, joined) = tokio::join!(store.put_stream(&data_key, rx, Some(raw_len)), pipeline);
    let (digests, outcome, inspection) = joined.expect("backup pipeline does not panic");

    // The check decides first: a bad copy is a data error even if the upload also failed.
    // Whatever the check's failure (problems found, or SQLite could not even read the copy),
    // an upload that completed before it is deleted: nothing was published.
    if !matches!(outcome, Ok(Ok(()))) && upload.is_ok() {
        if let Err(e) = store.delete(&data_key).await {
            tracing::warn!(key = %data_key, error = %crate::error::chain(&e), "could not delete the data object of a rejected copy");
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
    // A failed upload makes the compressor fail too ("upload stopped"): report the root cause.
    let (digests, stored_len) = match (digests, upload) {
        (Ok(d), Ok(n)) => (d, n),
        (_, Err(upload)) => return Err(upload.into()),
        (Err(e), Ok(_)) => return Err(e),
    };
    if stored_len != digests.stored_len {
        return Err(Error::Damaged {
            id: key.id.to_string(),
            detail: format!(
                "store took {stored_len} bytes, compressor produced {}",
                digests.stored_len
            ),
        });
    }
    let inspection = inspection?;
    if inspection.page_size * inspection.page_count != digests.raw_len {
        return Err(Error::Integrity {
            what: format!("the copy of {}", db.name),
            detail: format!(
                "copy is {} bytes but has {} pages of {}",
                digests.raw_len, inspection.page_count, inspection.page_size
            ),
        });
    }

    // 3. The manifest, last: from here on the snapshot exists.
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        guardian_version: env!("CARGO_PKG_VERSION").to_string(),
        db: db.name.clone(),
        id: key.id.clone(),
        created_at,
        source_path: db.path.display().to_string(),
        sqlite_version: inspection.sqlite_version,
        page_size: inspection.page_size,
        page_count: inspection.page_count,
        journal_mode,
        raw_len: digests.raw_len,
        raw_sha256: digests.raw_sha256,
        stored_len: digests.stored_len,
        stored_sha256: digests.stored_sha256,
        object: object.to_string(),
        compression: "gzip".into(),
        encryption: keys.encrypts().then(|| "age".to_string()),
        compression_level: level,
        tables: inspection.tables,
        schema_sha256: inspection.schema_sha256,
        check: CheckRecord {
            kind: check_kind.pragma().to_string(),
            result: "ok".into(),
        },
    };
    store
        .put_bytes(
            &key.manifest(),
            Bytes::from(manifest.to_json()),
            PutMode::IfAbsent,
        )
        .await?;
    drop(staging);
    // Clean up after interrupted runs once this one is safe, so that a store that is down
    // fails the backup after one round of retries, not two.
    if let Err(e) = store.sweep(&crate::manifest::db_prefix(&db.name)).await {
        tracing::warn!(error = %crate::error::chain(&e), "could not clean leftovers of interrupted uploads");
    }
    info!(
        id = %key.id,
        raw_bytes = manifest.raw_len,
        stored_bytes = manifest.stored_len,
        seconds = format_args!("{:.2}", started.elapsed().as_secs_f64()),
        "backup finished"
    );
    if let Some(how) = source_file.and_then(|before| source_change(&db.path, before)) {
        return Err(Error::SourceGone {
            path: db.path.clone(),
            id: manifest.id.to_string(),
            how,
        });
    }
    Ok(manifest)
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
