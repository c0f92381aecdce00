#!/usr/bin/env python3
"""Long fuzz run over every parser of outside data (tests/fuzz/harness.py); prints, per target, the
inputs tried, the crashes found and the time, over several hypothesis seeds so that one crash does
not end a target's run.

    .venv/bin/python bench/fuzz.py [--examples 2000] [--seeds 3] [--target delta ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="inputs per target and seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--target", action="append")
    args = ap.parse_args()
    totals: dict[str, list] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        cmd = [sys.executable, "-m", "tests.fuzz.harness", "--examples", str(args.examples), "--seed", str(seed), "--json"]
        for t in args.target or []:
            cmd += ["--target", t]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        report = json.loads(proc.stdout)
        for t in report["targets"]:
            row = totals.setdefault(t["target"], [0, [], 0.0])
            row[0] += t["inputs"]
            row[1] += t["crashes"]
            row[2] += t["seconds"]
    print(f"{'target':<11} {'inputs':>8} {'crashes':>8} {'seconds':>8}")
    for name, (inputs, crashes, seconds) in sorted(totals.items()):
        print(f"{name:<11} {inputs:>8} {len(crashes):>8} {seconds:>8.1f}")
    print(f"total {sum(r[0] for r in totals.values())} inputs, "
          f"{sum(len(r[1]) for r in totals.values())} crashes, {time.perf_counter() - started:.0f} s")
    for name, (_, crashes, _) in sorted(totals.items()):
        for c in crashes:
            print(f"\n--- {name}\n{c[:3000]}")
    return 1 if any(r[1] for r in totals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
