//! What `status`, `list` and `restore --latest` believe about the store: a failed backup is
//! unhealthy until a later one succeeds; a newest manifest that cannot be read is unhealthy; a
//! snapshot dated in the future is flagged and never picked by `--latest`; a drill verdict
//! counts only when its record parses and names its snapshot and data.

use crate::util::{self, TestEnv};

/// `status --json` for the one database, and the exit code.
fn status(env: &TestEnv) -> (i32, serde_json::Value) {
    let r = env.run(&["status", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r.code, v[0].clone())
}

fn problems(s: &serde_json::Value) -> String {
    s["problems"].to_string()
}

#[test]
fn status_is_unhealthy_after_a_failed_backup_until_one_succeeds() {
    let env = TestEnv::new();
    env.backup();
    assert_eq!(status(&env).0, 0);

    // Missing source: exit 2.
    std::fs::rename(&env.db, env.path("away.db")).unwrap();
    env.run(&["backup"]).expect_code(2);
    let (code, s) = status(&env);
    assert_eq!(code, 1, "{s:#}");
    assert!(problems(&s).contains("last backup failed at"), "{s:#}");
    assert_eq!(s["last_backup_attempt"]["ok"], false, "{s:#}");
    assert_eq!(s["last_backup_attempt"]["exit_code"], 2, "{s:#}");
    let text = env.run(&["status"]).expect_code(1);
    assert!(text.stdout.contains("UNHEALTHY"), "{}", text.stdout);

    // Damaged source: exit 1.
    std::fs::copy(util::fixture("corrupt.sqlite"), &env.db).unwrap();
    env.run(&["backup"]).expect_code(1);
    let (code, s) = status(&env);
    assert_eq!(code, 1, "{s:#}");
    assert_eq!(s["last_backup_attempt"]["exit_code"], 1, "{s:#}");
    assert!(problems(&s).contains("last backup failed at"), "{s:#}");
    assert_eq!(
        s["orphans"], 0,
        "a refused copy leaves no data object: {s:#}"
    );

    // A good backup clears it.
    std::fs::rename(env.path("away.db"), &env.db).unwrap();
    env.backup();
    let (code, s) = status(&env);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["last_backup_attempt"]["ok"], true, "{s:#}");
}

#[test]
fn a_backup_that_cannot_reach_the_store_is_recorded_locally_and_seen_once_it_is_back() {
    let env = TestEnv::new();
    env.backup();
    // The store is gone (a file where its folder was): the backup fails, exit 2.
    std::fs::rename(&env.store, env.path("store.away")).unwrap();
    std::fs::write(&env.store, "not a folder").unwrap();
    env.run(&["backup"]).expect_code(2);
    std::fs::remove_file(&env.store).unwrap();
    std::fs::rename(env.path("store.away"), &env.store).unwrap();
    let (code, s) = status(&env);
    assert_eq!(code, 1, "{s:#}");
    assert!(problems(&s).contains("last backup failed at"), "{s:#}");
}

#[test]
fn an_unreadable_newest_manifest_makes_status_unhealthy() {
    for damage in ["not json", "format_version"] {
        let env = TestEnv::new();
        let newest = env.backup();
        util::plant_snapshot(&env, &newest, "2026-01-01T03:00:00Z");
        assert_eq!(status(&env).0, 0);
        let path = env.snapshot_dir(&newest).join("manifest.json");
        if damage == "not json" {
            std::fs::write(&path, "{ this is not json").unwrap();
        } else {
            let mut m = util::read_manifest(&env, &newest);
            m["format_version"] = 99.into();
            util::write_manifest(&env, &newest, &m);
        }
        let (code, s) = status(&env);
        assert_eq!(code, 1, "{damage}: {s:#}");
        assert!(problems(&s).contains(&newest), "{damage}: {s:#}");
    }
}

#[test]
fn a_snapshot_dated_in_the_future_is_flagged_and_never_picked_by_latest() {
    let env = TestEnv::new();
    let real = env.backup();
    let future = util::plant_snapshot(&env, &real, "2099-01-01T00:00:00Z");

    let (code, s) = status(&env);
    assert_eq!(code, 1, "{s:#}");
    assert!(problems(&s).contains("clock skew"), "{s:#}");
    assert_eq!(s["last_snapshot"]["id"], real.as_str(), "{s:#}");

    let list = env.list();
    let f = list.iter().find(|v| v["id"] == future.as_str()).unwrap();
    assert_eq!(f["future"], true, "{f:#}");
    let text = env.run(&["list"]).ok();
    assert!(
        text.stdout.contains("DATED IN THE FUTURE"),
        "{}",
        text.stdout
    );

    let to = env.path("restored.db");
    let r = env
        .run(&["restore", "--latest", "--to", to.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains(&format!("snapshot {real}")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("in the future ago"), "{}", r.stdout);
    let r = env
        .run(&[
            "restore",
            "--before",
            "2100-01-01T00:00:00Z",
            "--to",
            env.path("b.db").to_str().unwrap(),
        ])
        .ok();
    assert!(
        r.stdout.contains(&format!("snapshot {real}")),
        "{}",
        r.stdout
    );

    // Named, it is restored, and its age reads as such.
    let r = env
        .run(&[
            "restore",
            "--snapshot",
            &future,
            "--to",
            env.path("f.db").to_str().unwrap(),
        ])
        .ok();
    assert!(r.stdout.contains("in the future)"), "{}", r.stdout);
    assert!(!r.stdout.contains("in the future ago"), "{}", r.stdout);
}

#[test]
fn a_drill_verdict_counts_only_when_its_record_names_the_snapshot_and_its_data() {
    let env = TestEnv::new();
    let a = env.backup();
    let b = env.backup();
    // A file named like a passing verdict, with junk in it.
    std::fs::write(
        env.snapshot_dir(&b).join("drill-20990101T000000Z-ok.json"),
        "junk\n",
    )
    .unwrap();
    assert_eq!(util::status_of(&env, &b), "unverified");
    let list = env.list();
    let entry = list.iter().find(|v| v["id"] == b.as_str()).unwrap();
    assert!(
        entry["ignored_records"]
            .to_string()
            .contains("not a guardian record"),
        "{entry:#}"
    );
    let (_, s) = status(&env);
    assert!(
        s["warnings"].to_string().contains("ignored record"),
        "{s:#}"
    );

    // A real verdict of another snapshot, copied over: it names the other one.
    env.run(&["drill", "--snapshot", &a]).ok();
    let record = std::fs::read_dir(env.snapshot_dir(&a))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("drill-"))
        .unwrap();
    std::fs::copy(record.path(), env.snapshot_dir(&b).join(record.file_name())).unwrap();
    assert_eq!(util::status_of(&env, &a), "verified");
    assert_eq!(util::status_of(&env, &b), "unverified");

    // A real verdict still counts.
    env.run(&["drill", "--snapshot", &b]).ok();
    assert_eq!(util::status_of(&env, &b), "verified");
}
