"""The app factory: config + database (migrated) + store + runner + housekeeper + routes.

`create_app(...)` returns a FastAPI app whose lifespan opens the database, upgrades the schema
(Alembic), requeues the runs this node left running, and starts the runner and the housekeeper;
shutdown stops them. Every error leaves as the JSON error body `{code, message, details[],
traceId, timestamp}`; the trace id comes from a W3C `traceparent` header when there is one and is
echoed in `X-Trace-Id`. `GET /.well-known/openapi` serves the OpenAPI document with a sha256 ETag.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from stella_build.service import api, registry_api
from stella_build.service.auth import Authenticator
from stella_build.service.config import ServiceConfig
from stella_build.service.errors import (
    ERR_INTERNAL, ERR_METHOD, ERR_NOT_FOUND, ERR_VALIDATION, ApiError,
)
from stella_build.service.metrics import Metrics, log

API_VERSION = "v1"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass
class Options:
    """What `serve` resolved: paths, database URL, per-run jobs and this node's id."""

    workspace: Path
    cache_dir: Path
    config: ServiceConfig
    database_url: str
    jobs: int
    node_id: str
    housekeeping_interval: float = 1.0


@dataclass
class ServiceContext:
    config: ServiceConfig
    workspace: object
    cache_dir: Path
    store: object
    runner: object
    housekeeper: object
    auth: Authenticator
    metrics: Metrics
    cas: object


def _now_text() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _error_body(request: Request, status: int, code: str, message: str, details: list[dict],
                headers: dict | None = None) -> JSONResponse:
    trace = getattr(request.state, "trace_id", None) or uuid.uuid4().hex
    body = {"code": code, "message": message, "details": details, "traceId": trace,
            "timestamp": _now_text()}
    return JSONResponse(body, status_code=status, headers=headers or {},
                        media_type="application/json; charset=utf-8")


class TraceMiddleware:
    """Pure ASGI: a trace id per request (from `traceparent` or new), `X-Trace-Id` on the response,
    and export_http_requests_total{method, route, status}."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        match = _TRACEPARENT.match(headers.get(b"traceparent", b"").decode("latin-1"))
        trace = match[1] if match else uuid.uuid4().hex
        scope.setdefault("state", {})["trace_id"] = trace

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-trace-id", trace.encode())]
                route = scope.get("route")
                self.metrics.http_requests.labels(scope["method"], getattr(route, "path", "unmatched"),
                                                  str(message["status"])).inc()
            await send(message)

        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_wrapper(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # a bug: one JSON log line with the trace id, a JSON 500 body
            logging.getLogger("stella_build.service").error(
                "unhandled error", exc_info=exc, extra={"fields": {"trace_id": trace, "path": scope.get("path")}})
            if started:
                raise
            body = json.dumps({"code": ERR_INTERNAL, "message": "internal error (see the server log for this traceId)",
                               "details": [{"reason": "internal-error"}], "traceId": trace,
                               "timestamp": _now_text()}).encode()
            await send_wrapper({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                                            (b"content-length", str(len(body)).encode())]})
            await send_wrapper({"type": "http.response.body", "body": body})


def openapi_text(app: FastAPI) -> str:
    """The OpenAPI document as committed in docs/openapi.json (sorted keys, 2-space indent)."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def create_app(options: Options | None = None, *, config: ServiceConfig | None = None) -> FastAPI:
    """The service app. Without `options` the app only describes itself (OpenAPI, no database):
    what `docs/openapi.json` is generated from."""
    config = options.config if options else (config or ServiceConfig())
    metrics_holder: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if options is None:
            yield
            return
        ctx = _start(options, metrics_holder["metrics"])
        app.state.svc = ctx
        log("service started", node=options.node_id, database=_redact(options.database_url),
            workspace=str(options.workspace))
        try:
            yield
        finally:
            ctx.housekeeper.stop()
            ctx.runner.stop()
            ctx.store.db.dispose()
            log("service stopped", node=options.node_id)

    app = FastAPI(title="stella-build Export Center", version=API_VERSION,
                  summary="Plan, run, stream and download reproducible export bundles",
                  description="The contract is docs/api.md. Errors are {code, message, details[], "
                              "traceId, timestamp}.",
                  openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False,
                             "operation_spans": False, "auto_configure": False})
    app.include_router(api.router)
    app.include_router(api.ops)
    app.include_router(registry_api.router)  # /v2/: OCI pull (registry_api.py)
    metrics = Metrics(queue_counts=lambda: app.state.svc.store.active_counts())
    metrics_holder["metrics"] = metrics
    app.add_middleware(TraceMiddleware, metrics=metrics)
    _install_error_handlers(app)
    _install_openapi_route(app)
    return app


def _start(options: Options, metrics: Metrics) -> ServiceContext:
    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.workspace import Workspace
    from stella_build.service.db import Database, upgrade
    from stella_build.service.profiles import get_profile
    from stella_build.service.runner import Runner, RunnerSettings
    from stella_build.service.schedules import Housekeeper
    from stella_build.service.store import Store

    config = options.config
    workspace = Workspace.find(explicit=options.workspace)
    db = Database(options.database_url)
    upgrade(db)
    store = Store(db)
    key = config.signing_key()
    public = key.with_suffix(".pub") if key is not None and key.with_suffix(".pub").is_file() else None
    runner = Runner(store, RunnerSettings(
        workspace=workspace.root, cache_dir=options.cache_dir, node_id=options.node_id,
        concurrency=config.service.concurrency, jobs=options.jobs, lease_seconds=config.service.lease_seconds,
        max_attempts=config.service.max_attempts, run_timeout_seconds=config.service.run_timeout_seconds,
        signing_key=key, public_key=public, paused=config.service.paused,
        executor=config.service.executor, remote_cache=config.service.remote_cache), metrics)
    housekeeper = Housekeeper(store, config, lambda label: get_profile(workspace, label).kind.name, metrics,
                              interval=options.housekeeping_interval)
    _warm_up(workspace)
    runner.start()
    housekeeper.start()
    return ServiceContext(config=config, workspace=workspace, cache_dir=options.cache_dir, store=store,
                          runner=runner, housekeeper=housekeeper, auth=Authenticator(config),
                          metrics=metrics, cas=Cas(options.cache_dir))


def _warm_up(workspace) -> None:
    """Load the rules and the workspace's Exportfiles once at start: the first request does not pay
    for it (about 0.4 s), and a broken workspace shows in the log before any run is submitted."""
    from stella_build.service.profiles import list_profiles

    try:
        log("workspace loaded", profiles=len(list_profiles(workspace)))
    except ApiError as exc:
        log("the workspace does not load: runs of its broken packages will fail", logging.WARNING,
            details=exc.details)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_body(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        details = [{"reason": "invalid", "field": ".".join(str(p) for p in e.get("loc", ())),
                    "message": e.get("msg")} for e in exc.errors()]
        return _error_body(request, 422, ERR_VALIDATION, "the request is invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error_body(request, 404, ERR_NOT_FOUND, "no such endpoint", [{"reason": "no-route"}])
        if exc.status_code == 405:
            return _error_body(request, 405, ERR_METHOD, "method not allowed here",
                               [{"reason": "method-not-allowed"}], dict(exc.headers or {}))
        return _error_body(request, exc.status_code, f"ERR_EXPORT_HTTP_{exc.status_code}", str(exc.detail),
                           [{"reason": "http-error"}], dict(exc.headers or {}))



def _install_openapi_route(app: FastAPI) -> None:
    cache: dict = {}

    @app.get("/.well-known/openapi", include_in_schema=False)
    def openapi(request: Request) -> Response:
        if "text" not in cache:
            text = openapi_text(app)
            cache["text"] = text.encode()
            cache["etag"] = '"sha256:' + hashlib.sha256(cache["text"]).hexdigest() + '"'
        headers = {"ETag": cache["etag"], "X-Export-Oas-Version": API_VERSION,
                   "Cache-Control": "private, must-revalidate"}
        if request.headers.get("if-none-match") == cache["etag"]:
            return Response(status_code=304, headers=headers)
        return Response(cache["text"], media_type="application/json", headers=headers)
