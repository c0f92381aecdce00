"""`stella-build verify` for the profiles whose output is not a plain JSON bundle directory.

- trivy:db / trivy:java-db (a signed build, rules/trivy/signed.py): the directory is a bundle
  (manifests/export.json lists the DB, metadata.json and the archive) plus `oci/`, which is checked
  by recomputing the signed layout from the signed archive digest and comparing every file's
  sha256; the Sigstore bundle found as the artifact's referrer must verify the layer digest.
- mirror:full (rules/mirror.py): the output directory is presented under bundle names
  (mirror/export.json as manifests/export.json, mirror/signatures/* as the signature files,
  mirror/<path> as the content files) so the generic checks apply; `oci/` and `mirror.json` are
  recomputed from the verified tree and compared file by file; TUF metadata is checked when present.
Messages name the real files (`show`).
"""
from __future__ import annotations

import json
from pathlib import Path

from stella_build.engine.encode import canonical_json
from stella_build.engine.errors import TrustMaterialMissing
from stella_build.engine.encode.digest import sha256_hex
from stella_build.engine.encode.timefmt import parse_rfc3339, rfc3339

from . import signing
from .oci import ANNOTATION_TITLE, LayoutDigests, add_bundle_referrer, fallback_tag
from .sign_rule import PROVENANCE_DSSE, PROVENANCE_SIGSTORE, PUBLIC_KEY_FILE, SIGSTORE_SUFFIX
from .verify import (
    MANIFEST, PROVENANCE, BundleView, Check, DirectoryView, Report, _Bad, _strict_bundle, _Verifier,
    register_format,
)

OCI_DIR = "oci/"


def _compare_tree(v: _Verifier, expected: dict[str, str], actual: dict[str, str], prefix: str,
                  what: str) -> None:
    """Every file under `prefix` must be exactly the expected one (sha256 hex by relative path)."""
    bad = 0
    for rel in sorted(set(expected) | set(actual)):
        name = prefix + rel
        if rel not in actual:
            v.add("oci-layout", False, f"{name} is missing from {what}", file=name)
        elif rel not in expected:
            v.add("oci-layout", False, f"{name} is not part of {what}", file=name)
        elif actual[rel] != expected[rel]:
            v.add("oci-layout", False, f"{name} has sha256 {actual[rel]}, the {what} needs {expected[rel]}",
                  file=name)
        else:
            continue
        bad += 1
    if not bad:
        v.add("oci-layout", True, f"{prefix} is exactly the {what} ({len(expected)} files)")


def _manifest_entry(view: BundleView, path: str) -> tuple[str, int] | None:
    """(sha256 hex, size) of `path` as the (signed) manifest lists it."""
    try:
        for e in json.loads(view.read(MANIFEST))["contents"]:
            if e["path"] == path:
                return e["digest"].split(":", 1)[1], int(e["bytes"])
    except (KeyError, ValueError, TypeError, AttributeError):
        pass
    return None


# -- trivy ---------------------------------------------------------------------------------------

class TrivyView(DirectoryView):
    """A signed trivy:db / trivy:java-db output directory."""

    kind = "trivy-db"

    def __init__(self, root: Path, java: bool):
        super().__init__(root)
        self.java = java
        if java:
            self.kind = "trivy-java-db"

    def content_names(self) -> list[str]:
        return [n for n in self.names() if not n.startswith(OCI_DIR)]

    def extra_checks(self, v: _Verifier) -> None:
        from .trivy.signed import PROFILES, build_layout

        names = PROFILES[self.java]
        archive, bundle_file = names["archive"], names["archive"] + SIGSTORE_SUFFIX
        if not (self.has(archive) and self.has(bundle_file)):
            return  # already reported by the signature checks
        try:
            created = json.loads(self.read(MANIFEST))["generatedAt"]
            parse_rfc3339(created)
        except (KeyError, ValueError, TypeError):
            v.add("oci-layout", None, f"skipped: {MANIFEST} has no valid generatedAt")
            return
        # The layer is what the signed manifest says the archive is (not the file, which may be changed).
        digest, size = _manifest_entry(self, archive) or self.digest(archive)
        expected = LayoutDigests()
        layer = expected.add_known_blob("sha256:" + digest, size, names["layer"], {ANNOTATION_TITLE: archive})
        bundle = self._referrer_bundle(v, layer, names)
        build_layout(expected, layer, bundle if bundle is not None else self.read(bundle_file), created,
                     self.java)
        actual = {n[len(OCI_DIR):]: self.digest(n)[0] for n in self.names() if n.startswith(OCI_DIR)}
        _compare_tree(v, expected.files, actual, OCI_DIR, "signed OCI layout")

    def _referrer_bundle(self, v: _Verifier, layer, names) -> bytes | None:
        """The Sigstore bundle the layout holds as the artifact's referrer, if it verifies the layer."""
        from .oci import TRIVY_ARTIFACT_TYPE

        probe = LayoutDigests()
        probe.add_known_blob(layer.digest, layer.size, layer.media_type, layer.annotations)
        artifact = probe.add_manifest(TRIVY_ARTIFACT_TYPE, None, [layer],
                                      created=json.loads(self.read(MANIFEST))["generatedAt"])
        try:
            index = json.loads(self.read(OCI_DIR + "index.json"))
            tag = fallback_tag(artifact.digest)
            ref_index = next(m for m in index["manifests"]
                             if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag)
            blob = lambda d: self.read(OCI_DIR + "blobs/sha256/" + d["digest"].split(":", 1)[1])  # noqa: E731
            referrer = json.loads(blob(ref_index))["manifests"][0]
            manifest = json.loads(blob(referrer))
            if manifest["subject"]["digest"] != artifact.digest:
                raise _Bad("its subject is not the DB artifact")
            data = blob(manifest["layers"][0])
        except (KeyError, ValueError, TypeError, IndexError, StopIteration, _Bad) as exc:
            v.add("oci-referrer-signature", False, f"{OCI_DIR}: no readable Sigstore bundle referrer of "
                  f"the DB artifact {artifact.digest} ({exc!r})")
            return None
        if v.key is None:
            return data
        try:
            _strict_bundle(data, v.hint, "messageSignature")
            signing.verify_sigstore_digest(data, bytes.fromhex(layer.hex), v.key, name="referrer")
        except (_Bad, signing.SignatureInvalid) as exc:
            v.add("oci-referrer-signature", False, f"the referrer bundle in {OCI_DIR} does not verify the "
                  f"layer {layer.digest}: {exc}")
            return None
        v.add("oci-referrer-signature", True, f"the referrer bundle in {OCI_DIR} verifies the DB layer "
              f"{layer.digest} ({names['archive']})")
        return data


def _open_trivy(path: Path) -> BundleView | None:
    if not (path.is_dir() and (path / MANIFEST).is_file() and (path / "oci" / "index.json").is_file()):
        return None
    for java, archive in ((False, "db.tar.gz"), (True, "javadb.tar.gz")):
        if (path / archive).is_file():
            return TrivyView(path, java)
    return None


# -- mirror --------------------------------------------------------------------------------------

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
        from .encryption import DecryptionError, EncryptionRecord

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
        from .mirror import ARTIFACT_TYPE, MANIFEST_DIGEST_ANNOTATION, MIRROR_TAG, _media_type

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
            layers.append(expected.add_known_blob("sha256:" + digest, size, _media_type(tree),
                                                  {ANNOTATION_TITLE: tree}))
        layers.sort(key=lambda d: (d.digest, d.annotations[ANNOTATION_TITLE]))
        notes = {MANIFEST_DIGEST_ANNOTATION: "sha256:" + self.digest(MANIFEST)[0]}
        desc = expected.add_manifest(ARTIFACT_TYPE, None, layers, notes, created=rfc3339(epoch))
        expected.tag(desc, MIRROR_TAG)
        if self.has(MANIFEST + SIGSTORE_SUFFIX):  # signed: the export.json bundle is the referrer
            add_bundle_referrer(expected, desc, self.read(MANIFEST + SIGSTORE_SUFFIX), rfc3339(epoch))
        expected.write_index()
        actual = {n[len(OCI_DIR):]: self._dir.digest(n)[0] for n in self._other if n.startswith(OCI_DIR)}
        _compare_tree(v, expected.files, actual, OCI_DIR, "mirror OCI layout")
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
        from .encryption import NONCE_LEN, TAG_LEN

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
        from .mirror_apply import MirrorError, verify_tuf

        try:
            n = verify_tuf(self.root / "mirror")
            v.add("tuf", True, f"TUF metadata verifies {n} files")
        except MirrorError as exc:
            v.add("tuf", False, str(exc))


# -- mirror delta --------------------------------------------------------------------------------

def delta_report(path: Path, key: str | None, key_info: dict | None) -> Report:
    """`stella-build verify` of a mirror:delta output directory: the checks of `mirror verify`
    (structure, tombstones, blobs, OCI layout; the signature over manifest.diff.json with a key).
    Its patches need the base: `mirror apply` checks them."""
    from .mirror_apply import MirrorError, verify_delta_dir

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


register_format("trivy", _open_trivy, first=True)
register_format("mirror", _open_mirror, first=True)
