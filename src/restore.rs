//! Restore: pick a snapshot, prove it good, and swap it into place without losing anything.
//!
//! A candidate is downloaded straight into a staging file in the target's folder while both
//! SHA-256s are computed; then SQLite checks the staged file (`integrity_check`, or
//! `quick_check` for a snapshot a drill already verified byte for byte). Only then is anything
//! touched: the old database is hard-linked aside, its `-wal`/`-shm`/`-journal` are renamed
//! aside with it (a stale `-wal` next to a restored file would corrupt it), the staged file is
//! renamed over the target, and the folder is fsynced. Nothing is ever deleted.
//!
//! If a candidate's *data* is bad, the next older one is tried and the skip is reported. An
//! operational error (store unreachable, disk full) stops the restore: an older snapshot would
//! not fix it.
//!
//! Several stores (`stores.rs`): the candidates are the snapshots of every store of the
//! database that can be read (a store that cannot is reported and left out). A candidate is
//! read from the stores that hold a good copy of it, in config order: a copy that fails its
//! checks, or whose store fails while it is read, is reported and the next store's copy is
//! tried. Only when every copy's data is bad is the next older snapshot tried; when a copy
//! could not be read for an operational reason and no other copy was good, the restore stops
//! with that error, as with one store. The report names the store the restored bytes came
//! from.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{info, instrument, warn};

use crate::catalog::{self, SnapshotEntry, SnapshotStatus};
use crate::config::{CheckKind, DatabaseConfig};
use crate::crypto::Keys;
use crate::damage::Damage;
use crate::durable::{self, TempGuard};
use crate::error::{Error, Result};
use crate::layout::SnapshotReader;
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::snapshot;
use crate::storage::{NamedStore, Storage};
use crate::stores::Merged;
use crate::target;

/// Which snapshot to restore.
#[derive(Debug, Clone)]
pub enum Selector {
    /// The newest good one.
    Latest,
    /// This id (or unique id prefix), and no other.
    Snapshot(String),
    /// The newest good one taken strictly before this time.
    Before(DateTime<Utc>),
}

/// Which SQLite check a restore runs on the restored bytes before it swaps them in (the
/// SHA-256 checks always run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreCheck {
    /// `PRAGMA integrity_check` (the default, except for a drill-verified snapshot).
    Integrity,
    /// `PRAGMA quick_check`: accepts a database whose only damage is an index out of step
    /// with its table (which `REINDEX` fixes).
    Quick,
    /// No SQLite check: the bytes are the ones that were backed up, whatever they hold.
    None,
}

impl RestoreCheck {
    /// The pragma to run, if any.
    pub fn kind(self) -> Option<CheckKind> {
        match self {
            RestoreCheck::Integrity => Some(CheckKind::IntegrityCheck),
            RestoreCheck::Quick => Some(CheckKind::QuickCheck),
            RestoreCheck::None => None,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            RestoreCheck::Integrity => "integrity",
            RestoreCheck::Quick => "quick",
            RestoreCheck::None => "none",
        }
    }
}

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub selector: Selector,
    /// Target file; default: the database's configured path.
    pub to: Option<PathBuf>,
    /// Replace a database that another process has open.
    pub force: bool,
    /// Say what would happen; write nothing.
    pub dry_run: bool,
    /// Keys to decrypt encrypted snapshots with.
    pub keys: Keys,
    /// Folders a restore never writes into (the local store): a target inside one is refused.
    pub protected: Vec<PathBuf>,
    /// The SQLite check to run; `None`: `integrity_check`, or `quick_check` for a snapshot a
    /// drill verified.
    pub check: Option<RestoreCheck>,
}

/// What a restore did (or, with `dry_run`, would do).
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub db: String,
    pub manifest: Manifest,
    pub target: PathBuf,
    /// The check that passed on the restored bytes (`None` for a dry run, or `--check none`).
    pub check: Option<CheckKind>,
    /// Where the previous database and its sidecars went.
    pub moved_aside: Vec<PathBuf>,
    /// Newer candidates that were skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Who held the target open when `--force` replaced it.
    pub forced_over: Option<String>,
    /// When newer snapshots were skipped only because the SQLite check failed (their bytes
    /// match their checksums): the command that restores the newest of them anyway, which
    /// holds more recent data than the one restored (e.g. an index `REINDEX` can rebuild).
    pub newer_rescue: Option<String>,
    pub dry_run: bool,
    /// How long this restore takes (or took), from the last passed drill's measured restore
    /// time scaled to this snapshot's size; `None` when no drill has passed.
    pub estimate: Option<crate::rto::Estimate>,
    /// The store the restored bytes came from (or would, for a dry run).
    pub store: NamedStore,
    /// Copies passed over for another store's copy: (store, snapshot id, why).
    pub copies_skipped: Vec<(String, String, String)>,
    /// Stores of the database that could not be read at all: (store, why).
    pub stores_unreadable: Vec<(String, String)>,
}

/// Staging files this process's restores have created and not yet renamed into place: what a
/// signal must remove (see [`run_interruptible`]).
static STAGING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn staging_registry() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    STAGING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Remove every staging file (and its `-wal`/`-shm`/`-journal`) of this process's restores
/// that was not renamed into place (dropping the restore has usually removed the file itself
/// already); returns those that are gone now. For an interrupted restore, and once more just
/// before the process exits, after blocking work that was abandoned may have re-created a
/// sidecar.
pub fn remove_interrupted_staging() -> Vec<PathBuf> {
    let paths = std::mem::take(&mut *staging_registry());
    let mut removed = Vec::new();
    for p in paths {
        let _ = fs::remove_file(&p);
        remove_sidecars(&p);
        if fs::symlink_metadata(&p).is_err() {
            removed.push(p);
        }
    }
    removed
}

/// [`run`], unless SIGINT, SIGTERM or SIGHUP comes first: then the restore is abandoned before
/// it touches the target (the swap itself is never interrupted: it has no await point), its
/// staging file is removed, and the error says so.
///
/// # Errors
/// Those of [`run`]; [`Error::Cancelled`] (exit 2) on a signal.
pub async fn run_interruptible(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let interrupted = crate::service::first_interrupt()?;
    let sig = tokio::select! {
        r = run(stores, db, opts) => return r,
        sig = interrupted => sig,
    };
    let removed = remove_interrupted_staging();
    let target = opts.to.as_deref().unwrap_or(&db.path);
    Err(Error::Cancelled(format!(
        "restore of {} to {} interrupted by {sig}; the target was not changed{}",
        db.name,
        target.display(),
        match removed.as_slice() {
            [] => String::new(),
            files => format!(
                " and the staging file {} was removed",
                files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    )))
}

/// A candidate snapshot's verification failed because of its data; try the next one.
/// `rescue` is the weaker check its bytes do pass, when only the SQLite check failed.
struct Skip {
    why: Damage,
    rescue: Option<RestoreCheck>,
}

impl Skip {
    fn data(why: Damage) -> Skip {
        Skip { why, rescue: None }
    }
}

/// Restore a snapshot of `db` from its `stores` (config order): check the target, select the
/// candidates over every store that can be read, then stage (read, verify, SQLite check) one
/// copy after another until one is good, swap it into place and record the proof in the
/// store it came from.
#[instrument(skip_all, fields(db = %db.name))]
pub async fn run(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let target = opts.to.clone().unwrap_or_else(|| db.path.clone());
    let holder = check_target(&target, opts)?;
    let merged = Merged::load(stores, &db.name).await.require_readable()?;
    let stores_unreadable: Vec<(String, String)> = merged
        .unreadable()
        .into_iter()
        .map(|(s, e)| (s.name.clone(), crate::error::chain(e)))
        .collect();
    for (name, why) in &stores_unreadable {
        warn!(store = %name, error = %why, "this store could not be read; restoring from the others");
    }
    let catalog = merged.combined();
    let (candidates, mut skipped) = select(&catalog, &opts.selector)?;
    let mut proven = None;
    for sc in &merged.stores {
        if let Ok(c) = &sc.catalog {
            proven = crate::rto::proven(&sc.store.store, c).await;
            if proven.is_some() {
                break;
            }
        }
    }
    let several = stores.len() > 1;
    let mut copies_skipped: Vec<(String, String, String)> = Vec::new();
    // The newest snapshot whose only fault is the SQLite check, and a check it passes.
    let mut rescue: Option<(String, RestoreCheck)> = None;
    let named = matches!(opts.selector, Selector::Snapshot(_));
    for cand in candidates {
        let id = cand.key.id.to_string();
        // The good copies, in config order; a snapshot named on the command line with no good
        // copy is tried as one store would (its damage is the answer, or a weaker check).
        let mut holders = merged.holders(&id, true);
        if holders.is_empty() {
            holders = merged.holders(&id, false);
        }
        // Why each copy of this candidate failed: its data (the first, for the skip and the
        // rescue), or its store (the first, which stops the restore if no copy is good).
        let mut bad_data: Vec<(String, Skip)> = Vec::new();
        let mut failed_store: Option<(String, Error)> = None;
        for (store, entry) in holders {
            let Some(manifest) = usable_manifest(&entry, opts, named, &mut skipped)? else {
                continue;
            };
            let check = match opts.check {
                Some(c) => c.kind(),
                // A drill proved these exact bytes (same SHA-256) pass integrity_check.
                None if entry.status == SnapshotStatus::Verified => Some(CheckKind::QuickCheck),
                None => Some(CheckKind::IntegrityCheck),
            };
            let estimate = proven.as_ref().map(|p| p.estimate(manifest.raw_len, check));
            if opts.dry_run {
                return Ok(RestoreReport {
                    db: db.name.clone(),
                    manifest,
                    moved_aside: existing_files(&target),
                    target,
                    check: None,
                    skipped,
                    forced_over: holder,
                    newer_rescue: None,
                    dry_run: true,
                    estimate,
                    store,
                    copies_skipped,
                    stores_unreadable,
                });
            }
            if let Some(e) = &estimate {
                crate::progress::note(&db.name, &format!("restoring {}: {e}", manifest.id));
            }
            let check_eta = crate::rto::check_duration(estimate.as_ref());
            let staged = match stage(
                &store.store,
                &manifest,
                &target,
                check,
                check_eta,
                &opts.keys,
                db.mode(),
            )
            .await
            {
                Ok(staged) => staged,
                // The store failed while the copy was read: another store's copy may do.
                Err(e @ Error::Storage(_)) if several => {
                    let why = crate::error::chain(&e);
                    warn!(store = %store.name, id = %manifest.id, error = %why, "could not read this store's copy; trying another store's");
                    copies_skipped.push((store.name.clone(), id.clone(), why));
                    failed_store.get_or_insert((store.name.clone(), e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match staged {
                Err(skip) => {
                    warn!(store = %store.name, id = %manifest.id, reason = %skip.why, "this copy failed verification; trying another copy or an older snapshot");
                    if several {
                        copies_skipped.push((store.name.clone(), id.clone(), skip.why.to_string()));
                    }
                    bad_data.push((store.name.clone(), skip));
                }
                Ok(staged) => {
                    // The target may have been opened while we downloaded: look again.
                    if !opts.force {
                        if let Some(who) = target::in_use(&target) {
                            return Err(Error::InUse(format!(
                                "restore target {} became in use during the restore ({who}); nothing was replaced",
                                target.display()
                            )));
                        }
                    }
                    let moved_aside = swap_into_place(staged, &target)?;
                    info!(id = %manifest.id, store = %store.name, target = %target.display(), "restore finished");
                    record(&store.store, &entry, &manifest, check).await;
                    // A snapshot that was needed is not deleted from any store: take back a
                    // prune's mark on the other stores' copies too.
                    for (other, e) in merged.holders(&id, false) {
                        if other.name == store.name || e.marked_at.is_none() {
                            continue;
                        }
                        if let Err(err) = other.store.delete(&e.key.tombstone()).await {
                            warn!(store = %other.name, id = %id, error = %crate::error::chain(&err), "could not remove the deletion mark of the restored snapshot in this store");
                        }
                    }
                    return Ok(RestoreReport {
                        db: db.name.clone(),
                        manifest,
                        target,
                        check,
                        moved_aside,
                        skipped,
                        forced_over: holder,
                        newer_rescue: rescue
                            .map(|(id, c)| rescue_command(&db.name, &id, c, opts.to.as_deref())),
                        dry_run: false,
                        estimate,
                        store,
                        copies_skipped,
                        stores_unreadable,
                    });
                }
            }
        }
        // No copy of this candidate was good.
        if let Some((store, e)) = failed_store {
            // An older snapshot would not fix a store that fails: stop, as with one store.
            return Err(Error::InStore {
                store,
                source: Box::new(e),
            });
        }
        let Some((_, first)) = bad_data.first() else {
            continue;
        };
        if named {
            let (
                _,
                Skip {
                    why,
                    rescue: weaker,
                },
            ) = bad_data.swap_remove(0);
            return Err(Error::Damaged {
                id,
                damage: why,
                remedy: weaker.map(|c| {
                    format!(
                        "to restore it anyway (the SHA-256 checks still run): {}",
                        rescue_command(&db.name, &cand.key.id.to_string(), c, opts.to.as_deref())
                    )
                }),
            });
        }
        if let (None, Some(c)) = (&rescue, first.rescue) {
            rescue = Some((id.clone(), c));
        }
        let why = if bad_data.len() == 1 {
            first.why.to_string()
        } else {
            bad_data
                .iter()
                .map(|(store, skip)| format!("its copy in {store}: {}", skip.why))
                .collect::<Vec<_>>()
                .join("; ")
        };
        skipped.push((id, why));
    }
    let mut msg = no_good_snapshot(&catalog, db, opts, &skipped, rescue);
    if !stores_unreadable.is_empty() {
        msg.push_str(&format!(
            "; stores that could not be read: {}",
            stores_unreadable
                .iter()
                .map(|(s, why)| format!("{s} ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Err(Error::NoGoodSnapshot(msg))
}

/// Refuse a target that is not a file guardian may replace, or that another process has open
/// (unless `--force`); returns who holds it open. Sweeps dead staging files of earlier
/// restores unless this is a dry run.
fn check_target(target: &Path, opts: &RestoreOptions) -> Result<Option<String>> {
    // Before anything opens it: a FIFO would block the open, a folder would be moved aside.
    target::check(target, &opts.protected)?;
    let holder = target::in_use(target);
    if let Some(who) = &holder {
        if !opts.force {
            let refusal = format!(
                "restore target {} is in use ({who}); stop the application first, or pass --force to replace it anyway",
                target.display()
            );
            return Err(Error::InUse(if opts.dry_run {
                format!("dry run: would refuse: {refusal}")
            } else {
                refusal
            }));
        }
        if !opts.dry_run {
            warn!(target = %target.display(), holder = %who, "replacing a database that is in use (--force); restart the process that holds it");
        }
    }
    if !opts.dry_run {
        target::sweep_dead_staging(target);
    }
    Ok(holder)
}

/// The candidates `sel` picks, newest first, and the newer snapshots it passes over (skewed
/// clocks, failed ones) with the reason.
pub(crate) fn select<'a>(
    catalog: &'a catalog::Catalog,
    sel: &Selector,
) -> Result<(Vec<&'a SnapshotEntry>, Skipped)> {
    let candidates: Vec<&SnapshotEntry> = match sel {
        Selector::Latest => catalog.usable().collect(),
        Selector::Before(t) => catalog.usable().filter(|s| s.created_at < *t).collect(),
        Selector::Snapshot(id) => vec![catalog.find(id)?],
    };
    let mut skipped: Skipped = Vec::new();
    if let Selector::Latest | Selector::Before(_) = sel {
        for s in catalog.snapshots.iter().filter(|s| s.skewed) {
            skipped.push((
                s.key.id.to_string(),
                format!(
                    "dated {}, ahead of this host's clock (clock skew); restore it only by name with --snapshot {}",
                    crate::human::rfc3339(s.created_at),
                    s.key.id
                ),
            ));
        }
        for s in catalog
            .snapshots
            .iter()
            .filter(|s| s.status == SnapshotStatus::Failed && !s.skewed)
        {
            if candidates
                .first()
                .is_none_or(|c| s.created_at > c.created_at)
            {
                skipped.push((
                    s.key.id.to_string(),
                    s.problem
                        .as_ref()
                        .map_or_else(|| "failed".into(), ToString::to_string),
                ));
            }
        }
    }
    Ok((candidates, skipped))
}

/// Snapshots passed over, newest first: (id, why).
pub(crate) type Skipped = Vec<(String, String)>;

/// The manifest of `cand` if a restore may try it; otherwise the reason goes to `skipped`
/// (`Ok(None)`), or, for a snapshot named on the command line, is the error.
fn usable_manifest(
    cand: &SnapshotEntry,
    opts: &RestoreOptions,
    named: bool,
    skipped: &mut Vec<(String, String)>,
) -> Result<Option<Manifest>> {
    // A snapshot is failed exactly when the catalog found a problem with it.
    match (&cand.manifest, &cand.problem) {
        (Some(m), None) => Ok(Some(m.clone())),
        // Named with a weaker check than a drill used: the operator asked for it, and the
        // SHA-256 checks still run.
        (Some(m), Some(_)) if named && opts.check.is_some_and(|c| c != RestoreCheck::Integrity) => {
            Ok(Some(m.clone()))
        }
        (_, problem) => {
            let why = problem.clone().unwrap_or_else(|| {
                Damage::from(crate::manifest::ManifestError::Invalid(
                    "manifest is unreadable".into(),
                ))
            });
            if named {
                return Err(Error::Damaged {
                    id: cand.key.id.to_string(),
                    damage: why,
                    remedy: None,
                });
            }
            skipped.push((cand.key.id.to_string(), why.to_string()));
            Ok(None)
        }
    }
}

/// The message when no candidate was good: what was skipped and why, and the command that
/// restores the newest one anyway when a weaker check would take it.
fn no_good_snapshot(
    catalog: &catalog::Catalog,
    db: &DatabaseConfig,
    opts: &RestoreOptions,
    skipped: &[(String, String)],
    rescue: Option<(String, RestoreCheck)>,
) -> String {
    let mut msg = no_snapshot_message(&db.name, &opts.selector, skipped);
    match rescue {
        Some((id, c)) => msg.push_str(&format!(
            "; to restore the newest of them anyway (the SHA-256 checks still run; then run REINDEX or .recover on it): {}",
            rescue_command(&db.name, &id, c, opts.to.as_deref())
        )),
        // Not tried because a drill failed it: the drill's failure may be the SQLite check
        // alone, which a restore without it gets past.
        None if opts.check != Some(RestoreCheck::None) => {
            if let Some(s) = catalog.snapshots.iter().find(|s| {
                !s.skewed && s.manifest.is_some() && s.last_drill.as_ref().is_some_and(|d| !d.ok)
            }) {
                msg.push_str(&format!(
                    "; to try the newest one a drill failed anyway (the SHA-256 checks still run): {}",
                    rescue_command(&db.name, s.key.id.as_str(), RestoreCheck::None, opts.to.as_deref())
                ));
            }
        }
        None => {}
    }
    msg
}

/// The exact command that restores snapshot `id` with the weaker `check`.
fn rescue_command(db: &str, id: &str, check: RestoreCheck, to: Option<&Path>) -> String {
    let to = to.map_or(String::new(), |p| format!(" --to {}", p.display()));
    format!(
        "guardian restore --db {db} --snapshot {id} --check {}{to}",
        check.flag()
    )
}

/// After a restore that passed `integrity_check`: store that proof next to the snapshot (so
/// retention may count on it) and take back a prune's mark, if any: a snapshot that was
/// needed is not deleted. Failures are warnings; the restore itself is done.
async fn record(
    store: &Arc<dyn Storage>,
    entry: &SnapshotEntry,
    m: &Manifest,
    check: Option<CheckKind>,
) {
    if entry.marked_at.is_some() {
        match store.delete(&entry.key.tombstone()).await {
            Ok(()) => {
                info!(id = %m.id, "the snapshot was marked for deletion; the mark is removed")
            }
            Err(e) => {
                warn!(id = %m.id, error = %crate::error::chain(&e), "could not remove the deletion mark of the restored snapshot")
            }
        }
    }
    if check != Some(CheckKind::IntegrityCheck) {
        return;
    }
    let at = Utc::now();
    let body = serde_json::json!({
        "format_version": 1,
        "kind": "restore",
        "db": m.db,
        "snapshot": m.id.as_str(),
        "stored_sha256": m.stored_sha256().as_str(),
        "ok": true,
        "check": CheckKind::IntegrityCheck.pragma(),
        "at": crate::human::rfc3339(at),
        "host": nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
    });
    let mut bytes = serde_json::to_vec_pretty(&body).expect("record serializes");
    bytes.push(b'\n');
    let key = entry.key.restore_record(at);
    if let Err(e) = store
        .put_bytes(
            &key,
            bytes::Bytes::from(bytes),
            crate::storage::PutMode::Overwrite,
        )
        .await
    {
        warn!(key = %key, error = %crate::error::chain(&e), "could not record that the snapshot passed integrity_check");
    }
}

fn no_snapshot_message(db: &str, sel: &Selector, skipped: &[(String, String)]) -> String {
    let what = match sel {
        Selector::Before(t) => format!(
            "no good snapshot of {db} taken before {}",
            crate::human::rfc3339(*t)
        ),
        _ => format!("no good snapshot of {db}"),
    };
    if skipped.is_empty() {
        format!("{what} in the store")
    } else {
        // The newest ones: an old store may hold hundreds.
        const SHOWN: usize = 5;
        let mut list: Vec<String> = skipped
            .iter()
            .take(SHOWN)
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        if skipped.len() > SHOWN {
            list.push(format!(
                "and {} more (see `guardian list --db {db}`)",
                skipped.len() - SHOWN
            ));
        }
        format!("{what}; skipped {}", list.join("; "))
    }
}

/// The first few problems a check reported, on one line.
fn shorten(problems: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        s.push_str(&format!(" (and {} more)", problems.len() - SHOWN));
    }
    s
}

/// Download `m`'s data into a staging file next to `target`, verify both digests and run
/// `check`. `Ok(Err(Skip))` means the snapshot's data is bad. The restored file gets the mode
/// and owner of the file it replaces; a new file gets `new_mode` and, when guardian runs as
/// root, the owner and group of its folder (the application's user, not root).
async fn stage(
    store: &Arc<dyn Storage>,
    m: &Manifest,
    target: &Path,
    check: Option<CheckKind>,
    check_eta: Option<std::time::Duration>,
    keys: &Keys,
    new_mode: u32,
) -> Result<std::result::Result<TempGuard, Skip>> {
    let dir = durable::parent_dir(target).to_path_buf();
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("db")
        .to_string();
    let (file, path) = durable::create_temp(&dir, &name, &target::staging_tag(), 0o600)
        .map_err(|e| Error::io("create staging file in", &dir, e))?;
    let guard = TempGuard::new(path.clone());
    staging_registry().push(path.clone());
    if let Err(damage) = SnapshotReader::new(store, m, keys)
        .read_into(&file, &path)
        .await?
    {
        return Ok(Err(Skip::data(damage)));
    }
    let db = m.db.clone();
    let raw_len = m.raw_len;
    let target_owned = target.to_path_buf();
    let verdict = tokio::task::spawn_blocking(move || -> Result<std::result::Result<(), Skip>> {
        // The restored bytes go to disk while SQLite checks them: both read what the page
        // cache holds, and neither changes it.
        let (checked, flushed) = std::thread::scope(|s| {
            let flushing = s.spawn(|| file.sync_data());
            let checked = check_staged(&path, check, check_eta, &db, raw_len);
            (checked, flushing.join().expect("fsync does not panic"))
        });
        if let Err(skip) = checked? {
            return Ok(Err(skip));
        }
        flushed.map_err(|e| Error::io("fsync", &path, e))?;
        remove_sidecars(&path);
        // Owner first: chown clears set-id bits that the mode may carry.
        let old = fs::metadata(&target_owned).ok();
        let owner = match &old {
            Some(old) => Some((old.uid(), old.gid())),
            // The staging file belongs to whoever guardian runs as: root may give it away.
            None if file.metadata().is_ok_and(|m| m.uid() == 0) => {
                fs::metadata(durable::parent_dir(&target_owned))
                    .ok()
                    .map(|d| (d.uid(), d.gid()))
            }
            None => None,
        };
        if let Some((uid, gid)) = owner {
            if let Err(e) = std::os::unix::fs::fchown(&file, Some(uid), Some(gid)) {
                warn!(error = %e, uid, gid, "could not give the restored file its owner");
            }
        }
        let mode = old.map_or(new_mode, |m| m.permissions().mode() & 0o7777);
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set mode of", &path, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
        Ok(Ok(()))
    })
    .await
    .expect("restore worker does not panic")?;
    Ok(verdict.map(|()| guard))
}

/// Run `check` (if any) on the staged file at `path`: `Ok(Err(Skip))` when the snapshot's data
/// fails it (with the weaker check it would pass, if any), its sidecars removed.
fn check_staged(
    path: &Path,
    check: Option<CheckKind>,
    check_eta: Option<std::time::Duration>,
    db: &str,
    raw_len: u64,
) -> Result<std::result::Result<(), Skip>> {
    let Some(check) = check else {
        return Ok(Ok(()));
    };
    let progress = match check_eta {
        Some(eta) => Progress::start_timed(check.pragma(), db, eta),
        None => Progress::start(check.pragma(), db, None),
    };
    match snapshot::run_check(path, check) {
        Ok(Ok(())) => {}
        Ok(Err(problems)) => {
            // Would the weaker check take it? Then say how to restore it anyway.
            let rescue = match check {
                CheckKind::IntegrityCheck => match snapshot::run_check(path, CheckKind::QuickCheck)
                {
                    Ok(Ok(())) => Some(RestoreCheck::Quick),
                    _ => Some(RestoreCheck::None),
                },
                CheckKind::QuickCheck => Some(RestoreCheck::None),
            };
            remove_sidecars(path);
            return Ok(Err(Skip {
                why: Damage::CheckFailed {
                    check: check.pragma(),
                    detail: shorten(&problems),
                },
                rescue,
            }));
        }
        Err(e) if e.is_data_error() || e.is_not_a_database() => {
            remove_sidecars(path);
            return Ok(Err(Skip {
                why: Damage::NotADatabase(crate::error::chain(&e)),
                rescue: Some(RestoreCheck::None),
            }));
        }
        Err(e) => return Err(e),
    }
    progress.finish(raw_len);
    Ok(Ok(()))
}

/// Move the old database and its sidecars aside and rename the staged file into place.
/// Returns the paths the old files now have.
fn swap_into_place(staged: TempGuard, target: &Path) -> Result<Vec<PathBuf>> {
    let dir = durable::parent_dir(target).to_path_buf();
    let aside = aside_name(target);
    let mut moved = Vec::new();
    let mut main_linked = false;
    if target.exists() {
        // A hard link keeps the old file reachable under the aside name while the target name
        // still holds it: a crash here leaves the old database in place.
        match fs::hard_link(target, &aside) {
            Ok(()) => main_linked = true,
            Err(e) => {
                warn!(error = %e, "cannot hard-link the old database aside; renaming it instead")
            }
        }
        if main_linked {
            moved.push(aside.clone());
        }
    }
    let [wal, shm, journal] = snapshot::sidecars(target);
    let [awal, ashm, ajournal] = snapshot::sidecars(&aside);
    for (from, to) in [(wal, awal), (shm, ashm), (journal, ajournal)] {
        if fs::symlink_metadata(&from).is_ok() {
            fs::rename(&from, &to).map_err(|e| Error::io("move aside", &from, e))?;
            moved.push(to);
        }
    }
    if target.exists() && !main_linked {
        fs::rename(target, &aside).map_err(|e| Error::io("move aside", target, e))?;
        moved.insert(0, aside.clone());
    }
    // From here the staged name is the target's: never remove it on a signal.
    staging_registry().retain(|p| p != staged.path());
    fs::rename(staged.path(), target)
        .map_err(|e| Error::io("rename restored file onto", target, e))?;
    staged.disarm();
    durable::sync_dir(&dir).map_err(|e| Error::io("fsync folder", &dir, e))?;
    Ok(moved)
}

/// `<target>.pre-restore-<UTC time>`, made unique if a restore ran in the same second.
pub(crate) fn aside_name(target: &Path) -> PathBuf {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let base = format!("{}.pre-restore-{stamp}", target.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while fs::symlink_metadata(&candidate).is_ok()
        || snapshot::sidecars(&candidate)
            .iter()
            .any(|p| fs::symlink_metadata(p).is_ok())
    {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

/// The target and sidecars that exist now (what a restore would move aside).
fn existing_files(target: &Path) -> Vec<PathBuf> {
    std::iter::once(target.to_path_buf())
        .chain(snapshot::sidecars(target))
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect()
}

fn remove_sidecars(path: &Path) {
    for p in snapshot::sidecars(path) {
        let _ = fs::remove_file(p);
    }
}
