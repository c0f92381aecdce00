"""Verification of mirror:full and mirror:delta outputs, shared by `stella-build verify`,
`stella-build mirror verify|apply|decrypt|pull`.

- A mirror output directory is presented to the generic bundle checks under bundle names
  (mirror/export.json as manifests/export.json, mirror/signatures/* as the signature files,
  mirror/<path> as the content files); `oci/` and `mirror.json` are recomputed from the verified
  tree and compared file by file; TUF metadata is checked when present.
- A delta is checked on its own (structure, paths, tombstones, blobs, patches present, no stray
  file, OCI layout, its signature over manifest.diff.json); its patches need the base and are
  decoded by `mirror apply`.
Everything read is untrusted (`stella_build/delivery/untrusted.py`): files are scanned without
following links (symlinks and hard links refused), JSON is read under a size cap and validated
(`mirror_schema.py`), every path from a document is checked before use, digests are streamed.
Errors are `MirrorError`s with the exit code of the CLI's table: 3 verification failed, 2 usage,
4 signature material missing, and a reason (docs/architecture.md "Errors").
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from stella_build.engine.encode import canonical_json
from stella_build.engine.encode.digest import sha256_hex
from stella_build.engine.encode.timefmt import parse_rfc3339, rfc3339
from stella_build.engine.errors import TrustMaterialMissing
from stella_build.rules.formats.bundle import PROVENANCE_DSSE, PROVENANCE_SIGSTORE, PUBLIC_KEY_FILE, SIGSTORE_SUFFIX
from stella_build.rules.formats.mirror import ENCRYPTION_FILE, is_metadata
from stella_build.rules.formats.oci import ANNOTATION_TITLE, LayoutDigests, add_bundle_referrer
from stella_build.delivery.mirror_schema import (
    DeltaManifest, ExportManifest, check_encryption, load_json, parse_json, validate,
)
from stella_build.delivery.untrusted import (
    CHUNK, MAX_JSON_BYTES, MirrorError, check_dir, check_distinct, read_capped, safe_relpath, scan_tree,
    sha256_file,
)
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
            doc = parse_json(self._read_small(ENCRYPTION_FILE_NAME), file=MIRROR + ENCRYPTION_FILE_NAME)
            check_encryption(doc, file=MIRROR + ENCRYPTION_FILE_NAME)
            record = EncryptionRecord.from_json(doc)
        except (ValueError, DecryptionError, MirrorError) as exc:
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

    def _read_small(self, name: str) -> bytes:
        """A JSON document of the view, read whole only under MAX_JSON_BYTES."""
        real = self._real.get(name, name)
        size = self._dir.digest(real)[1]
        if size > MAX_JSON_BYTES:
            raise MirrorError(f"{real} has {size} bytes, more than the {MAX_JSON_BYTES} allowed", 3, "size-limit",
                              file=real)
        return self._dir.read(real)

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
            raw = self._read_small(MANIFEST)
            export = validate(ExportManifest, parse_json(raw, file=self.show(MANIFEST)), file=self.show(MANIFEST))
            listed = {e.path: (e.digest.split(":", 1)[1], e.bytes) for e in export.contents}
            check_distinct(listed, file=self.show(MANIFEST), field="contents")
            epoch = parse_rfc3339(export.generatedAt)
            export = json.loads(raw)
        except MirrorError as exc:
            v.add("manifest-schema", False, str(exc), file=self.show(MANIFEST))
            v.add("oci-layout", None, f"skipped: {self.show(MANIFEST)} is not usable")
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
                got = parse_json(self._read_small(MIRROR_SUMMARY), file=MIRROR_SUMMARY)
                want = json.loads(summary)
                keys = ("exportId", "manifestDigest", "rerunHash", "sourceDateEpoch")
                ok = isinstance(got, dict) and all(got.get(k) == want[k] for k in keys)
            except MirrorError:
                ok = False
            v.add("mirror-summary", ok, f"{MIRROR_SUMMARY} names this export (its plaintext archive and OCI "
                  "digests are checked by `mirror decrypt`)" if ok else
                  f"{MIRROR_SUMMARY} does not name this export", file=None if ok else MIRROR_SUMMARY)
        else:
            ok = self._dir.digest(MIRROR_SUMMARY)[0] == sha256_hex(summary)  # streamed: never read whole
            v.add("mirror-summary", ok, f"{MIRROR_SUMMARY} matches the verified mirror" if ok else
                  f"{MIRROR_SUMMARY} does not match the mirror (expected {sha256_hex(summary)})",
                  file=MIRROR_SUMMARY)
        # appliedExportIds.log: written by `mirror apply` (the history of applied deltas)
        stray = [n for n in self._other if not n.startswith(OCI_DIR) and n not in (MIRROR_SUMMARY, APPLIED_LOG)]
        for name in stray:
            v.add("layout", False, f"{name} is not part of a mirror output", file=name)
        try:  # hard links (and symlinks, which the directory view reports itself) anywhere in the tree
            scan_tree(self.root)
        except MirrorError as exc:
            if exc.reason != "symlink":
                v.add("layout", False, str(exc), file=_relative(exc.file, self.root))

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
        signature covers the encrypted files too. The archive is decompressed as a stream, members
        hashed in 1 MiB chunks, and decompression stops once it passes what the tree can account
        for (its bytes plus tar headers and padding): a zstd bomb costs neither memory nor hours."""
        import tarfile

        import zstandard

        from stella_build.rules.formats.mirror import MAX_WINDOW_SIZE

        names = {self._real[n]: n for n in self._real  # real path → bundle name
                 if self._real[n].startswith(MIRROR) and not self._real[n].startswith(MIRROR + "signatures/")}
        tree = {real: self.digest(n)[0] for real, n in names.items()}
        # PAX tar: per member at most a header block, a PAX header (+ its data) and padding
        budget = sum(self.digest(n)[1] for n in names.values()) + 4096 * (len(names) + 1) + (1 << 20)
        members: dict[str, str] = {}
        try:
            with open(self._dir.root / MIRROR_ARCHIVE, "rb") as raw, \
                    zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE).stream_reader(raw) as zst, \
                    _Budget(zst, budget) as stream, \
                    tarfile.open(fileobj=stream, mode="r|") as tar:
                for m in tar:
                    f = tar.extractfile(m) if m.isfile() else None
                    if f is not None:
                        h = hashlib.sha256()
                        while chunk := f.read(CHUNK):
                            h.update(chunk)
                        members[m.name] = h.hexdigest()
        except (OSError, tarfile.TarError, zstandard.ZstdError, _OverBudget) as exc:
            v.add("archive-tree", False, f"{MIRROR_ARCHIVE} cannot be read: {exc}", file=MIRROR_ARCHIVE)
            return
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
            v.add("tuf", False, str(exc), file=_relative(exc.file, self.root))


class _OverBudget(Exception):
    pass


class _Budget:
    """A read-only stream that raises _OverBudget once more than `limit` bytes were read."""

    def __init__(self, stream, limit: int):
        self._stream, self._left = stream, limit

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n if n is not None and n >= 0 else CHUNK)
        self._left -= len(data)
        if self._left < 0:
            raise _OverBudget("it decompresses to more than the mirror tree can account for")
        return data

    def __enter__(self) -> "_Budget":
        return self

    def __exit__(self, *exc) -> None:
        return None


def _relative(file: str | None, root: Path) -> str | None:
    if file is None:
        return None
    try:
        return Path(file).relative_to(root).as_posix()
    except ValueError:
        return file


def delta_report(path: Path, key: str | None, key_info: dict | None) -> Report:
    """`stella-build verify` of a mirror:delta output directory: the checks of `mirror verify`
    (structure, paths, tombstones, blobs, patches present, OCI layout; the signature over
    manifest.diff.json with a key). Its patches need the base: `mirror apply` decodes them."""
    checks: list[Check] = []
    try:
        data = verify_delta_dir(path, key)
        checks.append(Check("delta", True, f"delta {data['baseExportId']} → {data['exportId']}: sorted lists, "
                            f"safe paths, one tombstone per removal, {data['blobs']} blobs, OCI layout"))
        if key is not None:
            checks.append(Check("delta-signature", True, "delta/manifest.diff.json verifies with the key"))
    except MirrorError as exc:
        if exc.exit_code == 4:
            raise TrustMaterialMissing(str(exc), field="--key") from None
        checks.append(Check("delta", False, str(exc), file=_relative(exc.file, Path(path)) or "delta/manifest.diff.json"))
    return Report(str(path), "mirror-delta", key_info, checks)


def _open_mirror(path: Path) -> BundleView | None:
    if path.is_dir() and (path / MIRROR / "export.json").is_file() and not (path / MANIFEST).is_file():
        return MirrorView(path)
    return None


SUMMARY = "mirror.json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _files(root: Path) -> dict[str, Path]:
    """The files of an input tree, links never followed (untrusted.scan_tree)."""
    return scan_tree(root)


def mirror_root(path: Path) -> Path:
    """The mirror/ tree of a mirror directory (or the tree itself). MirrorError exit 2 when there
    is none, exit 3 when mirror/ is a symlink."""
    path = Path(path)
    if (path / "mirror" / "export.json").is_file():
        check_dir(path / "mirror")
        return path / "mirror"
    if (path / "export.json").is_file():
        return path
    raise MirrorError("not a mirror (no mirror/export.json)", 2, "not-a-mirror", file=path)


def read_export(tree: Path, files: Mapping[str, Path] | None = None) -> tuple[bytes, dict]:
    """(bytes, parsed) of a tree's export.json: size-capped, schema-checked (safe content paths,
    strict types), no path twice. MirrorError exit 3 naming the field."""
    files = files if files is not None else {"export.json": Path(tree) / "export.json"}
    if "export.json" not in files:
        raise MirrorError(f"{tree}: export.json is missing", 3, "missing-file", file=Path(tree) / "export.json")
    data, doc = load_json(files["export.json"])
    export = validate(ExportManifest, doc, file=files["export.json"])
    check_distinct([c.path for c in export.contents], file=files["export.json"], field="contents")
    return data, doc


def verify_tree(tree: Path, *, check_tuf: bool = True) -> dict:
    """Check a plaintext mirror/ tree: no link or special file anywhere, export.json well-formed
    with safe paths, every content file against it (streamed sha256 and size), no stray files,
    rerunHash, provenance subject, and (when present) TUF metadata over every file.
    Returns export.json; MirrorError exit 3 (reasons: symlink, hardlink, unsafe-path,
    schema-invalid, digest-mismatch, stray-file, tuf-failed, …) otherwise."""
    from stella_build.rules.formats.bundle import rerun_hash

    files = scan_tree(tree)
    if ENCRYPTION_FILE in files:
        raise MirrorError(f"{tree}: the mirror is encrypted; run `stella-build mirror decrypt` first", 3,
                          "encrypted", file=files[ENCRYPTION_FILE])
    export_bytes, export = read_export(tree, files)
    contents = {c["path"]: c for c in export["contents"]}
    for rel, entry in contents.items():
        if rel not in files:
            raise MirrorError(f"{rel}: listed in export.json but missing", 3, "missing-file", file=Path(tree) / rel)
        digest, size = sha256_file(files[rel])
        if size != entry["bytes"] or digest != entry["digest"]:
            raise MirrorError(f"{rel}: sha256 {digest} ({size} bytes) does not match export.json "
                              f"({entry['digest']}, {entry['bytes']} bytes)", 3, "digest-mismatch", file=files[rel])
    stray = [r for r in files if r not in contents and not is_metadata(r)]
    if stray:
        raise MirrorError(f"{tree}: files not listed in export.json: {stray[:5]}", 3, "stray-file",
                          file=files[stray[0]])
    if export.get("rerunHash") != rerun_hash(export["contents"]):
        raise MirrorError("rerunHash does not match contents[]", 3, "digest-mismatch", file=files["export.json"],
                          field="rerunHash")
    if "provenance.json" in files:
        _, prov = load_json(files["provenance.json"])
        try:
            subj = {s["name"]: s["digest"]["sha256"] for s in prov.get("subject", [])}
        except (AttributeError, KeyError, TypeError):
            raise MirrorError("subject is malformed", 3, "schema-invalid", file=files["provenance.json"],
                              field="subject") from None
        if "sha256:" + str(subj.get("export.json", "")) != _sha(export_bytes):
            raise MirrorError("subject export.json does not match export.json", 3, "digest-mismatch",
                              file=files["provenance.json"], field="subject")
    if check_tuf and "tuf/root.json" in files:
        verify_tuf(tree, files)
    return export


_TUF_ROLES = ("root", "timestamp", "snapshot", "targets")


def verify_tuf(tree: Path, files: Mapping[str, Path] | None = None, root_bytes: bytes | None = None) -> int:
    """Verify every file against the mirror's TUF metadata with python-tuf's ngclient (offline).
    Trusts `root_bytes` (default: the mirror's own tuf/root.json). Returns the number of targets.
    Every failure of the client (signature, length, hash, expiry, malformed metadata) is a
    MirrorError exit 3, reason `tuf-failed`."""
    import tempfile

    from tuf.api.exceptions import DownloadError, RepositoryError
    from tuf.api.metadata import Metadata, Targets

    from stella_build.rules.formats.tuf import offline_updater

    files = files if files is not None else scan_tree(tree)
    tuf_dir = Path(tree) / "tuf"
    if root_bytes is None:
        if "tuf/root.json" not in files:
            raise MirrorError("tuf/root.json is missing", 3, "tuf-failed", file=tuf_dir / "root.json")
        root_bytes = read_capped(files["tuf/root.json"])
    # signatures/ is added after TUF signing (rules/mirror.py SIGNATURE_FILES): not a TUF target
    listed = {r for r in files if not r.startswith(("tuf/", "signatures/"))}
    with tempfile.TemporaryDirectory() as cache:
        try:
            updater = offline_updater(tuf_dir, tree, Path(cache), root_bytes)
            updater.refresh()
            targets = Metadata[Targets].from_file(os.path.join(cache, "metadata", "targets.json")).signed.targets
            for rel in sorted(targets):
                safe_relpath(rel, file=tuf_dir / "targets.json", field=f"signed.targets[{rel!r}]")
            if set(targets) != listed:
                raise MirrorError(f"tuf/targets.json lists {len(targets)} files, the tree has {len(listed)} "
                                  f"(differences: {sorted(set(targets) ^ listed)[:5]})", 3, "tuf-failed",
                                  file=tuf_dir / "targets.json", field="signed.targets")
            for rel in sorted(targets):
                info = updater.get_targetinfo(rel)
                with open(files[rel], "rb") as f:
                    info.verify_length_and_hashes(f)
        except (RepositoryError, DownloadError, ValueError, KeyError, TypeError) as exc:
            # RepositoryError: signatures, versions, expiry, hashes, malformed metadata
            # (DeserializationError); DownloadError: a length above what the parent role allows.
            raise MirrorError(f"TUF verification failed: {type(exc).__name__}: {exc}", 3, "tuf-failed",
                              file=tuf_dir) from None
    return len(targets)


def tuf_versions(meta: Mapping[str, bytes], *, where: str | Path) -> dict[str, int]:
    """{role: version} of the TUF metadata files in `meta` ({"tuf/<role>.json": bytes}), parsed
    with python-tuf (signatures are checked elsewhere, by verify_tuf)."""
    from tuf.api.metadata import Metadata

    out = {}
    for role in _TUF_ROLES:
        data = meta.get(f"tuf/{role}.json")
        if data is None:
            continue
        try:
            out[role] = Metadata.from_bytes(data).signed.version
        except Exception as exc:  # noqa: BLE001 - python-tuf raises several types for bad metadata
            raise MirrorError(f"tuf/{role}.json is not TUF metadata: {type(exc).__name__}: {exc}", 3, "tuf-failed",
                              file=Path(where) / f"tuf/{role}.json") from None
    return out


# -- deltas --------------------------------------------------------------------------------------

def delta_root(path: Path) -> Path:
    """The delta/ directory of a delta output directory (or `path` itself when it is one);
    MirrorError exit 2 when there is no manifest.diff.json, 3 when delta/ is a symlink."""
    path = Path(path)
    root = path / "delta" if os.path.lexists(path / "delta" / "manifest.diff.json") else path
    if not os.path.lexists(root / "manifest.diff.json"):
        raise MirrorError("not a mirror delta (no manifest.diff.json)", 2, "not-a-delta", file=path)
    if root != path:
        check_dir(root)
    return root


def load_delta(path: Path, data: bytes | None = None) -> tuple[Path, dict]:
    """(the delta/ directory, manifest.diff.json) of a delta output directory (or of delta/
    itself). manifest.diff.json (or `data`, its bytes as already verified by
    verify_delta_signature) is read under MAX_JSON_BYTES and validated (`DeltaManifest`: strict
    types, safe paths, metadata patches named `patches/<path>.zst`, no path twice) before any
    value of it is used. MirrorError exit 2 when there is no delta, 3 when it is malformed."""
    root = delta_root(path)
    diff_path = root / "manifest.diff.json"
    doc = parse_json(data, file=diff_path) if data is not None else load_json(diff_path)[1]
    diff = validate(DeltaManifest, doc, file=diff_path)
    for i, m in enumerate(diff.metadata):
        if m.patch != f"patches/{m.path}.zst":
            raise MirrorError(f"metadata[{i}].patch is {m.patch!r}, not patches/{m.path}.zst", 3, "unsafe-path",
                              file=diff_path, field=f"metadata[{i}].patch")
    check_distinct([m.path for m in diff.metadata], file=diff_path, field="metadata")
    check_distinct([e.path for e in diff.added] + [e.path for e in diff.changed] + list(diff.removed),
                   file=diff_path, field="added/changed/removed")
    return root, doc


def verify_delta(root: Path, diff: dict, files: Mapping[str, Path] | None = None) -> None:
    """A delta on its own (`diff` as load_delta returns it): no link or special file, sorted lists,
    one tombstone per removal, every blob named by an added or changed entry and hashing to its
    name and size, every metadata patch present, no other file in delta/, and, when the delta has
    one, its OCI layout exactly as the producer writes it."""
    from stella_build.rules.formats.mirror import DELTA_SIGNATURE_FILES

    files = files if files is not None else scan_tree(root)
    where = root / "manifest.diff.json"
    for key in ("added", "changed"):
        paths = [e["path"] for e in diff[key]]
        if paths != sorted(set(paths)):
            raise MirrorError(f"{key} is not sorted by path", 3, "schema-invalid", file=where, field=key)
    if diff["removed"] != sorted(set(diff["removed"])):
        raise MirrorError("removed is not sorted", 3, "schema-invalid", file=where, field="removed")
    tomb = [t["path"] for t in diff["tombstones"]]
    if sorted(tomb) != diff["removed"]:
        missing = sorted(set(diff["removed"]) - set(tomb))
        raise MirrorError(f"removals without exactly one tombstone each (missing for {missing[:5]}); refusing "
                          "the delta", 3, "tombstone-missing", file=where, field="tombstones")
    sizes = {e["digest"]: e["bytes"] for e in diff["added"] + diff["changed"]}
    expected = {"manifest.diff.json"} | {m["patch"] for m in diff["metadata"]}
    expected |= {path.removeprefix("delta/") for path in DELTA_SIGNATURE_FILES.values()}
    for i, digest in enumerate(diff["blobs"]):
        rel = "blobs/sha256/" + digest.split(":", 1)[1]
        expected.add(rel)
        if digest not in sizes:
            raise MirrorError(f"blob {digest} is not the content of any added or changed file", 3, "stray-file",
                              file=where, field=f"blobs[{i}]")
        if rel not in files:
            raise MirrorError(f"blob {digest} is missing", 3, "missing-file", file=root / rel)
        got, size = sha256_file(files[rel])
        if got != digest or size != sizes[digest]:
            raise MirrorError(f"blob {digest} is corrupt (sha256 {got}, {size} bytes; expected {sizes[digest]})",
                              3, "digest-mismatch", file=files[rel])
    for i, m in enumerate(diff["metadata"]):
        if m["patch"] not in files:
            raise MirrorError(f"patch {m['patch']} is missing", 3, "missing-file", file=root / m["patch"],
                              field=f"metadata[{i}].patch")
    from stella_build.delivery.mirror_blob_patch import check_blob_patches  # DB archives sent as patches
    expected |= check_blob_patches(root, diff, files)
    stray = sorted(set(files) - expected)
    if stray:
        raise MirrorError(f"files that manifest.diff.json does not list: {stray[:5]}", 3, "stray-file",
                          file=files[stray[0]])
    oci = root.parent / "oci"
    if root.name == "delta" and (oci / "index.json").is_file():
        _verify_delta_layout(root, oci, files)


def _verify_delta_layout(root: Path, oci: Path, files: Mapping[str, Path]) -> None:
    """The delta's oci/ must be exactly the layout rebuilt from delta/ (file by file)."""
    import tempfile

    from stella_build.rules.formats.mirror import delta_layout

    with tempfile.TemporaryDirectory() as tmp:
        delta_layout(dict(files), Path(tmp))
        expected = {rel: sha256_file(p)[0] for rel, p in scan_tree(Path(tmp)).items()}
    actual = {rel: sha256_file(p)[0] for rel, p in scan_tree(oci).items()}
    bad = sorted(r for r in set(expected) | set(actual) if expected.get(r) != actual.get(r))
    if bad:
        raise MirrorError(f"{oci}: the delta's OCI layout does not match delta/ ({', '.join(bad[:5])})", 3,
                          "oci-layout-mismatch", file=oci / bad[0])


_SIGNATURE_CAP = 16 << 20  # a Sigstore bundle, a .sig or a cosign.pub is a few KiB


def verify_delta_signature(root: Path, key: str) -> bytes:
    """manifest.diff.json against delta/signatures/ with the trusted public key (cosign.pub), before
    anything parses it; returns the verified bytes (parse those, not the file again)."""
    from stella_build.rules.formats.mirror import DELTA_SIGNATURE_FILES

    names = {role: root / path.removeprefix("delta/") for role, path in DELTA_SIGNATURE_FILES.items()}
    return verify_manifest_signature(root / "manifest.diff.json", names, key, "the delta")


def verify_manifest_signature(manifest: Path, names: Mapping[str, Path], key: str, what: str, *,
                              cap: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of `manifest` once its Sigstore bundle (`names["manifest_bundle"]`) and, when
    present, its legacy .sig (`manifest_sig`) verify with the trusted public key file `key`, and a
    shipped cosign.pub (`public_key`), when present, is that key. Signed manifests of mirror deltas
    and Trivy DB patches (rules/signing.py roles). MirrorError: exit 4 `signature-missing` when
    `what` is not signed, exit 4 for an unusable `key`, exit 3 `signature-invalid` otherwise."""
    from stella_build.rules.formats import signing
    from stella_build.rules.formats.keys import SigningKeyError, load_public_key, public_key_digest

    if not names["manifest_bundle"].is_file():  # the legacy .sig and cosign.pub are checked when present
        raise MirrorError(f"--key given but {what} is not signed (missing {names['manifest_bundle']})", 4,
                          "signature-missing", file=names["manifest_bundle"], field="--key")
    try:
        pub = load_public_key(Path(key).read_bytes(), what=key)
    except (OSError, SigningKeyError) as exc:
        raise MirrorError(f"cannot use the public key {key}: {exc}", 4, "trust-missing", file=key,
                          field="--key") from None
    if os.path.lexists(names["public_key"]):
        try:
            shipped = load_public_key(read_capped(names["public_key"], _SIGNATURE_CAP), what=str(names["public_key"]))
        except SigningKeyError as exc:
            raise MirrorError(str(exc), 3, "signature-invalid", file=names["public_key"]) from None
        if public_key_digest(shipped) != public_key_digest(pub):
            raise MirrorError(f"{names['public_key']} is not the trusted key {key} (sha256 "
                              f"{public_key_digest(shipped)}; trusted {public_key_digest(pub)}): signed by "
                              "another key, or the file was changed. Check that --key is the publisher's "
                              "cosign.pub; do not use this one unless its publisher confirms it",
                              3, "signature-invalid", file=names["public_key"])
    data = read_capped(manifest, cap)
    try:
        signing.verify_sigstore_bundle(read_capped(names["manifest_bundle"], _SIGNATURE_CAP), data, pub,
                                       name=names["manifest_bundle"].name)
        if os.path.lexists(names["manifest_sig"]):
            signing.verify_legacy_signature(read_capped(names["manifest_sig"], _SIGNATURE_CAP), data, pub,
                                            name=names["manifest_sig"].name)
    except signing.SignatureInvalid as exc:
        raise MirrorError(f"{what}: signature of {manifest.name} does not verify: {exc}", 3, "signature-invalid",
                          file=names["manifest_bundle"]) from None
    return data


def _archive_signatures() -> set[str]:
    """signatures/ files over mirror.tar.zst: they cover an encrypted mirror's encrypted archive,
    so a decrypted copy (whose archive is the plaintext one) leaves them out."""
    from stella_build.rules.formats.mirror import SIGNATURE_FILES

    return {SIGNATURE_FILES[r].removeprefix("mirror/") for r in ("archive_bundle", "archive_sig")}


def _decrypted_copy(tree: Path) -> bool:
    """A plaintext mirror whose (signed) provenance says it was shipped encrypted."""
    try:
        prov = json.loads(read_capped(tree / "provenance.json"))
        encrypted = "encryption" in prov["predicate"]["buildDefinition"]["externalParameters"]
    except (MirrorError, ValueError, KeyError, TypeError):
        return False
    return encrypted and not (tree / ENCRYPTION_FILE).is_file()


def is_delta(path: Path) -> bool:
    path = Path(path)
    return (path / "delta" / "manifest.diff.json").is_file() or (path / "manifest.diff.json").is_file()


def verify_delta_dir(path: Path, key: str | None = None) -> dict[str, Any]:
    """Verify a delta on its own (no base needed): structure, paths, blobs, patches present, OCI
    layout, and with `key` the signature over manifest.diff.json. Patches are decoded when it is
    applied."""
    root = delta_root(path)
    verified = None
    if key is not None:  # first: an unsigned delta is exit 4 whatever else is wrong with it
        verified = verify_delta_signature(root, key)
    root, diff = load_delta(path, verified)
    verify_delta(root, diff)
    return {"kind": "delta", "exportId": diff["exportId"], "baseExportId": diff["baseExportId"],
            "blobs": len(diff["blobs"]), "oci": (root.parent / "oci" / "index.json").is_file(),
            "signed": key is not None}


def _check_plaintext_summary(recorded: Path, rebuilt: Path) -> None:
    """An encrypted mirror's mirror.json describes its plaintext packaging: the decrypted rebuild
    must reproduce the archive and the OCI artifact manifest exactly."""
    from stella_build.delivery.mirror_schema import MirrorSummary

    if not recorded.is_file():
        return
    want = validate(MirrorSummary, load_json(recorded)[1], file=recorded).model_dump()
    got = json.loads(rebuilt.read_bytes())
    for field in ("archiveSha256", "ociManifestDigest", "manifestDigest"):
        if want.get(field) != got.get(field):
            raise MirrorError(f"decrypted mirror: {field} is {got.get(field)}, the producer recorded "
                              f"{want.get(field)}", 3, "digest-mismatch", file=recorded, field=field)


def _view_checks(view: MirrorView, key) -> list[Check]:
    """verify_view (verify/core.py) over a mirror; a parser error escaping it on hostile signature
    or manifest bytes is a failed verification, not a traceback."""
    try:
        return verify_view(view, key)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return [Check("signatures" if key is not None else "contents", False,
                      f"unreadable: {type(exc).__name__}: {exc}")]


_VIEW_REASONS = {"oci-layout": "oci-layout-mismatch", "layout": "stray-file", "manifest-schema": "schema-invalid",
                 "tuf": "tuf-failed"}


def verify_mirror(path: Path, key: str | None = None) -> dict[str, Any]:
    """Verify a mirror directory: its tree (verify_tree), and for an output directory also what
    `stella-build verify` checks besides signatures (oci/ file by file against the layout the tree
    makes, mirror.json, no stray file); with `key` (a cosign.pub) its signatures in
    mirror/signatures/ too (exit 4 when a signature file is missing, 3 when one does not verify)."""
    path = Path(path)
    tree = mirror_root(path)
    export = verify_tree(tree)
    out = {"kind": "mirror", "exportId": export["exportId"], "files": len(export["contents"]),
           "tuf": (tree / "tuf" / "root.json").is_file()}
    if key is not None:
        out["signatures"] = _verify_signatures(tree.parent, key)  # the view's checks, with the key
    elif tree == path / "mirror":
        failed = [c for c in _view_checks(MirrorView(path), None) if c.ok is False]
        if failed:
            raise MirrorError("; ".join(f"{c.file or '-'}: {c.message}" for c in failed[:5]), 3,
                              _VIEW_REASONS.get(failed[0].name, "digest-mismatch"),
                              file=path / failed[0].file if failed[0].file else path)
    oci = tree.parent / "oci"
    if oci.is_dir():
        from stella_build.rules.formats.oci import verify_layout
        scan_tree(oci)  # no links in the layout either
        try:
            problems = verify_layout(oci)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError) as exc:
            problems = [f"unreadable ({type(exc).__name__})"]
        if problems:
            raise MirrorError(f"{oci}: " + "; ".join(map(str, problems[:5])), 3, "oci-layout-mismatch", file=oci)
        out["oci"] = True
    return out


def _verify_signatures(directory: Path, key: str) -> int:
    """Every signature of a signed mirror output directory, with the trusted key; returns the count."""
    needed = set(MIRROR_SIGNED_NAMES.values())
    if _decrypted_copy(directory / "mirror"):
        needed -= _archive_signatures()
    missing = [f"mirror/{n}" for n in sorted(needed) if not (directory / "mirror" / n).is_file()]
    if missing:
        raise MirrorError(f"{directory}: --key given but the mirror is not signed (missing {', '.join(missing)})", 4,
                          "signature-missing", file=directory / missing[0])
    view = MirrorView(directory)
    report = Report(str(directory), view.kind, None, _view_checks(view, load_trusted_key(key)))
    if not report.ok:
        failed = report.failed()
        reason = "signature-invalid" if any("signature" in c.name for c in failed) else "verification-failed"
        raise MirrorError(f"{directory}: signature verification failed: "
                          + "; ".join(f"{c.file or '-'}: {c.message}" for c in failed[:5]), 3, reason,
                          file=directory / failed[0].file if failed[0].file else directory)
    return sum(1 for c in report.checks if c.ok and "signature" in c.name)
