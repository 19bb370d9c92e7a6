//! Why a snapshot is bad: one enum for every way stored data can fail its proofs, kept apart
//! from operational errors (a store that cannot be reached, a full disk), which say nothing
//! about the snapshot.
//!
//! A [`Damage`] makes restore try the next older snapshot, makes a drill record a failed
//! verdict, and marks a snapshot `failed` in the catalog. Today it covers the stored data (what
//! the [`SnapshotReader`](crate::layout::SnapshotReader) and the listing prove); a bad
//! manifest and a failed SQLite check on restored bytes are still reported as text.

use crate::manifest::Sha256Hex;

/// What is wrong with a snapshot's stored data. The message is one line, without the snapshot
/// id (the caller says which snapshot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// A data object the manifest names is not in the store.
    #[error("data object {0} is missing")]
    ObjectMissing(String),

    /// A data object has another size than the manifest says.
    #[error("data object is {actual} bytes, manifest says {expected}")]
    ObjectTruncated { expected: u64, actual: u64 },

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

    /// The rebuilt database is not the one that was backed up.
    #[error("restored database checksum mismatch (expected sha256 {expected}, got {actual})")]
    RawChecksum {
        expected: Sha256Hex,
        actual: Sha256Hex,
    },
}
