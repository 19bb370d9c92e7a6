//! What one side holds: its schema entries, and for each table its columns and the key its rows
//! are matched by (the primary key, else the rowid).

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::scan::{quoted, rowid_name, Scan};
use super::value::{ident, Collation};
use crate::error::{Error, Result};

/// One row of `sqlite_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: String,
    pub name: String,
    pub table: String,
    pub sql: Option<String>,
    /// The root page of its b-tree (0 for views and triggers).
    pub root: i64,
}

/// How a table's rows are matched across the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// No primary key: the rowid (named so, or `_rowid_`/`oid` when a column takes the name).
    Rowid(&'static str),
    /// The primary key's columns, in key order, with their collations; `alias` when it is the
    /// one `INTEGER PRIMARY KEY` column of a rowid table (an integer: damage can be probed past).
    Columns {
        columns: Vec<(String, Collation)>,
        alias: bool,
    },
}

/// One table of one side.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub sql: String,
    /// The root page of its b-tree.
    pub root: i64,
    /// Stored columns (generated and hidden ones are derived, not compared).
    pub columns: Vec<String>,
    /// `None`: the rows cannot be compared, and why.
    pub key: std::result::Result<Key, String>,
}

impl Table {
    /// The key's column names (`rowid` for the rowid).
    pub fn key_names(&self) -> Vec<String> {
        match &self.key {
            Ok(Key::Rowid(n)) => vec![(*n).to_string()],
            Ok(Key::Columns { columns, .. }) => columns.iter().map(|(c, _)| c.clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// How to read this table in key order; `None` when it has no usable key.
    pub fn scan(&self) -> Option<Scan> {
        let key = self.key.as_ref().ok()?;
        let mut select = Vec::new();
        if let Key::Rowid(n) = key {
            select.push((*n).to_string());
        }
        let offset = select.len();
        select.extend(quoted(&self.columns));
        let (key, integer_key) = match key {
            Key::Rowid(_) => (vec![(0, Collation::Binary)], true),
            Key::Columns { columns, alias } => (
                columns
                    .iter()
                    .map(|(c, coll)| {
                        let i = self.columns.iter().position(|x| x == c)?;
                        Some((i + offset, *coll))
                    })
                    .collect::<Option<Vec<_>>>()?,
                *alias,
            ),
        };
        Some(Scan {
            table: ident(&self.name),
            select,
            key,
            integer_key,
        })
    }
}

/// A side's schema: every entry, and the tables whose rows can be compared.
#[derive(Debug, Default)]
pub struct Schema {
    pub entries: Vec<Entry>,
    pub tables: BTreeMap<String, Table>,
    /// Tables that are not compared, with why (virtual tables and their shadow tables).
    pub skipped: BTreeMap<String, String>,
}

/// Read the schema of the database open on `conn` (`what` names it in errors).
///
/// # Errors
/// [`Error::Unreadable`] when the schema itself cannot be read (the file is damaged there).
pub fn read(conn: &Connection, what: &str) -> Result<Schema> {
    let damaged = |e: rusqlite::Error| {
        Error::Unreadable(format!(
            "{what} cannot be compared: its schema cannot be read ({e}), so none of its tables can be found; `sqlite3 FILE .recover` may still get rows out of it"
        ))
    };
    let mut schema = Schema::default();
    {
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql, coalesce(rootpage, 0) FROM sqlite_schema ORDER BY type, name")
            .map_err(damaged)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Entry {
                    kind: r.get(0)?,
                    name: r.get(1)?,
                    table: r.get(2)?,
                    sql: r.get(3)?,
                    root: r.get(4)?,
                })
            })
            .map_err(damaged)?;
        for e in rows {
            schema.entries.push(e.map_err(damaged)?);
        }
    }
    let kinds: BTreeMap<String, (String, bool)> = conn
        .prepare("SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((r.get(0)?, (r.get(1)?, r.get::<_, i64>(2)? != 0)))
            })?
            .collect()
        })
        .map_err(damaged)?;
    for e in schema.entries.iter().filter(|e| e.kind == "table") {
        let (kind, without_rowid) = kinds.get(&e.name).cloned().unwrap_or_default();
        if e.name.starts_with("sqlite_") && e.name != "sqlite_sequence" {
            continue;
        }
        if kind != "table" {
            schema
                .skipped
                .insert(e.name.clone(), format!("a {kind} table"));
            continue;
        }
        let t = table(conn, e, without_rowid).map_err(damaged)?;
        schema.tables.insert(e.name.clone(), t);
    }
    Ok(schema)
}

fn table(conn: &Connection, e: &Entry, without_rowid: bool) -> rusqlite::Result<Table> {
    // name, declared type, position in the primary key, hidden (0: a stored column).
    let cols: Vec<(String, String, i64, i64)> = conn
        .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?
        .query_map([&e.name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let columns: Vec<String> = cols
        .iter()
        .filter(|c| c.3 == 0)
        .map(|c| c.0.clone())
        .collect();
    let mut pk: Vec<&(String, String, i64, i64)> = cols.iter().filter(|c| c.2 > 0).collect();
    pk.sort_by_key(|c| c.2);
    let key = if e.name == "sqlite_sequence" {
        // No declared key, but one row per table name.
        Ok(Key::Columns {
            columns: vec![("name".into(), Collation::Binary)],
            alias: false,
        })
    } else if pk.is_empty() {
        rowid_name(&columns)
            .map(Key::Rowid)
            .ok_or_else(|| "its columns take every name of the rowid".to_string())
    } else if !without_rowid && pk.len() == 1 && pk[0].1.eq_ignore_ascii_case("INTEGER") {
        Ok(Key::Columns {
            columns: vec![(pk[0].0.clone(), Collation::Binary)],
            alias: true,
        })
    } else {
        let colls = pk_collations(conn, &e.name)?;
        pk.iter()
            .map(|c| {
                let coll = colls.get(&c.0).map_or("BINARY", String::as_str);
                Collation::named(coll)
                    .map(|k| (c.0.clone(), k))
                    .ok_or_else(|| {
                        format!(
                            "its key column {} uses collation {coll}, which guardian does not know",
                            c.0
                        )
                    })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(|columns| Key::Columns {
                columns,
                alias: false,
            })
    };
    Ok(Table {
        name: e.name.clone(),
        sql: e.sql.clone().unwrap_or_default(),
        root: e.root,
        columns,
        key,
    })
}

/// The collation of each primary-key column, from the key's index.
fn pk_collations(conn: &Connection, table: &str) -> rusqlite::Result<BTreeMap<String, String>> {
    let index: Option<String> = conn
        .prepare("SELECT name FROM pragma_index_list(?1) WHERE origin = 'pk'")?
        .query_map([table], |r| r.get(0))?
        .next()
        .transpose()?;
    let Some(index) = index else {
        return Ok(BTreeMap::new());
    };
    conn.prepare(
        "SELECT name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 AND name IS NOT NULL",
    )?
    .query_map([index], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}
