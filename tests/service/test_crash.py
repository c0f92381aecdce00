"""Crash safety on SQLite: `kill -9` of the server mid-run and mid-download, then a restart.

The run is resumed (its finished actions are cache hits) or, past max_attempts, failed with the
reason worker-lost: never lost, never stuck in `running`. A download cut by the crash resumes with
Range and the bytes match the ETag. Cancelling a running run stops its build processes.
The same scenarios run on PostgreSQL in tests/interop/test_service_postgres.py.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import time

import psutil

from tests.conftest import run_cli
from tests.service.harness import seed_big_run, sha256_tree, sse_events, token

SLOW = "//slow:json-raw"


def _children(server) -> list[psutil.Process]:
    try:
        return psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_mid_run(server, client, run_id: str, timeout: float = 60.0) -> dict:
    """Block until the run is running with some but not all actions done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/export/runs/{run_id}").json()
        p = run["progress"]
        if run["status"] == "running" and 0 < p["itemsCompleted"] < p["itemsTotal"]:
            return run
        assert run["status"] in ("queued", "running"), run
        time.sleep(0.05)
    raise AssertionError(f"{run_id} never got mid-run: {run}")


def assert_gone(procs: list[psutil.Process], timeout: float = 10.0) -> None:
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, f"build processes survived the server: {[p.pid for p in alive]}"


def run_crash_scenario(server, tmp_path) -> None:
    """Shared by the SQLite test here and the PostgreSQL interop test."""
    server.start()
    with server.client() as c:
        rid = c.post("/api/export/runs", json={"profile": SLOW}).json()["runId"]
        before = wait_mid_run(server, c, rid)
    workers = _children(server)
    assert workers, "the run has no build process"
    server.kill9()
    assert_gone(workers)  # a dead server leaves no build running (worker.py watches its stdin)
    server.start()
    with server.client() as c:
        run = server.wait_status(c, rid, timeout=120)
        events = sse_events(c, rid)
    assert run["status"] == "succeeded", run
    assert run["attempt"] == 2
    resumed = [d for _, e, d in events if e == "queued" and d.get("resumed")]
    assert resumed and resumed[0]["reason"] == "server-restarted"
    assert run["actions"]["cached"] >= before["progress"]["itemsCompleted"] > 0  # finished work was free
    # the tree is what the CLI builds for the same target
    cli = run_cli(["-q", "build", SLOW], cwd=server.workspace, cache=server.cache, check=True)
    assert cli.code == 0
    tree = sha256_tree(server.workspace / "stella-out" / "slow" / "json-raw")
    assert {o["path"]: o["sha256"] for o in run["outputs"]} == tree



def run_download_crash_scenario(server, tmp_path) -> None:
    """kill -9 in the middle of a download; the restarted server resumes it with Range (curl -C -),
    and so does `stella-build remote runs download` from the partial file it left."""
    server.start()
    size = 48 << 20  # larger than every socket buffer on the way, so the kill really cuts it
    rid, sha = seed_big_run(server, size)
    url = f"{server.url}/api/export/runs/{rid}/archive"
    part = tmp_path / "bundle.tar.gz"
    curl = shutil.which("curl")
    auth = ["-H", f"Authorization: Bearer {token('acme-ci')}"]
    proc = subprocess.Popen([curl, "-s", "--limit-rate", "8M", *auth, "-o", str(part), url])
    deadline = time.monotonic() + 20
    while (not part.exists() or part.stat().st_size < (4 << 20)) and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill9()
    assert proc.wait(30) != 0, "the transfer was not cut"
    cut = part.stat().st_size
    assert 0 < cut < size
    server.start()
    # the client resumes the same partial file (as <name>.part) and verifies the sha256
    dl = tmp_path / "dl"
    dl.mkdir()
    shutil.copyfile(part, dl / "bundle.tar.gz.part")
    out = run_cli(["remote", "--server", server.url, "--token", token("acme-ci"), "runs", "download", rid,
                   "-o", str(dl), "--output", "json"], cwd=tmp_path)
    assert out.code == 0, out.stderr
    assert out.json()["resumed"] == 1 and out.json()["bytes"] == size - cut
    assert hashlib.sha256((dl / "bundle.tar.gz").read_bytes()).hexdigest() == sha
    head = subprocess.run([curl, "-sf", *auth, "-C", "-", "-D", "-", "-o", str(part), url], check=True,
                          capture_output=True, text=True, timeout=60).stdout.lower()
    assert head.startswith("http/1.1 206") and f"content-range: bytes {cut}-{size - 1}/{size}" in head
    assert f'etag: "{sha}"' in head
    assert hashlib.sha256(part.read_bytes()).hexdigest() == sha


def test_kill9_mid_run_nothing_lost(make_server, tmp_path):
    run_crash_scenario(make_server(slow=True, jobs=1), tmp_path)


def test_kill9_mid_download_resumes_with_range(make_server, tmp_path):
    run_download_crash_scenario(make_server(), tmp_path)


def test_interrupted_too_often_fails_with_a_reason(make_server):
    server = make_server(slow=True, jobs=1, service={"max_attempts": 1}).start()
    with server.client() as c:
        rid = c.post("/api/export/runs", json={"profile": SLOW}).json()["runId"]
        wait_mid_run(server, c, rid)
    server.kill9()
    server.start()
    with server.client() as c:
        run = server.wait_status(c, rid, timeout=30)
        events = sse_events(c, rid)
    assert run["status"] == "failed" and run["errorCode"] == "worker-lost" and run["exitCode"] == 1
    assert run["errors"][0]["reason"] == "worker-lost" and run["errors"][0]["target"] == SLOW
    assert events[-1][1] == "failed" and events[-1][2]["errorCode"] == "worker-lost"
    metrics = __import__("httpx").get(server.url + "/metrics").text
    assert 'export_runs_recovered_total{outcome="failed"} 1.0' in metrics
    assert 'export_failures_total{error_code="worker-lost"} 1.0' in metrics


def test_cancel_running_run_stops_its_build(make_server):
    server = make_server(slow=True, jobs=1).start()
    with server.client() as c:
        rid = c.post("/api/export/runs", json={"profile": SLOW}).json()["runId"]
        wait_mid_run(server, c, rid)
        workers = _children(server)
        building = [p for p in workers if "stella_build.service.worker" in " ".join(_cmdline(p)) and _safe_children(p)]
        assert len(building) == 1  # the run's worker (the standby has no action processes)
        building += _safe_children(building[0])
        started = time.monotonic()
        r = c.post(f"/api/export/runs/{rid}/cancel")
        assert r.status_code == 202 and r.json()["cancelRequested"] is True
        run = server.wait_status(c, rid, timeout=30)
        took = time.monotonic() - started
        events = sse_events(c, rid)
    assert run["status"] == "cancelled" and run["outputs"] == []
    assert took < 15, f"cancel took {took:.1f} s"  # about 0.3 s on an idle machine
    kinds = [e for _, e, _ in events]
    assert kinds[-1] == "cancelled" and kinds.count("cancel_requested") == 1  # (progress may fall between)
    assert "succeeded" not in kinds and "artifact_ready" not in kinds
    assert_gone(building)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.NoSuchProcess:
        return []


def _safe_children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
