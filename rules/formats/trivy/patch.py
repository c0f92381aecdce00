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

DB *archives* (db.tar.gz, javadb.tar.gz, as mirror:delta carries them): a patch of the gzip bytes
is useless (deflate scatters a one-byte change over the rest of the stream), so
`make_archive_patch` patches the uncompressed tars and `apply_archive_patch` re-creates the exact
gzip bytes with the build's own encoder (`regzip` = packaging.GzipWriter, the code path of
`write_db_archive`). The producer only offers an archive patch after checking that `regzip`
reproduces the new archive byte for byte; the consumer checks it again against the promised digest.
"""
from __future__ import annotations

import hashlib
import io

import zstandard
from zlib_ng import zlib_ng

PATCH_SCHEMA = "https://stella-build.dev/schemas/trivy-db-patch/v1"
FORMAT_VERSION = 1
PATCH_FILE = "trivy.db.zst"
MANIFEST_FILE = "patch.json"
METADATA_FILE = "metadata.json"
DB_FILE = "trivy.db"
# A signed patch (a `sign` table, --sign or STELLA_SIGNING_KEY): patch.json, which names the
# digests of everything else, signed like a mirror delta's manifest (rules/signing.py roles).
SIGNATURE_FILES = {
    "manifest_bundle": "signatures/patch.json.sigstore.json",
    "manifest_sig": "signatures/patch.json.sig",
    "public_key": "signatures/cosign.pub",
}
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
    whatever the frame claims) or ends before its declared size (`patch-invalid`: truncated); after,
    when the bytes are not `result_sha256` (`patch-result-mismatch`). The caller checks the base's digest first."""
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
    if len(out) < result_size:  # the frame declared result_size bytes (checked above): its end is missing
        raise PatchError(f"the patch is truncated: it decodes to {len(out)} of its frame's {result_size} bytes",
                         "patch-invalid")
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


# -- DB archives (tar.gz) ----------------------------------------------------------------------------

# The gzip level of every DB archive we build (packaging.write_db_archive); a patch names it
# (`gzipLevel`) and apply refuses another, so a delta made for level-9 archives is never
# re-gzipped at the wrong level.
ARCHIVE_GZIP_LEVEL = 7  # = packaging.DB_ARCHIVE_GZIP_LEVEL (tests check they agree)
# manifest.diff.json `encoding` of an archive patch: gunzip the base, zstd patch of the tar,
# gzip at ARCHIVE_GZIP_LEVEL.
ARCHIVE_ENCODING = "tar.gz:zstd-patch-from"


def regzip(tar: bytes, level: int = ARCHIVE_GZIP_LEVEL) -> bytes:
    """The gzip bytes the build writes for the archive whose tar is `tar`: the same GzipWriter
    write_db_archive streams through (its output does not depend on how the input is cut into
    writes; tests/test_mirror_delta_patch.py proves byte-identity with a built db.tar.gz)."""
    from stella_build.rules.formats.trivy.packaging import GzipWriter

    buf = io.BytesIO()
    gz = GzipWriter(buf, level)
    view = memoryview(tar)
    for start in range(0, len(view), 1 << 20):  # 1 MiB writes: GzipWriter copies what it is given
        gz.write(view[start:start + (1 << 20)])
    gz.close()
    return buf.getvalue()


def gunzip_capped(data: bytes, max_size: int) -> bytes:
    """The one gzip member in `data`, decoded with zlib's own output bound (`max_length`), so a
    gzip bomb costs at most `max_size` + 1 bytes. PatchError `size-limit` when it inflates past
    `max_size`, `patch-invalid` when it is not exactly one complete gzip member."""
    try:
        d = zlib_ng.decompressobj(31)
        out = d.decompress(data, max_size + 1)
    except zlib_ng.error as exc:
        raise PatchError(f"not a gzip archive ({exc})", "patch-invalid") from None
    if len(out) > max_size:
        raise PatchError(f"the archive inflates to more than {max_size} bytes", "size-limit")
    if not d.eof or d.unused_data:
        raise PatchError("the archive is truncated or holds more than one gzip member", "patch-invalid")
    return out


def make_archive_patch(base_gz: bytes, new_gz: bytes, level: int = 19) -> tuple[bytes, dict] | None:
    """(patch, description) turning the archive `base_gz` into `new_gz`, or None when `new_gz` is
    not what `regzip` makes of its own tar (another gzip encoder: the consumer could not re-create
    it). The patch is one make_db_patch frame of the new tar against the base tar; description =
    {"encoding", "gzipLevel", "tar": {"baseDigest", "baseBytes", "digest", "bytes"}} (digests
    "sha256:<hex>", sizes in bytes). PatchError (`patch-invalid`, `size-limit`) for an archive that
    is not one gzip member under MAX_DB_BYTES. Memory: both tars + zstd's tables (see make_db_patch)."""
    base_tar = gunzip_capped(base_gz, MAX_DB_BYTES)
    new_tar = gunzip_capped(new_gz, MAX_DB_BYTES)
    if regzip(new_tar) != new_gz:
        return None
    patch = make_db_patch(base_tar, new_tar, level)
    return patch, {"encoding": ARCHIVE_ENCODING, "gzipLevel": ARCHIVE_GZIP_LEVEL,
                   "tar": {"baseDigest": "sha256:" + hashlib.sha256(base_tar).hexdigest(), "baseBytes": len(base_tar),
                           "digest": "sha256:" + hashlib.sha256(new_tar).hexdigest(), "bytes": len(new_tar)}}


def apply_archive_patch(base_gz: bytes, patch: bytes, *, base_tar_size: int, base_tar_sha256: str,
                        tar_size: int, tar_sha256: str, result_size: int, result_sha256: str) -> bytes:
    """Undo make_archive_patch: the new archive's gzip bytes, checked at every step (hex sha256s).

    The base archive is inflated under `base_tar_size` and must be the tar the patch was made
    against (`patch-base-mismatch`); the patch is decoded by apply_db_patch, bounded by `tar_size`
    (`size-limit`, `patch-invalid`, `patch-result-mismatch`); the tar is gzipped by `regzip` and
    must give `result_size` bytes with `result_sha256` (`patch-result-mismatch`). Memory: base
    tar + new tar + the zstd window + the new archive."""
    if not 0 <= base_tar_size <= MAX_DB_BYTES:
        raise PatchError(f"the declared base tar size {base_tar_size} is out of range", "size-limit")
    base_tar = gunzip_capped(base_gz, base_tar_size)
    if len(base_tar) != base_tar_size or hashlib.sha256(base_tar).hexdigest() != base_tar_sha256:
        raise PatchError("the base archive does not hold the tar the patch was made against", "patch-base-mismatch")
    tar = apply_db_patch(base_tar, patch, result_size=tar_size, result_sha256=tar_sha256)
    del base_tar
    out = regzip(tar)
    digest = hashlib.sha256(out).hexdigest()
    if len(out) != result_size or digest != result_sha256:
        raise PatchError(f"the re-created archive has {len(out)} bytes, sha256 {digest}; promised {result_size} "
                         f"bytes, sha256 {result_sha256}", "patch-result-mismatch")
    return out
