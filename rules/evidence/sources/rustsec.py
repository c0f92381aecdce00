"""RustSec advisories (Markdown with a ```toml front-matter fence) -> normalized ``Advisory``.

The ``[versions]`` table lists Cargo requirements that are *not* vulnerable (``patched`` and
``unaffected``). They are kept verbatim in ``database_specific["rustsec"]["versions"]`` and also
converted to one OSV SEMVER range: the safe requirements become half-open intervals, which are
merged, and the gaps between them are the vulnerable ranges. Bounds that Cargo writes as
exclusive (``> 1.2.3``, ``<= 1.2.3``) become the next SemVer version (``1.2.4-0``), which is exact
under SemVer precedence. Upper bounds that come from bumping (``^0.4.0`` → ``< 0.5.0-0``) stop
before the next line's pre-releases, so ``0.5.0-alpha.1`` is vulnerable, as the rustsec crate's
own ``Versions::is_vulnerable`` (OSV-style intervals) says (``versions.cargo_requirement_bounds``).
"""
from __future__ import annotations

import re
from typing import Any, Optional

import semver

from stella_build.rules.evidence.bounded import MAX_TOML_BYTES, DocumentError, load_toml
from stella_build.rules.evidence.model import (
    Advisory,
    EvidenceError,
    Package,
    Range,
    RangeEvent,
    Reference,
    SourceInfo,
    cvss_severity,
    jsonable,
    model_errors,
    normalize_package_name,
    rfc3339,
)
from stella_build.rules.evidence.versions import VersionError, cargo_requirement_bounds

__all__ = ["parse_rustsec", "normalize_rustsec", "requirements_to_events"]

_FENCE = re.compile(r"\A\s*```toml[ \t]*\r?\n(?P<toml>.*?)\r?\n```[ \t]*(?:\r?\n|\Z)(?P<body>.*)\Z", re.S)
_ZERO = semver.Version(0, 0, 0)


def parse_rustsec(data: bytes, path: str) -> dict[str, Any]:
    """Split a RustSec file into its TOML front matter (as a dict), title and description.

    Raises EvidenceError naming ``path``: not UTF-8, no front matter, invalid TOML, and the limits
    of ``evidence.bounded`` (file size ``MAX_TOML_BYTES``, nesting, integer digits, nan/inf).
    """
    if len(data) > MAX_TOML_BYTES:
        raise EvidenceError(path, "<document>", f"the file is {len(data)} bytes, more than the "
                            f"{MAX_TOML_BYTES} bytes allowed", "evidence-too-large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvidenceError(path, "<document>", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    m = _FENCE.match(text)
    if not m:
        raise EvidenceError(path, "<front matter>", "expected the file to start with a ```toml fenced block")
    try:
        meta = load_toml(m.group("toml"))
    except DocumentError as exc:
        field = "<front matter>" if exc.field == "<document>" else exc.field
        raise EvidenceError(path, field, exc.message) from None
    title, description = _split_body(m.group("body"))
    try:
        meta = jsonable(meta)
    except ValueError as exc:  # e.g. a TOML local time, which has no JSON form
        raise EvidenceError(path, "<front matter>", str(exc)) from None
    return {"meta": meta, "title": title, "description": description}


def _split_body(body: str) -> tuple[Optional[str], Optional[str]]:
    lines = body.strip().splitlines()
    title = None
    if lines and lines[0].startswith("# "):
        title = lines.pop(0)[2:].strip() or None
    description = "\n".join(lines).strip() or None
    return title, description


def _str_list(table: dict, key: str, path: str, field: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EvidenceError(path, field, f"expected a list of strings, got {value!r}")
    return value


def requirements_to_events(safe: list[str]) -> tuple[RangeEvent, ...]:
    """OSV events for "every version not matched by any of the ``safe`` Cargo requirements".

    Raises VersionError for a requirement that cannot be parsed.
    """
    intervals: list[tuple[Optional[semver.Version], Optional[semver.Version]]] = []
    for req in safe:
        lo, hi = cargo_requirement_bounds(req)
        if lo is not None and lo <= _ZERO:
            lo = None
        if lo is not None and hi is not None and hi <= lo:
            continue  # empty interval
        intervals.append((lo, hi))
    intervals.sort(key=lambda iv: (iv[0] is not None, iv[0] or _ZERO))
    merged: list[list[Optional[semver.Version]]] = []
    for lo, hi in intervals:
        if merged:
            last = merged[-1]
            if last[1] is None or (lo is not None and lo <= last[1]) or lo is None:
                if last[1] is not None and (hi is None or hi > last[1]):
                    last[1] = hi
                continue
        merged.append([lo, hi])
    events: list[RangeEvent] = []
    vulnerable_from: Optional[str] = "0"
    for lo, hi in merged:
        if lo is not None and vulnerable_from is not None:
            events += [RangeEvent(kind="introduced", version=vulnerable_from), RangeEvent(kind="fixed", version=str(lo))]
        vulnerable_from = None if hi is None else str(hi)
    if vulnerable_from is not None:
        events.append(RangeEvent(kind="introduced", version=vulnerable_from))
    return tuple(events)


def normalize_rustsec(data: bytes, path: str, source: SourceInfo) -> list[Advisory]:
    """Parse one RustSec advisory file into a one-element list of ``Advisory``."""
    parsed = parse_rustsec(data, path)
    meta = parsed["meta"]
    adv = meta.get("advisory")
    if not isinstance(adv, dict):
        raise EvidenceError(path, "advisory", "missing [advisory] table")
    for key in ("id", "package", "date"):
        if not isinstance(adv.get(key), str) or not adv[key].strip():
            raise EvidenceError(path, f"advisory.{key}", "missing required field")
    versions = meta.get("versions")
    if not isinstance(versions, dict):
        raise EvidenceError(path, "versions", "missing [versions] table")
    patched = _str_list(versions, "patched", path, "versions.patched")
    unaffected = _str_list(versions, "unaffected", path, "versions.unaffected")
    for key, reqs in (("patched", patched), ("unaffected", unaffected)):
        for i, req in enumerate(reqs):
            try:
                cargo_requirement_bounds(req)
            except VersionError as exc:
                raise EvidenceError(path, f"versions.{key}[{i}]", str(exc)) from None
    events = requirements_to_events(patched + unaffected)
    fixed = tuple(dict.fromkeys(e.version for e in events if e.kind == "fixed"))

    def _time(key: str) -> Optional[str]:
        if adv.get(key) is None:
            return None
        try:
            return rfc3339(adv[key])
        except ValueError as exc:
            raise EvidenceError(path, f"advisory.{key}", str(exc)) from None

    severity = ()
    if adv.get("cvss"):
        try:
            severity = (cvss_severity(str(adv["cvss"])),)
        except ValueError as exc:
            raise EvidenceError(path, "advisory.cvss", str(exc)) from None

    refs = {(u, "WEB") for u in _str_list(adv, "references", path, "advisory.references")}
    if isinstance(adv.get("url"), str):
        refs.add((adv["url"], "WEB"))
    refs.add((f"https://rustsec.org/advisories/{adv['id']}.html", "ADVISORY"))

    rustsec_extra = {
        k: adv[k]
        for k in ("categories", "keywords", "informational", "license", "url", "expect-deleted", "cvss")
        if k in adv
    }
    rustsec_extra["versions"] = {"patched": patched, "unaffected": unaffected}
    rustsec_extra["collection"] = "rust" if "/rust/" in f"/{path}" else "crates"
    affects = meta.get("affected")
    name = adv["package"]
    with model_errors(path):  # a value the model refuses is bad evidence, not a bug
        return [
            Advisory(
                id=adv["id"],
                aliases=tuple(sorted(set(_str_list(adv, "aliases", path, "advisory.aliases")))),
                related=tuple(sorted(set(_str_list(adv, "related", path, "advisory.related")))),
                source=source,
                source_path=path,
                ecosystem="crates.io",
                package=Package(
                    name=name, normalized=normalize_package_name("crates.io", name), purl=f"pkg:cargo/{name}"
                ),
                ranges=(Range(type="SEMVER", events=events),),
                fixed_versions=fixed,
                severity=severity,
                summary=parsed["title"],
                details=parsed["description"],
                references=tuple(Reference(type=t, url=u) for u, t in sorted(refs)),
                published=_time("date"),
                withdrawn=_time("withdrawn"),
                database_specific={"rustsec": rustsec_extra},
                ecosystem_specific=({"affects": affects},) if isinstance(affects, dict) and affects else (),
            )
        ]
