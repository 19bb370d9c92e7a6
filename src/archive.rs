//! The streaming codec: raw SQLite bytes <-> stored gzip bytes, hashing both sides on the way.
//!
//! Compression cuts the input into blocks and gzips them on every core as independent gzip
//! members, written in order: the result is one valid (multi-member) gzip file that plain
//! `gunzip` reads, produced at the speed of all cores. SHA-256 of the raw and of the stored bytes
//! is computed in the same pass. Memory is bounded by a fixed number of blocks in flight.
//! This module knows nothing of storage or SQLite: bytes in, bytes out.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::manifest::Sha256Hex;
use crate::storage::{Body, CHUNK_SIZE};

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
        let (order_tx, order_rx) = mpsc::sync_channel::<Receiver<io::Result<Vec<u8>>>>(threads * 2);
        let writer = s.spawn(move || write_in_order(order_rx, out));

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
    mut out: impl FnMut(Bytes) -> io::Result<()>,
) -> io::Result<(u64, Sha256Hex)> {
    let mut hash = Sha256::new();
    let mut len = 0u64;
    for slot in order_rx {
        let member = slot
            .recv()
            .map_err(|_| io::Error::other("compression worker stopped"))??;
        hash.update(&member);
        len += member.len() as u64;
        out(Bytes::from(member))?;
    }
    Ok((len, Sha256Hex::from_digest(&hash.finalize())))
}

/// One complete gzip member. libdeflate compresses a whole buffer at once, which is exactly the
/// shape of an independent member, and is faster than zlib for a better ratio at low levels
/// (see docs/PERFORMANCE.md); decompression stays a streaming flate2 reader.
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

/// Decompress the stored bytes `src` yields into `dst`, hashing both sides. Stops with an error
/// as soon as the output would exceed `max_raw_len` (a wrong or hostile object cannot fill the
/// disk). `progress` is called with the stored bytes read so far.
///
/// Decompression and hashing+writing run on two threads, so they overlap.
pub fn extract(
    src: impl Read + Send,
    mut dst: impl Write,
    max_raw_len: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> io::Result<Digests> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
        let decoder = s.spawn(move || {
            let mut counted = HashingReader::new(src, progress);
            {
                let mut gz = MultiGzDecoder::new(&mut counted);
                loop {
                    let mut buf = vec![0u8; CHUNK_SIZE];
                    match read_full(&mut gz, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Ok(buf)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    }
                }
            }
            // Drain what follows the last member, so the stored hash covers every byte.
            let _ = io::copy(&mut counted, &mut io::sink());
            counted.finish()
        });
        let mut raw_hash = Sha256::new();
        let mut raw_len = 0u64;
        let mut result = Ok(());
        for chunk in rx.iter() {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    result = Err(io::Error::new(e.kind(), format!("gzip stream: {e}")));
                    break;
                }
            };
            raw_len += chunk.len() as u64;
            if raw_len > max_raw_len {
                result = Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("decompressed data is larger than the expected {max_raw_len} bytes"),
                ));
                break;
            }
            raw_hash.update(&chunk);
            if let Err(e) = dst.write_all(&chunk) {
                result = Err(e);
                break;
            }
        }
        drop(rx);
        let stored = decoder.join().expect("decoder does not panic");
        result?;
        let (stored_len, stored_sha256) = stored?;
        Ok(Digests {
            raw_len,
            raw_sha256: Sha256Hex::from_digest(&raw_hash.finalize()),
            stored_len,
            stored_sha256,
        })
    })
}

/// Hash (SHA-256) and count everything read through it.
struct HashingReader<'a, R> {
    inner: R,
    hash: Sha256,
    len: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<'a, R: Read> HashingReader<'a, R> {
    fn new(inner: R, progress: &'a (dyn Fn(u64) + Sync)) -> Self {
        HashingReader {
            inner,
            hash: Sha256::new(),
            len: 0,
            progress,
        }
    }

    fn finish(self) -> io::Result<(u64, Sha256Hex)> {
        Ok((self.len, Sha256Hex::from_digest(&self.hash.finalize())))
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
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

/// Read until `buf` is full or the source ends.
pub fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let d = compress(&raw[..], 6, threads, &|_| {}, |b| {
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
        let e = extract(&stored[..], &mut back, raw.len() as u64, &|_| {}).unwrap();
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
        compress(&raw[..], 1, 2, &|_| {}, |b| {
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
        compress(&raw[..], 6, 2, &|_| {}, |b| {
            stored.extend_from_slice(&b);
            Ok(())
        })
        .unwrap();
        // Truncation is an error.
        let cut = &stored[..stored.len() - 10];
        assert!(extract(cut, io::sink(), u64::MAX, &|_| {}).is_err());
        // A flipped byte is an error or a different digest, never silent.
        let mut flipped = stored.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        match extract(&flipped[..], io::sink(), u64::MAX, &|_| {}) {
            Err(_) => {}
            Ok(d) => assert_ne!(
                d.stored_sha256,
                Sha256Hex::from_digest(&Sha256::digest(&stored))
            ),
        }
        // Output larger than expected stops early.
        assert!(extract(&stored[..], io::sink(), 1000, &|_| {}).is_err());
        // Trailing garbage is an error.
        let mut tail = stored.clone();
        tail.extend_from_slice(b"garbage");
        assert!(extract(&tail[..], io::sink(), u64::MAX, &|_| {}).is_err());
    }

    #[test]
    fn compress_stops_on_output_error() {
        let raw = sample(4 * BLOCK_SIZE);
        let mut calls = 0;
        let err = compress(&raw[..], 1, 2, &|_| {}, |_| {
            calls += 1;
            if calls == 2 {
                Err(io::Error::other("store went away"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("store went away"));
    }
}
