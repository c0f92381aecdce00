"""The OSV evaluation algorithm, written from the schema text (ossf.github.io/osv-schema/#evaluation).

    IsVulnerable(v) = v in versions OR any range r (not GIT): BeforeLimits(v, r) and the walk over
    sorted(r.events) ends "vulnerable", where the walk sets vulnerable on ``introduced`` (v >= it;
    "0" sorts before every version), clears it on ``fixed`` (v >= it) and on ``last_affected``
    (v > it); BeforeLimits is true when the range has no ``limit`` or v < some limit ("*" is
    infinity).

The schema leaves the order of events with EQUAL versions open; this walk keeps them in source
order (a stable sort), which is also what a reader of the record would do. The per-ecosystem
ordering comes from ``orderings.py`` (independent of the project's).
"""
from __future__ import annotations

import functools
from typing import Callable

from tests.differential.corpus import Ranges
from tests.differential.orderings import Unorderable
from tests.differential.orderings import compare as _compare

Compare = Callable[[str, str, str], int]  # (ecosystem, a, b) -> -1 / 0 / 1

__all__ = ["spec_affected", "Unorderable"]


def _before_limits(compare: Compare, eco: str, v: str, events) -> bool:
    limits = [ver for kind, ver in events if kind == "limit"]
    if not limits:
        return True
    return any("*" in lim or compare(eco, v, lim) < 0 for lim in limits)


def _sort_key(compare: Compare, eco: str):
    def cmp(x: tuple[str, str], y: tuple[str, str]) -> int:
        zx = x[0] == "introduced" and x[1] == "0"
        zy = y[0] == "introduced" and y[1] == "0"
        if zx or zy:
            return (not zx) - (not zy)
        return compare(eco, x[1], y[1])
    return functools.cmp_to_key(cmp)


def _in_range(compare: Compare, eco: str, v: str, events) -> bool:
    if not _before_limits(compare, eco, v, events):
        return False
    vulnerable = False
    for kind, ver in sorted((e for e in events if e[0] != "limit"), key=_sort_key(compare, eco)):
        if kind == "introduced":
            if ver == "0" or compare(eco, v, ver) >= 0:
                vulnerable = True
        elif kind == "fixed":
            if compare(eco, v, ver) >= 0:
                vulnerable = False
        elif kind == "last_affected":
            if compare(eco, v, ver) > 0:
                vulnerable = False
    return vulnerable


def spec_affected(ecosystem: str, version: str, ranges: Ranges, versions: tuple[str, ...],
                  compare: Compare = _compare) -> bool:
    """True when ``version`` is affected per the OSV evaluation; raises Unorderable when a
    version involved is not valid in the ecosystem's ordering (listed ``versions`` are matched
    as exact strings first, as the schema's IncludedInVersions does). ``compare`` replaces the
    ecosystem ordering (upstream_models.py uses it to reproduce a scanner's own ordering)."""
    if version in versions:
        return True
    for rtype, events in ranges:
        if rtype == "GIT":
            continue
        if _in_range(compare, ecosystem, version, events):
            return True
    return False
