//! Decompression of a multi-member gzip stream on every core, written in order.
//!
//! guardian stores a database as independent gzip members of [`BLOCK_SIZE`](super::BLOCK_SIZE)
//! raw bytes each. Gzip does not record where a member ends, so the stream is cut at every
//! place where a member *could* start (`1f 8b 08` and a flag byte with its reserved bits clear):
//! every real member start is such a place, and a few others occur by chance inside
//! compressed data (about one per 128 MiB). Workers decompress the pieces with libdeflate and
//! accept one only if it is exactly one member: a 10-byte header, a deflate stream that ends
//! in the piece, and a trailer whose CRC-32 and length match the output. A piece cut short at a
//! false start fails that test (a prefix of a deflate stream is never a complete one), so the
//! writer joins it to the next piece and tries again, on its own thread.
//!
//! Anything else (a stream that does not start with a member, a member bigger than
//! [`MEMBER_MAX`], damage that joining cannot explain) goes to the streaming decoder
//! (`flate2::MultiGzDecoder`) from the last accepted member on, so the verdict on damaged or
//! foreign gzip is exactly the streaming decoder's. Memory is bounded: a fixed number of
//! pieces in flight, each at most [`MEMBER_MAX`] stored plus its raw bytes.
//!
//! The buffers of both sides go back to a [`Pool`] once written, and the next members reuse
//! them. guardian has glibc map every block over 128 KiB and unmap it on free (`main.rs`), so a
//! fresh buffer per member cost a page fault per 4 KiB and a TLB flush on every core when
//! unmapped: on the 1 GiB bench database, 0.7 s of the restore's 1.4 s of system time.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::read::MultiGzDecoder;

use crate::storage::CHUNK_SIZE;

/// The largest member (stored or raw) decompressed in parallel; four times the block size
/// that guardian writes, so a future block size still takes the fast path.
pub const MEMBER_MAX: usize = 4 << 20;

/// The smallest possible gzip member: 10-byte header, 2-byte empty deflate block, 8-byte trailer.
const MEMBER_MIN: usize = 20;

/// How much the splitter reads at a time.
const READ_SIZE: usize = 256 << 10;

/// One piece of the stored stream, in stream order.
enum Piece {
    /// Bytes from one possible member start to the next, and the worker's answer: the raw
    /// bytes if the piece is exactly one valid member, `None` otherwise.
    Member {
        stored: Arc<Vec<u8>>,
        decoded: Receiver<Option<Vec<u8>>>,
    },
    /// Bytes that are not cut into members (a foreign stream): for the streaming decoder.
    Raw(Vec<u8>),
    /// Reading or decrypting the stored stream failed here.
    Failed(io::Error),
}

type Job = (Arc<Vec<u8>>, SyncSender<Option<Vec<u8>>>);

/// Buffers handed back for reuse: at most `max` are kept, the rest are freed.
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    max: usize,
}

impl Pool {
    fn new(max: usize) -> Self {
        Pool {
            free: Mutex::new(Vec::new()),
            max,
        }
    }

    /// A buffer of `len` bytes. A reused one keeps its old bytes (every caller overwrites all
    /// of them), so it is zeroed only where it grows.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self
            .free
            .lock()
            .expect("no pool user panics holding the lock")
            .pop()
            .unwrap_or_default();
        v.resize(len, 0);
        v
    }

    fn give(&self, v: Vec<u8>) {
        let mut free = self
            .free
            .lock()
            .expect("no pool user panics holding the lock");
        if free.len() < self.max {
            free.push(v);
        }
    }

    /// Give `stored` back if nothing else holds it (a worker lets go before it answers).
    fn give_shared(&self, stored: Arc<Vec<u8>>) {
        if let Ok(v) = Arc::try_unwrap(stored) {
            self.give(v);
        }
    }
}

/// Why [`decode`] stopped early.
#[derive(Debug)]
pub enum Stop<E> {
    /// Reading `plain` failed, or the gzip data is bad (the streaming decoder's error, so the
    /// message is the one a sequential decode gives).
    Io(io::Error),
    /// `out` refused the data: its error, untouched.
    Out(E),
}

/// Decompress the gzip stream `plain` yields on `threads` threads, passing the raw bytes in
/// order to `out` (which stops the pass by returning `Err`). Returns once `plain` has reached
/// its end and every member was passed on, or at the first error.
///
/// # Errors
/// See [`Stop`].
pub fn decode<E>(
    plain: &mut (dyn Read + Send),
    threads: usize,
    out: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), Stop<E>> {
    let threads = threads.max(1);
    // Set once the rest goes to the streaming decoder: workers then stop decompressing.
    let sequential = AtomicBool::new(false);
    // Enough for every piece the channels below can hold, and the ones being worked on.
    let raw_pool = Pool::new(2 * threads + 4);
    let stored_pool = Pool::new(2 * threads + 4);
    std::thread::scope(|s| {
        let (work_tx, work_rx) = mpsc::sync_channel::<Job>(threads);
        let work_rx = Arc::new(Mutex::new(work_rx));
        for _ in 0..threads {
            let work_rx = Arc::clone(&work_rx);
            let (sequential, raw_pool) = (&sequential, &raw_pool);
            s.spawn(move || {
                let mut decompressor = libdeflater::Decompressor::new();
                loop {
                    let job = work_rx
                        .lock()
                        .expect("no worker panics holding the lock")
                        .recv();
                    let Ok((stored, reply)) = job else { break };
                    let raw = if sequential.load(Ordering::Relaxed) {
                        None
                    } else {
                        decode_member(&stored, &mut decompressor, raw_pool)
                    };
                    // Let go of `stored` first, so that the writer can reuse it.
                    drop(stored);
                    let _ = reply.send(raw);
                }
            });
        }
        let (order_tx, order_rx) = mpsc::sync_channel::<Piece>(threads + 2);
        // The splitter stops at its next send once the writer is gone.
        let stored_pool_ref = &stored_pool;
        s.spawn(move || split(plain, &order_tx, &work_tx, stored_pool_ref));
        write_in_order(order_rx, &sequential, out, &raw_pool, &stored_pool)
    })
}

/// Cut `plain` into pieces at every possible member start and queue them, in order, for the
/// workers and the writer. Returns when `plain` ends, it fails (queued as `Failed` too), or
/// the writer stopped.
fn split(
    plain: &mut (dyn Read + Send),
    order_tx: &SyncSender<Piece>,
    work_tx: &SyncSender<Job>,
    pool: &Pool,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(MEMBER_MAX + READ_SIZE);
    // Where the search for the next member start resumes (everything before it was searched).
    let mut searched = MEMBER_MIN;
    let mut raw_mode = false;
    let mut sent_any = false;
    let mut chunk = vec![0u8; READ_SIZE];
    loop {
        let n = match crate::durable::read_full(&mut &mut *plain, &mut chunk) {
            Ok(n) => n,
            Err(e) => {
                let _ = order_tx.send(Piece::Failed(e));
                return;
            }
        };
        if n == 0 {
            break;
        }
        if raw_mode {
            sent_any = true;
            if order_tx.send(Piece::Raw(chunk[..n].to_vec())).is_err() {
                return;
            }
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 4 && !could_start_member(&buf) {
            raw_mode = true;
        }
        while !raw_mode {
            match next_start(&buf, searched) {
                Some(at) => {
                    let mut stored = pool.take(0);
                    stored.extend_from_slice(&buf[..at]);
                    buf.drain(..at);
                    sent_any = true;
                    if !send_member(stored, order_tx, work_tx) {
                        return;
                    }
                    searched = MEMBER_MIN;
                }
                None if buf.len() > MEMBER_MAX => raw_mode = true,
                None => {
                    // The last 3 bytes may be the beginning of a start: search them again.
                    searched = searched.max(buf.len().saturating_sub(3));
                    break;
                }
            }
        }
        if raw_mode && !buf.is_empty() {
            sent_any = true;
            if order_tx.send(Piece::Raw(std::mem::take(&mut buf))).is_err() {
                return;
            }
        }
    }
    if buf.len() >= MEMBER_MIN && could_start_member(&buf) {
        send_member(buf, order_tx, work_tx);
    } else if !buf.is_empty() || !sent_any {
        // Not a member (or nothing at all): the streaming decoder gives the verdict.
        let _ = order_tx.send(Piece::Raw(buf));
    }
}

/// Queue `stored` for a worker and its answer for the writer. False when the writer stopped.
fn send_member(stored: Vec<u8>, order_tx: &SyncSender<Piece>, work_tx: &SyncSender<Job>) -> bool {
    let stored = Arc::new(stored);
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    // The writer's slot first, so that the writer waits on the answer in stream order.
    order_tx
        .send(Piece::Member {
            stored: Arc::clone(&stored),
            decoded: reply_rx,
        })
        .is_ok()
        && work_tx.send((stored, reply_tx)).is_ok()
}

/// Whether `b` begins like a gzip member: ID1 ID2, CM = deflate, reserved flag bits clear
/// (RFC 1952 §2.3.1). Every real member start passes; some other positions do by chance.
fn could_start_member(b: &[u8]) -> bool {
    b[0] == 0x1f && b[1] == 0x8b && b[2] == 8 && b[3] & 0xe0 == 0
}

/// The first possible member start at or after `from`, if the whole 4-byte test fits in `buf`.
fn next_start(buf: &[u8], from: usize) -> Option<usize> {
    if buf.len() < 4 || from > buf.len() - 4 {
        return None;
    }
    let mut i = from;
    while let Some(off) = buf[i..buf.len() - 3].iter().position(|&b| b == 0x1f) {
        let at = i + off;
        if could_start_member(&buf[at..]) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// The raw bytes of `stored` if it is exactly one gzip member with a plain 10-byte header
/// (no optional fields, as guardian writes), whose deflate data decodes to the length and
/// CRC-32 of its trailer; `None` otherwise.
///
/// libdeflate returns an error when the deflate stream needs more input than it was given, so
/// a piece cut short is never accepted; a piece that holds more than one member cannot happen
/// (every member start is a cut), and trailing junk before the trailer leaves the stored
/// SHA-256 to report it.
fn decode_member(
    stored: &[u8],
    decompressor: &mut libdeflater::Decompressor,
    pool: &Pool,
) -> Option<Vec<u8>> {
    let n = stored.len();
    if n < MEMBER_MIN || stored[..4] != [0x1f, 0x8b, 8, 0] {
        return None;
    }
    let le32 = |at: usize| {
        u32::from_le_bytes(
            stored[at..at + 4]
                .try_into()
                .expect("a 4-byte slice is 4 bytes"),
        )
    };
    let (crc, len) = (le32(n - 8), le32(n - 4) as usize);
    if len > MEMBER_MAX {
        return None;
    }
    let mut raw = pool.take(len);
    let good = decompressor
        .deflate_decompress(&stored[10..n - 8], &mut raw)
        .is_ok_and(|got| got == len && libdeflater::crc32(&raw) == crc);
    if good {
        Some(raw)
    } else {
        pool.give(raw);
        None
    }
}

/// Take the pieces in stream order and pass their raw bytes to `out`; join pieces that were
/// cut at a false start; hand the rest of the stream to the streaming decoder when the pieces
/// are not members.
fn write_in_order<E>(
    order_rx: Receiver<Piece>,
    sequential: &AtomicBool,
    out: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    raw_pool: &Pool,
    stored_pool: &Pool,
) -> Result<(), Stop<E>> {
    let mut decompressor = libdeflater::Decompressor::new();
    // Stored bytes since the last accepted member that no piece decoded on its own.
    let mut pending: Vec<u8> = Vec::new();
    let mut pieces = order_rx.iter();
    loop {
        let Some(piece) = pieces.next() else {
            if pending.is_empty() {
                return Ok(());
            }
            break;
        };
        match piece {
            Piece::Member { stored, decoded } if pending.is_empty() => {
                match decoded.recv().ok().flatten() {
                    Some(raw) => {
                        out(&raw).map_err(Stop::Out)?;
                        raw_pool.give(raw);
                    }
                    None => pending.extend_from_slice(&stored),
                }
                stored_pool.give_shared(stored);
            }
            Piece::Member { stored, .. } => {
                pending.extend_from_slice(&stored);
                stored_pool.give_shared(stored);
                match decode_member(&pending, &mut decompressor, raw_pool) {
                    Some(raw) => {
                        out(&raw).map_err(Stop::Out)?;
                        raw_pool.give(raw);
                        pending.clear();
                    }
                    None if pending.len() > MEMBER_MAX => break,
                    None => {}
                }
            }
            Piece::Raw(bytes) => {
                pending.extend_from_slice(&bytes);
                break;
            }
            Piece::Failed(e) if pending.is_empty() => return Err(Stop::Io(e)),
            Piece::Failed(e) => {
                // The streaming decoder reads up to the failure: bad data before it is
                // reported as bad data, not as a failed read.
                return stream_rest(pending, std::iter::once(Piece::Failed(e)), out);
            }
        }
    }
    sequential.store(true, Ordering::Relaxed);
    stream_rest(pending, pieces, out)
}

/// Decode `pending` and every later piece's stored bytes with the streaming decoder.
fn stream_rest<E>(
    pending: Vec<u8>,
    pieces: impl Iterator<Item = Piece>,
    out: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), Stop<E>> {
    let mut reader = PieceReader {
        cur: pending,
        pos: 0,
        rest: pieces,
    };
    let mut gz = MultiGzDecoder::new(&mut reader);
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        match crate::durable::read_full(&mut gz, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out(&buf[..n]).map_err(Stop::Out)?,
            Err(e) => return Err(Stop::Io(e)),
        }
    }
}

/// The stored bytes of the remaining pieces as one stream.
struct PieceReader<I> {
    cur: Vec<u8>,
    pos: usize,
    rest: I,
}

impl<I: Iterator<Item = Piece>> Read for PieceReader<I> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            self.pos = 0;
            self.cur = match self.rest.next() {
                None => return Ok(0),
                Some(Piece::Member { stored, .. }) => {
                    Arc::try_unwrap(stored).unwrap_or_else(|shared| shared.to_vec())
                }
                Some(Piece::Raw(bytes)) => bytes,
                Some(Piece::Failed(e)) => {
                    self.cur = Vec::new();
                    return Err(e);
                }
            };
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Raw bytes that are full of gzip member starts (`1f 8b 08 00`), with varied filler.
    fn start_laden(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i = 0u32;
        while v.len() < len {
            v.extend_from_slice(&[0x1f, 0x8b, 8, 0]);
            v.extend_from_slice(&i.to_le_bytes());
            v.extend_from_slice(format!("row {i} ").as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    /// One gzip member whose deflate data is stored (uncompressed) blocks: any member start in
    /// `raw` appears verbatim inside it.
    fn stored_member(raw: &[u8]) -> Vec<u8> {
        let mut m = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let blocks: Vec<&[u8]> = if raw.is_empty() {
            vec![&[]]
        } else {
            raw.chunks(65535).collect()
        };
        for (i, block) in blocks.iter().enumerate() {
            m.push(u8::from(i + 1 == blocks.len()));
            let len = u16::try_from(block.len()).unwrap();
            m.extend_from_slice(&len.to_le_bytes());
            m.extend_from_slice(&(!len).to_le_bytes());
            m.extend_from_slice(block);
        }
        m.extend_from_slice(&libdeflater::crc32(raw).to_le_bytes());
        m.extend_from_slice(&u32::try_from(raw.len()).unwrap().to_le_bytes());
        m
    }

    fn flate2_member(raw: &[u8], name: Option<&str>) -> Vec<u8> {
        let mut b = flate2::GzBuilder::new();
        if let Some(name) = name {
            b = b.filename(name);
        }
        let mut enc = b.write(Vec::new(), flate2::Compression::new(6));
        enc.write_all(raw).unwrap();
        enc.finish().unwrap()
    }

    fn guardian_members(raw: &[u8]) -> Vec<u8> {
        let mut stored = Vec::new();
        super::super::compress(raw, 1, 2, &|_| {}, None, |b| {
            stored.extend_from_slice(&b);
            Ok(())
        })
        .unwrap();
        stored
    }

    /// What `decode` makes of `stored`, and how many members the streaming decoder would
    /// have had to decode (the output is checked against a plain sequential decode).
    fn run(stored: &[u8], threads: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut src = stored;
        decode::<()>(&mut src, threads, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .map_err(|e| match e {
            Stop::Io(e) => e,
            Stop::Out(()) => unreachable!("the test's sink never refuses"),
        })?;
        Ok(out)
    }

    fn sequential(stored: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        MultiGzDecoder::new(stored).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn false_member_starts_inside_members_are_joined_back() {
        // Three members of 300 KiB, each with thousands of false starts inside.
        let raws: Vec<Vec<u8>> = (0..3).map(|i| start_laden(300_000 + i)).collect();
        let stored: Vec<u8> = raws.iter().flat_map(|r| stored_member(r)).collect();
        let want: Vec<u8> = raws.concat();
        for threads in [1, 3] {
            assert!(run(&stored, threads).unwrap() == want, "threads {threads}");
        }
    }

    #[test]
    fn foreign_gzip_is_decoded_like_the_streaming_decoder_does() {
        let raw = start_laden(6 << 20);
        let cases = [
            // One member larger than MEMBER_MAX (what a plain gzip writes).
            flate2_member(&raw, None),
            // A member with a file name in its header, between guardian members.
            [
                guardian_members(&raw[..2 << 20]),
                flate2_member(&raw[2 << 20..3 << 20], Some("db.sqlite")),
                guardian_members(&raw[3 << 20..]),
            ]
            .concat(),
            // An empty member, and a stream that is not gzip at all.
            flate2_member(b"", None),
            Vec::new(),
            b"not gzip".to_vec(),
            vec![0x1f, 0x8b],
        ];
        for (i, stored) in cases.iter().enumerate() {
            let got = run(stored, 2).map_err(|e| e.to_string());
            let want = sequential(stored).map_err(|e| e.to_string());
            assert!(got == want, "case {i}: {:?} vs {:?}", got.err(), want.err());
        }
    }

    #[test]
    fn damage_in_the_middle_is_an_error_never_other_bytes() {
        let raw = start_laden(5 << 20);
        let stored = guardian_members(&raw);
        let mid = stored.len() / 2;
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut mid-stream", stored[..mid].to_vec()),
            (
                "bytes missing mid-member",
                [&stored[..mid], &stored[mid + 1000..]].concat(),
            ),
            (
                "junk between members",
                [
                    &stored[..stored.len() - 1],
                    b"junk".as_slice(),
                    &stored[stored.len() - 1..],
                ]
                .concat(),
            ),
            (
                "trailing junk",
                [&stored[..], b"\x1f\x8b\x08\x00junk"].concat(),
            ),
        ];
        for at in [mid, 12, stored.len() - 3, stored.len() - 7] {
            let mut flipped = stored.clone();
            flipped[at] ^= 0x10;
            cases.push(("flipped byte", flipped));
        }
        for (what, bad) in &cases {
            let got = run(bad, 2);
            assert!(got.is_err(), "{what}: decoded {} bytes", got.unwrap().len());
            assert!(
                sequential(bad).is_err(),
                "{what}: the streaming decoder agrees"
            );
        }
    }

    #[test]
    fn a_failed_read_stops_the_pass_with_that_error() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("connection reset"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let stored = guardian_members(&start_laden(3 << 20));
        for cut in [0, 100, stored.len() / 2, stored.len()] {
            let mut src = Failing(&stored[..cut]);
            let err = decode::<()>(&mut src, 2, &mut |_| Ok(())).unwrap_err();
            assert!(
                matches!(&err, Stop::Io(e) if e.to_string().contains("connection reset")),
                "cut {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn a_refusing_sink_stops_the_pass() {
        let stored = guardian_members(&start_laden(8 << 20));
        let mut calls = 0;
        let mut src = &stored[..];
        let err = decode(&mut src, 2, &mut |_| {
            calls += 1;
            if calls == 3 {
                Err("disk full")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(err, Stop::Out("disk full")));
        assert_eq!(calls, 3, "nothing is written after the refusal");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the damage, the verdict and the bytes are the streaming decoder's.
        #[test]
        fn damaged_streams_get_the_streaming_decoders_verdict(
            cut in 0.0f64..1.0,
            flip in proptest::option::of((0.0f64..1.0, 1u8..=255)),
            hole in proptest::option::of((0.0f64..1.0, 1usize..5000)),
        ) {
            use std::sync::OnceLock;
            static STORED: OnceLock<Vec<u8>> = OnceLock::new();
            let stored = STORED.get_or_init(|| {
                [guardian_members(&start_laden(3 << 20)), stored_member(&start_laden(200_000))].concat()
            });
            let mut bad = stored.clone();
            if let Some((at, mask)) = flip {
                let at = (at * bad.len() as f64) as usize;
                bad[at] ^= mask;
            }
            if let Some((at, len)) = hole {
                let at = (at * bad.len() as f64) as usize;
                bad.drain(at..(at + len).min(bad.len()));
            }
            if cut < 0.3 {
                bad.truncate((cut / 0.3 * bad.len() as f64) as usize);
            }
            let got = run(&bad, 2).map_err(|e| e.kind());
            let want = sequential(&bad).map_err(|e| e.kind());
            proptest::prop_assert!(got.is_ok() == want.is_ok(), "{:?} vs {:?}", got.as_ref().err(), want.as_ref().err());
            if let (Ok(got), Ok(want)) = (got, want) {
                proptest::prop_assert!(got == want);
            }
        }
    }
}
