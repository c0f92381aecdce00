"""Per-ecosystem version orderings for the spec evaluator, deliberately NOT the project's code.

The project (rules/evidence/versions.py) orders with ``packaging`` (PyPI), ``semver`` (Go, npm,
crates.io), ``univers.maven`` (Maven), python-debian (Debian) and its own apk-tools port. Here:

| ecosystem | ordering |
| --- | --- |
| PyPI | ``packaging.version`` (PEP 440; the brief names it, there is no second maintained one) |
| Go, npm, crates.io, Pub, Hex, SwiftURL | ``semantic_version`` (SemVer 2.0 precedence, build metadata ignored) |
| NuGet, RubyGems | ``univers`` (NuGet's and Gem::Version's rules) |
| Packagist | ``_composer_key`` below, written from composer/semver's VersionParser and PHP's version_compare |
| Maven | ``maven_key`` below, written from Maven's "Version Order Specification" (POM reference) |
| Alpine | ``_apk_cmp`` below, a port of apk-tools' ``src/version.c`` |
| Ubuntu, Debian | python-debian ``Version`` (dpkg's algorithm) |

``compare(ecosystem, a, b)`` returns -1/0/1 and raises ``Unorderable`` when either version is
not valid in the ecosystem; the evaluator then reports "unorderable" instead of guessing.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable


class Unorderable(ValueError):
    """A version the ecosystem's ordering does not accept."""


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


@functools.lru_cache(maxsize=200_000)
def _pep440(v: str) -> Any:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(v)
    except InvalidVersion:
        raise Unorderable(f"not PEP 440: {v!r}") from None


@functools.lru_cache(maxsize=200_000)
def _semver(v: str) -> Any:
    import semantic_version

    text = v[1:] if v[:1] in ("v", "V") else v
    try:
        # semantic_version compares build metadata; SemVer 2.0 precedence ignores it (item 10).
        return semantic_version.Version(text).truncate("prerelease")
    except ValueError:
        raise Unorderable(f"not SemVer 2.0: {v!r}") from None


def _univers(cls_name: str) -> Callable[[str], Any]:
    @functools.lru_cache(maxsize=200_000)
    def parse(v: str) -> Any:
        import univers.versions as uv

        try:
            return getattr(uv, cls_name)(v)
        except Exception as exc:  # univers raises several types (InvalidVersion, ValueError, ...)
            raise Unorderable(f"not a valid {cls_name}: {v!r} ({exc})") from None
    return parse


@functools.lru_cache(maxsize=200_000)
def _debian(v: str) -> Any:
    from debian.debian_support import Version

    try:
        return Version(v)
    except ValueError:
        raise Unorderable(f"not a Debian version: {v!r}") from None


# -- Maven ------------------------------------------------------------------------------------
# A port of the algorithm of Maven's ComparableVersion (maven-artifact 3.8, the reference the POM
# "Version Order Specification" describes), not of univers.maven which the project uses: the
# version is split into nested lists at "-" and at digit/letter transitions, items at "."; trailing
# null items (0, "", empty list) are removed; qualifiers order alpha < beta < milestone < rc=cr <
# snapshot < ""=ga=final=release < sp < anything else (lexical); a single "a"/"b"/"m" followed by
# a digit is alpha/beta/milestone; int > list > string; a missing item compares as null.
_MAVEN_QUALIFIERS = ("alpha", "beta", "milestone", "rc", "snapshot", "", "sp")
_MAVEN_ALIAS = {"cr": "rc", "ga": "", "final": "", "release": ""}


class _Qualifier(str):
    """A Maven StringItem (a qualifier), kept apart from plain ints and lists."""


def _maven_string(text: str, followed_by_digit: bool) -> _Qualifier:
    if followed_by_digit and len(text) == 1:
        text = {"a": "alpha", "b": "beta", "m": "milestone"}.get(text, text)
    return _Qualifier(_MAVEN_ALIAS.get(text, text))


def _maven_null(item: Any) -> bool:
    return item == 0 if isinstance(item, int) else (item == "" if isinstance(item, _Qualifier) else not item)


def _maven_normalize(items: list) -> None:
    for i in range(len(items) - 1, -1, -1):
        if _maven_null(items[i]):
            del items[i]
        elif not isinstance(items[i], list):
            break


@functools.lru_cache(maxsize=200_000)
def _maven_parse(v: str) -> list:
    if not v.strip():
        raise Unorderable("empty Maven version")
    v = v.lower()
    root: list = []
    current, stack, start, digit = root, [root], 0, False

    def item(is_digit: bool, text: str, followed_by_digit: bool = False) -> Any:
        return int(text) if is_digit else _maven_string(text, followed_by_digit)

    def sublist() -> None:
        nonlocal current
        new: list = []
        current.append(new)
        current = new
        stack.append(new)

    for i, c in enumerate(v):
        if c in ".-":
            current.append(0 if i == start else item(digit, v[start:i]))
            start = i + 1
            if c == "-":
                sublist()
        elif "0" <= c <= "9":
            if not digit and i > start:
                current.append(item(False, v[start:i], True))
                start = i
                sublist()
            digit = True
        else:
            if digit and i > start:
                current.append(item(True, v[start:i]))
                start = i
                sublist()
            digit = False
    if len(v) > start:
        current.append(item(digit, v[start:]))
    while stack:
        _maven_normalize(stack.pop())
    return root


def _maven_qualifier_rank(q: str) -> str:
    # ComparableVersion compares these strings, not numbers ("5" vs "7-foo")
    return str(_MAVEN_QUALIFIERS.index(q)) if q in _MAVEN_QUALIFIERS else f"{len(_MAVEN_QUALIFIERS)}-{q}"


def _maven_item_cmp(x: Any, y: Any) -> int:
    if isinstance(x, int):
        if y is None:
            return 0 if x == 0 else 1
        return _cmp(x, y) if isinstance(y, int) else 1
    if isinstance(x, _Qualifier):
        if y is None:
            return _cmp(_maven_qualifier_rank(x), _maven_qualifier_rank(""))
        if isinstance(y, _Qualifier):
            return _cmp(_maven_qualifier_rank(x), _maven_qualifier_rank(y))
        return -1
    if y is None:
        return _maven_item_cmp(x[0], None) if x else 0
    if isinstance(y, int):
        return -1
    if isinstance(y, _Qualifier):
        return 1
    for i in range(max(len(x), len(y))):
        left = x[i] if i < len(x) else None
        right = y[i] if i < len(y) else None
        if left is None:
            r = 0 if right is None else -_maven_item_cmp(right, None)
        else:
            r = _maven_item_cmp(left, right)
        if r:
            return r
    return 0


def _maven_cmp(a: str, b: str) -> int:
    return _maven_item_cmp(_maven_parse(a), _maven_parse(b))


# -- Alpine -----------------------------------------------------------------------------------
# A port of apk-tools' src/version.c (apk_version_compare, token_first/token_next/token_cmp;
# GPL-2.0 C code read and rewritten, checked against apk-tools' test/unit/version.data): the
# reference the project's own apk tokenizer must agree with. Token and suffix numbers keep the
# C enums' order: digit{.digit}...{letter}{_suf{#}}...{~hash}{-r#}.
(_T_INITIAL_DIGIT, _T_DIGIT, _T_LETTER, _T_SUFFIX, _T_SUFFIX_NO, _T_COMMIT_HASH, _T_REVISION_NO, _T_END,
 _T_INVALID) = range(9)
_APK_SUFFIXES = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4, "cvs": 6, "svn": 7, "git": 8, "hg": 9, "p": 10}
_SUFFIX_NONE = 5
_APK_DIGITS = re.compile(r"[0-9]*")
_APK_SUFFIX = re.compile(r"[a-z]*")
_APK_HEX = re.compile(r"[0-9a-f]*")


@functools.lru_cache(maxsize=200_000)
def _apk_tokens(v: str) -> tuple[tuple[int, Any, str], ...]:
    """(token, compared value, raw text) for every token, ending with END or INVALID."""
    out: list[tuple[int, Any, str]] = []
    m = _APK_DIGITS.match(v)
    tok, pos = (_T_INITIAL_DIGIT if m.group() else _T_INVALID), m.end()
    out.append((tok, int(m.group() or 0), m.group()))
    while tok < _T_END:
        if pos >= len(v):
            tok = _T_END
            out.append((tok, None, ""))
            break
        c = v[pos]
        if "a" <= c <= "z":
            if tok > _T_DIGIT:
                tok = _T_INVALID
            else:
                tok, pos = _T_LETTER, pos + 1
                out.append((tok, ord(c), c))
                continue
        elif c == "." or "0" <= c <= "9":
            if c == "." and tok > _T_DIGIT:
                tok = _T_INVALID
            else:
                pos += c == "."
                if tok in (_T_INITIAL_DIGIT, _T_DIGIT):
                    tok = _T_DIGIT
                elif tok == _T_SUFFIX:
                    tok = _T_SUFFIX_NO
                else:
                    tok = _T_INVALID
                if tok != _T_INVALID:
                    m = _APK_DIGITS.match(v, pos)
                    pos = m.end()
                    if not m.group():
                        tok = _T_INVALID
                    else:
                        out.append((tok, int(m.group()), m.group()))
                        continue
        elif c == "_":
            if tok > _T_SUFFIX_NO:
                tok = _T_INVALID
            else:
                m = _APK_SUFFIX.match(v, pos + 1)
                pos = m.end()
                if m.group() not in _APK_SUFFIXES:
                    tok = _T_INVALID
                else:
                    tok = _T_SUFFIX
                    out.append((tok, _APK_SUFFIXES[m.group()], m.group()))
                    continue
        elif c == "~":
            if tok >= _T_COMMIT_HASH:
                tok = _T_INVALID
            else:
                m = _APK_HEX.match(v, pos + 1)
                pos = m.end()
                if not m.group():
                    tok = _T_INVALID
                else:
                    tok = _T_COMMIT_HASH
                    out.append((tok, m.group(), m.group()))
                    continue
        elif c == "-":
            if tok >= _T_REVISION_NO or not v.startswith("-r", pos):
                tok = _T_INVALID
            else:
                m = _APK_DIGITS.match(v, pos + 2)
                pos = m.end()
                if not m.group():
                    tok = _T_INVALID
                else:
                    tok = _T_REVISION_NO
                    out.append((tok, int(m.group()), m.group()))
                    continue
        else:
            tok = _T_INVALID
        out.append((tok, None, ""))
    return tuple(out)


def _apk_token_cmp(tok: int, a: tuple, b: tuple) -> int:
    if tok == _T_DIGIT and (a[2][:1] == "0" or b[2][:1] == "0"):
        tok = _T_COMMIT_HASH  # a leading zero: raw string comparison (Gentoo rule)
    if tok == _T_COMMIT_HASH:
        x, y = a[2].encode(), b[2].encode()
        return _cmp(x, y)  # memcmp, then length: exactly bytes ordering
    return _cmp(a[1], b[1])


def _apk_cmp(a: str, b: str) -> int:
    ta, tb = _apk_tokens(a), _apk_tokens(b)
    for x in (ta, tb):
        if x[-1][0] == _T_INVALID:
            raise Unorderable(f"not an apk version: {a if x is ta else b!r}")
    i = 0
    while ta[i][0] == tb[i][0] and ta[i][0] < _T_END:
        r = _apk_token_cmp(ta[i][0], ta[i], tb[i])
        if r:
            return r
        i += 1
    x, y = ta[i], tb[i]
    if x[0] == y[0]:
        return 0
    if x[0] == _T_SUFFIX and x[1] < _SUFFIX_NONE:
        return -1
    if y[0] == _T_SUFFIX and y[1] < _SUFFIX_NONE:
        return 1
    return -1 if x[0] > y[0] else 1


# -- Packagist ---------------------------------------------------------------------------------
# A sort key written from Composer's rules (composer/semver VersionParser::normalize, then PHP's
# version_compare), not the project's port (rules/evidence/versions_composer.py walks PHP's
# algorithm piece by piece; this is a tuple key, for the classical versions packages use):
# v?N(.N){0,3} padded to four numbers, then a stability (dev < alpha < beta < RC < stable <
# patch) with its numbers, then "-dev" below the same without it. Branches and date versions
# (no record or probe of the corpora has one) are Unorderable here.
_COMPOSER = re.compile(r"^v?(\d{1,5})(\.\d+)?(\.\d+)?(\.\d+)?[._-]?(?:(stable|beta|b|RC|alpha|a|patch|pl|p)"
                       r"((?:[.-]?\d+)*))?([.-]?dev)?$", re.I)
_COMPOSER_RANK = {"alpha": 1, "a": 1, "beta": 2, "b": 2, "rc": 3, "stable": 4, "patch": 5, "pl": 5, "p": 5}
_END, _DEV = -1, -2   # after the numbers: "nothing more" sorts above "-dev", below any number


@functools.lru_cache(maxsize=200_000)
def _composer_key(v: str) -> tuple:
    m = _COMPOSER.match(v.strip().split("+", 1)[0])
    if not m:
        raise Unorderable(f"not a Composer version: {v!r}")
    release = tuple(int(x.lstrip(".") if x else 0) for x in m.group(1, 2, 3, 4))
    stability, numbers, dev = m.group(5), m.group(6) or "", m.group(7)
    rank = _COMPOSER_RANK[stability.lower()] if stability else (0 if dev else 4)
    if rank == 4:  # "stable" (said or not) ignores a "-dev" that follows it in Composer
        return (release, 4, (_END,))
    nums = tuple(int(x) for x in re.findall(r"\d+", numbers))
    return (release, rank, nums + ((_DEV,) if dev and stability else ()) + (_END,))


def _key_cmp(parse: Callable[[str], Any]) -> Callable[[str, str], int]:
    return lambda a, b: _cmp(parse(a), parse(b))


_ORDERINGS: dict[str, Callable[[str, str], int]] = {
    "PyPI": _key_cmp(_pep440),
    "Go": _key_cmp(_semver),
    "npm": _key_cmp(_semver),
    "crates.io": _key_cmp(_semver),
    "Pub": _key_cmp(_semver),
    "Hex": _key_cmp(_semver),
    "SwiftURL": _key_cmp(_semver),
    "NuGet": _key_cmp(_univers("NugetVersion")),
    "RubyGems": _key_cmp(_univers("RubygemsVersion")),
    "Packagist": _key_cmp(_composer_key),
    "Alpine": _apk_cmp,
    "Maven": _maven_cmp,
    "Ubuntu": _key_cmp(_debian),
    "Debian": _key_cmp(_debian),
}


def supported(ecosystem: str) -> bool:
    return ecosystem.split(":", 1)[0] in _ORDERINGS


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0, 1 as ``a`` sorts below, equal to, above ``b``; raises Unorderable."""
    base = ecosystem.split(":", 1)[0]
    try:
        fn = _ORDERINGS[base]
    except KeyError:
        raise Unorderable(f"no ordering for ecosystem {ecosystem!r}") from None
    return fn(a, b)
