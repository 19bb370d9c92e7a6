//! Every shipped config file parses and validates (as rustic's tests/config.rs does), and the
//! commented example mentions every key.

use std::path::Path;

use guardian::config::Config;

#[test]
fn every_shipped_config_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!cfg.databases.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 2, "expected the example and local configs");
}

#[test]
fn the_example_documents_every_key() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/guardian.example.toml"),
    )
    .unwrap();
    for key in [
        "[storage]",
        "kind",
        "path",
        "[backup]",
        "staging_dir",
        "compression_level",
        "threads",
        "check",
        "[[databases]]",
        "name",
        "max_age",
        "backup",
        "drill",
        "timezone",
        "jitter",
        "[databases.retention]",
        "keep_last",
        "daily",
        "weekly",
        "monthly",
        "yearly",
        "[service]",
        "listen",
        "shutdown_timeout",
        "[notify]",
        "webhook_url",
        "webhook_url_file",
        "notify_on_success",
        "heartbeat_url",
        "heartbeat_url_file",
        "timeout",
        "GUARDIAN_WEBHOOK_URL",
        "GUARDIAN_HEARTBEAT_URL",
    ] {
        assert!(
            text.contains(key),
            "config/guardian.example.toml does not mention {key}"
        );
    }
}
