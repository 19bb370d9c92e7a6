//! The command line (a contract: scripts and runbooks call it) and what each command prints.
//!
//! Results go to stdout (ids, tables, JSON); logs and progress go to stderr. The top layer:
//! it parses arguments, runs jobs through `jobs.rs` and prints; nothing else imports it.

mod commands;
mod diff;
mod fix;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::App;
use crate::error::{Error, Result};
use crate::human::{ago, human_age, human_bytes, rfc3339};
use crate::output::{errln, outln, warnln};
use crate::restore::{self, RestoreOptions, Selector};
use crate::status;
use crate::stores::{Copy, Merged};

/// SQLite backup and integrity guardian.
#[derive(Debug, Parser)]
#[command(name = "guardian", version, about, long_about = None)]
pub struct Cli {
    /// Config file [default: $GUARDIAN_CONFIG, ./guardian.toml, /etc/guardian/guardian.toml]
    #[arg(long, global = true, env = "GUARDIAN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More logging (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a snapshot now (of every configured database, or one); prints each new id
    Backup(BackupArgs),
    /// List snapshots, newest first
    List(ListArgs),
    /// Restore a snapshot (the newest good one with --latest) over the database or to --to
    Restore(RestoreArgs),
    /// Last snapshot, its age and health, per database; exit 1 when unhealthy
    Status(StatusArgs),
    /// Rows only in FROM, only in TO, and changed, per table, between two of: a snapshot, the
    /// live database, a file (e.g. one a restore kept aside); exit 1 when a side is damaged
    Diff(DiffArgs),
    /// Run as a service: scheduled backups, drills and prunes, /metrics and /healthz
    Run(RunArgs),
    /// Restore the newest snapshot and one older one in rotation into a scratch folder, check
    /// everything, record the verdicts; exit 1 if one fails
    Drill(DrillArgs),
    /// Re-read stored snapshots and check their size and SHA-256 (no SQLite); exit 1 on damage
    Verify(VerifyArgs),
    /// Delete snapshots the retention policy no longer keeps (see --dry-run)
    Prune(PruneArgs),
    /// Copy the snapshots a store lacks, or holds damaged, from a store that holds a good copy
    /// (streamed, checked on arrival, manifest last); exit 1 when a snapshot has no good copy
    Sync(SyncArgs),
    /// Check config, databases, credentials and the store (probe object, conditional writes,
    /// multipart, clock skew); one pass/warn/fail line each, exit 1 on any failure
    Doctor,
    /// Write a commented starter config for one database and a store, then run doctor on it
    Init(InitArgs),
    /// Print a shell completion script (bash, zsh, fish); needs no config
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout; needs no config
    Man,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The SQLite database to guard
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Where snapshots go: a local folder, or s3://BUCKET/PREFIX [default: a `guardian-store`
    /// folder next to the config]
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub store: Option<String>,
    /// The database's name in the config [default: derived from the file name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Commands that need no config (init writes one): run them, or `None` for every other command.
pub async fn dispatch_standalone(config: Option<&Path>, command: &Command) -> Option<Result<u8>> {
    Some(match command {
        Command::Completions(args) => completions(args.shell),
        Command::Man => man(),
        Command::Init(args) => init(config, args).await,
        _ => return None,
    })
}

async fn init(config: Option<&Path>, args: &InitArgs) -> Result<u8> {
    let req = crate::init::InitRequest {
        config: config.map_or_else(|| crate::init::DEFAULT_CONFIG.into(), Into::into),
        db: args.db.clone(),
        store: args.store.clone(),
        name: args.name.clone(),
    };
    let w = crate::init::write(&req)?;
    let store = match &w.store {
        crate::init::StoreSpec::Local(p) => p.display().to_string(),
        crate::init::StoreSpec::S3 { bucket, prefix } => {
            format!("s3://{bucket}/{}", prefix.as_deref().unwrap_or(""))
        }
    };
    outln!(
        "wrote {} (mode 0600): database {} ({}), store {store}",
        w.config.display(),
        w.name,
        w.db.display()
    );
    for warning in &w.warnings {
        warnln!("{warning}");
    }
    outln!("checking it as `guardian doctor` does:");
    let report = crate::doctor::run(Some(&w.config)).await;
    let code = report.print();
    let cfg = crate::init::shell_word(&w.config.to_string_lossy());
    if code != 0 {
        errln!(
            "{} was written, but doctor found the failures above; fix them (edit the file), then run `guardian --config {cfg} doctor`",
            w.config.display()
        );
        return Ok(code);
    }
    outln!("next:");
    outln!("  guardian --config {cfg} backup    # the first snapshot, now");
    outln!(
        "  guardian --config {cfg} run       # the service: schedules, /metrics, the status page"
    );
    Ok(0)
}

/// Write the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    use clap::CommandFactory;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "guardian", &mut buf);
    outln!("{}", String::from_utf8_lossy(&buf).trim_end());
    Ok(0)
}

/// Write the man page (roff) to stdout: the top command, then a section per subcommand with
/// its synopsis and options (one page, as `man guardian` should show everything).
pub fn man() -> Result<u8> {
    use clap::CommandFactory;
    let failed = |e| Error::io("render the man page", "-", e);
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .map_err(failed)?;
    for sub in cmd.get_subcommands() {
        let name = format!("guardian {}", sub.get_name());
        let sub = sub
            .clone()
            .bin_name(name.clone())
            .display_name(name.clone());
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        page.extend_from_slice(
            format!(".SH \"{}\"\n{}\n", name.to_uppercase(), roff_text(&about)).as_bytes(),
        );
        let m = clap_mangen::Man::new(sub);
        let mut part = Vec::new();
        m.render_synopsis_section(&mut part).map_err(failed)?;
        m.render_options_section(&mut part).map_err(failed)?;
        // Subsections of this command's section.
        let part = String::from_utf8_lossy(&part).replace(".SH ", ".SS ");
        page.extend_from_slice(part.as_bytes());
    }
    outln!("{}", String::from_utf8_lossy(&page).trim_end());
    Ok(0)
}

/// Plain text as a roff paragraph: a leading dot or quote would be read as a request, and a
/// backslash as an escape.
fn roff_text(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Args)]
pub struct RunArgs {}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Only this database
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Drill only this snapshot id (or a unique prefix), instead of the newest usable one and
    /// one older in rotation
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Print the reports as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this database
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Every snapshot, not just the newest
    #[arg(long)]
    pub all: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only this database
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Say what would be deleted and why each snapshot stays; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only this database
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Say what would be copied (every copy is still read and checked); write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Only this database
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Store only the pages that changed since the newest full snapshot (a full is taken
    /// instead, with the reason on stderr, when there is none to build on)
    #[arg(long)]
    pub incremental: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this database
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Only this store (a `[[stores]]` name; `primary` for `[storage]`) [default: every store
    /// of the database]
    #[arg(long, value_name = "NAME")]
    pub store: Option<String>,
    /// Print a JSON array
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["latest", "snapshot", "before"])))]
pub struct RestoreArgs {
    /// The newest snapshot that passes every check
    #[arg(long)]
    pub latest: bool,
    /// This snapshot id (or a unique prefix of it)
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// The newest good snapshot taken before this time (RFC 3339, e.g. 2026-11-24T03:00:00Z)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub before: Option<DateTime<Utc>>,
    /// The database to restore (may be left out when only one is configured)
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Restore to this file instead of the configured database path
    #[arg(long, value_name = "PATH")]
    pub to: Option<PathBuf>,
    /// Put back only this table's rows (repeat for more), in the configured database: the
    /// whole file is kept aside first, then one transaction replaces the rows and checks
    /// foreign keys before it commits
    #[arg(long, value_name = "TABLE", conflicts_with = "to")]
    pub table: Vec<String>,
    /// Replace the target even if another process has it open
    #[arg(long)]
    pub force: bool,
    /// Say what would be restored and where; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Read only from this store (a `[[stores]]` name; `primary` for `[storage]`) [default:
    /// every store of the database, in config order, falling back to the next one's copy]
    #[arg(long, value_name = "NAME")]
    pub store: Option<String>,
    /// The SQLite check the restored bytes must pass before they replace anything [default:
    /// integrity, quick for a drill-verified snapshot]; the SHA-256 checks always run
    #[arg(long, value_enum, value_name = "CHECK")]
    pub check: Option<restore::RestoreCheck>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The database whose snapshots and live file `latest`, `snapshot:`, `before:` and `live`
    /// mean (may be left out when only one is configured)
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// The older side: latest, snapshot:<ID>, before:<RFC3339>, live, or a file path
    #[arg(long, value_name = "SPEC", default_value = "latest")]
    pub from: crate::diff::Spec,
    /// The newer side (same forms as --from)
    #[arg(long, value_name = "SPEC", default_value = "live")]
    pub to: crate::diff::Spec,
    /// Only this table (repeat for more) [default: every table]
    #[arg(long, value_name = "TABLE")]
    pub table: Vec<String>,
    /// Print the comparison as JSON
    #[arg(long, conflicts_with = "sql")]
    pub json: bool,
    /// Print one SQL transaction that turns FROM into TO (review it, then apply it to FROM's
    /// database, e.g. to replay rows lost since a snapshot onto the restored database)
    #[arg(long)]
    pub sql: bool,
    /// Rows shown per table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this database
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

fn parse_time(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-24T03:00:00Z)"))
}

/// The line a command's fatal error is reported with: the error and, where one helps, its fix
/// (`main` prints it as `guardian: error: …`).
pub fn describe_error(e: &Error) -> String {
    fix::describe(None, None, e)
}

/// Run a parsed command; returns the process exit code for outcomes that are not errors
/// (e.g. `status` reporting an unhealthy database).
pub async fn dispatch(app: &App, command: Command) -> Result<u8> {
    match command {
        Command::Backup(args) => commands::backup(&commands::runner(app)?, args).await,
        Command::List(args) => list(app, args).await,
        Command::Restore(args) => restore(app, args).await,
        Command::Status(args) => status::print(app, args.db.as_deref(), args.json).await,
        Command::Diff(args) => diff::diff(app, args).await,
        Command::Run(RunArgs {}) => {
            let (first, second) = crate::service::os_signals()?;
            crate::service::run(app.clone(), first, second)
                .await
                .map(|()| 0)
        }
        Command::Drill(args) => commands::drill(&commands::runner(app)?, args).await,
        Command::Verify(args) => commands::verify(&commands::runner(app)?, args).await,
        Command::Prune(args) => commands::prune(&commands::runner(app)?, args).await,
        Command::Sync(args) => commands::sync(&commands::runner(app)?, args).await,
        Command::Doctor => Ok(crate::doctor::check(&app.config).await.print()),
        Command::Init(_) | Command::Completions(_) | Command::Man => {
            dispatch_standalone(app.config.file.as_deref(), &command)
                .await
                .expect("a standalone command")
        }
    }
}

async fn list(app: &App, args: ListArgs) -> Result<u8> {
    let now = Utc::now();
    let mut all = Vec::new();
    let mut code = 0;
    let mut dbs = app.config.select(args.db.as_deref())?;
    if let (Some(store), None) = (&args.store, &args.db) {
        // Every database that goes to that store (a usage error when none does).
        let with: Vec<_> = dbs
            .iter()
            .copied()
            .filter(|d| app.stores_of(d).iter().any(|s| &s.name == store))
            .collect();
        if !with.is_empty() {
            dbs = with;
        }
    }
    for db in dbs {
        let stores = app.select_stores(db, args.store.as_deref())?;
        let merged = Merged::load(&stores, &db.name).await.require_readable()?;
        // One store that cannot be read never hides what the others hold; it fails the
        // command (exit 2) after the listing.
        for (store, e) in merged.unreadable() {
            warnln!(
                "store {} of {} could not be listed ({}); the snapshots of its other stores are listed: check it with `guardian doctor`",
                store.name,
                db.name,
                crate::human::chain(e)
            );
            code = 2;
        }
        all.push(merged);
    }
    if args.json {
        let views: Vec<serde_json::Value> = all
            .iter()
            .flat_map(|m| {
                m.snapshots.iter().map(move |s| {
                    let mut v = serde_json::to_value(m.best(s).view(now))
                        .expect("a snapshot view serializes");
                    v["stores"] = m.json(s);
                    v
                })
            })
            .collect();
        crate::output::json(&views);
        return finish_list(code);
    }
    let multi = all.len() > 1;
    let stores_width = all
        .iter()
        .flat_map(|m| m.snapshots.iter().map(|s| m.short(s).len()))
        .max()
        .unwrap_or(0)
        .max("STORES".len());
    outln!(
        "{}{:<26} {:<20} {:>8} {:>10} {:>10} {:<5} {:<stores_width$} STATUS",
        if multi {
            format!("{:<12} ", "DB")
        } else {
            String::new()
        },
        "ID",
        "CREATED (UTC)",
        "AGE",
        "SIZE",
        "STORED",
        "KIND",
        "STORES",
    );
    for m in &all {
        for merged in &m.snapshots {
            let s = m.best(merged);
            let v = s.view(now);
            let mut status = match &s.problem {
                Some(p) => format!("{} ({p})", v.status.as_str()),
                None => v.status.as_str().to_string(),
            };
            if s.skewed {
                status.push_str("; DATED IN THE FUTURE (clock skew): restore --latest skips it");
            }
            if let Some(t) = s.marked_at {
                status.push_str(&format!("; marked for deletion at {}", rfc3339(t)));
            }
            for r in &s.ignored_records {
                status.push_str(&format!("; ignored record {r}"));
            }
            // A damaged copy in another store: say what is wrong with it.
            for (store, copy) in m.copies(merged) {
                if let Copy::Damaged(e) = copy {
                    if !std::ptr::eq(e, s) {
                        if let Some(p) = &e.problem {
                            status
                                .push_str(&format!("; its copy in {} is failed ({p})", store.name));
                        }
                    }
                }
            }
            outln!(
                "{}{:<26} {:<20} {:>8} {:>10} {:>10} {:<5} {:<stores_width$} {}",
                if multi {
                    format!("{:<12} ", m.db)
                } else {
                    String::new()
                },
                v.id,
                v.created_at,
                if v.age_seconds < 0 {
                    format!("-{}", human_age(v.age_seconds))
                } else {
                    human_age(v.age_seconds)
                },
                v.size_bytes.map_or("-".into(), human_bytes),
                v.stored_bytes.map_or("-".into(), human_bytes),
                s.manifest.as_ref().map_or("-", |m| m.kind().short()),
                m.short(merged),
                status
            );
        }
        if m.snapshots.is_empty() {
            warnln!(
                "no snapshots of {} in {}; take one with `guardian backup --db {}`",
                m.db,
                m.stores
                    .iter()
                    .map(|s| s.store.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                m.db
            );
        }
    }
    finish_list(code)
}

/// `list`'s exit code: 2 when a store could not be listed (said above), else 0.
fn finish_list(code: u8) -> Result<u8> {
    match code {
        0 => Ok(0),
        code => Err(Error::Reported(code)),
    }
}

async fn restore(app: &App, args: RestoreArgs) -> Result<u8> {
    let db = app.config.select_one(args.db.as_deref())?;
    let selector = match (args.latest, args.snapshot.clone(), args.before) {
        (true, None, None) => Selector::Latest,
        (false, Some(id), None) => Selector::Snapshot(id),
        (false, None, Some(t)) => Selector::Before(t),
        _ => {
            return Err(Error::Usage(
                "give exactly one of --latest, --snapshot ID, --before TIME".into(),
            ))
        }
    };
    if !args.table.is_empty() {
        return diff::restore_tables(app, db, selector, args).await;
    }
    let opts = RestoreOptions {
        selector,
        to: args.to,
        force: args.force,
        dry_run: args.dry_run,
        keys: app.keys.clone(),
        protected: app.config.local_roots(),
        check: args.check,
    };
    let stores = app.select_stores(db, args.store.as_deref())?;
    let r = restore::run_interruptible(&stores, db, &opts).await?;
    let now = Utc::now();
    let m = &r.manifest;
    let when = format!(
        "taken {}, {}",
        rfc3339(m.created_at),
        ago((now - m.created_at).num_seconds())
    );
    for (store, why) in &r.stores_unreadable {
        outln!("skipped store {store}: it could not be read: {why}");
    }
    for (id, why) in &r.skipped {
        outln!("skipped {id}: {why}");
    }
    for (store, id, why) in &r.copies_skipped {
        outln!("skipped the copy of {id} in store {store}: {why}");
    }
    if r.dry_run {
        outln!(
            "dry run: would restore {} snapshot {} ({when}) to {}",
            r.db,
            m.id,
            r.target.display()
        );
        outln!(
            "  size {} (stored {}), sha256 {}",
            human_bytes(m.raw_len),
            human_bytes(m.own_stored_len()),
            m.raw_sha256
        );
        outln!("  from store {}", r.store.describe());
        for p in &r.moved_aside {
            outln!("  would move aside {}", p.display());
        }
        if let Some(who) = &r.forced_over {
            outln!("  target is in use ({who}); --force would replace it anyway");
        }
        match &r.estimate {
            Some(e) => outln!("  estimated duration: {e}"),
            None => outln!(
                "  estimated duration: unknown: no drill has passed yet (`guardian drill --db {}` measures it)",
                r.db
            ),
        }
        outln!("  nothing was written");
        return Ok(0);
    }
    outln!(
        "restored {} snapshot {} ({when}) to {}",
        r.db,
        m.id,
        r.target.display()
    );
    outln!("  from store {}", r.store.describe());
    match r.check {
        Some(c) => outln!(
            "  checks passed: stored sha256, raw sha256 {}, PRAGMA {}",
            m.raw_sha256,
            c.pragma()
        ),
        None => outln!(
            "  checks passed: stored sha256, raw sha256 {}; no SQLite check (--check none)",
            m.raw_sha256
        ),
    }
    if r.moved_aside.is_empty() {
        outln!("  no previous database was at the target");
    }
    for p in &r.moved_aside {
        outln!("  previous file kept at {}", p.display());
    }
    // The old database itself (not a stray sidecar of a missing one).
    if let Some(old) = r.moved_aside.iter().find(|p| {
        let p = p.to_string_lossy();
        !["-wal", "-shm", "-journal"].iter().any(|s| p.ends_with(s))
    }) {
        outln!(
            "  what it holds beyond the snapshot: {}",
            diff::command(&r.db, m.id.as_str(), old, &[])
        );
    }
    if let Some(who) = &r.forced_over {
        outln!("  warning: the target was in use ({who}); restart that process so it opens the restored file");
    }
    if let Some(cmd) = &r.newer_rescue {
        outln!(
            "  note: newer snapshots were skipped only for their SQLite check (see above); their \
             checksums match, and the newest holds more recent data: {cmd} restores it anyway \
             (the file restored now is kept aside)"
        );
    }
    Ok(0)
}
