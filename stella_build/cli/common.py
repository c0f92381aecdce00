"""What every command module shares: the settings of one invocation, result output (text or JSON)
and the `--output` option of subcommands."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from stella_build.cli.options import GLOBAL_OPTIONS, OptionSpec
from stella_build.engine.errors import StellaError, UsageError

CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Settings:
    """The global options of one invocation (main.py), as commands read them."""

    def __init__(self, workspace, cache_dir, remote_cache, remote_upload, remote_required, jobs,
                 output, quiet, debug, remote_cache_sign_key=None, remote_cache_trust=(),
                 remote_cache_timeout=None, executor=None, executor_fallback=None,
                 executor_recipient=None):
        self.workspace_arg = workspace
        self.cache_dir_arg = cache_dir
        self.remote_cache = remote_cache or os.environ.get("STELLA_REMOTE_CACHE")
        self.remote_upload = remote_upload
        self.remote_required = remote_required
        # Empty values count as unset: CI systems pass an empty string for a missing secret.
        self.remote_cache_sign_key = (remote_cache_sign_key
                                      or os.environ.get("STELLA_REMOTE_CACHE_SIGN_KEY") or None)
        trust = list(remote_cache_trust or ()) or [os.environ.get("STELLA_REMOTE_CACHE_TRUST", "")]
        self.remote_cache_trust = [p.strip() for item in trust for p in item.split(",") if p.strip()]
        self.remote_cache_timeout = remote_cache_timeout
        self.jobs = jobs or os.cpu_count() or 1
        self.output = output
        self.quiet = quiet
        self.debug = debug
        self.executor = executor                    # --executor / STELLA_EXECUTOR (click reads the env)
        self.executor_fallback = executor_fallback  # --executor-fallback / STELLA_EXECUTOR_FALLBACK
        self.executor_recipient = executor_recipient  # --executor-recipient / STELLA_EXECUTOR_RECIPIENT

    def workspace(self):
        from stella_build.engine.workspace import Workspace
        return Workspace.find(explicit=Path(self.workspace_arg) if self.workspace_arg else None)

    def remote(self):
        """A RemoteCache when --remote-cache / STELLA_REMOTE_CACHE is set, else None: with the
        writer key (--remote-cache-sign-key) and trusted keys (--remote-cache-trust) loaded, so a
        missing or unusable key fails here (TrustMaterialMissing, exit 4) before any action."""
        if not self.remote_cache:
            return None
        from stella_build.engine.cache.records import RecordSigner, TrustedKeys
        from stella_build.engine.cache.remote import RemoteCache, RemoteCacheError
        signer = RecordSigner.from_file(self.remote_cache_sign_key) if self.remote_cache_sign_key else None
        trust = TrustedKeys.from_files(self.remote_cache_trust)
        timeout = self.remote_cache_timeout or 10.0
        try:
            return RemoteCache.from_url(self.remote_cache, upload=self.remote_upload,
                                        required=self.remote_required, timeout=timeout,
                                        signer=signer, trust=trust)
        except (ValueError, RemoteCacheError) as exc:
            raise UsageError(f"bad remote cache URL: {exc}", field="--remote-cache",
                             reason="bad-remote-cache-url") from None

    def cache_dir(self) -> Path:
        from stella_build.engine.cache import default_cache_dir
        return Path(self.cache_dir_arg).resolve() if self.cache_dir_arg else default_cache_dir()


def emit(settings: Settings, text: str | None, data, *, exit_code: int = 0, errors: list | None = None) -> None:
    """Print a command's result: `data` as one JSON object with --output json, else `text`.

    A JSON object also carries ``ok`` (``exit_code == 0``), ``exit_code`` (the code the command
    exits with; the caller exits with it) and ``errors`` (``errors`` or []) unless `data` has
    them, so that every command's object has the keys of an error object
    (``{"ok": false, "exit_code": N, "errors": [...]}``, see main.py) and CI reads one shape."""
    if settings.output == "json":
        if isinstance(data, dict):
            data = {"ok": exit_code == 0, "exit_code": exit_code, "errors": errors or [], **data}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        click.echo(text)


def output_option(f):
    """`--output` on a subcommand, overriding the global flag (both spellings work)."""
    def set_output(ctx, _param, value):
        if value:
            ctx.obj.output = value
        return value
    return click.option("--output", type=click.Choice(["text", "json"]), default=None,
                        expose_value=False, callback=set_output, help="Result format.")(f)


class CommandFailed(StellaError):
    """A consumer-side failure carrying the exit code its library chose (e.g. MirrorError)."""

    def __init__(self, message: str, exit_code: int, *, reason: str | None = None,
                 field: str | None = None, file: str | None = None):
        self.exit_code = exit_code
        super().__init__(message, reason=reason, field=field, file=file)


def run_delivery(fn, *args, **kwargs):
    """Call a consumer-side (delivery) function; its MirrorError (KitError included) becomes the
    CLI error with the same exit code, reason, file and field (3 VerificationFailed, 4
    TrustMaterialMissing, 2 UsageError, else CommandFailed); an OSError (disk full, permission
    denied) is exit 1, reason `io-error`, never a traceback."""
    from stella_build.delivery.untrusted import MirrorError
    from stella_build.engine.errors import TrustMaterialMissing, UsageError, VerificationFailed

    try:
        return fn(*args, **kwargs)
    except MirrorError as exc:
        where = {"reason": exc.reason, "file": exc.file, "field": exc.field}
        cls = {3: VerificationFailed, 4: TrustMaterialMissing, 2: UsageError}.get(exc.exit_code)
        if cls is not None:
            raise cls(str(exc), **where) from None
        raise CommandFailed(str(exc), exc.exit_code, **where) from None
    except OSError as exc:
        raise CommandFailed(f"{exc.strerror or exc}", 1, reason="io-error",
                            file=exc.filename if isinstance(exc.filename, str) else None) from None


_CLICK_TYPES = {
    "text": None, "dir": click.Path(file_okay=False), "path": click.Path(), "paths": click.Path(),
    "seconds": click.FloatRange(min=0.1, max=3600.0),
    "output": click.Choice(["text", "json"]), "jobs": click.IntRange(1, 256), "bool": click.BOOL,
}


def click_option(spec: OptionSpec, **extra):
    """The click option decorator of an OptionSpec (options.py is the one table)."""
    kwargs: dict = {"help": spec.help, "envvar": spec.envvar, "metavar": spec.metavar}
    if spec.kind == "flag":
        kwargs["is_flag"] = True
    else:
        kwargs["type"] = _CLICK_TYPES[spec.kind]
    if spec.kind == "paths":
        kwargs["multiple"] = True  # its environment variable is read (comma-separated) by Settings
    if spec.kind == "bool":
        kwargs.update(default=True, show_default=True)
    if spec.kind == "output":
        kwargs["default"] = "text"
    kwargs.update(extra)
    return click.option(*spec.flags, spec.dest, **{k: v for k, v in kwargs.items() if v is not None})


def global_options(f):
    """Apply every global option of options.GLOBAL_OPTIONS, in table order."""
    for spec in reversed(GLOBAL_OPTIONS):
        f = click_option(spec)(f)
    return f
