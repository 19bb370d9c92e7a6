//! What each command does and prints: the database loop, through the job runner (`jobs.rs`),
//! and the lines on stdout. Part of the command line: only `cli.rs` uses it.
//!
//! Results go to stdout; a failure of one database is reported on stderr at once and the
//! others still run; the exit code is the worst outcome (1 data bad, 2 operational, 3 busy).

use chrono::Utc;

use super::{BackupArgs, DrillArgs, PruneArgs, SyncArgs, VerifyArgs};
use crate::config::DatabaseConfig;
use crate::drill::DrillReport;
use crate::error::{Error, Result};
use crate::human::{ago, chain, human_bytes, rfc3339};
use crate::jobs::{Done, Ended, Job, Outcome, Rotation, Runner};
use crate::output::{errln, outln, warnln};
use crate::retention::{self, Action, PruneReport};
use crate::sync::{SyncOptions, SyncReport};
use crate::verify::{self, Verified};

/// The exit code of the worst outcome so far, over the databases a command works on: each
/// failure is reported as it happens, so that one database never hides another.
#[derive(Default)]
struct Worst(u8);

impl Worst {
    fn add(&mut self, code: u8) {
        self.0 = crate::error::worst_exit_code(self.0, code);
    }

    /// Report `what` of `db` as failed (or skipped, when another guardian holds the database).
    fn failed(&mut self, what: &str, db: &str, e: &Error) {
        errln!("{}", super::fix::describe(Some(what), Some(db), e));
        self.add(e.exit_code());
    }

    /// Count `out`, and report it when it did not run to its end.
    fn outcome(&mut self, out: &Outcome) {
        let what = out.job.name();
        match &out.ended {
            Ended::Done(_) => self.add(out.exit_code()),
            Ended::Busy(e) | Ended::Failed(e) => self.failed(what, &out.db, e),
            Ended::Crashed(why) => {
                errln!(
                    "{what} of {} failed: internal error (a bug in guardian): {why}; please report it with the log of this run (-v)",
                    out.db
                );
                self.add(out.exit_code());
            }
            Ended::Cancelled => {
                errln!(
                    "{what} of {} interrupted by {}; {}",
                    out.db,
                    SIGNAL.get().copied().unwrap_or("a signal"),
                    left_by_interrupted(&out.job)
                );
                self.add(out.exit_code());
            }
        }
    }

    fn finish(self) -> Result<u8> {
        match self.0 {
            0 => Ok(0),
            // Outcomes were printed as they happened.
            code => Err(Error::Reported(code)),
        }
    }
}

/// The signal that interrupted this command, once one has.
static SIGNAL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The job runner of one command: SIGINT, SIGTERM or SIGHUP stops the job in flight, as a
/// service's shutdown does, and the databases after it; the command then says so in one line
/// and exits with 2 (what each job leaves: [`left_by_interrupted`]).
///
/// # Errors
/// When the alert URLs cannot be loaded, or a signal handler cannot be installed.
pub(super) fn runner(app: &crate::app::App) -> Result<Runner> {
    let interrupted = crate::service::first_interrupt()?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let fire = cancel.clone();
    tokio::spawn(async move {
        let _ = SIGNAL.set(interrupted.await);
        fire.cancel();
    });
    Ok(Runner::new(app.clone())?.cancelled_by(cancel))
}

/// What an interrupted job leaves behind, for the line that reports it.
fn left_by_interrupted(job: &Job) -> &'static str {
    match job {
        Job::Backup { .. } => {
            "no snapshot was published (its manifest is written last); the next backup removes what it left"
        }
        Job::Drill { .. } => "no verdict was recorded for the snapshot it was restoring",
        Job::Verify { .. } => "nothing was changed; run it again to verify every snapshot",
        Job::Prune { .. } => {
            "every snapshot still listed is whole (manifests are deleted before their objects); run it again to finish"
        }
        Job::Sync(_) => {
            "every copy it made is whole (published manifest last); run it again to finish"
        }
    }
}

/// `guardian backup`: prints each new snapshot id.
pub(super) async fn backup(runner: &Runner, args: BackupArgs) -> Result<u8> {
    let dbs = runner.app().config.select(args.db.as_deref())?;
    // With several databases, one failure must not stop the others.
    let mut worst = Worst::default();
    for db in dbs {
        let job = Job::Backup {
            prune_after: false,
            incremental: args.incremental,
        };
        let out = runner.run(db, job).await;
        match &out.ended {
            Ended::Done(Done::Backup {
                manifest,
                full_because,
                ..
            }) => {
                if let Some(why) = full_because {
                    warnln!(
                        "{}: took a full snapshot instead of an incremental: {why}",
                        db.name
                    );
                }
                outln!("{}", manifest.id)
            }
            // The snapshot exists (stdout lists every new snapshot); stderr says what is wrong.
            Ended::Failed(Error::SourceGone { id, .. } | Error::StoresMissed { id, .. }) => {
                outln!("{id}")
            }
            _ => {}
        }
        worst.outcome(&out);
        if matches!(out.ended, Ended::Cancelled) {
            break;
        }
    }
    worst.finish()
}

/// `guardian drill`: the newest usable snapshot and an older one in rotation (see
/// `drill::run_with_rotation`), or only the snapshot named with `--snapshot`.
pub(super) async fn drill(runner: &Runner, args: DrillArgs) -> Result<u8> {
    let config = &runner.app().config;
    let dbs: Vec<&DatabaseConfig> = match &args.snapshot {
        Some(_) => vec![config.select_one(args.db.as_deref())?],
        None => config.select(args.db.as_deref())?,
    };
    let mut worst = Worst::default();
    let mut json = Vec::new();
    for db in dbs {
        let job = Job::Drill {
            snapshot: args.snapshot.clone(),
        };
        let out = runner.run(db, job).await;
        worst.outcome(&out);
        if matches!(out.ended, Ended::Cancelled) {
            break;
        }
        let Ended::Done(Done::Drill { latest, rotation }) = &out.ended else {
            continue;
        };
        let mut v = conclude(latest, args.json);
        if let Some(rotation) = rotation {
            v["rotation"] = serde_json::Value::Null;
            print_rotation(&db.name, rotation, &mut v, args.json);
        }
        json.push(v);
    }
    if args.json {
        crate::output::json(&json);
    }
    worst.finish()
}

/// Print (unless `json`) the drill of the older snapshot in rotation, and add it to `v`.
fn print_rotation(db: &str, rotation: &Rotation, v: &mut serde_json::Value, json: bool) {
    match &rotation.older {
        None if !json => {
            outln!("rotation: no older usable snapshot of {db} to drill");
        }
        None => {}
        Some(Ok(r)) => {
            if !json {
                outln!(
                    "rotation: {} older snapshot(s) take turns, one per drill; this one was {}",
                    rotation.count,
                    r.previous_drill_at
                        .map_or("never drilled".to_string(), |t| format!(
                            "last drilled {}",
                            rfc3339(t)
                        ))
                );
            }
            v["rotation"] = conclude(r, json);
        }
        Some(Err(e)) => {
            errln!(
                "{}",
                super::fix::describe(Some("the rotation drill"), Some(db), e)
            );
            v["rotation_error"] = chain(e).into();
        }
    }
}

/// Print (unless `json`) one drill report; returns its JSON.
fn conclude(r: &DrillReport, json: bool) -> serde_json::Value {
    if !json {
        print_drill(r);
    }
    if let Err(why) = &r.record {
        errln!(
            "{why}; the drill itself ran: check the store with `guardian doctor`, then drill again with `guardian drill --db {} --snapshot {}`",
            r.db,
            r.snapshot
        );
    }
    let mut v = serde_json::to_value(r).expect("report serializes");
    v["record"] = serde_json::json!(r.record.as_ref().ok());
    v
}

fn print_drill(r: &DrillReport) {
    let age = ago((Utc::now() - r.snapshot_created_at).num_seconds());
    outln!(
        "drill of {} snapshot {} (taken {}, {age}): {} in {:.2}s",
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
    if !r.copies.is_empty() {
        outln!("  drilled from store {}", r.store);
    }
    for c in &r.copies {
        let word = match c.state {
            "same" => "same bytes",
            "differs" => "DIFFERS",
            "intact" => "intact, not judged",
            "missing" => "missing",
            _ => "UNREADABLE",
        };
        outln!("  copy in store {}: {word}: {}", c.store, c.detail);
        match &c.record {
            Some(Ok(key)) if c.differs() => outln!(
                "    recorded as {key}: that copy is now marked failed; `guardian sync --db {}` replaces it from a good copy",
                r.db
            ),
            Some(Ok(key)) => outln!("    recorded as {key}: that copy is now verified too"),
            Some(Err(why)) => outln!("    the verdict could NOT be recorded there: {why}"),
            None => {}
        }
    }
}

/// `guardian verify`.
pub(super) async fn verify(runner: &Runner, args: VerifyArgs) -> Result<u8> {
    let mut worst = Worst::default();
    let mut all = Vec::new();
    for db in runner.app().config.select(args.db.as_deref())? {
        let out = runner.run(db, Job::Verify { all: args.all }).await;
        worst.outcome(&out);
        if matches!(out.ended, Ended::Cancelled) {
            break;
        }
        let Ended::Done(Done::Verify(results)) = out.ended else {
            continue;
        };
        if results.is_empty() {
            // Nothing verified is not a pass (the exit code says so too).
            errln!(
                "no snapshots of {} in {}; nothing to verify: take one with `guardian backup --db {}`",
                db.name,
                runner.app().stores_of(db).iter().map(|s| s.describe()).collect::<Vec<_>>().join(", "),
                db.name
            );
        }
        if !args.json {
            let several = runner.app().stores_of(db).len() > 1;
            results.iter().for_each(|v| print_verified(v, several));
        }
        all.extend(results);
    }
    if args.json {
        crate::output::json(&all);
    }
    worst.finish()
}

/// One line per copy; with `several` stores, the store's name after the id.
fn print_verified(v: &Verified, several: bool) {
    let (word, detail) = match &v.outcome {
        verify::Outcome::Ok => ("ok", "size and sha256 match the manifest".to_string()),
        verify::Outcome::Bad(why) if v.missing => ("MISSING", why.clone()),
        verify::Outcome::Bad(why) => ("DAMAGED", why.clone()),
        verify::Outcome::Error(why) => ("UNREADABLE", why.clone()),
    };
    let store = if several {
        format!(" {:<10}", v.store)
    } else {
        String::new()
    };
    outln!(
        "{:<12} {:<26}{store} {:>10}  {:<10} {detail}",
        v.db,
        v.id,
        v.stored_bytes.map_or("-".into(), human_bytes),
        word
    );
}

/// `guardian prune`.
pub(super) async fn prune(runner: &Runner, args: PruneArgs) -> Result<u8> {
    let mut worst = Worst::default();
    let mut all = Vec::new();
    for db in runner.app().config.select(args.db.as_deref())? {
        let job = Job::Prune {
            dry_run: args.dry_run,
        };
        let out = runner.run(db, job).await;
        worst.outcome(&out);
        if matches!(out.ended, Ended::Cancelled) {
            break;
        }
        if let Ended::Done(Done::Prune(p)) = out.ended {
            let several = p.reports.len() + p.failed.len() > 1;
            for r in p.reports {
                if !args.json {
                    print_prune(&r, several);
                }
                all.push(r);
            }
            // Each store's failure, on its own line; the other stores were pruned.
            for (store, e) in p.failed {
                let e = Error::InStore {
                    store,
                    source: Box::new(e),
                };
                errln!(
                    "{}",
                    super::fix::describe(Some("prune"), Some(&db.name), &e)
                );
            }
        }
    }
    if args.json {
        crate::output::json(&all);
    }
    worst.finish()
}

fn print_prune(r: &PruneReport, several_stores: bool) {
    let policy = match &r.policy {
        Some(p) => format!(
            "keep_last {}, daily {}, weekly {}, monthly {}, yearly {}; keep_delete {}",
            p.keep_last,
            p.daily,
            p.weekly,
            p.monthly,
            p.yearly,
            humantime::format_duration(p.keep_delete())
        ),
        None => "no retention policy".into(),
    };
    outln!(
        "prune {}{}{}: {policy}",
        r.db,
        if several_stores {
            format!(" in store {}", r.store)
        } else {
            String::new()
        },
        if r.dry_run { " (dry run)" } else { "" }
    );
    if let Some(hold) = &r.plan.hold {
        outln!("  no snapshot will be deleted: {hold}");
    }
    if let Some(why) = &r.plan.unproven {
        outln!("  kept for want of proof: {why}");
    }
    if let Some(why) = &r.delegated {
        outln!("  retention delegated to the provider: {why}");
    }
    for d in &r.plan.decisions {
        let verb = match (d.action, r.dry_run) {
            (Action::Keep, _) => "keep",
            (Action::Unmark, true) => "would unmark",
            (Action::Unmark, false) => "unmarked",
            (Action::Mark, true) => "would mark",
            (Action::Mark | Action::Wait, _) => "marked",
            (Action::Delete, true) => "would delete",
            (Action::Delete, false) if r.deleted.contains(&d.id) => "deleted",
            (Action::Delete, false) => "not deleted",
        };
        let reasons: Vec<String> = d
            .reasons
            .iter()
            .filter(|x| **x != retention::Reason::Hold)
            .map(ToString::to_string)
            .collect();
        let when = match (d.action, d.delete_after) {
            (Action::Mark | Action::Wait, Some(t)) => {
                format!(" (deleted by a prune after {})", rfc3339(t))
            }
            _ => String::new(),
        };
        outln!(
            "  {verb:<12} {:<26} {}  {:<10} {}{when}",
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
            (true, false) if r.deleted.contains(&o.id) => "deleted",
            (true, false) => "not deleted",
        };
        outln!(
            "  {verb:<12} {:<26} ({} objects, no manifest): {}",
            o.id,
            o.objects,
            o.reason
        );
    }
    let snaps = r.plan.deletions().count();
    let marks = r.plan.with_action(Action::Mark).count();
    let orphans = r.orphans.iter().filter(|o| o.delete).count();
    if r.dry_run {
        outln!("would delete {snaps} snapshot(s) and {orphans} orphan(s), and mark {marks} snapshot(s) for deletion; nothing was deleted (dry run)");
    } else {
        outln!("deleted {snaps} snapshot(s) and {orphans} orphan(s); marked {marks} snapshot(s) for deletion");
    }
}

/// `guardian sync`: one line per snapshot copied (or, with `--dry-run`, to copy), one per
/// problem, and a summary per database.
pub(super) async fn sync(runner: &Runner, args: SyncArgs) -> Result<u8> {
    let mut worst = Worst::default();
    let mut all = Vec::new();
    for db in runner.app().config.select(args.db.as_deref())? {
        let job = Job::Sync(SyncOptions {
            dry_run: args.dry_run,
            deep: true,
        });
        let out = runner.run(db, job).await;
        worst.outcome(&out);
        if matches!(out.ended, Ended::Cancelled) {
            break;
        }
        if let Ended::Done(Done::Sync(r)) = out.ended {
            if !args.json {
                print_sync(&r);
            }
            all.push(r);
        }
    }
    if args.json {
        crate::output::json(&all);
    }
    worst.finish()
}

fn print_sync(r: &SyncReport) {
    if r.stores.len() < 2 {
        outln!(
            "{}: one store ({}); nothing to sync",
            r.db,
            r.stores.join(", ")
        );
        return;
    }
    for c in &r.copies {
        let from = c.from.as_deref().unwrap_or("-");
        match (&c.error, r.dry_run) {
            (None, true) => outln!("would copy {} from {from} to {} ({})", c.id, c.to, c.reason),
            (None, false) => outln!(
                "copied {} from {from} to {} ({}; {} object(s), {})",
                c.id,
                c.to,
                c.reason,
                c.objects_copied,
                human_bytes(c.bytes_copied)
            ),
            (Some(e), _) => errln!(
                "sync of {}: snapshot {} could not be copied to {} ({}): {e}",
                r.db,
                c.id,
                c.to,
                c.reason
            ),
        }
    }
    for p in &r.store_errors {
        errln!(
            "sync of {}: store {}: {}; check it with `guardian doctor`, then run `guardian sync --db {}` again",
            r.db,
            p.store,
            p.error,
            r.db
        );
    }
    for l in &r.lost {
        let copies: Vec<String> = l.copies.iter().map(|(s, c)| format!("{s}: {c}")).collect();
        errln!(
            "sync of {}: snapshot {} has no good copy in any store ({}); it cannot be restored or copied: `guardian verify --all --db {}` lists the damage",
            r.db,
            l.id,
            copies.join("; "),
            r.db
        );
    }
    let failed = r.copies.iter().filter(|c| c.error.is_some()).count();
    let verb = if r.dry_run { "would copy" } else { "copied" };
    let end = match (r.exit_code(), r.dry_run) {
        (0, true) if r.copies.is_empty() => "every store holds every snapshot".to_string(),
        (0, true) => "nothing was written (dry run)".to_string(),
        (0, false) => "every store holds every snapshot".to_string(),
        _ => format!(
            "{failed} copy(ies) failed, {} snapshot(s) with no good copy, {} store problem(s)",
            r.lost.len(),
            r.store_errors.len()
        ),
    };
    outln!(
        "sync {}{}: {} snapshot(s) in {} stores ({}); {verb} {}; {end}",
        r.db,
        if r.dry_run { " (dry run)" } else { "" },
        r.snapshots,
        r.stores.len(),
        r.stores.join(", "),
        r.copied()
    );
}
