"""Deterministic builder of Trivy's Java DB (``trivy-java.db``, SQLite, schema version 1).

Facts: /work/shared/docs/reference/trivy-db-format.md §B.4 and aquasecurity/trivy-java-db
``pkg/db/db.go`` / ``pkg/builder/builder.go``:
- tables ``artifacts(id, group_id, artifact_id)`` and ``indices(artifact_id, version, sha1,
  archive_type)`` with the three indexes, created with Trivy's exact SQL text (it is stored in
  ``sqlite_master``, so it is part of the bytes);
- ``sha1`` is the 20 raw bytes, ``archive_type`` is always ``'jar'``;
- entries without a classifier go in first, so that ``ON CONFLICT(sha1) DO NOTHING`` keeps them
  over a classifier JAR with the same bytes; every (group, artifact) gets an ``artifacts`` row,
  also when its only index row loses that conflict (Trivy's ``INSERT OR IGNORE``);
- the build ends with ``VACUUM``.

Determinism: the input is staged in a scratch table and copied in one canonical order (no
classifier first, then group, artifact, version, classifier, sha1, compared bytewise), so
artifact ids and row order do not depend on input order; ``VACUUM INTO`` writes a fresh,
compact file with a fixed page size (4096), UTF-8, no auto-vacuum, user_version 0 and
application_id 0 (as Trivy's). Three header fields record history rather than content: the file
change counter (offset 24), the version-valid-for number (92) and the SQLITE_VERSION_NUMBER of
the last writer (96). SQLite trusts the in-header page count (28) only when 24 == 92, and never
uses 96 for reading, so they are set to 1, 1 and 3000000 ("3.0.0", a fixed marker) — but only
after checking that the patched file opens read-only and passes ``PRAGMA integrity_check``
(otherwise the original header is restored). The remaining bytes depend on the SQLite library's
b-tree code, so ``sqlite_library_version()`` belongs in the action key.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JavaEntry", "JavaDbInputError", "build_java_db", "parse_maven_repo", "parse_jsonl",
           "sqlite_library_version", "SCHEMA_VERSION", "DB_FILE_NAME"]

SCHEMA_VERSION = 1
DB_FILE_NAME = "trivy-java.db"
PAGE_SIZE = 4096
ARCHIVE_TYPE = "jar"
HEADER_CHANGE_COUNTER = 1
HEADER_WRITER_VERSION = 3_000_000

# Trivy's schema, verbatim (trivy-java-db pkg/db/db.go Init).
SCHEMA_SQL = (
    "CREATE TABLE artifacts(id INTEGER PRIMARY KEY, group_id TEXT, artifact_id TEXT)",
    "CREATE TABLE indices(artifact_id INTEGER, version TEXT, sha1 BLOB, archive_type TEXT, "
    "foreign key (artifact_id) references artifacts(id))",
    "CREATE UNIQUE INDEX artifacts_idx ON artifacts(artifact_id, group_id)",
    "CREATE INDEX indices_artifact_idx ON indices(artifact_id)",
    "CREATE UNIQUE INDEX indices_sha1_idx ON indices(sha1)",
)

_SHA1 = re.compile(r"[0-9a-fA-F]{40}")
_SQLITE_MAGIC = b"SQLite format 3\x00"


class JavaDbInputError(ValueError):
    """Bad input entry; the message names the file/line and field."""


@dataclass(frozen=True)
class JavaEntry:
    """One JAR: Maven coordinates and the SHA-1 (40 hex digits) of its bytes."""
    group_id: str
    artifact_id: str
    version: str
    sha1: str
    classifier: str = ""


def sqlite_library_version() -> str:
    """Version of the SQLite library that writes the file (part of the action key)."""
    return sqlite3.sqlite_version


def _validate(e: JavaEntry, where: str) -> tuple[str, str, str, str, bytes]:
    for field in ("group_id", "artifact_id", "version"):
        value = getattr(e, field)
        if not isinstance(value, str) or not value:
            raise JavaDbInputError(f"{where}: field {field!r} must be a non-empty string")
    if not isinstance(e.classifier, str):
        raise JavaDbInputError(f"{where}: field 'classifier' must be a string")
    if not isinstance(e.sha1, str) or not _SHA1.fullmatch(e.sha1):
        raise JavaDbInputError(f"{where}: field 'sha1' must be 40 hex digits, got {e.sha1!r}")
    return e.group_id, e.artifact_id, e.version, e.classifier, bytes.fromhex(e.sha1)


def build_java_db(path: str | os.PathLike, entries: Iterable[JavaEntry]) -> dict[str, int]:
    """Write ``trivy-java.db`` at ``path`` (atomically: temp file, fsync, rename).

    Entries are streamed into SQLite, so memory does not grow with their number. Returns counts:
    ``{"entries", "artifacts", "indices", "header_normalised"}``.
    """
    path = Path(path)
    work = path.with_name(path.name + ".build")
    out = path.with_name(path.name + ".vacuum")
    for p in (work, out, Path(str(work) + "-journal")):
        p.unlink(missing_ok=True)
    con = sqlite3.connect(work, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size={PAGE_SIZE}")
        con.execute("PRAGMA auto_vacuum=NONE")
        con.execute("PRAGMA encoding='UTF-8'")
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("BEGIN")
        for sql in SCHEMA_SQL:
            con.execute(sql)
        con.execute("CREATE TABLE staging(group_id TEXT, artifact_id TEXT, version TEXT, "
                    "classifier TEXT, sha1 BLOB)")
        n = _stage(con, entries)
        con.execute(
            "INSERT OR IGNORE INTO artifacts(group_id, artifact_id) "
            "SELECT group_id, artifact_id FROM staging WHERE true "
            "GROUP BY group_id, artifact_id ORDER BY group_id, artifact_id")
        con.execute(
            "INSERT INTO indices(artifact_id, version, sha1, archive_type) "
            "SELECT a.id, s.version, s.sha1, ? FROM staging s "
            "JOIN artifacts a ON a.group_id = s.group_id AND a.artifact_id = s.artifact_id "
            "WHERE true ORDER BY s.classifier <> '', s.group_id, s.artifact_id, s.version, "
            "s.classifier, s.sha1 ON CONFLICT(sha1) DO NOTHING", (ARCHIVE_TYPE,))
        con.execute("DROP TABLE staging")
        con.execute("PRAGMA user_version=0")
        con.execute("PRAGMA application_id=0")
        con.execute("COMMIT")
        artifacts = con.execute("SELECT count(*) FROM artifacts").fetchone()[0]
        indices = con.execute("SELECT count(*) FROM indices").fetchone()[0]
        con.execute("VACUUM INTO ?", (str(out),))
    finally:
        con.close()
        work.unlink(missing_ok=True)
    try:
        normalised = normalise_header(out)
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(out, path)
    finally:
        out.unlink(missing_ok=True)
    return {"entries": n, "artifacts": artifacts, "indices": indices,
            "header_normalised": int(normalised)}


def _stage(con: sqlite3.Connection, entries: Iterable[JavaEntry]) -> int:
    count = 0
    batch: list[tuple] = []
    insert = "INSERT INTO staging VALUES (?, ?, ?, ?, ?)"
    for count, e in enumerate(entries, 1):
        if not isinstance(e, JavaEntry):
            raise JavaDbInputError(f"entry #{count}: expected JavaEntry, got {type(e).__name__}")
        batch.append(_validate(e, f"entry #{count} ({e.group_id}:{e.artifact_id}:{e.version})"))
        if len(batch) >= 10_000:
            con.executemany(insert, batch)
            batch.clear()
    if batch:
        con.executemany(insert, batch)
    return count


def normalise_header(path: str | os.PathLike) -> bool:
    """Set the history fields of the SQLite header (offsets 24, 92, 96) to fixed values.

    Keeps the change only if the file then opens read-only and passes integrity_check;
    returns whether it was kept.
    """
    with open(path, "r+b") as f:
        original = f.read(100)
        if len(original) < 100 or original[:16] != _SQLITE_MAGIC:
            raise ValueError(f"{path}: not an SQLite database")
        patched = bytearray(original)
        patched[24:28] = HEADER_CHANGE_COUNTER.to_bytes(4, "big")
        patched[92:96] = HEADER_CHANGE_COUNTER.to_bytes(4, "big")
        patched[96:100] = HEADER_WRITER_VERSION.to_bytes(4, "big")
        f.seek(0)
        f.write(patched)
    if _integrity_ok(path):
        return True
    with open(path, "r+b") as f:
        f.write(original)
    return False


def _integrity_ok(path: str | os.PathLike) -> bool:
    try:
        con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
            return rows == [("ok",)]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False


# ---- inputs ------------------------------------------------------------------------------------

def parse_maven_repo(root: str | os.PathLike) -> Iterator[JavaEntry]:
    """Entries from a local Maven repository tree of ``*.jar.sha1`` files.

    Layout: ``group/id/as/dirs/<artifactId>/<version>/<file>`` where ``<file>`` is
    ``<artifactId>-<version>[-<classifier>].jar.sha1``; the file holds the hex SHA-1, optionally followed by whitespace and a file name.
    Files are visited in sorted path order.
    """
    root = Path(root)
    if not root.is_dir():
        raise JavaDbInputError(f"{root}: not a directory")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".jar.sha1"):
                yield _maven_entry(root, Path(dirpath) / name)


def _maven_entry(root: Path, file: Path) -> JavaEntry:
    rel = file.relative_to(root).parts
    where = file.relative_to(root).as_posix()
    if len(rel) < 4:
        raise JavaDbInputError(f"{where}: expected <group dirs>/<artifactId>/<version>/<file>")
    artifact, version, name = rel[-3], rel[-2], rel[-1]
    stem = name[:-len(".jar.sha1")]
    prefix = f"{artifact}-{version}"
    if stem == prefix:
        classifier = ""
    elif stem.startswith(prefix + "-") and len(stem) > len(prefix) + 1:
        classifier = stem[len(prefix) + 1:]
    else:
        raise JavaDbInputError(f"{where}: file name does not start with {prefix!r}")
    try:
        text = file.read_text("ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise JavaDbInputError(f"{where}: cannot read SHA-1: {exc}") from None
    token = text.split()[0] if text.split() else ""
    if not _SHA1.fullmatch(token):
        raise JavaDbInputError(f"{where}: field 'sha1' must be 40 hex digits, got {token[:60]!r}")
    return JavaEntry(".".join(rel[:-3]), artifact, version, token.lower(), classifier)


def parse_jsonl(path: str | os.PathLike) -> Iterator[JavaEntry]:
    """Entries from JSON Lines: one object per line with ``group_id``, ``artifact_id``,
    ``version``, ``sha1`` and optional ``classifier``; blank lines are skipped."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JavaDbInputError(f"{where}: invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise JavaDbInputError(f"{where}: expected a JSON object")
            unknown = set(obj) - {"group_id", "artifact_id", "version", "sha1", "classifier"}
            if unknown:
                raise JavaDbInputError(f"{where}: unknown field(s) {sorted(unknown)}")
            for field in ("group_id", "artifact_id", "version", "sha1"):
                if field not in obj:
                    raise JavaDbInputError(f"{where}: missing field {field!r}")
            entry = JavaEntry(obj["group_id"], obj["artifact_id"], obj["version"],
                              obj["sha1"], obj.get("classifier") or "")
            _validate(entry, where)
            yield JavaEntry(entry.group_id, entry.artifact_id, entry.version,
                            entry.sha1.lower(), entry.classifier)
