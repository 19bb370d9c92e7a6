//! `guardian sync`: make every store of a database hold every snapshot, by copying what a
//! store lacks (or holds damaged) from a store that holds a good copy. It owns the copy of
//! stored objects between stores; it never builds a snapshot (that is `backup`) and never
//! deletes one (that is `retention`).
//!
//! For each snapshot, oldest first (an incremental's base and parents come before it, so a
//! store never holds an incremental whose chain it lacks), and for each store that lacks it:
//!
//! 1. **Source**: the first store in config order whose copy is good: its manifest parses and
//!    every object it names is there at the recorded size (and, with `deep`, has the recorded
//!    SHA-256). A source that turns out bad while it is read is skipped for the next one.
//! 2. **Objects**: each object the manifest names ([`Manifest::objects`], also those in the
//!    base's and parents' folders) that the destination lacks or holds with other bytes is
//!    streamed store to store in bounded memory (`get_stream` → `put_stream`, two body
//!    channels' worth of chunks), its SHA-256 and length computed as the bytes pass: bytes
//!    that differ from the manifest abort the upload, so they are never stored.
//! 3. **Checked on arrival**: every object is then read back from the destination and hashed
//!    (an object the destination already held is read and hashed instead of copied). The
//!    destination's own write path (a proxy, a disk, a provider) is what this proves; an
//!    object that reads back wrong is deleted and the copy fails. Only bytes read back from
//!    the destination are vouched for by the manifest written there.
//! 4. **Records**: the drill verdicts and restore records of the source's folder that the
//!    destination lacks. Each names the stored SHA-256 it proved; the destination's copy was
//!    just proven to have those bytes, so the verdict holds for it too. They go before the
//!    manifest, so that a failed verdict is never missing when the snapshot appears. A failed
//!    verdict the destination alone holds on a copy whose bytes sync replaced judged the old
//!    bytes (the drill found that copy unlike the drilled one): it is kept aside
//!    (`superseded-<name>` in the folder) and removed, so the copied verdicts speak for the
//!    new bytes.
//! 5. **Manifest, last**: created with [`PutMode::IfAbsent`], then read back. A manifest in
//!    the destination that does not parse is first kept aside (`manifest-damaged-<time>.json`
//!    in the same folder), then replaced in one write, so that there is never a moment when
//!    the snapshot is absent or shown with bad data. A destination manifest that parses but
//!    differs from the source's is never replaced: the copies disagree, and a human decides.
//!
//! A snapshot marked for deletion (a prune tombstone) in its source is not copied.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{debug, info, instrument, warn};

use crate::archive::{self, BodyReader};
use crate::catalog::{self, Catalog};
use crate::error::{chain, Error, Result};
use crate::manifest::{
    self, Manifest, ObjectRole, Sha256Hex, SnapshotId, SnapshotKey, StoredObject,
    MAX_MANIFEST_BYTES,
};
use crate::storage::{body_channel, NamedStore, ObjectKey, PutMode, Storage, StorageError};

/// Drill and restore records larger than this are not copied (the catalog refuses them too).
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// How `sync` runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// Say what would be copied; change nothing.
    pub dry_run: bool,
    /// Read every copy's objects and check their SHA-256 (bit rot), not only their presence
    /// and size in the listing. `guardian sync` does; the service's sync after each backup
    /// does not (it would read every snapshot of every store after every backup).
    pub deep: bool,
}

/// What `sync` did (or would do) for one database.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub db: String,
    pub dry_run: bool,
    /// The database's stores, in config order.
    pub stores: Vec<String>,
    /// Snapshots found in any store.
    pub snapshots: usize,
    /// Each copy made, attempted, or (dry run) planned, oldest snapshot first.
    pub copies: Vec<CopyReport>,
    /// Snapshots no store holds a good copy of (exit 1).
    pub lost: Vec<Lost>,
    /// Stores that could not be read, and copies whose copies disagree, with why (exit 2).
    pub store_errors: Vec<StoreProblem>,
}

/// One copy of one snapshot from one store to another.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub id: String,
    /// The store copied from (`None` when no store could give a good copy).
    pub from: Option<String>,
    pub to: String,
    /// Why: `missing`, or what is wrong with the destination's copy.
    pub reason: String,
    /// The objects copied (not counting those the destination already held good).
    pub objects_copied: usize,
    pub bytes_copied: u64,
    /// True once the copy is complete and checked (always false in a dry run).
    pub done: bool,
    /// Why the copy failed, if it did.
    pub error: Option<String>,
    /// The copy failed because no source's bytes matched the manifest (bad data, exit 1),
    /// not because a store could not be read or written (exit 2).
    #[serde(skip)]
    bad_data: bool,
}

/// A snapshot no store holds a good copy of.
#[derive(Debug, Clone, Serialize)]
pub struct Lost {
    pub id: String,
    /// Per store: `missing`, or what is wrong with its copy.
    pub copies: BTreeMap<String, String>,
}

/// A store that could not be read, with why.
#[derive(Debug, Clone, Serialize)]
pub struct StoreProblem {
    pub store: String,
    pub error: String,
}

impl SyncReport {
    /// 0: every store holds every snapshot; 1: some snapshot has no good copy anywhere (or
    /// the copies disagree); 2: a store could not be read or written.
    pub fn exit_code(&self) -> u8 {
        let operational = !self.store_errors.is_empty()
            || self.copies.iter().any(|c| c.error.is_some() && !c.bad_data);
        let bad = !self.lost.is_empty() || self.copies.iter().any(|c| c.bad_data);
        match (operational, bad) {
            (true, _) => 2,
            (false, true) => 1,
            (false, false) => 0,
        }
    }

    /// The stores that could not be read, or that a copy to failed (config order, once each).
    pub fn failing_stores(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store_errors
            .iter()
            .map(|p| p.store.clone())
            .chain(
                self.copies
                    .iter()
                    .filter(|c| c.error.is_some())
                    .map(|c| c.to.clone()),
            )
            .collect();
        names.sort_by_key(|n| self.stores.iter().position(|s| s == n));
        names.dedup();
        names
    }

    /// Copies made (or, in a dry run, planned).
    pub fn copied(&self) -> usize {
        self.copies
            .iter()
            .filter(|c| c.done || (self.dry_run && c.error.is_none()))
            .count()
    }
}

/// One line saying what is still wrong after `r` (for an alert): stores that failed,
/// snapshots with no good copy.
pub fn summary(r: &SyncReport) -> String {
    let mut parts: Vec<String> = r
        .store_errors
        .iter()
        .map(|p| format!("store {}: {}", p.store, p.error))
        .collect();
    for c in r.copies.iter().filter(|c| c.error.is_some()) {
        parts.push(format!(
            "snapshot {} not copied to {}: {}",
            c.id,
            c.to,
            c.error.as_deref().unwrap_or_default()
        ));
    }
    for l in &r.lost {
        parts.push(format!("snapshot {}: no store holds a good copy", l.id));
    }
    parts.join("; ")
}

/// One store as `sync` sees it.
struct View {
    name: String,
    store: Arc<dyn Storage>,
    catalog: Catalog,
    /// Every object under the database's prefix, with its size.
    listed: BTreeMap<ObjectKey, u64>,
    /// Objects proven in this run: read from this store and hashed (`Ok`), or found bad.
    proven: HashMap<ObjectKey, std::result::Result<(), String>>,
}

/// The state of one snapshot in one store.
#[derive(Debug, Clone)]
enum Copy {
    Missing,
    /// The manifest does not parse (or cannot be read); the text says why.
    ManifestBad(String),
    /// The manifest parses; an object is missing or not what it records.
    Damaged(Box<Manifest>, String),
    Good(Box<Manifest>),
}

impl Copy {
    fn describe(&self) -> String {
        match self {
            Copy::Missing => "missing".into(),
            Copy::ManifestBad(why) => format!("damaged: {why}"),
            Copy::Damaged(_, why) => format!("damaged: {why}"),
            Copy::Good(_) => "good".into(),
        }
    }
}

/// Copy every snapshot of `db` that a store of `stores` lacks or holds damaged from a store
/// that holds a good copy (see the module doc).
///
/// # Errors
/// Never for a store that cannot be read or written (that is in the report); only when none
/// of the stores can be listed, with the first store's error.
#[instrument(skip_all, fields(db = %db))]
pub async fn run(stores: &[NamedStore], db: &str, opts: SyncOptions) -> Result<SyncReport> {
    let mut report = SyncReport {
        db: db.to_string(),
        dry_run: opts.dry_run,
        stores: stores.iter().map(|s| s.name.clone()).collect(),
        snapshots: 0,
        copies: Vec::new(),
        lost: Vec::new(),
        store_errors: Vec::new(),
    };
    if stores.len() < 2 {
        // Nothing to compare: one store is what it is (`verify` checks it).
        return Ok(report);
    }
    let mut views = Vec::new();
    let mut first_error = None;
    for s in stores {
        match load(s, db).await {
            Ok(v) => views.push(v),
            Err(e) => {
                warn!(store = %s.name, error = %chain(&e), "cannot list this store; it is left out of the sync");
                report.store_errors.push(StoreProblem {
                    store: s.name.clone(),
                    error: chain(&e),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    if views.is_empty() {
        return Err(first_error
            .unwrap_or_else(|| Error::Internal("sync of a database with no store".into())));
    }

    // Every snapshot any store has, oldest first (a chain's base and parents first), dated
    // by a manifest that parses where one does (a damaged one is dated by its id alone).
    let mut ids: BTreeMap<SnapshotId, (DateTime<Utc>, bool)> = BTreeMap::new();
    for v in &views {
        for s in &v.catalog.snapshots {
            let parsed = s.manifest.is_some();
            let at = ids
                .entry(s.key.id.clone())
                .or_insert((s.created_at, parsed));
            if parsed && !at.1 {
                *at = (s.created_at, true);
            }
        }
    }
    report.snapshots = ids.len();
    let mut ids: Vec<(DateTime<Utc>, SnapshotId)> =
        ids.into_iter().map(|(id, (at, _))| (at, id)).collect();
    ids.sort();
    for (_, id) in ids {
        sync_snapshot(&mut views, &id, opts, &mut report).await;
    }
    if !opts.dry_run {
        // What copies killed mid-way left (temp files, abandoned multipart uploads).
        for v in &views {
            if let Err(e) = v.store.sweep(&manifest::db_prefix(db)).await {
                warn!(store = %v.name, error = %chain(&e), "could not clean leftovers of interrupted copies");
            }
        }
    }
    info!(
        snapshots = report.snapshots,
        copies = report.copied(),
        lost = report.lost.len(),
        dry_run = opts.dry_run,
        "sync finished"
    );
    Ok(report)
}

async fn load(s: &NamedStore, db: &str) -> Result<View> {
    let catalog = catalog::load(&s.store, db).await?;
    let listed = s
        .store
        .list(&manifest::db_prefix(db))
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    Ok(View {
        name: s.name.clone(),
        store: Arc::clone(&s.store),
        catalog,
        listed,
        proven: HashMap::new(),
    })
}

/// What store `v` holds of snapshot `id`.
async fn copy_in(v: &mut View, id: &SnapshotId, deep: bool) -> Result<Copy> {
    let Some(entry) = v.catalog.snapshots.iter().find(|s| s.key.id == *id) else {
        return Ok(Copy::Missing);
    };
    let Some(m) = entry.manifest.clone() else {
        let why = entry
            .problem
            .as_ref()
            .map_or_else(|| "manifest is unreadable".into(), ToString::to_string);
        return Ok(Copy::ManifestBad(why));
    };
    for o in m.objects() {
        match v.listed.get(&o.key) {
            None => return Ok(Copy::Damaged(Box::new(m), format!("{} is missing", o.key))),
            Some(&size) if size != o.len => {
                return Ok(Copy::Damaged(
                    Box::new(m),
                    format!("{} is {size} bytes, the manifest says {}", o.key, o.len),
                ))
            }
            Some(_) => {}
        }
        if deep {
            if let Err(why) = prove(v, &o).await? {
                return Ok(Copy::Damaged(Box::new(m), why));
            }
        }
    }
    Ok(Copy::Good(Box::new(m)))
}

/// Read `o` from `v` and check its size and SHA-256 (once per run and object).
async fn prove(v: &mut View, o: &StoredObject) -> Result<std::result::Result<(), String>> {
    if let Some(known) = v.proven.get(&o.key) {
        return Ok(known.clone());
    }
    let got = match digest(&v.store, &o.key).await? {
        None => Err(format!("{} is missing", o.key)),
        Some((len, sha)) if len != o.len || sha != o.sha256 => Err(format!(
            "{} checksum mismatch (the manifest says {} bytes sha256 {}, the store holds {len} bytes sha256 {sha})",
            o.key, o.len, o.sha256
        )),
        Some(_) => Ok(()),
    };
    v.proven.insert(o.key.clone(), got.clone());
    Ok(got)
}

/// Size and SHA-256 of the stored object `key`; `None` when it is absent.
async fn digest(store: &Arc<dyn Storage>, key: &ObjectKey) -> Result<Option<(u64, Sha256Hex)>> {
    let body = match store.get_stream(key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let key = key.clone();
    tokio::task::spawn_blocking(move || archive::digest(BodyReader::new(body)))
        .await
        .expect("digest does not panic")
        .map(Some)
        .map_err(|e| Error::Io {
            op: "read",
            path: key.as_str().into(),
            source: e,
        })
}

/// Bring snapshot `id` to every store of `views` that lacks it or holds it damaged.
async fn sync_snapshot(
    views: &mut [View],
    id: &SnapshotId,
    opts: SyncOptions,
    report: &mut SyncReport,
) {
    let mut copies = Vec::with_capacity(views.len());
    for v in views.iter_mut() {
        match copy_in(v, id, opts.deep).await {
            Ok(c) => copies.push(Some(c)),
            Err(e) => {
                // This store could not be read now: neither a source nor a destination.
                report.store_errors.push(StoreProblem {
                    store: v.name.clone(),
                    error: format!("snapshot {id}: {}", chain(&e)),
                });
                copies.push(None);
            }
        }
    }
    let Some(reference) = copies.iter().flatten().find_map(|c| match c {
        Copy::Good(m) => Some(m.clone()),
        _ => None,
    }) else {
        let held = copies.iter().flatten().any(|c| !matches!(c, Copy::Missing));
        if held {
            report.lost.push(Lost {
                id: id.to_string(),
                copies: views
                    .iter()
                    .zip(&copies)
                    .map(|(v, c)| {
                        let state = c.as_ref().map_or("unreadable".into(), Copy::describe);
                        (v.name.clone(), state)
                    })
                    .collect(),
            });
        }
        return;
    };
    let sources: Vec<usize> = copies
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Some(Copy::Good(m)) if *m == reference))
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = sources.first() {
        let key = reference.key();
        if views[first]
            .catalog
            .snapshots
            .iter()
            .any(|s| s.key == key && s.marked_at.is_some())
        {
            debug!(id = %id, "marked for deletion in its source store; not copied");
            return;
        }
    }
    for to in 0..views.len() {
        let reason = match &copies[to] {
            None => continue,
            Some(Copy::Good(m)) if **m == *reference => continue,
            Some(Copy::Good(_)) => {
                // Two good manifests for one id that disagree: one copy was changed. Never
                // replace one with the other; say so loudly.
                report.store_errors.push(StoreProblem {
                    store: views[to].name.clone(),
                    error: format!(
                        "snapshot {id}: its copy has another manifest than the copy in {}: two different snapshots under one id; left as it is: compare the two folders and remove the wrong copy",
                        views[sources[0]].name
                    ),
                });
                continue;
            }
            Some(Copy::Missing) => "missing".to_string(),
            Some(c @ Copy::ManifestBad(_)) => c.describe(),
            Some(Copy::Damaged(m, why)) if **m == *reference => format!("damaged: {why}"),
            Some(Copy::Damaged(_, why)) => {
                // Two manifests for one id that disagree: never replace one with the other.
                report.store_errors.push(StoreProblem {
                    store: views[to].name.clone(),
                    error: format!(
                        "snapshot {id}: its copy ({why}) has another manifest than the good copy in {}; left as it is: compare the two folders",
                        views[sources[0]].name
                    ),
                });
                continue;
            }
        };
        let replace_manifest = matches!(copies[to], Some(Copy::ManifestBad(_)));
        let write_manifest = !matches!(copies[to], Some(Copy::Damaged(..)));
        let mut c = CopyReport {
            id: id.to_string(),
            from: Some(views[sources[0]].name.clone()),
            to: views[to].name.clone(),
            reason,
            objects_copied: 0,
            bytes_copied: 0,
            done: false,
            error: None,
            bad_data: false,
        };
        if opts.dry_run {
            report.copies.push(c);
            continue;
        }
        let plan = Plan {
            manifest: &reference,
            write_manifest,
            replace_manifest,
        };
        // Each good copy in turn, until one arrives; a source whose bytes turn out bad
        // (or that cannot be read) gives way to the next.
        let (mut errors, mut all_bad) = (Vec::new(), true);
        for &from in &sources {
            let (src, dst) = pair(views, from, to);
            c.from = Some(src.name.clone());
            match copy_snapshot(src, dst, &plan, &mut c).await {
                Ok(()) => {
                    c.done = true;
                    info!(id = %id, from = %src.name, to = %dst.name, objects = c.objects_copied, bytes = c.bytes_copied, "snapshot copied");
                    break;
                }
                Err(Failed::Destination(e)) => {
                    errors.push(format!("store {}: {e}", dst.name));
                    all_bad = false;
                    break;
                }
                Err(Failed::Source { why, bad_data }) => {
                    warn!(id = %id, from = %src.name, error = %why, "this store's copy could not be copied; trying the next");
                    errors.push(format!("store {}: {why}", src.name));
                    all_bad &= bad_data;
                }
            }
        }
        if !c.done {
            c.error = Some(errors.join("; "));
            c.bad_data = all_bad;
        }
        report.copies.push(c);
    }
}

/// `views[a]` and `views[b]` (`a != b`), the first shared, the second mutable.
fn pair(views: &mut [View], a: usize, b: usize) -> (&View, &mut View) {
    assert_ne!(a, b, "a store is never copied onto itself");
    if a < b {
        let (left, right) = views.split_at_mut(b);
        (&left[a], &mut right[0])
    } else {
        let (left, right) = views.split_at_mut(a);
        (&right[0], &mut left[b])
    }
}

/// What to write for one copy.
struct Plan<'a> {
    manifest: &'a Manifest,
    /// The destination has no usable manifest: write one.
    write_manifest: bool,
    /// The destination's manifest exists and does not parse: keep it aside, then replace it.
    replace_manifest: bool,
}

/// Why a copy failed: the source (try another) or the destination (report it).
enum Failed {
    /// `bad_data`: the source's bytes are not what the manifest records (else it could not
    /// be read).
    Source {
        why: String,
        bad_data: bool,
    },
    Destination(String),
}

fn unreadable(why: String) -> Failed {
    Failed::Source {
        why,
        bad_data: false,
    }
}

fn bad_source(why: String) -> Failed {
    Failed::Source {
        why,
        bad_data: true,
    }
}

/// Copy one snapshot from `src` to `dst` (see the module doc for the order).
async fn copy_snapshot(
    src: &View,
    dst: &mut View,
    plan: &Plan<'_>,
    c: &mut CopyReport,
) -> std::result::Result<(), Failed> {
    let dest = |e: String| Failed::Destination(e);
    // 1. The objects, each proven in the destination.
    for o in plan.manifest.objects() {
        let held = dst.listed.get(&o.key) == Some(&o.len);
        if held {
            match prove(dst, &o).await {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => {
                    debug!(key = %o.key, why = %why, "the destination's object is bad; replacing it")
                }
                Err(e) => return Err(dest(chain(&e))),
            }
        }
        let n = copy_object(&src.store, &dst.store, &o).await?;
        c.objects_copied += 1;
        c.bytes_copied += n;
        // Checked on arrival: read it back from the destination.
        dst.proven.remove(&o.key);
        match prove(dst, &o).await {
            Ok(Ok(())) => {
                dst.listed.insert(o.key.clone(), o.len);
            }
            Ok(Err(why)) => {
                if let Err(e) = dst.store.delete(&o.key).await {
                    warn!(key = %o.key, error = %chain(&e), "could not delete an object that read back wrong");
                }
                dst.listed.remove(&o.key);
                return Err(dest(format!(
                    "{} read back wrong after the copy ({why}); it was deleted",
                    dst.store.location()
                )));
            }
            Err(e) => return Err(dest(chain(&e))),
        }
    }
    let key = plan.manifest.key();
    // 2. The records that vouch for these bytes. A failed drill verdict the destination holds
    //    alone was about the bytes just replaced (a drill found its copy unlike the drilled
    //    one): it is kept aside, so that the source's verdicts speak for the new bytes.
    if c.objects_copied > 0 {
        supersede_failed_verdicts(src, dst, &key)
            .await
            .map_err(dest)?;
    }
    copy_records(src, dst, &key).await?;
    if !plan.write_manifest {
        return Ok(());
    }
    // 3. The manifest, last.
    let body = Bytes::from(plan.manifest.to_json());
    let mkey = key.manifest();
    let mode = if plan.replace_manifest {
        keep_aside(&dst.store, &key).await.map_err(dest)?;
        PutMode::Overwrite
    } else {
        PutMode::IfAbsent
    };
    match dst.store.put_bytes(&mkey, body.clone(), mode).await {
        Ok(()) => {}
        // Another sync (or a backup retried) wrote it meanwhile: fine if it is the same.
        Err(StorageError::AlreadyExists { .. }) => {}
        Err(e) => return Err(dest(chain(&e))),
    }
    match dst.store.get_bytes(&mkey, MAX_MANIFEST_BYTES).await {
        Ok(stored) if Manifest::parse(&stored, &key).ok().as_ref() == Some(plan.manifest) => {
            Ok(())
        }
        Ok(_) => Err(dest(format!(
            "{mkey} in {} holds another manifest than the one copied; left as it is: compare it with the source's",
            dst.store.location()
        ))),
        Err(e) => Err(dest(chain(&e))),
    }
}

/// Keep the unparsable manifest of `key` aside in its folder before it is replaced.
async fn keep_aside(
    store: &Arc<dyn Storage>,
    key: &SnapshotKey,
) -> std::result::Result<(), String> {
    let aside = key.object(&format!(
        "manifest-damaged-{}.json",
        Utc::now()
            .format("%Y%m%dT%H%M%S%.fZ")
            .to_string()
            .replace('.', "")
    ));
    let body = match store.get_stream(&key.manifest()).await {
        Ok(b) => b,
        // Gone meanwhile: nothing to keep.
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(chain(&e)),
    };
    store
        .put_stream(&aside, body, None)
        .await
        .map(|_| info!(key = %aside, "kept the damaged manifest aside"))
        .map_err(|e| chain(&e))
}

/// Keep aside (as `superseded-<name>`) and remove the failed drill verdicts of `key`'s folder
/// that `dst` holds and `src` does not: they judged the destination's old bytes.
async fn supersede_failed_verdicts(
    src: &View,
    dst: &mut View,
    key: &SnapshotKey,
) -> std::result::Result<(), String> {
    let stale: Vec<ObjectKey> = dst
        .listed
        .keys()
        .filter(|k| {
            matches!(manifest::parse_key(k), Some((sk, ObjectRole::Drill { ok: false, .. })) if sk == *key)
        })
        .filter(|k| !src.listed.contains_key(*k))
        .cloned()
        .collect();
    for k in stale {
        let aside = key.object(&format!("superseded-{}", k.file_name()));
        let body = match dst.store.get_stream(&k).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(chain(&e)),
        };
        dst.store
            .put_stream(&aside, body, None)
            .await
            .map_err(|e| chain(&e))?;
        dst.store.delete(&k).await.map_err(|e| chain(&e))?;
        dst.listed.remove(&k);
        info!(key = %k, aside = %aside, "a failed drill verdict about the replaced bytes was kept aside");
    }
    Ok(())
}

/// Copy the drill verdicts and restore records of `key`'s folder that `dst` lacks.
async fn copy_records(
    src: &View,
    dst: &mut View,
    key: &SnapshotKey,
) -> std::result::Result<(), Failed> {
    let records: Vec<ObjectKey> = src
        .listed
        .keys()
        .filter(|k| {
            matches!(manifest::parse_key(k), Some((sk, ObjectRole::Drill { .. } | ObjectRole::Restore { .. })) if sk == *key)
        })
        .filter(|k| !dst.listed.contains_key(*k))
        .cloned()
        .collect();
    for k in records {
        let bytes = match src.store.get_bytes(&k, MAX_RECORD_BYTES).await {
            Ok(b) => b,
            // Pruned meanwhile, or too large to be a record: nothing to copy.
            Err(StorageError::NotFound { .. } | StorageError::TooLarge { .. }) => continue,
            Err(e) => return Err(unreadable(chain(&e))),
        };
        let len = bytes.len() as u64;
        match dst.store.put_bytes(&k, bytes, PutMode::IfAbsent).await {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => {
                dst.listed.insert(k, len);
            }
            Err(e) => return Err(Failed::Destination(chain(&e))),
        }
    }
    Ok(())
}

/// Stream `o` from `from` to `to`, hashing the bytes as they pass: bytes that are not what
/// the manifest records abort the upload, so they are never stored. Returns the bytes copied.
async fn copy_object(
    from: &Arc<dyn Storage>,
    to: &Arc<dyn Storage>,
    o: &StoredObject,
) -> std::result::Result<u64, Failed> {
    let mut src = match from.get_stream(&o.key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(bad_source(format!(
                "{} is missing in {}",
                o.key,
                from.location()
            )))
        }
        Err(e) => return Err(unreadable(chain(&e))),
    };
    let (tx, rx) = body_channel();
    let forward = async move {
        let mut hash = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = src.recv().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("read {}: {e}", o.key);
                    let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
                    return Err(unreadable(why));
                }
            };
            hash.update(&chunk);
            n += chunk.len() as u64;
            if n > o.len {
                break;
            }
            if tx.send(Ok(chunk)).await.is_err() {
                // The upload ended early: its error says why.
                return Ok(n);
            }
        }
        let got = Sha256Hex::from_digest(&hash.finalize());
        if n != o.len || got != o.sha256 {
            let why = format!(
                "{} is not what the manifest records (expected {} bytes sha256 {}, read {}{n} bytes sha256 {got}); not copied",
                o.key,
                o.len,
                o.sha256,
                if n > o.len { "over " } else { "" }
            );
            let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
            return Err(bad_source(why));
        }
        // Dropping the sender ends the body: the upload may now complete.
        drop(tx);
        Ok(n)
    };
    let (stored, read) = tokio::join!(to.put_stream(&o.key, rx, Some(o.len)), forward);
    let n = read?;
    match stored {
        Ok(stored) if stored == n => Ok(n),
        Ok(stored) => Err(Failed::Destination(format!(
            "{} took {stored} of {n} bytes of {}",
            to.location(),
            o.key
        ))),
        Err(e) => Err(Failed::Destination(chain(&e))),
    }
}
