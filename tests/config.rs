//! Every shipped config file parses and validates (as rustic's tests/config.rs does), the
//! commented example mentions every key, and every invalid value is refused by the binary with
//! one line naming its dotted key.

use std::path::Path;

use guardian::config::Config;

use crate::util::TestEnv;

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
        "bucket",
        "prefix",
        "region",
        "endpoint",
        "force_path_style",
        "profile",
        "[[stores]]",
        "stores",
        "[backup]",
        "staging_dir",
        "compression_level",
        "threads",
        "check",
        "cache_dir",
        "incremental_check",
        "incremental_max_changed",
        "[[databases]]",
        "name",
        "max_age",
        "backup",
        "incremental",
        "drill",
        "timezone",
        "jitter",
        "mode",
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
        "[encryption]",
        "recipients",
        "identity_file",
    ] {
        assert!(
            text.contains(key),
            "config/guardian.example.toml does not mention {key}"
        );
    }
}

/// Each bad config (as a whole file), the dotted key its one error line must name.
const INVALID: &[(&str, &str)] = &[
    // Cron strings and time zones, checked at load, not when the job first fires.
    ("{S}\n{D}backup = \"61 * * * *\"\n", "databases[0].backup"),
    ("{S}\n{D}drill = \"every sunday\"\n", "databases[0].drill"),
    (
        "{S}\n{D}timezone = \"Mars/Olympus\"\n",
        "databases[0].timezone",
    ),
    ("{S}\n{D}jitter = \"7h\"\n", "databases[0].jitter"),
    ("{S}\n{D}max_age = \"yesterday\"\n", "databases[0].max_age"),
    ("{S}\n{D}max_age = \"0s\"\n", "databases[0].max_age"),
    // The mode of a file a restore creates: octal permission bits, owner read+write.
    ("{S}\n{D}mode = \"rw-r-----\"\n", "databases[0].mode"),
    ("{S}\n{D}mode = \"0440\"\n", "databases[0].mode"),
    ("{S}\n{D}mode = \"4755\"\n", "databases[0].mode"),
    // A jitter as long as the schedule's interval would make (almost) every tick skip.
    (
        "{S}\n{D}backup = \"0 * * * *\"\njitter = \"1h\"\n",
        "databases[0].jitter",
    ),
    (
        "{S}\n{D}backup = \"0 3 * * *\"\ndrill = \"*/5 * * * *\"\njitter = \"20m\"\n",
        "databases[0].jitter",
    ),
    // Names and paths.
    (
        "{S}\n{D}[[databases]]\nname = \"market\"\npath = \"b.db\"\n",
        "databases[1].name",
    ),
    (
        "{S}\n{D}[[databases]]\nname = \"shop\"\npath = \"market.db\"\n",
        "databases[1].path",
    ),
    (
        "{S}\n[[databases]]\nname = \"Market!\"\npath = \"m.db\"\n",
        "databases[0].name",
    ),
    (
        "{S}\n[[databases]]\nname = \"market\"\npath = \"\"\n",
        "databases[0].path",
    ),
    ("[storage]\npath = \"\"\n{D}", "storage.path"),
    (
        "{S}\n[backup]\nstaging_dir = \"\"\n{D}",
        "backup.staging_dir",
    ),
    ("{S}\n[backup]\ncache_dir = \"\"\n{D}", "backup.cache_dir"),
    (
        "{S}\n[backup]\nincremental_max_changed = \"150%\"\n{D}",
        "backup.incremental_max_changed",
    ),
    (
        "{S}\n[backup]\nincremental_max_changed = \"most\"\n{D}",
        "backup.incremental_max_changed",
    ),
    (
        "{S}\n[backup]\nincremental_max_changed = 0\n{D}",
        "backup.incremental_max_changed",
    ),
    (
        "{S}\n[backup]\nincremental_max_changed = 0.5\n{D}",
        "backup.incremental_max_changed",
    ),
    ("{S}\n{D}", "ok"),
    // Unknown keys and wrong types.
    ("{S}\n{D}nmae = \"x\"\n", "databases[0].nmae"),
    ("{S}\nbukkit = \"x\"\n{D}", "storage.bukkit"),
    ("{S}\n[backup]\nthreads = \"two\"\n{D}", "backup.threads"),
    (
        "{S}\n[backup]\ncompression_level = 12\n{D}",
        "backup.compression_level",
    ),
    ("{S}\n[backup]\ncheck = \"fast\"\n{D}", "backup.check"),
    (
        "{S}\n{D}[databases.retention]\ndaily = -1\n",
        "databases[0].retention.daily",
    ),
    (
        "{S}\n{D}[databases.retention]\nkeep_last = 0\n",
        "databases[0].retention",
    ),
    (
        "{S}\n[service]\nlisten = \"nowhere\"\n{D}",
        "service.listen",
    ),
    (
        "{S}\n[service]\nshutdown_timeout = \"soon\"\n{D}",
        "service.shutdown_timeout",
    ),
    ("{S}\n[service]\nrefresh = \"0s\"\n{D}", "service.refresh"),
    (
        "{S}\n[service]\nrefresh = \"often\"\n{D}",
        "service.refresh",
    ),
    (
        "{S}\n[notify]\nwebhook_url = \"ftp://x\"\n{D}",
        "notify.webhook_url",
    ),
    (
        "{S}\n[encryption]\nrecipients = [\"age1xyz\"]\n{D}",
        "encryption.recipients[0]",
    ),
    // S3 keys.
    ("[storage]\nkind = \"s3\"\n{D}", "storage.bucket"),
    (
        "[storage]\nkind = \"s3\"\nbucket = \"b/c\"\n{D}",
        "storage.bucket",
    ),
    (
        "[storage]\nkind = \"s3\"\nbucket = \"bkt\"\ntimeout = \"soon\"\n{D}",
        "storage.timeout",
    ),
    ("[storage]\nkind = \"disk\"\n{D}", "storage.kind"),
    ("{S}\nregion = \"us-east-1\"\n{D}", "storage.region"),
];

#[test]
fn every_invalid_value_is_one_line_naming_its_dotted_key() {
    let env = TestEnv::new();
    let (s, d) = (
        "[storage]\npath = \"store\"",
        "[[databases]]\nname = \"market\"\npath = \"market.db\"\n",
    );
    for (text, key) in INVALID {
        let text = text.replace("{S}", s).replace("{D}", d);
        std::fs::write(&env.config, &text).unwrap();
        if *key == "ok" {
            // The control: the template without a fault is accepted.
            assert_eq!(env.run(&["list"]).code, 0, "{text}");
            continue;
        }
        for cmd in ["backup", "run"] {
            let r = env.run(&[cmd]);
            assert_eq!(r.code, 2, "{cmd} with\n{text}\n{r:?}");
            assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
            let line = r.error_line();
            assert!(
                line.contains(key),
                "{key} not named by {line:?} for\n{text}"
            );
        }
        assert!(
            !env.store.exists(),
            "a refused config wrote to the store:\n{text}"
        );
    }
}
