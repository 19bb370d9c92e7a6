//! `guardian doctor`: check that the config, the databases and the store work, one line per
//! check, before a real backup depends on them.
//!
//! Checks are data ([`Check`]), never errors: a failing check is reported and the next one still
//! runs where it can. The config, database and alert checks live here; the store checks itself
//! through [`Storage::diagnose`](crate::storage::Storage::diagnose) (a probe object under the
//! prefix: put, get, list, conditional put, delete, plus each backend's own checks, see
//! `storage::diagnose` and `storage/s3/diagnose.rs`), so this module never names a backend.
//! What it does not do: change anything it did not create.

use std::path::Path;

use crate::config::Config;
use crate::error::chain;
use crate::human::human_bytes;
use crate::output::outln;
use crate::storage;

pub use crate::storage::diagnose::{Check, Checks as Report, Verdict};

impl Report {
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
    let stores: Vec<String> = cfg
        .stores
        .iter()
        .map(|s| format!("{} ({})", s.name, s.storage.kind().as_str()))
        .collect();
    let n = cfg.databases.len();
    r.pass(
        "config",
        match stores.as_slice() {
            [_] => format!(
                "{file}: {n} database{}, storage kind {}",
                if n == 1 { "" } else { "s" },
                cfg.stores[0].storage.kind().as_str()
            ),
            _ => format!(
                "{file}: {n} database{}, {} stores: {}",
                if n == 1 { "" } else { "s" },
                stores.len(),
                stores.join(", ")
            ),
        },
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

    // Every store on its own: with several, each check's name says which store it is about.
    let several = cfg.stores.len() > 1;
    for s in &cfg.stores {
        let mut checks = Report::default();
        match storage::open(&s.storage).await {
            Ok(store) => store.diagnose(&mut checks).await,
            Err(e) => checks.fail("storage", chain(&e)),
        }
        for mut c in checks.checks {
            if several {
                c.name = format!("store {}: {}", s.name, c.name);
            }
            r.checks.push(c);
        }
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
