//! `guardian run`: a real process on 1-second schedules takes snapshots and drills, serves
//! metrics that move, prunes, and stops cleanly on SIGTERM with no partial snapshot; a stop
//! during a long backup waits for it, a second signal cancels it. Plus the in-process API
//! (`service::run` with a oneshot, as mini-redis tests do).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{self, metric, Service, TestEnv};

const FAST: &str = "backup = \"* * * * * *\"\ndrill = \"*/2 * * * * *\"\n\
                    [databases.retention]\nkeep_last = 3\nkeep_delete = \"0s\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n";

/// Poll `list --json` until `ok` holds (up to `secs`).
fn wait_for_list(
    env: &TestEnv,
    secs: u64,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let list = env.list();
        if ok(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "store never reached the expected state: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn service_backs_up_drills_prunes_serves_metrics_and_stops_on_sigterm() {
    let env = TestEnv::new();
    env.write_config(FAST);
    let mut svc = Service::start(&env);
    let addr = svc.addr();

    wait_for_list(&env, 30, |l| {
        l.len() >= 2 && l.iter().any(|s| s["status"] == "verified")
    });
    let (code, body) = util::http_get(&addr, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let ok_runs = "guardian_job_runs_total{db=\"market\",job=\"backup\",outcome=\"ok\"}";
    let (code, first) = util::http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(&first, "guardian_drill_last_result{db=\"market\"}"),
        Some(1.0),
        "{first}"
    );
    assert!(metric(
        &first,
        "guardian_drill_last_success_timestamp_seconds{db=\"market\"}"
    )
    .is_some());
    // The restore time the passed drill measured: the proven recovery time.
    assert!(
        metric(&first, "guardian_drill_restore_seconds{db=\"market\"}").is_some_and(|s| s > 0.0),
        "{first}"
    );
    assert_eq!(
        metric(
            &first,
            "guardian_failures_total{db=\"market\",job=\"backup\"}"
        ),
        Some(0.0)
    );
    std::thread::sleep(Duration::from_millis(2500));
    let (_, second) = util::http_get(&addr, "/metrics");
    assert!(
        metric(&second, ok_runs).unwrap() > metric(&first, ok_runs).unwrap(),
        "backups did not advance:\n{second}"
    );
    let ts = "guardian_backup_last_success_timestamp_seconds{db=\"market\"}";
    assert!(metric(&second, ts).unwrap() > metric(&first, ts).unwrap());
    assert!(metric(&second, "guardian_snapshots{db=\"market\"}").unwrap() >= 1.0);
    assert_eq!(util::http_get(&addr, "/nope").0, 404);

    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
    let log = svc.log();
    assert!(log.contains("guardian service stopped"), "{log}");
    assert!(
        log.contains("scheduled backup succeeded") && log.contains("scheduled drill passed"),
        "{log}"
    );

    // No partial snapshot, no temp file; retention kept it small; the newest restores.
    assert!(
        util::leftovers(&env).is_empty(),
        "{:?}",
        util::leftovers(&env)
    );
    let list = env.list();
    assert!(list.iter().all(|s| s["status"] != "failed"), "{list:#?}");
    assert!(
        list.len() <= 4,
        "keep_last 3 (+ the newest verified): {list:#?}"
    );
    let to = env.path("restored.db");
    env.run(&["restore", "--latest", "--to", to.to_str().unwrap()])
        .ok();
    assert_eq!(util::integrity(&to), "ok");
}

/// A service whose first backup is stuck in flight for as long as the returned connection
/// holds an exclusive lock on the source (the copy retries SQLITE_BUSY): signals then land
/// in the middle of a backup every time, on any machine.
fn stuck_backup(grace: &str) -> (TestEnv, rusqlite::Connection, Service) {
    let env = TestEnv::new();
    env.write_config(&format!(
        "backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"{grace}\"\n"
    ));
    let lock = rusqlite::Connection::open(&env.db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let svc = Service::start(&env);
    svc.wait_for_line("backup started", 30);
    svc.wait_for_line("source busy", 30);
    (env, lock, svc)
}

#[test]
fn stop_during_a_backup_lets_it_finish_within_the_grace_period() {
    let (env, lock, mut svc) = stuck_backup("60s");
    svc.signal(Signal::SIGTERM);
    svc.wait_for_line("waiting for the job in flight", 10);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        svc.child.try_wait().unwrap().is_none(),
        "exited without waiting for the backup"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    assert_eq!(svc.wait_exit(30), 0, "{}", svc.log());
    let log = svc.log();
    assert!(log.contains("scheduled backup succeeded"), "{log}");
    let list = env.list();
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["status"], "unverified");
    assert!(
        util::leftovers(&env).is_empty(),
        "{:?}",
        util::leftovers(&env)
    );
}

#[test]
fn a_backup_still_running_at_the_end_of_the_grace_period_is_cancelled_cleanly() {
    let (env, lock, mut svc) = stuck_backup("1s");
    let stop = Instant::now();
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(20), 0, "{}", svc.log());
    assert!(
        stop.elapsed() < Duration::from_secs(8),
        "{:?}",
        stop.elapsed()
    );
    let log = svc.log();
    assert!(
        log.contains("end of the grace period") && log.contains("cancelled by shutdown"),
        "{log}"
    );
    drop(lock);
    assert!(
        env.list().is_empty(),
        "a cancelled backup published a snapshot"
    );
    assert!(
        util::leftovers(&env).is_empty(),
        "{:?}",
        util::leftovers(&env)
    );
}

#[test]
fn a_second_signal_cancels_the_backup_at_once_and_leaves_no_partial_snapshot() {
    let (env, lock, mut svc) = stuck_backup("60s");
    svc.signal(Signal::SIGTERM);
    svc.wait_for_line("waiting for the job in flight", 10);
    let second = Instant::now();
    svc.signal(Signal::SIGINT);
    assert_eq!(svc.wait_exit(20), 0, "{}", svc.log());
    assert!(
        second.elapsed() < Duration::from_secs(8),
        "a second signal must not wait out the 60 s grace"
    );
    let log = svc.log();
    assert!(
        log.contains("second stop signal") && log.contains("cancelled by shutdown"),
        "{log}"
    );
    assert!(
        env.list().is_empty(),
        "a cancelled backup published a snapshot"
    );
    // The next run cleans up after the interrupted one and succeeds.
    drop(lock);
    env.write_config("");
    env.backup();
    assert_eq!(env.list().len(), 1);
    assert!(
        util::leftovers(&env).is_empty(),
        "{:?}",
        util::leftovers(&env)
    );
    let staging = util::staging_leftovers(&env);
    assert!(staging.is_empty(), "{staging:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_run_returns_when_its_shutdown_future_completes() {
    let env = TestEnv::new();
    env.write_config(FAST);
    let config = guardian::config::Config::load(&env.config).unwrap();
    let app = guardian::app::App::open(config).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(guardian::service::run(
        app,
        async {
            let _ = rx.await;
        },
        std::future::pending(),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.store.join("market").exists()
        || std::fs::read_dir(env.store.join("market")).unwrap().count() == 0
    {
        assert!(Instant::now() < deadline, "no snapshot within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tx.send(()).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run returned")
        .unwrap();
    assert!(out.is_ok(), "{out:?}");
    assert!(
        util::leftovers(&env).is_empty(),
        "{:?}",
        util::leftovers(&env)
    );
}

#[tokio::test]
async fn service_refuses_to_start_without_schedules_or_with_a_busy_port() {
    let env = TestEnv::new();
    let config = guardian::config::Config::load(&env.config).unwrap();
    let app = guardian::app::App::open(config).await.unwrap();
    let e = guardian::service::run(app, std::future::pending(), std::future::pending())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nothing to schedule"), "{e}");
    assert_eq!(e.exit_code(), 2);

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    env.write_config(&format!(
        "backup = \"0 3 * * *\"\n\n[service]\nlisten = \"{}\"\n",
        busy.local_addr().unwrap()
    ));
    let r = env.run(&["run"]).expect_code(2);
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("service.listen") && r.stderr.contains("cannot listen"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_schedules_are_config_errors_naming_the_key() {
    let env = TestEnv::new();
    for (extra, key) in [
        ("backup = \"0 3 * *\"\n", "databases[0].backup"),
        ("drill = \"0 0 1 * mon\"\n", "databases[0].drill"),
        ("incremental = \"*/15 * *\"\n", "databases[0].incremental"),
        (
            "backup = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n",
            "databases[0].timezone",
        ),
        (
            "backup = \"0 3 * * *\"\njitter = \"soon\"\n",
            "databases[0].jitter",
        ),
        (
            "\n[service]\nshutdown_timeout = \"forever\"\n",
            "service.shutdown_timeout",
        ),
        ("\n[service]\nlisten = \"localhost\"\n", "service.listen"),
    ] {
        env.write_config(extra);
        let r = env.run(&["run"]).expect_code(2);
        let lines = r.error_lines();
        assert_eq!(lines.len(), 1, "{extra}: {}", r.stderr);
        assert!(lines[0].contains(key), "{extra}: {}", lines[0]);
    }
}

#[test]
fn the_service_takes_scheduled_incrementals_on_the_newest_full() {
    let env = TestEnv::new();
    // No full schedule: the first scheduled incremental has no base and takes a full, with
    // the reason in the log; the next ones are incrementals on it.
    env.write_config("incremental = \"* * * * * *\"\n");
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let list = wait_for_list(&env, 30, |l| {
        l.iter().filter(|s| s["kind"] == "incremental").count() >= 2
    });
    let full = list
        .iter()
        .find(|s| s["kind"] == "full")
        .expect("a full first");
    assert!(list
        .iter()
        .filter(|s| s["kind"] == "incremental")
        .all(|s| s["base"] == full["id"]));
    let (_, page) = util::http_get(&addr, "/status.json");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let db = &page["databases"][0];
    assert!(db["last_incremental"]["snapshot"].is_string(), "{db}");
    assert!(db["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["what"] == "snapshot" && t["kind"] == "incremental"));
    let (_, metrics) = util::http_get(&addr, "/metrics");
    for kind in ["full", "incremental"] {
        let name =
            format!("guardian_{kind}_backup_last_success_timestamp_seconds{{db=\"market\"}}");
        assert!(metric(&metrics, &name).is_some(), "{name}: {metrics}");
    }
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
    let log = svc.log();
    assert!(
        log.contains("took a full snapshot instead of an incremental"),
        "{log}"
    );
    assert!(log.contains("\"kind\":\"incremental\""), "{log}");
    assert!(env.list().iter().all(|s| s["status"] != "failed"));
}

#[test]
fn status_shows_the_schedules_and_when_they_next_fire() {
    let env = TestEnv::new();
    env.write_config(
        "backup = \"0 3 * * *\"\ndrill = \"30 4 * * sun\"\ntimezone = \"Europe/Paris\"\n",
    );
    env.backup();
    let r = env.run(&["status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let s = &v[0];
    assert_eq!(s["backup_schedule"], "0 3 * * *");
    assert_eq!(s["timezone"], "Europe/Paris");
    // 03:00 in Paris is 01:00 or 02:00 UTC depending on daylight saving.
    let next = s["next_backup_at"].as_str().unwrap();
    assert!(
        next.ends_with("T01:00:00Z") || next.ends_with("T02:00:00Z"),
        "{next}"
    );
    assert!(s["next_drill_at"].as_str().is_some());
    assert_eq!(s["orphans"], 0);
    let text = env.run(&["status"]).ok().stdout;
    assert!(
        text.contains("schedule   backup \"0 3 * * *\" (next "),
        "{text}"
    );
}

#[test]
fn failing_backups_are_loud_and_never_stop_the_service() {
    let hook = crate::notify::Hook::start(&[]);
    let env = TestEnv::new();
    let good = env.backup();
    std::fs::rename(&env.db, env.path("gone.db")).unwrap();
    env.write_config(&format!(
        "backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n\n[notify]\nwebhook_url = \"{}\"\nheartbeat_url = \"{}\"\n",
        hook.url("/hook"),
        hook.url("/ping")
    ));
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let fails = "guardian_failures_total{db=\"market\",job=\"backup\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = util::http_get(&addr, "/metrics");
        if metric(&text, fails).unwrap_or(0.0) >= 2.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "failures not counted:\n{text}\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Still alive and serving; the last success is the stored snapshot's, not moved by failures.
    assert!(svc.child.try_wait().unwrap().is_none());
    assert_eq!(util::http_get(&addr, "/healthz").0, 200);
    let seeded = metric(
        &text,
        "guardian_backup_last_success_timestamp_seconds{db=\"market\"}",
    )
    .unwrap();
    let created: chrono::DateTime<chrono::Utc> = util::read_manifest(&env, &good)["created_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (seeded - created.timestamp_millis() as f64 / 1000.0).abs() < 0.01,
        "{seeded} vs {created}"
    );
    // Each failure was logged once, posted to the webhook and pinged as /fail.
    svc.wait_for_line("scheduled backup failed", 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hook.hits().iter().any(|h| h.path == "/ping/fail")
        || !hook.hits().iter().any(|h| h.method == "POST")
    {
        assert!(Instant::now() < deadline, "{:?}", hook.hits());
        std::thread::sleep(Duration::from_millis(100));
    }
    let post = hook
        .hits()
        .into_iter()
        .find(|h| h.method == "POST")
        .unwrap();
    assert!(
        post.body.contains("backup of market FAILED"),
        "{}",
        post.body
    );
    // `status`, from another process, says so while the backups fail...
    let st = env.run(&["status"]).expect_code(1);
    assert!(st.stdout.contains("last backup failed at"), "{}", st.stdout);
    // Back to normal once the database is back.
    std::fs::rename(env.path("gone.db"), &env.db).unwrap();
    wait_for_list(&env, 20, |l| l.len() >= 2);
    // ...and no longer once one succeeded.
    let st = env.run(&["status"]);
    assert!(!st.stdout.contains("last backup failed"), "{}", st.stdout);
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
}

#[test]
fn a_corrupted_source_is_refused_alerted_and_retention_deletes_nothing() {
    let hook = crate::notify::Hook::start(&[]);
    let env = TestEnv::new();
    let mut good: Vec<String> = (0..3).map(|_| env.backup()).collect();
    good.sort();
    std::fs::copy(util::fixture("corrupt.sqlite"), &env.db).unwrap();
    env.write_config(&format!(
        "backup = \"* * * * * *\"\n[databases.retention]\nkeep_last = 1\n\n[service]\nlisten = \"127.0.0.1:0\"\n\n[notify]\nwebhook_url = \"{}\"\nheartbeat_url = \"{}\"\n",
        hook.url("/hook"),
        hook.url("/ping")
    ));
    // By hand: refused with exit 1 (a verification problem), alerted, nothing published.
    let r = env.run(&["backup"]).expect_code(1);
    assert!(r.error_line().contains("damaged"), "{}", r.stderr);
    // On schedule: refused every time, alerted every time, and keep_last = 1 deletes nothing.
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let fails = "guardian_failures_total{db=\"market\",job=\"backup\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&util::http_get(&addr, "/metrics").1, fails).unwrap_or(0.0) < 3.0 {
        assert!(Instant::now() < deadline, "{}", svc.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
    let hits = hook.hits();
    let posts: Vec<_> = hits.iter().filter(|h| h.method == "POST").collect();
    assert!(posts.len() >= 4, "{hits:?}");
    assert!(
        posts
            .iter()
            .all(|p| p.body.contains("FAILED") && p.body.contains("damaged")),
        "{posts:?}"
    );
    assert!(
        hits.iter().filter(|h| h.path == "/ping/fail").count() >= 4,
        "{hits:?}"
    );
    let mut listed: Vec<String> = env
        .list()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed, good,
        "retention must not run while the source is refused"
    );
}

#[test]
fn a_scheduled_drill_whose_older_snapshot_in_rotation_is_damaged_fails_as_a_whole() {
    let env = TestEnv::new();
    let newest = env.backup();
    let older = util::plant_snapshot(&env, &newest, "2026-01-01T03:00:00Z");
    util::flip_byte(&env.snapshot_dir(&older).join("db.sqlite.gz"), 300);
    env.write_config("drill = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n");
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let failed = svc.wait_for_line("scheduled drill FAILED", 30);
    assert!(
        failed.contains("older snapshot in rotation") && failed.contains(&older),
        "{failed}"
    );
    svc.wait_for_line("scheduled drill passed", 30);
    let (_, text) = util::http_get(&addr, "/metrics");
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
    // The newest passed in the same run, yet the run is failed; later runs (the damaged one is
    // out of the rotation) pass again.
    let log = svc.log();
    let first_run: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("scheduled drill"))
        .take(2)
        .collect();
    assert!(
        first_run[0].contains("scheduled drill passed") && first_run[0].contains(&newest),
        "{first_run:?}"
    );
    assert!(first_run[1].contains("FAILED"), "{first_run:?}");
    assert!(
        metric(
            &text,
            "guardian_failures_total{db=\"market\",job=\"drill\"}"
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert_eq!(util::status_of(&env, &older), "failed");
    assert_eq!(util::status_of(&env, &newest), "verified");
}

/// A `guardian backup` of `env` that stays in flight, holding the database's lock, for as long
/// as the returned connection holds an exclusive lock on the source. Returns it with its pid.
fn held_backup(env: &TestEnv) -> (rusqlite::Connection, std::process::Child, u32) {
    let source_lock = rusqlite::Connection::open(&env.db).unwrap();
    source_lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let child = env
        .command()
        .arg("backup")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lock_file = env.path("staging/guardian-market.lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&lock_file).is_ok_and(|t| t.starts_with(&format!("{pid} "))) {
        assert!(Instant::now() < deadline, "the backup never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    (source_lock, child, pid)
}

#[test]
fn one_job_per_database_at_a_time_across_processes_and_a_killed_holder_frees_it() {
    let hook = crate::notify::Hook::start(&[]);
    let env = TestEnv::new();
    env.write_config(&format!(
        "[databases.retention]\nkeep_last = 1\n\n[notify]\nwebhook_url = \"{}\"\nheartbeat_url = \"{}\"\n",
        hook.url("/hook"),
        hook.url("/ping")
    ));
    let first = env.backup();
    let (source_lock, mut holder, pid) = held_backup(&env);
    // Every other job that works on market's snapshots is refused at once: exit 3, one line
    // naming the holder, no alert (the holder reports its own outcome).
    for args in [&["backup"][..], &["drill"], &["prune"]] {
        let t0 = Instant::now();
        let r = env.run(args).expect_code(3);
        let line = r.error_line();
        assert!(
            line.contains("skipped") && line.contains(&format!("pid {pid} (backup)")),
            "{args:?}: {line}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{args:?} waited");
    }
    let hits = hook.hits();
    assert!(
        !hits
            .iter()
            .any(|h| h.method == "POST" || h.path.ends_with("/fail"))
            && hits.iter().filter(|h| h.path == "/ping/start").count() <= 2,
        "only the first backup and the holder may ping: {hits:?}"
    );
    // Reading is never blocked: the 3 a.m. restore must not wait for a backup.
    env.run(&["list"]).ok();
    env.run(&["prune", "--dry-run"]).ok();
    let out = env.path("restored.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(util::integrity(&out), "ok");
    // SIGKILL the holder: the kernel frees the lock; nothing is left to clear by hand.
    holder.kill().unwrap();
    holder.wait().unwrap();
    drop(source_lock);
    let second = env.backup();
    assert_ne!(first, second);
    env.run(&["drill"]).ok();
}

#[test]
fn the_service_skips_ticks_while_another_process_holds_the_database() {
    let env = TestEnv::new();
    env.write_config("backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n");
    let (source_lock, mut holder, _pid) = held_backup(&env);
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let skipped = "guardian_job_runs_total{db=\"market\",job=\"backup\",outcome=\"skipped\"}";
    let ok = "guardian_job_runs_total{db=\"market\",job=\"backup\",outcome=\"ok\"}";
    let fails = "guardian_failures_total{db=\"market\",job=\"backup\"}";
    let wait_for = |series: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = util::http_get(&addr, "/metrics");
            if metric(&text, series).unwrap_or(0.0) >= 2.0 {
                return text;
            }
            assert!(Instant::now() < deadline, "{series}:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let text = wait_for(skipped);
    assert_eq!(metric(&text, fails).unwrap_or(0.0), 0.0, "{text}");
    assert_eq!(metric(&text, ok).unwrap_or(0.0), 0.0, "{text}");
    svc.wait_for_line("another guardian", 1);
    // The other process goes away: the next ticks back up.
    holder.kill().unwrap();
    holder.wait().unwrap();
    drop(source_lock);
    wait_for(ok);
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
}

#[test]
fn a_lock_that_cannot_be_taken_is_a_failed_job_and_alerted() {
    let hook = crate::notify::Hook::start(&[]);
    let env = TestEnv::new();
    // The staging folder (where the lock lives) is a plain file: nothing can be created there.
    std::fs::write(env.path("staging"), "not a folder").unwrap();
    env.write_config(&format!(
        "backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n\n[notify]\nwebhook_url = \"{}\"\nheartbeat_url = \"{}\"\n",
        hook.url("/hook"),
        hook.url("/ping")
    ));
    // By hand: exit 2 (not 3: nobody else is doing the work), one line, alerted.
    let r = env.run(&["backup"]).expect_code(2);
    assert!(
        r.error_line().contains("failed") && r.error_line().contains("staging"),
        "{}",
        r.stderr
    );
    let posted = |n: usize| hook.hits().iter().filter(|h| h.method == "POST").count() >= n;
    assert!(posted(1), "{:?}", hook.hits());
    assert!(
        hook.hits().iter().any(|h| h.path == "/ping/fail"),
        "{:?}",
        hook.hits()
    );
    // On schedule: a failure, counted and alerted, never a quiet skip.
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let fails = "guardian_failures_total{db=\"market\",job=\"backup\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&util::http_get(&addr, "/metrics").1, fails).unwrap_or(0.0) < 2.0 || !posted(3) {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            hook.hits(),
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
}

#[test]
fn the_service_removes_old_orphans_without_a_retention_table() {
    let env = TestEnv::new();
    let real = env.backup();
    // What a cancelled backup leaves: data without a manifest, here from last month.
    let old = util::plant_old_orphan(&env, &real);
    env.write_config("backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n");
    let mut svc = Service::start(&env);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.snapshot_dir(&old).exists() {
        assert!(Instant::now() < deadline, "orphan kept:\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
    assert!(env.snapshot_dir(&real).exists());
}

/// guardian runs with a fixed glibc mmap threshold (peak RSS stays flat: main.rs): it
/// starts itself again once with it set, keeping its pid; a value the operator set is kept.
#[test]
fn the_process_runs_with_a_fixed_mmap_threshold_and_keeps_its_pid() {
    let env = TestEnv::new();
    env.write_config("backup = \"0 3 * * *\"\n[service]\nlisten = \"127.0.0.1:0\"\n");
    let environ = |svc: &Service| {
        let pid = svc.child.id();
        let text = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        String::from_utf8_lossy(&text).into_owned()
    };
    let mut svc = Service::start(&env);
    svc.addr();
    let text = environ(&svc);
    assert!(
        text.split('\0')
            .any(|v| v == "MALLOC_MMAP_THRESHOLD_=131072"),
        "{text:?}"
    );
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());

    let mut svc = Service::spawn(
        env.command()
            .env("MALLOC_MMAP_THRESHOLD_", "65536")
            .args(["--log-format", "json", "run"])
            .stdout(std::process::Stdio::null()),
    );
    svc.addr();
    let text = environ(&svc);
    assert!(
        text.split('\0')
            .any(|v| v == "MALLOC_MMAP_THRESHOLD_=65536"),
        "{text:?}"
    );
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
}
