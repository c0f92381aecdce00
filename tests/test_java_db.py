"""Tests for the deterministic trivy-java.db builder (rules/trivy/java_db.py)."""
from __future__ import annotations

import hashlib
import json
import random
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stella_build.rules.formats.trivy.java_db import (
    JavaDbInputError, JavaEntry, build_java_db, normalise_header, parse_jsonl, parse_maven_repo,
    sqlite_library_version,
)

# Trivy's schema text (aquasecurity/trivy-java-db pkg/db/db.go, Init), as sqlite_master keeps it.
TRIVY_SCHEMA = [
    ("table", "artifacts",
     "CREATE TABLE artifacts(id INTEGER PRIMARY KEY, group_id TEXT, artifact_id TEXT)"),
    ("table", "indices",
     "CREATE TABLE indices(artifact_id INTEGER, version TEXT, sha1 BLOB, archive_type TEXT, "
     "foreign key (artifact_id) references artifacts(id))"),
    ("index", "artifacts_idx", "CREATE UNIQUE INDEX artifacts_idx ON artifacts(artifact_id, group_id)"),
    ("index", "indices_artifact_idx", "CREATE INDEX indices_artifact_idx ON indices(artifact_id)"),
    ("index", "indices_sha1_idx", "CREATE UNIQUE INDEX indices_sha1_idx ON indices(sha1)"),
]

# Trivy's lookup (trivy-java-db pkg/db/db.go SelectIndexBySha1), used by the JAR analyzer.
SELECT_BY_SHA1 = """
    SELECT a.group_id, a.artifact_id, i.version, i.sha1, i.archive_type
    FROM indices i JOIN artifacts a ON a.id = i.artifact_id WHERE i.sha1 = ?"""

ENTRIES = [
    JavaEntry("org.apache.commons", "commons-lang3", "3.12.0", "c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e"),
    JavaEntry("org.apache.commons", "commons-lang3", "3.12.0", "c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e", "sources"),
    JavaEntry("org.apache.commons", "commons-lang3", "3.11", "68e9a6adf7cf8eb7e9d31bbc554c7c75eeaac568"),
    JavaEntry("com.example", "shaded", "1.0", "1111111111111111111111111111111111111111", "all"),
    JavaEntry("com.example", "shaded", "1.0", "2222222222222222222222222222222222222222"),
    JavaEntry("ai.rapids", "cudf", "0.14", "3333333333333333333333333333333333333333", "cuda10-1"),
]


def _rows(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            "schema": con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY rowid").fetchall(),
            "artifacts": con.execute("SELECT * FROM artifacts ORDER BY id").fetchall(),
            "indices": con.execute("SELECT rowid, * FROM indices ORDER BY rowid").fetchall(),
            "pragmas": [con.execute(f"PRAGMA {p}").fetchone()[0] for p in
                        ("page_size", "user_version", "application_id", "auto_vacuum",
                         "encoding", "freelist_count", "integrity_check")],
            "fk": con.execute("PRAGMA foreign_key_check").fetchall(),
        }
    finally:
        con.close()


def test_schema_and_rows_follow_trivy(tmp_path) -> None:
    path = tmp_path / "trivy-java.db"
    counts = build_java_db(path, ENTRIES)
    assert counts == {"entries": 6, "artifacts": 3, "indices": 5, "header_normalised": 1}
    rows = _rows(path)
    assert rows["schema"] == TRIVY_SCHEMA
    assert rows["pragmas"] == [4096, 0, 0, 0, "UTF-8", 0, "ok"]
    assert rows["fk"] == []
    # artifacts in bytewise (group, artifact) order
    assert rows["artifacts"] == [(1, "ai.rapids", "cudf"), (2, "com.example", "shaded"),
                                 (3, "org.apache.commons", "commons-lang3")]
    # no-classifier rows first; the sources JAR with the same SHA-1 loses ON CONFLICT
    assert [(r[1], r[2], r[3].hex(), r[4]) for r in rows["indices"]] == [
        (2, "1.0", "2222222222222222222222222222222222222222", "jar"),
        (3, "3.11", "68e9a6adf7cf8eb7e9d31bbc554c7c75eeaac568", "jar"),
        (3, "3.12.0", "c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e", "jar"),
        (1, "0.14", "3333333333333333333333333333333333333333", "jar"),
        (2, "1.0", "1111111111111111111111111111111111111111", "jar"),
    ]
    assert all(isinstance(r[3], bytes) and len(r[3]) == 20 for r in rows["indices"])
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    hit = con.execute(SELECT_BY_SHA1, (bytes.fromhex("c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e"),))
    assert hit.fetchall() == [("org.apache.commons", "commons-lang3", "3.12.0",
                               bytes.fromhex("c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e"), "jar")]
    con.close()
    assert not list(tmp_path.glob("*.build*")) and not list(tmp_path.glob("*.vacuum"))


def test_header_history_fields_are_fixed(tmp_path) -> None:
    path = tmp_path / "j.db"
    build_java_db(path, ENTRIES)
    head = path.read_bytes()[:100]
    assert head[:16] == b"SQLite format 3\x00"
    assert int.from_bytes(head[24:28], "big") == 1
    assert int.from_bytes(head[92:96], "big") == 1  # == change counter: in-header size valid
    assert int.from_bytes(head[96:100], "big") == 3_000_000
    assert int.from_bytes(head[28:32], "big") * 4096 == len(path.read_bytes())


def test_header_patch_is_undone_when_integrity_fails(tmp_path) -> None:
    path = tmp_path / "j.db"
    build_java_db(path, ENTRIES * 1)
    data = bytearray(path.read_bytes())
    data[24:28] = (7).to_bytes(4, "big")
    data[4096 + 8:4096 + 40] = b"\xff" * 32  # smash the first b-tree page after page 1
    path.write_bytes(data)
    assert normalise_header(path) is False
    assert path.read_bytes()[24:28] == (7).to_bytes(4, "big")


@settings(max_examples=15, deadline=None)
@given(st.randoms(use_true_random=False))
def test_bytes_do_not_depend_on_input_order(tmp_path_factory, rnd: random.Random) -> None:
    tmp = tmp_path_factory.mktemp("order")
    shuffled = list(ENTRIES) * 2  # duplicates are harmless
    rnd.shuffle(shuffled)
    build_java_db(tmp / "a.db", ENTRIES)
    build_java_db(tmp / "b.db", shuffled)
    assert (tmp / "a.db").read_bytes() == (tmp / "b.db").read_bytes()


def test_larger_build_is_reproducible(tmp_path) -> None:
    entries = [JavaEntry(f"org.g{i % 97}", f"a{i % 1013}", f"1.{i}",
                         hashlib.sha1(b"%d" % i).hexdigest(), "sources" if i % 5 == 0 else "")
               for i in range(20_000)]
    c1 = build_java_db(tmp_path / "1.db", iter(entries))
    c2 = build_java_db(tmp_path / "2.db", reversed(entries))
    assert c1 == c2 and c1["indices"] == 20_000
    assert (tmp_path / "1.db").read_bytes() == (tmp_path / "2.db").read_bytes()
    assert _rows(tmp_path / "1.db")["pragmas"][-1] == "ok"


def test_sqlite_library_version() -> None:
    assert sqlite_library_version() == sqlite3.sqlite_version


@pytest.mark.parametrize("entry,message", [
    (JavaEntry("", "a", "1", "a" * 40), "group_id"),
    (JavaEntry("g", "a", "", "a" * 40), "version"),
    (JavaEntry("g", "a", "1", "xyz"), "sha1"),
    (JavaEntry("g", "a", "1", "a" * 41), "sha1"),
])
def test_invalid_entries_are_rejected(tmp_path, entry, message) -> None:
    with pytest.raises(JavaDbInputError, match=message):
        build_java_db(tmp_path / "x.db", [entry])
    assert not (tmp_path / "x.db").exists()


# ---- inputs ------------------------------------------------------------------------------------

def _sha1_file(root, rel: str, content: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(content)


def test_parse_maven_repo(tmp_path) -> None:
    repo = tmp_path / "m2"
    _sha1_file(repo, "org/apache/commons/commons-lang3/3.12.0/commons-lang3-3.12.0.jar.sha1",
               "C6842C86792FF03B9F1D1FE2AAB8DC23AA6C6F0E\n")
    _sha1_file(repo, "org/apache/commons/commons-lang3/3.12.0/commons-lang3-3.12.0-sources.jar.sha1",
               "c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e  commons-lang3-3.12.0-sources.jar\n")
    _sha1_file(repo, "ai/rapids/cudf/0.14/cudf-0.14-cuda10-1.jar.sha1", "3" * 40)
    _sha1_file(repo, "ai/rapids/cudf/0.14/cudf-0.14.pom.sha1", "4" * 40)  # not a JAR
    assert list(parse_maven_repo(repo)) == [
        JavaEntry("ai.rapids", "cudf", "0.14", "3" * 40, "cuda10-1"),
        JavaEntry("org.apache.commons", "commons-lang3", "3.12.0", "c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e", "sources"),
        JavaEntry("org.apache.commons", "commons-lang3", "3.12.0", "c6842c86792ff03b9f1d1fe2aab8dc23aa6c6f0e"),
    ]


@pytest.mark.parametrize("rel,content,message", [
    ("g/a/1.0/b-1.0.jar.sha1", "a" * 40, "does not start with 'a-1.0'"),
    ("g/a/1.0/a-1.0-.jar.sha1", "a" * 40, "does not start with"),
    ("a/1.0/a-1.0.jar.sha1", "a" * 40, "expected <group dirs>"),
    ("g/a/1.0/a-1.0.jar.sha1", "not-a-hash", "sha1"),
    ("g/a/1.0/a-1.0.jar.sha1", "", "sha1"),
])
def test_parse_maven_repo_errors_name_the_file(tmp_path, rel, content, message) -> None:
    _sha1_file(tmp_path, rel, content)
    with pytest.raises(JavaDbInputError, match=message) as exc:
        list(parse_maven_repo(tmp_path))
    assert rel.split("/")[-1] in str(exc.value)


def test_parse_jsonl(tmp_path) -> None:
    p = tmp_path / "jars.jsonl"
    p.write_text(json.dumps({"group_id": "g", "artifact_id": "a", "version": "1",
                             "sha1": "A" * 40}) + "\n\n"
                 + json.dumps({"group_id": "g", "artifact_id": "a", "version": "1",
                               "sha1": "b" * 40, "classifier": "tests"}) + "\n")
    assert list(parse_jsonl(p)) == [JavaEntry("g", "a", "1", "a" * 40),
                                    JavaEntry("g", "a", "1", "b" * 40, "tests")]


@pytest.mark.parametrize("line,message", [
    ("{", "jars.jsonl:2: invalid JSON"),
    ("[]", "jars.jsonl:2: expected a JSON object"),
    ('{"group_id": "g", "artifact_id": "a", "version": "1"}', "jars.jsonl:2: missing field 'sha1'"),
    ('{"group_id": "g", "artifact_id": "a", "version": "1", "sha1": "x"}', "jars.jsonl:2: field 'sha1'"),
    ('{"group_id": 1, "artifact_id": "a", "version": "1", "sha1": "' + "a" * 40 + '"}',
     "jars.jsonl:2: field 'group_id'"),
    ('{"groupId": "g"}', "unknown field"),
])
def test_parse_jsonl_errors_name_line_and_field(tmp_path, line, message) -> None:
    p = tmp_path / "jars.jsonl"
    ok = {"group_id": "g", "artifact_id": "a", "version": "1", "sha1": "a" * 40}
    p.write_text(json.dumps(ok) + "\n" + line + "\n")
    with pytest.raises(JavaDbInputError, match=message.replace("[", r"\[")):
        list(parse_jsonl(p))
