"""An Offline Kit carried into a machine with no network at all, checked and used with real tools.

Every step after the build runs in a fresh network namespace (`unshare -n`: only a loopback
interface, and it is down): `verify-kit.sh` under dash with cosign on the PATH,
`stella-build kit import`, then Trivy scanning lockfiles and a JAR with
`--skip-db-update --skip-java-db-update --offline-scan`. strace records every socket the first
scan opens: there must be no internet socket at all. Expected findings come from stella-build's own
evidence model over the same sample advisories (as tests/interop/test_trivy_scan.py does for the
corpora), so Trivy and the model must agree finding for finding.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stella_build.rules.evidence.model import SourceInfo
from tests.conftest import CLI, make_workspace, run_cli
from tests.interop.test_trivy_scan import _tiny_jar, _typed, write_project
from tests.interop.trivy_env import expected_ids
from tests.signed_bundle import PASSWORD, write_public_test_keys

pytestmark = pytest.mark.interop

ARCHIVE = "stella-offline-kit-20250101.tar.gz"
SOURCE = "stella-build sample advisories"
# Lockfiles over the sample advisories in profiles/evidence/osv (what the model says they hit is
# asserted non-empty per ecosystem below).
SPEC = {
    "pip": [("requests", "2.19.0"), ("Werkzeug", "0.15.2"), ("Jinja2", "2.10"), ("urllib3", "1.24.1"),
            ("PyYAML", "5.3")],
    "poetry": [("django", "3.2.0"), ("flask", "0.12.2")],
    "gomod": [("github.com/gin-gonic/gin", "1.6.0"), ("golang.org/x/text", "0.3.2"), ("golang.org/x/net", "0.7.0")],
    "cargo": [("smallvec", "0.6.13"), ("time", "0.2.22"), ("regex", "1.5.4"), ("hyper", "0.14.9")],
    "alpine": [],
}
ECOSYSTEM = {"pip": "PyPI", "poetry": "PyPI", "gomod": "Go", "cargo": "crates.io"}
JAR_GAV = ("dev.stellabuild.found", "mystery-core", "4.5.6")
# A Maven advisory for the JAR's GAV, added to the sample evidence of the test workspace.
MAVEN_ADVISORY = {
    "schema_version": "1.6.0", "id": "STELLA-KIT-2025-0001", "modified": "2025-01-01T00:00:00Z",
    "published": "2025-01-01T00:00:00Z", "aliases": ["CVE-2025-99001"],
    "summary": "mystery-core before 5.0.0 (an advisory written for the Offline Kit interop test)",
    "details": "Versions before 5.0.0 are affected.",
    "affected": [{"package": {"ecosystem": "Maven", "name": "dev.stellabuild.found:mystery-core"},
                  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "5.0.0"}]}]}],
}
# Trivy contacts check.trivy.dev (version notice, telemetry) unless told not to; the DB flags alone
# are not enough for "no network call" (see test_trivy_without_the_notice_flags_would_call_out).
OFFLINE = ["--skip-db-update", "--skip-java-db-update", "--offline-scan", "--skip-version-check",
           "--disable-telemetry", "--scanners", "vuln", "--format", "json"]


def _advisories(ws: Path) -> list:
    from stella_build.rules.evidence.sources.osv import load_osv_document, normalize_osv

    source = SourceInfo(name=SOURCE)
    out = []
    for f in sorted((ws / "profiles/evidence/osv").iterdir()):
        rel = f.relative_to(ws).as_posix()
        out += normalize_osv(load_osv_document(f.read_bytes(), rel), rel, source)
    return out


def model_findings(ws: Path) -> set[tuple[str, str, str, str]]:
    advisories = _advisories(ws)
    out = set()
    for kind, entries in SPEC.items():
        for name, version in entries if kind in ECOSYSTEM else ():
            key = re.sub(r"[-_.]+", "-", name).lower() if kind in ("pip", "poetry") else name
            mine = [a for a in advisories if a.ecosystem == ECOSYSTEM[kind]
                    and (a.package.normalized if kind in ("pip", "poetry") else a.package.name) == key]
            for vid in expected_ids(mine, ECOSYSTEM[kind], version):
                out.add((kind, vid, name.lower().replace("_", "-") if kind in ("pip", "poetry") else name, version))
    group, artifact, version = JAR_GAV
    maven = [a for a in advisories if a.ecosystem == "Maven"]
    for vid in expected_ids(maven, "Maven", version):
        out.add(("jar", vid, f"{group}:{artifact}", version))
    return out


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict:
    """A signed kit of the sample workspace plus a Maven advisory and the GAV of a tiny JAR."""
    from tests.interop.conftest import require_tool

    for name in ("dash", "unshare", "strace", "trivy", "cosign"):
        require_tool(name)
    root = tmp_path_factory.mktemp("offline-kit")
    jar_dir = root / "jar"
    jar_dir.mkdir()
    sha1 = _tiny_jar(jar_dir / "mystery-core.jar")
    ws = make_workspace(root / "ws")
    group, artifact, version = JAR_GAV
    (ws / "profiles/evidence/maven/kit-test.jsonl").write_text(json.dumps(
        {"group_id": group, "artifact_id": artifact, "version": version, "sha1": sha1}) + "\n")
    (ws / "profiles/evidence/osv/STELLA-KIT-2025-0001-Maven.json").write_text(json.dumps(MAVEN_ADVISORY, indent=2))
    key, pub = write_public_test_keys(root / "keys")
    run_cli(["-q", "build", "//profiles:offline-kit"], cwd=ws, cache=root / "cache", check=True,
            env={"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD})
    media = root / "media"  # what is carried across: the target's output directory
    shutil.copytree(ws / "stella-out/profiles/offline-kit", media)
    project = write_project(root / "project", SPEC)
    shutil.rmtree(project / "etc")  # no OS packages: the sample evidence has no Alpine advisories
    shutil.rmtree(project / "lib")
    return {"ws": ws, "media": media, "pub": pub, "root": root, "project": project, "jar_dir": jar_dir}


def offline(argv: list, **kwargs) -> subprocess.CompletedProcess:
    """Run argv in a new network namespace with no usable interface."""
    # root may make a network namespace; anyone else needs a user namespace for it (-r)
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    return subprocess.run([*unshare, *map(str, argv)], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, **kwargs)


def _tools_path() -> str:
    from tests.interop.conftest import tools_dir

    return f"{tools_dir() / 'bin'}:/usr/bin:/bin"


def test_verify_kit_sh_checks_signatures_with_cosign_offline(kit):
    res = offline([shutil.which("dash"), kit["media"] / "verify-kit.sh", "-k", kit["pub"]],
                  env={"PATH": _tools_path(), "HOME": str(kit["root"]), "TMPDIR": str(kit["root"])})
    assert res.returncode == 0, res.stderr
    assert f"detached signature of {ARCHIVE} verified with cosign" in res.stdout
    checked = int(re.search(r"(\d+) signature\(s\) verified with cosign", res.stdout).group(1))
    assert checked >= 18  # every export's bundles, .sig files and attestations
    tampered = kit["root"] / "tampered"
    shutil.copytree(kit["media"], tampered)
    sig = tampered / (ARCHIVE + ".sig")
    sig.write_bytes(sig.read_bytes()[:-4] + b"AAA=")  # still base64, no longer the signature
    res = offline([shutil.which("dash"), tampered / "verify-kit.sh", "-k", kit["pub"]],
                  env={"PATH": _tools_path(), "HOME": str(kit["root"]), "TMPDIR": str(kit["root"])})
    assert res.returncode == 1 and f"{ARCHIVE}.sig does not verify" in res.stderr


def test_import_then_trivy_scans_offline_without_any_network_call(kit):
    cache = kit["root"] / "trivy-cache"
    res = offline([CLI, "kit", "import", kit["media"], "--trivy-cache", cache, "--key", kit["pub"], "--output", "json"])
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["installed"] == {"db": "installed", "java-db": "installed"}
    assert report["signatures"]["archive"] == 2
    trivy = shutil.which("trivy", path=_tools_path())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(kit["root"]), "TRIVY_NO_PROGRESS": "true"}
    trace = kit["root"] / "scan.strace"
    res = offline(["strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", trace, trivy, "--cache-dir", cache,
                   "--quiet", "fs", *OFFLINE, kit["project"]], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    sockets = [line for line in trace.read_text().splitlines() if re.search(r"\b(socket|connect)\(", line)]
    internet = [line for line in sockets if "AF_INET" in line]
    assert internet == [], internet[:5]  # the first scan opened no internet socket at all
    lockfiles = json.loads(res.stdout)
    res = offline([trivy, "--cache-dir", cache, "--quiet", "rootfs", *OFFLINE, kit["jar_dir"]], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    jar = json.loads(res.stdout)
    got = set(_typed(lockfiles)) | set(_typed(jar))
    want = model_findings(kit["ws"])
    assert {k for k, *_ in want} == {"pip", "poetry", "gomod", "cargo", "jar"}  # every kind has something to find
    assert got == want, f"only Trivy: {sorted(got - want)}\nonly model: {sorted(want - got)}"
    assert ("jar", "CVE-2025-99001", "dev.stellabuild.found:mystery-core", "4.5.6") in got
    print(f"\n{len(got)} findings agree; the first scan opened {len(sockets)} sockets, none of them internet")


def test_trivy_without_the_notice_flags_would_call_out(kit):
    """The control of the test above: the same scan without --skip-version-check/--disable-telemetry
    does try the network (and strace sees it), so an empty trace means something."""
    cache = kit["root"] / "control-cache"
    assert offline([CLI, "kit", "import", kit["media"], "--trivy-cache", cache]).returncode == 0
    trace = kit["root"] / "control.strace"
    flags = [f for f in OFFLINE if f not in ("--skip-version-check", "--disable-telemetry")]
    # Trivy checks for notices in a goroutine that a fast scan on a loaded machine may finish
    # before (its socket never opened): up to three scans, one must call out.
    for _attempt in range(3):
        res = offline(["strace", "-f", "-qq", "-e", "trace=socket,connect", "-o", trace,
                       shutil.which("trivy", path=_tools_path()), "--cache-dir", cache, "--quiet", "fs", *flags,
                       kit["project"]], env={"PATH": "/usr/bin:/bin", "HOME": str(kit["root"])})
        assert res.returncode == 0, res.stderr[-2000:]
        if any("AF_INET" in line for line in trace.read_text().splitlines()):
            break
    else:
        raise AssertionError("three scans without the notice flags opened no internet socket")


def test_skopeo_reads_the_kits_oci_layout(kit, tool):
    """The kit's Trivy DB OCI layout is a valid layout whose artifact carries db.tar.gz unchanged."""
    skopeo = tool("skopeo")
    tree = kit["root"] / "unpacked"
    tree.mkdir()
    subprocess.run(["tar", "-xzf", str(kit["media"] / ARCHIVE), "-C", str(tree)], check=True)
    layout = tree / ARCHIVE.removesuffix(".tar.gz") / "trivy/db/oci"
    res = subprocess.run([skopeo, "inspect", "--raw", f"oci:{layout}:2"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    layer = json.loads(res.stdout)["layers"][0]
    db = (layout.parent / "db.tar.gz").read_bytes()
    assert layer["digest"] == "sha256:" + hashlib.sha256(db).hexdigest()
