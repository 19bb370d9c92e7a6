//! One SQLite value as `diff` holds it: read from a row, ordered the way SQLite orders keys
//! (so two sorted scans can be merged), and written back out as SQL, JSON or a short display.

use std::cmp::Ordering;

use rusqlite::types::ValueRef;

/// A stored SQLite value, owned (text is kept as bytes: SQLite does not enforce UTF-8).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Val {
    pub fn from_ref(v: ValueRef<'_>) -> Val {
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            ValueRef::Real(f) => Val::Real(f),
            ValueRef::Text(t) => Val::Text(t.to_vec()),
            ValueRef::Blob(b) => Val::Blob(b.to_vec()),
        }
    }

    /// The same stored value: same storage class and same bytes (1 and 1.0 differ, as they do
    /// in a `.dump`).
    pub fn same(&self, other: &Val) -> bool {
        match (self, other) {
            (Val::Real(a), Val::Real(b)) => a.to_bits() == b.to_bits() || a == b,
            _ => self == other,
        }
    }

    /// A SQL literal that reads back as exactly this value.
    pub fn sql(&self) -> String {
        match self {
            Val::Null => "NULL".into(),
            Val::Int(i) => i.to_string(),
            Val::Real(f) if f.is_infinite() => {
                if *f > 0.0 {
                    "9e999".into()
                } else {
                    "-9e999".into()
                }
            }
            // Debug is the shortest text that parses back to the same f64, and keeps ".0".
            Val::Real(f) => format!("{f:?}"),
            Val::Text(t) => match std::str::from_utf8(t) {
                Ok(s) if !s.contains('\0') => format!("'{}'", s.replace('\'', "''")),
                _ => format!("CAST(x'{}' AS TEXT)", hex::encode(t)),
            },
            Val::Blob(b) => format!("x'{}'", hex::encode(b)),
        }
    }

    /// The value for `--json`: null, a number, a string, or `{"blob": "<hex>"}`.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Val::Null => serde_json::Value::Null,
            Val::Int(i) => (*i).into(),
            Val::Real(f) => serde_json::Number::from_f64(*f)
                .map_or_else(|| self.sql().into(), serde_json::Value::Number),
            Val::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
            Val::Blob(b) => serde_json::json!({ "blob": hex::encode(b) }),
        }
    }

    /// A short display for a person: the SQL literal, long ones cut in the middle of nothing
    /// important (the first 60 characters, and the full length).
    pub fn short(&self) -> String {
        const MAX: usize = 60;
        let full = self.sql();
        if full.chars().count() <= MAX {
            return full;
        }
        let cut: String = full.chars().take(MAX).collect();
        let len = match self {
            Val::Text(b) | Val::Blob(b) => b.len(),
            _ => 0,
        };
        format!("{cut}… ({len} bytes)")
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(Borrowed(match self {
            Val::Null => ValueRef::Null,
            Val::Int(i) => ValueRef::Integer(*i),
            Val::Real(f) => ValueRef::Real(*f),
            Val::Text(t) => ValueRef::Text(t),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The collating sequences `diff` can order keys by, as SQLite defines them
/// (<https://www.sqlite.org/datatype3.html#collating_sequences>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collation {
    Binary,
    NoCase,
    RTrim,
}

impl Collation {
    /// The collation named `name` (as `PRAGMA index_xinfo` reports it), or `None` for one
    /// defined by an application, which guardian cannot reproduce.
    pub fn named(name: &str) -> Option<Collation> {
        match name.to_ascii_uppercase().as_str() {
            "BINARY" | "" => Some(Collation::Binary),
            "NOCASE" => Some(Collation::NoCase),
            "RTRIM" => Some(Collation::RTrim),
            _ => None,
        }
    }

    fn text(self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            Collation::Binary => a.cmp(b),
            // SQLite folds ASCII letters only.
            Collation::NoCase => a
                .iter()
                .map(u8::to_ascii_lowercase)
                .cmp(b.iter().map(u8::to_ascii_lowercase)),
            Collation::RTrim => trim_spaces(a).cmp(trim_spaces(b)),
        }
    }
}

fn trim_spaces(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
    &s[..end]
}

/// SQLite's order of two values (`ORDER BY`): NULL, then numbers by value, then text by the
/// collation, then blobs by bytes.
pub fn compare(a: &Val, b: &Val, coll: Collation) -> Ordering {
    fn class(v: &Val) -> u8 {
        match v {
            Val::Null => 0,
            Val::Int(_) | Val::Real(_) => 1,
            Val::Text(_) => 2,
            Val::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Real(x), Val::Real(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Val::Int(x), Val::Real(y)) => int_real(*x, *y),
        (Val::Real(x), Val::Int(y)) => int_real(*y, *x).reverse(),
        (Val::Text(x), Val::Text(y)) => coll.text(x, y),
        (Val::Blob(x), Val::Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

/// An integer against a real, exactly (an i64 does not always fit an f64).
fn int_real(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 as f64: every real at or above it is above every i64.
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let t = r.trunc();
    #[allow(clippy::cast_possible_truncation)] // in range, checked above
    let ti = t as i64;
    match i.cmp(&ti) {
        Ordering::Equal if r > t => Ordering::Less,
        Ordering::Equal if r < t => Ordering::Greater,
        o => o,
    }
}

/// Quote an identifier for SQL: `"name"`, with embedded quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_sqlite() {
        let c = Collation::Binary;
        assert_eq!(compare(&Val::Null, &Val::Int(-5), c), Ordering::Less);
        assert_eq!(compare(&Val::Int(2), &Val::Real(1.5), c), Ordering::Greater);
        assert_eq!(compare(&Val::Int(2), &Val::Real(2.0), c), Ordering::Equal);
        assert_eq!(compare(&Val::Real(2.5), &Val::Int(3), c), Ordering::Less);
        assert_eq!(
            compare(&Val::Int(i64::MAX), &Val::Real(9.3e18), c),
            Ordering::Less
        );
        assert_eq!(
            compare(&Val::Int(7), &Val::Text(b"1".to_vec()), c),
            Ordering::Less
        );
        assert_eq!(
            compare(&Val::Text(b"z".to_vec()), &Val::Blob(vec![0]), c),
            Ordering::Less
        );
        let (a, b) = (Val::Text(b"ABC".to_vec()), Val::Text(b"abd".to_vec()));
        assert_eq!(compare(&a, &b, Collation::Binary), Ordering::Less);
        assert_eq!(compare(&a, &b, Collation::NoCase), Ordering::Less);
        assert_eq!(
            compare(
                &Val::Text(b"B".to_vec()),
                &Val::Text(b"a".to_vec()),
                Collation::NoCase
            ),
            Ordering::Greater
        );
        assert_eq!(
            compare(
                &Val::Text(b"a  ".to_vec()),
                &Val::Text(b"a".to_vec()),
                Collation::RTrim
            ),
            Ordering::Equal
        );
    }

    #[test]
    fn literals_read_back_as_the_same_value() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for v in [
            Val::Null,
            Val::Int(i64::MIN),
            Val::Real(2.0),
            Val::Real(0.1),
            Val::Real(-1e300),
            Val::Real(f64::INFINITY),
            Val::Text("it's ü".as_bytes().to_vec()),
            Val::Text(vec![0xff, 0, b'a']),
            Val::Blob(vec![0, 1, 0xfe]),
        ] {
            let back: Val = conn
                .query_row(&format!("SELECT {}", v.sql()), [], |r| {
                    Ok(Val::from_ref(r.get_ref(0)?))
                })
                .unwrap();
            assert!(back.same(&v), "{v:?} came back as {back:?}");
        }
    }
}
