//! The restore drill through the real binary: a good snapshot is verified; damaged ones (bit
//! rot, a corrupt database behind valid checksums, counts that do not match) exit 1, are
//! recorded as failed, and `restore --latest` then skips them.

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::util::{self, fixture, TestEnv};

#[test]
fn drill_of_a_good_snapshot_passes_and_marks_it_verified() {
    let env = TestEnv::new();
    let id = env.backup();
    assert_eq!(util::status_of(&env, &id), "unverified");
    let r = env.run(&["drill"]).ok();
    assert!(r.stdout.contains("PASSED"), "{}", r.stdout);
    for step in [
        "download",
        "integrity_check",
        "foreign_key_check",
        "compare",
    ] {
        assert!(
            r.stdout.contains(step),
            "step {step} missing:\n{}",
            r.stdout
        );
    }
    assert_eq!(util::status_of(&env, &id), "verified");
    // The record is in the store, next to the snapshot, with the full report.
    let record = std::fs::read_dir(env.snapshot_dir(&id))
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().starts_with("drill-"))
        .expect("drill record stored");
    assert!(record.file_name().to_string_lossy().ends_with("-ok.json"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.path()).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["snapshot"], id.as_str());
    assert!(report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["seconds"].is_number()));
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "rows.orders" && c["actual"] == "40"));
}

#[test]
fn drill_on_a_bit_flipped_snapshot_fails_and_restore_latest_skips_it() {
    let env = TestEnv::new();
    let good = env.backup();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a distinct id second
    let bad = env.backup();
    util::flip_byte(&env.snapshot_dir(&bad).join("db.sqlite.gz"), 1000);

    let r = env.run(&["drill"]).expect_code(1);
    assert!(r.stdout.contains("FAILED"), "{}", r.stdout);
    assert!(
        r.stdout.contains("restore --latest will skip it"),
        "{}",
        r.stdout
    );
    assert_eq!(util::status_of(&env, &bad), "failed");
    assert_eq!(util::status_of(&env, &good), "unverified");
    // status says so, and exits 1 for cron or a monitor.
    let st = env.run(&["status"]).expect_code(1);
    assert!(
        st.stdout.contains("UNHEALTHY") && st.stdout.contains("last drill failed"),
        "{}",
        st.stdout
    );

    // restore --latest now restores the older, good snapshot and says why it skipped the newer.
    let to = env.path("restored.db");
    let r = env
        .run(&["restore", "--latest", "--to", to.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains(&format!("skipped {bad}")), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("snapshot {good}")),
        "{}",
        r.stdout
    );
    assert_eq!(util::integrity(&to), "ok");

    // The next drill picks the newest usable snapshot: the good one.
    let r = env.run(&["drill"]).ok();
    assert!(r.stdout.contains(&good), "{}", r.stdout);
    assert_eq!(util::status_of(&env, &good), "verified");
}

/// Replace a snapshot's data with `raw` (gzipped here) and fix the manifest's checksums, so
/// that only the SQLite-level checks can catch what is wrong.
fn swap_raw(env: &TestEnv, id: &str, raw: &[u8]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(raw).unwrap();
    let stored = gz.finish().unwrap();
    std::fs::write(env.snapshot_dir(id).join("db.sqlite.gz"), &stored).unwrap();
    let mut m = util::read_manifest(env, id);
    m["raw_sha256"] = hex::encode(Sha256::digest(raw)).into();
    m["raw_len"] = raw.len().into();
    m["stored_sha256"] = hex::encode(Sha256::digest(&stored)).into();
    m["stored_len"] = stored.len().into();
    util::write_manifest(env, id, &m);
}

#[test]
fn drill_catches_a_corrupt_database_behind_valid_checksums() {
    let env = TestEnv::new();
    let id = env.backup();
    swap_raw(
        &env,
        &id,
        &std::fs::read(fixture("corrupt.sqlite")).unwrap(),
    );
    let r = env.run(&["drill", "--json"]).expect_code(1);
    let reports: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let report = &reports[0];
    assert_eq!(report["ok"], false);
    let checks = report["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "raw_sha256" && c["ok"] == true),
        "{report}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "integrity_check" && c["ok"] == false),
        "{report}"
    );
    assert!(report["record"].as_str().unwrap().ends_with("-failed.json"));
    assert_eq!(util::status_of(&env, &id), "failed");
    env.run(&[
        "restore",
        "--latest",
        "--to",
        env.path("x.db").to_str().unwrap(),
    ])
    .expect_code(1);
}

#[test]
fn drill_compares_row_counts_and_schema_with_the_manifest() {
    let env = TestEnv::new();
    let id = env.backup();
    let mut m = util::read_manifest(&env, &id);
    m["tables"]["orders"] = 41.into();
    m["schema_sha256"] = "0".repeat(64).into();
    util::write_manifest(&env, &id, &m);
    let r = env.run(&["drill"]).expect_code(1);
    assert!(
        r.stdout.contains("rows.orders: expected 41, got 40"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("schema_sha256: expected 000"),
        "{}",
        r.stdout
    );
    assert_eq!(util::status_of(&env, &id), "failed");
}

#[test]
fn drill_of_a_named_snapshot_and_its_errors() {
    let env = TestEnv::new();
    // Nothing to drill: exit 1 with one clear line.
    let r = env.run(&["drill"]).expect_code(1);
    assert!(
        r.stderr.contains("no usable snapshot of market"),
        "{}",
        r.stderr
    );
    let first = env.backup();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = env.backup();
    let r = env.run(&["drill", "--snapshot", &first[..20]]).ok();
    assert!(r.stdout.contains(&first), "{}", r.stdout);
    assert_eq!(util::status_of(&env, &first), "verified");
    assert_eq!(util::status_of(&env, &second), "unverified");
    let r = env
        .run(&["drill", "--snapshot", "20990101T000000Z-00000000"])
        .expect_code(2);
    assert!(
        r.error_lines().iter().any(|l| l.contains("no snapshot")),
        "{}",
        r.stderr
    );
    // The scratch copy is gone; the live database was never touched.
    let staging: Vec<_> = std::fs::read_dir(env.path("staging"))
        .unwrap()
        .flatten()
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
    assert_eq!(
        std::fs::read(&env.db).unwrap(),
        std::fs::read(fixture("market.sqlite")).unwrap()
    );
}

#[test]
fn drill_decrypts_encrypted_snapshots_and_fails_closed_without_the_identity() {
    use age::secrecy::ExposeSecret;
    let env = TestEnv::new();
    let key = age::x25519::Identity::generate();
    let (secret, public) = (
        key.to_string().expose_secret().to_string(),
        key.to_public().to_string(),
    );
    std::fs::write(env.path("age.key"), format!("{secret}\n")).unwrap();
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{public}\"]\nidentity_file = \"age.key\"\n"
    ));
    let id = env.backup();
    let r = env.run(&["drill"]).ok();
    assert!(r.stdout.contains("PASSED"), "{}", r.stdout);
    assert_eq!(util::status_of(&env, &id), "verified");
    assert!(env.run(&["verify"]).ok().stdout.contains(" ok "));

    // A host with only the public key cannot drill: an operational error (exit 2), and the
    // snapshot is NOT marked failed, because nothing is known to be wrong with it.
    env.write_config(&format!("\n[encryption]\nrecipients = [\"{public}\"]\n"));
    let second = env.backup();
    let r = env.run(&["drill"]).expect_code(2);
    assert!(
        r.stderr.contains("encryption.identity_file"),
        "{}",
        r.stderr
    );
    assert_eq!(util::status_of(&env, &second), "unverified");
}
