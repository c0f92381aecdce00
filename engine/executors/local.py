"""The local executor: today's pool of hermetic worker processes on this machine (`-j`)."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Iterator

from stella_build.engine.sandbox import SCRUBBED_ENV, run_action, worker_init


class LocalExecutor:
    """`jobs` spawned processes (started on the first submit), each initialized by
    `sandbox.worker_init`; every task runs `sandbox.run_action`."""

    name = "local"

    def __init__(self, jobs: int, *, watch_parent: bool = False):
        self.jobs = max(1, jobs)
        # In a dask worker, which its nanny may kill at any time: the pool's processes must not
        # outlive it (an orphan would hold its stdout/stderr and sandbox open forever).
        self.watch_parent = watch_parent
        self._pool: ProcessPoolExecutor | None = None
        self._saved_env: dict[str, str | None] = {}

    def pool(self) -> ProcessPoolExecutor:
        """The process pool, started on first use."""
        if self._pool is None:
            # Spawned workers inherit the environment at spawn time: PYTHONHASHSEED must be set
            # before the interpreter starts, so it is set here for the pool's lifetime.
            for k in ("PYTHONHASHSEED",):
                self._saved_env[k] = os.environ.get(k)
                os.environ[k] = SCRUBBED_ENV[k]
            self._pool = ProcessPoolExecutor(max_workers=self.jobs,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_watching_parent if self.watch_parent
                                             else worker_init,
                                             initargs=(os.getpid(),) if self.watch_parent else ())
        return self._pool

    def submit(self, task: dict[str, Any], record: dict[str, Any] | None = None, *,
               secrets: bool = False) -> "Future[dict]":
        pool = self.pool()
        with _sigint_ignored():  # a worker spawned here starts with SIGINT ignored
            return pool.submit(run_action, task)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._saved_env = {}


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the pool may spawn a worker (it does so inside `submit`): the child
    inherits the disposition across exec, so a Ctrl-C while it imports (before `worker_init`
    installs its quiet handler) cannot print a KeyboardInterrupt traceback. The CLI's own Ctrl-C
    handling is back right after; off the main thread (the service) nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _init_watching_parent(parent: int) -> None:
    """`worker_init`, plus a thread that ends this process once `parent` is gone (re-parented)."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="stella-parent-watch", daemon=True).start()
    worker_init()
