"""OSV ingestion: the full PyPA (YAML) and Go (JSON) corpora, and malformed input."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stella_build.engine.encode.canonical_json import dumps
from stella_build.rules.evidence.model import Advisory, EvidenceError, SourceInfo
from stella_build.rules.evidence.sources.osv import load_osv_document, normalize_osv

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE = SourceInfo(name="test", license="CC-BY-4.0")


def _files(pattern: str, expected: int) -> list[Path]:
    files = sorted(DATA.glob(pattern))
    assert len(files) == expected, f"shared corpus {pattern}: {len(files)} files, README says {expected}"
    return files


def _ingest(files: list[Path]) -> tuple[list[dict], list[Advisory]]:
    docs, advisories = [], []
    for f in files:
        rel = f.relative_to(DATA).as_posix()
        doc = load_osv_document(f.read_bytes(), rel)
        docs.append(doc)
        advisories += normalize_osv(doc, rel, SOURCE)
    return docs, advisories


def _assert_full_corpus(files: list[Path], docs: list[dict], advisories: list[Advisory]) -> None:
    # Every document yields one advisory per distinct affected package, with its id.
    for f, doc in zip(files, docs):
        assert isinstance(doc["modified"], str)
    expected = sum(len({(a["package"]["ecosystem"], a["package"]["name"]) for a in d["affected"]}) for d in docs)
    assert len(advisories) == expected
    # Withdrawn records are kept, flagged; count them independently from the raw text.
    raw_withdrawn = sum(
        1 for f in files
        if (re.search(rb"^withdrawn:", f.read_bytes(), re.M) if f.suffix == ".yaml" else "withdrawn" in json.loads(f.read_bytes()))
    )
    withdrawn_ids = {a.id for a in advisories if a.withdrawn}
    assert len(withdrawn_ids) == raw_withdrawn
    for a in advisories:
        assert a.modified.endswith("Z") and "T" in a.modified
        assert list(a.aliases) == sorted(set(a.aliases))
        assert [(r.url, r.type) for r in a.references] == sorted({(r.url, r.type) for r in a.references})
        dumps(a.to_canonical())  # has a canonical JSON form


def test_pypi_corpus_ingests_completely():
    files = _files("osv-pypi/vulns/*/*.yaml", 2661)
    docs, advisories = _ingest(files)
    _assert_full_corpus(files, docs, advisories)
    assert {a.ecosystem for a in advisories} == {"PyPI"}
    assert sum(1 for a in advisories if a.withdrawn) > 0
    # YAML timestamps stay strings exactly as written in the file.
    doc = docs[0]
    raw = files[0].read_text()
    assert re.search(rf"^modified: \"?{re.escape(doc['modified'])}\"?$", raw, re.M)
    assert any(re.search(r"^modified: \d", f.read_text(), re.M) for f in files)  # unquoted ones exist too


def test_go_corpus_ingests_completely():
    files = _files("osv-go/*.json", 4291)
    docs, advisories = _ingest(files)
    _assert_full_corpus(files, docs, advisories)
    assert {a.ecosystem for a in advisories} == {"Go"}


def test_go_record_normalized_shape():
    rel = "osv-go/GO-2022-0969.json"
    raw = json.loads((DATA / rel).read_bytes())
    advisories = normalize_osv(load_osv_document((DATA / rel).read_bytes(), rel), rel, SOURCE)
    by_pkg = {a.package.name: a for a in advisories}
    assert set(by_pkg) == {a["package"]["name"] for a in raw["affected"]}
    std = by_pkg["stdlib"]
    src_events = [next(iter(e.items())) for e in raw["affected"][0]["ranges"][0]["events"]]
    assert [(e.kind, e.version) for e in std.ranges[0].events] == src_events  # original order kept
    assert std.fixed_versions == tuple(v for k, v in src_events if k == "fixed")
    assert std.aliases == tuple(sorted(raw["aliases"]))
    assert std.package.purl == "pkg:golang/stdlib"
    assert std.ecosystem_specific == (raw["affected"][0]["ecosystem_specific"],)
    assert std.database_specific == raw["database_specific"]
    assert std.published == raw["published"]


def test_duplicate_affected_entries_are_merged():
    doc = {
        "id": "GO-TEST-1", "modified": "2024-01-01T00:00:00Z",
        "affected": [
            {"package": {"ecosystem": "Go", "name": "example.com/m"},
             "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.0.0"}]}],
             "ecosystem_specific": {"imports": [{"path": "example.com/m/a"}]}},
            {"package": {"ecosystem": "Go", "name": "example.com/m"},
             "ranges": [{"type": "SEMVER", "events": [{"introduced": "2.0.0"}, {"fixed": "2.1.0"}]}],
             "ecosystem_specific": {"imports": [{"path": "example.com/m/b"}]}},
        ],
    }
    (adv,) = normalize_osv(doc, "x.json", SOURCE)
    assert [r.events[-1].version for r in adv.ranges] == ["1.0.0", "2.1.0"]
    assert len(adv.ecosystem_specific) == 2
    assert adv.fixed_versions == ("1.0.0", "2.1.0")


def test_severity_scored_and_label_kept():
    doc = {
        "id": "X-1", "modified": "2024-01-01T00:00:00+02:00",
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "database_specific": {"severity": "critical", "cwe_ids": ["CWE-89", "CWE-79", "CWE-89"]},
        "affected": [{"package": {"ecosystem": "PyPI", "name": "Foo_Bar.baz"}, "versions": ["1.0"]}],
    }
    (adv,) = normalize_osv(doc, "x.json", SOURCE)
    cvss, vendor = adv.severity
    assert (cvss.type, cvss.score, cvss.label) == ("CVSS_V3", 9.8, "CRITICAL")
    assert (vendor.type, vendor.label) == ("vendor", "CRITICAL")
    assert adv.cwe_ids == ("CWE-79", "CWE-89")
    assert adv.modified == "2023-12-31T22:00:00Z"
    assert adv.package.normalized == "foo-bar-baz"
    assert adv.package.purl == "pkg:pypi/foo-bar.baz"


@pytest.mark.parametrize(
    "name, data, field",
    [
        ("a.json", b'{"id": "X-1", "modified": "2024-01-01T00:00:00Z", "affected": [', "<document>"),
        ("a.yaml", b"id: X-1\nmodified: 2024-01-01T00:00:00Z\naffected: [\n", "<document>"),
        ("a.yaml", b"id: X-1\n  bad: indentation\n", "<document>"),
        ("a.json", b'{"modified": "2024-01-01T00:00:00Z"}', "id"),
        ("a.json", b'{"id": "X-1"}', "modified"),
        ("a.json", b'{"id": "X-1", "modified": "yesterday"}', "modified"),
        ("a.json", b"[1, 2]", "<document>"),
        ("a.json", b"\xff\xfe", "<document>"),
        ("a.json", json.dumps({"id": "X", "modified": "2024-01-01T00:00:00Z", "affected": [
            {"package": {"ecosystem": "PyPI", "name": "p"},
             "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixd": "1"}]}]}]}).encode(),
         "affected[0].ranges[0].events[1].fixd"),
        ("a.json", json.dumps({"id": "X", "modified": "2024-01-01T00:00:00Z", "affected": [
            {"package": {"ecosystem": "PyPI", "name": "p"},
             "ranges": [{"type": "RANGE", "events": [{"introduced": "0"}]}]}]}).encode(),
         "affected[0].ranges[0].type"),
        ("a.json", json.dumps({"id": "X", "modified": "2024-01-01T00:00:00Z", "affected": [
            {"package": {"ecosystem": "PyPI", "name": "p"},
             "ranges": [{"type": "ECOSYSTEM", "events": [{"fixed": "1"}]}]}]}).encode(),
         "affected[0].ranges[0].events"),
        ("a.json", json.dumps({"id": "X", "modified": "2024-01-01T00:00:00Z", "affected": [
            {"package": {"ecosystem": "PyPI", "name": "p"},
             "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0", "fixed": "1"}]}]}]}).encode(),
         "affected[0].ranges[0].events[0]"),
        # An unquoted YAML version would silently become a float (1.10 -> 1.1): refused.
        ("a.yaml", b"id: X\nmodified: 2024-01-01T00:00:00Z\naffected:\n- package: {ecosystem: PyPI, name: p}\n"
                   b"  ranges:\n  - type: ECOSYSTEM\n    events:\n    - introduced: '0'\n    - fixed: 1.10\n",
         "affected[0].ranges[0].events[1].fixed"),
    ],
)
def test_malformed_input_names_file_and_field(name, data, field):
    with pytest.raises(EvidenceError) as info:
        load_osv_document(data, f"corpus/{name}")
    err = info.value
    assert err.path == f"corpus/{name}"
    assert err.field == field
    assert str(err).startswith(f"corpus/{name}: {field}: ")
    assert err.message


def test_bad_cvss_vector_is_an_error():
    doc = {"id": "X", "modified": "2024-01-01T00:00:00Z", "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N"}],
           "affected": [{"package": {"ecosystem": "PyPI", "name": "p"}, "versions": ["1"]}]}
    with pytest.raises(EvidenceError) as info:
        normalize_osv(doc, "x.json", SOURCE)
    assert info.value.field == "severity.score"


def test_normalization_is_deterministic():
    files = sorted(DATA.glob("osv-pypi/vulns/*/*.yaml"))[:50]
    first = [dumps(a.to_canonical()) for f in files for a in normalize_osv(
        load_osv_document(f.read_bytes(), f.name), f.name, SOURCE)]
    second = [dumps(a.to_canonical()) for f in files for a in normalize_osv(
        load_osv_document(f.read_bytes(), f.name), f.name, SOURCE)]
    assert first == second and first
