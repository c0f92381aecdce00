"""Consumer side of a delta's DB archive patches (`blobPatches[]` of manifest.diff.json).

mirror:delta carries a changed Trivy DB archive (db.tar.gz, javadb.tar.gz) as a zstd patch of its
tar against the base archive's tar (rules/mirror_delta.py, rules/formats/trivy/patch.py); docs/mirror.md
"DB archive patches". Everything here is untrusted input:

- `check_blob_patches` (from verify_delta, no base needed): each entry validated field by field
  (strict types, safe paths), named `patches/<path>.zst`, sorted and distinct, the same file as a
  `changed[]` entry (digest, bytes, baseDigest), not also shipped as a blob; its patch file present
  with the recorded digest and size; its declared sizes within bounds before anything is decoded:
  the new tar at most the base tar + PATCH_RATIO × the patch + PATCH_FLOOR (a patch bomb is refused
  here), every size at most 2 GiB (`size-limit`).
- `apply_blob_patches` (from `mirror apply`, before anything is written): the base's file must be
  the archive the patch names (`delta-patch-mismatch`), its tar too; the patch is decoded with
  its output bounded by the promised tar size; the tar is gzipped with the build's own encoder and
  must be exactly the promised archive (`delta-patch-mismatch`). Corrupt or truncated frames are
  `patch-invalid`. All exit 3; the new archives are returned as bytes (held in memory: one
  archive is ~20 MB at 100k advisories) and only then written by the caller.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from stella_build.rules.formats.trivy.patch import (
    ARCHIVE_ENCODING, ARCHIVE_GZIP_LEVEL, MAX_DB_BYTES, PatchError, apply_archive_patch,
)
from stella_build.delivery.mirror_schema import ContentPath, Digest, SafePath, validate
from stella_build.delivery.untrusted import MirrorError, read_capped, sha256_file

# As for metadata patches (mirror_apply.PATCH_RATIO): a patch may decode to at most its base +
# 64 × its own size + 1 MiB. A 1 %-changed 125 MB DB tar needs ~130 MB from a 321 KB patch
# (limit 146 MB); a 64 KiB frame can no longer claim 2 GiB.
PATCH_RATIO = 64
PATCH_FLOOR = 1 << 20
DbSize = Annotated[int, Field(ge=0, le=MAX_DB_BYTES)]

# PatchError reasons (rules/formats/trivy/patch.py) → what `mirror apply` reports.
_REASONS = {"patch-base-mismatch": "delta-patch-mismatch", "patch-result-mismatch": "delta-patch-mismatch",
            "size-limit": "size-limit", "patch-invalid": "patch-invalid"}


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class TarSizes(_Model):
    baseDigest: Digest
    baseBytes: DbSize
    digest: Digest
    bytes: DbSize


class BlobPatch(_Model):
    path: ContentPath
    digest: Digest
    bytes: DbSize
    baseDigest: Digest
    baseBytes: DbSize
    encoding: Literal[ARCHIVE_ENCODING]  # type: ignore[valid-type]
    gzipLevel: Literal[ARCHIVE_GZIP_LEVEL]  # type: ignore[valid-type]
    tar: TarSizes
    patch: SafePath
    patchDigest: Digest
    patchBytes: DbSize


class _BlobPatches(_Model):
    blobPatches: list[BlobPatch] = []


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def check_blob_patches(root: Path, diff: dict, files: Mapping[str, Path]) -> set[str]:
    """Validate `diff["blobPatches"]` against the rest of the delta (see the module docstring);
    returns the delta/ paths of the patch files (so verify_delta counts them as listed).
    MirrorError exit 3: schema-invalid, unsafe-path, missing-file, digest-mismatch, size-limit."""
    where = root / "manifest.diff.json"
    entries = validate(_BlobPatches, diff, file=where).blobPatches
    changed = {e["path"]: e for e in diff["changed"]}
    blobs = set(diff["blobs"])
    paths = [e.path for e in entries]
    if paths != sorted(set(paths)) or len({e.digest for e in entries}) != len(entries):
        raise MirrorError("blobPatches is not sorted by path, or names a path or digest twice", 3, "schema-invalid",
                          file=where, field="blobPatches")
    names = set()
    for i, e in enumerate(entries):
        field = f"blobPatches[{i}]"
        if e.patch != f"patches/{e.path}.zst":
            raise MirrorError(f"{field}.patch is {e.patch!r}, not patches/{e.path}.zst", 3, "unsafe-path",
                              file=where, field=f"{field}.patch")
        c = changed.get(e.path)
        if c is None or (c["digest"], c["bytes"], c["baseDigest"]) != (e.digest, e.bytes, e.baseDigest):
            raise MirrorError(f"{field} ({e.path}) is not a changed file of this delta (digest, bytes, baseDigest)",
                              3, "schema-invalid", file=where, field=field)
        if e.digest in blobs:
            raise MirrorError(f"{field} ({e.path}) is shipped both as a blob and as a patch", 3, "schema-invalid",
                              file=where, field=f"{field}.digest")
        limit = min(MAX_DB_BYTES, e.tar.baseBytes + PATCH_RATIO * e.patchBytes + PATCH_FLOOR)
        if e.tar.bytes > limit:
            raise MirrorError(f"{field}: a {e.patchBytes}-byte patch may not decode to {e.tar.bytes} bytes (at most "
                              f"{limit})", 3, "size-limit", file=where, field=f"{field}.tar.bytes")
        if e.patch not in files:
            raise MirrorError(f"patch {e.patch} is missing", 3, "missing-file", file=root / e.patch,
                              field=f"{field}.patch")
        got, size = sha256_file(files[e.patch])
        if got != e.patchDigest or size != e.patchBytes:
            raise MirrorError(f"patch {e.patch} has sha256 {got}, {size} bytes; manifest.diff.json names "
                              f"{e.patchDigest}, {e.patchBytes} bytes", 3, "digest-mismatch", file=files[e.patch],
                              field=f"{field}.patchDigest")
        names.add(e.patch)
    return names


def apply_blob_patches(root: Path, diff: dict, base_export: dict, base_files: Mapping[str, Path]) -> dict[str, bytes]:
    """{new digest: the new archive's bytes} for every blobPatches entry, each re-created from the
    base's archive and checked (see the module docstring). `diff` must have passed
    check_blob_patches, `base_export` the base's verified export.json. MirrorError exit 3:
    delta-patch-mismatch, patch-invalid, size-limit, digest-mismatch."""
    where = root / "manifest.diff.json"
    listed = {c["path"]: (c["digest"], c["bytes"]) for c in base_export["contents"]}
    out: dict[str, bytes] = {}
    for i, e in enumerate(validate(_BlobPatches, diff, file=where).blobPatches):
        field = f"blobPatches[{i}]"
        src = base_files.get(e.path)
        if src is None or listed.get(e.path) != (e.baseDigest, e.baseBytes):
            raise MirrorError(f"{field}: the patch for {e.path} needs the base archive {e.baseDigest} "
                              f"({e.baseBytes} bytes), which this base mirror does not hold", 3,
                              "delta-patch-mismatch", file=where, field=f"{field}.baseDigest")
        base = read_capped(src, e.baseBytes)
        if "sha256:" + hashlib.sha256(base).hexdigest() != e.baseDigest:  # re-read: it may have changed since
            raise MirrorError(f"{src} is not the base archive {e.baseDigest}", 3, "delta-patch-mismatch",
                              file=src, field=f"{field}.baseDigest")
        patch = read_capped(root / e.patch, e.patchBytes)
        if "sha256:" + hashlib.sha256(patch).hexdigest() != e.patchDigest:
            raise MirrorError(f"patch {e.patch} changed while it was read", 3, "digest-mismatch",
                              file=root / e.patch, field=f"{field}.patchDigest")
        try:
            out[e.digest] = apply_archive_patch(
                base, patch, base_tar_size=e.tar.baseBytes, base_tar_sha256=_hex(e.tar.baseDigest),
                tar_size=e.tar.bytes, tar_sha256=_hex(e.tar.digest), result_size=e.bytes,
                result_sha256=_hex(e.digest))
        except PatchError as exc:
            raise MirrorError(f"patch {e.patch} for {e.path} is refused: {exc}", 3,
                              _REASONS.get(exc.reason, "delta-patch-mismatch"), file=root / e.patch,
                              field=field) from None
    return out


__all__ = ["check_blob_patches", "apply_blob_patches", "BlobPatch"]
