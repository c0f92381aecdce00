"""Every read and write of runs, events, files, idempotency keys and schedule slots.

The run lifecycle is a state machine kept in the database, so any node (or the same node after
`kill -9`) can take over:

    queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled
      │                 │  └─ lease expired / owner restarted ─▶ queued (attempt < max) | failed
      └──cancel──▶ cancelled

Each transition appends an event (`run_events`, numbered per run from 1) in the same transaction,
so the SSE stream (sse.py) replays exactly what happened, from any `Last-Event-ID`.
"""
from __future__ import annotations

import base64
import datetime as dt
import threading
import uuid
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, or_, select

from stella_build.service.db import (
    Database, EventRow, FileRow, IdempotencyRow, RunRow, ScheduleRow, utcnow,
)
from stella_build.service.errors import (
    ERR_CONFLICT, ERR_IDEMPOTENCY, ERR_QUOTA, ERR_VALIDATION, ApiError, REASON_WORKER_LOST, not_found,
)
from stella_build.service.models import ACTIVE, TERMINAL


class Notifier:
    """In-process wake-ups: a version number bumped on every change of any run (SSE streams and
    the runner poll it cheaply and only then ask the database; other nodes' changes are seen by
    their periodic database polls)."""

    def __init__(self):
        self._cond = threading.Condition()
        self.version = 0

    def notify(self) -> None:
        with self._cond:
            self.version += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the version differs from `seen` or `timeout` seconds pass; the version."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != seen, timeout=timeout)
            return self.version


@dataclass
class QuotaExceeded(Exception):
    active: int
    limit: int


def new_run_id() -> str:
    """run-<24 hex>: 28 characters of [a-z0-9-] (the Export Center's id alphabet)."""
    return "run-" + uuid.uuid4().hex[:24]


def iso(t: dt.datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds and Z."""
    if t is None:
        return None
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _append(session, run: RunRow, type_: str, data: dict) -> None:
    run.event_seq = (run.event_seq or 0) + 1
    session.add(EventRow(run_id=run.id, seq=run.event_seq, type=type_,
                         data={"runId": run.id, **data}, created_at=utcnow()))


def _new_run(session, *, tenant: str, profile: str, kind: str, selectors: dict | None, sign: str | None,
             trigger: str, request_hash: str, schedule_slot: dt.datetime | None = None) -> RunRow:
    run = RunRow(id=new_run_id(), tenant=tenant, profile=profile, kind=kind, status="queued",
                 trigger=trigger, selectors=selectors, sign=sign, request_hash=request_hash,
                 attempt=0, cancel_requested=False, created_at=utcnow(), items_completed=0,
                 items_total=0, total_bytes=0, event_seq=0, schedule_slot=schedule_slot)
    session.add(run)
    session.flush()  # the row first: events reference it (no ORM relationship orders them)
    _append(session, run, "queued", {"profile": profile, "trigger": trigger, "attempt": 0})
    return run


def _encode_cursor(run: RunRow) -> str:
    raw = f"{run.created_at.astimezone(dt.timezone.utc).isoformat()}|{run.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, run_id = raw.partition("|")
        return dt.datetime.fromisoformat(when), run_id
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, ERR_VALIDATION, "bad cursor", details=[{"reason": "bad-cursor", "field": "cursor"}]) from None


class Store:
    def __init__(self, db: Database, notifier: Notifier | None = None):
        self.db = db
        self.notifier = notifier or Notifier()

    # -- submitting and reading ------------------------------------------------------------------
    def submit(self, *, tenant: str, profile: str, kind: str, selectors: dict | None, sign: str | None,
               trigger: str, request_hash: str, quota: int, idempotency_key: str | None = None,
               schedule_slot: dt.datetime | None = None) -> tuple[RunRow, bool]:
        """Create a queued run, or return the run an earlier request with the same Idempotency-Key
        created (then `replayed` is True). Raises QuotaExceeded when the tenant already has `quota`
        queued or running runs, ApiError 422 when the key was used with another request body.
        Concurrent calls with one key create one run (serialized on the tenant's lock)."""
        with self.db.write(lock=f"tenant:{tenant}") as s:
            if idempotency_key is not None:
                prior = s.get(IdempotencyRow, (tenant, idempotency_key))
                if prior is not None:
                    if prior.request_hash != request_hash:
                        raise ApiError(422, ERR_IDEMPOTENCY, "this Idempotency-Key was used with a different request",
                                       details=[{"reason": "idempotency-key-reused", "field": "Idempotency-Key"}])
                    return s.get(RunRow, prior.run_id), True
            active = s.scalar(select(func.count()).select_from(RunRow)
                              .where(RunRow.tenant == tenant, RunRow.status.in_(ACTIVE)))
            if active >= quota:
                raise QuotaExceeded(active, quota)
            run = _new_run(s, tenant=tenant, profile=profile, kind=kind, selectors=selectors, sign=sign,
                           trigger=trigger, request_hash=request_hash, schedule_slot=schedule_slot)
            if idempotency_key is not None:
                s.add(IdempotencyRow(tenant=tenant, key=idempotency_key, run_id=run.id,
                                     request_hash=request_hash, created_at=utcnow()))
        self.notifier.notify()
        return run, False

    def get(self, run_id: str, tenant: str | None) -> tuple[RunRow, list[FileRow]]:
        """A run and its files; ApiError 404 when it does not exist or belongs to another tenant
        (`tenant` None: any tenant, for the runner)."""
        with self.db.read() as s:
            run = s.get(RunRow, run_id)
            if run is None or (tenant is not None and run.tenant != tenant):
                raise not_found("run")
            files = list(s.scalars(select(FileRow).where(FileRow.run_id == run_id).order_by(FileRow.path)))
            return run, files

    def file(self, run_id: str, tenant: str, path: str) -> tuple[RunRow, FileRow | None]:
        with self.db.read() as s:
            run = s.get(RunRow, run_id)
            if run is None or run.tenant != tenant:
                raise not_found("run")
            return run, s.get(FileRow, (run_id, path))

    def list(self, tenant: str, *, status: str | None = None, profile: str | None = None,
             limit: int = 50, cursor: str | None = None) -> tuple[list[RunRow], str | None]:
        """The tenant's runs, newest first, `limit` per page; (rows, next cursor or None)."""
        q = select(RunRow).where(RunRow.tenant == tenant)
        if status:
            q = q.where(RunRow.status == status)
        if profile:
            q = q.where(RunRow.profile == profile)
        if cursor:
            when, run_id = _decode_cursor(cursor)
            q = q.where(or_(RunRow.created_at < when, and_(RunRow.created_at == when, RunRow.id < run_id)))
        q = q.order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(limit + 1)
        with self.db.read() as s:
            rows = list(s.scalars(q))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (_encode_cursor(rows[-1]) if more and rows else None)

    def last_success(self, tenant: str, profile: str) -> RunRow | None:
        with self.db.read() as s:
            return s.scalars(select(RunRow).where(RunRow.tenant == tenant, RunRow.profile == profile,
                                                  RunRow.status == "succeeded")
                             .order_by(RunRow.finished_at.desc()).limit(1)).first()

    def events_after(self, run_id: str, after: int, limit: int = 500) -> list[EventRow]:
        with self.db.read() as s:
            return list(s.scalars(select(EventRow).where(EventRow.run_id == run_id, EventRow.seq > after)
                                  .order_by(EventRow.seq).limit(limit)))

    def status_of(self, run_id: str) -> str | None:
        with self.db.read() as s:
            return s.scalar(select(RunRow.status).where(RunRow.id == run_id))

    def active_counts(self) -> dict[str, int]:
        with self.db.read() as s:
            rows = s.execute(select(RunRow.status, func.count()).where(RunRow.status.in_(ACTIVE))
                             .group_by(RunRow.status)).all()
        return {status: n for status, n in rows}

    def cancel(self, run_id: str, tenant: str) -> RunRow:
        """Cancel a queued run now, or ask the owner of a running one to stop it (the status turns
        `cancelled` when its worker is gone). ApiError 409 for a finished run, 404 as `get`."""
        with self.db.write(lock="claim") as s:
            run = s.get(RunRow, run_id)
            if run is None or run.tenant != tenant:
                raise not_found("run")
            if run.status in TERMINAL:
                raise ApiError(409, ERR_CONFLICT, f"the run already {run.status}",
                               details=[{"reason": "run-finished", "status": run.status}])
            if run.status == "queued":
                run.status, run.finished_at = "cancelled", utcnow()
                run.error_code = "cancelled"
                _append(s, run, "cancelled", {"status": "cancelled"})
            elif not run.cancel_requested:
                run.cancel_requested = True
                _append(s, run, "cancel_requested", {})
        self.notifier.notify()
        return run

    # -- the runner's side -----------------------------------------------------------------------
    def claim(self, owner: str, lease_seconds: float) -> RunRow | None:
        """Take the oldest queued run whose profile has no running run (two runs of one profile
        never build at once: they share the profile's output directory). None when none."""
        with self.db.write(lock="claim") as s:
            busy = select(RunRow.profile).where(RunRow.status == "running")
            run = s.scalars(select(RunRow).where(RunRow.status == "queued", RunRow.profile.not_in(busy))
                            .order_by(RunRow.created_at, RunRow.id).limit(1)).first()
            if run is None:
                return None
            now = utcnow()
            run.status, run.owner = "running", owner
            run.attempt = (run.attempt or 0) + 1
            run.started_at = run.started_at or now
            run.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
            _append(s, run, "started", {"attempt": run.attempt, "node": owner})
        self.notifier.notify()
        return run

    def renew(self, run_id: str, owner: str, lease_seconds: float) -> tuple[bool, bool]:
        """Extend a running run's lease; (still ours, cancel requested)."""
        with self.db.write() as s:
            run = s.get(RunRow, run_id)
            if run is None or run.status != "running" or run.owner != owner:
                return False, False
            run.lease_expires_at = utcnow() + dt.timedelta(seconds=lease_seconds)
            return True, bool(run.cancel_requested)

    def progress(self, run_id: str, owner: str, completed: int, total: int) -> None:
        with self.db.write() as s:
            run = s.get(RunRow, run_id)
            if run is None or run.status != "running" or run.owner != owner:
                return
            run.items_completed, run.items_total = completed, total
            percent = int(100 * completed / total) if total else 0
            _append(s, run, "progress", {"percent": percent, "itemsCompleted": completed,
                                         "itemsTotal": total})
        self.notifier.notify()

    def finish(self, run_id: str, owner: str, *, status: str, files: list[dict], exit_code: int | None,
               errors: list[dict], actions: dict | None, manifest_sha256: str | None) -> RunRow | None:
        """Record the end of a run this node owns: its files (one artifact_ready event each, then
        the final event), status and errors, in one transaction. None when the run is no longer
        ours (another node took it over after our lease expired): nothing is written."""
        with self.db.write() as s:
            run = s.get(RunRow, run_id)
            if run is None or run.status != "running" or run.owner != owner:
                return None
            for f in sorted(files, key=lambda f: f["path"]):
                s.add(FileRow(run_id=run_id, path=f["path"], sha256=f["sha256"], blake3=f["blake3"],
                              size=f["size"], mode=f["mode"]))
                _append(s, run, "artifact_ready", {"path": f["path"], "sha256": f["sha256"],
                                                   "bytes": f["size"]})
            now = utcnow()
            run.status, run.finished_at, run.lease_expires_at = status, now, None
            run.exit_code, run.errors, run.actions = exit_code, errors, actions
            run.error_code = (errors[0].get("reason") or "build-failed") if status == "failed" and errors else (
                "cancelled" if status == "cancelled" else None)
            run.manifest_sha256 = manifest_sha256
            run.total_bytes = sum(f["size"] for f in files)
            if status == "succeeded" and run.items_total:
                run.items_completed = run.items_total
            data = {"status": status, "exitCode": exit_code,
                    "durationMs": int((now - (run.started_at or now)).total_seconds() * 1000)}
            if status == "succeeded":
                data.update(manifestSha256=manifest_sha256, outputs=len(files), bytes=run.total_bytes)
            if errors:
                data.update(errorCode=run.error_code, errors=errors)
            _append(s, run, status, data)
        self.notifier.notify()
        return run

    def recover(self, owner: str, max_attempts: int, *, own_only: bool) -> list[tuple[RunRow, str]]:
        """Runs left `running` by a dead owner: this node's (own_only, at startup: it was us before
        the crash) or any whose lease expired. Each is requeued while attempts remain (its finished
        actions are cache hits), else failed with reason worker-lost; a cancel request wins.
        Returns [(run, "requeued" | "failed" | "cancelled")]."""
        now = utcnow()
        out = []
        with self.db.write(lock="claim") as s:
            q = select(RunRow).where(RunRow.status == "running")
            q = q.where(RunRow.owner == owner) if own_only else q.where(RunRow.lease_expires_at < now)
            for run in s.scalars(q):
                why = "server-restarted" if own_only else "lease-expired"
                if run.cancel_requested:
                    run.status, run.finished_at, run.error_code = "cancelled", now, "cancelled"
                    _append(s, run, "cancelled", {"status": "cancelled", "reason": why})
                    out.append((run, "cancelled"))
                elif run.attempt < max_attempts:
                    run.status, run.owner, run.lease_expires_at = "queued", None, None
                    run.items_completed = 0
                    _append(s, run, "queued", {"resumed": True, "reason": why, "attempt": run.attempt})
                    out.append((run, "requeued"))
                else:
                    error = {"reason": REASON_WORKER_LOST, "target": run.profile,
                             "message": f"the build was interrupted {run.attempt} times ({why}); giving up"}
                    run.status, run.finished_at, run.lease_expires_at = "failed", now, None
                    run.exit_code, run.errors, run.error_code = 1, [error], REASON_WORKER_LOST
                    _append(s, run, "failed", {"status": "failed", "exitCode": 1,
                                               "errorCode": REASON_WORKER_LOST, "errors": [error]})
                    out.append((run, "failed"))
        if out:
            self.notifier.notify()
        return out

    # -- retention and schedules -----------------------------------------------------------------
    def prune(self, retention_days, now: dt.datetime | None = None) -> int:
        """Delete finished runs older than `retention_days(profile)` days (None: keep), with their
        events, files and idempotency keys (ON DELETE CASCADE). Returns how many runs went. Their
        blobs stay in the cache until `stella-build cache gc` evicts them."""
        now = now or utcnow()
        removed = 0
        with self.db.read() as s:
            profiles = list(s.scalars(select(RunRow.profile).where(RunRow.status.in_(TERMINAL)).distinct()))
        for profile in profiles:
            days = retention_days(profile)
            if days is None:
                continue
            cutoff = now - dt.timedelta(days=days)
            with self.db.write() as s:
                result = s.execute(delete(RunRow).where(RunRow.profile == profile,
                                                        RunRow.status.in_(TERMINAL),
                                                        RunRow.finished_at < cutoff))
                removed += result.rowcount or 0
        return removed

    def schedule_slot(self, profile: str) -> dt.datetime | None:
        with self.db.read() as s:
            row = s.get(ScheduleRow, profile)
            return row.last_slot if row else None

    def advance_schedule(self, profile: str, slot: dt.datetime, *, tenant: str, kind: str,
                         sign: str | None) -> tuple[RunRow | None, str]:
        """Move `profile`'s schedule to `slot` (its latest due cron slot) and enqueue one run, at
        most once per slot whichever node gets there first, in one transaction (a crash never
        loses or doubles a slot). Several missed slots make one run; a slot whose profile still
        has a queued or running run is skipped (never two at once). The first time a schedule is
        seen its current slot is only recorded (cron semantics: the next slot runs).
        Returns (run or None, "due" | "first-seen" | "already-done" | "busy")."""
        with self.db.write(lock=f"schedule:{profile}") as s:
            row = s.get(ScheduleRow, profile)
            if row is not None and row.last_slot >= slot:
                return None, "already-done"
            if row is None:
                s.add(ScheduleRow(profile=profile, last_slot=slot, updated_at=utcnow()))
                return None, "first-seen"
            row.last_slot, row.updated_at = slot, utcnow()
            busy = s.scalar(select(func.count()).select_from(RunRow)
                            .where(RunRow.profile == profile, RunRow.status.in_(ACTIVE)))
            if busy:
                return None, "busy"
            run = _new_run(s, tenant=tenant, profile=profile, kind=kind, selectors=None, sign=sign,
                           trigger="schedule", request_hash="schedule", schedule_slot=slot)
        self.notifier.notify()
        return run, "due"


def quota_error(exc: QuotaExceeded, retry_after: int) -> ApiError:
    """The 429 of a tenant over its concurrent-run quota."""
    return ApiError(429, ERR_QUOTA, f"the tenant has {exc.active} runs queued or running (quota {exc.limit})",
                    details=[{"reason": "quota-exceeded", "active": exc.active, "limit": exc.limit}],
                    headers={"Retry-After": str(retry_after), "X-Stella-Quota-Limit": str(exc.limit),
                             "X-Stella-Quota-Remaining": "0"})
