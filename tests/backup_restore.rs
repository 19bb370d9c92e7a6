//! Backup and restore end to end through the real binary: round trips, live writers, damaged
//! snapshots, restores over live databases.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::Connection;

use crate::util::{self, TestEnv};

#[test]
fn backup_then_restore_gives_identical_content() {
    let env = TestEnv::new();
    let id = env.backup();
    let list = env.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "unverified");
    assert_eq!(list[0]["size_bytes"], fs::metadata(&env.db).unwrap().len());

    let out = env.path("restored.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    assert_eq!(util::dump(&out), util::dump(&env.db));
    assert_eq!(util::integrity(&out), "ok");
    // A new file gets 0600.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// The snapshot in `fixtures/v1-snapshot/`, taken by a guardian that wrote manifest format 1.
const V1_ID: &str = "20261205T034323Z-075fac37";

#[test]
fn a_format_1_snapshot_is_listed_verified_restored_and_drilled() {
    let env = TestEnv::new();
    util::copy_dir(&util::fixture("v1-snapshot"), &env.store);
    let manifest = env.snapshot_dir(V1_ID).join("manifest.json");
    let before = fs::read(&manifest).unwrap();
    assert!(String::from_utf8_lossy(&before).contains("\"format_version\": 1"));

    let list = env.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], V1_ID);
    assert_eq!(list[0]["status"], "unverified", "{:?}", list[0]);
    assert_eq!(list[0]["size_bytes"], 36864);
    assert_eq!(list[0]["stored_bytes"], 3223);
    assert_eq!(
        list[0]["stored_sha256"],
        "8e8d8063bb123a7cc9a9e71bac93fba567b7f082e13c99c1cf9d2b64a6a2c8de"
    );

    let r = env.run(&["verify"]).ok();
    assert!(r.stdout.contains(V1_ID), "{}", r.stdout);

    let out = env.path("restored.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(V1_ID), "{}", r.stdout);
    // The raw SHA-256 recorded in 2026 by the old format, proven on the restored bytes.
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(fs::read(&out).unwrap())),
        "7857dd324de11052945b4a2ba95708442ffee76ceefe5cd7fd5ef23e171e37df"
    );
    assert_eq!(
        util::dump(&out),
        util::dump(&util::fixture("market.sqlite"))
    );

    env.run(&["drill"]).ok();
    assert_eq!(util::status_of(&env, V1_ID), "verified");
    // Read, never rewritten.
    assert_eq!(fs::read(&manifest).unwrap(), before);
}

#[test]
fn stored_object_is_plain_gzip_and_matches_the_manifest() {
    let env = TestEnv::new();
    let id = env.backup();
    let dir = env.snapshot_dir(&id);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let gz = fs::read(dir.join("db.sqlite.gz")).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&gz[..]), &mut raw).unwrap();
    // The online-backup API rewrites header counters, so compare content, not bytes.
    let copy = env.path("gunzipped.db");
    fs::write(&copy, &raw).unwrap();
    assert_eq!(util::dump(&copy), util::dump(&env.db));
    use sha2::Digest;
    assert_eq!(
        manifest["raw_sha256"],
        hex::encode(sha2::Sha256::digest(&raw))
    );
    assert_eq!(manifest["format_version"], 2);
    assert_eq!(manifest["data"]["layout"], "whole");
    assert_eq!(manifest["data"]["object"], "db.sqlite.gz");
    assert_eq!(
        manifest["data"]["stored_sha256"],
        hex::encode(sha2::Sha256::digest(&gz))
    );
    assert_eq!(manifest["data"]["stored_len"], gz.len());
    assert_eq!(manifest["tables"]["orders"], 40);
    assert_eq!(manifest["check"]["result"], "ok");
    assert_eq!(manifest["db"], "market");
}

/// Accounts whose balances always sum to `TOTAL`: a transaction moves money between two.
pub(crate) const ACCOUNTS: i64 = 2000;
pub(crate) const TOTAL: i64 = ACCOUNTS * 1000;

pub(crate) fn make_bank(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB NOT NULL);
         CREATE TABLE transfers (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, pad BLOB);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..ACCOUNTS {
        // ~4 KB of padding per row so the database is big enough (~8 MB) for the copy to
        // overlap many writer commits.
        tx.execute(
            "INSERT INTO accounts VALUES (?1, 1000, randomblob(4000))",
            [i],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

pub(crate) fn bank_total(path: &Path) -> i64 {
    let c = Connection::open(path).unwrap();
    c.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
        .unwrap()
}

/// Run `snapshots` while a writer moves money between the accounts of the bank at `db` (it is
/// committing before they start), and return what they returned. Fails unless the writer
/// committed during them and saw no error.
pub(crate) fn during_bank_transfers<T>(db: &Path, snapshots: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (db, stop, commits) = (db.to_path_buf(), Arc::clone(&stop), Arc::clone(&commits));
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let (a, b) = ((i * 7919) % ACCOUNTS, (i * 104729 + 1) % ACCOUNTS);
                let tx = c.unchecked_transaction().unwrap();
                tx.execute(
                    "UPDATE accounts SET balance = balance - 5 WHERE id = ?1",
                    [a],
                )
                .unwrap();
                tx.execute("INSERT INTO transfers (src, dst, amount, pad) VALUES (?1, ?2, 5, randomblob(500))", [a, b]).unwrap();
                tx.execute(
                    "UPDATE accounts SET balance = balance + 5 WHERE id = ?1",
                    [b],
                )
                .unwrap();
                tx.commit().unwrap();
                commits.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    while commits.load(Ordering::Relaxed) < 50 {
        std::thread::yield_now();
    }
    let before = commits.load(Ordering::Relaxed);
    let out = snapshots();
    let during = commits.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer saw no errors");
    assert!(
        during > 10,
        "the writer must have committed during the snapshots ({during})"
    );
    out
}

#[test]
fn backup_under_a_steady_writer_is_consistent_and_finishes() {
    let env = TestEnv::empty();
    make_bank(&env.db);
    // Back up three times while the writer keeps committing.
    let ids: Vec<String> =
        during_bank_transfers(&env.db, || (0..3).map(|_| env.backup()).collect());

    for id in &ids {
        let out = env.path(&format!("restored-{id}.db"));
        env.run(&["restore", "--snapshot", id, "--to", out.to_str().unwrap()])
            .ok();
        assert_eq!(util::integrity(&out), "ok");
        assert_eq!(bank_total(&out), TOTAL, "snapshot {id} is torn");
    }
}

#[test]
fn uncheckpointed_wal_frames_are_in_the_backup() {
    let env = TestEnv::empty();
    let c = Connection::open(&env.db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE t (x); INSERT INTO t VALUES ('only in the wal');",
    )
    .unwrap();
    assert!(fs::metadata(env.path("market.db-wal")).unwrap().len() > 0);
    env.backup();
    let out = env.path("out.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(util::count(&out, "t"), 1);
    drop(c);
}

#[test]
fn backup_does_not_modify_the_source() {
    let env = TestEnv::new();
    let before = fs::read(&env.db).unwrap();
    let mtime = fs::metadata(&env.db).unwrap().modified().unwrap();
    env.backup();
    assert_eq!(fs::read(&env.db).unwrap(), before);
    assert_eq!(fs::metadata(&env.db).unwrap().modified().unwrap(), mtime);
    for side in ["-wal", "-shm", "-journal"] {
        assert!(
            !env.path(&format!("market.db{side}")).exists(),
            "backup left a {side} file"
        );
    }
}

#[test]
fn corrupted_source_is_refused_and_earlier_snapshots_stay() {
    let env = TestEnv::new();
    let good = env.backup();
    fs::copy(util::fixture("corrupt.sqlite"), &env.db).unwrap();
    let r = env.run(&["backup"]).expect_code(1);
    assert!(
        r.stderr.contains("quick_check") || r.stderr.contains("integrity"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.trim().is_empty(),
        "no id printed for a refused backup: {}",
        r.stdout
    );
    let list = env.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], good.as_str());
    // Nothing of the refused backup is left in the store.
    let folders = fs::read_dir(env.store.join("market"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(folders, 1);
}

/// Three snapshots; the newest damaged as `damage` says. Returns (ids oldest first).
fn three_snapshots(env: &TestEnv) -> Vec<String> {
    let c = Connection::open(&env.db).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        c.execute(
            "INSERT INTO customers (email, name, created_at) VALUES (?1, 'x', 'now')",
            [format!("new{i}@example.com")],
        )
        .unwrap();
        ids.push(env.backup());
    }
    ids
}

fn restore_latest_skips(damage: impl Fn(&Path)) {
    let env = TestEnv::new();
    let ids = three_snapshots(&env);
    damage(&env.snapshot_dir(&ids[2]));
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout
            .contains(&format!("restored market snapshot {}", ids[1])),
        "{}",
        r.stdout
    );
    assert_eq!(util::count(&out, "customers"), 22);
    assert_eq!(util::integrity(&out), "ok");
}

#[test]
fn restore_latest_skips_a_flipped_byte() {
    restore_latest_skips(|dir| {
        let p = dir.join("db.sqlite.gz");
        let mut b = fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
        fs::write(&p, b).unwrap();
    });
}

#[test]
fn restore_latest_skips_a_truncated_object() {
    restore_latest_skips(|dir| {
        let p = dir.join("db.sqlite.gz");
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..b.len() / 2]).unwrap();
    });
}

#[test]
fn backup_without_manifest_is_ignored() {
    restore_latest_skips(|dir| fs::remove_file(dir.join("manifest.json")).unwrap());
}

#[test]
fn restore_latest_skips_an_object_swapped_with_another_snapshots() {
    let env = TestEnv::new();
    let ids = three_snapshots(&env);
    fs::copy(
        env.snapshot_dir(&ids[0]).join("db.sqlite.gz"),
        env.snapshot_dir(&ids[2]).join("db.sqlite.gz"),
    )
    .unwrap();
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains(&format!("skipped {}", ids[2])),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("snapshot {}", ids[1])),
        "{}",
        r.stdout
    );
}

#[test]
fn restore_with_no_good_snapshot_exits_1() {
    let env = TestEnv::new();
    let id = env.backup();
    let p = env.snapshot_dir(&id).join("db.sqlite.gz");
    fs::write(&p, b"not gzip at all").unwrap();
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .expect_code(1);
    assert!(r.stderr.contains("no good snapshot"), "{}", r.stderr);
    assert!(
        !out.exists(),
        "nothing may be written when no snapshot is good"
    );
    let leftovers: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("guardian-restore"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging files left behind: {leftovers:?}"
    );

    let empty = TestEnv::new();
    let r = empty
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .expect_code(1);
    assert!(r.stderr.contains("no good snapshot"), "{}", r.stderr);
}

#[test]
fn restore_over_a_database_with_a_stale_wal_moves_everything_aside() {
    let env = TestEnv::empty();
    // Snapshot state A.
    {
        let c = Connection::open(&env.db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES ('a');",
        )
        .unwrap();
    }
    env.backup();
    // Build a target in state B whose last transaction lives only in an un-checkpointed -wal,
    // as a crashed application leaves it: copy the files while a connection holds them.
    let target = env.path("live.db");
    {
        let c = Connection::open(&env.db).unwrap();
        c.execute_batch("PRAGMA wal_autocheckpoint = 0; INSERT INTO t VALUES ('b');")
            .unwrap();
        fs::copy(&env.db, &target).unwrap();
        fs::copy(env.path("market.db-wal"), env.path("live.db-wal")).unwrap();
    }
    assert_eq!(
        util::count(&target, "t"),
        2,
        "the copied state B has the wal row"
    );
    // Re-plant the hot wal (opening the copy above checkpointed and removed it).
    {
        let c = Connection::open(&env.db).unwrap();
        c.execute_batch("PRAGMA wal_autocheckpoint = 0; INSERT INTO t VALUES ('c');")
            .unwrap();
        fs::copy(&env.db, &target).unwrap();
        fs::copy(env.path("market.db-wal"), env.path("live.db-wal")).unwrap();
    }
    let old_db = fs::read(&target).unwrap();
    let old_wal = fs::read(env.path("live.db-wal")).unwrap();

    let r = env
        .run(&["restore", "--latest", "--to", target.to_str().unwrap()])
        .ok();
    assert_eq!(
        util::dump(&target),
        vec!["t: Text([97])".to_string()],
        "exactly the snapshot's rows"
    );
    let aside: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("live.db.pre-restore-"))
        .collect();
    let main = aside
        .iter()
        .find(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .expect("old db kept");
    let wal = aside
        .iter()
        .find(|n| n.ends_with("-wal"))
        .expect("old wal kept");
    assert_eq!(fs::read(env.path(main)).unwrap(), old_db);
    assert_eq!(fs::read(env.path(wal)).unwrap(), old_wal);
    assert!(r.stdout.contains("previous file kept at"), "{}", r.stdout);
    // The kept-aside pair is still the old database, WAL row included.
    assert_eq!(util::count(&env.path(main), "t"), 3);
}

#[test]
fn restore_refuses_a_database_in_use_unless_forced() {
    let env = TestEnv::new();
    env.backup();
    let holder = {
        let c = Connection::open(&env.db).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; SELECT count(*) FROM orders;")
            .unwrap();
        c
    };
    let r = env.run(&["restore", "--latest"]).expect_code(2);
    assert!(r.stderr.contains("in use"), "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    // A dry run says it would refuse, and fails as the real run does.
    let r = env
        .run(&["restore", "--latest", "--dry-run"])
        .expect_code(2);
    assert!(
        r.error_line().contains("dry run: would refuse"),
        "{}",
        r.stderr
    );
    let r = env
        .run(&["restore", "--latest", "--dry-run", "--force"])
        .ok();
    assert!(
        r.stdout.contains("would restore") && r.stdout.contains("--force would replace it"),
        "{}",
        r.stdout
    );
    let r = env.run(&["restore", "--latest", "--force"]).ok();
    assert!(
        r.stdout.contains("warning: the target was in use"),
        "{}",
        r.stdout
    );
    drop(holder);
    assert_eq!(util::integrity(&env.db), "ok");
}

#[test]
fn dry_run_writes_nothing() {
    let env = TestEnv::new();
    env.backup();
    let before: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let r = env.run(&["restore", "--latest", "--dry-run"]).ok();
    assert!(r.stdout.contains("nothing was written"), "{}", r.stdout);
    let after: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn restore_keeps_the_replaced_files_mode() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    env.backup();
    fs::set_permissions(&env.db, fs::Permissions::from_mode(0o640)).unwrap();
    env.run(&["restore", "--latest"]).ok();
    assert_eq!(
        fs::metadata(&env.db).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn restore_before_picks_an_older_snapshot() {
    let env = TestEnv::new();
    let first = env.backup();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cut = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(50));
    env.backup();
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--before", &cut, "--to", out.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(&first), "{}", r.stdout);
}
