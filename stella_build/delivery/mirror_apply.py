"""Consumer side of mirrors: apply deltas in order, decrypt, all checked first and swapped in atomically.

A *mirror directory* is what `//…:mirror-full` materializes (mirror/, oci/, mirror.tar.zst,
mirror.tar.zst.sha256, mirror.json) or what `apply`/`decrypt` produce (the same files, plus
`appliedExportIds.log`, one export id per line: the full baseline first, then each applied delta).

Order of `apply_delta` (docs/mirror.md "Apply semantics"): the output directory is guarded and
locked (`outdir.py`); with a key the delta's signature is checked over the raw manifest.diff.json
before anything parses it; the base is verified; manifest.diff.json is validated (types, safe
paths); order, replay and rollback are checked; the delta's files are checked (no link, every blob
by digest, no stray file); the metadata patches are decoded under size caps; the new export.json
is validated and must match the diff; DB archives carried as patches (`blobPatches`) are re-created
from the base's and checked (`mirror_blob_patch.py`). Only then is the new tree written, into a fresh temporary
directory, with every path checked and no file ever opened through a link or twice; it is verified
completely (TUF against the base's root, contents, signatures with a key) and swapped in.
Errors are `MirrorError`s: 3 verification failed, 2 usage, 4 trust material missing.
"""
from __future__ import annotations

import json
from pathlib import Path

from stella_build.engine.encode import canonical_json
from stella_build.engine.encode.timefmt import parse_rfc3339

from stella_build.rules.formats.mirror import ENCRYPTION_FILE, PatchError, package_tree, unpatch
from stella_build.delivery.mirror_blob_patch import apply_blob_patches
from stella_build.delivery.mirror_schema import (
    EncryptionManifest, ExportManifest, check_encryption, load_json, parse_json, read_applied_log, validate,
)
from stella_build.delivery.outdir import APPLIED_LOG, OutputDir
from stella_build.delivery.untrusted import (
    MirrorError, check_distinct, copy_new, read_capped, scan_tree, write_new,
)
from stella_build.delivery.verify.mirror import (
    SUMMARY, _archive_signatures, _check_plaintext_summary, _files, _sha, _verify_signatures, delta_root,
    load_delta, mirror_root, tuf_versions, verify_delta, verify_delta_signature, verify_tree, verify_tuf,
)

# A metadata patch may decode to at most (its dictionary's size + RATIO × its own size + FLOOR)
# bytes, and never more than its declared size. zstd reaches 10-20x on JSON, and a patch against a
# dictionary mostly copies from the dictionary; 64x leaves room for both while a 64 KiB patch can
# no longer claim gigabytes.
PATCH_RATIO = 64
PATCH_FLOOR = 1 << 20

_TUF_ROLE_FILES = ("tuf/root.json", "tuf/timestamp.json", "tuf/snapshot.json", "tuf/targets.json")


# -- apply -----------------------------------------------------------------------------------------

def applied_ids(mirror_dir: Path, export: dict) -> list[str]:
    """The export ids applied to the mirror in `mirror_dir`: its appliedExportIds.log (validated),
    else just its own export id."""
    log = Path(mirror_dir) / APPLIED_LOG
    if log.exists() or log.is_symlink():
        ids = read_applied_log(log)
        if ids and ids[-1] != export["exportId"]:
            raise MirrorError(f"the last applied export {ids[-1]} is not the mirror's export {export['exportId']}",
                              3, "schema-invalid", file=log)
        return ids or [export["exportId"]]
    return [export["exportId"]]


def apply_delta(base_dir: Path, delta: Path, out: Path, key: str | None = None, *, force: bool = False) -> dict:
    """Apply one delta to the mirror in `base_dir`, writing the new mirror to `out` atomically.

    With `key` (a cosign.pub), the delta's signature is checked first and the new mirror's
    signatures before it replaces anything (exit 4 when either is unsigned). `out` may be
    `base_dir`; any other non-empty directory that is not a mirror output is refused (exit 2)
    unless `force`. Returns {exportId, baseExportId, applied, added, changed, removed}."""
    base_dir, delta = Path(base_dir), Path(delta)
    with OutputDir(out, kinds=("mirror",), inputs=[base_dir, delta], same_ok=base_dir, force=force) as od:
        root = delta_root(delta)
        verified = verify_delta_signature(root, key) if key is not None else None
        base_tree = mirror_root(base_dir)
        base_files = scan_tree(base_tree)
        base_export = verify_tree(base_tree)
        base_export_bytes = read_capped(base_files["export.json"])
        history = applied_ids(base_tree.parent, base_export)
        root, diff = load_delta(delta, verified)
        _check_order(diff, base_export, base_export_bytes, history, base_dir, root / "manifest.diff.json")
        delta_files = scan_tree(root)
        verify_delta(root, diff, delta_files)
        meta = _decode_metadata(root, diff, base_files)
        new_export = _new_export(meta, diff, root)
        _check_diff_consistency(base_export, new_export, diff, root)
        _check_not_rollback(base_export, new_export, base_files, meta, root)
        patched = apply_blob_patches(root, diff, base_export, base_files)  # DB archives, checked, in memory
        sources = _content_sources(new_export, diff, root, delta_files, base_export, base_files, patched)

        tmp = od.begin()  # no file of the new mirror exists before this line
        tree = tmp / "mirror"
        for rel, src in sources.items():
            if isinstance(src, bytes):
                write_new(tree, rel, src)
            else:
                copy_new(tree, rel, src)
        for rel, data in meta.items():
            write_new(tree, rel, data)
        if "tuf/root.json" in base_files:
            verify_tuf(tree, root_bytes=read_capped(base_files["tuf/root.json"]))
        verify_tree(tree, check_tuf="tuf/root.json" not in base_files)
        _finish(tree, tmp, diff, history + [diff["exportId"]])
        if key is not None:
            _verify_signatures(tmp, key)
        od.commit()
    return {"exportId": diff["exportId"], "baseExportId": diff["baseExportId"],
            "applied": history + [diff["exportId"]], "added": len(diff["added"]),
            "changed": len(diff["changed"]), "removed": len(diff["removed"])}


def _check_order(diff: dict, base_export: dict, base_export_bytes: bytes, history: list[str], base_dir: Path,
                 where: Path) -> None:
    """The delta continues this mirror: not an export it already went through (replay, or a
    return to an earlier state), and made against exactly its export.json (out of order). A delta
    from the current export to itself (same content, newer metadata: a TUF refresh) passes here;
    _check_not_rollback then requires it to be newer."""
    refresh = diff["exportId"] == diff["baseExportId"] == base_export["exportId"]
    if diff["exportId"] in history and not refresh:
        if diff["baseExportId"] == base_export["exportId"]:
            raise MirrorError(f"the delta leads back to export {diff['exportId']}, which {base_dir} already went "
                              f"through (applied: {', '.join(history)}): refusing a rollback", 3, "rollback",
                              file=where, field="exportId")
        raise MirrorError(f"delta {diff['exportId']} was already applied to {base_dir} (applied: {history})", 3,
                          "replay", file=where, field="exportId")
    if diff["baseExportId"] != base_export["exportId"]:
        raise MirrorError(
            f"out-of-order delta: it applies to export {diff['baseExportId']}, but {base_dir} is at "
            f"{base_export['exportId']} (applied: {', '.join(history)}). Apply the missing deltas in "
            "order, or rebuild from the last full mirror and apply again in order.", 3, "out-of-order",
            file=where, field="baseExportId")
    if diff["baseManifestDigest"] != _sha(base_export_bytes):
        raise MirrorError(f"delta base manifest digest {diff['baseManifestDigest']} does not match "
                          f"{base_dir}'s export.json ({_sha(base_export_bytes)})", 3, "out-of-order",
                          file=where, field="baseManifestDigest")


def _decode_metadata(root: Path, diff: dict, base_files: dict[str, Path]) -> dict[str, bytes]:
    """{path: bytes} of every metadata file of the new mirror, decoded from the delta's patches:
    each patch is at most MAX_JSON_BYTES, decodes to at most its declared size (itself at most
    dictionary + PATCH_RATIO × patch + PATCH_FLOOR), and to exactly its recorded size and digest."""
    where = root / "manifest.diff.json"
    meta: dict[str, bytes] = {}
    for i, m in enumerate(diff["metadata"]):
        field = f"metadata[{i}]"
        dictionary = None
        if m.get("patchBase"):
            src = base_files.get(m["path"])
            dictionary = read_capped(src) if src is not None else None
            if dictionary is None or _sha(dictionary) != m["patchBase"]:
                raise MirrorError(f"the patch for {m['path']} needs the base's file with {m['patchBase']}", 3,
                                  "out-of-order", file=where, field=f"{field}.patchBase")
        patch = read_capped(root / m["patch"])
        limit = (len(dictionary) if dictionary else 0) + PATCH_RATIO * len(patch) + PATCH_FLOOR
        if m["bytes"] > limit:
            raise MirrorError(f"{m['path']} is declared as {m['bytes']} bytes, more than its {len(patch)}-byte "
                              f"patch may decode to ({limit})", 3, "size-limit", file=where, field=f"{field}.bytes")
        try:
            data = unpatch(patch, dictionary, max_size=m["bytes"])
        except PatchError as exc:
            raise MirrorError(f"patch {m['patch']} is refused: {exc}", 3,
                              "size-limit" if "more than" in str(exc) else "digest-mismatch",
                              file=root / m["patch"], field=f"{field}.bytes") from None
        if len(data) != m["bytes"] or _sha(data) != m["digest"]:
            raise MirrorError(f"patch {m['patch']} decodes to the wrong bytes ({len(data)} bytes, {_sha(data)})",
                              3, "digest-mismatch", file=root / m["patch"], field=f"{field}.digest")
        meta[m["path"]] = data
    return meta


def _new_export(meta: dict[str, bytes], diff: dict, root: Path) -> dict:
    """The new export.json (decoded from its patch), validated like any export.json."""
    where = root / "manifest.diff.json"
    if "export.json" not in meta or _sha(meta["export.json"]) != diff["manifestDigest"]:
        raise MirrorError("the delta carries no new export.json matching manifestDigest", 3, "digest-mismatch",
                          file=where, field="manifestDigest")
    doc = parse_json(meta["export.json"], file="export.json (new, from the delta)")
    export = validate(ExportManifest, doc, file="export.json (new, from the delta)")
    check_distinct([c.path for c in export.contents] + list(meta), file="export.json (new, from the delta)",
                   field="contents")
    return doc


def _check_diff_consistency(base: dict, new: dict, diff: dict, root: Path) -> None:
    where = root / "manifest.diff.json"
    old = {c["path"]: c["digest"] for c in base["contents"]}
    cur = {c["path"]: c for c in new["contents"]}
    added = sorted(p for p in cur if p not in old)
    changed = sorted(p for p in cur if p in old and old[p] != cur[p]["digest"])
    removed = sorted(p for p in old if p not in cur)
    if ([e["path"] for e in diff["added"]], [e["path"] for e in diff["changed"]], diff["removed"]) != \
            (added, changed, removed):
        raise MirrorError("added/changed/removed do not match the base and new manifests", 3, "schema-invalid",
                          file=where, field="added")
    for key in ("added", "changed"):
        for i, e in enumerate(diff[key]):
            if (e["digest"], e["bytes"]) != (cur[e["path"]]["digest"], cur[e["path"]]["bytes"]):
                raise MirrorError(f"{key}[{i}] ({e['path']}) does not match the new export.json", 3,
                                  "schema-invalid", file=where, field=f"{key}[{i}]")
    for i, e in enumerate(diff["changed"]):
        if e["baseDigest"] != old[e["path"]]:
            raise MirrorError(f"changed[{i}].baseDigest is not the base's digest of {e['path']}", 3,
                              "schema-invalid", file=where, field=f"changed[{i}].baseDigest")
    for i, t in enumerate(diff["tombstones"]):
        if t["baseDigest"] != old[t["path"]] or t["removedIn"] != diff["exportId"]:
            raise MirrorError(f"tombstones[{i}] ({t['path']}) does not match the base or this delta", 3,
                              "tombstone-missing", file=where, field=f"tombstones[{i}]")
    if new["exportId"] != diff["exportId"]:
        raise MirrorError("exportId does not match the new export.json", 3, "schema-invalid", file=where,
                          field="exportId")


def _check_not_rollback(base: dict, new: dict, base_files: dict[str, Path], meta: dict[str, bytes],
                        root: Path) -> None:
    """A delta never takes a mirror back in time, and never strips or replaces its TUF trust:
    the new generatedAt (SOURCE_DATE_EPOCH) is not earlier than the base's; a TUF-protected base
    keeps every role file, the same root, and no role's version goes down (versions follow the
    epoch, rules/formats/tuf.py). Equal epochs are allowed: reproducible builds from a fixed
    SOURCE_DATE_EPOCH have equal versions, and then the applied history is what orders them."""
    where = root / "manifest.diff.json"
    new_time, base_time = parse_rfc3339(new["generatedAt"]), parse_rfc3339(base["generatedAt"])
    if new_time < base_time:
        raise MirrorError(f"the delta goes back in time: its export is from {new['generatedAt']}, the mirror's "
                          f"from {base['generatedAt']}: refusing a rollback", 3, "rollback", file=where,
                          field="generatedAt")
    if new["exportId"] == base["exportId"] and new_time <= base_time:
        raise MirrorError(f"the delta leads to the export the mirror already holds ({base['exportId']}, "
                          f"{base['generatedAt']})", 3, "replay", file=where, field="exportId")
    if "tuf/root.json" not in base_files:
        return
    missing = [f for f in _TUF_ROLE_FILES if f not in meta]
    if missing:
        raise MirrorError(f"the mirror is TUF-protected but the delta drops {', '.join(missing)}", 3,
                          "tuf-removed", file=where, field="metadata")
    base_roles = {f: read_capped(base_files[f]) for f in _TUF_ROLE_FILES if f in base_files}
    if meta["tuf/root.json"] != base_roles.get("tuf/root.json"):
        raise MirrorError("the delta changes the TUF root (new keys or expiry); a root rotation needs a new full "
                          "mirror", 3, "tuf-root-changed", file=where, field="metadata")
    old_v = tuf_versions(base_roles, where=base_files["tuf/root.json"].parent.parent)
    new_v = tuf_versions(meta, where=root)
    back = [f"{role} {old_v[role]} → {new_v[role]}" for role in new_v if role in old_v and new_v[role] < old_v[role]]
    if back:
        raise MirrorError(f"the delta's TUF metadata goes back in version ({', '.join(back)}): refusing a rollback",
                          3, "rollback", file=where, field="metadata")


def _content_sources(new: dict, diff: dict, root: Path, delta_files: dict[str, Path], base: dict,
                     base_files: dict[str, Path], patched: dict[str, bytes]) -> dict[str, Path | bytes]:
    """{new content path: file to copy, or bytes to write} from the delta's blobs, the DB archives
    re-created from its patches (`patched`, by digest) or the (verified) base, by digest."""
    by_digest = {c["digest"]: base_files[c["path"]] for c in base["contents"]}
    blobs = set(diff["blobs"])
    out: dict[str, Path | bytes] = {}
    for i, c in enumerate(new["contents"]):
        rel = "blobs/sha256/" + c["digest"].split(":", 1)[1]
        src = delta_files[rel] if c["digest"] in blobs else patched.get(c["digest"], by_digest.get(c["digest"]))
        if src is None:
            raise MirrorError(f"{c['path']} ({c['digest']}) is neither in the delta nor in the base", 3,
                              "missing-file", file="export.json (new, from the delta)", field=f"contents[{i}]")
        out[c["path"]] = src
    return out


def _finish(tree: Path, out: Path, summary_src: dict, history: list[str] | None) -> None:
    """Package the verified tree (OCI layout, tar.zst, mirror.json) and check the digests the
    producer recorded, so the result is byte-identical to its full build."""
    export = json.loads((tree / "export.json").read_bytes())
    epoch = parse_rfc3339(export["generatedAt"])
    got = package_tree(_files(tree), out / "oci", out / "mirror.tar.zst", epoch)
    if summary_src.get("archive"):
        if got["archiveSha256"] != summary_src["archive"]["sha256"]:
            raise MirrorError(f"rebuilt mirror.tar.zst has sha256 {got['archiveSha256']}, the producer "
                              f"recorded {summary_src['archive']['sha256']} (different zstd version?)", 3,
                              "digest-mismatch", field="archive.sha256")
    if summary_src.get("oci"):
        if got["ociManifestDigest"] != summary_src["oci"]["manifestDigest"]:
            raise MirrorError("rebuilt OCI manifest differs from the one the producer recorded", 3,
                              "digest-mismatch", field="oci.manifestDigest")
        if got["ociIndexSha256"] != summary_src["oci"]["indexSha256"]:
            raise MirrorError("rebuilt OCI index.json differs from the one the producer recorded "
                              "(signature referrer missing or different?)", 3, "digest-mismatch",
                              field="oci.indexSha256")
    got.update({"exportId": export["exportId"], "manifestDigest": _sha((tree / "export.json").read_bytes()),
                "rerunHash": export["rerunHash"], "sourceDateEpoch": epoch})
    (out / SUMMARY).write_bytes(canonical_json.dumps(got))
    if history is not None:
        (out / APPLIED_LOG).write_text("".join(i + "\n" for i in history))


# -- decrypt -----------------------------------------------------------------------------------------

def decrypt_mirror(src: Path, identity: Path, out: Path, key: str | None = None, *, force: bool = False) -> dict:
    """Decrypt an encrypted mirror directory into `out` (plaintext tree, OCI layout, tar), verified.
    With `key`, the encrypted mirror's signatures are checked first. The plaintext archive and OCI
    manifest must hash to what the producer recorded in mirror.json before encrypting. `out` is
    guarded like apply's (exit 2 for a non-empty directory that is not a mirror output)."""
    from stella_build.rules.formats.encryption import DecryptionError, EncryptionRecord, decrypt_tree

    src = Path(src)
    with OutputDir(out, kinds=("mirror",), inputs=[src], force=force) as od:
        tree = mirror_root(src)
        files = scan_tree(tree)
        if ENCRYPTION_FILE not in files:
            raise MirrorError(f"{tree}: not encrypted (no {ENCRYPTION_FILE})", 2, "not-encrypted", file=tree)
        _, doc = load_json(files[ENCRYPTION_FILE])
        manifest: EncryptionManifest = check_encryption(doc, file=files[ENCRYPTION_FILE])
        try:
            record = EncryptionRecord.from_json(doc)
        except DecryptionError as exc:
            raise MirrorError(str(exc), 3, "schema-invalid", file=files[ENCRYPTION_FILE]) from None
        for i, f in enumerate(manifest.files):
            if f.encryptedPath not in files:
                raise MirrorError(f"{f.encryptedPath} is listed but missing", 3, "missing-file",
                                  file=tree / f.encryptedPath, field=f"files[{i}].encryptedPath")
            if f.path in files:
                raise MirrorError(f"{f.path} exists both encrypted and in clear", 3, "path-collision",
                                  file=tree / f.path, field=f"files[{i}].path")
        if key is not None:
            _verify_signatures(tree.parent, key)
        tmp = od.begin()
        plain = tmp / "mirror"
        skip = {f.encryptedPath for f in manifest.files} | {ENCRYPTION_FILE} | _archive_signatures()
        for rel, path in files.items():
            if rel not in skip:
                copy_new(plain, rel, path)
        try:
            decrypt_tree(tree, record, identity, out_root=plain)
        except DecryptionError as exc:
            raise MirrorError(f"decryption failed: {exc}", 3, "decryption-failed") from None
        export = verify_tree(plain)
        _finish(plain, tmp, {}, None)
        _check_plaintext_summary(tree.parent / SUMMARY, tmp / SUMMARY)
        od.commit()
    return {"exportId": export["exportId"], "files": len(record.files)}


__all__ = ["apply_delta", "decrypt_mirror", "applied_ids", "APPLIED_LOG"]
