//! Scheduling only: cron strings → tokio-cron-scheduler jobs that hand a [`Tick`] to the
//! service. No business logic lives here: what a tick does (lock, back up, prune, drill) is
//! `service.rs`'s job.
//!
//! tokio-cron-scheduler 0.15 parses with `croner` and *requires* a seconds field, so a standard
//! 5-field string is normalised here by prepending `0` (second 0). Its parser also combines
//! day-of-month and day-of-week with AND, where standard cron uses OR; a string that restricts
//! both would silently mean something else, so [`parse_cron`] refuses it.
//!
//! Time zones: the library turns a job's zone into a fixed UTC offset when the job is created,
//! so after a daylight-saving change its ticks would drift by an hour. The scheduler here
//! re-creates a job whenever its zone's offset has changed (checked every minute).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// What a scheduled job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    Backup,
    /// An incremental snapshot (a full when none is possible; see `incremental`).
    Incremental,
    Drill,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Incremental => "incremental",
            JobKind::Drill => "drill",
        }
    }
}

/// One schedule from the config.
#[derive(Debug, Clone)]
pub struct Entry {
    pub db: String,
    pub kind: JobKind,
    /// The normalised 6-field cron string (seconds first).
    pub cron: String,
    pub tz: Tz,
    pub jitter: Duration,
}

/// One firing of a schedule, handed to the service.
#[derive(Debug, Clone)]
pub struct Tick {
    pub db: String,
    pub kind: JobKind,
    /// Wait this long (the random jitter) before starting.
    pub delay: Duration,
}

/// What the service does with a tick. It must return at once (spawn the work).
pub type OnTick = Arc<dyn Fn(Tick) + Send + Sync>;

/// Check a cron string and return it in the 6-field form the scheduler takes.
///
/// Accepts standard 5-field cron (`min hour dom month dow`), 6 fields with seconds first, and
/// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. The error says what is wrong in
/// words (the caller adds the config key).
pub fn parse_cron(expr: &str) -> std::result::Result<String, String> {
    let trimmed = expr.trim();
    let normalised = match trimmed.to_ascii_lowercase().as_str() {
        "@hourly" => "0 0 * * * *".to_string(),
        "@daily" | "@midnight" => "0 0 0 * * *".to_string(),
        "@weekly" => "0 0 0 * * sun".to_string(),
        "@monthly" => "0 0 0 1 * *".to_string(),
        "@yearly" | "@annually" => "0 0 0 1 1 *".to_string(),
        s if s.starts_with('@') => {
            return Err(format!(
            "unknown cron shortcut {trimmed:?} (use @hourly, @daily, @weekly, @monthly or @yearly)"
        ))
        }
        _ => {
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            match fields.len() {
                5 => format!("0 {}", fields.join(" ")),
                6 => fields.join(" "),
                n => {
                    return Err(format!(
                        "{trimmed:?} has {n} fields; expected 5 (minute hour day-of-month month day-of-week, \
                         e.g. \"0 3 * * *\") or 6 with seconds first"
                    ))
                }
            }
        }
    };
    let cron = parser()
        .parse(&normalised)
        .map_err(|e| format!("{trimmed:?} is not a valid cron expression: {e}"))?;
    let fields: Vec<&str> = normalised.split_whitespace().collect();
    let unrestricted = |f: &str| f == "*" || f == "?";
    if !unrestricted(fields[3]) && !unrestricted(fields[5]) {
        return Err(format!(
            "{trimmed:?} restricts both day-of-month and day-of-week; standard cron would run when either \
             matches but this scheduler needs both to match, so restrict only one of them"
        ));
    }
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(format!("{trimmed:?} never fires (no matching date)"));
    }
    Ok(normalised)
}

/// The parser tokio-cron-scheduler uses, so that what validates here runs there.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

/// When a (validated) cron string next fires after `after`, read in `tz`.
pub fn next_run(expr: &str, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let normalised = parse_cron(expr).ok()?;
    let cron: Cron = parser().parse(&normalised).ok()?;
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The shortest time between two consecutive firings of a (validated) cron string read in
/// `tz`, over its next 1,000 firings or the next year, whichever comes first (enough to meet
/// every pattern of minutes, hours, weekdays and months, and a daylight-saving change).
/// `None` when it fires less than twice in that sample.
pub fn shortest_interval(expr: &str, tz: Tz, from: DateTime<Utc>) -> Option<Duration> {
    let normalised = parse_cron(expr).ok()?;
    let cron: Cron = parser().parse(&normalised).ok()?;
    let end = from + chrono::Duration::days(366);
    let mut shortest: Option<Duration> = None;
    let mut prev: Option<DateTime<Tz>> = None;
    for t in cron.iter_after(from.with_timezone(&tz)).take(1000) {
        if t.with_timezone(&Utc) > end {
            break;
        }
        if let Some(p) = prev {
            if let Ok(gap) = (t - p).to_std() {
                shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
            }
        }
        prev = Some(t);
    }
    shortest
}

/// A random delay in `[0, jitter]`.
pub fn jitter_delay(jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    let millis = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    let r = getrandom::u64().unwrap_or(0);
    Duration::from_millis(r % millis.saturating_add(1))
}

/// The current UTC offset of `tz`, in seconds.
fn offset_now(tz: Tz) -> i32 {
    tz.offset_from_utc_datetime(&Utc::now().naive_utc())
        .fix()
        .local_minus_utc()
}

/// The running scheduler.
pub struct Scheduler {
    inner: JobScheduler,
    rearm: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    /// Create one job per entry and start ticking.
    pub async fn start(entries: Vec<Entry>, on_tick: OnTick) -> Result<Scheduler> {
        let sched = JobScheduler::new().await.map_err(sched_error)?;
        let mut jobs = Vec::with_capacity(entries.len());
        for entry in entries {
            let id = add(&sched, &entry, &on_tick).await?;
            let next = next_run(&entry.cron, entry.tz, Utc::now());
            info!(
                db = %entry.db,
                job = entry.kind.as_str(),
                cron = %entry.cron,
                timezone = %entry.tz,
                next = %next.map_or("never".into(), crate::human::rfc3339),
                "scheduled"
            );
            jobs.push((id, offset_now(entry.tz), entry));
        }
        sched.start().await.map_err(sched_error)?;
        let rearm = tokio::spawn(rearm_on_offset_change(sched.clone(), jobs, on_tick));
        Ok(Scheduler {
            inner: sched,
            rearm,
        })
    }

    /// Stop ticking. Jobs already handed to the service are not touched.
    pub async fn stop(mut self) {
        self.rearm.abort();
        if let Err(e) = self.inner.shutdown().await {
            warn!(error = %e, "scheduler did not stop cleanly");
        }
    }
}

async fn add(sched: &JobScheduler, entry: &Entry, on_tick: &OnTick) -> Result<uuid::Uuid> {
    let on_tick = Arc::clone(on_tick);
    let (db, kind, jitter) = (entry.db.clone(), entry.kind, entry.jitter);
    let job = Job::new_tz(entry.cron.as_str(), entry.tz, move |_id, _sched| {
        on_tick(Tick {
            db: db.clone(),
            kind,
            delay: jitter_delay(jitter),
        });
    })
    .map_err(|e| Error::Config(format!("schedule {:?} of {}: {e}", entry.cron, entry.db)))?;
    sched.add(job).await.map_err(sched_error)
}

/// Re-create jobs whose zone changed its UTC offset (daylight saving), see the module doc.
async fn rearm_on_offset_change(
    sched: JobScheduler,
    mut jobs: Vec<(uuid::Uuid, i32, Entry)>,
    on_tick: OnTick,
) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for (id, offset, entry) in &mut jobs {
            let now = offset_now(entry.tz);
            if now == *offset {
                continue;
            }
            debug!(db = %entry.db, job = entry.kind.as_str(), "time zone offset changed; re-creating job");
            if let Err(e) = sched.remove(id).await {
                warn!(db = %entry.db, error = %e, "could not remove job for re-creation");
                continue;
            }
            match add(&sched, entry, &on_tick).await {
                Ok(new_id) => {
                    *id = new_id;
                    *offset = now;
                    info!(db = %entry.db, job = entry.kind.as_str(), timezone = %entry.tz, "job re-created after a UTC offset change");
                }
                Err(e) => {
                    warn!(db = %entry.db, error = %crate::error::chain(&e), "could not re-create job")
                }
            }
        }
    }
}

fn sched_error(e: tokio_cron_scheduler::JobSchedulerError) -> Error {
    Error::Config(format!("start scheduler: {e}"))
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "backup" => Ok(JobKind::Backup),
            "incremental" => Ok(JobKind::Incremental),
            "drill" => Ok(JobKind::Drill),
            _ => Err(format!("unknown job {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_cron_gets_second_zero() {
        assert_eq!(parse_cron("0 3 * * *").unwrap(), "0 0 3 * * *");
        assert_eq!(parse_cron(" 30 4 * * sun ").unwrap(), "0 30 4 * * sun");
        assert_eq!(parse_cron("*/1 * * * * *").unwrap(), "*/1 * * * * *");
        assert_eq!(parse_cron("@daily").unwrap(), "0 0 0 * * *");
    }

    #[test]
    fn bad_cron_is_refused_with_a_reason() {
        for (bad, why) in [
            ("", "0 fields"),
            ("0 3 * *", "4 fields"),
            ("0 0 3 * * * 2030", "7 fields"),
            ("61 3 * * *", "not a valid"),
            ("0 3 * * funday", "not a valid"),
            ("0 0 1 * mon", "both day-of-month and day-of-week"),
            ("0 0 30 2 *", "never fires"),
            ("@sometimes", "unknown cron shortcut"),
        ] {
            let e = parse_cron(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn next_run_honours_the_time_zone() {
        let after: DateTime<Utc> = "2026-07-01T00:00:00Z".parse().unwrap();
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // 03:00 in Paris in July (UTC+2) is 01:00 UTC.
        assert_eq!(
            next_run("0 3 * * *", paris, after).unwrap(),
            "2026-07-01T01:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // And in January (UTC+1) it is 02:00 UTC: the offset follows daylight saving.
        let winter: DateTime<Utc> = "2026-01-10T00:00:00Z".parse().unwrap();
        assert_eq!(
            next_run("0 3 * * *", paris, winter).unwrap(),
            "2026-01-10T02:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            next_run("0 3 * * *", chrono_tz::UTC, after).unwrap(),
            "2026-07-01T03:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        assert_eq!(jitter_delay(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(jitter_delay(Duration::from_secs(2)) <= Duration::from_secs(2));
        }
    }
}
