"""A short run of the fuzz harness (tests/fuzz/harness.py) over every parser of outside data.

It runs in a child process under an address-space cap (RLIMIT_AS), so a memory blow-up is a
finding, not a dead test runner; the long run with its figures is bench/fuzz.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

EXAMPLES = 25  # per target; about 25 s on 2 cores (the long run is bench/fuzz.py)


def test_fuzz_targets_find_no_crash():
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz.harness", "--examples", str(EXAMPLES), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.stdout, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    summary = {t["target"]: (t["inputs"], len(t["crashes"])) for t in report["targets"]}
    crashes = [c for t in report["targets"] for c in t["crashes"]]
    assert not crashes, f"{summary}\n\n" + "\n\n".join(c[:2500] for c in crashes)
    assert all(inputs >= EXAMPLES for inputs, _ in summary.values()), summary
    assert proc.returncode == 0
