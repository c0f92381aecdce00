"""`stella-build explain LABEL`: why each action of a target would re-run, or last re-ran.

For every action (in dependency order) the current key record is computed as a dry run. If it
differs from the latest stored record of that action, the field-by-field diff says why it will
re-run; if it matches, the diff between the latest and the previous record says why it last ran.
"""
from __future__ import annotations

from pathlib import Path

from stella_build.engine.actions import action_key, diff_records, key_record
from stella_build.engine.analysis import analyze
from stella_build.engine.scheduler import Executor, Outcome
from stella_build.engine.workspace import Workspace


def explain(workspace: Workspace, pattern: str, cache_dir: Path) -> list[dict]:
    graph = analyze(workspace, [pattern])
    actions = graph.actions_for(graph.requested)
    executor = Executor(cache_dir, 1)
    report = []
    done: dict[str, Outcome] = {}
    try:
        for spec in actions:
            producers = [a.producer for a in spec.inputs.values() if a.producer]
            blocked = [p for p in producers if done.get(p) is None or done[p].status != "cached"]
            entry: dict = {"action": spec.id, "target": str(spec.label)}
            history = executor.index.last_keys(spec.id)
            if blocked:
                entry.update(status="will run", reason=[f"input from {p} will be rebuilt" for p in sorted(set(blocked))])
                done[spec.id] = Outcome(spec, status="unknown")
                report.append(entry)
                continue
            staged = executor._staged_inputs(spec, done)
            record = key_record(spec, [(s[0], s[2]) for s in staged])
            key = action_key(record)
            entry["key"] = key
            hit = executor._lookup(key)
            latest = history.get("current")
            if hit is not None:
                done[spec.id] = Outcome(spec, key=key, status="cached",
                                        outputs={o["path"]: o for o in hit["outputs"]})
                entry["status"] = "up to date"
                previous = history.get("previous") if latest == key else latest
                old = executor.index.get_key_record(previous) if previous else None
                entry["reason"] = (["last re-ran because " + line for line in diff_records(old, record)]
                                   if old else ["no earlier build of this action is recorded"])
            else:
                done[spec.id] = Outcome(spec, key=key, status="unknown")
                entry["status"] = "will run"
                old = executor.index.get_key_record(latest) if latest else None
                if old is None:
                    entry["reason"] = ["never built with this cache"]
                elif old == record:
                    entry["reason"] = ["same key as the last build, but its cached outputs are missing or damaged"]
                else:
                    entry["reason"] = diff_records(old, record)
            report.append(entry)
    finally:
        executor.close()
    return report
