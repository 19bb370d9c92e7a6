//! The status page of `guardian run` (`/` and `/status.json`), over HTTP.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{self, Service, TestEnv};

fn poll(addr: &str, path: &str, secs: u64, ok: impl Fn(&str) -> bool, svc: &Service) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, body) = util::http_get(addr, path);
        if code == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never became ready:\n{body}\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_status_page_shows_backups_drills_rpo_and_a_timeline() {
    let env = TestEnv::new();
    env.write_config(
        "backup = \"* * * * * *\"\ndrill = \"*/2 * * * * *\"\n[service]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let json = poll(
        &addr,
        "/status.json",
        30,
        |b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["databases"][0]["last_proven_restore_seconds"].is_number()
        },
        &svc,
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let db = &v["databases"][0];
    assert_eq!(db["db"], "market");
    assert_eq!(db["health"], "ok", "{json}");
    assert!(db["last_backup"]["age_seconds"].as_i64().unwrap() < 60);
    assert_eq!(db["last_drill"]["ok"], true);
    assert!(db["effective_rpo_seconds"].as_i64().unwrap() < 60);
    assert!(db["last_incremental"].is_null());
    assert_eq!(db["stores"][0]["name"], "primary");
    assert!(db["stores"][0]["stored_bytes"].as_u64().unwrap() > 0);
    let timeline = db["timeline"].as_array().unwrap();
    assert!(timeline
        .iter()
        .any(|t| t["what"] == "snapshot" && t["kind"] == "full"));
    assert!(timeline
        .iter()
        .any(|t| t["what"] == "drill" && t["status"] == "passed"));

    let (code, page) = util::http_get(&addr, "/");
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    for needle in [
        "market",
        "healthy",
        "Effective RPO",
        "Last backup",
        "Last drill",
        "passed",
        "Last proven restore",
        "Store usage",
        "<svg",
        "snapshots",
        "drills",
        "failures",
    ] {
        assert!(page.contains(needle), "page lacks {needle:?}:\n{page}");
    }
    // One self-contained page: no script, no external asset.
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("src="), "{page}");
    assert!(!page.contains("href=\"http"), "{page}");
    assert!(!page.contains("@import"), "{page}");
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
}

#[test]
fn error_texts_on_the_status_page_are_escaped() {
    let env = TestEnv::new();
    // The error line names the missing database file, whose name is markup.
    env.write_config("backup = \"* * * * * *\"\n[service]\nlisten = \"127.0.0.1:0\"\n");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("path = \"market.db\"", "path = \"<script>alert(1)<!--.db\"");
    std::fs::write(&env.config, text).unwrap();
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let json = poll(
        &addr,
        "/status.json",
        20,
        |b| b.contains("\"last_failure\": {"),
        &svc,
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let db = &v["databases"][0];
    assert_eq!(db["health"], "unhealthy", "{json}");
    let error = db["last_failure"]["error"].as_str().unwrap();
    assert!(error.contains("<script>alert(1)"), "{error}");
    let timeline = db["timeline"].as_array().unwrap();
    assert!(timeline.iter().any(|t| t["what"] == "failure"));

    let (_, page) = util::http_get(&addr, "/");
    assert!(!page.contains("<script"), "unescaped:\n{page}");
    assert!(!page.contains("<!--"), "unescaped:\n{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;!--.db"), "{page}");
    assert!(page.contains("unhealthy"));
    assert!(page.contains("no usable snapshot"));
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
}

/// A drill run from the command line (another process) shows on the page of a running
/// service once it re-reads the store (`service.refresh`), not only after a restart.
#[test]
fn the_page_shows_what_other_processes_did_after_a_refresh() {
    let env = TestEnv::new();
    env.backup();
    // A schedule that never fires while the test runs: only the CLI drills.
    env.write_config(
        "backup = \"0 3 1 1 *\"\n[service]\nlisten = \"127.0.0.1:0\"\nrefresh = \"1s\"\n",
    );
    let mut svc = Service::start(&env);
    let addr = svc.addr();
    let drilled = |b: &str| {
        let v: serde_json::Value = serde_json::from_str(b).unwrap();
        v["databases"][0]["last_drill"]["ok"] == true
    };
    let before = poll(&addr, "/status.json", 10, |_| true, &svc);
    assert!(!drilled(&before), "{before}");
    env.run(&["drill"]).ok();
    let after = poll(&addr, "/status.json", 15, drilled, &svc);
    let v: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert!(
        v["databases"][0]["last_proven_restore_seconds"].is_number(),
        "{after}"
    );
    svc.signal(Signal::SIGTERM);
    assert_eq!(svc.wait_exit(15), 0, "{}", svc.log());
}
