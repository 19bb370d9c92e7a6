//! The crate's error type and the exit-code policy.
//!
//! Policy (as ripgrep's `main`): library code returns [`Error`], never prints it and never exits.
//! `main` prints the whole cause chain once, on one line, and maps the error to an exit code:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | ok |
//! | 1 | the data is bad: checksum mismatch, failed integrity check, no good snapshot |
//! | 2 | usage, config or operational error: file missing, storage unreachable, permission |
//! | 3 | another guardian process is working on the same database (see `lock`); nothing was done |
//!
//! Messages are lowercase, name the thing and the operation, and carry a remedy where one exists.
//! The cause is attached with `#[source]`, never repeated in the message.

use std::path::PathBuf;

use crate::damage::Damage;
use crate::storage::StorageError;

/// Every error report renders the cause chain with this (it lives with the other formatting).
pub use crate::human::chain;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, in groups a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is missing, unreadable or invalid.
    #[error("config: {0}")]
    Config(String),

    /// The command line asked for something that does not exist or does not fit.
    #[error("{0}")]
    Usage(String),

    /// The source database cannot be read as configured (missing, a wal without its -shm on
    /// a read-only mount): fix the config or the file.
    #[error("{0}")]
    Source(String),

    /// A file is not a SQLite database (empty, another format, encrypted). For a source this
    /// is bad input; for a restored snapshot it is damage (see `damage`).
    #[error("{0}")]
    NotADatabase(String),

    /// A database stayed locked by another process longer than guardian waits.
    #[error("{0}")]
    Timeout(String),

    /// What a job was working on went away under it (a snapshot deleted by a concurrent
    /// prune); nothing was recorded, and running it again is the fix.
    #[error("{0}")]
    Gone(String),

    /// A storage operation failed.
    #[error(transparent)]
    Storage(#[from] StorageError),

    /// A SQLite call failed on a database (source, staging copy or restore target).
    #[error("{op} {path}")]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A local file operation failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database (or a copy of it) failed an integrity check.
    #[error("integrity check failed for {what}: {detail}")]
    Integrity { what: String, detail: String },

    /// A snapshot is damaged (bad manifest, missing or wrong object, failed SQLite check);
    /// `remedy`, when there is one, says how to use it anyway.
    #[error("snapshot {id} is damaged: {damage}{}", remedy.as_ref().map(|r| format!("; {r}")).unwrap_or_default())]
    Damaged {
        id: String,
        damage: Damage,
        remedy: Option<String>,
    },

    /// No snapshot passed the checks (or none exists).
    #[error("{0}")]
    NoGoodSnapshot(String),

    /// The target database is open in another process.
    #[error("{0}")]
    InUse(String),

    /// Another guardian process holds the database's job lock.
    #[error("{0}")]
    Busy(String),

    /// The source database file was deleted, renamed away or replaced while it was being
    /// backed up. The snapshot was published (it is a consistent copy of the file as it was),
    /// but the database the application uses is not where the config says: a human must look.
    #[error("database file {path} was {how} during the backup; snapshot {id} was published anyway: it is a consistent copy of the database as it was when the copy started (restore it if the file was lost by mistake, and find out what happened to it before the application recreates an empty one)", path = path.display())]
    SourceGone {
        path: PathBuf,
        /// The snapshot that was published.
        id: String,
        how: SourceChange,
    },

    /// A snapshot reached some of its database's stores but not the others: it is published
    /// (and kept) where it landed, and the stores that missed it need `guardian sync`.
    #[error("snapshot {id} of {db} reached {} but not {}: {}; it is kept where it landed: check the failed store{} with `guardian doctor`, then copy the snapshot with `guardian sync --db {db}`", landed.join(", "), missed.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", "), missed.iter().map(|(s, why)| format!("{s}: {why}")).collect::<Vec<_>>().join("; "), if missed.len() == 1 { "" } else { "s" })]
    StoresMissed {
        db: String,
        /// The snapshot that was published.
        id: String,
        /// The stores that hold it, in config order.
        landed: Vec<String>,
        /// The stores that do not, each with why (one line).
        missed: Vec<(String, String)>,
    },

    /// A file so damaged that nothing of it can be read (`diff`: its schema is unreadable).
    #[error("{0}")]
    Unreadable(String),

    /// A table restore's rows break foreign keys: its transaction was rolled back, nothing
    /// changed.
    #[error("the restored rows break foreign keys, so the transaction was rolled back and nothing changed ({}): {}; put back the tables they refer to as well (more --table), or restore the whole database", aside.as_ref().map_or_else(String::new, |p| format!("the copy kept aside at {} stays", p.display())), violations.join("; "))]
    ForeignKeys {
        /// The first violations, one line each (the last may say how many more there are).
        violations: Vec<String>,
        /// The copy of the whole database taken first.
        aside: Option<PathBuf>,
    },

    /// The operation was stopped by a signal (a restore), before it changed anything.
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// A bug in guardian (a job that panicked, a value its own code produced that does not
    /// parse): nothing about the data or the usage.
    #[error("internal error (a bug in guardian): {0}")]
    Internal(String),

    /// An operation on one of a database's several stores failed (the source says how).
    #[error("store {store}")]
    InStore {
        store: String,
        #[source]
        source: Box<Error>,
    },

    /// Failures were already reported one by one (e.g. one line per database); exit with this code.
    #[error("one or more operations failed (see above)")]
    Reported(u8),
}

/// What happened to a source database file during its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChange {
    /// Nothing is at the configured path any more.
    DeletedOrRenamed,
    /// Another file is at the configured path.
    Replaced,
}

impl std::fmt::Display for SourceChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceChange::DeletedOrRenamed => "deleted or renamed away",
            SourceChange::Replaced => "replaced by another file",
        })
    }
}

impl Error {
    /// The process exit code this error maps to (see the module doc).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Integrity { .. }
            | Error::Damaged { .. }
            | Error::NoGoodSnapshot(_)
            | Error::ForeignKeys { .. }
            | Error::Unreadable(_) => 1,
            Error::Config(_)
            | Error::Usage(_)
            | Error::Source(_)
            | Error::NotADatabase(_)
            | Error::Timeout(_)
            | Error::Gone(_)
            | Error::Storage(_)
            | Error::Sqlite { .. }
            | Error::Io { .. }
            | Error::InUse(_)
            | Error::SourceGone { .. }
            | Error::StoresMissed { .. }
            | Error::Cancelled(_)
            | Error::Internal(_) => 2,
            Error::Busy(_) => 3,
            Error::Reported(code) => *code,
            Error::InStore { source, .. } => source.exit_code(),
        }
    }

    /// True when another guardian holds the database's lock: nothing was done, and the other
    /// process reports its own outcome (so this one sends no alert).
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy(_))
    }

    /// True when the error says the data itself is bad (exit code 1).
    pub fn is_data_error(&self) -> bool {
        self.exit_code() == 1
    }

    /// True when a file turned out not to be a SQLite database: damage when that file is a
    /// restored snapshot.
    pub fn is_not_a_database(&self) -> bool {
        matches!(self, Error::NotADatabase(_))
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sqlite(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: rusqlite::Error,
    ) -> Self {
        Error::Sqlite {
            op,
            path: path.into(),
            source,
        }
    }
}

/// The exit code of a run that had outcomes `a` and `b` (one per database): an operational
/// error (2) outranks bad data (1), which outranks "another guardian was busy" (3), which
/// outranks ok (0).
pub(crate) fn worst_exit_code(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        0 => 0,
        3 => 1,
        1 => 2,
        _ => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}
