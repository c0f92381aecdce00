"""Version ordering per ecosystem and OSV range evaluation (property and known-order tests)."""
from __future__ import annotations

import functools

import pytest
import semver
from hypothesis import given, settings
from hypothesis import strategies as st

from stella_build.rules.evidence.versions import (
    VersionError,
    affected,
    apk_compare,
    apk_version_valid,
    compare,
    rustsec_requirement_matches,
)

# ----------------------------------------------------------------------------- Alpine (apk)

# Orderings taken as facts from apk-tools' version test data and Alpine's package policy.
APK_KNOWN = [
    ("2.34", ">", "0.1.0_alpha"),
    ("0.1.0_alpha", "<", "0.1.3_alpha"),
    ("0.1.0_alpha2", ">", "0.1.0_alpha"),
    ("1.0.4-r3", "<", "1.0.4-r4"),
    ("1.1", ">", "1.1_alpha1"),
    ("1.2.1", ">", "1.2"),
    ("1.3_alpha2", "<", "1.3_alpha3"),
    ("0.7.0", "<", "0.8_beta1"),
    ("2.3.0b-r1", "<", "2.3.0b-r2"),
    ("0.12.3", ">", "0.12"),
    ("1.2.12.1", "<", "1.2.13"),
    ("3.1_p16", "<", "3.1_p17"),
    ("1.06-r6", "<", "006"),
    ("1.2.2-r1", ">", "1.2.2"),
    ("2.59", "<", "20050718-r1"),
    ("3.9.8-r5", ">", "2.01.01_alpha10"),
    ("1.0", ">", "0.99.3.20040818"),
    ("1.00_beta2", ">", "0.9.2"),
    ("4.2.52_p2-r1", "<", "4.2.52_p4-r2"),
    ("2.5.1-r8", "<", "2.5.1a-r1"),
    ("20060720", ">", "3.0.20060720"),
    ("1.1a", "<", "1.3a"),
    ("0.15.1b-r2", ">", "0.15.1b"),
    ("22.7-r1", "<", "22.7.3-r1"),
    ("2.1_pre20", "<", "2.1_pre26"),
    ("1.2.07.8", "<", "1.2.12.04"),
    ("0.20070118", "<", "0.20070207_rc1"),
    ("4.5_p1-r1", ">", "4.5_p1"),
    ("0.9.8c-r1", "<", "0.9.8d"),
    ("2.2.3-r2", "<", "013"),
    ("0.3.1_rc8", "<", "22.2"),
    ("1.7", "<", "1.7b"),
    ("1.8.5", "<", "1.8.5_p2"),
    ("2.9.11_pre20051101-r3", ">", "2.9.11_pre20051101"),
    ("1.6.8_p12-r1", ">", "1.6.8_p9-r2"),
    ("0.9.28.1", "<", "087-r1"),
    ("2.12r-r4", "<", "2.12r-r5"),
    ("7.0.17", "<", "7.0.174"),
    ("1.3-r0", "<", "1.3.1-r0"),
    ("1.3_pre1-r1", "<", "1.3.2"),
    ("1.0_p10-r0", ">", "1.0_p9-r0"),
    ("0.1.0_alpha_pre2", "<", "0.1.0_alpha"),
    ("1.0.0_pre20191002222144-r0", "<", "1.0.0_pre20210530193627-r0"),
    ("1.0", "<", "1.0bc"),
    ("23_foo", ">", "4_beta"),
    ("1.0_rc1", "<", "1.0"),
    ("1.0", "<", "1.0_git20200101"),
    ("1.0_git20200101", "<", "1.0_p1"),
    ("1.0_cvs1", "<", "1.0_svn1"),
    ("1.0_hg1", "<", "1.0_p1"),
    ("1.0_alpha1", "<", "1.0_beta1"),
    ("1.0_beta1", "<", "1.0_pre1"),
    ("1.0_pre1", "<", "1.0_rc1"),
    ("1.2.3-r0", "=", "1.2.3-r0"),
]


@pytest.mark.parametrize("a, op, b", APK_KNOWN)
def test_apk_known_orderings(a, op, b):
    expected = {"<": -1, "=": 0, ">": 1}[op]
    assert apk_compare(a, b) == expected
    assert apk_compare(b, a) == -expected
    if apk_version_valid(a) and apk_version_valid(b):
        assert compare("Alpine:v3.18", a, b) == expected
    else:  # apk-tools' fuzzy comparisons of invalid versions: evaluation refuses them
        with pytest.raises(VersionError, match="invalid apk version"):
            compare("Alpine:v3.18", a, b)


def test_apk_validity():
    for v in ("1.2.3", "1.2.3-r4", "1.2a", "1.2.3_p1", "1.2.3_rc1-r0", "1.0_git20200101-r2", "1.0~abc1-r1"):
        assert apk_version_valid(v), v
    for v in ("", "a1", "1.2.3-4", "1.2.3_foo", "10.2.22.r0", "1.2-r", "1.2.3~"):
        assert not apk_version_valid(v), v


_num = st.integers(min_value=0, max_value=30).map(str)
_apk_version = st.builds(
    lambda parts, letter, suffixes, rev: ".".join(parts) + letter + "".join(suffixes) + rev,
    st.lists(_num, min_size=1, max_size=4),
    st.sampled_from(["", "", "a", "b", "z"]),
    st.lists(st.builds(lambda s, n: f"_{s}{n}", st.sampled_from(["alpha", "beta", "pre", "rc", "git", "p", "svn"]),
                       st.sampled_from(["", "1", "2", "10"])), max_size=2),
    st.sampled_from(["", "-r0", "-r1", "-r12"]),
)


@settings(max_examples=300, deadline=None)
@given(_apk_version, _apk_version, _apk_version)
def test_apk_total_order(a, b, c):
    assert apk_version_valid(a)
    assert apk_compare(a, a) == 0
    assert apk_compare(a, b) == -apk_compare(b, a)
    if apk_compare(a, b) <= 0 and apk_compare(b, c) <= 0:
        assert apk_compare(a, c) <= 0


@settings(max_examples=200, deadline=None)
@given(st.lists(_apk_version, min_size=2, max_size=8))
def test_apk_sort_is_stable_under_permutation(versions):
    key = functools.cmp_to_key(apk_compare)
    once = sorted(versions, key=key)
    assert sorted(reversed(versions), key=key) == once or all(
        apk_compare(x, y) == 0 for x, y in zip(once, sorted(reversed(versions), key=key))
    )


@settings(max_examples=200, deadline=None)
@given(_apk_version, st.integers(0, 20))
def test_apk_revision_and_prerelease_rules(v, n):
    base = v.split("-r")[0]
    assert apk_compare(f"{base}-r{n}", f"{base}-r{n + 1}") == -1
    if "_" not in base:
        assert apk_compare(f"{base}_rc{n}", base) == -1
        assert apk_compare(f"{base}_p{n}", base) == 1


# ----------------------------------------------------------------------------- other ecosystems

@pytest.mark.parametrize("eco, ordered", [
    ("PyPI", ["1.0.dev0", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1", "1.1", "2!0.1"]),
    ("PyPI", ["0.7.10p1", "0.1.0"]),  # legacy (non-PEP 440) versions sort before PEP 440 ones
    ("Go", ["0.0.0-20200101000000-abcdef123456", "0.0.1", "1.19.0-0", "1.19.0-rc.1", "1.19.0", "1.19.1"]),
    ("npm", ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"]),  # the SemVer 2.0 spec's own example
    ("crates.io", ["0.9.9", "1.0.0-rc.1", "1.0.0", "1.0.1"]),
    ("Maven", ["1-alpha", "1-beta", "1-milestone", "1-rc", "1-snapshot", "1", "1-sp", "1.1"]),
    ("Debian", ["1.0~rc1", "1.0", "1.0-1", "1.0+b1", "1:0.9"]),
])
def test_known_orderings(eco, ordered):
    for lo, hi in zip(ordered, ordered[1:]):
        assert compare(eco, lo, hi) == -1, (lo, hi)
        assert compare(eco, hi, lo) == 1, (hi, lo)


@pytest.mark.parametrize("eco, a, b", [
    ("Maven", "1", "1.0.0"), ("Maven", "1-rc", "1-cr"), ("Maven", "1-ga", "1-final"),
    ("Go", "v1.2.3", "1.2.3"), ("Go", "1.2", "1.2.0"), ("PyPI", "1.0", "1.0.0"), ("Debian", "0:1.0", "1.0"),
])
def test_known_equalities(eco, a, b):
    assert compare(eco, a, b) == 0


def test_invalid_versions_raise():
    with pytest.raises(VersionError):
        compare("Go", "not-a-version", "1.0.0")
    with pytest.raises(VersionError):
        compare("Nope", "1", "2")


_semver_st = st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))


@settings(max_examples=300, deadline=None)
@given(st.lists(_semver_st, min_size=3, max_size=3, unique=True), st.sampled_from(["Go", "npm", "crates.io", "PyPI"]))
def test_semver_order_properties(vs, eco):
    a, b, c = vs
    assert compare(eco, a, b) == -compare(eco, b, a) != 0
    if compare(eco, a, b) < 0 and compare(eco, b, c) < 0:
        assert compare(eco, a, c) < 0


# ----------------------------------------------------------------------------- OSV ranges

def _r(*events, rtype="SEMVER"):
    return {"type": rtype, "events": [{k: v} for k, v in events]}


@settings(max_examples=300, deadline=None)
@given(st.lists(_semver_st, min_size=3, max_size=3, unique=True), st.sampled_from(["Go", "npm", "PyPI"]))
def test_introduced_fixed_is_half_open(vs, eco):
    lo, hi, v = vs[0], vs[1], vs[2]
    if compare(eco, lo, hi) > 0:
        lo, hi = hi, lo
    expected = compare(eco, lo, v) <= 0 < compare(eco, hi, v)
    assert affected(eco, v, [_r(("introduced", lo), ("fixed", hi))]) == expected
    # last_affected includes its boundary; limit caps the range from above.
    assert affected(eco, v, [_r(("introduced", lo), ("last_affected", hi))]) == (
        compare(eco, lo, v) <= 0 <= compare(eco, hi, v))
    assert affected(eco, v, [_r(("introduced", lo), ("limit", hi))]) == expected
    # events in any order evaluate the same
    assert affected(eco, v, [_r(("fixed", hi), ("introduced", lo))]) == expected


def test_osv_boundaries_and_multiple_ranges():
    r = _r(("introduced", "0"), ("fixed", "1.18.6"), ("introduced", "1.19.0-0"), ("fixed", "1.19.1"))
    cases = {"0.0.1": True, "1.18.5": True, "1.18.6": False, "1.18.99": False, "1.19.0-0": True,
             "1.19.0-rc.1": True, "1.19.0": True, "1.19.1": False, "2.0.0": False}
    for v, want in cases.items():
        assert affected("Go", v, [r]) == want, v
    # multiple ranges are OR'ed; the explicit versions list matches exactly
    ranges = [_r(("introduced", "1.0"), ("fixed", "1.1"), rtype="ECOSYSTEM"),
              _r(("introduced", "2.0"), ("last_affected", "2.2"), rtype="ECOSYSTEM")]
    assert affected("PyPI", "1.0.5", ranges) and affected("PyPI", "2.2", ranges)
    assert not affected("PyPI", "1.1", ranges) and not affected("PyPI", "2.2.1", ranges)
    assert affected("PyPI", "0.5", ranges, versions=["0.5"])
    # introduced "0" with nothing else: everything is affected
    assert affected("PyPI", "0.0.1", [_r(("introduced", "0"), rtype="ECOSYSTEM")])
    # GIT ranges are not evaluated
    assert not affected("Go", "1.0.0", [{"type": "GIT", "repo": "r", "events": [{"introduced": "0"}]}])


def test_alpine_range_evaluation():
    r = _r(("introduced", "0"), ("fixed", "1.2.3-r2"), rtype="ECOSYSTEM")
    assert affected("Alpine:v3.18", "1.2.3-r1", [r])
    assert affected("Alpine:v3.18", "1.2.3_rc1-r5", [r])
    assert not affected("Alpine:v3.18", "1.2.3-r2", [r])
    assert not affected("Alpine:v3.18", "1.2.3a-r0", [r])


# ----------------------------------------------------------------------------- Cargo requirements

@pytest.mark.parametrize("req, yes, no", [
    (">= 1.2.3", ["1.2.3", "2.0.0"], ["1.2.2", "1.3.0-alpha"]),
    (">= 1.2.3, < 1.4", ["1.3.9"], ["1.4.0", "1.2.0"]),
    ("^1.2", ["1.2.0", "1.9.9"], ["2.0.0", "1.1.9"]),
    ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
    ("^0.0.3", ["0.0.3"], ["0.0.4"]),
    ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
    ("< 2", ["1.99.0"], ["2.0.0", "2.0.0-alpha"]),
    ("<= 1.2", ["1.2.9"], ["1.3.0"]),
    ("> 1.2.3", ["1.2.4"], ["1.2.3"]),
    ("=1.2.3", ["1.2.3"], ["1.2.4"]),
    ("1.2.*", ["1.2.5"], ["1.3.0"]),
    ("*", ["0.0.1", "9.0.0"], []),
    (">= 1.0.0-alpha.1", ["1.0.0-alpha.2", "1.0.0"], ["1.0.0-alpha.0", "1.1.0-alpha.1"]),
])
def test_rustsec_requirements(req, yes, no):
    for v in yes:
        assert rustsec_requirement_matches(v, req), (v, req)
    for v in no:
        assert not rustsec_requirement_matches(v, req), (v, req)


@settings(max_examples=300, deadline=None)
@given(_semver_st, _semver_st, st.sampled_from([">=", "<", ">", "<=", "="]))
def test_rustsec_comparators_agree_with_semver(v, bound, op):
    want = {">=": lambda c: c >= 0, "<": lambda c: c < 0, ">": lambda c: c > 0,
            "<=": lambda c: c <= 0, "=": lambda c: c == 0}[op](semver.Version.parse(v).compare(bound))
    assert rustsec_requirement_matches(v, f"{op} {bound}") == want
