"""The worker side of the dask executor: what runs inside a `dask worker` process.

`run_remote_action(payload)` receives only digests and the action's declared shape (never a path
of the client's machine, never a secret in clear), checks that this worker runs the same stella-build code
and byte-affecting libraries as the client, fetches every input by SHA-256 from the shared store
into its own cache (`$STELLA_WORKER_CACHE`, default `<tmp>/stella-build-worker-<uid>/<pid>`),
verifies its BLAKE3 digest, runs the action with `sandbox.run_action` in a spawned, scrubbed
process (exactly as the local executor does), uploads the outputs and returns the result record.

Payload: {key, id, label, fn, params, source_date_epoch, outputs, implementation, libraries,
python, store (URL), timeout (s), inputs: [[sandbox name, blake3, sha256, size, tree root|None]],
and for an action allowed to hold its secrets remotely: sealed_secrets (age ciphertext, sealed.py)}.
The worker opens sealed secrets with its identity (`STELLA_WORKER_AGE_IDENTITY`) into a private
directory `<worker cache>/secrets/<sandbox name>/` (0700, files 0600), removed when the action
ends; without an identity, or when it is not the recipient, it refuses the action
(`executor-secrets-no-identity`, `executor-secrets-undecryptable`) and the client runs it itself.
Result: run_action's record plus "worker" (this worker's address); errors as
{"error": {message, file, field, reason}} with reasons `executor-version-mismatch`,
`executor-blob-missing` (an input is not in the store: the client uploads again and resubmits),
`executor-upload-failed` and `executor-worker-misconfigured` (STELLA_WORKER_CAS_MAX is not a size).

The per-process cache is bounded (scratch.py: `STELLA_WORKER_CAS_MAX`, default 2 GiB, LRU
eviction after each action, never a blob of a running action) and removed when the worker closes
(a Dask WorkerPlugin's teardown, installed by the first action; atexit outside a Dask worker).
"""
from __future__ import annotations

import itertools
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
_STORES: dict[str, Any] = {}
_EXECUTOR = None
_SEQ = itertools.count()
_SCRATCH = None  # this process's scratch.WorkerScratch, made by the first action
_succeeded = 0  # actions this process ran to a result (worker_stats)


def worker_identity() -> dict[str, Any]:
    """What the worker runs: {"python": "3.11", "libraries": {...}} (implementation digests are
    per action function, see `compatibility_problem`)."""
    from stella_build.engine.encode.archive import library_versions
    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "libraries": library_versions()}


def compatibility_problem(payload: dict[str, Any]) -> str | None:
    """None when this process would produce the same bytes as the client for this action; else a
    message naming both versions (implementation digest of the action's code, Python, libraries)."""
    from stella_build.engine.actions import implementation_digest
    mine = implementation_digest(payload["fn"])
    if mine != payload["implementation"]:
        return (f"worker {_address()} runs different stella-build code for {payload['fn']}: "
                f"implementation {mine[:16]}… on the worker, {payload['implementation'][:16]}… on "
                "the client; deploy the same stella-build version on every worker")
    ident = worker_identity()
    if ident["python"] != payload["python"]:
        return (f"worker {_address()} runs Python {ident['python']}, the client Python "
                f"{payload['python']}")
    for name, version in sorted((payload.get("libraries") or {}).items()):
        here = ident["libraries"].get(name)
        if here is not None and here != version:
            return (f"worker {_address()} has {name} {here}, the client {name} {version}: "
                    "byte-affecting library versions must match (requirements.lock)")
    return None


def run_remote_action(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one action on this worker (see the module doc); never raises for action failures.

    The action's input blobs are pinned in this worker's scratch CAS for the whole run (another
    thread's eviction cannot take them); when it ends its inputs and outputs count as used and
    the scratch is evicted down to its cap."""
    from stella_build.engine.executors.scratch import ScratchConfigError
    try:
        scratch = _scratch()
    except ScratchConfigError as exc:
        return _error(f"worker {_address()}: {exc}", "executor-worker-misconfigured")
    inputs = [row[1] for row in payload.get("inputs") or ()]
    scratch.pin(inputs)
    result: dict[str, Any] | None = None
    try:
        result = _run(payload)
        return result
    except Exception as exc:  # a worker-side bug or a full disk: a failed action, not a crash
        import traceback
        return _error(f"worker {_address()}: {type(exc).__name__}: {exc}", "executor-worker-error",
                      traceback=traceback.format_exc())
    finally:
        _settle(scratch, inputs, result)


def worker_stats() -> dict[str, Any]:
    """This worker process's counters, for tests and operators (`client.run(worker_stats)`):
    {"succeeded": actions run to a result, "dir": its scratch directory, and scratch.stats():
    "bytes" kept, "files", "evicted_files", "evicted_bytes", "actions" settled, "cap"}; only
    {"succeeded": n} before its first action."""
    out: dict[str, Any] = {"succeeded": _succeeded}
    if _SCRATCH is not None:
        out.update(_SCRATCH.stats(), dir=str(_SCRATCH.root))
    return out


def _settle(scratch, inputs: list[str], result: dict[str, Any] | None) -> None:
    """After one action: mark its blobs used, unpin its inputs, evict down to the cap. Never
    raises (eviction is housekeeping: it must not turn a good result into an error)."""
    global _succeeded
    try:
        outputs = [o["blake3"] for o in (result or {}).get("outputs") or ()]
        ok = result is not None and "error" not in result
        scratch.used(inputs + outputs)
        scratch.unpin(inputs)
        scratch.settle(rescan=not ok)  # a failed action may have stored part of its outputs
        if ok:
            with _LOCK:
                _succeeded += 1
    except Exception:  # pragma: no cover - a full disk or a vanished directory: next action retries
        pass


def _scratch():
    """This process's WorkerScratch (created, with its teardown hooks, by the first action)."""
    global _SCRATCH
    from stella_build.engine.executors.scratch import WorkerScratch, cap_from_env
    with _LOCK:
        if _SCRATCH is not None:
            return _SCRATCH
        cap = cap_from_env()  # ScratchConfigError before anything is created
        scratch = _SCRATCH = WorkerScratch(_worker_dir(), cap)
    # a directory whose worker died before its teardown finished is removed by the next one
    scratch.adopt_directory()
    # outside the lock: installing waits on the worker's event loop, whose teardown takes it
    _install_teardown(scratch)
    return scratch


def _install_teardown(scratch) -> None:
    """Remove the per-process directory when this process ends: a WorkerPlugin whose teardown
    Dask calls when the worker closes (SIGTERM, `client.shutdown()`, a LocalCluster closing),
    and atexit for a process that is not a Dask worker (or exits without closing it). A worker
    killed with SIGKILL leaves its directory behind; the next worker process started on this host
    removes it (scratch.remove_stale_siblings, called from `_scratch`)."""
    import atexit
    atexit.register(_teardown, scratch)
    try:
        from distributed import get_worker
        from distributed.utils import sync
        worker = get_worker()
    except Exception:  # not inside a dask worker (unit tests, child.py)
        return
    # plugin_add runs on the worker's event loop; this is a task thread, so wait for it there
    sync(worker.loop, worker.plugin_add, plugin=_teardown_plugin(scratch),
         name="stella-build-worker-scratch")


def _teardown_plugin(scratch):
    from distributed.diagnostics.plugin import WorkerPlugin

    class ScratchTeardown(WorkerPlugin):
        def teardown(self, worker) -> None:
            _teardown(scratch)

    return ScratchTeardown()


def _teardown(scratch) -> None:
    """Stop this process's action pool (its processes work inside the directory), then remove
    the directory. Idempotent: the plugin and atexit may both call it."""
    global _EXECUTOR
    with _LOCK:
        executor, _EXECUTOR = _EXECUTOR, None
    if executor is not None:
        try:
            executor.close()
        except Exception:  # pragma: no cover - a pool already broken by a dying worker
            pass
    scratch.remove()


def _run(payload: dict[str, Any]) -> dict[str, Any]:
    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.encode.digest import file_digests
    from stella_build.engine.executors.blobs import BlobStoreError

    problem = compatibility_problem(payload)
    if problem is not None:
        return _error(problem, "executor-version-mismatch")
    identities = None
    if payload.get("sealed_secrets") is not None:
        from stella_build.engine.executors.sealed import SealError, load_identities
        try:  # refuse before fetching any input: the client runs the action itself
            identities = load_identities()
        except SealError as exc:
            return _error(f"worker {_address()}: {exc}", exc.reason)
    root = _worker_dir()
    cas = Cas(root)
    try:
        store = _store(payload["store"], float(payload.get("timeout") or 10.0))
        wanted = {}
        for _name, b3, sha, size, _tree in payload["inputs"]:
            if not cas.has(b3, size):
                wanted[b3] = (sha, size)
        temps = {b3: cas.tmp / f"fetch-{b3}-{os.getpid()}-{next(_SEQ)}" for b3 in wanted}
        got = store.get_many([(sha, size, str(temps[b3])) for b3, (sha, size) in wanted.items()])
        missing = []
        for (b3, (sha, size)), ok in zip(wanted.items(), got):
            tmp = temps[b3]
            # SHA-256 was checked by the store while the blob streamed; BLAKE3 (the name the
            # action key uses) is checked here before the blob may be staged.
            if ok and file_digests(tmp)[0] == b3:
                cas.adopt(tmp, b3, size)
            else:
                tmp.unlink(missing_ok=True)
                missing.append(sha)
        if missing:
            return _error(f"{len(missing)} input blob(s) missing from the shared store "
                          f"{payload['store']}", "executor-blob-missing", missing=missing)
    except BlobStoreError as exc:
        return _error(f"worker {_address()} cannot read the shared store: {exc}",
                      "executor-blob-missing", missing=[])
    task = {"id": payload["id"], "label": payload["label"], "fn": payload["fn"],
            "params": payload["params"], "source_date_epoch": payload["source_date_epoch"],
            "outputs": payload["outputs"], "cache_dir": str(root), "mode": "build",
            "inputs": [[name, cas.path_str(b3), b3, tree] for name, b3, _sha, _size, tree
                       in payload["inputs"]],
            "sandbox_name": f"{payload['key'][:20]}-remote-{os.getpid()}-{next(_SEQ)}",
            "expected": {}, "secrets": {}}
    if identities is None:
        result = _run_hermetic(task)
    else:
        result = _run_with_secrets(task, payload["sealed_secrets"], identities, root)
    result["worker"] = _address()
    if "error" in result:
        return result
    try:
        store.put_many(sorted({(o["sha256"], cas.path_str(o["blake3"])) for o in result["outputs"]}))
    except (BlobStoreError, OSError) as exc:  # OSError: an output evicted by another thread
        return _error(f"worker {_address()} cannot upload outputs: {exc}", "executor-upload-failed")
    return result


def _run_with_secrets(task: dict[str, Any], sealed: bytes, identities: list, root: Path) -> dict[str, Any]:
    """`_run_hermetic(task)` with the action's secrets opened from `sealed` into a private
    directory that is removed however the action ends."""
    from stella_build.engine.executors.sealed import SealError, open_sealed, remove_opened
    directory = root / "secrets" / task["sandbox_name"]
    try:
        task["secrets"] = open_sealed(sealed, identities, directory)
    except SealError as exc:
        return _error(f"worker {_address()}: {exc}", exc.reason)
    try:
        return _run_hermetic(task)
    finally:
        task["secrets"] = {}
        remove_opened(directory)


def _error(message: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "file": None, "field": None, "reason": reason, **extra},
            "worker": _address()}


def _address() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except Exception:  # not inside a dask worker (unit tests call this directly)
        import socket
        return f"{socket.gethostname()}:{os.getpid()}"


def _worker_dir() -> Path:
    base = os.environ.get("STELLA_WORKER_CACHE")
    root = Path(base) if base else Path(tempfile.gettempdir()) / f"stella-build-worker-{os.getuid()}"
    # one directory per worker process: its own sandboxes and CAS, nothing shared by accident
    root = root / str(os.getpid())
    root.mkdir(parents=True, exist_ok=True)
    return root


def _store(url: str, timeout: float):
    """One store client per URL for the worker's life, replaced once its breaker has tripped (a
    long-lived worker must not stay cut off by one bad minute of the cache server)."""
    from stella_build.engine.executors.blobs import store_for_url
    with _LOCK:
        store = _STORES.get(url)
        remote = getattr(store, "remote", None)
        if store is None or (remote is not None and not remote.available):
            store = _STORES[url] = store_for_url(url, timeout)
        return store


def _run_hermetic(task: dict[str, Any]) -> dict[str, Any]:
    """`sandbox.run_action(task)` in a scrubbed child process: a process pool when this worker may
    start one, else (a daemonic worker process: `dask worker` with its nanny, unless
    DASK_DISTRIBUTED__WORKER__DAEMON=False) one fresh interpreter per action (child.py)."""
    import multiprocessing
    if not multiprocessing.current_process().daemon:
        return _executor().submit(task).result()
    import json
    import subprocess

    from stella_build.engine.sandbox import SCRUBBED_ENV
    proc = subprocess.run([sys.executable, "-m", "stella_build.engine.executors.child"],
                          input=json.dumps(task), capture_output=True, text=True,
                          env=dict(SCRUBBED_ENV), cwd=task["cache_dir"])
    if proc.returncode != 0:
        return _error(f"the action's process exited {proc.returncode}: {proc.stderr[-2000:]}",
                      "rule-bug")
    return json.loads(proc.stdout)


def _executor():
    """A local process pool with as many processes as this dask worker has threads: actions run
    hermetically (scrubbed environment, umask, cwd) without touching the dask worker's process."""
    global _EXECUTOR
    from stella_build.engine.executors.local import LocalExecutor
    with _LOCK:
        if _EXECUTOR is None:
            try:
                from distributed import get_worker
                threads = get_worker().state.nthreads
            except Exception:
                threads = 1
            _EXECUTOR = LocalExecutor(threads, watch_parent=True)
        return _EXECUTOR
