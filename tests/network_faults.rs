//! Faults in the network between guardian and its S3 store, injected by the TCP proxy of
//! `fault_proxy.rs`: connections refused, reset mid-upload, 500 and 503 answers, answers lost
//! after the write happened, stalls, slow answers. Transient faults are retried and the backup
//! succeeds; persistent ones fail in bounded time with one clear line and exit 2; nothing
//! partial is ever listed; the service rides out an outage and its next scheduled run succeeds.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::fault_proxy::{Fault, FaultProxy, Requests, Rule};
use crate::s3_cli::{run, s3_env};
use crate::s3_server::{external, unique_prefix, S3Server, S3Target};
use crate::util::{self, metric, Service, TestEnv};

/// `storage.timeout` in these tests: a stalled request costs this, per attempt.
const TIMEOUT: &str = "2s";

/// A world whose store is `upstream` seen through a fault proxy, with a database big enough
/// (12 MiB, incompressible) for a multipart upload of three parts.
fn proxied(upstream: &S3Target, test: &str) -> (FaultProxy, S3Target, TestEnv) {
    let proxy = FaultProxy::start(&upstream.endpoint);
    let target = S3Target {
        endpoint: proxy.endpoint.clone(),
        ..upstream.clone()
    };
    let env = s3_env(&target, &unique_prefix(test));
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(
        "force_path_style = true\n",
        &format!("force_path_style = true\ntimeout = \"{TIMEOUT}\"\n"),
    );
    std::fs::write(&env.config, cfg).unwrap();
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.execute_batch(
        "CREATE TABLE blob (b); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO blob SELECT randomblob(4096) FROM n;",
    )
    .unwrap();
    (proxy, target, env)
}

fn rule(to: Requests, fault: Fault, times: usize) -> Option<Rule> {
    Some(Rule { to, fault, times })
}

/// Every listed snapshot is complete and its data matches its manifest (`verify --all`).
fn assert_nothing_partial(env: &TestEnv, target: &S3Target) -> Vec<String> {
    let r = run(env, target, &["list", "--json"]).ok();
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert!(list.iter().all(|s| s["status"] != "failed"), "{list:#?}");
    if !list.is_empty() {
        run(env, target, &["verify", "--all"]).ok();
    }
    list.iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `guardian backup`, expected to succeed: the new snapshot's id.
fn backup(env: &TestEnv, target: &S3Target) -> String {
    run(env, target, &["backup"]).ok().stdout.trim().to_string()
}

/// A snapshot's status in `list --json`.
fn status_of(env: &TestEnv, target: &S3Target, id: &str) -> String {
    let r = run(env, target, &["list", "--json"]).ok();
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let s = list.iter().find(|s| s["id"] == id).expect("listed");
    s["status"].as_str().unwrap().to_string()
}

/// `restore --latest` gives a database equal to the source.
fn assert_latest_restores(env: &TestEnv, target: &S3Target) {
    let to = env.path(&format!("restored-{}.db", util::rand_u32()));
    run(
        env,
        target,
        &["restore", "--latest", "--to", to.to_str().unwrap()],
    )
    .ok();
    assert_eq!(util::integrity(&to), "ok");
    assert_eq!(util::dump_hash(&to), util::dump_hash(&env.db));
}

/// Faults that come and go; each must cost a retry, never the backup.
fn transient_faults_are_retried(upstream: &S3Target) {
    let (proxy, target, env) = proxied(upstream, "net-transient");
    let mib = 1 << 20;
    let scenarios: Vec<(&str, Option<Rule>)> = vec![
        ("connection refused for 300 ms", None),
        (
            "reset 1 MiB into a part",
            rule(Requests::UploadPart, Fault::ResetAfter(mib), 1),
        ),
        (
            "reset inside the manifest",
            rule(Requests::PutObject, Fault::ResetAfter(10), 1),
        ),
        (
            "reset before any request body",
            rule(Requests::Any, Fault::ResetAfter(0), 2),
        ),
        (
            "500 InternalError",
            rule(Requests::Any, Fault::Status(500), 3),
        ),
        (
            "503 ServiceUnavailable",
            rule(Requests::Any, Fault::Status(503), 3),
        ),
        (
            "503 on every part once",
            rule(Requests::UploadPart, Fault::Status(503), 3),
        ),
        (
            "manifest written, answer lost",
            rule(Requests::PutObject, Fault::LoseAnswer, 1),
        ),
        (
            "upload started, answer lost",
            rule(Requests::StartUpload, Fault::LoseAnswer, 1),
        ),
        (
            "upload completed, answer lost",
            rule(Requests::CompleteUpload, Fault::LoseAnswer, 1),
        ),
        (
            "a part stored, answer lost",
            rule(Requests::UploadPart, Fault::LoseAnswer, 1),
        ),
        ("listing stalls", rule(Requests::List, Fault::Stall, 1)),
        ("size check stalls", rule(Requests::Head, Fault::Stall, 1)),
        (
            "every answer 150 ms late",
            rule(
                Requests::Any,
                Fault::Delay(Duration::from_millis(150)),
                usize::MAX,
            ),
        ),
    ];
    let mut ids = Vec::new();
    let mut report = Vec::new();
    let (mut requests, mut faults) = (0, 0);
    for (name, rule) in &scenarios {
        let before = proxy.counts();
        let Some(rule) = rule else {
            proxy.refuse(true);
            let p = &proxy;
            std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    p.refuse(false);
                });
                let t0 = Instant::now();
                let r = run(&env, &target, &["backup"]);
                report.push(format!("{name}: exit {} in {:.1?}", r.code, t0.elapsed()));
                assert_eq!(r.code, 0, "{name}: {r:?}");
                ids.push(r.stdout.trim().to_string());
            });
            continue;
        };
        proxy.inject(rule.to, rule.fault, rule.times);
        let t0 = Instant::now();
        let r = run(&env, &target, &["backup"]);
        let took = t0.elapsed();
        let after = proxy.counts();
        proxy.heal();
        let injected = after.1 - before.1;
        requests += after.0 - before.0;
        faults += injected;
        report.push(format!(
            "{name}: {injected} faults in {} requests, exit {} in {took:.1?}",
            after.0 - before.0,
            r.code
        ));
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert!(injected > 0, "{name}: no fault was injected");
        ids.push(r.stdout.trim().to_string());
    }
    // Every backup is listed, complete, and matches its manifest; the newest restores.
    let mut listed = assert_nothing_partial(&env, &target);
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    assert_latest_restores(&env, &target);
    eprintln!(
        "transient network faults ({}), {} scenarios, {} backups, all succeeded; {faults} faults injected in {requests} requests (plus 300 ms of refused connections):\n  {}",
        target.name,
        scenarios.len(),
        ids.len(),
        report.join("\n  ")
    );
}

#[test]
fn transient_network_faults_are_retried_and_every_backup_succeeds() {
    let server = S3Server::start();
    transient_faults_are_retried(&server.target);
}

#[test]
fn transient_network_faults_are_retried_against_the_external_server() {
    let Some(target) = external() else {
        return;
    };
    transient_faults_are_retried(&target);
}

#[test]
fn persistent_network_faults_fail_in_bounded_time_with_one_line() {
    let server = S3Server::start();
    let (proxy, target, env) = proxied(&server.target, "net-persistent");
    let first = backup(&env, &target);
    let forever = usize::MAX;
    let scenarios: Vec<(&str, Option<Rule>, &[&str])> = vec![
        ("port closed", None, &["refused"]),
        (
            "every connection reset",
            rule(Requests::Any, Fault::ResetAfter(0), forever),
            &["connection kept breaking"],
        ),
        (
            "every part reset",
            rule(Requests::UploadPart, Fault::ResetAfter(64 * 1024), forever),
            &["connection kept breaking"],
        ),
        (
            "500 on everything",
            rule(Requests::Any, Fault::Status(500), forever),
            &["InternalError", "500"],
        ),
        (
            "503 on everything",
            rule(Requests::Any, Fault::Status(503), forever),
            &["ServiceUnavailable", "503"],
        ),
        (
            "503 on the manifest",
            rule(Requests::PutObject, Fault::Status(503), forever),
            &["manifest", "503"],
        ),
        (
            "every request stalls",
            rule(Requests::Any, Fault::Stall, forever),
            &["storage.timeout"],
        ),
    ];
    let mut report = Vec::new();
    for (name, rule, needles) in &scenarios {
        match rule {
            None => proxy.refuse(true),
            Some(rule) => proxy.inject(rule.to, rule.fault, rule.times),
        }
        let t0 = Instant::now();
        let r = run(&env, &target, &["backup"]);
        let took = t0.elapsed();
        proxy.heal();
        assert_eq!(r.code, 2, "{name}: {r:?}");
        let line = r.error_line().to_string();
        assert!(needles.iter().any(|n| line.contains(n)), "{name}: {line}");
        // Bounded: four attempts with backoff (a stall costs storage.timeout each).
        assert!(took < Duration::from_secs(40), "{name}: took {took:?}");
        report.push(format!("{name}: exit 2 in {took:.1?}: {line}"));
        // Nothing partial is listed once the store is back.
        assert_eq!(
            assert_nothing_partial(&env, &target),
            vec![first.clone()],
            "{name}"
        );
    }
    // The data of the snapshot whose manifest could not be written stays as an orphan (its
    // manifest might have landed with the answer lost: deleting the data could leave a manifest
    // without it); status counts it, and prune removes it after the grace period.
    let r = run(&env, &target, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(status[0]["orphans"], 1, "{status:#}");
    // The store is back: the next backup works and restores.
    let second = backup(&env, &target);
    let mut listed = assert_nothing_partial(&env, &target);
    listed.sort();
    assert_eq!(listed, vec![first, second]);
    assert_latest_restores(&env, &target);
    eprintln!(
        "persistent network faults, {} scenarios, each failed cleanly:\n  {}",
        scenarios.len(),
        report.join("\n  ")
    );
}

#[test]
fn the_service_rides_out_a_store_outage_and_the_next_scheduled_run_succeeds() {
    let server = S3Server::start();
    let (proxy, target, env) = proxied(&server.target, "net-service");
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{cfg}backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    // The store is down before the service starts, and stays down for a few runs.
    proxy.refuse(true);
    let mut cmd = env.command();
    target.credentials_env(&mut cmd);
    let mut svc = Service::spawn(
        cmd.args(["--log-format", "json", "run"])
            .stdout(std::process::Stdio::null()),
    );
    let addr = svc.addr();
    let fails = "guardian_failures_total{db=\"market\",job=\"backup\"}";
    let ok_runs = "guardian_job_runs_total{db=\"market\",job=\"backup\",outcome=\"ok\"}";
    let wait_for = |svc: &Service, series: &str, at_least: f64, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, text) = util::http_get(&addr, "/metrics");
            if metric(&text, series).unwrap_or(0.0) >= at_least {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never reached {at_least}:\n{text}\n{}",
                svc.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let down = wait_for(&svc, fails, 2.0, 60);
    assert_eq!(metric(&down, ok_runs).unwrap_or(0.0), 0.0, "{down}");
    assert!(svc.child.try_wait().unwrap().is_none(), "the service died");
    assert_eq!(util::http_get(&addr, "/healthz").0, 200);
    // Then 503s for a while: still failing, still alive.
    proxy.refuse(false);
    proxy.inject(Requests::Any, Fault::Status(503), usize::MAX);
    let failed_so_far = metric(&down, fails).unwrap();
    wait_for(&svc, fails, failed_so_far + 1.0, 60);
    // The store is back: the next scheduled run succeeds.
    proxy.heal();
    let up = wait_for(&svc, ok_runs, 1.0, 60);
    assert!(metric(
        &up,
        "guardian_backup_last_success_timestamp_seconds{db=\"market\"}"
    )
    .is_some());
    svc.wait_for_line("scheduled backup failed", 1);
    svc.wait_for_line("scheduled backup succeeded", 1);
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(20), 0, "{}", svc.log());
    assert!(!assert_nothing_partial(&env, &target).is_empty());
    assert_latest_restores(&env, &target);
    eprintln!(
        "service outage: {} failed scheduled backups, then {} ok after the store came back",
        metric(&up, fails).unwrap(),
        metric(&up, ok_runs).unwrap()
    );
}

#[test]
fn restores_and_drills_ride_out_download_faults_and_never_call_a_good_snapshot_damaged() {
    let server = S3Server::start();
    download_faults_are_ridden_out(&server.target);
}

#[test]
fn download_faults_are_ridden_out_against_the_external_server() {
    let Some(target) = external() else {
        return;
    };
    download_faults_are_ridden_out(&target);
}

/// Restores and drills through a proxy that breaks downloads: each broken range is asked
/// again for its rest and the restore is byte for byte; a download that keeps breaking is an
/// operational error that touches nothing and never calls the snapshot damaged.
fn download_faults_are_ridden_out(upstream: &S3Target) {
    let (proxy, target, env) = proxied(upstream, "net-download");
    let id = backup(&env, &target);
    let mib = 1 << 20;
    let scenarios = [
        (
            "download cut 1 MiB in",
            Requests::GetData,
            Fault::CutAnswer(mib),
            1,
        ),
        (
            "download cut twice",
            Requests::GetData,
            Fault::CutAnswer(3 * mib),
            2,
        ),
        (
            "manifest download cut",
            Requests::GetObject,
            Fault::CutAnswer(300),
            1,
        ),
        (
            "503 on downloads",
            Requests::GetObject,
            Fault::Status(503),
            2,
        ),
        ("answer lost", Requests::GetData, Fault::LoseAnswer, 1),
        // The data comes as several ranged GETs in flight: faults on two of them at once.
        (
            "two ranges cut",
            Requests::GetData,
            Fault::CutAnswer(mib / 2),
            2,
        ),
        ("two ranges lost", Requests::GetData, Fault::LoseAnswer, 2),
        ("a listing stalls", Requests::List, Fault::Stall, 1),
        ("a download stalls", Requests::GetData, Fault::Stall, 1),
        (
            "every answer 150 ms late",
            Requests::Any,
            Fault::Delay(Duration::from_millis(150)),
            usize::MAX,
        ),
    ];
    let mut report = Vec::new();
    for (i, (name, to, fault, times)) in scenarios.iter().enumerate() {
        let before = proxy.counts().1;
        proxy.inject(*to, *fault, *times);
        let out = env.path(&format!("restored-{i}.db"));
        let t0 = Instant::now();
        let r = run(
            &env,
            &target,
            &["restore", "--latest", "--to", out.to_str().unwrap()],
        );
        let took = t0.elapsed();
        let injected = proxy.counts().1 - before;
        proxy.heal();
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert_eq!(util::dump_hash(&out), util::dump_hash(&env.db), "{name}");
        report.push(format!("{name}: {injected} faults, restored in {took:.1?}"));
        assert!(injected > 0, "{name}");
    }
    // The drill too: a cut download is resumed and the snapshot is verified.
    proxy.inject(Requests::GetData, Fault::CutAnswer(2 * mib), 1);
    run(&env, &target, &["drill"]).ok();
    proxy.heal();

    // A download that breaks every time: exit 2 (operational), the target is untouched, and the
    // snapshot is not called damaged, neither in the message nor in the listing.
    let target_db = env.path("live.db");
    std::fs::copy(util::fixture("market.sqlite"), &target_db).unwrap();
    let before = util::dump_hash(&target_db);
    proxy.inject(Requests::GetData, Fault::CutAnswer(mib), usize::MAX);
    let t0 = Instant::now();
    let r = run(
        &env,
        &target,
        &["restore", "--latest", "--to", target_db.to_str().unwrap()],
    );
    let took = t0.elapsed();
    let drill = run(&env, &target, &["drill"]);
    proxy.heal();
    assert_eq!(r.code, 2, "{r:?}");
    let line = r.error_line().to_string();
    assert!(
        !line.contains("damaged") && line.contains("download"),
        "{line}"
    );
    assert_eq!(
        util::dump_hash(&target_db),
        before,
        "the target was touched"
    );
    assert_eq!(
        drill.code, 2,
        "a drill that cannot download is operational: {drill:?}"
    );
    assert_eq!(status_of(&env, &target, &id), "verified");
    report.push(format!(
        "download broken for good: restore exit 2 in {took:.1?}: {line}"
    ));
    eprintln!("download faults:\n  {}", report.join("\n  "));
}

/// SIGINT to a drill, a verify and a prune whose store has stopped answering: each stops at
/// once with exit 2 and its one line on what the interruption left, and the store is whole.
#[test]
fn a_signal_stops_a_drill_a_verify_and_a_prune_each_with_its_line() {
    let server = S3Server::start();
    let (proxy, target, env) = proxied(&server.target, "signal-jobs");
    backup(&env, &target);
    backup(&env, &target);
    let cases: [(&[&str], Requests, &str); 3] = [
        (&["drill"], Requests::GetData, "no verdict was recorded"),
        (
            &["verify", "--all"],
            Requests::GetData,
            "nothing was changed",
        ),
        (
            &["prune"],
            Requests::List,
            "every snapshot still listed is whole",
        ),
    ];
    for (args, to, left) in cases {
        let job = args[0];
        let injected = proxy.counts().1;
        proxy.inject(to, Fault::Stall, usize::MAX);
        let mut cmd = env.command();
        target.credentials_env(&mut cmd);
        // The job is in flight once its request is held by the proxy.
        let (r, took) = util::interrupt_in_flight(cmd.args(args), Signal::SIGINT, job, |_| {
            proxy.counts().1 > injected
        });
        proxy.heal();
        assert!(
            took < Duration::from_secs(10),
            "{job}: it did not stop at once"
        );
        assert_eq!(r.code, 2, "{job}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{job}: {}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("{job} of market interrupted by SIGINT"))
                && r.stderr.contains(left),
            "{job}: {}",
            r.stderr
        );
    }
    // Nothing was left half-done: both snapshots are whole, and the next drill passes.
    assert_eq!(assert_nothing_partial(&env, &target).len(), 2);
    run(&env, &target, &["drill"]).ok();
}
