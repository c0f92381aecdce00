"""`stella-build remote`: drive an Export Center service (`stella-build serve`) from CI.

    stella-build remote --server URL [--token T] [--tenant NAME] runs submit PROFILE [--wait]
    stella-build remote --server URL runs watch RUN_ID
    stella-build remote --server URL runs download RUN_ID -o DIR
    stella-build remote --server URL runs list [--status S] [--profile P]

Exit codes are the CLI's: 0 ok, 1 the run (or the server) failed, 2 usage (unknown profile, bad
request), 3 a downloaded file does not match its sha256, 4 token missing/unknown or scope not
granted, 5 the server cannot be reached. `--output json` prints one JSON object.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from stella_build.cli.common import CTX, CommandFailed, emit


def _client(ctx):
    from stella_build.service.client import Client

    o = ctx.find_object(dict)
    if not o["server"]:
        raise CommandFailed("--server URL (or STELLA_SERVER) is required", 2, reason="usage",
                            field="--server")
    return Client(o["server"], token=o["token"], tenant=o["tenant"])


def _fail(exc) -> CommandFailed:
    return CommandFailed(str(exc), exc.exit_code, reason=exc.reason, file=getattr(exc, "file", None))


def _guard(fn):
    """Turn the client's RemoteError into the CLI's error report (exit code, reason)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from stella_build.service.client import RemoteError

        try:
            return fn(*args, **kwargs)
        except RemoteError as exc:
            raise _fail(exc) from None
    return wrapper


@click.group(context_settings=CTX)
@click.option("--server", envvar="STELLA_SERVER", default=None, metavar="URL",
              help="The service's base URL, e.g. http://127.0.0.1:8080 [env STELLA_SERVER].")
@click.option("--token", envvar="STELLA_TOKEN", default=None, help="Bearer token [env STELLA_TOKEN].")
@click.option("--tenant", envvar="STELLA_TENANT", default=None,
              help="Tenant to act for when the token has several [env STELLA_TENANT].")
@click.pass_context
def remote(ctx, server, token, tenant):
    """Submit, watch, download and list runs on an Export Center service (docs/api.md).

    --server (or STELLA_SERVER) must be given before the subcommand, also to see a
    subcommand's --help.

    \b
      export STELLA_SERVER=http://127.0.0.1:8080 STELLA_TOKEN=...
      stella-build remote runs submit //profiles:trivy-db --sign --wait
      stella-build remote runs download RUN_ID -o trivy-db/
      stella-build remote --server http://127.0.0.1:8080 runs list --status failed
    Exit 0 ok, 1 the run or the server failed, 2 usage, 3 a download does not match its
    sha256, 4 token missing or not granted, 5 the server cannot be reached.
    """
    from stella_build.cli.common import Settings

    ctx.obj = {"server": server, "token": token, "tenant": tenant, "settings": ctx.find_object(Settings)}


@remote.group(context_settings=CTX)
def runs():
    """Runs of the service: submit, watch, download, list."""


def _settings(ctx):
    return ctx.find_object(dict)["settings"]


def _final_exit(run: dict) -> int:
    if run["status"] == "succeeded":
        return 0
    if run["status"] == "cancelled":
        return 1
    return int(run.get("exitCode") or 1)


@runs.command(context_settings=CTX)
@click.argument("profile")
@click.option("--wait", is_flag=True, help="Follow the run's events until it ends; exit with its code.")
@click.option("--sign", is_flag=True, help="Sign with the service's configured key.")
@click.option("--idempotency-key", default=None, help="Replay-safe key (default: a fresh UUID).")
@click.pass_context
@_guard
def submit(ctx, profile, wait, sign, idempotency_key):
    """Submit a run of PROFILE (//pkg:target); prints its run id."""
    settings = _settings(ctx)
    client = _client(ctx)
    try:
        accepted = client.submit(profile, sign=sign, idempotency_key=idempotency_key)
        if not wait:
            emit(settings, accepted["runId"], accepted)
            return
        _follow(client, accepted["runId"], settings)
        run = client.run(accepted["runId"])
    finally:
        client.close()
    _report_final(settings, run)


def _report_final(settings, run: dict) -> None:
    code = _final_exit(run)
    text = f"{run['runId']}: {run['status']}"
    if run["status"] == "succeeded":
        text += f" ({len(run['outputs'])} files, manifest sha256 {run.get('manifestSha256')})"
    for err in run.get("errors") or []:
        where = ": ".join(str(x) for x in (err.get("file"), err.get("target")) if x)
        click.echo(f"error: {where + ': ' if where else ''}{err.get('message')} [{err.get('reason')}]", err=True)
    emit(settings, text, {"run": run}, exit_code=code, errors=run.get("errors") or [])
    if code:
        sys.exit(code)


class _Renderer:
    """A progress bar on a TTY (one updating line on stderr), plain event lines otherwise."""

    def __init__(self, quiet: bool):
        self.tty = sys.stderr.isatty()
        self.quiet = quiet

    def __call__(self, event: str, data: dict) -> None:
        if self.quiet:
            return
        if self.tty:
            if event == "progress":
                pct = int(data.get("percent", 0))
                bar = "#" * (pct // 4) + "." * (25 - pct // 4)
                sys.stderr.write(f"\r\x1b[K[{bar}] {pct:3d}% {data.get('itemsCompleted')}/{data.get('itemsTotal')} actions")
            elif event in ("succeeded", "failed", "cancelled"):
                sys.stderr.write(f"\r\x1b[K{event}\n")
            elif event != "artifact_ready":
                sys.stderr.write(f"\r\x1b[K{event}")
            sys.stderr.flush()
            return
        if event == "progress":
            line = f"progress {data.get('percent')}% ({data.get('itemsCompleted')}/{data.get('itemsTotal')})"
        elif event == "artifact_ready":
            line = f"artifact_ready {data.get('path')} {data.get('bytes')} bytes sha256:{data.get('sha256')}"
        else:
            line = event + ("" if not data.get("reason") else f" ({data['reason']})")
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _follow(client, run_id: str, settings) -> None:
    render = _Renderer(settings.quiet or settings.output == "json" and not sys.stderr.isatty())
    for _id, event, data in client.events(run_id):
        render(event, data)


@runs.command(context_settings=CTX)
@click.argument("run_id")
@click.pass_context
@_guard
def watch(ctx, run_id):
    """Follow RUN_ID's events (progress bar on a TTY, lines otherwise) until it ends."""
    settings = _settings(ctx)
    client = _client(ctx)
    try:
        _follow(client, run_id, settings)
        run = client.run(run_id)
    finally:
        client.close()
    _report_final(settings, run)


@runs.command(context_settings=CTX)
@click.argument("run_id")
@click.option("-o", "--output-dir", "out", required=True, type=click.Path(file_okay=False),
              help="Directory to download the run's output tree into.")
@click.pass_context
@_guard
def download(ctx, run_id, out):
    """Download RUN_ID's outputs into DIR, resuming partial files, verifying every sha256."""
    from stella_build.service.client import RemoteError

    settings = _settings(ctx)
    client = _client(ctx)
    try:
        run = client.run(run_id)
        if run["status"] != "succeeded":
            if run["status"] in ("queued", "running"):
                raise RemoteError(f"{run_id} is {run['status']}: wait for it (runs watch) first", 2,
                                  "run-not-finished")
            raise RemoteError(f"{run_id} {run['status']}: nothing to download", _final_exit(run),
                              run.get("errorCode") or "run-failed")
        stats = client.download(run, Path(out),
                                on_file=None if settings.quiet else
                                lambda p, how: click.echo(f"{how}: {p}", err=True))
    finally:
        client.close()
    emit(settings, f"{run_id}: {len(run['outputs'])} files in {out} ({stats['downloaded']} downloaded, "
                   f"{stats['resumed']} resumed, {stats['skipped']} already present; all sha256 verified)",
         {"ok": True, "run": run_id, "directory": str(out), **stats,
          "manifestSha256": run.get("manifestSha256")})


@runs.command(name="list", context_settings=CTX)
@click.option("--status", default=None, type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--profile", default=None, help="Only runs of this profile.")
@click.option("--limit", default=50, type=click.IntRange(1, 10000))
@click.pass_context
@_guard
def list_runs(ctx, status, profile, limit):
    """The tenant's runs, newest first."""
    settings = _settings(ctx)
    client = _client(ctx)
    try:
        items = client.runs(status=status, profile=profile, limit=limit)
    finally:
        client.close()
    lines = [f"{r['runId']}  {r['status']:<9}  {r['profile']}  {r['createdAt']}" for r in items]
    emit(settings, "\n".join(lines) if lines else "no runs", {"items": items})


@runs.command(context_settings=CTX)
@click.argument("run_id")
@click.pass_context
@_guard
def cancel(ctx, run_id):
    """Cancel RUN_ID (queued: at once; running: its build is stopped)."""
    settings = _settings(ctx)
    client = _client(ctx)
    try:
        run = client.cancel(run_id)
    finally:
        client.close()
    emit(settings, f"{run_id}: {run['status']}" + (" (stopping)" if run.get("cancelRequested") and run["status"] == "running" else ""),
         {"ok": True, "run": run})
