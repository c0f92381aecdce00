"""cosign-compatible signing keys: generate, encrypt, load, fingerprint.

Formats (see docs/reference/signing-tuf-oci.md §1.1):
- `cosign.pub`: PEM `PUBLIC KEY` (DER SubjectPublicKeyInfo), as cosign's `MarshalPublicKeyToPEM`.
- `cosign.key`: PEM `ENCRYPTED SIGSTORE PRIVATE KEY` (the older `ENCRYPTED COSIGN PRIVATE KEY` is read
  too) whose body is the JSON document go-securesystemslib `encrypted.Encrypt` writes: scrypt KDF
  (N=2^16, r=8, p=1, 32-byte salt) feeding NaCl secretbox (24-byte nonce) over the PKCS#8 DER key.
  The JSON is byte-for-byte Go's `json.Marshal` of that struct (field order, std base64).

Key generation is the one place where randomness is correct: the salt, nonce and key are random.
Everything derived from a key (hint, digest, signatures) is deterministic.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Union

import nacl.exceptions
import nacl.secret
import nacl.utils
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SIGSTORE_PRIVATE_KEY_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
COSIGN_PRIVATE_KEY_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
PUBLIC_KEY_PEM_TYPE = "PUBLIC KEY"

# The three scrypt parameter sets go-securesystemslib `Decrypt` accepts (legacy, standard, OWASP).
SCRYPT_PARAMS = ({"N": 32768, "r": 8, "p": 1}, {"N": 65536, "r": 8, "p": 1}, {"N": 131072, "r": 8, "p": 1})
_DEFAULT_SCRYPT = SCRYPT_PARAMS[1]
_SALT_SIZE = 32
_BOX_KEY_SIZE = 32
# hashlib's default maxmem (32 MiB) is below what N=2^16, r=8 needs (64 MiB); 2^17 needs 128 MiB.
_SCRYPT_MAXMEM = 2**28

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey]


class SigningKeyError(Exception):
    """A key that cannot be used: wrong password, corrupt or unsupported file. `str()` is the message."""


# --- PEM -------------------------------------------------------------------------------------

def _pem_encode(pem_type: str, body: bytes) -> bytes:
    """PEM exactly as Go's `pem.EncodeToMemory` writes it (64-column base64, trailing newline)."""
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {pem_type}-----\n" + "".join(line + "\n" for line in lines)
            + f"-----END {pem_type}-----\n").encode("ascii")


def _pem_decode(pem: bytes, what: str) -> tuple[str, bytes]:
    """(type, body) of the first PEM block in `pem`."""
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise SigningKeyError(f"{what} is not a PEM file (non-ASCII bytes)") from None
    start = text.find("-----BEGIN ")
    if start < 0:
        raise SigningKeyError(f"{what} is not a PEM file (no BEGIN line)")
    head_end = text.find("-----", start + 11)
    if head_end < 0:
        raise SigningKeyError(f"{what} has a malformed PEM BEGIN line")
    pem_type = text[start + 11:head_end]
    end_marker = f"-----END {pem_type}-----"
    end = text.find(end_marker, head_end)
    if end < 0:
        raise SigningKeyError(f"{what}: PEM block {pem_type!r} has no END line")
    body_lines = [ln.strip() for ln in text[head_end + 5:end].splitlines()]
    if any(":" in ln for ln in body_lines):
        raise SigningKeyError(f"{what}: PEM headers are not supported")
    try:
        body = base64.b64decode("".join(body_lines), validate=True)
    except binascii.Error:
        raise SigningKeyError(f"{what}: PEM body is not valid base64") from None
    return pem_type, body


# --- go-securesystemslib encrypted.Encrypt / Decrypt ------------------------------------------

def _scrypt(password: bytes, salt: bytes, params: dict) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=params["N"], r=params["r"], p=params["p"],
                          maxmem=_SCRYPT_MAXMEM, dklen=_BOX_KEY_SIZE)


def encrypt_secret(plaintext: bytes, password: bytes) -> bytes:
    """The JSON document go-securesystemslib `encrypted.Encrypt` produces (random salt and nonce)."""
    salt = os.urandom(_SALT_SIZE)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_scrypt(password, salt, _DEFAULT_SCRYPT))
    # secretbox.Seal output is tag||ciphertext without the nonce, which is PyNaCl's `.ciphertext`.
    sealed = box.encrypt(plaintext, nonce).ciphertext
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    # Go's json.Marshal keeps struct field order and writes no whitespace.
    doc = {
        "kdf": {"name": "scrypt", "params": dict(_DEFAULT_SCRYPT), "salt": b64(salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
        "ciphertext": b64(sealed),
    }
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _b64_field(doc: dict, path: str, what: str) -> bytes:
    value: object = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, str):
        raise SigningKeyError(f"{what}: encrypted key field {path!r} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise SigningKeyError(f"{what}: encrypted key field {path!r} is not valid base64") from None


def decrypt_secret(document: bytes, password: bytes, what: str = "private key") -> bytes:
    """Inverse of `encrypt_secret`, with go-securesystemslib's checks (names, parameter sets)."""
    try:
        doc = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SigningKeyError(f"{what}: encrypted key body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SigningKeyError(f"{what}: encrypted key body is not a JSON object")
    kdf = doc.get("kdf") if isinstance(doc.get("kdf"), dict) else {}
    cipher = doc.get("cipher") if isinstance(doc.get("cipher"), dict) else {}
    if kdf.get("name") != "scrypt":
        raise SigningKeyError(f"{what}: unknown kdf name {kdf.get('name')!r} (want 'scrypt')")
    if cipher.get("name") != "nacl/secretbox":
        raise SigningKeyError(f"{what}: unknown cipher name {cipher.get('name')!r} (want 'nacl/secretbox')")
    params = kdf.get("params")
    if not isinstance(params, dict) or {k: params.get(k) for k in ("N", "r", "p")} not in SCRYPT_PARAMS:
        raise SigningKeyError(f"{what}: unsupported scrypt parameters {params!r}")
    salt = _b64_field(doc, "kdf.salt", what)
    nonce = _b64_field(doc, "cipher.nonce", what)
    sealed = _b64_field(doc, "ciphertext", what)
    if len(nonce) != nacl.secret.SecretBox.NONCE_SIZE:
        raise SigningKeyError(f"{what}: incorrect nonce size {len(nonce)}")
    box = nacl.secret.SecretBox(_scrypt(password, salt, params))
    try:
        return box.decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError:
        raise SigningKeyError(f"{what}: decryption failed: wrong password or corrupted key") from None


# --- key pairs ---------------------------------------------------------------------------------

def encode_private_key(key: PrivateKey, password: bytes,
                       pem_type: str = SIGSTORE_PRIVATE_KEY_PEM_TYPE) -> bytes:
    """`cosign.key` bytes for `key`: encrypted PKCS#8 DER in an encrypted-Sigstore PEM block."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return _pem_encode(pem_type, encrypt_secret(der, password))


def encode_public_key(pub: PublicKey) -> bytes:
    """`cosign.pub` bytes: PEM `PUBLIC KEY` (SubjectPublicKeyInfo)."""
    return _pem_encode(PUBLIC_KEY_PEM_TYPE, _spki_der(pub))


def generate_keypair(password: bytes) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key pair as (`cosign.key` bytes, `cosign.pub` bytes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return encode_private_key(key, password), encode_public_key(key.public_key())


def write_keypair(directory: Path | str, password: bytes, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `cosign.key` (mode 0600) and `cosign.pub` into `directory`; refuses to overwrite."""
    directory = Path(directory)
    key_path, pub_path = directory / "cosign.key", directory / "cosign.pub"
    if not overwrite:
        for path in (key_path, pub_path):
            if path.exists():
                raise SigningKeyError(f"{path} already exists (refusing to overwrite a key)")
    private_pem, public_pem = generate_keypair(password)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    pub_path.write_bytes(public_pem)
    return key_path, pub_path


def load_private_key(pem: bytes, password: bytes, *, what: str = "private key") -> PrivateKey:
    """Decrypt a cosign/Sigstore encrypted private key. Raises `SigningKeyError` on any failure."""
    pem_type, body = _pem_decode(pem, what)
    if pem_type not in (SIGSTORE_PRIVATE_KEY_PEM_TYPE, COSIGN_PRIVATE_KEY_PEM_TYPE):
        raise SigningKeyError(f"{what}: unsupported PEM type {pem_type!r} (want "
                              f"{SIGSTORE_PRIVATE_KEY_PEM_TYPE!r} or {COSIGN_PRIVATE_KEY_PEM_TYPE!r})")
    der = decrypt_secret(body, password, what)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{what}: decrypted data is not a PKCS#8 private key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise SigningKeyError(f"{what}: unsupported key type {type(key).__name__}")
    return key


def load_public_key(pem: bytes, *, what: str = "public key") -> PublicKey:
    """Parse a PEM `PUBLIC KEY` (cosign.pub). Raises `SigningKeyError`."""
    pem_type, body = _pem_decode(pem, what)
    if pem_type != PUBLIC_KEY_PEM_TYPE:
        raise SigningKeyError(f"{what}: unsupported PEM type {pem_type!r} (want {PUBLIC_KEY_PEM_TYPE!r})")
    try:
        pub = serialization.load_der_public_key(body)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{what}: not a SubjectPublicKeyInfo ({exc})") from None
    if not isinstance(pub, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise SigningKeyError(f"{what}: unsupported key type {type(pub).__name__}")
    return pub


# --- fingerprints ------------------------------------------------------------------------------

def _spki_der(key: PublicKey | PrivateKey) -> bytes:
    pub = key.public_key() if hasattr(key, "private_bytes") else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_hint(key: PublicKey | PrivateKey) -> str:
    """Sigstore `publicKey.hint` / DSSE keyid: base64(SHA-256(DER SPKI)), as sigstore-go computes it."""
    return base64.b64encode(hashlib.sha256(_spki_der(key)).digest()).decode("ascii")


def public_key_digest(key: PublicKey | PrivateKey) -> str:
    """Lowercase hex SHA-256 of the DER SPKI: the key's identity inside action keys."""
    return hashlib.sha256(_spki_der(key)).hexdigest()
