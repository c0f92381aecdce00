"""OSV advisories (JSON or YAML) -> validated documents and normalized ``Advisory`` records.

``load_osv_document`` parses and validates one file and returns the document as plain JSON data
(timestamps stay the strings the file wrote: the YAML loader does not turn them into datetime
objects). ``normalize_osv`` turns a loaded document into one ``Advisory`` per affected package;
several ``affected[]`` entries for the same package (the Go database splits them by import path)
are merged: their ranges are OR'ed, as OSV evaluation does anyway.
"""
from __future__ import annotations

from typing import Any, Iterable

import yaml

from stella_build.rules.evidence.bounded import DocumentError, NoAliasesMixin, load_yaml
from stella_build.rules.evidence.model import (
    Advisory,
    EvidenceError,
    Package,
    Range,
    RangeEvent,
    Reference,
    Severity,
    SourceInfo,
    cvss_severity,
    jsonable,
    load_json_document,
    model_errors,
    normalize_package_name,
    rfc3339,
)

__all__ = ["load_osv_document", "normalize_osv", "osv_package_purl", "yaml_loader"]

_YAML_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _OsvYamlLoader(NoAliasesMixin, _YAML_BASE):  # type: ignore[misc, valid-type]
    """Safe YAML loader that leaves timestamps as the strings the file wrote and refuses aliases
    (see ``evidence.bounded``)."""


_OsvYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _YAML_BASE.yaml_implicit_resolvers.items()
}


def yaml_loader() -> type:
    """The YAML loader class used for evidence files (C-accelerated when libyaml is present)."""
    return _OsvYamlLoader


_EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
_RANGE_TYPES = ("ECOSYSTEM", "SEMVER", "GIT")


def _parse_bytes(data: bytes, path: str) -> Any:
    """The document of one OSV file, parsed within the limits of ``evidence.bounded``."""
    if path.endswith((".yaml", ".yml")):
        try:
            doc = load_yaml(data, _OsvYamlLoader)
        except DocumentError as exc:
            raise EvidenceError.from_document(path, exc) from None
        try:
            return jsonable(doc)
        except ValueError as exc:
            raise EvidenceError(path, "<document>", str(exc)) from None
    return load_json_document(data, path)


def _require_str(doc: dict, key: str, path: str, field: str) -> str:
    value = doc.get(key)
    if value is None:
        raise EvidenceError(path, field, "missing required field")
    if not isinstance(value, str) or not value.strip():
        raise EvidenceError(path, field, f"expected a non-empty string, got {value!r}")
    return value


def _check_time(doc: dict, key: str, path: str, required: bool) -> None:
    if key not in doc or doc[key] is None:
        if required:
            raise EvidenceError(path, key, "missing required field")
        return
    try:
        rfc3339(doc[key])
    except ValueError as exc:
        raise EvidenceError(path, key, str(exc)) from None


def _check_list(value: Any, path: str, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EvidenceError(path, field, f"expected a list, got {type(value).__name__}")
    return value


def _validate(doc: Any, path: str) -> None:
    if not isinstance(doc, dict):
        raise EvidenceError(path, "<document>", f"expected a mapping at the top, got {type(doc).__name__}")
    _require_str(doc, "id", path, "id")
    _check_time(doc, "modified", path, required=True)
    _check_time(doc, "published", path, required=False)
    _check_time(doc, "withdrawn", path, required=False)
    for key in ("aliases", "related"):
        for i, alias in enumerate(_check_list(doc.get(key), path, key)):
            if not isinstance(alias, str):
                raise EvidenceError(path, f"{key}[{i}]", f"expected a string, got {alias!r}")
    for i, aff in enumerate(_check_list(doc.get("affected"), path, "affected")):
        where = f"affected[{i}]"
        if not isinstance(aff, dict):
            raise EvidenceError(path, where, "expected a mapping")
        pkg = aff.get("package")
        if pkg is not None:
            if not isinstance(pkg, dict):
                raise EvidenceError(path, f"{where}.package", "expected a mapping")
            _require_str(pkg, "ecosystem", path, f"{where}.package.ecosystem")
            _require_str(pkg, "name", path, f"{where}.package.name")
        for j, v in enumerate(_check_list(aff.get("versions"), path, f"{where}.versions")):
            if not isinstance(v, str):
                raise EvidenceError(
                    path, f"{where}.versions[{j}]", f"expected a string, got {type(v).__name__} {v!r} (quote it)"
                )
        ranges = _check_list(aff.get("ranges"), path, f"{where}.ranges")
        if pkg is None and not any(isinstance(r, dict) and r.get("type") == "GIT" for r in ranges):
            raise EvidenceError(path, f"{where}.package", "missing (only GIT-only entries may omit it)")
        for j, r in enumerate(ranges):
            _validate_range(r, path, f"{where}.ranges[{j}]")


def _validate_range(r: Any, path: str, where: str) -> None:
    if not isinstance(r, dict):
        raise EvidenceError(path, where, "expected a mapping")
    rtype = r.get("type")
    if rtype not in _RANGE_TYPES:
        raise EvidenceError(path, f"{where}.type", f"expected one of {', '.join(_RANGE_TYPES)}, got {rtype!r}")
    if rtype == "GIT" and not isinstance(r.get("repo"), str):
        raise EvidenceError(path, f"{where}.repo", "GIT ranges need a repo URL")
    events = r.get("events")
    if not isinstance(events, list) or not events:
        raise EvidenceError(path, f"{where}.events", "expected a non-empty list of events")
    saw_introduced = False
    for k, ev in enumerate(events):
        ew = f"{where}.events[{k}]"
        if not isinstance(ev, dict) or len(ev) != 1:
            raise EvidenceError(path, ew, f"expected exactly one of {', '.join(_EVENT_KINDS)}, got {ev!r}")
        ((kind, version),) = ev.items()
        if kind not in _EVENT_KINDS:
            raise EvidenceError(path, f"{ew}.{kind}", f"unknown event (expected one of {', '.join(_EVENT_KINDS)})")
        if not isinstance(version, str) or not version:
            raise EvidenceError(
                path, f"{ew}.{kind}", f"expected a non-empty string version, got {type(version).__name__} {version!r}"
            )
        saw_introduced = saw_introduced or kind == "introduced"
    if not saw_introduced:
        raise EvidenceError(path, f"{where}.events", "a range needs at least one 'introduced' event")


def load_osv_document(data: bytes, path: str) -> dict:
    """Parse one OSV file (YAML when ``path`` ends in .yaml/.yml, else JSON) and validate it.

    Returns the document as plain JSON data. Raises EvidenceError naming ``path`` and the field
    for invalid syntax, a missing ``id`` or ``modified``, bad timestamps and bad range events.
    """
    doc = _parse_bytes(data, path)
    _validate(doc, path)
    return doc


# --------------------------------------------------------------------------- normalization

_PURL_TYPES = {"PyPI": "pypi", "Go": "golang", "crates.io": "cargo", "npm": "npm", "Maven": "maven"}


def osv_package_purl(ecosystem: str, name: str) -> str | None:
    """A purl for a language package when the record does not carry one."""
    from packageurl import PackageURL

    ptype = _PURL_TYPES.get(ecosystem)
    if ptype is None:
        return None
    namespace = None
    if ptype == "pypi":
        name = name.lower().replace("_", "-")
    elif ptype == "maven" and ":" in name:
        namespace, name = name.split(":", 1)
    elif ptype in ("golang", "npm") and "/" in name:
        namespace, name = name.rsplit("/", 1)
    return PackageURL(type=ptype, namespace=namespace, name=name).to_string()


def _sorted_unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(items)))


def _severities(doc: dict, affs: list[dict], path: str) -> tuple[Severity, ...]:
    out: list[Severity] = []
    entries = [("severity", s) for s in doc.get("severity") or ()]
    for i, aff in enumerate(affs):
        entries += [(f"affected[{i}].severity", s) for s in aff.get("severity") or ()]
    for where, s in entries:
        if not isinstance(s, dict) or not isinstance(s.get("score"), str):
            raise EvidenceError(path, where, f"expected {{type, score}} with a string score, got {s!r}")
        stype = s.get("type")
        if stype in ("CVSS_V2", "CVSS_V3", "CVSS_V4"):
            try:
                out.append(cvss_severity(s["score"], stype))
            except ValueError as exc:
                raise EvidenceError(path, f"{where}.score", str(exc)) from None
        else:  # e.g. "Ubuntu": a qualitative label in "score"
            out.append(Severity(type="vendor", label=s["score"], source=stype))
    label = (doc.get("database_specific") or {}).get("severity")
    if isinstance(label, str) and label:
        out.append(Severity(type="vendor", label=label.upper(), source="database_specific"))
    return tuple(dict.fromkeys(out))  # dedupe, keep order


def _references(doc: dict, path: str) -> tuple[Reference, ...]:
    refs = set()
    for i, r in enumerate(doc.get("references") or ()):
        if not isinstance(r, dict) or not isinstance(r.get("url"), str):
            raise EvidenceError(path, f"references[{i}]", f"expected {{type, url}}, got {r!r}")
        refs.add((r["url"], str(r.get("type") or "WEB")))
    return tuple(Reference(type=t, url=u) for u, t in sorted(refs))


def _time(doc: dict, key: str) -> str | None:
    value = doc.get(key)
    return None if value is None else rfc3339(value)


def _optional(value: Any, kind: type, path: str, field: str) -> None:
    if value is not None and not isinstance(value, kind):
        expected = {dict: "a mapping", str: "a string", list: "a list"}[kind]
        raise EvidenceError(path, field, f"expected {expected}, got {type(value).__name__}")


def _check_normalizable(doc: dict, path: str) -> None:
    """Types the normalized model needs beyond what ``_validate`` (shared with json:raw, which
    keeps documents verbatim) checks: optional texts, mappings and lists."""
    for key in ("summary", "details"):
        _optional(doc.get(key), str, path, key)
    _optional(doc.get("database_specific"), dict, path, "database_specific")
    _optional(doc.get("references"), list, path, "references")
    _optional(doc.get("severity"), list, path, "severity")
    dbs = doc.get("database_specific") or {}
    _optional(dbs.get("cwe_ids"), list, path, "database_specific.cwe_ids")
    for i, aff in enumerate(doc.get("affected") or ()):
        where = f"affected[{i}]"
        _optional((aff.get("package") or {}).get("purl"), str, path, f"{where}.package.purl")
        for key in ("ecosystem_specific", "database_specific"):
            _optional(aff.get(key), dict, path, f"{where}.{key}")
        _optional(aff.get("severity"), list, path, f"{where}.severity")
        for j, r in enumerate(aff.get("ranges") or ()):
            _optional(r.get("repo"), str, path, f"{where}.ranges[{j}].repo")
            _optional(r.get("database_specific"), dict, path, f"{where}.ranges[{j}].database_specific")


def normalize_osv(doc: dict, path: str, source: SourceInfo) -> list[Advisory]:
    """One ``Advisory`` per affected package of a loaded OSV document (withdrawn ones included,
    with ``withdrawn`` set). Raises EvidenceError naming ``path`` and the field on bad input."""
    _validate(doc, path)
    _check_normalizable(doc, path)
    with model_errors(path):
        return _normalize(doc, path, source)


def _normalize(doc: dict, path: str, source: SourceInfo) -> list[Advisory]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for aff in doc.get("affected") or ():
        pkg = aff.get("package")
        if pkg is None:  # GIT-only entry: the repository is the package
            repo = next(r["repo"] for r in aff["ranges"] if r.get("type") == "GIT")
            key = ("GIT", repo)
        else:
            key = (pkg["ecosystem"], pkg["name"])
        groups.setdefault(key, []).append(aff)

    dbs = doc.get("database_specific") or {}
    common = dict(
        id=doc["id"],
        aliases=_sorted_unique(doc.get("aliases") or ()),
        related=_sorted_unique(doc.get("related") or ()),
        source=source,
        source_path=path,
        summary=doc.get("summary") or None,
        details=doc.get("details") or None,
        references=_references(doc, path),
        cwe_ids=_sorted_unique(c for c in dbs.get("cwe_ids") or () if isinstance(c, str)),
        published=_time(doc, "published"),
        modified=_time(doc, "modified"),
        withdrawn=_time(doc, "withdrawn"),
        database_specific=dbs,
    )
    out = []
    for (ecosystem, name), affs in groups.items():
        purl = next((a["package"].get("purl") for a in affs if (a.get("package") or {}).get("purl")), None)
        ranges: list[Range] = []
        versions: list[str] = []
        for a in affs:
            for r in a.get("ranges") or ():
                ranges.append(
                    Range(
                        type=r["type"],
                        repo=r.get("repo"),
                        events=tuple(RangeEvent(kind=k, version=v) for ev in r["events"] for k, v in ev.items()),
                        database_specific=r.get("database_specific"),
                    )
                )
            versions.extend(a.get("versions") or ())
        fixed = [e.version for r in ranges if r.type != "GIT" for e in r.events if e.kind == "fixed"]
        out.append(
            Advisory(
                ecosystem=ecosystem,
                package=Package(
                    name=name,
                    normalized=normalize_package_name(ecosystem, name),
                    purl=purl or osv_package_purl(ecosystem, name),
                ),
                ranges=tuple(ranges),
                versions=tuple(dict.fromkeys(versions)),
                fixed_versions=tuple(dict.fromkeys(fixed)),
                severity=_severities(doc, affs, path),
                ecosystem_specific=tuple(a["ecosystem_specific"] for a in affs if a.get("ecosystem_specific")),
                affected_database_specific=tuple(
                    a["database_specific"] for a in affs if a.get("database_specific")
                ),
                **common,
            )
        )
    return out
