//! One job on one database, run the same way by every command and by the service:
//! lock → run → metrics → events → outcome.
//!
//! - **lock**: the database's job lock (`lock.rs`), across processes. Held by another guardian:
//!   the job is [`Ended::Busy`], nothing is done and nothing is alerted (the holder reports its
//!   own outcome; the command line exits 3, the service counts a skip). Any other failure to
//!   take it is a failed job, alerted like one.
//! - **run**: the job's own module (`backup`, `drill`, `retention`, `verify`), in a task of its
//!   own, so that a panic is reported like any failure ([`Ended::Crashed`]) and the service's
//!   shutdown can cancel it ([`Ended::Cancelled`]: no outcome is sent, which is the truth).
//! - **metrics**: only in the service ([`Runner::with_metrics`]).
//! - **events**: the alerts of [`Outcome::events`]; a backup's heartbeat `/start` is sent before
//!   the run and its outcome ping never overtakes it.
//! - **outcome**: a backup's is recorded in the store and the staging folder (`outcome.rs`),
//!   where every `status` sees it; then it is returned to the caller, which prints it (`cli`)
//!   or logs it (`service`); [`Outcome::exit_code`] is its exit code.
//!
//! A new job kind is a [`Job`] variant, its call in `Runner::work`, a [`Done`] variant, and its
//! lines in `exit_code`, `events` and `observe`.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::DatabaseConfig;
use crate::drill::DrillReport;
use crate::error::{worst_exit_code, Error, Result};
use crate::human::chain;
use crate::lock::DbLock;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::notify::{Event, Notifier, StartPing};
use crate::retention::{PruneReport, StoresPruned};
use crate::sync::{self, SyncOptions, SyncReport};
use crate::verify::{self, Verified};
use crate::{backup, drill, retention};

/// What to do to a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Job {
    /// Take a snapshot (`incremental`: the changed pages, or a full when that is not
    /// possible); then, with `prune_after` (the service) and a retention policy, prune.
    Backup {
        prune_after: bool,
        incremental: bool,
    },
    /// Drill the snapshot named (an id or a unique prefix), or else the newest usable one and
    /// an older one in rotation.
    Drill { snapshot: Option<String> },
    /// Apply the retention policy (`dry_run`: say what would go, delete nothing).
    Prune { dry_run: bool },
    /// Re-read stored snapshots and check their checksums (`all`: every one, not the newest).
    Verify { all: bool },
    /// Copy the snapshots a store lacks or holds damaged from a store with a good copy.
    Sync(SyncOptions),
}

impl Job {
    /// The job's name in logs, metrics and the lock file.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Job::Backup { .. } => "backup",
            Job::Drill { .. } => "drill",
            Job::Prune { .. } => "prune",
            Job::Verify { .. } => "verify",
            Job::Sync(_) => "sync",
        }
    }

    /// Whether the job takes the database's lock: reading needs none, and neither does a
    /// dry run, which deletes nothing.
    fn locks(&self) -> bool {
        match self {
            Job::Backup { .. } | Job::Drill { .. } => true,
            Job::Prune { dry_run } | Job::Sync(SyncOptions { dry_run, .. }) => !dry_run,
            Job::Verify { .. } => false,
        }
    }
}

/// What a job that ran to its end produced.
#[derive(Debug)]
pub(crate) enum Done {
    Backup {
        manifest: Manifest,
        /// Why a full was taken when an incremental was asked for.
        full_because: Option<String>,
        /// How long the backup took (without the prune after it).
        seconds: f64,
        /// The prune after it (`None` when none was asked for).
        prune: Option<Result<PruneReport>>,
    },
    Drill {
        /// The drill of the snapshot named, or of the newest usable one.
        latest: DrillReport,
        /// Without a named snapshot: the older snapshot in rotation.
        rotation: Option<Rotation>,
    },
    /// One report per store that was pruned, and the stores that failed.
    Prune(StoresPruned),
    Verify(Vec<Verified>),
    Sync(SyncReport),
}

/// The older snapshot of a drill in rotation.
#[derive(Debug)]
pub(crate) struct Rotation {
    /// `None` when there is no older usable snapshot; an error when its drill could not run.
    pub older: Option<Result<DrillReport>>,
    /// How many older usable snapshots take turns.
    pub count: usize,
}

/// How a job ended.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per job run, moved once to its caller
pub(crate) enum Ended {
    Done(Done),
    /// Another guardian holds the database's lock: nothing was done.
    Busy(Error),
    /// The lock could not be taken, or the job failed.
    Failed(Error),
    /// The job panicked (a bug in guardian); reported like a failure.
    Crashed(String),
    /// Cancelled by the service's shutdown.
    Cancelled,
}

/// One job's outcome.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub db: String,
    pub job: Job,
    pub ended: Ended,
}

impl Outcome {
    /// The exit code of this outcome (see `error.rs`); a command's is the worst of its jobs'.
    pub(crate) fn exit_code(&self) -> u8 {
        match &self.ended {
            Ended::Done(done) => done.exit_code(),
            Ended::Busy(e) | Ended::Failed(e) => e.exit_code(),
            Ended::Crashed(_) | Ended::Cancelled => 2,
        }
    }

    /// The alerts this outcome sends (none for a job another guardian was doing, or one the
    /// shutdown cancelled).
    pub(crate) fn events(&self) -> Vec<Event> {
        let db = || self.db.clone();
        match &self.ended {
            Ended::Done(done) => done.events(&self.db),
            Ended::Busy(_) | Ended::Cancelled => Vec::new(),
            Ended::Failed(e) => failure_event(&self.job, db(), chain(e))
                .into_iter()
                .collect(),
            Ended::Crashed(why) => failure_event(&self.job, db(), format!("internal error: {why}"))
                .into_iter()
                .collect(),
        }
    }
}

impl Done {
    fn exit_code(&self) -> u8 {
        match self {
            Done::Backup { .. } => 0,
            Done::Prune(p) => p
                .failed
                .iter()
                .fold(0, |code, (_, e)| worst_exit_code(code, e.exit_code())),
            Done::Drill { latest, rotation } => {
                let older = match rotation.as_ref().and_then(|r| r.older.as_ref()) {
                    Some(Ok(r)) => report_exit_code(r),
                    Some(Err(e)) => e.exit_code(),
                    None => 0,
                };
                worst_exit_code(report_exit_code(latest), older)
            }
            Done::Verify(results) => {
                // Nothing verified is not a pass.
                let mut code = if results.is_empty() { 1 } else { 0 };
                for v in results {
                    let c = match v.outcome {
                        verify::Outcome::Ok => 0,
                        verify::Outcome::Bad(_) => 1,
                        verify::Outcome::Error(_) => 2,
                    };
                    code = worst_exit_code(code, c);
                }
                code
            }
            Done::Sync(r) => r.exit_code(),
        }
    }

    fn events(&self, db: &str) -> Vec<Event> {
        match self {
            Done::Backup {
                manifest,
                seconds,
                prune,
                ..
            } => {
                let mut events = vec![Event::BackupOk {
                    db: db.to_string(),
                    id: manifest.id.to_string(),
                    seconds: *seconds,
                    stored_bytes: manifest.own_stored_len(),
                }];
                if let Some(Err(e)) = prune {
                    events.push(Event::PruneFailed {
                        db: db.to_string(),
                        error: chain(e),
                    });
                }
                events
            }
            Done::Drill { latest, rotation } => {
                let mut events = drill_events(latest);
                match rotation.as_ref().and_then(|r| r.older.as_ref()) {
                    Some(Ok(r)) => events.extend(drill_events(r)),
                    Some(Err(e)) => events.push(Event::DrillFailed {
                        db: db.to_string(),
                        snapshot: None,
                        detail: format!("drill of an older snapshot in rotation: {}", chain(e)),
                    }),
                    None => {}
                }
                events
            }
            // A dry run deletes nothing: a failed one is said, not alerted.
            Done::Prune(p) if p.dry_run => Vec::new(),
            Done::Prune(p) => p
                .failed
                .iter()
                .map(|(store, e)| Event::PruneFailed {
                    db: db.to_string(),
                    error: format!("store {store}: {}", chain(e)),
                })
                .collect(),
            Done::Verify(results) => {
                let bad: Vec<String> = results
                    .iter()
                    .filter_map(|v| match &v.outcome {
                        verify::Outcome::Bad(why) if v.missing => Some(format!("{}: {why}", v.id)),
                        verify::Outcome::Bad(why) => {
                            Some(format!("{} in store {}: {why}", v.id, v.store))
                        }
                        _ => None,
                    })
                    .collect();
                if bad.is_empty() {
                    return Vec::new();
                }
                vec![Event::VerifyFailed {
                    db: db.to_string(),
                    detail: bad.join("; "),
                }]
            }
            Done::Sync(r) if r.dry_run || r.exit_code() == 0 => Vec::new(),
            Done::Sync(r) => vec![Event::SyncFailed {
                db: db.to_string(),
                error: crate::sync::summary(r),
            }],
        }
    }
}

/// A drill report's exit code: 1 when the snapshot failed, 2 when the verdict could not be
/// recorded.
fn report_exit_code(r: &DrillReport) -> u8 {
    let own = match (&r.record, r.ok) {
        (_, false) => 1,
        (Err(_), true) => 2,
        (Ok(_), true) => 0,
    };
    // Another store's copy that is not the drilled data fails the drill (1); one that could
    // not be checked, or whose verdict could not be recorded, is an operational failure (2).
    r.copies.iter().fold(own, |code, c| match () {
        () if c.differs() => worst_exit_code(code, 1),
        () if c.failed_to_check() => worst_exit_code(code, 2),
        () => code,
    })
}

/// The alerts of one drill report: its verdict, and a failure when the verdict could not be
/// recorded (other guardians will not see it).
fn drill_events(r: &DrillReport) -> Vec<Event> {
    let mut events = vec![if r.ok {
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
    }];
    if let Err(why) = &r.record {
        events.push(Event::DrillFailed {
            db: r.db.clone(),
            snapshot: Some(r.snapshot.clone()),
            detail: why.clone(),
        });
    }
    for c in r
        .copies
        .iter()
        .filter(|c| c.differs() || c.failed_to_check())
    {
        let recorded = match &c.record {
            Some(Err(why)) => format!("; {why}"),
            _ => String::new(),
        };
        events.push(Event::DrillFailed {
            db: r.db.clone(),
            snapshot: Some(r.snapshot.clone()),
            detail: format!(
                "its copy in store {} is {}: {}{recorded}",
                c.store, c.state, c.detail
            ),
        });
    }
    events
}

/// The alert for a `job` of `db` that failed before it could report for itself.
fn failure_event(job: &Job, db: String, detail: String) -> Option<Event> {
    match job {
        Job::Backup { .. } => Some(Event::BackupFailed { db, error: detail }),
        Job::Drill { .. } => Some(Event::DrillFailed {
            db,
            snapshot: None,
            detail,
        }),
        // A dry run deletes nothing: a failed one is said, not alerted.
        Job::Prune { dry_run: true } => None,
        Job::Prune { dry_run: false } => Some(Event::PruneFailed { db, error: detail }),
        // The store could not be listed: the command says so; damage is what verify alerts.
        Job::Verify { .. } => None,
        Job::Sync(SyncOptions { dry_run: true, .. }) => None,
        Job::Sync(_) => Some(Event::SyncFailed { db, error: detail }),
    }
}

/// Runs jobs: the command line one database after another, the service one per tick.
#[derive(Clone)]
pub(crate) struct Runner {
    app: Arc<App>,
    notifier: Notifier,
    metrics: Option<Arc<Metrics>>,
    /// Cancelled by the service's shutdown, or by a signal to a command.
    cancel: CancellationToken,
}

impl Runner {
    /// A runner for `app`, alerting as `[notify]` says.
    ///
    /// # Errors
    /// When the alert URLs cannot be loaded (see `Notifier::from_config`).
    pub(crate) fn new(app: App) -> Result<Runner> {
        let notifier = Notifier::from_config(&app.config.notify)?;
        Ok(Runner {
            app: Arc::new(app),
            notifier,
            metrics: None,
            cancel: CancellationToken::new(),
        })
    }

    /// Count runs and outcomes in `metrics`, and stop jobs in flight when `cancel` fires.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>, cancel: CancellationToken) -> Self {
        self.metrics = Some(metrics);
        self.cancel = cancel;
        self
    }

    /// Stop the job in flight when `cancel` fires (a command's SIGINT, SIGTERM or SIGHUP).
    pub(crate) fn cancelled_by(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    pub(crate) fn app(&self) -> &App {
        &self.app
    }

    /// Run `job` on `db`: lock → run → metrics → events → outcome.
    pub(crate) async fn run(&self, db: &DatabaseConfig, job: Job) -> Outcome {
        self.run_alerted(db, job, &[]).await
    }

    /// [`Runner::run`] for a sync right after a backup whose alert already named the stores
    /// in `alerted` (they missed its snapshot): a sync that fails only because of those stores
    /// sends no second alert for the same fault (its outcome, log and metrics stay).
    pub(crate) async fn run_alerted(
        &self,
        db: &DatabaseConfig,
        job: Job,
        alerted: &[String],
    ) -> Outcome {
        let outcome = |ended| Outcome {
            db: db.name.clone(),
            job: job.clone(),
            ended,
        };
        let lock = match self.lock(db, &job) {
            Ok(lock) => lock,
            Err(e) if e.is_busy() => {
                self.count(db, &job, "skipped");
                return outcome(Ended::Busy(e));
            }
            Err(e) => {
                self.count(db, &job, "failed");
                let out = outcome(Ended::Failed(e));
                self.record(&out).await;
                self.send(&out.events()).await;
                return out;
            }
        };
        let started = Instant::now();
        let ping = match job {
            Job::Backup { .. } => self.notifier.backup_started(&db.name),
            _ => StartPing::default(),
        };
        let ended = self.work_in_task(db, &job, lock).await;
        let out = outcome(ended);
        self.record(&out).await;
        self.observe(db, &out, started.elapsed().as_secs_f64())
            .await;
        if matches!(out.ended, Ended::Cancelled) {
            // No outcome: the heartbeat service sees a backup that began and never ended.
            return out;
        }
        // The outcome ping must not overtake `/start`.
        tokio::select! {
            () = ping.done() => {}
            () = self.cancel.cancelled() => return out,
        }
        let mut events = out.events();
        if let Ended::Done(Done::Sync(r)) = &out.ended {
            let failing = r.failing_stores();
            if !alerted.is_empty()
                && r.lost.is_empty()
                && failing.iter().all(|f| alerted.contains(f))
            {
                events.retain(|e| !matches!(e, Event::SyncFailed { .. }));
            }
        }
        self.send(&events).await;
        out
    }

    fn lock(&self, db: &DatabaseConfig, job: &Job) -> Result<Option<DbLock>> {
        if !job.locks() {
            return Ok(None);
        }
        let staging = self.app.config.backup.staging_dir();
        DbLock::acquire(&staging, db, job.name()).map(Some)
    }

    /// Run the job in a task of its own, holding `lock` until it ends.
    async fn work_in_task(&self, db: &DatabaseConfig, job: &Job, lock: Option<DbLock>) -> Ended {
        if let Some(m) = &self.metrics {
            m.running(&db.name, job.name(), true);
        }
        let mut task = {
            let (this, db, job) = (self.clone(), db.clone(), job.clone());
            tokio::spawn(async move {
                let _lock = lock;
                this.work(&db, &job).await
            })
        };
        let ended = tokio::select! {
            joined = &mut task => match joined {
                Ok(Ok(done)) => Ended::Done(done),
                Ok(Err(e)) => Ended::Failed(e),
                Err(e) => Ended::Crashed(panic_message(e)),
            },
            () = self.cancel.cancelled() => {
                task.abort();
                Ended::Cancelled
            }
        };
        if let Some(m) = &self.metrics {
            m.running(&db.name, job.name(), false);
        }
        ended
    }

    /// The job itself: one call into its module.
    async fn work(&self, db: &DatabaseConfig, job: &Job) -> Result<Done> {
        let app = &self.app;
        let staging = app.config.backup.staging_dir();
        match job {
            Job::Backup {
                prune_after,
                incremental,
            } => {
                let started = Instant::now();
                let done = backup::run(
                    &app.stores_of(db),
                    db,
                    &app.config.backup,
                    &app.keys,
                    *incremental,
                )
                .await?;
                let (manifest, full_because) = (done.manifest, done.full_because);
                let seconds = started.elapsed().as_secs_f64();
                // A failed prune is a warning: the backup itself is safe in the store. Also
                // without a retention table: that prune removes only orphans over a day old
                // (what cancelled backups leave), never a snapshot.
                let prune = match prune_after {
                    true => Some(
                        retention::prune_stores(&app.stores_of(db), db, false)
                            .await
                            .into_one(),
                    ),
                    false => None,
                };
                Ok(Done::Backup {
                    manifest,
                    full_because,
                    seconds,
                    prune,
                })
            }
            Job::Drill { snapshot: Some(id) } => {
                let latest =
                    drill::run(&app.stores_of(db), db, &staging, Some(id), &app.keys).await?;
                Ok(Done::Drill {
                    latest,
                    rotation: None,
                })
            }
            Job::Drill { snapshot: None } => {
                let d =
                    drill::run_with_rotation(&app.stores_of(db), db, &staging, &app.keys).await?;
                Ok(Done::Drill {
                    latest: d.latest,
                    rotation: Some(Rotation {
                        older: d.older,
                        count: d.older_count,
                    }),
                })
            }
            Job::Prune { dry_run } => Ok(Done::Prune(
                retention::prune_stores(&app.stores_of(db), db, *dry_run).await,
            )),
            Job::Verify { all } => Ok(Done::Verify(
                verify::run(&app.stores_of(db), &db.name, *all).await?,
            )),
            Job::Sync(opts) => Ok(Done::Sync(
                sync::run(&app.stores_of(db), &db.name, *opts).await?,
            )),
        }
    }

    /// Record how a backup ended where every `status` sees it (see `outcome`). A backup that
    /// another guardian was doing, or that the shutdown cancelled, did not end here.
    async fn record(&self, out: &Outcome) {
        if !matches!(out.job, Job::Backup { .. }) {
            return;
        }
        let staging = self.app.config.backup.staging_dir();
        let crashed;
        let result = match &out.ended {
            Ended::Done(Done::Backup { manifest, .. }) => Ok(manifest),
            Ended::Failed(e) => Err(e),
            Ended::Crashed(why) => {
                crashed = Error::Internal(why.to_string());
                Err(&crashed)
            }
            Ended::Done(_) | Ended::Busy(_) | Ended::Cancelled => return,
        };
        let db = self.app.config.databases.iter().find(|d| d.name == out.db);
        let stores = db.map_or_else(Vec::new, |d| self.app.stores_of(d));
        crate::outcome::record(&stores, &staging, &out.db, result).await;
    }

    /// Count a run of `job` that ended `how` (the service only).
    fn count(&self, db: &DatabaseConfig, job: &Job, how: &'static str) {
        if let Some(m) = &self.metrics {
            m.outcome(&db.name, job.name(), how);
        }
    }

    /// Update the metrics with a job's outcome, and with what the store now holds.
    async fn observe(&self, db: &DatabaseConfig, out: &Outcome, seconds: f64) {
        let Some(m) = &self.metrics else { return };
        let name = out.job.name();
        // What the store holds goes in first: a reader of the status page who sees this job's
        // outcome (a proven restore time, a success) then also sees the snapshots and drill
        // records it wrote, never an outcome ahead of its catalog.
        if matches!(out.ended, Ended::Done(_) | Ended::Failed(_)) {
            match crate::status::load(&self.app, db).await {
                Ok(l) => {
                    m.observe_catalog(l.catalog());
                    m.observe_stores(&db.name, crate::status::store_statuses(db, &l));
                    m.observe_attempt(&db.name, l.attempt);
                }
                Err(e) => {
                    tracing::debug!(db = %db.name, error = %chain(&e), "could not refresh snapshot metrics")
                }
            }
        }
        match &out.ended {
            Ended::Done(Done::Backup {
                manifest,
                seconds,
                prune,
                ..
            }) => {
                m.backup_finished(&db.name, true, *seconds, Some(manifest.kind()));
                match prune {
                    Some(Ok(_)) => m.outcome(&db.name, "prune", "ok"),
                    Some(Err(_)) => m.outcome(&db.name, "prune", "failed"),
                    None => {}
                }
            }
            Ended::Done(Done::Drill { latest, rotation }) => {
                let older = rotation.as_ref().and_then(|r| r.older.as_ref());
                // One verdict for the job: a damaged older snapshot fails it like a damaged
                // newest, and so does another store's copy whose bytes differ.
                let passed = |r: &DrillReport| r.ok && !r.copies.iter().any(|c| c.differs());
                let all_ok = passed(latest) && older.is_none_or(|o| o.as_ref().is_ok_and(passed));
                m.drill_finished(&db.name, all_ok);
                if latest.ok && older.is_none_or(|o| o.as_ref().is_ok_and(|r| r.ok)) {
                    m.drill_passed(&db.name, latest.restore_seconds.unwrap_or(latest.seconds));
                }
                let reports = std::iter::once(latest).chain(older.and_then(|o| o.as_ref().ok()));
                for r in reports {
                    if r.record.is_err() {
                        m.outcome(&db.name, name, "failed");
                    }
                }
            }
            Ended::Done(done) => m.outcome(
                &db.name,
                name,
                if done.exit_code() == 0 {
                    "ok"
                } else {
                    "failed"
                },
            ),
            Ended::Failed(_) if matches!(out.job, Job::Backup { .. }) => {
                m.backup_finished(&db.name, false, seconds, None);
            }
            Ended::Failed(_) | Ended::Crashed(_) => m.outcome(&db.name, name, "failed"),
            Ended::Busy(_) => m.outcome(&db.name, name, "skipped"),
            Ended::Cancelled => m.outcome(&db.name, name, "cancelled"),
        }
        match &out.ended {
            Ended::Failed(e) => m.failure(&db.name, name, chain(e)),
            Ended::Crashed(why) => m.failure(&db.name, name, format!("crashed: {why}")),
            _ => {}
        }
    }

    /// Send `events`, unless the shutdown cancels the sending.
    async fn send(&self, events: &[Event]) {
        for event in events {
            tokio::select! {
                () = self.notifier.send(event) => {}
                () = self.cancel.cancelled() => return,
            }
        }
    }
}

/// What a crashed job task said.
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
