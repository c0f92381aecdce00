"""Declarative vulnerability policy and its evaluation into findings (pure functions, no I/O).

A policy (TOML file or inline in the Exportfile) has severity thresholds, VEX honouring and
waivers with expiry dates. Evaluation takes *matches* (an SBOM component whose installed version
an advisory's ranges include, see ``match_components``), the VEX statements and the build time
(``SOURCE_DATE_EPOCH``, never the wall clock) and gives one *finding* per match with a decision
``block | warn | allow`` and the rule that decided. The rules are tried in this order, first hit
wins:

1. ``vex.known_not_affected`` / ``vex.fixed``: a VEX statement with one of ``vex.honour_statuses``
   applies to the component and the advisory (id or alias) → allow;
2. ``waiver.advisory`` / ``waiver.package``: an unexpired waiver names the advisory (id or alias)
   or the package (purl, versionless = any version) → allow. A waiver is active while
   ``SOURCE_DATE_EPOCH < expires``; an expired one is reported in the finding but not applied;
3. ``severity.block_at`` → block, ``severity.warn_at`` → warn, else ``severity.below_warn`` → allow.

Effective severity: the highest CVSS base score of the newest CVSS version the advisory carries
(v4, else v3, else v2) with the rating the ``cvss`` library computed; else the highest vendor label
(CRITICAL, HIGH, MODERATE/MEDIUM, LOW); else ``severity.unknown_as``.
"""
from __future__ import annotations

import functools
import tomllib
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Policy", "PolicyError", "load_policy_toml", "policy_from_dict", "component_key",
    "match_components", "effective_severity", "evaluate", "purl_matches", "LEVELS",
]

Level = Literal["none", "low", "medium", "high", "critical"]
LEVELS: tuple[str, ...] = ("none", "low", "medium", "high", "critical")
_VENDOR_LEVELS = {"CRITICAL": "critical", "HIGH": "high", "MODERATE": "medium", "MEDIUM": "medium",
                  "LOW": "low", "NONE": "none"}
_FORBID = ConfigDict(extra="forbid", frozen=True)


class PolicyError(Exception):
    """A policy that cannot be used: names the file and the field."""

    def __init__(self, path: str, field: str, message: str) -> None:
        super().__init__(f"{path}: {field}: {message}")
        self.path, self.field, self.message = path, field, message


class SeverityPolicy(BaseModel):
    model_config = _FORBID
    block_at: Optional[Level] = Field("critical", description="block findings at or above this level")
    warn_at: Optional[Level] = Field("medium", description="warn for findings at or above this level")
    unknown_as: Level = Field("medium", description="level assumed when an advisory gives no severity")


class VexPolicy(BaseModel):
    model_config = _FORBID
    honour: bool = Field(True, description="let VEX statements allow findings")
    honour_statuses: tuple[Literal["known_not_affected", "fixed"], ...] = Field(
        ("known_not_affected", "fixed"), description="VEX statuses that allow a finding")


class Waiver(BaseModel):
    model_config = _FORBID
    advisory: Optional[str] = Field(None, description="advisory id or alias the waiver covers")
    package: Optional[str] = Field(None, description="purl the waiver covers; without @version: every version")
    subject: Optional[str] = Field(None, description="limit the waiver to one SBOM subject")
    reason: str = Field(..., min_length=1)
    expires: str = Field(..., description="RFC 3339 date or date-time; the waiver stops applying at that instant")

    @field_validator("expires", mode="before")
    @classmethod
    def _expires(cls, value: Any) -> str:
        from stella_build.rules.evidence.model import rfc3339
        return rfc3339(value)  # TOML dates arrive as datetime.date

    @model_validator(mode="after")
    def _target(self) -> "Waiver":
        if not self.advisory and not self.package:
            raise ValueError("a waiver needs 'advisory' or 'package'")
        return self


class Policy(BaseModel):
    """The policy as evaluated; its canonical JSON is data/policy/snapshot.json's ``policy``."""

    model_config = _FORBID
    name: str = Field(..., min_length=1)
    version: str = "1"
    description: Optional[str] = None
    severity: SeverityPolicy = SeverityPolicy()
    vex: VexPolicy = VexPolicy()
    waivers: tuple[Waiver, ...] = ()

    @model_validator(mode="after")
    def _thresholds(self) -> "Policy":
        b, w = self.severity.block_at, self.severity.warn_at
        if b and w and LEVELS.index(w) > LEVELS.index(b):
            raise ValueError("severity.warn_at must not be above severity.block_at")
        return self


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<policy>"


def policy_from_dict(data: Any, path: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PolicyError(path, _field(tuple(err["loc"])), err["msg"]) from None


def load_policy_toml(data: bytes, path: str) -> Policy:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(path, "<document>", f"not UTF-8: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(path, "<document>", f"invalid TOML: {exc}") from None
    return policy_from_dict(doc, path)


# -- matching -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=65536)
def _purl(text: str):
    from packageurl import PackageURL
    return PackageURL.from_string(text)


def component_key(component: dict) -> Optional[tuple[str, str]]:
    """(ecosystem, normalized package name) of an SBOM component, as advisories are keyed."""
    from stella_build.rules.evidence.model import normalize_package_name

    eco = component.get("ecosystem")
    if not eco:
        return None
    p = _purl(component["purl"])
    base = eco.split(":", 1)[0]
    if base in ("Go", "npm") and p.namespace:
        name = f"{p.namespace}/{p.name}"
    elif base == "Maven" and p.namespace:
        name = f"{p.namespace}:{p.name}"
    else:
        name = p.name
    return eco, normalize_package_name(eco, name)


def _fixed_above(eco: str, installed: str, fixed: list[str]) -> Optional[str]:
    from stella_build.rules.evidence.versions import compare
    above = [f for f in fixed if compare(eco, f, installed) > 0]
    return min(above, key=functools.cmp_to_key(functools.partial(compare, eco))) if above else None


def match_components(adv: dict, components: list[dict]) -> tuple[list[dict], list[list]]:
    """Matches of one normalized advisory (canonical dict) against components with its key.

    Returns (matches, errors): a match carries what evaluation needs; an error lists
    [purl, advisory id, reason] for a version that cannot be ordered (never silently skipped).
    """
    from stella_build.rules.evidence.versions import VersionError, affected

    matches, errors = [], []
    for comp in components:
        version = comp.get("version")
        if not version:
            continue
        try:
            if not affected(adv["ecosystem"], version, adv["ranges"], adv["versions"]):
                continue
            fixed = _fixed_above(adv["ecosystem"], version, list(adv["fixed_versions"]))
        except VersionError as exc:
            errors.append([comp["purl"], adv["id"], str(exc)])
            continue
        matches.append({
            "subject": comp.get("subject"), "sbom": comp["source_path"], "purl": comp["purl"],
            "ecosystem": adv["ecosystem"], "package": adv["package"]["normalized"],
            "installed_version": version, "advisory_id": adv["id"], "aliases": adv["aliases"],
            "advisory_source": adv["source"]["name"], "advisory_path": adv["source_path"],
            "fixed_version": fixed, "fixed_versions": list(adv["fixed_versions"]),
            "severities": adv["severity"], "summary": adv.get("summary"),
        })
    return matches, errors


# -- evaluation ---------------------------------------------------------------------------------

def effective_severity(severities: list[dict], unknown_as: str) -> dict:
    for kind in ("CVSS_V4", "CVSS_V3", "CVSS_V2"):
        scored = [s for s in severities if s["type"] == kind and s.get("score") is not None]
        if scored:
            best = max(scored, key=lambda s: (s["score"], s.get("vector") or ""))
            return {"level": (best.get("label") or "none").lower(), "score": best["score"],
                    "type": kind, "vector": best.get("vector")}
    vendor = [_VENDOR_LEVELS[s["label"].upper()] for s in severities
              if s["type"] == "vendor" and (s.get("label") or "").upper() in _VENDOR_LEVELS]
    if vendor:
        return {"level": max(vendor, key=LEVELS.index), "score": None, "type": "vendor", "vector": None}
    return {"level": unknown_as, "score": None, "type": "unknown", "vector": None}


def _name(p) -> tuple:
    return (p.type.lower(), (p.namespace or "").lower(), p.name.lower())


def purl_matches(pattern: str, purl: Optional[str]) -> bool:
    """Does ``purl`` fall under ``pattern``? Same type/namespace/name (case-insensitive); the
    pattern's version, when it has one, must be equal. Non-purl patterns compare as text."""
    if not purl:
        return False
    if not pattern.startswith("pkg:") or not purl.startswith("pkg:"):
        return pattern == purl
    try:
        a, b = _purl(pattern), _purl(purl)
    except ValueError:
        return pattern == purl
    if _name(a) != _name(b):
        return False
    return a.version is None or (b.version or "").lstrip("v") == a.version.lstrip("v")


def _ids(finding: dict) -> set[str]:
    return {finding["advisory_id"], *finding["aliases"]}


def _vex_for(finding: dict, statements: list[dict]) -> Optional[dict]:
    """The statement that applies (latest timestamp, then most specific, then path)."""
    ids = _ids(finding)
    hits = []
    for st in statements:
        if st["vulnerability"] not in ids and not ids.intersection(st["aliases"]):
            continue
        comp, product = st.get("component"), st["product"]
        if comp is None and purl_matches(product, finding["purl"]):
            specificity = 2
        elif (product == finding["subject"] or purl_matches(product, finding["subject"])) and (
                comp is None or purl_matches(comp, finding["purl"])):
            specificity = 1 if comp is None else 3
        else:
            continue
        hits.append(((st.get("timestamp") or "", specificity, st["source_path"], st["status"]), st))
    return max(hits, key=lambda h: h[0])[1] if hits else None


def _waiver_for(finding: dict, waivers: tuple[Waiver, ...], epoch: int) -> Optional[dict]:
    """The first active waiver that covers the finding, else the first expired one (reported)."""
    from stella_build.engine.rule_api import parse_rfc3339

    expired = None
    for i, w in enumerate(waivers):
        if w.subject and w.subject != finding["subject"]:
            continue
        if w.advisory and w.advisory not in _ids(finding):
            continue
        if w.package and not purl_matches(w.package, finding["purl"]):
            continue
        info = {"index": i, "reason": w.reason, "expires": w.expires,
                "kind": "advisory" if w.advisory else "package",
                "active": epoch < parse_rfc3339(w.expires)}
        if info["active"]:
            return info
        expired = expired or info
    return expired


def _decide(policy: Policy, finding: dict, vex: Optional[dict], waiver: Optional[dict]) -> tuple[str, str]:
    if vex and policy.vex.honour and vex["status"] in policy.vex.honour_statuses:
        return "allow", f"vex.{vex['status']}"
    if waiver and waiver["active"]:
        return "allow", f"waiver.{waiver['kind']}"
    level = LEVELS.index(finding["severity"]["level"])
    sev = policy.severity
    if sev.block_at and level >= LEVELS.index(sev.block_at):
        return "block", "severity.block_at"
    if sev.warn_at and level >= LEVELS.index(sev.warn_at):
        return "warn", "severity.warn_at"
    return "allow", "severity.below_warn"


def finding_sort_key(f: dict) -> tuple:
    return (f["subject"] or "", f["purl"], f["advisory_id"], f["advisory_path"], f["sbom"])


def evaluate(policy: Policy, matches: list[dict], statements: list[dict], epoch: int) -> list[dict]:
    """One finding per match, sorted by (subject, purl, advisory id, advisory path, sbom)."""
    findings = []
    for m in matches:
        f = {k: v for k, v in m.items() if k not in ("severities",)}
        f["severity"] = effective_severity(m["severities"], policy.severity.unknown_as)
        vex = _vex_for(f, statements)
        f["vex_status"] = vex["status"] if vex else None
        f["vex"] = None if vex is None else {
            k: vex.get(k) for k in ("vulnerability", "product", "component", "status", "justification",
                                    "impact", "action", "document_id", "source_path")}
        f["waiver"] = _waiver_for(f, policy.waivers, epoch)
        f["decision"], f["rule"] = _decide(policy, f, vex, f["waiver"])
        findings.append(f)
    _cross_link(findings)
    return sorted(findings, key=finding_sort_key)


def _cross_link(findings: list[dict]) -> None:
    """``related``: other advisories reported for the same component that share an id or alias
    (e.g. a GHSA record and a CVE record of two sources): both stay, each names the other."""
    by_component: dict[tuple, list[dict]] = {}
    for f in findings:
        by_component.setdefault((f["subject"], f["sbom"], f["purl"]), []).append(f)
    for group in by_component.values():
        for f in group:
            ids = _ids(f)
            f["related"] = sorted({g["advisory_id"] for g in group
                                   if g is not f and g["advisory_id"] != f["advisory_id"] and ids & _ids(g)})
