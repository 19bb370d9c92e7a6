//! `guardian diff`: what it prints (a summary per table, `--json`, or `--sql` as it goes).

use chrono::Utc;
use serde_json::json;

use super::{DiffArgs, RestoreArgs};
use crate::app::App;
use crate::diff::{self, Change, DiffOptions, DiffReport, Spec, TableReport, Val};
use crate::error::{Error, Result};
use crate::human::rfc3339;
use crate::output::{errln, outln, warnln};

/// `guardian diff`.
pub(super) async fn diff(app: &App, args: DiffArgs) -> Result<u8> {
    let (from, to): (Spec, Spec) = (args.from, args.to);
    let db = if from.needs_db() || to.needs_db() || args.db.is_some() {
        Some(app.config.select_one(args.db.as_deref())?)
    } else {
        app.config.select_one(None).ok()
    };
    let opts = DiffOptions {
        from,
        to,
        tables: args.table,
        limit: args.limit,
        sql: args.sql,
        keys: app.keys.clone(),
        staging_dir: app.config.backup.staging_dir(),
    };
    let stores = db.map_or_else(Vec::new, |d| app.stores_of(d));
    let r = diff::run(&stores, db, &app.config.databases, &opts).await?;
    for (side, info) in [("FROM", &r.from), ("TO", &r.to)] {
        for (id, why) in &info.skipped {
            warnln!("{side} {}: skipped snapshot {id}: {why}", info.spec);
        }
    }
    if args.json {
        crate::output::json(&to_json(&r));
    } else if !args.sql {
        print(&r);
    }
    if r.complete() {
        return Ok(0);
    }
    let partial: Vec<&str> = r
        .tables
        .iter()
        .filter(|t| t.partial())
        .map(|t| t.name.as_str())
        .collect();
    errln!(
        "the comparison is PARTIAL: {} could not be read in full (see {}); the rows that were read are reported, the unreadable ones are neither missing nor present",
        partial.join(", "),
        if args.sql { "the -- PARTIAL lines" } else if args.json { "\"partial\" in each table" } else { "PARTIAL above" }
    );
    Err(Error::Reported(1))
}

fn print(r: &DiffReport) {
    let now = Utc::now();
    for (side, info) in [("from", &r.from), ("to", &r.to)] {
        let age = info
            .taken_at
            .map(|t| format!(", {}", crate::human::ago((now - t).num_seconds())))
            .unwrap_or_default();
        outln!("{side:<5} {}{age}: {}", diff::describe(info), info.read_as);
    }
    let mut totals = [0u64; 4];
    let mut differing = 0;
    for t in &r.tables {
        print_table(t);
        if let Some(c) = &t.counts {
            totals[0] += c.only_in_from;
            totals[1] += c.only_in_to;
            totals[2] += c.changed;
            totals[3] += c.unknown;
            if c.differs() || t.schema_changed {
                differing += 1;
            }
        }
    }
    for s in &r.schema {
        let what = match s.change {
            "only_in_from" => format!("only in FROM: {}", s.from_sql.as_deref().unwrap_or("")),
            "only_in_to" => format!("only in TO: {}", s.to_sql.as_deref().unwrap_or("")),
            _ => format!(
                "changed: {} -> {}",
                s.from_sql.as_deref().unwrap_or(""),
                s.to_sql.as_deref().unwrap_or("")
            ),
        };
        outln!("schema {} {} {what}", s.kind, s.name);
    }
    outln!(
        "total: {} row(s) only in FROM, {} only in TO, {} changed, in {differing} of {} table(s); {} schema difference(s){}{}",
        totals[0],
        totals[1],
        totals[2],
        r.tables.len(),
        r.schema.len(),
        if totals[3] > 0 {
            format!("; {} row(s) unknown (their counterpart is unreadable)", totals[3])
        } else {
            String::new()
        },
        if r.complete() { "" } else { "; PARTIAL" }
    );
}

fn print_table(t: &TableReport) {
    let key = if t.key.is_empty() {
        String::new()
    } else {
        format!(" (key {})", t.key.join(", "))
    };
    let presence = match (t.in_from, t.in_to) {
        (true, false) => " only in FROM;",
        (false, true) => " only in TO;",
        _ => "",
    };
    let Some(c) = &t.counts else {
        outln!(
            "table {}{key}:{presence} not compared: {}",
            t.name,
            t.note.as_deref().unwrap_or("")
        );
        return;
    };
    let state = if c.partial.is_empty() {
        ""
    } else {
        " PARTIAL:"
    };
    outln!(
        "table {}{key}:{presence}{state} {} only in FROM, {} only in TO, {} changed, {} same{}",
        t.name,
        c.only_in_from,
        c.only_in_to,
        c.changed,
        c.same,
        if c.unknown > 0 {
            format!(", {} unknown", c.unknown)
        } else {
            String::new()
        }
    );
    if let Some(n) = &t.note {
        outln!("  note: {n}");
    }
    for p in &c.partial {
        outln!("  unreadable: {p}");
    }
    for row in &c.rows {
        let key = row
            .key
            .iter()
            .map(|(k, v)| format!("{k}={}", v.short()))
            .collect::<Vec<_>>()
            .join(" ");
        let cols = row
            .columns
            .iter()
            .map(|(n, f, t)| match row.change {
                Change::Changed => format!("{n}: {} -> {}", short(f), short(t)),
                Change::OnlyInFrom => format!("{n}={}", short(f)),
                Change::OnlyInTo => format!("{n}={}", short(t)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let word = match row.change {
            Change::OnlyInFrom => "only in FROM",
            Change::OnlyInTo => "only in TO  ",
            Change::Changed => "changed     ",
        };
        outln!("  {word} {key}: {cols}");
    }
    let shown = c.rows.len() as u64;
    let total = c.only_in_from + c.only_in_to + c.changed;
    if total > shown {
        outln!(
            "  … and {} more (--limit N shows more, --json gives them as data)",
            total - shown
        );
    }
}

fn short(v: &Option<Val>) -> String {
    v.as_ref().map_or_else(|| "NULL".into(), Val::short)
}

fn to_json(r: &DiffReport) -> serde_json::Value {
    let side = |s: &diff::SideInfo| {
        json!({
            "spec": s.spec,
            "kind": s.kind,
            "snapshot": s.snapshot,
            "taken_at": s.taken_at.map(rfc3339),
            "path": s.path,
            "read_as": s.read_as,
            "skipped": s.skipped.iter().map(|(id, why)| json!({"id": id, "reason": why})).collect::<Vec<_>>(),
        })
    };
    let tables: Vec<serde_json::Value> = r
        .tables
        .iter()
        .map(|t| {
            let mut v = json!({
                "table": t.name,
                "key": t.key,
                "in_from": t.in_from,
                "in_to": t.in_to,
                "schema_changed": t.schema_changed,
                "note": t.note,
                "compared": t.counts.is_some(),
                "partial": t.partial(),
            });
            if let Some(c) = &t.counts {
                v["rows_from"] = c.rows_from.into();
                v["rows_to"] = c.rows_to.into();
                v["only_in_from"] = c.only_in_from.into();
                v["only_in_to"] = c.only_in_to.into();
                v["changed"] = c.changed.into();
                v["same"] = c.same.into();
                v["unknown"] = c.unknown.into();
                v["unreadable"] = json!(c.partial);
                v["rows"] = c.rows.iter().map(diff::RowChange::json).collect();
            }
            v
        })
        .collect();
    let sum = |f: fn(&diff::Counts) -> u64| -> u64 {
        r.tables
            .iter()
            .filter_map(|t| t.counts.as_ref())
            .map(f)
            .sum()
    };
    json!({
        "db": r.db,
        "from": side(&r.from),
        "to": side(&r.to),
        "complete": r.complete(),
        "tables": tables,
        "schema": r.schema,
        "totals": {
            "only_in_from": sum(|c| c.only_in_from),
            "only_in_to": sum(|c| c.only_in_to),
            "changed": sum(|c| c.changed),
            "unknown": sum(|c| c.unknown),
            "tables_differing": r.tables.iter().filter(|t| t.schema_changed || t.counts.as_ref().is_some_and(diff::Counts::differs)).count(),
            "tables_partial": r.tables.iter().filter(|t| t.partial()).count(),
            "schema_differences": r.schema.len(),
        },
    })
}

/// The exact `guardian diff` command that shows what `file` holds beyond snapshot `id`.
pub(super) fn command(db: &str, id: &str, file: &std::path::Path, tables: &[String]) -> String {
    let word = |s: &str| crate::init::shell_word(s);
    let mut cmd = format!(
        "guardian diff --db {} --from snapshot:{id} --to {}",
        word(db),
        word(&file.to_string_lossy())
    );
    for t in tables {
        cmd.push_str(&format!(" --table {}", word(t)));
    }
    cmd
}

/// `guardian restore --table T...`.
pub(super) async fn restore_tables(
    app: &App,
    db: &crate::config::DatabaseConfig,
    selector: crate::restore::Selector,
    args: RestoreArgs,
) -> Result<u8> {
    let opts = crate::table_restore::TableRestoreOptions {
        selector,
        tables: args.table,
        force: args.force,
        dry_run: args.dry_run,
        keys: app.keys.clone(),
        protected: app.config.local_roots(),
        check: args.check,
        staging_dir: app.config.backup.staging_dir(),
    };
    let stores = app.select_stores(db, args.store.as_deref())?;
    let r = crate::table_restore::run(&stores, db, &opts).await?;
    let m = &r.manifest;
    for (store, why) in &r.stores_unreadable {
        outln!("skipped store {store}: it could not be read: {why}");
    }
    for (id, why) in &r.skipped {
        outln!("skipped {id}: {why}");
    }
    for (store, id, why) in &r.copies_skipped {
        outln!("skipped the copy of {id} in store {store}: {why}");
    }
    let when = format!(
        "taken {}, {}",
        rfc3339(m.created_at),
        crate::human::ago((Utc::now() - m.created_at).num_seconds())
    );
    let verb = if r.dry_run {
        "dry run: would put back"
    } else {
        "put back"
    };
    outln!(
        "{verb} {} table(s) of {} from snapshot {} ({when}) in {}",
        r.tables.len(),
        r.db,
        m.id,
        r.target.display()
    );
    outln!("  from store {}", r.store.describe());
    for t in &r.tables {
        outln!(
            "  {:<24} {} row(s){} {} in the snapshot",
            t.name,
            t.before,
            if r.dry_run { " now," } else { " before," },
            t.after
        );
    }
    if r.dry_run {
        outln!("  the whole database would be kept aside first; nothing was written");
        if let Some(who) = &r.forced_over {
            outln!("  the database is in use ({who}); --force would go ahead anyway");
        }
        return Ok(0);
    }
    outln!("  foreign_key_check passed on these tables and those that refer to them");
    if let Some(old) = &r.kept_aside {
        outln!("  previous file kept at {}", old.display());
        let names: Vec<String> = r.tables.iter().map(|t| t.name.clone()).collect();
        outln!(
            "  what it holds beyond the snapshot: {}",
            command(&r.db, m.id.as_str(), old, &names)
        );
    }
    if let Some(who) = &r.forced_over {
        outln!("  warning: the database was in use ({who}); its connections see the new rows at their next transaction");
    }
    Ok(0)
}
