"""One build: analyze patterns, execute the needed actions, materialize outputs, summarize."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stella_build.engine.graph import BuildGraph, BuildOptions
from stella_build.engine.cache.cas import CorruptBlob
from stella_build.engine.errors import EXIT_BUILD_FAILED, EXIT_OK, ErrorInfo
from stella_build.engine.executors.base import ExecutorConfig
from stella_build.engine.labels import Label
from stella_build.engine.materialize import materialize
from stella_build.engine.scheduler import Executor, Outcome
from stella_build.engine.workspace import Workspace


@dataclass
class BuildSummary:
    targets: list[str]
    outcomes: dict[str, Outcome]
    outputs: dict[str, list[str]]
    errors: list[ErrorInfo]
    duration_s: float
    check_differences: list[dict] = field(default_factory=list)
    remote_hits: int = 0
    primary: dict[str, tuple[str, ...]] = field(default_factory=dict)
    remote_stats: dict | None = None
    # Requests of PostBuild providers (e.g. keyless signing) the caller must carry out; a build
    # with any is not hermetic, so it is never recorded for the no-op memo.
    post_build: list = field(default_factory=list)
    # Warnings the actions reported (stats key "warnings": [{file, field, reason, message}], e.g.
    # a quarantined evidence file), from executed AND cached actions, so a rebuild that runs
    # nothing still shows them; deduplicated, sorted. They never change the exit code.
    warnings: list[dict] = field(default_factory=list)
    executor: str = "local"  # ExecutorConfig.describe(): local, dask-local or tcp://HOST:PORT

    @property
    def hermetic(self) -> bool:
        return not self.post_build

    @property
    def ok(self) -> bool:
        return not self.errors and not self.check_differences

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_BUILD_FAILED

    def counts(self) -> dict[str, int]:
        statuses = [o.status for o in self.outcomes.values()]
        return {"total": len(statuses), "executed": statuses.count("executed"),
                "cached": statuses.count("cached") - self.remote_hits, "remote_hits": self.remote_hits,
                "failed": statuses.count("failed"), "skipped": statuses.count("skipped"),
                **self.remote_counts()}

    def remote_counts(self) -> dict:
        """{"remote_executed": actions a remote executor's worker ran, "workers": {address: n}}
        (zero and {} with the local executor)."""
        workers: dict[str, int] = {}
        for o in self.outcomes.values():
            if o.status == "executed" and o.worker:
                workers[o.worker] = workers.get(o.worker, 0) + 1
        return {"remote_executed": sum(workers.values()), "workers": dict(sorted(workers.items()))}

    def to_json(self) -> dict:
        return {"ok": self.ok, "exit_code": self.exit_code, "targets": self.targets,
                "actions": self.counts(), "outputs": self.outputs,
                "errors": [e.to_json() for e in self.errors],
                "warnings": self.warnings,
                "check": {"differences": self.check_differences},
                "remote": self.remote_stats,
                "executor": self.executor,
                "duration_s": round(self.duration_s, 3)}


def _target_files(graph: BuildGraph, label: Label, executor: Executor,
                  outcomes: dict[str, Outcome]) -> dict[str, dict]:
    default = graph.targets[label].default_outputs()
    files: dict[str, dict] = {}
    for rel, art in default.files.items():
        files[rel] = executor.artifact_files(art, outcomes)[""]
    for rel_dir, art in default.trees.items():
        for sub, rec in executor.artifact_files(art, outcomes).items():
            files[f"{rel_dir.rstrip('/')}/{sub}" if rel_dir else sub] = rec
    return files


def run_build(workspace: Workspace, patterns: list[str], *, cache_dir: Path, jobs: int,
              check: bool = False, progress: Callable | None = None,
              graph: BuildGraph | None = None, remote=None,
              warn: Callable[[str], None] | None = None,
              options: BuildOptions | None = None,
              executor: ExecutorConfig | None = None) -> BuildSummary:
    """Analyze (unless `graph` is given), execute what is not cached, materialize the requested
    targets under stella-out/. Build failures are in the summary; StellaError for bad input.
    `executor`: where misses run (engine/executors/; None: this machine's process pool)."""
    started = time.perf_counter()
    if graph is None:
        from stella_build.engine.analysis import analyze  # pydantic and the rules: only when needed
        graph = analyze(workspace, patterns, options)
    actions = graph.actions_for(graph.requested)
    executor_config = executor
    executor = Executor(cache_dir, jobs, progress=progress, remote=remote, warn=warn,
                        executor=executor_config)
    # A build that signs (an action with secrets: the Sign action, TUF keys; or a post-build step
    # such as keyless signing) must not sign bytes that anyone with write access to a shared cache
    # chose: it serves only results executed here or authenticated by a trusted key.
    signing = any(a.secrets for a in actions) or bool(graph.post_build())
    errors: list[ErrorInfo] = []
    outputs: dict[str, list[str]] = {}
    diffs: list[dict] = []
    outcomes: dict[str, Outcome] = {}
    try:
        # A damaged cache blob found while staging or materializing is deleted (CAS), every
        # result naming it is forgotten and the build runs again: the producers miss and rebuild
        # it. Each round must find a blob not seen before (a deleted blob cannot be found again
        # unless rewritten damaged, and a rebuilt blob has its old digest), so this ends after at
        # most one round per damaged blob; the bound is only a backstop.
        seen_corrupt: set[str] = set()
        executed_keys: set[str] = set()  # results an earlier repair round executed
        max_rounds = 10_000
        for attempt in range(max_rounds):
            last = attempt == max_rounds - 1
            outcomes = executor.run(actions, check=check, signing=signing)
            # A repair round serves what the rounds before it executed from the cache: the
            # summary counts such an action as executed, as the build did run it.
            for o in outcomes.values():
                if o.status == "executed":
                    executed_keys.add(o.key)
                elif o.status == "cached" and not o.remote and o.key in executed_keys:
                    o.status = "executed"
            failed = [o for o in outcomes.values() if o.status == "failed"]
            corrupt = {o.error["corrupt_blob"] for o in failed if o.error.get("corrupt_blob")}
            if corrupt and not last and not corrupt <= seen_corrupt:
                seen_corrupt |= corrupt
                (warn or _no_warn)(f"{len(corrupt)} damaged cache blob(s) found and removed; "
                                   f"rebuilding their producers (round {attempt + 2})")
                for digest in sorted(corrupt):
                    _drop_results_naming(executor, outcomes, digest)
                continue
            for o in failed:
                errors.append(ErrorInfo(o.error["message"], target=str(o.spec.label),
                                        file=o.error.get("file"), field=o.error.get("field"),
                                        traceback=o.error.get("traceback"),
                                        reason=o.error.get("reason") or "action-failed"))
            if errors:
                break
            try:
                for label in graph.requested:
                    files = _target_files(graph, label, executor, outcomes)
                    outputs[str(label)] = materialize(workspace.root, label, files, executor.cas)
                break
            except CorruptBlob as exc:
                # A blob rotted between the hit check and the copy: drop it and rebuild.
                _drop_results_naming(executor, outcomes, exc.digest)
                if last or exc.digest in seen_corrupt:
                    errors.append(ErrorInfo(str(exc), reason="cache-corrupt"))
                    break
                seen_corrupt.add(exc.digest)
        if check:
            for o in outcomes.values():
                for d in o.differences:
                    diffs.append({"action": o.spec.id, "target": str(o.spec.label), **d})
        if not errors:
            executor.upload(outcomes)
    except Exception as exc:
        from stella_build.engine.cache.remote import RemoteCacheError
        if isinstance(exc, RemoteCacheError):  # only with --remote-required
            errors.append(ErrorInfo(f"remote cache required but failed: {exc}", field="--remote-cache",
                                    reason="remote-cache-failed"))
        else:
            raise
    finally:
        executor.close()
    primary = {str(lbl): graph.targets[lbl].default_outputs().primary for lbl in graph.requested}
    return BuildSummary(targets=[str(l) for l in graph.requested], outcomes=outcomes,
                        outputs=outputs, errors=errors, duration_s=time.perf_counter() - started,
                        check_differences=diffs, primary=primary, remote_hits=executor.remote_hits,
                        remote_stats=remote.stats.as_dict() if remote is not None else None,
                        post_build=graph.post_build(), warnings=collect_warnings(outcomes),
                        executor=executor_config.describe() if executor_config else "local")


def collect_warnings(outcomes: dict[str, Outcome]) -> list[dict]:
    """The ``warnings`` of every action that ran or was served from a cache, as
    [{"target", "action", "file", "field", "reason", "message"}] sorted by (file, field, reason,
    message), each (file, field, reason, message) once. Rule-agnostic: any action may return them
    in its stats; entries that are not mappings are ignored (stats come from the cache too)."""
    seen: dict[tuple, dict] = {}
    for o in outcomes.values():
        if o.status not in ("cached", "executed"):
            continue
        for w in (o.stats or {}).get("warnings") or ():
            if not isinstance(w, dict):
                continue
            item = {"file": w.get("file"), "field": w.get("field"),
                    "reason": w.get("reason") or "warning", "message": str(w.get("message", ""))}
            ident = (item["file"] or "", item["field"] or "", item["reason"], item["message"])
            seen.setdefault(ident, {"target": str(o.spec.label), "action": o.spec.id, **item})
    return [seen[k] for k in sorted(seen)]


def _no_warn(message: str) -> None:
    pass


def _drop_results_naming(executor: Executor, outcomes: dict[str, Outcome], digest: str) -> None:
    for o in outcomes.values():
        if o.key and any(r["blake3"] == digest for r in o.outputs.values()):
            executor.index.drop_result(o.key)
