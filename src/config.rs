//! The TOML configuration: parsing, defaults, path resolution and validation.
//!
//! `Config::parse_str` is pure; `Config::load` adds the file I/O. Every struct denies unknown
//! keys, and every error names the dotted key (`databases[0].name`) so the fix is obvious.
//! Secrets never live here: S3 credentials come from the AWS chain (see `docs/S3.md`). Every
//! key is documented in `config/guardian.example.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::storage::{StorageConfig, StorageTable};

mod service;
pub(crate) use service::check_url;
pub use service::{
    NotifyConfig, RetentionConfig, ServiceConfig, DEFAULT_KEEP_DELETE, DEFAULT_LISTEN,
    DEFAULT_SHUTDOWN_TIMEOUT, HEARTBEAT_ENV, WEBHOOK_ENV,
};

/// The name of the one store of a config with `[storage]` (or neither table).
pub const DEFAULT_STORE_NAME: &str = "primary";

/// One store: its name and its backend's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub name: String,
    pub storage: StorageConfig,
}

/// Where `guardian` looks for its config when `--config`/`GUARDIAN_CONFIG` are not given.
pub const SEARCH_PATHS: [&str; 2] = ["./guardian.toml", "/etc/guardian/guardian.toml"];

/// gzip level used when `backup.compression_level` is not set (see `docs/PERFORMANCE.md`).
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 1;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[storage]` as written (one store); checked and turned into [`Config::stores`] at load.
    #[serde(default, rename = "storage")]
    storage_table: Option<StorageTable>,
    /// `[[stores]]` as written (several named stores; not beside `[storage]`).
    #[serde(default, rename = "stores")]
    stores_table: Vec<StorageTable>,
    /// Where snapshots are stored, in config order: the `[[stores]]`, or the one `[storage]`
    /// (named [`DEFAULT_STORE_NAME`]), each checked by its backend. Never empty.
    #[serde(skip)]
    pub stores: Vec<StoreConfig>,
    /// How snapshots are taken.
    #[serde(default)]
    pub backup: BackupConfig,
    /// The databases to guard; names are unique.
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    /// `guardian run`: the metrics/health listener and shutdown.
    #[serde(default)]
    pub service: ServiceConfig,
    /// Alerts: webhook and heartbeat.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Client-side encryption of snapshots (optional).
    pub encryption: Option<EncryptionConfig>,
    /// The file this config was read from, if any (not a TOML key).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// Which SQLite check a fresh copy must pass before it is published: `"integrity"` (default)
/// or `"quick"` (`"integrity_check"` and `"quick_check"` are accepted too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `PRAGMA quick_check`: O(N), catches page-level damage, but not an index out of step
    /// with its table.
    #[serde(alias = "quick")]
    QuickCheck,
    /// `PRAGMA integrity_check`: also checks that every index matches its table (default;
    /// see `docs/PERFORMANCE.md` for its cost). Only a snapshot that passed it (here, in a
    /// drill or in a restore) lets retention delete older ones.
    #[default]
    #[serde(alias = "integrity")]
    IntegrityCheck,
}

impl CheckKind {
    /// The pragma name.
    pub fn pragma(self) -> &'static str {
        match self {
            CheckKind::QuickCheck => "quick_check",
            CheckKind::IntegrityCheck => "integrity_check",
        }
    }
}

/// `[backup]`: how snapshots are taken.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Folder for the temporary copy (needs room for one raw database), and for the
    /// databases' job locks (see `lock`). Default: `$TMPDIR`, else `/var/tmp` (disk-backed,
    /// unlike a tmpfs `/tmp`).
    pub staging_dir: Option<PathBuf>,
    /// gzip level 1-9.
    pub compression_level: Option<u32>,
    /// Compression threads; default: every core.
    pub threads: Option<usize>,
    /// Check run on the copy before it is published: "integrity" (default) or "quick"; a
    /// database's own `check` overrides it.
    #[serde(default)]
    pub check: CheckKind,
    /// Folder for the page digests incremental snapshots compare with (a cache, rebuilt from
    /// the store when lost). Default: `guardian.cache` in the staging folder.
    pub cache_dir: Option<PathBuf>,
    /// Check an incremental runs on the live database ("integrity" or "quick"); default:
    /// "quick". `integrity_check` of the live database is most of an incremental's time (at
    /// 1 GiB 0.57x a full's, against 0.28x with "quick"); fulls and drills still run
    /// the database's `check`, and a restore of a snapshot not proven by `integrity_check`
    /// runs it on the restored file.
    pub incremental_check: Option<CheckKind>,
    /// An incremental becomes a full when more than this share of the database's pages differ
    /// from its full snapshot: a percentage, `50` or `"50%"` (default 50%).
    pub incremental_max_changed: Option<Percent>,
}

/// A percentage in a config file: `50`, `12.5` or `"50%"`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "PercentRepr")]
pub struct Percent(pub f64);

#[derive(Deserialize)]
#[serde(untagged)]
enum PercentRepr {
    Number(f64),
    Text(String),
}

impl TryFrom<PercentRepr> for Percent {
    type Error = String;
    fn try_from(r: PercentRepr) -> std::result::Result<Self, String> {
        let v = match r {
            // 0.5 reads as a fraction to some and as half a percent to others: ask.
            PercentRepr::Number(n) if n > 0.0 && n < 1.0 => {
                return Err(format!(
                    "{n} is ambiguous: write {} for {}% or \"{n}%\" for {n}%",
                    n * 100.0,
                    n * 100.0
                ))
            }
            PercentRepr::Number(n) => n,
            PercentRepr::Text(t) => t
                .trim()
                .strip_suffix('%')
                .unwrap_or(&t)
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{t:?} is not a percentage (e.g. \"50%\")"))?,
        };
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!(
                "{v} is not a percentage between 0 (excluded) and 100"
            ));
        }
        Ok(Percent(v))
    }
}

impl BackupConfig {
    /// The page digest cache folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.staging_dir().join("guardian.cache"))
    }

    /// The share of pages (0 to 1) that may differ from the full before an incremental
    /// becomes a full.
    pub fn incremental_max_changed(&self) -> f64 {
        self.incremental_max_changed.map_or(0.5, |p| p.0 / 100.0)
    }

    /// The staging folder to use.
    pub fn staging_dir(&self) -> PathBuf {
        self.staging_dir.clone().unwrap_or_else(|| {
            std::env::var_os("TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        })
    }

    /// The gzip level to use.
    pub fn compression_level(&self) -> u32 {
        self.compression_level.unwrap_or(DEFAULT_COMPRESSION_LEVEL)
    }

    /// How many compression threads to run.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// `[encryption]`: encrypt every snapshot with age before it leaves the machine.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// age recipients (public keys, `age1...`) every new snapshot is encrypted to.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// File with the age identity (`AGE-SECRET-KEY-1...`) that decrypts snapshots, for restores
    /// and drills; relative to the config file's folder. A secret: keep it mode 0600.
    pub identity_file: Option<PathBuf>,
}

/// `[[databases]]`: one database to guard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `[a-z0-9_-]+`, unique; used in object keys.
    pub name: String,
    /// The live database file; relative to the config file's folder.
    pub path: PathBuf,
    /// Staleness alarm: `status` calls the database unhealthy when its newest snapshot is older
    /// than this (e.g. "26h"). Default: 26h.
    pub max_age: Option<String>,
    /// Backup schedule for `guardian run`: cron, 5 fields (`"0 3 * * *"`) or 6 with seconds.
    pub backup: Option<String>,
    /// Incremental snapshot schedule (cron, like `backup`), e.g. `"*/15 * * * *"`: the pages
    /// that changed since the newest full, which `backup` takes.
    pub incremental: Option<String>,
    /// Restore-drill schedule for `guardian run` (cron, like `backup`), e.g. `"30 4 * * sun"`.
    pub drill: Option<String>,
    /// IANA time zone the schedules (and retention's calendar days) are read in. Default: UTC.
    pub timezone: Option<String>,
    /// Random delay of up to this long before each scheduled run (e.g. "5m"), so that many
    /// hosts do not hit the store at once. Default: none.
    pub jitter: Option<String>,
    /// Which snapshots to keep; without this table no snapshot is ever deleted.
    pub retention: Option<RetentionConfig>,
    /// Mode of a database file that `restore` creates (none was at the target), as an octal
    /// string such as "0640"; it must give the owner read and write. A replaced file keeps its
    /// own mode and owner. Default: "0600".
    pub mode: Option<String>,
    /// Check run on this database's copy before it is published ("integrity" or "quick");
    /// default: `backup.check`.
    pub check: Option<CheckKind>,
    /// Check an incremental runs on the live database, in its read transaction; default:
    /// `backup.incremental_check`, else "quick".
    pub incremental_check: Option<CheckKind>,
    /// The `[[stores]]` (by name) this database is backed up to; default: every store.
    pub stores: Option<Vec<String>>,
}

/// `max_age` when none is configured: a daily backup plus two hours of slack.
pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(26 * 3600);

impl DatabaseConfig {
    /// The staleness threshold.
    pub fn max_age(&self) -> std::time::Duration {
        self.max_age
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(DEFAULT_MAX_AGE)
    }

    /// The time zone of the schedules (validated at load; UTC when unset).
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }

    /// The mode of a file `restore` creates (validated at load; 0600 when unset).
    pub fn mode(&self) -> u32 {
        self.mode
            .as_deref()
            .and_then(|m| parse_mode(m).ok())
            .unwrap_or(0o600)
    }

    /// The check a copy of this database gets before it is published.
    pub fn check(&self, backup: &BackupConfig) -> CheckKind {
        self.check.unwrap_or(backup.check)
    }

    /// The check an incremental runs on the live database: `incremental_check`, else
    /// `backup.incremental_check`, else `quick_check`: run every 15 minutes, the full's
    /// `integrity_check` would cost about 0.57x a full each time, while fulls, drills and
    /// restores keep proving integrity.
    pub fn incremental_check(&self, backup: &BackupConfig) -> CheckKind {
        self.incremental_check
            .or(backup.incremental_check)
            .unwrap_or(CheckKind::QuickCheck)
    }

    /// The jitter (zero when unset).
    pub fn jitter(&self) -> std::time::Duration {
        self.jitter
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or_default()
    }
}

impl Config {
    /// Parse and validate `text`; relative paths are resolved against `base_dir`.
    pub fn parse_str(text: &str, base_dir: &Path) -> Result<Config> {
        let de = toml::Deserializer::parse(text).map_err(|e| Error::Config(one_line(&e)))?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = one_line(e.inner());
            if path == "." || path.is_empty() {
                Error::Config(inner)
            } else {
                Error::Config(format!("{path}: {inner}"))
            }
        })?;
        // An empty path would resolve to the config's own folder: refuse it while it is visible.
        if let Some(field) = cfg.empty_path() {
            return Err(Error::Config(format!(
                "{field}: must not be empty (give a path, relative to the config file's folder or absolute)"
            )));
        }
        cfg.resolve_paths(base_dir);
        cfg.stores = cfg.store_configs()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The stores `[storage]` or `[[stores]]` describe, each checked by its backend.
    fn store_configs(&self) -> Result<Vec<StoreConfig>> {
        let backend = |t: &StorageTable, at: &str| {
            StorageConfig::from_table(t, at)
                .map_err(|e| Error::Config(format!("{}: {}", e.key, e.reason)))
        };
        match (&self.storage_table, self.stores_table.as_slice()) {
            (Some(_), [_, ..]) => Err(Error::Config(
                "storage: [storage] and [[stores]] are both set; keep one: [storage] for one \
                 store, or move it into a [[stores]] table with a name"
                    .into(),
            )),
            (Some(t), []) => {
                if t.name.is_some() {
                    return Err(Error::Config(
                        "storage.name: only [[stores]] tables have a name; remove it (the one \
                         [storage] is called \"primary\")"
                            .into(),
                    ));
                }
                Ok(vec![StoreConfig {
                    name: DEFAULT_STORE_NAME.into(),
                    storage: backend(t, "storage")?,
                }])
            }
            (None, []) => Ok(vec![StoreConfig {
                name: DEFAULT_STORE_NAME.into(),
                storage: backend(&StorageTable::default(), "storage")?,
            }]),
            (None, tables) => {
                let mut stores: Vec<StoreConfig> = Vec::new();
                for (i, t) in tables.iter().enumerate() {
                    let at = format!("stores[{i}]");
                    let Some(name) = &t.name else {
                        return Err(Error::Config(format!(
                            "{at}.name: missing; give each store a name (1-32 of a-z, 0-9, _ and -), e.g. name = \"near\""
                        )));
                    };
                    if let Err(reason) = crate::names::validate_store_name(name) {
                        return Err(Error::Config(format!("{at}.name: {reason}")));
                    }
                    if let Some(j) = stores.iter().position(|s| &s.name == name) {
                        return Err(Error::Config(format!(
                            "{at}.name: {name:?} is already used by stores[{j}]; names must be unique"
                        )));
                    }
                    let storage = backend(t, &at)?;
                    if let Some(j) = stores.iter().position(|s| same_place(&s.storage, &storage)) {
                        return Err(Error::Config(format!(
                            "{at}: the same place as stores[{j}] ({:?}); each store must be its own copy",
                            stores[j].name
                        )));
                    }
                    stores.push(StoreConfig {
                        name: name.clone(),
                        storage,
                    });
                }
                Ok(stores)
            }
        }
    }

    /// The folders on this machine that hold a store's objects (a restore target inside one
    /// is refused).
    pub fn local_roots(&self) -> Vec<PathBuf> {
        self.stores
            .iter()
            .filter_map(|s| s.storage.local_root().map(Path::to_path_buf))
            .collect()
    }

    /// The stores `db` is backed up to, in config order: its `stores`, else every store.
    pub fn stores_of<'a>(&'a self, db: &DatabaseConfig) -> Vec<&'a StoreConfig> {
        match &db.stores {
            None => self.stores.iter().collect(),
            Some(names) => self
                .stores
                .iter()
                .filter(|s| names.contains(&s.name))
                .collect(),
        }
    }

    /// The dotted key of the first path given as `""`, if any.
    fn empty_path(&self) -> Option<String> {
        let empty = |p: Option<&PathBuf>| p.is_some_and(|p| p.as_os_str().is_empty());
        let top = [
            (
                "storage.path",
                empty(self.storage_table.as_ref().and_then(|t| t.path.as_ref())),
            ),
            (
                "backup.staging_dir",
                empty(self.backup.staging_dir.as_ref()),
            ),
            ("backup.cache_dir", empty(self.backup.cache_dir.as_ref())),
            (
                "encryption.identity_file",
                empty(
                    self.encryption
                        .as_ref()
                        .and_then(|e| e.identity_file.as_ref()),
                ),
            ),
            (
                "notify.webhook_url_file",
                empty(self.notify.webhook_url_file.as_ref()),
            ),
            (
                "notify.heartbeat_url_file",
                empty(self.notify.heartbeat_url_file.as_ref()),
            ),
        ];
        if let Some(i) = self
            .stores_table
            .iter()
            .position(|t| empty(t.path.as_ref()))
        {
            return Some(format!("stores[{i}].path"));
        }
        if let Some((field, _)) = top.iter().find(|(_, e)| *e) {
            return Some(field.to_string());
        }
        self.databases
            .iter()
            .position(|d| d.path.as_os_str().is_empty())
            .map(|i| format!("databases[{i}].path"))
    }

    /// Read, parse and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "read {}: {}{}",
                path.display(),
                e,
                if e.kind() == std::io::ErrorKind::NotFound {
                    " (pass --config FILE or set GUARDIAN_CONFIG; see config/guardian.example.toml)"
                } else {
                    ""
                }
            ))
        })?;
        let base = crate::durable::parent_dir(path);
        let mut cfg = Config::parse_str(&text, base)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), strip_prefix(&e))))?;
        cfg.file = Some(path.to_path_buf());
        for (key, set) in [
            ("notify.webhook_url", cfg.notify.webhook_url.is_some()),
            ("notify.heartbeat_url", cfg.notify.heartbeat_url.is_some()),
        ] {
            if set {
                warn_if_readable_by_others(path, key);
            }
        }
        Ok(cfg)
    }

    /// Find the config file: `explicit` (from `--config` or `GUARDIAN_CONFIG`), else the first of
    /// [`SEARCH_PATHS`] that exists.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        SEARCH_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Config(
                    "no config file found (looked for ./guardian.toml and /etc/guardian/guardian.toml); \
                     pass --config FILE or set GUARDIAN_CONFIG (see config/guardian.example.toml)"
                        .into(),
                )
            })
    }

    /// The databases a command acts on: the one named, or all of them.
    pub fn select(&self, name: Option<&str>) -> Result<Vec<&DatabaseConfig>> {
        match name {
            None => Ok(self.databases.iter().collect()),
            Some(n) => self
                .databases
                .iter()
                .find(|d| d.name == n)
                .map(|d| vec![d])
                .ok_or_else(|| {
                    let known: Vec<&str> = self.databases.iter().map(|d| d.name.as_str()).collect();
                    Error::Usage(format!(
                        "no database named {n:?} in the config (configured: {})",
                        known.join(", ")
                    ))
                }),
        }
    }

    /// The one database a single-target command acts on: the one named, or the only one.
    pub fn select_one(&self, name: Option<&str>) -> Result<&DatabaseConfig> {
        let dbs = self.select(name)?;
        match dbs.as_slice() {
            [one] => Ok(one),
            _ => Err(Error::Usage(format!(
                "{} databases are configured; pick one with --db NAME",
                dbs.len()
            ))),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let abs = |p: &mut PathBuf| {
            *p = normalize(&base.join(&*p));
        };
        for t in self.storage_table.iter_mut().chain(&mut self.stores_table) {
            if let Some(p) = t.path.as_mut() {
                abs(p);
            }
        }
        if let Some(p) = self.backup.staging_dir.as_mut() {
            abs(p);
        }
        if let Some(p) = self.backup.cache_dir.as_mut() {
            abs(p);
        }
        if let Some(p) = self
            .encryption
            .as_mut()
            .and_then(|e| e.identity_file.as_mut())
        {
            abs(p);
        }
        for db in &mut self.databases {
            abs(&mut db.path);
        }
        for p in [
            &mut self.notify.webhook_url_file,
            &mut self.notify.heartbeat_url_file,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
    }

    /// Check every value; errors name the dotted key.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |field: String, reason: String| Err(Error::Config(format!("{field}: {reason}")));
        if let Some(level) = self.backup.compression_level {
            if !(1..=9).contains(&level) {
                return invalid(
                    "backup.compression_level".into(),
                    format!("must be 1 to 9 (got {level})"),
                );
            }
        }
        if self.backup.threads == Some(0) {
            return invalid("backup.threads".into(), "must be at least 1".into());
        }
        if let Some(enc) = &self.encryption {
            if enc.recipients.is_empty() && enc.identity_file.is_none() {
                return invalid(
                    "encryption".into(),
                    "give recipients (age1...) and/or identity_file, or remove [encryption]".into(),
                );
            }
        }
        if self.databases.is_empty() {
            return invalid(
                "databases".into(),
                "no database configured; add a [[databases]] table with name and path".into(),
            );
        }
        for (i, db) in self.databases.iter().enumerate() {
            if let Err(reason) = crate::names::validate_name(&db.name) {
                return invalid(format!("databases[{i}].name"), reason);
            }
            if let Some(j) = self.databases[..i].iter().position(|d| d.name == db.name) {
                return invalid(
                    format!("databases[{i}].name"),
                    format!(
                        "{:?} is already used by databases[{j}]; names must be unique",
                        db.name
                    ),
                );
            }
            if let Some(age) = &db.max_age {
                match humantime::parse_duration(age) {
                    Err(e) => {
                        return invalid(
                            format!("databases[{i}].max_age"),
                            format!("{e} (e.g. \"26h\", \"90m\")"),
                        )
                    }
                    // Every snapshot would be stale the moment it is taken.
                    Ok(d) if d.is_zero() => {
                        return invalid(
                            format!("databases[{i}].max_age"),
                            format!(
                                "{age:?} would call every snapshot stale at once; give the longest \
                                 time a snapshot may be old, a little over the backup interval \
                                 (e.g. \"26h\" for a daily backup), or remove the key for the default 26h"
                            ),
                        )
                    }
                    Ok(_) => {}
                }
            }
            if let Some(mode) = &db.mode {
                if let Err(reason) = parse_mode(mode) {
                    return invalid(format!("databases[{i}].mode"), reason);
                }
            }
            if let Some(j) = self.databases[..i].iter().position(|d| d.path == db.path) {
                return invalid(
                    format!("databases[{i}].path"),
                    format!(
                        "{} is already guarded as databases[{j}] ({:?}); one [[databases]] table per file",
                        db.path.display(),
                        self.databases[j].name
                    ),
                );
            }
            if let Some(names) = &db.stores {
                if names.is_empty() {
                    return invalid(
                        format!("databases[{i}].stores"),
                        "is empty; name at least one store, or remove the key for every store"
                            .into(),
                    );
                }
                for (k, name) in names.iter().enumerate() {
                    if !self.stores.iter().any(|s| &s.name == name) {
                        let known: Vec<&str> =
                            self.stores.iter().map(|s| s.name.as_str()).collect();
                        return invalid(
                            format!("databases[{i}].stores"),
                            format!(
                                "no store named {name:?} (configured: {}); add a [[stores]] table with that name or fix the name",
                                known.join(", ")
                            ),
                        );
                    }
                    if names[..k].contains(name) {
                        return invalid(
                            format!("databases[{i}].stores"),
                            format!("{name:?} is listed twice"),
                        );
                    }
                }
            }
            if let Err((field, reason)) = service::validate_database(i, db) {
                return invalid(field, reason);
            }
        }
        if let Err((field, reason)) = service::validate(self) {
            return invalid(field, reason);
        }
        Ok(())
    }
}

/// Whether two stores are one place: the same config, or local folders that resolve to the
/// same folder (a symlink, `..`).
fn same_place(a: &StorageConfig, b: &StorageConfig) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (StorageConfig::Local(x), StorageConfig::Local(y)) => {
            match (
                std::fs::canonicalize(&x.path),
                std::fs::canonicalize(&y.path),
            ) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Warn (never fail) when the file at `path`, which holds the secret `what`, can be read by
/// other users than its owner: a URL with a token or a key is as good as a password.
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                secret = what,
                "a file holding a secret is readable by other users; chmod 600 it"
            );
        }
    }
}

/// Remove `.` and `..` components lexically (the paths may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// An octal file mode like "0640" (or "640"): permission bits only, owner read and write
/// included (the application must be able to open its restored database).
fn parse_mode(text: &str) -> std::result::Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|_| !digits.is_empty() && digits.len() <= 4)
        .ok_or_else(|| format!("{text:?} is not an octal file mode like \"0640\""))?;
    if mode > 0o777 {
        return Err(format!(
            "{text:?} sets setuid, setgid or sticky bits; give permission bits only, like \"0640\""
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "{text:?} does not let the owner read and write the database; use at least \"0600\""
        ));
    }
    Ok(mode)
}

/// TOML errors span several lines (a caret diagram); keep the message on one.
fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let mut position = None;
    let mut parts = Vec::new();
    for line in s.lines().map(str::trim) {
        if let Some(pos) = line.strip_prefix("TOML parse error at ") {
            position = Some(pos.to_string());
        } else if line.is_empty()
            || line.starts_with('|')
            || line.chars().all(|c| c == '^' || c == ' ')
            || line
                .split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
        {
            // the caret diagram: source excerpt and markers
        } else {
            parts.push(line);
        }
    }
    let mut out = parts.join("; ");
    if let Some(pos) = position {
        out.push_str(&format!(" (at {pos})"));
    }
    out
}

fn strip_prefix(e: &Error) -> String {
    let s = e.to_string();
    s.strip_prefix("config: ").unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::parse_str(s, Path::new("/etc/guardian"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c =
            parse("[storage]\npath = \"b\"\n[[databases]]\nname = \"market\"\npath = \"m.db\"\n")
                .unwrap();
        let StorageConfig::Local(local) = &c.stores[0].storage else {
            panic!("{:?}", c.stores)
        };
        assert_eq!(local.path, Path::new("/etc/guardian/b"));
        assert_eq!(c.databases[0].path, Path::new("/etc/guardian/m.db"));
        assert_eq!(c.backup.compression_level(), DEFAULT_COMPRESSION_LEVEL);
    }

    #[test]
    fn unknown_key_names_its_dotted_path() {
        let e = parse("[[databases]]\nname = \"m\"\npath = \"m.db\"\npathh = 1\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("databases[0]"), "{msg}");
        assert!(msg.contains("pathh"), "{msg}");
        let e = parse("[storage]\nbukkit = \"x\"\n[[databases]]\nname = \"m\"\npath = \"m.db\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("storage"), "{e}");
        assert!(e.to_string().contains("bukkit"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("[backup]\ncompression_level = \"high\"\n[[databases]]\nname = \"m\"\npath = \"m.db\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("backup.compression_level"), "{e}");
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        let e = parse("[[databases]]\nname = \"Market\"\npath = \"m.db\"\n").unwrap_err();
        assert!(e.to_string().contains("databases[0].name"), "{e}");
        let e = parse("[[databases]]\nname = \"m\"\npath = \"a.db\"\n[[databases]]\nname = \"m\"\npath = \"b.db\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("databases[1].name"), "{e}");
        let e = parse(
            "[backup]\ncompression_level = 12\n[[databases]]\nname = \"m\"\npath = \"m.db\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("backup.compression_level"), "{e}");
        assert!(parse("").unwrap_err().to_string().contains("databases"));
    }

    #[test]
    fn config_errors_are_one_line() {
        let e = parse("[[databases]\nname = ").unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    const DB: &str = "[[databases]]\nname = \"m\"\npath = \"m.db\"\n";

    const TWO_STORES: &str = "[[stores]]\nname = \"near\"\npath = \"b\"\n[[stores]]\nname = \"far\"\nkind = \"s3\"\nbucket = \"bkt\"\nendpoint = \"http://127.0.0.1:9000\"\n";

    #[test]
    fn several_stores_parse_in_order_and_a_database_picks_some() {
        let c = parse(&format!(
            "{TWO_STORES}{DB}stores = [\"far\"]\n[[databases]]\nname = \"n\"\npath = \"n.db\"\n"
        ))
        .unwrap();
        let names: Vec<_> = c.stores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["near", "far"]);
        let StorageConfig::Local(l) = &c.stores[0].storage else {
            panic!("{:?}", c.stores)
        };
        assert_eq!(l.path, Path::new("/etc/guardian/b"));
        assert!(matches!(c.stores[1].storage, StorageConfig::S3(_)));
        let of = |i: usize| -> Vec<String> {
            c.stores_of(&c.databases[i])
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(of(0), ["far"]);
        assert_eq!(of(1), ["near", "far"]);
        // One [storage] is one store called "primary".
        let one = parse(&format!("[storage]\npath = \"b\"\n{DB}")).unwrap();
        assert_eq!(one.stores.len(), 1);
        assert_eq!(one.stores[0].name, DEFAULT_STORE_NAME);
    }

    #[test]
    fn bad_stores_are_refused_naming_the_key() {
        for (text, key) in [
            (format!("[storage]\npath = \"a\"\n{TWO_STORES}{DB}"), "[storage] and [[stores]]"),
            (format!("[storage]\nname = \"x\"\npath = \"a\"\n{DB}"), "storage.name"),
            (format!("[[stores]]\npath = \"a\"\n{DB}"), "stores[0].name"),
            (format!("[[stores]]\nname = \"Near!\"\npath = \"a\"\n{DB}"), "stores[0].name"),
            (format!("[[stores]]\nname = \"{}\"\npath = \"a\"\n{DB}", "x".repeat(33)), "stores[0].name"),
            (format!("[[stores]]\nname = \"a\"\npath = \"a\"\n[[stores]]\nname = \"a\"\npath = \"b\"\n{DB}"), "stores[1].name"),
            (format!("[[stores]]\nname = \"a\"\npath = \"a\"\n[[stores]]\nname = \"b\"\npath = \"a\"\n{DB}"), "stores[1]: the same place"),
            (format!("[[stores]]\nname = \"a\"\npath = \"a\"\nbucket = \"x\"\n{DB}"), "stores[0].bucket"),
            (format!("[[stores]]\nname = \"a\"\npath = \"\"\n{DB}"), "stores[0].path"),
            (format!("{TWO_STORES}{DB}stores = [\"nowhere\"]\n"), "databases[0].stores"),
            (format!("{TWO_STORES}{DB}stores = []\n"), "databases[0].stores"),
            (format!("{TWO_STORES}{DB}stores = [\"far\", \"far\"]\n"), "databases[0].stores"),
            (format!("[[stores]]\nname = \"a\"\npath = \"a\"\nprofile = \"p\"\n{DB}"), "stores[0].profile"),
            (format!("[storage]\nkind = \"s3\"\nbucket = \"bkt\"\nprofile = \"a b\"\n{DB}"), "storage.profile"),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn s3_storage_parses_with_every_key() {
        let c = parse(&format!(
            "[storage]\nkind = \"s3\"\nbucket = \"market-backups\"\nprefix = \"/prod/guardian/\"\nregion = \"auto\"\nendpoint = \"https://acc.r2.cloudflarestorage.com\"\nforce_path_style = true\ntimeout = \"90s\"\n{DB}"
        ))
        .unwrap();
        let StorageConfig::S3(s3) = &c.stores[0].storage else {
            panic!("{:?}", c.stores)
        };
        assert_eq!(s3.bucket, "market-backups");
        assert_eq!(s3.prefix, "prod/guardian");
        assert!(s3.force_path_style);
        assert_eq!(s3.timeout, std::time::Duration::from_secs(90));
        assert_eq!(s3.region.as_deref(), Some("auto"));
        let bare = parse(&format!("[storage]\nkind = \"s3\"\nbucket = \"b-1\"\n{DB}")).unwrap();
        let StorageConfig::S3(s3) = &bare.stores[0].storage else {
            panic!()
        };
        assert_eq!(s3.prefix, "");
        assert_eq!(s3.timeout, crate::storage::s3::DEFAULT_S3_TIMEOUT);
    }

    #[test]
    fn s3_and_local_keys_are_refused_on_the_other_kind_by_name() {
        for (storage, field) in [
            ("kind = \"s3\"\n", "storage.bucket"),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\npath = \"x\"\n",
                "storage.path",
            ),
            ("path = \"x\"\nbucket = \"bkt\"\n", "storage.bucket"),
            ("path = \"x\"\nprefix = \"p\"\n", "storage.prefix"),
            ("path = \"x\"\nregion = \"us-east-1\"\n", "storage.region"),
            (
                "path = \"x\"\nendpoint = \"http://h\"\n",
                "storage.endpoint",
            ),
            (
                "path = \"x\"\nforce_path_style = true\n",
                "storage.force_path_style",
            ),
            ("kind = \"s3\"\nbucket = \"x\"\n", "storage.bucket"),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\nprefix = \"a//b\"\n",
                "storage.prefix",
            ),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\nprefix = \"a b\"\n",
                "storage.prefix",
            ),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\nregion = \"US East\"\n",
                "storage.region",
            ),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\nendpoint = \"ftp://h\"\n",
                "storage.endpoint",
            ),
            ("path = \"x\"\ntimeout = \"5s\"\n", "storage.timeout"),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\ntimeout = \"soon\"\n",
                "storage.timeout",
            ),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\ntimeout = \"100ms\"\n",
                "storage.timeout",
            ),
            (
                "kind = \"s3\"\nbucket = \"bkt\"\ntimeout = \"2h\"\n",
                "storage.timeout",
            ),
        ] {
            let e = parse(&format!("[storage]\n{storage}{DB}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{storage:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn endpoint_credentials_are_refused_without_echoing_them() {
        let e = parse(&format!(
            "[storage]\nkind = \"s3\"\nbucket = \"bkt\"\nendpoint = \"https://AKIAX:s3cr3t@h\"\n{DB}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("storage.endpoint") && e.contains("credential"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t") && !e.contains("AKIAX"), "{e}");
    }

    #[test]
    fn credentials_are_not_config_keys() {
        for key in [
            "access_key_id",
            "secret_access_key",
            "access_key",
            "secret_key",
        ] {
            let e = parse(&format!(
                "[storage]\nkind = \"s3\"\nbucket = \"bkt\"\n{key} = \"x\"\n{DB}"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
