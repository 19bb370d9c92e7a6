//! The `[storage]` table: read as one flat TOML table, then handed to the backend its `kind`
//! names, which checks its own keys and builds its typed config ([`LocalConfig`],
//! [`S3Config`]).
//!
//! Why a flat table and not a serde-tagged enum: `kind` is optional (local is the default),
//! and a key of the other kind must be refused with a message that says which kind uses it,
//! not serde's "unknown field". Errors carry the dotted key under the table's own path (`at`,
//! `"storage"` today), so a list of stores can report `stores[1].bucket` with the same code.

use std::path::PathBuf;

use serde::Deserialize;

pub use super::local::LocalConfig;
pub use super::s3::S3Config;

/// Which kind of store holds the snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A local directory (the default).
    #[default]
    Local,
    /// An S3-compatible bucket (AWS S3, MinIO, Garage, R2, B2); see `docs/S3.md`.
    S3,
}

impl StorageKind {
    /// The name used in the config (`kind = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Local => "local",
            StorageKind::S3 => "s3",
        }
    }
}

/// `[storage]` as written in the file: every key of every backend. Only read; the backend
/// named by `kind` turns it into a [`StorageConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageTable {
    /// The store's name, in a `[[stores]]` table only (1-32 of `[a-z0-9_-]`): what `list`,
    /// `restore --store`, `status` and the metrics' `store` label call it.
    pub name: Option<String>,
    /// `"local"` (default) or `"s3"`.
    #[serde(default)]
    pub kind: StorageKind,
    /// Local store root (kind = "local"); relative to the config file's folder.
    pub path: Option<PathBuf>,
    /// Bucket name (kind = "s3", required).
    pub bucket: Option<String>,
    /// Folder inside the bucket that holds everything guardian writes (kind = "s3"); `/`-separated
    /// components of `[A-Za-z0-9_][A-Za-z0-9._-]*`. Default: the bucket root.
    pub prefix: Option<String>,
    /// Region (kind = "s3"); `"auto"` for R2. Default: `AWS_REGION` or the profile's, else
    /// `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service (kind = "s3"), e.g. `http://127.0.0.1:9000`.
    /// Default: AWS.
    pub endpoint: Option<String>,
    /// Address the bucket as `endpoint/bucket` instead of `bucket.endpoint` (kind = "s3");
    /// needed by MinIO, Garage and most S3-compatible services. Default: false.
    pub force_path_style: Option<bool>,
    /// How long one S3 request may wait for its answer before it is given up and retried
    /// (kind = "s3"), e.g. `"60s"`; a download may go twice that without data, and a part
    /// upload gets at least the time a part needs at 64 KiB/s. A store that stays silent fails
    /// after 4 attempts. 1s to 1h. Default: `"60s"`.
    pub timeout: Option<String>,
    /// The profile of the shared AWS files (`~/.aws/credentials`, `~/.aws/config`) whose
    /// credentials this store uses (kind = "s3"), e.g. for two providers' keys side by side.
    /// Default: the standard AWS chain (`AWS_ACCESS_KEY_ID`..., `AWS_PROFILE`, roles).
    pub profile: Option<String>,
}

/// The store when the config has no `[storage]` table.
pub const DEFAULT_LOCAL_PATH: &str = "/var/backups/guardian";

impl Default for StorageTable {
    fn default() -> Self {
        StorageTable {
            name: None,
            kind: StorageKind::Local,
            path: Some(PathBuf::from(DEFAULT_LOCAL_PATH)),
            bucket: None,
            prefix: None,
            region: None,
            endpoint: None,
            force_path_style: None,
            timeout: None,
            profile: None,
        }
    }
}

impl StorageTable {
    /// The keys that are set, by name (`kind` aside).
    pub(crate) fn set_keys(&self) -> [(&'static str, bool); 8] {
        [
            ("path", self.path.is_some()),
            ("bucket", self.bucket.is_some()),
            ("prefix", self.prefix.is_some()),
            ("region", self.region.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("force_path_style", self.force_path_style.is_some()),
            ("timeout", self.timeout.is_some()),
            ("profile", self.profile.is_some()),
        ]
    }

    /// The first key set that `kind` does not use, if any (`own` lists the keys it uses).
    pub(crate) fn foreign_key(&self, own: &[&str]) -> Option<&'static str> {
        self.set_keys()
            .into_iter()
            .find(|(k, set)| *set && !own.contains(k))
            .map(|(k, _)| k)
    }
}

/// A key of a storage table whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey {
    /// The dotted key, e.g. `storage.bucket`.
    pub key: String,
    /// What is wrong and what to do.
    pub reason: String,
}

impl InvalidKey {
    /// The key `name` of the table at `at`.
    pub(crate) fn new(at: &str, name: &str, reason: impl Into<String>) -> Self {
        InvalidKey {
            key: format!("{at}.{name}"),
            reason: reason.into(),
        }
    }
}

/// Where snapshots live: one backend's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// A folder on this machine (`kind = "local"`).
    Local(LocalConfig),
    /// An S3-compatible bucket (`kind = "s3"`).
    S3(S3Config),
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig::Local(LocalConfig {
            path: PathBuf::from(DEFAULT_LOCAL_PATH),
        })
    }
}

impl StorageConfig {
    /// Check the table at `at` (e.g. `"storage"`) with the backend its `kind` names.
    pub fn from_table(table: &StorageTable, at: &str) -> Result<StorageConfig, InvalidKey> {
        Ok(match table.kind {
            StorageKind::Local => StorageConfig::Local(LocalConfig::from_table(table, at)?),
            StorageKind::S3 => StorageConfig::S3(S3Config::from_table(table, at)?),
        })
    }

    /// The folder on this machine that holds the store's objects, if any (a restore target
    /// inside it is refused).
    pub fn local_root(&self) -> Option<&std::path::Path> {
        match self {
            StorageConfig::Local(l) => Some(&l.path),
            StorageConfig::S3(_) => None,
        }
    }

    /// Which kind of store this is.
    pub fn kind(&self) -> StorageKind {
        match self {
            StorageConfig::Local(_) => StorageKind::Local,
            StorageConfig::S3(_) => StorageKind::S3,
        }
    }
}
