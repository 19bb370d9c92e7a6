//! The bodies of `drill`, `verify` and `prune`: run, print, notify, pick the exit code.
//! (Split from `cli.rs`, which keeps the argument types and the older commands.)
//!
//! Results go to stdout; a failure of one database is reported on stderr at once and the
//! others still run; the exit code is the worst outcome (1 data bad, 2 operational).

use chrono::Utc;

use crate::cli::{App, DrillArgs, PruneArgs, VerifyArgs};
use crate::config::DatabaseConfig;
use crate::drill::{self, DrillReport};
use crate::error::{chain, Error, Result};
use crate::human::{human_age, human_bytes, rfc3339};
use crate::lock::DbLock;
use crate::notify::{Event, Notifier};
use crate::output::{errln, outln};
use crate::retention::{self, PruneReport};
use crate::verify::{self, Outcome};

/// The exit code of the worst outcome so far, over the databases a command works on: each
/// failure is reported as it happens, so that one database never hides another.
#[derive(Default)]
pub(crate) struct Worst(u8);

impl Worst {
    fn add(&mut self, code: u8) {
        self.0 = crate::error::worst_exit_code(self.0, code);
    }

    /// Report `what` of `db` as failed (or skipped, when another guardian holds the database).
    pub(crate) fn failed(&mut self, what: &str, db: &str, e: &Error) {
        let verb = if e.is_busy() { "skipped" } else { "failed" };
        errln!("guardian: {what} of {db} {verb}: {}", chain(e));
        self.add(e.exit_code());
    }

    pub(crate) fn finish(self) -> Result<u8> {
        match self.0 {
            0 => Ok(0),
            // Outcomes were printed as they happened.
            code => Err(Error::Reported(code)),
        }
    }
}

/// `guardian drill`: the newest usable snapshot and an older one in rotation (see
/// `drill::run_with_rotation`), or only the snapshot named with `--snapshot`.
pub async fn drill(app: &App, args: DrillArgs) -> Result<u8> {
    let dbs: Vec<&DatabaseConfig> = match &args.snapshot {
        Some(_) => vec![app.config.select_one(args.db.as_deref())?],
        None => app.config.select(args.db.as_deref())?,
    };
    let notifier = Notifier::from_config(&app.config.notify)?;
    let staging = app.config.backup.staging_dir();
    let mut worst = Worst::default();
    let mut json = Vec::new();
    for db in dbs {
        let outcome = async {
            let _lock = DbLock::acquire(&staging, db, "drill")?;
            match args.snapshot.as_deref() {
                Some(id) => drill::run(&app.store, db, &staging, Some(id), &app.keys)
                    .await
                    .map(|r| (r, None)),
                None => drill::run_with_rotation(&app.store, db, &staging, &app.keys)
                    .await
                    .map(|d| (d.latest, Some((d.older, d.older_count)))),
            }
        }
        .await;
        let (latest, rotation) = match outcome {
            Ok(o) => o,
            Err(e) if e.is_busy() => {
                worst.failed("drill", &db.name, &e);
                continue;
            }
            Err(e) => {
                notifier
                    .send(&Event::DrillFailed {
                        db: db.name.clone(),
                        snapshot: None,
                        detail: chain(&e),
                    })
                    .await;
                worst.failed("drill", &db.name, &e);
                continue;
            }
        };
        let mut v = conclude(&notifier, &mut worst, &latest, args.json).await;
        let Some((older, count)) = rotation else {
            json.push(v);
            continue;
        };
        v["rotation"] = serde_json::Value::Null;
        match older {
            None if !args.json => {
                outln!("rotation: no older usable snapshot of {} to drill", db.name);
            }
            None => {}
            Some(Ok(r)) => {
                if !args.json {
                    outln!(
                        "rotation: {count} older snapshot(s) take turns, one per drill; this one was {}",
                        r.previous_drill_at.map_or("never drilled".to_string(), |t| format!(
                            "last drilled {}",
                            rfc3339(t)
                        ))
                    );
                }
                v["rotation"] = conclude(&notifier, &mut worst, &r, args.json).await;
            }
            Some(Err(e)) => {
                notifier
                    .send(&Event::DrillFailed {
                        db: db.name.clone(),
                        snapshot: None,
                        detail: format!("drill of an older snapshot in rotation: {}", chain(&e)),
                    })
                    .await;
                worst.failed("the rotation drill", &db.name, &e);
                v["rotation_error"] = chain(&e).into();
            }
        }
        json.push(v);
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json).expect("reports serialize")
        );
    }
    worst.finish()
}

/// Notify, count and print (unless `json`) one drill report; returns its JSON.
async fn conclude(
    notifier: &Notifier,
    worst: &mut Worst,
    r: &DrillReport,
    json: bool,
) -> serde_json::Value {
    let event = if r.ok {
        Event::DrillOk {
            db: r.db.clone(),
            snapshot: r.snapshot.clone(),
            seconds: r.seconds,
        }
    } else {
        Event::DrillFailed {
            db: r.db.clone(),
            snapshot: Some(r.snapshot.clone()),
            detail: r.problems.join("; "),
        }
    };
    notifier.send(&event).await;
    worst.add(match (&r.record, r.ok) {
        (_, false) => 1,
        (Err(_), true) => 2,
        (Ok(_), true) => 0,
    });
    if !json {
        print_drill(r);
    }
    if let Err(why) = &r.record {
        errln!("guardian: {why}");
    }
    let mut v = serde_json::to_value(r).expect("report serializes");
    v["record"] = serde_json::json!(r.record.as_ref().ok());
    v
}

fn print_drill(r: &DrillReport) {
    let age = human_age((Utc::now() - r.snapshot_created_at).num_seconds());
    outln!(
        "drill of {} snapshot {} (taken {}, {age} ago): {} in {:.2}s",
        r.db,
        r.snapshot,
        rfc3339(r.snapshot_created_at),
        if r.ok { "PASSED" } else { "FAILED" },
        r.seconds
    );
    for s in &r.steps {
        outln!(
            "  {:<18} {:<6} {:>7.2}s  {}",
            s.name,
            if s.ok { "ok" } else { "FAILED" },
            s.seconds,
            s.detail
        );
    }
    for w in &r.warnings {
        outln!("  warning: {w}");
    }
    for p in &r.problems {
        outln!("  problem: {p}");
    }
    match &r.record {
        Ok(key) if r.ok => outln!("  recorded as {key}: the snapshot is now verified"),
        Ok(key) => outln!(
            "  recorded as {key}: the snapshot is now marked failed; restore --latest will skip it"
        ),
        Err(_) => outln!("  the verdict could NOT be recorded in the store (see below)"),
    }
}

/// `guardian verify`.
pub async fn verify(app: &App, args: VerifyArgs) -> Result<u8> {
    let notifier = Notifier::from_config(&app.config.notify)?;
    let mut worst = Worst::default();
    let mut all = Vec::new();
    for db in app.config.select(args.db.as_deref())? {
        let results = match verify::run(&app.store, &db.name, args.all).await {
            Ok(r) => r,
            Err(e) => {
                worst.failed("verify", &db.name, &e);
                continue;
            }
        };
        if results.is_empty() {
            // Nothing verified is not a pass.
            errln!(
                "guardian: no snapshots of {} in {}; nothing to verify",
                db.name,
                app.store.location()
            );
            worst.add(1);
        }
        let bad: Vec<String> = results
            .iter()
            .filter_map(|v| match &v.outcome {
                Outcome::Bad(why) => Some(format!("{}: {why}", v.id)),
                _ => None,
            })
            .collect();
        if !bad.is_empty() {
            worst.add(1);
            notifier
                .send(&Event::VerifyFailed {
                    db: db.name.clone(),
                    detail: bad.join("; "),
                })
                .await;
        }
        for v in &results {
            if let Outcome::Error(_) = v.outcome {
                worst.add(2);
            }
            if !args.json {
                let (word, detail) = match &v.outcome {
                    Outcome::Ok => ("ok", "size and sha256 match the manifest".to_string()),
                    Outcome::Bad(why) => ("DAMAGED", why.clone()),
                    Outcome::Error(why) => ("UNREADABLE", why.clone()),
                };
                outln!(
                    "{:<12} {:<26} {:>10}  {:<10} {detail}",
                    v.db,
                    v.id,
                    v.stored_bytes.map_or("-".into(), human_bytes),
                    word
                );
            }
        }
        all.extend(results);
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&all).expect("results serialize")
        );
    }
    worst.finish()
}

/// `guardian prune`.
pub async fn prune(app: &App, args: PruneArgs) -> Result<u8> {
    let notifier = Notifier::from_config(&app.config.notify)?;
    let mut worst = Worst::default();
    let mut all = Vec::new();
    let staging = app.config.backup.staging_dir();
    for db in app.config.select(args.db.as_deref())? {
        let outcome = async {
            // A dry run deletes nothing: it needs no lock.
            let _lock = match args.dry_run {
                true => None,
                false => Some(DbLock::acquire(&staging, db, "prune")?),
            };
            retention::prune(&app.store, db, args.dry_run).await
        }
        .await;
        match outcome {
            Ok(r) => {
                if !args.json {
                    print_prune(&r);
                }
                all.push(r);
            }
            Err(e) => {
                if !args.dry_run && !e.is_busy() {
                    notifier
                        .send(&Event::PruneFailed {
                            db: db.name.clone(),
                            error: chain(&e),
                        })
                        .await;
                }
                worst.failed("prune", &db.name, &e);
            }
        }
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&all).expect("reports serialize")
        );
    }
    worst.finish()
}

fn print_prune(r: &PruneReport) {
    let policy = match &r.policy {
        Some(p) => format!(
            "keep_last {}, daily {}, weekly {}, monthly {}, yearly {}",
            p.keep_last, p.daily, p.weekly, p.monthly, p.yearly
        ),
        None => "no retention policy".into(),
    };
    outln!(
        "prune {}{}: {policy}",
        r.db,
        if r.dry_run { " (dry run)" } else { "" }
    );
    if let Some(hold) = &r.plan.hold {
        outln!("  nothing will be deleted: {hold}");
    }
    for d in &r.plan.decisions {
        let verb = match (d.keep, r.dry_run) {
            (true, _) => "keep",
            (false, true) => "would delete",
            (false, false) => "deleted",
        };
        let reasons: Vec<String> = d
            .reasons
            .iter()
            .filter(|x| **x != retention::Reason::Hold)
            .map(ToString::to_string)
            .collect();
        outln!(
            "  {verb:<12} {:<26} {}  {:<10} {}",
            d.id,
            rfc3339(d.created_at),
            d.status.as_str(),
            reasons.join(", ")
        );
    }
    for o in &r.orphans {
        let verb = match (o.delete, r.dry_run) {
            (false, _) => "keep orphan",
            (true, true) => "would delete",
            (true, false) => "deleted",
        };
        outln!(
            "  {verb:<12} {:<26} ({} objects, no manifest): {}",
            o.id,
            o.objects,
            o.reason
        );
    }
    let snaps = r.plan.deletions().count();
    let orphans = r.orphans.iter().filter(|o| o.delete).count();
    if r.dry_run {
        outln!("would delete {snaps} snapshot(s) and {orphans} orphan(s); nothing was deleted (dry run)");
    } else if r.plan.hold.is_none() {
        outln!("deleted {snaps} snapshot(s) and {orphans} orphan(s)");
    }
}
