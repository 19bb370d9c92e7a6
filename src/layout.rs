//! How a snapshot's bytes go into the store and come back out: [`SnapshotWriter`] (backup) and
//! [`SnapshotReader`] (restore, drill, verify), over the data layouts a manifest can name
//! ([`DataLayout`]).
//!
//! Today's one layout, [`DataLayout::Whole`], is the database file in one object: gzip in
//! parallel members, then age when encrypted, hashed on both sides in the same pass. A new
//! layout (page sets for incremental snapshots) adds a variant to `DataLayout` and one arm to
//! each `match` here; callers keep asking for "the data of this copy" and "the verified raw
//! bytes of this snapshot".
//!
//! Invariants: the manifest is written last and only by [`SnapshotWriter::publish`]; a reader
//! hands out bytes only together with proof that their raw SHA-256 is the manifest's, and
//! reports bad data as [`Damage`], never as an operational error.

mod chain;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::archive::{self, BodyReader, Digests, ExtractError};
use crate::config::BackupConfig;
use crate::crypto::Keys;
use crate::damage::Damage;
use crate::error::{Error, Result};
use crate::manifest::{
    DataLayout, Manifest, Part, PartContent, Sha256Hex, SnapshotKey, StoredObject, WholeObject,
    DATA_OBJECT, DATA_OBJECT_AGE, PAGES_OBJECT, PAGES_OBJECT_AGE,
};
use crate::progress::Progress;
use crate::storage::{body_channel, NamedStore, ObjectKey, PutMode, Storage};

/// What [`SnapshotWriter::write`] stored: the layout for the manifest, and the raw side's
/// size and digest.
#[derive(Debug, Clone)]
pub struct Written {
    pub data: DataLayout,
    pub raw_len: u64,
    pub raw_sha256: Sha256Hex,
}

/// Writes one new snapshot to every store of its database: its data objects, then (once the
/// caller has proved the copy good) its manifest, last. The bytes are produced once and go to
/// every store at the same time; a store that fails drops out (its error kept for
/// [`SnapshotWriter::missed`]) and the others go on. The snapshot fails only when no store is
/// left.
#[derive(Debug)]
pub struct SnapshotWriter {
    targets: Vec<Target>,
    key: SnapshotKey,
    level: u32,
    threads: usize,
    keys: Keys,
}

/// One store a [`SnapshotWriter`] writes to, and why it dropped out, if it did.
#[derive(Debug)]
struct Target {
    name: String,
    store: Arc<dyn Storage>,
    failed: std::sync::Mutex<Option<Error>>,
}

impl Target {
    fn live(&self) -> bool {
        self.failed.lock().expect("never poisoned").is_none()
    }

    fn fail(&self, e: Error) {
        let mut f = self.failed.lock().expect("never poisoned");
        if f.is_none() {
            tracing::warn!(store = %self.name, error = %crate::error::chain(&e), "the snapshot did not reach this store");
            *f = Some(e);
        }
    }
}

impl SnapshotWriter {
    /// A writer for the snapshot `key` to `stores` (in config order),
    /// compressing and encrypting as `opts` and `keys` say.
    pub fn new(stores: &[NamedStore], key: SnapshotKey, opts: &BackupConfig, keys: &Keys) -> Self {
        SnapshotWriter {
            targets: stores
                .iter()
                .map(|s| Target {
                    name: s.name.clone(),
                    store: Arc::clone(&s.store),
                    failed: std::sync::Mutex::new(None),
                })
                .collect(),
            key,
            level: opts.compression_level(),
            threads: opts.threads(),
            keys: keys.clone(),
        }
    }

    /// The stores that hold everything written so far, in config order.
    pub fn landed(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.live())
            .map(|t| t.name.clone())
            .collect()
    }

    /// The stores that dropped out, each with why (one line), in config order.
    pub fn missed(&self) -> Vec<(String, String)> {
        self.targets
            .iter()
            .filter_map(|t| {
                let f = t.failed.lock().expect("never poisoned");
                f.as_ref().map(|e| (t.name.clone(), crate::error::chain(e)))
            })
            .collect()
    }

    /// The stores still in, for what is done after the snapshot is published (sweeps, caches).
    pub fn live_stores(&self) -> Vec<Arc<dyn Storage>> {
        self.targets
            .iter()
            .filter(|t| t.live())
            .map(|t| Arc::clone(&t.store))
            .collect()
    }

    /// Drop `name` before anything is written to it (it cannot take this snapshot: say, an
    /// incremental whose chain it lacks).
    pub fn exclude(&self, name: &str, why: Error) {
        if let Some(t) = self.targets.iter().find(|t| t.name == name) {
            t.fail(why);
        }
    }

    /// The first live store's error when none is left, else `Ok`.
    fn any_live(&self) -> Result<()> {
        if self.targets.iter().any(Target::live) {
            return Ok(());
        }
        // Report the first store's error: with one store, exactly what it said. (Its place
        // keeps the same words, so that the store still counts as failed.)
        let first = self.targets.first().and_then(|t| {
            let mut failed = t.failed.lock().expect("never poisoned");
            let e = failed.take()?;
            *failed = Some(Error::Gone(crate::error::chain(&e)));
            Some(e)
        });
        Err(first.unwrap_or_else(|| Error::Internal("a snapshot writer with no store".into())))
    }

    /// Store the data of the raw database file at `copy` (`raw_len` bytes) in one streaming
    /// pass: hash, compress on every core, encrypt, upload. Setting `abort` (the copy failed
    /// its check) stops the pass: the upload is abandoned and nothing is stored.
    ///
    /// # Errors
    /// The upload's error when it failed (the compressor then only saw "upload stopped"), else
    /// the compressor's; a store that took another byte count than was produced is damage.
    pub async fn write(
        &self,
        copy: &Path,
        raw_len: u64,
        abort: &Arc<AtomicBool>,
    ) -> Result<Written> {
        let object = self.object_name(DATA_OBJECT, DATA_OBJECT_AGE);
        let src = File::open(copy).map_err(|e| Error::io("open copy", copy, e))?;
        let digests = self
            .store_stream(object, Box::new(src), Some(raw_len), abort)
            .await?;
        Ok(Written {
            data: DataLayout::Whole(WholeObject {
                object: object.to_string(),
                compression: "gzip".into(),
                compression_level: self.level,
                encryption: self.encryption(),
                recipients_sha256: self.keys.recipients_sha256(),
                stored_len: digests.stored_len,
                stored_sha256: digests.stored_sha256,
            }),
            raw_len: digests.raw_len,
            raw_sha256: digests.raw_sha256,
        })
    }

    /// Store an incremental's page set, streamed from `src` (see `pageset`), as this
    /// snapshot's own part; `pages` counts its records (the caller sets `page_count`).
    /// Setting `abort` stops the pass as in [`SnapshotWriter::write`]; an error from `src`
    /// stops it too.
    pub async fn write_pages(
        &self,
        src: Box<dyn Read + Send>,
        pages: &Arc<std::sync::atomic::AtomicU64>,
        abort: &Arc<AtomicBool>,
    ) -> Result<Part> {
        let object = self.object_name(PAGES_OBJECT, PAGES_OBJECT_AGE);
        let d = self.store_stream(object, src, None, abort).await?;
        Ok(Part {
            snapshot: self.key.id.clone(),
            object: object.to_string(),
            content: PartContent::Pages,
            compression: "gzip".into(),
            encryption: self.encryption(),
            recipients_sha256: self.keys.recipients_sha256(),
            stored_len: d.stored_len,
            stored_sha256: d.stored_sha256,
            raw_len: d.raw_len,
            raw_sha256: d.raw_sha256,
            page_count: 0,
            pages: pages.load(Ordering::SeqCst),
        })
    }

    fn object_name(&self, plain: &'static str, age: &'static str) -> &'static str {
        if self.keys.encrypts() {
            age
        } else {
            plain
        }
    }

    fn encryption(&self) -> Option<String> {
        self.keys.encrypts().then(|| "age".to_string())
    }

    /// One streaming pass: hash, compress on every core, encrypt, upload `src` as `object`.
    async fn store_stream(
        &self,
        object: &str,
        src: Box<dyn Read + Send>,
        raw_len: Option<u64>,
        abort: &Arc<AtomicBool>,
    ) -> Result<Digests> {
        let encryptor = self.keys.encryptor();
        let data_key = self.key.object(object);
        // One bounded body channel per live store, all fed from the one pass: the slowest
        // store sets the pace, and memory stays CHANNEL_DEPTH chunks per store.
        let live: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].live())
            .collect();
        let (senders, bodies): (Vec<_>, Vec<_>) = live.iter().map(|_| body_channel()).unzip();
        let pipeline = {
            let abort = Arc::clone(abort);
            let (level, threads, db) = (self.level, self.threads, self.key.db.clone());
            let what = data_key.to_string();
            tokio::task::spawn_blocking(move || {
                let progress = Progress::start("compress+upload", &db, raw_len);
                let mut senders: Vec<Option<_>> = senders.into_iter().map(Some).collect();
                let digests = archive::compress(
                    src,
                    level,
                    threads,
                    &|n| progress.set(n),
                    encryptor,
                    |chunk: Bytes| {
                        if abort.load(Ordering::SeqCst) {
                            return Err(std::io::Error::other("the copy failed its check"));
                        }
                        for tx in senders.iter_mut() {
                            // A store whose upload ended (failed) drops out; the others go on.
                            if tx
                                .as_ref()
                                .is_some_and(|t| t.blocking_send(Ok(chunk.clone())).is_err())
                            {
                                *tx = None;
                            }
                        }
                        if senders.iter().all(Option::is_none) {
                            return Err(std::io::Error::other("upload stopped"));
                        }
                        Ok(())
                    },
                )
                .map_err(|e| Error::Io {
                    op: "compress",
                    path: what.into(),
                    source: e,
                });
                match &digests {
                    Ok(d) => progress.finish(d.raw_len),
                    // Tell every store the body is incomplete, so that nothing is published.
                    Err(e) => {
                        for tx in senders.iter().flatten() {
                            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        }
                    }
                }
                digests
            })
        };
        let mut uploads = tokio::task::JoinSet::new();
        for (&i, body) in live.iter().zip(bodies) {
            let (store, key) = (Arc::clone(&self.targets[i].store), data_key.clone());
            uploads.spawn(async move { (i, store.put_stream(&key, body, raw_len).await) });
        }
        let (results, digests) = tokio::join!(uploads.join_all(), pipeline);
        let digests = digests.expect("compressor does not panic");
        let digests = match digests {
            Ok(d) => d,
            Err(e) => {
                // The compressor stops with "upload stopped" only when every upload failed:
                // then the first store's error is the cause; else its own error is.
                let mut uploads: Vec<_> = results.into_iter().collect();
                uploads.sort_by_key(|(i, _)| *i);
                if uploads.iter().all(|(_, r)| r.is_err()) {
                    if let Some((_, Err(upload))) = uploads.into_iter().next() {
                        return Err(upload.into());
                    }
                }
                return Err(e);
            }
        };
        for (i, r) in results {
            match r {
                Ok(stored) if stored == digests.stored_len => {}
                Ok(stored) => self.targets[i].fail(Error::Damaged {
                    id: self.key.id.to_string(),
                    damage: Damage::UploadShort {
                        stored,
                        produced: digests.stored_len,
                    },
                    remedy: None,
                }),
                Err(upload) => self.targets[i].fail(upload.into()),
            }
        }
        self.any_live()?;
        Ok(digests)
    }

    /// Remove the data objects of a copy that will not be published (it failed its check),
    /// from every store. Failures are logged: an unpublished object is an orphan that prune
    /// removes later.
    pub async fn discard(&self, data: &DataLayout) {
        // Only this snapshot's own objects: an incremental names its base's too.
        let keys = match data {
            DataLayout::Whole(w) => vec![self.key.object(&w.object)],
            DataLayout::Pages(c) => vec![c.own().key(&self.key.db)],
        };
        for t in &self.targets {
            for key in &keys {
                if let Err(e) = t.store.delete(key).await {
                    tracing::warn!(store = %t.name, key = %key, error = %crate::error::chain(&e), "could not delete the data object of a rejected copy");
                }
            }
        }
    }

    /// Write the manifest, last, to every store that holds the data: from here on the
    /// snapshot exists there. Never overwrites one. Fails only when no store took it.
    pub async fn publish(&self, manifest: &Manifest) -> Result<()> {
        let body = Bytes::from(manifest.to_json());
        let mut puts = tokio::task::JoinSet::new();
        for (i, t) in self.targets.iter().enumerate().filter(|(_, t)| t.live()) {
            let (store, key, body) = (Arc::clone(&t.store), self.key.manifest(), body.clone());
            puts.spawn(async move { (i, store.put_bytes(&key, body, PutMode::IfAbsent).await) });
        }
        for (i, r) in puts.join_all().await {
            if let Err(e) = r {
                self.targets[i].fail(e.into());
            }
        }
        self.any_live()
    }
}

/// What [`SnapshotReader::fetch`] gave.
pub(crate) enum Fetched<W> {
    /// Every byte went into the sink: the digests of both sides, and the sink back.
    Done(Digests, W),
    /// The stored object is missing or not a valid stream.
    Damaged(Damage),
    /// The sink refused a write.
    SinkFailed(std::io::Error, W),
}

/// Reads one snapshot back, proving every byte against its manifest.
pub struct SnapshotReader {
    store: Arc<dyn Storage>,
    manifest: Manifest,
    keys: Keys,
}

impl SnapshotReader {
    /// A reader of the snapshot `manifest` describes, decrypting with `keys` where needed.
    pub fn new(store: &Arc<dyn Storage>, manifest: &Manifest, keys: &Keys) -> Self {
        SnapshotReader {
            store: Arc::clone(store),
            manifest: manifest.clone(),
            keys: keys.clone(),
        }
    }

    /// Write the snapshot's raw database into `file` (at `path`, named in errors): fetch,
    /// decrypt, decompress, and check the stored and raw sizes and SHA-256s against the
    /// manifest. `Ok(Err(damage))`: the snapshot is bad, and `file` holds garbage.
    ///
    /// # Errors
    /// Operational failures only: the store is unreachable, the disk is full, no key fits.
    pub async fn read_into(
        &self,
        file: &File,
        path: &Path,
    ) -> Result<std::result::Result<Digests, Damage>> {
        match &self.manifest.data {
            DataLayout::Whole(w) => self.read_whole(w, file, path).await,
            DataLayout::Pages(c) => chain::rebuild(self, c, file, path).await,
        }
    }

    async fn read_whole(
        &self,
        w: &WholeObject,
        file: &File,
        path: &Path,
    ) -> Result<std::result::Result<Digests, Damage>> {
        let m = &self.manifest;
        let data_key = m.key().object(&w.object);
        let body = match self.store.get_stream(&data_key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(Err(Damage::ObjectMissing(w.object.clone()))),
            Err(e) => return Err(e.into()),
        };
        let identities = match &w.encryption {
            Some(_) => Some(
                self.keys
                    .decryption_identities(&format!("snapshot {}", m.id))?,
            ),
            None => None,
        };
        let file = file.try_clone().map_err(|e| Error::io("reopen", path, e))?;
        let (path, db, id, raw_len) = (path.to_path_buf(), m.db.clone(), m.id.clone(), m.raw_len);
        let stored_len = w.stored_len;
        let extracted = tokio::task::spawn_blocking(move || {
            let progress = Progress::start("download+restore", &db, Some(stored_len));
            let mut out = BufWriter::with_capacity(1 << 20, &file);
            let digests = archive::extract(
                BodyReader::new(body),
                &mut out,
                raw_len,
                identities.as_ref().map(|ids| ids.as_slice()),
                &|n| progress.set(n),
            );
            let digests = match digests {
                Ok(d) => d,
                Err(ExtractError::Data(e)) => return Ok(Err(Damage::Undecodable(e.to_string()))),
                Err(ExtractError::Key(e)) => {
                    return Err(Error::Config(format!(
                        "snapshot {id}: {e}; check encryption.identity_file"
                    )))
                }
                Err(ExtractError::Source(e)) => {
                    return Err(Error::Io {
                        op: "download",
                        path: data_key.as_str().into(),
                        source: e,
                    })
                }
                Err(ExtractError::Sink(e)) => return Err(Error::io("restore into", &path, e)),
            };
            out.flush().map_err(|e| Error::io("write", &path, e))?;
            progress.finish(digests.stored_len);
            Ok(Ok(digests))
        })
        .await
        .expect("download worker does not panic")?;
        Ok(extracted.and_then(|d| self.prove(w, d)))
    }

    /// The manifest this reader proves bytes against.
    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Fetch the stored object `key`, decrypt it when `encrypted`, and decompress it into
    /// `sink` (at most `max_raw_len` bytes), hashing both sides. Bad stored data is
    /// [`Fetched::Damaged`]; a sink that refused the bytes is [`Fetched::SinkFailed`], for the
    /// caller to tell bad content (a page set that does not parse) from a failing disk.
    ///
    /// # Errors
    /// The store could not be read, or no key fits.
    pub(crate) async fn fetch<W: Write + Send + 'static>(
        &self,
        key: ObjectKey,
        encrypted: bool,
        stored_len: u64,
        max_raw_len: u64,
        sink: W,
    ) -> Result<Fetched<W>> {
        self.fetch_with(key, encrypted, stored_len, max_raw_len, sink, true)
            .await
    }

    /// [`SnapshotReader::fetch`], hashing the raw side only when `hash_raw` (else the
    /// digests' `raw_sha256` is all zeros: the caller proves the bytes another way).
    pub(crate) async fn fetch_with<W: Write + Send + 'static>(
        &self,
        key: ObjectKey,
        encrypted: bool,
        stored_len: u64,
        max_raw_len: u64,
        mut sink: W,
        hash_raw: bool,
    ) -> Result<Fetched<W>> {
        let m = &self.manifest;
        let body = match self.store.get_stream(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Ok(Fetched::Damaged(Damage::ObjectMissing(key.to_string())))
            }
            Err(e) => return Err(e.into()),
        };
        let identities = match encrypted {
            true => Some(
                self.keys
                    .decryption_identities(&format!("snapshot {}", m.id))?,
            ),
            false => None,
        };
        let (db, id) = (m.db.clone(), m.id.clone());
        tokio::task::spawn_blocking(move || {
            let progress = Progress::start("download+restore", &db, Some(stored_len));
            let got = archive::extract_with(
                BodyReader::new(body),
                &mut sink,
                max_raw_len,
                identities.as_ref().map(|ids| ids.as_slice()),
                &|n| progress.set(n),
                hash_raw,
            )
            .map(|(d, _)| d);
            match got {
                Ok(d) => {
                    progress.finish(d.stored_len);
                    Ok(Fetched::Done(d, sink))
                }
                Err(ExtractError::Data(e)) => {
                    Ok(Fetched::Damaged(Damage::Undecodable(format!("{key}: {e}"))))
                }
                Err(ExtractError::Key(e)) => Err(Error::Config(format!(
                    "snapshot {id}: {e}; check encryption.identity_file"
                ))),
                Err(ExtractError::Source(e)) => Err(Error::Io {
                    op: "download",
                    path: key.as_str().into(),
                    source: e,
                }),
                Err(ExtractError::Sink(e)) => Ok(Fetched::SinkFailed(e, sink)),
            }
        })
        .await
        .expect("download worker does not panic")
    }

    /// The digests of a whole read against the manifest.
    fn prove(&self, w: &WholeObject, d: Digests) -> std::result::Result<Digests, Damage> {
        let m = &self.manifest;
        if d.stored_len != w.stored_len || d.stored_sha256 != w.stored_sha256 {
            return Err(Damage::StoredChecksum {
                expected_len: w.stored_len,
                expected: w.stored_sha256.clone(),
                actual_len: d.stored_len,
                actual: d.stored_sha256,
            });
        }
        if d.raw_len != m.raw_len || d.raw_sha256 != m.raw_sha256 {
            return Err(Damage::RawChecksum {
                expected: m.raw_sha256.clone(),
                actual: d.raw_sha256,
            });
        }
        Ok(d)
    }

    /// Re-read one part of an incremental's chain and check its stored size and SHA-256.
    ///
    /// # Errors
    /// The object could not be read (store unreachable, I/O error).
    pub async fn verify_part(&self, part: &Part) -> Result<std::result::Result<(), Damage>> {
        self.verify_objects(vec![StoredObject {
            key: part.key(&self.manifest.db),
            len: part.stored_len,
            sha256: part.stored_sha256.clone(),
        }])
        .await
    }

    /// Re-read every stored object and check its size and SHA-256, without decompressing
    /// (bit rot in the store). `Ok(Err(damage))`: an object is missing or not what the
    /// manifest recorded.
    ///
    /// # Errors
    /// An object could not be read (store unreachable, I/O error).
    pub async fn verify_stored(&self) -> Result<std::result::Result<(), Damage>> {
        self.verify_objects(self.manifest.objects()).await
    }

    async fn verify_objects(
        &self,
        objects: Vec<StoredObject>,
    ) -> Result<std::result::Result<(), Damage>> {
        for StoredObject { key, len, sha256 } in objects {
            let body = match self.store.get_stream(&key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => {
                    return Ok(Err(Damage::ObjectMissing(key.file_name().to_string())))
                }
                Err(e) => return Err(e.into()),
            };
            let (got_len, got) =
                tokio::task::spawn_blocking(move || archive::digest(BodyReader::new(body)))
                    .await
                    .expect("digest does not panic")
                    .map_err(|e| Error::Io {
                        op: "read",
                        path: key.as_str().into(),
                        source: e,
                    })?;
            if got_len != len || got != sha256 {
                let own = self.manifest.key();
                return Ok(Err(
                    match crate::manifest::parse_key(&key).filter(|(sk, _)| *sk != own) {
                        // Another snapshot's folder: say which object, as restore does.
                        Some(_) => Damage::Part {
                            object: key.to_string(),
                            damage: Box::new(Damage::StoredChecksum {
                                expected_len: len,
                                expected: sha256,
                                actual_len: got_len,
                                actual: got,
                            }),
                        },
                        None => Damage::StoredChecksum {
                            expected_len: len,
                            expected: sha256,
                            actual_len: got_len,
                            actual: got,
                        },
                    },
                ));
            }
        }
        Ok(Ok(()))
    }
}
