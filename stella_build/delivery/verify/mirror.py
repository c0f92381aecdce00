"""Verification of mirror:full and mirror:delta outputs, shared by `stella-build verify`,
`stella-build mirror verify|apply|decrypt|pull`.

- A mirror output directory is presented to the generic bundle checks under bundle names
  (mirror/export.json as manifests/export.json, mirror/signatures/* as the signature files,
  mirror/<path> as the content files); `oci/` and `mirror.json` are recomputed from the verified
  tree and compared file by file; TUF metadata is checked when present.
- A delta is checked on its own (structure, tombstones, blobs, OCI layout, its signature over
  manifest.diff.json); its patches need the base and are checked by `mirror apply`.
Errors are `MirrorError`s with the exit code of the CLI's table: 3 verification failed, 2 usage,
4 signature material missing.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stella_build.engine.encode import canonical_json
from stella_build.engine.encode.digest import sha256_hex
from stella_build.engine.encode.timefmt import parse_rfc3339, rfc3339
from stella_build.engine.errors import TrustMaterialMissing
from stella_build.rules.formats.bundle import PROVENANCE_DSSE, PROVENANCE_SIGSTORE, PUBLIC_KEY_FILE, SIGSTORE_SUFFIX
from stella_build.rules.formats.mirror import ENCRYPTION_FILE, is_metadata
from stella_build.rules.formats.oci import ANNOTATION_TITLE, LayoutDigests, add_bundle_referrer
from stella_build.delivery.verify.core import (
    MANIFEST, OCI_DIR, PROVENANCE, BundleView, Check, DirectoryView, Report, _Verifier, compare_tree,
    load_trusted_key, verify_view,
)


MIRROR = "mirror/"


MIRROR_ARCHIVE = "mirror.tar.zst"


MIRROR_SUMMARY = "mirror.json"


APPLIED_LOG = "appliedExportIds.log"  # rules/mirror_apply.py


ENCRYPTION_FILE_NAME = "encryption.json"  # rules/mirror.py ENCRYPTION_FILE


# bundle name → path in the mirror/ tree of the signature files (rules/mirror.py signs these).
MIRROR_SIGNED_NAMES = {
    MANIFEST + SIGSTORE_SUFFIX: "signatures/export.json" + SIGSTORE_SUFFIX,
    MIRROR_ARCHIVE + SIGSTORE_SUFFIX: "signatures/" + MIRROR_ARCHIVE + SIGSTORE_SUFFIX,
    PROVENANCE_DSSE: "signatures/provenance.dsse.json",
    PROVENANCE_SIGSTORE: "signatures/provenance.sigstore.json",
    PUBLIC_KEY_FILE: "signatures/cosign.pub",
    "signatures/manifest.sig": "signatures/manifest.sig",
    "signatures/export.sig": "signatures/export.sig",
}


_TREE_NAMES = {MANIFEST: "export.json", PROVENANCE: "provenance.json", **MIRROR_SIGNED_NAMES}


class MirrorView(BundleView):
    """A mirror:full output directory under bundle names (see the module docstring)."""

    kind = "mirror-full"

    def __init__(self, root: Path):
        super().__init__()
        self._dir = DirectoryView(root)
        self.problems = self._dir.problems
        self.display = str(root)
        self.root = root
        inverse = {tree: name for name, tree in _TREE_NAMES.items()}
        self._real: dict[str, str] = {}   # bundle name → path in the output directory
        self._content: list[str] = []
        self._meta: set[str] = set()
        self._other: list[str] = []       # oci/, mirror.json
        for rel in self._dir.names():
            if rel.startswith(MIRROR):
                inner = rel[len(MIRROR):]
                name = inverse.get(inner, inner)
                self._real[name] = rel
                if inner.startswith(("tuf/", "signatures/")) or name in _TREE_NAMES:
                    self._meta.add(name)
                else:
                    self._content.append(name)
            elif rel in (MIRROR_ARCHIVE, MIRROR_ARCHIVE + ".sha256"):
                self._real[rel] = rel
            else:
                self._other.append(rel)
        self.archives = [MIRROR_ARCHIVE] if MIRROR_ARCHIVE in self._real else []
        self._sealed = self._read_encryption()  # plaintext path → encrypted path (encrypted mirrors)

    def _read_encryption(self) -> dict[str, str]:
        """An encrypted mirror: its encrypted files and encryption.json are metadata, the plaintext
        paths they stand for are `sealed` (checked without decrypting in `_sealed_checks`)."""
        from stella_build.rules.formats.encryption import DecryptionError, EncryptionRecord

        if ENCRYPTION_FILE_NAME not in self._real:
            return {}
        try:
            record = EncryptionRecord.from_json(json.loads(self.read(ENCRYPTION_FILE_NAME)))
        except (ValueError, DecryptionError) as exc:
            self.problems.append(Check("encryption", False, f"{ENCRYPTION_FILE_NAME} is unreadable: {exc}",
                                       file=MIRROR + ENCRYPTION_FILE_NAME))
            return {}
        sealed = {f.path: f.encrypted_path for f in record.files}
        self._sizes = {f.path: f.size for f in record.files}
        for name in [ENCRYPTION_FILE_NAME, *sealed.values()]:
            if name in self._content:
                self._content.remove(name)
                self._meta.add(name)
        return sealed

    def sealed_names(self) -> set[str]:
        return set(self._sealed)

    def has(self, name: str) -> bool:
        return name in self._real

    def read(self, name: str) -> bytes:
        return self._dir.read(self._real[name])

    def digest(self, name: str) -> tuple[str, int]:
        return self._dir.digest(self._real[name])

    def names(self) -> list[str]:
        return sorted(self._real)

    def content_names(self) -> list[str]:
        return sorted(self._content)

    def metadata_names(self) -> set[str]:
        return set(self._meta)

    def show(self, name: str) -> str:
        return self._real.get(name) or (_TREE_NAMES.get(name) and MIRROR + _TREE_NAMES[name]) or (
            name if name in self._other or name.startswith(OCI_DIR) else MIRROR + name)

    def provenance_required(self) -> list[str]:
        return [MANIFEST] if self.has(MANIFEST) else []  # the archive holds the provenance: not a subject

    def subject_name(self, name: str) -> str:
        return MANIFEST if name == "export.json" else name

    def extra_checks(self, v: _Verifier) -> None:
        from stella_build.rules.formats.mirror import ARTIFACT_TYPE, MANIFEST_DIGEST_ANNOTATION, MIRROR_TAG, media_type

        try:
            export = json.loads(self.read(MANIFEST))
            listed = {e["path"]: (e["digest"].split(":", 1)[1], int(e["bytes"])) for e in export["contents"]}
            epoch = parse_rfc3339(export["generatedAt"])
        except (KeyError, ValueError, TypeError, AttributeError):
            v.add("oci-layout", None, f"skipped: {self.show(MANIFEST)} is not readable")
            return
        if "tuf/root.json" in self._real and self._sealed:
            v.add("tuf", None, "skipped: TUF targets describe the plaintext (`mirror decrypt` checks them)")
        elif "tuf/root.json" in self._real:
            self._tuf(v)
        if self._sealed:
            self._sealed_checks(v, listed)
        # The OCI artifact's layers: every mirror/ file but the signatures, content files as listed.
        expected = LayoutDigests()
        layers = []
        for name in sorted((set(self._content) | self._meta | set(listed)) - set(self._sealed)):
            tree = _TREE_NAMES.get(name, name)
            if tree.startswith("signatures/") or name in (MANIFEST + SIGSTORE_SUFFIX,):
                continue
            digest, size = listed[name] if name in listed else self.digest(name)
            layers.append(expected.add_known_blob("sha256:" + digest, size, media_type(tree),
                                                  {ANNOTATION_TITLE: tree}))
        layers.sort(key=lambda d: (d.digest, d.annotations[ANNOTATION_TITLE]))
        notes = {MANIFEST_DIGEST_ANNOTATION: "sha256:" + self.digest(MANIFEST)[0]}
        desc = expected.add_manifest(ARTIFACT_TYPE, None, layers, notes, created=rfc3339(epoch))
        expected.tag(desc, MIRROR_TAG)
        if self.has(MANIFEST + SIGSTORE_SUFFIX):  # signed: the export.json bundle is the referrer
            add_bundle_referrer(expected, desc, self.read(MANIFEST + SIGSTORE_SUFFIX), rfc3339(epoch))
        expected.write_index()
        actual = {n[len(OCI_DIR):]: self._dir.digest(n)[0] for n in self._other if n.startswith(OCI_DIR)}
        compare_tree(v, expected.files, actual, OCI_DIR, "mirror OCI layout")
        summary = canonical_json.dumps({
            "archiveSha256": self.digest(MIRROR_ARCHIVE)[0] if self.archives else None,
            "ociManifestDigest": desc.digest, "ociIndexSha256": expected.files["index.json"],
            "exportId": export.get("exportId"), "manifestDigest": "sha256:" + self.digest(MANIFEST)[0],
            "rerunHash": export.get("rerunHash"), "sourceDateEpoch": epoch})
        if MIRROR_SUMMARY not in self._other:
            v.add("mirror-summary", False, f"{MIRROR_SUMMARY} is missing", file=MIRROR_SUMMARY)
        elif self._sealed:  # it describes the plaintext packaging: what can be checked before decrypting
            try:
                got = json.loads(self._dir.read(MIRROR_SUMMARY))
                want = json.loads(summary)
                keys = ("exportId", "manifestDigest", "rerunHash", "sourceDateEpoch")
                ok = all(got.get(k) == want[k] for k in keys)
            except (ValueError, AttributeError):
                ok = False
            v.add("mirror-summary", ok, f"{MIRROR_SUMMARY} names this export (its plaintext archive and OCI "
                  "digests are checked by `mirror decrypt`)" if ok else
                  f"{MIRROR_SUMMARY} does not name this export", file=None if ok else MIRROR_SUMMARY)
        else:
            ok = self._dir.read(MIRROR_SUMMARY) == summary
            v.add("mirror-summary", ok, f"{MIRROR_SUMMARY} matches the verified mirror" if ok else
                  f"{MIRROR_SUMMARY} does not match the mirror (expected {sha256_hex(summary)})",
                  file=MIRROR_SUMMARY)
        # appliedExportIds.log: written by `mirror apply` (the history of applied deltas)
        stray = [n for n in self._other if not n.startswith(OCI_DIR) and n not in (MIRROR_SUMMARY, APPLIED_LOG)]
        for name in stray:
            v.add("layout", False, f"{name} is not part of a mirror output", file=name)

    def _sealed_checks(self, v: _Verifier, listed: dict[str, tuple[str, int]]) -> None:
        """Before decryption: every encrypted file exists with the size its plaintext entry implies
        (nonce 12 + tag 16 bytes more), and the tree is exactly the (signed) archive's content."""
        from stella_build.rules.formats.encryption import NONCE_LEN, TAG_LEN

        bad = 0
        for path, enc in sorted(self._sealed.items()):
            if path not in listed:
                v.add("encryption", False, f"{MIRROR}{ENCRYPTION_FILE_NAME} lists {path}, which "
                      f"{self.show(MANIFEST)} does not", subject=ENCRYPTION_FILE_NAME, evidence=MANIFEST)
            elif not self.has(enc):
                v.add("encryption", False, f"{MIRROR}{enc} is missing", file=MIRROR + enc)
            elif self.digest(enc)[1] != listed[path][1] + NONCE_LEN + TAG_LEN or \
                    self._sizes[path] != listed[path][1]:
                v.add("encryption", False, f"{MIRROR}{enc} has {self.digest(enc)[1]} bytes, the encryption "
                      f"of {listed[path][1]} bytes has {listed[path][1] + NONCE_LEN + TAG_LEN}",
                      file=MIRROR + enc)
            else:
                continue
            bad += 1
        if not bad:
            v.add("encryption", True, f"{len(self._sealed)} encrypted files match the sizes of their "
                  "plaintext entries")
        if self.archives:
            self._archive_is_tree(v)

    def _archive_is_tree(self, v: _Verifier) -> None:
        """Each mirror/ file (signatures aside) equals its mirror.tar.zst member, so the archive's
        signature covers the encrypted files too."""
        import hashlib
        import tarfile

        import zstandard

        members: dict[str, str] = {}
        try:
            with open(self._dir.root / MIRROR_ARCHIVE, "rb") as raw, \
                    zstandard.ZstdDecompressor().stream_reader(raw) as stream, \
                    tarfile.open(fileobj=stream, mode="r|") as tar:
                for m in tar:
                    f = tar.extractfile(m) if m.isfile() else None
                    if f is not None:
                        members[m.name] = hashlib.sha256(f.read()).hexdigest()
        except (OSError, tarfile.TarError, zstandard.ZstdError) as exc:
            v.add("archive-tree", False, f"{MIRROR_ARCHIVE} cannot be read: {exc}", file=MIRROR_ARCHIVE)
            return
        names = {self._real[n]: n for n in self._real  # real path → bundle name
                 if self._real[n].startswith(MIRROR) and not self._real[n].startswith(MIRROR + "signatures/")}
        tree = {real: self.digest(n)[0] for real, n in names.items()}
        diff = sorted(n for n in set(tree) | set(members) if tree.get(n) != members.get(n))
        for real in diff[:20]:
            if real in tree:
                v.add("archive-tree", False, f"{real} differs from its {MIRROR_ARCHIVE} member",
                      subject=names[real], evidence=MIRROR_ARCHIVE)
            else:
                v.add("archive-tree", False, f"{MIRROR_ARCHIVE} holds {real}, the tree does not",
                      file=MIRROR_ARCHIVE)
        if not diff:
            v.add("archive-tree", True, f"mirror/ is exactly the content of {MIRROR_ARCHIVE} ({len(tree)} files)")

    def _tuf(self, v: _Verifier) -> None:
        try:
            n = verify_tuf(self.root / "mirror")
            v.add("tuf", True, f"TUF metadata verifies {n} files")
        except MirrorError as exc:
            v.add("tuf", False, str(exc))


def delta_report(path: Path, key: str | None, key_info: dict | None) -> Report:
    """`stella-build verify` of a mirror:delta output directory: the checks of `mirror verify`
    (structure, tombstones, blobs, OCI layout; the signature over manifest.diff.json with a key).
    Its patches need the base: `mirror apply` checks them."""
    checks: list[Check] = []
    try:
        data = verify_delta_dir(path, key)
        checks.append(Check("delta", True, f"delta {data['baseExportId']} → {data['exportId']}: sorted lists, "
                            f"one tombstone per removal, {data['blobs']} blobs, OCI layout"))
        if key is not None:
            checks.append(Check("delta-signature", True, "delta/manifest.diff.json verifies with the key"))
    except MirrorError as exc:
        if exc.exit_code == 4:
            raise TrustMaterialMissing(str(exc), field="--key") from None
        checks.append(Check("delta", False, str(exc), file="delta/manifest.diff.json"))
    return Report(str(path), "mirror-delta", key_info, checks)


def _open_mirror(path: Path) -> BundleView | None:
    if path.is_dir() and (path / MIRROR / "export.json").is_file() and not (path / MANIFEST).is_file():
        return MirrorView(path)
    return None


SUMMARY = "mirror.json"


class MirrorError(Exception):
    """A mirror, delta or apply failure with the CLI's exit code (3 verification, 2 usage, 4 trust)
    and a machine-readable reason (default: from the exit code)."""

    _DEFAULT_REASONS = {2: "usage", 3: "verification-failed", 4: "trust-missing"}

    def __init__(self, message: str, exit_code: int = 3, reason: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason or self._DEFAULT_REASONS.get(exit_code, "failed")


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


def verify_tree(tree: Path, *, check_tuf: bool = True) -> dict:
    """Check a plaintext mirror/ tree: every content file against export.json, no stray files,
    rerunHash, provenance subject, and (when present) TUF metadata over every file. Returns export.json."""
    from stella_build.rules.formats.bundle import rerun_hash

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

    from stella_build.rules.formats.tuf import offline_updater

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

    from stella_build.rules.formats.mirror import delta_layout

    with tempfile.TemporaryDirectory() as tmp:
        delta_layout(_files(root), Path(tmp))
        expected = {rel: _sha(p.read_bytes()) for rel, p in _files(Path(tmp)).items()}
    actual = {rel: _sha(p.read_bytes()) for rel, p in _files(oci).items()}
    bad = sorted(r for r in set(expected) | set(actual) if expected.get(r) != actual.get(r))
    if bad:
        raise MirrorError(f"{oci}: the delta's OCI layout does not match delta/ ({', '.join(bad[:5])})")


def verify_delta_signature(root: Path, key: str) -> None:
    """manifest.diff.json against delta/signatures/ with the trusted public key (cosign.pub)."""
    from stella_build.rules.formats import signing
    from stella_build.rules.formats.mirror import DELTA_SIGNATURE_FILES
    from stella_build.rules.formats.keys import SigningKeyError, load_public_key, public_key_digest

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


def _archive_signatures() -> set[str]:
    """signatures/ files over mirror.tar.zst: they cover an encrypted mirror's encrypted archive,
    so a decrypted copy (whose archive is the plaintext one) leaves them out."""
    from stella_build.rules.formats.mirror import SIGNATURE_FILES

    return {SIGNATURE_FILES[r].removeprefix("mirror/") for r in ("archive_bundle", "archive_sig")}


def _decrypted_copy(tree: Path) -> bool:
    """A plaintext mirror whose (signed) provenance says it was shipped encrypted."""
    try:
        prov = json.loads((tree / "provenance.json").read_bytes())
        encrypted = "encryption" in prov["predicate"]["buildDefinition"]["externalParameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return encrypted and not (tree / ENCRYPTION_FILE).is_file()


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
        from stella_build.rules.formats.oci import verify_layout
        problems = verify_layout(oci)
        if problems:
            raise MirrorError(f"{oci}: " + "; ".join(map(str, problems[:5])))
        out["oci"] = True
    return out


def _verify_signatures(directory: Path, key: str) -> int:
    """Every signature of a signed mirror output directory, with the trusted key; returns the count."""
    needed = set(MIRROR_SIGNED_NAMES.values())
    if _decrypted_copy(directory / "mirror"):
        needed -= _archive_signatures()
    missing = [f"mirror/{n}" for n in sorted(needed) if not (directory / "mirror" / n).is_file()]
    if missing:
        raise MirrorError(f"{directory}: --key given but the mirror is not signed (missing {', '.join(missing)})", 4)
    view = MirrorView(directory)
    report = Report(str(directory), view.kind, None, verify_view(view, load_trusted_key(key)))
    if not report.ok:
        failed = report.failed()
        raise MirrorError(f"{directory}: signature verification failed: "
                          + "; ".join(f"{c.file or '-'}: {c.message}" for c in failed[:5]))
    return sum(1 for c in report.checks if c.ok and "signature" in c.name)
