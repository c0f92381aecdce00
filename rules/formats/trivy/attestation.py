"""The signed Trivy DB's attestation of its OCI artifact, in the form `cosign verify-attestation` reads.

`manifests/provenance.json` names the files (manifests/export.json and the archive) as its subjects,
so `cosign verify-attestation <registry>/<repo>:2` cannot use it: cosign v3 (pkg/cosign/verify.go
verifyImageAttestationsSigstoreBundle) lists the image's referrers, keeps the layers it can parse as
Sigstore bundles v0.3 and verifies each with sigstore-go's `WithArtifactDigest(<image manifest
digest>)`, i.e. some in-toto subject must carry the sha256 of the artifact MANIFEST. So a signed
build also writes, as a second referrer of the DB artifact:

    in-toto Statement v1   subject [{name: the target name (`trivy-db`), digest: {sha256: <hex of the
                           artifact manifest>}}], predicateType https://slsa.dev/provenance/v1,
                           predicate = provenance.json's predicate (byte-for-byte the same object)
    DSSE envelope          payloadType application/vnd.in-toto+json, one signature without keyid
                           (signing.dsse_envelope), in a Sigstore bundle v0.3 (no tlog entries)
    referrer manifest      cosign's `attest --new-bundle-format` shape (oci.add_bundle_referrers):
                           dev.sigstore.bundle.content = dsse-envelope,
                           dev.sigstore.bundle.predicateType = https://slsa.dev/provenance/v1

The artifact manifest's digest is known from the archive's digest and size alone (`artifact_for`),
so the attestation is signed before the layout is written and `build_signed_layout` stays a pure
function of (archive digest, bundles, created): the build writes it, `stella-build verify`
recomputes it with `LayoutDigests` and compares the layout file by file.
"""
from __future__ import annotations

from typing import Any

from stella_build.rules.formats import signing
from stella_build.rules.formats.keys import PrivateKey, PublicKey
from stella_build.rules.formats.oci import (
    ANNOTATION_TITLE, BUNDLE_CONTENT_DSSE, BUNDLE_CONTENT_MESSAGE, COSIGN_SIGN_PREDICATE,
    TRIVY_ARTIFACT_TYPE, BundleReferrer, Descriptor, LayoutDigests, OciLayoutWriter, add_bundle_referrers,
)
from stella_build.rules.formats.trivy.packaging import PROFILES

PREDICATE_TYPE = signing.SLSA_PROVENANCE_V1


def artifact_for(archive_sha256: str, size: int, created: str, java: bool) -> Descriptor:
    """The descriptor of the DB artifact manifest (tag "2", "1" for Java) whose one layer is the archive
    with sha256 `archive_sha256` (64 hex) and `size` bytes, created at `created` (RFC 3339). Nothing is
    read or written. Raises OciLayoutError on a malformed digest or timestamp."""
    probe = LayoutDigests()
    names = PROFILES[java]
    layer = probe.add_known_blob("sha256:" + archive_sha256, size, names["layer"], {ANNOTATION_TITLE: names["archive"]})
    return probe.add_manifest(TRIVY_ARTIFACT_TYPE, None, [layer], created=created)


def attestation_statement(name: str, artifact: Descriptor, predicate: dict[str, Any]) -> dict[str, Any]:
    """The in-toto Statement v1 about the artifact manifest: one subject (`name`, its sha256) and the SLSA
    provenance v1 `predicate`. ValueError on an empty name or a non-object predicate."""
    return signing.in_toto_statement([(name, artifact.hex)], PREDICATE_TYPE, predicate)


def sign_attestation(name: str, artifact: Descriptor, predicate: dict[str, Any], key: PrivateKey) -> bytes:
    """Sigstore bundle v0.3 bytes (canonical JSON, deterministic: RFC 6979) with the DSSE-signed statement."""
    return signing.sign_attestation_bundle(attestation_statement(name, artifact, predicate), key)


def check_attestation(bundle: bytes, pubkey: PublicKey, *, name: str, artifact: Descriptor,
                      predicate: dict[str, Any], what: str = "attestation") -> None:
    """Verify an attestation bundle the way `cosign verify-attestation --key` does (DSSE signature,
    in-toto payload, a subject with the artifact manifest's sha256, the SLSA v1 predicateType) and, more
    strictly, that the statement is exactly the one the build signs: subject (`name`, artifact) only and
    `predicate` (the signed provenance's). Raises signing.SignatureInvalid naming what differs."""
    statement = signing.verify_dsse_bundle(bundle, pubkey, artifact_sha256=artifact.hex,
                                           predicate_type=PREDICATE_TYPE, name=what)
    if statement.get("subject") != [{"name": name, "digest": {"sha256": artifact.hex}}]:
        raise signing.SignatureInvalid(f"{what}: its subjects are not exactly the DB artifact {name}@{artifact.digest}")
    if statement.get("predicate") != predicate:
        raise signing.SignatureInvalid(f"{what}: its predicate is not the one of manifests/provenance.json")


def build_signed_layout(writer: OciLayoutWriter, layer: Descriptor, bundle: bytes, attestation: bytes | None,
                        created: str, java: bool) -> tuple[Descriptor, list[Descriptor]]:
    """The signed layout: the artifact (tagged "2"/"1"), the archive's Sigstore bundle as a referrer,
    the attestation bundle as a second referrer (when given), one referrers tag-schema index and
    index.json. `layer` must already be in `writer` (add_blob_file / add_known_blob). Without an
    attestation the bytes equal packaging.build_layout's. Returns (artifact, [referrers in that order])."""
    artifact = writer.add_manifest(TRIVY_ARTIFACT_TYPE, None, [layer], created=created)
    writer.tag(artifact, PROFILES[java]["tag"])
    items = [BundleReferrer(bundle, BUNDLE_CONTENT_MESSAGE, COSIGN_SIGN_PREDICATE)]
    if attestation is not None:
        items.append(BundleReferrer(attestation, BUNDLE_CONTENT_DSSE, PREDICATE_TYPE))
    referrers = add_bundle_referrers(writer, artifact, items, created)
    writer.write_index()
    return artifact, referrers
