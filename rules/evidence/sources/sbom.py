"""SBOMs (CycloneDX 1.5/1.6 JSON, SPDX 2.3 JSON) -> ``SbomComponent`` records.

Only components that carry a purl are kept (a purl is what matches advisories). CycloneDX nested
``components`` are walked depth-first; SPDX packages give their purl through an ``externalRefs``
entry of category PACKAGE-MANAGER (or PACKAGE_MANAGER) and type ``purl``. ``subject`` is the
SBOM's main component (CycloneDX ``metadata.component``, SPDX ``documentDescribes``) as a purl
when it has one, else ``name@version``. Purls are parsed with ``packageurl-python``.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from packageurl import PackageURL

from stella_build.rules.evidence.model import (
    EvidenceError, SbomComponent, ecosystem_from_purl_type, load_json_document, model_errors,
)

__all__ = ["load_sbom", "parse_cyclonedx", "parse_spdx", "detect_sbom_format"]


def detect_sbom_format(doc: Any) -> Optional[str]:
    if isinstance(doc, dict):
        if doc.get("bomFormat") == "CycloneDX":
            return "cyclonedx"
        if str(doc.get("spdxVersion", "")).startswith("SPDX-"):
            return "spdx"
    return None


def load_sbom(data: bytes, path: str) -> list[SbomComponent]:
    """Parse a CycloneDX or SPDX JSON SBOM (detected from its content)."""
    doc = load_json_document(data, path)
    fmt = detect_sbom_format(doc)
    with model_errors(path):
        if fmt == "cyclonedx":
            return parse_cyclonedx(doc, path)
        if fmt == "spdx":
            return parse_spdx(doc, path)
    raise EvidenceError(path, "<document>", "neither CycloneDX (bomFormat) nor SPDX (spdxVersion)")


def _component(purl_text: Any, name: Any, version: Any, subject: Optional[str], fmt: str, path: str, field: str) -> SbomComponent:
    if not isinstance(purl_text, str):
        raise EvidenceError(path, field, f"expected a purl string, got {purl_text!r}")
    try:
        purl = PackageURL.from_string(purl_text)
    except ValueError as exc:
        raise EvidenceError(path, field, f"invalid purl {purl_text!r}: {exc}") from None
    distro = (purl.qualifiers or {}).get("distro") if isinstance(purl.qualifiers, dict) else None
    return SbomComponent(
        subject=subject,
        name=name if isinstance(name, str) and name else purl.name,
        version=version if isinstance(version, str) and version else purl.version,
        purl=purl.to_string(),
        ecosystem=ecosystem_from_purl_type(purl.type, distro),
        sbom_format=fmt,  # type: ignore[arg-type]
        source_path=path,
    )


def _label(obj: dict) -> Optional[str]:
    if isinstance(obj.get("purl"), str):
        return obj["purl"]
    name = obj.get("name")
    if not isinstance(name, str):
        return None
    return f"{name}@{obj['version']}" if isinstance(obj.get("version"), str) else name


# --------------------------------------------------------------------------- CycloneDX

def _walk_cdx(components: Any, path: str, field: str) -> Iterator[tuple[dict, str]]:
    if components is None:
        return
    if not isinstance(components, list):
        raise EvidenceError(path, field, "expected a list")
    for i, c in enumerate(components):
        where = f"{field}[{i}]"
        if not isinstance(c, dict):
            raise EvidenceError(path, where, "expected an object")
        yield c, where
        yield from _walk_cdx(c.get("components"), path, f"{where}.components")


def parse_cyclonedx(doc: dict, path: str) -> list[SbomComponent]:
    spec = str(doc.get("specVersion", ""))
    if spec not in ("1.4", "1.5", "1.6"):
        raise EvidenceError(path, "specVersion", f"unsupported CycloneDX version {spec!r} (1.4-1.6)")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    main = meta.get("component") if isinstance(meta.get("component"), dict) else None
    subject = _label(main) if main else None
    out = []
    for c, where in _walk_cdx(doc.get("components"), path, "components"):
        if c.get("purl") is None:
            continue
        out.append(_component(c["purl"], c.get("name"), c.get("version"), subject, "cyclonedx", path, f"{where}.purl"))
    return out


# --------------------------------------------------------------------------- SPDX

def _spdx_purl(pkg: dict, path: str, where: str) -> tuple[Optional[str], str]:
    refs = pkg.get("externalRefs") or []
    if not isinstance(refs, list):
        raise EvidenceError(path, f"{where}.externalRefs", "expected a list")
    for j, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise EvidenceError(path, f"{where}.externalRefs[{j}]", "expected an object")
        category = str(ref.get("referenceCategory", "")).replace("_", "-")
        if category == "PACKAGE-MANAGER" and ref.get("referenceType") == "purl":
            return ref.get("referenceLocator"), f"{where}.externalRefs[{j}].referenceLocator"
    return None, where


def parse_spdx(doc: dict, path: str) -> list[SbomComponent]:
    if doc.get("spdxVersion") not in ("SPDX-2.2", "SPDX-2.3"):
        raise EvidenceError(path, "spdxVersion", f"unsupported SPDX version {doc.get('spdxVersion')!r} (2.2, 2.3)")
    packages = doc.get("packages") or []
    if not isinstance(packages, list):
        raise EvidenceError(path, "packages", "expected a list")
    by_id = {p["SPDXID"]: p for p in packages if isinstance(p, dict) and isinstance(p.get("SPDXID"), str)}
    described = doc.get("documentDescribes") or []
    if not isinstance(described, list):
        raise EvidenceError(path, "documentDescribes", "expected a list")
    described = [sid for sid in described if isinstance(sid, str)]
    relationships = doc.get("relationships") or []
    if not isinstance(relationships, list):
        raise EvidenceError(path, "relationships", "expected a list")
    for rel in relationships:
        if isinstance(rel, dict) and rel.get("relationshipType") == "DESCRIBES" and rel.get("spdxElementId") == "SPDXRef-DOCUMENT":
            if isinstance(rel.get("relatedSpdxElement"), str):
                described.append(rel["relatedSpdxElement"])
    subject = None
    for sid in described:
        if sid in by_id:
            purl, _ = _spdx_purl(by_id[sid], path, "packages")
            subject = purl or _label({"name": by_id[sid].get("name"), "version": by_id[sid].get("versionInfo")})
            break
    out = []
    for i, p in enumerate(packages):
        where = f"packages[{i}]"
        if not isinstance(p, dict):
            raise EvidenceError(path, where, "expected an object")
        purl, field = _spdx_purl(p, path, where)
        if purl is None:
            continue
        out.append(_component(purl, p.get("name"), p.get("versionInfo"), subject, "spdx", path, field))
    return out
