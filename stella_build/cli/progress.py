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

    def __call__(self, event: str, outcome, done: int, total: int) -> None:
        if self.quiet:
            return
        if event == "started":
            self.running += 1
        elif event in ("executed", "failed"):
            self.running -= 1
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw < 0.05 and event != "failed":
                return
            self._last_draw = now
            self.stream.write(f"\r\x1b[K[{done}/{total}] {self.running} running · "
                              f"{now - self.started:5.1f}s · {outcome.spec.id[:80]}")
            self.stream.flush()
        elif event in ("executed", "failed"):
            self.stream.write(f"[{done}/{total}] {event} {outcome.spec.id}\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
