//! `guardian verify`: re-read stored snapshots and check their size and SHA-256 against the
//! manifest, to find bit rot in the store. No SQLite, no decompression: a cheap read of every
//! stored byte. It reports and never writes (the drill is what records a verdict).

use std::sync::Arc;

use serde::Serialize;
use tracing::{debug, instrument};

use crate::catalog;
use crate::crypto::Keys;
use crate::error::Result;
use crate::layout::SnapshotReader;
use crate::storage::Storage;

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// Stored size and SHA-256 match the manifest.
    Ok,
    /// The stored data is not what the manifest says (or is gone, or the manifest is bad).
    Bad(String),
    /// It could not be read (store unreachable, I/O error): not known to be bad.
    Error(String),
}

/// One snapshot's verification.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub db: String,
    pub id: String,
    pub created_at: String,
    pub stored_bytes: Option<u64>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Verify `db`'s newest snapshot, or all of them with `all`.
///
/// # Errors
/// Only when the store cannot be listed; per-snapshot read failures are [`Outcome::Error`].
#[instrument(skip_all, fields(db = %db))]
pub async fn run(store: &Arc<dyn Storage>, db: &str, all: bool) -> Result<Vec<Verified>> {
    let catalog = catalog::load(store, db).await?;
    let take = if all { catalog.snapshots.len() } else { 1 };
    let mut out = Vec::new();
    for s in catalog.snapshots.iter().take(take) {
        let outcome = match &s.manifest {
            None => Outcome::Bad(
                s.problem
                    .as_ref()
                    .map_or_else(|| "manifest is unreadable".into(), ToString::to_string),
            ),
            Some(m) => match SnapshotReader::new(store, m, &Keys::default())
                .verify_stored()
                .await
            {
                Ok(Ok(())) => Outcome::Ok,
                Ok(Err(damage)) => Outcome::Bad(damage.to_string()),
                Err(e) => Outcome::Error(crate::error::chain(&e)),
            },
        };
        match &outcome {
            Outcome::Ok => debug!(id = %s.key.id, "snapshot verified: size and sha256 match"),
            Outcome::Bad(why) => debug!(id = %s.key.id, problem = %why, "snapshot is damaged"),
            Outcome::Error(why) => {
                debug!(id = %s.key.id, error = %why, "snapshot could not be read")
            }
        }
        out.push(Verified {
            db: db.to_string(),
            id: s.key.id.to_string(),
            created_at: crate::human::rfc3339(s.created_at),
            stored_bytes: s.manifest.as_ref().map(|m| m.stored_len()),
            outcome,
        });
    }
    Ok(out)
}
