//! Streaming uploads to S3 in bounded memory.
//!
//! A body shorter than one part goes up as a single PutObject. Anything longer becomes a
//! multipart upload whose parts all have the same size except the last (R2 requires equal
//! parts; S3 requires ≥ 5 MiB and ≤ 10,000 parts), with at most a few parts in flight, so
//! memory stays near `(in_flight + 1) × part_size` whatever the object's size. Every part
//! carries `Content-MD5`, which the server verifies. Any failure, an `Err` chunk from the
//! producer, or the upload future being dropped aborts the multipart upload: nothing is stored.

use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use tokio::task::JoinSet;

use super::S3Storage;
use crate::storage::{Body, ObjectKey, StorageError};

const MIB: u64 = 1 << 20;
/// Smallest part we use (S3's minimum is 5 MiB for every part but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// Largest part S3 accepts.
const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// Parts planned for an object of the hinted size: headroom under [`MAX_PARTS`] for a stored
/// object a little larger than the hint (gzip of incompressible data grows slightly).
const PLANNED_PARTS: u64 = 9_000;
/// Bytes of parts in flight we aim to stay under (plus the part being filled).
const IN_FLIGHT_BUDGET: u64 = 16 * MIB;
/// At most this many parts upload at once.
const MAX_IN_FLIGHT: u64 = 2;
/// Slowest upload rate tolerated before a part attempt times out.
const MIN_UPLOAD_RATE: u64 = 64 * 1024;

/// How an object of a given size is cut into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub part_size: usize,
    pub in_flight: usize,
}

impl PartPlan {
    /// The plan for an object of about `size_hint` bytes (unknown: the smallest parts, which
    /// allow objects up to 10,000 × 8 MiB ≈ 78 GiB).
    pub fn for_size(size_hint: Option<u64>) -> PartPlan {
        let wanted = size_hint.unwrap_or(0).div_ceil(PLANNED_PARTS).div_ceil(MIB) * MIB;
        let part = wanted.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        let in_flight = (IN_FLIGHT_BUDGET / part).clamp(1, MAX_IN_FLIGHT);
        PartPlan {
            part_size: usize::try_from(part).expect("part size fits in memory"),
            in_flight: usize::try_from(in_flight).expect("small"),
        }
    }
}

/// Base64 of the MD5 of `bytes`, for the `Content-MD5` header.
pub fn content_md5(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(Md5::digest(bytes))
}

/// Upload `body` to `key`; returns the number of bytes stored.
pub(super) async fn put_stream(
    s3: &S3Storage,
    key: &ObjectKey,
    mut body: Body,
    size_hint: Option<u64>,
) -> Result<u64, StorageError> {
    let plan = PartPlan::for_size(size_hint);
    let mut buf = BytesMut::with_capacity(plan.part_size);
    let mut total: u64 = 0;
    let mut multipart: Option<Multipart> = None;
    while let Some(chunk) = body.recv().await {
        let mut chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                if let Some(mp) = multipart.take() {
                    mp.abort().await;
                }
                return Err(StorageError::Aborted {
                    key: key.to_string(),
                    location: s3.location.clone(),
                    reason: crate::human::chain(&e),
                });
            }
        };
        total += chunk.len() as u64;
        while !chunk.is_empty() {
            let take = (plan.part_size - buf.len()).min(chunk.len());
            buf.extend_from_slice(&chunk.split_to(take));
            if buf.len() == plan.part_size {
                let part =
                    std::mem::replace(&mut buf, BytesMut::with_capacity(plan.part_size)).freeze();
                let mp = match multipart.as_mut() {
                    Some(mp) => mp,
                    None => multipart.insert(Multipart::start(s3, key, plan).await?),
                };
                if let Err(e) = mp.push(part).await {
                    multipart.take().expect("just used").abort().await;
                    return Err(e);
                }
            }
        }
    }
    match multipart {
        None => put_single(s3, key, buf.freeze(), plan).await?,
        Some(mut mp) => {
            let last = buf.freeze();
            let result = if last.is_empty() {
                Ok(())
            } else {
                mp.push(last).await
            };
            let result = match result {
                Ok(()) => mp.complete(total).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                mp.abort().await;
                return Err(e);
            }
        }
    }
    verify_size(s3, key, total).await?;
    tracing::debug!(key = %key, bytes = total, part_size = plan.part_size, "upload finished");
    Ok(total)
}

/// A body that fits in one part: one PutObject.
async fn put_single(
    s3: &S3Storage,
    key: &ObjectKey,
    bytes: Bytes,
    plan: PartPlan,
) -> Result<(), StorageError> {
    let md5 = content_md5(&bytes);
    s3.client
        .put_object()
        .bucket(&s3.bucket)
        .key(s3.s3_key(key.as_str()))
        .content_length(bytes.len() as i64)
        .content_md5(md5)
        .body(ByteStream::from(bytes))
        .customize()
        .config_override(upload_timeouts(plan.part_size, s3.timeout))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| s3.error("upload", key.as_str(), e))
}

/// The size of the stored object (a HEAD); `None` if the server gave none.
async fn stored_size(s3: &S3Storage, key: &ObjectKey) -> Result<Option<u64>, StorageError> {
    let head = s3
        .client
        .head_object()
        .bucket(&s3.bucket)
        .key(s3.s3_key(key.as_str()))
        .send()
        .await
        .map_err(|e| s3.error("check uploaded", key.as_str(), e))?;
    Ok(head.content_length().and_then(|l| u64::try_from(l).ok()))
}

/// Check the stored object has exactly the bytes we sent (a cheap HEAD that catches a server
/// or proxy that acknowledged an incomplete object).
async fn verify_size(s3: &S3Storage, key: &ObjectKey, sent: u64) -> Result<(), StorageError> {
    let stored = stored_size(s3, key).await?;
    if stored != Some(sent) {
        return Err(s3.inconsistency(
            "check uploaded",
            key.as_str(),
            format!("stored object is {stored:?} bytes, {sent} were sent"),
        ));
    }
    Ok(())
}

/// Attempts carrying a part may take as long as the part needs at [`MIN_UPLOAD_RATE`], and at
/// least `timeout` (`storage.timeout`).
fn upload_timeouts(part_size: usize, timeout: Duration) -> aws_sdk_s3::config::Builder {
    let needed = Duration::from_secs(part_size as u64 / MIN_UPLOAD_RATE);
    aws_sdk_s3::config::Builder::default().timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(super::CONNECT_TIMEOUT.min(timeout))
            .read_timeout(needed.max(timeout))
            .build(),
    )
}

/// One multipart upload in progress.
struct Multipart {
    s3: S3Storage,
    key: ObjectKey,
    upload_id: String,
    plan: PartPlan,
    /// Parts being uploaded; each task yields its part number and ETag.
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    next_part: i32,
    /// Set once completed or aborted; a `Multipart` dropped before that aborts in the background.
    closed: bool,
}

impl Multipart {
    async fn start(
        s3: &S3Storage,
        key: &ObjectKey,
        plan: PartPlan,
    ) -> Result<Multipart, StorageError> {
        let out = s3
            .client
            .create_multipart_upload()
            .bucket(&s3.bucket)
            .key(s3.s3_key(key.as_str()))
            .send()
            .await
            .map_err(|e| s3.error("start upload of", key.as_str(), e))?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| {
                s3.inconsistency(
                    "start upload of",
                    key.as_str(),
                    "no upload id in the answer".into(),
                )
            })?
            .to_string();
        tracing::debug!(key = %key, part_size = plan.part_size, in_flight = plan.in_flight, "multipart upload started");
        Ok(Multipart {
            s3: s3.clone(),
            key: key.clone(),
            upload_id,
            plan,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            next_part: 1,
            closed: false,
        })
    }

    /// Queue one part; waits while the in-flight window is full.
    async fn push(&mut self, part: Bytes) -> Result<(), StorageError> {
        if self.next_part as u64 > MAX_PARTS {
            return Err(StorageError::TooLarge {
                key: self.key.to_string(),
                location: self.s3.location.clone(),
                size: (self.next_part as u64) * self.plan.part_size as u64,
                limit: MAX_PARTS * self.plan.part_size as u64,
            });
        }
        while self.in_flight.len() >= self.plan.in_flight {
            self.reap_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let s3 = self.s3.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone();
        let part_size = self.plan.part_size;
        self.in_flight.spawn(async move {
            let len = part.len();
            let md5 = {
                let part = part.clone();
                tokio::task::spawn_blocking(move || content_md5(&part))
                    .await
                    .expect("md5 does not panic")
            };
            let out = s3
                .client
                .upload_part()
                .bucket(&s3.bucket)
                .key(s3.s3_key(key.as_str()))
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .content_md5(md5)
                .body(ByteStream::from(part))
                .customize()
                .config_override(upload_timeouts(part_size, s3.timeout))
                .send()
                .await
                .map_err(|e| s3.error("upload part of", key.as_str(), e))?;
            let etag = out.e_tag().ok_or_else(|| {
                s3.inconsistency(
                    "upload part of",
                    key.as_str(),
                    format!("no ETag for part {number}"),
                )
            })?;
            tracing::trace!(key = %key, part = number, bytes = len, "part uploaded");
            Ok(CompletedPart::builder()
                .part_number(number)
                .e_tag(etag)
                .build())
        });
        Ok(())
    }

    /// Wait for one in-flight part.
    async fn reap_one(&mut self) -> Result<(), StorageError> {
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(joined) => {
                let part = joined.expect("part upload does not panic")?;
                self.done.push(part);
                Ok(())
            }
        }
    }

    /// Wait for every part, then complete the upload of these `sent` bytes.
    async fn complete(&mut self, sent: u64) -> Result<(), StorageError> {
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        self.done.sort_by_key(|p| p.part_number());
        let parts = std::mem::take(&mut self.done);
        let count = parts.len();
        let result = self
            .s3
            .client
            .complete_multipart_upload()
            .bucket(&self.s3.bucket)
            .key(self.s3.s3_key(self.key.as_str()))
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = result {
            let err = self.s3.error("complete upload of", self.key.as_str(), e);
            // The answer to an attempt that did complete the upload can be lost on the way;
            // the SDK's retry then finds the upload gone (NoSuchUpload, or 403/404 on some
            // servers). The key belongs to this snapshot alone, so an object there with every
            // byte we sent is that upload (its SHA-256 is checked on every read anyway).
            if stored_size(&self.s3, &self.key).await.ok().flatten() != Some(sent) {
                return Err(err);
            }
            tracing::debug!(key = %self.key, error = %err, "the upload was completed by an attempt whose answer was lost");
        }
        self.closed = true;
        tracing::debug!(key = %self.key, parts = count, "multipart upload completed");
        Ok(())
    }

    /// Stop every part and abort the upload, so the server keeps nothing. Failures to abort
    /// are logged: a later `sweep` (or a lifecycle rule) removes what is left.
    async fn abort(mut self) {
        self.in_flight.shutdown().await;
        self.closed = true;
        let result = self
            .s3
            .client
            .abort_multipart_upload()
            .bucket(&self.s3.bucket)
            .key(self.s3.s3_key(self.key.as_str()))
            .upload_id(&self.upload_id)
            .send()
            .await;
        match result {
            Ok(_) => tracing::debug!(key = %self.key, "multipart upload aborted"),
            Err(e) => tracing::warn!(
                key = %self.key,
                error = %self.s3.error("abort upload of", self.key.as_str(), e),
                "could not abort a multipart upload; a later backup's sweep will"
            ),
        }
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // The upload future was dropped mid-way (cancellation): abort in the background if a
        // runtime is still there; otherwise the next sweep does it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.s3.client.clone();
            let (bucket, key, id) = (
                self.s3.bucket.clone(),
                self.s3.s3_key(self.key.as_str()),
                self.upload_id.clone(),
            );
            rt.spawn(async move {
                let _ = client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_unknown_sizes_use_the_smallest_parts() {
        for hint in [
            None,
            Some(0),
            Some(1),
            Some(40 * MIB),
            Some(40 * 1024 * MIB),
        ] {
            let p = PartPlan::for_size(hint);
            assert_eq!(p.part_size as u64, MIN_PART_SIZE, "{hint:?}");
            assert_eq!(p.in_flight as u64, MAX_IN_FLIGHT);
        }
    }

    #[test]
    fn large_objects_fit_in_the_part_limit_with_bounded_memory() {
        for gib in [100u64, 500, 1000, 10_000] {
            let size = gib * 1024 * MIB;
            let p = PartPlan::for_size(Some(size));
            assert!(
                size.div_ceil(p.part_size as u64) <= PLANNED_PARTS,
                "{gib} GiB"
            );
            assert_eq!(p.part_size as u64 % MIB, 0);
            assert!(p.in_flight >= 1);
            // Memory: parts in flight stay within the budget unless one part alone exceeds it.
            assert!(
                p.in_flight as u64 * p.part_size as u64 <= IN_FLIGHT_BUDGET.max(p.part_size as u64)
            );
        }
    }

    #[test]
    fn content_md5_is_base64_of_the_digest() {
        // RFC 1321 test vector: MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
