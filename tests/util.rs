//! Test harness: a private temp folder per test with a copy of the fixture database, a config
//! pointing at a local store inside it, and a way to run the real `guardian` binary.

#![allow(dead_code)] // each test module uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

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
