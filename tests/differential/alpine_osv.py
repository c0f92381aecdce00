"""Alpine secdb YAML -> OSV documents (ecosystem ``Alpine:vX.Y``), written from the secdb format,
not with the project's parser.

``packages[].pkg.secfixes`` maps a fixed ``pkgver-rN`` to the entries it fixes. An entry names
CVE ids (``CVE-2019-1234``, also spelled ``CVE_2019-1234`` and ``CVE 2018-16859``) or, without a CVE, one other id
(``XSA-207``, ``TALOS-2017-0488``, ``wnpa-sec-2017-18``); the rest of the text is commentary. A fixed version ``0``
means "not affected / will not fix" and gives no range (the package is left out of the record).

One id listed under several fixed versions of one branch file (busybox in v3.10: CVE-2019-5747
under ``1.30.1-r2`` and ``1.29.3-r10``) is a fix made on each version line the branch carried.
Each listed version is taken as its own statement "versions below it lack the fix": one OSV range
``introduced 0, fixed X`` per listed version, ORed, so the branch is affected below its highest
fix. (Putting every fix into ONE range would mean "below the lowest" under the schema's event
walk, which misses ``1.30.1-r1``, a version the branch really shipped.) All entries of one id,
over every release and package, form one OSV document, as osv.dev publishes them.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.differential.corpus import Affected, Record

_CVE = re.compile(r"CVE[-_ ](\d{4})-(\d{4,})")  # "CVE-2019-1234", "CVE_2019-1234", "CVE 2018-16859"
_OTHER = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*-\d+$")  # XSA-207, wnpa-sec-2017-18


def entry_ids(entry: str) -> list[str]:
    """Vulnerability ids named by one secfixes entry (CVE ids, else the first other id)."""
    cves = [f"CVE-{y}-{n}" for y, n in _CVE.findall(entry)]
    if cves:
        return list(dict.fromkeys(cves))
    others = [t for t in re.sub(r"\(.*?\)", " ", entry).split() if _OTHER.match(t)]
    return others[:1]


def alpine_records(root: Path) -> list[Record]:
    """One OSV record per vulnerability id over every secdb file; ``Affected`` per file."""
    docs: dict[str, dict] = {}
    affected: dict[str, list[Affected]] = {}
    for p in sorted((root / "alpine-secdb").glob("*/*.yaml")):
        # the base loader keeps every scalar a string ("1.10" stays "1.10", "0" stays "0")
        doc = yaml.load(p.read_bytes(), Loader=getattr(yaml, "CBaseLoader", yaml.BaseLoader))
        release = doc["distroversion"]
        eco = f"Alpine:{release}"
        logical = "@shared-data//" + p.relative_to(root).as_posix()
        for entry in doc.get("packages") or ():
            pkg = entry["pkg"]
            fixes: dict[str, list[str]] = {}
            for version, items in (pkg.get("secfixes") or {}).items():
                for item in items or ():
                    for vid in entry_ids(item):
                        fixes.setdefault(vid, [])
                        if version not in fixes[vid]:
                            fixes[vid].append(version)
            for vid, versions in fixes.items():
                fixed = [v for v in versions if v != "0"]
                if not fixed:
                    continue  # only the "not affected / will not fix" marker
                ranges = tuple(("ECOSYSTEM", (("introduced", "0"), ("fixed", v))) for v in fixed)
                osv = docs.setdefault(vid, {"id": vid, "modified": "2020-06-08T00:00:00Z",
                                            "summary": "", "details": "", "affected": []})
                osv["affected"].append({"package": {"ecosystem": eco, "name": pkg["name"]},
                                        "ranges": [{"type": t, "events": [{k: v} for k, v in evs]} for t, evs in ranges]})
                affected.setdefault(vid, []).append(Affected(
                    record_id=vid, dataset="alpine-secdb", path=logical, ecosystem=eco, name=pkg["name"],
                    ranges=ranges, versions=(), aliases=()))
    return [Record(id=vid, dataset="alpine-secdb", path="@shared-data//alpine-secdb", osv=docs[vid],
                   withdrawn=False, affected=affected[vid]) for vid in sorted(docs)]
