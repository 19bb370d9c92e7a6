//! The storage boundary: a narrow, object-safe trait over "a place snapshots live", and the
//! validated [`ObjectKey`] every store uses.
//!
//! Stores are dumb byte stores: they know nothing of snapshots, manifests, naming or retention
//! (that is `manifest` and `catalog`). Every backend maps "absent" to [`StorageError::NotFound`],
//! so callers never match on SDK types. Bodies move as bounded channels of chunks, so a 10 GB
//! snapshot streams through in constant memory and compression, hashing and upload overlap.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

pub mod config;
pub mod diagnose;
pub mod local;
pub mod s3;

pub use config::{StorageConfig, StorageKind, StorageTable};
use diagnose::Checks;

/// Size of the chunks bodies are cut into.
pub const CHUNK_SIZE: usize = 1 << 20;
/// How many chunks a body channel holds before the producer waits (memory bound).
pub const CHANNEL_DEPTH: usize = 2;

/// A stream of body chunks. An `Err` item aborts the transfer: nothing is stored.
pub type Body = mpsc::Receiver<std::io::Result<Bytes>>;
/// The sending half of a [`Body`].
pub type BodySender = mpsc::Sender<std::io::Result<Bytes>>;

/// A new bounded body channel.
pub fn body_channel() -> (BodySender, Body) {
    mpsc::channel(CHANNEL_DEPTH)
}

/// How `put_bytes` treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] if the key exists (where the store can tell).
    IfAbsent,
}

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: ObjectKey,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// A place snapshots live. Implementations are dumb byte stores: no naming policy, no retention.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where this store points, for logs and `status`: `s3://bucket/prefix`, `file:///var/backups`.
    fn location(&self) -> String;

    /// Store the chunks of `body` under `key`; returns the number of bytes stored.
    /// Readers see all of it or none of it; an `Err` chunk or a closed channel before the end is
    /// not an end: the producer signals the end by sending all chunks and dropping the sender.
    /// `size_hint` (the expected size, if known) lets a store pick its part size.
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        size_hint: Option<u64>,
    ) -> Result<u64, StorageError>;

    /// Store a small object (manifests, drill records) in one request.
    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError>;

    /// Stream the object at `key`. Errors with [`StorageError::NotFound`] if it is absent.
    async fn get_stream(&self, key: &ObjectKey) -> Result<Body, StorageError>;

    /// Read a small object whole; objects larger than `limit` bytes are refused.
    async fn get_bytes(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StorageError>;

    /// Every object whose key starts with `prefix`, sorted by key. Keys that are not valid
    /// [`ObjectKey`]s are skipped (and logged), never returned.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Delete `key`. Deleting an absent key is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// Remove this store's own leftovers of interrupted writes under `prefix` (temp files of
    /// dead processes, abandoned multipart uploads). Returns how many were removed. Never
    /// touches a complete object.
    async fn sweep(&self, _prefix: &str) -> Result<u64, StorageError> {
        Ok(0)
    }

    /// `guardian doctor`'s checks of this store, appended to `r`: the shared object probes
    /// ([`diagnose::objects`]) plus whatever this backend can check of its own.
    async fn diagnose(&self, r: &mut Checks) {
        diagnose::objects(self, r).await;
    }
}

/// An opened store and its name (`[[stores]]`' `name`; `primary` for `[storage]`).
#[derive(Debug, Clone)]
pub struct NamedStore {
    pub name: String,
    pub store: Arc<dyn Storage>,
}

impl NamedStore {
    /// `name (location)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.store.location())
    }
}

/// Open the store a config describes.
pub async fn open(cfg: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    match cfg {
        StorageConfig::Local(local) => Ok(Arc::new(local::LocalStorage::new(&local.path))),
        StorageConfig::S3(s3) => Ok(Arc::new(
            s3::S3Storage::connect(s3, s3::S3Options::default()).await?,
        )),
    }
}

/// Errors from a store, normalised across backends.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{key} not found in {location}")]
    NotFound { key: String, location: String },

    #[error("{key} already exists in {location}; refusing to overwrite it")]
    AlreadyExists { key: String, location: String },

    #[error(
        "{key} in {location} is {size} bytes, over the {limit}-byte limit for this kind of object"
    )]
    TooLarge {
        key: String,
        location: String,
        size: u64,
        limit: u64,
    },

    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    #[error("{op} {target} in {location}")]
    Io {
        op: &'static str,
        target: String,
        location: String,
        #[source]
        source: std::io::Error,
    },

    /// The remote service answered with an error (or could not be reached).
    #[error("{op} {target} in {location}: {message}{hint}", hint = hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Remote {
        op: &'static str,
        target: String,
        location: String,
        /// The provider's error code and message, or the transport failure.
        message: String,
        /// What the user may have got wrong, where we can guess.
        hint: Option<&'static str>,
    },

    /// The store refuses to delete (a bucket policy that protects backups, an object lock):
    /// retention is then the provider's business, not guardian's.
    #[error("delete {key} in {location} refused: {message}")]
    DeleteRefused {
        key: String,
        location: String,
        message: String,
    },

    /// The body producer failed or went away before the end; nothing was stored.
    #[error("upload of {key} to {location} aborted: {reason}")]
    Aborted {
        key: String,
        location: String,
        reason: String,
    },
}

impl StorageError {
    /// True for [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// A validated object key: `/`-separated components of `[A-Za-z0-9_][A-Za-z0-9._-]*`.
///
/// No `..`, no absolute paths, no backslashes, no control characters, no empty components, no
/// leading dots: a key read back from a listing can never name a path outside the store, and a
/// store's own temporary files (which start with a dot) are never mistaken for keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

/// Longest key accepted (S3 allows 1024 bytes; ours are far shorter).
const MAX_KEY_LEN: usize = 512;

impl ObjectKey {
    /// Validate `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        let invalid = |reason| StorageError::InvalidKey {
            key: key.clone(),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(invalid("too long"));
        }
        for part in key.split('/') {
            crate::names::validate_component(part).map_err(invalid)?;
        }
        Ok(ObjectKey(key))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().expect("split yields one item")
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_key_accepts_snapshot_keys() {
        for k in [
            "market/20261124T030000Z-a1b2c3d4/db.sqlite.gz",
            "market/20261124T030000Z-a1b2c3d4/manifest.json",
            "a",
            "db_1-x/y.z",
        ] {
            assert!(ObjectKey::new(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn object_key_rejects_escapes_and_oddities() {
        for k in [
            "",
            "/etc/x",
            "../x",
            "..\\x",
            "a/../../x",
            "a//b",
            "a/",
            "./a",
            "a/.tmp",
            "a\0b",
            "a\nb",
            "a b",
            "C:\\x",
            "ü",
        ] {
            assert!(ObjectKey::new(k).is_err(), "{k:?} should be rejected");
        }
        assert!(ObjectKey::new("x".repeat(MAX_KEY_LEN + 1)).is_err());
    }
}
