//! Bad input gets one clear line and the documented exit code, never a panic.

use std::fs;

use crate::util::{self, TestEnv};

/// Exit 2, exactly one `guardian:` error line containing every `needle`, no panic.
#[track_caller]
fn fails_cleanly(r: util::Run, code: i32, needles: &[&str]) {
    let r = r.expect_code(code);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let line = r.error_line();
    for n in needles {
        assert!(line.contains(n), "{n:?} missing from {line:?}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let env = TestEnv::new();
    let r = util::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_guardian")).args([
            "--config",
            "/nonexistent/g.toml",
            "list",
        ]),
    );
    fails_cleanly(r, 2, &["/nonexistent/g.toml", "--config"]);
    // No flag, no env, no ./guardian.toml: the search is explained.
    let r = util::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_guardian"))
            .arg("list")
            .env_remove("GUARDIAN_CONFIG")
            .current_dir(env.dir.path().join("..")),
    );
    if !std::path::Path::new("/etc/guardian/guardian.toml").exists()
        && !std::path::Path::new("../guardian.toml").exists()
    {
        fails_cleanly(r, 2, &["no config file found", "GUARDIAN_CONFIG"]);
    }
}

#[test]
fn config_from_environment_variable_is_used() {
    let env = TestEnv::new();
    let r = util::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_guardian"))
            .arg("backup")
            .env("GUARDIAN_CONFIG", &env.config)
            .current_dir("/"),
    )
    .ok();
    assert_eq!(r.stdout.trim().len(), 25, "{}", r.stdout);
}

#[test]
fn unknown_config_key_names_its_dotted_path() {
    let env = TestEnv::new();
    env.write_config("max_agee = \"1h\"\n");
    fails_cleanly(env.run(&["list"]), 2, &["databases[0]", "max_agee"]);
}

#[test]
fn missing_database_file_is_named() {
    let env = TestEnv::empty();
    fails_cleanly(env.run(&["backup"]), 2, &["market.db", "does not exist"]);
    assert!(env.list().is_empty());
}

#[test]
fn a_file_that_is_not_sqlite_is_refused() {
    let env = TestEnv::empty();
    fs::copy(util::fixture("not-a-database.txt"), &env.db).unwrap();
    fails_cleanly(env.run(&["backup"]), 2, &["not a SQLite database"]);
    fs::write(&env.db, b"").unwrap();
    fails_cleanly(env.run(&["backup"]), 2, &["empty"]);
    // Random bytes, as an encrypted database looks.
    fs::write(
        &env.db,
        (0..8192u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    fails_cleanly(env.run(&["backup"]), 2, &["not a SQLite database"]);
}

#[test]
fn unknown_snapshot_id_is_a_usage_error() {
    let env = TestEnv::new();
    env.backup();
    fails_cleanly(
        env.run(&[
            "restore",
            "--snapshot",
            "20200101T000000Z-deadbeef",
            "--to",
            "x.db",
        ]),
        2,
        &["no snapshot"],
    );
    assert!(!env.path("x.db").exists());
}

#[test]
fn unknown_database_name_lists_the_configured_ones() {
    let env = TestEnv::new();
    fails_cleanly(env.run(&["list", "--db", "shop"]), 2, &["shop", "market"]);
}

#[test]
fn restore_needs_db_when_several_are_configured() {
    let env = TestEnv::new();
    env.write_config("\n[[databases]]\nname = \"shop\"\npath = \"shop.db\"\n");
    fails_cleanly(env.run(&["restore", "--latest"]), 2, &["--db"]);
}

#[test]
fn restore_needs_exactly_one_selector() {
    let env = TestEnv::new();
    let r = env.run(&["restore"]).expect_code(2);
    assert!(r.stderr.contains("--latest"), "{}", r.stderr);
    env.run(&["restore", "--latest", "--snapshot", "x"])
        .expect_code(2);
    let r = env
        .run(&["restore", "--before", "yesterday"])
        .expect_code(2);
    assert!(r.stderr.contains("RFC 3339"), "{}", r.stderr);
}

#[test]
fn one_failing_database_does_not_stop_the_others() {
    let env = TestEnv::new();
    env.write_config("\n[[databases]]\nname = \"shop\"\npath = \"missing.db\"\n");
    let r = env.run(&["backup"]).expect_code(2);
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "market's id is printed: {}",
        r.stdout
    );
    assert!(r.stderr.contains("backup of shop failed"), "{}", r.stderr);
    assert_eq!(env.list().len(), 1);
}

#[test]
fn status_reports_health_and_exits_1_when_stale_or_empty() {
    let env = TestEnv::new();
    let r = env.run(&["status", "--json"]).expect_code(1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["healthy"], false);
    let id = env.backup();
    let r = env.run(&["status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["healthy"], true);
    assert_eq!(v[0]["last_snapshot"]["id"], id.as_str());
    assert_eq!(v[0]["snapshot_count"], 1);
    // max_age of one second: after two seconds the database is stale.
    env.write_config("max_age = \"1s\"\n");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = env.run(&["status"]).expect_code(1);
    assert!(
        r.stdout.contains("UNHEALTHY") && r.stdout.contains("max_age"),
        "{}",
        r.stdout
    );
}

#[test]
fn list_json_has_the_contract_fields() {
    let env = TestEnv::new();
    env.backup();
    let v = &env.list()[0];
    for field in [
        "id",
        "db",
        "created_at",
        "size_bytes",
        "stored_bytes",
        "sha256",
        "status",
    ] {
        assert!(!v[field].is_null(), "{field} missing in {v}");
    }
    assert!(chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str().unwrap()).is_ok());
}

#[test]
fn json_logs_are_json_lines() {
    let env = TestEnv::new();
    let r = env.run(&["--log-format", "json", "backup"]).ok();
    let mut n = 0;
    for line in r.stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string());
        n += 1;
    }
    assert!(n >= 2, "start and end lines expected: {}", r.stderr);
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

#[test]
fn a_closed_stdout_never_panics_and_never_stops_the_work() {
    let env = TestEnv::new();
    let first = env.backup();
    for args in [
        &["backup"][..],
        &["list"],
        &["list", "--json"],
        &["status"],
        &["status", "--json"],
        &["verify", "--all"],
        &["drill"],
        &["drill", "--json"],
        &["prune", "--dry-run"],
        &["restore", "--latest", "--dry-run"],
        &["doctor"],
        &["--help"],
        &["--version"],
    ] {
        let out = env
            .command()
            .args(args)
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
        assert!(!stderr.contains("guardian: error"), "{args:?}:\n{stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}:\n{stderr}");
    }
    // The work was done although nobody read its results: a new snapshot, and a drill record.
    let list = env.list();
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(
        util::status_of(&env, list[0]["id"].as_str().unwrap()),
        "verified"
    );
    assert!(list.iter().any(|s| s["id"] == first.as_str()));

    // stderr closed as well: a failing command still exits with its own code, silently.
    std::fs::rename(&env.db, env.path("away.db")).unwrap();
    let out = env
        .command()
        .arg("backup")
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::rename(env.path("away.db"), &env.db).unwrap();

    // `guardian list --json | head -1`: the reader leaves mid-way through a long output.
    for i in 0..300 {
        util::plant_snapshot(
            &env,
            &first,
            &format!("2026-01-01T00:{:02}:{:02}Z", i / 60, i % 60),
        );
    }
    let mut child = env
        .command()
        .args(["list", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "[");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_failed_write_of_the_results_is_an_error_not_a_short_success() {
    // /dev/full: every write fails with ENOSPC, as under `guardian list --json > file` on a
    // full disk. A truncated listing must not exit 0.
    let env = TestEnv::new();
    env.backup();
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = env
        .command()
        .args(["list", "--json"])
        .stdout(full)
        .output()
        .unwrap();
    let r = util::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    fails_cleanly(r, 2, &["write results to stdout", "incomplete"]);
}

/// A test whose server is missing says so, and under `CI=true` fails instead of passing: run
/// one external-server test of this very binary both ways, with no server configured.
#[test]
fn a_test_without_its_server_says_skipped_and_fails_under_ci() {
    // Inside the child run this test is not selected, so it cannot recurse.
    let test = "s3_cli::backup_list_restore_and_fallback_on_the_external_server";
    let run = |ci: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--test-threads=1"])
            .env("CI", ci)
            .env_remove("GUARDIAN_TEST_S3_ENDPOINT")
            .output()
            .unwrap()
    };
    let local = run("false");
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(local.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "SKIPPED (part of) s3_cli::backup_list_restore_and_fallback_on_the_external_server"
        ) && stderr.contains("GUARDIAN_TEST_S3_ENDPOINT is not set"),
        "{stderr}"
    );
    let ci = run("true");
    let stdout = String::from_utf8_lossy(&ci.stdout);
    assert!(
        !ci.status.success(),
        "a skip passed under CI=true:\n{stdout}"
    );
    assert!(stdout.contains("cannot skip under CI=true"), "{stdout}");
}
