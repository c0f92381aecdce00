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

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from stella_build.engine.encode import canonical_json
from stella_build.engine.encode.timefmt import parse_rfc3339

from .mirror import ENCRYPTION_FILE, is_metadata, package_tree
from .mirror_delta import unpatch

APPLIED_LOG = "appliedExportIds.log"
SUMMARY = "mirror.json"


class MirrorError(Exception):
    def __init__(self, message: str, exit_code: int = 3):
        super().__init__(message)
        self.exit_code = exit_code


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def mirror_root(path: Path) -> Path:
    """The mirror/ tree of a mirror directory (or the tree itself)."""
    path = Path(path)
    if (path / "mirror" / "export.json").is_file():
        return path / "mirror"
    if (path / "export.json").is_file():
        return path
    raise MirrorError(f"{path}: not a mirror (no mirror/export.json)", 2)


# -- verification -----------------------------------------------------------------------------------

def verify_tree(tree: Path, *, check_tuf: bool = True) -> dict:
    """Check a plaintext mirror/ tree: every content file against export.json, no stray files,
    rerunHash, provenance subject, and (when present) TUF metadata over every file. Returns export.json."""
    from .json_bundle import rerun_hash

    files = _files(tree)
    if ENCRYPTION_FILE in files:
        raise MirrorError(f"{tree}: the mirror is encrypted; run `stella-build mirror decrypt` first")
    try:
        export_bytes = files["export.json"].read_bytes()
        export = json.loads(export_bytes)
        contents = {c["path"]: c for c in export["contents"]}
    except (KeyError, ValueError, TypeError) as exc:
        raise MirrorError(f"{tree}/export.json: missing or malformed ({exc})") from None
    for rel, entry in contents.items():
        if rel not in files:
            raise MirrorError(f"{tree}/{rel}: listed in export.json but missing")
        data = files[rel].read_bytes()
        if len(data) != entry["bytes"] or _sha(data) != entry["digest"]:
            raise MirrorError(f"{tree}/{rel}: sha256 {_sha(data)} ({len(data)} bytes) does not match "
                              f"export.json ({entry['digest']}, {entry['bytes']} bytes)")
    stray = [r for r in files if r not in contents and not is_metadata(r)]
    if stray:
        raise MirrorError(f"{tree}: files not listed in export.json: {stray[:5]}")
    if export.get("rerunHash") != rerun_hash(export["contents"]):
        raise MirrorError(f"{tree}/export.json: rerunHash does not match contents[]")
    if "provenance.json" in files:
        prov = json.loads(files["provenance.json"].read_bytes())
        subj = {s["name"]: s["digest"]["sha256"] for s in prov.get("subject", [])}
        if "sha256:" + subj.get("export.json", "") != _sha(export_bytes):
            raise MirrorError(f"{tree}/provenance.json: subject export.json does not match export.json")
    if check_tuf and "tuf/root.json" in files:
        verify_tuf(tree, files)
    return export


def verify_tuf(tree: Path, files: dict[str, Path] | None = None, root_bytes: bytes | None = None) -> int:
    """Verify every file against the mirror's TUF metadata with python-tuf's ngclient (offline).
    Trusts `root_bytes` (default: the mirror's own tuf/root.json). Returns the number of targets."""
    import tempfile

    from tuf.api.exceptions import RepositoryError
    from tuf.api.metadata import Metadata, Targets

    from .tuf_repo import offline_updater

    files = files or _files(tree)
    root_bytes = root_bytes or files["tuf/root.json"].read_bytes()
    # signatures/ is added after TUF signing (rules/mirror.py SIGNATURE_FILES): not a TUF target
    listed = {r for r in files if not r.startswith(("tuf/", "signatures/"))}
    with tempfile.TemporaryDirectory() as cache:
        try:
            updater = offline_updater(tree / "tuf", tree, Path(cache), root_bytes)
            updater.refresh()
            targets = Metadata[Targets].from_file(os.path.join(cache, "metadata", "targets.json")).signed.targets
            if set(targets) != listed:
                raise MirrorError(f"{tree}/tuf/targets.json lists {len(targets)} files, the tree has "
                                  f"{len(listed)} (differences: {sorted(set(targets) ^ listed)[:5]})")
            for rel in sorted(targets):
                info = updater.get_targetinfo(rel)
                with open(files[rel], "rb") as f:
                    info.verify_length_and_hashes(f)
        except RepositoryError as exc:
            raise MirrorError(f"{tree}: TUF verification failed: {type(exc).__name__}: {exc}") from None
    return len(targets)


def load_delta(path: Path) -> tuple[Path, dict]:
    path = Path(path)
    root = path / "delta" if (path / "delta" / "manifest.diff.json").is_file() else path
    try:
        diff = json.loads((root / "manifest.diff.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise MirrorError(f"{path}: not a mirror delta (manifest.diff.json: {exc})", 2) from None
    return root, diff


def verify_delta(root: Path, diff: dict) -> None:
    """Structure of a delta: sorted lists, one tombstone per removal, blobs that hash to their names,
    and, when the delta has one, its OCI layout exactly as the producer writes it."""
    for key in ("baseExportId", "baseManifestDigest", "exportId", "manifestDigest", "added", "changed",
                "removed", "tombstones", "metadata", "blobs"):
        if key not in diff:
            raise MirrorError(f"{root}/manifest.diff.json: missing {key!r}")
    for key in ("added", "changed"):
        paths = [e["path"] for e in diff[key]]
        if paths != sorted(set(paths)):
            raise MirrorError(f"{root}/manifest.diff.json: {key} is not sorted by path")
    if diff["removed"] != sorted(set(diff["removed"])):
        raise MirrorError(f"{root}/manifest.diff.json: removed is not sorted")
    tomb = [t.get("path") for t in diff["tombstones"]]
    if sorted(tomb) != diff["removed"]:
        missing = sorted(set(diff["removed"]) - set(tomb))
        raise MirrorError(f"{root}/manifest.diff.json: removals without exactly one tombstone each "
                          f"(missing for {missing[:5]}); refusing the delta")
    for digest in diff["blobs"]:
        path = root / "blobs" / "sha256" / digest.split(":", 1)[1]
        if not path.is_file() or _sha(path.read_bytes()) != digest:
            raise MirrorError(f"{root}: blob {digest} missing or corrupt")
    oci = root.parent / "oci"
    if root.name == "delta" and (oci / "index.json").is_file():
        _verify_delta_layout(root, oci)


def _verify_delta_layout(root: Path, oci: Path) -> None:
    """The delta's oci/ must be exactly the layout rebuilt from delta/ (file by file)."""
    import tempfile

    from .mirror_delta import delta_layout

    with tempfile.TemporaryDirectory() as tmp:
        delta_layout(_files(root), Path(tmp))
        expected = {rel: _sha(p.read_bytes()) for rel, p in _files(Path(tmp)).items()}
    actual = {rel: _sha(p.read_bytes()) for rel, p in _files(oci).items()}
    bad = sorted(r for r in set(expected) | set(actual) if expected.get(r) != actual.get(r))
    if bad:
        raise MirrorError(f"{oci}: the delta's OCI layout does not match delta/ ({', '.join(bad[:5])})")


def verify_delta_signature(root: Path, key: str) -> None:
    """manifest.diff.json against delta/signatures/ with the trusted public key (cosign.pub)."""
    from . import signing
    from .mirror_delta import DELTA_SIGNATURE_FILES
    from .signing_keys import SigningKeyError, load_public_key, public_key_digest

    names = {role: root / path.removeprefix("delta/") for role, path in DELTA_SIGNATURE_FILES.items()}
    if not names["manifest_bundle"].is_file():  # the legacy .sig and cosign.pub are checked when present
        raise MirrorError(f"{root}: --key given but the delta is not signed (missing {names['manifest_bundle']})", 4)
    try:
        pub = load_public_key(Path(key).read_bytes(), what=key)
    except (OSError, SigningKeyError) as exc:
        raise MirrorError(f"cannot use the public key {key}: {exc}", 4) from None
    if names["public_key"].is_file():
        try:
            shipped = load_public_key(names["public_key"].read_bytes(), what=str(names["public_key"]))
        except SigningKeyError as exc:
            raise MirrorError(str(exc)) from None
        if public_key_digest(shipped) != public_key_digest(pub):
            raise MirrorError(f"{names['public_key']} is not the trusted key {key}")
    diff = (root / "manifest.diff.json").read_bytes()
    try:
        signing.verify_sigstore_bundle(names["manifest_bundle"].read_bytes(), diff, pub,
                                       name=names["manifest_bundle"].name)
        if names["manifest_sig"].is_file():
            signing.verify_legacy_signature(names["manifest_sig"].read_bytes(), diff, pub,
                                            name=names["manifest_sig"].name)
    except signing.SignatureInvalid as exc:
        raise MirrorError(f"{root}: delta signature does not verify: {exc}") from None


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

def _archive_signatures() -> set[str]:
    """signatures/ files over mirror.tar.zst: they cover an encrypted mirror's encrypted archive,
    so a decrypted copy (whose archive is the plaintext one) leaves them out."""
    from .mirror import SIGNATURE_FILES

    return {SIGNATURE_FILES[r].removeprefix("mirror/") for r in ("archive_bundle", "archive_sig")}


def _decrypted_copy(tree: Path) -> bool:
    """A plaintext mirror whose (signed) provenance says it was shipped encrypted."""
    try:
        prov = json.loads((tree / "provenance.json").read_bytes())
        encrypted = "encryption" in prov["predicate"]["buildDefinition"]["externalParameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return encrypted and not (tree / ENCRYPTION_FILE).is_file()


def decrypt_mirror(src: Path, identity: Path, out: Path, key: str | None = None) -> dict:
    """Decrypt an encrypted mirror directory into `out` (plaintext tree, OCI layout, tar), verified.
    With `key`, the encrypted mirror's signatures are checked first. The plaintext archive and OCI
    manifest must hash to what the producer recorded in mirror.json before encrypting."""
    from .encryption import DecryptionError, EncryptionRecord, decrypt_tree

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


def is_delta(path: Path) -> bool:
    path = Path(path)
    return (path / "delta" / "manifest.diff.json").is_file() or (path / "manifest.diff.json").is_file()


def verify_delta_dir(path: Path, key: str | None = None) -> dict[str, Any]:
    """Verify a delta on its own (no base needed): structure, blobs, OCI layout, and with `key`
    the signature over manifest.diff.json. Patches are checked when it is applied."""
    root, diff = load_delta(path)
    if key is not None:  # first: an unsigned delta is exit 4 whatever else is wrong with it
        verify_delta_signature(root, key)
    verify_delta(root, diff)
    return {"kind": "delta", "exportId": diff["exportId"], "baseExportId": diff["baseExportId"],
            "blobs": len(diff["blobs"]), "oci": (root.parent / "oci" / "index.json").is_file(),
            "signed": key is not None}


def _check_plaintext_summary(recorded: Path, rebuilt: Path) -> None:
    """An encrypted mirror's mirror.json describes its plaintext packaging: the decrypted rebuild
    must reproduce the archive and the OCI artifact manifest exactly."""
    if not recorded.is_file():
        return
    want, got = json.loads(recorded.read_bytes()), json.loads(rebuilt.read_bytes())
    for field in ("archiveSha256", "ociManifestDigest", "manifestDigest"):
        if want.get(field) != got.get(field):
            raise MirrorError(f"decrypted mirror: {field} is {got.get(field)}, the producer recorded "
                              f"{want.get(field)} in {recorded}")


def verify_mirror(path: Path, key: str | None = None) -> dict[str, Any]:
    """Verify a mirror directory; with `key` (a cosign.pub) also its signatures in mirror/signatures/
    (rules/verify.py, exit 4 when a signature file is missing, 3 when one does not verify)."""
    tree = mirror_root(path)
    export = verify_tree(tree)
    out = {"kind": "mirror", "exportId": export["exportId"], "files": len(export["contents"]),
           "tuf": (tree / "tuf" / "root.json").is_file()}
    if key is not None:
        out["signatures"] = _verify_signatures(tree.parent, key)
    oci = tree.parent / "oci"
    if oci.is_dir():
        from .oci import verify_layout
        problems = verify_layout(oci)
        if problems:
            raise MirrorError(f"{oci}: " + "; ".join(map(str, problems[:5])))
        out["oci"] = True
    return out


def _verify_signatures(directory: Path, key: str) -> int:
    """Every signature of a signed mirror output directory, with the trusted key; returns the count."""
    from .verify import verify_bundle
    from .verify_profiles import MIRROR_SIGNED_NAMES

    needed = set(MIRROR_SIGNED_NAMES.values())
    if _decrypted_copy(directory / "mirror"):
        needed -= _archive_signatures()
    missing = [f"mirror/{n}" for n in sorted(needed) if not (directory / "mirror" / n).is_file()]
    if missing:
        raise MirrorError(f"{directory}: --key given but the mirror is not signed (missing {', '.join(missing)})", 4)
    report = verify_bundle(directory, key=key)
    if not report.ok:
        failed = report.failed()
        raise MirrorError(f"{directory}: signature verification failed: "
                          + "; ".join(f"{c.file or '-'}: {c.message}" for c in failed[:5]))
    return sum(1 for c in report.checks if c.ok and "signature" in c.name)
