//! The config keys of `guardian run`: schedules and retention per database, `[service]`, and
//! `[notify]`, with their validation (split from `config.rs` to keep it short).

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, DatabaseConfig};

/// A validation failure: the dotted key and the reason.
type Invalid = (String, String);

fn invalid<T>(field: String, reason: String) -> Result<T, Invalid> {
    Err((field, reason))
}

/// `[databases.retention]`: restic-style `--keep-*` rules; a snapshot is kept if any rule keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N snapshots.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[serde(default)]
    pub daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks (Monday start) that have one.
    #[serde(default)]
    pub weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[serde(default)]
    pub monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[serde(default)]
    pub yearly: u32,
    /// Deletion is two-phase: prune first marks a snapshot it would delete (a tombstone in its
    /// folder), and deletes it only when a prune at least this long after still would (e.g.
    /// "24h"); a snapshot needed again meanwhile (restored, or kept by the policy again) is
    /// un-marked. "0s" deletes in one prune. Default: "24h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_delete: Option<String>,
}

/// `keep_delete` when none is configured.
pub const DEFAULT_KEEP_DELETE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl RetentionConfig {
    /// How long a snapshot stays marked before prune deletes it (validated at load).
    pub fn keep_delete(&self) -> std::time::Duration {
        self.keep_delete
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(DEFAULT_KEEP_DELETE)
    }

    /// True when no rule keeps anything (such a policy deletes nothing, see `retention`).
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
    }
}

/// `[service]`: how `guardian run` serves health and metrics and how it stops.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address of the `/healthz` and `/metrics` listener. Default: `127.0.0.1:9187`.
    pub listen: Option<String>,
    /// How long a stop signal waits for the job in flight before cancelling it. Default: "8s"
    /// (under Docker's 10 s stop timeout).
    pub shutdown_timeout: Option<String>,
    /// How often the service re-reads the store, so that `/metrics`, `/healthz` and the status
    /// page also show what other processes did (a backup or drill from the command line,
    /// another host). Default: "60s"; from "1s" to "1h".
    pub refresh: Option<String>,
}

/// Default `service.listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9187";
/// Default `service.refresh`.
pub const DEFAULT_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// Default `service.shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

impl ServiceConfig {
    /// The listener address (validated at load).
    pub fn listen(&self) -> std::net::SocketAddr {
        self.listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .expect("validated config: service.listen is an address")
    }

    /// How often the store is re-read (validated at load).
    pub fn refresh(&self) -> std::time::Duration {
        self.refresh
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(DEFAULT_REFRESH)
    }

    /// The shutdown grace period (validated at load).
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        self.shutdown_timeout
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT)
    }
}

/// `[notify]`: where failures (and optionally successes) are reported.
///
/// Both URLs usually carry a token, so they are secrets: give each inline, in a file
/// (`*_file`, e.g. a Docker/Kubernetes secret) or in the environment (`GUARDIAN_WEBHOOK_URL`,
/// `GUARDIAN_HEARTBEAT_URL`), exactly one of the three. They are never logged in full.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Webhook that gets a JSON POST (Slack-compatible `text` field) on every failure.
    pub webhook_url: Option<String>,
    /// File holding the webhook URL (first line).
    pub webhook_url_file: Option<PathBuf>,
    /// Also POST to the webhook when a backup or drill succeeds. Default: false.
    #[serde(default)]
    pub notify_on_success: bool,
    /// Heartbeat pinged (GET) at `<url>/start` when each backup begins, at `<url>` once its
    /// snapshot is stored, at `<url>/fail` when it failed (healthchecks.io style), so that
    /// silence and a backup that never ends raise an alarm too.
    pub heartbeat_url: Option<String>,
    /// File holding the heartbeat URL (first line).
    pub heartbeat_url_file: Option<PathBuf>,
    /// Time limit of one notification attempt (3 attempts are made). Default: "10s".
    pub timeout: Option<String>,
}

/// Environment variable that may hold `notify.webhook_url`.
pub const WEBHOOK_ENV: &str = "GUARDIAN_WEBHOOK_URL";
/// Environment variable that may hold `notify.heartbeat_url`.
pub const HEARTBEAT_ENV: &str = "GUARDIAN_HEARTBEAT_URL";

/// Check the schedule and retention keys of `databases[i]`.
pub(super) fn validate_database(i: usize, db: &DatabaseConfig) -> Result<(), Invalid> {
    for (key, cron) in [
        ("backup", &db.backup),
        ("incremental", &db.incremental),
        ("drill", &db.drill),
    ] {
        if let Some(expr) = cron {
            if let Err(reason) = crate::schedule::parse_cron(expr) {
                return invalid(format!("databases[{i}].{key}"), reason);
            }
        }
    }
    if let Some(tz) = &db.timezone {
        if tz.parse::<chrono_tz::Tz>().is_err() {
            return invalid(
                format!("databases[{i}].timezone"),
                format!("unknown time zone {tz:?} (use an IANA name such as \"Europe/Paris\" or \"UTC\")"),
            );
        }
    }
    if let Some(j) = &db.jitter {
        match humantime::parse_duration(j) {
            Err(e) => {
                return invalid(
                    format!("databases[{i}].jitter"),
                    format!("{e} (e.g. \"5m\")"),
                )
            }
            Ok(d) if d > std::time::Duration::from_secs(6 * 3600) => {
                return invalid(
                    format!("databases[{i}].jitter"),
                    "must be at most 6h".into(),
                )
            }
            Ok(jitter) if !jitter.is_zero() => {
                // A delay as long as the time to the next tick makes that tick find the job
                // still waiting, and skip: with a long enough jitter, every tick but one skips.
                let now = chrono::Utc::now();
                for (key, cron) in [
                    ("backup", &db.backup),
                    ("incremental", &db.incremental),
                    ("drill", &db.drill),
                ] {
                    let Some(expr) = cron else { continue };
                    let Some(gap) = crate::schedule::shortest_interval(expr, db.timezone(), now)
                    else {
                        continue;
                    };
                    if jitter >= gap {
                        return invalid(
                            format!("databases[{i}].jitter"),
                            format!(
                                "{j:?} is not shorter than the shortest time between two runs of \
                                 databases[{i}].{key} ({expr:?}: {}), so delayed runs would overlap the \
                                 next tick and skip it; use a jitter well under {} (e.g. a tenth of it), \
                                 or a less frequent schedule",
                                humantime::format_duration(gap),
                                humantime::format_duration(gap)
                            ),
                        );
                    }
                }
            }
            Ok(_) => {}
        }
    }
    if let Some(kd) = db.retention.as_ref().and_then(|r| r.keep_delete.as_deref()) {
        if let Err(e) = humantime::parse_duration(kd) {
            return invalid(
                format!("databases[{i}].retention.keep_delete"),
                format!("{e} (e.g. \"24h\", or \"0s\" to delete in one prune)"),
            );
        }
    }
    if db.retention.as_ref().is_some_and(|r| r.is_empty()) {
        return invalid(
            format!("databases[{i}].retention"),
            "every rule is 0, which would keep nothing; set keep_last (or daily, weekly, monthly, yearly) \
             to at least 1, or remove the table to keep every snapshot"
                .into(),
        );
    }
    Ok(())
}

/// Check `[service]` and `[notify]`.
pub(super) fn validate(cfg: &Config) -> Result<(), Invalid> {
    if let Some(l) = &cfg.service.listen {
        if l.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "service.listen".into(),
                format!("{l:?} is not an address with a port (e.g. \"127.0.0.1:9187\" or \"0.0.0.0:9187\")"),
            );
        }
    }
    if let Some(r) = &cfg.service.refresh {
        match humantime::parse_duration(r) {
            Ok(d)
                if (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600))
                    .contains(&d) => {}
            Ok(_) => {
                return invalid(
                    "service.refresh".into(),
                    format!("{r:?} is out of range: give from \"1s\" to \"1h\" (default \"60s\")"),
                )
            }
            Err(e) => return invalid("service.refresh".into(), format!("{e} (e.g. \"60s\")")),
        }
    }
    for (key, value) in [
        ("service.shutdown_timeout", &cfg.service.shutdown_timeout),
        ("notify.timeout", &cfg.notify.timeout),
    ] {
        if let Some(v) = value {
            if let Err(e) = humantime::parse_duration(v) {
                return invalid(key.into(), format!("{e} (e.g. \"8s\")"));
            }
        }
    }
    for (key, inline, file) in [
        (
            "notify.webhook_url",
            &cfg.notify.webhook_url,
            &cfg.notify.webhook_url_file,
        ),
        (
            "notify.heartbeat_url",
            &cfg.notify.heartbeat_url,
            &cfg.notify.heartbeat_url_file,
        ),
    ] {
        if inline.is_some() && file.is_some() {
            return invalid(
                key.into(),
                format!("give either {key} or {key}_file, not both"),
            );
        }
        if let Some(url) = inline {
            // Never echo the URL: it may carry a token.
            if let Err(reason) = check_url(url) {
                return invalid(key.into(), reason);
            }
        }
    }
    Ok(())
}

/// Check that `url` is an absolute http(s) URL. The reason never contains the URL.
pub(crate) fn check_url(url: &str) -> std::result::Result<(), String> {
    let uri: http::Uri = url.trim().parse().map_err(|_| {
        "is not a valid URL (the value is not shown: it may hold a token)".to_string()
    })?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err("must be an absolute http:// or https:// URL with a host (the value is not shown: it may hold a token)".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Config;

    fn parse(extra: &str) -> crate::Result<Config> {
        Config::parse_str(
            &format!(
                "[storage]\npath = \"b\"\n[[databases]]\nname = \"m\"\npath = \"m.db\"\n{extra}"
            ),
            Path::new("/etc/guardian"),
        )
    }

    #[test]
    fn service_keys_have_safe_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.service.listen().to_string(), "127.0.0.1:9187");
        assert_eq!(c.service.shutdown_timeout(), Duration::from_secs(8));
        assert_eq!(c.databases[0].timezone(), chrono_tz::UTC);
        assert_eq!(c.databases[0].jitter(), Duration::ZERO);
        assert!(c.databases[0].retention.is_none());
        assert!(!c.notify.notify_on_success);
    }

    #[test]
    fn service_keys_parse_and_resolve() {
        let c = parse(
            "backup = \"0 3 * * *\"\ntimezone = \"Europe/Paris\"\njitter = \"5m\"\n\
             [databases.retention]\ndaily = 7\n\
             [service]\nlisten = \"0.0.0.0:9999\"\nshutdown_timeout = \"3s\"\n\
             [notify]\nwebhook_url_file = \"hook.url\"\n",
        )
        .unwrap();
        let db = &c.databases[0];
        assert_eq!(db.jitter(), Duration::from_secs(300));
        assert_eq!(db.timezone().name(), "Europe/Paris");
        assert_eq!(db.retention.as_ref().unwrap().daily, 7);
        assert_eq!(c.service.shutdown_timeout(), Duration::from_secs(3));
        assert_eq!(
            c.notify.webhook_url_file.as_deref(),
            Some(Path::new("/etc/guardian/hook.url"))
        );
    }

    #[test]
    fn service_key_errors_name_the_key() {
        for (extra, key) in [
            ("jitter = \"7h\"\n", "databases[0].jitter"),
            (
                "backup = \"*/10 * * * *\"\njitter = \"10m\"\n",
                "databases[0].jitter",
            ),
            ("max_age = \"0s\"\n", "databases[0].max_age"),
            (
                "[databases.retention]\nkeep_last = 0\n",
                "databases[0].retention",
            ),
            ("[databases.retention]\nkeep_lats = 3\n", "keep_lats"),
            (
                "[notify]\nwebhook_url = \"x\"\nwebhook_url_file = \"y\"\n",
                "notify.webhook_url",
            ),
            (
                "[notify]\nheartbeat_url = \"hc-ping.com/abc\"\n",
                "notify.heartbeat_url",
            ),
            ("[notify]\ntimeout = \"soon\"\n", "notify.timeout"),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
