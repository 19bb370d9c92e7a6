//! Faults in the store itself: an S3 service that throttles for a while or for good, a local
//! store that is full or read-only. Transient faults are retried; persistent ones fail in
//! bounded time with one clear line and exit 2; nothing partial is ever listed.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::s3_cli::{run, s3_env};
use crate::s3_server::{unique_prefix, S3Server};
use crate::util::{self, TestEnv};

#[test]
fn s3_throttling_is_retried_and_a_persistent_fault_fails_in_bounded_time() {
    let server = S3Server::start();
    let env = s3_env(&server.target, &unique_prefix("faults"));

    // Transient: a few 503 SlowDown answers are retried with backoff; the backup succeeds.
    server.faults.lock().unwrap().slow_down = 2;
    let r = run(&env, &server.target, &["backup"]).ok();
    let first = r.stdout.trim().to_string();

    // Persistent: every request answers 503. The backup gives up in bounded time, exit 2,
    // one line naming the provider's code; nothing new is listed.
    server.faults.lock().unwrap().slow_down = 100_000;
    let t0 = Instant::now();
    let r = run(&env, &server.target, &["backup"]).expect_code(2);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(90), "took {took:?}");
    let line = r.error_line();
    assert!(
        line.contains("SlowDown") || line.contains("503"),
        "{}",
        line
    );

    // The store is back: the next run succeeds, and only complete snapshots are listed.
    server.faults.lock().unwrap().slow_down = 0;
    let r = run(&env, &server.target, &["backup"]).ok();
    let second = r.stdout.trim().to_string();
    let r = run(&env, &server.target, &["list", "--json"]).ok();
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![second.as_str(), first.as_str()]);
    eprintln!(
        "store faults: 2 transient 503s retried; persistent 503 failed after {took:?} with exit 2"
    );
}

/// Mount a small tmpfs at `dir` (root only); `None` where mounting is not allowed.
fn mount_tmpfs(dir: &std::path::Path, opts: &str) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| Mount(dir.to_path_buf()))
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn incompressible_db(env: &TestEnv, kib: usize) {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE b (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {})
         INSERT INTO b SELECT randomblob(1024) FROM n;",
        kib
    ))
    .unwrap();
}

#[test]
fn a_full_local_store_fails_cleanly_and_keeps_nothing_partial() {
    let env = TestEnv::empty();
    incompressible_db(&env, 512);
    let Some(_m) = mount_tmpfs(&env.store, "size=256k") else {
        util::skip("cannot mount a tmpfs here (needs root and a kernel that allows it)");
        return;
    };
    let r = env.run(&["backup"]).expect_code(2);
    let line = r.error_line();
    assert!(
        line.contains("No space left") || line.contains("space"),
        "{}",
        line
    );
    assert!(env.list().is_empty());
    // Only the record of the failed attempt (which `status` reads) may be there.
    let leftovers: Vec<_> = util::walk(&env.store)
        .into_iter()
        .filter(|p| !p.ends_with("market/last-backup.json"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "nothing may be left in a full store: {leftovers:?}"
    );
}

#[test]
fn a_read_only_local_store_fails_with_one_line() {
    let env = TestEnv::new();
    let Some(_m) = mount_tmpfs(&env.store, "size=1m,ro") else {
        util::skip("cannot mount a tmpfs here (needs root and a kernel that allows it)");
        return;
    };
    let r = env.run(&["backup"]).expect_code(2);
    let line = r.error_line();
    assert!(
        line.contains("Read-only") || line.contains("read-only"),
        "{}",
        line
    );
    // Listing a read-only store still works.
    assert!(env.list().is_empty());
    let _ = util::integrity(&env.db);
}

#[test]
fn a_source_on_a_read_only_filesystem_is_backed_up() {
    let env = TestEnv::new();
    let ro = env.path("ro");
    let Some(_m) = mount_tmpfs(&ro, "size=4m") else {
        util::skip("cannot mount a tmpfs here (needs root and a kernel that allows it)");
        return;
    };
    std::fs::copy(&env.db, ro.join("market.db")).unwrap();
    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted);
    env.write_config("");
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("path = \"market.db\"", "path = \"ro/market.db\"");
    std::fs::write(&env.config, cfg).unwrap();
    let id = env.backup();
    let out = env.path("out.db");
    env.run(&["restore", "--snapshot", &id, "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(util::dump(&out), util::dump(&env.db));
}

#[test]
fn a_wal_source_with_a_hot_wal_on_a_read_only_filesystem_is_refused_clearly() {
    let env = TestEnv::new();
    let ro = env.path("ro");
    let Some(_m) = mount_tmpfs(&ro, "size=4m") else {
        util::skip("cannot mount a tmpfs here (needs root and a kernel that allows it)");
        return;
    };
    // A WAL database whose last commit lives only in its -wal (as a crashed app leaves it).
    {
        let c = rusqlite::Connection::open(ro.join("w.db")).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t (x); INSERT INTO t VALUES ('only in the wal');",
        )
        .unwrap();
        std::fs::copy(ro.join("w.db"), ro.join("market.db")).unwrap();
        std::fs::copy(ro.join("w.db-wal"), ro.join("market.db-wal")).unwrap();
    }
    for f in ["w.db", "w.db-wal", "w.db-shm"] {
        let _ = std::fs::remove_file(ro.join(f));
    }
    assert!(Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro)
        .status()
        .unwrap()
        .success());
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("path = \"market.db\"", "path = \"ro/market.db\"");
    std::fs::write(&env.config, cfg).unwrap();
    // Never a snapshot that silently misses the WAL's commits: a clear refusal instead.
    let r = env.run(&["backup"]).expect_code(2);
    let line = r.error_line();
    assert!(
        line.contains("read-only filesystem") && line.contains("-wal"),
        "{}",
        line
    );
    assert!(env.list().is_empty());
}
