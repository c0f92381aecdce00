"""The executor seam: what the scheduler needs from whatever runs its cache misses.

An executor takes a *task* (the dict `sandbox.run_action` reads: fn, params, inputs as
[sandbox name, source path, blake3, tree root], outputs, ...) plus the action's key record, and
returns a `concurrent.futures.Future` whose result is the same result record `run_action` returns:
{"outputs": [{path, blake3, sha256, size, mode}], "stats": {...}, "seconds": float} or
{"error": {message, file, field, reason}}. By the time the future completes, every output blob is
in the client's local CAS (the scheduler writes the index entry). A remote executor adds
"worker": <worker address> so the build can count actions per worker.

A future may also raise a StellaError (e.g. NetworkRequired `executor-unreachable`): the build
stops with that exit code instead of recording a failed action.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from stella_build.engine.errors import UsageError

EXECUTOR_ENV = "STELLA_EXECUTOR"
FALLBACK_ENV = "STELLA_EXECUTOR_FALLBACK"


class ActionExecutor(Protocol):
    """Runs cache misses. `name` is shown in summaries ("local", "dask")."""

    name: str

    def submit(self, task: dict[str, Any], record: dict[str, Any], *, secrets: bool) -> "Future[dict]":
        """Start `task` (its key record `record`); `secrets`: the action holds secrets and must run
        on this machine. Returns a future of the result record described in the module doc."""
        ...

    def close(self) -> None:
        """Stop workers this executor started; wait for running tasks. Idempotent."""
        ...


@dataclass(frozen=True)
class ExecutorConfig:
    """A parsed `--executor` value: kind "local", "dask-local" (a LocalCluster on this machine) or
    "dask" (an existing scheduler at `address`, "tcp://HOST:PORT"); `fallback` "local" runs the
    actions here (one warning) when the cluster cannot be reached, None fails with exit 5."""

    kind: str = "local"
    address: str | None = None
    fallback: str | None = None
    recipient: str | None = None  # workers' age recipient for sealed secrets (sealed.py), "age1…"

    @property
    def remote(self) -> bool:
        return self.kind != "local"

    def describe(self) -> str:
        return self.address if self.kind == "dask" else self.kind


def parse_executor(text: str | None, fallback: str | None = None, *,
                   field: str = "--executor", recipient: str | None = None) -> ExecutorConfig:
    """`local` (default for None/""), `dask-local` or `dask://HOST:PORT` → ExecutorConfig.
    `recipient`: the workers' age recipient (`--executor-recipient`), checked here.

    Raises UsageError (exit 2, reason `bad-executor`) for anything else, naming `field`, and
    (`bad-executor-recipient`) for a recipient that is not `age1…`."""
    from stella_build.engine.executors.sealed import parse_recipient
    value = (text or "").strip()
    fb = parse_fallback(fallback)
    rcpt = (recipient or "").strip() or None
    parse_recipient(rcpt)
    if value in ("", "local"):
        return ExecutorConfig("local", None, fb, rcpt)
    if value == "dask-local":
        return ExecutorConfig("dask-local", None, fb, rcpt)
    if value.startswith("dask://"):
        hostport = value[len("dask://"):].rstrip("/")
        host, sep, port = hostport.rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536 and "/" not in host:
            return ExecutorConfig("dask", f"tcp://{hostport}", fb, rcpt)
    raise UsageError(f"--executor must be local, dask-local or dask://HOST:PORT, got {value!r}",
                     field=field, reason="bad-executor")


def parse_fallback(text: str | None, *, field: str = "--executor-fallback") -> str | None:
    """`local` → "local"; None/""/"none" → None; anything else UsageError `bad-executor`."""
    value = (text or "").strip()
    if value in ("", "none"):
        return None
    if value == "local":
        return "local"
    raise UsageError(f"--executor-fallback must be local or none, got {value!r}", field=field,
                     reason="bad-executor")
