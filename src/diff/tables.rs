//! Both sides, every table: which tables and schema entries to compare, the merge of each
//! table, and (with `--sql`) the transaction around their statements.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rusqlite::Connection;

use super::compare::{self, Sink};
use super::pages::RawPair;
use super::scan::Cursor;
use super::schema::{self, Entry, Schema, Table};
use super::sql::{self, SqlSink};
use super::value::ident;
use super::{describe, DiffOptions, SchemaChange, SideInfo, TableReport};
use crate::error::{Error, Result};

/// Write `bytes` of SQL to stdout.
fn emit(bytes: &[u8]) {
    crate::output::raw(bytes);
}

fn emitln(line: &str) {
    emit(line.as_bytes());
    emit(b"\n");
}

/// Compare every selected table of the two open sides; with `opts.sql`, write the SQL.
#[allow(clippy::too_many_arguments)] // both sides, how to read them, and the options
pub fn compare_all(
    a: &Connection,
    b: &Connection,
    raw: Option<&RawPair>,
    from: &SideInfo,
    to: &SideInfo,
    opts: &DiffOptions,
    spool: &Path,
) -> Result<(Vec<TableReport>, Vec<SchemaChange>)> {
    let sa = schema::read(a, &format!("FROM ({})", describe(from)))?;
    let sb = schema::read(b, &format!("TO ({})", describe(to)))?;
    let names = selected(&sa, &sb, &opts.tables)?;
    let changes = schema_changes(&sa, &sb, &names, opts.tables.is_empty());
    if opts.sql {
        emitln(&format!(
            "-- guardian diff: the statements that turn FROM into TO\n-- FROM: {}\n-- TO:   {}\n-- Review them, then apply to FROM's database, e.g. sqlite3 FILE < THIS.sql\n-- Foreign keys are not enforced while it runs, so the rows end exactly as in TO;\n-- triggers of these tables are dropped first and TO's created last, so none fires.\nPRAGMA foreign_keys = OFF;\nBEGIN;",
            describe(from),
            describe(to)
        ));
        for e in sa
            .entries
            .iter()
            .filter(|e| e.kind == "trigger" && names.contains(&e.table))
        {
            emitln(&format!("DROP TRIGGER IF EXISTS {};", ident(&e.name)));
        }
    }
    let mut reports = Vec::new();
    // sqlite_sequence last: inserts into AUTOINCREMENT tables move it.
    let mut order: Vec<&String> = names.iter().filter(|n| *n != "sqlite_sequence").collect();
    order.extend(names.iter().filter(|n| *n == "sqlite_sequence"));
    for name in order {
        reports.push(table(a, b, raw, &sa, &sb, name, opts, spool)?);
    }
    if opts.sql {
        finish_sql(&sa, &sb, &names, &changes, &reports);
    }
    Ok((reports, changes))
}

/// The tables to compare: `wanted`, or every table on either side.
fn selected(sa: &Schema, sb: &Schema, wanted: &[String]) -> Result<BTreeSet<String>> {
    let all: BTreeSet<String> = sa
        .tables
        .keys()
        .chain(sb.tables.keys())
        .chain(sa.skipped.keys())
        .chain(sb.skipped.keys())
        .cloned()
        .collect();
    if wanted.is_empty() {
        return Ok(all);
    }
    let mut out = BTreeSet::new();
    for w in wanted {
        match all
            .iter()
            .find(|t| *t == w)
            .or_else(|| all.iter().find(|t| t.eq_ignore_ascii_case(w)))
        {
            Some(t) => {
                out.insert(t.clone());
            }
            None => {
                return Err(Error::Usage(format!(
                    "--table {w}: no such table in FROM or TO (tables: {})",
                    all.iter().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        }
    }
    Ok(out)
}

/// Schema entries that differ, of the selected tables (internal `sqlite_` entries aside; views
/// only when every table is compared).
fn schema_changes(
    sa: &Schema,
    sb: &Schema,
    names: &BTreeSet<String>,
    every_table: bool,
) -> Vec<SchemaChange> {
    let index = |s: &Schema| -> BTreeMap<(String, String), Entry> {
        s.entries
            .iter()
            .filter(|e| {
                !e.name.starts_with("sqlite_")
                    && (names.contains(&e.table) || (e.kind == "view" && every_table))
            })
            .map(|e| ((e.kind.clone(), e.name.clone()), e.clone()))
            .collect()
    };
    let (ia, ib) = (index(sa), index(sb));
    let keys: BTreeSet<&(String, String)> = ia.keys().chain(ib.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (f, t) = (ia.get(k), ib.get(k));
            let change = match (f, t) {
                (Some(f), Some(t)) if f.sql == t.sql => return None,
                (Some(_), Some(_)) => "changed",
                (Some(_), None) => "only_in_from",
                _ => "only_in_to",
            };
            Some(SchemaChange {
                kind: k.0.clone(),
                name: k.1.clone(),
                change,
                from_sql: f.and_then(|e| e.sql.clone()),
                to_sql: t.and_then(|e| e.sql.clone()),
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)] // both sides and their schemas
fn table(
    a: &Connection,
    b: &Connection,
    raw: Option<&RawPair>,
    sa: &Schema,
    sb: &Schema,
    name: &str,
    opts: &DiffOptions,
    spool: &Path,
) -> Result<TableReport> {
    let (f, t) = (sa.tables.get(name), sb.tables.get(name));
    let mut r = TableReport {
        name: name.to_string(),
        key: f.or(t).map(Table::key_names).unwrap_or_default(),
        in_from: f.is_some() || sa.skipped.contains_key(name),
        in_to: t.is_some() || sb.skipped.contains_key(name),
        schema_changed: matches!((f, t), (Some(f), Some(t)) if f.sql != t.sql),
        note: None,
        counts: None,
    };
    let not_compared = |why: &str| {
        if opts.sql {
            emitln(&format!(
                "-- {} not compared ({why}): not in this script",
                ident(name)
            ));
        }
    };
    if let Some(why) = sa.skipped.get(name).or_else(|| sb.skipped.get(name)) {
        not_compared(why);
        r.note = Some(why.clone());
        return Ok(r);
    }
    for side in [f, t].into_iter().flatten() {
        if let Err(why) = &side.key {
            not_compared(why);
            r.note = Some(why.clone());
            return Ok(r);
        }
    }
    if let (Some(f), Some(t)) = (f, t) {
        let (kf, kt) = (f.key.as_ref().ok(), t.key.as_ref().ok());
        if kf != kt {
            r.note = Some(format!(
                "its key differs between the sides ({} in FROM, {} in TO): rows not compared{}",
                f.key_names().join(", "),
                t.key_names().join(", "),
                if opts.sql {
                    "; the script rebuilds it from TO's rows"
                } else {
                    ""
                }
            ));
            if opts.sql {
                rebuild(b, name, t, sb, spool)?;
            }
            return Ok(r);
        }
    }
    if r.schema_changed {
        let (fc, tc) = (f.map(|x| x.columns.len()), t.map(|x| x.columns.len()));
        let common = compare::common_columns(f.expect("both"), t.expect("both")).len();
        r.note = Some(format!(
            "its definition differs; rows compared on the {common} column(s) both sides have ({} in FROM, {} in TO)",
            fc.unwrap_or(0),
            tc.unwrap_or(0)
        ));
    }
    // The same pages, the same rows: no merge (and, with --sql, nothing to write).
    if let (Some(raw), Some(f), Some(t), false) = (raw, f, t, r.schema_changed) {
        if let Some(n) = raw.same_tree(a, name, f.root, t.root) {
            r.counts = Some(compare::Counts {
                rows_from: n,
                rows_to: n,
                same: n,
                ..Default::default()
            });
            return Ok(r);
        }
    }
    // With --sql, a table that is new or redefined in TO is rebuilt from TO's rows.
    let rebuilt = opts.sql && (r.schema_changed || f.is_none());
    let mut sink = match (opts.sql, rebuilt, f, t) {
        (true, false, Some(f), Some(t)) => Some(SqlSink::new(f, t, spool)?),
        _ => None,
    };
    let counts = {
        let mut dyn_sink: Option<&mut dyn Sink> = sink.as_mut().map(|s| s as &mut dyn Sink);
        compare::merge(a, b, f, t, opts.limit, &mut dyn_sink)?
    };
    if opts.sql {
        for p in &counts.partial {
            emitln(&format!(
                "-- PARTIAL {}: {p}; rows there are neither deleted nor assumed",
                ident(name)
            ));
        }
        match (f, t) {
            (Some(_), None) => emitln(&format!("DROP TABLE {};", ident(name))),
            (_, Some(t)) if rebuilt => rebuild(b, name, t, sb, spool)?,
            _ => {}
        }
        if let Some(s) = sink {
            s.finish(&mut |bytes| emit(bytes))?;
        }
    }
    r.counts = Some(counts);
    Ok(r)
}

/// `--sql` for a table new or redefined in TO: drop it, create it as in TO, insert every row
/// TO has, then TO's indexes on it.
fn rebuild(b: &Connection, name: &str, t: &Table, sb: &Schema, _spool: &Path) -> Result<()> {
    emitln(&format!("DROP TABLE IF EXISTS {};", ident(name)));
    emitln(&format!("{};", t.sql));
    let scan = t.scan().expect("a table with a key");
    let names = sql::names(t);
    let mut cur = Cursor::new(b, scan);
    let table = ident(name);
    while let Some(item) = cur.next()? {
        emitln(&sql::insert(&table, &names, &item.row, false));
    }
    for d in &cur.damage {
        emitln(&format!(
            "-- PARTIAL {table}: to: {d}; the rows there are not in this script"
        ));
    }
    for e in sb
        .entries
        .iter()
        .filter(|e| e.kind == "index" && e.table == name)
    {
        if let Some(sql) = &e.sql {
            emitln(&format!("{sql};"));
        }
    }
    Ok(())
}

/// The end of the script: schema entries that changed (other than those of rebuilt or dropped
/// tables), TO's triggers, the totals, and COMMIT.
fn finish_sql(
    sa: &Schema,
    sb: &Schema,
    names: &BTreeSet<String>,
    changes: &[SchemaChange],
    reports: &[TableReport],
) {
    let redone = |table: &str| {
        reports.iter().any(|r| {
            r.name == table && (r.schema_changed || !r.in_from || !r.in_to || r.note.is_some())
        })
    };
    for c in changes
        .iter()
        .filter(|c| c.kind == "index" || c.kind == "view")
    {
        let table = sa
            .entries
            .iter()
            .chain(&sb.entries)
            .find(|e| e.name == c.name)
            .map(|e| e.table.clone())
            .unwrap_or_default();
        if c.kind == "index" && redone(&table) {
            continue;
        }
        let kind = c.kind.to_uppercase();
        if c.from_sql.is_some() {
            emitln(&format!("DROP {kind} IF EXISTS {};", ident(&c.name)));
        }
        if let Some(sql) = &c.to_sql {
            emitln(&format!("{sql};"));
        }
    }
    for e in sb
        .entries
        .iter()
        .filter(|e| e.kind == "trigger" && names.contains(&e.table))
    {
        if let Some(sql) = &e.sql {
            emitln(&format!("{sql};"));
        }
    }
    let mut totals = [0u64; 4];
    for c in reports.iter().filter_map(|r| r.counts.as_ref()) {
        totals[0] += c.only_in_from;
        totals[1] += c.only_in_to;
        totals[2] += c.changed;
        totals[3] += c.unknown;
    }
    emitln(&format!(
        "-- {} row(s) only in FROM, {} only in TO, {} changed{}",
        totals[0],
        totals[1],
        totals[2],
        if totals[3] > 0 {
            format!(
                "; {} unknown (where one side could not be read): see the PARTIAL lines",
                totals[3]
            )
        } else {
            String::new()
        }
    ));
    emitln("COMMIT;");
}
