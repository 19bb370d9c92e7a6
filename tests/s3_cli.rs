//! guardian's commands against S3, end to end through the real binary: backup → list → restore →
//! damage → fallback on the in-process server (and on the external one when configured),
//! `doctor` and config errors. (That no secret shows up in any output is `secrets.rs`.)

use std::path::Path;

use crate::s3_server::{external, unique_prefix, S3Server, S3Target};
use crate::util::{self, TestEnv};

/// A test world whose config stores snapshots in `target` under `prefix`.
pub fn s3_env(target: &S3Target, prefix: &str) -> TestEnv {
    let env = TestEnv::new();
    let text = format!(
        "{}\n[backup]\nstaging_dir = \"staging\"\n\n[[databases]]\nname = \"market\"\npath = \"market.db\"\n",
        target.storage_toml(prefix)
    );
    std::fs::write(&env.config, text).unwrap();
    env
}

/// Run guardian with the target's credentials in the standard AWS variables.
pub fn run(env: &TestEnv, target: &S3Target, args: &[&str]) -> util::Run {
    let mut cmd = env.command();
    target.credentials_env(&mut cmd);
    util::run(cmd.args(args))
}

/// Flip one byte in the middle of a stored object (same size), behind guardian's back.
pub(crate) fn damage(target: &S3Target, key: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = target.raw_client();
        let got = client
            .get_object()
            .bucket(&target.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let mut bytes = got.body.collect().await.unwrap().into_bytes().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        client
            .put_object()
            .bucket(&target.bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    });
}

fn add_rows(db: &Path, n: i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS extra (n INTEGER)")
        .unwrap();
    for i in 0..n {
        c.execute("INSERT INTO extra VALUES (?1)", [i]).unwrap();
    }
}

/// The whole scenario an on-call engineer relies on, against one server.
fn backup_list_restore_and_fallback(target: &S3Target) {
    let prefix = unique_prefix("e2e");
    let env = s3_env(target, &prefix);
    let first = run(&env, target, &["backup"])
        .ok()
        .stdout
        .trim()
        .to_string();
    std::fs::copy(&env.db, env.path("at-first.db")).unwrap();
    add_rows(&env.db, 50);
    let second = run(&env, target, &["backup"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_ne!(first, second);

    let r = run(&env, target, &["list", "--json"]).ok();
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "{}", target.name);
    assert!(list.iter().all(|s| s["status"] == "unverified"), "{list:?}");
    let r = run(&env, target, &["list"]).ok();
    assert!(r.stdout.contains(&second), "{}", r.stdout);

    let r = run(
        &env,
        target,
        &["restore", "--latest", "--to", "restored.db"],
    )
    .ok();
    assert!(r.stdout.contains(&second), "{}", r.stdout);
    assert_eq!(util::dump(&env.path("restored.db")), util::dump(&env.db));
    assert_eq!(util::integrity(&env.path("restored.db")), "ok");

    // The newest snapshot's data is damaged in the bucket: restore says so and falls back.
    damage(target, &format!("{prefix}/market/{second}/db.sqlite.gz"));
    let r = run(
        &env,
        target,
        &["restore", "--latest", "--to", "fallback.db"],
    )
    .ok();
    assert!(
        r.stdout.contains(&format!("skipped {second}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("snapshot {first}")),
        "{}",
        r.stdout
    );
    assert_eq!(
        util::dump(&env.path("fallback.db")),
        util::dump(&env.path("at-first.db"))
    );

    // Asking for the damaged one by id is refused with exit 1, and nothing is written.
    let r = run(
        &env,
        target,
        &["restore", "--snapshot", &second, "--to", "bad.db"],
    )
    .expect_code(1);
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr);
    assert!(!env.path("bad.db").exists());
}

#[test]
fn backup_list_restore_and_fallback_on_the_in_process_server() {
    let server = S3Server::start();
    backup_list_restore_and_fallback(&server.target);
    // Every request stayed under guardian's prefix.
    let reqs = server.requests();
    let under_prefix = |r: &crate::s3_server::Logged| {
        r.path.starts_with("/guardian-test/t-e2e-")
            || (r.path.trim_end_matches('/') == "/guardian-test"
                && r.query.contains("prefix=t-e2e-"))
    };
    let outside: Vec<_> = reqs.iter().filter(|r| !under_prefix(r)).collect();
    assert!(outside.is_empty(), "{outside:#?}");
}

#[test]
fn backup_list_restore_and_fallback_on_the_external_server() {
    if let Some(target) = external() {
        backup_list_restore_and_fallback(&target);
    }
}

fn doctor(env: &TestEnv, target: &S3Target) -> util::Run {
    run(env, target, &["doctor"])
}

/// The line of check `name` in doctor's output.
fn line<'a>(r: &'a util::Run, name: &str) -> &'a str {
    r.stdout
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no {name:?} line:\n{}", r.stdout))
}

#[test]
fn doctor_passes_against_a_working_bucket() {
    let server = S3Server::start();
    let env = s3_env(&server.target, "doc");
    let r = doctor(&env, &server.target).ok();
    for check in [
        "config",
        "database market",
        "credentials",
        "write",
        "read",
        "list",
        "delete",
    ] {
        assert!(line(&r, check).starts_with("pass"), "{}", r.stdout);
    }
    assert!(
        line(&r, "conditional writes").starts_with("pass"),
        "{}",
        r.stdout
    );
    assert!(
        line(&r, "multipart upload").starts_with("pass"),
        "{}",
        r.stdout
    );
    assert!(line(&r, "clock skew").starts_with("pass"), "{}", r.stdout);
    // s3s-fs cannot list multipart uploads (501): a warning, with the remedy.
    assert!(
        line(&r, "incomplete uploads").starts_with("warn"),
        "{}",
        r.stdout
    );
    assert!(
        line(&r, "incomplete uploads").contains("lifecycle"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("0 failed"), "{}", r.stdout);
    // The probes leave nothing behind.
    let left: Vec<_> = walk(&server.root.path().join("guardian-test"));
    assert!(left.is_empty(), "{left:?}");
    if let Some(t) = external() {
        let env = s3_env(&t, &unique_prefix("doctor"));
        let r = doctor(&env, &t).ok();
        assert!(r.stdout.contains("0 failed"), "{}", r.stdout);
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out
}

#[test]
fn doctor_warns_when_the_server_ignores_conditional_writes() {
    let server = S3Server::start();
    server.faults.lock().unwrap().ignore_if_none_match = true;
    let env = s3_env(&server.target, "garage-like");
    let r = doctor(&env, &server.target).ok();
    let l = line(&r, "conditional writes");
    assert!(
        l.starts_with("warn") && l.contains("If-None-Match"),
        "{}",
        r.stdout
    );
}

#[test]
fn doctor_reports_a_versioned_or_locked_bucket_as_retention_delegated() {
    let server = S3Server::start();
    // s3s-fs knows no versioning (501): a plain bucket.
    let env = s3_env(&server.target, "versioning");
    let r = doctor(&env, &server.target).ok();
    assert!(line(&r, "versioning").starts_with("pass"), "{}", r.stdout);
    {
        let mut f = server.faults.lock().unwrap();
        f.versioning = Some("Enabled");
        f.object_lock = true;
    }
    let r = doctor(&env, &server.target).ok();
    let l = line(&r, "versioning");
    for part in [
        "warn",
        "versioning is Enabled",
        "object lock is on (GOVERNANCE retention, 30 days)",
        "noncurrent version",
        "delegated to the provider",
        "NoncurrentVersionExpiration",
        "docs/S3.md",
    ] {
        assert!(l.contains(part), "{part:?} missing from {l:?}");
    }
    assert!(r.stdout.contains("0 failed"), "{}", r.stdout);

    // The independent server, on the versioned bucket scripts/s3-server.sh creates.
    let versioned = std::env::var("GUARDIAN_TEST_S3_VERSIONED_BUCKET").ok();
    match (external(), versioned) {
        (Some(mut t), Some(bucket)) => {
            t.bucket = bucket;
            let env = s3_env(&t, &unique_prefix("versioning"));
            let r = doctor(&env, &t).ok();
            eprintln!("{}: doctor on a versioned bucket:\n{}", t.name, r.stdout);
            let l = line(&r, "versioning");
            assert!(
                l.starts_with("warn") && l.contains("versioning is Enabled"),
                "{}",
                r.stdout
            );
            assert!(r.stdout.contains("0 failed"), "{}", r.stdout);
        }
        _ => util::skip(
            "the versioned-bucket check on an external server needs GUARDIAN_TEST_S3_ENDPOINT and GUARDIAN_TEST_S3_VERSIONED_BUCKET (scripts/s3-server.sh)",
        ),
    }
}

#[test]
fn prune_on_a_store_that_refuses_deletes_says_retention_is_delegated_and_exits_0() {
    let server = S3Server::start();
    let env = s3_env(&server.target, "locked");
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str("[databases.retention]\nkeep_last = 1\nkeep_delete = \"0s\"\n");
    std::fs::write(&env.config, text).unwrap();
    for _ in 0..3 {
        run(&env, &server.target, &["backup"]).ok();
    }
    server.faults.lock().unwrap().deny_deletes = true;
    let deletes = |s: &S3Server| s.requests().iter().filter(|q| q.method == "DELETE").count();
    for round in 0..2 {
        let before = deletes(&server);
        let r = run(&env, &server.target, &["prune"]).ok();
        assert!(
            r.stdout.contains("retention delegated to the provider")
                && r.stdout.contains("AccessDenied"),
            "round {round}: {}",
            r.stdout
        );
        assert!(!r.stdout.contains("  deleted"), "{}", r.stdout);
        // One refused delete, then the prune stops: not one error per object.
        assert_eq!(deletes(&server) - before, 1, "round {round}");
        assert_eq!(
            r.stderr.matches("deletes are refused").count(),
            1,
            "{}",
            r.stderr
        );
    }
    let listed = |env: &TestEnv| {
        run(env, &server.target, &["list", "--json"])
            .ok()
            .stdout
            .matches("\"id\"")
            .count()
    };
    assert_eq!(listed(&env), 3);
    // Once deletes work again, the policy applies.
    server.faults.lock().unwrap().deny_deletes = false;
    let r = run(&env, &server.target, &["prune"]).ok();
    assert!(!r.stdout.contains("delegated"), "{}", r.stdout);
    assert_eq!(listed(&env), 1);
}

#[test]
fn doctor_warns_when_the_server_refuses_conditional_writes() {
    let server = S3Server::start();
    server.faults.lock().unwrap().refuse_if_none_match = true;
    let env = s3_env(&server.target, "refuses");
    let r = doctor(&env, &server.target).ok();
    let l = line(&r, "conditional writes");
    assert!(l.starts_with("warn") && l.contains("501"), "{}", r.stdout);
    // And backups still work there (check, then write).
    run(&env, &server.target, &["backup"]).ok();
    assert_eq!(
        run(&env, &server.target, &["list", "--json"])
            .ok()
            .stdout
            .matches("\"id\"")
            .count(),
        1
    );
}

#[test]
fn doctor_explains_wrong_keys_in_one_line_and_exits_1() {
    let server = S3Server::start();
    let env = s3_env(&server.target, "doc");
    let mut wrong = server.target.clone();
    wrong.secret_key = "definitely-not-it".into();
    let r = doctor(&env, &wrong).expect_code(1);
    let l = line(&r, "write");
    assert!(l.starts_with("fail"), "{}", r.stdout);
    assert!(
        l.contains("SignatureDoesNotMatch") && l.contains("AWS_SECRET_ACCESS_KEY"),
        "{l}"
    );
    assert!(!r.stdout.contains("definitely-not-it"));

    let mut cmd = env.command();
    server.target.credentials_env(&mut cmd);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = util::run(cmd.arg("doctor")).expect_code(1);
    let l = line(&r, "credentials");
    assert!(
        l.starts_with("fail") && l.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        r.stdout
    );

    // Any other command: one short error line saying what to set.
    let mut cmd = env.command();
    server.target.credentials_env(&mut cmd);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = util::run(cmd.arg("list")).expect_code(2);
    let lines = r.error_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains("no AWS credentials found") && lines[0].contains("AWS_ACCESS_KEY_ID"),
        "{}",
        lines[0]
    );
    assert!(lines[0].len() < 400, "too long: {}", lines[0]);
}

#[test]
fn doctor_reports_a_broken_config_as_a_failed_check() {
    let env = TestEnv::new();
    std::fs::write(
        &env.config,
        "[storage]\nkind = \"s3\"\nprefix = \"p\"\n[[databases]]\nname = \"market\"\npath = \"market.db\"\n",
    )
    .unwrap();
    let r = env.run(&["doctor"]).expect_code(1);
    let l = line(&r, "config");
    assert!(
        l.starts_with("fail") && l.contains("storage.bucket"),
        "{}",
        r.stdout
    );
    // Other commands refuse the same config with one error line, exit 2.
    let r = env.run(&["list"]).expect_code(2);
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr);
    assert!(
        r.error_lines()[0].contains("storage.bucket"),
        "{}",
        r.stderr
    );
}

#[test]
fn doctor_checks_a_local_store() {
    let env = TestEnv::new();
    let r = env.run(&["doctor"]).ok();
    assert!(line(&r, "folder").starts_with("warn"), "{}", r.stdout);
    for check in ["write", "read", "list", "conditional writes", "delete"] {
        assert!(line(&r, check).starts_with("pass"), "{}", r.stdout);
    }
    assert!(!r.stdout.contains("clock skew"), "{}", r.stdout);
    let r = env.run(&["doctor"]).ok();
    assert!(line(&r, "folder").starts_with("pass"), "{}", r.stdout);
    assert!(walk(&env.store).is_empty(), "the probe left files");
    // No alerts configured: a warning, not a failure.
    assert!(line(&r, "notify").starts_with("warn"), "{}", r.stdout);
    // Alerts configured: where they go, redacted; given twice: a failure naming the key. The
    // token is never printed.
    std::fs::write(
        env.path("hook.url"),
        "https://hooks.example.com/T0/s3cr3t\n",
    )
    .unwrap();
    env.write_config("\n[notify]\nwebhook_url_file = \"hook.url\"\n");
    let r = env.run(&["doctor"]).ok();
    assert!(
        line(&r, "notify").starts_with("pass")
            && line(&r, "notify").contains("https://hooks.example.com/…"),
        "{}",
        r.stdout
    );
    let r = util::run(env.command().arg("doctor").env(
        "GUARDIAN_WEBHOOK_URL",
        "https://hooks.example.com/T1/s3cr3t",
    ))
    .expect_code(1);
    assert!(
        line(&r, "notify").starts_with("fail") && line(&r, "notify").contains("notify.webhook_url"),
        "{}",
        r.stdout
    );
    assert!(
        !format!("{}{}", r.stdout, r.stderr).contains("s3cr3t"),
        "{r:?}"
    );
    // A database that is missing fails its check.
    std::fs::remove_file(&env.db).unwrap();
    let r = env.run(&["doctor"]).expect_code(1);
    assert!(
        line(&r, "database market").starts_with("fail"),
        "{}",
        r.stdout
    );
}

#[test]
fn s3_config_mistakes_name_the_key() {
    let env = TestEnv::new();
    let base = "[[databases]]\nname = \"market\"\npath = \"market.db\"\n";
    for (storage, needle) in [
        (
            "kind = \"local\"\npath = \"s\"\nbucket = \"b\"\n",
            "storage.bucket",
        ),
        (
            "kind = \"s3\"\nbucket = \"bkt\"\npath = \"s\"\n",
            "storage.path",
        ),
        ("kind = \"s3\"\nbucket = \"b/c\"\n", "storage.bucket"),
        (
            "kind = \"s3\"\nbucket = \"bkt\"\nprefix = \"a/../b\"\n",
            "storage.prefix",
        ),
        (
            "kind = \"s3\"\nbucket = \"bkt\"\nendpoint = \"127.0.0.1:9000\"\n",
            "storage.endpoint",
        ),
        (
            "kind = \"s3\"\nbucket = \"bkt\"\nendpoint = \"http://AKIA:hunter2@host\"\n",
            "storage.endpoint",
        ),
        (
            "kind = \"s3\"\nbucket = \"bkt\"\naccess_key = \"AKIA\"\n",
            "access_key",
        ),
        ("kind = \"s4\"\n", "storage.kind"),
    ] {
        std::fs::write(&env.config, format!("[storage]\n{storage}{base}")).unwrap();
        let r = env.run(&["list"]).expect_code(2);
        let lines = r.error_lines();
        assert_eq!(lines.len(), 1, "{storage}: {}", r.stderr);
        assert!(lines[0].contains(needle), "{storage}: {}", lines[0]);
        assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
    }
}

#[test]
fn a_broken_connection_during_restore_is_resumed_or_reported_never_called_damage() {
    let server = S3Server::start();
    let env = s3_env(&server.target, "flaky");
    let first = run(&env, &server.target, &["backup"])
        .ok()
        .stdout
        .trim()
        .to_string();
    add_rows(&env.db, 20);
    let second = run(&env, &server.target, &["backup"])
        .ok()
        .stdout
        .trim()
        .to_string();

    // Two cuts: resumed, and the newest snapshot is restored.
    server.faults.lock().unwrap().cut_gets = 2;
    let r = run(
        &env,
        &server.target,
        &["restore", "--latest", "--to", "a.db"],
    )
    .ok();
    assert!(
        r.stdout.contains(&second) && !r.stdout.contains("skipped"),
        "{}",
        r.stdout
    );
    assert_eq!(util::dump(&env.path("a.db")), util::dump(&env.db));

    // A connection that never holds: an operational error (exit 2), not a damaged snapshot,
    // and no silent fallback to the older one.
    server.faults.lock().unwrap().cut_gets = 1_000;
    let r = run(
        &env,
        &server.target,
        &["restore", "--latest", "--to", "b.db"],
    )
    .expect_code(2);
    let lines = r.error_lines();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].contains("download"), "{}", lines[0]);
    assert!(
        !lines[0].contains("damaged") && !r.stdout.contains("skipped"),
        "{}",
        lines[0]
    );
    assert!(!r.stdout.contains(&first), "{}", r.stdout);
    assert!(!env.path("b.db").exists());
    server.faults.lock().unwrap().cut_gets = 0;
}
