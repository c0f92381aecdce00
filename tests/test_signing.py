"""Unit tests for cosign-compatible keys (rules/signing_keys.py) and signatures (rules/signing.py).

Expected values come from independent sources: the DSSE spec's PAE vector, RFC 6979's P-256/SHA-256
vector, and encrypted keys built here directly from hashlib.scrypt + PyNaCl (not via the code under test).
"""
from __future__ import annotations

import base64
import hashlib
import json

import nacl.secret
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from stella_build.delivery import keyless
from stella_build.rules.formats import keys as signing_keys, signing
from stella_build.rules.formats.signing import SignatureInvalid
from stella_build.rules.formats.keys import SigningKeyError

PASSWORD = b"correct horse"


@pytest.fixture(scope="module")
def keypair():
    private_pem, public_pem = signing_keys.generate_keypair(PASSWORD)
    return private_pem, public_pem


@pytest.fixture(scope="module")
def key(keypair):
    return signing_keys.load_private_key(keypair[0], PASSWORD)


@pytest.fixture(scope="module")
def pub(keypair):
    return signing_keys.load_public_key(keypair[1])


@pytest.fixture(scope="module")
def other_pub():
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _pem_body(pem: bytes) -> tuple[str, bytes]:
    lines = pem.decode().strip().splitlines()
    assert lines[0].startswith("-----BEGIN ") and lines[-1].startswith("-----END ")
    assert all(len(line) <= 64 for line in lines[1:-1])
    return lines[0][11:-5], base64.b64decode("".join(lines[1:-1]))


def _encrypted_pem(der: bytes, password: bytes, n: int, pem_type: str) -> bytes:
    """An encrypted key built independently of signing_keys (scrypt + secretbox, Go field order)."""
    salt, nonce = bytes(range(32)), bytes(range(24))
    box_key = hashlib.scrypt(password, salt=salt, n=n, r=8, p=1, maxmem=2**28, dklen=32)
    sealed = nacl.secret.SecretBox(box_key).encrypt(der, nonce).ciphertext
    doc = ('{"kdf":{"name":"scrypt","params":{"N":%d,"r":8,"p":1},"salt":"%s"},'
           '"cipher":{"name":"nacl/secretbox","nonce":"%s"},"ciphertext":"%s"}') % (
        n, base64.b64encode(salt).decode(), base64.b64encode(nonce).decode(), base64.b64encode(sealed).decode())
    body = base64.b64encode(doc.encode()).decode()
    return (f"-----BEGIN {pem_type}-----\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
            + f"\n-----END {pem_type}-----\n").encode()


# --- keys ------------------------------------------------------------------------------------------

def test_generated_keypair_formats(keypair, key, pub):
    private_pem, public_pem = keypair
    ptype, body = _pem_body(private_pem)
    assert ptype == "ENCRYPTED SIGSTORE PRIVATE KEY"
    doc = json.loads(body)
    # go-securesystemslib encrypted.Encrypt: exact field order, standard parameters, sizes.
    assert list(doc) == ["kdf", "cipher", "ciphertext"]
    assert list(doc["kdf"]) == ["name", "params", "salt"]
    assert doc["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1} and list(doc["kdf"]["params"]) == ["N", "r", "p"]
    assert doc["kdf"]["name"] == "scrypt" and doc["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 32
    assert len(base64.b64decode(doc["cipher"]["nonce"])) == 24
    assert b" " not in body
    # Decrypt independently and compare with the public half.
    kdf = doc["kdf"]
    box_key = hashlib.scrypt(PASSWORD, salt=base64.b64decode(kdf["salt"]), n=65536, r=8, p=1,
                             maxmem=2**28, dklen=32)
    der = nacl.secret.SecretBox(box_key).decrypt(base64.b64decode(doc["ciphertext"]),
                                                 base64.b64decode(doc["cipher"]["nonce"]))
    independent = serialization.load_der_private_key(der, None)
    assert isinstance(independent.curve, ec.SECP256R1)
    ptype, spki = _pem_body(public_pem)
    assert ptype == "PUBLIC KEY"
    spki_of = lambda k: k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # noqa: E731
    assert spki_of(independent.public_key()) == spki == spki_of(key.public_key()) == spki_of(pub)


def test_generate_is_random_each_time():
    a, b = signing_keys.generate_keypair(b""), signing_keys.generate_keypair(b"")
    assert a[0] != b[0] and a[1] != b[1]


@pytest.mark.parametrize("n", [32768, 65536, 131072])
@pytest.mark.parametrize("pem_type", ["ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY"])
def test_load_accepts_go_parameter_sets_and_both_pem_types(n, pem_type):
    raw = ec.generate_private_key(ec.SECP256R1())
    der = raw.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    loaded = signing_keys.load_private_key(_encrypted_pem(der, b"pw", n, pem_type), b"pw")
    assert loaded.private_numbers() == raw.private_numbers()


def test_load_rejects_unsupported_scrypt_parameters():
    raw = ec.generate_private_key(ec.SECP256R1())
    der = raw.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with pytest.raises(SigningKeyError, match="unsupported scrypt parameters"):
        signing_keys.load_private_key(_encrypted_pem(der, b"pw", 1024, "ENCRYPTED SIGSTORE PRIVATE KEY"), b"pw")


def test_wrong_password_is_a_clear_error(keypair):
    with pytest.raises(SigningKeyError) as exc:
        signing_keys.load_private_key(keypair[0], b"wrong")
    assert "wrong password" in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


@pytest.mark.parametrize("pem, message", [
    (b"not a pem at all", "not a PEM file"),
    (b"\xff\xfe", "non-ASCII"),
    (b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\ne30=\n", "no END line"),
    (b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n!!!!\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
     "not valid base64"),
    (b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\ne30=\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
     "unknown kdf name"),
    (b"-----BEGIN EC PRIVATE KEY-----\ne30=\n-----END EC PRIVATE KEY-----\n", "unsupported PEM type"),
])
def test_corrupt_private_keys(pem, message):
    with pytest.raises(SigningKeyError, match=message):
        signing_keys.load_private_key(pem, b"pw")


def test_public_key_file_is_not_a_private_key(keypair):
    with pytest.raises(SigningKeyError, match="unsupported PEM type 'PUBLIC KEY'"):
        signing_keys.load_private_key(keypair[1], PASSWORD)
    with pytest.raises(SigningKeyError, match="unsupported PEM type"):
        signing_keys.load_public_key(keypair[0])


def test_hint_and_digest(keypair, key, pub):
    _, spki = _pem_body(keypair[1])
    assert signing_keys.public_key_hint(pub) == base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert signing_keys.public_key_hint(key) == signing_keys.public_key_hint(pub)
    assert signing_keys.public_key_digest(pub) == hashlib.sha256(spki).hexdigest()


def test_write_keypair_refuses_to_overwrite(tmp_path):
    key_path, pub_path = signing_keys.write_keypair(tmp_path, b"pw")
    assert key_path.stat().st_mode & 0o777 == 0o600
    signing_keys.load_private_key(key_path.read_bytes(), b"pw")
    signing_keys.load_public_key(pub_path.read_bytes())
    with pytest.raises(SigningKeyError, match="already exists"):
        signing_keys.write_keypair(tmp_path, b"pw")


# --- deterministic ECDSA -----------------------------------------------------------------------------

def test_rfc6979_p256_sha256_vector():
    """RFC 6979 A.2.5, curve P-256, SHA-256, message "sample"."""
    x = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
    key = ec.derive_private_key(x, ec.SECP256R1())
    sig = base64.b64decode(signing.legacy_signature(b"sample", key))
    assert decode_dss_signature(sig) == (
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    )


def test_signing_is_deterministic(key):
    data = b"payload \x00 bytes"
    assert signing.sign_blob_sigstore_bundle(data, key) == signing.sign_blob_sigstore_bundle(data, key)
    assert signing.legacy_signature(data, key) == signing.legacy_signature(data, key)
    st = signing.in_toto_statement([("a.tar", hashlib.sha256(data).hexdigest())], signing.SLSA_PROVENANCE_V1, {"x": 1})
    assert signing.sign_attestation_bundle(st, key) == signing.sign_attestation_bundle(dict(st), key)
    assert signing.sign_blob_sigstore_bundle(data + b"!", key) != signing.sign_blob_sigstore_bundle(data, key)


def test_only_p256_keys_sign():
    with pytest.raises(TypeError, match="P-256"):
        signing.legacy_signature(b"x", ec.generate_private_key(ec.SECP384R1()))


# --- messageSignature bundle ----------------------------------------------------------------------

def test_message_signature_bundle_shape(key, pub):
    data = b"hello world\n"
    raw = signing.sign_blob_sigstore_bundle(data, key)
    bundle = json.loads(raw)
    assert raw == json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": signing_keys.public_key_hint(pub)},
                                              "tlogEntries": []}
    md = bundle["messageSignature"]["messageDigest"]
    assert md == {"algorithm": "SHA2_256", "digest": base64.b64encode(hashlib.sha256(data).digest()).decode()}
    # The signature is a plain DER ECDSA signature over the blob (independent check).
    pub.verify(base64.b64decode(bundle["messageSignature"]["signature"]), data, ec.ECDSA(hashes.SHA256()))
    signing.verify_sigstore_bundle(raw, data, pub)
    signing.verify_sigstore_digest(raw, hashlib.sha256(data).digest(), pub)
    assert signing.sign_digest_sigstore_bundle(hashlib.sha256(data).digest(), key) == raw


def _mutate(raw: bytes, fn) -> bytes:
    doc = json.loads(raw)
    fn(doc)
    return json.dumps(doc).encode()


def _flip_b64(value: str) -> str:
    b = bytearray(base64.b64decode(value))
    b[len(b) // 2] ^= 1
    return base64.b64encode(bytes(b)).decode()


def test_message_signature_tamper_detection(key, pub, other_pub):
    data = b"artifact"
    raw = signing.sign_blob_sigstore_bundle(data, key)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        signing.verify_sigstore_bundle(raw, data + b"x", pub)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        signing.verify_sigstore_bundle(raw, data, other_pub)
    bad_sig = _mutate(raw, lambda d: d["messageSignature"].update(signature=_flip_b64(d["messageSignature"]["signature"])))
    with pytest.raises(SignatureInvalid):
        signing.verify_sigstore_bundle(bad_sig, data, pub)
    bad_digest = _mutate(raw, lambda d: d["messageSignature"]["messageDigest"].update(
        digest=_flip_b64(d["messageSignature"]["messageDigest"]["digest"])))
    with pytest.raises(SignatureInvalid, match="does not match messageDigest"):
        signing.verify_sigstore_bundle(bad_digest, data, pub)
    bad_media = _mutate(raw, lambda d: d.update(mediaType="application/vnd.dev.sigstore.bundle.v0.4+json"))
    with pytest.raises(SignatureInvalid, match="mediaType"):
        signing.verify_sigstore_bundle(bad_media, data, pub)
    with pytest.raises(SignatureInvalid, match="my.sigstore.json: not valid JSON"):
        signing.verify_sigstore_bundle(b"{", data, pub, name="my.sigstore.json")


def test_bundle_with_extra_fields_and_url_safe_base64_verifies(key, pub):
    """Bundles from cosign carry other fields (tlog entries, no tlogEntries at all); protojson allows
    URL-safe base64."""
    data = b"artifact"

    def edit(d):
        d["verificationMaterial"].pop("tlogEntries")
        d["verificationMaterial"]["timestampVerificationData"] = {}
        sig = d["messageSignature"]["signature"]
        d["messageSignature"]["signature"] = sig.replace("+", "-").replace("/", "_").rstrip("=")
    signing.verify_sigstore_bundle(_mutate(signing.sign_blob_sigstore_bundle(data, key), edit), data, pub)


# --- DSSE / in-toto -----------------------------------------------------------------------------

def test_pae_spec_vector():
    assert signing.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    # LEN counts bytes, not characters.
    assert signing.pae("t\u00e9", b"") == "DSSEv1 3 t\u00e9 0 ".encode()


def test_dsse_envelope_signature_covers_pae(key, pub):
    env = signing.dsse_envelope(b"hello world", "http://example.com/HelloWorld", key)
    assert set(env) == {"payload", "payloadType", "signatures"} and len(env["signatures"]) == 1
    assert base64.b64decode(env["payload"]) == b"hello world"
    sig = base64.b64decode(env["signatures"][0]["sig"])
    pub.verify(sig, b"DSSEv1 29 http://example.com/HelloWorld 11 hello world", ec.ECDSA(hashes.SHA256()))


def test_in_toto_statement_is_strict():
    st = signing.in_toto_statement([("a", "0" * 64), ("b", "f" * 64)], signing.SLSA_PROVENANCE_V1, {"k": "v"})
    assert set(st) == {"_type", "subject", "predicateType", "predicate"}
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["subject"] == [{"name": "a", "digest": {"sha256": "0" * 64}},
                             {"name": "b", "digest": {"sha256": "f" * 64}}]
    with pytest.raises(ValueError, match="64 lowercase hex"):
        signing.in_toto_statement([("a", "F" * 64)], signing.SLSA_PROVENANCE_V1, {})
    with pytest.raises(ValueError, match="at least one subject"):
        signing.in_toto_statement([], signing.SLSA_PROVENANCE_V1, {})


def test_attestation_bundle_round_trip_and_tamper(key, pub, other_pub):
    data = b"exported bundle"
    sha = hashlib.sha256(data).hexdigest()
    st = signing.in_toto_statement([("x.tar.gz", sha)], signing.SLSA_PROVENANCE_V1, {"buildDefinition": {}})
    raw = signing.sign_attestation_bundle(st, key)
    bundle = json.loads(raw)
    assert bundle["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == signing_keys.public_key_hint(pub)
    assert signing.verify_dsse_bundle(raw, pub, artifact_sha256=sha, predicate_type=signing.SLSA_PROVENANCE_V1) == st

    with pytest.raises(SignatureInvalid, match="DSSE signature does not verify"):
        signing.verify_dsse_bundle(raw, other_pub)
    with pytest.raises(SignatureInvalid, match="no statement subject"):
        signing.verify_dsse_bundle(raw, pub, artifact_sha256="1" * 64)
    with pytest.raises(SignatureInvalid, match="predicateType"):
        signing.verify_dsse_bundle(raw, pub, predicate_type="https://example.com/other")
    forged = dict(st, subject=[{"name": "x.tar.gz", "digest": {"sha256": "1" * 64}}])
    payload_swapped = _mutate(raw, lambda d: d["dsseEnvelope"].update(
        payload=base64.b64encode(json.dumps(forged).encode()).decode()))
    with pytest.raises(SignatureInvalid, match="does not verify"):
        signing.verify_dsse_bundle(payload_swapped, pub)
    type_swapped = _mutate(raw, lambda d: d["dsseEnvelope"].update(payloadType="application/json"))
    with pytest.raises(SignatureInvalid, match="does not verify"):
        signing.verify_dsse_bundle(type_swapped, pub)
    two_sigs = _mutate(raw, lambda d: d["dsseEnvelope"]["signatures"].append(d["dsseEnvelope"]["signatures"][0]))
    with pytest.raises(SignatureInvalid, match="exactly one signature"):
        signing.verify_dsse_bundle(two_sigs, pub)
    with pytest.raises(SignatureInvalid, match="expected a messageSignature bundle, found a dsseEnvelope"):
        signing.verify_sigstore_bundle(raw, data, pub)
    with pytest.raises(SignatureInvalid, match="expected a dsseEnvelope bundle"):
        signing.verify_dsse_bundle(signing.sign_blob_sigstore_bundle(data, key), pub)


# --- legacy signature ---------------------------------------------------------------------------

def test_legacy_signature(key, pub, other_pub):
    data = b"blob"
    sig = signing.legacy_signature(data, key)
    assert b"\n" not in sig
    der = base64.b64decode(sig, validate=True)
    pub.verify(der, data, ec.ECDSA(hashes.SHA256()))
    signing.verify_legacy_signature(sig, data, pub)
    signing.verify_legacy_signature(sig.decode() + "\n", data, pub)
    signing.verify_legacy_signature(der, data, pub)  # raw DER, as cosign also accepts
    with pytest.raises(SignatureInvalid, match="X.sig: signature does not verify"):
        signing.verify_legacy_signature(sig, data + b"!", pub, name="X.sig")
    with pytest.raises(SignatureInvalid):
        signing.verify_legacy_signature(sig, data, other_pub)
    with pytest.raises(SignatureInvalid):
        signing.verify_legacy_signature(b"", data, pub)


# --- keyless ------------------------------------------------------------------------------------

_OIDC_ENV = ["SIGSTORE_IDENTITY_TOKEN", "GITHUB_ACTIONS", "ACTIONS_ID_TOKEN_REQUEST_URL",
             "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "GITLAB_CI", "SIGSTORE_ID_TOKEN", "BUILDKITE", "CIRCLECI",
             "GOOGLE_SERVICE_ACCOUNT_NAME"]


@pytest.fixture
def no_oidc_env(monkeypatch):
    for name in _OIDC_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_keyless_needs_sigstore_python(no_oidc_env):
    no_oidc_env.setenv("SIGSTORE_IDENTITY_TOKEN", "eyJ...")
    no_oidc_env.setattr(keyless.importlib.util, "find_spec", lambda name: None)
    ok, reason = keyless.keyless_available()
    assert not ok and "sigstore-python is not installed" in reason


def test_keyless_needs_an_identity(no_oidc_env):
    no_oidc_env.setattr(keyless.importlib.util, "find_spec", lambda name: object())
    ok, reason = keyless.keyless_available()
    assert not ok and "no ambient OIDC identity" in reason
    # GitHub Actions without `id-token: write` has no request token: still unavailable.
    no_oidc_env.setenv("GITHUB_ACTIONS", "true")
    no_oidc_env.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "https://example.invalid/token")
    assert keyless.keyless_available()[0] is False
    no_oidc_env.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "t")
    ok, reason = keyless.keyless_available()
    assert ok and "GitHub Actions" in reason
