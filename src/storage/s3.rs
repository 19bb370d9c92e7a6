//! S3Storage: the [`Storage`] trait over an S3-compatible bucket (AWS S3, MinIO, Garage, R2, B2)
//! with aws-sdk-s3.
//!
//! What it owns: the client set-up (endpoint, path style, region, retries, timeouts, and the
//! `WhenRequired` checksum settings that keep S3-compatible services working, see
//! awslabs/aws-sdk-rust#1240), the mapping of keys under `storage.prefix`, and the S3 side of
//! every trait operation. Streaming uploads live in `s3/upload.rs`, resumable downloads in
//! `s3/download.rs`, error mapping in `s3/error.rs`. What it does not own: naming, manifests, retention (those are `catalog` and
//! `manifest`), and credentials, which come only from the AWS default chain.
//!
//! Integrity: every PUT and UploadPart carries `Content-MD5`, the one checksum every S3-compatible
//! service verifies (the SDK's default CRC32 headers are what broke them). Guardian's own SHA-256
//! lives in the manifest and is checked after every download. Only single `DeleteObject`s are
//! sent, never `DeleteObjects` (which requires a checksum header some services reject).

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::list_multipart_uploads::ListMultipartUploadsOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::diagnose::Checks;
use super::{Body, ObjectKey, ObjectMeta, PutMode, Storage, StorageError};

mod config;
mod diagnose;
mod download;
mod error;
mod upload;

pub use config::{S3Config, DEFAULT_S3_TIMEOUT};

pub(crate) use error::{Failure, HintContext};

/// Region used when neither the config, `AWS_REGION` nor a profile names one. S3-compatible
/// services accept any region; AWS answers with a redirect whose hint names `storage.region`.
const FALLBACK_REGION: &str = "us-east-1";
/// Attempts per request (the first plus retries), with the SDK's standard jittered backoff.
const MAX_ATTEMPTS: u32 = 4;
/// Time allowed to open a TCP (and TLS) connection (or `storage.timeout`, if shorter): a dead
/// endpoint fails this fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Incomplete multipart uploads younger than this are left alone by `sweep`: another guardian
/// may still be uploading (a large snapshot over a slow link takes hours).
pub const DEFAULT_SWEEP_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How to build an [`S3Storage`] beyond what the config says (tests, `doctor`).
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Use these credentials instead of the AWS default chain (tests only: guardian itself
    /// always uses the chain).
    pub credentials: Option<Credentials>,
    /// See [`DEFAULT_SWEEP_GRACE`].
    pub sweep_grace: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            credentials: None,
            sweep_grace: DEFAULT_SWEEP_GRACE,
        }
    }
}

/// A store in an S3 bucket, under an optional prefix.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// `""` or `"some/prefix/"`: prepended to every key, stripped from every listed key.
    prefix: String,
    /// `s3://bucket/prefix`, plus the endpoint when it is not AWS.
    location: String,
    hints: HintContext,
    sweep_grace: Duration,
    /// `storage.timeout`: how long one request may wait for its answer.
    timeout: Duration,
    /// The chain the client signs with (kept for `doctor`, which asks it directly).
    credentials: Option<SharedCredentialsProvider>,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Build a client for an S3 store. Makes no request: problems surface, with hints, on the
    /// first operation (or in `guardian doctor`).
    pub async fn connect(cfg: &S3Config, opts: S3Options) -> Result<S3Storage, StorageError> {
        let bucket = cfg.bucket.clone();
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        match (opts.credentials, &cfg.profile) {
            (Some(creds), _) => loader = loader.credentials_provider(creds),
            // Only that profile's keys: not the environment's, which may be another store's.
            (None, Some(profile)) => {
                loader = loader.profile_name(profile).credentials_provider(
                    aws_config::profile::ProfileFileCredentialsProvider::builder()
                        .profile_name(profile)
                        .build(),
                );
            }
            (None, None) => {}
        }
        use aws_config::meta::region::RegionProviderChain;
        let configured = RegionProviderChain::first_try(cfg.region.clone().map(Region::new));
        let region = if cfg.endpoint.is_some() {
            // An S3-compatible service: only AWS_REGION may say otherwise; asking the profile
            // and EC2 instance metadata would only add delays (and log warnings) off AWS.
            configured
                .or_else(aws_config::environment::region::EnvironmentVariableRegionProvider::new())
                .or_else(Region::new(FALLBACK_REGION))
        } else {
            configured
                .or_default_provider()
                .or_else(Region::new(FALLBACK_REGION))
        };
        let sdk = loader.region(region).load().await;
        let timeout = cfg.timeout;

        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.force_path_style)
            // aws-sdk-rust#1240: the default (WhenSupported) adds CRC32 checksums that many
            // S3-compatible services reject; we send Content-MD5 ourselves instead.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT.min(timeout))
                    .read_timeout(timeout)
                    .build(),
            );
        if let Some(endpoint) = &cfg.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        let prefix = match cfg.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let mut location = format!("s3://{bucket}/{}", prefix.trim_end_matches('/'));
        if let Some(endpoint) = &cfg.endpoint {
            location.push_str(&format!(" at {endpoint}"));
        }
        Ok(S3Storage {
            client: Client::from_conf(conf.build()),
            bucket,
            prefix,
            location,
            hints: HintContext {
                custom_endpoint: cfg.endpoint.is_some(),
                path_style: cfg.force_path_style,
            },
            sweep_grace: opts.sweep_grace,
            timeout,
            credentials: sdk.credentials_provider(),
        })
    }

    /// A download body that yields nothing for this long is treated as broken (then resumed or
    /// failed): twice `storage.timeout`.
    pub(crate) fn body_idle_timeout(&self) -> Duration {
        self.timeout * 2
    }

    /// The SDK client (for `doctor`'s probes that the trait does not cover).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The credential provider requests are signed with (`None`: no credentials at all).
    pub fn credentials_provider(&self) -> Option<SharedCredentialsProvider> {
        self.credentials.clone()
    }

    /// What the error hints may assume about the configuration.
    pub(crate) fn hint_context(&self) -> HintContext {
        self.hints
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full S3 key of `key`.
    pub fn s3_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Map an SDK error from `op` on `target` (a key relative to the prefix).
    pub(crate) fn error<E>(
        &self,
        op: &'static str,
        target: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        Failure::from_sdk(&err).into_error(op, target, &self.location, &self.hints)
    }

    /// The `Remote` error for a failure we detected ourselves (not an SDK error).
    pub(crate) fn inconsistency(
        &self,
        op: &'static str,
        target: &str,
        message: String,
    ) -> StorageError {
        StorageError::Remote {
            op,
            target: target.to_string(),
            location: self.location.clone(),
            message,
            hint: None,
        }
    }

    /// One PutObject of a small body with Content-MD5, optionally with `If-None-Match: *`.
    pub(crate) async fn put_object(
        &self,
        key: &ObjectKey,
        bytes: &Bytes,
        if_absent: bool,
    ) -> Result<(), Failure> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key.as_str()))
            .content_length(bytes.len() as i64)
            .content_md5(upload::content_md5(bytes))
            .body(ByteStream::from(bytes.clone()));
        if if_absent {
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| Failure::from_sdk(&e))
    }

    /// Abort incomplete multipart uploads under `prefix` begun before `cutoff`.
    async fn abort_stale_uploads(
        &self,
        prefix: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        let mut removed = 0;
        let mut marker = None;
        loop {
            let Some(page) = self.list_uploads_page(prefix, marker.take()).await? else {
                // s3s-fs and some S3-compatibles: nothing to list, so nothing we can clean; a
                // lifecycle rule (docs/S3.md) covers it there.
                tracing::debug!(location = %self.location, "server does not list multipart uploads; skipping sweep");
                return Ok(removed);
            };
            for up in page.uploads() {
                let (Some(key), Some(id)) = (up.key(), up.upload_id()) else {
                    continue;
                };
                let started = up
                    .initiated()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()));
                if started.is_none_or(|t| t > cutoff) {
                    continue;
                }
                if self.abort_upload(key, id).await? {
                    tracing::info!(key = %key, started = ?started, "aborted an incomplete multipart upload of an interrupted run");
                    removed += 1;
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(removed);
            }
            let next = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            if next == (None, None) {
                return Ok(removed);
            }
            marker = Some(next);
        }
    }

    /// One page of the incomplete multipart uploads under `prefix`, after `marker` (key,
    /// upload id). `None` when the server cannot list them (501).
    async fn list_uploads_page(
        &self,
        prefix: &str,
        marker: Option<(Option<String>, Option<String>)>,
    ) -> Result<Option<ListMultipartUploadsOutput>, StorageError> {
        let (key_marker, id_marker) = marker.unwrap_or_default();
        let page = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(self.s3_key(prefix))
            .set_key_marker(key_marker)
            .set_upload_id_marker(id_marker)
            .send()
            .await;
        match page {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                let f = Failure::from_sdk(&e);
                if f.is_not_implemented() {
                    return Ok(None);
                }
                Err(f.into_error(
                    "list incomplete uploads under",
                    prefix,
                    &self.location,
                    &self.hints,
                ))
            }
        }
    }

    /// Abort one multipart upload (`key` is the full S3 key). False when it was gone already
    /// (another sweeper, or it completed).
    async fn abort_upload(&self, key: &str, id: &str) -> Result<bool, StorageError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let f = Failure::from_sdk(&e);
                if f.status == Some(404) {
                    return Ok(false);
                }
                Err(f.into_error(
                    "abort incomplete upload of",
                    key,
                    &self.location,
                    &self.hints,
                ))
            }
        }
    }
}

#[async_trait::async_trait]
impl Storage for S3Storage {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        size_hint: Option<u64>,
    ) -> Result<u64, StorageError> {
        upload::put_stream(self, key, body, size_hint).await
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let conditional = mode == PutMode::IfAbsent;
        let f = match self.put_object(key, &bytes, conditional).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        let already_exists = || StorageError::AlreadyExists {
            key: key.to_string(),
            location: self.location.clone(),
        };
        if conditional && f.is_precondition_failed() {
            // A retried PUT whose first attempt landed (the answer was lost) also gets 412: if
            // the stored bytes are exactly ours, the write did happen.
            if let Ok(stored) = self.get_bytes(key, bytes.len() as u64).await {
                if stored == bytes {
                    tracing::debug!(key = %key, "conditional write found its own earlier attempt");
                    return Ok(());
                }
            }
            return Err(already_exists());
        }
        if conditional && f.is_not_implemented() {
            // A service that refuses conditional PUTs: look, then write. Not atomic against a
            // writer racing for the same key, but guardian's keys are unique per snapshot.
            tracing::debug!(key = %key, "server refuses If-None-Match; checking for the key first");
            return match self.get_bytes(key, 0).await {
                Err(e) if e.is_not_found() => self
                    .put_object(key, &bytes, false)
                    .await
                    .map_err(|f| f.into_error("upload", key.as_str(), &self.location, &self.hints)),
                Ok(_) | Err(StorageError::TooLarge { .. }) => Err(already_exists()),
                Err(e) => Err(e),
            };
        }
        Err(f.into_error("upload", key.as_str(), &self.location, &self.hints))
    }

    async fn get_stream(&self, key: &ObjectKey) -> Result<Body, StorageError> {
        download::get_stream(self, key).await
    }

    async fn get_bytes(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StorageError> {
        download::get_bytes(self, key, limit).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.s3_key(prefix))
            // Keys come back percent-encoded, so a hostile key (control characters are not
            // representable in XML 1.0) cannot break the parsing of a whole page.
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                self.error(
                    "list",
                    if prefix.is_empty() {
                        "all keys"
                    } else {
                        prefix
                    },
                    e,
                )
            })?;
            for obj in page.contents() {
                // Decode only if the server says it encoded (s3s, for one, ignores the request).
                let encoded = page.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
                let full = match obj.key() {
                    Some(k) if encoded => percent_decode(k),
                    Some(k) => Some(k.to_string()),
                    None => None,
                };
                let Some(full) = full else { continue };
                let Some(rel) = full.strip_prefix(&self.prefix) else {
                    continue;
                };
                // Keys read back are untrusted: only valid keys are ever returned.
                match ObjectKey::new(rel) {
                    Ok(key) => out.push(ObjectMeta {
                        key,
                        size: obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                        modified: obj.last_modified().and_then(|t| {
                            DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
                        }),
                    }),
                    Err(e) => {
                        tracing::debug!(error = %e, "skipping object that is not a guardian key")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        // One DeleteObject per key, never DeleteObjects: the batch call needs a checksum header
        // (Content-MD5 or CRC32) that several S3-compatible services reject or require.
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key.as_str()))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = Failure::from_sdk(&e);
                // AccessDenied on a delete, where reads and writes work: a policy or an object
                // lock protects the object (MinIO says ObjectLocked).
                if matches!(f.code.as_deref(), Some("AccessDenied" | "ObjectLocked")) {
                    return Err(StorageError::DeleteRefused {
                        key: key.to_string(),
                        location: self.location.clone(),
                        message: f.message,
                    });
                }
                match f.into_error("delete", key.as_str(), &self.location, &self.hints) {
                    StorageError::NotFound { .. } => Ok(()),
                    other => Err(other),
                }
            }
        }
    }

    async fn diagnose(&self, r: &mut Checks) {
        diagnose::run(self, r).await;
    }

    async fn sweep(&self, prefix: &str) -> Result<u64, StorageError> {
        let grace = chrono::Duration::from_std(self.sweep_grace).unwrap_or(chrono::Duration::MAX);
        self.abort_stale_uploads(prefix, Utc::now() - grace).await
    }
}

/// Decode `%XX` escapes (ListObjectsV2 with `encoding-type=url`). `None` for malformed escapes
/// or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_of_listed_keys() {
        assert_eq!(
            percent_decode("prod/market/a%2Fb").as_deref(),
            Some("prod/market/a/b")
        );
        assert_eq!(
            percent_decode("plain/key.json").as_deref(),
            Some("plain/key.json")
        );
        assert_eq!(percent_decode("bad%0").as_deref(), None);
        assert_eq!(percent_decode("bad%zz").as_deref(), None);
        assert_eq!(percent_decode("x%01y").as_deref(), Some("x\u{1}y"));
    }
}
