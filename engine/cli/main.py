"""The `stella-build` command line (click).

`stella-build LABEL...` is short for `stella-build build LABEL...`. Every command accepts
`--output json` for machine-readable results; errors never show a traceback unless `--debug`.
Exit codes: 0 ok · 1 build failed · 2 usage/Exportfile error · 3 verification failed ·
4 signing material or trust root missing · 5 would need the network while offline.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from ..errors import EXIT_USAGE, StellaError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class DefaultBuildGroup(click.Group):
    """A group whose default command is `build`: `stella-build //pkg:t` == `stella-build build //pkg:t`."""

    def parse_args(self, ctx, args):
        # find the first argument that is not a global option (or its value)
        i = 0
        takes_value = {"--workspace", "--cache-dir", "--remote-cache", "-j", "--jobs", "--output",
                       "--remote-upload"}
        while i < len(args):
            a = args[i]
            if a in takes_value:
                i += 2
                continue
            if a.startswith("-"):
                i += 1
                continue
            break
        if i < len(args) and args[i] not in self.commands:
            args = args[:i] + ["build"] + args[i:]
        return super().parse_args(ctx, args)


class Settings:
    def __init__(self, workspace, cache_dir, remote_cache, jobs, output, quiet, debug):
        self.workspace_arg = workspace
        self.cache_dir_arg = cache_dir
        self.remote_cache = remote_cache or os.environ.get("STELLA_REMOTE_CACHE")
        self.jobs = jobs or os.cpu_count() or 1
        self.output = output
        self.quiet = quiet
        self.debug = debug

    def workspace(self):
        from ..workspace import Workspace
        return Workspace.find(explicit=Path(self.workspace_arg) if self.workspace_arg else None)

    def remote(self):
        """A RemoteCache when --remote-cache / STELLA_REMOTE_CACHE is set, else None."""
        if not self.remote_cache:
            return None
        from ..cache.remote import RemoteCache
        try:
            return RemoteCache.from_url(self.remote_cache, upload=self.remote_upload,
                                        required=self.remote_required)
        except ValueError as exc:
            from ..errors import UsageError
            raise UsageError(f"bad remote cache URL: {exc}", field="--remote-cache") from None

    def cache_dir(self) -> Path:
        from ..cache import default_cache_dir
        return Path(self.cache_dir_arg).resolve() if self.cache_dir_arg else default_cache_dir()


@contextlib.contextmanager
def env_override(name: str, value: str):
    """Set an environment variable for the duration of a command: options such as
    `build --sign` / `--base` reach the rules this way, since analysis runs in this process."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def emit(settings: Settings, text: str | None, data) -> None:
    if settings.output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        click.echo(text)


@click.group(cls=DefaultBuildGroup, context_settings=CONTEXT)
@click.option("--workspace", type=click.Path(file_okay=False), help="Workspace root (default: found from the current directory).")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="STELLA_CACHE_DIR",
              help="Local cache directory [env STELLA_CACHE_DIR; default $XDG_CACHE_HOME/stella-build].")
@click.option("--remote-cache", metavar="URL", help="HTTP remote cache (Bazel /ac /cas layout) [env STELLA_REMOTE_CACHE].")
@click.option("--remote-upload", type=click.BOOL, default=True, show_default=True,
              help="Upload results to the remote cache (--remote-upload=false: read-only).")
@click.option("--remote-required", is_flag=True, help="Fail the build instead of degrading when the remote cache fails.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), help="Parallel actions (default: number of CPUs).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", help="Result format on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.version_option(package_name="stella-build")
@click.pass_context
def main_group(ctx, workspace, cache_dir, remote_cache, remote_upload, remote_required, jobs, output,
               quiet, debug):
    """stella-build: reproducible, signed vulnerability-evidence exports, built like a build system.

    \b
    Examples:
      stella-build //profiles:json-raw          build one target (build is the default verb)
      stella-build //profiles/...               build every target under profiles/
      stella-build build --check //profiles:all rebuild everything and compare bytes
      stella-build query 'rdeps(//profiles:osv)' --output graph | dot -Tsvg > g.svg
      stella-build explain //profiles:json-raw  why did (or will) this rebuild?
      stella-build cache stats                  what the local cache holds

    Outputs land in stella-out/<package>/<target>/. Exit codes: 0 ok, 1 build failed,
    2 usage or Exportfile error, 3 verification failed, 4 trust material missing,
    5 network needed while offline.
    """
    ctx.obj = Settings(workspace, cache_dir, remote_cache, jobs, output, quiet, debug)
    ctx.obj.remote_upload, ctx.obj.remote_required = remote_upload, remote_required


from . import commands  # noqa: E402,F401  (registers the subcommands)


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        main_group.main(args=argv, prog_name="stella-build", standalone_mode=False)
        return 0
    except StellaError as exc:
        if debug:
            import traceback
            traceback.print_exc()
        as_json = "json" in (argv if argv is not None else sys.argv[1:])
        _report(exc, as_json)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except SystemExit as exc:  # commands exit with their computed code
        return int(exc.code or 0)


def _report(exc: StellaError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "exit_code": exc.exit_code,
                               "errors": [e.to_json() for e in exc.errors]}, indent=2, sort_keys=True))
    for e in exc.errors:
        click.echo(f"error: {e}", err=True)


if __name__ == "__main__":
    sys.exit(main())
