"""Real clients verify a signed //profiles build offline: cosign v3 and sigstore-js.

cosign checks exactly the commands docs/signing.md tells users to run; cosign also signs our archive
with a key `stella-build keys generate` made, and `stella-build verify` accepts cosign's files.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stella_build.cli.main import main as cli_main

from tests.conftest import run_cli
from tests.signed_bundle import PASSWORD, build_signed, signed_out, signed_workspace

from .conftest import require_tool

pytestmark = pytest.mark.interop

ARTIFACTS = {"manifests/export.json": "manifests/export.json.sigstore.json",
             "bundle.tar.gz": "bundle.tar.gz.sigstore.json"}
LEGACY = {"manifests/export.json": "signatures/manifest.sig", "bundle.tar.gz": "signatures/export.sig"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A signed build whose key was made by `stella-build keys generate` (never committed)."""
    root = tmp_path_factory.mktemp("signed-interop")
    run_cli(["keys", "generate", "--output-dir", str(root / "keys")], cwd=root,
            env={"COSIGN_PASSWORD": PASSWORD}, check=True)
    ws = signed_workspace(root / "ws", root / "keys")
    build_signed(ws, root / "cache")
    return signed_out(ws)


@pytest.fixture
def cosign(tmp_path):
    exe = require_tool("cosign")
    # A private HOME keeps cosign away from ~/.sigstore; no network is configured or needed.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
           "COSIGN_PASSWORD": PASSWORD}

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
    return run


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"cosign failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "Verified OK" in proc.stdout + proc.stderr


@pytest.mark.parametrize("artifact", sorted(ARTIFACTS))
def test_cosign_verifies_sigstore_bundles_and_legacy_signatures(cosign, bundle, artifact):
    _ok(cosign("verify-blob", "--key", "cosign.pub", "--bundle", ARTIFACTS[artifact],
               "--insecure-ignore-tlog=true", artifact, cwd=bundle))
    _ok(cosign("verify-blob", "--key", "cosign.pub", "--signature", LEGACY[artifact],
               "--insecure-ignore-tlog=true", artifact, cwd=bundle))


@pytest.mark.parametrize("artifact", sorted(ARTIFACTS))
def test_cosign_verifies_the_provenance_attestation(cosign, bundle, artifact):
    _ok(cosign("verify-blob-attestation", "--key", "cosign.pub", "--bundle",
               "manifests/provenance.sigstore.json", "--type", "slsaprovenance1",
               "--insecure-ignore-tlog=true", artifact, cwd=bundle))
    # The bare DSSE envelope is what cosign's legacy --signature path reads.
    _ok(cosign("verify-blob-attestation", "--key", "cosign.pub", "--signature",
               "manifests/provenance.dsse.json", "--type", "slsaprovenance1",
               "--insecure-ignore-tlog=true", artifact, cwd=bundle))


def test_cosign_rejects_a_tampered_archive(cosign, bundle, tmp_path):
    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    data = bytearray((work / "bundle.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (work / "bundle.tar.gz").write_bytes(bytes(data))
    for args in (("verify-blob", "--bundle", "bundle.tar.gz.sigstore.json"),
                 ("verify-blob-attestation", "--bundle", "manifests/provenance.sigstore.json",
                  "--type", "slsaprovenance1")):
        proc = cosign(*args, "--key", "cosign.pub", "--insecure-ignore-tlog=true", "bundle.tar.gz", cwd=work)
        assert proc.returncode != 0, proc.stderr


def test_cosign_signs_with_our_key_and_stella_verify_accepts_it(cosign, bundle, tmp_path, capsys):
    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    keys = bundle.parents[2] / "keys"  # the workspace's copy of the generated key pair
    shutil.copy(keys / "cosign.key", work.parent / "cosign.key")
    for name in ("bundle.tar.gz.sigstore.json", "signatures/export.sig"):
        (work / name).unlink()
    proc = cosign("sign-blob", "--key", "../cosign.key", "--use-signing-config=false", "--tlog-upload=false",
                  "--bundle", "bundle.tar.gz.sigstore.json", "--output-signature", "signatures/export.sig",
                  "bundle.tar.gz", cwd=work)
    assert proc.returncode == 0, proc.stderr
    ours = (bundle / "bundle.tar.gz.sigstore.json").read_bytes()
    assert (work / "bundle.tar.gz.sigstore.json").read_bytes() != ours  # really cosign's file
    capsys.readouterr()
    code = cli_main(["verify", str(work), "--key", str(keys / "cosign.pub"), "--output", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    passed = {(c["name"], c["file"]) for c in report["checks"] if c["status"] == "passed"}
    assert ("archive-signature", "bundle.tar.gz") in passed
    # The tarball form too, with only cosign's bundle next to it.
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(work / "bundle.tar.gz", lone)
    shutil.copy(work / "bundle.tar.gz.sigstore.json", lone)
    assert cli_main(["verify", str(lone / "bundle.tar.gz"), "--key", str(keys / "cosign.pub")]) == 0
    # ... and cosign's signature over a changed archive is refused.
    data = bytearray((lone / "bundle.tar.gz").read_bytes())
    data[100] ^= 0x10
    (lone / "bundle.tar.gz").write_bytes(bytes(data))
    assert cli_main(["verify", str(lone / "bundle.tar.gz"), "--key", str(keys / "cosign.pub")]) == 3


@pytest.mark.parametrize("artifact", sorted(ARTIFACTS))
def test_sigstore_js_verifies_the_built_bundles(verify_js, bundle, artifact):
    pub = bundle / "cosign.pub"
    rc, out = verify_js(bundle / ARTIFACTS[artifact], pub, bundle / artifact)
    assert rc == 0 and out == {"ok": True, "content": "messageSignature"}, out
    rc, out = verify_js(bundle / "manifests/provenance.sigstore.json", pub, bundle / artifact)
    assert rc == 0 and out["ok"] and out["predicateType"] == "https://slsa.dev/provenance/v1", out


def test_sigstore_js_rejects_a_bundle_for_another_artifact(verify_js, bundle):
    rc, out = verify_js(bundle / "bundle.tar.gz.sigstore.json", bundle / "cosign.pub",
                        bundle / "manifests/export.json")
    assert rc != 0 and not out["ok"], out
