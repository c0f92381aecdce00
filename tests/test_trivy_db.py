"""trivy:db / trivy:java-db: schema mapping, the rules through the real CLI, packaging, inspect."""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stella_build.engine.encode.archive import gzip_bytes, gunzip_bytes
from stella_build.rules.formats.trivy.bbolt import BboltReader
from stella_build.rules.formats.trivy.packaging import GzipWriter, metadata_json, parse_interval
from stella_build.rules.formats.trivy.schema import (
    group_vuln_ids, merge_advisories, patched_versions, trivy_pkg_name, vulnerable_versions,
)
from stella_build.rules.evidence.versions import affected, compare
from tests.conftest import REPO, make_workspace, output_digests, run_cli

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())
PIP = b"pip::stella-build sample advisories"


def rng(*events, type="ECOSYSTEM"):
    return {"type": type, "events": [{"kind": k, "version": v} for k, v in events]}


# -- schema: constraint strings (trivy-db osv/range.go rules) ------------------------------------

@pytest.mark.parametrize("ranges, versions, want", [
    ([rng(("introduced", "0"), ("fixed", "0.15.3"))], [], ["<0.15.3"]),
    ([rng(("introduced", "1.0"), ("fixed", "1.5"))], [], [">=1.0, <1.5"]),
    ([rng(("introduced", "1.0"), ("last_affected", "1.4"))], [], [">=1.0, <=1.4"]),
    ([rng(("introduced", "0"), ("last_affected", "1.4"))], [], ["<=1.4"]),
    ([rng(("introduced", "1.2"), ("last_affected", "1.2"))], [], ["=1.2"]),
    ([rng(("introduced", "2.0"))], [], [">=2.0"]),
    ([rng(("introduced", "0"), ("fixed", "1.1"), ("introduced", "2.0"), ("fixed", "2.2"))], [],
     ["<1.1", ">=2.0, <2.2"]),
    ([rng(("introduced", "0"), ("fixed", "1.1"))], ["1.0", "3.0"], ["<1.1", "=3.0"]),
    ([rng(("introduced", "0"), ("fixed", "abc"), type="GIT")], ["1.0"], ["=1.0"]),
])
def test_vulnerable_versions(ranges, versions, want):
    assert vulnerable_versions("PyPI", ranges, versions) == want


def test_package_names_and_ids_as_trivy_spells_them():
    assert trivy_pkg_name("pip", "Foo_Bar.Baz") == "foo-bar.baz"
    assert trivy_pkg_name("go", "github.com/BurntSushi/toml") == "github.com/BurntSushi/toml"
    assert trivy_pkg_name("maven", "org.Apache:Log4j") == "org.apache:log4j"
    assert trivy_pkg_name("cargo", "Tokio") == "tokio"
    assert group_vuln_ids("PYSEC-1", ["CVE-1", "GHSA-x"]) == (["CVE-1"], ["GHSA-x", "PYSEC-1"])
    assert group_vuln_ids("GO-1", ["GHSA-y"]) == (["GO-1"], ["GHSA-y"])


def test_advisory_value_bytes_follow_go_double_marshal():
    member = {"kind": "lang", "ecosystem": "PyPI", "vendor_ids": ["GHSA-x"], "versions": [],
              "ranges": [rng(("introduced", "0"), ("fixed", "0.15.3"))]}
    assert merge_advisories([member]) == (
        b'{"PatchedVersions":["0.15.3"],"VendorIDs":["GHSA-x"],"VulnerableVersions":["\\u003c0.15.3"]}')
    assert merge_advisories([{"kind": "os", "fixed": "1.1.1d-r0"}]) == b'{"FixedVersion":"1.1.1d-r0"}'


def test_patched_version_inside_another_range_is_dropped():
    a = {"ecosystem": "PyPI", "ranges": [rng(("introduced", "0"), ("fixed", "1.5"))], "versions": []}
    b = {"ecosystem": "PyPI", "ranges": [rng(("introduced", "1.5"), ("fixed", "2.0"))], "versions": []}
    assert patched_versions("PyPI", [a, b]) == ["2.0"]
    assert patched_versions("PyPI", [a]) == ["1.5"]


# Trivy's matching rule (trivy pkg/detector/library/compare): vulnerable iff the version matches
# one VulnerableVersions constraint and no PatchedVersions entry (exact versions). Implemented here
# independently of the code under test, over semver-ordered versions.
def _satisfies(eco: str, version: str, constraint: str) -> bool:
    for part in constraint.split(", "):
        for op in ("<=", ">=", "<", "=", ">"):
            if part.startswith(op):
                c = compare(eco, version, part[len(op):])
                ok = {"<=": c <= 0, ">=": c >= 0, "<": c < 0, "=": c == 0, ">": c > 0}[op]
                break
        if not ok:
            return False
    return True


def _trivy_vulnerable(eco: str, version: str, value: dict) -> bool:
    vulnerable = value.get("VulnerableVersions", [])
    if not any(_satisfies(eco, version, c) for c in vulnerable):
        return False
    return not any(compare(eco, version, p) == 0 for p in value.get("PatchedVersions", []))


_V = st.integers(0, 6).map(lambda i: f"1.{i}.0")


@st.composite
def _osv_ranges(draw):
    out = []
    for _ in range(draw(st.integers(1, 3))):
        points = sorted(set(draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))))
        events = []
        for i, p in enumerate(points):
            kind = "introduced" if i % 2 == 0 else draw(st.sampled_from(["fixed", "last_affected"]))
            events.append((kind, "0" if kind == "introduced" and p == 0 else f"1.{p}.0"))
        out.append(rng(*events, type="SEMVER"))
    return out


@settings(max_examples=300, deadline=None)
@given(members=st.lists(_osv_ranges(), min_size=1, max_size=3), probe=_V,
       listed=st.lists(_V, max_size=2))
def test_trivy_matching_of_our_values_equals_osv_evaluation(members, probe, listed):
    """For random OSV ranges (one or several colliding records), Trivy's rule over the value we
    write says "vulnerable" exactly when OSV evaluation (versions.affected) does."""
    recs = [{"kind": "lang", "ecosystem": "Go", "vendor_ids": [], "ranges": r,
             "versions": listed if i == 0 else []} for i, r in enumerate(members)]
    value = json.loads(merge_advisories(recs))
    want = any(affected("Go", probe, m["ranges"], m["versions"]) for m in recs)
    assert _trivy_vulnerable("Go", probe, value) == want


# -- packaging ---------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=300_000), min_size=1, max_size=12))
def test_db_archive_gzip_does_not_depend_on_how_writes_are_cut(cuts):
    """DB archives are written streamed (write_tar → GzipWriter) and re-created from their tar by
    regzip (mirror delta, trivy-db patch) with other write sizes: at the DB archive level the
    bytes must depend only on the data. zlib-ng's levels 1, 5 and 6 fail this (see
    packaging.DB_ARCHIVE_GZIP_LEVEL)."""
    from stella_build.rules.formats.trivy.packaging import DB_ARCHIVE_GZIP_LEVEL
    from stella_build.rules.formats.trivy.patch import ARCHIVE_GZIP_LEVEL, regzip

    assert ARCHIVE_GZIP_LEVEL == DB_ARCHIVE_GZIP_LEVEL
    # bbolt-like data: repetitive JSON with varying ids, compressible but not trivially
    data = b"".join(b'{"id":"GHSA-%05d","fixed":"%d.%d.%d","refs":["https://example.org/%x"]}\x00' % (
        i, i % 7, i % 13, i % 101, i * 2654435761 % (1 << 32)) for i in range(40_000))
    buf, pos = io.BytesIO(), 0
    gz = GzipWriter(buf, DB_ARCHIVE_GZIP_LEVEL)
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
        if pos >= len(data):
            break
        gz.write(data[pos:pos + cut])
        pos += cut
    gz.close()
    assert buf.getvalue() == regzip(data)
    assert gunzip_bytes(buf.getvalue()) == data


def test_block_parallel_gzip_is_one_valid_member_whatever_the_threads():
    """GzipWriter compresses 1 MiB blocks on threads: the bytes must not depend on the thread
    count, must be one gzip member an independent decoder (Python's gzip, zlib) reads back, and
    keep the fixed header (mtime 0, no name, OS 255). Sizes around the block boundary included."""
    import gzip as std_gzip
    import zlib

    block = GzipWriter.BLOCK
    for size in (0, 1, block - 1, block, block + 1, 3 * block + 12345):
        data = (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]
        outs = set()
        for threads in (1, 2, 3):
            buf = io.BytesIO()
            gz = GzipWriter(buf, 7, threads=threads)
            for i in range(0, len(data), 70001):
                gz.write(data[i:i + 70001])
            gz.close()
            outs.add(buf.getvalue())
        [out] = outs
        assert out[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        assert std_gzip.decompress(out) == data
        d = zlib.decompressobj(31)
        assert d.decompress(out) == data and d.eof and d.unused_data == b""


def _ahead_fixture(tmp_path, blocks: int = 8):
    """A DB-like file written in chunks with its first pages rewritten last (as BboltWriter
    does), while a gzip_ahead child deflates its blocks; → (db path, metadata, ahead, data)."""
    import time

    from stella_build.rules.formats.trivy.bbolt import DEFAULT_PAGE_SIZE, HEAD_PAGES
    from stella_build.rules.formats.trivy.packaging import start_ahead

    meta = metadata_json(2, 1735689600, 86400)
    db = tmp_path / "trivy.db"
    rewritten = HEAD_PAGES * DEFAULT_PAGE_SIZE
    data = b"".join(hashlib.sha256(b"%d" % i).hexdigest().encode() * 3 for i in range(blocks * 11_000))
    ahead = start_ahead({"metadata.json": meta}, 1735689600, "trivy.db", db, rewritten)
    assert ahead is not None
    with open(db, "wb") as f:
        f.write(bytes(rewritten))
        for i in range(rewritten, len(data), 300_001):
            f.write(data[i:i + 300_001])
            f.flush()
        deadline = time.monotonic() + 30  # until the child has sent three blocks (bounded)
        while len(ahead._blocks) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        f.seek(0)
        f.write(data[:rewritten])  # the head is final only now: no block touching it is ahead
    return db, meta, ahead, data


def _archive(tmp_path, db, meta, ahead=None) -> bytes:
    from stella_build.rules.formats.trivy.packaging import write_db_archive

    out = tmp_path / ("ahead.tar.gz" if ahead else "plain.tar.gz")
    write_db_archive(out, {"trivy.db": db, "metadata.json": meta}, 1735689600, ahead=ahead)
    return out.read_bytes()


def test_gzip_ahead_gives_the_same_archive_and_does_deflate_ahead(tmp_path):
    """db.tar.gz blocks deflated by the child while the DB was written are used (hits > 0) and
    the archive is byte-identical to one compressed after the fact."""
    db, meta, ahead, data = _ahead_fixture(tmp_path)
    ahead.stop()
    with_ahead = _archive(tmp_path, db, meta, ahead)
    assert ahead.hits > 0
    assert with_ahead == _archive(tmp_path, db, meta)
    assert gunzip_bytes(with_ahead).find(data[:64]) > 0


def test_gzip_ahead_blocks_that_do_not_match_are_compressed_again(tmp_path):
    """A block whose bytes changed after the child deflated it (or a child sending garbage) is
    never used: the digest of dictionary + block decides, so the archive stays exact."""
    db, meta, ahead, data = _ahead_fixture(tmp_path)
    ahead.stop()
    sent = len(ahead._blocks)
    assert sent >= 3
    index, other = min(ahead._blocks), max(ahead._blocks)
    ahead._blocks[index] = (b"\x00" * 32, b"\x00garbage")  # a digest that matches nothing
    with open(db, "r+b") as f:  # change a byte inside another block the child already sent
        f.seek(other * (1 << 20) + 5000 - 1536)
        f.write(b"#")
    archive = _archive(tmp_path, db, meta, ahead)
    assert ahead.hits == sent - 2
    assert archive == _archive(tmp_path, db, meta)


def test_tar_member_offset_is_where_write_tar_puts_the_content():
    from stella_build.engine.encode.archive import TarEntry, tar_bytes, tar_member_offset

    entries = [TarEntry("metadata.json", data=b"m" * 123), TarEntry("trivy.db", data=b"DBDATA" * 999),
               TarEntry("a/" + "long-name-" * 20, data=b"x")]  # a PAX header for the long name
    stream = tar_bytes(entries, 1735689600)
    for e in entries:
        off = tar_member_offset(entries, 1735689600, e.path)
        assert stream[off:off + len(e.data)] == e.data
    placeholder = [entries[0], TarEntry("trivy.db", data=b"")]
    assert tar_member_offset(placeholder, 1735689600, "trivy.db") == tar_member_offset(entries[:2], 1735689600, "trivy.db")
    with pytest.raises(KeyError):
        tar_member_offset(entries, 0, "missing")


def test_metadata_json_and_interval():
    assert parse_interval("24h") == 86400 and parse_interval("7d") == 604800
    with pytest.raises(ValueError):
        parse_interval("1 day")
    assert metadata_json(2, 1735689600, 86400) == (
        b'{"Version":2,"NextUpdate":"2025-01-02T00:00:00Z","UpdatedAt":"2025-01-01T00:00:00Z",'
        b'"DownloadedAt":"2025-01-01T00:00:00Z"}\n')


# -- the rules through the CLI -----------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trivy")
    ws = make_workspace(tmp / "ws")
    run_cli(["-q", "//profiles:trivy-db", "//profiles:trivy-java-db"], cwd=ws, cache=tmp / "c",
            check=True)
    return ws


def test_profile_db_layout_and_values(built):
    out = built / "stella-out/profiles/trivy-db"
    r = BboltReader(out / "trivy.db")
    assert r.check() == []
    top = r.buckets()
    assert top == sorted(top) and b"vulnerability" in top and b"data-source" in top
    assert {b.split(b"::")[0] for b in top if b"::" in b} == {b"pip", b"go", b"npm", b"cargo"}
    value = json.loads(r.get((PIP, b"werkzeug"), b"CVE-2019-14806"))
    assert value == {"PatchedVersions": ["0.15.3"], "VendorIDs": ["STELLA-SAMPLE-2019-0001"],
                     "VulnerableVersions": ["<0.15.3"]}
    assert json.loads(r.get((b"data-source",), PIP)) == {
        "ID": "stella-build-sample-advisories", "Name": "stella-build sample advisories"}
    vuln = r.get((b"vulnerability",), b"CVE-2019-14806")
    assert vuln.startswith(b'{"Title":') and b'"Severity":"HIGH"' in vuln
    # the withdrawn sample is not exported
    assert b"STELLA-SAMPLE-2019-9001" not in (out / "trivy.db").read_bytes()
    # pip keys are lower-case with "-" (the sample spells one package "PyYAML")
    assert b"pyyaml" in r.buckets((PIP,))


def test_profile_db_archive_and_oci(built):
    out = built / "stella-out/profiles/trivy-db"
    with tarfile.open(out / "db.tar.gz") as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == ["metadata.json", "trivy.db"]
        assert all(m.mtime == 1735689600 and m.uid == 0 and m.uname == "" for m in members)
        assert tar.extractfile("trivy.db").read() == (out / "trivy.db").read_bytes()
        assert tar.extractfile("metadata.json").read() == (out / "metadata.json").read_bytes()
    assert gunzip_bytes((out / "db.tar.gz").read_bytes())  # pinned gzip decodes
    index = json.loads((out / "oci/index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "2"
    manifest = json.loads((out / "oci/blobs/sha256" / entry["digest"].split(":")[1]).read_text())
    assert manifest["artifactType"] == "application/vnd.aquasec.trivy.config.v1+json"
    assert manifest["annotations"]["org.opencontainers.image.created"] == "2025-01-01T00:00:00Z"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
    assert layer["annotations"]["org.opencontainers.image.title"] == "db.tar.gz"
    assert layer["digest"] == "sha256:" + hashlib.sha256((out / "db.tar.gz").read_bytes()).hexdigest()


def test_profile_java_db(built):
    out = built / "stella-out/profiles/trivy-java-db"
    con = sqlite3.connect(f"file:{out / 'trivy-java.db'}?mode=ro", uri=True)
    rows = con.execute("SELECT a.group_id, a.artifact_id, i.version, i.sha1, i.archive_type "
                       "FROM indices i JOIN artifacts a ON a.id = i.artifact_id "
                       "ORDER BY a.artifact_id, i.version").fetchall()
    con.close()
    coords = [(g, a, v) for g, a, v, _, _ in rows]
    assert ("dev.stellabuild.sample", "sample-cli", "0.9.0") in coords  # from the JSONL list
    assert ("dev.stellabuild.sample", "sample-http", "2.3.4") in coords  # from the Maven tree
    sha = (REPO / "profiles/evidence/maven/repository/dev/stellabuild/sample/sample-http/2.3.4/"
           "sample-http-2.3.4.jar.sha1").read_text().split()[0]
    assert any(s == bytes.fromhex(sha) and t == "jar" for *_, s, t in rows)
    assert json.loads((out / "metadata.json").read_text())["Version"] == 1
    with tarfile.open(out / "javadb.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["metadata.json", "trivy-java.db"]
    manifest_digest = json.loads((out / "oci/index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((out / "oci/blobs/sha256" / manifest_digest.split(":")[1]).read_text())
    assert manifest["layers"][0]["mediaType"] == "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"


def test_golden_digests(built):
    for target in ("trivy-db", "trivy-java-db"):
        assert output_digests(built, "profiles", target) == GOLDEN[f"//profiles:{target}"]


def test_rebuild_in_another_workspace_gives_identical_bytes(built, tmp_path):
    ws = make_workspace(tmp_path / "ws2")
    run_cli(["-q", "//profiles:trivy-db", "//profiles:trivy-java-db"], cwd=ws, cache=tmp_path / "c",
            check=True, env={"TZ": "Asia/Tokyo", "PYTHONHASHSEED": "123"})
    for target in ("trivy-db", "trivy-java-db"):
        assert output_digests(ws, "profiles", target) == output_digests(built, "profiles", target)


def test_inspect_cli(built):
    db = built / "stella-out/profiles/trivy-db"
    res = run_cli(["inspect", "trivy-db", str(db)], cwd=built, check=True)
    assert "vulnerability/" in res.stdout and '"Version": 2' in res.stdout
    res = run_cli(["inspect", "trivy-db", str(db), "--bucket", PIP.decode(), "--bucket", "werkzeug",
                   "--key", "CVE-2019-14806"], cwd=built, check=True)
    assert json.loads(res.stdout)["PatchedVersions"] == ["0.15.3"]
    res = run_cli(["--output", "json", "inspect", "trivy-db", str(db), "--check"], cwd=built, check=True)
    assert res.json()["ok"] is True
    res = run_cli(["inspect", "trivy-db", str(db), "--bucket", "no-such"], cwd=built)
    assert res.code == 2 and "no-such" in res.stderr and "Traceback" not in res.stderr


def test_inspect_check_fails_on_a_damaged_db(built, tmp_path):
    bad = tmp_path / "trivy.db"
    data = bytearray((built / "stella-out/profiles/trivy-db/trivy.db").read_bytes())
    data[5 * 4096 + 16:5 * 4096 + 24] = b"\xff" * 8  # garbage in the elements of a data page
    bad.write_bytes(bytes(data))
    res = run_cli(["inspect", "trivy-db", str(bad), "--check"], cwd=built)
    assert res.code == 3 and "structural error" in res.stderr and "Traceback" not in res.stderr


# -- collisions across sources and bad parameters --------------------------------------------------

def _osv(vid: str, name: str, aliases: list[str], events: list[dict], summary: str) -> str:
    return json.dumps({"id": vid, "modified": "2024-01-01T00:00:00Z", "aliases": aliases,
                       "summary": summary, "affected": [{"package": {"ecosystem": "PyPI", "name": name},
                                                          "ranges": [{"type": "ECOSYSTEM", "events": events}]}]})


COLLIDING_EXPORTFILE = """
[package]
source_date_epoch = 1735689600

[targets.a]
rule = "osv_source"
srcs = ["a/*.json"]
source = { name = "Feed A" }

[targets.b]
rule = "osv_source"
srcs = ["b/*.json"]
source = { name = "Feed B" }

[targets.trivy-db]
rule = "trivy_db"
deps = [":a", ":b"]
data_sources = { ":a" = { id = "osv", name = "Merged Feed" }, ":b" = { id = "osv", name = "Merged Feed" } }
"""


def colliding_workspace(root: Path, exportfile: str) -> Path:
    ws = make_workspace(root, packages=())
    for d, (vid, name, events, title) in {
        "a": ("PYSEC-A", "Foo_Bar", [{"introduced": "0"}, {"fixed": "1.5"}], "from A"),
        "b": ("GHSA-bbbb-bbbb-bbbb", "foo-bar", [{"introduced": "1.5"}, {"fixed": "2.0"}], "from B"),
    }.items():
        (ws / "merge" / d).mkdir(parents=True)
        (ws / "merge" / d / f"{vid}.json").write_text(_osv(vid, name, ["CVE-2099-0001"], events, title))
    (ws / "merge" / "Exportfile").write_text(exportfile)
    return ws


def test_records_colliding_after_normalization_merge(tmp_path):
    ws = colliding_workspace(tmp_path / "ws", COLLIDING_EXPORTFILE)
    run_cli(["-q", "//merge:trivy-db"], cwd=ws, cache=tmp_path / "c", check=True)
    r = BboltReader(ws / "stella-out/merge/trivy-db/trivy.db")
    # one project under PEP 503 (foo-bar) and the all-dot spelling Trivy looks up as written (foo.bar)
    assert r.buckets((b"pip::Merged Feed",)) == [b"foo-bar", b"foo.bar"]
    for spelling in (b"foo-bar", b"foo.bar"):
        value = json.loads(r.get((b"pip::Merged Feed", spelling), b"CVE-2099-0001"))
        assert value == {"PatchedVersions": ["2.0"], "VendorIDs": ["PYSEC-A", "GHSA-bbbb-bbbb-bbbb"],
                         "VulnerableVersions": ["<1.5", ">=1.5, <2.0"]}
    vuln = json.loads(r.get((b"vulnerability",), b"CVE-2099-0001"))
    assert vuln["Title"] == "from A"  # first in canonical (dep) order
    # swapping the deps swaps the order: the merge is defined by deps order, nothing else
    ws2 = colliding_workspace(tmp_path / "ws2", COLLIDING_EXPORTFILE.replace('[":a", ":b"]', '[":b", ":a"]'))
    run_cli(["-q", "//merge:trivy-db"], cwd=ws2, cache=tmp_path / "c2", check=True)
    vuln2 = json.loads(BboltReader(ws2 / "stella-out/merge/trivy-db/trivy.db").get(
        (b"vulnerability",), b"CVE-2099-0001"))
    assert vuln2["Title"] == "from B"


def test_bad_parameters_are_usage_errors(tmp_path):
    ws = colliding_workspace(tmp_path / "ws", COLLIDING_EXPORTFILE.replace('":b" = {', '":c" = {'))
    res = run_cli(["//merge:trivy-db"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 2 and "data_sources" in res.stderr and "Traceback" not in res.stderr
    ws = colliding_workspace(tmp_path / "ws2", COLLIDING_EXPORTFILE.replace(
        'deps = [":a", ":b"]', 'deps = [":a", ":b"]\nupdate_interval = "1 day"'))
    res = run_cli(["//merge:trivy-db"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 2 and "update_interval" in res.stderr


_TEXT = st.text(alphabet=st.sampled_from(list("aZ09 <>&\"\\/\n\t\x01\x7fé€\u2028\u2029😀")), max_size=12)
_LEAF = st.one_of(_TEXT, st.integers(-10**6, 10**6), st.sampled_from([0.0, 5.0, 7.5, 9.8, 0.1, 10.0]),
                  st.booleans(), st.none())
_DOC = st.recursive(_LEAF, lambda c: st.one_of(st.lists(c, max_size=4),
                                               st.dictionaries(_TEXT, c, max_size=4)), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(doc=_DOC, sort=st.booleans())
def test_fast_go_json_equals_go_marshal(doc, sort):
    from stella_build.rules.formats.trivy.gojson import GoMap, go_marshal
    from stella_build.rules.formats.trivy.schema import go_json

    assert go_json(doc, sort_keys=sort) == go_marshal(doc, sort_keys=sort, float64_numbers=sort)
    wrapped = {"b": GoMap({"z": 1, "a": doc}), "a": [doc]}
    assert go_json(wrapped) == go_marshal(wrapped)


@settings(max_examples=200, deadline=None)
@given(key=st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1),
       tiebreak=st.text(st.characters(blacklist_categories=("Cs",))))
def test_kv_line_round_trips_any_name(tmp_path_factory, key, tiebreak):
    """kv.jsonl (the TrivyShard → TrivyDb intermediate) carries package names and ids holding
    any character but NUL, tabs, newlines and backslashes included."""
    from stella_build.rules.trivy_db import _kv_line, _read_lines, _tiebreak

    path = tmp_path_factory.mktemp("kv") / "kv.jsonl"
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    value, member = dumps({"v": "a\tb\nc"}), dumps({"m": ["x\\y"]})
    path.write_text(_kv_line(dumps, key, "a", tiebreak, value, member) + "\n", encoding="utf-8")
    [(got_key, kind, raw_tiebreak, got_value, got_member)] = list(_read_lines(path))
    assert (got_key, kind, _tiebreak(raw_tiebreak), got_value, got_member) == (
        key, "a", tiebreak, value.encode(), member.encode())
