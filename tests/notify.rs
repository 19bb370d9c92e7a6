//! Notifications against a local HTTP listener: the webhook body (Slack `text`), heartbeat
//! pings (`/start`, then `<url>` or `/fail`, in order, from the CLI and the service), retries,
//! time limits (with paused time), secrets never printed, and a dead webhook or heartbeat never
//! changing a backup's outcome.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guardian::config::NotifyConfig;
use guardian::notify::{Event, Notifier};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::util::TestEnv;

/// One request the hook received.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: String,
    /// When the request arrived.
    pub(crate) at: std::time::SystemTime,
}

/// A local HTTP listener on 127.0.0.1:0, served by its own thread, answering with the
/// scripted statuses in order and 200 after that.
pub(crate) struct Hook {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Hook {
    pub(crate) fn start(script: &[u16]) -> Hook {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(
            script.iter().copied().collect::<VecDeque<u16>>(),
        ));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let sink = Arc::clone(&hits);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (sink, script) = (Arc::clone(&sink), Arc::clone(&script));
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (sink, script) = (Arc::clone(&sink), Arc::clone(&script));
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                sink.lock().unwrap().push(Hit {
                                    method,
                                    path,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                    at: std::time::SystemTime::now(),
                                });
                                let status = script.lock().unwrap().pop_front().unwrap_or(200);
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from("ok")))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        Hook { addr, hits }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

fn notifier(cfg: NotifyConfig) -> Notifier {
    Notifier::from_config(&cfg)
        .unwrap()
        .with_retry_delay(Duration::from_millis(10))
}

fn failed() -> Event {
    Event::BackupFailed {
        db: "market".into(),
        error: "database file /data/market.db does not exist".into(),
    }
}

fn ok() -> Event {
    Event::BackupOk {
        db: "market".into(),
        id: "20261124T030000Z-a1b2c3d4".into(),
        seconds: 1.5,
        stored_bytes: 2048,
    }
}

#[tokio::test]
async fn failure_posts_slack_text_and_pings_heartbeat_fail() {
    let hook = Hook::start(&[]);
    let n = notifier(NotifyConfig {
        webhook_url: Some(hook.url("/hook/s3cr3t")),
        heartbeat_url: Some(hook.url("/ping/abc")),
        ..NotifyConfig::default()
    });
    n.send(&failed()).await;
    let hits = hook.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    let post = hits.iter().find(|h| h.method == "POST").unwrap();
    assert_eq!(post.path, "/hook/s3cr3t");
    let body: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("backup of market FAILED") && text.contains("does not exist"),
        "{text}"
    );
    assert_eq!(body["guardian"]["event"], "backup_failed");
    assert_eq!(body["guardian"]["ok"], false);
    assert!(
        hits.iter()
            .any(|h| h.method == "GET" && h.path == "/ping/abc/fail"),
        "{hits:?}"
    );
}

#[tokio::test]
async fn success_pings_the_heartbeat_and_posts_only_when_asked() {
    let hook = Hook::start(&[]);
    let quiet = notifier(NotifyConfig {
        webhook_url: Some(hook.url("/hook")),
        heartbeat_url: Some(hook.url("/ping/abc/")),
        ..NotifyConfig::default()
    });
    quiet.send(&ok()).await;
    let hits = hook.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        (hits[0].method.as_str(), hits[0].path.as_str()),
        ("GET", "/ping/abc/")
    );

    let chatty = notifier(NotifyConfig {
        webhook_url: Some(hook.url("/hook")),
        notify_on_success: true,
        ..NotifyConfig::default()
    });
    chatty.send(&ok()).await;
    let post = hook
        .hits()
        .into_iter()
        .find(|h| h.method == "POST")
        .expect("success posted");
    assert!(post.body.contains("backup of market ok"), "{}", post.body);
    // Drills never ping the backup heartbeat.
    chatty
        .send(&Event::DrillOk {
            db: "market".into(),
            snapshot: "x".into(),
            seconds: 1.0,
        })
        .await;
    assert_eq!(hook.hits().iter().filter(|h| h.method == "GET").count(), 1);
}

#[tokio::test]
async fn transient_errors_are_retried_and_client_errors_are_not() {
    let hook = Hook::start(&[500, 503]);
    let n = notifier(NotifyConfig {
        webhook_url: Some(hook.url("/hook")),
        ..NotifyConfig::default()
    });
    n.send(&failed()).await;
    assert_eq!(hook.hits().len(), 3, "two failures then success");

    let hook = Hook::start(&[404, 404, 404]);
    let n = notifier(NotifyConfig {
        webhook_url: Some(hook.url("/hook")),
        ..NotifyConfig::default()
    });
    n.send(&failed()).await;
    assert_eq!(
        hook.hits().len(),
        1,
        "a 404 is a wrong URL: retrying cannot help"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_webhook_costs_at_most_three_time_limits() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let n = Notifier::from_config(&NotifyConfig {
        webhook_url: Some(format!("http://{addr}/hook")),
        timeout: Some("10s".into()),
        ..NotifyConfig::default()
    })
    .unwrap();
    let started = tokio::time::Instant::now();
    let wall = std::time::Instant::now();
    n.send(&failed()).await;
    let waited = started.elapsed();
    // 3 attempts of 10 s plus the 1 s and 2 s pauses, in virtual time; no real waiting.
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(40),
        "{waited:?}"
    );
    assert!(wall.elapsed() < Duration::from_secs(10));
}

#[test]
fn cli_backup_notifies_without_printing_secrets_and_survives_a_dead_webhook() {
    let hook = Hook::start(&[]);
    let env = TestEnv::new();
    std::fs::write(
        env.path("hook.url"),
        format!("{}\n", hook.url("/hook/T0/B0/s3cr3t")),
    )
    .unwrap();
    env.write_config(&format!(
        "\n[notify]\nwebhook_url_file = \"hook.url\"\nheartbeat_url = \"{}\"\n",
        hook.url("/ping/s3cr3t-uuid")
    ));
    // The config is appended after [[databases]]: [notify] is a top-level table, so it is fine.
    let id = env.backup();
    assert!(
        hook.hits()
            .iter()
            .any(|h| h.method == "GET" && h.path == "/ping/s3cr3t-uuid"),
        "{:?}",
        hook.hits()
    );

    std::fs::rename(&env.db, env.path("away.db")).unwrap();
    let r = env.run(&["backup"]).expect_code(2);
    let hits = hook.hits();
    let post = hits
        .iter()
        .find(|h| h.method == "POST")
        .expect("failure posted");
    assert!(
        post.body.contains("FAILED") && post.body.contains("does not exist"),
        "{}",
        post.body
    );
    assert!(
        hits.iter().any(|h| h.path == "/ping/s3cr3t-uuid/fail"),
        "{hits:?}"
    );
    assert!(
        !r.stderr.contains("s3cr3t") && !r.stdout.contains("s3cr3t"),
        "{}",
        r.stderr
    );
    assert!(!id.is_empty());

    // A dead webhook is logged (redacted) and never fails the backup.
    std::fs::rename(env.path("away.db"), &env.db).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(env.path("hook.url"), format!("http://{dead}/hook/s3cr3t\n")).unwrap();
    env.write_config("\n[notify]\nwebhook_url_file = \"hook.url\"\nnotify_on_success = true\n");
    let r = env.run(&["backup"]).ok();
    assert_eq!(r.stdout.trim().lines().count(), 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("notification could not be delivered"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("http://{dead}/…")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("s3cr3t"), "{}", r.stderr);
}

#[test]
fn bad_notify_settings_are_one_line_config_errors_without_the_secret() {
    let env = TestEnv::new();
    std::fs::write(env.path("hook.url"), "hooks.example.com/s3cr3t\n").unwrap();
    env.write_config("\n[notify]\nwebhook_url_file = \"hook.url\"\n");
    let r = env.run(&["backup"]).expect_code(2);
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("notify.webhook_url_file") && !r.stderr.contains("s3cr3t"),
        "{}",
        r.stderr
    );

    env.write_config("\n[notify]\nwebhook_url = \"ftp://x/s3cr3t\"\n");
    let r = env.run(&["status"]).expect_code(2);
    assert!(
        r.stderr.contains("notify.webhook_url") && !r.stderr.contains("s3cr3t"),
        "{}",
        r.stderr
    );

    std::fs::write(env.path("hook.url"), "http://127.0.0.1:9/hook\n").unwrap();
    env.write_config("\n[notify]\nwebhook_url_file = \"hook.url\"\n");
    let r = run_with_env(
        &env,
        &["backup"],
        "GUARDIAN_WEBHOOK_URL",
        "http://127.0.0.1:9/other",
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("given more than once"), "{}", r.stderr);
}

fn run_with_env(env: &TestEnv, args: &[&str], key: &str, value: &str) -> crate::util::Run {
    crate::util::run(env.command().args(args).env(key, value))
}

#[test]
fn secrets_in_files_readable_by_others_are_warned_about_without_the_secret() {
    use std::os::unix::fs::PermissionsExt;
    let hook = Hook::start(&[]);
    let env = TestEnv::new();
    let warning = "readable by other users; chmod 600 it";
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // The warning line of a backup that must warn (and never print the secret).
    let warned = |env: &TestEnv| {
        let r = env.run(&["backup"]).ok();
        assert!(!r.stderr.contains("s3cr3t"), "{}", r.stderr);
        let line = r.stderr.lines().find(|l| l.contains(warning));
        line.unwrap_or_else(|| panic!("{}", r.stderr)).to_string()
    };
    // A URL file that others can read: warned about, by key, never printed.
    std::fs::write(env.path("hook.url"), hook.url("/hook/s3cr3t")).unwrap();
    chmod(&env.path("hook.url"), 0o644);
    env.write_config("\n[notify]\nwebhook_url_file = \"hook.url\"\n");
    chmod(&env.config, 0o600);
    let line = warned(&env);
    assert!(
        line.contains("notify.webhook_url_file") && line.contains("644"),
        "{line}"
    );
    chmod(&env.path("hook.url"), 0o600);
    let r = env.run(&["backup"]).ok();
    assert!(!r.stderr.contains(warning), "{}", r.stderr);
    // The URL inline in a config file that others can read: the same.
    env.write_config(&format!(
        "\n[notify]\nheartbeat_url = \"{}\"\n",
        hook.url("/ping/s3cr3t")
    ));
    chmod(&env.config, 0o640);
    let line = warned(&env);
    assert!(line.contains("notify.heartbeat_url"), "{line}");
    chmod(&env.config, 0o600);
    assert!(!env.run(&["backup"]).ok().stderr.contains(warning));
}

/// The heartbeat pings the hook received, in order.
fn pings(hook: &Hook) -> Vec<String> {
    hook.hits()
        .into_iter()
        .filter(|h| h.method == "GET" && h.path.starts_with("/ping/"))
        .map(|h| h.path)
        .collect()
}

#[test]
fn heartbeat_pings_start_then_success_once_the_manifest_is_stored_or_fail() {
    let hook = Hook::start(&[]);
    let env = TestEnv::new();
    // A healthchecks.io run id in the query: the suffixes go before it.
    env.write_config(&format!(
        "\n[notify]\nheartbeat_url = \"{}\"\n",
        hook.url("/ping/uuid?rid=7")
    ));
    let id = env.backup();
    assert_eq!(pings(&hook), ["/ping/uuid/start?rid=7", "/ping/uuid?rid=7"]);
    // The success ping left only after the manifest was stored.
    let manifest = env.snapshot_dir(&id).join("manifest.json");
    let stored = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    let success = hook.hits().into_iter().last().unwrap();
    assert!(stored <= success.at, "{stored:?} > {:?}", success.at);

    std::fs::rename(&env.db, env.path("away.db")).unwrap();
    env.run(&["backup"]).expect_code(2);
    assert_eq!(
        pings(&hook)[2..],
        ["/ping/uuid/start?rid=7", "/ping/uuid/fail?rid=7"]
    );
    std::fs::rename(env.path("away.db"), &env.db).unwrap();
}

#[test]
fn failing_heartbeat_pings_never_change_the_exit_code() {
    // Every ping is refused (404 is not retried: a wrong URL).
    let hook = Hook::start(&[404; 8]);
    let env = TestEnv::new();
    env.write_config(&format!(
        "\n[notify]\nheartbeat_url = \"{}\"\n",
        hook.url("/ping/uuid")
    ));
    let r = env.run(&["backup"]).ok();
    assert_eq!(r.stdout.trim().lines().count(), 1, "{}", r.stdout);
    assert_eq!(
        r.stderr
            .matches("notification could not be delivered")
            .count(),
        2,
        "{}",
        r.stderr
    );
    std::fs::rename(&env.db, env.path("away.db")).unwrap();
    let r = env.run(&["backup"]).expect_code(2);
    assert!(r.error_line().contains("does not exist"), "{}", r.stderr);
    assert_eq!(
        pings(&hook),
        [
            "/ping/uuid/start",
            "/ping/uuid",
            "/ping/uuid/start",
            "/ping/uuid/fail"
        ]
    );
}

#[test]
fn scheduled_backups_ping_start_then_their_outcome_in_order() {
    let hook = Hook::start(&[]);
    let env = TestEnv::new();
    env.write_config(&format!(
        "backup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n\n[notify]\nheartbeat_url = \"{}\"\n",
        hook.url("/ping/svc")
    ));
    let mut svc = crate::util::Service::start(&env);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pings(&hook).iter().filter(|p| *p == "/ping/svc").count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}\n{}",
            pings(&hook),
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(svc.wait_exit(20), 0, "{}", svc.log());
    // start, outcome, start, outcome, ... (a backup cut short by the stop may end the list
    // with a start that has no outcome).
    let got = pings(&hook);
    for (i, pair) in got.chunks(2).enumerate() {
        assert_eq!(pair[0], "/ping/svc/start", "ping {}: {got:?}", 2 * i);
        if let Some(outcome) = pair.get(1) {
            assert_eq!(outcome, "/ping/svc", "ping {}: {got:?}", 2 * i + 1);
        }
    }
}
