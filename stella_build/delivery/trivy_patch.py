"""`stella-build trivy-db patch BASE PATCH -o OUT`: rebuild a Trivy DB from the one a site holds.

BASE is the site's trivy.db (or a directory holding it: a Trivy cache's db/, an earlier OUT);
PATCH the output directory of a trivy_db_patch target (trivy.db.zst, metadata.json, patch.json).
Everything is checked before anything is written:

1. patch.json is read under a size cap and must be a format-1 manifest (`schema-invalid`);
   the patch and metadata.json must have the digests it names (`digest-mismatch`).
2. BASE must have the manifest's base sha256 (`base-mismatch`, exit 3): a patch against another DB
   would decode to garbage, or fail zstd's checksum.
3. The patch is decoded with its output bounded by the declared result size and its window by
   what the sizes need (rules/formats/trivy/patch.py apply_db_patch), and the result must have
   the promised sha256 (`patch-result-mismatch`, exit 3).
4. Only then OUT (guarded as in delivery/outdir.py: new, empty, an earlier output of this command,
   or BASE's own directory) receives trivy.db and metadata.json, built aside and swapped in.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from stella_build.delivery.outdir import OutputDir
from stella_build.delivery.untrusted import MirrorError
from stella_build.rules.formats.trivy.patch import (
    DB_FILE, FORMAT_VERSION, MANIFEST_FILE, MAX_DB_BYTES, METADATA_FILE, PATCH_FILE, PATCH_SCHEMA, PatchError,
    apply_db_patch,
)

# patch.json is ~600 bytes; metadata.json ~200 bytes. Anything far larger is not ours.
MAX_MANIFEST_BYTES = 1 << 20
# The top-level entries of an OUT this command wrote (replaced without --force).
OUTPUT_ENTRIES = frozenset({DB_FILE, METADATA_FILE})


# What a patch directory holds (rules/formats/trivy/patch.py); named when one of them is missing.
_WHOLE_PATCH = (f"a trivy-db patch is a directory of {MANIFEST_FILE}, {PATCH_FILE} and {METADATA_FILE}: "
                "copy the whole directory (cp -r), not single files")


def _read(path: Path, cap: int, what: str, field: str | None = None) -> bytes:
    """A regular file (no symlink) read whole under `cap` bytes. `field`: the patch.json entry
    that declared the cap (`patch.bytes`), named by a size-limit error."""
    try:
        if path.is_symlink() or not path.is_file():
            hint = f"; {_WHOLE_PATCH}" if path.name in (MANIFEST_FILE, PATCH_FILE, METADATA_FILE) else ""
            raise MirrorError(f"{path}: {what} is missing or not a regular file{hint}", 3, "missing-file",
                              file=path, field=field and field.replace(".bytes", ".path"))
        size = path.stat().st_size
        if size > cap:
            declared = f" ({field} in patch.json)" if field else ""
            raise MirrorError(f"{path}: {what} has {size} bytes, more than the {cap} allowed{declared}", 3,
                              "size-limit", file=path, field=field)
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError as exc:
        raise MirrorError(f"{path}: {exc.strerror or exc}", 1, "io-error", file=path) from None
    if len(data) > cap:
        raise MirrorError(f"{path}: {what} grew past {cap} bytes while read", 3, "size-limit", file=path,
                          field=field)
    return data


class DuplicateKey(ValueError):
    """A JSON object names `key` twice (`_strict_object`)."""

    def __init__(self, key: str):
        super().__init__(f"the key {key!r} appears twice in one object")
        self.key = key


def _strict_object(pairs: list[tuple[str, object]]) -> dict:
    """json.loads `object_pairs_hook`: a JSON object naming a key twice is refused (ValueError).
    RFC 8259 §4 leaves duplicates to the reader; Python keeps the last, Go's encoding/json v2
    (Trivy built with GOEXPERIMENT=jsonv2) rejects them, so two readers could see two files."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(dup)
    return doc


def _loads(data: bytes | str) -> object:
    return json.loads(data, object_pairs_hook=_strict_object)


def _signed_manifest(patch_dir: Path, key: str) -> bytes:
    """patch.json checked against signatures/ with the trusted public key `key` before anything
    parses it (the bytes returned are the ones that verified): the mirror delta's check
    (verify_manifest_signature), exit 4 unsigned, exit 3 signature-invalid."""
    from stella_build.delivery.verify.mirror import verify_manifest_signature
    from stella_build.rules.formats.trivy.patch import SIGNATURE_FILES

    if (patch_dir / "signatures").is_symlink():  # its files are refused as links; so is the folder
        raise MirrorError("signatures/ is a symbolic link", 3, "symlink", file=patch_dir / "signatures")
    names = {role: patch_dir / rel for role, rel in SIGNATURE_FILES.items()}
    return verify_manifest_signature(patch_dir / MANIFEST_FILE, names, key, "the patch", cap=MAX_MANIFEST_BYTES)


_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def _manifest_problem(doc: object) -> tuple[str, str | None, str] | None:
    """(message, field, reason) of the first thing wrong with a parsed patch.json, or None."""
    if not isinstance(doc, dict):
        return "not a JSON object", None, "schema-invalid"
    if doc.get("schema") != PATCH_SCHEMA:
        return f"schema is {doc.get('schema')!r}, not {PATCH_SCHEMA!r}", "schema", "schema-invalid"
    if doc.get("formatVersion") != FORMAT_VERSION:
        return (f"formatVersion is {doc.get('formatVersion')!r}; this stella-build reads {FORMAT_VERSION}",
                "formatVersion", "schema-invalid")
    for k in ("base", "result", "patch", "metadata"):
        entry = doc.get(k)
        if not isinstance(entry, dict):
            return f"{k} is missing or not an object", k, "schema-invalid"
        sha, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            return f"{k}.sha256 is not 64 lowercase hex digits: {str(sha)[:80]!r}", f"{k}.sha256", "schema-invalid"
        if type(size) is not int or size < 0:
            return f"{k}.bytes is not a non-negative integer: {str(size)[:80]}", f"{k}.bytes", "schema-invalid"
        if size > MAX_DB_BYTES:
            return f"{k}.bytes is {size}, more than the {MAX_DB_BYTES} allowed", f"{k}.bytes", "size-limit"
    return None


def _manifest(patch_dir: Path, data: bytes | None = None) -> dict:
    path = patch_dir / MANIFEST_FILE
    try:
        doc = _loads(_read(path, MAX_MANIFEST_BYTES, "patch.json") if data is None else data)
    except (ValueError, RecursionError) as exc:
        raise MirrorError(f"{path}: not JSON ({str(exc)[:200]}): not a trivy-db patch manifest", 3,
                          "schema-invalid", file=path,
                          field=exc.key if isinstance(exc, DuplicateKey) else None) from None
    problem = _manifest_problem(doc)
    if problem is not None:
        message, field, reason = problem
        raise MirrorError(f"{path}: not a trivy-db patch manifest (format {FORMAT_VERSION}): {message}", 3,
                          reason, file=path, field=field)
    return doc


def _base_file(base: Path) -> Path:
    for candidate in (base, base / DB_FILE, base / "db" / DB_FILE):
        if candidate.is_file():
            return candidate
    raise MirrorError(f"{base}: no trivy.db there (give the file, or the directory holding it)", 2, "base-missing",
                      file=base, field="BASE")


def _check(data: bytes, doc: dict, name: str, path: Path, reason: str) -> None:
    """`data` has the size and sha256 that patch.json's entry `name` declares; else MirrorError
    naming the entry's field that differs (`NAME.bytes`, else `NAME.sha256`)."""
    entry = doc[name]
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        field = f"{name}.bytes" if len(data) != entry["bytes"] else f"{name}.sha256"
        raise MirrorError(f"{path}: {len(data)} bytes, sha256 {digest}; patch.json names {entry['bytes']} bytes, "
                          f"sha256 {entry['sha256']}", 3, reason, file=path, field=field)


def _updated_at(data: bytes) -> int:
    """Seconds since the epoch of a Trivy metadata.json's UpdatedAt; ValueError when absent."""
    from stella_build.engine.encode.timefmt import parse_rfc3339

    try:
        return parse_rfc3339(_loads(data)["UpdatedAt"])
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _check_metadata(metadata: bytes, path: Path) -> None:
    """Refuse (exit 3, `schema-invalid`) a metadata.json that is not Trivy's for a trivy.db (a JSON
    object with Version 2, the DB schema, and an RFC 3339 UpdatedAt): it is written into the site's Trivy cache beside
    the DB, and an unsigned patch's manifest only proves it is the file the patch maker chose."""
    try:
        doc = _loads(metadata)
        ok = isinstance(doc, dict) and doc.get("Version") == 2 and type(doc["Version"]) is int
        _updated_at(metadata)
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise MirrorError(f"{path}: not a Trivy metadata.json of a schema-2 trivy.db (a JSON object with "
                          "Version 2 and an RFC 3339 UpdatedAt)", 3, "schema-invalid", file=path)


def _not_older(out: Path, metadata: bytes) -> None:
    """Refuse (exit 3, `rollback`) to replace a DB in OUT whose metadata.json says it was updated
    later than the patch's result: whoever relays patches could otherwise serve an older signed
    one and hide newer advisories. A site file that cannot be read as metadata is not compared."""
    old = out / METADATA_FILE
    if old.is_symlink() or not old.is_file():
        return
    try:
        was = _updated_at(_read(old, MAX_MANIFEST_BYTES, "metadata.json"))
        now = _updated_at(metadata)
    except (ValueError, MirrorError):
        return
    if now < was:
        from stella_build.engine.encode.timefmt import rfc3339

        raise MirrorError(f"the patched DB was updated at {rfc3339(now)}, before the DB already there "
                          f"(updated at {rfc3339(was)}): "
                          "an older patch (pass --force to go back on purpose)", 3, "rollback",
                          file=old, field="--out")


def _holds_result(out: Path, doc: dict, metadata: bytes) -> bool:
    """OUT (not a link) already holds exactly the patch's result: its trivy.db has the promised
    size and sha256 and its metadata.json is the patch's (a re-run into the same OUT)."""
    db, meta = out / DB_FILE, out / METADATA_FILE
    try:
        if out.is_symlink() or db.is_symlink() or meta.is_symlink() or not db.is_file() \
                or db.stat().st_size != doc["result"]["bytes"] or meta.read_bytes() != metadata:
            return False
        with open(db, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == doc["result"]["sha256"]
    except OSError:
        return False


def _is_output(out: Path) -> bool:
    """OUT is a directory this command wrote before (only trivy.db and metadata.json, regular files)."""
    try:
        names = set(os.listdir(out))
    except OSError:
        return False
    return (not out.is_symlink() and bool(names) and names <= OUTPUT_ENTRIES and
            all((out / n).is_file() and not (out / n).is_symlink() for n in names))


def apply_patch_dir(base: Path, patch_dir: Path, out: Path, *, force: bool = False,
                    key: str | None = None) -> dict:
    """Check and apply the patch in `patch_dir` to `base` and write OUT/trivy.db + OUT/metadata.json.

    `key`: a trusted cosign.pub; patch.json must then carry a signature by it (checked first).
    Without it the patch is only checked against its own patch.json (integrity, not origin).
    Returns {"out", "base": sha256, "result": sha256, "bytes", "patchBytes", "signed": bool}.
    Refuses (exit 3 `rollback`, unless `force`) to replace a DB in OUT whose metadata.json
    UpdatedAt is later than the patch's.
    Raises MirrorError: exit 3 (`base-mismatch`, `patch-result-mismatch`, `digest-mismatch`,
    `schema-invalid`, `size-limit`, `patch-invalid`, `missing-file`, `signature-invalid`) with
    nothing written; exit 4 (`signature-missing`) for --key on an unsigned patch, (`trust-missing`)
    for a --key file that is not a usable public key; exit 2 for a
    missing BASE (`base-missing`) or an OUT that is not ours (`output-not-empty`,
    `output-overlaps-input`)."""
    base_file = _base_file(Path(base))
    signed = _signed_manifest(Path(patch_dir), key) if key is not None else None
    doc = _manifest(Path(patch_dir), signed)
    patch_path, meta_path = Path(patch_dir) / PATCH_FILE, Path(patch_dir) / METADATA_FILE
    # capped at the sizes patch.json declares (signed, with --key): a larger file is refused
    # before it is read, not after 2 GiB of it were
    patch = _read(patch_path, doc["patch"]["bytes"], "the patch", "patch.bytes")
    _check(patch, doc, "patch", patch_path, "digest-mismatch")
    metadata = _read(meta_path, min(doc["metadata"]["bytes"], MAX_MANIFEST_BYTES), "metadata.json",
                     "metadata.bytes")
    _check(metadata, doc, "metadata", meta_path, "digest-mismatch")
    _check_metadata(metadata, meta_path)
    base_bytes = _read(base_file, MAX_DB_BYTES, "the base trivy.db")
    if (len(base_bytes) == doc["result"]["bytes"]
            and hashlib.sha256(base_bytes).hexdigest() == doc["result"]["sha256"]
            and Path(os.path.abspath(out)).resolve() == base_file.parent.resolve()) \
            or _holds_result(Path(out), doc, metadata):
        # a cron job re-running the same patch on a Trivy cache it already updated: nothing to do
        return {"out": str(out), "base": doc["base"]["sha256"], "result": doc["result"]["sha256"],
                "bytes": doc["result"]["bytes"], "patchBytes": doc["patch"]["bytes"], "unchanged": True,
                "signed": signed is not None}
    try:
        _check(base_bytes, doc, "base", base_file, "base-mismatch")
    except MirrorError as exc:
        raise MirrorError(f"{exc} — this patch was made for another base DB; fetch the full db.tar.gz instead",
                          3, "base-mismatch", file=base_file, field="BASE") from None
    try:
        result = apply_db_patch(base_bytes, patch, result_size=doc["result"]["bytes"],
                                result_sha256=doc["result"]["sha256"])
    except PatchError as exc:
        raise MirrorError(f"{patch_path}: {exc}", 3, exc.reason, file=patch_path) from None
    del base_bytes, patch
    if not force:
        _not_older(Path(out), metadata)
    # Only now is anything written. Re-applying onto an earlier OUT (or the base's own directory:
    # a Trivy cache's db/) replaces it without --force; outdir.OUTPUT_KINDS has no "trivy-db" kind,
    # so that case passes force after checking the shape here.
    out = Path(out)
    same_ok = base_file.parent if base_file.parent.resolve() == Path(os.path.abspath(out)).resolve() else None
    with OutputDir(out, kinds=(), inputs=[Path(patch_dir), base_file.parent], same_ok=same_ok,
                   force=force or _is_output(out)) as od:
        tmp = od.begin()
        for name, data in ((DB_FILE, result), (METADATA_FILE, metadata)):
            with open(tmp / name, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        od.commit()
    return {"out": str(out), "base": doc["base"]["sha256"], "result": doc["result"]["sha256"],
            "bytes": len(result), "patchBytes": doc["patch"]["bytes"], "unchanged": False,
            "signed": signed is not None}


__all__ = ["apply_patch_dir", "OUTPUT_ENTRIES"]
