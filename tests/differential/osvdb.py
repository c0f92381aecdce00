"""osv-scanner's offline database: ``<dir>/osv-scalibr/<Ecosystem>/all.zip``, one OSV JSON record
per zip entry, records of "Debian:11" and "Debian:12" in the same ``Debian/all.zip``.

osv-scanner v2.6 parses records strictly against the OSV schema and silently drops what fails.
``sanitize`` makes the legal normalizations (the meaning of the record does not change):

- ``modified`` / ``published`` / ``withdrawn`` rewritten as RFC 3339 UTC with ``Z``;
- PyPI package names PEP 503-normalized (the schema requires normalized names);
- within an ``affected`` entry, GIT ranges moved after the ECOSYSTEM/SEMVER ones (range order has
  no meaning: ranges are ORed).

``drop_reason`` names what would still make osv-scanner skip a record (withdrawn, a field outside
the schema, an unparseable time); such records are written nowhere and counted, and the test
falls back to the spec evaluator for them instead of reporting disagreements.
"""
from __future__ import annotations

import copy
import json
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from tests.differential.corpus import Record, base_ecosystem, package_key

# Every ecosystem a probe can be scanned in needs a zip, or the scan fails (exit 127).
ECOSYSTEMS = ("PyPI", "Go", "npm", "crates.io", "Maven", "RubyGems", "NuGet", "Packagist", "Pub", "Hex",
              "SwiftURL", "Alpine", "Ubuntu", "Debian")

_TOP = {"schema_version", "id", "modified", "published", "withdrawn", "aliases", "related", "upstream",
        "summary", "details", "severity", "affected", "references", "credits", "database_specific"}
_AFFECTED = {"package", "severity", "ranges", "versions", "ecosystem_specific", "database_specific"}
_PACKAGE = {"ecosystem", "name", "purl"}
_RANGE = {"type", "repo", "events", "database_specific"}
_EVENT = {"introduced", "fixed", "last_affected", "limit"}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$")


def _rfc3339(value: object) -> str:
    text = str(value)
    if _RFC3339.match(text):
        return text
    dt = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sanitize(doc: dict) -> dict:
    """A copy of ``doc`` with the legal normalizations above applied."""
    out = copy.deepcopy(doc)
    for key in ("modified", "published", "withdrawn"):
        if out.get(key) is not None:
            try:
                out[key] = _rfc3339(out[key])
            except ValueError:
                pass  # left as is: drop_reason reports it
    for aff in out.get("affected") or ():
        pkg = aff.get("package")
        if pkg and base_ecosystem(pkg.get("ecosystem", "")) == "PyPI":
            pkg["name"] = package_key("PyPI", pkg["name"])
        if aff.get("ranges"):
            aff["ranges"].sort(key=lambda r: r.get("type") == "GIT")  # stable: keeps the others' order
    return out


def drop_reason(doc: dict) -> str | None:
    """Why osv-scanner would skip the (sanitized) record, or None."""
    if doc.get("withdrawn"):
        return "withdrawn"
    unknown = set(doc) - _TOP
    if unknown:
        return f"unknown top-level field {sorted(unknown)[0]!r}"
    for key in ("modified", "published", "withdrawn"):
        if doc.get(key) is not None and not _RFC3339.match(str(doc[key])):
            return f"{key} is not RFC 3339: {doc[key]!r}"
    for i, aff in enumerate(doc.get("affected") or ()):
        for label, obj, allowed in (("affected", aff, _AFFECTED), ("package", aff.get("package") or {}, _PACKAGE)):
            if set(obj) - allowed:
                return f"affected[{i}]: unknown {label} field {sorted(set(obj) - allowed)[0]!r}"
        for r in aff.get("ranges") or ():
            if set(r) - _RANGE:
                return f"affected[{i}]: unknown range field {sorted(set(r) - _RANGE)[0]!r}"
            for e in r.get("events") or ():
                if len(e) != 1 or set(e) - _EVENT:
                    return f"affected[{i}]: bad event {e!r}"
    return None


def write_db(root: Path, records: list[Record]) -> dict[str, str]:
    """Write the zips (every ecosystem of ``ECOSYSTEMS`` gets one, empty or not); returns
    {record id: drop reason} for the records left out."""
    by_eco: dict[str, list[tuple[str, bytes]]] = {eco: [] for eco in ECOSYSTEMS}
    dropped: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for rec in records:
        doc = sanitize(rec.osv)
        reason = drop_reason(doc)
        if reason:
            dropped[rec.id] = reason
            continue
        data = json.dumps(doc, sort_keys=True).encode()
        for eco in sorted({base_ecosystem(a["package"]["ecosystem"]) for a in doc.get("affected") or ()
                           if a.get("package")}):
            if (eco, rec.id) in seen:
                raise AssertionError(f"two records with id {rec.id} in {eco}: osv-scanner would keep one")
            seen.add((eco, rec.id))
            by_eco.setdefault(eco, []).append((rec.id, data))
    for eco, docs in by_eco.items():
        d = root / "osv-scalibr" / eco
        d.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(d / "all.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for rid, data in sorted(docs):
                z.writestr(f"{rid}.json", data)
    return dropped
