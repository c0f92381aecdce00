"""Binary patches of a Trivy DB (trivy.db) against an earlier one: `zstd --patch-from` in a library.

Our trivy.db is deterministic and its keys sorted, so a DB with 1 % of advisories changed shares
almost all of its pages with yesterday's. A zstd frame of the new DB that uses the whole old DB as
a raw-content dictionary (what `zstd --patch-from=OLD NEW` does) encodes only the differences.

- `make_db_patch(base, new, level)` → one zstd frame. The window must reach back over the whole
  base (dictionary content counts as history), so window_log covers max(base, new) — the zstd
  CLI's own `--patch-from` rule — and long-distance matching is on, which finds the long repeats of
  a 100+ MB base at any level (the CLI turns `--long` on for --patch-from as well).
- `apply_db_patch(base, patch, result_size=, result_sha256=)` → the new DB, bounded: the frame
  must declare exactly `result_size` bytes and a window no larger than `window_limit(...)`;
  decoding streams and stops past `result_size`; the result must have `result_sha256`.
  PatchError (with a kebab-case `reason`) otherwise.

The manifest next to a patch (`patch.json`, `manifest(...)`) names both digests; see docs/trivy-db.md
"Patches".
"""
from __future__ import annotations

import hashlib

import zstandard

PATCH_SCHEMA = "https://stella-build.dev/schemas/trivy-db-patch/v1"
FORMAT_VERSION = 1
PATCH_FILE = "trivy.db.zst"
MANIFEST_FILE = "patch.json"
METADATA_FILE = "metadata.json"
DB_FILE = "trivy.db"
# zstd's largest window on 64-bit builds (ZSTD_WINDOWLOG_MAX_64): a 2 GiB DB is the ceiling.
MAX_WINDOW_LOG = 31
MIN_WINDOW_LOG = 10
# zstd's largest chain log on 64-bit builds (ZSTD_CHAINLOG_MAX_64).
MAX_CHAIN_LOG = 30
# Trivy DBs are ~1 GB at most today; a manifest declaring more is refused before anything is read.
MAX_DB_BYTES = 1 << 31


class PatchError(ValueError):
    """A patch that cannot be applied: `reason` is the CLI's machine-readable reason."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def window_log(base_size: int, new_size: int) -> int:
    """log2 of the window (bytes) that covers the larger of the two DBs, as `zstd --patch-from`
    chooses it: highbit(max) + 1, clamped to zstd's [10, 31]. PatchError(`size-limit`) above 2 GiB."""
    largest = max(base_size, new_size, 1)
    if largest > MAX_DB_BYTES:
        raise PatchError(f"a {largest}-byte DB is larger than the {MAX_DB_BYTES} bytes a patch can span",
                         "size-limit")
    return max(MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, largest.bit_length()))


def chain_log(level: int, base_size: int, new_size: int) -> int:
    """The chain log make_db_patch uses: the level's own, widened to the window (see there)."""
    own = zstandard.ZstdCompressionParameters.from_level(level, source_size=new_size, dict_size=base_size).chain_log
    return min(max(own, window_log(base_size, new_size)), MAX_CHAIN_LOG)


def _dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def make_db_patch(base: bytes, new: bytes, level: int = 19) -> bytes:
    """One zstd frame (content size and checksum in its header) decoding to `new` with `base` as a
    raw-content dictionary. Deterministic for the same inputs, level and zstandard version.
    `level` 1..22; memory ~ base + new + zstd's tables for the window."""
    wl = window_log(len(base), len(new))
    # chain_log = window_log: zstd indexes only the last 2^max(hashLog+3, chainLog+1) bytes of a
    # dictionary, and the level's own chainLog (24 at level 19) covers 32 MiB: a 137 MB base was
    # then mostly invisible (patch 57 % of db.tar.gz at 100k advisories). With the chain table as
    # wide as the window every base byte is a match candidate (20k advisories: 139 KB → 60 KB); a
    # level whose own chainLog is already wider keeps it.
    # Cost, producer side only: 4 bytes per window byte (1 GiB for a 2^28 window).
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(new), dict_size=len(base), window_log=wl, enable_ldm=True,
        chain_log=chain_log(level, len(base), len(new)), write_checksum=True, write_content_size=True,
        threads=0)
    return zstandard.ZstdCompressor(dict_data=_dict(base), compression_params=params).compress(new)


def apply_db_patch(base: bytes, patch: bytes, *, result_size: int, result_sha256: str) -> bytes:
    """The DB `patch` encodes against `base`, checked against the promised size and sha256 (hex).

    Refused (PatchError) before decoding when the frame is not zstd (`patch-invalid`), declares a
    size other than `result_size` or asks for a window wider than the one the sizes need
    (`size-limit`); while decoding when it is corrupt (`patch-invalid`) or would pass `result_size`
    (`size-limit`: the stream is read in 1 MiB steps, so memory stays at base + result_size + window,
    whatever the frame claims); after, when the bytes are not `result_sha256`
    (`patch-result-mismatch`). The caller checks the base's digest first."""
    if not 0 <= result_size <= MAX_DB_BYTES:
        raise PatchError(f"the declared result size {result_size} is out of range", "size-limit")
    try:
        frame = zstandard.get_frame_parameters(patch)
    except zstandard.ZstdError as exc:
        raise PatchError(f"the patch is not a zstd frame ({exc})", "patch-invalid") from None
    if frame.content_size != result_size:
        raise PatchError(f"the patch's frame declares {frame.content_size} bytes, the manifest {result_size}",
                         "size-limit")
    limit = 1 << window_log(len(base), result_size)
    if frame.window_size > limit:
        raise PatchError(f"the patch asks for a {frame.window_size}-byte window (at most {limit})", "size-limit")
    out = bytearray()
    try:
        decompressor = zstandard.ZstdDecompressor(dict_data=_dict(base), max_window_size=limit)
        with decompressor.stream_reader(patch, read_across_frames=False) as reader:
            while chunk := reader.read(1 << 20):
                out += chunk
                if len(out) > result_size:
                    raise PatchError(f"the patch decodes to more than the declared {result_size} bytes",
                                     "size-limit")
    except zstandard.ZstdError as exc:
        raise PatchError(f"the patch is corrupt or made against another base ({exc})", "patch-invalid") from None
    digest = hashlib.sha256(out).hexdigest()
    if len(out) != result_size or digest != result_sha256:
        raise PatchError(f"the patched DB has {len(out)} bytes, sha256 {digest}; the manifest promises "
                         f"{result_size} bytes, sha256 {result_sha256}", "patch-result-mismatch")
    return bytes(out)


def manifest(base: bytes, new: bytes, patch: bytes, metadata: bytes, level: int) -> dict:
    """patch.json: {"schema", "formatVersion", "base": {sha256, bytes}, "result": {path, sha256,
    bytes}, "patch": {path, sha256, bytes}, "metadata": {path, sha256, bytes}, "compression":
    {"level", "windowLog", "ldm"}}; digests are lowercase hex sha256."""
    def entry(data: bytes, path: str | None = None) -> dict:
        out = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return {"path": path, **out} if path else out

    return {"schema": PATCH_SCHEMA, "formatVersion": FORMAT_VERSION,
            "base": entry(base), "result": entry(new, DB_FILE), "patch": entry(patch, PATCH_FILE),
            "metadata": entry(metadata, METADATA_FILE),
            "compression": {"level": level, "windowLog": window_log(len(base), len(new)),
                            "chainLog": chain_log(level, len(base), len(new)), "ldm": True}}
