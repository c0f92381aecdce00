"""Progress display: a single updating line on a TTY, plain lines otherwise (both on stderr)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()
        self.running = 0
        self._last_draw = 0.0
        self.workers: dict[str, int] = {}  # remote executor worker → actions it ran

    def __call__(self, event: str, outcome, done: int, total: int) -> None:
        if self.quiet:
            return
        if event == "started":
            self.running += 1
        elif event in ("executed", "failed"):
            self.running -= 1
            worker = getattr(outcome, "worker", None)
            if worker and event == "executed":
                self.workers[worker] = self.workers.get(worker, 0) + 1
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw < 0.05 and event != "failed":
                return
            self._last_draw = now
            on = f" on {len(self.workers)} workers" if self.workers else ""
            self.stream.write(f"\r\x1b[K[{done}/{total}] {self.running} running{on} · "
                              f"{now - self.started:5.1f}s · {outcome.spec.id[:80]}")
            self.stream.flush()
        elif event in ("executed", "failed"):
            worker = getattr(outcome, "worker", None)
            where = f" on {worker}" if worker and event == "executed" else ""
            self.stream.write(f"[{done}/{total}] {event} {outcome.spec.id}{where}\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
