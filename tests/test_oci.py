"""Unit tests for rules/oci.py: deterministic layouts, Trivy artifact shape, referrers fallback, tamper checks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from stella_build.rules.formats import oci
from stella_build.rules.formats.oci import (
    EMPTY_DESCRIPTOR,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    OciLayoutError,
    OciLayoutReader,
    OciLayoutWriter,
    trivy_db_artifact,
    verify_layout,
)

CREATED = "2025-01-01T00:00:00Z"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def build_sample(root: Path) -> dict[str, oci.Descriptor]:
    """A Trivy DB artifact, two referrers with subject, and the sha256-<hex> fallback index."""
    w = OciLayoutWriter(root)
    subject = trivy_db_artifact(w, b"fake tar.gz bytes", CREATED)
    refs = []
    for n in (1, 2):
        layer = w.add_blob(f'{{"bundle":{n}}}'.encode(), BUNDLE_TYPE)
        refs.append(w.add_manifest(BUNDLE_TYPE, None, [layer], {"dev.sigstore.bundle.content": "dsse-envelope"},
                                   subject, created=CREATED))
    fallback = w.add_referrers_fallback(subject, refs)
    w.write_index()
    return {"subject": subject, "ref1": refs[0], "ref2": refs[1], "fallback": fallback}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_empty_descriptor_constant_matches_spec_bytes():
    assert EMPTY_DESCRIPTOR.digest == sha(b"{}")
    assert EMPTY_DESCRIPTOR.size == 2


def test_layout_is_byte_identical_across_runs_and_umask(tmp_path):
    a = build_sample(tmp_path / "a")
    old = os.umask(0o077)
    try:
        b = build_sample(tmp_path / "b")
    finally:
        os.umask(old)
    assert a == b
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert modes == {0o644}


def test_layout_files_and_trivy_manifest_shape(tmp_path):
    d = build_sample(tmp_path)
    assert json.loads((tmp_path / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    reader = OciLayoutReader(tmp_path)
    tags = reader.tags()
    assert set(tags) == {"2", "sha256-" + d["subject"].hex}
    manifest = reader.read_json(tags["2"])
    assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    assert manifest["artifactType"] == "application/vnd.aquasec.trivy.config.v1+json"
    assert manifest["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2}
    assert manifest["annotations"] == {"org.opencontainers.image.created": CREATED}
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
    assert layer["annotations"] == {"org.opencontainers.image.title": "db.tar.gz"}
    assert (tmp_path / "blobs/sha256" / layer["digest"].split(":")[1]).read_bytes() == b"fake tar.gz bytes"
    assert (tmp_path / "blobs/sha256" / sha(b"{}").split(":")[1]).read_bytes() == b"{}"
    # canonical compact JSON: stored bytes equal a sorted compact re-dump
    raw = reader.blob_path(tags["2"].digest).read_bytes()
    assert raw == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def test_java_db_artifact(tmp_path):
    w = OciLayoutWriter(tmp_path)
    trivy_db_artifact(w, b"java", CREATED, java=True)
    w.write_index()
    r = OciLayoutReader(tmp_path)
    m = r.read_json(r.resolve("1"))
    assert m["layers"][0]["mediaType"] == "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"
    assert m["layers"][0]["annotations"]["org.opencontainers.image.title"] == "javadb.tar.gz"


def test_created_changes_manifest_digest(tmp_path):
    a = trivy_db_artifact(OciLayoutWriter(tmp_path / "a"), b"x", "2025-01-01T00:00:00Z")
    b = trivy_db_artifact(OciLayoutWriter(tmp_path / "b"), b"x", "2025-01-02T00:00:00Z")
    assert a.digest != b.digest


def test_referrers_fallback_index(tmp_path):
    d = build_sample(tmp_path)
    r = OciLayoutReader(tmp_path)
    idx_desc = r.resolve("sha256-" + d["subject"].hex)
    assert idx_desc.media_type == MEDIA_TYPE_INDEX and idx_desc.digest == d["fallback"].digest
    idx = r.read_json(idx_desc)
    digests = [m["digest"] for m in idx["manifests"]]
    assert digests == sorted([d["ref1"].digest, d["ref2"].digest])
    assert all("artifactType" not in m for m in idx["manifests"])
    for m in idx["manifests"]:
        ref = r.read_json(oci.Descriptor.from_json(m))
        assert ref["subject"]["digest"] == d["subject"].digest
        assert ref["artifactType"] == BUNDLE_TYPE
    w = OciLayoutWriter(tmp_path / "again")
    w.add_referrers_fallback(d["subject"], [d["ref1"]])
    with pytest.raises(OciLayoutError, match="already written"):
        w.add_referrers_fallback(d["subject"], [d["ref2"]])


def test_index_json_has_no_artifact_type_and_is_sorted(tmp_path):
    w = OciLayoutWriter(tmp_path)
    m = w.add_manifest("application/x.test", None, [], created=CREATED)
    for name in ("zeta", "alpha", "m-1"):
        w.tag(m, name)
    w.write_index()
    entries = json.loads((tmp_path / "index.json").read_bytes())["manifests"]
    assert [e["annotations"]["org.opencontainers.image.ref.name"] for e in entries] == ["alpha", "m-1", "zeta"]
    assert all("artifactType" not in e for e in entries)


def test_bad_inputs_are_rejected(tmp_path):
    w = OciLayoutWriter(tmp_path)
    m = w.add_manifest("application/x.test", None, [])
    with pytest.raises(OciLayoutError, match="artifact_type is required"):
        w.add_manifest(None, None, [])
    with pytest.raises(OciLayoutError, match="not a valid image-layout ref"):
        w.tag(m, "bad tag")
    with pytest.raises(OciLayoutError, match="RFC 3339"):
        w.add_manifest("application/x.test", None, [], created="yesterday")
    w.tag(m, "v1")
    other = w.add_manifest("application/x.other", None, [])
    with pytest.raises(OciLayoutError, match="already points"):
        w.tag(other, "v1")
    blob = w.add_blob(b"data", "application/octet-stream")
    with pytest.raises(OciLayoutError, match="not a manifest"):
        w.tag(blob, "blob")


def test_verify_layout_clean(tmp_path):
    build_sample(tmp_path)
    assert verify_layout(tmp_path) == []
    walked = OciLayoutReader(tmp_path).walk()
    # subject manifest, empty config, db layer, fallback index, 2 referrers, 2 bundle layers
    assert len(walked) == 8


@pytest.mark.parametrize("target", ["layer", "manifest", "referrer", "fallback"])
def test_verify_layout_detects_tampered_blob(tmp_path, target):
    d = build_sample(tmp_path)
    r = OciLayoutReader(tmp_path)
    if target == "layer":
        digest = r.read_json(d["subject"])["layers"][0]["digest"]
    else:
        digest = {"manifest": d["subject"], "referrer": d["ref2"], "fallback": d["fallback"]}[target].digest
    path = r.blob_path(digest)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_layout(tmp_path)
    assert any(p.where == digest and "does not hash" in p.message for p in problems), problems


def test_verify_layout_detects_missing_blob_and_size(tmp_path):
    d = build_sample(tmp_path)
    r = OciLayoutReader(tmp_path)
    layer_digest = r.read_json(d["subject"])["layers"][0]["digest"]
    r.blob_path(layer_digest).unlink()
    bundle_digest = r.read_json(d["ref1"])["layers"][0]["digest"]
    r.blob_path(bundle_digest).write_bytes(b"longer than before, certainly")
    problems: dict[str, str] = {}
    for p in verify_layout(tmp_path):
        problems[p.where] = problems.get(p.where, "") + p.message + "; "
    assert "blob missing" in problems[layer_digest]
    assert "size 29 != descriptor size" in problems[bundle_digest]


def test_verify_layout_bad_marker_and_index(tmp_path):
    build_sample(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion":"9"}')
    (tmp_path / "index.json").write_text("not json")
    wheres = [p.where for p in verify_layout(tmp_path)]
    assert wheres == ["oci-layout", "index.json"]


def test_read_blob_checks_digest(tmp_path):
    d = build_sample(tmp_path)
    r = OciLayoutReader(tmp_path)
    r.blob_path(d["ref1"].digest).write_bytes(b"x" * d["ref1"].size)
    with pytest.raises(OciLayoutError, match="does not match"):
        r.read_blob(d["ref1"])


def test_add_blob_file_matches_add_blob(tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    w = OciLayoutWriter(tmp_path / "l")
    a = w.add_blob_file(src, "application/octet-stream")
    b = w.add_blob(src.read_bytes(), "application/octet-stream")
    assert a == b and w.blob_path(a.digest).read_bytes() == src.read_bytes()


def test_files_artifact_layers_sorted_by_digest_with_titles(tmp_path):
    src = tmp_path / "export.json"
    src.write_bytes(b'{"e":1}')
    files = {"export.json": src, "data/a.jsonl.zst": b"aaa", "data/b.jsonl.zst": b"aaa", "README.md": b"# r"}
    w = OciLayoutWriter(tmp_path / "l")
    desc = oci.files_artifact(w, files, "application/vnd.stellaops.mirror.v1", CREATED,
                              media_types={"export.json": "application/json"},
                              annotations={"io.stellaops.export.manifest-digest": "sha256:" + "0" * 64})
    w.tag(desc, "mirror")
    w.write_index()
    assert verify_layout(tmp_path / "l") == []
    m = OciLayoutReader(tmp_path / "l").read_json(desc)
    keys = [(layer["digest"], layer["annotations"]["org.opencontainers.image.title"]) for layer in m["layers"]]
    assert keys == sorted(keys) and len(keys) == 4
    titles = {t: layer for (_, t), layer in zip(keys, m["layers"])}
    assert titles["export.json"]["mediaType"] == "application/json"
    assert titles["data/a.jsonl.zst"]["digest"] == titles["data/b.jsonl.zst"]["digest"] == sha(b"aaa")
    assert m["annotations"]["io.stellaops.export.manifest-digest"].startswith("sha256:")
    with pytest.raises(OciLayoutError, match="relative"):
        oci.files_artifact(w, {"../x": b""}, "application/x", CREATED)
