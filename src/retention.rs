//! Retention: which snapshots to keep and which to delete, and the prune that acts on it.
//!
//! [`plan`] is a pure function over a list of snapshots (unit-tested as tables in
//! `tests/retention.rs`), with restic's `forget --keep-*` semantics: a snapshot is kept if any
//! rule keeps it; `keep_last` keeps the newest N, and `daily`/`weekly`/`monthly`/`yearly` keep
//! the newest snapshot of each of the last N days/ISO weeks/months/years that have one
//! (calendar boundaries in the database's time zone).
//!
//! Safety over thrift, on top of restic's rules:
//! - a policy with no rule deletes nothing;
//! - when the newest snapshot is failed, nothing is deleted (the older ones may be all you have);
//! - the newest verified snapshot is always kept;
//! - failed snapshots never fill a slot (a damaged snapshot must not push out a good one), and
//!   are kept as evidence while they are newer than the oldest kept snapshot;
//! - snapshots dated in the future are kept and fill no slot (a bad clock or a planted
//!   snapshot cannot push good ones out);
//! - a snapshot is deleted only when a newer one has passed `integrity_check` (at backup time,
//!   in a drill or in a restore): see [`require_proof`];
//! - orphans (data without a manifest) are deleted only when older than a day, and then with
//!   or without a policy (the service prunes after every backup for this).
//!
//! Deletion is two-phase ([`apply_marks`]): prune first marks a snapshot the policy no longer
//! keeps (a `tombstone.json` in its folder), and deletes it only in a prune at least
//! `keep_delete` (default 24 h) later that still would. Meanwhile it stays listed (with the
//! mark) and restorable: `--snapshot` names it, and `--latest` reaches it, in time order, only
//! when every newer snapshot fails its checks, which is when it matters most. A snapshot needed
//! again in the window, kept by the policy again or restored, is un-marked.
//!
//! [`prune`] deletes the manifest first, then the rest of the folder: a crash in between leaves
//! an orphan, never a manifest without its data.
//!
//! Several stores: [`prune_stores`] prunes each store of the database on its own catalog (its
//! own statuses, proofs and marks: a snapshot is deleted from a store only when a newer one
//! *in that store* has passed `integrity_check`). A store that fails is reported and the others
//! are still pruned.

use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::catalog::{self, Catalog, SnapshotStatus};
use crate::config::{DatabaseConfig, RetentionConfig};
use crate::error::{Error, Result};
use crate::human::rfc3339;
use crate::manifest::{self, ObjectRole, SnapshotKey};
use crate::storage::{NamedStore, PutMode, Storage, StorageError};
use bytes::Bytes;

/// How old an orphan must be before it is deleted (an upload in progress is an orphan too).
pub const ORPHAN_GRACE: Duration = Duration::hours(24);

/// One snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub status: SnapshotStatus,
}

/// Why a snapshot stays (or goes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Reason {
    /// One of the newest `keep_last` (1-based rank).
    Last(u32),
    /// Newest of its day (`2026-11-24`).
    Daily(String),
    /// Newest of its ISO week (`2026-W48`).
    Weekly(String),
    /// Newest of its month (`2026-11`).
    Monthly(String),
    /// Newest of its year (`2026`).
    Yearly(String),
    /// The newest snapshot a drill verified.
    NewestVerified,
    /// Dated after now.
    Future,
    /// A failed snapshot newer than the oldest kept one, kept as evidence.
    FailedEvidence,
    /// Nothing is deleted this time (see [`Plan::hold`]).
    Hold,
    /// No newer snapshot has passed `integrity_check` (see [`require_proof`]).
    Unproven,
    /// No rule keeps it.
    Expired,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Last(n) => write!(f, "last {n}"),
            Reason::Daily(k) => write!(f, "daily {k}"),
            Reason::Weekly(k) => write!(f, "weekly {k}"),
            Reason::Monthly(k) => write!(f, "monthly {k}"),
            Reason::Yearly(k) => write!(f, "yearly {k}"),
            Reason::NewestVerified => f.write_str("newest verified"),
            Reason::Future => f.write_str("dated in the future"),
            Reason::FailedEvidence => {
                f.write_str("failed; kept as evidence while newer than the oldest kept snapshot")
            }
            Reason::Hold => f.write_str("hold"),
            Reason::Unproven => {
                f.write_str("no newer snapshot has passed integrity_check yet (a drill proves one)")
            }
            Reason::Expired => f.write_str("no rule keeps it"),
        }
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.to_string()
    }
}

/// What prune does with a snapshot. Deletion is two-phase: a snapshot the policy no longer
/// keeps is first marked (a tombstone object in its folder), and deleted by a prune at least
/// `keep_delete` later that still would delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Kept (and not marked).
    Keep,
    /// Kept, and the mark an earlier prune left is taken back: it is needed again.
    Unmark,
    /// Not kept: marked for deletion now.
    Mark,
    /// Marked earlier; deleted once `keep_delete` has passed since the mark.
    Wait,
    /// Marked at least `keep_delete` ago (or `keep_delete` is 0): deleted now.
    Delete,
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub status: SnapshotStatus,
    pub keep: bool,
    pub reasons: Vec<Reason>,
    pub action: Action,
    /// When an earlier prune marked it for deletion.
    pub marked_at: Option<DateTime<Utc>>,
    /// When a prune may delete it (not kept only).
    pub delete_after: Option<DateTime<Utc>>,
}

/// The verdict on every snapshot, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Set when nothing may be deleted this time, with the reason.
    pub hold: Option<String>,
    /// Set when snapshots the policy would delete are kept for want of a newer snapshot that
    /// passed `integrity_check`, with what to do (see [`require_proof`]).
    pub unproven: Option<String>,
}

impl Plan {
    /// The snapshots to delete now.
    pub fn deletions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Delete)
    }

    /// The snapshots with this `action`.
    pub fn with_action(&self, action: Action) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(move |d| d.action == action)
    }
}

/// Decide which of `snapshots` to keep under `policy`, with calendar boundaries in `tz`.
pub fn plan(snapshots: &[Candidate], policy: &RetentionConfig, tz: Tz, now: DateTime<Utc>) -> Plan {
    let mut sorted: Vec<&Candidate> = snapshots.iter().collect();
    sorted.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|c| Decision {
            id: c.id.clone(),
            created_at: c.created_at,
            status: c.status,
            keep: false,
            reasons: Vec::new(),
            action: Action::Keep,
            marked_at: None,
            delete_after: None,
        })
        .collect();

    if let Some(h) = hold(&decisions, policy, now) {
        for d in &mut decisions {
            d.keep = true;
            d.reasons.push(Reason::Hold);
        }
        return Plan {
            decisions,
            hold: Some(h),
            unproven: None,
        };
    }
    apply_rules(&mut decisions, policy, tz, now);
    keep_evidence_and_expire(&mut decisions, now);
    Plan {
        decisions,
        hold: None,
        unproven: None,
    }
}

/// Why nothing may be deleted at all: no rule is set, or the newest snapshot (in the past) is
/// failed, so no good backup replaces what would go.
fn hold(decisions: &[Decision], policy: &RetentionConfig, now: DateTime<Utc>) -> Option<String> {
    if policy.is_empty() {
        return Some("no retention rule is set; every snapshot is kept".to_string());
    }
    decisions
        .iter()
        .find(|d| d.created_at <= now)
        .filter(|d| d.status == SnapshotStatus::Failed)
        .map(|n| {
            format!(
                "the newest snapshot {} is failed; nothing is deleted until a good backup exists",
                n.id
            )
        })
}

/// The slot rules (`keep_last`, then one per day, week, month and year, in `tz`) over good
/// snapshots in the past, newest first (`decisions` is sorted so); future ones are kept apart,
/// and the newest verified snapshot is always kept.
fn apply_rules(decisions: &mut [Decision], policy: &RetentionConfig, tz: Tz, now: DateTime<Utc>) {
    let mut last_left = policy.keep_last;
    let mut rank = 0;
    type Bucket = (
        u32,
        Option<String>,
        fn(String) -> Reason,
        fn(DateTime<Tz>) -> String,
    );
    let mut buckets: [Bucket; 4] = [
        (policy.daily, None, Reason::Daily, |t| {
            t.format("%Y-%m-%d").to_string()
        }),
        (policy.weekly, None, Reason::Weekly, |t| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        (policy.monthly, None, Reason::Monthly, |t| {
            t.format("%Y-%m").to_string()
        }),
        (policy.yearly, None, Reason::Yearly, |t| {
            t.format("%Y").to_string()
        }),
    ];
    for d in decisions.iter_mut() {
        if d.created_at > now {
            d.keep = true;
            d.reasons.push(Reason::Future);
            continue;
        }
        if d.status == SnapshotStatus::Failed {
            continue;
        }
        if last_left > 0 {
            rank += 1;
            last_left -= 1;
            d.reasons.push(Reason::Last(rank));
        }
        let local = d.created_at.with_timezone(&tz);
        for (left, last, reason, key_of) in &mut buckets {
            if *left == 0 {
                continue;
            }
            let key = key_of(local);
            if last.as_ref() != Some(&key) {
                *left -= 1;
                *last = Some(key.clone());
                d.reasons.push(reason(key));
            }
        }
        d.keep = !d.reasons.is_empty();
    }
    if let Some(d) = decisions
        .iter_mut()
        .find(|d| d.created_at <= now && d.status == SnapshotStatus::Verified)
    {
        d.keep = true;
        d.reasons.push(Reason::NewestVerified);
    }
}

/// Failed snapshots no older than the oldest kept good one stay as evidence; everything else
/// no rule kept is to be deleted.
fn keep_evidence_and_expire(decisions: &mut [Decision], now: DateTime<Utc>) {
    let oldest_kept = decisions
        .iter()
        .filter(|d| d.keep && d.status != SnapshotStatus::Failed && d.created_at <= now)
        .map(|d| d.created_at)
        .min();
    for d in decisions.iter_mut() {
        if d.status == SnapshotStatus::Failed
            && d.created_at <= now
            && oldest_kept.is_some_and(|o| d.created_at >= o)
        {
            d.keep = true;
            d.reasons.push(Reason::FailedEvidence);
        }
        if !d.keep {
            d.reasons.push(Reason::Expired);
            d.action = Action::Delete;
        }
    }
}

/// Keep every snapshot `plan` would delete unless a *newer* snapshot, dated in the past and not
/// failed, has passed `PRAGMA integrity_check` (its id is in `proven`: checked at backup time,
/// by a drill, or by a restore). A copy checked only with `quick_check` may carry damage that
/// check cannot see (an index out of step with its table); deleting the snapshots from before
/// it would leave nothing whole. The newest proven snapshot is therefore always kept.
///
/// Prune does not run a drill itself to get the proof: it keeps the older snapshots and says
/// so (a drill downloads and checks a whole snapshot, which a prune after every backup should
/// not do unasked; the scheduled drill, or `guardian drill`, provides the proof).
pub fn require_proof(plan: &mut Plan, proven: &dyn Fn(&str) -> bool, db: &str) {
    let mut newer_proven = false;
    let mut held = 0;
    for d in &mut plan.decisions {
        if !d.keep && !newer_proven {
            d.keep = true;
            d.action = Action::Keep;
            d.reasons.retain(|r| *r != Reason::Expired);
            d.reasons.push(Reason::Unproven);
            held += 1;
        }
        let future = d.reasons.contains(&Reason::Future);
        if !future && d.status != SnapshotStatus::Failed && proven(&d.id) {
            newer_proven = true;
        }
    }
    if held > 0 {
        plan.unproven = Some(format!(
            "{held} snapshot(s) the policy would delete are kept: no newer snapshot has passed integrity_check; \
             run `guardian drill --db {db}` (or set backup.check = \"integrity\") and prune again"
        ));
    }
}

/// Turn the plan's keep/delete into two-phase actions: `marked_at(id)` is when an earlier prune
/// marked the snapshot, if it did. A kept snapshot that is marked is un-marked; one not kept is
/// marked, or deleted once it has been marked for `keep_delete` (at once when that is zero).
pub fn apply_marks(
    plan: &mut Plan,
    marked_at: &dyn Fn(&str) -> Option<DateTime<Utc>>,
    keep_delete: Duration,
    now: DateTime<Utc>,
) {
    for d in &mut plan.decisions {
        d.marked_at = marked_at(&d.id);
        // A keep_delete too long to add to a date never expires.
        d.delete_after = (!d.keep)
            .then(|| d.marked_at.unwrap_or(now).checked_add_signed(keep_delete))
            .flatten();
        d.action = match (d.keep, d.marked_at) {
            (true, None) => Action::Keep,
            (true, Some(_)) => Action::Unmark,
            (false, _) if d.delete_after.is_some_and(|t| t <= now) => Action::Delete,
            (false, None) => Action::Mark,
            (false, Some(_)) => Action::Wait,
        };
    }
}

/// An orphan folder (objects but no manifest) and what prune does with it.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanDecision {
    pub id: String,
    pub objects: usize,
    pub delete: bool,
    pub reason: String,
}

/// Decide which orphans to delete: only those whose id and every object are over a day old,
/// with or without a retention policy.
pub fn plan_orphans(catalog: &Catalog, now: DateTime<Utc>) -> Vec<OrphanDecision> {
    catalog
        .orphans
        .iter()
        .map(|o| {
            let newest = o.objects.iter().filter_map(|m| m.modified).max();
            let young = o.key.id.time() > now - ORPHAN_GRACE
                || newest.is_some_and(|t| t > now - ORPHAN_GRACE);
            let (delete, reason) = if young {
                (
                    false,
                    "less than a day old (an upload may be in progress)".to_string(),
                )
            } else {
                (true, "interrupted backup over a day old".to_string())
            };
            OrphanDecision {
                id: o.key.id.to_string(),
                objects: o.objects.len(),
                delete,
                reason,
            }
        })
        .collect()
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub db: String,
    /// The store this report is about (`primary` for `[storage]`).
    pub store: String,
    /// `None` when the database has no `[databases.retention]`.
    pub policy: Option<RetentionConfig>,
    pub plan: Plan,
    pub orphans: Vec<OrphanDecision>,
    /// Snapshot and orphan ids actually deleted.
    pub deleted: Vec<String>,
    /// Snapshot ids marked for deletion by this prune.
    pub marked: Vec<String>,
    /// Snapshot ids whose mark this prune took back.
    pub unmarked: Vec<String>,
    /// Set when the store refused a delete: retention is delegated to the provider, and this
    /// prune deleted nothing more (said once, not once per object; docs/S3.md).
    pub delegated: Option<String>,
    pub dry_run: bool,
}

/// The plan of a prune of `catalog` now, before its two-phase marks: the policy's verdicts,
/// with [`require_proof`] applied.
fn plan_for(db: &DatabaseConfig, catalog: &Catalog, now: DateTime<Utc>) -> Plan {
    let candidates: Vec<Candidate> = catalog
        .snapshots
        .iter()
        .map(|s| Candidate {
            id: s.key.id.to_string(),
            created_at: s.created_at,
            status: s.status,
        })
        .collect();
    let policy = db.retention.clone().unwrap_or_default();
    let mut plan = plan(&candidates, &policy, db.timezone(), now);
    let proven = |id: &str| {
        catalog
            .snapshots
            .iter()
            .any(|s| s.key.id.as_str() == id && s.proof.is_some())
    };
    require_proof(&mut plan, &proven, &db.name);
    plan
}

/// Why a prune now would keep snapshots its policy lets go, for want of a newer snapshot that
/// passed `integrity_check` (for `status`: with `backup.check = "quick"` and no drill, the
/// store would otherwise grow without a word).
pub fn held_for_proof(
    db: &DatabaseConfig,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Option<String> {
    db.retention.as_ref()?;
    plan_for(db, catalog, now).unproven
}

/// What a prune of every store of a database did.
#[derive(Debug)]
pub struct StoresPruned {
    /// One report per store pruned, in config order.
    pub reports: Vec<PruneReport>,
    /// The stores whose prune failed, with the error.
    pub failed: Vec<(String, Error)>,
    pub dry_run: bool,
}

impl StoresPruned {
    /// One result for the prune after a backup: the first store's error if any failed (the
    /// others are logged), else the first store's report, its `deleted` being every id deleted
    /// from any store.
    pub fn into_one(mut self) -> Result<PruneReport> {
        let several = self.reports.len() + self.failed.len() > 1;
        if !self.failed.is_empty() {
            for (store, e) in self.failed.iter().skip(1) {
                warn!(store = %store, error = %crate::error::chain(e), "prune of this store failed");
            }
            let (store, e) = self.failed.swap_remove(0);
            return Err(if several {
                Error::InStore {
                    store,
                    source: Box::new(e),
                }
            } else {
                e
            });
        }
        let mut reports = self.reports.into_iter();
        let mut first = reports
            .next()
            .ok_or_else(|| Error::Internal("a prune of no store".into()))?;
        for r in reports {
            for id in r.deleted {
                if !first.deleted.contains(&id) {
                    first.deleted.push(id);
                }
            }
        }
        Ok(first)
    }
}

/// Apply `db`'s retention policy in every one of `stores`, each on its own catalog; a store
/// that fails does not stop the others.
pub async fn prune_stores(
    stores: &[NamedStore],
    db: &DatabaseConfig,
    dry_run: bool,
) -> StoresPruned {
    let mut out = StoresPruned {
        reports: Vec::new(),
        failed: Vec::new(),
        dry_run,
    };
    for store in stores {
        match prune(store, db, dry_run).await {
            Ok(r) => out.reports.push(r),
            Err(e) => out.failed.push((store.name.clone(), e)),
        }
    }
    out
}

/// Apply `db`'s retention policy to its snapshots in `store`.
#[instrument(skip_all, fields(db = %db.name, store = %named.name))]
pub async fn prune(named: &NamedStore, db: &DatabaseConfig, dry_run: bool) -> Result<PruneReport> {
    let store = &named.store;
    let catalog = catalog::load(store, &db.name).await?;
    let now = Utc::now();
    let mut report = PruneReport {
        db: db.name.clone(),
        store: named.name.clone(),
        policy: db.retention.clone(),
        plan: plan_with_marks(db, &catalog, now),
        // Orphans are not snapshots: a hold (no policy, a failed newest snapshot) keeps every
        // snapshot, but what interrupted backups left is removed after a day all the same.
        orphans: plan_orphans(&catalog, now),
        deleted: Vec::new(),
        marked: Vec::new(),
        unmarked: Vec::new(),
        delegated: None,
        dry_run,
    };
    if !dry_run {
        match apply(store, db, &catalog, &mut report, now).await {
            Err(Error::Storage(StorageError::DeleteRefused { message, .. })) => {
                let why = format!(
                    "the store refuses deletes ({message}): retention is delegated to the provider \
                     (its bucket policy, object lock or lifecycle rules keep or expire snapshots); \
                     this prune deleted nothing more (see docs/S3.md, versioned and object-locked buckets)"
                );
                warn!(reason = %why, "prune stopped: deletes are refused");
                report.delegated = Some(why);
            }
            other => other?,
        }
    }
    Ok(report)
}

/// The policy's plan, with the deletion marks already in the store turned into actions
/// (mark, delete once `keep_delete` has passed, unmark).
fn plan_with_marks(db: &DatabaseConfig, catalog: &Catalog, now: DateTime<Utc>) -> Plan {
    let policy = db.retention.clone().unwrap_or_default();
    let mut plan = plan_for(db, catalog, now);
    let marked_at = |id: &str| {
        catalog
            .snapshots
            .iter()
            .find(|s| s.key.id.as_str() == id)
            .and_then(|s| s.marked_at)
    };
    let keep_delete = Duration::from_std(policy.keep_delete()).unwrap_or(Duration::MAX);
    apply_marks(&mut plan, &marked_at, keep_delete, now);
    if db.retention.is_none() {
        plan.hold = Some("no [databases.retention] table; every snapshot is kept".into());
    }
    plan
}

/// Carry out a report's plan: take back marks, mark, delete (the manifest first), then delete
/// old orphans; each done step is recorded in the report.
async fn apply(
    store: &Arc<dyn Storage>,
    db: &DatabaseConfig,
    catalog: &Catalog,
    report: &mut PruneReport,
    now: DateTime<Utc>,
) -> Result<()> {
    for d in report.plan.deletions() {
        let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        info!(id = %d.id, created_at = %rfc3339(d.created_at), reasons = %reasons.join(", "), "deleting snapshot");
    }
    let key = |id: &str| -> Result<SnapshotKey> {
        Ok(SnapshotKey {
            db: db.name.clone(),
            // The ids come from the catalog: one that does not parse is a bug.
            id: id.parse().map_err(crate::error::Error::Internal)?,
        })
    };
    let of = |action| -> Vec<Decision> { report.plan.with_action(action).cloned().collect() };
    let (unmark, mark) = (of(Action::Unmark), of(Action::Mark));
    for d in unmark {
        info!(id = %d.id, "the snapshot is needed again; taking back its deletion mark");
        store.delete(&key(&d.id)?.tombstone()).await?;
        report.unmarked.push(d.id);
    }
    for d in mark {
        let delete_after = d.delete_after.unwrap_or(now);
        info!(id = %d.id, delete_after = %rfc3339(delete_after), "marking snapshot for deletion");
        let body = serde_json::json!({
            "format_version": 1,
            "db": db.name,
            "snapshot": d.id,
            "marked_at": rfc3339(now),
            "delete_after": rfc3339(delete_after),
            "reasons": d.reasons,
        });
        let mut bytes = serde_json::to_vec_pretty(&body).expect("tombstone serializes");
        bytes.push(b'\n');
        store
            .put_bytes(
                &key(&d.id)?.tombstone(),
                Bytes::from(bytes),
                PutMode::Overwrite,
            )
            .await?;
        report.marked.push(d.id);
    }
    let doomed: Vec<String> = report.plan.deletions().map(|d| d.id.clone()).collect();
    // What the snapshots that stay need (an incremental names its base's object and its
    // parents' page sets): never deleted, even in the folder of a snapshot that goes.
    let needed = catalog::named_objects(
        catalog
            .snapshots
            .iter()
            .filter(|s| !doomed.iter().any(|id| id == s.key.id.as_str())),
    );
    // Objects in other folders (a deleted full's data object) that only these snapshots
    // named: deleted after their manifests, as no snapshot needs them any more.
    let released: Vec<crate::storage::ObjectKey> = catalog
        .snapshots
        .iter()
        .filter(|s| doomed.iter().any(|id| id == s.key.id.as_str()))
        .filter_map(|s| s.manifest.as_ref())
        .flat_map(|m| m.objects())
        .map(|o| o.key)
        .filter(|k| !needed.contains(k))
        .collect();
    for id in doomed {
        delete_folder(store, &db.name, &id, &needed).await?;
        report.deleted.push(id);
    }
    for key in released {
        match store.delete(&key).await {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => info!(key = %key, "deleted an object no kept snapshot names"),
        }
    }
    let orphans: Vec<String> = report
        .orphans
        .iter()
        .filter(|o| o.delete)
        .map(|o| o.id.clone())
        .collect();
    for id in orphans {
        info!(id = %id, "deleting orphan (interrupted backup)");
        delete_folder(store, &db.name, &id, &needed).await?;
        report.deleted.push(id);
    }
    Ok(())
}

/// Delete every object of a snapshot folder but those `needed` by the snapshots that stay, the
/// manifest first.
async fn delete_folder(
    store: &Arc<dyn Storage>,
    db: &str,
    id: &str,
    needed: &std::collections::BTreeSet<crate::storage::ObjectKey>,
) -> Result<()> {
    let prefix = format!("{}{id}/", manifest::db_prefix(db));
    let objects = store.list(&prefix).await?;
    let mut keys: Vec<_> = objects
        .into_iter()
        .filter(|o| {
            manifest::parse_key(&o.key).is_some_and(|(sk, _)| sk.id.as_str() == id && sk.db == db)
                && !needed.contains(&o.key)
        })
        .map(|o| o.key)
        .collect();
    // The manifest goes first: from then on the folder is an orphan, never a manifest
    // pointing at missing data.
    keys.sort_by_key(|k| !matches!(manifest::parse_key(k), Some((_, ObjectRole::Manifest))));
    for key in keys {
        store.delete(&key).await?;
    }
    Ok(())
}
