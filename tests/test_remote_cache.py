"""Unit tests for the remote-cache HTTP client against a tiny in-process server.

The fake server exists only for faults real servers will not produce on demand: truncated and
corrupted bodies, wrong sizes, 5xx/429 bursts, a stalled server, TLS with a private CA. Behaviour
against real nginx and bazel-remote is covered in tests/interop/test_remote_cache_servers.py.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import zstandard

from stella_build.engine.cache.remote import Outcome, RemoteCache, RemoteCacheError

PREFIX = "/cache/"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeStore:
    """State shared by the handler threads: stored objects, request log and injected faults."""

    def __init__(self, zstd: bool = False) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.faults: dict[str, list[str]] = {}   # path -> queue of faults ("500", "truncate", ...)
        self.sticky: dict[str, str] = {}         # path -> fault applied to every request
        self.zstd = zstd                         # behave like bazel-remote (decode/encode zstd)
        self.require_auth: str | None = None
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def fault_for(self, path: str) -> str | None:
        with self.lock:
            if path in self.sticky:
                return self.sticky[path]
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None


def make_handler(store: FakeStore):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _enter(self) -> str | None:
            with store.lock:
                store.requests.append((self.command, self.path, dict(self.headers)))
                store.in_flight += 1
                store.max_in_flight = max(store.max_in_flight, store.in_flight)
            if store.delay:
                time.sleep(store.delay)
            if store.require_auth and self.headers.get("Authorization") != store.require_auth:
                self._reply(401, b"unauthorized")
                return None
            if not self.path.startswith(PREFIX):
                self._reply(400, b"bad prefix")
                return None
            return self.path[len(PREFIX):]

        def _leave(self) -> None:
            with store.lock:
                store.in_flight -= 1

        def _reply(self, status: int, body: bytes = b"", headers: dict | None = None,
                   head: bool = False) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _status_fault(self, fault: str | None) -> bool:
            if fault in ("500", "503", "429"):
                hdr = {"Retry-After": "0"} if fault == "429" else {}
                self._reply(int(fault), b"try later", hdr)
                return True
            if fault == "400":
                self._reply(400, b"bad request from fake")
                return True
            if fault == "hang":
                time.sleep(3)
                self.close_connection = True
                return True
            return False

        def do_GET(self):
            key = self._enter()
            try:
                if key is None:
                    return
                fault = store.fault_for(self.path)
                if self._status_fault(fault):
                    return
                data = store.objects.get(key)
                if data is None:
                    self._reply(404, b"Not found")
                    return
                if fault == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault == "corrupt":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if fault == "wrong-size":
                    data = data + b"extra"
                if fault == "bad-zstd":
                    self._reply(200, b"\x28\xb5\x2f\xfd not really zstd",
                                {"Content-Encoding": "zstd"})
                    return
                if store.zstd and "zstd" in self.headers.get("Accept-Encoding", "") and "/cas/" in "/" + key:
                    packed = zstandard.ZstdCompressor().compress(data)
                    self._reply(200, packed, {"Content-Encoding": "zstd"})
                    return
                self._reply(200, data)
            finally:
                self._leave()

        def do_HEAD(self):
            key = self._enter()
            try:
                if key is None:
                    return
                if self._status_fault(store.fault_for(self.path)):
                    return
                data = store.objects.get(key)
                if data is None:
                    self._reply(404, head=True)
                else:
                    self._reply(200, headers={"Content-Length": str(len(data))}, head=True)
            finally:
                self._leave()

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def do_PUT(self):
            key = self._enter()
            try:
                body = self._body()
                if key is None:
                    return
                if self._status_fault(store.fault_for(self.path)):
                    return
                if store.zstd and self.headers.get("Content-Encoding") == "zstd":
                    body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
                    if len(body) != int(self.headers["X-Digest-SizeBytes"]):
                        self._reply(400, b"size mismatch")
                        return
                store.objects[key] = body  # a plain file server stores whatever it got
                self._reply(201)
            finally:
                self._leave()

    return Handler


class FakeServer:
    def __init__(self, zstd: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.store = FakeStore(zstd=zstd)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.store))
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}{PREFIX}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def count(self, method: str, fragment: str = "") -> int:
        return sum(1 for m, p, _ in self.store.requests if m == method and fragment in p)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.stop()


@pytest.fixture
def zserver():
    s = FakeServer(zstd=True)
    yield s
    s.stop()


def client(url: str, **kw) -> RemoteCache:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("env", {})
    return RemoteCache.from_url(url, **kw)


def put_blob(server: FakeServer, data: bytes) -> str:
    digest = sha(data)
    server.store.objects[f"cas/{digest}"] = data
    return digest


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".remote-")]


# ---- round trips -------------------------------------------------------------------------------

def test_ac_roundtrip_and_miss(server):
    rc = client(server.url)
    key = "ab" * 32
    assert rc.get_ac(key) is None
    record = b'{"outputs":[]}'
    assert rc.put_ac(key, record) is True
    assert server.store.objects[f"ac/{key}"] == record
    assert rc.get_ac(key) == record
    s = rc.stats.as_dict()
    assert (s["ac_hits"], s["ac_misses"], s["ac_uploads"]) == (1, 1, 1)
    assert server.count("PUT", f"{PREFIX}ac/{key}") == 1


def test_cas_roundtrip(server, tmp_path):
    rc = client(server.url)
    data = os.urandom(300_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    digest = sha(data)
    assert rc.has_cas(digest) is False
    assert rc.put_cas(digest, src) is Outcome.UPLOADED
    assert server.store.objects[f"cas/{digest}"] == data
    assert rc.has_cas(digest) is True
    dest = tmp_path / "out" / "blob"
    assert rc.get_cas(digest, len(data), dest) is True
    assert dest.read_bytes() == data
    assert (dest.stat().st_mode & 0o777) == 0o644
    s = rc.stats.as_dict()
    assert s["bytes_up"] == s["bytes_down"] == len(data)
    assert s["cas_hits"] == 1


def test_large_upload_asks_first_and_skips_present(server, tmp_path):
    rc = client(server.url)
    data = os.urandom(2 << 20)
    src = tmp_path / "big"
    src.write_bytes(data)
    digest = put_blob(server, data)
    assert rc.put_cas(digest, src) is Outcome.PRESENT
    assert server.count("PUT") == 0 and server.count("HEAD") == 1


def test_404_is_a_miss_without_retries(server, tmp_path):
    rc = client(server.url, retries=3)
    dest = tmp_path / "blob"
    assert rc.get_cas("0" * 64, 10, dest) is False
    assert not dest.exists() and no_temp_files(tmp_path)
    assert server.count("GET") == 1
    assert rc.stats.as_dict()["cas_misses"] == 1


# ---- corrupt bodies: never written, reported as a miss -----------------------------------------

@pytest.mark.parametrize("fault", ["corrupt", "wrong-size", "truncate", "bad-zstd"])
def test_bad_body_is_a_miss_and_never_written(server, tmp_path, fault):
    rc = client(server.url, retries=1)
    data = os.urandom(200_000)
    digest = put_blob(server, data)
    server.store.sticky[f"{PREFIX}cas/{digest}"] = fault
    dest = tmp_path / "blob"
    assert rc.get_cas(digest, len(data), dest) is False
    assert not dest.exists() and no_temp_files(tmp_path)
    assert rc.stats.as_dict()["corrupt"] == 1
    # Only a body that broke off is worth another attempt; a complete wrong body is not.
    assert server.count("GET") == (2 if fault == "truncate" else 1)


def test_expected_size_mismatch_is_a_miss(server, tmp_path):
    rc = client(server.url)
    data = b"x" * 5000
    digest = put_blob(server, data)
    dest = tmp_path / "blob"
    assert rc.get_cas(digest, len(data) + 1, dest) is False
    assert rc.get_cas(digest, len(data) - 1, dest) is False
    assert not dest.exists()
    assert rc.get_cas(digest, len(data), dest) is True


def test_truncated_once_then_good_is_retried(server, tmp_path):
    rc = client(server.url, retries=2)
    data = os.urandom(100_000)
    digest = put_blob(server, data)
    server.store.faults[f"{PREFIX}cas/{digest}"] = ["truncate"]
    assert rc.get_cas(digest, len(data), tmp_path / "blob") is True
    assert rc.stats.as_dict()["retries"] == 1


# ---- retries and errors ------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["500", "503", "429"])
def test_transient_statuses_are_retried(server, fault):
    rc = client(server.url, retries=3)
    key = "cd" * 32
    server.store.objects[f"ac/{key}"] = b"rec"
    server.store.faults[f"{PREFIX}ac/{key}"] = [fault, fault]
    assert rc.get_ac(key) == b"rec"
    assert server.count("GET") == 3
    assert rc.stats.as_dict()["retries"] == 2


def test_persistent_500_raises_with_url_after_bounded_attempts(server):
    rc = client(server.url, retries=2)
    key = "ef" * 32
    server.store.sticky[f"{PREFIX}ac/{key}"] = "500"
    with pytest.raises(RemoteCacheError) as ei:
        rc.get_ac(key)
    assert f"{server.url}ac/{key}" in str(ei.value) and "500" in str(ei.value)
    assert ei.value.status is None and not ei.value.connection
    assert server.count("GET") == 3
    assert rc.available  # an HTTP error does not disable the client
    assert rc.stats.as_dict()["errors"] == 1


def test_400_fails_at_once_with_server_message(server):
    rc = client(server.url, retries=3)
    key = "12" * 32
    server.store.sticky[f"{PREFIX}ac/{key}"] = "400"
    with pytest.raises(RemoteCacheError, match="HTTP 400.*bad request from fake"):
        rc.put_ac(key, b"x")
    assert server.count("PUT") == 1


def test_stalled_server_times_out_in_bounded_time(server):
    rc = client(server.url, timeout=0.3, retries=1)
    key = "34" * 32
    server.store.sticky[f"{PREFIX}ac/{key}"] = "hang"
    t0 = time.monotonic()
    with pytest.raises(RemoteCacheError, match="(?i)timed? ?out"):
        rc.get_ac(key)
    assert time.monotonic() - t0 < 2.0


def test_connection_refused_fails_fast_then_stays_off(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = client(f"http://127.0.0.1:{port}/cache/", retries=2)
    t0 = time.monotonic()
    with pytest.raises(RemoteCacheError) as ei:
        rc.get_ac("56" * 32)
    assert ei.value.connection and f"127.0.0.1:{port}" in str(ei.value)
    assert time.monotonic() - t0 < 1.0
    assert not rc.available
    t1 = time.monotonic()
    results = rc.fetch_blobs([(f"{i:064x}", 1, tmp_path / str(i)) for i in range(20)])
    assert time.monotonic() - t1 < 0.5
    assert {r.outcome for r in results} == {Outcome.ERROR}


# ---- read-only mode ----------------------------------------------------------------------------

def test_read_only_never_sends_put(server, tmp_path):
    rc = client(server.url, upload=False)
    src = tmp_path / "f"
    src.write_bytes(b"y" * 4096)
    digest = sha(b"y" * 4096)
    assert rc.put_ac("78" * 32, b"rec") is False
    assert rc.put_cas(digest, src) is Outcome.SKIPPED
    assert [r.outcome for r in rc.upload_blobs([(digest, src)] * 3)] == [Outcome.SKIPPED] * 3
    assert rc.get_ac("78" * 32) is None
    assert server.count("PUT") == 0 and not server.store.objects


# ---- zstd --------------------------------------------------------------------------------------

def test_zstd_both_ways_with_a_server_that_speaks_it(zserver, tmp_path):
    rc = client(zserver.url)
    data = b"vulnerability evidence " * 20_000
    src = tmp_path / "src"
    src.write_bytes(data)
    digest = sha(data)
    assert rc.put_cas(digest, src) is Outcome.UPLOADED
    puts = [h for m, p, h in zserver.store.requests if m == "PUT" and digest in p]
    assert puts[-1]["Content-Encoding"] == "zstd"
    assert puts[-1]["X-Digest-SizeBytes"] == str(len(data))
    assert zserver.store.objects[f"cas/{digest}"] == data
    assert rc.get_cas(digest, len(data), tmp_path / "out") is True
    assert (tmp_path / "out").read_bytes() == data
    s = rc.stats.as_dict()
    assert s["zstd_uploads"] == 1 and s["zstd_downloads"] == 1
    assert s["bytes_up"] < len(data) // 10 and s["bytes_down"] < len(data) // 10
    assert s["bytes_up_raw"] == s["bytes_down_raw"] == len(data)


def test_zstd_probe_falls_back_on_a_plain_file_server(server, tmp_path):
    rc = client(server.url)
    data = b"evidence " * 10_000
    src = tmp_path / "src"
    src.write_bytes(data)
    digest = sha(data)
    assert rc.put_cas(digest, src) is Outcome.UPLOADED
    assert server.store.objects[f"cas/{digest}"] == data  # stored verbatim, uncompressed
    # The probe blob was repaired: whatever sits at its key is what its key says.
    probes = [k for k in server.store.objects if k != f"cas/{digest}"]
    assert len(probes) == 1
    assert sha(server.store.objects[probes[0]]) == probes[0].split("/")[1]
    assert rc.stats.as_dict()["zstd_uploads"] == 0
    rc.put_cas(digest, src)  # the probe runs once
    assert server.count("PUT", probes[0]) == 2


def test_compression_off_sends_identity(zserver, tmp_path):
    rc = client(zserver.url, compression="off")
    data = b"z" * 50_000
    src = tmp_path / "src"
    src.write_bytes(data)
    digest = sha(data)
    rc.put_cas(digest, src)
    assert rc.get_cas(digest, len(data), tmp_path / "out")
    assert all("Content-Encoding" not in h for m, _, h in zserver.store.requests if m == "PUT")
    assert rc.stats.as_dict()["zstd_downloads"] == 0


def test_upload_of_a_file_that_does_not_match_its_sha_fails(server, tmp_path):
    rc = client(server.url, compression="off")
    src = tmp_path / "src"
    src.write_bytes(b"actual content")
    with pytest.raises(RemoteCacheError, match="local file content has sha256"):
        rc.put_cas(sha(b"claimed content"), src)


# ---- batches -----------------------------------------------------------------------------------

def test_fetch_blobs_in_parallel_keeps_order_and_bounds(server, tmp_path):
    rc = client(server.url, max_parallel=4)
    server.store.delay = 0.05
    blobs = [os.urandom(1000 + i) for i in range(16)]
    items = []
    for i, data in enumerate(blobs):
        digest = sha(data)
        if i % 4 != 3:  # every fourth blob is missing
            server.store.objects[f"cas/{digest}"] = data
        items.append((digest, len(data), tmp_path / f"b{i}"))
    server.store.sticky[f"{PREFIX}cas/{items[5][0]}"] = "corrupt"
    t0 = time.monotonic()
    results = rc.fetch_blobs(items)
    elapsed = time.monotonic() - t0
    assert [r.sha256 for r in results] == [it[0] for it in items]
    expected = [Outcome.MISS if i % 4 == 3 else Outcome.CORRUPT if i == 5 else Outcome.HIT
                for i in range(16)]
    assert [r.outcome for r in results] == expected
    assert 2 <= server.store.max_in_flight <= 4
    assert elapsed < 16 * 0.05  # really ran in parallel
    for i, r in enumerate(results):
        assert (tmp_path / f"b{i}").exists() == (r.outcome is Outcome.HIT)


def test_upload_blobs_reports_per_blob(server, tmp_path):
    rc = client(server.url, max_parallel=3, compression="off")
    items = []
    for i in range(6):
        p = tmp_path / f"u{i}"
        p.write_bytes(bytes([i]) * 100)
        items.append((sha(p.read_bytes()), p))
    server.store.sticky[f"{PREFIX}cas/{items[2][0]}"] = "400"
    results = rc.upload_blobs(items)
    assert [r.outcome for r in results] == [Outcome.UPLOADED] * 2 + [Outcome.ERROR] + [Outcome.UPLOADED] * 3
    assert isinstance(results[2].error, RemoteCacheError)


# ---- configuration, auth, TLS ------------------------------------------------------------------

@pytest.mark.parametrize("env,url_auth,expected", [
    ({"STELLA_REMOTE_CACHE_TOKEN": "t0k"}, "", "Bearer t0k"),
    ({"STELLA_REMOTE_CACHE_USER": "ci", "STELLA_REMOTE_CACHE_PASSWORD": "s3cret"}, "",
     "Basic " + base64.b64encode(b"ci:s3cret").decode()),
    ({}, "ci:p%40ss@", "Basic " + base64.b64encode(b"ci:p@ss").decode()),
])
def test_auth_headers(server, env, url_auth, expected):
    server.store.require_auth = expected
    url = server.url.replace("http://", "http://" + url_auth)
    rc = client(url, env=env)
    assert rc.get_ac("9a" * 32) is None
    wrong = client(server.url, env={})
    with pytest.raises(RemoteCacheError, match="HTTP 401") as ei:
        wrong.get_ac("9a" * 32)
    assert "STELLA_REMOTE_CACHE_TOKEN" in str(ei.value)


def test_credentials_in_url_are_redacted_from_errors(server):
    server.store.require_auth = "Bearer nope"
    url = server.url.replace("http://", "http://alice:hunter2@")
    rc = client(url)
    with pytest.raises(RemoteCacheError) as ei:
        rc.get_ac("9b" * 32)
    assert "hunter2" not in str(ei.value) and "alice" not in str(ei.value)
    assert "hunter2" not in repr(rc)


def test_bad_urls_and_keys():
    with pytest.raises(RemoteCacheError, match="http:// or https://"):
        RemoteCache.from_url("ftp://example/cache", env={})
    with pytest.raises(RemoteCacheError, match="query"):
        RemoteCache.from_url("http://example/cache?x=1", env={})
    with pytest.raises(RemoteCacheError, match="STELLA_REMOTE_CACHE_CA"):
        RemoteCache.from_url("https://example/", env={"STELLA_REMOTE_CACHE_CA": "/nonexistent.pem"})
    rc = RemoteCache.from_url("http://example:1234/prefix", env={})
    assert rc.base_url == "http://example:1234/prefix/"
    with pytest.raises(ValueError):
        rc.get_ac("ABC")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stella test cache")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_custom_ca(tmp_path):
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = FakeServer(tls=ctx)
    try:
        rc = client(srv.url, env={"STELLA_REMOTE_CACHE_CA": str(cert)})
        assert rc.put_ac("aa" * 32, b"over tls") is True
        assert rc.get_ac("aa" * 32) == b"over tls"
        untrusting = client(srv.url, env={})
        with pytest.raises(RemoteCacheError, match="TLS error.*STELLA_REMOTE_CACHE_CA"):
            untrusting.get_ac("aa" * 32)
    finally:
        srv.stop()


def test_handle_error_warns_once_unless_required(server):
    err = RemoteCacheError("boom http://x/", url="http://x/")
    warnings: list[str] = []
    rc = client(server.url)
    rc.handle_error(err, warnings.append)
    rc.handle_error(err, warnings.append)
    assert len(warnings) == 1 and "boom" in warnings[0]
    strict = client(server.url, required=True)
    with pytest.raises(RemoteCacheError):
        strict.handle_error(err, warnings.append)


def test_without_fsync_still_verifies(server, tmp_path):
    rc = client(server.url, fsync=False)
    data = os.urandom(5000)
    digest = put_blob(server, data)
    server.store.faults[f"{PREFIX}cas/{digest}"] = ["corrupt"]
    assert rc.get_cas(digest, len(data), tmp_path / "b") is False
    assert rc.get_cas(digest, len(data), tmp_path / "b") is True
    assert (tmp_path / "b").read_bytes() == data
