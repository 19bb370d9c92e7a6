//! One incremental snapshot: the pages that differ from the newest snapshot of the current
//! chain, read in one transaction of the live database, without a copy.
//!
//! 1. The catalog gives the base (the newest usable full snapshot) and the parent (the newest
//!    usable snapshot built on it, or the base itself). Without them, or when the chain is too
//!    long or encryption changed, the caller takes a full instead ([`Attempt::Full`]).
//! 2. The page digests of the parent's state: the base's digests and the overlay of pages that
//!    differ from it, from the local cache, else rebuilt from the store (`pageset`).
//! 3. One read transaction (`snapshot::ReadSnapshot`): the inspection, then every page in
//!    order: hashed into the SHA-256 of the whole database, compared with the parent's digest,
//!    and, when it differs, streamed into the page set, which is compressed, encrypted and
//!    uploaded as it is produced. The configured check runs meanwhile on other cores, on
//!    connections proven to read the same committed state (else first, in this transaction);
//!    a failed check discards the page set. More than `backup.incremental_max_changed` of the
//!    pages differing from the base, or another page size, stops it: a full instead.
//! 4. The manifest names the base's object, the parent's page sets and this one's, and is
//!    written last, as for a full.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::catalog::{self, SnapshotEntry};
use crate::config::{BackupConfig, CheckKind, DatabaseConfig};
use crate::crypto::Keys;
use crate::damage::Damage;
use crate::error::{Error, Result};
use crate::layout::{Fetched, SnapshotReader, SnapshotWriter};
use crate::manifest::{
    CheckRecord, DataLayout, Manifest, PageChain, Part, PartContent, Sha256Hex, SnapshotId,
    SnapshotKey, SnapshotKind, FORMAT_VERSION, MAX_PARTS,
};
use crate::pageset::{self, BaseDigests, BaseDigestsWriter, Overlay, PageSetParser};
use crate::snapshot::{Inspection, ReadSnapshot};
use crate::storage::{NamedStore, Storage};

/// How an attempt at an incremental ended.
#[derive(Debug)]
pub enum Attempt {
    /// Published (where the writer says).
    Done(Box<Manifest>, SnapshotWriter),
    /// Not possible now: take a full instead, for this reason (one line).
    Full(String),
}

/// Where the chain goes on from.
struct Chain {
    base: Manifest,
    parent: Manifest,
}

/// Take an incremental snapshot of `db` on the newest chain in the first of `stores` that can
/// be read, and publish it to every store that holds that chain. A store that lacks it (it
/// missed a snapshot, or it is new) is left out, to be filled by `guardian sync`.
pub async fn run(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    opts: &BackupConfig,
    keys: &Keys,
    key: SnapshotKey,
    created_at: DateTime<Utc>,
) -> Result<Attempt> {
    let mut catalogs = Vec::with_capacity(stores.len());
    for s in stores {
        catalogs.push(catalog::load(&s.store, &db.name).await);
    }
    let Some(source) = catalogs.iter().position(|c| c.is_ok()) else {
        let first = catalogs.into_iter().next().expect("a database has a store");
        return Err(first.expect_err("no catalog loaded"));
    };
    let store = &stores[source].store;
    let catalog = catalogs[source].as_ref().expect("loaded");
    let chain = match pick_chain(&catalog.snapshots, keys) {
        Ok(c) => c,
        Err(why) => return Ok(Attempt::Full(why)),
    };
    let cache = cache_dir(opts, store.as_ref());
    let base_parts = parts_of(&chain.parent);
    if base_parts.len() >= MAX_PARTS {
        return Ok(Attempt::Full(format!(
            "the chain on the full snapshot {} has {} parts (at most {MAX_PARTS})",
            chain.base.id,
            base_parts.len()
        )));
    }
    // Every object the new snapshot will name is read back (its size and SHA-256) before
    // anything builds on it, so that a damaged one makes a full now instead of a day of
    // incrementals that all name it: the parents' page sets (small) every time, the base's
    // object (the whole database) once per host, which records what it proved.
    let mut verified = pageset::Verified::load(&cache, &db.name);
    let reader = SnapshotReader::new(store, &chain.parent, keys);
    for part in &base_parts {
        let key = part.key(&db.name);
        if part.content == PartContent::Whole
            && verified.contains(key.as_str(), part.stored_sha256.as_str())
        {
            continue;
        }
        if let Err(damage) = reader.verify_part(part).await? {
            return Ok(Attempt::Full(format!(
                "{} the new snapshot would build on is damaged ({damage}); run `guardian verify --all`",
                if part.content == PartContent::Whole {
                    format!("the full snapshot {}", part.snapshot)
                } else {
                    format!("the incremental {}", part.snapshot)
                }
            )));
        }
        verified.insert(key.as_str(), part.stored_sha256.as_str());
    }
    if let Err(why) = ensure_base_digests(store, keys, &cache, &chain.base).await? {
        return Ok(Attempt::Full(why));
    }
    let overlay = match load_overlay(store, keys, &cache, &chain).await? {
        Ok(o) => o,
        Err(why) => return Ok(Attempt::Full(why)),
    };

    let writer = SnapshotWriter::new(stores, key.clone(), opts, keys);
    // The other stores take it only if they hold the same chain (the parent, undamaged, with
    // the same objects): an incremental names its parents' objects, it does not carry them.
    for (s, c) in stores.iter().zip(&catalogs) {
        let lacks = match c {
            Err(e) => Some(crate::error::chain(e)),
            Ok(c) => (!c.snapshots.iter().any(|e| {
                e.key.id == chain.parent.id
                    && e.problem.is_none()
                    && e.manifest
                        .as_ref()
                        .is_some_and(|m| m.objects() == chain.parent.objects())
            }))
            .then(|| {
                format!(
                    "it lacks snapshot {}, which the incremental builds on",
                    chain.parent.id
                )
            }),
        };
        if let Some(why) = lacks {
            writer.exclude(&s.name, Error::Gone(why));
        }
    }
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(2);
    let pages = Arc::new(AtomicU64::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let scanner = {
        let plan = ScanPlan {
            source: db.path.clone(),
            check: db.incremental_check(opts),
            cache: cache.clone(),
            db: db.name.clone(),
            base: chain.base.id.clone(),
            page_size: chain.parent.page_size,
            overlay,
            max_changed: opts.incremental_max_changed(),
        };
        let (pages, abort) = (Arc::clone(&pages), Arc::clone(&abort));
        tokio::task::spawn_blocking(move || {
            let out = scan(&plan, &mut PipeWriter::new(tx.clone()), &pages);
            if out.is_err() {
                abort.store(true, Ordering::SeqCst);
                let _ = tx.send(Err(io::Error::other("the page scan stopped")));
            }
            out
        })
    };
    let part = writer
        .write_pages(Box::new(PipeReader::new(rx)), &pages, &abort)
        .await;
    let scanned = scanner.await.expect("the page scan does not panic");
    let scanned = match scanned {
        Ok(s) => s,
        Err(stop) => {
            if let Ok(p) = &part {
                writer.discard(&own_layout(&chain, p.clone())).await;
            }
            return match stop {
                Stop::Full(why) => Ok(Attempt::Full(why)),
                Stop::Failed(e) => Err(e),
            };
        }
    };
    let mut own = part?;
    own.page_count = scanned.inspection.page_count;
    let mut parts = base_parts;
    parts.push(own);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        guardian_version: env!("CARGO_PKG_VERSION").to_string(),
        db: db.name.clone(),
        id: key.id.clone(),
        created_at,
        source_path: db.path.display().to_string(),
        sqlite_version: scanned.inspection.sqlite_version,
        page_size: scanned.inspection.page_size,
        page_count: scanned.inspection.page_count,
        journal_mode: scanned.journal_mode,
        raw_len: scanned.inspection.page_size * scanned.inspection.page_count,
        raw_sha256: scanned.raw_sha256,
        data: DataLayout::Pages(PageChain {
            base: chain.base.id.clone(),
            parent: chain.parent.id.clone(),
            parts,
        }),
        tables: scanned.inspection.tables,
        schema_sha256: scanned.inspection.schema_sha256,
        check: CheckRecord {
            kind: db.incremental_check(opts).pragma().to_string(),
            result: "ok".into(),
        },
    };
    // What we wrote must parse back as what restore will read.
    if let Err(e) = Manifest::parse(&manifest.to_json(), &key) {
        writer.discard(&manifest.data).await;
        return Err(Error::Internal(format!(
            "incremental manifest refused: {e}"
        )));
    }
    writer.publish(&manifest).await?;
    info!(
        id = %key.id,
        base = %chain.base.id,
        pages = pages.load(Ordering::SeqCst),
        changed_since_base = scanned.overlay.pages.len(),
        "incremental snapshot published"
    );
    // The digests go into the cache of every store that took it, so that the next
    // incremental reads none back even when another store is the first one readable.
    let proved: Vec<(String, String)> = base_parts_keys(&manifest);
    for store in writer.live_stores() {
        let cache = cache_dir(opts, store.as_ref());
        if let Err(e) = scanned
            .overlay
            .save(&cache, &db.name, &chain.base.id, &key.id)
        {
            tracing::warn!(error = %e, "could not cache the page digests; the next incremental reads them from the store");
        }
        pageset::keep_only(&cache, &db.name, &chain.base.id, Some(&key.id));
        if let Err(e) = verified.save(&cache, &db.name, &proved) {
            tracing::warn!(error = %e, "could not record which objects were read back");
        }
    }
    Ok(Attempt::Done(Box::new(manifest), writer))
}

/// The objects (key, stored SHA-256) of `m`'s chain but its own: what was proved before it.
fn base_parts_keys(m: &Manifest) -> Vec<(String, String)> {
    let objects = m.objects();
    objects[..objects.len().saturating_sub(1)]
        .iter()
        .map(|o| (o.key.to_string(), o.sha256.to_string()))
        .collect()
}

/// The page digest cache of the databases in `store`: `backup.cache_dir`, one folder per
/// store (two configs sharing a staging folder and a database name must not evict each
/// other's cache).
pub fn cache_dir(opts: &BackupConfig, store: &dyn Storage) -> PathBuf {
    let id = Sha256::digest(store.location().as_bytes());
    opts.cache_dir()
        .join(format!("store-{}", &hex::encode(id)[..12]))
}

/// Cache the page digests of the full snapshot `m`, whose raw file is at `copy`, for the
/// incrementals that will build on it. Failures are logged: the cache is rebuilt from the
/// store when needed.
pub fn cache_full(cache: &Path, m: &Manifest, copy: &Path) {
    let done = (|| -> io::Result<()> {
        let mut w =
            BaseDigestsWriter::create(cache, &m.db, &m.id, m.page_size as u32, m.page_count)?;
        io::copy(&mut std::fs::File::open(copy)?, &mut w)?;
        w.commit(m.page_count)
    })();
    match done {
        Ok(()) => pageset::keep_only(cache, &m.db, &m.id, None),
        Err(e) => {
            tracing::warn!(error = %e, "could not cache the page digests of the full snapshot")
        }
    }
}

/// The newest usable full snapshot, and the newest usable snapshot built on it.
fn pick_chain(snapshots: &[SnapshotEntry], keys: &Keys) -> std::result::Result<Chain, String> {
    let usable = || {
        snapshots.iter().filter(|s| {
            s.status != catalog::SnapshotStatus::Failed && !s.skewed && s.manifest.is_some()
        })
    };
    let base = usable()
        .filter_map(|s| s.manifest.as_ref())
        .find(|m| m.kind() == SnapshotKind::Full)
        .ok_or("there is no usable full snapshot to build on")?;
    let parent = usable()
        .filter_map(|s| s.manifest.as_ref())
        .find(|m| m.id == base.id || m.base() == Some(&base.id))
        .unwrap_or(base);
    if keys.encrypts() != base.encryption().is_some() {
        return Err(format!(
            "encryption was turned {} since the full snapshot {}",
            if keys.encrypts() { "on" } else { "off" },
            base.id
        ));
    }
    // Every part of a chain is encrypted to the same recipients: one identity restores it.
    if keys.encrypts() && base.recipients_sha256() != keys.recipients_sha256().as_ref() {
        return Err(format!(
            "encryption.recipients differ from those of the full snapshot {}",
            base.id
        ));
    }
    Ok(Chain {
        base: base.clone(),
        parent: parent.clone(),
    })
}

/// The parts an incremental on `parent` starts from: the parent's own chain, or the full's
/// whole object.
fn parts_of(parent: &Manifest) -> Vec<Part> {
    match &parent.data {
        DataLayout::Pages(c) => c.parts.clone(),
        DataLayout::Whole(w) => vec![Part {
            snapshot: parent.id.clone(),
            object: w.object.clone(),
            content: PartContent::Whole,
            compression: w.compression.clone(),
            encryption: w.encryption.clone(),
            recipients_sha256: w.recipients_sha256.clone(),
            stored_len: w.stored_len,
            stored_sha256: w.stored_sha256.clone(),
            raw_len: parent.raw_len,
            raw_sha256: parent.raw_sha256.clone(),
            page_count: parent.page_count,
            pages: parent.page_count,
        }],
    }
}

/// The layout to discard when `own` was stored but will not be published.
fn own_layout(chain: &Chain, own: Part) -> DataLayout {
    DataLayout::Pages(PageChain {
        base: chain.base.id.clone(),
        parent: chain.parent.id.clone(),
        parts: vec![own],
    })
}

/// Make sure the base's page digests are cached: read its object back when they are not.
/// `Ok(Err(why))`: the base cannot be read back (a full instead).
async fn ensure_base_digests(
    store: &Arc<dyn Storage>,
    keys: &Keys,
    cache: &Path,
    base: &Manifest,
) -> Result<std::result::Result<(), String>> {
    if let Some(d) = BaseDigests::open(cache, &base.db, &base.id) {
        if u64::from(d.page_size) == base.page_size && d.page_count == base.page_count {
            return Ok(Ok(()));
        }
    }
    info!(base = %base.id, "page digests of the full snapshot are not cached here; reading it from the store");
    let part = &parts_of(base)[0];
    let sink = match BaseDigestsWriter::create(
        cache,
        &base.db,
        &base.id,
        base.page_size as u32,
        base.page_count,
    ) {
        Ok(s) => s,
        // Without a cache no incremental can be taken; a full still can, and says why.
        Err(e) => {
            return Ok(Err(format!(
                "the page digest cache cannot be written in {} ({e}); fix backup.cache_dir",
                cache.display()
            )))
        }
    };
    let reader = SnapshotReader::new(store, base, keys);
    let fetched = reader
        .fetch(
            part.key(&base.db),
            part.encryption.is_some(),
            part.stored_len,
            part.raw_len,
            sink,
        )
        .await?;
    let unreadable = |d: Damage| format!("the full snapshot {} cannot be read back: {d}", base.id);
    match fetched {
        Fetched::Done(d, sink) if d.raw_sha256 == base.raw_sha256 => {
            Ok(sink.commit(base.page_count).map_err(|e| {
                format!(
                    "the page digest cache cannot be written in {} ({e}); fix backup.cache_dir",
                    cache.display()
                )
            }))
        }
        Fetched::Done(d, _) => Ok(Err(unreadable(Damage::RawChecksum {
            expected: base.raw_sha256.clone(),
            actual: d.raw_sha256,
        }))),
        Fetched::Damaged(d) => Ok(Err(unreadable(d))),
        Fetched::SinkFailed(e, _) => Ok(Err(format!(
            "the page digest cache cannot be written in {} ({e}); fix backup.cache_dir",
            cache.display()
        ))),
    }
}

/// The digests of the pages that differ from the base at the parent, from the cache or else
/// from the parent's page sets in the store.
async fn load_overlay(
    store: &Arc<dyn Storage>,
    keys: &Keys,
    cache: &Path,
    chain: &Chain,
) -> Result<std::result::Result<Overlay, String>> {
    let (base, parent) = (&chain.base, &chain.parent);
    let DataLayout::Pages(c) = &parent.data else {
        return Ok(Ok(Overlay {
            page_count: base.page_count,
            pages: Default::default(),
        }));
    };
    if let Some(o) = Overlay::open(cache, &base.db, &base.id, &parent.id) {
        if o.page_count == parent.page_count {
            return Ok(Ok(o));
        }
    }
    info!(parent = %parent.id, "page digests of the last incremental are not cached here; reading its page sets from the store");
    let pages = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let reader = SnapshotReader::new(store, parent, keys);
    for part in &c.parts[1..] {
        let sink = {
            let pages = Arc::clone(&pages);
            PageSetParser::new(parent.page_size as u32, part.page_count, move |n, page| {
                let mut pages = pages.lock().expect("no panic holding the overlay");
                pages.insert(n, pageset::digest(page));
                Ok(())
            })
        };
        let fetched = reader
            .fetch(
                part.key(&parent.db),
                part.encryption.is_some(),
                part.stored_len,
                part.raw_len,
                sink,
            )
            .await?;
        let why = match fetched {
            Fetched::Done(d, parser) if d.raw_sha256 == part.raw_sha256 => parser.finish().err(),
            Fetched::Done(..) => Some("its raw SHA-256 is not the manifest's".into()),
            Fetched::Damaged(d) => Some(d.to_string()),
            Fetched::SinkFailed(e, parser) => {
                Some(parser.damage().map_or_else(|| e.to_string(), String::from))
            }
        };
        if let Some(why) = why {
            return Ok(Err(format!(
                "the incremental {} cannot be read back: {why}",
                parent.id
            )));
        }
        // Pages past a shrink are gone from the state.
        pages
            .lock()
            .expect("no panic holding the overlay")
            .retain(|n, _| u64::from(*n) <= part.page_count);
    }
    let pages = std::mem::take(&mut *pages.lock().expect("no panic holding the overlay"));
    let overlay = Overlay {
        page_count: parent.page_count,
        pages,
    };
    if let Err(e) = overlay.save(cache, &base.db, &base.id, &parent.id) {
        tracing::warn!(error = %e, "could not cache the page digests");
    }
    Ok(Ok(overlay))
}

/// What the scan needs.
struct ScanPlan {
    source: PathBuf,
    check: CheckKind,
    cache: PathBuf,
    db: String,
    base: SnapshotId,
    /// The parent's page size: another one now means a full.
    page_size: u64,
    /// The parent's state: which pages differ from the base, and its page count.
    overlay: Overlay,
    /// The fraction of pages that may differ from the base.
    max_changed: f64,
}

impl ScanPlan {
    /// A failed check of the live database: it is damaged, nothing is published.
    fn checked(&self, outcome: crate::snapshot::CheckOutcome) -> std::result::Result<(), Stop> {
        outcome.map_err(|problems| {
            Stop::Failed(Error::Integrity {
                what: format!("{} ({})", self.db, self.source.display()),
                detail: format!(
                    "PRAGMA {} reported: {}; the source database is damaged, no snapshot was published",
                    self.check.pragma(),
                    problems.join("; ")
                ),
            })
        })
    }
}

/// What the scan found.
struct Scanned {
    inspection: Inspection,
    journal_mode: String,
    raw_sha256: Sha256Hex,
    /// The new state: pages that differ from the base.
    overlay: Overlay,
}

/// Why the scan stopped.
enum Stop {
    /// Take a full instead.
    Full(String),
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// The read transaction: check, inspect, and stream the differing pages into `out`. The check
/// runs on other connections proven to read the same committed state (`ReadSnapshot`), on other
/// cores, alongside the page reads; where they cannot be had, in this transaction, first.
fn scan(
    plan: &ScanPlan,
    out: &mut PipeWriter,
    pages: &AtomicU64,
) -> std::result::Result<Scanned, Stop> {
    // More connections for the check, on other cores, beside the page reads: `quick_check` is
    // one pass (one connection); `integrity_check` splits over one per core (see
    // `snapshot::check`).
    let readers = match plan.check {
        CheckKind::QuickCheck => 1,
        CheckKind::IntegrityCheck => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let mut snap = ReadSnapshot::begin_with_readers(&plan.source, readers)?;
    let Some(alongside) = snap.take_check(plan.check) else {
        let started = std::time::Instant::now();
        plan.checked(snap.check(plan.check)?)?;
        tracing::debug!(
            check_ms = started.elapsed().as_millis() as u64,
            "the check ran in the read transaction, before the page reads"
        );
        return read_pages(plan, snap, out, pages);
    };
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let checking = s.spawn(move || {
            let verdict = alongside.run();
            (verdict, started.elapsed())
        });
        let read = read_pages(plan, snap, out, pages);
        let (verdict, took) = checking.join().expect("the check does not panic");
        tracing::debug!(
            check_ms = took.as_millis() as u64,
            read_ms = started.elapsed().as_millis() as u64,
            "the check ran alongside the page reads"
        );
        // A damaged database is that, whatever the page reads found; a check that could not
        // run fails the snapshot when the reads did not fail first.
        match verdict {
            Ok(outcome) => plan.checked(outcome)?,
            Err(e) if read.is_ok() => return Err(Stop::Failed(e)),
            Err(_) => {}
        }
        read
    })
}

/// Inspect, then stream the pages that differ from the parent's into `out`, hashing all of
/// them, and end the transaction.
fn read_pages(
    plan: &ScanPlan,
    snap: ReadSnapshot,
    out: &mut PipeWriter,
    pages: &AtomicU64,
) -> std::result::Result<Scanned, Stop> {
    let inspection = snap.inspect()?;
    if inspection.page_size != plan.page_size {
        return Err(Stop::Full(format!(
            "the page size changed from {} to {} bytes",
            plan.page_size, inspection.page_size
        )));
    }
    let mut base = BaseDigests::open(&plan.cache, &plan.db, &plan.base)
        .ok_or_else(|| Stop::Full("the page digest cache of the full snapshot vanished".into()))?;
    let limit = (plan.max_changed * inspection.page_count as f64) as usize;
    let mut hash = Sha256::new();
    let mut changed = Overlay {
        page_count: inspection.page_count,
        pages: Default::default(),
    };
    let io_err = |e: io::Error| Stop::Failed(Error::io("stream pages of", &plan.source, e));
    out.put(&pageset::header(inspection.page_size as u32))
        .map_err(io_err)?;
    let mut full_why = None;
    snap.for_each_page(|pgno, page| {
        let d = pageset::digest(page);
        let n = u64::from(pgno);
        let in_base = (n <= base.page_count)
            .then(|| base.next_digest())
            .transpose()
            .map_err(|e| Error::io("read page digest cache in", &plan.cache, e))?;
        let before = (n <= plan.overlay.page_count)
            .then(|| plan.overlay.pages.get(&pgno).copied().or(in_base))
            .flatten();
        if before != Some(d) {
            out.put(&pgno.to_be_bytes())
                .and_then(|()| out.put(page))
                .map_err(|e| Error::io("stream pages of", &plan.source, e))?;
            pages.fetch_add(1, Ordering::SeqCst);
        }
        if in_base != Some(d) {
            changed.pages.insert(pgno, d);
            if changed.pages.len() > limit {
                full_why = Some(format!(
                    "more than {:.0}% of the pages differ from the full snapshot {}",
                    plan.max_changed * 100.0,
                    plan.base
                ));
                return Err(Error::Internal("stop".into()));
            }
        }
        hash.update(page);
        Ok(())
    })
    .map_err(|e| match full_why.take() {
        Some(why) => Stop::Full(why),
        None => Stop::Failed(e),
    })?;
    let journal_mode = snap.journal_mode.clone();
    snap.end()?;
    out.finish().map_err(io_err)?;
    Ok(Scanned {
        inspection,
        journal_mode,
        raw_sha256: Sha256Hex::from_digest(&hash.finalize()),
        overlay: changed,
    })
}

/// Bytes per chunk handed from the scan to the compressor.
const CHUNK: usize = 256 << 10;

/// The scan's end of the pipe to the compressor.
struct PipeWriter {
    tx: SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl PipeWriter {
    fn new(tx: SyncSender<io::Result<Vec<u8>>>) -> Self {
        PipeWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx
                .send(Ok(chunk))
                .map_err(|_| io::Error::other("the upload stopped"))?;
        }
        Ok(())
    }

    /// Send what is left; dropping the sender then ends the stream.
    fn finish(&mut self) -> io::Result<()> {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.tx
                .send(Ok(rest))
                .map_err(|_| io::Error::other("the upload stopped"))?;
        }
        Ok(())
    }
}

/// The compressor's end of the pipe: a `Read` over the chunks the scan sends.
struct PipeReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl PipeReader {
    fn new(rx: Receiver<io::Result<Vec<u8>>>) -> Self {
        PipeReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the scan finished
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
