#!/usr/bin/env python3
"""Rebuild one guardian snapshot from a local store folder, without guardian.

    scripts/rebuild.py [--identity FILE] STORE_DIR DB SNAPSHOT_ID OUT_FILE

Reads STORE_DIR/DB/SNAPSHOT_ID/manifest.json and the objects it names (docs/FORMAT.md), and
writes the SQLite database the snapshot holds to OUT_FILE. Works for both layouts ("whole": a
full snapshot; "pages": an incremental, rebuilt from its base's whole object and the page sets
its manifest names) and for format 1 and 2 manifests.

Everything is proven on the way: each object's size and SHA-256 as stored, the SHA-256 of its
decompressed stream, the page-set structure, and at the end the SHA-256 of the whole rebuilt
file against the manifest's raw_sha256. Memory stays bounded (a few MiB plus one bit per
page): the database is streamed, never held in RAM. OUT_FILE appears only once everything
matched (it is written under a temporary name first); an existing OUT_FILE is never replaced.

Encrypted snapshots ("encryption": "age") need --identity FILE and the age CLI
(https://age-encryption.org) on PATH; the objects are decrypted with `age -d -i FILE`.

Exit codes: 0 rebuilt and proven; 1 the snapshot is damaged or incomplete (a missing object, a
digest that does not match, a stream that does not decode); 2 bad usage or an operational
failure (unreadable store, OUT_FILE exists, disk full, age missing, the wrong identity).
Errors are one line on stderr. Python 3 standard library only.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zlib

PROG = "rebuild.py"
MANIFEST = "manifest.json"
TOMBSTONE = "tombstone.json"
MAX_MANIFEST_BYTES = 1 << 20
PAGES_MAGIC = b"guardian-pages-1"
READ_CHUNK = 1 << 20  # stored bytes read at a time
OUT_CHUNK = 4 << 20  # at most this many decompressed bytes at a time
ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
COMPONENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


class Damaged(Exception):
    """The snapshot cannot be rebuilt as its manifest says (exit 1)."""


class Failed(Exception):
    """Bad usage or an operational failure (exit 2)."""


# ---------------------------------------------------------------------------------------------
# The manifest


def component(name, what):
    """A file or folder name from the manifest: one safe path component."""
    if (
        not isinstance(name, str)
        or not COMPONENT_RE.match(name)
        or name.startswith(".")
    ):
        raise Damaged("the manifest names an invalid %s %r" % (what, name))
    return name


def field(obj, name, kind, where):
    if not isinstance(obj, dict) or name not in obj:
        raise Damaged("the manifest has no %s%s" % (where, name))
    value = obj[name]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "str": isinstance(value, str),
        "sha": isinstance(value, str) and HEX64_RE.match(value) is not None,
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
    }[kind]
    if not ok:
        raise Damaged("the manifest's %s%s is not valid: %r" % (where, name, value))
    return value


def object_spec(obj, where):
    """The encoding fields shared by a whole object and a part."""
    compression = field(obj, "compression", "str", where)
    if compression != "gzip":
        raise Damaged("unknown compression %r in %s" % (compression, where or "the manifest"))
    encryption = obj.get("encryption")
    if encryption not in (None, "age"):
        raise Damaged("unknown encryption %r (a newer guardian wrote this snapshot)" % encryption)
    return {
        "object": component(field(obj, "object", "str", where), "data object"),
        "encryption": encryption,
        "stored_len": field(obj, "stored_len", "int", where),
        "stored_sha256": field(obj, "stored_sha256", "sha", where),
    }


def load_manifest(store, db, snapshot):
    path = os.path.join(store, db, snapshot, MANIFEST)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        if not os.path.isdir(os.path.join(store, db)):
            raise Failed("%s: no such folder; check STORE_DIR and DB" % os.path.join(store, db))
        raise Damaged(
            "%s is missing: %s is not a snapshot (an interrupted backup, or not in this store)"
            % (path, snapshot)
        )
    except OSError as e:
        raise Failed("cannot read %s: %s" % (path, e.strerror or e))
    if len(text) > MAX_MANIFEST_BYTES:
        raise Damaged("%s is over %d bytes; not a manifest" % (path, MAX_MANIFEST_BYTES))
    try:
        m = json.loads(text)
    except ValueError as e:
        raise Damaged("%s is not valid JSON: %s" % (path, e))
    if not isinstance(m, dict):
        raise Damaged("%s is not a JSON object" % path)
    version = field(m, "format_version", "int", "")
    if version not in (1, 2):
        raise Damaged(
            "%s has format_version %s; this script reads 1 and 2 (a newer guardian wrote it)"
            % (path, version)
        )
    if m.get("db") != db or m.get("id") != snapshot:
        raise Damaged(
            "%s names database %r snapshot %r, but is stored under %r %r"
            % (path, m.get("db"), m.get("id"), db, snapshot)
        )
    page_size = field(m, "page_size", "int", "")
    page_count = field(m, "page_count", "int", "")
    raw_len = field(m, "raw_len", "int", "")
    field(m, "raw_sha256", "sha", "")
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise Damaged("%s: page_size %d is not a SQLite page size" % (path, page_size))
    if page_size * page_count != raw_len:
        raise Damaged(
            "%s: raw_len %d is not page_size %d x page_count %d"
            % (path, raw_len, page_size, page_count)
        )
    if version == 1:
        # Format 1: the one whole object's fields are at the top level.
        data = dict(m, layout="whole")
    else:
        data = field(m, "data", "dict", "")
    layout = data.get("layout")
    if layout == "whole":
        m["_whole"] = object_spec(data, "data." if version == 2 else "")
    elif layout == "pages":
        m["_parts"] = load_parts(m, data)
    else:
        raise Damaged("%s: unknown data layout %r (a newer guardian wrote it)" % (path, layout))
    return m


def load_parts(m, data):
    base = field(data, "base", "str", "data.")
    parts = field(data, "parts", "list", "data.")
    if len(parts) < 2:
        raise Damaged("an incremental's manifest must name at least 2 parts, not %d" % len(parts))
    out = []
    for i, p in enumerate(parts):
        where = "data.parts[%d]." % i
        spec = object_spec(p, where)
        snap = field(p, "snapshot", "str", where)
        if not ID_RE.match(snap):
            raise Damaged("the manifest's %ssnapshot %r is not a snapshot id" % (where, snap))
        content = field(p, "content", "str", where)
        want = "whole" if i == 0 else "pages"
        if content != want:
            raise Damaged("part %d of the chain must be a %s object, not %r" % (i, want, content))
        if spec["object"] in (MANIFEST, TOMBSTONE):
            raise Damaged("the manifest names an invalid data object %r" % spec["object"])
        # Ids have second precision: within one second they may sort either way.
        if any(q["snapshot"] == snap for q in out) or (out and snap[:16] < out[-1]["snapshot"][:16]):
            raise Damaged("the chain's parts are not in snapshot order (part %d)" % i)
        spec.update(
            snapshot=snap,
            content=content,
            raw_len=field(p, "raw_len", "int", where),
            raw_sha256=field(p, "raw_sha256", "sha", where),
            page_count=field(p, "page_count", "int", where),
            pages=field(p, "pages", "int", where),
        )
        if i > 0 and spec["raw_len"] != len(PAGES_MAGIC) + 4 + spec["pages"] * (4 + m["page_size"]):
            raise Damaged(
                "part %d: raw_len %d does not fit %d pages of %d bytes"
                % (i, spec["raw_len"], spec["pages"], m["page_size"])
            )
        if spec["pages"] > spec["page_count"]:
            raise Damaged("part %d holds more pages than its page count" % i)
        out.append(spec)
    if out[0]["snapshot"] != base:
        raise Damaged("the chain's first part is not its base's (%s)" % base)
    parent = field(data, "parent", "str", "data.")
    if parent == m["id"] or not any(p["snapshot"] == parent for p in out[:-1]):
        raise Damaged("the chain's parent %r is not one of its earlier parts" % parent)
    if out[-1]["snapshot"] != m["id"] or out[-1]["page_count"] != m["page_count"]:
        raise Damaged("the chain's last part is not this snapshot's own")
    return out


# ---------------------------------------------------------------------------------------------
# Objects: stored bytes -> (age) -> gzip -> raw stream, every digest checked


class Checked:
    """Reads one stored object, checking its size and SHA-256 against the manifest."""

    def __init__(self, store, db, snapshot, spec):
        self.spec = spec
        self.path = os.path.join(store, db, snapshot, spec["object"])
        self.name = "%s/%s/%s" % (db, snapshot, spec["object"])
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            raise Damaged("%s is missing (the manifest names it)" % self.name)
        except OSError as e:
            raise Failed("cannot read %s: %s" % (self.path, e.strerror or e))
        if size != spec["stored_len"]:
            raise Damaged(
                "%s is %d bytes, the manifest says %d (truncated or replaced)"
                % (self.name, size, spec["stored_len"])
            )

    def stored_chunks(self):
        """The stored bytes; raises Damaged at the end when they are not the manifest's."""
        h, n = hashlib.sha256(), 0
        try:
            with open(self.path, "rb") as f:
                while True:
                    chunk = f.read(READ_CHUNK)
                    if not chunk:
                        break
                    h.update(chunk)
                    n += len(chunk)
                    yield chunk
        except OSError as e:
            raise Failed("cannot read %s: %s" % (self.path, e.strerror or e))
        self.check_stored(n, h.hexdigest())

    def check_stored(self, n, sha):
        if n != self.spec["stored_len"] or sha != self.spec["stored_sha256"]:
            raise Damaged(
                "%s: stored SHA-256 %s (%d bytes), the manifest says %s (%d bytes): the object is damaged"
                % (self.name, sha, n, self.spec["stored_sha256"], self.spec["stored_len"])
            )

    def verify_stored(self):
        for _ in self.stored_chunks():
            pass

    def gzip_chunks(self, identity):
        """The gzip stream: the stored bytes, or what `age -d` makes of them."""
        if self.spec["encryption"] is None:
            yield from self.stored_chunks()
            return
        if identity is None:
            raise Failed(
                "%s is encrypted with age: pass --identity FILE (the age identity of the "
                "store's recipient; needs the age CLI), or decrypt it with `age -d` first" % self.name
            )
        age = shutil.which("age")
        if age is None:
            raise Failed(
                "%s is encrypted with age, and the age CLI is not on PATH: install age "
                "(https://age-encryption.org)" % self.name
            )
        # The ciphertext is proven before it is decrypted.
        self.verify_stored()
        proc = subprocess.Popen(
            [age, "--decrypt", "-i", identity, self.path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            while True:
                chunk = proc.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                yield chunk
            err = proc.stderr.read().decode("utf-8", "replace").strip()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if proc.returncode != 0:
            lines = [l for l in err.splitlines() if "error" in l] or err.splitlines()
            line = lines[0] if lines else "exit code %d" % proc.returncode
            # The ciphertext is the one the manifest names (proven above): the identity is wrong.
            raise Failed(
                "%s: age could not decrypt it with --identity %s (%s); pass the identity of "
                "the store's recipient" % (self.name, identity, line)
            )

    def raw_chunks(self, identity):
        """The decompressed stream (every gzip member, CRCs checked), then its size and
        SHA-256 against the manifest's raw_len and raw_sha256 (when it records them)."""
        h, n = hashlib.sha256(), 0
        for chunk in gunzip(self.gzip_chunks(identity), self):
            h.update(chunk)
            n += len(chunk)
            yield chunk
        want_len, want_sha = self.spec.get("raw_len"), self.spec.get("raw_sha256")
        if want_sha is not None and (n != want_len or h.hexdigest() != want_sha):
            raise Damaged(
                "%s: decompressed SHA-256 %s (%d bytes), the manifest says %s (%d bytes)"
                % (self.name, h.hexdigest(), n, want_sha, want_len)
            )
        self.raw_len, self.raw_sha256 = n, h.hexdigest()


def gunzip(chunks, obj):
    """Decompress a stream of one or more concatenated gzip members, in bounded memory."""
    it = iter(chunks)
    d = zlib.decompressobj(31)
    in_member = False
    try:
        for buf in it:
            while buf:
                in_member = True
                out = d.decompress(buf, OUT_CHUNK)
                if out:
                    yield out
                if d.eof:
                    buf = d.unused_data
                    d = zlib.decompressobj(31)
                    in_member = False
                    continue
                buf = d.unconsumed_tail
                while not buf and len(out) == OUT_CHUNK:
                    # Output was cut at the limit: drain what zlib still holds.
                    out = d.decompress(b"", OUT_CHUNK)
                    if out:
                        yield out
                    if d.eof:
                        buf = d.unused_data
                        d = zlib.decompressobj(31)
                        in_member = False
                        break
                    buf = d.unconsumed_tail
    except zlib.error as e:
        # Say "damaged" with the digests when the stored bytes are not the manifest's.
        for _ in it:
            pass
        raise Damaged("%s does not decompress: %s" % (obj.name, e))
    if in_member:
        raise Damaged("%s: the gzip stream is cut short" % obj.name)


# ---------------------------------------------------------------------------------------------
# Rebuilding


def out_of(raw, page_size):
    """Split a raw stream into whole pages: yields (memoryview of n pages, n)."""
    carry = b""
    for chunk in raw:
        if carry:
            chunk = carry + chunk
        whole = len(chunk) - len(chunk) % page_size
        carry = chunk[whole:]
        if whole:
            yield memoryview(chunk)[:whole]
    if carry:
        yield memoryview(carry)  # a partial page: the caller refuses it


def rebuild_whole(store, db, m, fd, identity):
    spec = dict(m["_whole"], raw_len=m["raw_len"], raw_sha256=m["raw_sha256"])
    obj = Checked(store, db, m["id"], spec)
    off = 0
    for chunk in obj.raw_chunks(identity):
        pwrite_all(fd, chunk, off)
        off += len(chunk)


def pwrite_all(fd, data, off):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


class PageSet:
    """Parses a page-set stream: magic, u32 BE page size, then (u32 BE page number, page)
    records, page numbers strictly ascending and within the part's page count."""

    def __init__(self, obj, page_size, max_pgno):
        self.obj, self.page_size, self.max_pgno = obj, page_size, max_pgno

    def records(self, raw):
        """Yields (page number, page) for every record."""
        buf = bytearray()
        pos = 0
        header = len(PAGES_MAGIC) + 4
        unit = 4 + self.page_size
        have_header = False
        last = 0
        for chunk in raw:
            buf += chunk
            if not have_header:
                if len(buf) < header:
                    continue
                if bytes(buf[:16]) != PAGES_MAGIC:
                    raise Damaged("%s is not a guardian page set (bad magic)" % self.obj.name)
                size = int.from_bytes(buf[16:20], "big")
                if size != self.page_size:
                    raise Damaged(
                        "%s has pages of %d bytes, the manifest says %d"
                        % (self.obj.name, size, self.page_size)
                    )
                have_header, pos = True, header
            view = memoryview(buf)
            while len(buf) - pos >= unit:
                pgno = int.from_bytes(view[pos : pos + 4], "big")
                if pgno <= last or pgno > self.max_pgno:
                    raise Damaged(
                        "%s: page %d is out of order or past the page count %d"
                        % (self.obj.name, pgno, self.max_pgno)
                    )
                last = pgno
                yield pgno, bytes(view[pos + 4 : pos + unit])
                pos += unit
            view.release()
            del buf[:pos]
            pos = 0
        if not have_header or buf:
            raise Damaged("%s: the page set ends in the middle of a record" % self.obj.name)


def rebuild_pages(store, db, m, fd, identity):
    page_size, page_count = m["page_size"], m["page_count"]
    parts = m["_parts"]
    # One bit per page: set when a page set supplied it.
    have = bytearray(page_count // 8 + 1)
    # 1. The page sets, oldest first: each page at its offset, a newer copy over an older one;
    #    pages past this snapshot's page count are gone (the database shrank since).
    for part in parts[1:]:
        obj = Checked(store, db, part["snapshot"], part)
        records = 0
        for pgno, page in PageSet(obj, page_size, part["page_count"]).records(
            obj.raw_chunks(identity)
        ):
            records += 1
            if pgno > page_count:
                continue
            pwrite_all(fd, page, (pgno - 1) * page_size)
            have[pgno >> 3] |= 1 << (pgno & 7)
        if records != part["pages"]:
            raise Damaged(
                "%s holds %d pages, the manifest says %d" % (obj.name, records, part["pages"])
            )
    # 2. The base's whole object: every page no page set supplied, in place.
    base = parts[0]
    obj = Checked(store, db, base["snapshot"], base)
    pgno = 0  # pages of the base seen so far
    for run in out_of(obj.raw_chunks(identity), page_size):
        if len(run) % page_size:
            raise Damaged("%s is not a whole number of pages" % obj.name)
        first = pgno + 1
        pgno += len(run) // page_size
        n = first
        while n <= min(pgno, page_count):
            if have[n >> 3] & (1 << (n & 7)):
                n += 1
                continue
            end = n
            while end + 1 <= min(pgno, page_count) and not have[(end + 1) >> 3] & (1 << ((end + 1) & 7)):
                end += 1
            lo, hi = (n - first) * page_size, (end - first + 1) * page_size
            pwrite_all(fd, run[lo:hi], (n - 1) * page_size)
            n = end + 1
    # 3. Pages past the base's end must have come from page sets.
    for n in range(pgno + 1, page_count + 1):
        if not have[n >> 3] & (1 << (n & 7)):
            raise Damaged("page %d is in no part of the chain" % n)


def prove(fd, m, out_name):
    """The SHA-256 of the whole rebuilt file must be the manifest's raw_sha256."""
    size = os.fstat(fd).st_size
    h, off = hashlib.sha256(), 0
    while off < size:
        chunk = os.pread(fd, READ_CHUNK, off)
        if not chunk:
            break
        h.update(chunk)
        off += len(chunk)
    if off != m["raw_len"] or h.hexdigest() != m["raw_sha256"]:
        raise Damaged(
            "the rebuilt database has SHA-256 %s (%d bytes), the manifest says %s (%d bytes); "
            "%s was not written" % (h.hexdigest(), off, m["raw_sha256"], m["raw_len"], out_name)
        )


def rebuild(args):
    store, db, snapshot, out = args.store_dir, args.db, args.snapshot_id, args.out_file
    if not os.path.isdir(store):
        raise Failed("%s: no such folder (STORE_DIR is the local store's path)" % store)
    try:
        component(db, "database name")
    except Damaged:
        raise Failed("%r is not a database name" % db)
    if not ID_RE.match(snapshot):
        raise Failed("%r is not a snapshot id (expected YYYYMMDDTHHMMSSZ-xxxxxxxx)" % snapshot)
    if os.path.lexists(out):
        raise Failed("%s exists; move it aside or name another OUT_FILE" % out)
    if args.identity is not None and not os.path.isfile(args.identity):
        raise Failed("--identity %s: no such file" % args.identity)
    m = load_manifest(store, db, snapshot)

    folder = os.path.dirname(os.path.abspath(out))
    temp = os.path.join(folder, ".%s.rebuild-%d.tmp" % (os.path.basename(out), os.getpid()))
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise Failed("cannot create %s: %s" % (temp, e.strerror or e))
    try:
        try:
            if "_whole" in m:
                rebuild_whole(store, db, m, fd, args.identity)
            else:
                os.ftruncate(fd, m["raw_len"])
                rebuild_pages(store, db, m, fd, args.identity)
            prove(fd, m, out)
            os.fsync(fd)
        except OSError as e:
            raise Failed("cannot write %s: %s" % (temp, e.strerror or e))
        finally:
            os.close(fd)
        try:
            os.link(temp, out)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise Failed("%s appeared while rebuilding; the rebuilt file was not kept" % out)
        except OSError:
            if os.path.lexists(out):
                raise Failed("%s exists; move it aside or name another OUT_FILE" % out)
            os.rename(temp, out)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    kind = "incremental" if "_parts" in m else "full"
    return "%s: rebuilt %s snapshot %s (%d pages of %d bytes, SHA-256 %s)" % (
        out,
        kind,
        snapshot,
        m["page_count"],
        m["page_size"],
        m["raw_sha256"],
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="scripts/rebuild.py",
        description=(
            "Rebuild one guardian snapshot (full or incremental) from a local store folder into "
            "OUT_FILE, proving every object's SHA-256 and the result's against its manifest "
            "(docs/FORMAT.md). Python 3 standard library only; bounded memory."
        ),
        epilog=(
            "Example: scripts/rebuild.py /var/backups/guardian market "
            "20261124T031500Z-a1b2c3d4 /data/restored.db   "
            "Exit codes: 0 rebuilt and proven; 1 the snapshot is damaged or incomplete; "
            "2 bad usage or an operational failure. OUT_FILE is never replaced and appears "
            "only when the result is proven."
        ),
    )
    p.add_argument("store_dir", metavar="STORE_DIR", help="the local store's folder (storage.path)")
    p.add_argument("db", metavar="DB", help="the database's name in the config (a folder of the store)")
    p.add_argument("snapshot_id", metavar="SNAPSHOT_ID", help="e.g. 20261124T031500Z-a1b2c3d4 (guardian list)")
    p.add_argument("out_file", metavar="OUT_FILE", help="where to write the database; must not exist")
    p.add_argument(
        "--identity",
        metavar="FILE",
        help="age identity file for an encrypted snapshot (uses the age CLI: age -d -i FILE)",
    )
    args = p.parse_args(argv)
    try:
        print(rebuild(args))
        return 0
    except Damaged as e:
        print("%s: error: snapshot %s: %s" % (PROG, args.snapshot_id, e), file=sys.stderr)
        return 1
    except Failed as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("%s: error: interrupted; %s was not written" % (PROG, args.out_file), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
