"""Real Trivy (offline) scanning with the trivy:db / trivy:java-db that stella-build writes.

The DB is `//corpora:trivy-db`, built from ../shared/data (PyPA, Go vulndb, RustSec, Alpine secdb).
Expected findings come from stella-build's own evidence model: the normalized advisories of the
same packages (rules/sources/*) evaluated with rules/versions.affected(). Trivy and the model must
agree finding for finding on (result type, vulnerability id, package, installed version).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import make_workspace, run_cli
from tests.interop.trivy_env import (  # noqa: F401  (corpora_trivy_db is a fixture)
    BUILD_TIMES, alpine_advisories, corpora_trivy_db, crate_advisories, expected_ids,
    go_advisories, pypi_advisories, run_trivy, trivy_cache, trivy_findings,
)

pytestmark = pytest.mark.interop

# (result type, package as Trivy names it, version) per manifest; the advisories looked up are
# those of the package (Alpine: of its origin). VULNERABLE versions are affected by something in
# the corpora; PATCHED ones by nothing (the test asserts both through the model first).
VULNERABLE = {
    "pip": [("Werkzeug", "0.15.2"), ("Jinja2", "2.10"), ("urllib3", "1.24.1"), ("PyYAML", "5.3")],
    "poetry": [("requests", "2.19.0"), ("django", "3.2.0"), ("flask", "0.12.2")],
    "gomod": [("github.com/gin-gonic/gin", "1.6.0"), ("golang.org/x/text", "0.3.2"),
              ("golang.org/x/net", "0.7.0"), ("github.com/dgrijalva/jwt-go", "3.2.0+incompatible")],
    "cargo": [("smallvec", "0.6.13"), ("time", "0.2.22"), ("regex", "1.5.4"), ("hyper", "0.14.9")],
    "alpine": [("libcrypto1.1", "1.1.1c-r0", "openssl"), ("musl", "1.1.22-r2", "musl"),
               ("busybox", "1.29.3-r9", "busybox")],
}
PATCHED = {
    "pip": [("Werkzeug", "3.0.6"), ("Jinja2", "3.1.4"), ("urllib3", "2.2.3"), ("PyYAML", "6.0.2")],
    "poetry": [("requests", "2.32.3"), ("django", "5.1.2"), ("flask", "3.0.3")],
    "gomod": [("github.com/gin-gonic/gin", "1.10.0"), ("golang.org/x/text", "0.39.0"),
              ("golang.org/x/net", "0.56.0")],
    "cargo": [("smallvec", "1.13.2"), ("time", "0.3.47"), ("regex", "1.11.1"), ("hyper", "1.5.1")],
    "alpine": [("libcrypto1.1", "1.1.1d-r0", "openssl"), ("musl", "1.1.22-r3", "musl"),
               ("busybox", "1.30.1-r2", "busybox")],
}
ECOSYSTEM = {"pip": "PyPI", "poetry": "PyPI", "gomod": "Go", "cargo": "crates.io", "alpine": "Alpine"}


def _advisories(kind: str, entry: tuple) -> list:
    if kind in ("pip", "poetry"):
        return pypi_advisories(entry[0])
    if kind == "gomod":
        return go_advisories(entry[0])
    if kind == "cargo":
        return crate_advisories(entry[0])
    return alpine_advisories("v3.10", entry[2])


def model_findings(spec: dict) -> set[tuple[str, str, str, str]]:
    out = set()
    for kind, entries in spec.items():
        for entry in entries:
            name, version = entry[0], entry[1]
            key = name.lower().replace("_", "-") if kind in ("pip", "poetry") else name
            for vid in expected_ids(_advisories(kind, entry), ECOSYSTEM[kind], version):
                out.add((kind, vid, key, version))
    return out


def write_project(root: Path, spec: dict) -> Path:
    """requirements.txt, poetry.lock, go.mod + go.sum, Cargo.lock and an Alpine 3.10 rootfs."""
    root.mkdir(parents=True)
    (root / "py").mkdir()
    (root / "py" / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in spec["pip"]))
    (root / "poetry").mkdir()
    (root / "poetry" / "poetry.lock").write_text("".join(
        f'[[package]]\nname = "{n}"\nversion = "{v}"\ndescription = ""\noptional = false\n'
        f'python-versions = "*"\nfiles = []\n\n' for n, v in spec["poetry"])
        + '[metadata]\nlock-version = "2.0"\npython-versions = "^3.8"\ncontent-hash = "0"\n')
    (root / "go").mkdir()
    (root / "go" / "go.mod").write_text(
        "module example.com/stella/scan\n\ngo 1.21\n\nrequire (\n"
        + "".join(f"\t{m} v{v}\n" for m, v in spec["gomod"]) + ")\n")
    (root / "go" / "go.sum").write_text("".join(
        f"{m} v{v} h1:{hashlib.sha256(f'{m}@{v}'.encode()).hexdigest()[:43]}=\n"
        f"{m} v{v}/go.mod h1:{hashlib.sha256(f'{m}@{v}/go.mod'.encode()).hexdigest()[:43]}=\n"
        for m, v in spec["gomod"]))
    (root / "rust").mkdir()
    (root / "rust" / "Cargo.lock").write_text("version = 3\n\n" + "".join(
        f'[[package]]\nname = "{n}"\nversion = "{v}"\n'
        f'source = "registry+https://github.com/rust-lang/crates.io-index"\n\n' for n, v in spec["cargo"]))
    (root / "etc").mkdir()
    (root / "etc" / "alpine-release").write_text("3.10.5\n")
    apk = root / "lib" / "apk" / "db"
    apk.mkdir(parents=True)
    (apk / "installed").write_text("".join(
        f"C:Q1{hashlib.sha1(f'{n}{v}'.encode()).hexdigest()[:26]}=\nP:{n}\nV:{v}\nA:x86_64\nS:1000\n"
        f"I:4000\nT:{n}\nU:https://alpinelinux.org\nL:MIT\no:{origin}\nm:sample\nt:1560000000\n\n"
        for n, v, origin in spec["alpine"]))
    return root


def test_model_expectations_are_meaningful() -> None:
    vulnerable = model_findings(VULNERABLE)
    assert {k for k, *_ in vulnerable} == set(VULNERABLE)  # every manifest kind has findings
    assert model_findings(PATCHED) == set()


@pytest.fixture(scope="module")
def vulnerable_report(tmp_path_factory, corpora_trivy_db) -> dict:
    from tests.interop.conftest import require_tool

    trivy = require_tool("trivy")
    tmp = tmp_path_factory.mktemp("scan")
    cache = trivy_cache(corpora_trivy_db, tmp / "cache")
    return run_trivy(trivy, cache, write_project(tmp / "vulnerable", VULNERABLE))


def test_trivy_reports_what_the_model_expects(vulnerable_report) -> None:
    got = set(_typed(vulnerable_report))
    want = model_findings(VULNERABLE)
    assert got == want, f"only Trivy: {sorted(got - want)}\nonly model: {sorted(want - got)}"
    print(f"\n{len(got)} findings agree; corpora trivy-db build {BUILD_TIMES.get('corpora', 0):.1f} s")


def test_trivy_reports_nothing_for_patched_versions(tool, tmp_path, corpora_trivy_db) -> None:
    trivy = tool("trivy")
    cache = trivy_cache(corpora_trivy_db, tmp_path / "cache")
    report = run_trivy(trivy, cache, write_project(tmp_path / "patched", PATCHED))
    types = {r.get("Type") for r in report.get("Results") or ()}
    assert {"pip", "poetry", "gomod", "cargo", "alpine"} <= types  # every manifest was scanned
    assert trivy_findings(report) == set()


def test_trivy_takes_details_and_severity_from_our_db(vulnerable_report, corpora_trivy_db) -> None:
    """Description, severity (our VendorSeverity for the finding's data source) and data source
    that Trivy reports are the ones in our `vulnerability` / `data-source` buckets."""
    from stella_build.rules.formats.trivy.bbolt import BboltReader

    names = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
    reader = BboltReader(corpora_trivy_db / "trivy.db")
    sources = {json.loads(v)["ID"] for _, v in reader.items((b"data-source",))}
    rated = 0
    for result in vulnerable_report["Results"]:
        for v in result.get("Vulnerabilities") or ():
            ours = json.loads(reader.get((b"vulnerability",), v["VulnerabilityID"].encode()))
            assert v["DataSource"]["ID"] in sources
            assert v.get("Description", "") == ours.get("Description", "")
            vendor = ours.get("VendorSeverity", {}).get(v["DataSource"]["ID"])
            assert v["Severity"] == (names[vendor] if vendor else ours["Severity"])
            rated += bool(vendor)
    assert rated > 0  # some findings carry a CVSS-derived severity (RustSec, Alpine-less)
    werkzeug = next(v for r in vulnerable_report["Results"] for v in r.get("Vulnerabilities") or ()
                    if v["VulnerabilityID"] == "CVE-2019-14806")
    assert werkzeug["DataSource"] == {"ID": "osv", "Name": "Python Packaging Advisory Database",
                                      "URL": "https://github.com/pypa/advisory-database"}
    assert werkzeug["FixedVersion"] == "0.15.3"


def _typed(report: dict):
    for result in report.get("Results") or ():
        for v in result.get("Vulnerabilities") or ():
            name = v["PkgName"]
            version = v["InstalledVersion"]
            if result.get("Type") in ("pip", "poetry"):
                name = name.lower().replace("_", "-")
            if result.get("Type") == "gomod":  # Trivy keeps go.mod's "v"; OSV Go versions have none
                version = version.removeprefix("v")
            yield result.get("Type"), v["VulnerabilityID"], name, version


# -- Java DB ---------------------------------------------------------------------------------------

def _tiny_jar(path: Path) -> str:
    """A JAR without pom.properties (so Trivy must identify it by sha1); returns its sha1."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        info = zipfile.ZipInfo("META-INF/MANIFEST.MF", date_time=(2025, 1, 1, 0, 0, 0))
        z.writestr(info, "Manifest-Version: 1.0\r\nCreated-By: stella-build test\r\n\r\n")
        info = zipfile.ZipInfo("dev/stellabuild/Mystery.class", date_time=(2025, 1, 1, 0, 0, 0))
        z.writestr(info, b"\xca\xfe\xba\xbe stella-build test class")
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_trivy_identifies_a_jar_by_sha1_with_our_java_db(tool, tmp_path) -> None:
    trivy = tool("trivy")
    scan = tmp_path / "scan"
    scan.mkdir()
    sha1 = _tiny_jar(scan / "mystery-thing.jar")
    ws = make_workspace(tmp_path / "ws")
    (ws / "jdb").mkdir()
    (ws / "jdb" / "gav.jsonl").write_text(json.dumps(
        {"group_id": "dev.stellabuild.found", "artifact_id": "mystery-core", "version": "4.5.6",
         "sha1": sha1}) + "\n")
    (ws / "jdb" / "Exportfile").write_text(
        '[package]\nsource_date_epoch = 1735689600\n\n'
        '[targets.java-db]\nrule = "trivy_java_db"\nsrcs = ["gav.jsonl"]\n')
    run_cli(["-q", "build", "//jdb:java-db", "//profiles:trivy-db"], cwd=ws, cache=tmp_path / "c",
            check=True)
    cache = trivy_cache(ws / "stella-out/profiles/trivy-db", tmp_path / "cache",
                        java_out=ws / "stella-out/jdb/java-db")
    report = run_trivy(trivy, cache, scan, command="rootfs", extra=("--list-all-pkgs",))
    pkgs = [p for r in report.get("Results") or () for p in r.get("Packages") or ()]
    assert [(p["Name"], p["Version"]) for p in pkgs] == [("dev.stellabuild.found:mystery-core", "4.5.6")]
