//! Downloads from S3 that survive a dropped connection: streamed (snapshots) and whole (small
//! objects such as manifests).
//!
//! A streamed download asks for its first [`RANGE_SIZE`] bytes (`Range: bytes=0-…`); the answer
//! says how large the object is, and the rest comes as further ranged GETs, [`RANGES_IN_FLIGHT`]
//! at a time, each with `If-Match` on the first answer's ETag (so every range is of the same
//! object), handed on in order through a bounded channel: memory is at most that many ranges,
//! whatever the object's size. A range whose connection breaks or stalls asks again for its
//! rest, a few times with backoff, on its own; every answer must be the range asked for (a server
//! that ignored `Range` would otherwise repeat bytes and make a good snapshot look damaged). A
//! server that ignores `Range` altogether sends the whole object to the first request, which is
//! then read as one stream, resumed the same way. When a download gives up, the reader gets an
//! error chunk (an operational error, never "bad data").

use std::collections::VecDeque;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::S3Storage;
use crate::storage::{body_channel, Body, BodySender, ObjectKey, StorageError};

/// How many times one download continues after a broken connection.
const MAX_RESUMES: u32 = 3;
/// Wait before the first resume; doubled each time.
const RESUME_BACKOFF: Duration = Duration::from_millis(500);

/// Bytes per ranged GET of a streamed download.
pub(crate) const RANGE_SIZE: u64 = 4 << 20;
/// Ranged GETs in flight (and ranges held in memory) per download.
pub(crate) const RANGES_IN_FLIGHT: usize = 4;

/// Start downloading `key`; `NotFound` and other request errors come back here, body errors
/// as an `Err` chunk in the returned [`Body`].
pub(super) async fn get_stream(s3: &S3Storage, key: &ObjectKey) -> Result<Body, StorageError> {
    let first = s3
        .client
        .get_object()
        .bucket(&s3.bucket)
        .key(s3.s3_key(key.as_str()))
        .range(format!("bytes=0-{}", RANGE_SIZE - 1))
        .send()
        .await;
    let out = match first {
        Ok(out) => out,
        // An empty object has no byte 0: ask for it whole.
        Err(e) if super::error::Failure::from_sdk(&e).status == Some(416) => {
            return get_whole_stream(s3, key).await
        }
        Err(e) => return Err(s3.error("download", key.as_str(), e)),
    };
    let etag = out.e_tag().map(str::to_string);
    let total = out.content_range().and_then(|r| total_of(r, 0));
    let (tx, rx) = body_channel();
    let (s3, key) = (s3.clone(), key.clone());
    match total {
        Some(total) => {
            tokio::spawn(async move { ranges(s3, key, out.body, etag, total, tx).await })
        }
        // No Content-Range: the server ignored `Range` and is sending the whole object.
        None => tokio::spawn(async move { pump(s3, key, out.body, etag, tx).await }),
    };
    Ok(rx)
}

/// The object's size from the `Content-Range` of an answer to a range starting at `start`
/// (`bytes 0-4194303/12345678`); `None` when it is not that.
fn total_of(content_range: &str, start: u64) -> Option<u64> {
    let rest = content_range.strip_prefix(&format!("bytes {start}-"))?;
    rest.split_once('/')?.1.parse().ok()
}

/// Download `key` with one plain GET, read as one stream.
async fn get_whole_stream(s3: &S3Storage, key: &ObjectKey) -> Result<Body, StorageError> {
    let out = s3
        .client
        .get_object()
        .bucket(&s3.bucket)
        .key(s3.s3_key(key.as_str()))
        .send()
        .await
        .map_err(|e| s3.error("download", key.as_str(), e))?;
    let etag = out.e_tag().map(str::to_string);
    let (tx, rx) = body_channel();
    let (s3, key) = (s3.clone(), key.clone());
    tokio::spawn(async move { pump(s3, key, out.body, etag, tx).await });
    Ok(rx)
}

/// Fetch `total` bytes as ranges, [`RANGES_IN_FLIGHT`] at a time, and pass them on in order;
/// `first` is the open answer for the first range.
async fn ranges(
    s3: S3Storage,
    key: ObjectKey,
    first: ByteStream,
    etag: Option<String>,
    total: u64,
    tx: BodySender,
) {
    let mut first = Some(first);
    let mut next = 0u64;
    let mut in_flight = VecDeque::new();
    loop {
        while in_flight.len() < RANGES_IN_FLIGHT && (next < total || first.is_some()) {
            let end = (next + RANGE_SIZE).min(total);
            let task = fetch_range(
                s3.clone(),
                key.clone(),
                etag.clone(),
                next..end,
                first.take(),
            );
            in_flight.push_back(tokio::spawn(task));
            next = end;
        }
        let Some(task) = in_flight.pop_front() else {
            return;
        };
        let failure = match task.await {
            Ok(Ok(chunks)) => {
                for chunk in chunks {
                    if tx.send(Ok(chunk)).await.is_err() {
                        in_flight.iter().for_each(tokio::task::JoinHandle::abort);
                        return; // the reader went away
                    }
                }
                continue;
            }
            Ok(Err(failure)) => failure,
            Err(e) => format!("a download task failed: {e}"),
        };
        in_flight.iter().for_each(tokio::task::JoinHandle::abort);
        fail(&tx, failure).await;
        return;
    }
}

/// The bytes `range` of `key`, read from `open` if given (the first range), else requested;
/// a broken or stalled answer is asked again for its rest, up to [`MAX_RESUMES`] times.
async fn fetch_range(
    s3: S3Storage,
    key: ObjectKey,
    etag: Option<String>,
    range: std::ops::Range<u64>,
    open: Option<ByteStream>,
) -> Result<Vec<Bytes>, String> {
    let want = range.end - range.start;
    let mut chunks = Vec::new();
    let mut have = 0u64;
    let mut stream = open;
    let mut resumes = 0;
    // The first failure says what happened to the connection; the last, why resuming failed.
    let mut first_failure: Option<String> = None;
    loop {
        let failure = match stream.take() {
            Some(mut body) => {
                match read_range(&s3, &mut body, &mut chunks, &mut have, want).await {
                    Ok(()) => return Ok(chunks),
                    Err(why) => why,
                }
            }
            None => {
                let from = range.start + have;
                match request(&s3, &key, from..range.end, etag.as_deref()).await {
                    Ok(body) => {
                        stream = Some(body);
                        continue;
                    }
                    Err(why) => why,
                }
            }
        };
        let at = range.start + have;
        if resumes >= MAX_RESUMES {
            let what = match first_failure {
                Some(first) if first != failure => format!("{first}; the last resume: {failure}"),
                _ => failure,
            };
            return Err(format!(
                "bytes {}-{}: {what} (at byte {at}){GAVE_UP}",
                range.start,
                range.end - 1
            ));
        }
        first_failure.get_or_insert_with(|| failure.clone());
        resumes += 1;
        tracing::warn!(key = %key, offset = at, attempt = resumes, error = %failure, "download of a range interrupted; resuming");
        tokio::time::sleep(RESUME_BACKOFF * 2u32.pow(resumes - 1)).await;
    }
}

/// Read `body` to its end into `chunks`: `Ok` when the range's `want` bytes are all there.
async fn read_range(
    s3: &S3Storage,
    body: &mut ByteStream,
    chunks: &mut Vec<Bytes>,
    have: &mut u64,
    want: u64,
) -> Result<(), String> {
    loop {
        match tokio::time::timeout(s3.body_idle_timeout(), body.try_next()).await {
            Ok(Ok(Some(chunk))) => {
                *have += chunk.len() as u64;
                if *have > want {
                    return Err(format!(
                        "the server sent more than the {want} bytes asked for"
                    ));
                }
                chunks.push(chunk);
            }
            Ok(Ok(None)) if *have == want => return Ok(()),
            Ok(Ok(None)) => return Err("the answer ended early".into()),
            Ok(Err(e)) => return Err(format!("broke off: {}", crate::human::chain(&e))),
            Err(_) => {
                return Err(format!(
                    "stalled: no data for {}s",
                    s3.body_idle_timeout().as_secs()
                ))
            }
        }
    }
}

/// Ask for `range` of the object whose ETag is `etag`, and make sure that is what came back.
async fn request(
    s3: &S3Storage,
    key: &ObjectKey,
    range: std::ops::Range<u64>,
    etag: Option<&str>,
) -> Result<ByteStream, String> {
    let last = range.end - 1;
    let out = s3
        .client
        .get_object()
        .bucket(&s3.bucket)
        .key(s3.s3_key(key.as_str()))
        .range(format!("bytes={}-{last}", range.start))
        .set_if_match(etag.map(str::to_string))
        .send()
        .await
        .map_err(|e| crate::human::chain(&s3.error("download", key.as_str(), e)))?;
    let answered = out.content_range().unwrap_or("");
    if !answered.starts_with(&format!("bytes {}-{last}/", range.start)) {
        return Err(format!(
            "the server answered range {answered:?} for bytes {}-{last}",
            range.start
        ));
    }
    Ok(out.body)
}

/// Read a small object (a manifest) whole, refusing more than `limit` bytes. A body that breaks
/// off is fetched again from the start (it is small), a few times, so that one dropped
/// connection does not make a good snapshot's manifest look unreadable.
pub(super) async fn get_bytes(
    s3: &S3Storage,
    key: &ObjectKey,
    limit: u64,
) -> Result<Bytes, StorageError> {
    let too_large = |size| StorageError::TooLarge {
        key: key.to_string(),
        location: s3.location.clone(),
        size,
        limit,
    };
    let mut attempt = 0;
    loop {
        let out = s3
            .client
            .get_object()
            .bucket(&s3.bucket)
            .key(s3.s3_key(key.as_str()))
            .send()
            .await
            .map_err(|e| s3.error("download", key.as_str(), e))?;
        if let Some(len) = out.content_length().and_then(|l| u64::try_from(l).ok()) {
            if len > limit {
                return Err(too_large(len));
            }
        }
        let mut body = out.body;
        let mut buf = Vec::new();
        let broken = loop {
            match tokio::time::timeout(s3.body_idle_timeout(), body.try_next()).await {
                Ok(Ok(Some(chunk))) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > limit {
                        return Err(too_large(buf.len() as u64));
                    }
                }
                Ok(Ok(None)) => return Ok(Bytes::from(buf)),
                Ok(Err(e)) => break format!("body broke off: {}", crate::human::chain(&e)),
                Err(_) => break format!("body stalled for {}s", s3.body_idle_timeout().as_secs()),
            }
        };
        if attempt >= MAX_RESUMES {
            return Err(s3.inconsistency("download", key.as_str(), broken));
        }
        attempt += 1;
        tracing::warn!(key = %key, attempt, error = %broken, "download interrupted; trying again");
        tokio::time::sleep(RESUME_BACKOFF * 2u32.pow(attempt - 1)).await;
    }
}

async fn pump(
    s3: S3Storage,
    key: ObjectKey,
    mut stream: ByteStream,
    etag: Option<String>,
    tx: BodySender,
) {
    let mut offset: u64 = 0;
    let mut resumes = 0;
    loop {
        let failure = match tokio::time::timeout(s3.body_idle_timeout(), stream.try_next()).await {
            Ok(Ok(Some(chunk))) => {
                offset += chunk.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // the reader went away
                }
                continue;
            }
            Ok(Ok(None)) => return,
            Ok(Err(e)) => format!(
                "broke off after {offset} bytes: {}",
                crate::human::chain(&e)
            ),
            Err(_) => format!(
                "stalled after {offset} bytes: no data for {}s",
                s3.body_idle_timeout().as_secs()
            ),
        };
        let Some(etag) = etag.as_deref().filter(|_| resumes < MAX_RESUMES) else {
            fail(&tx, format!("{failure}{GAVE_UP}")).await;
            return;
        };
        resumes += 1;
        tracing::warn!(key = %key, offset, attempt = resumes, error = %failure, "download interrupted; resuming");
        tokio::time::sleep(RESUME_BACKOFF * 2u32.pow(resumes - 1)).await;
        match resume(&s3, &key, offset, etag).await {
            Ok(rest) => stream = rest,
            Err(why) => {
                fail(&tx, format!("{failure}; resuming failed: {why}{GAVE_UP}")).await;
                return;
            }
        }
    }
}

/// Ask for the rest of the object from `offset`, and make sure that is what came back.
async fn resume(
    s3: &S3Storage,
    key: &ObjectKey,
    offset: u64,
    etag: &str,
) -> Result<ByteStream, String> {
    let out = s3
        .client
        .get_object()
        .bucket(&s3.bucket)
        .key(s3.s3_key(key.as_str()))
        .range(format!("bytes={offset}-"))
        .if_match(etag)
        .send()
        .await
        .map_err(|e| crate::human::chain(&s3.error("download", key.as_str(), e)))?;
    let range = out.content_range().unwrap_or("");
    if !range.starts_with(&format!("bytes {offset}-")) {
        return Err(format!(
            "the server answered range {range:?} for bytes {offset}-"
        ));
    }
    Ok(out.body)
}

/// The end of the message of a download that could not be completed (the reader names the key).
const GAVE_UP: &str = " (the connection kept breaking; nothing was restored: try again, and check the network and any proxy in between)";

async fn fail(tx: &BodySender, msg: String) {
    // Kind `Other`: a transfer problem, which restore reports as operational, not as bad data.
    let _ = tx.send(Err(std::io::Error::other(msg))).await;
}
