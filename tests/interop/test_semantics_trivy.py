"""Real Trivy v0.74.0 (offline) against a trivy:db built from the small records of
tests/test_semantics.py, and json:policy over an SBOM of the same packages: both must report the
same (package, version, vulnerability) findings and the same severity, and both must equal what
the specs say (``SEMANTICS_COMPONENTS``).

Probes: out-of-order PyPI and Go events (item 1), ``limit`` events (2), a RustSec range reopened
before the next line's pre-releases and a Go record without a fix against a pseudo-version (3),
a dotted PyPI project looked up from requirements.txt and poetry.lock spellings (4), a
CVSS v4 + v3 + Ubuntu-label severity list (5), an Alpine id fixed twice in one branch (8).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.conftest import make_workspace, run_cli
from tests.interop.trivy_env import run_trivy, trivy_cache
from tests.test_semantics import (
    SEMANTICS_COMPONENTS, SEMANTICS_RECORDS, SEMANTICS_RUSTSEC, SEMANTICS_SECDB, _sbom,
)

pytestmark = pytest.mark.interop

EXPORTFILE = """[package]
source_date_epoch = 1735689600

[targets.osv]
rule = "osv_source"
srcs = ["osv/*.json"]
source = { name = "Semantics Test Feed" }

[targets.rustsec]
rule = "rustsec_source"
srcs = ["rustsec/**/*.md"]
source = { name = "Semantics RustSec" }

[targets.alpine]
rule = "alpine_secdb_source"
srcs = ["alpine/**/*.yaml"]
source = { name = "Semantics secdb" }

[targets.sbom]
rule = "sbom_source"
srcs = ["app.cdx.json"]
source = { name = "Semantics SBOMs" }

[targets.trivy-db]
rule = "trivy_db"
deps = [":osv", ":rustsec", ":alpine"]

[targets.policy]
rule = "json_policy"
deps = [":osv", ":rustsec", ":alpine", ":sbom"]
policy = { name = "semantics" }
"""

_PURL = re.compile(r"^pkg:(?P<type>[^/]+)/(?P<path>[^@]+)@(?P<version>[^?]+)")


def _key(kind: str, name: str, version: str) -> tuple[str, str, str]:
    if kind in ("pip", "poetry", "pypi"):
        return "pypi", re.sub(r"[-_.]+", "-", name).lower(), version
    if kind in ("gomod", "golang"):
        return "golang", name, version.removeprefix("v")
    if kind == "cargo":
        return "cargo", name, version
    return "apk", name, version


def _probes() -> list[tuple[str, str, str]]:
    out = []
    for purl, _ in SEMANTICS_COMPONENTS:
        m = _PURL.match(purl)
        out.append((m["type"], m["path"].split("/")[-1] if m["type"] in ("pypi", "cargo", "apk") else m["path"],
                    m["version"]))
    return out


def write_scan_roots(root: Path) -> list[Path]:
    """One directory of lockfiles (one requirements.txt / go.mod per probe version, a poetry.lock
    with the PEP 503 spelling, a Cargo.lock) plus one Alpine 3.18 rootfs per apk probe."""
    lang = root / "lang"
    roots = [lang]
    apk = 0
    for i, (kind, name, version) in enumerate(_probes()):
        d = lang / f"p{i:02d}"
        if kind == "pypi":
            d.mkdir(parents=True)
            (d / "requirements.txt").write_text(f"{name}=={version}\n")
        elif kind == "golang":
            d.mkdir(parents=True)
            (d / "go.mod").write_text(f"module example.com/probe{i}\n\ngo 1.21\n\nrequire {name} {version}\n")
            h = hashlib.sha256(f"{name}@{version}".encode()).hexdigest()[:43]
            (d / "go.sum").write_text(f"{name} {version} h1:{h}=\n{name} {version}/go.mod h1:{h}=\n")
        elif kind == "apk":
            r = root / f"alpine{apk}"
            apk += 1
            (r / "etc").mkdir(parents=True)
            (r / "etc" / "alpine-release").write_text("3.18.4\n")
            (r / "lib" / "apk" / "db").mkdir(parents=True)
            (r / "lib" / "apk" / "db" / "installed").write_text(
                f"C:Q1{hashlib.sha1(version.encode()).hexdigest()[:26]}=\nP:{name}\nV:{version}\nA:x86_64\n"
                f"S:1000\nI:4000\nT:{name}\nU:https://example.org\nL:MIT\no:{name}\nm:t\nt:1700000000\n\n")
            roots.append(r)
    (lang / "poetry").mkdir()
    (lang / "poetry" / "poetry.lock").write_text(
        '[[package]]\nname = "zope-interface"\nversion = "4.0.0"\ndescription = ""\noptional = false\n'
        'python-versions = "*"\nfiles = []\n\n[metadata]\nlock-version = "2.0"\npython-versions = "^3.8"\n'
        'content-hash = "0"\n')
    crates = [(n, v) for k, n, v in _probes() if k == "cargo"]
    (lang / "rust").mkdir()
    (lang / "rust" / "Cargo.lock").write_text("version = 3\n\n" + "".join(
        f'[[package]]\nname = "{n}"\nversion = "{v}"\n'
        f'source = "registry+https://github.com/rust-lang/crates.io-index"\n\n' for n, v in crates))
    return roots


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("sem") / "ws", packages=())
    pkg = ws / "sem"
    for sub in ("osv", "rustsec/crates/prerel", "alpine/v3.18"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "Exportfile").write_text(EXPORTFILE)
    for key, doc in SEMANTICS_RECORDS.items():
        (pkg / "osv" / f"{key}.json").write_text(json.dumps(doc))
    (pkg / "rustsec/crates/prerel/RUSTSEC-2099-0001.md").write_text(SEMANTICS_RUSTSEC)
    (pkg / "alpine/v3.18/main.yaml").write_text(SEMANTICS_SECDB)
    (pkg / "app.cdx.json").write_text(_sbom([p for p, _ in SEMANTICS_COMPONENTS]))
    run_cli(["-q", "build", "//sem:trivy-db", "//sem:policy"], cwd=ws, cache=ws.parent / "cache", check=True)
    return ws


TRIVY_LOOKUPS: set = set()  # (result type, package name as the lockfile spells it, vulnerability id)


@pytest.fixture(scope="module")
def trivy_findings(built, tmp_path_factory) -> dict:
    """{(kind, name, version, vulnerability id): {severity}} over every scan root."""
    from tests.interop.conftest import require_tool

    trivy = require_tool("trivy")
    tmp = tmp_path_factory.mktemp("semscan")
    cache = trivy_cache(built / "stella-out/sem/trivy-db", tmp / "cache")
    out: dict = {}
    for root in write_scan_roots(tmp / "scan"):
        report = run_trivy(trivy, cache, root)
        for result in report.get("Results") or ():
            for v in result.get("Vulnerabilities") or ():
                key = _key(result.get("Type"), v["PkgName"], v["InstalledVersion"]) + (v["VulnerabilityID"],)
                out.setdefault(key, set()).add(v["Severity"])
                TRIVY_LOOKUPS.add((result.get("Type"), v["PkgName"], v["VulnerabilityID"]))
    return out


def _policy_findings(built: Path) -> dict:
    import zstandard

    data = (built / "stella-out/sem/policy/data/policy/evaluations.jsonl.zst").read_bytes()
    out = {}
    for line in zstandard.ZstdDecompressor().decompressobj().decompress(data).splitlines():
        f = json.loads(line)
        m = _PURL.match(f["purl"])
        name = m["path"].split("/")[-1] if m["type"] in ("pypi", "cargo", "apk") else m["path"]
        out[_key(m["type"], name, f["installed_version"]) + (f["advisory_id"],)] = f["severity"]["level"].upper()
    return out


def test_trivy_and_json_policy_report_what_the_specs_say(built, trivy_findings):
    policy = _policy_findings(built)
    want = {_key(*p)[:3] for p, (_, hit) in zip(_probes(), SEMANTICS_COMPONENTS) if hit}
    assert {k[:3] for k in policy} == want, "json:policy differs from the specs"
    got = {k[:3] for k in trivy_findings}
    assert got == want, f"only Trivy: {sorted(got - want)}\nonly spec: {sorted(want - got)}"
    assert set(trivy_findings) == set(policy)  # the same ids too
    # the requirements.txt spelling and the poetry.lock spelling both found the dotted project,
    # and requirements.txt's dotted spelling found the record written with PEP 503's
    assert {("pip", "zope.interface", "STELLA-SEM-0004"), ("poetry", "zope-interface", "STELLA-SEM-0004"),
            ("pip", "ruamel.yaml", "STELLA-SEM-0005")} <= TRIVY_LOOKUPS


def test_trivy_and_json_policy_agree_on_severity(built, trivy_findings):
    policy = _policy_findings(built)
    rated = {k: sev for k, sev in trivy_findings.items() if sev != {"UNKNOWN"}}
    assert rated == {("pypi", "sevpkg", "1.0.0", "STELLA-SEM-0006"): {"HIGH"}}
    for k, sev in rated.items():
        assert sev == {policy[k]}
