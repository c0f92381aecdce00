"""The dask executor against a real cluster: `dask scheduler`, two `dask worker` processes and
bazel-remote, all on 127.0.0.1 (docs/scale-out.md).

Each worker runs the venv's Python in its own empty working directory, with PYTHONPATH not pointing
at the workspace (only, for the version test, at an edited copy of the package), its own TMPDIR and
worker cache. A missing tool (bazel-remote, the `distributed` package) skips on a developer
machine and FAILS under CI=true (tests/interop/conftest.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, assemble_package, make_workspace, output_digests, run_cli
from tests.interop.cache_servers import bazel_remote_cache, free_port  # noqa: F401 (fixture)

pytestmark = pytest.mark.interop

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())
# A representative subset of the golden targets: OSV sources and shards, the json:raw bundle, the
# Trivy shards and the bbolt database; the whole set would take longer than this file's 3-minute
# budget on a loaded 2-core machine (actions are hermetic: what differs by executor is the
# transport, which these cover).
TARGETS = ["//profiles:json-raw", "//profiles:trivy-db"]
# The failure tests build one target (9 actions: 4 shards, 4 raw shards, the bundle), enough for a
# worker or the scheduler to die while actions are running, and fast on a loaded 2-core machine.
SMALL = ["//profiles:json-raw"]
_WAIT = 60.0  # seconds: cluster start-up, a worker to pick up work, a build to finish


def _require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        msg = "the 'distributed' package is not installed (pip install 'stella-build[dask]')"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STELLA_", "DASK_")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


class Cluster:
    """A `dask scheduler` and its `dask worker`s (no nanny: SIGKILL really kills the worker)."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[tuple[subprocess.Popen, Path]] = []

    def start_scheduler(self) -> None:
        d = self.root / "scheduler"
        d.mkdir(parents=True)
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-dashboard", "--no-show"],
            cwd=d, env=_clean_env(), stdout=open(d / "log", "wb"), stderr=subprocess.STDOUT)

    def start_worker(self, name: str, pythonpath: Path | None = None) -> Path:
        d = self.root / name
        (d / "cwd").mkdir(parents=True)
        (d / "tmp").mkdir()
        extra = {"TMPDIR": str(d / "tmp"), "STELLA_WORKER_CACHE": str(d / "tmp" / "cache")}
        if pythonpath is not None:
            extra["PYTHONPATH"] = str(pythonpath)
        proc = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--name", name,
             "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
             "--local-directory", str(d / "tmp")],
            cwd=d / "cwd", env=_clean_env(**extra), stdout=open(d / "log", "wb"),
            stderr=subprocess.STDOUT)
        self.workers.append((proc, d))
        return d

    def wait_for_workers(self, n: int) -> dict:
        from distributed import Client
        deadline = time.monotonic() + _WAIT
        while True:
            try:
                with Client(self.address, timeout=5, set_as_default=False) as c:
                    c.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return c.scheduler_info()["workers"]
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"cluster not ready: {self.logs()}") from None
                time.sleep(0.3)

    def wait_processing(self) -> str:
        """The address of a worker that is running a task now (polls the scheduler)."""
        from distributed import Client
        deadline = time.monotonic() + _WAIT
        with Client(self.address, timeout=5, set_as_default=False) as c:
            while time.monotonic() < deadline:
                busy = [w for w, keys in c.processing().items() if keys]
                if busy:
                    return busy[0]
                time.sleep(0.05)
        raise AssertionError("no worker started a task")

    def logs(self) -> str:
        parts = []
        for p in [self.root / "scheduler" / "log"] + [d / "log" for _, d in self.workers]:
            if p.exists():
                parts.append(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in [p for p, _ in self.workers] + ([self.scheduler] if self.scheduler else []):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


@pytest.fixture
def cluster(tmp_path):
    _require_distributed()
    c = Cluster(tmp_path / "cluster")
    c.start_scheduler()
    yield c
    c.stop()


def _build_args(cluster: Cluster, cache_url: str, targets=TARGETS) -> list[str]:
    return ["--executor", f"dask://127.0.0.1:{cluster.port}", "--remote-cache", cache_url,
            "build", *targets, "--output", "json"]


def _assert_golden(ws: Path, targets=TARGETS) -> None:
    for label in targets:
        pkg, name = label[2:].split(":")
        assert output_digests(ws, pkg, name) == GOLDEN[label], label


def _popen_cli(args: list[str], ws: Path, cache: Path) -> subprocess.Popen:
    from tests.conftest import CLI
    return subprocess.Popen([CLI, "--cache-dir", str(cache), *args], cwd=ws, env=_clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cluster_build_is_byte_identical_to_golden(tmp_path, cluster, bazel_remote_cache):
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    workers = cluster.wait_for_workers(2)
    ws = make_workspace(tmp_path / "ws")
    r = run_cli(_build_args(cluster, bazel_remote_cache.url), cwd=ws, cache=tmp_path / "cache",
                env={"STELLA_REMOTE_CACHE_TIMEOUT": "20"}, timeout=150)
    assert r.code == 0, r.stdout + r.stderr + cluster.logs()
    data = r.json()
    actions = data["actions"]
    assert data["executor"] == cluster.address
    assert actions["executed"] > 0 and actions["remote_executed"] == actions["executed"]
    assert sum(actions["workers"].values()) == actions["executed"]
    assert set(actions["workers"]) <= set(workers)
    _assert_golden(ws)
    # Inputs and outputs went through the shared CAS; the workers' working directories stay empty
    # (no file of the client's workspace was ever read or written there).
    assert bazel_remote_cache.count("PUT", "/cas/") > 0
    for _, d in cluster.workers:
        assert list((d / "cwd").iterdir()) == []


def test_worker_killed_mid_build_still_golden(tmp_path, cluster, bazel_remote_cache):
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    workers = cluster.wait_for_workers(2)
    ws = make_workspace(tmp_path / "ws")
    proc = _popen_cli(_build_args(cluster, bazel_remote_cache.url, SMALL), ws, tmp_path / "cache")
    try:
        busy = cluster.wait_processing()
        victim = next(p for p, d in cluster.workers if d.name == workers[busy]["name"])
        victim.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err + cluster.logs()
    data = json.loads(out)
    # the dead worker's task was retried on the other one: every action ran somewhere
    assert data["actions"]["failed"] == 0 and data["actions"]["executed"] == data["actions"]["total"]
    _assert_golden(ws, SMALL)


def test_worker_with_changed_rule_refuses(tmp_path, cluster, bazel_remote_cache):
    from stella_build.engine.actions import implementation_digest

    copy = assemble_package(tmp_path / "edited")
    rule = copy / "stella_build" / "rules" / "sources.py"
    rule.write_text(rule.read_text() + "\n# edited on this worker only\n")
    cluster.start_worker("edited", pythonpath=copy)
    cluster.wait_for_workers(1)
    fn = "stella_build.rules.sources:osv_shard"
    theirs = subprocess.run([sys.executable, "-c", "import sys; from stella_build.engine.actions import "
                             f"implementation_digest as d; print(d({fn!r}))"],
                            env=_clean_env(PYTHONPATH=str(copy)), cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout.strip()
    ours = implementation_digest(fn)
    assert theirs != ours
    ws = make_workspace(tmp_path / "ws")
    r = run_cli(_build_args(cluster, bazel_remote_cache.url, SMALL), cwd=ws, cache=tmp_path / "cache",
                timeout=120)
    assert r.code == 1, r.stdout + r.stderr
    errors = r.json()["errors"]
    mismatch = [e for e in errors if e["reason"] == "executor-version-mismatch"]
    assert mismatch, errors
    assert theirs[:16] in mismatch[0]["message"] and ours[:16] in mismatch[0]["message"]
    assert not (ws / "stella-out" / "profiles" / "json-raw").exists()


def test_scheduler_stopped_mid_build_exit_5_nothing_poisoned(tmp_path, cluster, bazel_remote_cache):
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.wait_for_workers(2)
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "cache"
    proc = _popen_cli(_build_args(cluster, bazel_remote_cache.url, SMALL), ws, cache)
    try:
        cluster.wait_processing()
        cluster.scheduler.kill()
        cluster.scheduler.wait(timeout=10)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 5, out + err
    assert [e["reason"] for e in json.loads(out)["errors"]] == ["executor-unreachable"]
    # nothing poisoned: the local executor against the same local and remote caches gives golden
    # bytes, and the local cache verifies clean
    r = run_cli(["--remote-cache", bazel_remote_cache.url, "build", *SMALL, "--output", "json"],
                cwd=ws, cache=cache, timeout=150)
    assert r.code == 0, r.stdout + r.stderr
    _assert_golden(ws, SMALL)
    v = run_cli(["cache", "verify", "--output", "json"], cwd=ws, cache=cache, timeout=60)
    assert v.code == 0, v.stdout + v.stderr


def test_scheduler_unreachable_falls_back_locally_with_one_warning(tmp_path, bazel_remote_cache):
    _require_distributed()
    ws = make_workspace(tmp_path / "ws")
    port = free_port()  # nothing listens there
    r = run_cli(["--executor", f"dask://127.0.0.1:{port}", "--executor-fallback=local",
                 "--remote-cache", bazel_remote_cache.url, "build", "//profiles:json-raw",
                 "--output", "json"], cwd=ws, cache=tmp_path / "cache",
                env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}, timeout=120)
    assert r.code == 0, r.stdout + r.stderr
    assert r.stderr.count("unreachable") == 1, r.stderr
    assert r.json()["actions"]["remote_executed"] == 0
    _assert_golden(ws, ["//profiles:json-raw"])
