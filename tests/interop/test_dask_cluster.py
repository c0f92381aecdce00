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
# The shared corpora (PyPA, Go, RustSec, Alpine...: 7,000+ files) built in the same invocation:
# golden/corpora.json locks their json:raw and trivy:db bytes.
GOLDEN_CORPORA = json.loads((REPO / "golden" / "corpora.json").read_text())
# Every target of profiles/Exportfile, in one invocation on one cluster for the module: none of
# them needs a key (signing actions would run on the client anyway), and golden/digests.json
# locks the bytes of each bundle among them (tools/golden.py).
TARGETS = ["//profiles/..."]
# The module cluster's workers keep at most this much in their scratch directory between actions
# (STELLA_WORKER_CAS_MAX): far less than the ~4 MB of blobs the profiles build moves through each
# of them, so eviction runs after nearly every action while the outputs must stay golden.
TINY_CAP = 256 * 1024
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

    def start_worker(self, name: str, pythonpath: Path | None = None, **env: str) -> Path:
        d = self.root / name
        (d / "cwd").mkdir(parents=True)
        (d / "tmp").mkdir()
        extra = {"TMPDIR": str(d / "tmp"), "STELLA_WORKER_CACHE": str(d / "tmp" / "cache"), **env}
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

    def worker_stats(self) -> dict[str, dict]:
        """{worker address: engine/executors/worker.py worker_stats()} of every worker now."""
        from distributed import Client

        from stella_build.engine.executors.worker import worker_stats
        with Client(self.address, timeout=10, set_as_default=False) as c:
            return c.run(worker_stats)

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


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """One bazel-remote for the module's shared cluster (function-scoped tests start their own)."""
    from tests.interop.cache_servers import start_bazel_remote
    from tests.interop.conftest import require_tool
    server = start_bazel_remote(require_tool("bazel-remote"), tmp_path_factory.mktemp("bazel-remote"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def profiles_build(tmp_path_factory, module_cache):
    """`//profiles/...` built once on a cluster of two workers whose scratch cap is TINY_CAP:
    (cluster, workspace, the build's JSON summary, {worker address: worker_stats() after})."""
    _require_distributed()
    root = tmp_path_factory.mktemp("profiles")
    c = Cluster(root / "cluster")
    c.start_scheduler()
    try:
        c.start_worker("w1", STELLA_WORKER_CAS_MAX=str(TINY_CAP))
        c.start_worker("w2", STELLA_WORKER_CAS_MAX=str(TINY_CAP))
        c.wait_for_workers(2)
        ws = make_workspace(root / "ws", packages=("profiles", "corpora"), shared=True)
        r = run_cli(_build_args(c, module_cache.url, TARGETS + sorted(GOLDEN_CORPORA)), cwd=ws,
                    cache=root / "cache", env={"STELLA_REMOTE_CACHE_TIMEOUT": "20"}, timeout=420)
        assert r.code == 0, r.stdout + r.stderr + c.logs()
        yield c, ws, r.json(), c.worker_stats()
    finally:
        c.stop()


def _build_args(cluster: Cluster, cache_url: str, targets=TARGETS) -> list[str]:
    return ["--executor", f"dask://127.0.0.1:{cluster.port}", "--remote-cache", cache_url,
            "build", *targets, "--output", "json"]


def _assert_golden(ws: Path, targets, golden: dict = GOLDEN) -> None:
    """Every file of each target's stella-out/ directory has its golden SHA-256, and no other
    file is there (as tools/golden.py --check compares)."""
    for label in targets:
        pkg, name = label[2:].split(":")
        assert output_digests(ws, pkg, name) == golden[label], label


def _popen_cli(args: list[str], ws: Path, cache: Path) -> subprocess.Popen:
    from tests.conftest import CLI
    return subprocess.Popen([CLI, "--cache-dir", str(cache), *args], cwd=ws, env=_clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cluster_builds_every_profile_and_the_corpora_byte_identical_to_golden(profiles_build, module_cache):
    cluster, ws, data, after = profiles_build
    actions = data["actions"]
    assert data["executor"] == cluster.address
    # every golden target was built by this one invocation, each file byte-identical
    assert set(GOLDEN) | set(GOLDEN_CORPORA) <= set(data["targets"]), data["targets"]
    _assert_golden(ws, sorted(GOLDEN))
    _assert_golden(ws, sorted(GOLDEN_CORPORA), GOLDEN_CORPORA)
    # a cold cache, no key: every action missed and ran on a worker (none stayed on the client)
    assert actions["failed"] == 0 and actions["executed"] == actions["total"] > 40
    assert actions["remote_executed"] == actions["executed"]
    # the per-worker counts are what the workers themselves counted (worker_stats), and the
    # work was spread over both workers
    assert set(actions["workers"]) == set(after), (actions["workers"], list(after))
    assert actions["workers"] == {w: s["succeeded"] for w, s in after.items()}
    assert all(n > 0 for n in actions["workers"].values()), actions["workers"]
    assert sum(actions["workers"].values()) == actions["remote_executed"]
    # Inputs and outputs went through the shared CAS; the workers' working directories stay empty
    # (no file of the client's workspace was ever read or written there).
    assert module_cache.count("PUT", "/cas/") > 0
    for _, d in cluster.workers:
        assert list((d / "cwd").iterdir()) == []


def test_worker_scratch_stays_under_its_cap(profiles_build):
    """STELLA_WORKER_CAS_MAX: after the build above (outputs golden, see the test before), what
    each worker keeps in its per-process scratch directory is at most the cap, and the cap was
    binding (blobs were evicted), not merely never reached."""
    cluster, _ws, _data, after = profiles_build
    dirs = {d.name: d for _, d in cluster.workers}
    for address, stats in after.items():
        scratch = Path(stats["dir"])
        # each worker's own directory: <its STELLA_WORKER_CACHE>/<pid>/
        assert scratch.parent in {d / "tmp" / "cache" for d in dirs.values()}, scratch
        on_disk = sum(p.stat().st_size for p in scratch.rglob("*") if p.is_file())
        assert stats["cap"] == TINY_CAP
        assert on_disk <= TINY_CAP, (address, on_disk)
        assert stats["bytes"] <= on_disk  # the bookkeeping does not undercount what is there
        assert stats["evicted_files"] > 0 and stats["evicted_bytes"] > TINY_CAP, stats
        # what it saw pass through was several times the cap
        assert stats["evicted_bytes"] + on_disk > 2 * TINY_CAP, stats


def test_worker_removes_its_scratch_directory_when_it_closes(tmp_path, cluster, bazel_remote_cache):
    d = cluster.start_worker("w1")
    cluster.wait_for_workers(1)
    ws = make_workspace(tmp_path / "ws")
    r = run_cli(_build_args(cluster, bazel_remote_cache.url, SMALL), cwd=ws, cache=tmp_path / "cache",
                timeout=120)
    assert r.code == 0, r.stdout + r.stderr + cluster.logs()
    scratch = Path(next(iter(cluster.worker_stats().values()))["dir"])
    assert any((scratch / "cas").rglob("*")), "the worker kept the action's blobs between actions"
    proc, _ = cluster.workers[0]
    proc.terminate()  # SIGTERM: `dask worker` closes gracefully, its plugins' teardown runs
    proc.wait(timeout=30)
    assert not scratch.exists(), list(scratch.rglob("*"))
    assert (d / "tmp" / "cache").is_dir()  # only the per-process directory, not STELLA_WORKER_CACHE


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


def test_signing_on_the_cluster_with_remote_secrets(tmp_path, cluster, bazel_remote_cache):
    """`remote_secrets = true` and `--executor-recipient`: the Sign action runs on the worker that
    holds the age identity (remote_executed counts it), no warning, and the signed bundle is
    byte-identical to the same build with the local executor (RFC 6979 signatures)."""
    import pyrage

    from tests.signed_bundle import PASSWORD, signed_workspace, write_public_test_keys

    identity = pyrage.x25519.Identity.generate()
    id_file = tmp_path / "worker.agekey"
    id_file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    cluster.start_worker("w1", STELLA_WORKER_AGE_IDENTITY=str(id_file))
    cluster.wait_for_workers(1)
    write_public_test_keys(tmp_path / "keys")
    ws = signed_workspace(tmp_path / "ws", tmp_path / "keys")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + "remote_secrets = true\n")  # appended to [targets.signed]
    env = {"COSIGN_PASSWORD": PASSWORD}
    r = run_cli(["--executor-recipient", str(identity.to_public()),
                 *_build_args(cluster, bazel_remote_cache.url, ["//profiles:signed"])],
                cwd=ws, cache=tmp_path / "cache-cluster", env=env, timeout=150)
    assert r.code == 0, r.stdout + r.stderr + cluster.logs()
    actions = r.json()["actions"]
    assert actions["failed"] == 0 and actions["remote_executed"] == actions["executed"] == actions["total"]
    assert "recipient" not in r.stderr and "AGE_IDENTITY" not in r.stderr, r.stderr
    on_cluster = output_digests(ws, "profiles", "signed")
    assert any(p.endswith(".sigstore.json") for p in on_cluster), on_cluster
    for _, d in cluster.workers:  # no decrypted key left behind in the worker's cache
        assert not any(p.name.startswith("secret-") for p in (d / "tmp").rglob("*"))
    import shutil
    shutil.rmtree(ws / "stella-out")
    r = run_cli(["build", "//profiles:signed", "--output", "json"], cwd=ws,
                cache=tmp_path / "cache-local", env=env, timeout=150)
    assert r.code == 0, r.stdout + r.stderr
    assert output_digests(ws, "profiles", "signed") == on_cluster
