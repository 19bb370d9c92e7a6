//! The service's numbers, and the tiny HTTP listener that serves them: `/metrics` (Prometheus
//! text format), `/healthz` (liveness), and the status page (`/` and `/status.json`, rendered by
//! `statuspage`).
//!
//! A `*_last_success_*` value changes only when something succeeded: a failure never resets
//! it, so `time() - guardian_backup_last_success_timestamp_seconds > 26h` stays a true alarm.
//! At start-up they are seeded from the store (the newest snapshot, the newest passed drill),
//! so a restart does not look like staleness, nor hide it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::catalog::Catalog;
use crate::manifest::SnapshotKind;
use crate::schedule::JobKind;

/// The jobs whose failure counters start at zero (so `increase()` works from the first scrape).
const JOBS: [&str; 4] = ["backup", "drill", "prune", "sync"];

/// Per-database values.
#[derive(Debug, Default, Clone)]
struct DbValues {
    backup_last_success: Option<f64>,
    /// Per kind: when the last full and the last incremental snapshot succeeded.
    full_last_success: Option<f64>,
    incremental_last_success: Option<f64>,
    backup_last_duration: Option<f64>,
    drill_last_success: Option<f64>,
    /// When the last drill verdict was reached, and whether it passed.
    drill_last: Option<(f64, bool)>,
    snapshots: Option<u64>,
    snapshot_bytes: Option<u64>,
    /// `(job, outcome)` → count.
    runs: BTreeMap<(&'static str, &'static str), u64>,
    failures: BTreeMap<&'static str, u64>,
    running: BTreeMap<&'static str, bool>,
    /// What the status page shows (catalog, failures, the last proven restore time).
    page: crate::statuspage::DbInput,
}

/// All metrics of one service; shared by the jobs and the listener.
#[derive(Debug, Default)]
pub struct Metrics {
    dbs: Mutex<BTreeMap<String, DbValues>>,
}

fn secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl Metrics {
    /// Metrics for these databases, every counter at zero (so `rate()` and `increase()` work
    /// from the first scrape).
    pub fn new<'a>(dbs: impl IntoIterator<Item = &'a str>) -> Metrics {
        let mut map = BTreeMap::new();
        for db in dbs {
            let mut v = DbValues::default();
            for job in JOBS {
                v.failures.insert(job, 0);
            }
            map.insert(db.to_string(), v);
        }
        Metrics {
            dbs: Mutex::new(map),
        }
    }

    /// Give the status page each database's config and the store's location.
    pub fn describe(&self, dbs: &[crate::config::DatabaseConfig], store: &str) {
        for db in dbs {
            self.with(&db.name, |v| {
                v.page.config = Some(db.clone());
                v.page.store = store.to_string();
            });
        }
    }

    /// The last recorded backup attempt (from any process), for the status page's health.
    pub fn observe_attempt(&self, db: &str, attempt: Option<crate::outcome::Attempt>) {
        self.with(db, |v| v.page.attempt = attempt);
    }

    /// A job failed with this error line (shown, escaped, on the status page).
    pub fn failure(&self, db: &str, job: &str, error: String) {
        let now = Utc::now();
        self.with(db, |v| {
            let f = &mut v.page.failures;
            if f.len() >= crate::statuspage::MAX_FAILURES {
                f.remove(0);
            }
            f.push(crate::statuspage::Failure {
                at: crate::human::rfc3339(now),
                at_time: now,
                job: job.to_string(),
                error,
            });
        });
    }

    /// A drill passed; its restore took `seconds` (the proven restore time).
    pub fn drill_passed(&self, db: &str, seconds: f64) {
        self.drill_passed_at(db, Utc::now(), seconds);
    }

    /// A drill passed at `at`, its restore taking `seconds`; an older one never replaces a
    /// newer one.
    pub fn drill_passed_at(&self, db: &str, at: DateTime<Utc>, seconds: f64) {
        self.with(db, |v| {
            if v.page.last_passed_drill.is_none_or(|(t, _)| at >= t) {
                v.page.last_passed_drill = Some((at, seconds));
            }
        });
    }

    /// Each store of `db` as `status` sees it (the `guardian_store_*` series, the status page).
    pub fn observe_stores(&self, db: &str, stores: Vec<crate::status::StoreStatus>) {
        self.with(db, |v| v.page.stores = stores);
    }

    /// The status page's data.
    pub fn status_data(&self) -> crate::statuspage::StatusData {
        let inputs: Vec<_> = self
            .dbs
            .lock()
            .expect("metrics lock is never poisoned")
            .iter()
            .map(|(db, v)| (db.clone(), v.page.clone()))
            .collect();
        crate::statuspage::data(&inputs, Utc::now())
    }

    fn with(&self, db: &str, f: impl FnOnce(&mut DbValues)) {
        let mut map = self.dbs.lock().expect("metrics lock is never poisoned");
        f(map.entry(db.to_string()).or_default());
    }

    /// Take counts, sizes and the newest successes from what the store holds.
    pub fn observe_catalog(&self, catalog: &Catalog) {
        let usable: Vec<_> = catalog.usable().collect();
        let newest = usable.first().map(|s| secs(s.created_at));
        let count = usable.len() as u64;
        let bytes = catalog.stored_bytes;
        let newest_of = |kind| catalog.newest_usable(kind).map(|s| secs(s.created_at));
        let (newest_full, newest_incremental) = (
            newest_of(SnapshotKind::Full),
            newest_of(SnapshotKind::Incremental),
        );
        let drills = catalog
            .snapshots
            .iter()
            .filter_map(|s| s.last_drill.as_ref());
        // A drill run records all its verdicts under one time (see `drill::run_with_rotation`):
        // it passed only if every one of them did.
        let newest_drill = drills
            .clone()
            .max_by_key(|d| (d.at, !d.ok))
            .map(|d| (secs(d.at), d.ok));
        let failed_runs: Vec<DateTime<Utc>> =
            drills.clone().filter(|d| !d.ok).map(|d| d.at).collect();
        let newest_ok = drills
            .filter(|d| d.ok && !failed_runs.contains(&d.at))
            .map(|d| secs(d.at))
            .reduce(f64::max);
        self.with(&catalog.db, |v| {
            v.page.catalog = Some(catalog.clone());
            v.snapshots = Some(count);
            v.snapshot_bytes = Some(bytes);
            v.backup_last_success = max(v.backup_last_success, newest);
            v.full_last_success = max(v.full_last_success, newest_full);
            v.incremental_last_success = max(v.incremental_last_success, newest_incremental);
            v.drill_last_success = max(v.drill_last_success, newest_ok);
            if let Some(d) = newest_drill {
                if v.drill_last.is_none_or(|(at, _)| d.0 > at) {
                    v.drill_last = Some(d);
                }
            }
        });
    }

    /// A backup ended (`kind`: what it published, when it succeeded).
    pub fn backup_finished(&self, db: &str, ok: bool, seconds: f64, kind: Option<SnapshotKind>) {
        let now = secs(Utc::now());
        self.with(db, |v| {
            v.backup_last_duration = Some(seconds);
            if ok {
                v.backup_last_success = max(v.backup_last_success, Some(now));
                match kind {
                    Some(SnapshotKind::Full) => {
                        v.full_last_success = max(v.full_last_success, Some(now))
                    }
                    Some(SnapshotKind::Incremental) => {
                        v.incremental_last_success = max(v.incremental_last_success, Some(now))
                    }
                    None => {}
                }
            }
        });
        self.outcome(
            db,
            JobKind::Backup.as_str(),
            if ok { "ok" } else { "failed" },
        );
    }

    /// A drill reached a verdict.
    pub fn drill_finished(&self, db: &str, ok: bool) {
        let now = secs(Utc::now());
        self.with(db, |v| {
            v.drill_last = Some((now, ok));
            if ok {
                v.drill_last_success = max(v.drill_last_success, Some(now));
            }
        });
        self.outcome(
            db,
            JobKind::Drill.as_str(),
            if ok { "ok" } else { "failed" },
        );
    }

    /// Count a run of `job` (`backup`, `drill`, `prune`) with `outcome` (`ok`, `failed`,
    /// `skipped`, `cancelled`); `failed` also counts in `guardian_failures_total`.
    pub fn outcome(&self, db: &str, job: &'static str, outcome: &'static str) {
        self.with(db, |v| {
            *v.runs.entry((job, outcome)).or_default() += 1;
            if outcome == "failed" {
                *v.failures.entry(job).or_default() += 1;
            }
        });
    }

    /// Mark `job` of `db` as running or not.
    pub fn running(&self, db: &str, job: &'static str, on: bool) {
        self.with(db, |v| {
            v.running.insert(job, on);
        });
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let map = self
            .dbs
            .lock()
            .expect("metrics lock is never poisoned")
            .clone();
        let mut out = String::new();
        family(
            &mut out,
            ("guardian_build_info", "gauge"),
            "Always 1; the version label says which guardian runs.",
            vec![(format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1.0)],
        );
        for (name, help, value) in gauges() {
            let rows = map
                .iter()
                .filter_map(|(db, v)| value(v).map(|x| (format!("db=\"{db}\""), x)))
                .collect();
            family(&mut out, (name, "gauge"), help, rows);
        }
        for (name, help, value) in store_gauges() {
            let rows = map
                .iter()
                .flat_map(|(db, v)| {
                    v.page.stores.iter().filter_map(move |st| {
                        value(st).map(|x| (format!("db=\"{db}\",store=\"{}\"", st.name), x))
                    })
                })
                .collect();
            family(&mut out, (name, "gauge"), help, rows);
        }
        family(
            &mut out,
            ("guardian_failures_total", "counter"),
            "Failed runs per job (backup, drill, prune).",
            per_job(&map, |v| {
                v.failures
                    .iter()
                    .map(|(job, n)| (format!("job=\"{job}\""), *n as f64))
                    .collect()
            }),
        );
        family(
            &mut out,
            ("guardian_job_runs_total", "counter"),
            "Scheduled runs by outcome (ok, failed, skipped, cancelled).",
            per_job(&map, |v| {
                v.runs
                    .iter()
                    .map(|((job, outcome), n)| {
                        (format!("job=\"{job}\",outcome=\"{outcome}\""), *n as f64)
                    })
                    .collect()
            }),
        );
        family(
            &mut out,
            ("guardian_job_running", "gauge"),
            "1 while a job runs.",
            per_job(&map, |v| {
                v.running
                    .iter()
                    .map(|(job, on)| (format!("job=\"{job}\""), f64::from(u8::from(*on))))
                    .collect()
            }),
        );
        out
    }
}

/// A per-database gauge: its name, its help, and its value (absent when unknown).
type Gauge = (&'static str, &'static str, fn(&DbValues) -> Option<f64>);

/// The per-database gauges, in the order they are rendered.
fn gauges() -> [Gauge; 10] {
    [
        (
            "guardian_backup_last_success_timestamp_seconds",
            "When the last successful backup of either kind finished (Unix time; at start-up, when the newest stored snapshot was taken); only a success moves it. time() minus it is the effective RPO.",
            |v| v.backup_last_success,
        ),
        (
            "guardian_full_backup_last_success_timestamp_seconds",
            "When the last successful full snapshot finished (Unix time; at start-up, the newest stored full).",
            |v| v.full_last_success,
        ),
        (
            "guardian_incremental_backup_last_success_timestamp_seconds",
            "When the last successful incremental snapshot finished (Unix time; at start-up, the newest stored incremental).",
            |v| v.incremental_last_success,
        ),
        (
            "guardian_backup_last_duration_seconds",
            "How long the last backup run took, successful or not.",
            |v| v.backup_last_duration,
        ),
        (
            "guardian_drill_last_success_timestamp_seconds",
            "When a restore drill last passed (Unix time); only a success moves it.",
            |v| v.drill_last_success,
        ),
        (
            "guardian_drill_last_result",
            "Verdict of the newest restore drill: 1 passed, 0 failed (absent: never drilled).",
            |v| v.drill_last.map(|(_, ok)| f64::from(u8::from(ok))),
        ),
        (
            "guardian_drill_last_timestamp_seconds",
            "When the newest restore drill reached its verdict (Unix time).",
            |v| v.drill_last.map(|(at, _)| at),
        ),
        (
            "guardian_drill_restore_seconds",
            "How long the restore of the last passed drill took (download, decompression, both SHA-256s, integrity_check): the proven recovery time.",
            |v| v.page.last_passed_drill.map(|(_, s)| s),
        ),
        (
            "guardian_snapshots",
            "Usable (not failed) snapshots in the store.",
            |v| v.snapshots.map(|n| n as f64),
        ),
        (
            "guardian_snapshot_bytes",
            "Stored bytes of the usable snapshots.",
            |v| v.snapshot_bytes.map(|n| n as f64),
        ),
    ]
}

/// A per-store gauge (labels `db` and `store`).
type StoreGauge = (
    &'static str,
    &'static str,
    fn(&crate::status::StoreStatus) -> Option<f64>,
);

/// The per-store gauges, in the order they are rendered.
fn store_gauges() -> [StoreGauge; 5] {
    [
        (
            "guardian_store_up",
            "1 when the store could be listed at the last look, 0 when not.",
            |s| Some(f64::from(u8::from(s.snapshot_count.is_some()))),
        ),
        (
            "guardian_store_snapshots",
            "Usable (not failed) snapshots in this store.",
            |s| s.snapshot_count.map(|n| n as f64),
        ),
        (
            "guardian_store_snapshot_bytes",
            "Stored bytes of the usable snapshots in this store.",
            |s| s.stored_bytes.map(|n| n as f64),
        ),
        (
            "guardian_store_missing_snapshots",
            "Usable snapshots another store of the database holds and this one lacks (guardian sync copies them).",
            |s| s.snapshot_count.map(|_| s.missing.len() as f64),
        ),
        (
            "guardian_store_last_snapshot_timestamp_seconds",
            "When the newest usable snapshot in this store was taken (Unix time).",
            |s| {
                s.last_snapshot.as_ref().and_then(|l| {
                    chrono::DateTime::parse_from_rfc3339(&l.created_at)
                        .ok()
                        .map(|t| t.timestamp_millis() as f64 / 1000.0)
                })
            },
        ),
    ]
}

/// Rows of every database: its `db` label, then the labels and values `rows` gives.
fn per_job(
    map: &BTreeMap<String, DbValues>,
    rows: impl Fn(&DbValues) -> Vec<(String, f64)>,
) -> Vec<(String, f64)> {
    map.iter()
        .flat_map(|(db, v)| {
            rows(v)
                .into_iter()
                .map(move |(labels, x)| (format!("db=\"{db}\",{labels}"), x))
        })
        .collect()
}

/// Write one metric family: `(name, type)`, its help, and its rows of labels and value.
fn family(out: &mut String, (name, kind): (&str, &str), help: &str, rows: Vec<(String, f64)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Serve `/healthz` and `/metrics` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let metrics = Arc::clone(&metrics);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%peer, error = %e, "metrics connection ended with an error") },
                () = stop.cancelled() => {}
            }
        });
    }
}

fn respond(
    req: &hyper::Request<hyper::body::Incoming>,
    metrics: &Metrics,
) -> hyper::Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&hyper::Method::GET, "/") => (
            200,
            "text/html; charset=utf-8",
            crate::statuspage::html(&metrics.status_data()),
        ),
        (&hyper::Method::GET, "/status.json") => (
            200,
            "application/json",
            serde_json::to_string_pretty(&metrics.status_data()).expect("status data serializes")
                + "\n",
        ),
        (&hyper::Method::GET, "/healthz") => (200, "text/plain; charset=utf-8", "ok\n".to_string()),
        (&hyper::Method::GET, _) => (
            404,
            "text/plain; charset=utf-8",
            "not found; try /, /status.json, /metrics or /healthz\n".into(),
        ),
        _ => (
            405,
            "text/plain; charset=utf-8",
            "only GET is supported\n".into(),
        ),
    };
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{DrillMark, SnapshotEntry, SnapshotStatus};
    use crate::manifest::{SnapshotId, SnapshotKey};

    fn snapshot(created: &str, drill: Option<(&str, bool)>) -> SnapshotEntry {
        let created_at: DateTime<Utc> = created.parse().unwrap();
        let key = SnapshotKey {
            db: "market".into(),
            id: SnapshotId::new(created_at),
        };
        let last_drill = drill.map(|(at, ok)| {
            let at: DateTime<Utc> = at.parse().unwrap();
            DrillMark {
                at,
                ok,
                key: key.drill(at, ok),
            }
        });
        SnapshotEntry {
            status: match &last_drill {
                Some(d) if !d.ok => SnapshotStatus::Failed,
                Some(_) => SnapshotStatus::Verified,
                None => SnapshotStatus::Unverified,
            },
            key,
            manifest: None,
            created_at,
            data_size: Some(10),
            last_drill,
            problem: None,
            skewed: false,
            proof: None,
            ignored_records: Vec::new(),
            marked_at: None,
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_drill_run_fails_as_a_whole_when_its_older_snapshot_fails() {
        // One run at 04:30 passed the newest and failed the older one in rotation; the run
        // before, at 04:00, passed.
        let catalog = Catalog {
            db: "market".into(),
            snapshots: vec![
                snapshot("2026-11-24T03:00:00Z", Some(("2026-11-24T04:30:00Z", true))),
                snapshot(
                    "2026-11-20T03:00:00Z",
                    Some(("2026-11-24T04:30:00Z", false)),
                ),
                snapshot("2026-11-10T03:00:00Z", Some(("2026-11-24T04:00:00Z", true))),
            ],
            orphans: Vec::new(),
            stored_bytes: 30,
        };
        let m = Metrics::new(["market"]);
        m.observe_catalog(&catalog);
        let text = m.render();
        let run_0430 = secs("2026-11-24T04:30:00Z".parse().unwrap());
        let run_0400 = secs("2026-11-24T04:00:00Z".parse().unwrap());
        assert_eq!(
            value(&text, "guardian_drill_last_result{db=\"market\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "guardian_drill_last_timestamp_seconds{db=\"market\"}"
            ),
            Some(run_0430)
        );
        assert_eq!(
            value(
                &text,
                "guardian_drill_last_success_timestamp_seconds{db=\"market\"}"
            ),
            Some(run_0400)
        );
    }
}
