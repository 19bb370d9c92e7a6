//! `guardian run`: the long-running service. It owns the job lifecycle: single-flight locks,
//! jitter, logging each run's outcome once, metrics, notifications, and a graceful stop.
//! What a job does is one call into `backup`, `retention` or `drill`; when it fires is
//! `schedule.rs`.
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
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, instrument, warn};

use crate::catalog;
use crate::cli::App;
use crate::config::{Config, DatabaseConfig};
use crate::error::{chain, Error, Result};
use crate::metrics::{self, Metrics};
use crate::notify::{Event, Notifier, StartPing};
use crate::schedule::{self, JobKind, OnTick, Scheduler, Tick};
use crate::{backup, drill, retention};

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
    app: App,
    locks: HashMap<String, DbLocks>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    /// Tasks of ticks in flight, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Cancelled on the first stop signal: nothing new starts.
    stop: CancellationToken,
    /// Cancelled when the grace period ends (or on a second signal): jobs in flight are dropped.
    cancel: CancellationToken,
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
    let notifier = Notifier::from_config(&app.config.notify)?;
    let listen = app.config.service.listen();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::Config(format!(
            "service.listen: cannot listen on {listen}: {e} (pick a free address, or \"127.0.0.1:0\" for any port)"
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("read address of listener", listen.to_string(), e))?;

    let metrics = Arc::new(Metrics::new(
        app.config.databases.iter().map(|d| d.name.as_str()),
    ));
    for db in &app.config.databases {
        match catalog::load(&app.store, &db.name).await {
            Ok(c) => metrics.observe_catalog(&c),
            Err(e) => {
                warn!(db = %db.name, error = %chain(&e), "cannot read the store yet; jobs will retry")
            }
        }
    }
    let shared = Arc::new(Shared {
        locks: app
            .config
            .databases
            .iter()
            .map(|d| (d.name.clone(), DbLocks::default()))
            .collect(),
        app,
        metrics: Arc::clone(&metrics),
        notifier,
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
        cancel: CancellationToken::new(),
    });

    let http = tokio::spawn(metrics::serve(listener, metrics, shared.stop.clone()));
    let on_tick: OnTick = {
        let shared = Arc::clone(&shared);
        Arc::new(move |tick: Tick| {
            let s = Arc::clone(&shared);
            shared.tracker.spawn(on_tick(s, tick));
        })
    };
    let count = entries.len();
    let scheduler = Scheduler::start(entries, on_tick).await?;
    info!(listen = %addr, schedules = count, store = %shared.app.store.location(), "guardian service started");

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
        let grace = shared.app.config.service.shutdown_timeout();
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
    let _ = http.await;
    info!("guardian service stopped");
    Ok(())
}

/// Every schedule in the config (validated at load).
fn entries(config: &Config) -> Vec<schedule::Entry> {
    let mut out = Vec::new();
    for db in &config.databases {
        for (kind, expr) in [(JobKind::Backup, &db.backup), (JobKind::Drill, &db.drill)] {
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

/// One firing of a schedule: skip if busy, wait out the jitter, take the database, run, report.
async fn on_tick(s: Arc<Shared>, tick: Tick) {
    if s.stop.is_cancelled() {
        return;
    }
    let Some(locks) = s.locks.get(&tick.db) else {
        error!(db = %tick.db, "tick for a database that is not configured");
        return;
    };
    let (own, job) = match tick.kind {
        JobKind::Backup => (&locks.backup, "backup"),
        JobKind::Drill => (&locks.drill, "drill"),
    };
    let Ok(_own) = own.try_lock() else {
        warn!(db = %tick.db, job, "the previous run is still going; skipping this tick");
        s.metrics.outcome(&tick.db, job, "skipped");
        return;
    };
    if !tick.delay.is_zero() {
        debug!(db = %tick.db, job, delay_ms = tick.delay.as_millis() as u64, "waiting out the jitter");
        tokio::select! {
            () = tokio::time::sleep(tick.delay) => {}
            () = s.stop.cancelled() => return,
        }
    }
    let db = s
        .app
        .config
        .databases
        .iter()
        .find(|d| d.name == tick.db)
        .expect("locks exist only for configured databases");
    let events = {
        let _exclusive = tokio::select! {
            g = locks.exclusive.lock() => g,
            () = s.stop.cancelled() => return,
        };
        // And across processes: a one-shot command or another service may be at it.
        let staging = s.app.config.backup.staging_dir();
        let _flock = match crate::lock::DbLock::acquire(&staging, db, job) {
            Ok(l) => l,
            Err(e) if e.is_busy() => {
                warn!(db = %db.name, job, error = %chain(&e), "skipping this tick");
                s.metrics.outcome(&db.name, job, "skipped");
                return;
            }
            Err(e) => {
                error!(db = %db.name, job, error = %chain(&e), "scheduled {job} failed");
                s.metrics.outcome(&db.name, job, "failed");
                s.notifier
                    .send(&failure_event(tick.kind, &db.name, chain(&e)))
                    .await;
                return;
            }
        };
        s.metrics.running(&db.name, job, true);
        let start_ping = match tick.kind {
            JobKind::Backup => s.notifier.backup_started(&db.name),
            JobKind::Drill => StartPing::default(),
        };
        // Its own task, so that a panic in a job is reported like any failure and never takes
        // the service (or this database's locks) down with it.
        let mut work = {
            let (s, db, kind) = (Arc::clone(&s), db.clone(), tick.kind);
            tokio::spawn(async move {
                match kind {
                    JobKind::Backup => backup_job(&s, &db).await,
                    JobKind::Drill => drill_job(&s, &db).await,
                }
            })
        };
        let done = tokio::select! {
            joined = &mut work => Some(joined),
            () = s.cancel.cancelled() => {
                work.abort();
                None
            }
        };
        s.metrics.running(&db.name, job, false);
        // The outcome ping must not overtake `/start`. (A cancelled backup sends no outcome:
        // the heartbeat service sees a backup that began and never ended, which is the truth.)
        if done.is_some() {
            tokio::select! {
                () = start_ping.done() => {}
                () = s.cancel.cancelled() => return,
            }
        }
        match done {
            Some(Ok(events)) => events,
            Some(Err(e)) => {
                let why = panic_message(e);
                error!(db = %db.name, job, error = %why, "job crashed (a bug in guardian); the service goes on");
                s.metrics.outcome(&db.name, job, "failed");
                vec![failure_event(
                    tick.kind,
                    &db.name,
                    format!("internal error: {why}"),
                )]
            }
            None => {
                warn!(db = %db.name, job, "cancelled by shutdown; an interrupted backup leaves no snapshot");
                s.metrics.outcome(&db.name, job, "cancelled");
                return;
            }
        }
    };
    for event in events {
        tokio::select! {
            () = s.notifier.send(&event) => {}
            () = s.cancel.cancelled() => return,
        }
    }
}

/// The alert for a `kind` job of `db` that failed before it could report for itself.
fn failure_event(kind: JobKind, db: &str, detail: String) -> Event {
    match kind {
        JobKind::Backup => Event::BackupFailed {
            db: db.to_string(),
            error: detail,
        },
        JobKind::Drill => Event::DrillFailed {
            db: db.to_string(),
            snapshot: None,
            detail,
        },
    }
}

/// Back up, then prune. Returns what to notify.
#[instrument(skip_all, fields(db = %db.name, job = "backup"))]
async fn backup_job(s: &Shared, db: &DatabaseConfig) -> Vec<Event> {
    let started = Instant::now();
    let result = backup::run(&s.app.store, db, &s.app.config.backup, &s.app.keys).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut events = Vec::new();
    match result {
        Ok(m) => {
            s.metrics.backup_finished(&db.name, true, seconds);
            info!(outcome = "ok", id = %m.id, seconds = format_args!("{seconds:.2}"), "scheduled backup succeeded");
            events.push(Event::BackupOk {
                db: db.name.clone(),
                id: m.id.to_string(),
                seconds,
                stored_bytes: m.stored_len,
            });
            if db.retention.is_some() {
                // A failed prune is a warning: the backup itself is safe in the store.
                match retention::prune(&s.app.store, db, false).await {
                    Ok(r) => {
                        s.metrics.outcome(&db.name, "prune", "ok");
                        if !r.deleted.is_empty() {
                            info!(deleted = r.deleted.len(), "pruned old snapshots");
                        }
                    }
                    Err(e) => {
                        s.metrics.outcome(&db.name, "prune", "failed");
                        warn!(error = %chain(&e), "prune after the backup failed; the backup itself succeeded");
                        events.push(Event::PruneFailed {
                            db: db.name.clone(),
                            error: chain(&e),
                        });
                    }
                }
            }
        }
        Err(e) => {
            s.metrics.backup_finished(&db.name, false, seconds);
            error!(outcome = "failed", seconds = format_args!("{seconds:.2}"), error = %chain(&e), "scheduled backup failed");
            events.push(Event::BackupFailed {
                db: db.name.clone(),
                error: chain(&e),
            });
        }
    }
    refresh(s, db).await;
    events
}

/// Drill the newest usable snapshot and an older one in rotation. Returns what to notify.
#[instrument(skip_all, fields(db = %db.name, job = "drill"))]
async fn drill_job(s: &Shared, db: &DatabaseConfig) -> Vec<Event> {
    let started = Instant::now();
    let staging = s.app.config.backup.staging_dir();
    let result = drill::run_with_rotation(&s.app.store, db, &staging, &s.app.keys).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut events = Vec::new();
    match result {
        Ok(d) => {
            let mut reports = vec![&d.latest];
            match &d.older {
                Some(Ok(r)) => reports.push(r),
                Some(Err(e)) => {
                    error!(outcome = "failed", error = %chain(e), "the drill of an older snapshot in rotation could not run");
                    events.push(Event::DrillFailed {
                        db: db.name.clone(),
                        snapshot: None,
                        detail: format!("drill of an older snapshot in rotation: {}", chain(e)),
                    });
                }
                None => {}
            }
            // One verdict for the job: a damaged older snapshot fails it like a damaged newest.
            let all_ok = reports.iter().all(|r| r.ok) && !matches!(d.older, Some(Err(_)));
            s.metrics.drill_finished(&db.name, all_ok);
            for r in reports {
                drill_events(db, r, seconds, &mut events);
                if let Err(why) = &r.record {
                    s.metrics.outcome(&db.name, "drill", "failed");
                    error!(snapshot = %r.snapshot, error = %why, "the drill's verdict could not be stored; other guardians will not see it");
                    events.push(Event::DrillFailed {
                        db: db.name.clone(),
                        snapshot: Some(r.snapshot.clone()),
                        detail: why.clone(),
                    });
                }
            }
        }
        Err(e) => {
            s.metrics.outcome(&db.name, "drill", "failed");
            error!(outcome = "failed", seconds = format_args!("{seconds:.2}"), error = %chain(&e), "scheduled drill could not run");
            events.push(Event::DrillFailed {
                db: db.name.clone(),
                snapshot: None,
                detail: chain(&e),
            });
        }
    }
    refresh(s, db).await;
    events
}

/// Log one drill verdict and add its event.
fn drill_events(
    db: &DatabaseConfig,
    r: &drill::DrillReport,
    seconds: f64,
    events: &mut Vec<Event>,
) {
    let which = match r.selected_by {
        drill::Selection::Rotation => "older snapshot in rotation",
        _ => "newest snapshot",
    };
    if r.ok {
        info!(outcome = "ok", snapshot = %r.snapshot, which, seconds = format_args!("{seconds:.2}"), "scheduled drill passed");
        events.push(Event::DrillOk {
            db: db.name.clone(),
            snapshot: r.snapshot.clone(),
            seconds: r.seconds,
        });
    } else {
        error!(outcome = "failed", snapshot = %r.snapshot, which, problems = %r.problems.join("; "), "scheduled drill FAILED: the snapshot is marked failed");
        events.push(Event::DrillFailed {
            db: db.name.clone(),
            snapshot: Some(r.snapshot.clone()),
            detail: r.problems.join("; "),
        });
    }
    for w in &r.warnings {
        warn!(snapshot = %r.snapshot, warning = %w, "drill warning");
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

async fn refresh(s: &Shared, db: &DatabaseConfig) {
    match catalog::load(&s.app.store, &db.name).await {
        Ok(c) => s.metrics.observe_catalog(&c),
        Err(e) => debug!(db = %db.name, error = %chain(&e), "could not refresh snapshot metrics"),
    }
}

/// Futures that complete on the first and on the second SIGINT or SIGTERM (Docker sends
/// SIGTERM, a terminal SIGINT). Install them before anything else runs.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn os_signals() -> Result<(impl Future<Output = ()>, impl Future<Output = ()>)> {
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
