//! Property tests ("fuzzing") of the parsers that read untrusted store contents: object keys
//! and manifests. Run longer with `PROPTEST_CASES=1000000 cargo test --release --test integration fuzz`.

use std::path::Path;

use guardian::manifest::{parse_key, Manifest, SnapshotId, SnapshotKey};
use guardian::storage::ObjectKey;
use proptest::prelude::*;

/// A format-2 manifest (what guardian writes now).
fn sample_manifest_v2() -> Vec<u8> {
    let json = format!(
        r#"{{"format_version":2,"guardian_version":"0.2.0","db":"market","id":"20261124T030000Z-a1b2c3d4",
        "created_at":"2026-11-24T03:00:00.25Z","source_path":"/data/market.db","sqlite_version":"3.51.3",
        "page_size":4096,"page_count":3,"journal_mode":"wal","raw_len":12288,"raw_sha256":"{a}",
        "data":{{"layout":"whole","object":"db.sqlite.gz","compression":"gzip","compression_level":1,
        "stored_len":500,"stored_sha256":"{b}"}},
        "tables":{{"orders":10}},"schema_sha256":"{a}",
        "check":{{"kind":"quick_check","result":"ok"}}}}"#,
        a = "1".repeat(64),
        b = "2".repeat(64)
    );
    json.into_bytes()
}

/// A format-1 manifest (still read).
fn sample_manifest() -> Vec<u8> {
    let json = format!(
        r#"{{"format_version":1,"guardian_version":"0.1.0","db":"market","id":"20261124T030000Z-a1b2c3d4",
        "created_at":"2026-11-24T03:00:00.25Z","source_path":"/data/market.db","sqlite_version":"3.51.3",
        "page_size":4096,"page_count":3,"journal_mode":"wal","raw_len":12288,"raw_sha256":"{a}",
        "stored_len":500,"stored_sha256":"{b}","object":"db.sqlite.gz","compression":"gzip",
        "compression_level":1,"tables":{{"orders":10}},"schema_sha256":"{a}",
        "check":{{"kind":"quick_check","result":"ok"}}}}"#,
        a = "1".repeat(64),
        b = "2".repeat(64)
    );
    json.into_bytes()
}

fn key() -> SnapshotKey {
    SnapshotKey {
        db: "market".into(),
        id: "20261124T030000Z-a1b2c3d4".parse().unwrap(),
    }
}

/// Keys built from the pieces attackers would use.
fn hostile_key() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just("\0".to_string()),
        Just("etc".to_string()),
        Just("market".to_string()),
        Just("20261124T030000Z-a1b2c3d4".to_string()),
        Just("manifest.json".to_string()),
        Just(".tmp".to_string()),
        "[a-z0-9._-]{1,12}",
        any::<String>(),
    ];
    prop::collection::vec(part, 1..6).prop_map(|v| v.join("/"))
}

proptest! {
    #[test]
    fn accepted_keys_never_escape_the_store(k in hostile_key()) {
        if let Ok(key) = ObjectKey::new(k.clone()) {
            let root = Path::new("/store");
            let mut p = root.to_path_buf();
            p.extend(key.components());
            prop_assert!(p.starts_with(root));
            for c in p.strip_prefix(root).unwrap().components() {
                prop_assert!(matches!(c, std::path::Component::Normal(_)), "{k:?} gave {c:?}");
            }
            prop_assert!(!k.contains("..") || k.split('/').all(|c| c != ".."));
            prop_assert!(!k.starts_with('/') && !k.contains('\\') && !k.chars().any(char::is_control));
            // The layout parser never panics on an accepted key.
            let _ = parse_key(&key);
        }
    }

    #[test]
    fn snapshot_id_parser_never_panics(s in any::<String>()) {
        if let Ok(id) = s.parse::<SnapshotId>() {
            prop_assert_eq!(id.as_str(), s.as_str());
            let _ = id.time();
        }
    }

    #[test]
    fn manifest_parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Manifest::parse(&bytes, &key());
    }

    #[test]
    fn mutated_manifests_are_rejected_or_consistent(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        v2 in any::<bool>(),
    ) {
        let mut m = if v2 { sample_manifest_v2() } else { sample_manifest() };
        for (at, byte) in edits {
            let i = at.index(m.len());
            m[i] = byte;
        }
        if truncate {
            let n = cut.index(m.len());
            m.truncate(n);
        }
        if let Ok(parsed) = Manifest::parse(&m, &key()) {
            // Whatever got through is internally consistent and names this snapshot.
            prop_assert_eq!(parsed.page_size * parsed.page_count, parsed.raw_len);
            prop_assert_eq!(parsed.db.as_str(), "market");
            prop_assert_eq!(parsed.id.as_str(), "20261124T030000Z-a1b2c3d4");
            for object in parsed.objects() {
                prop_assert!(object.key.as_str().starts_with("market/20261124T030000Z-a1b2c3d4/"));
                prop_assert_ne!(object.key.file_name(), "manifest.json");
            }
            prop_assert_eq!(parsed.check.result.as_str(), "ok");
        }
    }
}

#[test]
fn the_sample_manifests_themselves_parse_to_the_same_snapshot() {
    let v1 = Manifest::parse(&sample_manifest(), &key()).unwrap();
    let v2 = Manifest::parse(&sample_manifest_v2(), &key()).unwrap();
    assert_eq!((v1.format_version, v2.format_version), (1, 2));
    assert_eq!(v1.objects(), v2.objects());
    assert_eq!(v1.raw_sha256, v2.raw_sha256);
}
