"""User-facing errors and the exit codes of design §6.

Every error carries the target, file, line and field it is about, so the CLI can print one clear
line (or a JSON object) instead of a traceback, and a machine-readable `reason`: a short kebab-case
word (e.g. `base-missing`, `dependency-cycle`, `signing-key-missing`) that scripts and tests match on
instead of message text. A raise site without a specific reason gets its class's default
(`usage`, `build-failed`, `verification-failed`, `trust-missing`, `network-required`). Reasons
are listed in docs/architecture.md ("Errors"); new ones may be added, none renamed.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFY_FAILED = 3
EXIT_MISSING_TRUST = 4
EXIT_NEEDS_NETWORK = 5


@dataclass
class ErrorInfo:
    message: str
    target: str | None = None
    file: str | None = None
    line: int | None = None
    field: str | None = None
    traceback: str | None = None  # of a rule bug; shown with --debug only
    reason: str | None = None

    def to_json(self) -> dict:
        return {"target": self.target, "file": self.file, "line": self.line,
                "field": self.field, "message": self.message, "reason": self.reason}

    def __str__(self) -> str:
        where = self.file or ""
        if self.file and self.line:
            where += f":{self.line}"
        message = self.message
        if where and message.startswith(f"{where}: "):
            message = message[len(where) + 2:]  # the message already starts with it: once
        parts = [p for p in (where, self.target, self.field and f"field '{self.field}'") if p]
        return (": ".join(parts) + ": " if parts else "") + message


class StellaError(Exception):
    """Base of errors shown to users; `exit_code` follows design §6."""

    exit_code = EXIT_USAGE
    default_reason = "usage"

    def __init__(self, message: str, *, target: str | None = None, file: str | None = None,
                 line: int | None = None, field: str | None = None,
                 errors: list[ErrorInfo] | None = None, reason: str | None = None):
        self.errors = errors or [ErrorInfo(message, target, file, line, field,
                                           reason=reason or self.default_reason)]
        super().__init__("\n".join(str(e) for e in self.errors))

    @property
    def reason(self) -> str | None:
        return self.errors[0].reason


class UsageError(StellaError):
    """Bad command line, bad label, bad Exportfile: exit 2."""

    exit_code = EXIT_USAGE


class BuildFailed(StellaError):
    """An action failed: exit 1."""

    exit_code = EXIT_BUILD_FAILED
    default_reason = "build-failed"


class VerificationFailed(StellaError):
    exit_code = EXIT_VERIFY_FAILED
    default_reason = "verification-failed"


class TrustMaterialMissing(StellaError):
    exit_code = EXIT_MISSING_TRUST
    default_reason = "trust-missing"


class NetworkRequired(StellaError):
    exit_code = EXIT_NEEDS_NETWORK
    default_reason = "network-required"


@dataclass
class ActionError(Exception):
    """Raised by a rule's action function for bad input; names the file and field at fault."""

    message: str
    file: str | None = None
    field: str | None = None
    extra: dict = dc_field(default_factory=dict)
    reason: str | None = None

    def __str__(self) -> str:
        return str(ErrorInfo(self.message, file=self.file, field=self.field))


class InputTooLarge(ActionError):
    """A file input larger than the limit its reader gave (`ActionContext.read_input`); its
    digest was checked first, so the refusal is about the bytes the action key names.
    `size` (bytes; at least limit + 1 when the file grew while read) and `limit` (bytes)."""

    def __init__(self, name: str, size: int, limit: int):
        super().__init__(f"input {name} is {size} bytes, more than the {limit} bytes allowed",
                         reason="input-too-large")
        self.size, self.limit = size, limit
