#!/usr/bin/env python3
"""guardian's performance benchmark: guardian vs the shell baseline vs the hardware lower bound.

Generates a realistic e-commerce database (scripts/gen-db.sh) and measures, in one run and on the
same file:
  1. `guardian backup` to the local store (and to a local S3 server when --s3 ENDPOINT is given);
  2. the shell baseline: sqlite3 .backup + gzip -6 + sha256sum (+ aws s3 cp for S3);
  3. the lower bound: the same copy + pigz on every core at the level giving guardian's size,
     and a plain read of the file;
  4. `guardian restore --latest` vs gunzip + sha256sum + PRAGMA integrity_check, with every
     check (targets: at most 0.45x the shell restore) and of a drill-verified snapshot
     (quick_check; target at most 0.15x), the drill's proven restore time and the dry run's
     estimate, and from S3 (target: at most 1.2x the local restore);
  5. peak RSS of guardian (from /usr/bin/time -v) for each command;
  6. writer impact: p50/p99 commit latency of a steady writer before and during a backup;
  7. `guardian diff` of the database and a copy with 0.1% of its rows changed, against one
     `PRAGMA integrity_check` of the database in the same run (target: at most that time, peak
     RSS under 64 MiB).
Prints medians and ratios. Machines are noisy: run on an idle machine and quote medians.

With --incremental, only the page-level incremental snapshots are measured (issue #12's targets),
on a copy of the same database:
  1. a full backup vs an incremental after 0.1% of the pages changed at random (rows updated in
     place all over the tables): time, peak RSS, local bytes written (/proc/<pid>/io) against the
     incremental's stored bytes, with backup.check and incremental_check both "quick", then both
     "integrity" (and the ratio with the defaults: full "integrity", incremental "quick");
  2. a simulated day: one full, then --day (96) incrementals, each after a writer changed 0.01% of
     the pages at random plus the same few hot rows: the store folder's bytes vs the full alone;
  3. restore of the day's newest incremental vs restore of its base full (--check integrity);
  4. with --s3: the S3 requests of one incremental in steady state, from the server's log.

Usage: scripts/bench.py [--sizes 100,1024] [--runs 3] [--work DIR] [--s3 http://127.0.0.1:PORT] [--only diff|stores]
       scripts/bench.py --incremental [--sizes 100] [--runs 3] [--day 96] [--s3 ...]
"""

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# GUARDIAN_BENCH_BIN: another build to measure (e.g. one with other SQLite compile options);
# by default the release build, made when missing.
GUARDIAN = Path(os.environ.get("GUARDIAN_BENCH_BIN", ROOT / "target" / "release" / "guardian"))
# With --s3: the server from scripts/s3-server.sh (source target/s3-server/env first).
S3_BUCKET = os.environ.get("GUARDIAN_TEST_S3_BUCKET", "guardian-test")
S3_REGION = os.environ.get("GUARDIAN_TEST_S3_REGION", "us-east-1")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def timed(cmd, env=None):
    """Run a shell command under /usr/bin/time -v; return (seconds, peak RSS KiB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run(
        ["/usr/bin/time", "-v", "bash", "-c", cmd],
        capture_output=True, text=True, env=env,
    )
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {cmd}\n{p.stderr[-2000:]}")
    rss = 0
    for line in p.stderr.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[1])
    return dt, rss, p.stdout


def median_run(cmd, runs, setup=None, env=None):
    times, rss, out = [], [], ""
    for _ in range(runs):
        if setup:
            setup()
        dt, r, out = timed(cmd, env)
        times.append(dt)
        rss.append(r)
    return statistics.median(times), max(rss), out


def write_config(work, db, level=None, s3=None):
    cfg = work / ("guardian-s3.toml" if s3 else "guardian.toml")
    storage = (
        f'[storage]\nkind = "s3"\nbucket = "{S3_BUCKET}"\nprefix = "t-bench"\nendpoint = "{s3}"\n'
        f'force_path_style = true\nregion = "{S3_REGION}"\n'
        if s3 else f'[storage]\npath = "{work / "store"}"\n'
    )
    backup = f'[backup]\nstaging_dir = "{work}"\n' + (f"compression_level = {level}\n" if level else "")
    cfg.write_text(f'{storage}\n{backup}\n[[databases]]\nname = "bench"\npath = "{db}"\n')
    return cfg


def writer_latencies(db, seconds, stop_event=None):
    """Commit small transactions as fast as a real app would (no sleep) and record latencies."""
    c = sqlite3.connect(db, timeout=30, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("CREATE TABLE IF NOT EXISTS bench_writes (id INTEGER PRIMARY KEY, at REAL, pad TEXT)")
    lat, errors = [], 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop_event and stop_event.is_set()):
        t0 = time.perf_counter()
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO bench_writes (at, pad) VALUES (?, hex(randomblob(100)))", (t0,))
            c.execute("UPDATE customers SET phone = phone WHERE id = ?", (int(t0 * 1000) % 1000 + 1,))
            c.execute("COMMIT")
        except sqlite3.Error:
            errors += 1
        lat.append(time.perf_counter() - t0)
        time.sleep(0.002)  # a few hundred commits per second
    c.close()
    return lat, errors


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000 if xs else float("nan")


def bench_size(size_mib, runs, work, s3):
    print(f"\n## {size_mib} MiB database", flush=True)
    db = work / f"bench-{size_mib}.sqlite"
    if not db.exists():
        sh(f"{ROOT}/scripts/gen-db.sh {db} {size_mib} > /dev/null")
    raw = db.stat().st_size
    copy = work / "copy.db"
    rows = []

    def row(name, secs, rss=None, size=None):
        rows.append((name, secs, rss, size))

    # Plain read: the floor for anything that reads the database once.
    t, _, _ = median_run(f"cat {db} > /dev/null", runs)
    row("read the database (cat > /dev/null)", t)
    # Baseline pieces.
    t_copy, _, _ = median_run(f"rm -f {copy}; sqlite3 {db} '.backup {copy}'", runs)
    row("baseline: sqlite3 .backup", t_copy)
    t_gz, _, _ = median_run(f"gzip -6 -c {copy} > {copy}.gz", runs)
    gz6 = (work / "copy.db.gz").stat().st_size
    row("baseline: gzip -6", t_gz, size=gz6)
    t_sha, _, _ = median_run(f"sha256sum {copy}.gz > /dev/null", runs)
    row("baseline: sha256sum of the .gz", t_sha)
    baseline = t_copy + t_gz + t_sha
    row("baseline total (.backup + gzip -6 + sha256sum)", baseline, size=gz6)

    # guardian backup, local store.
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    cfg = write_config(work, db)
    t_g, rss_g, _ = median_run(f"{GUARDIAN} -q --config {cfg} backup", runs)
    objs = sorted(store.glob("bench/*/db.sqlite.gz"))
    g_size = objs[-1].stat().st_size
    manifest = json.loads((objs[-1].parent / "manifest.json").read_text())
    level = manifest.get("data", manifest)["compression_level"]  # format 2, or 1
    row(f"guardian backup (local, level {level})", t_g, rss_g, g_size)

    # Lower bound: copy + pigz on every core at the level whose output is closest to guardian's.
    cores = os.cpu_count()
    best = None
    for lv in (1, 2, 3, 4, 5, 6):
        t, _, _ = timed(f"pigz -{lv} -p{cores} -c {copy} > {copy}.pz")
        size = (work / "copy.db.pz").stat().st_size
        if best is None or abs(size - g_size) < abs(best[2] - g_size):
            best = (lv, t, size)
        if size <= g_size:
            break
    lv = best[0]
    t_pigz, _, _ = median_run(f"pigz -{lv} -p{cores} -c {copy} > {copy}.pz", runs)
    lower = t_copy + t_pigz
    row(f"lower bound: .backup + pigz -{lv} -p{cores}", lower, size=(work / "copy.db.pz").stat().st_size)

    # Restore.
    out = work / "restored.db"

    def clean_out():
        for p in work.glob("restored.db*"):
            p.unlink()

    t_r, rss_r, _ = median_run(f"{GUARDIAN} -q --config {cfg} restore --latest --to {out}", runs, setup=clean_out)
    row("guardian restore --latest (integrity_check)", t_r, rss_r)
    t_bl_r, _, _ = median_run(
        f"gunzip -c {copy}.gz > {out} && sha256sum {out} > /dev/null && sqlite3 {out} 'PRAGMA integrity_check' > /dev/null",
        runs, setup=clean_out)
    row("baseline restore: gunzip + sha256sum + integrity_check", t_bl_r)

    # A drill proves the snapshot (and measures the restore); a restore of it then needs only
    # quick_check. The dry run's estimate comes from the drill's measured time.
    t_drill, rss_drill, _ = timed(f"{GUARDIAN} -q --config {cfg} drill")
    row("guardian drill (restore into scratch + every check)", t_drill, rss_drill)
    st = json.loads(subprocess.run([str(GUARDIAN), "-q", "--config", str(cfg), "status", "--json"],
                                   capture_output=True, text=True).stdout)
    rto = (st[0].get("proven_rto") or {}).get("restore_seconds")
    dry = subprocess.run([str(GUARDIAN), "-q", "--config", str(cfg), "restore", "--latest", "--to", str(out), "--dry-run"],
                         capture_output=True, text=True).stdout
    estimate = next((l.strip() for l in dry.splitlines() if "estimated duration" in l), "(none)")
    t_rq, rss_rq, _ = median_run(f"{GUARDIAN} -q --config {cfg} restore --latest --to {out}", runs, setup=clean_out)
    row("guardian restore --latest of the drill-verified snapshot (quick_check)", t_rq, rss_rq)

    # diff: two files that differ in 0.1% of their rows, against one integrity_check.
    t_d, rss_d, changed = bench_diff(db, work, runs)
    t_ic, _, _ = median_run(f"sqlite3 {db} 'PRAGMA integrity_check' > /dev/null", runs)
    row("PRAGMA integrity_check (sqlite3)", t_ic)
    row(f"guardian diff of two files differing in 0.1% of rows ({changed} rows)", t_d, rss_d)

    # S3.
    if s3:
        env = dict(os.environ)
        env.setdefault("AWS_ACCESS_KEY_ID", os.environ.get("GUARDIAN_TEST_S3_ACCESS_KEY", ""))
        env.setdefault("AWS_SECRET_ACCESS_KEY", os.environ.get("GUARDIAN_TEST_S3_SECRET_KEY", ""))
        env.setdefault("AWS_REGION", S3_REGION)
        cfg_s3 = write_config(work, db, s3=s3)
        t_s3, rss_s3, _ = median_run(f"{GUARDIAN} -q --config {cfg_s3} backup", runs, env=env)
        row("guardian backup (S3)", t_s3, rss_s3)
        t_up, _, _ = median_run(f"aws --endpoint-url {s3} s3 cp --quiet {copy}.gz s3://{S3_BUCKET}/t-bench/baseline/copy.db.gz", runs, env=env)
        row("baseline: aws s3 cp of the .gz", t_up)
        row("baseline total S3 (.backup + gzip + sha256sum + aws s3 cp)", baseline + t_up)
        t_s3r, rss_s3r, _ = median_run(f"{GUARDIAN} -q --config {cfg_s3} restore --latest --to {out}", runs, setup=clean_out, env=env)
        row("guardian restore --latest from S3", t_s3r, rss_s3r)
        s3_ratio = t_s3r / t_r

    # Writer impact.
    lat0, err0 = writer_latencies(str(db), 5)
    stop = threading.Event()
    result = {}
    th = threading.Thread(target=lambda: result.update(zip(("lat", "err"), writer_latencies(str(db), 600, stop))))
    th.start()
    time.sleep(0.5)
    timed(f"{GUARDIAN} -q --config {cfg} backup")
    stop.set()
    th.join()
    lat1, err1 = result["lat"], result["err"]

    print(f"\n| step | median s | peak RSS MiB | output MiB |")
    print("|---|---:|---:|---:|")
    for name, secs, rss, size in rows:
        print(f"| {name} | {secs:.2f} | {'' if rss is None else f'{rss / 1024:.0f}'} | {'' if size is None else f'{size / 2**20:.0f}'} |")
    print()
    print(f"- database: {raw / 2**20:.0f} MiB; guardian object / gzip -6 size: {g_size / gz6:.3f}")
    print(f"- backup: baseline / guardian = {baseline / t_g:.2f}x faster; guardian / lower bound = {t_g / lower:.2f}")
    print(f"- restore with every check: guardian / baseline = {t_r / t_bl_r:.2f} (target <= 0.45)")
    print(f"- restore of a drill-verified snapshot (quick_check): guardian / baseline = {t_rq / t_bl_r:.2f} (target <= 0.15)")
    print(f"- proven restore time recorded by the drill: {rto} s; restore --dry-run afterwards: {estimate}")
    if s3:
        print(f"- restore from S3 / restore from the local store = {s3_ratio:.2f} (target <= 1.2)")
    print(f"- diff: guardian diff / integrity_check = {t_d / t_ic:.2f} (target <= 1), peak RSS {rss_d / 1024:.0f} MiB (target < 64)")
    print(f"- writer commit latency without backup: p50 {pct(lat0, .5):.2f} ms, p99 {pct(lat0, .99):.2f} ms ({len(lat0)} commits, {err0} errors)")
    print(f"- writer commit latency during backup:  p50 {pct(lat1, .5):.2f} ms, p99 {pct(lat1, .99):.2f} ms ({len(lat1)} commits, {err1} errors); p99 ratio {pct(lat1, .99) / pct(lat0, .99):.2f}")
    sys.stdout.flush()


def bench_diff(db, work, runs):
    """`guardian diff --json` of `db` and a copy with 0.1% of the rows of its two big tables
    updated, deleted or inserted: (median s, peak RSS KiB, rows changed)."""
    b = work / "diff-b.sqlite"
    shutil.copy(db, b)
    c = sqlite3.connect(b, isolation_level=None)
    n = c.execute("SELECT max(id) FROM orders").fetchone()[0]
    c.execute("BEGIN")
    # Spread over the whole table: 1 row in 1000 of each kind of change.
    c.execute("UPDATE orders SET status = 'refunded' WHERE id % 3000 = 1")
    c.execute("DELETE FROM order_items WHERE order_id % 3000 = 2")
    c.execute("DELETE FROM orders WHERE id % 3000 = 2")
    c.execute("UPDATE order_items SET qty = qty + 1 WHERE order_id % 3000 = 3")
    c.execute(f"INSERT INTO orders SELECT id + {n}, customer_id, placed_at, 'new', total_cents, shipping_address, notes FROM orders WHERE id % 3000 = 4")
    c.execute("COMMIT")
    changed = c.total_changes
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    # A config whose database is neither file: both are read in place (immutable), not copied.
    cfg = work / "guardian-diff.toml"
    cfg.write_text(f'[storage]\npath = "{work / "store"}"\n[backup]\nstaging_dir = "{work}"\n'
                   f'[[databases]]\nname = "other"\npath = "{work / "unused.sqlite"}"\n')
    t, rss, out = median_run(f"{GUARDIAN} -q --config {cfg} diff --from {db} --to {b} --json", runs)
    totals = json.loads(out)["totals"]
    assert totals["only_in_from"] + totals["only_in_to"] + totals["changed"] > 0, totals
    b.unlink()
    return t, rss, changed


def bench_scale(count, size_mib, work):
    """One guardian process backing up `count` databases of `size_mib` MiB: time and peak RSS."""
    print(f"\n## {count} databases of {size_mib} MiB in one config", flush=True)
    src = work / f"bench-{size_mib}.sqlite"
    if not src.exists():
        sh(f"{ROOT}/scripts/gen-db.sh {src} {size_mib} > /dev/null")
    store = work / "scale-store"
    shutil.rmtree(store, ignore_errors=True)
    dbs = ""
    for i in range(count):
        db = work / f"scale-{i}.sqlite"
        if not db.exists():
            shutil.copy(src, db)
        dbs += f'[[databases]]\nname = "db{i}"\npath = "{db}"\n'
    print("| databases | total s | s per database | peak RSS MiB |")
    print("|---:|---:|---:|---:|")
    for n in sorted({1, count // 2, count}):
        cfg = work / "scale.toml"
        cfg.write_text(f'[storage]\npath = "{store}"\n[backup]\nstaging_dir = "{work}"\n' + "".join(dbs.split("[[databases]]")[0:1]) + "[[databases]]".join([""] + dbs.split("[[databases]]")[1:n + 1]))
        t, rss, _ = timed(f"{GUARDIAN} -q --config {cfg} backup")
        print(f"| {n} | {t:.2f} | {t / n:.2f} | {rss / 1024:.0f} |", flush=True)


# ---- Incremental snapshots (--incremental) ----------------------------------------------------

# Rows updated in place by the writer, keeping each record's size (so a change stays on its page):
# a new phone number of the same length, the 48 hex digits that end every order note, the low bit
# of a price or stock figure (which never moves a value into another integer size).
CHANGES = {
    "customers": "UPDATE customers SET phone = '+1-555-' || printf('%07d', abs(random()) % 10000000) WHERE rowid = ?",
    "orders": "UPDATE orders SET notes = substr(notes, 1, length(notes) - 48) || hex(randomblob(24)) WHERE rowid = ?",
    "order_items": "UPDATE order_items SET price_cents = price_cents + 1 - 2 * (price_cents % 2) WHERE rowid = ?",
    "products": "UPDATE products SET stock = stock + 1 - 2 * (stock % 2) WHERE rowid = ?",
}
# The same rows every time: a shop's hot spots (its best sellers, its newest orders, one customer).
HOT = [("products", range(1, 9)), ("customers", range(1, 4)), ("orders", None)]


class Writer:
    """Changes rows at random over the database's tables, in proportion to their pages."""

    def __init__(self, db, seed=12):
        self.db = str(db)
        self.rng = random.Random(seed)
        c = sqlite3.connect(self.db)
        self.page_count = c.execute("PRAGMA page_count").fetchone()[0]
        leaves = dict(c.execute(
            "SELECT name, count(*) FROM dbstat WHERE pagetype = 'leaf' GROUP BY name").fetchall())
        self.tables = [(t, leaves.get(t, 0), c.execute(f"SELECT max(rowid) FROM {t}").fetchone()[0])
                       for t in CHANGES]
        c.close()
        self.table_pages = sum(p for _, p, _ in self.tables)

    def change(self, fraction, hot=False):
        """Update about `fraction` of the database's pages (one row each); with `hot`, also the
        HOT rows. One transaction, as an application would."""
        want = max(1, round(self.page_count * fraction))
        names = [t for t, _, _ in self.tables]
        weights = [p for _, p, _ in self.tables]
        top = {t: m for t, _, m in self.tables}
        c = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        c.execute("BEGIN IMMEDIATE")
        for t in self.rng.choices(names, weights, k=want):
            c.execute(CHANGES[t], (self.rng.randint(1, top[t]),))
        if hot:
            for t, ids in HOT:
                for i in ids or range(top[t] - 7, top[t] + 1):
                    c.execute(CHANGES[t], (i,))
        c.execute("COMMIT")
        c.close()
        return want


def proc_io():
    """This process's I/O counters. They include those of every child it has reaped (the kernel
    adds a child's /proc/<pid>/io counts to its parent's when it waits for it), so the difference
    around one child's run is that child's (and here its /usr/bin/time wrapper's, which writes
    nothing but a few bytes of its report)."""
    io = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        k, v = line.split(":")
        io[k] = int(v)
    return io


def measured(args, env=None):
    """Run guardian under /usr/bin/time -f %M: (seconds, peak RSS KiB, I/O counter deltas, stdout).
    The bench runs no other thread meanwhile, so the I/O deltas are the child's."""
    rss_file = Path(f"/tmp/guardian-bench-rss-{os.getpid()}")
    io0 = proc_io()
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), str(GUARDIAN)] + args,
                       capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    io1 = proc_io()
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): guardian {' '.join(args)}\n{p.stderr[-2000:]}")
    rss = int(rss_file.read_text().split()[-1])
    rss_file.unlink()
    return dt, rss, {k: io1[k] - io0[k] for k in io0}, p.stdout


def incr_config(work, name, db, check="integrity", store=None, s3=None):
    """A config for the incremental runs: its own store (or S3 prefix) and digest cache, and an
    `incremental` schedule as in production (a daily full plus 15-minute incrementals): with
    one, a full caches its page digests for the incrementals; without, the first incremental
    reads the whole full back from the store to rebuild them."""
    cfg = work / f"incr-{name}.toml"
    storage = (
        f'[storage]\nkind = "s3"\nbucket = "{S3_BUCKET}"\nprefix = "t-bench-incr-{os.getpid()}"\n'
        f'endpoint = "{s3}"\nforce_path_style = true\nregion = "{S3_REGION}"\n'
        if s3 else f'[storage]\npath = "{store}"\n'
    )
    cfg.write_text(
        f'{storage}\n[backup]\nstaging_dir = "{work}"\ncache_dir = "{work / f"cache-{name}"}"\n'
        f'check = "{check}"\nincremental_check = "{check}"\n\n[[databases]]\nname = "bench"\npath = "{db}"\n'
        f'backup = "0 3 * * *"\nincremental = "*/15 * * * *"\n')
    return cfg


def newest(cfg, env=None):
    """The newest snapshot in `list --json`, checked to be good."""
    out = subprocess.run([str(GUARDIAN), "--config", str(cfg), "list", "--json", "--db", "bench"],
                         capture_output=True, text=True, check=True, env=env).stdout
    snaps = json.loads(out)
    snaps = snaps.get("snapshots", snaps) if isinstance(snaps, dict) else snaps
    s = max(snaps, key=lambda s: s["created_at"] + s["id"])
    if s["status"] == "failed" or s.get("problem"):
        sys.exit(f"snapshot {s['id']} is not good: {s}")
    return s


def incremental_run(cfg, store, kind_wanted, env=None):
    """One guardian backup (full, or --incremental): seconds, RSS, I/O, the new snapshot."""
    args = ["-q", "--config", str(cfg), "backup"] + (["--incremental"] if kind_wanted == "incremental" else [])
    dt, rss, io, _ = measured(args, env)
    s = newest(cfg, env)
    if s["kind"] != kind_wanted:
        sys.exit(f"guardian {' '.join(args)} took a {s['kind']} snapshot, not an {kind_wanted} one")
    if store and kind_wanted == "incremental":
        m = json.loads((store / "bench" / s["id"] / "manifest.json").read_text())
        s["changed_pages"] = m["data"]["parts"][-1]["pages"]
        s["chain_parts"] = len(m["data"]["parts"])
    return dt, rss, io, s


def folder_bytes(folder):
    """(apparent bytes, allocated bytes) of every file under `folder`."""
    size = alloc = 0
    for f in Path(folder).rglob("*"):
        if f.is_file():
            st = f.stat()
            size += st.st_size
            alloc += st.st_blocks * 512
    return size, alloc


def loadavg():
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def bench_incremental(size_mib, runs, work, day, s3):
    print(f"\n## Incremental snapshots, {size_mib} MiB database", flush=True)
    # The writer changes this database (in place, randomly: it stays as realistic): a copy of
    # bench-SIZE.sqlite when there is one, else a new one (no second copy: 1 GiB each).
    db = work / f"incr-{size_mib}.sqlite"
    if not db.exists():
        src = work / f"bench-{size_mib}.sqlite"
        if src.exists():
            shutil.copy(src, db)
        else:
            sh(f"{ROOT}/scripts/gen-db.sh {db} {size_mib} > /dev/null")
    writer = Writer(db)
    print(f"- database: {db.stat().st_size / 2**20:.0f} MiB, {writer.page_count} pages of 4 KiB "
          f"({writer.table_pages} table leaves the writer picks rows from); load average {loadavg()}")
    print(f"- full: `guardian -q --config CFG backup`; incremental: `guardian -q --config CFG backup --incremental`,"
          f" each under `/usr/bin/time -f %M`; I/O from /proc/<pid>/io")

    # 1. Full vs incremental after 0.1% of the pages changed, per check.
    io_key = None
    summary = {}
    times = {}  # check -> (full, incremental) median seconds
    for check in ("quick", "integrity"):
        store = work / f"incr-store-{check}"
        cfg = incr_config(work, check, db, check=check, store=store)
        full, first, incr = [], [], []
        for _ in range(runs):
            shutil.rmtree(store, ignore_errors=True)  # one chain at a time
            full.append(incremental_run(cfg, store, "full"))
            # The first incremental on a full reads the full's object back (once per host);
            # the one measured is the next, as every other incremental of the day.
            writer.change(0.0001, hot=True)
            first.append(incremental_run(cfg, store, "incremental"))
            writer.change(0.001)
            incr.append(incremental_run(cfg, store, "incremental"))
        if io_key is None:
            io_key = "write_bytes" if any(r[2]["write_bytes"] for r in full + incr) else "wchar"
        med = lambda rs, f: statistics.median(f(r) for r in rs)
        t_f, t_i = med(full, lambda r: r[0]), med(incr, lambda r: r[0])
        t_first = med(first, lambda r: r[0])
        w_f, w_i = med(full, lambda r: r[2][io_key]), med(incr, lambda r: r[2][io_key])
        st_f = med(full, lambda r: r[3]["stored_bytes"])
        st_i = med(incr, lambda r: r[3]["stored_bytes"])
        changed = med(incr, lambda r: r[3]["changed_pages"])
        summary[check] = (t_i / t_f, max(r[1] for r in incr), w_i / st_i)
        times[check] = (t_f, t_i)
        print(f"\n### backup.check = \"{check}\" ({runs} runs, medians; load average {loadavg()})\n")
        print("| snapshot | s | peak RSS MiB | local bytes written MiB | wchar MiB | cancelled writes MiB | stored MiB | pages stored |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, rs in (("full", full), ("first incremental on the full (0.01% changed)", first),
                         ("incremental after 0.1% changed", incr)):
            print(f"| {name} | {med(rs, lambda r: r[0]):.2f} | {max(r[1] for r in rs) / 1024:.1f} "
                  f"| {med(rs, lambda r: r[2][io_key]) / 2**20:.2f} | {med(rs, lambda r: r[2]['wchar']) / 2**20:.2f} "
                  f"| {med(rs, lambda r: r[2]['cancelled_write_bytes']) / 2**20:.2f} "
                  f"| {med(rs, lambda r: r[3]['stored_bytes']) / 2**20:.3f} "
                  f"| {med(rs, lambda r: r[3].get('changed_pages', writer.page_count)):.0f} |")
        print(f"\n- writer changed {round(writer.page_count * 0.001)} rows (0.1% of the pages); the incremental stored"
              f" {changed:.0f} pages ({changed / writer.page_count:.3%}); runs: "
              + ", ".join(f"{r[0]:.2f} s" for r in incr)
              + f"; the first incremental on each full (reads the full back): {t_first / t_f:.2f}x the full's time")
        print(f"- incremental / full time: **{t_i / t_f:.2f}x** (target <= 0.3x); peak RSS "
              f"**{max(r[1] for r in incr) / 1024:.1f} MiB** (target < 64)")
        print(f"- local bytes written ({io_key}) / stored bytes: **{w_i / st_i:.2f}x** (target <= 3x);"
              f" the full wrote {w_f / st_f:.2f}x its stored bytes", flush=True)
        if day or check != "integrity":
            shutil.rmtree(store)  # disk: the restore below uses the day's store

    # 2. A simulated day.
    restore_ids = None
    if day:
        store = work / "incr-store-day"
        shutil.rmtree(store, ignore_errors=True)
        cfg = incr_config(work, "day", db, check="quick", store=store)
        print(f"\n### A simulated day: one full, then {day} incrementals (backup.check = \"quick\"; load average {loadavg()})\n")
        _, _, _, full = incremental_run(cfg, store, "full")
        full_bytes = folder_bytes(store / "bench" / full["id"])
        times, stored, changed, rows = [], [], [], 0
        t_day = time.perf_counter()
        for _ in range(day):
            rows = writer.change(0.0001, hot=True)
            dt, _, _, s = incremental_run(cfg, store, "incremental")
            times.append(dt)
            stored.append(s["stored_bytes"])
            changed.append(s["changed_pages"])
        t_day = time.perf_counter() - t_day
        total = folder_bytes(store / "bench")
        manifests = sum(f.stat().st_size for f in (store / "bench").rglob("manifest.json"))
        print("| what | bytes | allocated (du) |")
        print("|---|---:|---:|")
        print(f"| the full alone (object + manifest) | {full_bytes[0]:,} | {full_bytes[1]:,} |")
        print(f"| the day: full + {day} incrementals | {total[0]:,} | {total[1]:,} |")
        print(f"\n- each incremental: writer changed {rows} random rows (0.01% of the pages) + "
              f"{sum(len(ids or range(8)) for _, ids in HOT)} hot rows; pages stored per incremental median "
              f"{statistics.median(changed):.0f} (min {min(changed)}, max {max(changed)}); stored bytes median "
              f"{statistics.median(stored):,.0f}; manifests {manifests:,} bytes in all (the last one "
              f"{(store / 'bench' / s['id'] / 'manifest.json').stat().st_size:,}, naming {s['chain_parts']} parts)")
        print(f"- incremental time median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f});"
              f" the day took {t_day:.0f} s")
        print(f"- stored: day / full alone = **{total[0] / full_bytes[0]:.3f}x** (target <= 1.10x); "
              f"allocated {total[1] / full_bytes[1]:.3f}x", flush=True)
        restore_ids = (cfg, s["id"], full["id"], f"the day's newest incremental ({s['chain_parts']} parts)")
    else:
        restore_ids = (cfg, incr[-1][3]["id"], full[-1][3]["id"],
                       f"the newest incremental ({incr[-1][3]['chain_parts']} parts)")

    # 3. Restore: the newest incremental vs its base full, every check on.
    cfg, incr_id, full_id, what = restore_ids
    out = work / "incr-restored.db"

    def clean_out():
        for p in work.glob("incr-restored.db*"):
            p.unlink()

    r_args = lambda sid: ["-q", "--config", str(cfg), "restore", "--snapshot", sid, "--to", str(out), "--check", "integrity"]
    t_rf, t_ri, rss_r = [], [], []
    for _ in range(runs):  # alternated, so that the machine's load hits both alike
        for sid, ts in ((full_id, t_rf), (incr_id, t_ri)):
            clean_out()
            dt, rss, _, _ = measured(r_args(sid))
            ts.append(dt)
            rss_r.append(rss)
    clean_out()
    for store in ("incr-store-day", "incr-store-integrity"):
        shutil.rmtree(work / store, ignore_errors=True)
    print(f"\n### Restore ({runs} runs each, alternated, medians; load average {loadavg()})\n")
    print(f"- `guardian -q --config CFG restore --snapshot ID --to FILE --check integrity`: {what} "
          f"{statistics.median(t_ri):.2f} s, its base full {statistics.median(t_rf):.2f} s; peak RSS "
          f"{max(rss_r) / 1024:.1f} MiB")
    print(f"- incremental / full restore time: **{statistics.median(t_ri) / statistics.median(t_rf):.2f}x** "
          f"(target <= 1.15x)", flush=True)

    # 4. S3 requests per incremental in steady state.
    if s3:
        s3_requests(work, db, writer, s3)
    if "quick" in times and "integrity" in times:
        # The defaults: fulls run integrity_check, incrementals quick_check.
        print(f"\n- with the defaults (full: integrity_check, incremental: quick_check): incremental / full time "
              f"**{times['quick'][1] / times['integrity'][0]:.2f}x**")
    print("\n- summary: " + "; ".join(
        f"{c}: time {r[0]:.2f}x, RSS {r[1] / 1024:.1f} MiB, written/stored {r[2]:.2f}x" for c, r in summary.items()))


def s3_requests(work, db, writer, s3):
    """Count the requests of one incremental (after a full and a warm-up incremental) in the
    local moto server's log (werkzeug's access log: `"PUT /bucket/key?query HTTP/1.1" 200`)."""
    log = Path(os.environ.get("GUARDIAN_BENCH_S3_LOG", ROOT / "target" / "s3-server" / "moto.log"))
    if not log.exists():
        sys.exit(f"no S3 server log at {log}: start the server with scripts/s3-server.sh start "
                 "(or set GUARDIAN_BENCH_S3_LOG)")
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", os.environ.get("GUARDIAN_TEST_S3_ACCESS_KEY", ""))
    env.setdefault("AWS_SECRET_ACCESS_KEY", os.environ.get("GUARDIAN_TEST_S3_SECRET_KEY", ""))
    env.setdefault("AWS_REGION", S3_REGION)
    cfg = incr_config(work, "s3", db, check="quick", s3=s3)
    print(f"\n### S3 requests of one incremental in steady state (local moto server; load average {loadavg()})\n")
    incremental_run(cfg, None, "full", env)
    writer.change(0.0001, hot=True)
    incremental_run(cfg, None, "incremental", env)  # warm-up
    writer.change(0.0001, hot=True)
    start = log.stat().st_size
    dt, rss, _, _ = measured(["-q", "--config", str(cfg), "backup", "--incremental"], env)
    time.sleep(0.5)  # the server writes its log line after the response
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    s = newest(cfg, env)
    if s["kind"] != "incremental":
        sys.exit(f"the measured S3 run took a {s['kind']} snapshot, not an incremental one")
    reqs = []
    for line in lines:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # werkzeug colours the failed ones
        if '"' not in line:
            continue
        req = line.split('"')[1].split()
        if len(req) == 3 and req[0] in ("GET", "PUT", "POST", "HEAD", "DELETE"):
            status = line.split('"')[2].split()[0]
            reqs.append((req[0], req[1], status))
    counts = {}
    for m, _, _ in reqs:
        counts[m] = counts.get(m, 0) + 1
    print(f"- `guardian -q --config CFG backup --incremental` against {s3}: {dt:.2f} s, peak RSS "
          f"{rss / 1024:.1f} MiB, {s['stored_bytes']:,} bytes stored; requests: "
          + ", ".join(f"{n} {m}" for m, n in sorted(counts.items())))
    print(f"- PUTs: **{counts.get('PUT', 0)}** (target <= 4)\n")
    print("| method | path (bucket/prefix/…) | status |")
    print("|---|---|---|")
    for m, path, status in reqs:
        print(f"| {m} | `{path}` | {status} |")
    sys.stdout.flush()


def stores_config(work, db, which, s3):
    """A config whose database goes to `which`: "local", "s3" or "both" ([[stores]])."""
    cfg = work / f"stores-{which}.toml"
    near = f'name = "near"\npath = "{work / "store-near"}"\n'
    far = (f'name = "far"\nkind = "s3"\nbucket = "{S3_BUCKET}"\nprefix = "t-bench-stores-{os.getpid()}"\n'
           f'endpoint = "{s3}"\nforce_path_style = true\nregion = "{S3_REGION}"\n')
    stores = {"local": [near], "s3": [far], "both": [near, far]}[which]
    text = "".join(f"[[stores]]\n{t}\n" for t in stores)
    cfg.write_text(f'{text}[backup]\nstaging_dir = "{work}"\n\n[[databases]]\nname = "bench"\npath = "{db}"\n')
    return cfg


def bench_stores(size_mib, runs, work, s3):
    """Issue #13's target: a backup to two stores (local + the local S3 server) against the
    slower single-store backup, runs interleaved; peak RSS; and the bytes guardian read (rchar),
    which show the source is read once whatever the number of stores."""
    db = work / f"bench-{size_mib}.sqlite"
    if not db.exists():
        sh(f"{ROOT}/scripts/gen-db.sh {db} {size_mib} > /dev/null")
    size = db.stat().st_size
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", os.environ.get("GUARDIAN_TEST_S3_ACCESS_KEY", ""))
    env.setdefault("AWS_SECRET_ACCESS_KEY", os.environ.get("GUARDIAN_TEST_S3_SECRET_KEY", ""))
    env.setdefault("AWS_REGION", S3_REGION)
    results = {w: {"t": [], "rss": [], "rchar": []} for w in ("local", "s3", "both")}
    for _ in range(runs):
        for which in ("local", "s3", "both"):
            cfg = stores_config(work, db, which, s3)
            dt, rss, io, _ = measured(["--config", str(cfg), "backup"], env=env)
            results[which]["t"].append(dt)
            results[which]["rss"].append(rss)
            results[which]["rchar"].append(io.get("rchar", 0))
    shutil.rmtree(work / "store-near", ignore_errors=True)
    print(f"\n## Several stores: backup of the {size / 2**20:.0f} MiB database (load {loadavg()})")
    print("| stores | median | peak RSS | read by guardian (rchar) |")
    print("|---|---|---|---|")
    med = {}
    for which, label in (("local", "local only"), ("s3", "local S3 server only"), ("both", "both ([[stores]] near + far)")):
        r = results[which]
        med[which] = statistics.median(r["t"])
        print(f"| {label} | {med[which]:.2f} s | {max(r['rss']) / 1024:.0f} MiB | "
              f"{statistics.median(r['rchar']) / 2**20:.0f} MiB ({statistics.median(r['rchar']) / size:.2f}x the database) |")
    slower = max(med["local"], med["s3"])
    print(f"- two stores / slower single store = {med['both'] / slower:.2f} (target <= 1.15); "
          f"peak RSS target < 64 MiB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1024", help="database sizes in MiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/guardian-bench")
    ap.add_argument("--scale", type=int, default=10, help="also back up this many 100 MiB databases in one run (0: skip)")
    ap.add_argument("--only", choices=("all", "diff", "stores"), default="all",
                    help="diff: only the diff rows (diff vs integrity_check), e.g. on a small disk; "
                         "stores: only a backup to two stores (needs --s3) against one")
    ap.add_argument("--s3", help="endpoint of a local S3 server (start it with scripts/s3-server.sh start; source target/s3-server/env)")
    ap.add_argument("--incremental", action="store_true",
                    help="measure only incremental snapshots against full ones (issue #12's targets)")
    ap.add_argument("--day", type=int, default=96,
                    help="with --incremental: incrementals in the simulated day (0: skip it)")
    a = ap.parse_args()
    tools = ("sqlite3", "/usr/bin/time") if a.only in ("diff", "stores") or a.incremental else ("sqlite3", "gzip", "pigz", "sha256sum", "/usr/bin/time")
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: apt-get install sqlite3 pigz time")
    if not GUARDIAN.exists():
        sh(f"cd {ROOT} && cargo build --release --locked")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"guardian benchmark on {os.cpu_count()} cores, {a.runs} runs per figure (medians)")
    print("$ " + " ".join([sys.argv[0]] + sys.argv[1:]))
    sh("uname -srm; grep -m1 'model name' /proc/cpuinfo || true")
    if a.only == "diff":
        for size in a.sizes.split(","):
            db = work / f"bench-{size}.sqlite"
            if not db.exists():
                sh(f"{ROOT}/scripts/gen-db.sh {db} {size} > /dev/null")
            t_ic, _, _ = median_run(f"sqlite3 {db} 'PRAGMA integrity_check' > /dev/null", a.runs)
            t_d, rss_d, changed = bench_diff(db, work, a.runs)
            print(f"\n## {size} MiB database ({db.stat().st_size / 2**20:.0f} MiB)")
            print(f"| PRAGMA integrity_check (sqlite3) | {t_ic:.2f} s |")
            print(f"| guardian diff, 0.1% of rows differ ({changed} rows) | {t_d:.2f} s | {rss_d / 1024:.0f} MiB peak RSS |")
            print(f"- diff / integrity_check = {t_d / t_ic:.2f} (target <= 1); peak RSS target < 64 MiB", flush=True)
        return
    if a.only == "stores":
        if not a.s3:
            sys.exit("--only stores needs --s3 ENDPOINT (scripts/s3-server.sh start; source target/s3-server/env)")
        for size in a.sizes.split(","):
            bench_stores(int(size), a.runs, work, a.s3)
        return
    if a.incremental:
        for size in a.sizes.split(","):
            bench_incremental(int(size), a.runs, work, a.day, a.s3)
        return
    for size in a.sizes.split(","):
        bench_size(int(size), a.runs, work, a.s3)
    if a.scale:
        bench_scale(a.scale, 100, work)


if __name__ == "__main__":
    main()
