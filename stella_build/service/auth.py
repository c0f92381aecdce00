"""Bearer tokens → who is calling (a principal: token name, tenants, scopes) and for which tenant.

Tokens are configured by their sha256 only (config.py `[[tokens]]`); a presented token is hashed
and looked up, so the service never holds a token it could leak. Tokens are random strings of at
least 128 bits (`stella-build remote token` style: secrets.token_urlsafe(32)), for which one sha256
is the right hash: a slow password hash buys nothing against a 256-bit preimage.

Tenant: the token's only tenant, or the `X-Stella-Tenant` header when the token has several (400
ERR_EXPORT_TENANT_REQUIRED without it). Scopes: export:read, export:run, export:download,
export:admin (which implies the other three). Failures: 401 (no/unknown token, with
`WWW-Authenticate: Bearer`), 403 (scope or tenant not granted).

With no `[[tokens]]` at all the service is open (one tenant, "default", every scope) but only
while it listens on loopback: `serve` refuses a non-loopback --listen without tokens.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from stella_build.service.config import ANONYMOUS_TENANT, SCOPES, ServiceConfig
from stella_build.service.errors import (
    ERR_FORBIDDEN, ERR_TENANT_REQUIRED, ERR_UNAUTHENTICATED, ApiError,
)

ADMIN = "export:admin"


def hash_token(token: str) -> str:
    """The hex sha256 a config stores for `token`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    tenants: tuple[str, ...]
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


@dataclass(frozen=True)
class Caller:
    """The authenticated principal and the tenant this request acts for."""

    principal: Principal
    tenant: str


def _unauthenticated(message: str, reason: str) -> ApiError:
    return ApiError(401, ERR_UNAUTHENTICATED, message, details=[{"reason": reason}],
                    headers={"WWW-Authenticate": 'Bearer realm="stella-export"'})


class Authenticator:
    def __init__(self, config: ServiceConfig):
        self.by_hash = {t.sha256: Principal(t.name, tuple(t.tenants), frozenset(t.scopes))
                        for t in config.tokens}
        self.open = not self.by_hash
        self.anonymous = Principal("anonymous", (ANONYMOUS_TENANT,), frozenset(SCOPES))

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization` header value; ApiError 401 otherwise."""
        if self.open:
            return self.anonymous
        if not authorization:
            raise _unauthenticated("missing bearer token (Authorization: Bearer <token>)", "token-missing")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("the Authorization header must be 'Bearer <token>'", "token-malformed")
        principal = self.by_hash.get(hash_token(token.strip()))
        if principal is None:
            raise _unauthenticated("unknown bearer token", "token-invalid")
        return principal

    def authorize(self, principal: Principal, scope: str, tenant_header: str | None) -> Caller:
        """The caller for a request needing `scope`; ApiError 403/400 otherwise."""
        if not principal.has(scope):
            raise ApiError(403, ERR_FORBIDDEN, f"the token {principal.name!r} lacks the scope {scope}",
                           details=[{"reason": "scope-missing", "scope": scope}])
        tenant_header = (tenant_header or "").strip() or None
        if tenant_header is None:
            if len(principal.tenants) != 1:
                raise ApiError(400, ERR_TENANT_REQUIRED,
                               "this token serves several tenants: name one in X-Stella-Tenant",
                               details=[{"reason": "tenant-required", "field": "X-Stella-Tenant"}])
            return Caller(principal, principal.tenants[0])
        if tenant_header not in principal.tenants:
            raise ApiError(403, ERR_FORBIDDEN, f"the token {principal.name!r} does not serve that tenant",
                           details=[{"reason": "tenant-not-granted", "field": "X-Stella-Tenant"}])
        return Caller(principal, tenant_header)
