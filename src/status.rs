//! `guardian status`: per database, the newest snapshot, its age, the last drill, totals, and
//! a health verdict a monitor can act on (exit 1 when any database is unhealthy).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::app::App;
use crate::catalog::{Catalog, SnapshotEntry, SnapshotStatus};
use crate::config::DatabaseConfig;
use crate::error::Result;
use crate::human::{ago, human_age, human_bytes, rfc3339};
use crate::manifest::SnapshotKind;
use crate::outcome::Attempt;
use crate::output::outln;

/// The status of one database (a contract for `status --json`: fields are only ever added).
#[derive(Debug, Serialize)]
pub struct DbStatus {
    pub db: String,
    pub path: String,
    pub location: String,
    pub healthy: bool,
    /// Why it is unhealthy (empty when healthy).
    pub problems: Vec<String>,
    pub snapshot_count: usize,
    pub stored_bytes: u64,
    pub last_snapshot: Option<LastSnapshot>,
    /// The effective recovery point: the age of the newest usable snapshot of either kind
    /// (what a restore now would lose, in seconds); null without one.
    pub rpo_seconds: Option<i64>,
    /// The newest usable full snapshot, and the newest usable incremental.
    pub last_full: Option<LastSnapshot>,
    pub last_incremental: Option<LastSnapshot>,
    pub last_drill: Option<LastDrill>,
    /// The restore time the newest passed drill measured (download, decompression, both
    /// SHA-256s, `integrity_check`): the recovery time actually proven, or null.
    pub proven_rto: Option<crate::rto::ProvenRto>,
    pub max_age_seconds: u64,
    /// `guardian run` schedules (cron as configured), and when they next fire.
    pub backup_schedule: Option<String>,
    pub next_backup_at: Option<String>,
    pub drill_schedule: Option<String>,
    pub next_drill_at: Option<String>,
    pub incremental_schedule: Option<String>,
    pub next_incremental_at: Option<String>,
    pub timezone: String,
    /// Folders with data but no manifest (interrupted backups); prune removes them after a day.
    pub orphans: usize,
    /// Staging files left next to the database by interrupted restores (their process is
    /// gone), each as large as the database: a warning, not a health problem; the next backup
    /// or restore removes them.
    pub restore_leftovers: Vec<String>,
    /// The last backup attempt (from the CLI or the service, on any host), if recorded.
    pub last_backup_attempt: Option<LastAttempt>,
    /// Findings that do not make the database unhealthy (records that were ignored).
    pub warnings: Vec<String>,
    /// Each store of the database, in config order (one, `primary`, with `[storage]`). The
    /// fields above describe the store that holds the newest usable snapshot (the first
    /// readable one when none does); a store that cannot be read or lacks a snapshot another
    /// store holds makes the database unhealthy.
    pub stores: Vec<StoreStatus>,
}

/// One store of a database in `status --json` (its metrics carry a `store` label).
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub name: String,
    pub location: String,
    pub healthy: bool,
    pub problems: Vec<String>,
    /// Null when the store could not be read.
    pub snapshot_count: Option<usize>,
    pub stored_bytes: Option<u64>,
    pub last_snapshot: Option<LastSnapshot>,
    /// Usable snapshots another store of the database holds and this one lacks (newest
    /// first): `guardian sync` copies them.
    pub missing: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LastAttempt {
    pub at: String,
    pub ok: bool,
    pub exit_code: u8,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    pub host: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastSnapshot {
    pub id: String,
    pub created_at: String,
    pub age_seconds: i64,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    pub status: SnapshotStatus,
    /// `full` or `incremental`.
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct LastDrill {
    pub snapshot: String,
    pub at: String,
    pub age_seconds: i64,
    pub ok: bool,
}

/// Work out the status of `db` from its catalog and its last backup attempt.
pub fn summarize(
    db: &DatabaseConfig,
    catalog: &Catalog,
    attempt: Option<&Attempt>,
    location: String,
) -> DbStatus {
    let now = Utc::now();
    let max_age = db.max_age();
    let tz = db.timezone();
    let next = |cron: &Option<String>| {
        cron.as_deref()
            .and_then(|c| crate::schedule::next_run(c, tz, now))
            .map(rfc3339)
    };
    let usable: Vec<_> = catalog.usable().collect();
    let last = last_snapshot(&usable, now);
    let of_kind = |kind| {
        catalog
            .newest_usable(kind)
            .and_then(|s| last_snapshot(&[s], now))
    };
    let last_drill = last_drill(catalog, now);
    let problems = problems(
        db,
        catalog,
        &usable,
        attempt,
        last.as_ref(),
        last_drill.as_ref(),
        now,
    );
    DbStatus {
        db: db.name.clone(),
        path: db.path.display().to_string(),
        location,
        healthy: problems.is_empty(),
        problems,
        snapshot_count: usable.len(),
        stored_bytes: catalog.stored_bytes,
        rpo_seconds: last.as_ref().map(|l| l.age_seconds),
        last_full: of_kind(SnapshotKind::Full),
        last_incremental: of_kind(SnapshotKind::Incremental),
        last_snapshot: last,
        last_drill,
        proven_rto: None,
        max_age_seconds: max_age.as_secs(),
        next_backup_at: next(&db.backup),
        backup_schedule: db.backup.clone(),
        next_drill_at: next(&db.drill),
        drill_schedule: db.drill.clone(),
        next_incremental_at: next(&db.incremental),
        incremental_schedule: db.incremental.clone(),
        timezone: tz.to_string(),
        orphans: catalog.orphans.len(),
        restore_leftovers: crate::target::dead_staging_files(&db.path)
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        last_backup_attempt: attempt.map(|a| LastAttempt {
            at: rfc3339(a.at),
            ok: a.ok,
            exit_code: a.exit_code,
            snapshot: a.snapshot.clone(),
            error: a.error.clone(),
            host: a.host.clone(),
        }),
        warnings: warnings(db, catalog, now),
        stores: Vec::new(),
    }
}

/// The newest usable snapshot (`usable` is newest first).
fn last_snapshot(usable: &[&SnapshotEntry], now: DateTime<Utc>) -> Option<LastSnapshot> {
    let s = usable.first()?;
    let m = s.manifest.as_ref()?;
    Some(LastSnapshot {
        id: s.key.id.to_string(),
        created_at: rfc3339(s.created_at),
        age_seconds: (now - s.created_at).num_seconds(),
        size_bytes: m.raw_len,
        stored_bytes: m.own_stored_len(),
        status: s.status,
        kind: m.kind().as_str(),
    })
}

/// The newest drill verdict of any snapshot.
fn last_drill(catalog: &Catalog, now: DateTime<Utc>) -> Option<LastDrill> {
    catalog
        .snapshots
        .iter()
        .filter_map(|s| s.last_drill.as_ref().map(|d| (s, d)))
        // A drill run records all its verdicts (newest snapshot and the older one in rotation)
        // under one time: the run failed if any of them did, and then that one is shown.
        .max_by_key(|(s, d)| (d.at, !d.ok, s.created_at))
        .map(|(s, d)| LastDrill {
            snapshot: s.key.id.to_string(),
            at: rfc3339(d.at),
            age_seconds: (now - d.at).num_seconds(),
            ok: d.ok,
        })
}

/// What makes the database unhealthy; empty when it is healthy.
fn problems(
    db: &DatabaseConfig,
    catalog: &Catalog,
    usable: &[&SnapshotEntry],
    attempt: Option<&Attempt>,
    last: Option<&LastSnapshot>,
    last_drill: Option<&LastDrill>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut problems = Vec::new();
    // A failed attempt stays a problem until a snapshot taken after it exists (a success
    // whose record could not be written still counts).
    if let Some(a) = attempt.filter(|a| !a.ok) {
        // A snapshot that reached some stores only is settled once it is here (the stores
        // that still lack it are a problem of their own, below `status::of_database`).
        let settled_by_sync = a
            .error
            .as_deref()
            .is_some_and(|e| e.contains("guardian sync"))
            && a.snapshot
                .as_deref()
                .is_some_and(|id| usable.iter().any(|s| s.key.id.as_str() == id));
        if !settled_by_sync && !usable.iter().any(|s| s.created_at > a.at) {
            let error = a.error.as_deref().unwrap_or("no detail");
            // An error that names its own fix (`guardian sync` for a store that missed the
            // snapshot) keeps it; the others get the generic one.
            let fix = if error.contains("guardian sync") {
                String::new()
            } else {
                format!("; fix that and run `guardian backup --db {}`", db.name)
            };
            problems.push(format!(
                "last backup failed at {} (exit {}): {error}{fix}",
                rfc3339(a.at),
                a.exit_code,
            ));
        }
    }
    if let Some(newest) = catalog.snapshots.iter().find(|s| !s.skewed) {
        if newest.status == SnapshotStatus::Failed && newest.last_drill.is_none() {
            problems.push(format!(
                "newest snapshot {} is failed: {}",
                newest.key.id,
                newest
                    .problem
                    .as_ref()
                    .map_or_else(|| "unknown".into(), ToString::to_string)
            ));
        }
    }
    for s in catalog.snapshots.iter().filter(|s| s.skewed) {
        problems.push(format!(
            "clock skew: snapshot {} is dated {}, {} ahead of this host's clock; restore --latest skips it (check the clock of the host that took it, or remove it)",
            s.key.id,
            rfc3339(s.created_at),
            human_age((now - s.created_at).num_seconds())
        ));
    }
    let max_age = db.max_age();
    match last {
        None => problems.push("no usable snapshot".to_string()),
        Some(l) if l.age_seconds as u64 > max_age.as_secs() => problems.push(format!(
            "newest snapshot is {} old, over max_age {}",
            human_age(l.age_seconds),
            humantime::format_duration(max_age)
        )),
        Some(_) => {}
    }
    if let Some(d) = last_drill.filter(|d| !d.ok) {
        problems.push(format!(
            "last drill failed ({} on snapshot {})",
            d.at, d.snapshot
        ));
    }
    problems
}

/// What is worth knowing but does not make the database unhealthy.
fn warnings(db: &DatabaseConfig, catalog: &Catalog, now: DateTime<Utc>) -> Vec<String> {
    // One line however many there are (after an upgrade, every older drill record is one).
    let ignored: Vec<&String> = catalog
        .snapshots
        .iter()
        .flat_map(|s| s.ignored_records.iter())
        .collect();
    let mut warnings: Vec<String> = match ignored.as_slice() {
        [] => Vec::new(),
        [one] => vec![format!("ignored record {one}")],
        [first, rest @ ..] => vec![format!(
            "ignored record {first}; and {} more (see `guardian list --db {}`)",
            rest.len(),
            db.name
        )],
    };
    if let Some(why) = crate::retention::held_for_proof(db, catalog, now) {
        warnings.push(format!("retention: {why}"));
    }
    warnings
}

/// What every store of a database holds, read once (`status`, the service's metrics and its
/// status page).
#[derive(Debug)]
pub struct Loaded {
    /// Every store's catalog (a store that could not be read keeps its error).
    pub merged: crate::stores::Merged,
    /// The newest recorded backup attempt of any store (or the staging folder).
    pub attempt: Option<Attempt>,
    /// The store holding the newest usable snapshot (else the first readable one).
    reference: usize,
}

impl Loaded {
    /// The reference store's catalog.
    pub fn catalog(&self) -> &Catalog {
        self.merged.stores[self.reference]
            .catalog
            .as_ref()
            .expect("the reference store was read")
    }

    /// The reference store (where the database-level fields come from).
    pub fn reference_store(&self) -> &crate::app::Store {
        &self.merged.stores[self.reference].store
    }
}

/// Read every store of `db`.
///
/// # Errors
/// The first store's error when no store can be read.
pub async fn load(app: &App, db: &DatabaseConfig) -> Result<Loaded> {
    let staging = app.config.backup.staging_dir();
    let stores = app.stores_of(db);
    let merged = crate::stores::Merged::load(&stores, &db.name)
        .await
        .require_readable()?;
    let mut attempt: Option<Attempt> = None;
    for s in &stores {
        if let Some(a) = crate::outcome::last(&s.store, &staging, &db.name).await {
            if attempt.as_ref().is_none_or(|b| a.at > b.at) {
                attempt = Some(a);
            }
        }
    }
    let newest = |c: &Catalog| c.usable().next().map(|e| e.created_at);
    let reference = merged
        .stores
        .iter()
        .enumerate()
        .filter_map(|(i, sc)| sc.catalog.as_ref().ok().map(|c| (i, newest(c))))
        .max_by_key(|&(i, t)| (t, std::cmp::Reverse(i)))
        .map(|(i, _)| i)
        .expect("require_readable leaves a readable store");
    Ok(Loaded {
        merged,
        attempt,
        reference,
    })
}

/// Each store on its own: readable or not, and which usable snapshots of the other stores
/// it lacks.
pub fn store_statuses(db: &DatabaseConfig, l: &Loaded) -> Vec<StoreStatus> {
    let mut held: Vec<(DateTime<Utc>, String)> = l
        .merged
        .stores
        .iter()
        .filter_map(|sc| sc.catalog.as_ref().ok())
        // A snapshot marked for deletion is on its way out: no store must hold it.
        .flat_map(|c| {
            c.usable()
                .filter(|e| e.marked_at.is_none())
                .map(|e| (e.created_at, e.key.id.to_string()))
        })
        .collect();
    held.sort();
    held.dedup();
    held.reverse();
    let now = Utc::now();
    // Copies whose manifest differs from the one that stands for their snapshot, per store.
    let mut differing: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for snap in &l.merged.snapshots {
        for (store, copy) in l.merged.copies(snap) {
            if let crate::stores::Copy::Damaged(e) = copy {
                if l.merged.differs(snap, e) {
                    differing
                        .entry(store.name.as_str())
                        .or_default()
                        .push(snap.id.as_str());
                }
            }
        }
    }
    l.merged
        .stores
        .iter()
        .map(|sc| (&sc.store, &sc.catalog))
        .map(|(s, c)| match c {
            Err(e) => StoreStatus {
                name: s.name.clone(),
                location: s.store.location(),
                healthy: false,
                problems: vec![format!(
                    "store {} cannot be read: {}; check it with `guardian doctor`",
                    s.name,
                    crate::error::chain(e)
                )],
                snapshot_count: None,
                stored_bytes: None,
                last_snapshot: None,
                missing: Vec::new(),
            },
            Ok(c) => {
                let usable: Vec<_> = c.usable().collect();
                let missing: Vec<String> = held
                    .iter()
                    .filter(|(_, id)| !usable.iter().any(|e| e.key.id.as_str() == id))
                    .map(|(_, id)| id.clone())
                    .collect();
                let mut problems = match missing.as_slice() {
                    [] => Vec::new(),
                    [first, ..] => vec![format!(
                        "store {} lacks {} snapshot{} that another store holds (newest {first}); copy {} with `guardian sync --db {}`",
                        s.name,
                        missing.len(),
                        if missing.len() == 1 { "" } else { "s" },
                        if missing.len() == 1 { "it" } else { "them" },
                        db.name
                    )],
                };
                if let Some(ids) = differing.get(s.name.as_str()) {
                    problems.push(format!(
                        "store {} holds {} snapshot{} under an id whose manifest differs from another store's copy (newest {}): one copy was changed, and restore passes over it; compare the folders and remove the wrong copy (`guardian verify --all --db {}` lists them)",
                        s.name,
                        ids.len(),
                        if ids.len() == 1 { "" } else { "s" },
                        ids[0],
                        db.name
                    ));
                }
                StoreStatus {
                    name: s.name.clone(),
                    location: s.store.location(),
                    healthy: problems.is_empty(),
                    problems,
                    snapshot_count: Some(usable.len()),
                    stored_bytes: Some(c.stored_bytes),
                    last_snapshot: last_snapshot(&usable, now),
                    missing,
                }
            }
        })
        .collect()
}

/// The status of `db` over its stores: the database's fields from the store holding the
/// newest usable snapshot, and a problem for each store that cannot be read or lacks a
/// usable snapshot another store holds.
pub async fn of_database(app: &App, db: &DatabaseConfig) -> Result<DbStatus> {
    let l = load(app, db).await?;
    let several = l.merged.stores.len() > 1;
    let location = l
        .merged
        .stores
        .iter()
        .map(|sc| {
            if several {
                sc.store.describe()
            } else {
                sc.store.store.location()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut status = summarize(db, l.catalog(), l.attempt.as_ref(), location);
    status.proven_rto = crate::rto::proven(&l.reference_store().store, l.catalog()).await;
    status.stores = store_statuses(db, &l);
    for st in &status.stores {
        status.problems.extend(st.problems.iter().cloned());
    }
    status.healthy = status.problems.is_empty();
    Ok(status)
}

/// Print the status of the selected databases; returns 1 when any is unhealthy.
pub async fn print(app: &App, db: Option<&str>, json: bool) -> Result<u8> {
    let mut all = Vec::new();
    for db in app.config.select(db)? {
        all.push(of_database(app, db).await?);
    }
    if json {
        crate::output::json(&all);
    } else {
        for s in &all {
            outln!(
                "{}: {}",
                s.db,
                if s.healthy { "healthy" } else { "UNHEALTHY" }
            );
            outln!("  database   {}", s.path);
            outln!("  storage    {}", s.location);
            if s.stores.len() > 1 {
                for st in &s.stores {
                    outln!(
                        "  store      {}: {}",
                        st.name,
                        match (&st.snapshot_count, &st.last_snapshot) {
                            (None, _) => "UNREADABLE".to_string(),
                            (Some(n), last) => format!(
                                "{n} snapshot{}, {} stored, newest {}{}",
                                if *n == 1 { "" } else { "s" },
                                human_bytes(st.stored_bytes.unwrap_or(0)),
                                last.as_ref().map_or("none".into(), |l| l.id.clone()),
                                if st.missing.is_empty() {
                                    String::new()
                                } else {
                                    format!(", LACKS {}", st.missing.len())
                                }
                            ),
                        }
                    );
                }
            }
            match &s.last_snapshot {
                Some(l) => outln!(
                    "  last       {} at {} ({}), {} {} (stored {}), {}",
                    l.id,
                    l.created_at,
                    ago(l.age_seconds),
                    l.kind,
                    human_bytes(l.size_bytes),
                    human_bytes(l.stored_bytes),
                    l.status.as_str()
                ),
                None => outln!("  last       none"),
            }
            if s.incremental_schedule.is_some() || s.last_incremental.is_some() {
                let line = |l: &Option<LastSnapshot>| {
                    l.as_ref().map_or("none".to_string(), |l| {
                        format!("{} ({})", l.id, ago(l.age_seconds))
                    })
                };
                outln!(
                    "  kinds      last full {}, last incremental {}",
                    line(&s.last_full),
                    line(&s.last_incremental)
                );
            }
            outln!(
                "  snapshots  {} ({} stored)",
                s.snapshot_count,
                human_bytes(s.stored_bytes)
            );
            match &s.last_drill {
                Some(d) => outln!(
                    "  drill      {} ({}) on {}: {}",
                    d.at,
                    ago(d.age_seconds),
                    d.snapshot,
                    if d.ok { "ok" } else { "FAILED" }
                ),
                None => outln!("  drill      never"),
            }
            match &s.proven_rto {
                Some(r) => outln!(
                    "  rto        {} to restore {} with every check (measured by the drill at {} on {})",
                    crate::rto::seconds(r.restore_seconds),
                    human_bytes(r.raw_bytes),
                    r.drilled_at,
                    r.snapshot
                ),
                None => outln!("  rto        not proven: no drill has passed"),
            }
            let plan = |what: &str, cron: &Option<String>, next: &Option<String>| match (cron, next)
            {
                (Some(c), Some(n)) => format!("{what} \"{c}\" (next {n})"),
                (Some(c), None) => format!("{what} \"{c}\""),
                (None, _) => format!("no {what} schedule"),
            };
            outln!(
                "  schedule   {}, {}{} [{}]",
                plan("backup", &s.backup_schedule, &s.next_backup_at),
                plan("drill", &s.drill_schedule, &s.next_drill_at),
                match &s.incremental_schedule {
                    Some(_) => format!(
                        ", {}",
                        plan(
                            "incremental",
                            &s.incremental_schedule,
                            &s.next_incremental_at
                        )
                    ),
                    None => String::new(),
                },
                s.timezone
            );
            if s.orphans > 0 {
                outln!("  orphans    {} interrupted backup(s) without a manifest (prune removes them after a day)", s.orphans);
            }
            for p in &s.restore_leftovers {
                outln!("  warning    {p} was left by an interrupted restore (the next backup or restore removes it)");
            }
            if let Some(a) = &s.last_backup_attempt {
                outln!(
                    "  attempt    backup at {} on {}: {}",
                    a.at,
                    if a.host.is_empty() { "?" } else { &a.host },
                    if a.ok { "ok" } else { "FAILED" }
                );
            }
            for p in &s.problems {
                outln!("  problem    {p}");
            }
            for w in &s.warnings {
                outln!("  warning    {w}");
            }
        }
    }
    Ok(if all.iter().all(|s| s.healthy) { 0 } else { 1 })
}
