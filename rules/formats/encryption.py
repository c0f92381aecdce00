"""Optional mirror encryption (StellaOps kms-envelope pattern, age recipients only).

Per run: one random 32-byte data key (DEK). Every regular file under the `data/` subtree is
encrypted with AES-256-GCM under the DEK and written next to its plaintext name with `.enc`
appended; the plaintext is removed (in-place mode) or not written (out-of-tree mode).

On-disk format of `<relpath>.enc` (documented contract, tested against a one-shot AESGCM decrypt):

    nonce (12 random bytes) || AES-256-GCM ciphertext || GCM tag (16 bytes)

    AAD = f"{runId}:{relativePath}"  (UTF-8; relativePath is the *plaintext* POSIX path relative to
                                      the mirror root, e.g. "data/raw/advisories/osv.jsonl.zst")

The AAD binds each file to its run and location: renaming/moving a file or mixing files from two
runs fails authentication. The DEK is wrapped once per recipient with age X25519 (pyrage, binary
age format) and recorded as `{recipient, wrappedKey (base64 of the age file), keyId?}`, sorted by
recipient. `age -d -i key.txt` decrypts a wrappedKey (after base64 decoding) to the raw DEK.

Randomness is allowed ONLY here (DEK, nonces, age's ephemeral keys): encrypted bytes differ on
every run by design. Reproducibility claims (rerun hashes, golden files, signatures, TUF targets of
the plaintext) are made over the plaintext; the ciphertext is a transport wrapper. Manifests,
provenance, signatures and indexes are never encrypted, so they can be verified before decryption.

The DEK is held in a bytearray and zeroed after use (best effort: Python/OpenSSL may keep copies).
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyrage
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from stella_build.engine.rule_api import atomic_file

MODE = "age"
CIPHER = "AES-256-GCM"
AAD_FORMAT = "{runId}:{relativePath}"
NONCE_FORMAT = "12-byte random nonce prefixed to each .enc file; GCM tag (16 bytes) appended"
SUFFIX = ".enc"
NONCE_LEN = 12
TAG_LEN = 16
DEK_LEN = 32
_CHUNK = 1 << 20
_AGE_RECIPIENT_RE = re.compile(r"^age1[0-9a-z]{58}$")


class EncryptionError(ValueError):
    """Bad encryption input: recipient string, run id, file layout."""


class DecryptionError(Exception):
    """Decryption failed: identity matches no recipient, or a file fails authentication."""


@dataclass(frozen=True)
class RecipientRecord:
    recipient: str
    wrapped_key: str  # base64 of the binary age file holding the DEK
    key_id: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"recipient": self.recipient, "wrappedKey": self.wrapped_key}
        if self.key_id:
            out["keyId"] = self.key_id
        return out


@dataclass(frozen=True)
class EncryptedFile:
    path: str            # plaintext relative path (the AAD's relativePath)
    encrypted_path: str  # path + ".enc"
    size: int            # plaintext size

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "encryptedPath": self.encrypted_path, "size": self.size}


@dataclass(frozen=True)
class EncryptionRecord:
    """Provenance record (`environment.encryption`): JSON via to_json(), back via from_json()."""

    run_id: str
    recipients: tuple[RecipientRecord, ...]
    files: tuple[EncryptedFile, ...] = field(default_factory=tuple)
    mode: str = MODE
    cipher: str = CIPHER
    aad_format: str = AAD_FORMAT
    nonce_format: str = NONCE_FORMAT

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "cipher": self.cipher,
            "aadFormat": self.aad_format,
            "nonceFormat": self.nonce_format,
            "runId": self.run_id,
            "recipients": [r.to_json() for r in self.recipients],
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "EncryptionRecord":
        try:
            if obj.get("mode", MODE) != MODE or obj.get("cipher", CIPHER) != CIPHER:
                raise DecryptionError(f"unsupported encryption mode {obj.get('mode')!r}/{obj.get('cipher')!r}")
            return cls(
                run_id=str(obj["runId"]),
                recipients=tuple(RecipientRecord(str(r["recipient"]), str(r["wrappedKey"]), r.get("keyId"))
                                 for r in obj["recipients"]),
                files=tuple(EncryptedFile(str(f["path"]), str(f["encryptedPath"]), int(f["size"]))
                            for f in obj.get("files", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecryptionError(f"malformed encryption record: {exc!r}") from None


def aad_for(run_id: str, relative_path: str) -> bytes:
    return f"{run_id}:{relative_path}".encode("utf-8")


def _check_run_id(run_id: str) -> None:
    if not run_id or ":" in run_id or any(c.isspace() for c in run_id):
        raise EncryptionError(f"run id {run_id!r} must be non-empty without ':' or whitespace (it prefixes the AAD)")


def wrap_dek(dek: bytes | bytearray, recipients: Sequence[str],
             key_ids: Mapping[str, str] | None = None) -> tuple[RecipientRecord, ...]:
    """Wrap the DEK separately for each age X25519 recipient; records sorted by recipient."""
    key_ids = key_ids or {}
    out = []
    for r in sorted(set(recipients)):
        if r.startswith("kms://"):
            raise EncryptionError(f"recipient {r!r}: KMS wrapping is not supported (age recipients only)")
        if not _AGE_RECIPIENT_RE.match(r):
            raise EncryptionError(f"recipient {r!r} is not an age X25519 recipient (age1…)")
        try:
            rec = pyrage.x25519.Recipient.from_str(r)
        except pyrage.RecipientError as exc:
            raise EncryptionError(f"recipient {r!r}: {exc}") from None
        wrapped = pyrage.encrypt(bytes(dek), [rec])
        out.append(RecipientRecord(r, base64.b64encode(wrapped).decode("ascii"), key_ids.get(r)))
    if not out:
        raise EncryptionError("encryption needs at least one recipient")
    return tuple(out)


def load_identities(identity_path: Path) -> list[Any]:
    """age X25519 identities from an age-keygen style file (comments and blank lines ignored)."""
    try:
        text = Path(identity_path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DecryptionError(f"cannot read age identity file {identity_path}: {exc.strerror or exc}") from None
    identities = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError as exc:
            raise DecryptionError(f"{identity_path}:{n}: not an age X25519 identity ({exc})") from None
    if not identities:
        raise DecryptionError(f"{identity_path}: no AGE-SECRET-KEY-1… identity found")
    return identities


def unwrap_dek(record: EncryptionRecord, identities: Sequence[Any], *, source: str = "identity") -> bytearray:
    """The DEK from the first recipient entry that one of `identities` can open."""
    for r in record.recipients:
        try:
            wrapped = base64.b64decode(r.wrapped_key, validate=True)
        except ValueError:
            raise DecryptionError(f"wrappedKey for {r.recipient} is not valid base64") from None
        try:
            dek = bytearray(pyrage.decrypt(wrapped, list(identities)))
        except pyrage.DecryptError:
            continue
        if len(dek) != DEK_LEN:
            raise DecryptionError(f"wrapped key for {r.recipient} holds {len(dek)} bytes, expected {DEK_LEN}")
        return dek
    names = ", ".join(r.recipient for r in record.recipients)
    raise DecryptionError(f"{source} matches none of the {len(record.recipients)} recipients of run "
                          f"{record.run_id!r} ({names})")


def encrypt_file(src: Path, dest: Path, dek: bytes | bytearray, aad: bytes) -> None:
    """Stream `src` to `dest` as nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_LEN)
    enc = Cipher(algorithms.AES(bytes(dek)), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    with open(src, "rb") as fin, atomic_file(dest) as fout:
        fout.write(nonce)
        while chunk := fin.read(_CHUNK):
            fout.write(enc.update(chunk))
        fout.write(enc.finalize())
        fout.write(enc.tag)


def decrypt_file(src: Path, dest: Path, dek: bytes | bytearray, aad: bytes) -> None:
    """Inverse of encrypt_file; `dest` appears only after the GCM tag verified."""
    size = src.stat().st_size
    if size < NONCE_LEN + TAG_LEN:
        raise DecryptionError(f"{src}: {size} bytes is too short for nonce + tag")
    with open(src, "rb") as fin, atomic_file(dest) as fout:
        nonce = fin.read(NONCE_LEN)
        fin.seek(size - TAG_LEN)
        tag = fin.read(TAG_LEN)
        fin.seek(NONCE_LEN)
        dec = Cipher(algorithms.AES(bytes(dek)), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        remaining = size - NONCE_LEN - TAG_LEN
        while remaining:
            chunk = fin.read(min(_CHUNK, remaining))
            remaining -= len(chunk)
            fout.write(dec.update(chunk))
        try:
            fout.write(dec.finalize())
        except InvalidTag:
            raise DecryptionError(f"{src}: authentication failed (tampered ciphertext, wrong run id, "
                                  "moved/renamed file, or wrong key)") from None


def _data_files(root: Path, subtree: str) -> list[str]:
    base = root / subtree
    if not base.is_dir():
        raise EncryptionError(f"{base}: no {subtree}/ directory to encrypt")
    rels = []
    for p in base.rglob("*"):
        if p.is_symlink():
            raise EncryptionError(f"{p}: symlinks are not allowed in the encrypted subtree")
        if p.is_file():
            if p.name.endswith(SUFFIX):
                raise EncryptionError(f"{p}: {subtree}/ already holds encrypted files (encrypting twice?)")
            rels.append(p.relative_to(root).as_posix())
    return sorted(rels)


def encrypt_tree(
    root: Path,
    *,
    run_id: str,
    recipients: Sequence[str],
    subtree: str = "data",
    out_root: Path | None = None,
    key_ids: Mapping[str, str] | None = None,
) -> EncryptionRecord:
    """Encrypt every file under `root/subtree` to `<file>.enc` (in place, or under `out_root`).

    Returns the provenance record; without it (or the recipients' identities) nothing decrypts.
    """
    _check_run_id(run_id)
    root = Path(root)
    target = Path(out_root) if out_root is not None else root
    rels = _data_files(root, subtree)
    dek = bytearray(os.urandom(DEK_LEN))
    files: list[EncryptedFile] = []
    try:
        wrapped = wrap_dek(dek, recipients, key_ids)
        for rel in rels:
            size = (root / rel).stat().st_size
            encrypt_file(root / rel, target / (rel + SUFFIX), dek, aad_for(run_id, rel))
            files.append(EncryptedFile(rel, rel + SUFFIX, size))
    except BaseException:
        for f in files:  # all or nothing: no half-encrypted tree
            (target / f.encrypted_path).unlink(missing_ok=True)
        raise
    finally:
        dek[:] = bytes(DEK_LEN)
    if out_root is None:
        for f in files:
            (root / f.path).unlink()
    return EncryptionRecord(run_id=run_id, recipients=wrapped, files=tuple(files))


def decrypt_tree(
    root: Path,
    record: EncryptionRecord | Mapping[str, Any],
    identity_path: Path,
    *,
    out_root: Path | None = None,
) -> list[str]:
    """Decrypt every file in `record` from `root` (in place, or into `out_root`); returns the paths.

    Raises DecryptionError if the identity opens no recipient entry or any file fails to verify.
    """
    if not isinstance(record, EncryptionRecord):
        record = EncryptionRecord.from_json(record)
    root = Path(root)
    target = Path(out_root) if out_root is not None else root
    dek = unwrap_dek(record, load_identities(identity_path), source=f"age identity {identity_path}")
    done: list[str] = []
    try:
        for f in record.files:
            if f.encrypted_path != f.path + SUFFIX or f.path.startswith("/") or ".." in f.path.split("/"):
                raise DecryptionError(f"encryption record has an unsafe file entry {f.to_json()}")
            src = root / f.encrypted_path
            if not src.is_file():
                raise DecryptionError(f"{src}: encrypted file listed in the record is missing")
            decrypt_file(src, target / f.path, dek, aad_for(record.run_id, f.path))
            done.append(f.path)
    except BaseException:
        for rel in done:  # all or nothing: no half-decrypted tree
            (target / rel).unlink(missing_ok=True)
        raise
    finally:
        dek[:] = bytes(DEK_LEN)
    if out_root is None:
        for f in record.files:
            (root / f.encrypted_path).unlink()
    return done
