"""Normalization throughput per evidence format, cold, with peak RSS.

    python bench/bench_normalize.py                      # the shared corpora
    python bench/bench_normalize.py --synthetic /tmp/osv.jsonl   # plus a gen_osv_corpus.py JSONL

Each format runs in a fresh Python process (cold: imports, parsers and caches start empty), which
reads every file, parses, validates and normalizes it into ``Advisory`` models and encodes each
with canonical JSON. Printed: documents, advisories, seconds, documents/s, advisories/s and the
child's peak RSS (MiB). File reading is included; the OS page cache is not dropped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CHILD = r"""
import glob, json, resource, sys, time
t0 = time.perf_counter()
from stella_build.engine.encode.canonical_json import dumps
from stella_build.rules.evidence.model import SourceInfo
fmt, target = sys.argv[1], sys.argv[2]
src = SourceInfo(name="bench")
docs = advs = 0
if fmt == "synthetic-jsonl":
    from stella_build.rules.evidence.sources.osv import load_osv_document, normalize_osv
    with open(target, "rb") as fh:
        for i, line in enumerate(fh):
            out = normalize_osv(load_osv_document(line, f"line-{i}.json"), f"line-{i}.json", src)
            docs += 1; advs += len(out)
            for a in out: dumps(a.to_canonical())
else:
    if fmt in ("osv-yaml", "osv-json"):
        from stella_build.rules.evidence.sources.osv import load_osv_document, normalize_osv
        run = lambda data, p: normalize_osv(load_osv_document(data, p), p, src)
    elif fmt == "rustsec":
        from stella_build.rules.evidence.sources.rustsec import normalize_rustsec as f
        run = lambda data, p: f(data, p, src)
    elif fmt == "alpine":
        from stella_build.rules.evidence.sources.alpine import normalize_secdb as f
        run = lambda data, p: f(data, p, src)
    for path in sorted(glob.glob(target, recursive=True)):
        with open(path, "rb") as fh:
            out = run(fh.read(), path)
        docs += 1; advs += len(out)
        for a in out: dumps(a.to_canonical())
dt = time.perf_counter() - t0
print(json.dumps({"docs": docs, "advisories": advs, "seconds": dt,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FORMATS = [
    ("osv-yaml", "osv-pypi (OSV YAML)", str(DATA / "osv-pypi/vulns/*/*.yaml")),
    ("osv-json", "osv-go (OSV JSON)", str(DATA / "osv-go/*.json")),
    ("rustsec", "rustsec (Markdown+TOML)", str(DATA / "rustsec/*/*/*.md")),
    ("alpine", "alpine-secdb (YAML)", str(DATA / "alpine-secdb/*/*.yaml")),
]


def run(fmt: str, target: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, fmt, target], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--synthetic", help="JSONL written by bench/gen_osv_corpus.py --format jsonl")
    args = p.parse_args()
    rows = [(label, run(fmt, target)) for fmt, label, target in FORMATS]
    if args.synthetic:
        rows.append((f"synthetic OSV JSONL ({Path(args.synthetic).name})", run("synthetic-jsonl", args.synthetic)))
    print(f"{'format':<34}{'docs':>8}{'advisories':>12}{'seconds':>9}{'docs/s':>9}{'adv/s':>9}{'peak RSS MiB':>14}")
    total_docs = total_s = 0.0
    for label, r in rows:
        total_docs += r["docs"]
        total_s += r["seconds"]
        print(f"{label:<34}{r['docs']:>8}{r['advisories']:>12}{r['seconds']:>9.2f}"
              f"{r['docs'] / r['seconds']:>9.0f}{r['advisories'] / r['seconds']:>9.0f}{r['peak_rss_mib']:>14.1f}")
    print(f"{'total':<34}{int(total_docs):>8}{'':>12}{total_s:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
