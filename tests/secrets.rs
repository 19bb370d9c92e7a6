//! The canary sweep (checklist G.35): with every kind of secret configured at once (S3 secret
//! key and session token, a webhook URL and a heartbeat URL with tokens, an age identity), every
//! command runs at trace level (`-vv`, `GUARDIAN_LOG=trace`), on success and failure paths, and
//! no secret may appear in any stdout or stderr, any webhook body, any object in the store
//! (manifests, drill records), any file left in the staging or test folder, or the metrics.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::notify::Hook;
use crate::s3_server::{S3Server, S3Target, ACCESS_KEY, SECRET_KEY};
use crate::util::{self, Service, TestEnv};

/// Sent with every S3 request; the in-process server signs it but does not check it.
const SESSION_TOKEN: &str = "canary-session-token-3c1d9e7f5a2b";
/// A wrong S3 secret (the failing path): secret even when it is wrong.
const WRONG_SECRET: &str = "canary-wrong-secret-8e4f2a6c0d1b";
const WEBHOOK_TOKEN: &str = "canary-webhook-token-7b3e1f9d5c";
const WEBHOOK_QUERY: &str = "canary-webhook-query-2d8a4c6e0f";
const HEARTBEAT_TOKEN: &str = "canary-heartbeat-uuid-6f0b2d4e8a";
const DEAD_TOKEN: &str = "canary-dead-webhook-token-9a1c3e5b7d";

/// A fresh age identity: (secret key, public key).
fn age_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

/// The config: S3 store, schedules for `guardian run`, retention, the webhook inline (the
/// riskiest place: it is part of the parsed config), encryption with an identity file.
fn write_config(env: &TestEnv, target: &S3Target, notify: &str) {
    let text = format!(
        "{}\n[backup]\nstaging_dir = \"staging\"\n\n\
         [[databases]]\nname = \"market\"\npath = \"market.db\"\n\
         backup = \"* * * * * *\"\ndrill = \"*/2 * * * * *\"\n\
         [databases.retention]\nkeep_last = 2\n\n\
         [notify]\n{notify}\nnotify_on_success = true\ntimeout = \"2s\"\n\n\
         [encryption]\nidentity_file = \"age.key\"\n\n\
         [service]\nlisten = \"127.0.0.1:0\"\n",
        target.storage_toml("secrets")
    );
    std::fs::write(&env.config, text).unwrap();
}

/// Everything a sweep collected, labelled for the failure message.
#[derive(Default)]
struct Haystack {
    items: Vec<(String, Vec<u8>)>,
    runs: usize,
}

impl Haystack {
    fn add(&mut self, label: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.items.push((label.into(), bytes.into()));
    }

    fn add_run(&mut self, args: &[&str], r: &util::Run) {
        self.runs += 1;
        self.add(format!("stdout of {args:?}"), r.stdout.as_bytes());
        self.add(format!("stderr of {args:?}"), r.stderr.as_bytes());
    }

    /// Every file below `dir`, except the inputs that hold secrets by design.
    fn add_files(&mut self, dir: &Path, inputs: &[PathBuf]) -> usize {
        let mut n = 0;
        for p in util::walk(dir) {
            if inputs.contains(&p) {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&p) {
                self.add(p.display().to_string(), bytes);
                n += 1;
            }
        }
        n
    }

    fn text(&self) -> String {
        self.items
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b))
            .collect()
    }

    fn bytes(&self) -> usize {
        self.items.iter().map(|(_, b)| b.len()).sum()
    }

    /// (canary, where) for every occurrence; case-insensitive (bech32 keys print either way).
    fn leaks(&self, canaries: &[String]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (label, bytes) in &self.items {
            // Lossy is safe here: the canaries are ASCII, and ASCII bytes are never replaced.
            let hay = String::from_utf8_lossy(&bytes.to_ascii_lowercase()).into_owned();
            for c in canaries {
                if let Some(at) = hay.find(&c.to_ascii_lowercase()) {
                    // Where it showed up, to find the line that printed it.
                    let from = hay.floor_char_boundary(at.saturating_sub(120));
                    let to = hay.ceil_char_boundary((at + c.len() + 40).min(hay.len()));
                    out.push((c.clone(), format!("{label}: …{}…", &hay[from..to])));
                }
            }
        }
        out
    }
}

#[test]
fn no_secret_appears_anywhere_at_trace_level_on_success_and_failure_paths() {
    let server = S3Server::start();
    let target = &server.target;
    let hook = Hook::start(&[]);
    let env = TestEnv::new();
    let (identity, _) = age_identity();
    let (wrong_identity, _) = age_identity();
    std::fs::write(env.path("age.key"), format!("# test key\n{identity}\n")).unwrap();
    std::fs::write(env.path("wrong.key"), format!("{wrong_identity}\n")).unwrap();
    let webhook = hook.url(&format!(
        "/hook/T0/B0/{WEBHOOK_TOKEN}?token={WEBHOOK_QUERY}"
    ));
    let heartbeat = hook.url(&format!("/ping/{HEARTBEAT_TOKEN}"));
    write_config(&env, target, &format!("webhook_url = \"{webhook}\""));

    // Every command: the S3 keys and session token in the standard variables, the heartbeat
    // from the environment, logs at trace level.
    let guardian = |secret: &str, args: &[&str]| -> Command {
        let mut cmd = env.command();
        target.credentials_env(&mut cmd);
        cmd.env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
            .env("GUARDIAN_HEARTBEAT_URL", &heartbeat)
            .env("GUARDIAN_LOG", "trace")
            .arg("-vv")
            .args(args);
        cmd
    };
    let hay = RefCell::new(Haystack::default());
    let run = |secret: &str, args: &[&str], code: i32| -> util::Run {
        let r = util::run(&mut guardian(secret, args));
        assert!(!r.stderr.contains("panicked"), "{args:?}:\n{}", r.stderr);
        hay.borrow_mut().add_run(args, &r);
        r.expect_code(code)
    };

    // The success paths.
    let first = run(SECRET_KEY, &["backup"], 0).stdout.trim().to_string();
    run(SECRET_KEY, &["backup"], 0);
    run(SECRET_KEY, &["list"], 0);
    run(SECRET_KEY, &["list", "--json"], 0);
    run(SECRET_KEY, &["--log-format", "json", "list"], 0);
    run(SECRET_KEY, &["verify", "--all"], 0);
    run(SECRET_KEY, &["verify", "--json"], 0);
    run(SECRET_KEY, &["drill"], 0);
    run(SECRET_KEY, &["drill", "--snapshot", &first, "--json"], 0);
    run(SECRET_KEY, &["status"], 0);
    run(SECRET_KEY, &["status", "--json"], 0);
    run(SECRET_KEY, &["restore", "--latest", "--to", "r.db"], 0);
    run(SECRET_KEY, &["restore", "--latest", "--dry-run"], 0);
    run(SECRET_KEY, &["prune", "--dry-run", "--json"], 0);
    run(SECRET_KEY, &["prune"], 0);
    run(SECRET_KEY, &["doctor"], 0);
    assert_eq!(util::dump(&env.path("r.db")), util::dump(&env.db));

    // The service, for a few seconds: scheduled backups, drills and prunes, its endpoints.
    let stdout = std::fs::File::create(env.path("service.stdout")).unwrap();
    let mut svc = Service::spawn(
        guardian(SECRET_KEY, &["--log-format", "json", "run"]).stdout(Stdio::from(stdout)),
    );
    let addr = svc.addr();
    svc.wait_for_line("scheduled backup succeeded", 30);
    svc.wait_for_line("scheduled drill passed", 30);
    let (code, metrics) = util::http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("guardian_backup_last_success_timestamp_seconds"));
    hay.borrow_mut().add("/metrics", metrics);
    let (code, health) = util::http_get(&addr, "/healthz");
    assert_eq!(code, 200, "{health}");
    hay.borrow_mut().add("/healthz", health);
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(svc.wait_exit(20), 0, "{}", svc.log());
    let service_log = svc.log();
    assert!(
        service_log.contains("\"level\":\"TRACE\""),
        "the service did not log at trace level"
    );
    hay.borrow_mut().add("stderr of guardian run", service_log);

    // The failure paths. A wrong S3 secret:
    for args in [
        &["backup"][..],
        &["list", "--json"],
        &["status"],
        &["drill"],
    ] {
        let r = run(WRONG_SECRET, args, 2);
        assert!(r.stderr.contains("SignatureDoesNotMatch"), "{}", r.stderr);
    }
    let r = run(WRONG_SECRET, &["doctor"], 1);
    assert!(r.stdout.contains("SignatureDoesNotMatch"), "{}", r.stdout);
    // A missing database: the failure is posted and pinged, with the error text.
    std::fs::rename(&env.db, env.path("away.db")).unwrap();
    run(SECRET_KEY, &["backup"], 2);
    std::fs::rename(env.path("away.db"), &env.db).unwrap();
    // A tampered snapshot: the drill fails (age authentication), is posted, and marks it.
    // (The service's prunes may have deleted the first two: take the newest.)
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&run(SECRET_KEY, &["list", "--json"], 0).stdout).unwrap();
    let newest = list[0]["id"].as_str().unwrap().to_string();
    let data = server.object_file(&format!("secrets/market/{newest}/db.sqlite.gz.age"));
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x80;
    std::fs::write(&data, bytes).unwrap();
    run(SECRET_KEY, &["drill", "--snapshot", &newest], 1);
    run(SECRET_KEY, &["status", "--json"], 1);
    // A wrong age identity: restore fails closed.
    std::fs::rename(env.path("age.key"), env.path("right.key")).unwrap();
    std::fs::copy(env.path("wrong.key"), env.path("age.key")).unwrap();
    run(SECRET_KEY, &["restore", "--latest", "--to", "w.db"], 2);
    run(SECRET_KEY, &["drill"], 2);
    std::fs::rename(env.path("right.key"), env.path("age.key")).unwrap();
    // A webhook and a heartbeat that are down (webhook from a file this time).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        env.path("dead.url"),
        format!("http://{dead}/hook/{DEAD_TOKEN}\n"),
    )
    .unwrap();
    write_config(&env, target, "webhook_url_file = \"dead.url\"");
    let mut dead_run = guardian(SECRET_KEY, &["backup"]);
    dead_run.env(
        "GUARDIAN_HEARTBEAT_URL",
        format!("http://{dead}/ping/{HEARTBEAT_TOKEN}"),
    );
    let r = util::run(&mut dead_run).ok();
    assert!(
        r.stderr.contains("notification could not be delivered"),
        "{}",
        r.stderr
    );
    hay.borrow_mut().add_run(&["backup (dead webhook)"], &r);
    // Notify settings that are wrong: one config error line, without the URL.
    write_config(
        &env,
        target,
        &format!("webhook_url = \"ftp://127.0.0.1/{DEAD_TOKEN}\""),
    );
    let r = util::run(&mut guardian(SECRET_KEY, &["backup"])).expect_code(2);
    assert!(r.stderr.contains("notify.webhook_url"), "{}", r.stderr);
    hay.borrow_mut().add_run(&["backup (bad webhook url)"], &r);
    write_config(&env, target, &format!("webhook_url = \"{webhook}\""));
    let mut twice = guardian(SECRET_KEY, &["backup"]);
    twice.env(
        "GUARDIAN_WEBHOOK_URL",
        format!("http://127.0.0.1:9/{DEAD_TOKEN}"),
    );
    let r = util::run(&mut twice).expect_code(2);
    assert!(r.stderr.contains("given more than once"), "{}", r.stderr);
    hay.borrow_mut()
        .add_run(&["backup (webhook given twice)"], &r);

    // The canaries really were in play: the server saw the session token, the hook saw both
    // URLs with their tokens, and the snapshots were encrypted to the identity.
    assert!(
        server
            .requests()
            .iter()
            .any(|q| q.header("x-amz-security-token") == Some(SESSION_TOKEN)),
        "the session token was never sent"
    );
    let hits = hook.hits();
    assert!(
        hits.iter()
            .any(|h| h.method == "POST" && h.path.contains(WEBHOOK_TOKEN)),
        "{hits:?}"
    );
    for suffix in ["", "/fail"] {
        let path = format!("/ping/{HEARTBEAT_TOKEN}{suffix}");
        assert!(hits.iter().any(|h| h.path == path), "no {path}: {hits:?}");
    }
    for h in &hits {
        hay.borrow_mut().add(
            format!("webhook body {} {}", h.method, h.path),
            h.body.as_bytes(),
        );
    }
    let posts: Vec<&str> = hits.iter().map(|h| h.body.as_str()).collect();
    for event in ["backup_ok", "backup_failed", "drill_ok", "drill_failed"] {
        assert!(posts.iter().any(|b| b.contains(event)), "no {event} posted");
    }

    // The logs really were at trace level, down to the SDK and the HTTP client stack.
    let mut hay = hay.into_inner();
    let text = hay.text();
    assert!(text.contains(" TRACE "), "no trace output");
    assert!(text.contains("aws_smithy_runtime"), "no SDK trace output");
    assert!(
        text.contains("hyper_util::client"),
        "no HTTP client trace output"
    );

    // Everything stored and everything left on disk.
    let inputs = [
        env.config.clone(),
        env.path("age.key"),
        env.path("wrong.key"),
        env.path("dead.url"),
    ];
    let local_files = hay.add_files(env.dir.path(), &inputs);
    let stored = hay.add_files(server.root.path(), &[]);
    assert!(
        util::walk(server.root.path())
            .iter()
            .any(|p| p.to_string_lossy().contains("drill-")),
        "no drill record stored"
    );

    // The canaries: each whole, and a distinctive part of each (a truncated print is a leak).
    let id_data = identity.trim_start_matches("AGE-SECRET-KEY-1");
    let wrong_data = wrong_identity.trim_start_matches("AGE-SECRET-KEY-1");
    let mut canaries: Vec<String> = [
        // Not a secret, but it names the account: no log line needs it.
        ACCESS_KEY,
        SECRET_KEY,
        &SECRET_KEY[14..],
        WRONG_SECRET,
        SESSION_TOKEN,
        WEBHOOK_TOKEN,
        WEBHOOK_QUERY,
        HEARTBEAT_TOKEN,
        DEAD_TOKEN,
        &identity,
        &id_data[..16],
        &id_data[id_data.len() - 16..],
        &wrong_identity,
        &wrong_data[..16],
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    canaries.extend(
        [WEBHOOK_TOKEN, HEARTBEAT_TOKEN, SESSION_TOKEN]
            .iter()
            .map(|c| c["canary-".len()..].to_string()),
    );
    let leaks = hay.leaks(&canaries);
    eprintln!(
        "secrets sweep: {} guardian runs + 1 service run, {} KiB of output, {local_files} local files, \
         {stored} stored objects, {} canaries: {} leaks",
        hay.runs,
        hay.bytes() / 1024,
        canaries.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}
