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

Effective severity: ``rules/evidence/severity.py`` (CVSS v4 > v3.1 > v3.0 > v2 > textual labels),
the same function the Trivy mapping uses; an advisory without any gets ``severity.unknown_as``.

Matching (``advisory_key`` / ``component_key`` / ``release_applies``): advisories and SBOM
components meet on (base ecosystem, match name): PyPI names PEP 503-normalized, crates.io
lower-case with ``_`` = ``-``, Go module paths and Swift URLs as written (case-sensitive, as Trivy
looks them up), every other ecosystem lower-case (npm, Maven ``group:artifact``, NuGet, Packagist,
RubyGems, Hex, Pub: Trivy lower-cases them too). An ecosystem's ``:<suffix>`` (OSV allows one)
then has to agree with the component: a distribution release (``Debian:12``, ``Ubuntu:22.04:LTS``,
``Alpine:v3.18``) with the purl's ``distro`` qualifier (``debian-12``, ``debian-12.5``,
``bookworm``, ``ubuntu-22.04``, ``jammy``, ``alpine-3.18.4``, ``3.18.4``), a repository URL
(``Maven:https://…``, ``Packagist:https://…``) with the purl's ``repository_url``. A component
that cannot be compared (no or an unknown ``distro``) is listed in ``componentsNotEvaluated`` with
the reason, never silently dropped. Alpine secdb records use the secdb rule
(``versions.alpine_fixed_version``: affected below the branch's highest fixed version).

Operating-system packages (``evidence/distros.py``): a ``pkg:deb``, ``pkg:rpm`` or ``pkg:apk``
purl names its distribution by its namespace (``debian``, ``ubuntu``, ``alma``/``almalinux``,
``rocky``, ``opensuse``, ``suse``, ``wolfi``, ``chainguard``, ``alpine``) and is matched the way
that distribution's Trivy detector looks packages up: dpkg and apk packages by their source
package (the purl's ``upstream`` qualifier, ``name[@version]`` as Syft writes it, else the binary
name) and the source version when the qualifier gives one, RPM packages by their own name
(case-sensitive, as RPM names are) and ``epoch:version-release`` (the ``epoch`` qualifier). RPM
records that list their binaries (``ecosystem_specific.binaries``) match each of them. Releases:
AlmaLinux and Rocky Linux by major version (``AlmaLinux:9`` ~ ``distro=alma-9.3``), openSUSE /
SUSE by product line (``SUSE:Linux Enterprise Server 15 SP5`` ~ ``distro=sles-15.5``), Wolfi and
Chainguard have none. A component of a distribution release for which the inputs hold no
advisory at all is listed in ``componentsNotEvaluated`` (``components_without_data``): no
finding there means "no data", not "not vulnerable".
"""
from __future__ import annotations

import functools
import re
import tomllib
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Policy", "PolicyError", "load_policy_toml", "policy_from_dict", "component_key", "advisory_key",
    "match_name", "release_applies", "match_components", "effective_severity", "evaluate",
    "purl_matches", "LEVELS", "advisory_keys", "component_version", "data_release",
    "components_without_data",
]

Level = Literal["none", "low", "medium", "high", "critical"]
LEVELS: tuple[str, ...] = ("none", "low", "medium", "high", "critical")
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


_PEP503 = re.compile(r"[-_.]+")
# Ecosystems whose names are case-sensitive where Trivy looks them up (trivy-db NormalizePkgName
# keeps Go, CocoaPods and Julia as written; Swift URLs too, minus https:// and .git).
_CASE_SENSITIVE = {"Go", "SwiftURL", "AlmaLinux", "Rocky Linux", "openSUSE", "SUSE"}  # RPM names too


def match_name(ecosystem: str, name: str) -> str:
    """The spelling advisories and components are matched on (see the module docstring)."""
    base = ecosystem.split(":", 1)[0]
    if base == "PyPI":
        return _PEP503.sub("-", name).lower()
    if base == "crates.io":
        return name.lower().replace("_", "-")
    if base == "SwiftURL":
        # Swift package URLs with or without scheme and ".git" name one package (Trivy's
        # NormalizePkgName drops both too); the rest stays case-sensitive
        name = name.removeprefix("https://").removeprefix("http://")
        return name.removesuffix(".git")
    if base in _CASE_SENSITIVE:
        return name
    return name.lower()


def advisory_key(adv: dict) -> tuple[str, str]:
    """(base ecosystem, match name) of a normalized advisory (canonical dict)."""
    base = adv["ecosystem"].split(":", 1)[0]
    return base, match_name(base, adv["package"]["normalized"])


def advisory_keys(adv: dict) -> list[tuple[str, str]]:
    """Every (base ecosystem, match name) an advisory applies to: ``advisory_key``, or for an RPM
    distribution record listing its binaries (``ecosystem_specific.binaries``) one key per binary,
    as the Trivy mapping writes it."""
    from stella_build.rules.evidence.distros import distro, record_binaries

    base, _ = key = advisory_key(adv)
    d = distro(base)
    if d is not None and d.lookup == "binary":
        binaries = record_binaries(adv.get("ecosystem_specific") or ())
        if binaries:
            return list(dict.fromkeys((base, match_name(base, b)) for b in binaries))
    return [key]


def _os_distro(p):
    """The distribution of an OS package purl (deb / rpm / apk with a known namespace), or None."""
    from stella_build.rules.evidence.distros import distro_for_purl

    if p.type.lower() not in ("deb", "rpm", "apk"):
        return None
    return distro_for_purl(p.type, p.namespace)


def component_key(component: dict) -> Optional[tuple[str, str]]:
    """(base ecosystem, match name) of an SBOM component, or None for an unsupported purl type."""
    from stella_build.rules.evidence.distros import source_from_purl

    eco = component.get("ecosystem")
    if not eco:
        return None
    p = _purl(component["purl"])
    base = eco.split(":", 1)[0]
    d = _os_distro(p)
    if d is not None:
        # the distribution's own records, looked up as its scanner does: source packages for
        # dpkg and apk (upstream qualifier), RPM names for RPM distributions
        name = p.name if d.lookup == "binary" else source_from_purl(p.type, p.name, p.version, p.qualifiers)[0]
        return d.base, match_name(d.base, name)  # pkg:deb/ubuntu/…: Ubuntu's records, not Debian's
    if base in ("Go", "npm", "SwiftURL") and p.namespace:
        # the namespace is part of the name: github.com/gin-gonic/gin, @babel/core, and for Swift
        # the package URL without its scheme (pkg:swift/github.com/apple/swift-nio@1.0 is
        # github.com/apple/swift-nio, the OSV SwiftURL name)
        name = f"{p.namespace}/{p.name}"
    elif base == "Maven" and p.namespace:
        name = f"{p.namespace}:{p.name}"
    elif base == "Packagist" and p.namespace:
        name = f"{p.namespace}/{p.name}"
    else:
        name = p.name
    return base, match_name(base, name)


_MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"


def _repo_url(text: Optional[str]) -> str:
    return (text or _MAVEN_CENTRAL).strip().rstrip("/")


def release_applies(adv_ecosystem: str, component: dict) -> tuple[bool, Optional[str]]:
    """Does an advisory of ``adv_ecosystem`` (e.g. "Debian:12") apply to ``component``?

    Returns (applies, reason): ``reason`` is set when the question cannot be answered (the
    component is then reported as not evaluated). Without a suffix every component of the base
    ecosystem qualifies (a plain "Maven" record: Maven Central and its mirrors).
    """
    base, sep, suffix = adv_ecosystem.partition(":")
    if not sep:
        return True, None
    qualifiers = _purl(component["purl"]).qualifiers or {}
    if base in ("Maven", "Packagist"):
        # OSV: the suffix is the repository URL, without a trailing slash
        default = _MAVEN_CENTRAL if base == "Maven" else "https://packagist.org"
        return _repo_url(suffix) == _repo_url(qualifiers.get("repository_url") or default), None
    from stella_build.rules.evidence.distros import DistroError, distro, osv_release, purl_release

    d = distro(base)
    if d is None:
        return False, f"release-suffixed ecosystem {adv_ecosystem!r} is not supported"
    try:
        # the release itself; an Ubuntu stream (Pro, FIPS) applies to its release's packages
        wanted = osv_release(adv_ecosystem)[1].version
    except DistroError:
        return False, f"unrecognized release in ecosystem {adv_ecosystem!r}"
    distro_q = qualifiers.get("distro")
    if not distro_q:
        return False, f"no distro qualifier to match {adv_ecosystem} records"
    have = purl_release(d, distro_q)
    if have is None:
        return False, f"unrecognized distro {distro_q!r} for {adv_ecosystem} records"
    return have.version == wanted, None


def component_version(ecosystem: str, component: dict) -> Optional[str]:
    """The version of ``component`` that records of ``ecosystem`` are compared with: for dpkg and
    apk distributions the source version the purl's ``upstream`` qualifier names (else the
    component's version), for RPM distributions ``epoch:version-release`` (``epoch``
    qualifier), else the component's version. None when the component has no version."""
    from stella_build.rules.evidence.distros import distro, source_from_purl

    version = component.get("version")
    d = distro(ecosystem.split(":", 1)[0])
    if d is None or not version:
        return version
    p = _purl(component["purl"])
    qualifiers = p.qualifiers or {}
    if d.ordering == "rpm":
        epoch = qualifiers.get("epoch")
        return f"{epoch}:{version}" if epoch and epoch != "0" and ":" not in version else version
    return source_from_purl(p.type, p.name, version, qualifiers)[1] or version


def data_release(ecosystem: str) -> Optional[tuple[str, str]]:
    """(distribution, release) an advisory of ``ecosystem`` holds data for; release "*" for a
    distribution record without a release suffix (it applies to every release); None for
    ecosystems that are not distributions or whose release is not recognized."""
    from stella_build.rules.evidence.distros import DistroError, distro, osv_release

    base, sep, _ = ecosystem.partition(":")
    d = distro(base)
    if d is None:
        return None
    if not sep and d.has_release:
        return d.base, "*"
    try:
        return d.base, osv_release(ecosystem)[1].version
    except DistroError:
        return None


def components_without_data(components: list[dict], releases: set[tuple[str, str]]) -> list[list[str]]:
    """[purl, sbom path, reason] for every OS package component (known distribution, with a
    version) whose distribution release has no advisory among ``releases`` (``data_release``
    of every advisory in the inputs): Debian 11 packages when only Debian 12 records are there,
    any Wolfi package when no Wolfi record is. A component whose release cannot be read is listed
    only when its distribution has no data at all."""
    from stella_build.rules.evidence.distros import purl_release

    out = []
    for comp in components:
        if not comp.get("version") or not comp.get("ecosystem"):
            continue
        p = _purl(comp["purl"])
        d = _os_distro(p)
        if d is None or (d.base, "*") in releases:
            continue
        distro_q = (p.qualifiers or {}).get("distro")
        rel = purl_release(d, distro_q) if (distro_q or not d.has_release) else None
        if rel is not None and (d.base, rel.version) in releases:
            continue
        if rel is None and any(b == d.base for b, _ in releases):
            continue  # a release we cannot read: reported per record by release_applies
        what = f"{d.base} {rel.version}".strip() if rel is not None else d.base
        out.append([comp["purl"], comp["source_path"], f"no {what} advisories in the inputs"])
    return out


def _fixed_above(eco: str, installed: str, fixed: list[str]) -> Optional[str]:
    from stella_build.rules.evidence.versions import compare
    above = [f for f in fixed if compare(eco, f, installed) > 0]
    return min(above, key=functools.cmp_to_key(functools.partial(compare, eco))) if above else None


def _secdb(adv: dict) -> bool:
    """An Alpine secdb record (its ranges stand for "fixed in pkgver-rN" entries of one branch)."""
    return adv["ecosystem"].split(":", 1)[0] == "Alpine" and "secfixes_entries" in (
        (adv.get("database_specific") or {}).get("alpine") or {})


def match_components(adv: dict, components: list[dict]) -> tuple[list[dict], list[list], list[list]]:
    """Matches of one normalized advisory (canonical dict) against components with its key.

    Returns (matches, errors, not_evaluated): a match carries what evaluation needs; an error
    lists [purl, advisory id, reason] for a version that cannot be ordered; ``not_evaluated``
    lists [purl, sbom, reason] for a component whose release cannot be compared with the
    advisory's (never silently skipped).
    """
    from stella_build.rules.evidence.versions import VersionError, affected, alpine_fixed_version, compare

    matches, errors, not_evaluated = [], [], []
    eco = adv["ecosystem"]
    secdb_fix = None
    if _secdb(adv):
        try:
            secdb_fix = alpine_fixed_version(eco, adv["fixed_versions"])
        except VersionError as exc:
            return [], [[c["purl"], adv["id"], str(exc)] for c in components if c.get("version")], []
    for comp in components:
        version = component_version(eco, comp)
        if not version:
            continue
        applies, reason = release_applies(eco, comp)
        if reason:
            not_evaluated.append([comp["purl"], comp["source_path"], reason])
        if not applies:
            continue
        try:
            if secdb_fix is not None:
                if compare(eco, version, secdb_fix) >= 0:
                    continue
                fixed = secdb_fix
            else:
                if not affected(eco, version, adv["ranges"], adv["versions"]):
                    continue
                fixed = _fixed_above(eco, version, list(adv["fixed_versions"]))
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
    return matches, errors, not_evaluated


# -- evaluation ---------------------------------------------------------------------------------

def effective_severity(severities: list[dict], unknown_as: str) -> dict:
    """``{level, score, type, vector}`` by ``rules/evidence/severity.py``'s precedence; an advisory
    without any severity gets ``unknown_as`` (type "unknown")."""
    from stella_build.rules.evidence.severity import effective_severity as shared

    found = shared(severities)
    return found if found is not None else {"level": unknown_as, "score": None, "type": "unknown", "vector": None}


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
