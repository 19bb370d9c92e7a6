//! Installing and setting up guardian: shell completions, the man page, `guardian init`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::{self, fixture, run, Run};

/// `guardian` with no config anywhere it could look, in `dir`.
fn bare(dir: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_guardian"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("GUARDIAN_CONFIG")
        .env_remove("GUARDIAN_LOG");
    run(&mut cmd)
}

const SUBCOMMANDS: [&str; 12] = [
    "backup",
    "list",
    "restore",
    "status",
    "run",
    "drill",
    "verify",
    "prune",
    "doctor",
    "init",
    "completions",
    "man",
];

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn bash_completion_loads_and_registers_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let r = bare(dir.path(), &["completions", "bash"]).ok();
    assert!(r.stdout.contains("complete"), "{}", r.stdout);
    let script = dir.path().join("guardian.bash");
    std::fs::write(&script, &r.stdout).unwrap();
    let syntax = run(Command::new("bash").arg("-n").arg(&script));
    assert_eq!(syntax.code, 0, "bash -n: {}", syntax.stderr);
    let loaded = run(Command::new("bash")
        .arg("-c")
        .arg(format!("source {}; complete -p guardian", script.display())));
    assert_eq!(loaded.code, 0, "{loaded:?}");
    assert!(loaded.stdout.contains("guardian"), "{loaded:?}");
    for sub in SUBCOMMANDS {
        assert!(r.stdout.contains(sub), "bash completion lacks {sub}");
    }
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["zsh", "fish"] {
        let r = bare(dir.path(), &["completions", shell]).ok();
        for sub in SUBCOMMANDS {
            assert!(r.stdout.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let r = bare(dir.path(), &["completions", "tcsh"]).expect_code(2);
    assert!(r.stderr.contains("possible values"), "{}", r.stderr);
}

#[test]
fn man_page_covers_every_subcommand_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let r = bare(dir.path(), &["man"]).ok();
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH"),
        "roff: {}",
        &r.stdout[..200.min(r.stdout.len())]
    );
    for sub in SUBCOMMANDS {
        assert!(
            r.stdout
                .contains(&format!(".SH \"GUARDIAN {}\"", sub.to_uppercase())),
            "man page lacks a section for {sub}"
        );
    }
    // Options of subcommands are there too.
    assert!(
        r.stdout.contains("dry\\-run"),
        "restore/prune --dry-run missing"
    );
    let page = dir.path().join("guardian.1");
    std::fs::write(&page, &r.stdout).unwrap();
    if have("groff") {
        let out = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&page));
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            !out.stderr.contains("warning"),
            "groff warnings: {}",
            out.stderr
        );
    } else if have("man") {
        let out = run(Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat"));
        assert_eq!(out.code, 0, "{out:?}");
    } else {
        util::skip(
            "neither groff nor man is installed: the page was checked for its sections only",
        );
    }
}

/// A temp folder with a copy of the fixture as `app.db`.
fn world() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    std::fs::copy(fixture("market.sqlite"), &db).unwrap();
    (dir, db)
}

#[test]
fn init_writes_a_0600_config_that_backs_up_and_says_what_next() {
    let (dir, _) = world();
    let store = tempfile::tempdir().unwrap();
    let r = bare(
        dir.path(),
        &[
            "init",
            "--db",
            "app.db",
            "--store",
            store.path().to_str().unwrap(),
        ],
    )
    .ok();
    let config = dir.path().join("guardian.toml");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(r.stdout.contains("database app"), "{}", r.stdout);
    assert!(r.stdout.contains("doctor: "), "doctor ran: {}", r.stdout);
    let cfg = config.canonicalize().unwrap();
    let next = format!("guardian --config {} backup", cfg.display());
    assert!(r.stdout.contains(&next), "{}", r.stdout);
    assert!(r
        .stdout
        .contains(&format!("guardian --config {} run", cfg.display())));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("# "), "commented");
    // The next command works as printed, from another folder.
    let elsewhere = tempfile::tempdir().unwrap();
    let b = bare(
        elsewhere.path(),
        &["--config", cfg.to_str().unwrap(), "backup"],
    )
    .ok();
    assert_eq!(b.stdout.trim().lines().count(), 1);
    assert!(store.path().join("app").is_dir());
}

#[test]
fn init_never_overwrites_and_names_the_file() {
    let (dir, _) = world();
    let config = dir.path().join("mine.toml");
    std::fs::write(&config, "# my own config\n").unwrap();
    let r = bare(
        dir.path(),
        &["--config", "mine.toml", "init", "--db", "app.db"],
    )
    .expect_code(2);
    assert!(r.error_line().contains("already exists"), "{}", r.stderr);
    assert!(r.error_line().contains("mine.toml"));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# my own config\n"
    );
    // A dangling symlink is not followed into creating its target.
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(dir.path().join("target.toml"), &link).unwrap();
    let r = bare(
        dir.path(),
        &["--config", "link.toml", "init", "--db", "app.db"],
    )
    .expect_code(2);
    assert!(r.error_line().contains("already exists"), "{}", r.stderr);
    assert!(!dir.path().join("target.toml").exists());
}

#[test]
fn init_refuses_bad_databases_without_writing() {
    let (dir, _) = world();
    let fifo = dir.path().join("pipe.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::write(dir.path().join("notes.db"), "hello, not sqlite").unwrap();
    std::fs::create_dir(dir.path().join("folder.db")).unwrap();
    std::fs::write(dir.path().join("empty.db"), "").unwrap();
    for (db, says) in [
        ("missing.db", "does not exist"),
        ("pipe.db", "not a regular file"),
        ("folder.db", "not a regular file"),
        ("notes.db", "not a SQLite database"),
        ("empty.db", "empty"),
    ] {
        let start = std::time::Instant::now();
        let r = bare(dir.path(), &["init", "--db", db]).expect_code(2);
        let line = r.error_line();
        assert!(line.starts_with("guardian: error: "), "{line}");
        assert!(line.contains(says) && line.contains(db), "{db}: {line}");
        assert!(line.contains("--db"), "names the fix: {line}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{db} hung"
        );
        assert!(
            !dir.path().join("guardian.toml").exists(),
            "{db}: nothing written"
        );
    }
}

#[test]
fn init_refuses_bad_places_and_names() {
    let (dir, db) = world();
    let d = dir.path();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--config".into(), "nowhere/guardian.toml".into()],
            "does not exist; create it first",
        ),
        // A store that holds the database (its own folder) or is the database.
        (
            vec!["--store".into(), d.display().to_string()],
            "holds the database",
        ),
        (
            vec!["--store".into(), db.display().to_string()],
            "not a folder",
        ),
        (
            vec!["--store".into(), "ftp://host/x".into()],
            "only a local folder or s3://",
        ),
        (
            vec!["--store".into(), "s3://Bad_Bucket/x".into()],
            "not a valid bucket name",
        ),
        (
            vec!["--store".into(), "s3://good-bucket/../x".into()],
            "prefix part",
        ),
        (vec!["--name".into(), "Bad Name".into()], "database name"),
    ];
    for (extra, says) in cases {
        let mut args = vec!["init".to_string(), "--db".into(), "app.db".into()];
        // --config is global: put it first like a user would.
        if extra[0] == "--config" {
            args.splice(0..0, extra.clone());
        } else {
            args.extend(extra.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = bare(d, &args).expect_code(2);
        assert!(r.error_line().contains(says), "{extra:?}: {}", r.stderr);
        assert!(
            !d.join("guardian.toml").exists(),
            "{extra:?}: nothing written"
        );
    }
    // A store whose path goes through the config's folder into the database's folder by "..".
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let sneaky = format!("{}/..", sub.display());
    let r = bare(d, &["init", "--db", "app.db", "--store", &sneaky]).expect_code(2);
    assert!(
        r.error_line().contains("holds the database"),
        "{}",
        r.stderr
    );
}

#[test]
fn init_store_on_the_same_disk_warns_and_s3_store_is_written() {
    let (dir, _) = world();
    let store = dir.path().join("backups").join("here");
    std::fs::create_dir_all(dir.path().join("backups")).unwrap();
    // The store is a sibling folder: allowed, with a warning (same file system).
    let other = tempfile::tempdir_in(dir.path()).unwrap();
    let db = other.path().join("x.db");
    std::fs::copy(fixture("market.sqlite"), &db).unwrap();
    let r = bare(
        dir.path(),
        &[
            "init",
            "--db",
            db.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(
        r.stderr.contains("guardian: warning: the store"),
        "{}",
        r.stderr
    );

    // s3: the config names the bucket and prefix; doctor runs (and fails without a server),
    // the file stays for the user to fix, and the exit code says so.
    let cfg = dir.path().join("s3.toml");
    let r = bare(
        dir.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "init",
            "--db",
            db.to_str().unwrap(),
            "--store",
            "s3://my-bucket/prod/app",
        ],
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("kind = \"s3\""), "{text}");
    assert!(text.contains("bucket = \"my-bucket\""), "{text}");
    assert!(text.contains("prefix = \"prod/app\""), "{text}");
    assert!(r.stdout.contains("doctor: "), "{r:?}");
    if r.code != 0 {
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.error_line().contains("was written, but doctor found"),
            "{r:?}"
        );
    }
}

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

const UNITS: [&str; 3] = [
    "guardian.service",
    "guardian-backup.service",
    "guardian-backup.timer",
];

/// The image builds guardian with everything `cargo build` reads here: without `.cargo/`, its
/// bundled SQLite would lack `sqlite_dbpage` and every incremental snapshot would fail.
#[test]
fn the_docker_build_copies_everything_cargo_reads() {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let build_stage = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains("cargo build"))
        .expect("a stage that runs cargo build");
    let copied: Vec<&str> = build_stage
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", ".cargo", "src", "tests"] {
        assert!(
            copied.contains(&needed),
            "the Dockerfile's build stage does not copy {needed}: {copied:?}"
        );
    }
    assert!(
        repo(".cargo/config.toml").is_file(),
        "the SQLite options the image relies on"
    );
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        util::skip(
            "systemd-analyze is not installed (apt-get install systemd); units not verified",
        );
        return;
    }
    // verify wants ExecStart's binary to exist: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_guardian");
    let mut paths = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(repo(&format!("config/{unit}"))).unwrap();
        assert!(
            !unit.ends_with(".service") || text.contains("/usr/local/bin/guardian "),
            "{unit}: ExecStart runs /usr/local/bin/guardian (the path OPERATIONS.md installs to)"
        );
        let path = dir.path().join(unit);
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/guardian ", &format!("{bin} ")),
        )
        .unwrap();
        paths.push(path);
    }
    let r = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "warning"));
    // Lines about our units are failures; other units of the host are not ours to judge.
    let ours: Vec<&str> = r
        .stderr
        .lines()
        .chain(r.stdout.lines())
        .filter(|l| UNITS.iter().any(|u| l.contains(u)))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify:\n{}",
        ours.join("\n")
    );
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn the_service_unit_is_sandboxed_as_documented() {
    let text = std::fs::read_to_string(repo("config/guardian.service")).unwrap();
    for line in [
        "User=guardian",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "EnvironmentFile=",
        " run\n",
    ] {
        assert!(text.contains(line), "guardian.service lacks {line:?}");
    }
    let ops = std::fs::read_to_string(repo("docs/OPERATIONS.md")).unwrap();
    for unit in UNITS {
        assert!(
            ops.contains(unit),
            "docs/OPERATIONS.md does not install {unit}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool() {
    if !have("promtool") {
        util::skip("promtool is not installed (apt-get install prometheus); rules not checked");
        return;
    }
    let r = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("config/prometheus-alerts.yml")));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("SUCCESS"), "{r:?}");
}

/// Every `guardian_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("guardian_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not a suffix of a longer word (e.g. a file name like run/secrets/guardian_webhook).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_and_the_rules_use_only_exported_metrics() {
    let dashboard = std::fs::read_to_string(repo("config/grafana-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let rules = std::fs::read_to_string(repo("config/prometheus-alerts.yml")).unwrap();
    let used: std::collections::BTreeSet<String> = metric_names(&dashboard)
        .union(&metric_names(&rules))
        .cloned()
        .collect();
    assert!(used.len() >= 8, "{used:?}");

    // Scrape a real service after one backup and one drill.
    let env = util::TestEnv::new();
    env.write_config(
        "backup = \"* * * * * *\"\ndrill = \"*/2 * * * * *\"\n[service]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut svc = util::Service::start(&env);
    let addr = svc.addr();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let (_, text) = util::http_get(&addr, "/metrics");
        if text.contains("guardian_drill_last_result{") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    svc.wait_exit(15);
    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\n{text}"
    );
}
