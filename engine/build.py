"""One build: analyze patterns, execute the needed actions, materialize outputs, summarize."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .analysis import BuildGraph, analyze
from .cache.cas import CorruptBlob
from .errors import EXIT_BUILD_FAILED, EXIT_OK, ErrorInfo
from .labels import Label
from .materialize import materialize
from .scheduler import Executor, Outcome
from .workspace import Workspace


@dataclass
class BuildSummary:
    targets: list[str]
    outcomes: dict[str, Outcome]
    outputs: dict[str, list[str]]
    errors: list[ErrorInfo]
    duration_s: float
    check_differences: list[dict] = field(default_factory=list)
    remote_hits: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.check_differences

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_BUILD_FAILED

    def counts(self) -> dict[str, int]:
        statuses = [o.status for o in self.outcomes.values()]
        return {"total": len(statuses), "executed": statuses.count("executed"),
                "cached": statuses.count("cached"), "remote_hits": self.remote_hits,
                "failed": statuses.count("failed"), "skipped": statuses.count("skipped")}

    def to_json(self) -> dict:
        return {"ok": self.ok, "exit_code": self.exit_code, "targets": self.targets,
                "actions": self.counts(), "outputs": self.outputs,
                "errors": [e.to_json() for e in self.errors],
                "check": {"differences": self.check_differences},
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
              graph: BuildGraph | None = None) -> BuildSummary:
    started = time.perf_counter()
    graph = graph or analyze(workspace, patterns)
    actions = graph.actions_for(graph.requested)
    executor = Executor(cache_dir, jobs, progress=progress)
    errors: list[ErrorInfo] = []
    outputs: dict[str, list[str]] = {}
    diffs: list[dict] = []
    try:
        for attempt in range(2):
            outcomes = executor.run(actions, check=check)
            failed = [o for o in outcomes.values() if o.status == "failed"]
            for o in failed:
                errors.append(ErrorInfo(o.error["message"], target=str(o.spec.label),
                                        file=o.error.get("file"), field=o.error.get("field")))
                if o.error.get("traceback"):
                    errors[-1].traceback = o.error["traceback"]  # type: ignore[attr-defined]
            if errors:
                break
            try:
                for label in graph.requested:
                    files = _target_files(graph, label, executor, outcomes)
                    outputs[str(label)] = materialize(workspace.root, label, files, executor.cas)
                break
            except CorruptBlob as exc:
                # A blob rotted between the hit check and the copy: drop it and rebuild once.
                _drop_results_naming(executor, outcomes, exc.digest)
                if attempt == 1:
                    errors.append(ErrorInfo(str(exc)))
        if check:
            for o in outcomes.values():
                for d in o.differences:
                    diffs.append({"action": o.spec.id, "target": str(o.spec.label), **d})
    finally:
        executor.close()
    return BuildSummary(targets=[str(l) for l in graph.requested], outcomes=outcomes,
                        outputs=outputs, errors=errors, duration_s=time.perf_counter() - started,
                        check_differences=diffs)


def _drop_results_naming(executor: Executor, outcomes: dict[str, Outcome], digest: str) -> None:
    for o in outcomes.values():
        if o.key and any(r["blake3"] == digest for r in o.outputs.values()):
            executor.index.drop_result(o.key)
