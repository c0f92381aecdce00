"""The run queue on one node: claim queued runs, build each in a worker process, record the end.

Threads: one dispatcher (claims runs while a slot is free, wakes on submit; also requeues runs
whose owner's lease expired) and one thread per running run (feeds the worker its spec, turns
its progress lines into events, renews the lease, enforces cancel and timeout, records the
result). Every state change goes through store.py in a transaction, so after `kill -9` nothing
is lost: the restarted node requeues its own `running` runs at once (`recover(own_only=True)`)
and the worker processes of the dead server have already killed themselves (worker.py).

Workers are started one run ahead ("standby"): a fresh interpreter that has imported the engine
and the rules waits for its spec, so a claimed run does not pay Python's start-up and imports.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stella_build.service.errors import REASON_TIMEOUT, REASON_WORKER_CRASHED
from stella_build.service.metrics import Metrics, log
from stella_build.service.profiles import kind_named

_WORKER = [sys.executable, "-m", "stella_build.service.worker"]
# Environment a run must not inherit from the server: the request alone decides what is signed
# and against which base a delta is built (as `build --sign/--base` does on the command line).
_SCRUB = ("STELLA_SIGNING_KEY", "STELLA_SIGN", "STELLA_MIRROR_BASE")


@dataclass
class RunnerSettings:
    workspace: Path
    cache_dir: Path
    node_id: str
    concurrency: int
    jobs: int
    lease_seconds: float
    max_attempts: int
    run_timeout_seconds: float
    signing_key: Path | None = None
    public_key: Path | None = None
    paused: bool = False
    executor: str | None = None      # [service] executor: None = local (docs/scale-out.md)
    remote_cache: str | None = None  # [service] remote_cache URL (needed by a dask:// executor)


@dataclass
class _Active:
    run_id: str
    proc: subprocess.Popen
    cancel: threading.Event = field(default_factory=threading.Event)


def artifact_type(path: str, kind) -> str:
    """The `type` label of export_artifacts_total for one output file."""
    name = path.rsplit("/", 1)[-1]
    if path == kind.archive:
        return "archive"
    if path == kind.manifest:
        return "manifest"
    if path == kind.provenance:
        return "provenance"
    if name.endswith((".sig", ".sigstore.json", ".dsse.json")) or name == "cosign.pub":
        return "signature"
    if name.endswith(".sha256"):
        return "checksum"
    if path.startswith("oci/") or "/oci/" in path:
        return "oci"
    return "data"


class Runner:
    def __init__(self, store, settings: RunnerSettings, metrics: Metrics):
        self.store = store
        self.s = settings
        self.metrics = metrics
        self._stop = threading.Event()
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._standby: subprocess.Popen | None = None
        self._env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        self.paused = settings.paused

    def pause(self, paused: bool) -> None:
        """Stop (or resume) claiming queued runs on this node; running runs go on (drain mode
        for upgrades, docs/operations/runbook.md)."""
        self.paused = paused
        self.store.notifier.notify()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Requeue (or fail) the runs this node left running, then start dispatching."""
        self._recover(own_only=True)
        t = threading.Thread(target=self._dispatch, name="runner-dispatch", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; kill the running workers (their runs are requeued by the next start of
        this node, or by another node when the lease expires)."""
        self._stop.set()
        self.store.notifier.notify()
        with self._lock:
            active = list(self._active.values())
        for a in active:
            _kill_group(a.proc)
        for t in self._threads:
            t.join(timeout)
        if self._standby is not None:
            _kill_group(self._standby)
            self._standby = None

    def cancel_local(self, run_id: str) -> None:
        """Stop the worker of `run_id` now if it runs on this node (other nodes see the database
        flag within a lease renewal)."""
        with self._lock:
            a = self._active.get(run_id)
        if a is not None:
            a.cancel.set()

    def running(self) -> int:
        with self._lock:
            return len(self._active)

    # -- dispatching ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        seen = -1
        last_recover = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_recover > self.s.lease_seconds / 2:
                    last_recover = time.monotonic()
                    self._recover(own_only=False)
                claimed = False
                if not self.paused and self.running() < self.s.concurrency:
                    run = self.store.claim(self.s.node_id, self.s.lease_seconds)
                    if run is not None:
                        claimed = True
                        self._launch(run)
                if self._standby is None and not self._stop.is_set():
                    self._standby = self._spawn()
                if not claimed:
                    seen = self.store.notifier.wait(seen, timeout=1.0)
            except Exception:  # the database blinked: log, back off, keep the queue alive
                logging.getLogger("stella_build.service").exception("dispatcher error")
                self._stop.wait(1.0)

    def _recover(self, own_only: bool) -> None:
        for run, outcome in self.store.recover(self.s.node_id, self.s.max_attempts, own_only=own_only):
            self.metrics.recovered.labels(outcome).inc()
            log("run recovered after a crash", run_id=run.id, profile=run.profile, tenant=run.tenant,
                status=run.status, outcome=outcome, attempt=run.attempt)
            if outcome != "requeued":
                self._account(run, None)

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(_WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._env,
                                cwd=str(self.s.cache_dir), start_new_session=True, text=True, bufsize=1)

    def _launch(self, run) -> None:
        proc = self._standby if self._standby is not None and self._standby.poll() is None else self._spawn()
        self._standby = None
        active = _Active(run.id, proc)
        with self._lock:
            self._active[run.id] = active
        t = threading.Thread(target=self._execute, args=(run, active), name=f"run-{run.id}", daemon=True)
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    # -- one run --------------------------------------------------------------------------------
    def _spec(self, run) -> dict:
        kind = kind_of_run(run)
        sign = str(self.s.signing_key) if run.sign == "key" and self.s.signing_key else None
        return {"run_id": run.id, "workspace": str(self.s.workspace), "label": run.profile,
                "selectors": run.selectors, "sign": sign,
                "public_key": str(self.s.public_key) if sign and self.s.public_key else None,
                "cache_dir": str(self.s.cache_dir), "jobs": self.s.jobs,
                "overlay_root": str(self.s.cache_dir / "service" / "overlays"), "manifest": kind.manifest,
                "executor": self.s.executor, "remote_cache": self.s.remote_cache}

    def _execute(self, run, active: _Active) -> None:
        try:
            self._drive(run, active)
        except Exception:  # the database failed mid-run: stop the build; recovery requeues the run
            logging.getLogger("stella_build.service").exception("run %s: runner error", run.id)
            _kill_group(active.proc)
            with self._lock:
                self._active.pop(run.id, None)

    def _drive(self, run, active: _Active) -> None:
        proc = active.proc
        lines: queue.Queue = queue.Queue()
        try:
            proc.stdin.write(json.dumps(self._spec(run)) + "\n")
            proc.stdin.flush()
        except OSError:
            pass  # the worker died before reading: seen below as a crash
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        started = time.monotonic()
        next_renew = started + self.s.lease_seconds / 3
        result = None
        stopped_for = None  # "cancelled" | "timeout" | "shutdown"
        while True:
            try:
                line = lines.get(timeout=0.25)
            except queue.Empty:
                line = ""
            if line is None:  # EOF
                break
            if line:
                msg = _parse(line)
                if msg.get("type") == "progress":
                    self.store.progress(run.id, self.s.node_id, int(msg["done"]), int(msg["total"]))
                elif msg.get("type") == "result":
                    result = msg
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + self.s.lease_seconds / 3
                ours, cancel = self.store.renew(run.id, self.s.node_id, self.s.lease_seconds)
                if not ours:
                    stopped_for = stopped_for or "lost"
                if cancel:
                    active.cancel.set()
            if stopped_for is None:
                if active.cancel.is_set():
                    stopped_for = "cancelled"
                elif now - started > self.s.run_timeout_seconds:
                    stopped_for = "timeout"
                elif self._stop.is_set():
                    stopped_for = "shutdown"
                if stopped_for is not None:
                    _kill_group(proc)
        try:
            proc.stdin.close()
        except OSError:
            pass
        code = proc.wait()
        with self._lock:
            self._active.pop(run.id, None)
        if stopped_for in ("shutdown", "lost"):
            return  # requeued by recovery (this node's next start, or the new owner has it)
        if stopped_for == "cancelled":
            final = self.store.finish(run.id, self.s.node_id, status="cancelled", files=[], exit_code=None,
                                      errors=[], actions=None, manifest_sha256=None)
        elif stopped_for == "timeout":
            err = {"reason": REASON_TIMEOUT, "target": run.profile,
                   "message": f"the run exceeded run_timeout_seconds ({self.s.run_timeout_seconds:g} s)"}
            final = self.store.finish(run.id, self.s.node_id, status="failed", files=[], exit_code=1,
                                      errors=[err], actions=None, manifest_sha256=None)
        elif result is None:
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            err = {"reason": REASON_WORKER_CRASHED, "target": run.profile,
                   "message": f"the build process ended without a result ({how})"}
            final = self.store.finish(run.id, self.s.node_id, status="failed", files=[], exit_code=1,
                                      errors=[err], actions=None, manifest_sha256=None)
        else:
            final = self.store.finish(run.id, self.s.node_id, status=result["status"], files=result["files"],
                                      exit_code=result.get("exit_code"), errors=result.get("errors") or [],
                                      actions=result.get("actions"), manifest_sha256=result.get("manifest_sha256"))
            if result.get("verify_failed"):
                self.metrics.verify_failures.labels("publish").inc()
        if final is not None:
            self._account(final, result)

    def _account(self, run, result: dict | None) -> None:
        """Metrics and the JSON log line of a run that reached its final status."""
        m = self.metrics
        kind = kind_of_run(run)
        m.runs.labels(run.profile, run.tenant, run.status).inc()
        duration = ((run.finished_at - run.started_at).total_seconds()
                    if run.finished_at and run.started_at else 0.0)
        m.duration.labels(kind.name).observe(duration)
        if run.status == "failed":
            m.failures.labels(run.error_code or "build-failed").inc()
        if result is not None:
            actions = result.get("actions") or {}
            m.cache_hits.inc(actions.get("cached", 0) + actions.get("remote_hits", 0))
            m.actions_executed.inc(actions.get("executed", 0))
            if run.status == "succeeded":
                m.bytes.labels(run.profile).inc(sum(f["size"] for f in result["files"]))
                for f in result["files"]:
                    m.artifacts.labels(artifact_type(f["path"], kind)).inc()
        log("run finished", run_id=run.id, profile=run.profile, tenant=run.tenant, status=run.status,
            duration_ms=int(duration * 1000), error_code=run.error_code, attempt=run.attempt)


def kind_of_run(run):
    """The profile kind recorded with the run at submit time."""
    return kind_named(run.kind)


def _read_lines(stream, q: queue.Queue) -> None:
    try:
        for line in stream:
            q.put(line)
    except (OSError, ValueError):
        pass
    q.put(None)


def _parse(line: str) -> dict:
    try:
        msg = json.loads(line)
        return msg if isinstance(msg, dict) else {}
    except ValueError:
        return {}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's process group (the worker and the engine's action processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
