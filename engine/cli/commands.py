"""Subcommands of `stella-build`: build, query, explain, cache, init."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UsageError
from .main import emit, main_group
from .progress import Progress


@main_group.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("patterns", nargs=-1, required=True)
@click.option("--check", is_flag=True,
              help="After building, re-execute every action in a fresh sandbox and fail on any byte difference.")
@click.option("--output", type=click.Choice(["text", "json"]), default=None, help="Result format (overrides the global flag).")
@click.pass_obj
def build(settings, patterns, check, output):
    """Build targets: LABEL is //pkg:target, :target, //pkg:all or //pkg/... .

    \b
    Prints the output paths (stella-out/<package>/<target>/...) and a summary. With
    --output json, prints one object: ok, exit_code, targets, actions{total,executed,
    cached,remote_hits}, outputs{label: [paths]}, errors[{target,file,line,field,message}],
    duration_s.
    """
    from ..build import run_build

    if output:
        settings.output = output
    workspace = settings.workspace()
    progress = Progress(quiet=settings.quiet or settings.output == "json" and not sys.stderr.isatty())
    remote = settings.remote()
    summary = run_build(workspace, list(patterns), cache_dir=settings.cache_dir(),
                        jobs=settings.jobs, check=check, progress=progress, remote=remote,
                        warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    progress.finish()
    data = summary.to_json()
    text = _text_summary(summary, settings, check)
    emit(settings, text, data)
    _record_noop_memo(summary, data, text, workspace, settings)
    for err in summary.errors:
        click.echo(f"error: {err}", err=True)
        if settings.debug and getattr(err, "traceback", None):
            click.echo(err.traceback, err=True)
    sys.exit(summary.exit_code)


def _record_noop_memo(summary, data: dict, text: str, workspace, settings) -> None:
    """After a true no-op (everything cached, nothing failed), let the next identical command line
    answer from the fast path (engine/fastpath.py)."""
    import re

    from .. import fastpath

    plan = fastpath.ACTIVE
    if plan is None or not summary.ok or data["actions"]["executed"] or data["actions"]["remote_hits"]:
        return
    touched = fastpath.stop_collecting()
    outputs = [str(workspace.root / p) for paths in summary.outputs.values() for p in paths]
    outputs += [str(p) for p in (workspace.root / "stella-out").rglob(".*.stella-state.json")]
    # source inputs are read by the workers (and their digests memoized), not by this process
    outputs += sorted({a.path_str for o in summary.outcomes.values() for a in o.spec.inputs.values()
                       if a.producer is None})
    template = re.sub(r" in \d+\.\d\d s", " in {duration} s", text)
    fastpath.record(plan["memo"], touched, outputs,
                    exclude=[str(settings.cache_dir()) + "/", str(workspace.root / "stella-out") + "/"],
                    summary_json=data, summary_text=template)


def _text_summary(summary, settings, check: bool) -> str:
    c = summary.counts()
    lines = []
    for label, paths in summary.outputs.items():
        if not paths:
            continue
        pkg, _, name = label[2:].partition(":")
        directory = "/".join(p for p in ("stella-out", pkg, name) if p)
        lines.append(f"{label}: {directory}/ ({len(paths)} files)")
        for p in _primary(summary, label, paths):
            lines.append(f"  {p}")
    for d in summary.check_differences:
        if d.get("path") is None:
            lines.append(f"check: {d['action']}: re-execution failed: {d.get('error')}")
        else:
            lines.append(f"check: {d['action']}: {d['path']} differs"
                         + (f" at byte offset {d['offset']}" if d.get("offset") is not None else "")
                         + f" (cached {str(d.get('expected'))[:12]}…, rebuilt {str(d.get('actual'))[:12]}…)")
    status = "OK" if summary.ok else "FAILED"
    check_note = ""
    if check:
        check_note = (f", check: {'reproducible' if not summary.check_differences else str(len(summary.check_differences)) + ' differences'}")
    lines.append(f"{status}: {c['total']} actions ({c['executed']} executed, {c['cached']} cached"
                 + (f", {c['remote_hits']} remote" if c['remote_hits'] else "")
                 + (f", {c['failed']} failed" if c['failed'] else "")
                 + f") in {summary.duration_s:.2f} s{check_note}")
    return "\n".join(lines)


def _primary(summary, label: str, paths: list[str]) -> list[str]:
    primary = summary.primary.get(label, ())
    return [p for p in paths if any(p.endswith("/" + x) for x in primary)]


@main_group.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("expression")
@click.option("--output", type=click.Choice(["text", "json", "graph"]), default=None,
              help="text: one label per line; json: labels with rule and deps; graph: Graphviz dot.")
@click.pass_obj
def query(settings, expression, output):
    """Query the target graph: a pattern, deps(X), rdeps(X), rdeps(UNIVERSE, X), kind(RULE, X).

    \b
      stella-build query 'deps(//profiles:json-raw)'
      stella-build query 'rdeps(//profiles:osv-sample)'
      stella-build query 'kind(osv_source, //...)' --output json
    """
    from ..query import run_query, to_dot

    fmt = output or settings.output
    labels, graph = run_query(settings.workspace(), expression)
    if fmt == "graph":
        click.echo(to_dot(labels, graph), nl=False)
    elif fmt == "json":
        click.echo(__import__("json").dumps(
            {"query": expression, "targets": [{"label": str(l), "rule": graph.rule_of(l),
                                               "deps": [str(d) for d in graph.deps_of.get(l, [])]}
                                              for l in labels]}, indent=2))
    else:
        for label in labels:
            click.echo(str(label))


@main_group.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("label")
@click.option("--output", type=click.Choice(["text", "json"]), default=None)
@click.pass_obj
def explain(settings, label, output):
    """Say, field by field, why each action of LABEL will re-run or last re-ran.

    Compares the action's current key record (rule, code, parameters, every input file's
    digest, library versions, SOURCE_DATE_EPOCH) with the one stored by the last build.
    """
    from ..explain import explain as run_explain

    if output:
        settings.output = output
    report = run_explain(settings.workspace(), label, settings.cache_dir())
    lines = []
    for entry in report:
        lines.append(f"{entry['action']}: {entry['status']}")
        for reason in entry.get("reason", []):
            lines.append(f"    {reason}")
    emit(settings, "\n".join(lines), {"label": label, "actions": report})


@main_group.group(context_settings={"help_option_names": ["-h", "--help"]})
def cache():
    """Inspect and maintain the local cache (LMDB index + content-addressed blobs)."""


def output_option(f):
    """`--output` on a subcommand, overriding the global flag (both spellings work)."""
    def set_output(ctx, _param, value):
        if value:
            ctx.obj.output = value
        return value
    return click.option("--output", type=click.Choice(["text", "json"]), default=None,
                        expose_value=False, callback=set_output, help="Result format.")(f)


def _size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
             "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    try:
        return int(float(num) * units[unit])
    except (ValueError, KeyError):
        raise UsageError(f"bad size '{text}' (examples: 500M, 2G, 1048576)", field="--max-size") from None


@cache.command("stats")
@output_option
@click.pass_obj
def cache_stats(settings):
    """Counts and sizes of what the cache holds."""
    from ..cache.maintenance import stats
    data = stats(settings.cache_dir())
    emit(settings, "\n".join(f"{k}: {v}" for k, v in data.items()), data)


@cache.command("gc")
@output_option
@click.option("--max-size", required=True, help="Keep at most this many bytes of blobs (e.g. 2G, 500M).")
@click.pass_obj
def cache_gc(settings, max_size):
    """Evict least recently used results until the blobs fit in --max-size."""
    from ..cache.maintenance import gc
    data = gc(settings.cache_dir(), _size(max_size))
    emit(settings, "\n".join(f"{k}: {v}" for k, v in data.items()), data)


@cache.command("verify")
@output_option
@click.pass_obj
def cache_verify(settings):
    """Re-hash every blob; corrupt blobs are deleted so their actions rebuild."""
    from ..cache.maintenance import verify
    data = verify(settings.cache_dir())
    emit(settings, f"corrupt blobs removed: {len(data['corrupt_blobs_removed'])}\n"
                   f"results with missing blobs: {data['results_with_missing_blobs']}", data)
    sys.exit(3 if data["corrupt_blobs_removed"] else 0)


@cache.command("push-all")
@click.argument("patterns", nargs=-1, required=True)
@output_option
@click.pass_obj
def cache_push_all(settings, patterns):
    """Seed the remote cache with every action result of LABEL... (builds them locally first)."""
    from ..build import run_build

    remote = settings.remote()
    if remote is None:
        raise UsageError("cache push-all needs --remote-cache URL or STELLA_REMOTE_CACHE", field="--remote-cache")
    from ..scheduler import Executor
    summary = run_build(settings.workspace(), list(patterns), cache_dir=settings.cache_dir(),
                        jobs=settings.jobs, progress=Progress(quiet=settings.quiet))
    if not summary.ok:
        for err in summary.errors:
            click.echo(f"error: {err}", err=True)
        sys.exit(summary.exit_code)
    executor = Executor(settings.cache_dir(), 1, remote=remote,
                        warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    from ..cache.remote import RemoteCacheError
    from ..errors import BuildFailed
    try:
        remote.required = True
        sent = executor.upload(summary.outcomes, all_cached=True)
    except RemoteCacheError as exc:
        raise BuildFailed(f"remote cache upload failed: {exc}", field="--remote-cache") from None
    finally:
        executor.close()
    data = {"actions_uploaded": sent, "remote": remote.stats.as_dict()}
    emit(settings, f"uploaded {sent} action results ({data['remote']['bytes_up']} bytes on the wire)", data)


@cache.command("clean")
@output_option
@click.pass_obj
def cache_clean(settings):
    """Delete the whole local cache."""
    from ..cache.maintenance import clean
    data = clean(settings.cache_dir())
    emit(settings, f"cleaned {data['cache_dir']}", data)


@main_group.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@output_option
@click.pass_obj
def init(settings, directory):
    """Scaffold a workspace: stella-workspace.toml and an example Exportfile."""
    from ..workspace import EXPORTFILE, WORKSPACE_FILE

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / WORKSPACE_FILE
    if marker.exists():
        raise UsageError(f"{marker} already exists")
    marker.write_text("[workspace]\n# Named roots outside the workspace, used as \"@name//path\" in srcs.\n"
                      "external = {}\n", encoding="utf-8")
    pkg = root / "exports"
    pkg.mkdir(exist_ok=True)
    (pkg / "advisories").mkdir(exist_ok=True)
    if not (pkg / EXPORTFILE).exists():
        (pkg / EXPORTFILE).write_text(
            '[package]\nsource_date_epoch = 1735689600  # fixed build time: 2025-01-01T00:00:00Z\n\n'
            '[targets.osv]\nrule = "osv_source"\nsrcs = ["advisories/**/*.json", "advisories/**/*.yaml"]\n\n'
            '[targets.json-raw]\nrule = "json_raw"\ndeps = [":osv"]\n', encoding="utf-8")
    emit(settings, f"initialized workspace in {root.resolve()}; put OSV files in {pkg}/advisories and run\n"
                   f"  stella-build //exports:json-raw", {"workspace": str(root.resolve())})
from . import sign_commands  # noqa
from . import inspect_commands  # noqa
from . import mirror_commands  # noqa
