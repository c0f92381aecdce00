"""Mapping of normalized advisories (``stella_build.rules.evidence.model.Advisory``) to Trivy DB schema v2.

Facts: /work/shared/docs/reference/trivy-db-format.md §A and aquasecurity/trivy-db
``pkg/vulnsrc/osv/{osv.go,range.go}``, ``pkg/vulnsrc/vulnerability/{const.go,vulnerability.go}``.

Layout produced (all names UTF-8):
- language packages: ``<eco>::<data source name>`` / ``<Trivy package name>`` / ``<vuln id>`` →
  ``{"PatchedVersions":[…],"VendorIDs":[…],"VulnerableVersions":[…]}``;
- Alpine: ``alpine <major.minor>`` (or ``alpine edge``) / ``<origin package>`` / ``<vuln id>`` →
  ``{"FixedVersion":"…"}``;
- ``data-source`` / ``<bucket name>`` → ``{"ID","Name","URL"}`` (struct order);
- ``vulnerability`` / ``<vuln id>`` → merged ``Vulnerability`` (struct order).

Choices (documented in docs/trivy-db.md):
- Vulnerability ids follow trivy-db's ``groupVulnIDs``: the CVE ids among id + aliases are the keys
  (one entry each), the other ids become ``VendorIDs``; without a CVE the record's own id is the
  key and all aliases are ``VendorIDs``.
- ``VulnerableVersions`` are the OSV evaluation's own intervals (``versions.vulnerable_intervals``:
  events sorted whatever the file order, ``limit`` applied), one constraint per interval:
  ``>=a, <b`` / ``>=a, <=b`` / ``=a`` / ``>=a``; an interval from the very beginning has no lower
  bound (``<b``), and "every version" (``introduced 0`` with nothing closing it) is the pair
  ``<=0``, ``>=0`` (``EVERY_VERSION``; a lone ``>=0`` misses Go pseudo-versions and pre-releases:
  ``0.0.0-2021…`` < ``0``).
  Every Trivy comparer evaluates these as plain version order: go-version (Go, Cargo, NuGet,
  Composer, Pub, Hex, Swift) has no pre-release rule, and Trivy runs the PEP 440 and npm
  comparers with pre-releases included. Explicit ``versions`` not inside a range are added as
  ``=v``; GIT ranges are ignored. A record with a version its ecosystem cannot order is listed
  invalid by the sources (json:policy skips it); if one reaches the mapping its events are
  written in file order (trivy-db's osv/range.go walk) without ``limit``. Packagist is ordered as
  Composer orders it (``versions.composer_compare``).
- Alpine records naming a version apk-tools rejects (``2.7.16-33``) are not written
  (``NotMappable``, code ``unorderable-version``, listed in mapping.json), as json:policy lists
  them invalid.
- Package keys: trivy-db ``NormalizePkgName`` of every spelling a Trivy parser can look the
  package up by (``trivy_pkg_names``): for PyPI the record's spelling, its PEP 503 form (``-``)
  and its all-``.`` form (``zope.interface``, ``zope-interface``), since Trivy lower-cases and
  maps ``_`` to ``-`` but keeps ``.``; every other ecosystem has one spelling after Trivy's own
  lower-casing (npm, Maven, NuGet, Composer…) or is case-sensitive (Go).
- Alpine ``FixedVersion`` is the highest fixed version (apk order) of the id in the branch
  (``versions.alpine_fixed_version``).
- Severity: ``rules/evidence/severity.py`` decides the level of each record (CVSS v4 > v3.1 >
  v3.0 > v2 > labels) for ``VendorSeverity`` and ``Severity``, as json:policy does.
- ``PatchedVersions`` are the ``fixed`` versions, except those still affected by another range
  or record of the same key (trivy-db keeps them, which makes Trivy miss e.g. a fixed version
  of one range that lies inside another). This keeps Trivy's "vulnerable and not patched" rule
  equal to OSV's "in any range" evaluation.
- Records colliding on (bucket, package, vuln id) after normalization merge: range lists are
  concatenated and deduplicated in a canonical member order, VendorIDs are unioned.
- Withdrawn records and records that can match nothing (no evaluable range, no versions, or an
  Alpine "0" not-affected marker) are left out.
- Advisory values are "marshalled twice" (sorted keys, numbers as float64); ``vulnerability`` and
  ``data-source`` values keep Go struct field order.
- Distribution records (Debian, Ubuntu, AlmaLinux, Rocky Linux, openSUSE / SUSE, Wolfi,
  Chainguard) go to Trivy's OS buckets as ``{"FixedVersion","Status","VendorIDs"}``
  (``formats/trivy/distros.py``: bucket names, package keys, one fixed version per key).
- ``trivy_route`` says where a record goes, or raises ``NotMappable`` with the reason a record is
  left out (an ecosystem without a Trivy bucket, an unknown distribution or release): the
  trivy:db build lists those in its ``mapping.json``, never drops them silently.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from stella_build.rules.evidence.distros import Distro
from stella_build.rules.evidence.model import Advisory
from stella_build.rules.formats.trivy.distros import (
    STATUS_AFFECTED, NotMappable, merge_os_fixed, os_bucket, os_fixed_version, os_package_keys,
)
from stella_build.rules.formats.trivy.gojson import GoMap, go_marshal, omit_empty
from stella_build.rules.evidence.severity import effective_severity
from stella_build.rules.evidence.versions import (
    VersionError, affected, alpine_fixed_version, vulnerable_intervals,
)

__all__ = [
    "DataSource", "TRIVY_ECOSYSTEMS", "trivy_ecosystem", "trivy_pkg_name", "trivy_pkg_names", "group_vuln_ids",
    "vulnerable_versions", "patched_versions", "alpine_bucket", "advisory_entries",
    "vulnerability_detail", "merge_vulnerability", "merge_advisories", "advisory_value",
    "severity_from_label", "score_to_severity", "SOURCE_PRECEDENCE", "SEVERITY_NAMES",
    "trivy_route", "record_entries", "NotMappable",
]

# OSV ecosystem → Trivy ecosystem prefix (trivy-db osv.go convertEcosystem).
TRIVY_ECOSYSTEMS = {
    "PyPI": "pip", "Go": "go", "npm": "npm", "crates.io": "cargo", "Maven": "maven",
    "RubyGems": "rubygems", "NuGet": "nuget", "Packagist": "composer", "Hex": "erlang",
    "Pub": "pub", "SwiftURL": "swift", "Bitnami": "bitnami", "Kubernetes": "k8s",
}

SEVERITY_NAMES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
_LABELS = {"LOW": 1, "MODERATE": 2, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4, "IMPORTANT": 3}

# trivy-db AllSourceIDs: precedence for Title / Description / CweIDs / Severity. Source ids not
# listed here (our own data sources) come after, in code-point order.
SOURCE_PRECEDENCE = (
    "nvd", "redhat", "redhat-oval", "debian", "ubuntu", "alpine", "amazon", "oracle-oval",
    "suse-cvrf", "photon", "arch-linux", "alma", "rocky", "cbl-mariner", "azure",
    "ruby-advisory-db", "php-security-advisories", "nodejs-security-wg", "ghsa", "glad", "aqua",
    "osv", "k8s", "wolfi", "chainguard", "bitnami", "govulndb", "echo", "minimos", "rootio",
)
_RANK = {s: i for i, s in enumerate(SOURCE_PRECEDENCE)}


@dataclass(frozen=True)
class DataSource:
    """Trivy's ``types.DataSource`` (the value of ``data-source/<bucket>``)."""

    id: str
    name: str
    url: str = ""

    def to_json_bytes(self) -> bytes:
        return go_json(omit_empty({"ID": self.id, "Name": self.name, "URL": self.url}))


ALPINE_SECDB = DataSource("alpine", "Alpine Secdb", "https://secdb.alpinelinux.org/")


def trivy_ecosystem(osv_ecosystem: str) -> str | None:
    """Trivy's ecosystem prefix for a language ecosystem, ``"alpine"`` for Alpine, else None."""
    base = osv_ecosystem.split(":", 1)[0]
    if base == "Alpine":
        return "alpine"
    return TRIVY_ECOSYSTEMS.get(base)


def trivy_route(ecosystem: str) -> tuple[str, str, Distro | None]:
    """Where records of an OSV ecosystem go: ``("lang", <eco prefix>, None)``,
    ``("alpine", <bucket>, None)`` or ``("distro", <bucket>, <Distro>)``.

    Raises NotMappable (with the reason) for an ecosystem Trivy has no bucket for: GIT-only
    records, language ecosystems Trivy does not scan, unknown distributions or releases."""
    base = ecosystem.split(":", 1)[0]
    if base == "Alpine":
        return "alpine", alpine_bucket(ecosystem), None
    eco = TRIVY_ECOSYSTEMS.get(base)
    if eco is not None:
        return "lang", eco, None
    if base == "GIT":
        raise NotMappable("GIT-only record: Trivy has no commit-range buckets", "git-only")
    try:
        bucket, d = os_bucket(ecosystem)
    except NotMappable as exc:
        if str(exc).startswith("unknown distribution"):
            raise NotMappable(f"no Trivy bucket for ecosystem {base!r}", "no-trivy-bucket") from None
        raise
    return "distro", bucket, d


def trivy_pkg_name(trivy_eco: str, name: str) -> str:
    """trivy-db ``NormalizePkgName``: the package key Trivy looks up."""
    if trivy_eco == "pip":
        return name.lower().replace("_", "-")
    if trivy_eco == "swift":
        name = name[len("https://"):] if name.startswith("https://") else name
        return name[:-len(".git")] if name.endswith(".git") else name
    if trivy_eco in ("go", "cocoapods", "alpine"):
        return name
    return name.lower()


_PEP503 = re.compile(r"[-_.]+")


def trivy_pkg_names(trivy_eco: str, name: str) -> list[str]:
    """Every package key a Trivy parser can look this package up by (first: ``trivy_pkg_name``).

    PyPI: Trivy lower-cases and maps ``_`` to ``-`` but keeps ``.`` (requirements.txt
    ``ruamel.yaml``, poetry.lock / uv.lock ``ruamel-yaml``), so the record is keyed under its own
    spelling, the PEP 503 form and the all-``.`` form. Names that mix ``.`` and ``-`` are found
    under their own spelling and the two uniform forms, not under other mixes.
    """
    first = trivy_pkg_name(trivy_eco, name)
    if trivy_eco != "pip":
        return [first]
    pep503 = _PEP503.sub("-", name).lower()
    return list(dict.fromkeys((first, pep503, pep503.replace("-", "."))))


def group_vuln_ids(vid: str, aliases: Iterable[str]) -> tuple[list[str], list[str]]:
    """(keys, VendorIDs) as trivy-db's ``groupVulnIDs``: CVE ids are the keys when present."""
    ids = [*aliases, vid]
    cves = [a for a in ids if a.startswith("CVE-")]
    if not cves:
        return [vid], [a for a in aliases if a != vid]
    return list(dict.fromkeys(cves)), list(dict.fromkeys(a for a in ids if not a.startswith("CVE-")))


def alpine_bucket(ecosystem: str) -> str:
    """``Alpine:v3.18`` → ``alpine 3.18``; ``Alpine:edge`` → ``alpine edge``."""
    release = ecosystem.partition(":")[2]
    if release.startswith("v"):
        release = release[1:]
    return f"alpine {release}" if release else "alpine"


# -- version ranges ---------------------------------------------------------------------------

def _range_string(start: str, end: str | None, inclusive: bool) -> str:
    """trivy-db osv/range.go's constraint text (used for ecosystems we cannot order)."""
    if inclusive and start == end:
        return f"={start}"
    if end is None:
        return f">={start}"
    upper = f"<={end}" if inclusive else f"<{end}"
    return upper if start == "0" else f">={start}, {upper}"


# "Every version": two constraints whose union is every version a Trivy comparer can parse, with
# no ecosystem-specific minimum (a lone ">=0" misses what sorts below 0: Go pseudo-versions
# "0.0.0-2021…", "0.0.0-alpha", PEP 440 "0.dev1", Maven "0-alpha"). "<=" rather than "<" keeps
# Trivy's FixedVersion display (createFixedVersions reads "<x" as "fixed in x") empty.
EVERY_VERSION = ("<=0", ">=0")


def _interval_strings(lower: str | None, upper: str | None, inclusive: bool) -> tuple[str, ...]:
    if upper is None:
        return EVERY_VERSION if lower is None else (f">={lower}",)
    bound = f"<={upper}" if inclusive else f"<{upper}"
    if lower is None:
        return (bound,)
    if inclusive and lower == upper:
        return (f"={lower}",)
    return (f">={lower}, {bound}",)


def _ranges_json(ranges: Iterable[Any]) -> list[dict]:
    """Ranges as plain dicts ``{"type", "events": [{"kind", "version"}]}`` (canonical form)."""
    out = []
    for r in ranges:
        if isinstance(r, dict):
            out.append({"type": r["type"], "events": [dict(e) for e in r["events"]]})
        else:
            out.append({"type": r.type, "events": [{"kind": e.kind, "version": e.version} for e in r.events]})
    return out


def _file_order_spans(r: dict) -> list[str]:
    spans: list[list] = []  # [start, end, inclusive]
    current = None
    for e in r["events"]:
        kind, ver = e["kind"], e["version"]
        if kind == "introduced":
            current = [ver, None, False]
            spans.append(current)
        elif kind in ("fixed", "last_affected"):
            if current is None:  # a close without an open: from the beginning
                current = ["0", None, False]
                spans.append(current)
            current[1], current[2] = ver, kind == "last_affected"
    return [_range_string(s, e, inc) for s, e, inc in spans]


def vulnerable_versions(ecosystem: str, ranges: list[dict], versions: Iterable[str]) -> list[str]:
    """``VulnerableVersions`` constraints of one record (see the module docstring)."""
    out: list[str] = []
    for r in ranges:
        if r["type"] == "GIT":
            continue
        try:
            out += [c for iv in vulnerable_intervals(ecosystem, r) for c in _interval_strings(*iv)]
        except VersionError:
            out += _file_order_spans(r)
    evaluable = [r for r in ranges if r["type"] != "GIT"]
    for v in versions:
        try:
            inside = affected(ecosystem, v, evaluable)
        except VersionError:
            inside = False
        if not inside and _installable(ecosystem, v):
            out.append(f"={v}")
    return list(dict.fromkeys(out))


_SEMVER_ECOSYSTEMS = {"Go", "npm", "crates.io", "Hex", "Pub", "SwiftURL"}
_STRICT_SEMVER = re.compile(r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


def _installable(ecosystem: str, v: str) -> bool:
    """Can ``v`` be the version of an installed package? A listed version matches only its own
    spelling (``versions.version_equal``), but Trivy's comparers read ``=v`` in version order: a
    listed ``0.20`` of a SemVer ecosystem (GHSA-6g7w-8wpp-frhj, rustls) names no Cargo version,
    yet ``=0.20`` would match 0.20.0. Such a version is written nowhere (it can match no lockfile)."""
    if ecosystem.split(":", 1)[0] in _SEMVER_ECOSYSTEMS:
        return bool(_STRICT_SEMVER.match(v))
    return True


def patched_versions(ecosystem: str, members: list[dict]) -> list[str]:
    """``fixed`` versions of all members that no member still marks as affected."""
    fixed = list(dict.fromkeys(e["version"] for m in members for r in m["ranges"] if r["type"] != "GIT"
                               for e in r["events"] if e["kind"] == "fixed"))
    simple = len(members) == 1 and not members[0]["versions"] and \
        sum(r["type"] != "GIT" for r in members[0]["ranges"]) <= 1
    if simple:
        return fixed
    out = []
    for v in fixed:
        try:
            hit = any(affected(ecosystem, v, [r for r in m["ranges"] if r["type"] != "GIT"], m["versions"])
                      for m in members)
        except VersionError:
            hit = False  # cannot order it: keep it, as trivy-db does
        if not hit:
            out.append(v)
    return out


def _plain(o: Any) -> bool:
    """True when ``o`` holds only str/int/list/dict (GoMap included) and floats that Python's
    json writes exactly like Go once integral ones are ints (0 or 1e-6 <= |x| < 1e16)."""
    t = type(o)
    if t is str or o is None or t is bool:
        return True
    if t is int:
        return abs(o) < 10 ** 15
    if t is float:
        return o == 0 or 1e-6 <= abs(o) < 1e16
    if isinstance(o, dict):
        return all(type(k) is str and _plain(v) for k, v in o.items())
    if isinstance(o, (list, tuple)):
        return all(_plain(v) for v in o)
    return False


def _ints(o: Any) -> Any:
    if type(o) is float:
        return int(o) if o.is_integer() else o
    if isinstance(o, GoMap):  # a Go map: keys sorted whatever the caller asks
        return {k: _ints(o[k]) for k in sorted(o)}
    if isinstance(o, dict):
        return {k: _ints(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_ints(v) for v in o]
    return o


_HTML = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                       "\u2028": "\\u2028", "\u2029": "\\u2029"})


def go_json(obj: Any, sort_keys: bool = False) -> bytes:
    """``gojson.go_marshal`` bytes, computed with the C json encoder when that gives the same
    result (Go's short escapes equal Python's; Go's HTML escapes are applied afterwards, which is
    safe because < > & U+2028 U+2029 only occur inside strings); falls back otherwise.
    ``sort_keys=True`` also means numbers are float64 (the map round trip)."""
    if _plain(obj):
        text = json.dumps(_ints(obj), ensure_ascii=False, separators=(",", ":"),
                          sort_keys=sort_keys)
        try:
            return text.translate(_HTML).encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: Go writes U+FFFD
            pass
    return go_marshal(obj, sort_keys=sort_keys, float64_numbers=sort_keys)


def advisory_value(fields: dict) -> bytes:
    """An Advisory value as trivy-db ships it: omitempty, then map round trip (sorted, float64)."""
    return go_json(omit_empty(fields), sort_keys=True)


def merge_advisories(members: list[dict]) -> bytes:
    """Value for one (bucket, package, vuln id) from its member records (canonical order)."""
    first = members[0]
    if first["kind"] == "os":
        # Several records for one key (e.g. two secdb files of one branch): the highest fix, as
        # for the fixed versions of one record (alpine_fixed_version).
        fixed = alpine_fixed_version("Alpine", (m["fixed"] for m in members if m.get("fixed")))
        return advisory_value({"FixedVersion": fixed or ""})
    if first["kind"] == "distro":
        # one FixedVersion per key: unfixed if any member is, else the highest fix (OSV: a
        # version is affected when any record says so); Status "affected" marks unfixed ones
        fixed = merge_os_fixed(first["ordering"], (m["fixed"] for m in members))
        fields: dict[str, Any] = {"FixedVersion": fixed,
                                  "VendorIDs": list(dict.fromkeys(v for m in members for v in m["vendor_ids"]))}
        if not fixed:
            fields["Status"] = STATUS_AFFECTED
        return advisory_value(fields)
    eco = first["ecosystem"]
    vulnerable: list[str] = []
    vendor: list[str] = []
    for m in members:
        vulnerable += vulnerable_versions(eco, m["ranges"], m["versions"])
        vendor += m["vendor_ids"]
    return advisory_value({
        "VendorIDs": list(dict.fromkeys(vendor)),
        "VulnerableVersions": list(dict.fromkeys(vulnerable)),
        "PatchedVersions": patched_versions(eco, members),
    })


def record_entries(adv: Advisory, bucket: str, distro: Distro | None = None
                   ) -> tuple[list[tuple[str, str, str, dict]], str | None]:
    """(entries, approximation note) of one record in ``bucket``; entries as ``advisory_entries``.

    ``distro`` is set for distribution buckets (``trivy_route``); the note says how Trivy's
    reading of an approximated distribution record differs from the OSV evaluation. Raises
    NotMappable for a distribution record that cannot be written (formats/trivy/distros.py)."""
    if distro is None:
        return advisory_entries(adv, bucket), None
    if adv.withdrawn:
        return [], None
    found = os_fixed_version(adv.ecosystem, distro, _ranges_json(adv.ranges), adv.versions)
    if found is None:
        return [], None
    fixed, note = found
    ids, vendor = group_vuln_ids(adv.id, adv.aliases)
    member = {"kind": "distro", "ordering": distro.base, "fixed": fixed, "vendor_ids": vendor}
    pkgs = os_package_keys(distro, adv.package.name, adv.ecosystem_specific)
    return [(bucket, pkg, vid, member) for pkg in pkgs for vid in ids], note


def advisory_entries(adv: Advisory, bucket: str) -> list[tuple[str, str, str, dict]]:
    """(bucket, package key, vuln id, member) for one normalized advisory; [] if it is skipped.

    ``member`` is the JSON-able information needed to build or merge the value. Distribution
    records are routed by their ecosystem (``trivy_route``); one that cannot be written gives [].
    Raises NotMappable (``unorderable-version``) for an Alpine record whose fixed version
    apk-tools rejects.
    """
    if adv.withdrawn:
        return []
    eco = trivy_ecosystem(adv.ecosystem)
    if eco is None:
        try:
            kind, _, distro = trivy_route(adv.ecosystem)
            return record_entries(adv, bucket, distro)[0] if kind == "distro" else []
        except NotMappable:
            return []
    ranges = _ranges_json(adv.ranges)
    evaluable = [r for r in ranges if r["type"] != "GIT"]
    if not evaluable and not adv.versions:
        return []
    if eco == "alpine":
        fixed_events = [e["version"] for r in evaluable for e in r["events"] if e["kind"] == "fixed"]
        try:
            fixed = alpine_fixed_version("Alpine", [*adv.fixed_versions, *fixed_events]) or ""
        except VersionError as exc:
            # a fixed version apk-tools rejects ("2.7.16-33"): Trivy would compare it with its own
            # lenient parser; json:policy lists the record invalid, so it stays out of the DB too
            raise NotMappable(f"a version cannot be ordered: {exc}", "unorderable-version") from None
        member = {"kind": "os", "fixed": fixed}
        pkgs = [adv.package.name]
        ids = [adv.id]
    else:
        ids, vendor = group_vuln_ids(adv.id, adv.aliases)
        member = {"kind": "lang", "ecosystem": adv.ecosystem_name, "ranges": ranges,
                  "versions": list(adv.versions), "vendor_ids": vendor}
        pkgs = trivy_pkg_names(eco, adv.package.name)
    return [(bucket, pkg, vid, member) for pkg in pkgs for vid in ids]


# -- vulnerability details ----------------------------------------------------------------------

def severity_from_label(label: str | None) -> int:
    return _LABELS.get((label or "").upper(), 0)


def score_to_severity(score: float) -> int:
    if score >= 9.0:
        return 4
    if score >= 7.0:
        return 3
    if score >= 4.0:
        return 2
    if score > 0.0:
        return 1
    return 0


def vulnerability_detail(adv: Advisory, source_id: str) -> dict:
    """trivy-db ``VulnerabilityDetail`` of one record (JSON-able, merged later per vuln id)."""
    d: dict[str, Any] = {"source": source_id}
    if adv.summary:
        d["title"] = adv.summary
    if adv.details:
        d["description"] = adv.details
    if adv.cwe_ids:
        d["cwe"] = list(adv.cwe_ids)
    refs = sorted({r.url for r in adv.references})
    if refs:
        d["refs"] = refs
    for s in adv.severity:
        if s.type in ("CVSS_V2", "CVSS_V3", "CVSS_V4") and s.vector and s.score is not None:
            tag = {"CVSS_V2": "v2", "CVSS_V3": "v3", "CVSS_V4": "v40"}[s.type]
            d.setdefault(tag, [s.vector, s.score])
    level = effective_severity(adv.severity)  # the precedence json:policy uses too
    if level is not None and severity_from_label(level["level"]):
        d["severity"] = severity_from_label(level["level"])
    # Go's zero time ("0001-01-01T00:00:00Z", used by the Go vulndb for "unknown") means none
    if adv.published and not adv.published.startswith("0001-01-01"):
        d["published"] = adv.published
    if adv.modified and not adv.modified.startswith("0001-01-01"):
        d["modified"] = adv.modified
    return d


def _source_order(source: str) -> tuple[int, str]:
    return (_RANK.get(source, len(_RANK)), source)


def _merge_same_source(details: list[dict]) -> dict:
    """Details of one source id (several records of that source name the id): first non-empty
    field in canonical order, references unioned, the highest label."""
    out: dict[str, Any] = {}
    refs: set[str] = set()
    for d in details:
        for k, v in d.items():
            if k == "refs":
                refs.update(v)
            elif k == "severity":
                out[k] = max(out.get(k, 0), v)
            else:
                out.setdefault(k, v)
    if refs:
        out["refs"] = sorted(refs)
    return out


def _vendor_severity(d: dict) -> int:
    """A source's level: computed per record by ``severity.effective_severity``."""
    return d.get("severity", 0)


def _overall_severity(ordered: list[dict]) -> int:
    """The deprecated ``Severity``: the level of the first source (precedence order) with one."""
    return next((d["severity"] for d in ordered if d.get("severity")), 0)


def merge_vulnerability(vuln_id: str, details: list[dict]) -> bytes:
    """The ``vulnerability/<id>`` value (trivy-db ``Normalize``; see the module docstring)."""
    by_source: dict[str, list[dict]] = {}
    for d in details:
        by_source.setdefault(d["source"], []).append(d)
    ordered = [_merge_same_source(by_source[s]) for s in sorted(by_source, key=_source_order)]

    def first(field: str):
        return next((d[field] for d in ordered if d.get(field)), None)

    vendor = GoMap()
    cvss = GoMap()
    for d in ordered:
        sev = _vendor_severity(d)
        if sev:
            vendor[d["source"]] = sev
        if any(t in d for t in ("v2", "v3", "v40")):
            cvss[d["source"]] = omit_empty({
                "V2Vector": d.get("v2", ("", 0))[0], "V3Vector": d.get("v3", ("", 0))[0],
                "V40Vector": d.get("v40", ("", 0))[0], "V2Score": float(d.get("v2", ("", 0))[1]),
                "V3Score": float(d.get("v3", ("", 0))[1]), "V40Score": float(d.get("v40", ("", 0))[1]),
            })
    refs = sorted({r for d in ordered for r in d.get("refs", ())})
    published = _dated(vuln_id, ordered, by_source, "published")
    modified = _dated(vuln_id, ordered, by_source, "modified")
    return go_json(omit_empty({
        "Title": first("title") or "",
        "Description": first("description") or "",
        "Severity": SEVERITY_NAMES[_overall_severity(ordered)],
        "CweIDs": first("cwe") or [],
        "VendorSeverity": vendor,
        "CVSS": cvss,
        "References": refs,
        "PublishedDate": published or "",
        "LastModifiedDate": modified or "",
    }))


def _dated(vuln_id: str, ordered: list[dict], by_source: dict, field: str) -> str | None:
    """trivy-db takes dates from NVD (CVE ids) / GHSA (GHSA ids); without those sources we take
    the first source in precedence order that has one."""
    preferred = "nvd" if vuln_id.startswith("CVE-") else "ghsa" if vuln_id.startswith("GHSA-") else None
    if preferred in by_source:
        merged = _merge_same_source(by_source[preferred])
        if merged.get(field):
            return merged[field]
    return next((d[field] for d in ordered if d.get(field)), None)


def dumps_member(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
