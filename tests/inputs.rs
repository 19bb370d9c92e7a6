//! Hostile inputs, as a new user or an adversary would try them: a FIFO, socket, device or
//! folder where a database should be, files that are not SQLite, a hot journal left by a
//! killed writer. Each is refused at once with one clear line; nothing hangs, nothing is
//! modified.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Run, TestEnv};

/// Run `cmd`, failing the test (instead of hanging the suite) if it takes over `secs`.
pub(crate) fn run_within(cmd: &mut Command, secs: u64) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {secs}s (hung):\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Point the `market` database of `env` at `path` (absolute), plus `extra` TOML.
pub(crate) fn point_db_at(env: &TestEnv, path: &Path, extra: &str) {
    env.write_config(extra);
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(
        "path = \"market.db\"",
        &format!("path = \"{}\"", path.display()),
    );
    std::fs::write(&env.config, cfg).unwrap();
}

/// A FIFO, a folder, a listening unix socket and `/dev/null`, each paired with the word the
/// refusal must use. The socket listener is returned to keep it bound.
pub(crate) fn non_regular_files(
    dir: &Path,
) -> (
    Vec<(PathBuf, &'static str)>,
    std::os::unix::net::UnixListener,
) {
    let fifo = dir.join("fifo.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let folder = dir.join("folder.db");
    std::fs::create_dir(&folder).unwrap();
    let sock = dir.join("socket.db");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    (
        vec![
            (fifo, "FIFO"),
            (folder, "directory"),
            (sock, "socket"),
            (PathBuf::from("/dev/null"), "character device"),
        ],
        listener,
    )
}

#[test]
fn a_non_regular_source_is_refused_at_once_by_backup_and_doctor() {
    let env = TestEnv::new();
    let (files, _listener) = non_regular_files(env.dir.path());
    for (path, kind) in &files {
        point_db_at(&env, path, "");
        let r = run_within(env.command().arg("backup"), 30).expect_code(2);
        let line = r.error_line();
        assert!(
            line.contains("not a regular file") && line.contains(kind),
            "{kind}: {line}"
        );
        let r = run_within(env.command().arg("doctor"), 30).expect_code(1);
        let db_line = r
            .stdout
            .lines()
            .find(|l| l.contains("database market"))
            .unwrap_or_else(|| panic!("no database line:\n{}", r.stdout));
        assert!(
            db_line.starts_with("fail") && db_line.contains("not a regular file"),
            "{kind}: {db_line}"
        );
    }
    assert!(env.list().is_empty());
}

#[test]
fn a_fifo_source_fails_the_scheduled_backup_without_hanging_the_service() {
    let env = TestEnv::new();
    let fifo = env.path("fifo.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    point_db_at(
        &env,
        &fifo,
        "backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut service = util::Service::start(&env);
    let line = service.wait_for_line("scheduled backup failed", 30);
    assert!(line.contains("not a regular file"), "{line}");
    service.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(service.wait_exit(20), 0, "{}", service.log());
}

#[test]
fn doctor_fails_an_empty_a_non_sqlite_and_a_damaged_database_file() {
    let env = TestEnv::new();
    let empty = env.path("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let text = env.path("text.db");
    std::fs::copy(util::fixture("not-a-database.txt"), &text).unwrap();
    let corrupt = env.path("corrupt.db");
    std::fs::copy(util::fixture("corrupt.sqlite"), &corrupt).unwrap();
    let doctor_line = |path: &Path| {
        point_db_at(&env, path, "");
        let r = run_within(env.command().arg("doctor"), 30);
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains("database market"))
            .unwrap_or_else(|| panic!("no database line:\n{}", r.stdout))
            .to_string();
        (r.code, line)
    };
    for (path, says) in [
        (&empty, "empty (0 bytes)"),
        (&text, "not a SQLite database"),
        (&corrupt, ""),
    ] {
        let before = std::fs::read(path).unwrap();
        let (code, line) = doctor_line(path);
        assert_eq!(code, 1, "{}: {line}", path.display());
        assert!(
            line.starts_with("fail") && line.contains(says),
            "{}: {line}",
            path.display()
        );
        assert_eq!(std::fs::read(path).unwrap(), before, "doctor modified it");
    }
    // The control: the fixture passes, with both checks named.
    let (code, line) = doctor_line(&env.db);
    assert!(
        line.starts_with("pass") && line.contains("quick_check ok"),
        "{code}: {line}"
    );
}

/// Make `db` a rollback-journal database with a hot journal: a writer (python's sqlite3, in
/// another process) changes every row in one transaction with a tiny page cache, so that
/// changed pages spill into the database file, and is SIGKILLed before it commits.
pub(crate) fn make_hot_journal(db: &Path) {
    let script = r#"
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode = DELETE")
c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO t SELECT i, randomblob(1000) FROM n")
c.execute("PRAGMA cache_size = 10")
c.execute("BEGIN")
c.execute("UPDATE t SET body = randomblob(1000)")
print("ready", flush=True)
time.sleep(600)
"#;
    let (mut writer, _out) = util::python_until_ready(script, db);
    writer.kill().unwrap(); // SIGKILL: no rollback, no cleanup
    writer.wait().unwrap();
    let journal = PathBuf::from(format!("{}-journal", db.display()));
    assert!(
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "no hot journal was left"
    );
}

#[test]
fn a_hot_journal_is_refused_with_what_to_do_and_the_source_is_left_untouched() {
    let env = TestEnv::empty();
    make_hot_journal(&env.db);
    let journal = env.path("market.db-journal");
    let (db_before, journal_before) = (
        std::fs::read(&env.db).unwrap(),
        std::fs::read(&journal).unwrap(),
    );
    let r = run_within(env.command().arg("backup"), 60).expect_code(2);
    let line = r.error_line();
    assert!(
        line.contains("hot journal")
            && line.contains(&journal.display().to_string())
            && line.contains("PRAGMA quick_check"),
        "{line}"
    );
    let r = run_within(env.command().arg("doctor"), 60).expect_code(1);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("fail") && l.contains("hot journal")),
        "{}",
        r.stdout
    );
    // Never modified: the journal is still there, both files byte for byte.
    assert_eq!(std::fs::read(&env.db).unwrap(), db_before);
    assert_eq!(std::fs::read(&journal).unwrap(), journal_before);
    assert!(env.list().is_empty());
    // The advice works: the owner's sqlite3 rolls it back, and the next backup succeeds.
    let ok = Command::new("sqlite3")
        .arg(&env.db)
        .arg("PRAGMA quick_check")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ok");
    assert!(!journal.exists() || std::fs::metadata(&journal).unwrap().len() == 0);
    env.backup();
}

/// Every entry of `dir` (names), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn restore_refuses_a_target_that_is_not_a_regular_file_and_touches_nothing() {
    let env = TestEnv::new();
    env.backup();
    let (files, _listener) = non_regular_files(env.dir.path());
    // The application's folder, with its database open, given as the target by mistake.
    let app = env.path("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(&env.db, app.join("app.db")).unwrap();
    let open = rusqlite::Connection::open(app.join("app.db")).unwrap();
    let before = names(env.dir.path());
    let app_before = names(&app);
    for (path, kind) in files
        .iter()
        .map(|(p, k)| (p.clone(), *k))
        .chain([(app.clone(), "directory")])
    {
        let r = run_within(
            env.command()
                .args(["restore", "--latest", "--to"])
                .arg(&path),
            30,
        )
        .expect_code(2);
        let line = r.error_line();
        assert!(
            line.contains("not a regular file") && line.contains(kind),
            "{kind}: {line}"
        );
        assert_eq!(
            names(env.dir.path()),
            before,
            "{kind}: something was touched"
        );
    }
    assert!(app.is_dir());
    assert_eq!(names(&app), app_before);
    drop(open);

    // The configured databases[].path as the target: the same refusal.
    for (path, kind) in &files {
        point_db_at(&env, path, "");
        let r = run_within(env.command().args(["restore", "--latest"]), 30).expect_code(2);
        assert!(r.error_line().contains(kind), "{kind}: {}", r.stderr);
    }
}

#[test]
fn restore_refuses_a_folder_path_a_dash_a_symlink_and_a_path_inside_the_store() {
    let env = TestEnv::new();
    let id = env.backup();
    let store_before: Vec<(PathBuf, Vec<u8>)> = util::walk(&env.store)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    let before = names(env.dir.path());
    let link = env.path("link.db");
    std::os::unix::fs::symlink(&env.db, &link).unwrap();
    let in_store = env.snapshot_dir(&id).join("db.sqlite.gz");
    for (to, says) in [
        ("out/".to_string(), "names a folder"),
        ("-".to_string(), "standard output"),
        (link.display().to_string(), "symlink"),
        (in_store.display().to_string(), "inside the store"),
        (
            env.store
                .join("market")
                .join("new.db")
                .display()
                .to_string(),
            "inside the store",
        ),
    ] {
        let r = env
            .run(&["restore", "--latest", "--to", &to])
            .expect_code(2);
        let line = r.error_line();
        assert!(line.contains(says), "{to}: {line}");
    }
    let mut after = names(env.dir.path());
    after.retain(|n| n != "link.db");
    assert_eq!(after, before, "something was created");
    // (The snapshot's two objects and the record of the backup's outcome.)
    let stored = store_before.len();
    for (p, bytes) in store_before {
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "{} changed", p.display());
    }
    assert_eq!(
        util::walk(&env.store).len(),
        stored,
        "a file appeared in the store"
    );
}

#[test]
fn a_restored_new_file_belongs_to_its_folders_owner_with_the_configured_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = TestEnv::new();
    // The test's own folder belongs to whoever runs the test.
    if std::fs::metadata(env.dir.path()).unwrap().uid() != 0 {
        eprintln!("skipped: needs root (to chown a folder to another user)");
        return;
    }
    env.backup();
    let app = env.path("app");
    std::fs::create_dir(&app).unwrap();
    std::os::unix::fs::chown(&app, Some(65534), Some(65533)).unwrap();
    let owner = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
    };
    // --to a new file: the folder's owner and group, 0600.
    let out = app.join("new.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(owner(&out), (65534, 65533, 0o600));
    // The configured path, missing, with databases[].mode.
    let live = app.join("market.db");
    point_db_at(&env, &live, "mode = \"0640\"\n");
    env.run(&["restore", "--latest"]).ok();
    assert_eq!(owner(&live), (65534, 65533, 0o640));
    // A replaced file keeps its own owner and mode, whatever `mode` says.
    std::os::unix::fs::chown(&live, Some(1234), Some(4321)).unwrap();
    std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o660)).unwrap();
    env.run(&["restore", "--latest"]).ok();
    assert_eq!(owner(&live), (1234, 4321, 0o660));
}

#[test]
fn restore_refuses_a_rollback_journal_database_with_an_idle_connection() {
    let env = TestEnv::new();
    env.backup();
    // The application: a separate process with an idle connection (no SQLite lock held) to a
    // rollback-journal database, as a web app between requests.
    let script = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA journal_mode = DELETE").fetchall()
c.execute("SELECT count(*) FROM sqlite_schema").fetchall()
print("ready", flush=True)
sys.stdin.read()
"#;
    let (mut app, _out) = util::python_until_ready(script, &env.db);
    let before = std::fs::read(&env.db).unwrap();
    let r = env.run(&["restore", "--latest"]).expect_code(2);
    let err = r.error_line();
    assert!(
        err.contains("in use")
            && err.contains(&format!("process {}", app.id()))
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&env.db).unwrap(), before);
    // A dry run says it would refuse, and fails like the real run.
    let r = env
        .run(&["restore", "--latest", "--dry-run"])
        .expect_code(2);
    assert!(
        r.error_line().contains("dry run: would refuse") && !r.stderr.contains("(--force)"),
        "{}",
        r.stderr
    );
    let r = env.run(&["restore", "--latest", "--force"]).ok();
    assert!(r.stdout.contains("the target was in use"), "{}", r.stdout);
    drop(app.stdin.take());
    app.wait().unwrap();
}

/// Staging files of restores next to `target` (and their sidecars).
fn restore_staging(target: &Path) -> Vec<String> {
    let prefix = format!(
        ".{}.guardian-restore-",
        target.file_name().unwrap().to_string_lossy()
    );
    names(target.parent().unwrap())
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn sigint_or_sigterm_during_a_restore_removes_its_staging_file_and_leaves_the_target() {
    use nix::sys::signal::{kill, Signal};
    let env = TestEnv::empty();
    crate::crash::make_big(&env.db, 32, "new");
    env.backup();
    let target = env.path("live.db");
    crate::crash::make_big(&target, 1, "old");
    let old = util::dump_hash(&target);
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let mut child = env
            .command()
            .args(["restore", "--latest", "--to"])
            .arg(&target)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the staging file holds part of the download, then interrupt.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let staged = restore_staging(&target);
            let size = staged
                .iter()
                .filter_map(|n| std::fs::metadata(env.path(n)).ok())
                .map(|m| m.len())
                .sum::<u64>();
            if size > 1 << 20 {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the restore ended before it could be interrupted"
            );
            assert!(Instant::now() < deadline, "no staging file appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sig}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("guardian: error:"))
            .unwrap_or_else(|| panic!("{sig}: no error line: {stderr}"));
        assert!(
            line.contains(&format!("interrupted by {sig}"))
                && line.contains("was not changed")
                && line.contains("staging file"),
            "{line}"
        );
        assert_eq!(restore_staging(&target), Vec::<String>::new(), "{sig}");
        assert_eq!(util::dump_hash(&target), old, "{sig}: the target changed");
    }
}

#[test]
fn sigint_or_sigterm_during_a_backup_says_so_and_publishes_nothing() {
    use nix::sys::signal::Signal;
    let env = TestEnv::new();
    // The backup waits for this writer's lock: surely in flight when the signal comes.
    let writer = rusqlite::Connection::open(&env.db).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let lock_file = env.path("staging").join("guardian-market.lock");
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // The job lock names the process once its job runs (after the signal handlers); the
        // backup then waits for the writer.
        let (r, took) =
            util::interrupt_in_flight(env.command().arg("backup"), sig, "the backup", |pid| {
                let locked = std::fs::read_to_string(&lock_file)
                    .is_ok_and(|t| t.starts_with(&format!("{pid} backup")));
                if locked {
                    std::thread::sleep(Duration::from_millis(200));
                }
                locked
            });
        assert!(
            took < Duration::from_secs(10),
            "{sig}: the backup did not stop at once"
        );
        assert_eq!(r.code, 2, "{sig}: {}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("backup of market interrupted by {sig}"))
                && r.stderr.contains("no snapshot was published"),
            "{sig}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{sig}: an id was printed");
        assert!(env.list().is_empty(), "{sig}: a snapshot was published");
    }
    // The next backup runs and leaves nothing of the interrupted ones.
    writer.execute_batch("ROLLBACK").unwrap();
    env.backup();
    assert_eq!(env.list().len(), 1);
    assert!(
        util::leftovers(&env).is_empty(),
        "{:?}",
        util::leftovers(&env)
    );
    assert_eq!(util::staging_leftovers(&env), Vec::<String>::new());
}

#[test]
fn a_dead_restores_staging_file_is_reported_by_status_and_swept_by_backup() {
    let env = TestEnv::new();
    env.backup();
    // What a restore killed by SIGKILL or a power loss leaves: its pid is gone.
    let dead = env.path(".market.db.guardian-restore-2147483646-abcdef012345");
    std::fs::copy(&env.db, &dead).unwrap();
    std::fs::write(
        env.path(".market.db.guardian-restore-2147483646-abcdef012345-wal"),
        b"x",
    )
    .unwrap();
    let r = env.run(&["status"]).ok();
    assert!(
        r.stdout.contains("warning") && r.stdout.contains(&dead.display().to_string()),
        "{}",
        r.stdout
    );
    let r = env.run(&["status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v[0]["restore_leftovers"].as_array().unwrap().len(),
        2,
        "{v}"
    );
    env.backup();
    assert_eq!(restore_staging(&env.db), Vec::<String>::new());
    let r = env.run(&["status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["restore_leftovers"], serde_json::json!([]));
}

#[test]
fn two_configs_with_different_staging_folders_never_back_up_one_database_at_once() {
    let env = TestEnv::empty();
    crate::crash::make_big(&env.db, 32, "locked");
    env.write_config("");
    let other = env.path("other.toml");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("staging_dir = \"staging\"", "staging_dir = \"staging-b\"");
    std::fs::write(&other, text).unwrap();
    let mut first = env
        .command()
        .arg("backup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Start the second once the first holds a flock on the database file (the kernel lists
    // it in /proc/locks by inode); the copy of 32 MiB takes longer than starting the second.
    let ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&env.db).unwrap().ino()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| {
            l.contains(" FLOCK ")
                && l.contains(&format!(" {} ", first.id()))
                && l.contains(&format!(":{ino} "))
        })
    {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first backup ended before it was seen holding the lock"
        );
        assert!(
            Instant::now() < deadline,
            "the first backup never took its lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = run_within(
        Command::new(env!("CARGO_BIN_EXE_guardian"))
            .arg("--config")
            .arg(&other)
            .arg("backup")
            .current_dir(env.dir.path()),
        60,
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first backup ended before the second started; the test proves nothing"
    );
    let second = second.expect_code(3);
    let line = second.error_line();
    assert!(
        line.contains(&format!("pid {}", first.id())) && line.contains("database file"),
        "{line}"
    );
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.list().len(), 1);
}
