"""Benchmark of trivy_db_patch: patch size vs db.tar.gz, and times, for a 1 % daily change.

    /tmp/v/bin/python bench/bench_trivy_patch.py --count 100000 [--change 0.01] [--dir /tmp]

1. generate N synthetic OSV advisories (bench/gen_osv_corpus.py) into a scratch workspace;
2. build //synth:trivy-db (v1) with the real CLI; keep its trivy.db as the base the sites hold;
3. change every 1/change-th advisory (summary + modified date), build v2 and //synth:trivy-db-patch;
4. apply the patch with `stella-build trivy-db patch` and compare with v2's trivy.db byte for byte.
Prints one JSON object: sizes (bytes), ratio patch/db.tar.gz, wall times (s) of each step.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "stella-build")
sys.path.insert(0, str(REPO / "bench"))

EXPORTFILE = """[package]
source_date_epoch = 1735689600

[targets.osv]
rule = "osv_source"
srcs = ["osv/**/*.json"]
shards = {shards}
source = {{ name = "synthetic", license = "CC0-1.0" }}

[targets.trivy-db]
rule = "trivy_db"
deps = [":osv"]
"""
PATCH = """
[targets.trivy-db-patch]
rule = "trivy_db_patch"
deps = [":trivy-db"]
base = {{ db = "base/trivy.db", sha256 = "{sha}" }}
compression_level = {level}
"""


def _cli(args: list[str], ws: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLA_")}
    start = time.monotonic()
    subprocess.run([CLI, "--cache-dir", str(ws / ".cache"), "-q", *args], cwd=ws, env=env, check=True)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--change", type=float, default=0.01, help="fraction of advisories changed (0.01 = 1 %%)")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--level", type=int, default=19)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch workspace (its path is printed)")
    args = p.parse_args(argv)
    from gen_osv_corpus import encode, generate

    scratch = Path(tempfile.mkdtemp(prefix="bench-trivy-patch-", dir=args.dir))
    try:
        ws = scratch / "ws"
        pkg = ws / "synth"
        (pkg / "osv").mkdir(parents=True)
        (ws / "stella-workspace.toml").write_text("[workspace]\nexternal = {}\n")
        (pkg / "Exportfile").write_text(EXPORTFILE.format(shards=args.shards))
        t0 = time.monotonic()
        docs = list(generate(args.count, args.seed))
        for i, doc in enumerate(docs):
            d = pkg / "osv" / f"{i // 1000:04d}"
            d.mkdir(exist_ok=True)
            (d / f"{doc['id']}.json").write_bytes(encode(doc))
        times = {"generate": time.monotonic() - t0, "build_v1": _cli(["build", "//synth:trivy-db"], ws)}
        out = ws / "stella-out" / "synth" / "trivy-db"
        base = ws / "base" / "trivy.db"
        base.parent.mkdir()
        shutil.copyfile(out / "trivy.db", base)
        step = max(1, round(1 / args.change))
        changed = 0
        for i, doc in enumerate(docs):
            if i % step == 0:
                doc = dict(doc, summary=(doc.get("summary") or "") + " (revised)", modified="2025-01-02T00:00:00Z")
                (pkg / "osv" / f"{i // 1000:04d}" / f"{doc['id']}.json").write_bytes(encode(doc))
                changed += 1
        times["build_v2"] = _cli(["build", "//synth:trivy-db"], ws)
        with open(pkg / "Exportfile", "a") as f:
            f.write(PATCH.format(sha=hashlib.sha256(base.read_bytes()).hexdigest(), level=args.level))
        times["build_patch"] = _cli(["build", "//synth:trivy-db-patch"], ws)
        patch_dir = ws / "stella-out" / "synth" / "trivy-db-patch"
        times["apply"] = _cli(["trivy-db", "patch", str(base), str(patch_dir), "-o", str(scratch / "out")], ws)
        identical = (scratch / "out" / "trivy.db").read_bytes() == (out / "trivy.db").read_bytes()
        patch_bytes = (patch_dir / "trivy.db.zst").stat().st_size
        archive = (out / "db.tar.gz").stat().st_size
        print(json.dumps({
            "advisories": args.count, "changed": changed, "level": args.level,
            "trivy_db_bytes": (out / "trivy.db").stat().st_size, "db_tar_gz_bytes": archive,
            "patch_bytes": patch_bytes, "patch_vs_db_tar_gz": round(patch_bytes / archive, 5),
            "identical": identical, "seconds": {k: round(v, 2) for k, v in times.items()},
        }, indent=2))
        return 0 if identical else 1
    finally:
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
