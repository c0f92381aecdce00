"""The remote-cache client against real servers: nginx (WebDAV PUT) and bazel-remote v2.6.2.

Every check looks at the server side too (its access log or its storage directory), so a client
that only agrees with itself cannot pass.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from stella_build.engine.cache.remote import Outcome, RemoteCache, RemoteCacheError
from tests.interop.cache_servers import (  # noqa: F401 - fixtures are used by name
    CacheServer, bazel_remote_cache, bazel_remote_uncompressed, nginx_cache, start_bazel_remote,
    start_nginx,
)

pytestmark = pytest.mark.interop

RECORD = b'{"action":"trivy-db","outputs":[{"path":"db/trivy.db","sha256":"00"}]}'


@pytest.fixture(params=["nginx", "bazel-remote"])
def server(request) -> CacheServer:
    return request.getfixturevalue("nginx_cache" if request.param == "nginx" else "bazel_remote_cache")


def client(url: str, **kw) -> RemoteCache:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.05)
    kw.setdefault("env", {})
    return RemoteCache.from_url(url, **kw)


def blob(tmp_path: Path, data: bytes, name: str = "src") -> tuple[str, Path]:
    p = tmp_path / name
    p.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), p


def evidence(n: int) -> bytes:
    """Compressible, JSON-like content (like the advisories we cache)."""
    return b"".join(b'{"id":"CVE-2024-%05d","severity":"HIGH","fixed":"1.2.%d"}\n' % (i, i % 7)
                    for i in range(n))


def test_ac_and_cas_round_trip(server, tmp_path):
    rc = client(server.url)
    key = hashlib.sha256(b"action").hexdigest()
    assert rc.get_ac(key) is None
    assert rc.put_ac(key, RECORD)
    assert rc.get_ac(key) == RECORD
    assert server.stored_files("ac", key), "the record must be in the server's storage"

    data = evidence(5000)
    digest, src = blob(tmp_path, data)
    assert rc.has_cas(digest) is False
    assert rc.get_cas(digest, len(data), tmp_path / "miss") is False
    assert not (tmp_path / "miss").exists()
    assert rc.put_cas(digest, src) is Outcome.UPLOADED
    assert rc.has_cas(digest) is True
    assert rc.get_cas(digest, len(data), tmp_path / "out" / "blob") is True
    assert (tmp_path / "out" / "blob").read_bytes() == data
    # A second, independent client (another CI runner) sees the same entries.
    other = client(server.url)
    assert other.get_ac(key) == RECORD
    assert other.get_cas(digest, len(data), tmp_path / "other") is True
    assert server.count("GET", f"cas/{digest}") >= 2 and server.count("HEAD", f"cas/{digest}") == 2


def test_empty_blob(server, tmp_path):
    rc = client(server.url)
    digest, src = blob(tmp_path, b"")
    rc.put_cas(digest, src)
    assert rc.get_cas(digest, 0, tmp_path / "empty") is True
    assert (tmp_path / "empty").read_bytes() == b""


def test_404_is_a_miss_not_an_error(server, tmp_path):
    rc = client(server.url, retries=3)
    missing = "f" * 64
    assert rc.get_ac(missing) is None
    assert rc.has_cas(missing) is False
    assert rc.get_cas(missing, 10, tmp_path / "x") is False
    assert server.count("GET", missing) == 2  # one each, no retries
    s = rc.stats.as_dict()
    assert s["errors"] == 0 and s["misses"] == 2


def test_bazel_remote_uses_zstd_both_ways(bazel_remote_cache, tmp_path):
    rc = client(bazel_remote_cache.url)
    data = evidence(20000)
    digest, src = blob(tmp_path, data)
    assert rc.put_cas(digest, src) is Outcome.UPLOADED
    assert rc.get_cas(digest, len(data), tmp_path / "out") is True
    assert (tmp_path / "out").read_bytes() == data
    s = rc.stats.as_dict()
    assert s["zstd_uploads"] == 1 and s["zstd_downloads"] == 1
    assert s["bytes_up_raw"] == s["bytes_down_raw"] == len(data)
    assert s["bytes_up"] < len(data) / 5 and s["bytes_down"] < len(data) / 5
    # bazel-remote checked the sha256 of the *decoded* upload, so it stored the right blob: a client
    # that does not offer zstd gets the original bytes back.
    plain = client(bazel_remote_cache.url, compression="off")
    assert plain.get_cas(digest, len(data), tmp_path / "plain") is True
    assert plain.stats.as_dict()["bytes_down"] == len(data)


def test_nginx_gets_identity_uploads_after_the_probe(nginx_cache, tmp_path):
    rc = client(nginx_cache.url)
    data = evidence(3000)
    digest, src = blob(tmp_path, data)
    assert rc.put_cas(digest, src) is Outcome.UPLOADED
    assert rc.stats.as_dict()["zstd_uploads"] == 0
    (stored,) = nginx_cache.stored_files("cas", digest)
    assert stored.read_bytes() == data
    # Every file nginx holds matches its key: the probe left no compressed bytes behind.
    for f in (nginx_cache.storage / "cache" / "cas").iterdir():
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name


def test_read_only_mode_sends_no_put(server, tmp_path):
    writer = client(server.url)
    data = evidence(1000)
    digest, src = blob(tmp_path, data)
    key = hashlib.sha256(b"ro").hexdigest()
    writer.put_ac(key, RECORD)
    writer.put_cas(digest, src)
    puts_before = server.count("PUT")

    reader = client(server.url, upload=False)
    assert reader.get_ac(key) == RECORD
    assert reader.get_cas(digest, len(data), tmp_path / "out") is True
    other_digest, other_src = blob(tmp_path, evidence(1200), "other")
    assert reader.put_ac(hashlib.sha256(b"new").hexdigest(), RECORD) is False
    assert reader.put_cas(other_digest, other_src) is Outcome.SKIPPED
    assert [r.outcome for r in reader.upload_blobs([(other_digest, other_src)] * 4)] == [Outcome.SKIPPED] * 4
    assert server.count("PUT") == puts_before
    assert reader.has_cas(other_digest) is False


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x55
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("which", ["nginx", "bazel-remote-zstd", "bazel-remote-uncompressed"])
def test_corrupted_blob_in_server_storage_is_a_miss(request, tmp_path, which):
    fixture = {"nginx": "nginx_cache", "bazel-remote-zstd": "bazel_remote_cache",
               "bazel-remote-uncompressed": "bazel_remote_uncompressed"}[which]
    srv: CacheServer = request.getfixturevalue(fixture)
    rc = client(srv.url)
    data = os.urandom(64 * 1024) + evidence(2000)
    digest, src = blob(tmp_path, data)
    rc.put_cas(digest, src)
    (stored,) = srv.stored_files("cas", digest)
    _flip_last_byte(stored)  # same size, so no server notices from its index

    dest = tmp_path / "dest"
    for accept_zstd in ("auto", "off"):
        reader = client(srv.url, compression=accept_zstd)
        assert reader.get_cas(digest, len(data), dest) is False
        assert not dest.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".remote-")]
        s = reader.stats.as_dict()
        assert s["corrupt"] == 1 and s["cas_hits"] == 0
    if which == "nginx":  # a plain file server lets a writer repair the entry
        rc.put_cas(digest, src)
        assert rc.get_cas(digest, len(data), dest) is True


def test_truncated_blob_in_nginx_storage_is_a_miss(nginx_cache, tmp_path):
    rc = client(nginx_cache.url)
    data = evidence(4000)
    digest, src = blob(tmp_path, data)
    rc.put_cas(digest, src)
    (stored,) = nginx_cache.stored_files("cas", digest)
    stored.write_bytes(data[:-100])
    assert rc.get_cas(digest, len(data), tmp_path / "dest") is False
    assert not (tmp_path / "dest").exists()
    assert nginx_cache.count("GET", digest) == 1  # a complete-but-wrong body is not retried


def test_server_down_fails_fast_and_stays_off(server, tmp_path):
    rc = client(server.url, retries=2, timeout=2.0)
    key = hashlib.sha256(b"down").hexdigest()
    assert rc.get_ac(key) is None
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(RemoteCacheError) as ei:
        rc.get_ac(key)
    assert ei.value.connection and server.url.rstrip("/") in str(ei.value)
    assert time.monotonic() - t0 < 2.0
    t1 = time.monotonic()
    items = [(hashlib.sha256(b"%d" % i).hexdigest(), 1, tmp_path / str(i)) for i in range(50)]
    assert {r.outcome for r in rc.fetch_blobs(items)} == {Outcome.ERROR}
    assert time.monotonic() - t1 < 0.5
    assert not any((tmp_path / str(i)).exists() for i in range(50))


def test_parallel_batches(bazel_remote_cache, tmp_path):
    rc = client(bazel_remote_cache.url, max_parallel=8)
    items = [blob(tmp_path, evidence(200 + i) + os.urandom(i), f"b{i}") for i in range(40)]
    ups = rc.upload_blobs(items)
    assert [r.outcome for r in ups] == [Outcome.UPLOADED] * 40
    wanted = [(d, p.stat().st_size, tmp_path / "out" / d) for d, p in items]
    wanted.append(("e" * 64, 5, tmp_path / "out" / "missing"))
    results = rc.fetch_blobs(wanted)
    assert [r.outcome for r in results] == [Outcome.HIT] * 40 + [Outcome.MISS]
    for d, p in items:
        assert (tmp_path / "out" / d).read_bytes() == p.read_bytes()
    assert bazel_remote_cache.count("PUT", "/cas/") >= 40


def test_bazel_remote_with_ac_validation_gives_a_clear_hint(tmp_path, tool):
    import subprocess
    from tests.interop import cache_servers as cs

    binary = tool("bazel-remote")
    storage = tmp_path / "s"
    storage.mkdir()
    port = cs.free_port()
    args = [a for a in cs.bazel_remote_args(binary, storage, port) if a != "--disable_http_ac_validation"]
    proc = subprocess.Popen(args, stdout=open(tmp_path / "log", "wb"), stderr=subprocess.STDOUT)
    try:
        cs._wait_ready(proc, f"http://127.0.0.1:{port}/status", {200}, tmp_path / "log")
        rc = client(f"http://127.0.0.1:{port}/cache/")
        with pytest.raises(RemoteCacheError, match="disable_http_ac_validation"):
            rc.put_ac(hashlib.sha256(b"k").hexdigest(), RECORD)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_nginx_https_with_basic_auth(tmp_path, tool):
    from tests.test_remote_cache import _self_signed

    cert, key = _self_signed(tmp_path)
    srv = start_nginx(tool("nginx"), tmp_path / "nginx", tls=(cert, key), basic=("ci", "s3cret"))
    try:
        env = {"STELLA_REMOTE_CACHE_CA": str(cert), "STELLA_REMOTE_CACHE_USER": "ci",
               "STELLA_REMOTE_CACHE_PASSWORD": "s3cret"}
        assert srv.url.startswith("https://")
        rc = client(srv.url, env=env)
        k = hashlib.sha256(b"tls").hexdigest()
        assert rc.put_ac(k, RECORD) and rc.get_ac(k) == RECORD
        with pytest.raises(RemoteCacheError, match="HTTP 401"):
            client(srv.url, env={**env, "STELLA_REMOTE_CACHE_PASSWORD": "wrong"}).get_ac(k)
        with pytest.raises(RemoteCacheError, match="TLS error"):
            client(srv.url, env={"STELLA_REMOTE_CACHE_USER": "ci",
                                 "STELLA_REMOTE_CACHE_PASSWORD": "s3cret"}).get_ac(k)
    finally:
        srv.stop()


def test_nginx_bearer_token(tmp_path, tool):
    srv = start_nginx(tool("nginx"), tmp_path / "nginx", bearer="tok-123")
    try:
        rc = client(srv.url, env={"STELLA_REMOTE_CACHE_TOKEN": "tok-123"})
        k = hashlib.sha256(b"bearer").hexdigest()
        assert rc.put_ac(k, RECORD) and rc.get_ac(k) == RECORD
        with pytest.raises(RemoteCacheError, match="HTTP 401"):
            client(srv.url).get_ac(k)
    finally:
        srv.stop()


def test_bazel_remote_anonymous_reads_authenticated_writes(tmp_path, tool):
    """The fork-PR setup: anyone may read, only CI (with credentials) may write."""
    from tests.interop.cache_servers import htpasswd_sha

    (tmp_path / "htpasswd").write_text(htpasswd_sha("ci", "s3cret"))
    srv = start_bazel_remote(tool("bazel-remote"), tmp_path / "br", extra_args=(
        "--htpasswd_file", str(tmp_path / "htpasswd"), "--allow_unauthenticated_reads"))
    try:
        creds = {"STELLA_REMOTE_CACHE_USER": "ci", "STELLA_REMOTE_CACHE_PASSWORD": "s3cret"}
        key = hashlib.sha256(b"fork").hexdigest()
        assert client(srv.url, env=creds).put_ac(key, RECORD)
        fork = client(srv.url, upload=False)
        assert fork.get_ac(key) == RECORD
        with pytest.raises(RemoteCacheError, match="HTTP 401.*--remote-upload=false"):
            client(srv.url).put_ac(key, RECORD)
    finally:
        srv.stop()
