"""Probe versions: for every range event value, the value itself, a version just below and just
above it, pre-releases (and Go pseudo-versions) of it, plus a few listed ``versions`` and a
far-future version per package.

``probe_versions(affected)`` gives the candidate probes of one ``Affected`` (already spelled as a
lockfile writes them: Go versions with ``v``, Go majors >= 2 of a module without ``/vN`` with
``+incompatible``); ``build_probes(records, per_record=None, seed=...)`` groups them per package
(ecosystem, package key) and, when ``per_record`` is set, keeps a deterministic seeded subset of
each record's candidates (always at least one per affected entry). Every generated version is
checked against the ecosystem's ordering in ``orderings.py``; versions it rejects are dropped
(counted in ``ProbeSet.invalid``), so a probe never fails a tool for being malformed.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from tests.differential.corpus import Affected, Record, base_ecosystem, package_key
from tests.differential.orderings import Unorderable, compare

_NUM = re.compile(r"\d+")


@dataclass(frozen=True)
class Package:
    ecosystem: str    # full OSV ecosystem ("Alpine:v3.10")
    key: str          # OSV identity (PEP 503 for PyPI)
    spelling: str     # how lockfiles / the SBOM write the name

    @property
    def base(self) -> str:
        return base_ecosystem(self.ecosystem)


@dataclass
class ProbeSet:
    """Probes per package and the affected entries that apply to each package."""

    versions: dict[Package, list[str]] = field(default_factory=dict)
    affected: dict[Package, list[Affected]] = field(default_factory=dict)
    invalid: int = 0

    def count(self) -> int:
        return sum(len(v) for v in self.versions.values())


def _bump(text: str, delta: int, *, last: bool = True) -> str | None:
    """Change the last (or first) number in ``text`` by ``delta``; None when it would go < 0."""
    nums = list(_NUM.finditer(text))
    if not nums:
        return None
    m = nums[-1] if last else nums[0]
    value = int(m.group()) + delta
    if value < 0:
        return None
    return text[:m.start()] + str(value) + text[m.end():]


def _below_release(parts: list[int]) -> list[int] | None:
    """The release "just below" ``parts`` in a numeric dotted scheme (1.2.0 -> 1.1.999)."""
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] > 0:
            return parts[:i] + [parts[i] - 1] + [999] * (len(parts) - i - 1)
    return None


def _dotted(parts: list[int]) -> str:
    return ".".join(map(str, parts))


_SEMVER = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$")


def _semver_family(v: str, *, go: bool) -> list[str]:
    m = _SEMVER.match(v)
    if not m:
        return []
    major, minor, patch = (int(x or 0) for x in m.group(1, 2, 3))
    pre = m.group(4)
    base = [major, minor, patch]
    out = [f"{_dotted(base)}-{pre}" if pre else _dotted(base)]
    if pre:
        out += [_dotted(base), f"{_dotted(base)}-{pre}.1", f"{_dotted(base)}-0"]
        if go:
            out.append(f"{_dotted(base)}-{pre}.0.20200101000000-abcdefabcdef")
    else:
        below = _below_release(base)
        out += [_dotted(below)] if below else []
        out += [_dotted([major, minor, patch + 1]), f"{_dotted(base)}-rc.1", f"{_dotted(base)}-alpha",
                f"{_dotted(base)}-0"]
        if go:  # pseudo-versions: the base release's successor and, below it, the pre-release form
            out += [f"{_dotted([major, minor, patch + 1])}-0.20200101000000-abcdefabcdef",
                    f"{_dotted(base)}-0.20200101000000-abcdefabcdef"]
    return out


def _pep440(v: str) -> list[str]:
    from packaging.version import InvalidVersion, Version

    try:
        pv = Version(v)
    except InvalidVersion:
        return [v]  # still probe the value itself: tools must say something about it
    rel = list(pv.release)
    out = [v]
    if pv.is_prerelease or pv.is_postrelease or pv.local:
        out += [_dotted(rel), f"{v}.post1" if not pv.is_postrelease and not pv.local and not pv.dev else None]
    else:
        below = _below_release(rel)
        out += [_dotted(below)] if below else []
        out += [_dotted(rel[:-1] + [rel[-1] + 1]), f"{v}.post1", f"{v}rc1", f"{v}a1", f"{v}.dev0"]
    return [x for x in out if x]


def _dotted_family(v: str, pre: tuple[str, ...], post: tuple[str, ...]) -> list[str]:
    """Maven, NuGet, RubyGems, Packagist: numeric neighbours plus qualifier suffixes."""
    out = [v]
    m = re.match(r"^(v?)(\d+(?:\.\d+)*)(.*)$", v)
    if not m:
        return out
    prefix, release, rest = m.groups()
    parts = [int(x) for x in release.split(".")]
    below = _below_release(parts)
    if below:
        out.append(prefix + _dotted(below))
    out.append(prefix + _dotted(parts[:-1] + [parts[-1] + 1]))
    if not rest:
        out += [f"{v}{s}" for s in (*pre, *post)]
    else:
        out.append(prefix + release)
    return out


def _apk(v: str) -> list[str]:
    m = re.match(r"^(.*?)(?:-r(\d+))?$", v)
    pkgver, rev = m.group(1), int(m.group(2) or 0)
    out = [v, f"{pkgver}-r{rev + 1}"]
    out.append(f"{pkgver}-r{rev - 1}" if rev > 0 else None)
    bumped_down, bumped_up = _bump(pkgver, -1), _bump(pkgver, 1)
    out += [f"{bumped_down}-r9" if bumped_down else None, f"{bumped_up}-r0" if bumped_up else None]
    if re.match(r"^[\d.]+[a-z]?$", pkgver):
        out += [f"{pkgver}_rc1-r0", f"{pkgver}_pre1-r0", f"{pkgver}_alpha1-r0", f"{pkgver}_p1-r0",
                f"{pkgver}_git20200101-r0"]
    return [x for x in out if x]


def _deb(v: str) -> list[str]:
    out = [v, f"{v}~1", f"{v}+1", f"{v}build1"]
    down = _bump(v, -1)
    if down:
        out.append(down)
    return out


_FAR = {"PyPI": "99999", "Maven": "9999", "NuGet": "9999.0.0", "RubyGems": "9999", "Packagist": "9999.0.0",
        "Alpine": "9999-r0", "Ubuntu": "99:1.0-1", "Debian": "99:1.0-1"}
_LOW = {"PyPI": "0.0.1", "Maven": "0.0.1", "NuGet": "0.0.1", "RubyGems": "0.0.1", "Packagist": "0.0.1",
        "Alpine": "0.0.1-r0", "Ubuntu": "0.0.1-1", "Debian": "0.0.1-1"}


def _candidates(base: str, v: str) -> list[str]:
    if base in ("Go", "npm", "crates.io", "Pub", "Hex", "SwiftURL"):
        return _semver_family(v, go=base == "Go")
    if base == "PyPI":
        return _pep440(v)
    if base == "Maven":
        return _dotted_family(v, ("-SNAPSHOT", "-rc1", "-alpha1", "-M1"), (".RELEASE", "-sp1", ".Final"))
    if base == "NuGet":
        return _dotted_family(v, ("-beta", "-rc.1", "-alpha.2"), (".1",))
    if base == "RubyGems":
        return _dotted_family(v, (".pre", ".rc1", ".beta.1"), (".1",))
    if base == "Packagist":
        return [*_dotted_family(v, ("-beta1", "-RC1", "-alpha"), (".1",)), *([f"v{v}"] if v[:1].isdigit() else [])]
    if base == "Alpine":
        return _apk(v)
    if base in ("Ubuntu", "Debian"):
        return _deb(v)
    return [v]


def _go_spelling(module: str, v: str) -> str | None:
    """How go.mod (or a golang purl) writes OSV Go version ``v`` of ``module`` (None: not a
    valid version of it: a major that does not match the module path's ``/vN``)."""
    if module in ("stdlib", "toolchain"):
        return f"v{v}"  # written in an SBOM only (no lockfile states them, see lockfiles.py)
    m = re.search(r"(?:/v|\.v)(\d+)$", module)
    try:
        major = int(v.split(".", 1)[0])
    except ValueError:
        return None
    if m and not module.startswith("gopkg.in/"):
        return f"v{v}" if major == int(m.group(1)) else None
    if module.startswith("gopkg.in/"):
        return f"v{v}" if m and major == int(m.group(1)) else None
    if major >= 2:
        return None if "+" in v else f"v{v}+incompatible"
    return f"v{v}"


def probe_versions(aff: Affected, listed: int = 2) -> list[str]:
    """Candidate probes for one affected entry, spelled for lockfiles (see module doc)."""
    base = base_ecosystem(aff.ecosystem)
    anchors: list[str] = []
    for rtype, events in aff.ranges:
        if rtype == "GIT":
            continue
        anchors += [ver for kind, ver in events if not (kind == "introduced" and ver == "0") and "*" not in ver]
    anchors += sorted(aff.versions, key=lambda s: hashlib.sha256(s.encode()).digest())[:listed]
    out = [_LOW.get(base, "0.0.1"), _FAR.get(base, "999.0.0")]
    if base == "Go":  # the low and far versions must keep the major a /vN module path names
        m = re.search(r"(?:/v|\.v)(\d+)$", aff.name)
        major = int(m.group(1)) if m else 0
        out = [f"{major}.0.1", f"{max(major, 1)}.999.0"]
    for a in dict.fromkeys(anchors):
        out += _candidates(base, a)
    if base == "Go":
        out = [s for s in (_go_spelling(aff.name, v) for v in out) if s]
    return list(dict.fromkeys(out))


def _valid(eco: str, v: str) -> bool:
    try:
        compare(eco, v, v)
        return True
    except Unorderable:
        return False


def _spelling(affs: list[Affected]) -> str:
    """The most common spelling among the records (ties: code-point order)."""
    counts: dict[str, int] = {}
    for a in affs:
        counts[a.name] = counts.get(a.name, 0) + 1
    return min(counts, key=lambda n: (-counts[n], n))


def _seeded(items: list[str], salt: str, n: int) -> list[str]:
    return sorted(items, key=lambda s: hashlib.sha256(f"{salt}\0{s}".encode()).digest())[:n]


def build_probes(records: list[Record], per_record: int | None = None, per_package: int | None = None,
                 seed: str = "stella-diff-1") -> ProbeSet:
    """Probes of every non-withdrawn record, grouped by package.

    ``per_record``: keep a seeded subset of that many candidates per affected entry (all when
    None). ``per_package``: at most that many probes per package, taken round-robin over the
    package's records in a seeded order (each record's first candidate, then each one's second,
    ...), so that as many records as possible contribute a probe of their own. Every probe is
    compared with every record of its package: the comparisons of a package grow with
    (probes x records), which is what ``per_package`` bounds for the many-record packages
    (tensorflow, Go's stdlib, mattermost...).
    """
    by_pkg: dict[tuple[str, str], list[Affected]] = {}
    for rec in records:
        if rec.withdrawn:
            continue
        for aff in rec.affected:
            by_pkg.setdefault(aff.key, []).append(aff)
    out = ProbeSet()
    for (eco, key), affs in sorted(by_pkg.items()):
        pkg = Package(eco, key, _spelling(affs))
        lists: list[list[str]] = []
        for aff in sorted(affs, key=lambda a: hashlib.sha256(f"{seed}\0{a.record_id}\0{a.path}".encode()).digest()):
            cands = probe_versions(aff)
            good = [v for v in cands if _valid(eco, v) or base_ecosystem(eco) == "PyPI"]
            out.invalid += len(cands) - len(good)
            if per_record is not None:
                good = _seeded(good, f"{seed}\0{aff.record_id}\0{aff.path}", per_record)
            lists.append(good)
        chosen: dict[str, None] = {}
        for depth in range(max((len(x) for x in lists), default=0)):
            for cands in lists:
                if depth < len(cands) and (per_package is None or len(chosen) < per_package):
                    chosen.setdefault(cands[depth], None)
        out.versions[pkg] = list(chosen)
        out.affected[pkg] = affs
    return out


__all__ = ["Package", "ProbeSet", "build_probes", "probe_versions", "package_key"]
