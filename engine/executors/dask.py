"""The dask executor: run cache misses on a Dask distributed cluster sharing one CAS.

What goes over the wire (docs/scale-out.md): before an action is submitted the client uploads each
input blob (by SHA-256) to the shared store; the Dask task carries only the action's key, function
name, params, declared outputs, the key record's implementation digest / Python / library versions
and the inputs' (sandbox name, BLAKE3, SHA-256, size). No path of the client's machine, no secret
in clear: an action holding secrets (signing) runs on the client's local pool unless its target
sets `remote_secrets = true` and the client knows the workers' age recipient
(`STELLA_EXECUTOR_RECIPIENT`); then its secrets, and the bytes of the key files they name, travel
only as one age ciphertext for that recipient (sealed.py). A worker that cannot open it refuses
the action and the client runs it here after one warning. The worker (worker.py)
fetches and verifies the inputs, runs the action, uploads the outputs and returns the result
record; the client downloads every output into its local CAS, verifying BLAKE3 (the store
verified SHA-256), before the scheduler records the result, exactly as for a remote cache hit.

Failures: a worker killed mid-action is Dask's to retry (`retries`); a blob missing from the store
makes the client upload again and resubmit once, then run the action here (never a wrong output);
an unreachable scheduler raises NetworkRequired (`executor-unreachable`, exit 5) or, with
fallback "local", runs everything left here after one warning.

`distributed` is imported lazily, on the first action that must run.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from stella_build.engine.errors import NetworkRequired, UsageError
from stella_build.engine.executors.base import ExecutorConfig
from stella_build.engine.executors.blobs import BlobStoreError, DirectoryStore, RemoteStore
from stella_build.engine.executors.local import LocalExecutor
from stella_build.engine.executors.sealed import RECIPIENT_ENV, SealError, parse_recipient, seal

# Reasons a worker returns when the store, not the action, failed: upload again, resubmit once.
_STORE_REASONS = frozenset({"executor-blob-missing", "executor-upload-failed"})
# Reasons a worker returns when it cannot open an action's sealed secrets: run it here instead
# (one warning), so a cluster whose workers lack the identity still signs, just not remotely.
_SECRET_REASONS = frozenset({"executor-secrets-no-identity", "executor-secrets-undecryptable"})


class DaskExecutor:
    """Runs misses on the cluster of `config` ("dask" address or a "dask-local" LocalCluster).

    `remote`: the build's RemoteCache (required for "dask"; "dask-local" without one shares
    `<cache_dir>/executor-cas/` with its workers). `local`: the client's own pool, for actions
    with secrets and for the fallback. `cas`: the client's engine.cache.cas.Cas, where outputs
    are adopted. `retries`: Dask retries of a task whose worker died.
    `connect_timeout` (s): connecting to the scheduler, and how long a lost connection may last
    before the build gives up on it. `recipient`: the workers' age X25519 recipient ("age1…") to
    seal the secrets of actions whose target allows them remotely (task["secrets_remote"]);
    None: `config.recipient` if the config has one, else $STELLA_EXECUTOR_RECIPIENT, else such
    actions run here. Raises UsageError (exit 2) for a missing/read-only remote or a bad
    recipient (`bad-executor-recipient`)."""

    name = "dask"

    def __init__(self, config: ExecutorConfig, *, cache_dir: Path, jobs: int, remote,
                 local: LocalExecutor, cas, warn: Callable[[str], None] | None = None,
                 retries: int = 3, connect_timeout: float = 10.0, max_in_flight: int = 64,
                 recipient: str | None = None):
        if remote is None and config.kind == "dask":
            raise UsageError("--executor dask://… needs --remote-cache: inputs and outputs travel "
                             "only through the shared content-addressed store",
                             field="--remote-cache", reason="executor-needs-remote-cache")
        if remote is not None and not remote.upload:
            raise UsageError("--executor dask needs a writable remote cache (not --remote-upload=false): "
                             "the client uploads the inputs of every action it submits",
                             field="--remote-upload", reason="executor-needs-remote-cache")
        if recipient is None:
            recipient = getattr(config, "recipient", None) or os.environ.get(RECIPIENT_ENV)
        self.recipient = parse_recipient(recipient)
        self._warned: set[str] = set()
        self._secrets_refused = False  # a worker could not open sealed secrets: sign here from now on
        self.config = config
        self.jobs = max(1, jobs)
        self.local = local
        self.local_cas = cas
        self.warn = warn or (lambda msg: None)
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.store = RemoteStore(remote) if remote is not None else DirectoryStore(
            Path(cache_dir) / "executor-cas")
        self._client = None
        self._cluster = None
        self._down = False  # the cluster was lost and the fallback runs actions here
        self._lock = threading.Lock()
        self._uploaded: set[str] = set()
        self._digests: dict[str, tuple[str, int]] = {}  # blake3 → (sha256, size)
        self._threads = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="stella-dask")
        self.remote_executed = 0
        self.fallback_executed = 0

    # -- connection -------------------------------------------------------------------------
    def _connect(self):
        with self._lock:
            if self._client is not None or self._down:
                return self._client
            try:
                import logging

                from distributed import Client, LocalCluster
            except ImportError:
                raise UsageError("--executor dask needs the 'dask' extra: pip install 'stella-build[dask]'",
                                 field="--executor", reason="executor-unavailable") from None
            try:
                if self.config.kind == "dask-local":
                    import dask
                    # non-daemonic workers may start the hermetic process pool (worker.py)
                    dask.config.set({"distributed.worker.daemon": False})
                    self._cluster = LocalCluster(n_workers=self.jobs, threads_per_worker=1,
                                                 processes=True, dashboard_address=None,
                                                 silence_logs=logging.ERROR)
                    self._client = Client(self._cluster, set_as_default=False)
                else:
                    self._client = Client(self.config.address, timeout=self.connect_timeout,
                                          set_as_default=False)
            except (OSError, TimeoutError) as exc:
                self._lost(exc)
            return self._client

    def _lost(self, exc: BaseException) -> None:
        """The scheduler is unreachable: exit 5, or (fallback) one warning and local execution."""
        where = self.config.describe()
        if self.config.fallback == "local":
            first = not self._down
            self._down = True
            if first:
                self.warn(f"dask scheduler {where} is unreachable ({type(exc).__name__}: {exc}); "
                          "running the remaining actions locally (--executor-fallback=local)")
            return
        raise NetworkRequired(f"dask scheduler {where} is unreachable: {type(exc).__name__}: {exc}",
                              field="--executor", reason="executor-unreachable") from None

    # -- the seam ---------------------------------------------------------------------------
    def submit(self, task: dict[str, Any], record: dict[str, Any], *, secrets: bool = False) -> "Future[dict]":
        if secrets and not self._may_seal(task):  # its secrets never leave this machine
            return self.local.submit(task)
        if self._connect() is None:
            return self._local(task)
        return self._threads.submit(self._run, task, record)

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        try:
            if self._client is not None:
                self._client.close(timeout=5)
            if self._cluster is not None:
                self._cluster.close(timeout=10)
        except Exception:  # closing a client whose scheduler is gone: nothing left to release
            pass
        self._client = self._cluster = None
        self.store.close()

    def _may_seal(self, task: dict[str, Any]) -> bool:
        """Whether an action holding secrets may run on a worker: its target allows it
        (`remote_secrets = true`, task["secrets_remote"]) and there is a recipient to seal to."""
        if not task.get("secrets_remote") or self._secrets_refused:
            return False
        if self.recipient is None:
            self._warn_once("no-recipient",
                            f"{task['label']} allows its signing actions on the cluster "
                            "(remote_secrets = true) but no executor recipient is set: they run "
                            f"here; pass --executor-recipient age1… (or set {RECIPIENT_ENV}; the "
                            "workers' age recipient) to send their secrets sealed")
            return False
        return True

    def _warn_once(self, what: str, message: str) -> None:
        with self._lock:
            if what in self._warned:
                return
            self._warned.add(what)
        self.warn(message)

    # -- one action -------------------------------------------------------------------------
    def _local(self, task: dict[str, Any]) -> "Future[dict]":
        with self._lock:
            self.fallback_executed += 1
        return self.local.submit(task)

    def _run(self, task: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        payload = self._payload(task, record)
        if "error" in payload:
            return payload
        if task.get("secrets"):  # only reached when _may_seal allowed it
            try:
                payload["sealed_secrets"] = seal(task["secrets"], self.recipient)
            except SealError as exc:
                self._warn_once(exc.reason, f"{task['id']}: {exc}; running it here")
                return self._local(task).result()
        for attempt in range(2):
            if self._down:
                break
            self._upload_inputs(task, force=attempt > 0)
            if self._down:
                break
            result = self._execute(payload)
            if result is None:  # the cluster was lost and the fallback is on
                break
            error = result.get("error")
            if error and error.get("reason") in _STORE_REASONS:
                continue  # upload again (a store may have evicted a blob), resubmit once
            if error and error.get("reason") in _SECRET_REASONS:
                self._secrets_refused = True
                # the worker's message names it and its variable, never a key
                self._warn_once(error["reason"], f"{error.get('message')}; running the actions "
                                "holding secrets here for the rest of this build")
                break
            if error:
                return result
            if self._adopt_outputs(result["outputs"]):
                with self._lock:
                    self.remote_executed += 1
                return result
        return self._local(task).result()  # never a wrong output: run it here

    def _payload(self, task: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        from stella_build.engine.encode.digest import file_digests
        inputs = []
        for name, src, b3, tree in task["inputs"]:
            known = self._digests.get(b3)
            if known is None:
                got_b3, sha, size = file_digests(src)
                if got_b3 != b3:
                    return {"error": {"message": f"input changed while the build was running: {src}",
                                      "file": src, "field": None, "reason": "input-changed"}}
                known = self._digests[b3] = (sha, size)
            inputs.append([name, b3, known[0], known[1], tree])
        return {"key": task["sandbox_name"][:20] + uuid.uuid4().hex[:8], "id": task["id"],
                "label": task["label"], "fn": task["fn"], "params": task["params"],
                "source_date_epoch": task["source_date_epoch"], "outputs": task["outputs"],
                "implementation": record["implementation"], "libraries": record["libraries"],
                "python": record["python"], "store": self.store.url,
                "timeout": getattr(getattr(self.store, "remote", None), "timeout", 10.0),
                "inputs": inputs, "_paths": {b3: src for _n, src, b3, _t in task["inputs"]}}

    def _upload_inputs(self, task: dict[str, Any], force: bool) -> None:
        items = {}
        for _name, src, b3, _tree in task["inputs"]:
            sha = self._digests[b3][0]
            if force or sha not in self._uploaded:
                items[sha] = src
        try:
            self.store.put_many(sorted(items.items()))
        except BlobStoreError as exc:
            self._lost_store(exc)
            return
        with self._lock:
            self._uploaded.update(items)

    def _lost_store(self, exc: BaseException) -> None:
        if self.config.fallback == "local":
            self._lost(exc)
            return
        raise NetworkRequired(f"the shared store {self.store.url} failed: {exc}", field="--remote-cache",
                              reason="remote-cache-failed") from None

    def _execute(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        from stella_build.engine.executors.worker import run_remote_action
        client = self._client
        wire = {k: v for k, v in payload.items() if not k.startswith("_")}
        try:
            fut = client.submit(run_remote_action, wire, pure=False, retries=self.retries,
                                key=f"stella-{payload['key']}")
        except Exception as exc:  # the client is closed or cannot reach the scheduler
            self._lost(exc)
            return None
        # Wait on a done-callback, not on `fut.result(timeout=...)`: distributed's timed result()
        # can lose a race between its two timeouts and raise UnboundLocalError.
        finished = threading.Event()
        fut.add_done_callback(lambda _f: finished.set())
        lost_since = None
        while True:
            if finished.wait(0.5) or fut.done():
                try:
                    return fut.result()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # asyncio's CancelledError is a BaseException
                    return self._failed(exc)
            if self._down:
                return None
            if client.status != "running":
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > self.connect_timeout:
                    fut.cancel()
                    self._lost(TimeoutError(f"connection lost for {self.connect_timeout:g} s"))
                    return None
            else:
                lost_since = None

    def _failed(self, exc: BaseException) -> dict[str, Any] | None:
        """The result of a Dask future that raised: an error record, or None (the scheduler was
        lost and the fallback is on; without it `_lost` raises NetworkRequired)."""
        name = type(exc).__name__
        if name == "KilledWorker":  # died `retries`+1 times: an action that kills workers
            return {"error": {"message": f"the action killed {self.retries + 1} dask workers in a "
                                         f"row: {exc}", "file": None, "field": None,
                              "reason": "executor-worker-lost"}}
        if _is_connection_error(exc):
            self._lost(exc)
            return None
        # the task itself raised on the worker (run_remote_action returns errors: a bug there)
        return {"error": {"message": f"dask task failed: {name}: {exc}", "file": None, "field": None,
                          "reason": "executor-worker-error"}}

    def _adopt_outputs(self, outputs: list[dict]) -> bool:
        """Download outputs missing from the local CAS, verify BLAKE3, adopt them. False when one
        is missing from the store or does not match (the caller resubmits or runs it here)."""
        from stella_build.engine.encode.digest import file_digests
        cas = self.local_cas
        wanted = {o["blake3"]: o for o in outputs if not cas.has(o["blake3"], o["size"])}
        temps = {b3: cas.tmp / f"dask-{b3}-{uuid.uuid4().hex[:8]}" for b3 in wanted}
        try:
            got = self.store.get_many([(o["sha256"], o["size"], str(temps[b3]))
                                       for b3, o in wanted.items()])
        except BlobStoreError as exc:
            for t in temps.values():
                t.unlink(missing_ok=True)
            self._lost_store(exc)
            return False
        ok = True
        for (b3, o), hit in zip(wanted.items(), got):
            tmp = temps[b3]
            if hit and file_digests(tmp)[:2] == (b3, o["sha256"]):
                cas.adopt(tmp, b3, o["size"])
            else:
                tmp.unlink(missing_ok=True)
                ok = False
        return ok


def _is_connection_error(exc: BaseException) -> bool:
    """A lost scheduler (closed comm, refused connection, a future cancelled with its client),
    as opposed to an exception raised by the task on a worker."""
    import asyncio
    from concurrent.futures import CancelledError
    try:
        from distributed.comm.core import CommClosedError
    except ImportError:  # pragma: no cover - distributed is installed whenever this runs
        CommClosedError = OSError
    return isinstance(exc, (OSError, CommClosedError, CancelledError, asyncio.CancelledError,
                            TimeoutError))
