"""Executors: where the scheduler runs an action that missed every cache.

The scheduler (engine/scheduler.py) computes keys, serves hits and hands each ready miss to an
executor (`base.ActionExecutor`: submit a task → a future of its result record). `local` is the
process pool of this machine (the default); `dask` runs actions on a Dask distributed cluster that
shares one content-addressed store with the client (docs/scale-out.md). `distributed` is imported
only by `dask.py`, and only when that executor is selected.
"""
from __future__ import annotations

from stella_build.engine.executors.base import (
    ActionExecutor, ExecutorConfig, parse_executor, parse_fallback,
)

__all__ = ["ActionExecutor", "ExecutorConfig", "parse_executor", "parse_fallback"]
