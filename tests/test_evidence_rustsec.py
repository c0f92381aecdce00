"""RustSec ingestion: the full advisory-db corpus, requirement conversion, malformed input."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import semver

from stella_build.engine.encode.canonical_json import dumps
from stella_build.rules.evidence.model import EvidenceError, SourceInfo
from stella_build.rules.evidence.sources.rustsec import normalize_rustsec, requirements_to_events
from stella_build.rules.evidence.versions import affected, rustsec_requirement_matches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE = SourceInfo(name="RustSec", license="CC0-1.0")


def _corpus():
    files = sorted(DATA.glob("rustsec/*/*/*.md"))
    assert len(files) == 1225, "README: 1,225 RustSec advisories"
    out = []
    for f in files:
        rel = f.relative_to(DATA).as_posix()
        out += [(f, a) for a in normalize_rustsec(f.read_bytes(), rel, SOURCE)]
    return out


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


def _probe_versions(requirements: list[str]) -> set[str]:
    """Versions at, just below and just above every bound a requirement names."""
    probes = {"0.0.1", "0.1.0", "1.0.0", "99.0.0"}
    for req in requirements:
        for m in re.finditer(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", req):
            major, minor, patch = (int(x) if x else 0 for x in m.groups())
            v = semver.Version(major, minor, patch)
            probes |= {str(v), str(v.bump_patch()), str(v.bump_minor()), str(v.bump_major())}
            if patch:
                probes.add(str(v.replace(patch=patch - 1)))
            if minor:
                probes.add(f"{major}.{minor - 1}.99")
            if major:
                probes.add(f"{major - 1}.99.99")
    return probes


def test_full_corpus_ingests(corpus):
    assert len(corpus) == 1225
    raw_withdrawn = sum(1 for f, _ in corpus if re.search(r"^withdrawn\s*=", f.read_text(), re.M))
    assert sum(1 for _, a in corpus if a.withdrawn) == raw_withdrawn > 0
    for f, a in corpus:
        assert a.ecosystem == "crates.io"
        assert a.id == f.stem
        assert a.published and a.published.endswith("T00:00:00Z")
        dumps(a.to_canonical())


def test_events_agree_with_cargo_requirements_on_whole_corpus(corpus):
    """The OSV events derived from patched/unaffected give the same answer as evaluating the
    kept Cargo requirement strings directly (for release versions)."""
    checked = 0
    for _, a in corpus:
        reqs = a.database_specific["rustsec"]["versions"]
        safe = reqs["patched"] + reqs["unaffected"]
        for v in _probe_versions(safe):
            by_reqs = not any(rustsec_requirement_matches(v, r) for r in safe)
            assert affected("crates.io", v, a.ranges) == by_reqs, (a.id, v, safe, a.ranges)
            checked += 1
    assert checked > 10000


def test_known_record_fields():
    rel = "rustsec/crates/badge/RUSTSEC-2022-0057.md"
    raw = (DATA / rel).read_text()
    meta = tomllib.loads(raw.split("```toml\n", 1)[1].split("\n```", 1)[0])
    (a,) = normalize_rustsec((DATA / rel).read_bytes(), rel, SOURCE)
    assert a.package.name == meta["advisory"]["package"]
    assert a.database_specific["rustsec"]["informational"] == meta["advisory"]["informational"]
    assert [(e.kind, e.version) for e in a.ranges[0].events] == [("introduced", "0")]  # nothing patched
    assert a.summary == raw.split("```\n# ", 1)[1].splitlines()[0]
    assert a.details and not a.details.startswith("#")


@pytest.mark.parametrize(
    "safe, inside, outside",
    [
        ([">= 1.2.3"], ["0.1.0", "1.2.2"], ["1.2.3", "5.0.0"]),
        ([">= 1.2.3, < 2.0.0", ">= 2.1.0"], ["1.0.0", "2.0.0", "2.0.9"], ["1.2.3", "2.1.0"]),
        (["^0.3.4", ">= 0.4.2"], ["0.3.3", "0.4.0", "0.4.1"], ["0.3.4", "0.3.99", "0.4.2"]),
        (["< 0.5"], ["0.5.0", "1.0.0"], ["0.4.9", "0.0.0"]),
        (["> 1.2.3"], ["1.2.3", "1.0.0"], ["1.2.4", "1.2.4-alpha"]),
        (["<= 1.2.3", ">= 1.4"], ["1.2.4", "1.3.9"], ["1.2.3", "1.4.0"]),
        (["=1.2.3"], ["1.2.2", "1.2.4"], ["1.2.3"]),
        (["~1.2"], ["1.1.9", "1.3.0"], ["1.2.0", "1.2.7"]),
        ([], ["0.0.1", "100.0.0"], []),
    ],
)
def test_requirements_to_events(safe, inside, outside):
    events = requirements_to_events(safe)
    r = {"type": "SEMVER", "events": [e.model_dump() for e in events]}
    for v in inside:
        assert affected("crates.io", v, [r]), (v, events)
    for v in outside:
        assert not affected("crates.io", v, [r]), (v, events)


@pytest.mark.parametrize(
    "text, field",
    [
        (b"# no front matter\n", "<front matter>"),
        (b"```toml\n[advisory\nid = 1\n```\n", "<front matter>"),
        (b'```toml\n[advisory]\npackage = "p"\ndate = "2020-01-01"\n[versions]\npatched = []\n```\n', "advisory.id"),
        (b'```toml\n[advisory]\nid = "R-1"\npackage = "p"\ndate = "2020-01-01"\n```\n', "versions"),
        (b'```toml\n[advisory]\nid = "R-1"\npackage = "p"\ndate = "2020-01-01"\n[versions]\npatched = ["~> 1"]\n```\n',
         "versions.patched[0]"),
        (b'```toml\n[advisory]\nid = "R-1"\npackage = "p"\ndate = "20200101"\n[versions]\npatched = []\n```\n',
         "advisory.date"),
        (b'```toml\n[advisory]\nid = "R-1"\npackage = "p"\ndate = "2020-01-01"\ncvss = "CVSS:3.1/AV:X"\n'
         b'[versions]\npatched = []\n```\n', "advisory.cvss"),
    ],
)
def test_malformed_input_names_file_and_field(text, field):
    with pytest.raises(EvidenceError) as info:
        normalize_rustsec(text, "crates/p/R-1.md", SOURCE)
    assert (info.value.path, info.value.field) == ("crates/p/R-1.md", field)
    assert str(info.value).startswith(f"crates/p/R-1.md: {field}: ")
