//! One side's rows of one table, in key order, a chunk at a time, reading past damage.
//!
//! Each chunk is `SELECT … WHERE key > last ORDER BY key LIMIT n`: a seek, so memory stays at
//! one chunk whatever the table's size, and a read that fails on a damaged page can start
//! again beyond it. For an integer key (rowid or `INTEGER PRIMARY KEY`), the cursor probes ever
//! further keys until a seek lands on a readable page, then narrows the unreadable range down
//! by bisection; the rows in between are *unknown*: the merge never reports them as missing.
//! Other keys stop at the first damage (the rest of the table is unknown).

use std::collections::VecDeque;

use rusqlite::{Connection, ErrorCode};

use super::value::{compare, ident, Collation, Val};
use crate::error::{Error, Result};

/// Rows per chunk: small enough to keep memory flat, large enough that seeks cost little.
const CHUNK: usize = 1024;

/// How one side addresses one table's rows, in what order.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The table, quoted.
    pub table: String,
    /// The expressions selected (the hidden rowid first when it is the key, then the columns).
    pub select: Vec<String>,
    /// Positions of the key in `select`, in key order, with their collations.
    pub key: Vec<(usize, Collation)>,
    /// True when the key is one integer (rowid or its alias): damage can be probed past.
    pub integer_key: bool,
}

impl Scan {
    fn sql(&self, after: bool) -> String {
        let keys: Vec<&str> = self
            .key
            .iter()
            .map(|(i, _)| self.select[*i].as_str())
            .collect();
        let order = keys.join(", ");
        let filter = if !after {
            String::new()
        } else if keys.len() == 1 {
            format!(" WHERE {} > ?", keys[0])
        } else {
            let marks = vec!["?"; keys.len()].join(", ");
            format!(" WHERE ({order}) > ({marks})")
        };
        format!(
            "SELECT {} FROM {}{filter} ORDER BY {order} LIMIT {CHUNK}",
            self.select.join(", "),
            self.table
        )
    }

    /// Key order of two rows (each read by its own side's scan).
    pub fn cmp(&self, a: &[Val], other: &Scan, b: &[Val]) -> std::cmp::Ordering {
        for ((ia, coll), (ib, _)) in self.key.iter().zip(&other.key) {
            let o = compare(&a[*ia], &b[*ib], *coll);
            if o.is_ne() {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    }
}

/// A row and whether rows just before it (after the previous one) could not be read.
pub struct Item {
    pub row: Vec<Val>,
    pub gap_before: bool,
}

/// Reads one side's rows of one table in key order.
pub struct Cursor<'c> {
    conn: &'c Connection,
    scan: Scan,
    buf: VecDeque<Vec<Val>>,
    last_key: Option<Vec<Val>>,
    /// No rows after the buffer.
    exhausted: bool,
    /// The read after the buffer failed: probe past the damage once the buffer is used up.
    damaged: bool,
    /// The next row follows an unreadable range.
    gap: bool,
    /// Why rows could not be read (one entry per unreadable range).
    pub damage: Vec<String>,
    pub rows_read: u64,
}

impl<'c> Cursor<'c> {
    pub fn new(conn: &'c Connection, scan: Scan) -> Cursor<'c> {
        Cursor {
            conn,
            scan,
            buf: VecDeque::new(),
            last_key: None,
            exhausted: false,
            damaged: false,
            gap: false,
            damage: Vec::new(),
            rows_read: 0,
        }
    }

    /// A cursor over no rows (the table is absent on this side).
    pub fn empty(conn: &'c Connection, scan: Scan) -> Cursor<'c> {
        let mut c = Cursor::new(conn, scan);
        c.exhausted = true;
        c
    }

    pub fn scan(&self) -> &Scan {
        &self.scan
    }

    /// True when rows after the last one returned are unknown (the table ended in damage).
    pub fn trailing_gap(&self) -> bool {
        self.gap
    }

    /// The next row in key order.
    ///
    /// # Errors
    /// A failure that is not damage to the file (out of memory, I/O on the scratch disk).
    pub fn next(&mut self) -> Result<Option<Item>> {
        loop {
            if let Some(row) = self.buf.pop_front() {
                self.rows_read += 1;
                self.last_key = Some(self.scan.key.iter().map(|(i, _)| row[*i].clone()).collect());
                let gap_before = std::mem::take(&mut self.gap);
                return Ok(Some(Item { row, gap_before }));
            }
            if self.damaged {
                self.damaged = false;
                self.gap = true;
                self.probe()?;
                continue;
            }
            if self.exhausted {
                return Ok(None);
            }
            let after = self.last_key.clone();
            let (rows, failed) = self.read(after.as_deref())?;
            self.exhausted = failed.is_none() && rows.len() < CHUNK;
            if let Some(why) = failed {
                self.note_damage(&why);
                self.damaged = true;
            }
            self.buf.extend(rows);
        }
    }

    fn note_damage(&mut self, why: &str) {
        let after = match &self.last_key {
            Some(k) => format!("after key {}", show_key(k)),
            None => "from the first row".into(),
        };
        self.damage.push(format!("{why} ({after})"));
    }

    /// Find readable rows beyond the damage after the last key (integer keys only).
    fn probe(&mut self) -> Result<()> {
        let base = match self.last_key.as_deref() {
            Some([Val::Int(k)]) if self.scan.integer_key => *k,
            None if self.scan.integer_key => -1,
            _ => {
                self.exhausted = true;
                return Ok(());
            }
        };
        // Double the step until a seek lands past the damage.
        let mut bad = base;
        let mut found = None;
        for shift in 0..63 {
            let Some(at) = base.checked_add(1i64 << shift) else {
                break;
            };
            match self.read(Some(&[Val::Int(at)]))? {
                (rows, None) if rows.is_empty() => break,
                (rows, failed) if !rows.is_empty() => {
                    found = Some((at, rows, failed));
                    break;
                }
                _ => bad = at,
            }
        }
        let Some((mut good, mut rows, mut failed)) = found else {
            if let Some(last) = self.damage.last_mut() {
                last.push_str("; nothing readable after it");
            }
            self.exhausted = true;
            return Ok(());
        };
        // Narrow down to the first point a seek succeeds from: fewer rows left unknown.
        while good - bad > 1 {
            let mid = bad + (good - bad) / 2;
            match self.read(Some(&[Val::Int(mid)]))? {
                (r, f) if !r.is_empty() => (good, rows, failed) = (mid, r, f),
                _ => bad = mid,
            }
        }
        if let (Some(last), Some(first)) = (self.damage.last_mut(), rows.front()) {
            last.push_str(&format!(
                "; readable again from key {}",
                first[self.scan.key[0].0].short()
            ));
        }
        self.exhausted = failed.is_none() && rows.len() < CHUNK;
        if let Some(why) = failed {
            self.last_key = rows.back().map(|r| vec![r[self.scan.key[0].0].clone()]);
            self.note_damage(&why);
            self.damaged = true;
        }
        self.buf.extend(rows);
        Ok(())
    }

    /// One chunk after `after`: the rows read, and the damage that stopped the read early.
    fn read(&self, after: Option<&[Val]>) -> Result<(VecDeque<Vec<Val>>, Option<String>)> {
        if super::stopped() {
            return Err(Error::Cancelled("stopped by a signal".into()));
        }
        let sql = self.scan.sql(after.is_some());
        let mut rows = VecDeque::new();
        let mut stmt = match self.conn.prepare_cached(&sql) {
            Ok(s) => s,
            Err(e) if is_damage(&e) => return Ok((rows, Some(e.to_string()))),
            Err(e) => return Err(Error::sqlite("read", self.scan.table.clone(), e)),
        };
        let n = self.scan.select.len();
        let mut q = match stmt.query(rusqlite::params_from_iter(after.unwrap_or_default())) {
            Ok(q) => q,
            Err(e) if is_damage(&e) => return Ok((rows, Some(e.to_string()))),
            Err(e) => return Err(Error::sqlite("read", self.scan.table.clone(), e)),
        };
        loop {
            match q.next() {
                Ok(Some(r)) => {
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        match r.get_ref(i) {
                            Ok(v) => row.push(Val::from_ref(v)),
                            Err(e) => return Ok((rows, Some(e.to_string()))),
                        }
                    }
                    rows.push_back(row);
                }
                Ok(None) => return Ok((rows, None)),
                Err(e) if is_damage(&e) => return Ok((rows, Some(e.to_string()))),
                Err(e) => return Err(Error::sqlite("read", self.scan.table.clone(), e)),
            }
        }
    }
}

/// SQLite says the file is damaged (not: we ran out of memory, or were interrupted).
pub fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::SystemIoFailure)
    )
}

/// A key for a person: `7`, or `(1, 'a')`.
pub fn show_key(k: &[Val]) -> String {
    match k {
        [one] => one.short(),
        many => format!(
            "({})",
            many.iter().map(Val::short).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The rowid's name in a table that may have a column called `rowid`.
pub fn rowid_name(columns: &[String]) -> Option<&'static str> {
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|n| !columns.iter().any(|c| c.eq_ignore_ascii_case(n)))
}

/// Quote every column name.
pub fn quoted(columns: &[String]) -> Vec<String> {
    columns.iter().map(|c| ident(c)).collect()
}
