//! guardian: online backups of live SQLite databases, restore drills, and safe restores.
//!
//! # Layout
//! (`pub` modules are what `main.rs` and the tests use; the rest are `pub(crate)`, so the
//! compiler reports what nothing uses. `docs/ARCHITECTURE.md` shows the layers.)
//! - [`cli`]: the command line (a contract) and what each command prints (`cli/commands.rs`:
//!   the database loop of each command); the top layer, imported by nothing.
//! - [`app`]: the loaded config, the opened store and the keys every command works with.
//! - [`jobs`]: the job runner: lock → run → metrics → alerts → outcome, for one job (backup,
//!   drill, prune, verify, sync) on one database, used by the commands and the service alike.
//! - [`config`]: the TOML config: parsing, defaults, validation with dotted key paths.
//! - [`error`]: the error type and the exit-code policy (0 ok, 1 bad data, 2 operational,
//!   3 another guardian holds the database's lock).
//! - [`snapshot`]: SQLite access: the online copy, checks (`integrity_check` split over the
//!   cores, `snapshot/check.rs`), inspection, an incremental's read transaction with more
//!   connections on its state for the check (`snapshot/read.rs`).
//! - [`archive`]: streaming parallel gzip + SHA-256, and the verified reverse.
//! - [`manifest`]: snapshot ids, object-key layout, the manifest (commit marker) and its data
//!   layouts (format 2; format 1 still read).
//! - [`layout`]: `SnapshotWriter` (a backup's data objects, then its manifest, last) and
//!   `SnapshotReader` (the verified raw bytes of any snapshot, for restore, drill, verify;
//!   `layout/chain.rs` rebuilds an incremental from its base's object and its page sets).
//! - [`damage`]: why a snapshot is bad (manifest, objects, checksums, SQLite check, failed
//!   drill), apart from operational errors; `Error::Damaged` carries one (exit 1).
//! - [`storage`]: the narrow storage trait, its backends (local directory, S3) with their own
//!   config and `doctor` checks.
//! - [`catalog`]: what is stored for a database: snapshots, statuses, orphans.
//! - [`stores`]: a database's snapshots across its several stores, per snapshot and store:
//!   present, damaged, missing or unreadable; where to read a snapshot, in config order.
//! - [`backup`]: one backup: copy, check ∥ compress + upload, manifest last.
//! - [`incremental`]: one incremental snapshot: the changed pages of one read transaction,
//!   streamed into a page set on the newest chain (or the reason a full is needed).
//! - [`pageset`]: the page-set format, and the page digests an incremental compares with (a
//!   local cache, rebuilt from the store).
//! - [`restore`]: pick, verify, and swap a snapshot into place without losing anything.
//! - [`table_restore`]: `restore --table`: the whole file kept aside, then one transaction
//!   that puts the tables' rows back from a snapshot, foreign keys checked before the commit.
//! - [`target`]: what a restore may write to: target checks, in-use detection, its staging files.
//! - [`status`]: health per database.
//! - [`outcome`]: the recorded outcome of each database's last backup attempt.
//! - [`diff`]: `guardian diff`: rows only in FROM, only in TO and changed between snapshots,
//!   the live database and files (read-only, read past damage), and the `--sql` that replays
//!   them (`diff/`: schema, key-ordered scans, the merge, SQL).
//! - [`drill`]: the restore drill: restore into scratch, check everything, record the verdict.
//! - [`rto`]: the proven recovery time (the restore time the last passed drill measured) and
//!   the estimates built on it (`restore --dry-run`, the ETA on a terminal).
//! - [`verify`]: re-read stored snapshots and check their checksums (bit rot), no SQLite.
//! - [`sync`]: copy the snapshots a store lacks (or holds damaged) from a store with a good
//!   copy: objects streamed and checked on arrival, the chain oldest first, manifest last.
//! - [`retention`]: which snapshots to keep (a pure function) and the prune that applies it.
//! - [`schedule`]: cron strings → scheduler jobs; no business logic.
//! - [`service`]: `guardian run`: one run per database at a time, jitter, logging job
//!   outcomes, graceful shutdown.
//! - [`metrics`]: the service's Prometheus metrics and `/healthz`.
//! - [`statuspage`]: the status page of `guardian run` (`/`, `/status.json`): HTML + inline SVG.
//! - [`notify`]: webhook and heartbeat alerts.
//! - [`init`]: `guardian init`: a commented starter config, checked before it is written.
//! - [`doctor`]: checks of config, databases, credentials and the store, one line each.
//! - [`output`]: result lines on stdout, error lines on stderr; a closed pipe never panics.
//! - [`progress`]: progress bars on a terminal, start/end log lines elsewhere.
//! - [`crypto`]: optional age encryption keys.
//! - [`durable`]: exclusive temp files, fsync, atomic rename, full reads.
//! - [`names`]: the rules for database names and object-key components (a leaf).
//! - [`human`]: times, ages, sizes and error chains for humans (a leaf).
//! - [`lock`]: one backup, drill or prune per database at a time, across processes.

pub mod app;
pub(crate) mod archive;
pub(crate) mod backup;
pub mod catalog;
pub mod cli;
pub mod config;
pub(crate) mod crypto;
pub mod damage;
pub mod diff;
pub mod doctor;
pub mod drill;
pub(crate) mod durable;
pub mod error;
pub(crate) mod human;
pub(crate) mod incremental;
pub(crate) mod init;
pub(crate) mod jobs;
pub(crate) mod layout;
pub(crate) mod lock;
pub mod manifest;
pub(crate) mod metrics;
pub(crate) mod names;
pub mod notify;
pub(crate) mod outcome;
pub mod output;
pub(crate) mod pageset;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod rto;
pub(crate) mod schedule;
pub mod service;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod statuspage;
pub mod storage;
pub mod stores;
pub(crate) mod sync;
pub(crate) mod table_restore;
pub(crate) mod target;
pub(crate) mod verify;

pub use error::{Error, Result};
