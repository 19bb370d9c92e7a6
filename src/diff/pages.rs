//! The cheap answer for a table that did not change: its b-tree pages are byte for byte the
//! same in both files. Then so are its rows, and the row-by-row merge is skipped.
//!
//! Why comparing only FROM's pages is enough: both trees start at the same root page number;
//! if every page of FROM's tree (interior, leaf and overflow, as `dbstat` lists them) equals the
//! page with the same number in TO's file, then TO's root is FROM's root, its child pointers
//! are FROM's, and so on down: TO's tree is FROM's tree. It applies only to two files read in
//! place with no WAL (their bytes are their content) of the same page size and text encoding.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Two files whose pages can be compared.
pub struct RawPair {
    a: File,
    b: File,
    page_size: u64,
}

impl RawPair {
    /// `None` when the files' page sizes or encodings differ (pages would not compare).
    ///
    /// # Errors
    /// A file cannot be opened for reading.
    pub fn open(a: &Connection, pa: &Path, b: &Connection, pb: &Path) -> Result<Option<RawPair>> {
        let geometry = |c: &Connection| -> Option<(i64, String)> {
            let size = c.query_row("PRAGMA page_size", [], |r| r.get(0)).ok()?;
            let enc = c.query_row("PRAGMA encoding", [], |r| r.get(0)).ok()?;
            Some((size, enc))
        };
        let (Some(ga), Some(gb)) = (geometry(a), geometry(b)) else {
            return Ok(None);
        };
        if ga != gb {
            return Ok(None);
        }
        let open = |p: &Path| crate::durable::open_regular(p).map_err(|e| Error::io("open", p, e));
        Ok(Some(RawPair {
            a: open(pa)?,
            b: open(pb)?,
            page_size: ga.0.unsigned_abs(),
        }))
    }

    /// The row count of `table` when its tree (rooted at the same page on both sides) is the
    /// same in both files; `None` when any page differs or cannot be read (the merge decides).
    pub fn same_tree(&self, a: &Connection, table: &str, root_a: i64, root_b: i64) -> Option<u64> {
        if root_a != root_b || root_a <= 0 {
            return None;
        }
        let mut stmt = a
            .prepare("SELECT pageno FROM dbstat WHERE name = ?1")
            .ok()?;
        let mut rows = stmt.query([table]).ok()?;
        let size = usize::try_from(self.page_size).ok()?;
        let (mut pa, mut pb) = (vec![0u8; size], vec![0u8; size]);
        while let Some(row) = rows.next().ok()? {
            let page: i64 = row.get(0).ok()?;
            let at = (page.unsigned_abs() - 1) * self.page_size;
            self.a.read_exact_at(&mut pa, at).ok()?;
            self.b.read_exact_at(&mut pb, at).ok()?;
            if pa != pb {
                return None;
            }
        }
        let q = format!("SELECT count(*) FROM {}", super::value::ident(table));
        a.query_row(&q, [], |r| r.get::<_, i64>(0))
            .ok()
            .map(i64::unsigned_abs)
    }
}
