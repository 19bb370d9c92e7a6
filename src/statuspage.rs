//! The status page of `guardian run`: `/` (one server-rendered HTML page: no external asset, no
//! script) and `/status.json` (the same data for other tools).
//!
//! Per database: health (as `guardian status` judges it), the last backup and drill with their
//! ages, the effective RPO (the age of the newest usable snapshot: what a restore now would
//! lose), the last proven restore time (the restore a passed drill measured: download,
//! decompression, both SHA-256s, `integrity_check`; see `rto`), store usage per store, and a
//! 14-day timeline (inline SVG) of snapshots, drills and failures. Every snapshot has a `kind`
//! (`full` or `incremental`), and stores are a list (one per `[[stores]]` table).
//! "—" stands for nothing known. Every string is HTML-escaped: error texts come from stores,
//! SQLite and the OS, and are never trusted.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::catalog::{Catalog, SnapshotStatus};
use crate::config::DatabaseConfig;
use crate::human::{human_age, human_bytes, rfc3339};

/// How far back the timeline reaches.
pub const TIMELINE_DAYS: i64 = 14;

/// At most this many failures are remembered per database (the newest).
pub const MAX_FAILURES: usize = 200;

/// A job failure the service saw (failures leave nothing in the store, so they live in memory).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub at: String,
    #[serde(skip)]
    pub at_time: DateTime<Utc>,
    /// `backup`, `drill`, `prune`.
    pub job: String,
    /// The error line (untrusted text).
    pub error: String,
}

/// What the service knows about one database, kept by `metrics::Metrics`.
#[derive(Debug, Clone, Default)]
pub struct DbInput {
    pub config: Option<DatabaseConfig>,
    /// The store's location (`/var/backups/guardian`, `s3://bucket/prefix`).
    pub store: String,
    /// The newest catalog read from the store.
    pub catalog: Option<Catalog>,
    /// The last recorded backup attempt (`outcome::last`), as `guardian status` uses it.
    pub attempt: Option<crate::outcome::Attempt>,
    /// The newest failures first is not required: they are sorted when rendered.
    pub failures: Vec<Failure>,
    /// When the last passed drill ran and how many seconds it took (restore and every check).
    pub last_passed_drill: Option<(DateTime<Utc>, f64)>,
    /// Each store of the database as `status` sees it (empty until the stores were read).
    pub stores: Vec<crate::status::StoreStatus>,
}

/// `/status.json` (fields are only ever added).
#[derive(Debug, Serialize)]
pub struct StatusData {
    pub generated_at: String,
    pub guardian_version: &'static str,
    pub timeline_days: i64,
    pub databases: Vec<DbPage>,
}

#[derive(Debug, Serialize)]
pub struct DbPage {
    pub db: String,
    pub path: Option<String>,
    /// `ok`, `unhealthy`, or `unknown` (the store has not been read yet).
    pub health: &'static str,
    pub problems: Vec<String>,
    pub last_backup: Option<Event>,
    /// The newest usable incremental snapshot (null when there is none).
    pub last_incremental: Option<Event>,
    pub last_drill: Option<Event>,
    /// The age of the newest usable snapshot, in seconds.
    pub effective_rpo_seconds: Option<i64>,
    /// How long the last passed drill (a full restore and its checks) took.
    pub last_proven_restore_seconds: Option<f64>,
    pub last_proven_restore_at: Option<String>,
    pub stores: Vec<StoreUsage>,
    pub timeline: Vec<TimelineItem>,
    pub last_failure: Option<Failure>,
}

#[derive(Debug, Serialize)]
pub struct Event {
    pub at: String,
    pub age_seconds: i64,
    pub ok: bool,
    /// The snapshot it is about.
    pub snapshot: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StoreUsage {
    /// The store's name (`primary` for a config with one `[storage]`).
    pub name: String,
    pub location: String,
    pub snapshots: usize,
    pub stored_bytes: u64,
    /// False when the store could not be read at the last look (its counts are then 0).
    pub up: bool,
    /// Usable snapshots another store holds and this one lacks (`guardian sync` copies them).
    pub missing: usize,
}

#[derive(Debug, Serialize)]
pub struct TimelineItem {
    pub at: String,
    /// `snapshot`, `drill` or `failure`.
    pub what: &'static str,
    /// For snapshots: `full` or `incremental`.
    pub kind: Option<&'static str>,
    /// For snapshots: `unverified`, `verified`, `failed`; for drills and failures: `passed`,
    /// `failed`.
    pub status: &'static str,
    pub detail: String,
    #[serde(skip)]
    pub time: DateTime<Utc>,
}

/// Build the page data from what the service knows.
pub fn data(inputs: &[(String, DbInput)], now: DateTime<Utc>) -> StatusData {
    StatusData {
        generated_at: rfc3339(now),
        guardian_version: env!("CARGO_PKG_VERSION"),
        timeline_days: TIMELINE_DAYS,
        databases: inputs.iter().map(|(n, i)| db_page(n, i, now)).collect(),
    }
}

fn event(at: DateTime<Utc>, ok: bool, snapshot: Option<String>, now: DateTime<Utc>) -> Event {
    Event {
        at: rfc3339(at),
        age_seconds: (now - at).num_seconds(),
        ok,
        snapshot,
    }
}

fn db_page(name: &str, input: &DbInput, now: DateTime<Utc>) -> DbPage {
    let mut failures = input.failures.clone();
    failures.sort_by_key(|f| std::cmp::Reverse(f.at_time));
    let mut page = DbPage {
        db: name.to_string(),
        path: input.config.as_ref().map(|c| c.path.display().to_string()),
        health: "unknown",
        problems: Vec::new(),
        last_backup: None,
        last_incremental: None,
        last_drill: None,
        effective_rpo_seconds: None,
        last_proven_restore_seconds: input.last_passed_drill.map(|(_, s)| s),
        last_proven_restore_at: input.last_passed_drill.map(|(t, _)| rfc3339(t)),
        stores: Vec::new(),
        timeline: Vec::new(),
        last_failure: failures.first().cloned(),
    };
    let since = now - Duration::days(TIMELINE_DAYS);
    if let (Some(catalog), Some(config)) = (&input.catalog, &input.config) {
        let s =
            crate::status::summarize(config, catalog, input.attempt.as_ref(), input.store.clone());
        page.health = if s.healthy { "ok" } else { "unhealthy" };
        page.problems = s.problems;
        let newest = catalog.snapshots.iter().max_by_key(|s| s.created_at);
        page.last_backup = newest.map(|s| {
            event(
                s.created_at,
                s.status != SnapshotStatus::Failed,
                Some(s.key.id.to_string()),
                now,
            )
        });
        page.last_incremental = catalog
            .newest_usable(crate::manifest::SnapshotKind::Incremental)
            .map(|s| event(s.created_at, true, Some(s.key.id.to_string()), now));
        page.effective_rpo_seconds = catalog
            .usable()
            .map(|s| s.created_at)
            .max()
            .map(|t| (now - t).num_seconds());
        page.last_drill = catalog
            .snapshots
            .iter()
            .filter_map(|s| s.last_drill.as_ref().map(|d| (s, d)))
            .max_by_key(|(s, d)| (d.at, !d.ok, s.created_at))
            .map(|(s, d)| event(d.at, d.ok, Some(s.key.id.to_string()), now));
        if input.stores.is_empty() {
            page.stores.push(StoreUsage {
                name: crate::config::DEFAULT_STORE_NAME.into(),
                location: input.store.clone(),
                snapshots: s.snapshot_count,
                stored_bytes: s.stored_bytes,
                up: true,
                missing: 0,
            });
        }
        for st in &input.stores {
            page.stores.push(StoreUsage {
                name: st.name.clone(),
                location: st.location.clone(),
                snapshots: st.snapshot_count.unwrap_or(0),
                stored_bytes: st.stored_bytes.unwrap_or(0),
                up: st.snapshot_count.is_some(),
                missing: st.missing.len(),
            });
            page.problems.extend(st.problems.iter().cloned());
        }
        if !page.problems.is_empty() {
            page.health = "unhealthy";
        }
        for snap in catalog.snapshots.iter().filter(|s| s.created_at >= since) {
            page.timeline.push(TimelineItem {
                at: rfc3339(snap.created_at),
                what: "snapshot",
                kind: snap.manifest.as_ref().map(|m| m.kind().as_str()),
                status: snap.status.as_str(),
                detail: format!(
                    "{}snapshot {} ({}){}",
                    snap.manifest
                        .as_ref()
                        .map_or(String::new(), |m| format!("{} ", m.kind().as_str())),
                    snap.key.id,
                    snap.manifest
                        .as_ref()
                        .map_or("size unknown".into(), |m| human_bytes(m.own_stored_len())),
                    snap.problem
                        .as_ref()
                        .map(|p| format!(": {p}"))
                        .unwrap_or_default()
                ),
                time: snap.created_at,
            });
            if let Some(d) = snap.last_drill.as_ref().filter(|d| d.at >= since) {
                page.timeline.push(TimelineItem {
                    at: rfc3339(d.at),
                    what: "drill",
                    kind: None,
                    status: if d.ok { "passed" } else { "failed" },
                    detail: format!(
                        "drill of {}: {}",
                        snap.key.id,
                        if d.ok { "passed" } else { "FAILED" }
                    ),
                    time: d.at,
                });
            }
        }
    } else if let Some(config) = &input.config {
        page.problems
            .push(format!("the store {} has not been read yet", input.store));
        let _ = config;
    }
    for f in failures.iter().filter(|f| f.at_time >= since) {
        page.timeline.push(TimelineItem {
            at: f.at.clone(),
            what: "failure",
            kind: None,
            status: "failed",
            detail: format!("{} failed: {}", f.job, f.error),
            time: f.at_time,
        });
    }
    page.timeline.sort_by_key(|t| t.time);
    page
}

/// Escape text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const DASH: &str = "—";

fn age(e: &Option<Event>) -> String {
    e.as_ref().map_or(DASH.into(), |e| {
        format!(
            "{} ago <span class=\"dim\">{}</span>",
            human_age(e.age_seconds),
            esc(&e.at)
        )
    })
}

/// The page.
pub fn html(d: &StatusData) -> String {
    let mut o = String::new();
    let healthy = d.databases.iter().all(|db| db.health == "ok");
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"60\">\
         <title>{} guardian</title><style>{CSS}</style></head><body>\
         <header><h1>guardian</h1><span class=\"badge {}\">{}</span>\
         <span class=\"dim\">generated {} · v{} · refreshes every minute · <a href=\"status.json\">status.json</a> · <a href=\"metrics\">metrics</a></span></header>",
        if healthy { "✔" } else { "✘" },
        if healthy { "ok" } else { "bad" },
        if healthy {
            "all databases healthy"
        } else {
            "attention needed"
        },
        esc(&d.generated_at),
        esc(d.guardian_version),
    );
    if d.databases.is_empty() {
        o.push_str("<p>No database is configured.</p>");
    }
    for db in &d.databases {
        db_section(&mut o, db, &d.generated_at);
    }
    o.push_str("</body></html>\n");
    o
}

/// One database's section: name and health, problems, the cells, the timeline, the last failure.
fn db_section(o: &mut String, db: &DbPage, generated_at: &str) {
    let (cls, label) = match db.health {
        "ok" => ("ok", "healthy"),
        "unhealthy" => ("bad", "unhealthy"),
        _ => ("unknown", "unknown"),
    };
    let _ = write!(
        o,
        "<section><h2>{}<span class=\"badge {cls}\">{label}</span></h2>",
        esc(&db.db)
    );
    if let Some(p) = &db.path {
        let _ = write!(o, "<div class=\"dim\">{}</div>", esc(p));
    }
    if !db.problems.is_empty() {
        o.push_str("<ul class=\"problems\">");
        for p in &db.problems {
            let _ = write!(o, "<li>{}</li>", esc(p));
        }
        o.push_str("</ul>");
    }
    o.push_str("<div class=\"grid\">");
    for (title, value, hint) in cells(db) {
        let _ = write!(
            o,
            "<div class=\"cell\"><div class=\"k\">{title}</div><div class=\"v\">{value}</div><div class=\"hint\">{hint}</div></div>"
        );
    }
    o.push_str("</div>");
    timeline(o, db, generated_at);
    if let Some(f) = &db.last_failure {
        let _ = write!(
            o,
            "<p class=\"failure\"><b>Last failure</b> {} ({}): <code>{}</code></p>",
            esc(&f.at),
            esc(&f.job),
            esc(&f.error)
        );
    }
    o.push_str("</section>");
}

/// The cells of a database's grid: title, value (HTML, escaped), hint.
fn cells(db: &DbPage) -> [(&'static str, String, &'static str); 6] {
    let drill = match &db.last_drill {
        Some(e) => format!(
            "<span class=\"{}\">{}</span> {}",
            if e.ok { "okt" } else { "badt" },
            if e.ok { "passed" } else { "FAILED" },
            age(&db.last_drill)
        ),
        None => DASH.into(),
    };
    let store_rows: Vec<String> = db
        .stores
        .iter()
        .map(|s| {
            let state = match (s.up, s.missing) {
                (false, _) => " <b>UNREADABLE</b>".to_string(),
                (true, 0) => String::new(),
                (true, n) => format!(" <b>lacks {n}</b> (guardian sync)"),
            };
            format!(
                "{}: {} in {} snapshot{}{state} <span class=\"dim\">{}</span>",
                esc(&s.name),
                human_bytes(s.stored_bytes),
                s.snapshots,
                if s.snapshots == 1 { "" } else { "s" },
                esc(&s.location)
            )
        })
        .collect();
    [
        (
            "Effective RPO",
            db.effective_rpo_seconds.map_or(DASH.into(), human_age),
            "age of the newest usable snapshot",
        ),
        ("Last backup", age(&db.last_backup), "full snapshot"),
        (
            "Last incremental",
            age(&db.last_incremental),
            "not available yet",
        ),
        ("Last drill", drill, "restore into scratch, every check"),
        (
            "Last proven restore",
            db.last_proven_restore_seconds.map_or(DASH.into(), |s| {
                if s < 1.0 {
                    format!("{:.0} ms", (s * 1000.0).max(1.0))
                } else if s < 10.0 {
                    format!("{s:.2} s")
                } else {
                    human_age(s.round() as i64)
                }
            }),
            "how long the last passed drill took",
        ),
        (
            "Store usage",
            if store_rows.is_empty() {
                DASH.into()
            } else {
                store_rows.join("<br>")
            },
            "stored bytes of usable snapshots",
        ),
    ]
}

/// The 14-day timeline: one row each for snapshots, drills and failures; a mark per event,
/// with its detail as a tooltip (`<title>`).
fn timeline(o: &mut String, db: &DbPage, generated_at: &str) {
    let now: DateTime<Utc> = generated_at.parse().unwrap_or_else(|_| Utc::now());
    let (w, left, right) = (1000.0_f64, 90.0_f64, 10.0_f64);
    let span = (TIMELINE_DAYS * 86400) as f64;
    let x = |t: DateTime<Utc>| {
        let from_end = (now - t).num_seconds() as f64;
        left + (w - left - right) * (1.0 - (from_end / span).clamp(0.0, 1.0))
    };
    let rows = [
        ("snapshot", "snapshots", 22.0),
        ("drill", "drills", 50.0),
        ("failure", "failures", 78.0),
    ];
    let _ = write!(
        o,
        "<svg class=\"timeline\" viewBox=\"0 0 {w} 112\" role=\"img\" aria-label=\"last {TIMELINE_DAYS} days\">"
    );
    for (_, label, y) in rows {
        let _ = write!(
            o,
            "<text x=\"0\" y=\"{}\" class=\"lbl\">{label}</text><line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" class=\"axis\"/>",
            y + 4.0,
            w - right
        );
    }
    for day in 0..=TIMELINE_DAYS {
        let t = now - Duration::days(TIMELINE_DAYS - day);
        let xx = x(t);
        let _ = write!(
            o,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"8\" y2=\"90\" class=\"grid\"/>"
        );
        if day % 2 == 0 {
            let _ = write!(
                o,
                "<text x=\"{xx:.1}\" y=\"106\" class=\"tick\">{}</text>",
                if day == TIMELINE_DAYS {
                    "now".to_string()
                } else {
                    t.format("%b %d").to_string()
                }
            );
        }
    }
    for item in &db.timeline {
        let y = rows
            .iter()
            .find(|(w, _, _)| *w == item.what)
            .map_or(22.0, |r| r.2);
        let xx = x(item.time);
        let cls = match item.status {
            "verified" | "passed" => "m-ok",
            "unverified" => "m-unv",
            _ => "m-bad",
        };
        let tip = format!("{} {}", item.at, item.detail);
        let shape = match item.what {
            "drill" => format!(
                "<path d=\"M{xx:.1} {} l6 6 l-6 6 l-6 -6 z\" class=\"{cls}\"/>",
                y - 6.0
            ),
            "failure" => format!(
                "<path d=\"M{} {} l10 10 m0 -10 l-10 10\" class=\"x\"/>",
                xx - 5.0,
                y - 5.0
            ),
            _ => format!("<circle cx=\"{xx:.1}\" cy=\"{y}\" r=\"5\" class=\"{cls}\"/>"),
        };
        let _ = write!(o, "<g><title>{}</title>{shape}</g>", esc(&tip));
    }
    o.push_str("</svg>");
    if db.timeline.is_empty() {
        let _ = write!(
            o,
            "<div class=\"dim\">Nothing in the last {TIMELINE_DAYS} days.</div>"
        );
    }
    o.push_str(
        "<div class=\"legend dim\"><span class=\"dot m-ok\"></span>verified / passed \
         <span class=\"dot m-unv\"></span>unverified <span class=\"dot m-bad\"></span>failed \
         <span class=\"xx\">✕</span> job failure</div>",
    );
}

const CSS: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;padding:20px 28px;background:#f6f7f9;color:#1d232b}\
header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap;margin-bottom:14px}\
h1{font-size:22px;margin:0}h2{font-size:18px;margin:0 0 2px;display:flex;align-items:center;gap:10px}\
a{color:#2459a6}.dim{color:#69737f;font-size:12.5px}\
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 18px;margin-bottom:16px}\
.badge{font-size:12px;font-weight:600;padding:2px 9px;border-radius:10px;color:#fff}\
.badge.ok{background:#1f8a4c}.badge.bad{background:#c62f2f}.badge.unknown{background:#8a8f96}\
.okt{color:#1f8a4c;font-weight:600}.badt{color:#c62f2f;font-weight:600}\
.problems{color:#c62f2f;margin:6px 0;padding-left:20px}\
.grid{display:grid;grid-template-columns:repeat(3,1fr);gap:10px;margin:12px 0}\
.cell{border:1px solid #e6e9ed;border-radius:6px;padding:8px 10px}\
.k{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#69737f}\
.v{font-size:15px;font-weight:500;margin:2px 0}.hint{font-size:11.5px;color:#8a929c}\
svg.timeline{width:100%;height:auto;display:block}\
.axis{stroke:#c9ced4}.grid{stroke:#eef0f2}.lbl{font-size:12px;fill:#69737f}\
.tick{font-size:11px;fill:#8a929c;text-anchor:middle}\
.m-ok{fill:#1f8a4c}.m-unv{fill:#9aa3ad}.m-bad{fill:#c62f2f}.dot.m-ok{background:#1f8a4c}.dot.m-unv{background:#9aa3ad}.dot.m-bad{background:#c62f2f}.x{stroke:#c62f2f;stroke-width:2.5}\
.legend{margin-top:4px}.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin:0 4px 0 10px}\
.xx{color:#c62f2f;margin:0 2px 0 10px}\
.failure{background:#fdf0f0;border:1px solid #f2c9c9;border-radius:6px;padding:8px 10px;margin:10px 0 0}\
code{font-size:12.5px;word-break:break-word}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn an_error_text_with_markup_is_shown_as_text() {
        let now = Utc::now();
        let input = DbInput {
            failures: vec![Failure {
                at: rfc3339(now),
                at_time: now,
                job: "backup".into(),
                error: "<script>alert(1)</script>".into(),
            }],
            ..DbInput::default()
        };
        let page = html(&data(&[("market".into(), input)], now));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
}
