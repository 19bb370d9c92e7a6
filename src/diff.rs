//! `guardian diff`: what differs between two states of a database, row by row.
//!
//! A side (FROM, TO) is a snapshot (`latest`, `snapshot:<ID>`, `before:<RFC3339>`), the live
//! database (`live`), or a file (e.g. a `.pre-restore-*` file a restore kept aside). Nothing a
//! side names is ever written to:
//! - a snapshot is rebuilt in a scratch folder under the staging folder through the
//!   `SnapshotReader` (both SHA-256s proven), as a drill does;
//! - `live` is copied there with the online-backup API first (as a backup does: one read
//!   transaction, writers not blocked in WAL mode), so the comparison sees one committed state
//!   and holds no lock on the application's file while it runs;
//! - a file is opened with `immutable=1` (no locks, no `-shm` created, nothing written), unless
//!   it has a `-wal` or `-journal` with content: SQLite ignores those on an immutable file, so
//!   the file and that sidecar are copied to the scratch folder and the copy is opened there,
//!   where SQLite reads its WAL (or rolls its journal back) without touching the originals.
//!
//! Each table's rows are matched by primary key (else rowid) in a merge of two key-ordered
//! scans (`diff/scan.rs`, `diff/compare.rs`), a chunk at a time, so memory does not grow with
//! the table. A damaged file is read as far as it can be: a table that cannot be read in full
//! is `partial`, its unreadable ranges are named, and rows whose counterpart lies in such a
//! range are counted as *unknown*, never as missing. `--sql` (`diff/sql.rs`) writes the one
//! transaction that turns FROM into TO.

mod compare;
mod pages;
mod scan;
mod schema;
mod sql;
mod tables;
mod value;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};

pub use compare::{Change, Counts, RowChange};
pub use value::Val;

/// The name the rowid goes by in a table with these columns (`rowid`, else `_rowid_`, else
/// `oid`), if a column does not take all three.
pub(crate) fn rowid_alias(columns: &[String]) -> Option<&'static str> {
    scan::rowid_name(columns)
}

use crate::config::DatabaseConfig;
use crate::crypto::Keys;
use crate::drill::Scratch;
use crate::error::{Error, Result};
use crate::restore::Selector;
use crate::snapshot;
use crate::storage::NamedStore;
use crate::stores::Merged;

/// One side of a diff, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Latest,
    Snapshot(String),
    Before(DateTime<Utc>),
    Live,
    File(PathBuf),
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Spec, String> {
        Ok(match s {
            "" => {
                return Err(
                    "empty; give latest, snapshot:<ID>, before:<RFC3339>, live or a file path"
                        .into(),
                )
            }
            "latest" => Spec::Latest,
            "live" => Spec::Live,
            _ if s.starts_with("snapshot:") => {
                let id = &s["snapshot:".len()..];
                if id.is_empty() {
                    return Err(
                        "snapshot: needs an id, e.g. snapshot:20261124T030000Z-1a2b3c4d".into(),
                    );
                }
                Spec::Snapshot(id.to_string())
            }
            _ if s.starts_with("before:") => Spec::Before(
                DateTime::parse_from_rfc3339(&s["before:".len()..])
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        format!("before: {e} (expected RFC 3339, e.g. before:2026-11-24T03:00:00Z)")
                    })?,
            ),
            _ => Spec::File(PathBuf::from(s)),
        })
    }
}

impl Spec {
    /// True when the side needs a configured database (a snapshot of it, or its live file).
    pub fn needs_db(&self) -> bool {
        !matches!(self, Spec::File(_))
    }
}

/// What to compare and how to report it.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    pub from: Spec,
    pub to: Spec,
    /// Only these tables (all when empty).
    pub tables: Vec<String>,
    /// Rows shown per table.
    pub limit: usize,
    /// Write the SQL that turns FROM into TO to stdout while comparing.
    pub sql: bool,
    pub keys: Keys,
    /// Where snapshots are rebuilt and files with sidecars copied.
    pub staging_dir: PathBuf,
}

/// What one side turned out to be.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SideInfo {
    /// As given: `latest`, `snapshot:<ID>`, `live`, a path.
    pub spec: String,
    /// `snapshot`, `live` or `file`.
    pub kind: &'static str,
    /// The snapshot read, for a snapshot side.
    pub snapshot: Option<String>,
    pub taken_at: Option<DateTime<Utc>>,
    /// The file, for a live or file side.
    pub path: Option<PathBuf>,
    /// How it was read: `rebuilt from the store`, `online copy`, `read-only (immutable)`,
    /// `copied with its -wal`, ...
    pub read_as: String,
    /// Newer snapshots passed over (for `latest`/`before:`), with why.
    pub skipped: Vec<(String, String)>,
}

/// One table's comparison.
#[derive(Debug, Clone)]
pub struct TableReport {
    pub name: String,
    pub key: Vec<String>,
    pub in_from: bool,
    pub in_to: bool,
    /// Its `CREATE TABLE` differs between the sides.
    pub schema_changed: bool,
    /// Why its rows were not compared, or what to know about them.
    pub note: Option<String>,
    /// `None` when the rows were not compared.
    pub counts: Option<Counts>,
}

impl TableReport {
    pub fn partial(&self) -> bool {
        self.counts.as_ref().is_some_and(|c| !c.partial.is_empty())
    }
}

/// A schema entry (index, view, trigger, table) that differs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SchemaChange {
    pub kind: String,
    pub name: String,
    pub change: &'static str,
    pub from_sql: Option<String>,
    pub to_sql: Option<String>,
}

/// The whole comparison.
#[derive(Debug, Clone)]
pub struct DiffReport {
    pub db: Option<String>,
    pub from: SideInfo,
    pub to: SideInfo,
    pub tables: Vec<TableReport>,
    pub schema: Vec<SchemaChange>,
}

impl DiffReport {
    /// Every table was read in full on both sides.
    pub fn complete(&self) -> bool {
        !self.tables.iter().any(TableReport::partial)
    }
}

/// Compare `opts.from` with `opts.to` (`db`: the configured database the snapshot and live
/// specs refer to; `configured`: every configured database, so that a file path naming one of
/// them is read as `live` is, never opened in place).
///
/// # Errors
/// A side that cannot be opened (missing, not a database, no such snapshot, its schema
/// unreadable), a `--table` on neither side, and operational failures. Damage inside tables
/// is not an error: it is in the report (`partial`).
pub async fn run(
    stores: &[NamedStore],
    db: Option<&DatabaseConfig>,
    configured: &[DatabaseConfig],
    opts: &DiffOptions,
) -> Result<DiffReport> {
    let interrupted = crate::service::first_interrupt()?;
    STOP.store(false, Ordering::SeqCst);
    let work = compare(stores, db, configured, opts);
    tokio::pin!(work);
    let sig = tokio::select! {
        r = &mut work => return r,
        sig = interrupted => sig,
    };
    // The comparison stops at its next chunk and removes its scratch files as it returns; a
    // download still under way is dropped (with its scratch folder).
    STOP.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut work).await;
    Err(Error::Cancelled(format!(
        "diff interrupted by {sig}; nothing was changed and its scratch files were removed{}",
        if opts.sql {
            " (the SQL printed so far has no COMMIT: applied as it is, it changes nothing)"
        } else {
            ""
        }
    )))
}

/// Set on a signal: the scans stop at their next chunk.
static STOP: AtomicBool = AtomicBool::new(false);

/// True once a signal asked the comparison to stop.
fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

async fn compare(
    stores: &[NamedStore],
    db: Option<&DatabaseConfig>,
    configured: &[DatabaseConfig],
    opts: &DiffOptions,
) -> Result<DiffReport> {
    let name = db.map_or("diff", |d| d.name.as_str());
    // Bad input first, before a snapshot is fetched for the other side.
    for (spec, which) in [(&opts.from, "FROM"), (&opts.to, "TO")] {
        if let Spec::File(p) = spec {
            check_file(p, which)?;
        }
    }
    let from_scratch = Scratch::create(&opts.staging_dir, name, "diff")?;
    let to_scratch = Scratch::create(&opts.staging_dir, name, "diff")?;
    let (from, from_path) = open_side(
        stores,
        db,
        configured,
        &opts.from,
        opts,
        &from_scratch,
        "FROM",
    )
    .await?;
    let (to, to_path) =
        open_side(stores, db, configured, &opts.to, opts, &to_scratch, "TO").await?;
    let spool = from_scratch.dir().to_path_buf();
    let opts2 = opts.clone();
    let db_name = db.map(|d| d.name.clone());
    let report = tokio::task::spawn_blocking(move || {
        let _keep = (from_scratch, to_scratch);
        let a = connect(&from_path)?;
        let b = connect(&to_path)?;
        // Both read in place with no WAL: unchanged tables are found by their pages.
        let raw = if from_path.immutable && to_path.immutable {
            pages::RawPair::open(&a, &from_path.path, &b, &to_path.path)?
        } else {
            None
        };
        let (tables, schema) =
            tables::compare_all(&a, &b, raw.as_ref(), &from, &to, &opts2, &spool)?;
        Ok::<_, Error>(DiffReport {
            db: db_name,
            from,
            to,
            tables,
            schema,
        })
    })
    .await
    .map_err(|e| Error::Internal(format!("diff worker: {e}")))??;
    Ok(report)
}

/// Where a side's database is to be opened, and whether read-only in place (`immutable`).
struct Opened {
    path: PathBuf,
    immutable: bool,
}

/// Resolve one side: rebuild or copy it into `scratch` where needed; returns what it is and
/// the file to open.
async fn open_side(
    stores: &[NamedStore],
    db: Option<&DatabaseConfig>,
    configured: &[DatabaseConfig],
    spec: &Spec,
    opts: &DiffOptions,
    scratch: &Scratch,
    which: &str,
) -> Result<(SideInfo, Opened)> {
    let shown = match spec {
        Spec::Latest => "latest".to_string(),
        Spec::Snapshot(id) => format!("snapshot:{id}"),
        Spec::Before(t) => format!("before:{}", crate::human::rfc3339(*t)),
        Spec::Live => "live".into(),
        Spec::File(p) => p.display().to_string(),
    };
    let mut info = SideInfo {
        spec: shown,
        kind: "file",
        snapshot: None,
        taken_at: None,
        path: None,
        read_as: String::new(),
        skipped: Vec::new(),
    };
    let need_db = || {
        db.ok_or_else(|| {
            Error::Usage(format!(
                "{which} {} needs a database: pick one with --db NAME",
                info.spec
            ))
        })
    };
    let opened = match spec {
        Spec::Latest | Spec::Snapshot(_) | Spec::Before(_) => {
            let db = need_db()?;
            let (id, at, skipped, from) = rebuild(stores, db, spec, &opts.keys, scratch).await?;
            info.kind = "snapshot";
            info.snapshot = Some(id);
            info.taken_at = Some(at);
            info.skipped = skipped;
            info.read_as = if stores.len() > 1 {
                format!("rebuilt from store {from} (both SHA-256s proven)")
            } else {
                "rebuilt from the store (both SHA-256s proven)".into()
            };
            Opened {
                path: scratch.path.clone(),
                immutable: true,
            }
        }
        Spec::Live => {
            let db = need_db()?;
            info.kind = "live";
            info.path = Some(db.path.clone());
            copy_live(&db.path, scratch, &mut info).await?
        }
        Spec::File(p) => {
            info.path = Some(p.clone());
            check_file(p, which)?;
            let canon = fs::canonicalize(p).map_err(|e| Error::io("resolve", p, e))?;
            if configured
                .iter()
                .any(|d| fs::canonicalize(&d.path).is_ok_and(|c| c == canon))
            {
                // A database in use: copied consistently, never opened in place.
                copy_live(p, scratch, &mut info).await?
            } else {
                open_file(p, scratch, &mut info)?
            }
        }
    };
    Ok((info, opened))
}

/// Rebuild the snapshot `spec` names into the scratch file; for `latest`/`before:`, a
/// snapshot whose data proves bad is passed over for the next older one. With several stores,
/// each snapshot is read from the stores holding a good copy, in config order (the next
/// store's copy when one is bad or its store fails); returns the store it was read from too.
async fn rebuild(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    spec: &Spec,
    keys: &Keys,
    scratch: &Scratch,
) -> Result<(String, DateTime<Utc>, Vec<(String, String)>, String)> {
    let merged = Merged::load(stores, &db.name).await.require_readable()?;
    let several = stores.len() > 1;
    let catalog = merged.combined();
    let selector = match spec {
        Spec::Latest => Selector::Latest,
        Spec::Before(t) => Selector::Before(*t),
        Spec::Snapshot(id) => Selector::Snapshot(id.clone()),
        _ => unreachable!("a snapshot spec"),
    };
    let (candidates, mut skipped) = crate::restore::select(&catalog, &selector)?;
    for (store, e) in merged.unreadable() {
        skipped.push((
            format!("store {}", store.name),
            format!("could not be read: {}", crate::error::chain(e)),
        ));
    }
    let named = matches!(spec, Spec::Snapshot(_));
    for cand in candidates {
        let id = cand.key.id.to_string();
        let mut holders = merged.holders(&id, true);
        if holders.is_empty() {
            holders = merged.holders(&id, false);
        }
        let mut bad: Vec<(String, crate::damage::Damage)> = Vec::new();
        let mut failed_store: Option<(String, Error)> = None;
        for (store, cand) in holders {
            // A named snapshot is read whatever its status (a failed drill may be the very
            // damage to look into); its bytes are still proven against the manifest.
            let Some(m) = &cand.manifest else {
                let why = cand
                    .problem
                    .as_ref()
                    .map_or_else(|| "manifest is unreadable".into(), ToString::to_string);
                if named {
                    return Err(Error::Usage(format!(
                        "snapshot {} cannot be read: {why}",
                        cand.key.id
                    )));
                }
                skipped.push((cand.key.id.to_string(), why));
                continue;
            };
            match scratch.read_snapshot(&store.store, m, keys).await {
                Ok(Ok(_)) => return Ok((m.id.to_string(), m.created_at, skipped, store.name)),
                Ok(Err(damage)) => {
                    if several {
                        skipped.push((
                            id.clone(),
                            format!("its copy in store {}: {damage}", store.name),
                        ));
                    }
                    bad.push((store.name, damage));
                }
                Err(e @ Error::Storage(_)) if several => {
                    skipped.push((
                        id.clone(),
                        format!(
                            "its copy in store {} could not be read: {}",
                            store.name,
                            crate::error::chain(&e)
                        ),
                    ));
                    failed_store.get_or_insert((store.name, e));
                }
                Err(e) => return Err(e),
            }
        }
        if let Some((store, e)) = failed_store {
            // An older snapshot would not fix a store that fails: stop, as with one store.
            return Err(Error::InStore {
                store,
                source: Box::new(e),
            });
        }
        if bad.is_empty() {
            continue;
        }
        let (_, damage) = bad.swap_remove(0);
        if named {
            return Err(Error::Damaged {
                id,
                damage,
                remedy: None,
            });
        }
        if !several {
            skipped.push((id, damage.to_string()));
        }
    }
    let what = match spec {
        Spec::Before(t) => format!(
            "no good snapshot of {} taken before {}",
            db.name,
            crate::human::rfc3339(*t)
        ),
        _ => format!("no good snapshot of {}", db.name),
    };
    Err(Error::NoGoodSnapshot(format!(
        "{what} to compare in {}; take one with `guardian backup --db {}`{}",
        match stores {
            [one] => one.store.location(),
            several => several
                .iter()
                .map(NamedStore::describe)
                .collect::<Vec<_>>()
                .join(", "),
        },
        db.name,
        if skipped.is_empty() {
            String::new()
        } else {
            format!(
                " (skipped: {})",
                skipped
                    .iter()
                    .map(|(i, w)| format!("{i}: {w}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    )))
}

/// A database in use: an online-backup copy into the scratch folder.
async fn copy_live(src: &Path, scratch: &Scratch, info: &mut SideInfo) -> Result<Opened> {
    let dst = scratch.dir().join("live.sqlite");
    let (s, d) = (src.to_path_buf(), dst.clone());
    tokio::task::spawn_blocking(move || snapshot::copy_live(&s, &d))
        .await
        .map_err(|e| Error::Internal(format!("copy worker: {e}")))??;
    info.read_as = "online copy (one committed state, as a backup takes it)".into();
    Ok(Opened {
        path: dst,
        immutable: true,
    })
}

/// Refuse what is not a regular SQLite file, before anything opens it (a FIFO would block).
fn check_file(p: &Path, which: &str) -> Result<()> {
    let shown = p.display();
    let meta = fs::metadata(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Usage(format!(
            "{which} file {shown} does not exist; give latest, snapshot:<ID>, before:<RFC3339>, live or the path of a database file"
        )),
        _ => Error::io("look at", p, e),
    })?;
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "{which} {shown} is {}, not a database file; give the path of a SQLite database file",
            crate::durable::kind(&meta)
        )));
    }
    let mut f = crate::durable::open_regular(p).map_err(|e| Error::io("open", p, e))?;
    let mut header = [0u8; 16];
    let n = crate::durable::read_full(&mut f, &mut header).map_err(|e| Error::io("read", p, e))?;
    if n == 0 {
        return Err(Error::NotADatabase(format!(
            "{which} file {shown} is empty (0 bytes)"
        )));
    }
    if &header[..n] != b"SQLite format 3\0" {
        return Err(Error::NotADatabase(format!(
            "{which} file {shown} is not a SQLite database (no \"SQLite format 3\" header: the wrong file, encrypted, or its first page is damaged)"
        )));
    }
    Ok(())
}

/// A file: in place with `immutable=1`, or, when its `-wal` or `-journal` holds anything, a
/// copy of the file and that sidecar in the scratch folder (an immutable open ignores both).
fn open_file(p: &Path, scratch: &Scratch, info: &mut SideInfo) -> Result<Opened> {
    let [wal, _shm, journal] = snapshot::sidecars(p);
    let has = |s: &Path| fs::symlink_metadata(s).is_ok_and(|m| m.is_file() && m.len() > 0);
    let sidecar = [(wal, "-wal"), (journal, "-journal")]
        .into_iter()
        .find(|(s, _)| has(s));
    let Some((side, suffix)) = sidecar else {
        info.read_as = "in place, read-only (immutable: no lock, nothing written)".into();
        return Ok(Opened {
            path: p.to_path_buf(),
            immutable: true,
        });
    };
    let dst = scratch.dir().join("file.sqlite");
    let mut dst_side = dst.clone().into_os_string();
    dst_side.push(suffix);
    fs::copy(p, &dst).map_err(|e| Error::io("copy to the scratch folder", p, e))?;
    fs::copy(&side, &dst_side).map_err(|e| Error::io("copy to the scratch folder", &side, e))?;
    info.read_as = format!(
        "a copy with its {suffix} ({}), so SQLite {} it without touching the original",
        side.display(),
        if suffix == "-wal" {
            "reads"
        } else {
            "rolls back"
        }
    );
    Ok(Opened {
        path: dst,
        immutable: false,
    })
}

/// Open a side's database for reading.
fn connect(o: &Opened) -> Result<Connection> {
    let conn = if o.immutable {
        let uri = format!("file:{}?immutable=1", uri_path(&o.path));
        Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    } else {
        // A private copy: SQLite may read its WAL into a -shm, or roll its journal back.
        Connection::open_with_flags(
            &o.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    }
    .map_err(|e| snapshot::sqlite_error("open", &o.path, e))?;
    Ok(conn)
}

/// A side for a person: `snapshot 2026…-1a2b3c4d (taken …)`, `live /srv/app.db`, `file …`.
pub fn describe(s: &SideInfo) -> String {
    match (s.kind, &s.snapshot, &s.path) {
        ("snapshot", Some(id), _) => format!(
            "snapshot {id}{}",
            s.taken_at
                .map(|t| format!(" (taken {})", crate::human::rfc3339(t)))
                .unwrap_or_default()
        ),
        (kind, _, Some(p)) => format!("{kind} {}", p.display()),
        (kind, _, _) => format!("{kind} {}", s.spec),
    }
}

/// A path for a `file:` URI: `%`, `?` and `#` (and anything not printable) percent-encoded.
pub(crate) fn uri_path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = String::new();
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
