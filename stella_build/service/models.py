"""The API's request and response bodies (pydantic; FastAPI derives the OpenAPI document from them).

Field names are camelCase on the wire, as in the StellaOps Export Center API (runId, itemsTotal).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SelectorsIn(_Model):
    """Which evidence the run exports; overrides the profile's own selectors key by key
    (Exportfile `selectors`, docs/exportfile.md)."""

    ecosystems: list[str] | None = Field(None, description="OSV ecosystem names to keep")
    packages: list[str] | None = Field(None, description="package names to keep")
    modified_since: str | None = Field(None, description="RFC 3339 date or date-time")


class RunRequest(_Model):
    """POST /api/export/runs."""

    profile: str = Field(description="a profile label, e.g. //profiles:json-raw (or profiles:json-raw)",
                         min_length=3, max_length=200)
    selectors: SelectorsIn | None = Field(None, description="override the profile's selectors")
    sign: bool | str = Field(False, description="true: sign with the service's configured key; "
                                                  "false: the profile's own Exportfile decides")


class Links(BaseModel):
    status: str
    events: str
    download: str
    manifest: str | None = None
    provenance: str | None = None


class RunAccepted(BaseModel):
    """202 answer to a run request (also the replay of an Idempotency-Key)."""

    runId: str
    status: RunStatus
    links: Links


class Progress(BaseModel):
    percent: int = Field(ge=0, le=100)
    itemsCompleted: int = Field(ge=0, description="build actions finished (executed or cached)")
    itemsTotal: int = Field(ge=0, description="build actions of the run (0 until analysis is done)")


class OutputFile(BaseModel):
    path: str = Field(description="path inside the target's output tree (as under stella-out/)")
    sha256: str
    bytes: int
    mediaType: str
    url: str


class ErrorDetail(BaseModel):
    """One error: the CLI's target/file/line/field/message plus the machine-readable reason."""

    model_config = ConfigDict(extra="allow")

    reason: str
    message: str | None = None
    target: str | None = None
    file: str | None = None
    line: int | None = None
    field: str | None = None


class ActionCounts(BaseModel):
    total: int = 0
    executed: int = 0
    cached: int = 0
    failed: int = 0


class Run(BaseModel):
    runId: str
    tenant: str
    profile: str
    profileKind: str
    status: RunStatus
    trigger: Literal["api", "schedule"]
    selectors: dict | None = None
    signed: bool = False
    attempt: int
    createdAt: str
    startedAt: str | None = None
    finishedAt: str | None = None
    durationMs: int | None = None
    progress: Progress
    actions: ActionCounts
    outputs: list[OutputFile]
    manifestSha256: str | None = Field(None, description="sha256 of the run's manifest file")
    bytes: int = Field(0, description="total size of the outputs")
    exitCode: int | None = Field(None, description="the CLI's exit code for this build")
    errorCode: str | None = Field(None, description="reason of the first error of a failed run")
    errors: list[ErrorDetail]
    cancelRequested: bool = False
    links: Links


class RunSummary(BaseModel):
    runId: str
    tenant: str
    profile: str
    status: RunStatus
    trigger: Literal["api", "schedule"]
    createdAt: str
    finishedAt: str | None = None
    manifestSha256: str | None = None
    errorCode: str | None = None


class RunList(BaseModel):
    items: list[RunSummary]
    nextCursor: str | None = Field(None, description="pass as ?cursor= for the next page")


class LastRun(BaseModel):
    runId: str
    finishedAt: str
    manifestSha256: str | None = None


class Profile(BaseModel):
    label: str
    package: str
    name: str
    rule: str
    kind: str
    description: str | None = None
    selectors: dict = Field(default_factory=dict, description="effective selectors (package defaults merged)")
    deps: list[str]
    schedule: str | None = None
    retentionDays: float | None = None
    archive: str | None = Field(None, description="path of the bundle archive, if the kind has one")
    archiveMediaType: str | None = None
    lastSuccessfulRun: LastRun | None = None


class ProfileList(BaseModel):
    items: list[Profile]


class ErrorBody(BaseModel):
    """Every error response."""

    code: str = Field(description="ERR_EXPORT_* (docs/api.md)")
    message: str
    details: list[ErrorDetail]
    traceId: str
    timestamp: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class PruneResult(BaseModel):
    prunedRuns: int


class QueueState(_Model):
    paused: bool = Field(description="true: this node claims no queued run (running ones go on)")
