"""Alpine secdb ingestion: the full v3.3-v3.11 corpus, secfixes quirks, malformed input."""
from __future__ import annotations

from pathlib import Path

import pytest

from stella_build.engine.encode.canonical_json import dumps
from stella_build.rules.evidence.model import EvidenceError, SourceInfo
from stella_build.rules.evidence.sources.alpine import normalize_secdb, secfix_ids
from stella_build.rules.evidence.versions import affected

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE = SourceInfo(name="Alpine Secdb", url="https://secdb.alpinelinux.org/")


def test_full_corpus_ingests():
    files = sorted(DATA.glob("alpine-secdb/v3.*/*.yaml"))
    assert len(files) == 18  # v3.3 ... v3.11, main + community
    total = 0
    for f in files:
        rel = f.relative_to(DATA).as_posix()
        advisories = normalize_secdb(f.read_bytes(), rel, SOURCE)
        total += len(advisories)
        release = f.parent.name
        keys = set()
        for a in advisories:
            assert a.ecosystem == f"Alpine:{release}"
            assert (a.id, a.package.name) not in keys  # one record per (id, package, release)
            keys.add((a.id, a.package.name))
            for fixed in a.fixed_versions:
                assert fixed != "0"
                assert fixed in f.read_text()
            dumps(a.to_canonical())
    assert total > 10000


def test_known_record_and_fix_semantics():
    rel = "alpine-secdb/v3.11/main.yaml"
    advisories = normalize_secdb((DATA / rel).read_bytes(), rel, SOURCE)
    (a,) = [x for x in advisories if x.id == "CVE-2019-14904" and x.package.name == "ansible"]
    assert a.fixed_versions == ("2.9.3-r0",)
    assert a.package.purl == "pkg:apk/alpine/ansible?distro=v3.11"
    assert affected(a.ecosystem, "2.9.2-r1", a.ranges)
    assert not affected(a.ecosystem, "2.9.3-r0", a.ranges)
    assert not affected(a.ecosystem, "2.9.3-r1", a.ranges)


SECDB = b"""---
distroversion: v3.12
reponame: main
packages:
  - pkg:
      name: tcpdump
      secfixes:
        4.9.3-r0:
          - CVE-2018-14468 (FrameRelay)
          - CVE-2017-12122 TALOS-2017-0488
        4.9.2-r1:
          - CVE-2018-14468
        0:
          - CVE-2020-0001
  - pkg:
      name: xen
      secfixes:
        4.9.1-r1:
          - CVE-????-?????  XSA-295
          - CVE_2019-2426
          - CVE-2017-5753 CVE-2017-5715 XSA-254 XPTI
  - pkg:
      name: empty
      secfixes:
        1.0-r0: ''
"""


def test_secfixes_quirks():
    advisories = {(a.package.name, a.id): a for a in normalize_secdb(SECDB, "v3.12/main.yaml", SOURCE)}
    assert set(advisories) == {
        ("tcpdump", "CVE-2018-14468"), ("tcpdump", "CVE-2017-12122"), ("tcpdump", "CVE-2020-0001"),
        ("xen", "XSA-295"), ("xen", "CVE-2019-2426"), ("xen", "CVE-2017-5753"), ("xen", "CVE-2017-5715"),
    }
    twice = advisories[("tcpdump", "CVE-2018-14468")]
    assert twice.fixed_versions == ("4.9.2-r1", "4.9.3-r0")  # lowest first, range uses it
    assert twice.ranges[0].events[-1].version == "4.9.2-r1"
    assert advisories[("tcpdump", "CVE-2017-12122")].aliases == ("TALOS-2017-0488",)
    assert advisories[("xen", "CVE-2017-5715")].aliases == ("XSA-254",)
    zero = advisories[("tcpdump", "CVE-2020-0001")]
    assert zero.fixed_versions == () and zero.ranges == ()
    assert zero.database_specific["alpine"]["unfixed_marker"] is True
    assert not affected(zero.ecosystem, "4.9.3-r0", zero.ranges, zero.versions)


@pytest.mark.parametrize("entry, ids, aliases", [
    ("CVE-2019-1234", ["CVE-2019-1234"], []),
    ("CVE-2018-10103 (SMB - partially fixed, but SMB printing disabled)", ["CVE-2018-10103"], []),
    ("CVE-2017-17434-1", ["CVE-2017-17434"], []),
    ("CVE-2017-8073.patch", ["CVE-2017-8073"], []),
    ("CVE 2018-16859", ["CVE-2018-16859"], []),
    ("wnpa-sec-2017-18", ["wnpa-sec-2017-18"], []),
    ("CVE-2016-10134 ZBX-11023", ["CVE-2016-10134"], ["ZBX-11023"]),
])
def test_secfix_ids(entry, ids, aliases):
    assert secfix_ids(entry) == (ids, aliases)


@pytest.mark.parametrize("text, field", [
    (b"distroversion: v3.12\nreponame: main\npackages: [\n", "<document>"),
    (b"reponame: main\npackages: []\n", "distroversion"),
    (b"distroversion: v3.12\npackages: []\n", "reponame"),
    (b"distroversion: v3.12\nreponame: main\npackages:\n  - pkg:\n      secfixes: {}\n", "packages[0].pkg.name"),
    (b"distroversion: v3.12\nreponame: main\npackages:\n  - pkg:\n      name: a\n      secfixes:\n        1-r0: {x: y}\n",
     "packages[0].pkg.secfixes[1-r0]"),
    (b"distroversion: v3.12\nreponame: main\npackages:\n  - pkg:\n      name: a\n      secfixes:\n        1-r0: ['see notes']\n",
     "packages[0].pkg.secfixes[1-r0]"),
])
def test_malformed_input_names_file_and_field(text, field):
    with pytest.raises(EvidenceError) as info:
        normalize_secdb(text, "v3.12/main.yaml", SOURCE)
    assert (info.value.path, info.value.field) == ("v3.12/main.yaml", field)
