"""RustSec advisories -> OSV documents, following RustSec's own OSV export (the rustsec crate,
``src/osv/unaffected_range.rs`` and ``ranges_for_advisory.rs``), not the project's converter.

``patched`` and ``unaffected`` are Cargo requirements of NOT affected versions. Each becomes an
interval: ``>= x`` / ``> x`` / ``<= x`` / ``< x`` bounds (partial versions padded with 0), ``= x``
the point, ``^x`` / bare ``x`` up to the next breaking version and ``~x`` up to the next minor
(major for ``~1``), both with an exclusive ``-0`` end so pre-releases of the next version are
outside. The affected ranges are the gaps between the sorted intervals; an exclusive start / an
inclusive end becomes the next SemVer version (``1.2.3`` -> ``1.2.4-0``, ``1.2.3-pre`` ->
``1.2.3-pre.0``). No requirement at all means every version is affected. Overlapping intervals
or unsupported operators make the advisory unconvertible (RustSec itself rejects them).
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import semantic_version

from tests.differential.corpus import Affected, Record

_FENCE = re.compile(r"\A\s*```toml[ \t]*\r?\n(.*?)\r?\n```", re.S)
_COMPARATOR = re.compile(
    r"^\s*(>=|<=|>|<|=|\^|~)?\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?\s*$")


class Unconvertible(ValueError):
    """A requirement RustSec's converter would reject."""


Bound = tuple[str, semantic_version.Version | None]  # ("unbounded"|"incl"|"excl", version)


def _version(major: int, minor: int, patch: int, pre: str | None) -> semantic_version.Version:
    return semantic_version.Version(major=major, minor=minor, patch=patch,
                                    prerelease=tuple(pre.split(".")) if pre else ())


def _interval(req: str) -> tuple[Bound, Bound]:
    parts = [p for p in req.split(",") if p.strip()]
    if req.strip() == "*":
        return ("unbounded", None), ("unbounded", None)
    if len(parts) > 2:
        raise Unconvertible(f"too many comparators: {req!r}")
    start: Bound = ("unbounded", None)
    end: Bound = ("unbounded", None)
    for part in parts:
        m = _COMPARATOR.match(part)
        if not m:
            raise Unconvertible(f"unsupported requirement {req!r}")
        op, major, minor, patch, pre = m.groups()
        op = op or "^"  # a bare version is a caret requirement in Cargo
        v = _version(int(major), int(minor or 0), int(patch or 0), pre)
        if op in (">", ">="):
            if start[0] != "unbounded":
                raise Unconvertible(f"two lower bounds: {req!r}")
            start = ("excl" if op == ">" else "incl", v)
        elif op in ("<", "<="):
            if end[0] != "unbounded":
                raise Unconvertible(f"two upper bounds: {req!r}")
            end = ("excl" if op == "<" else "incl", v)
        else:
            if len(parts) != 1:
                raise Unconvertible(f"{op} must be alone: {req!r}")
            if op == "=":
                start, end = ("incl", v), ("incl", v)
                continue
            ma = int(major)
            if op == "^":
                if ma == 0:
                    if minor is None:
                        top = (1, 0, 0)
                    elif int(minor) == 0 and patch is not None:
                        top = (0, 0, int(patch) + 1)
                    else:
                        top = (0, int(minor) + 1, 0)
                else:
                    top = (ma + 1, 0, 0)
            else:  # "~"
                top = (ma + 1, 0, 0) if minor is None else (ma, int(minor) + 1, 0)
            start, end = ("incl", v), ("excl", _version(*top, "0"))
    return start, end


def _increment(v: semantic_version.Version) -> semantic_version.Version:
    if not v.prerelease:
        return _version(v.major, v.minor, v.patch + 1, "0")
    return _version(v.major, v.minor, v.patch, ".".join(v.prerelease) + ".0")


def _le(start: Bound, end: Bound) -> bool:
    """start <= end for a start bound and an end bound (RustSec's Bound::less_or_equal)."""
    if start[0] == "unbounded" or end[0] == "unbounded":
        return True
    if start[1] < end[1]:
        return True
    return start[0] == end[0] == "incl" and start[1] == end[1]


def requirements_to_events(unaffected: list[str], patched: list[str]) -> tuple[tuple[str, str], ...]:
    """OSV SEMVER events of the affected versions; raises Unconvertible like RustSec would."""
    intervals = [_interval(r) for r in [*unaffected, *patched]]
    if not intervals:
        return (("introduced", "0"),)
    for s, e in intervals:
        if not _le(s, e):
            raise Unconvertible(f"empty interval {s} {e}")
    for i, a in enumerate(intervals):
        for b in intervals[i + 1:]:
            if _le(a[0], b[1]) and _le(b[0], a[1]):
                raise Unconvertible(f"overlapping requirements {a} {b}")
    intervals.sort(key=lambda iv: (iv[0][0] != "unbounded", iv[0][1] or semantic_version.Version("0.0.0")))
    events: list[tuple[str, str]] = []
    first = intervals[0][0]
    if first[0] != "unbounded":
        events += [("introduced", "0"), ("fixed", str(first[1] if first[0] == "incl" else _increment(first[1])))]
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        lo = end[1] if end[0] == "excl" else _increment(end[1])
        hi = start[1] if start[0] == "incl" else _increment(start[1])
        events += [("introduced", str(lo)), ("fixed", str(hi))]
    last = intervals[-1][1]
    if last[0] != "unbounded":
        events.append(("introduced", str(last[1] if last[0] == "excl" else _increment(last[1]))))
    return tuple(events)


def rustsec_records(root: Path) -> list[Record]:
    """One OSV record per RustSec advisory (ecosystem crates.io); an advisory whose requirements
    RustSec's converter rejects gets no ranges and ``database_specific.unconvertible``."""
    out = []
    for p in sorted((root / "rustsec").glob("*/*/*.md")):
        meta = tomllib.loads(_FENCE.match(p.read_text(encoding="utf-8")).group(1))
        adv, versions = meta["advisory"], meta.get("versions", {})
        logical = "@shared-data//" + p.relative_to(root).as_posix()
        doc = {"id": adv["id"], "modified": f"{adv['date']}T00:00:00Z", "published": f"{adv['date']}T00:00:00Z",
               "aliases": list(adv.get("aliases", [])), "summary": "", "details": ""}
        try:
            events = requirements_to_events(list(versions.get("unaffected", [])), list(versions.get("patched", [])))
            ranges = ({"type": "SEMVER", "events": [{k: v} for k, v in events]},)
            doc["database_specific"] = {}
        except Unconvertible as exc:
            events, ranges = None, ()
            doc["database_specific"] = {"unconvertible": str(exc)}
        doc["affected"] = [{"package": {"ecosystem": "crates.io", "name": adv["package"]}, "ranges": list(ranges)}]
        if adv.get("withdrawn"):
            text = str(adv["withdrawn"])
            doc["withdrawn"] = text if "T" in text else f"{text}T00:00:00Z"
        affected = [] if events is None else [Affected(
            record_id=adv["id"], dataset="rustsec", path=logical, ecosystem="crates.io", name=adv["package"],
            ranges=(("SEMVER", events),), versions=(), aliases=tuple(sorted(set(adv.get("aliases", [])))))]
        out.append(Record(id=adv["id"], dataset="rustsec", path=logical, osv=doc,
                          withdrawn=bool(adv.get("withdrawn")), affected=affected))
    return out
