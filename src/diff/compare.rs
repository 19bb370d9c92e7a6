//! One table, both sides: a merge of two key-ordered scans into rows only in FROM, only in TO,
//! changed and unchanged; rows whose counterpart lies in the other side's unreadable range are
//! *unknown*, never "missing".

use std::cmp::Ordering;

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use super::scan::{Cursor, Item};
use super::schema::Table;
use super::value::Val;
use crate::error::Result;

/// What happened to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    OnlyInFrom,
    OnlyInTo,
    Changed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::OnlyInFrom => "only_in_from",
            Change::OnlyInTo => "only_in_to",
            Change::Changed => "changed",
        }
    }
}

/// One row that differs, as shown (the first `--limit` of each table).
#[derive(Debug, Clone)]
pub struct RowChange {
    pub change: Change,
    /// Key column names and values.
    pub key: Vec<(String, Val)>,
    /// For a changed row: the columns that differ (from, to); for a row on one side only:
    /// every column of that side.
    pub columns: Vec<(String, Option<Val>, Option<Val>)>,
}

impl RowChange {
    pub fn json(&self) -> Value {
        let key: Map<String, Value> = self
            .key
            .iter()
            .map(|(k, v)| (k.clone(), v.json()))
            .collect();
        let columns: Map<String, Value> = self
            .columns
            .iter()
            .map(|(c, f, t)| {
                let side = |v: &Option<Val>| v.as_ref().map_or(Value::Null, Val::json);
                let v = match self.change {
                    Change::Changed => json!({ "from": side(f), "to": side(t) }),
                    Change::OnlyInFrom => side(f),
                    Change::OnlyInTo => side(t),
                };
                (c.clone(), v)
            })
            .collect();
        json!({ "change": self.change.as_str(), "key": key, "columns": columns })
    }
}

/// Counts and the first rows of one table's comparison.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub rows_from: u64,
    pub rows_to: u64,
    pub only_in_from: u64,
    pub only_in_to: u64,
    pub changed: u64,
    pub same: u64,
    /// Rows read on one side whose counterpart lies where the other side could not be read.
    pub unknown: u64,
    /// Why each side could not be read in full (`from: …`, `to: …`).
    pub partial: Vec<String>,
    pub rows: Vec<RowChange>,
}

impl Counts {
    pub fn differs(&self) -> bool {
        self.only_in_from + self.only_in_to + self.changed > 0
    }
}

/// Receives every change in key order (the `--sql` writer).
pub trait Sink {
    /// `row` (FROM's) is not in TO.
    fn delete(&mut self, row: &[Val]) -> Result<()>;
    /// `row` (TO's) is not in FROM; `unsure`: FROM could not be read where it would be.
    fn insert(&mut self, row: &[Val], unsure: bool) -> Result<()>;
    /// The rows differ in the columns `pairs` (positions in FROM's and TO's rows).
    fn update(&mut self, from: &[Val], to: &[Val], pairs: &[(usize, usize)]) -> Result<()>;
}

/// Positions of the columns both sides have, by name.
pub fn common_columns(from: &Table, to: &Table) -> Vec<(String, usize, usize)> {
    let (fo, to_off) = (offset(from), offset(to));
    from.columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let j = to.columns.iter().position(|d| d.eq_ignore_ascii_case(c))?;
            Some((c.clone(), i + fo, j + to_off))
        })
        .collect()
}

/// Where the stored columns start in a scan's row (after the rowid, when it is the key).
fn offset(t: &Table) -> usize {
    usize::from(matches!(t.key, Ok(super::schema::Key::Rowid(_))))
}

/// Merge FROM's and TO's rows of one table (`from`/`to` `None` when the table is absent on
/// that side), keeping the first `limit` changes.
#[allow(clippy::too_many_arguments)] // both sides, their definitions, and what to keep
pub fn merge(
    from_conn: &Connection,
    to_conn: &Connection,
    from: Option<&Table>,
    to: Option<&Table>,
    limit: usize,
    sink: &mut Option<&mut dyn Sink>,
) -> Result<Counts> {
    let def = from.or(to).expect("the table is on one side at least");
    let scan_of = |t: &Table| t.scan().expect("a table with a key");
    let mut a = match from {
        Some(t) => Cursor::new(from_conn, scan_of(t)),
        None => Cursor::empty(from_conn, scan_of(def)),
    };
    let mut b = match to {
        Some(t) => Cursor::new(to_conn, scan_of(t)),
        None => Cursor::empty(to_conn, scan_of(def)),
    };
    let pairs: Vec<(String, usize, usize)> = match (from, to) {
        (Some(f), Some(t)) => common_columns(f, t),
        _ => Vec::new(),
    };
    let names_of = |t: Option<&Table>| -> Vec<String> {
        let t = t.unwrap_or(def);
        let mut n = Vec::new();
        if let Ok(super::schema::Key::Rowid(r)) = &t.key {
            n.push((*r).to_string());
        }
        n.extend(t.columns.iter().cloned());
        n
    };
    let (names_a, names_b) = (names_of(from), names_of(to));
    let mut c = Counts::default();
    let mut ra = a.next()?;
    let mut rb = b.next()?;
    let mut changed_pairs = Vec::new();
    loop {
        let order = match (&ra, &rb) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => a.scan().cmp(&x.row, b.scan(), &y.row),
        };
        // Every key the merge reaches lies after the other side's previous row, so it is in
        // that side's unreadable range exactly when the side's current row follows one (or
        // the side ended in one).
        let in_gap_b = rb.as_ref().map_or(b.trailing_gap(), |y| y.gap_before);
        let in_gap_a = ra.as_ref().map_or(a.trailing_gap(), |x| x.gap_before);
        match order {
            Ordering::Less => {
                let Item { row, .. } = ra.take().expect("a row");
                if in_gap_b {
                    c.unknown += 1;
                } else {
                    c.only_in_from += 1;
                    keep(&mut c, limit, Change::OnlyInFrom, &row, &a, &names_a);
                    if let Some(s) = sink.as_deref_mut() {
                        s.delete(&row)?;
                    }
                }
                ra = a.next()?;
            }
            Ordering::Greater => {
                let Item { row, .. } = rb.take().expect("a row");
                if in_gap_a {
                    c.unknown += 1;
                } else {
                    c.only_in_to += 1;
                    keep(&mut c, limit, Change::OnlyInTo, &row, &b, &names_b);
                }
                if let Some(s) = sink.as_deref_mut() {
                    s.insert(&row, in_gap_a)?;
                }
                rb = b.next()?;
            }
            Ordering::Equal => {
                let (x, y) = (ra.take().expect("a row"), rb.take().expect("a row"));
                changed_pairs.clear();
                changed_pairs.extend(
                    pairs
                        .iter()
                        .filter(|(_, i, j)| !x.row[*i].same(&y.row[*j]))
                        .map(|(_, i, j)| (*i, *j)),
                );
                if changed_pairs.is_empty() {
                    c.same += 1;
                } else {
                    c.changed += 1;
                    if c.rows.len() < limit {
                        let columns = pairs
                            .iter()
                            .filter(|(_, i, j)| changed_pairs.contains(&(*i, *j)))
                            .map(|(n, i, j)| {
                                (n.clone(), Some(x.row[*i].clone()), Some(y.row[*j].clone()))
                            })
                            .collect();
                        c.rows.push(RowChange {
                            change: Change::Changed,
                            key: key_of(&x.row, &a, &names_a),
                            columns,
                        });
                    }
                    if let Some(s) = sink.as_deref_mut() {
                        s.update(&x.row, &y.row, &changed_pairs)?;
                    }
                }
                ra = a.next()?;
                rb = b.next()?;
            }
        }
    }
    c.rows_from = a.rows_read;
    c.rows_to = b.rows_read;
    c.partial
        .extend(a.damage.iter().map(|d| format!("from: {d}")));
    c.partial
        .extend(b.damage.iter().map(|d| format!("to: {d}")));
    Ok(c)
}

/// The key of `row` with its column names (`names`: the names of the scan's selected values).
fn key_of(row: &[Val], cur: &Cursor<'_>, names: &[String]) -> Vec<(String, Val)> {
    cur.scan()
        .key
        .iter()
        .map(|(i, _)| (names[*i].clone(), row[*i].clone()))
        .collect()
}

/// Keep a row that is on one side only, while fewer than `limit` are kept.
fn keep(
    c: &mut Counts,
    limit: usize,
    change: Change,
    row: &[Val],
    cur: &Cursor<'_>,
    names: &[String],
) {
    if c.rows.len() >= limit {
        return;
    }
    let columns = names
        .iter()
        .zip(row)
        .map(|(n, v)| match change {
            Change::OnlyInFrom => (n.clone(), Some(v.clone()), None),
            _ => (n.clone(), None, Some(v.clone())),
        })
        .collect();
    c.rows.push(RowChange {
        change,
        key: key_of(row, cur, names),
        columns,
    });
}
