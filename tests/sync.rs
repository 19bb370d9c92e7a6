//! `guardian sync` through the real binary, local + local and local + S3: a new empty store
//! filled (then restored from), a damaged copy repaired from the other store, `--dry-run`
//! writes nothing, a chain of incrementals copied base first, no good copy anywhere (exit 1),
//! a store that cannot be written (exit 2), a SIGKILL sweep (no partial copy is ever a
//! snapshot), SIGINT mid-upload (said, exit 2, finished by the next sync), no secret in any
//! output.
//!
//! Each world has two stores, `near` (`store/`) and `far` (`far/` or S3), and a config for
//! each store alone, so `list` and `restore` look at one store through the CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::Digest;

use crate::s3_server::{external, unique_prefix, S3Server, S3Target};
use crate::util::{self, Run, TestEnv};

/// A world with two stores: `guardian.toml` names both, `near.toml` and `far.toml` one each.
struct TwoStores {
    env: TestEnv,
    near: PathBuf,
    far: PathBuf,
    /// The S3 target of `far`, when it is one (its credentials go into every command).
    s3: Option<S3Target>,
}

const REST: &str = "\n[backup]\nstaging_dir = \"staging\"\n\n[[databases]]\nname = \"market\"\npath = \"market.db\"\n";

impl TwoStores {
    /// `far` is a local folder.
    fn local() -> TwoStores {
        TwoStores::with_far(
            TestEnv::new(),
            "[[stores]]\nname = \"far\"\nkind = \"local\"\npath = \"far\"\n",
            None,
        )
    }

    /// `far` is `target` under a fresh prefix.
    fn s3(target: &S3Target) -> TwoStores {
        let table = target
            .storage_toml(&unique_prefix("sync"))
            .replace("[storage]\n", "[[stores]]\nname = \"far\"\n");
        TwoStores::with_far(TestEnv::new(), &table, Some(target.clone()))
    }

    fn with_far(env: TestEnv, far_table: &str, s3: Option<S3Target>) -> TwoStores {
        let near_table = "[[stores]]\nname = \"near\"\nkind = \"local\"\npath = \"store\"\n";
        fs::write(&env.config, format!("{near_table}\n{far_table}{REST}")).unwrap();
        let (near, far) = (env.path("near.toml"), env.path("far.toml"));
        fs::write(&near, format!("{near_table}{REST}")).unwrap();
        fs::write(&far, format!("{far_table}{REST}")).unwrap();
        TwoStores { env, near, far, s3 }
    }

    /// `guardian --config <config> args`.
    fn run_with(&self, config: &Path, args: &[&str]) -> Run {
        util::run(self.command(config).args(args))
    }

    fn command(&self, config: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guardian"));
        cmd.arg("--config").arg(config);
        cmd.env_remove("GUARDIAN_CONFIG").env_remove("GUARDIAN_LOG");
        cmd.current_dir(self.env.dir.path());
        if let Some(t) = &self.s3 {
            t.credentials_env(&mut cmd);
        }
        cmd
    }

    /// With both stores.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with(&self.env.config, args)
    }

    /// A backup into `near` only; returns its id.
    fn backup_near(&self, args: &[&str]) -> String {
        let r = self
            .run_with(&self.near, &[&["backup"], args].concat())
            .ok();
        r.stdout.trim().to_string()
    }

    /// `list --json` of one store.
    fn list(&self, config: &Path) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.run_with(config, &["list", "--json"]).ok().stdout).unwrap()
    }

    fn ids(&self, config: &Path) -> Vec<String> {
        let mut ids: Vec<String> = self
            .list(config)
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Restore `id` from the store of `config` into a new file; its content as a dump.
    fn restored(&self, config: &Path, id: &str, name: &str) -> Vec<String> {
        let out = self.env.path(name);
        let r = self
            .run_with(
                config,
                &["restore", "--snapshot", id, "--to", out.to_str().unwrap()],
            )
            .ok();
        assert!(r.stdout.contains(id), "{}", r.stdout);
        assert_eq!(util::integrity(&out), "ok");
        util::dump(&out)
    }
}

fn add_rows(db: &Path, n: i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS extra (n INTEGER, pad BLOB)")
        .unwrap();
    for i in 0..n {
        c.execute("INSERT INTO extra VALUES (?1, randomblob(3000))", [i])
            .unwrap();
    }
}

/// `copied ID from A to B` lines, in order.
fn copied(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("copied "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!((w[1], w[3]), ("from", "to"), "{l}");
            (w[0].to_string(), w[2].to_string(), w[4].to_string())
        })
        .collect()
}

fn fill_a_new_empty_store(w: &TwoStores) {
    let first = w.backup_near(&[]);
    let at_first = util::dump(&w.env.db);
    add_rows(&w.env.db, 40);
    let second = w.backup_near(&[]);
    assert!(w.list(&w.far).is_empty());

    let r = w.run(&["sync"]).ok();
    assert_eq!(
        copied(&r.stdout),
        [
            (first.clone(), "near".into(), "far".into()),
            (second.clone(), "near".into(), "far".into())
        ],
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("every store holds every snapshot"),
        "{}",
        r.stdout
    );
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(w.ids(&w.far), both);
    assert!(w.list(&w.far).iter().all(|s| s["status"] != "failed"));
    // Restored from the far store alone: the very rows of each backup.
    assert_eq!(w.restored(&w.far, &first, "first.db"), at_first);
    assert_eq!(
        w.restored(&w.far, &second, "second.db"),
        util::dump(&w.env.db)
    );
    // Nothing left to do.
    let r = w.run(&["sync"]).ok();
    assert!(copied(&r.stdout).is_empty(), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("copied 0; every store holds every snapshot"),
        "{}",
        r.stdout
    );
}

#[test]
fn sync_fills_a_new_empty_local_store_and_restore_works_from_it() {
    fill_a_new_empty_store(&TwoStores::local());
}

#[test]
fn sync_fills_a_new_empty_s3_store_and_restore_works_from_it() {
    let server = S3Server::start();
    fill_a_new_empty_store(&TwoStores::s3(&server.target));
    if let Some(t) = external() {
        fill_a_new_empty_store(&TwoStores::s3(&t));
    }
}

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

#[test]
fn sync_repairs_a_damaged_copy_from_the_store_with_a_good_one() {
    let w = TwoStores::local();
    let id = w.run(&["backup"]).ok().stdout.trim().to_string();
    let near_obj = w.env.store.join("market").join(&id).join("db.sqlite.gz");
    let far_obj = w
        .env
        .path("far")
        .join("market")
        .join(&id)
        .join("db.sqlite.gz");
    let good = sha256(&near_obj);
    assert_eq!(sha256(&far_obj), good, "backup wrote both stores");

    // Bit rot in the far copy (same size: only its SHA-256 tells).
    util::flip_byte(&far_obj, 100);
    let r = w.run(&["sync"]).ok();
    assert_eq!(
        copied(&r.stdout),
        [(id.clone(), "near".into(), "far".into())],
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("damaged"), "{}", r.stdout);
    assert_eq!(sha256(&far_obj), good);

    // Bit rot in the first store: the copy comes from the second.
    util::flip_byte(&near_obj, 200);
    let r = w.run(&["sync"]).ok();
    assert_eq!(
        copied(&r.stdout),
        [(id.clone(), "far".into(), "near".into())],
        "{}",
        r.stdout
    );
    assert_eq!(sha256(&near_obj), good);

    // A manifest that does not parse is kept aside, then replaced.
    let manifest = w
        .env
        .path("far")
        .join("market")
        .join(&id)
        .join("manifest.json");
    let original = fs::read(&manifest).unwrap();
    fs::write(&manifest, b"{ not json").unwrap();
    let r = w.run(&["sync"]).ok();
    assert_eq!(copied(&r.stdout).len(), 1, "{}", r.stdout);
    assert_eq!(fs::read(&manifest).unwrap(), original);
    let aside: Vec<_> = fs::read_dir(manifest.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("manifest-damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged manifest is kept aside");
    assert_eq!(fs::read(aside[0].path()).unwrap(), b"{ not json");
    assert_eq!(w.ids(&w.far), [id]);
}

#[test]
fn sync_repairs_a_damaged_s3_copy() {
    let server = S3Server::start();
    let w = TwoStores::s3(&server.target);
    let id = w.run(&["backup"]).ok().stdout.trim().to_string();
    let r = w.run(&["sync", "--json"]).ok();
    assert!(
        r.stdout.contains("\"copies\": []"),
        "nothing to copy after a backup to both stores: {}",
        r.stdout
    );
    let far_key = {
        let toml = fs::read_to_string(&w.far).unwrap();
        let p = toml
            .lines()
            .find_map(|l| l.strip_prefix("prefix = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_string();
        format!("{p}/market/{id}/db.sqlite.gz")
    };
    crate::s3_cli::damage(&server.target, &far_key);
    let r = w.run(&["sync"]).ok();
    assert_eq!(
        copied(&r.stdout),
        [(id.clone(), "near".into(), "far".into())],
        "{}",
        r.stdout
    );
    // The far copy is whole again: it restores from S3 alone.
    assert_eq!(w.restored(&w.far, &id, "far.db"), util::dump(&w.env.db));
}

#[test]
fn sync_dry_run_lists_the_copies_and_writes_nothing() {
    let w = TwoStores::local();
    let id = w.backup_near(&[]);
    let r = w.run(&["sync", "--dry-run"]).ok();
    assert!(
        r.stdout
            .contains(&format!("would copy {id} from near to far (missing)")),
        "{}",
        r.stdout
    );
    assert!(copied(&r.stdout).is_empty());
    assert!(util::walk(&w.env.path("far")).is_empty(), "far was written");
    let r = w.run(&["sync", "--dry-run", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["dry_run"], true);
    assert_eq!(v[0]["copies"][0]["id"], id.as_str());
    assert_eq!(v[0]["copies"][0]["done"], false);
    assert!(util::walk(&w.env.path("far")).is_empty(), "far was written");
    assert!(w.list(&w.far).is_empty());
}

#[test]
fn sync_copies_a_chain_of_incrementals_base_first() {
    let w = TwoStores::local();
    let full = w.backup_near(&[]);
    let touch = |n: i64| {
        let c = rusqlite::Connection::open(&w.env.db).unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS touched (n INTEGER)")
            .unwrap();
        c.execute("INSERT INTO touched VALUES (?1)", [n]).unwrap();
    };
    touch(1);
    let inc1 = w.backup_near(&["--incremental"]);
    touch(2);
    let inc2 = w.backup_near(&["--incremental"]);
    let kinds: Vec<String> = w
        .list(&w.near)
        .iter()
        .map(|s| s["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["incremental", "incremental", "full"]);

    let r = w.run(&["sync"]).ok();
    let order: Vec<String> = copied(&r.stdout).into_iter().map(|c| c.0).collect();
    assert_eq!(order, [full, inc1.clone(), inc2.clone()], "{}", r.stdout);
    // The newest incremental restores from the far store alone.
    assert_eq!(w.restored(&w.far, &inc2, "inc2.db"), util::dump(&w.env.db));
    let far = w.list(&w.far);
    assert!(far.iter().all(|s| s["status"] != "failed"), "{far:?}");
    let _ = inc1;
}

#[test]
fn a_snapshot_with_no_good_copy_anywhere_exits_1() {
    let w = TwoStores::local();
    let id = w.run(&["backup"]).ok().stdout.trim().to_string();
    for root in [w.env.store.clone(), w.env.path("far")] {
        util::flip_byte(&root.join("market").join(&id).join("db.sqlite.gz"), 50);
    }
    let r = w.run(&["sync"]).expect_code(1);
    assert!(
        r.stderr.contains("no good copy in any store"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&id), "{}", r.stderr);
}

#[test]
fn a_store_that_cannot_be_written_exits_2_and_is_named() {
    let w = TwoStores::local();
    let id = w.backup_near(&[]);
    // `far` cannot take this snapshot: a file sits where its folder would go (a read-only
    // folder would not do: tests may run as root).
    let blocked = w.env.path("far").join("market");
    fs::create_dir_all(&blocked).unwrap();
    fs::write(blocked.join(&id), b"in the way").unwrap();
    let r = w.run(&["sync"]).expect_code(2);
    assert!(
        r.stderr
            .contains(&format!("snapshot {id} could not be copied to far")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("store far"), "{}", r.stderr);
}

#[test]
fn sync_output_holds_no_secret() {
    let server = S3Server::start();
    let w = TwoStores::s3(&server.target);
    w.backup_near(&[]);
    for args in [
        &["-vv", "sync"][..],
        &["sync", "--json"],
        &["sync", "--dry-run"],
    ] {
        let r = w.run(args);
        assert_eq!(r.code, 0, "{r:?}");
        for out in [&r.stdout, &r.stderr] {
            assert!(!out.contains(crate::s3_server::SECRET_KEY), "{args:?}");
        }
    }
}

/// Every snapshot `config`'s store lists is whole: its object matches its manifest.
fn listed_far_copies_are_complete(w: &TwoStores) -> usize {
    let list = w.list(&w.far);
    for s in &list {
        let id = s["id"].as_str().unwrap();
        assert_ne!(s["status"], "failed", "{s}");
        let dir = w.env.path("far").join("market").join(id);
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        for part in m["data"]["parts"].as_array().cloned().unwrap_or_default() {
            let obj = w
                .env
                .path("far")
                .join("market")
                .join(part["snapshot"].as_str().unwrap())
                .join(part["object"].as_str().unwrap());
            assert_eq!(sha256(&obj), part["stored_sha256"], "{id}: partial chain");
        }
        if m["data"]["layout"] == "whole" {
            let obj = dir.join(m["data"]["object"].as_str().unwrap());
            assert_eq!(sha256(&obj), m["data"]["stored_sha256"], "{id} is partial");
        }
    }
    list.len()
}

#[test]
fn sigkill_during_sync_never_shows_a_partial_copy() {
    let w = TwoStores::local();
    // Big enough that a sync takes a while: a full and an incremental on it.
    fs::remove_file(&w.env.db).unwrap();
    crate::crash::make_big(&w.env.db, 24, "sync");
    let full = w.backup_near(&[]);
    add_rows(&w.env.db, 200);
    let inc = w.backup_near(&["--incremental"]);

    // Time one whole sync into a scratch store.
    let far = w.env.path("far");
    let t0 = Instant::now();
    w.run(&["sync"]).ok();
    let whole = t0.elapsed();
    fs::remove_dir_all(&far).unwrap();

    let trials = 16;
    let (mut killed, mut mid_copy) = (0, 0);
    for i in 0..trials {
        let delay = whole * 9 / 10 * i / trials;
        let mut child = w
            .command(&w.env.config)
            .arg("sync")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        // Whatever the far store lists is whole, and restores.
        let ids: Vec<String> = w
            .list(&w.far)
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        listed_far_copies_are_complete(&w);
        // Killed mid-copy: objects arrived, their manifest did not (never listed above).
        let market = far.join("market");
        if market.exists()
            && fs::read_dir(&market).unwrap().flatten().any(|d| {
                let dir = d.path();
                !dir.join("manifest.json").exists() && !util::walk(&dir).is_empty()
            })
        {
            mid_copy += 1;
        }
        if ids.contains(&inc) {
            assert!(
                ids.contains(&full),
                "trial {i}: the incremental without its base"
            );
        }
        // Start the next trial from scratch half of the time, else from what was left.
        if i % 2 == 0 && far.exists() {
            fs::remove_dir_all(&far).unwrap();
        }
    }
    assert!(
        killed >= trials / 3,
        "most runs must be killed mid-way ({killed}/{trials}, whole sync {whole:?})"
    );
    assert!(
        mid_copy > 0,
        "no kill landed between an object and its manifest ({killed}/{trials} killed, whole sync {whole:?})"
    );
    // A rerun completes, and the far store alone restores the newest snapshot.
    let r = w.run(&["sync"]).ok();
    assert!(
        r.stdout.contains("every store holds every snapshot"),
        "{}",
        r.stdout
    );
    assert_eq!(listed_far_copies_are_complete(&w), 2);
    let out = w.env.path("out.db");
    w.run_with(
        &w.far,
        &["restore", "--snapshot", &inc, "--to", out.to_str().unwrap()],
    )
    .ok();
    assert_eq!(util::dump_hash(&out), util::dump_hash(&w.env.db));
    eprintln!("sync kill sweep: {trials} trials, {killed} killed mid-run, {mid_copy} between an object and its manifest, whole sync {whole:?}, 0 partial copies listed");
}

#[test]
fn the_service_syncs_the_stores_after_each_backup() {
    let w = TwoStores::local();
    // A snapshot the far store missed (taken while only `near` was configured).
    let missed = w.backup_near(&[]);
    let cfg = fs::read_to_string(&w.env.config).unwrap().replace(
        "path = \"market.db\"\n",
        "path = \"market.db\"\nbackup = \"* * * * * *\"\n\n[service]\nlisten = \"127.0.0.1:0\"\n",
    );
    fs::write(&w.env.config, cfg).unwrap();
    let mut svc = util::Service::spawn(
        w.command(&w.env.config)
            .args(["--log-format", "json", "run"])
            .stdout(std::process::Stdio::null()),
    );
    svc.wait_for_line(
        "sync after the backup: every store holds every snapshot",
        30,
    );
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(svc.wait_exit(20), 0, "{}", svc.log());
    // The far store holds the snapshot it missed and the service's own, all whole.
    let far = w.ids(&w.far);
    assert!(far.contains(&missed), "{far:?}\n{}", svc.log());
    assert!(far.len() >= 2, "{far:?}");
    listed_far_copies_are_complete(&w);
    assert!(
        svc.log().contains("\"snapshot copied\""),
        "the missed snapshot was copied by the service:\n{}",
        svc.log()
    );
}

#[test]
fn verify_all_compares_the_stores_and_names_a_missing_or_damaged_copy() {
    let w = TwoStores::local();
    let missed = w.backup_near(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let both = w.run(&["backup"]).ok().stdout.trim().to_string();

    // The far store lacks the first snapshot: a failure line naming it and the fix.
    let r = w.run(&["verify", "--all"]).expect_code(1);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains(&missed) && l.contains(" far "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        line.contains("MISSING") && line.contains("guardian sync --db market"),
        "{line}"
    );
    assert_eq!(
        r.stdout.lines().filter(|l| l.contains(" ok ")).count(),
        3,
        "{}",
        r.stdout
    );
    let r = w.run(&["verify", "--all", "--json"]).expect_code(1);
    let v: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.len(), 4, "{v:?}");
    let far_missed = v
        .iter()
        .find(|x| x["id"] == missed.as_str() && x["store"] == "far")
        .unwrap();
    assert_eq!(far_missed["outcome"], "bad");
    assert_eq!(far_missed["missing"], true);

    // After sync every copy is there and whole.
    w.run(&["sync"]).ok();
    let r = w.run(&["verify", "--all"]).ok();
    assert_eq!(
        r.stdout.lines().filter(|l| l.contains(" ok ")).count(),
        4,
        "{}",
        r.stdout
    );

    // Bit rot in one store's copy: that store is named, and where the good copy is.
    util::flip_byte(
        &w.env
            .path("far")
            .join("market")
            .join(&both)
            .join("db.sqlite.gz"),
        300,
    );
    let r = w.run(&["verify"]).expect_code(1);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains(" far "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        line.contains("DAMAGED") && line.contains("good copy in near"),
        "{line}"
    );
    // Single-store output is unchanged: no store column.
    let r = w.run_with(&w.near, &["verify", "--all"]).ok();
    assert!(
        r.stdout
            .lines()
            .all(|l| l.split_whitespace().nth(2).is_some_and(|w| w != "primary")),
        "{}",
        r.stdout
    );
}

#[test]
fn after_a_drill_failed_a_damaged_copy_sync_repairs_it_and_its_store_uses_it_again() {
    let w = TwoStores::local();
    let id = w.run(&["backup"]).ok().stdout.trim().to_string();
    let far_dir = w.env.path("far").join("market").join(&id);
    util::flip_byte(&far_dir.join("db.sqlite.gz"), 100);
    // The drill restores the near copy, reads the far one, and records a failed verdict there.
    w.run(&["drill", "--snapshot", &id]).expect_code(1);
    assert_eq!(w.list(&w.far)[0]["status"], "failed");
    assert_eq!(w.list(&w.near)[0]["status"], "verified");

    let r = w.run(&["sync"]).ok();
    assert_eq!(copied(&r.stdout).len(), 1, "{}", r.stdout);
    // The far copy is whole again, carries the drill's pass, and restores on its own.
    let far = w.list(&w.far);
    assert_eq!(far[0]["status"], "verified", "{far:?}");
    assert_eq!(w.restored(&w.far, &id, "far.db"), util::dump(&w.env.db));
    // The failed verdict about the old bytes is kept aside, not destroyed.
    let aside: Vec<String> = fs::read_dir(&far_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("superseded-drill-") && n.ends_with("-failed.json"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // Nothing left to do.
    let r = w.run(&["sync"]).ok();
    assert!(copied(&r.stdout).is_empty(), "{}", r.stdout);
}

#[test]
fn sigkill_during_a_sync_to_s3_never_shows_a_partial_copy() {
    let server = S3Server::start();
    let w = TwoStores::s3(&server.target);
    fs::remove_file(&w.env.db).unwrap();
    crate::crash::make_big(&w.env.db, 24, "sync-s3");
    let id = w.backup_near(&[]);
    let t0 = Instant::now();
    w.run(&["sync"]).ok();
    let whole = t0.elapsed();
    // Start over: a new prefix for the far store.
    let w = TwoStores::with_far(
        w.env,
        &server
            .target
            .storage_toml(&unique_prefix("sync-kill"))
            .replace("[storage]\n", "[[stores]]\nname = \"far\"\n"),
        Some(server.target.clone()),
    );
    let trials = 10;
    let mut killed = 0;
    for i in 0..trials {
        let delay = whole * 9 / 10 * i / trials;
        let mut child = w
            .command(&w.env.config)
            .arg("sync")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        // What the far store lists is whole: every copy it shows reads back right.
        let far = w.list(&w.far);
        assert!(
            far.iter().all(|s| s["status"] != "failed"),
            "trial {i}: {far:?}"
        );
        if !far.is_empty() {
            w.run_with(&w.far, &["verify", "--all"]).ok();
        }
    }
    assert!(
        killed >= trials / 3,
        "most runs must be killed mid-way ({killed}/{trials}, whole sync {whole:?})"
    );
    let r = w.run(&["sync"]).ok();
    assert!(
        r.stdout.contains("every store holds every snapshot"),
        "{}",
        r.stdout
    );
    assert_eq!(w.restored(&w.far, &id, "far.db"), util::dump(&w.env.db));
    eprintln!("sync to S3 kill sweep: {trials} trials, {killed} killed mid-run, whole sync {whole:?}, 0 partial copies listed");
}

/// SIGINT to a sync whose upload to the far store is held: exit 2 within 10 s with its line,
/// no partial copy listed, and the next sync finishes the copy.
#[test]
fn sigint_during_a_sync_says_so_and_the_next_sync_finishes() {
    use crate::fault_proxy::{Fault, FaultProxy, Requests};
    use std::time::Duration;
    let server = S3Server::start();
    let proxy = FaultProxy::start(&server.target.endpoint);
    let target = S3Target {
        endpoint: proxy.endpoint.clone(),
        ..server.target.clone()
    };
    let w = TwoStores::s3(&target);
    let id = w.backup_near(&[]);
    proxy.inject(Requests::PutObject, Fault::Stall, usize::MAX);
    let (r, took) = util::interrupt_in_flight(
        w.command(&w.env.config).arg("sync"),
        nix::sys::signal::Signal::SIGINT,
        "sync",
        |_| proxy.counts().1 > 0,
    );
    proxy.heal();
    assert!(took < Duration::from_secs(10), "sync did not stop at once");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("sync of market interrupted by SIGINT")
            && r.stderr.contains("every copy it made is whole"),
        "{}",
        r.stderr
    );
    assert!(w.ids(&w.far).is_empty(), "a partial copy is listed");
    w.run(&["sync"]).ok();
    assert_eq!(w.ids(&w.far), std::slice::from_ref(&id));
    assert_eq!(w.restored(&w.far, &id, "far.db"), util::dump(&w.env.db));
}
