"""The shared corpora as OSV documents and per-package "affected" entries, read independently of
the project's parsers.

Shapes:
- ``Record``: one OSV document as it goes into osv-scanner's database (``osv``; RustSec and Alpine
  secdb are converted by ``rustsec_osv`` / ``alpine_osv``), with the dataset it came from.
- ``Affected``: what one record says about one package: ``(record_id, path, ecosystem, name,
  ranges, versions)``. Several ``affected[]`` entries of one record for the same package are
  merged (the OSV evaluation ORs them anyway). ``path`` is the logical ``@shared-data//...`` path
  json:policy reports as ``advisory_path``.

Package identity (``package_key``) is the OSV ecosystem's own rule: PEP 503 names for PyPI
(https://ossf.github.io/osv-schema/#affectedpackage-field), the name as written elsewhere. The
lockfile spelling of a package is chosen in ``probes.py``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

Events = tuple[tuple[str, str], ...]          # ((kind, version), ...) in source order
Ranges = tuple[tuple[str, Events], ...]       # ((type, events), ...)


@dataclass(frozen=True)
class Affected:
    """One record's statement about one package (ranges ORed with the explicit versions)."""

    record_id: str
    dataset: str
    path: str          # "@shared-data//<dataset>/..." as json:policy writes advisory_path
    ecosystem: str     # full OSV ecosystem: "PyPI", "Alpine:v3.10", "Ubuntu:22.04:LTS"
    name: str          # the record's spelling
    ranges: Ranges
    versions: tuple[str, ...]
    aliases: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.ecosystem, package_key(self.ecosystem, self.name))


@dataclass
class Record:
    """One OSV document (converted for RustSec / Alpine) and its affected entries."""

    id: str
    dataset: str
    path: str
    osv: dict
    withdrawn: bool
    affected: list[Affected] = field(default_factory=list)


def base_ecosystem(ecosystem: str) -> str:
    """"Alpine:v3.10" -> "Alpine", "Ubuntu:Pro:18.04:LTS" -> "Ubuntu"."""
    return ecosystem.split(":", 1)[0]


_PEP503 = re.compile(r"[-_.]+")


def package_key(ecosystem: str, name: str) -> str:
    """The OSV identity of a package name in its ecosystem (PyPI: PEP 503 normalized)."""
    if base_ecosystem(ecosystem) == "PyPI":
        return _PEP503.sub("-", name).lower()
    return name


class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader that keeps timestamps as the text the file wrote (OSV wants RFC 3339 strings)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _YamlLoader.yaml_implicit_resolvers.items()
}


def _osv_files(root: Path) -> Iterator[tuple[str, Path]]:
    yield from (("osv-pypi", p) for p in sorted((root / "osv-pypi" / "vulns").glob("*/*.yaml")))
    yield from (("osv-go", p) for p in sorted((root / "osv-go").glob("*.json")))
    yield from (("ghsa", p) for p in sorted((root / "ghsa").glob("*/*.json")))
    yield from (("osv-ubuntu", p) for p in sorted((root / "osv-ubuntu").glob("*.json")))


def load_osv_file(path: Path) -> dict:
    data = path.read_bytes()
    if path.suffix in (".yaml", ".yml"):
        return yaml.load(data, Loader=_YamlLoader)
    return json.loads(data)


def affected_of(doc: dict, dataset: str, path: str) -> list[Affected]:
    """Per-package entries of an OSV document, merged by package identity, GIT ranges kept."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for aff in doc.get("affected") or ():
        pkg = aff.get("package")
        if not pkg:
            continue  # GIT-only entry: no package to probe
        eco, name = pkg["ecosystem"], pkg["name"]
        slot = merged.setdefault((eco, package_key(eco, name)), {"name": name, "ranges": [], "versions": []})
        for r in aff.get("ranges") or ():
            events = tuple(next(iter(e.items())) for e in r.get("events") or ())
            slot["ranges"].append((r["type"], tuple((k, str(v)) for k, v in events)))
        slot["versions"] += [str(v) for v in aff.get("versions") or ()]
    aliases = tuple(sorted(set(doc.get("aliases") or ())))
    return [Affected(record_id=doc["id"], dataset=dataset, path=path, ecosystem=eco, name=s["name"],
                     ranges=tuple(s["ranges"]), versions=tuple(dict.fromkeys(s["versions"])),
                     aliases=aliases)
            for (eco, _), s in merged.items()]


def load_corpora(root: Path) -> list[Record]:
    """Every record of the six datasets under ``root`` (../shared/data), in a stable order."""
    from tests.differential.alpine_osv import alpine_records
    from tests.differential.rustsec_osv import rustsec_records

    records: list[Record] = []
    for dataset, p in _osv_files(root):
        doc = load_osv_file(p)
        logical = "@shared-data//" + p.relative_to(root).as_posix()
        records.append(Record(id=doc["id"], dataset=dataset, path=logical, osv=doc,
                              withdrawn=bool(doc.get("withdrawn")),
                              affected=affected_of(doc, dataset, logical)))
    records += rustsec_records(root)
    records += alpine_records(root)
    return records
