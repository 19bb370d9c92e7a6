//! `guardian diff` through the binary: the e-commerce schema changed across tables, WITHOUT
//! ROWID tables, tables without a primary key, an added column, the `--sql` round trip, damaged
//! files (pages zeroed; a `-wal` holding the newest rows) read as far as they go and left
//! untouched, and bad input.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::Value;

use crate::util::{self, TestEnv};

/// The market fixture plus a WITHOUT ROWID table and a table without a primary key.
fn env_with_extra_tables() -> TestEnv {
    let env = TestEnv::new();
    let c = Connection::open(&env.db).unwrap();
    c.execute_batch(
        "CREATE TABLE tags (name TEXT NOT NULL, kind TEXT NOT NULL, weight INTEGER,
                            PRIMARY KEY (name, kind)) WITHOUT ROWID;
         INSERT INTO tags VALUES ('red', 'color', 1), ('blue', 'color', 2), ('xl', 'size', 3);
         CREATE TABLE events (at TEXT, what TEXT);
         INSERT INTO events VALUES ('t1', 'start'), ('t2', 'tick'), ('t3', 'tick');",
    )
    .unwrap();
    env
}

/// Inserts, updates and deletes in every kind of table, and an added column.
const CHANGES: &str = "
    INSERT INTO customers VALUES (21, 'new@example.com', 'New Customer', '2026-12-01T00:00:00Z');
    UPDATE customers SET name = 'Renamed' WHERE id = 2;
    DELETE FROM order_items WHERE order_id = 3;
    DELETE FROM orders WHERE id = 3;
    INSERT INTO orders VALUES (41, 21, '2026-12-01T10:00:00Z', 'paid');
    INSERT INTO order_items VALUES (41, 1, 2, 999);
    UPDATE orders SET status = 'refunded' WHERE id = 7;
    UPDATE products SET stock = stock - 2 WHERE id = 1;
    UPDATE tags SET weight = 20 WHERE name = 'blue';
    DELETE FROM tags WHERE name = 'xl';
    INSERT INTO tags VALUES ('green', 'color', 4);
    UPDATE events SET what = 'tock' WHERE at = 't2';
    INSERT INTO events VALUES ('t4', 'stop');
    ALTER TABLE products ADD COLUMN note TEXT;
    UPDATE products SET note = 'on sale' WHERE id = 2;
    CREATE INDEX orders_by_status ON orders(status);
";

fn json_of(r: &util::Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn table<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("no table {name} in {v:#}"))
}

/// (only_in_from, only_in_to, changed) of a table.
fn counts(v: &Value, name: &str) -> (u64, u64, u64) {
    let t = table(v, name);
    (
        t["only_in_from"].as_u64().unwrap(),
        t["only_in_to"].as_u64().unwrap(),
        t["changed"].as_u64().unwrap(),
    )
}

#[test]
fn diff_reports_inserts_updates_and_deletes_per_table_by_key() {
    let env = env_with_extra_tables();
    let id = env.backup();
    Connection::open(&env.db)
        .unwrap()
        .execute_batch(CHANGES)
        .unwrap();

    // Defaults: the newest snapshot against the live database.
    let r = env.run(&["diff", "--json"]).ok();
    let v = json_of(&r);
    assert_eq!(v["from"]["snapshot"], id.as_str(), "{v:#}");
    assert_eq!(v["to"]["kind"], "live");
    assert_eq!(v["complete"], true);
    assert_eq!(counts(&v, "customers"), (0, 1, 1));
    assert_eq!(counts(&v, "orders"), (1, 1, 1));
    assert_eq!(counts(&v, "order_items"), (2, 1, 0));
    // WITHOUT ROWID: matched by its two-column key.
    assert_eq!(counts(&v, "tags"), (1, 1, 1));
    assert_eq!(
        table(&v, "tags")["key"],
        serde_json::json!(["name", "kind"])
    );
    // No primary key: matched by rowid.
    assert_eq!(counts(&v, "events"), (0, 1, 1));
    assert_eq!(table(&v, "events")["key"], serde_json::json!(["rowid"]));
    // The added column: a schema difference, and the row whose new column was set.
    let products = table(&v, "products");
    assert_eq!(products["schema_changed"], true);
    assert_eq!(counts(&v, "products"), (0, 0, 1));
    let schema = v["schema"].as_array().unwrap();
    assert!(
        schema
            .iter()
            .any(|s| s["name"] == "orders_by_status" && s["change"] == "only_in_to"),
        "{schema:?}"
    );
    assert!(schema
        .iter()
        .any(|s| s["name"] == "products" && s["change"] == "changed"));
    assert_eq!(v["totals"]["only_in_to"], 4 + 1);
    // The changed row names its key and only the columns that changed.
    let row = &table(&v, "customers")["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["change"] == "changed")
        .unwrap()
        .clone();
    assert_eq!(row["key"]["id"], 2);
    assert_eq!(row["columns"]["name"]["from"], "Customer 2");
    assert_eq!(row["columns"]["name"]["to"], "Renamed");
    assert_eq!(row["columns"].as_object().unwrap().len(), 1);

    // The same as text, with --limit bounding the rows shown.
    let r = env.run(&["diff", "--limit", "1"]).ok();
    assert!(
        r.stdout
            .contains("table orders (key id): 1 only in FROM, 1 only in TO, 1 changed, 38 same"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("name: 'Customer 2' -> 'Renamed'"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("… and 1 more"), "{}", r.stdout);
    assert!(
        r.stdout.contains("total: 4 row(s) only in FROM"),
        "{}",
        r.stdout
    );

    // --table narrows it; an unknown table is one clear line.
    let v = json_of(&env.run(&["diff", "--json", "--table", "tags"]).ok());
    assert_eq!(v["tables"].as_array().unwrap().len(), 1);
    let r = env.run(&["diff", "--table", "nope"]).expect_code(2);
    assert!(
        r.error_line().contains("--table nope: no such table"),
        "{}",
        r.stderr
    );
}

/// Schema entries and every row, in a stable order: equal for equal contents (rowids aside,
/// as `.dump` leaves them out of tables with a primary key).
fn contents(db: &Path) -> Vec<String> {
    let c = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out: Vec<String> = c
        .prepare(
            "SELECT type || ' ' || name || ': ' || coalesce(sql, '') FROM sqlite_schema ORDER BY 1",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in tables {
        let mut stmt = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join(", "))
            })
            .unwrap()
            .map(|r| format!("{t}: {}", r.unwrap()))
            .collect();
        rows.sort();
        out.extend(rows);
    }
    out
}

#[test]
fn the_sql_applied_to_from_gives_to() {
    let env = env_with_extra_tables();
    env.backup();
    Connection::open(&env.db)
        .unwrap()
        .execute_batch(&format!(
            "{CHANGES}
             CREATE TABLE coupons (code TEXT PRIMARY KEY, pct INTEGER);
             INSERT INTO coupons VALUES ('X''MAS', 10), ('blob', x'00ff');
             CREATE TRIGGER audit AFTER INSERT ON orders BEGIN
                 INSERT INTO events VALUES ('trigger', 'order ' || new.id);
             END;
             INSERT INTO orders VALUES (42, 1, '2026-12-02T00:00:00Z', 'new');
             UPDATE customers SET created_at = 1.5 WHERE id = 4;"
        ))
        .unwrap();
    let r = env.run(&["diff", "--sql"]).ok();
    assert!(
        r.stdout.contains("BEGIN;") && r.stdout.trim_end().ends_with("COMMIT;"),
        "{}",
        r.stdout
    );

    // FROM is the snapshot: restore it to a file and apply the SQL there.
    let from = env.path("from.db");
    env.run(&["restore", "--latest", "--to", from.to_str().unwrap()])
        .ok();
    Connection::open(&from)
        .unwrap()
        .execute_batch(&r.stdout)
        .unwrap();
    assert_eq!(contents(&from), contents(&env.db));
    assert_eq!(util::integrity(&from), "ok");

    // And the diff of the result against TO is empty.
    let v = json_of(
        &env.run(&["diff", "--json", "--from", from.to_str().unwrap()])
            .ok(),
    );
    assert_eq!(v["totals"]["only_in_from"], 0, "{v:#}");
    assert_eq!(v["totals"]["only_in_to"], 0);
    assert_eq!(v["totals"]["changed"], 0);
    assert_eq!(v["schema"].as_array().unwrap().len(), 0, "{v:#}");
}

/// Zero pages `pages` (1-based) of a file.
fn zero_pages(path: &Path, pages: std::ops::RangeInclusive<u64>, page_size: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    for p in pages {
        f.seek(SeekFrom::Start((p - 1) * page_size)).unwrap();
        f.write_all(&vec![0u8; page_size as usize]).unwrap();
    }
}

/// A database with `n` rows in `big` (one row per ~220 bytes: ~18 per 4 KiB page).
fn big_db(path: &Path, n: i64) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA page_size = 4096; CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 1..=n {
        tx.execute(
            "INSERT INTO big VALUES (?1, ?2)",
            rusqlite::params![i, format!("{:0>200}", i)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Every file in `dir` with its bytes' SHA-256 and mtime: what "left untouched" means.
fn file_set(dir: &Path) -> BTreeMap<String, (String, std::time::SystemTime)> {
    use sha2::Digest;
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let m = fs::metadata(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (
                    hex::encode(sha2::Sha256::digest(fs::read(&p).unwrap())),
                    m.modified().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn a_damaged_file_is_read_past_its_zeroed_pages_and_reported_partial() {
    let env = TestEnv::new();
    let dir = env.path("files");
    fs::create_dir(&dir).unwrap();
    let (good, bad) = (dir.join("good.db"), dir.join("bad.db"));
    big_db(&good, 5000);
    fs::copy(&good, &bad).unwrap();
    // Leaf pages in the middle of the table: rows before and after them stay readable.
    zero_pages(&bad, 100..=105, 4096);
    let before = file_set(&dir);

    let r = env
        .run(&[
            "diff",
            "--json",
            "--from",
            good.to_str().unwrap(),
            "--to",
            bad.to_str().unwrap(),
        ])
        .expect_code(1);
    let v = json_of(&r);
    assert_eq!(v["complete"], false);
    let t = table(&v, "big");
    assert_eq!(t["partial"], true);
    // Nothing is reported missing or changed because of the damage: those rows are unknown.
    assert_eq!(counts(&v, "big"), (0, 0, 0), "{t:#}");
    let (same, unknown) = (t["same"].as_u64().unwrap(), t["unknown"].as_u64().unwrap());
    assert_eq!(same + unknown, 5000);
    assert!(unknown > 0 && unknown < 200, "{t:#}");
    // Rows after the damage were read (the read went on past it).
    assert!(t["rows_to"].as_u64().unwrap() > 4800, "{t:#}");
    assert!(
        t["unreadable"][0].as_str().unwrap().starts_with("to: "),
        "{t:#}"
    );
    assert!(r.error_line().contains("PARTIAL"), "{}", r.stderr);
    // Text output says so too, never "complete".
    let r = env
        .run(&[
            "diff",
            "--from",
            good.to_str().unwrap(),
            "--to",
            bad.to_str().unwrap(),
        ])
        .expect_code(1);
    assert!(
        r.stdout.contains("table big (key id): PARTIAL:"),
        "{}",
        r.stdout
    );
    // --sql deletes nothing it could not read.
    let r = env
        .run(&[
            "diff",
            "--sql",
            "--from",
            good.to_str().unwrap(),
            "--to",
            bad.to_str().unwrap(),
        ])
        .expect_code(1);
    assert!(!r.stdout.contains("DELETE"), "{}", r.stdout);
    assert!(r.stdout.contains("-- PARTIAL"), "{}", r.stdout);
    // Both files are exactly as they were, and nothing was added next to them.
    assert_eq!(file_set(&dir), before);
}

#[test]
fn a_kept_aside_file_with_the_newest_rows_in_its_wal_is_read_and_left_as_it_was() {
    let env = TestEnv::empty();
    big_db(&env.db, 3000);
    let id = env.backup();
    // The application writes more, in WAL mode, and its rows are still in the -wal when the
    // file is damaged and kept aside (what a crash leaves).
    let app = Connection::open(&env.db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         INSERT INTO big VALUES (3001, 'newest 1'), (3002, 'newest 2'), (3003, 'newest 3');
         UPDATE big SET v = 'changed late' WHERE id = 10;",
    )
    .unwrap();
    let dir = env.path("aside");
    fs::create_dir(&dir).unwrap();
    let aside = dir.join("market.db.pre-restore-20261205T000000Z");
    fs::copy(&env.db, &aside).unwrap();
    fs::copy(
        env.path("market.db-wal"),
        dir.join("market.db.pre-restore-20261205T000000Z-wal"),
    )
    .unwrap();
    drop(app);
    zero_pages(&aside, 60..=62, 4096);
    let before = file_set(&dir);

    let r = env
        .run(&[
            "diff",
            "--json",
            "--from",
            &format!("snapshot:{id}"),
            "--to",
            aside.to_str().unwrap(),
        ])
        .expect_code(1);
    let v = json_of(&r);
    let t = table(&v, "big");
    // The three rows and the update that live only in the -wal are found.
    assert_eq!(counts(&v, "big"), (0, 3, 1), "{t:#}");
    let keys: Vec<i64> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["change"] == "only_in_to")
        .map(|r| r["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(keys, [3001, 3002, 3003]);
    assert_eq!(t["partial"], true, "{t:#}");
    assert!(
        v["to"]["read_as"].as_str().unwrap().contains("-wal"),
        "{v:#}"
    );
    // The file and its -wal are untouched, and no -shm appeared beside them.
    assert_eq!(file_set(&dir), before);
}

#[test]
fn bad_sides_are_one_clear_line_and_never_hang() {
    let env = TestEnv::new();
    env.backup();
    let fifo = env.path("pipe.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    fs::write(env.path("notes.txt"), "hello").unwrap();
    fs::write(env.path("empty.db"), "").unwrap();
    let cases: [(&str, &str); 7] = [
        ("missing.db", "does not exist"),
        ("pipe.db", "is a FIFO"),
        ("store", "is a directory"),
        ("notes.txt", "is not a SQLite database"),
        ("empty.db", "is empty"),
        ("snapshot:", "snapshot: needs an id"),
        ("snapshot:nope", "nope"),
    ];
    for (spec, says) in cases {
        for json in [false, true] {
            let mut args = vec!["diff", "--to", spec];
            if json {
                args.push("--json");
                args.insert(0, "--log-format=json");
            }
            let started = std::time::Instant::now();
            let r = env.run(&args).expect_code(2);
            assert!(started.elapsed().as_secs() < 20, "{spec} hung");
            assert!(r.stdout.is_empty(), "{spec}: {}", r.stdout);
            if json {
                let line: Value = serde_json::from_str(r.stderr.lines().last().unwrap())
                    .unwrap_or_else(|e| panic!("{spec}: {e}: {}", r.stderr));
                assert!(
                    line["message"].as_str().unwrap().contains(says),
                    "{spec}: {line}"
                );
            } else {
                assert!(r.error_line().contains(says), "{spec}: {}", r.stderr);
            }
        }
    }
    // Nothing was left in the staging folder.
    let staging: Vec<PathBuf> = fs::read_dir(env.path("staging"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    assert!(staging.is_empty(), "{staging:?}");
}

#[test]
fn restore_ends_with_the_diff_command_that_shows_what_the_old_file_holds() {
    let env = TestEnv::new();
    let id = env.backup();
    // Orders written after the snapshot, then the database is "lost" and restored.
    Connection::open(&env.db)
        .unwrap()
        .execute_batch(
            "INSERT INTO orders VALUES (41, 1, '2026-12-05T01:00:00Z', 'paid'),
                                       (42, 2, '2026-12-05T02:00:00Z', 'paid');",
        )
        .unwrap();
    let r = env.run(&["restore", "--latest"]).ok();
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("guardian diff"))
        .unwrap_or_else(|| panic!("no diff command in:\n{}", r.stdout));
    let cmd = &line[line.find("guardian diff").unwrap()..];
    assert!(cmd.contains(&format!("--from snapshot:{id}")), "{cmd}");
    assert!(cmd.contains(".pre-restore-"), "{cmd}");
    // Run it as printed (no path here needs quoting).
    let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
    let r = env.run(&[&args[..], &["--json"]].concat()).ok();
    let v = json_of(&r);
    assert_eq!(counts(&v, "orders"), (0, 2, 0), "{v:#}");
    assert_eq!(v["totals"]["only_in_to"], 2);
}

/// The live database after `sql`, with a snapshot taken before it; returns the snapshot id.
fn env_with_snapshot_then(sql: &str) -> (TestEnv, String) {
    let env = TestEnv::new();
    let id = env.backup();
    Connection::open(&env.db)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    (env, id)
}

#[test]
fn table_restore_puts_back_only_those_tables_and_keeps_the_whole_file_aside() {
    let (env, id) = env_with_snapshot_then(
        "DELETE FROM order_items; DELETE FROM orders WHERE id > 30;
         UPDATE customers SET name = 'kept' WHERE id = 1;",
    );
    let before = util::dump(&env.db);
    let r = env
        .run(&[
            "restore",
            "--snapshot",
            &id,
            "--table",
            "orders",
            "--table",
            "order_items",
        ])
        .ok();
    assert!(r.stdout.contains("put back 2 table(s)"), "{}", r.stdout);
    assert_eq!(util::count(&env.db, "orders"), 40);
    assert_eq!(util::count(&env.db, "order_items"), 80);
    // Other tables keep what was written since.
    let name: String = Connection::open(&env.db)
        .unwrap()
        .query_row("SELECT name FROM customers WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "kept");
    assert_eq!(util::integrity(&env.db), "ok");
    // The whole file as it was is kept aside, and the diff command to look into it printed.
    let aside: Vec<PathBuf> = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".pre-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(util::dump(&aside[0]), before);
    assert!(
        r.stdout.contains(&format!(
            "guardian diff --db market --from snapshot:{id} --to {} --table orders --table order_items",
            aside[0].display()
        )),
        "{}",
        r.stdout
    );
}

#[test]
fn table_restore_that_breaks_a_foreign_key_changes_nothing_and_lists_the_violations() {
    // order_items back from the snapshot would point at orders deleted since.
    let (env, _) = env_with_snapshot_then(
        "PRAGMA foreign_keys = ON; DELETE FROM order_items WHERE order_id > 30; DELETE FROM orders WHERE id > 30;",
    );
    let before = util::dump(&env.db);
    let r = env
        .run(&["restore", "--latest", "--table", "order_items"])
        .expect_code(1);
    let line = r.error_line();
    assert!(line.contains("break foreign keys"), "{line}");
    assert!(line.contains("order_items row"), "{line}");
    assert!(line.contains("-> orders"), "{line}");
    assert!(line.contains("nothing changed"), "{line}");
    assert_eq!(util::dump(&env.db), before);
    // With the table they refer to, it goes through.
    env.run(&[
        "restore",
        "--latest",
        "--table",
        "order_items",
        "--table",
        "orders",
    ])
    .ok();
    assert_eq!(util::count(&env.db, "order_items"), 80);
}

#[test]
fn table_restore_refuses_what_it_cannot_do_before_changing_anything() {
    let (env, _) = env_with_snapshot_then(
        "CREATE TABLE later (x); ALTER TABLE products ADD COLUMN note TEXT;",
    );
    let before = util::dump(&env.db);
    for (table, says) in [
        ("nope", "no such table"),
        ("later", "the snapshot has no table later"),
        ("products", "its columns differ"),
    ] {
        let r = env
            .run(&["restore", "--latest", "--table", table])
            .expect_code(2);
        assert!(r.error_line().contains(says), "{table}: {}", r.stderr);
    }
    let r = env
        .run(&["restore", "--latest", "--table", "orders", "--to", "x.db"])
        .expect_code(2);
    assert!(r.stderr.contains("--to"), "{}", r.stderr);
    assert_eq!(util::dump(&env.db), before);
    let aside = fs::read_dir(env.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("pre-restore")
        })
        .count();
    assert_eq!(aside, 0);
}

#[test]
fn an_interrupted_table_restore_rolls_back_and_keeps_the_copy_aside() {
    let (env, _) = env_with_snapshot_then("DELETE FROM order_items;");
    let before = util::dump(&env.db);
    // Another writer holds the write lock, so the restore's transaction waits for it.
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN IMMEDIATE')\nc.execute(\"UPDATE products SET stock = stock\")\nprint('ready', flush=True)\nsys.stdin.readline()\nc.execute('ROLLBACK')\n";
    let (mut writer, _out) = util::python_until_ready(script, &env.db);
    // In use: refused without --force, as a full restore is.
    let r = env
        .run(&["restore", "--latest", "--table", "order_items"])
        .expect_code(2);
    assert!(r.error_line().contains("is in use"), "{}", r.stderr);
    let mut cmd = env.command();
    cmd.args(["restore", "--latest", "--table", "order_items", "--force"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Wait until the whole file is kept aside: the transaction is next.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !fs::read_dir(env.dir.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".pre-restore-")
    }) {
        assert!(std::time::Instant::now() < deadline, "no copy kept aside");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    use std::io::Write;
    writer.stdin.take().unwrap().write_all(b"\n").unwrap();
    writer.wait().unwrap();
    assert_eq!(util::dump(&env.db), before);
    assert_eq!(util::count(&env.db, "order_items"), 0);
}

#[test]
fn a_change_only_in_an_overflow_page_is_found() {
    // Same-length edit in the middle of a 20 KB value: the leaf page is byte for byte the same,
    // only an overflow page differs; the page comparison must not call the table unchanged.
    let env = TestEnv::new();
    let c = Connection::open(&env.db).unwrap();
    c.execute_batch("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO docs VALUES (1, printf('%.20000c', 'a'));")
        .unwrap();
    drop(c);
    let from = env.path("from.db");
    fs::copy(&env.db, &from).unwrap();
    Connection::open(&env.db)
        .unwrap()
        .execute_batch("UPDATE docs SET body = substr(body, 1, 9999) || 'b' || substr(body, 10001) WHERE id = 1;")
        .unwrap();
    let to = env.path("to.db");
    fs::copy(&env.db, &to).unwrap();
    let v = json_of(
        &env.run(&[
            "diff",
            "--json",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ])
        .ok(),
    );
    assert_eq!(counts(&v, "docs"), (0, 0, 1), "{v:#}");
    assert_eq!(table(&v, "orders")["same"], 40);
}

#[test]
fn table_restore_of_a_without_rowid_table_and_a_keyless_one_keeps_their_rows_and_rowids() {
    let env = env_with_extra_tables();
    // A gap in the rowids, which a plain re-insert would close.
    Connection::open(&env.db)
        .unwrap()
        .execute_batch("DELETE FROM events WHERE rowid = 1;")
        .unwrap();
    env.backup();
    let events = |db: &Path| -> Vec<(i64, String, String)> {
        Connection::open(db)
            .unwrap()
            .prepare("SELECT rowid, at, what FROM events ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let tags = |c: &[String]| -> Vec<String> {
        c.iter()
            .filter(|l| l.starts_with("tags: "))
            .cloned()
            .collect()
    };
    let (events_then, tags_then) = (events(&env.db), tags(&contents(&env.db)));
    Connection::open(&env.db)
        .unwrap()
        .execute_batch(
            "DELETE FROM tags; INSERT INTO tags VALUES ('new', 'x', 9);
             DELETE FROM events WHERE rowid = 2; UPDATE events SET what = 'gone';
             INSERT INTO events VALUES ('t9', 'late');
             UPDATE customers SET name = 'later' WHERE id = 3;",
        )
        .unwrap();
    // A dry run says what it would do and writes nothing.
    let before = contents(&env.db);
    let r = env
        .run(&[
            "restore",
            "--latest",
            "--table",
            "tags",
            "--table",
            "events",
            "--dry-run",
        ])
        .ok();
    assert!(
        r.stdout.contains("dry run: would put back 2 table(s)"),
        "{}",
        r.stdout
    );
    assert_eq!(contents(&env.db), before);
    env.run(&[
        "restore", "--latest", "--table", "tags", "--table", "events",
    ])
    .ok();
    // Rows as in the snapshot; the keyless table's rowids too (diff matches it by rowid).
    assert_eq!(tags(&contents(&env.db)), tags_then);
    assert_eq!(events(&env.db), events_then);
    assert_eq!(events_then.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 3]);
    // The rest kept what was written since.
    let name: String = Connection::open(&env.db)
        .unwrap()
        .query_row("SELECT name FROM customers WHERE id = 3", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "later");
}

#[test]
fn sigint_during_a_diff_stops_it_and_removes_its_scratch_files() {
    let env = TestEnv::new();
    let (a, b) = (env.path("a.db"), env.path("b.db"));
    big_db(&a, 300_000);
    fs::copy(&a, &b).unwrap();
    Connection::open(&b)
        .unwrap()
        .execute_batch("UPDATE big SET v = 'x' WHERE id % 1000 = 0;")
        .unwrap();
    let mut cmd = env.command();
    cmd.args([
        "diff",
        "--from",
        a.to_str().unwrap(),
        "--to",
        b.to_str().unwrap(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let scratch = || -> Vec<PathBuf> {
        fs::read_dir(env.path("staging"))
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.to_string_lossy().contains("-diff-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while scratch().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch folder appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("diff interrupted by SIGINT"), "{stderr}");
    assert_eq!(scratch(), Vec::<PathBuf>::new());
}

#[test]
fn a_file_whose_schema_page_is_damaged_is_one_line_exit_1_and_left_as_it_was() {
    let env = TestEnv::new();
    env.backup();
    let bad = env.path("bad.db");
    let mut bytes = fs::read(&env.db).unwrap();
    // Keep the 100-byte header, ruin the rest of page 1 (the schema's root).
    bytes[100..4096].fill(0xff);
    fs::write(&bad, &bytes).unwrap();
    let before = fs::read(&bad).unwrap();
    let r = env
        .run(&["diff", "--to", bad.to_str().unwrap()])
        .expect_code(1);
    let line = r.error_line();
    assert!(line.contains("its schema cannot be read"), "{line}");
    assert!(line.contains(".recover"), "{line}");
    assert!(!line.contains("restore --latest"), "{line}");
    assert_eq!(fs::read(&bad).unwrap(), before);
}

#[test]
fn a_table_restore_from_a_damaged_snapshot_is_exit_1_and_changes_nothing() {
    let env = TestEnv::new();
    let id = env.backup();
    let object = env.snapshot_dir(&id).join("db.sqlite.gz");
    let len = std::fs::metadata(&object).unwrap().len();
    util::flip_byte(&object, len / 2);
    let before = std::fs::read(&env.db).unwrap();
    let r = env.run(&["restore", "--table", "orders", "--snapshot", &id]);
    assert_eq!(
        r.code, 1,
        "a damaged snapshot is bad data, as in a full restore: {r:?}"
    );
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr);
    assert!(r.stderr.contains(&id), "{}", r.stderr);
    assert_eq!(std::fs::read(&env.db).unwrap(), before);
}
