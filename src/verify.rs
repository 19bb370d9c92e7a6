//! `guardian verify`: re-read stored snapshots and check their size and SHA-256 against the
//! manifest, to find bit rot in the store. No SQLite, no decompression: a cheap read of every
//! stored byte. It reports and never writes (the drill is what records a verdict).
//!
//! With several stores it compares them: every store's copy is read and checked against its
//! manifest, and a snapshot a store lacks is a failure naming the store (`guardian sync`
//! copies it there).

use std::sync::Arc;

use serde::Serialize;
use tracing::{debug, instrument};

use crate::catalog::SnapshotEntry;
use crate::crypto::Keys;
use crate::error::Result;
use crate::layout::SnapshotReader;
use crate::storage::{NamedStore, Storage};
use crate::stores::{Copy, Merged};

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

/// One snapshot's verification in one store.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub db: String,
    pub id: String,
    pub created_at: String,
    pub stored_bytes: Option<u64>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The store whose copy this is (`primary` for `[storage]`).
    pub store: String,
    /// The store has no copy of this snapshot (then `outcome` is `bad`; `guardian sync`
    /// copies it).
    pub missing: bool,
}

/// Verify `db`'s newest snapshot, or all of them with `all`, in every one of `stores`: each
/// copy's objects against its manifest (size and stored SHA-256), and a copy a store lacks
/// is a failure naming the store and the fix (`guardian sync`).
///
/// # Errors
/// Only when no store can be listed; per-snapshot read failures are [`Outcome::Error`].
#[instrument(skip_all, fields(db = %db))]
pub async fn run(stores: &[NamedStore], db: &str, all: bool) -> Result<Vec<Verified>> {
    let merged = Merged::load(stores, db).await.require_readable()?;
    let take = if all { merged.snapshots.len() } else { 1 };
    let mut out = Vec::new();
    for s in merged.snapshots.iter().take(take) {
        let first = out.len();
        for (store, copy) in merged.copies(s) {
            let (outcome, entry) = match copy {
                Copy::Present(e) | Copy::Damaged(e) => {
                    let outcome = match verify_copy(&store.store, e).await {
                        Outcome::Ok if merged.differs(s, e) => Outcome::Bad(format!(
                            "its manifest in store {} differs from the copy that stands for this snapshot: two different snapshots under one id (one copy was changed); restore passes over it: compare the two folders and remove the wrong copy",
                            store.name
                        )),
                        other => other,
                    };
                    (outcome, Some(e))
                }
                Copy::Missing => (
                    Outcome::Bad(format!(
                        "missing from store {}: copy it there with `guardian sync --db {db}`",
                        store.name
                    )),
                    None,
                ),
                Copy::Unreadable(e) => (
                    Outcome::Error(format!(
                        "store {} could not be listed: {}",
                        store.name,
                        crate::error::chain(e)
                    )),
                    None,
                ),
            };
            match &outcome {
                Outcome::Ok => {
                    debug!(id = %s.id, store = %store.name, "snapshot verified: size and sha256 match")
                }
                Outcome::Bad(why) => {
                    debug!(id = %s.id, store = %store.name, problem = %why, "snapshot is damaged or missing")
                }
                Outcome::Error(why) => {
                    debug!(id = %s.id, store = %store.name, error = %why, "snapshot could not be read")
                }
            }
            let best = merged.best(s);
            out.push(Verified {
                db: db.to_string(),
                id: s.id.clone(),
                created_at: crate::human::rfc3339(s.created_at),
                stored_bytes: entry
                    .unwrap_or(best)
                    .manifest
                    .as_ref()
                    .map(|m| m.stored_len()),
                outcome,
                store: store.name.clone(),
                missing: matches!(copy, Copy::Missing),
            });
        }
        // A damaged copy beside a good one: say where the good one is.
        let good = out[first..]
            .iter()
            .find(|v| v.outcome == Outcome::Ok)
            .map(|v| v.store.clone());
        if let Some(good) = good {
            for v in &mut out[first..] {
                if let (Outcome::Bad(why), false) = (&mut v.outcome, v.missing) {
                    why.push_str(&format!(
                        "; `guardian sync --db {db}` replaces it with the good copy in {good}"
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Re-read the objects of one store's copy and check them against its manifest.
async fn verify_copy(store: &Arc<dyn Storage>, s: &SnapshotEntry) -> Outcome {
    match &s.manifest {
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
    }
}
