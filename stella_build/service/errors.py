"""API errors: one exception type carrying the HTTP status and the JSON error body's fields.

Every failure the API returns has the body `{code, message, details[], traceId, timestamp}`
(docs/api.md "Errors"); `code` is one of the ERR_EXPORT_* constants below, `details[]` holds
objects with at least a kebab-case `reason` (and for build errors the CLI's target, file, line and
field). The codes never change meaning; new ones may be added.
"""
from __future__ import annotations

ERR_UNAUTHENTICATED = "ERR_EXPORT_UNAUTHENTICATED"   # 401: no, malformed or unknown bearer token
ERR_FORBIDDEN = "ERR_EXPORT_FORBIDDEN"               # 403: scope or tenant not granted to the token
ERR_TENANT_REQUIRED = "ERR_EXPORT_TENANT_REQUIRED"   # 400: token has several tenants, no X-Stella-Tenant
ERR_NOT_FOUND = "ERR_EXPORT_NOT_FOUND"               # 404: no such run/file for this tenant, or no route
ERR_PROFILE = "ERR_EXPORT_PROFILE_NOT_FOUND"         # 404: no such profile (workspace target)
ERR_VALIDATION = "ERR_EXPORT_VALIDATION"             # 422: request body/query/header invalid
ERR_IDEMPOTENCY = "ERR_EXPORT_IDEMPOTENCY_MISMATCH"  # 422: Idempotency-Key reused with another body
ERR_QUOTA = "ERR_EXPORT_QUOTA"                       # 429: tenant's concurrent-run quota reached
ERR_CONFLICT = "ERR_EXPORT_CONFLICT"                 # 409: e.g. cancel of a finished run
ERR_NOT_READY = "ERR_EXPORT_NOT_READY"               # 409: download of a run that has not succeeded
ERR_GONE = "ERR_EXPORT_GONE"                         # 410: the file's blob left the cache (cache gc)
ERR_METHOD = "ERR_EXPORT_METHOD_NOT_ALLOWED"         # 405
ERR_WORKSPACE = "ERR_EXPORT_WORKSPACE"               # 500: the workspace's Exportfiles do not load
ERR_INTERNAL = "ERR_EXPORT_INTERNAL"                 # 500: a bug; the body carries only the traceId
ERR_UNAVAILABLE = "ERR_EXPORT_UNAVAILABLE"           # 503: not ready (database unreachable)

# Codes a run's failure can carry in `errorCode` (and export_failures_total{error_code}): the
# engine's kebab-case `reason` of its first error (action-failed, signing-key-missing, ...), or one
# of these service reasons.
REASON_WORKER_LOST = "worker-lost"          # the server died mid-run too often (max_attempts)
REASON_WORKER_CRASHED = "worker-crashed"    # the build process died without a result
REASON_TIMEOUT = "run-timeout"              # the run exceeded run_timeout_seconds
REASON_VERIFY = "verification-failed"       # a signed run's outputs did not verify before publishing


class ApiError(Exception):
    """An error response: HTTP `status`, `code` (ERR_EXPORT_*), `message`, `details` (list of
    dicts, each with a `reason`) and extra response `headers` (Retry-After, WWW-Authenticate)."""

    def __init__(self, status: int, code: str, message: str, *, details: list[dict] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def not_found(what: str = "run") -> ApiError:
    """The 404 of a run or file that does not exist *for this tenant* (never 403: another tenant's
    run is indistinguishable from a missing one)."""
    return ApiError(404, ERR_NOT_FOUND, f"no such {what}", details=[{"reason": f"{what}-not-found"}])
