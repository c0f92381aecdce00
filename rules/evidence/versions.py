"""Version ordering per ecosystem and OSV range evaluation.

Libraries do the ordering wherever a maintained one exists:
- PyPI: PEP 440 through ``packaging.version``.
- Go, npm, crates.io: SemVer 2.0 through ``semver`` (Go's leading ``v`` dropped; short forms such
  as ``1.2`` padded to ``1.2.0`` because some OSV data is written that way).
- Maven: ``univers.maven.Version`` (a port of Maven's ComparableVersion).
- Debian: ``debian.debian_support.Version`` (python-debian, Debian's own implementation).
- Alpine: no maintained PyPI library orders apk versions as apk-tools does (univers reuses
  Gentoo's rules, which reject ``_git``/``_svn`` suffixes and ``~hash``), so ``apk_compare`` below
  follows apk-tools' tokenizer (src/version.c): digits, one letter, ``_suffix[N]`` (alpha < beta <
  pre < rc < (none) < cvs < svn < git < hg < p), ``~commit`` and ``-rN``.

``affected`` implements the OSV evaluation algorithm (https://ossf.github.io/osv-schema/):
events of a range are sorted by version, ``introduced`` switches on, ``fixed`` (at or above) and
``last_affected`` (strictly above) switch off, ``limit`` caps the range, ``introduced: "0"`` means
"from the beginning"; ranges are OR'ed together with the explicit ``versions`` list. GIT ranges
are never evaluated here (they need a commit graph).
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
    "apk_version_valid",
    "rustsec_requirement_matches",
    "cargo_requirement_bounds",
    "semver_successor",
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


# --------------------------------------------------------------------------- Maven / Debian

@functools.lru_cache(maxsize=65536)
def _maven(v: str) -> Any:
    from univers.maven import Version as MavenVersion  # imported lazily: rarely needed

    if not v.strip():
        raise VersionError("empty Maven version")
    return MavenVersion(v)


def _maven_cmp(a: str, b: str) -> int:
    va, vb = _maven(a), _maven(b)
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


# --------------------------------------------------------------------------- dispatch

_COMPARATORS: dict[str, Callable[[str, str], int]] = {
    "PyPI": lambda a, b: (_pep440(a) > _pep440(b)) - (_pep440(a) < _pep440(b)),
    "Go": _semver_cmp,
    "npm": _semver_cmp,
    "crates.io": _semver_cmp,
    "Maven": _maven_cmp,
    "Alpine": apk_compare,
    "Debian": _debian_cmp,
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
_TIE_ORDER = {"introduced": 0, "last_affected": 1, "fixed": 2, "limit": 3}


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


def _range_includes(ecosystem: str, version: str, events: list[tuple[str, str]]) -> bool:
    cmp = functools.partial(compare, ecosystem)
    limits = [v for k, v in events if k == "limit" and v != "*"]
    if limits and not any(cmp(version, lim) < 0 for lim in limits):
        return False

    ordered = sorted(
        (e for e in events if e[0] != "limit"),
        key=functools.cmp_to_key(lambda x, y: _event_cmp(cmp, x, y)),
    )
    vulnerable = False
    for kind, ev in ordered:
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
    (kx, vx), (ky, vy) = x, y
    zx = kx == "introduced" and vx == "0"
    zy = ky == "introduced" and vy == "0"
    if zx or zy:
        return (not zx) - (not zy)
    r = cmp(vx, vy)
    return r if r else _TIE_ORDER[kx] - _TIE_ORDER[ky]


def affected(
    ecosystem: str,
    version: str,
    ranges: Iterable[Any] = (),
    versions: Sequence[str] = (),
) -> bool:
    """OSV evaluation: is ``version`` affected by any non-GIT range or listed in ``versions``?

    ``ranges`` are evidence ``Range`` models or OSV range dicts
    (``{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.2"}]}``).
    Raises VersionError if a version involved cannot be ordered in ``ecosystem``.
    """
    if version in versions:
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
    lo = _v(major, minor or 0, patch or 0, pre)
    if minor is None:
        nxt = _v(major + 1, 0, 0)
    elif patch is None:
        nxt = _v(major, minor + 1, 0)
    else:
        nxt = semver_successor(lo)
    if op == "=":
        return ((">=", lo), ("<", nxt))
    if op == ">=":
        return ((">=", lo),)
    if op == ">":
        return ((">=", nxt),)
    if op == "<":
        return (("<", lo),)
    if op == "<=":
        return (("<", nxt),)
    if op == "~":
        upper = _v(major + 1, 0, 0) if minor is None else _v(major, minor + 1, 0)
        return ((">=", lo), ("<", upper))
    # caret
    if major > 0 or minor is None:
        upper = _v(major + 1, 0, 0)
    elif minor > 0 or patch is None:
        upper = _v(0, minor + 1, 0)
    else:
        upper = _v(0, 0, patch + 1)
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

    Pre-release exclusion is not representable as an interval and is ignored here.
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
