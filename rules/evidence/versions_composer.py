"""Composer (Packagist) version ordering: composer/semver's ``VersionParser::normalize`` followed
by PHP's ``version_compare`` on the normalized strings, which is how Composer itself orders the
versions of a package (its constraints hold normalized versions and compare them with
``version_compare``; ``Constraint::versionCompare``).

Written here because no maintained PyPI package implements it: ``univers.versions.ComposerVersion``
is plain SemVer after stripping a ``v`` (it rejects ``1.2.3.4`` and ``1.0.0RC1``, and orders
``1.0.0-patch1`` below ``1.0.0`` and ``1.0.0-RC1`` below ``1.0.0-beta1``). The rules below are
checked against composer/semver's own test vectors (tests/VersionParserTest.php and
tests/ComparatorTest.php, held as data in tests/test_semantics_composer.py).

Normalization (``normalize``), the subset a package version can use:
- surrounding spaces, an ``as <alias>`` suffix, an ``@<stability>`` flag and ``+build`` metadata
  are dropped; ``master``/``trunk``/``default`` and ``dev-<name>`` are branches (``dev-<name>``);
- a classical version ``v?N(.N){0,3}`` is padded to four parts (``1.2`` → ``1.2.0.0``), at most
  five digits in the major part; a date/time version (``2010-01-02``, ``20100102-203040``) keeps
  its parts with ``.`` separators;
- a stability modifier follows with ``.``, ``_``, ``-`` or nothing: ``stable`` (dropped), ``RC``,
  ``beta``/``b``, ``alpha``/``a``, ``patch``/``pl``/``p`` (→ ``patch``), an optional number
  (``RC.15`` → ``RC15``), and an optional ``dev`` (``1.0.0RC1dev`` → ``1.0.0.0-RC1-dev``);
- ``1.x-dev`` / ``2.1.*-dev`` are numbered branches (``1.9999999.9999999.9999999-dev``);
- anything else is invalid (``1.0.0-meh``, ``1.0.1-SNAPSHOT``, ``1.0.0.0.0``, ``~1``).

Order (``compare``): PHP's ``version_compare`` splits the canonical form at ``.`` and at every
letter/digit change, compares numbers numerically and names by their special rank
``dev < alpha = a < beta = b < RC = rc < (a number) < patch = pl = p`` (any other name below
``dev``); when one side runs out, a following number makes the longer side greater, a following
name is ranked against "a number" (so ``1.0.0.0-beta`` < ``1.0.0.0`` < ``1.0.0.0-patch1``).
Branches (``dev-foo``) sort below every version; two different branches have no order.
"""
from __future__ import annotations

import functools
import re

__all__ = ["ComposerVersionError", "normalize", "compare", "php_version_compare"]


class ComposerVersionError(ValueError):
    """A string composer/semver's VersionParser rejects, or two branches that have no order."""


# composer/semver VersionParser::$modifierRegex; possessive quantifiers as upstream writes them.
_MODIFIER = r"[._-]?(?:(stable|beta|b|RC|alpha|a|patch|pl|p)((?:[.-]?\d+)*+)?)?([.-]?dev)?"
_CLASSICAL = re.compile(r"^v?(\d{1,5}+)(\.\d++)?(\.\d++)?(\.\d++)?" + _MODIFIER + r"$", re.I)
_DATE = re.compile(r"^v?(\d{4}(?:[.:-]?\d{2}){1,6}(?:[.:-]?\d{1,3}){0,2})" + _MODIFIER + r"$", re.I)
_ALIAS = re.compile(r"^([^,\s]++) ++as ++([^,\s]++)$")
_STABILITY_FLAG = re.compile(r"@(?:stable|RC|beta|alpha|dev)$", re.I)
_BUILD = re.compile(r"^([^,\s+]++)\+[^\s]++$")
_DEV_SUFFIX = re.compile(r"^(.*?)[.-]?dev$", re.I)
_BRANCH = re.compile(r"^v?(\d++)(\.(?:\d++|[xX*]))?(\.(?:\d++|[xX*]))?(\.(?:\d++|[xX*]))?$", re.I)
_EXPAND = {"a": "alpha", "b": "beta", "p": "patch", "pl": "patch", "rc": "RC"}


def _with_modifiers(version: str, m: re.Match, index: int) -> str:
    stability, number, dev = m.group(index), m.group(index + 1), m.group(index + 2)
    if stability:
        if stability == "stable":
            return version
        version += "-" + _EXPAND.get(stability.lower(), stability.lower()) + (number or "").lstrip(".-")
    if dev:
        version += "-dev"
    return version


def _normalize_branch(name: str) -> str:
    m = _BRANCH.match(name.strip())
    if not m:
        return "dev-" + name.strip()
    parts = "".join((m.group(i) if m.group(i) is not None else ".x").replace("*", "x").replace("X", "x")
                    for i in range(1, 5))
    return parts.replace("x", "9999999") + "-dev"


@functools.lru_cache(maxsize=65536)
def normalize(version: str) -> str:
    """composer/semver ``VersionParser::normalize`` (e.g. ``v1.0`` → ``1.0.0.0``, ``1.0.0-rc1`` →
    ``1.0.0.0-RC1``, ``master`` → ``dev-master``). Raises ComposerVersionError for a string
    Composer rejects."""
    v = version.strip()
    m = _ALIAS.match(v)
    if m:
        v = m.group(1)
    m = _STABILITY_FLAG.search(v)
    if m:
        v = v[:m.start()]
    if v in ("master", "trunk", "default"):
        v = "dev-" + v
    if v[:4].lower() == "dev-":
        return "dev-" + v[4:]
    m = _BUILD.match(v)
    if m:
        v = m.group(1)
    m = _CLASSICAL.match(v)
    if m:
        return _with_modifiers(m.group(1) + "".join(m.group(i) or ".0" for i in (2, 3, 4)), m, 5)
    m = _DATE.match(v)
    if m:
        return _with_modifiers(re.sub(r"\D", ".", m.group(1)), m, 2)
    m = _DEV_SUFFIX.match(v)
    if m:
        branch = _normalize_branch(m.group(1))
        if not branch.startswith("dev-"):  # only a numeric branch may end in -dev
            return branch
    raise ComposerVersionError(f"invalid Composer version {version!r}")


# -- PHP version_compare (ext/standard/versioning.c), on ASCII --------------------------------

def _dig(c: str) -> bool:
    return "0" <= c <= "9"


def _ndig(c: str) -> bool:
    return not _dig(c) and c != "."


def _canonical(v: str) -> str:
    """php_canonicalize_version: ``-``, ``_``, ``+`` become ``.``; a ``.`` goes between a digit
    and a non-digit (``1.0rc1`` → ``1.0.rc.1``; the non-digit is kept even when it is not
    alphanumeric); any other non-alphanumeric becomes ``.``; no two ``.`` in a row are added."""
    out = [v[0]]
    prev = v[0]
    for c in v[1:]:
        if c in "-_+":
            if out[-1] != ".":
                out.append(".")
        elif (_ndig(prev) and _dig(c)) or (_dig(prev) and _ndig(c)):
            if out[-1] != ".":
                out.append(".")
            out.append(c)
        elif not (c.isascii() and c.isalnum()):
            if out[-1] != ".":
                out.append(".")
        else:
            out.append(c)
        prev = c
    return "".join(out)


_SPECIAL = (("dev", 0), ("alpha", 1), ("a", 1), ("beta", 2), ("b", 2), ("RC", 3), ("rc", 3), ("#", 4),
            ("pl", 5), ("p", 5))


def _special(form: str) -> int:
    # the first name that is a prefix of the form (strncmp), -1 for none
    return next((rank for name, rank in _SPECIAL if form.startswith(name)), -1)


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _strtol(text: str) -> int:
    m = re.match(r"\d*", text)
    return int(m.group() or 0)


def php_version_compare(a: str, b: str) -> int:
    """PHP's ``version_compare(a, b)``: -1, 0 or 1 (the C loop of ext/standard/versioning.c:
    pieces are compared while both sides have one and both had a ``.`` before it; then the side
    with pieces left wins if the next one is a number, else that rest is ranked against "a
    number", ``#N#``)."""
    if not a or not b:
        return 0 if not a and not b else (1 if a else -1)
    p1 = (a if a[0] == "#" else _canonical(a)).split(".")
    p2 = (b if b[0] == "#" else _canonical(b)).split(".")
    i1 = i2 = 0
    more1 = more2 = True
    while p1[i1] and p2[i2] and more1 and more2:
        more1, more2 = i1 + 1 < len(p1), i2 + 1 < len(p2)
        x, y = p1[i1], p2[i2]
        if _dig(x[0]) and _dig(y[0]):
            r = _sign(_strtol(x) - _strtol(y))
        elif not _dig(x[0]) and not _dig(y[0]):
            r = _sign(_special(x) - _special(y))
        elif _dig(x[0]):
            r = _sign(_special("#N#") - _special(y))
        else:
            r = _sign(_special(x) - _special("#N#"))
        if r:
            return r
        i1 += more1
        i2 += more2
    # a rest that starts with "." (only a version that itself starts with one) would recurse
    # forever, in PHP too: it is ranked as the empty string (below everything)
    if more1:
        rest = p1[i1:]
        if _dig(rest[0][:1] or "x"):
            return 1
        return -1 if not rest[0] and len(rest) > 1 else php_version_compare(".".join(rest), "#N#")
    if more2:
        rest = p2[i2:]
        if _dig(rest[0][:1] or "x"):
            return -1
        return 1 if not rest[0] and len(rest) > 1 else php_version_compare("#N#", ".".join(rest))
    return 0


def compare(a: str, b: str) -> int:
    """Order two Composer versions (-1, 0, 1): normalize both, then ``version_compare``; a branch
    (``dev-…``) sorts below every version. Raises ComposerVersionError for an invalid version or
    two different branches."""
    na, nb = normalize(a), normalize(b)
    ba, bb = na.startswith("dev-"), nb.startswith("dev-")
    if ba and bb:
        if na == nb:
            return 0
        raise ComposerVersionError(f"branches {a!r} and {b!r} have no order")
    return php_version_compare(na, nb)
