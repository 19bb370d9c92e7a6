//! `[storage]` with `kind = "s3"`: the S3 backend's keys, checked here, where they are used.

use std::time::Duration;

use crate::storage::config::{InvalidKey, StorageTable};

/// `storage.timeout` when none is configured.
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(60);

/// A validated S3 store: which bucket, where in it, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket (guardian never creates it).
    pub bucket: String,
    /// The folder inside the bucket, without leading or trailing `/` (empty: the bucket root).
    pub prefix: String,
    /// The region, if configured; else `AWS_REGION`, the profile's, or `us-east-1`.
    pub region: Option<String>,
    /// An S3-compatible service's endpoint URL; `None`: AWS.
    pub endpoint: Option<String>,
    /// Address the bucket as `endpoint/bucket`.
    pub force_path_style: bool,
    /// How long one request may wait for its answer.
    pub timeout: Duration,
    /// The shared-files profile whose credentials (and region) this store uses; `None`: the
    /// standard AWS chain.
    pub profile: Option<String>,
}

impl S3Config {
    /// The keys an S3 store uses.
    const KEYS: &[&str] = &[
        "bucket",
        "prefix",
        "region",
        "endpoint",
        "force_path_style",
        "timeout",
        "profile",
    ];

    /// A config for `bucket` under `prefix` at `endpoint` (path style), every other key at its
    /// default.
    pub fn new(bucket: &str, prefix: &str, endpoint: Option<&str>) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region: None,
            endpoint: endpoint.map(str::to_string),
            force_path_style: endpoint.is_some(),
            timeout: DEFAULT_S3_TIMEOUT,
            profile: None,
        }
    }

    /// Check the S3 keys of the table at `at`; keys of other kinds are refused.
    pub(crate) fn from_table(t: &StorageTable, at: &str) -> Result<S3Config, InvalidKey> {
        let invalid = |key: &str, reason: String| InvalidKey::new(at, key, reason);
        if t.foreign_key(Self::KEYS).is_some() {
            return Err(invalid(
                "path",
                format!(
                    "only used when {at}.kind = \"local\"; an S3 store uses {at}.bucket and {at}.prefix"
                ),
            ));
        }
        let Some(bucket) = &t.bucket else {
            return Err(invalid(
                "bucket",
                format!("required when {at}.kind = \"s3\""),
            ));
        };
        validate_bucket(bucket, at).map_err(|r| invalid("bucket", r))?;
        let prefix = t.prefix.as_deref().unwrap_or("").trim_matches('/');
        validate_prefix(prefix).map_err(|r| invalid("prefix", r))?;
        if let Some(region) = &t.region {
            validate_region(region).map_err(|r| invalid("region", r))?;
        }
        if let Some(endpoint) = &t.endpoint {
            validate_endpoint(endpoint).map_err(|r| invalid("endpoint", r))?;
        }
        let timeout = match &t.timeout {
            Some(text) => parse_timeout(text).map_err(|r| invalid("timeout", r))?,
            None => DEFAULT_S3_TIMEOUT,
        };
        if let Some(p) = &t.profile {
            if p.is_empty()
                || p.len() > 64
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(invalid(
                    "profile",
                    format!("{p:?} is not a profile name (1 to 64 of A-Z, a-z, 0-9, '_', '-', '.'): the name of a [profile] in ~/.aws/credentials"),
                ));
            }
        }
        Ok(S3Config {
            profile: t.profile.clone(),
            bucket: bucket.clone(),
            prefix: prefix.to_string(),
            region: t.region.clone(),
            endpoint: t.endpoint.clone(),
            force_path_style: t.force_path_style.unwrap_or(false),
            timeout,
        })
    }
}

/// S3 bucket names: 3-63 characters of `[a-z0-9.-]` (plus `_` and capitals, which some
/// S3-compatible services allow), no `/`.
fn validate_bucket(name: &str, at: &str) -> Result<(), String> {
    if !(3..=63).contains(&name.len())
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "{name:?} is not a bucket name (3 to 63 characters of a-z, 0-9, '.', '-'; put folders in {at}.prefix)"
        ));
    }
    Ok(())
}

/// Folders of `[A-Za-z0-9._-]`, as object keys are.
fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    for part in prefix.split('/') {
        crate::names::validate_component(part).map_err(|r| {
            format!("{r} in {prefix:?} (use folders of [A-Za-z0-9._-], e.g. \"prod/guardian\")")
        })?;
    }
    Ok(())
}

fn validate_region(region: &str) -> Result<(), String> {
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{region:?} is not a region name (e.g. \"us-east-1\", \"auto\" for R2)"
        ));
    }
    Ok(())
}

/// An endpoint is `http(s)://host[:port][/path]`, and never carries credentials.
fn validate_endpoint(url: &str) -> Result<(), String> {
    if url.contains('@') {
        // Never echo it: the part before '@' is most likely a credential.
        return Err("must not contain credentials (user:password@); they come from the AWS credential chain".into());
    }
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || url.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
        return Err(format!("{url:?} is not a URL like http://127.0.0.1:9000"));
    }
    Ok(())
}

/// A request timeout: a duration from 1s to 1h.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Err(e) => Err(format!(
            "{text:?} is not a duration ({e}); e.g. \"60s\" or \"2m\""
        )),
        Ok(d) if d < Duration::from_secs(1) || d > Duration::from_secs(3600) => {
            Err(format!("{text:?} is out of range: use 1s to 1h"))
        }
        Ok(d) => Ok(d),
    }
}
