//! `guardian run`: the long-running service. It owns what is particular to running on a
//! schedule: one run of a job per database at a time, jitter, the metrics listener, logging
//! each run's outcome once, and a graceful stop. Each job runs through the job runner
//! (`jobs.rs`: lock, run, metrics, alerts) like a command; when it fires is `schedule.rs`.
//!
//! Modelled on mini-redis `server::run`: [`run`] takes the shutdown as a future (`main` passes
//! SIGINT|SIGTERM, tests pass a oneshot). On the first signal the scheduler stops and no new
//! job starts; the job in flight gets `service.shutdown_timeout` (default 8 s) to finish, then
//! it is cancelled; a second signal cancels it at once. A cancelled backup never leaves a
//! snapshot: the manifest is written last, so what it leaves is an orphan that a later prune
//! removes. This is the only place job failures are logged: no caller remains above it, and
//! a failed job never stops the service.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::app::App;
use crate::config::Config;
use crate::drill::{self, DrillReport};
use crate::error::{Error, Result};
use crate::human::chain;
use crate::jobs::{Done, Ended, Job, Outcome, Runner};
use crate::metrics::{self, Metrics};
use crate::schedule::{self, JobKind, OnTick, Scheduler, Tick};
use crate::sync::SyncOptions;

/// The locks of one database.
#[derive(Default)]
struct DbLocks {
    /// Held by the job that works on the database's snapshots: a backup (and its prune) and
    /// a drill never overlap, so a prune cannot delete the snapshot a drill is reading.
    exclusive: Mutex<()>,
    /// Held from tick to end by a backup: a tick that finds it held is skipped.
    backup: Mutex<()>,
    /// Same for drills.
    drill: Mutex<()>,
}

/// What every job shares.
struct Shared {
    /// Runs the jobs: lock → run → metrics → events → outcome.
    runner: Runner,
    locks: HashMap<String, DbLocks>,
    metrics: Arc<Metrics>,
    /// Tasks of ticks in flight, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Cancelled on the first stop signal: nothing new starts.
    stop: CancellationToken,
    /// Cancelled when the grace period ends (or on a second signal): jobs in flight are dropped.
    cancel: CancellationToken,
}

impl Shared {
    fn app(&self) -> &App {
        self.runner.app()
    }
}

/// Run the service until `shutdown` completes, then stop gracefully; `abort` completing after
/// that (a second signal) cuts the grace period short.
///
/// # Errors
/// Start-up problems only (no schedule, bad notify settings, listener address in use). Job
/// failures are logged, counted and notified, never returned.
pub async fn run(
    app: App,
    shutdown: impl Future<Output = ()>,
    abort: impl Future<Output = ()>,
) -> Result<()> {
    let entries = entries(&app.config);
    if entries.is_empty() {
        return Err(Error::Config(
            "nothing to schedule: add backup = \"0 3 * * *\" (and drill = \"30 4 * * sun\") to a [[databases]] table"
                .into(),
        ));
    }
    let (listener, addr) = listen(&app).await?;
    let metrics = Arc::new(Metrics::new(
        app.config.databases.iter().map(|d| d.name.as_str()),
    ));
    metrics.describe(&app.config.databases, &app.stores[0].store.location());
    observe_store(&app, &metrics).await;
    let cancel = CancellationToken::new();
    let shared = Arc::new(Shared {
        locks: app
            .config
            .databases
            .iter()
            .map(|d| (d.name.clone(), DbLocks::default()))
            .collect(),
        runner: Runner::new(app)?.with_metrics(Arc::clone(&metrics), cancel.clone()),
        metrics: Arc::clone(&metrics),
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
        cancel,
    });

    let http = tokio::spawn(metrics::serve(listener, metrics, shared.stop.clone()));
    let refresh = tokio::spawn(refresh_from_store(Arc::clone(&shared)));
    let on_tick: OnTick = {
        let shared = Arc::clone(&shared);
        Arc::new(move |tick: Tick| {
            let s = Arc::clone(&shared);
            shared.tracker.spawn(on_tick(s, tick));
        })
    };
    let count = entries.len();
    let scheduler = Scheduler::start(entries, on_tick).await?;
    info!(listen = %addr, schedules = count, stores = %shared.app().stores.iter().map(|s| s.describe()).collect::<Vec<_>>().join(", "), "guardian service started");

    stop(&shared, scheduler, shutdown, abort).await;
    let _ = http.await;
    let _ = refresh.await;
    info!("guardian service stopped");
    Ok(())
}

/// Bind the `/metrics` and `/healthz` listener; returns it with its address.
async fn listen(app: &App) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listen = app.config.service.listen();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::Config(format!(
            "service.listen: cannot listen on {listen}: {e} (pick a free address, or \"127.0.0.1:0\" for any port)"
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("read address of listener", listen.to_string(), e))?;
    Ok((listener, addr))
}

/// Re-read the store every `service.refresh` until the service stops, so that what other
/// processes did (a drill or backup from the command line, another host's backups) shows in
/// `/metrics`, `/healthz` and the status page, not only what this service ran.
async fn refresh_from_store(s: Arc<Shared>) {
    let every = s.app().config.service.refresh();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = s.stop.cancelled() => return,
        }
        tokio::select! {
            () = observe_store(s.app(), &s.metrics) => {}
            () = s.stop.cancelled() => return,
        }
    }
}

/// Start the metrics from what the stores hold (a store that is down is retried by the jobs).
async fn observe_store(app: &App, metrics: &Metrics) {
    for db in &app.config.databases {
        match crate::status::load(app, db).await {
            Ok(l) => {
                metrics.observe_catalog(l.catalog());
                metrics.observe_stores(&db.name, crate::status::store_statuses(db, &l));
                if let Some(r) = crate::rto::proven(&l.reference_store().store, l.catalog()).await {
                    metrics.drill_passed_at(&db.name, r.drilled_at_time, r.restore_seconds);
                }
                metrics.observe_attempt(&db.name, l.attempt);
            }
            Err(e) => {
                warn!(db = %db.name, error = %chain(&e), "cannot read the store yet; jobs will retry")
            }
        }
    }
}

/// Wait for `shutdown`, then stop: no new job, the grace period for the one in flight (cut
/// short by `abort`), then cancel what is left.
async fn stop(
    shared: &Shared,
    scheduler: Scheduler,
    shutdown: impl Future<Output = ()>,
    abort: impl Future<Output = ()>,
) {
    tokio::pin!(abort);
    let aborted = tokio::select! {
        () = shutdown => false,
        () = &mut abort => true,
    };
    info!("stop requested: no new jobs will start");
    scheduler.stop().await;
    shared.stop.cancel();
    shared.tracker.close();
    if !aborted && !shared.tracker.is_empty() {
        let grace = shared.app().config.service.shutdown_timeout();
        info!(grace = %humantime::format_duration(grace), "waiting for the job in flight");
        tokio::select! {
            () = shared.tracker.wait() => {}
            () = tokio::time::sleep(grace) => {
                warn!(grace = %humantime::format_duration(grace), "jobs still running at the end of the grace period; cancelling them");
            }
            () = &mut abort => warn!("second stop signal: cancelling running jobs now"),
        }
    }
    shared.cancel.cancel();
    if tokio::time::timeout(Duration::from_secs(2), shared.tracker.wait())
        .await
        .is_err()
    {
        warn!("some jobs did not end after cancellation; exiting anyway");
    }
}

/// Every schedule in the config (validated at load).
fn entries(config: &Config) -> Vec<schedule::Entry> {
    let mut out = Vec::new();
    for db in &config.databases {
        for (kind, expr) in [
            (JobKind::Backup, &db.backup),
            (JobKind::Incremental, &db.incremental),
            (JobKind::Drill, &db.drill),
        ] {
            if let Some(expr) = expr {
                out.push(schedule::Entry {
                    db: db.name.clone(),
                    kind,
                    cron: schedule::parse_cron(expr).expect("validated config: cron strings parse"),
                    tz: db.timezone(),
                    jitter: db.jitter(),
                });
            }
        }
    }
    out
}

/// One firing of a schedule: skip if busy, wait out the jitter, take the database, run the
/// job, log its outcome.
async fn on_tick(s: Arc<Shared>, tick: Tick) {
    if s.stop.is_cancelled() {
        return;
    }
    let Some(locks) = s.locks.get(&tick.db) else {
        error!(db = %tick.db, "tick for a database that is not configured");
        return;
    };
    let (own, job) = match tick.kind {
        JobKind::Backup => (
            &locks.backup,
            Job::Backup {
                prune_after: true,
                incremental: false,
            },
        ),
        // One backup of a database at a time, full or incremental.
        JobKind::Incremental => (
            &locks.backup,
            Job::Backup {
                prune_after: true,
                incremental: true,
            },
        ),
        JobKind::Drill => (&locks.drill, Job::Drill { snapshot: None }),
    };
    let Ok(_own) = own.try_lock() else {
        warn!(db = %tick.db, job = job.name(), "the previous run is still going; skipping this tick");
        s.metrics.outcome(&tick.db, job.name(), "skipped");
        return;
    };
    if !tick.delay.is_zero() {
        debug!(db = %tick.db, job = job.name(), delay_ms = tick.delay.as_millis() as u64, "waiting out the jitter");
        tokio::select! {
            () = tokio::time::sleep(tick.delay) => {}
            () = s.stop.cancelled() => return,
        }
    }
    let db = s
        .app()
        .config
        .databases
        .iter()
        .find(|d| d.name == tick.db)
        .expect("locks exist only for configured databases");
    let _exclusive = tokio::select! {
        g = locks.exclusive.lock() => g,
        () = s.stop.cancelled() => return,
    };
    let span = tracing::info_span!("job", db = %db.name, job = job.name());
    async {
        let out = s.runner.run(db, job).await;
        log_outcome(&out);
        // With several stores, copy what a store missed (this snapshot when a store failed,
        // older ones a store lacks) while the database is still ours.
        if after_backup_sync(&out) && s.app().stores_of(db).len() > 1 {
            let sync = Job::Sync(SyncOptions {
                dry_run: false,
                deep: false,
            });
            // The backup's alert already named the stores that missed its snapshot.
            let alerted: Vec<String> = match &out.ended {
                Ended::Failed(Error::StoresMissed { missed, .. }) => {
                    missed.iter().map(|(store, _)| store.clone()).collect()
                }
                _ => Vec::new(),
            };
            log_outcome(&s.runner.run_alerted(db, sync, &alerted).await);
        }
    }
    .instrument(span)
    .await;
}

/// Whether `out` is a backup after which `sync` runs: one that published a snapshot (in
/// every store or only some), not one that did nothing or was cancelled.
fn after_backup_sync(out: &Outcome) -> bool {
    matches!(out.job, Job::Backup { .. })
        && matches!(
            out.ended,
            Ended::Done(Done::Backup { .. }) | Ended::Failed(Error::StoresMissed { .. })
        )
}

/// Log how a scheduled job ended: the service is the only place job outcomes are logged.
fn log_outcome(out: &Outcome) {
    let job = out.job.name();
    match &out.ended {
        Ended::Done(Done::Backup {
            manifest,
            full_because,
            seconds,
            prune,
        }) => {
            info!(outcome = "ok", id = %manifest.id, kind = manifest.kind().as_str(), seconds = format_args!("{seconds:.2}"), "scheduled backup succeeded");
            if let Some(why) = full_because {
                warn!(reason = %why, "took a full snapshot instead of an incremental");
            }
            match prune {
                Some(Ok(r)) if !r.deleted.is_empty() => {
                    info!(deleted = r.deleted.len(), "pruned old snapshots");
                }
                Some(Err(e)) => {
                    warn!(error = %chain(e), "prune after the backup failed; the backup itself succeeded");
                }
                _ => {}
            }
        }
        Ended::Done(Done::Drill { latest, rotation }) => {
            log_drill(latest);
            match rotation.as_ref().and_then(|r| r.older.as_ref()) {
                Some(Ok(r)) => log_drill(r),
                Some(Err(e)) => {
                    error!(outcome = "failed", error = %chain(e), "the drill of an older snapshot in rotation could not run");
                }
                None => {}
            }
        }
        Ended::Done(Done::Sync(r)) if r.exit_code() != 0 => {
            error!(outcome = "failed", problems = %crate::sync::summary(r), "sync after the backup left a store without some snapshot");
        }
        Ended::Done(Done::Sync(r)) => {
            info!(
                outcome = "ok",
                copied = r.copied(),
                "sync after the backup: every store holds every snapshot"
            );
        }
        Ended::Done(_) => info!(outcome = "ok", "scheduled {job} succeeded"),
        Ended::Busy(e) => warn!(error = %chain(e), "skipping this tick"),
        Ended::Failed(e) if matches!(out.job, Job::Drill { .. }) => {
            error!(outcome = "failed", error = %chain(e), "scheduled drill could not run");
        }
        Ended::Failed(e) => error!(outcome = "failed", error = %chain(e), "scheduled {job} failed"),
        Ended::Crashed(why) => {
            error!(error = %why, "job crashed (a bug in guardian); the service goes on");
        }
        Ended::Cancelled => {
            warn!("cancelled by shutdown; an interrupted backup leaves no snapshot");
        }
    }
}

/// Log one drill verdict.
fn log_drill(r: &DrillReport) {
    let which = match r.selected_by {
        drill::Selection::Rotation => "older snapshot in rotation",
        _ => "newest snapshot",
    };
    let seconds = r.seconds;
    if r.ok {
        info!(outcome = "ok", snapshot = %r.snapshot, which, seconds = format_args!("{seconds:.2}"), "scheduled drill passed");
    } else {
        error!(outcome = "failed", snapshot = %r.snapshot, which, problems = %r.problems.join("; "), "scheduled drill FAILED: the snapshot is marked failed");
    }
    for w in &r.warnings {
        warn!(snapshot = %r.snapshot, warning = %w, "drill warning");
    }
    if let Err(why) = &r.record {
        error!(snapshot = %r.snapshot, error = %why, "the drill's verdict could not be stored; other guardians will not see it");
    }
}

/// The first SIGINT, SIGTERM or SIGHUP a command receives, by name: what `restore`, `diff` and
/// the job commands stop on. The handlers are installed at once, so that from then on none of
/// these signals kills the process.
///
/// # Errors
/// When a handler cannot be installed.
pub(crate) fn first_interrupt() -> Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind| signal(kind).map_err(|e| Error::io("install signal handler", "-", e));
    let (mut int, mut term, mut hup) = (
        install(SignalKind::interrupt())?,
        install(SignalKind::terminate())?,
        install(SignalKind::hangup())?,
    );
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        }
    })
}

/// Futures that complete on the first and on the second SIGINT or SIGTERM (Docker sends
/// SIGTERM, a terminal SIGINT). Install them before anything else runs.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub(crate) fn os_signals() -> Result<(impl Future<Output = ()>, impl Future<Output = ()>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind| signal(kind).map_err(|e| Error::io("install signal handler", "-", e));
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => std::future::pending().await,
            };
            tx.send_modify(|n| *n += 1);
            info!(signal = name, "signal received");
        }
    });
    let nth = move |n: u32| {
        let mut rx = rx.clone();
        async move {
            if rx.wait_for(|count| *count >= n).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    Ok((nth(1), nth(2)))
}
