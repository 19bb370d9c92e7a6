//! The store layout is readable without guardian: `scripts/rebuild.py` (Python standard library
//! only, docs/FORMAT.md) rebuilds fulls and incrementals from a local store folder, bit for bit
//! what `guardian restore` writes and what the manifest's `raw_sha256` proves, and refuses a
//! damaged page object without writing its output.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, TestEnv};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rebuild.py")
}

fn python3() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `python3 scripts/rebuild.py STORE market ID OUT`.
fn rebuild(env: &TestEnv, id: &str, out: &Path) -> util::Run {
    util::run(
        Command::new("python3")
            .arg(script())
            .arg(&env.store)
            .arg("market")
            .arg(id)
            .arg(out),
    )
}

fn sql(env: &TestEnv, statements: &str) {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.execute_batch(statements).unwrap();
}

/// `k` new rows of 1000 random bytes in `blobs`.
fn add_blobs(k: u32) -> String {
    format!(
        "INSERT INTO blobs(body) SELECT randomblob(1000) FROM
           (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {k})
            SELECT i FROM n);"
    )
}

/// `backup --incremental`, which must publish an incremental (not fall back to a full).
/// Backups follow each other within the second, so part ids of one second (which sort either
/// way) are covered too.
fn incremental(env: &TestEnv) -> String {
    let r = env.run(&["backup", "--incremental"]).ok();
    assert!(
        !r.stderr.contains("took a full snapshot instead"),
        "an incremental was expected:\n{}",
        r.stderr
    );
    let id = r.stdout.trim().to_string();
    let m = util::read_manifest(env, &id);
    assert_eq!(m["data"]["layout"], "pages", "{m}");
    id
}

fn page_count(env: &TestEnv) -> i64 {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
}

#[test]
fn rebuild_py_rebuilds_fulls_and_incrementals_as_restore_does() {
    if !python3() {
        util::skip("python3 is not installed: scripts/rebuild.py cannot be tested");
        return;
    }
    let env = TestEnv::new();
    // About 500 pages, so that each step below changes well under half of them.
    sql(
        &env,
        &format!(
            "CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB); {}",
            add_blobs(1800)
        ),
    );
    let full = env.backup();
    let pages_at_full = page_count(&env);

    let mut ids = vec![full.clone()];
    // The database grows.
    sql(&env, &add_blobs(250));
    ids.push(incremental(&env));
    assert!(page_count(&env) > pages_at_full);
    // A few scattered rows change.
    sql(
        &env,
        "UPDATE customers SET name = name || ' jr' WHERE id % 3 = 0;
         UPDATE blobs SET body = randomblob(1000) WHERE id % 97 = 0;",
    );
    ids.push(incremental(&env));
    // VACUUM shrinks it below the full's size.
    let before_vacuum = page_count(&env);
    sql(&env, "DELETE FROM blobs WHERE id > 1400; VACUUM;");
    ids.push(incremental(&env));
    assert!(page_count(&env) < before_vacuum && page_count(&env) < pages_at_full);
    // It grows again past the shrink: the pages past it come back from page sets.
    sql(
        &env,
        &format!(
            "{} UPDATE orders SET status = 'shipped' WHERE id % 5 = 0;",
            add_blobs(150)
        ),
    );
    ids.push(incremental(&env));
    let newest = ids.last().unwrap().clone();
    let chain = util::read_manifest(&env, &newest);
    assert_eq!(chain["data"]["base"], full.as_str());
    assert_eq!(
        chain["data"]["parts"].as_array().unwrap().len(),
        ids.len(),
        "the newest incremental names the base and every page set since: {chain}"
    );

    for id in &ids {
        let out = env.path(&format!("rebuilt-{id}.db"));
        let r = rebuild(&env, id, &out).ok();
        assert!(r.stdout.contains(id.as_str()), "{r:?}");
        let m = util::read_manifest(&env, id);
        assert_eq!(sha256_of(&out), m["raw_sha256"].as_str().unwrap(), "{id}");
        let restored = env.path(&format!("restored-{id}.db"));
        env.run(&[
            "restore",
            "--snapshot",
            id,
            "--to",
            restored.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(sha256_of(&out), sha256_of(&restored), "{id}");
        assert_eq!(util::integrity(&out), "ok");
    }
    // The newest is the live database as it is now.
    assert_eq!(
        util::dump_hash(&env.path(&format!("rebuilt-{newest}.db"))),
        util::dump_hash(&env.db)
    );

    // One damaged page object: the snapshots that name it are refused with one line, exit 1,
    // and no output file (nor a temp file) is left; the one before it still rebuilds.
    let damaged = &ids[2];
    let object = env.snapshot_dir(damaged).join("pages.gz");
    let len = std::fs::metadata(&object).unwrap().len();
    util::flip_byte(&object, len / 2);
    for id in [damaged, &newest] {
        let out = env.path(&format!("damaged-{id}.db"));
        let r = rebuild(&env, id, &out).expect_code(1);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error line: {r:?}");
        assert!(
            lines[0].starts_with("rebuild.py: error: ")
                && lines[0].contains(&format!("{damaged}/pages.gz")),
            "names the damaged object: {r:?}"
        );
        assert!(!out.exists(), "no output for a damaged snapshot");
    }
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".rebuild-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    let out = env.path("before-the-damage.db");
    rebuild(&env, &ids[1], &out).ok();
    assert_eq!(
        sha256_of(&out),
        sha256_of(&env.path(&format!("rebuilt-{}.db", ids[1])))
    );
    util::flip_byte(&object, len / 2); // undone: XOR twice

    // Independent: every snapshot is rebuilt from its own manifest and the objects it names;
    // the manifests of the base and the other incrementals are not needed.
    for id in &ids[..ids.len() - 1] {
        std::fs::remove_file(env.snapshot_dir(id).join("manifest.json")).unwrap();
    }
    let out = env.path("without-other-manifests.db");
    rebuild(&env, &newest, &out).ok();
    assert_eq!(
        sha256_of(&out),
        chain["raw_sha256"].as_str().unwrap(),
        "rebuilt with only its own manifest"
    );
}

#[test]
fn rebuild_py_reads_format_1_and_refuses_what_it_cannot_prove() {
    if !python3() {
        util::skip("python3 is not installed: scripts/rebuild.py cannot be tested");
        return;
    }
    let env = TestEnv::new();
    util::copy_dir(&util::fixture("v1-snapshot"), &env.store);
    let id = std::fs::read_dir(env.store.join("market"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let out = env.path("v1.db");
    rebuild(&env, &id, &out).ok();
    let m = util::read_manifest(&env, &id);
    assert_eq!(sha256_of(&out), m["raw_sha256"].as_str().unwrap());
    // An existing OUT_FILE is never replaced.
    let before = sha256_of(&env.db);
    let r = rebuild(&env, &id, &env.db).expect_code(2);
    assert!(r.stderr.contains("exists"), "{r:?}");
    assert_eq!(sha256_of(&env.db), before);
    // A manifest whose raw_sha256 is not the data's: exit 1, nothing written.
    let mut bad = m.clone();
    bad["raw_sha256"] = "0".repeat(64).into();
    util::write_manifest(&env, &id, &bad);
    let out = env.path("v1-bad.db");
    let r = rebuild(&env, &id, &out).expect_code(1);
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(!out.exists());
    // The object it names is missing: exit 1, one line naming it.
    util::write_manifest(&env, &id, &m);
    std::fs::remove_file(env.snapshot_dir(&id).join("db.sqlite.gz")).unwrap();
    let r = rebuild(&env, &id, &out).expect_code(1);
    assert!(
        r.stderr
            .trim()
            .ends_with("is missing (the manifest names it)")
            && r.stderr.contains("db.sqlite.gz"),
        "{r:?}"
    );
    assert!(!out.exists());
}

#[test]
fn rebuild_py_decrypts_an_encrypted_incremental_with_the_age_cli() {
    if !python3() {
        util::skip("python3 is not installed: scripts/rebuild.py cannot be tested");
        return;
    }
    let age_cli = Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !age_cli {
        util::skip("the age CLI is not installed: rebuild.py --identity cannot be tested");
        return;
    }
    let key = |path: &str| {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        std::fs::write(path, format!("{}\n", id.to_string().expose_secret())).unwrap();
        id.to_public().to_string()
    };
    let env = TestEnv::new();
    let public = key(env.path("age.key").to_str().unwrap());
    key(env.path("other.key").to_str().unwrap());
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{public}\"]\nidentity_file = \"age.key\"\n"
    ));
    let full = env.backup();
    sql(
        &env,
        "UPDATE customers SET name = name || ' sr' WHERE id % 4 = 0;",
    );
    let id = incremental(&env);
    assert!(env.snapshot_dir(&id).join("pages.gz.age").exists());
    let m = util::read_manifest(&env, &id);
    assert_eq!(m["data"]["parts"][0]["snapshot"], full.as_str());

    // Without --identity: exit 2, one line saying what to pass.
    let out = env.path("rebuilt.db");
    let r = rebuild(&env, &id, &out).expect_code(2);
    assert!(r.stderr.contains("--identity"), "{r:?}");
    // The wrong identity: exit 2, nothing written.
    let with = |identity: &str| {
        util::run(
            Command::new("python3")
                .arg(script())
                .arg("--identity")
                .arg(env.path(identity))
                .arg(&env.store)
                .arg("market")
                .arg(&id)
                .arg(&out),
        )
    };
    let r = with("other.key").expect_code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(!out.exists());
    // The right one: the database the manifest proves, as restore writes it.
    with("age.key").ok();
    assert_eq!(sha256_of(&out), m["raw_sha256"].as_str().unwrap());
    let restored = env.path("restored.db");
    env.run(&[
        "restore",
        "--snapshot",
        &id,
        "--to",
        restored.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(sha256_of(&out), sha256_of(&restored));
}
