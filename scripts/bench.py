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

Usage: scripts/bench.py [--sizes 100,1024] [--runs 3] [--work DIR] [--s3 http://127.0.0.1:PORT] [--only diff]
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARDIAN = ROOT / "target" / "release" / "guardian"
# With --s3: the server from scripts/s3-server.sh (source target/s3-server/env first).
S3_BUCKET = os.environ.get("GUARDIAN_TEST_S3_BUCKET", "guardian-test")


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
        f'force_path_style = true\nregion = "us-east-1"\n'
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
        env.setdefault("AWS_REGION", "us-east-1")
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1024", help="database sizes in MiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/guardian-bench")
    ap.add_argument("--scale", type=int, default=10, help="also back up this many 100 MiB databases in one run (0: skip)")
    ap.add_argument("--only", choices=("all", "diff"), default="all",
                    help="diff: only the diff rows (diff vs integrity_check), e.g. on a small disk")
    ap.add_argument("--s3", help="endpoint of a local S3 server (start it with scripts/s3-server.sh start; source target/s3-server/env)")
    a = ap.parse_args()
    tools = ("sqlite3", "/usr/bin/time") if a.only == "diff" else ("sqlite3", "gzip", "pigz", "sha256sum", "/usr/bin/time")
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: apt-get install sqlite3 pigz time")
    if not GUARDIAN.exists():
        sh(f"cd {ROOT} && cargo build --release --locked")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"guardian benchmark on {os.cpu_count()} cores, {a.runs} runs per figure (medians)")
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
    for size in a.sizes.split(","):
        bench_size(int(size), a.runs, work, a.s3)
    if a.scale:
        bench_scale(a.scale, 100, work)


if __name__ == "__main__":
    main()
