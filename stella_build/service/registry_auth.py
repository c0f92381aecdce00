"""Who may pull from the registry (/v2/): Basic credentials, bearer tokens, anonymous repositories.

Registry clients (Trivy, skopeo, oras, docker) authenticate in one of three ways:

- `Authorization: Basic base64(tenant:api-token)`: the user is the tenant, the password one of the
  service's API tokens (config `[[tokens]]`), which must serve that tenant and hold
  `export:download`;
- the bearer flow: a 401 carries `WWW-Authenticate: Bearer realm="<url>/v2/token",
  service="stella-export",scope="repository:<name>:pull"`; the client asks the token endpoint
  (with Basic credentials as above, or none) and retries with `Authorization: Bearer <token>`.
  Tokens are short-lived (`[registry] token_ttl_seconds`) and name the repositories they may pull;
- `Authorization: Bearer <api-token>` (curl): an API token used directly.

A repository matching `[registry] anonymous_pull` (fnmatch patterns) needs none of them; a service
without `[[tokens]]` is open (loopback only, see auth.py) and so is every repository.

Bearer tokens are `base64url(json claims).base64url(hmac-sha256)`, hand-written with the stdlib
because no JWT library is a core dependency (PyJWT arrives only with the optional `keyless` extra)
and the service is both issuer and only verifier: a symmetric MAC over canonical JSON is the whole
need. The key is random per process unless `[registry] token_key_env` names a shared one.
"""
from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass

from stella_build.service.auth import Authenticator, Principal, hash_token
from stella_build.service.config import ServiceConfig

DOWNLOAD = "export:download"
# docker's token scope grammar: repository:<name>:<action>[,<action>]
_SCOPE = re.compile(r"^repository:([^:]+):([a-z*,]+)$")


class RegistryError(Exception):
    """A registry error response: HTTP `status`, OCI error `code` (UNAUTHORIZED, DENIED, ...),
    `message`, a kebab-case `reason` (in the error's `detail`) and extra `headers`."""

    def __init__(self, status: int, code: str, message: str, *, reason: str,
                 headers: dict[str, str] | None = None, detail: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.reason = status, code, message, reason
        self.headers = headers or {}
        self.detail = {"reason": reason, **(detail or {})}


@dataclass(frozen=True)
class Grant:
    """Who is pulling: a principal name (or "anonymous") and what it may pull. `tenants` None means
    every tenant (an open service); `repositories` None means every repository of those tenants."""

    subject: str
    tenants: frozenset[str] | None
    repositories: frozenset[str] | None = None

    def may_pull(self, repository: str) -> bool:
        tenant = repository.split("/", 1)[0]
        if self.tenants is not None and tenant not in self.tenants:
            return False
        return self.repositories is None or repository in self.repositories


class RegistryAuth:
    """Authentication of /v2/ requests and the token endpoint's grants (see the module docstring)."""

    def __init__(self, config: ServiceConfig, authenticator: Authenticator):
        self.config = config.registry
        self.auth = authenticator
        named = os.environ.get(self.config.token_key_env) if self.config.token_key_env else None
        self._key = hashlib.sha256(named.encode()).digest() if named else secrets.token_bytes(32)

    # -- the challenge ------------------------------------------------------------------------
    def realm(self, base_url: str) -> str:
        return self.config.realm or base_url.rstrip("/") + "/v2/token"

    def challenge(self, base_url: str, repository: str | None, reason: str, message: str) -> RegistryError:
        """The 401 UNAUTHORIZED whose WWW-Authenticate starts the bearer flow."""
        value = f'Bearer realm="{self.realm(base_url)}",service="{self.config.service}"'
        if repository:
            value += f',scope="repository:{repository}:pull"'
        return RegistryError(401, "UNAUTHORIZED", message, reason=reason, headers={"WWW-Authenticate": value})

    # -- credentials ----------------------------------------------------------------------------
    def anonymous(self, repository: str) -> bool:
        """Whether `repository` may be pulled without credentials."""
        return self.auth.open or any(fnmatch.fnmatchcase(repository, p) for p in self.config.anonymous_pull)

    def _principal_grant(self, principal: Principal, tenants: tuple[str, ...]) -> Grant:
        if not principal.has(DOWNLOAD):
            raise RegistryError(403, "DENIED", f"the token {principal.name!r} lacks {DOWNLOAD}",
                                reason="scope-missing", detail={"scope": DOWNLOAD})
        return Grant(principal.name, frozenset(tenants))

    def _basic(self, value: str) -> Grant:
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, sep, password = "", "", ""
        if not sep or not user or not password:
            raise RegistryError(401, "UNAUTHORIZED", "Basic credentials must be base64(tenant:token)",
                                reason="token-malformed")
        principal = self.auth.by_hash.get(hash_token(password))
        if principal is None:
            raise RegistryError(401, "UNAUTHORIZED", "unknown token", reason="token-invalid")
        if user not in principal.tenants:
            raise RegistryError(403, "DENIED", f"the token {principal.name!r} does not serve tenant {user!r}",
                                reason="tenant-not-granted")
        return self._principal_grant(principal, (user,))

    def credentials(self, authorization: str | None) -> Grant | None:
        """The grant of an `Authorization` header (None when there is none). RegistryError 401 for
        malformed or unknown credentials, 403 when the token lacks export:download or the tenant."""
        if self.auth.open:
            return Grant("anonymous", None)
        if not authorization or not authorization.strip():
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "basic":
            return self._basic(value)
        if scheme.lower() != "bearer" or not value.strip():
            raise RegistryError(401, "UNAUTHORIZED", "use Basic or Bearer credentials", reason="token-malformed")
        value = value.strip()
        claims = self._verify(value)
        if claims is not None:
            return Grant(claims["sub"], None, frozenset(claims["acc"]))
        principal = self.auth.by_hash.get(hash_token(value))
        if principal is None:
            raise RegistryError(401, "UNAUTHORIZED", "unknown or expired bearer token", reason="token-invalid")
        return self._principal_grant(principal, principal.tenants)

    def check_pull(self, authorization: str | None, repository: str, base_url: str) -> None:
        """Nothing when `repository` may be pulled with these credentials; RegistryError 401 with
        the bearer challenge (no or bad credentials), 403 DENIED (credentials without that grant)."""
        if self.anonymous(repository):
            return
        try:
            grant = self.credentials(authorization)
        except RegistryError as exc:
            if exc.status == 401:
                raise self.challenge(base_url, repository, exc.reason, exc.message) from None
            raise
        if grant is None:
            raise self.challenge(base_url, repository, "token-missing", "authentication required")
        if not grant.may_pull(repository):
            raise RegistryError(403, "DENIED", f"no pull access to {repository}", reason="repository-not-granted")

    # -- the token endpoint ---------------------------------------------------------------------
    def issue(self, authorization: str | None, scopes: list[str], base_url: str) -> dict:
        """The token endpoint's answer `{token, access_token, expires_in, issued_at}` for the
        requested `scopes` (`repository:<name>:pull`). Scopes the caller may not pull are left out
        of the token (docker token spec), so a client then gets 403 DENIED from the registry.
        RegistryError 401 for bad credentials."""
        grant = self.credentials(authorization) if authorization else (
            Grant("anonymous", None) if self.auth.open else None)
        granted = []
        for scope in scopes:
            for item in scope.split():
                match = _SCOPE.match(item)
                if not match or not ({"pull", "*"} & set(match[2].split(","))):
                    continue
                name = match[1]
                if self.anonymous(name) or (grant is not None and grant.may_pull(name)):
                    granted.append(name)
        now = int(time.time())
        ttl = self.config.token_ttl_seconds
        token = self._sign({"sub": grant.subject if grant else "anonymous", "acc": sorted(set(granted)),
                            "iat": now, "exp": now + ttl})
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued}

    def _sign(self, claims: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
        body_text = body.decode().rstrip("=")
        mac = hmac.new(self._key, body_text.encode(), hashlib.sha256).digest()
        return "stk." + body_text + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def _verify(self, token: str) -> dict | None:
        """The claims of a token this process (or key) issued and that has not expired; else None."""
        prefix, _, rest = token.partition(".")
        body, _, mac = rest.partition(".")
        if prefix != "stk" or not body or not mac:
            return None
        want = base64.urlsafe_b64encode(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(want.rstrip(b"="), mac.encode()):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            return None
        if not isinstance(claims.get("acc"), list) or not isinstance(claims.get("sub"), str):
            return None
        return claims
