//! Turning AWS SDK errors into [`StorageError`]s: "absent" becomes `NotFound`, everything else
//! becomes `Remote` with the provider's error code, the HTTP status and a one-line hint at the
//! likely misconfiguration (wrong keys, wrong region, path style, bucket name).
//!
//! Nothing here ever sees a secret: SDK errors carry codes and messages, never credentials.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::storage::StorageError;

/// What went wrong with one S3 request, reduced to the parts guardian reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The provider's error code (`NoSuchKey`, `SignatureDoesNotMatch`, ...), when it sent one.
    pub code: Option<String>,
    /// One line: code, status and message, or the transport failure.
    pub message: String,
    /// True when no HTTP answer came back at all (refused, DNS, TLS, timeout).
    pub transport: bool,
}

impl Failure {
    /// Reduce an SDK error.
    pub fn from_sdk<E>(err: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = match err {
            SdkError::ServiceError(e) => Some(e.raw().status().as_u16()),
            SdkError::ResponseError(e) => Some(e.raw().status().as_u16()),
            _ => None,
        };
        let code = err.code().map(str::to_string);
        let (message, transport) = match err {
            // A success status we could not parse (or an error without a code): say what the
            // SDK saw rather than "no error code".
            SdkError::ServiceError(_) if code.is_none() && status.is_some_and(|s| s < 300) => (
                format!("unreadable answer: {}", crate::human::chain(err)),
                false,
            ),
            SdkError::ServiceError(_) => {
                let msg = err.message().unwrap_or("").trim();
                let code = code.as_deref().unwrap_or("no error code");
                let status = status.map_or(String::new(), |s| format!(" (HTTP {s})"));
                let msg = if msg.is_empty() {
                    String::new()
                } else {
                    format!(": {msg}")
                };
                (format!("{code}{status}{msg}"), false)
            }
            SdkError::TimeoutError(_) => (TIMED_OUT.to_string(), true),
            SdkError::DispatchFailure(e) if e.is_timeout() => (TIMED_OUT.to_string(), true),
            // The Display chain, not DisplayErrorContext (which appends a Debug dump).
            SdkError::DispatchFailure(_) => (transport_message(err), true),
            _ => (transport_message(err), status.is_none()),
        };
        Failure {
            status,
            code,
            message: one_line(&message),
            transport,
        }
    }

    /// True when the server said the object (not the bucket) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self.code.as_deref() {
            Some("NoSuchKey" | "NotFound") => true,
            Some(_) => false,
            None => self.status == Some(404),
        }
    }

    /// True for `412 Precondition Failed`: a conditional write found the key taken.
    pub fn is_precondition_failed(&self) -> bool {
        self.status == Some(412) || self.code.as_deref() == Some("PreconditionFailed")
    }

    /// True when the server does not implement the operation (s3s-fs, some S3-compatibles).
    pub fn is_not_implemented(&self) -> bool {
        self.status == Some(501) || self.code.as_deref() == Some("NotImplemented")
    }

    /// The `StorageError` for this failure of `op` on `target`.
    pub fn into_error(
        self,
        op: &'static str,
        target: &str,
        location: &str,
        ctx: &HintContext,
    ) -> StorageError {
        if self.is_not_found() {
            return StorageError::NotFound {
                key: target.to_string(),
                location: location.to_string(),
            };
        }
        StorageError::Remote {
            op,
            target: target.to_string(),
            location: location.to_string(),
            hint: hint(&self, ctx),
            message: self.message,
        }
    }
}

/// The message of a request that got no answer in time.
const TIMED_OUT: &str = "no answer within storage.timeout";

/// What the hints may mention about the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HintContext {
    /// A custom `storage.endpoint` is set.
    pub custom_endpoint: bool,
    /// `storage.force_path_style` is on.
    pub path_style: bool,
}

/// A guess at the misconfiguration behind a failure, for the end of the error line.
pub(crate) fn hint(f: &Failure, ctx: &HintContext) -> Option<&'static str> {
    let text = f.message.to_ascii_lowercase();
    if f.transport {
        if text.contains("credentials") {
            return Some(
                "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (see docs/S3.md)",
            );
        }
        if ctx.custom_endpoint
            && !ctx.path_style
            && (text.contains("dns") || text.contains("lookup"))
        {
            return Some("the bucket name could not be resolved as a host name: set storage.force_path_style = true");
        }
        if text.contains("dns") || text.contains("lookup") {
            return Some("the host name does not resolve: check storage.endpoint and the network");
        }
        if text.contains("certificate") || text.contains("tls") {
            return Some("TLS failed: check that storage.endpoint uses the right scheme (http:// or https://)");
        }
        if text.contains("reset by peer") || text.contains("broken pipe") {
            return Some("the connection kept breaking through every retry: check the network and any proxy or firewall in between");
        }
        if f.message == TIMED_OUT {
            return Some("the service stayed silent through every retry: is it up and reachable? on a slow link, raise storage.timeout");
        }
        if !ctx.custom_endpoint {
            return Some("can this machine reach AWS S3? check the network, proxy and firewall");
        }
        return Some("is storage.endpoint right and the server up and reachable?");
    }
    let hint = match f.code.as_deref() {
        Some("InvalidAccessKeyId") => {
            "the server does not know this access key id: check AWS_ACCESS_KEY_ID (or the profile) and storage.endpoint"
        }
        Some("SignatureDoesNotMatch") => {
            "the secret key does not match the access key id: check AWS_SECRET_ACCESS_KEY (or the profile)"
        }
        Some("AccessDenied" | "AllAccessDisabled" | "Forbidden") => {
            "the credentials lack a permission on this bucket or prefix: see the policy in docs/S3.md"
        }
        Some("NoSuchBucket") => {
            "check storage.bucket: the bucket must exist (guardian never creates it) on this endpoint and account"
        }
        Some("InvalidBucketName") => "check storage.bucket",
        Some("PermanentRedirect" | "IllegalLocationConstraintException") => {
            "the bucket is in another region: set storage.region to its region"
        }
        Some("AuthorizationHeaderMalformed") => {
            "wrong region: set storage.region to the bucket's region (\"auto\" for R2)"
        }
        Some("RequestTimeTooSkewed") => "this machine's clock is off: synchronise it (NTP)",
        Some("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch") => {
            "the bytes changed in transit and the server refused them; retry, and check any proxy in between"
        }
        Some("SlowDown" | "ServiceUnavailable" | "InternalError") => {
            "the service kept failing after retries with backoff; try again later"
        }
        Some("NotImplemented") => "this server does not support the operation",
        Some("ExpiredToken" | "InvalidToken" | "TokenRefreshRequired") => {
            "the session token expired or is invalid: refresh the credentials"
        }
        _ => match f.status {
            Some(301) => "the bucket is in another region: set storage.region to its region",
            Some(400) if !ctx.custom_endpoint => "check storage.region",
            Some(403) => {
                "access denied: wrong keys, or the credentials lack a permission on this bucket or prefix (see docs/S3.md)"
            }
            Some(404) => "check storage.bucket (and storage.endpoint / force_path_style for S3-compatible services)",
            Some(501) => "this server does not support the operation",
            Some(s) if s >= 500 => "the service kept failing after retries with backoff; try again later",
            _ => return None,
        },
    };
    Some(hint)
}

/// A transport failure in a few words: the credential chain's report lists every provider it
/// tried, which the hint already covers.
fn transport_message(err: &(dyn std::error::Error + 'static)) -> String {
    let text = crate::human::chain(err);
    if text.contains("no credentials found in chain") || text.contains("credentials not loaded") {
        return "no AWS credentials found (tried: environment, profile, web identity, ECS, instance metadata)"
            .to_string();
    }
    text
}

/// Collapse whitespace runs (SDK messages sometimes span lines) into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(status: u16, code: &str) -> Failure {
        Failure {
            status: Some(status),
            code: Some(code.into()),
            message: format!("{code} (HTTP {status})"),
            transport: false,
        }
    }

    const CTX: HintContext = HintContext {
        custom_endpoint: true,
        path_style: true,
    };

    #[test]
    fn absent_objects_are_not_found_but_absent_buckets_are_not() {
        assert!(svc(404, "NoSuchKey").is_not_found());
        assert!(svc(404, "NotFound").is_not_found());
        assert!(!svc(404, "NoSuchBucket").is_not_found());
        let headless = Failure {
            code: None,
            ..svc(404, "x")
        };
        assert!(headless.is_not_found());
        let e = svc(404, "NoSuchBucket").into_error("get", "k", "s3://b", &CTX);
        assert!(matches!(e, StorageError::Remote { .. }), "{e}");
        assert!(e.to_string().contains("storage.bucket"), "{e}");
    }

    #[test]
    fn auth_failures_name_the_likely_mistake() {
        assert!(hint(&svc(403, "InvalidAccessKeyId"), &CTX)
            .unwrap()
            .contains("AWS_ACCESS_KEY_ID"));
        assert!(hint(&svc(403, "SignatureDoesNotMatch"), &CTX)
            .unwrap()
            .contains("AWS_SECRET_ACCESS_KEY"));
        assert!(hint(&svc(400, "AuthorizationHeaderMalformed"), &CTX)
            .unwrap()
            .contains("storage.region"));
        assert!(hint(&svc(301, "PermanentRedirect"), &CTX)
            .unwrap()
            .contains("storage.region"));
        let no_code = Failure {
            code: None,
            ..svc(403, "x")
        };
        assert!(hint(&no_code, &CTX).unwrap().contains("docs/S3.md"));
    }

    #[test]
    fn unresolvable_virtual_host_suggests_path_style() {
        let f = Failure {
            status: None,
            code: None,
            message: "dispatch failure: dns error: failed to lookup address information".into(),
            transport: true,
        };
        let ctx = HintContext {
            custom_endpoint: true,
            path_style: false,
        };
        assert!(hint(&f, &ctx).unwrap().contains("force_path_style"));
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
