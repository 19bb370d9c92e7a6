//! `guardian init`: write a commented starter config for one database and a store, then run
//! the same checks as `doctor` on it.
//!
//! Everything that can be refused is refused before anything is written: the database must be
//! a readable SQLite file (`snapshot::check_source`: a folder, FIFO, device or other file is
//! refused without blocking), the config's folder must exist, an existing file (or symlink) at
//! the config path is never replaced, and a local store may not be or contain the database or
//! the config. The file is created exclusively with mode 0600 and fsynced; every value written
//! into it is TOML-quoted, so a path with quotes or newlines cannot inject keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};

/// The config file written when `--config` is not given (the first of `SEARCH_PATHS`).
pub const DEFAULT_CONFIG: &str = "guardian.toml";

/// Where `init` puts a local store when `--store` is not given: next to the config.
pub const DEFAULT_STORE_DIR: &str = "guardian-store";

/// What `init` was asked for.
#[derive(Debug, Clone)]
pub struct InitRequest {
    /// The config file to create (`--config`, else `./guardian.toml`).
    pub config: PathBuf,
    /// The database to guard.
    pub db: PathBuf,
    /// `--store`: a folder or `s3://BUCKET/PREFIX`.
    pub store: Option<String>,
    /// `--name`: the database's name, else derived from the file name.
    pub name: Option<String>,
}

/// A store as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Local(PathBuf),
    S3 {
        bucket: String,
        prefix: Option<String>,
    },
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    pub config: PathBuf,
    pub name: String,
    pub db: PathBuf,
    pub store: StoreSpec,
    /// Things that work but deserve a second look (one line each).
    pub warnings: Vec<String>,
}

/// Check everything, then write the config. Nothing is written when an error is returned.
pub fn write(req: &InitRequest) -> Result<Written> {
    let cwd = std::env::current_dir().map_err(|e| Error::io("read the current folder", ".", e))?;
    let config = absolute(&cwd, &req.config);
    let db = absolute(&cwd, &req.db);
    let mut warnings = Vec::new();

    // The config path first: the cheapest refusals, and the one a re-run hits.
    if std::fs::symlink_metadata(&config).is_ok() {
        return Err(Error::Usage(format!(
            "{} already exists; init never overwrites a config: edit it, or give another --config FILE",
            config.display()
        )));
    }
    let config_dir = config.parent().unwrap_or(Path::new("/")).to_path_buf();
    match std::fs::metadata(&config_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Usage(format!(
                "{} is not a folder; give --config a file in an existing folder",
                config_dir.display()
            )))
        }
        Err(_) => {
            return Err(Error::Usage(format!(
            "folder {} does not exist; create it first (mkdir -p {}) or give another --config FILE",
            config_dir.display(),
            config_dir.display()
        )))
        }
    }

    // The database: a SQLite file that exists now (FIFOs, folders and devices are refused
    // without blocking). A database that does not exist yet cannot be checked or backed up.
    let db_text = utf8(&db, "--db")?.to_string();
    crate::snapshot::check_source(&db).map_err(|e| match e {
        // A bad --db is a usage error of init, whatever kind of source problem it is.
        Error::Usage(m) | Error::Source(m) | Error::NotADatabase(m) => Error::Usage(format!(
            "{}; give --db the path of an existing SQLite database",
            m.replace("; point databases[].path at the SQLite database file", "")
                .replace(" (check databases[].path in the config)", "")
        )),
        other => other,
    })?;
    let db = std::fs::canonicalize(&db).unwrap_or(db);
    let name = match &req.name {
        Some(n) => n.clone(),
        None => derive_name(&db).ok_or_else(|| {
            Error::Usage(format!(
                "cannot derive a database name from {}; give --name NAME ([a-z0-9_-]+)",
                db_text
            ))
        })?,
    };
    crate::names::validate_name(&name)
        .map_err(|why| Error::Usage(format!("database name {name:?}: {why}; give --name NAME")))?;

    let store = match req.store.as_deref() {
        Some(s) if s.starts_with("s3://") => parse_s3(s)?,
        Some(s) if s.contains("://") => {
            return Err(Error::Usage(format!(
                "--store {s}: only a local folder or s3://BUCKET/PREFIX is supported"
            )))
        }
        Some("") => {
            return Err(Error::Usage(
                "--store is empty; give a folder or s3://BUCKET/PREFIX".into(),
            ))
        }
        Some(s) => StoreSpec::Local(absolute(&cwd, Path::new(s))),
        None => StoreSpec::Local(config_dir.join(DEFAULT_STORE_DIR)),
    };
    if let StoreSpec::Local(root) = &store {
        check_local_store(root, &db, &config, &mut warnings)?;
    }

    let text = render(&name, &db, &store)?;
    // Parse what we are about to write: a template bug must not leave a broken config behind.
    Config::parse_str(&text, &config_dir)
        .map_err(|e| Error::Usage(format!("the starter config does not load: {e}")))?;
    create_exclusive(&config, text.as_bytes())?;
    Ok(Written {
        config,
        name,
        db,
        store,
        warnings,
    })
}

/// The local store must be a folder (or not exist yet: the first backup creates it), and it
/// may not be the database, hold the database or hold the config: a store is what prune
/// deletes from and what restore refuses to write into.
fn check_local_store(
    root: &Path,
    db: &Path,
    config: &Path,
    warnings: &mut Vec<String>,
) -> Result<()> {
    utf8(root, "--store")?;
    let real = resolve_existing_prefix(root);
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::Usage(format!(
                "--store {} is {}, not a folder; give a folder for the snapshots",
                root.display(),
                crate::durable::kind(&m)
            )))
        }
        _ => {}
    }
    let db_real = resolve_existing_prefix(db);
    if db_real.starts_with(&real) {
        return Err(Error::Usage(format!(
            "--store {} holds the database {}; give a folder outside the database's (a store is what prune deletes from)",
            root.display(),
            db.display()
        )));
    }
    let config_real = resolve_existing_prefix(config);
    if config_real.starts_with(&real) {
        return Err(Error::Usage(format!(
            "--store {} would hold the config {}; keep the config outside the store",
            root.display(),
            config.display()
        )));
    }
    // Same file system as the database: works, but a lost disk takes both.
    use std::os::unix::fs::MetadataExt;
    let existing = ancestors_existing(&real);
    if let (Ok(a), Some(b)) = (
        std::fs::metadata(db),
        existing.and_then(|p| std::fs::metadata(p).ok()),
    ) {
        if a.dev() == b.dev() {
            warnings.push(format!(
                "the store {} is on the same file system as the database: a lost disk takes both; \
                 prefer another disk or s3:// for real backups",
                root.display()
            ));
        }
    }
    Ok(())
}

/// `path` with its longest existing ancestor resolved through symlinks (the rest appended),
/// so that `store/../db` and symlinked folders compare as the kernel sees them.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut p = path.to_path_buf();
    loop {
        if let Ok(real) = std::fs::canonicalize(&p) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (p.file_name().map(|f| f.to_os_string()), p.parent()) {
            (Some(f), Some(parent)) => {
                rest.push(f);
                p = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn ancestors_existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

fn parse_s3(s: &str) -> Result<StoreSpec> {
    let rest = &s["s3://".len()..];
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_end_matches('/')),
        None => (rest, ""),
    };
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(Error::Usage(format!(
            "--store {s}: bucket {bucket:?} is not a valid bucket name (3-63 of a-z 0-9 . -); give s3://BUCKET/PREFIX"
        )));
    }
    for part in prefix.split('/').filter(|_| !prefix.is_empty()) {
        crate::names::validate_component(part).map_err(|why| {
            Error::Usage(format!(
                "--store {s}: prefix part {part:?} {why}; give s3://BUCKET/PREFIX"
            ))
        })?;
    }
    Ok(StoreSpec::S3 {
        bucket: bucket.to_string(),
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
    })
}

/// A database name from a file name: `My App.sqlite3` → `my-app`.
pub fn derive_name(db: &Path) -> Option<String> {
    let stem = db.file_stem()?.to_str()?;
    let mut name = String::new();
    for c in stem.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').to_string();
    (crate::names::validate_name(&name).is_ok()).then_some(name)
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn utf8<'a>(p: &'a Path, what: &str) -> Result<&'a str> {
    p.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "{what} {} is not valid UTF-8, which a TOML config cannot hold; rename it",
            p.display()
        ))
    })
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The starter config: the keys a first backup needs, the schedules `guardian run` uses, and
/// comments that say where the rest is documented.
pub fn render(name: &str, db: &Path, store: &StoreSpec) -> Result<String> {
    let db = utf8(db, "--db")?;
    let storage = match store {
        StoreSpec::Local(root) => format!(
            "# Snapshots live in this folder (created by the first backup). A folder on another\n\
             # disk or host survives more than one on the database's disk; for off-site copies\n\
             # use kind = \"s3\" (see docs/S3.md).\n\
             kind = \"local\"\n\
             path = {}\n",
            quoted(utf8(root, "--store")?)
        ),
        StoreSpec::S3 { bucket, prefix } => format!(
            "# Snapshots go to this bucket. Credentials come from the AWS chain (AWS_ACCESS_KEY_ID /\n\
             # AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role), never from this file; under\n\
             # systemd put them in the EnvironmentFile (see docs/OPERATIONS.md).\n\
             kind = \"s3\"\n\
             bucket = {}\n\
             {}\
             # region = \"us-east-1\"            # default: AWS_REGION, the profile's, else us-east-1\n\
             # endpoint = \"http://127.0.0.1:9000\"  # an S3-compatible service (MinIO, Garage, R2)\n\
             # force_path_style = true          # MinIO, Garage and most S3-compatibles\n",
            quoted(bucket),
            prefix
                .as_deref()
                .map(|p| format!("prefix = {}\n", quoted(p)))
                .unwrap_or_default()
        ),
    };
    Ok(format!(
        "# guardian starter config, written by `guardian init`.\n\
         # Every key is documented in config/guardian.example.toml; relative paths are relative\n\
         # to this file's folder. Unknown keys are errors. Check changes with `guardian doctor`.\n\
         \n\
         [storage]\n\
         {storage}\
         \n\
         [backup]\n\
         # Folder for the temporary copy (room for one raw database) and the job locks.\n\
         # Default: $TMPDIR, else /var/tmp.\n\
         # staging_dir = \"/var/tmp\"\n\
         \n\
         [[databases]]\n\
         # Used in object keys: never rename it once snapshots exist.\n\
         name = {name}\n\
         path = {db}\n\
         # `guardian status` and the status page call the database unhealthy past this age.\n\
         max_age = \"26h\"\n\
         # Schedules for `guardian run` (cron, 5 fields, read in UTC unless `timezone` is set).\n\
         backup = \"0 3 * * *\"        # nightly at 03:00\n\
         drill = \"30 4 * * sun\"      # weekly restore drill, Sunday 04:30\n\
         # timezone = \"Europe/Paris\"\n\
         \n\
         # Which snapshots prune (and `guardian run`, after each backup) keeps; without this\n\
         # table nothing is ever deleted.\n\
         [databases.retention]\n\
         keep_last = 3\n\
         daily = 7\n\
         weekly = 4\n\
         monthly = 12\n\
         \n\
         [service]\n\
         # /healthz, /metrics and the status page (/ and /status.json) of `guardian run`.\n\
         listen = \"127.0.0.1:9187\"\n\
         \n\
         [notify]\n\
         # Alerts on failure: a Slack-compatible webhook and/or a healthchecks.io-style heartbeat.\n\
         # Both URLs carry tokens: prefer GUARDIAN_WEBHOOK_URL / GUARDIAN_HEARTBEAT_URL in the\n\
         # environment, or *_file keys, to writing them here.\n\
         # webhook_url_file = \"/etc/guardian/webhook-url\"\n\
         # heartbeat_url_file = \"/etc/guardian/heartbeat-url\"\n",
        name = quoted(name),
        db = quoted(db),
    ))
}

/// Create `path` (which must not exist), mode 0600, write and fsync it; on a failed write the
/// partial file is removed.
fn create_exclusive(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Usage(format!(
                "{} already exists; init never overwrites a config: edit it, or give another --config FILE",
                path.display()
            )),
            _ => Error::io("create config", path, e),
        })?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(Error::io("write config", path, e));
    }
    // The umask may have narrowed the mode, never widened it; make it exactly 0600.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// A path as a shell word (single-quoted when it needs quoting).
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_file_names() {
        assert_eq!(
            derive_name(Path::new("/x/market.db")).as_deref(),
            Some("market")
        );
        assert_eq!(
            derive_name(Path::new("/x/My App.sqlite3")).as_deref(),
            Some("my-app")
        );
        assert_eq!(derive_name(Path::new("/x/...db")), None);
        assert_eq!(derive_name(Path::new("/x/日本.db")), None);
    }

    #[test]
    fn s3_urls_parse_or_are_refused() {
        assert_eq!(
            parse_s3("s3://my-bucket/prod/app").unwrap(),
            StoreSpec::S3 {
                bucket: "my-bucket".into(),
                prefix: Some("prod/app".into())
            }
        );
        assert_eq!(
            parse_s3("s3://my-bucket").unwrap(),
            StoreSpec::S3 {
                bucket: "my-bucket".into(),
                prefix: None
            }
        );
        for bad in [
            "s3://",
            "s3://B/x",
            "s3://ok-bucket/../x",
            "s3://ok-bucket/a//b",
        ] {
            assert!(parse_s3(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rendered_values_cannot_inject_keys() {
        let text = render(
            "x",
            Path::new("/tmp/a\"\nkind = \"s3\"\n.db"),
            &StoreSpec::Local("/s".into()),
        )
        .unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["storage"]["kind"].as_str(), Some("local"));
        assert_eq!(
            v["databases"][0]["path"].as_str(),
            Some("/tmp/a\"\nkind = \"s3\"\n.db")
        );
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("/etc/guardian.toml"), "/etc/guardian.toml");
        assert_eq!(shell_word("/a b/it's"), "'/a b/it'\\''s'");
    }
}
