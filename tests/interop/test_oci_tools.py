"""Interop: our OCI layouts and registry push/pull against skopeo, umoci and a real Debian docker-registry."""
from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import urllib3

from stella_build.engine.encode.archive import TarEntry, gzip_bytes, tar_bytes
from stella_build.rules.formats.oci import (
    OciLayoutReader,
    OciLayoutWriter,
    fallback_tag,
    trivy_db_artifact,
    verify_layout,
)
from stella_build.delivery.registry import RegistryClient, RegistryError, pull_layout, push_layout
from .conftest import require_tool

pytestmark = pytest.mark.interop

CREATED = "2025-01-01T00:00:00Z"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def build_layout(root: Path, referrer_payloads: tuple[bytes, ...] = (b'{"n":1}', b'{"n":2}')) -> dict:
    w = OciLayoutWriter(root)
    db = gzip_bytes(tar_bytes([TarEntry("metadata.json", b'{"Version":2}'), TarEntry("trivy.db", b"\0" * 4096)], 1735689600))
    subject = trivy_db_artifact(w, db, CREATED)
    refs = [w.add_manifest(BUNDLE, None, [w.add_blob(p, BUNDLE)], subject=subject, created=CREATED)
            for p in referrer_payloads]
    fallback = w.add_referrers_fallback(subject, refs)
    w.write_index()
    return {"subject": subject, "refs": refs, "fallback": fallback}


def blob_set(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "blobs" / "sha256").iterdir() if not p.name.startswith(".")}


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def tamper_layer(root: Path, subject) -> None:
    reader = OciLayoutReader(root)
    layer = reader.read_json(subject)["layers"][0]["digest"]
    path = reader.blob_path(layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "layout"
    info = build_layout(root)
    assert verify_layout(root) == []
    return root, info


# -- skopeo ---------------------------------------------------------------------------------------

def test_skopeo_copies_artifact_with_digest_preserved(tmp_path, layout):
    skopeo = require_tool("skopeo")
    root, info = layout
    out = tmp_path / "out"
    res = run([skopeo, "--insecure-policy", "copy", "--preserve-digests", f"oci:{root}:2", f"oci:{out}:2"])
    assert res.returncode == 0, res.stderr
    assert OciLayoutReader(out).resolve("2").digest == info["subject"].digest
    assert verify_layout(out) == []
    raw = run([skopeo, "inspect", "--raw", f"oci:{root}:2"])
    assert raw.returncode == 0, raw.stderr
    assert hashlib.sha256(raw.stdout.encode()).hexdigest() == info["subject"].hex


def test_skopeo_copies_fallback_index_unchanged(tmp_path, layout):
    skopeo = require_tool("skopeo")
    root, info = layout
    tag = fallback_tag(info["subject"].digest)
    out = tmp_path / "out"
    res = run([skopeo, "--insecure-policy", "copy", "--all", "--preserve-digests", f"oci:{root}:{tag}", f"oci:{out}:{tag}"])
    assert res.returncode == 0, res.stderr
    assert OciLayoutReader(out).resolve(tag).digest == info["fallback"].digest


def test_skopeo_rejects_tampered_blob(tmp_path, layout):
    skopeo = require_tool("skopeo")
    root, info = layout
    tamper_layer(root, info["subject"])
    res = run([skopeo, "--insecure-policy", "copy", f"oci:{root}:2", f"oci:{tmp_path / 'out'}:2"])
    assert res.returncode != 0
    assert "Digest did not match" in res.stderr, res.stderr


# -- umoci ----------------------------------------------------------------------------------------

def test_umoci_gc_accepts_layout_and_keeps_every_blob(tmp_path, layout):
    umoci = require_tool("umoci")
    root, info = layout
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = blob_set(copy)
    res = run([umoci, "gc", "--layout", str(copy)])
    assert res.returncode == 0, res.stderr
    assert blob_set(copy) == before  # nothing unreferenced, nothing damaged
    ls = run([umoci, "ls", "--layout", str(copy)])
    assert ls.returncode == 0, ls.stderr
    assert set(ls.stdout.split()) == {"2", fallback_tag(info["subject"].digest)}


@pytest.mark.parametrize("what", ["layer", "referrer"])
def test_umoci_gc_fails_on_tamper(tmp_path, layout, what):
    umoci = require_tool("umoci")
    root, info = layout
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    if what == "layer":
        tamper_layer(copy, info["subject"])
    else:
        path = OciLayoutReader(copy).blob_path(info["refs"][0].digest)
        path.write_bytes(path.read_bytes().replace(b"2025", b"2026"))
    res = run([umoci, "gc", "--layout", str(copy)])
    assert res.returncode != 0, res.stdout
    assert "digest mismatch" in res.stderr, res.stderr
    assert verify_layout(copy)  # our validator agrees


# -- docker-registry --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """A real Debian docker-registry (distribution 2.8) on 127.0.0.1:<free port>; stopped after."""
    binary = require_tool("docker-registry")
    port = _free_port()
    storage = tmp_path / "registry-storage"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: stella-build-test\n"
    )
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    http = urllib3.PoolManager(retries=False, timeout=1.0)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if http.request("GET", url + "/v2/").status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_registry_round_trip_preserves_every_digest(tmp_path, layout, registry):
    root, info = layout
    client = RegistryClient(registry, "stella/trivy-db")
    result = push_layout(root, client)
    assert result.referrers_api is False  # distribution 2.8: tag schema fallback was used
    tag = fallback_tag(info["subject"].digest)
    assert result.tags == {"2": info["subject"].digest, tag: info["fallback"].digest}
    assert client.list_tags() == sorted(["2", tag])
    assert sorted(d.digest for d in client.referrers(info["subject"].digest)) == sorted(r.digest for r in info["refs"])

    pulled = tmp_path / "pulled"
    assert pull_layout(client, pulled) == {"2": info["subject"].digest, tag: info["fallback"].digest}
    assert verify_layout(pulled) == []
    assert blob_set(pulled) == blob_set(root)
    assert (pulled / "index.json").read_bytes() == (root / "index.json").read_bytes()

    again = push_layout(root, client)  # second push: HEAD finds every blob
    assert again.blobs_uploaded == [] and len(again.blobs_skipped) == 4


def test_skopeo_pulls_our_push_from_registry(tmp_path, layout, registry):
    skopeo = require_tool("skopeo")
    root, info = layout
    push_layout(root, RegistryClient(registry, "stella/trivy-db"))
    host = registry.removeprefix("http://")
    out = tmp_path / "skopeo-out"
    res = run([skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "--preserve-digests",
               f"docker://{host}/stella/trivy-db:2", f"oci:{out}:2"])
    assert res.returncode == 0, res.stderr
    assert OciLayoutReader(out).resolve("2").digest == info["subject"].digest
    assert verify_layout(out) == []
    tag = fallback_tag(info["subject"].digest)
    res = run([skopeo, "--insecure-policy", "copy", "--all", "--src-tls-verify=false", "--preserve-digests",
               f"docker://{host}/stella/trivy-db:{tag}", f"oci:{out}:{tag}"])
    assert res.returncode == 0, res.stderr
    assert OciLayoutReader(out).resolve(tag).digest == info["fallback"].digest


def test_fallback_index_is_merged_with_existing_referrers(tmp_path, registry):
    client = RegistryClient(registry, "stella/merge")
    a = build_layout(tmp_path / "a", (b'{"n":1}',))
    b = build_layout(tmp_path / "b", (b'{"n":3}',))
    assert a["subject"].digest == b["subject"].digest  # same artifact, different referrers
    push_layout(tmp_path / "a", client)
    push_layout(tmp_path / "b", client)
    got = sorted(d.digest for d in client.referrers(a["subject"].digest))
    assert got == sorted([a["refs"][0].digest, b["refs"][0].digest])


def test_push_refuses_broken_layout_and_names_registry_errors(tmp_path, layout, registry):
    root, info = layout
    tamper_layer(root, info["subject"])
    with pytest.raises(RegistryError, match="refusing to push"):
        push_layout(root, RegistryClient(registry, "stella/x"))
    client = RegistryClient(registry, "stella/x")
    with pytest.raises(RegistryError, match=r"tag 'nope' not found at http://127\.0\.0\.1:\d+/stella/x"):
        pull_layout(client, tmp_path / "none", tags=["nope"])
    dead = RegistryClient(f"http://127.0.0.1:{_free_port()}", "stella/x", attempts=2, backoff=0.01)
    with pytest.raises(RegistryError, match=r"HEAD http://127\.0\.0\.1:\d+/v2/stella/x/blobs/sha256:[0-9a-f]{64} .*failed after 2 attempts"):
        dead.has_blob(info["subject"].digest)
