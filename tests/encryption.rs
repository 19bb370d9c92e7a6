//! Client-side age encryption: nothing plain reaches the store, restores decrypt, and a missing
//! or wrong key fails closed with a clear error.

use std::fs;

use crate::util::{self, TestEnv};

fn identity() -> (String, String) {
    let id = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

#[test]
fn encrypted_snapshots_restore_with_the_identity_and_fail_closed_without_it() {
    let env = TestEnv::new();
    let (secret, public) = identity();
    fs::write(env.path("age.key"), format!("# test key\n{secret}\n")).unwrap();
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{public}\"]\nidentity_file = \"age.key\"\n"
    ));
    let id = env.backup();

    // Only ciphertext in the store: the data object is an age file, not gzip.
    let dir = env.snapshot_dir(&id);
    assert!(!dir.join("db.sqlite.gz").exists());
    let stored = fs::read(dir.join("db.sqlite.gz.age")).unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    let manifest = fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"encryption\": \"age\""), "{manifest}");
    assert!(
        !manifest.contains(&secret[15..]),
        "the identity must never be written"
    );

    let out = env.path("out.db");
    env.run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert_eq!(util::dump(&out), util::dump(&env.db));

    // The backup host may hold only the public key: backups work, restores fail closed.
    env.write_config(&format!("\n[encryption]\nrecipients = [\"{public}\"]\n"));
    env.backup();
    let out2 = env.path("out2.db");
    let r = env
        .run(&["restore", "--latest", "--to", out2.to_str().unwrap()])
        .expect_code(2);
    assert!(
        r.stderr.contains("encryption.identity_file"),
        "{}",
        r.stderr
    );
    assert!(!out2.exists());

    // A wrong identity: a clear error, exit 2, nothing written, no fallback to older snapshots.
    let (other, _) = identity();
    fs::write(env.path("other.key"), format!("{other}\n")).unwrap();
    env.write_config(&format!(
        "\n[encryption]\nrecipients = [\"{public}\"]\nidentity_file = \"other.key\"\n"
    ));
    let r = env
        .run(&["restore", "--latest", "--to", out2.to_str().unwrap()])
        .expect_code(2);
    assert!(
        r.stderr
            .contains("no identity in encryption.identity_file matches"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(&other[15..]), "secrets never printed");
    assert!(!out2.exists());
}

#[test]
fn tampered_ciphertext_is_skipped_like_any_damage() {
    let env = TestEnv::new();
    let (secret, _) = identity();
    fs::write(env.path("age.key"), format!("{secret}\n")).unwrap();
    // identity_file alone: encrypt to its own public key.
    env.write_config("\n[encryption]\nidentity_file = \"age.key\"\n");
    let first = env.backup();
    let second = env.backup();
    let p = env.snapshot_dir(&second).join("db.sqlite.gz.age");
    let mut b = fs::read(&p).unwrap();
    let at = b.len() - 40;
    b[at] ^= 0x80;
    fs::write(&p, b).unwrap();
    let out = env.path("out.db");
    let r = env
        .run(&["restore", "--latest", "--to", out.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout.contains(&format!("skipped {second}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("snapshot {first}")),
        "{}",
        r.stdout
    );
}

#[test]
fn bad_encryption_config_names_the_key() {
    let env = TestEnv::new();
    env.write_config("\n[encryption]\nrecipients = [\"not-a-key\"]\n");
    let r = env.run(&["backup"]).expect_code(2);
    assert!(
        r.stderr.contains("encryption.recipients[0]"),
        "{}",
        r.stderr
    );
    env.write_config("\n[encryption]\n");
    let r = env.run(&["backup"]).expect_code(2);
    assert!(r.stderr.contains("encryption"), "{}", r.stderr);
}
