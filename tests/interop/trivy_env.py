"""Shared pieces of the real-Trivy interop tests: building our DBs, Trivy cache dirs, running Trivy,
and the expected findings computed by stella-build's own evidence model.

Import the session fixture into a test module with
``from tests.interop.trivy_env import corpora_trivy_db  # noqa: F401``.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from stella_build.rules.evidence.model import SourceInfo
from stella_build.rules.evidence.versions import VersionError, affected
from tests.conftest import SHARED_DATA, make_workspace, require_shared_data, run_cli

BUILD_TIMES: dict[str, float] = {}
_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def corpora_trivy_db(tmp_path_factory) -> Path:
    """stella-out/corpora/trivy-db/ built from ../shared/data once per test run: once per process
    although the fixture is imported into several modules (pytest calls it once per module), and
    once across pytest-xdist's worker processes (the first to take the lock builds; the others
    wait for it and read its output, which no test writes to)."""
    if "corpora" in _BUILT:
        return _BUILT["corpora"]
    require_shared_data()
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: <run>/popen-gwN
    tmp = shared / "corpora-trivy-shared"
    with open(shared / "corpora-trivy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if a worker dies
        done, failed = tmp / "built", shared / "corpora-trivy.failed"
        if failed.is_file():  # another worker's build failed: the same failure, not another 900 s
            pytest.fail(f"the shared corpora trivy-db build failed in another worker:\n{failed.read_text()}")
        if not done.is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            ws = make_workspace(tmp / "ws", packages=("corpora",), shared=True)
            start = time.monotonic()
            try:
                run_cli(["-q", "build", "//corpora:trivy-db"], cwd=ws, cache=tmp / "cache", check=True, timeout=900)
            except BaseException as exc:
                failed.write_text(f"{type(exc).__name__}: {exc}"[-4000:])
                raise
            done.write_text(f"{time.monotonic() - start:.1f}")
        BUILD_TIMES["corpora"] = float(done.read_text())
    _BUILT["corpora"] = tmp / "ws" / "stella-out" / "corpora" / "trivy-db"
    return _BUILT["corpora"]


def trivy_cache(out_dir: Path, cache: Path, java_out: Path | None = None) -> Path:
    """A Trivy cache dir holding our DB (db/trivy.db + db/metadata.json) and optionally the Java DB."""
    (cache / "db").mkdir(parents=True, exist_ok=True)
    for name in ("trivy.db", "metadata.json"):
        shutil.copyfile(out_dir / name, cache / "db" / name)
    if java_out is not None:
        (cache / "java-db").mkdir(parents=True, exist_ok=True)
        for name in ("trivy-java.db", "metadata.json"):
            shutil.copyfile(java_out / name, cache / "java-db" / name)
    return cache


def run_trivy(trivy: str, cache: Path, target: Path, command: str = "fs", extra: tuple = ()) -> dict:
    argv = [trivy, "--cache-dir", str(cache), "--quiet", command, "--skip-db-update",
            "--skip-java-db-update", "--offline-scan", "--scanners", "vuln", "--format", "json",
            *extra, str(target)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cache), "TRIVY_NO_PROGRESS": "true"})
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def trivy_findings(report: dict) -> set[tuple[str, str, str, str]]:
    """{(target, vulnerability id, package name, installed version)} from Trivy's JSON report."""
    out = set()
    for result in report.get("Results") or ():
        for v in result.get("Vulnerabilities") or ():
            out.add((result["Target"], v["VulnerabilityID"], _pkg_key(result.get("Type"), v["PkgName"]),
                     v["InstalledVersion"]))
    return out


def _pkg_key(kind: str | None, name: str) -> str:
    # pip names compare case-insensitively with "_" == "-" (how Trivy looks them up, too)
    return name.lower().replace("_", "-") if kind in ("pip", "poetry") else name


# -- expectations from our evidence model --------------------------------------------------------

def trivy_ids(adv) -> list[str]:
    """The ids Trivy reports for an advisory: its CVE aliases, else its own id (trivy-db's rule)."""
    cves = sorted({a for a in (adv.id, *adv.aliases) if a.startswith("CVE-")})
    return cves or [adv.id]


def pypi_advisories(package: str) -> list:
    from stella_build.rules.evidence.sources.osv import load_osv_document, normalize_osv

    norm = re.sub(r"[-_.]+", "-", package).lower()
    src = SourceInfo(name="Python Packaging Advisory Database")
    out = []
    for d in (SHARED_DATA / "osv-pypi" / "vulns").iterdir():
        if re.sub(r"[-_.]+", "-", d.name).lower() != norm:
            continue
        for f in sorted(d.glob("*.yaml")):
            rel = f.relative_to(SHARED_DATA).as_posix()
            out += normalize_osv(load_osv_document(f.read_bytes(), rel), rel, src)
    return [a for a in out if a.ecosystem == "PyPI" and a.package.normalized == norm]


def go_advisories(module: str) -> list:
    from stella_build.rules.evidence.sources.osv import load_osv_document, normalize_osv

    needle = json.dumps(module).encode()
    src = SourceInfo(name="Go Vulnerability Database")
    out = []
    for f in sorted((SHARED_DATA / "osv-go").glob("*.json")):
        data = f.read_bytes()
        if needle not in data:
            continue
        rel = f.relative_to(SHARED_DATA).as_posix()
        out += normalize_osv(load_osv_document(data, rel), rel, src)
    return [a for a in out if a.ecosystem == "Go" and a.package.name == module]


def crate_advisories(crate: str) -> list:
    from stella_build.rules.evidence.sources.rustsec import normalize_rustsec

    src = SourceInfo(name="RustSec Advisory Database")
    out = []
    for f in sorted((SHARED_DATA / "rustsec").glob(f"*/{crate}/*.md")):
        out += normalize_rustsec(f.read_bytes(), f.relative_to(SHARED_DATA).as_posix(), src)
    return [a for a in out if a.package.name == crate]


def alpine_advisories(release: str, origin: str) -> list:
    from stella_build.rules.evidence.sources.alpine import normalize_secdb

    src = SourceInfo(name="Alpine secdb")
    out = []
    for f in sorted((SHARED_DATA / "alpine-secdb" / release).glob("*.yaml")):
        out += normalize_secdb(f.read_bytes(), f.relative_to(SHARED_DATA).as_posix(), src)
    return [a for a in out if a.package.name == origin]


def expected_ids(advisories: list, ecosystem: str, version: str) -> set[str]:
    """Ids of the non-withdrawn advisories that our model says affect ``version``."""
    ids: set[str] = set()
    for adv in advisories:
        if adv.withdrawn:
            continue
        try:
            hit = affected(ecosystem, version, adv.ranges, adv.versions)
        except VersionError:
            continue
        if hit:
            ids.update(trivy_ids(adv))
    return ids
