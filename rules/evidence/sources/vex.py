"""VEX documents (OpenVEX 0.2 JSON, CSAF 2.0 VEX JSON) -> ``VexStatement`` records.

Statuses use CSAF's names: known_not_affected, fixed, known_affected, under_investigation
(OpenVEX's not_affected / affected map onto them). ``product`` is a purl when the document gives
one (OpenVEX ``@id``/``identifiers.purl``; CSAF ``product_identification_helper.purl``), else the
document's own product id. A CSAF relationship ("X is default_component_of Y") gives
product = Y and component = X; OpenVEX subcomponents give one statement per subcomponent.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from stella_build.rules.evidence.model import (
    EvidenceError, VexStatement, load_json_document, model_errors, rfc3339,
)

__all__ = ["load_vex", "parse_openvex", "parse_csaf_vex", "detect_vex_format"]

_OPENVEX_STATUS = {
    "not_affected": "known_not_affected",
    "affected": "known_affected",
    "fixed": "fixed",
    "under_investigation": "under_investigation",
}
_CSAF_STATUS = {
    "known_not_affected": "known_not_affected",
    "fixed": "fixed",
    "first_fixed": "fixed",
    "known_affected": "known_affected",
    "first_affected": "known_affected",
    "last_affected": "known_affected",
    "under_investigation": "under_investigation",
}


def detect_vex_format(doc: Any) -> Optional[str]:
    if isinstance(doc, dict):
        if str(doc.get("@context", "")).startswith("https://openvex.dev/ns"):
            return "openvex"
        if isinstance(doc.get("document"), dict) and "csaf_version" in doc["document"]:
            return "csaf"
    return None


def load_vex(data: bytes, path: str) -> list[VexStatement]:
    """Parse an OpenVEX or CSAF VEX file (detected from its content)."""
    doc = load_json_document(data, path)
    fmt = detect_vex_format(doc)
    with model_errors(path):
        if fmt == "openvex":
            return parse_openvex(doc, path)
        if fmt == "csaf":
            return parse_csaf_vex(doc, path)
    raise EvidenceError(path, "<document>", "neither OpenVEX (@context openvex.dev/ns) nor CSAF (document.csaf_version)")


def _time(value: Any, path: str, field: str) -> Optional[str]:
    if value is None:
        return None
    try:
        return rfc3339(value)
    except ValueError as exc:
        raise EvidenceError(path, field, str(exc)) from None


def _str(value: Any, path: str, field: str, required: bool = True) -> Optional[str]:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise EvidenceError(path, field, "missing required field" if value is None else f"expected a string, got {value!r}")
    return value


def _list(value: Any, path: str, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EvidenceError(path, field, f"expected a list, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- OpenVEX

def _openvex_product(p: Any, path: str, field: str) -> str:
    if isinstance(p, str):
        return p
    if not isinstance(p, dict):
        raise EvidenceError(path, field, "expected a product object")
    purl = (p.get("identifiers") or {}).get("purl") if isinstance(p.get("identifiers"), dict) else None
    return _str(purl or p.get("@id"), path, f"{field}.@id")  # type: ignore[return-value]


def parse_openvex(doc: dict, path: str) -> list[VexStatement]:
    doc_id = _str(doc.get("@id"), path, "@id", required=False)
    doc_time = _time(doc.get("timestamp"), path, "timestamp")
    out: list[VexStatement] = []
    for i, st in enumerate(_list(doc.get("statements"), path, "statements")):
        where = f"statements[{i}]"
        if not isinstance(st, dict):
            raise EvidenceError(path, where, "expected an object")
        vuln = st.get("vulnerability")
        aliases: list[str] = []
        if isinstance(vuln, dict):
            name = _str(vuln.get("name") or vuln.get("@id"), path, f"{where}.vulnerability.name")
            aliases = [a for a in _list(vuln.get("aliases"), path, f"{where}.vulnerability.aliases") if isinstance(a, str)]
        else:
            name = _str(vuln, path, f"{where}.vulnerability")
        raw_status = st.get("status")
        if not isinstance(raw_status, str) or raw_status not in _OPENVEX_STATUS:
            raise EvidenceError(path, f"{where}.status", f"expected one of {', '.join(_OPENVEX_STATUS)}, got {raw_status!r}")
        status = _OPENVEX_STATUS[raw_status]
        justification = _str(st.get("justification"), path, f"{where}.justification", required=False)
        impact = _str(st.get("impact_statement"), path, f"{where}.impact_statement", required=False)
        if status == "known_not_affected" and not (justification or impact):
            raise EvidenceError(path, f"{where}.justification", "not_affected needs a justification or impact_statement")
        action = _str(st.get("action_statement"), path, f"{where}.action_statement", required=False)
        stamp = _time(st.get("timestamp"), path, f"{where}.timestamp") or doc_time
        products = _list(st.get("products"), path, f"{where}.products")
        if not products:
            raise EvidenceError(path, f"{where}.products", "a statement needs at least one product")
        for j, p in enumerate(products):
            product = _openvex_product(p, path, f"{where}.products[{j}]")
            subs = p.get("subcomponents") if isinstance(p, dict) else None
            components: list[Optional[str]] = [
                _openvex_product(s, path, f"{where}.products[{j}].subcomponents[{k}]")
                for k, s in enumerate(_list(subs, path, f"{where}.products[{j}].subcomponents"))
            ] or [None]
            for comp in components:
                out.append(
                    VexStatement(
                        vulnerability=name, aliases=tuple(sorted(set(aliases))), product=product, component=comp,
                        status=status, justification=justification, impact=impact, action=action,
                        timestamp=stamp, document_id=doc_id, document_format="openvex", source_path=path,
                    )
                )
    return out


# --------------------------------------------------------------------------- CSAF

def _csaf_products(doc: dict, path: str) -> dict[str, tuple[str, Optional[str]]]:
    """product_id -> (product, component) from the product tree (branches and relationships)."""
    tree = doc.get("product_tree") or {}
    if not isinstance(tree, dict):
        raise EvidenceError(path, "product_tree", "expected an object")
    names: dict[str, str] = {}

    def visit_name(fpn: Any, field: str) -> None:
        if not isinstance(fpn, dict):
            raise EvidenceError(path, field, "expected a full_product_name object")
        pid = _str(fpn.get("product_id"), path, f"{field}.product_id")
        helper = fpn.get("product_identification_helper") or {}
        if not isinstance(helper, dict):
            raise EvidenceError(path, f"{field}.product_identification_helper", "expected an object")
        # the first of purl, cpe, name that is given names the product, else its id
        for key, value in (("product_identification_helper.purl", helper.get("purl")),
                           ("product_identification_helper.cpe", helper.get("cpe")), ("name", fpn.get("name"))):
            if value:
                if not isinstance(value, str):
                    raise EvidenceError(path, f"{field}.{key}", f"expected a string, got {type(value).__name__}")
                names[pid] = value  # type: ignore[index]
                break
        else:
            names[pid] = pid  # type: ignore[index]

    def visit_branches(branches: Iterable[Any], field: str) -> None:
        for i, b in enumerate(branches):
            if not isinstance(b, dict):
                raise EvidenceError(path, f"{field}[{i}]", "expected a branch object")
            if "product" in b:
                visit_name(b["product"], f"{field}[{i}].product")
            visit_branches(_list(b.get("branches"), path, f"{field}[{i}].branches"), f"{field}[{i}].branches")

    visit_branches(_list(tree.get("branches"), path, "product_tree.branches"), "product_tree.branches")
    for i, fpn in enumerate(_list(tree.get("full_product_names"), path, "product_tree.full_product_names")):
        visit_name(fpn, f"product_tree.full_product_names[{i}]")
    products: dict[str, tuple[str, Optional[str]]] = {pid: (n, None) for pid, n in names.items()}
    for i, rel in enumerate(_list(tree.get("relationships"), path, "product_tree.relationships")):
        field = f"product_tree.relationships[{i}]"
        if not isinstance(rel, dict):
            raise EvidenceError(path, field, "expected an object")
        comp = names.get(_str(rel.get("product_reference"), path, f"{field}.product_reference"))  # type: ignore[arg-type]
        parent_id = _str(rel.get("relates_to_product_reference"), path, f"{field}.relates_to_product_reference")
        fpn = rel.get("full_product_name") or {}
        if not isinstance(fpn, dict):
            raise EvidenceError(path, f"{field}.full_product_name", "expected an object")
        pid = _str(fpn.get("product_id"), path, f"{field}.full_product_name.product_id")
        products[pid] = (names.get(parent_id, parent_id), comp)  # type: ignore[arg-type]
    return products


def _by_product(items: Any, path: str, field: str, key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, item in enumerate(_list(items, path, field)):
        if not isinstance(item, dict):
            raise EvidenceError(path, f"{field}[{i}]", "expected an object")
        for j, pid in enumerate(_list(item.get("product_ids"), path, f"{field}[{i}].product_ids")):
            if not isinstance(pid, str):
                raise EvidenceError(path, f"{field}[{i}].product_ids[{j}]", "expected a product id string")
            if isinstance(item.get(key), str):
                out.setdefault(pid, item[key])
    return out


def parse_csaf_vex(doc: dict, path: str) -> list[VexStatement]:
    meta = doc.get("document") or {}
    tracking = meta.get("tracking") if isinstance(meta.get("tracking"), dict) else {}
    doc_id = _str(tracking.get("id"), path, "document.tracking.id", required=False)
    doc_time = _time(tracking.get("current_release_date"), path, "document.tracking.current_release_date")
    products = _csaf_products(doc, path)
    out: list[VexStatement] = []
    for i, vuln in enumerate(_list(doc.get("vulnerabilities"), path, "vulnerabilities")):
        where = f"vulnerabilities[{i}]"
        if not isinstance(vuln, dict):
            raise EvidenceError(path, where, "expected an object")
        ids = [x.get("text") for x in _list(vuln.get("ids"), path, f"{where}.ids") if isinstance(x, dict)]
        name = vuln.get("cve") or next((x for x in ids if isinstance(x, str)), None)
        name = _str(name, path, f"{where}.cve")
        aliases = tuple(sorted({x for x in ids if isinstance(x, str) and x != name}))
        flags = _by_product(vuln.get("flags"), path, f"{where}.flags", "label")
        threats = _by_product(
            [t for t in _list(vuln.get("threats"), path, f"{where}.threats") if isinstance(t, dict) and t.get("category") == "impact"],
            path, f"{where}.threats", "details",
        )
        actions = _by_product(vuln.get("remediations"), path, f"{where}.remediations", "details")
        status_map = vuln.get("product_status")
        if not isinstance(status_map, dict):
            raise EvidenceError(path, f"{where}.product_status", "missing required field for a VEX document")
        for raw, pids in sorted(status_map.items()):
            if raw not in _CSAF_STATUS:
                continue  # "recommended" names products, not a status of the vulnerability
            status = _CSAF_STATUS[raw]
            for j, pid in enumerate(_list(pids, path, f"{where}.product_status.{raw}")):
                if not isinstance(pid, str) or pid not in products:
                    raise EvidenceError(path, f"{where}.product_status.{raw}[{j}]", f"unknown product id {pid!r}")
                product, comp = products[pid]
                if status == "known_not_affected" and pid not in flags and pid not in threats:
                    raise EvidenceError(
                        path, f"{where}.product_status.{raw}[{j}]", "known_not_affected needs a flag or an impact threat"
                    )
                out.append(
                    VexStatement(
                        vulnerability=name, aliases=aliases, product=product, component=comp, status=status,
                        justification=flags.get(pid), impact=threats.get(pid), action=actions.get(pid),
                        timestamp=doc_time, document_id=doc_id, document_format="csaf", source_path=path,
                    )
                )
    return out
