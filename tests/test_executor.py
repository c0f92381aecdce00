"""The executor seam (engine/executors/): option parsing, the CLI wiring, the dask executor on a
LocalCluster (`--executor dask-local`, its shared-directory CAS), the worker's version check, the
re-run when a blob is missing from the shared store, and the service's `[service] executor`.

The real cluster (`dask scheduler`, `dask worker`, bazel-remote) is tests/interop/test_dask_cluster.py.
"""
from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import pytest

from tests.conftest import REPO, make_workspace, output_digests, run_cli
from tests.interop.cache_servers import free_port

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())


# -- parsing ---------------------------------------------------------------------------------------

def test_parse_executor_values():
    from stella_build.engine.errors import UsageError
    from stella_build.engine.executors import ExecutorConfig, parse_executor

    assert parse_executor(None) == ExecutorConfig("local")
    assert parse_executor("local", "local") == ExecutorConfig("local", None, "local")
    assert parse_executor("dask-local") == ExecutorConfig("dask-local")
    cfg = parse_executor("dask://10.0.0.5:8786")
    assert (cfg.kind, cfg.address, cfg.remote, cfg.describe()) == ("dask", "tcp://10.0.0.5:8786", True,
                                                                   "tcp://10.0.0.5:8786")
    for bad in ("dask://host", "dask://:8786", "dask://h:99999", "ray://h:1", "dask://h:1/x"):
        with pytest.raises(UsageError) as err:
            parse_executor(bad)
        assert err.value.errors[0].reason == "bad-executor"
    with pytest.raises(UsageError) as err:
        parse_executor("local", "remote")
    assert err.value.errors[0].field == "--executor-fallback"


def test_executor_options_are_global_options_before_or_after_the_verb():
    from stella_build.cli.options import hoist_globals

    argv = ["-j1", "build", "--executor", "dask://h:1", "//x", "--executor-fallback=local"]
    assert hoist_globals(argv) == ["-j1", "--executor", "dask://h:1", "--executor-fallback=local",
                                   "build", "//x"]


# -- the CLI ---------------------------------------------------------------------------------------

def test_bad_executor_is_a_usage_error(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    r = run_cli(["--executor", "ray://x:1", "build", "//profiles:json-raw", "--output", "json"],
                cwd=ws, cache=tmp_path / "cache")
    assert r.code == 2, r.stderr
    assert [e["reason"] for e in r.json()["errors"]] == ["bad-executor"]
    assert not (ws / "stella-out").exists()


def test_dask_executor_needs_a_remote_cache(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    r = run_cli(["build", "//profiles:json-raw", "--output", "json"], cwd=ws, cache=tmp_path / "cache",
                env={"STELLA_EXECUTOR": f"dask://127.0.0.1:{free_port()}"})
    assert r.code == 2, r.stdout + r.stderr
    errors = r.json()["errors"]
    assert [(e["reason"], e["field"]) for e in errors] == [("executor-needs-remote-cache", "--remote-cache")]


def test_unreachable_scheduler_exits_5(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    dead_cache = f"http://127.0.0.1:{free_port()}/cache/"
    r = run_cli(["--executor", f"dask://127.0.0.1:{free_port()}", "--remote-cache", dead_cache,
                 "build", "//profiles:json-raw", "--output", "json"], cwd=ws, cache=tmp_path / "cache",
                timeout=120)
    assert r.code == 5, r.stdout + r.stderr
    errors = r.json()["errors"]
    assert [(e["reason"], e["field"]) for e in errors] == [("executor-unreachable", "--executor")]
    assert "Traceback" not in r.stderr
    assert not (ws / "stella-out" / "profiles" / "json-raw").exists()


def test_dask_local_build_is_golden_and_counts_workers(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    r = run_cli(["-j2", "--executor", "dask-local", "build", "//profiles:json-raw", "--output", "json"],
                cwd=ws, cache=tmp_path / "cache", timeout=240)
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()
    actions = data["actions"]
    assert data["executor"] == "dask-local"
    assert actions["executed"] == actions["total"] == actions["remote_executed"] > 0
    assert sum(actions["workers"].values()) == actions["executed"]
    assert all(w.startswith("tcp://127.0.0.1:") for w in actions["workers"])
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN["//profiles:json-raw"]
    # inputs and outputs went through the shared directory store, keyed by SHA-256
    store = tmp_path / "cache" / "executor-cas"
    assert len([p for p in store.iterdir() if not p.name.startswith(".")]) >= actions["executed"]
    # the results were adopted into the local cache: a rebuild runs nothing, on any executor
    again = run_cli(["build", "//profiles:json-raw", "--output", "json"], cwd=ws, cache=tmp_path / "cache")
    assert again.json()["actions"]["executed"] == 0 and again.json()["actions"]["remote_executed"] == 0


# -- the worker's version check --------------------------------------------------------------------

def _payload(**over):
    from stella_build.engine.actions import implementation_digest
    from stella_build.engine.encode.archive import library_versions

    fn = "stella_build.rules.sources:osv_shard"
    base = {"key": "k" * 20, "id": "x", "label": "//p:x", "fn": fn, "params": {}, "source_date_epoch": 0,
            "outputs": [], "implementation": implementation_digest(fn), "libraries": library_versions(),
            "python": "3.11", "store": "file:///nonexistent", "timeout": 1, "inputs": []}
    import sys
    base["python"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    base.update(over)
    return base


def test_worker_refuses_other_code_naming_both_versions():
    from stella_build.engine.executors.worker import compatibility_problem, run_remote_action

    assert compatibility_problem(_payload()) is None
    other = "0123456789abcdef" * 4
    result = run_remote_action(_payload(implementation=other))
    assert result["error"]["reason"] == "executor-version-mismatch"
    ours = _payload()["implementation"]
    assert other[:16] in result["error"]["message"] and ours[:16] in result["error"]["message"]
    libs = dict(_payload()["libraries"], zstd="0.0.1")
    problem = compatibility_problem(_payload(libraries=libs))
    assert "zstd" in problem and "0.0.1" in problem
    assert "Python 2.7" in compatibility_problem(_payload(python="2.7"))


# -- a blob missing from the shared store: upload again, resubmit, else run here -------------------

class _FakeDaskFuture:
    def __init__(self, value):
        self.value = value

    def result(self, timeout=None):
        return self.value

    def done(self):
        return True

    def add_done_callback(self, fn):
        fn(self)

    def cancel(self):
        pass


class _FakeClient:
    status = "running"

    def __init__(self, answers):
        self.answers = list(answers)
        self.payloads = []

    def submit(self, fn, payload, **kw):
        assert kw["pure"] is False and kw["retries"] >= 1
        self.payloads.append(payload)
        return _FakeDaskFuture(self.answers.pop(0))


class _FakeLocal:
    def __init__(self, result):
        self.result = result
        self.tasks = []

    def submit(self, task):
        self.tasks.append(task)
        f = Future()
        f.set_result(self.result)
        return f


def _dask_executor(tmp_path, answers, local_result=None):
    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.executors.base import ExecutorConfig
    from stella_build.engine.executors.dask import DaskExecutor

    local = _FakeLocal(local_result or {"outputs": [], "stats": {}, "seconds": 0})
    ex = DaskExecutor(ExecutorConfig("dask-local"), cache_dir=tmp_path / "c", jobs=1, remote=None,
                      local=local, cas=Cas(tmp_path / "c"))
    ex._client = _FakeClient(answers)
    src = tmp_path / "input.txt"
    src.write_bytes(b"input bytes\n")
    from stella_build.engine.encode.digest import file_digests
    b3, sha, size = file_digests(src)
    task = {"id": "a", "label": "//p:a", "fn": "m:f", "params": {}, "source_date_epoch": 0,
            "outputs": ["out.txt"], "inputs": [["in.txt", str(src), b3, None]],
            "sandbox_name": "s" * 24, "mode": "build", "cache_dir": str(tmp_path / "c"), "expected": {},
            "secrets": {}}
    record = {"implementation": "i" * 64, "libraries": {}, "python": "3.11"}
    return ex, local, task, record, sha


def _output_in_store(ex, tmp_path, data: bytes) -> dict:
    from stella_build.engine.encode.digest import file_digests
    p = tmp_path / "produced"
    p.write_bytes(data)
    b3, sha, size = file_digests(p)
    ex.store.put_many([(sha, str(p))])
    return {"path": "out.txt", "blake3": b3, "sha256": sha, "size": size, "mode": 0o644}


def test_missing_input_blob_is_uploaded_again_and_resubmitted(tmp_path):
    ex, local, task, record, sha = _dask_executor(tmp_path, [])
    out = _output_in_store(ex, tmp_path, b"output\n")
    ex._client.answers = [{"error": {"reason": "executor-blob-missing", "missing": [sha]}, "worker": "w1"},
                          {"outputs": [out], "stats": {}, "seconds": 0.1, "worker": "w1"}]
    # uploaded by an earlier action of this build, then evicted from the shared store
    ex._uploaded.add(sha)
    assert not (ex.store.root / sha).exists()
    result = ex._run(task, record)
    assert result["worker"] == "w1" and result["outputs"] == [out]
    assert (ex.store.root / sha).is_file(), "the input was uploaded again before the resubmission"
    assert len(ex._client.payloads) == 2 and local.tasks == []
    assert ex.local_cas.has(out["blake3"], out["size"])
    # nothing of the client's machine travels: no path, no secret, only digests
    wire = json.dumps(ex._client.payloads[0])
    assert str(tmp_path) not in wire.replace(ex.store.url, "") and "secrets" not in wire
    ex.close()


def test_output_missing_from_the_store_runs_the_action_here(tmp_path):
    good = {"outputs": [], "stats": {}, "seconds": 0}
    ex, local, task, record, _sha = _dask_executor(tmp_path, [], local_result=good)
    ghost = {"path": "out.txt", "blake3": "b" * 64, "sha256": "c" * 64, "size": 3, "mode": 0o644}
    ex._client.answers = [{"outputs": [ghost], "stats": {}, "worker": "w1"},
                          {"outputs": [ghost], "stats": {}, "worker": "w2"}]
    assert ex._run(task, record) is good
    assert local.tasks == [task] and ex.fallback_executed == 1 and ex.remote_executed == 0
    assert not ex.local_cas.has("b" * 64, 3)
    ex.close()


def test_actions_with_secrets_stay_on_the_client(tmp_path):
    ex, local, task, record, _sha = _dask_executor(tmp_path, [])
    ex.submit(task, record, secrets=True).result()
    assert local.tasks == [task] and ex._client.payloads == []
    ex.close()


# -- the service -----------------------------------------------------------------------------------

def test_service_config_executor_field(tmp_path):
    from stella_build.service.config import ServiceConfig

    cfg = ServiceConfig.model_validate({"service": {"executor": "dask://sched.internal:8786",
                                                    "remote_cache": "http://cache:8080/cache/"}})
    assert cfg.service.executor == "dask://sched.internal:8786"
    with pytest.raises(Exception):
        ServiceConfig.model_validate({"service": {"executor": "ray://x"}})


def test_service_run_builds_on_the_cluster(tmp_path):
    from stella_build.service import worker

    class Proto:
        def progress(self, *a):
            pass

    ws = make_workspace(tmp_path / "ws")
    spec = {"run_id": "r1", "workspace": str(ws), "label": "//profiles:json-raw", "selectors": None,
            "sign": None, "public_key": None, "cache_dir": str(tmp_path / "cache"), "jobs": 2,
            "overlay_root": str(tmp_path / "overlays"), "manifest": "manifests/export.json",
            "executor": "dask-local", "remote_cache": None}
    result = worker.run(spec, Proto())
    assert result["status"] == "succeeded", result
    assert result["actions"]["remote_executed"] == result["actions"]["executed"] > 0
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN["//profiles:json-raw"]


def test_daemonic_worker_runs_each_action_in_a_fresh_interpreter(tmp_path, monkeypatch):
    """`dask worker` with its nanny runs daemonic processes, which may not start a pool: the action
    then runs through `python -m stella_build.engine.executors.child` (JSON in, JSON out)."""
    import multiprocessing

    from stella_build.engine.executors import worker

    class Daemonic:
        daemon = True

    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemonic())
    task = {"id": "a", "label": "//p:a", "fn": "builtins:bool", "params": {}, "source_date_epoch": 0,
            "outputs": [], "inputs": [], "cache_dir": str(tmp_path), "mode": "build",
            "sandbox_name": "child-test", "expected": {}, "secrets": {}}
    result = worker._run_hermetic(task)
    assert "error" not in result, result
    assert result["outputs"] == [] and result["stats"] is True
    assert not (tmp_path / "sandbox" / "child-test").exists()  # the sandbox was removed


# -- the worker's scratch directory: bounded (LRU), removed at teardown ---------------------------

def _blob(scratch_root: Path, data: bytes) -> str:
    from stella_build.engine.cache.cas import Cas
    return Cas(scratch_root).put_bytes(data)


def test_worker_scratch_evicts_least_recently_used_and_never_a_pinned_blob(tmp_path):
    import os
    import time

    from stella_build.engine.executors.scratch import WorkerScratch

    root = tmp_path / "1234"
    old, pinned, fresh = (_blob(root, bytes([i]) * 1000) for i in (1, 2, 3))
    memo = root / "memo-v1" / "osv" / "slot.pack"
    memo.parent.mkdir(parents=True)
    memo.write_bytes(b"m" * 500)
    os.utime(memo, (time.time() - 3600,) * 2)  # written an hour ago: older than every blob
    s = WorkerScratch(root, cap=2000)
    s.used([old])
    time.sleep(0.01)
    s.used([pinned])
    time.sleep(0.01)
    s.used([fresh])
    s.pin([pinned])
    s.settle()  # 3000 + 500 bytes > 2000: the memo pack goes first, then `old`
    cas = root / "cas"
    assert not memo.exists() and not (cas / old[:2] / old).exists()
    assert (cas / pinned[:2] / pinned).exists() and (cas / fresh[:2] / fresh).exists()
    assert s.stats()["bytes"] == 2000 and s.stats()["evicted_bytes"] == 1500
    s.settle()
    assert s.stats()["evicted_files"] == 2  # at the cap: nothing more to evict
    # the pinned blob outlives a cap of 0 until its action unpins it, the fresh one does not
    s.cap = 0
    s.settle()
    assert (cas / pinned[:2] / pinned).exists() and not (cas / fresh[:2] / fresh).exists()
    s.unpin([pinned])
    s.settle()
    assert not (cas / pinned[:2] / pinned).exists() and s.stats()["bytes"] == 0


def test_worker_scratch_cap_comes_from_the_environment():
    from stella_build.engine.executors.scratch import DEFAULT_CAP, ScratchConfigError, cap_from_env

    assert cap_from_env({}) == DEFAULT_CAP == 2 << 30
    assert cap_from_env({"STELLA_WORKER_CAS_MAX": "512MiB"}) == 512 << 20
    assert cap_from_env({"STELLA_WORKER_CAS_MAX": "1000"}) == 1000
    assert cap_from_env({"STELLA_WORKER_CAS_MAX": "0"}) == 0
    for bad in ("lots", "-1", "2 parsecs"):
        with pytest.raises(ScratchConfigError):
            cap_from_env({"STELLA_WORKER_CAS_MAX": bad})


def test_worker_with_a_bad_scratch_cap_refuses_actions(monkeypatch, tmp_path):
    from stella_build.engine.executors import worker

    monkeypatch.setattr(worker, "_SCRATCH", None)
    monkeypatch.setenv("STELLA_WORKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STELLA_WORKER_CAS_MAX", "lots")
    result = worker.run_remote_action(_payload())
    assert result["error"]["reason"] == "executor-worker-misconfigured"
    assert "STELLA_WORKER_CAS_MAX" in result["error"]["message"]
    assert not (tmp_path / "cache").exists()  # nothing was created


def test_dask_local_workers_remove_their_scratch_directories(tmp_path):
    """A LocalCluster's workers (with their nannies) close at the end of the build: each removes
    its per-process directory in its WorkerPlugin teardown; the outputs are golden."""
    ws = make_workspace(tmp_path / "ws")
    base = tmp_path / "worker-cache"
    r = run_cli(["-j2", "--executor", "dask-local", "build", "//profiles:json-raw", "--output", "json"],
                cwd=ws, cache=tmp_path / "cache", timeout=240,
                env={"STELLA_WORKER_CACHE": str(base), "STELLA_WORKER_CAS_MAX": "64KiB"})
    assert r.code == 0, r.stdout + r.stderr
    assert r.json()["actions"]["remote_executed"] > 0
    assert output_digests(ws, "profiles", "json-raw") == GOLDEN["//profiles:json-raw"]
    assert base.is_dir(), "the workers used STELLA_WORKER_CACHE"
    assert list(base.iterdir()) == []


def test_worker_removes_directories_left_by_dead_workers_of_this_host(tmp_path):
    """A worker killed with SIGKILL (or whose close timed out) cannot remove its directory: the
    next worker process on the same host does, and leaves alone what it cannot vouch for."""
    import json
    import socket
    import subprocess
    import sys

    import psutil

    from stella_build.engine.executors.scratch import OWNER, WorkerScratch

    def owned(name: str, **owner) -> Path:
        d = tmp_path / name
        (d / "cas" / "ab").mkdir(parents=True)
        (d / "cas" / "ab" / ("ab" + "0" * 62)).write_bytes(b"x")
        (d / OWNER).write_text(json.dumps(owner))
        return d

    host, boot = socket.gethostname(), psutil.boot_time()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    dead = owned("dead", host=host, boot=boot, pid=child.pid, started=started)
    me = psutil.Process()
    alive = owned("alive", host=host, boot=boot, pid=me.pid, started=me.create_time())
    reused = owned("reused", host=host, boot=boot, pid=me.pid, started=me.create_time() - 100)
    elsewhere = owned("elsewhere", host=host + "-other", boot=boot, pid=child.pid, started=started)
    unknown = tmp_path / "unknown"
    (unknown / "cas").mkdir(parents=True)

    scratch = WorkerScratch(tmp_path / "new", cap=1 << 20)
    assert sorted(p.name for p in scratch.adopt_directory()) == ["dead", "reused"]
    assert not dead.exists() and not reused.exists()
    assert alive.is_dir() and elsewhere.is_dir() and unknown.is_dir()
    assert json.loads((tmp_path / "new" / OWNER).read_text())["pid"] == me.pid
