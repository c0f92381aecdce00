"""Version ordering per ecosystem and OSV range evaluation.

Libraries do the ordering wherever a maintained one exists:
- PyPI: PEP 440 through ``packaging.version``.
- Go, npm, crates.io, Hex, Pub, SwiftURL: SemVer 2.0 through ``semver`` (Go's leading ``v``
  dropped; short forms such as ``1.2`` padded to ``1.2.0`` because some OSV data is written that
  way).
- RubyGems: ``univers.gem.GemVersion`` (a port of Gem::Version); NuGet: ``univers.nuget``.
- Debian and Ubuntu: ``debian.debian_support.Version`` (python-debian, Debian's own implementation).
- RPM distributions (AlmaLinux, Rocky Linux, openSUSE, SUSE, Red Hat): ``univers.rpm`` (a pure
  Python rpmvercmp with ``~`` and ``^``, from python-rpm-vercmp and antlir; it passes every vector
  of rpm's own tests/rpmvercmp.at, which tests/test_os_distros.py holds as data) over
  ``[epoch:]version[-release]``; the ``rpm`` Python bindings are not on PyPI.
- Packagist: composer/semver's normalization and PHP's version_compare, hand-written in
  ``versions_composer.py`` (``univers.versions.ComposerVersion`` is plain SemVer: it rejects
  ``1.2.3.4`` and orders ``1.0.0-RC1`` below ``1.0.0-beta1``); checked against composer/semver's
  own test vectors.
- Maven: hand-written below (``maven_compare``), because the one PyPI port (``univers.maven``)
  follows an old ComparableVersion and fails Maven 3.9's own test vectors (``1.0.RELEASE == 1.0``,
  MNG-6964, MNG-7644; tests/test_semantics.py holds them as data).
- Alpine: no maintained PyPI library orders apk versions as apk-tools does (univers reuses
  Gentoo's rules, which reject ``_git``/``_svn`` suffixes and ``~hash``), so ``apk_compare`` below
  follows apk-tools' tokenizer (src/version.c): digits, one letter, ``_suffix[N]`` (alpha < beta <
  pre < rc < (none) < cvs < svn < git < hg < p), ``~commit`` and ``-rN``. Wolfi and Chainguard
  packages are apk packages and use the same order. ``compare`` refuses a version apk-tools
  rejects (``apk_version_valid``: ``2.7.16-33``, ``0.8.21.r2``, ``1.18.-r2``), so a record naming
  one is listed invalid; ``apk_compare`` itself orders them too (sorting never fails).

``affected`` implements the OSV evaluation algorithm (https://ossf.github.io/osv-schema/,
"Evaluation"): events of a range are sorted by version, ``introduced`` switches on, ``fixed`` (at
or above) and ``last_affected`` (strictly above) switch off, ``introduced: "0"`` means "from the
beginning", events at one version keep the record's order (a stable sort, as the reference
implementations do); a range with ``limit`` events only holds versions below at least one limit,
and a limit containing ``*`` is infinity (no limit events = an implicit ``*``); ranges are OR'ed
together with the explicit ``versions`` list (the same string once the ecosystem normalizes its
spelling: ``version_equal``; ``0.20`` does not list 0.20.0). GIT ranges are never
evaluated here (they need a commit graph). ``vulnerable_intervals`` gives the same set as
half-open/closed intervals, which is what the Trivy mapping writes as constraints.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import semver
from packaging.version import InvalidVersion as _PepInvalid
from packaging.version import Version as _PepVersion

__all__ = [
    "VersionError",
    "canonical_ecosystem",
    "compare",
    "sort_key",
    "affected",
    "apk_compare",
    "rpm_compare",
    "apk_version_valid",
    "rustsec_requirement_matches",
    "cargo_requirement_bounds",
    "semver_successor",
    "maven_compare",
    "composer_compare",
    "version_equal",
    "Interval",
    "vulnerable_intervals",
    "range_limit",
    "alpine_fixed_version",
]


class VersionError(ValueError):
    """A version string that the ecosystem's rules cannot order."""


# --------------------------------------------------------------------------- ecosystems

_ECOSYSTEM_ALIASES = {
    "pypi": "PyPI", "pip": "PyPI", "python": "PyPI",
    "go": "Go", "golang": "Go",
    "crates.io": "crates.io", "cargo": "crates.io", "rust": "crates.io",
    "npm": "npm", "node": "npm",
    "maven": "Maven",
    "alpine": "Alpine", "apk": "Alpine",
    "debian": "Debian", "deb": "Debian",
    "ubuntu": "Ubuntu",
    "almalinux": "AlmaLinux", "alma": "AlmaLinux",
    "rocky linux": "Rocky Linux", "rocky": "Rocky Linux",
    "opensuse": "openSUSE", "suse": "SUSE", "red hat": "Red Hat",
    "wolfi": "Wolfi", "chainguard": "Chainguard",
    "rubygems": "RubyGems", "gem": "RubyGems",
    "nuget": "NuGet",
    "hex": "Hex",
    "pub": "Pub",
    "swifturl": "SwiftURL",
    "packagist": "Packagist", "composer": "Packagist",
}


def canonical_ecosystem(ecosystem: str) -> str:
    """OSV base spelling of an ecosystem ("Alpine:v3.18" -> "Alpine", "pip" -> "PyPI")."""
    base = ecosystem.split(":", 1)[0].strip()
    try:
        return _ECOSYSTEM_ALIASES[base.lower()]
    except KeyError:
        raise VersionError(f"unsupported ecosystem {ecosystem!r}") from None


# --------------------------------------------------------------------------- PEP 440

_LEGACY_PART = re.compile(r"(\d+|[a-z]+|\.|-)")
_LEGACY_REPL = {"pre": "c", "preview": "c", "-": "final-", "rc": "c", "dev": "@"}


def _legacy_key(v: str) -> tuple[str, ...]:
    """setuptools' old LegacyVersion ordering, for the few pre-PEP 440 versions in PyPI data."""
    parts: list[str] = []
    for part in _LEGACY_PART.split(v.lower()):
        part = _LEGACY_REPL.get(part, part)
        if not part or part == ".":
            continue
        if part[:1] in "0123456789":
            parts.append(part.zfill(8))
        else:
            if part.startswith("*") is False:
                part = "*" + part
            if part == "*final-":
                while parts and parts[-1] == "*final":
                    parts.pop()
            parts.append(part)
    parts.append("*final")
    return tuple(parts)


@functools.lru_cache(maxsize=65536)
def _pep440(v: str) -> tuple[int, Any]:
    """Sort key: PEP 440 versions, preceded (as pip once did) by any legacy non-PEP 440 ones."""
    try:
        return (1, _PepVersion(v))
    except _PepInvalid:
        if not v.strip():
            raise VersionError("empty PyPI version") from None
        return (0, _legacy_key(v))


# --------------------------------------------------------------------------- SemVer

_SHORT_SEMVER = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?((?:-|\+).*)?$")


@functools.lru_cache(maxsize=65536)
def _semver(v: str) -> semver.Version:
    text = v[1:] if v[:1] in ("v", "V") else v
    try:
        return semver.Version.parse(text)
    except ValueError:
        pass
    # Lenient forms seen in OSV data: "1.2", "1", "1.2-rc1" (no patch). Leading zeros are
    # accepted by int() too.
    m = _SHORT_SEMVER.match(text)
    if m:
        major, minor, patch, rest = m.groups()
        padded = f"{int(major)}.{int(minor or 0)}.{int(patch or 0)}{rest or ''}"
        try:
            return semver.Version.parse(padded)
        except ValueError:
            pass
    raise VersionError(f"invalid semantic version {v!r}")


def _semver_cmp(a: str, b: str) -> int:
    return _semver(a).compare(_semver(b))


def semver_successor(v: semver.Version) -> semver.Version:
    """The smallest SemVer version strictly greater than ``v`` (build metadata ignored)."""
    if v.prerelease:
        return v.replace(prerelease=f"{v.prerelease}.0", build=None)
    return semver.Version(v.major, v.minor, v.patch + 1, prerelease="0")


# --------------------------------------------------------------------------- Maven

# Maven's ComparableVersion (maven-artifact 3.9), written here because no maintained PyPI package
# follows it (see the module docstring). A version parses into nested lists of items: ints,
# qualifier strings and sub-lists (a "-" or a letter/digit switch opens a sub-list); trailing
# "null" items (0, the release qualifier, empty lists) are dropped. Qualifiers order
# alpha < beta < milestone < rc = cr < snapshot < "" = ga = final = release < sp < any other
# (those lexically); an int is above any qualifier or sub-list.
_MVN_QUALIFIERS = ("alpha", "beta", "milestone", "rc", "snapshot", "", "sp")
_MVN_ALIASES = {"ga": "", "final": "", "release": "", "cr": "rc"}
_MVN_SHORT = {"a": "alpha", "b": "beta", "m": "milestone"}  # only when a digit follows ("a1")
_MVN_RELEASE = str(_MVN_QUALIFIERS.index(""))


def _mvn_qualifier_key(q: str) -> str:
    # Maven compares these keys as strings: "0".."6" for known qualifiers, "7-<q>" after them.
    try:
        return str(_MVN_QUALIFIERS.index(q))
    except ValueError:
        return f"{len(_MVN_QUALIFIERS)}-{q}"


class _MvnQ(str):
    """A qualifier item (kept apart from sub-lists and ints by its type)."""


def _mvn_item(digits: bool, text: str, followed_by_digit: bool = False) -> Any:
    if digits:
        return int(text)
    if followed_by_digit and len(text) == 1:
        text = _MVN_SHORT.get(text, text)
    return _MvnQ(_MVN_ALIASES.get(text, text))


def _mvn_is_null(item: Any) -> bool:
    if type(item) is int:
        return item == 0
    if type(item) is _MvnQ:
        return item == ""
    return not item


def _mvn_normalize(items: list) -> None:
    while items:
        last = items[-1]
        if _mvn_is_null(last):
            items.pop()
        elif type(last) is list:
            # an inner non-null list does not stop the trimming of null items before it
            for i in range(len(items) - 2, -1, -1):
                if _mvn_is_null(items[i]):
                    del items[i]
                elif type(items[i]) is not list:
                    break
            return
        else:
            return


@functools.lru_cache(maxsize=65536)
def _maven(v: str) -> list:
    """Parse a Maven version into ComparableVersion's item tree (nested lists)."""
    if not v.strip():
        raise VersionError("empty Maven version")
    text = v.lower()
    root: list = []
    current = root
    stack = [root]

    def open_list() -> None:
        nonlocal current
        sub: list = []
        current.append(sub)
        current = sub
        stack.append(sub)

    digits, start = False, 0
    for i, c in enumerate(text):
        if c == "." or c == "-":
            current.append(0 if i == start else _mvn_item(digits, text[start:i]))
            start = i + 1
            if c == "-":
                open_list()
        elif c.isdecimal():
            if not digits and i > start:  # "x1": the qualifier becomes a sub-list (MNG-7644)
                if current:
                    open_list()
                current.append(_mvn_item(False, text[start:i], followed_by_digit=True))
                start = i
                open_list()
            digits = True
        else:
            if digits and i > start:
                current.append(_mvn_item(True, text[start:i]))
                start = i
                open_list()
            digits = False
    if len(text) > start:
        if not digits and current:
            open_list()
        current.append(_mvn_item(digits, text[start:]))
    while stack:
        _mvn_normalize(stack.pop())
    return root


def _mvn_cmp_item(a: Any, b: Any) -> int:
    """ComparableVersion's Item.compareTo; ``b`` None is "nothing left on that side"."""
    ta = type(a)
    if ta is int:
        if b is None:
            return 1 if a else 0
        if type(b) is int:
            return (a > b) - (a < b)
        return 1
    if ta is _MvnQ:
        if b is None:
            ka = _mvn_qualifier_key(a)
            return (ka > _MVN_RELEASE) - (ka < _MVN_RELEASE)
        if type(b) is int or type(b) is list:
            return -1
        ka, kb = _mvn_qualifier_key(a), _mvn_qualifier_key(b)
        return (ka > kb) - (ka < kb)
    # a is a list
    if b is None:
        for item in a:
            r = _mvn_cmp_item(item, None)
            if r:
                return r
        return 0
    if type(b) is int:
        return -1
    if type(b) is _MvnQ:
        return 1
    for i in range(max(len(a), len(b))):
        left = a[i] if i < len(a) else None
        right = b[i] if i < len(b) else None
        if left is None:
            r = 0 if right is None else -_mvn_cmp_item(right, None)
        else:
            r = _mvn_cmp_item(left, right)
        if r:
            return r
    return 0


def maven_compare(a: str, b: str) -> int:
    """Order two Maven versions as Maven 3.9's ComparableVersion does (-1, 0, 1).

    Case-insensitive; ``1 == 1.0 == 1-0 == 1.ga == 1.RELEASE``; ``1-rc < 1 < 1-sp < 1-1 < 1.1``.
    Raises VersionError for an empty version.
    """
    return _mvn_cmp_item(_maven(a), _maven(b))


# --------------------------------------------------------------------------- RubyGems / NuGet / Debian

@functools.lru_cache(maxsize=65536)
def _gem(v: str) -> Any:
    from univers.gem import GemVersion  # imported lazily: rarely needed

    try:
        return GemVersion(v)
    except Exception as exc:  # univers raises its own InvalidVersionError (a ValueError)
        raise VersionError(f"invalid RubyGems version {v!r}: {exc}") from None


def _gem_cmp(a: str, b: str) -> int:
    va, vb = _gem(a), _gem(b)
    return (va > vb) - (va < vb)


@functools.lru_cache(maxsize=65536)
def _nuget(v: str) -> Any:
    from univers.nuget import Version as NuGetVersion

    try:
        return NuGetVersion.from_string(v)
    except Exception as exc:
        raise VersionError(f"invalid NuGet version {v!r}: {exc}") from None


def _nuget_cmp(a: str, b: str) -> int:
    va, vb = _nuget(a), _nuget(b)
    return (va > vb) - (va < vb)


@functools.lru_cache(maxsize=65536)
def _debian(v: str) -> Any:
    from debian.debian_support import Version as DebianVersion

    try:
        return DebianVersion(v)
    except ValueError as exc:
        raise VersionError(f"invalid Debian version {v!r}: {exc}") from None


def _debian_cmp(a: str, b: str) -> int:
    va, vb = _debian(a), _debian(b)
    return (va > vb) - (va < vb)


@functools.lru_cache(maxsize=65536)
def _rpm(v: str) -> Any:
    from univers.rpm import RpmVersion

    if not v.strip():
        raise VersionError("empty RPM version")
    try:
        return RpmVersion.from_string(v)
    except ValueError as exc:  # a non-numeric epoch ("x:1.0")
        raise VersionError(f"invalid RPM version {v!r}: {exc}") from None


def rpm_compare(a: str, b: str) -> int:
    """Order two ``[epoch:]version[-release]`` strings as rpm does (-1, 0, 1): epochs as
    integers (none = 0), then rpmvercmp on version and on release (``1.0~rc1 < 1.0 < 1.0^git1 <
    1.0.1``). Raises VersionError for an empty version or a non-numeric epoch."""
    from univers.rpm import compare_rpm_versions

    return compare_rpm_versions(_rpm(a), _rpm(b))


# --------------------------------------------------------------------------- Alpine (apk)

# Token kinds in the order apk-tools numbers them; a version that ends earlier than another
# (a smaller "next token" kind is a longer version) sorts lower, except for pre-release suffixes.
_T_INITIAL, _T_DIGIT, _T_LETTER, _T_SUFFIX, _T_SUFFIX_NO, _T_HASH, _T_REV, _T_END, _T_INVALID = range(9)
_SUFFIX_RANK = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4, "cvs": 6, "svn": 7, "git": 8, "hg": 9, "p": 10}
_SUFFIX_NONE = 5  # suffixes ranked below this are pre-releases
_DIGITS = re.compile(r"[0-9]*")
_LOWER = re.compile(r"[a-z]*")
_HEX = re.compile(r"[0-9a-fA-F]*")


def _apk_tokens(v: str) -> list[tuple[int, Any]]:
    """Split an apk version into (kind, value) tokens; the last token is END or INVALID."""
    out: list[tuple[int, Any]] = []
    pos, n = 0, len(v)
    m = _DIGITS.match(v, pos)
    if not m.group(0):
        return [(_T_INVALID, v)]
    out.append((_T_INITIAL, int(m.group(0))))
    pos, kind = m.end(), _T_INITIAL
    while True:
        if pos >= n:
            out.append((_T_END, None))
            return out
        c = v[pos]
        if "a" <= c <= "z":
            if kind > _T_DIGIT:
                break
            kind = _T_LETTER
            out.append((kind, c))
            pos += 1
        elif c == "." or "0" <= c <= "9":
            if c == ".":
                if kind > _T_DIGIT:
                    break
                pos += 1
            if kind in (_T_INITIAL, _T_DIGIT):
                kind = _T_DIGIT
            elif kind == _T_SUFFIX:
                kind = _T_SUFFIX_NO
            else:
                break
            m = _DIGITS.match(v, pos)
            if not m.group(0):
                break
            text = m.group(0)
            # apk compares dotted components with a leading zero as strings (Gentoo rule).
            out.append((kind, text if kind == _T_DIGIT else int(text)))
            pos = m.end()
        elif c == "_":
            if kind > _T_SUFFIX_NO:
                break
            m = _LOWER.match(v, pos + 1)
            rank = _SUFFIX_RANK.get(m.group(0))
            if rank is None:
                break
            kind = _T_SUFFIX
            out.append((kind, rank))
            pos = m.end()
        elif c == "~":
            if kind >= _T_HASH:
                break
            m = _HEX.match(v, pos + 1)
            if not m.group(0):
                break
            kind = _T_HASH
            out.append((kind, m.group(0)))
            pos = m.end()
        elif c == "-":
            if kind >= _T_REV or not v.startswith("-r", pos):
                break
            m = _DIGITS.match(v, pos + 2)
            if not m.group(0):
                break
            kind = _T_REV
            out.append((kind, int(m.group(0))))
            pos = m.end()
        else:
            break
    out.append((_T_INVALID, v[pos:]))
    return out


@functools.lru_cache(maxsize=65536)
def _apk_parse(v: str) -> tuple[tuple[int, Any], ...]:
    return tuple(_apk_tokens(v))


def apk_version_valid(v: str) -> bool:
    """True when apk-tools would accept ``v`` as a package version."""
    return _apk_parse(v)[-1][0] == _T_END


def _apk_token_cmp(kind: int, a: Any, b: Any) -> int:
    if kind == _T_DIGIT:
        if a[0] == "0" or b[0] == "0":
            return (a > b) - (a < b)  # string comparison, as apk does for leading zeros
        a, b = int(a), int(b)
    return (a > b) - (a < b)


def apk_compare(a: str, b: str) -> int:
    """Order two apk versions as apk-tools does (-1, 0, 1).

    Invalid versions are ordered too (so sorting never fails): tokens are compared up to the
    point where apk stops, and two versions that become invalid at the same point are then
    ordered by the raw remaining text.
    """
    ta, tb = _apk_parse(a), _apk_parse(b)
    for (ka, va), (kb, vb) in zip(ta, tb):
        if ka != kb:
            break
        if ka == _T_END:
            return 0
        if ka == _T_INVALID:
            return (va > vb) - (va < vb)
        r = _apk_token_cmp(ka, va, vb)
        if r:
            return r
    # The first differing token kind decides. A pre-release suffix is lower than anything.
    if ka == _T_SUFFIX and va < _SUFFIX_NONE:
        return -1
    if kb == _T_SUFFIX and vb < _SUFFIX_NONE:
        return 1
    if ka > kb:
        return -1
    if kb > ka:
        return 1
    return 0  # pragma: no cover - loop returns for equal kinds


# --------------------------------------------------------------------------- Composer (Packagist)

def composer_compare(a: str, b: str) -> int:
    """Order two Composer versions as Composer does (-1, 0, 1): composer/semver's
    VersionParser::normalize, then PHP's version_compare (``versions_composer``):
    ``1.0 == v1.0.0 == 1.0.0.0``, ``1.0.0-dev < 1.0.0-alpha1 < 1.0.0-beta1 < 1.0.0-RC1 < 1.0.0 <
    1.0.0-patch1 < 1.0.0.1``. Raises VersionError for a version Composer rejects."""
    from stella_build.rules.evidence.versions_composer import ComposerVersionError
    from stella_build.rules.evidence.versions_composer import compare as _composer

    try:
        return _composer(a, b)
    except ComposerVersionError as exc:
        raise VersionError(str(exc)) from None


def _apk_strict_cmp(a: str, b: str) -> int:
    # apk_compare orders invalid versions too (sorting must not fail); evaluation must not: a
    # version apk-tools rejects ("2.7.16-33", "0.8.21.r2", "1.18.-r2") is no package version,
    # so records naming one are listed invalid instead of being evaluated silently.
    for v in (a, b):
        if not apk_version_valid(v):
            raise VersionError(f"invalid apk version {v!r} (apk-tools rejects it)")
    return apk_compare(a, b)


# --------------------------------------------------------------------------- dispatch

_COMPARATORS: dict[str, Callable[[str, str], int]] = {
    "PyPI": lambda a, b: (_pep440(a) > _pep440(b)) - (_pep440(a) < _pep440(b)),
    "Go": _semver_cmp,
    "npm": _semver_cmp,
    "crates.io": _semver_cmp,
    "Maven": maven_compare,
    "Alpine": _apk_strict_cmp,
    "Debian": _debian_cmp,
    "Ubuntu": _debian_cmp,
    "AlmaLinux": rpm_compare,
    "Rocky Linux": rpm_compare,
    "openSUSE": rpm_compare,
    "SUSE": rpm_compare,
    "Red Hat": rpm_compare,
    "Wolfi": _apk_strict_cmp,
    "Chainguard": _apk_strict_cmp,
    "RubyGems": _gem_cmp,
    "NuGet": _nuget_cmp,
    "Hex": _semver_cmp,
    "Pub": _semver_cmp,
    "SwiftURL": _semver_cmp,
    "Packagist": composer_compare,
}


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is lower than, equal to or higher than ``b`` in ``ecosystem``.

    Raises VersionError for an unsupported ecosystem or a version the ecosystem cannot order.
    """
    if a == b:
        return 0
    return _COMPARATORS[canonical_ecosystem(ecosystem)](a, b)


def sort_key(ecosystem: str) -> Callable[[str], Any]:
    """A ``key=`` function ordering versions of ``ecosystem`` (for ``sorted``)."""
    return functools.cmp_to_key(functools.partial(compare, ecosystem))


# --------------------------------------------------------------------------- OSV ranges

_EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
# Events at one version keep the order the record gives them (a stable sort). The OSV
# evaluation walks ``sorted(range.events)`` and says nothing more about equal versions; the
# reference implementations sort stably (osv.dev's Python ``sorted``, whose enumerated
# ``versions`` lists follow it, and osv-scanner's Go ``sort.Slice``, an insertion sort for the
# short event lists of real records), so the record's own order decides. In file order
# "introduced 1.0, fixed 2.0, introduced 2.0, fixed 3.0" is [1.0, 3.0); out of order, e.g.
# PYSEC-2022-42972 "introduced 0.13.0, fixed 0.14.0rc1, introduced 0.12.2, fixed 0.13.0", the
# sorted walk meets "introduced 0.13.0" before "fixed 0.13.0" and 0.13.x is not affected, as
# osv.dev's versions list of the record (0.12.2 .. 0.12.6) and osv-scanner say. One rule for
# json:policy and the trivy:db mapping (both walk ``_sorted_events``); docs/evidence.md.


def _range_parts(r: Any) -> tuple[str, list[tuple[str, str]]]:
    """(type, [(kind, version)...]) from an evidence Range model or an OSV range dict."""
    if isinstance(r, Mapping):
        events = []
        for e in r.get("events", ()):
            if "kind" in e:  # canonical evidence dict form
                events.append((e["kind"], e["version"]))
            else:
                ((kind, version),) = e.items()
                events.append((kind, version))
        return r.get("type", "ECOSYSTEM"), events
    return r.type, [(e.kind, e.version) for e in r.events]


def range_limit(ecosystem: str, events: Iterable[tuple[str, str]]) -> str | None:
    """The range's upper limit: the highest ``limit`` event, or None for "no limit".

    OSV's BeforeLimits: a version is inside when it is below *any* limit, so the highest limit
    bounds the range; a limit containing ``*`` is infinity, and no limit event means an implicit
    ``*``. Raises VersionError if a limit cannot be ordered.
    """
    limits = [v for k, v in events if k == "limit"]
    if not limits or any("*" in v for v in limits):
        return None
    return max(limits, key=sort_key(ecosystem))


def _sorted_events(ecosystem: str, events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    cmp = functools.partial(compare, ecosystem)
    return sorted((e for e in events if e[0] != "limit"),
                  key=functools.cmp_to_key(lambda x, y: _event_cmp(cmp, x, y)))


def _range_includes(ecosystem: str, version: str, events: list[tuple[str, str]]) -> bool:
    cmp = functools.partial(compare, ecosystem)
    limit = range_limit(ecosystem, events)
    if limit is not None and cmp(version, limit) >= 0:
        return False
    vulnerable = False
    for kind, ev in _sorted_events(ecosystem, events):
        if kind == "introduced":
            if ev == "0" or cmp(version, ev) >= 0:
                vulnerable = True
        elif kind == "fixed":
            if cmp(version, ev) >= 0:
                vulnerable = False
        elif kind == "last_affected":
            if cmp(version, ev) > 0:
                vulnerable = False
    return vulnerable


def _event_cmp(cmp: Callable[[str, str], int], x: tuple[str, str], y: tuple[str, str]) -> int:
    """Order of two events by version ("introduced 0" first); 0 at equal versions, so that the
    stable ``sorted`` keeps the record's order there (see ``_EVENT_KINDS``)."""
    (kx, vx), (ky, vy) = x, y
    zx = kx == "introduced" and vx == "0"
    zy = ky == "introduced" and vy == "0"
    if zx or zy:
        return (not zx) - (not zy)
    return cmp(vx, vy)


def _pep440_text(v: str) -> str:
    try:
        return str(_PepVersion(v))
    except _PepInvalid:
        return v


def version_equal(ecosystem: str, a: str, b: str) -> bool:
    """Are ``a`` and ``b`` the same version string once the ecosystem normalizes its spelling?

    OSV's IncludedInVersions compares strings (``v == version``), not positions in the order:
    a listed ``0.20`` names 0.20 only, not 0.20.0 (osv.dev enumerates every released spelling).
    The spelling is normalized the way the ecosystem itself writes a version: PEP 440's normal
    form for PyPI (``1.0RC1`` = ``1.0rc1``, ``0.20`` != ``0.20.0``), Go without its ``v``,
    Maven's ComparableVersion canonical form (``5.2.20`` = ``5.2.20.RELEASE``: Maven's own
    ``equals``), Composer's VersionParser::normalize (``1.0`` = ``v1.0.0`` = ``1.0.0.0``); every
    other ecosystem: the exact string. Raises nothing: a spelling that does not normalize is
    compared as written."""
    if a == b:
        return True
    try:
        base = canonical_ecosystem(ecosystem)
    except VersionError:
        return False
    if base == "PyPI":
        return _pep440_text(a) == _pep440_text(b)
    if base == "Go":
        return a.removeprefix("v") == b.removeprefix("v")
    try:
        if base == "Maven":
            return maven_compare(a, b) == 0
        if base == "Packagist":
            from stella_build.rules.evidence.versions_composer import ComposerVersionError, normalize

            try:
                return normalize(a) == normalize(b)
            except ComposerVersionError:
                return False
    except VersionError:
        return False
    return False


def _in_versions(ecosystem: str, version: str, versions: Sequence[str]) -> bool:
    """OSV IncludedInVersions: ``version`` is one of ``versions`` (``version_equal``)."""
    return any(version_equal(ecosystem, version, listed) for listed in versions)


def affected(
    ecosystem: str,
    version: str,
    ranges: Iterable[Any] = (),
    versions: Sequence[str] = (),
) -> bool:
    """OSV evaluation: is ``version`` affected by any non-GIT range or listed in ``versions``?

    ``ranges`` are evidence ``Range`` models or OSV range dicts
    (``{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.2"}]}``); events may be in
    any order and may include ``limit``. Raises VersionError if a version involved cannot be
    ordered in ``ecosystem``.
    """
    if versions and _in_versions(ecosystem, version, versions):
        return True
    for r in ranges:
        rtype, events = _range_parts(r)
        if rtype == "GIT":
            continue
        for kind, _ in events:
            if kind not in _EVENT_KINDS:
                raise VersionError(f"unknown range event {kind!r}")
        if _range_includes(ecosystem, version, events):
            return True
    return False


class Interval(tuple):
    """``(lower, upper, upper_inclusive)``: the versions ``v`` with ``lower <= v`` (``lower`` None:
    from the very beginning) and ``v < upper`` (``v <= upper`` when ``upper_inclusive``;
    ``upper`` None: no upper bound)."""

    __slots__ = ()

    def __new__(cls, lower: str | None, upper: str | None, upper_inclusive: bool = False) -> "Interval":
        return super().__new__(cls, (lower, upper, upper_inclusive))

    @property
    def lower(self) -> str | None:
        return self[0]

    @property
    def upper(self) -> str | None:
        return self[1]

    @property
    def upper_inclusive(self) -> bool:
        return self[2]


def vulnerable_intervals(ecosystem: str, range_: Any) -> list[Interval]:
    """The versions one non-GIT range marks affected, as disjoint ascending intervals.

    Exactly the set ``affected(ecosystem, v, [range_])`` accepts (tests/test_semantics.py checks
    this on random event lists): events are sorted first (any file order), ``limit`` caps the
    result (``range_limit``). The state between two event versions is constant, so the walk
    looks at each distinct event version twice: *at* it (``last_affected`` there does not apply
    yet) and *just above* it (everything there applies). A lower bound is always inclusive: only
    ``last_affected`` makes "at X" differ from "above X", and it switches off.
    Raises VersionError if a version cannot be ordered.
    """
    rtype, events = _range_parts(range_)
    if rtype == "GIT":
        return []
    for kind, _ in events:
        if kind not in _EVENT_KINDS:
            raise VersionError(f"unknown range event {kind!r}")
    cmp = functools.partial(compare, ecosystem)
    ordered = _sorted_events(ecosystem, events)
    state = False
    groups: list[tuple[str, list[str]]] = []
    for kind, ver in ordered:
        if kind == "introduced" and ver == "0":
            state = True  # sorts before every version: the state below the first real event
        elif groups and cmp(groups[-1][0], ver) == 0:
            groups[-1][1].append(kind)
        else:
            groups.append((ver, [kind]))
    out: list[Interval] = []
    lower: str | None = None
    is_open = state
    for ver, kinds in groups:
        at = state
        for kind in kinds:
            if kind != "last_affected":
                at = kind == "introduced"
            state = kind == "introduced"
        if is_open and not at:
            out.append(Interval(lower, ver, False))
            is_open = False
        elif not is_open and at:
            lower, is_open = ver, True
        if is_open and not state:  # on at X, off just above X: "<= X"
            out.append(Interval(lower, ver, True))
            is_open = False
    if is_open:
        out.append(Interval(lower, None, False))
    limit = range_limit(ecosystem, events)
    if limit is None:
        return out
    capped = []
    for lo, hi, inclusive in out:
        if lo is not None and cmp(lo, limit) >= 0:
            continue
        if hi is None or cmp(hi, limit) >= 0:
            hi, inclusive = limit, False
        capped.append(Interval(lo, hi, inclusive))
    return capped


def alpine_fixed_version(ecosystem: str, fixed_versions: Iterable[str]) -> str | None:
    """The one fixed version an Alpine secdb branch means for an id: the highest (apk order).

    A branch ships one version line of a package; a secfixes entry at a lower version is a fix
    recorded on an older line (a backport kept in the APKBUILD history), so an installed version
    below the highest fix may lack it, while every version at or above it has it. Using the
    highest fix never misses an installed package of the branch's line (docs/trivy-db.md).
    Raises VersionError for a fixed version apk-tools rejects.
    """
    fixed = [f for f in fixed_versions if f and f != "0"]
    for f in fixed:  # max() of one element compares nothing: check each on its own
        if not apk_version_valid(f):
            raise VersionError(f"invalid apk version {f!r} (apk-tools rejects it)")
    return max(fixed, key=sort_key(ecosystem)) if fixed else None


# --------------------------------------------------------------------------- Cargo requirements

_CARGO_CMP = re.compile(
    r"^\s*(?P<op>=|>=|<=|>|<|~|\^)?\s*v?(?P<major>\d+|\*|x|X)"
    r"(?:\.(?P<minor>\d+|\*|x|X))?(?:\.(?P<patch>\d+|\*|x|X))?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?\s*$"
)

Bound = tuple[str, semver.Version]  # (">=" | "<", version): half-open primitives only


@functools.lru_cache(maxsize=16384)
def _cargo_comparators(requirement: str) -> tuple[tuple[tuple[Bound, ...], tuple[int, int | None, int | None, str]], ...]:
    """Parse a comma-joined Cargo requirement into comparators.

    Each comparator is (bounds, (major, minor, patch, pre)) where bounds are half-open
    primitives (">=", v) / ("<", v), following the semver crate's rules for partial versions,
    caret, tilde and wildcards.
    """
    if not requirement.strip():
        raise VersionError("empty version requirement")
    out = []
    for part in requirement.split(","):
        m = _CARGO_CMP.match(part)
        if not m:
            raise VersionError(f"invalid version requirement {part.strip()!r}")
        op = m.group("op") or "^"
        wild = {"*", "x", "X"}
        major_s, minor_s, patch_s = m.group("major"), m.group("minor"), m.group("patch")
        if major_s in wild:
            out.append(((), (0, None, None, "")))
            continue
        major = int(major_s)
        minor = None if minor_s is None or minor_s in wild else int(minor_s)
        patch = None if minor is None or patch_s is None or patch_s in wild else int(patch_s)
        pre = m.group("pre") or ""
        if (minor_s in wild or patch_s in wild) and op == "^":
            op = "="  # "1.*" and "1.2.*" mean the same as "=1" and "=1.2"
        out.append((_cargo_bounds(op, major, minor, patch, pre), (major, minor, patch, pre)))
    return tuple(out)


def _v(major: int, minor: int, patch: int, pre: str = "") -> semver.Version:
    return semver.Version(major, minor, patch, prerelease=pre or None)


def _cargo_bounds(op: str, major: int, minor: int | None, patch: int | None, pre: str) -> tuple[Bound, ...]:
    # Upper bounds that come from bumping a version (caret, tilde, partial "=1.2", "<=1.2",
    # wildcards) are the bumped version's lowest pre-release ("2.0.0-0"), as the rustsec crate's
    # UnaffectedRange writes them: "^1.2.3" holds no 2.0.0 pre-release, so "2.0.0-alpha.1" falls
    # into the vulnerable gap after it (cargo's own pre-release rule agrees there).
    lo = _v(major, minor or 0, patch or 0, pre)
    if minor is None:
        nxt = _v(major + 1, 0, 0)
    elif patch is None:
        nxt = _v(major, minor + 1, 0)
    else:
        nxt = semver_successor(lo)
    upper_nxt = nxt if nxt.prerelease else nxt.replace(prerelease="0")
    if op == "=":
        return ((">=", lo), ("<", upper_nxt))
    if op == ">=":
        return ((">=", lo),)
    if op == ">":
        return ((">=", nxt),)
    if op == "<":
        return (("<", lo),)
    if op == "<=":
        return (("<", upper_nxt),)
    if op == "~":
        upper = _v(major + 1, 0, 0, "0") if minor is None else _v(major, minor + 1, 0, "0")
        return ((">=", lo), ("<", upper))
    # caret
    if major > 0 or minor is None:
        upper = _v(major + 1, 0, 0, "0")
    elif minor > 0 or patch is None:
        upper = _v(0, minor + 1, 0, "0")
    else:
        upper = _v(0, 0, patch + 1, "0")
    return ((">=", lo), ("<", upper))


def rustsec_requirement_matches(version: str, requirement: str) -> bool:
    """Does ``version`` satisfy a Cargo requirement such as ``">= 1.2.3, < 1.4"`` or ``"^0.3"``?

    Follows the semver crate that cargo and RustSec use, including its pre-release rule: a
    pre-release version matches only if some comparator names the same major.minor.patch with a
    pre-release of its own.
    """
    v = _semver(version).replace(build=None)
    comparators = _cargo_comparators(requirement)
    for bounds, _ in comparators:
        for op, bv in bounds:
            if op == ">=" and v < bv or op == "<" and not v < bv:
                return False
    if v.prerelease:
        return any(
            pre and major == v.major and minor == v.minor and patch == v.patch
            for _, (major, minor, patch, pre) in comparators
        )
    return True


def cargo_requirement_bounds(requirement: str) -> tuple[semver.Version | None, semver.Version | None]:
    """The half-open interval [lower, upper) a Cargo requirement allows (None = unbounded).

    This is how the rustsec crate itself evaluates advisories (``Versions::is_vulnerable`` turns
    patched/unaffected requirements into OSV-style intervals, "because it allows handling
    pre-releases correctly"): bumped upper bounds are ``X-0`` (``^0.4.0`` → [0.4.0, 0.5.0-0)), so
    the next line's pre-releases are outside. Cargo's rule that a pre-release only matches a
    comparator naming the same major.minor.patch (``rustsec_requirement_matches``) is not part of
    RustSec's semantics and is not applied here.
    """
    lower: semver.Version | None = None
    upper: semver.Version | None = None
    for bounds, _ in _cargo_comparators(requirement):
        for op, bv in bounds:
            if op == ">=":
                lower = bv if lower is None or bv > lower else lower
            else:
                upper = bv if upper is None or bv < upper else upper
    return lower, upper
