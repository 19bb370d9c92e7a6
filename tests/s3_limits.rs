//! guardian against S3 under stress, through the real binary: memory stays bounded for a
//! large database, and a backup killed (SIGKILL) mid-upload leaves no snapshot behind and does
//! not stop the next one.

use std::time::{Duration, Instant};

use crate::s3_cli::{run, s3_env};
use crate::s3_server::S3Server;
use crate::util;

const MIB: usize = 1 << 20;

/// Fill `db` with `mib` MiB of incompressible rows.
fn big_database(db: &std::path::Path, mib: u64) {
    let _ = std::fs::remove_file(db);
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("CREATE TABLE blobs (b BLOB); BEGIN")
        .unwrap();
    for i in 0..mib {
        c.execute(
            "INSERT INTO blobs VALUES (?1)",
            [crate::storage::noise(MIB, i + 1)],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// Peak resident memory (VmHWM) of a running guardian, sampled until it exits.
fn run_measuring_peak(mut cmd: std::process::Command) -> (util::Run, u64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let run = util::Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    };
    (run, peak_kib * 1024)
}

#[test]
fn backup_to_s3_streams_in_bounded_memory() {
    // 256 MiB of incompressible rows: the stored object is ~256 MiB, 50 parts of 5 MiB.
    let server = S3Server::start();
    let env = s3_env(&server.target, "big");
    big_database(&env.db, 256);
    let mut cmd = env.command();
    server.target.credentials_env(&mut cmd);
    cmd.args(["backup"]);
    let (r, peak) = run_measuring_peak(cmd);
    let r = r.ok();
    let id = r.stdout.trim();
    let parts: Vec<u64> = server
        .requests()
        .iter()
        .filter(|q| q.is_upload_part())
        .map(|q| q.content_length().unwrap())
        .collect();
    assert!(parts.len() >= 50, "{} parts", parts.len());
    assert!(
        parts.iter().filter(|&&n| n == 5 * MIB as u64).count() >= parts.len() - 1,
        "{parts:?}"
    );
    // Far below the object's size: parts in flight + the compressor's buffers + the runtime
    // (a debug build, with the integrity check's connections: 79-97 MiB on a loaded machine;
    // the release build's figure is in docs/PERFORMANCE.md).
    assert!(
        peak < 128 * MIB as u64,
        "peak RSS {} MiB for a 256 MiB object",
        peak / MIB as u64
    );
    eprintln!(
        "backup {id}: peak RSS {} MiB, {} parts",
        peak / MIB as u64,
        parts.len()
    );
    let gets_before = server.requests().len();
    let mut cmd = env.command();
    server.target.credentials_env(&mut cmd);
    cmd.args(["restore", "--latest", "--to", "back.db"]);
    let (r, peak) = run_measuring_peak(cmd);
    let r = r.ok();
    assert!(r.stdout.contains(id), "{}", r.stdout);
    // The data came as 4 MiB ranged GETs that tile the object, each after the first with
    // If-Match on its ETag (so all of one object).
    let ranges: Vec<(u64, u64, bool)> = server.requests()[gets_before..]
        .iter()
        .filter(|q| q.is_get_object() && !q.path.ends_with(".json"))
        .map(|q| {
            let (a, b) = q
                .header("range")
                .expect("ranged GET")
                .strip_prefix("bytes=")
                .unwrap()
                .split_once('-')
                .unwrap();
            (
                a.parse().unwrap(),
                b.parse().unwrap(),
                q.header("if-match").is_some(),
            )
        })
        .collect();
    assert!(ranges.len() >= 30, "{} ranges", ranges.len());
    let mut ranges = ranges;
    ranges.sort_unstable(); // several are in flight: they may arrive in any order
    let mut next = 0;
    for (i, &(a, b, if_match)) in ranges.iter().enumerate() {
        assert_eq!(a, next, "range {i} of {ranges:?}");
        assert!(b - a < 4 * MIB as u64, "{ranges:?}");
        assert_eq!(if_match, i > 0, "{ranges:?}");
        next = b + 1;
    }
    assert!(
        peak < 96 * MIB as u64,
        "restore peak RSS {} MiB",
        peak / MIB as u64
    );
    assert_eq!(util::integrity(&env.path("back.db")), "ok");
}

#[test]
fn a_backup_killed_mid_upload_leaves_no_snapshot_and_the_next_one_works() {
    let server = S3Server::start();
    let env = s3_env(&server.target, "killed");
    big_database(&env.db, 40);
    let mut cmd = env.command();
    server.target.credentials_env(&mut cmd);
    let mut child = cmd
        .arg("backup")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !server.requests().iter().any(|r| r.is_upload_part()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no part was ever uploaded"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();

    let r = run(&env, &server.target, &["list", "--json"]).ok();
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        list.is_empty(),
        "a killed backup must not be listed: {list:?}"
    );
    let r = run(
        &env,
        &server.target,
        &["restore", "--latest", "--to", "r.db"],
    )
    .expect_code(1);
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr);

    let id = run(&env, &server.target, &["backup"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let r = run(
        &env,
        &server.target,
        &["restore", "--latest", "--to", "r.db"],
    )
    .ok();
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    assert_eq!(util::integrity(&env.path("r.db")), "ok");
}
