"""Real clients accept the signed trivy:db, trivy:java-db and mirror:full outputs.

- cosign v3 verifies the archives and manifests offline (Sigstore bundles, legacy .sig files, the
  provenance attestation), exactly the commands docs/signing.md gives;
- skopeo copies the signed Trivy OCI layout (tag "2" and the referrers fallback tag) with digests kept;
- Trivy pulls the signed DB from a real docker-registry (our push, fallback referrers tag included)
  and scans with it: the referrer does not disturb the single-layer artifact Trivy reads.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from stella_build.delivery.registry import RegistryClient, push_layout

from tests.conftest import make_workspace, run_cli
from tests.signed_bundle import PASSWORD, make_keys

from .conftest import require_tool
from .test_oci_tools import registry  # noqa: F401  (fixture: a real docker-registry on 127.0.0.1)

pytestmark = pytest.mark.interop

TARGETS = ("trivy-db", "trivy-java-db", "mirror-full")
# (profile, signed file, its Sigstore bundle, its legacy signature)
BLOBS = [
    ("trivy-db", "db.tar.gz", "db.tar.gz.sigstore.json", "signatures/trivy-db.sig"),
    ("trivy-db", "manifests/export.json", "manifests/export.json.sigstore.json", "signatures/manifest.sig"),
    ("trivy-java-db", "javadb.tar.gz", "javadb.tar.gz.sigstore.json", "signatures/trivy-java-db.sig"),
    ("mirror-full", "mirror.tar.zst", "mirror/signatures/mirror.tar.zst.sigstore.json", "mirror/signatures/export.sig"),
    ("mirror-full", "mirror/export.json", "mirror/signatures/export.json.sigstore.json", "mirror/signatures/manifest.sig"),
]
ATTESTATIONS = [("trivy-db", "db.tar.gz", "manifests/provenance.sigstore.json"),
                ("trivy-java-db", "javadb.tar.gz", "manifests/provenance.sigstore.json"),
                ("mirror-full", "mirror/export.json", "mirror/signatures/provenance.sigstore.json")]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("signed-profiles")
    make_keys(root / "keys")
    ws = make_workspace(root / "ws")
    run_cli(["-q", "build", *(f"//profiles:{t}" for t in TARGETS)], cwd=ws, cache=root / "cache", check=True,
            env={"COSIGN_PASSWORD": PASSWORD, "STELLA_SIGNING_KEY": str(root / "keys" / "cosign.key")})
    dirs = {t: ws / "stella-out" / "profiles" / t for t in TARGETS}
    dirs["pub"] = root / "keys" / "cosign.pub"
    return dirs


@pytest.fixture
def cosign(tmp_path):
    exe = require_tool("cosign")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home")}

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    return run


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"cosign failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "Verified OK" in proc.stdout + proc.stderr


@pytest.mark.parametrize("profile,blob,bundle,sig", BLOBS, ids=[f"{b[0]}:{b[1]}" for b in BLOBS])
def test_cosign_verifies_signed_profile_files(cosign, out, profile, blob, bundle, sig):
    d, pub = out[profile], str(out["pub"])
    _ok(cosign("verify-blob", "--key", pub, "--bundle", bundle, "--insecure-ignore-tlog=true", blob, cwd=d))
    _ok(cosign("verify-blob", "--key", pub, "--signature", sig, "--insecure-ignore-tlog=true", blob, cwd=d))


@pytest.mark.parametrize("profile,blob,bundle", ATTESTATIONS, ids=[a[0] for a in ATTESTATIONS])
def test_cosign_verifies_the_provenance_of_signed_profiles(cosign, out, profile, blob, bundle):
    _ok(cosign("verify-blob-attestation", "--key", str(out["pub"]), "--bundle", bundle, "--type",
               "slsaprovenance1", "--insecure-ignore-tlog=true", blob, cwd=out[profile]))


def test_cosign_rejects_a_tampered_trivy_db(cosign, out, tmp_path):
    data = bytearray((out["trivy-db"] / "db.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "db.tar.gz").write_bytes(bytes(data))
    proc = cosign("verify-blob", "--key", str(out["pub"]), "--bundle",
                  str(out["trivy-db"] / "db.tar.gz.sigstore.json"), "--insecure-ignore-tlog=true",
                  "db.tar.gz", cwd=tmp_path)
    assert proc.returncode != 0


def _tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}


@pytest.mark.parametrize("profile,tag", [("trivy-db", "2"), ("trivy-java-db", "1")])
def test_skopeo_copies_the_signed_layout_and_its_referrers_tag(out, profile, tag, tmp_path):
    skopeo = require_tool("skopeo")
    src = out[profile] / "oci"
    tags = _tags(src)
    fallback = "sha256-" + tags[tag].split(":")[1]
    assert set(tags) == {tag, fallback}
    for ref in (tag, fallback):
        proc = subprocess.run([skopeo, "--insecure-policy", "copy", "--all", "--preserve-digests",
                               f"oci:{src}:{ref}", f"oci:{tmp_path / 'copy'}:{ref}"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert _tags(tmp_path / "copy") == tags


def test_trivy_pulls_the_signed_db_from_a_registry_and_scans(out, registry, tmp_path):  # noqa: F811
    trivy = require_tool("trivy")
    result = push_layout(out["trivy-db"] / "oci", RegistryClient(registry, "stella/trivy-db"))
    tags = _tags(out["trivy-db"] / "oci")
    assert result.tags == tags  # tag "2" and the referrers fallback tag
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("requests==2.19.0\n")
    host = registry.removeprefix("http://")
    cache = tmp_path / "trivy-cache"
    proc = subprocess.run(
        [trivy, "--cache-dir", str(cache), "--quiet", "fs", "--db-repository", f"{host}/stella/trivy-db:2",
         "--skip-java-db-update", "--scanners", "vuln", "--format", "json", str(project)],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRIVY_NO_PROGRESS": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Trivy downloaded exactly our DB (the artifact's single layer) ...
    assert (cache / "db" / "trivy.db").read_bytes() == (out["trivy-db"] / "trivy.db").read_bytes()
    # ... and finds the sample advisory for requests < 2.20.0 with it.
    report = json.loads(proc.stdout)
    found = {(v["PkgName"], v["VulnerabilityID"]) for r in report.get("Results", [])
             for v in r.get("Vulnerabilities") or []}
    assert any(pkg == "requests" for pkg, _ in found), found
