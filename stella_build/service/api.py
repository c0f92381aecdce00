"""The HTTP routes: /api/export/{profiles,runs,...}, /metrics, /healthz, /readyz.

Handlers are plain functions (FastAPI runs them on its thread pool) that authenticate, call the
store, and shape the answer with models.py; every failure is an ApiError rendered by app.py as the
JSON error body. docs/api.md is the contract; docs/openapi.json is what FastAPI derives from
these routes (a test checks they are equal).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, Security
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import HTTPBearer

from stella_build.service import models as m
from stella_build.service.auth import Caller
from stella_build.service.db import FileRow, RunRow
from stella_build.service.errors import (
    ERR_GONE, ERR_NOT_READY, ERR_UNAVAILABLE, ERR_VALIDATION, ApiError, not_found,
)
from stella_build.service.profiles import get_profile, kind_named, list_profiles, media_type
from stella_build.service.sse import run_events
from stella_build.service.store import QuotaExceeded, iso, quota_error

BASE = "/api/export"
_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="A token from the service config ([[tokens]]); its scopes decide the "
                                 "endpoints, its tenants the runs it sees.")
_ERRORS = {code: {"model": m.ErrorBody, "description": what} for code, what in (
    (400, "X-Stella-Tenant needed"), (401, "missing or unknown token"), (403, "scope or tenant not granted"),
    (404, "not found for this tenant"), (422, "invalid request"))}


def _svc(request: Request):
    return request.app.state.svc


def caller(scope: str):
    """Dependency: the authenticated caller of a request needing `scope`."""

    # async: authentication is hashing and dict lookups (no I/O), so it runs on the event loop
    # instead of costing every request an extra hop through the thread pool
    async def dependency(request: Request, _creds=Security(_bearer),
                         x_stella_tenant: Annotated[str | None, Header(
                             description="the tenant to act for, when the token has several")] = None) -> Caller:
        svc = _svc(request)
        principal = svc.auth.authenticate(request.headers.get("authorization"))
        return svc.auth.authorize(principal, scope, x_stella_tenant)

    dependency.__name__ = f"caller_{scope.replace(':', '_')}"
    return dependency


Read = Annotated[Caller, Depends(caller("export:read"))]
RunScope = Annotated[Caller, Depends(caller("export:run"))]
Download = Annotated[Caller, Depends(caller("export:download"))]
Admin = Annotated[Caller, Depends(caller("export:admin"))]

router = APIRouter(prefix=BASE, responses=_ERRORS)
ops = APIRouter()


# -- shaping ------------------------------------------------------------------------------------

def _links(run_id: str, kind) -> m.Links:
    base = f"{BASE}/runs/{run_id}"
    return m.Links(status=base, events=f"{base}/events", download=f"{base}/archive",
                   manifest=f"{base}/manifest" if kind.manifest else None,
                   provenance=f"{base}/provenance" if kind.provenance else None)


def run_view(run: RunRow, files: list[FileRow]) -> m.Run:
    kind = kind_named(run.kind)
    total, done = run.items_total or 0, run.items_completed or 0
    duration = None
    if run.finished_at and run.started_at:
        duration = int((run.finished_at - run.started_at).total_seconds() * 1000)
    actions = run.actions or {}
    return m.Run(
        runId=run.id, tenant=run.tenant, profile=run.profile, profileKind=run.kind, status=run.status,
        trigger=run.trigger, selectors=run.selectors, signed=run.sign is not None, attempt=run.attempt,
        createdAt=iso(run.created_at), startedAt=iso(run.started_at), finishedAt=iso(run.finished_at),
        durationMs=duration,
        progress=m.Progress(percent=int(100 * done / total) if total else (100 if run.status == "succeeded" else 0),
                            itemsCompleted=done, itemsTotal=total),
        actions=m.ActionCounts(total=actions.get("total", 0), executed=actions.get("executed", 0),
                               cached=actions.get("cached", 0) + actions.get("remote_hits", 0),
                               failed=actions.get("failed", 0)),
        outputs=[m.OutputFile(path=f.path, sha256=f.sha256, bytes=f.size, mediaType=media_type(f.path, kind),
                              url=f"{BASE}/runs/{run.id}/files/{f.path}") for f in files],
        manifestSha256=run.manifest_sha256, bytes=run.total_bytes or 0, exitCode=run.exit_code,
        errorCode=run.error_code, errors=[m.ErrorDetail(**e) for e in (run.errors or [])],
        cancelRequested=bool(run.cancel_requested), links=_links(run.id, kind))


def _summary(run: RunRow) -> m.RunSummary:
    return m.RunSummary(runId=run.id, tenant=run.tenant, profile=run.profile, status=run.status,
                        trigger=run.trigger, createdAt=iso(run.created_at), finishedAt=iso(run.finished_at),
                        manifestSha256=run.manifest_sha256, errorCode=run.error_code)


def _profile_view(svc, info, tenant: str) -> m.Profile:
    last = svc.store.last_success(tenant, info.label)
    section = svc.config.profile(info.label)
    return m.Profile(label=info.label, package=info.package, name=info.name, rule=info.rule,
                     kind=info.kind.name, description=info.description, selectors=info.selectors,
                     deps=info.deps, schedule=section.schedule,
                     retentionDays=svc.config.retention_days(info.label), archive=info.kind.archive,
                     archiveMediaType=info.kind.archive_media_type,
                     lastSuccessfulRun=m.LastRun(runId=last.id, finishedAt=iso(last.finished_at),
                                                 manifestSha256=last.manifest_sha256) if last else None)


# -- profiles -----------------------------------------------------------------------------------

@router.get("/profiles", response_model=m.ProfileList, summary="List profiles (the workspace's targets)")
def profiles(request: Request, who: Read) -> m.ProfileList:
    svc = _svc(request)
    return m.ProfileList(items=[_profile_view(svc, p, who.tenant) for p in list_profiles(svc.workspace)])


@router.get("/profiles/{label:path}", response_model=m.Profile, summary="One profile",
            description="`label` is `//pkg:target` URL-encoded, or `pkg:target`.")
def profile(label: str, request: Request, who: Read) -> m.Profile:
    svc = _svc(request)
    return _profile_view(svc, get_profile(svc.workspace, label), who.tenant)


# -- runs ---------------------------------------------------------------------------------------

def _request_hash(body: m.RunRequest, profile: str) -> str:
    canonical = {"profile": profile, "selectors": body.selectors.model_dump(exclude_none=True) if body.selectors else None,
                 "sign": body.sign}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@router.post("/runs", status_code=202, response_model=m.RunAccepted, summary="Submit a run",
             responses={429: {"model": m.ErrorBody, "description": "ERR_EXPORT_QUOTA (Retry-After)"}})
def submit(body: m.RunRequest, request: Request, response: Response, who: RunScope,
           idempotency_key: Annotated[str | None, Header(
               min_length=1, max_length=200, description="a replay returns the original run")] = None) -> m.RunAccepted:
    svc = _svc(request)
    info = get_profile(svc.workspace, body.profile)
    selectors = body.selectors.model_dump(exclude_none=True) if body.selectors else None
    if selectors and not info.accepts_selectors:
        raise ApiError(422, ERR_VALIDATION, f"profile {info.label} ({info.kind.name}) takes no selectors",
                       details=[{"reason": "selectors-unsupported", "field": "selectors"}])
    if selectors:
        _check_selectors(selectors)
    sign = None
    if body.sign is True or (isinstance(body.sign, str) and body.sign):
        if body.sign is not True:
            raise ApiError(422, ERR_VALIDATION, "sign is true or false: the service signs with its configured key",
                           details=[{"reason": "sign-invalid", "field": "sign"}])
        if svc.config.signing_key() is None:
            raise ApiError(422, ERR_VALIDATION, "this service has no signing key ([signing] key in its config)",
                           details=[{"reason": "signing-not-configured", "field": "sign"}])
        sign = "key"
    try:
        run, replayed = svc.store.submit(tenant=who.tenant, profile=info.label, kind=info.kind.name,
                                         selectors=selectors or None, sign=sign, trigger="api",
                                         request_hash=_request_hash(body, info.label),
                                         quota=svc.config.quota(who.tenant), idempotency_key=idempotency_key)
    except QuotaExceeded as exc:
        svc.metrics.quota_rejections.labels(who.tenant).inc()
        raise quota_error(exc, svc.config.service.retry_after_seconds) from None
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        svc.metrics.submitted.labels(info.label, who.tenant, "api").inc()
    response.headers["Location"] = f"{BASE}/runs/{run.id}"
    return m.RunAccepted(runId=run.id, status=run.status, links=_links(run.id, info.kind))


def _check_selectors(selectors: dict) -> None:
    from pydantic import ValidationError

    from stella_build.engine.rule_api import Selectors

    try:
        Selectors(**selectors)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ApiError(422, ERR_VALIDATION, f"selectors: {err['msg']}",
                       details=[{"reason": "selectors-invalid",
                                 "field": "selectors." + ".".join(str(p) for p in err["loc"])}]) from None


@router.get("/runs", response_model=m.RunList, summary="List the tenant's runs, newest first")
def list_runs(request: Request, who: Read,
              status: Annotated[m.RunStatus | None, Query()] = None,
              profile: Annotated[str | None, Query(max_length=200)] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              cursor: Annotated[str | None, Query(max_length=400)] = None) -> m.RunList:
    svc = _svc(request)
    if profile:
        from stella_build.service.profiles import normalize_label
        profile = normalize_label(profile)
    rows, nxt = svc.store.list(who.tenant, status=status, profile=profile, limit=limit, cursor=cursor)
    return m.RunList(items=[_summary(r) for r in rows], nextCursor=nxt)


@router.get("/runs/{run_id}", response_model=m.Run, summary="A run's status, progress, outputs and errors")
async def get_run(run_id: str, request: Request, who: Read) -> m.Run:
    from starlette.concurrency import run_in_threadpool

    # the hottest endpoint (status polls): one thread-pool hop for the database read only
    run, files = await run_in_threadpool(_svc(request).store.get, run_id, who.tenant)
    return run_view(run, files)


@router.post("/runs/{run_id}/cancel", status_code=202, response_model=m.Run, summary="Cancel a run",
             responses={409: {"model": m.ErrorBody, "description": "the run already finished"}})
def cancel(run_id: str, request: Request, who: RunScope) -> m.Run:
    svc = _svc(request)
    svc.store.cancel(run_id, who.tenant)
    svc.runner.cancel_local(run_id)
    run, files = svc.store.get(run_id, who.tenant)
    return run_view(run, files)


@router.get("/runs/{run_id}/events", summary="The run's events (Server-Sent Events)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "events: queued, started, progress, artifact_ready, "
                                            "succeeded | failed | cancelled; `: heartbeat` comments"}})
async def events(run_id: str, request: Request, who: Read,
                 last_event_id: Annotated[str | None, Header(description="resume after this event id")] = None):
    from starlette.concurrency import run_in_threadpool

    svc = _svc(request)
    await run_in_threadpool(svc.store.get, run_id, who.tenant)  # 404 for another tenant's run
    after = 0
    if last_event_id:
        if not last_event_id.strip().isdigit():
            raise ApiError(422, ERR_VALIDATION, "Last-Event-ID must be an event id (a number)",
                           details=[{"reason": "bad-last-event-id", "field": "Last-Event-ID"}])
        after = int(last_event_id.strip())
    stream = run_events(svc.store, run_id, after, svc.config.service.heartbeat_seconds)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- downloads ----------------------------------------------------------------------------------

_SAFE_SEGMENT = re.compile(r"^[^/\\\x00]+$")


def _safe_path(path: str) -> str:
    """`path` when it names a file inside the run's tree; ApiError 404 for `..`, `.`, empty,
    absolute, backslash or NUL forms (after URL decoding), which never match a stored path."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") or not _SAFE_SEGMENT.match(p) for p in parts):
        raise ApiError(404, "ERR_EXPORT_NOT_FOUND", "no such file", details=[{"reason": "bad-path"}])
    return path


_SIMPLE_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _served_bytes(range_header: str | None, size: int) -> int:
    """Bytes a response will carry, for export_download_bytes_total only (a simple `bytes=a-b`
    range is counted exactly; anything else counts the whole file)."""
    match = _SIMPLE_RANGE.match(range_header or "")
    if not match:
        return size
    start = int(match[1])
    end = min(int(match[2]), size - 1) if match[2] else size - 1
    return max(0, end - start + 1)


def _serve(svc, request: Request, run: RunRow, f: FileRow | None, *, attachment: bool = False) -> FileResponse:
    if run.status != "succeeded":
        raise ApiError(409, ERR_NOT_READY, f"the run is {run.status}: files are served once it succeeded",
                       details=[{"reason": "run-not-succeeded", "status": run.status}])
    if f is None:
        raise not_found("file")
    blob = svc.cas.path(f.blake3)
    try:
        st = os.stat(blob)
    except FileNotFoundError:
        st = None
    if st is None or st.st_size != f.size:
        svc.metrics.verify_failures.labels("serve").inc()
        raise ApiError(410, ERR_GONE, "the file's content left the cache (cache gc); submit the run again",
                       details=[{"reason": "blob-missing", "path": f.path}])
    svc.metrics.download_bytes.inc(_served_bytes(request.headers.get("range"), f.size))
    kind = kind_named(run.kind)
    headers = {"ETag": f'"{f.sha256}"', "X-Content-SHA256": f.sha256,
               "Cache-Control": "private, max-age=31536000, immutable"}
    return FileResponse(blob, media_type=media_type(f.path, kind), headers=headers, stat_result=st,
                        filename=f.path.rsplit("/", 1)[-1] if attachment else None)


_FILE_DOC = {"responses": {200: {"description": "the file (ETag = its sha256; Range → 206, 416)"},
                           206: {"description": "a byte range"},
                           409: {"model": m.ErrorBody, "description": "the run has not succeeded"},
                           410: {"model": m.ErrorBody, "description": "the blob left the cache"}}}


def _named(svc, run_id: str, tenant: str, which: str):
    run, _ = svc.store.get(run_id, tenant)
    kind = kind_named(run.kind)
    path = getattr(kind, which)
    if path is None:
        raise ApiError(404, "ERR_EXPORT_NOT_FOUND", f"profile kind {kind.name} has no {which}",
                       details=[{"reason": f"no-{which}"}])
    return svc.store.file(run_id, tenant, path)


@router.api_route("/runs/{run_id}/manifest", summary="The run's manifest",
                  response_class=FileResponse, **_FILE_DOC)
def manifest(run_id: str, request: Request, who: Download):
    svc = _svc(request)
    run, f = _named(svc, run_id, who.tenant, "manifest")
    return _serve(svc, request, run, f)


@router.api_route("/runs/{run_id}/provenance", summary="The run's provenance",
                  response_class=FileResponse, **_FILE_DOC)
def provenance(run_id: str, request: Request, who: Download):
    svc = _svc(request)
    run, f = _named(svc, run_id, who.tenant, "provenance")
    return _serve(svc, request, run, f)


@router.api_route("/runs/{run_id}/archive", summary="The bundle archive",
                  response_class=FileResponse, **_FILE_DOC)
def archive(run_id: str, request: Request, who: Download):
    svc = _svc(request)
    run, f = _named(svc, run_id, who.tenant, "archive")
    return _serve(svc, request, run, f, attachment=True)


@router.api_route("/runs/{run_id}/files/{path:path}", summary="One output file",
                  response_class=FileResponse, **_FILE_DOC)
def run_file(run_id: str, path: str, request: Request, who: Download):
    svc = _svc(request)
    run, f = svc.store.file(run_id, who.tenant, _safe_path(path))
    return _serve(svc, request, run, f)


# -- administration -----------------------------------------------------------------------------

@router.post("/admin/retention", response_model=m.PruneResult, summary="Prune expired runs now")
def prune_now(request: Request, _who: Admin) -> m.PruneResult:
    return m.PruneResult(prunedRuns=_svc(request).housekeeper.prune())


@router.post("/admin/queue", response_model=m.QueueState, summary="Pause or resume this node's queue")
def queue(state: m.QueueState, request: Request, _who: Admin) -> m.QueueState:
    runner = _svc(request).runner
    runner.pause(state.paused)
    return m.QueueState(paused=runner.paused)


# -- operations ---------------------------------------------------------------------------------

@ops.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
         responses={200: {"content": {"text/plain; version=0.0.4": {}}}})
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_svc(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@ops.get("/healthz", response_model=m.Health, summary="Liveness: the process serves HTTP")
def healthz() -> m.Health:
    return m.Health(status="ok")


@ops.get("/readyz", response_model=m.Health, summary="Readiness: database, schema, workspace",
         responses={503: {"model": m.ErrorBody}})
def readyz(request: Request) -> m.Health:
    from stella_build.service.db import current_revision

    svc = _svc(request)
    checks = {}
    try:
        svc.store.db.ping()
        checks["database"] = "ok"
        checks["schema"] = current_revision(svc.store.db) or "none"
    except Exception as exc:
        raise ApiError(503, ERR_UNAVAILABLE, "the database does not answer",
                       details=[{"reason": "database-unavailable", "message": type(exc).__name__}]) from None
    checks["runner"] = "ok" if svc.runner is not None else "off"
    return m.Health(status="ok", checks=checks)
