"""Cron schedules and retention: the service's own housekeeping thread.

Schedules: `[profiles."//pkg:t"] schedule = "0 */6 * * *"` (croniter; a sixth field is seconds).
Every tick computes each schedule's latest due slot and hands it to `Store.advance_schedule`,
which in one transaction records the slot and enqueues one run: a slot is taken once whichever
node (or restart) sees it first; after downtime the missed slots make ONE run (only the latest slot
is due, the stored slot just moves to it); a profile with a run still queued or running skips the
slot (never two at once).

Retention: every `retention_interval_seconds`, finished runs older than their profile's
`retention_days` are deleted (with events, files and idempotency keys); their blobs become
garbage for `stella-build cache gc`.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Callable

from croniter import croniter

from stella_build.service.db import utcnow
from stella_build.service.metrics import Metrics, log


def latest_slot(expression: str, now: dt.datetime) -> dt.datetime:
    """The most recent time ≤ now that `expression` fires at (UTC)."""
    it = croniter(expression, now + dt.timedelta(microseconds=1))
    return it.get_prev(dt.datetime).astimezone(dt.timezone.utc)


class Housekeeper:
    def __init__(self, store, config, kind_of_profile: Callable[[str], str], metrics: Metrics, *,
                 interval: float = 1.0, clock: Callable[[], dt.datetime] = utcnow):
        self.store = store
        self.config = config
        self.kind_of_profile = kind_of_profile  # label → kind name (raises for a missing profile)
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    def schedule_tick(self, now: dt.datetime | None = None) -> list[tuple[str, str, str | None]]:
        """Enqueue what is due at `now`; [(profile, outcome, run id or None)] for every schedule."""
        now = now or self.clock()
        out = []
        for label, section in sorted(self.config.profiles.items()):
            if not section.schedule:
                continue
            try:
                kind = self.kind_of_profile(label)
            except Exception as exc:  # a schedule naming a missing or broken profile: say so, go on
                log("scheduled profile cannot be loaded", logging.WARNING, profile=label, error=str(exc))
                out.append((label, "profile-error", None))
                continue
            slot = latest_slot(section.schedule, now)
            run, outcome = self.store.advance_schedule(label, slot, tenant=section.schedule_tenant,
                                                       kind=kind, sign="key" if section.schedule_sign else None)
            if run is not None:
                self.metrics.submitted.labels(label, run.tenant, "schedule").inc()
                log("scheduled run queued", run_id=run.id, profile=label, tenant=run.tenant,
                    status="queued", slot=slot.isoformat())
            elif outcome == "busy":
                log("scheduled slot skipped: the previous run is still active", profile=label,
                    slot=slot.isoformat())
            out.append((label, outcome, run.id if run is not None else None))
        return out

    def prune(self, now: dt.datetime | None = None) -> int:
        removed = self.store.prune(self.config.retention_days, now or self.clock())
        if removed:
            log("retention pruned runs", pruned_runs=removed)
        return removed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="housekeeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.schedule_tick()
                if time.monotonic() - self._last_prune >= self.config.service.retention_interval_seconds:
                    self._last_prune = time.monotonic()
                    self.prune()
            except Exception:
                logging.getLogger("stella_build.service").exception("housekeeping error")
            self._stop.wait(self.interval)
