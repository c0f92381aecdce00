"""Consumer side of mirrors: verify a mirror or a delta, apply deltas in order, decrypt, all atomic.

A *mirror directory* is what `//…:mirror-full` materializes (mirror/, oci/, mirror.tar.zst,
mirror.tar.zst.sha256, mirror.json) or what `apply`/`decrypt` produce (the same files, plus
`appliedExportIds.log`, one export id per line: the full baseline first, then each applied delta).

`apply` builds the new mirror in a temporary sibling directory, verifies it completely, then swaps
it in with renames, so a crash (kill -9 included) leaves either the old or the new tree, never a
half-applied one (at worst a stray `.<name>.tmp-<pid>` directory, removed by the next apply).
Errors are `MirrorError`s with the exit code of design §6: 3 verification failed, 2 usage.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stella_build.engine.encode import canonical_json
from stella_build.engine.encode.timefmt import parse_rfc3339

from stella_build.rules.formats.mirror import ENCRYPTION_FILE, is_metadata, package_tree
from stella_build.rules.formats.mirror import unpatch
from stella_build.delivery.verify.mirror import SUMMARY, MirrorError, _sha, _files, mirror_root, verify_tree, verify_tuf, load_delta, verify_delta, verify_delta_signature, _check_plaintext_summary, _verify_signatures, _archive_signatures

APPLIED_LOG = "appliedExportIds.log"


# -- verification -----------------------------------------------------------------------------------


# -- apply -----------------------------------------------------------------------------------------

def applied_ids(mirror_dir: Path, export: dict) -> list[str]:
    log = Path(mirror_dir) / APPLIED_LOG
    if log.is_file():
        return [line for line in log.read_text().splitlines() if line]
    return [export["exportId"]]


def apply_delta(base_dir: Path, delta: Path, out: Path, key: str | None = None) -> dict:
    """Apply one delta to the mirror in `base_dir`, writing the new mirror to `out` atomically.
    With `key` (a cosign.pub), the delta's signature is checked first and the new mirror's
    signatures before it replaces anything (exit 4 when either is unsigned)."""
    base_dir, out = Path(base_dir), Path(out)
    base_tree = mirror_root(base_dir)
    base_export = verify_tree(base_tree)
    base_export_bytes = (base_tree / "export.json").read_bytes()
    history = applied_ids(base_tree.parent, base_export)
    root, diff = load_delta(delta)
    if key is not None:
        verify_delta_signature(root, key)
    if diff["exportId"] in history and diff["baseExportId"] != base_export["exportId"]:
        raise MirrorError(f"delta {diff['exportId']} was already applied to {base_dir} (applied: {history})")
    if diff["baseExportId"] != base_export["exportId"]:
        raise MirrorError(
            f"out-of-order delta: it applies to export {diff['baseExportId']}, but {base_dir} is at "
            f"{base_export['exportId']} (applied: {', '.join(history)}). Apply the missing deltas in "
            "order, or rebuild from the last full mirror and apply again in order.")
    if diff["baseManifestDigest"] != _sha(base_export_bytes):
        raise MirrorError(f"delta base manifest digest {diff['baseManifestDigest']} does not match "
                          f"{base_tree}/export.json ({_sha(base_export_bytes)})")
    verify_delta(root, diff)
    base_files = _files(base_tree)
    meta: dict[str, bytes] = {}
    for m in diff["metadata"]:
        if not is_metadata(m["path"]):
            raise MirrorError(f"delta metadata entry {m['path']!r} is not a metadata file")
        dictionary = None
        if m.get("patchBase"):
            src = base_tree / m["path"]
            if not src.is_file() or _sha(src.read_bytes()) != m["patchBase"]:
                raise MirrorError(f"delta patch for {m['path']} needs base file with {m['patchBase']}")
            dictionary = src.read_bytes()
        try:
            data = unpatch((root / m["patch"]).read_bytes(), dictionary)
        except Exception as exc:  # zstd errors: a corrupt patch
            raise MirrorError(f"delta patch {m['patch']} does not decode: {exc}") from None
        if _sha(data) != m["digest"] or len(data) != m["bytes"]:
            raise MirrorError(f"delta patch {m['patch']} decodes to the wrong bytes")
        meta[m["path"]] = data
    if _sha(meta.get("export.json", b"")) != diff["manifestDigest"]:
        raise MirrorError("delta carries no new export.json matching manifestDigest")
    new_export = json.loads(meta["export.json"])
    _check_diff_consistency(base_export, new_export, diff)
    by_digest = {c["digest"]: base_tree / c["path"] for c in base_export["contents"]}
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tree = tmp / "mirror"
        for c in new_export["contents"]:
            blob = root / "blobs" / "sha256" / c["digest"].split(":", 1)[1]
            src = blob if blob.is_file() else by_digest.get(c["digest"])
            if src is None:
                raise MirrorError(f"{c['path']} ({c['digest']}) is neither in the delta nor in the base")
            dest = tree / c["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        for rel, data in meta.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        if "tuf/root.json" in base_files and "tuf/root.json" in meta:
            if meta["tuf/root.json"] != base_files["tuf/root.json"].read_bytes():
                raise MirrorError("the delta changes the TUF root (new keys); a root rotation needs a new full mirror")
            verify_tuf(tree, root_bytes=base_files["tuf/root.json"].read_bytes())
        verify_tree(tree, check_tuf="tuf/root.json" not in meta or "tuf/root.json" not in base_files)
        _finish(tree, tmp, diff, history + [diff["exportId"]])
        if key is not None:
            _verify_signatures(tmp, key)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"exportId": diff["exportId"], "baseExportId": diff["baseExportId"],
            "applied": history + [diff["exportId"]], "added": len(diff["added"]),
            "changed": len(diff["changed"]), "removed": len(diff["removed"])}


def _check_diff_consistency(base: dict, new: dict, diff: dict) -> None:
    old = {c["path"]: c["digest"] for c in base["contents"]}
    cur = {c["path"]: c["digest"] for c in new["contents"]}
    added = sorted(p for p in cur if p not in old)
    changed = sorted(p for p in cur if p in old and old[p] != cur[p])
    removed = sorted(p for p in old if p not in cur)
    if ([e["path"] for e in diff["added"]], [e["path"] for e in diff["changed"]], diff["removed"]) != \
            (added, changed, removed):
        raise MirrorError("manifest.diff.json added/changed/removed do not match the base and new manifests")
    if new["exportId"] != diff["exportId"]:
        raise MirrorError("manifest.diff.json exportId does not match the new export.json")


def _finish(tree: Path, out: Path, summary_src: dict, history: list[str] | None) -> None:
    """Package the verified tree (OCI layout, tar.zst, mirror.json) and check the digests the
    producer recorded, so the result is byte-identical to its full build."""
    export = json.loads((tree / "export.json").read_bytes())
    epoch = parse_rfc3339(export["generatedAt"])
    got = package_tree(_files(tree), out / "oci", out / "mirror.tar.zst", epoch)
    if "archive" in summary_src:
        if got["archiveSha256"] != summary_src["archive"]["sha256"]:
            raise MirrorError(f"rebuilt mirror.tar.zst has sha256 {got['archiveSha256']}, the producer "
                              f"recorded {summary_src['archive']['sha256']} (different zstd version?)")
        if got["ociManifestDigest"] != summary_src["oci"]["manifestDigest"]:
            raise MirrorError("rebuilt OCI manifest differs from the one the producer recorded")
        if got["ociIndexSha256"] != summary_src["oci"]["indexSha256"]:
            raise MirrorError("rebuilt OCI index.json differs from the one the producer recorded "
                              "(signature referrer missing or different?)")
    got.update({"exportId": export["exportId"], "manifestDigest": _sha((tree / "export.json").read_bytes()),
                "rerunHash": export["rerunHash"], "sourceDateEpoch": epoch})
    (out / SUMMARY).write_bytes(canonical_json.dumps(got))
    if history is not None:
        (out / APPLIED_LOG).write_text("".join(i + "\n" for i in history))


def _swap(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# -- decrypt -----------------------------------------------------------------------------------------


def decrypt_mirror(src: Path, identity: Path, out: Path, key: str | None = None) -> dict:
    """Decrypt an encrypted mirror directory into `out` (plaintext tree, OCI layout, tar), verified.
    With `key`, the encrypted mirror's signatures are checked first. The plaintext archive and OCI
    manifest must hash to what the producer recorded in mirror.json before encrypting."""
    from stella_build.rules.formats.encryption import DecryptionError, EncryptionRecord, decrypt_tree

    tree = mirror_root(src)
    try:
        record = EncryptionRecord.from_json(json.loads((tree / ENCRYPTION_FILE).read_bytes()))
    except FileNotFoundError:
        raise MirrorError(f"{tree}: not encrypted (no {ENCRYPTION_FILE})", 2) from None
    if key is not None:
        _verify_signatures(tree.parent, key)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        plain = tmp / "mirror"
        skip = {f.encrypted_path for f in record.files} | {ENCRYPTION_FILE} | _archive_signatures()
        for rel, path in _files(tree).items():
            if rel not in skip:
                (plain / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, plain / rel)
        try:
            decrypt_tree(tree, record, identity, out_root=plain)
        except DecryptionError as exc:
            raise MirrorError(f"decryption failed: {exc}") from None
        export = verify_tree(plain)
        _finish(plain, tmp, {}, None)
        _check_plaintext_summary(tree.parent / SUMMARY, tmp / SUMMARY)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"exportId": export["exportId"], "files": len(record.files)}


