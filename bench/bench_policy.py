"""json:policy over the full shared corpora: cold build, no-op rebuild, policy-only rebuild.

    python bench/bench_policy.py [-j 2]

Builds, in a scratch workspace with the `profiles` and `corpora` packages, a json_policy target
over OSV PyPI + OSV Go + RustSec + Alpine secdb and the sample SBOM/VEX/policy of `profiles/`.
Prints wall times, action counts and the findings per decision.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_workspace, run_cli  # noqa: E402

TARGET = """
[targets.json-policy-bench]
rule = "json_policy"
deps = [":osv-pypi", ":osv-go", ":rustsec", ":alpine", "//profiles:sbom-sample", "//profiles:vex-sample"]
policy_file = "//profiles/policy/policy.toml"
"""


def build(ws: Path, cache: Path, jobs: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = run_cli([f"-j{jobs}", "--output", "json", "//corpora:json-policy-bench"], cwd=ws, cache=cache, check=True)
    return time.perf_counter() - t0, res.json()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-j", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp) / "ws", packages=("profiles", "corpora"), shared=True)
        ef = ws / "corpora" / "Exportfile"
        ef.write_text(ef.read_text() + TARGET)
        cache = Path(tmp) / "cache"
        for name in ("cold", "no-op"):
            secs, summary = build(ws, cache, args.j)
            a = summary["actions"]
            print(f"{name:12s} {secs:7.2f} s  actions {a['total']} executed {a['executed']} cached {a['cached']}")
        pol = ws / "profiles/policy/policy.toml"
        pol.write_text(pol.read_text().replace('block_at = "high"', 'block_at = "critical"'))
        secs, summary = build(ws, cache, args.j)
        print(f"{'policy edit':12s} {secs:7.2f} s  executed {summary['actions']['executed']}")
        out = ws / "stella-out/corpora/json-policy-bench"
        manifest = json.loads((out / "manifests/export.json").read_bytes())
        print("counts:", json.dumps(manifest["counts"], sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
