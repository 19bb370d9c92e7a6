//! The S3 backend's part of `guardian doctor`: credentials, the shared object probes (with the
//! conditional write asked of the server itself), multipart upload, whether stale uploads can
//! be listed, and clock skew.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, ProvideCredentials, RuntimeComponents};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{Failure, S3Storage};
use crate::human::chain;
use crate::human::human_bytes;
use crate::storage::diagnose::{self, Checks, Conditional};
use crate::storage::{self, body_channel, ObjectKey, Storage, StorageError};

/// Every S3 check, in order. Stops after the credentials when there are none.
pub(super) async fn run(s3: &S3Storage, r: &mut Checks) {
    if !credentials(s3, r).await {
        return;
    }
    if let Some(probe) = diagnose::write_read_list(s3, r).await {
        if diagnose::create_if_absent(s3, &probe, r).await {
            let outcome = conditional(s3, &probe.key).await;
            diagnose::report_conditional(r, outcome, true);
        }
        diagnose::delete(s3, &probe, r).await;
        multipart(s3, &probe.sibling("multipart"), r).await;
        upload_listing(s3, r).await;
        versioning(s3, r).await;
    }
    clock(s3, r).await;
}

/// Versioning and object lock, as far as the server says.
#[derive(Debug, Default)]
struct Retention {
    /// `Enabled` or `Suspended`; `None`: never enabled (or the server does not do versioning).
    versioning: Option<String>,
    /// The object-lock default retention (`GOVERNANCE 30 days`), or `"on"` without a default;
    /// `None`: no object lock.
    object_lock: Option<String>,
    /// What could not be read, one note per failed question.
    unknown: Vec<String>,
}

/// Does the bucket keep what guardian deletes (versioning, object lock)? A prune on such a
/// bucket only hides snapshots behind delete markers (or is refused): their storage and their
/// final removal are the provider's lifecycle rules' business, and doctor says so once here
/// instead of prune failing or surprising every night (docs/S3.md, "Versioned buckets").
async fn versioning(s3: &S3Storage, r: &mut Checks) {
    const NAME: &str = "versioning";
    let found = bucket_retention(s3).await;
    let mut kept = Vec::new();
    if let Some(status) = &found.versioning {
        kept.push(format!("versioning is {status}"));
    }
    if let Some(lock) = &found.object_lock {
        kept.push(format!("object lock is on ({lock})"));
    }
    if !kept.is_empty() {
        r.warn(
            NAME,
            format!(
                "{}: a pruned snapshot stays in the bucket as a noncurrent version behind a delete \
                 marker{}, so retention and its storage cost are delegated to the provider; add a \
                 lifecycle rule with NoncurrentVersionExpiration (e.g. 30 days) and \
                 ExpiredObjectDeleteMarker (docs/S3.md)",
                kept.join(" and "),
                if found.object_lock.is_some() {
                    " until its lock expires"
                } else {
                    ""
                }
            ),
        );
    } else if !found.unknown.is_empty() {
        r.warn(
            NAME,
            format!(
                "could not tell whether the bucket keeps deleted objects ({}); if it is versioned \
                 or object-locked, pruned snapshots stay as noncurrent versions: see docs/S3.md",
                found.unknown.join("; ")
            ),
        );
    } else {
        r.pass(
            NAME,
            "the bucket is not versioned and has no object lock: pruned snapshots are gone",
        );
    }
}

/// Ask GetBucketVersioning and GetObjectLockConfiguration. "Not found" and "not implemented"
/// (servers without the feature) mean none.
async fn bucket_retention(s3: &S3Storage) -> Retention {
    let mut found = Retention::default();
    match s3
        .client()
        .get_bucket_versioning()
        .bucket(s3.bucket())
        .send()
        .await
    {
        Ok(out) => found.versioning = out.status().map(|s| s.as_str().to_string()),
        // A 200 whose XML the SDK refuses (moto 5 names its root element
        // GetBucketVersioningResponse, not VersioningConfiguration): read the status anyway.
        Err(e) if lenient_status(&e).is_some() => found.versioning = lenient_status(&e).flatten(),
        Err(e) => {
            let f = Failure::from_sdk(&e);
            if !f.is_not_implemented() {
                found
                    .unknown
                    .push(format!("GetBucketVersioning: {}", f.message));
            }
        }
    }
    match s3
        .client()
        .get_object_lock_configuration()
        .bucket(s3.bucket())
        .send()
        .await
    {
        Ok(out) => {
            let conf = out.object_lock_configuration();
            let enabled = conf
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled");
            if enabled {
                let retention = conf
                    .and_then(|c| c.rule())
                    .and_then(|rule| rule.default_retention());
                found.object_lock = Some(match retention {
                    Some(d) => {
                        let mode = d.mode().map_or("default", |m| m.as_str());
                        match (d.days(), d.years()) {
                            (Some(n), _) => format!("{mode} retention, {n} days"),
                            (_, Some(n)) => format!("{mode} retention, {n} years"),
                            _ => format!("{mode} retention"),
                        }
                    }
                    None => "no default retention".into(),
                });
            }
        }
        Err(e) => {
            let f = Failure::from_sdk(&e);
            let none = f.is_not_implemented()
                || f.status == Some(404)
                || f.code.as_deref() == Some("ObjectLockConfigurationNotFoundError");
            if !none {
                found
                    .unknown
                    .push(format!("GetObjectLockConfiguration: {}", f.message));
            }
        }
    }
    found
}

/// The `<Status>` of a successful GetBucketVersioning answer the SDK could not parse:
/// `Some(None)` when the answer has no status (never enabled), `None` when the answer was no
/// success at all.
fn lenient_status<E>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<Option<String>> {
    let raw = err.raw_response()?;
    if raw.status().as_u16() != 200 {
        return None;
    }
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    let status = body
        .split_once("<Status>")
        .and_then(|(_, rest)| rest.split_once("</Status>"))
        .map(|(status, _)| status.trim().to_string())
        .filter(|s| matches!(s.as_str(), "Enabled" | "Suspended"));
    Some(status)
}

/// Ask the server directly whether it refuses a second `If-None-Match: *` PUT of `key`: the
/// store falls back to check-then-write where conditional PUTs are refused, which would hide
/// what the server does.
async fn conditional(s3: &S3Storage, key: &ObjectKey) -> Conditional {
    let other = Bytes::from_static(diagnose::OTHER_BODY);
    match s3.put_object(key, &other, true).await {
        Ok(()) => Conditional::Overwrote,
        Err(f) if f.is_precondition_failed() => Conditional::Refused,
        Err(f) if f.is_not_implemented() => Conditional::Unsupported,
        Err(f) => Conditional::Failed(chain(&f.into_error(
            "conditionally upload",
            key.as_str(),
            &s3.location(),
            &s3.hint_context(),
        ))),
    }
}

/// Does the AWS chain yield credentials? Shows only the key id's last four characters.
async fn credentials(s3: &S3Storage, r: &mut Checks) -> bool {
    let Some(provider) = s3.credentials_provider() else {
        r.fail("credentials", "no AWS credential provider configured");
        return false;
    };
    match provider.provide_credentials().await {
        Ok(c) => {
            let id = c.access_key_id();
            let tail: String = id
                .chars()
                .skip(id.chars().count().saturating_sub(4))
                .collect();
            r.pass(
                "credentials",
                format!("found by the AWS credential chain (access key id ****{tail})"),
            );
            true
        }
        Err(e) => {
            let text = chain(&e);
            let why = if text.contains("no credentials found in chain") {
                "none found (tried: environment, profile, web identity, ECS, instance metadata)"
                    .to_string()
            } else {
                format!("none found ({text})")
            };
            r.fail(
                "credentials",
                format!("{why}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (see docs/S3.md)"),
            );
            false
        }
    }
}

/// Upload 8 MiB + 1 byte as a multipart upload (two parts), read it back, delete it.
async fn multipart(store: &dyn Storage, key: &ObjectKey, r: &mut Checks) {
    const NAME: &str = "multipart upload";
    const LEN: usize = (8 << 20) + 1;
    let (tx, rx) = body_channel();
    let producer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0x5a; storage::CHUNK_SIZE]);
        let mut left = LEN;
        while left > 0 {
            let n = left.min(chunk.len());
            if tx.send(Ok(chunk.slice(..n))).await.is_err() {
                return;
            }
            left -= n;
        }
    });
    let started = Instant::now();
    let put = store.put_stream(key, rx, Some(LEN as u64)).await;
    let _ = producer.await;
    match put {
        Ok(n) if n == LEN as u64 => {
            let back = read_len(store, key).await;
            match back {
                Ok(m) if m == LEN as u64 => r.pass(
                    NAME,
                    format!(
                        "{} in 2 parts, read back, in {:.1}s",
                        human_bytes(n),
                        started.elapsed().as_secs_f64()
                    ),
                ),
                Ok(m) => r.fail(NAME, format!("uploaded {LEN} B but read back {m} B")),
                Err(e) => r.fail(NAME, chain(&e)),
            }
        }
        Ok(n) => r.fail(NAME, format!("uploaded {n} B of {LEN}")),
        Err(e) => r.fail(NAME, chain(&e)),
    }
    if let Err(e) = store.delete(key).await {
        r.warn(NAME, format!("could not delete the probe: {}", chain(&e)));
    }
}

async fn read_len(store: &dyn Storage, key: &ObjectKey) -> Result<u64, StorageError> {
    let mut body = store.get_stream(key).await?;
    let mut n = 0u64;
    while let Some(chunk) = body.recv().await {
        n += chunk
            .map_err(|e| StorageError::Remote {
                op: "download",
                target: key.to_string(),
                location: store.location(),
                message: e.to_string(),
                hint: None,
            })?
            .len() as u64;
    }
    Ok(n)
}

/// Can guardian find (and so abort) interrupted multipart uploads under its prefix?
async fn upload_listing(s3: &S3Storage, r: &mut Checks) {
    const NAME: &str = "incomplete uploads";
    let res = s3
        .client()
        .list_multipart_uploads()
        .bucket(s3.bucket())
        .prefix(s3.s3_key(""))
        .max_uploads(1)
        .send()
        .await;
    match res {
        Ok(_) => r.pass(NAME, "the server lists multipart uploads: interrupted uploads are aborted by the next backup"),
        Err(e) => {
            let f = Failure::from_sdk(&e);
            let why = if f.is_not_implemented() {
                "the server cannot list multipart uploads".to_string()
            } else {
                format!("listing multipart uploads failed ({})", f.message)
            };
            r.warn(
                NAME,
                format!("{why}: interrupted uploads are not cleaned by guardian; add an AbortIncompleteMultipartUpload lifecycle rule (docs/S3.md)"),
            );
        }
    }
}

/// Compare the server's `Date` header with this machine's clock.
async fn clock(s3: &S3Storage, r: &mut Checks) {
    const NAME: &str = "clock skew";
    let date = ServerDate::default();
    let before = Utc::now();
    // Any answer carries a Date header, even an error.
    let _ = s3
        .client()
        .list_objects_v2()
        .bucket(s3.bucket())
        .prefix(s3.s3_key("guardian-doctor-"))
        .max_keys(1)
        .customize()
        .interceptor(date.clone())
        .send()
        .await;
    let after = Utc::now();
    let header = date.0.lock().expect("not poisoned").clone();
    let Some(server) = header
        .as_deref()
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
    else {
        r.warn(
            NAME,
            "the server sent no usable Date header; cannot compare clocks",
        );
        return;
    };
    let local = before + (after - before) / 2;
    // The header has one-second resolution.
    let skew = (server.with_timezone(&Utc) - local).num_milliseconds() as f64 / 1000.0;
    let detail = format!(
        "this machine's clock is {:.0}s {} the server's",
        skew.abs(),
        if skew > 0.0 { "behind" } else { "ahead of" }
    );
    match skew.abs() {
        s if s <= 60.0 => r.pass(
            NAME,
            format!("within {:.0}s of the server's clock", s.max(1.0)),
        ),
        s if s < 900.0 => r.warn(
            NAME,
            format!("{detail}; synchronise it (NTP): snapshot times come from it"),
        ),
        _ => r.fail(
            NAME,
            format!(
                "{detail}; S3 refuses signatures more than 15 minutes off: synchronise it (NTP)"
            ),
        ),
    }
}

/// Captures the `Date` header of a response.
#[derive(Debug, Clone, Default)]
struct ServerDate(Arc<Mutex<Option<String>>>);

impl Intercept for ServerDate {
    fn name(&self) -> &'static str {
        "guardian::storage::s3::diagnose::ServerDate"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(d) = context.response().headers().get("date") {
            *self.0.lock().expect("not poisoned") = Some(d.to_string());
        }
        Ok(())
    }
}
