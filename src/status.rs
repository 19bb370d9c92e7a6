//! `guardian status`: per database, the newest snapshot, its age, the last drill, totals, and
//! a health verdict a monitor can act on (exit 1 when any database is unhealthy).

use chrono::Utc;
use serde::Serialize;

use crate::catalog::{self, human_age, human_bytes, rfc3339, Catalog, SnapshotStatus};
use crate::cli::App;
use crate::config::DatabaseConfig;
use crate::error::Result;

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
    pub last_drill: Option<LastDrill>,
    pub max_age_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct LastSnapshot {
    pub id: String,
    pub created_at: String,
    pub age_seconds: i64,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    pub status: SnapshotStatus,
}

#[derive(Debug, Serialize)]
pub struct LastDrill {
    pub snapshot: String,
    pub at: String,
    pub ok: bool,
}

/// Work out the status of `db` from its catalog.
pub fn summarize(db: &DatabaseConfig, catalog: &Catalog, location: String) -> DbStatus {
    let now = Utc::now();
    let max_age = db.max_age();
    let usable: Vec<_> = catalog.usable().collect();
    let last = usable.first().and_then(|s| {
        let m = s.manifest.as_ref()?;
        Some(LastSnapshot {
            id: s.key.id.to_string(),
            created_at: rfc3339(s.created_at),
            age_seconds: (now - s.created_at).num_seconds(),
            size_bytes: m.raw_len,
            stored_bytes: m.stored_len,
            status: s.status,
        })
    });
    let last_drill = catalog
        .snapshots
        .iter()
        .filter_map(|s| s.last_drill.as_ref().map(|d| (s, d)))
        .max_by_key(|(_, d)| d.at)
        .map(|(s, d)| LastDrill {
            snapshot: s.key.id.to_string(),
            at: rfc3339(d.at),
            ok: d.ok,
        });
    let mut problems = Vec::new();
    match &last {
        None => problems.push("no usable snapshot".to_string()),
        Some(l) if l.age_seconds as u64 > max_age.as_secs() => problems.push(format!(
            "newest snapshot is {} old, over max_age {}",
            human_age(l.age_seconds),
            humantime::format_duration(max_age)
        )),
        Some(_) => {}
    }
    if let Some(d) = last_drill.as_ref().filter(|d| !d.ok) {
        problems.push(format!(
            "last drill failed ({} on snapshot {})",
            d.at, d.snapshot
        ));
    }
    DbStatus {
        db: db.name.clone(),
        path: db.path.display().to_string(),
        location,
        healthy: problems.is_empty(),
        problems,
        snapshot_count: usable.len(),
        stored_bytes: catalog
            .snapshots
            .iter()
            .filter(|s| s.status != SnapshotStatus::Failed)
            .filter_map(|s| s.data_size)
            .sum(),
        last_snapshot: last,
        last_drill,
        max_age_seconds: max_age.as_secs(),
    }
}

/// Print the status of the selected databases; returns 1 when any is unhealthy.
pub async fn print(app: &App, db: Option<&str>, json: bool) -> Result<u8> {
    let mut all = Vec::new();
    for db in app.config.select(db)? {
        let catalog = catalog::load(&app.store, &db.name).await?;
        all.push(summarize(db, &catalog, app.store.location()));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("status serializes")
        );
    } else {
        for s in &all {
            println!(
                "{}: {}",
                s.db,
                if s.healthy { "healthy" } else { "UNHEALTHY" }
            );
            println!("  database   {}", s.path);
            println!("  storage    {}", s.location);
            match &s.last_snapshot {
                Some(l) => println!(
                    "  last       {} at {} ({} ago), {} (stored {}), {}",
                    l.id,
                    l.created_at,
                    human_age(l.age_seconds),
                    human_bytes(l.size_bytes),
                    human_bytes(l.stored_bytes),
                    l.status.as_str()
                ),
                None => println!("  last       none"),
            }
            println!(
                "  snapshots  {} ({} stored)",
                s.snapshot_count,
                human_bytes(s.stored_bytes)
            );
            match &s.last_drill {
                Some(d) => println!(
                    "  drill      {} on {}: {}",
                    d.at,
                    d.snapshot,
                    if d.ok { "ok" } else { "FAILED" }
                ),
                None => println!("  drill      never"),
            }
            for p in &s.problems {
                println!("  problem    {p}");
            }
        }
    }
    Ok(if all.iter().all(|s| s.healthy) { 0 } else { 1 })
}
