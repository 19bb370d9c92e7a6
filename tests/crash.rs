//! SIGKILL at many points of `backup` and `restore`: nothing partial is ever listed or restored,
//! the next run succeeds, and a killed restore leaves either the old or the new database.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sha2::Digest;

use crate::util::{self, TestEnv};

/// A database of about `mib` MiB, so a backup takes long enough to be killed in every step.
fn make_big(path: &Path, mib: usize, tag: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, tag TEXT, body BLOB);").unwrap();
    let tx = c.unchecked_transaction().unwrap();
    // Deterministic content (same tag, same database), half noise and half zeros: compressible
    // like real data, so compression takes time.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ tag.len() as u64;
    for _ in 0..mib * 16 {
        let mut body = vec![0u8; 65536];
        for chunk in body[..32768].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        tx.execute(
            "INSERT INTO blobs (tag, body) VALUES (?1, ?2)",
            rusqlite::params![tag, body],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Kill `guardian args` after each of `trials` delays spread evenly over `span`.
fn kill_sweep(
    env: &TestEnv,
    args: &[&str],
    full_run: Duration,
    trials: u32,
    mut after_each: impl FnMut(u32),
) -> u32 {
    let mut killed = 0;
    for i in 0..trials {
        // Spread over 80% of a full run (runs vary on a loaded machine).
        let delay = full_run * 4 / 5 * i / trials;
        let mut child = env
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        after_each(i);
    }
    killed
}

/// Every listed snapshot's object matches its manifest (nothing partial is listed).
fn listed_snapshots_are_complete(env: &TestEnv) -> usize {
    let list = env.list();
    for s in &list {
        let id = s["id"].as_str().unwrap();
        assert_ne!(s["status"], "failed", "{s}");
        let gz = fs::read(env.snapshot_dir(id).join("db.sqlite.gz")).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&gz)),
            s["stored_sha256"].as_str().unwrap(),
            "{id} is partial"
        );
    }
    list.len()
}

#[test]
fn sigkill_during_backup_never_leaves_a_partial_snapshot() {
    let env = TestEnv::empty();
    make_big(&env.db, 24, "v1");
    // Time one full backup to know where the kill points are.
    let t0 = Instant::now();
    env.backup();
    let full = t0.elapsed();
    let trials = 30;
    let killed = kill_sweep(&env, &["backup"], full, trials, |_| {
        listed_snapshots_are_complete(&env);
    });
    assert!(
        killed >= trials / 3,
        "most runs must be killed mid-way ({killed}/{trials}, full run {full:?})"
    );

    // The next backup succeeds and cleans the leftovers of the killed runs.
    let id = env.backup();
    let staging_left: Vec<_> = fs::read_dir(env.path("staging"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        staging_left.is_empty(),
        "staging leftovers: {staging_left:?}"
    );
    let temp_left: Vec<_> = util::walk(&env.store)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(temp_left.is_empty(), "store temp files left: {temp_left:?}");
    let n = listed_snapshots_are_complete(&env);
    assert!(n >= 2);
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    assert_eq!(util::integrity(&out), "ok");
    eprintln!("backup kill sweep: {trials} trials, {killed} killed mid-run, {n} complete snapshots listed, 0 partial");
}

#[test]
fn sigkill_during_restore_leaves_the_old_or_the_new_database() {
    let env = TestEnv::empty();
    make_big(&env.db, 16, "new");
    env.backup();
    let new_dump = util::dump_hash(&env.db);
    // The target: a different database (state "old") with an un-checkpointed -wal.
    let target = env.path("live.db");
    let reset_target = || {
        for p in fs::read_dir(env.dir.path()).unwrap().flatten() {
            if p.file_name().to_string_lossy().starts_with("live.db") {
                fs::remove_file(p.path()).unwrap();
            }
        }
        make_big(&target, 4, "old");
    };
    reset_target();
    let old_dump = util::dump_hash(&target);
    let t0 = Instant::now();
    env.run(&["restore", "--latest", "--to", target.to_str().unwrap()])
        .ok();
    let full = t0.elapsed();
    reset_target();

    let trials = 30;
    let (mut saw_old, mut saw_new) = (0, 0);
    let killed = kill_sweep(
        &env,
        &["restore", "--latest", "--to", target.to_str().unwrap()],
        full,
        trials,
        |i| {
            assert!(target.exists(), "trial {i}: the target vanished");
            let now = util::dump_hash(&target);
            if now == old_dump {
                saw_old += 1;
            } else {
                assert_eq!(
                    now, new_dump,
                    "trial {i}: the target is neither the old nor the new database"
                );
                assert_eq!(util::integrity(&target), "ok");
                saw_new += 1;
                // The old database was kept aside, with its WAL, and is still the old database.
                let aside = fs::read_dir(env.dir.path())
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| {
                        let n = p.file_name().unwrap().to_string_lossy();
                        n.starts_with("live.db.pre-restore-")
                            && !n.ends_with("-wal")
                            && !n.ends_with("-shm")
                    })
                    .unwrap_or_else(|| panic!("trial {i}: no kept-aside copy"));
                assert_eq!(
                    util::dump_hash(&aside),
                    old_dump,
                    "trial {i}: the kept-aside copy is not the old database"
                );
                reset_target();
            }
        },
    );
    assert!(
        killed >= trials / 3,
        "most runs must be killed mid-way ({killed}/{trials}, full run {full:?})"
    );
    assert!(saw_old > 0);
    eprintln!("restore kill sweep: {trials} trials, {killed} killed, {saw_old} left the old db, {saw_new} the new one, 0 mixed");
}
