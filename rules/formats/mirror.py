"""The mirror and mirror-delta formats: file names, media types, what is content and what is
metadata, how a mirror tree is packaged (OCI layout + mirror.tar.zst) and how a delta's patches are
made and undone.

The mirror:full and mirror:delta rules write these layouts; `mirror apply|decrypt|pull|verify`
rebuild them from a tree and compare digests, so both sides share this one definition
(docs/mirror.md). OCI layout per the OCI Image Layout spec; patches are zstd frames made with the
base file as dictionary (zstd `--patch-from`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import zstandard

from stella_build.engine.rule_api import TarEntry, rfc3339, sha256_hex, tar_bytes, zstd_bytes


ARTIFACT_TYPE = "application/vnd.stella-build.mirror.v1+json"


MIRROR_TAG = "mirror"


MANIFEST_DIGEST_ANNOTATION = "io.stellaops.export.manifest-digest"


ENCRYPTION_FILE = "encryption.json"


# Files of mirror/ that are not content (not in export.json contents[]): replaced as a whole by deltas.
METADATA_PREFIXES = ("tuf/", "signatures/")


METADATA_FILES = ("export.json", "provenance.json")


# Sign action role → output path: every signature file lives in mirror/signatures/ (metadata, so
# neither in export.json nor in mirror.tar.zst / the OCI artifact, which they sign).
SIGNATURE_FILES = {
    "manifest_bundle": "mirror/signatures/export.json.sigstore.json",
    "archive_bundle": "mirror/signatures/mirror.tar.zst.sigstore.json",
    "provenance_dsse": "mirror/signatures/provenance.dsse.json",
    "provenance_bundle": "mirror/signatures/provenance.sigstore.json",
    "manifest_sig": "mirror/signatures/manifest.sig",   # over export.json
    "archive_sig": "mirror/signatures/export.sig",      # over mirror.tar.zst (StellaOps name)
    "public_key": "mirror/signatures/cosign.pub",
}


# The export.json bundle is also the OCI artifact's signature referrer (mirror_layout).
MANIFEST_BUNDLE = SIGNATURE_FILES["manifest_bundle"].removeprefix("mirror/")


SIGNATURES_DIR = "signatures/"


def is_metadata(rel: str) -> bool:
    return rel in METADATA_FILES or rel.startswith(METADATA_PREFIXES)


def packaged(files: Mapping[str, Any]) -> dict[str, Any]:
    """The files of a mirror tree that go into mirror.tar.zst and the OCI artifact: all but
    signatures/, which sign those packages (or sit beside them as their referrer)."""
    return {rel: v for rel, v in files.items() if not rel.startswith(SIGNATURES_DIR)}


# Where a carried developer portal (a devportal_offline dep's output directory) sits in mirror/.
DEVPORTAL_DIR = "devportal"


def media_type(rel: str) -> str:
    if rel.startswith(DEVPORTAL_DIR + "/"):
        # the portal's own types (its manifest.json) without parameters: OCI descriptors allow none
        from stella_build.rules.formats.devportal import content_type

        return content_type(rel.removeprefix(DEVPORTAL_DIR + "/")).split(";", 1)[0]
    if rel.endswith(".jsonl.zst"):
        return "application/x-ndjson+zstd"
    if rel.endswith(".json"):
        return "application/json"
    if rel.endswith(".md"):
        return "text/markdown"
    if rel.endswith("javadb.tar.gz"):
        return "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"
    if rel.endswith("db.tar.gz"):
        return "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
    return "application/octet-stream"


def is_db_archive(rel: str) -> bool:
    """A Trivy DB archive (db.tar.gz, javadb.tar.gz): mirror:delta carries a changed one as a patch
    of its tar against the base's (`blobPatches`, rules/formats/trivy/patch.py make_archive_patch)."""
    return rel.startswith("trivy/") and rel.endswith(("/db.tar.gz", "/javadb.tar.gz"))


def file_bytes(v: bytes | Path) -> bytes:
    """Contents of a file given as bytes or as a path."""
    return v if isinstance(v, (bytes, bytearray)) else Path(v).read_bytes()


def files_layout(files: Mapping[str, bytes | Path], oci_root: Path, *, artifact_type: str, tag: str,
                 created: str, media_types: Mapping[str, str], annotations: Mapping[str, str],
                 bundle: bytes | None = None) -> dict:
    """An OCI layout holding one artifact whose layers are `files` (titled by path), tagged `tag`;
    with `bundle`, that Sigstore bundle is the artifact's referrer (+ the referrers fallback tag).
    Returns the manifest digest and the sha256 of index.json."""
    from stella_build.rules.formats.oci import OciLayoutWriter, add_bundle_referrer, files_artifact

    writer = OciLayoutWriter(oci_root)
    desc = files_artifact(writer, files, artifact_type, created, media_types=media_types, annotations=annotations)
    writer.tag(desc, tag)
    if bundle is not None:
        add_bundle_referrer(writer, desc, bundle, created)
    writer.write_index()
    return {"ociManifestDigest": desc.digest, "ociIndexSha256": sha256_hex((oci_root / "index.json").read_bytes())}


def mirror_layout(files: Mapping[str, bytes | Path], oci_root: Path, epoch: int) -> dict:
    """The mirror's OCI layout: packaged files as layers; signed when the tree holds the export.json
    bundle (MANIFEST_BUNDLE), which then becomes the artifact's referrer."""
    blobs = {rel: file_bytes(v) for rel, v in packaged(files).items()}
    bundle = file_bytes(files[MANIFEST_BUNDLE]) if MANIFEST_BUNDLE in files else None
    notes = {MANIFEST_DIGEST_ANNOTATION: "sha256:" + sha256_hex(blobs["export.json"])} if "export.json" in blobs else {}
    return files_layout(blobs, oci_root, artifact_type=ARTIFACT_TYPE, tag=MIRROR_TAG, created=rfc3339(epoch),
                        media_types={rel: media_type(rel) for rel in blobs}, annotations=notes, bundle=bundle)


def package_tree(files: Mapping[str, bytes | Path], oci_root: Path, archive: Path, epoch: int) -> dict:
    """Write the OCI layout and mirror.tar.zst(+.sha256) of a mirror tree; return their digests.

    Used by the build and by `mirror apply|decrypt`, so a reconstructed mirror is byte-identical.
    signatures/ is never packaged; its export.json bundle makes the layout a signed one."""
    loaded = {rel: file_bytes(v) for rel, v in files.items()}  # read each file once for both packages
    summary = mirror_layout(loaded, oci_root, epoch)
    entries = [TarEntry(f"mirror/{rel}", d) for rel, d in packaged(loaded).items()]
    tar = zstd_bytes(tar_bytes(entries, mtime=epoch), 19)
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(tar)
    sha = sha256_hex(tar)
    Path(str(archive) + ".sha256").write_bytes(f"{sha}  {archive.name}\n".encode())
    return {"archiveSha256": sha, **summary}


DIFF_SCHEMA = "https://stella-build.dev/schemas/mirror-diff/v1"


DELTA_ARTIFACT_TYPE = "application/vnd.stella-build.mirror.delta.v1+json"


DELTA_TAG = "delta"


DIFF_FILE = "manifest.diff.json"


# annotations of the delta's OCI artifact
DIFF_DIGEST_ANNOTATION = "dev.stella-build.mirror.diff-digest"


BASE_EXPORT_ANNOTATION = "dev.stella-build.mirror.base-export-id"


EXPORT_ANNOTATION = "dev.stella-build.mirror.export-id"


# Sign action role → output path of a signed delta (only manifest.diff.json is signed: it pins the rest)
DELTA_SIGNATURE_FILES = {
    "manifest_bundle": "delta/signatures/manifest.diff.json.sigstore.json",
    "manifest_sig": "delta/signatures/manifest.diff.sig",
    "public_key": "delta/signatures/cosign.pub",
}


DELTA_BUNDLE = DELTA_SIGNATURE_FILES["manifest_bundle"].removeprefix("delta/")


def make_patch(data: bytes, base: bytes | None, level: int) -> bytes:
    """zstd frame of `data`, using `base` (the same file in the base mirror) as a raw dictionary."""
    if base is None:
        return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(level=level, dict_data=d, write_checksum=True).compress(data)


# The largest zstd window a patch may ask for: zstd's own default limit (2^27 = 128 MiB), stated
# so that a decoder never allocates more for its history, whatever the frame header says.
MAX_WINDOW_SIZE = 1 << 27


class PatchError(ValueError):
    """A patch that is not one valid zstd frame, or that declares or decodes to more than allowed."""


def unpatch(patch: bytes, base: bytes | None, *, max_size: int) -> bytes:
    """Undo `make_patch`: the file `patch` encodes against `base` (None: plain zstd).

    Patches come from outside (a delta), so the output is bounded: a frame whose header declares
    more than `max_size` bytes, or asks for a window above MAX_WINDOW_SIZE, is refused before
    decoding, and decoding streams in 1 MiB steps and stops as soon as the output passes
    `max_size` (`ZstdDecompressor.decompress` would allocate whatever the header declares: a 64 KiB
    frame can declare 2 GB). Memory: at most `max_size` + 1 MiB + the window. PatchError when the
    frame is corrupt or too large; the caller checks the exact length and digest."""
    try:
        params = zstandard.get_frame_parameters(patch)
    except zstandard.ZstdError as exc:
        raise PatchError(f"not a zstd frame ({exc})") from None
    if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > max_size:
        raise PatchError(f"its frame declares {params.content_size} bytes, more than the {max_size} allowed")
    if params.window_size > MAX_WINDOW_SIZE:
        raise PatchError(f"its frame asks for a {params.window_size}-byte window (at most {MAX_WINDOW_SIZE})")
    d = None if base is None else zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor(dict_data=d, max_window_size=MAX_WINDOW_SIZE).stream_reader(patch) as reader:
            while chunk := reader.read(1 << 20):
                out += chunk
                if len(out) > max_size:
                    raise PatchError(f"it decodes to more than the {max_size} bytes allowed")
    except zstandard.ZstdError as exc:
        raise PatchError(f"corrupt zstd frame ({exc})") from None
    return bytes(out)


def delta_layout(files: Mapping[str, bytes | Path], oci_root: Path) -> dict:
    """The delta's OCI layout: every delta/ file but signatures/ as a layer; signed (referrer) when
    `files` holds the manifest.diff.json bundle. Shared by the build and `mirror verify`."""
    blobs = {rel: file_bytes(v) for rel, v in files.items() if not rel.startswith(SIGNATURES_DIR)}
    diff_bytes = blobs[DIFF_FILE]
    diff = json.loads(diff_bytes)
    content_types = {e["digest"]: media_type(e["path"]) for e in diff["added"] + diff["changed"]}
    media = {rel: ("application/json" if rel == DIFF_FILE else "application/zstd" if rel.startswith("patches/")
                   else content_types.get("sha256:" + rel.rsplit("/", 1)[-1], "application/octet-stream"))
             for rel in blobs}
    notes = {DIFF_DIGEST_ANNOTATION: "sha256:" + sha256_hex(diff_bytes),
             BASE_EXPORT_ANNOTATION: diff["baseExportId"], EXPORT_ANNOTATION: diff["exportId"]}
    bundle = file_bytes(files[DELTA_BUNDLE]) if DELTA_BUNDLE in files else None
    return files_layout(blobs, oci_root, artifact_type=DELTA_ARTIFACT_TYPE, tag=DELTA_TAG,
                        created=diff["generatedAt"], media_types=media, annotations=notes, bundle=bundle)
