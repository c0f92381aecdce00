"""Secrets of an action sealed to a worker's age X25519 recipient (docs/scale-out.md).

An action that holds secrets (the Sign action: `{"key_path", "password"}`; TUF keys) runs on a
Dask worker only when its target sets `remote_secrets = true` AND the client knows the workers'
recipient (`STELLA_EXECUTOR_RECIPIENT=age1…`). Then the client seals, with age (pyrage, the same
library as encrypted mirrors), one envelope holding every secret value and the bytes of every
secret *file* (a value that is an absolute path of a regular file on the client: the worker cannot
read the client's paths). The Dask task carries only the ciphertext. The worker opens it with its
identity (`STELLA_WORKER_AGE_IDENTITY=<file>`), writes each file mode 0600 into a private 0700
directory next to the action's sandbox, and hands the action the same `secrets` shape with each
file value replaced by the path of its copy; the directory is removed when the action ends.

Envelope (before encryption, JSON): {"v": 1, "values": {name: str}, "files": {name: base64}}.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

from stella_build.engine.errors import UsageError

RECIPIENT_ENV = "STELLA_EXECUTOR_RECIPIENT"
IDENTITY_ENV = "STELLA_WORKER_AGE_IDENTITY"
# A secret file is a key, not data: anything larger is refused (the action then runs here).
MAX_SECRET_FILE = 1 << 20
_VERSION = 1


class SealError(Exception):
    """The secrets cannot be sealed or opened. `reason`: `executor-secrets-unsealable` (client: a
    secret file unreadable or too large), `executor-secrets-no-identity` (worker without a usable
    identity), `executor-secrets-undecryptable` (not sealed to this worker's identity)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def parse_recipient(text: str | None, *, field: str = "--executor-recipient"):
    """`age1…` → a pyrage X25519 Recipient; None for None/"" (no recipient: secrets stay here).

    Raises UsageError (exit 2, reason `bad-executor-recipient`) naming `field` for anything else."""
    value = (text or "").strip()
    if not value:
        return None
    import pyrage
    try:
        return pyrage.x25519.Recipient.from_str(value)
    except pyrage.RecipientError as exc:
        raise UsageError(f"{field} must be an age X25519 recipient (age1…): {exc}", field=field,
                         reason="bad-executor-recipient") from None


def _secret_file(value: str) -> Path | None:
    """The file a secret value names, or None when the value is not an absolute path of a regular
    file (a password). Rules pass key files as absolute paths (resolved at analysis)."""
    if not value or not os.path.isabs(value) or "\n" in value:
        return None
    try:
        return Path(value) if stat.S_ISREG(os.stat(value).st_mode) else None
    except (OSError, ValueError):
        return None


def seal(secrets: dict[str, str], recipient) -> bytes:
    """The age ciphertext (bytes) of `secrets` and of the files they name, for `recipient`.

    Raises SealError (`executor-secrets-unsealable`) when a secret file cannot be read or is larger
    than MAX_SECRET_FILE bytes."""
    import pyrage
    values: dict[str, str] = {}
    files: dict[str, str] = {}
    for name, value in sorted(secrets.items()):
        path = _secret_file(value)
        if path is None:
            values[name] = value
            continue
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise SealError(f"secret {name!r}: cannot read its file: {exc.strerror or exc}",
                            "executor-secrets-unsealable") from None
        if len(data) > MAX_SECRET_FILE:
            raise SealError(f"secret {name!r}: its file is larger than {MAX_SECRET_FILE} bytes",
                            "executor-secrets-unsealable")
        files[name] = base64.b64encode(data).decode("ascii")
    plain = json.dumps({"v": _VERSION, "values": values, "files": files}).encode("utf-8")
    return pyrage.encrypt(plain, [recipient])


def load_identities(environ=None) -> list:
    """The worker's age identities from the file named by STELLA_WORKER_AGE_IDENTITY (age-keygen
    format: `AGE-SECRET-KEY-1…` lines, `#` comments). Raises SealError
    (`executor-secrets-no-identity`) when unset, unreadable or holding no identity; the message
    names the variable and the file, never a key."""
    import pyrage
    env = os.environ if environ is None else environ
    name = env.get(IDENTITY_ENV) or ""
    if not name:
        raise SealError(f"this worker has no age identity ({IDENTITY_ENV} is not set), so it cannot "
                        "open an action's sealed secrets", "executor-secrets-no-identity")
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SealError(f"{IDENTITY_ENV}: cannot read {name}: {getattr(exc, 'strerror', None) or exc}",
                        "executor-secrets-no-identity") from None
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise SealError(f"{IDENTITY_ENV}: {name}:{number} is not an age X25519 identity",
                            "executor-secrets-no-identity") from None
    if not identities:
        raise SealError(f"{IDENTITY_ENV}: {name} holds no AGE-SECRET-KEY-1… identity",
                        "executor-secrets-no-identity")
    return identities


def open_sealed(ciphertext: bytes, identities: list, directory: Path) -> dict[str, str]:
    """Decrypt `ciphertext` (from `seal`) and return the action's `secrets`: values as sealed,
    each secret file written to `directory` (created 0700, must not exist; files 0600) and its
    value replaced by that path. Raises SealError (`executor-secrets-undecryptable`) when no
    identity opens it or the envelope is malformed; `directory` is then removed."""
    import pyrage
    try:
        envelope = json.loads(pyrage.decrypt(bytes(ciphertext), identities))
        if not isinstance(envelope, dict) or envelope.get("v") != _VERSION:
            raise ValueError("unknown envelope version")
        values = {str(k): str(v) for k, v in dict(envelope.get("values") or {}).items()}
        files = {str(k): base64.b64decode(v, validate=True)
                 for k, v in dict(envelope.get("files") or {}).items()}
    except pyrage.DecryptError as exc:
        raise SealError(f"the action's secrets are not sealed to this worker's identity ({exc}): "
                        f"set the client's {RECIPIENT_ENV} to this worker's recipient",
                        "executor-secrets-undecryptable") from None
    except (ValueError, TypeError) as exc:
        raise SealError(f"the action's sealed secrets are malformed: {exc}",
                        "executor-secrets-undecryptable") from None
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700)
    try:
        # Files are numbered, not named after the secret: a name never becomes a path component.
        for index, (name, data) in enumerate(sorted(files.items())):
            path = directory / f"secret-{index}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            values[name] = str(path)
    except BaseException:
        remove_opened(directory)
        raise
    return values


def remove_opened(directory: Path) -> None:
    """Remove a directory written by `open_sealed` (no error if it is gone)."""
    shutil.rmtree(directory, ignore_errors=True)
