//! `diff --sql`: the statements that turn FROM into TO, one table at a time: its DELETEs, then
//! its UPDATEs, then its INSERTs (so a unique value that moved from a deleted row to a new one
//! does not collide). Each kind is spooled to an unnamed temp file in the scratch folder while
//! the merge runs, so memory stays flat however many rows differ.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::Path;

use super::compare::Sink;
use super::schema::Table;
use super::value::{ident, Val};
use crate::error::{Error, Result};

/// Writes one table's statements.
pub struct SqlSink {
    table: String,
    /// FROM's selected names (to address its rows) and TO's (to insert them).
    from_names: Vec<String>,
    to_names: Vec<String>,
    /// Key positions in FROM's rows, with the names they are addressed by.
    key: Vec<(usize, String)>,
    spools: [BufWriter<File>; 3],
    scratch: std::path::PathBuf,
}

const DELETES: usize = 0;
const UPDATES: usize = 1;
const INSERTS: usize = 2;

/// The names of a table's selected values: the rowid first when it is the key.
pub fn names(t: &Table) -> Vec<String> {
    let mut n = Vec::new();
    if let Ok(super::schema::Key::Rowid(r)) = &t.key {
        n.push((*r).to_string());
    }
    n.extend(t.columns.iter().map(|c| ident(c)));
    n
}

impl SqlSink {
    /// A writer for `from` → `to` (the same table on both sides), spooling under `scratch`.
    ///
    /// # Errors
    /// The spool files cannot be created.
    pub fn new(from: &Table, to: &Table, scratch: &Path) -> Result<SqlSink> {
        let scan = from.scan().expect("a table with a key");
        let from_names = names(from);
        let key = scan
            .key
            .iter()
            .map(|(i, _)| (*i, from_names[*i].clone()))
            .collect();
        let spool = || -> Result<BufWriter<File>> {
            tempfile::tempfile_in(scratch)
                .map(|f| BufWriter::with_capacity(1 << 16, f))
                .map_err(|e| Error::io("create spool file in", scratch, e))
        };
        Ok(SqlSink {
            table: ident(&to.name),
            to_names: names(to),
            from_names,
            key,
            spools: [spool()?, spool()?, spool()?],
            scratch: scratch.to_path_buf(),
        })
    }

    fn write(&mut self, which: usize, stmt: &str) -> Result<()> {
        self.spools[which]
            .write_all(stmt.as_bytes())
            .and_then(|()| self.spools[which].write_all(b"\n"))
            .map_err(|e| Error::io("write spool file in", &self.scratch, e))
    }

    fn key_condition(&self, row: &[Val]) -> String {
        self.key
            .iter()
            .map(|(i, n)| match &row[*i] {
                Val::Null => format!("{n} IS NULL"),
                v => format!("{n} = {}", v.sql()),
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Write the spooled statements to `out`: deletes, updates, inserts.
    ///
    /// # Errors
    /// A spool file cannot be read back.
    pub fn finish(self, out: &mut dyn FnMut(&[u8])) -> Result<()> {
        let scratch = self.scratch;
        for spool in self.spools {
            let mut f = spool
                .into_inner()
                .map_err(|e| Error::io("write spool file in", &scratch, e.into_error()))?;
            f.rewind()
                .map_err(|e| Error::io("read spool file in", &scratch, e))?;
            let mut r = BufReader::with_capacity(1 << 16, f);
            loop {
                let buf = r
                    .fill_buf()
                    .map_err(|e| Error::io("read spool file in", &scratch, e))?;
                if buf.is_empty() {
                    break;
                }
                out(buf);
                let n = buf.len();
                r.consume(n);
            }
        }
        Ok(())
    }
}

impl Sink for SqlSink {
    fn delete(&mut self, row: &[Val]) -> Result<()> {
        let stmt = format!(
            "DELETE FROM {} WHERE {};",
            self.table,
            self.key_condition(row)
        );
        self.write(DELETES, &stmt)
    }

    fn insert(&mut self, row: &[Val], unsure: bool) -> Result<()> {
        let stmt = insert(&self.table, &self.to_names, row, unsure);
        self.write(INSERTS, &stmt)
    }

    fn update(&mut self, from: &[Val], to: &[Val], pairs: &[(usize, usize)]) -> Result<()> {
        let set: Vec<String> = pairs
            .iter()
            .map(|(i, j)| format!("{} = {}", self.from_names[*i], to[*j].sql()))
            .collect();
        let stmt = format!(
            "UPDATE {} SET {} WHERE {};",
            self.table,
            set.join(", "),
            self.key_condition(from)
        );
        self.write(UPDATES, &stmt)
    }
}

/// `INSERT INTO t (names) VALUES (row);` (`OR REPLACE` when the row may already be there).
pub fn insert(table: &str, names: &[String], row: &[Val], replace: bool) -> String {
    format!(
        "INSERT{} INTO {table} ({}) VALUES ({});",
        if replace { " OR REPLACE" } else { "" },
        names.join(", "),
        row.iter().map(Val::sql).collect::<Vec<_>>().join(", ")
    )
}
