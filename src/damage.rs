//! Why a snapshot is bad: one enum for every way a snapshot can fail its proofs, kept apart
//! from operational errors (a store that cannot be reached, a full disk), which say nothing
//! about the snapshot.
//!
//! A [`Damage`] makes restore try the next older snapshot, makes a drill record a failed
//! verdict, and marks a snapshot `failed` in the catalog. It covers the manifest
//! ([`Manifest::parse`](crate::manifest::Manifest::parse)), the stored data (what the
//! [`SnapshotReader`](crate::layout::SnapshotReader) and the listing prove), the SQLite check
//! of the restored bytes, and a failed drill verdict. [`Error::Damaged`](crate::error::Error)
//! carries one to the exit code 1.

use crate::manifest::{ManifestError, Sha256Hex};

/// What is wrong with a snapshot. The message is one line, without the snapshot id (the
/// caller says which snapshot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The manifest cannot be used: invalid, or of a format this guardian does not read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),

    /// The manifest could not be read whole (larger than a manifest may be); the text is the
    /// store's error.
    #[error("manifest unreadable: {0}")]
    ManifestUnreadable(String),

    /// A data object the manifest names is not in the store.
    #[error("data object {0} is missing")]
    ObjectMissing(String),

    /// A data object has another size than the manifest says.
    #[error("data object is {actual} bytes, manifest says {expected}")]
    ObjectTruncated { expected: u64, actual: u64 },

    /// The store kept another number of bytes than the backup wrote (found before the
    /// manifest is published).
    #[error("store took {stored} bytes, compressor produced {produced}")]
    UploadShort { stored: u64, produced: u64 },

    /// The stored bytes are not a valid stream (gzip, age), or decompress to too much.
    #[error("stored object is damaged: {0}")]
    Undecodable(String),

    /// The stored bytes are not the ones the manifest recorded.
    #[error("stored object checksum mismatch (expected {expected_len} bytes sha256 {expected}, got {actual_len} bytes sha256 {actual})")]
    StoredChecksum {
        expected_len: u64,
        expected: Sha256Hex,
        actual_len: u64,
        actual: Sha256Hex,
    },

    /// An object of an incremental's chain in another snapshot's folder (its base's, a
    /// parent's page set) is bad; `object` names it, as its own folder does not.
    #[error("{object}: {damage}")]
    Part { object: String, damage: Box<Damage> },

    /// The rebuilt database is not the one that was backed up.
    #[error("restored database checksum mismatch (expected sha256 {expected}, got {actual})")]
    RawChecksum {
        expected: Sha256Hex,
        actual: Sha256Hex,
    },

    /// The restored bytes failed a SQLite check (`check` is the pragma); `detail` holds the
    /// first problems it reported.
    #[error("PRAGMA {check} failed: {detail}")]
    CheckFailed { check: &'static str, detail: String },

    /// SQLite could not check the restored bytes at all: not a database, or too damaged to
    /// open. The text is the error's cause chain.
    #[error("{0}")]
    NotADatabase(String),

    /// The newest drill verdict on the snapshot is a failure; `record` is its key.
    #[error("drill failed at {at} (see {record})")]
    DrillFailed { at: String, record: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::manifest::ManifestError;

    #[test]
    fn a_damaged_snapshot_error_keeps_its_one_line_text_and_exit_code_1() {
        let e = Error::Damaged {
            id: "20260102T030405Z".into(),
            damage: Damage::CheckFailed {
                check: "integrity_check",
                detail: "row 3 missing from index ia".into(),
            },
            remedy: Some("to restore it anyway (the SHA-256 checks still run): guardian restore --db market --snapshot 20260102T030405Z --check quick".into()),
        };
        assert_eq!(
            e.to_string(),
            "snapshot 20260102T030405Z is damaged: PRAGMA integrity_check failed: row 3 missing from index ia; to restore it anyway (the SHA-256 checks still run): guardian restore --db market --snapshot 20260102T030405Z --check quick"
        );
        assert_eq!(e.exit_code(), 1);
        let e = Error::Damaged {
            id: "20260102T030405Z".into(),
            damage: ManifestError::UnsupportedFormat { version: 99 }.into(),
            remedy: None,
        };
        assert_eq!(
            e.to_string(),
            format!("snapshot 20260102T030405Z is damaged: manifest format_version 99 is not supported (this guardian reads 1 to {}; upgrade guardian)", crate::manifest::FORMAT_VERSION)
        );
    }

    #[test]
    fn a_bug_in_guardian_is_operational_not_usage_or_damage() {
        let e = Error::Internal("job panicked".into());
        assert_eq!(e.exit_code(), 2);
        assert!(!e.is_data_error());
        assert_eq!(
            e.to_string(),
            "internal error (a bug in guardian): job panicked"
        );
    }
}
