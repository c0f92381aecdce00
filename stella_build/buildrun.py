"""One build request composed from the engine and the product's post-build steps.

The CLI (`stella-build build`, cli/build.py) and the Export Center service's worker
(service/worker.py) run a build the same way: analyze the patterns with the request's typed
`BuildOptions`, check that every post-build step can run (keyless signing: exit 4 before any
action), execute and materialize through `engine.build.run_build`, then carry out the post-build
steps on the materialized outputs. Keeping that composition here means a service run and a CLI
build of the same target cannot drift apart: the bytes are the same because the code is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stella_build.engine.errors import StellaError, UsageError
from stella_build.engine.graph import BuildOptions


@dataclass
class BuildRequest:
    """What to build and how: `patterns` are labels or patterns (`//pkg:target`), `cache_dir` the
    local cache, `jobs` parallel actions (≥ 1); `remote` an engine RemoteCache or None;
    `executor` where misses run (engine.executors.ExecutorConfig; None: `executor_from_env()`,
    i.e. STELLA_EXECUTOR / STELLA_EXECUTOR_FALLBACK, which `--executor` sets, else local)."""

    patterns: list[str]
    options: BuildOptions
    cache_dir: Path
    jobs: int
    check: bool = False
    remote: object | None = None
    executor: object | None = None


def executor_from_env(environ=None):
    """The ExecutorConfig named by STELLA_EXECUTOR (local | dask-local | dask://HOST:PORT) and
    STELLA_EXECUTOR_FALLBACK (local | none); local when unset. The CLI's `--executor` and
    `--executor-fallback` set these for their process (cli/entry.py). UsageError (exit 2,
    `bad-executor`) for a bad value."""
    import os

    from stella_build.engine.executors import parse_executor
    from stella_build.engine.executors.base import EXECUTOR_ENV, FALLBACK_ENV

    env = os.environ if environ is None else environ
    return parse_executor(env.get(EXECUTOR_ENV), env.get(FALLBACK_ENV), field="--executor")


def require_post_build_ready(graph) -> list:
    """The post-build requests of `graph` ([(label, PostBuild)]) after checking each can run.

    Raises the handler's StellaError naming the requesting target and its Exportfile (keyless
    signing without an identity: TrustMaterialMissing, exit 4), or UsageError for an unknown kind."""
    requests = graph.post_build()
    if not requests:
        return requests
    from stella_build.delivery import keyless
    from stella_build.rules.signing import KEYLESS

    for label, request in requests:
        if request.kind == KEYLESS:
            try:
                keyless.require_keyless_ready(source=request.source, field=request.field)
            except StellaError as exc:  # name the target and its Exportfile, as analysis errors do
                info = exc.errors[0]
                raise type(exc)(info.message, target=str(label), field=info.field, reason=info.reason,
                                file=request.file, line=request.line) from None
        else:
            raise UsageError(f"unknown post-build step {request.kind!r} (requested by {request.source})",
                             reason="unknown-post-build")
    return requests


def carry_out_post_build(summary, workspace) -> list[Path]:
    """Keyless signing of the materialized outputs of every target that asked for it; returns the
    files written. StellaError (exit 4/5/1/3) on failure, never a traceback."""
    from stella_build.delivery import keyless
    from stella_build.engine.materialize import out_dir

    dirs = [out_dir(workspace.root, label) for label, _ in summary.post_build]
    return list(keyless.sign_outputs_keyless(dirs))


def execute(workspace, request: BuildRequest, *, progress: Callable | None = None,
            warn: Callable[[str], None] | None = None, graph=None):
    """Analyze (unless `graph` is given), check post-build readiness, build and materialize.

    Returns (graph, summary): an `engine.build.BuildSummary` whose errors hold action failures.
    Post-build steps are NOT carried out here (the caller prints the summary first, then calls
    `carry_out_post_build` when `summary.ok`). Raises StellaError for bad input (exit 2/4/5)."""
    from stella_build.engine.build import run_build

    executor = request.executor if request.executor is not None else executor_from_env()
    if graph is None:
        from stella_build.engine.analysis import analyze  # pydantic and the rules: only when needed
        graph = analyze(workspace, request.patterns, request.options)
    require_post_build_ready(graph)
    summary = run_build(workspace, request.patterns, cache_dir=request.cache_dir, jobs=request.jobs,
                        check=request.check, progress=progress, remote=request.remote, graph=graph,
                        warn=warn, executor=executor)
    return graph, summary
