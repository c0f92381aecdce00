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
- ``VulnerableVersions`` are built like osv/range.go: each ``introduced`` opens a range,
  ``fixed`` closes it (``<x``), ``last_affected`` closes it inclusively (``<=x``); ``>=0`` is
  omitted; an ``introduced == last_affected`` range is ``=x``; explicit ``versions`` not inside a
  range are added as ``=v``; GIT ranges and ``limit`` events are ignored (as trivy-db does).
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
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from stella_build.rules.evidence.model import Advisory
from stella_build.rules.formats.trivy.gojson import GoMap, go_marshal, omit_empty
from stella_build.rules.evidence.versions import VersionError, affected

__all__ = [
    "DataSource", "TRIVY_ECOSYSTEMS", "trivy_ecosystem", "trivy_pkg_name", "group_vuln_ids",
    "vulnerable_versions", "patched_versions", "alpine_bucket", "advisory_entries",
    "vulnerability_detail", "merge_vulnerability", "merge_advisories", "advisory_value",
    "severity_from_label", "score_to_severity", "SOURCE_PRECEDENCE", "SEVERITY_NAMES",
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
    if inclusive and start == end:
        return f"={start}"
    if end is None:
        return f">={start}"
    upper = f"<={end}" if inclusive else f"<{end}"
    return upper if start == "0" else f">={start}, {upper}"


def _ranges_json(ranges: Iterable[Any]) -> list[dict]:
    """Ranges as plain dicts ``{"type", "events": [{"kind", "version"}]}`` (canonical form)."""
    out = []
    for r in ranges:
        if isinstance(r, dict):
            out.append({"type": r["type"], "events": [dict(e) for e in r["events"]]})
        else:
            out.append({"type": r.type, "events": [{"kind": e.kind, "version": e.version} for e in r.events]})
    return out


def vulnerable_versions(ecosystem: str, ranges: list[dict], versions: Iterable[str]) -> list[str]:
    """osv/range.go: one constraint string per ``introduced`` (see the module docstring)."""
    spans: list[list] = []  # [start, end, inclusive]
    for r in ranges:
        if r["type"] == "GIT":
            continue
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
    out = [_range_string(s, e, inc) for s, e, inc in spans]
    evaluable = [r for r in ranges if r["type"] != "GIT"]
    for v in versions:
        try:
            inside = affected(ecosystem, v, evaluable)
        except VersionError:
            inside = False
        if not inside:
            out.append(f"={v}")
    return list(dict.fromkeys(out))


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
        fixed = [m["fixed"] for m in members if m.get("fixed")]
        # Several records for one key: the lowest fix wins only if versions agree; keep the
        # first in canonical order otherwise (deterministic; Alpine never disagrees in practice).
        return advisory_value({"FixedVersion": fixed[0] if fixed else ""})
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


def advisory_entries(adv: Advisory, bucket: str) -> list[tuple[str, str, str, dict]]:
    """(bucket, package key, vuln id, member) for one normalized advisory; [] if it is skipped.

    ``member`` is the JSON-able information needed to build or merge the value.
    """
    if adv.withdrawn:
        return []
    eco = trivy_ecosystem(adv.ecosystem)
    if eco is None:
        return []
    ranges = _ranges_json(adv.ranges)
    evaluable = [r for r in ranges if r["type"] != "GIT"]
    if not evaluable and not adv.versions:
        return []
    if eco == "alpine":
        fixed = next((e["version"] for r in evaluable for e in r["events"] if e["kind"] == "fixed"), "")
        member = {"kind": "os", "fixed": fixed}
        pkg = adv.package.name
        ids = [adv.id]
    else:
        ids, vendor = group_vuln_ids(adv.id, adv.aliases)
        member = {"kind": "lang", "ecosystem": adv.ecosystem_name, "ranges": ranges,
                  "versions": list(adv.versions), "vendor_ids": vendor}
        pkg = trivy_pkg_name(eco, adv.package.name)
    return [(bucket, pkg, vid, member) for vid in ids]


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
    label = 0
    for s in adv.severity:
        if s.type in ("CVSS_V2", "CVSS_V3", "CVSS_V4") and s.vector and s.score is not None:
            tag = {"CVSS_V2": "v2", "CVSS_V3": "v3", "CVSS_V4": "v40"}[s.type]
            d.setdefault(tag, [s.vector, s.score])
        elif s.type == "vendor":
            label = label or severity_from_label(s.label)
    if label:
        d["severity"] = label
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
    if d.get("severity"):
        return d["severity"]
    for tag in ("v40", "v3", "v2"):
        if tag in d and d[tag][1] > 0:
            return score_to_severity(d[tag][1])
    return 0


def _overall_severity(ordered: list[dict]) -> int:
    for d in ordered:
        for tag in ("v40", "v3", "v2"):
            if tag in d and d[tag][1] > 0:
                return score_to_severity(d[tag][1])
        if d.get("severity"):
            return d["severity"]
    return 0


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


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """A data-source id for a source without a known Trivy id ("Foo DB" → "foo-db")."""
    return _SLUG.sub("-", text.lower()).strip("-") or "source"


def dumps_member(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
