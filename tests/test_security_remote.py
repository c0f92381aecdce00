"""The remote cache as an attacker's tool: poisoned action-cache records, authenticated records,
signing builds, hostile servers (drip feed, 500s, 401 on upload, oversized and zstd-bomb bodies).

Every server here is a tiny threaded HTTP cache on 127.0.0.1 that shuts itself down after its
lifetime; slow answers are bounded loops that also end when the server stops.
Real servers (bazel-remote with htpasswd) are in tests/interop/test_security_remote_servers.py.
"""
from __future__ import annotations

import copy
import hashlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from stella_build.engine.cache import records as rec
from stella_build.engine.cache.remote import Outcome, RemoteCache, RemoteCacheError
from stella_build.engine.errors import TrustMaterialMissing
from tests.conftest import REPO, make_workspace, output_digests, run_cli
from tests.signed_bundle import PASSWORD, make_keys

TARGET = "//profiles:json-raw"
GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())[TARGET]
PREFIX = "/cache/"


# ---- a hostile cache server ------------------------------------------------------------------

class HostileCache:
    """GET/HEAD/PUT into a dict, plus hostile modes (`mode` may change between requests):

    store        an ordinary cache
    500          every request answers 500
    put-401      reads are served (anonymous reads), every PUT answers 401
    drip-body    GETs answer 200 with a long Content-Length, then one byte per `drip` seconds
    drip-headers GETs send the status line one byte per `drip` seconds
    endless      CAS GETs send a chunked body that never ends (until the server stops)
    zstd-bomb    CAS GETs send `bomb` with Content-Encoding: zstd
    """

    def __init__(self, mode: str = "store", *, lifetime: float = 90.0, drip: float = 1.0,
                 objects: dict[str, bytes] | None = None) -> None:
        self.mode = mode
        self.drip = drip
        self.bomb = b""
        self.objects: dict[str, bytes] = dict(objects or {})
        self.requests: list[tuple[str, str]] = []
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{PREFIX}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self._timer = threading.Timer(lifetime, self.stop)  # bounded: stops by itself
        self._timer.daemon = True
        self._timer.start()

    def count(self, method: str, fragment: str = "") -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and fragment in p)

    def stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()
            self._timer.cancel()
            self.httpd.shutdown()
            self.httpd.server_close()

    def ac_records(self) -> dict[str, dict]:
        return {k[3:]: json.loads(v) for k, v in self.objects.items() if k.startswith("ac/")}

    def record_of(self, action_suffix: str) -> tuple[str, dict]:
        found = [(k, r) for k, r in self.ac_records().items() if r["action"].endswith(action_suffix)]
        assert len(found) == 1, (action_suffix, [r["action"] for r in self.ac_records().values()])
        return found[0]

    def put_record(self, key: str, record: dict) -> None:
        self.objects[f"ac/{key}"] = json.dumps(record).encode()


def _handler(server: HostileCache):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle(self):
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a hostile answer, as it should

        def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, head=False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _key(self) -> str:
            with server.lock:
                server.requests.append((self.command, self.path))
            return self.path[len(PREFIX):]

        def _drip(self, data: bytes) -> None:
            for byte in data:
                if server.stopped.wait(server.drip):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()

        def do_GET(self, head: bool = False):
            key = self._key()
            mode = server.mode
            if mode == "500":
                return self._reply(500, b"broken")
            if mode == "drip-headers":
                self.close_connection = True
                return self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            if mode == "drip-body":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                return self._drip(b"x" * 100000)
            if mode == "endless" and key.startswith("cas/"):
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.close_connection = True
                chunk = b"A" * 65536
                for _ in range(4096):  # at most 256 MiB, or until the client hangs up / we stop
                    if server.stopped.is_set():
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                return
            if mode == "zstd-bomb" and key.startswith("cas/"):
                return self._reply(200, server.bomb, {"Content-Encoding": "zstd"})
            data = server.objects.get(key)
            if data is None:
                return self._reply(404, b"not found", head=head)
            self._reply(200, data, head=head)

        def do_HEAD(self):
            self.do_GET(head=True)

        def do_PUT(self):
            key = self._key()
            body = self._body()
            if server.mode == "500":
                return self._reply(500, b"broken")
            if server.mode == "put-401":
                return self._reply(401, b"authentication required")
            server.objects[key] = body
            self._reply(201)

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

    return Handler


@pytest.fixture
def hostile():
    servers: list[HostileCache] = []

    def make(mode: str = "store", **kw) -> HostileCache:
        servers.append(HostileCache(mode, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


# ---- keys and builds ---------------------------------------------------------------------------

def _ed25519_pair(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / f"{name}.key", directory / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("remote-keys")
    writer, writer_pub = _ed25519_pair(d, "writer")
    attacker, attacker_pub = _ed25519_pair(d, "attacker")
    cosign_key, cosign_pub = make_keys(d / "cosign")
    return {"writer": writer, "writer_pub": writer_pub, "attacker": attacker,
            "attacker_pub": attacker_pub, "cosign": cosign_key}


def build(ws: Path, cache: Path, url: str | None, *extra: str, sign: Path | None = None,
          env: dict | None = None, target: str = TARGET):
    args = ["-q", "-j1", "--output", "json"] + (["--remote-cache", url] if url else []) + list(extra)
    args += (["--sign", str(sign)] if sign else []) + [target]
    env = dict(env or {}, **({"COSIGN_PASSWORD": PASSWORD} if sign else {}))
    return run_cli(args, cwd=ws, cache=cache, env=env, timeout=120)


def ok_json(res) -> dict:
    assert res.code == 0, res.stdout + res.stderr
    return res.json()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, keys) -> dict:
    """One writer build that uploaded every record of TARGET, signed with the writer key; each
    test gets a fresh server holding a copy of that store."""
    root = tmp_path_factory.mktemp("seed")
    server = HostileCache("store", lifetime=120)
    try:
        ws = make_workspace(root / "writer")
        summary = ok_json(build(ws, root / "cache", server.url, "--remote-cache-sign-key", str(keys["writer"])))
        assert summary["actions"]["executed"] == 9 and summary["remote"]["ac_uploads"] == 9
        assert all("signature" in r for r in server.ac_records().values())
        return {"objects": dict(server.objects)}
    finally:
        server.stop()


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


# ---- fault 3: poisoned records ---------------------------------------------------------------

def test_structurally_bad_records_are_rejected_even_without_trust(seeded, hostile, tmp_path):
    """Extra undeclared output, no outputs, an escaping path, a setuid mode, a duplicate, a tree
    member outside its prefix, a missing declared file: each a miss, run locally, golden bytes."""
    server = hostile(objects=seeded["objects"])
    key0, r0 = server.record_of("OsvShard/0")
    blob = r0["outputs"][0]
    tampered = {
        "OsvShard/0": lambda r: r["outputs"].append(dict(blob, path="evil.txt")),
        "OsvShard/1": lambda r: r.update(outputs=[]),
        "OsvShard/3": lambda r: r["outputs"][0].update(mode=0o4755),
        "RawShard/osv-sample-0": lambda r: r["outputs"][0].update(path="out/../../escape.txt"),
        "RawShard/osv-sample-1": lambda r: r["outputs"].append(dict(r["outputs"][0])),
        "RawShard/osv-sample-2": lambda r: r["outputs"][0].update(path="outside/x.jsonl.zst"),
        "#Bundle": lambda r: r.update(outputs=[o for o in r["outputs"] if o["path"] != "bundle.tar.gz.sha256"]),
    }
    for suffix, change in tampered.items():
        key, record = server.record_of(suffix)
        change(record)
        server.put_record(key, record)
    ws = make_workspace(tmp_path / "reader")
    res = build(ws, tmp_path / "cache", server.url)
    summary = ok_json(res)
    assert summary["remote"]["rejected"] == len(tampered) == 7
    assert summary["actions"]["executed"] == 7 and summary["actions"]["remote_hits"] == 2
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN
    assert not (ws / "stella-out" / "escape.txt").exists()
    rejected = [w for w in warnings_of(res.stderr) if "rejected" in w]
    assert len(rejected) == 1  # one line per run, not one per record


def test_trusted_reader_rejects_tampered_unsigned_and_foreign_records(seeded, hostile, tmp_path, keys):
    """With trust configured, a record pointing at other valid blobs (signature kept), an unsigned
    record and one signed by an attacker's key are all misses; the build is golden."""
    server = hostile(objects=seeded["objects"])
    _, shard = server.record_of("RawShard/osv-sample-3")
    other_blob = shard["outputs"][0]
    key, bundle = server.record_of("#Bundle")
    for o in bundle["outputs"]:
        if o["path"] == "bundle.tar.gz.sha256":   # another valid blob the server holds
            o.update(blake3=other_blob["blake3"], sha256=other_blob["sha256"], size=other_blob["size"])
    server.put_record(key, bundle)
    key, unsigned = server.record_of("OsvShard/0")
    del unsigned["signature"]
    server.put_record(key, unsigned)
    key, foreign = server.record_of("OsvShard/1")
    del foreign["signature"]
    foreign["signature"] = rec.RecordSigner.from_file(keys["attacker"]).sign(key, foreign)
    server.put_record(key, foreign)

    ws = make_workspace(tmp_path / "reader")
    res = build(ws, tmp_path / "cache", server.url, "--remote-cache-trust", str(keys["writer_pub"]))
    summary = ok_json(res)
    assert summary["remote"]["rejected"] == 3 and summary["remote"]["unauthenticated"] == 0
    assert summary["actions"]["executed"] == 3 and summary["actions"]["remote_hits"] == 6
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN
    assert not [w for w in warnings_of(res.stderr) if "without authentication" in w]


def test_untrusted_reader_uses_hits_with_one_warning(seeded, hostile, tmp_path):
    """The documented default: no trust configured, an unsigned build uses the (structurally
    valid) records and says once that they are not authenticated."""
    server = hostile(objects=seeded["objects"])
    ws = make_workspace(tmp_path / "reader")
    res = build(ws, tmp_path / "cache", server.url)
    summary = ok_json(res)
    assert summary["actions"]["remote_hits"] == 9 and summary["remote"]["unauthenticated"] == 9
    assert len([w for w in warnings_of(res.stderr) if "without authentication" in w]) == 1
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN


@pytest.fixture(scope="module")
def clean_signed(tmp_path_factory, keys) -> dict[str, str]:
    """Digests of a signed build made without any remote cache (ECDSA RFC 6979: deterministic)."""
    root = tmp_path_factory.mktemp("clean-signed")
    ws = make_workspace(root / "ws")
    ok_json(build(ws, root / "cache", None, sign=keys["cosign"]))
    return output_digests(ws, "profiles", "json-raw")


def test_signing_build_never_signs_unauthenticated_remote_bytes(seeded, hostile, tmp_path, keys,
                                                                  clean_signed):
    """A structurally valid record pointing at another valid blob: an unsigned build without trust
    takes it (the documented limit of an unauthenticated cache), but a later signing build on the
    same local cache neither reuses that adopted entry nor asks the remote: it signs its own bytes."""
    server = hostile(objects=seeded["objects"])
    _, shard = server.record_of("RawShard/osv-sample-3")
    other_blob = shard["outputs"][0]
    key, bundle = server.record_of("#Bundle")
    for o in bundle["outputs"]:
        if o["path"] == "bundle.tar.gz.sha256":
            o.update(blake3=other_blob["blake3"], sha256=other_blob["sha256"], size=other_blob["size"])
    server.put_record(key, bundle)
    ws = make_workspace(tmp_path / "reader")
    cache = tmp_path / "cache"
    poisoned = ok_json(build(ws, cache, server.url))
    assert poisoned["actions"]["remote_hits"] == 9
    gets_before = server.count("GET", "/ac/")

    res = build(ws, cache, server.url, sign=keys["cosign"])
    signed = ok_json(res)
    assert signed["actions"]["remote_hits"] == 0
    assert signed["actions"]["executed"] == signed["actions"]["total"] == 10  # nothing adopted is reused
    assert server.count("GET", "/ac/") == gets_before  # no trust: the remote is not even asked
    assert output_digests(ws, "profiles", "json-raw") == clean_signed
    assert len([w for w in warnings_of(res.stderr) if "this build signs" in w]) == 1


def test_signing_build_uses_records_signed_by_a_trusted_key(seeded, hostile, tmp_path, keys, clean_signed):
    server = hostile(objects=seeded["objects"])
    ws = make_workspace(tmp_path / "reader")
    summary = ok_json(build(ws, tmp_path / "cache", server.url, "--remote-cache-trust",
                            f"{keys['attacker_pub']},{keys['writer_pub']}", sign=keys["cosign"]))
    # The signed bundle (its params name the signer) and the Sign action are not in the seed.
    assert summary["actions"]["total"] == 10
    assert summary["actions"]["remote_hits"] == 8 and summary["actions"]["executed"] == 2
    assert summary["remote"]["unauthenticated"] == 0
    assert output_digests(ws, "profiles", "json-raw") == clean_signed


def test_bad_local_entries_are_dropped_on_read_and_by_cache_verify(tmp_path):
    from stella_build.engine.cache.index import Index

    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    ok_json(build(ws, cache, None))

    def damage(suffix: str, change) -> None:
        index = Index(cache)
        try:
            for key, result, _ in index.all_results():
                if result["action"].endswith(suffix):
                    change(result)
                    index.put_result(key, result, index.get_key_record(key), result["action"])
                    return
            raise AssertionError(suffix)
        finally:
            index.close()

    damage("#Bundle", lambda r: r.update(outputs=[]))
    damage("OsvShard/2", lambda r: r["outputs"].append(dict(r["outputs"][0], path="extra.jsonl")))
    verify = run_cli(["cache", "verify", "--output", "json"], cwd=ws, cache=cache)
    assert verify.code == 3, verify.stdout + verify.stderr
    removed = verify.json()["bad_results_removed"]
    assert sorted(b["action"].rsplit("#", 1)[1] for b in removed) == ["Bundle", "OsvShard/2"]
    assert run_cli(["cache", "verify"], cwd=ws, cache=cache).code == 0
    assert ok_json(build(ws, cache, None))["actions"]["executed"] == 2

    # The same damage met by a build instead: dropped on read, re-run, golden bytes, exit 0.
    damage("#Bundle", lambda r: r["outputs"].append(dict(r["outputs"][0], path="bundle.tar.gz.extra")))
    res = build(ws, cache, None)
    summary = ok_json(res)
    assert summary["actions"]["executed"] == 1 and summary["actions"]["cached"] == 8
    assert any("dropped the local cache entry" in w for w in warnings_of(res.stderr))
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN
    assert run_cli(["cache", "verify"], cwd=ws, cache=cache).code == 0


def test_missing_or_unusable_keys_fail_before_building(tmp_path, keys):
    ws = make_workspace(tmp_path / "ws")
    res = build(ws, tmp_path / "cache", "http://127.0.0.1:9/cache/", "--remote-cache-trust",
                str(tmp_path / "nope.pub"))
    assert res.code == 4
    assert res.json()["errors"][0]["reason"] == "remote-cache-key-missing"
    (tmp_path / "bad.pub").write_text("not a key")
    res = build(ws, tmp_path / "cache", "http://127.0.0.1:9/cache/",
                env={"STELLA_REMOTE_CACHE_TRUST": str(tmp_path / "bad.pub")})
    assert res.code == 4 and res.json()["errors"][0]["reason"] == "remote-cache-key-unusable"
    # a cosign key is encrypted: refused as a cache writer key, by name
    res = build(ws, tmp_path / "cache", "http://127.0.0.1:9/cache/", "--remote-cache-sign-key",
                str(keys["cosign"]))
    assert res.code == 4 and res.json()["errors"][0]["reason"] == "remote-cache-key-unusable"
    assert res.json()["errors"][0]["file"] == str(keys["cosign"])
    assert not (ws / "stella-out").exists()


# ---- record checks and signatures (unit) ---------------------------------------------------

def _out(path: str, mode: int = 0o644, size: int = 3) -> dict:
    return {"path": path, "blake3": "b" * 64, "sha256": "5" * 64, "size": size, "mode": mode}


@pytest.mark.parametrize("outputs,problem", [
    ([_out("a"), _out("t/x/y")], None),
    ([_out("a")], None),                                       # an empty tree is fine
    ([], "declared output 'a' is missing"),
    ([_out("a"), _out("b")], "'b' was not declared"),
    ([_out("a"), _out("t/")], "not a normalized"),
    ([_out("a"), _out("t")], "'t' was not declared"),
    ([_out("a"), _out("t/../a")], "not a normalized"),
    ([_out("a"), _out("t//x")], "not a normalized"),
    ([_out("a"), _out("/t/x")], "not a normalized"),
    ([_out("a"), _out("t/./x")], "not a normalized"),
    ([_out("a"), _out("a")], "listed twice"),
    ([_out("a", mode=0o4755)], "mode"),
    ([_out("a", size=-1)], "size"),
    ([_out("a", size=True)], "size"),
    ([dict(_out("a"), src="/etc/passwd")], "exactly the fields"),
    ([dict(_out("a"), blake3="B" * 64)], "blake3"),
    ("a", "not a list"),
])
def test_outputs_must_be_exactly_the_declared_ones(outputs, problem):
    got = rec.outputs_problem(outputs, ["a", "t/"])
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def _ecdsa_pair(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = directory / "ec.key", directory / "ec.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_signature_binds_the_action_key_and_every_field(tmp_path, keys, kind):
    priv, pub = (keys["writer"], keys["writer_pub"]) if kind == "ed25519" else _ecdsa_pair(tmp_path)
    signer = rec.RecordSigner.from_file(priv)
    trust = rec.TrustedKeys.from_files([pub])
    key, other_key = "1" * 64, "2" * 64
    result = {"action": "//p:t#A", "outputs": [_out("a")], "stats": {"n": 1.5}}
    wire = rec.to_wire(key, dict(result, origin="local", seconds=0.1), signer)
    record, signature = rec.from_wire(wire)
    assert "origin" not in json.loads(wire)                     # local details never travel
    assert trust.verify(key, record, signature) == signer.keyid
    assert trust.verify(other_key, record, signature) is None   # no replay under another key
    for change in (lambda r: r["outputs"][0].update(sha256="6" * 64),
                   lambda r: r["stats"].update(n=2), lambda r: r.update(action="//p:t#B")):
        forged = copy.deepcopy(record)
        change(forged)
        assert trust.verify(key, forged, signature) is None
    assert rec.TrustedKeys.from_files([keys["attacker_pub"]]).verify(key, record, signature) is None
    assert trust.verify(key, record, None) is None
    assert trust.verify(key, record, dict(signature, alg="none")) is None


def test_key_loading_errors_name_the_file(tmp_path, keys):
    with pytest.raises(TrustMaterialMissing) as ei:
        rec.TrustedKeys.from_files([tmp_path / "missing.pub"])
    assert ei.value.reason == "remote-cache-key-missing" and ei.value.errors[0].file == str(tmp_path / "missing.pub")
    with pytest.raises(TrustMaterialMissing) as ei:
        rec.RecordSigner.from_file(keys["writer_pub"])   # a public key is not a writer key
    assert ei.value.reason == "remote-cache-key-unusable"


# ---- fault 6: hangs and slow failure ---------------------------------------------------------

def test_drip_feed_cannot_hang_a_build(hostile, tmp_path):
    """One byte every 5 s never trips a 6 s read timeout; the total deadline stops the request,
    the breaker disables the remote, the build finishes locally, golden, exit 0, one warning."""
    server = hostile("drip-body", drip=5.0)
    ws = make_workspace(tmp_path / "ws")
    t0 = time.monotonic()
    res = build(ws, tmp_path / "cache", server.url, "--remote-cache-timeout", "6")
    elapsed = time.monotonic() - t0
    summary = ok_json(res)
    assert elapsed < 15, elapsed
    assert summary["remote"]["deadlines"] == 1 and summary["remote"]["breaker_open"] == 1
    assert summary["actions"]["executed"] == 9
    assert server.count("GET") == 1   # the breaker: no request after the deadline
    assert len(warnings_of(res.stderr)) == 1 and "timed out" in res.stderr
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN


def test_drip_fed_headers_with_remote_required_fail_fast(hostile, tmp_path):
    server = hostile("drip-headers", drip=1.0)
    ws = make_workspace(tmp_path / "ws")
    t0 = time.monotonic()
    res = build(ws, tmp_path / "cache", server.url, "--remote-cache-timeout", "2", "--remote-required")
    assert time.monotonic() - t0 < 15
    assert res.code == 1, res.stdout + res.stderr
    assert [e["reason"] for e in res.json()["errors"]] == ["remote-cache-failed"]


def test_server_answering_500_is_disabled_after_three_failed_requests(hostile, tmp_path):
    server = hostile("500")
    ws = make_workspace(tmp_path / "ws")
    t0 = time.monotonic()
    res = build(ws, tmp_path / "cache", server.url)
    summary = ok_json(res)
    assert time.monotonic() - t0 < 15
    assert summary["remote"]["errors"] == 3 and summary["remote"]["retries"] == 9
    assert summary["remote"]["breaker_open"] == 1 and server.count("GET") == 12
    assert server.count("PUT") == 0   # nothing uploaded to a disabled remote
    warns = warnings_of(res.stderr)
    assert len(warns) == 1 and "500" in warns[0]
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN

    res = build(ws, tmp_path / "cache2", server.url, "--remote-required")
    assert res.code == 1 and [e["reason"] for e in res.json()["errors"]] == ["remote-cache-failed"]


def test_deadline_covers_a_drip_fed_body_that_read_timeouts_miss(hostile):
    server = hostile("drip-body", drip=0.5)
    rc = RemoteCache.from_url(server.url, timeout=2.0, env={})
    assert rc.deadline == 2.0   # the default deadline is the timeout
    t0 = time.monotonic()
    with pytest.raises(RemoteCacheError) as ei:
        rc.get_ac("ab" * 32)
    assert 1.9 < time.monotonic() - t0 < 4
    assert ei.value.deadline and not rc.available
    with pytest.raises(RemoteCacheError, match="disabled for the rest of this run"):
        rc.get_ac("cd" * 32)
    assert server.count("GET") == 1


def test_breaker_error_budget_counts_failures_that_are_not_in_a_row(hostile):
    server = hostile("store")
    server.objects["ac/" + "11" * 32] = b"{}"
    rc = RemoteCache.from_url(server.url, retries=0, max_failures=3, error_budget=3, env={})
    for _ in range(3):
        server.mode = "500"
        with pytest.raises(RemoteCacheError):
            rc.get_ac("22" * 32)
        server.mode = "store"
        if rc.available:
            assert rc.get_ac("11" * 32) == b"{}"   # a success resets the run, not the budget
    assert not rc.available and rc.stats.as_dict()["breaker_open"] == 1


# ---- fault 5: blob bodies bounded by the declared size ---------------------------------------

def test_endless_blob_body_is_cut_after_the_declared_size(hostile, tmp_path):
    server = hostile("endless")
    rc = RemoteCache.from_url(server.url, retries=0, env={})
    t0 = time.monotonic()
    assert rc.get_cas("ab" * 32, 1000, tmp_path / "blob") is False
    assert time.monotonic() - t0 < 2
    assert not (tmp_path / "blob").exists() and not list(tmp_path.iterdir())
    stats = rc.stats.as_dict()
    assert stats["corrupt"] == 1 and stats["bytes_down"] <= 1000 + 2 * 65536


def test_oversized_content_length_is_refused_before_reading(hostile, tmp_path):
    server = hostile("store")
    data = os.urandom(5000) + b"tail"
    digest = hashlib.sha256(data[:5000]).hexdigest()
    server.objects[f"cas/{digest}"] = data          # more bytes than the record declares
    rc = RemoteCache.from_url(server.url, retries=0, env={})
    assert rc.get_cas(digest, 5000, tmp_path / "blob") is False
    assert rc.stats.as_dict()["bytes_down"] == 0


_BOMB_SCRIPT = textwrap.dedent("""
    import json, sys
    from stella_build.engine.cache.remote import RemoteCache
    rc = RemoteCache.from_url(sys.argv[1], retries=0, env={})
    ok = rc.get_cas("cd" * 32, 4096, sys.argv[2])
    # VmHWM, not getrusage(): ru_maxrss survives execve on Linux, so a child spawned from a large
    # pytest worker reports the worker's peak; VmHWM is this process image's own high-water mark.
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"ok": ok, "corrupt": rc.stats.as_dict()["corrupt"], "maxrss_mib": hwm_kib / 1024}))
""")


def test_zstd_bomb_costs_no_more_memory_than_the_declared_size(hostile, tmp_path):
    """32 KiB of zstd that expands to 1 GiB, declared as a 4 KiB blob: decoded through a bounded
    stream reader, the download stops after 4 KiB + 1 byte (before: one decompress() call
    materialized the whole GiB). Measured in a fresh process: peak RSS well under 256 MiB."""
    import zstandard

    comp = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = bytes(1 << 20)
    server = hostile("zstd-bomb")
    server.bomb = b"".join(comp.compress(zeros) for _ in range(1024)) + comp.flush()
    assert len(server.bomb) < 64 << 10
    proc = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, server.url, str(tmp_path / "blob")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False and result["corrupt"] == 1
    assert result["maxrss_mib"] < 256, result


# ---- extra: a failed upload is never silent --------------------------------------------------

def test_failed_upload_warns_or_fails_when_required(hostile, tmp_path):
    server = hostile("put-401")
    ws = make_workspace(tmp_path / "ws")
    res = build(ws, tmp_path / "cache", server.url)
    summary = ok_json(res)
    warns = warnings_of(res.stderr)
    assert len(warns) == 1 and "HTTP 401" in warns[0] and "--remote-upload=false" in warns[0]
    assert summary["remote"]["ac_uploads"] == 0
    # The breaker opens at the 3rd failed request; only requests already in flight on the 8
    # upload connections still arrive (before: every blob and record was tried, 26 failures).
    assert summary["remote"]["breaker_open"] == 1
    assert server.count("PUT") <= 1 + 2 + 8

    res = build(ws, tmp_path / "cache2", server.url, "--remote-required")
    assert res.code == 1, res.stdout + res.stderr
    assert [e["reason"] for e in res.json()["errors"]] == ["remote-cache-failed"]

    pushed = run_cli(["--remote-cache", server.url, "cache", "push-all", "--output", "json", TARGET],
                     cwd=ws, cache=tmp_path / "cache", timeout=120)
    assert pushed.code == 1, pushed.stdout + pushed.stderr
    assert [e["reason"] for e in pushed.json()["errors"]] == ["remote-cache-failed"]
    assert "401" in pushed.stderr


def test_push_all_signs_records_and_skips_unauthenticated_adoptions(seeded, hostile, tmp_path, keys):
    """push-all with a writer key signs what this machine built; records it adopted from a remote
    without a trusted signature are not laundered into signed ones."""
    source = hostile(objects=seeded["objects"])
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    ok_json(build(ws, cache, source.url))                      # 9 unauthenticated adoptions
    target = hostile("store")
    pushed = run_cli(["--remote-cache", target.url, "--remote-cache-sign-key", str(keys["writer"]),
                      "cache", "push-all", "--output", "json", TARGET], cwd=ws, cache=cache, timeout=120)
    assert pushed.code == 0, pushed.stderr
    assert (pushed.json()["actions_uploaded"], pushed.json()["actions_skipped"]) == (0, 9)
    assert not target.ac_records()
