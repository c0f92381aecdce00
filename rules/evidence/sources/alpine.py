"""Alpine secdb YAML (``v3.x/main.yaml``) -> one ``Advisory`` per (vulnerability, package, release).

Each ``packages[].pkg.secfixes`` maps a fixed ``pkgver-rN`` to the ids it fixes. Entries are free
text in practice: "CVE-2019-1234", "CVE-2018-14468 (FrameRelay)", "CVE-2017-12122 TALOS-2017-0488",
"CVE_2019-2426", "XSA-207". Every CVE id in an entry gives one record (the other tokens that look
like ids become aliases); an entry without a CVE uses its first id-like token (XSA-207, ZBX-11023).
The original text is kept in ``database_specific["alpine"]["secfixes_entries"]``.

A fixed version of ``0`` means "not affected / will not fix": such a record gets no range and no
fixed version (so it affects nothing) and ``database_specific["alpine"]["unfixed_marker"] = True``.
When the same id is listed under several fixed versions, the range uses the lowest (apk order)
and ``fixed_versions`` lists them all, lowest first.

The whole file is loaded with YAML's base loader (every scalar a string), so versions such as
``1.10`` or ``0`` are never turned into numbers.
"""
from __future__ import annotations

import functools
import re
from typing import Any

import yaml

from stella_build.rules.evidence.bounded import DocumentError, NoAliasesMixin, load_yaml
from stella_build.rules.evidence.model import (
    Advisory, EvidenceError, Package, Range, RangeEvent, SourceInfo, model_errors,
)
from stella_build.rules.evidence.versions import apk_compare

__all__ = ["load_secdb", "normalize_secdb", "secfix_ids"]

_YAML_BASE = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


class _SecdbLoader(NoAliasesMixin, _YAML_BASE):  # type: ignore[misc, valid-type]
    """YAML's base loader (every scalar a string) refusing aliases (see ``evidence.bounded``)."""

_CVE = re.compile(r"CVE[-_ ](\d{4})-(\d{4,})")
_OTHER_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*-\d+$")
_DISTRO = re.compile(r"^v\d+\.\d+$|^edge$")


def _drop_parenthesized(text: str) -> str:
    r"""``re.sub(r"\(.*?\)", " ", text)``, in linear time.

    The regex retries from every "(" that has no ")" after it on its line, scanning to the end each
    time: 20,000 "(" took 14 s. This scan gives the same result (each "(" up to the first ")"
    after it on the same line: "." stops at a newline) and looks at every character at most
    twice."""
    out, start, i = [], 0, 0
    while True:
        j = text.find("(", i)
        if j < 0:
            break
        eol = text.find("\n", j)
        k = text.find(")", j, len(text) if eol < 0 else eol)
        if k < 0:
            if eol < 0:
                break
            i = eol + 1  # no ")" on this line: no "(" on it can match
            continue
        out += [text[start:j], " "]
        start = i = k + 1
    out.append(text[start:])
    return "".join(out)


def secfix_ids(entry: str) -> tuple[list[str], list[str]]:
    """(vulnerability ids, aliases) named by one secfixes entry."""
    cves = list(dict.fromkeys(f"CVE-{y}-{n}" for y, n in _CVE.findall(entry)))
    rest = _drop_parenthesized(_CVE.sub(" ", entry))
    others = [t for t in rest.split() if _OTHER_ID.match(t) and not t.upper().startswith("CVE")]
    others = list(dict.fromkeys(others))
    if cves:
        return cves, others
    return others[:1], others[1:]


def load_secdb(data: bytes, path: str) -> dict[str, Any]:
    """Parse and validate one secdb file; returns the document (all scalars are strings).

    Parsing is bounded (``evidence.bounded``: size, nesting, no aliases); every problem is an
    EvidenceError naming ``path`` and the field."""
    try:
        doc = load_yaml(data, _SecdbLoader)
    except DocumentError as exc:
        raise EvidenceError.from_document(path, exc) from None
    if not isinstance(doc, dict):
        raise EvidenceError(path, "<document>", "expected a mapping at the top")
    distro = doc.get("distroversion")
    if not isinstance(distro, str) or not _DISTRO.match(distro):
        raise EvidenceError(path, "distroversion", f"expected 'vX.Y' or 'edge', got {distro!r}")
    if not isinstance(doc.get("reponame"), str) or not doc["reponame"]:
        raise EvidenceError(path, "reponame", "missing required field")
    packages = doc.get("packages")
    if packages in (None, ""):
        doc["packages"] = []
    elif not isinstance(packages, list):
        raise EvidenceError(path, "packages", "expected a list")
    for i, p in enumerate(doc["packages"]):
        pkg = p.get("pkg") if isinstance(p, dict) else None
        if not isinstance(pkg, dict):
            raise EvidenceError(path, f"packages[{i}].pkg", "expected a mapping")
        if not isinstance(pkg.get("name"), str) or not pkg["name"]:
            raise EvidenceError(path, f"packages[{i}].pkg.name", "missing required field")
        secfixes = pkg.get("secfixes")
        if secfixes in (None, ""):
            pkg["secfixes"] = {}
        elif not isinstance(secfixes, dict):
            raise EvidenceError(path, f"packages[{i}].pkg.secfixes", "expected a mapping of version to ids")
        for ver, ids in pkg["secfixes"].items():
            where = f"packages[{i}].pkg.secfixes[{ver}]"
            if ids in (None, ""):
                pkg["secfixes"][ver] = []
            elif not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise EvidenceError(path, where, "expected a list of vulnerability ids")
    return doc


def normalize_secdb(data: bytes, path: str, source: SourceInfo) -> list[Advisory]:
    """All advisories of one secdb file, in file order of packages then first mention."""
    doc = load_secdb(data, path)
    distro, repo = doc["distroversion"], doc["reponame"]
    ecosystem = f"Alpine:{distro}"
    out: list[Advisory] = []
    for i, p in enumerate(doc["packages"]):
        name = p["pkg"]["name"]
        records: dict[str, dict[str, Any]] = {}
        for ver, entries in p["pkg"]["secfixes"].items():
            for entry in entries:
                ids, aliases = secfix_ids(entry)
                if not ids:
                    raise EvidenceError(
                        path, f"packages[{i}].pkg.secfixes[{ver}]", f"no vulnerability id in {entry!r}"
                    )
                for vid in ids:
                    rec = records.setdefault(vid, {"fixed": [], "aliases": set(), "entries": [], "zero": False})
                    if ver == "0":
                        rec["zero"] = True
                    elif ver not in rec["fixed"]:
                        rec["fixed"].append(ver)
                    rec["aliases"].update(aliases)
                    if entry not in rec["entries"]:
                        rec["entries"].append(entry)
        for vid, rec in records.items():
            fixed = sorted(rec["fixed"], key=functools.cmp_to_key(apk_compare))
            ranges = ()
            if fixed:
                ranges = (
                    Range(
                        type="ECOSYSTEM",
                        events=(RangeEvent(kind="introduced", version="0"), RangeEvent(kind="fixed", version=fixed[0])),
                    ),
                )
            alpine_extra: dict[str, Any] = {"repository": repo, "secfixes_entries": rec["entries"]}
            if rec["zero"]:
                alpine_extra["unfixed_marker"] = True
            with model_errors(path):  # a value the model refuses is bad evidence, not a bug
                advisory = Advisory(
                    id=vid,
                    aliases=tuple(sorted(rec["aliases"] - {vid})),
                    source=source,
                    source_path=path,
                    ecosystem=ecosystem,
                    package=Package(name=name, normalized=name, purl=_apk_purl(name, distro)),
                    ranges=ranges,
                    fixed_versions=tuple(fixed),
                    database_specific={"alpine": alpine_extra},
                )
            out.append(advisory)
    return out


def _apk_purl(name: str, distro: str) -> str:
    from packageurl import PackageURL

    return PackageURL(type="apk", namespace="alpine", name=name, qualifiers={"distro": distro}).to_string()
