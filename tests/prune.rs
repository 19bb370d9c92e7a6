//! `guardian prune` through the real binary: a dry run changes nothing and explains every
//! verdict; a real run deletes exactly that; orphans go only when over a day old; no policy,
//! no deletion.

use crate::util::{self, TestEnv};

/// A store with one real snapshot and planted ones on 10 consecutive days (03:00 UTC).
fn history(env: &TestEnv) -> (String, Vec<String>) {
    let real = env.backup();
    let mut planted = Vec::new();
    for day in 10..20 {
        planted.push(util::plant_snapshot(
            env,
            &real,
            &format!("2026-10-{day}T03:00:00Z"),
        ));
    }
    (real, planted)
}

#[test]
fn prune_dry_run_changes_nothing_and_real_run_deletes_what_it_said() {
    let env = TestEnv::new();
    env.write_config("[databases.retention]\nkeep_last = 2\ndaily = 4\nkeep_delete = \"0s\"\n");
    let (real, planted) = history(&env);
    assert_eq!(env.list().len(), 11);

    let dry = env.run(&["prune", "--dry-run"]).ok();
    assert!(dry.stdout.contains("(dry run)"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("would delete 7 snapshot(s)"),
        "{}",
        dry.stdout
    );
    // Every snapshot gets a line saying why it stays or goes.
    assert!(
        dry.stdout
            .lines()
            .any(|l| l.contains(&real) && l.contains("keep") && l.contains("last 1")),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .lines()
            .any(|l| l.contains(&planted[9]) && l.contains("last 2")),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.lines().any(|l| l.contains(&planted[0])
            && l.contains("would delete")
            && l.contains("no rule keeps it")),
        "{}",
        dry.stdout
    );
    assert_eq!(env.list().len(), 11, "a dry run deleted something");

    let real_run = env.run(&["prune"]).ok();
    assert!(
        real_run.stdout.contains("deleted 7 snapshot(s)"),
        "{}",
        real_run.stdout
    );
    let left: Vec<String> = env
        .list()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    // keep_last 2 = the real one and Oct 19; daily 4 = today, Oct 19, 18, 17.
    let mut expected = vec![
        real.clone(),
        planted[9].clone(),
        planted[8].clone(),
        planted[7].clone(),
    ];
    expected.sort();
    let mut got = left.clone();
    got.sort();
    assert_eq!(got, expected);
    // Deleted snapshots leave no folder behind.
    assert!(!env.snapshot_dir(&planted[0]).exists());
    assert!(
        util::leftovers(&env).is_empty(),
        "{:?}",
        util::leftovers(&env)
    );
    // A second prune has nothing to do.
    assert!(env
        .run(&["prune"])
        .ok()
        .stdout
        .contains("deleted 0 snapshot(s)"));
}

#[test]
fn prune_without_a_policy_deletes_nothing() {
    let env = TestEnv::new();
    let (_, _) = history(&env);
    let r = env.run(&["prune"]).ok();
    assert!(
        r.stdout.contains("no [databases.retention] table"),
        "{}",
        r.stdout
    );
    assert_eq!(env.list().len(), 11);
}

#[test]
fn prune_keeps_everything_when_the_newest_snapshot_failed() {
    let env = TestEnv::new();
    env.write_config("[databases.retention]\nkeep_last = 1\n");
    let (real, _) = history(&env);
    util::flip_byte(&env.snapshot_dir(&real).join("db.sqlite.gz"), 500);
    env.run(&["drill"]).expect_code(1);
    let r = env.run(&["prune"]).ok();
    assert!(
        r.stdout.contains("is failed; nothing is deleted"),
        "{}",
        r.stdout
    );
    assert_eq!(env.list().len(), 11);
}

#[test]
fn prune_removes_orphans_only_when_over_a_day_old() {
    let env = TestEnv::new();
    env.write_config("[databases.retention]\nkeep_last = 5\n");
    let real = env.backup();
    // An interrupted backup from last month (data, no manifest) and one from a minute ago.
    let old = util::plant_old_orphan(&env, &real);
    let young = util::plant_snapshot(&env, &real, &chrono::Utc::now().to_rfc3339());
    std::fs::remove_file(env.snapshot_dir(&young).join("manifest.json")).unwrap();

    let dry = env.run(&["prune", "--dry-run"]).ok();
    assert_line(&dry, &old, "would delete");
    assert_line(&dry, &young, "keep orphan");
    env.run(&["prune"]).ok();
    assert!(!env.snapshot_dir(&old).exists());
    assert!(env.snapshot_dir(&young).exists());
    assert_eq!(env.list().len(), 1);
}

#[test]
fn an_all_zero_policy_is_a_config_error() {
    let env = TestEnv::new();
    env.write_config("[databases.retention]\nkeep_last = 0\n");
    let r = env.run(&["prune"]).expect_code(2);
    let lines = r.error_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("databases[0].retention") && lines[0].contains("keep nothing"),
        "{}",
        lines[0]
    );
}

#[test]
fn prune_removes_old_orphans_without_a_policy_too() {
    let env = TestEnv::new();
    let real = env.backup();
    let old = util::plant_old_orphan(&env, &real);
    let dry = env.run(&["prune", "--dry-run"]).ok();
    assert_line(&dry, &old, "would delete");
    env.run(&["prune"]).ok();
    assert!(!env.snapshot_dir(&old).exists());
    assert_eq!(env.list().len(), 1, "the snapshot itself is kept");
}

/// Rewrite the tombstone of `id` as if prune had marked it `hours` ago.
fn age_tombstone(env: &TestEnv, id: &str, hours: i64) {
    let path = env.snapshot_dir(id).join("tombstone.json");
    let mut t: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let then = chrono::Utc::now() - chrono::Duration::hours(hours);
    t["marked_at"] = then.to_rfc3339().into();
    std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(then.into())
        .unwrap();
}

#[test]
fn deletion_is_two_phase_mark_then_delete_after_keep_delete() {
    let env = TestEnv::new();
    env.write_config("[databases.retention]\nkeep_last = 1\n");
    let old = env.backup();
    let new = env.backup();

    let dry = env.run(&["prune", "--dry-run"]).ok();
    assert_line(&dry, &old, "would mark");
    assert!(!env.snapshot_dir(&old).join("tombstone.json").exists());

    // First prune: marked, not deleted; listed with the mark, still restorable by name.
    let r = env.run(&["prune"]).ok();
    assert_line(&r, &old, "marked");
    assert!(env.snapshot_dir(&old).join("tombstone.json").exists());
    let listed = env.list();
    let o = listed.iter().find(|s| s["id"] == old.as_str()).unwrap();
    assert!(o["marked_at"].is_string(), "{o:#}");
    assert!(env
        .run(&["list"])
        .ok()
        .stdout
        .contains("marked for deletion"));
    // A second prune within keep_delete still only waits.
    env.run(&["prune"]).ok();
    assert!(env.snapshot_dir(&old).exists());
    // restore --latest still takes the newest.
    let to = env.path("r.db");
    let r = env
        .run(&["restore", "--latest", "--to", to.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(&new), "{}", r.stdout);

    // Once marked for longer than keep_delete (24 h by default): deleted.
    age_tombstone(&env, &old, 25);
    let dry = env.run(&["prune", "--dry-run"]).ok();
    assert_line(&dry, &old, "would delete");
    env.run(&["prune"]).ok();
    assert!(!env.snapshot_dir(&old).exists());
    assert_eq!(env.list().len(), 1);
}

#[test]
fn a_marked_snapshot_needed_again_is_unmarked() {
    let env = TestEnv::new();
    env.write_config("[databases.retention]\nkeep_last = 1\n");
    let a = env.backup();
    let b = env.backup();
    env.run(&["prune"]).ok();
    assert!(env.snapshot_dir(&a).join("tombstone.json").exists());
    // Restored by name: needed, so un-marked.
    let to = env.path("r.db");
    env.run(&["restore", "--snapshot", &a, "--to", to.to_str().unwrap()])
        .ok();
    assert!(!env.snapshot_dir(&a).join("tombstone.json").exists());

    // Kept by the policy again (keep_last raised): un-marked by the next prune.
    env.run(&["prune"]).ok();
    age_tombstone(&env, &a, 25);
    env.write_config("[databases.retention]\nkeep_last = 2\n");
    let r = env.run(&["prune"]).ok();
    assert_line(&r, &a, "unmarked");
    assert!(!env.snapshot_dir(&a).join("tombstone.json").exists());
    assert!(env.snapshot_dir(&a).exists() && env.snapshot_dir(&b).exists());
}

/// Assert that a line of `r`'s output names `id` and says `verb` (e.g. "would delete").
#[track_caller]
fn assert_line(r: &util::Run, id: &str, verb: &str) {
    assert!(
        r.stdout.lines().any(|l| l.contains(id) && l.contains(verb)),
        "no line says {verb:?} of {id}:\n{}",
        r.stdout
    );
}
