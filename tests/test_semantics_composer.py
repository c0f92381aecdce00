"""Packagist ordering, SwiftURL names, invalid apk versions and listed ``versions``: the classes the
differential test (tests/interop/test_differential.py) found, with the right values.

Composer's ordering is hand-written (rules/evidence/versions_composer.py: no PyPI package
implements it; ``univers``' ComposerVersion is plain SemVer), so composer/semver's own test
vectors are held here as data: ``tests/VersionParserTest.php`` (successfulNormalizedVersions,
failingNormalizedVersions) and ``tests/ComparatorTest.php`` (the version pairs; branch pairs
are ordered as Composer's Comparator does: a branch below every version).
"""
from __future__ import annotations

import json

import pytest

from stella_build.rules.evidence.model import SourceInfo
from stella_build.rules.evidence.policy import advisory_key, component_key, match_components
from stella_build.rules.evidence.sources.alpine import normalize_secdb
from stella_build.rules.evidence.sources.osv import normalize_osv
from stella_build.rules.evidence.versions import (
    VersionError, affected, apk_version_valid, composer_compare, compare, version_equal,
)
from stella_build.rules.evidence.versions_composer import ComposerVersionError, normalize, php_version_compare
from stella_build.rules.formats.trivy.schema import NotMappable, advisory_entries, merge_advisories, record_entries

SRC = SourceInfo(name="Semantics Test Feed")

# composer/semver tests/VersionParserTest.php successfulNormalizedVersions: (input, normalized)
NORMALIZED = [
    ("1.0.0", "1.0.0.0"), ("1.2.3.4", "1.2.3.4"), ("1.0.0RC1dev", "1.0.0.0-RC1-dev"),
    ("1.0.0-rC15-dev", "1.0.0.0-RC15-dev"), ("1.0.0.RC.15-dev", "1.0.0.0-RC15-dev"), ("1.0.0-rc1", "1.0.0.0-RC1"),
    ("1.0.0.pl3-dev", "1.0.0.0-patch3-dev"), ("1.0-dev", "1.0.0.0-dev"), ("0", "0.0.0.0"),
    ("99999", "99999.0.0.0"), ("10.4.13-beta", "10.4.13.0-beta"), ("10.4.13beta2", "10.4.13.0-beta2"),
    ("10.4.13beta.2", "10.4.13.0-beta2"), ("v1.13.11-beta.0", "1.13.11.0-beta0"),
    ("1.13.11.0-beta0", "1.13.11.0-beta0"), ("10.4.13-b", "10.4.13.0-beta"), ("10.4.13-b5", "10.4.13.0-beta5"),
    ("v1.0.0", "1.0.0.0"), ("2010.01", "2010.01.0.0"), ("2010.01.02", "2010.01.02.0"),
    ("2010.1.555", "2010.1.555.0"), ("2010.10.200", "2010.10.200.0"), ("20230131.0.0", "20230131.0.0"),
    ("202301310000.0.0", "202301310000.0.0"), ("v20100102", "20100102"), ("20100102", "20100102"),
    ("20100102.0", "20100102.0"), ("20100102.1.0", "20100102.1.0"), ("20100102.0.3", "20100102.0.3"),
    ("100000", "100000"), ("2010-01-02-10-20-30.0.3", "2010.01.02.10.20.30.0.3"),
    ("2010-01-02-10-20-30.5", "2010.01.02.10.20.30.5"), ("2010-01-02", "2010.01.02"),
    ("2012.06.07", "2012.06.07.0"), ("2010-01-02.5", "2010.01.02.5"), ("20100102-203040", "20100102.203040"),
    ("20100102.x-dev", "20100102.9999999.9999999.9999999-dev"),
    ("20100102.203040.x-dev", "20100102.203040.9999999.9999999-dev"), ("20100102203040-10", "20100102203040.10"),
    ("20100102-203040-p1", "20100102.203040-patch1"), ("201903.0", "201903.0"),
    ("201903.x-dev", "201903.9999999.9999999.9999999-dev"), ("201903.0-p2", "201903.0-patch2"),
    ("dev-master", "dev-master"), ("master", "dev-master"), ("dev-trunk", "dev-trunk"),
    ("1.x-dev", "1.9999999.9999999.9999999-dev"), ("dev-feature-foo", "dev-feature-foo"),
    ("DEV-FOOBAR", "dev-FOOBAR"), ("dev-feature/foo", "dev-feature/foo"), ("dev-feature+issue-1", "dev-feature+issue-1"),
    ("dev-master as 1.0.0", "dev-master"), ("dev-load-varnish-only-when-used as ^2.0", "dev-load-varnish-only-when-used"),
    ("dev-load-varnish-only-when-used@dev as ^2.0@dev", "dev-load-varnish-only-when-used"),
    ("1.0.0+foo@dev", "1.0.0.0"), ("dev-load-varnish-only-when-used@stable", "dev-load-varnish-only-when-used"),
    ("1.0.0-beta.5+foo", "1.0.0.0-beta5"), ("1.0.0+foo", "1.0.0.0"), ("1.0.0-alpha.3.1+foo", "1.0.0.0-alpha3.1"),
    ("1.0.0-alpha2.1+foo", "1.0.0.0-alpha2.1"), ("1.0.0-alpha-2.1-3+foo", "1.0.0.0-alpha2.1-3"),
    ("1.0.0+foo as 2.0", "1.0.0.0"), ("00.01.03.04", "00.01.03.04"), ("000.001.003.004", "000.001.003.004"),
    ("0.000.103.204", "0.000.103.204"), ("0700", "0700.0.0.0"), ("041.x-dev", "041.9999999.9999999.9999999-dev"),
    ("dev-041.003", "dev-041.003"), ("dev-1.0.0-dev<1.0.5-dev", "dev-1.0.0-dev<1.0.5-dev"),
    ("dev-foo bar", "dev-foo bar"), (" 1.0.0", "1.0.0.0"), ("1.0.0 ", "1.0.0.0"),
]
# failingNormalizedVersions
NOT_NORMALIZED = [
    "", "a", "1.0.0-meh", "1.0.0.0.0", "feature-foo", "1.0.0+foo bar", "1.0.1-SNAPSHOT", "1.0.0<1.0.5-dev",
    "1.0.0-dev<1.0.5-dev", "foo bar-dev", "1.0 .2", " as ", " as 1.2", "^", "^8 || ^", "~", "~1 ~", "~1", "^1",
    "1.*", "20100102.0.3.4", "100000.0.0.0", "2023013.0.0", "202301311.0.0", "20230131000.0.0", "2023013100000.0.0",
]
# tests/ComparatorTest.php: (a, op, b, expected)
COMPARATOR = [
    ("1.25.0", ">", "1.24.0", True), ("1.25.0", ">", "1.25.0", False), ("1.25.0", ">", "1.26.0", False),
    ("1.26.0", ">", "dev-foo", True), ("1.25.0", ">=", "1.24.0", True), ("1.25.0", ">=", "1.25.0", True),
    ("1.25.0", ">=", "1.26.0", False), ("1.25.0", "<", "1.24.0", False), ("1.25.0", "<", "1.25.0", False),
    ("1.25.0", "<", "1.26.0", True), ("1.0.0", "<", "1.2-dev", True), ("dev-foo", "<", "1.26.0", True),
    ("1.25.0", "<=", "1.24.0", False), ("1.25.0", "<=", "1.25.0", True), ("1.25.0", "<=", "1.26.0", True),
    ("1.25.0", "==", "1.24.0", False), ("1.25.0", "==", "1.25.0", True), ("1.25.0", "==", "1.26.0", False),
    ("dev-foo", "==", "1.26.0", False), ("1.25.0", "!=", "1.24.0", True), ("1.25.0", "!=", "1.25.0", False),
    ("1.25.0", "!=", "1.26.0", True), ("1.25.0-beta2.1", "<", "1.25.0-b.3", True),
    ("1.25.0-b2.1", "<", "1.25.0beta.3", True), ("1.25.0-b-2.1", "<", "1.25.0-rc", True),
    ("1.25.0-beta2.1", "==", "1.25.0-b.2.1", True), ("1.25.0beta2.1", "==", "1.25.0-b2.1", True),
]
_OPS = {">": lambda r: r > 0, ">=": lambda r: r >= 0, "<": lambda r: r < 0, "<=": lambda r: r <= 0,
        "==": lambda r: r == 0, "!=": lambda r: r != 0}


@pytest.mark.parametrize("raw, want", NORMALIZED)
def test_composer_normalizes_like_version_parser(raw: str, want: str) -> None:
    assert normalize(raw) == want


@pytest.mark.parametrize("raw", NOT_NORMALIZED)
def test_composer_rejects_what_version_parser_rejects(raw: str) -> None:
    with pytest.raises(ComposerVersionError):
        normalize(raw)
    with pytest.raises(VersionError):
        compare("Packagist", raw, "1.0.0")


@pytest.mark.parametrize("a, op, b, want", COMPARATOR)
def test_composer_orders_like_comparator(a: str, op: str, b: str, want: bool) -> None:
    assert _OPS[op](composer_compare(a, b)) is want
    assert _OPS[op](-composer_compare(b, a)) is want


def test_composer_branches_have_no_order_between_them() -> None:
    # ComparatorTest: dev-foo is neither above, below nor equal to dev-master
    assert composer_compare("dev-foo", "dev-foo") == 0
    with pytest.raises(VersionError, match="no order"):
        composer_compare("dev-foo", "dev-master")


@pytest.mark.parametrize("lower, higher", [
    # stabilities: dev < alpha < beta < RC < stable < patch; then more numbers
    ("1.0.0-dev", "1.0.0-alpha1"), ("1.0.0-alpha1", "1.0.0-beta1"), ("1.0.0-beta1", "1.0.0-RC1"),
    ("1.0.0-RC1", "1.0.0"), ("1.0.0", "1.0.0-patch1"), ("1.0.0-patch1", "1.0.0.1"), ("1.0.0pl2", "1.0.0-p3"),
    ("1.0.0-beta1-dev", "1.0.0-beta1"), ("1.0.0-beta1", "1.0.0-beta1.1"), ("1.0.0-beta9", "1.0.0-beta10"),
    ("1.0.0-b", "1.0.0-beta0"), ("1.9.9.9", "2"), ("7.4.4", "v7.4.5"), ("7.4.5", "7.4.5.1"),
])
def test_composer_order_of_stabilities_and_parts(lower: str, higher: str) -> None:
    assert composer_compare(lower, higher) == -1
    assert composer_compare(higher, lower) == 1


@pytest.mark.parametrize("a, b", [("1.0", "1.0.0"), ("v1.0.0", "1.0.0.0"), ("1.0.0-rc1", "1.0.0RC1"),
                                  ("1.0.0-pl1", "1.0.0-patch1"), ("1.0.0+build", "1.0.0")])
def test_composer_equal_spellings(a: str, b: str) -> None:
    assert composer_compare(a, b) == 0
    assert version_equal("Packagist", a, b)


@pytest.mark.parametrize("a, b, want", [
    # PHP's own version_compare (ext/standard/versioning.c), used on normalized versions
    ("1.0", "1.0.0", -1), ("1.0rc1", "1.0", -1), ("1.0", "1.0pl1", -1), ("1.0-dev", "1.0-alpha", -1),
    ("1.0.0.0-beta2", "1.0.0.0-beta2.1", -1), ("1.0#1", "1.0", 1), ("", "", 0), ("", "1", -1),
])
def test_php_version_compare(a: str, b: str, want: int) -> None:
    assert php_version_compare(a, b) == want


def _osv(vid: str, eco: str, name: str, events: list[dict], versions: list[str] | None = None) -> dict:
    aff = {"package": {"ecosystem": eco, "name": name}, "ranges": [{"type": "ECOSYSTEM", "events": events}]}
    if versions is not None:
        aff["versions"] = versions
    return {"id": vid, "modified": "2025-01-01T00:00:00Z", "affected": [aff]}


def _component(purl: str) -> dict:
    from stella_build.rules.evidence.sources.sbom import parse_cyclonedx

    doc = {"bomFormat": "CycloneDX", "specVersion": "1.5",
           "components": [{"type": "library", "name": "x", "purl": purl}]}
    (comp,) = parse_cyclonedx(doc, "t/app.cdx.json")
    return comp.to_canonical()


def test_packagist_records_are_evaluated_and_mapped_in_composer_order() -> None:
    """GHSA-25mq-v84q-4j7r-shaped guzzle record: json:policy and the trivy:db mapping agree."""
    doc = _osv("STELLA-COMP-1", "Packagist", "guzzlehttp/guzzle",
               [{"introduced": "7.0.0"}, {"fixed": "7.4.5"}, {"introduced": "0"}, {"fixed": "6.5.8"}])
    (adv,) = normalize_osv(doc, "t/guzzle.json", SRC)
    canon = adv.to_canonical()
    for v, want in [("6.5.7", True), ("6.5.8", False), ("7.0.0-beta1", False), ("7.0.0", True), ("v7.0.1", True),
                    ("7.4.5-RC1", True), ("7.4.5", False), ("7.4.5-patch1", False), ("7.4.4.1", True)]:
        comps = [_component(f"pkg:composer/guzzlehttp/guzzle@{v}")]
        assert component_key(comps[0]) == advisory_key(canon)
        matches, errors, _ = match_components(canon, comps)
        assert errors == []
        assert bool(matches) is want, v
        assert affected("Packagist", v, canon["ranges"]) is want, v
    value = json.loads(merge_advisories([advisory_entries(adv, "composer::x")[0][3]]))
    assert value["VulnerableVersions"] == ["<6.5.8", ">=7.0.0, <7.4.5"]


def test_swift_purl_namespace_is_part_of_the_name() -> None:
    (adv,) = normalize_osv(_osv("STELLA-SWIFT-1", "SwiftURL", "github.com/apple/swift-nio",
                                [{"introduced": "0"}, {"fixed": "2.29.1"}]), "t/nio.json", SRC)
    canon = adv.to_canonical()
    comp = _component("pkg:swift/github.com/apple/swift-nio@1.0.0")
    assert component_key(comp) == advisory_key(canon) == ("SwiftURL", "github.com/apple/swift-nio")
    assert len(match_components(canon, [comp])[0]) == 1
    # case-sensitive like a Go module path; https:// and .git spell the same package
    assert component_key(_component("pkg:swift/github.com/Apple/swift-nio@1.0.0")) != advisory_key(canon)
    assert advisory_key({**canon, "package": {**canon["package"], "normalized": "https://github.com/apple/swift-nio.git"}}) \
        == advisory_key(canon)


SECDB_INVALID = """---
distroversion: v3.11
reponame: main
packages:
  - pkg:
      name: python2
      secfixes:
        2.7.16-33:
          - CVE-2019-16056
        2.7.16-r2:
          - CVE-2019-9999
"""


@pytest.mark.parametrize("version", ["2.7.16-33", "0.8.21.r2", "1.18.-r2"])
def test_apk_versions_apk_tools_rejects_are_invalid(version: str) -> None:
    assert not apk_version_valid(version)
    with pytest.raises(VersionError, match="invalid apk version"):
        compare("Alpine:v3.11", version, "1.0-r0")


def test_alpine_record_with_an_invalid_fixed_version_is_listed_invalid_and_left_out_of_trivy_db() -> None:
    from stella_build.rules.formats.trivy.schema import trivy_route
    from stella_build.rules.sources import _advisory_notes

    advs = {a.id: a for a in normalize_secdb(SECDB_INVALID.encode(), "t/v3.11/main.yaml", SRC)}
    notes = {k: [] for k in ("withdrawn", "invalid", "git_only", "no_ranges", "unfixed_marker")}
    for adv in advs.values():
        _advisory_notes(adv, notes)
    assert [n[0] for n in notes["invalid"]] == ["CVE-2019-16056"]
    assert "invalid apk version '2.7.16-33'" in notes["invalid"][0][4]
    kind, bucket, distro = trivy_route("Alpine:v3.11")
    with pytest.raises(NotMappable) as exc:
        record_entries(advs["CVE-2019-16056"], bucket, distro)
    assert exc.value.code == "unorderable-version"
    entries, _ = record_entries(advs["CVE-2019-9999"], bucket, distro)
    assert json.loads(merge_advisories([entries[0][3]])) == {"FixedVersion": "2.7.16-r2"}
    # an installed version apk-tools rejects is an evaluation error, never a silent "not affected"
    comp = _component("pkg:apk/alpine/python2@2.7.16-33?distro=3.11.2")
    matches, errors, _ = match_components(advs["CVE-2019-9999"].to_canonical(), [comp])
    assert matches == [] and len(errors) == 1 and "invalid apk version" in errors[0][2]


@pytest.mark.parametrize("eco, listed, probe, want", [
    # OSV IncludedInVersions compares strings: a listed "0.20" (GHSA-6g7w-8wpp-frhj, rustls) is not 0.20.0
    ("crates.io", "0.20", "0.20.0", False), ("crates.io", "0.20", "0.20", True),
    ("PyPI", "0.20", "0.20.0", False), ("PyPI", "1.0RC1", "1.0rc1", True),  # PEP 440 normal form
    ("Go", "1.2.3", "v1.2.3", True), ("Maven", "5.2.20.RELEASE", "5.2.20", True),  # Maven's canonical form
    ("Packagist", "2.0", "v2.0.0", True), ("npm", "1.0.0", "1.0.0+build", False),
])
def test_listed_versions_match_as_normalized_strings(eco: str, listed: str, probe: str, want: bool) -> None:
    assert version_equal(eco, probe, listed) is want
    assert affected(eco, probe, [], [listed]) is want


def test_listed_version_that_no_package_manager_writes_is_not_a_trivy_constraint() -> None:
    """crates.io "0.20" is no Cargo version (SemVer needs three parts): Trivy's comparer would read
    "=0.20" as 0.20.0, which the record does not list, so the mapping writes no constraint for it."""
    doc = {"id": "STELLA-LIST-1", "modified": "2025-01-01T00:00:00Z", "affected": [
        {"package": {"ecosystem": "crates.io", "name": "rustls"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0.21.0"}, {"fixed": "0.21.11"}]}]},
        {"package": {"ecosystem": "crates.io", "name": "rustls"}, "versions": ["0.20", "0.19.1"]}]}
    (adv,) = normalize_osv(doc, "t/rustls.json", SRC)
    value = json.loads(merge_advisories([advisory_entries(adv, "cargo::x")[0][3]]))
    assert value["VulnerableVersions"] == [">=0.21.0, <0.21.11", "=0.19.1"]
