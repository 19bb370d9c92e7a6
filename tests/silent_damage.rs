//! Damage `quick_check` cannot see (an index out of step with its table): the default backup
//! check refuses it; with `backup.check = "quick"` retention never deletes the snapshots from
//! before it until a newer snapshot passed `integrity_check`; and `restore --check` restores a
//! snapshot with a broken index when nothing better exists.

use crate::util::{self, TestEnv};

/// Make `env.db` a database whose index `ia` claims to index column `b` while its entries are
/// those of column `a`: `quick_check` passes, `integrity_check` does not (the repro).
pub(crate) fn damage_index(env: &TestEnv) {
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.execute_batch(
        "DROP TABLE IF EXISTS t;
         CREATE TABLE t(id INTEGER PRIMARY KEY, a, b);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
           INSERT INTO t SELECT i, i, -i FROM n;
         CREATE INDEX ia ON t(a);
         PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX ia ON t(b)' WHERE name = 'ia';
         PRAGMA writable_schema = OFF;",
    )
    .unwrap();
    drop(c);
    let c = rusqlite::Connection::open(&env.db).unwrap();
    let quick: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(quick, "ok", "the damage must be invisible to quick_check");
    assert_ne!(util::integrity(&env.db), "ok");
}

fn ids(env: &TestEnv) -> Vec<String> {
    let mut v: Vec<String> = env
        .list()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn the_default_backup_check_refuses_an_index_out_of_step_with_its_table() {
    let env = TestEnv::new();
    let good = env.backup();
    assert_eq!(
        util::read_manifest(&env, &good)["check"]["kind"],
        "integrity_check"
    );
    damage_index(&env);
    let r = env.run(&["backup"]).expect_code(1);
    assert!(r.stderr.contains("integrity_check"), "{}", r.stderr);
    assert_eq!(ids(&env), vec![good]);
}

#[test]
fn retention_keeps_the_snapshots_before_silent_damage_until_a_newer_one_is_proven() {
    let env = TestEnv::new();
    env.write_config("check = \"quick\"\n[databases.retention]\nkeep_last = 2\n");
    let good = env.backup();
    assert_eq!(
        util::read_manifest(&env, &good)["check"]["kind"],
        "quick_check"
    );
    damage_index(&env);
    // Three rounds of backup + prune, as a cron job would do.
    let mut prunes = String::new();
    for _ in 0..3 {
        env.backup();
        prunes.push_str(&env.run(&["prune"]).ok().stdout);
    }
    assert!(prunes.contains("kept for want of proof"), "{prunes}");
    // status says so too (a warning: nothing is lost, but the store grows until a drill).
    let st = env.run(&["status", "--json"]);
    assert!(st.stdout.contains("retention: "), "{}", st.stdout);
    assert!(
        ids(&env).contains(&good),
        "the last good snapshot was deleted"
    );
    // restore --latest skips the three damaged ones and restores the good one.
    let to = env.path("restored.db");
    let r = env
        .run(&["restore", "--latest", "--to", to.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains(&format!("snapshot {good}")),
        "{}",
        r.stdout
    );
    assert_eq!(util::integrity(&to), "ok");
    // That restore proved the good one; still, nothing newer is proven: nothing is deleted.
    env.run(&["prune"]).ok();
    assert!(ids(&env).contains(&good));
    assert_eq!(ids(&env).len(), 4);
}

#[test]
fn with_no_good_snapshot_restore_says_how_to_restore_one_anyway() {
    let env = TestEnv::new();
    env.write_config("check = \"quick\"\n");
    damage_index(&env);
    let a = env.backup();
    let b = env.backup();
    let to = env.path("restored.db");
    let r = env
        .run(&["restore", "--latest", "--to", to.to_str().unwrap()])
        .expect_code(1);
    let line = r.error_line();
    assert!(line.contains(&a) && line.contains(&b), "{line}");
    assert!(line.contains("integrity_check"), "{line}");
    let cmd = format!(
        "guardian restore --db market --snapshot {b} --check quick --to {}",
        to.display()
    );
    assert!(line.contains(&cmd), "{line}");
    assert!(!to.exists(), "nothing is written when no snapshot passes");
    // The printed command works: a database with a broken index beats none.
    let args: Vec<&str> = cmd.split(' ').skip(1).collect();
    let r = env.run(&args).ok();
    assert!(r.stdout.contains("PRAGMA quick_check"), "{}", r.stdout);
    assert_eq!(util::count(&to, "t"), 2000);
    // --check none skips SQLite's check, never the SHA-256 ones.
    util::flip_byte(&env.snapshot_dir(&a).join("db.sqlite.gz"), 200);
    let r = env
        .run(&[
            "restore",
            "--snapshot",
            &a,
            "--check",
            "none",
            "--to",
            env.path("x.db").to_str().unwrap(),
        ])
        .expect_code(1);
    assert!(
        r.stderr.contains("checksum") || r.stderr.contains("damaged"),
        "{}",
        r.stderr
    );
    assert!(!env.path("x.db").exists());
}

#[test]
fn a_restore_that_passed_integrity_check_is_recorded_as_proof() {
    let env = TestEnv::new();
    env.write_config("check = \"quick\"\n");
    let id = env.backup();
    let entry = |env: &TestEnv| {
        env.list()
            .into_iter()
            .find(|s| s["id"] == id.as_str())
            .unwrap()
    };
    assert!(entry(&env)["integrity_proof"].is_null());
    let to = env.path("restored.db");
    env.run(&["restore", "--latest", "--to", to.to_str().unwrap()])
        .ok();
    let proof = entry(&env)["integrity_proof"].as_str().unwrap().to_string();
    assert!(proof.starts_with("restore at"), "{proof}");
}

/// When `restore --latest` passes over newer snapshots whose only fault is the SQLite check
/// (their checksums match) to restore an older good one, it says so and prints the command that
/// restores the newest of them anyway: it holds data the older one lacks.
#[test]
fn restore_past_newer_snapshots_with_a_broken_index_says_how_to_get_the_newest() {
    let env = TestEnv::new();
    env.write_config("check = \"quick\"\n");
    let good = env.backup();
    damage_index(&env);
    let damaged = env.backup();
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains(&format!("skipped {damaged}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("snapshot {good}")),
        "{}",
        r.stdout
    );
    let cmd = format!(
        "guardian restore --db market --snapshot {damaged} --check quick --to {}",
        out.display()
    );
    let note = r
        .stdout
        .lines()
        .find(|l| l.contains("note:"))
        .unwrap_or_else(|| panic!("no note:\n{}", r.stdout));
    assert!(note.contains(&cmd), "{note}");
    // The command works as printed, and keeps the file it replaces.
    let args: Vec<&str> = cmd.split(' ').skip(1).collect();
    let again = env.run(&args).ok();
    assert!(
        again.stdout.contains("previous file kept at"),
        "{}",
        again.stdout
    );
    assert_eq!(util::count(&out, "t"), 2000);
}

/// Point the first leaf of `db`'s freelist at a page of table `t` (the root of index `ia`):
/// that page is then used twice and the old leaf never. Only the check of the whole file sees
/// it (a check of one table's trees cannot know which pages the others use).
fn damage_freelist(db: &std::path::Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA auto_vacuum = NONE;
         CREATE TABLE spare(x);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
           INSERT INTO spare SELECT randomblob(1000) FROM n;
         DELETE FROM spare;",
    )
    .unwrap();
    let page_size: u32 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let victim: u32 = c
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'ia'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(c);
    let mut bytes = std::fs::read(db).unwrap();
    let trunk = u32::from_be_bytes(bytes[32..36].try_into().unwrap());
    assert!(trunk > 0, "the database has a freelist");
    let at = (u64::from(trunk) - 1) * u64::from(page_size) + 8; // the trunk's first leaf entry
    let at = usize::try_from(at).unwrap();
    bytes[at..at + 4].copy_from_slice(&victim.to_be_bytes());
    std::fs::write(db, bytes).unwrap();
}

/// `PRAGMA integrity_check` of the whole file, every line of it (SQLite's own verdict).
fn whole_check(db: &std::path::Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut stmt = c.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("\n")
}

#[test]
fn the_integrity_check_split_over_the_cores_finds_a_broken_index_and_a_broken_freelist() {
    // Each damage alone, then both together: the backup check (integrity_check, split per
    // table on a machine with two cores or more) refuses the copy and names what SQLite's
    // whole check names.
    for (index, freelist) in [(true, false), (false, true), (true, true)] {
        let env = TestEnv::new();
        if index {
            damage_index(&env);
        } else {
            let c = rusqlite::Connection::open(&env.db).unwrap();
            c.execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b); CREATE INDEX ia ON t(a);
                 INSERT INTO t VALUES (1, 1, 1);",
            )
            .unwrap();
        }
        if freelist {
            damage_freelist(&env.db);
        }
        let whole = whole_check(&env.db);
        let index_problem = "missing from index ia";
        let page_problem = "2nd reference to page";
        assert_eq!(whole.contains(index_problem), index, "{whole}");
        assert_eq!(whole.contains(page_problem), freelist, "{whole}");
        let r = env.run(&["backup"]).expect_code(1);
        assert!(r.stderr.contains("integrity_check"), "{}", r.stderr);
        assert_eq!(r.stderr.contains(index_problem), index, "{}", r.stderr);
        assert_eq!(r.stderr.contains(page_problem), freelist, "{}", r.stderr);
    }
}
