"""Content digests: BLAKE3 for cache keys and CAS addresses, SHA-256 for everything users see.

OCI, Trivy, cosign and manifests speak SHA-256; the cache uses BLAKE3 (faster on blobs). Files are
hashed in one pass that yields both when both are needed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import blake3 as _blake3

_CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blake3_hex(data: bytes) -> str:
    return _blake3.blake3(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_blake3(path: str | Path) -> str:
    h = _blake3.blake3()
    if Path(path).stat().st_size:  # mmap of an empty file fails
        h.update_mmap(str(path))
    return h.hexdigest()


def file_digests(path: str | Path) -> tuple[str, str, int]:
    """(blake3 hex, sha256 hex, size) of a file, read once."""
    b, s, size = _blake3.blake3(), hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            b.update(chunk)
            s.update(chunk)
            size += len(chunk)
    return b.hexdigest(), s.hexdigest(), size


def bytes_digests(data: bytes) -> tuple[str, str, int]:
    return blake3_hex(data), sha256_hex(data), len(data)
