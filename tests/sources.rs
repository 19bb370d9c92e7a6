//! Hard sources: other processes writing hundreds of commits per second, long open write
//! transactions in WAL and rollback mode.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
    let mut writer = Command::new("python3")
        .args(["-c", script, env.db.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut out = BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
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
