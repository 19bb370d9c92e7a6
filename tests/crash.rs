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
pub(crate) fn make_big(path: &Path, mib: usize, tag: &str) {
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
    after_each: impl FnMut(u32),
) -> u32 {
    kill_sweep_with(|| env.command(), args, full_run, trials, after_each)
}

/// [`kill_sweep`] with the command built by `make` (e.g. with S3 credentials).
fn kill_sweep_with(
    make: impl Fn() -> std::process::Command,
    args: &[&str],
    full_run: Duration,
    trials: u32,
    mut after_each: impl FnMut(u32),
) -> u32 {
    let mut killed = 0;
    for i in 0..trials {
        // Spread over 80% of a full run (runs vary on a loaded machine).
        let delay = full_run * 4 / 5 * i / trials;
        let mut child = make()
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

/// How long a prune of a copy of `env`'s store takes: where to put the kill points.
fn time_a_prune_of_a_copy(env: &TestEnv) -> Duration {
    util::copy_dir(&env.store, &env.path("store-copy"));
    let cfg = fs::read_to_string(&env.config).unwrap();
    let cfg_copy = env.path("copy.toml");
    fs::write(
        &cfg_copy,
        cfg.replace("path = \"store\"", "path = \"store-copy\""),
    )
    .unwrap();
    let t0 = Instant::now();
    util::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_guardian"))
            .arg("--config")
            .arg(&cfg_copy)
            .arg("prune")
            .current_dir(env.dir.path()),
    )
    .ok();
    t0.elapsed()
}

/// Every listed snapshot's object matches its manifest (nothing partial is listed).
pub(crate) fn listed_snapshots_are_complete(env: &TestEnv) -> usize {
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
    let staging_left = util::staging_leftovers(&env);
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

#[test]
fn sigkill_during_an_s3_backup_never_lists_a_partial_snapshot() {
    use crate::s3_server::{unique_prefix, S3Server};
    let server = S3Server::start();
    let env = crate::s3_cli::s3_env(&server.target, &unique_prefix("kill"));
    make_big(&env.db, 24, "s3");
    let cmd = || {
        let mut c = env.command();
        server.target.credentials_env(&mut c);
        c
    };
    let list = || -> Vec<serde_json::Value> {
        let r = util::run(cmd().args(["list", "--json"])).ok();
        serde_json::from_str(&r.stdout).unwrap()
    };
    let t0 = Instant::now();
    util::run(cmd().arg("backup")).ok();
    let full = t0.elapsed();
    let trials = 30;
    let killed = kill_sweep_with(cmd, &["backup"], full, trials, |i| {
        for s in list() {
            assert_ne!(s["status"], "failed", "trial {i}: {s}");
        }
    });
    assert!(
        killed >= trials / 3,
        "{killed}/{trials} killed (full run {full:?})"
    );
    // The next backup works, and the newest snapshot restores and passes integrity_check.
    let id = util::run(cmd().arg("backup"))
        .ok()
        .stdout
        .trim()
        .to_string();
    let out = env.path("out.db");
    let r = util::run(cmd().args(["restore", "--latest", "--to", out.to_str().unwrap()])).ok();
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    assert_eq!(util::integrity(&out), "ok");
    eprintln!("s3 backup kill sweep: {trials} trials, {killed} killed mid-run, {} snapshots listed, 0 partial", list().len());
}

#[test]
fn sigkill_during_prune_never_leaves_a_manifest_without_its_data() {
    let env = TestEnv::new();
    env.write_config("[databases.retention]\nkeep_last = 1\nkeep_delete = \"0s\"\n");
    let first = env.backup();
    // 300 snapshots: copies of the first under new ids (a prune of them takes a while).
    let src = env.snapshot_dir(&first);
    let manifest = fs::read_to_string(src.join("manifest.json")).unwrap();
    for n in 0..300u32 {
        let id = format!(
            "20260101T{:02}{:02}{:02}Z-{:08x}",
            n / 3600,
            n / 60 % 60,
            n % 60,
            n
        );
        let dir = env.snapshot_dir(&id);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(src.join("db.sqlite.gz"), dir.join("db.sqlite.gz")).unwrap();
        fs::write(dir.join("manifest.json"), manifest.replace(&first, &id)).unwrap();
    }
    let listed = |env: &TestEnv| {
        let list = env.list();
        for s in &list {
            assert_ne!(s["status"], "failed", "a manifest lost its data: {s}");
        }
        list.len()
    };
    assert_eq!(listed(&env), 301);
    env.write_config("[databases.retention]\nkeep_last = 1\nkeep_delete = \"0s\"\n");
    let full = time_a_prune_of_a_copy(&env);
    let trials = 20;
    let mut killed = 0;
    let mut remaining = 301;
    for i in 0..trials {
        let delay = full * 4 / 5 * i / trials;
        let mut child = env
            .command()
            .arg("prune")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        remaining = listed(&env);
        if remaining <= 1 {
            break;
        }
    }
    // A final prune finishes the job: the newest snapshot stays and restores.
    env.run(&["prune"]).ok();
    assert_eq!(listed(&env), 1);
    let out = env.path("out.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(util::integrity(&out), "ok");
    eprintln!("prune kill sweep: {killed} kills over a prune of 300 snapshots (full prune {full:?}), {remaining} left before the last prune, 0 manifests without data");
}

#[test]
fn sigkill_during_a_prune_of_incremental_chains_never_leaves_a_manifest_without_an_object() {
    let env = TestEnv::new();
    // Proven by integrity_check, so that retention may delete what is older.
    env.write_config("incremental_check = \"integrity\"\n");
    let full = env.backup();
    let c = Connection::open(&env.db).unwrap();
    c.execute("UPDATE orders SET status = 'x' WHERE rowid = 1", [])
        .unwrap();
    let r = env.run(&["backup", "--incremental"]).ok();
    let inc = r.stdout.trim().to_string();
    // 200 incrementals on that chain: copies of the real one under new ids, each naming the
    // full's object, the real incremental's page set and its own copy of it (and a prune of
    // them takes a while).
    let m: serde_json::Value = util::read_manifest(&env, &inc);
    for n in 0..200u32 {
        // Ids of the real incremental's second (so the chain stays in time order).
        let id = format!("{}-{n:08x}", &inc[..16]);
        let dir = env.snapshot_dir(&id);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(
            env.snapshot_dir(&inc).join("pages.gz"),
            dir.join("pages.gz"),
        )
        .unwrap();
        let mut copy = m.clone();
        copy["id"] = id.clone().into();
        let at: chrono::DateTime<chrono::Utc> = m["created_at"].as_str().unwrap().parse().unwrap();
        copy["created_at"] = (at + chrono::Duration::milliseconds(i64::from(n) + 1))
            .to_rfc3339()
            .into();
        let own = m["data"]["parts"][1].clone();
        let mut mine = own.clone();
        mine["snapshot"] = id.clone().into();
        copy["data"]["parent"] = inc.clone().into();
        copy["data"]["parts"] = serde_json::json!([m["data"]["parts"][0], own, mine]);
        util::write_manifest(&env, &id, &copy);
    }
    let listed = |env: &TestEnv| {
        let list = env.list();
        for s in &list {
            assert_ne!(
                s["status"], "failed",
                "a manifest names a missing object: {s}"
            );
        }
        list.len()
    };
    assert_eq!(listed(&env), 202);
    env.write_config("[databases.retention]\nkeep_last = 1\nkeep_delete = \"0s\"\n");
    let full_run = time_a_prune_of_a_copy(&env);
    let killed = kill_sweep(&env, &["prune"], full_run, 20, |_| {
        listed(&env);
    });
    env.run(&["prune"]).ok();
    assert_eq!(listed(&env), 1);
    let out = env.path("out.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(util::integrity(&out), "ok");
    // What the newest needs is all that is left of the chain.
    assert!(env.snapshot_dir(&full).join("db.sqlite.gz").exists());
    assert!(env.snapshot_dir(&inc).join("pages.gz").exists());
    eprintln!("incremental prune kill sweep: {killed} kills over a prune of 201 snapshots ({full_run:?}), 0 manifests naming a missing object");
}
