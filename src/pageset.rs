//! The page-set format of incremental snapshots, and the page digests an incremental compares
//! the live database with.
//!
//! A page set (the raw stream inside an incremental's `pages.gz`, see `docs/FORMAT.md`):
//! ```text
//! "guardian-pages-1"            16 bytes
//! page size                     u32, big-endian
//! { page number u32 BE, page }  one record per stored page, page numbers strictly ascending
//! ```
//! Page digests (XXH3-128 of a page) only say "this page may have changed": they choose which
//! pages an incremental stores. What proves a snapshot is the SHA-256 of the whole rebuilt
//! database in its manifest, so a digest that wrongly matched would make the snapshot fail its
//! proof at restore, never restore a wrong database. Both digest files are local caches with a
//! SHA-256 trailer; a missing or damaged one is rebuilt from the store.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::SnapshotId;

/// The first bytes of a page set.
pub const MAGIC: &[u8; 16] = b"guardian-pages-1";
/// Magic of the base digests file (one digest per page of a full snapshot).
const BASE_MAGIC: &[u8; 16] = b"guardian-digest1";
/// Magic of an overlay file (the digests of pages that differ from the base, at a tip).
const OVERLAY_MAGIC: &[u8; 16] = b"guardian-overly1";

/// What a page's content is, for change detection.
pub type PageDigest = [u8; 16];

/// The digest of one page.
pub fn digest(page: &[u8]) -> PageDigest {
    xxhash_rust::xxh3::xxh3_128(page).to_le_bytes()
}

/// The header of a page set with pages of `page_size` bytes.
pub fn header(page_size: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&page_size.to_be_bytes());
    h
}

/// A `Write` sink that parses a page-set stream and hands each page to `on_page`. Bad input
/// (wrong magic or page size, pages out of order or past `max_pgno`, a record cut short) stops
/// it with an error, and [`PageSetParser::damage`] says what was wrong.
pub struct PageSetParser<F: FnMut(u32, &[u8]) -> io::Result<()>> {
    page_size: usize,
    max_pgno: u64,
    buf: Vec<u8>,
    header_done: bool,
    last: u32,
    records: u64,
    damage: Option<String>,
    on_page: F,
}

impl<F: FnMut(u32, &[u8]) -> io::Result<()>> PageSetParser<F> {
    pub fn new(page_size: u32, max_pgno: u64, on_page: F) -> Self {
        PageSetParser {
            page_size: page_size as usize,
            max_pgno,
            buf: Vec::with_capacity(4 + page_size as usize),
            header_done: false,
            last: 0,
            records: 0,
            damage: None,
            on_page,
        }
    }

    /// Why the stream was refused, if it was.
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// The number of records, once the stream ended cleanly.
    ///
    /// # Errors
    /// The stream stopped inside its header or a record.
    pub fn finish(mut self) -> Result<u64, String> {
        if let Some(d) = self.damage.take() {
            return Err(d);
        }
        if !self.header_done || !self.buf.is_empty() {
            return Err("the page set ends in the middle of a record".into());
        }
        Ok(self.records)
    }

    fn refuse(&mut self, why: String) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, why.clone());
        self.damage = Some(why);
        e
    }

    fn unit(&self) -> usize {
        if self.header_done {
            4 + self.page_size
        } else {
            MAGIC.len() + 4
        }
    }

    fn take_unit(&mut self, unit: &[u8]) -> io::Result<()> {
        if !self.header_done {
            if &unit[..16] != MAGIC {
                return Err(self.refuse("not a guardian page set (bad magic)".into()));
            }
            let size = u32::from_be_bytes(unit[16..20].try_into().expect("4 bytes")) as usize;
            if size != self.page_size {
                return Err(self.refuse(format!(
                    "the page set has pages of {size} bytes, the manifest says {}",
                    self.page_size
                )));
            }
            self.header_done = true;
            return Ok(());
        }
        let pgno = u32::from_be_bytes(unit[..4].try_into().expect("4 bytes"));
        if pgno <= self.last || u64::from(pgno) > self.max_pgno {
            return Err(self.refuse(format!(
                "page {pgno} is out of order or past the page count {}",
                self.max_pgno
            )));
        }
        self.last = pgno;
        self.records += 1;
        (self.on_page)(pgno, &unit[4..])
    }
}

impl<F: FnMut(u32, &[u8]) -> io::Result<()>> Write for PageSetParser<F> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        if self.damage.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "page set refused",
            ));
        }
        let n = data.len();
        while !data.is_empty() {
            let unit = self.unit();
            if self.buf.is_empty() && data.len() >= unit {
                let (head, rest) = data.split_at(unit);
                self.take_unit(head)?;
                data = rest;
                continue;
            }
            let want = unit - self.buf.len();
            let take = want.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == unit {
                let full = std::mem::take(&mut self.buf);
                self.take_unit(&full)?;
                self.buf = full;
                self.buf.clear();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a database's digest caches live: `{cache}/{db}/`.
pub fn cache_folder(cache: &Path, db: &str) -> PathBuf {
    cache.join(db)
}

fn base_path(cache: &Path, db: &str, base: &SnapshotId) -> PathBuf {
    cache_folder(cache, db).join(format!("{base}.digests"))
}

fn overlay_path(cache: &Path, db: &str, tip: &SnapshotId) -> PathBuf {
    cache_folder(cache, db).join(format!("{tip}.overlay"))
}

/// Writes a cache file atomically: a temp file with a SHA-256 trailer, fsynced, renamed.
struct CacheWriter {
    out: BufWriter<File>,
    hash: Sha256,
    temp: crate::durable::TempGuard,
    path: PathBuf,
}

impl CacheWriter {
    fn create(path: PathBuf) -> io::Result<Self> {
        let dir = crate::durable::parent_dir(&path).to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let (file, temp) = crate::durable::create_temp(&dir, "digests", "tmp", 0o600)?;
        Ok(CacheWriter {
            out: BufWriter::with_capacity(1 << 16, file),
            hash: Sha256::new(),
            temp: crate::durable::TempGuard::new(temp),
            path,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    fn commit(mut self) -> io::Result<()> {
        let trailer = self.hash.finalize();
        self.out.write_all(&trailer)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(self.temp.path(), &self.path)?;
        self.temp.disarm();
        Ok(())
    }
}

/// Reads a cache file whose SHA-256 trailer was checked first; `None` when it is absent or
/// damaged (then it is rebuilt from the store).
fn open_checked(path: &Path) -> Option<BufReader<File>> {
    // A FIFO or device planted at the name must not block the backup (which holds the lock).
    let mut f = crate::durable::open_regular(path).ok()?;
    let len = f.metadata().ok()?.len();
    let body = len.checked_sub(32)?;
    let mut hash = Sha256::new();
    io::copy(&mut (&mut f).take(body), &mut hash).ok()?;
    let mut trailer = [0u8; 32];
    f.read_exact(&mut trailer).ok()?;
    if hash.finalize().as_slice() != trailer {
        tracing::warn!(path = %path.display(), "page digest cache is damaged; rebuilding it from the store");
        return None;
    }
    // Readers stop before the trailer: they know their lengths from the header.
    Some(BufReader::with_capacity(
        1 << 16,
        crate::durable::open_regular(path).ok()?,
    ))
}

/// The page digests of a full snapshot, read in page order.
pub struct BaseDigests {
    reader: io::Take<BufReader<File>>,
    pub page_size: u32,
    pub page_count: u64,
}

impl BaseDigests {
    /// The cached digests of `base`, if present and intact.
    pub fn open(cache: &Path, db: &str, base: &SnapshotId) -> Option<Self> {
        let mut r = open_checked(&base_path(cache, db, base))?;
        let mut head = [0u8; 16 + 4 + 8 + 32];
        r.read_exact(&mut head).ok()?;
        if &head[..16] != BASE_MAGIC || &head[28..28 + 25] != base.as_str().as_bytes() {
            return None;
        }
        let page_size = u32::from_be_bytes(head[16..20].try_into().ok()?);
        let page_count = u64::from_be_bytes(head[20..28].try_into().ok()?);
        Some(BaseDigests {
            reader: r.take(page_count * 16),
            page_size,
            page_count,
        })
    }

    /// The next page's digest.
    pub fn next_digest(&mut self) -> io::Result<PageDigest> {
        let mut d = [0u8; 16];
        self.reader.read_exact(&mut d)?;
        Ok(d)
    }
}

/// Builds the digests file of a full snapshot from its raw pages, in order (a `Write` sink:
/// the full's copy is streamed through it, or its object is extracted into it).
pub struct BaseDigestsWriter {
    cache: CacheWriter,
    page_size: usize,
    buf: Vec<u8>,
    pages: u64,
}

impl BaseDigestsWriter {
    pub fn create(
        cache: &Path,
        db: &str,
        base: &SnapshotId,
        page_size: u32,
        page_count: u64,
    ) -> io::Result<Self> {
        let mut w = CacheWriter::create(base_path(cache, db, base))?;
        w.put(BASE_MAGIC)?;
        w.put(&page_size.to_be_bytes())?;
        w.put(&page_count.to_be_bytes())?;
        let mut id = [0u8; 32];
        id[..25].copy_from_slice(base.as_str().as_bytes());
        w.put(&id)?;
        Ok(BaseDigestsWriter {
            cache: w,
            page_size: page_size as usize,
            buf: Vec::with_capacity(page_size as usize),
            pages: 0,
        })
    }

    /// Keep the file, once every page went through (the count must match the header's).
    pub fn commit(self, page_count: u64) -> io::Result<()> {
        if self.pages != page_count || !self.buf.is_empty() {
            return Err(io::Error::other(format!(
                "{} pages were digested, {page_count} expected",
                self.pages
            )));
        }
        self.cache.commit()
    }
}

impl Write for BaseDigestsWriter {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (self.page_size - self.buf.len()).min(data.len());
            if self.buf.is_empty() && take == self.page_size {
                let d = digest(&data[..take]);
                self.cache.put(&d)?;
                self.pages += 1;
            } else {
                self.buf.extend_from_slice(&data[..take]);
                if self.buf.len() == self.page_size {
                    let d = digest(&self.buf);
                    self.cache.put(&d)?;
                    self.pages += 1;
                    self.buf.clear();
                }
            }
            data = &data[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The digests of the pages that differ from the base at one snapshot of a chain (its tip),
/// and the tip's page count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub page_count: u64,
    pub pages: BTreeMap<u32, PageDigest>,
}

impl Overlay {
    /// The cached overlay of `tip`, if present and intact.
    pub fn open(cache: &Path, db: &str, base: &SnapshotId, tip: &SnapshotId) -> Option<Self> {
        let mut r = open_checked(&overlay_path(cache, db, tip))?;
        let mut head = [0u8; 16 + 8 + 8 + 32 + 32];
        r.read_exact(&mut head).ok()?;
        if &head[..16] != OVERLAY_MAGIC
            || &head[32..32 + 25] != base.as_str().as_bytes()
            || &head[64..64 + 25] != tip.as_str().as_bytes()
        {
            return None;
        }
        let page_count = u64::from_be_bytes(head[16..24].try_into().ok()?);
        let entries = u64::from_be_bytes(head[24..32].try_into().ok()?);
        let mut pages = BTreeMap::new();
        let mut rec = [0u8; 20];
        for _ in 0..entries {
            r.read_exact(&mut rec).ok()?;
            let pgno = u32::from_be_bytes(rec[..4].try_into().ok()?);
            pages.insert(pgno, rec[4..].try_into().ok()?);
        }
        Some(Overlay { page_count, pages })
    }

    /// Cache this overlay as `tip`'s.
    pub fn save(
        &self,
        cache: &Path,
        db: &str,
        base: &SnapshotId,
        tip: &SnapshotId,
    ) -> io::Result<()> {
        let mut w = CacheWriter::create(overlay_path(cache, db, tip))?;
        w.put(OVERLAY_MAGIC)?;
        w.put(&self.page_count.to_be_bytes())?;
        w.put(&(self.pages.len() as u64).to_be_bytes())?;
        for id in [base, tip] {
            let mut b = [0u8; 32];
            b[..25].copy_from_slice(id.as_str().as_bytes());
            w.put(&b)?;
        }
        for (pgno, d) in &self.pages {
            w.put(&pgno.to_be_bytes())?;
            w.put(d)?;
        }
        w.commit()
    }
}

fn verified_path(cache: &Path, db: &str) -> PathBuf {
    cache_folder(cache, db).join("verified")
}

/// The objects of the current chain this host has read back and proved (their stored size
/// and SHA-256), so that each is read back once before incrementals build on it, not on every
/// incremental. One `key sha256` per line; a lost or damaged file only means reading again.
#[derive(Debug, Default)]
pub struct Verified {
    seen: std::collections::BTreeSet<String>,
}

impl Verified {
    /// What the cache says was proved (nothing when absent or unreadable).
    pub fn load(cache: &Path, db: &str) -> Self {
        let seen = open_checked(&verified_path(cache, db))
            .and_then(|mut r| {
                let mut bytes = Vec::new();
                r.read_to_end(&mut bytes).ok()?;
                bytes.truncate(bytes.len().checked_sub(32)?); // the SHA-256 trailer
                let text = String::from_utf8(bytes).ok()?;
                Some(text.lines().map(String::from).collect())
            })
            .unwrap_or_default();
        Verified { seen }
    }

    fn line(key: &str, sha256: &str) -> String {
        format!("{key} {sha256}")
    }

    pub fn contains(&self, key: &str, sha256: &str) -> bool {
        self.seen.contains(&Self::line(key, sha256))
    }

    pub fn insert(&mut self, key: &str, sha256: &str) {
        self.seen.insert(Self::line(key, sha256));
    }

    /// Keep only `objects` (the chain's) and write the file.
    pub fn save(&mut self, cache: &Path, db: &str, objects: &[(String, String)]) -> io::Result<()> {
        let keep: std::collections::BTreeSet<String> =
            objects.iter().map(|(k, s)| Self::line(k, s)).collect();
        self.seen.retain(|l| keep.contains(l));
        let mut w = CacheWriter::create(verified_path(cache, db))?;
        for l in &self.seen {
            w.put(l.as_bytes())?;
            w.put(b"\n")?;
        }
        w.commit()
    }
}

/// Remove a database's cached digests except those of `base` and the overlay of `tip`.
pub fn keep_only(cache: &Path, db: &str, base: &SnapshotId, tip: Option<&SnapshotId>) {
    let keep = [
        Some(base_path(cache, db, base)),
        tip.map(|t| overlay_path(cache, db, t)),
        Some(verified_path(cache, db)),
    ];
    let Ok(entries) = std::fs::read_dir(cache_folder(cache, db)) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if keep.iter().flatten().any(|k| *k == path) {
            continue;
        }
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::debug!(path = %path.display(), error = %err, "could not remove an old digest cache");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sets_parse_back_and_refuse_damage() {
        let mut stream = header(512);
        for pgno in [1u32, 7, 9] {
            stream.extend_from_slice(&pgno.to_be_bytes());
            stream.extend(std::iter::repeat_n(pgno as u8, 512));
        }
        // Whole, and fed in awkward pieces.
        for piece in [stream.len(), 1, 7, 513] {
            let mut got = Vec::new();
            let mut p = PageSetParser::new(512, 9, |n, page: &[u8]| {
                assert_eq!(page.len(), 512);
                got.push((n, page[0]));
                Ok(())
            });
            for chunk in stream.chunks(piece) {
                p.write_all(chunk).unwrap();
            }
            assert_eq!(p.finish().unwrap(), 3);
            assert_eq!(got, [(1, 1), (7, 7), (9, 9)]);
        }
        let refused = |s: &[u8], max: u64| {
            let mut p = PageSetParser::new(512, max, |_, _: &[u8]| Ok(()));
            let wrote = p.write_all(s);
            wrote.is_err() || p.finish().is_err()
        };
        assert!(refused(&stream, 8), "a page past the count");
        assert!(
            refused(&stream[..stream.len() - 1], 9),
            "a record cut short"
        );
        assert!(refused(&stream[..10], 9), "a header cut short");
        let mut bad = stream.clone();
        bad[0] = b'x';
        assert!(refused(&bad, 9), "bad magic");
        let mut swapped = header(512);
        for pgno in [7u32, 1] {
            swapped.extend_from_slice(&pgno.to_be_bytes());
            swapped.extend([0u8; 512]);
        }
        assert!(refused(&swapped, 9), "pages out of order");
        let mut p = PageSetParser::new(512, 9, |_, _: &[u8]| Ok(()));
        assert!(p.write_all(&header(1024)).is_err(), "another page size");
    }

    #[test]
    fn digest_caches_round_trip_and_refuse_damage() {
        let dir = tempfile::tempdir().unwrap();
        let base: SnapshotId = "20261205T000000Z-a1b2c3d4".parse().unwrap();
        let tip: SnapshotId = "20261205T001500Z-a1b2c3d5".parse().unwrap();
        let mut w = BaseDigestsWriter::create(dir.path(), "shop", &base, 512, 3).unwrap();
        let pages: Vec<u8> = (0..3u8).flat_map(|i| [i; 512]).collect();
        w.write_all(&pages[..700]).unwrap();
        w.write_all(&pages[700..]).unwrap();
        w.commit(3).unwrap();
        let mut b = BaseDigests::open(dir.path(), "shop", &base).unwrap();
        assert_eq!((b.page_size, b.page_count), (512, 3));
        for i in 0..3u8 {
            assert_eq!(b.next_digest().unwrap(), digest(&[i; 512]));
        }
        assert!(b.next_digest().is_err(), "the trailer is not a digest");
        assert!(BaseDigests::open(dir.path(), "shop", &tip).is_none());

        let o = Overlay {
            page_count: 4,
            pages: BTreeMap::from([(2, digest(b"x")), (4, digest(b"y"))]),
        };
        o.save(dir.path(), "shop", &base, &tip).unwrap();
        assert_eq!(Overlay::open(dir.path(), "shop", &base, &tip), Some(o));
        // A flipped byte anywhere makes the cache unusable (rebuilt from the store).
        let path = overlay_path(dir.path(), "shop", &tip);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(Overlay::open(dir.path(), "shop", &base, &tip), None);

        keep_only(dir.path(), "shop", &tip, None);
        assert!(BaseDigests::open(dir.path(), "shop", &base).is_none());
    }
}
