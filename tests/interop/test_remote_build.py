"""Builds sharing a real remote cache (nginx WebDAV, bazel-remote) on 127.0.0.1.

Copy A builds with a cold local cache and uploads; copy B (another path, empty local cache)
executes nothing and produces A's golden bytes. Faults degrade to a correct local build.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, make_workspace, output_digests, run_cli
from tests.interop.cache_servers import (  # noqa: F401 - fixtures are used by name
    bazel_remote_cache, nginx_cache,
)

pytestmark = pytest.mark.interop
GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())["//profiles:json-raw"]
TARGET = "//profiles:json-raw"


@pytest.fixture(params=["nginx", "bazel-remote"])
def server(request):
    return request.getfixturevalue("nginx_cache" if request.param == "nginx" else "bazel_remote_cache")


def _build(ws, cache, url, *extra):
    res = run_cli(["-q", "--output", "json", "--remote-cache", url, *extra, TARGET], cwd=ws, cache=cache)
    assert res.code == 0, res.stderr
    return res.json(), res.stderr


def test_second_machine_executes_nothing(server, tmp_path):
    a = make_workspace(tmp_path / "a")
    first, _ = _build(a, tmp_path / "cache-a", server.url)
    assert first["actions"]["executed"] == 9 and first["remote"]["ac_uploads"] == 9
    b = make_workspace(tmp_path / "elsewhere" / "b")
    second, _ = _build(b, tmp_path / "cache-b", server.url)
    assert second["actions"]["executed"] == 0
    assert second["actions"]["remote_hits"] == 9
    assert output_digests(b, "profiles", "json-raw") == output_digests(a, "profiles", "json-raw") == GOLDEN
    # and B's local cache now holds everything: a third build is purely local
    third, _ = _build(b, tmp_path / "cache-b", server.url)
    assert third["actions"]["cached"] == 9 and third["actions"]["remote_hits"] == 0


def test_read_only_mode_uploads_nothing(server, tmp_path):
    a = make_workspace(tmp_path / "a")
    summary, _ = _build(a, tmp_path / "cache-a", server.url, "--remote-upload=false")
    assert summary["actions"]["executed"] == 9
    assert server.count("PUT") == 0


def test_server_down_degrades_to_local_build_with_one_warning(tmp_path):
    a = make_workspace(tmp_path / "a")
    summary, stderr = _build(a, tmp_path / "c", "http://127.0.0.1:9/cache/")
    assert summary["ok"] and summary["actions"]["executed"] == 9
    assert stderr.count("warning: remote cache unavailable") == 1
    assert output_digests(a, "profiles", "json-raw") == GOLDEN
    required = run_cli(["-q", "--remote-cache", "http://127.0.0.1:9/cache/", "--remote-required", TARGET],
                       cwd=a, cache=tmp_path / "c2")
    assert required.code == 1 and "remote cache required" in required.stderr


def test_corrupted_truncated_and_missing_blobs_are_not_used(nginx_cache, tmp_path):
    a = make_workspace(tmp_path / "a")
    _build(a, tmp_path / "cache-a", nginx_cache.url)
    cas = sorted((nginx_cache.storage).rglob("cas/*"))
    assert len(cas) >= 9
    # corrupt one blob, truncate another, delete a third
    flipped = bytearray(cas[0].read_bytes()); flipped[0] ^= 1; cas[0].write_bytes(bytes(flipped))
    cas[1].write_bytes(cas[1].read_bytes()[:-1] if cas[1].stat().st_size else b"x")
    cas[2].unlink()
    b = make_workspace(tmp_path / "b")
    summary, _ = _build(b, tmp_path / "cache-b", nginx_cache.url, "--remote-upload=false")
    assert summary["ok"]
    assert 1 <= summary["actions"]["executed"] <= 9  # the damaged entries were rebuilt locally
    assert summary["remote"]["corrupt"] >= 1
    assert output_digests(b, "profiles", "json-raw") == GOLDEN


def test_server_returning_500_degrades(tmp_path):
    import http.server
    import threading

    class Fail(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(500); self.end_headers()
        do_PUT = do_HEAD = do_GET

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fail)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        a = make_workspace(tmp_path / "a")
        summary, stderr = _build(a, tmp_path / "c", f"http://127.0.0.1:{srv.server_port}/cache/")
        assert summary["ok"] and summary["actions"]["executed"] == 9
        assert "warning: remote cache unavailable" in stderr
        assert output_digests(a, "profiles", "json-raw") == GOLDEN
    finally:
        srv.shutdown()


def test_push_all_seeds_a_remote(bazel_remote_cache, tmp_path):
    a = make_workspace(tmp_path / "a")
    run_cli(["-q", TARGET], cwd=a, cache=tmp_path / "cache-a", check=True)  # local only
    pushed = run_cli(["--remote-cache", bazel_remote_cache.url, "cache", "push-all", "--output", "json", TARGET],
                     cwd=a, cache=tmp_path / "cache-a", check=True).json()
    assert pushed["actions_uploaded"] == 9
    b = make_workspace(tmp_path / "b")
    summary, _ = _build(b, tmp_path / "cache-b", bazel_remote_cache.url)
    assert summary["actions"]["remote_hits"] == 9 and summary["actions"]["executed"] == 0
