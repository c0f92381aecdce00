"""sigstore-js (@sigstore/verify, installed by tools/interop/install-node-tools.sh) verifies our bundles.

A second, independent Sigstore-bundle implementation: tests/interop/js/verify_bundle.js builds trust
material from an empty trusted root plus our public key (registered under its hint) and requires no
tlog, CT log or timestamp. Missing node or packages skip locally and FAIL under CI=true.
"""
from __future__ import annotations

import hashlib

import pytest

from stella_build.rules.formats import keys as signing_keys, signing

pytestmark = pytest.mark.interop

ARTIFACT = b'{"vulnerabilities": []}\n' * 50


@pytest.fixture
def signed(tmp_path):
    key_pem, pub_pem = signing_keys.generate_keypair(b"pw")
    key = signing_keys.load_private_key(key_pem, b"pw")
    (tmp_path / "cosign.pub").write_bytes(pub_pem)
    (tmp_path / "X").write_bytes(ARTIFACT)
    (tmp_path / "X.sigstore.json").write_bytes(signing.sign_blob_sigstore_bundle(ARTIFACT, key))
    statement = signing.in_toto_statement([("X", hashlib.sha256(ARTIFACT).hexdigest())],
                                          signing.SLSA_PROVENANCE_V1,
                                          {"buildDefinition": {"buildType": "https://example.com/t",
                                                               "externalParameters": {}},
                                           "runDetails": {"builder": {"id": "https://example.com/b"}}})
    (tmp_path / "X.provenance.sigstore.json").write_bytes(signing.sign_attestation_bundle(statement, key))
    return tmp_path


def test_sigstore_js_verifies_message_signature_bundle(verify_js, signed):
    rc, out = verify_js(signed / "X.sigstore.json", signed / "cosign.pub", signed / "X")
    assert rc == 0 and out == {"ok": True, "content": "messageSignature"}, out


def test_sigstore_js_verifies_dsse_bundle(verify_js, signed):
    rc, out = verify_js(signed / "X.provenance.sigstore.json", signed / "cosign.pub", signed / "X")
    assert rc == 0 and out["ok"] and out["predicateType"] == signing.SLSA_PROVENANCE_V1, out


@pytest.mark.parametrize("bundle", ["X.sigstore.json", "X.provenance.sigstore.json"])
def test_sigstore_js_rejects_tampered_artifact(verify_js, signed, bundle):
    (signed / "X").write_bytes(ARTIFACT.replace(b"[]", b"[1]", 1))
    rc, out = verify_js(signed / bundle, signed / "cosign.pub", signed / "X")
    assert rc != 0 and not out["ok"], out


def test_sigstore_js_rejects_other_key(verify_js, signed):
    _, other = signing_keys.generate_keypair(b"pw")
    (signed / "other.pub").write_bytes(other)
    rc, out = verify_js(signed / "X.sigstore.json", signed / "other.pub", signed / "X")
    assert rc != 0 and not out["ok"], out
