"""The service config: one TOML file (`stella-build serve --config FILE`), validated with pydantic.

    [service]
    listen = "127.0.0.1:8080"          # --listen overrides
    database = "postgresql+psycopg://export@db/export"   # --database overrides; default SQLite
    concurrency = 2                    # runs built at once on this node
    retention_days = 30                # finished runs older than this are pruned
    default_quota = 4                  # max queued+running runs per tenant (429 beyond)

    [signing]                          # `sign: true` in a run request signs with this key
    key = "keys/cosign.key"            # relative to this file; password in $COSIGN_PASSWORD
    password_env = "COSIGN_PASSWORD"

    [tenants.acme]
    max_concurrent_runs = 2

    [[tokens]]                         # the token itself is never stored: only its sha256
    name = "ci-acme"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    tenants = ["acme"]
    scopes = ["export:read", "export:run", "export:download"]

    [profiles."//profiles:trivy-db"]
    schedule = "0 */6 * * *"           # cron (croniter; a 6th field is seconds)
    schedule_tenant = "ops"            # whose runs the scheduled ones are
    retention_days = 7                 # overrides [service] retention_days for this profile

    [registry]                         # the OCI pull endpoints /v2/ (registry_api.py, docs/api.md)
    anonymous_pull = ["acme/trivy-db"] # repositories (fnmatch patterns) pullable without a token
    token_ttl_seconds = 300            # bearer tokens from /v2/token

Errors are UsageError (exit 2) naming the file and field, with reason `service-config-invalid`.
"""
from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stella_build.engine.errors import UsageError

SCOPES = ("export:read", "export:run", "export:download", "export:admin")
Scope = Literal["export:read", "export:run", "export:download", "export:admin"]
ANONYMOUS_TENANT = "default"
_TENANT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class ServiceSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = Field("127.0.0.1:8080", description="HOST:PORT to listen on")
    database: str | None = Field(None, description="SQLAlchemy URL; default sqlite under the cache dir")
    node_id: str | None = Field(None, description="this node's name in run leases; default host:port")
    concurrency: int = Field(2, ge=1, le=64, description="runs built at once on this node")
    jobs: int | None = Field(None, ge=1, le=256, description="parallel actions per run (default -j)")
    max_attempts: int = Field(3, ge=1, le=10, description="starts of one run across server crashes")
    lease_seconds: float = Field(30.0, gt=0, description="a running run's lease, renewed every third")
    run_timeout_seconds: float = Field(3600.0, gt=0, description="a run still building after this fails")
    heartbeat_seconds: float = Field(15.0, gt=0, description="SSE comment heartbeat interval")
    retention_days: float | None = Field(30.0, gt=0, description="prune finished runs older than this")
    retention_interval_seconds: float = Field(3600.0, gt=0, description="how often pruning runs")
    default_quota: int = Field(4, ge=1, description="max queued+running runs per tenant")
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After of a 429")
    paused: bool = Field(False, description="start with the queue paused (POST /admin/queue resumes)")
    executor: str | None = Field(None, pattern=r"^(local|dask-local|dask://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5})$",
                                 description="where runs' actions execute: local (default), dask-local "
                                             "or dask://HOST:PORT (docs/scale-out.md)")
    remote_cache: str | None = Field(None, pattern=r"^https?://", description=(
        "HTTP remote cache (Bazel /ac /cas) of the runs; required with a dask:// executor"))


class SigningSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="path of the cosign.key, relative to the config file")
    password_env: str = Field("COSIGN_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class TenantSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent_runs: int | None = Field(None, ge=1)


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256 of the token (never the token)")
    tenants: list[str] = Field(min_length=1)
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, v: list[str]) -> list[str]:
        import re

        bad = [t for t in v if not re.fullmatch(_TENANT_PATTERN, t)]
        if bad:
            raise ValueError(f"tenant names must match {_TENANT_PATTERN}: {bad}")
        return v


class ProfileSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: str | None = Field(None, description="cron expression (5 fields, or 6 with seconds last)")
    schedule_tenant: str = Field(ANONYMOUS_TENANT, pattern=_TENANT_PATTERN)
    schedule_sign: bool = False
    retention_days: float | None = Field(None, gt=0)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from croniter import croniter

            if not croniter.is_valid(v):
                raise ValueError(f"not a valid cron expression: {v!r}")
        return v


class RegistrySection(BaseModel):
    """`[registry]`: the OCI Distribution (pull) endpoints under /v2/ (registry_api.py)."""

    model_config = ConfigDict(extra="forbid")

    anonymous_pull: list[str] = Field(default_factory=list, description=(
        "repositories (`tenant/profile`, fnmatch patterns like `acme/*`) anyone may pull without a token"))
    token_ttl_seconds: int = Field(300, ge=30, le=3600, description="lifetime of a /v2/token bearer token")
    realm: str | None = Field(None, pattern=r"^https?://", description=(
        "the token endpoint URL clients are sent to (default: this request's base URL + /v2/token)"))
    service: str = Field("stella-export", min_length=1, max_length=100, pattern=r'^[^"\\\s]+$')
    token_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "environment variable holding the HMAC key of bearer tokens, shared by every node "
        "(default: a random key per process)"))


class ServiceConfig(BaseModel):
    """The whole config file; `base_dir` (the file's directory) resolves relative paths."""

    model_config = ConfigDict(extra="forbid")

    service: ServiceSection = Field(default_factory=ServiceSection)
    signing: SigningSection | None = None
    tenants: dict[str, TenantSection] = Field(default_factory=dict)
    tokens: list[TokenEntry] = Field(default_factory=list)
    profiles: dict[str, ProfileSection] = Field(default_factory=dict)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def quota(self, tenant: str) -> int:
        """Max queued+running runs of `tenant`."""
        section = self.tenants.get(tenant)
        if section and section.max_concurrent_runs:
            return section.max_concurrent_runs
        return self.service.default_quota

    def profile(self, label: str) -> ProfileSection:
        return self.profiles.get(label) or ProfileSection()

    def retention_days(self, label: str) -> float | None:
        own = self.profiles.get(label)
        if own and own.retention_days:
            return own.retention_days
        return self.service.retention_days

    def signing_key(self) -> Path | None:
        if self.signing is None:
            return None
        path = Path(self.signing.key).expanduser()
        return (path if path.is_absolute() else self.base_dir / path).resolve()


def load_config(path: Path | None) -> ServiceConfig:
    """Read and validate the config file (None: every default, no tokens). UsageError (exit 2,
    reason `service-config-invalid` or `toml-invalid`) names the file and the field at fault."""
    if path is None:
        return ServiceConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"service config {path} does not exist", file=str(path), field="--config",
                         reason="service-config-missing") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid TOML: {exc}", file=str(path), reason="toml-invalid") from None
    try:
        config = ServiceConfig.model_validate({**data, "base_dir": path.resolve().parent})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"{err['msg']}", file=str(path), field=field,
                         reason="service-config-invalid") from None
    for label in config.profiles:
        if not label.startswith("//") or ":" not in label:
            raise UsageError(f"profile keys are full labels like \"//profiles:trivy-db\", not {label!r}",
                             file=str(path), field=f"profiles.{label}", reason="service-config-invalid")
    names = [t.name for t in config.tokens]
    if len(set(names)) != len(names):
        raise UsageError("token names must be unique", file=str(path), field="tokens",
                         reason="service-config-invalid")
    return config


def parse_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT" (IPv6 as "[::1]:8080") → (host, port); UsageError (reason bad-listen) otherwise."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen wants HOST:PORT, not {listen!r}", field="--listen", reason="bad-listen")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
