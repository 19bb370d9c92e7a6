//! Downloads from S3 that survive a dropped connection: streamed (snapshots) and whole (small
//! objects such as manifests).
//!
//! The body is pumped chunk by chunk into a bounded channel by a spawned task. If the connection
//! breaks or stalls part-way, the task asks again for the rest (`Range: bytes=<offset>-`, with
//! `If-Match` on the first answer's ETag so it can only ever continue the same object) a few
//! times with backoff. It checks that the server really sent the requested range: a server that
//! ignored `Range` would otherwise repeat bytes and make a good snapshot look damaged. When it
//! gives up, the reader gets an error chunk (an operational error, never "bad data").

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::S3Storage;
use crate::storage::{body_channel, Body, BodySender, ObjectKey, StorageError};

/// How many times one download continues after a broken connection.
const MAX_RESUMES: u32 = 3;
/// Wait before the first resume; doubled each time.
const RESUME_BACKOFF: Duration = Duration::from_millis(500);

/// Start downloading `key`; `NotFound` and other request errors come back here, body errors
/// as an `Err` chunk in the returned [`Body`].
pub(super) async fn get_stream(s3: &S3Storage, key: &ObjectKey) -> Result<Body, StorageError> {
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
