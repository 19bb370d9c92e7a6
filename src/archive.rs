//! The streaming codec: raw SQLite bytes <-> stored gzip bytes, hashing both sides on the way.
//!
//! Compression cuts the input into blocks and gzips them on every core as independent gzip
//! members, written in order: the result is one valid (multi-member) gzip file that plain
//! `gunzip` reads, produced at the speed of all cores. SHA-256 of the raw and of the stored bytes
//! is computed in the same pass. Memory is bounded by a fixed number of blocks in flight.
//! Extraction reverses it on every core too ([`members`]), and reads any other gzip stream
//! (one big member, optional header fields) with the streaming decoder.
//! This module knows nothing of storage or SQLite: bytes in, bytes out.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::durable::read_full;
use crate::manifest::Sha256Hex;
use crate::storage::{Body, CHUNK_SIZE};

mod members;

/// Raw bytes per gzip member. Large enough that restarting the dictionary costs well under 1%
/// of the compressed size, small enough to keep every core busy and memory low.
pub const BLOCK_SIZE: usize = 1 << 20;

/// Sizes and digests of both sides of a compression or decompression pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub raw_len: u64,
    pub raw_sha256: Sha256Hex,
    pub stored_len: u64,
    pub stored_sha256: Sha256Hex,
}

/// Compress everything `src` yields with gzip `level` on `threads` threads, passing the stored
/// bytes, in order, to `out`. `progress` is called with the raw bytes read so far.
///
/// # Errors
/// The first error from reading, compressing or `out`; the pass stops at once.
pub fn compress(
    mut src: impl Read,
    level: u32,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
    encryptor: Option<age::Encryptor>,
    out: impl FnMut(Bytes) -> io::Result<()> + Send,
) -> io::Result<Digests> {
    let threads = threads.max(1);
    type Job = (Vec<u8>, SyncSender<io::Result<Vec<u8>>>);
    std::thread::scope(|s| {
        let (work_tx, work_rx) = mpsc::sync_channel::<Job>(threads);
        let work_rx = Arc::new(Mutex::new(work_rx));
        for _ in 0..threads {
            let work_rx = Arc::clone(&work_rx);
            s.spawn(move || loop {
                let job = work_rx
                    .lock()
                    .expect("no worker panics holding the lock")
                    .recv();
                let Ok((raw, reply)) = job else { break };
                let _ = reply.send(gzip_member(&raw, level));
            });
        }
        // One result slot per block, queued in input order: the writer takes them in that order,
        // and the queue's capacity bounds how many blocks are in flight.
        let (order_tx, order_rx) = mpsc::sync_channel::<Receiver<io::Result<Vec<u8>>>>(threads + 1);
        let writer = s.spawn(move || write_in_order(order_rx, encryptor, out));

        let mut raw_hash = Sha256::new();
        let mut raw_len = 0u64;
        let mut sent_any = false;
        let read_result = loop {
            let mut block = vec![0u8; BLOCK_SIZE];
            let n = match read_full(&mut src, &mut block) {
                // An empty input still becomes one (empty) gzip member: valid gzip.
                Ok(0) if raw_len > 0 || sent_any => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            block.truncate(n);
            raw_hash.update(&block);
            raw_len += n as u64;
            let (reply_tx, reply_rx) = mpsc::sync_channel(1);
            if order_tx.send(reply_rx).is_err() || work_tx.send((block, reply_tx)).is_err() {
                break Ok(()); // the writer stopped; its error is the one to report
            }
            sent_any = true;
            progress(raw_len);
        };
        drop(order_tx);
        drop(work_tx);
        let (stored_len, stored_sha256) = writer.join().expect("writer does not panic")?;
        read_result?;
        Ok(Digests {
            raw_len,
            raw_sha256: Sha256Hex::from_digest(&raw_hash.finalize()),
            stored_len,
            stored_sha256,
        })
    })
}

fn write_in_order(
    order_rx: Receiver<Receiver<io::Result<Vec<u8>>>>,
    encryptor: Option<age::Encryptor>,
    out: impl FnMut(Bytes) -> io::Result<()>,
) -> io::Result<(u64, Sha256Hex)> {
    let sink = ChunkWriter::new(out);
    let mut layer = match encryptor {
        None => Layer::Plain(sink),
        Some(e) => Layer::Age(e.wrap_output(sink)?),
    };
    for slot in order_rx {
        let member = slot
            .recv()
            .map_err(|_| io::Error::other("compression worker stopped"))??;
        layer.write_all(&member)?;
    }
    let sink = match layer {
        Layer::Plain(sink) => sink,
        // finish() writes the last, specially marked STREAM chunk: without it the object
        // would be truncated ciphertext that fails to decrypt.
        Layer::Age(w) => w.finish()?,
    };
    sink.finish()
}

/// The stored stream: plain gzip, or gzip inside age.
enum Layer<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Write for Layer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Layer::Plain(w) => w.write(buf),
            Layer::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Layer::Plain(w) => w.flush(),
            Layer::Age(w) => w.flush(),
        }
    }
}

/// Hashes and counts the stored bytes and hands them on in [`CHUNK_SIZE`] pieces.
struct ChunkWriter<F> {
    out: F,
    hash: Sha256,
    len: u64,
    buf: Vec<u8>,
}

impl<F: FnMut(Bytes) -> io::Result<()>> ChunkWriter<F> {
    fn new(out: F) -> Self {
        ChunkWriter {
            out,
            hash: Sha256::new(),
            len: 0,
            buf: Vec::with_capacity(CHUNK_SIZE),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
            (self.out)(Bytes::from(chunk))?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<(u64, Sha256Hex)> {
        self.send()?;
        Ok((self.len, Sha256Hex::from_digest(&self.hash.finalize())))
    }
}

impl<F: FnMut(Bytes) -> io::Result<()>> Write for ChunkWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash.update(data);
        self.len += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_SIZE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One complete gzip member. libdeflate compresses a whole buffer at once, which is exactly the
/// shape of an independent member, and is faster than zlib for a better ratio at low levels
/// (see docs/PERFORMANCE.md); [`members`] decompresses such members with libdeflate too.
fn gzip_member(raw: &[u8], level: u32) -> io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(u32, libdeflater::Compressor)>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let lvl = libdeflater::CompressionLvl::new(level as i32).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("gzip level {level} is not 1 to 12"),
                )
            })?;
            *slot = Some((level, libdeflater::Compressor::new(lvl)));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        let mut out = vec![0u8; compressor.gzip_compress_bound(raw.len())];
        let n = compressor
            .gzip_compress(raw, &mut out)
            .map_err(|e| io::Error::other(format!("gzip compression failed: {e:?}")))?;
        out.truncate(n);
        Ok(out)
    })
}

/// Why an extraction failed: the caller treats bad data (try an older snapshot) differently
/// from a failing source or destination, or a key that does not fit (stop and say so).
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The stored bytes are not a valid (gzip or age) stream, or decompress to too much.
    #[error("stored object is damaged: {0}")]
    Data(#[source] io::Error),
    /// Reading the stored object failed (network, store).
    #[error("reading the stored object failed")]
    Source(#[source] io::Error),
    /// Writing the output failed (disk full, permissions).
    #[error("writing the restored data failed")]
    Sink(#[source] io::Error),
    /// No configured identity can decrypt the object.
    #[error("cannot decrypt the stored object")]
    Key(#[source] io::Error),
}

/// Decompress the stored bytes `src` yields into `dst`, hashing both sides. Stops with an error
/// as soon as the output would exceed `max_raw_len` (a wrong or hostile object cannot fill the
/// disk). `progress` is called with the stored bytes read so far.
///
/// Reading (with the stored SHA-256 and decryption), decompression (on every core, see
/// [`members`]) and the raw SHA-256 with the writes run on their own threads, so they overlap;
/// the output is written in order, and memory is a fixed number of members in flight.
pub fn extract(
    src: impl Read + Send,
    dst: impl Write,
    max_raw_len: u64,
    identities: Option<&[age::x25519::Identity]>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Digests, ExtractError> {
    extract_with(src, dst, max_raw_len, identities, progress, true).map(|(d, raw)| Digests {
        raw_sha256: raw.expect("hashed"),
        ..d
    })
}

/// [`extract`], with the raw side hashed only when `hash_raw` (the caller proves the raw bytes
/// another way: an incremental's base is proven by the SHA-256 of the rebuilt database, which
/// covers every page of it that is used). Without it, the returned `raw_sha256` is all zeros
/// and the second value is `None`.
pub fn extract_with(
    src: impl Read + Send,
    mut dst: impl Write,
    max_raw_len: u64,
    identities: Option<&[age::x25519::Identity]>,
    progress: &(dyn Fn(u64) + Sync),
    hash_raw: bool,
) -> Result<(Digests, Option<Sha256Hex>), ExtractError> {
    let source_failed = std::sync::atomic::AtomicBool::new(false);
    let classify = |e: io::Error| {
        if source_failed.load(std::sync::atomic::Ordering::SeqCst) {
            ExtractError::Source(e)
        } else if e.kind() == io::ErrorKind::PermissionDenied {
            ExtractError::Key(e)
        } else {
            ExtractError::Data(e)
        }
    };
    let mut counted = HashingReader::new(src, progress, &source_failed);
    let mut raw_hash = Sha256::new();
    let mut raw_len = 0u64;
    let mut out = |chunk: &[u8]| {
        raw_len += chunk.len() as u64;
        if raw_len > max_raw_len {
            return Err(ExtractError::Data(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("decompressed data is larger than the expected {max_raw_len} bytes"),
            )));
        }
        if hash_raw {
            raw_hash.update(chunk);
        }
        dst.write_all(chunk).map_err(ExtractError::Sink)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let decoded = match identities {
        None => members::decode(&mut counted, threads, &mut out),
        Some(ids) => {
            let mut plain = decryptor(&mut counted, ids).map_err(classify)?;
            members::decode(&mut plain, threads, &mut out)
        }
    };
    match decoded {
        Ok(()) => {}
        Err(members::Stop::Io(e)) => return Err(classify(e)),
        Err(members::Stop::Out(e)) => return Err(e),
    }
    // Read what follows the end of the stream, so the stored hash covers every byte.
    io::copy(&mut counted, &mut io::sink()).map_err(classify)?;
    let (stored_len, stored_sha256) = counted.finish();
    let raw = hash_raw.then(|| Sha256Hex::from_digest(&raw_hash.finalize()));
    Ok((
        Digests {
            raw_len,
            raw_sha256: raw
                .clone()
                .unwrap_or_else(|| Sha256Hex::from_digest(&[0; 32])),
            stored_len,
            stored_sha256,
        },
        raw,
    ))
}

/// Open an age stream with `ids`. A key that does not match is `PermissionDenied` (an
/// operational error: every snapshot encrypted to that key will fail the same way); a damaged
/// header is `InvalidData` (bad data).
fn decryptor<'a, R: Read + 'a>(
    src: R,
    ids: &'a [age::x25519::Identity],
) -> io::Result<impl Read + 'a> {
    let dec = age::Decryptor::new(src).map_err(age_error)?;
    dec.decrypt(ids.iter().map(|i| i as &dyn age::Identity))
        .map_err(age_error)
}

fn age_error(e: age::DecryptError) -> io::Error {
    match e {
        age::DecryptError::NoMatchingKeys => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "age: no identity in encryption.identity_file matches this snapshot's recipients",
        ),
        age::DecryptError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("age: {other}")),
    }
}

/// Hash (SHA-256) and count everything read through it.
/// It also records whether the *source* failed, so that a network error is not taken for damage.
struct HashingReader<'a, R> {
    inner: R,
    hash: Sha256,
    len: u64,
    progress: &'a (dyn Fn(u64) + Sync),
    failed: &'a std::sync::atomic::AtomicBool,
}

impl<'a, R: Read> HashingReader<'a, R> {
    fn new(
        inner: R,
        progress: &'a (dyn Fn(u64) + Sync),
        failed: &'a std::sync::atomic::AtomicBool,
    ) -> Self {
        HashingReader {
            inner,
            hash: Sha256::new(),
            len: 0,
            progress,
            failed,
        }
    }

    fn finish(self) -> (u64, Sha256Hex) {
        (self.len, Sha256Hex::from_digest(&self.hash.finalize()))
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        })?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        (self.progress)(self.len);
        Ok(n)
    }
}

/// Reads a [`Body`] channel as a blocking [`Read`]. Use it on a blocking thread only.
pub struct BodyReader {
    body: Body,
    cur: Bytes,
}

impl BodyReader {
    pub fn new(body: Body) -> Self {
        BodyReader {
            body,
            cur: Bytes::new(),
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.body.blocking_recv() {
                Some(Ok(chunk)) => self.cur = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// SHA-256 and length of everything `src` yields (used by `verify`, which checks stored objects
/// without decompressing them).
pub fn digest(mut src: impl Read) -> io::Result<(u64, Sha256Hex)> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut len = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, Sha256Hex::from_digest(&hash.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: text-like lines with varying numbers.
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(
                format!(
                    "order {i} customer {} total {}.{:02}\n",
                    i * 7 % 1000,
                    i % 997,
                    i % 100
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn round_trip(len: usize, threads: usize) {
        let raw = sample(len);
        let mut stored = Vec::new();
        let d = compress(&raw[..], 6, threads, &|_| {}, None, |b| {
            stored.extend_from_slice(&b);
            Ok(())
        })
        .unwrap();
        assert_eq!(d.raw_len, raw.len() as u64);
        assert_eq!(d.stored_len, stored.len() as u64);
        assert_eq!(d.raw_sha256, Sha256Hex::from_digest(&Sha256::digest(&raw)));
        assert_eq!(
            d.stored_sha256,
            Sha256Hex::from_digest(&Sha256::digest(&stored))
        );
        let mut back = Vec::new();
        let e = extract(&stored[..], &mut back, raw.len() as u64, None, &|_| {}).unwrap();
        assert_eq!(back, raw);
        assert_eq!(e, d);
    }

    #[test]
    fn compress_then_extract_is_identity() {
        round_trip(0, 2);
        round_trip(1, 1);
        round_trip(BLOCK_SIZE, 2);
        round_trip(3 * BLOCK_SIZE + 12345, 3);
    }

    #[test]
    fn output_is_readable_by_a_plain_gzip_reader() {
        let raw = sample(2 * BLOCK_SIZE + 7);
        let mut stored = Vec::new();
        compress(&raw[..], 1, 2, &|_| {}, None, |b| {
            stored.extend_from_slice(&b);
            Ok(())
        })
        .unwrap();
        let mut back = Vec::new();
        MultiGzDecoder::new(&stored[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, raw);
    }

    #[test]
    fn extract_detects_damage() {
        let raw = sample(BLOCK_SIZE + 100);
        let mut stored = Vec::new();
        compress(&raw[..], 6, 2, &|_| {}, None, |b| {
            stored.extend_from_slice(&b);
            Ok(())
        })
        .unwrap();
        // Truncation is bad data.
        let cut = &stored[..stored.len() - 10];
        let err = extract(cut, io::sink(), u64::MAX, None, &|_| {}).unwrap_err();
        assert!(matches!(err, ExtractError::Data(_)), "{err:?}");
        // A flipped byte is an error or a different digest, never silent.
        let mut flipped = stored.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        match extract(&flipped[..], io::sink(), u64::MAX, None, &|_| {}) {
            Err(_) => {}
            Ok(d) => assert_ne!(
                d.stored_sha256,
                Sha256Hex::from_digest(&Sha256::digest(&stored))
            ),
        }
        // Output larger than expected stops early.
        assert!(extract(&stored[..], io::sink(), 1000, None, &|_| {}).is_err());
        // Trailing garbage is an error.
        let mut tail = stored.clone();
        tail.extend_from_slice(b"garbage");
        assert!(extract(&tail[..], io::sink(), u64::MAX, None, &|_| {}).is_err());
    }

    #[test]
    fn encrypted_round_trip_and_tamper_detection() {
        let id = age::x25519::Identity::generate();
        let raw = sample(2 * BLOCK_SIZE + 5);
        let mut stored = Vec::new();
        let enc = age::Encryptor::with_recipients(std::iter::once(
            &id.to_public() as &dyn age::Recipient
        ))
        .unwrap();
        let d = compress(&raw[..], 1, 2, &|_| {}, Some(enc), |b| {
            stored.extend_from_slice(&b);
            Ok(())
        })
        .unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1"));
        assert_eq!(
            d.stored_sha256,
            Sha256Hex::from_digest(&Sha256::digest(&stored))
        );
        let ids = [id];
        let mut back = Vec::new();
        let e = extract(&stored[..], &mut back, u64::MAX, Some(&ids), &|_| {}).unwrap();
        assert_eq!(back, raw);
        assert_eq!(e, d);
        // Wrong key: PermissionDenied, distinct from bad data.
        let other = [age::x25519::Identity::generate()];
        let err = extract(&stored[..], io::sink(), u64::MAX, Some(&other), &|_| {}).unwrap_err();
        assert!(matches!(err, ExtractError::Key(_)), "{err:?}");
        // A flipped ciphertext byte fails authentication.
        let mut bad = stored.clone();
        let at = bad.len() - 100;
        bad[at] ^= 1;
        assert!(extract(&bad[..], io::sink(), u64::MAX, Some(&ids), &|_| {}).is_err());
        // A truncated final chunk is detected.
        assert!(extract(
            &stored[..stored.len() - 20],
            io::sink(),
            u64::MAX,
            Some(&ids),
            &|_| {}
        )
        .is_err());
    }

    #[test]
    fn compress_stops_on_output_error() {
        // Incompressible input, so the output spans several chunks.
        let mut x = 1u64;
        let raw: Vec<u8> = (0..4 * BLOCK_SIZE)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let mut calls = 0;
        let err = compress(&raw[..], 1, 2, &|_| {}, None, |_| {
            calls += 1;
            if calls == 2 {
                Err(io::Error::other("store went away"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("store went away"));
        assert_eq!(calls, 2, "no output after the failure");
    }
}
