//! Test harness: a private temp folder per test with a copy of the fixture database, a config
//! pointing at a local store inside it, and a way to run the real `guardian` binary.

#![allow(dead_code)] // each test module uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Say that (part of) a test could not run here, where it is seen: on the test binary's own
/// stderr, which the harness does not capture, so `cargo test` shows it beside `ok`. Under
/// `CI=true` a skip is a failure instead: in CI every test must really run.
#[track_caller]
pub fn skip(why: &str) {
    if in_ci() {
        panic!("cannot skip under CI=true: {why}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    // Not eprintln!: the harness captures that and shows it only for failed tests.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED (part of) {test}: {why}");
}

/// Whether this is a CI run (`CI=true`, as CI services and `.ci/run` set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Path of a file in `fixtures/` (never write there: copy first).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The outcome of one `guardian` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panic with the full output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        self.expect_code(0)
    }

    /// The one error line (panics with the whole stderr unless there is exactly one).
    #[track_caller]
    pub fn error_line(&self) -> &str {
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "one error line expected:\n{}", self.stderr);
        lines[0]
    }

    /// The stderr lines that are not log lines (the error report).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("guardian:"))
            .collect()
    }
}

/// One test's world: `dir/market.db` (a copy of the fixture), `dir/store` (the local store),
/// `dir/staging`, and `dir/guardian.toml`.
pub struct TestEnv {
    pub dir: TempDir,
    pub db: PathBuf,
    pub store: PathBuf,
    pub config: PathBuf,
}

impl TestEnv {
    /// A world with the market fixture and the default config.
    pub fn new() -> TestEnv {
        let env = TestEnv::empty();
        std::fs::copy(fixture("market.sqlite"), &env.db).unwrap();
        env.write_config("");
        env
    }

    /// A world with no database file yet (write one to `env.db`) and the default config.
    pub fn empty() -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let env = TestEnv {
            db: dir.path().join("market.db"),
            store: dir.path().join("store"),
            config: dir.path().join("guardian.toml"),
            dir,
        };
        env.write_config("");
        env
    }

    /// (Re)write the config: local store, staging inside the test dir, one database `market`,
    /// plus `extra` TOML appended verbatim (e.g. more `[[databases]]`).
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[storage]\nkind = \"local\"\npath = \"store\"\n\n[backup]\nstaging_dir = \"staging\"\n\n[[databases]]\nname = \"market\"\npath = \"market.db\"\n{extra}"
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A `guardian --config <ours>` command, with logs as plain lines.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guardian"));
        cmd.arg("--config").arg(&self.config);
        cmd.env_remove("GUARDIAN_CONFIG").env_remove("GUARDIAN_LOG");
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Run guardian with `args` and collect its output.
    pub fn run(&self, args: &[&str]) -> Run {
        run(self.command().args(args))
    }

    /// `guardian backup`, expected to succeed; returns the new snapshot id.
    pub fn backup(&self) -> String {
        let r = self.run(&["backup"]).ok();
        let id = r.stdout.trim().to_string();
        assert_eq!(id.lines().count(), 1, "one id expected: {r:?}");
        id
    }

    /// `list --json`, parsed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let r = self.run(&["list", "--json"]).ok();
        serde_json::from_str(&r.stdout).unwrap()
    }

    /// The folder of a snapshot in the local store.
    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.store.join("market").join(id)
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("guardian runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Start `cmd`, wait until `in_flight(pid)` says its work is under way (at most 60 s; the
/// process must not end before), send it `sig`, and return what it printed and how long it
/// took to end after the signal. `what` names the command in the failure messages.
pub fn interrupt_in_flight(
    cmd: &mut Command,
    sig: nix::sys::signal::Signal,
    what: &str,
    mut in_flight: impl FnMut(u32) -> bool,
) -> (Run, std::time::Duration) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guardian starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !in_flight(child.id()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what} ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "{what} never got under way");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (run, sent.elapsed())
}

/// Open a database and return `SELECT count(*)` of a table.
pub fn count(db: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// `PRAGMA integrity_check` of a database file.
pub fn integrity(db: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Every row of every table, as text, in a stable order: equal dumps mean equal content.
pub fn dump(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let vals: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{t}: {}", vals.join(", ")))
            })
            .unwrap();
        for row in rows {
            out.push(row.unwrap());
        }
    }
    out
}

/// Copy snapshot `template` of `market` to a new snapshot taken at `at` (RFC 3339): same data,
/// manifest rewritten with the new id and time. Returns the new id. Builds histories that span
/// days without waiting for them.
pub fn plant_snapshot(env: &TestEnv, template: &str, at: &str) -> String {
    let t: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
    let id = format!("{}-{:08x}", t.format("%Y%m%dT%H%M%SZ"), rand_u32());
    let from = env.snapshot_dir(template);
    let to = env.snapshot_dir(&id);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(from.join("db.sqlite.gz"), to.join("db.sqlite.gz")).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("manifest.json")).unwrap()).unwrap();
    m["id"] = id.clone().into();
    m["created_at"] = t
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into();
    std::fs::write(
        to.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    id
}

/// What an interrupted backup from October leaves: a copy of `template`'s data with no manifest,
/// last written a month ago (older than prune's one-day grace for orphans). Returns its id.
pub fn plant_old_orphan(env: &TestEnv, template: &str) -> String {
    let id = plant_snapshot(env, template, "2026-10-01T03:00:00Z");
    std::fs::remove_file(env.snapshot_dir(&id).join("manifest.json")).unwrap();
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
    std::fs::File::options()
        .write(true)
        .open(env.snapshot_dir(&id).join("db.sqlite.gz"))
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
    id
}

/// Start `python3 -c script db` (stdin and stdout piped) and wait for its first line, which
/// must be `ready`; returns the process and the rest of its output.
pub fn python_until_ready(
    script: &str,
    db: &Path,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .args(["-c", script, db.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, out)
}

/// A random u32 (unique ids for planted snapshots).
pub fn rand_u32() -> u32 {
    getrandom::u32().unwrap()
}

/// XOR one byte of a file (bit rot).
pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = usize::try_from(offset).unwrap().min(bytes.len() - 1);
    bytes[i] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// Read and parse a snapshot's manifest.
pub fn read_manifest(env: &TestEnv, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(env.snapshot_dir(id).join("manifest.json")).unwrap())
        .unwrap()
}

/// Overwrite a snapshot's manifest.
pub fn write_manifest(env: &TestEnv, id: &str, m: &serde_json::Value) {
    std::fs::write(
        env.snapshot_dir(id).join("manifest.json"),
        serde_json::to_vec_pretty(m).unwrap(),
    )
    .unwrap();
}

/// The snapshot's status (`verified`, `unverified`, `failed`) from `list --json`.
pub fn status_of(env: &TestEnv, id: &str) -> String {
    env.list()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("snapshot {id} not listed"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A minimal HTTP/1.0 GET with std sockets: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of a Prometheus sample, e.g. `metric(&text, "guardian_snapshots{db=\"market\"}")`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

/// What is left in `env`'s staging folder besides the databases' lock files (which stay, by
/// design: a lock file that is deleted while held would let a second holder in).
pub fn staging_leftovers(env: &TestEnv) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(env.path("staging")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !(n.starts_with("guardian-")
                && (n.ends_with(".lock") || n.ends_with(".last-backup.json")))
        })
        .collect()
}

/// Snapshot folders in the store that have no manifest (orphans), and dot-named temp files.
/// (Files beside the snapshot folders, such as `last-backup.json`, are not leftovers.)
pub fn leftovers(env: &TestEnv) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dbs) = std::fs::read_dir(&env.store) else {
        return out;
    };
    for db in dbs.flatten() {
        for snap in std::fs::read_dir(db.path()).unwrap().flatten() {
            if !snap.path().is_dir() {
                if snap.file_name().to_string_lossy().starts_with('.') {
                    out.push(snap.path());
                }
                continue;
            }
            if !snap.path().join("manifest.json").exists() {
                out.push(snap.path());
            }
            for f in std::fs::read_dir(snap.path()).unwrap().flatten() {
                if f.file_name().to_string_lossy().starts_with('.') {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

/// A `guardian run` child process with its stderr (JSON log lines) collected by a thread.
pub struct Service {
    pub child: std::process::Child,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Start `guardian --log-format json run` in `env`.
    pub fn start(env: &TestEnv) -> Service {
        Service::spawn(
            env.command()
                .args(["--log-format", "json", "run"])
                .stdout(std::process::Stdio::null()),
        )
    }

    /// Start `cmd` (a `guardian ... run` command the caller built: its own environment,
    /// flags and stdout), collecting its stderr lines.
    pub fn spawn(cmd: &mut Command) -> Service {
        use std::io::BufRead;
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        Service {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Wait (up to `secs`) for a log line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needle:?} within {secs}s:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The address the metrics listener bound (from the start-up log line).
    pub fn addr(&self) -> String {
        let line = self.wait_for_line("guardian service started", 20);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["listen"].as_str().unwrap().to_string()
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Wait (up to `secs`) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> i32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    r.join().unwrap();
                }
                return status.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("guardian run did not exit within {secs}s:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SHA-256 over [`dump`]: equal hashes mean equal content (for large databases).
pub fn dump_hash(db: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for row in dump(db) {
        h.update(row.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Every file below `dir` (recursively), temp files included.
pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p)
            } else {
                out.push(p)
            }
        }
    }
    out
}

/// Copy every file under `from` to the same place under `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for f in walk(from) {
        let rel = f.strip_prefix(from).unwrap();
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dst).unwrap();
    }
}
