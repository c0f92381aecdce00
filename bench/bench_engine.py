#!/usr/bin/env python3
"""Engine benchmarks (issue: engine core). Prints figures and ratios; not run by the tests.

    .venv/bin/python bench/bench_engine.py [--runs 10]

1. no-op build of //profiles/... (everything cached): wall time of the real CLI process, with the
   no-op memo and without it (the memo removed before each run, so every run analyzes and keys
   every action)
2. cold json:raw over the full shared OSV corpora: seconds and peak RSS (largest single process)
3. cache-hit overhead per action (in-process, all 129 corpora actions cached, 7,144 inputs), two
   ways: a warm executor (its source-digest memo already holds every file: keys, index lookups,
   output checks) and a fresh executor per build, as in a CLI process (also stats every source
   file and reads its stored digest); CPU time, minimum of several rounds (the machine is shared)
4. incremental rebuild after editing one advisory, as a fraction of the cold build

Figures from a shared machine vary with its load: run it a few times, compare minima, and note
`uptime` beside them (docs/engine.md "Performance").
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import CLI, SHARED_DATA, make_workspace  # noqa: E402


def timed(argv, cwd) -> tuple[float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - t, max(before, after)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stella-bench-"))
    try:
        ws = make_workspace(tmp / "ws")
        cache = tmp / "cache"
        cli = [CLI, "--cache-dir", str(cache), "-q"]
        subprocess.run(cli + ["//profiles/..."], cwd=ws, check=True, stdout=subprocess.DEVNULL)
        time.sleep(2.1)  # past the racy window, so that these runs could record a memo: removed
        real = []
        for _ in range(args.runs):
            shutil.rmtree(cache / "noop-memo", ignore_errors=True)
            real.append(timed(cli + ["//profiles/..."], ws)[0])
        real.sort()  # past the racy-timestamp window: the next no-op records the memo
        subprocess.run(cli + ["//profiles/..."], cwd=ws, check=True, stdout=subprocess.DEVNULL)
        noop = sorted(timed(cli + ["//profiles/..."], ws)[0] for _ in range(args.runs))
        print(f"no-op //profiles/... (fast path, memo): median {statistics.median(noop):.3f} s "
              f"(min {noop[0]:.3f}, max {noop[-1]:.3f}, {args.runs} runs)")
        print(f"no-op //profiles/... without the memo (full analysis, all cached): median "
              f"{statistics.median(real):.3f} s (min {real[0]:.3f}; target <= 0.20 s)")

        data = tmp / "data"
        for sub in ("osv-pypi", "osv-go"):
            shutil.copytree(SHARED_DATA / sub, data / sub)
        cws = make_workspace(tmp / "cws", packages=("corpora",))
        (cws / "stella-workspace.toml").write_text(f'[workspace]\nexternal = {{ shared-data = "{data}" }}\n')
        ccache = tmp / "ccache"
        ccli = [CLI, "--cache-dir", str(ccache), "-q"]
        cold, rss = timed(ccli + ["//corpora:json-raw"], cws)
        print(f"cold json:raw, full OSV corpora (2,661 PyPI + 4,291 Go advisories): {cold:.2f} s, "
              f"peak RSS of the largest process {rss / 1024:.0f} MiB, -j{os.cpu_count()}")

        from stella_build.engine.analysis import analyze
        from stella_build.engine.scheduler import Executor
        from stella_build.engine.workspace import Workspace

        graph = analyze(Workspace.find(explicit=cws), ["//corpora:json-raw"])
        actions = graph.actions_for(graph.requested)
        inputs = sum(len(a.inputs) for a in actions)
        warm, fresh = [], []
        for _ in range(5):
            ex = Executor(ccache, 1)
            try:
                c = time.process_time()
                done = ex.run(actions)  # fresh: stats every source file, reads its stored digest
                fresh.append((time.process_time() - c) / len(actions))
                assert all(o.status == "cached" for o in done.values())
                c = time.process_time()
                for _ in range(5):
                    ex.run(actions)
                warm.append((time.process_time() - c) / (5 * len(actions)))
            finally:
                ex.close()
        print(f"cache-hit overhead: {min(warm) * 1e6:.0f} µs CPU per action with a warm executor, "
              f"{min(fresh) * 1e6:.0f} µs with a fresh one (stats and stored digests of the source "
              f"files included); {len(actions)} actions, {inputs} inputs, min of 5; target <= 50 µs")

        victim = sorted((data / "osv-go").glob("GO-2023-*.json"))[5]
        doc = json.loads(victim.read_text())
        doc["summary"] = (doc.get("summary") or "") + " (edited)"
        victim.write_text(json.dumps(doc, indent=2))
        incr, _ = timed(ccli + ["//corpora:json-raw"], cws)
        print(f"incremental after editing one advisory: {incr:.2f} s = {incr / cold:.1%} of cold "
              f"(target <= 10 %)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
