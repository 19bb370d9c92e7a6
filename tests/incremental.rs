//! Incremental snapshots through the real binary: only the changed pages are stored, every
//! snapshot restores from its own manifest to the very bytes of the live database, a writer
//! never tears one, and whatever goes wrong (no base, a changed page size, a damaged page set,
//! a lost cache) gives a full instead at backup or an older snapshot at restore.

use std::fs;
use std::path::Path;

use rusqlite::Connection;
use sha2::Digest;

use crate::backup_restore::{bank_total, during_bank_transfers, make_bank, TOTAL};
use crate::util::{self, TestEnv};

/// `guardian backup --incremental`, expected to succeed: the new id and what stderr said.
fn incremental(env: &TestEnv) -> (String, String) {
    let r = env.run(&["backup", "--incremental"]).ok();
    (r.stdout.trim().to_string(), r.stderr)
}

fn entry<'a>(list: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {list:?}"))
}

fn sha256_file(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

/// Restore `id` into a new file and return its path.
fn restore(env: &TestEnv, id: &str, name: &str) -> std::path::PathBuf {
    let out = env.path(name);
    env.run(&["restore", "--snapshot", id, "--to", out.to_str().unwrap()])
        .ok();
    out
}

fn exec(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

/// A database of `rows` rows of ~1 KB in `t`, rollback-journal mode (so the live file holds
/// every committed page and a rebuilt snapshot can be compared with it byte for byte).
fn make_rows(db: &Path, rows: u32) {
    exec(
        db,
        &format!(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, pad BLOB);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
             INSERT INTO t SELECT i, 'v' || i, randomblob(1000) FROM c;"
        ),
    );
}

#[test]
fn an_incremental_stores_only_changed_pages_and_restores_the_live_bytes() {
    let env = TestEnv::empty();
    make_rows(&env.db, 3000);
    let full = env.backup();
    exec(
        &env.db,
        "UPDATE t SET v = 'changed' WHERE id IN (7, 1500, 2999);",
    );
    let (inc, stderr) = incremental(&env);
    assert!(!stderr.contains("full snapshot instead"), "{stderr}");

    let list = env.list();
    let (f, i) = (entry(&list, &full), entry(&list, &inc));
    assert_eq!(f["kind"], "full");
    assert!(f["base"].is_null());
    assert_eq!(i["kind"], "incremental");
    assert_eq!(i["base"], full.as_str());
    assert_eq!(i["status"], "unverified");
    // Three rows on three pages, plus page 1: a few KB against the full's megabytes.
    let (fs_, is) = (
        f["stored_bytes"].as_u64().unwrap(),
        i["stored_bytes"].as_u64().unwrap(),
    );
    assert!(is * 50 < fs_, "incremental {is} B vs full {fs_} B");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(env.snapshot_dir(&inc).join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["data"]["layout"], "pages");
    assert_eq!(manifest["data"]["parts"][1]["pages"], 4, "{manifest}");
    let text = env.run(&["list"]).ok().stdout;
    assert!(
        text.lines()
            .any(|l| l.contains(&inc) && l.contains(" incr ")),
        "{text}"
    );

    // The rebuilt file is the live file, byte for byte, and passes every check.
    let out = restore(&env, &inc, "inc.db");
    assert_eq!(sha256_file(&out), sha256_file(&env.db));
    assert_eq!(manifest["raw_sha256"], sha256_file(&env.db));
    assert_eq!(util::integrity(&out), "ok");
    env.run(&["drill", "--snapshot", &inc]).ok();
    env.run(&["verify", "--all"]).ok();
    assert_eq!(entry(&env.list(), &inc)["status"], "verified");

    // status: the effective RPO is the newest snapshot of either kind; each kind's last.
    let r = env.run(&["status", "--json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let st = &st[0];
    assert_eq!(st["last_snapshot"]["id"], inc.as_str(), "{st}");
    assert_eq!(st["last_snapshot"]["kind"], "incremental");
    assert_eq!(st["last_full"]["id"], full.as_str());
    assert_eq!(st["last_incremental"]["id"], inc.as_str());
    assert!(st["rpo_seconds"].as_i64().unwrap() < 120, "{st}");
    // Shared objects are counted once: the full's object and the page set.
    assert_eq!(st["stored_bytes"].as_u64().unwrap(), fs_ + is, "{st}");
}

#[test]
fn a_chain_of_incrementals_follows_growth_shrinking_and_deletes() {
    let env = TestEnv::empty();
    make_rows(&env.db, 2000);
    env.write_config("incremental = \"*/15 * * * *\"\n");
    env.backup();
    let steps = [
        "UPDATE t SET v = 'a' WHERE id % 97 = 0;",
        // Growth: new pages past the base's end.
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 800)
         INSERT INTO t (v, pad) SELECT 'new', randomblob(1000) FROM c;",
        // Shrinking: pages past the new end are gone.
        "DELETE FROM t WHERE id > 1000; VACUUM;",
        // Growth again past the shrunk end: no stale page may come back.
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300)
         INSERT INTO t (v, pad) SELECT 'again', randomblob(1000) FROM c;",
        "",
    ];
    let mut ids = Vec::new();
    for (n, sql) in steps.iter().enumerate() {
        exec(&env.db, sql);
        let (id, stderr) = incremental(&env);
        assert!(
            !stderr.contains("full snapshot instead"),
            "step {n}: {stderr}"
        );
        ids.push((id, sha256_file(&env.db), util::dump(&env.db)));
    }
    let list = env.list();
    for (n, (id, sha, dump)) in ids.iter().enumerate() {
        assert_eq!(entry(&list, id)["kind"], "incremental", "step {n}");
        let out = restore(&env, id, &format!("step{n}.db"));
        assert_eq!(
            &sha256_file(&out),
            sha,
            "step {n}: not the live bytes of then"
        );
        assert_eq!(&util::dump(&out), dump, "step {n}");
    }
    // The chain names every part: the base, then each page set in order.
    let last: serde_json::Value = serde_json::from_slice(
        &fs::read(env.snapshot_dir(&ids[4].0).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(last["data"]["parts"].as_array().unwrap().len(), 6, "{last}");
    assert_eq!(last["data"]["parent"], ids[3].0.as_str());
}

#[test]
fn every_incremental_restores_after_other_manifests_are_deleted() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1500);
    let full = env.backup();
    exec(&env.db, "UPDATE t SET v = 'one' WHERE id < 20;");
    let (first, _) = incremental(&env);
    exec(&env.db, "UPDATE t SET v = 'two' WHERE id > 1480;");
    let (second, _) = incremental(&env);
    let sha = sha256_file(&env.db);
    // Its base's manifest and its parent's go (by hand, or by prune): the snapshot does not
    // depend on them, only on the objects its own manifest names.
    fs::remove_file(env.snapshot_dir(&full).join("manifest.json")).unwrap();
    fs::remove_file(env.snapshot_dir(&first).join("manifest.json")).unwrap();
    let list = env.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(entry(&list, &second)["status"], "unverified");
    let out = env.path("out.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(sha256_file(&out), sha);
    // The objects it needs are not orphans: a prune (which removes old orphans) keeps them.
    let r = env.run(&["prune", "--dry-run", "--json"]).ok();
    assert!(!r.stdout.contains(&full), "{}", r.stdout);
    // With no usable full left, the next incremental is a full, and says why.
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr.contains(
            "took a full snapshot instead of an incremental: there is no usable full snapshot"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(entry(&env.list(), r.stdout.trim())["kind"], "full");
}

#[test]
fn a_damaged_or_missing_part_falls_back_to_an_older_snapshot() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1500);
    let full = env.backup();
    exec(&env.db, "UPDATE t SET v = 'one' WHERE id < 20;");
    let (first, _) = incremental(&env);
    let first_sha = sha256_file(&env.db);
    exec(&env.db, "UPDATE t SET v = 'two' WHERE id > 1480;");
    let (second, _) = incremental(&env);

    // Bit rot in the newest page set: same size, so only the checksums can tell.
    let pages = env.snapshot_dir(&second).join("pages.gz");
    let mut bytes = fs::read(&pages).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&pages, &bytes).unwrap();
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(&first), "{r:?}");
    assert!(r.stderr.contains(&second), "the skip is said: {}", r.stderr);
    assert_eq!(sha256_file(&out), first_sha);
    let r = env.run(&["verify", "--all"]);
    assert_eq!(r.code, 1, "{r:?}");

    // The first page set missing: both incrementals that name it are unusable, the full is not.
    fs::remove_file(env.snapshot_dir(&first).join("pages.gz")).unwrap();
    let list = env.list();
    assert_eq!(entry(&list, &first)["status"], "failed");
    assert!(
        entry(&list, &second)["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("{first}/pages.gz")),
        "{list:?}"
    );
    let out2 = env.path("out2.db");
    let r = env
        .run(&["restore", "--latest", "--to", out2.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(&full), "{r:?}");
    assert_eq!(
        util::dump(&out2),
        util::dump(&restore(&env, &full, "full.db"))
    );
    // And the next incremental does not build on the broken chain.
    let (next, stderr) = incremental(&env);
    assert!(!stderr.contains("full snapshot instead"), "{stderr}");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(env.snapshot_dir(&next).join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["data"]["parent"], full.as_str(), "{m}");
    let out3 = restore(&env, &next, "next.db");
    assert_eq!(sha256_file(&out3), sha256_file(&env.db));
}

#[test]
fn a_full_is_taken_instead_when_the_page_size_changes_or_most_pages_differ() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1000);
    env.backup();
    // Page size change (a VACUUM applies it in rollback-journal mode).
    exec(&env.db, "PRAGMA page_size = 8192; VACUUM;");
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr
            .contains("page size changed from 4096 to 8192 bytes"),
        "{}",
        r.stderr
    );
    let id = r.stdout.trim().to_string();
    assert_eq!(entry(&env.list(), &id)["kind"], "full");
    // Most pages differ from the full: a full again, at the configured share.
    exec(
        &env.db,
        "UPDATE t SET pad = randomblob(1000) WHERE id % 4 != 0;",
    );
    let cfg = fs::read_to_string(&env.config).unwrap();
    fs::write(
        &env.config,
        cfg.replace(
            "[backup]\n",
            "[backup]\nincremental_max_changed = \"30%\"\n",
        ),
    )
    .unwrap();
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr.contains("more than 30% of the pages differ"),
        "{}",
        r.stderr
    );
    let id = r.stdout.trim().to_string();
    assert_eq!(entry(&env.list(), &id)["kind"], "full");
    let out = restore(&env, &id, "out.db");
    assert_eq!(util::dump(&out), util::dump(&env.db));
}

#[test]
fn a_lost_or_damaged_digest_cache_is_rebuilt_from_the_store() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1500);
    env.write_config("incremental = \"*/15 * * * *\"\n");
    env.backup();
    // One folder per store under the cache folder, then one per database.
    let stores: Vec<_> = fs::read_dir(env.path("staging/guardian.cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stores.len(), 1, "{stores:?}");
    let cache = stores[0].join("market");
    assert_eq!(
        fs::read_dir(&cache).unwrap().count(),
        1,
        "the full's digests"
    );
    let digests = fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    exec(&env.db, "UPDATE t SET v = 'one' WHERE id < 20;");
    incremental(&env);
    // Lost: everything.
    fs::remove_dir_all(&cache).unwrap();
    exec(&env.db, "UPDATE t SET v = 'two' WHERE id > 1400;");
    let (second, stderr) = incremental(&env);
    assert!(!stderr.contains("full snapshot instead"), "{stderr}");
    assert_eq!(
        sha256_file(&restore(&env, &second, "two.db")),
        sha256_file(&env.db)
    );
    // A FIFO planted as the base's digests never blocks the backup (which holds the lock).
    let base_digests = cache.join(digests.file_name().unwrap());
    if base_digests.exists() {
        fs::remove_file(&base_digests).unwrap();
    }
    nix::unistd::mkfifo(&base_digests, nix::sys::stat::Mode::S_IRWXU).unwrap();
    exec(&env.db, "UPDATE t SET v = 'fifo' WHERE id = 9;");
    let mut child = env
        .command()
        .args(["backup", "--incremental"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup hangs on a FIFO in the cache"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let second = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Damaged: a flipped byte in every cache file is noticed (a SHA-256 trailer), not used.
    for e in fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let mut b = fs::read(&p).unwrap();
        b[40] ^= 0xff;
        fs::write(&p, b).unwrap();
    }
    exec(
        &env.db,
        "UPDATE t SET v = 'three' WHERE id BETWEEN 600 AND 620;",
    );
    let (third, stderr) = incremental(&env);
    assert!(!stderr.contains("full snapshot instead"), "{stderr}");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(env.snapshot_dir(&third).join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["data"]["parent"], second.as_str());
    // Only the changed pages: page 1 and the few holding rows 600..620 (not the whole database,
    // which a wrong cache would make it store).
    assert!(m["data"]["parts"][3]["pages"].as_u64().unwrap() < 10, "{m}");
    assert_eq!(
        sha256_file(&restore(&env, &third, "three.db")),
        sha256_file(&env.db)
    );
}

#[test]
fn incrementals_under_a_steady_writer_are_consistent() {
    let env = TestEnv::empty();
    make_bank(&env.db);
    // Consistency is the point here, not the changed-pages limit: under a loaded machine the
    // writer can change most pages of this small bank between snapshots.
    let cfg = fs::read_to_string(&env.config).unwrap();
    fs::write(
        &env.config,
        cfg.replace("[backup]\n", "[backup]\nincremental_max_changed = 100\n"),
    )
    .unwrap();
    env.backup();
    let ids: Vec<String> =
        during_bank_transfers(&env.db, || (0..4).map(|_| incremental(&env).0).collect());
    let list = env.list();
    for id in &ids {
        assert_eq!(entry(&list, id)["kind"], "incremental");
        let out = restore(&env, id, &format!("r-{id}.db"));
        assert_eq!(util::integrity(&out), "ok");
        assert_eq!(bank_total(&out), TOTAL, "snapshot {id} is torn");
    }
}

#[test]
fn prune_keeps_every_object_a_kept_snapshot_needs() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1500);
    // Incrementals proven by integrity_check, so that retention may delete what is older
    // (with the default quick_check it waits for a full or a drill to prove a newer one).
    env.write_config(
        "incremental_check = \"integrity\"\n[databases.retention]\nkeep_last = 2\nkeep_delete = \"0s\"\n",
    );
    let full = env.backup();
    let mut incs = Vec::new();
    for n in 0..3 {
        exec(
            &env.db,
            &format!("UPDATE t SET v = 'n{n}' WHERE id % 300 = {n};"),
        );
        incs.push(incremental(&env).0);
    }
    let sha = sha256_file(&env.db);
    env.run(&["prune"]).ok();
    let list = env.list();
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [incs[2].as_str(), incs[1].as_str()], "{list:?}");
    // The full's manifest is gone, its data object stays (both kept snapshots name it), and so
    // does the first incremental's page set.
    assert!(!env.snapshot_dir(&full).join("manifest.json").exists());
    assert!(env.snapshot_dir(&full).join("db.sqlite.gz").exists());
    assert!(env.snapshot_dir(&incs[0]).join("pages.gz").exists());
    assert!(!env.snapshot_dir(&incs[0]).join("manifest.json").exists());
    let out = env.path("out.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(sha256_file(&out), sha);
    // A new full, and the old chain expires: then its objects go too.
    let new_full = env.backup();
    exec(&env.db, "UPDATE t SET v = 'later' WHERE id = 5;");
    incremental(&env);
    env.run(&["prune"]).ok();
    for gone in [&full, &incs[0], &incs[1], &incs[2]] {
        let left: Vec<_> = fs::read_dir(env.snapshot_dir(gone))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "{gone}: the old chain's objects are deleted: {left:?}"
        );
    }
    assert!(env.snapshot_dir(&new_full).join("db.sqlite.gz").exists());
    env.run(&["verify", "--all"]).ok();
}

#[test]
fn an_incremental_of_a_damaged_database_is_refused_in_wal_and_rollback_mode() {
    for wal in [false, true] {
        let env = TestEnv::new();
        if wal {
            exec(&env.db, "PRAGMA journal_mode = WAL;");
        }
        let full = env.backup();
        let cfg = fs::read_to_string(&env.config).unwrap();
        fs::write(
            &env.config,
            cfg.replace(
                "[backup]\n",
                "[backup]\nincremental_check = \"integrity\"\n",
            ),
        )
        .unwrap();
        // Damage quick_check cannot see; integrity_check runs on the live database in the
        // incremental's own read transaction (alongside the page reads).
        crate::silent_damage::damage_index(&env);
        let r = env.run(&["backup", "--incremental"]);
        assert_eq!(r.code, 1, "wal={wal}: {r:?}");
        assert!(
            r.stderr.contains("PRAGMA integrity_check reported"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("no snapshot was published"),
            "{}",
            r.stderr
        );
        let list = env.list();
        assert_eq!(list.len(), 1, "wal={wal}: {list:?}");
        assert_eq!(list[0]["id"], full.as_str());
        let left: Vec<_> = fs::read_dir(env.store.join("market"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != &full && n != "last-backup.json")
            .collect();
        assert!(
            left.is_empty(),
            "wal={wal}: nothing of the refused snapshot stays: {left:?}"
        );
        // By default an incremental runs quick_check: the same damage passes (as it does for
        // a full with check = "quick"); the manifest records the check that ran, and a
        // restore of it runs integrity_check (it was not proven by one) and refuses it.
        fs::write(
            &env.config,
            cfg.replace("[backup]\n", "[backup]\nincremental_max_changed = 100\n"),
        )
        .unwrap();
        let (id, _) = incremental(&env);
        assert_eq!(entry(&env.list(), &id)["kind"], "incremental", "wal={wal}");
        assert_eq!(
            util::read_manifest(&env, &id)["check"]["kind"],
            "quick_check",
            "wal={wal}"
        );
        let out = env.path("restored.db");
        let r = env.run(&["restore", "--snapshot", &id, "--to", out.to_str().unwrap()]);
        assert_eq!(r.code, 1, "wal={wal}: {r:?}");
        assert!(r.stderr.contains("integrity_check"), "{}", r.stderr);
        assert!(
            !out.exists(),
            "wal={wal}: a refused restore wrote its target"
        );
    }
}

/// Full, a warm-up incremental, then one measured: it restores to the live bytes, costs at
/// most 4 PUTs in steady state, and a damaged page set in the bucket falls back.
fn incrementals_on_s3(target: &crate::s3_server::S3Target, puts: impl Fn() -> Option<usize>) {
    use crate::s3_cli::{run, s3_env};
    let prefix = crate::s3_server::unique_prefix("incr");
    let env = s3_env(target, &prefix);
    fs::remove_file(&env.db).unwrap();
    make_rows(&env.db, 1500);
    run(&env, target, &["backup"]).ok();
    exec(&env.db, "UPDATE t SET v = 'warm' WHERE id < 10;");
    let warm = run(&env, target, &["backup", "--incremental"]).ok();
    let warm = warm.stdout.trim().to_string();
    exec(&env.db, "UPDATE t SET v = 'measured' WHERE id > 1490;");
    let before = puts();
    let r = run(&env, target, &["backup", "--incremental"]).ok();
    let id = r.stdout.trim().to_string();
    assert!(!r.stderr.contains("full snapshot instead"), "{}", r.stderr);
    if let (Some(a), Some(b)) = (before, puts()) {
        // The page set, the manifest and the outcome record (last-backup.json).
        assert!(b - a <= 4, "{} PUTs for one incremental", b - a);
        eprintln!(
            "{}: {} PUT requests for one incremental in steady state",
            target.name,
            b - a
        );
    }
    let r = run(&env, target, &["list", "--json"]).ok();
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(entry(&list, &id)["kind"], "incremental", "{}", target.name);
    run(&env, target, &["restore", "--latest", "--to", "out.db"]).ok();
    assert_eq!(sha256_file(&env.path("out.db")), sha256_file(&env.db));
    run(&env, target, &["drill", "--snapshot", &id]).ok();

    // The measured one's page set damaged in the bucket: restore falls back to the warm-up.
    crate::s3_cli::damage(target, &format!("{prefix}/market/{id}/pages.gz"));
    let r = run(
        &env,
        target,
        &["restore", "--latest", "--to", "fallback.db"],
    )
    .ok();
    assert!(
        r.stdout.contains(&format!("snapshot {warm}")),
        "{}",
        r.stdout
    );
}

#[test]
fn incrementals_on_the_in_process_s3_server() {
    let server = crate::s3_server::S3Server::start();
    let puts = || {
        Some(
            server
                .requests()
                .iter()
                .filter(|r| r.method == "PUT" && r.path.contains("/t-incr-"))
                .count(),
        )
    };
    incrementals_on_s3(&server.target, puts);
}

#[test]
fn incrementals_on_the_external_s3_server() {
    if let Some(target) = crate::s3_server::external() {
        incrementals_on_s3(&target, || None);
    }
}

#[test]
fn encrypted_incrementals_hold_only_ciphertext_and_restore() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1200);
    let id = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    fs::write(
        env.path("age.key"),
        format!("{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    let enc = format!(
        "\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"age.key\"\n",
        id.to_public()
    );
    env.write_config(&enc);
    env.backup();
    exec(&env.db, "UPDATE t SET v = 'secret' WHERE id < 5;");
    let (inc, _) = incremental(&env);
    let stored = fs::read(env.snapshot_dir(&inc).join("pages.gz.age")).unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(
        sha256_file(&restore(&env, &inc, "out.db")),
        sha256_file(&env.db)
    );
    // Other recipients (a key rotation): a full, so that one identity restores every chain.
    let other = age::x25519::Identity::generate();
    let both = format!(
        "\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"age.key\"\n",
        other.to_public()
    );
    env.write_config(&both);
    exec(&env.db, "UPDATE t SET v = 'rotated' WHERE id = 8;");
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr.contains("encryption.recipients differ"),
        "{}",
        r.stderr
    );
    assert_eq!(entry(&env.list(), r.stdout.trim())["kind"], "full");
    env.write_config(&enc);
    // Encryption turned off: the next one is a full (an incremental never mixes the two).
    env.write_config("");
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr.contains("encryption was turned off"),
        "{}",
        r.stderr
    );
    assert_eq!(entry(&env.list(), r.stdout.trim())["kind"], "full");
}

#[test]
fn a_silently_damaged_base_makes_the_next_backup_a_full() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1500);
    env.write_config("incremental = \"*/15 * * * *\"\n");
    let full = env.backup();
    // Bit rot in the full's object after it was written (same size; the digest cache made
    // from the copy knows nothing of it): the first incremental reads the base back first.
    let object = env.snapshot_dir(&full).join("db.sqlite.gz");
    let len = fs::metadata(&object).unwrap().len();
    util::flip_byte(&object, len / 2);
    exec(&env.db, "UPDATE t SET v = 'one' WHERE id < 20;");
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr.contains(&format!(
            "the full snapshot {full} the new snapshot would build on is damaged"
        )),
        "{}",
        r.stderr
    );
    let id = r.stdout.trim().to_string();
    assert_eq!(entry(&env.list(), &id)["kind"], "full");
    // Each object is read back once per host: the next incrementals build on the new full.
    for n in 0..2 {
        exec(
            &env.db,
            &format!("UPDATE t SET v = 'n{n}' WHERE id = {};", 100 + n),
        );
        let (inc, stderr) = incremental(&env);
        assert!(!stderr.contains("full snapshot instead"), "{stderr}");
        assert_eq!(entry(&env.list(), &inc)["base"], id.as_str());
    }
}

#[test]
fn a_silently_damaged_parent_makes_the_next_backup_a_full_not_a_chain_of_bad_incrementals() {
    let env = TestEnv::empty();
    make_rows(&env.db, 1500);
    env.backup();
    exec(&env.db, "UPDATE t SET v = 'one' WHERE id < 20;");
    let (first, _) = incremental(&env);
    exec(&env.db, "UPDATE t SET v = 'two' WHERE id > 1480;");
    let (second, _) = incremental(&env);
    // Bit rot the listing cannot see (same size) in the first page set, which the second
    // names too: only reading it back tells, and verify names the object.
    util::flip_byte(&env.snapshot_dir(&first).join("pages.gz"), 100);
    assert_eq!(entry(&env.list(), &second)["status"], "unverified");
    let r = env.run(&["verify", "--all"]);
    assert_eq!(r.code, 1, "{r:?}");
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains(&format!(
            "market/{first}/pages.gz: stored object checksum mismatch"
        )),
        "{said}"
    );
    exec(&env.db, "UPDATE t SET v = 'three' WHERE id = 800;");
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr.contains(&format!(
            "the incremental {first} the new snapshot would build on is damaged"
        )),
        "{}",
        r.stderr
    );
    let id = r.stdout.trim().to_string();
    assert_eq!(entry(&env.list(), &id)["kind"], "full");
    // And the chain goes on from that full.
    exec(&env.db, "UPDATE t SET v = 'four' WHERE id = 700;");
    let (next, stderr) = incremental(&env);
    assert!(!stderr.contains("full snapshot instead"), "{stderr}");
    assert_eq!(entry(&env.list(), &next)["base"], id.as_str());
    assert_eq!(
        sha256_file(&restore(&env, &next, "n.db")),
        sha256_file(&env.db)
    );
}

#[test]
fn an_unwritable_digest_cache_gives_a_full_with_the_fix_not_a_failed_backup() {
    let env = TestEnv::empty();
    make_rows(&env.db, 500);
    fs::write(env.path("not-a-folder"), "x").unwrap();
    let cfg = fs::read_to_string(&env.config).unwrap();
    fs::write(
        &env.config,
        cfg.replace(
            "[backup]\n",
            "[backup]\ncache_dir = \"not-a-folder/cache\"\n",
        ),
    )
    .unwrap();
    env.backup();
    exec(&env.db, "UPDATE t SET v = 'x' WHERE id = 3;");
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        r.stderr.contains("page digest cache cannot be written")
            && r.stderr.contains("backup.cache_dir"),
        "{}",
        r.stderr
    );
    assert_eq!(entry(&env.list(), r.stdout.trim())["kind"], "full");
}
