"""The `stella-build` command line (click): the composition root of the product.

`stella-build LABEL...` is short for `stella-build build LABEL...`. Global options go before or
after the verb. Every command accepts `--output json` for machine-readable results; errors never
show a traceback unless `--debug`, and in JSON carry a machine-readable `reason`.
Exit codes: 0 ok · 1 build failed · 2 usage/Exportfile error · 3 verification failed ·
4 signing material or trust root missing · 5 would need the network while offline.

Command groups are registered explicitly below, one module per verb family.
"""
from __future__ import annotations

import json
import sys

import click

from stella_build.cli import build as build_commands
from stella_build.cli import cache as cache_commands
from stella_build.cli import devportal as devportal_commands
from stella_build.cli import inspect as inspect_commands
from stella_build.cli import kit as kit_commands
from stella_build.cli import mirror as mirror_commands
from stella_build.cli import remote as remote_commands
from stella_build.cli import serve as serve_commands
from stella_build.cli import sign as sign_commands
from stella_build.cli import trivy as trivy_commands
from stella_build.cli.common import CTX, Settings, global_options
from stella_build.cli.options import GLOBAL_BY_FLAG, HELP_FLAGS, OptionSpec, hoist_globals
from stella_build.engine.errors import EXIT_USAGE, StellaError

def _own_options(command: click.Command) -> dict[str, OptionSpec]:
    own = {}
    for p in command.params:
        if isinstance(p, click.Option):
            spec = OptionSpec(tuple(p.opts + p.secondary_opts), p.name or "",
                              "flag" if (p.is_flag or p.count) else "text", "")
            own.update({f: spec for f in spec.flags})
    return own


class StellaGroup(click.Group):
    """A group whose default command is `build` and whose global options may follow the verb."""

    def _first_positional(self, args: list[str], start: int = 0) -> int:
        i = start
        while i < len(args):
            spec = GLOBAL_BY_FLAG.get(args[i].partition("=")[0]) or GLOBAL_BY_FLAG.get(args[i][:2])
            if spec is None:
                return i
            attached = "=" in args[i] or (not args[i].startswith("--") and len(args[i]) > 2)
            i += 2 if spec.takes_value and not attached else 1
        return i

    def parse_args(self, ctx, args):
        args = list(args)
        i = self._first_positional(args)
        verb = args[i] if i < len(args) else None
        if verb is not None and verb not in self.commands and verb not in (*HELP_FLAGS, "--version"):
            args.insert(i, "build")
            verb = "build"
        command = self.commands.get(verb) if verb else None
        own: dict[str, OptionSpec] = {}
        if command is not None:
            own.update(_own_options(command))
            if isinstance(command, click.Group):
                sub = next((a for a in args[i + 1:] if not a.startswith("-")), None)
                if sub in command.commands:
                    own.update(_own_options(command.commands[sub]))
        return super().parse_args(ctx, hoist_globals(args, own))


@click.group(cls=StellaGroup, context_settings=CTX)
@global_options
@click.version_option(package_name="stella-build")
@click.pass_context
def main_group(ctx, **options):
    """stella-build: reproducible, signed vulnerability-evidence exports, built like a build system.

    \b
    Examples:
      stella-build //profiles:json-raw          build one target (build is the default verb)
      stella-build //profiles/...               build every target under profiles/
      stella-build build --check //profiles:all rebuild everything and compare bytes
      stella-build query 'rdeps(//profiles:osv-sample)' --output graph | dot -Tsvg > g.svg
      stella-build explain //profiles:json-raw  why did (or will) this rebuild?
      stella-build cache stats                  what the local cache holds

    Global options may also follow the verb (stella-build build //x -j1 --output json).
    Outputs land in stella-out/<package>/<target>/. Exit codes: 0 ok, 1 build failed,
    2 usage or Exportfile error, 3 verification failed, 4 trust material missing,
    5 network needed while offline.
    """
    ctx.obj = Settings(**options)


# One registration per verb family (no registration by import side effect).
for command in (build_commands.build, build_commands.query, build_commands.explain,
                build_commands.init, cache_commands.cache, sign_commands.keys, sign_commands.verify,
                mirror_commands.mirror, inspect_commands.inspect, serve_commands.serve, remote_commands.remote,
                kit_commands.kit, devportal_commands.devportal, trivy_commands.trivy_db):
    main_group.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code of the table above."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        main_group.main(args=args, prog_name="stella-build", standalone_mode=False)
        return 0
    except StellaError as exc:
        if debug:
            import traceback
            traceback.print_exc()
        _report(exc, _wants_json(args))
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        if _wants_json(args):  # CI asked for JSON: a usage error is an error object too
            click.echo(json.dumps({"ok": False, "exit_code": EXIT_USAGE,
                                   "errors": [_click_error(exc).to_json()]}, indent=2, sort_keys=True))
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except SystemExit as exc:  # commands exit with their computed code
        return int(exc.code or 0)
    except OSError as exc:  # a path given on the command line cannot be created or written
        # (--cache-dir, init DIR, remote runs download -o DIR, keys generate --output-dir):
        # exit 1, reason io-error, as run_delivery does, never a traceback
        if debug:
            import traceback
            traceback.print_exc()
        from stella_build.cli.common import CommandFailed
        err = CommandFailed(f"{exc.strerror or exc}", 1, reason="io-error",
                            file=exc.filename if isinstance(exc.filename, str) else None)
        _report(err, _wants_json(args))
        return 1


def _click_error(exc: click.ClickException):
    """The ErrorInfo (reason `usage`) of a click usage error; `field` is the parameter it names
    (`--out`, `PATCH`) when click knows it."""
    from stella_build.engine.errors import UsageError

    param = getattr(exc, "param", None)
    field = getattr(exc, "option_name", None)  # NoSuchOption, BadOptionUsage
    if param is not None:
        field = (max(param.opts, key=len) if isinstance(param, click.Option) and param.opts
                 else (param.human_readable_name or "").upper() or None)
    return UsageError(exc.format_message(), field=field).errors[0]


def _wants_json(args: list[str]) -> bool:
    return any(a == "--output=json" or (a == "--output" and i + 1 < len(args) and args[i + 1] == "json")
               for i, a in enumerate(args))


def _report(exc: StellaError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "exit_code": exc.exit_code,
                               "errors": [e.to_json() for e in exc.errors]}, indent=2, sort_keys=True))
    for e in exc.errors:
        click.echo(f"error: {e}", err=True)


if __name__ == "__main__":
    sys.exit(main())
