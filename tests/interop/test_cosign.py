"""Real cosign (v3.1.2) against rules/signing*.py, fully offline, in both directions.

cosign verifies what we write (bundle, legacy signature, SLSA attestation) and rejects tampering;
cosign signs with a key we generated and we verify its output; we load a key cosign generated.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from stella_build.rules.formats import keys as signing_keys, signing
from stella_build.rules.formats.signing import SignatureInvalid
from stella_build.rules.formats.keys import SigningKeyError

pytestmark = pytest.mark.interop

PASSWORD = b"interop-pw"
ARTIFACT = b"stella-build export\n" + bytes(range(256))
PROVENANCE = {
    "buildDefinition": {"buildType": "https://stella-build.dev/buildtypes/export/v1",
                        "externalParameters": {"target": "//exports:trivy-db"}},
    "runDetails": {"builder": {"id": "https://stella-build.dev/builder/v1"}},
}


@pytest.fixture
def cosign(tool, tmp_path):
    exe = tool("cosign")
    # A private HOME keeps cosign from reading or writing the user's ~/.sigstore TUF cache.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
           "COSIGN_PASSWORD": PASSWORD.decode()}

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    return run


@pytest.fixture
def ours(tmp_path):
    """Our key pair and artifact on disk."""
    key_path, pub_path = signing_keys.write_keypair(tmp_path, PASSWORD)
    (tmp_path / "X").write_bytes(ARTIFACT)
    key = signing_keys.load_private_key(key_path.read_bytes(), PASSWORD)
    return key, signing_keys.load_public_key(pub_path.read_bytes())


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"cosign failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


def _fails(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, f"cosign unexpectedly succeeded:\n{proc.stdout}\n{proc.stderr}"
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _other_pub(tmp_path: Path) -> str:
    _, pub = signing_keys.generate_keypair(b"x")
    (tmp_path / "other.pub").write_bytes(pub)
    return "other.pub"


def test_cosign_verifies_our_bundle(cosign, ours, tmp_path):
    key, _ = ours
    (tmp_path / "X.sigstore.json").write_bytes(signing.sign_blob_sigstore_bundle(ARTIFACT, key))
    verify = ("verify-blob", "--bundle", "X.sigstore.json", "--insecure-ignore-tlog=true")
    proc = cosign(*verify, "--key", "cosign.pub", "X")
    _ok(proc)
    assert "Verified OK" in proc.stderr + proc.stdout
    _fails(cosign(*verify, "--key", _other_pub(tmp_path), "X"))
    (tmp_path / "X").write_bytes(ARTIFACT + b"tampered")
    _fails(cosign(*verify, "--key", "cosign.pub", "X"))


def test_cosign_verifies_our_legacy_signature(cosign, ours, tmp_path):
    key, _ = ours
    (tmp_path / "X.sig").write_bytes(signing.legacy_signature(ARTIFACT, key))
    verify = ("verify-blob", "--signature", "X.sig", "--insecure-ignore-tlog=true")
    _ok(cosign(*verify, "--key", "cosign.pub", "X"))
    _fails(cosign(*verify, "--key", _other_pub(tmp_path), "X"))
    (tmp_path / "X").write_bytes(ARTIFACT[:-1])
    _fails(cosign(*verify, "--key", "cosign.pub", "X"))


def test_cosign_verifies_our_slsa_attestation(cosign, ours, tmp_path):
    key, _ = ours
    statement = signing.in_toto_statement([("X", hashlib.sha256(ARTIFACT).hexdigest())],
                                          signing.SLSA_PROVENANCE_V1, PROVENANCE)
    (tmp_path / "X.provenance.sigstore.json").write_bytes(signing.sign_attestation_bundle(statement, key))
    verify = ("verify-blob-attestation", "--bundle", "X.provenance.sigstore.json",
              "--insecure-ignore-tlog=true")
    _ok(cosign(*verify, "--key", "cosign.pub", "--type", "slsaprovenance1", "X"))
    # Wrong predicate type, wrong key and a tampered artifact are all rejected.
    _fails(cosign(*verify, "--key", "cosign.pub", "--type", "spdxjson", "X"))
    _fails(cosign(*verify, "--key", _other_pub(tmp_path), "--type", "slsaprovenance1", "X"))
    (tmp_path / "X").write_bytes(ARTIFACT + b"\n")
    _fails(cosign(*verify, "--key", "cosign.pub", "--type", "slsaprovenance1", "X"),
           "digests do not match")


def test_cosign_signs_with_our_key_and_we_verify(cosign, ours, tmp_path):
    _, pub = ours
    sign = ("--key", "cosign.key", "--use-signing-config=false", "--tlog-upload=false")
    _ok(cosign("sign-blob", *sign, "--bundle", "out.sigstore.json", "X"))
    bundle = (tmp_path / "out.sigstore.json").read_bytes()
    assert json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"] == signing_keys.public_key_hint(pub)
    signing.verify_sigstore_bundle(bundle, ARTIFACT, pub, name="out.sigstore.json")
    with pytest.raises(SignatureInvalid):
        signing.verify_sigstore_bundle(bundle, ARTIFACT + b"x", pub)

    (tmp_path / "pred.json").write_text(json.dumps(PROVENANCE))
    _ok(cosign("attest-blob", *sign, "--predicate", "pred.json", "--type", "slsaprovenance1",
               "--bundle", "att.sigstore.json", "X"))
    statement = signing.verify_dsse_bundle((tmp_path / "att.sigstore.json").read_bytes(), pub,
                                           artifact_sha256=hashlib.sha256(ARTIFACT).hexdigest(),
                                           predicate_type=signing.SLSA_PROVENANCE_V1)
    assert statement["predicate"] == PROVENANCE


def test_cosign_rejects_wrong_password_for_our_key(cosign, ours, tmp_path):
    # The fixture pins COSIGN_PASSWORD, so encrypt a key under another password.
    priv, _ = signing_keys.generate_keypair(b"another-password")
    (tmp_path / "k2.key").write_bytes(priv)
    _fails(cosign("sign-blob", "--key", "k2.key", "--use-signing-config=false", "--tlog-upload=false",
                  "--bundle", "o.json", "X"), "decrypt")


def test_we_load_a_key_cosign_generated(cosign, tmp_path):
    _ok(cosign("generate-key-pair", "--output-key-prefix", "gen"))
    key = signing_keys.load_private_key((tmp_path / "gen.key").read_bytes(), PASSWORD)
    pub = signing_keys.load_public_key((tmp_path / "gen.pub").read_bytes())
    assert signing_keys.public_key_digest(key) == signing_keys.public_key_digest(pub)
    with pytest.raises(SigningKeyError, match="wrong password"):
        signing_keys.load_private_key((tmp_path / "gen.key").read_bytes(), b"nope")
    # And what we sign with cosign's key, cosign verifies with cosign's public key.
    (tmp_path / "X").write_bytes(ARTIFACT)
    (tmp_path / "X.sigstore.json").write_bytes(signing.sign_blob_sigstore_bundle(ARTIFACT, key))
    _ok(cosign("verify-blob", "--key", "gen.pub", "--bundle", "X.sigstore.json",
               "--insecure-ignore-tlog=true", "X"))
