"""The signed Trivy DB's attestation of its OCI artifact (rules/formats/trivy/attestation.py): the
in-toto statement about the artifact MANIFEST (what `cosign verify-attestation IMAGE` checks), its
referrer in cosign v3's shape next to the archive's signature, and `stella-build verify` checking it.

The layout functions are tested on small bytes; one signed trivy:db build (module fixture, ~3 s)
shows the build's bytes; cosign itself runs in tests/interop/test_service_registry.py.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stella_build.delivery.verify import verify_bundle
from stella_build.rules.formats import signing
from stella_build.rules.formats.keys import load_private_key, load_public_key
from stella_build.rules.formats.oci import (
    ANNOTATION_BUNDLE_CONTENT, ANNOTATION_BUNDLE_PREDICATE, ANNOTATION_CREATED, ANNOTATION_TITLE,
    BUNDLE_MEDIA_TYPE, LayoutDigests, OciLayoutReader, OciLayoutWriter, add_bundle_referrer, fallback_tag,
    verify_layout,
)
from stella_build.rules.formats.trivy.attestation import (
    artifact_for, attestation_statement, build_signed_layout, check_attestation, sign_attestation,
)
from stella_build.rules.formats.trivy.packaging import PROFILES, build_layout

from tests.conftest import make_workspace, run_cli
from tests.signed_bundle import PASSWORD, write_public_test_keys

CREATED = "2025-01-01T00:00:00Z"
ARCHIVE = b"not really a tar.gz, but bytes are bytes" * 100
PREDICATE = {"buildDefinition": {"buildType": "https://stella-build.dev/buildtypes/trivy-db/v1",
                                 "externalParameters": {"target": "//profiles:trivy-db"}},
             "runDetails": {"builder": {"id": "https://stella-build.dev/builder"}}}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_path, pub_path = write_public_test_keys(tmp_path_factory.mktemp("keys"))
    return {"key": load_private_key(key_path.read_bytes(), PASSWORD.encode()),
            "pub": load_public_key(pub_path.read_bytes()), "key_path": key_path, "pub_path": pub_path}


def _layout(root: Path, attestation: bytes | None, *, java: bool = False, bundle: bytes = b'{"sig":1}'):
    writer = OciLayoutWriter(root)
    names = PROFILES[java]
    layer = writer.add_blob(ARCHIVE, names["layer"], {ANNOTATION_TITLE: names["archive"]})
    artifact, referrers = build_signed_layout(writer, layer, bundle, attestation, CREATED, java)
    return writer, layer, artifact, referrers


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- layout ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("java", [False, True])
def test_without_attestation_the_layout_is_the_previous_signed_layout(tmp_path, java):
    """build_signed_layout(attestation=None) == packaging.build_layout, byte for byte (so add_bundle_referrer,
    now written through add_bundle_referrers, keeps the mirror's and older layouts' digests)."""
    _layout(tmp_path / "new", None, java=java)
    old = OciLayoutWriter(tmp_path / "old")
    names = PROFILES[java]
    layer = old.add_blob(ARCHIVE, names["layer"], {ANNOTATION_TITLE: names["archive"]})
    build_layout(old, layer, b'{"sig":1}', CREATED, java)
    assert _files(tmp_path / "new") == _files(tmp_path / "old")
    # oci-layout, index.json and 6 blobs: layer, empty config, artifact, bundle, referrer, fallback index
    assert len(_files(tmp_path / "old")) == 8


def test_add_bundle_referrer_bytes_are_pinned(tmp_path):
    """The mirror's referrer (add_bundle_referrer) is unchanged by the refactoring: pinned digests."""
    writer = OciLayoutWriter(tmp_path)
    subject = writer.add_manifest("application/x-test", None, [], created=CREATED)
    referrer = add_bundle_referrer(writer, subject, b'{"sig":1}', CREATED)
    doc = json.loads(OciLayoutReader(tmp_path).read_blob(referrer))
    assert doc["annotations"] == {ANNOTATION_BUNDLE_CONTENT: "message-signature",
                                  ANNOTATION_BUNDLE_PREDICATE: "https://sigstore.dev/cosign/sign/v1",
                                  ANNOTATION_CREATED: CREATED}
    assert referrer.digest == "sha256:" + hashlib.sha256(
        b'{"annotations":{"dev.sigstore.bundle.content":"message-signature","dev.sigstore.bundle.predicateType":'
        b'"https://sigstore.dev/cosign/sign/v1","org.opencontainers.image.created":"2025-01-01T00:00:00Z"},'
        b'"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","config":{"digest":"sha256:44136fa355b3'
        b'678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","mediaType":"application/vnd.oci.empty.v1+json",'
        b'"size":2},"layers":[{"digest":"sha256:' + hashlib.sha256(b'{"sig":1}').hexdigest().encode()
        + b'","mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","size":9}],"mediaType":'
        b'"application/vnd.oci.image.manifest.v1+json","schemaVersion":2,"subject":{"digest":"'
        + subject.digest.encode() + b'","mediaType":"application/vnd.oci.image.manifest.v1+json","size":'
        + str(subject.size).encode() + b'}}').hexdigest()


def test_attestation_is_a_second_referrer_in_cosigns_shape(tmp_path):
    writer, layer, artifact, (sig, att) = _layout(tmp_path, b'{"att":1}')
    reader = OciLayoutReader(tmp_path)
    assert verify_layout(tmp_path) == []
    assert set(writer.tags) == {"2", fallback_tag(artifact.digest)}
    fallback = reader.read_json(writer.tags[fallback_tag(artifact.digest)])
    assert [m["digest"] for m in fallback["manifests"]] == sorted([sig.digest, att.digest])
    doc = reader.read_json(att)
    assert doc["artifactType"] == BUNDLE_MEDIA_TYPE and doc["subject"]["digest"] == artifact.digest
    assert doc["annotations"] == {ANNOTATION_BUNDLE_CONTENT: "dsse-envelope",
                                  ANNOTATION_BUNDLE_PREDICATE: "https://slsa.dev/provenance/v1",
                                  ANNOTATION_CREATED: CREATED}
    [blob] = doc["layers"]
    assert blob["mediaType"] == BUNDLE_MEDIA_TYPE
    assert (tmp_path / "blobs/sha256" / blob["digest"][7:]).read_bytes() == b'{"att":1}'
    assert reader.read_json(sig)["annotations"][ANNOTATION_BUNDLE_CONTENT] == "message-signature"


def test_artifact_for_and_layout_digests_agree_with_the_written_layout(tmp_path):
    """What the attestation action computes (no I/O) and what verify recomputes (LayoutDigests) are the
    digests the build writes."""
    _, _, artifact, _ = _layout(tmp_path, b'{"att":1}')
    assert artifact_for(hashlib.sha256(ARCHIVE).hexdigest(), len(ARCHIVE), CREATED, False) == artifact
    expected = LayoutDigests()
    layer = expected.add_known_blob("sha256:" + hashlib.sha256(ARCHIVE).hexdigest(), len(ARCHIVE),
                                    PROFILES[False]["layer"], {ANNOTATION_TITLE: "db.tar.gz"})
    build_signed_layout(expected, layer, b'{"sig":1}', b'{"att":1}', CREATED, False)
    assert expected.files == _files(tmp_path)
    assert artifact_for(hashlib.sha256(ARCHIVE).hexdigest(), len(ARCHIVE), "2025-01-02T00:00:00Z",
                        False).digest != artifact.digest


# -- the statement and its signature --------------------------------------------------------------

def test_statement_names_the_artifact_manifest_and_carries_the_predicate():
    artifact = artifact_for("ab" * 32, 10, CREATED, False)
    assert attestation_statement("trivy-db", artifact, PREDICATE) == {
        "_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1",
        "subject": [{"name": "trivy-db", "digest": {"sha256": artifact.hex}}], "predicate": PREDICATE}


def test_signed_attestation_is_deterministic_and_checks(keys):
    artifact = artifact_for("ab" * 32, 10, CREATED, False)
    bundle = sign_attestation("trivy-db", artifact, PREDICATE, keys["key"])
    assert bundle == sign_attestation("trivy-db", artifact, PREDICATE, keys["key"])  # RFC 6979
    doc = json.loads(bundle)
    assert doc["mediaType"] == BUNDLE_MEDIA_TYPE and doc["verificationMaterial"]["tlogEntries"] == []
    envelope = doc["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert [set(s) for s in envelope["signatures"]] == [{"sig"}]  # no keyid: cosign skips mismatching ones
    check_attestation(bundle, keys["pub"], name="trivy-db", artifact=artifact, predicate=PREDICATE)


def _flip_payload(bundle: bytes) -> bytes:
    doc = json.loads(bundle)
    payload = bytearray(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    payload[payload.index(b"buildType") + 8] ^= 1  # still valid JSON: only the signature can tell
    doc["dsseEnvelope"]["payload"] = base64.b64encode(bytes(payload)).decode()
    return json.dumps(doc).encode()


@pytest.mark.parametrize("case,message", [
    ("other-key", "DSSE signature does not verify"),
    ("flipped-bit", "DSSE signature does not verify"),
    ("other-artifact", "no statement subject has the artifact's sha256"),
    ("other-predicate", "predicate is not the one of manifests/provenance.json"),
    ("other-name", "subjects are not exactly the DB artifact"),
])
def test_check_attestation_refuses(keys, case, message):
    artifact = artifact_for("ab" * 32, 10, CREATED, False)
    key = ec.generate_private_key(ec.SECP256R1()) if case == "other-key" else keys["key"]
    bundle = sign_attestation("trivy-db", artifact, PREDICATE, key)
    kwargs = {"name": "trivy-db", "artifact": artifact, "predicate": PREDICATE}
    if case == "flipped-bit":
        bundle = _flip_payload(bundle)
    elif case == "other-artifact":
        kwargs["artifact"] = artifact_for("ab" * 32, 11, CREATED, False)
    elif case == "other-predicate":
        kwargs["predicate"] = {**PREDICATE, "runDetails": {}}
    elif case == "other-name":
        kwargs["name"] = "trivy-java-db"
    with pytest.raises(signing.SignatureInvalid, match=message):
        check_attestation(bundle, keys["pub"], **kwargs)


# -- the build and stella-build verify ------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, keys):
    root = tmp_path_factory.mktemp("trivy-attestation")
    ws = make_workspace(root / "ws")
    run_cli(["-q", "build", "//profiles:trivy-db"], cwd=ws, cache=root / "cache", check=True,
            env={"COSIGN_PASSWORD": PASSWORD, "STELLA_SIGNING_KEY": str(keys["key_path"])})
    return ws / "stella-out" / "profiles" / "trivy-db"


def _attestation_of(out: Path) -> tuple[str, bytes]:
    """(artifact digest of tag "2", the bytes of the attestation referrer's bundle) read from oci/."""
    reader = OciLayoutReader(out / "oci")
    artifact = reader.resolve("2")
    fallback = reader.read_json(reader.resolve(fallback_tag(artifact.digest)))
    docs = [json.loads((out / "oci/blobs/sha256" / m["digest"][7:]).read_bytes()) for m in fallback["manifests"]]
    [att] = [d for d in docs if d["annotations"][ANNOTATION_BUNDLE_CONTENT] == "dsse-envelope"]
    return artifact.digest, (out / "oci/blobs/sha256" / att["layers"][0]["digest"][7:]).read_bytes()


def test_signed_build_attests_the_artifact_with_its_provenance(built, keys):
    digest, bundle = _attestation_of(built)
    statement = signing.verify_dsse_bundle(bundle, keys["pub"], artifact_sha256=digest[7:],
                                           predicate_type="https://slsa.dev/provenance/v1")
    assert statement["subject"] == [{"name": "trivy-db", "digest": {"sha256": digest[7:]}}]
    provenance = json.loads((built / "manifests/provenance.json").read_bytes())
    assert statement["predicate"] == provenance["predicate"]
    assert provenance["subject"][0]["name"] == "manifests/export.json"  # the file statement is unchanged
    assert verify_layout(built / "oci") == []
    # the action's own output is not a file of the target: only oci/ holds it
    assert not list(built.rglob("oci-attestation*"))
    # layer, empty config, artifact, signature bundle + referrer, attestation bundle + referrer, fallback index
    assert len(list((built / "oci/blobs/sha256").iterdir())) == 8


def test_verify_accepts_the_build_and_reports_the_attestation(built, keys):
    report = verify_bundle(built, key=str(keys["pub_path"]))
    assert report.ok, [(c.name, c.message) for c in report.failed()]
    assert [c.ok for c in report.checks if c.name == "oci-attestation"] == [True]


def _rewrite_layout(out: Path, attestation: bytes | None) -> None:
    """oci/ rebuilt around another attestation (or none), consistent as a registry would serve it."""
    digest, _ = _attestation_of(out)
    created = json.loads((out / "manifests/export.json").read_bytes())["generatedAt"]
    shutil.rmtree(out / "oci")
    writer = OciLayoutWriter(out / "oci")
    layer = writer.add_blob_file(out / "db.tar.gz", PROFILES[False]["layer"], {ANNOTATION_TITLE: "db.tar.gz"})
    artifact, _ = build_signed_layout(writer, layer, (out / "db.tar.gz.sigstore.json").read_bytes(), attestation,
                                      created, False)
    assert artifact.digest == digest


@pytest.mark.parametrize("case", ["other-key", "flipped-bit", "missing"])
def test_verify_refuses_a_substituted_attestation_naming_the_check(built, keys, tmp_path, case):
    work = tmp_path / "out"
    shutil.copytree(built, work)
    digest, bundle = _attestation_of(work)
    if case == "other-key":
        predicate = json.loads((work / "manifests/provenance.json").read_bytes())["predicate"]
        bundle = sign_attestation("trivy-db", artifact_for(
            hashlib.sha256((work / "db.tar.gz").read_bytes()).hexdigest(), (work / "db.tar.gz").stat().st_size,
            json.loads((work / "manifests/export.json").read_bytes())["generatedAt"], False),
            predicate, ec.generate_private_key(ec.SECP256R1()))
    elif case == "flipped-bit":
        bundle = _flip_payload(bundle)
    _rewrite_layout(work, None if case == "missing" else bundle)
    res = run_cli(["verify", str(work), "--key", str(keys["pub_path"]), "--output", "json"], cwd=tmp_path)
    assert res.code == 3, res.stdout + res.stderr
    report = json.loads(res.stdout)
    failed = {c["name"] for c in report["checks"] if c["status"] == "failed"}
    assert "oci-attestation" in failed, report["checks"]
    # every other signature still verifies: only the attestation was substituted
    assert failed <= {"oci-attestation", "oci-layout"}, failed
