//! `guardian doctor`: check that the config, the databases and the store work, one line per
//! check, before a real backup depends on them.
//!
//! Checks are data ([`Check`]), never errors: a failing check is reported and the next one still
//! runs where it can. The store is probed through the same [`Storage`] trait backups use (a
//! probe object under the prefix: put, get, list, conditional put, delete), plus S3 specifics
//! that the trait does not cover: credentials, multipart upload, whether stale uploads can be
//! listed, and clock skew. What it does not do: change anything it did not create.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, ProvideCredentials, RuntimeComponents};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::{Config, StorageKind};
use crate::error::chain;
use crate::human::human_bytes;
use crate::output::outln;
use crate::storage::s3::{Failure, S3Options, S3Storage};
use crate::storage::{self, body_channel, ObjectKey, PutMode, Storage, StorageError};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Works, but something deserves attention (guardian stays correct).
    Warn,
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    /// One line: what was checked, or what is wrong and what to do.
    pub detail: String,
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        // One line per check, whatever the error text looks like.
        let detail = detail
            .into()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        self.checks.push(Check {
            name: name.into(),
            verdict,
            detail,
        });
    }

    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Verdict::Pass, detail);
    }

    fn warn(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Verdict::Warn, detail);
    }

    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Verdict::Fail, detail);
    }

    /// True if any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    /// Print one line per check and a summary to stdout; returns the exit code (1 on failure).
    pub fn print(&self) -> u8 {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            outln!("{}  {:<width$}  {}", c.verdict.as_str(), c.name, c.detail);
        }
        let count = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        outln!(
            "doctor: {} passed, {} warnings, {} failed",
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail)
        );
        u8::from(self.failed())
    }
}

/// Load the config (a broken config is a failed check, not an error) and run every check.
pub async fn run(config: Option<&Path>) -> Report {
    let loaded = Config::locate(config).and_then(|p| Config::load(&p).map(|c| (p, c)));
    match loaded {
        Ok((_, cfg)) => check(&cfg).await,
        Err(e) => {
            let mut r = Report::default();
            r.fail("config", chain(&e));
            r
        }
    }
}

/// Run every check against a loaded config.
pub async fn check(cfg: &Config) -> Report {
    let mut r = Report::default();
    let file = cfg
        .file
        .as_ref()
        .map_or("(built-in)".into(), |p| p.display().to_string());
    let kind = match cfg.storage.kind {
        StorageKind::Local => "local",
        StorageKind::S3 => "s3",
    };
    let n = cfg.databases.len();
    r.pass(
        "config",
        format!(
            "{file}: {n} database{}, storage kind {kind}",
            if n == 1 { "" } else { "s" }
        ),
    );
    for db in &cfg.databases {
        let name = format!("database {}", db.name);
        let path = db.path.clone();
        match tokio::task::spawn_blocking(move || check_database(&path))
            .await
            .expect("database check does not panic")
        {
            Ok(detail) => r.pass(name, detail),
            Err(e) => r.fail(name, chain(&e)),
        }
    }
    // The alert settings load (URLs valid, files readable, each given once); nothing is sent.
    match crate::notify::Notifier::from_config(&cfg.notify).map(|n| n.targets()) {
        Ok(Some(targets)) => r.pass("notify", targets),
        Ok(None) => r.warn(
            "notify",
            "no webhook_url or heartbeat_url: failures show only in logs, metrics and exit codes",
        ),
        Err(e) => r.fail("notify", e.to_string()),
    }

    let s3 = match cfg.storage.kind {
        StorageKind::Local => {
            let root = cfg
                .storage
                .path
                .clone()
                .expect("validated config: local storage has a path");
            match std::fs::metadata(&root) {
                Ok(m) if m.is_dir() => r.pass("folder", format!("{} exists", root.display())),
                Ok(_) => r.fail(
                    "folder",
                    format!("{} exists but is not a folder", root.display()),
                ),
                Err(_) => r.warn(
                    "folder",
                    format!("{} does not exist yet; it is created now", root.display()),
                ),
            }
            None
        }
        StorageKind::S3 => match S3Storage::connect(&cfg.storage, S3Options::default()).await {
            Ok(s3) => {
                if !credentials(&s3, &mut r).await {
                    return r;
                }
                Some(s3)
            }
            Err(e) => {
                r.fail("storage", chain(&e));
                return r;
            }
        },
    };
    let store: Arc<dyn Storage> = match &s3 {
        Some(s3) => Arc::new(s3.clone()),
        None => match storage::open(&cfg.storage).await {
            Ok(s) => s,
            Err(e) => {
                r.fail("storage", chain(&e));
                return r;
            }
        },
    };
    let probe = format!("guardian-doctor-{}", crate::durable::random_hex(4));
    let reachable = probe_objects(&*store, s3.as_ref(), &probe, &mut r).await;
    if let (Some(s3), true) = (&s3, reachable) {
        multipart(&*store, &format!("{probe}-multipart"), &mut r).await;
        upload_listing(s3, &mut r).await;
    }
    if let Some(s3) = &s3 {
        clock(s3, &mut r).await;
    }
    r
}

/// A database a backup can read: a regular file (a FIFO or device is refused without opening
/// it for long), with the SQLite header, that passes `PRAGMA quick_check`. Opened read-only:
/// the source is never modified (a hot journal is reported, not rolled back).
fn check_database(path: &Path) -> crate::Result<String> {
    crate::snapshot::check_source(path)?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match crate::snapshot::run_check(path, crate::config::CheckKind::QuickCheck)? {
        Ok(()) => Ok(format!(
            "{} ({}): SQLite header ok, quick_check ok",
            path.display(),
            human_bytes(size)
        )),
        Err(problems) => Err(crate::error::Error::Integrity {
            what: path.display().to_string(),
            detail: format!(
                "PRAGMA quick_check reported: {}; restore a good snapshot (guardian restore --latest)",
                problems.join("; ")
            ),
        }),
    }
}

/// Does the AWS chain yield credentials? Shows only the key id's last four characters.
async fn credentials(s3: &S3Storage, r: &mut Report) -> bool {
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

/// Put, get, list, conditionally put and delete a probe object. Returns false if the store
/// cannot even be written (later probes would only repeat the failure).
async fn probe_objects(
    store: &dyn Storage,
    s3: Option<&S3Storage>,
    name: &str,
    r: &mut Report,
) -> bool {
    let key = ObjectKey::new(name).expect("probe names are valid keys");
    let body = Bytes::from(format!(
        "guardian doctor probe {}\n",
        Utc::now().to_rfc3339()
    ));
    let loc = store.location();
    if let Err(e) = store
        .put_bytes(&key, body.clone(), PutMode::Overwrite)
        .await
    {
        r.fail("write", chain(&e));
        return false;
    }
    r.pass("write", format!("put {key} ({} B) in {loc}", body.len()));

    match store.get_bytes(&key, 1 << 20).await {
        Ok(b) if b == body => r.pass("read", format!("got {key} back unchanged")),
        Ok(b) => r.fail(
            "read",
            format!(
                "got {} B back for {key}, not the {} B written",
                b.len(),
                body.len()
            ),
        ),
        Err(e) => r.fail("read", chain(&e)),
    }

    match store.list(name).await {
        Ok(list) if list.iter().any(|m| m.key == key) => r.pass("list", format!("{key} is listed")),
        Ok(_) => r.fail("list", format!("{key} was written but is not listed")),
        Err(e) => r.fail("list", chain(&e)),
    }

    conditional(store, s3, &key, r).await;

    match store.delete(&key).await {
        Ok(()) => match store.get_bytes(&key, 1 << 20).await {
            Err(e) if e.is_not_found() => r.pass("delete", format!("deleted {key}; it is gone")),
            Ok(_) => r.fail(
                "delete",
                format!("{key} is still there after a successful delete"),
            ),
            Err(e) => r.fail("delete", chain(&e)),
        },
        Err(e) => r.fail("delete", chain(&e)),
    }
    true
}

/// Does the store refuse to overwrite with `PutMode::IfAbsent` (`If-None-Match: *`)?
async fn conditional(store: &dyn Storage, s3: Option<&S3Storage>, key: &ObjectKey, r: &mut Report) {
    const NAME: &str = "conditional writes";
    let fresh = ObjectKey::new(format!("{key}-new")).expect("valid");
    match store
        .put_bytes(&fresh, Bytes::from_static(b"1"), PutMode::IfAbsent)
        .await
    {
        Ok(()) => {
            let _ = store.delete(&fresh).await;
        }
        Err(e) => {
            r.fail(
                NAME,
                format!(
                    "a create-if-absent PUT (used for every manifest) failed: {}",
                    chain(&e)
                ),
            );
            return;
        }
    }
    let other = Bytes::from_static(b"a different body\n");
    // On S3, ask the server directly: the store falls back to check-then-write where conditional
    // PUTs are refused, which would hide what the server does.
    let outcome = match s3 {
        Some(s3) => match s3.put_object(key, &other, true).await {
            Ok(()) => Conditional::Overwrote,
            Err(f) if f.is_precondition_failed() => Conditional::Refused,
            Err(f) if f.is_not_implemented() => Conditional::Unsupported,
            Err(f) => Conditional::Failed(chain(&f.into_error(
                "conditionally upload",
                key.as_str(),
                &store.location(),
                &s3.hint_context(),
            ))),
        },
        None => match store.put_bytes(key, other, PutMode::IfAbsent).await {
            Err(StorageError::AlreadyExists { .. }) => Conditional::Refused,
            Ok(()) => Conditional::Overwrote,
            Err(e) => Conditional::Failed(chain(&e)),
        },
    };
    match outcome {
        Conditional::Refused if s3.is_some() => {
            r.pass(NAME, "a second PUT with If-None-Match: * was refused (412)");
        }
        Conditional::Refused => r.pass(NAME, "a second create-if-absent write was refused"),
        Conditional::Overwrote => r.warn(
            NAME,
            "the server ignored If-None-Match: * and overwrote an existing object (Garage does); \
             guardian stays safe (every snapshot key is new), but two guardians racing on one \
             snapshot id would not be detected",
        ),
        Conditional::Unsupported => r.warn(
            NAME,
            "the server refuses If-None-Match: * (501 NotImplemented); guardian checks that a \
             manifest's key is free before writing it, which is not atomic against a second \
             guardian racing on the same snapshot id",
        ),
        Conditional::Failed(e) => r.fail(NAME, e),
    }
}

/// What a server did with a conditional PUT on an existing key.
enum Conditional {
    Refused,
    Overwrote,
    Unsupported,
    Failed(String),
}

/// Upload 8 MiB + 1 byte as a multipart upload (two parts), read it back, delete it.
async fn multipart(store: &dyn Storage, name: &str, r: &mut Report) {
    const NAME: &str = "multipart upload";
    const LEN: usize = (8 << 20) + 1;
    let key = ObjectKey::new(name).expect("probe names are valid keys");
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
    let put = store.put_stream(&key, rx, Some(LEN as u64)).await;
    let _ = producer.await;
    match put {
        Ok(n) if n == LEN as u64 => {
            let back = read_len(store, &key).await;
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
    if let Err(e) = store.delete(&key).await {
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
async fn upload_listing(s3: &S3Storage, r: &mut Report) {
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
async fn clock(s3: &S3Storage, r: &mut Report) {
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
        "guardian::doctor::ServerDate"
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
