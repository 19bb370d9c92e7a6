//! Every shipped config file parses and validates (as rustic's tests/config.rs does).

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
