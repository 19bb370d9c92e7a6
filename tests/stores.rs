//! Several stores, the reading side, through the real binary: `list` shows which stores hold
//! each snapshot; `restore` (and `restore --table`, `diff`) falls back to another store's copy
//! when one is damaged or its store cannot be read, and says which store it used; `--store`
//! reads only that one; `drill` records its verdict in every store whose copy holds the same
//! bytes and fails on one that does not; `prune` prunes every store on its own catalog.

use std::path::PathBuf;

use crate::s3_server::{unique_prefix, S3Server, S3Target};
use crate::util::{self, TestEnv};

/// `[[stores]]` near and far (local folders `near/` and `far/`) and one database, plus `extra`.
fn two_stores(env: &TestEnv, extra: &str) {
    let text = format!(
        "[[stores]]\nname = \"near\"\nkind = \"local\"\npath = \"near\"\n\n\
         [[stores]]\nname = \"far\"\nkind = \"local\"\npath = \"far\"\n\n\
         [backup]\nstaging_dir = \"staging\"\n\n\
         [[databases]]\nname = \"market\"\npath = \"market.db\"\n{extra}"
    );
    std::fs::write(&env.config, text).unwrap();
}

fn env_two_stores() -> TestEnv {
    let env = TestEnv::new();
    two_stores(&env, "");
    env
}

/// The folder of snapshot `id` in store folder `store`.
fn folder(env: &TestEnv, store: &str, id: &str) -> PathBuf {
    env.path(store).join("market").join(id)
}

/// Make store folder `store` unusable (a file where the folder should be); returns a guard
/// closure's worth of state: call [`mend`] to put it back.
fn break_store(env: &TestEnv, store: &str) {
    std::fs::rename(env.path(store), env.path(&format!("{store}.away"))).unwrap();
    std::fs::write(env.path(store), b"not a folder\n").unwrap();
}

fn mend(env: &TestEnv, store: &str) {
    std::fs::remove_file(env.path(store)).unwrap();
    std::fs::rename(env.path(&format!("{store}.away")), env.path(store)).unwrap();
}

fn add_rows(env: &TestEnv, n: i64) {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS extra (n INTEGER)")
        .unwrap();
    for i in 0..n {
        c.execute("INSERT INTO extra VALUES (?1)", [i]).unwrap();
    }
}

#[test]
fn list_shows_the_stores_of_each_snapshot_and_a_copy_one_store_missed() {
    let env = env_two_stores();
    let both = env.backup();
    // far is down during the second backup: it lands in near only (exit 2, id on stdout).
    add_rows(&env, 10);
    break_store(&env, "far");
    let r = env.run(&["backup"]).expect_code(2);
    let near_only = r.stdout.trim().to_string();
    assert!(r.stderr.contains("far"), "{}", r.stderr);
    mend(&env, "far");

    // A drill of the snapshot far lacks says so, and passes (sync's job, not a failed drill).
    let r = env.run(&["drill", "--snapshot", &near_only]).ok();
    assert!(
        r.stdout.contains("copy in store far: missing"),
        "{}",
        r.stdout
    );

    let text = env.run(&["list"]).ok();
    let header = text.stdout.lines().next().unwrap();
    assert!(header.contains("STORES"), "{}", text.stdout);
    let row = |id: &str| {
        text.stdout
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{}", text.stdout))
            .to_string()
    };
    assert!(
        row(&near_only).contains("near,far(missing)"),
        "{}",
        text.stdout
    );
    assert!(row(&both).contains("near,far "), "{}", text.stdout);

    let json = env.list();
    assert_eq!(json.len(), 2);
    let of = |id: &str| json.iter().find(|s| s["id"] == id).unwrap().clone();
    assert_eq!(
        of(&near_only)["stores"],
        serde_json::json!({"near": "present", "far": "missing"})
    );
    assert_eq!(
        of(&both)["stores"],
        serde_json::json!({"near": "present", "far": "present"})
    );

    // --store far: only what far holds.
    let far: Vec<serde_json::Value> =
        serde_json::from_str(&env.run(&["list", "--json", "--store", "far"]).ok().stdout).unwrap();
    assert_eq!(far.len(), 1);
    assert_eq!(far[0]["id"], both.as_str());
    assert_eq!(far[0]["stores"], serde_json::json!({"far": "present"}));
    let bad = env.run(&["list", "--store", "nowhere"]).expect_code(2);
    assert!(bad.error_line().contains("nowhere"), "{}", bad.stderr);

    // A store that cannot be listed: a warning naming it, the other store's snapshots still
    // listed, exit 2.
    break_store(&env, "near");
    let r = env.run(&["list"]).expect_code(2);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("store near") && l.contains("could not be listed")),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains(&both) && l.contains("near(unreadable),far")),
        "{}",
        r.stdout
    );
    let r = env.run(&["list", "--json"]).expect_code(2);
    let json: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["stores"]["near"], "unreadable");
}

#[test]
fn restore_falls_back_to_the_next_store_when_the_first_copy_is_damaged() {
    let env = env_two_stores();
    let id = env.backup();
    let want = util::dump(&env.db);
    util::flip_byte(&folder(&env, "near", &id).join("db.sqlite.gz"), 200);

    let out = env.path("restored.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(&format!("skipped the copy of {id} in store near:"))),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim().starts_with("from store far")),
        "{}",
        r.stdout
    );
    assert_eq!(util::dump(&out), want);

    // --store near reads near only: its one copy is bad, so there is nothing good (exit 1).
    let out2 = env.path("near-only.db");
    let r = env
        .run(&[
            "restore",
            "--latest",
            "--store",
            "near",
            "--to",
            out2.to_str().unwrap(),
        ])
        .expect_code(1);
    assert!(!out2.exists(), "{r:?}");
    // --store far reads far only, and says so.
    let r = env
        .run(&[
            "restore",
            "--latest",
            "--store",
            "far",
            "--to",
            out2.to_str().unwrap(),
        ])
        .ok();
    assert!(!r.stdout.contains("store near"), "{}", r.stdout);
    assert!(r.stdout.contains("from store far"), "{}", r.stdout);
    assert_eq!(util::dump(&out2), want);

    // A named snapshot falls back the same way.
    let out3 = env.path("named.db");
    let r = env
        .run(&["restore", "--snapshot", &id, "--to", out3.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("from store far"), "{}", r.stdout);
}

#[test]
fn restore_uses_the_second_store_when_the_first_cannot_be_read() {
    let env = env_two_stores();
    let id = env.backup();
    let want = util::dump(&env.db);
    break_store(&env, "near");
    // The live database is replaced, and the old one kept aside, as with one store.
    add_rows(&env, 5);
    let r = env.run(&["restore", "--latest"]).ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("skipped store near: it could not be read")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("from store far"), "{}", r.stdout);
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    assert!(r.stdout.contains("previous file kept at"), "{}", r.stdout);
    assert_eq!(util::dump(&env.db), want);

    // restore --table and diff pick the snapshot the same way.
    rusqlite::Connection::open(&env.db)
        .unwrap()
        .execute("DELETE FROM order_items", [])
        .unwrap();
    let r = env
        .run(&["restore", "--latest", "--table", "order_items"])
        .ok();
    assert!(r.stdout.contains("from store far"), "{}", r.stdout);
    assert_eq!(util::dump(&env.db), want);
    let r = env
        .run(&["diff", "--from", "latest", "--to", "live", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["from"]["snapshot"], id.as_str());
    assert!(
        v["from"]["read_as"].as_str().unwrap().contains("store far"),
        "{v}"
    );

    // Only near asked for: its error, exit 2.
    let r = env
        .run(&[
            "restore",
            "--latest",
            "--store",
            "near",
            "--to",
            env.path("x.db").to_str().unwrap(),
        ])
        .expect_code(2);
    assert!(!env.path("x.db").exists(), "{r:?}");
}

#[test]
fn table_restore_falls_back_to_the_next_store() {
    let env = env_two_stores();
    let id = env.backup();
    let before = util::count(&env.db, "order_items");
    util::flip_byte(&folder(&env, "near", &id).join("db.sqlite.gz"), 200);
    rusqlite::Connection::open(&env.db)
        .unwrap()
        .execute("DELETE FROM order_items", [])
        .unwrap();
    let r = env
        .run(&["restore", "--latest", "--table", "order_items"])
        .ok();
    assert!(
        r.stdout
            .contains(&format!("skipped the copy of {id} in store near:")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("from store far"), "{}", r.stdout);
    assert_eq!(util::count(&env.db, "order_items"), before);
}

#[test]
fn drill_records_its_verdict_in_every_store_holding_the_same_bytes() {
    let env = env_two_stores();
    let id = env.backup();
    let r = env.run(&["drill"]).ok();
    assert!(
        r.stdout.contains("copy in store far: same bytes"),
        "{}",
        r.stdout
    );
    for store in ["near", "far"] {
        let records: Vec<String> = std::fs::read_dir(folder(&env, store, &id))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("drill-") && n.ends_with("-ok.json"))
            .collect();
        assert_eq!(records.len(), 1, "{store}: {records:?}");
        let far_only: Vec<serde_json::Value> =
            serde_json::from_str(&env.run(&["list", "--json", "--store", store]).ok().stdout)
                .unwrap();
        assert_eq!(far_only[0]["status"], "verified", "{store}");
    }

    // Bit rot in far's copy: the next drill reads near, finds far's copy differs, fails (exit
    // 1), and records a failed verdict in far only.
    util::flip_byte(&folder(&env, "far", &id).join("db.sqlite.gz"), 300);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = env.run(&["drill", "--snapshot", &id]).expect_code(1);
    assert!(
        r.stdout.contains("copy in store far: DIFFERS"),
        "{}",
        r.stdout
    );
    let json = env.list();
    assert_eq!(json[0]["stores"]["near"], "present");
    assert_eq!(json[0]["stores"]["far"], "damaged");
    assert_eq!(json[0]["status"], "verified");
    let r = env
        .run(&["drill", "--snapshot", &id, "--json"])
        .expect_code(1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["store"], "near");
    assert_eq!(v[0]["copies"][0]["store"], "far");
    assert_eq!(v[0]["copies"][0]["state"], "differs");
    assert!(
        v[0]["copies"][0]["record"]
            .as_str()
            .is_some_and(|k| k.ends_with("-failed.json")),
        "{v}"
    );
    assert!(v[0]["copies"][0]["record_error"].is_null(), "{v}");
    // And restore passes over far's copy (near's is read).
    let out = env.path("r.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("from store near"), "{}", r.stdout);
}

#[test]
fn prune_prunes_every_store_on_its_own_catalog() {
    let mut env = env_two_stores();
    two_stores(
        &env,
        "[databases.retention]\nkeep_last = 2\nkeep_delete = \"0s\"\n",
    );
    let real = env.backup();
    // Three older snapshots in both stores.
    env.store = env.path("near");
    let mut planted = Vec::new();
    for day in 10..13 {
        let id = util::plant_snapshot(&env, &real, &format!("2026-10-{day}T03:00:00Z"));
        let (from, to) = (folder(&env, "near", &id), folder(&env, "far", &id));
        std::fs::create_dir_all(&to).unwrap();
        for f in ["db.sqlite.gz", "manifest.json"] {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
        planted.push(id);
    }
    assert_eq!(env.list().len(), 4);
    let r = env.run(&["prune"]).ok();
    for store in ["near", "far"] {
        assert!(
            r.stdout
                .contains(&format!("prune market in store {store}:")),
            "{}",
            r.stdout
        );
    }
    for store in ["near", "far"] {
        let ids: Vec<String> = std::fs::read_dir(env.path(store).join("market"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".json"))
            .collect();
        assert_eq!(ids.len(), 2, "{store}: {ids:?}");
        assert!(ids.contains(&real), "{store}: {ids:?}");
        assert!(ids.contains(&planted[2]), "{store}: {ids:?}");
    }
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&env.run(&["prune", "--json"]).ok().stdout).unwrap();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["store"], "near");
    assert_eq!(json[1]["store"], "far");

    // A store that fails does not stop the other, and fails the job.
    util::plant_snapshot(&env, &real, "2026-10-01T03:00:00Z");
    break_store(&env, "far");
    let r = env.run(&["prune"]).expect_code(2);
    assert!(
        r.stderr.lines().any(|l| l.contains("store far")),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("in store near"), "{}", r.stdout);
    assert!(r.stdout.contains("deleted 1 snapshot(s)"), "{}", r.stdout);
}

/// An S3 store first (its endpoint a closed port), a local one second.
fn s3_first(env: &TestEnv, target: &S3Target, prefix: &str) {
    let text = format!(
        "[[stores]]\nname = \"cloud\"\nkind = \"s3\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\nregion = \"{}\"\nendpoint = \"{}\"\nforce_path_style = true\ntimeout = \"2s\"\n\n\
         [[stores]]\nname = \"disk\"\nkind = \"local\"\npath = \"disk\"\n\n\
         [backup]\nstaging_dir = \"staging\"\n\n\
         [[databases]]\nname = \"market\"\npath = \"market.db\"\n",
        target.bucket, target.region, target.endpoint
    );
    std::fs::write(&env.config, text).unwrap();
}

#[test]
fn restore_from_local_when_the_s3_store_is_unreachable_and_no_secret_is_printed() {
    let server = S3Server::start();
    let prefix = unique_prefix("stores");
    let env = TestEnv::new();
    s3_first(&env, &server.target, &prefix);
    let run = |args: &[&str]| {
        let mut cmd = env.command();
        server.target.credentials_env(&mut cmd);
        util::run(cmd.args(args))
    };
    let r = run(&["backup"]).ok();
    let id = r.stdout.trim().to_string();
    let want = util::dump(&env.db);
    let mut outputs = vec![r];
    let listed = run(&["list"]).ok();
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.contains(&id) && l.contains("cloud,disk")),
        "{}",
        listed.stdout
    );
    outputs.push(listed);

    // The S3 endpoint now points at a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut down = server.target.clone();
    down.endpoint = format!("http://127.0.0.1:{port}");
    s3_first(&env, &down, &prefix);
    let out = env.path("restored.db");
    let r = run(&["restore", "--latest", "--to", out.to_str().unwrap()]).ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("skipped store cloud: it could not be read")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("from store disk"), "{}", r.stdout);
    assert_eq!(util::dump(&out), want);
    outputs.push(r);
    outputs.push(run(&["list"]).expect_code(2));
    outputs.push(run(&["drill"]));
    outputs.push(run(&["prune", "--dry-run"]));
    for o in &outputs {
        for text in [&o.stdout, &o.stderr] {
            assert!(
                !text.contains(&server.target.secret_key),
                "secret printed:\n{text}"
            );
        }
    }
}

/// S3 first, local second: S3's copy damaged behind guardian's back; restore reads the local
/// copy and says so; a drill finds S3's copy differs (exit 1) and records the verdicts.
fn damaged_s3_copy(target: &S3Target) {
    let prefix = unique_prefix("stores-dmg");
    let env = TestEnv::new();
    s3_first(&env, target, &prefix);
    let run = |args: &[&str]| {
        let mut cmd = env.command();
        target.credentials_env(&mut cmd);
        util::run(cmd.args(args))
    };
    let first = run(&["backup"]).ok();
    let id = first.stdout.trim().to_string();
    let want = util::dump(&env.db);
    let drilled = run(&["drill"]).ok();
    assert!(
        drilled.stdout.contains("copy in store disk: same bytes"),
        "{}",
        drilled.stdout
    );
    crate::s3_cli::damage(target, &format!("{prefix}/market/{id}/db.sqlite.gz"));

    let out = env.path("restored.db");
    let r = run(&["restore", "--latest", "--to", out.to_str().unwrap()]).ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(&format!("skipped the copy of {id} in store cloud:"))),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("from store disk"), "{}", r.stdout);
    assert_eq!(util::dump(&out), want);

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = run(&["drill", "--snapshot", &id]).expect_code(1);
    // The S3 copy was drilled first and failed; the local copy is intact and reported so.
    assert!(r.stdout.contains("FAILED"), "{}", r.stdout);
    assert!(
        r.stdout.contains("copy in store disk: intact"),
        "{}",
        r.stdout
    );
    let listed = run(&["list", "--json"]).ok();
    let v: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        v[0]["stores"],
        serde_json::json!({"cloud": "damaged", "disk": "present"})
    );
    assert_eq!(v[0]["status"], "verified");
    for o in [&first, &drilled, &r, &listed] {
        assert!(
            !o.stdout.contains(&target.secret_key) && !o.stderr.contains(&target.secret_key),
            "secret printed: {o:?}"
        );
    }
}

#[test]
fn a_damaged_copy_in_the_in_process_s3_store_falls_back_to_the_local_one() {
    let server = S3Server::start();
    damaged_s3_copy(&server.target);
}

#[test]
fn a_damaged_copy_in_the_external_s3_store_falls_back_to_the_local_one() {
    if let Some(target) = crate::s3_server::external() {
        damaged_s3_copy(&target);
    }
}

#[test]
fn a_restore_takes_back_the_deletion_mark_in_every_store() {
    let mut env = env_two_stores();
    two_stores(
        &env,
        "[databases.retention]\nkeep_last = 1\nkeep_delete = \"1d\"\n\n\
         [[databases]]\nname = \"shop\"\npath = \"shop.db\"\nstores = [\"near\"]\n",
    );
    let real = env
        .run(&["backup", "--db", "market"])
        .ok()
        .stdout
        .trim()
        .to_string();
    env.store = env.path("near");
    let old = util::plant_snapshot(&env, &real, "2026-10-10T03:00:00Z");
    let (from, to) = (folder(&env, "near", &old), folder(&env, "far", &old));
    std::fs::create_dir_all(&to).unwrap();
    for f in ["db.sqlite.gz", "manifest.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    env.run(&["prune", "--db", "market"]).ok();
    let marks = |store: &str| {
        std::fs::read_dir(folder(&env, store, &old))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("tombstone")
            })
            .count()
    };
    assert_eq!((marks("near"), marks("far")), (1, 1));
    let out = env.path("old.db");
    let r = env
        .run(&[
            "restore",
            "--db",
            "market",
            "--snapshot",
            &old,
            "--to",
            out.to_str().unwrap(),
        ])
        .ok();
    assert!(r.stdout.contains("from store near"), "{}", r.stdout);
    assert_eq!((marks("near"), marks("far")), (0, 0));
    // list --store with no --db: the databases that go to that store (shop does not).
    let far: Vec<serde_json::Value> =
        serde_json::from_str(&env.run(&["list", "--json", "--store", "far"]).ok().stdout).unwrap();
    assert_eq!(far.len(), 2);
    assert!(far.iter().all(|s| s["db"] == "market"), "{far:?}");
    let r = env
        .run(&["list", "--db", "shop", "--store", "far"])
        .expect_code(2);
    assert!(r.error_line().contains("far"), "{}", r.stderr);
}

#[test]
fn a_store_that_fails_mid_read_is_passed_over_by_restore_and_drill() {
    let server = S3Server::start();
    let prefix = unique_prefix("stores-cut");
    let env = TestEnv::new();
    s3_first(&env, &server.target, &prefix);
    let run = |args: &[&str]| {
        let mut cmd = env.command();
        server.target.credentials_env(&mut cmd);
        util::run(cmd.args(args))
    };
    let id = run(&["backup"]).ok().stdout.trim().to_string();
    let want = util::dump(&env.db);
    // Every download of a data object from S3 breaks half-way (the listing still works).
    server.faults.lock().unwrap().cut_gets = 1_000;
    let out = env.path("restored.db");
    let r = run(&["restore", "--latest", "--to", out.to_str().unwrap()]).ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(&format!("skipped the copy of {id} in store cloud:"))),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("from store disk"), "{}", r.stdout);
    assert_eq!(util::dump(&out), want);

    // Only the failing store: an operational error (exit 2), nothing written, never "damaged".
    let r = run(&[
        "restore",
        "--latest",
        "--store",
        "cloud",
        "--to",
        env.path("b.db").to_str().unwrap(),
    ])
    .expect_code(2);
    assert!(!r.error_line().contains("damaged"), "{}", r.stderr);
    assert!(!env.path("b.db").exists());

    // The drill drills the local copy, and says cloud's could not be read (exit 2).
    let r = run(&["drill", "--snapshot", &id]).expect_code(2);
    assert!(r.stdout.contains("PASSED"), "{}", r.stdout);
    assert!(r.stdout.contains("drilled from store disk"), "{}", r.stdout);
    assert!(
        r.stdout.contains("copy in store cloud: UNREADABLE"),
        "{}",
        r.stdout
    );
    server.faults.lock().unwrap().cut_gets = 0;
    // The catalog never took the store's failure for damage.
    let listed = run(&["list", "--json"]).ok();
    let v: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        v[0]["stores"],
        serde_json::json!({"cloud": "present", "disk": "present"})
    );
}
