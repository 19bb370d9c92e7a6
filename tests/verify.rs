//! `guardian verify`: a flipped byte or a truncation in the store is found without SQLite;
//! the newest snapshot by default, every one with --all.

use crate::util::{self, TestEnv};

#[test]
fn verify_detects_a_flipped_byte_and_reports_per_snapshot() {
    let env = TestEnv::new();
    let old = env.backup();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new = env.backup();
    let r = env.run(&["verify", "--all"]).ok();
    assert_eq!(
        r.stdout.lines().filter(|l| l.contains(" ok ")).count(),
        2,
        "{}",
        r.stdout
    );

    util::flip_byte(&env.snapshot_dir(&old).join("db.sqlite.gz"), 700);
    // The newest is fine, so the default (newest only) passes.
    let r = env.run(&["verify"]).ok();
    assert!(
        r.stdout.contains(&new) && !r.stdout.contains(&old),
        "{}",
        r.stdout
    );
    // --all finds the damage, names the snapshot, exits 1.
    let r = env.run(&["verify", "--all"]).expect_code(1);
    let bad = r.stdout.lines().find(|l| l.contains(&old)).unwrap();
    assert!(
        bad.contains("DAMAGED") && bad.contains("checksum mismatch"),
        "{bad}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains(&new) && l.contains(" ok ")),
        "{}",
        r.stdout
    );
    // verify reports and never writes: the snapshot is not marked.
    assert_eq!(util::status_of(&env, &old), "unverified");
}

#[test]
fn verify_json_reports_missing_and_truncated_data() {
    let env = TestEnv::new();
    let a = env.backup();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = env.backup();
    // Truncated to the right length is impossible to miss; same length, other bytes, too.
    let data = env.snapshot_dir(&b).join("db.sqlite.gz");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::write(&data, vec![0u8; len as usize]).unwrap();
    std::fs::remove_file(env.snapshot_dir(&a).join("db.sqlite.gz")).unwrap();
    let r = env.run(&["verify", "--all", "--json"]).expect_code(1);
    let v: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.len(), 2);
    for s in &v {
        assert_eq!(s["outcome"], "bad", "{s}");
    }
    let missing = v.iter().find(|s| s["id"] == a.as_str()).unwrap();
    assert!(
        missing["detail"].as_str().unwrap().contains("missing"),
        "{missing}"
    );
}

#[test]
fn verify_with_no_snapshots_is_not_a_pass() {
    let env = TestEnv::new();
    let r = env.run(&["verify"]).expect_code(1);
    assert!(r.stderr.contains("no snapshots of market"), "{}", r.stderr);
}
