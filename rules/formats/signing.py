"""Deterministic signatures and offline verification in the formats cosign and sigstore-js accept.

Formats written (docs/reference/signing-tuf-oci.md §1.2–§2, §4–§5):
- Sigstore bundle v0.3 with `messageSignature` (SHA2_256 digest + DER ECDSA signature over the blob),
  `verificationMaterial.publicKey.hint` and `"tlogEntries": []`. Verified offline by
  `cosign verify-blob --key cosign.pub --bundle X.sigstore.json --insecure-ignore-tlog=true X`.
- Sigstore bundle v0.3 with `dsseEnvelope` (payloadType `application/vnd.in-toto+json`, one signature,
  no keyid, see `dsse_envelope`) over an in-toto Statement v1. Verified by `cosign verify-blob-attestation`.
- Legacy detached signature: base64 of the DER signature (cosign `--signature` files).

Signing is RFC 6979 deterministic ECDSA (cryptography >= 44 `deterministic_signing=True`), and every
JSON document is canonical JSON (sorted keys, compact), so the same key and input always give the same
bytes. Only ECDSA P-256 keys sign: that is cosign's default and avoids Ed25519ph ambiguity.

Verification checks the cryptography against a caller-supplied public key, exactly like cosign's
`--key ... --insecure-ignore-tlog=true`: transparency-log entries, certificates and the unauthenticated
`publicKey.hint` in a bundle are not used (bundles written by real cosign parse fine; extra fields are
ignored).

Keyless signing (Fulcio certificate + Rekor entry) lives in `rules/keyless.py`: it needs the network
and an OIDC identity, so it runs after the reproducible build, outside the cache, and writes
`<file>.keyless.sigstore.json` next to the key-signed outputs (never byte-reproducible).
`stella_build.delivery.keyless.keyless_available()` reports, without the network, whether it could run.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from stella_build.engine.rule_api import canonical_json
from stella_build.rules.formats.keys import PrivateKey, PublicKey, public_key_hint

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# Media types sigstore clients accept (protobuf-specs): v0.1–v0.3, in both spellings.
ACCEPTED_BUNDLE_MEDIA_TYPES = frozenset({
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
})
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
STATEMENT_TYPES = frozenset({STATEMENT_V1, "https://in-toto.io/Statement/v0.1"})
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"

_ECDSA_DETERMINISTIC = ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True)


class SignatureInvalid(Exception):
    """A signature, bundle or envelope that does not verify. `str()` names what failed."""


# --- encoding helpers --------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: Any, field: str, name: str) -> bytes:
    """Standard or URL-safe base64, padded or not (protojson and DSSE accept both)."""
    if not isinstance(value, str) or not value:
        raise SignatureInvalid(f"{name}: field {field!r} is missing or not a string")
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise SignatureInvalid(f"{name}: field {field!r} is not valid base64") from None


def _signing_key(key: PrivateKey) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise TypeError("signing needs an ECDSA P-256 private key (cosign's default key type)")
    return key


def _sign_digest(key: PrivateKey, digest: bytes) -> bytes:
    """DER ECDSA signature over a SHA-256 digest; RFC 6979, so byte-identical across runs."""
    return _signing_key(key).sign(digest, _ECDSA_DETERMINISTIC)


def _verify_digest(pub: PublicKey, signature: bytes, digest: bytes, algorithm: hashes.HashAlgorithm) -> bool:
    """Verify `signature` over a message whose `algorithm` digest is `digest`.

    Accepts the key types cosign's `signature.LoadVerifier` does for `--key` files: ECDSA (DER
    signature), RSA PKCS#1 v1.5, and Ed25519 (which signs the message itself, so it is handled by the
    callers that have the message)."""
    try:
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(signature, digest, ec.ECDSA(Prehashed(algorithm)))
        elif isinstance(pub, rsa.RSAPublicKey):
            pub.verify(signature, digest, padding.PKCS1v15(), Prehashed(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _verify_message(pub: PublicKey, signature: bytes, message: bytes) -> bool:
    if isinstance(pub, ed25519.Ed25519PublicKey):
        try:
            pub.verify(signature, message)
        except InvalidSignature:
            return False
        return True
    return _verify_digest(pub, signature, hashlib.sha256(message).digest(), hashes.SHA256())


def _parse_json_object(raw: bytes | str, name: str) -> dict:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureInvalid(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SignatureInvalid(f"{name}: not a JSON object")
    return doc


def _key_material(key: PrivateKey) -> dict:
    return {"publicKey": {"hint": public_key_hint(key)}, "tlogEntries": []}


# --- DSSE and in-toto ---------------------------------------------------------------------------

def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: the exact bytes a DSSE signature covers."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def dsse_envelope(payload: bytes, payload_type: str, key: PrivateKey) -> dict:
    """A DSSE envelope with one DER ECDSA signature over PAE(payload_type, payload).

    The signature has NO `keyid`, exactly as `cosign attest-blob` writes it. cosign (sigstore-go +
    go-securesystemslib `dsse.Verify`) skips any signature whose non-empty keyid differs from the SSH
    SHA256 fingerprint of the `--key` key, so keyid = bundle hint (what the protobuf-specs comment
    suggests) makes `cosign verify-blob-attestation` fail with "Found: 0, Expected 1" [tested, v3.1.2].
    keyid is an optional, unauthenticated hint in DSSE; the bundle's publicKey.hint identifies the key."""
    sig = _sign_digest(key, hashlib.sha256(pae(payload_type, payload)).digest())
    return {"payload": _b64(payload), "payloadType": payload_type, "signatures": [{"sig": _b64(sig)}]}


def in_toto_statement(subjects: Iterable[tuple[str, str]], predicate_type: str, predicate: dict) -> dict:
    """An in-toto Statement v1 with exactly the four spec fields (cosign parses it strictly).

    `subjects` are (name, sha256 hex) pairs; their order is kept (callers pass a sorted list)."""
    subject_list = []
    for name, sha256_hex in subjects:
        if not isinstance(name, str) or not name:
            raise ValueError(f"in-toto subject name {name!r} must be a non-empty string")
        if not (isinstance(sha256_hex, str) and len(sha256_hex) == 64
                and all(c in "0123456789abcdef" for c in sha256_hex)):
            raise ValueError(f"in-toto subject {name!r}: sha256 {sha256_hex!r} is not 64 lowercase hex digits")
        subject_list.append({"name": name, "digest": {"sha256": sha256_hex}})
    if not subject_list:
        raise ValueError("an in-toto statement needs at least one subject")
    if not isinstance(predicate, dict):
        raise ValueError("in-toto predicate must be a JSON object")
    return {"_type": STATEMENT_V1, "subject": subject_list, "predicateType": predicate_type,
            "predicate": predicate}


# --- signing ------------------------------------------------------------------------------------

def sign_digest_sigstore_bundle(sha256_digest: bytes, key: PrivateKey) -> bytes:
    """`sign_blob_sigstore_bundle` for a blob known only by its SHA-256 digest (large files)."""
    if len(sha256_digest) != 32:
        raise ValueError("sha256_digest must be the 32 raw digest bytes")
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": _key_material(key),
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(sha256_digest)},
            "signature": _b64(_sign_digest(key, sha256_digest)),
        },
    }
    return canonical_json.dumps(bundle)


def sign_blob_sigstore_bundle(data: bytes, key: PrivateKey) -> bytes:
    """Sigstore bundle v0.3 JSON (`X.sigstore.json`) signing `data`; canonical, deterministic bytes."""
    return sign_digest_sigstore_bundle(hashlib.sha256(data).digest(), key)


def sign_attestation_bundle(statement: dict, key: PrivateKey) -> bytes:
    """Sigstore bundle v0.3 JSON with a DSSE envelope over the canonical JSON of `statement`."""
    envelope = dsse_envelope(canonical_json.dumps(statement), IN_TOTO_PAYLOAD_TYPE, key)
    bundle = {"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": _key_material(key),
              "dsseEnvelope": envelope}
    return canonical_json.dumps(bundle)


def legacy_signature_digest(sha256_digest: bytes, key: PrivateKey) -> bytes:
    """`legacy_signature` for a blob known only by its SHA-256 digest."""
    return _b64(_sign_digest(key, sha256_digest)).encode("ascii")


def legacy_signature(data: bytes, key: PrivateKey) -> bytes:
    """Base64 DER ECDSA signature over `data` (a cosign `--signature` file; no trailing newline)."""
    return legacy_signature_digest(hashlib.sha256(data).digest(), key)


# --- verification -------------------------------------------------------------------------------

def _parse_bundle(bundle_bytes: bytes | str, name: str) -> dict:
    bundle = _parse_json_object(bundle_bytes, name)
    media_type = bundle.get("mediaType")
    if media_type not in ACCEPTED_BUNDLE_MEDIA_TYPES:
        raise SignatureInvalid(f"{name}: unsupported bundle mediaType {media_type!r}")
    if not isinstance(bundle.get("verificationMaterial"), dict):
        raise SignatureInvalid(f"{name}: bundle has no verificationMaterial")
    return bundle


def _verify_message_signature(bundle_bytes: bytes | str, sha256_digest: bytes, pubkey: PublicKey,
                              name: str, message: bytes | None) -> None:
    bundle = _parse_bundle(bundle_bytes, name)
    ms = bundle.get("messageSignature")
    if not isinstance(ms, dict):
        kind = "a dsseEnvelope" if "dsseEnvelope" in bundle else "no content"
        raise SignatureInvalid(f"{name}: expected a messageSignature bundle, found {kind}")
    md = ms.get("messageDigest")
    if not isinstance(md, dict):
        raise SignatureInvalid(f"{name}: messageSignature has no messageDigest")
    if md.get("algorithm") != "SHA2_256":
        raise SignatureInvalid(f"{name}: unsupported messageDigest.algorithm {md.get('algorithm')!r}")
    signature = _b64decode(ms.get("signature"), "messageSignature.signature", name)
    # The signature is checked first (as sigstore-go does), then the claimed digest against the artifact.
    if message is not None:
        ok = _verify_message(pubkey, signature, message)
    else:
        ok = _verify_digest(pubkey, signature, sha256_digest, hashes.SHA256())
    if not ok:
        raise SignatureInvalid(f"{name}: signature does not verify against the artifact with the given key")
    claimed = _b64decode(md.get("digest"), "messageSignature.messageDigest.digest", name)
    if claimed != sha256_digest:
        raise SignatureInvalid(f"{name}: artifact digest does not match messageDigest")


def verify_sigstore_digest(bundle_bytes: bytes | str, sha256_digest: bytes, pubkey: PublicKey,
                           *, name: str = "bundle") -> None:
    """`verify_sigstore_bundle` for an artifact known by its SHA-256 digest (ECDSA and RSA keys only:
    Ed25519 signs the message itself)."""
    _verify_message_signature(bundle_bytes, sha256_digest, pubkey, name, None)


def verify_sigstore_bundle(bundle_bytes: bytes | str, data: bytes, pubkey: PublicKey,
                           *, name: str = "bundle") -> None:
    """Check a messageSignature Sigstore bundle (ours or cosign's) over `data`. Raises `SignatureInvalid`."""
    _verify_message_signature(bundle_bytes, hashlib.sha256(data).digest(), pubkey, name, data)


def verify_dsse_envelope(envelope: dict, pubkey: PublicKey, *, name: str = "envelope") -> tuple[str, bytes]:
    """Verify a single-signature DSSE envelope; returns (payloadType, payload bytes)."""
    if not isinstance(envelope, dict):
        raise SignatureInvalid(f"{name}: dsseEnvelope is not a JSON object")
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str):
        raise SignatureInvalid(f"{name}: dsseEnvelope.payloadType is missing")
    payload = _b64decode(envelope.get("payload"), "dsseEnvelope.payload", name)
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
        raise SignatureInvalid(f"{name}: dsseEnvelope must carry exactly one signature")
    sig = _b64decode(sigs[0].get("sig"), "dsseEnvelope.signatures[0].sig", name)
    if not _verify_message(pubkey, sig, pae(payload_type, payload)):
        raise SignatureInvalid(f"{name}: DSSE signature does not verify with the given key")
    return payload_type, payload


def verify_dsse_bundle(bundle_bytes: bytes | str, pubkey: PublicKey, *, artifact_sha256: str | None = None,
                       predicate_type: str | None = None, name: str = "bundle") -> dict:
    """Verify a DSSE Sigstore bundle; return its in-toto Statement.

    Like `cosign verify-blob-attestation`: with `artifact_sha256` some subject must carry that sha256,
    with `predicate_type` the statement's predicateType must equal it."""
    bundle = _parse_bundle(bundle_bytes, name)
    if "dsseEnvelope" not in bundle:
        raise SignatureInvalid(f"{name}: expected a dsseEnvelope bundle")
    payload_type, payload = verify_dsse_envelope(bundle["dsseEnvelope"], pubkey, name=name)
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise SignatureInvalid(f"{name}: payloadType {payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE!r}")
    statement = _parse_json_object(payload, f"{name}: DSSE payload")
    if statement.get("_type") not in STATEMENT_TYPES:
        raise SignatureInvalid(f"{name}: payload _type {statement.get('_type')!r} is not an in-toto Statement")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise SignatureInvalid(f"{name}: statement has no subject")
    if predicate_type is not None and statement.get("predicateType") != predicate_type:
        raise SignatureInvalid(f"{name}: predicateType {statement.get('predicateType')!r} is not {predicate_type!r}")
    if artifact_sha256 is not None:
        digests = {(s.get("digest") or {}).get("sha256") for s in subjects if isinstance(s, dict)}
        if artifact_sha256.lower() not in digests:
            raise SignatureInvalid(f"{name}: no statement subject has the artifact's sha256 {artifact_sha256}")
    return statement


def verify_legacy_signature(sig: bytes | str, data: bytes, pubkey: PublicKey, *, name: str = "signature") -> None:
    """Verify a cosign `--signature` file (base64 DER, or raw DER as cosign also accepts)."""
    raw = sig.encode("ascii", "replace") if isinstance(sig, str) else sig
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except binascii.Error:
        decoded = raw  # cosign's isb64 fallback: the file holds the raw signature
    if not decoded or not _verify_message(pubkey, decoded, data):
        raise SignatureInvalid(f"{name}: signature does not verify against the artifact with the given key")


# --- keyless -------------------------------------------------------------------------------------


