"""The consumer's schema of the JSON documents a mirror or a delta carries, checked with pydantic.

`export.json`, `manifest.diff.json`, `encryption.json`, `mirror.json` and `appliedExportIds.log`
come from outside. Before any of their values is used (as a path, a size, a digest, a dictionary
key) the document is parsed under a size cap and validated here: strict types (a number is not a
digest, a string is not a list, `true` is not a size), digests as `sha256:<64 hex>`, every path a
safe relative path (`untrusted.safe_relpath`). A failure is a MirrorError (exit 3, reason
`schema-invalid` or `unsafe-path`) naming the file and the field (`contents[3].path`), never a
traceback. Unknown fields are ignored: they cannot reach a file system call.

The producer side (rules/mirror_full.py, rules/mirror_delta.py) writes these documents; the
layouts are described in docs/mirror.md.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from stella_build.engine.encode.timefmt import parse_rfc3339
from stella_build.rules.formats.mirror import is_metadata
from stella_build.delivery.untrusted import (
    MAX_JSON_BYTES, MAX_LOG_BYTES, MirrorError, check_distinct, path_problem, read_capped,
)


def _path(value: str) -> str:
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(f"unsafe path {value!r}: {problem}")
    return value


def _content_path(value: str) -> str:
    _path(value)
    if is_metadata(value):
        raise ValueError(f"{value!r} is a metadata path (export.json, provenance.json, tuf/, signatures/), "
                         "not a content file")
    return value


def _metadata_path(value: str) -> str:
    _path(value)
    if not is_metadata(value):
        raise ValueError(f"{value!r} is not a metadata path (export.json, provenance.json, tuf/, signatures/)")
    return value


def _rfc3339(value: str) -> str:
    parse_rfc3339(value)  # ValueError when it is not one
    return value


SafePath = Annotated[str, AfterValidator(_path)]
ContentPath = Annotated[str, AfterValidator(_content_path)]
MetadataPath = Annotated[str, AfterValidator(_metadata_path)]
Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# exp-<24 hex> as mirror_full writes it; the looser pattern keeps other producers' ids usable while
# ruling out what could not be one line of appliedExportIds.log.
ExportId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Size = Annotated[int, Field(ge=0, le=1 << 50)]
Timestamp = Annotated[str, AfterValidator(_rfc3339)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# -- export.json ------------------------------------------------------------------------------------

class ContentEntry(_Model):
    path: ContentPath
    digest: Digest
    bytes: Size


class ExportManifest(_Model):
    """What the consumer uses of export.json (rules/mirror_full.py writes it)."""

    exportId: ExportId
    generatedAt: Timestamp
    contents: list[ContentEntry]
    rerunHash: str


# -- manifest.diff.json --------------------------------------------------------------------------------

class AddedEntry(_Model):
    path: ContentPath
    digest: Digest
    bytes: Size


class ChangedEntry(AddedEntry):
    baseDigest: Digest


class Tombstone(_Model):
    path: ContentPath
    baseDigest: Digest
    removedIn: ExportId


class MetadataEntry(_Model):
    path: MetadataPath
    digest: Digest
    bytes: Annotated[int, Field(ge=0, le=MAX_JSON_BYTES)]
    patch: SafePath
    patchBase: Digest | None = None


class ArchiveRecord(_Model):
    path: Literal["mirror.tar.zst"]
    sha256: Hex64


class OciRecord(_Model):
    tag: str
    manifestDigest: Digest
    indexSha256: Hex64


class DeltaManifest(_Model):
    """What the consumer uses of manifest.diff.json (rules/mirror_delta.py writes it)."""

    baseExportId: ExportId
    baseManifestDigest: Digest
    exportId: ExportId
    manifestDigest: Digest
    generatedAt: Timestamp | None = None
    added: list[AddedEntry]
    changed: list[ChangedEntry]
    removed: list[ContentPath]
    tombstones: list[Tombstone]
    metadata: list[MetadataEntry]
    blobs: list[Digest]
    archive: ArchiveRecord | None = None
    oci: OciRecord | None = None
    resetBaseline: bool = False


# -- encryption.json, mirror.json ------------------------------------------------------------------------

class EncryptedEntry(_Model):
    path: SafePath
    encryptedPath: SafePath
    size: Size


class EncryptionManifest(_Model):
    """What decrypt uses of encryption.json before rules/formats/encryption.py reads it."""

    runId: str
    recipients: list[dict[str, Any]]
    files: list[EncryptedEntry]


class MirrorSummary(_Model):
    """mirror.json: the digests the producer recorded for its packaging."""

    archiveSha256: Hex64 | None = None
    ociManifestDigest: Digest | None = None
    manifestDigest: Digest | None = None
    exportId: ExportId | None = None


M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(model: type[M], doc: Any, *, file: str | Path) -> M:
    """`doc` (parsed JSON) as `model`; MirrorError exit 3 naming `file` and the first bad field."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = _where(tuple(err["loc"])) or None
        reason = "unsafe-path" if "unsafe path" in err["msg"] else "schema-invalid"
        raise MirrorError(f"{field or 'document'}: {err['msg']} (got {_short(err.get('input'))})", 3, reason,
                          file=file, field=field) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_json(path: Path, *, cap: int = MAX_JSON_BYTES) -> tuple[bytes, Any]:
    """(bytes, parsed JSON) of an input JSON file of at most `cap` bytes; MirrorError exit 3
    (`size-limit`, `schema-invalid`) otherwise. Strict JSON: NaN and Infinity are refused."""
    data = read_capped(path, cap)
    return data, parse_json(data, file=path)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, *, file: str | Path) -> Any:
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise MirrorError(f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})", 3, "schema-invalid",
                          file=file) from None


_LOG_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def read_applied_log(path: Path) -> list[str]:
    """The export ids of appliedExportIds.log (one per line, the full baseline first)."""
    text = read_capped(path, MAX_LOG_BYTES).decode("utf-8", "replace")
    ids = [line for line in text.splitlines() if line]
    for i, line in enumerate(ids):
        if not _LOG_LINE.match(line):
            raise MirrorError(f"line {i + 1} is not an export id: {_short(line)}", 3, "schema-invalid",
                              file=path, field=f"line {i + 1}")
    return ids


def check_encryption(doc: Any, *, file: str | Path) -> EncryptionManifest:
    """encryption.json of an encrypted mirror, validated before rules/formats/encryption.py reads
    it: every plaintext path is a safe content path under data/, its encrypted file is exactly
    `<path>.enc`, and no path appears twice."""
    from stella_build.rules.formats.encryption import SUFFIX

    record = validate(EncryptionManifest, doc, file=file)
    for i, f in enumerate(record.files):
        if not f.path.startswith("data/") or f.encryptedPath != f.path + SUFFIX:
            raise MirrorError(f"files[{i}]: {f.path!r} → {f.encryptedPath!r} is not a data/ file and its "
                              f"'{SUFFIX}' twin", 3, "unsafe-path", file=file, field=f"files[{i}].encryptedPath")
    check_distinct([f.path for f in record.files] + [f.encryptedPath for f in record.files], file=file,
                   field="files")
    return record


__all__ = ["ExportManifest", "DeltaManifest", "EncryptionManifest", "MirrorSummary", "validate", "load_json",
           "parse_json", "read_applied_log", "check_encryption"]
