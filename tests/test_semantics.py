"""Every advisory shape means what its spec says, in json:policy and in the trivy:db mapping.

One section per fault kind of the "advisory semantics" issue (items 1-8); the expected values come
from the specs (OSV schema "Evaluation", Maven's ComparableVersionTest, the rustsec crate's
``Versions::is_vulnerable``, Alpine secdb) and from how Trivy v0.74.0's comparers read our
constraints (tests/interop/test_semantics_trivy.py checks the same probes with real Trivy).
``SEMANTICS_RECORDS`` / ``SEMANTICS_COMPONENTS`` are shared with that interop test.
"""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stella_build.rules.evidence.model import SourceInfo
from stella_build.rules.evidence.policy import (
    advisory_key, component_key, effective_severity, match_components, match_name, release_applies,
)
from stella_build.rules.evidence.sources.alpine import normalize_secdb
from stella_build.rules.evidence.sources.osv import normalize_osv
from stella_build.rules.evidence.sources.rustsec import normalize_rustsec
from stella_build.rules.evidence.versions import (
    affected, compare, maven_compare, vulnerable_intervals,
)
from stella_build.rules.formats.trivy.schema import (
    EVERY_VERSION, advisory_entries, merge_advisories, merge_vulnerability, trivy_pkg_names,
    vulnerability_detail,
)
from tests.conftest import make_workspace, run_cli

SRC = SourceInfo(name="Semantics Test Feed")
V4_HIGH = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:L/VA:N/SC:N/SI:N/SA:N"   # 8.8 HIGH
V31_MEDIUM = "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:N/I:H/A:N"                 # 5.9 MEDIUM
V30_CRITICAL = "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"               # 9.8 CRITICAL
V31_LOW = "CVSS:3.1/AV:N/AC:H/PR:L/UI:R/S:U/C:L/I:N/A:N"                    # 2.6 LOW


def osv(vid: str, eco: str, name: str, events: list[dict], **extra) -> dict:
    doc = {"id": vid, "modified": "2025-01-01T00:00:00Z", "summary": f"{vid} summary",
           "affected": [{"package": {"ecosystem": eco, "name": name},
                         "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}
    doc.update(extra)
    return doc


# The probes shared with the interop test: (record, {version: affected?}).
SEMANTICS_RECORDS = {
    # 1. events out of order: <1.0.0 ∪ [2.0.0, 2.5.0)
    "order": osv("STELLA-SEM-0001", "PyPI", "orderpkg",
                 [{"fixed": "2.5.0"}, {"introduced": "2.0.0"}, {"introduced": "0"}, {"fixed": "1.0.0"}]),
    # 2. limit events: a limit caps; "*" is infinity; several limits: below any of them
    "limit": osv("STELLA-SEM-0002", "PyPI", "limitpkg", [{"introduced": "0"}, {"limit": "2.0.0"}]),
    "starlimit": osv("STELLA-SEM-0003", "PyPI", "starlimit",
                     [{"introduced": "1.0.0"}, {"limit": "3.0.0"}, {"limit": "*"}]),
    # 4. names: a dotted project and a PEP 503-spelled one
    "zope": osv("STELLA-SEM-0004", "PyPI", "zope.interface", [{"introduced": "0"}, {"fixed": "5.0.0"}]),
    "ruamel": osv("STELLA-SEM-0005", "PyPI", "ruamel-yaml", [{"introduced": "0"}, {"fixed": "0.16.0"}]),
    # 5. severity precedence: v4 over v3 over a textual label
    "severity": osv("STELLA-SEM-0006", "PyPI", "sevpkg", [{"introduced": "0"}, {"fixed": "2.0.0"}],
                    severity=[{"type": "CVSS_V4", "score": V4_HIGH}, {"type": "CVSS_V3", "score": V31_MEDIUM},
                              {"type": "Ubuntu", "score": "medium"}]),
    # 3. Go "from the beginning" without a fix, and out of order
    "pseudo": osv("STELLA-SEM-0101", "Go", "example.com/pseudo", [{"introduced": "0"}]),
    "goorder": osv("STELLA-SEM-0102", "Go", "example.com/order", [{"fixed": "1.5.0"}, {"introduced": "1.2.0"}]),
}
SEMANTICS_RUSTSEC = """```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "prerel"
date = "2024-01-01"

[versions]
patched = ["0.4.0"]
```

# Reopened after 0.4.x
"""
SEMANTICS_SECDB = """---
distroversion: v3.18
reponame: main
archs: [x86_64]
packages:
  - pkg:
      name: apkpkg
      secfixes:
        2.4.1-r3:
          - CVE-2099-1111
        2.3.9-r8:
          - CVE-2099-1111
"""
# (purl, affected by the test record of its package?)
SEMANTICS_COMPONENTS = [
    ("pkg:pypi/orderpkg@0.5.0", True), ("pkg:pypi/orderpkg@1.0.0", False),
    ("pkg:pypi/orderpkg@1.5.0", False), ("pkg:pypi/orderpkg@2.0.0", True),
    ("pkg:pypi/orderpkg@2.5.0rc1", True), ("pkg:pypi/orderpkg@2.5.0", False),
    ("pkg:pypi/orderpkg@3.0.0", False),
    ("pkg:pypi/limitpkg@1.0.0", True), ("pkg:pypi/limitpkg@2.0.0", False), ("pkg:pypi/limitpkg@3.0.0", False),
    ("pkg:pypi/starlimit@0.5.0", False), ("pkg:pypi/starlimit@3.0.0", True), ("pkg:pypi/starlimit@9.0.0", True),
    ("pkg:pypi/zope.interface@4.0.0", True), ("pkg:pypi/ruamel.yaml@0.15.0", True),
    ("pkg:pypi/sevpkg@1.0.0", True),
    ("pkg:golang/example.com/pseudo@v0.0.0-20210101000000-abcdef012345", True),
    ("pkg:golang/example.com/pseudo@v1.2.3", True),
    ("pkg:golang/example.com/order@v1.1.0", False), ("pkg:golang/example.com/order@v1.3.0", True),
    ("pkg:golang/example.com/order@v1.5.0", False),
    ("pkg:cargo/prerel@0.3.0", True), ("pkg:cargo/prerel@0.4.2", False),
    ("pkg:cargo/prerel@0.5.0-alpha.1", True), ("pkg:cargo/prerel@0.5.0", True),
    ("pkg:apk/alpine/apkpkg@2.4.1-r2?distro=3.18.4", True), ("pkg:apk/alpine/apkpkg@2.4.1-r3?distro=3.18.4", False),
]


def normalized(key: str) -> dict:
    (adv,) = normalize_osv(SEMANTICS_RECORDS[key], f"t/{key}.json", SRC)
    return adv.to_canonical()


def component(purl: str, path: str = "t/app.cdx.json") -> dict:
    from stella_build.rules.evidence.sources.sbom import parse_cyclonedx

    doc = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [{"type": "library", "name": "x",
                                                                          "purl": purl}]}
    (comp,) = parse_cyclonedx(doc, path)
    return comp.to_canonical()


def trivy_value(adv) -> tuple[list[str], dict]:
    """(package keys, decoded advisory value) the trivy:db mapping writes for one record."""
    entries = advisory_entries(adv, "pip::x")
    keys = list(dict.fromkeys(pkg for _, pkg, _, _ in entries))
    return keys, json.loads(merge_advisories([entries[0][3]]))


# -- 1. range events out of order -----------------------------------------------------------------

def test_out_of_order_events_mean_the_sorted_timeline():
    adv = normalized("order")
    for v, want in [("0.5.0", True), ("1.0.0", False), ("1.5.0", False), ("2.0.0", True),
                    ("2.5.0rc1", True), ("2.5.0", False), ("3.0.0", False)]:
        assert affected("PyPI", v, adv["ranges"]) is want, v
    from stella_build.rules.evidence.model import Advisory
    _, value = trivy_value(Advisory.model_validate(adv))
    assert value["VulnerableVersions"] == ["<1.0.0", ">=2.0.0, <2.5.0"]
    assert value["PatchedVersions"] == ["2.5.0", "1.0.0"]


def test_range_reopened_at_its_own_fix_version_is_contiguous_in_file_order():
    """[0.12.2, 0.13.0) then [0.13.0, 0.14.0rc1) written in version order: "fixed 0.13.0" comes
    before "introduced 0.13.0" in the record, so 0.13.x stays affected."""
    from stella_build.rules.evidence.model import Advisory
    doc = osv("STELLA-SEM-0008", "PyPI", "reopened", [{"introduced": "0.12.2"}, {"fixed": "0.13.0"},
                                                      {"introduced": "0.13.0"}, {"fixed": "0.14.0rc1"}])
    (adv,) = normalize_osv(doc, "t/reopened.json", SRC)
    for v, want in [("0.12.1", False), ("0.12.2", True), ("0.13.0", True), ("0.13.5", True), ("0.14.0rc1", False)]:
        assert affected("PyPI", v, adv.ranges) is want, v
    _, value = trivy_value(Advisory.model_validate(adv.to_canonical()))
    assert value["VulnerableVersions"] == [">=0.12.2, <0.14.0rc1"]


# Ties (events at one version) keep the record's order: OSV sorts the events and says nothing
# about equal versions; osv.dev (Python's stable sorted) and osv-scanner (Go's insertion sort for
# short lists) keep the record's order there. The two records of the shared corpora with such a
# tie, as osv.dev enumerates them in their own ``versions`` lists and osv-scanner 2.6.0 answers.
@pytest.mark.parametrize("name, events, probes", [
    # PYSEC-2022-42972 (apache-iotdb): osv.dev's versions list is 0.12.2 .. 0.12.6
    ("apache-iotdb", [{"introduced": "0.13.0"}, {"fixed": "0.14.0rc1"}, {"introduced": "0.12.2"}, {"fixed": "0.13.0"}],
     {"0.12.1": False, "0.12.2": True, "0.12.6": True, "0.13.0": False, "0.13.3a1": False, "0.13.5": False,
      "0.14.0rc1": False}),
    # PYSEC-2023-72 (pyspark): osv.dev's versions list ends at 3.1.3 (3.2.0 and 3.2.1 not listed)
    ("pyspark", [{"introduced": "0"}, {"fixed": "3.1.1"}, {"introduced": "3.2.0"}, {"fixed": "3.2.2"},
                 {"introduced": "3.1.1"}, {"fixed": "3.2.0"}],
     {"3.0.3": True, "3.1.1": True, "3.1.3": True, "3.2.0": False, "3.2.1": False, "3.2.2": False}),
])
def test_events_at_one_version_keep_the_record_order(name, events, probes):
    from stella_build.rules.evidence.model import Advisory
    (adv,) = normalize_osv(osv("STELLA-SEM-0009", "PyPI", name, events), f"t/{name}.json", SRC)
    for v, want in probes.items():
        assert affected("PyPI", v, adv.ranges) is want, v
    # the trivy:db mapping walks the same sorted events: Trivy's PEP 440 comparer gets the same set
    _, value = trivy_value(Advisory.model_validate(adv.to_canonical()))
    want_constraints = {"apache-iotdb": [">=0.12.2, <0.13.0"], "pyspark": ["<3.2.0"]}[name]
    assert value["VulnerableVersions"] == want_constraints


def test_out_of_order_events_in_go_too():
    from stella_build.rules.evidence.model import Advisory
    adv = Advisory.model_validate(normalized("goorder"))
    assert json.loads(merge_advisories([advisory_entries(adv, "go::x")[0][3]]))["VulnerableVersions"] == \
        [">=1.2.0, <1.5.0"]


# -- 2. limit events ------------------------------------------------------------------------------

@pytest.mark.parametrize("events, probes", [
    ([("introduced", "0"), ("limit", "2.0.0")], {"1.0.0": True, "2.0.0": False, "3.0.0": False}),
    ([("introduced", "1.0.0"), ("limit", "3.0.0"), ("limit", "*")], {"0.5.0": False, "3.0.0": True, "9.0.0": True}),
    ([("introduced", "0"), ("limit", "2.0.0"), ("limit", "3.0.0")], {"2.5.0": True, "3.0.0": False}),
    ([("introduced", "0"), ("fixed", "1.0.0"), ("introduced", "2.0.0"), ("limit", "1.5.0")],
     {"0.5.0": True, "2.0.0": False}),
])
def test_limit_events_follow_the_osv_before_limits_rule(events, probes):
    r = {"type": "ECOSYSTEM", "events": [{"kind": k, "version": v} for k, v in events]}
    for v, want in probes.items():
        assert affected("PyPI", v, [r]) is want, (v, events)


def test_limit_events_in_trivy_values():
    from stella_build.rules.evidence.model import Advisory
    _, limit = trivy_value(Advisory.model_validate(normalized("limit")))
    _, star = trivy_value(Advisory.model_validate(normalized("starlimit")))
    assert limit["VulnerableVersions"] == ["<2.0.0"]
    assert star["VulnerableVersions"] == [">=1.0.0"]


_EV = st.sampled_from(["introduced", "fixed", "last_affected", "limit"])
_VER = st.integers(0, 5).map(lambda i: f"1.{i}.0")


@settings(max_examples=400, deadline=None)
@given(events=st.lists(st.tuples(_EV, st.one_of(_VER, st.just("0"), st.just("*"))), min_size=1, max_size=6),
       seed=st.integers(0, 10 ** 6))
def test_intervals_equal_osv_evaluation_for_any_event_order(events, seed):
    """vulnerable_intervals (what trivy:db writes) holds exactly what affected (json:policy) says."""
    events = [(k, v) for k, v in events if not (v == "0" and k != "introduced")
              and not (v == "*" and k != "limit")]
    if not any(k == "introduced" for k, _ in events):
        events.append(("introduced", "1.1.0"))
    random.Random(seed).shuffle(events)
    r = {"type": "SEMVER", "events": [{"kind": k, "version": v} for k, v in events]}
    intervals = vulnerable_intervals("Go", r)
    for i in range(0, 7):
        for probe in (f"1.{i}.0", f"1.{i}.0-rc.1", "0.0.0-20210101000000-abcdef012345"):
            inside = any((lo is None or compare("Go", probe, lo) >= 0)
                         and (hi is None or (compare("Go", probe, hi) <= 0 if inc else compare("Go", probe, hi) < 0))
                         for lo, hi, inc in intervals)
            assert inside == affected("Go", probe, [r]), (probe, events, intervals)


# -- 3. pre-release bounds and "from the beginning" -----------------------------------------------

def test_rustsec_reopened_range_includes_the_next_lines_prereleases():
    (adv,) = normalize_rustsec(SEMANTICS_RUSTSEC.encode(), "t/RUSTSEC-2099-0001.md", SRC)
    events = [(e.kind, e.version) for e in adv.ranges[0].events]
    assert events == [("introduced", "0"), ("fixed", "0.4.0"), ("introduced", "0.5.0-0")]
    for v, want in [("0.3.0", True), ("0.4.0", False), ("0.4.2", False), ("0.5.0-alpha.1", True),
                    ("0.5.0", True)]:
        assert affected("crates.io", v, adv.ranges) is want, v
    value = json.loads(merge_advisories([advisory_entries(adv, "cargo::x")[0][3]]))
    assert value["VulnerableVersions"] == ["<0.4.0", ">=0.5.0-0"]


def test_go_record_without_fix_matches_pseudo_versions_in_trivy_form():
    from stella_build.rules.evidence.model import Advisory
    adv = Advisory.model_validate(normalized("pseudo"))
    value = json.loads(merge_advisories([advisory_entries(adv, "go::x")[0][3]]))
    assert value["VulnerableVersions"] == list(EVERY_VERSION) == ["<=0", ">=0"]
    # Trivy's go-version orders the pseudo-version below 0, so only "<=0" catches it
    assert compare("Go", "0.0.0-20210101000000-abcdef012345", "0") < 0
    assert affected("Go", "v0.0.0-20210101000000-abcdef012345", adv.ranges)


# -- 4. package-name spellings --------------------------------------------------------------------

def test_pypi_records_are_keyed_under_every_spelling_trivy_looks_up():
    assert trivy_pkg_names("pip", "zope.interface") == ["zope.interface", "zope-interface"]
    assert trivy_pkg_names("pip", "ruamel-yaml") == ["ruamel-yaml", "ruamel.yaml"]
    assert trivy_pkg_names("pip", "Foo_Bar") == ["foo-bar", "foo.bar"]
    assert trivy_pkg_names("npm", "@Babel/Core") == ["@babel/core"]
    assert trivy_pkg_names("go", "github.com/BurntSushi/toml") == ["github.com/BurntSushi/toml"]
    from stella_build.rules.evidence.model import Advisory
    keys, _ = trivy_value(Advisory.model_validate(normalized("zope")))
    assert keys == ["zope.interface", "zope-interface"]


@pytest.mark.parametrize("eco, adv_name, purl", [
    ("PyPI", "zope.interface", "pkg:pypi/Zope-Interface@4.0.0"),
    ("npm", "JSONStream", "pkg:npm/jsonstream@1.0.0"),
    ("npm", "@Babel/Core", "pkg:npm/%40babel/core@7.0.0"),
    ("Maven", "org.Example:Lib", "pkg:maven/org.example/lib@1.0"),
    ("NuGet", "Newtonsoft.Json", "pkg:nuget/newtonsoft.json@13.0.1"),
    ("crates.io", "foo_bar", "pkg:cargo/foo-bar@1.0.0"),
])
def test_json_policy_matches_every_spelling_trivy_does(eco, adv_name, purl):
    adv = {"ecosystem": eco, "package": {"normalized": adv_name}}
    assert advisory_key(adv) == component_key(component(purl))


def test_go_module_paths_stay_case_sensitive():
    assert match_name("Go", "github.com/BurntSushi/toml") != match_name("Go", "github.com/burntsushi/toml")


# -- 5. severity precedence -----------------------------------------------------------------------

def test_one_severity_precedence_in_both_outputs():
    from stella_build.rules.evidence.model import Advisory
    adv = Advisory.model_validate(normalized("severity"))
    level = effective_severity([s.model_dump() for s in adv.severity], "medium")
    assert (level["level"], level["type"], level["score"]) == ("high", "CVSS_V4", 8.8)
    value = json.loads(merge_vulnerability("STELLA-SEM-0006", [vulnerability_detail(adv, "semantics")]))
    assert value["VendorSeverity"] == {"semantics": 3} and value["Severity"] == "HIGH"


@pytest.mark.parametrize("severity, want", [
    ([{"type": "CVSS_V3", "score": V30_CRITICAL}, {"type": "CVSS_V3", "score": V31_LOW}], "low"),  # 3.1 > 3.0
    ([{"type": "CVSS_V3", "score": V31_MEDIUM}], "medium"),
    ([{"type": "Ubuntu", "score": "negligible"}], "low"),
    ([], None),
])
def test_severity_precedence_cases(severity, want):
    from stella_build.rules.evidence.model import Advisory
    doc = osv("STELLA-SEM-0007", "PyPI", "x", [{"introduced": "0"}], severity=severity,
              database_specific={"severity": "CRITICAL"} if want is None else {})
    (adv,) = normalize_osv(doc, "t/x.json", SRC)
    want = want or "critical"  # nothing but the database_specific label
    assert effective_severity([s.model_dump() for s in adv.severity], "medium")["level"] == want
    value = json.loads(merge_vulnerability("X", [vulnerability_detail(adv, "semantics")]))
    assert value["Severity"] == want.upper()


# -- 6. Maven ordering: Maven 3.9.16's ComparableVersionTest vectors, as data ---------------------

MVN_ORDERED = [
    ["1-alpha2snapshot", "1-alpha2", "1-alpha-123", "1-beta-2", "1-beta123", "1-m2", "1-m11", "1-rc", "1-cr2",
     "1-rc123", "1-SNAPSHOT", "1", "1-sp", "1-sp2", "1-sp123", "1-abc", "1-def", "1-pom-1", "1-1-snapshot",
     "1-1", "1-2", "1-123"],
    ["2.0", "2.0.a", "2-1", "2.0.2", "2.0.123", "2.1.0", "2.1-a", "2.1b", "2.1-c", "2.1-1", "2.1.0.1", "2.2",
     "2.123", "11.a2", "11.a11", "11.b2", "11.b11", "11.m2", "11.m11", "11", "11.a", "11b", "11c", "11m"],
]
MVN_EQUAL = [
    ("1", "1"), ("1", "1.0"), ("1", "1.0.0"), ("1.0", "1.0.0"), ("1", "1-0"), ("1", "1.0-0"), ("1.0", "1.0-0"),
    ("1a", "1-a"), ("1a", "1.0-a"), ("1a", "1.0.0-a"), ("1.0a", "1-a"), ("1.0.0a", "1-a"), ("1x", "1-x"),
    ("1x", "1.0-x"), ("1x", "1.0.0-x"), ("1.0x", "1-x"), ("1.0.0x", "1-x"), ("1ga", "1"), ("1release", "1"),
    ("1final", "1"), ("1cr", "1rc"), ("1a1", "1-alpha-1"), ("1b2", "1-beta-2"), ("1m3", "1-milestone-3"),
    ("1X", "1x"), ("1A", "1a"), ("1B", "1b"), ("1M", "1m"), ("1Ga", "1"), ("1GA", "1"), ("1RELEASE", "1"),
    ("1RELeaSE", "1"), ("1Final", "1"), ("1FinaL", "1"), ("1FINAL", "1"), ("1Cr", "1Rc"), ("1cR", "1rC"),
    ("1m3", "1Milestone3"), ("1m3", "1MileStone3"), ("1m3", "1MILESTONE3"),
    ("1-abcdefghijklmnopqrstuvwxyz", "1-ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    *[("0" * n + "1", "1") for n in range(1, 19)], *[("0" * n, "0") for n in range(1, 19)],
    *[(f"2-{x}", f"2.0.{x}") for x in ("abc", "alpha", "a", "beta", "b", "def", "milestone", "m", "RC")],
    *[(f"2-{x}", f"2.0.0.{x}") for x in ("abc", "alpha", "a", "beta", "b", "def", "milestone", "m", "RC")],
]
MVN_LESS = [
    ("1", "2"), ("1.5", "2"), ("1", "2.5"), ("1.0", "1.1"), ("1.1", "1.2"), ("1.0.0", "1.1"), ("1.0.1", "1.1"),
    ("1.1", "1.2.0"), ("1.0-alpha-1", "1.0"), ("1.0-alpha-1", "1.0-alpha-2"), ("1.0-alpha-1", "1.0-beta-1"),
    ("1.0-beta-1", "1.0-SNAPSHOT"), ("1.0-SNAPSHOT", "1.0"), ("1.0-alpha-1-SNAPSHOT", "1.0-alpha-1"),
    ("1.0", "1.0-1"), ("1.0-1", "1.0-2"), ("1.0.0", "1.0-1"), ("2.0-1", "2.0.1"), ("2.0.1-klm", "2.0.1-lmn"),
    ("2.0.1", "2.0.1-xyz"), ("2.0.1", "2.0.1-123"), ("2.0.1-xyz", "2.0.1-123"),
    ("6.1.0rc3", "6.1.0"), ("6.1.0rc3", "6.1H.5-beta"), ("6.1.0", "6.1H.5-beta"),  # MNG-5568
    ("20190126.230843", "1234567890.12345"), ("1234567890.12345", "123456789012345.1H.5-beta"),  # MNG-6572
    ("123456789012345.1H.5-beta", "12345678901234567890.1H.5-beta"),
    ("1-0.alpha", "1"), ("1-0.beta", "1"), ("1-0.alpha", "1-0.beta"),  # MNG-6964
    *[(f"1.0.0.{x}1", f"1.0.0-{x}2") for x in ("abc", "alpha", "a", "beta", "b", "def", "milestone", "m", "RC")],
]


def test_maven_order_follows_comparable_version_test_vectors():
    for chain in MVN_ORDERED:
        for i, low in enumerate(chain):
            for high in chain[i + 1:]:
                assert maven_compare(low, high) == -1 and maven_compare(high, low) == 1, (low, high)
    for a, b in MVN_EQUAL:
        assert maven_compare(a, b) == 0 == maven_compare(b, a), (a, b)
    for a, b in MVN_LESS:
        assert maven_compare(a, b) == -1 and maven_compare(b, a) == 1, (a, b)


def test_maven_release_qualifier_is_the_release():
    r = {"type": "ECOSYSTEM", "events": [{"kind": "introduced", "version": "0"},
                                         {"kind": "fixed", "version": "5.2.20.RELEASE"}]}
    assert not affected("Maven", "5.2.20", [r])
    assert affected("Maven", "5.2.19.RELEASE", [r])
    assert affected("Maven", "5.2.20", [], ["5.2.20.RELEASE"])  # listed versions: equal in Maven order


# -- 7. ecosystems with a release suffix ----------------------------------------------------------

@pytest.mark.parametrize("eco, purl, want", [
    ("Debian:12", "pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-12", (True, None)),
    ("Debian:12", "pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-12.5", (True, None)),
    ("Debian:12", "pkg:deb/debian/vim@2:9.0.1378-2?distro=bookworm", (True, None)),
    ("Debian:12", "pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-11", (False, None)),
    ("Debian:12", "pkg:deb/debian/vim@2:9.0.1378-2", (False, "no distro qualifier to match Debian:12 records")),
    ("Debian:12", "pkg:deb/debian/vim@1?distro=plan9", (False, "unrecognized distro 'plan9' for Debian:12 records")),
    ("Ubuntu:22.04:LTS", "pkg:deb/ubuntu/vim@2:8.2?distro=ubuntu-22.04", (True, None)),
    ("Ubuntu:Pro:18.04:LTS", "pkg:deb/ubuntu/vim@2:8.0?distro=bionic", (True, None)),
    ("Ubuntu:22.04:LTS", "pkg:deb/ubuntu/vim@2:8.2?distro=ubuntu-20.04", (False, None)),
    ("Alpine:v3.18", "pkg:apk/alpine/musl@1.2.4-r2?distro=3.18.4", (True, None)),
    ("Alpine:v3.18", "pkg:apk/alpine/musl@1.2.4-r2?distro=alpine-3.19.1", (False, None)),
    ("Maven:https://repo.example.org/", "pkg:maven/org.x/y@1?repository_url=https://repo.example.org", (True, None)),
    ("Maven:https://repo.example.org", "pkg:maven/org.x/y@1", (False, None)),
    ("Maven:https://repo.maven.apache.org/maven2", "pkg:maven/org.x/y@1", (True, None)),
])
def test_release_suffix_matches_the_components_distro_or_repository(eco, purl, want):
    assert release_applies(eco, component(purl)) == want


SUFFIX_EXPORTFILE = """[package]
source_date_epoch = 1735689600

[targets.osv]
rule = "osv_source"
srcs = ["osv/*.json"]
source = { name = "Suffix Feed" }

[targets.sbom]
rule = "sbom_source"
srcs = ["app.cdx.json"]
source = { name = "Suffix SBOMs" }

[targets.policy]
rule = "json_policy"
deps = [":osv", ":sbom"]
policy = { name = "p" }
"""


def _sbom(purls: list[str]) -> str:
    return json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5",
                       "metadata": {"component": {"type": "application", "name": "app", "version": "1",
                                                  "purl": "pkg:generic/app@1"}},
                       "components": [{"type": "library", "name": p.split("/")[-1].split("@")[0], "purl": p}
                                      for p in purls]})


def test_json_policy_matches_release_suffixed_records_and_lists_what_it_cannot(tmp_path):
    import zstandard

    ws = make_workspace(tmp_path / "ws", packages=())
    pkg = ws / "sfx"
    (pkg / "osv").mkdir(parents=True)
    (pkg / "Exportfile").write_text(SUFFIX_EXPORTFILE)
    for vid, eco in (("DEB-1", "Debian:12"), ("UBU-1", "Ubuntu:22.04:LTS"), ("MVN-1", "Maven:https://repo.example.org/")):
        name = "org.x:y" if eco.startswith("Maven") else "vim"
        (pkg / "osv" / f"{vid}.json").write_text(json.dumps(
            osv(vid, eco, name, [{"introduced": "0"}, {"fixed": "2:9.0.1378-3" if "Deb" in eco else "2:8.2.3995-1ubuntu2.1"
                                                         if "Ubu" in eco else "2.0"}])))
    (pkg / "app.cdx.json").write_text(_sbom([
        "pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-12",       # DEB-1
        "pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-11",       # other release: no finding
        "pkg:deb/debian/vim@2:9.0.1378-2",                        # cannot tell: not evaluated
        "pkg:deb/ubuntu/vim@2:8.2.3995-1ubuntu2?distro=ubuntu-22.04",  # UBU-1
        "pkg:maven/org.x/y@1.0?repository_url=https://repo.example.org/",  # MVN-1
        "pkg:maven/org.x/y@1.0",                                  # Maven Central: not that repository
    ]))
    run_cli(["-q", "build", "//sfx:policy"], cwd=ws, cache=tmp_path / "c", check=True)
    out = ws / "stella-out/sfx/policy"
    findings = [json.loads(line) for line in zstandard.ZstdDecompressor().decompressobj().decompress(
        (out / "data/policy/evaluations.jsonl.zst").read_bytes()).splitlines()]
    assert sorted((f["advisory_id"], f["purl"]) for f in findings) == [
        ("DEB-1", "pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-12"),
        ("MVN-1", "pkg:maven/org.x/y@1.0?repository_url=https://repo.example.org/"),
        ("UBU-1", "pkg:deb/ubuntu/vim@2:8.2.3995-1ubuntu2?distro=ubuntu-22.04"),
    ]
    index = json.loads((out / "indexes/findings.index.json").read_bytes())
    assert index["componentsNotEvaluated"] == [
        ["pkg:deb/debian/vim@2:9.0.1378-2", "sfx/app.cdx.json", "no distro qualifier to match Debian:12 records"],
        ["pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-11", "sfx/app.cdx.json", "no Debian 11 advisories in the inputs"]]


# -- 8. Alpine: one id fixed in several versions of one branch ------------------------------------

def test_alpine_backported_fix_does_not_hide_the_branch_line():
    (adv,) = normalize_secdb(SEMANTICS_SECDB.encode(), "t/v3.18/main.yaml", SRC)
    assert adv.fixed_versions == ("2.3.9-r8", "2.4.1-r3")
    comps = [component("pkg:apk/alpine/apkpkg@2.4.1-r2?distro=3.18.4"),
             component("pkg:apk/alpine/apkpkg@2.4.1-r3?distro=3.18.4")]
    matches, errors, skipped = match_components(adv.to_canonical(), comps)
    assert [(m["installed_version"], m["fixed_version"]) for m in matches] == [("2.4.1-r2", "2.4.1-r3")]
    assert errors == skipped == []
    (entry,) = advisory_entries(adv, "alpine 3.18")
    assert merge_advisories([entry[3]]) == b'{"FixedVersion":"2.4.1-r3"}'
    # two records of one key (two secdb files of a branch) merge to the highest fix as well
    assert merge_advisories([{"kind": "os", "fixed": "2.3.9-r8"}, {"kind": "os", "fixed": "2.4.1-r3"}]) == \
        b'{"FixedVersion":"2.4.1-r3"}'


# -- the shared probes, through json:policy's matching -------------------------------------------

def semantics_advisories() -> list:
    """Every shared test record as normalized ``Advisory`` models."""
    out = []
    for key, doc in SEMANTICS_RECORDS.items():
        out += normalize_osv(doc, f"osv/{key}.json", SRC)
    out += normalize_rustsec(SEMANTICS_RUSTSEC.encode(), "rustsec/RUSTSEC-2099-0001.md", SRC)
    out += normalize_secdb(SEMANTICS_SECDB.encode(), "alpine/v3.18/main.yaml", SRC)
    return out


def test_shared_probes_through_json_policy_matching():
    advs = [a.to_canonical() for a in semantics_advisories()]
    for purl, want in SEMANTICS_COMPONENTS:
        comp = component(purl)
        hits = [a["id"] for a in advs if advisory_key(a) == component_key(comp)
                and match_components(a, [comp])[0]]
        assert bool(hits) is want, (purl, hits)
