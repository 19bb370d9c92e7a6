//! Several stores (`[[stores]]`), the backup side: one pass of the source, every store
//! written; a store that fails drops out, the snapshot is kept where it landed, exit 2 with
//! one line naming the store that missed it; incrementals go only to stores holding their
//! chain. (list, restore, drill and prune across stores: `stores.rs`; sync: `sync.rs`.)

use std::path::Path;

use crate::s3_server::{external, unique_prefix, S3Server, S3Target};
use crate::util::{self, TestEnv};

/// `[[stores]]` `near` (local `near/`) and `far` (`far_toml`, the keys of a store table),
/// staging in the test folder, the market database, and `extra` appended.
fn two_stores(env: &TestEnv, far_toml: &str, extra: &str) {
    let text = format!(
        "[[stores]]\nname = \"near\"\npath = \"near\"\n\n[[stores]]\nname = \"far\"\n{far_toml}\n[backup]\nstaging_dir = \"staging\"\n\n[[databases]]\nname = \"market\"\npath = \"market.db\"\n{extra}"
    );
    std::fs::write(&env.config, text).unwrap();
}

fn local_far() -> &'static str {
    "path = \"far\"\n"
}

fn s3_far(target: &S3Target, prefix: &str) -> String {
    target.storage_toml(prefix).replace("[storage]\n", "")
}

fn manifest_in(root: &Path, id: &str) -> bool {
    root.join("market").join(id).join("manifest.json").is_file()
}

fn run(env: &TestEnv, target: Option<&S3Target>, args: &[&str]) -> util::Run {
    let mut cmd = env.command();
    if let Some(t) = target {
        t.credentials_env(&mut cmd);
    }
    util::run(cmd.args(args))
}

#[test]
fn a_backup_goes_to_every_store_and_restores_from_each() {
    let env = TestEnv::new();
    two_stores(&env, local_far(), "");
    let id = env.backup();
    for store in ["near", "far"] {
        assert!(manifest_in(&env.path(store), &id), "{store} lacks {id}");
    }
    // The same bytes in both: the data object is identical.
    let obj =
        |s: &str| std::fs::read(env.path(s).join("market").join(&id).join("db.sqlite.gz")).unwrap();
    assert_eq!(obj("near"), obj("far"));
    assert_eq!(
        std::fs::read(
            env.path("near")
                .join("market")
                .join(&id)
                .join("manifest.json")
        )
        .unwrap(),
        std::fs::read(
            env.path("far")
                .join("market")
                .join(&id)
                .join("manifest.json")
        )
        .unwrap()
    );
}

#[test]
fn a_store_that_fails_misses_the_snapshot_and_the_backup_says_which_exit_2() {
    let env = TestEnv::new();
    // `far` is a regular file where its folder should be: every write there fails.
    std::fs::write(env.path("far"), b"not a folder").unwrap();
    two_stores(&env, local_far(), "");
    let r = env.run(&["backup"]).expect_code(2);
    let id = r.stdout.trim().to_string();
    assert_eq!(
        id.lines().count(),
        1,
        "the snapshot that was published: {r:?}"
    );
    assert!(
        manifest_in(&env.path("near"), &id),
        "near lacks {id}: {r:?}"
    );
    let line = r.error_line();
    assert!(
        line.contains(&format!("snapshot {id} of market reached near but not far")),
        "{line}"
    );
    assert!(line.contains("guardian sync --db market"), "{line}");
    assert_eq!(r.error_lines().len(), 1, "one line: {}", r.stderr);
    // The attempt is recorded, and status is unhealthy, naming the store that lacks it.
    std::fs::remove_file(env.path("far")).unwrap();
    let s = env.run(&["status", "--json"]);
    assert_eq!(s.code, 1, "{s:?}");
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    let db = &v[0];
    assert_eq!(db["healthy"], false);
    assert_eq!(db["stores"][0]["name"], "near");
    assert_eq!(db["stores"][0]["healthy"], true, "{db}");
    assert_eq!(db["stores"][1]["name"], "far");
    assert_eq!(db["stores"][1]["missing"][0], id.as_str(), "{db}");
    let problems = db["problems"].to_string();
    assert!(
        problems.contains("store far lacks 1 snapshot"),
        "{problems}"
    );
    assert!(problems.contains("guardian sync --db market"), "{problems}");
    // The next backup reaches both, but far still lacks the first one: unhealthy until sync.
    let next = env.backup();
    assert!(manifest_in(&env.path("far"), &next));
    let text = env.run(&["status"]).expect_code(1).stdout;
    assert!(text.contains("store      far: 1 snapshot"), "{text}");
    assert!(text.contains("LACKS 1"), "{text}");
    std::fs::remove_dir_all(env.path("far")).unwrap();
    std::fs::write(env.path("far"), b"not a folder").unwrap();
    // With both stores failing nothing is published: the first store's error, exit 2.
    std::fs::remove_dir_all(env.path("near")).unwrap();
    std::fs::write(env.path("near"), b"not a folder").unwrap();
    let r = env.run(&["backup"]).expect_code(2);
    assert!(r.stdout.trim().is_empty(), "{r:?}");
    assert!(!r.error_line().contains("reached"), "{}", r.error_line());
}

#[test]
fn a_database_with_stores_goes_only_to_those() {
    let env = TestEnv::new();
    two_stores(&env, local_far(), "stores = [\"far\"]\n");
    let id = env.backup();
    assert!(manifest_in(&env.path("far"), &id));
    assert!(
        !env.path("near").join("market").exists(),
        "near was written"
    );
}

#[test]
fn an_incremental_goes_only_to_the_stores_that_hold_its_chain() {
    let env = TestEnv::new();
    two_stores(&env, local_far(), "");
    let full = env.backup();
    // `far` loses the full (a new, empty store in its place).
    std::fs::remove_dir_all(env.path("far")).unwrap();
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    conn.execute_batch("UPDATE products SET stock = stock + 1 WHERE id % 5 = 0")
        .unwrap();
    drop(conn);
    let r = env.run(&["backup", "--incremental"]).expect_code(2);
    let id = r.stdout.trim().to_string();
    assert!(manifest_in(&env.path("near"), &id), "{r:?}");
    assert!(
        !manifest_in(&env.path("far"), &id),
        "far got an incremental without its chain"
    );
    let line = r.error_line();
    assert!(line.contains("but not far"), "{line}");
    assert!(
        line.contains(&full),
        "the line names the snapshot far lacks: {line}"
    );
}

fn both_kinds(target: &S3Target) {
    let prefix = unique_prefix("stores-backup");
    let env = TestEnv::new();
    two_stores(&env, &s3_far(target, &prefix), "");
    let r = run(&env, Some(target), &["backup"]).ok();
    let id = r.stdout.trim().to_string();
    assert!(manifest_in(&env.path("near"), &id));
    let keys: Vec<String> = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let out = target
                .raw_client()
                .list_objects_v2()
                .bucket(&target.bucket)
                .prefix(format!("{prefix}/market/{id}/"))
                .send()
                .await
                .unwrap();
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect()
        })
    };
    assert!(
        keys.iter().any(|k| k.ends_with("/manifest.json")),
        "{}: far lacks the manifest: {keys:?}",
        target.name
    );
    // The secret key shows nowhere.
    assert!(!r.stdout.contains(&target.secret_key) && !r.stderr.contains(&target.secret_key));
}

#[test]
fn local_and_in_process_s3_both_get_the_snapshot_and_a_dead_s3_is_missed() {
    let server = S3Server::start();
    both_kinds(&server.target);
    // The S3 store down: the snapshot lands in near, exit 2 naming far, in bounded time.
    let prefix = unique_prefix("stores-down");
    let env = TestEnv::new();
    let target = server.target.clone();
    let mut far = s3_far(&target, &prefix);
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    far = far.replace(&target.endpoint, &format!("http://127.0.0.1:{port}"));
    two_stores(&env, &far, "");
    let started = std::time::Instant::now();
    let r = run(&env, Some(&target), &["backup"]).expect_code(2);
    let id = r.stdout.trim().to_string();
    assert!(manifest_in(&env.path("near"), &id), "{r:?}");
    assert!(
        r.error_line().contains("reached near but not far"),
        "{}",
        r.error_line()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
}

#[test]
fn local_and_the_external_s3_server_both_get_the_snapshot() {
    let Some(target) = external() else { return };
    both_kinds(&target);
}

#[test]
fn the_service_reports_each_store_in_metrics_and_on_the_status_page() {
    let env = TestEnv::new();
    // `far` cannot be read (a file where its folder should be).
    std::fs::write(env.path("far"), b"not a folder").unwrap();
    two_stores(
        &env,
        local_far(),
        "backup = \"* * * * * *\"\n[service]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut svc = util::Service::start(&env);
    let addr = svc.addr();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let (_, text) = util::http_get(&addr, "/metrics");
        if util::metric(
            &text,
            "guardian_store_snapshots{db=\"market\",store=\"near\"}",
        )
        .is_some_and(|n| n >= 1.0)
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{text}\n{}",
            svc.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    assert_eq!(
        util::metric(&text, "guardian_store_up{db=\"market\",store=\"near\"}"),
        Some(1.0)
    );
    assert_eq!(
        util::metric(&text, "guardian_store_up{db=\"market\",store=\"far\"}"),
        Some(0.0),
        "{text}"
    );
    let (_, json) = util::http_get(&addr, "/status.json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let db = &v["databases"][0];
    assert_eq!(db["health"], "unhealthy", "{json}");
    assert_eq!(db["stores"][1]["name"], "far");
    assert_eq!(db["stores"][1]["up"], false);
    let (_, page) = util::http_get(&addr, "/");
    assert!(
        page.contains("far: ") && page.contains("UNREADABLE"),
        "{page}"
    );
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    svc.wait_exit(15);
}

/// Two providers need two sets of keys: a store's `profile` takes its keys from that profile
/// of the shared credentials file, not from the environment (which holds another store's).
#[test]
fn each_s3_store_can_use_its_own_profile_of_keys() {
    let server = S3Server::start();
    let target = server.target.clone();
    let prefix = unique_prefix("stores-profile");
    let env = TestEnv::new();
    let creds = env.path("aws-credentials");
    std::fs::write(
        &creds,
        format!(
            "[far]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            target.access_key, target.secret_key
        ),
    )
    .unwrap();
    let with_env = |args: &[&str]| {
        let mut cmd = env.command();
        target.credentials_env(&mut cmd);
        // The environment's keys are some other provider's: wrong for this server.
        cmd.env("AWS_ACCESS_KEY_ID", "AKIAOTHERPROVIDER000")
            .env("AWS_SECRET_ACCESS_KEY", "not-this-servers-secret")
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds);
        util::run(cmd.args(args))
    };
    two_stores(&env, &s3_far(&target, &prefix), "");
    let r = with_env(&["backup"]).expect_code(2);
    assert!(r.error_line().contains("but not far"), "{}", r.error_line());
    two_stores(
        &env,
        &format!("{}profile = \"far\"\n", s3_far(&target, &prefix)),
        "",
    );
    let r = with_env(&["backup"]).ok();
    assert_eq!(r.stdout.trim().lines().count(), 1, "{r:?}");
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains(&target.secret_key) && !out.contains("not-this-servers-secret"));
    }
}

#[test]
fn doctor_checks_every_store_and_names_it() {
    let env = TestEnv::new();
    two_stores(&env, local_far(), "");
    let r = env.run(&["doctor"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("2 stores: near (local), far (local)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("store near: "), "{}", r.stdout);
    assert!(r.stdout.contains("store far: "), "{}", r.stdout);
    // far broken: doctor fails on a line that names it, near's lines still pass.
    std::fs::remove_dir_all(env.path("far")).unwrap();
    std::fs::write(env.path("far"), b"not a folder").unwrap();
    let r = env.run(&["doctor"]);
    assert_eq!(r.code, 1, "{r:?}");
    let far_fail = r
        .stdout
        .lines()
        .any(|l| l.starts_with("fail") && l.contains("store far: "));
    assert!(far_fail, "{}", r.stdout);
    assert!(
        !r.stdout
            .lines()
            .any(|l| l.starts_with("fail") && l.contains("store near: ")),
        "{}",
        r.stdout
    );
}

/// A store that stays down: each scheduled backup alerts once, naming it; the sync after it,
/// which fails on the same store, sends no second alert.
#[test]
fn a_store_down_gives_one_alert_per_backup_not_two() {
    let hook = crate::notify::Hook::start(&[]);
    let env = TestEnv::new();
    std::fs::write(env.path("far"), b"not a folder").unwrap();
    two_stores(
        &env,
        local_far(),
        &format!(
            "backup = \"*/2 * * * * *\"\n[service]\nlisten = \"127.0.0.1:0\"\n\n[notify]\nwebhook_url = \"{}\"\n",
            hook.url("/hook")
        ),
    );
    let mut svc = util::Service::start(&env);
    svc.wait_for_line(
        "sync after the backup left a store without some snapshot",
        30,
    );
    // Let the alert of that run arrive.
    std::thread::sleep(std::time::Duration::from_millis(500));
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    svc.wait_exit(15);
    let bodies: Vec<String> = hook
        .hits()
        .into_iter()
        .filter(|h| h.path.starts_with("/hook"))
        .map(|h| h.body)
        .collect();
    let backups = bodies
        .iter()
        .filter(|b| b.contains("\"backup_failed\""))
        .count();
    assert!(backups >= 1, "{bodies:?}\n{}", svc.log());
    assert!(
        bodies.iter().all(|b| !b.contains("\"sync_failed\"")),
        "{bodies:?}"
    );
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("reached near but not far")),
        "{bodies:?}"
    );
}

/// A drill that finds another store's copy differing is a failed drill in the metrics too.
#[test]
fn a_drill_that_finds_a_differing_copy_is_a_failed_drill_in_the_metrics() {
    let env = TestEnv::new();
    two_stores(&env, local_far(), "");
    let id = env.backup();
    let far_obj = env
        .path("far")
        .join("market")
        .join(&id)
        .join("db.sqlite.gz");
    let len = std::fs::metadata(&far_obj).unwrap().len();
    util::flip_byte(&far_obj, len / 2);
    two_stores(
        &env,
        local_far(),
        "drill = \"* * * * * *\"\n[service]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut svc = util::Service::start(&env);
    let addr = svc.addr();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let series = "guardian_drill_last_result{db=\"market\"}";
    let value = loop {
        let (_, text) = util::http_get(&addr, "/metrics");
        if let Some(v) = util::metric(&text, series) {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{text}\n{}",
            svc.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    svc.wait_exit(15);
    assert_eq!(value, 0.0, "{}", svc.log());
}

/// One id, two different manifests (a copy was changed behind guardian's back): every
/// command notices, none uses or spreads the changed copy as good.
#[test]
fn two_manifests_for_one_id_are_noticed_and_the_changed_copy_is_passed_over() {
    let env = TestEnv::new();
    two_stores(&env, local_far(), "");
    let id = env.backup();
    let far_manifest = env
        .path("far")
        .join("market")
        .join(&id)
        .join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&far_manifest).unwrap()).unwrap();
    m["source_path"] = "/elsewhere/market.db".into();
    std::fs::write(&far_manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let v = env.run(&["verify", "--all"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout.contains("differs"), "{}", v.stdout);
    let s = env.run(&["status"]).expect_code(1);
    assert!(s.stdout.contains("manifest differs"), "{}", s.stdout);
    let sync = env.run(&["sync"]);
    assert_eq!(sync.code, 2, "{sync:?}");
    assert!(
        format!("{}{}", sync.stdout, sync.stderr).contains("another manifest"),
        "{sync:?}"
    );
    let r = env.run(&["restore", "--latest", "--to", "back.db"]).ok();
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("from store near"),
        "{r:?}"
    );
    let list = env.run(&["list"]).ok();
    assert!(list.stdout.contains("far(damaged)"), "{}", list.stdout);
    // The drill finds it too, and records a failed verdict that far's catalog takes.
    let d = env.run(&["drill"]);
    assert_eq!(d.code, 1, "{d:?}");
    let listed = env.run(&["list", "--json", "--store", "far"]).ok();
    let v: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(v[0]["status"], "failed", "{v}");
}

#[test]
fn after_sync_fills_the_store_that_missed_a_snapshot_status_is_healthy_again() {
    let env = TestEnv::new();
    std::fs::write(env.path("far"), b"not a folder").unwrap();
    two_stores(&env, local_far(), "");
    env.run(&["backup"]).expect_code(2);
    std::fs::remove_file(env.path("far")).unwrap();
    env.run(&["status"]).expect_code(1);
    env.run(&["sync"]).ok();
    let s = env.run(&["status"]);
    assert_eq!(s.code, 0, "{s:?}");
}

#[test]
fn two_stores_that_are_one_folder_through_a_symlink_are_refused() {
    let env = TestEnv::new();
    std::fs::create_dir(env.path("a")).unwrap();
    std::os::unix::fs::symlink(env.path("a"), env.path("alink")).unwrap();
    let text = "[[stores]]\nname = \"a\"\npath = \"a\"\n[[stores]]\nname = \"b\"\npath = \"alink\"\n[[databases]]\nname = \"market\"\npath = \"market.db\"\n";
    std::fs::write(&env.config, text).unwrap();
    let r = env.run(&["backup"]).expect_code(2);
    assert!(
        r.error_line()
            .contains("stores[1]: the same place as stores[0]"),
        "{}",
        r.error_line()
    );
}
