"""The remote-cache defences against a real bazel-remote (v2.6.2) with htpasswd and anonymous reads:
a failed upload is never silent, signed action-cache records travel through the server unchanged,
and a record written by someone with write credentials but without the writer key is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, make_workspace, output_digests, run_cli
from tests.interop.cache_servers import htpasswd_sha, start_bazel_remote

pytestmark = pytest.mark.interop
TARGET = "//profiles:json-raw"
GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())[TARGET]
CREDS = {"STELLA_REMOTE_CACHE_USER": "ci", "STELLA_REMOTE_CACHE_PASSWORD": "s3cret"}


@pytest.fixture
def authed_bazel_remote(tmp_path, tool):
    (tmp_path / "htpasswd").write_text(htpasswd_sha("ci", "s3cret"))
    srv = start_bazel_remote(tool("bazel-remote"), tmp_path / "br", extra_args=(
        "--htpasswd_file", str(tmp_path / "htpasswd"), "--allow_unauthenticated_reads"))
    yield srv
    srv.stop()


def _ed25519(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = directory / "writer.key", directory / "writer.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _build(ws, cache, url, *extra, env=None):
    return run_cli(["-q", "--output", "json", "--remote-cache", url, *extra, TARGET], cwd=ws, cache=cache,
                   env=env, timeout=300)


def test_upload_without_credentials_is_reported(authed_bazel_remote, tmp_path):
    """The colleague's report: PUT needs auth, no credentials given. Before: exit 0, no warning,
    `push-all` printed "uploaded 0 action results" with exit 0."""
    ws = make_workspace(tmp_path / "ws")
    res = _build(ws, tmp_path / "c1", authed_bazel_remote.url)
    assert res.code == 0, res.stderr
    assert res.stderr.count("warning:") == 1 and "HTTP 401" in res.stderr
    res = _build(ws, tmp_path / "c2", authed_bazel_remote.url, "--remote-required")
    assert res.code == 1
    assert [e["reason"] for e in res.json()["errors"]] == ["remote-cache-failed"]
    pushed = run_cli(["--remote-cache", authed_bazel_remote.url, "cache", "push-all", "--output", "json",
                      TARGET], cwd=ws, cache=tmp_path / "c1", timeout=300)
    assert pushed.code == 1 and [e["reason"] for e in pushed.json()["errors"]] == ["remote-cache-failed"]
    assert authed_bazel_remote.count("PUT") == 0 or all(
        status == 401 for m, _, status in authed_bazel_remote.requests() if m == "PUT")


def test_signed_records_through_bazel_remote_and_a_forged_one_is_refused(authed_bazel_remote, tmp_path):
    priv, pub = _ed25519(tmp_path)
    ci = make_workspace(tmp_path / "ci")
    res = _build(ci, tmp_path / "ci-cache", authed_bazel_remote.url, "--remote-cache-sign-key", str(priv),
                 env=CREDS)
    assert res.code == 0, res.stderr
    assert res.json()["remote"]["ac_uploads"] == 9

    # Someone with the write password but not the writer key replaces one record.
    import urllib.request

    from stella_build.engine.cache.remote import RemoteCache

    rc = RemoteCache.from_url(authed_bazel_remote.url, env=CREDS)
    keys = [p for m, p, s in authed_bazel_remote.requests() if m == "PUT" and "/ac/" in p and s < 300]
    assert len(keys) == 9
    records = {p.rsplit("/", 1)[1]: json.loads(rc.get_ac(p.rsplit("/", 1)[1])) for p in keys}
    key, bundle = next((k, r) for k, r in records.items() if r["action"].endswith("#Bundle"))
    shard = next(r for r in records.values() if "RawShard" in r["action"])
    for o in bundle["outputs"]:
        if o["path"] == "bundle.tar.gz.sha256":
            o.update({f: shard["outputs"][0][f] for f in ("blake3", "sha256", "size")})
    assert rc.put_ac(key, json.dumps(bundle).encode())
    rc.close()
    assert urllib.request.urlopen(authed_bazel_remote.url + "ac/" + key, timeout=5).read() \
        == json.dumps(bundle).encode()   # the server stored the forgery as-is

    dev = make_workspace(tmp_path / "dev")
    res = _build(dev, tmp_path / "dev-cache", authed_bazel_remote.url, "--remote-upload=false",
                 "--remote-cache-trust", str(pub))
    assert res.code == 0, res.stderr
    summary = res.json()
    assert summary["actions"]["remote_hits"] == 8 and summary["actions"]["executed"] == 1
    assert summary["remote"]["rejected"] == 1
    assert output_digests(dev, "profiles", "json-raw") == GOLDEN
