//! What a snapshot is in the store: its id, its object keys, and its manifest.
//!
//! Layout (see `docs/FORMAT.md`):
//! ```text
//! {db}/{YYYYMMDDTHHMMSSZ}-{8 hex}/db.sqlite.gz     a full's data object
//! {db}/{YYYYMMDDTHHMMSSZ}-{8 hex}/pages.gz         an incremental's page set (its manifest also
//!                                                   names its base's and parents' objects)
//! {db}/{YYYYMMDDTHHMMSSZ}-{8 hex}/manifest.json    the commit marker, written last
//! {db}/{YYYYMMDDTHHMMSSZ}-{8 hex}/drill-{time}-{ok|failed}.json   drill results
//! {db}/{YYYYMMDDTHHMMSSZ}-{8 hex}/restore-{time}-ok.json          restores that passed integrity_check
//! {db}/{YYYYMMDDTHHMMSSZ}-{8 hex}/tombstone.json                  marked for deletion by prune
//! ```
//! Ids sort by time, so key order is time order. The manifest is untrusted input when read back:
//! [`Manifest::parse`] bounds its size and checks every field before anything uses it.
//!
//! Format 2 (written now) says how the data is laid out in `data` ([`DataLayout`]: one whole
//! compressed object, or for an incremental the chain of a full's object and page sets). Format 1 (one object named by top-level
//! `object`/`compression`/`stored_*` fields) is still read, and is converted on parse.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::storage::ObjectKey;

/// The manifest format this guardian writes, and the newest it reads (it reads 1 too).
pub const FORMAT_VERSION: u32 = 2;
/// Manifests larger than this are refused unread (a real one is a few KB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The data object's file name.
pub const DATA_OBJECT: &str = "db.sqlite.gz";
/// The data object's file name when it is encrypted with age.
pub const DATA_OBJECT_AGE: &str = "db.sqlite.gz.age";
/// An incremental's page set's file name.
pub const PAGES_OBJECT: &str = "pages.gz";
/// An incremental's page set's file name when it is encrypted with age.
pub const PAGES_OBJECT_AGE: &str = "pages.gz.age";
/// The manifest's file name.
pub const MANIFEST_OBJECT: &str = "manifest.json";
/// The tombstone's file name (see `retention`).
pub const TOMBSTONE_OBJECT: &str = "tombstone.json";
/// SQLite databases cannot be larger than 2^32 pages of 64 KiB.
const MAX_DB_BYTES: u64 = 1 << 48;
const ID_TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A snapshot id: `{YYYYMMDDTHHMMSSZ}-{8 hex}`, e.g. `20261124T030000Z-a1b2c3d4`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

impl SnapshotId {
    /// A fresh id for a snapshot taken at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        SnapshotId(format!(
            "{}-{}",
            at.format(ID_TIME_FORMAT),
            crate::durable::random_hex(4)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The time encoded in the id (second precision).
    pub fn time(&self) -> DateTime<Utc> {
        let ts = &self.0[..16];
        NaiveDateTime::parse_from_str(ts, ID_TIME_FORMAT)
            .expect("validated id")
            .and_utc()
    }
}

impl FromStr for SnapshotId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a snapshot id (expected YYYYMMDDTHHMMSSZ-xxxxxxxx)");
        let (ts, rand) = s.split_once('-').ok_or_else(bad)?;
        if ts.len() != 16 || rand.len() != 8 {
            return Err(bad());
        }
        if !rand
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        NaiveDateTime::parse_from_str(ts, ID_TIME_FORMAT).map_err(|_| bad())?;
        Ok(SnapshotId(s.to_string()))
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> String {
        id.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 digest as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn from_digest(bytes: &[u8]) -> Self {
        Sha256Hex(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Sha256Hex(s))
        } else {
            Err("not a lowercase hex SHA-256".into())
        }
    }
}

impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The check a snapshot passed before it was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// `quick_check` or `integrity_check`.
    pub kind: String,
    /// `ok` (a snapshot is never published otherwise).
    pub result: String,
}

/// The commit marker of a snapshot: everything needed to verify and restore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format this manifest was written in (a format-1 manifest keeps 1 when read).
    pub format_version: u32,
    pub guardian_version: String,
    pub db: String,
    pub id: SnapshotId,
    pub created_at: DateTime<Utc>,
    /// The live database this was copied from.
    pub source_path: String,
    pub sqlite_version: String,
    pub page_size: u64,
    pub page_count: u64,
    /// The source's journal mode (`wal`, `delete`, ...).
    pub journal_mode: String,
    /// Size of the raw SQLite file (= page_size * page_count), whatever the layout.
    pub raw_len: u64,
    /// SHA-256 of the raw SQLite file: what a restore must rebuild, whatever the layout.
    pub raw_sha256: Sha256Hex,
    /// How the data is stored: which objects, compressed and encrypted how.
    pub data: DataLayout,
    /// Rows per table, from `SELECT count(*)` on the copy.
    pub tables: BTreeMap<String, u64>,
    /// SHA-256 of the schema (`type, name, tbl_name, sql` of every `sqlite_schema` row, sorted).
    pub schema_sha256: Sha256Hex,
    /// The check the copy passed before publication.
    pub check: CheckRecord,
}

/// How a snapshot's data is laid out in its folder. Serialized with its `layout` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "layout", rename_all = "snake_case")]
pub enum DataLayout {
    /// The whole database file in one object: gzip, then age when encrypted.
    Whole(WholeObject),
    /// An incremental snapshot: the whole object of a full snapshot (its base), then the page
    /// sets of the incrementals since, oldest first, the last one its own. Each page set holds
    /// the pages that differ from the snapshot before it; applying them in order (the newest
    /// copy of a page wins, pages past `page_count` are dropped) rebuilds this snapshot, from
    /// this manifest alone.
    Pages(PageChain),
}

/// [`DataLayout::Pages`]: the parts an incremental snapshot is rebuilt from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageChain {
    /// The full snapshot whose whole object is the first part.
    pub base: SnapshotId,
    /// The snapshot this one's pages were compared with (the base, or the incremental before).
    pub parent: SnapshotId,
    /// The objects to apply, in order: the base's whole object, then page sets oldest first.
    pub parts: Vec<Part>,
}

/// What a [`Part`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartContent {
    /// A whole database file (a full snapshot's data object).
    Whole,
    /// A page set: `guardian-pages-1`, the page size, then (page number, page) records.
    Pages,
}

/// One stored object of a [`PageChain`]: where it is, how it is encoded, and what it must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The snapshot whose folder holds the object.
    pub snapshot: SnapshotId,
    /// The object's file name in that folder.
    pub object: String,
    pub content: PartContent,
    /// `gzip`.
    pub compression: String,
    /// `"age"` when the gzip stream is inside age encryption; absent when plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// With encryption: the SHA-256 of the recipients (see [`WholeObject`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_sha256: Option<Sha256Hex>,
    pub stored_len: u64,
    pub stored_sha256: Sha256Hex,
    /// Size and SHA-256 of the decompressed stream (the database file, or the page set).
    pub raw_len: u64,
    pub raw_sha256: Sha256Hex,
    /// The database's page count in that snapshot.
    pub page_count: u64,
    /// Page records in a page set (for a whole part: `page_count`).
    pub pages: u64,
}

/// [`DataLayout::Whole`]: one object holding the whole database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WholeObject {
    /// The object's file name within the snapshot folder (`db.sqlite.gz`, `db.sqlite.gz.age`).
    pub object: String,
    /// `gzip`.
    pub compression: String,
    pub compression_level: u32,
    /// `"age"` when the gzip stream is inside age encryption; absent when plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// With encryption: the SHA-256 of the recipients it was encrypted to (sorted, one per
    /// line), so that incrementals never mix recipients. Absent when plain (and in snapshots
    /// of older guardians).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_sha256: Option<Sha256Hex>,
    /// Size of the stored object.
    pub stored_len: u64,
    /// SHA-256 of the stored object.
    pub stored_sha256: Sha256Hex,
}

/// One stored object a manifest names, with the size and digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: ObjectKey,
    pub len: u64,
    pub sha256: Sha256Hex,
}

/// A format-1 manifest: the data fields at the top level, one whole gzip object.
#[derive(Deserialize)]
struct ManifestV1 {
    format_version: u32,
    guardian_version: String,
    db: String,
    id: SnapshotId,
    created_at: DateTime<Utc>,
    source_path: String,
    sqlite_version: String,
    page_size: u64,
    page_count: u64,
    journal_mode: String,
    raw_len: u64,
    raw_sha256: Sha256Hex,
    stored_len: u64,
    stored_sha256: Sha256Hex,
    object: String,
    compression: String,
    #[serde(default)]
    encryption: Option<String>,
    compression_level: u32,
    tables: BTreeMap<String, u64>,
    schema_sha256: Sha256Hex,
    check: CheckRecord,
}

impl From<ManifestV1> for Manifest {
    fn from(v: ManifestV1) -> Manifest {
        Manifest {
            format_version: v.format_version,
            guardian_version: v.guardian_version,
            db: v.db,
            id: v.id,
            created_at: v.created_at,
            source_path: v.source_path,
            sqlite_version: v.sqlite_version,
            page_size: v.page_size,
            page_count: v.page_count,
            journal_mode: v.journal_mode,
            raw_len: v.raw_len,
            raw_sha256: v.raw_sha256,
            data: DataLayout::Whole(WholeObject {
                object: v.object,
                compression: v.compression,
                compression_level: v.compression_level,
                encryption: v.encryption,
                recipients_sha256: None,
                stored_len: v.stored_len,
                stored_sha256: v.stored_sha256,
            }),
            tables: v.tables,
            schema_sha256: v.schema_sha256,
            check: v.check,
        }
    }
}

/// Why a stored manifest cannot be used (part of [`Damage`](crate::damage::Damage)). The
/// message is one line and names the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Too large, not JSON, or fields that contradict each other or the key it is stored
    /// under; the text says which.
    #[error("{0}")]
    Invalid(String),

    /// A format this guardian does not read (a newer guardian wrote it).
    #[error("manifest format_version {version} is not supported (this guardian reads 1 to {max}; upgrade guardian)", max = FORMAT_VERSION)]
    UnsupportedFormat { version: u32 },
}

impl Manifest {
    /// Serialize (pretty, so a human can read it in the bucket).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parse and check a manifest read from `key` (the key must name the same db and id).
    pub fn parse(bytes: &[u8], key: &SnapshotKey) -> Result<Manifest, ManifestError> {
        let invalid = ManifestError::Invalid;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(invalid(format!(
                "manifest is {} bytes, over the limit",
                bytes.len()
            )));
        }
        // Look at the version first, so a newer format gets a clear message, not a field error.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let not_valid = |e: serde_json::Error| invalid(format!("manifest is not valid: {e}"));
        let v: Version = serde_json::from_slice(bytes).map_err(not_valid)?;
        if v.format_version == 0 || v.format_version > FORMAT_VERSION {
            return Err(ManifestError::UnsupportedFormat {
                version: v.format_version,
            });
        }
        let m: Manifest = if v.format_version == 1 {
            serde_json::from_slice::<ManifestV1>(bytes)
                .map_err(not_valid)?
                .into()
        } else {
            serde_json::from_slice(bytes).map_err(not_valid)?
        };
        m.check_fields(key).map_err(invalid)?;
        Ok(m)
    }

    fn check_fields(&self, key: &SnapshotKey) -> Result<(), String> {
        if self.db != key.db {
            return Err(format!(
                "manifest names database {:?}, but is stored under {:?}",
                self.db, key.db
            ));
        }
        if self.id != key.id {
            return Err(format!(
                "manifest names snapshot {}, but is stored under {}",
                self.id, key.id
            ));
        }
        match &self.data {
            DataLayout::Whole(w) => w.check_fields()?,
            DataLayout::Pages(c) => c.check_fields(self)?,
        }
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return Err(format!(
                "page_size {} is not a SQLite page size",
                self.page_size
            ));
        }
        if self.raw_len > MAX_DB_BYTES || self.stored_len() > MAX_DB_BYTES * 2 {
            return Err(format!(
                "size fields are implausible (raw_len {}, stored_len {})",
                self.raw_len,
                self.stored_len()
            ));
        }
        if self.page_size.checked_mul(self.page_count) != Some(self.raw_len) {
            return Err(format!(
                "raw_len {} is not page_size {} x page_count {}",
                self.raw_len, self.page_size, self.page_count
            ));
        }
        if self.check.result != "ok" {
            return Err(format!(
                "manifest records a failed {} ({})",
                self.check.kind, self.check.result
            ));
        }
        Ok(())
    }

    /// The snapshot's folder.
    pub fn key(&self) -> SnapshotKey {
        SnapshotKey {
            db: self.db.clone(),
            id: self.id.clone(),
        }
    }

    /// Every data object the snapshot needs, with the size and digest each must have. An
    /// incremental's include objects in other snapshots' folders (its base's, its parents').
    pub fn objects(&self) -> Vec<StoredObject> {
        match &self.data {
            DataLayout::Whole(w) => vec![StoredObject {
                key: self.key().object(&w.object),
                len: w.stored_len,
                sha256: w.stored_sha256.clone(),
            }],
            DataLayout::Pages(c) => c
                .parts
                .iter()
                .map(|p| StoredObject {
                    key: p.key(&self.db),
                    len: p.stored_len,
                    sha256: p.stored_sha256.clone(),
                })
                .collect(),
        }
    }

    /// Bytes a restore reads: every object the snapshot needs, together.
    pub fn stored_len(&self) -> u64 {
        match &self.data {
            DataLayout::Whole(w) => w.stored_len,
            DataLayout::Pages(c) => c.parts.iter().map(|p| p.stored_len).sum(),
        }
    }

    /// Bytes this snapshot added to the store: its own objects (for a full, all of them).
    pub fn own_stored_len(&self) -> u64 {
        match &self.data {
            DataLayout::Whole(w) => w.stored_len,
            DataLayout::Pages(c) => c.own().stored_len,
        }
    }

    /// The digest `list --json` and drill records show as the snapshot's `stored_sha256`: its
    /// own object's SHA-256 (the whole object; an incremental's page set).
    pub fn stored_sha256(&self) -> &Sha256Hex {
        match &self.data {
            DataLayout::Whole(w) => &w.stored_sha256,
            DataLayout::Pages(c) => &c.own().stored_sha256,
        }
    }

    /// `"age"` when the data is encrypted.
    pub fn encryption(&self) -> Option<&str> {
        match &self.data {
            DataLayout::Whole(w) => w.encryption.as_deref(),
            DataLayout::Pages(c) => c.own().encryption.as_deref(),
        }
    }

    /// The SHA-256 of the recipients the snapshot's own data is encrypted to, if recorded.
    pub fn recipients_sha256(&self) -> Option<&Sha256Hex> {
        match &self.data {
            DataLayout::Whole(w) => w.recipients_sha256.as_ref(),
            DataLayout::Pages(c) => c.own().recipients_sha256.as_ref(),
        }
    }

    /// `full` or `incremental`.
    pub fn kind(&self) -> SnapshotKind {
        match &self.data {
            DataLayout::Whole(_) => SnapshotKind::Full,
            DataLayout::Pages(_) => SnapshotKind::Incremental,
        }
    }

    /// The full snapshot an incremental is built on; `None` for a full.
    pub fn base(&self) -> Option<&SnapshotId> {
        match &self.data {
            DataLayout::Whole(_) => None,
            DataLayout::Pages(c) => Some(&c.base),
        }
    }
}

/// A snapshot's kind: `full` (the whole database) or `incremental` (pages on a full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Full,
    Incremental,
}

impl SnapshotKind {
    /// The name `list --json` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Full => "full",
            SnapshotKind::Incremental => "incremental",
        }
    }

    /// The short name in `list`'s KIND column.
    pub fn short(self) -> &'static str {
        match self {
            SnapshotKind::Full => "full",
            SnapshotKind::Incremental => "incr",
        }
    }
}

/// Parts a chain may have: a day of 15-minute incrementals is 97; past this, backup takes a
/// full (and a manifest stays well under [`MAX_MANIFEST_BYTES`]).
pub const MAX_PARTS: usize = 1000;

impl Part {
    /// The object's key in the store.
    pub fn key(&self, db: &str) -> ObjectKey {
        SnapshotKey {
            db: db.to_string(),
            id: self.snapshot.clone(),
        }
        .object(&self.object)
    }
}

impl PageChain {
    /// The snapshot's own page set (the last part; checked on parse).
    pub fn own(&self) -> &Part {
        self.parts.last().expect("a parsed chain has parts")
    }

    fn check_fields(&self, m: &Manifest) -> Result<(), String> {
        let n = self.parts.len();
        if !(2..=MAX_PARTS).contains(&n) {
            return Err(format!(
                "an incremental must name 2 to {MAX_PARTS} parts, not {n}"
            ));
        }
        for (i, p) in self.parts.iter().enumerate() {
            if crate::names::validate_component(&p.object).is_err()
                || p.object == MANIFEST_OBJECT
                || p.object == TOMBSTONE_OBJECT
            {
                return Err(format!(
                    "manifest names an invalid data object {:?}",
                    p.object
                ));
            }
            if p.compression != "gzip" {
                return Err(format!("unknown compression {:?}", p.compression));
            }
            if let Some(enc) = p.encryption.as_deref().filter(|e| *e != "age") {
                return Err(format!("unknown encryption {enc:?} (upgrade guardian)"));
            }
            let want = if i == 0 {
                PartContent::Whole
            } else {
                PartContent::Pages
            };
            if p.content != want {
                return Err(format!(
                    "part {i} of the chain must be a {want:?} object, not {:?}",
                    p.content
                ));
            }
            // Ids have second precision: two snapshots in one second may sort either way.
            if self.parts[..i].iter().any(|q| q.snapshot == p.snapshot)
                || (i > 0 && p.snapshot.time() < self.parts[i - 1].snapshot.time())
            {
                return Err("the chain's parts are not in snapshot order".into());
            }
            if p.pages > p.page_count || p.page_count > MAX_DB_BYTES / 512 {
                return Err(format!(
                    "part {i} has an implausible page count ({} records of {} pages)",
                    p.pages, p.page_count
                ));
            }
        }
        if self.parts[0].snapshot != self.base {
            return Err("the chain's first part is not its base's".into());
        }
        if self.own().snapshot != m.id || self.own().page_count != m.page_count {
            return Err("the chain's last part is not this snapshot's own".into());
        }
        if self.parent == m.id
            || self.parent.time() < self.base.time()
            || self.parent.time() > m.id.time()
            || !self.parts.iter().any(|p| p.snapshot == self.parent)
        {
            return Err("the chain's parent is not between its base and itself".into());
        }
        Ok(())
    }
}

impl WholeObject {
    fn check_fields(&self) -> Result<(), String> {
        if crate::names::validate_component(&self.object).is_err() || self.object == MANIFEST_OBJECT
        {
            return Err(format!(
                "manifest names an invalid data object {:?}",
                self.object
            ));
        }
        if self.compression != "gzip" {
            return Err(format!("unknown compression {:?}", self.compression));
        }
        if let Some(enc) = self.encryption.as_deref().filter(|e| *e != "age") {
            return Err(format!("unknown encryption {enc:?} (upgrade guardian)"));
        }
        Ok(())
    }
}

/// The folder of one snapshot: `{db}/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotKey {
    pub db: String,
    pub id: SnapshotId,
}

impl SnapshotKey {
    pub fn manifest(&self) -> ObjectKey {
        self.object(MANIFEST_OBJECT)
    }

    /// A drill record's key: `drill-{YYYYMMDDTHHMMSSZ}-{ok|failed}.json`.
    pub fn drill(&self, at: DateTime<Utc>, ok: bool) -> ObjectKey {
        self.object(&format!(
            "drill-{}-{}.json",
            at.format(ID_TIME_FORMAT),
            if ok { "ok" } else { "failed" }
        ))
    }

    /// A restore record's key: `restore-{YYYYMMDDTHHMMSSZ}-ok.json`.
    pub fn restore_record(&self, at: DateTime<Utc>) -> ObjectKey {
        self.object(&format!("restore-{}-ok.json", at.format(ID_TIME_FORMAT)))
    }

    /// The tombstone: prune marked the snapshot for deletion.
    pub fn tombstone(&self) -> ObjectKey {
        self.object(TOMBSTONE_OBJECT)
    }

    /// The key of the object `name` in this snapshot's folder.
    pub fn object(&self, name: &str) -> ObjectKey {
        ObjectKey::new(format!("{}/{}/{}", self.db, self.id, name)).expect("validated parts")
    }
}

/// The listing prefix of one database's snapshots.
pub fn db_prefix(db: &str) -> String {
    format!("{db}/")
}

/// What an object in a snapshot folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectRole {
    Manifest,
    /// A data object (normally `db.sqlite.gz`).
    Data(String),
    /// A drill record: when it ran and whether it passed.
    Drill {
        at: DateTime<Utc>,
        ok: bool,
    },
    /// A restore of this snapshot that passed `integrity_check`, and when.
    Restore {
        at: DateTime<Utc>,
    },
    /// Prune marked this snapshot for deletion.
    Tombstone,
}

/// Split a listed key into its snapshot folder and role. Keys that do not follow the layout
/// (foreign files, a db name that is not ours) give `None` and are ignored.
pub fn parse_key(key: &ObjectKey) -> Option<(SnapshotKey, ObjectRole)> {
    let mut parts = key.components();
    let db = parts.next()?;
    let id = parts.next()?;
    let name = parts.next()?;
    if parts.next().is_some() || crate::names::validate_name(db).is_err() {
        return None;
    }
    let id: SnapshotId = id.parse().ok()?;
    let role = if name == MANIFEST_OBJECT {
        ObjectRole::Manifest
    } else if let Some(rest) = name
        .strip_prefix("drill-")
        .and_then(|r| r.strip_suffix(".json"))
    {
        let (ts, verdict) = rest.split_once('-')?;
        let at = NaiveDateTime::parse_from_str(ts, ID_TIME_FORMAT)
            .ok()?
            .and_utc();
        let ok = match verdict {
            "ok" => true,
            "failed" => false,
            _ => return None,
        };
        ObjectRole::Drill { at, ok }
    } else if let Some(ts) = name
        .strip_prefix("restore-")
        .and_then(|r| r.strip_suffix("-ok.json"))
    {
        let at = NaiveDateTime::parse_from_str(ts, ID_TIME_FORMAT)
            .ok()?
            .and_utc();
        ObjectRole::Restore { at }
    } else if name == TOMBSTONE_OBJECT {
        ObjectRole::Tombstone
    } else {
        ObjectRole::Data(name.to_string())
    };
    Some((
        SnapshotKey {
            db: db.to_string(),
            id,
        },
        role,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let id: SnapshotId = "20261124T030000Z-a1b2c3d4".parse().unwrap();
        Manifest {
            format_version: FORMAT_VERSION,
            guardian_version: "0.1.0".into(),
            db: "market".into(),
            id,
            created_at: "2026-11-24T03:00:00.250Z".parse().unwrap(),
            source_path: "/data/market.db".into(),
            sqlite_version: "3.51.3".into(),
            page_size: 4096,
            page_count: 3,
            journal_mode: "wal".into(),
            raw_len: 12288,
            raw_sha256: Sha256Hex::from_digest(&[1; 32]),
            data: DataLayout::Whole(WholeObject {
                object: DATA_OBJECT.into(),
                compression: "gzip".into(),
                compression_level: 6,
                encryption: None,
                recipients_sha256: None,
                stored_len: 500,
                stored_sha256: Sha256Hex::from_digest(&[2; 32]),
            }),
            tables: BTreeMap::from([("orders".into(), 10)]),
            schema_sha256: Sha256Hex::from_digest(&[3; 32]),
            check: CheckRecord {
                kind: "quick_check".into(),
                result: "ok".into(),
            },
        }
    }

    fn key_of(m: &Manifest) -> SnapshotKey {
        SnapshotKey {
            db: m.db.clone(),
            id: m.id.clone(),
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_json(), &key_of(&m)).unwrap(), m);
    }

    #[test]
    fn format_1_is_read_as_a_whole_object() {
        let m = sample();
        let mut v1: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        let data = v1.as_object_mut().unwrap().remove("data").unwrap();
        for (k, v) in data.as_object().unwrap() {
            if k != "layout" {
                v1[k] = v.clone();
            }
        }
        v1["format_version"] = 1.into();
        let parsed = Manifest::parse(&serde_json::to_vec(&v1).unwrap(), &key_of(&m)).unwrap();
        assert_eq!(parsed.format_version, 1);
        assert_eq!(parsed.data, m.data);
        assert_eq!(parsed.objects(), m.objects());
        // A format-1 manifest names no layout: it must not be read as format 2, nor the reverse.
        v1["format_version"] = 2.into();
        assert!(Manifest::parse(&serde_json::to_vec(&v1).unwrap(), &key_of(&m)).is_err());
    }

    #[test]
    fn unknown_layouts_are_refused() {
        let m = sample();
        let json = String::from_utf8(m.to_json())
            .unwrap()
            .replace("\"layout\": \"whole\"", "\"layout\": \"slices\"");
        let e = Manifest::parse(json.as_bytes(), &key_of(&m))
            .unwrap_err()
            .to_string();
        assert!(e.contains("slices"), "{e}");
    }

    /// An incremental on `sample()` (the base), with one page set of its own.
    pub(crate) fn incremental() -> Manifest {
        let base = sample();
        let mut m = sample();
        m.id = "20261124T031500Z-a1b2c3d5".parse().unwrap();
        let part = |snapshot: &SnapshotId, content, object: &str| Part {
            snapshot: snapshot.clone(),
            object: object.into(),
            content,
            compression: "gzip".into(),
            encryption: None,
            recipients_sha256: None,
            stored_len: 100,
            stored_sha256: Sha256Hex::from_digest(&[4; 32]),
            raw_len: 4116,
            raw_sha256: Sha256Hex::from_digest(&[5; 32]),
            page_count: 3,
            pages: 1,
        };
        m.data = DataLayout::Pages(PageChain {
            base: base.id.clone(),
            parent: base.id.clone(),
            parts: vec![
                part(&base.id, PartContent::Whole, DATA_OBJECT),
                part(&m.id, PartContent::Pages, PAGES_OBJECT),
            ],
        });
        m
    }

    #[test]
    fn incremental_manifests_round_trip_and_refuse_a_broken_chain() {
        let m = incremental();
        let key = key_of(&m);
        assert_eq!(Manifest::parse(&m.to_json(), &key).unwrap(), m);
        assert_eq!(m.kind(), SnapshotKind::Incremental);
        assert_eq!(m.base(), Some(&sample().id));
        let keys: Vec<String> = m.objects().iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            [
                "market/20261124T030000Z-a1b2c3d4/db.sqlite.gz",
                "market/20261124T031500Z-a1b2c3d5/pages.gz"
            ]
        );
        assert_eq!(m.own_stored_len(), 100);
        assert_eq!(m.stored_len(), 200);
        type Breaks = (&'static str, fn(&mut PageChain));
        let broken: [Breaks; 7] = [
            ("no own part", |c| {
                c.parts.pop();
            }),
            ("pages first", |c| c.parts[0].content = PartContent::Pages),
            ("whole last", |c| c.parts[1].content = PartContent::Whole),
            ("another base", |c| {
                c.base = "20261124T020000Z-a1b2c3d4".parse().unwrap()
            }),
            ("parts out of order", |c| c.parts.swap(0, 1)),
            ("escaping object", |c| c.parts[1].object = "../x".into()),
            ("more pages than the count", |c| c.parts[1].pages = 9),
        ];
        for (what, breaks) in broken {
            let mut bad = m.clone();
            let DataLayout::Pages(c) = &mut bad.data else {
                unreachable!()
            };
            breaks(c);
            assert!(
                Manifest::parse(&bad.to_json(), &key).is_err(),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn manifest_parse_rejects_damage() {
        let m = sample();
        let key = key_of(&m);
        let json = String::from_utf8(m.to_json()).unwrap();
        let cases = [
            ("not json", "{".to_string()),
            (
                "future version",
                json.replace("\"format_version\": 2", "\"format_version\": 99"),
            ),
            (
                "huge size",
                json.replace("\"raw_len\": 12288", "\"raw_len\": 18446744073709551615"),
            ),
            (
                "size not pages",
                json.replace("\"raw_len\": 12288", "\"raw_len\": 12289"),
            ),
            ("bad hash", json.replace(&m.raw_sha256.to_string(), "zz")),
            (
                "other db",
                json.replace("\"db\": \"market\"", "\"db\": \"shop\""),
            ),
            (
                "escape object",
                json.replace("\"object\": \"db.sqlite.gz\"", "\"object\": \"../x\""),
            ),
            (
                "failed check",
                json.replace("\"result\": \"ok\"", "\"result\": \"bad\""),
            ),
        ];
        for (what, text) in cases {
            assert!(
                Manifest::parse(text.as_bytes(), &key).is_err(),
                "{what} accepted"
            );
        }
        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(Manifest::parse(&big, &key).is_err());
        assert_eq!(
            Manifest::parse(
                json.replace("\"format_version\": 2", "\"format_version\": 99")
                    .as_bytes(),
                &key
            ),
            Err(ManifestError::UnsupportedFormat { version: 99 })
        );
    }

    #[test]
    fn snapshot_ids_sort_by_time_and_validate() {
        let a = SnapshotId::new("2026-01-02T03:04:05Z".parse().unwrap());
        let b = SnapshotId::new("2026-01-02T03:04:06Z".parse().unwrap());
        assert!(a < b);
        assert_eq!(
            a.time(),
            "2026-01-02T03:04:05Z".parse::<DateTime<Utc>>().unwrap()
        );
        for bad in [
            "",
            "x",
            "20261124T030000Z",
            "20261124T030000Z-ABCDEF12",
            "20261340T030000Z-a1b2c3d4",
            "../../etc",
        ] {
            assert!(bad.parse::<SnapshotId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_parse_into_roles() {
        let k = |s: &str| ObjectKey::new(s).unwrap();
        let (sk, role) = parse_key(&k("market/20261124T030000Z-a1b2c3d4/manifest.json")).unwrap();
        assert_eq!(sk.db, "market");
        assert_eq!(role, ObjectRole::Manifest);
        let (_, role) = parse_key(&k(
            "market/20261124T030000Z-a1b2c3d4/drill-20261125T000000Z-failed.json",
        ))
        .unwrap();
        assert!(matches!(role, ObjectRole::Drill { ok: false, .. }));
        assert_eq!(
            sk.drill("2026-11-25T00:00:00Z".parse().unwrap(), false)
                .as_str(),
            "market/20261124T030000Z-a1b2c3d4/drill-20261125T000000Z-failed.json"
        );
        assert!(parse_key(&k("market/notanid/manifest.json")).is_none());
        assert!(parse_key(&k("Market/20261124T030000Z-a1b2c3d4/manifest.json")).is_none());
        assert!(parse_key(&k("market/20261124T030000Z-a1b2c3d4/x/y")).is_none());
    }
}
