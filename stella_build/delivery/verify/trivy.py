"""`stella-build verify` for the profiles whose output is not a plain JSON bundle directory.

- trivy:db / trivy:java-db (a signed build, rules/trivy/signed.py): the directory is a bundle
  (manifests/export.json lists the DB, metadata.json and the archive) plus `oci/`, which is checked
  by recomputing the signed layout from the signed archive digest and comparing every file's
  sha256; the Sigstore bundle found as the artifact's referrer must verify the layer digest, and
  the attestation referrer (rules/formats/trivy/attestation.py) must be the DSSE-signed statement
  about the artifact manifest whose predicate is manifests/provenance.json's.
- mirror:full (rules/mirror.py): the output directory is presented under bundle names
  (mirror/export.json as manifests/export.json, mirror/signatures/* as the signature files,
  mirror/<path> as the content files) so the generic checks apply; `oci/` and `mirror.json` are
  recomputed from the verified tree and compared file by file; TUF metadata is checked when present.
Messages name the real files (`show`).
"""
from __future__ import annotations

from pathlib import Path

from stella_build.engine.encode.timefmt import parse_rfc3339

from stella_build.rules.formats import signing
from stella_build.rules.formats.oci import ANNOTATION_TITLE, LayoutDigests, fallback_tag
from stella_build.rules.formats.bundle import SIGSTORE_SUFFIX
from stella_build.delivery.verify.core import (
    MANIFEST, MAX_SIGNATURE_BYTES, PROVENANCE, DirectoryView, _Bad, _strict_bundle, _Verifier,
)
from stella_build.delivery.verify.core import compare_tree, manifest_entry, OCI_DIR


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
        from stella_build.rules.formats.trivy.attestation import build_signed_layout
        from stella_build.rules.formats.trivy.packaging import PROFILES

        names = PROFILES[self.java]
        archive, bundle_file = names["archive"], names["archive"] + SIGSTORE_SUFFIX
        if not (self.has(archive) and self.has(bundle_file)):
            return  # already reported by the signature checks
        try:
            created = self.read_json(MANIFEST)["generatedAt"]
            parse_rfc3339(created)
        except (_Bad, KeyError, ValueError, TypeError, AttributeError):
            v.add("oci-layout", None, f"skipped: {MANIFEST} has no valid generatedAt")
            return
        # The layer is what the signed manifest says the archive is (not the file, which may be changed).
        digest, size = manifest_entry(self, archive) or self.digest(archive)
        expected = LayoutDigests()
        layer = expected.add_known_blob("sha256:" + digest, size, names["layer"], {ANNOTATION_TITLE: archive})
        bundle = self._referrer_bundle(v, layer, names, created)
        if bundle is None:
            try:
                bundle = self.read_limited(bundle_file, MAX_SIGNATURE_BYTES)
            except _Bad:  # already failed archive-signature; the layout then cannot match either
                bundle = b""
        attestation = self._attestation(v, layer, created)
        build_signed_layout(expected, layer, bundle, attestation, created, self.java)
        actual = {n[len(OCI_DIR):]: self.digest(n)[0] for n in self.names() if n.startswith(OCI_DIR)}
        compare_tree(v, expected.files, actual, OCI_DIR, "signed OCI layout")

    def _referrer_layer(self, layer, created: str, content: str) -> tuple:
        """(artifact descriptor, bytes of the layer of the referrer of the DB artifact whose
        dev.sigstore.bundle.content is `content`). Every JSON file is parsed within verify's limits
        (`read_json`), the bundle read only when it is signature-sized. Raises KeyError, ValueError,
        TypeError, IndexError, AttributeError, StopIteration or _Bad when it is not there."""
        from stella_build.rules.formats.oci import ANNOTATION_BUNDLE_CONTENT, TRIVY_ARTIFACT_TYPE

        probe = LayoutDigests()
        probe.add_known_blob(layer.digest, layer.size, layer.media_type, layer.annotations)
        artifact = probe.add_manifest(TRIVY_ARTIFACT_TYPE, None, [layer], created=created)

        def blob_name(descriptor) -> str:
            return OCI_DIR + "blobs/sha256/" + descriptor["digest"].split(":", 1)[1]

        index = self.read_json(OCI_DIR + "index.json")
        tag = fallback_tag(artifact.digest)
        ref_index = next(m for m in index["manifests"]
                         if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag)
        manifest = next(doc for doc in (self.read_json(blob_name(r))
                                        for r in self.read_json(blob_name(ref_index))["manifests"])
                        if doc["annotations"][ANNOTATION_BUNDLE_CONTENT] == content)
        if manifest["subject"]["digest"] != artifact.digest:
            raise _Bad("its subject is not the DB artifact")
        return artifact, self.read_limited(blob_name(manifest["layers"][0]), MAX_SIGNATURE_BYTES)

    def _readable_referrer(self, v: _Verifier, layer, created: str, content: str, check: str,
                           what: str) -> tuple | None:
        """`_referrer_layer`, or None after a failed `check` naming `what` when it is not there."""
        try:
            return self._referrer_layer(layer, created, content)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, StopIteration, _Bad) as exc:
            v.add(check, False, f"{OCI_DIR}: no readable {what} of the DB artifact ({exc!r})")
            return None

    def _attestation(self, v: _Verifier, layer, created: str) -> bytes | None:
        """The attestation bundle the layout holds as the artifact's second referrer, if it verifies:
        DSSE over the statement about the artifact manifest with provenance.json's predicate."""
        from stella_build.rules.formats.trivy.attestation import check_attestation

        found = self._readable_referrer(v, layer, created, "dsse-envelope", "oci-attestation", "attestation referrer")
        if found is None:
            return None
        artifact, data = found
        if v.key is None:
            return data
        try:
            _strict_bundle(data, v.hint, "dsseEnvelope")
            check_attestation(data, v.key, name=self.read_json(MANIFEST)["profile"]["name"], artifact=artifact,
                              predicate=self.read_json(PROVENANCE)["predicate"], what="attestation referrer")
        except (_Bad, signing.SignatureInvalid, KeyError, TypeError) as exc:
            v.add("oci-attestation", False, f"the attestation referrer in {OCI_DIR} does not verify the DB "
                  f"artifact {artifact.digest}: {exc!r}")
            return None
        v.add("oci-attestation", True, f"the attestation referrer in {OCI_DIR} attests the DB artifact "
              f"{artifact.digest} with the provenance of {PROVENANCE}")
        return data

    def _referrer_bundle(self, v: _Verifier, layer, names, created: str) -> bytes | None:
        """The Sigstore bundle the layout holds as the artifact's referrer, if it verifies the layer."""
        found = self._readable_referrer(v, layer, created, "message-signature", "oci-referrer-signature",
                                        "Sigstore bundle referrer")
        if found is None:
            return None
        _artifact, data = found
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
