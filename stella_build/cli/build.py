"""`stella-build build | query | explain | init`: the build-system verbs.

`build` composes the engine (analysis, execution, materialization) with the product's post-build
steps (keyless signing, delivery/keyless.py) and the no-op memo (entry.py). `--sign` and `--base`
reach the rules as typed `BuildOptions`, never through the environment.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from stella_build.cli.common import CTX, click_option, emit, output_option
from stella_build.cli.options import BUILD_MEMO_OPTIONS
from stella_build.cli.progress import Progress
from stella_build.engine.errors import UsageError
from stella_build.engine.graph import BuildOptions


def build_memo_options(f):
    """`--sign` and `--base` (options.BUILD_MEMO_OPTIONS)."""
    for spec in reversed(BUILD_MEMO_OPTIONS):
        f = click_option(spec)(f)
    return f



@click.command(context_settings=CTX)
@click.argument("patterns", nargs=-1, required=True)
@click.option("--check", is_flag=True,
              help="After building, re-execute every action in a fresh sandbox and fail on any byte difference.")
@click.option("--output", type=click.Choice(["text", "json"]), default=None, help="Result format (overrides the global flag).")
@build_memo_options
@click.pass_obj
def build(settings, patterns, check, output, sign, base):
    """Build targets: LABEL is //pkg:target, :target, //pkg:all or //pkg/... .

    \b
    Prints the output paths (stella-out/<package>/<target>/...) and a summary. With
    --output json, prints one object: ok, exit_code, targets, actions{total,executed,
    cached,remote_hits,remote_executed,workers}, outputs{label: [paths]}, errors[{target,
    file,line,field,message,reason}], warnings[{target,action,file,field,reason,message}]
    (e.g. quarantined evidence files; also printed as "warning:" lines on stderr), executor,
    check{differences} (filled by --check), remote{hits,rejected,unauthenticated,...} (null without
    --remote-cache), duration_s.
    \b
      stella-build build //profiles/...
      stella-build build -j1 //profiles:json-raw --output json
      stella-build build --sign keys/cosign.key //profiles:trivy-db
      stella-build build --base OLD_MIRROR //profiles:mirror-delta
    """
    if output:
        settings.output = output
    options = build_options(sign, base)
    run_build_command(settings, list(patterns), options, check=check)


def build_options(sign: str | None, base: Path | str | None) -> BuildOptions:
    """The typed build request options from `--sign` / `--base` (or STELLA_SIGN / STELLA_MIRROR_BASE)."""
    sign = (sign or "").strip() or None
    if sign is not None and sign != "keyless":
        sign = str(Path(sign).expanduser().resolve())
    return BuildOptions(sign=sign, base=Path(base).expanduser().resolve() if base else None)


def run_build_command(settings, patterns: list[str], options: BuildOptions, *, check: bool = False) -> None:
    """Analyze, check post-build readiness (keyless: exit 4 before any action), build, print the
    summary, record the no-op memo, carry out the post-build steps; exits with the build's code.
    The composition itself is stella_build/buildrun.py, shared with the service."""
    from stella_build.buildrun import BuildRequest, carry_out_post_build, execute

    workspace = settings.workspace()
    progress = Progress(quiet=settings.quiet or settings.output == "json" and not sys.stderr.isatty())
    remote = settings.remote()
    from stella_build.engine.executors import parse_executor
    executor = parse_executor(settings.executor, settings.executor_fallback, field="--executor",
                              recipient=settings.executor_recipient)
    request = BuildRequest(patterns=patterns, options=options, cache_dir=settings.cache_dir(),
                           jobs=settings.jobs, check=check, remote=remote, executor=executor)
    try:
        graph = _memoized_analysis(workspace, request, settings)
        _graph, summary = execute(workspace, request, progress=progress, graph=graph,
                                  warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    finally:
        if remote is not None:
            remote.close()
    progress.finish()
    data = summary.to_json()
    text = _text_summary(summary, settings, check)
    emit(settings, text, data)
    # The no-op memo replays stdout only: a build with warnings is not memoized, so every rebuild
    # (all actions cached) still prints them on stderr.
    if summary.hermetic and not summary.warnings:
        _record_noop_memo(summary, data, text, workspace, settings)
    for w in summary.warnings:  # action warnings (e.g. quarantined evidence files), cached ones too
        where = f"{w['file']}: " if w.get("file") else ""
        field = f"field '{w['field']}': " if w.get("field") else ""
        click.echo(f"warning: {where}{field}{w['message']}", err=True)
    for err in summary.errors:
        click.echo(f"error: {err}", err=True)
        if settings.debug and getattr(err, "traceback", None):
            click.echo(err.traceback, err=True)
    if summary.ok and summary.post_build:
        written = carry_out_post_build(summary, workspace)
        if not settings.quiet:
            for path in written:
                click.echo(f"signed keyless: {path}", err=True)
    sys.exit(summary.exit_code)


def _memoized_analysis(workspace, request, settings):
    """The analysed graph of this command line: from the analysis memo when nothing the last
    analysis touched changed (engine/fastpath.py), else a real analysis, then stored. Only for
    the command lines that may use the no-op memo (noop.ACTIVE_PLAN is set)."""
    from stella_build.cli import noop
    from stella_build.engine import fastpath

    plan = noop.ACTIVE_PLAN
    if plan is None:
        return None
    memo = fastpath.analysis_memo_path(plan["memo"])
    graph = fastpath.load_analysis(memo, noop.code_roots())
    if graph is not None:
        return graph
    from stella_build.engine.analysis import analyze

    with fastpath.probing_stats():  # "is there a file here?" checks are inputs of the analysis too
        graph = analyze(workspace, request.patterns, request.options)
    fastpath.note_analysis(Path(plan["cache"]))
    fastpath.record_analysis(memo, graph, code_roots=noop.code_roots())
    return graph


def _record_noop_memo(summary, data: dict, text: str, workspace, settings) -> None:
    """After a true no-op (everything cached, nothing failed), let the next identical command line
    answer from the fast path (noop.py, engine/fastpath.py)."""
    import re

    from stella_build.cli import noop
    from stella_build.engine import fastpath

    plan = noop.ACTIVE_PLAN
    if plan is None or not summary.ok or data["actions"]["executed"] or data["actions"]["remote_hits"]:
        return
    touched = fastpath.stop_collecting()
    outputs = [str(workspace.root / p) for paths in summary.outputs.values() for p in paths]
    outputs += [str(p) for p in (workspace.root / "stella-out").rglob(".*.stella-state.json")]
    # source inputs are read by the workers (and their digests memoized), not by this process
    outputs += sorted({a.path_str for o in summary.outcomes.values() for a in o.spec.inputs.values()
                       if a.producer is None})
    template = re.sub(r" in \d+\.\d\d s", " in {duration} s", text)
    fastpath.record(plan["memo"], touched, outputs, code_roots=noop.code_roots(),
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


@click.command(context_settings=CTX)
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
    from stella_build.engine.query import run_query, to_dot

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


@click.command(context_settings=CTX)
@click.argument("label")
@click.option("--output", type=click.Choice(["text", "json"]), default=None)
@click.pass_obj
def explain(settings, label, output):
    """Say, field by field, why each action of LABEL will re-run or last re-ran.

    Compares the action's current key record (rule, code, parameters, every input file's
    digest, library versions, SOURCE_DATE_EPOCH) with the one stored by the last build.
    Each action is "will run" (with what changed, or "never built with this cache") or
    "up to date" (with what made its last re-run; "no earlier build of this action is
    recorded" when it has only been built once). Nothing is built.

    \b
      stella-build explain //profiles:json-raw
      stella-build explain //profiles:trivy-db --output json
    """
    from stella_build.engine.explain import explain as run_explain

    if output:
        settings.output = output
    report = run_explain(settings.workspace(), label, settings.cache_dir())
    lines = []
    for entry in report:
        lines.append(f"{entry['action']}: {entry['status']}")
        for reason in entry.get("reason", []):
            lines.append(f"    {reason}")
    emit(settings, "\n".join(lines), {"label": label, "actions": report})


@click.command(context_settings=CTX)
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@output_option
@click.pass_obj
def init(settings, directory):
    """Scaffold a workspace: stella-workspace.toml and an example Exportfile.

    DIRECTORY (default: the current one) gets stella-workspace.toml and
    exports/Exportfile (an osv_source over exports/advisories/ and a json_raw target);
    an existing workspace is refused (exit 2).

    \b
      stella-build init my-exports && cd my-exports
      cp ~/osv/*.json exports/advisories/ && stella-build //exports:json-raw
    """
    from stella_build.engine.workspace import EXPORTFILE, WORKSPACE_FILE

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
