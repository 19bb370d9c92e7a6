//! Hard sources: other processes writing hundreds of commits per second, long open write
//! transactions in WAL and rollback mode, a source deleted, renamed away or replaced while it
//! is backed up.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use rusqlite::Connection;

use crate::util::{self, TestEnv};

#[test]
fn backup_under_another_process_writing_hundreds_of_commits_per_second() {
    let env = TestEnv::empty();
    {
        let c = Connection::open(&env.db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB);
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999)
             INSERT INTO accounts SELECT i, 1000, randomblob(2000) FROM n;",
        )
        .unwrap();
    }
    // A separate process (python's sqlite3) moves money between accounts as fast as it can and
    // reports its commit count and error count when told to stop (stdin closed).
    let script = r#"
import sqlite3, sys, threading, time
c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
c.execute("PRAGMA busy_timeout = 10000")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
n = errors = 0
t0 = time.time()
print("ready", flush=True)
while not stop.is_set():
    a, b = n % 1000, (n * 7 + 3) % 1000
    try:
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE accounts SET balance = balance - 1 WHERE id = ?", (a,))
        c.execute("UPDATE accounts SET balance = balance + 1, pad = randomblob(2000) WHERE id = ?", (b,))
        c.execute("COMMIT")
        n += 1
    except sqlite3.Error as e:
        errors += 1
        print("error", e, file=sys.stderr, flush=True)
print(n, errors, round(n / (time.time() - t0)), flush=True)
"#;
    let (mut writer, mut out) = util::python_until_ready(script, &env.db);
    let mut line = String::new();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ids: Vec<String> = (0..3).map(|_| env.backup()).collect();
    drop(writer.stdin.take()); // stop
    line.clear();
    out.read_line(&mut line).unwrap();
    writer.wait().unwrap();
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let (commits, errors, per_sec) = (fields[0], fields[1], fields[2]);
    assert_eq!(errors, 0, "the writer saw errors");
    assert!(per_sec >= 100, "writer managed only {per_sec} commits/s");
    for id in ids {
        let out = env.path(&format!("{id}.db"));
        env.run(&["restore", "--snapshot", &id, "--to", out.to_str().unwrap()])
            .ok();
        assert_eq!(util::integrity(&out), "ok");
        let c = Connection::open(&out).unwrap();
        let total: i64 = c
            .query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 1_000_000, "snapshot {id} is torn");
    }
    eprintln!("external writer: {commits} commits at {per_sec}/s, {errors} errors, 3 consistent snapshots");
}

fn open_write_transaction_is_not_in_the_snapshot(journal_mode: &str) {
    let env = TestEnv::new();
    let c = Connection::open(&env.db).unwrap();
    c.execute_batch(&format!("PRAGMA journal_mode = {journal_mode};"))
        .unwrap();
    c.execute_batch("BEGIN IMMEDIATE; INSERT INTO customers (email, name, created_at) VALUES ('pending@x', 'p', 'now');")
        .unwrap();
    let id = env.backup();
    c.execute_batch("COMMIT").unwrap();
    let out = env.path("out.db");
    env.run(&["restore", "--snapshot", &id, "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(
        util::count(&out, "customers"),
        20,
        "the uncommitted row must not be in the snapshot"
    );
    assert_eq!(util::count(&env.db, "customers"), 21);
}

#[test]
fn a_long_open_write_transaction_does_not_block_a_wal_backup() {
    open_write_transaction_is_not_in_the_snapshot("WAL");
}

#[test]
fn a_long_open_write_transaction_does_not_block_a_rollback_journal_backup() {
    open_write_transaction_is_not_in_the_snapshot("DELETE");
}

/// What one backup did when its source was removed at some point of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gone {
    /// Removed before guardian opened it: exit 2 "does not exist" (or cannot open), no snapshot.
    BeforeTheCopy,
    /// Removed while the backup ran: the snapshot is published, exit 2 says what happened.
    DuringTheBackup,
    /// The backup had finished: exit 0.
    AfterTheBackup,
}

#[test]
fn a_source_deleted_or_renamed_away_mid_backup_is_reported_and_its_snapshot_is_whole() {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Instant;

    let env = TestEnv::empty();
    crate::crash::make_big(&env.db, 24, "gone");
    let pristine = env.path("pristine.db");
    std::fs::copy(&env.db, &pristine).unwrap();
    // A snapshot of the untouched database: every snapshot taken later must equal it.
    let t0 = Instant::now();
    let reference = env.backup();
    let full = t0.elapsed();
    let raw_sha256 = util::read_manifest(&env, &reference)["raw_sha256"].clone();

    let trials: u32 = 16;
    let mut seen: BTreeMap<Gone, u32> = BTreeMap::new();
    for i in 0..trials {
        let before: HashSet<String> = env
            .list()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        let rename = i % 2 == 1;
        let moved = env.path("moved.db");
        let child = env
            .command()
            .arg("backup")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Spread over 80% of a full run (runs vary on a loaded machine).
        std::thread::sleep(full * 4 / 5 * i / trials);
        if rename {
            std::fs::rename(&env.db, &moved).unwrap();
        } else {
            std::fs::remove_file(&env.db).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        if rename {
            std::fs::rename(&moved, &env.db).unwrap();
        } else {
            std::fs::copy(&pristine, &env.db).unwrap();
        }
        let r = util::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        let new: Vec<String> = env
            .list()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .filter(|id| !before.contains(id))
            .collect();
        let outcome = match r.code {
            0 => Gone::AfterTheBackup,
            2 if r.error_line().contains("during the backup") => {
                let line = r.error_line();
                let how = if rename { "renamed away" } else { "deleted" };
                assert!(line.contains("market.db") && line.contains(how), "{line}");
                assert!(line.contains("was published anyway"), "{line}");
                Gone::DuringTheBackup
            }
            2 => {
                let line = r.error_line();
                assert!(
                    line.contains("does not exist") || line.contains("open database"),
                    "{line}"
                );
                assert!(
                    new.is_empty(),
                    "no snapshot of a file never opened: {new:?}"
                );
                Gone::BeforeTheCopy
            }
            _ => panic!("unexpected outcome: {r:?}"),
        };
        *seen.entry(outcome).or_default() += 1;
        if outcome != Gone::BeforeTheCopy {
            // The one new snapshot is on stdout and named in the warning; it is whole.
            assert_eq!(new.len(), 1, "{outcome:?}: {new:?}\n{}", r.stderr);
            assert_eq!(r.stdout.trim(), new[0], "{}", r.stderr);
            assert!(outcome == Gone::AfterTheBackup || r.stderr.contains(&new[0]));
            assert_eq!(util::read_manifest(&env, &new[0])["raw_sha256"], raw_sha256);
            let out = env.path("check.db");
            env.run(&[
                "restore",
                "--snapshot",
                &new[0],
                "--to",
                out.to_str().unwrap(),
            ])
            .ok();
            assert_eq!(util::integrity(&out), "ok");
            std::fs::remove_file(&out).unwrap();
        }
    }
    let listed = crate::crash::listed_snapshots_are_complete(&env);
    assert!(
        seen.get(&Gone::DuringTheBackup).copied().unwrap_or(0) >= trials / 4,
        "too few removals landed mid-backup: {seen:?} (full run {full:?})"
    );
    eprintln!(
        "source removed mid-backup: {trials} trials (full run {full:.2?}): {seen:?}; {listed} snapshots listed, all whole, 0 partial"
    );
}

/// Deterministic: the copy has opened the source and waits for another process's exclusive
/// lock (rollback journal mode) when `remove` takes the file away; then the lock goes away and
/// the copy reads the old file through its open descriptor. The warning must contain `says`.
fn source_removed_while_its_copy_waits_for_a_lock(remove: impl Fn(&TestEnv), says: &str) {
    let env = TestEnv::new();
    let expected = util::dump(&env.db);
    let lock = Connection::open(&env.db).unwrap();
    lock.execute_batch("PRAGMA journal_mode = DELETE; BEGIN EXCLUSIVE")
        .unwrap();
    let mut child = env
        .command()
        .arg("backup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("source busy") {
        assert_ne!(
            stderr.read_line(&mut log).unwrap(),
            0,
            "no busy retry:\n{log}"
        );
    }
    remove(&env);
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    let out = child.wait_with_output().unwrap();
    let r = util::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: log,
    }
    .expect_code(2);
    let line = r.error_line();
    assert!(line.contains(says), "{line}");
    let id = r.stdout.trim();
    assert!(line.contains(id), "{line}");
    let restored = env.path("restored.db");
    env.run(&[
        "restore",
        "--snapshot",
        id,
        "--to",
        restored.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(util::integrity(&restored), "ok");
    assert_eq!(util::dump(&restored), expected);
}

#[test]
fn a_source_deleted_while_its_copy_waits_for_a_lock_is_copied_whole_and_reported() {
    source_removed_while_its_copy_waits_for_a_lock(
        |env| std::fs::remove_file(&env.db).unwrap(),
        "market.db was deleted or renamed away during the backup",
    );
}

#[test]
fn a_source_replaced_while_its_copy_waits_for_a_lock_is_copied_whole_and_reported() {
    source_removed_while_its_copy_waits_for_a_lock(
        |env| {
            let other = env.path("other.db");
            Connection::open(&other)
                .unwrap()
                .execute_batch("CREATE TABLE t (x)")
                .unwrap();
            std::fs::rename(&other, &env.db).unwrap();
        },
        "market.db was replaced by another file during the backup",
    );
}
