"""The differential sweep over EVERY probe (tests/interop/test_differential.py runs a seeded
subset): json:policy vs the OSV reference (osv-scanner, else the OSV-schema evaluator) vs Trivy on
our trivy:db, over the whole shared corpora. docs/differential.md explains the output.

    /tmp/v/bin/python bench/bench_differential.py [--per-record N] [--per-package M] [--jobs 2] [--dir /tmp/x] [--keep]
    /tmp/v/bin/python bench/bench_differential.py --lines all      # print every disagreement

Prints the probe and comparison counts, the time of each step (wall seconds, and the CPU seconds
of this process and its children), the disagreement classes with an example each, and writes
every disagreement to ``<dir>/disagreements.txt`` (kept with --dir or --keep). Exit status 0 even with disagreements: this is
a measurement; the test is what fails. Needs osv-scanner and trivy in
~/.cache/stella-build-tools/bin (or $STELLA_TOOLS_DIR/bin, or PATH).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    from tests.differential.allowlist import ALLOW
    from tests.differential.pipeline import Tools, run
    from tests.interop.conftest import find_tool

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-record", type=int, default=None, help="seeded probes per record (default: all)")
    ap.add_argument("--per-package", type=int, default=None, help="at most this many probes per package (default: all)")
    ap.add_argument("--seed", default="stella-diff-1")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--lines", default="20", help="disagreements to print ('all' or a number)")
    args = ap.parse_args()

    tools = {name: find_tool(name) for name in ("osv-scanner", "trivy")}
    missing = [n for n, p in tools.items() if not p]
    if missing:
        print(f"missing tools: {', '.join(missing)} (tools/interop/build-go-tools.sh)", file=sys.stderr)
        return 2
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stella-differential-"))
    work.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.monotonic(), _cpu()
    try:
        report, times, probes = run(work, Tools(tools["osv-scanner"], tools["trivy"]),
                                    per_record=args.per_record, per_package=args.per_package, seed=args.seed,
                                    jobs=args.jobs, allow=ALLOW)
        wall, cpu = time.monotonic() - start, _cpu() - cpu0
        (work / "disagreements.txt").write_text("".join(ln.text() + "\n" for ln in report.lines))
        packages = len(probes.versions)
        records = len({(a.record_id, a.path) for affs in probes.affected.values() for a in affs})
        print(f"probes: {report.probes} over {packages} packages and {records} (record, file) entries; "
              f"per record: {'all' if args.per_record is None else args.per_record}, "
              f"per package: {'all' if args.per_package is None else args.per_package}")
        print("times (wall s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
              + f"; total {wall:.1f} s wall, {cpu:.1f} s CPU (this process and its children)")
        print(report.summary())
        limit = len(report.lines) if args.lines == "all" else int(args.lines)
        for ln in report.lines[:limit]:
            print(ln.text())
        if args.keep or args.dir:
            print(f"all {len(report.lines)} disagreements: {work / 'disagreements.txt'}")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
