//! Rebuilding an incremental snapshot from the parts its manifest names, in bounded memory.
//!
//! 1. Each page set, oldest first, is streamed into the target file: every page at its offset
//!    (a newer copy overwrites an older one), pages past the snapshot's page count dropped. A
//!    bitmap (one bit per page) remembers which pages came from page sets.
//! 2. The base's whole object is streamed once: pages no page set holds are written in place,
//!    the others are read back from the file, and every page of the result goes through one
//!    SHA-256 in page order.
//! 3. Pages past the base's end must all have come from page sets; the hash of the whole file
//!    must be the manifest's `raw_sha256`. Anything else is [`Damage`], never a wrong database.
//!
//! Every part's stored and raw SHA-256 are checked against the manifest on the way.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{Fetched, SnapshotReader};
use crate::archive::Digests;
use crate::damage::Damage;
use crate::error::{Error, Result};
use crate::manifest::{PageChain, Part, Sha256Hex};
use crate::pageset::PageSetParser;

/// One bit per page: set when a page set supplied the page.
type Bitmap = Arc<Mutex<Vec<u64>>>;

fn bit(bits: &[u64], pgno: u64) -> bool {
    bits.get((pgno / 64) as usize)
        .is_some_and(|w| w & (1 << (pgno % 64)) != 0)
}

/// Rebuild the snapshot `reader` reads (an incremental whose chain is `c`) into `file`.
/// `Ok(Err(damage))`: a part is missing or bad, or the result is not the manifest's.
///
/// # Errors
/// Operational failures only: the store is unreachable, the disk is full, no key fits.
pub(crate) async fn rebuild(
    reader: &SnapshotReader,
    c: &PageChain,
    file: &File,
    path: &Path,
) -> Result<std::result::Result<Digests, Damage>> {
    let m = reader.manifest().clone();
    // Pages are read back from the file (the caller's handle may be write-only).
    let _ = file;
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("reopen", path, e))?,
    );
    let bits: Bitmap = Arc::new(Mutex::new(vec![0u64; (m.page_count / 64 + 1) as usize]));
    let page_size = m.page_size as usize;
    for part in &c.parts[1..] {
        let sink = {
            let (file, bits, count) = (Arc::clone(&file), Arc::clone(&bits), m.page_count);
            PageSetParser::new(
                m.page_size as u32,
                part.page_count,
                move |pgno, page: &[u8]| {
                    let pgno = u64::from(pgno);
                    if pgno > count {
                        return Ok(()); // the database shrank since: the page is gone
                    }
                    file.write_all_at(page, (pgno - 1) * page.len() as u64)?;
                    let mut bits = bits.lock().expect("no panic holding the bitmap");
                    bits[(pgno / 64) as usize] |= 1 << (pgno % 64);
                    Ok(())
                },
            )
        };
        let key = part.key(&m.db);
        let fetched = reader
            .fetch(
                key.clone(),
                part.encryption.is_some(),
                part.stored_len,
                part.raw_len,
                sink,
            )
            .await?;
        let parser = match fetched {
            Fetched::Done(d, parser) => match prove_part(part, &d, &m.db, true) {
                Err(damage) => return Ok(Err(damage)),
                Ok(()) => parser,
            },
            Fetched::Damaged(d) => return Ok(Err(d)),
            Fetched::SinkFailed(e, parser) => match parser.damage() {
                Some(why) => return Ok(Err(Damage::Undecodable(format!("{key}: {why}")))),
                None => return Err(Error::io("restore into", path, e)),
            },
        };
        match parser.finish() {
            Ok(n) if n == part.pages => {}
            Ok(n) => {
                return Ok(Err(Damage::Undecodable(format!(
                    "{key}: holds {n} pages, the manifest says {}",
                    part.pages
                ))))
            }
            Err(why) => return Ok(Err(Damage::Undecodable(format!("{key}: {why}")))),
        }
    }

    let base = &c.parts[0];
    let bits = std::mem::take(&mut *bits.lock().expect("no panic holding the bitmap"));
    let merger = Merger {
        file: Arc::clone(&file),
        bits,
        page_size,
        page_count: m.page_count,
        pgno: 0,
        buf: Vec::with_capacity(page_size),
        run: Vec::with_capacity(RUN_BYTES),
        run_start: 0,
        hash: Sha256::new(),
    };
    let key = base.key(&m.db);
    // The base's own raw SHA-256 is not computed: every page of it that is in the result goes
    // through the SHA-256 of the rebuilt database (one hash pass over the database, not two).
    let fetched = reader
        .fetch_with(
            key.clone(),
            base.encryption.is_some(),
            base.stored_len,
            base.raw_len,
            merger,
            false,
        )
        .await?;
    let merger = match fetched {
        Fetched::Done(d, merger) => match prove_part(base, &d, &m.db, false) {
            Err(damage) => return Ok(Err(damage)),
            Ok(()) => merger,
        },
        Fetched::Damaged(d) => return Ok(Err(d)),
        Fetched::SinkFailed(e, _) => return Err(Error::io("restore into", path, e)),
    };
    let raw_sha256 = match merger.finish() {
        Ok(Ok(h)) => h,
        Ok(Err(damage)) => return Ok(Err(damage)),
        Err(e) => return Err(Error::io("restore into", path, e)),
    };
    if raw_sha256 != m.raw_sha256 {
        return Ok(Err(Damage::RawChecksum {
            expected: m.raw_sha256.clone(),
            actual: raw_sha256,
        }));
    }
    file.set_len(m.raw_len)
        .map_err(|e| Error::io("restore into", path, e))?;
    Ok(Ok(Digests {
        raw_len: m.raw_len,
        raw_sha256,
        stored_len: m.stored_len(),
        stored_sha256: m.stored_sha256().clone(),
    }))
}

/// A part's digests against what the manifest recorded for it (the raw SHA-256 only when it
/// was computed: `raw_hashed`).
fn prove_part(
    part: &Part,
    d: &Digests,
    db: &str,
    raw_hashed: bool,
) -> std::result::Result<(), Damage> {
    if d.stored_len != part.stored_len || d.stored_sha256 != part.stored_sha256 {
        return Err(Damage::Part {
            object: part.key(db).to_string(),
            damage: Box::new(Damage::StoredChecksum {
                expected_len: part.stored_len,
                expected: part.stored_sha256.clone(),
                actual_len: d.stored_len,
                actual: d.stored_sha256.clone(),
            }),
        });
    }
    if d.raw_len != part.raw_len || (raw_hashed && d.raw_sha256 != part.raw_sha256) {
        return Err(Damage::Part {
            object: part.key(db).to_string(),
            damage: Box::new(Damage::RawChecksum {
                expected: part.raw_sha256.clone(),
                actual: d.raw_sha256.clone(),
            }),
        });
    }
    Ok(())
}

/// Consecutive base pages written with one call.
const RUN_BYTES: usize = 1 << 20;

/// The `Write` sink the base's pages stream into (see the module doc, step 2).
struct Merger {
    file: Arc<File>,
    bits: Vec<u64>,
    page_size: usize,
    page_count: u64,
    /// Pages of the base seen so far.
    pgno: u64,
    buf: Vec<u8>,
    /// Base pages waiting to be written, starting at page `run_start`.
    run: Vec<u8>,
    run_start: u64,
    hash: Sha256,
}

impl Merger {
    fn offset(&self, pgno: u64) -> u64 {
        (pgno - 1) * self.page_size as u64
    }

    fn flush_run(&mut self) -> io::Result<()> {
        if !self.run.is_empty() {
            self.file
                .write_all_at(&self.run, self.offset(self.run_start))?;
            self.run.clear();
        }
        Ok(())
    }

    /// The page from a page set, already in the file.
    fn hash_from_file(&mut self, pgno: u64) -> io::Result<()> {
        let mut page = vec![0u8; self.page_size];
        self.file.read_exact_at(&mut page, self.offset(pgno))?;
        self.hash.update(&page);
        Ok(())
    }

    fn take_page(&mut self, page: &[u8]) -> io::Result<()> {
        self.pgno += 1;
        let pgno = self.pgno;
        if pgno > self.page_count {
            return Ok(()); // the database shrank since the base
        }
        if bit(&self.bits, pgno) {
            self.flush_run()?;
            return self.hash_from_file(pgno);
        }
        if self.run.is_empty() {
            self.run_start = pgno;
        }
        self.run.extend_from_slice(page);
        self.hash.update(page);
        if self.run.len() >= RUN_BYTES {
            self.flush_run()?;
        }
        Ok(())
    }

    /// Hash the pages past the base's end (each must have come from a page set); the SHA-256
    /// of the whole rebuilt file.
    fn finish(mut self) -> io::Result<std::result::Result<Sha256Hex, Damage>> {
        self.flush_run()?;
        if !self.buf.is_empty() {
            return Ok(Err(Damage::Undecodable(
                "the base object is not a whole number of pages".into(),
            )));
        }
        for pgno in self.pgno + 1..=self.page_count {
            if !bit(&self.bits, pgno) {
                return Ok(Err(Damage::Undecodable(format!(
                    "page {pgno} is in no part of the chain"
                ))));
            }
            self.hash_from_file(pgno)?;
        }
        Ok(Ok(Sha256Hex::from_digest(&self.hash.finalize())))
    }
}

impl Write for Merger {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let want = self.page_size - self.buf.len();
            if self.buf.is_empty() && data.len() >= self.page_size {
                let (page, rest) = data.split_at(self.page_size);
                self.take_page(page)?;
                data = rest;
                continue;
            }
            let take = want.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.page_size {
                let page = std::mem::take(&mut self.buf);
                self.take_page(&page)?;
                self.buf = page;
                self.buf.clear();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
