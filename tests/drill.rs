//! The restore drill through the real binary: a good snapshot is verified; damaged ones (bit
//! rot, a corrupt database behind valid checksums, counts that do not match) exit 1, are
//! recorded as failed, and `restore --latest` then skips them. The rotation of older snapshots:
//! a property test of the pure choice, and drills through the binary reading every snapshot.

use std::io::Write;

use sha2::{Digest, Sha256};

use guardian::drill::{pick_rotation, Turn};

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
    // The same drill read the older snapshot in rotation, and it passed.
    assert!(
        r.stdout
            .contains(&format!("drill of market snapshot {good}")),
        "{}",
        r.stdout
    );
    assert_eq!(util::status_of(&env, &good), "verified");
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

    // The next drill picks the newest usable snapshot: the good one; the failed one is out of
    // the rotation.
    let r = env.run(&["drill"]).ok();
    assert!(r.stdout.contains(&good), "{}", r.stdout);
    assert!(
        r.stdout.contains("rotation: no older usable snapshot"),
        "{}",
        r.stdout
    );
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
    m["data"]["stored_sha256"] = hex::encode(Sha256::digest(&stored)).into();
    m["data"]["stored_len"] = stored.len().into();
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
    let staging = util::staging_leftovers(&env);
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

fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
}

/// Up to 40 snapshots, created at random times (ties included), each never drilled or last
/// drilled at a random earlier time.
fn histories() -> impl proptest::strategy::Strategy<Value = Vec<Turn>> {
    use proptest::prelude::*;
    prop::collection::vec((0i64..100_000, prop::option::of(0i64..100_000)), 1..40).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (created, drilled))| Turn {
                id: format!("s{i:02}"),
                created_at: at(created),
                last_drill: drilled.map(|d| at(created.max(d))),
            })
            .collect()
    })
}

/// One drill as the binary does it: the newest snapshot (newest first by time, then id), then
/// the pick; both get a drill record at `now`. Returns what was read.
fn simulate_drill(turns: &mut [Turn], now: i64) -> Vec<String> {
    let latest = turns
        .iter()
        .max_by_key(|t| (t.created_at, t.id.clone()))
        .unwrap()
        .id
        .clone();
    let mut read = vec![latest.clone()];
    if let Some(p) = pick_rotation(turns, &latest) {
        read.push(p.id.clone());
    }
    for t in turns.iter_mut().filter(|t| read.contains(&t.id)) {
        t.last_drill = Some(at(now));
    }
    read
}

proptest::proptest! {
    #[test]
    fn over_as_many_drills_as_there_are_snapshots_every_snapshot_is_drilled(mut turns in histories()) {
        let n = turns.len();
        let mut drilled = std::collections::BTreeSet::new();
        for k in 0..n {
            drilled.extend(simulate_drill(&mut turns, 200_000 + k as i64));
        }
        proptest::prop_assert_eq!(drilled.len(), n, "{:?}", turns);
    }

    #[test]
    fn the_older_snapshots_take_turns_each_read_once_per_round(mut turns in histories()) {
        // K older snapshots: K drills read each exactly once; the pick is never the latest,
        // and there is none only when there is nothing older.
        let older = turns.len() - 1;
        let mut picks = Vec::new();
        for k in 0..older {
            let read = simulate_drill(&mut turns, 200_000 + k as i64);
            proptest::prop_assert_eq!(read.len(), 2);
            proptest::prop_assert_ne!(&read[0], &read[1]);
            picks.push(read[1].clone());
        }
        let distinct: std::collections::BTreeSet<_> = picks.iter().collect();
        proptest::prop_assert_eq!(distinct.len(), older, "{:?}", picks);
        if older == 0 {
            proptest::prop_assert_eq!(simulate_drill(&mut turns, 300_000).len(), 1);
        }
    }
}

#[test]
fn a_drilled_snapshot_waits_behind_one_unread_for_longer_and_never_starves() {
    // A monthly drilled 60 days ago goes before a daily taken 3 days ago and never drilled.
    let day = 86_400;
    let turns = [
        Turn {
            id: "monthly".into(),
            created_at: at(0),
            last_drill: Some(at(30 * day)),
        },
        Turn {
            id: "daily".into(),
            created_at: at(87 * day),
            last_drill: None,
        },
        Turn {
            id: "newest".into(),
            created_at: at(90 * day),
            last_drill: Some(at(90 * day)),
        },
    ];
    assert_eq!(pick_rotation(&turns, "newest").unwrap().id, "monthly");
    // Never drilled and older than the last proof of the other: its turn first.
    let turns = [
        Turn {
            last_drill: Some(at(88 * day)),
            ..turns[0].clone()
        },
        turns[1].clone(),
        turns[2].clone(),
    ];
    assert_eq!(pick_rotation(&turns, "newest").unwrap().id, "daily");
    assert!(pick_rotation(&turns[2..], "newest").is_none());
}

#[test]
fn each_drill_reads_the_newest_and_an_older_snapshot_in_turn_until_all_are_verified() {
    let env = TestEnv::new();
    let template = env.backup();
    let older: Vec<String> = [
        "2026-01-01T03:00:00Z",
        "2026-01-08T03:00:00Z",
        "2026-01-15T03:00:00Z",
    ]
    .iter()
    .map(|t| util::plant_snapshot(&env, &template, t))
    .collect();
    let mut rotated = Vec::new();
    for round in 0..older.len() {
        let r = env.run(&["drill", "--json"]).ok();
        let reports: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(
            reports.as_array().unwrap().len(),
            1,
            "one report per database"
        );
        let latest = &reports[0];
        assert_eq!(latest["snapshot"], template.as_str());
        assert_eq!(latest["selected_by"], "latest");
        assert_eq!(latest["ok"], true);
        let rotation = &latest["rotation"];
        assert_eq!(rotation["selected_by"], "rotation", "{latest}");
        assert_eq!(rotation["ok"], true);
        assert!(
            rotation["previous_drill_at"].is_null(),
            "round {round}: {rotation}"
        );
        assert!(rotation["record"].as_str().unwrap().ends_with("-ok.json"));
        // The stored record says why the snapshot was drilled.
        let id = rotation["snapshot"].as_str().unwrap().to_string();
        let record = util::walk(&env.snapshot_dir(&id))
            .into_iter()
            .find(|p| p.to_string_lossy().contains("drill-"))
            .unwrap();
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
        assert_eq!(stored["selected_by"], "rotation");
        rotated.push(id);
    }
    // Oldest first, each once: after 3 drills, all 4 snapshots are verified.
    assert_eq!(rotated, older);
    assert!(env.list().iter().all(|s| s["status"] == "verified"));
    // The 4th drill starts the next round with the one proven longest ago. (Drill records
    // have second precision: drills in the same second would tie.)
    let next_second = || std::thread::sleep(std::time::Duration::from_millis(1100));
    next_second();
    let r = env.run(&["drill"]).ok();
    assert!(
        r.stdout
            .contains("rotation: 3 older snapshot(s) take turns"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("drill of market snapshot {}", older[0])),
        "{}",
        r.stdout
    );

    // Bit rot in an older snapshot: the rotation finds it, exit 1, it is marked failed (and
    // skipped by restore), while the newest stays verified.
    util::flip_byte(&env.snapshot_dir(&older[1]).join("db.sqlite.gz"), 300);
    let mut found = false;
    for _ in 0..older.len() {
        next_second();
        let r = env.run(&["drill"]);
        if r.code == 1 {
            assert!(
                r.stdout.contains(&older[1]) && r.stdout.contains("FAILED"),
                "{}",
                r.stdout
            );
            found = true;
            break;
        }
        r.ok();
    }
    assert!(found, "the rotation never read the damaged snapshot");
    assert_eq!(util::status_of(&env, &older[1]), "failed");
    assert_eq!(util::status_of(&env, &template), "verified");
    // The run failed as a whole: the newest's pass in the same run does not hide it.
    let st = env.run(&["status"]).expect_code(1);
    assert!(
        st.stdout.contains("last drill failed") && st.stdout.contains(&older[1]),
        "{}",
        st.stdout
    );
    // The next run passes (the failed snapshot is out of the rotation): healthy again.
    next_second();
    let r = env.run(&["drill"]).ok();
    assert!(!r.stdout.contains(&older[1]), "{}", r.stdout);
    env.run(&["status"]).ok();
    // A named snapshot is drilled alone.
    let r = env.run(&["drill", "--snapshot", &older[2], "--json"]).ok();
    let reports: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(reports[0]["selected_by"], "requested");
    assert!(reports[0].get("rotation").is_none(), "{reports}");
}

/// The stored drill record of snapshot `id` (the one drill it had).
fn drill_record(env: &TestEnv, id: &str) -> serde_json::Value {
    let f = std::fs::read_dir(env.snapshot_dir(id))
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().starts_with("drill-"))
        .expect("drill record stored");
    serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap()
}

#[test]
fn a_drill_records_its_restore_time_which_status_and_restore_dry_run_show() {
    let env = TestEnv::new();
    let id = env.backup();
    // Nothing proven yet: said plainly, never a made-up figure.
    let st: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    assert!(st[0]["proven_rto"].is_null(), "{}", st[0]);
    assert!(env
        .run(&["status"])
        .stdout
        .contains("rto        not proven: no drill has passed"));
    let dry = env
        .run(&["restore", "--latest", "--to", "x.db", "--dry-run"])
        .ok();
    assert!(
        dry.stdout
            .contains("estimated duration: unknown: no drill has passed yet"),
        "{}",
        dry.stdout
    );

    env.run(&["drill"]).ok();
    let record = drill_record(&env, &id);
    let step = |name: &str| {
        record["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["seconds"]
            .as_f64()
            .unwrap()
    };
    // The restore part of the drill: download (both SHA-256s) + integrity_check.
    let restore = record["restore_seconds"]
        .as_f64()
        .expect("restore_seconds recorded");
    assert!(
        (restore - (step("download") + step("integrity_check"))).abs() < 1e-9,
        "{record}"
    );
    assert!(restore > 0.0 && restore <= record["seconds"].as_f64().unwrap());

    let st: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    let rto = &st[0]["proven_rto"];
    assert_eq!(rto["snapshot"], id.as_str(), "{rto}");
    assert_eq!(rto["restore_seconds"].as_f64(), Some(restore));
    assert_eq!(
        rto["raw_bytes"].as_u64(),
        util::read_manifest(&env, &id)["raw_len"].as_u64()
    );
    let text = env.run(&["status"]).stdout;
    assert!(
        text.contains("rto        ") && text.contains("to restore") && text.contains(&id),
        "{text}"
    );
    // The same snapshot is now verified: a restore of it runs quick_check, which
    // integrity_check's measured time bounds.
    let dry = env
        .run(&["restore", "--latest", "--to", "x.db", "--dry-run"])
        .ok();
    assert!(
        dry.stdout.contains("estimated duration: at most ")
            && dry.stdout.contains("with every check in"),
        "{}",
        dry.stdout
    );
    let dry = env
        .run(&[
            "restore",
            "--latest",
            "--to",
            "x.db",
            "--dry-run",
            "--check",
            "integrity",
        ])
        .ok();
    assert!(
        dry.stdout.contains("estimated duration: about "),
        "{}",
        dry.stdout
    );
    assert!(!env.path("x.db").exists(), "a dry run writes nothing");
}
