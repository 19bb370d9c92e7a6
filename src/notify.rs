//! Alerts: a webhook POST on every failure (optionally on success) and heartbeat pings around
//! every backup (healthchecks.io style: `<url>/start` when it begins, `<url>` once its manifest
//! is stored, `<url>/fail` when it failed), so that a failure, a backup that never ends, and
//! silence all raise an alarm.
//!
//! The `/start` ping never delays a backup: it is sent alongside it, and the outcome ping waits
//! for it to be done (delivered or given up), so the two always arrive in order.
//!
//! Sending never fails the caller: each attempt has a time limit, transient failures (network,
//! 5xx, 429) are retried, and what still fails is logged. The URLs usually carry a token, so they
//! are [`SecretUrl`]s: logs and errors show only their scheme and host.
//!
//! The HTTP client is hyper + hyper-rustls with the aws-lc-rs provider and the system's CA
//! roots: the same TLS stack the AWS SDK already compiles in, so no second one is added.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tracing::{debug, error, warn};

use crate::config::{NotifyConfig, HEARTBEAT_ENV, WEBHOOK_ENV};
use crate::error::{Error, Result};

/// Attempts per notification.
pub(crate) const ATTEMPTS: u32 = 3;
/// Time limit of one attempt when `notify.timeout` is not set.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A URL that may carry a token: shown as `scheme://host/…` only.
#[derive(Clone)]
pub(crate) struct SecretUrl(String);

impl SecretUrl {
    /// Only the scheme and authority (host and port): safe to log.
    pub(crate) fn redacted(&self) -> String {
        match self.0.parse::<http::Uri>() {
            Ok(u) => format!(
                "{}://{}/…",
                u.scheme_str().unwrap_or("?"),
                u.authority()
                    .map_or("?", |a| a.as_str().rsplit('@').next().unwrap_or("?"))
            ),
            Err(_) => "<invalid url>".into(),
        }
    }

    /// The URL with `/suffix` added to its path (before any query).
    fn with_suffix(&self, suffix: &str) -> SecretUrl {
        let (base, query) = self
            .0
            .split_once('?')
            .map_or((self.0.as_str(), None), |(b, q)| (b, Some(q)));
        let mut s = format!("{}/{suffix}", base.trim_end_matches('/'));
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        SecretUrl(s)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Something worth telling a human about.
#[derive(Debug, Clone)]
pub enum Event {
    BackupOk {
        db: String,
        id: String,
        seconds: f64,
        stored_bytes: u64,
    },
    BackupFailed {
        db: String,
        error: String,
    },
    DrillOk {
        db: String,
        snapshot: String,
        seconds: f64,
    },
    DrillFailed {
        db: String,
        snapshot: Option<String>,
        detail: String,
    },
    PruneFailed {
        db: String,
        error: String,
    },
    VerifyFailed {
        db: String,
        detail: String,
    },
    /// `sync` left a store without some snapshot (a store failed, or no good copy exists).
    SyncFailed {
        db: String,
        error: String,
    },
}

impl Event {
    /// Machine-readable name, e.g. `backup_failed`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Event::BackupOk { .. } => "backup_ok",
            Event::BackupFailed { .. } => "backup_failed",
            Event::DrillOk { .. } => "drill_ok",
            Event::DrillFailed { .. } => "drill_failed",
            Event::PruneFailed { .. } => "prune_failed",
            Event::VerifyFailed { .. } => "verify_failed",
            Event::SyncFailed { .. } => "sync_failed",
        }
    }

    pub fn ok(&self) -> bool {
        matches!(self, Event::BackupOk { .. } | Event::DrillOk { .. })
    }

    pub(crate) fn db(&self) -> &str {
        match self {
            Event::BackupOk { db, .. }
            | Event::BackupFailed { db, .. }
            | Event::DrillOk { db, .. }
            | Event::DrillFailed { db, .. }
            | Event::PruneFailed { db, .. }
            | Event::VerifyFailed { db, .. }
            | Event::SyncFailed { db, .. } => db,
        }
    }

    /// One line for humans (the Slack `text`).
    pub(crate) fn text(&self, host: &str) -> String {
        match self {
            Event::BackupOk {
                db,
                id,
                seconds,
                stored_bytes,
            } => format!(
                "guardian on {host}: backup of {db} ok: snapshot {id}, {} stored in {seconds:.1}s",
                crate::human::human_bytes(*stored_bytes)
            ),
            Event::BackupFailed { db, error } => {
                format!("guardian on {host}: backup of {db} FAILED: {error}")
            }
            Event::DrillOk {
                db,
                snapshot,
                seconds,
            } => {
                format!("guardian on {host}: restore drill of {db} ok: snapshot {snapshot} verified in {seconds:.1}s")
            }
            Event::DrillFailed {
                db,
                snapshot,
                detail,
            } => format!(
                "guardian on {host}: restore drill of {db} FAILED{}: {detail}",
                snapshot
                    .as_ref()
                    .map(|s| format!(" on snapshot {s}"))
                    .unwrap_or_default()
            ),
            Event::PruneFailed { db, error } => {
                format!("guardian on {host}: pruning old snapshots of {db} failed (backups continue): {error}")
            }
            Event::VerifyFailed { db, detail } => {
                format!("guardian on {host}: verify of {db} found damage: {detail}")
            }
            Event::SyncFailed { db, error } => {
                format!("guardian on {host}: sync of {db}'s stores FAILED: {error}")
            }
        }
    }
}

/// The webhook body: Slack-compatible `text`, plus the same facts as fields.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    text: String,
    guardian: PayloadFacts<'a>,
}

#[derive(Debug, Serialize)]
struct PayloadFacts<'a> {
    event: &'static str,
    ok: bool,
    db: &'a str,
    host: &'a str,
    at: String,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends notifications; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    webhook: Option<SecretUrl>,
    heartbeat: Option<SecretUrl>,
    on_success: bool,
    timeout: Duration,
    retry_delay: Duration,
    host: String,
    client: Option<HttpClient>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("webhook", &self.webhook)
            .field("heartbeat", &self.heartbeat)
            .field("on_success", &self.on_success)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Build from `[notify]`, reading `*_file` secrets and the environment.
    ///
    /// # Errors
    /// A config error naming the key when a URL is given twice, its file cannot be read, or it
    /// is not an http(s) URL.
    pub fn from_config(cfg: &NotifyConfig) -> Result<Notifier> {
        let webhook = resolve(
            "notify.webhook_url",
            &cfg.webhook_url,
            &cfg.webhook_url_file,
            WEBHOOK_ENV,
        )?;
        let heartbeat = resolve(
            "notify.heartbeat_url",
            &cfg.heartbeat_url,
            &cfg.heartbeat_url_file,
            HEARTBEAT_ENV,
        )?;
        let timeout = cfg
            .timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT);
        let client = (webhook.is_some() || heartbeat.is_some()).then(build_client);
        Ok(Notifier {
            webhook,
            heartbeat,
            on_success: cfg.notify_on_success,
            timeout,
            retry_delay: Duration::from_secs(1),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "unknown host".into()),
            client,
        })
    }

    /// Wait this long between attempts (tests shorten it).
    pub fn with_retry_delay(mut self, d: Duration) -> Notifier {
        self.retry_delay = d;
        self
    }

    /// Where alerts go, redacted (`scheme://host/…`), for `doctor`; `None` when nowhere.
    pub(crate) fn targets(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(w) = &self.webhook {
            parts.push(format!("webhook {}", w.redacted()));
        }
        if let Some(h) = &self.heartbeat {
            parts.push(format!("heartbeat {}", h.redacted()));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Report `event`: the webhook (failures always, successes if asked) and, for backups, the
    /// heartbeat. Never fails; problems are logged.
    pub async fn send(&self, event: &Event) {
        let Some(client) = &self.client else { return };
        let webhook = async {
            if let Some(url) = self
                .webhook
                .as_ref()
                .filter(|_| !event.ok() || self.on_success)
            {
                let payload = Payload {
                    text: event.text(&self.host),
                    guardian: PayloadFacts {
                        event: event.name(),
                        ok: event.ok(),
                        db: event.db(),
                        host: &self.host,
                        at: crate::human::rfc3339(chrono::Utc::now()),
                    },
                };
                let body = serde_json::to_vec(&payload).expect("payload serializes");
                self.deliver(
                    client,
                    "webhook",
                    url,
                    http::Method::POST,
                    Bytes::from(body),
                    event.name(),
                    event.db(),
                )
                .await;
            }
        };
        let heartbeat = async {
            let url = match (event, &self.heartbeat) {
                (Event::BackupOk { .. }, Some(u)) => u.clone(),
                (Event::BackupFailed { .. }, Some(u)) => u.with_suffix("fail"),
                _ => return,
            };
            self.deliver(
                client,
                "heartbeat",
                &url,
                http::Method::GET,
                Bytes::new(),
                event.name(),
                event.db(),
            )
            .await;
        };
        tokio::join!(webhook, heartbeat);
    }

    /// A backup of `db` begins: ping `<heartbeat_url>/start` in the background. Await
    /// [`StartPing::done`] before sending the backup's outcome, so the pings arrive in order.
    pub(crate) fn backup_started(&self, db: &str) -> StartPing {
        let (Some(client), Some(url)) = (self.client.clone(), self.heartbeat.as_ref()) else {
            return StartPing::default();
        };
        let url = url.with_suffix("start");
        let (this, db) = (self.clone(), db.to_string());
        StartPing(Some(tokio::spawn(async move {
            this.deliver(
                &client,
                "heartbeat",
                &url,
                http::Method::GET,
                Bytes::new(),
                "backup_started",
                &db,
            )
            .await;
        })))
    }

    #[allow(clippy::too_many_arguments)] // one call per kind of notification, each spelled out
    async fn deliver(
        &self,
        client: &HttpClient,
        what: &str,
        url: &SecretUrl,
        method: http::Method,
        body: Bytes,
        event: &str,
        db: &str,
    ) {
        let target = url.redacted();
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(self.retry_delay * (attempt - 1)).await;
            }
            let mut req = http::Request::builder()
                .method(method.clone())
                .uri(url.0.as_str())
                .header(
                    http::header::USER_AGENT,
                    concat!("guardian/", env!("CARGO_PKG_VERSION")),
                );
            if !body.is_empty() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(body.clone()))
                .expect("request parts are valid");
            let retry = match tokio::time::timeout(self.timeout, client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    debug!(what, target = %target, event, db, "notification sent");
                    return;
                }
                Ok(Ok(resp)) => {
                    last = format!("HTTP {}", resp.status());
                    resp.status().is_server_error()
                        || resp.status() == http::StatusCode::TOO_MANY_REQUESTS
                }
                // The client error's text can include the URL: keep only its kind.
                Ok(Err(e)) => {
                    last = if e.is_connect() {
                        "cannot connect".into()
                    } else {
                        "request failed".into()
                    };
                    true
                }
                Err(_) => {
                    last = format!(
                        "no answer within {}",
                        humantime::format_duration(self.timeout)
                    );
                    true
                }
            };
            if !retry {
                break;
            }
            if attempt < ATTEMPTS {
                warn!(what, target = %target, attempt, error = %last, "notification failed; retrying");
            }
        }
        error!(what, target = %target, event, db, error = %last, "notification could not be delivered");
    }
}

/// The `/start` ping of a backup, in flight (see [`Notifier::backup_started`]).
#[derive(Debug, Default)]
#[must_use = "await done() before sending the backup's outcome, so the pings arrive in order"]
pub(crate) struct StartPing(Option<tokio::task::JoinHandle<()>>);

impl StartPing {
    /// Wait until the ping was delivered or given up (each attempt has its time limit).
    pub async fn done(self) {
        if let Some(task) = self.0 {
            let _ = task.await;
        }
    }
}

fn resolve(
    key: &str,
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
    env: &str,
) -> Result<Option<SecretUrl>> {
    let from_env = std::env::var(env).ok().filter(|v| !v.trim().is_empty());
    let sources = usize::from(inline.is_some())
        + usize::from(file.is_some())
        + usize::from(from_env.is_some());
    if sources > 1 {
        return Err(Error::Config(format!(
            "{key}: given more than once (in the config as {key} or {key}_file, and/or in ${env}); keep exactly one"
        )));
    }
    let value = if let Some(v) = inline {
        v.clone()
    } else if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{key}_file: read {}: {e}", path.display())))?;
        crate::config::warn_if_readable_by_others(path, &format!("{key}_file"));
        text.lines().next().unwrap_or_default().to_string()
    } else if let Some(v) = from_env {
        v
    } else {
        return Ok(None);
    };
    let value = value.trim().to_string();
    let origin = if inline.is_some() {
        key.to_string()
    } else if let Some(p) = file {
        format!("{key}_file ({})", p.display())
    } else {
        format!("${env}")
    };
    crate::config::check_url(&value)
        .map_err(|reason| Error::Config(format!("{origin}: {reason}")))?;
    Ok(Some(SecretUrl(value)))
}

fn build_client() -> HttpClient {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(Arc::clone(&provider)) {
        Ok(b) => b,
        Err(e) => {
            // http:// targets still work; https:// ones fail per attempt, loudly.
            warn!(error = %e, "no system CA certificates found (install ca-certificates); https notifications will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_urls_are_redacted() {
        let u = SecretUrl("https://hooks.slack.com/services/T000/B000/XXXXSECRET".into());
        assert_eq!(u.redacted(), "https://hooks.slack.com/…");
        assert!(!format!("{u:?}").contains("SECRET"));
        let u = SecretUrl("https://user:pw@hc-ping.com/uuid-secret?x=1".into());
        assert!(
            !u.redacted().contains("pw") && !u.redacted().contains("secret"),
            "{}",
            u.redacted()
        );
        assert_eq!(
            u.with_suffix("fail").0,
            "https://user:pw@hc-ping.com/uuid-secret/fail?x=1"
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echo() {
        for bad in ["hooks.slack.com/x", "ftp://host/x", "", "https://"] {
            let e = crate::config::check_url(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert!(crate::config::check_url("http://127.0.0.1:8080/hook").is_ok());
    }
}
